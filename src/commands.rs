//! The one-shot commands behind the CLI: each takes parsed options, prints
//! its result and returns the process exit code.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::agent::{Phase, RunControl};
use crate::config::{AgentMode, Settings};
use crate::facts::Facts;
use crate::report::{Mode, RunReport, RunStatus};
use crate::source::DirTree;
use crate::spec;
use crate::state::{Disabled, HostState};

pub mod out;
use out::{out, outln};
mod secrets;
pub use secrets::{secrets_edit, secrets_encrypt, secrets_recipients, secrets_rekey};

/// Text for people or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Options every command shares: the configuration with the command
/// line's overrides applied.
#[derive(Debug, Clone)]
pub struct Common {
    pub settings: Settings,
    pub source: Option<String>,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub lock_file: PathBuf,
    pub format: Format,
    pub facts_file: Option<PathBuf>,
    /// Use the Git cache only: no fetch, no notes push.
    pub offline: bool,
}

impl Common {
    /// Command-line values win over the configuration's.
    pub fn new(
        mut settings: Settings,
        source: Option<String>,
        root: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        lock_file: Option<PathBuf>,
        format: Format,
        facts_file: Option<PathBuf>,
    ) -> Common {
        if let Some(r) = root {
            settings.root = r;
        }
        if let Some(s) = state_dir {
            settings.state_dir = s;
        }
        if let Some(src) = &source {
            settings.repo = Some(src.clone());
        }
        let lock_file =
            lock_file.unwrap_or_else(|| crate::lock::default_lock_path(&settings.state_dir));
        let own_known_hosts = settings.state_dir.join("known_hosts");
        settings.auth.own_known_hosts = Some(own_known_hosts.clone());
        settings.report.auth.own_known_hosts = Some(own_known_hosts);
        Common {
            source: settings.repo.clone(),
            root: settings.root.clone(),
            state_dir: settings.state_dir.clone(),
            lock_file,
            format,
            facts_file,
            settings,
            offline: false,
        }
    }

    /// `--branch` (a template, like `branch` in the configuration) and
    /// `--offline`.
    pub fn with_git_options(mut self, branch: Option<String>, offline: bool) -> Common {
        if let Some(b) = branch {
            self.settings.branch = b;
        }
        self.offline = offline;
        self
    }

    /// `--allowed-path`, given at least once, replaces `allowed_paths`.
    pub fn with_allowed_paths(mut self, allowed: Vec<PathBuf>) -> Common {
        if !allowed.is_empty() {
            self.settings.allowed_paths = allowed;
        }
        self
    }
}

mod fleet_report;
pub use fleet_report::fleet_report;
mod fleet;
pub use fleet::{PromoteOptions, fleet_promote, rollout_status, validate_fleet};

/// Exit codes of `check`.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const DRIFT: i32 = 2;
    /// `apply --detailed-exitcodes`: changes made.
    pub const CHANGED: i32 = 2;
    /// `apply --detailed-exitcodes`: failures (added to CHANGED: 6).
    pub const FAILED: i32 = 4;
}

/// The facts a run sees: the machine's, or a facts file's.
pub fn facts(common: &Common) -> Result<Facts> {
    match &common.facts_file {
        Some(p) => Ok(Facts::from_file(p)?),
        None => Ok(Facts::gather()),
    }
}

