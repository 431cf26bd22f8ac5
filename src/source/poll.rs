//! The poll: "did my branch move?" asked with Git protocol v2 through
//! gitoxide (`gix`), so an unchanged poll costs the same few hundred bytes
//! whatever the size of the fleet.
//!
//! libgit2 speaks only protocol v0, whose ref advertisement lists every
//! branch and notes ref of the repository on each connection (1.45 MB at
//! 10,000 hosts). Here the client sends `ls-refs` with a `ref-prefix` for
//! the one host branch; when the tip is already in the cache nothing else
//! is sent, and when it moved only the missing objects are fetched (`have`
//! lines from the cache). A server without v2 answers with its v0/v1
//! advertisement and gix carries on with that: the fallback costs bytes,
//! never correctness. git:// and https:// (reqwest and rustls) are spoken
//! in-process; ssh:// spawns OpenSSH (`ssh`), with the agent's key and
//! known_hosts.
//!
//! Anything this path cannot do — an unknown host key that the agent may
//! record (`accept_new_host_keys`), a server gix does not understand — is
//! reported as a [`PollError`], and [`super::git::GitCache::update`] then
//! polls again with libgit2, whose errors are the ones users see.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::remote::{RemoteUrl, Transport};
use crate::config::Auth;

/// Why the v2 poll did not give an answer (the libgit2 path is tried next).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PollError(pub String);

/// What the remote said about the host branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// The branch's tip, now in the cache under the tracking ref.
    Tip {
        commit: gix::ObjectId,
        /// Whether a pack was received (false: the cache was current).
        fetched: bool,
        /// The protocol the server spoke: 2, or 1/0 from a server without v2.
        protocol: u8,
    },
    /// The remote has no such branch.
    Missing,
}

/// Asks for `refs/heads/<branch>` only and brings `tracking` in the bare
/// repository at `cache` up to its tip, fetching only when it moved.
pub fn poll_branch(
    cache: &Path,
    remote: &RemoteUrl,
    auth: &Auth,
    basic: Option<(String, String)>,
    branch: &str,
    tracking: &str,
) -> Result<Polled, PollError> {
    let err = |what: &str, e: &dyn std::error::Error| {
        PollError(remote.scrub(&format!("{what}: {}", chain(e))))
    };
    let repo = open(cache, remote, auth)
        .map_err(|e| PollError(format!("opening the cache with gix: {e}")))?;
    let head = format!("refs/heads/{branch}");
    let refspec = format!("+{head}:{tracking}");
    let url = gix::url::parse(remote.for_libgit2()).map_err(|e| err("the URL", &e))?;
    let gix_remote = repo
        .remote_at(url)
        .and_then(|r| r.with_refspecs(Some(refspec.as_str()), gix::remote::Direction::Fetch))
        .map_err(|e| err("the remote", &e))?;
    let mut connection = gix_remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| err("connecting", &e))?;
    if remote.transport == Transport::Https {
        let options = https_options(&repo, remote, auth)?;
        connection = connection.with_transport_options(options);
    }
    // Credentials come from the agent's files only: never a prompt, never
    // a helper from the environment.
    let connection = connection.with_credentials(move |action| credentials(&basic, action));
    let interrupt = AtomicBool::new(false);
    let outcome = with_progress(|progress| {
        connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| err("listing the branch", &e))?
            .with_write_packed_refs_only(false)
            .receive(progress, &interrupt)
            .map_err(|e| err("fetching", &e))
    })?;
    let protocol = outcome.handshake.server_protocol_version as u8;
    let Some(remote_tip) = outcome.ref_map.remote_refs.iter().find_map(|r| {
        let (name, target, _) = r.unpack();
        (name == head.as_bytes()).then_some(target).flatten()
    }) else {
        return Ok(Polled::Missing);
    };
    let commit = remote_tip.to_owned();
    let fetched = matches!(outcome.status, gix::remote::fetch::Status::Change { .. });
    Ok(Polled::Tip {
        commit,
        fetched,
        protocol,
    })
}

