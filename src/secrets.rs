//! Age-encrypted secrets: decrypted on the host with its SSH host key,
//! encrypted on an admin's machine to the hosts' and admins' public keys.
//!
//! A branch may hold `secrets/*.age` files (binary or ASCII-armoured, as
//! the standard `age` tool writes them). The host decrypts them while its
//! branch is rendered, with its `ssh-ed25519` host key only: the `rsa`
//! code the `age` crate's `ssh` feature brings in is never used to decrypt
//! (see docs/secrets.md for why that advisory does not reach trueup).
//! Nothing here prints or logs a plaintext; errors name the file and the
//! reason, never the content.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::armor::{ArmoredReader, ArmoredWriter, Format};

/// The host key that decrypts secrets unless agent.yaml says otherwise.
/// `--root` does not move it: it is the machine's own key.
pub const DEFAULT_IDENTITY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// Largest identity file read: an OpenSSH ed25519 key is ~400 bytes, an
/// age identity file a few lines.
const MAX_IDENTITY_BYTES: u64 = 64 * 1024;

/// Why a key file could not be used to decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the key {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not an OpenSSH private key or an age identity file")]
    NotAKey { path: PathBuf },
    #[error("{path} is a {kind} key; secrets are decrypted with ssh-ed25519 keys only")]
    Unsupported { path: PathBuf, kind: String },
    #[error("{path} is protected by a passphrase; trueup cannot use it unattended")]
    Passphrase { path: PathBuf },
}

/// Why one secret could not be decrypted. Never holds any plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptFailure {
    /// The file was not encrypted to any key given (age stanzas do not say
    /// to whom they were, so that is all there is to tell).
    #[error("not a recipient: the file is not encrypted to {0}")]
    NotARecipient(String),
    #[error("bad format: not an age-encrypted file ({0})")]
    BadFormat(String),
    #[error("damaged: the file's content does not authenticate ({0})")]
    Damaged(String),
    #[error("no key to decrypt with: {0}")]
    NoIdentity(String),
    #[error("the decrypted content is not UTF-8 text, which a template needs")]
    NotText,
}

/// The host's SSH key, loaded once per run.
pub struct HostIdentity {
    key: age::ssh::Identity,
    /// `ssh-ed25519 AAAA...`, without a comment.
    public: String,
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a debug print.
        f.debug_struct("HostIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl HostIdentity {
    /// Reads an unencrypted OpenSSH `ssh-ed25519` private key.
    pub fn load(path: &Path) -> Result<HostIdentity, IdentityError> {
        let bytes = read_key_file(path)?;
        HostIdentity::parse(path, &bytes)
    }

    /// Parses the content of a key file; `path` is for messages only.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<HostIdentity, IdentityError> {
        let not_a_key = || IdentityError::NotAKey {
            path: path.to_path_buf(),
        };
        let key = age::ssh::Identity::from_buffer(BufReader::new(bytes), None)
            .map_err(|_| not_a_key())?;
        match &key {
            age::ssh::Identity::Unencrypted(_) => {}
            age::ssh::Identity::Encrypted(_) => {
                return Err(IdentityError::Passphrase {
                    path: path.to_path_buf(),
                });
            }
            age::ssh::Identity::Unsupported(u) => {
                let kind = match u {
                    age::ssh::UnsupportedKey::Type(t) | age::ssh::UnsupportedKey::Hardware(t) => {
                        t.clone()
                    }
                    age::ssh::UnsupportedKey::EncryptedPem
                    | age::ssh::UnsupportedKey::EncryptedSsh(_) => {
                        return Err(IdentityError::Passphrase {
                            path: path.to_path_buf(),
                        });
                    }
                };
                return Err(IdentityError::Unsupported {
                    path: path.to_path_buf(),
                    kind,
                });
            }
        }
        // The public half tells the key's type: only ed25519 is used.
        let public = match age::ssh::Recipient::try_from(key.clone()) {
            Ok(r @ age::ssh::Recipient::SshEd25519(..)) => r.to_string(),
            Ok(age::ssh::Recipient::SshRsa(..)) => {
                return Err(IdentityError::Unsupported {
                    path: path.to_path_buf(),
                    kind: "ssh-rsa".into(),
                });
            }
            Err(_) => return Err(not_a_key()),
        };
        Ok(HostIdentity { key, public })
    }

