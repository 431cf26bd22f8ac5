//! `trueup validate --fleet DIR` and `trueup fleet promote`: parse the
//! options, call `crate::fleet`, print (live progress on a terminal, plain
//! lines elsewhere, a JSON summary with `--format json`).

use super::out::progressln;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::out::outln;
use super::{Common, Format, exit};
use crate::fleet::config::{FleetConfig, Wave, read_fleet_config, reports_location};
use crate::fleet::promote::{
    self, PromoteProgress, PromoteRequest, PromoteSummary, RolloutResult, Verdict, WaveHost,
    WaveOutcome,
};
use crate::fleet::validate::{FactsOrigin, reported_facts, validate_hosts};
use crate::source::remote::{Location, RemoteUrl, locate};

/// `fleet promote`'s own options.
#[derive(Debug, Clone, Default)]
pub struct PromoteOptions {
    pub from: String,
    pub groups: Vec<String>,
    pub hosts: Vec<String>,
    pub waves: Option<String>,
    pub wait: Option<String>,
    pub max_unhealthy: Option<u32>,
    pub dry_run: bool,
    /// How often the notes are read while a wave is out.
    pub poll: Option<String>,
}

/// A Git URL from `--source`, `--reports` or `fleet.yaml`.
pub fn git_url(what: &str, raw: &str) -> Result<RemoteUrl> {
    match locate(raw).map_err(anyhow::Error::msg)? {
        Location::Git(u) => Ok(u),
        Location::Dir(d) => bail!(
            "{what} {}: a Git repository URL is needed here (file://{})",
            d.display(),
            d.display()
        ),
    }
}

fn duration(what: &str, raw: &str) -> Result<Duration> {
    humantime::parse_duration(raw.trim())
        .with_context(|| format!("{what} '{raw}': not a duration like 10m or 30s"))
}

/// `trueup validate --fleet DIR`: one line per host; exit 1 if any fails.
pub fn validate_fleet(common: &Common, dir: &Path, reports: Option<&str>) -> Result<i32> {
    let config: FleetConfig = read_fleet_config(dir)
        .with_context(|| format!("validating the fleet in {}", dir.display()))?;
    // `--offline`: the stand-in facts files only (no reports are read).
    let location = if common.offline {
        None
    } else {
        reports_location(reports, Some(&config))
    };
    let reported = match location {
        None => Default::default(),
        Some(raw) => {
            let url = git_url("the reports location", raw)?;
            reported_facts(&url, &common.settings.auth).with_context(|| {
                format!(
                    "reading the hosts' facts from the notes of {url} (--offline uses \
                     hosts/<host>.facts.yaml only)"
                )
            })?
        }
    };
    let results = validate_hosts(dir, &config, &reported);
    let failed = results.iter().filter(|r| !r.valid).count();
    match common.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "fleet": dir,
                "valid": failed == 0,
                "hosts": results,
            }))?
        ),
        Format::Text => {
            let width = results.iter().map(|r| r.host.len()).max().unwrap_or(0);
            for r in &results {
                let from = match &r.facts {
                    FactsOrigin::Report { commit } => format!(
                        "facts from its report{}",
                        commit
                            .as_deref()
                            .map(|c| format!(" on {}", promote::short(c)))
                            .unwrap_or_default()
                    ),
                    FactsOrigin::File { path } => format!("facts from {path}"),
                    FactsOrigin::Missing => "no facts".into(),
                };
                if r.valid {
                    outln!(
                        "{:<width$}  ok      {} resources ({from})",
                        r.host,
                        r.resources
                    );
                } else {
                    outln!("{:<width$}  FAILED  ({from})", r.host);
                    for e in &r.errors {
                        outln!("{:<width$}    {e}", "");
                    }
                }
            }
            if failed > 0 {
                outln!("{failed} of {} hosts fail", results.len());
            } else {
                outln!("all {} hosts render", results.len());
            }
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

/// `trueup fleet promote`.
pub fn fleet_promote(common: &Common, reports: Option<&str>, opts: &PromoteOptions) -> Result<i32> {
    let Some(source) = common.settings.repo.as_deref() else {
        bail!("no repository: give --source URL or set repo in the configuration");
    };
    let source = git_url("--source", source)?;
    let waves = opts
        .waves
        .as_deref()
        .map(Wave::parse_list)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--waves: {e}"))?;
    let req = PromoteRequest {
        source,
        reports: reports.map(|r| git_url("--reports", r)).transpose()?,
        auth: common.settings.auth.clone(),
        from: opts.from.clone(),
        groups: opts.groups.clone(),
        hosts: opts.hosts.clone(),
        waves,
        wait: opts
            .wait
            .as_deref()
            .map(|w| duration("--wait", w))
            .transpose()?,
        max_unhealthy: opts.max_unhealthy,
        dry_run: opts.dry_run,
        poll: opts
            .poll
            .as_deref()
            .map(|p| duration("--poll", p))
            .transpose()?
            .unwrap_or(Duration::from_secs(5)),
    };
    let live = common.format == Format::Text && std::io::stderr().is_terminal();
    let mut progress: Box<dyn PromoteProgress> = match (common.format, live) {
        (Format::Json, _) => Box::new(promote::Quiet),
        (Format::Text, true) => Box::new(LiveProgress::default()),
        (Format::Text, false) => Box::new(PlainProgress),
    };
    let summary = promote::run(&req, progress.as_mut())
        .with_context(|| format!("promoting {} of {}", req.from, req.source))?;
    drop(progress);
    match common.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&summary)?),
        Format::Text => {
            super::out::write(format_args!("{}", promote::render_summary(&summary)))?;
        }
    }
    Ok(match summary.result {
        RolloutResult::Stopped => exit::ERROR,
        _ => exit::OK,
    })
}

