//! What the fleet report shows, built from the hosts' notes without any
//! I/O: each note is read leniently (a note is untrusted and may come from
//! an older or newer trueup), statuses this trueup does not know become
//! `unknown`, a note that does not parse becomes `malformed`, and the
//! fleet's counts, rollout and host rows are derived from the latest note
//! of each host.
//!
//! Nothing here escapes text: the HTML layer does, for every value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::report::short_id;

/// The statuses a run can end in, worst first (the order of the counts
/// and of the table sorted by status).
pub const RUN_STATUSES: [&str; 8] = [
    "error",
    "refused",
    "rolled_back",
    "unhealthy",
    "failed",
    "drift",
    "converged",
    "in_sync",
];

/// A host's status when its latest note gives none this trueup knows.
pub const UNKNOWN: &str = "unknown";
/// A host's status when its latest note cannot be read at all.
pub const MALFORMED: &str = "malformed";

/// The heartbeat assumed for a note that does not carry one (the agent's
/// default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3600);

/// A note bigger than this is not parsed (a host could write a huge one to
/// slow the report down); it is shown as malformed.
pub const MAX_NOTE_BYTES: usize = 4 << 20;

/// How many runs a host page's timeline shows.
pub const TIMELINE_RUNS: usize = 50;

/// One note as read from a host's notes ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteText {
    /// The commit the note is attached to.
    pub commit: String,
    /// The note's text, or why it was not read (too large).
    pub text: Result<String, String>,
    /// Written (added or changed) by the notes ref's tip commit: the note
    /// the host wrote last.
    pub newest: bool,
}

/// Everything read for one host: its notes ref and the notes at its tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNotes {
    pub notes_ref: String,
    /// The notes, or why the ref could not be read.
    pub notes: Result<Vec<NoteText>, String>,
}

/// A commit of the repository, as the rollout shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitDetails {
    pub subject: String,
    pub author: String,
    /// Committer time, seconds since the epoch.
    pub time: i64,
}

/// What the report asks of the repository besides the notes: commit
/// details, branch tips, and how far one commit is behind another.
pub trait CommitGraph {
    fn commit(&self, id: &str) -> Option<CommitDetails>;
    /// The branch's tip now.
    fn tip(&self, branch: &str) -> Option<String>;
    /// How many commits `tip` has that `applied` lacks.
    fn behind(&self, tip: &str, applied: &str) -> Option<usize>;
}

/// A repository that knows nothing (for reports from notes alone).
pub struct NoGraph;

impl CommitGraph for NoGraph {
    fn commit(&self, _: &str) -> Option<CommitDetails> {
        None
    }
    fn tip(&self, _: &str) -> Option<String> {
        None
    }
    fn behind(&self, _: &str, _: &str) -> Option<usize> {
        None
    }
}

/// Resource counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub resources: u64,
    pub in_sync: u64,
    pub drift: u64,
    pub changed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// One line of a unified diff, with its kind for styling (the `+`/`-`