/// Prints a report in the chosen format.
pub fn print_report(report: &RunReport, format: Format) -> Result<()> {
    match format {
        Format::Json => {
            // Stdout is line-buffered: unbuffered, a report of 1,000 files
            // went out in some 13,000 writes.
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
            out.flush()?;
        }
        Format::Text => {
            // Styled for a terminal, plain otherwise, and written at once:
            // through anstream's stripping writer, a report of 1,000 files
            // went out in a write per line.
            let text = crate::report::text::render(report);
            let stdout = std::io::stdout();
            let plain = anstream::AutoStream::choice(&stdout) == anstream::ColorChoice::Never;
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            if plain {
                write!(out, "{}", anstream::adapter::strip_str(&text))?;
            } else {
                out.write_all(text.as_bytes())?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// `trueup check`: exit 0 in sync, 2 drift, 1 error.
pub fn check(common: &Common) -> Result<i32> {
    let report = one_run(common, Mode::Check, false)?;
    Ok(match report.status {
        RunStatus::InSync => exit::OK,
        RunStatus::Drift => exit::DRIFT,
        _ => exit::ERROR,
    })
}

/// `trueup apply`: exit 0, or 1 on any error; with `detailed`, 2 for
/// changes, 4 for failures, 6 for both, 1 for an error before any change.
pub fn apply(common: &Common, dry_run: bool, detailed: bool) -> Result<i32> {
    let report = one_run(common, Mode::Apply, dry_run)?;
    let s = &report.summary;
    if matches!(report.status, RunStatus::Error | RunStatus::Refused) {
        return Ok(exit::ERROR);
    }
    // A commit that failed its health checks (rolled back or kept) is a
    // failure too.
    let failed = s.failed + s.skipped > 0
        || matches!(report.status, RunStatus::RolledBack | RunStatus::Unhealthy);
    let changed = s.changed > 0 || (dry_run && s.drift > 0);
    Ok(if detailed {
        (if changed { exit::CHANGED } else { 0 }) | (if failed { exit::FAILED } else { 0 })
    } else if failed {
        exit::ERROR
    } else {
        exit::OK
    })
}

fn one_run(common: &Common, mode: Mode, dry_run: bool) -> Result<RunReport> {
    let report = locked_run(common, mode, dry_run, &RunControl::detached())?;
    print_report(&report, common.format)?;
    Ok(report)
}

/// One run under the run lock, as both one-shot commands and the agent do
/// it. A paused host (`trueup disable`) or audit mode only checks.
pub fn locked_run(
    common: &Common,
    mode: Mode,
    dry_run: bool,
    control: &RunControl,
) -> Result<RunReport> {
    control.phase(Phase::Waiting);
    let lock = crate::lock::acquire(&common.lock_file, common.settings.lock_timeout, &|| {
        control.should_stop()
    })
    .context("waiting for the run lock")?;
    // Held through the control: the health window lets go of it.
    control.hold_lock(&common.lock_file, common.settings.lock_timeout, lock);
    let result = locked_run_held(common, mode, dry_run, control);
    control.release_lock();
    result
}

fn locked_run_held(
    common: &Common,
    mode: Mode,
    dry_run: bool,
    control: &RunControl,
) -> Result<RunReport> {
    // The one copy of the host's state for this run, under the lock.
    let mut state = HostState::load(&common.state_dir)?;
    let mode = if state.disabled.is_some() || common.settings.mode == AgentMode::Check {
        Mode::Check
    } else {
        mode
    };
    let facts = facts(common)?;
    if common.settings.repo.is_none() {
        bail!("no source: give --source DIR|URL or set repo in the configuration");
    }
    let opts = crate::pipeline::RunOptions {
        mode,
        dry_run,
        offline: common.offline,
    };
    crate::resource::tool::set_timeouts(common.settings.timeouts);
    // Output of the tools the run drives counts as its progress.
    let progress = control.clone();
    crate::resource::tool::set_progress(Some(std::sync::Arc::new(move || progress.touch())));
    let report = crate::pipeline::run(&common.settings, &facts, opts, control, &mut state);
    crate::resource::tool::set_progress(None);
    // Still under the lock: no run is writing a backup meanwhile.
    match crate::backup::prune(
        &common.state_dir,
        common.settings.backups,
        std::time::SystemTime::now(),
    ) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "old backups pruned"),
        Err(e) => tracing::warn!(error = %e, "could not prune old backups"),
    }
    Ok(report)
}

/// `trueup validate DIR`: parse and render, change nothing.
pub fn validate(common: &Common, dir: &Path) -> Result<i32> {
    let facts = facts(common)?;
    let tree = DirTree::new(dir);
    let result = spec::load_with_secrets(&tree, &facts, &crate::secrets::Secrets::Unread);
    match common.format {
        Format::Json => {
            let value = match &result {
                Ok(d) => serde_json::json!({ "valid": true, "resources": d.len(), "errors": [] }),
                Err(e) => serde_json::json!({ "valid": false, "resources": 0, "errors": e }),
            };
            outln!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Text => match &result {
            Ok(d) => outln!("{}: valid, {} resources", dir.display(), d.len()),
            Err(e) => eprintln!("{e}"),
        },
    }
    Ok(if result.is_ok() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// `trueup render DIR`: the rendered desired state (secret content hidden).
pub fn render(common: &Common, dir: &Path) -> Result<i32> {
    let facts = facts(common)?;
    let tree = DirTree::new(dir);
    let desired = match spec::load_with_secrets(&tree, &facts, &crate::secrets::Secrets::Unread) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::ERROR);
        }
    };
    let mut value = serde_json::to_value(&desired)?;
    // Content is skipped by the model's serializer; show it here as text.
    if let Some(files) = value.get_mut("files").and_then(|f| f.as_object_mut()) {
        for (path, spec) in &desired.files {
            let Some(entry) = files.get_mut(&path.display().to_string()) else {
                continue;
            };
            if let (Some(c), Some(obj)) = (&spec.content, entry.as_object_mut()) {
                let shown = if spec.secret {
                    "(secret)".to_string()
                } else {
                    match std::str::from_utf8(&c.bytes) {
                        Ok(s) => s.to_string(),
                        Err(_) => format!("(binary, {})", crate::resource::file::summary(&c.bytes)),
                    }
                };
                obj.insert(
                    "content".into(),
                    serde_json::json!({ "origin": c.origin, "text": shown }),
                );
            }
        }
    }
    match common.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&value)?),
        Format::Text => out!(
            "{}",
            serde_saphyr::to_string(&value).context("printing the state as YAML")?
        ),
    }
    Ok(exit::OK)
}

