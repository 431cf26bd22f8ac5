//! Talking to a Git remote with libgit2: credentials (an SSH key file, a
//! token or `user:password` read from a file), SSH host keys checked against
//! known_hosts, an extra CA for https, and errors that say what failed —
//! authentication, the host key, TLS, reaching the host — with every
//! credential scrubbed out.
//!
//! Used by the fetch (`source::git`), the notes push (`report::notes`) and
//! `fleet status`. All calls block.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode, Oid, RemoteCallbacks,
    Repository,
};

use super::known_hosts::{self, HostKeyVerdict};
use super::remote::{RemoteUrl, Transport};
use crate::config::Auth;

/// Why talking to the remote failed. Messages carry the redacted URL and
/// never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: authentication failed: {detail}")]
    Auth { url: String, detail: String },
    #[error("{url}: SSH host key not trusted: {detail}")]
    HostKey { url: String, detail: String },
    #[error("{url}: TLS failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url}: host unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: branch '{branch}' does not exist on the remote")]
    MissingBranch { url: String, branch: String },
    #[error("{url}: {detail}")]
    Remote { url: String, detail: String },
    #[error("{detail}")]
    Credentials { detail: String },
    #[error("cache {path}: {detail}")]
    Cache { path: String, detail: String },
    #[error("offline: branch '{branch}' is not in the cache {path}; run once without --offline")]
    NotCached { branch: String, path: String },
}

/// A secret read from a file. Never printed.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What the callbacks saw, to tell failures apart afterwards.
#[derive(Debug, Default)]
struct Seen {
    ssh_key_tries: u32,
    password_tries: u32,
    /// The credentials callback gave up (no key, or it was refused).
    auth_problem: Option<String>,
    host_key_problem: Option<String>,
}

/// One remote with the agent's `auth` settings.
pub struct Connector {
    url: RemoteUrl,
    ssh_key: Option<PathBuf>,
    known_hosts: Vec<PathBuf>,
    /// Where an accepted new host key is written, if accepting is on.
    record_new_host_keys: Option<PathBuf>,
    basic: Option<(String, Secret)>,
    /// `auth.ca_file`, handed to libgit2 before it first connects.
    ca_file: Option<PathBuf>,
    tls: std::cell::OnceCell<Result<(), SourceError>>,
    seen: Rc<RefCell<Seen>>,
}

impl Connector {
    /// Reads the credential files the transport needs and loads the CA file.
    pub fn new(url: &RemoteUrl, auth: &Auth) -> Result<Connector, SourceError> {
        let mut basic = None;
        if url.transport == Transport::Https {
            if let Some(file) = &auth.credentials_file {
                let text = read_secret(file, "auth.credentials_file")?;
                let Some((user, password)) = text.0.split_once(':') else {
                    return Err(SourceError::Credentials {
                        detail: format!(
                            "auth.credentials_file {}: expected one line 'user:password'",
                            file.display()
                        ),
                    });
                };
                basic = Some((user.to_string(), Secret(password.to_string())));
            } else if let Some(file) = &auth.token_file {
                let token = read_secret(file, "auth.token_file")?;
                // Forges take a token as the password of basic auth; the user
                // name is the URL's, or one GitHub and Gitea accept.
                let user = url.user.clone().unwrap_or_else(|| "x-access-token".into());
                basic = Some((user, token));
            }
        }
        let known_hosts = match &auth.known_hosts {
            Some(p) => vec![p.clone()],
            None => auth
                .own_known_hosts
                .iter()
                .cloned()
                .chain(default_known_hosts())
                .collect(),
        };
        // A new key goes to trueup's own file only: never to
        // /etc/ssh/ssh_known_hosts (which, with no $HOME as under systemd,
        // used to be the first file) nor to a user's.
        let record_new_host_keys = auth
            .accept_new_host_keys
            .then(|| auth.known_hosts.clone().or(auth.own_known_hosts.clone()))
            .flatten();
        Ok(Connector {
            url: url.clone(),
            ssh_key: auth.ssh_key.clone(),
            known_hosts,
            record_new_host_keys,
            basic,
            ca_file: auth.ca_file.clone(),
            tls: std::cell::OnceCell::new(),
            seen: Rc::default(),
        })
    }