/// stays in the text, so the colour is not the only carrier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    /// `add`, `del`, `hunk` or `ctx`.
    pub kind: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftView {
    pub attribute: String,
    pub expected: String,
    pub actual: String,
    pub diff: Vec<DiffLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceView {
    pub kind: String,
    pub name: String,
    pub status: String,
    pub action: Option<String>,
    pub error: Option<String>,
    pub drift: Vec<DriftView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckView {
    pub name: String,
    pub kind: String,
    pub target: String,
    pub required: bool,
    pub status: String,
    pub attempts: Option<u64>,
    pub duration: String,
    pub message: String,
    pub output: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackView {
    pub from: String,
    pub to: String,
    pub healthy_after: bool,
    pub removed: Vec<String>,
    pub left: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthView {
    /// healthy, unhealthy, pending or unknown.
    pub status: String,
    pub commit: Option<String>,
    pub window: String,
    pub checks: Vec<CheckView>,
    pub note: Option<String>,
    pub rollback: Option<RollbackView>,
}

/// A fact as `key` (dotted path) and its value as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disabled {
    pub reason: String,
    pub since: String,
}

/// One run, as read from a note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The note's first line.
    pub summary_line: String,
    /// The `host` field inside the note (not trusted to name anything).
    pub host: String,
    pub mode: String,
    pub dry_run: bool,
    pub started_at: String,
    #[serde(skip)]
    pub started: Option<SystemTime>,
    pub duration: String,
    pub status: String,
    pub location: String,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub commit_short: Option<String>,
    /// The commit the host runs after this run.
    pub applied: Option<String>,
    pub rejected_commit: Option<String>,
    pub rejected_reason: Option<String>,
    pub counts: Counts,
    pub resources: Vec<ResourceView>,
    pub errors: Vec<String>,
    pub health: Option<HealthView>,
    pub facts: Vec<Fact>,
    pub commit_subject: Option<String>,
    pub commit_author: Option<String>,
    pub interval: Option<String>,
    pub heartbeat: Option<String>,
    #[serde(skip)]
    pub heartbeat_secs: Option<u64>,
    pub disabled: Option<Disabled>,
    pub audit: bool,
    pub trueup_version: String,
}

/// A note, parsed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Run(Box<Run>),
    /// The note's commit and why it could not be read.
    Malformed {
        commit: String,
        reason: String,
    },
}

/// Why a note could not be read as a run.
fn malformed(reason: impl Into<String>) -> Result<Run, String> {
    Err(reason.into())
}

fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn number(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

fn flag(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).and_then(Value::as_bool).unwrap_or(false)
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A value from a closed set, or `unknown`.
fn one_of(v: Option<String>, known: &[&str]) -> String {
    match v {
        Some(s) if known.contains(&s.as_str()) => s,
        _ => UNKNOWN.to_string(),
    }
}

/// A commit id as a note gives it, kept only when it looks like one (it
/// is looked up in the repository and shortened for display).
fn commit_id(v: &Value, pointer: &str) -> Option<String> {
    text(v, pointer).filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads one note. Never panics, whatever the text.
pub fn parse(note: &NoteText) -> Note {
    match note
        .text
        .as_deref()
        .map_err(|e| e.clone())
        .and_then(parse_run)
    {
        Ok(run) => Note::Run(Box::new(run)),
        Err(reason) => Note::Malformed {
            commit: note.commit.clone(),
            reason,
        },
    }
}

fn parse_run(note: &str) -> Result<Run, String> {
    if note.len() > MAX_NOTE_BYTES {
        return malformed(format!(
            "the note is {} bytes, more than the {} this report reads",
            note.len(),
            MAX_NOTE_BYTES
        ));
    }
    if note.trim().is_empty() {
        return malformed("the note is empty");
    }
    let Some((summary, rest)) = note.split_once('\n') else {
        return malformed("the note has no blank line between the summary and the report");
    };
    let Some(json) = rest
        .strip_prefix('\n')
        .or_else(|| rest.strip_prefix("\r\n"))
    else {
        return malformed("the note has no blank line between the summary and the report");
    };
    let v: Value = serde_json::from_str(json)
        .map_err(|e| format!("the report in the note is not JSON: {e}"))?;
    if !v.is_object() {
        return malformed("the report in the note is not a JSON object");
    }
    match number(&v, "/schema") {
        Some(n) if n == u64::from(crate::report::SCHEMA_VERSION) => {}
        Some(n) => {
            return malformed(format!(
                "the report has schema {n}; this trueup reads schema {}",
                crate::report::SCHEMA_VERSION
            ));
        }
        None => return malformed("the report has no schema number"),
    }
    let status = one_of(text(&v, "/status"), &RUN_STATUSES);
    let mode = text(&v, "/mode").unwrap_or_else(|| UNKNOWN.into());
    let dry_run = flag(&v, "/dry_run");
    let commit = commit_id(&v, "/source/commit");
    // The host runs the note's commit after a real apply that ran it;
    // otherwise it stays where it was (`source.applied`).
    let ran_it = mode == "apply"
        && !dry_run
        && matches!(
            status.as_str(),
            "in_sync" | "converged" | "failed" | "unhealthy"
        );
    let applied = if ran_it {
        commit.clone()
    } else {
        commit_id(&v, "/source/applied").or_else(|| {
            // A rollback leaves the host on the healthy commit.
            commit_id(&v, "/health/rollback/to")
        })
    };
    let started_at = text(&v, "/started_at").unwrap_or_default();
    let heartbeat_secs = number(&v, "/heartbeat_secs");
    Ok(Run {
        summary_line: summary.trim_end_matches('\r').to_string(),
        host: text(&v, "/host").unwrap_or_default(),
        mode,
        dry_run,
        started: humantime::parse_rfc3339_weak(&started_at).ok(),
        started_at,
        duration: number(&v, "/duration_ms")
            .map(millis)
            .unwrap_or_else(|| "-".into()),
        status,
        location: text(&v, "/source/location").unwrap_or_default(),
        branch: text(&v, "/source/branch"),
        commit_short: commit.as_deref().map(|c| short_id(c, 12).to_string()),
        commit,
        applied,
        rejected_commit: text(&v, "/source/rejected/commit"),
        rejected_reason: text(&v, "/source/rejected/reason"),
        counts: Counts {
            resources: number(&v, "/summary/resources").unwrap_or(0),
            in_sync: number(&v, "/summary/in_sync").unwrap_or(0),
            drift: number(&v, "/summary/drift").unwrap_or(0),
            changed: number(&v, "/summary/changed").unwrap_or(0),
            failed: number(&v, "/summary/failed").unwrap_or(0),
            skipped: number(&v, "/summary/skipped").unwrap_or(0),
        },
        resources: v
            .get("resources")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(resource).collect())
            .unwrap_or_default(),
        errors: strings(&v, "/errors"),
        health: v.get("health").filter(|h| h.is_object()).map(health),
        facts: v.get("facts").map(facts).unwrap_or_default(),
        commit_subject: text(&v, "/commit_subject"),
        commit_author: text(&v, "/commit_author"),
        interval: number(&v, "/interval_secs").map(seconds),
        heartbeat: heartbeat_secs.map(seconds),
        heartbeat_secs,
        disabled: v
            .get("disabled")
            .filter(|d| d.is_object())
            .map(|d| Disabled {
                reason: text(d, "/reason").unwrap_or_default(),
                since: text(d, "/since").unwrap_or_default(),
            }),
        audit: flag(&v, "/audit"),
        trueup_version: text(&v, "/trueup_version").unwrap_or_default(),
    })
}

fn resource(v: &Value) -> ResourceView {
    ResourceView {
        kind: text(v, "/kind").unwrap_or_else(|| UNKNOWN.into()),
        name: text(v, "/resource").unwrap_or_default(),
        status: one_of(
            text(v, "/status"),
            &["in_sync", "drift", "changed", "failed", "skipped"],
        ),
        action: text(v, "/action"),
        error: text(v, "/error"),
        drift: v
            .get("drift")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|d| DriftView {
                        attribute: text(d, "/attribute").unwrap_or_else(|| UNKNOWN.into()),
                        expected: text(d, "/expected").unwrap_or_default(),
                        actual: text(d, "/actual").unwrap_or_default(),
                        diff: text(d, "/diff").map(|t| diff_lines(&t)).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A unified diff split into lines, each with its kind.
pub fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|l| DiffLine {
            kind: if l.starts_with("+++") || l.starts_with("---") {
                "file"
            } else if l.starts_with('+') {
                "add"
            } else if l.starts_with('-') {
                "del"
            } else if l.starts_with("@@") {
                "hunk"
            } else {
                "ctx"
            },
            text: l.to_string(),
        })
        .collect()
}

fn check(v: &Value) -> CheckView {
    CheckView {
        name: text(v, "/name").unwrap_or_default(),
        kind: text(v, "/kind").unwrap_or_default(),
        target: text(v, "/target").unwrap_or_default(),
        required: flag(v, "/required"),
        status: one_of(text(v, "/status"), &["passed", "failed", "skipped"]),
        attempts: number(v, "/attempts"),
        duration: number(v, "/duration_ms")
            .map(millis)
            .unwrap_or_else(|| "-".into()),
        message: text(v, "/message").unwrap_or_default(),
        output: text(v, "/output"),
    }
}

fn checks(v: &Value, pointer: &str) -> Vec<CheckView> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(check).collect())
        .unwrap_or_default()
}

fn health(v: &Value) -> HealthView {
    HealthView {
        status: one_of(text(v, "/status"), &["healthy", "unhealthy", "pending"]),
        commit: commit_id(v, "/commit"),
        window: number(v, "/window_ms")
            .map(millis)
            .unwrap_or_else(|| "-".into()),
        checks: checks(v, "/checks"),
        note: text(v, "/note"),
        rollback: v
            .get("rollback")
            .filter(|r| r.is_object())
            .map(|r| RollbackView {
                from: text(r, "/from").unwrap_or_default(),
                to: text(r, "/to").unwrap_or_default(),
                healthy_after: flag(r, "/healthy_after"),
                removed: strings(r, "/removed"),
                left: strings(r, "/left"),
                errors: strings(r, "/errors"),
            }),
    }
}

/// The facts a note carries, flattened to dotted keys.
fn facts(v: &Value) -> Vec<Fact> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<Fact>) {
        // Bounded: a hostile note could nest deeply or hold huge maps.
        if out.len() >= 500 || prefix.matches('.').count() > 8 {
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => out.push(Fact {
                key: prefix.to_string(),
                value: s.clone(),
            }),
            Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
                out.push(Fact {
                    key: prefix.to_string(),
                    value: a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            other => out.push(Fact {
                key: prefix.to_string(),
                value: other.to_string(),
            }),
        }
    }
    let mut out = Vec::new();
    if v.is_object() {
        walk("", v, &mut out);
    }
    out
}

/// `850 ms`, `3.2 s`, `2m 5s`.
fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        seconds(ms / 1000)
    }
}

