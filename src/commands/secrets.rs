//! `trueup secrets recipients|encrypt|rekey|edit`: parse options, call
//! `fleet::secrets`, print. Plaintext is only ever read from a file or
//! stdin and written encrypted; nothing here prints it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{Common, Format};
use crate::fleet::secrets::{self, Checkout, Rekeyed};
use crate::secrets::AdminIdentity;

/// Where an admin's decryption key is: `--identity`, else
/// `TRUEUP_SECRETS_IDENTITY`.
fn admin_identity(identity: Option<&Path>) -> Result<AdminIdentity> {
    let path = match identity {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("TRUEUP_SECRETS_IDENTITY")
            .map(PathBuf::from)
            .ok_or_else(|| {
                anyhow!(
                    "no admin identity: give --identity KEY (an age identity file or an ssh-ed25519 private key) or set TRUEUP_SECRETS_IDENTITY"
                )
            })?,
    };
    AdminIdentity::load(&path).map_err(|e| anyhow!("{e}"))
}

/// `trueup secrets recipients`: exit 0, or 2 when a reported key differs
/// from the pinned one.
pub fn secrets_recipients(common: &Common, reports: Option<&str>, dir: &Path) -> Result<i32> {
    let checkout = Checkout::open(dir)?;
    // --reports, fleet.yaml's `reports:`, --source, fleet.yaml's `repo:`.
    let location = reports
        .or(checkout.config.reports.as_deref())
        .or(common.source.as_deref())
        .or(checkout.config.repo.as_deref())
        .ok_or_else(|| {
            anyhow!("no repository to read the hosts' notes from: give --reports URL or --source URL, or set reports: or repo: in fleet.yaml")
        })?;
    let url = match crate::source::remote::locate(location).map_err(anyhow::Error::msg)? {
        crate::source::remote::Location::Git(u) => u,
        crate::source::remote::Location::Dir(d) => {
            bail!(
                "{} is a directory; the notes are read from a Git URL",
                d.display()
            )
        }
    };
    let reported = secrets::reported_keys(&url, &common.settings.auth)?;
    let rows = secrets::recipient_rows(&checkout.config, &reported);
    match common.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&rows)?;
            text.push('\n');
            secrets::print(&text)?;
        }
        Format::Text => secrets::print(&secrets::render_rows(&rows))?,
    }
    let differs = rows.iter().any(|r| r.state == secrets::KeyState::Differs);
    Ok(if differs { 2 } else { 0 })
}

/// `trueup secrets encrypt`.
pub fn secrets_encrypt(dir: &Path, to: &[String], input: Option<&Path>, file: &str) -> Result<i32> {
    let checkout = Checkout::open(dir)?;
    let plaintext = match input {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => secrets::read_stdin()?,
    };
    let done = secrets::encrypt(&checkout, to, &plaintext, file)?;
    eprintln!(
        "{}: encrypted for {} ({} recipients)",
        done.file,
        done.entry.hosts.join(", "),
        done.entry.recipients.len()
    );
    if done.unlisted {
        eprintln!(
            "note: {} is not in fleet.yaml secrets.files, so `trueup secrets rekey` will not keep it current; add it there",
            done.file
        );
    }
    Ok(0)
}

/// `trueup secrets rekey`.
pub fn secrets_rekey(dir: &Path, identity: Option<&Path>) -> Result<i32> {
    let checkout = Checkout::open(dir)?;
    let identity = admin_identity(identity)?;
    let done = secrets::rekey(&checkout, &identity)?;
    let mut text = String::new();
    for (file, what) in &done {
        let line = match what {
            Rekeyed::Unchanged => format!("{file}: unchanged\n"),
            Rekeyed::Rewritten { added, removed } => {
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("+{}", added.join(" +")));
                }
                if !removed.is_empty() {
                    parts.push(format!("-{}", removed.join(" -")));
                }
                if parts.is_empty() {
                    parts.push("admins or keys changed".into());
                }
                format!("{file}: re-encrypted ({})\n", parts.join(" "))
            }
        };
        text.push_str(&line);
    }
    if done.is_empty() {
        text.push_str("fleet.yaml lists no secrets.files\n");
    }
    secrets::print(&text)?;
    Ok(0)
}

/// `trueup secrets edit`.
pub fn secrets_edit(dir: &Path, identity: Option<&Path>, file: &str) -> Result<i32> {
    let checkout = Checkout::open(dir)?;
    let identity = admin_identity(identity)?;
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|e| !e.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into());
    let changed = secrets::edit(&checkout, &identity, file, &editor)?;
    eprintln!(
        "{file}: {}",
        if changed {
            "re-encrypted"
        } else {
            "unchanged, not rewritten"
        }
    );
    Ok(0)
}
