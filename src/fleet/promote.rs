//! `trueup fleet promote`: move host branches to a commit of `main`, wave by
//! wave, each wave gated by what its hosts report in their notes.
//!
//! Nothing but the Git remote is used: branch tips, the commit's
//! `fleet.yaml`, and the notes tips. Branches only ever fast-forward to a
//! commit that exists already, so signatures and the agents' anti-rollback
//! check hold; a host branch holding commits the promoted one lacks (a
//! host-only hotfix) is left alone and reported. The rollout's state is
//! never stored: it is read again from branch tips and notes, so running
//! `promote` again resumes a stopped rollout.
//!
//! The decisions (which hosts move, the waves, whether a note is healthy)
//! are pure functions below; `run` is the shell that talks to the remote.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde::Serialize;

use super::config::{FLEET_FILE, FleetConfig, Wave, parse_fleet_config};
use super::tips::{FleetTips, fetch_distinct, read_tips};
use crate::config::Auth;
use crate::health::HealthStatus;
use crate::report::notes::parse_note;
use crate::report::{RunReport, RunStatus};
use crate::source::remote::RemoteUrl;
use crate::source::transport::{Connector, SourceError};

/// The branch a fleet host runs: `hosts/<host>`.
pub fn host_branch(host: &str) -> String {
    format!("hosts/{host}")
}

/// What `promote` is asked to do.
#[derive(Debug, Clone)]
pub struct PromoteRequest {
    /// The fleet repository (branches).
    pub source: RemoteUrl,
    /// Where the notes are read (`--reports`, `reports:`, else `source`).
    pub reports: Option<RemoteUrl>,
    pub auth: Auth,
    /// A branch, tag or commit id of `source`.
    pub from: String,
    /// `--group` names; with `hosts`, the union is promoted (all when empty).
    pub groups: Vec<String>,
    /// `--hosts` glob patterns over host names.
    pub hosts: Vec<String>,
    pub waves: Option<Vec<Wave>>,
    pub wait: Option<Duration>,
    pub max_unhealthy: Option<u32>,
    pub dry_run: bool,
    /// How often the notes are read while a wave is out.
    pub poll: Duration,
}

/// Why promotion could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("'{0}' is neither a branch, a tag nor a commit of the repository")]
    UnknownFrom(String),
    #[error("{what}: {detail}")]
    Repository { what: String, detail: String },
    #[error("{FLEET_FILE} of {commit}: {detail}")]
    Fleet { commit: String, detail: String },
    #[error("{0}")]
    Selection(String),
}

/// How one host's branch stands against the promoted commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BranchMove {
    /// The branch does not exist: it is created at the commit.
    Create,
    /// The branch is an ancestor of the commit: fast-forward.
    FastForward { from: String },
    /// The branch is the commit already.
    AlreadyThere,
    /// The branch holds commits the promoted one lacks: not moved.
    Diverged { tip: String },
}

/// Why a selected host is left out of every wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub host: String,
    pub reason: String,
}

/// The hosts' standing before any push: what moves, what stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Hosts to move, in name order, with their move.
    pub pending: Vec<(String, BranchMove)>,
    /// Hosts on the commit already (count as promoted).
    pub promoted: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// Splits the selected hosts by their branch and their latest report.
/// `latest` holds the latest report of each host that has one.
pub fn select(
    hosts: &[String],
    moves: &BTreeMap<String, BranchMove>,
    latest: &BTreeMap<String, RunReport>,
) -> Selection {
    let mut s = Selection::default();
    for host in hosts {
        let mv = moves.get(host).cloned().unwrap_or(BranchMove::Create);
        if let BranchMove::AlreadyThere = mv {
            s.promoted.push(host.clone());
            continue;
        }
        if let BranchMove::Diverged { tip } = &mv {
            s.skipped.push(Skipped {
                host: host.clone(),
                reason: format!(
                    "{} holds commits the promoted one does not contain (tip {}); \
                     merge them into main, or move the branch by hand",
                    host_branch(host),
                    short(tip)
                ),
            });
            continue;
        }
        if let Some(r) = latest.get(host) {
            if let Some(d) = &r.disabled {
                s.skipped.push(Skipped {
                    host: host.clone(),
                    reason: format!("disabled since {}: {}", d.since, d.reason),
                });
                continue;
            }
            if r.audit {
                s.skipped.push(Skipped {
                    host: host.clone(),
                    reason: "in audit mode (mode: check): it never applies a commit".into(),
                });
                continue;
            }
        }
        s.pending.push((host.clone(), mv));
    }
    s
}

/// Splits `pending` (in name order) into waves. A group wave takes its
/// not yet promoted members; a share wave takes that share of the hosts
/// not yet promoted, rounded up, at least one, in name order. A wave
/// that would be empty is left out; hosts no wave takes stay unpromoted.
pub fn plan_waves(
    waves: &[Wave],
    pending: &[String],
    config: &FleetConfig,
) -> Vec<(Wave, Vec<String>)> {
    let mut left: Vec<String> = pending.to_vec();
    let mut out = Vec::new();
    for wave in waves {
        let take: Vec<String> = match wave {
            Wave::Group(g) => {
                let members: BTreeSet<&str> = config.group_hosts(g).into_iter().collect();
                left.iter()
                    .filter(|h| members.contains(h.as_str()))
                    .cloned()
                    .collect()
            }
            Wave::Share(p) => {
                if left.is_empty() {
                    Vec::new()
                } else {
                    let n = (left.len() * usize::from(*p)).div_ceil(100).max(1);
                    left.iter().take(n).cloned().collect()
                }
            }
        };
        if take.is_empty() {
            continue;
        }
        left.retain(|h| !take.contains(h));
        out.push((wave.clone(), take));
    }
    out
}