/// `45s`, `5m`, `1h`, `1h 30m`, `2d`.
fn seconds(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// `42s`, `5m`, `3h`, `2d`: how long ago, for tables.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// One run in a host's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    pub started_at: String,
    pub status: String,
    pub commit_short: Option<String>,
    pub duration: String,
    pub summary_line: String,
    /// Why the note could not be read, for a malformed one.
    pub malformed: Option<String>,
}

/// One host: its row in the fleet tables and its page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// The page's path in the site, from the notes ref only.
    pub page: String,
    /// The host as its notes ref names it.
    pub name: String,
    pub notes_ref: String,
    /// The latest run's status, `unknown` or `malformed`.
    pub status: String,
    /// Why the latest note could not be read.
    pub malformed: Option<String>,
    pub stale: bool,
    pub disabled: bool,
    pub audit: bool,
    pub applied_short: Option<String>,
    #[serde(skip)]
    pub applied: Option<String>,
    pub tip_short: Option<String>,
    /// `at tip`, `3 behind`, `behind`, or `-` when it cannot be told.
    pub behind: String,
    #[serde(skip)]
    pub behind_n: Option<usize>,
    pub age: String,
    #[serde(skip)]
    pub age_secs: Option<u64>,
    pub drift: u64,
    pub changed: u64,
    pub failed: u64,
    /// The latest run's health status, or `-`.
    pub health: String,
    pub latest: Option<Run>,
    pub timeline: Vec<TimelineEntry>,
}

