//! One run from a configured source, as the one-shot commands and the agent
//! both do it: fetch the host branch (only if its tip moved), verify who
//! signed the tip, refuse a rollback, render and check or converge, record
//! the applied commit, write the run as a Git note and push it.
//!
//! Every outcome is a `RunReport`: a fetch that fails is an `error`
//! report, an untrusted commit a `refused` one (nothing rendered, nothing
//! changed, the refusal noted on that commit). A failed notes push never
//! fails the run; `state.json` remembers to push next time. Everything here
//! blocks; the agent calls it from a blocking thread.

use std::time::{SystemTime, UNIX_EPOCH};

use git2::Oid;
use tracing::{error, info, warn};

use crate::agent::{Phase, RunControl};
use crate::config::Settings;
use crate::error_class::{Classify, ErrorClass};
use crate::facts::Facts;
use crate::pipeline::{CommitChoice, TipVerdict, choose_commit};
use crate::report::notes;
use crate::report::{Mode, RunReport, RunStatus, SourceInfo, short_id};
use crate::run::{RunOptions, run_with_state};
use crate::source::DirTree;
use crate::source::git::{GitCache, valid_branch};
use crate::source::remote::{self, Location, RemoteUrl};
use crate::source::trust;
use crate::state::HostState;

/// How this run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleOptions {
    pub mode: Mode,
    /// Apply mode, but change nothing.
    pub dry_run: bool,
    /// Use the cache; do not contact the remote (no fetch, no push).
    pub offline: bool,
}

/// Runs once from `settings.repo` (a directory or a Git URL) for this host.
///
/// `state` is the host's state, loaded once by the caller under the run
/// lock; a Git run updates it and saves it before returning.
pub fn run_cycle(
    settings: &Settings,
    facts: &Facts,
    opts: &CycleOptions,
    control: &RunControl,
    state: &mut HostState,
) -> RunReport {
    let started = SystemTime::now();
    let run_opts = RunOptions {
        root: settings.root.clone(),
        state_dir: settings.state_dir.clone(),
        mode: opts.mode,
        dry_run: opts.dry_run,
        packages: settings.package_settings(),
        allowed_paths: settings.allowed_paths.clone(),
        secrets_identity: settings.secrets_identity.clone(),
    };
    let error = |location: String, message: String| {
        RunReport::failed_early(
            &facts.hostname,
            opts.mode,
            opts.dry_run,
            started,
            SourceInfo {
                location,
                ..SourceInfo::default()
            },
            RunStatus::Error,
            vec![message],
        )
    };
    let misconfigured = |message: String| RunReport {
        error_class: Some(ErrorClass::Configuration),
        ..error(String::new(), message)
    };
    let Some(source) = settings.repo.as_deref() else {
        return misconfigured("no source: set repo in the configuration or give --source".into());
    };
    match remote::locate(source) {
        // A URL was checked when the configuration loaded; what is left is
        // a directory that is not there (yet): retried with backoff.
        Err(message) => error(String::new(), message),
        Ok(Location::Dir(dir)) => {
            control.phase(Phase::Converging);
            let info = SourceInfo {
                location: dir.display().to_string(),
                ..SourceInfo::default()
            };
            let stop = || control.should_stop();
            let (mut report, desired) =
                run_with_state(&DirTree::new(dir), info, facts, &run_opts, &stop);
            // A directory has no commit: checks run and are reported,
            // nothing is rolled back, and state.json is left alone.
            {
                // A copy: nothing here is saved.
                let mut state = state.clone();
                control.phase(Phase::Checking);
                crate::health::Stage {
                    root: &settings.root,
                    state_dir: &settings.state_dir,
                    can_roll_back: false,
                    stop: &stop,
                    lock: Some(control),
                }
                .after_run(&mut report, desired.as_ref(), &mut state, &mut |_| {
                    (report_without_rollback(&run_opts, facts), None)
                });
            }
            report.set_facts(facts);
            report
        }
        Ok(Location::Git(url)) => {
            let cycle = Cycle {
                settings,
                facts,
                opts,
                started,
                control,
            };
            git_cycle(cycle, &run_opts, &url, state)
        }
    }
}

/// What every part of one run shares.
#[derive(Clone, Copy)]
struct Cycle<'a> {
    settings: &'a Settings,
    facts: &'a Facts,
    opts: &'a CycleOptions,
    started: SystemTime,
    control: &'a RunControl,
}

