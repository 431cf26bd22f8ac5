//! Health checks after a change, and the decisions around them.
//!
//! A change can converge perfectly and still break the host (nginx starts
//! but serves 502). After a run applied a new commit, the branch's
//! `health:` checks (services, HTTP, TCP, commands) are run every
//! [`PROBE_INTERVAL`] until every required one passes or the window ends;
//! a required check still failing at the end puts the host back on the
//! last healthy commit.
//!
//! What is here:
//! - the validated `health:` model ([`HealthSpec`]; `spec::health` parses it);
//! - the probes, one per kind, behind [`Prober`] so the window loop is
//!   tested with plain values;
//! - the window loop ([`watch`]);
//! - the pure decision once the window ended ([`decide`]): healthy, keep
//!   the commit and report it, or roll back (which commit to apply in the
//!   first place is `pipeline::choose_commit`);
//! - what a rollback undoes ([`created_by`], [`remove_created`]) and the
//!   pending decision kept in `state.json` ([`PendingHealth`]);
//! - the report's `health` object ([`HealthReport`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use tracing::{info, warn};

use crate::apply::{Outcome, Status};
use crate::desired::DesiredState;
use crate::pipeline::{CommitChoice, TipVerdict, choose_commit};
use crate::report::{Mode, RunReport, RunStatus};
use crate::resource::{Attribute, Kind};
use crate::state::HostState;

/// `window:` when the branch does not say.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// `timeout:` of one HTTP, TCP or command probe when the check does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between two rounds of probes in the window.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a service must stay active and unchanged (same main
/// process, not restarted) before its check passes; shorter windows use a
/// quarter of the window. A crash-looping unit is `active` for moments
/// between restarts, so one look is never enough.
pub const MAX_SETTLE: Duration = Duration::from_secs(5);
/// How much of a command's (or HTTP body's) output a report keeps.
pub const OUTPUT_TAIL_BYTES: usize = 2048;

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// A branch's `health:`, rendered and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSpec {
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    pub on_failure: OnFailure,
    /// Keyed by name, so an include can override one.
    pub checks: BTreeMap<String, CheckSpec>,
}

/// What a failed window does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Go back to the last healthy commit.
    #[default]
    Rollback,
    /// Only report the host unhealthy.
    Report,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckSpec {
    pub probe: Probe,
    /// A check that is not required is reported and never rolls back.
    pub required: bool,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

/// What a check looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// Active, and not restarted by systemd during the window.
    Service(String),
    /// A GET answered with a 2xx status, or exactly `status`.
    Http { url: String, status: Option<u16> },
    /// A TCP connection to `host:port` is accepted.
    Tcp(String),
    /// The command exits 0.
    Command(Vec<String>),
}

impl Probe {
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Service(_) => "service",
            Probe::Http { .. } => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Command(_) => "command",
        }
    }

    /// What is probed, for people.
    pub fn target(&self) -> String {
        match self {
            Probe::Service(u) => u.clone(),
            Probe::Http { url, .. } => url.clone(),
            Probe::Tcp(a) => a.clone(),
            Probe::Command(argv) => argv.join(" "),
        }
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// The `health` object of a `RunReport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    /// The commit the checks judged (absent for a directory source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default)]
    pub window_ms: u64,
    /// How long the checks ran.
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// Set when the commit was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackReport>,
    /// Why the checks did not decide anything (a `--root`, a directory
    /// source, a repaired drift on the same commit, `on_failure: report`,
    /// nothing to roll back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The host's health after a run. Readers map a word they do not know to
/// `unknown`: a fleet is upgraded host by host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    /// The window is still open (a `check` during it, or a stopped agent).
    Pending,
    #[serde(other)]
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Pending => "pending",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    /// `service`, `http`, `tcp` or `command`.
    pub kind: String,
    pub target: String,
    pub required: bool,
    pub status: CheckStatus,
    /// Until it passed, or for as long as it was tried.
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    /// What the last probe saw: "HTTP 200", "connection refused",
    /// "restarted 3 times by systemd during the window".
    #[serde(default)]
    pub message: String,
    /// The tail of a command's output or an HTTP body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Not run (a service or command check under `--root`).
    Skipped,
    #[serde(other)]
    Unknown,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The commit rolled back (failed its checks).
    pub from: String,
    /// The last healthy commit, converged again.
    pub to: String,
    /// Files, directories and symlinks the bad commit created that the
    /// healthy one does not declare, removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// What the bad commit created and a rollback does not undo (packages,
    /// users, groups), as "package NAME".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
    /// Whether the healthy commit's checks passed after the rollback.
    pub healthy_after: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks_after: Vec<CheckResult>,
    /// Anything that went wrong while rolling back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl HealthReport {
    /// The failed required checks, "name: message", for notes and logs.
    pub fn failed_required(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.required && c.status == CheckStatus::Failed)
            .map(|c| format!("{} ({} {}): {}", c.name, c.kind, c.target, c.message))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub status: CheckStatus,
    pub message: String,
    pub output: Option<String>,
}

impl Probed {
    pub fn passed(message: impl Into<String>) -> Probed {
        Probed {
            status: CheckStatus::Passed,
            message: message.into(),
            output: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> Probed {
        Probed {
            status: CheckStatus::Failed,
            message: message.into(),
            output: None,
        }
    }
}

/// Runs one probe of one check. The machine's prober keeps what it saw of
/// each service across calls (to see restarts), so it is `&mut`.
pub trait Prober {
    fn probe(&mut self, name: &str, check: &CheckSpec, timeout: Duration) -> Probed;
}

/// Probes the machine. Under a `--root` other than `/` only `http` and
/// `tcp` checks run: the services and commands would be the host's, not
/// the root's.
pub struct MachineProber {
    live: bool,
    settle: Duration,
    services: HashMap<String, ServiceWatch>,
}

impl MachineProber {
    /// `settle`: how long a service must stay up and unchanged to pass
    /// (zero for a single look, as `trueup health` takes).
    pub fn new(root: &Path, settle: Duration) -> MachineProber {
        MachineProber {
            live: root == Path::new("/"),
            settle,
            services: HashMap::new(),
        }
    }
}

impl Prober for MachineProber {
    fn probe(&mut self, _name: &str, check: &CheckSpec, timeout: Duration) -> Probed {
        match &check.probe {
            Probe::Service(_) | Probe::Command(_) if !self.live => Probed {
                status: CheckStatus::Skipped,
                message: "not run under --root (only http and tcp checks are)".into(),
                output: None,
            },
            Probe::Service(unit) => {
                let sample = match show_service(unit) {
                    Ok(s) => s,
                    Err(e) => return Probed::failed(e),
                };
                self.services.entry(unit.clone()).or_default().observe(
                    sample,
                    Instant::now(),
                    self.settle,
                )
            }
            Probe::Http { url, status } => probe_http(url, *status, timeout),
            Probe::Tcp(address) => probe_tcp(address, timeout),
            Probe::Command(argv) => probe_command(argv, timeout),
        }
    }
}

/// What `systemctl show` says about a service, for its health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSample {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    /// Restarts systemd made on its own (`Restart=`), since the unit was
    /// last started by hand.
    pub n_restarts: u64,
    pub main_pid: u32,
    /// When the unit last entered `active` (monotonic µs).
    pub active_enter: u64,
}

/// The properties `show_service` asks for.
pub const SERVICE_PROPERTIES: &str =
    "LoadState,ActiveState,SubState,Result,NRestarts,MainPID,ActiveEnterTimestampMonotonic";

/// Parses `systemctl show -p SERVICE_PROPERTIES UNIT` (any wider output
/// too: other properties are ignored). Missing numbers read as 0.
pub fn parse_service_show(text: &str) -> Result<ServiceSample, String> {
    let mut s = ServiceSample::default();
    let mut seen_active = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let number = || value.trim().parse::<u64>().unwrap_or(0);
        match key {
            "LoadState" => s.load_state = value.to_string(),
            "ActiveState" => {
                s.active_state = value.to_string();
                seen_active = true;
            }
            "SubState" => s.sub_state = value.to_string(),
            "Result" => s.result = value.to_string(),
            "NRestarts" => s.n_restarts = number(),
            "MainPID" => s.main_pid = u32::try_from(number()).unwrap_or(0),
            "ActiveEnterTimestampMonotonic" => s.active_enter = number(),
            _ => {}
        }
    }
    if !seen_active {
        return Err("systemctl show printed no ActiveState".into());
    }
    Ok(s)
}

