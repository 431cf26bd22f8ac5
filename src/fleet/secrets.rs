//! `trueup secrets`: the admin's side of age secrets, in a checkout of the
//! fleet repository.
//!
//! - `recipients` lists each host's SSH host key as the host reports it
//!   (notes tips) beside the key `fleet.yaml` pins, and flags a difference.
//!   Only pinned keys are ever encrypted to: a host with push access could
//!   publish a false key in its notes.
//! - `encrypt --to HOST|GROUP... FILE` encrypts to those hosts' pinned keys
//!   plus `secrets.admins`.
//! - `rekey` re-encrypts only the files of `secrets.files` whose recipient
//!   set changed, so a new host does not rewrite every secret.
//! - `edit FILE` decrypts with an admin identity, opens `$EDITOR`, and
//!   re-encrypts only when the text changed.
//!
//! age stanzas do not say whom a file was encrypted to, so every file
//! written here is recorded in `secrets/recipients.json` (hosts and
//! public keys, nothing secret): `rekey` compares against it, and a pull
//! request shows who a secret now goes to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::fleet::config::{FleetConfig, read_fleet_config};
use crate::report::notes::parse_note;
use crate::secrets::{AdminIdentity, encrypt as age_encrypt, normalize_recipient};
use crate::source::RepoPath;

/// The record of whom each secret is encrypted to, in the checkout.
pub const RECORD_FILE: &str = "secrets/recipients.json";

/// One secret's recipients, as last written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    /// The hosts it is for (groups resolved).
    pub hosts: Vec<String>,
    /// Every public key it is encrypted to, canonical and sorted (hosts'
    /// pinned keys and the admins').
    pub recipients: Vec<String>,
}

/// `secrets/recipients.json`: repository path → recipients.
pub type Record = BTreeMap<String, RecordEntry>;

/// A fleet checkout: its directory and `fleet.yaml`.
pub struct Checkout {
    pub dir: PathBuf,
    pub config: FleetConfig,
}