    /// The public half, `ssh-ed25519 AAAA...`, as fleet.yaml pins it.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Decrypts one age file (binary or armoured).
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
        decrypt_with(ciphertext, &[&self.key as &dyn age::Identity]).map_err(|e| match e {
            DecryptFailure::NotARecipient(_) => {
                DecryptFailure::NotARecipient(format!("this host's key {}", self.public))
            }
            other => other,
        })
    }
}

/// Keys an admin decrypts with (`secrets edit`, `secrets rekey`): an age
/// identity file (`AGE-SECRET-KEY-1...` lines) or an OpenSSH ed25519 key.
pub struct AdminIdentity {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl AdminIdentity {
    pub fn load(path: &Path) -> Result<AdminIdentity, IdentityError> {
        let bytes = read_key_file(path)?;
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("-----BEGIN") {
            let host = HostIdentity::parse(path, &bytes)?;
            return Ok(AdminIdentity {
                identities: vec![Box::new(host.key)],
            });
        }
        let not_a_key = || IdentityError::NotAKey {
            path: path.to_path_buf(),
        };
        let file =
            age::IdentityFile::from_buffer(BufReader::new(&bytes[..])).map_err(|_| not_a_key())?;
        let identities = file.into_identities().map_err(|_| not_a_key())?;
        if identities.is_empty() {
            return Err(not_a_key());
        }
        Ok(AdminIdentity { identities })
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
        let ids: Vec<&dyn age::Identity> = self
            .identities
            .iter()
            .map(|i| i.as_ref() as &dyn age::Identity)
            .collect();
        decrypt_with(ciphertext, &ids).map_err(|e| match e {
            DecryptFailure::NotARecipient(_) => {
                DecryptFailure::NotARecipient("the admin identity given".into())
            }
            other => other,
        })
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let read = |reason: String| IdentityError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_IDENTITY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read(e.to_string()))?;
    if bytes.len() as u64 > MAX_IDENTITY_BYTES {
        return Err(read("larger than any key file".into()));
    }
    Ok(bytes)
}

/// Decrypts with the first identity that opens the file.
fn decrypt_with(
    ciphertext: &[u8],
    identities: &[&dyn age::Identity],
) -> Result<Vec<u8>, DecryptFailure> {
    let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(ciphertext))
        .map_err(|e| DecryptFailure::BadFormat(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().copied())
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => DecryptFailure::NotARecipient(String::new()),
            age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                DecryptFailure::BadFormat(e.to_string())
            }
            other => DecryptFailure::Damaged(other.to_string()),
        })?;
    let mut plain = Vec::new();
    reader
        .read_to_end(&mut plain)
        .map_err(|e| DecryptFailure::Damaged(e.to_string()))?;
    Ok(plain)
}

/// Checks that `ciphertext` is a well-formed age file without decrypting
/// it (for `validate` and `render`, which have no host key).
pub fn check_format(ciphertext: &[u8]) -> Result<(), DecryptFailure> {
    age::Decryptor::new_buffered(ArmoredReader::new(ciphertext))
        .map(|_| ())
        .map_err(|e| DecryptFailure::BadFormat(e.to_string()))
}

/// A recipient as written in fleet.yaml, reduced to its canonical form
/// (`age1...`, or `ssh-ed25519 AAAA...` without a comment), so that two
/// spellings of one key compare equal.
pub fn normalize_recipient(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.starts_with("age1") {
        let r = age::x25519::Recipient::from_str(text)
            .map_err(|e| format!("'{text}' is not an age recipient: {e}"))?;
        return Ok(r.to_string());
    }
    if text.starts_with("ssh-ed25519 ") {
        let r = age::ssh::Recipient::from_str(text)
            .map_err(|_| format!("'{text}' is not a valid ssh-ed25519 public key"))?;
        return Ok(r.to_string());
    }
    let kind = text.split_whitespace().next().unwrap_or("");
    Err(format!(
        "'{kind}' keys are not accepted: a recipient is an age1... key or an ssh-ed25519 key"
    ))
}

