//! `trueup fleet promote` against a real `git daemon` on loopback and 12
//! real `trueup agent` processes (each its own root, state directory and
//! hostname), converging files only.
//!
//! One fleet serves the three scenarios in turn, so the agents start once:
//! 1. a new commit on main reaches all hosts in three waves (canary, 25%,
//!    100%), each wave pushed only once the previous one reported healthy
//!    (watched from the server's side while the rollout runs);
//! 2. a host branch with a host-only commit is skipped and reported, the
//!    others are promoted (in the same rollout as 1);
//! 3. a commit that fails on the canary stops the rollout after the first
//!    wave: no other branch moves, and the command names the host and why.

mod common;
mod gitsupport;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::gitserver::{GitDaemon, TestRepo, git};
use gitsupport::{GitHost, trueup_bin};

const HOSTS: usize = 12;

fn name(i: usize) -> String {
    format!("h{i:02}")
}

/// fleet.yaml: h01 is the canary; all are web servers.
fn fleet_yaml() -> String {
    let mut s = String::from("hosts:\n");
    for i in 1..=HOSTS {
        let groups = if i == 1 { "[canary, web]" } else { "[web]" };
        s.push_str(&format!("  {}: {{ groups: {groups} }}\n", name(i)));
    }
    s.push_str("rollout:\n  waves: [canary, \"25%\", \"100%\"]\n  wait: 90s\n  max_unhealthy: 0\n");
    s
}

/// One entry file for every host, and each host's own file.
fn main_files(version: &str) -> Vec<(String, String)> {
    let mut v = vec![
        ("fleet.yaml".to_string(), fleet_yaml()),
        (
            "trueup.yaml".to_string(),
            format!(
                "include: [\"hosts/{{{{facts.hostname}}}}.yaml\"]\nfiles:\n  /etc/motd:\n    content: \"{version} on {{{{facts.hostname}}}}\\n\"\n    mode: \"0644\"\n"
            ),
        ),
    ];
    for i in 1..=HOSTS {
        v.push((
            format!("hosts/{}.yaml", name(i)),
            format!("vars: {{ rack: r{i} }}\n"),
        ));
    }
    v
}

fn commit(repo: &TestRepo, files: &[(String, String)], message: &str) -> String {
    let f: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    repo.commit(&f, message)
}

