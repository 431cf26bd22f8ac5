//! The README's "Run a fleet" walkthrough, run as written: its `sh` blocks
//! are taken from README.md and run by bash (with `set -eu -o pipefail`)
//! in a scratch directory holding a copy of `examples/`, with the built
//! `trueup` first on PATH. Then what the walkthrough claims is checked:
//! three rollouts completed, the change reached every host and the revert
//! took it back.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `sh` blocks of the README section titled `title`, in order.
fn shell_blocks(readme: &str, title: &str) -> String {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section '{title}'"));
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        if in_block {
            if line.trim_start().starts_with("```") {
                in_block = false;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line.trim() == "```sh" {
            in_block = true;
        }
    }
    script
}

/// Kills the walkthrough's whole process group (its background agents)
/// however the test ends.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.0), Signal::SIGKILL);
    }
}

fn copy(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn the_readme_fleet_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let script = shell_blocks(&readme, "Run a fleet");
    assert!(script.contains("trueup fleet promote"), "{script}");
    assert!(script.contains("git -C work revert"), "{script}");

    let dir = tempfile::tempdir().unwrap();
    copy(&root.join("examples"), &dir.path().join("examples"));
    let bin = Path::new(env!("CARGO_BIN_EXE_trueup"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let child = Command::new("bash")
        .args([
            "-c",
            &format!("set -eu -o pipefail\n{script}"),
            "walkthrough",
        ])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", &home)
        .env("TRUEUP_CONFIG", dir.path().join("no-such-agent.yaml"))
        .env("GIT_AUTHOR_NAME", "trueup test")
        .env("GIT_AUTHOR_EMAIL", "test@trueup.invalid")
        .env("GIT_COMMITTER_NAME", "trueup test")
        .env("GIT_COMMITTER_EMAIL", "test@trueup.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("TRUEUP_SOURCE")
        .env_remove("TRUEUP_REPORTS")
        .env_remove("TRUEUP_LOG")
        .stdin(Stdio::null())
        // Files, not pipes: background agents would hold a pipe open.
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let _group = Group(child.id() as i32);
    let mut child = child;
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let logs: String = ["web-01", "web-02", "db-01"]
        .iter()
        .map(|h| std::fs::read_to_string(dir.path().join(h).join("agent.log")).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(
        status.success(),
        "the walkthrough failed ({status:?})\nstdout:\n{stdout}\nstderr:\n{stderr}\nagents:\n{logs}"
    );
    assert_eq!(stdout.matches("rollout completed").count(), 3, "{stdout}");
    assert!(stdout.contains("all 3 hosts render"), "{stdout}");
    assert!(stdout.contains("<h1>web-01</h1>"), "{stdout}");
    // Step 5 printed the new port, step 6 the old one again.
    let ports: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Port ")).collect();
    assert_eq!(ports, ["Port 2222", "Port 22"], "{stdout}");
    for h in ["web-01", "web-02", "db-01"] {
        let conf = std::fs::read_to_string(
            dir.path()
                .join(h)
                .join("root/etc/ssh/sshd_config.d/50-hardening.conf"),
        )
        .unwrap();
        assert!(conf.contains("\nPort 22\n"), "{h}: {conf}");
    }
}
