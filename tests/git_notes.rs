//! Trust, anti-rollback, Git notes and `fleet status` through the real
//! binary against real repositories on loopback.

mod common;
mod gitsupport;

use std::collections::BTreeMap;
use std::path::Path;

use common::gitserver::{GitDaemon, SshKey, TestRepo, git, write_allowed_signers};
use gitsupport::*;
use tempfile::TempDir;

const BRANCH: &str = "hosts/web1";

/// Every file under `dir` with its content, to show nothing changed.
fn tree_of(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                todo.push(p);
                out.insert(rel, "dir".into());
            } else {
                out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Asserts the run was refused, changed nothing, and noted the refusal on
/// `commit`. Returns the refusal message.
fn assert_refused(host: &GitHost, repo: &TestRepo, url: &str, commit: &str) -> String {
    let before = tree_of(host.root.path());
    let applied = host.applied_commit();
    let run = host.apply(url);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "refused", "{report}");
    assert_eq!(report["source"]["commit"], commit);
    assert_eq!(report["summary"]["changed"], 0);
    assert_eq!(report["source"]["applied"], applied.as_deref().unwrap());
    assert_schema(&report);
    assert_eq!(
        tree_of(host.root.path()),
        before,
        "a refused commit changed the root"
    );
    assert_eq!(
        host.applied_commit(),
        applied,
        "a refused commit became applied"
    );
    let note = repo
        .note(&host.notes_ref(), commit)
        .unwrap_or_else(|| panic!("the refusal of {commit} is not noted"));
    let (summary, noted) = split_note(&note);
    assert!(summary.starts_with("trueup apply refused"), "{summary}");
    assert_eq!(noted["status"], "refused");
    let message = report["errors"][0].as_str().unwrap().to_string();
    assert_eq!(noted["errors"][0], message.as_str());
    message
}

#[test]
fn trust_signed_unsigned_other_key_and_rollback() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let keys = TempDir::new().unwrap();
    let signer = SshKey::generate(keys.path(), "ops", "ops@example.invalid");
    let intruder = SshKey::generate(keys.path(), "intruder", "intruder@example.invalid");
    let allowed = keys.path().join("allowed_signers");
    write_allowed_signers(&allowed, &[&signer]);
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    host.configure(&format!(
        "trust:\n  allowed_signers: {}\n",
        allowed.display()
    ));

    // Signed by an allowed signer: applied.
    let c1 = repo.commit_signed(&files(&motd_branch("one")), "one", &signer);
    repo.push(BRANCH);
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("one\n"));
    let c2 = repo.commit_signed(&files(&motd_branch("two")), "two", &signer);
    repo.push(BRANCH);
    assert_eq!(host.apply(&url).code, 0);
    assert_eq!(host.applied_commit().as_deref(), Some(c2.as_str()));

    // Unsigned.
    let unsigned = repo.commit(&files(&motd_branch("unsigned")), "unsigned");
    repo.push(BRANCH);
    let e = assert_refused(&host, &repo, &url, &unsigned);
    assert!(e.contains("is not signed"), "{e}");

    // Signed by a key that is not allowed.
    let other = repo.commit_signed(&files(&motd_branch("other")), "other", &intruder);
    repo.push(BRANCH);
    let e = assert_refused(&host, &repo, &url, &other);
    assert!(
        e.contains("signed by a key") && e.contains("allowed_signers"),
        "{e}"
    );

    // A force-push of a new, properly signed history that drops c2.
    repo.reset_hard(&c1);
    let forked = repo.commit_signed(&files(&motd_branch("forked")), "forked", &signer);
    repo.force_push(BRANCH);
    let e = assert_refused(&host, &repo, &url, &forked);
    assert!(
        e.contains("does not descend from the last applied commit"),
        "{e}"
    );
    assert!(e.contains(&c2), "{e}");

    // Replaying an older signed commit.
    repo.reset_hard(&c1);
    repo.force_push(BRANCH);
    let e = assert_refused(&host, &repo, &url, &c1);
    assert!(e.contains("does not descend"), "{e}");
    assert_eq!(host.read("/etc/motd").as_deref(), Some("two\n"));

    // allow_rewind accepts it.
    host.configure(&format!(
        "trust:\n  allowed_signers: {}\n  allow_rewind: true\n",
        allowed.display()
    ));
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("one\n"));
    assert_eq!(host.applied_commit().as_deref(), Some(c1.as_str()));
}

