//! Reading the fleet's notes cheaply: the tip of each host's notes refs and
//! nothing of their history. Every command that reads the fleet (`fleet
//! status`, `fleet promote`, `fleet report`, `validate --fleet`, `secrets
//! recipients`) calls [`read_tips`].
//!
//! One listing of the remote's refs (branch tips and notes refs, protocol
//! v2 `ls-refs` with ref prefixes), then one fetch of the refs it needs:
//! each host's `refs/notes/trueup-latest/<host>` (one commit without parent,
//! one note), and the history ref `refs/notes/trueup/<host>` at depth 1 only
//! for a host that has no latest ref yet (an older agent) or when the
//! caller wants the last runs. Nothing is written anywhere but a temporary repository. A server
//! gix cannot talk to is read again with libgit2 (whole notes refs).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;

use git2::{Oid, Repository};
use tracing::{debug, warn};

use crate::config::Auth;
use crate::report::notes::{LATEST_PREFIX, NOTES_PREFIX, parse_note};
use crate::source::remote::{RemoteUrl, Transport};
use crate::source::transport::{Connector, SourceError};

/// What the fleet's refs say, read from their tips.
#[derive(Debug, Clone, Default)]
pub struct FleetTips {
    /// Branch name (without `refs/heads/`) → the commit it points at.
    pub heads: HashMap<String, Oid>,
    /// One entry per host with a notes ref, sorted by host.
    pub hosts: Vec<HostTip>,
}

/// One host's notes as their tips tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTip {
    /// The host part of the ref name (`web1` in `refs/notes/trueup/web1`).
    pub host: String,
    /// `refs/notes/trueup/<host>`, the history ref.
    pub notes_ref: String,
    /// The newest note's text, or why it could not be read. `Ok(None)`: the
    /// refs hold no note.
    pub latest: Result<Option<String>, String>,
    /// The notes in the history ref's tip tree (annotated commit, text),
    /// the host's last runs, newest first; filled when asked for.
    pub recent: Vec<(String, String)>,
}

/// Reads the tips of every host's notes refs from `remote`; with
/// `with_recent`, also each history ref's tip tree (the last runs).
pub fn read_tips(
    remote: &RemoteUrl,
    auth: &Auth,
    with_recent: bool,
) -> Result<FleetTips, SourceError> {
    let tmp = tempfile::tempdir().map_err(|e| SourceError::Cache {
        path: "(temporary directory)".into(),
        detail: e.to_string(),
    })?;
    let cache_err = |e: git2::Error| SourceError::Cache {
        path: tmp.path().display().to_string(),
        detail: e.message().to_string(),
    };
    let repo = Repository::init_bare(tmp.path()).map_err(cache_err)?;
    let conn = Connector::new(remote, auth)?;
    let refs = if remote.transport == Transport::File {
        None
    } else {
        match shallow_fetch(
            tmp.path(),
            remote,
            auth,
            conn.basic_credentials(),
            with_recent,
        ) {
            Ok(refs) => Some(refs),
            Err(e) => {
                warn!(reason = %e, "reading the notes tips with protocol v2 failed; reading them with libgit2");
                None
            }
        }
    };
    let refs = match refs {
        Some(refs) => refs,
        None => {
            // libgit2: protocol v0, whole notes refs (no shallow fetch).
            let refs = conn.list_refs(&repo)?;
            if refs.iter().any(|(n, _)| is_notes_ref(n)) {
                conn.fetch(
                    &repo,
                    &[
                        &format!("+{NOTES_PREFIX}*:{NOTES_PREFIX}*"),
                        &format!("+{LATEST_PREFIX}*:{LATEST_PREFIX}*"),
                    ],
                )?;
            }
            refs
        }
    };
    Ok(read_fetched(&repo, &refs, with_recent))
}

fn is_notes_ref(name: &str) -> bool {
    name.starts_with(NOTES_PREFIX) || name.starts_with(LATEST_PREFIX)
}

