//! The convergence engine end to end, through the real binary: drift found,
//! repaired, and found no more; bad branches change nothing; symlinks are
//! never written through; JSON output follows its schema.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use support::*;

const DEMO_RESOURCES: usize = 6;

fn only(report: &serde_json::Value) -> (String, String, Vec<String>) {
    let d = drifted(report);
    assert_eq!(d.len(), 1, "expected exactly one drifted resource: {d:?}");
    d.into_iter().next().unwrap()
}

/// Check, apply, check again: drift, converge, in sync.
fn converge(host: &Host, src: &Path) {
    let (code, report) = host.apply_json(src);
    assert_eq!(code, 0, "{report}");
    let (code, report) = host.check_json(src);
    assert_eq!(code, 0, "{report}");
    assert!(drifted(&report).is_empty());
}

#[test]
fn empty_root_drifts_everywhere_then_converges() {
    let host = Host::new();
    let src = demo_branch();
    let (code, report) = host.check_json(&src);
    assert_eq!(code, 2, "{report}");
    let d = drifted(&report);
    assert_eq!(d.len(), DEMO_RESOURCES, "{d:?}");
    assert_eq!(report["summary"]["drift"], DEMO_RESOURCES);
    assert!(
        d.iter().all(|(_, _, attrs)| attrs == &["presence"]),
        "{d:?}"
    );
    // A check changes nothing.
    assert!(snapshot(host.root.path()).is_empty());

    let (code, report) = host.apply_json(&src);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["status"], "converged");
    assert_eq!(report["summary"]["changed"], DEMO_RESOURCES);

    let (code, report) = host.check_json(&src);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["status"], "in_sync");
    assert!(drifted(&report).is_empty());

    let conf = std::fs::read_to_string(host.path("/etc/demo/app.conf")).unwrap();
    assert!(
        conf.contains("listen = 8080"),
        "trueup.yaml's var wins over the role's: {conf}"
    );
    assert!(conf.contains("admin = bob"), "{conf}");
    let hc = host.path("/usr/local/bin/healthcheck");
    assert_eq!(
        std::fs::metadata(&hc).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(
        std::fs::read_to_string(hc)
            .unwrap()
            .contains("{{ braces }}")
    );
    assert_eq!(
        std::fs::read_link(host.path("/etc/demo/current")).unwrap(),
        Path::new("/srv/demo")
    );
}

