//! Proves the harness: boot a container, install the test service from a
//! local apt repository, upgrade it. With `TRUEUP_CAPTURE_FIXTURES=1` it also
//! refreshes the real systemctl and dpkg fixtures under tests/fixtures/.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn boot_install_and_upgrade_testsvc() {
    let started = Instant::now();
    let base = Base::debian();
    match base.build_time() {
        Some(t) => eprintln!("[smoke] debootstrap of {}: {t:.1?}", base.name()),
        None => eprintln!("[smoke] base root {} from cache", base.name()),
    }

    let c = Container::boot(&base);
    eprintln!(
        "[smoke] copy of the root: {:.1?}, boot of {}: {:.1?}",
        c.copy_time(),
        c.name(),
        c.boot_time()
    );

    // systemd is PID 1 inside and the system is up.
    assert_eq!(c.run_ok(&["cat", "/proc/1/comm"]), "systemd");
    let state = c.exec_stdout(&["systemctl", "is-system-running"]);
    assert!(
        state == "running" || state == "degraded",
        "is-system-running: {state}"
    );
    assert_eq!(c.run_ok(&["hostname"]), c.name());
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", "cron.service"]),
        "active"
    );

    // Install 1.0 from the local repository.
    let t = Instant::now();
    let repo = AptRepo::new();
    repo.add(&testsvc_deb("1.0"));
    repo.publish(&c);
    c.run_ok(&["apt-get", "install", "-y", "-q", TESTSVC_PACKAGE]);
    eprintln!("[smoke] publish + apt-get install: {:.1?}", t.elapsed());

    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", TESTSVC_UNIT]),
        "enabled"
    );
    c.wait_for(Duration::from_secs(10), "trueup-testsvc active", || {
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]) == "active"
    });
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Version}", TESTSVC_PACKAGE]),
        "1.0"
    );
    c.wait_for(
        Duration::from_secs(10),
        "the service to read its config",
        || c.exec(&["test", "-e", TESTSVC_LOADED]).status.success(),
    );
    assert_eq!(c.read_file(TESTSVC_LOADED), c.read_file(TESTSVC_CONF));
    let pid_1_0 = c.unit_property(TESTSVC_UNIT, "MainPID");
    assert_ne!(pid_1_0, "0");

    // A restart changes MainPID.
    c.run_ok(&["systemctl", "restart", TESTSVC_UNIT]);
    let pid_restarted = c.unit_property(TESTSVC_UNIT, "MainPID");
    assert_ne!(pid_restarted, "0");
    assert_ne!(pid_restarted, pid_1_0, "MainPID unchanged by restart");

    if std::env::var_os("TRUEUP_CAPTURE_FIXTURES").is_some() {
        capture_fixtures(&c);
    }

    // Upgrade to 1.1: the package restarts the service.
    let t = Instant::now();
    repo.add(&testsvc_deb("1.1"));
    repo.publish(&c);
    c.run_ok(&["apt-get", "install", "-y", "-q", TESTSVC_PACKAGE]);
    eprintln!("[smoke] upgrade to 1.1: {:.1?}", t.elapsed());
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Version}", TESTSVC_PACKAGE]),
        "1.1"
    );
    // The conffile was never edited, so dpkg replaced it silently.
    assert!(c.read_file(TESTSVC_CONF).contains("version=1.1"));
    c.wait_for(Duration::from_secs(10), "the upgraded service", || {
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]) == "active"
            && c.unit_property(TESTSVC_UNIT, "MainPID") != pid_restarted
    });
    assert!(c.read_file(TESTSVC_LOADED).contains("version=1.1"));

    let t = Instant::now();
    drop(c);
    eprintln!("[smoke] shutdown and cleanup: {:.1?}", t.elapsed());
    eprintln!("[smoke] whole test: {:.1?}", started.elapsed());
}

/// Saves real `systemctl show` output and a dpkg status database from the
/// container (with trueup-testsvc 1.0 installed and running) as fixtures for
/// the parser tests.
fn capture_fixtures(c: &Container) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let systemctl = fixtures.join("systemctl");
    std::fs::create_dir_all(&systemctl).unwrap();
    let several = c.exec(&[
        "systemctl",
        "show",
        "--property=Id,LoadState,ActiveState,SubState,UnitFileState,MainPID",
        TESTSVC_UNIT,
        "cron.service",
        "nonexistent.service",
        "ssh.service",
    ]);
    assert!(
        several.status.success(),
        "systemctl show failed: {several:?}"
    );
    std::fs::write(systemctl.join("show-several.txt"), &several.stdout).unwrap();
    let all = c.exec(&["systemctl", "show", TESTSVC_UNIT]);
    assert!(all.status.success(), "systemctl show failed: {all:?}");
    std::fs::write(systemctl.join("show-all.txt"), &all.stdout).unwrap();
    let dpkg = fixtures.join("dpkg");
    std::fs::create_dir_all(&dpkg).unwrap();
    std::fs::write(
        dpkg.join("status-container"),
        c.read_file("/var/lib/dpkg/status"),
    )
    .unwrap();
    eprintln!("[smoke] fixtures written under {}", fixtures.display());
}
