//! Run reports as Git notes: each host writes its notes refs in the cache
//! repository, on the commit it ran, and pushes only its own refs.
//!
//! A note is one summary line, a blank line, then the JSON `RunReport`. A
//! note is written when something changed — a new commit, another status,
//! another drift count, a change made — and otherwise once per heartbeat.
//!
//! Two refs per host keep the notes small at fleet scale (docs/scale.md):
//! - `refs/notes/trueup/<host>`, the history: every note that says
//!   something new (a change, a failure, a refusal, a rollback, another
//!   status or drift count) is a commit on it, only ever fast-forwarded.
//!   Its tip tree holds the notes of the last [`KEEP_NOTES`] commits the
//!   host ran; older notes leave the tree but stay in history, and each
//!   notes commit's message names the commit it annotates, so
//!   `git log refs/notes/trueup/<host>` is the host's whole record.
//! - `refs/notes/trueup-latest/<host>`, the latest note whatever it says,
//!   as one commit without parent that each note replaces (force-pushed).
//!   A heartbeat (nothing new since the last note in history) goes only
//!   here, so heartbeats never pile up; fleet readers fetch only this tip.
//!
//! A push that is not a fast-forward (the history ref moved on the remote:
//! a wiped cache, a second machine with the same name) fetches the remote
//! ref, re-applies this host's newer notes on top and tries again, a
//! bounded number of times. A failed push never fails the run;
//! `state.json` keeps `unpushed` and the next run tries again.

use std::collections::HashMap;

use git2::{Oid, Repository, Signature};
use tracing::{debug, info, warn};

use super::{RunReport, RunStatus, SCHEMA_VERSION};
use crate::source::remote::RemoteUrl;
use crate::source::transport::{Connector, SourceError};
use crate::state::NoteMark;

/// Prefix of every host's notes history ref.
pub const NOTES_PREFIX: &str = "refs/notes/trueup/";

/// Prefix of every host's latest-note ref (one commit, replaced each time).
pub const LATEST_PREFIX: &str = "refs/notes/trueup-latest/";

/// How many annotated commits keep their note in the history ref's tip
/// tree (older notes stay reachable in history).
pub const KEEP_NOTES: usize = 20;

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

/// `refs/notes/trueup-latest/<host>`: the ref holding only the latest note.
pub fn latest_ref(host: &str) -> String {
    let history = notes_ref(host);
    format!(
        "{LATEST_PREFIX}{}",
        history.trim_start_matches(NOTES_PREFIX)
    )
}

