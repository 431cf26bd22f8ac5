//! Reading the fleet's notes cheaply: the tip of each host's notes refs and
//! nothing of their history. Every command that reads the fleet (`fleet
//! status`, `fleet promote`, `fleet report`, `validate --fleet`, `secrets
//! recipients`) calls [`read_tips`].
//!
//! One listing of the remote's refs (branch tips and notes refs: every ref
//! a fleet has, so protocol v2's ref prefixes would save nothing here),
//! then, on the same connection, the objects of the notes tips: each
//! host's `refs/notes/trueup-latest/<host>` (one commit without parent,
//! one note), and the history ref `refs/notes/trueup/<host>` at depth 1
//! only for a host that has no latest ref yet (an older agent) or when the
//! caller wants the last runs. No ref is written, not even in the
//! temporary repository the objects go to: the notes are read by the ids
//! of the listing (at 10,000 hosts, writing 20,000 refs cost more than
//! the rest of `fleet status`).

use std::collections::HashMap;

use git2::{Oid, Repository};
use tracing::debug;

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
    // One listing (every branch and notes ref: a v2 ls-refs would list the
    // same refs), then, on the same connection, the notes tips only: the
    // latest-note commits (no parent) and, when wanted or when a host has
    // no latest ref yet, the history refs at depth 1.
    // Latest-note commits have no parent; history refs do, and only their
    // tip is wanted: depth 1 (file:// has no shallow support in libgit2).
    let depth = (remote.transport != Transport::File).then_some(1);
    let refs = conn.download_listed(
        &repo,
        |listed| {
            let latest: std::collections::HashSet<&str> = listed
                .iter()
                .filter_map(|(n, _)| n.strip_prefix(LATEST_PREFIX))
                .collect();
            let history_needed = with_recent
                || listed
                    .iter()
                    .filter_map(|(n, _)| n.strip_prefix(NOTES_PREFIX))
                    .any(|h| !latest.contains(h));
            let mut specs = Vec::new();
            if !latest.is_empty() {
                specs.push(format!("+{LATEST_PREFIX}*:{LATEST_PREFIX}*"));
            }
            if history_needed {
                specs.push(format!("+{NOTES_PREFIX}*:{NOTES_PREFIX}*"));
            }
            specs
        },
        depth,
    )?;
    debug!(refs = refs.len(), ?depth, "notes tips fetched");
    Ok(read_fetched(&repo, &refs, with_recent))
}

/// Fetches the objects behind `refs` (full ref names and their ids) into
/// `repo`, writing one local ref per distinct id: a fleet's 10,000 host
/// branches point at a handful of commits, and writing 10,000 local refs
/// costs more than the objects. Peeled entries (`^{}`) are skipped.
pub fn fetch_distinct(
    conn: &Connector,
    repo: &Repository,
    refs: &[(String, Oid)],
) -> Result<(), SourceError> {
    let mut by_id: HashMap<Oid, &str> = HashMap::new();
    for (name, id) in refs.iter().filter(|(n, _)| !n.ends_with("^{}")) {
        let chosen = by_id.entry(*id).or_insert(name);
        if name.as_str() < *chosen {
            *chosen = name;
        }
    }
    let mut specs: Vec<String> = by_id.values().map(|n| format!("+{n}:{n}")).collect();
    if specs.is_empty() {
        return Ok(());
    }
    specs.sort();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    conn.fetch(repo, &specs)
}

/// Builds the per-host view from the objects fetched into `repo`, found
/// by the ids the listing gave (no local ref is needed).
fn read_fetched(repo: &Repository, refs: &[(String, Oid)], with_recent: bool) -> FleetTips {
    let heads = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?.to_string(), *o)))
        .collect();
    let history: HashMap<&str, Oid> = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix(NOTES_PREFIX)?, *o)))
        .collect();
    let latest: HashMap<&str, Oid> = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix(LATEST_PREFIX)?, *o)))
        .collect();
    let mut hosts: Vec<&str> = history.keys().chain(latest.keys()).copied().collect();
    hosts.sort_unstable();
    hosts.dedup();
    let hosts = hosts
        .into_iter()
        .map(|host| {
            let read = |tip: Option<&Oid>| match tip {
                Some(tip) => tree_notes(repo, *tip).map_err(|e| e.message().to_string()),
                None => Ok(vec![]),
            };
            let mut recent = Vec::new();
            let latest = match latest.get(host) {
                Some(tip) => read(Some(tip)).map(newest),
                None => read(history.get(host)).map(|notes| {
                    recent = notes.clone();
                    newest(notes)
                }),
            };
            if with_recent && recent.is_empty() {
                recent = read(history.get(host)).unwrap_or_default();
            }
            recent.sort_by_cached_key(|(_, t)| std::cmp::Reverse(started(t)));
            HostTip {
                host: host.to_string(),
                notes_ref: format!("{NOTES_PREFIX}{host}"),
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

/// Every note in the tree of the notes commit `tip`: (annotated commit,
/// text), through fan-out directories (`ab/cdef...`) as Git writes them
/// for many notes.
fn tree_notes(repo: &Repository, tip: Oid) -> Result<Vec<(String, String)>, git2::Error> {
    let tree = repo.find_commit(tip)?.tree()?;
    let mut out = Vec::new();
    collect_notes(repo, &tree, &mut String::new(), &mut out)?;
    Ok(out)
}

fn collect_notes(
    repo: &Repository,
    tree: &git2::Tree,
    prefix: &mut String,
    out: &mut Vec<(String, String)>,
) -> Result<(), git2::Error> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        let len = prefix.len();
        prefix.push_str(name);
        let hex = prefix.len() <= 40 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        match entry.kind() {
            Some(git2::ObjectType::Blob) if hex && prefix.len() == 40 => {
                let blob = repo.find_blob(entry.id())?;
                out.push((
                    prefix.to_ascii_lowercase(),
                    String::from_utf8_lossy(blob.content()).into_owned(),
                ));
            }
            Some(git2::ObjectType::Tree) if hex && prefix.len() < 40 => {
                let sub = repo.find_tree(entry.id())?;
                collect_notes(repo, &sub, prefix, out)?;
            }
            _ => {}
        }
        prefix.truncate(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Notes in a fan-out tree (`ab/cdef...`, as Git writes many notes)
    /// and flat are read alike; other entries are not notes.
    #[test]
    fn notes_are_read_flat_and_through_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let flat = "1".repeat(40);
        let fanned = format!("ab{}", "c".repeat(38));
        let blob = |t: &str| repo.blob(t.as_bytes()).unwrap();
        let mut sub = repo.treebuilder(None).unwrap();
        sub.insert(&fanned[2..], blob("fanned"), 0o100644).unwrap();
        let sub = sub.write().unwrap();
        let mut top = repo.treebuilder(None).unwrap();
        top.insert(&flat, blob("flat"), 0o100644).unwrap();
        top.insert("ab", sub, 0o040000).unwrap();
        top.insert("README", blob("not a note"), 0o100644).unwrap();
        let tree = repo.find_tree(top.write().unwrap()).unwrap();
        let tip = repo.commit(None, &sig, &sig, "notes", &tree, &[]).unwrap();
        let mut notes = tree_notes(&repo, tip).unwrap();
        notes.sort();
        assert_eq!(
            notes,
            vec![(flat, "flat".to_string()), (fanned, "fanned".to_string())]
        );
    }
}
