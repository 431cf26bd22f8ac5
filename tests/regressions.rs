//! Tests named after defects found in review (issue 14), each failing
//! before its fix.

mod support;

use std::process::{Command, Stdio};

use support::{Host, demo_copy, trueup_bin};

/// `trueup render DIR | head -1` used to panic ("failed printing to
/// stdout: Broken pipe") and exit 101. Every printing command now ends
/// quietly when its reader has gone.
#[test]
fn a_closed_stdout_pipe_ends_commands_quietly() {
    let branch = demo_copy();
    let host = Host::new();
    for args in [
        vec!["render".to_string(), branch.path().display().to_string()],
        vec!["validate".to_string(), branch.path().display().to_string()],
        vec!["facts".to_string()],
        vec!["status".to_string()],
    ] {
        let mut cmd = Command::new(trueup_bin());
        cmd.arg("--state-dir").arg(host.state.path());
        let mut child = cmd
            .args(&args)
            .env_remove("TRUEUP_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Owners under `--root` used to resolve against the machine's users: a
/// user that only the root's `etc/passwd` lists was "does not exist", and a
/// machine user the root lacks was accepted with the machine's id.
#[test]
fn owners_under_a_root_resolve_against_the_roots_own_users() {
    let host = Host::new();
    support::write(
        host.root.path(),
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ntrueup-only-in-root:x:4242:4343::/home/t:/bin/sh\n",
    );
    support::write(
        host.root.path(),
        "etc/group",
        "root:x:0:\ntrueup-group-in-root:x:4343:\n",
    );
    let branch = tempfile::tempdir().unwrap();
    support::write(
        branch.path(),
        "trueup.yaml",
        "files:\n  /srv/owned:\n    content: \"x\\n\"\n    owner: trueup-only-in-root\n    group: trueup-group-in-root\n",
    );
    let (code, report) = host.check_json(branch.path());
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["status"], "drift", "{report:#}");
    assert!(
        report["errors"].as_array().is_none_or(Vec::is_empty),
        "{report:#}"
    );

    // A user the machine has (uid 1 is `daemon` on Debian and Fedora) but
    // the root does not: an error naming it, nothing touched.
    support::write(
        branch.path(),
        "trueup.yaml",
        "files:\n  /srv/owned:\n    content: \"x\\n\"\n    owner: daemon\n",
    );
    let r = host.run(branch.path(), &["apply", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("owner 'daemon' does not exist"),
        "{}",
        r.all()
    );
    assert!(!host.path("/srv/owned").exists());
}

/// `trueup disable` (and `enable`) issued while a run was in hand was lost:
/// they wrote `state.json` without the run lock, and the run then saved the
/// copy it had loaded at its start. They now wait for the lock.
#[test]
fn disable_and_enable_during_a_run_are_not_lost() {
    use std::io::BufRead;
    let host = Host::new();
    let state = host.state.path();
    let state_file = state.join("state.json");
    let lock_path = trueup::lock::default_lock_path(state);
    for (args, before, after) in [
        (
            vec!["disable", "--reason", "maintenance"],
            r#"{"applied_commit": "aaaa"}"#,
            r#"{"applied_commit": "bbbb"}"#,
        ),
        (
            vec!["enable"],
            r#"{"applied_commit": "bbbb", "disabled": {"reason": "maintenance", "since": "2026-12-01T00:00:00Z"}}"#,
            r#"{"applied_commit": "cccc", "disabled": {"reason": "maintenance", "since": "2026-12-01T00:00:00Z"}}"#,
        ),
    ] {
        std::fs::write(&state_file, before).unwrap();
        // A run in hand: it holds the lock and loaded the state above.
        let run = trueup::lock::acquire(&lock_path, std::time::Duration::ZERO, &|| false).unwrap();
        let mut cmd = Command::new(trueup_bin())
            .arg("--state-dir")
            .arg(state)
            .args(&args)
            .env("TRUEUP_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the command either waits for the lock or is done.
        let mut stderr = std::io::BufReader::new(cmd.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0
                || line.contains("waiting for the run lock")
            {
                break;
            }
            seen.push_str(&line);
        }
        // The run ends: it saves its copy (with its own change), unlocks.
        std::fs::write(&state_file, after).unwrap();
        drop(run);
        let out = cmd.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {seen}");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
        let run_change: serde_json::Value = serde_json::from_str(after).unwrap();
        assert_eq!(
            saved["applied_commit"], run_change["applied_commit"],
            "{saved:#}"
        );
        match args[0] {
            "disable" => assert_eq!(saved["disabled"]["reason"], "maintenance", "{saved:#}"),
            _ => assert!(saved.get("disabled").is_none(), "{saved:#}"),
        }
    }
}

/// Backups under `backup/` grew forever. After a run, those older than
/// `backups.max_age` (default 30 days) or beyond `backups.max_count` go.
#[test]
fn old_backups_are_pruned_after_a_run() {
    let day = std::time::Duration::from_secs(24 * 3600);
    let host = Host::new();
    let backup = host.state.path().join("backup");
    let make = |name: &str, age: std::time::Duration| {
        let dir = backup.join(name);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/motd"), "old motd\n").unwrap();
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    };
    make("20250101T000000Z-1", day * 31);
    make("20261125T000000Z-2", day * 5);
    make("20261130T000000Z-3", day);
    let branch = demo_copy();
    let (code, report) = host.apply_json(branch.path());
    assert_eq!(code, 0, "{report:#}");
    assert!(!backup.join("20250101T000000Z-1").exists());
    assert!(backup.join("20261125T000000Z-2").exists());
    assert!(backup.join("20261130T000000Z-3").exists());

    // With a count: only the newest stays.
    let cfg = host.state.path().join("agent.yaml");
    std::fs::write(&cfg, "backups:\n  max_count: 1\n").unwrap();
    let r = host.run(branch.path(), &["apply", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!backup.join("20261125T000000Z-2").exists());
    assert!(backup.join("20261130T000000Z-3").exists());
}

/// A temporary file left by a killed run stayed next to its managed file
/// until that file was written again, which may be never. Every apply now
/// starts by sweeping the managed directories.
#[test]
fn stale_temporary_files_are_swept_at_the_start_of_an_apply() {
    let host = Host::new();
    let branch = demo_copy();
    let (code, report) = host.apply_json(branch.path());
    assert_eq!(code, 0, "{report:#}");
    let etc = host.path("/etc");
    // /etc/motd is in sync: nothing will write it again.
    std::fs::write(etc.join(".motd.trueup-4194999-3"), "torn").unwrap();
    // Another file's leftover too, though that file is not declared.
    let other = ".gone.conf.trueup-4194998-9";
    std::fs::write(etc.join(other), "torn").unwrap();
    std::fs::write(etc.join("unrelated.trueup-1-1"), "not ours").unwrap();
    let (code, report) = host.apply_json(branch.path());
    assert_eq!(code, 0, "{report:#}");
    assert!(!etc.join(".motd.trueup-4194999-3").exists());
    assert!(!etc.join(other).exists());
    assert!(etc.join("unrelated.trueup-1-1").exists());
    // check changes nothing, temporary files included.
    std::fs::write(etc.join(".motd.trueup-4194999-4"), "torn").unwrap();
    host.check_json(branch.path());
    assert!(etc.join(".motd.trueup-4194999-4").exists());
}