fn parse_recipient(text: &str) -> Result<Box<dyn age::Recipient + Send>, String> {
    let canonical = normalize_recipient(text)?;
    if canonical.starts_with("age1") {
        let r = age::x25519::Recipient::from_str(&canonical)?;
        Ok(Box::new(r))
    } else {
        let r = age::ssh::Recipient::from_str(&canonical)
            .map_err(|_| format!("'{canonical}' is not a valid ssh-ed25519 public key"))?;
        Ok(Box::new(r))
    }
}

/// Encrypts to every recipient, ASCII-armoured (a text file in Git, which
/// the standard `age -d` reads as well as the binary form).
pub fn encrypt(plaintext: &[u8], recipients: &[String]) -> Result<Vec<u8>, String> {
    let parsed = recipients
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut out = Vec::new();
    let armored = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut writer = encryptor
        .wrap_output(armored)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish())
        .and_then(|armored| armored.finish())
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    Ok(out)
}

/// How a render treats encrypted content.
#[derive(Debug, Clone)]
pub enum Secrets {
    /// On the host: decrypt with its key.
    Host(Arc<HostIdentity>),
    /// On the host, but its key could not be loaded: every secret fails
    /// with this reason (the rest of the branch still applies).
    NoIdentity(String),
    /// `validate` and `render`: check each encrypted file is well formed,
    /// never decrypt. Content is left empty.
    Unread,
}

/// What opening one encrypted file gave.
pub enum Opened {
    Plain(Vec<u8>),
    /// Not decrypted (`Secrets::Unread`).
    Unread,
}

impl Secrets {
    /// The host's key as configured: a key that cannot be read fails the
    /// secrets, not the run.
    pub fn for_host(identity: &Path) -> Secrets {
        match HostIdentity::load(identity) {
            Ok(id) => Secrets::Host(Arc::new(id)),
            Err(e) => Secrets::NoIdentity(e.to_string()),
        }
    }

    /// The host's public key, for reports.
    pub fn public_key(&self) -> Option<&str> {
        match self {
            Secrets::Host(id) => Some(id.public_key()),
            _ => None,
        }
    }