#[test]
#[ignore = "needs root: changes a file's owner (chown): run by scripts/test.sh"]
fn hand_changes_are_named_exactly_and_repaired() {
    let host = Host::new();
    let src = demo_branch();
    converge(&host, &src);

    // Content.
    std::fs::write(host.path("/etc/motd"), "edited by hand\n").unwrap();
    let (code, report) = host.check_json(&src);
    assert_eq!(code, 2);
    assert_eq!(
        only(&report),
        ("file".into(), "/etc/motd".into(), vec!["content".into()])
    );
    let diff = report["resources"][0]["drift"][0]["diff"].as_str().unwrap();
    assert!(diff.contains("-edited by hand"), "{diff}");
    converge(&host, &src);
    assert!(
        std::fs::read_to_string(host.path("/etc/motd"))
            .unwrap()
            .starts_with("Managed by trueup")
    );
    // The hand-edited content was kept.
    let kept: Vec<_> = walk_files(&host.state.path().join("backup"));
    assert!(
        kept.iter()
            .any(|(p, c)| p.ends_with("etc/motd") && c == "edited by hand\n"),
        "{kept:?}"
    );

    // Mode.
    let conf = host.path("/etc/demo/app.conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, report) = host.check_json(&src);
    assert_eq!(code, 2);
    assert_eq!(
        only(&report),
        (
            "file".into(),
            "/etc/demo/app.conf".into(),
            vec!["mode".into()]
        )
    );
    converge(&host, &src);
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o7777, 0o640);

    // Owner (the demo's owner is the user running trueup).
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(
        me, 0,
        "this test changes ownership and runs as root, like CI"
    );
    std::os::unix::fs::chown(&conf, Some(65534), None).unwrap();
    let (code, report) = host.check_json(&src);
    assert_eq!(code, 2);
    assert_eq!(
        only(&report),
        (
            "file".into(),
            "/etc/demo/app.conf".into(),
            vec!["owner".into()]
        )
    );
    converge(&host, &src);
    assert_eq!(std::fs::metadata(&conf).unwrap().uid(), me);

    // Deletion.
    std::fs::remove_file(host.path("/etc/issue.net")).unwrap();
    let (code, report) = host.check_json(&src);
    assert_eq!(code, 2);
    assert_eq!(
        only(&report),
        (
            "file".into(),
            "/etc/issue.net".into(),
            vec!["presence".into()]
        )
    );
    converge(&host, &src);

    // A directory's mode and a symlink's target.
    std::fs::set_permissions(
        host.path("/srv/demo"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let (_, report) = host.check_json(&src);
    assert_eq!(
        only(&report),
        ("directory".into(), "/srv/demo".into(), vec!["mode".into()])
    );
    converge(&host, &src);
    let link = host.path("/etc/demo/current");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/elsewhere", &link).unwrap();
    let (_, report) = host.check_json(&src);
    assert_eq!(
        only(&report),
        (
            "symlink".into(),
            "/etc/demo/current".into(),
            vec!["target".into()]
        )
    );
    converge(&host, &src);
}

fn walk_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

/// Every kind of broken branch: exit 1, the position in the message, and
/// not one byte changed under the root.
#[test]
fn broken_branches_change_nothing_and_say_where() {
    let host = Host::new();
    // Start from a converged host plus one drifted file, so a run that
    // wrongly went ahead would visibly change something.
    converge(&host, &demo_branch());
    std::fs::write(host.path("/etc/motd"), "drifted\n").unwrap();
    let before = snapshot(host.root.path());

    let cases: &[(&str, &str, &str, &str)] = &[
        // (name, file to write, its content, expected position in message)
        (
            "schema error",
            "trueup.yaml",
            "files:\n  /etc/motd:\n    content: x\n    mode: [1]\n",
            "trueup.yaml:4:",
        ),
        (
            "unknown key",
            "trueup.yaml",
            "files:\n  /etc/motd:\n    contnet: x\n",
            "trueup.yaml:3:5",
        ),
        (
            "yaml syntax",
            "trueup.yaml",
            "files:\n  /etc/motd: { content: x\n",
            "trueup.yaml:",
        ),
        (
            "missing var",
            "templates/app.conf.hbs",
            "a\nlisten = {{vars.nope}}\n",
            "templates/app.conf.hbs:2:",
        ),
        (
            "include cycle",
            "roles/base.yaml",
            "include: [trueup.yaml]\n",
            "roles/base.yaml:1:",
        ),
        (
            "missing source",
            "trueup.yaml",
            "files:\n  /etc/motd:\n    source: files/nope\n",
            "trueup.yaml:3:13",
        ),
    ];
    for (name, file, content, position) in cases {
        let src = demo_copy();
        write(src.path(), file, content);
        for args in [&["check"][..], &["apply"][..]] {
            let r = host.run(src.path(), args);
            assert_eq!(r.code, 1, "{name} ({args:?}): exit code\n{}", r.all());
            assert!(
                r.all().contains(position),
                "{name}: message lacks {position}:\n{}",
                r.all()
            );
            assert_eq!(
                snapshot(host.root.path()),
                before,
                "{name}: the root changed"
            );
        }
        let r = host.run(src.path(), &["apply", "--format", "json"]);
        let report = r.json();
        assert_eq!(report["status"], "error", "{name}");
        assert!(
            report["errors"][0].as_str().unwrap().contains(position),
            "{name}: {report}"
        );
        let r = host.run(src.path(), &["validate", src.path().to_str().unwrap()]);
        assert_eq!(r.code, 1, "{name}: validate");
        assert!(
            r.stderr.contains(position),
            "{name}: validate: {}",
            r.stderr
        );
    }
}

#[test]
fn symlinked_parent_pointing_outside_is_not_followed() {
    let host = Host::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path("/etc")).unwrap();
    std::os::unix::fs::symlink(outside.path(), host.path("/etc/demo")).unwrap();

    let (code, report) = host.apply_json(&demo_branch());
    assert_eq!(code, 1, "{report}");
    assert!(
        snapshot(outside.path()).is_empty(),
        "nothing was written through the symlink"
    );
    let failed: Vec<_> = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec!["/etc/demo/app.conf", "/etc/demo/current"],
        "{report}"
    );
    let err = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "/etc/demo/app.conf")
        .unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("symlink"), "{err}");
    // Unrelated resources converged anyway.
    assert!(host.path("/etc/motd").is_file());
    assert!(host.path("/srv/demo").is_dir());
}

#[test]
fn symlink_destination_is_replaced_not_written_through() {
    let host = Host::new();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "do not touch\n").unwrap();
    std::fs::create_dir_all(host.path("/etc")).unwrap();
    std::os::unix::fs::symlink(&precious, host.path("/etc/motd")).unwrap();

    let (code, report) = host.check_json(&demo_branch());
    assert_eq!(code, 2);
    let motd = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "/etc/motd")
        .unwrap()
        .clone();
    assert_eq!(motd["drift"][0]["attribute"], "presence");
    assert!(
        motd["drift"][0]["actual"]
            .as_str()
            .unwrap()
            .starts_with("symlink to")
    );

    let (code, report) = host.apply_json(&demo_branch());
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "do not touch\n"
    );
    let meta = std::fs::symlink_metadata(host.path("/etc/motd")).unwrap();
    assert!(meta.file_type().is_file());
    // The link that was replaced is kept, as its target.
    let kept = walk_files(&host.state.path().join("backup"));
    assert!(
        kept.iter()
            .any(|(p, c)| p.ends_with("etc/motd.symlink") && c == precious.to_str().unwrap()),
        "{kept:?}"
    );
}

