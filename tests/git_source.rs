//! `--source URL` through the real binary against real Git servers on
//! loopback: the same scenario over file://, git://, ssh:// and https://
//! (converge, note, no fetch when unchanged, repair, new commit), errors
//! that say what failed, credentials that never show, and --offline.

mod common;
mod gitsupport;

use common::gitserver::{GitDaemon, HttpsServer, SshKey, SshServer, TestRepo, free_port};
use gitsupport::*;
use tempfile::TempDir;

const BRANCH: &str = "hosts/web1";

/// What a server says it did, from its own counters and logs.
struct ServerCounters<'a> {
    /// Packs sent (and, for https, upload-pack POSTs): fetches.
    served: &'a dyn Fn() -> usize,
    /// Upload-pack sessions (ref listings): connections asking for refs.
    listings: &'a dyn Fn() -> usize,
}

/// The scenario every transport must pass; `server` is None for file://,
/// which has no server.
fn scenario(repo: &TestRepo, url: &str, config: &str, server: Option<ServerCounters>) {
    let packs = server.as_ref().map(|s| s.served);
    let listings = server.as_ref().map(|s| s.listings);
    let host = GitHost::new("web1");
    host.configure(config);
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("first")), "first");

    // Converge from the remote.
    let run = host.apply(url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "converged", "{report}");
    assert_eq!(report["source"]["commit"], c1.as_str());
    assert_eq!(report["source"]["branch"], BRANCH);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("first\n"));
    assert_eq!(host.applied_commit().as_deref(), Some(c1.as_str()));
    assert!(
        host.state.path().join("repo.git/HEAD").is_file(),
        "no bare cache in the state directory"
    );
    assert!(
        !host.state.path().join("repo.git/index").exists(),
        "the cache must have no work tree"
    );

    assert_schema(&report);

    // The note is in the remote, on the applied commit.
    let note = common::gitserver::git(&repo.bare, &["notes", "--ref=trueup/web1", "show", &c1]);
    let (summary, noted) = split_note(&format!("{note}\n"));
    assert_schema(&noted);
    assert!(
        summary.starts_with(&format!("trueup apply converged {}", &c1[..12])),
        "{summary}"
    );
    assert_eq!(noted["status"], "converged");
    assert_eq!(noted["source"]["commit"], c1.as_str());
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 1);
    // Only the host's notes refs were pushed: the history and the latest note.
    let refs: Vec<String> = repo.remote_refs().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        refs,
        vec![
            format!("refs/heads/{BRANCH}"),
            "refs/notes/trueup-latest/web1".to_string(),
            host.notes_ref()
        ],
        "{refs:?}"
    );

    // Unchanged remote, nothing drifted: no fetch, no new note.
    let packs_before = packs.map(|p| p());
    let listings_before = listings.map(|l| l());
    let run = Run::from(
        host.command(url, &["apply", "--format", "json"])
            .env("TRUEUP_LOG", "warn,trueup::source::tls=debug")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "in_sync");
    // Nothing to fetch, nothing to note: the cache was read with gitoxide
    // alone, and libgit2 (with OpenSSL) never started.
    assert!(!run.stderr.contains("starting libgit2"), "{}", run.stderr);
    // The protocol v2 client (gitoxide) answered the poll: the libgit2
    // fallback would hide a v2 transport that cannot connect (over https:
    // one that does not trust auth.ca_file).
    if server.is_some() {
        assert!(
            !run.stderr.contains("protocol v2 poll failed"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 1);
    assert_eq!(packs.map(|p| p()), packs_before, "polling fetched a pack");
    // One ref listing and nothing more: no second session to fetch. (Logs
    // may land a moment after the client is done.)
    if let (Some(l), Some(n)) = (listings, listings_before) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while l() <= n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        listings.map(|l| l()),
        listings_before.map(|n| n + 1),
        "a poll of an unchanged remote is one ref listing"
    );

    // Drift repaired: a note, still no fetch.
    std::fs::write(host.path("/etc/motd"), "edited by hand\n").unwrap();
    let run = Run::from(
        host.command(url, &["apply", "--format", "json"])
            .env("TRUEUP_LOG", "warn,trueup::source::tls=debug")
            .output()
            .unwrap(),
    );
    assert_eq!(run.json()["status"], "converged");
    // The note is written and pushed with libgit2, started for it.
    assert!(run.stderr.contains("starting libgit2"), "{}", run.stderr);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("first\n"));
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 2);
    assert_eq!(packs.map(|p| p()), packs_before, "polling fetched a pack");

    // A new commit is fetched and applied.
    let c2 = repo.commit_and_push(BRANCH, &files(&motd_branch("second")), "second");
    let run = host.apply(url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["source"]["commit"], c2.as_str());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("second\n"));
    assert_eq!(host.applied_commit().as_deref(), Some(c2.as_str()));
    if let (Some(p), Some(before)) = (packs, packs_before) {
        assert!(p() > before, "the moved tip was not fetched");
    }
    let (_, noted) = split_note(&repo.note(&host.notes_ref(), &c2).expect("note on c2"));
    assert_eq!(noted["source"]["commit"], c2.as_str());

    // check agrees, and writes no note.
    let run = host.check(url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 3);
}

