//! `trueup fleet status`: every host's latest note, read from the
//! repository alone (the reports repository when there is one). The tips
//! reader ([`super::tips::read_tips`]) lists the branch tips and fetches
//! only the tip of each host's notes refs, shallow, into a throwaway bare
//! repository. Changes nothing anywhere.

use std::collections::HashMap;
use std::time::SystemTime;

use git2::Oid;
use serde::Serialize;

use super::tips::HostTip;
use crate::config::Auth;
use crate::report::notes::parse_note;
use crate::report::{Mode, RunReport, RunStatus};
use crate::source::remote::RemoteUrl;
use crate::source::transport::SourceError;

/// One host as its latest note tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub notes_ref: String,
    pub branch: Option<String>,
    /// The branch's tip on the remote now.
    pub tip: Option<String>,
    /// The commit the host last applied.
    pub applied: Option<String>,
    /// The commit the latest note is about.
    pub noted_commit: Option<String>,
    /// Whether the host is not at the tip (None: cannot tell).
    pub behind: Option<bool>,
    /// The run's status, or `unreadable`.
    pub status: String,
    /// `healthy`, `unhealthy`, `pending` (`unknown` for a word this
    /// version does not know); absent when the host has no checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub mode: Option<Mode>,
    /// Resources not in sync after the run (found, or failed).
    pub drift: usize,
    /// When the run started (RFC 3339).
    pub at: Option<String>,
    pub age_seconds: Option<u64>,
    /// The note's summary line.
    pub summary: Option<String>,
    /// Why the note could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads every host's latest note from the remote.
pub fn fleet_status(
    remote: &RemoteUrl,
    auth: &Auth,
    now: SystemTime,
) -> Result<Vec<HostRow>, SourceError> {
    let tips = super::tips::read_tips(remote, auth, false)?;
    Ok(rows(tips.hosts, &tips.heads, now))
}

/// The rows of hosts' notes tips, against the fleet repository's
/// branches (`heads`, which a reports repository does not have).
pub fn rows(hosts: Vec<HostTip>, heads: &HashMap<String, Oid>, now: SystemTime) -> Vec<HostRow> {
    hosts
        .into_iter()
        .map(|h| row(&h.host, &h.notes_ref, h.latest, heads, now))
        .collect()
}

/// One table row from a host's latest note and the branch tips.
pub fn row(
    host: &str,
    reference: &str,
    note: Result<Option<String>, String>,
    heads: &HashMap<String, Oid>,
    now: SystemTime,
) -> HostRow {
    let mut row = HostRow {
        host: host.to_string(),
        notes_ref: reference.to_string(),
        branch: None,
        tip: None,
        applied: None,
        noted_commit: None,
        behind: None,
        status: "unreadable".into(),
        health: None,
        mode: None,
        drift: 0,
        at: None,
        age_seconds: None,
        summary: None,
        error: None,
    };
    let text = match note {
        Ok(Some(t)) => t,
        Ok(None) => {
            row.error = Some("no note under this ref".into());
            return row;
        }
        Err(e) => {
            row.error = Some(e);
            return row;
        }
    };
    let (summary, report) = match parse_note(&text) {
        Ok(p) => p,
        Err(e) => {
            row.error = Some(e.to_string());
            return row;
        }
    };
    fill(&mut row, summary, &report, heads, now);
    row
}

