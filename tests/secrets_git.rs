//! Secrets through a Git source: the content of a `secret: true` file (new
//! and replaced) never reaches the Git note a run writes back to the
//! repository, nor the output or logs of a run from a `file://` remote.

mod common;
mod gitsupport;

use common::gitserver::{TestRepo, git};
use gitsupport::GitHost;
use tempfile::TempDir;

const NEW: &str = "NEW-N0TE-S3CR3T";
const OLD: &str = "OLD-N0TE-S3CR3T";

#[test]
fn secret_content_never_reaches_the_git_note() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    std::fs::create_dir_all(host.path("/etc")).unwrap();
    std::fs::write(host.path("/etc/token"), format!("{OLD}\n")).unwrap();
    let yaml = format!(
        "files:\n  /etc/token:\n    content: \"{NEW}\\n\"\n    secret: true\n    mode: \"0600\"\n  /etc/motd:\n    content: \"hello\\n\"\n"
    );
    let commit = repo.commit(&[("trueup.yaml", yaml.as_str())], "secret");
    repo.push("hosts/web1");

    for args in [&["check", "--format", "json"][..], &["apply"]] {
        let mut cmd = host.command(&url, args);
        cmd.env("TRUEUP_LOG", "trace");
        let out = cmd.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("N0TE-S3CR3T"),
            "{args:?} shows the secret:\n{all}"
        );
    }
    assert_eq!(host.read("/etc/token"), Some(format!("{NEW}\n")));

    // The note on the applied commit: a report that names the file and
    // says it changed, without its content.
    let note = repo
        .note(&host.notes_ref(), &commit)
        .expect("the run is noted on its commit");
    assert!(note.contains("/etc/token"), "{note}");
    assert!(
        !note.contains("N0TE-S3CR3T"),
        "the note shows the secret:\n{note}"
    );
    // Nor anywhere else in the notes history.
    let log = git(&repo.bare, &["log", "-p", &host.notes_ref()]);
    assert!(!log.contains("N0TE-S3CR3T"), "{log}");
}
