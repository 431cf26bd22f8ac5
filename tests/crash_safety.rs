//! Crash safety: `trueup apply` killed with SIGKILL at random points never
//! leaves a managed file empty or half-written, and the next apply
//! converges and clears the temporary files the killed runs left behind.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const FILES: usize = 200;
const RUNS: usize = 100;

/// A tiny xorshift generator: the test needs no crate for randomness, and
/// prints its seed so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn content(variant: &str, i: usize) -> String {
    // Different lengths per variant and per file, so a torn write (old
    // length, new bytes, or a prefix) can never pass for either.
    let len = 512 + (i * 37) % 3000 + if variant == "new" { 101 } else { 0 };
    let mut s = format!("{variant} content of file {i:03}\n");
    while s.len() < len {
        s.push_str(variant);
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s.push('\n');
    s
}

fn make_branch(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("files:\n");
    for i in 0..FILES {
        // Spread over a few directories, as a real host would be.
        yaml.push_str(&format!(
            "  /srv/crash/d{}/f{i:03}:\n    source: files/f{i:03}\n    mode: \"0640\"\n",
            i % 4
        ));
        write(dir.path(), &format!("files/f{i:03}"), &content(variant, i));
    }
    write(dir.path(), "trueup.yaml", &yaml);
    dir
}

fn managed(i: usize) -> String {
    format!("/srv/crash/d{}/f{i:03}", i % 4)
}

fn apply_command(host: &Host, src: &Path) -> Command {
    let mut c = Command::new(trueup_bin());
    c.arg("--config")
        .arg(host.state.path().join("no-agent.yaml"))
        .arg("--source")
        .arg(src)
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .arg("apply")
        .env_remove("TRUEUP_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Every managed file, classified: "old", "new", or what is wrong with it.
fn classify(host: &Host, old: &[String], new: &[String]) -> Vec<&'static str> {
    (0..FILES)
        .map(|i| match std::fs::read(host.path(&managed(i))) {
            Ok(b) if b == old[i].as_bytes() => "old",
            Ok(b) if b == new[i].as_bytes() => "new",
            Ok(b) if b.is_empty() => "EMPTY",
            Ok(_) => "PARTIAL",
            Err(_) => "MISSING",
        })
        .collect()
}

/// Temporary files trueup left in the managed directories.
fn temp_files(host: &Host) -> Vec<String> {
    let mut out = Vec::new();
    for d in 0..4 {
        let dir = host.path(&format!("/srv/crash/d{d}"));
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.contains(".trueup-") {
                out.push(format!("d{d}/{name}"));
            }
        }
    }
    out
}

#[test]
fn sigkill_during_apply_never_leaves_a_torn_file() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let host = Host::new();
    let old_branch = make_branch("old");
    let new_branch = make_branch("new");
    let old: Vec<String> = (0..FILES).map(|i| content("old", i)).collect();
    let new: Vec<String> = (0..FILES).map(|i| content("new", i)).collect();

    // Converge to "old", then time an apply that replaces every file (what
    // the kills aim at: it takes longer than the first, which only
    // creates), and go back to "old".
    let status = apply_command(&host, old_branch.path()).status().unwrap();
    assert!(status.success(), "converging the old branch");
    let t0 = Instant::now();
    let status = apply_command(&host, new_branch.path()).status().unwrap();
    let full = t0.elapsed();
    assert!(status.success(), "converging the new branch");
    let status = apply_command(&host, old_branch.path()).status().unwrap();
    assert!(status.success(), "converging the old branch again");
    assert!(classify(&host, &old, &new).iter().all(|c| *c == "old"));
    eprintln!("a full apply replacing {FILES} files takes {full:?}");

    let mut killed_mid_run = 0;
    let mut mixed_after_kill = 0;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for run in 0..RUNS {
        // Alternate the branch so that every run has files to change.
        let src = if run.is_multiple_of(2) {
            &new_branch
        } else {
            &old_branch
        };
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 + 1));
        let mut child = apply_command(&host, src.path()).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_mid_run += 1;
        }
        let states = classify(&host, &old, &new);
        let bad: Vec<String> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(**s, "old" | "new"))
            .map(|(i, s)| format!("{} is {s}", managed(i)))
            .collect();
        assert!(
            bad.is_empty(),
            "run {run} (CRASH_SEED={seed}), killed after {delay:?}: {bad:?}"
        );
        if states.contains(&"old") && states.contains(&"new") {
            mixed_after_kill += 1;
        }
        for s in states {
            *seen.entry(s).or_default() += 1;
        }
    }
    eprintln!(
        "{killed_mid_run} of {RUNS} runs were killed before they finished; \
         {mixed_after_kill} left old and new files side by side; {seen:?}"
    );
    // The kills must land inside applies, or this test proves nothing.
    assert!(
        killed_mid_run >= RUNS / 4,
        "only {killed_mid_run} runs were killed mid-run"
    );
    assert!(
        mixed_after_kill >= 5,
        "only {mixed_after_kill} kills landed between two file writes"
    );

    // The next apply converges everything. Then a full rewrite to the
    // other branch replaces every file, and with it clears every temporary
    // file the kills left.
    let (last, last_want, other, other_want) = if (RUNS - 1).is_multiple_of(2) {
        (&new_branch, "new", &old_branch, "old")
    } else {
        (&old_branch, "old", &new_branch, "new")
    };
    let r = host.run(last.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(classify(&host, &old, &new).iter().all(|c| *c == last_want));
    let r = host.run(other.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(classify(&host, &old, &new).iter().all(|c| *c == other_want));
    assert_eq!(temp_files(&host), Vec::<String>::new(), "stale temp files");
    let r = host.run(other.path(), &["check"]);
    assert_eq!(r.code, 0, "in sync after converging: {}", r.all());
}

/// Temporary files a killed run left in a managed directory are removed at
/// the start of the next apply, whatever file they were for; one that
/// belongs to a live process, or a name that is not trueup's, is left alone.
#[test]
fn stale_temp_files_of_a_killed_run_are_removed_by_the_next_write() {
    let host = Host::new();
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /etc/app.conf:\n    content: \"v1\\n\"\n",
    );
    let r = host.run(src.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // A pid that is not running: the kernel's pid_max is never reached.
    let dead = host.path("/etc/.app.conf.trueup-4194999-0");
    // Our own test process stands in for a live trueup.
    let live = host.path(&format!("/etc/.app.conf.trueup-{}-3", std::process::id()));
    let other = host.path("/etc/.other.conf.trueup-4194999-0");
    let unrelated = host.path("/etc/.app.conf.trueup-notapid");
    for p in [&dead, &live, &other, &unrelated] {
        std::fs::write(p, "half a file").unwrap();
    }
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /etc/app.conf:\n    content: \"v2\\n\"\n",
    );
    let r = host.run(src.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/app.conf")).unwrap(),
        "v2\n"
    );
    assert!(!dead.exists(), "the dead run's temp file is removed");
    assert!(live.exists(), "a live process's temp file is kept");
    assert!(
        !other.exists(),
        "another file's stale temp file is removed too"
    );
    assert!(unrelated.exists(), "a name that is not trueup's is kept");
}