#[test]
fn file_transport() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    scenario(&repo, &url, "", None);
}

/// A file:// remote is read and copied with gitoxide: a first apply and a
/// moved tip (a handful of new objects) never start libgit2 when no note is
/// written, and leave a sound cache (`git fsck`). More than a hundred new
/// objects go as one pack, with libgit2; an object whose content does not
/// hash to its name is never copied under that name; a cache cut short
/// while it was being made is made again.
#[test]
fn file_transport_copies_a_few_objects_without_libgit2() {
    use common::gitserver::git;
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "copy");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    host.configure("report: { notes: false }\n");
    let cache = host.state.path().join("repo.git");
    // An apply that logs the source's debug lines (the fetch, libgit2).
    let logged = || {
        Run::from(
            host.command(&url, &["apply", "--format", "json"])
                .env("TRUEUP_LOG", "warn,trueup::source=debug")
                .output()
                .unwrap(),
        )
    };
    let apply = || {
        let run = logged();
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        run
    };

    // A cache whose creation was cut short (no HEAD yet) is made again.
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("config"), "[core\n\tbare = tr").unwrap();
    std::fs::write(cache.join("HEAD.lock"), "ref: refs/he").unwrap();

    // First apply: commit, tree and trueup.yaml copied.
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("first")), "first");
    let run = apply();
    assert_eq!(run.json()["source"]["commit"], c1.as_str());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("first\n"));
    assert!(
        run.stderr.contains("fetched") && run.stderr.contains("objects=3"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("starting libgit2"), "{}", run.stderr);
    git(&cache, &["fsck", "--full", "--strict"]);
    assert_eq!(
        git(
            &cache,
            &["rev-parse", &format!("refs/trueup/remote/{BRANCH}")]
        ),
        c1
    );
    assert!(!cache.join("hooks").exists(), "sample hooks in the cache");
    assert!(!cache.join("logs").exists(), "a reflog in a bare cache");

    // A moved tip: only the three new objects.
    let c2 = repo.commit_and_push(BRANCH, &files(&motd_branch("second")), "second");
    let run = apply();
    assert_eq!(run.json()["source"]["commit"], c2.as_str());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("second\n"));
    assert!(run.stderr.contains("objects=3"), "{}", run.stderr);
    assert!(!run.stderr.contains("starting libgit2"), "{}", run.stderr);
    git(&cache, &["fsck", "--full", "--strict"]);

    // 150 new files: a pack, through libgit2.
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("data/f{i}.txt"), format!("{i}\n")))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let c3 = repo.commit_and_push(BRANCH, &many, "many");
    let run = apply();
    assert_eq!(run.json()["source"]["commit"], c3.as_str());
    assert!(
        run.stderr.contains("fetching a pack with libgit2"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("starting libgit2"), "{}", run.stderr);
    git(&cache, &["fsck", "--full", "--strict"]);

    // One of those files changed: four new objects (commit, two trees, the
    // blob), copied again, however many entries the new trees have.
    let c4 = repo.commit_and_push(BRANCH, &[("data/f7.txt", "seven\n")], "one of many");
    let run = apply();
    assert_eq!(run.json()["source"]["commit"], c4.as_str());
    assert!(run.stderr.contains("objects=4"), "{}", run.stderr);
    assert!(!run.stderr.contains("starting libgit2"), "{}", run.stderr);
    git(&cache, &["fsck", "--full", "--strict"]);

    // A damaged remote: the new trueup.yaml blob's loose file holds another
    // object. The copy refuses it (and libgit2's fetch after it): the run
    // fails, and the host keeps "second".
    let c5 = repo.commit_and_push(BRANCH, &files(&motd_branch("fifth")), "fifth");
    let blob = git(&repo.bare, &["rev-parse", &format!("{c5}:trueup.yaml")]);
    let other = git(&repo.bare, &["rev-parse", &format!("{c1}:trueup.yaml")]);
    let loose = |id: &str| repo.bare.join("objects").join(&id[..2]).join(&id[2..]);
    assert!(loose(&blob).is_file() && loose(&other).is_file());
    std::fs::remove_file(loose(&blob)).unwrap();
    std::fs::copy(loose(&other), loose(&blob)).unwrap();
    let run = logged();
    assert!(run.stderr.contains("is damaged"), "{}", run.stderr);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("second\n"));
    let cached = git(
        &cache,
        &[
            "cat-file",
            "-p",
            &format!("refs/trueup/remote/{BRANCH}:trueup.yaml"),
        ],
    );
    assert!(!cached.contains("fifth"), "{cached}");
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "error");
}