    pub fn open(&self, ciphertext: &[u8]) -> Result<Opened, DecryptFailure> {
        match self {
            Secrets::Host(id) => id.decrypt(ciphertext).map(Opened::Plain),
            Secrets::NoIdentity(why) => Err(DecryptFailure::NoIdentity(why.clone())),
            Secrets::Unread => check_format(ciphertext).map(|()| Opened::Unread),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `ssh-keygen -t ed25519 -N '' -C ''` for these tests only.
    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCv0fxNxKY6B1mhmZ91Gi4rteKvQgMHD3FQH7IZu2GPXAAAAIiAIU5GgCFO
RgAAAAtzc2gtZWQyNTUxOQAAACCv0fxNxKY6B1mhmZ91Gi4rteKvQgMHD3FQH7IZu2GPXA
AAAEDFQh5AN190U6ow/legsSM7DoDZEzHxZo5ItjIVOjly6K/R/E3EpjoHWaGZn3UaLiu1
4q9CAwcPcVAfshm7YY9cAAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
";

    fn host() -> HostIdentity {
        HostIdentity::parse(Path::new("/k"), KEY.as_bytes()).unwrap()
    }

    #[test]
    fn round_trip_to_the_host_key_and_public_key_form() {
        let id = host();
        assert!(id.public_key().starts_with("ssh-ed25519 AAAA"), "{id:?}");
        let sealed = encrypt(b"hunter2\n", &[format!("{} host@x", id.public_key())]).unwrap();
        assert!(sealed.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
        assert_eq!(id.decrypt(&sealed).unwrap(), b"hunter2\n");
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }

    #[test]
    fn another_key_is_not_a_recipient_and_garbage_is_bad_format() {
        let other = age::x25519::Identity::generate();
        let sealed = encrypt(b"x", &[other.to_public().to_string()]).unwrap();
        let e = host().decrypt(&sealed).unwrap_err();
        assert!(matches!(e, DecryptFailure::NotARecipient(_)), "{e}");
        assert!(e.to_string().contains("ssh-ed25519 AAAA"), "{e}");
        let e = host().decrypt(b"plain text, not age").unwrap_err();
        assert!(matches!(e, DecryptFailure::BadFormat(_)), "{e}");
        assert!(check_format(&sealed).is_ok());
        assert!(check_format(b"nope").is_err());
    }

    #[test]
    fn a_damaged_file_does_not_decrypt() {
        let id = host();
        let mut sealed = encrypt(b"x", &[id.public_key().to_string()]).unwrap();
        // Flip a byte of the armoured payload near the end.
        let n = sealed.len() - 40;
        sealed[n] = if sealed[n] == b'A' { b'B' } else { b'A' };
        assert!(id.decrypt(&sealed).is_err());
    }

    #[test]
    fn a_branch_renders_secret_files_as_secret_and_0600() {
        use crate::source::MemTree;
        let id = Arc::new(host());
        let sealed = encrypt(b"s3cret", &[id.public_key().to_string()]).unwrap();
        let mut tree = MemTree::new(&[
            (
                "trueup.yaml",
                "files:\n  /a:\n    source: secrets/a.age\n  /b:\n    template: b.hbs\n    mode: \"0640\"\n  /c:\n    content: plain\n",
            ),
            ("b.hbs", "pw={{secret \"a\"}}\n"),
        ]);
        tree.0.insert("secrets/a.age".into(), sealed);
        let facts = crate::facts::Facts::gather();
        let state =
            crate::spec::load_with_secrets(&tree, &facts, &Secrets::Host(id.clone())).unwrap();
        let a = &state.files[Path::new("/a")];
        assert!(a.secret);
        assert_eq!(a.mode, Some(0o600));
        let content = a.content.as_ref().unwrap();
        assert_eq!(&content.bytes[..], b"s3cret");
        assert_eq!(content.undecryptable, None);
        let b = &state.files[Path::new("/b")];
        assert!(b.secret);
        assert_eq!(b.mode, Some(0o640));
        assert_eq!(&b.content.as_ref().unwrap().bytes[..], b"pw=s3cret\n");
        assert!(!state.files[Path::new("/c")].secret);

        // Another host: both files are undecryptable, the branch still renders.
        let other = age::x25519::Identity::generate().to_public().to_string();
        tree.0.insert(
            "secrets/a.age".into(),
            encrypt(b"s3cret", &[other]).unwrap(),
        );
        let state = crate::spec::load_with_secrets(&tree, &facts, &Secrets::Host(id)).unwrap();
        for f in ["/a", "/b"] {
            let c = state.files[Path::new(f)].content.as_ref().unwrap();
            assert!(c.bytes.is_empty(), "{f}");
            let why = c.undecryptable.as_deref().unwrap_or("");
            assert!(
                why.contains("secrets/a.age") && why.contains("not a recipient"),
                "{why}"
            );
        }
        // validate and render: nothing decrypted, nothing wrong.
        let state = crate::spec::load_with_secrets(&tree, &facts, &Secrets::Unread).unwrap();
        assert!(
            state.files[Path::new("/a")]
                .content
                .as_ref()
                .unwrap()
                .bytes
                .is_empty()
        );
    }

    #[test]
    fn keys_other_than_ed25519_are_refused() {
        let e = HostIdentity::parse(Path::new("/k"), b"not a key").unwrap_err();
        assert!(matches!(e, IdentityError::NotAKey { .. }), "{e}");
        assert!(normalize_recipient("ssh-rsa AAAAB3 x").is_err());
        assert!(normalize_recipient("hello").is_err());
        let id = host();
        let with_comment = format!("  {} root@web-01 ", id.public_key());
        assert_eq!(normalize_recipient(&with_comment).unwrap(), id.public_key());
    }
}