#[test]
fn openpgp_signatures_through_gpgv() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let gnupg = TempDir::new().unwrap();
    let home = gnupg.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        common::gitserver::run(
            std::process::Command::new("gpg")
                .env("GNUPGHOME", &home)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args),
        )
    };
    gpg(&[
        "--quick-gen-key",
        "Ops <ops@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    let keyring = gnupg.path().join("trusted.gpg");
    let exported = std::process::Command::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--export", "ops@example.invalid"])
        .output()
        .unwrap();
    assert!(!exported.stdout.is_empty());
    std::fs::write(&keyring, &exported.stdout).unwrap();

    repo.write_files(&files(&motd_branch("pgp")));
    git(&repo.work, &["add", "-A"]);
    let mut commit = common::gitserver::git_command(&repo.work);
    commit.env("GNUPGHOME", &home).args([
        "-c",
        "user.signingkey=ops@example.invalid",
        "commit",
        "-q",
        "-S",
        "-m",
        "pgp",
    ]);
    common::gitserver::run(&mut commit);
    repo.push(BRANCH);
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    host.configure(&format!("trust:\n  gpg_keyring: {}\n", keyring.display()));
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("pgp\n"));

    // Another keyring (an empty one) refuses the same commit.
    let other = GitHost::new("web2");
    let empty = gnupg.path().join("empty.gpg");
    std::fs::write(&empty, b"").unwrap();
    other.configure(&format!("trust:\n  gpg_keyring: {}\n", empty.display()));
    let run = other.run(&url, &["--branch", BRANCH, "apply", "--format", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "refused");
    assert!(other.read("/etc/motd").is_none());
    let _ = std::process::Command::new("gpgconf")
        .env("GNUPGHOME", &home)
        .args(["--kill", "gpg-agent"])
        .status();
}

#[test]
fn two_hosts_push_notes_at_once_for_20_rounds_and_lose_none() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url(&repo.rel());
    let hosts = [GitHost::new("h1"), GitHost::new("h2")];
    let mut commits = Vec::new();
    for round in 0..20 {
        let c = repo.commit_and_push(
            "shared",
            &files(&motd_branch(&format!("round {round}"))),
            "round",
        );
        let children: Vec<_> = hosts
            .iter()
            .map(|h| h.spawn(&url, &["--branch", "shared", "apply", "--format", "json"]))
            .collect();
        for (h, child) in hosts.iter().zip(children) {
            let run = Run::from(child.wait_with_output().unwrap());
            assert_eq!(
                run.code, 0,
                "{} round {round}:\n{}\n{}",
                h.name, run.stdout, run.stderr
            );
            assert_eq!(
                h.state_json()["last_note"]["unpushed"],
                false,
                "{}",
                run.stderr
            );
        }
        commits.push(c);
    }
    for h in &hosts {
        assert_eq!(notes_commits(&repo.bare, &h.notes_ref()), 20, "{}", h.name);
        for (round, c) in commits.iter().enumerate() {
            let note = repo
                .note(&h.notes_ref(), c)
                .unwrap_or_else(|| panic!("{}: note of round {round} lost", h.name));
            let (_, report) = split_note(&note);
            assert_eq!(report["host"], h.name.as_str());
            assert_eq!(report["source"]["commit"], c.as_str());
        }
    }
}

#[test]
fn a_wiped_cache_merges_onto_the_remote_notes_and_loses_none() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("one")), "one");
    assert_eq!(host.apply(&url).code, 0);
    let c2 = repo.commit_and_push(BRANCH, &files(&motd_branch("two")), "two");
    assert_eq!(host.apply(&url).code, 0);
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 2);

    // The cache is lost (state.json too, as on a rebuilt host): the new
    // local notes ref starts from nothing, so its push is not a
    // fast-forward and must be merged.
    std::fs::remove_dir_all(host.state.path().join("repo.git")).unwrap();
    std::fs::remove_file(host.state.path().join("state.json")).unwrap();
    let c3 = repo.commit_and_push(BRANCH, &files(&motd_branch("three")), "three");
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host.state_json()["last_note"]["unpushed"], false);
    for c in [&c1, &c2, &c3] {
        assert!(
            repo.note(&host.notes_ref(), c).is_some(),
            "note on {c} lost"
        );
    }
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 3);
}

#[test]
fn a_failed_push_is_retried_on_the_next_run() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url(&repo.rel());
    let host = GitHost::new("web1");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("one")), "one");
    // The remote refuses every push to the notes ref for now.
    let hook = repo.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'closed for maintenance' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = host.apply(&url);
    assert_eq!(
        run.code, 0,
        "a failed push failed the run:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(host.read("/etc/motd").as_deref(), Some("one\n"));
    assert_eq!(host.state_json()["last_note"]["unpushed"], true);
    assert!(repo.note(&host.notes_ref(), &c1).is_none());

    // Open again: the next (unchanged) run pushes the note it kept.
    std::fs::remove_file(&hook).unwrap();
    let run = host.apply(&url);
    assert_eq!(run.code, 0);
    assert_eq!(run.json()["status"], "in_sync");
    assert_eq!(host.state_json()["last_note"]["unpushed"], false);
    let (_, noted) = split_note(&repo.note(&host.notes_ref(), &c1).expect("note pushed"));
    assert_eq!(noted["status"], "converged");
}

