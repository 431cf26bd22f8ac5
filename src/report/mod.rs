//! `RunReport`: what one run found and did, in one stable shape.
//!
//! The same report is printed (text for people, JSON for scripts), written
//! to `last-run.json`, and attached to the applied commit as a Git note. Its
//! JSON form is documented in `docs/report.schema.json`; `schema` is bumped
//! on any incompatible change.

pub mod metrics;
pub mod notes;
pub mod text;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::apply::{Outcome, Status};

/// Version of the JSON shape.
pub const SCHEMA_VERSION: u32 = 1;

/// Check reports drift; apply converges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Check,
    Apply,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Nothing differed.
    InSync,
    /// Drift found and left (check, dry run, disabled host).
    Drift,
    /// Drift repaired, no failure.
    Converged,
    /// Some resources failed (others may have changed).
    Failed,
    /// Nothing was attempted: the branch or the source is broken.
    Error,
    /// The commit was not trusted; nothing was applied.
    Refused,
    /// Applied, but required health checks failed at the end of the
    /// window, and the commit was left in place (see `health.note`).
    Unhealthy,
    /// Applied, failed its health checks, and the host went back to the
    /// last healthy commit (`health.rollback`).
    RolledBack,
    /// A status this version does not know (a newer agent wrote it).
    #[serde(other)]
    Unknown,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::InSync => "in sync",
            RunStatus::Drift => "drift",
            RunStatus::Converged => "converged",
            RunStatus::Failed => "failed",
            RunStatus::Error => "error",
            RunStatus::Refused => "refused",
            RunStatus::Unhealthy => "unhealthy",
            RunStatus::RolledBack => "rolled back",
            RunStatus::Unknown => "unknown",
        }
    }
}

/// Where the desired state came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// A directory path or a repository URL (credentials never included).
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The last commit this host applied, when it is not `commit` (a
    /// refused or broken commit, a check of a newer one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// A newer commit that was not applied because it does not render, and
    /// why; this run converged `commit`, the last good one, instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

/// A commit left unapplied, and the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub commit: String,
    pub reason: String,
}

/// Counts per outcome, computed once per run; the text headline and the
/// JSON print these same numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub resources: usize,
    pub in_sync: usize,
    /// Resources found drifted at the start of the run, before any change
    /// (so after an apply that repaired them all, `drift` = `changed`).
    pub drift: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut s = Summary {
            resources: outcomes.len(),
            ..Summary::default()
        };
        for o in outcomes {
            if o.status == Status::Drift || !o.drift.is_empty() {
                s.drift += 1;
            }
            match o.status {
                Status::InSync => s.in_sync += 1,
                Status::Drift => {}
                Status::Changed => s.changed += 1,
                Status::Failed => s.failed += 1,
                Status::Skipped => s.skipped += 1,
            }
        }
        s
    }
}

/// Reports list resources grouped by kind as the plan orders kinds, and
/// within a kind in natural order (`conf-2` before `conf-10`), whatever
/// order they were converged in.
fn sort_naturally(resources: &mut [Outcome]) {
    let mut kinds: Vec<crate::resource::Kind> = Vec::new();
    for r in resources.iter() {
        if !kinds.contains(&r.kind) {
            kinds.push(r.kind);
        }
    }
    let rank = |k: &crate::resource::Kind| kinds.iter().position(|x| x == k);
    resources.sort_by(|a, b| {
        rank(&a.kind)
            .cmp(&rank(&b.kind))
            .then_with(|| natord::compare(&a.resource, &b.resource))
    });
}

/// One run, end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub schema: u32,
    pub trueup_version: String,
    pub host: String,
    pub mode: Mode,
    pub dry_run: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_ms: u64,
    pub source: SourceInfo,
    pub status: RunStatus,
    pub summary: Summary,
    /// The host's SSH public key (`ssh-ed25519 AAAA...`), the one its age
    /// secrets are decrypted with: `trueup secrets recipients` lists it
    /// for review beside the key fleet.yaml pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Every resource that is not in sync (in-sync ones are only counted).
    pub resources: Vec<ReportedResource>,
    /// Errors that stopped the run before any change, one per line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The health checks after the run, and a rollback if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthReport>,
    /// The first line of `source.commit`'s message, for people reading
    /// the fleet (the fleet report's rollout picture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_subject: Option<String>,
    /// `source.commit`'s author, `Name <email>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_author: Option<String>,
    /// The agent's run interval, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// The longest time between two notes of an unchanged host, in
    /// seconds: a host silent for twice this is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// Set while convergence is paused (`trueup disable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<DisabledInfo>,
    /// The agent runs in audit mode (`mode: check`): drift is reported,
    /// never repaired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// The facts this run rendered with, `machine_id` left out, so the
    /// fleet's states can be validated centrally (`validate --fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::facts::PublishedFacts>,
    /// What the error that stopped the run calls for (retry soon, wait,
    /// fix the configuration), when a typed backend error said; for a run
    /// whose resources failed, transient when any of their failures is
    /// (another apt held the dpkg lock), else permanent. For the agent's
    /// schedule only, not part of the report's JSON.
    #[serde(skip)]
    pub error_class: Option<crate::error_class::ErrorClass>,
}

