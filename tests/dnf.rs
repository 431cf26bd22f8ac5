//! Real dnf and rpm through the binary: two small RPMs built with rpmbuild,
//! a local repository made with createrepo_c
//! (`tests/fixtures/rpm/build-test-rpms.sh`), and `trueup --root R` on a
//! fresh installroot with the dnf backend forced in the agent
//! configuration. Needs `dnf`, `rpm` and `createrepo-c` (Debian packages;
//! `scripts/install-test-deps.sh` installs them).
//!
//! The agent's liveness is tested here too, on a real package step: a
//! package whose maintainer script is slow but prints as it goes, and one
//! whose script hangs without a word, installed by `trueup agent` with
//! systemd's watchdog simulated through NOTIFY_SOCKET.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const A: &str = "trueup-test-a";
const B: &str = "trueup-test-b";

/// The test repository, an installroot and what trueup needs to use them.
struct DnfHost {
    _dir: tempfile::TempDir,
    out: PathBuf,
    root: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

impl DnfHost {
    fn new() -> DnfHost {
        let dir = tempfile::Builder::new()
            .prefix("trueup-dnf-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("out");
        let t = Instant::now();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rpm/build-test-rpms.sh");
        let built = Command::new(&script).arg(&out).output().unwrap();
        assert!(
            built.status.success(),
            "{} failed (are rpm and createrepo-c installed?):\n{}",
            script.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        eprintln!("[dnf] rpmbuild + createrepo_c: {:.1?}", t.elapsed());
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.path().join("agent.yaml");
        // The dnf options are the ones documented at the top of
        // src/resource/package/rpm.rs: only the test repository, and a
        // dnf.conf of our own instead of the host's.
        std::fs::write(
            &config,
            format!(
                "packages:\n  backend: dnf\n  dnf_options:\n    - --config={out}/dnf.conf\n    - --noplugins\n    - --setopt=reposdir={out}/repos.d\n    - --disablerepo=*\n    - --enablerepo=trueup-test\n    - --releasever=trueup\n",
                out = out.display()
            ),
        )
        .unwrap();
        DnfHost {
            _dir: dir,
            out,
            root,
            state,
            config,
        }
    }

    /// rpm and dnf find the database through $HOME/.rpmmacros (Debian's
    /// rpm keeps it under $HOME otherwise).
    fn home(&self) -> PathBuf {
        self.out.join("rpm-home")
    }

    /// `trueup` with `config`, `branch`, this root and state directory.
    fn command(&self, config: &Path, branch: &Path) -> Command {
        let mut cmd = Command::new(trueup_bin());
        cmd.arg("--config")
            .arg(config)
            .arg("--source")
            .arg(branch)
            .arg("--root")
            .arg(&self.root)
            .arg("--state-dir")
            .arg(&self.state)
            .env("HOME", self.home());
        cmd
    }

    fn trueup(&self, branch: &Path, args: &[&str]) -> Run {
        let t = Instant::now();
        let out = self
            .command(&self.config, branch)
            .args(args)
            .arg("--format")
            .arg("json")
            .env_remove("TRUEUP_LOG")
            .output()
            .unwrap();
        eprintln!("[dnf] trueup {}: {:.1?}", args.join(" "), t.elapsed());
        Run::from(out)
    }

    /// Installed packages under the root, by name, as rpm itself says.
    fn rpm_names(&self) -> Vec<String> {
        let out = Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args(["-qa", "--qf", "%{NAME}\\n"])
            .env("HOME", self.home())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// `trueup agent` for `branch` with the dnf configuration plus `extra`
    /// (agent.yaml lines), the environment `env`, stderr to `agent.log`.
    fn agent(&self, branch: &Path, extra: &str, env: &[(&str, &str)]) -> AgentProcess {
        let config = self.out.join("agent-daemon.yaml");
        let base = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        std::fs::create_dir_all(&self.state).unwrap();
        let log = self.out.join("agent.log");
        let child = self
            .command(&config, branch)
            .arg("agent")
            .env("TRUEUP_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        AgentProcess {
            child: Some(child),
            log,
        }
    }

    /// The report of the agent's last run, once there is one.
    fn last_run(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state.join("last-run.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The agent's first report since `started` that `done` accepts,
    /// waited for at most two minutes while the agent lives.
    fn wait_for_report(
        &self,
        agent: &mut AgentProcess,
        started: Instant,
        what: &str,
        done: &dyn Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let limit = Duration::from_secs(120);
        loop {
            if let Some(r) = self.last_run()
                && done(&r)
            {
                return r;
            }
            assert!(
                started.elapsed() < limit,
                "no report {what} after {limit:?}:\n{}",
                agent.log()
            );
            assert!(agent.running(), "the agent died:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rpm_erase_by_hand(&self, name: &str) {
        let out = Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args(["-e", "--nodeps", name])
            .env("HOME", self.home())
            .output()
            .unwrap();
        assert!(out.status.success(), "rpm -e {name}: {out:?}");
    }
}

fn branch(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "trueup.yaml", yaml);
    dir
}

fn status_of<'a>(report: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["resource"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report}"))
}

#[test]
#[ignore = "needs dnf and rpm: run by scripts/test.sh"]
fn dnf_installs_detects_drift_repairs_and_removes() {
    let started = Instant::now();
    let h = DnfHost::new();
    let present = branch(&format!(
        "packages:\n  {A}: {{}}\n  {B}: {{ version: \"1.0-*\" }}\n"
    ));

    // From an empty installroot: both missing.
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![
            ("package".into(), A.into(), vec!["presence".into()]),
            ("package".into(), B.into(), vec!["presence".into()]),
        ]
    );
    assert_eq!(
        status_of(&report, "package", B)["drift"][0]["expected"],
        "installed (1.0-*)"
    );
    assert!(h.rpm_names().is_empty(), "check installed something");

    let r = h.trueup(present.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let report = r.json();
    assert_eq!(report["summary"]["changed"], 2, "{report}");
    assert_eq!(status_of(&report, "package", B)["action"], "install 1.0-*");
    assert_eq!(h.rpm_names(), [A, B]);
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // One removed by hand is drift, named, and repaired.
    h.rpm_erase_by_hand(B);
    assert_eq!(h.rpm_names(), [A]);
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![("package".into(), B.into(), vec!["presence".into()])]
    );
    let r = h.trueup(present.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.json()["summary"]["changed"], 1);
    assert_eq!(h.rpm_names(), [A, B]);

    // A pin no version matches: version drift, and dnf's own error.
    let pinned = branch(&format!("packages:\n  {A}: {{ version: \"2.*\" }}\n"));
    let r = h.trueup(pinned.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    let d = &status_of(&report, "package", A)["drift"][0];
    assert_eq!(
        (
            d["attribute"].as_str(),
            d["expected"].as_str(),
            d["actual"].as_str()
        ),
        (Some("version"), Some("2.*"), Some("1.0-1"))
    );
    let r = h.trueup(pinned.path(), &["apply"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let failed = r.json();
    let a = status_of(&failed, "package", A);
    assert_eq!(a["status"], "failed");
    assert!(
        a["error"].as_str().unwrap().contains(&format!("{A}-2.*")),
        "the error shows dnf's words: {a}"
    );

    // Declared absent: both removed.
    let absent = branch(&format!(
        "packages:\n  {A}: {{ state: absent }}\n  {B}: {{ state: absent }}\n"
    ));
    let r = h.trueup(absent.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let r = h.trueup(absent.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.json()["summary"]["changed"], 2);
    assert!(h.rpm_names().is_empty(), "{:?}", h.rpm_names());
    let r = h.trueup(absent.path(), &["check"]);
    assert_eq!(r.code, 0, "{}", r.all());
    eprintln!("[dnf] whole test: {:.1?}", started.elapsed());
}

#[test]
#[ignore = "needs dnf and rpm: run by scripts/test.sh"]
fn packages_then_files_converge_in_one_run_from_nothing() {
    let started = Instant::now();
    let h = DnfHost::new();
    // The configuration goes next to what the package installs.
    let state = branch(&format!(
        "packages:\n  {A}: {{}}\n  {B}: {{}}\ndirectories:\n  /etc/trueup-test: {{ mode: \"0750\" }}\nfiles:\n  /etc/trueup-test/app.conf:\n    content: \"greeting = hello\\n\"\n  /usr/share/{A}/extra:\n    content: \"added by trueup\\n\"\n"
    ));
    let r = h.trueup(state.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let report = r.json();
    let order: Vec<String> = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap(),
                r["resource"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            format!("package {A}"),
            format!("package {B}"),
            "directory /etc/trueup-test".to_string(),
            "file /etc/trueup-test/app.conf".to_string(),
            format!("file /usr/share/{A}/extra"),
        ],
        "the report lists resources in the order they converged"
    );
    assert!(
        report["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "changed"),
        "{report}"
    );
    // The package's own file and ours sit side by side.
    let share = h.root.join(format!("usr/share/{A}"));
    assert_eq!(
        std::fs::read_to_string(share.join("hello")).unwrap(),
        format!("hello from {A}\n")
    );
    assert_eq!(
        std::fs::read_to_string(share.join("extra")).unwrap(),
        "added by trueup\n"
    );
    let r = h.trueup(state.path(), &["check"]);
    assert_eq!(r.code, 0, "one run was enough: {}", r.all());
    eprintln!("[dnf] whole test: {:.1?}", started.elapsed());
}

#[test]
fn apt_packages_under_a_scratch_root_are_read_but_never_installed() {
    // A scratch root with a dpkg status database: trueup reads it, and
    // refuses to run apt-get for it, so the host's packages are safe.
    let host = Host::new();
    let status = host.path("/var/lib/dpkg/status");
    std::fs::create_dir_all(status.parent().unwrap()).unwrap();
    std::fs::write(
        &status,
        "Package: hello\nStatus: install ok installed\nVersion: 2.10-3\nArchitecture: amd64\n\n",
    )
    .unwrap();
    let config = host.state.path().join("agent.yaml");
    std::fs::write(&config, "packages: { backend: apt }\n").unwrap();
    let b = branch("packages:\n  hello: { version: \"2.10-*\" }\n  trueup-nosuch: {}\n");
    let out = Command::new(trueup_bin())
        .arg("--config")
        .arg(&config)
        .arg("--source")
        .arg(b.path())
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args(["apply", "--format", "json"])
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![(
            "package".into(),
            "trueup-nosuch".into(),
            vec!["presence".into()]
        )],
        "hello is installed in the scratch root's database"
    );
    let err = status_of(&report, "package", "trueup-nosuch")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("apt has no install root"), "{err}");
}

/// A running `trueup agent`, killed when dropped.
struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, and its exit code.
    fn stop(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The package step of a run takes longer than the watchdog interval
/// (trueup-test-slow's %post prints a line a second for 8 s; the watchdog
/// is 4 s, the silence allowed to dnf 3 s). The tool's output is progress,
/// so the agent keeps pinging the watchdog through the whole step, dnf is
/// not killed, and the package is installed.
#[test]
#[ignore = "needs root (rpm chroots into the installroot for scriptlets), dnf and rpm: run by scripts/test.sh"]
fn a_slow_package_step_that_prints_progress_keeps_the_watchdog_fed() {
    const SLOW: &str = "trueup-test-slow";
    let h = DnfHost::new();
    let b = branch(&format!("packages:\n  {SLOW}: {{}}\n"));
    let sock_path = h.out.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let watchdog = Duration::from_secs(4);
    let mut agent = h.agent(
        b.path(),
        "interval: 1h\nsplay: 0s\ntimeouts: { packages: 3s }\n",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", &watchdog.as_micros().to_string()),
        ],
    );
    let mut messages: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let limit = Instant::now() + Duration::from_secs(120);
    // Wait for the event: the run's end, as the agent tells systemd.
    while !messages
        .iter()
        .any(|(_, l)| l.starts_with("STATUS=converged") || l.starts_with("STATUS=failed"))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                messages.push((Instant::now(), line.to_string()));
            }
        }
        assert!(
            Instant::now() < limit,
            "the run did not end: {messages:?}\n{}",
            agent.log()
        );
        assert!(agent.running(), "the agent died:\n{}", agent.log());
    }
    let at = |prefix: &str| {
        messages
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no {prefix} in {messages:?}"))
    };
    let (run_start, run_end) = (at("STATUS=converging"), at("STATUS=converged"));
    assert!(
        run_end - run_start > watchdog,
        "the step must outlast the watchdog interval to show anything: {:?}",
        run_end - run_start
    );
    // Pings all along the run, never a gap that would trip the watchdog.
    let mut pings: Vec<Instant> = vec![run_start];
    pings.extend(
        messages
            .iter()
            .filter(|(t, l)| l == "WATCHDOG=1" && *t > run_start && *t <= run_end)
            .map(|(t, _)| *t),
    );
    pings.push(run_end);
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        max_gap < watchdog,
        "a gap of {max_gap:?} in the pings would trip a {watchdog:?} watchdog: {messages:?}"
    );

    // The step completed: installed, reported changed.
    assert_eq!(h.rpm_names(), [SLOW], "{}", agent.log());
    let report = h.last_run().expect("last-run.json");
    assert_eq!(report["status"], "converged", "{report}");
    assert_eq!(status_of(&report, "package", SLOW)["status"], "changed");
    assert_eq!(agent.stop(), 0, "{}", agent.log());
}

/// A package step that hangs without output (trueup-test-hung's %pre
/// sleeps 5 minutes silently) is killed after the silence agent.yaml
/// allows package managers (`timeouts.packages`, 3 s here), and the run's
/// report names the package and says it was killed for it. The agent
/// lives on.
#[test]
#[ignore = "needs root (rpm chroots into the installroot for scriptlets), dnf and rpm: run by scripts/test.sh"]
fn a_hung_package_step_is_killed_at_its_configured_timeout_and_reported() {
    const HUNG: &str = "trueup-test-hung";
    let h = DnfHost::new();
    let b = branch(&format!("packages:\n  {HUNG}: {{}}\n  {A}: {{}}\n"));
    let started = Instant::now();
    let mut agent = h.agent(
        b.path(),
        "interval: 1h\nsplay: 0s\ntimeouts: { packages: 3s }\n",
        &[],
    );
    let report = h.wait_for_report(&mut agent, started, "of a run", &|_| true);
    // Far sooner than the 5 minutes the script would sleep.
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report["status"], "failed", "{report}");
    let hung = status_of(&report, "package", HUNG);
    assert_eq!(hung["status"], "failed", "{report}");
    let error = hung["error"].as_str().unwrap();
    assert!(
        error.contains("printed nothing for 3s and was killed")
            && error.contains("`dnf ")
            && error.contains("waiting for something that never comes"),
        "the error says dnf was killed for its silence, after what it printed: {error}"
    );
    assert!(
        !h.rpm_names().contains(&HUNG.to_string()),
        "{:?}",
        h.rpm_names()
    );
    assert!(agent.running(), "the agent lives on:\n{}", agent.log());
    assert_eq!(agent.stop(), 0, "{}", agent.log());
}

/// Another dnf holding the rpm database lock (its pid in the installroot's
/// `var/lib/dnf/rpmdb_lock.pid`, as dnf writes it): the real dnf says
/// "Waiting for process with pid N to finish." and waits, silent, until
/// the package timeout kills it. That failure is transient: the agent
/// backs off and retries within seconds instead of waiting its interval
/// (an hour here), and converges once the lock is let go.
#[test]
#[ignore = "needs dnf and rpm: run by scripts/test.sh"]
fn a_held_dnf_lock_fails_the_run_transiently_and_the_agent_retries_soon() {
    let h = DnfHost::new();
    let b = branch(&format!("packages:\n  {A}: {{}}\n"));
    // The other package manager: a live process whose pid is in the lock.
    let mut holder = KillOnDrop(Command::new("sleep").arg("600").spawn().unwrap());
    let lock = h.root.join("var/lib/dnf/rpmdb_lock.pid");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, holder.0.id().to_string()).unwrap();

    let started = Instant::now();
    let mut agent = h.agent(
        b.path(),
        "interval: 1h\nsplay: 0s\ntimeouts: { packages: 3s }\n",
        &[],
    );
    let first = h.wait_for_report(&mut agent, started, "of a run", &|_| true);
    assert_eq!(first["status"], "failed", "{first}");
    let error = status_of(&first, "package", A)["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!("Waiting for process with pid {}", holder.0.id())),
        "dnf waited for the lock's holder: {error}"
    );

    // The lock is let go: the retry that comes before the interval
    // converges.
    let _ = holder.0.kill();
    let _ = holder.0.wait();
    let released = Instant::now();
    let converged = h.wait_for_report(&mut agent, started, "that converged", &|r| {
        r["status"] == "converged"
    });
    assert_eq!(
        status_of(&converged, "package", A)["status"],
        "changed",
        "{converged}"
    );
    assert_eq!(h.rpm_names(), [A], "{}", agent.log());
    assert!(
        released.elapsed() < Duration::from_secs(60),
        "retried after {:?}, not at once",
        released.elapsed()
    );
    assert!(
        agent.log().contains("retry_in"),
        "the agent said it backs off:\n{}",
        agent.log()
    );
    assert_eq!(agent.stop(), 0, "{}", agent.log());
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