impl Checkout {
    pub fn open(dir: &Path) -> Result<Checkout> {
        let config = read_fleet_config(dir).map_err(|e| anyhow!("{e}"))?;
        Ok(Checkout {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The hosts `targets` name and the canonical recipients for them:
    /// their pinned keys plus the admins'.
    pub fn recipients_for<S: AsRef<str>>(&self, targets: &[S]) -> Result<RecordEntry> {
        let hosts = self
            .config
            .resolve_targets(targets)
            .map_err(|e| anyhow!("{e}"))?;
        let mut recipients = BTreeSet::new();
        for host in &hosts {
            let key = self.config.hosts[host].ssh_key.as_deref().ok_or_else(|| {
                anyhow!(
                    "host '{host}' has no ssh_key pinned in fleet.yaml: compare `trueup secrets recipients` with the host itself, then pin it"
                )
            })?;
            recipients.insert(
                normalize_recipient(key).map_err(|e| anyhow!("fleet.yaml: host '{host}': {e}"))?,
            );
        }
        for admin in &self.config.secrets.admins {
            recipients.insert(normalize_recipient(admin).map_err(|e| anyhow!("fleet.yaml: {e}"))?);
        }
        Ok(RecordEntry {
            hosts: hosts.into_iter().collect(),
            recipients: recipients.into_iter().collect(),
        })
    }

    pub fn read_record(&self) -> Result<Record> {
        let path = self.dir.join(RECORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write_record(&self, record: &Record) -> Result<()> {
        let mut text = serde_json::to_string_pretty(record)?;
        text.push('\n');
        self.write(RECORD_FILE, text.as_bytes())
    }

    /// Writes a file of the checkout atomically, never through a symlink.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let rel = repo_path(rel)?;
        let target = Path::new("/").join(rel.as_str());
        let entry = crate::safe_fs::Entry::open(&self.dir, &target, true)
            .with_context(|| format!("writing {rel}"))?
            .ok_or_else(|| anyhow!("writing {rel}: its directory is missing"))?;
        entry
            .write_atomic(bytes, None, None, 0o644)
            .with_context(|| format!("writing {rel}"))
    }

    pub fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let rel = repo_path(rel)?;
        let target = Path::new("/").join(rel.as_str());
        let entry = crate::safe_fs::Entry::open(&self.dir, &target, false)
            .with_context(|| format!("reading {rel}"))?
            .ok_or_else(|| anyhow!("{rel} does not exist"))?;
        entry
            .read(crate::source::MAX_TREE_FILE)
            .with_context(|| format!("reading {rel}"))
    }

    /// The targets `secrets.files` lists for `file`, if any.
    fn listed(&self, file: &str) -> Option<&Vec<String>> {
        self.config.secrets.files.get(file)
    }
}

fn repo_path(rel: &str) -> Result<RepoPath> {
    RepoPath::parse(rel).map_err(|m| anyhow!("'{rel}': {m}"))
}

/// What `encrypt` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    pub file: String,
    pub entry: RecordEntry,
    /// The file is not in `secrets.files`: rekey will not keep it current.
    pub unlisted: bool,
}

/// `trueup secrets encrypt`: encrypts `plaintext` into `file` for `to`
/// (hosts or groups; the `secrets.files` entry when empty).
pub fn encrypt(
    checkout: &Checkout,
    to: &[String],
    plaintext: &[u8],
    file: &str,
) -> Result<Encrypted> {
    let listed = checkout.listed(file);
    let entry = match (to.is_empty(), listed) {
        (true, Some(targets)) => checkout.recipients_for(targets)?,
        (true, None) => bail!(
            "{file} is not in fleet.yaml secrets.files: say whom it is for with --to HOST|GROUP"
        ),
        (false, _) => checkout.recipients_for(to)?,
    };
    if let Some(targets) = listed {
        let manifest = checkout.recipients_for(targets)?;
        if manifest.hosts != entry.hosts {
            bail!(
                "fleet.yaml secrets.files gives {file} to {}, but --to names {}: change fleet.yaml, then run `trueup secrets rekey`",
                manifest.hosts.join(", "),
                entry.hosts.join(", ")
            );
        }
    }
    let sealed = age_encrypt(plaintext, &entry.recipients).map_err(|e| anyhow!("{file}: {e}"))?;
    checkout.write(file, &sealed)?;
    let mut record = checkout.read_record()?;
    record.insert(file.to_string(), entry.clone());
    checkout.write_record(&record)?;
    Ok(Encrypted {
        file: file.to_string(),
        entry,
        unlisted: listed.is_none(),
    })
}

/// One file's fate in a rekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rekeyed {
    Unchanged,
    /// Re-encrypted; the hosts that gained and lost it.
    Rewritten {
        added: Vec<String>,
        removed: Vec<String>,
    },
}

/// `trueup secrets rekey`: every file of `secrets.files` whose recipients
/// differ from the record is decrypted with `identity` and re-encrypted;
/// the others are not touched (their bytes stay as they are).
pub fn rekey(checkout: &Checkout, identity: &AdminIdentity) -> Result<Vec<(String, Rekeyed)>> {
    let mut record = checkout.read_record()?;
    let mut out = Vec::new();
    for (file, targets) in &checkout.config.secrets.files {
        let want = checkout.recipients_for(targets)?;
        let had = record.get(file);
        if had == Some(&want) {
            out.push((file.clone(), Rekeyed::Unchanged));
            continue;
        }
        let sealed = checkout.read(file)?;
        let plain = identity
            .decrypt(&sealed)
            .map_err(|e| anyhow!("cannot decrypt {file}: {e}"))?;
        let resealed = age_encrypt(&plain, &want.recipients).map_err(|e| anyhow!("{file}: {e}"))?;
        checkout.write(file, &resealed)?;
        let before: BTreeSet<&String> = had.map(|h| h.hosts.iter().collect()).unwrap_or_default();
        let after: BTreeSet<&String> = want.hosts.iter().collect();
        out.push((
            file.clone(),
            Rekeyed::Rewritten {
                added: after.difference(&before).map(|s| s.to_string()).collect(),
                removed: before.difference(&after).map(|s| s.to_string()).collect(),
            },
        ));
        record.insert(file.clone(), want);
        // Recorded after each file, so an error later leaves an accurate record.
        checkout.write_record(&record)?;
    }
    Ok(out)
}

/// `trueup secrets edit`: decrypts `file` into a private temporary file,
/// runs `editor` on it, and re-encrypts when the text changed (to the
/// `secrets.files` entry, or else the recipients last recorded). Returns
/// whether the file was rewritten.
pub fn edit(
    checkout: &Checkout,
    identity: &AdminIdentity,
    file: &str,
    editor: &str,
) -> Result<bool> {
    let sealed = checkout.read(file)?;
    let plain = identity
        .decrypt(&sealed)
        .map_err(|e| anyhow!("cannot decrypt {file}: {e}"))?;
    let entry = match checkout.listed(file) {
        Some(targets) => checkout.recipients_for(targets)?,
        None => checkout
            .read_record()?
            .get(file)
            .cloned()
            .ok_or_else(|| anyhow!("{file} is neither in fleet.yaml secrets.files nor in {RECORD_FILE}: whom is it for?"))?,
    };
    // A directory only this user can enter, removed on the way out.
    let tmp = tempfile::Builder::new()
        .prefix("trueup-secret-")
        .tempdir()
        .context("creating a private temporary directory")?;
    let path = tmp.path().join(
        Path::new(file)
            .file_stem()
            .map(|s| s.to_os_string())
            .unwrap_or_else(|| "secret".into()),
    );
    crate::safe_fs::write_own_file(&path, &plain, 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("running the editor '{editor}'"))?;
    if !status.success() {
        bail!("the editor '{editor}' failed ({status}); {file} is unchanged");
    }
    let edited = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if edited == plain {
        return Ok(false);
    }
    let resealed = age_encrypt(&edited, &entry.recipients).map_err(|e| anyhow!("{file}: {e}"))?;
    checkout.write(file, &resealed)?;
    let mut record = checkout.read_record()?;
    record.insert(file.to_string(), entry);
    checkout.write_record(&record)?;
    Ok(true)
}

/// How a host's reported key compares with its pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Reported and pinned, the same key.
    Same,
    /// Reported and pinned, different keys: check the host before trusting either.
    Differs,
    /// Reported, not pinned yet.
    NotPinned,
    /// Pinned; no report carries a key (yet).
    NotReported,
    /// A host that reports but is not in fleet.yaml.
    NotInFleet,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Same => "same",
            KeyState::Differs => "DIFFERS",
            KeyState::NotPinned => "not pinned",
            KeyState::NotReported => "not reported",
            KeyState::NotInFleet => "not in fleet.yaml",
        }
    }
}

