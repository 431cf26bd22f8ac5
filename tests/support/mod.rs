//! Small helpers for driving the real `trueup` binary in integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The binary cargo built for this test run.
pub fn trueup_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trueup"))
}

/// A scratch host: a root to converge and a state directory.
pub struct Host {
    pub root: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

impl Host {
    pub fn new() -> Host {
        Host {
            root: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    /// Runs `trueup --source SRC --root R --state-dir S ARGS...`.
    pub fn run(&self, source: &Path, args: &[&str]) -> Run {
        let out = Command::new(trueup_bin())
            .arg("--source")
            .arg(source)
            .arg("--root")
            .arg(self.root.path())
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .env_remove("TRUEUP_LOG")
            .output()
            .unwrap();
        Run::from(out)
    }

    /// `check --format json`, parsed.
    pub fn check_json(&self, source: &Path) -> (i32, serde_json::Value) {
        let r = self.run(source, &["check", "--format", "json"]);
        (r.code, r.json())
    }

    pub fn apply_json(&self, source: &Path) -> (i32, serde_json::Value) {
        let r = self.run(source, &["apply", "--format", "json"]);
        (r.code, r.json())
    }
}

/// A finished process.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The report's first error (status error or refused).
    pub fn first_error(&self) -> String {
        self.json()["errors"][0].as_str().unwrap_or("").to_string()
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Every node under `dir` with its kind, mode, owner and content digest, so
/// two snapshots compare equal only if nothing at all changed.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let desc = if meta.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else if meta.is_dir() {
            format!("dir {:o} {}:{}", meta.mode(), meta.uid(), meta.gid())
        } else {
            let digest = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
            format!(
                "file {:o} {}:{} {digest}",
                meta.mode(),
                meta.uid(),
                meta.gid()
            )
        };
        out.insert(rel, desc);
        if meta.is_dir() && !meta.file_type().is_symlink() {
            walk(base, &p, out);
        }
    }
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The demo host branch shipped in examples/.
pub fn demo_branch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo")
}

/// A copy of the demo branch that a test may edit.
pub fn demo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&demo_branch(), dir.path());
    dir
}

/// Writes `content` at `rel` under `dir`, creating parents.
pub fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// (kind, resource, [attributes]) of every reported resource.
pub fn drifted(report: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let attrs = r["drift"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|x| x["attribute"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            (
                r["kind"].as_str().unwrap().to_string(),
                r["resource"].as_str().unwrap().to_string(),
                attrs,
            )
        })
        .collect()
}
