//! SSH host keys checked against an OpenSSH `known_hosts` file.
//!
//! libgit2 hands over the server's raw host key; this module decides whether
//! a known_hosts file vouches for it. The `ssh-key` crate parses the file
//! (sshd(8)'s format: markers, host patterns or a hashed name, the key);
//! matching a name is ours: comma-separated patterns with `*`, `?` and `!`
//! negation (`[host]:port` for other ports than 22), hashed names
//! (`|1|salt|hmac`), and the `@revoked` marker. `@cert-authority` lines are
//! skipped (host certificates are not supported), and so is a line that
//! does not parse, as OpenSSH does.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use ssh_key::known_hosts::{HostPatterns, Marker};

/// What a known_hosts file says about a server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    /// A line names this host with this key.
    Known,
    /// The file has keys for this host, none of them this one.
    Changed,
    /// The file does not know this host at all.
    Unknown,
    /// The key is marked `@revoked`.
    Revoked,
}

/// One usable line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    revoked: bool,
    hosts: HostPatterns,
    /// The key blob (SSH wire format).
    key: Vec<u8>,
}

/// The name a host is looked up by: `host`, or `[host]:port` when the port
/// is not 22.
pub fn lookup_name(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_string(),
    }
}

/// Checks `key` (the raw key blob) for `name` (see [`lookup_name`]) against
/// the text of a known_hosts file. As in OpenSSH, only a key of the same
/// type can make a key "changed": a host known by its RSA key that offers
/// an Ed25519 one is a host whose Ed25519 key is not known yet.
pub fn check(text: &str, name: &str, key: &[u8]) -> HostKeyVerdict {
    let kind = key_type(key);
    let mut any_for_host = false;
    let mut known = false;
    for entry in parse(text) {
        if !matches(&entry.hosts, name) {
            continue;
        }
        if entry.revoked {
            if entry.key == key {
                return HostKeyVerdict::Revoked;
            }
            continue;
        }
        if entry.key == key {
            known = true;
        } else if key_type(&entry.key) == kind {
            any_for_host = true;
        }
    }
    if known {
        HostKeyVerdict::Known
    } else if any_for_host {
        HostKeyVerdict::Changed
    } else {
        HostKeyVerdict::Unknown
    }
}

/// The line recording `key` for `name`: `NAME TYPE BASE64`.
pub fn line_for(name: &str, key: &[u8]) -> String {
    let kind = key_type(key).unwrap_or("unknown");
    format!("{name} {kind} {}", STANDARD.encode(key))
}

/// The key type named inside an SSH key blob (`ssh-ed25519`, ...).
pub fn key_type(key: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(4..4usize.checked_add(len)?)?).ok()
}

/// Appends a line for `name` and `key` to the file (creating it).
pub fn append(path: &Path, name: &str, key: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)?;
    writeln!(f, "{}", line_for(name, key))?;
    f.sync_all()
}

fn parse(text: &str) -> impl Iterator<Item = Entry> + '_ {
    ssh_key::known_hosts::KnownHosts::new(text)
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let revoked = match entry.marker() {
                None => false,
                Some(Marker::Revoked) => true,
                // A certificate authority is not a host key.
                Some(Marker::CertAuthority) => return None,
            };
            Some(Entry {
                revoked,
                hosts: entry.host_patterns().clone(),
                key: entry.public_key().to_bytes().ok()?,
            })
        })
}

