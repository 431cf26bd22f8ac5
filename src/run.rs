//! One run, end to end: render the tree, observe the machine, plan, and
//! (in apply mode) converge. Every error before the plan leaves the host
//! untouched; the result is always a `RunReport`.

use std::path::PathBuf;
use std::time::SystemTime;

use tracing::{info, info_span, warn};

use crate::apply::{self, ApplyOptions};
use crate::facts::Facts;
use crate::plan;
use crate::render_cache::{self, CachedState};
use crate::report::{Mode, RunReport, RunStatus, SourceInfo};
use crate::resource::Backends;
use crate::resource::Kind;
use crate::resource::accounts;
use crate::resource::command;
use crate::resource::package::{self, PackageSettings};
use crate::resource::service::systemctl::Systemctl;
use crate::resource::user::ShadowUtils;
use crate::source::Tree;
use crate::spec;

/// How a run is carried out.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Prefix of every managed path (`/` on a real host).
    pub root: PathBuf,
    /// Where backups and reports go.
    pub state_dir: PathBuf,
    pub mode: Mode,
    /// Apply mode, but change nothing.
    pub dry_run: bool,
    /// Which package manager, and how it is driven.
    pub packages: PackageSettings,
    /// Managed paths must lie under one of these (`allowed_paths`); a
    /// branch declaring anything else is refused whole. Empty allows all.
    pub allowed_paths: Vec<PathBuf>,
    /// The host key age secrets are decrypted with (`secrets.identity`).
    pub secrets_identity: PathBuf,
}

/// Renders `tree` with `facts` and checks or converges the machine.
///
/// `stop` is polled between resource changes; when it returns true the
/// change in hand is finished and the rest are skipped.
pub fn run(
    tree: &dyn Tree,
    source: SourceInfo,
    facts: &Facts,
    opts: &RunOptions,
    stop: &dyn Fn() -> bool,
) -> RunReport {
    run_with_state(tree, source, facts, opts, stop).0
}