/// A status and how many hosts are in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub count: usize,
    /// The page listing these hosts, when there are any.
    pub page: Option<String>,
}

/// Hosts running one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitGroup {
    pub short: String,
    pub subject: String,
    pub author: String,
    pub hosts: usize,
    /// Share of the fleet, 0..=100, for the bar's width.
    pub percent: u64,
    /// Whether some host's branch points at it now.
    pub is_tip: bool,
    #[serde(skip)]
    id: String,
    #[serde(skip)]
    time: Option<i64>,
    #[serde(skip)]
    latest_report: Option<SystemTime>,
}

/// The whole fleet, ready to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetView {
    pub generated_at: String,
    pub hosts: Vec<HostView>,
    /// Per run status (including unknown and malformed), every one shown.
    pub statuses: Vec<StatusCount>,
    /// stale, disabled, audit: a host may be in several.
    pub flags: Vec<StatusCount>,
    pub commits: Vec<CommitGroup>,
}

/// A file name for a host page, from its notes ref alone.
fn page_name(notes_ref: &str, taken: &mut HashSet<String>) -> String {
    let tail = notes_ref
        .strip_prefix(crate::report::notes::NOTES_PREFIX)
        .unwrap_or(notes_ref);
    let mut base: String = tail
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.starts_with('.') {
        base.insert(0, '_');
    }
    // Unique even on a case-insensitive file system.
    let mut name = base.clone();
    let mut n = 1;
    while !taken.insert(name.to_ascii_lowercase()) {
        n += 1;
        name = format!("{base}-{n}");
    }
    format!("hosts/{name}.html")
}