#[test]
fn json_output_follows_the_documented_schema() {
    let schema_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json"),
    )
    .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&schema_text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let valid = |v: &serde_json::Value| {
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{v:#}");
    };
    let host = Host::new();
    let src = demo_branch();
    let (_, drift) = host.check_json(&src);
    valid(&drift);
    let (_, applied) = host.apply_json(&src);
    valid(&applied);
    let (_, clean) = host.check_json(&src);
    valid(&clean);
    std::fs::write(host.path("/etc/motd"), "x\n").unwrap();
    let dry = host.run(&src, &["apply", "--dry-run", "--format", "json"]);
    valid(&dry.json());
    assert_eq!(dry.json()["dry_run"], true);
    let broken = demo_copy();
    write(broken.path(), "trueup.yaml", "nope: 1\n");
    let (_, error) = host.check_json(broken.path());
    valid(&error);
    // last-run.json is the same report.
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.state.path().join("last-run.json")).unwrap())
            .unwrap();
    valid(&last);
    assert_eq!(last["status"], "error");
    // And the schema is not vacuous: a wrong status is rejected.
    let mut bad = clean.clone();
    bad["status"] = "fine".into();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn detailed_exit_codes() {
    let host = Host::new();
    let src = demo_branch();
    let r = host.run(&src, &["apply", "--dry-run", "--detailed-exitcodes"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        snapshot(host.root.path()).is_empty(),
        "a dry run changes nothing"
    );
    let r = host.run(&src, &["apply", "--detailed-exitcodes"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let r = host.run(&src, &["apply", "--detailed-exitcodes"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // A failure next to a change: 6.
    std::fs::remove_file(host.path("/etc/motd")).unwrap();
    std::fs::remove_file(host.path("/etc/demo/current")).unwrap();
    std::fs::create_dir(host.path("/etc/demo/current")).unwrap();
    let r = host.run(&src, &["apply", "--detailed-exitcodes"]);
    assert_eq!(r.code, 6, "{}", r.all());
}

#[test]
fn secret_content_never_appears_in_output_or_reports() {
    let host = Host::new();
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /etc/secret.key:\n    content: \"s3cr3t-new\\n\"\n    secret: true\n    mode: \"0600\"\n",
    );
    std::fs::create_dir_all(host.path("/etc")).unwrap();
    std::fs::write(host.path("/etc/secret.key"), "s3cr3t-old\n").unwrap();
    for args in [
        &["check"][..],
        &["check", "--format", "json"],
        &["apply", "--format", "json"],
    ] {
        let r = host.run(src.path(), args);
        assert!(!r.all().contains("s3cr3t"), "{args:?}: {}", r.all());
    }
    let last = std::fs::read_to_string(host.state.path().join("last-run.json")).unwrap();
    assert!(!last.contains("s3cr3t"), "{last}");
    let r = Host::new().run(src.path(), &["render", src.path().to_str().unwrap()]);
    assert!(!r.all().contains("s3cr3t"), "{}", r.all());
}

#[test]
fn facts_render_and_validate_commands() {
    let r = std::process::Command::new(trueup_bin())
        .args(["facts", "--format", "json"])
        .output()
        .unwrap();
    assert!(r.status.success());
    let facts: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    for key in [
        "hostname",
        "fqdn",
        "os",
        "arch",
        "cpus",
        "memory_mb",
        "ipv4",
        "ipv6",
        "machine_id",
    ] {
        assert!(facts.get(key).is_some(), "facts lack {key}: {facts}");
    }
    // A facts file stands in for the machine.
    let dir = tempfile::tempdir().unwrap();
    let mut other = facts.clone();
    other["hostname"] = "web42".into();
    let facts_file = dir.path().join("facts.json");
    std::fs::write(&facts_file, other.to_string()).unwrap();
    let demo = demo_branch();
    let r = std::process::Command::new(trueup_bin())
        .args(["render", "--format", "json", "--facts"])
        .arg(&facts_file)
        .arg(&demo)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let state: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        state["files"]["/etc/motd"]["content"]["text"],
        "Managed by trueup on web42\n"
    );
    let r = std::process::Command::new(trueup_bin())
        .arg("validate")
        .arg(&demo)
        .output()
        .unwrap();
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("valid, 6 resources"));
}
