//! The built trueup `.deb` on a booted Debian under real systemd, one
//! container for the whole life of the package:
//!
//! a) `dpkg -i`: the unit is enabled; with no repository configured the
//!    agent exits 78 and systemd does not restart it; pointed at a git://
//!    remote on the host's loopback it runs as `Type=notify` and converges
//!    a file, a package and a service, and notes the run in the repository;
//! b) changes by hand (a file edited, a service stopped, a package
//!    removed) while the host is paused: `trueup check` exits 2 naming
//!    them, and once resumed the agent repairs them in its next run, within
//!    one interval;
//! c) `systemctl reload trueup` runs now (a new commit lands at once
//!    although the interval is an hour), `systemctl stop trueup` stops it
//!    cleanly (exit 0, no failure);
//! e) reinstalling restarts the agent, `dpkg -r` stops it and keeps the
//!    configuration (conffile, agent.d) and state, `dpkg -P` purges both.
//!
//! (d, cloud-init, is in `cloud_init.rs`.)

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::gitserver::{GitDaemon, TestRepo};
use crate::harness::*;
use crate::packages::{built_deb, record_timing};

/// The agent's interval in this test.
const INTERVAL: Duration = Duration::from_secs(3);
const FRAGMENT: &str = "/etc/trueup/agent.d/50-system-test.yaml";
const LAST_RUN: &str = "/var/lib/trueup/last-run.json";
const DEMO_CONF: &str = "/etc/trueup-demo.conf";
/// What the branch writes into the test service's own conffile; the
/// service copies it to TESTSVC_LOADED when it (re)starts.
const MANAGED_TESTSVC_CONF: &str = "# managed by trueup\nversion=managed\n";

fn host_state(demo_line: &str) -> String {
    format!(
        r#"files:
  {DEMO_CONF}:
    content: "{demo_line} on {{{{facts.hostname}}}}\n"
    mode: "0640"
  {TESTSVC_CONF}:
    content: "{conf}"
    notify: [{TESTSVC_UNIT}]
packages:
  {TESTSVC_PACKAGE}: {{}}
services:
  {TESTSVC_UNIT}: {{ enabled: true, state: running }}
  cron.service: {{ enabled: true, state: running }}
"#,
        conf = MANAGED_TESTSVC_CONF.replace('\n', "\\n"),
    )
}

/// Reads the agent's last report straight from the container's root on the
/// host (cheap enough to poll every few milliseconds, so no report is
/// missed between two runs).
struct Reports {
    path: PathBuf,
}

impl Reports {
    fn new(c: &Container) -> Reports {
        Reports {
            path: c.path(LAST_RUN),
        }
    }