/// What a host's note on the promoted commit says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    /// No note on the commit yet, or its health window is still open.
    Waiting,
    Healthy,
    /// Why, in the words of the note's summary line.
    Unhealthy {
        reason: String,
    },
}

/// Judges the note a host wrote on the promoted commit. Healthy: status
/// `in_sync` or `converged` and health passed or not declared. A status or
/// health word this version does not know counts as unhealthy.
pub fn verdict(summary: &str, report: &RunReport) -> Verdict {
    // The note's summary line, and the first failing resource's error: the
    // summary counts failures, the resource says what broke.
    let first_failure = report.resources.iter().find_map(|r| {
        Some(format!(
            "{} {}: {}",
            r.kind.as_str(),
            r.resource,
            r.error.as_ref()?
        ))
    });
    let bad = |why: &str| {
        let mut reason = if summary.trim().is_empty() {
            why.to_string()
        } else {
            summary.trim().to_string()
        };
        if let Some(f) = &first_failure {
            reason = format!("{reason}; {f}");
        }
        Verdict::Unhealthy {
            reason: reason
                .chars()
                .filter(|c| !c.is_control())
                .take(500)
                .collect(),
        }
    };
    match report.status {
        RunStatus::InSync | RunStatus::Converged => {}
        RunStatus::Drift => return bad("drift left unrepaired"),
        RunStatus::Failed => return bad("failed"),
        RunStatus::Error => return bad("error"),
        RunStatus::Refused => return bad("refused"),
        RunStatus::Unhealthy => return bad("unhealthy"),
        RunStatus::RolledBack => return bad("rolled back"),
        RunStatus::Unknown => return bad("a status this version does not know"),
    }
    match report.health.as_ref().map(|h| h.status) {
        None | Some(HealthStatus::Healthy) => Verdict::Healthy,
        Some(HealthStatus::Pending) => Verdict::Waiting,
        Some(HealthStatus::Unhealthy) => bad("health checks failed"),
        Some(HealthStatus::Unknown) => bad("a health status this version does not know"),
    }
}

/// The verdict on `commit` for one host from its notes tips: the newest note
/// annotating `commit`.
fn host_verdict(tips: &FleetTips, host: &str, commit: &str) -> Verdict {
    // Sorted by host (read_tips).
    let Ok(i) = tips.hosts.binary_search_by(|t| t.host.as_str().cmp(host)) else {
        return Verdict::Waiting;
    };
    let tip = &tips.hosts[i];
    let mut notes: Vec<&str> = tip
        .recent
        .iter()
        .filter(|(c, _)| c == commit)
        .map(|(_, t)| t.as_str())
        .collect();
    if notes.is_empty()
        && let Ok(Some(latest)) = &tip.latest
    {
        notes.push(latest.as_str());
    }
    let mut newest: Option<(String, RunReport)> = None;
    for text in notes {
        let Ok((summary, report)) = parse_note(text) else {
            continue;
        };
        if report.source.commit.as_deref() != Some(commit) {
            continue;
        }
        if newest
            .as_ref()
            .is_none_or(|(_, n)| n.started_at < report.started_at)
        {
            newest = Some((summary, report));
        }
    }
    match newest {
        Some((summary, report)) => verdict(&summary, &report),
        None => Verdict::Waiting,
    }
}

/// One host of a wave, as the rollout ended for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveHost {
    pub host: String,
    #[serde(rename = "move")]
    pub branch_move: BranchMove,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// One wave's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveOutcome {
    pub wave: String,
    pub hosts: Vec<WaveHost>,
    /// Pushed (false in a dry run, or when the push failed).
    pub pushed: bool,
    pub healthy: usize,
    pub unhealthy: usize,
}

/// How the rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutResult {
    /// Every wave reported healthy (or within `max_unhealthy`).
    Completed,
    /// A wave had too many unhealthy hosts, or a push failed.
    Stopped,
    /// `--dry-run`: nothing pushed.
    DryRun,
}

/// The whole rollout, for `--format json` and the text summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromoteSummary {
    pub source: String,
    pub reports: String,
    pub from: String,
    pub commit: String,
    pub result: RolloutResult,
    pub max_unhealthy: u32,
    pub wait_secs: u64,
    pub waves: Vec<WaveOutcome>,
    /// Already on the commit before this run.
    pub already_promoted: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Pending hosts no wave took, or that a stop left behind.
    pub not_promoted: Vec<String>,
    /// Why the rollout stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_because: Option<String>,
}

/// What a caller sees while the rollout runs (a progress bar, or lines).
pub trait PromoteProgress {
    /// The plan is known (also the whole output of a dry run).
    fn planned(&mut self, _summary: &PromoteSummary) {}
    fn wave_started(&mut self, _index: usize, _count: usize, _wave: &WaveOutcome) {}
    /// A host's verdict changed from waiting.
    fn host_reported(&mut self, _host: &WaveHost) {}
    /// The counts of the wave out now, after each reading of the notes.
    fn tick(&mut self, _wave: &WaveOutcome, _waiting: usize, _elapsed: Duration) {}
    fn wave_finished(&mut self, _wave: &WaveOutcome) {}
}

/// A `PromoteProgress` that shows nothing.
pub struct Quiet;
impl PromoteProgress for Quiet {}