/// Drift still outstanding after the run: found and left, or failed.
pub fn outstanding(report: &RunReport) -> usize {
    let s = &report.summary;
    // `drift` counts what was drifted at the start, repaired or not.
    s.drift.saturating_sub(s.changed).max(s.failed + s.skipped)
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

/// Writes `report` as the note on its commit in the cache: always as the
/// latest note, and in the history unless it is a heartbeat (nothing new
/// since the newest note there). Returns the new latest-note commit.
pub fn write_note(repo: &Repository, report: &RunReport) -> Result<Oid, git2::Error> {
    let commit = report
        .source
        .commit
        .as_deref()
        .ok_or_else(|| git2::Error::from_str("the report names no commit"))?;
    let annotated = Oid::from_str(commit)?;
    let text = format_note(report);
    let history = notes_ref(&report.host);
    let heartbeat = is_heartbeat(repo, &history, report)?;
    if !heartbeat {
        append_note(repo, &history, annotated, &text, &report.host)?;
    }
    let latest = latest_ref(&report.host);
    let blob = repo.blob(text.as_bytes())?;
    let mut tree = repo.treebuilder(None)?;
    tree.insert(annotated.to_string(), blob, 0o100644)?;
    let tree = repo.find_tree(tree.write()?)?;
    let sig = signature(&report.host)?;
    let message = notes_message(annotated, &text);
    let tip = repo.commit(None, &sig, &sig, &message, &tree, &[])?;
    repo.reference(&latest, tip, true, "trueup: latest note")?;
    debug!(notes_ref = %history, latest_ref = %latest, heartbeat, commit, "note written");
    Ok(tip)
}

/// A notes commit's message: it names the annotated commit, then the
/// note's summary line.
fn notes_message(annotated: Oid, text: &str) -> String {
    let summary = text.lines().next().unwrap_or("");
    format!("Note on {annotated}\n\n{summary}\n")
}

/// The commit a notes commit's message names (`Note on <id>`), if any.
pub fn annotated_commit(message: &str) -> Option<Oid> {
    let first = message.lines().next()?;
    Oid::from_str(first.strip_prefix("Note on ")?.trim()).ok()
}

/// Whether `report` says nothing the newest note in the history does not:
/// same commit, same resulting status and drift, nothing changed, and not
/// a failure, refusal, rollback or error (those always go to history).
fn is_heartbeat(repo: &Repository, history: &str, report: &RunReport) -> Result<bool, git2::Error> {
    if report.summary.changed > 0
        || !matches!(
            report.status,
            RunStatus::InSync | RunStatus::Drift | RunStatus::Converged
        )
    {
        return Ok(false);
    }
    let Some(newest) = newest_in_history(repo, history)? else {
        return Ok(false);
    };
    Ok(newest.source.commit == report.source.commit
        && settled(newest.status) == settled(report.status)
        && outstanding(&newest) == outstanding(report))
}

/// The report of the note the history's tip commit added: its message
/// names the annotated commit (`Note on <id>`). Start times have a
/// resolution of a second, so two runs in one second cannot be ordered by
/// them; a history written before those messages falls back to them.
fn newest_in_history(repo: &Repository, history: &str) -> Result<Option<RunReport>, git2::Error> {
    let Ok(tip) = repo.refname_to_id(history) else {
        return Ok(None);
    };
    let named = repo
        .find_commit(tip)?
        .message()
        .ok()
        .and_then(annotated_commit);
    if let Some(annotated) = named
        && let Ok(note) = repo.find_note(Some(history), annotated)
    {
        return Ok(note
            .message()
            .ok()
            .and_then(|text| parse_note(text).ok())
            .map(|(_, report)| report));
    }
    Ok(tip_notes(repo, history)?
        .into_iter()
        .filter_map(|(_, text)| parse_note(&text).ok().map(|(_, r)| r))
        .max_by(|a, b| a.started_at.cmp(&b.started_at)))
}

/// The notes in the tip tree of `reference`: (annotated commit, text).
pub fn tip_notes(repo: &Repository, reference: &str) -> Result<Vec<(Oid, String)>, git2::Error> {
    if repo.refname_to_id(reference).is_err() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for item in repo.notes(Some(reference))? {
        let (note, annotated) = item?;
        let blob = repo.find_blob(note)?;
        out.push((
            annotated,
            String::from_utf8_lossy(blob.content()).into_owned(),
        ));
    }
    Ok(out)
}

/// Adds (or replaces) the note on `annotated` as a new commit on the history
/// ref `reference`, a fast-forward of its tip, whose tree keeps the notes
/// of the newest [`KEEP_NOTES`] annotated commits (by the reports' start
/// time). A note leaving the tree stays in the commits before.
pub fn append_note(
    repo: &Repository,
    reference: &str,
    annotated: Oid,
    text: &str,
    host: &str,
) -> Result<Oid, git2::Error> {
    let parent = match repo.refname_to_id(reference) {
        Ok(id) => Some(repo.find_commit(id)?),
        Err(_) => None,
    };
    let blob = repo.blob(text.as_bytes())?;
    let mut entries: Vec<(Oid, Oid, String)> = Vec::new();
    if parent.is_some() {
        for item in repo.notes(Some(reference))? {
            let (note, on) = item?;
            if on == annotated {
                continue;
            }
            let content = repo.find_blob(note)?;
            let started = parse_note(&String::from_utf8_lossy(content.content()))
                .map(|(_, r)| r.started_at)
                .unwrap_or_default();
            entries.push((on, note, started));
        }
    }
    // Newest first; the note being written is the newest of all.
    entries.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    entries.truncate(KEEP_NOTES.saturating_sub(1));
    let mut tree = repo.treebuilder(None)?;
    tree.insert(annotated.to_string(), blob, 0o100644)?;
    for (on, note, _) in &entries {
        tree.insert(on.to_string(), *note, 0o100644)?;
    }
    let tree = repo.find_tree(tree.write()?)?;
    let sig = signature(host)?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let id = repo.commit(
        None,
        &sig,
        &sig,
        &notes_message(annotated, text),
        &tree,
        &parents,
    )?;
    repo.reference(reference, id, true, "trueup: note")?;
    Ok(id)
}

/// Where a fetched copy of the remote's notes ref is kept while merging.
fn remote_copy(reference: &str) -> String {
    format!(
        "refs/trueup/notes-remote/{}",
        reference.trim_start_matches(NOTES_PREFIX)
    )
}

/// Where this host pushes its notes: `report.repo` with `report.auth`
/// when set, else the fleet repository with `auth:`.
pub fn reports_remote(
    settings: &crate::config::Settings,
    fleet: &RemoteUrl,
) -> Result<(RemoteUrl, crate::config::Auth), SourceError> {
    match settings.report.repo.as_deref() {
        None => Ok((fleet.clone(), settings.auth.clone())),
        Some(raw) => RemoteUrl::parse(raw)
            .map(|url| (url, settings.report.auth.clone()))
            .map_err(|detail| SourceError::Remote {
                url: "report.repo".into(),
                detail,
            }),
    }
}

/// The warning the agent logs at start when it would push notes with
/// credentials to the fleet repository itself and no commit signatures are
/// required: the same credentials could push host branches, so one
/// compromised host could rewrite every other host's desired state
/// (SECURITY.md, "Lateral movement").
pub fn lateral_movement_warning(settings: &crate::config::Settings) -> Option<String> {
    if !settings.report.notes || settings.report.repo.is_some() || settings.trust.required() {
        return None;
    }
    let url = match crate::source::remote::locate(settings.repo.as_deref()?) {
        Ok(crate::source::remote::Location::Git(url)) => url,
        _ => return None,
    };
    let a = &settings.auth;
    let credentials = url.transport == crate::source::remote::Transport::Ssh
        || a.ssh_key.is_some()
        || a.token_file.is_some()
        || a.credentials_file.is_some()
        || url.user.is_some();
    credentials.then(|| {
        format!(
            "notes are pushed to the fleet repository {url} with this host's credentials and trust: is not set: \
             whoever holds them can push any host's branch too. Set report.repo (a reports repository, \
             read-only access to the fleet repository) or trust: (signed commits); see SECURITY.md"
        )
    })
}

/// Pushes this host's notes refs (and nothing else) in one push: the
/// history as a fast-forward, merging and retrying when the remote moved,
/// and the latest note forced (it replaces the previous one).
pub fn push_notes(
    repo: &Repository,
    remote: &RemoteUrl,
    auth: &crate::config::Auth,
    host: &str,
) -> Result<(), SourceError> {
    let reference = notes_ref(host);
    let latest = latest_ref(host);
    let mut refspecs = Vec::new();
    if repo.refname_to_id(&reference).is_ok() {
        refspecs.push(format!("{reference}:{reference}"));
    }
    if repo.refname_to_id(&latest).is_ok() {
        refspecs.push(format!("+{latest}:{latest}"));
    }
    if refspecs.is_empty() {
        return Ok(());
    }
    let refspecs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
    let conn = Connector::new(remote, auth)?;
    let mut last = String::new();
    for attempt in 1..=PUSH_ATTEMPTS {
        match conn.push_all(repo, &refspecs)? {
            Ok(()) => {
                info!(notes_ref = %reference, latest_ref = %latest, attempt, "notes pushed");
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
/// local content winning, each as its own fast-forward commit.
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
    let mut changed: Vec<(String, Oid, String)> = Vec::new();
    for (annotated, note) in our_notes {
        if reference_notes.get(&annotated) == Some(&note) {
            continue;
        }
        let text = String::from_utf8_lossy(repo.find_blob(note)?.content()).into_owned();
        let started = parse_note(&text)
            .map(|(_, r)| r.started_at)
            .unwrap_or_default();
        changed.push((started, annotated, text));
    }
    // Oldest first, so the newest local note ends up newest in the tree.
    changed.sort();
    repo.reference(reference, theirs, true, "trueup: take the remote notes")?;
    for (_, annotated, text) in &changed {
        append_note(repo, reference, *annotated, text, host)?;
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
        append_note(&repo, &r, c1, "remote note on c1", "web1").unwrap();
        let theirs = repo.refname_to_id(&r).unwrap();
        repo.reference(&remote_copy(&r), theirs, true, "").unwrap();
        // Ours, from a wiped cache: unrelated history with a note on c2.
        repo.find_reference(&r).unwrap().delete().unwrap();
        append_note(&repo, &r, c2, "local note on c2", "web1").unwrap();
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

    /// A year of one host, simulated: a run every hour with a heartbeat,
    /// one new commit a day (a change), a failure each week and a rollback
    /// each month. Every change, failure and rollback note stays in the
    /// history; heartbeats never become history commits; the tip tree
    /// stays at KEEP_NOTES notes. The figures are printed for docs/scale.md.
    #[test]
    fn a_year_of_hourly_heartbeats_keeps_every_change_and_a_bounded_tip() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let sig = Signature::now("t", "t@x").unwrap();
        let empty = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let history = notes_ref("web1");
        let mut must_keep: Vec<(Oid, String)> = Vec::new();
        let mut commit = repo.commit(None, &sig, &sig, "day 0", &empty, &[]).unwrap();
        for day in 0..365u64 {
            for hour in 0..24u64 {
                let started = format!("2026-{:03}-{:02}:00:00", day, hour);
                let (status, changed) = match hour {
                    0 if day > 0 => {
                        let parent = repo.find_commit(commit).unwrap();
                        commit = repo
                            .commit(None, &sig, &sig, &format!("day {day}"), &empty, &[&parent])
                            .unwrap();
                        (RunStatus::Converged, 2)
                    }
                    6 if day % 7 == 3 => (RunStatus::Failed, 0),
                    7 if day % 30 == 5 => (RunStatus::RolledBack, 0),
                    _ => (RunStatus::InSync, 0),
                };
                let mut r = report(status, changed, 0);
                r.source.commit = Some(commit.to_string());
                r.started_at = started;
                write_note(&repo, &r).unwrap();
                if status != RunStatus::InSync {
                    must_keep.push((commit, format_note(&r)));
                }
            }
        }
        // Walk the whole history: every kept note is in some commit's tree.
        let mut walk = repo.revwalk().unwrap();
        walk.push(repo.refname_to_id(&history).unwrap()).unwrap();
        let mut seen: std::collections::HashSet<(Oid, Oid)> = Default::default();
        let mut commits = 0;
        for id in walk {
            let c = repo.find_commit(id.unwrap()).unwrap();
            commits += 1;
            let on = annotated_commit(c.message().unwrap()).expect("message names the commit");
            let entry = c.tree().unwrap().get_name(&on.to_string()).map(|e| e.id());
            seen.insert((on, entry.expect("the named note is in the tree")));
        }
        for (on, text) in &must_keep {
            let blob = repo.blob(text.as_bytes()).unwrap();
            assert!(seen.contains(&(*on, blob)), "a note on {on} was dropped");
        }
        let tip_tree = tip_notes(&repo, &history).unwrap();
        assert_eq!(tip_tree.len(), KEEP_NOTES);
        // 365 changes, 53 failures and 13 rollbacks, each followed by the
        // return to "in sync": a few hundred commits, not 8,760.
        assert!(commits < 900, "{commits} history commits for a year");
        let heartbeats = 365 * 24 - commits;
        let latest = repo
            .find_reference(&latest_ref("web1"))
            .unwrap()
            .peel_to_commit()
            .unwrap();
        assert_eq!(latest.parent_count(), 0);
        assert_eq!(latest.tree().unwrap().len(), 1);
        let tip_bytes: usize = tip_tree.iter().map(|(_, t)| t.len()).sum();
        println!(
            "one host, one year: {} runs noted, {heartbeats} heartbeats, {} change/failure/rollback notes kept, {commits} history commits, tip tree {} notes ({tip_bytes} bytes), latest ref 1 commit",
            365 * 24,
            must_keep.len(),
            tip_tree.len()
        );
    }

    #[test]
    fn the_lateral_movement_warning() {
        use crate::config::Settings;
        let mut s = Settings {
            repo: Some("ssh://git@git.example.com/fleet.git".into()),
            ..Settings::default()
        };
        let w = lateral_movement_warning(&s).expect("ssh credentials, no trust");
        assert!(
            w.contains("SECURITY.md") && w.contains("report.repo"),
            "{w}"
        );
        s.report.repo = Some("ssh://git@git.example.com/reports.git".into());
        assert_eq!(lateral_movement_warning(&s), None);
        s.report.repo = None;
        s.trust.allowed_signers = Some("/etc/trueup/allowed_signers".into());
        assert_eq!(lateral_movement_warning(&s), None);
        s.trust.allowed_signers = None;
        s.report.notes = false;
        assert_eq!(lateral_movement_warning(&s), None);
        s.report.notes = true;
        s.repo = Some("git://git.example.com/fleet.git".into());
        assert_eq!(lateral_movement_warning(&s), None, "no credentials");
        s.auth.token_file = Some("/etc/trueup/token".into());
        assert!(lateral_movement_warning(&s).is_some());
        // Where notes go: the reports repository with its own credentials.
        let fleet = RemoteUrl::parse("git://git.example.com/fleet.git").unwrap();
        let (url, auth) = reports_remote(&s, &fleet).unwrap();
        assert_eq!(url, fleet);
        assert_eq!(auth, s.auth);
        s.report.repo = Some("https://git.example.com/reports.git".into());
        let (url, auth) = reports_remote(&s, &fleet).unwrap();
        assert_eq!(url.redacted(), "https://git.example.com/reports.git");
        assert_eq!(auth, s.report.auth);
    }
}