    /// Gives libgit2 the CA certificates https trusts (the system's, then
    /// `auth.ca_file`), once, before its first connection: not when the
    /// connector is made, so a run that never connects through libgit2
    /// never starts it.
    fn libgit2_tls(&self) -> Result<(), SourceError> {
        if self.url.transport != Transport::Https {
            return Ok(());
        }
        self.tls
            .get_or_init(|| {
                super::tls::start_libgit2();
                super::tls::load_system_roots().map_err(|e| SourceError::Tls {
                    url: self.url.redacted().to_string(),
                    detail: format!("loading the system CA certificates: {}", e.message()),
                })?;
                match &self.ca_file {
                    Some(file) => use_ca_file(file, &self.url),
                    None => Ok(()),
                }
            })
            .clone()
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The https basic-auth user and password read from the agent's files,
    /// for the protocol v2 poll (`source::poll`).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        self.basic.as_ref().map(|(u, p)| (u.clone(), p.0.clone()))
    }

    /// Callbacks for one connection, answering credentials and certificate
    /// questions. Each credential is offered once per connection: a refused
    /// one is an authentication failure, not a loop.
    pub fn callbacks(&self) -> Result<RemoteCallbacks<'_>, SourceError> {
        self.libgit2_tls()?;
        *self.seen.borrow_mut() = Seen::default();
        let mut cb = RemoteCallbacks::new();
        cb.credentials(move |_url, user_from_url, allowed| {
            self.credentials(user_from_url, allowed)
        });
        cb.certificate_check(move |cert, _host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // X.509: libgit2 has verified it against the CA store.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(key) = hostkey.hostkey() else {
                return Err(self.host_key_refused("the server sent no raw host key".into()));
            };
            self.check_host_key(key)
        });
        // Bytes moving count as progress for the agent's watchdog: a slow
        // fetch or push that works is not taken as hung.
        cb.transfer_progress(|_| {
            crate::resource::tool::progress();
            true
        });
        cb.push_transfer_progress(|_, _, _| crate::resource::tool::progress());
        Ok(cb)
    }

    fn credentials(
        &self,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let mut seen = self.seen.borrow_mut();
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = user_from_url.unwrap_or(self.url.ssh_user());
            let Some(key) = &self.ssh_key else {
                let msg = "the server wants an SSH key and auth.ssh_key is not set".to_string();
                seen.auth_problem = Some(msg.clone());
                return Err(auth_error(&msg));
            };
            seen.ssh_key_tries += 1;
            if seen.ssh_key_tries > 1 {
                let msg = format!(
                    "the server refused the key {} for user '{user}'",
                    key.display()
                );
                seen.auth_problem = Some(msg.clone());
                return Err(auth_error(&msg));
            }
            return Cred::ssh_key(user, None, key, None);
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user_from_url.unwrap_or(self.url.ssh_user()));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let Some((user, password)) = &self.basic else {
                let msg =
                    "the server asks for credentials; set auth.credentials_file or auth.token_file"
                        .to_string();
                seen.auth_problem = Some(msg.clone());
                return Err(auth_error(&msg));
            };
            seen.password_tries += 1;
            if seen.password_tries > 1 {
                let msg = format!("the server refused the credentials for user '{user}'");
                seen.auth_problem = Some(msg.clone());
                return Err(auth_error(&msg));
            }
            return Cred::userpass_plaintext(user, &password.0);
        }
        let msg = format!("the server asks for an unsupported kind of credential ({allowed:?})");
        seen.auth_problem = Some(msg.clone());
        Err(auth_error(&msg))
    }

    fn check_host_key(&self, key: &[u8]) -> Result<CertificateCheckStatus, git2::Error> {
        let host = self.url.host.as_deref().unwrap_or("");
        let name = known_hosts::lookup_name(host, self.url.port);
        let mut text = String::new();
        for file in &self.known_hosts {
            match std::fs::read_to_string(file) {
                Ok(t) => {
                    text.push_str(&t);
                    text.push('\n');
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self
                        .host_key_refused(format!("reading known_hosts {}: {e}", file.display())));
                }
            }
        }
        let kind = known_hosts::key_type(key).unwrap_or("unknown");
        let files = self
            .known_hosts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match known_hosts::check(&text, &name, key) {
            HostKeyVerdict::Known => Ok(CertificateCheckStatus::CertificateOk),
            HostKeyVerdict::Revoked => Err(self.host_key_refused(format!(
                "the {kind} key of {name} is marked @revoked in {files}"
            ))),
            HostKeyVerdict::Changed => Err(self.host_key_refused(format!(
                "the {kind} key of {name} does not match {files} (the host key changed, or someone is in the middle)"
            ))),
            HostKeyVerdict::Unknown => match &self.record_new_host_keys {
                Some(file) => match known_hosts::append(file, &name, key) {
                    Ok(()) => {
                        tracing::warn!(host = %name, key_type = kind, known_hosts = %file.display(), "accepted and recorded a new SSH host key");
                        Ok(CertificateCheckStatus::CertificateOk)
                    }
                    Err(e) => Err(self.host_key_refused(format!(
                        "recording the new host key of {name} in {}: {e}",
                        file.display()
                    ))),
                },
                None => Err(self.host_key_refused(format!(
                    "{name} is not in {files}; add its key, or set auth.accept_new_host_keys: true"
                ))),
            },
        }
    }

    fn host_key_refused(&self, msg: String) -> git2::Error {
        self.seen.borrow_mut().host_key_problem = Some(msg.clone());
        git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, msg)
    }

    /// Turns a libgit2 error into what failed, scrubbed of credentials.
    pub fn classify(&self, e: &git2::Error) -> SourceError {
        let url = self.url.redacted().to_string();
        let seen = self.seen.borrow();
        let detail = self.url.scrub(e.message());
        if let Some(p) = &seen.host_key_problem {
            return SourceError::HostKey {
                url,
                detail: p.clone(),
            };
        }
        if let Some(p) = &seen.auth_problem {
            return SourceError::Auth {
                url,
                detail: p.clone(),
            };
        }
        let lower = detail.to_ascii_lowercase();
        if e.code() == ErrorCode::Auth
            || lower.contains("authentication")
            || lower.contains("status code: 401")
            || lower.contains("status code: 403")
        {
            return SourceError::Auth { url, detail };
        }
        if e.code() == ErrorCode::Certificate
            || e.class() == ErrorClass::Ssl
            || lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("ssl")
        {
            return SourceError::Tls { url, detail };
        }
        if matches!(e.class(), ErrorClass::Net | ErrorClass::Os)
            && (lower.contains("connect")
                || lower.contains("resolve")
                || lower.contains("timed out")
                || lower.contains("unreachable")
                || lower.contains("refused"))
        {
            return SourceError::Unreachable { url, detail };
        }
        SourceError::Remote { url, detail }
    }

    /// Lists the remote's refs, then, on the same connection, downloads
    /// the objects of the refs `want` picks from the listing (refspecs),
    /// `depth` commits deep when given. No local ref is written (the
    /// refspecs' destinations are not used: nothing updates the tips), as
    /// thousands of refs would cost a lock file each.
    /// Returns the listing.
    pub fn download_listed(
        &self,
        repo: &Repository,
        want: impl FnOnce(&[(String, Oid)]) -> Vec<String>,
        depth: Option<i32>,
    ) -> Result<Vec<(String, Oid)>, SourceError> {
        let mut remote = repo
            .remote_anonymous(self.url.for_libgit2())
            .map_err(|e| self.classify(&e))?;
        let mut conn = remote
            .connect_auth(git2::Direction::Fetch, Some(self.callbacks()?), None)
            .map_err(|e| self.classify(&e))?;
        let listed: Vec<(String, Oid)> = conn
            .list()
            .map_err(|e| self.classify(&e))?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let specs = want(&listed);
        if specs.is_empty() {
            return Ok(listed);
        }
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(self.callbacks()?)
            .download_tags(git2::AutotagOption::None);
        if let Some(depth) = depth {
            fo.depth(depth);
        }
        conn.remote()
            .download(&specs, Some(&mut fo))
            .map_err(|e| self.classify(&e))?;
        Ok(listed)
    }

    /// Lists the remote's refs (`git ls-remote`): one round trip, no pack.
    pub fn list_refs(&self, repo: &Repository) -> Result<Vec<(String, Oid)>, SourceError> {
        let mut remote = repo
            .remote_anonymous(self.url.for_libgit2())
            .map_err(|e| self.classify(&e))?;
        let conn = remote
            .connect_auth(git2::Direction::Fetch, Some(self.callbacks()?), None)
            .map_err(|e| self.classify(&e))?;
        let heads = conn.list().map_err(|e| self.classify(&e))?;
        Ok(heads
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect())
    }

    /// Fetches `refspecs` (no tags, no FETCH_HEAD, no pruning).
    pub fn fetch(&self, repo: &Repository, refspecs: &[&str]) -> Result<(), SourceError> {
        let mut remote = repo
            .remote_anonymous(self.url.for_libgit2())
            .map_err(|e| self.classify(&e))?;
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(self.callbacks()?)
            .download_tags(git2::AutotagOption::None)
            .update_fetchhead(false)
            .prune(git2::FetchPrune::Off);
        remote
            .fetch(refspecs, Some(&mut fo), Some("trueup: fetch"))
            .map_err(|e| self.classify(&e))
    }

    /// Pushes one refspec. `Ok(Err(reason))` when the remote turned the
    /// update down as not a fast-forward (fetch, merge and try again).
    pub fn push(
        &self,
        repo: &Repository,
        refspec: &str,
    ) -> Result<Result<(), String>, SourceError> {
        self.push_all(repo, &[refspec])
    }

    /// Pushes several refspecs in one connection (one ref advertisement:
    /// receive-pack has no protocol v2). `Ok(Err(reason))` when the remote
    /// turned one down as not a fast-forward.
    pub fn push_all(
        &self,
        repo: &Repository,
        refspecs: &[&str],
    ) -> Result<Result<(), String>, SourceError> {
        let mut remote = repo
            .remote_anonymous(self.url.for_libgit2())
            .map_err(|e| self.classify(&e))?;
        let rejected: RefCell<Option<String>> = RefCell::new(None);
        let mut cb = self.callbacks()?;
        cb.push_update_reference(|_name, status| {
            if let Some(s) = status {
                *rejected.borrow_mut() = Some(s.to_string());
            }
            Ok(())
        });
        let mut po = git2::PushOptions::new();
        po.remote_callbacks(cb);
        let result = remote.push(refspecs, Some(&mut po));
        drop(po);
        match result {
            Err(e) if e.code() == ErrorCode::NotFastForward => Ok(Err(self.url.scrub(e.message()))),
            Err(e) => Err(self.classify(&e)),
            Ok(()) => match rejected.into_inner() {
                None => Ok(Ok(())),
                Some(reason) => {
                    let l = reason.to_ascii_lowercase();
                    if l.contains("fast-forward")
                        || l.contains("fetch first")
                        || l.contains("stale")
                        || l.contains("failed to update ref")
                        || l.contains("failed to lock")
                    {
                        Ok(Err(reason))
                    } else {
                        Err(SourceError::Remote {
                            url: self.url.redacted().to_string(),
                            detail: format!("push rejected: {}", self.url.scrub(&reason)),
                        })
                    }
                }
            },
        }
    }
}

