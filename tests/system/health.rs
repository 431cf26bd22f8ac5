//! Health checks after a change, and the automatic rollback (issue 12),
//! with the agent from the built `.deb` under real systemd, one booted
//! container for the whole story:
//!
//! 1. commit A runs a small HTTP service (busybox httpd under a unit) with
//!    a `service` and an `http` check: healthy. Commit B moves it to another
//!    port: within the window plus one interval the host is back on A, A's
//!    port answers again, B's note says rolled back with the failed check and
//!    its cause, and over the next three intervals B is not applied again.
//!    Commit C, a fix on top of B, is applied and healthy;
//! 2. commit D adds a unit that crash-loops (`Restart=always`, exits at
//!    once): unhealthy although systemd shows it `activating`/`active`
//!    between restarts; rolled back to C;
//! 3. (in 1) the files B added and A does not declare are gone after the
//!    rollback, and the files B changed are back to A's content;
//! 4. commit E adds a failing `required: false` check: reported, and the
//!    host stays on E.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::gitserver::{GitDaemon, TestRepo, free_port};
use crate::harness::*;
use crate::packages::{built_deb, record_timing};

/// The agent's interval and the branch's health window in this test.
const INTERVAL: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(5);
const LAST_RUN: &str = "/var/lib/trueup/last-run.json";
const UNIT: &str = "hc-web.service";
const ENV_FILE: &str = "/etc/hc/web.env";
const INDEX: &str = "/etc/hc/www/index.html";
const CRASH_UNIT: &str = "hc-crash.service";

/// What a commit holds besides the web server: more files (entries under
/// `files:`), more top-level keys, more services and more checks.
#[derive(Default, Clone, Copy)]
struct Extra<'a> {
    files: &'a str,
    top: &'a str,
    services: &'a str,
    checks: &'a str,
}

/// The branch: the web unit reading its port from ENV_FILE, and `health:`
/// with a service check and an http check on `check_port`.
fn branch(port: u16, check_port: u16, index: &str, extra: Extra) -> String {
    format!(
        r#"files:
  {ENV_FILE}:
    content: "PORT={port}\n"
    notify: [{UNIT}]
  {INDEX}:
    content: "{index}\n"
  /etc/systemd/system/{UNIT}:
    content: |
      [Unit]
      Description=trueup health test web server
      [Service]
      EnvironmentFile={ENV_FILE}
      ExecStart=/bin/busybox httpd -f -p 127.0.0.1:${{PORT}} -h /etc/hc/www
      Restart=always
      [Install]
      WantedBy=multi-user.target
    notify: [{UNIT}]
{files}{top}services:
  {UNIT}: {{ enabled: true, state: running }}
{services}health:
  window: {window}s
  checks:
    web: {{ service: {UNIT} }}
    page: {{ http: "http://127.0.0.1:{check_port}/index.html", timeout: 2s }}
{checks}"#,
        files = extra.files,
        top = extra.top,
        services = extra.services,
        checks = extra.checks,
        window = WINDOW.as_secs()
    )
}

/// What B adds: a file, a directory with a file, a symlink.
const B_FILES: &str = "  /etc/hc/extra.conf:\n    content: \"added by B\\n\"\n  /etc/hc/new.d/one.conf:\n    content: \"also B\\n\"\n";
const B_TOP: &str = "symlinks:\n  /etc/hc/current: { target: /etc/hc/extra.conf }\ndirectories:\n  /etc/hc/new.d: {}\n";

/// The last reports, read straight from the container's root.
struct Reports {
    path: std::path::PathBuf,
}

