//! The pipeline from a Git source: fetch the host branch, verify its tip,
//! choose the commit, converge it (falling back on the last good commit,
//! rolling back to the last healthy one), and record the run: the applied
//! commit in `state.json`, the run as a note on the commit, pushed.
//!
//! A fetch that fails is an `error` report, an untrusted commit a
//! `refused` one (nothing rendered, nothing changed, the refusal noted on
//! that commit). A failed notes push never fails the run; `state.json`
//! remembers to push next time.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::{CommitChoice, Converged, Run, Stop, TipVerdict, choose_commit};
use crate::agent::Phase;
use crate::desired::DesiredState;
use crate::error_class::Classify;
use crate::report::notes;
use crate::report::{Mode, Rejected, RunReport, RunStatus, SourceInfo, short_id};
use crate::source::git::{CommitId, GitCache, git2_oid, parse_commit_id, valid_branch};
use crate::source::remote::RemoteUrl;
use crate::source::trust;
use crate::state::HostState;

/// What the source stage hands on: the cache holding the fetched branch,
/// and its tip.
pub(super) struct Fetched<'u> {
    cache: GitCache,
    url: &'u RemoteUrl,
    branch: String,
    tip: CommitId,
}

impl Fetched<'_> {
    /// How a report names the source, for `commit`.
    fn info(&self, commit: &str) -> SourceInfo {
        SourceInfo {
            location: self.url.redacted().to_string(),
            branch: Some(self.branch.clone()),
            commit: Some(commit.to_string()),
            ..SourceInfo::default()
        }
    }
}