/// Runs the rollout (or plans it, with `dry_run`).
pub fn run(
    req: &PromoteRequest,
    progress: &mut dyn PromoteProgress,
) -> Result<PromoteSummary, PromoteError> {
    let tmp = tempfile::tempdir().map_err(|e| PromoteError::Repository {
        what: "creating a temporary repository".into(),
        detail: e.to_string(),
    })?;
    let repo_err = |what: &str| {
        let what = what.to_string();
        move |e: git2::Error| PromoteError::Repository {
            what: what.clone(),
            detail: e.message().to_string(),
        }
    };
    let repo = Repository::init_bare(tmp.path()).map_err(repo_err("creating a repository"))?;
    let conn = Connector::new(&req.source, &req.auth)?;
    let refs = conn.list_refs(&repo)?;
    // Every branch and tag: the promoted commit is reachable from one, and
    // each host branch's history decides fast-forward or not.
    fetch_distinct(&conn, &repo, &branches_and_tags(&refs))?;
    let commit = resolve_from(&repo, &refs, &req.from)?;
    let commit_hex = commit.to_string();
    let config = fleet_of(&repo, commit)?;
    let hosts = selected_hosts(&config, &req.groups, &req.hosts)?;

    let configured = configured_reports(req.reports.as_ref(), &config, commit)?;
    let reports_url = req
        .reports
        .as_ref()
        .or(configured.as_ref())
        .unwrap_or(&req.source);
    let tips = read_tips(reports_url, &req.auth, false)?;
    let latest = latest_reports(&tips);
    let heads: BTreeMap<&str, Oid> = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?, *o)))
        .collect();
    let mut moves = BTreeMap::new();
    for host in &hosts {
        let mv = match heads.get(host_branch(host).as_str()) {
            None => BranchMove::Create,
            Some(&tip) if tip == commit => BranchMove::AlreadyThere,
            Some(&tip) => {
                let ff = repo
                    .graph_descendant_of(commit, tip)
                    .map_err(repo_err("comparing histories"))?;
                if ff {
                    BranchMove::FastForward {
                        from: tip.to_string(),
                    }
                } else {
                    BranchMove::Diverged {
                        tip: tip.to_string(),
                    }
                }
            }
        };
        moves.insert(host.clone(), mv);
    }
    let selection = select(&hosts, &moves, &latest);
    let waves = req.waves.clone().unwrap_or(config.rollout.waves.clone());
    let wait = req.wait.unwrap_or(config.rollout.wait);
    let max_unhealthy = req.max_unhealthy.unwrap_or(config.rollout.max_unhealthy);
    let pending: Vec<String> = selection.pending.iter().map(|(h, _)| h.clone()).collect();
    let planned = plan_waves(&waves, &pending, &config);
    let pending_moves: BTreeMap<String, BranchMove> = selection.pending.into_iter().collect();
    let mut summary = PromoteSummary {
        source: req.source.redacted().to_string(),
        reports: reports_url.redacted().to_string(),
        from: req.from.clone(),
        commit: commit_hex.clone(),
        result: if req.dry_run {
            RolloutResult::DryRun
        } else {
            RolloutResult::Completed
        },
        max_unhealthy,
        wait_secs: wait.as_secs(),
        waves: planned
            .iter()
            .map(|(w, hs)| WaveOutcome {
                wave: w.to_string(),
                hosts: hs
                    .iter()
                    .map(|h| WaveHost {
                        host: h.clone(),
                        branch_move: pending_moves.get(h).cloned().unwrap_or(BranchMove::Create),
                        verdict: Verdict::Waiting,
                    })
                    .collect(),
                pushed: false,
                healthy: 0,
                unhealthy: 0,
            })
            .collect(),
        already_promoted: selection.promoted,
        skipped: selection.skipped,
        not_promoted: Vec::new(),
        stopped_because: None,
    };
    let in_waves: BTreeSet<&str> = planned
        .iter()
        .flat_map(|(_, hs)| hs.iter().map(String::as_str))
        .collect();
    let unplanned: Vec<String> = pending
        .iter()
        .filter(|h| !in_waves.contains(h.as_str()))
        .cloned()
        .collect();
    progress.planned(&summary);
    if req.dry_run {
        summary.not_promoted = unplanned;
        return Ok(summary);
    }

    repo.reference("refs/trueup/promote", commit, true, "trueup: promote")
        .map_err(repo_err("creating a local ref"))?;
    let count = summary.waves.len();
    let mut stopped_at = None;
    for i in 0..count {
        progress.wave_started(i, count, &summary.waves[i]);
        let wave = &mut summary.waves[i];
        match push_wave(&conn, &repo, commit, wave) {
            Ok(()) => wave.pushed = true,
            Err(why) => {
                summary.stopped_because = Some(format!("wave {}: {why}", wave.wave));
                progress.wave_finished(wave);
                stopped_at = Some(i);
                break;
            }
        }
        watch_wave(
            req,
            reports_url,
            &commit_hex,
            wave,
            wait,
            max_unhealthy,
            progress,
        )?;
        progress.wave_finished(wave);
        if wave.unhealthy > max_unhealthy as usize {
            let bad: Vec<String> = wave
                .hosts
                .iter()
                .filter_map(|h| match &h.verdict {
                    Verdict::Unhealthy { reason } => Some(format!("{}: {reason}", h.host)),
                    _ => None,
                })
                .collect();
            summary.stopped_because = Some(format!(
                "wave {} ({}): {} unhealthy host(s), more than max_unhealthy {}: {}",
                i + 1,
                wave.wave,
                wave.unhealthy,
                max_unhealthy,
                bad.join("; ")
            ));
            stopped_at = Some(i + 1);
            break;
        }
    }
    if let Some(from) = stopped_at {
        summary.result = RolloutResult::Stopped;
        for w in &summary.waves[from..] {
            if !w.pushed {
                summary
                    .not_promoted
                    .extend(w.hosts.iter().map(|h| h.host.clone()));
            }
        }
    }
    summary.not_promoted.extend(unplanned);
    Ok(summary)
}

