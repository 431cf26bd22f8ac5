//! What `--source` or `repo:` names: a plain directory, or a Git remote
//! (file://, git://, ssh://, scp-like `user@host:path`, https://), with the
//! pieces the transports need (host and port for known_hosts, the user name
//! for credentials) and a form safe to print (no user name, no password).

use std::path::{Path, PathBuf};

/// A source as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A checkout or any directory holding `trueup.yaml`.
    Dir(PathBuf),
    /// A Git repository reached through a transport.
    Git(RemoteUrl),
}

/// The transports trueup speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    File,
    Git,
    Ssh,
    Https,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::File => "file",
            Transport::Git => "git",
            Transport::Ssh => "ssh",
            Transport::Https => "https",
        }
    }
}

/// A Git remote URL. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// What libgit2 connects to, as configured (may hold credentials).
    raw: String,
    pub transport: Transport,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// User name from the URL (`git` in `ssh://git@host/...`).
    pub user: Option<String>,
    /// Password from the URL, only to scrub it out of error messages.
    password: Option<String>,
    /// The URL without user name or password, for reports and logs.
    redacted: String,
}

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteUrl({})", self.redacted)
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl RemoteUrl {
    /// The URL to hand to libgit2.
    pub fn for_libgit2(&self) -> &str {
        &self.raw
    }

    /// The URL with any user name and password removed.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The user name ssh logs in as: the URL's, else `git`.
    pub fn ssh_user(&self) -> &str {
        self.user.as_deref().unwrap_or("git")
    }

    /// Removes every trace of this URL's credentials from `text` (error
    /// messages from transports may quote the URL).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.raw, &self.redacted);
        if let Some(p) = self.password.as_deref().filter(|p| !p.is_empty()) {
            out = out.replace(p, "***");
            let encoded: String = url::form_urlencoded::byte_serialize(p.as_bytes()).collect();
            out = out.replace(&encoded, "***");
        }
        out
    }

    /// Parses a URL. Plain `http://` is refused: it would send credentials
    /// and fetch the desired state in clear.
    pub fn parse(raw: &str) -> Result<RemoteUrl, String> {
        let raw = raw.trim();
        if raw.contains("://") {
            return Self::parse_url(raw);
        }
        // scp-like: [user@]host:path, where no '/' comes before the ':'.
        if let Some((head, path)) = raw.split_once(':')
            && !head.is_empty()
            && !head.contains('/')
            && !path.is_empty()
        {
            let (user, host) = match head.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, head),
            };
            if host.is_empty() {
                return Err(format!("'{}': no host", redact_scp(raw)));
            }
            return Ok(RemoteUrl {
                raw: raw.to_string(),
                transport: Transport::Ssh,
                host: Some(host.to_string()),
                port: None,
                user,
                password: None,
                redacted: format!("{host}:{path}"),
            });
        }
        Err(format!(
            "'{raw}' is neither a directory nor a repository URL (file://, git://, ssh://, https://)"
        ))
    }

    fn parse_url(raw: &str) -> Result<RemoteUrl, String> {
        let parsed = url::Url::parse(raw).map_err(|e| {
            format!(
                "'{}' is not a valid URL: {e}",
                redact_unparsed(raw).unwrap_or_else(|| "(the URL)".into())
            )
        })?;
        let transport = match parsed.scheme() {
            "file" => Transport::File,
            "git" => Transport::Git,
            "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
            "https" => Transport::Https,
            "http" => {
                return Err(format!(
                    "'{}': plain http is not supported; use https://",
                    redacted_url(&parsed)
                ));
            }
            other => {
                return Err(format!(
                    "'{}': unsupported scheme '{other}' (file, git, ssh, https)",
                    redacted_url(&parsed)
                ));
            }
        };
        let user = (!parsed.username().is_empty()).then(|| {
            url::form_urlencoded::parse(format!("u={}", parsed.username()).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        });
        let password = parsed.password().map(|p| {
            url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        });
        if transport != Transport::File && parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("'{}': no host", redacted_url(&parsed)));
        }
        Ok(RemoteUrl {
            raw: raw.to_string(),
            transport,
            host: parsed
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()),
            port: parsed.port(),
            user,
            password,
            redacted: redacted_url(&parsed),
        })
    }
}

