//! `trueup validate --fleet` on the example fleet repository
//! (examples/fleet): it passes; a change that breaks the state of one host
//! only fails, naming that host; and a host that has reported is rendered
//! with the facts of its own latest note.

mod common;
mod gitsupport;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::gitserver::{TestRepo, git};
use gitsupport::{GitHost, trueup_bin};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet")
}

fn copy_example(to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", example().display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn validate(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(trueup_bin())
        .arg("--config")
        .arg(dir.join("no-agent.yaml"))
        .args(["validate", "--fleet"])
        .arg(dir)
        .args(args)
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_REPORTS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap_or_else(|| panic!("no line for {host}:\n{out}"))
}

#[test]
fn the_example_fleet_validates_and_a_break_on_one_host_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    std::fs::create_dir(&dir).unwrap();
    copy_example(&dir);

    // The example as committed: every host renders (its repo: is not
    // reachable here, so no reports are read).
    let (code, out, err) = validate(&dir, &["--offline"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for host in ["web-01", "web-02", "db-01"] {
        let l = line(&out, host);
        assert!(l.contains(" ok "), "{out}");
        assert!(l.contains(&format!("hosts/{host}.facts.yaml")), "{out}");
    }

    // Without --offline, an unreachable reports location is an error that
    // says where it looked, not a silent pass.
    let (code, _, err) = validate(&dir, &["--reports", "git://127.0.0.1:9/none.git"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");

    // db-01 loses the var the base firewall template needs: only db-01
    // fails, and the error says where.
    std::fs::write(
        dir.join("hosts/db-01.yaml"),
        "# db-01 without its ports\nfiles:\n  /etc/postgresql/trueup-listen.conf:\n    content: \"x\\n\"\n",
    )
    .unwrap();
    let (code, out, err) = validate(&dir, &["--offline"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(line(&out, "db-01").contains("FAILED"), "{out}");
    assert!(out.contains("templates/nftables.conf.hbs"), "{out}");
    assert!(out.contains("vars.open_ports"), "{out}");
    assert!(line(&out, "web-01").contains(" ok "), "{out}");
    assert!(line(&out, "web-02").contains(" ok "), "{out}");
    assert!(out.contains("1 of 3 hosts fail"), "{out}");

    // A host missing from the checkout's hosts/ (a typo in fleet.yaml).
    std::fs::remove_file(dir.join("hosts/web-02.yaml")).unwrap();
    let (code, out, _) = validate(&dir, &["--offline", "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web02 = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web-02")
        .unwrap();
    assert_eq!(web02["valid"], false);
    assert!(
        web02["errors"][0]
            .as_str()
            .unwrap()
            .contains("'hosts/web-02.yaml' does not exist"),
        "{web02}"
    );
}

#[test]
fn a_bad_fleet_yaml_names_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_example(dir);
    for (yaml, expect) in [
        (
            "hosts:\n  web-01: { groups: [web], grups: [x] }\n",
            "fleet.yaml:2:28: unknown field `grups`",
        ),
        (
            "hosts:\n  web-01: {}\nrollout:\n  waves: [canary]\n",
            "fleet.yaml:4:11: rollout.waves: no host is in the group 'canary'",
        ),
        (
            "hosts:\n  \"web/01\": {}\n",
            "fleet.yaml:2:3: host 'web/01'",
        ),
        (
            "rollout: { wait: soon }\n",
            "fleet.yaml:1:18: rollout.wait: 'soon'",
        ),
    ] {
        std::fs::write(dir.join("fleet.yaml"), yaml).unwrap();
        let (code, out, err) = validate(dir, &["--offline"]);
        assert_eq!(code, 1, "{yaml}\n{out}\n{err}");
        assert!(err.contains(expect), "{yaml}\nexpected {expect}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_host_that_reported_is_rendered_with_the_facts_of_its_note() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    copy_example(&repo.work);
    let commit = repo.commit(&[], "the example fleet");
    repo.push("main");
    git(&repo.work, &["push", "-q", "origin", "main:hosts/db-01"]);
    let url = format!("file://{}", repo.bare.display());

    // db-01 applies its branch for real (under its own root) and notes it;
    // its facts say 192.0.2.7, not the stand-in file's address.
    let host = GitHost::new("db-01");
    let facts = std::fs::read_to_string(host.etc.path().join("facts.yaml"))
        .unwrap()
        .replace("ipv4: []", "ipv4: [192.0.2.7]");
    std::fs::write(host.etc.path().join("facts.yaml"), facts).unwrap();
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        host.read("/etc/postgresql/trueup-listen.conf").as_deref(),
        Some("listen_addresses = '192.0.2.7'\n")
    );
    let note = repo.note(&host.notes_ref(), &commit).expect("a note");
    assert!(note.contains("\"facts\""), "{note}");
    assert!(!note.contains("machine_id"), "{note}");
    assert!(!note.contains("0123456789abcdef0123456789abcdef"), "{note}");

    let (code, out, err) = validate(&repo.work, &["--reports", &url, "--format", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    let db = hosts.iter().find(|h| h["host"] == "db-01").unwrap();
    assert_eq!(db["facts"]["kind"], "report", "{db}");
    assert_eq!(db["facts"]["commit"], commit.as_str(), "{db}");
    let web = hosts.iter().find(|h| h["host"] == "web-01").unwrap();
    assert_eq!(web["facts"]["kind"], "file", "{web}");

    // The reported facts are the ones rendered with: a template that
    // needs an address in 192.0.2.0/24 breaks db-01 only through its note.
    std::fs::write(
        repo.work.join("hosts/db-01.yaml"),
        "vars:\n  open_ports: [5432]\nfiles:\n  /etc/x:\n    content: \"{{#if (eq facts.ipv4.[0] \\\"192.0.2.7\\\")}}{{vars.missing}}{{/if}}\"\n",
    )
    .unwrap();
    let (code, out, _) = validate(&repo.work, &["--reports", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "db-01").contains("FAILED"), "{out}");
    assert!(out.contains("vars.missing"), "{out}");
    let (code, out, _) = validate(&repo.work, &["--offline"]);
    assert_eq!(code, 0, "with the stand-in facts db-01 renders:\n{out}");
}

#[test]
fn a_host_whose_own_file_is_missing_keeps_its_last_good_commit() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    let good = repo.commit(
        &[
            (
                "trueup.yaml",
                "include: [\"hosts/{{facts.hostname}}.yaml\"]\n",
            ),
            (
                "hosts/db-01.yaml",
                "files:\n  /etc/motd: { content: \"db\\n\" }\n",
            ),
        ],
        "good",
    );
    git(&repo.work, &["push", "-q", "origin", "main:hosts/db-01"]);
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("db-01");
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("db\n"));

    // The host's file is renamed away on the next commit.
    git(&repo.work, &["mv", "hosts/db-01.yaml", "hosts/db-1.yaml"]);
    let bad = repo.commit(&[], "rename db-01's file by mistake");
    git(&repo.work, &["push", "-q", "origin", "main:hosts/db-01"]);
    let run = host.apply(&url);
    let report = run.json();
    assert_eq!(report["source"]["commit"], good.as_str(), "{report}");
    assert_eq!(
        report["source"]["rejected"]["commit"],
        bad.as_str(),
        "{report}"
    );
    let reason = report["source"]["rejected"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'hosts/db-01.yaml' does not exist"),
        "{reason}"
    );
    assert_eq!(host.read("/etc/motd").as_deref(), Some("db\n"));
    assert_eq!(host.applied_commit().as_deref(), Some(good.as_str()));
    // The note on the bad commit names it and the missing path.
    let note = repo
        .note(&host.notes_ref(), &bad)
        .expect("a note on the bad commit");
    let summary = note.lines().next().unwrap();
    assert!(summary.contains(&bad[..12]), "{summary}");
    assert!(summary.contains("hosts/db-01.yaml"), "{summary}");
}