/// Why and since when a host is paused, as a report tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisabledInfo {
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// A resource as it appears in a report (the `Outcome` of one step).
pub type ReportedResource = Outcome;

/// What the failed resources of a run call for: transient when any
/// failure is (a retry soon may mend it), permanent when all are (an
/// unclassified failure counts as permanent); `None` when none failed.
pub fn failures_class(outcomes: &[Outcome]) -> Option<crate::error_class::ErrorClass> {
    use crate::error_class::ErrorClass;
    let failed = outcomes.iter().filter(|o| o.status == Status::Failed);
    let mut class = None;
    for o in failed {
        match o.error_class {
            Some(ErrorClass::Transient) => return Some(ErrorClass::Transient),
            _ => class = Some(ErrorClass::Permanent),
        }
    }
    class
}

impl RunReport {
    /// A report of a run that stopped before touching anything (and the
    /// base every report starts from).
    pub fn failed_early(
        host: &str,
        mode: Mode,
        dry_run: bool,
        started: std::time::SystemTime,
        source: SourceInfo,
        status: RunStatus,
        errors: Vec<String>,
    ) -> RunReport {
        RunReport {
            schema: SCHEMA_VERSION,
            trueup_version: env!("CARGO_PKG_VERSION").to_string(),
            host: host.to_string(),
            mode,
            dry_run,
            started_at: rfc3339(started),
            duration_ms: elapsed_ms(started),
            source,
            status,
            summary: Summary::default(),
            host_key: None,
            resources: vec![],
            errors,
            health: None,
            commit_subject: None,
            commit_author: None,
            interval_secs: None,
            heartbeat_secs: None,
            disabled: None,
            audit: false,
            facts: None,
            error_class: None,
        }
    }

    /// A report of a run that planned (and maybe applied) its resources.
    pub fn from_outcomes(
        host: &str,
        mode: Mode,
        dry_run: bool,
        started: std::time::SystemTime,
        source: SourceInfo,
        outcomes: Vec<Outcome>,
    ) -> RunReport {
        let summary = Summary::of(&outcomes);
        let status = if summary.failed > 0 || summary.skipped > 0 {
            RunStatus::Failed
        } else if summary.changed > 0 {
            RunStatus::Converged
        } else if summary.drift > 0 {
            RunStatus::Drift
        } else {
            RunStatus::InSync
        };
        let mut report =
            RunReport::failed_early(host, mode, dry_run, started, source, status, vec![]);
        report.error_class = failures_class(&outcomes);
        report.summary = summary;
        report.resources = outcomes
            .into_iter()
            .filter(|o| o.status != Status::InSync)
            .collect();
        sort_naturally(&mut report.resources);
        report
    }

    /// The one-line summary people read first (and the note's first line).
    pub fn headline(&self) -> String {
        let commit = self
            .source
            .commit
            .as_deref()
            .map(|c| format!(" {}", short_id(c, 12)))
            .unwrap_or_default();
        let s = &self.summary;
        let rejected = self
            .source
            .rejected
            .as_ref()
            .map(|r| {
                // A commit rolled back for failing its checks, or one that
                // does not render.
                let why = if r.reason.starts_with("rolled back") {
                    "was rolled back"
                } else {
                    "does not render"
                };
                format!(" (kept: {} {why})", short_id(&r.commit, 12))
            })
            .unwrap_or_default();
        let line = match self.status {
            RunStatus::Error | RunStatus::Refused => format!(
                "trueup {} {}{commit}: {}",
                mode_word(self.mode),
                self.status.as_str(),
                self.errors.first().map(String::as_str).unwrap_or("")
            ),
            RunStatus::RolledBack => {
                let h = self.health.as_ref();
                let to = h
                    .and_then(|h| h.rollback.as_ref())
                    .map(|r| short_id(&r.to, 12).to_string())
                    .unwrap_or_default();
                format!(
                    "trueup {} rolled back{commit} to {to}: {}",
                    mode_word(self.mode),
                    h.map(|h| h.failed_required().join("; "))
                        .unwrap_or_default()
                )
            }
            RunStatus::Unhealthy => format!(
                "trueup {} unhealthy{commit}: {}",
                mode_word(self.mode),
                self.health
                    .as_ref()
                    .map(|h| h.failed_required().join("; "))
                    .unwrap_or_default()
            ),
            _ => format!(
                "trueup {} {}{commit}: {} resources, {} drift, {} changed, {} failed",
                mode_word(self.mode),
                self.status.as_str(),
                s.resources,
                s.drift,
                s.changed,
                s.failed + s.skipped
            ),
        };
        line + &rejected
    }