/// The commit `from` names: a branch, a tag, a full ref, or a commit id.
fn resolve_from(
    repo: &Repository,
    refs: &[(String, Oid)],
    from: &str,
) -> Result<Oid, PromoteError> {
    let candidates = [
        from.to_string(),
        format!("refs/heads/{from}"),
        format!("refs/tags/{from}"),
    ];
    let listed = candidates
        .iter()
        .find_map(|c| refs.iter().find(|(n, _)| n == c).map(|(_, o)| *o));
    let oid = match listed {
        Some(o) => o,
        None => Oid::from_str(from)
            .ok()
            .filter(|_| from.len() == 40)
            .ok_or_else(|| PromoteError::UnknownFrom(from.to_string()))?,
    };
    // A tag peels to its commit; a bare id must be reachable from a branch.
    repo.find_object(oid, None)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|_| PromoteError::UnknownFrom(from.to_string()))
}

/// `reports:` of the commit's `fleet.yaml`, when `--reports` does not say
/// where the notes are.
fn configured_reports(
    flag: Option<&RemoteUrl>,
    config: &FleetConfig,
    commit: Oid,
) -> Result<Option<RemoteUrl>, PromoteError> {
    match (flag, &config.reports) {
        (None, Some(raw)) => RemoteUrl::parse(raw)
            .map(Some)
            .map_err(|e| PromoteError::Fleet {
                commit: short(&commit.to_string()).to_string(),
                detail: format!("reports: {e}"),
            }),
        _ => Ok(None),
    }
}

/// The branches and tags of a listing.
fn branches_and_tags(refs: &[(String, Oid)]) -> Vec<(String, Oid)> {
    refs.iter()
        .filter(|(n, _)| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
        .cloned()
        .collect()
}

/// `fleet.yaml` of the promoted commit.
fn fleet_of(repo: &Repository, commit: Oid) -> Result<FleetConfig, PromoteError> {
    let err = |detail: String| PromoteError::Fleet {
        commit: short(&commit.to_string()).to_string(),
        detail,
    };
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| err(e.message().to_string()))?;
    let entry = tree
        .get_name(FLEET_FILE)
        .ok_or_else(|| err("there is no fleet.yaml at the root of the commit".into()))?;
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| err(e.message().to_string()))?;
    parse_fleet_config(FLEET_FILE, blob.content()).map_err(|e| err(format!("\n{e}")))
}

/// The hosts `--group` and `--hosts` select (all when neither is given).
pub fn selected_hosts(
    config: &FleetConfig,
    groups: &[String],
    globs: &[String],
) -> Result<Vec<String>, PromoteError> {
    if groups.is_empty() && globs.is_empty() {
        return Ok(config.hosts.keys().cloned().collect());
    }
    let mut out = BTreeSet::new();
    for g in groups {
        let members = config.group_hosts(g);
        if members.is_empty() {
            return Err(PromoteError::Selection(format!(
                "--group {g}: no host in {FLEET_FILE} is in this group"
            )));
        }
        out.extend(members.into_iter().map(str::to_string));
    }
    for pattern in globs {
        let glob = glob::Pattern::new(pattern)
            .map_err(|e| PromoteError::Selection(format!("--hosts {pattern}: {e}")))?;
        let before = out.len();
        out.extend(config.hosts.keys().filter(|h| glob.matches(h)).cloned());
        if out.len() == before && !config.hosts.keys().any(|h| glob.matches(h)) {
            return Err(PromoteError::Selection(format!(
                "--hosts {pattern}: matches no host in {FLEET_FILE}"
            )));
        }
    }
    Ok(out.into_iter().collect())
}

/// Each host's latest report, where it could be read.
fn latest_reports(tips: &FleetTips) -> BTreeMap<String, RunReport> {
    tips.hosts
        .iter()
        .filter_map(|t| {
            let text = t.latest.as_ref().ok()?.as_ref()?;
            let (_, report) = parse_note(text).ok()?;
            Some((t.host.clone(), report))
        })
        .collect()
}

