//! Host facts: the few things templates may ask about the machine.
//!
//! Only what templates need is gathered, each from one cheap source (a
//! syscall or one small file); nothing scans processes. A facts file
//! (`--facts FILE`, JSON or YAML) can stand in for the machine, so a branch
//! can be validated for another host in CI.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What templates see as `facts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    pub hostname: String,
    pub fqdn: String,
    pub os: OsFacts,
    pub arch: String,
    pub cpus: u32,
    /// Total memory in MiB.
    pub memory_mb: u64,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub machine_id: String,
    /// The user trueup runs as (root on a managed host).
    pub user: String,
}

/// The operating system, from os-release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsFacts {
    pub id: String,
    #[serde(default)]
    pub id_like: Vec<String>,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub name: String,
}

/// Why facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("reading facts file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("facts file {path}: {message}")]
    Parse { path: String, message: String },
}

impl Facts {
    /// Gathers the facts of the running machine.
    pub fn gather() -> Facts {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string());
        let fqdn = fqdn_of(&hostname);
        let os = std::fs::read_to_string("/etc/os-release")
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .map(|text| parse_os_release(&text))
            .unwrap_or_default();
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let (ipv4, ipv6) = addresses();
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1);
        let memory_mb = sysinfo::System::new()
            .map(|mut sys| {
                sys.refresh_memory();
                sys.total_memory() / (1024 * 1024)
            })
            .unwrap_or(0);
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::geteuid().to_string());
        Facts {
            hostname,
            fqdn,
            os,
            arch: std::env::consts::ARCH.to_string(),
            cpus,
            memory_mb,
            ipv4,
            ipv6,
            machine_id,
            user,
        }
    }

    /// Reads facts from a JSON or YAML file (YAML is a superset of JSON).
    pub fn from_file(path: &Path) -> Result<Facts, FactsError> {
        let text = std::fs::read_to_string(path).map_err(|source| FactsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_saphyr::from_str(&text).map_err(|e| FactsError::Parse {
            path: path.display().to_string(),
            message: crate::spec::yaml_error_message(&e),
        })
    }

    /// The facts as a list of (name, value) lines for people.
    pub fn to_lines(&self) -> Vec<(String, String)> {
        vec![
            ("hostname".into(), self.hostname.clone()),
            ("fqdn".into(), self.fqdn.clone()),
            ("os.id".into(), self.os.id.clone()),
            ("os.id_like".into(), self.os.id_like.join(" ")),
            ("os.version_id".into(), self.os.version_id.clone()),
            ("os.name".into(), self.os.name.clone()),
            ("arch".into(), self.arch.clone()),
            ("cpus".into(), self.cpus.to_string()),
            ("memory_mb".into(), self.memory_mb.to_string()),
            ("ipv4".into(), self.ipv4.join(" ")),
            ("ipv6".into(), self.ipv6.join(" ")),
            ("machine_id".into(), self.machine_id.clone()),
            ("user".into(), self.user.clone()),
        ]
    }
}

/// The facts a run report carries, so a fleet's states can be rendered
/// centrally with each host's own facts (`trueup validate --fleet`).
///
/// Every fact but `machine_id`, which machine-id(5) asks to keep
/// confidential. Read leniently: a report from a newer agent may hold facts
/// this version does not know, and a missing one reads as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedFacts {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub fqdn: String,
    #[serde(default)]
    pub os: PublishedOs,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Vec<String>,
    #[serde(default)]
    pub user: String,
}

/// `os` of `PublishedFacts`, read leniently like it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedOs {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub id_like: Vec<String>,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub name: String,
}

impl From<&Facts> for PublishedFacts {
    fn from(f: &Facts) -> PublishedFacts {
        PublishedFacts {
            hostname: f.hostname.clone(),
            fqdn: f.fqdn.clone(),
            os: PublishedOs {
                id: f.os.id.clone(),
                id_like: f.os.id_like.clone(),
                version_id: f.os.version_id.clone(),
                name: f.os.name.clone(),
            },
            arch: f.arch.clone(),
            cpus: f.cpus,
            memory_mb: f.memory_mb,
            ipv4: f.ipv4.clone(),
            ipv6: f.ipv6.clone(),
            user: f.user.clone(),
        }
    }
}

