//! Run reports as Git notes: each host writes `refs/notes/trueup/<host>` in
//! the cache repository, on the commit it ran, and pushes only that ref.
//!
//! A note is one summary line, a blank line, then the JSON `RunReport`. A
//! note is written when something changed — a new commit, another status,
//! another drift count, a change made — and otherwise once per heartbeat.
//! A push that is not a fast-forward (the ref moved on the remote: a wiped
//! cache, a second machine with the same name) fetches the remote ref,
//! re-applies this host's newer notes on top and tries again, a bounded
//! number of times. A failed push never fails the run; `state.json` keeps
//! `unpushed` and the next run tries again.

use std::collections::HashMap;

use git2::{Oid, Repository, Signature};
use tracing::{debug, info, warn};

use super::{RunReport, RunStatus, SCHEMA_VERSION};
use crate::source::remote::RemoteUrl;
use crate::source::transport::{Connector, SourceError};
use crate::state::NoteMark;

/// Prefix of every host's notes ref.
pub const NOTES_PREFIX: &str = "refs/notes/trueup/";

/// How many times a rejected push is merged and retried in one run.
pub const PUSH_ATTEMPTS: usize = 5;

/// Why a note could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the note is empty")]
    Empty,
    #[error("the note has no blank line between the summary and the report")]
    NoBlankLine,
    #[error("the report in the note is not valid JSON for a RunReport: {0}")]
    Json(String),
    #[error("the report has schema {0}; this trueup reads schema {SCHEMA_VERSION}")]
    Schema(u32),
}

/// The note's text: summary line, blank line, pretty JSON report.
pub fn format_note(report: &RunReport) -> String {
    let summary: String = report
        .headline()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let json = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".into());
    format!("{summary}\n\n{json}\n")
}

/// Splits a note into its summary line and report. Never panics, whatever
/// the text.
pub fn parse_note(text: &str) -> Result<(String, RunReport), NoteError> {
    if text.trim().is_empty() {
        return Err(NoteError::Empty);
    }
    let (summary, rest) = text.split_once('\n').ok_or(NoteError::NoBlankLine)?;
    let rest = rest
        .strip_prefix('\n')
        .or_else(|| rest.strip_prefix("\r\n"))
        .ok_or(NoteError::NoBlankLine)?;
    // Read the schema first, so a newer shape says so instead of failing
    // on some field.
    #[derive(serde::Deserialize)]
    struct Version {
        schema: u32,
    }
    let version: Version =
        serde_json::from_str(rest).map_err(|e| NoteError::Json(e.to_string()))?;
    if version.schema != SCHEMA_VERSION {
        return Err(NoteError::Schema(version.schema));
    }
    let report: RunReport =
        serde_json::from_str(rest).map_err(|e| NoteError::Json(e.to_string()))?;
    Ok((summary.trim_end_matches('\r').to_string(), report))
}

/// `refs/notes/trueup/<host>`, with anything a ref name cannot hold
/// replaced.
pub fn notes_ref(host: &str) -> String {
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", "_.");
    }
    let name = name.trim_start_matches('.').trim_end_matches(".lock");
    let candidate = format!("{NOTES_PREFIX}{name}");
    if !name.is_empty() && !name.ends_with('.') && git2::Reference::is_valid_name(&candidate) {
        candidate
    } else {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(host.as_bytes()));
        format!("{NOTES_PREFIX}host-{}", &digest[..16])
    }
}

/// Drift still outstanding after the run: found and left, or failed.
pub fn outstanding(report: &RunReport) -> usize {
    let s = &report.summary;
    s.drift + s.failed + s.skipped
}

/// The state a run left the host in, for comparing runs: a run that
/// repaired everything left it in sync.
fn settled(status: RunStatus) -> RunStatus {
    match status {
        RunStatus::Converged => RunStatus::InSync,
        s => s,
    }
}

fn status_from_str(s: &str) -> Option<RunStatus> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

/// Whether this run deserves a note: no note yet, a change made, another
/// commit, another resulting status or drift count, or the heartbeat is due.
pub fn note_due(
    last: Option<&NoteMark>,
    report: &RunReport,
    heartbeat_secs: u64,
    now: u64,
) -> bool {
    let Some(commit) = report.source.commit.as_deref() else {
        return false;
    };
    let Some(last) = last else {
        return true;
    };
    report.summary.changed > 0
        || last.commit != commit
        || status_from_str(&last.status).map(settled) != Some(settled(report.status))
        || last.drift != outstanding(report)
        || now.saturating_sub(last.at) >= heartbeat_secs
}

/// What `state.json` records about a note just written.
pub fn mark(report: &RunReport, now: u64) -> Option<NoteMark> {
    let status = serde_json::to_value(report.status)
        .ok()?
        .as_str()?
        .to_string();
    Some(NoteMark {
        commit: report.source.commit.clone()?,
        status,
        drift: outstanding(report),
        at: now,
        unpushed: true,
    })
}

fn signature(host: &str) -> Result<Signature<'static>, git2::Error> {
    Signature::now(&format!("trueup {host}"), &format!("trueup@{host}"))
}