fn show_service(unit: &str) -> Result<ServiceSample, String> {
    let mut cmd = Command::new("systemctl");
    cmd.env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .args([
            "--no-ask-password",
            "show",
            &format!("--property={SERVICE_PROPERTIES}"),
            "--",
            unit,
        ]);
    let out = crate::resource::tool::run(&mut cmd).map_err(|e| crate::resource::tool::chain(&e))?;
    parse_service_show(&String::from_utf8_lossy(&out.stdout))
}

/// What one service check has seen during the window.
#[derive(Debug, Default)]
pub struct ServiceWatch {
    /// NRestarts at the first look.
    first_restarts: Option<u64>,
    /// The active run being timed: (main pid, active since), first seen at.
    stable: Option<((u32, u64), Instant)>,
}

impl ServiceWatch {
    /// Judges one sample. Passes once the unit has been active, with the
    /// same main process and without a restart, for `settle`; fails for
    /// the rest of the window once systemd restarted it.
    pub fn observe(&mut self, s: ServiceSample, now: Instant, settle: Duration) -> Probed {
        let first = *self.first_restarts.get_or_insert(s.n_restarts);
        let restarts = s.n_restarts.saturating_sub(first);
        let state = format!("{} ({})", s.active_state, s.sub_state);
        if s.load_state != "loaded" {
            self.stable = None;
            return Probed::failed(format!("the unit is {}", s.load_state));
        }
        if restarts > 0 {
            self.stable = None;
            return Probed::failed(format!(
                "restarted {restarts} time{} by systemd during the window; now {state}",
                if restarts == 1 { "" } else { "s" }
            ));
        }
        if s.active_state != "active" {
            self.stable = None;
            let result = if s.result.is_empty() || s.result == "success" {
                String::new()
            } else {
                format!(", result {}", s.result)
            };
            return Probed::failed(format!("{state}{result}"));
        }
        let run = (s.main_pid, s.active_enter);
        let since = match self.stable {
            Some((seen, at)) if seen == run => at,
            _ => {
                self.stable = Some((run, now));
                now
            }
        };
        let up = now.saturating_duration_since(since);
        if up >= settle {
            Probed::passed(state)
        } else {
            Probed::failed(format!(
                "{state}, not yet up for {}",
                humantime::format_duration(settle)
            ))
        }
    }
}

/// A GET of `url`: 2xx passes unless `want` names the status.
pub fn probe_http(url: &str, want: Option<u16>, timeout: Duration) -> Probed {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    match agent.get(url).call() {
        Ok(mut response) => {
            let code = response.status().as_u16();
            let ok = match want {
                Some(w) => code == w,
                None => (200..300).contains(&code),
            };
            let body = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec()
                .map(|b| tail_text(&b))
                .ok()
                .filter(|t| !t.trim().is_empty());
            let expected = match want {
                Some(w) => format!("{w}"),
                None => "2xx".into(),
            };
            Probed {
                status: if ok {
                    CheckStatus::Passed
                } else {
                    CheckStatus::Failed
                },
                message: if ok {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}, expected {expected}")
                },
                output: if ok { None } else { body },
            }
        }
        Err(e) => Probed::failed(http_error(&e)),
    }
}

fn http_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io_reason(io),
        ureq::Error::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

/// A TCP connection to `address` (`host:port`).
pub fn probe_tcp(address: &str, timeout: Duration) -> Probed {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs = match address.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Probed::failed(format!("resolving {address}: {e}")),
    };
    let mut last = format!("{address} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Probed::passed(format!("connected to {a}")),
            Err(e) => last = format!("{a}: {}", io_reason(&e)),
        }
    }
    Probed::failed(last)
}

/// Runs `argv`; exit 0 passes. Its output (stdout and stderr together) is
/// kept, the tail of it; a command still running at `timeout` is killed
/// with its process group.
pub fn probe_command(argv: &[String], timeout: Duration) -> Probed {
    let Some((program, args)) = argv.split_first() else {
        return Probed::failed("empty command");
    };
    // The one process runner: output into one file, the group killed at
    // the limit, output counted as progress.
    let ran = match crate::resource::tool::run_limited(Command::new(program).args(args), timeout) {
        Ok(r) => r,
        Err(e) => return Probed::failed(e.to_string()),
    };
    let out = ran.output;
    let status = match ran.status {
        Some(s) => s,
        None => {
            let output = read_tail(out);
            return Probed {
                status: CheckStatus::Failed,
                message: format!("timed out after {}", humantime::format_duration(timeout)),
                output,
            };
        }
    };
    let output = read_tail(out);
    let (passed, message) = match status.code() {
        Some(0) => (true, "exit status 0".to_string()),
        Some(c) => (false, format!("exit status {c}")),
        None => (false, format!("{status}")),
    };
    Probed {
        status: if passed {
            CheckStatus::Passed
        } else {
            CheckStatus::Failed
        },
        message,
        output,
    }
}

fn read_tail(mut f: std::fs::File) -> Option<String> {
    let len = f.seek(SeekFrom::End(0)).ok()?;
    let start = len.saturating_sub(OUTPUT_TAIL_BYTES as u64);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = tail_text(&buf);
    (!text.trim().is_empty()).then_some(text)
}

