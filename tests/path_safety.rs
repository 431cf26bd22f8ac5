//! Path safety while trueup runs: a directory or file swapped for a
//! symlink in the middle of an apply is never followed, so nothing is ever
//! written outside --root however the race falls.

mod support;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{RenameFlags, renameat2};
use support::*;

const FILES: usize = 40;

fn branch(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("files:\n");
    for i in 0..FILES {
        yaml.push_str(&format!(
            "  /srv/app/conf.d/f{i:02}.conf:\n    content: \"{variant} {i}\\n\"\n"
        ));
    }
    yaml.push_str(&format!(
        "  /srv/app/main.conf:\n    content: \"{variant} main\\n\"\n"
    ));
    write(dir.path(), "trueup.yaml", &yaml);
    dir
}

/// Atomically exchanges two paths (one a directory or file, the other a
/// symlink), so that at every instant each name is one or the other.
fn exchange(a: &Path, b: &Path) -> nix::Result<()> {
    let cwd = std::fs::File::open(".").unwrap();
    renameat2(cwd.as_fd(), a, cwd.as_fd(), b, RenameFlags::RENAME_EXCHANGE)
}

#[test]
fn symlinks_swapped_in_during_apply_are_never_followed() {
    let host = Host::new();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious.conf");
    std::fs::write(&precious, "outside the root\n").unwrap();
    let outside_before = snapshot(outside.path());

    let a = branch("a");
    let b = branch("b");
    let r = host.run(a.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // Two decoys beside the managed names: a symlink to the outside
    // directory (for the parent /srv/app/conf.d) and one to a file outside
    // (for /srv/app/main.conf).
    let conf_d = host.path("/srv/app/conf.d");
    let conf_d_decoy = host.path("/srv/app/.decoy-dir");
    std::os::unix::fs::symlink(outside.path(), &conf_d_decoy).unwrap();
    let main = host.path("/srv/app/main.conf");
    let main_decoy = host.path("/srv/app/.decoy-file");
    std::os::unix::fs::symlink(&precious, &main_decoy).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (conf_d, conf_d_decoy) = (conf_d.clone(), conf_d_decoy.clone());
        let (main, main_decoy) = (main.clone(), main_decoy.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Swap in, hold briefly, swap back: each name spends about
                // half its time as a symlink pointing outside.
                let (x, y) = if n.is_multiple_of(3) {
                    (&main, &main_decoy)
                } else {
                    (&conf_d, &conf_d_decoy)
                };
                if exchange(x, y).is_ok() {
                    std::thread::sleep(Duration::from_micros(200 + n % 500));
                    exchange(x, y).expect("swapping back");
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(100 + n % 300));
                n += 1;
            }
        })
    };

    let mut refused = 0;
    let start = Instant::now();
    let mut runs = 0usize;
    while runs < 40 && start.elapsed() < Duration::from_secs(40) {
        let src = if runs.is_multiple_of(2) { &b } else { &a };
        let r = host.run(src.path(), &["apply", "--format", "json"]);
        assert!(
            r.code == 0 || r.code == 1,
            "run {runs}: exit {}\n{}",
            r.code,
            r.all()
        );
        assert!(!r.all().contains("panicked"), "{}", r.all());
        if r.stdout.contains("symlink") {
            refused += 1;
        }
        assert_eq!(
            snapshot(outside.path()),
            outside_before,
            "run {runs}: something was written outside the root"
        );
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!(
        "{runs} applies, {} swaps, {refused} runs refused a symlink",
        swaps.load(Ordering::Relaxed)
    );
    assert_eq!(snapshot(outside.path()), outside_before);
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "outside the root\n"
    );
    // The race was real: some runs met a symlink where a directory or file
    // had been, and refused it.
    assert!(refused > 0, "no run ever met a swapped-in symlink");
    // With the swapping over, one apply converges.
    let r = host.run(a.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(host.path("/srv/app/conf.d/f00.conf")).unwrap(),
        "a 0\n"
    );
    assert!(
        std::fs::symlink_metadata(&main)
            .unwrap()
            .file_type()
            .is_file()
    );
}

/// `allowed_paths` in the agent configuration refuses a branch that
/// declares anything outside it: the whole run is an error, nothing
/// changes, and each resource outside is named.
#[test]
fn allowed_paths_from_the_configuration_refuse_the_whole_branch() {
    let host = Host::new();
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("agent.yaml"),
        "allowed_paths: [/srv/app, /etc/app]\n",
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /srv/app/app.conf:\n    content: \"inside\\n\"\n  /etc/apple:\n    content: \"outside\\n\"\ndirectories:\n  /root/.ssh: {}\n",
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new(trueup_bin())
            .arg("--config")
            .arg(conf.path().join("agent.yaml"))
            .arg("--source")
            .arg(src.path())
            .arg("--root")
            .arg(host.root.path())
            .arg("--state-dir")
            .arg(host.state.path())
            .args(args)
            .env_remove("TRUEUP_LOG")
            .output()
            .unwrap();
        Run::from(out)
    };
    for args in [&["apply"][..], &["check"]] {
        let r = run(args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.all());
        for refused in [
            "file /etc/apple: outside this host's allowed paths (/srv/app, /etc/app)",
            "directory /root/.ssh: outside",
        ] {
            assert!(r.all().contains(refused), "{args:?}: {}", r.all());
        }
        assert!(
            !r.all().contains("/srv/app/app.conf: outside"),
            "{}",
            r.all()
        );
        assert!(snapshot(host.root.path()).is_empty(), "nothing changed");
    }
    // The command line replaces the configured list.
    let r = run(&["--allowed-path", "/", "apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(host.path("/etc/apple").is_file());
    let r = run(&["--allowed-path", "etc", "apply"]);
    assert_eq!(r.code, 2, "clap refuses a relative path: {}", r.all());
    assert!(r.stderr.contains("not an absolute path"), "{}", r.stderr);
}