fn git_cycle(
    cycle: Cycle<'_>,
    run_opts: &RunOptions,
    url: &RemoteUrl,
    state: &mut HostState,
) -> RunReport {
    let Cycle {
        settings,
        facts,
        opts,
        started,
        control,
    } = cycle;
    let branch = settings.branch_for(facts);
    let mut info = SourceInfo {
        location: url.redacted().to_string(),
        branch: Some(branch.clone()),
        ..SourceInfo::default()
    };
    let early = |info: &SourceInfo, status, message: String| {
        RunReport::failed_early(
            &facts.hostname,
            opts.mode,
            opts.dry_run,
            started,
            info.clone(),
            status,
            vec![message],
        )
    };
    if !valid_branch(&branch) {
        return RunReport {
            error_class: Some(ErrorClass::Configuration),
            ..early(
                &info,
                RunStatus::Error,
                format!("branch '{branch}' is not a valid branch name"),
            )
        };
    }
    control.phase(Phase::Fetching);
    let mut cache = match GitCache::open(&settings.state_dir) {
        Ok(c) => c,
        Err(e) => return early(&info, RunStatus::Error, e.to_string()),
    };
    let tip = if opts.offline {
        cache.cached_tip(&branch)
    } else {
        cache.update(url, &settings.auth, &branch).map(|t| t.commit)
    };
    let tip = match tip {
        Ok(t) => t,
        Err(e) => {
            warn!(branch = %branch, error = %e, class = e.class().as_str(), "cannot fetch the host branch");
            return RunReport {
                error_class: Some(e.class()),
                ..early(
                    &info,
                    RunStatus::Error,
                    format!("fetching branch {branch}: {e}"),
                )
            };
        }
    };
    let tip_hex = tip.to_string();
    info.commit = Some(tip_hex.clone());
    info.applied = state.applied_commit.clone().filter(|a| *a != tip_hex);
    // A commit rolled back for failing its health checks is not applied
    // again until the branch tip moves; the last healthy commit is.
    let choice = choose_commit(&tip_hex, &TipVerdict::Verified, state);
    if choice.clears_bad_commit(state) {
        state.bad_commit = None;
    }
    let stay = match choice {
        CommitChoice::StayHealthy { commit, reason, .. } => Some(StayHealthy { commit, reason }),
        _ => None,
    };

    let mut desired = None;
    let report = match refusal(&cache, tip, state, settings) {
        Some(reason) => {
            warn!(commit = %tip_hex, reason = %reason, "commit refused");
            early(&info, RunStatus::Refused, reason)
        }
        None => {
            let (commit, info) = match &stay {
                Some(s) => (
                    Oid::from_str(&s.commit).unwrap_or(tip),
                    SourceInfo {
                        commit: Some(s.commit.clone()),
                        applied: None,
                        rejected: Some(crate::report::Rejected {
                            commit: tip_hex.clone(),
                            reason: s.reason.clone(),
                        }),
                        ..info
                    },
                ),
                None => (tip, info),
            };
            let hex = commit.to_string();
            let describe = format!("commit {} of {} ({branch})", &hex[..12], url);
            match cache.tree(commit, describe.clone()) {
                Err(e) => early(&info, RunStatus::Error, e.to_string()),
                Ok(tree) => {
                    control.phase(Phase::Converging);
                    let (mut r, mut d) =
                        run_with_state(&tree, info.clone(), facts, run_opts, &|| {
                            control.should_stop()
                        });
                    // A cache that lost objects never heals by itself (the
                    // tip did not move, nothing fetches): rebuild, run again.
                    if tree.missing_objects() && !opts.offline {
                        drop(tree);
                        let rebuilt = cache
                            .rebuild()
                            .and_then(|()| cache.update(url, &settings.auth, &branch))
                            .and_then(|_| cache.tree(commit, describe));
                        match rebuilt {
                            Ok(tree) => {
                                (r, d) = run_with_state(&tree, info, facts, run_opts, &|| {
                                    control.should_stop()
                                });
                            }
                            Err(e) => r.errors.push(format!("rebuilding the Git cache: {e}")),
                        }
                    }
                    desired = d;
                    r
                }
            }
        }
    };
    let tip_hex = match &stay {
        Some(s) if report.status != RunStatus::Refused => s.commit.clone(),
        _ => tip_hex,
    };
    // A new commit that does not render is not applied; the host keeps
    // converging the last good commit, and the broken one gets a note
    // saying why.
    let mut noted_broken = false;
    let runner = CommitRunner {
        cache: &cache,
        url,
        branch: &branch,
        facts,
        run_opts,
        started,
        control,
    };
    // The one decision of which commit to fall back on (crate::pipeline):
    // a tip that did not render (no desired state came of it).
    let verdict = if report.status == RunStatus::Error
        && desired.is_none()
        && report.source.commit.as_deref() == Some(tip_hex.as_str())
    {
        TipVerdict::Unrenderable(report.errors.join("; "))
    } else {
        TipVerdict::Verified
    };
    let (report, applied) = match choose_commit(&tip_hex, &verdict, state) {
        CommitChoice::LastGood {
            commit: good,
            rejected,
            reason,
        } => {
            noted_broken = settings.report.notes && note_broken_commit(&cache, &report);
            let rejected = crate::report::Rejected {
                commit: rejected,
                reason,
            };
            let fallback =
                runner.converge_last_good(&good, rejected, report.source.location.clone());
            (fallback, good)
        }
        _ => (report, tip_hex),
    };
    let tip_hex = applied;
    let mut report = report;
    // What `validate --fleet` renders this host's state with (issue 11).
    report.set_facts(facts);
    {
        control.phase(Phase::Checking);
        let stop = || control.should_stop();
        let stage = crate::health::Stage {
            root: &settings.root,
            state_dir: &settings.state_dir,
            can_roll_back: settings.root == std::path::Path::new("/"),
            stop: &stop,
            lock: Some(control),
        };
        stage.after_run(&mut report, desired.as_ref(), state, &mut |commit| {
            runner.converge_commit(commit)
        });
    }
    // What the fleet report needs beside the run (issue 16), after a
    // rollback may have changed the commit.
    report.set_host_context(
        settings.interval,
        settings.report.heartbeat,
        state.disabled.as_ref(),
        settings.mode == crate::config::AgentMode::Check,
    );
    // The key this host's age secrets are encrypted to, on every report,
    // even one that rendered nothing (a fetch error, a refused commit).
    if report.host_key.is_none() {
        report.host_key = crate::secrets::HostIdentity::load(&settings.secrets_identity)
            .ok()
            .map(|id| id.public_key().to_string());
    }
    report.set_commit_details(cache.repo());

    control.phase(Phase::Reporting);
    if opts.mode == Mode::Apply
        && !opts.dry_run
        && matches!(
            report.status,
            RunStatus::Converged | RunStatus::InSync | RunStatus::Failed | RunStatus::Unhealthy
        )
    {
        state.applied_commit = Some(tip_hex);
        state.applied_at = Some(crate::report::rfc3339(SystemTime::now()));
    }
    if settings.report.notes {
        note_and_push(
            &cache,
            url,
            settings,
            &report,
            state,
            opts.offline,
            noted_broken,
        );
    }
    if let Err(e) = state.save(&settings.state_dir) {
        error!(error = %e, "could not save state.json");
    }
    report
}