/// The last `OUTPUT_TAIL_BYTES` of `bytes` as text, cut at a character
/// boundary.
fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut start = text.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

// ---------------------------------------------------------------------------
// The window
// ---------------------------------------------------------------------------

/// How long a service must stay up to pass, for a window of `window`.
pub fn settle_for(window: Duration) -> Duration {
    (window / 4).min(MAX_SETTLE)
}

/// Runs the checks every `interval` until every required check passed, the
/// `deadline` came, or `stop` says so; returns each check's last result.
/// A check that passed is not probed again. `deadline` may already be
/// past: one round is always made.
pub fn watch(
    checks: &BTreeMap<String, CheckSpec>,
    prober: &mut dyn Prober,
    deadline: Instant,
    interval: Duration,
    stop: &dyn Fn() -> bool,
) -> Vec<CheckResult> {
    let started = Instant::now();
    let mut results: Vec<CheckResult> = checks
        .iter()
        .map(|(name, c)| CheckResult {
            name: name.clone(),
            kind: c.probe.kind().into(),
            target: c.probe.target(),
            required: c.required,
            status: CheckStatus::Failed,
            duration_ms: 0,
            attempts: 0,
            message: "not run".into(),
            output: None,
        })
        .collect();
    loop {
        for (result, (name, check)) in results.iter_mut().zip(checks) {
            if matches!(result.status, CheckStatus::Passed | CheckStatus::Skipped)
                && result.attempts > 0
            {
                continue;
            }
            // A probe never runs much past the window: a 30 s timeout in a
            // 10 s window would hold the host on a bad commit for 30 s.
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = check.timeout.min(left.max(Duration::from_secs(1)));
            let seen = prober.probe(name, check, timeout);
            result.attempts += 1;
            result.status = seen.status;
            result.message = seen.message;
            result.output = seen.output;
            result.duration_ms = millis(started.elapsed());
        }
        let done = results
            .iter()
            .all(|r| !r.required || matches!(r.status, CheckStatus::Passed | CheckStatus::Skipped));
        if done || Instant::now() >= deadline || stop() {
            break;
        }
        // Sleep in small steps so a stop is seen soon.
        let wake = (Instant::now() + interval).min(deadline);
        while Instant::now() < wake && !stop() {
            std::thread::sleep(
                wake.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
    }
    results
}

/// The status the results give: every required check passed (or was
/// skipped) is healthy; otherwise pending while the window is open.
pub fn status_of(results: &[CheckResult], window_over: bool) -> HealthStatus {
    let ok = results
        .iter()
        .filter(|r| r.required)
        .all(|r| matches!(r.status, CheckStatus::Passed | CheckStatus::Skipped));
    if ok {
        HealthStatus::Healthy
    } else if window_over {
        HealthStatus::Unhealthy
    } else {
        HealthStatus::Pending
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------

/// What surrounds a finished window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Situation<'a> {
    /// The commit just judged (`None` for a directory source).
    pub commit: Option<&'a str>,
    /// The last commit whose checks passed.
    pub last_healthy: Option<&'a str>,
    /// This run applied `commit` for the first time since it was last
    /// healthy (not a run that only repaired drift on the same commit).
    pub new_commit: bool,
    /// The root is `/`, the source is Git, the run applied for real.
    pub can_roll_back: bool,
    pub on_failure: OnFailure,
}

/// What to do once the window is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every required check passed: `commit` is the last healthy one now.
    Healthy,
    /// Unhealthy, and left in place; the reason says why it is kept.
    KeepUnhealthy { reason: String },
    /// Converge `to`, undo what the bad commit created, check again.
    RollBack { to: String },
}

/// The pure decision: roll back only an unhealthy commit this run newly
/// applied, on a host that can roll back, when the branch wants it and a
/// different healthy commit is known.
pub fn decide(status: HealthStatus, s: &Situation) -> Decision {
    if status == HealthStatus::Healthy {
        return Decision::Healthy;
    }
    let keep = |reason: &str| Decision::KeepUnhealthy {
        reason: reason.into(),
    };
    if !s.can_roll_back || s.commit.is_none() {
        return keep("no rollback under --root or from a directory source");
    }
    if !s.new_commit {
        return keep(
            "the commit was already applied (a drift repair, or a run that changed nothing): nothing to roll back",
        );
    }
    if s.on_failure == OnFailure::Report {
        return keep("health.on_failure is report");
    }
    // Which commit to go back to is the pipeline's one decision.
    let Some(commit) = s.commit else {
        return keep("no rollback under --root or from a directory source");
    };
    let remembered = HostState {
        last_healthy: s.last_healthy.map(str::to_string),
        ..HostState::default()
    };
    let verdict = TipVerdict::Unhealthy(String::new());
    match choose_commit(commit, &verdict, &remembered) {
        CommitChoice::RollBack { to, .. } => Decision::RollBack { to },
        _ => keep("no earlier healthy commit to roll back to"),
    }
}

// ---------------------------------------------------------------------------
// Rollback and the pending decision
// ---------------------------------------------------------------------------

/// A file, directory or symlink a run created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedNode {
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    pub path: PathBuf,
}

/// What a run created: the nodes a rollback removes (when the healthy
/// commit does not declare them), and the rest it leaves ("package NAME").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<CreatedNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

/// What the changed resources of a run created: those whose presence went
/// from absent to present.
pub fn created_by(resources: &[Outcome]) -> Created {
    let mut created = Created::default();
    for o in resources.iter().filter(|o| o.status == Status::Changed) {
        let was_absent = o
            .drift
            .iter()
            .any(|d| d.attribute == Attribute::Presence && d.actual == "absent");
        if !was_absent {
            continue;
        }
        match o.kind {
            Kind::File | Kind::Directory | Kind::Symlink => created.nodes.push(CreatedNode {
                kind: o.kind.as_str().into(),
                path: PathBuf::from(&o.resource),
            }),
            other => created
                .left
                .push(format!("{} {}", other.as_str(), o.resource)),
        }
    }
    created
}

/// Removes what a bad commit created and `healthy` does not declare:
/// files and symlinks first, then directories deepest first, and only
/// empty ones (whatever else is in them was not put there by the commit).
/// A node that is no longer the kind created is left alone. Returns the
/// paths removed and the errors.
pub fn remove_created(
    root: &Path,
    nodes: &[CreatedNode],
    healthy: &DesiredState,
) -> (Vec<String>, Vec<String>) {
    use crate::safe_fs::{Entry, NodeKind};
    let declared = |p: &Path| {
        healthy.files.contains_key(p)
            || healthy.directories.contains_key(p)
            || healthy.symlinks.contains_key(p)
    };
    let mut order: Vec<&CreatedNode> = nodes.iter().filter(|n| !declared(&n.path)).collect();
    // Leaves before directories, deeper directories before their parents.
    order.sort_by_key(|n| {
        (
            n.kind == "directory",
            std::cmp::Reverse(n.path.components().count()),
        )
    });
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for n in order {
        let shown = n.path.display().to_string();
        let entry = match Entry::open(root, &n.path, false) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let stat = match entry.stat() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let result = match (n.kind.as_str(), stat.kind) {
            ("file", NodeKind::File) | ("symlink", NodeKind::Symlink) => entry.remove(),
            ("directory", NodeKind::Directory) => entry.remove_dir(),
            (kind, found) => {
                errors.push(format!(
                    "{shown}: created as a {kind}, now a {}: left in place",
                    found.as_str()
                ));
                continue;
            }
        };
        match result {
            Ok(()) => removed.push(shown),
            Err(e) => errors.push(format!("{shown}: {e}: left in place")),
        }
    }
    (removed, errors)
}

/// A health decision in progress, kept in `state.json` so an agent
/// restarted during the window finishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHealth {
    /// The commit being judged.
    pub commit: String,
    /// When the window ends, in seconds since the Unix epoch.
    pub deadline: u64,
    /// Whether the run applied the commit anew (see [`Situation`]).
    #[serde(default)]
    pub new_commit: bool,
    /// What the commit created, for the rollback.
    #[serde(default)]
    pub created: Created,
}

