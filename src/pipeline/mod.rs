//! One run, as one pipeline of typed stages:
//!
//! source → verify → render → observe → plan → apply → health → report
//!
//! - **source** (`git.rs`): locate the configured source; for Git, fetch the
//!   host branch (only if its tip moved) into the cache. Fails with a
//!   [`Stop`] carrying the error's class (retry soon, wait, or a broken
//!   configuration).
//! - **verify** (`git.rs`): the tip's signature and its ancestry, into a
//!   [`TipVerdict`]; then [`choose_commit`] decides which commit this run
//!   converges.
//! - **render, observe, plan, apply** (`converge.rs`): one commit (or a
//!   directory) into changes, each stage returning a typed result; the
//!   first failure stops the commit before anything changed. A tip that
//!   does not render asks [`choose_commit`] again, which falls back on the
//!   last good commit.
//! - **health** (`crate::health::Stage`): the branch's checks after an
//!   apply, and a rollback to the last healthy commit, converged through
//!   this same pipeline.
//! - **report**: `Run::report` builds every report of a run, early or
//!   not, in one place; for Git, the applied commit is recorded in
//!   `state.json` and the run written as a note and pushed.
//!
//! The host's state (`state.json`) has one owner for the whole run: the
//! caller loads it under the run lock and lends it here. Everything here
//! blocks; the agent calls it from a blocking thread.

mod choose;
mod converge;
mod git;

use std::time::SystemTime;

pub use choose::{CommitChoice, TipVerdict, choose_commit};
pub use converge::Converged;

use crate::agent::{Phase, RunControl};
use crate::config::Settings;
use crate::error_class::ErrorClass;
use crate::facts::Facts;
use crate::report::{Mode, RunReport, RunStatus, SourceInfo};
use crate::secrets::Secrets;
use crate::source::DirTree;
use crate::source::remote::{self, Location};
use crate::state::HostState;
use tracing::{error, warn};

/// How this run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    pub mode: Mode,
    /// Apply mode, but change nothing.
    pub dry_run: bool,
    /// Use the cache; do not contact the remote (no fetch, no push).
    pub offline: bool,
}

/// Why a stage stopped the run (or one commit of it) before anything was
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The agent's configuration cannot work (no source, a branch
    /// template that is no branch name): the agent exits 78.
    Configuration(String),
    /// The source could not be read (the network, the server, the cache,
    /// credentials), classed by the backend's typed error.
    Source { message: String, class: ErrorClass },
    /// The tip must not be used (untrusted, or not descending from the
    /// applied commit): nothing is rendered.
    Refused(String),
    /// The commit does not render or validate for this host (a YAML error,
    /// a missing variable, a path outside `allowed_paths`, a plan that
    /// cannot be made): the last good commit is converged instead.
    Invalid(Vec<String>),
    /// This machine cannot be read as the commit needs (its accounts), or
    /// cannot do what is asked (a rollback from a directory).
    Host(String),
}

impl Stop {
    fn status(&self) -> RunStatus {
        match self {
            Stop::Refused(_) => RunStatus::Refused,
            _ => RunStatus::Error,
        }
    }

    fn errors(self) -> Vec<String> {
        match self {
            Stop::Configuration(m)
            | Stop::Source { message: m, .. }
            | Stop::Refused(m)
            | Stop::Host(m) => vec![m],
            Stop::Invalid(errors) => errors,
        }
    }

    fn class(&self) -> Option<ErrorClass> {
        match self {
            Stop::Configuration(_) => Some(ErrorClass::Configuration),
            Stop::Source { class, .. } => Some(*class),
            Stop::Refused(_) | Stop::Invalid(_) | Stop::Host(_) => None,
        }
    }
}

/// What every stage of one run shares, read-only.
pub(crate) struct Run<'a> {
    settings: &'a Settings,
    facts: &'a Facts,
    opts: RunOptions,
    control: &'a RunControl,
    started: SystemTime,
    /// The host key age secrets are decrypted with, loaded once per run;
    /// a key that cannot be read fails only the files made from secrets.
    secrets: Secrets,
    /// Whether `state.json` is saved with the report (a Git run that got
    /// as far as its record stage).
    save_state: std::cell::Cell<bool>,
}

/// Runs once from `settings.repo` (a directory or a Git URL) for this host.
///
/// `state` is the host's state, loaded once by the caller under the run
/// lock; a Git run updates it and saves it before returning.
pub fn run(
    settings: &Settings,
    facts: &Facts,
    opts: RunOptions,
    control: &RunControl,
    state: &mut HostState,
) -> RunReport {
    let run = Run {
        settings,
        facts,
        opts,
        control,
        started: SystemTime::now(),
        secrets: Secrets::for_host(&settings.secrets_identity),
        save_state: std::cell::Cell::new(false),
    };
    let report = match settings.repo.as_deref().map(remote::locate) {
        None => run.report(
            SourceInfo::default(),
            Err(Stop::Configuration(
                "no source: set repo in the configuration or give --source".into(),
            )),
        ),
        // A URL was checked when the configuration loaded; what is left is
        // a directory that is not there (yet): retried with backoff.
        Some(Err(message)) => run.report(SourceInfo::default(), Err(Stop::Host(message))),
        Some(Ok(Location::Dir(dir))) => run.directory(&DirTree::new(dir), state),
        Some(Ok(Location::Git(url))) => run.git(&url, state),
    };
    run.save(&report, state);
    report
}