struct Agent {
    host: GitHost,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(host: GitHost, url: &str) -> Agent {
    host.configure("interval: 2s\nsplay: 0s\nreport: { notes: true }\n");
    let log = std::fs::File::create(host.state.path().join("agent.log")).unwrap();
    let child = host
        .command(url, &["agent"])
        .env("TRUEUP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Agent { host, child }
}

fn agent_log(a: &Agent) -> String {
    std::fs::read_to_string(a.host.state.path().join("agent.log")).unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Branch tips of the bare repository, by host.
fn host_tips(bare: &Path) -> BTreeMap<String, String> {
    let repo = git2::Repository::open_bare(bare).unwrap();
    (1..=HOSTS)
        .filter_map(|i| {
            let r = repo
                .find_reference(&format!("refs/heads/hosts/{}", name(i)))
                .ok()?;
            Some((name(i), r.target()?.to_string()))
        })
        .collect()
}

/// The status of the note host `host` wrote on `commit`, read from the
/// server's own notes refs (history and latest).
fn note_status(bare: &Path, host: &str, commit: &str) -> Option<String> {
    let repo = git2::Repository::open_bare(bare).ok()?;
    let oid = git2::Oid::from_str(commit).ok()?;
    for r in [
        format!("refs/notes/trueup-latest/{host}"),
        format!("refs/notes/trueup/{host}"),
    ] {
        if let Ok(note) = repo.find_note(Some(&r), oid) {
            let text = note.message().ok()?.to_string();
            let json = text.split_once("\n\n")?.1;
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            return v["status"].as_str().map(str::to_string);
        }
    }
    None
}

/// `trueup fleet promote` as CI runs it (no configuration on the machine).
fn promote(dir: &Path, url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(trueup_bin())
        .arg("--config")
        .arg(dir.join("no-agent.yaml"))
        .args(["--source", url, "fleet", "promote", "--poll", "500ms"])
        .args(args)
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_SOURCE")
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

/// Watches the server while a rollout runs: whenever a host of wave k+1
/// is on `commit`, every host of waves 1..=k must already have a healthy
/// note on it. Branches are read before notes, so a branch seen moved was
/// moved before the notes were read.
struct WaveWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl WaveWatch {
    fn start(bare: PathBuf, commit: String, waves: Vec<Vec<String>>) -> WaveWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut violations = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let tips = host_tips(&bare);
                for (k, wave) in waves.iter().enumerate().skip(1) {
                    let moved: Vec<&String> = wave
                        .iter()
                        .filter(|h| tips.get(*h) == Some(&commit))
                        .collect();
                    if moved.is_empty() {
                        continue;
                    }
                    for earlier in waves[..k].iter().flatten() {
                        let s = note_status(&bare, earlier, &commit);
                        if !matches!(s.as_deref(), Some("in_sync" | "converged")) {
                            violations.push(format!(
                                "{moved:?} (wave {}) on the commit while {earlier} reported {s:?}",
                                k + 1
                            ));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            violations
        });
        WaveWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn promote_in_waves_skips_hotfixed_hosts_and_stops_on_a_failing_canary() {
    let base = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(base.path(), "fleet");
    let daemon = GitDaemon::start(base.path());
    let url = daemon.url(&repo.rel());

    // v1 on main; every host branch at it, except h12 which carries a
    // host-only hotfix on top.
    let v1 = commit(&repo, &main_files("v1"), "v1");
    repo.push("main");
    for i in 1..HOSTS {
        git(
            &repo.work,
            &["push", "-q", "origin", &format!("main:hosts/{}", name(i))],
        );
    }
    git(&repo.work, &["checkout", "-q", "-b", "hosts/h12"]);
    let hotfix = repo.commit(
        &[("hosts/h12.yaml", "vars: { rack: r12, hotfix: true }\n")],
        "h12 only: hotfix",
    );
    repo.push("hosts/h12");
    git(&repo.work, &["checkout", "-q", "main"]);

    let agents: Vec<Agent> = (1..=HOSTS)
        .map(|i| start_agent(GitHost::new(&name(i)), &url))
        .collect();
    wait_for("every host to apply v1", Duration::from_secs(120), || {
        agents.iter().all(|a| {
            a.host.read("/etc/motd").as_deref() == Some(&format!("v1 on {}\n", a.host.name))
        })
    });

    // --- a dry run moves nothing and shows the plan ---
    let v2 = commit(&repo, &main_files("v2"), "v2: new motd");
    repo.push("main");
    let before = host_tips(&repo.bare);
    let (code, out, err) = promote(base.path(), &url, &["--from", "main", "--dry-run"]);
    assert_eq!(code, 0, "dry run\n{out}\n{err}");
    assert!(out.contains("wave 1/3 (canary): 1 host(s)"), "{out}");
    assert!(out.contains("wave 2/3 (25%): 3 host(s)"), "{out}");
    assert!(out.contains("wave 3/3 (100%): 7 host(s)"), "{out}");
    assert!(out.contains("skipped h12"), "{out}");
    assert_eq!(host_tips(&repo.bare), before, "a dry run pushed\n{out}");

    // --- 1 and 2: three waves, each after the previous one is healthy ---
    let waves: Vec<Vec<String>> = vec![
        vec![name(1)],
        (2..=4).map(name).collect(),
        (5..=11).map(name).collect(),
    ];
    let watch = WaveWatch::start(repo.bare.clone(), v2.clone(), waves.clone());
    let started = Instant::now();
    let (code, out, err) = promote(base.path(), &url, &["--from", "main", "--format", "json"]);
    let violations = watch.finish();
    let logs = || {
        agents
            .iter()
            .map(agent_log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(code, 0, "promote v2\n{out}\n{err}\n{}", logs());
    assert!(violations.is_empty(), "waves overlapped: {violations:#?}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["result"], "completed", "{out}");
    assert_eq!(summary["commit"], v2.as_str());
    let got: Vec<Vec<String>> = summary["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["unhealthy"], 0, "{w}");
            w["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    assert_eq!(h["state"], "healthy", "{h}");
                    h["host"].as_str().unwrap().to_string()
                })
                .collect()
        })
        .collect();
    assert_eq!(got, waves, "{out}");
    // The hotfixed host: skipped, reported, its branch untouched.
    assert_eq!(summary["skipped"][0]["host"], "h12", "{out}");
    assert!(
        summary["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("holds commits"),
        "{out}"
    );
    let tips = host_tips(&repo.bare);
    assert_eq!(tips["h12"], hotfix);
    for i in 1..HOSTS {
        assert_eq!(tips[&name(i)], v2, "{}", name(i));
        let a = &agents[i - 1];
        assert_eq!(
            a.host.read("/etc/motd").as_deref(),
            Some(format!("v2 on {}\n", a.host.name).as_str())
        );
        assert_eq!(
            note_status(&repo.bare, &name(i), &v2).as_deref(),
            Some("converged")
        );
    }
    assert_eq!(
        agents[11].host.read("/etc/motd").as_deref(),
        Some("v1 on h12\n")
    );
    eprintln!(
        "rollout of 11 hosts in 3 waves took {:?}",
        started.elapsed()
    );
    assert_ne!(v1, v2);

    // --- 3: a commit that fails on the canary stops after wave 1 ---
    let mut bad = main_files("v3");
    bad.push((
        "hosts/h01.yaml".to_string(),
        "vars: { rack: r1 }\nfiles:\n  /etc/canary.conf:\n    content: \"x\\n\"\n    owner: no-such-user-h01\n"
            .to_string(),
    ));
    let v3 = commit(&repo, &bad, "v3: a file whose owner does not exist on h01");
    repo.push("main");
    let (code, out, err) = promote(base.path(), &url, &["--from", "main"]);
    assert_eq!(code, 1, "promote v3\n{out}\n{err}");
    assert!(out.contains("rollout stopped"), "{out}");
    let stop_line = out
        .lines()
        .find(|l| l.starts_with("rollout stopped"))
        .unwrap();
    assert!(stop_line.contains("h01"), "{out}");
    assert!(stop_line.contains("no-such-user-h01"), "{out}");
    let tips = host_tips(&repo.bare);
    assert_eq!(tips["h01"], v3);
    assert_eq!(tips["h12"], hotfix);
    for i in 2..HOSTS {
        assert_eq!(tips[&name(i)], v2, "{} moved", name(i));
    }
    assert!(
        !matches!(
            note_status(&repo.bare, "h01", &v3).as_deref(),
            Some("in_sync" | "converged") | None
        ),
        "h01 should have reported a failure on v3"
    );
    assert!(out.contains("not promoted: h02"), "{out}");

    // fleet status tells the same from tips and notes alone: how far each
    // branch is behind main, and that the rollout stopped on h01.
    let status = std::process::Command::new(trueup_bin())
        .arg("--config")
        .arg(base.path().join("no-agent.yaml"))
        .args(["--source", &url, "--format", "json", "fleet", "status"])
        .env_remove("TRUEUP_CONFIG")
        .env_remove("TRUEUP_REPORTS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rollout = &v["rollout"];
    assert_eq!(rollout["commit"], v3.as_str(), "{rollout}");
    assert_eq!(rollout["state"], "stopped", "{rollout}");
    let host = |h: &str| {
        rollout["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["host"] == h)
            .unwrap()
            .clone()
    };
    assert_eq!(host("h01")["position"], "promoted");
    assert!(
        host("h01")["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-user-h01")
    );
    assert_eq!(host("h02")["position"], "behind");
    assert_eq!(host("h02")["behind"], 1);
    assert_eq!(host("h12")["position"], "diverged");
    assert_eq!(host("h12")["ahead"], 1);
    assert_eq!(host("h12")["behind"], 2);

    // A host that says nothing within --wait is unhealthy: h02's agent is
    // stopped, so a rollout of v3 to it alone (--hosts, --waves) stops.
    let mut agents = agents;
    let h02 = agents.remove(1);
    drop(h02);
    let (code, out, err) = promote(
        base.path(),
        &url,
        &[
            "--from", &v3, "--hosts", "h0[2]", "--waves", "100%", "--wait", "3s",
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let stop_line = out
        .lines()
        .find(|l| l.starts_with("rollout stopped"))
        .unwrap();
    assert!(
        stop_line.contains("h02: no healthy report on the promoted commit within 3s"),
        "{out}"
    );
    assert_eq!(host_tips(&repo.bare)["h03"], v2, "only h02 was selected");
    drop(agents);
}