/// One row of `trueup secrets recipients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientRow {
    pub host: String,
    pub pinned: Option<String>,
    pub reported: Option<String>,
    pub state: KeyState,
}

/// Pinned keys beside reported ones. `reported`: host → the key its
/// latest note carries (None when the note has none).
pub fn recipient_rows(
    config: &FleetConfig,
    reported: &BTreeMap<String, Option<String>>,
) -> Vec<RecipientRow> {
    let mut hosts: BTreeSet<&String> = config.hosts.keys().collect();
    hosts.extend(reported.keys());
    hosts
        .into_iter()
        .map(|host| {
            let pinned = config
                .hosts
                .get(host)
                .and_then(|h| h.ssh_key.as_deref())
                .map(|k| normalize_recipient(k).unwrap_or_else(|_| k.to_string()));
            let got = reported.get(host).cloned().flatten();
            let state = match (config.hosts.contains_key(host), &pinned, &got) {
                (false, _, _) => KeyState::NotInFleet,
                (true, Some(p), Some(r)) if p == r => KeyState::Same,
                (true, Some(_), Some(_)) => KeyState::Differs,
                (true, None, Some(_)) => KeyState::NotPinned,
                (true, _, None) => KeyState::NotReported,
            };
            RecipientRow {
                host: host.clone(),
                pinned,
                reported: got,
                state,
            }
        })
        .collect()
}