fn host_view(
    host: &HostNotes,
    taken: &mut HashSet<String>,
    graph: &dyn CommitGraph,
    behind_cache: &mut HashMap<(String, String), Option<usize>>,
    now: SystemTime,
) -> HostView {
    let name = host
        .notes_ref
        .strip_prefix(crate::report::notes::NOTES_PREFIX)
        .unwrap_or(&host.notes_ref)
        .to_string();
    let mut view = HostView {
        page: page_name(&host.notes_ref, taken),
        name,
        notes_ref: host.notes_ref.clone(),
        status: MALFORMED.into(),
        malformed: None,
        stale: false,
        disabled: false,
        audit: false,
        applied_short: None,
        applied: None,
        tip_short: None,
        behind: "-".into(),
        behind_n: None,
        age: "-".into(),
        age_secs: None,
        drift: 0,
        changed: 0,
        failed: 0,
        health: "-".into(),
        latest: None,
        timeline: vec![],
    };
    let notes = match &host.notes {
        Ok(n) if n.is_empty() => {
            view.malformed = Some("no note under this ref".into());
            return view;
        }
        Ok(n) => n,
        Err(e) => {
            view.malformed = Some(format!("the notes ref cannot be read: {e}"));
            return view;
        }
    };
    let mut parsed: Vec<(bool, Note)> = notes.iter().map(|n| (n.newest, parse(n))).collect();
    // Newest first: by start time (to the second), the note the tip wrote
    // first among runs of the same second, notes without a time
    // (malformed) after.
    parsed.sort_by_key(|(newest, n)| (std::cmp::Reverse(started(n)), !newest));
    // The latest note is the one the ref's tip commit wrote; failing that
    // (a tip that removed notes), the latest started.
    let latest = parsed
        .iter()
        .find(|(newest, _)| *newest)
        .or_else(|| parsed.first())
        .map(|(_, n)| n.clone());
    view.timeline = parsed
        .iter()
        .take(TIMELINE_RUNS)
        .map(|(_, n)| match n {
            Note::Run(r) => TimelineEntry {
                started_at: r.started_at.clone(),
                status: r.status.clone(),
                commit_short: r.commit_short.clone(),
                duration: r.duration.clone(),
                summary_line: r.summary_line.clone(),
                malformed: None,
            },
            Note::Malformed { commit, reason } => TimelineEntry {
                started_at: "-".into(),
                status: MALFORMED.into(),
                commit_short: Some(short_id(commit, 12).to_string()),
                duration: "-".into(),
                summary_line: String::new(),
                malformed: Some(reason.clone()),
            },
        })
        .collect();
    let run = match latest {
        Some(Note::Run(r)) => *r,
        Some(Note::Malformed { reason, .. }) => {
            view.malformed = Some(reason);
            return view;
        }
        None => return view,
    };
    view.status = run.status.clone();
    view.disabled = run.disabled.is_some();
    view.audit = run.audit;
    view.drift = run.counts.drift;
    view.changed = run.counts.changed;
    view.failed = run.counts.failed + run.counts.skipped;
    view.health = run
        .health
        .as_ref()
        .map(|h| h.status.clone())
        .unwrap_or_else(|| "-".into());
    view.age_secs = run
        .started
        .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0));
    view.age = view.age_secs.map(age).unwrap_or_else(|| "-".into());
    let heartbeat = run
        .heartbeat_secs
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_HEARTBEAT);
    // No time at all is as stale as can be.
    view.stale = view
        .age_secs
        .is_none_or(|a| Duration::from_secs(a) > heartbeat * 2);
    view.applied = run.applied.clone();
    view.applied_short = run.applied.as_deref().map(|c| short_id(c, 12).to_string());
    let tip = run.branch.as_deref().and_then(|b| graph.tip(b));
    view.tip_short = tip.as_deref().map(|c| short_id(c, 12).to_string());
    (view.behind, view.behind_n) = match (&tip, &run.applied) {
        (Some(t), Some(a)) if t == a => ("at tip".into(), Some(0)),
        (Some(t), Some(a)) => {
            let n = *behind_cache
                .entry((t.clone(), a.clone()))
                .or_insert_with(|| graph.behind(t, a));
            match n {
                Some(n) => (format!("{n} behind"), Some(n)),
                None => ("behind".into(), None),
            }
        }
        // A check's note names the applied commit only when it is not
        // the checked one, so without it a check cannot tell.
        (Some(_), None) if run.mode == "check" || run.status == UNKNOWN => ("-".into(), None),
        (Some(_), None) => ("nothing applied".into(), None),
        (None, _) => ("-".into(), None),
    };
    view.latest = Some(run);
    view
}