/// Why `tip` must not be used, if it must not: an untrusted signature, or
/// a tip that does not descend from the last applied commit.
fn refusal(cache: &GitCache, tip: Oid, state: &HostState, settings: &Settings) -> Option<String> {
    let trust = &settings.trust;
    if trust.required() {
        match trust::verify_commit(cache.repo(), tip, trust) {
            Ok(signer) => {
                info!(commit = %tip, signer = %signer.identity, method = signer.method, "signature verified");
            }
            Err(e) => return Some(e.to_string()),
        }
    }
    let prev = state.applied_commit.as_deref()?;
    if trust.allow_rewind || prev == tip.to_string() {
        return None;
    }
    let descends = Oid::from_str(prev).is_ok_and(|p| cache.descends_from(tip, p));
    (!descends).then(|| {
        format!(
            "commit {tip} does not descend from the last applied commit {prev} (a force-push, or an older commit replayed); set trust.allow_rewind: true to accept it"
        )
    })
}

/// Writes a note when one is due, and pushes any note not yet pushed.
fn note_and_push(
    cache: &GitCache,
    url: &RemoteUrl,
    settings: &Settings,
    report: &RunReport,
    state: &mut HostState,
    offline: bool,
    other_note_written: bool,
) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let heartbeat = settings.report.heartbeat.as_secs();
    if notes::note_due(state.last_note.as_ref(), report, heartbeat, now) {
        match notes::write_note(cache.repo(), report) {
            Ok(_) => state.last_note = notes::mark(report, now),
            Err(e) => warn!(error = %e.message(), "could not write the note"),
        }
    }
    if let Some(m) = state.last_note.as_mut()
        && other_note_written
    {
        m.unpushed = true;
    }
    let Some(mark) = state.last_note.as_mut().filter(|m| m.unpushed) else {
        return;
    };
    if offline {
        return;
    }
    let (url, auth) = match notes::reports_remote(settings, url) {
        Ok(target) => target,
        Err(e) => {
            warn!(error = %e, "notes not pushed; the next run tries again");
            return;
        }
    };
    match notes::push_notes(cache.repo(), &url, &auth, &report.host) {
        Ok(()) => mark.unpushed = false,
        Err(e) => warn!(error = %e, "notes not pushed; the next run tries again"),
    }
}

