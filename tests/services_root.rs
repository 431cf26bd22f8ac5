//! Services under a scratch `--root`: the real `systemctl --root` enables,
//! disables and masks unit files there, a declared `state:` is refused with
//! a clear error, and the host's systemd is never asked anything.

mod support;

use std::process::Command;

use support::*;

const UNIT: &str = "trueup-rootsvc.service";

fn run(host: &Host, src: &std::path::Path, verb: &str) -> (i32, serde_json::Value) {
    let out = Command::new(trueup_bin())
        .arg("--config")
        .arg(host.state.path().join("no-agent.yaml"))
        .arg("--source")
        .arg(src)
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args([verb, "--format", "json"])
        .env_remove("TRUEUP_LOG")
        .output()
        .unwrap();
    let r = Run::from(out);
    (r.code, r.json())
}

#[test]
fn enablement_and_masking_under_a_root_state_refused() {
    let host = Host::new();
    write(
        host.root.path(),
        &format!("usr/lib/systemd/system/{UNIT}"),
        "[Unit]\nDescription=trueup --root test\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    );
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        &format!(
            "services:\n  {UNIT}: {{ enabled: true }}\n  trueup-other.service: {{ masked: true }}\n"
        ),
    );
    let (code, report) = run(&host, src.path(), "check");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(
        drifted(&report),
        vec![
            (
                "service".into(),
                "trueup-other.service".into(),
                vec!["masked".into()]
            ),
            ("service".into(), UNIT.into(), vec!["enabled".into()]),
        ]
    );
    let (code, report) = run(&host, src.path(), "apply");
    assert_eq!(code, 0, "{report:#}");
    let wants = host.path(&format!(
        "/etc/systemd/system/multi-user.target.wants/{UNIT}"
    ));
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        std::path::Path::new(&format!("/usr/lib/systemd/system/{UNIT}"))
    );
    assert_eq!(
        std::fs::read_link(host.path("/etc/systemd/system/trueup-other.service")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    let (code, report) = run(&host, src.path(), "check");
    assert_eq!(code, 0, "{report:#}");

    // Disabled by hand under the root: drift, repaired.
    std::fs::remove_file(&wants).unwrap();
    let (code, report) = run(&host, src.path(), "check");
    assert_eq!(code, 2, "{report:#}");
    let (code, _) = run(&host, src.path(), "apply");
    assert_eq!(code, 0);
    assert!(wants.is_symlink());

    // Whether it runs cannot be managed there: a clear per-service error.
    write(
        src.path(),
        "trueup.yaml",
        &format!("services:\n  {UNIT}: {{ enabled: true, state: running }}\n"),
    );
    let (code, report) = run(&host, src.path(), "apply");
    assert_eq!(code, 1, "{report:#}");
    let r = &report["resources"][0];
    assert_eq!(r["status"], "failed", "{report:#}");
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("--root") && err.contains("state"), "{err}");
}
