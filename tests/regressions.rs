//! Tests named after defects found in review (issue 14), each failing
//! before its fix.

mod support;

use std::process::{Command, Stdio};

use support::{Host, demo_copy, trueup_bin};

/// `trueup render DIR | head -1` used to panic ("failed printing to
/// stdout: Broken pipe") and exit 101. Every printing command now ends
/// quietly when its reader has gone.
#[test]
fn a_closed_stdout_pipe_ends_commands_quietly() {
    let branch = demo_copy();
    let host = Host::new();
    for args in [
        vec!["render".to_string(), branch.path().display().to_string()],
        vec!["validate".to_string(), branch.path().display().to_string()],
        vec!["facts".to_string()],
        vec!["status".to_string()],
    ] {
        let mut cmd = Command::new(trueup_bin());
        cmd.arg("--state-dir").arg(host.state.path());
        let mut child = cmd
            .args(&args)
            .env_remove("TRUEUP_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