/// Notes a commit that was not applied, once: not again while the note on
/// it already says the same. Returns whether a note was written.
fn note_broken_commit(cache: &GitCache, report: &RunReport) -> bool {
    let Some(commit) = report.source.commit.as_deref() else {
        return false;
    };
    let reference = notes::notes_ref(&report.host);
    let already = Oid::from_str(commit)
        .ok()
        .and_then(|oid| cache.repo().find_note(Some(&reference), oid).ok())
        .and_then(|n| n.message().ok().map(str::to_string))
        .and_then(|text| notes::parse_note(&text).ok())
        .is_some_and(|(_, old)| old.status == report.status && old.errors == report.errors);
    if already {
        return false;
    }
    match notes::write_note(cache.repo(), report) {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e.message(), commit, "could not note the broken commit");
            false
        }
    }
}

/// What converging one commit of the cache takes, so falling back to the
/// last good commit and rolling back to the last healthy one share one way
/// to run a commit (and no function takes nine arguments).
struct CommitRunner<'a> {
    cache: &'a GitCache,
    url: &'a RemoteUrl,
    branch: &'a str,
    facts: &'a Facts,
    run_opts: &'a RunOptions,
    started: SystemTime,
    control: &'a RunControl,
}

impl CommitRunner<'_> {
    /// Converges `commit`, reported as `info`, and hands back its report
    /// and rendered state.
    fn converge(
        &self,
        commit: &str,
        info: SourceInfo,
    ) -> (RunReport, Option<crate::desired::DesiredState>) {
        let branch = self.branch;
        let tree = Oid::from_str(commit)
            .map_err(|e| e.to_string())
            .and_then(|oid| {
                self.cache
                    .tree(
                        oid,
                        format!("commit {} of {} ({branch})", short_id(commit, 12), self.url),
                    )
                    .map_err(|e| e.to_string())
            });
        match tree {
            Ok(tree) => {
                self.control.phase(Phase::Converging);
                run_with_state(&tree, info, self.facts, self.run_opts, &|| {
                    self.control.should_stop()
                })
            }
            Err(e) => (
                RunReport::failed_early(
                    &self.facts.hostname,
                    self.run_opts.mode,
                    self.run_opts.dry_run,
                    self.started,
                    info,
                    RunStatus::Error,
                    vec![format!("the commit {commit} is not in the cache: {e}")],
                ),
                None,
            ),
        }
    }

    /// Converges the last good commit, reporting the rejected one beside it.
    fn converge_last_good(
        &self,
        good: &str,
        rejected: crate::report::Rejected,
        location: String,
    ) -> RunReport {
        warn!(commit = %rejected.commit, kept = good, reason = %rejected.reason, "new commit does not render; converging the last good commit");
        let info = SourceInfo {
            location,
            branch: Some(self.branch.to_string()),
            commit: Some(good.to_string()),
            applied: None,
            rejected: Some(rejected),
        };
        self.converge(good, info).0
    }

    /// Converges `commit` (the last healthy one, on a rollback).
    fn converge_commit(&self, commit: &str) -> (RunReport, Option<crate::desired::DesiredState>) {
        let info = SourceInfo {
            location: self.url.redacted().to_string(),
            branch: Some(self.branch.to_string()),
            commit: Some(commit.to_string()),
            ..SourceInfo::default()
        };
        self.converge(commit, info)
    }
}

/// A directory source never rolls back; this report stands in for the
/// converge a rollback would run.
fn report_without_rollback(run_opts: &RunOptions, facts: &Facts) -> RunReport {
    RunReport::failed_early(
        &facts.hostname,
        run_opts.mode,
        run_opts.dry_run,
        SystemTime::now(),
        SourceInfo::default(),
        RunStatus::Error,
        vec!["a directory source has no commit to roll back to".into()],
    )
}

/// The last healthy commit this run converges instead of a tip that was
/// rolled back, and why (from `pipeline::choose_commit`).
struct StayHealthy {
    commit: String,
    reason: String,
}