// ---------------------------------------------------------------------------
// The stage after a run
// ---------------------------------------------------------------------------

/// Converges a commit again (the last healthy one, on a rollback) and
/// hands back its report and rendered state.
pub type Converge<'a> = dyn FnMut(&str) -> (RunReport, Option<DesiredState>) + 'a;

/// Makes the prober for a window, given how long a service must stay up.
pub type MakeProber<'a> = dyn Fn(Duration) -> Box<dyn Prober> + 'a;

/// The health stage of one run: where it runs and what it may do.
pub struct Stage<'a> {
    pub root: &'a Path,
    /// Where `state.json` is saved when a window opens.
    pub state_dir: &'a Path,
    /// The source is Git and the root is `/`: a rollback is possible.
    pub can_roll_back: bool,
    /// Polled during the window: an agent told to stop leaves the
    /// decision pending in `state.json`.
    pub stop: &'a dyn Fn() -> bool,
    /// The run's control, whose run lock the window lets go of and takes
    /// back, so a `check` or `disable` meanwhile runs at once. `None`
    /// keeps whatever lock there is.
    pub lock: Option<&'a crate::agent::RunControl>,
}

impl Stage<'_> {
    /// Runs the branch's checks after `report`'s run and decides: healthy
    /// (the commit becomes `last_healthy`), unhealthy and kept (status
    /// `unhealthy`), or rolled back (the last healthy commit converged
    /// through `converge`, what the bad commit created removed, the healthy
    /// commit's checks run again; status `rolled_back`, the bad commit
    /// marked in `state`). Sets `report.health`.
    pub fn after_run(
        &self,
        report: &mut RunReport,
        desired: Option<&DesiredState>,
        state: &mut HostState,
        converge: &mut Converge<'_>,
    ) {
        let root = self.root.to_path_buf();
        let make = move |settle| Box::new(MachineProber::new(&root, settle)) as Box<dyn Prober>;
        self.after_run_with(report, desired, state, converge, &make);
    }

    /// [`Stage::after_run`] with the probers `make` builds.
    pub fn after_run_with(
        &self,
        report: &mut RunReport,
        desired: Option<&DesiredState>,
        state: &mut HostState,
        converge: &mut Converge<'_>,
        make: &MakeProber<'_>,
    ) {
        let commit = report.source.commit.clone();
        let applied = report.mode == Mode::Apply
            && !report.dry_run
            && matches!(
                report.status,
                RunStatus::Converged | RunStatus::InSync | RunStatus::Failed
            );
        if !applied {
            // A check during a window shows it open, and decides nothing.
            if let (Some(p), Some(c)) = (&state.pending_health, &commit)
                && p.commit == *c
            {
                report.health = Some(HealthReport {
                    status: HealthStatus::Pending,
                    commit: commit.clone(),
                    window_ms: 0,
                    duration_ms: 0,
                    checks: vec![],
                    rollback: None,
                    note: Some("the health window of this commit is still open".into()),
                });
            }
            return;
        }
        let Some(spec) = desired.and_then(|d| d.health.as_ref()) else {
            // Without checks, a commit that applied cleanly is healthy.
            if matches!(report.status, RunStatus::Converged | RunStatus::InSync) {
                state.last_healthy = commit.or(state.last_healthy.take());
            }
            state.pending_health = None;
            return;
        };
        let now_unix = unix_now();
        let pending = state
            .pending_health
            .take()
            .filter(|p| Some(&p.commit) == commit.as_ref());
        let resumed = pending.is_some();
        let pending_deadline = pending.as_ref().map(|p| p.deadline);
        // New: not the commit applied before this run (the pipeline records
        // this run's only after this stage), and not the last healthy one.
        // A commit kept in place unhealthy is not new on its next run.
        let new_commit = match &pending {
            Some(p) => p.new_commit,
            None => {
                commit.is_some() && state.last_healthy != commit && state.applied_commit != commit
            }
        };
        // A run that changed nothing on a known commit looks once; a new
        // commit or a repair gets the window (services need time).
        let full = new_commit || resumed || report.summary.changed > 0;
        let mut created = pending.map(|p| p.created).unwrap_or_default();
        if new_commit {
            let more = created_by(&report.resources);
            for n in more.nodes {
                if !created.nodes.contains(&n) {
                    created.nodes.push(n);
                }
            }
            for l in more.left {
                if !created.left.contains(&l) {
                    created.left.push(l);
                }
            }
        }
        let window_secs = spec.window.as_secs_f64().ceil() as u64;
        // A resumed window keeps its deadline (never longer than a whole
        // window from now, whatever the clock did meanwhile).
        let deadline_unix = if full {
            pending_deadline
                .unwrap_or(u64::MAX)
                .min(now_unix + window_secs)
        } else {
            now_unix
        };
        let deadline = Instant::now() + Duration::from_secs(deadline_unix.saturating_sub(now_unix));
        if full && let Some(c) = &commit {
            state.pending_health = Some(PendingHealth {
                commit: c.clone(),
                deadline: deadline_unix,
                new_commit,
                created: created.clone(),
            });
            if let Err(e) = state.save(self.state_dir) {
                warn!(error = %e, "could not save the pending health decision");
            }
        }
        info!(commit = commit.as_deref().unwrap_or(""), checks = spec.checks.len(), window = ?spec.window, "health checks");
        let settle = if full {
            settle_for(spec.window)
        } else {
            Duration::ZERO
        };
        let mut prober = make(settle);
        let started = Instant::now();
        // The wait does not hold the run lock; what `state.json` says is
        // read again once it is back.
        let released = full && self.lock.is_some_and(|c| c.release_lock());
        let checks = watch(
            &spec.checks,
            prober.as_mut(),
            deadline,
            PROBE_INTERVAL,
            self.stop,
        );
        if released && let Some(control) = self.lock {
            control.phase(crate::agent::Phase::Waiting);
            if let Err(e) = control.reacquire_lock() {
                warn!(error = %e, "could not take the run lock back after the health window; the decision stays pending");
                report.health = Some(HealthReport {
                    status: HealthStatus::Pending,
                    commit,
                    window_ms: millis(spec.window),
                    duration_ms: millis(started.elapsed()),
                    checks,
                    rollback: None,
                    note: Some(format!("the run lock was not taken back: {e}")),
                });
                return;
            }
            control.phase(crate::agent::Phase::Checking);
            match HostState::load(self.state_dir) {
                // Another run finished this decision meanwhile.
                Ok(disk) if disk.pending_health.as_ref().map(|p| &p.commit) != commit.as_ref() => {
                    *state = disk;
                    report.health = Some(HealthReport {
                        status: status_of(&checks, true),
                        commit,
                        window_ms: millis(spec.window),
                        duration_ms: millis(started.elapsed()),
                        checks,
                        rollback: None,
                        note: Some("another run decided during the window".into()),
                    });
                    return;
                }
                Ok(disk) => {
                    state.disabled = disk.disabled;
                    state.last_note = disk.last_note;
                }
                Err(e) => warn!(error = %e, "could not read state.json after the health window"),
            }
        }
        let over = !full || Instant::now() >= deadline;
        let status = status_of(&checks, over);
        let mut health = HealthReport {
            status,
            commit: commit.clone(),
            window_ms: if full { millis(spec.window) } else { 0 },
            duration_ms: millis(started.elapsed()),
            checks,
            rollback: None,
            note: None,
        };
        if status == HealthStatus::Pending {
            // Stopped during the window: the next run finishes it.
            report.health = Some(health);
            return;
        }
        state.pending_health = None;
        let situation = Situation {
            commit: commit.as_deref(),
            last_healthy: state.last_healthy.as_deref(),
            new_commit,
            can_roll_back: self.can_roll_back,
            on_failure: spec.on_failure,
        };
        // `trueup disable` during the window pauses the rollback too.
        let decision = match decide(status, &situation) {
            Decision::RollBack { .. } if state.disabled.is_some() => Decision::KeepUnhealthy {
                reason:
                    "convergence was paused (trueup disable) during the window: not rolled back"
                        .into(),
            },
            d => d,
        };
        match decision {
            Decision::Healthy => {
                info!(commit = commit.as_deref().unwrap_or(""), "healthy");
                state.last_healthy = commit.or(state.last_healthy.take());
            }
            Decision::KeepUnhealthy { reason } => {
                warn!(failed = %health.failed_required().join("; "), kept = %reason, "unhealthy");
                report.status = RunStatus::Unhealthy;
                health.note = Some(reason);
            }
            Decision::RollBack { to } => {
                let from = commit.unwrap_or_default();
                let why = health.failed_required().join("; ");
                warn!(commit = %from, to = %to, failed = %why, "unhealthy: rolling back to the last healthy commit");
                health.rollback = Some(self.roll_back(&from, &to, &created, converge, make));
                state.bad_commit = Some(crate::state::BadCommit {
                    commit: from,
                    reason: format!("rolled back: {why}"),
                    at: crate::report::rfc3339(std::time::SystemTime::now()),
                });
                state.applied_commit = Some(to.clone());
                state.last_healthy = Some(to);
                report.status = RunStatus::RolledBack;
            }
        }
        report.health = Some(health);
    }

    /// Converges `to`, removes what `from` created that `to` does not
    /// declare, and runs `to`'s checks.
    fn roll_back(
        &self,
        from: &str,
        to: &str,
        created: &Created,
        converge: &mut Converge<'_>,
        make: &MakeProber<'_>,
    ) -> RollbackReport {
        let (back, healthy) = converge(to);
        let mut rb = RollbackReport {
            from: from.to_string(),
            to: to.to_string(),
            removed: vec![],
            left: created.left.clone(),
            healthy_after: false,
            checks_after: vec![],
            errors: back.errors.clone(),
        };
        for o in back
            .resources
            .iter()
            .filter(|o| matches!(o.status, Status::Failed | Status::Skipped))
        {
            rb.errors.push(format!(
                "{} {}: {}",
                o.kind.as_str(),
                o.resource,
                o.error.as_deref().unwrap_or("skipped")
            ));
        }
        let Some(healthy) = healthy else {
            rb.errors.push(format!(
                "the healthy commit {to} did not render; nothing removed"
            ));
            return rb;
        };
        // A unit the bad commit added is stopped before its file goes, or
        // systemd would keep running (or restarting) it.
        let units = if self.root == Path::new("/") {
            units_to_stop(&created.nodes, &healthy)
        } else {
            vec![]
        };
        for unit in &units {
            if let Err(e) = systemctl(&["stop", "--", unit]) {
                rb.errors.push(format!("stopping {unit}: {e}"));
            }
        }
        let (removed, errors) = remove_created(self.root, &created.nodes, &healthy);
        for p in &removed {
            info!(path = %p, "removed: created by the rolled-back commit");
        }
        if !units.is_empty()
            && let Err(e) = systemctl(&["daemon-reload"])
        {
            rb.errors.push(format!("systemctl daemon-reload: {e}"));
        }
        rb.removed = removed;
        rb.errors.extend(errors);
        match &healthy.health {
            Some(spec) => {
                let mut prober = make(settle_for(spec.window));
                let after = watch(
                    &spec.checks,
                    prober.as_mut(),
                    Instant::now() + spec.window,
                    PROBE_INTERVAL,
                    self.stop,
                );
                rb.healthy_after = status_of(&after, true) == HealthStatus::Healthy;
                rb.checks_after = after;
            }
            None => {
                rb.healthy_after = matches!(back.status, RunStatus::Converged | RunStatus::InSync);
            }
        }
        rb
    }
}

