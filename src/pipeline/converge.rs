//! The stages that turn one tree into changes on the machine: render →
//! observe → plan → apply. Each returns a typed result; the first that
//! fails stops the commit with a [`Stop`] and leaves the host untouched
//! (nothing is changed before the plan is whole: the new files a run that
//! applies writes while it renders, `prestage`, have no name until the
//! apply commits them).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{info, info_span, warn};

use super::{Run, Stop};
use crate::apply::{self, ApplyOptions, Outcome};
use crate::desired::DesiredState;
use crate::plan::{self, Plan};
use crate::prestage::Prestager;
use crate::render_cache::{self, CacheKey, CachedState};
use crate::report::Mode;
use crate::resource::accounts;
use crate::resource::command;
use crate::resource::package;
use crate::resource::service::systemctl::Systemctl;
use crate::resource::user::ShadowUtils;
use crate::resource::{Backends, Kind};
use crate::source::Tree;
use crate::spec;

/// What converging one commit (or directory) came to.
pub struct Converged {
    /// Every resource's outcome, in sync ones included.
    pub outcomes: Vec<Outcome>,
    /// What the commit declares, when it was rendered (not when the render
    /// cache said the host is in sync): the health stage needs its checks,
    /// a rollback what the healthy commit declares.
    pub desired: Option<DesiredState>,
}

/// What the render stage found.
enum Rendered {
    /// The same commit as a run before, and the host still matches its
    /// cached digests: nothing to parse, render, observe or plan.
    InSync(CachedState),
    /// The desired state (its files written ahead while it rendered
    /// included) and the cache entry to write once it is planned.
    State(DesiredState, Option<CacheKey>),
    /// The same commit as a run before, but some files differ from its
    /// cached digests: the state of those files alone, and the files the
    /// cache found as they must be.
    Drifted(DesiredState, Vec<PathBuf>),
}