#[test]
fn git_daemon_transport_and_no_fetch_when_unchanged() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let served = || daemon.packs_served();
    let listings = || daemon.log().matches("Request upload-pack").count();
    scenario(
        &repo,
        &daemon.url(&repo.rel()),
        "",
        Some(ServerCounters {
            served: &served,
            listings: &listings,
        }),
    );
}

fn ssh_config(ssh: &SshServer) -> String {
    format!(
        "auth:\n  ssh_key: {}\n  known_hosts: {}\n",
        ssh.client_key().display(),
        ssh.known_hosts().display()
    )
}

#[test]
#[ignore = "needs root: sshd (its privilege separation directory /run/sshd): run by scripts/test.sh"]
fn ssh_transport_and_no_fetch_when_unchanged() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let ssh = SshServer::start(tmp.path());
    let served = || ssh.packs_served();
    let listings = || ssh.log().matches("Accepted publickey").count();
    scenario(
        &repo,
        &ssh.url(&repo.rel()),
        &ssh_config(&ssh),
        Some(ServerCounters {
            served: &served,
            listings: &listings,
        }),
    );
}

fn https_config(https: &HttpsServer, dir: &std::path::Path, password: &str) -> String {
    let creds = dir.join("git-credentials");
    std::fs::write(&creds, format!("{}:{password}\n", https.user())).unwrap();
    format!(
        "auth:\n  ca_file: {}\n  credentials_file: {}\n",
        https.ca_cert().display(),
        creds.display()
    )
}

#[test]
fn https_transport_and_no_fetch_when_unchanged() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let https = HttpsServer::start(tmp.path());
    let secrets = TempDir::new().unwrap();
    let config = https_config(&https, secrets.path(), https.password());
    // Packs served must stay put while polling. (Upload-pack POSTs do not:
    // protocol v2's ls-refs is itself a POST, one per poll.)
    let served = || https.packs_served();
    let listings = || {
        https
            .requests()
            .iter()
            .filter(|(m, u, status, _)| m == "GET" && u.ends_with("/info/refs") && status == "200")
            .count()
    };
    scenario(
        &repo,
        &https.url(&repo.rel()),
        &config,
        Some(ServerCounters {
            served: &served,
            listings: &listings,
        }),
    );
}

