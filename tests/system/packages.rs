//! What the packaging tests share: the built `.deb` and `.rpm` (made by
//! `scripts/package.sh`, which `scripts/test.sh` runs first), a signed flat
//! apt repository, the example cloud-init user-data with its values
//! replaced, and a timings file that `scripts/test.sh` prints.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::AptRepo;

/// The cargo target directory this test binary was built in.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// The newest file in `dir` whose name starts with `prefix` and ends with
/// `suffix`; panics saying how to build it when there is none.
fn newest(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => p,
        None => panic!(
            "no {prefix}*{suffix} in {}: build the packages first with \
             scripts/package.sh (scripts/test.sh does that before cargo test)",
            dir.display()
        ),
    }
}

/// `target/debian/trueup_VERSION-*_ARCH.deb`, built by cargo-deb.
pub fn built_deb() -> PathBuf {
    newest(
        &target_dir().join("debian"),
        &format!("trueup_{}-", env!("CARGO_PKG_VERSION")),
        ".deb",
    )
}

/// `target/generate-rpm/trueup-VERSION-*.rpm`, built by cargo-generate-rpm.
pub fn built_rpm() -> PathBuf {
    newest(
        &target_dir().join("generate-rpm"),
        &format!("trueup-{}-", env!("CARGO_PKG_VERSION")),
        ".rpm",
    )
}

/// Prints one timing line and appends it to `target/tmp/system-timings.txt`,
/// which `scripts/test.sh` prints after the tests (cargo captures stderr of
/// passing tests).
pub fn record_timing(what: &str, took: Duration) {
    let line = format!("[timing] {what}: {:.1}s", took.as_secs_f64());
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("system-timings.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Runs a host command; panics with its output unless it succeeds. Returns
/// stdout.
#[track_caller]
pub fn host_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OpenPGP key in its own GnuPG home that signs a flat apt repository
/// (`Release`, `InRelease`), as a real trueup repository is signed.
pub struct AptSigner {
    home: tempfile::TempDir,
}

impl AptSigner {
    pub fn new() -> AptSigner {
        // A short path: gpg-agent's socket lives in the home.
        let home = tempfile::Builder::new()
            .prefix("gpg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let signer = AptSigner { home };
        host_ok(signer.gpg().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "trueup test apt repository <apt@trueup.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        signer
    }

    fn gpg(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir").arg(self.home.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ]);
        cmd
    }

    /// The public key, ASCII-armored (what `/etc/apt/keyrings/*.asc` holds).
    pub fn public_key_armored(&self) -> String {
        host_ok(self.gpg().args(["--armor", "--export"]))
    }

    /// Indexes `repo` and writes `Release` (SHA256 of `Packages`) and a
    /// clear-signed `InRelease`.
    pub fn sign(&self, repo: &AptRepo) {
        use sha2::{Digest, Sha256};
        repo.index();
        let dir = repo.dir();
        let packages = fs::read(dir.join("Packages")).expect("read Packages");
        let date = host_ok(Command::new("date").args(["-u", "-R"]));
        let release = format!(
            "Origin: trueup tests\nLabel: trueup tests\nDate: {}\nSHA256:\n {} {} Packages\n",
            date.trim(),
            hex::encode(Sha256::digest(&packages)),
            packages.len()
        );
        fs::write(dir.join("Release"), release).expect("write Release");
        let _ = fs::remove_file(dir.join("InRelease"));
        host_ok(
            self.gpg()
                .arg("--clearsign")
                .arg("--output")
                .arg(dir.join("InRelease"))
                .arg(dir.join("Release")),
        );
    }
}

impl Drop for AptSigner {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// Replaces the one occurrence of `placeholder` in `text`; panics if it
/// occurs zero or several times (the example changed: update the test).
#[track_caller]
pub fn replace_once(text: &str, placeholder: &str, value: &str) -> String {
    let n = text.matches(placeholder).count();
    assert_eq!(
        n, 1,
        "expected exactly one {placeholder:?} in the example user-data, found {n}"
    );
    text.replacen(placeholder, value, 1)
}

/// Replaces the indented block of lines from the line holding `first` to
/// the line holding `last` (inclusive) with `value`'s lines, indented like
/// `first`'s line: how a key or certificate inside a YAML block scalar is
/// swapped for the real one.
#[track_caller]
pub fn replace_block(text: &str, first: &str, last: &str, value: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == first)
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "expected exactly one line {first:?} in the example user-data"
    );
    let start = starts[0];
    let end = (start..lines.len())
        .find(|&i| lines[i].trim() == last)
        .unwrap_or_else(|| panic!("no line {last:?} after {first:?}"));
    let indent: String = lines[start]
        .chars()
        .take_while(|c| c.is_whitespace())
        .collect();
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.extend(value.trim_end().lines().map(|l| format!("{indent}{l}")));
    out.extend(lines[end + 1..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}
