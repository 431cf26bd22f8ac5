//! A real apt whose lock another process holds: the failure is transient,
//! so the agent backs off and retries within seconds instead of waiting
//! its interval, and converges once the lock is let go.
//!
//! The lock held is apt's lists lock (`/var/lib/apt/lists/lock`), taken by
//! this test from the host with `fcntl` as apt takes it: `apt-get update`
//! fails at once on it ("Could not get lock"), where `apt-get install`
//! waits two minutes for the dpkg lock (`DPkg::Lock::Timeout`) first.
//! The package is one the lists do not have yet, so trueup runs the update,
//! and the package stays unresolved while it fails.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const BRANCH: &str = "/srv/branch";
const UNIT: &str = "trueup-lock-test-agent";

/// The agent's last report inside the container, once there is one.
fn last_run(c: &Container) -> Option<Value> {
    let text = std::fs::read_to_string(c.path("/var/lib/trueup/last-run.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn package_error(report: &Value) -> String {
    report["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == TESTSVC_PACKAGE))
        .and_then(|r| r["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// An `fcntl` write lock on the whole of `path`, as apt's `GetLock` takes
/// it, held until dropped.
fn hold_lock(path: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETLK(&lock))
        .expect("take apt's lists lock");
    file
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn a_held_apt_lock_fails_the_run_transiently_and_the_agent_retries_soon() {
    let c = Container::boot(&Base::debian());
    let bin = Path::new(env!("CARGO_BIN_EXE_trueup"));
    std::fs::copy(bin, c.path("/usr/local/bin/trueup")).expect("copy trueup into the container");
    let repo = AptRepo::new();
    repo.add(&testsvc_deb("1.0"));
    repo.publish(&c);
    // The lists forget the test repository: the package is found only
    // after an `apt-get update`.
    c.sh_ok("rm -f /var/lib/apt/lists/*testrepo* /var/cache/apt/*.bin");
    assert_eq!(
        c.exec_stdout(&["apt-cache", "madison", TESTSVC_PACKAGE]),
        "",
        "the lists must not offer the package yet"
    );
    c.write_file(
        &format!("{BRANCH}/trueup.yaml"),
        format!("packages:\n  {TESTSVC_PACKAGE}: {{}}\n"),
        0o644,
    );
    c.write_file("/etc/trueup/agent.yaml", "interval: 1h\nsplay: 0s\n", 0o644);

    let lock = hold_lock(&c.path("/var/lib/apt/lists/lock"));
    c.run_ok(&[
        "systemd-run",
        &format!("--unit={UNIT}"),
        "--setenv=TRUEUP_LOG=info",
        "/usr/local/bin/trueup",
        "--source",
        BRANCH,
        "agent",
    ]);
    let journal = || c.exec_stdout(&["journalctl", "--no-pager", "-u", UNIT]);
    let mut first = None;
    c.wait_for(Duration::from_secs(120), "the agent's first report", || {
        first = last_run(&c);
        first.is_some()
    });
    let first = first.unwrap_or_default();
    assert_eq!(first["status"], "failed", "{first:#}\n{}", journal());
    let error = package_error(&first);
    assert!(
        error.contains("is not in any apt source (apt-get update failed")
            && error.contains("Could not get lock /var/lib/apt/lists/lock"),
        "the update failed on the held lock: {error}"
    );

    // The lock is let go; the retry comes long before the hour is up.
    drop(lock);
    let released = Instant::now();
    let mut last = None;
    c.wait_for(Duration::from_secs(90), "a report that converged", || {
        last = last_run(&c);
        last.as_ref().is_some_and(|r| r["status"] == "converged")
    });
    eprintln!(
        "[apt-lock] converged {:.1?} after the lock was let go",
        released.elapsed()
    );
    assert_eq!(
        c.exec_stdout(&["dpkg-query", "-W", "-f", "${Status}", TESTSVC_PACKAGE]),
        "install ok installed"
    );
    let journal = journal();
    assert!(
        journal.contains("run failed"),
        "the agent said the run failed and backs off:\n{journal}"
    );
    c.run_ok(&["systemctl", "stop", UNIT]);
}