/// Pushes the wave's branches in one push. A branch that moved on the
/// remote since it was read, or that the remote turns down, fails the push.
fn push_wave(
    conn: &Connector,
    repo: &Repository,
    commit: Oid,
    wave: &WaveOutcome,
) -> Result<(), String> {
    let refspecs: Vec<String> = wave
        .hosts
        .iter()
        .map(|h| format!("refs/trueup/promote:refs/heads/{}", host_branch(&h.host)))
        .collect();
    // What each remote branch must still be, like `--force-with-lease`.
    let expected: BTreeMap<String, Oid> = wave
        .hosts
        .iter()
        .map(|h| {
            let old = match &h.branch_move {
                BranchMove::FastForward { from } => Oid::from_str(from).unwrap_or(Oid::ZERO_SHA1),
                _ => Oid::ZERO_SHA1,
            };
            (format!("refs/heads/{}", host_branch(&h.host)), old)
        })
        .collect();
    let mut remote = repo
        .remote_anonymous(conn.url().for_libgit2())
        .map_err(|e| conn.url().scrub(e.message()))?;
    let rejected: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let moved: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let mut cb = conn.callbacks().map_err(|e| e.to_string())?;
    cb.push_negotiation(|updates| {
        for u in updates {
            let name = u.dst_refname().unwrap_or("");
            // libgit2: `src` is the remote ref's current value, `dst` the
            // one it is to take.
            let old = expected.get(name).copied().unwrap_or(Oid::ZERO_SHA1);
            if u.src() != old {
                moved.borrow_mut().push(format!(
                    "{} moved on the remote to {} since it was read",
                    name.trim_start_matches("refs/heads/"),
                    short(&u.src().to_string())
                ));
            }
            if u.dst() != commit {
                moved
                    .borrow_mut()
                    .push(format!("{name} would not be set to the promoted commit"));
            }
        }
        if moved.borrow().is_empty() {
            Ok(())
        } else {
            Err(git2::Error::from_str("a branch moved since it was read"))
        }
    });
    cb.push_update_reference(|name, status| {
        if let Some(s) = status {
            rejected
                .borrow_mut()
                .push(format!("{}: {s}", name.trim_start_matches("refs/heads/")));
        }
        Ok(())
    });
    let mut po = git2::PushOptions::new();
    po.remote_callbacks(cb);
    let refs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
    let result = remote.push(&refs, Some(&mut po));
    drop(po);
    let moved = moved.into_inner();
    if !moved.is_empty() {
        return Err(format!("not pushed: {}", moved.join("; ")));
    }
    result.map_err(|e| format!("push failed: {}", conn.url().scrub(e.message())))?;
    let rejected = rejected.into_inner();
    if !rejected.is_empty() {
        return Err(format!(
            "the remote turned down: {}",
            conn.url().scrub(&rejected.join("; "))
        ));
    }
    Ok(())
}