#[test]
fn https_token_file_and_secrets_never_show() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("hi")), "one");
    let https = HttpsServer::start(tmp.path());
    let secrets = TempDir::new().unwrap();
    let password = https.password().to_string();
    let mut seen = String::new();
    let mut record = |host: &GitHost, run: &Run| {
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
        for f in ["last-run.json", "state.json"] {
            seen.push_str(&std::fs::read_to_string(host.state.path().join(f)).unwrap_or_default());
        }
    };

    // A token read from a file, sent as the password of the URL's user.
    let host = GitHost::new("web1");
    let token = secrets.path().join("token");
    std::fs::write(&token, format!("{password}\n")).unwrap();
    host.configure(&format!(
        "auth:\n  ca_file: {}\n  token_file: {}\n",
        https.ca_cert().display(),
        token.display()
    ));
    let url = https
        .url(&repo.rel())
        .replacen("https://", "https://trueup@", 1);
    let run = host.run(&url, &["apply", "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(
        report["source"]["location"],
        https.url(&repo.rel()),
        "user name not stripped"
    );
    record(&host, &run);
    let run = host.run(&url, &["apply", "--format", "text"]);
    record(&host, &run);

    // Credentials in the URL itself, verbose logs: still never shown.
    let host2 = GitHost::new("web2");
    host2.configure(&format!(
        "auth:\n  ca_file: {}\n",
        https.ca_cert().display()
    ));
    let url = https.url_with_credentials(&repo.rel());
    let mut cmd = host2.command(&url, &["--branch", BRANCH, "apply", "--format", "json"]);
    let run = Run::from(cmd.env("TRUEUP_LOG", "trace").output().unwrap());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["source"]["location"], https.url(&repo.rel()));
    record(&host2, &run);

    // A wrong password fails as authentication, and is not shown either.
    let host3 = GitHost::new("web3");
    let wrong = "wrong-pass-9876";
    host3.configure(&https_config(&https, secrets.path(), wrong));
    let mut cmd = host3.command(
        &https.url(&repo.rel()),
        &["--branch", BRANCH, "apply", "--format", "json"],
    );
    let run = Run::from(cmd.env("TRUEUP_LOG", "trace").output().unwrap());
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.first_error().contains("authentication failed"),
        "{}",
        run.first_error()
    );
    assert!(!run.stdout.contains(wrong) && !run.stderr.contains(wrong));
    record(&host3, &run);

    // The notes pushed to the repository hold no secret either.
    let notes = common::gitserver::git(
        &repo.bare,
        &["log", "-p", "--all", "--format=%H %an %ae %s"],
    );
    assert!(notes.contains(&c1[..12]), "{notes}");
    seen.push_str(&notes);
    assert!(seen.contains("converged"), "nothing recorded: {seen}");
    assert!(!seen.contains(&password), "the password leaked:\n{seen}");
    assert!(!seen.contains("test-pass"), "the password leaked:\n{seen}");
}

#[test]
fn https_errors_name_tls_authentication_missing_branch() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push(BRANCH, &files(&motd_branch("hi")), "one");
    let https = HttpsServer::start(tmp.path());
    let secrets = TempDir::new().unwrap();
    let url = https.url(&repo.rel());
    let host = GitHost::new("web1");

    // No CA configured: the test CA is not trusted.
    host.configure("");
    let run = host.apply(&url);
    assert_eq!(run.code, 1);
    let e = run.first_error();
    assert!(e.contains("TLS failed"), "{e}");
    assert!(e.contains(BRANCH), "{e}");

    // CA, no credentials: authentication.
    host.configure(&format!(
        "auth:\n  ca_file: {}\n",
        https.ca_cert().display()
    ));
    let e = host.apply(&url).first_error();
    assert!(e.contains("authentication failed"), "{e}");

    // Everything right, wrong branch.
    host.configure(&https_config(&https, secrets.path(), https.password()));
    let run = host.run(
        &url,
        &["--branch", "hosts/nope", "apply", "--format", "json"],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.first_error()
            .contains("branch 'hosts/nope' does not exist"),
        "{}",
        run.first_error()
    );
    assert!(
        host.read("/etc/motd").is_none(),
        "an error changed the host"
    );
}

