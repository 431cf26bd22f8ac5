//! Proves the loopback Git servers in `tests/common/gitserver.rs` with the
//! git CLI: clone, fetch, push, and the counters each server exposes.

mod common;

use std::path::Path;

use common::gitserver::{
    GitDaemon, HttpsServer, SshKey, SshServer, TestRepo, git, git_env, git_output, port_open,
    write_allowed_signers,
};
use tempfile::TempDir;

fn clone_dir(tmp: &TempDir, name: &str) -> String {
    tmp.path().join(name).to_str().unwrap().to_string()
}

fn head_of(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn repo_commit_push_force_push_and_ssh_signing() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");

    let first = repo.commit_and_push(
        "hosts/web1",
        &[("trueup.yaml", "resources: []\n"), ("etc/motd", "hello\n")],
        "first",
    );
    assert_eq!(repo.remote_branch("hosts/web1").as_deref(), Some(&*first));
    let second = repo.commit_and_push("hosts/web1", &[("etc/motd", "bye\n")], "second");
    assert_eq!(repo.remote_branch("hosts/web1").as_deref(), Some(&*second));
    assert_eq!(repo.remote_branch("nope"), None);

    // Rewrite history: a plain push is refused, a force-push goes through.
    repo.reset_hard(&first);
    let rewritten = repo.commit(&[("etc/motd", "rewritten\n")], "rewritten");
    let refused = git_output(
        &repo.work,
        &["push", "origin", "HEAD:refs/heads/hosts/web1"],
        &[],
    );
    assert!(!refused.status.success(), "non-fast-forward push accepted");
    repo.force_push("hosts/web1");
    assert_eq!(
        repo.remote_branch("hosts/web1").as_deref(),
        Some(&*rewritten)
    );

    // SSH-signed commit, verified by git against an allowed_signers file.
    let keys = tmp.path().join("keys");
    let signer = SshKey::generate(&keys, "signer", "ops@example.invalid");
    let other = SshKey::generate(&keys, "other", "intruder@example.invalid");
    let line = signer.allowed_signers_line();
    assert!(
        line.starts_with("ops@example.invalid namespaces=\"git\" ssh-ed25519 AAAA"),
        "{line}"
    );
    let allowed = keys.join("allowed_signers");
    write_allowed_signers(&allowed, &[&signer]);
    let signed = repo.commit_signed(&[("etc/motd", "signed\n")], "signed", &signer);
    let unknown = repo.commit_signed(&[("etc/motd", "unknown\n")], "unknown", &other);
    repo.push("hosts/web1");
    let allowed_cfg = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let status = |commit: &str| {
        git(
            &repo.work,
            &["-c", &allowed_cfg, "log", "-1", "--format=%G? %ae", commit],
        )
    };
    assert_eq!(status(&signed), "G ops@example.invalid");
    assert_eq!(status(&unknown), "U intruder@example.invalid");
    assert_eq!(status(&rewritten), "N test@trueup.invalid");

    // Notes land in the bare repo when pushed.
    git(
        &repo.work,
        &[
            "notes",
            "--ref=trueup/web1",
            "add",
            "-m",
            "applied",
            &signed,
        ],
    );
    git(
        &repo.work,
        &["push", "-q", "origin", "refs/notes/trueup/web1"],
    );
    assert_eq!(
        repo.note("refs/notes/trueup/web1", &signed).as_deref(),
        Some("applied\n")
    );
    assert!(
        repo.remote_refs()
            .iter()
            .any(|(r, _)| r == "refs/notes/trueup/web1")
    );
}