/// Each host's reported key from its latest note (notes tips only).
pub fn reported_keys(
    remote: &crate::source::remote::RemoteUrl,
    auth: &crate::config::Auth,
) -> Result<BTreeMap<String, Option<String>>> {
    let tips = crate::fleet::tips::read_tips(remote, auth, false)
        .with_context(|| format!("reading the hosts' notes from {}", remote.redacted()))?;
    Ok(tips
        .hosts
        .into_iter()
        .map(|t| {
            let key = t
                .latest
                .ok()
                .flatten()
                .and_then(|text| parse_note(&text).ok())
                .and_then(|(_, report)| report.host_key)
                // A key that is not a valid ed25519 key is shown as given.
                .map(|k| normalize_recipient(&k).unwrap_or(k));
            (t.host, key)
        })
        .collect())
}

/// The recipients table for people.
pub fn render_rows(rows: &[RecipientRow]) -> String {
    let mut out = String::new();
    let short = |k: &Option<String>| match k {
        Some(k) => fingerprint(k),
        None => "-".into(),
    };
    let width = rows.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:24}  {:24}  STATE",
        "HOST", "PINNED", "REPORTED"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:width$}  {:24}  {:24}  {}",
            r.host,
            short(&r.pinned),
            short(&r.reported),
            r.state.as_str()
        );
    }
    out
}

/// A short, recognisable form of a public key for a table: its type and
/// the end of its base64 (the start of every ed25519 key is the same).
fn fingerprint(key: &str) -> String {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let tail: String = body
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if body.is_empty() {
        kind.chars().take(24).collect()
    } else {
        format!("{kind} …{tail}")
    }
}

/// Reads all of stdin (the plaintext for `encrypt` without `--input`).
pub fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf).context("reading stdin")?;
    Ok(buf)
}

/// Prints to stdout, where a closed pipe is not an error worth a panic.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::config::parse_fleet_config;

    const WEB1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHagr3/vMKyaoWTTrtLS3ekomVZA7USWjj6c1Cl6+c6F";
    const WEB2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICdSJZSxLoVEO9CQPfc0h+PtyqLy+dJbEwIXQYi6PTZq";

    fn config() -> FleetConfig {
        let yaml = format!(
            "hosts:\n  web1: {{ groups: [web], ssh_key: \"{WEB1} root@web1\" }}\n  web2: {{ groups: [web] }}\n"
        );
        parse_fleet_config("fleet.yaml", yaml.as_bytes()).unwrap()
    }

    #[test]
    fn rows_compare_pinned_and_reported_keys() {
        let c = config();
        let mut reported = BTreeMap::new();
        reported.insert("web1".to_string(), Some(WEB1.to_string()));
        reported.insert("web2".to_string(), Some(WEB2.to_string()));
        reported.insert("stray".to_string(), None);
        let rows = recipient_rows(&c, &reported);
        let states: Vec<_> = rows.iter().map(|r| (r.host.as_str(), r.state)).collect();
        assert_eq!(
            states,
            [
                ("stray", KeyState::NotInFleet),
                ("web1", KeyState::Same),
                ("web2", KeyState::NotPinned)
            ]
        );
        reported.insert("web1".to_string(), Some(WEB2.to_string()));
        let rows = recipient_rows(&c, &reported);
        assert_eq!(rows[1].state, KeyState::Differs);
        let table = render_rows(&rows);
        assert!(table.contains("DIFFERS"), "{table}");
    }
}