#[test]
#[ignore = "needs root: sshd (its privilege separation directory /run/sshd): run by scripts/test.sh"]
fn ssh_errors_name_host_key_and_authentication() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit_and_push(BRANCH, &files(&motd_branch("hi")), "one");
    let ssh = SshServer::start(tmp.path());
    let url = ssh.url(&repo.rel());
    let host = GitHost::new("web1");
    let keys = TempDir::new().unwrap();

    // A known_hosts file with another key for this host.
    let impostor = SshKey::generate(keys.path(), "impostor", "x@y");
    let bad_kh = keys.path().join("bad_known_hosts");
    std::fs::write(
        &bad_kh,
        format!(
            "[127.0.0.1]:{} {}\n",
            ssh.port(),
            impostor.public_key_line()
        ),
    )
    .unwrap();
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n  known_hosts: {}\n  accept_new_host_keys: true\n",
        ssh.client_key().display(),
        bad_kh.display()
    ));
    let e = host.apply(&url).first_error();
    assert!(
        e.contains("host key not trusted") && e.contains("does not match"),
        "{e}"
    );

    // An empty known_hosts: unknown host, refused by default...
    let kh = keys.path().join("known_hosts");
    std::fs::write(&kh, "").unwrap();
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n  known_hosts: {}\n",
        ssh.client_key().display(),
        kh.display()
    ));
    let e = host.apply(&url).first_error();
    assert!(
        e.contains("host key not trusted") && e.contains("not in"),
        "{e}"
    );
    assert!(host.read("/etc/motd").is_none());

    // ...accepted and recorded when asked.
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n  known_hosts: {}\n  accept_new_host_keys: true\n",
        ssh.client_key().display(),
        kh.display()
    ));
    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(
        recorded,
        format!("[127.0.0.1]:{} {}\n", ssh.port(), ssh.host_key_line())
    );

    // A key the server does not know: authentication.
    let stranger = SshKey::generate(keys.path(), "stranger", "s@y");
    host.configure(&format!(
        "auth:\n  ssh_key: {}\n  known_hosts: {}\n",
        stranger.private_key.display(),
        ssh.known_hosts().display()
    ));
    let e = host.apply(&url).first_error();
    assert!(e.contains("authentication failed"), "{e}");
}

#[test]
fn unreachable_host_and_offline_cache() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("cached")), "one");
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url(&repo.rel());
    let host = GitHost::new("web1");

    // --offline before anything was fetched: a clear error.
    let run = host.run(&url, &["--offline", "apply", "--format", "json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.first_error().contains("not in the cache"),
        "{}",
        run.first_error()
    );

    let run = host.check(&url);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    drop(daemon);

    // The server is gone: an online run says the host is unreachable...
    let run = host.apply(&url);
    assert_eq!(run.code, 1);
    assert!(
        run.first_error().contains("host unreachable"),
        "{}",
        run.first_error()
    );
    let nobody = format!("git://127.0.0.1:{}/fleet.git", free_port());
    assert!(
        host.apply(&nobody)
            .first_error()
            .contains("host unreachable")
    );

    // ...and --offline converges from the cache.
    let run = host.run(&url, &["--offline", "apply", "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["source"]["commit"], c1.as_str());
    assert_eq!(host.read("/etc/motd").as_deref(), Some("cached\n"));
    // The note waits for the next online run.
    assert_eq!(host.state_json()["last_note"]["unpushed"], true);
}

#[test]
fn bad_configuration_exits_78_with_file_line_column() {
    let host = GitHost::new("web1");
    host.configure("repo: file:///x.git\nauth:\n  ssh_kee: /k\n");
    let run = host.run("file:///nonexistent.git", &["check"]);
    assert_eq!(run.code, 78, "{}\n{}", run.stdout, run.stderr);
    let expected = format!("{}:3:3", host.config_path().display());
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}