fn fill(
    row: &mut HostRow,
    summary: String,
    r: &RunReport,
    heads: &HashMap<String, Oid>,
    now: SystemTime,
) {
    let s = &r.summary;
    row.summary = Some(summary);
    row.status = serde_json::to_value(r.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    row.health = r.health.as_ref().map(|h| h.status.as_str().to_string());
    row.mode = Some(r.mode);
    row.drift = s.drift + s.failed + s.skipped;
    row.branch = r.source.branch.clone();
    row.noted_commit = r.source.commit.clone();
    // The note's commit is applied only when an apply ran it; otherwise
    // the host stays where it was (`applied`, when the report knows).
    let ran_it = r.mode == Mode::Apply
        && !r.dry_run
        && matches!(
            r.status,
            RunStatus::InSync | RunStatus::Converged | RunStatus::Failed | RunStatus::Unhealthy
        );
    // A rolled-back commit was applied, then left for the healthy one.
    let rolled_back_to = r
        .health
        .as_ref()
        .and_then(|h| h.rollback.as_ref())
        .map(|rb| rb.to.clone())
        .filter(|_| r.status == RunStatus::RolledBack);
    row.applied = if ran_it {
        r.source.commit.clone()
    } else if rolled_back_to.is_some() {
        rolled_back_to
    } else {
        r.source.applied.clone()
    };
    row.tip = row
        .branch
        .as_ref()
        .and_then(|b| heads.get(b))
        .map(Oid::to_string);
    row.behind = match (&row.tip, &row.applied) {
        (Some(t), Some(a)) => Some(t != a),
        (Some(_), None) if ran_it => None,
        (Some(_), None) => Some(true),
        (None, _) => None,
    };
    row.at = Some(r.started_at.clone());
    row.age_seconds = humantime::parse_rfc3339_weak(&r.started_at)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs());
}

/// The rows as a text table for people.
pub fn render_table(rows: &[HostRow]) -> String {
    let short = |c: &Option<String>| {
        c.as_deref()
            .map(|c| c.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    let mut lines = vec![[
        "HOST".to_string(),
        "BRANCH".into(),
        "TIP".into(),
        "APPLIED".into(),
        "BEHIND".into(),
        "STATUS".into(),
        "DRIFT".into(),
        "AGE".into(),
    ]];
    for r in rows {
        lines.push([
            clean(&r.host),
            r.branch.as_deref().map(clean).unwrap_or_else(|| "-".into()),
            short(&r.tip),
            short(&r.applied),
            match r.behind {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
            match &r.health {
                Some(h) => format!("{} ({h})", r.status.replace('_', " ")),
                None => r.status.replace('_', " "),
            },
            r.drift.to_string(),
            r.age_seconds.map(age).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            clean(&r.host),
            clean(r.error.as_deref().unwrap_or(""))
        ));
    }
    out
}

/// Text from a note, with control characters (terminal escapes) removed.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SourceInfo;
    use crate::report::notes::format_note;
    use std::time::Duration;

    fn note(status: RunStatus, mode: Mode, commit: &str, applied: Option<&str>) -> String {
        let mut r = RunReport::failed_early(
            "h",
            mode,
            false,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            SourceInfo {
                location: "git://x/y.git".into(),
                branch: Some("hosts/h".into()),
                commit: Some(commit.into()),
                applied: applied.map(str::to_string),
                rejected: None,
            },
            status,
            vec![],
        );
        r.summary.drift = 2;
        format_note(&r)
    }

    #[test]
    fn rows_tell_current_behind_and_refused_hosts_apart() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let heads = HashMap::from([("hosts/h".to_string(), Oid::from_str(&b).unwrap())]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_300);

        let r = row(
            "h",
            "refs/notes/trueup/h",
            Ok(Some(note(RunStatus::InSync, Mode::Apply, &b, None))),
            &heads,
            now,
        );
        assert_eq!(
            (r.behind, r.applied.as_deref(), r.status.as_str()),
            (Some(false), Some(&*b), "in_sync")
        );
        assert_eq!(r.age_seconds, Some(300));
        assert_eq!(r.drift, 2);

        let r = row(
            "h",
            "refs/notes/trueup/h",
            Ok(Some(note(RunStatus::Converged, Mode::Apply, &a, None))),
            &heads,
            now,
        );
        assert_eq!((r.behind, r.tip.as_deref()), (Some(true), Some(&*b)));

        let r = row(
            "h",
            "refs/notes/trueup/h",
            Ok(Some(note(RunStatus::Refused, Mode::Apply, &b, Some(&a)))),
            &heads,
            now,
        );
        assert_eq!(
            (r.behind, r.applied.as_deref(), r.status.as_str()),
            (Some(true), Some(&*a), "refused")
        );

        let r = row(
            "h",
            "refs/notes/trueup/h",
            Ok(Some("garbage".into())),
            &heads,
            now,
        );
        assert_eq!(r.status, "unreadable");
        assert!(r.error.is_some());
        let table = render_table(&[r]);
        assert!(table.starts_with("HOST"), "{table}");
        assert!(table.contains("unreadable"), "{table}");
    }

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(86400 * 3), "3d");
    }
}