/// [`run`], also handing back the desired state it rendered (when it
/// rendered): the health stage needs the branch's checks and, for a
/// rollback, what the healthy commit declares.
pub fn run_with_state(
    tree: &dyn Tree,
    source: SourceInfo,
    facts: &Facts,
    opts: &RunOptions,
    stop: &dyn Fn() -> bool,
) -> (RunReport, Option<crate::desired::DesiredState>) {
    let started = SystemTime::now();
    let span = info_span!("run", source = %source.location, commit = source.commit.as_deref().unwrap_or(""));
    let _guard = span.enter();
    let early = |status, errors| {
        let report = RunReport::failed_early(
            &facts.hostname,
            opts.mode,
            opts.dry_run,
            started,
            source.clone(),
            status,
            errors,
        );
        (report, None)
    };

    // Loaded once per run; a key that cannot be read fails only the
    // files made from secrets.
    let secrets = crate::secrets::Secrets::for_host(&opts.secrets_identity);
    let host_key = secrets.public_key().map(str::to_string);
    let early = |status, errors| {
        let (mut report, desired) = early(status, errors);
        report.host_key = host_key.clone();
        (report, desired)
    };
    // The same commit as the last run, checked against its cached
    // digests: in sync without parsing or rendering anything.
    let cache_key = source
        .commit
        .as_deref()
        .map(|c| render_cache::CacheKey::new(c, facts, &opts.root, &opts.allowed_paths));
    let cached = cache_key.as_ref().map(|k| cached_in_sync(k, opts));
    if let Some(CacheLookup::InSync(hit)) = cached {
        let outcomes = hit
            .files
            .iter()
            .map(|f| apply::Outcome::in_sync(Kind::File, f.path.display().to_string()))
            .collect();
        let mut report = RunReport::from_outcomes(
            &facts.hostname,
            opts.mode,
            opts.dry_run,
            started,
            source,
            outcomes,
        );
        report.host_key = host_key;
        return (report, None);
    }
    let desired = match spec::load_with_secrets(tree, facts, &secrets) {
        Ok(d) => d,
        Err(errs) => {
            for e in &errs.0 {
                warn!(file = %e.file, line = e.line, column = e.column, error = %e.message, "branch does not render");
            }
            return early(
                RunStatus::Error,
                errs.0.iter().map(ToString::to_string).collect(),
            );
        }
    };
    let outside = plan::outside_allowed_paths(&desired, &opts.allowed_paths);
    if !outside.is_empty() {
        for e in &outside {
            warn!(resource = %e.resource, error = %e.message, "refused by allowed_paths");
        }
        return early(
            RunStatus::Error,
            outside.iter().map(ToString::to_string).collect(),
        );
    }
    // A package backend is chosen only when packages are declared, so an
    // unknown OS is an error only for a branch that needs one.
    let package_backend = if desired.packages.is_empty() {
        None
    } else {
        match package::backend(&opts.packages, &facts.os.id, &facts.os.id_like, &opts.root) {
            Ok(b) => Some(b),
            Err(e) => return early(RunStatus::Error, vec![e]),
        }
    };
    let systemctl = Systemctl::new(&opts.root);
    let account_tools = ShadowUtils::new(&opts.root);
    let backends = Backends {
        packages: package_backend.as_deref(),
        units: &systemctl,
        accounts: &account_tools,
        commands: command::Runner::for_root(&opts.root),
    };
    let observed = crate::resource::observe::observe(&opts.root, &desired, &backends);
    let accounts = match accounts::for_root(&opts.root) {
        Ok(a) => a,
        Err(e) => return early(RunStatus::Error, vec![e]),
    };
    let plan = match plan::plan(&desired, observed, accounts.as_ref()) {
        Ok(p) => p,
        Err(errs) => {
            return early(
                RunStatus::Error,
                errs.iter().map(ToString::to_string).collect(),
            );
        }
    };
    let outcomes = if opts.mode == Mode::Check || opts.dry_run {
        apply::check(&plan)
    } else {
        let backup_dir = opts.state_dir.join("backup").join(run_id(started));
        let outcomes = apply::apply(
            &plan,
            &desired,
            &ApplyOptions {
                root: &opts.root,
                backup_dir,
                stop,
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
    };
    let mut report = RunReport::from_outcomes(
        &facts.hostname,
        opts.mode,
        opts.dry_run,
        started,
        source,
        outcomes,
    );
    report.host_key = host_key;
    // The entry depends on the commit, facts and settings only, not on
    // how the run went: written once per key.
    if let (Some(key), Some(CacheLookup::Miss)) = (cache_key, cached) {
        match CachedState::of(key, &desired) {
            Some(entry) => {
                if let Err(e) = entry.store(&opts.state_dir) {
                    warn!(error = %e, "could not write the render cache");
                }
            }
            None => render_cache::clear(&opts.state_dir),
        }
    }
    (report, Some(desired))
}

/// What the render cache had for this run.
enum CacheLookup {
    /// A valid entry, and the host matches it.
    InSync(CachedState),
    /// A valid entry, and the host differs from it.
    Differs,
    /// No entry for this key (or a bad one, ignored).
    Miss,
}

fn cached_in_sync(key: &render_cache::CacheKey, opts: &RunOptions) -> CacheLookup {
    match CachedState::load(&opts.state_dir, key) {
        Ok(entry) if entry.in_sync(&opts.root) => {
            info!(
                files = entry.files.len(),
                "in sync with the cached rendered state of this commit"
            );
            CacheLookup::InSync(entry)
        }
        Ok(_) => CacheLookup::Differs,
        Err(render_cache::CacheMiss::Missing) => CacheLookup::Miss,
        Err(e) => {
            info!(reason = %e, "ignoring the render cache; rendering the commit");
            CacheLookup::Miss
        }
    }
}

/// A name for one run's backup directory: its start time, sortable.
fn run_id(started: SystemTime) -> String {
    let ts: String = crate::report::rfc3339(started)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{ts}-{}", std::process::id())
}