/// Whether a line's host field names `name`.
fn matches(hosts: &HostPatterns, name: &str) -> bool {
    match hosts {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for p in patterns {
                if let Some(negated) = p.strip_prefix('!') {
                    if wildcard(negated, name) {
                        return false;
                    }
                } else if wildcard(p, name) {
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `*` and `?` glob matching, case-insensitive as host names are.
fn wildcard(pattern: &str, name: &str) -> bool {
    crate::wildcard::matches(pattern, name, crate::wildcard::Case::Insensitive)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real ed25519 key blobs (from ssh-keygen), base64 as in known_hosts.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIFrt5xpHq2lmSOpns7zmyLSF/4vCQeWylk9dysDk+Kjn";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIN4N4BrnMMf5Ygl4yFAwersKKRk+wyaGGDF4ugqZu7jY";

    fn key(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    #[test]
    fn plain_patterns_ports_and_negation() {
        let text = format!(
            "# comment\n\n[127.0.0.1]:2222 ssh-ed25519 {KEY}\ngit.example.com,10.0.0.1 ssh-ed25519 {KEY}\n*.internal,!bad.internal ssh-ed25519 {KEY}\n"
        );
        let k = key(KEY);
        assert_eq!(
            check(&text, &lookup_name("127.0.0.1", Some(2222)), &k),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(&text, &lookup_name("127.0.0.1", Some(22)), &k),
            HostKeyVerdict::Unknown
        );
        assert_eq!(check(&text, "10.0.0.1", &k), HostKeyVerdict::Known);
        assert_eq!(check(&text, "GIT.example.com", &k), HostKeyVerdict::Known);
        assert_eq!(check(&text, "a.internal", &k), HostKeyVerdict::Known);
        assert_eq!(check(&text, "bad.internal", &k), HostKeyVerdict::Unknown);
        assert_eq!(
            check(&text, "10.0.0.1", &key(OTHER)),
            HostKeyVerdict::Changed
        );
    }

    #[test]
    fn hashed_names_and_revoked_keys() {
        // `ssh-keygen -H` output for "[127.0.0.1]:2222", computed here.
        let salt = b"0123456789abcdef0123";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        let text = format!(
            "|1|{}|{} ssh-ed25519 {KEY}\n@revoked * ssh-ed25519 {OTHER}\n",
            STANDARD.encode(salt),
            STANDARD.encode(hash)
        );
        assert_eq!(
            check(&text, "[127.0.0.1]:2222", &key(KEY)),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(&text, "[127.0.0.1]:2223", &key(KEY)),
            HostKeyVerdict::Unknown
        );
        assert_eq!(
            check(&text, "[127.0.0.1]:2222", &key(OTHER)),
            HostKeyVerdict::Revoked
        );
    }

    #[test]
    fn broken_lines_are_ignored_and_lines_round_trip() {
        let text = "garbage\nhost ssh-ed25519 !!!notbase64\n@cert-authority * ssh-ed25519 AAAA\n|1|x ssh-ed25519 AAAA\n";
        assert_eq!(check(text, "host", &key(KEY)), HostKeyVerdict::Unknown);
        let line = line_for("[h]:1", &key(KEY));
        assert_eq!(line, format!("[h]:1 ssh-ed25519 {KEY}"));
        assert_eq!(check(&line, "[h]:1", &key(KEY)), HostKeyVerdict::Known);
        assert_eq!(key_type(&[0, 0, 0, 200, b'a']), None);
    }

    #[test]
    fn a_known_key_of_another_type_makes_the_host_new_not_changed() {
        // An RSA blob (type name, then whatever): only its type matters here.
        let mut rsa = vec![0, 0, 0, 7];
        rsa.extend_from_slice(b"ssh-rsa");
        rsa.extend_from_slice(&[0, 0, 0, 1, 1, 0, 0, 0, 1, 7]);
        let text = format!("git.example.com ssh-rsa {}\n", STANDARD.encode(&rsa));
        assert_eq!(
            check(&text, "git.example.com", &key(KEY)),
            HostKeyVerdict::Unknown
        );
        // Beside a same-type key that differs, it is changed.
        let text = format!("{text}git.example.com ssh-ed25519 {OTHER}\n");
        assert_eq!(
            check(&text, "git.example.com", &key(KEY)),
            HostKeyVerdict::Changed
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("web?.example.com", "web1.example.com"));
        assert!(!wildcard("web?.example.com", "web10.example.com"));
        assert!(wildcard("*.example.*", "a.example.org"));
        assert!(!wildcard("a*b", "ac"));
    }
}
