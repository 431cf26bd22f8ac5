//! `trueup agent` in the foreground: it converges, SIGHUP runs now, SIGTERM
//! stops it cleanly, it talks to systemd through NOTIFY_SOCKET, it shares
//! the run lock with one-shot commands, and it pauses when disabled.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

/// A running agent and the files it uses.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(host: &Host, source: &Path, config: &Path, env: &[(&str, &str)]) -> Agent {
        let log = host.state.path().join("agent.log");
        let child = Command::new(trueup_bin())
            .args(["agent", "--config"])
            .arg(config)
            .arg("--source")
            .arg(source)
            .arg("--root")
            .arg(host.root.path())
            .arg("--state-dir")
            .arg(host.state.path())
            .envs(env.iter().copied())
            .env("TRUEUP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn signal(&self, s: Signal) {
        kill(self.pid(), s).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code, within `limit`.
    fn stop(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn converges_runs_on_sighup_and_stops_on_sigterm() {
    let host = Host::new();
    let src = demo_copy();
    let metrics = host.state.path().join("trueup.prom");
    let cfg = config(
        host.state.path(),
        &format!(
            "interval: 1h\nsplay: 0s\nreport: {{ metrics: {} }}\n",
            metrics.display()
        ),
    );
    let mut agent = Agent::start(&host, src.path(), &cfg, &[]);
    let motd = host.path("/etc/motd");
    wait_for("the first run to converge", Duration::from_secs(20), || {
        motd.exists()
    });
    wait_for("metrics", Duration::from_secs(5), || metrics.exists());
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("trueup_last_run_status{status=\"converged\"} 1"),
        "{prom}"
    );

    // A new desired state is picked up right after SIGHUP, not in an hour.
    write(
        src.path(),
        "trueup.yaml",
        &std::fs::read_to_string(src.path().join("trueup.yaml"))
            .unwrap()
            .replace("Managed by trueup", "Changed by SIGHUP"),
    );
    agent.signal(Signal::SIGHUP);
    let took = wait_for("SIGHUP to apply the change", Duration::from_secs(1), || {
        std::fs::read_to_string(&motd)
            .map(|s| s.starts_with("Changed by SIGHUP"))
            .unwrap_or(false)
    });
    eprintln!("SIGHUP → converged in {took:?}");

    // status sees the running agent.
    let status = host.run(src.path(), &["status", "--format", "json"]).json();
    assert_eq!(status["agent"]["running"], true, "{status}");
    assert_eq!(status["agent"]["pid"], agent.pid().as_raw(), "{status}");
    assert_eq!(status["last_run"]["status"], "converged", "{status}");

    let (code, took) = agent.stop(Duration::from_secs(5));
    assert_eq!(code, 0, "{}", agent.log());
    eprintln!("SIGTERM → exit in {took:?}");
    let status = host.run(src.path(), &["status", "--format", "json"]).json();
    assert_eq!(status["agent"]["running"], false, "{status}");
}

#[test]
fn speaks_sd_notify_with_watchdog_at_the_configured_rate() {
    let host = Host::new();
    let src = demo_copy();
    let sock_path = host.state.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let cfg = config(host.state.path(), "interval: 1h\nsplay: 0s\n");
    // 300 ms watchdog: the agent must ping every ~150 ms.
    let mut agent = Agent::start(
        &host,
        src.path(),
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut messages: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv_for = |d: Duration, messages: &mut Vec<(Instant, String)>| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    messages.push((Instant::now(), line.to_string()));
                }
            }
        }
    };
    // Wait for events, not a clock: the run has converged and ten
    // watchdog pings came (at ~150 ms each, about 1.5 s on a quiet machine).
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        recv_for(Duration::from_millis(100), &mut messages);
        let converged = messages
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=converged"));
        let pings = messages.iter().filter(|(_, l)| l == "WATCHDOG=1").count();
        if converged && pings >= 10 {
            break;
        }
        assert!(
            Instant::now() < limit,
            "no 10 pings after converging: {messages:?}"
        );
    }
    let (code, _) = agent.stop(Duration::from_secs(5));
    assert_eq!(code, 0);
    recv_for(Duration::from_millis(300), &mut messages);

    let lines: Vec<&str> = messages.iter().map(|(_, l)| l.as_str()).collect();
    assert!(lines.contains(&"READY=1"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=converging")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=converged")),
        "{lines:?}"
    );
    assert_eq!(lines.last(), Some(&"STOPPING=1"), "{lines:?}");
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        max_gap < Duration::from_millis(300),
        "a gap of {max_gap:?} would trip a 300 ms watchdog"
    );
}

