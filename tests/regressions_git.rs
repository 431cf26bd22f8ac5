//! Defects found in review (issue 14) that need a Git remote, each test
//! failing before its fix.

mod common;
mod gitsupport;

use std::process::{Command, Stdio};

use common::gitserver::{SshServer, TestRepo, git};
use gitsupport::*;
use tempfile::TempDir;

const BRANCH: &str = "hosts/web1";

/// Moves every pack of a bare repository out and unpacks it into loose
/// objects, so a test can lose exactly one object.
fn unpack_all(bare: &std::path::Path) {
    let pack_dir = bare.join("objects/pack");
    for entry in std::fs::read_dir(&pack_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pack") {
            let data = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::fs::remove_file(path.with_extension("idx")).unwrap();
            let mut child = Command::new("git")
                .args(["unpack-objects", "-q"])
                .current_dir(bare)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
            assert!(child.wait().unwrap().success());
        }
    }
}

/// A damaged Git cache was never repaired: with an object missing from
/// `repo.git` and the remote tip unchanged, every run failed with "object
/// not found" forever. The cache is now rebuilt from the remote.
#[test]
fn a_git_cache_that_lost_objects_is_rebuilt_and_the_host_converges() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("first")), "first");
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}", run.all());

    let cache = host.state.path().join("repo.git");
    unpack_all(&cache);
    let blob = git(&cache, &["rev-parse", &format!("{c1}:trueup.yaml")]);
    let blob = blob.trim();
    std::fs::remove_file(cache.join("objects").join(&blob[..2]).join(&blob[2..])).unwrap();
    // Drift, so the run has to read the branch again.
    std::fs::write(host.path("/etc/motd"), "edited by hand\n").unwrap();

    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.json()["status"], "converged", "{}", run.all());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("first\n"));
    git(&cache, &["cat-file", "-e", blob]);
}

/// With no `$HOME` (as under systemd), `accept_new_host_keys` appended the
/// new key to `/etc/ssh/ssh_known_hosts`. It now goes to trueup's own
/// `<state_dir>/known_hosts` only.
#[test]
#[ignore = "needs root: sshd (its privilege separation directory /run/sshd): run by scripts/test.sh"]
fn a_new_host_key_is_recorded_only_in_trueups_own_known_hosts() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push(BRANCH, &files(&motd_branch("hi")), "one");
    let ssh = SshServer::start(tmp.path());
    let url = ssh.url(&repo.rel());
    let host = GitHost::new("web1");
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n  accept_new_host_keys: true\n",
        ssh.client_key().display()
    ));
    let global = std::fs::read("/etc/ssh/ssh_known_hosts").ok();
    let out = host
        .command(&url, &["apply", "--format", "json"])
        .env_remove("HOME")
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("hi\n"));
    let own = std::fs::read_to_string(host.state.path().join("known_hosts")).unwrap();
    assert_eq!(
        own,
        format!("[127.0.0.1]:{} {}\n", ssh.port(), ssh.host_key_line())
    );
    assert_eq!(
        std::fs::read("/etc/ssh/ssh_known_hosts").ok(),
        global,
        "the machine's known_hosts was written"
    );
    // The recorded key is trusted from then on.
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n",
        ssh.client_key().display()
    ));
    let out = host
        .command(&url, &["apply", "--format", "json"])
        .env_remove("HOME")
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{}", run.all());
}
