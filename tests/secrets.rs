//! Secrets: the content of a file marked `secret: true` (its new content
//! and the content it replaces) never reaches stdout, stderr (even at
//! TRUEUP_LOG=trace), reports, last-run.json or the names of backups; the
//! backup of a replaced secret is readable by root only.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::*;

const NEW: &str = "NEW-S3CR3T-7f1c";
const OLD: &str = "OLD-S3CR3T-90ab";
const TEMPLATED: &str = "TPL-S3CR3T-55e2";

fn secret_branch() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "trueup.yaml",
        &format!(
            "vars:\n  db_password: \"{TEMPLATED}\"\nfiles:\n  /etc/app/secret.key:\n    content: \"{NEW}\\n\"\n    secret: true\n    mode: \"0600\"\n  /etc/app/db.conf:\n    template: db.conf.hbs\n    secret: true\n  /etc/app/plain.conf:\n    content: \"nothing to hide\\n\"\n"
        ),
    );
    write(
        src.path(),
        "db.conf.hbs",
        "user = app\npassword = {{vars.db_password}}\n",
    );
    src
}

/// Runs trueup with every log level on, as an operator debugging would.
fn traced(host: &Host, src: &Path, args: &[&str]) -> Run {
    let out = Command::new(trueup_bin())
        .arg("--config")
        .arg(host.state.path().join("no-agent.yaml"))
        .arg("--source")
        .arg(src)
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args(args)
        .env("TRUEUP_LOG", "trace")
        .output()
        .unwrap();
    Run::from(out)
}

fn assert_clean(what: &str, text: &str) {
    for s in [NEW, OLD, TEMPLATED, "S3CR3T"] {
        assert!(!text.contains(s), "{what} shows {s}:\n{text}");
    }
}

/// Every file under `dir`: (path, content as text).
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
                out.push((p, text));
            }
        }
    }
    out
}

#[test]
fn secret_content_never_appears_in_output_logs_or_reports() {
    let host = Host::new();
    let src = secret_branch();
    // Old content on disk: drift to report, content to back up.
    write(host.root.path(), "etc/app/secret.key", &format!("{OLD}\n"));
    write(
        host.root.path(),
        "etc/app/db.conf",
        &format!("user = app\npassword = {OLD}\n"),
    );

    let mut seen_trace = false;
    for args in [
        &["check"][..],
        &["check", "--format", "json"],
        &["apply", "--dry-run"],
        &["apply", "--dry-run", "--format", "json"],
        &["apply", "--format", "json"],
        &["check"],
        &["apply"],
    ] {
        let r = traced(&host, src.path(), args);
        assert!(!r.all().contains("panicked"), "{args:?}: {}", r.all());
        assert_clean(&format!("{args:?}"), &r.all());
        seen_trace |= r.stderr.contains("TRACE") || r.stderr.contains("DEBUG");
        let last = std::fs::read_to_string(host.state.path().join("last-run.json")).unwrap();
        assert_clean(&format!("last-run.json after {args:?}"), &last);
    }
    // The logs were really on, so their silence means something.
    assert!(
        seen_trace,
        "TRUEUP_LOG=trace produced no debug or trace lines"
    );

    // The secrets were written.
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/app/secret.key")).unwrap(),
        format!("{NEW}\n")
    );
    assert!(
        std::fs::read_to_string(host.path("/etc/app/db.conf"))
            .unwrap()
            .contains(TEMPLATED)
    );

    // Everything under the state directory other than the backups of the
    // replaced content is clean, and so are the backups' names.
    let backup = host.state.path().join("backup");
    let mut backups = 0;
    for (path, text) in files_under(host.state.path()) {
        assert_clean(
            &format!("the name {}", path.display()),
            &path.display().to_string(),
        );
        if path.starts_with(&backup) {
            backups += 1;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "backup {} is mode {mode:o}", path.display());
            continue;
        }
        assert_clean(&path.display().to_string(), &text);
    }
    assert!(backups >= 2, "the replaced secrets were kept ({backups})");
    // The backup directories are root's alone.
    for e in std::fs::read_dir(&backup).unwrap() {
        let p = e.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is mode {mode:o}", p.display());
    }

    // `render` and `validate` hide it too.
    for cmd in ["render", "validate"] {
        let r = traced(&host, src.path(), &[cmd, src.path().to_str().unwrap()]);
        assert_eq!(r.code, 0, "{cmd}: {}", r.all());
        assert_clean(cmd, &r.all());
        let r = traced(
            &host,
            src.path(),
            &["--format", "json", cmd, src.path().to_str().unwrap()],
        );
        assert_clean(cmd, &r.all());
    }
}

#[test]
fn a_failing_secret_does_not_leak_in_its_error() {
    let host = Host::new();
    let src = secret_branch();
    // A directory where the secret file should be: the write is refused.
    std::fs::create_dir_all(host.path("/etc/app/secret.key")).unwrap();
    // And old content to replace beside it.
    write(host.root.path(), "etc/app/db.conf", &format!("{OLD}\n"));
    let r = traced(&host, src.path(), &["apply", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_clean("a failed apply", &r.all());
    let report = r.json();
    assert_eq!(report["status"], "failed", "{report}");
    let last = std::fs::read_to_string(host.state.path().join("last-run.json")).unwrap();
    assert_clean("last-run.json", &last);
}

#[test]
fn the_leak_check_itself_can_fail() {
    // The same branch without `secret: true` must show the content in a
    // diff, or the checks above would pass for the wrong reason.
    let host = Host::new();
    let src = secret_branch();
    let yaml = std::fs::read_to_string(src.path().join("trueup.yaml"))
        .unwrap()
        .replace("    secret: true\n", "");
    std::fs::write(src.path().join("trueup.yaml"), yaml).unwrap();
    write(host.root.path(), "etc/app/secret.key", &format!("{OLD}\n"));
    let r = traced(&host, src.path(), &["check"]);
    assert!(
        r.all().contains(NEW) && r.all().contains(OLD),
        "{}",
        r.all()
    );
}
