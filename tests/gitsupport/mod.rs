//! A scratch host that runs the real `trueup` binary against a Git remote:
//! its own root, state directory, configuration file, facts (hostname)
//! and HOME, with the TLS and SSH variables of the machine's environment
//! removed so every test states its CA and keys in the configuration.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// A host branch managing one file, `/etc/motd`, with `text` in it.
pub fn motd_branch(text: &str) -> Vec<(&'static str, String)> {
    vec![(
        "trueup.yaml",
        format!("files:\n  /etc/motd:\n    content: \"{text}\\n\"\n    mode: \"0644\"\n"),
    )]
}

/// `&[(&str, String)]` as the `&[(&str, &str)]` TestRepo takes.
pub fn files<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(p, c)| (*p, c.as_str())).collect()
}

/// A finished `trueup` process (shared with the plain-directory tests).
#[path = "../support/mod.rs"]
mod plain;
pub use plain::{Run, trueup_bin};

/// A host: hostname, root, state directory, configuration.
pub struct GitHost {
    pub name: String,
    pub root: TempDir,
    pub state: TempDir,
    /// Holds agent.yaml, facts.yaml and serves as HOME.
    pub etc: TempDir,
}

impl GitHost {
    pub fn new(name: &str) -> GitHost {
        let host = GitHost {
            name: name.to_string(),
            root: TempDir::new().unwrap(),
            state: TempDir::new().unwrap(),
            etc: TempDir::new().unwrap(),
        };
        std::fs::write(
            host.etc.path().join("facts.yaml"),
            format!(
                "hostname: {name}\nfqdn: {name}.test\nos: {{ id: debian, version_id: \"12\" }}\narch: x86_64\ncpus: 1\nmemory_mb: 1024\nipv4: []\nipv6: []\nmachine_id: 0123456789abcdef0123456789abcdef\nuser: root\n"
            ),
        )
        .unwrap();
        host.configure("");
        host
    }

    pub fn config_path(&self) -> PathBuf {
        self.etc.path().join("agent.yaml")
    }

    /// Writes agent.yaml.
    pub fn configure(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).unwrap();
    }

    /// A file under the host's root.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    pub fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    pub fn command(&self, source: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(trueup_bin());
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--facts")
            .arg(self.etc.path().join("facts.yaml"))
            .arg("--root")
            .arg(self.root.path())
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--source")
            .arg(source)
            .args(args)
            .env("HOME", self.etc.path())
            .stdin(Stdio::null());
        for var in [
            "TRUEUP_LOG",
            "TRUEUP_CONFIG",
            "TRUEUP_SOURCE",
            "TRUEUP_BRANCH",
            "TRUEUP_ROOT",
            "TRUEUP_STATE_DIR",
            "TRUEUP_LOCK",
            "GIT_SSL_CAINFO",
            "GIT_SSL_CAPATH",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "CURL_CA_BUNDLE",
            "GIT_SSH_COMMAND",
            "SSH_AUTH_SOCK",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    pub fn run(&self, source: &str, args: &[&str]) -> Run {
        Run::from(self.command(source, args).output().unwrap())
    }

    /// Starts `trueup` without waiting (for concurrent runs).
    pub fn spawn(&self, source: &str, args: &[&str]) -> Child {
        self.command(source, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn apply(&self, source: &str) -> Run {
        self.run(source, &["apply", "--format", "json"])
    }

    pub fn check(&self, source: &str) -> Run {
        self.run(source, &["check", "--format", "json"])
    }

    /// state.json, parsed.
    pub fn state_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state.path().join("state.json"))
            .unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap()
    }

    pub fn applied_commit(&self) -> Option<String> {
        self.state_json()["applied_commit"]
            .as_str()
            .map(str::to_string)
    }

    pub fn notes_ref(&self) -> String {
        format!("refs/notes/trueup/{}", self.name)
    }
}

/// How many notes commits `reference` has in the bare repository `bare`
/// (0 when the ref does not exist).
pub fn notes_commits(bare: &Path, reference: &str) -> usize {
    let out = Command::new("git")
        .current_dir(bare)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["rev-list", "--count", reference, "--"])
        .output()
        .unwrap();
    if !out.status.success() {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Asserts a note is "summary line, blank line, JSON report" and returns
/// (summary, report).
pub fn split_note(note: &str) -> (String, serde_json::Value) {
    let (summary, rest) = note
        .split_once('\n')
        .unwrap_or_else(|| panic!("note without a newline: {note:?}"));
    let json = rest
        .strip_prefix('\n')
        .unwrap_or_else(|| panic!("no blank line after the summary: {note:?}"));
    let report: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the note's report is not JSON ({e}): {note:?}"));
    (summary.to_string(), report)
}

/// Asserts `report` follows docs/report.schema.json.
pub fn assert_schema(report: &serde_json::Value) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json"),
    )
    .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{report:#}");
}
