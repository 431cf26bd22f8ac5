//! A full disk: an apply on a small tmpfs that cannot hold the new content
//! fails cleanly, keeps the old file whole, and leaves no temporary file.
//! Needs root (it mounts a tmpfs), like CI.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// A 1 MiB tmpfs mounted for one test, unmounted when dropped.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "mounting a tmpfs needs root, as in CI"
        );
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        SmallTmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system at `dir` until a write fails; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 4096];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

fn leftovers(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_keys()
        .filter(|k| k.contains(".trueup-"))
        .collect()
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn apply_on_a_full_disk_fails_cleanly() {
    let fs = SmallTmpfs::mount("1m");
    let state = tempfile::tempdir().unwrap();
    let root = fs.path();
    write(root, "etc/app.conf", "old content, still whole\n");
    write(root, "etc/motd", "old motd\n");
    fill(root);

    // 300 KiB of new content: more than is free (nothing is).
    let big = "x".repeat(300 * 1024);
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "files/app.conf", &big);
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /etc/app.conf:\n    source: files/app.conf\n  /etc/motd:\n    content: \"new motd\\n\"\n",
    );
    let host = |args: &[&str]| {
        let out = Command::new(trueup_bin())
            .arg("--config")
            .arg(state.path().join("no-agent.yaml"))
            .arg("--source")
            .arg(src.path())
            .arg("--root")
            .arg(root)
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .env_remove("TRUEUP_LOG")
            .output()
            .unwrap();
        Run::from(out)
    };

    let r = host(&["apply", "--format", "json"]);
    assert_eq!(r.code, 1, "a failed write is a failed run\n{}", r.all());
    assert!(!r.all().contains("panicked"), "{}", r.all());
    let report = r.json();
    assert_eq!(report["status"], "failed", "{report}");
    let app = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["resource"] == "/etc/app.conf")
        .unwrap();
    assert_eq!(app["status"], "failed", "{report}");
    assert!(
        app["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{app}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "old content, still whole\n"
    );
    assert_eq!(leftovers(root), Vec::<String>::new(), "temp files left");

    // With detailed exit codes the failure shows as 4 (or 6 if the small
    // file fit).
    let r = host(&["apply", "--detailed-exitcodes"]);
    assert!(r.code == 4 || r.code == 6, "exit {}\n{}", r.code, r.all());
    assert_eq!(leftovers(root), Vec::<String>::new(), "temp files left");

    // Room again: the next apply converges.
    std::fs::remove_file(root.join("filler")).unwrap();
    let r = host(&["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        big
    );
    assert_eq!(leftovers(root), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn a_full_state_directory_leaves_the_file_as_it_was() {
    // The backup of the replaced content cannot be written: the step fails
    // before the file is touched.
    let fs = SmallTmpfs::mount("1m");
    let root = tempfile::tempdir().unwrap();
    let lock_dir = tempfile::tempdir().unwrap();
    let state = fs.path().join("state");
    std::fs::create_dir(&state).unwrap();
    write(root.path(), "etc/app.conf", &"o".repeat(200 * 1024));
    fill(fs.path());
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        "files:\n  /etc/app.conf:\n    content: \"new\\n\"\n",
    );
    let out = Command::new(trueup_bin())
        .arg("--config")
        .arg(fs.path().join("no-agent.yaml"))
        .arg("--source")
        .arg(src.path())
        .arg("--root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(&state)
        .arg("--lock-file")
        .arg(lock_dir.path().join("lock"))
        .args(["apply"])
        .env_remove("TRUEUP_LOG")
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(!r.all().contains("panicked"), "{}", r.all());
    assert!(
        r.all().contains("keeping the replaced content"),
        "{}",
        r.all()
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/app.conf")).unwrap(),
        "o".repeat(200 * 1024)
    );
    assert_eq!(leftovers(root.path()), Vec::<String>::new());
    assert_eq!(leftovers(fs.path()), Vec::<String>::new());
}
