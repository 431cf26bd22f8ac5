//! `trueup agent` against a real `git daemon` on loopback: it converges,
//! picks up a new commit right after SIGHUP, stops on SIGTERM, rides out an
//! unreachable remote with backoff, and keeps converging the last good
//! commit when a new one does not render.

mod common;
mod gitsupport;

use std::process::Child;
use std::time::{Duration, Instant};

use common::gitserver::{GitDaemon, TestRepo};
use gitsupport::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BRANCH: &str = "hosts/web1";

struct Agent(Option<Child>);

impl Agent {
    fn start(host: &GitHost, url: &str) -> Agent {
        let mut cmd = host.command(url, &["agent"]);
        cmd.env("TRUEUP_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(host.state.path().join("agent.log")).unwrap());
        Agent(Some(cmd.spawn().unwrap()))
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.as_ref().unwrap().id() as i32)
    }

    fn stop(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let mut child = self.0.take().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return (s.code().unwrap_or(-1), start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "the agent did not stop within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log(host: &GitHost) -> String {
    std::fs::read_to_string(host.state.path().join("agent.log")).unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn motd_is(host: &GitHost, text: &str) -> bool {
    host.read("/etc/motd").as_deref() == Some(text)
}

#[test]
fn converges_from_the_remote_and_takes_a_new_commit_on_sighup() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    let daemon = GitDaemon::start(base.path());
    let url = daemon.url(&repo.rel());
    repo.commit_and_push(BRANCH, &files(&motd_branch("first")), "first");
    let host = GitHost::new("web1");
    host.configure("interval: 1h\nsplay: 0s\n");
    let mut agent = Agent::start(&host, &url);
    wait_for(
        "the first commit to converge",
        Duration::from_secs(20),
        || motd_is(&host, "first\n"),
    );

    let c2 = repo.commit_and_push(BRANCH, &files(&motd_branch("second")), "second");
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let took = wait_for(
        "SIGHUP to converge the new commit",
        Duration::from_secs(1),
        || motd_is(&host, "second\n"),
    );
    eprintln!("new commit converged {took:?} after SIGHUP");
    // state.json is written when the run ends, just after the files.
    wait_for(
        "the new commit recorded as applied",
        Duration::from_secs(5),
        || host.applied_commit().as_deref() == Some(c2.as_str()),
    );
    // The note for it reaches the remote.
    wait_for("the note on the new commit", Duration::from_secs(5), || {
        repo.note(&host.notes_ref(), &c2).is_some()
    });

    let (code, took) = agent.stop(Duration::from_secs(5));
    assert_eq!(code, 0, "{}", log(&host));
    eprintln!("SIGTERM → exit 0 in {took:?}");
}

#[test]
fn keeps_running_while_the_remote_is_unreachable_then_converges() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    repo.commit_and_push(BRANCH, &files(&motd_branch("back")), "first");
    // Learn a free port, then take the server away.
    let port = {
        let d = GitDaemon::start(base.path());
        d.port()
    };
    let url = format!("git://127.0.0.1:{port}/{}", repo.rel());
    let host = GitHost::new("web1");
    host.configure("interval: 1h\nsplay: 0s\n");
    let agent = Agent::start(&host, &url);
    wait_for("three failed attempts", Duration::from_secs(20), || {
        log(&host).matches("run failed").count() >= 3
    });
    let text = log(&host);
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("run failed")).collect();
    // One line per backoff step, naming the cause, with a growing wait.
    for (line, wait) in failures
        .iter()
        .zip(["retry_in=2s", "retry_in=4s", "retry_in=8s"])
    {
        assert!(line.contains(wait), "expected {wait}: {text}");
        assert!(
            line.contains("unreachable") || line.contains("connect"),
            "the cause is named: {line}"
        );
    }
    assert!(!motd_is(&host, "back\n"));
    assert!(agent.0.is_some());

    let _daemon = GitDaemon::start_at(base.path(), port);
    wait_for(
        "convergence once the remote is back",
        Duration::from_secs(20),
        || motd_is(&host, "back\n"),
    );
}

#[test]
fn a_broken_commit_is_not_applied_and_drift_is_still_repaired_to_the_good_one() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    let daemon = GitDaemon::start(base.path());
    let url = daemon.url(&repo.rel());
    let good = repo.commit_and_push(BRANCH, &files(&motd_branch("good")), "good");
    let host = GitHost::new("web1");
    host.configure("interval: 1h\nsplay: 0s\n");
    let agent = Agent::start(&host, &url);
    wait_for("the good commit", Duration::from_secs(20), || {
        motd_is(&host, "good\n")
    });

    // A commit whose template needs a variable nobody defined.
    let broken = repo.commit_and_push(
        BRANCH,
        &[(
            "trueup.yaml",
            "files:\n  /etc/motd:\n    content: \"{{vars.missing}}\\n\"\n",
        )],
        "broken",
    );
    std::fs::write(host.path("/etc/motd"), "hand edit\n").unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    wait_for(
        "drift repaired to the good commit",
        Duration::from_secs(10),
        || motd_is(&host, "good\n"),
    );
    assert_eq!(
        host.applied_commit().as_deref(),
        Some(good.as_str()),
        "the broken commit is not recorded as applied"
    );

    // The note on the broken commit says why it was not applied.
    wait_for(
        "a note on the broken commit",
        Duration::from_secs(10),
        || repo.note(&host.notes_ref(), &broken).is_some(),
    );
    let note = repo.note(&host.notes_ref(), &broken).unwrap();
    let (summary, json) = note.split_once("\n\n").unwrap();
    assert!(summary.contains("error"), "{summary}");
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["status"], "error");
    let why = report["errors"][0].as_str().unwrap();
    assert!(
        why.contains("trueup.yaml:3:") && why.contains("vars.missing"),
        "{why}"
    );
    // The run report says what was kept and what was rejected. It is
    // written when the run ends, just after the note is pushed: wait for it.
    let read_last = || -> serde_json::Value {
        std::fs::read(host.state.path().join("last-run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    wait_for("the run's report", Duration::from_secs(10), || {
        read_last()["source"]["rejected"]["commit"] == broken.as_str()
    });
    let last = read_last();
    assert_eq!(last["source"]["commit"], good.as_str(), "{last}");
    assert_eq!(
        last["source"]["rejected"]["commit"],
        broken.as_str(),
        "{last}"
    );

    // Another run writes no second note on the broken commit.
    let notes_before = notes_commits(&repo.bare, &host.notes_ref());
    // Wait for the event (the SIGHUP's run has finished), not a clock.
    let runs_before = log(&host).matches("run finished").count();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    wait_for(
        "the run the SIGHUP asked for",
        Duration::from_secs(20),
        || log(&host).matches("run finished").count() > runs_before,
    );
    assert_eq!(
        notes_commits(&repo.bare, &host.notes_ref()),
        notes_before,
        "{}",
        log(&host)
    );
    assert!(motd_is(&host, "good\n"));
}