fn auth_error(msg: &str) -> git2::Error {
    git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, msg)
}

fn read_secret(file: &Path, field: &str) -> Result<Secret, SourceError> {
    let text = std::fs::read_to_string(file).map_err(|e| SourceError::Credentials {
        detail: format!("{field} {}: {e}", file.display()),
    })?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(SourceError::Credentials {
            detail: format!("{field} {}: the file is empty", file.display()),
        });
    }
    Ok(Secret(line))
}

fn default_known_hosts() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(PathBuf::from(home).join(".ssh/known_hosts"));
    }
    files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    files
}

/// Adds a CA file to libgit2's TLS trust store (besides the system's). The
/// store is process-wide, so each file is loaded once.
fn use_ca_file(file: &Path, url: &RemoteUrl) -> Result<(), SourceError> {
    static LOADED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if loaded.iter().any(|p| p == file) {
        return Ok(());
    }
    if !file.is_file() {
        return Err(SourceError::Tls {
            url: url.redacted().to_string(),
            detail: format!("auth.ca_file {}: no such file", file.display()),
        });
    }
    // SAFETY: libgit2's global options are not synchronised; every caller
    // goes through the LOADED lock above.
    unsafe { git2::opts::set_ssl_cert_file(file) }.map_err(|e| SourceError::Tls {
        url: url.redacted().to_string(),
        detail: format!("auth.ca_file {}: {}", file.display(), e.message()),
    })?;
    loaded.push(file.to_path_buf());
    Ok(())
}
