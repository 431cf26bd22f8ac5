//! Who signed a commit: SSH signatures checked with `ssh-keygen -Y verify`
//! against an allowed_signers file (namespace "git", as git does), OpenPGP
//! signatures with `gpgv` and a keyring. With trust configured, a commit
//! that is unsigned, signed by an unknown key, or badly signed is refused.
//!
//! One function per tool: each writes the signature and the signed payload
//! to a private temporary directory, runs the tool, checks its status and
//! puts its stderr into the error.

use std::path::Path;
use std::process::Command;

use git2::{Oid, Repository};

use crate::config::Trust;

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `ssh` or `openpgp`.
    pub method: &'static str,
    /// The allowed_signers principal, or the OpenPGP user id.
    pub identity: String,
}

/// Why a commit is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("commit {commit} is not signed, and trust requires a signature")]
    Unsigned { commit: String },
    #[error("commit {commit} is signed by a key that {source_name} does not allow: {detail}")]
    UnknownKey {
        commit: String,
        source_name: String,
        detail: String,
    },
    #[error("commit {commit} has a bad signature: {detail}")]
    BadSignature { commit: String, detail: String },
    #[error("commit {commit} is {kind}-signed, and no {setting} is configured to check it")]
    NotConfigured {
        commit: String,
        kind: &'static str,
        setting: &'static str,
    },
    #[error("commit {commit}: cannot check the signature: {detail}")]
    Tool { commit: String, detail: String },
}

/// Checks the signature on `commit` against the configured signers.
pub fn verify_commit(repo: &Repository, commit: Oid, trust: &Trust) -> Result<Signer, TrustError> {
    let c = commit.to_string();
    let (signature, payload) = match repo.extract_signature(&commit, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(TrustError::Unsigned { commit: c });
        }
        Err(e) => {
            return Err(TrustError::Tool {
                commit: c,
                detail: e.message().to_string(),
            });
        }
    };
    let signature: &[u8] = &signature;
    let payload: &[u8] = &payload;
    if signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        let Some(allowed) = &trust.allowed_signers else {
            return Err(TrustError::NotConfigured {
                commit: c,
                kind: "SSH",
                setting: "trust.allowed_signers",
            });
        };
        verify_ssh(&c, signature, payload, allowed)
    } else if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
        let Some(keyring) = &trust.gpg_keyring else {
            return Err(TrustError::NotConfigured {
                commit: c,
                kind: "OpenPGP",
                setting: "trust.gpg_keyring",
            });
        };
        verify_openpgp(&c, signature, payload, keyring)
    } else {
        Err(TrustError::BadSignature {
            commit: c,
            detail: "the signature is neither SSH nor OpenPGP".into(),
        })
    }
}