/// Plain lines, for logs and CI (stdout not a terminal).
struct PlainProgress;

impl PromoteProgress for PlainProgress {
    fn planned(&mut self, s: &PromoteSummary) {
        if s.result == RolloutResult::DryRun {
            return;
        }
        progressln!(
            "promoting {} ({}) in {} wave(s); wait {}s, max_unhealthy {}",
            s.from,
            promote::short(&s.commit),
            s.waves.len(),
            s.wait_secs,
            s.max_unhealthy
        );
    }
    fn wave_started(&mut self, i: usize, n: usize, w: &WaveOutcome) {
        let hosts: Vec<&str> = w.hosts.iter().map(|h| h.host.as_str()).collect();
        progressln!(
            "wave {}/{n} ({}): pushing {}",
            i + 1,
            w.wave,
            hosts.join(", ")
        );
    }
    fn host_reported(&mut self, h: &WaveHost) {
        match &h.verdict {
            Verdict::Healthy => progressln!("  {}: healthy", h.host),
            Verdict::Unhealthy { reason } => progressln!("  {}: UNHEALTHY: {reason}", h.host),
            Verdict::Waiting => {}
        }
    }
    fn wave_finished(&mut self, w: &WaveOutcome) {
        progressln!(
            "wave {}: {} healthy, {} unhealthy of {}",
            w.wave,
            w.healthy,
            w.unhealthy,
            w.hosts.len()
        );
    }
}

/// A progress bar per wave on a terminal (stderr).
#[derive(Default)]
struct LiveProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl PromoteProgress for LiveProgress {
    fn wave_started(&mut self, i: usize, n: usize, w: &WaveOutcome) {
        let bar = indicatif::ProgressBar::new(w.hosts.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} reported  {msg}  {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("wave {}/{n} ({})", i + 1, w.wave));
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }
    fn host_reported(&mut self, h: &WaveHost) {
        if let (Some(bar), Verdict::Unhealthy { reason }) = (&self.bar, &h.verdict) {
            bar.println(format!("  {}: UNHEALTHY: {reason}", h.host));
        }
    }
    fn tick(&mut self, w: &WaveOutcome, waiting: usize, _elapsed: Duration) {
        if let Some(bar) = &self.bar {
            bar.set_position((w.healthy + w.unhealthy) as u64);
            bar.set_message(format!(
                "healthy {}  unhealthy {}  waiting {waiting}",
                w.healthy, w.unhealthy
            ));
        }
    }
    fn wave_finished(&mut self, _w: &WaveOutcome) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// `fleet status`'s rollout part: how far each host's branch is behind
/// `from` (default main) and the rollout's state. Needs the fleet
/// repository (`--source`); skipped, with a word why, without it.
pub fn rollout_status(
    common: &Common,
    reports: Option<&RemoteUrl>,
    from: Option<&str>,
) -> Result<Option<promote::RolloutRead>> {
    let Some(source) = common.settings.repo.as_deref() else {
        return Ok(None);
    };
    let source = git_url("--source", source)?;
    let read = match promote::rollout_view(
        &source,
        reports,
        &common.settings.auth,
        from.unwrap_or("main"),
    ) {
        Ok(v) => v,
        // No main (a fleet without one): nothing to compare with.
        Err(promote::PromoteError::UnknownFrom(_)) if from.is_none() => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "reading the rollout of {} in {source}",
                from.unwrap_or("main")
            )));
        }
    };
    Ok(Some(read))
}