#[test]
fn bad_configuration_exits_78_naming_the_line() {
    let host = Host::new();
    let cfg = config(host.state.path(), "interval: 1h\nintervall: 5m\n");
    let r = host.run(
        &demo_branch(),
        &["agent", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(r.code, 78, "{}", r.all());
    assert!(r.stderr.contains("agent.yaml:2:1"), "{}", r.stderr);
}

#[test]
fn a_repo_that_is_not_a_supported_url_exits_78_at_load() {
    let host = Host::new();
    let cfg = config(
        host.state.path(),
        "interval: 1h\nrepo: htps//git.example.com/x.git\n",
    );
    // Any command that reads the configuration refuses it (`status` here,
    // which would otherwise just print and exit 0).
    let r = host.run(
        &demo_branch(),
        &["status", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(r.code, 78, "{}", r.all());
    assert!(
        r.stderr.contains("agent.yaml:2:7") && r.stderr.contains("repo:"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_credential_file_that_cannot_be_read_stops_the_agent_with_78() {
    // The configuration loads (the file is named, an absolute path), but
    // the first run cannot read it: retrying will not mend that, so the
    // agent exits EX_CONFIG, which systemd does not restart.
    let host = Host::new();
    let token = host.state.path().join("no-such-token");
    let cfg = config(
        host.state.path(),
        &format!(
            "interval: 1h\nsplay: 0s\nauth: {{ token_file: {} }}\n",
            token.display()
        ),
    );
    let mut agent = Agent::start(&host, Path::new("https://127.0.0.1:9/fleet.git"), &cfg, &[]);
    let mut child = agent.child.take().unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = agent.log();
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("auth.token_file") && log.contains("no-such-token"),
        "the cause is named: {log}"
    );
}

#[test]
fn backs_off_while_the_source_is_missing_then_converges() {
    let host = Host::new();
    let parent = tempfile::tempdir().unwrap();
    let src = parent.path().join("branch");
    let cfg = config(host.state.path(), "interval: 1h\nsplay: 0s\n");
    let agent = Agent::start(&host, &src, &cfg, &[]);
    wait_for("two failed attempts", Duration::from_secs(10), || {
        agent.log().matches("run failed").count() >= 2
    });
    let log = agent.log();
    // One line per attempt, each naming the cause and the next wait, which grows.
    let waits: Vec<&str> = log.lines().filter(|l| l.contains("run failed")).collect();
    assert!(
        waits[0].contains("retry_in=2s") && waits[1].contains("retry_in=4s"),
        "{log}"
    );
    assert!(
        waits[0].contains("not a directory") || waits[0].contains("branch"),
        "{log}"
    );
    copy_tree(&demo_branch(), &src);
    wait_for(
        "convergence once the source is back",
        Duration::from_secs(10),
        || host.path("/etc/motd").exists(),
    );
}

#[test]
fn one_shot_check_waits_for_the_agent_or_gives_up_clearly() {
    let host = Host::new();
    let src = tempfile::tempdir().unwrap();
    // Enough files that the agent's first apply takes a noticeable while.
    let mut yaml = String::from("files:\n");
    for i in 0..3000 {
        yaml.push_str(&format!("  /data/f{i}: {{ content: \"{i}\\n\" }}\n"));
    }
    write(src.path(), "trueup.yaml", &yaml);
    let cfg = config(host.state.path(), "interval: 1h\nsplay: 0s\n");
    // Beside the agent's configuration, in a directory of this test's own
    // (not the shared temporary directory, where another user's file may be).
    let impatient_dir = tempfile::tempdir().unwrap();
    let impatient = config(impatient_dir.path(), "lock_timeout: 1ms\n");
    let agent = Agent::start(&host, src.path(), &cfg, &[]);
    // Wait until the agent holds the lock (it writes its pid into it).
    let lock = host.state.path().join("run.lock");
    wait_for(
        "the agent to take the lock",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&lock)
                .map(|s| s.trim() == agent.pid().to_string())
                .unwrap_or(false)
                && !host.path("/data/f2999").exists()
        },
    );
    let busy = host.run(
        src.path(),
        &["check", "--config", impatient.to_str().unwrap()],
    );
    let patient = host.run(src.path(), &["check", "--format", "json"]);
    // Either it waited for the agent's run to end (then everything is in
    // sync: the two never overlapped) or it gave up with a clear message.
    assert_eq!(patient.code, 0, "{}", patient.all());
    assert_eq!(patient.json()["summary"]["in_sync"], 3000);
    if busy.code != 0 {
        assert_eq!(busy.code, 1);
        assert!(
            busy.stderr.contains("another trueup run holds"),
            "{}",
            busy.stderr
        );
        assert!(
            busy.stderr.contains(&format!("pid {}", agent.pid())),
            "{}",
            busy.stderr
        );
    }
}

#[test]
fn disabled_host_reports_drift_and_changes_nothing_until_enabled() {
    let host = Host::new();
    let src = demo_copy();
    let r = host.run(
        src.path(),
        &["disable", "--reason", "kernel upgrade, ticket 42"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let r = host.run(src.path(), &["apply", "--format", "json"]);
    assert_eq!(r.code, 0);
    let report = r.json();
    assert_eq!(report["status"], "drift", "{report}");
    assert_eq!(report["mode"], "check");
    assert!(
        snapshot(host.root.path()).is_empty(),
        "a disabled host changes nothing"
    );
    let status = host.run(src.path(), &["status"]);
    assert!(
        status.stdout.contains("kernel upgrade, ticket 42"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("disabled: since 20"),
        "{}",
        status.stdout
    );
    let r = host.run(src.path(), &["enable"]);
    assert_eq!(r.code, 0);
    let (code, report) = host.apply_json(src.path());
    assert_eq!(code, 0);
    assert_eq!(report["status"], "converged");
}

#[test]
fn audit_mode_only_checks() {
    let host = Host::new();
    let cfg = config(host.state.path(), "mode: check\n");
    let r = host.run(
        &demo_branch(),
        &[
            "apply",
            "--config",
            cfg.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(r.json()["status"], "drift");
    assert!(snapshot(host.root.path()).is_empty());
}
