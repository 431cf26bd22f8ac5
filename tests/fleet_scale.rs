//! Fleet scale (issue 15) through the real binary against real Git servers
//! on loopback: notes go to a reports repository and never to the fleet
//! repository, fleet status reads them from there, a server without
//! protocol v2 still serves the poll, and the notes history keeps every
//! change while heartbeats stay off it.

mod common;
mod gitsupport;

use common::gitserver::{GitDaemon, TestRepo, git};
use gitsupport::*;
use tempfile::TempDir;

const BRANCH: &str = "hosts/web1";

/// Installs `script` as `repo`'s pre-receive hook.
fn pre_receive(repo: &TestRepo, script: &str) {
    let hook = repo.bare.join("hooks/pre-receive");
    std::fs::write(&hook, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Makes `repo` refuse every push, and leave a mark when one is tried.
fn refuse_pushes(repo: &TestRepo) -> std::path::PathBuf {
    let mark = repo.bare.join("push-attempted");
    pre_receive(
        repo,
        &format!(
            "#!/bin/sh\ncat >> '{}'\necho 'this repository is read-only for hosts' >&2\nexit 1\n",
            mark.display()
        ),
    );
    mark
}

/// A fleet repository and a reports repository behind one `git daemon`.
struct Repos {
    tmp: TempDir,
    fleet: TestRepo,
    reports: TestRepo,
    _daemon: GitDaemon,
    fleet_url: String,
    reports_url: String,
}

impl Repos {
    fn start() -> Repos {
        let tmp = TempDir::new().unwrap();
        let fleet = TestRepo::create(tmp.path(), "fleet");
        let reports = TestRepo::create(tmp.path(), "reports");
        let daemon = GitDaemon::start(tmp.path());
        Repos {
            fleet_url: daemon.url(&fleet.rel()),
            reports_url: daemon.url(&reports.rel()),
            tmp,
            fleet,
            reports,
            _daemon: daemon,
        }
    }
}

#[test]
fn notes_go_to_the_reports_repository_and_never_to_the_fleet_repository() {
    let Repos {
        tmp,
        fleet,
        reports,
        _daemon,
        fleet_url,
        reports_url,
    } = Repos::start();
    let c1 = fleet.commit_and_push(BRANCH, &files(&motd_branch("one")), "one");
    // From here on the fleet repository takes no push from anyone.
    let attempted = refuse_pushes(&fleet);

    let host = GitHost::new("web1");
    host.configure(&format!("report:\n  repo: {reports_url}\n"));
    let run = host.apply(&fleet_url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "converged");
    assert_eq!(
        host.state_json()["last_note"]["unpushed"],
        false,
        "{}",
        run.stderr
    );
    // A change on the branch: another note, again to the reports repository.
    // (The hook refuses pushes from hosts; the test's own push goes
    // around it.)
    let hook = fleet.bare.join("hooks/pre-receive");
    std::fs::rename(&hook, tmp.path().join("hook")).unwrap();
    let c2 = fleet.commit_and_push(BRANCH, &files(&motd_branch("two")), "two");
    std::fs::rename(tmp.path().join("hook"), &hook).unwrap();
    let run = host.apply(&fleet_url);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["source"]["commit"], c2.as_str());

    assert!(
        !attempted.exists(),
        "the agent tried to push to the fleet repository"
    );
    let fleet_refs: Vec<String> = fleet.remote_refs().into_iter().map(|(r, _)| r).collect();
    assert_eq!(fleet_refs, vec![format!("refs/heads/{BRANCH}")]);
    let report_refs: Vec<String> = reports.remote_refs().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        report_refs,
        vec![
            "refs/notes/trueup-latest/web1".to_string(),
            "refs/notes/trueup/web1".to_string()
        ]
    );
    for c in [&c1, &c2] {
        let note = reports.note(&host.notes_ref(), c).expect("note in reports");
        assert!(note.contains(&c[..12]), "{note}");
    }

    // fleet status reads the reports repository when told to...
    let viewer = GitHost::new("viewer");
    let run = viewer.run(
        &fleet_url,
        &[
            "fleet",
            "status",
            "--format",
            "json",
            "--reports",
            &reports_url,
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    let hosts = out["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{out}");
    assert_eq!(hosts[0]["host"], "web1");
    assert_eq!(hosts[0]["applied"], c2.as_str());
    assert_eq!(hosts[0]["status"], "converged");
    // ...and the fleet repository holds no note at all.
    let run = viewer.run(&fleet_url, &["fleet", "status", "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["hosts"].as_array().unwrap().len(), 0);
}

/// A git:// proxy that makes `git daemon` an old, v0-only server: it drops
/// the extra parameters (`version=2`) from each request line, so the daemon
/// never hears that the client speaks v2, and answers with its v0 ref
/// advertisement. Returns the port.
fn v0_only_proxy(target: u16) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let mut server = TcpStream::connect(("127.0.0.1", target)).unwrap();
                let mut len = [0u8; 4];
                client.read_exact(&mut len).unwrap();
                let n = usize::from_str_radix(std::str::from_utf8(&len).unwrap(), 16).unwrap();
                let mut line = vec![0u8; n - 4];
                client.read_exact(&mut line).unwrap();
                // "git-upload-pack /x.git\0host=h:p\0" then "\0version=2\0".
                if let Some(pos) = line.windows(2).position(|w| w == b"\0\0") {
                    line.truncate(pos + 1);
                }
                server
                    .write_all(format!("{:04x}", line.len() + 4).as_bytes())
                    .unwrap();
                server.write_all(&line).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    port
}

#[test]
fn a_server_without_protocol_v2_still_serves_the_poll() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let port = v0_only_proxy(daemon.port());
    let url = format!("git://127.0.0.1:{port}/{}", repo.rel());
    let host = GitHost::new("web1");
    let c1 = repo.commit_and_push(BRANCH, &files(&motd_branch("one")), "one");
    let poll = |expect: &str| {
        let out = host
            .command(&url, &["apply", "--format", "json"])
            .env("TRUEUP_LOG", "trueup=debug")
            .output()
            .unwrap();
        let run = Run::from(out);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(run.json()["source"]["commit"], expect);
        assert!(
            !run.stderr.contains("polling again with libgit2"),
            "the v2 client did not cope with a v0 server:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("protocol=0") || run.stderr.contains("protocol=1"),
            "the server was expected to speak v0/v1:\n{}",
            run.stderr
        );
        run
    };
    let run = poll(&c1);
    assert!(run.stderr.contains("fetched"), "{}", run.stderr);
    let before = daemon.packs_served();
    let run = poll(&c1);
    assert!(
        run.stderr.contains("remote tip unchanged"),
        "{}",
        run.stderr
    );
    assert_eq!(
        daemon.packs_served(),
        before,
        "an unchanged poll fetched a pack"
    );
    let c2 = repo.commit_and_push(BRANCH, &files(&motd_branch("two")), "two");
    poll(&c2);
    assert_eq!(host.read("/etc/motd").as_deref(), Some("two\n"));
    // The same server with protocol v2 allowed: the poll says so.
    let direct = daemon.url(&repo.rel());
    let out = host
        .command(&direct, &["apply", "--format", "json"])
        .env("TRUEUP_LOG", "trueup=debug")
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("protocol=2"), "{}", run.stderr);
}

#[test]
fn heartbeats_replace_the_latest_note_and_changes_stay_in_history() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url(&repo.rel());
    let host = GitHost::new("web1");
    host.configure("report:\n  heartbeat: 0s\n");
    let mut changes = Vec::new();
    for round in 0..3 {
        let c = repo.commit_and_push(
            BRANCH,
            &files(&motd_branch(&format!("round {round}"))),
            "change",
        );
        changes.push(c);
        // One change, then heartbeats on the same commit.
        for _ in 0..3 {
            let run = host.apply(&url);
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        }
    }
    // Three changes: three history commits, each naming its commit.
    let log = git(&repo.bare, &["log", "--format=%s", &host.notes_ref()]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(subjects.len(), 3, "{log}");
    for (subject, c) in subjects.iter().rev().zip(&changes) {
        assert_eq!(*subject, format!("Note on {c}"));
    }
    // The latest ref: one commit, no parent, on the last change.
    let latest = "refs/notes/trueup-latest/web1";
    let count = git(&repo.bare, &["rev-list", "--count", latest]);
    assert_eq!(count.trim(), "1");
    let last = changes.last().unwrap();
    let note = git(
        &repo.bare,
        &["notes", "--ref", "trueup-latest/web1", "show", last],
    );
    assert!(note.contains("in sync"), "{note}");
    let heartbeat_time = |n: &str| {
        let (_, r) = split_note(&format!("{n}\n"));
        r["started_at"].as_str().unwrap().to_string()
    };
    let first = heartbeat_time(&note);
    assert_eq!(host.apply(&url).code, 0);
    let note = git(
        &repo.bare,
        &["notes", "--ref", "trueup-latest/web1", "show", last],
    );
    assert!(heartbeat_time(&note) >= first);
    assert_eq!(
        git(&repo.bare, &["rev-list", "--count", latest]).trim(),
        "1"
    );
    assert_eq!(notes_commits(&repo.bare, &host.notes_ref()), 3);
}

/// Makes `repo` refuse every push of a notes ref (the operator's pushes of
/// branches, as `fleet promote` makes, still land) and log each one tried.
fn refuse_notes(repo: &TestRepo) -> std::path::PathBuf {
    let mark = repo.bare.join("notes-push-attempted");
    pre_receive(
        repo,
        &format!(
            "#!/bin/sh\nstatus=0\nwhile read old new ref; do\n  case $ref in refs/notes/*) echo \"$ref\" >> '{}'; status=1 ;; esac\ndone\nexit $status\n",
            mark.display()
        ),
    );
    mark
}

/// An ed25519 key made by ssh-keygen (the host's secrets identity, whose
/// public half the agent reports); returns (path, public line).
fn ssh_host_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    (path, public)
}

