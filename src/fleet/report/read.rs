//! Reads what the fleet report needs from the repository, in one call
//! (`read_fleet`), so a faster reader can replace it without touching the
//! rest: the notes at the tip of every `refs/notes/trueup/*` ref, which of
//! them the tip wrote last, and the branches (for tips, how far behind,
//! and commit subjects and authors).
//!
//! Everything is fetched into a throwaway bare repository; the remote is
//! only read.

use std::collections::HashMap;

use git2::{Delta, Oid, Repository};

use super::model::{CommitDetails, CommitGraph, HostNotes, MAX_NOTE_BYTES, NoteText};
use crate::config::Auth;
use crate::report::notes::NOTES_PREFIX;
use crate::source::remote::RemoteUrl;
use crate::source::transport::{Connector, SourceError};

/// How many notes of one host are read (a hostile ref could hold
/// millions); the timeline shows the newest of them.
const MAX_NOTES_PER_HOST: usize = 1000;

/// The fleet as fetched: the hosts' notes, and the repository to ask
/// about commits.
pub struct FleetNotes {
    pub hosts: Vec<HostNotes>,
    heads: HashMap<String, Oid>,
    repo: Repository,
    _dir: tempfile::TempDir,
}

/// Fetches every host's notes ref and the branches from `remote`.
pub fn read_fleet(remote: &RemoteUrl, auth: &Auth) -> Result<FleetNotes, SourceError> {
    let dir = tempfile::tempdir().map_err(|e| SourceError::Cache {
        path: "(temporary directory)".into(),
        detail: e.to_string(),
    })?;
    let cache_err = |e: git2::Error| SourceError::Cache {
        path: dir.path().display().to_string(),
        detail: e.message().to_string(),
    };
    let repo = Repository::init_bare(dir.path()).map_err(cache_err)?;
    let conn = Connector::new(remote, auth)?;
    let refs = conn.list_refs(&repo)?;
    let heads: HashMap<String, Oid> = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?.to_string(), *o)))
        .collect();
    let mut notes: Vec<String> = refs
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.starts_with(NOTES_PREFIX))
        .collect();
    notes.sort();
    notes.dedup();
    let mut specs = vec![format!("+{NOTES_PREFIX}*:{NOTES_PREFIX}*")];
    if !heads.is_empty() {
        // The branches' history: commit subjects, and how far a host is
        // behind its branch. In a fleet the host branches share main's
        // history, so this is about one branch's worth.
        specs.push("+refs/heads/*:refs/heads/*".into());
    }
    if !notes.is_empty() || !heads.is_empty() {
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        conn.fetch(&repo, &specs)?;
    }
    let hosts = notes
        .into_iter()
        .map(|reference| {
            let notes = tip_notes(&repo, &reference).map_err(|e| e.message().to_string());
            HostNotes {
                notes_ref: reference,
                notes,
            }
        })
        .collect();
    Ok(FleetNotes {
        hosts,
        heads,
        repo,
        _dir: dir,
    })
}

/// The notes in the tree of `reference`'s tip commit, each marked when
/// the tip commit added or changed it.
fn tip_notes(repo: &Repository, reference: &str) -> Result<Vec<NoteText>, git2::Error> {
    let tip = repo.find_reference(reference)?.peel_to_commit()?;
    let tree = tip.tree()?;
    let parent_tree = tip.parent(0).ok().map(|p| p.tree()).transpose()?;
    let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
    let newest: Vec<Oid> = diff
        .deltas()
        .filter(|d| matches!(d.status(), Delta::Added | Delta::Modified))
        .map(|d| d.new_file().id())
        .collect();
    let mut out = Vec::new();
    for item in repo.notes(Some(reference))?.take(MAX_NOTES_PER_HOST) {
        let (note, annotated) = item?;
        let blob = repo.find_blob(note)?;
        let text = if blob.size() > MAX_NOTE_BYTES {
            Err(format!(
                "the note is {} bytes, more than the {MAX_NOTE_BYTES} this report reads",
                blob.size()
            ))
        } else {
            Ok(String::from_utf8_lossy(blob.content()).into_owned())
        };
        out.push(NoteText {
            commit: annotated.to_string(),
            text,
            newest: newest.contains(&note),
        });
    }
    Ok(out)
}

impl CommitGraph for FleetNotes {
    fn commit(&self, id: &str) -> Option<CommitDetails> {
        let c = self.repo.find_commit(Oid::from_str(id).ok()?).ok()?;
        let author = c.author();
        let name = String::from_utf8_lossy(author.name_bytes()).into_owned();
        let email = String::from_utf8_lossy(author.email_bytes()).into_owned();
        Some(CommitDetails {
            subject: c
                .summary_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            author: format!("{name} <{email}>"),
            time: c.time().seconds(),
        })
    }

    fn tip(&self, branch: &str) -> Option<String> {
        self.heads.get(branch).map(Oid::to_string)
    }

    fn behind(&self, tip: &str, applied: &str) -> Option<usize> {
        let (ahead, _) = self
            .repo
            .graph_ahead_behind(Oid::from_str(tip).ok()?, Oid::from_str(applied).ok()?)
            .ok()?;
        Some(ahead)
    }
}