/// The units whose files the bad commit created under a systemd unit
/// directory and the healthy commit does not declare.
fn units_to_stop(nodes: &[CreatedNode], healthy: &DesiredState) -> Vec<String> {
    const UNIT_DIRS: &[&str] = &[
        "/etc/systemd/system",
        "/run/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    const SUFFIXES: &[&str] = &[".service", ".socket", ".timer", ".path"];
    nodes
        .iter()
        .filter(|n| n.kind == "file" && !healthy.files.contains_key(&n.path))
        .filter(|n| {
            n.path
                .parent()
                .is_some_and(|p| UNIT_DIRS.iter().any(|d| p == Path::new(d)))
        })
        .filter_map(|n| n.path.file_name()?.to_str().map(str::to_string))
        .filter(|name| SUFFIXES.iter().any(|s| name.ends_with(s)) && !name.contains("@."))
        .collect()
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("systemctl");
    cmd.env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .arg("--no-ask-password")
        .args(args);
    crate::resource::tool::run(&mut cmd)
        .map(|_| ())
        .map_err(|e| crate::resource::tool::chain(&e))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(probe: Probe, required: bool) -> CheckSpec {
        CheckSpec {
            probe,
            required,
            timeout: Duration::from_secs(1),
        }
    }

    /// A prober that answers from a script per check: one answer per
    /// round, the last one repeated.
    struct Scripted(HashMap<String, Vec<bool>>, HashMap<String, usize>);

    impl Prober for Scripted {
        fn probe(&mut self, name: &str, _c: &CheckSpec, _t: Duration) -> Probed {
            let n = self.1.entry(name.into()).or_default();
            let script = &self.0[name];
            let ok = script[(*n).min(script.len() - 1)];
            *n += 1;
            if ok {
                Probed::passed("ok")
            } else {
                Probed::failed("no")
            }
        }
    }

    fn scripted(entries: &[(&str, &[bool])]) -> Scripted {
        Scripted(
            entries
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_vec()))
                .collect(),
            HashMap::new(),
        )
    }

    #[test]
    fn the_window_ends_early_when_every_required_check_passed() {
        let mut checks = BTreeMap::new();
        checks.insert("web".into(), check(Probe::Tcp("x:1".into()), true));
        checks.insert("extra".into(), check(Probe::Tcp("x:2".into()), false));
        let mut p = scripted(&[("web", &[false, true]), ("extra", &[false])]);
        let t = Instant::now();
        let r = watch(
            &checks,
            &mut p,
            t + Duration::from_secs(30),
            Duration::from_millis(10),
            &|| false,
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        let web = r.iter().find(|c| c.name == "web").unwrap();
        assert_eq!((web.status, web.attempts), (CheckStatus::Passed, 2));
        let extra = r.iter().find(|c| c.name == "extra").unwrap();
        assert_eq!(extra.status, CheckStatus::Failed);
        assert_eq!(status_of(&r, false), HealthStatus::Healthy);
    }

    #[test]
    fn a_required_check_failing_to_the_end_is_unhealthy() {
        let mut checks = BTreeMap::new();
        checks.insert("web".into(), check(Probe::Tcp("x:1".into()), true));
        let mut p = scripted(&[("web", &[false])]);
        let deadline = Instant::now() + Duration::from_millis(200);
        let r = watch(
            &checks,
            &mut p,
            deadline,
            Duration::from_millis(20),
            &|| false,
        );
        assert!(Instant::now() >= deadline);
        assert!(r[0].attempts >= 2, "{r:?}");
        assert_eq!(status_of(&r, true), HealthStatus::Unhealthy);
        assert_eq!(status_of(&r, false), HealthStatus::Pending);
    }

    fn situation<'a>(commit: &'a str, healthy: Option<&'a str>) -> Situation<'a> {
        Situation {
            commit: Some(commit),
            last_healthy: healthy,
            new_commit: true,
            can_roll_back: true,
            on_failure: OnFailure::Rollback,
        }
    }

    #[test]
    fn decide_rolls_back_an_unhealthy_new_commit_to_the_last_healthy_one() {
        let s = situation("b", Some("a"));
        assert_eq!(
            decide(HealthStatus::Unhealthy, &s),
            Decision::RollBack { to: "a".into() }
        );
        assert_eq!(decide(HealthStatus::Healthy, &s), Decision::Healthy);
    }

    #[test]
    fn decide_keeps_what_it_cannot_or_must_not_roll_back() {
        let keep = |s: &Situation| {
            matches!(
                decide(HealthStatus::Unhealthy, s),
                Decision::KeepUnhealthy { .. }
            )
        };
        // The first commit a host applies has nothing to go back to.
        assert!(keep(&situation("b", None)));
        // The last healthy commit is this one (its drift was repaired).
        assert!(keep(&situation("a", Some("a"))));
        assert!(keep(&Situation {
            new_commit: false,
            ..situation("b", Some("a"))
        }));
        assert!(keep(&Situation {
            on_failure: OnFailure::Report,
            ..situation("b", Some("a"))
        }));
        assert!(keep(&Situation {
            can_roll_back: false,
            ..situation("b", Some("a"))
        }));
        assert!(keep(&Situation {
            commit: None,
            ..situation("b", Some("a"))
        }));
    }

    /// A branch's state with one TCP check named `name` and a short window.
    fn with_check(name: &str) -> DesiredState {
        let mut d = DesiredState::default();
        let mut checks = BTreeMap::new();
        checks.insert(name.to_string(), check(Probe::Tcp("x:1".into()), true));
        d.health = Some(HealthSpec {
            window: Duration::from_millis(300),
            on_failure: OnFailure::Rollback,
            checks,
        });
        d
    }

    fn report_of(commit: &str, created: &[&str]) -> RunReport {
        let outcomes = created
            .iter()
            .map(|p| {
                serde_json::from_value::<Outcome>(serde_json::json!({
                    "kind": "file", "resource": p, "status": "changed",
                    "drift": [{ "attribute": "presence", "expected": "file", "actual": "absent" }]
                }))
                .unwrap()
            })
            .collect();
        RunReport::from_outcomes(
            "h",
            Mode::Apply,
            false,
            std::time::SystemTime::now(),
            crate::report::SourceInfo {
                commit: Some(commit.into()),
                ..Default::default()
            },
            outcomes,
        )
    }

    /// "bad" fails, every other check passes.
    fn probers(_settle: Duration) -> Box<dyn Prober> {
        struct P;
        impl Prober for P {
            fn probe(&mut self, name: &str, _c: &CheckSpec, _t: Duration) -> Probed {
                if name == "bad" {
                    Probed::failed("connection refused")
                } else {
                    Probed::passed("ok")
                }
            }
        }
        Box::new(P)
    }

    #[test]
    fn the_stage_rolls_back_an_unhealthy_new_commit() {
        let root = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("new.conf"), "from b").unwrap();
        let stage = Stage {
            root: root.path(),
            state_dir: state_dir.path(),
            can_roll_back: true,
            stop: &|| false,
            lock: None,
        };
        let mut state = HostState {
            applied_commit: Some("a".into()),
            last_healthy: Some("a".into()),
            ..HostState::default()
        };
        let mut report = report_of("b", &["/new.conf"]);
        let mut converged = vec![];
        stage.after_run_with(
            &mut report,
            Some(&with_check("bad")),
            &mut state,
            &mut |c| {
                converged.push(c.to_string());
                (report_of(c, &[]), Some(with_check("good")))
            },
            &probers,
        );
        assert_eq!(converged, vec!["a"]);
        assert_eq!(report.status, RunStatus::RolledBack);
        let h = report.health.as_ref().unwrap();
        assert_eq!(h.status, HealthStatus::Unhealthy);
        let rb = h.rollback.as_ref().unwrap();
        assert_eq!((rb.from.as_str(), rb.to.as_str()), ("b", "a"));
        assert_eq!(rb.removed, vec!["/new.conf"]);
        assert!(rb.healthy_after, "{rb:?}");
        assert!(!root.path().join("new.conf").exists());
        let bad = state.bad_commit.as_ref().unwrap();
        assert_eq!(bad.commit, "b");
        assert!(
            bad.reason.contains("bad (tcp x:1): connection refused"),
            "{bad:?}"
        );
        assert_eq!(state.applied_commit.as_deref(), Some("a"));
        assert_eq!(state.pending_health, None);
        assert!(
            report
                .headline()
                .contains("rolled back b to a: bad (tcp x:1)"),
            "{}",
            report.headline()
        );

        // The first commit a host applies has nothing to go back to.
        let mut state = HostState::default();
        let mut report = report_of("b", &[]);
        stage.after_run_with(
            &mut report,
            Some(&with_check("bad")),
            &mut state,
            &mut |_| panic!("nothing to converge"),
            &probers,
        );
        assert_eq!(report.status, RunStatus::Unhealthy);
        let note = report.health.unwrap().note.unwrap();
        assert!(note.contains("no earlier healthy"), "{note}");

        // Healthy: the commit becomes the last healthy one.
        let mut state = HostState::default();
        let mut report = report_of("c", &[]);
        stage.after_run_with(
            &mut report,
            Some(&with_check("good")),
            &mut state,
            &mut |_| panic!("nothing to converge"),
            &probers,
        );
        assert_eq!(report.status, RunStatus::InSync);
        assert_eq!(report.health.unwrap().status, HealthStatus::Healthy);
        assert_eq!(state.last_healthy.as_deref(), Some("c"));
    }

    #[test]
    fn a_restarted_agent_finishes_the_pending_decision() {
        let root = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("new.conf"), "from b").unwrap();
        let stage = Stage {
            root: root.path(),
            state_dir: state_dir.path(),
            can_roll_back: true,
            stop: &|| false,
            lock: None,
        };
        // The agent stopped during B's window; B is applied, and this run
        // found it in sync (it created nothing now).
        let mut state = HostState {
            applied_commit: Some("b".into()),
            last_healthy: Some("a".into()),
            pending_health: Some(PendingHealth {
                commit: "b".into(),
                deadline: unix_now().saturating_sub(1),
                new_commit: true,
                created: Created {
                    nodes: vec![CreatedNode {
                        kind: "file".into(),
                        path: "/new.conf".into(),
                    }],
                    left: vec!["package busybox".into()],
                },
            }),
            ..HostState::default()
        };
        let mut report = report_of("b", &[]);
        stage.after_run_with(
            &mut report,
            Some(&with_check("bad")),
            &mut state,
            &mut |c| (report_of(c, &[]), Some(with_check("good"))),
            &probers,
        );
        assert_eq!(report.status, RunStatus::RolledBack);
        let rb = report.health.unwrap().rollback.unwrap();
        assert_eq!(rb.removed, vec!["/new.conf"]);
        assert_eq!(rb.left, vec!["package busybox"]);
        assert_eq!(state.pending_health, None);

        // A check during the window shows it pending and decides nothing.
        let mut state = HostState {
            pending_health: Some(PendingHealth {
                commit: "b".into(),
                deadline: unix_now() + 60,
                new_commit: true,
                created: Created::default(),
            }),
            ..HostState::default()
        };
        let mut report = report_of("b", &[]);
        report.mode = Mode::Check;
        stage.after_run_with(
            &mut report,
            Some(&with_check("bad")),
            &mut state,
            &mut |_| panic!("a check converges nothing"),
            &probers,
        );
        assert_eq!(report.health.unwrap().status, HealthStatus::Pending);
        assert!(state.pending_health.is_some());
    }

    #[test]
    fn readers_map_words_they_do_not_know_to_unknown() {
        // A report from a newer agent: a run status, a health status and a
        // check status this version has never heard of.
        let text = r#"{"schema":1,"trueup_version":"9","host":"h","mode":"apply","dry_run":false,
            "started_at":"2026-01-01T00:00:00Z","duration_ms":0,"source":{"location":"x"},
            "status":"quarantined","summary":{"resources":0,"in_sync":0,"drift":0,"changed":0,"failed":0,"skipped":0},
            "resources":[],
            "health":{"status":"degraded","window_ms":1,"duration_ms":1,"checks":[
                {"name":"x","kind":"grpc","target":"t","required":true,"status":"flaky","duration_ms":0,"attempts":1,"message":"m"}]}}"#;
        let r: RunReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.status, RunStatus::Unknown);
        let h = r.health.unwrap();
        assert_eq!(h.status, HealthStatus::Unknown);
        assert_eq!(h.checks[0].status, CheckStatus::Unknown);
        assert_eq!(h.checks[0].kind, "grpc");
    }

    #[test]
    fn only_required_checks_decide() {
        let r = |required, status| CheckResult {
            name: "x".into(),
            kind: "tcp".into(),
            target: "x".into(),
            required,
            status,
            duration_ms: 0,
            attempts: 1,
            message: String::new(),
            output: None,
        };
        assert_eq!(
            status_of(&[r(false, CheckStatus::Failed)], true),
            HealthStatus::Healthy
        );
        assert_eq!(
            status_of(
                &[r(true, CheckStatus::Skipped), r(true, CheckStatus::Passed)],
                true
            ),
            HealthStatus::Healthy
        );
    }

    fn sample(active: &str, pid: u32, since: u64, restarts: u64) -> ServiceSample {
        ServiceSample {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: "running".into(),
            result: "success".into(),
            n_restarts: restarts,
            main_pid: pid,
            active_enter: since,
        }
    }

    #[test]
    fn a_service_passes_once_it_stayed_up_for_the_settle_time() {
        let mut w = ServiceWatch::default();
        let t = Instant::now();
        let settle = Duration::from_secs(2);
        assert_eq!(
            w.observe(sample("active", 10, 5, 0), t, settle).status,
            CheckStatus::Failed
        );
        let p = w.observe(
            sample("active", 10, 5, 0),
            t + Duration::from_secs(2),
            settle,
        );
        assert_eq!(p.status, CheckStatus::Passed, "{p:?}");
        // A single look (trueup health) needs no settle time.
        let mut w = ServiceWatch::default();
        assert_eq!(
            w.observe(sample("active", 10, 5, 0), t, Duration::ZERO)
                .status,
            CheckStatus::Passed
        );
    }

    #[test]
    fn a_crash_looping_service_fails_although_it_looks_active_between_restarts() {
        let mut w = ServiceWatch::default();
        let t = Instant::now();
        let settle = Duration::from_secs(1);
        w.observe(sample("active", 10, 5, 3), t, settle);
        // A new main process each time, and systemd counting restarts: even
        // a long-looking active spell after a restart does not pass.
        let p = w.observe(
            sample("active", 11, 6, 4),
            t + Duration::from_secs(1),
            settle,
        );
        assert_eq!(p.status, CheckStatus::Failed);
        assert!(p.message.contains("restarted 1 time by systemd"), "{p:?}");
        let p = w.observe(
            sample("active", 11, 6, 4),
            t + Duration::from_secs(9),
            settle,
        );
        assert_eq!(p.status, CheckStatus::Failed, "{p:?}");
        // A new main process without a counted restart resets the clock.
        let mut w = ServiceWatch::default();
        w.observe(sample("active", 10, 5, 0), t, settle);
        let p = w.observe(
            sample("active", 12, 7, 0),
            t + Duration::from_secs(1),
            settle,
        );
        assert_eq!(p.status, CheckStatus::Failed, "{p:?}");
        let p = w.observe(sample("activating", 0, 7, 0), t, settle);
        assert!(p.message.starts_with("activating"), "{p:?}");
    }

    #[test]
    fn parses_systemctl_show_captured_on_debian_12() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/systemctl/show-all.txt"
        ))
        .unwrap();
        let s = parse_service_show(&text).unwrap();
        assert_eq!(s.active_state, "active");
        assert_eq!(s.sub_state, "running");
        assert_eq!(s.load_state, "loaded");
        assert_eq!(s.main_pid, 119);
        assert_eq!(s.n_restarts, 0);
        assert_eq!(s.active_enter, 3688180764);
        assert!(parse_service_show("garbage\n").is_err());
    }

    #[test]
    fn tcp_and_http_probes_against_a_real_listener() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "502 Bad Gateway"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let body = "upstream says no";
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            // The tcp probe's connection.
            let _ = listener.accept().unwrap();
        });
        let url = format!("http://{addr}/healthz");
        let p = probe_http(&url, None, Duration::from_secs(5));
        assert_eq!(p.status, CheckStatus::Passed, "{p:?}");
        let p = probe_http(&url, None, Duration::from_secs(5));
        assert_eq!(p.status, CheckStatus::Failed, "{p:?}");
        assert_eq!(p.message, "HTTP 502, expected 2xx");
        assert_eq!(p.output.as_deref(), Some("upstream says no"));
        assert_eq!(
            probe_tcp(&addr.to_string(), Duration::from_secs(5)).status,
            CheckStatus::Passed
        );
        server.join().unwrap();
        // Nothing listens there any more.
        let p = probe_tcp(&addr.to_string(), Duration::from_secs(5));
        assert!(p.message.contains("connection refused"), "{p:?}");
        let p = probe_http(&url, Some(200), Duration::from_secs(5));
        assert_eq!(p.message, "connection refused", "{p:?}");
    }

    #[test]
    fn command_probe_keeps_the_output_tail_and_kills_at_the_timeout() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let p = probe_command(&sh("echo fine"), Duration::from_secs(5));
        assert_eq!(p.status, CheckStatus::Passed);
        let p = probe_command(&sh("echo not ready >&2; exit 3"), Duration::from_secs(5));
        assert_eq!(p.message, "exit status 3");
        assert_eq!(p.output.as_deref(), Some("not ready\n"));
        let t = Instant::now();
        let p = probe_command(&sh("echo waiting; sleep 30"), Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(p.message.starts_with("timed out"), "{p:?}");
        assert_eq!(p.output.as_deref(), Some("waiting\n"));
        let p = probe_command(&["/nonexistent/probe".to_string()], Duration::from_secs(1));
        assert!(p.message.contains("/nonexistent/probe"), "{p:?}");
    }

    #[test]
    fn created_by_names_new_nodes_and_what_a_rollback_leaves() {
        // Built from JSON, as a report holds them.
        let o = |kind: &str,
                 name: &str,
                 status: &str,
                 attribute: &str,
                 expected: &str,
                 actual: &str| {
            serde_json::from_value::<Outcome>(serde_json::json!({
                "kind": kind, "resource": name, "status": status,
                "drift": [{ "attribute": attribute, "expected": expected, "actual": actual }]
            }))
            .unwrap()
        };
        let outcomes = vec![
            o(
                "file",
                "/etc/new.conf",
                "changed",
                "presence",
                "file",
                "absent",
            ),
            o("file", "/etc/changed.conf", "changed", "content", "x", "y"),
            o(
                "directory",
                "/srv/new",
                "changed",
                "presence",
                "directory",
                "absent",
            ),
            o(
                "package",
                "busybox",
                "changed",
                "presence",
                "installed",
                "absent",
            ),
            o(
                "file",
                "/etc/failed.conf",
                "failed",
                "presence",
                "file",
                "absent",
            ),
        ];
        let c = created_by(&outcomes);
        let paths: Vec<_> = c
            .nodes
            .iter()
            .map(|n| n.path.display().to_string())
            .collect();
        assert_eq!(paths, vec!["/etc/new.conf", "/srv/new"]);
        assert_eq!(c.left, vec!["package busybox"]);
    }

    #[test]
    fn remove_created_removes_only_what_the_healthy_commit_does_not_declare() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("srv/new/sub")).unwrap();
        std::fs::write(r.join("srv/new/sub/a"), "a").unwrap();
        std::fs::write(r.join("etc-keep"), "k").unwrap();
        std::fs::create_dir_all(r.join("srv/busy")).unwrap();
        std::fs::write(r.join("srv/busy/other"), "not ours").unwrap();
        std::os::unix::fs::symlink("/nowhere", r.join("link")).unwrap();
        let node = |kind: &str, p: &str| CreatedNode {
            kind: kind.into(),
            path: PathBuf::from(p),
        };
        let nodes = vec![
            node("directory", "/srv/new"),
            node("directory", "/srv/new/sub"),
            node("file", "/srv/new/sub/a"),
            node("file", "/etc-keep"),
            node("directory", "/srv/busy"),
            node("symlink", "/link"),
            node("file", "/gone-already"),
        ];
        let mut healthy = DesiredState::default();
        // The healthy commit declares it (as a directory here: any kind
        // counts), so it stays.
        healthy.directories.insert(
            PathBuf::from("/etc-keep"),
            crate::desired::DirectorySpec {
                present: true,
                owner: None,
                group: None,
                mode: None,
            },
        );
        let (removed, errors) = remove_created(r, &nodes, &healthy);
        assert_eq!(
            removed,
            vec!["/srv/new/sub/a", "/link", "/srv/new/sub", "/srv/new"]
        );
        assert!(!r.join("srv/new").exists());
        assert!(r.join("etc-keep").exists());
        assert!(r.join("srv/busy/other").exists());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("srv/busy"), "{errors:?}");
    }
}