#[test]
fn git_daemon_serves_counts_packs_and_accepts_push() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push("hosts/web1", &[("a", "1\n")], "one");
    let daemon = GitDaemon::start(tmp.path());
    let port = daemon.port();
    let url = daemon.url(&repo.rel());
    assert_eq!(daemon.packs_served(), 0);

    let listing = git(tmp.path(), &["ls-remote", &url]);
    assert!(listing.contains("refs/heads/hosts/web1"), "{listing}");
    git(tmp.path(), &["-c", "protocol.version=0", "ls-remote", &url]);
    assert_eq!(daemon.packs_served(), 0, "ls-remote must not send a pack");

    let clone = clone_dir(&tmp, "clone");
    git(
        tmp.path(),
        &["clone", "-q", "-b", "hosts/web1", &url, &clone],
    );
    assert_eq!(daemon.packs_served(), 1);

    // Fetch with nothing new: no pack. Fetch a new commit: one pack.
    git(Path::new(&clone), &["fetch", "-q", "origin"]);
    assert_eq!(daemon.packs_served(), 1);
    let two = repo.commit_and_push("hosts/web1", &[("a", "2\n")], "two");
    git(Path::new(&clone), &["fetch", "-q", "origin"]);
    assert_eq!(daemon.packs_served(), 2);
    assert_eq!(
        git(Path::new(&clone), &["rev-parse", "origin/hosts/web1"]),
        two
    );

    // Push through the daemon (receive-pack enabled).
    git(
        Path::new(&clone),
        &["merge", "-q", "--ff-only", "origin/hosts/web1"],
    );
    std::fs::write(Path::new(&clone).join("b"), "pushed\n").unwrap();
    git(Path::new(&clone), &["add", "b"]);
    git(Path::new(&clone), &["commit", "-q", "-m", "via daemon"]);
    git(
        Path::new(&clone),
        &["push", "-q", "origin", "HEAD:refs/heads/hosts/web1"],
    );
    assert_eq!(
        repo.remote_branch("hosts/web1"),
        Some(head_of(Path::new(&clone)))
    );
    assert!(daemon.log().contains("Ready to rumble"));

    drop(daemon);
    assert!(!port_open(port), "git daemon still listening after drop");
}

#[test]
#[ignore = "needs root: sshd (its privilege separation directory /run/sshd): run by scripts/test.sh"]
fn sshd_serves_clone_fetch_push_with_strict_host_keys() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push("hosts/web1", &[("a", "1\n")], "one");
    let ssh = SshServer::start(tmp.path());
    let port = ssh.port();
    let url = ssh.url(&repo.rel());
    assert!(
        url.starts_with(&format!("ssh://root@127.0.0.1:{port}/")) && url.ends_with("/fleet.git"),
        "{url}"
    );
    let kh = std::fs::read_to_string(ssh.known_hosts()).unwrap();
    assert_eq!(kh, format!("[127.0.0.1]:{port} {}\n", ssh.host_key_line()));
    let cmd = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        ssh.client_key().display(),
        ssh.known_hosts().display()
    );
    let env = [("GIT_SSH_COMMAND", cmd.as_str())];

    let listing = git_env(tmp.path(), &["ls-remote", &url], &env);
    assert!(listing.contains("refs/heads/hosts/web1"), "{listing}");
    assert_eq!(ssh.packs_served(), 0);
    let clone = clone_dir(&tmp, "clone");
    git_env(
        tmp.path(),
        &["clone", "-q", "-b", "hosts/web1", &url, &clone],
        &env,
    );
    assert_eq!(ssh.packs_served(), 1);

    let clone = Path::new(&clone);
    std::fs::write(clone.join("b"), "pushed\n").unwrap();
    git(clone, &["add", "b"]);
    git(clone, &["commit", "-q", "-m", "via ssh"]);
    git_env(
        clone,
        &["push", "-q", "origin", "HEAD:refs/heads/hosts/web1"],
        &env,
    );
    assert_eq!(repo.remote_branch("hosts/web1"), Some(head_of(clone)));

    // The helper's own command works too.
    let own = ssh.git_ssh_command();
    git_env(
        tmp.path(),
        &["ls-remote", &url],
        &[("GIT_SSH_COMMAND", own.as_str())],
    );

    // A wrong host key is refused under strict checking.
    let bad_kh = tmp.path().join("bad_known_hosts");
    let other = SshKey::generate(tmp.path(), "otherhost", "x@y");
    std::fs::write(
        &bad_kh,
        format!("[127.0.0.1]:{port} {}\n", other.public_key_line()),
    )
    .unwrap();
    let bad = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        ssh.client_key().display(),
        bad_kh.display()
    );
    let out = git_output(
        tmp.path(),
        &["ls-remote", &url],
        &[("GIT_SSH_COMMAND", bad.as_str())],
    );
    assert!(!out.status.success(), "wrong host key accepted");

    drop(ssh);
    assert!(!port_open(port), "sshd still listening after drop");
}