/// Writes `report` as the note on its commit under this host's ref, in the
/// cache. Returns the new notes commit.
pub fn write_note(repo: &Repository, report: &RunReport) -> Result<Oid, git2::Error> {
    let commit = report
        .source
        .commit
        .as_deref()
        .ok_or_else(|| git2::Error::from_str("the report names no commit"))?;
    let oid = Oid::from_str(commit)?;
    let sig = signature(&report.host)?;
    let reference = notes_ref(&report.host);
    repo.note(
        &sig,
        &sig,
        Some(&reference),
        oid,
        &format_note(report),
        true,
    )?;
    let tip = repo.refname_to_id(&reference)?;
    debug!(notes_ref = %reference, notes_commit = %tip, commit, "note written");
    Ok(tip)
}

/// Where a fetched copy of the remote's notes ref is kept while merging.
fn remote_copy(reference: &str) -> String {
    format!(
        "refs/trueup/notes-remote/{}",
        reference.trim_start_matches(NOTES_PREFIX)
    )
}

/// Pushes this host's notes ref (and nothing else), merging and retrying
/// when the remote moved.
pub fn push_notes(
    repo: &Repository,
    remote: &RemoteUrl,
    auth: &crate::config::Auth,
    host: &str,
) -> Result<(), SourceError> {
    let reference = notes_ref(host);
    if repo.refname_to_id(&reference).is_err() {
        return Ok(());
    }
    let conn = Connector::new(remote, auth)?;
    let refspec = format!("{reference}:{reference}");
    let mut last = String::new();
    for attempt in 1..=PUSH_ATTEMPTS {
        match conn.push(repo, &refspec)? {
            Ok(()) => {
                info!(notes_ref = %reference, attempt, "notes pushed");
                return Ok(());
            }
            Err(reason) => {
                warn!(notes_ref = %reference, attempt, reason = %reason, "notes push rejected; merging");
                last = reason;
                let copy = remote_copy(&reference);
                conn.fetch(repo, &[&format!("+{reference}:{copy}")])?;
                merge_notes(repo, &reference, &copy, host).map_err(|e| SourceError::Cache {
                    path: repo.path().display().to_string(),
                    detail: format!("merging {reference}: {}", e.message()),
                })?;
            }
        }
    }
    Err(SourceError::Remote {
        url: remote.redacted().to_string(),
        detail: format!(
            "pushing {reference}: still rejected after {PUSH_ATTEMPTS} attempts ({last})"
        ),
    })
}