fn started(n: &Note) -> Option<SystemTime> {
    match n {
        Note::Run(r) => r.started,
        Note::Malformed { .. } => None,
    }
}

/// Builds the fleet view from every host's notes.
pub fn fleet(hosts: &[HostNotes], graph: &dyn CommitGraph, now: SystemTime) -> FleetView {
    let mut taken = HashSet::new();
    let mut behind_cache = HashMap::new();
    let mut views: Vec<HostView> = hosts
        .iter()
        .map(|h| host_view(h, &mut taken, graph, &mut behind_cache, now))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name).then(a.page.cmp(&b.page)));

    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &views {
        *by_status.entry(v.status.as_str()).or_default() += 1;
    }
    let statuses = RUN_STATUSES
        .iter()
        .chain(&[UNKNOWN, MALFORMED])
        .map(|s| {
            let count = by_status.get(s).copied().unwrap_or(0);
            StatusCount {
                status: s.to_string(),
                count,
                page: (count > 0).then(|| format!("status-{s}.html")),
            }
        })
        .collect();
    let flag_count = |name: &str, f: fn(&HostView) -> bool| {
        let count = views.iter().filter(|v| f(v)).count();
        StatusCount {
            status: name.to_string(),
            count,
            page: (count > 0).then(|| format!("status-{name}.html")),
        }
    };
    let flags = vec![
        flag_count("stale", |v| v.stale),
        flag_count("disabled", |v| v.disabled),
        flag_count("audit", |v| v.audit),
    ];

    // The rollout: hosts per applied commit.
    let tips: HashSet<String> = views
        .iter()
        .filter_map(|v| v.latest.as_ref()?.branch.as_deref())
        .collect::<HashSet<_>>()
        .into_iter()
        .filter_map(|b| graph.tip(b))
        .collect();
    let mut groups: HashMap<String, CommitGroup> = HashMap::new();
    let total = views.len().max(1);
    for v in &views {
        let (Some(applied), Some(run)) = (&v.applied, &v.latest) else {
            continue;
        };
        let g = groups.entry(applied.clone()).or_insert_with(|| {
            let details = graph.commit(applied);
            // The repository's word first; the note's when the commit is
            // not in it (the note is about its own commit only).
            let from_note = run.commit.as_deref() == Some(applied.as_str());
            CommitGroup {
                short: short_id(applied, 12).to_string(),
                id: applied.clone(),
                subject: details
                    .as_ref()
                    .map(|d| d.subject.clone())
                    .or_else(|| from_note.then(|| run.commit_subject.clone()).flatten())
                    .unwrap_or_else(|| "(subject unknown)".into()),
                author: details
                    .as_ref()
                    .map(|d| d.author.clone())
                    .or_else(|| from_note.then(|| run.commit_author.clone()).flatten())
                    .unwrap_or_else(|| "(author unknown)".into()),
                hosts: 0,
                percent: 0,
                is_tip: tips.contains(applied),
                time: details.map(|d| d.time),
                latest_report: None,
            }
        });
        g.hosts += 1;
        g.latest_report = g.latest_report.max(run.started);
    }
    let mut commits: Vec<CommitGroup> = groups.into_values().collect();
    for g in &mut commits {
        g.percent = (g.hosts * 100 / total) as u64;
    }
    // Newest first: by commit time, then (commits of the same second) a
    // descendant before its ancestor, then by the latest report.
    commits.sort_by(|a, b| {
        b.time
            .cmp(&a.time)
            .then_with(|| {
                let a_newer = graph.behind(&a.id, &b.id).unwrap_or(0) > 0;
                let b_newer = graph.behind(&b.id, &a.id).unwrap_or(0) > 0;
                b_newer.cmp(&a_newer)
            })
            .then(b.latest_report.cmp(&a.latest_report))
            .then(a.short.cmp(&b.short))
    });

    FleetView {
        generated_at: crate::report::rfc3339(now),
        hosts: views,
        statuses,
        flags,
        commits,
    }
}