impl PublishedFacts {
    /// Facts to render with; `machine_id` is empty (never published).
    pub fn into_facts(self) -> Facts {
        Facts {
            hostname: self.hostname,
            fqdn: self.fqdn,
            os: OsFacts {
                id: self.os.id,
                id_like: self.os.id_like,
                version_id: self.os.version_id,
                name: self.os.name,
            },
            arch: self.arch,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            machine_id: String::new(),
            user: self.user,
        }
    }
}

/// Parses os-release (`KEY=value` lines, values optionally quoted).
pub fn parse_os_release(text: &str) -> OsFacts {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            map.insert(key.trim().to_string(), unquote(value.trim()));
        }
    }
    let get = |k: &str| map.get(k).cloned().unwrap_or_default();
    OsFacts {
        id: get("ID"),
        id_like: get("ID_LIKE")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        version_id: get("VERSION_ID"),
        name: get("PRETTY_NAME"),
    }
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The canonical name of this host, or the hostname when none resolves.
fn fqdn_of(hostname: &str) -> String {
    if hostname.contains('.') {
        return hostname.to_string();
    }
    let hints = dns_lookup::AddrInfoHints {
        flags: libc::AI_CANONNAME,
        ..Default::default()
    };
    dns_lookup::getaddrinfo(Some(hostname), None, Some(hints))
        .ok()
        .and_then(|mut it| it.next())
        .and_then(|info| info.ok())
        .and_then(|info| info.canonname)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| hostname.to_string())
}

/// Global unicast and private addresses, loopback and link-local left out.
fn addresses() -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            if let Some(sin) = addr.as_sockaddr_in() {
                let ip = sin.ip();
                if !ip.is_loopback() && !ip.is_link_local() {
                    v4.push(ip.to_string());
                }
            } else if let Some(sin6) = addr.as_sockaddr_in6() {
                let ip = sin6.ip();
                let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
                if !ip.is_loopback() && !link_local {
                    v6.push(ip.to_string());
                }
            }
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_of_debian_12() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
        let os = parse_os_release(text);
        assert_eq!(os.id, "debian");
        assert_eq!(os.version_id, "12");
        assert_eq!(os.name, "Debian GNU/Linux 12 (bookworm)");
        assert!(os.id_like.is_empty());
    }

    #[test]
    fn os_release_id_like_is_split() {
        let os = parse_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n# comment\n");
        assert_eq!(os.id, "rocky");
        assert_eq!(os.id_like, vec!["rhel", "centos", "fedora"]);
    }

    #[test]
    fn published_facts_leave_out_the_machine_id_and_read_leniently() {
        let mut f = Facts::gather();
        f.machine_id = "0123456789abcdef0123456789abcdef".into();
        let json = serde_json::to_string(&PublishedFacts::from(&f)).unwrap();
        assert!(!json.contains("machine_id"), "{json}");
        assert!(!json.contains(&f.machine_id), "{json}");
        let back: PublishedFacts = serde_json::from_str(&json).unwrap();
        let mut expected = f.clone();
        expected.machine_id = String::new();
        assert_eq!(back.into_facts(), expected);
        // A newer agent's extra fact, and an older one's missing ones.
        let newer: PublishedFacts = serde_json::from_str(
            r#"{"hostname":"h","gpu":"x","os":{"id":"debian","variant":"y"}}"#,
        )
        .unwrap();
        assert_eq!(
            (newer.hostname.as_str(), newer.os.id.as_str()),
            ("h", "debian")
        );
    }

    #[test]
    fn gathered_facts_are_filled() {
        let f = Facts::gather();
        assert!(!f.hostname.is_empty());
        assert!(f.cpus >= 1);
        assert!(f.memory_mb > 0);
        assert_eq!(f.arch, std::env::consts::ARCH);
    }
}