    /// Records what a fleet's readers need to know about this host beside
    /// the run: how often it runs and reports, whether it is paused, and
    /// whether it only audits.
    pub fn set_host_context(
        &mut self,
        interval: std::time::Duration,
        heartbeat: std::time::Duration,
        disabled: Option<&crate::state::Disabled>,
        audit: bool,
    ) {
        self.interval_secs = Some(interval.as_secs());
        self.heartbeat_secs = Some(heartbeat.as_secs());
        self.disabled = disabled.map(|d| DisabledInfo {
            reason: d.reason.clone(),
            since: d.since.clone(),
        });
        self.audit = audit;
    }

    /// Records the facts the run rendered with (without `machine_id`).
    pub fn set_facts(&mut self, facts: &crate::facts::Facts) {
        self.facts = Some(facts.into());
    }

    /// Records the subject and author of `source.commit`
    /// (`GitCache::commit_details`).
    pub fn set_commit_details(&mut self, subject: Option<String>, author: Option<String>) {
        self.commit_subject = subject;
        self.commit_author = author;
    }

    /// The report as `last-run.json` at `path`, for
    /// `safe_fs::write_own_files` (atomic: readers see the old report or
    /// the new one), written by `fill` straight into the file: a report of
    /// a thousand resources is a quarter of a megabyte that need never be
    /// in memory at once. A run that found the host in sync does not wait
    /// for the disk: it changed nothing, and an agent makes one every
    /// interval, so its report is not worth two flushes each time on every
    /// host. A power cut may then cost that report (the one before it
    /// stays, or on a file system that does not order a rename after the
    /// data it names, `status` says the file is broken until the next
    /// run); every other report is synced.
    pub fn last_run_file<'a>(
        &self,
        path: &'a Path,
        fill: &'a mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> crate::safe_fs::OwnFile<'a> {
        crate::safe_fs::OwnFile {
            path,
            mode: 0o644,
            sync: self.status != RunStatus::InSync,
            fill,
        }
    }

    /// Reads `last-run.json`, if there is one.
    pub fn read_last_run(state_dir: &Path) -> Result<Option<RunReport>, String> {
        let path = state_dir.join("last-run.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// The first `max` bytes of a commit id, cut at a character boundary: a
/// report read back from a note or `last-run.json` may hold any text.
pub fn short_id(id: &str, max: usize) -> &str {
    let mut end = id.len().min(max);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

fn mode_word(mode: Mode) -> &'static str {
    match mode {
        Mode::Check => "check",
        Mode::Apply => "apply",
    }
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn elapsed_ms(started: std::time::SystemTime) -> u64 {
    started
        .elapsed()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_of_a_report_with_a_non_hex_commit_does_not_panic() {
        // Regression: a note whose commit held a multi-byte character
        // across byte 12 panicked in headline() ("not a char boundary"),
        // and `fleet status` reads every host's notes.
        assert_eq!(short_id("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(short_id("aé", 12), "aé");
        assert_eq!(
            short_id(&format!("a{}", "é".repeat(20)), 12),
            format!("a{}", "é".repeat(5))
        );
        let text = r#"{"schema":1,"trueup_version":"0","host":"h","mode":"apply","dry_run":false,
            "started_at":"2026-01-01T00:00:00Z","duration_ms":0,
            "source":{"location":"x","commit":"aéééééééééééééé"},
            "status":"in_sync","summary":{"resources":0,"in_sync":0,"drift":0,"changed":0,"failed":0,"skipped":0},
            "resources":[]}"#;
        let report: RunReport = serde_json::from_str(text).unwrap();
        assert!(
            report.headline().contains(" aééééé:"),
            "{}",
            report.headline()
        );
    }
}
