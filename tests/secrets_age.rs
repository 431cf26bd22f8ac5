//! Age-encrypted secrets (issue 17), driven through the real binary with
//! host keys made by `ssh-keygen -t ed25519` and secrets made by Debian's
//! `age` tool (`age -R host.pub`), so trueup is shown to read what the
//! standard tool writes.
//!
//! - a secret encrypted to host A applies on A (exact content, mode 0600);
//!   host B, given the same branch, fails those files alone, naming the
//!   file and the reason, and applies everything else;
//! - `{{secret "name"}}` in a template renders on the right host and its
//!   file is reported as secret;
//! - no plaintext reaches output, logs, last-run.json, the state
//!   directory, `render`, `validate`, a Git note, or a backup readable by
//!   others;
//! - `trueup secrets encrypt|rekey|recipients` work from fleet.yaml.

mod common;
mod gitsupport;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::gitserver::{TestRepo, git};
use gitsupport::GitHost;
use tempfile::TempDir;

const DB_PASSWORD: &str = "AGE-PLAIN-db-7c41e9";
const API_TOKEN: &str = "AGE-PLAIN-api-0b2d55";
const OLD: &str = "AGE-PLAIN-old-93aa10";
/// What every plaintext above shares: no output may hold it.
const MARK: &str = "AGE-PLAIN";

/// An ed25519 key pair made by ssh-keygen: (private key path, public line).
fn host_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("root@{name}"),
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

/// Encrypts with Debian's `age` to the public keys in `recipients_file`.
fn age_encrypt(recipients_file: &Path, plaintext: &str, armor: bool) -> Vec<u8> {
    let mut cmd = Command::new("age");
    if armor {
        cmd.arg("-a");
    }
    let mut child = cmd
        .arg("-R")
        .arg(recipients_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Debian's age is installed (scripts/install-test-deps.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plaintext.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "age: {out:?}");
    out.stdout
}

/// Keys for hosts A and B, and a branch with secrets for A only.
struct Fixture {
    keys: TempDir,
    a_key: PathBuf,
    b_key: PathBuf,
    branch: TempDir,
}

fn fixture() -> Fixture {
    let keys = TempDir::new().unwrap();
    let (a_key, a_pub) = host_key(keys.path(), "host-a");
    let (b_key, _) = host_key(keys.path(), "host-b");
    let a_recipients = keys.path().join("a.recipients");
    std::fs::write(&a_recipients, format!("{a_pub}\n")).unwrap();
    let branch = TempDir::new().unwrap();
    let b = branch.path();
    std::fs::create_dir_all(b.join("secrets")).unwrap();
    // Binary, found by its suffix; armoured, declared `encrypted: age`.
    std::fs::write(
        b.join("secrets/db.password.age"),
        age_encrypt(&a_recipients, &format!("{DB_PASSWORD}\n"), false),
    )
    .unwrap();
    std::fs::write(
        b.join("secrets/api.token"),
        age_encrypt(&a_recipients, API_TOKEN, true),
    )
    .unwrap();
    std::fs::write(
        b.join("secrets/token.age"),
        age_encrypt(&a_recipients, API_TOKEN, false),
    )
    .unwrap();
    std::fs::write(
        b.join("db.conf.hbs"),
        "host = db.{{facts.hostname}}\npassword = {{secret \"token\"}}\n",
    )
    .unwrap();
    std::fs::write(
        b.join("trueup.yaml"),
        "files:\n  /etc/app/db.password:\n    source: secrets/db.password.age\n  /etc/app/api.token:\n    source: secrets/api.token\n    encrypted: age\n    mode: \"0640\"\n  /etc/app/db.conf:\n    template: db.conf.hbs\n  /etc/motd:\n    content: \"plain text for everyone\\n\"\n",
    )
    .unwrap();
    Fixture {
        keys,
        a_key,
        b_key,
        branch,
    }
}

fn host_with_key(name: &str, key: &Path) -> GitHost {
    let host = GitHost::new(name);
    host.configure(&format!("secrets:\n  identity: {}\n", key.display()));
    host
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(MARK),
        "{what} shows a plaintext secret:\n{text}"
    );
}

fn resource<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the report: {report:#}"))
}