impl Reports {
    fn last(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.path).ok()?).ok()
    }

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
                    c.exec_stdout(&["journalctl", "-u", "trueup", "--no-pager", "-n", "80"])
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn started_at(report: &Value) -> SystemTime {
    let s = report["started_at"].as_str().expect("started_at");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("started_at {s:?}: {e}"))
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["health"]["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// What the web server answers on `port`: the body of a 200 to a GET of
/// index.html, from this process (the container shares the host's
/// loopback).
fn get(_c: &Container, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn health_checks_roll_back_a_bad_commit_and_keep_it_out() {
    let deb = built_deb();
    let whole = Instant::now();
    let base = Base::debian();
    let c = Container::boot(&base);
    let served = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(served.path(), "fleet");
    let daemon = GitDaemon::start(served.path());
    let url = daemon.url(&repo.rel());
    let host = c.name().to_string();
    let branch_name = format!("hosts/{host}");
    let notes_ref = format!("refs/notes/trueup/{host}");
    // Ports no other test's container uses at the same time (they share
    // the host's loopback).
    let port_a = free_port();
    let port_b = free_port();
    let reports = Reports {
        path: c.path(LAST_RUN),
    };

    // ------------------------------------------------------------- 1: A
    let a = repo.commit_and_push(
        &branch_name,
        &[(
            "trueup.yaml",
            &branch(port_a, port_a, "hello from A", Extra::default()),
        )],
        "A: web server on its port",
    );
    c.copy_in(&deb, "/root/trueup.deb");
    c.run_ok(&["dpkg", "-i", "/root/trueup.deb"]);
    c.write_file(
        "/etc/trueup/agent.d/50-system-test.yaml",
        format!(
            "repo: {url}\ninterval: {}s\nsplay: 0s\n",
            INTERVAL.as_secs()
        ),
        0o644,
    );
    c.run_ok(&["systemctl", "restart", "trueup"]);
    let healthy_a = reports.wait(&c, Duration::from_secs(120), "A applied and healthy", |r| {
        r["source"]["commit"] == a.as_str() && r["health"]["status"] == "healthy"
    });
    assert_eq!(
        check(&healthy_a, "web")["status"],
        "passed",
        "{healthy_a:#}"
    );
    assert_eq!(
        check(&healthy_a, "page")["status"],
        "passed",
        "{healthy_a:#}"
    );
    assert_eq!(get(&c, port_a).as_deref(), Some("hello from A\n"));
    let state: Value = serde_json::from_str(&c.read_file("/var/lib/trueup/state.json")).unwrap();
    assert_eq!(state["last_healthy"], a.as_str(), "{state:#}");

    // ------------------------------------------------------------- 1: B
    // B moves the server to another port (the check still asks A's), adds
    // a file, a directory with a file and a symlink, and changes the page.
    let b_extra = Extra {
        files: B_FILES,
        top: B_TOP,
        ..Extra::default()
    };
    let b = repo.commit_and_push(
        &branch_name,
        &[(
            "trueup.yaml",
            &branch(port_b, port_a, "hello from B", b_extra),
        )],
        "B: listen elsewhere (breaks the page check)",
    );
    let pushed = Instant::now();
    let pushed_at = SystemTime::now();
    // Watched from outside: B takes the page off A's port, then the
    // rollback brings it back.
    c.wait_for(
        WINDOW + INTERVAL * 4,
        "B to move the server off A's port",
        || get(&c, port_a).is_none(),
    );
    let moved = pushed.elapsed();
    // During the window the agent does not hold the run lock: a check
    // runs at once and shows the health as pending.
    let asked = Instant::now();
    let during = c.exec(&["trueup", "check", "--format", "json"]);
    let check_took = asked.elapsed();
    let during: Value = serde_json::from_slice(&during.stdout)
        .unwrap_or_else(|e| c.fail(format!("trueup check during the window: {e}: {during:?}")));
    assert_eq!(during["source"]["commit"], b.as_str(), "{during:#}");
    assert_eq!(during["health"]["status"], "pending", "{during:#}");
    assert!(check_took < WINDOW, "the check waited {check_took:?}");
    c.wait_for(WINDOW + INTERVAL * 4, "A's page back on A's port", || {
        get(&c, port_a).as_deref() == Some("hello from A\n")
    });
    let back = pushed.elapsed();
    eprintln!("[health] B pushed → B applied {moved:.1?}, back on A {back:.1?}");
    // The window, one interval to pick B up, and the two converges.
    assert!(
        back <= WINDOW + INTERVAL + Duration::from_secs(3),
        "back on A only {back:?} after the push (window {WINDOW:?}, interval {INTERVAL:?})"
    );
    let rolled = reports.wait(
        &c,
        WINDOW + INTERVAL + Duration::from_secs(60),
        "B rolled back",
        |r| r["status"] == "rolled_back",
    );
    let took = pushed.elapsed();
    eprintln!("[health] B pushed → rolled back and A answering: {took:.1?}");
    assert_eq!(rolled["source"]["commit"], b.as_str(), "{rolled:#}");
    let rb = &rolled["health"]["rollback"];
    assert_eq!(rb["from"], b.as_str(), "{rolled:#}");
    assert_eq!(rb["to"], a.as_str(), "{rolled:#}");
    assert_eq!(rb["healthy_after"], true, "{rolled:#}");
    let page = check(&rolled, "page");
    assert_eq!(page["status"], "failed", "{rolled:#}");
    assert!(
        page["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{rolled:#}"
    );
    // The run that rolled back started within one interval of the push,
    // and its window was the branch's.
    let lag = started_at(&rolled)
        .duration_since(pushed_at)
        .unwrap_or(Duration::ZERO);
    assert!(
        lag <= INTERVAL + Duration::from_secs(2),
        "B picked up {lag:?} after the push"
    );
    assert_eq!(rolled["health"]["window_ms"], WINDOW.as_millis() as u64);
    // The service answers on A's port again, with A's page (3: changed
    // files are back to A's content).
    assert_eq!(get(&c, port_a).as_deref(), Some("hello from A\n"));
    assert_eq!(get(&c, port_b), None);
    assert_eq!(c.read_file(ENV_FILE), format!("PORT={port_a}\n"));
    assert_eq!(c.read_file(INDEX), "hello from A\n");
    // 3: what B added is gone.
    let removed: Vec<&str> = rb["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in [
        "/etc/hc/extra.conf",
        "/etc/hc/new.d/one.conf",
        "/etc/hc/new.d",
        "/etc/hc/current",
    ] {
        assert!(removed.contains(&p), "{p} not in removed: {rolled:#}");
        assert_eq!(
            c.exec(&["test", "-e", p]).status.code(),
            Some(1),
            "{p} still exists after the rollback"
        );
    }
    assert_eq!(
        c.exec(&["test", "-L", "/etc/hc/current"]).status.code(),
        Some(1)
    );
    // B's note says rolled back, which check failed and why.
    let note = repo
        .note(&notes_ref, &b)
        .unwrap_or_else(|| c.fail("no note on B"));
    let first = note.lines().next().unwrap_or("");
    assert!(first.contains("rolled back"), "{note}");
    assert!(first.contains("page (http"), "{note}");
    assert!(first.contains("connection refused"), "{note}");
    // state.json marks B; `trueup status` and STATUS= say so.
    let state: Value = serde_json::from_str(&c.read_file("/var/lib/trueup/state.json")).unwrap();
    assert_eq!(state["bad_commit"]["commit"], b.as_str(), "{state:#}");
    assert_eq!(state["applied_commit"], a.as_str(), "{state:#}");
    let status = c.run_ok(&["trueup", "status"]);
    assert!(
        status.contains(&format!("rolled back: {}", &b[..12])),
        "{status}"
    );

    // Over the next three intervals, B is not applied again.
    let mut after = vec![];
    let mut last_start = started_at(&rolled);
    while after.len() < 3 {
        let r = reports.wait(&c, INTERVAL * 10, "a run after the rollback", |r| {
            started_at(r) > last_start
        });
        last_start = started_at(&r);
        assert_eq!(r["source"]["commit"], a.as_str(), "B applied again: {r:#}");
        assert_eq!(r["source"]["rejected"]["commit"], b.as_str(), "{r:#}");
        assert_eq!(c.read_file(ENV_FILE), format!("PORT={port_a}\n"));
        after.push(r);
    }
    // Between runs, STATUS= names the commit kept out.
    c.wait_for(INTERVAL * 5, "STATUS= to say B is rolled back", || {
        c.unit_property("trueup.service", "StatusText")
            .contains(&format!("{} rolled back", &b[..7]))
    });
    record_timing(
        &format!(
            "health 1) B rolled back {:.1}s after the push (window {}s, interval {}s), kept out for 3 runs",
            took.as_secs_f64(),
            WINDOW.as_secs(),
            INTERVAL.as_secs()
        ),
        pushed.elapsed(),
    );

    // ------------------------------------------------------------- 1: C
    let fixed = repo.commit_and_push(
        &branch_name,
        &[(
            "trueup.yaml",
            &branch(port_b, port_b, "hello from C", b_extra),
        )],
        "C: the page check follows the server",
    );
    let healthy_c = reports.wait(&c, Duration::from_secs(60), "C applied and healthy", |r| {
        r["source"]["commit"] == fixed.as_str()
            && r["health"]["status"] == "healthy"
            && r["status"] != "rolled_back"
    });
    assert_eq!(
        check(&healthy_c, "page")["status"],
        "passed",
        "{healthy_c:#}"
    );
    assert_eq!(get(&c, port_b).as_deref(), Some("hello from C\n"));
    let state: Value = serde_json::from_str(&c.read_file("/var/lib/trueup/state.json")).unwrap();
    assert_eq!(state["last_healthy"], fixed.as_str(), "{state:#}");
    assert!(state.get("bad_commit").is_none(), "{state:#}");

    // ------------------------------------------------------------- 2: D
    // A unit that exits at once and is restarted forever: between restarts
    // systemd shows it activating, or active for a moment.
    let crash_files = format!(
        "{B_FILES}  /etc/systemd/system/{CRASH_UNIT}:\n    content: |\n      [Unit]\n      Description=crash loop\n      StartLimitIntervalSec=0\n      [Service]\n      ExecStart=/bin/sh -c 'sleep 0.5; exit 1'\n      Restart=always\n      RestartSec=300ms\n    notify: [{CRASH_UNIT}]\n"
    );
    let crash_service = format!("  {CRASH_UNIT}: {{ state: running }}\n");
    let d_yaml = branch(
        port_b,
        port_b,
        "hello from C",
        Extra {
            files: &crash_files,
            top: B_TOP,
            services: &crash_service,
            checks: "    crash: { service: hc-crash.service }\n",
        },
    );
    let d = repo.commit_and_push(
        &branch_name,
        &[("trueup.yaml", &d_yaml)],
        "D: a crash-looping unit",
    );
    let rolled_d = reports.wait(&c, Duration::from_secs(60), "D rolled back", |r| {
        r["source"]["commit"] == d.as_str() && r["status"] == "rolled_back"
    });
    let crash = check(&rolled_d, "crash");
    assert_eq!(crash["status"], "failed", "{rolled_d:#}");
    assert!(crash["attempts"].as_u64().unwrap() >= 2, "{rolled_d:#}");
    assert_eq!(check(&rolled_d, "web")["status"], "passed", "{rolled_d:#}");
    assert_eq!(
        rolled_d["health"]["rollback"]["to"],
        fixed.as_str(),
        "{rolled_d:#}"
    );
    assert_eq!(
        c.exec(&["test", "-e", &format!("/etc/systemd/system/{CRASH_UNIT}")])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(get(&c, port_b).as_deref(), Some("hello from C\n"));

    // ------------------------------------------------------------- 4: E
    // A failing check that is not required: reported, never rolled back.
    let e_yaml = branch(
        port_b,
        port_b,
        "hello from E",
        Extra {
            checks: "    optional: { command: [/bin/sh, -c, 'echo not ready yet; exit 3'], required: false }\n",
            ..b_extra
        },
    );
    let e = repo.commit_and_push(
        &branch_name,
        &[("trueup.yaml", &e_yaml)],
        "E: an optional check that fails",
    );
    let on_e = reports.wait(&c, Duration::from_secs(60), "E applied", |r| {
        r["source"]["commit"] == e.as_str() && r["health"]["status"].is_string()
    });
    assert_eq!(on_e["health"]["status"], "healthy", "{on_e:#}");
    assert_ne!(on_e["status"], "rolled_back", "{on_e:#}");
    let optional = check(&on_e, "optional");
    assert_eq!(optional["status"], "failed", "{on_e:#}");
    assert_eq!(optional["required"], false, "{on_e:#}");
    assert_eq!(optional["message"], "exit status 3", "{on_e:#}");
    assert_eq!(optional["output"], "not ready yet\n", "{on_e:#}");
    assert_eq!(get(&c, port_b).as_deref(), Some("hello from E\n"));
    // `trueup health` agrees: the required checks pass (exit 0).
    let now = c.exec(&["trueup", "health", "--format", "json"]);
    assert_eq!(now.status.code(), Some(0), "{now:?}");
    let now: Value = serde_json::from_slice(&now.stdout).unwrap();
    assert_eq!(now["status"], "healthy", "{now:#}");
    // And `trueup fleet status`, from the repository's notes alone.
    let fleet = c.run_ok(&[
        "trueup", "fleet", "status", "--format", "json", "--source", &url,
    ]);
    let fleet: Value = serde_json::from_str(&fleet).unwrap();
    let row = fleet["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|r| r["host"] == host.as_str()))
        .unwrap_or_else(|| panic!("{fleet:#}"));
    assert_eq!(row["health"], "healthy", "{fleet:#}");
    record_timing(
        "health 1-4) one container, the whole story",
        whole.elapsed(),
    );
}