impl Run<'_> {
    /// Writes `last-run.json`, and `state.json` when the run updated it,
    /// together (`safe_fs::write_own_files`): three journal commits for
    /// both where one after the other took four.
    fn save(&self, report: &RunReport, state: &HostState) {
        let dir = &self.settings.state_dir;
        let state_json = if self.save_state.get() {
            state.to_save(dir).unwrap_or_else(|e| {
                error!(error = %e, "could not save state.json");
                None
            })
        } else {
            None
        };
        let report_path = dir.join("last-run.json");
        let mut fill_report = |out: &mut dyn std::io::Write| {
            serde_json::to_writer_pretty(out, report).map_err(std::io::Error::other)
        };
        let report_file = report.last_run_file(&report_path, &mut fill_report);
        let Some(json) = state_json else {
            if let Err(e) = crate::safe_fs::write_own_files(&mut [report_file])[0].as_ref() {
                warn!(error = %e, state_dir = %dir.display(), "could not write last-run.json");
            }
            return;
        };
        let state_path = HostState::path(dir);
        let mut fill_state = |out: &mut dyn std::io::Write| out.write_all(&json);
        let state_file = crate::safe_fs::OwnFile {
            path: &state_path,
            mode: 0o644,
            sync: true,
            fill: &mut fill_state,
        };
        // The state first: of a crash between the two renames, a new state
        // beside the last report is what the next run can stand on.
        let [saved, written] = crate::safe_fs::write_own_files(&mut [state_file, report_file]);
        if let Err(e) = saved {
            error!(error = %e, path = %state_path.display(), "could not save state.json");
        }
        if let Err(e) = written {
            warn!(error = %e, state_dir = %dir.display(), "could not write last-run.json");
        }
    }

    /// The report stage: every report of a run, of a stop or of converged
    /// resources, is made here.
    pub(crate) fn report(
        &self,
        source: SourceInfo,
        result: Result<Vec<crate::apply::Outcome>, Stop>,
    ) -> RunReport {
        let (host, mode, dry_run) = (&self.facts.hostname, self.opts.mode, self.opts.dry_run);
        let mut report = match result {
            Ok(outcomes) => {
                RunReport::from_outcomes(host, mode, dry_run, self.started, source, outcomes)
            }
            Err(stop) => {
                let class = stop.class();
                let status = stop.status();
                RunReport {
                    error_class: class,
                    ..RunReport::failed_early(
                        host,
                        mode,
                        dry_run,
                        self.started,
                        source,
                        status,
                        stop.errors(),
                    )
                }
            }
        };
        // The key this host's age secrets are encrypted to, on every
        // report, even one that rendered nothing (a fetch error, a refused
        // commit).
        report.host_key = self.secrets.public_key().map(str::to_string);
        report
    }

    /// [`Run::report`] of a converge, and the desired state it rendered.
    fn report_converged(
        &self,
        source: SourceInfo,
        result: Result<Converged, Stop>,
    ) -> (RunReport, Option<crate::desired::DesiredState>) {
        match result {
            Ok(c) => (self.report(source, Ok(c.outcomes)), c.desired),
            Err(stop) => (self.report(source, Err(stop)), None),
        }
    }

    /// A directory has no commit: checks run and are reported, nothing is
    /// rolled back, and `state.json` is left alone.
    fn directory(&self, dir: &DirTree, state: &HostState) -> RunReport {
        self.control.phase(Phase::Converging);
        let info = SourceInfo {
            location: dir.root().display().to_string(),
            ..SourceInfo::default()
        };
        let (mut report, desired) = self.report_converged(info, self.converge(dir, None));
        // A copy: nothing here is saved.
        let mut state = state.clone();
        let stop = || self.control.should_stop();
        self.health(false, &stop)
            .after_run(&mut report, desired.as_ref(), &mut state, &mut |_| {
                let stop = Stop::Host("a directory source has no commit to roll back to".into());
                (self.report(SourceInfo::default(), Err(stop)), None)
            });
        report.set_facts(self.facts);
        report
    }

    /// The health stage, as this run runs it.
    fn health<'s>(
        &'s self,
        can_roll_back: bool,
        stop: &'s dyn Fn() -> bool,
    ) -> crate::health::Stage<'s> {
        self.control.phase(Phase::Checking);
        crate::health::Stage {
            root: &self.settings.root,
            state_dir: &self.settings.state_dir,
            can_roll_back,
            stop,
            lock: Some(self.control),
        }
    }
}