/// Rank of a status in the worst-first order.
pub fn severity(status: &str) -> usize {
    match status {
        MALFORMED => 0,
        UNKNOWN => 1,
        s => 2 + RUN_STATUSES.iter().position(|x| *x == s).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(commit: &str, json: &str) -> NoteText {
        NoteText {
            commit: commit.into(),
            text: Ok(format!("summary line\n\n{json}")),
            newest: false,
        }
    }

    fn report_json(status: &str, started: &str, extra: &str) -> String {
        format!(
            r#"{{"schema":1,"trueup_version":"0.1.0","host":"h","mode":"apply","dry_run":false,
            "started_at":"{started}","duration_ms":1500,
            "source":{{"location":"x","branch":"hosts/h","commit":"{c}"}},
            "status":"{status}","summary":{{"resources":3,"in_sync":1,"drift":1,"changed":0,"failed":1,"skipped":0}},
            "resources":[]{extra}}}"#,
            c = "a".repeat(40)
        )
    }

    #[test]
    fn unknown_statuses_and_broken_notes_do_not_stop_the_report() {
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap();
        let hosts = vec![
            HostNotes {
                notes_ref: "refs/notes/trueup/a".into(),
                notes: Ok(vec![note(
                    "c1",
                    &report_json("exploded", "2026-01-01T11:59:00Z", ""),
                )]),
            },
            HostNotes {
                notes_ref: "refs/notes/trueup/b".into(),
                notes: Ok(vec![NoteText {
                    commit: "c2".into(),
                    text: Ok("garbage".into()),
                    newest: true,
                }]),
            },
            HostNotes {
                notes_ref: "refs/notes/trueup/c".into(),
                notes: Ok(vec![note(
                    "c3",
                    &report_json(
                        "failed",
                        "2026-01-01T09:00:00Z",
                        r#","heartbeat_secs":3600,"disabled":{"reason":"r","since":"s"},"audit":true"#,
                    ),
                )]),
            },
            HostNotes {
                notes_ref: "refs/notes/trueup/d".into(),
                notes: Err("object missing".into()),
            },
        ];
        let f = fleet(&hosts, &NoGraph, now);
        let by: HashMap<&str, &HostView> = f.hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        assert_eq!(by["a"].status, UNKNOWN);
        assert!(!by["a"].stale);
        assert_eq!(by["b"].status, MALFORMED);
        assert!(by["b"].malformed.as_deref().unwrap().contains("blank line"));
        assert_eq!(by["c"].status, "failed");
        assert!(by["c"].stale && by["c"].disabled && by["c"].audit);
        assert_eq!(by["c"].failed, 1);
        assert_eq!(by["d"].status, MALFORMED);
        let count = |s: &str| f.statuses.iter().find(|c| c.status == s).unwrap().count;
        assert_eq!(
            (count(UNKNOWN), count(MALFORMED), count("failed")),
            (1, 2, 1)
        );
        assert_eq!(f.flags[0].count, 1, "stale");
        // Only the failed run tells that its commit was applied (an
        // unknown status tells nothing).
        assert_eq!(f.commits.len(), 1);
        assert_eq!(f.commits[0].hosts, 1);
    }

    #[test]
    fn page_names_come_from_the_ref_and_are_unique() {
        let mut taken = HashSet::new();
        assert_eq!(
            page_name("refs/notes/trueup/web1", &mut taken),
            "hosts/web1.html"
        );
        assert_eq!(
            page_name("refs/notes/trueup/WEB1", &mut taken),
            "hosts/WEB1-2.html"
        );
        assert_eq!(
            page_name("refs/notes/trueup/<script>", &mut taken),
            "hosts/_script_.html"
        );
        assert_eq!(
            page_name("refs/notes/trueup/..x", &mut taken),
            "hosts/_..x.html"
        );
    }

    #[test]
    fn diff_lines_keep_their_sign() {
        let d = diff_lines("--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n same");
        let kinds: Vec<&str> = d.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["file", "file", "hunk", "del", "add", "ctx"]);
        assert_eq!(d[3].text, "-old");
    }

    #[test]
    fn hostile_facts_are_bounded() {
        let mut deep = String::from("1");
        for _ in 0..50 {
            deep = format!("{{\"k\":{deep}}}");
        }
        let f = facts(&serde_json::from_str(&deep).unwrap());
        assert!(f.is_empty() || f[0].key.matches('.').count() <= 9);
        let wide: serde_json::Map<String, Value> = (0..2000)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        assert_eq!(facts(&Value::Object(wide)).len(), 500);
    }
}