impl Run<'_> {
    /// Renders `tree` (the tree of `commit`, or a directory) and checks or
    /// converges the machine.
    pub(super) fn converge(
        &self,
        tree: &dyn Tree,
        commit: Option<&str>,
    ) -> Result<Converged, Stop> {
        let span = info_span!("converge", commit = commit.unwrap_or(""));
        let _guard = span.enter();
        let (desired, cache_key) = match self.render(tree, commit)? {
            Rendered::InSync(hit) => {
                let outcomes = hit
                    .files
                    .iter()
                    .map(|f| Outcome::in_sync(Kind::File, f.path.display().to_string()))
                    .collect();
                return Ok(Converged {
                    outcomes,
                    desired: None,
                });
            }
            Rendered::State(desired, key) => (desired, key),
            Rendered::Drifted(desired, in_sync) => {
                let mut converged = self.converge_state(desired, None)?;
                converged.outcomes.extend(
                    in_sync
                        .iter()
                        .map(|p| Outcome::in_sync(Kind::File, p.display().to_string())),
                );
                // Not all the commit declares: nothing for the health stage
                // (a cached state has no checks anyway).
                converged.desired = None;
                return Ok(converged);
            }
        };
        self.converge_state(desired, cache_key)
    }

    /// Observes, plans and checks or applies `desired`; stores the render
    /// cache entry of `cache_key` afterwards. A file written ahead is
    /// adopted where the plan writes it to a missing path; the rest goes.
    fn converge_state(
        &self,
        desired: DesiredState,
        cache_key: Option<CacheKey>,
    ) -> Result<Converged, Stop> {
        let opts = self.opts;
        let settings = self.settings;
        // A package backend is chosen only when packages are declared, so an
        // unknown OS is an error only for a branch that needs one.
        let package_backend = if desired.packages.is_empty() {
            None
        } else {
            let os = &self.facts.os;
            Some(
                package::backend(
                    &settings.package_settings(),
                    &os.id,
                    &os.id_like,
                    &settings.root,
                )
                .map_err(|e| Stop::Invalid(vec![e]))?,
            )
        };
        let systemctl = Systemctl::new(&settings.root);
        let account_tools = ShadowUtils::new(&settings.root);
        let backends = Backends {
            packages: package_backend.as_deref(),
            units: &systemctl,
            accounts: &account_tools,
            commands: command::Runner::for_root(&settings.root),
        };
        // The entry depends on the commit, facts and settings only, not on
        // how the run goes: written once per key, before the contents it
        // digests are let go, and before the plan (the two are not held at
        // once). A state that cannot be planned has none.
        if let Some(key) = cache_key {
            match CachedState::of(key, &desired) {
                Some(entry) => {
                    if let Err(e) = entry.store(&settings.state_dir) {
                        warn!(error = %e, "could not write the render cache");
                    }
                }
                None => render_cache::clear(&settings.state_dir),
            }
        }
        let plan = self.plan(&desired, &backends).inspect_err(|_| {
            render_cache::clear(&settings.state_dir);
        })?;
        // The steps carry what is written; the rendered contents the
        // desired state holds are not read again.
        let mut desired = desired;
        let deferred = plan.deferred_files();
        desired.release_file_contents(&|p| deferred.contains(p));
        let outcomes = if opts.mode == Mode::Check || opts.dry_run {
            apply::check(&plan)
        } else {
            self.apply(&plan, &desired, backends)
        };
        Ok(Converged {
            outcomes,
            desired: Some(desired),
        })
    }

    /// Render: the cached state of the same commit when the host still
    /// matches it, else the tree parsed and rendered with the facts and
    /// the host's secrets, and held to `allowed_paths`.
    fn render(&self, tree: &dyn Tree, commit: Option<&str>) -> Result<Rendered, Stop> {
        let settings = self.settings;
        let key =
            commit.map(|c| CacheKey::new(c, self.facts, &settings.root, &settings.allowed_paths));
        // A key to store is kept only when there was no valid entry.
        let mut store = None;
        if let Some(key) = key {
            match CachedState::load(&settings.state_dir, &key) {
                Ok(entry) => {
                    let drifted = entry.drifted(&settings.root);
                    if drifted.is_empty() {
                        info!(
                            files = entry.files.len(),
                            "in sync with the cached rendered state of this commit"
                        );
                        return Ok(Rendered::InSync(entry));
                    }
                    if let Some(rendered) = self.render_drifted(tree, &entry, &drifted) {
                        return Ok(rendered);
                    }
                }
                Err(render_cache::CacheMiss::Missing) => store = Some(key),
                Err(e) => {
                    info!(reason = %e, "ignoring the render cache; rendering the commit");
                    store = Some(key);
                }
            }
        }
        // Only a run that applies writes ahead (a check or a dry run
        // creates nothing, not even an unnamed file).
        let prestager = (self.opts.mode == Mode::Apply && !self.opts.dry_run)
            .then(|| Prestager::start(&settings.root, &settings.allowed_paths))
            .flatten();
        let loaded = match &prestager {
            Some(p) => spec::load_streaming(tree, self.facts, &self.secrets, &|path, file| {
                p.offer(path, file)
            }),
            None => spec::load_with_secrets(tree, self.facts, &self.secrets),
        };
        // Every file offered is written ahead (its bytes let go) or left to
        // the apply before the cache entry and the plan are made: the bytes
        // are not held beside them. A branch that does not render writes
        // nothing more (dropped, the prestager only stops its thread).
        if let Some(p) = prestager
            && loaded.is_ok()
        {
            p.finish();
        }
        let desired = loaded.map_err(|errs| {
            for e in &errs.0 {
                warn!(file = %e.file, line = e.line, column = e.column, error = %e.message, "branch does not render");
            }
            Stop::Invalid(errs.0.iter().map(ToString::to_string).collect())
        })?;
        let outside = plan::outside_allowed_paths(&desired, &settings.allowed_paths);
        if !outside.is_empty() {
            for e in &outside {
                warn!(resource = %e.resource, error = %e.message, "refused by allowed_paths");
            }
            return Err(Stop::Invalid(
                outside.iter().map(ToString::to_string).collect(),
            ));
        }
        Ok(Rendered::State(desired, store))
    }

    /// The files of a cached commit that differ from its digests, rendered
    /// alone, beside those that do not. `None` (render it all) should the
    /// commit not give exactly those files, which a valid entry rules out.
    fn render_drifted(
        &self,
        tree: &dyn Tree,
        entry: &CachedState,
        drifted: &[&Path],
    ) -> Option<Rendered> {
        let only: HashSet<PathBuf> = drifted.iter().map(|p| p.to_path_buf()).collect();
        let desired = spec::load_only(tree, self.facts, &self.secrets, &only).ok()?;
        let whole = desired.len() == only.len()
            && only.iter().all(|p| desired.files.contains_key(p))
            && plan::outside_allowed_paths(&desired, &self.settings.allowed_paths).is_empty();
        if !whole {
            return None;
        }
        info!(
            drifted = only.len(),
            files = entry.files.len(),
            "rendering only the files that differ from the cached rendered state of this commit"
        );
        let in_sync = entry
            .files
            .iter()
            .filter(|f| !only.contains(&f.path))
            .map(|f| f.path.clone())
            .collect();
        Some(Rendered::Drifted(desired, in_sync))
    }

    /// Observe and plan: what the machine has, against what is declared.
    fn plan(&self, desired: &DesiredState, backends: &Backends) -> Result<Plan, Stop> {
        let root = &self.settings.root;
        let observed = crate::resource::observe::observe(root, desired, backends);
        // The users and groups of the root, for owners: not the machine's
        // when the root is elsewhere.
        let accounts = accounts::for_root(root).map_err(Stop::Host)?;
        plan::plan(desired, observed, accounts.as_ref())
            .map_err(|errs| Stop::Invalid(errs.iter().map(ToString::to_string).collect()))
    }

    /// Apply: every step of the plan, parents first; `stop` is polled
    /// between changes (the change in hand is finished, the rest skipped).
    fn apply(&self, plan: &Plan, desired: &DesiredState, backends: Backends) -> Vec<Outcome> {
        let backup_dir = self
            .settings
            .state_dir
            .join("backup")
            .join(backup_name(SystemTime::now()));
        let stop = || self.control.should_stop();
        let outcomes = apply::apply(
            plan,
            desired,
            &ApplyOptions {
                root: &self.settings.root,
                backup_dir,
                stop: &stop,
                backends,
            },
        );
        for o in outcomes
            .iter()
            .filter(|o| o.status != apply::Status::InSync)
        {
            info!(resource = %o.resource, kind = o.kind.as_str(), status = ?o.status, change = o.action.as_deref().unwrap_or(""), error = o.error.as_deref().unwrap_or(""), "resource");
        }
        outcomes
    }
}

/// A name for one apply's backup directory: its time, sortable, and
/// unique in the process (a rollback applies twice in one second, and the
/// second must not overwrite what the first kept).
fn backup_name(now: SystemTime) -> String {
    static APPLIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ts: String = crate::report::rfc3339(now)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let n = APPLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match n {
        0 => format!("{ts}-{}", std::process::id()),
        n => format!("{ts}-{}-{n}", std::process::id()),
    }
}