/// Lists heads and notes refs, then fetches the notes tips at depth 1 into
/// the repository at `path`. Returns every listed ref.
fn shallow_fetch(
    path: &std::path::Path,
    remote: &RemoteUrl,
    auth: &Auth,
    basic: Option<(String, String)>,
    with_recent: bool,
) -> Result<Vec<(String, Oid)>, String> {
    let repo = crate::source::poll::open(path, remote, auth)?;
    let url = gix::url::parse(remote.for_libgit2()).map_err(|e| e.to_string())?;
    let credentials = move |action| crate::source::poll::credentials(&basic, action);

    // 1. The listing: branch tips and both kinds of notes refs.
    let listing = repo
        .remote_at(url.clone())
        .and_then(|r| {
            r.with_refspecs(
                [
                    "refs/heads/*:refs/heads/*".to_string(),
                    format!("{NOTES_PREFIX}*:{NOTES_PREFIX}*"),
                    format!("{LATEST_PREFIX}*:{LATEST_PREFIX}*"),
                ]
                .iter()
                .map(String::as_str),
                gix::remote::Direction::Fetch,
            )
        })
        .map_err(|e| remote.scrub(&e.to_string()))?;
    let (ref_map, _) = listing
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| remote.scrub(&e.to_string()))?
        .with_credentials(credentials.clone())
        .ref_map(gix::progress::Discard, Default::default())
        .map_err(|e| remote.scrub(&e.to_string()))?;
    let mut refs = Vec::new();
    for r in &ref_map.remote_refs {
        let (name, target, _) = r.unpack();
        if let Some(target) = target {
            let id = Oid::from_bytes(target.as_bytes()).map_err(|e| e.to_string())?;
            refs.push((name.to_string(), id));
        }
    }
    let latest_hosts: std::collections::HashSet<&str> = refs
        .iter()
        .filter_map(|(n, _)| n.strip_prefix(LATEST_PREFIX))
        .collect();
    let history_needed = with_recent
        || refs
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(NOTES_PREFIX))
            .any(|h| !latest_hosts.contains(h));
    let mut specs = Vec::new();
    if !latest_hosts.is_empty() {
        specs.push(format!("+{LATEST_PREFIX}*:{LATEST_PREFIX}*"));
    }
    if history_needed {
        specs.push(format!("+{NOTES_PREFIX}*:{NOTES_PREFIX}*"));
    }
    if specs.is_empty() {
        return Ok(refs);
    }

    // 2. The tips, and nothing behind them.
    let fetch = repo
        .remote_at(url)
        .and_then(|r| {
            r.with_refspecs(
                specs.iter().map(String::as_str),
                gix::remote::Direction::Fetch,
            )
        })
        .map_err(|e| remote.scrub(&e.to_string()))?;
    let interrupt = AtomicBool::new(false);
    let mut prepared = fetch
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| remote.scrub(&e.to_string()))?
        .with_credentials(credentials)
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| remote.scrub(&e.to_string()))?
        // One packed-refs file for thousands of refs, not a file (and a lock)
        // for each.
        .with_write_packed_refs_only(true);
    // Latest-note commits have no parent: asking for depth 1 would only make
    // the server compute shallow boundaries for nothing. History refs do
    // have parents, and only their tip is wanted.
    if history_needed {
        let depth = NonZeroU32::new(1).ok_or("depth")?;
        prepared = prepared.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth));
    }
    let outcome = prepared
        .receive(gix::progress::Discard, &interrupt)
        .map_err(|e| remote.scrub(&e.to_string()))?;
    debug!(
        refs = refs.len(),
        protocol = outcome.handshake.server_protocol_version as u8,
        "notes tips fetched"
    );
    Ok(refs)
}

/// Builds the per-host view from the refs fetched into `repo`.
fn read_fetched(repo: &Repository, refs: &[(String, Oid)], with_recent: bool) -> FleetTips {
    let heads = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?.to_string(), *o)))
        .collect();
    let mut hosts: Vec<&str> = refs
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix(NOTES_PREFIX)
                .or_else(|| n.strip_prefix(LATEST_PREFIX))
        })
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let with_latest: std::collections::HashSet<&str> = refs
        .iter()
        .filter_map(|(n, _)| n.strip_prefix(LATEST_PREFIX))
        .collect();
    let hosts = hosts
        .into_iter()
        .map(|host| {
            let notes_ref = format!("{NOTES_PREFIX}{host}");
            let latest_ref = format!("{LATEST_PREFIX}{host}");
            let has_latest = with_latest.contains(host);
            let read = |r: &str| tree_notes(repo, r).map_err(|e| e.message().to_string());
            let mut recent = Vec::new();
            let latest = if has_latest {
                read(&latest_ref).map(newest)
            } else {
                read(&notes_ref).map(|notes| {
                    recent = notes.clone();
                    newest(notes)
                })
            };
            if with_recent && has_latest {
                recent = read(&notes_ref).unwrap_or_default();
            }
            recent.sort_by_cached_key(|(_, t)| std::cmp::Reverse(started(t)));
            HostTip {
                host: host.to_string(),
                notes_ref,
                latest,
                recent,
            }
        })
        .collect();
    FleetTips { heads, hosts }
}

fn started(text: &str) -> String {
    parse_note(text)
        .map(|(_, r)| r.started_at)
        .unwrap_or_default()
}

/// The note whose run started last.
fn newest(notes: Vec<(String, String)>) -> Option<String> {
    notes.into_iter().map(|(_, t)| t).max_by_key(|t| started(t))
}

/// Every note in the tip tree of `reference`: (annotated commit, text).
/// An absent ref holds no note.
fn tree_notes(repo: &Repository, reference: &str) -> Result<Vec<(String, String)>, git2::Error> {
    if repo.refname_to_id(reference).is_err() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for item in repo.notes(Some(reference))? {
        let (note, annotated) = item?;
        let blob = repo.find_blob(note)?;
        out.push((
            annotated.to_string(),
            String::from_utf8_lossy(blob.content()).into_owned(),
        ));
    }
    Ok(out)
}