/// `trueup facts`.
pub fn print_facts(common: &Common) -> Result<i32> {
    let facts = facts(common)?;
    match common.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&facts)?),
        Format::Text => {
            for (k, v) in facts.to_lines() {
                outln!("{k:<14} {v}");
            }
        }
    }
    Ok(exit::OK)
}

/// `trueup agent`: the daemon, until SIGTERM.
pub fn agent(common: &Common) -> Result<i32> {
    if common.source.is_none() {
        bail!(
            "no source: set repo in {} or give --source",
            crate::config::DEFAULT_CONFIG
        );
    }
    if let Some(warning) = crate::report::notes::lateral_movement_warning(&common.settings) {
        tracing::warn!("{warning}");
    }
    let facts = facts(common)?;
    let opts = crate::agent::AgentOptions {
        interval: common.settings.interval,
        splay: common.settings.splay,
        machine_id: facts.machine_id.clone(),
        pid_file: crate::lock::agent_pid_path(&common.lock_file),
        state_dir: common.state_dir.clone(),
        metrics: common.settings.report.metrics.clone(),
    };
    let shared = common.clone();
    let runner: crate::agent::Runner = std::sync::Arc::new(move |control: &RunControl| {
        locked_run(&shared, Mode::Apply, false, control)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(crate::agent::run(opts, runner))?;
    Ok(exit::OK)
}

/// `trueup status`: the last run, the agent, and whether the host is paused.
pub fn status(common: &Common) -> Result<i32> {
    let last = RunReport::read_last_run(&common.state_dir).map_err(anyhow::Error::msg)?;
    let state = HostState::load(&common.state_dir)?;
    let agent = crate::lock::agent_running(&common.lock_file);
    match common.format {
        Format::Json => {
            let value = serde_json::json!({
                "agent": { "running": agent.is_some(), "pid": agent.filter(|p| *p > 0) },
                "applied_commit": state.applied_commit,
                "applied_at": state.applied_at,
                "disabled": state.disabled,
                "mode": common.settings.mode,
                "health": last.as_ref().and_then(|r| r.health.as_ref()).map(|h| h.status),
                "last_healthy": state.last_healthy,
                "bad_commit": state.bad_commit,
                "pending_health": state.pending_health,
                "last_run": last,
            });
            outln!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Text => {
            match agent {
                Some(pid) if pid > 0 => outln!("agent:    running (pid {pid})"),
                Some(_) => outln!("agent:    running"),
                None => outln!("agent:    not running"),
            }
            if let Some(d) = &state.disabled {
                outln!("disabled: since {}: {}", d.since, d.reason);
            } else if common.settings.mode == AgentMode::Check {
                outln!("mode:     check (audit: drift is reported, not repaired)");
            }
            if let Some(c) = &state.applied_commit {
                outln!(
                    "applied:  {c}{}",
                    state
                        .applied_at
                        .as_deref()
                        .map(|a| format!(" at {a}"))
                        .unwrap_or_default()
                );
            }
            match &last {
                Some(r) => outln!("last run: {} ({})", r.headline(), r.started_at),
                None => outln!("last run: none"),
            }
            if let Some(p) = &state.pending_health {
                outln!(
                    "health:   pending for {} (window ends {})",
                    crate::report::short_id(&p.commit, 12),
                    crate::report::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.deadline)
                    )
                );
            } else if let Some(h) = last.as_ref().and_then(|r| r.health.as_ref()) {
                let failed = h.failed_required();
                outln!(
                    "health:   {}{}",
                    h.status.as_str(),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", failed.join("; "))
                    }
                );
            }
            if let Some(b) = &state.bad_commit {
                outln!(
                    "rolled back: {} at {} ({}); not applied again until the branch moves",
                    crate::report::short_id(&b.commit, 12),
                    b.at,
                    b.reason
                );
            }
        }
    }
    Ok(exit::OK)
}