/// Puts this host's notes that the remote lacks on top of the remote's
/// notes commit: the notes changed locally since the common history (or
/// every local note that differs, without one) are written again, newest
/// local content winning.
pub fn merge_notes(
    repo: &Repository,
    reference: &str,
    remote_copy: &str,
    host: &str,
) -> Result<(), git2::Error> {
    let Ok(theirs) = repo.refname_to_id(remote_copy) else {
        return Ok(());
    };
    let ours = repo.refname_to_id(reference)?;
    if ours == theirs || repo.graph_descendant_of(ours, theirs)? {
        return Ok(());
    }
    let base = repo.merge_base(ours, theirs).ok();
    let notes_in = |commit: Oid| -> Result<HashMap<Oid, Oid>, git2::Error> {
        let tmp = "refs/trueup/notes-merge/tmp";
        repo.reference(tmp, commit, true, "trueup: read notes")?;
        let map = repo
            .notes(Some(tmp))?
            .collect::<Result<Vec<(Oid, Oid)>, _>>()?
            .into_iter()
            .map(|(note, annotated)| (annotated, note))
            .collect();
        repo.find_reference(tmp)?.delete()?;
        Ok(map)
    };
    let our_notes = notes_in(ours)?;
    let reference_notes = notes_in(base.unwrap_or(theirs))?;
    let mut changed: Vec<(Oid, Oid)> = our_notes
        .into_iter()
        .filter(|(annotated, note)| reference_notes.get(annotated) != Some(note))
        .collect();
    changed.sort();
    repo.reference(reference, theirs, true, "trueup: take the remote notes")?;
    let sig = signature(host)?;
    for (annotated, note) in &changed {
        let blob = repo.find_blob(*note)?;
        let text = String::from_utf8_lossy(blob.content());
        repo.note(&sig, &sig, Some(reference), *annotated, &text, true)?;
    }
    info!(notes_ref = %reference, reapplied = changed.len(), "notes merged onto the remote's");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Mode, SourceInfo};

    fn report(status: RunStatus, changed: usize, drift: usize) -> RunReport {
        let mut r = RunReport::failed_early(
            "web1",
            Mode::Apply,
            false,
            std::time::SystemTime::now(),
            SourceInfo {
                location: "git://h/x.git".into(),
                branch: Some("hosts/web1".into()),
                commit: Some("a".repeat(40)),
                ..SourceInfo::default()
            },
            status,
            vec![],
        );
        r.summary.changed = changed;
        r.summary.drift = drift;
        r
    }

    #[test]
    fn notes_round_trip() {
        let mut r = report(RunStatus::Refused, 0, 0);
        r.errors = vec!["commit aaaa is not signed\nsecond line".into()];
        let text = format_note(&r);
        let (summary, back) = parse_note(&text).unwrap();
        assert_eq!(back, r);
        assert!(
            summary.starts_with(
                "trueup apply refused aaaaaaaaaaaa: commit aaaa is not signed second line"
            ),
            "{summary}"
        );
        assert_eq!(text.lines().nth(1), Some(""));
    }

    #[test]
    fn broken_notes_are_errors_not_panics() {
        assert_eq!(parse_note(""), Err(NoteError::Empty));
        assert_eq!(parse_note("only a line"), Err(NoteError::NoBlankLine));
        assert_eq!(parse_note("a\nb\n{}"), Err(NoteError::NoBlankLine));
        assert!(matches!(parse_note("a\n\n{"), Err(NoteError::Json(_))));
        assert!(matches!(parse_note("a\n\n[1,2]"), Err(NoteError::Json(_))));
        assert_eq!(
            parse_note("a\n\n{\"schema\": 2}"),
            Err(NoteError::Schema(2))
        );
        assert!(matches!(
            parse_note("a\n\n{\"schema\": 1}"),
            Err(NoteError::Json(_))
        ));
        let deep = format!("a\n\n{}", "[".repeat(100_000));
        assert!(parse_note(&deep).is_err());
        let r = report(RunStatus::InSync, 0, 0);
        let crlf = format_note(&r).replacen('\n', "\r\n", 2);
        assert_eq!(parse_note(&crlf).unwrap().1, r);
    }

    #[test]
    fn heartbeat_rule() {
        let hb = 3600;
        let converged = report(RunStatus::Converged, 3, 0);
        assert!(note_due(None, &converged, hb, 1000));
        let m = mark(&converged, 1000).unwrap();
        assert_eq!(m.status, "converged");
        // In sync after converging: nothing new.
        let in_sync = report(RunStatus::InSync, 0, 0);
        assert!(!note_due(Some(&m), &in_sync, hb, 1010));
        // ...until the heartbeat.
        assert!(note_due(Some(&m), &in_sync, hb, 1000 + hb));
        // A repair is always news.
        let m2 = mark(&in_sync, 1010).unwrap();
        assert!(note_due(Some(&m2), &converged, hb, 1020));
        // Drift found, then the same drift again, then more drift.
        let drift = report(RunStatus::Drift, 0, 2);
        assert!(note_due(Some(&m2), &drift, hb, 1020));
        let m3 = mark(&drift, 1020).unwrap();
        assert!(!note_due(Some(&m3), &drift, hb, 1030));
        assert!(note_due(
            Some(&m3),
            &report(RunStatus::Drift, 0, 3),
            hb,
            1030
        ));
        // Another commit.
        let mut other = in_sync.clone();
        other.source.commit = Some("b".repeat(40));
        assert!(note_due(Some(&m2), &other, hb, 1030));
        // No commit, no note.
        let mut none = in_sync;
        none.source.commit = None;
        assert!(!note_due(None, &none, hb, 1030));
    }

    #[test]
    fn notes_refs_are_valid_for_any_host_name() {
        assert_eq!(notes_ref("web1"), "refs/notes/trueup/web1");
        assert_eq!(
            notes_ref("web1.example.com"),
            "refs/notes/trueup/web1.example.com"
        );
        assert_eq!(notes_ref("a b"), "refs/notes/trueup/a_b");
        for weird in ["", ".", "..", "x.lock", "a..b", "~^:", "é"] {
            let r = notes_ref(weird);
            assert!(git2::Reference::is_valid_name(&r), "{weird:?} -> {r}");
        }
    }

    #[test]
    fn merge_reapplies_local_notes_on_the_remote_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let sig = Signature::now("t", "t@x").unwrap();
        let tree = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let c1 = repo.commit(None, &sig, &sig, "1", &tree, &[]).unwrap();
        let c2 = repo.commit(None, &sig, &sig, "2", &tree, &[]).unwrap();
        let r = notes_ref("web1");
        // The remote's history: a note on c1.
        repo.note(&sig, &sig, Some(&r), c1, "remote note on c1", true)
            .unwrap();
        let theirs = repo.refname_to_id(&r).unwrap();
        repo.reference(&remote_copy(&r), theirs, true, "").unwrap();
        // Ours, from a wiped cache: unrelated history with a note on c2.
        repo.find_reference(&r).unwrap().delete().unwrap();
        repo.note(&sig, &sig, Some(&r), c2, "local note on c2", true)
            .unwrap();
        merge_notes(&repo, &r, &remote_copy(&r), "web1").unwrap();
        let tip = repo.refname_to_id(&r).unwrap();
        assert!(repo.graph_descendant_of(tip, theirs).unwrap());
        assert_eq!(
            repo.find_note(Some(&r), c1).unwrap().message(),
            Ok("remote note on c1")
        );
        assert_eq!(
            repo.find_note(Some(&r), c2).unwrap().message(),
            Ok("local note on c2")
        );
    }
}