/// A fleet command run as CI or an operator runs it: no agent
/// configuration, the fleet repository as `--source`.
fn operator(tmp: &std::path::Path, url: &str, args: &[&str]) -> Run {
    let out = std::process::Command::new(trueup_bin())
        .arg("--config")
        .arg(tmp.join("no-agent.yaml"))
        .args(["--source", url])
        .args(args)
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_SOURCE")
        .env_remove("TRUEUP_REPORTS")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Run::from(out)
}

/// Issue 15, must show 4: with `reports:` in fleet.yaml, hosts push their
/// notes to the reports repository only (the fleet repository refuses and
/// logs any notes push), and every command that reads the fleet (`fleet
/// status`, `fleet report`, `validate --fleet`, `secrets recipients`,
/// `fleet promote`) finds the hosts' reports there: the fleet repository
/// holds no note at all, so a command that read it would see no host.
#[test]
fn every_fleet_command_reads_the_reports_repository() {
    let Repos {
        tmp,
        fleet,
        reports,
        _daemon,
        fleet_url,
        reports_url,
    } = Repos::start();
    let keys = TempDir::new().unwrap();
    let hosts = ["web1", "web2"];
    let host_keys: Vec<_> = hosts.iter().map(|h| ssh_host_key(keys.path(), h)).collect();
    let fleet_yaml = format!(
        "reports: {reports_url}\nhosts:\n  web1: {{ groups: [canary], ssh_key: \"{}\" }}\n  web2: {{ ssh_key: \"{}\" }}\nrollout:\n  waves: [canary, \"100%\"]\n  wait: 60s\n  max_unhealthy: 0\n",
        host_keys[0].1, host_keys[1].1
    );
    let main_files = |version: &str| {
        vec![
            ("fleet.yaml", fleet_yaml.clone()),
            (
                "trueup.yaml",
                format!(
                    "files:\n  /etc/motd:\n    content: \"{version} on {{{{facts.hostname}}}}\\n\"\n    mode: \"0644\"\n"
                ),
            ),
        ]
    };
    let v1 = fleet.commit_and_push("main", &files(&main_files("v1")), "v1");
    for h in hosts {
        git(
            &fleet.work,
            &["push", "-q", "origin", &format!("main:hosts/{h}")],
        );
    }
    let attempted = refuse_notes(&fleet);

    let agents: Vec<GitHost> = hosts
        .iter()
        .zip(&host_keys)
        .map(|(h, (key, _))| {
            let host = GitHost::new(h);
            host.configure(&format!(
                "report:\n  repo: {reports_url}\nsecrets:\n  identity: {}\n",
                key.display()
            ));
            host
        })
        .collect();
    for a in &agents {
        let run = a.apply(&fleet_url);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(
            a.state_json()["last_note"]["unpushed"],
            false,
            "{}",
            run.stderr
        );
    }

    // fleet status: both hosts on v1, the rollout of main complete.
    let run = operator(
        tmp.path(),
        &fleet_url,
        &["--format", "json", "fleet", "status"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["repository"], reports_url.as_str(), "{out:#}");
    let rows = out["hosts"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out:#}");
    for row in rows {
        assert_eq!(row["applied"], v1.as_str(), "{out:#}");
        // The branches come from the fleet repository: the host is at its tip.
        assert_eq!(row["behind"], false, "{out:#}");
    }
    assert_eq!(out["rollout"]["state"], "complete", "{out:#}");

    // fleet report: both hosts, read from the reports repository.
    let site = tmp.path().join("site");
    let run = operator(
        tmp.path(),
        &fleet_url,
        &[
            "--format",
            "json",
            "fleet",
            "report",
            "--out",
            site.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["reports"], reports_url.as_str(), "{out:#}");
    assert_eq!(out["hosts"], 2, "{out:#}");
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    for h in hosts {
        assert!(index.contains(h), "{h} missing from the report");
    }

    // validate --fleet: each host's facts come from its report on v1.
    let checkout = TempDir::new().unwrap();
    for (path, text) in main_files("v1") {
        std::fs::write(checkout.path().join(path), text).unwrap();
    }
    let dir = checkout.path().to_str().unwrap();
    let run = operator(
        tmp.path(),
        &fleet_url,
        &["--format", "json", "validate", "--fleet", dir],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    for host in out["hosts"].as_array().unwrap() {
        assert_eq!(host["facts"]["commit"], v1.as_str(), "{out:#}");
    }

    // secrets recipients: the keys the hosts reported match the pins.
    let run = operator(
        tmp.path(),
        &fleet_url,
        &["--format", "json", "secrets", "recipients", "--dir", dir],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    let states: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["same", "same"], "{out:#}");

    // fleet promote of v2: each wave waits for the hosts' notes on v2,
    // which only the reports repository has.
    let v2 = fleet.commit_and_push("main", &files(&main_files("v2")), "v2");
    let mut promote = std::process::Command::new(trueup_bin())
        .arg("--config")
        .arg(tmp.path().join("no-agent.yaml"))
        .args([
            "--source", &fleet_url, "fleet", "promote", "--poll", "300ms",
        ])
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_SOURCE")
        .env_remove("TRUEUP_REPORTS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = promote.try_wait().unwrap() {
            break status;
        }
        for a in &agents {
            let run = a.apply(&fleet_url);
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = promote.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "{text}");
    for h in hosts {
        assert_eq!(
            fleet.remote_branch(&format!("hosts/{h}")).as_deref(),
            Some(v2.as_str())
        );
    }
    for a in &agents {
        assert_eq!(a.read("/etc/motd").unwrap(), format!("v2 on {}\n", a.name));
        assert!(reports.note(&a.notes_ref(), &v2).is_some());
    }

    // The fleet repository never got a note, nor was one pushed to it.
    assert!(
        !attempted.exists(),
        "notes were pushed to the fleet repository: {}",
        std::fs::read_to_string(&attempted).unwrap_or_default()
    );
    assert!(
        fleet
            .remote_refs()
            .iter()
            .all(|(r, _)| r.starts_with("refs/heads/")),
        "{:?}",
        fleet.remote_refs()
    );
}