    fn last(&self) -> Option<Value> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Polls until a report satisfies `want`; returns it.
    #[track_caller]
    fn wait(
        &self,
        c: &Container,
        timeout: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = None;
        loop {
            if let Some(r) = self.last() {
                if want(&r) {
                    return r;
                }
                seen = Some(r);
            }
            if Instant::now() > deadline {
                c.fail(format!(
                    "timed out after {timeout:?} waiting for a report: {what}\nlast report: {}\n--- journalctl -u trueup ---\n{}",
                    seen.map(|r| serde_json::to_string_pretty(&r).unwrap()).unwrap_or_default(),
                    c.exec_stdout(&["journalctl", "-u", "trueup", "--no-pager", "-n", "60"])
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn started_at(report: &Value) -> SystemTime {
    let s = report["started_at"].as_str().expect("started_at");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("started_at {s:?}: {e}"))
}

/// `systemctl show` of several properties, as a map.
fn show(c: &Container, unit: &str, props: &[&str]) -> std::collections::BTreeMap<String, String> {
    let out = c.run_ok(&["systemctl", "show", unit, "-p", &props.join(",")]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn agent_fragment(url: &str, interval: &str) -> String {
    format!("# written by the system test\nrepo: {url}\ninterval: {interval}\nsplay: 0s\n")
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn deb_install_converge_repair_reload_stop_remove_purge() {
    let deb = built_deb();
    let whole = Instant::now();
    let base = Base::debian();
    if let Some(t) = base.build_time() {
        record_timing("debootstrap of the Debian root (not cached)", t);
    }
    let c = Container::boot(&base);
    eprintln!(
        "[deb] {}: root copied in {:.1?}, booted in {:.1?}",
        c.name(),
        c.copy_time(),
        c.boot_time()
    );

    // The fleet repository, served by git daemon on the host's loopback,
    // which the container shares.
    let served = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(served.path(), "fleet");
    let daemon = GitDaemon::start(served.path());
    let url = daemon.url(&repo.rel());
    let host = c.name().to_string();
    let branch = format!("hosts/{host}");
    let c1 = repo.commit_and_push(
        &branch,
        &[("trueup.yaml", &host_state("first"))],
        "demo conf, testsvc and cron",
    );
    // The package the branch asks for, from a local apt repository.
    let apt = AptRepo::new();
    apt.add(&testsvc_deb("1.0"));
    apt.publish(&c);
    let reports = Reports::new(&c);

    // ---------------------------------------------------------------- a)
    let a = Instant::now();
    c.copy_in(&deb, "/root/trueup.deb");
    c.run_ok(&["dpkg", "-i", "/root/trueup.deb"]);
    assert_eq!(
        c.run_ok(&["trueup", "--version"]),
        format!("trueup {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", "trueup"]),
        "enabled"
    );
    // systemd understands every line of the unit (an unknown or misspelt
    // directive is only a warning at load time).
    let verify = c.exec(&["systemd-analyze", "verify", "trueup.service"]);
    let warnings = String::from_utf8_lossy(&verify.stderr);
    for line in warnings.lines() {
        // The test roots have no man pages (dpkg path-exclude) nor `man`.
        assert!(
            line.contains("Command 'man "),
            "systemd-analyze verify trueup.service: {line}\n{warnings}"
        );
    }
    // postinst started it, but nothing names a repository yet: a
    // configuration error (78), which Restart=on-failure must not retry.
    c.wait_for(Duration::from_secs(10), "trueup.service to fail", || {
        c.unit_property("trueup.service", "ActiveState") == "failed"
    });
    let failed = show(
        &c,
        "trueup.service",
        &[
            "ActiveState",
            "SubState",
            "Result",
            "ExecMainStatus",
            "NRestarts",
        ],
    );
    assert_eq!(failed["SubState"], "failed", "{failed:?}");
    assert_eq!(failed["Result"], "exit-code", "{failed:?}");
    assert_eq!(failed["ExecMainStatus"], "78", "{failed:?}");
    assert_eq!(failed["NRestarts"], "0", "{failed:?}");
    let journal = c.exec_stdout(&["journalctl", "-u", "trueup", "--no-pager"]);
    assert!(journal.contains("no repository"), "{journal}");

    c.write_file(FRAGMENT, agent_fragment(&url, "3s"), 0o644);
    c.run_ok(&["systemctl", "restart", "trueup"]);
    let converged = reports.wait(&c, Duration::from_secs(120), "first commit in sync", |r| {
        r["source"]["commit"] == c1.as_str() && r["status"] == "in_sync"
    });
    assert_eq!(converged["mode"], "apply");
    assert_eq!(converged["source"]["branch"], branch.as_str());
    assert_eq!(converged["host"], host.as_str());
    // Files, package and service, under real systemd and dpkg.
    assert_eq!(c.read_file(DEMO_CONF), format!("first on {host}\n"));
    assert_eq!(
        c.run_ok(&["stat", "-c", "%a %U:%G", DEMO_CONF]),
        "640 root:root"
    );
    assert_eq!(
        c.run_ok(&[
            "dpkg-query",
            "-W",
            "-f",
            "${Status} ${Version}",
            TESTSVC_PACKAGE
        ]),
        "install ok installed 1.0"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]),
        "active"
    );
    // The package came before its conffile was written, and the change
    // restarted the service, which loaded the managed version.
    assert_eq!(c.read_file(TESTSVC_LOADED), MANAGED_TESTSVC_CONF);
    // Type=notify: systemd knows the agent's pid and shows its STATUS=.
    let pid = c.run_ok(&["pgrep", "-x", "trueup"]);
    c.wait_for(
        Duration::from_secs(15),
        "StatusText to show the run",
        || {
            c.unit_property("trueup.service", "StatusText")
                .starts_with(&format!("in sync {}", &c1[..7]))
        },
    );
    let unit = show(
        &c,
        "trueup.service",
        &[
            "Type",
            "NotifyAccess",
            "ActiveState",
            "SubState",
            "MainPID",
            "StatusText",
            "WatchdogUSec",
            "Restart",
        ],
    );
    eprintln!("[deb] systemctl show trueup: {unit:?}");
    assert_eq!(unit["Type"], "notify");
    assert_eq!(unit["NotifyAccess"], "main");
    assert_eq!(unit["ActiveState"], "active");
    assert_eq!(unit["SubState"], "running");
    assert_eq!(unit["MainPID"], pid);
    assert_eq!(unit["WatchdogUSec"], "10min");
    assert_eq!(unit["Restart"], "on-failure");
    // The run is noted on the commit, in the repository.
    let note = repo
        .note(&format!("refs/notes/trueup/{host}"), &c1)
        .unwrap_or_else(|| c.fail("no note on the applied commit"));
    assert!(note.contains(&c1), "{note}");
    // And a one-shot check agrees.
    let check = c.exec(&["trueup", "check"]);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    record_timing(
        "a) dpkg -i, configure, converge file+package+service under systemd",
        a.elapsed(),
    );

    // ---------------------------------------------------------------- b)
    let b = Instant::now();
    // Pause convergence so the drift stays until `trueup check` has seen
    // it; the paused agent keeps checking.
    c.run_ok(&[
        "trueup",
        "disable",
        "--reason",
        "system test: drift by hand",
    ]);
    let paused = SystemTime::now();
    reports.wait(
        &c,
        Duration::from_secs(30),
        "a check run of the paused host",
        |r| r["mode"] == "check" && started_at(r) >= paused - Duration::from_secs(1),
    );
    c.sh_ok(&format!("echo 'edited by hand' >> {DEMO_CONF}"));
    c.run_ok(&["systemctl", "stop", "cron.service"]);
    c.run_ok(&["apt-get", "remove", "-y", "-q", TESTSVC_PACKAGE]);
    let check = c.exec(&["trueup", "check", "--format", "json"]);
    assert_eq!(
        check.status.code(),
        Some(2),
        "trueup check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let drift: Value = serde_json::from_slice(&check.stdout).expect("check --format json");
    let drifted: Vec<(String, String)> = drift["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("").to_string(),
                r["resource"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("file", DEMO_CONF),
        ("package", TESTSVC_PACKAGE),
        ("service", "cron.service"),
    ] {
        assert!(
            drifted.iter().any(|(k, r)| k == want.0 && r == want.1),
            "check does not report {want:?}: {drifted:?}"
        );
    }
    // Resume: the next run (within one interval) repairs all of it.
    let resumed = SystemTime::now();
    let resumed_at = Instant::now();
    c.run_ok(&["trueup", "enable"]);
    let repair = reports.wait(&c, INTERVAL * 20, "the repairing run", |r| {
        r["mode"] == "apply" && started_at(r) >= resumed - Duration::from_secs(1)
    });
    let repaired_after = resumed_at.elapsed();
    assert_eq!(repair["status"], "converged", "{repair:#}");
    let lag = started_at(&repair)
        .duration_since(resumed)
        .unwrap_or(Duration::ZERO);
    assert!(
        lag <= INTERVAL + Duration::from_secs(1),
        "the repairing run started {lag:?} after `trueup enable`; the interval is {INTERVAL:?}"
    );
    assert_eq!(c.read_file(DEMO_CONF), format!("first on {host}\n"));
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", "cron.service"]),
        "active"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]),
        "active"
    );
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Status}", TESTSVC_PACKAGE]),
        "install ok installed"
    );
    assert_eq!(c.exec(&["trueup", "check"]).status.code(), Some(0));
    record_timing(
        &format!(
            "b) drift by hand, check exit 2; the agent's next run (interval {}s) repaired it {:.1}s after resume",
            INTERVAL.as_secs(),
            repaired_after.as_secs_f64()
        ),
        b.elapsed(),
    );

    // ---------------------------------------------------------------- c)
    let cc = Instant::now();
    // An hour between runs: from now on only a reload can make one.
    c.write_file(FRAGMENT, agent_fragment(&url, "1h"), 0o644);
    c.run_ok(&["systemctl", "restart", "trueup"]);
    // The new agent's run at start (its own journal lines, by pid: a report
    // could still be the old agent's).
    let pid = c.unit_property("trueup.service", "MainPID");
    let own_journal = || {
        c.exec_stdout(&[
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            &format!("_PID={pid}"),
        ])
    };
    c.wait_for(Duration::from_secs(60), "the new agent's first run", || {
        own_journal().contains("run finished")
    });
    assert!(!own_journal().contains("SIGHUP"));
    let c2 = repo.commit_and_push(
        &branch,
        &[("trueup.yaml", &host_state("second"))],
        "second demo conf",
    );
    let reload = Instant::now();
    c.run_ok(&["systemctl", "reload", "trueup"]);
    let applied = reports.wait(&c, Duration::from_secs(30), "the reload's run", |r| {
        r["source"]["commit"] == c2.as_str()
    });
    let took = reload.elapsed();
    assert_eq!(applied["status"], "converged", "{applied:#}");
    assert!(
        took < Duration::from_secs(20),
        "reload to applied: {took:?}"
    );
    assert_eq!(c.read_file(DEMO_CONF), format!("second on {host}\n"));
    assert_eq!(
        c.unit_property("trueup.service", "MainPID"),
        pid,
        "reload restarted the agent"
    );
    let journal = own_journal();
    assert!(journal.contains("SIGHUP: running now"), "{journal}");

    let stop = Instant::now();
    c.run_ok(&["systemctl", "stop", "trueup"]);
    let stop_took = stop.elapsed();
    let stopped = show(
        &c,
        "trueup.service",
        &[
            "ActiveState",
            "Result",
            "ExecMainCode",
            "ExecMainStatus",
            "NRestarts",
        ],
    );
    assert_eq!(stopped["ActiveState"], "inactive", "{stopped:?}");
    assert_eq!(stopped["Result"], "success", "{stopped:?}");
    // ExecMainCode 1 is CLD_EXITED: it exited by itself, with status 0.
    assert_eq!(stopped["ExecMainCode"], "1", "{stopped:?}");
    assert_eq!(stopped["ExecMainStatus"], "0", "{stopped:?}");
    assert!(c.exec(&["pgrep", "-x", "trueup"]).stdout.is_empty());
    let journal = c.exec_stdout(&["journalctl", "-u", "trueup", "--no-pager", "-n", "5"]);
    assert!(journal.contains("agent stopped"), "{journal}");
    assert!(
        stop_took < Duration::from_secs(10),
        "stop took {stop_took:?}"
    );
    record_timing(
        &format!(
            "c) reload to new commit applied {:.2}s, stop {:.2}s",
            took.as_secs_f64(),
            stop_took.as_secs_f64()
        ),
        cc.elapsed(),
    );

    // ---------------------------------------------------------------- e)
    let e = Instant::now();
    // An upgrade (here: the same version again) restarts a running agent.
    c.run_ok(&["systemctl", "start", "trueup"]);
    let before = c.unit_property("trueup.service", "MainPID");
    c.run_ok(&["dpkg", "-i", "/root/trueup.deb"]);
    c.wait_for(
        Duration::from_secs(30),
        "the agent restarted by the upgrade",
        || {
            let now = show(&c, "trueup.service", &["ActiveState", "MainPID"]);
            now["ActiveState"] == "active" && now["MainPID"] != before && now["MainPID"] != "0"
        },
    );
    // An admin's change to the conffile.
    c.sh_ok("echo '# changed by the admin' >> /etc/trueup/agent.yaml");

    c.run_ok(&["dpkg", "-r", "trueup"]);
    assert!(
        c.exec(&["pgrep", "-x", "trueup"]).stdout.is_empty(),
        "agent still running"
    );
    assert_eq!(c.unit_property("trueup.service", "LoadState"), "not-found");
    assert!(!c.exec(&["test", "-e", "/usr/bin/trueup"]).status.success());
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Status}", "trueup"]),
        "deinstall ok config-files"
    );
    assert!(
        c.read_file("/etc/trueup/agent.yaml")
            .contains("# changed by the admin")
    );
    assert!(c.read_file(FRAGMENT).contains(&url));
    assert!(
        c.exec(&["test", "-s", LAST_RUN]).status.success(),
        "state lost on remove"
    );

    c.run_ok(&["dpkg", "-P", "trueup"]);
    for gone in [
        "/etc/trueup",
        "/var/lib/trueup",
        "/etc/systemd/system/multi-user.target.wants/trueup.service",
    ] {
        assert!(
            !c.exec(&["test", "-e", gone]).status.success(),
            "{gone} left after dpkg -P"
        );
    }
    let status = c.exec(&["dpkg-query", "-W", "-f", "${Status}", "trueup"]);
    assert!(
        !status.status.success()
            || String::from_utf8_lossy(&status.stdout).contains("not-installed"),
        "{status:?}"
    );
    record_timing(
        "e) upgrade restarts, dpkg -r keeps configuration, dpkg -P purges",
        e.elapsed(),
    );
    drop(c);
    record_timing(
        "deb test (a, b, c, e) including boot and shutdown",
        whole.elapsed(),
    );
}