/// Takes the run lock for a command that changes `state.json` outside a
/// run, waiting for a run in hand to finish.
fn run_lock(common: &Common) -> Result<crate::lock::Held> {
    crate::lock::acquire(&common.lock_file, common.settings.lock_timeout, &|| false)
        .context("waiting for the run lock (a run is in progress)")
}

/// `trueup disable --reason TEXT`.
pub fn disable(common: &Common, reason: &str) -> Result<i32> {
    if reason.trim().is_empty() {
        bail!("give a reason: trueup disable --reason TEXT");
    }
    // Under the run lock: a run in hand saves the state it loaded when it
    // ends, which would silently undo a change made meanwhile.
    let _lock = run_lock(common)?;
    let mut state = HostState::load(&common.state_dir)?;
    state.disabled = Some(Disabled {
        reason: reason.to_string(),
        since: crate::report::rfc3339(std::time::SystemTime::now()),
    });
    state.save(&common.state_dir)?;
    outln!("convergence paused: {reason} (checks still run; `trueup enable` resumes)");
    Ok(exit::OK)
}

/// `trueup enable`.
pub fn enable(common: &Common) -> Result<i32> {
    let _lock = run_lock(common)?;
    let mut state = HostState::load(&common.state_dir)?;
    match state.disabled.take() {
        Some(d) => {
            state.save(&common.state_dir)?;
            outln!(
                "convergence resumed (was paused since {}: {})",
                d.since,
                d.reason
            );
        }
        None => outln!("convergence was not paused"),
    }
    Ok(exit::OK)
}

