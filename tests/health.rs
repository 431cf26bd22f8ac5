//! Health checks without root (issue 12): a directory source under
//! `--root`, where only `http` and `tcp` checks run, service and command
//! checks are skipped, and an unhealthy host is reported, never rolled
//! back. `trueup health` runs the same checks now. (The rollback itself
//! needs a real host: `tests/system/health.rs`.)

mod support;

use std::net::TcpListener;
use std::path::Path;

use support::*;

/// A branch with a file, a TCP check on `port`, a service check and a
/// failing check that is not required.
fn branch(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "trueup.yaml",
        &format!(
            r#"files:
  /etc/app.conf:
    content: "port {port}\n"
health:
  window: 20s
  checks:
    db: {{ tcp: "127.0.0.1:{port}", timeout: 2s }}
    unit: {{ service: cron.service }}
    page: {{ http: "http://127.0.0.1:{port}/", required: false, timeout: 1s }}
"#
        ),
    );
    dir
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["health"]["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

#[test]
fn under_root_checks_are_reported_and_an_unhealthy_host_is_not_rolled_back() {
    let validator = schema_validator();
    let valid = |v: &serde_json::Value| {
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{v:#}");
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let src = branch(port);
    let host = Host::new();

    // A change, and every required check passes: the window ends early.
    let (code, r) = host.apply_json(src.path());
    assert_eq!(code, 0, "{r:#}");
    valid(&r);
    assert_eq!(r["status"], "converged", "{r:#}");
    assert_eq!(r["health"]["status"], "healthy", "{r:#}");
    assert!(
        r["health"]["duration_ms"].as_u64().unwrap() < 10_000,
        "{r:#}"
    );
    assert_eq!(r["health"]["window_ms"], 20_000);
    assert_eq!(check(&r, "db")["status"], "passed");
    assert_eq!(check(&r, "unit")["status"], "skipped", "{r:#}");
    // Not required: reported (the listener speaks no HTTP), no effect.
    let page = check(&r, "page");
    assert_eq!(page["status"], "failed", "{r:#}");
    assert_eq!(page["required"], false);

    // `trueup health` agrees.
    let now = host.run(src.path(), &["health", "--format", "json"]);
    assert_eq!(now.code, 0, "{}", now.all());
    assert_eq!(now.json()["status"], "healthy");

    // Nothing listens any more: the next run (nothing to change) looks
    // once, reports the host unhealthy, and keeps it as it is.
    drop(listener);
    let (code, r) = host.apply_json(src.path());
    valid(&r);
    assert_eq!(code, 1, "an unhealthy apply is a failure: {r:#}");
    assert_eq!(r["status"], "unhealthy", "{r:#}");
    assert_eq!(r["health"]["status"], "unhealthy");
    assert!(r["health"].get("rollback").is_none(), "{r:#}");
    let note = r["health"]["note"].as_str().unwrap();
    assert!(note.contains("--root"), "{note}");
    let db = check(&r, "db");
    assert_eq!(db["status"], "failed");
    assert!(
        db["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{r:#}"
    );
    assert!(
        r["health"]["duration_ms"].as_u64().unwrap() < 10_000,
        "{r:#}"
    );
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/app.conf")).unwrap(),
        format!("port {port}\n")
    );
    let detailed = host.run(src.path(), &["apply", "--detailed-exitcodes"]);
    assert_eq!(detailed.code, 4, "{}", detailed.all());

    let now = host.run(src.path(), &["health"]);
    assert_eq!(now.code, 2, "{}", now.all());
    assert!(now.stdout.contains("unhealthy"), "{}", now.stdout);
    assert!(now.stdout.contains("db (tcp 127.0.0.1:"), "{}", now.stdout);

    // A check changes nothing and decides nothing.
    let (code, r) = host.check_json(src.path());
    valid(&r);
    assert_eq!(code, 0, "{r:#}");
    assert!(r.get("health").is_none(), "{r:#}");
}

#[test]
fn a_branch_without_checks_is_healthy_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "trueup.yaml",
        "files:\n  /etc/x:\n    content: \"x\\n\"\n",
    );
    let host = Host::new();
    let (code, r) = host.apply_json(dir.path());
    assert_eq!(code, 0, "{r:#}");
    assert!(r.get("health").is_none(), "{r:#}");
    let now = host.run(dir.path(), &["health"]);
    assert_eq!(now.code, 0, "{}", now.all());
    assert!(now.stdout.contains("no health checks"), "{}", now.stdout);
}

#[test]
fn the_window_does_not_hold_the_run_lock() {
    // Nothing listens on this port: the apply waits out its whole window.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        &format!(
            "files:\n  /etc/app.conf:\n    content: \"x\\n\"\nhealth:\n  window: 8s\n  checks:\n    db: {{ tcp: \"127.0.0.1:{port}\", timeout: 1s }}\n"
        ),
    );
    let host = Host::new();
    let mut apply = std::process::Command::new(trueup_bin())
        .arg("--source")
        .arg(src.path())
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args(["apply", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The file is written before the window opens.
    let started = std::time::Instant::now();
    while !host.path("/etc/app.conf").exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A check during the window runs at once (the lock is free), while
    // the apply is still waiting for its checks.
    let check = host.run(src.path(), &["check"]);
    assert_eq!(check.code, 0, "{}", check.all());
    assert!(
        apply.try_wait().unwrap().is_none(),
        "the apply ended before the check ran; the window is 8s"
    );
    let out = apply.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "unhealthy", "{r:#}");
    assert!(
        r["health"]["duration_ms"].as_u64().unwrap() >= 7_000,
        "{r:#}"
    );
}