#[test]
fn a_secret_for_host_a_applies_on_a_and_fails_alone_on_b() {
    let f = fixture();
    let src = f.branch.path().to_str().unwrap();

    let a = host_with_key("host-a", &f.a_key);
    let r = a.apply(src);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        a.read("/etc/app/db.password").as_deref(),
        Some(format!("{DB_PASSWORD}\n").as_str())
    );
    assert_eq!(a.read("/etc/app/api.token").as_deref(), Some(API_TOKEN));
    assert_eq!(
        a.read("/etc/app/db.conf").as_deref(),
        Some(format!("host = db.host-a\npassword = {API_TOKEN}\n").as_str())
    );
    // 0600 unless the branch says otherwise.
    assert_eq!(mode(&a.path("/etc/app/db.password")), 0o600);
    assert_eq!(mode(&a.path("/etc/app/db.conf")), 0o600);
    assert_eq!(mode(&a.path("/etc/app/api.token")), 0o640);
    assert_eq!(mode(&a.path("/etc/motd")), 0o644);
    let report = r.json();
    // The template that used {{secret}} is reported as secret.
    let conf = resource(&report, "/etc/app/db.conf");
    assert!(
        conf["drift"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attribute"] != "content" || d["expected"] == "(secret)"),
        "{conf:#}"
    );
    // The host publishes the key its secrets are encrypted to.
    let a_pub = std::fs::read_to_string(f.a_key.with_extension("pub")).unwrap();
    let published = report["host_key"].as_str().expect("host_key is reported");
    assert!(a_pub.starts_with(published), "{published} / {a_pub}");
    // In sync afterwards: decrypting again gives the same bytes.
    let r = a.check(src);
    assert_eq!(r.code, 0, "{}", r.all());

    // Host B has the same branch and its own key.
    let b = host_with_key("host-b", &f.b_key);
    std::fs::create_dir_all(b.path("/etc/app")).unwrap();
    std::fs::write(b.path("/etc/app/db.password"), "left alone\n").unwrap();
    let r = b.apply(src);
    assert_eq!(r.code, 1, "{}", r.all());
    let report = r.json();
    assert_eq!(report["status"], "failed", "{report:#}");
    for (file, source) in [
        ("/etc/app/db.password", "secrets/db.password.age"),
        ("/etc/app/api.token", "secrets/api.token"),
        ("/etc/app/db.conf", "secrets/token.age"),
    ] {
        let res = resource(&report, file);
        assert_eq!(res["status"], "failed", "{res:#}");
        let error = res["error"].as_str().unwrap_or("");
        assert!(
            error.contains(source) && error.contains("not a recipient"),
            "{file}: {error}"
        );
    }
    // Everything else applied; the undecryptable file was not touched.
    assert_eq!(
        b.read("/etc/motd").as_deref(),
        Some("plain text for everyone\n")
    );
    assert_eq!(
        b.read("/etc/app/db.password").as_deref(),
        Some("left alone\n")
    );
    assert!(b.read("/etc/app/api.token").is_none());
    assert!(b.read("/etc/app/db.conf").is_none());
    assert_clean("host B's run", &r.all());
}

#[test]
fn a_host_key_that_cannot_be_read_fails_the_secrets_only() {
    let f = fixture();
    let host = host_with_key("host-a", &f.keys.path().join("missing-key"));
    let r = host.apply(f.branch.path().to_str().unwrap());
    assert_eq!(r.code, 1, "{}", r.all());
    let report = r.json();
    let error = resource(&report, "/etc/app/db.password")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("missing-key") && error.contains("secrets/db.password.age"),
        "{error}"
    );
    assert!(report.get("host_key").is_none(), "{report:#}");
    assert_eq!(
        host.read("/etc/motd").as_deref(),
        Some("plain text for everyone\n")
    );
}

/// Every file under `dir`: (path, content).
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
                out.push((p, text));
            }
        }
    }
    out
}