#[test]
fn heartbeat_writes_a_note_when_nothing_changed() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    repo.commit_and_push(BRANCH, &files(&motd_branch("one")), "one");
    host.configure("report:\n  heartbeat: 0s\n");
    assert_eq!(host.apply(&url).code, 0);
    let latest = "refs/notes/trueup-latest/web1";
    let first = repo.remote_refs().into_iter().find(|(r, _)| r == latest);
    assert!(first.is_some(), "no latest-note ref");
    assert_eq!(host.apply(&url).code, 0);
    // The heartbeat replaced the latest note and added nothing to history.
    let second = repo.remote_refs().into_iter().find(|(r, _)| r == latest);
    assert_ne!(first, second, "the heartbeat was not written");
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 1);
    assert_eq!(notes_commits(&repo.bare, latest), 1);
    host.configure("report:\n  notes: false\n");
    assert_eq!(host.apply(&url).code, 0);
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 1);
    assert_eq!(
        repo.remote_refs().into_iter().find(|(r, _)| r == latest),
        second
    );
}

#[test]
fn fleet_status_shows_three_hosts_in_three_states() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url(&repo.rel());
    let keys = TempDir::new().unwrap();
    let signer = SshKey::generate(keys.path(), "ops", "ops@example.invalid");
    let allowed = keys.path().join("allowed_signers");
    write_allowed_signers(&allowed, &[&signer]);

    // current: applied the tip, in sync.
    let current = GitHost::new("current");
    let tip_current = repo.commit_and_push("hosts/current", &[("trueup.yaml", "{}\n")], "empty");
    let run = current.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "in_sync");

    // behind: converged on c1, then its branch moved on.
    let behind = GitHost::new("behind");
    git(&repo.work, &["checkout", "-q", "--orphan", "behind"]);
    let applied_behind = repo.commit_and_push("hosts/behind", &files(&motd_branch("b1")), "b1");
    assert_eq!(behind.apply(&url).code, 0);
    let tip_behind = repo.commit_and_push("hosts/behind", &files(&motd_branch("b2")), "b2");

    // refused: applied a signed commit, then an unsigned one arrived.
    let refused = GitHost::new("refused");
    refused.configure(&format!(
        "trust:\n  allowed_signers: {}\n",
        allowed.display()
    ));
    git(&repo.work, &["checkout", "-q", "--orphan", "refused"]);
    let applied_refused = repo.commit_signed(&files(&motd_branch("r1")), "r1", &signer);
    repo.push("hosts/refused");
    assert_eq!(refused.apply(&url).code, 0);
    let tip_refused = repo.commit_and_push("hosts/refused", &files(&motd_branch("r2")), "r2");
    assert_eq!(refused.apply(&url).code, 1);

    let viewer = GitHost::new("viewer");
    let run = viewer.run(&url, &["fleet", "status", "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    let hosts = out["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{out}");
    let by_name = |n: &str| {
        hosts
            .iter()
            .find(|h| h["host"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {out}"))
            .clone()
    };
    let h = by_name("current");
    assert_eq!(h["status"], "in_sync");
    assert_eq!(h["branch"], "hosts/current");
    assert_eq!(h["tip"], tip_current.as_str());
    assert_eq!(h["applied"], tip_current.as_str());
    assert_eq!(h["behind"], false);
    assert_eq!(h["drift"], 0);
    assert!(h["age_seconds"].as_u64().unwrap() < 600, "{h}");

    let h = by_name("behind");
    assert_eq!(h["status"], "converged");
    assert_eq!(h["tip"], tip_behind.as_str());
    assert_eq!(h["applied"], applied_behind.as_str());
    assert_eq!(h["behind"], true);

    let h = by_name("refused");
    assert_eq!(h["status"], "refused");
    assert_eq!(h["tip"], tip_refused.as_str());
    assert_eq!(h["noted_commit"], tip_refused.as_str());
    assert_eq!(h["applied"], applied_refused.as_str());
    assert_eq!(h["behind"], true);

    // The same as a table for people.
    let run = viewer.run(&url, &["fleet", "status"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("BEHIND"),
        "{}",
        run.stdout
    );
    let line = |n: &str| *lines.iter().find(|l| l.starts_with(n)).unwrap();
    assert!(
        line("current").contains(" in sync") && line("current").contains(" no "),
        "{}",
        run.stdout
    );
    assert!(
        line("behind").contains(" converged") && line("behind").contains(" yes "),
        "{}",
        run.stdout
    );
    assert!(
        line("refused").contains(" refused") && line("refused").contains(&applied_refused[..12]),
        "{}",
        run.stdout
    );
    // Reading the fleet changed nothing on the remote: three branches, and
    // each host's history and latest-note refs.
    assert_eq!(repo.remote_refs().len(), 9, "{:?}", repo.remote_refs());
}