/// How often the counters of a fetch in progress are looked at.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `fetch` with a progress tree whose counters (objects and bytes
/// received, written into `counter()`s deep inside gitoxide) a watcher
/// thread reads while it runs: each time they moved, the run counts as
/// progressing (`resource::tool::progress`, the agent's watchdog). A slow
/// fetch that works is not taken as hung; one that moves nothing is.
fn with_progress<T>(fetch: impl FnOnce(gix::progress::tree::Item) -> T) -> T {
    let root: std::sync::Arc<gix::progress::tree::Root> =
        gix::progress::tree::root::Options::default().into();
    let item = root.add_child("fetch");
    let done = AtomicBool::new(false);
    let tick = crate::resource::tool::progress;
    std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_counters(&root, &done, PROGRESS_EVERY, &tick));
        let result = fetch(item);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        // Not a moment longer than the fetch.
        watcher.thread().unpark();
        result
    })
}

/// Until `done`, every `every`: calls `tick` if the sum of the tree's
/// counters changed.
fn watch_counters(
    root: &gix::progress::tree::Root,
    done: &AtomicBool,
    every: std::time::Duration,
    tick: &(dyn Fn() + Sync),
) {
    let mut snapshot = Vec::new();
    let mut last = 0usize;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park_timeout(every);
        root.sorted_snapshot(&mut snapshot);
        let moved: usize = snapshot
            .iter()
            .filter_map(|(_, task)| task.progress.as_ref())
            .map(|p| p.step.load(std::sync::atomic::Ordering::Relaxed))
            .fold(0usize, usize::wrapping_add);
        if moved != last {
            last = moved;
            tick();
        }
    }
}

/// An error and every cause under it, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Answers gix's credential requests from the agent's files only: never a
/// prompt, never a helper from the environment.
pub fn credentials(
    basic: &Option<(String, String)>,
    action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    match (action, basic) {
        (gix::credentials::helper::Action::Get(ctx), Some((user, password))) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                credentials: gix::sec::identity::Credentials::UsernamePassword {
                    username: user.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            }))
        }
        _ => Ok(None),
    }
}

/// Opens a repository for gix, isolated from the user's and the system's Git
/// configuration: only what the agent configures applies.
pub fn open(cache: &Path, remote: &RemoteUrl, auth: &Auth) -> Result<gix::Repository, String> {
    let mut overrides = vec!["protocol.version=2".to_string()];
    if remote.transport == Transport::Ssh {
        overrides.push(format!("core.sshCommand={}", ssh_command(auth)?));
        overrides.push("ssh.variant=ssh".into());
    }
    let opts = gix::open::Options::isolated()
        .config_overrides(overrides)
        .with_enforced_trust(gix::sec::Trust::Full);
    gix::open_opts(cache, opts).map_err(|e| e.to_string())
}

/// The https transport's options: the repository's (isolated) defaults,
/// and a TLS client that trusts the system's CA certificates plus
/// `auth.ca_file`, as the libgit2 path does ([`super::tls`]).
///
/// gitoxide speaks https through reqwest and rustls (ring), not libcurl and
/// OpenSSL: libcurl initialised OpenSSL from an ELF constructor in every
/// process, whatever it did. reqwest's rustls backend ignores
/// `http.sslCAInfo`, so the CA goes to the client builder here.
fn https_options(
    repo: &gix::Repository,
    remote: &RemoteUrl,
    auth: &Auth,
) -> Result<Box<dyn std::any::Any>, PollError> {
    use gix::protocol::transport::client::blocking_io::http;
    let mut options = repo
        .transport_options(remote.for_libgit2(), None)
        .map_err(|e| PollError(remote.scrub(&format!("the https options: {}", chain(&e)))))?
        .and_then(|o| o.downcast::<http::Options>().ok())
        .map(|o| *o)
        .unwrap_or_default();
    let extra_roots = match &auth.ca_file {
        Some(file) => {
            let pem = std::fs::read(file)
                .map_err(|e| PollError(format!("auth.ca_file {}: {e}", file.display())))?;
            reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| PollError(format!("auth.ca_file {}: {e}", file.display())))?
        }
        None => Vec::new(),
    };
    let configure_client = move |builder: reqwest::blocking::ClientBuilder| {
        // The process-wide provider reqwest builds its TLS client with
        // (`rustls-no-provider`); already there after the first poll.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(builder.tls_certs_merge(extra_roots.clone()))
    };
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(configure_client)),
        configure_request: None,
    };
    options.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(backend)));
    Ok(Box::new(options))
}