#[test]
fn no_plaintext_in_output_logs_reports_render_notes_or_open_backups() {
    let f = fixture();
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    // The branch, committed as it is (binary age files included).
    copy_dir(f.branch.path(), &repo.work);
    let commit = repo.commit(&[], "secrets for host-a");
    repo.push("hosts/host-a");
    let url = format!("file://{}", repo.bare.display());

    let a = host_with_key("host-a", &f.a_key);
    // Old content to replace: it is backed up, readable by root only.
    std::fs::create_dir_all(a.path("/etc/app")).unwrap();
    std::fs::write(a.path("/etc/app/db.password"), format!("{OLD}\n")).unwrap();
    std::fs::write(a.path("/etc/app/db.conf"), format!("{OLD}\n")).unwrap();
    for args in [
        &["check", "--format", "json"][..],
        &["check"],
        &["apply", "--dry-run"],
        &["apply", "--format", "json"],
        &["apply"],
        &["status"],
    ] {
        let mut cmd = a.command(&url, args);
        cmd.env("TRUEUP_LOG", "trace");
        let out = cmd.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("panicked"), "{args:?}: {all}");
        assert_clean(&format!("{args:?}"), &all);
    }
    assert_eq!(
        a.read("/etc/app/db.password").as_deref(),
        Some(format!("{DB_PASSWORD}\n").as_str())
    );

    // The note on the applied commit, and the whole notes history.
    let note = repo
        .note(&a.notes_ref(), &commit)
        .expect("the run is noted");
    assert!(
        note.contains("\"host_key\": \"ssh-ed25519 "),
        "the note publishes the host key: {note}"
    );
    let log = git(&repo.bare, &["log", "-p", &a.notes_ref()]);
    // The run that wrote the secrets is in the history, without them.
    assert!(log.contains("/etc/app/db.password"), "{log}");
    assert_clean("the notes history", &log);

    // The state directory: clean, except backups, which are root's alone.
    let backup = a.state.path().join("backup");
    let mut backups = 0;
    for (path, text) in files_under(a.state.path()) {
        assert_clean("a file name", &path.display().to_string());
        if path.starts_with(&backup) {
            backups += 1;
            assert_eq!(mode(&path), 0o600, "backup {}", path.display());
            // The run's backup directory shuts out everyone but root.
            let rel = path.strip_prefix(&backup).unwrap();
            let run_dir = backup.join(rel.components().next().unwrap());
            assert_eq!(mode(&run_dir), 0o700, "{}", run_dir.display());
            continue;
        }
        if path.starts_with(a.state.path().join("repo.git")) {
            // The cache holds the ciphertext, as the repository does.
            continue;
        }
        assert_clean(&path.display().to_string(), &text);
    }
    assert!(backups >= 2, "the replaced files were kept ({backups})");

    // `render` and `validate` of the branch: no key is used, nothing shown.
    for cmd in ["render", "validate"] {
        for format in ["text", "json"] {
            let r = a.run(
                &url,
                &["--format", format, cmd, f.branch.path().to_str().unwrap()],
            );
            assert_eq!(r.code, 0, "{cmd}: {}", r.all());
            assert_clean(cmd, &r.all());
        }
    }
    // The checks above can fail: the plaintext is really on disk.
    assert!(a.read("/etc/app/db.conf").unwrap().contains(MARK));
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// Runs `trueup ARGS` in no host's context (an admin's machine).
fn admin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trueup"));
    cmd.arg("--config")
        .arg("/nonexistent/trueup/agent.yaml")
        .args(args)
        .env_remove("TRUEUP_SOURCE")
        .env_remove("TRUEUP_SECRETS_IDENTITY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An admin's age identity made by Debian's age-keygen: (file, age1...).
fn admin_key(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("admin.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen runs");
    assert!(out.status.success(), "age-keygen: {out:?}");
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// Decrypts with Debian's age and an identity file.
fn age_decrypt(identity: &Path, file: &Path) -> Option<String> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Fleet {
    keys: TempDir,
    checkout: TempDir,
    admin: PathBuf,
    admin_pub: String,
    pubs: std::collections::BTreeMap<&'static str, String>,
}

impl Fleet {
    fn new() -> Fleet {
        let keys = TempDir::new().unwrap();
        let (admin, admin_pub) = admin_key(keys.path());
        let mut pubs = std::collections::BTreeMap::new();
        for h in ["web1", "web2", "web3", "db1"] {
            pubs.insert(h, host_key(keys.path(), h).1);
        }
        let checkout = TempDir::new().unwrap();
        std::fs::create_dir_all(checkout.path().join("secrets")).unwrap();
        Fleet {
            keys,
            checkout,
            admin,
            admin_pub,
            pubs,
        }
    }

    /// fleet.yaml with web3 in `web3_groups`.
    fn write_fleet(&self, web3_groups: &str) {
        let yaml = format!(
            "hosts:\n  web1: {{ groups: [web], ssh_key: \"{}\" }}\n  web2: {{ groups: [web], ssh_key: \"{}\" }}\n  web3: {{ groups: {web3_groups}, ssh_key: \"{}\" }}\n  db1: {{ groups: [db], ssh_key: \"{}\" }}\nsecrets:\n  admins: [\"{}\"]\n  files:\n    secrets/web.age: [web]\n    secrets/db.age: [db]\n    secrets/all.age: [web, db1]\n",
            self.pubs["web1"],
            self.pubs["web2"],
            self.pubs["web3"],
            self.pubs["db1"],
            self.admin_pub
        );
        std::fs::write(self.checkout.path().join("fleet.yaml"), yaml).unwrap();
    }

    fn dir(&self) -> &str {
        self.checkout.path().to_str().unwrap()
    }

    fn bytes(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.checkout.path().join(file)).unwrap()
    }

    fn host_can_read(&self, host: &str, file: &str) -> Option<String> {
        age_decrypt(
            &self.keys.path().join(host),
            &self.checkout.path().join(file),
        )
    }
}

#[test]
fn rekey_after_a_host_joins_a_group_rewrites_only_that_groups_secrets() {
    let f = Fleet::new();
    f.write_fleet("[]");
    for (file, text) in [
        ("secrets/web.age", "AGE-PLAIN-web"),
        ("secrets/db.age", "AGE-PLAIN-db"),
        ("secrets/all.age", "AGE-PLAIN-all"),
    ] {
        let (code, out, err) = admin(&["secrets", "encrypt", "--dir", f.dir(), file], Some(text));
        assert_eq!(code, 0, "{out}{err}");
        assert_clean("encrypt", &format!("{out}{err}"));
    }
    // Debian's age reads what trueup wrote, with each host's own key.
    assert_eq!(
        f.host_can_read("web1", "secrets/web.age").as_deref(),
        Some("AGE-PLAIN-web")
    );
    assert_eq!(
        f.host_can_read("db1", "secrets/all.age").as_deref(),
        Some("AGE-PLAIN-all")
    );
    assert_eq!(f.host_can_read("db1", "secrets/web.age"), None);
    assert_eq!(f.host_can_read("web3", "secrets/web.age"), None);
    assert_eq!(
        age_decrypt(&f.admin, &f.checkout.path().join("secrets/db.age")).as_deref(),
        Some("AGE-PLAIN-db")
    );
    let record: serde_json::Value =
        serde_json::from_slice(&f.bytes("secrets/recipients.json")).unwrap();
    assert_eq!(
        record["secrets/web.age"]["hosts"],
        serde_json::json!(["web1", "web2"])
    );

    let before: Vec<Vec<u8>> = ["secrets/web.age", "secrets/db.age", "secrets/all.age"]
        .iter()
        .map(|p| f.bytes(p))
        .collect();
    let admin_key = f.admin.to_str().unwrap();
    // Nothing changed: nothing is rewritten.
    let (code, out, err) = admin(
        &[
            "secrets",
            "rekey",
            "--dir",
            f.dir(),
            "--identity",
            admin_key,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(": unchanged").count(), 3, "{out}");
    assert_eq!(f.bytes("secrets/web.age"), before[0]);

    // web3 joins the web group.
    f.write_fleet("[web]");
    let (code, out, err) = admin(
        &[
            "secrets",
            "rekey",
            "--dir",
            f.dir(),
            "--identity",
            admin_key,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_clean("rekey", &format!("{out}{err}"));
    assert!(
        out.contains("secrets/web.age: re-encrypted (+web3)"),
        "{out}"
    );
    assert!(
        out.contains("secrets/all.age: re-encrypted (+web3)"),
        "{out}"
    );
    assert!(out.contains("secrets/db.age: unchanged"), "{out}");
    assert_ne!(f.bytes("secrets/web.age"), before[0]);
    assert_eq!(f.bytes("secrets/db.age"), before[1], "db.age was rewritten");
    assert_ne!(f.bytes("secrets/all.age"), before[2]);
    assert_eq!(
        f.host_can_read("web3", "secrets/web.age").as_deref(),
        Some("AGE-PLAIN-web")
    );
    assert_eq!(
        f.host_can_read("web1", "secrets/web.age").as_deref(),
        Some("AGE-PLAIN-web")
    );
    assert_eq!(f.host_can_read("web3", "secrets/db.age"), None);
    let record: serde_json::Value =
        serde_json::from_slice(&f.bytes("secrets/recipients.json")).unwrap();
    assert_eq!(
        record["secrets/web.age"]["hosts"],
        serde_json::json!(["web1", "web2", "web3"])
    );
    assert_clean(
        "the recipients record",
        &String::from_utf8_lossy(&f.bytes("secrets/recipients.json")),
    );
}

#[test]
fn encrypt_refuses_unpinned_hosts_and_a_target_fleet_yaml_contradicts() {
    let f = Fleet::new();
    f.write_fleet("[]");
    let yaml = std::fs::read_to_string(f.checkout.path().join("fleet.yaml"))
        .unwrap()
        .replace(
            "  db1: { groups: [db], ssh_key:",
            "  db2: { groups: [db] }\n  db1: { groups: [db], ssh_key:",
        );
    std::fs::write(f.checkout.path().join("fleet.yaml"), yaml).unwrap();
    let (code, _, err) = admin(
        &["secrets", "encrypt", "--dir", f.dir(), "secrets/db.age"],
        Some("AGE-PLAIN-x"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("'db2' has no ssh_key pinned"), "{err}");
    let (code, _, err) = admin(
        &[
            "secrets",
            "encrypt",
            "--dir",
            f.dir(),
            "--to",
            "web1",
            "secrets/web.age",
        ],
        Some("AGE-PLAIN-x"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fleet.yaml secrets.files gives secrets/web.age to web1, web2"),
        "{err}"
    );
    let (code, _, err) = admin(
        &[
            "secrets",
            "encrypt",
            "--dir",
            f.dir(),
            "--to",
            "nobody",
            "secrets/x.age",
        ],
        Some("AGE-PLAIN-x"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("'nobody' is neither a host nor a group"),
        "{err}"
    );
    // Not listed in secrets.files: written, with a warning.
    let (code, _, err) = admin(
        &[
            "secrets",
            "encrypt",
            "--dir",
            f.dir(),
            "--to",
            "web1",
            "secrets/x.age",
        ],
        Some("AGE-PLAIN-x"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not in fleet.yaml secrets.files"), "{err}");
    assert_eq!(
        f.host_can_read("web1", "secrets/x.age").as_deref(),
        Some("AGE-PLAIN-x")
    );
    for bad in ["../outside.age", "/etc/x.age"] {
        let (code, _, err) = admin(
            &["secrets", "encrypt", "--dir", f.dir(), "--to", "web1", bad],
            Some("AGE-PLAIN-x"),
        );
        assert_eq!(code, 1, "{bad}: {err}");
    }
}

#[test]
fn edit_reencrypts_only_a_changed_secret() {
    let f = Fleet::new();
    f.write_fleet("[]");
    let (code, _, err) = admin(
        &["secrets", "encrypt", "--dir", f.dir(), "secrets/db.age"],
        Some("AGE-PLAIN-before\n"),
    );
    assert_eq!(code, 0, "{err}");
    let before = f.bytes("secrets/db.age");
    let admin_key = f.admin.to_str().unwrap();
    let run_edit = |editor: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_trueup"))
            .args(["--config", "/nonexistent/agent.yaml", "secrets", "edit"])
            .args(["--dir", f.dir(), "--identity", admin_key, "secrets/db.age"])
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{all}");
        assert_clean("edit", &all);
        all
    };
    let out = run_edit("true");
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(f.bytes("secrets/db.age"), before);
    let script = f.keys.path().join("editor.sh");
    std::fs::write(&script, "#!/bin/sh\nsed -i s/before/after/ \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_edit(script.to_str().unwrap());
    assert!(out.contains("re-encrypted"), "{out}");
    assert_eq!(
        f.host_can_read("db1", "secrets/db.age").as_deref(),
        Some("AGE-PLAIN-after\n")
    );
    assert_eq!(f.host_can_read("web1", "secrets/db.age"), None);
    // Without an identity: a clear error.
    let (code, _, err) = admin(
        &["secrets", "edit", "--dir", f.dir(), "secrets/db.age"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no admin identity"), "{err}");
}

#[test]
fn recipients_shows_reported_keys_beside_pinned_ones_and_flags_a_difference() {
    let f = fixture();
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    repo.commit(
        &[(
            "trueup.yaml",
            "files:\n  /etc/motd:\n    content: \"hi\\n\"\n",
        )],
        "motd",
    );
    repo.push("hosts/host-a");
    repo.push("hosts/host-b");
    let url = format!("file://{}", repo.bare.display());
    for (name, key) in [("host-a", &f.a_key), ("host-b", &f.b_key)] {
        let r = host_with_key(name, key).apply(&url);
        assert_eq!(r.code, 0, "{}", r.all());
    }
    let a_pub = std::fs::read_to_string(f.a_key.with_extension("pub")).unwrap();
    let checkout = TempDir::new().unwrap();
    // host-b's pinned key is host-a's: the review must catch it.
    std::fs::write(
        checkout.path().join("fleet.yaml"),
        format!(
            "hosts:\n  host-a: {{ ssh_key: \"{}\" }}\n  host-b: {{ ssh_key: \"{}\" }}\n  host-c: {{}}\n",
            a_pub.trim(),
            a_pub.trim()
        ),
    )
    .unwrap();
    let dir = checkout.path().to_str().unwrap();
    let (code, out, err) = admin(
        &["--source", &url, "secrets", "recipients", "--dir", dir],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    let line = |host: &str| {
        out.lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("{host} missing:\n{out}"))
            .to_string()
    };
    assert!(line("host-a").ends_with("same"), "{out}");
    assert!(line("host-b").ends_with("DIFFERS"), "{out}");
    assert!(line("host-c").ends_with("not reported"), "{out}");
    let (code, out, err) = admin(
        &[
            "--source",
            &url,
            "--format",
            "json",
            "secrets",
            "recipients",
            "--dir",
            dir,
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b_pub = std::fs::read_to_string(f.b_key.with_extension("pub")).unwrap();
    assert_eq!(rows[1]["host"], "host-b");
    assert_eq!(rows[1]["state"], "differs");
    assert!(
        b_pub.starts_with(rows[1]["reported"].as_str().unwrap()),
        "{rows:#}"
    );
}

#[test]
fn a_malformed_secret_fails_validate_but_only_its_file_on_a_host() {
    let f = fixture();
    std::fs::write(
        f.branch.path().join("secrets/db.password.age"),
        "plain text committed by mistake\n",
    )
    .unwrap();
    let host = host_with_key("host-a", &f.a_key);
    let src = f.branch.path().to_str().unwrap();
    // validate (CI, no key): the branch is wrong for every host.
    let r = host.run(src, &["validate", src]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all()
            .contains("source 'secrets/db.password.age': bad format: not an age-encrypted file"),
        "{}",
        r.all()
    );
    // On the host: that file fails, named with the reason; the rest applies.
    let r = host.apply(src);
    assert_eq!(r.code, 1, "{}", r.all());
    let report = r.json();
    let error = resource(&report, "/etc/app/db.password")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("cannot decrypt secrets/db.password.age: bad format"),
        "{error}"
    );
    assert_eq!(host.read("/etc/app/api.token").as_deref(), Some(API_TOKEN));
}

#[test]
fn a_refused_commit_still_reports_the_host_key() {
    let f = fixture();
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let commit = repo.commit(&[("trueup.yaml", "files: {}\n")], "unsigned");
    repo.push("hosts/host-a");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("host-a");
    // Commits must be signed by host-b's key: this unsigned one is refused.
    let b_pub = std::fs::read_to_string(f.b_key.with_extension("pub")).unwrap();
    let signers = f.keys.path().join("allowed_signers");
    std::fs::write(&signers, format!("ops@example.com {}\n", b_pub.trim())).unwrap();
    host.configure(&format!(
        "secrets:\n  identity: {}\ntrust:\n  allowed_signers: {}\n",
        f.a_key.display(),
        signers.display()
    ));
    let r = host.check(&url);
    let report = r.json();
    assert_eq!(report["status"], "refused", "{report:#}");
    let a_pub = std::fs::read_to_string(f.a_key.with_extension("pub")).unwrap();
    let key = report["host_key"]
        .as_str()
        .expect("host_key in a refused report");
    assert!(a_pub.starts_with(key), "{key}");
    let note = repo
        .note(&host.notes_ref(), &commit)
        .expect("the refusal is noted");
    assert!(note.contains(key), "{note}");
}