impl Run<'_> {
    /// The whole run from a Git source.
    pub(super) fn git(&self, url: &RemoteUrl, state: &mut HostState) -> RunReport {
        let branch = self.settings.branch_for(self.facts);
        let mut source = match self.fetch(url, &branch) {
            Ok(f) => f,
            Err(stop) => {
                let info = SourceInfo {
                    location: url.redacted().to_string(),
                    branch: Some(branch),
                    ..SourceInfo::default()
                };
                return self.report(info, Err(stop));
            }
        };
        let tip = source.tip.to_string();

        let verdict = match self.refusal(&source, state) {
            Some(reason) => {
                warn!(commit = %tip, reason = %reason, "commit refused");
                TipVerdict::Refused(reason)
            }
            None => TipVerdict::Verified,
        };
        let choice = choose_commit(&tip, &verdict, state);
        if choice.clears_bad_commit(state) {
            state.bad_commit = None;
        }
        let tip_info = SourceInfo {
            applied: state.applied_commit.clone().filter(|a| *a != tip),
            ..source.info(&tip)
        };
        // What the run converged, its report, and whether a note went on a
        // commit that was not applied.
        let mut noted_broken = false;
        let (mut report, desired, applied) = match choice {
            CommitChoice::Refused { reason, .. } => {
                (self.report(tip_info, Err(Stop::Refused(reason))), None, tip)
            }
            CommitChoice::StayHealthy { commit, reason, .. } => {
                // A commit rolled back for failing its health checks is not
                // applied again until the branch tip moves.
                let info = SourceInfo {
                    rejected: Some(Rejected {
                        commit: tip.clone(),
                        reason,
                    }),
                    ..source.info(&commit)
                };
                let (r, d) = self.converge_commit(&mut source, &commit, info);
                (r, d, commit)
            }
            _ => match self.converge_git(&mut source, &tip) {
                Err(Stop::Invalid(errors)) => {
                    let reason = errors.join("; ");
                    let broken = self.report(tip_info, Err(Stop::Invalid(errors)));
                    match choose_commit(&tip, &TipVerdict::Unrenderable(reason), state) {
                        CommitChoice::LastGood {
                            commit: good,
                            rejected,
                            reason,
                        } => {
                            // A new commit that does not render is not
                            // applied; the host keeps converging the last
                            // good commit, and the broken one gets a note
                            // saying why.
                            noted_broken = self.settings.report.notes
                                && note_broken_commit(&source.cache, &broken);
                            warn!(commit = %rejected, kept = %good, reason = %reason, "new commit does not render; converging the last good commit");
                            let info = SourceInfo {
                                rejected: Some(Rejected {
                                    commit: rejected,
                                    reason,
                                }),
                                ..source.info(&good)
                            };
                            let (r, d) = self.converge_commit(&mut source, &good, info);
                            (r, d, good)
                        }
                        _ => (broken, None, tip),
                    }
                }
                result => {
                    let (r, d) = self.report_converged(tip_info, result);
                    (r, d, tip)
                }
            },
        };

        let stop = || self.control.should_stop();
        let can_roll_back = self.settings.root == std::path::Path::new("/");
        self.health(can_roll_back, &stop).after_run(
            &mut report,
            desired.as_ref(),
            state,
            &mut |commit| {
                let info = source.info(commit);
                self.converge_commit(&mut source, commit, info)
            },
        );

        // What `validate --fleet` renders this host's state with, and what
        // the fleet report needs beside the run, after a rollback may have
        // changed the commit.
        report.set_facts(self.facts);
        report.set_host_context(
            self.settings.interval,
            self.settings.report.heartbeat,
            state.disabled.as_ref(),
            self.settings.mode == crate::config::AgentMode::Check,
        );
        if let Some((subject, author)) = report
            .source
            .commit
            .as_deref()
            .and_then(|c| parse_commit_id(c).ok())
            .and_then(|id| source.cache.commit_details(&id))
        {
            report.set_commit_details(subject, author);
        }

        self.control.phase(Phase::Reporting);
        self.record(&source, &report, applied, noted_broken, state);
        report
    }

    /// The source stage: the host branch fetched into the cache (only if
    /// its tip moved), or the cached tip when offline.
    fn fetch<'u>(&self, url: &'u RemoteUrl, branch: &str) -> Result<Fetched<'u>, Stop> {
        if !valid_branch(branch) {
            return Err(Stop::Configuration(format!(
                "branch '{branch}' is not a valid branch name"
            )));
        }
        self.control.phase(Phase::Fetching);
        let source_stop = |e: crate::source::transport::SourceError, what: String| Stop::Source {
            class: e.class(),
            message: format!("{what}{e}"),
        };
        let cache =
            GitCache::open(&self.settings.state_dir).map_err(|e| source_stop(e, String::new()))?;
        let tip = if self.opts.offline {
            cache.cached_tip(branch)
        } else {
            cache
                .update(url, &self.settings.auth, branch)
                .map(|t| t.commit)
        };
        let tip = tip.map_err(|e| {
            warn!(branch = %branch, error = %e, class = e.class().as_str(), "cannot fetch the host branch");
            source_stop(e, format!("fetching branch {branch}: "))
        })?;
        Ok(Fetched {
            cache,
            url,
            branch: branch.to_string(),
            tip,
        })
    }

    /// The verify stage: why the tip must not be used, if it must not (an
    /// untrusted signature, or a tip that does not descend from the last
    /// applied commit).
    fn refusal(&self, source: &Fetched, state: &HostState) -> Option<String> {
        let (cache, tip) = (&source.cache, source.tip);
        let trust = &self.settings.trust;
        if trust.required() {
            let verified = cache.repo().map_err(|e| e.to_string()).and_then(|repo| {
                trust::verify_commit(repo, git2_oid(&tip), trust).map_err(|e| e.to_string())
            });
            match verified {
                Ok(signer) => {
                    info!(commit = %tip, signer = %signer.identity, method = signer.method, "signature verified");
                }
                Err(e) => return Some(e),
            }
        }
        let prev = state.applied_commit.as_deref()?;
        if trust.allow_rewind {
            return None;
        }
        // The same commit again needs no history: descends_from answers
        // that without libgit2.
        let descends = parse_commit_id(prev).is_ok_and(|p| cache.descends_from(&tip, &p));
        (!descends).then(|| {
            format!(
                "commit {tip} does not descend from the last applied commit {prev} (a force-push, or an older commit replayed); set trust.allow_rewind: true to accept it"
            )
        })
    }

    /// Converges `commit` of the cache, reported as `info`.
    fn converge_commit(
        &self,
        source: &mut Fetched,
        commit: &str,
        info: SourceInfo,
    ) -> (RunReport, Option<DesiredState>) {
        let result = self.converge_git(source, commit);
        self.report_converged(info, result)
    }

    /// Renders and converges `commit` from the cache. A cache that lost
    /// objects (a disk fault, an interrupted write) never heals by itself:
    /// the tip did not move, so nothing fetches them again. It is rebuilt
    /// from the remote and the commit converged once more.
    fn converge_git(&self, source: &mut Fetched, commit: &str) -> Result<Converged, Stop> {
        let (result, damaged) = self.converge_from_cache(source, commit);
        if !damaged || self.opts.offline {
            return result;
        }
        let rebuilt = source.cache.rebuild().and_then(|()| {
            source
                .cache
                .update(source.url, &self.settings.auth, &source.branch)
        });
        match rebuilt {
            Ok(_) => self.converge_from_cache(source, commit).0,
            Err(e) => Err(Stop::Source {
                class: e.class(),
                message: format!("rebuilding the Git cache: {e}"),
            }),
        }
    }

    /// Converges `commit` as the cache has it, and says whether the cache
    /// lacked an object the commit needs.
    fn converge_from_cache(
        &self,
        source: &Fetched,
        commit: &str,
    ) -> (Result<Converged, Stop>, bool) {
        let describe = format!(
            "commit {} of {} ({})",
            short_id(commit, 12),
            source.url,
            source.branch
        );
        let tree = parse_commit_id(commit)
            .and_then(|id| source.cache.tree(&id, describe).map_err(|e| e.to_string()));
        match tree {
            Ok(tree) => {
                self.control.phase(Phase::Converging);
                let result = self.converge(&tree, Some(commit));
                (result, tree.missing_objects())
            }
            // The commit was fetched or applied before: the cache lost it.
            Err(e) => (
                Err(Stop::Source {
                    class: crate::error_class::ErrorClass::Transient,
                    message: format!("the commit {commit} is not in the cache: {e}"),
                }),
                true,
            ),
        }
    }

    /// The record stage: the applied commit in `state.json`, a note when
    /// one is due, any note not yet pushed pushed, `state.json` due to be
    /// saved.
    fn record(
        &self,
        source: &Fetched,
        report: &RunReport,
        applied: String,
        noted_broken: bool,
        state: &mut HostState,
    ) {
        if self.opts.mode == Mode::Apply
            && !self.opts.dry_run
            && matches!(
                report.status,
                RunStatus::Converged | RunStatus::InSync | RunStatus::Failed | RunStatus::Unhealthy
            )
        {
            state.applied_commit = Some(applied);
            state.applied_at = Some(crate::report::rfc3339(SystemTime::now()));
        }
        if self.settings.report.notes {
            self.note_and_push(source, report, state, noted_broken);
        }
        // Saved with the report, once the run is over (see `run`).
        self.save_state.set(true);
    }

    /// Writes a note when one is due, and pushes any note not yet pushed.
    fn note_and_push(
        &self,
        source: &Fetched,
        report: &RunReport,
        state: &mut HostState,
        other_note_written: bool,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let heartbeat = self.settings.report.heartbeat.as_secs();
        // libgit2 is started only when a note is written or pushed.
        let repo = || {
            source
                .cache
                .repo()
                .inspect_err(|e| warn!(error = %e, "could not open the Git cache for notes"))
                .ok()
        };
        if notes::note_due(state.last_note.as_ref(), report, heartbeat, now) {
            let Some(repo) = repo() else { return };
            match notes::write_note(repo, report) {
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
        if self.opts.offline {
            return;
        }
        let Some(repo) = repo() else { return };
        let pushed = notes::reports_remote(self.settings, source.url)
            .and_then(|(url, auth)| notes::push_notes(repo, &url, &auth, &report.host));
        match pushed {
            Ok(()) => mark.unpushed = false,
            Err(e) => warn!(error = %e, "notes not pushed; the next run tries again"),
        }
    }
}

/// Notes a commit that was not applied, once: not again while the note on
/// it already says the same. Returns whether a note was written.
fn note_broken_commit(cache: &GitCache, report: &RunReport) -> bool {
    let Some(commit) = report.source.commit.as_deref() else {
        return false;
    };
    let Ok(repo) = cache.repo() else {
        return false;
    };
    let reference = notes::notes_ref(&report.host);
    let already = parse_commit_id(commit)
        .ok()
        .and_then(|id| repo.find_note(Some(&reference), git2_oid(&id)).ok())
        .and_then(|n| n.message().ok().map(str::to_string))
        .and_then(|text| notes::parse_note(&text).ok())
        .is_some_and(|(_, old)| old.status == report.status && old.errors == report.errors);
    if already {
        return false;
    }
    match notes::write_note(repo, report) {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e.message(), commit, "could not note the broken commit");
            false
        }
    }
}