/// `ssh-keygen -Y find-principals` names who may have signed; `-Y verify`
/// checks the signature for that principal in the "git" namespace.
fn verify_ssh(
    commit: &str,
    signature: &[u8],
    payload: &[u8],
    allowed: &Path,
) -> Result<Signer, TrustError> {
    let tool = |detail: String| TrustError::Tool {
        commit: commit.to_string(),
        detail,
    };
    if !allowed.is_file() {
        return Err(tool(format!(
            "trust.allowed_signers {}: no such file",
            allowed.display()
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| tool(format!("temporary directory: {e}")))?;
    let sig = dir.path().join("commit.sig");
    std::fs::write(&sig, signature).map_err(|e| tool(format!("writing the signature: {e}")))?;

    let mut find = Command::new("ssh-keygen");
    find.args(["-Y", "find-principals", "-f"])
        .arg(allowed)
        .arg("-s")
        .arg(&sig);
    let out = run(&mut find, None).map_err(tool)?;
    let principals: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !out.status.success() || principals.is_empty() {
        return Err(TrustError::UnknownKey {
            commit: commit.to_string(),
            source_name: format!("trust.allowed_signers ({})", allowed.display()),
            detail: first_line(&out.stderr, "no principal matches the signing key"),
        });
    }
    let mut last_error = String::new();
    for principal in &principals {
        let mut verify = Command::new("ssh-keygen");
        verify
            .args(["-Y", "verify", "-n", "git", "-f"])
            .arg(allowed)
            .args(["-I", principal, "-s"])
            .arg(&sig);
        let out = run(&mut verify, Some(payload)).map_err(tool)?;
        if out.status.success() {
            return Ok(Signer {
                method: "ssh",
                identity: principal.clone(),
            });
        }
        last_error = first_line(&out.stderr, "verification failed");
    }
    Err(TrustError::BadSignature {
        commit: commit.to_string(),
        detail: last_error,
    })
}

/// `gpgv --keyring KEYRING --status-fd 1 SIG DATA`: good only with exit 0
/// and a GOODSIG and VALIDSIG status line.
fn verify_openpgp(
    commit: &str,
    signature: &[u8],
    payload: &[u8],
    keyring: &Path,
) -> Result<Signer, TrustError> {
    let tool = |detail: String| TrustError::Tool {
        commit: commit.to_string(),
        detail,
    };
    if !keyring.is_file() {
        return Err(tool(format!(
            "trust.gpg_keyring {}: no such file",
            keyring.display()
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| tool(format!("temporary directory: {e}")))?;
    let sig = dir.path().join("commit.sig");
    let data = dir.path().join("commit.data");
    std::fs::write(&sig, signature).map_err(|e| tool(format!("writing the signature: {e}")))?;
    std::fs::write(&data, payload).map_err(|e| tool(format!("writing the payload: {e}")))?;
    let mut cmd = Command::new("gpgv");
    cmd.arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(keyring)
        .args(["--status-fd", "1"])
        .arg(&sig)
        .arg(&data);
    let out = run(&mut cmd, None).map_err(tool)?;
    let status = String::from_utf8_lossy(&out.stdout);
    let (good, valid) = parse_gpg_status(&status);
    match (out.status.success(), good, valid) {
        (true, Some(identity), true) => Ok(Signer {
            method: "openpgp",
            identity,
        }),
        _ if status.contains("[GNUPG:] NO_PUBKEY") => Err(TrustError::UnknownKey {
            commit: commit.to_string(),
            source_name: format!("trust.gpg_keyring ({})", keyring.display()),
            detail: first_line(&out.stderr, "no public key"),
        }),
        _ => Err(TrustError::BadSignature {
            commit: commit.to_string(),
            detail: first_line(&out.stderr, "gpgv rejected the signature"),
        }),
    }
}

/// From gpg's status output: the GOODSIG user id, and whether VALIDSIG came.
pub fn parse_gpg_status(status: &str) -> (Option<String>, bool) {
    let mut good = None;
    let mut valid = false;
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        if let Some(g) = rest.strip_prefix("GOODSIG ") {
            // GOODSIG <long keyid> <user id>
            good = Some(
                g.split_once(' ')
                    .map_or(g, |(_, uid)| uid)
                    .trim()
                    .to_string(),
            );
        } else if rest.starts_with("VALIDSIG ") {
            valid = true;
        } else if rest.starts_with("BADSIG ")
            || rest.starts_with("ERRSIG ")
            || rest.starts_with("EXPSIG ")
            || rest.starts_with("EXPKEYSIG ")
            || rest.starts_with("REVKEYSIG ")
        {
            return (None, false);
        }
    }
    (good, valid)
}

/// Through the one process runner: a silence timeout (agent.yaml
/// `timeouts.tools`) and progress for the watchdog.
fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<std::process::Output, String> {
    crate::resource::tool::output(cmd, stdin).map_err(|e| crate::resource::tool::chain(&e))
}

fn first_line(bytes: &[u8], default: &str) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(default)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpg_status_lines() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF Ops <ops@example.com>\n[GNUPG:] VALIDSIG ABC 2026-01-01 0 4 0 22 8 00 ABC\n";
        assert_eq!(
            parse_gpg_status(good),
            (Some("Ops <ops@example.com>".into()), true)
        );
        let bad = "[GNUPG:] BADSIG 0123456789ABCDEF Ops <ops@example.com>\n";
        assert_eq!(parse_gpg_status(bad), (None, false));
        let expired = "[GNUPG:] GOODSIG 01 x\n[GNUPG:] EXPKEYSIG 01 x\n[GNUPG:] VALIDSIG x\n";
        assert_eq!(parse_gpg_status(expired), (None, false));
        assert_eq!(parse_gpg_status(""), (None, false));
    }
}
