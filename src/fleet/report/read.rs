//! Reads what the fleet report needs from the repository: the hosts'
//! notes through the fleet's one notes reader (`fleet::tips::read_tips`,
//! with each host's last runs), and the branches' history, for tips, how
//! far a host is behind, and commit subjects and authors.
//!
//! Everything is fetched into throwaway repositories; the remote is only
//! read.

use std::collections::HashMap;

use git2::{Oid, Repository};

use super::model::{CommitDetails, CommitGraph, HostNotes, NoteText};
use crate::config::Auth;
use crate::fleet::tips::{HostTip, fetch_distinct, read_tips};
use crate::source::remote::RemoteUrl;
use crate::source::transport::{Connector, SourceError};

/// The fleet as fetched: the hosts' notes, and the repository to ask
/// about commits.
pub struct FleetNotes {
    pub hosts: Vec<HostNotes>,
    heads: HashMap<String, Oid>,
    repo: Repository,
    _dir: tempfile::TempDir,
}

/// Reads every host's notes from `reports` and the branches from
/// `remote` (the same repository when there is no reports repository).
pub fn read_fleet(
    remote: &RemoteUrl,
    reports: &RemoteUrl,
    auth: &Auth,
) -> Result<FleetNotes, SourceError> {
    let tips = read_tips(reports, auth, true)?;
    let hosts = tips.hosts.into_iter().map(host_notes).collect();

    let dir = tempfile::tempdir().map_err(|e| SourceError::Cache {
        path: "(temporary directory)".into(),
        detail: e.to_string(),
    })?;
    let repo = Repository::init_bare(dir.path()).map_err(|e| SourceError::Cache {
        path: dir.path().display().to_string(),
        detail: e.message().to_string(),
    })?;
    // The branches' history, through one branch per distinct tip.
    let heads: HashMap<String, Oid> = if reports == remote {
        tips.heads
    } else {
        Connector::new(remote, auth)?
            .list_refs(&repo)?
            .into_iter()
            .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?.to_string(), o)))
            .collect()
    };
    let branches: Vec<(String, Oid)> = heads
        .iter()
        .map(|(b, o)| (format!("refs/heads/{b}"), *o))
        .collect();
    fetch_distinct(&Connector::new(remote, auth)?, &repo, &branches)?;
    Ok(FleetNotes {
        hosts,
        heads,
        repo,
        _dir: dir,
    })
}

/// A host's notes as the report reads them: its last runs, the newest
/// marked.
fn host_notes(tip: HostTip) -> HostNotes {
    let latest = match tip.latest {
        Err(e) => {
            return HostNotes {
                notes_ref: tip.notes_ref,
                notes: Err(e),
            };
        }
        Ok(l) => l,
    };
    let mut marked = false;
    let mut notes: Vec<NoteText> = tip
        .recent
        .into_iter()
        .map(|(commit, text)| {
            let newest = !marked && latest.as_deref() == Some(text.as_str());
            marked |= newest;
            NoteText {
                commit,
                text: Ok(text),
                newest,
            }
        })
        .collect();
    if let (false, Some(text)) = (marked, latest) {
        // Newer than the history ref (a heartbeat kept in the latest ref).
        notes.push(NoteText {
            commit: String::new(),
            text: Ok(text),
            newest: true,
        });
    }
    HostNotes {
        notes_ref: tip.notes_ref,
        notes: Ok(notes),
    }
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