/// Classifies `--source`/`repo:`: an existing directory, else a remote URL.
pub fn locate(source: &str) -> Result<Location, String> {
    if !source.contains("://") && Path::new(source).is_dir() {
        return Ok(Location::Dir(PathBuf::from(source)));
    }
    if source.starts_with('/') || source.starts_with('.') {
        return Err(format!("source {source}: not a directory"));
    }
    RemoteUrl::parse(source).map(Location::Git)
}

fn redacted_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Best effort for a URL that does not parse: drop everything between
/// `://` and the last `@` of the authority.
fn redact_unparsed(raw: &str) -> Option<String> {
    let (scheme, rest) = raw.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("{scheme}://{host}{path}"))
}

fn redact_scp(raw: &str) -> String {
    match raw.split_once('@') {
        Some((_, rest)) => rest.to_string(),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_transport() {
        let u = RemoteUrl::parse("ssh://git@git.example.com:2222/infra/hosts.git").unwrap();
        assert_eq!(u.transport, Transport::Ssh);
        assert_eq!(u.host.as_deref(), Some("git.example.com"));
        assert_eq!(u.port, Some(2222));
        assert_eq!(u.ssh_user(), "git");
        assert_eq!(u.redacted(), "ssh://git.example.com:2222/infra/hosts.git");

        let u = RemoteUrl::parse("git@github.com:org/hosts.git").unwrap();
        assert_eq!(u.transport, Transport::Ssh);
        assert_eq!(u.host.as_deref(), Some("github.com"));
        assert_eq!(u.port, None);
        assert_eq!(u.user.as_deref(), Some("git"));
        assert_eq!(u.redacted(), "github.com:org/hosts.git");

        let u = RemoteUrl::parse("file:///srv/git/hosts.git").unwrap();
        assert_eq!(u.transport, Transport::File);
        assert_eq!(u.for_libgit2(), "file:///srv/git/hosts.git");

        let u = RemoteUrl::parse("git://127.0.0.1:9418/hosts.git").unwrap();
        assert_eq!(u.transport, Transport::Git);

        assert!(
            RemoteUrl::parse("http://h/x.git")
                .unwrap_err()
                .contains("https")
        );
        assert!(RemoteUrl::parse("ftp://h/x.git").is_err());
        assert!(RemoteUrl::parse("just-a-word").is_err());
    }

    #[test]
    fn credentials_never_show() {
        let u = RemoteUrl::parse("https://bot:s3cr%40t@git.example.com/hosts.git").unwrap();
        assert_eq!(u.user.as_deref(), Some("bot"));
        assert_eq!(u.redacted(), "https://git.example.com/hosts.git");
        assert_eq!(format!("{u}"), "https://git.example.com/hosts.git");
        assert!(!format!("{u:?}").contains("s3cr"));
        let msg = "failed https://bot:s3cr%40t@git.example.com/hosts.git: s3cr@t";
        let scrubbed = u.scrub(msg);
        assert!(!scrubbed.contains("s3cr"), "{scrubbed}");
        let e = RemoteUrl::parse("https://bot:pw@:bad/").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        let e = RemoteUrl::parse("http://bot:pw@h/x").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn directories_and_urls_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(locate(d).unwrap(), Location::Dir(dir.path().into()));
        assert!(matches!(
            locate("file:///srv/x.git").unwrap(),
            Location::Git(_)
        ));
        assert!(
            locate("/no/such/dir")
                .unwrap_err()
                .contains("not a directory")
        );
    }
}