/// Reads the notes until every host of the wave has a verdict, too many
/// are unhealthy, or `wait` has passed (then the silent ones are unhealthy).
fn watch_wave(
    req: &PromoteRequest,
    reports: &RemoteUrl,
    commit: &str,
    wave: &mut WaveOutcome,
    wait: Duration,
    max_unhealthy: u32,
    progress: &mut dyn PromoteProgress,
) -> Result<(), PromoteError> {
    let started = Instant::now();
    loop {
        // A failed reading (the server restarting) is retried until the
        // wait is over: the hosts' reports are what gate the wave.
        match read_tips(reports, &req.auth, true) {
            Ok(tips) => {
                for h in wave.hosts.iter_mut() {
                    if h.verdict != Verdict::Waiting {
                        continue;
                    }
                    let v = host_verdict(&tips, &h.host, commit);
                    if v != Verdict::Waiting {
                        h.verdict = v;
                        progress.host_reported(h);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the notes failed; trying again"),
        }
        count(wave);
        let waiting = wave.hosts.len() - wave.healthy - wave.unhealthy;
        progress.tick(wave, waiting, started.elapsed());
        if waiting == 0 || wave.unhealthy > max_unhealthy as usize {
            return Ok(());
        }
        if started.elapsed() >= wait {
            let secs = wait.as_secs();
            for h in wave.hosts.iter_mut() {
                if h.verdict == Verdict::Waiting {
                    h.verdict = Verdict::Unhealthy {
                        reason: format!(
                            "no healthy report on the promoted commit within {}",
                            humantime::format_duration(Duration::from_secs(secs))
                        ),
                    };
                    progress.host_reported(h);
                }
            }
            count(wave);
            return Ok(());
        }
        std::thread::sleep(req.poll.min(wait.saturating_sub(started.elapsed())));
    }
}

fn count(wave: &mut WaveOutcome) {
    wave.healthy = wave
        .hosts
        .iter()
        .filter(|h| h.verdict == Verdict::Healthy)
        .count();
    wave.unhealthy = wave
        .hosts
        .iter()
        .filter(|h| matches!(h.verdict, Verdict::Unhealthy { .. }))
        .count();
}

/// One host against a commit, as `fleet status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRollout {
    pub host: String,
    /// Its branch's tip (absent: no branch yet).
    pub tip: Option<String>,
    /// Commits of the promoted one its branch lacks (absent: no branch).
    pub behind: Option<usize>,
    /// Commits on its branch the promoted one lacks (a host-only hotfix).
    pub ahead: usize,
    /// `promoted`, `behind`, `diverged`, `no_branch`.
    pub position: &'static str,
    /// For a host on the commit: what its note on it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The rollout of a commit, derived from branch tips and notes (never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub from: String,
    pub commit: String,
    /// `not_started`, `in_progress`, `stopped`, `complete`.
    pub state: &'static str,
    /// One line for people.
    pub summary: String,
    pub hosts: Vec<HostRollout>,
}

/// A rollout as read, with the notes it was read from (so `fleet status`
/// reads them once).
pub struct RolloutRead {
    pub view: RolloutView,
    /// Where the notes were read: `--reports`, else `reports:` of the
    /// commit's fleet.yaml, else the fleet repository.
    pub reports: RemoteUrl,
    pub tips: FleetTips,
    /// The fleet repository's branches (without `refs/heads/`).
    pub heads: HashMap<String, Oid>,
}

/// Where the hosts' notes are, for commands that read the fleet without
/// a rollout: `--reports`, else `reports:` of fleet.yaml on `from` in the
/// fleet repository, else the fleet repository itself. A fleet without
/// `from` or without fleet.yaml keeps its notes in the fleet repository.
pub fn resolve_reports(
    source: &RemoteUrl,
    flag: Option<&RemoteUrl>,
    auth: &Auth,
    from: &str,
) -> Result<RemoteUrl, PromoteError> {
    if let Some(flag) = flag {
        return Ok(flag.clone());
    }
    let tmp = tempfile::tempdir().map_err(|e| PromoteError::Repository {
        what: "creating a temporary repository".into(),
        detail: e.to_string(),
    })?;
    let repo_err = |e: git2::Error| PromoteError::Repository {
        what: format!("reading fleet.yaml on {from}"),
        detail: e.message().to_string(),
    };
    let repo = Repository::init_bare(tmp.path()).map_err(repo_err)?;
    let conn = Connector::new(source, auth)?;
    let local = format!("refs/heads/{from}");
    conn.fetch(&repo, &[&format!("+{local}:{local}")])?;
    let Ok(commit) = repo.refname_to_id(&local) else {
        return Ok(source.clone());
    };
    let has_fleet = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map(|t| t.get_name(FLEET_FILE).is_some())
        .map_err(repo_err)?;
    if !has_fleet {
        return Ok(source.clone());
    }
    let config = fleet_of(&repo, commit)?;
    Ok(configured_reports(None, &config, commit)?.unwrap_or_else(|| source.clone()))
}

/// How far each host's branch is from `from`, and the rollout's state.
pub fn rollout_view(
    source: &RemoteUrl,
    reports: Option<&RemoteUrl>,
    auth: &Auth,
    from: &str,
) -> Result<RolloutRead, PromoteError> {
    let tmp = tempfile::tempdir().map_err(|e| PromoteError::Repository {
        what: "creating a temporary repository".into(),
        detail: e.to_string(),
    })?;
    let repo_err = |e: git2::Error| PromoteError::Repository {
        what: "reading the fleet's branches".into(),
        detail: e.message().to_string(),
    };
    let repo = Repository::init_bare(tmp.path()).map_err(repo_err)?;
    let conn = Connector::new(source, auth)?;
    let refs = conn.list_refs(&repo)?;
    fetch_distinct(&conn, &repo, &branches_and_tags(&refs))?;
    let commit = resolve_from(&repo, &refs, from)?;
    let commit_hex = commit.to_string();
    let heads: BTreeMap<&str, Oid> = refs
        .iter()
        .filter_map(|(n, o)| Some((n.strip_prefix("refs/heads/")?, *o)))
        .collect();
    // The hosts of the commit's fleet.yaml, else every host branch.
    let config = fleet_of(&repo, commit).ok();
    let hosts: Vec<String> = match &config {
        Some(c) => c.hosts.keys().cloned().collect(),
        None => heads
            .keys()
            .filter_map(|b| b.strip_prefix("hosts/"))
            .map(str::to_string)
            .collect(),
    };
    let configured = match &config {
        Some(c) => configured_reports(reports, c, commit)?,
        None => None,
    };
    let reports = reports.or(configured.as_ref()).unwrap_or(source).clone();
    let tips = read_tips(&reports, auth, true)?;
    let mut out = Vec::new();
    // Host branches share a handful of tips: one walk per distinct tip.
    let mut graph: HashMap<Oid, (usize, usize)> = HashMap::new();
    for host in hosts {
        let tip = heads.get(host_branch(&host).as_str()).copied();
        let (ahead, behind) = match tip {
            Some(t) => match graph.get(&t) {
                Some(counts) => *counts,
                None => {
                    let counts = repo.graph_ahead_behind(t, commit).map_err(repo_err)?;
                    *graph.entry(t).or_insert(counts)
                }
            },
            None => (0, 0),
        };
        let position = match tip {
            None => "no_branch",
            Some(t) if t == commit => "promoted",
            Some(_) if ahead > 0 => "diverged",
            Some(_) => "behind",
        };
        let verdict = (position == "promoted").then(|| host_verdict(&tips, &host, &commit_hex));
        out.push(HostRollout {
            host,
            tip: tip.map(|t| t.to_string()),
            behind: tip.map(|_| behind),
            ahead,
            position,
            verdict,
        });
    }
    let on: Vec<&HostRollout> = out.iter().filter(|h| h.position == "promoted").collect();
    let unhealthy: Vec<&str> = on
        .iter()
        .filter(|h| matches!(h.verdict, Some(Verdict::Unhealthy { .. })))
        .map(|h| h.host.as_str())
        .collect();
    let waiting = on
        .iter()
        .filter(|h| h.verdict == Some(Verdict::Waiting))
        .count();
    let diverged: Vec<&str> = out
        .iter()
        .filter(|h| h.position == "diverged")
        .map(|h| h.host.as_str())
        .collect();
    let eligible = out.len() - diverged.len();
    let state = if !unhealthy.is_empty() {
        "stopped"
    } else if on.is_empty() {
        "not_started"
    } else if on.len() == eligible && waiting == 0 {
        "complete"
    } else {
        "in_progress"
    };
    let mut summary = format!(
        "{} of {} hosts on {} ({})",
        on.len(),
        out.len(),
        from,
        short(&commit_hex)
    );
    summary.push_str(&match state {
        "stopped" => format!(": stopped, unhealthy: {}", unhealthy.join(", ")),
        "not_started" => ": not started".into(),
        "complete" => ": complete".into(),
        _ => format!(": in progress, {waiting} waiting for a report"),
    });
    if !diverged.is_empty() {
        summary.push_str(&format!(
            "; diverged (host-only commits): {}",
            diverged.join(", ")
        ));
    }
    let view = RolloutView {
        from: from.to_string(),
        commit: commit_hex,
        state,
        summary,
        hosts: out,
    };
    let heads = heads.into_iter().map(|(b, o)| (b.to_string(), o)).collect();
    Ok(RolloutRead {
        view,
        reports,
        tips,
        heads,
    })
}

/// The rollout as a text table for people.
pub fn render_rollout(v: &RolloutView) -> String {
    let mut out = format!(
        "rollout: {}
",
        v.summary
    );
    let width = v
        .hosts
        .iter()
        .map(|h| h.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!("{:<width$}  BEHIND  ROLLOUT\n", "HOST"));
    for h in &v.hosts {
        let behind = h.behind.map_or("-".to_string(), |b| b.to_string());
        let state = match (&h.verdict, h.position) {
            (Some(Verdict::Healthy), _) => "healthy".to_string(),
            (Some(Verdict::Waiting), _) => "waiting for its report".to_string(),
            (Some(Verdict::Unhealthy { reason }), _) => format!("unhealthy: {reason}"),
            (None, "diverged") => format!("diverged ({} host-only commits)", h.ahead),
            (None, "no_branch") => "no branch".to_string(),
            (None, p) => p.to_string(),
        };
        out.push_str(&format!("{:<width$}  {behind:<6}  {state}\n", h.host));
    }
    out
}

/// The first 12 characters of a commit id.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The summary for people.
pub fn render_summary(s: &PromoteSummary) -> String {
    let mut out = String::new();
    let verb = match s.result {
        RolloutResult::DryRun => "would promote",
        _ => "promoting",
    };
    out.push_str(&format!(
        "{verb} {} ({}) from {}\n",
        s.from,
        short(&s.commit),
        s.source
    ));
    for (i, w) in s.waves.iter().enumerate() {
        out.push_str(&format!(
            "wave {}/{} ({}): {} host(s)",
            i + 1,
            s.waves.len(),
            w.wave,
            w.hosts.len()
        ));
        if s.result != RolloutResult::DryRun {
            out.push_str(&format!(
                ", {} healthy, {} unhealthy{}",
                w.healthy,
                w.unhealthy,
                if w.pushed { "" } else { ", not pushed" }
            ));
        }
        out.push('\n');
        for h in &w.hosts {
            let mv = match &h.branch_move {
                BranchMove::Create => format!("create {}", host_branch(&h.host)),
                BranchMove::FastForward { from } => {
                    format!(
                        "{} {}..{}",
                        host_branch(&h.host),
                        short(from),
                        short(&s.commit)
                    )
                }
                BranchMove::AlreadyThere => "already there".into(),
                BranchMove::Diverged { .. } => "diverged".into(),
            };
            let state = match (&h.verdict, s.result, w.pushed) {
                (_, RolloutResult::DryRun, _) | (_, _, false) => String::new(),
                (Verdict::Healthy, ..) => "  healthy".into(),
                (Verdict::Waiting, ..) => "  waiting".into(),
                (Verdict::Unhealthy { reason }, ..) => format!("  UNHEALTHY: {reason}"),
            };
            out.push_str(&format!("  {}: {mv}{state}\n", h.host));
        }
    }
    if !s.already_promoted.is_empty() {
        out.push_str(&format!(
            "already on {}: {}\n",
            short(&s.commit),
            s.already_promoted.join(", ")
        ));
    }
    for k in &s.skipped {
        out.push_str(&format!("skipped {}: {}\n", k.host, k.reason));
    }
    if !s.not_promoted.is_empty() {
        out.push_str(&format!("not promoted: {}\n", s.not_promoted.join(", ")));
    }
    match (&s.stopped_because, s.result) {
        (Some(why), _) => out.push_str(&format!("rollout stopped: {why}\n")),
        (None, RolloutResult::Completed) => out.push_str("rollout completed\n"),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Mode, SourceInfo};

    fn fleet() -> FleetConfig {
        parse_fleet_config(
            FLEET_FILE,
            b"hosts:\n  a1: { groups: [canary, web] }\n  a2: { groups: [web] }\n  a3: {}\n  a4: {}\n  a5: {}\n  b1: { groups: [db] }\n",
        )
        .unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn report(status: RunStatus, commit: &str) -> RunReport {
        RunReport::failed_early(
            "h",
            Mode::Apply,
            false,
            std::time::SystemTime::UNIX_EPOCH,
            SourceInfo {
                location: "git://x/y".into(),
                branch: Some("hosts/h".into()),
                commit: Some(commit.into()),
                ..SourceInfo::default()
            },
            status,
            vec![],
        )
    }

    #[test]
    fn waves_take_groups_then_shares_of_what_is_left_rounded_up() {
        let c = fleet();
        let pending = names(&["a1", "a2", "a3", "a4", "a5", "b1"]);
        let waves = plan_waves(
            &[
                Wave::Group("canary".into()),
                Wave::Share(25),
                Wave::Share(100),
            ],
            &pending,
            &c,
        );
        let got: Vec<(String, Vec<String>)> =
            waves.into_iter().map(|(w, h)| (w.to_string(), h)).collect();
        assert_eq!(
            got,
            [
                ("canary".to_string(), names(&["a1"])),
                // 25% of the 5 left, rounded up: 2.
                ("25%".to_string(), names(&["a2", "a3"])),
                ("100%".to_string(), names(&["a4", "a5", "b1"])),
            ]
        );
    }

    #[test]
    fn a_share_takes_at_least_one_and_empty_waves_are_dropped() {
        let c = fleet();
        let waves = plan_waves(
            &[
                Wave::Share(1),
                Wave::Group("canary".into()),
                Wave::Share(50),
            ],
            &names(&["a3", "a4", "a5"]),
            &c,
        );
        let got: Vec<Vec<String>> = waves.into_iter().map(|(_, h)| h).collect();
        assert_eq!(got, [names(&["a3"]), names(&["a4"])]);
    }

    #[test]
    fn resuming_counts_hosts_on_the_commit_as_promoted() {
        let c = fleet();
        let hosts: Vec<String> = c.hosts.keys().cloned().collect();
        let mut moves = BTreeMap::new();
        moves.insert("a1".to_string(), BranchMove::AlreadyThere);
        moves.insert(
            "a2".to_string(),
            BranchMove::Diverged {
                tip: "f".repeat(40),
            },
        );
        let mut latest = BTreeMap::new();
        let mut audit = report(RunStatus::Drift, "x");
        audit.audit = true;
        latest.insert("a3".to_string(), audit);
        let mut off = report(RunStatus::Drift, "x");
        off.disabled = Some(crate::report::DisabledInfo {
            reason: "maintenance".into(),
            since: "2026-01-01T00:00:00Z".into(),
        });
        latest.insert("a4".to_string(), off);
        let s = select(&hosts, &moves, &latest);
        assert_eq!(s.promoted, names(&["a1"]));
        assert_eq!(
            s.pending
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>(),
            ["a5", "b1"]
        );
        let skipped: Vec<&str> = s.skipped.iter().map(|k| k.host.as_str()).collect();
        assert_eq!(skipped, ["a2", "a3", "a4"]);
        assert!(
            s.skipped[0].reason.contains("holds commits"),
            "{:?}",
            s.skipped
        );
        assert!(
            s.skipped[2].reason.contains("maintenance"),
            "{:?}",
            s.skipped
        );
        // The canary is on the commit: the canary wave is empty and dropped.
        let waves = plan_waves(
            &[Wave::Group("canary".into()), Wave::Share(100)],
            &names(&["a5", "b1"]),
            &c,
        );
        assert_eq!(waves.len(), 1);
    }

    #[test]
    fn healthy_needs_a_good_status_and_passed_or_no_health() {
        let c = "c".repeat(40);
        assert_eq!(
            verdict("ok", &report(RunStatus::InSync, &c)),
            Verdict::Healthy
        );
        assert_eq!(
            verdict("ok", &report(RunStatus::Converged, &c)),
            Verdict::Healthy
        );
        for s in [
            RunStatus::Failed,
            RunStatus::Error,
            RunStatus::Refused,
            RunStatus::RolledBack,
            RunStatus::Unhealthy,
            RunStatus::Unknown,
            RunStatus::Drift,
        ] {
            assert_eq!(
                verdict("web-01: 1 failed", &report(s, &c)),
                Verdict::Unhealthy {
                    reason: "web-01: 1 failed".into()
                },
                "{s:?}"
            );
        }
        let mut r = report(RunStatus::Converged, &c);
        let health = |status: &str| -> crate::health::HealthReport {
            serde_json::from_value(serde_json::json!({ "status": status })).unwrap()
        };
        r.health = Some(health("pending"));
        assert_eq!(verdict("", &r), Verdict::Waiting);
        r.health = Some(health("healthy"));
        assert_eq!(verdict("", &r), Verdict::Healthy);
        r.health = Some(health("unhealthy"));
        assert!(matches!(verdict("", &r), Verdict::Unhealthy { .. }));
        r.health = Some(health("some-new-word"));
        assert!(matches!(verdict("", &r), Verdict::Unhealthy { .. }));
    }

    #[test]
    fn only_a_note_on_the_promoted_commit_counts() {
        use crate::fleet::tips::HostTip;
        use crate::report::notes::format_note;
        let old = "a".repeat(40);
        let new = "b".repeat(40);
        let tips = |recent: Vec<(String, String)>, latest: Option<String>| FleetTips {
            heads: Default::default(),
            hosts: vec![HostTip {
                host: "h".into(),
                notes_ref: "refs/notes/trueup/h".into(),
                latest: Ok(latest),
                recent,
            }],
        };
        let on_old = format_note(&report(RunStatus::InSync, &old));
        let t = tips(vec![(old.clone(), on_old.clone())], Some(on_old.clone()));
        assert_eq!(host_verdict(&t, "h", &new), Verdict::Waiting);
        assert_eq!(host_verdict(&t, "nobody", &new), Verdict::Waiting);
        let on_new = format_note(&report(RunStatus::Failed, &new));
        let t = tips(
            vec![(new.clone(), on_new.clone()), (old.clone(), on_old.clone())],
            Some(on_old),
        );
        assert!(matches!(
            host_verdict(&t, "h", &new),
            Verdict::Unhealthy { .. }
        ));
        // Only the latest ref was read (an older reader's view).
        let t = tips(
            vec![],
            Some(format_note(&report(RunStatus::Converged, &new))),
        );
        assert_eq!(host_verdict(&t, "h", &new), Verdict::Healthy);
    }

    #[test]
    fn selections_by_group_and_glob() {
        let c = fleet();
        assert_eq!(selected_hosts(&c, &[], &[]).unwrap().len(), 6);
        assert_eq!(
            selected_hosts(&c, &names(&["web"]), &names(&["b*"])).unwrap(),
            names(&["a1", "a2", "b1"])
        );
        assert!(selected_hosts(&c, &names(&["nope"]), &[]).is_err());
        assert!(selected_hosts(&c, &[], &names(&["z*"])).is_err());
    }
}