/// The OpenSSH command line: the agent's key only, host keys checked
/// against the agent's known_hosts, never a prompt. A host key that is not
/// known fails here; the libgit2 path then decides (and records it when
/// `accept_new_host_keys` is on), so both paths share one trust decision.
pub fn ssh_command(auth: &Auth) -> Result<String, String> {
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .map_err(|e| format!("cannot pass '{s}' to ssh: {e}"))
    };
    let mut words = vec![
        "ssh".to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "ConnectTimeout=30".into(),
    ];
    if let Some(key) = &auth.ssh_key {
        words.extend([
            "-i".into(),
            quote(&key.display().to_string())?,
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
        ]);
    }
    // Without `auth.known_hosts` OpenSSH's own defaults (~/.ssh/known_hosts,
    // /etc/ssh/ssh_known_hosts) are the files libgit2's path reads too.
    if let Some(file) = &auth.known_hosts {
        words.extend([
            "-o".into(),
            quote(&format!("UserKnownHostsFile={}", file.display()))?,
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
        ]);
    } else if let Some(own) = &auth.own_known_hosts {
        // trueup's own file first, then the user's (the global file stays
        // OpenSSH's default), as the libgit2 path reads them.
        let mut files = vec![own.display().to_string()];
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            files.push(format!(
                "{}/.ssh/known_hosts",
                std::path::Path::new(&home).display()
            ));
        }
        words.extend([
            "-o".into(),
            quote(&format!("UserKnownHostsFile={}", files.join(" ")))?,
        ]);
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A fetch whose counters move keeps ticking; one whose counters stand
    /// still does not tick at all (the watchdog then sees it hung).
    #[test]
    fn the_watcher_ticks_only_while_the_counters_move() {
        let root: std::sync::Arc<gix::progress::tree::Root> =
            gix::progress::tree::root::Options::default().into();
        let item = root.add_child("fetch");
        // gitoxide sets up each of its counters (with a unit) before counting.
        item.init(None, Some(gix::progress::unit::label("bytes")));
        let ticks = AtomicUsize::new(0);
        let tick = || {
            ticks.fetch_add(1, Ordering::SeqCst);
        };
        let done = AtomicBool::new(false);
        let every = Duration::from_millis(5);
        let (still, moved, after) = std::thread::scope(|s| {
            let watcher = s.spawn(|| watch_counters(&root, &done, every, &tick));
            // Standing still: no tick however long it waits.
            std::thread::sleep(every * 10);
            let still = ticks.load(Ordering::SeqCst);
            // Bytes arriving, as gitoxide counts them: a tick once seen.
            item.inc_by(4096);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while ticks.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(every);
            }
            let moved = ticks.load(Ordering::SeqCst);
            std::thread::sleep(every * 10);
            let after = ticks.load(Ordering::SeqCst);
            done.store(true, Ordering::SeqCst);
            watcher.thread().unpark();
            (still, moved, after)
        });
        assert_eq!(still, 0, "ticked while nothing moved");
        assert!(moved > 0, "no tick after the counter moved");
        assert_eq!(after, moved, "ticked again without moving");
    }

    #[test]
    fn ssh_command_uses_only_the_agents_key_and_known_hosts() {
        let auth = Auth {
            ssh_key: Some("/etc/trueup/deploy key".into()),
            known_hosts: Some("/etc/trueup/known_hosts".into()),
            ..Auth::default()
        };
        let cmd = ssh_command(&auth).unwrap();
        let words = shlex::split(&cmd).unwrap();
        assert!(
            words
                .windows(2)
                .any(|w| w == ["-i", "/etc/trueup/deploy key"]),
            "{cmd}"
        );
        assert!(words.contains(&"BatchMode=yes".to_string()), "{cmd}");
        assert!(
            words.contains(&"StrictHostKeyChecking=yes".to_string()),
            "{cmd}"
        );
        assert!(
            words.contains(&"UserKnownHostsFile=/etc/trueup/known_hosts".to_string()),
            "{cmd}"
        );
        assert!(
            words.contains(&"GlobalKnownHostsFile=/dev/null".to_string()),
            "{cmd}"
        );
    }
}