/// `trueup fleet status`: every host's latest note, read from the reports
/// repository (`--reports`, else fleet.yaml's `reports:` on main, else the
/// fleet repository), and the rollout of main (or `--from`).
pub fn fleet_status(common: &Common, reports: Option<&str>, from: Option<&str>) -> Result<i32> {
    let flag = reports
        .map(|r| fleet::git_url("--reports", r))
        .transpose()?;
    let now = std::time::SystemTime::now();
    let auth = &common.settings.auth;
    // The rollout reads the notes (and fleet.yaml's `reports:`) already.
    let (url, rows, rollout) = match rollout_status(common, flag.as_ref(), from)? {
        Some(read) => {
            let rows = crate::fleet::status::rows(read.tips.hosts, &read.heads, now);
            (read.reports, rows, Some(read.view))
        }
        None => {
            let Some(url) = flag.or(common
                .settings
                .repo
                .as_deref()
                .map(|s| fleet::git_url("--source", s))
                .transpose()?)
            else {
                bail!(
                    "no repository: give --reports URL or --source URL, or set repo in the configuration"
                );
            };
            let rows = crate::fleet::fleet_status(&url, auth, now)
                .with_context(|| format!("reading the notes of {url}"))?;
            (url, rows, None)
        }
    };
    match common.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "repository": url.redacted(), "hosts": rows, "rollout": rollout })
            )?
        ),
        Format::Text => {
            if rows.is_empty() {
                outln!("no host has written a note to {url} yet");
            } else {
                out!("{}", crate::fleet::render_table(&rows));
            }
            if let Some(r) = &rollout {
                out!("\n{}", crate::fleet::promote::render_rollout(r));
            }
        }
    }
    Ok(exit::OK)
}

/// `trueup health`: runs the checks of the applied commit (or of the
/// directory source) now, one look each. Exit 0 healthy, 2 unhealthy, 1
/// error.
pub fn health(common: &Common) -> Result<i32> {
    use crate::health::{self, HealthReport, HealthStatus};
    use crate::source::remote::{self, Location};
    let facts = facts(common)?;
    let Some(source) = common.settings.repo.as_deref() else {
        bail!("no source: give --source DIR|URL or set repo in the configuration");
    };
    let (desired, commit) = match remote::locate(source).map_err(anyhow::Error::msg)? {
        Location::Dir(dir) => (spec::load(&DirTree::new(&dir), &facts), None),
        Location::Git(url) => {
            let state = HostState::load(&common.state_dir)?;
            let cache = crate::source::git::GitCache::open(&common.state_dir)?;
            let branch = common.settings.branch_for(&facts);
            let oid = match &state.applied_commit {
                Some(c) => crate::source::git::parse_commit_id(c)
                    .map_err(anyhow::Error::msg)
                    .context("state.json: applied commit")?,
                None => cache.cached_tip(&branch).with_context(|| {
                    format!("no commit applied yet, and none of {branch} cached")
                })?,
            };
            let hex = oid.to_string();
            let tree = cache.tree(
                &oid,
                format!(
                    "commit {} of {url} ({branch})",
                    crate::report::short_id(&hex, 12)
                ),
            )?;
            (spec::load(&tree, &facts), Some(hex))
        }
    };
    let desired = desired.map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(spec) = &desired.health else {
        match common.format {
            Format::Json => outln!(
                "{}",
                serde_json::json!({ "status": "healthy", "checks": [] })
            ),
            Format::Text => outln!("no health checks declared"),
        }
        return Ok(exit::OK);
    };
    let started = std::time::Instant::now();
    let mut prober = health::MachineProber::new(&common.root, std::time::Duration::ZERO);
    // One look each: the deadline is now.
    let checks = health::watch(
        &spec.checks,
        &mut prober,
        started,
        health::PROBE_INTERVAL,
        &|| false,
    );
    let report = HealthReport {
        status: health::status_of(&checks, true),
        commit,
        window_ms: 0,
        duration_ms: health::millis(started.elapsed()),
        checks,
        rollback: None,
        note: None,
    };
    match common.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            let mut out = anstream::stdout().lock();
            write!(out, "{}", crate::report::text::health(&report))?;
        }
    }
    Ok(if report.status == HealthStatus::Healthy {
        exit::OK
    } else {
        exit::DRIFT
    })
}