#[test]
fn https_serves_clone_fetch_push_with_auth_and_counts_posts() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push("hosts/web1", &[("a", "1\n")], "one");
    let https = HttpsServer::start(tmp.path());
    let port = https.port();
    let ca = format!("http.sslCAInfo={}", https.ca_cert().display());
    let url = https.url_with_credentials(&repo.rel());
    assert_eq!(
        url,
        format!(
            "https://{}:{}@127.0.0.1:{port}/fleet.git",
            HttpsServer::USER,
            HttpsServer::PASSWORD
        )
    );

    // v0 ref listing (what libgit2 does): GET info/refs only.
    let listing = git(
        tmp.path(),
        &["-c", &ca, "-c", "protocol.version=0", "ls-remote", &url],
    );
    assert!(listing.contains("refs/heads/hosts/web1"), "{listing}");
    assert_eq!(https.upload_pack_posts(), 0, "{}", https.access_log());

    let clone = clone_dir(&tmp, "clone");
    git(
        tmp.path(),
        &["-c", &ca, "clone", "-q", "-b", "hosts/web1", &url, &clone],
    );
    let after_clone = https.upload_pack_posts();
    assert!(after_clone >= 1, "{}", https.access_log());
    assert_eq!(https.packs_served(), 1);

    let clone = Path::new(&clone);
    let two = repo.commit_and_push("hosts/web1", &[("a", "2\n")], "two");
    git(clone, &["-c", &ca, "fetch", "-q", "origin"]);
    assert!(https.upload_pack_posts() > after_clone);
    assert_eq!(https.packs_served(), 2);
    assert_eq!(git(clone, &["rev-parse", "origin/hosts/web1"]), two);

    git(clone, &["merge", "-q", "--ff-only", "origin/hosts/web1"]);
    std::fs::write(clone.join("b"), "pushed\n").unwrap();
    git(clone, &["add", "b"]);
    git(clone, &["commit", "-q", "-m", "via https"]);
    git(
        clone,
        &[
            "-c",
            &ca,
            "push",
            "-q",
            "origin",
            "HEAD:refs/heads/hosts/web1",
        ],
    );
    assert_eq!(repo.remote_branch("hosts/web1"), Some(head_of(clone)));
    assert!(
        https.requests().iter().any(|(m, u, s, user)| m == "POST"
            && u.ends_with("/git-receive-pack")
            && s == "200"
            && user == HttpsServer::USER),
        "{}",
        https.access_log()
    );

    // localhost is in the certificate too.
    let localhost = https.url_localhost(&repo.rel()).replacen(
        "https://",
        &format!("https://{}:{}@", https.user(), https.password()),
        1,
    );
    git(tmp.path(), &["-c", &ca, "ls-remote", &localhost]);

    // Without credentials: 401. Without the CA: certificate error.
    let out = git_output(
        tmp.path(),
        &["-c", &ca, "ls-remote", &https.url(&repo.rel())],
        &[],
    );
    assert!(!out.status.success(), "anonymous access allowed");
    let out = git_output(
        tmp.path(),
        &["ls-remote", &url],
        &[("GIT_SSL_CAINFO", "/dev/null")],
    );
    assert!(!out.status.success(), "untrusted certificate accepted");

    drop(https);
    assert!(!port_open(port), "nginx still listening after drop");
}
