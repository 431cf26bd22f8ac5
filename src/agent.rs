//! `trueup agent`: the daemon, a small state machine on tokio.
//!
//! ```text
//!        ┌──────── interval (+ splay once) / SIGHUP ────────┐
//!        ▼                                                   │
//!  idle ──► running (fetching → rendering → converging → reporting) ──► idle
//!   │                     │ SIGTERM: finish the change in hand,
//!   └── SIGTERM ──► stopping ◄─┘        write the report, exit 0
//! ```
//!
//! A run is blocking work (git2, file I/O, package managers) and goes to
//! `spawn_blocking`; the loop keeps answering signals and systemd meanwhile.
//! The watchdog is fed from the loop only while the run in hand makes
//! progress, so a hung run trips it. Failures back off exponentially, up to
//! the interval.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::report::{RunReport, RunStatus};

pub mod machine;
use machine::{Action, Event, RunOutcome};

/// First wait after a failed run; doubled per failure, capped at the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// The phase a run is in, as sd-notify `STATUS=` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Fetching,
    Rendering,
    Converging,
    /// The health window after a change.
    Checking,
    Reporting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting for the run lock",
            Phase::Fetching => "fetching",
            Phase::Rendering => "rendering",
            Phase::Converging => "converging",
            Phase::Checking => "checking health",
            Phase::Reporting => "reporting",
        }
    }
}

/// Handed to a run: whether to stop, and where to say how far it got.
#[derive(Clone)]
pub struct RunControl {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    /// The run lock this run holds, so the health window can let go of it
    /// (a `check` or `disable` during the window runs at once).
    lock: Arc<Mutex<RunLock>>,
}

/// The run lock as a run holds it.
#[derive(Default)]
struct RunLock {
    path: PathBuf,
    timeout: Duration,
    held: Option<crate::lock::Held>,
}

impl RunControl {
    /// A control that never stops and reports nowhere (one-shot commands).
    pub fn detached() -> RunControl {
        RunControl {
            stop: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::new()),
            lock: Arc::default(),
        }
    }

    /// Keeps the run lock, taken from `path`, for this run.
    pub fn hold_lock(&self, path: &std::path::Path, timeout: Duration, held: crate::lock::Held) {
        if let Ok(mut l) = self.lock.lock() {
            *l = RunLock {
                path: path.to_path_buf(),
                timeout,
                held: Some(held),
            };
        }
    }

    /// Lets go of the run lock; true when it was held.
    pub fn release_lock(&self) -> bool {
        self.lock
            .lock()
            .map(|mut l| l.held.take().is_some())
            .unwrap_or(false)
    }

    /// Takes the run lock again after `release_lock`.
    pub fn reacquire_lock(&self) -> Result<(), crate::lock::LockError> {
        let (path, timeout) = match self.lock.lock() {
            Ok(l) => (l.path.clone(), l.timeout),
            Err(_) => return Ok(()),
        };
        let held = crate::lock::acquire(&path, timeout, &|| self.should_stop())?;
        if let Ok(mut l) = self.lock.lock() {
            l.held = Some(held);
        }
        Ok(())
    }

    /// Polled between resource changes: true once SIGTERM arrived. Each
    /// poll also counts as progress for the watchdog.
    pub fn should_stop(&self) -> bool {
        self.progress.touch();
        self.stop.load(Ordering::SeqCst)
    }

    /// Counts as progress for the watchdog (a tool printing output).
    pub fn touch(&self) {
        self.progress.touch();
    }

    /// Enters a phase, and tells systemd.
    pub fn phase(&self, phase: Phase) {
        self.progress.touch();
        if let Ok(mut p) = self.progress.phase.lock() {
            *p = phase;
        }
        let _ = sd_notify::notify(&[NotifyState::Status(phase.as_str())]);
    }
}

/// When the run in hand last made progress.
struct Progress {
    origin: Instant,
    last_ms: AtomicU64,
    phase: Mutex<Phase>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            phase: Mutex::new(Phase::Waiting),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::SeqCst);
    }

    fn since_last(&self) -> Duration {
        let now = self.origin.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

/// One run: fetch, render, converge, report. Called on a blocking thread.
pub type Runner = Arc<dyn Fn(&RunControl) -> Result<RunReport> + Send + Sync>;

/// How the daemon is scheduled and where it keeps its files.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub interval: Duration,
    pub splay: Duration,
    pub machine_id: String,
    /// The agent's presence file (`status` tells from it whether we run).
    pub pid_file: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: Option<PathBuf>,
}

/// This host's offset within the splay: stable (a hash of the machine id)
/// plus a small random part (up to a tenth of the splay) so hosts cloned
/// with the same machine id still spread.
pub fn splay_offset(machine_id: &str, splay: Duration) -> Duration {
    if splay.is_zero() {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(machine_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let span = u64::try_from(splay.as_millis()).unwrap_or(u64::MAX).max(1);
    let stable = u64::from_be_bytes(first) % span;
    let random = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    } % (span / 10).max(1);
    Duration::from_millis((stable + random) % span)
}

/// A random fraction in [0, 1), for jitter: not for anything secret.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits make every f64 in [0, 1) equally likely.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The next wait after a failure.
pub fn next_backoff(previous: Option<Duration>, interval: Duration) -> Duration {
    let next = match previous {
        None => FIRST_BACKOFF,
        Some(d) => d.saturating_mul(2),
    };
    next.min(interval)
}

/// The agent stopped because its configuration cannot work: `main` exits
/// 78 (EX_CONFIG) for it, which systemd does not restart.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct Misconfigured(pub String);

/// How a failed run is scheduled, from the class of its error (reports
/// without one are taken as transient: a retry soon is the safe default).
fn outcome(result: &Result<RunReport>, failure: Option<&String>) -> RunOutcome {
    use crate::error_class::ErrorClass;
    if failure.is_none() {
        return RunOutcome::Succeeded;
    }
    match result.as_ref().ok().and_then(|r| r.error_class) {
        Some(ErrorClass::Configuration) => RunOutcome::Misconfigured,
        Some(ErrorClass::Permanent) => RunOutcome::Blocked,
        Some(ErrorClass::Transient) | None => RunOutcome::Failed,
    }
}

/// Whether a run's result counts as a failure for the backoff, and why:
/// an error that stopped the run, or resources that failed for a reason
/// that passes (another apt held the dpkg lock, the mirror was down).
/// A run whose resources all failed for good waits for the next interval
/// like a success: retrying soon would fail them the same way.
fn failed(result: &Result<RunReport>) -> Option<String> {
    use crate::apply::Status;
    use crate::error_class::ErrorClass;
    match result {
        Err(e) => Some(format!("{e:#}")),
        Ok(r) if r.status == RunStatus::Error => Some(
            r.errors
                .first()
                .cloned()
                .unwrap_or_else(|| "the run failed".into()),
        ),
        Ok(r) if r.status == RunStatus::Failed && r.error_class == Some(ErrorClass::Transient) => {
            Some(
                r.resources
                    .iter()
                    .find(|o| {
                        o.status == Status::Failed && o.error_class == Some(ErrorClass::Transient)
                    })
                    .map(|o| {
                        format!(
                            "{} {}: {}",
                            o.kind.as_str(),
                            o.resource,
                            o.error.as_deref().unwrap_or("failed")
                        )
                    })
                    .unwrap_or_else(|| "a resource failed".into()),
            )
        }
        Ok(_) => None,
    }
}

fn idle_status(last: &Option<(RunReport, Instant)>) -> String {
    match last {
        None => "idle, no run yet".into(),
        Some((r, at)) => {
            let commit = r
                .source
                .commit
                .as_deref()
                .map(|c| format!(" {}", crate::report::short_id(c, 7)))
                .unwrap_or_default();
            let s = &r.summary;
            // "healthy", "unhealthy", or where a rollback went.
            let health = match &r.health {
                Some(h) => match &h.rollback {
                    Some(rb) => format!(", back on {}", crate::report::short_id(&rb.to, 7)),
                    None => format!(", {}", h.status.as_str()),
                },
                None => String::new(),
            };
            // A newer commit kept out: rolled back, or not rendering.
            let kept = r
                .source
                .rejected
                .as_ref()
                .map(|j| {
                    let why = if j.reason.starts_with("rolled back") {
                        "rolled back"
                    } else {
                        "does not render"
                    };
                    format!(", {} {why}", crate::report::short_id(&j.commit, 7))
                })
                .unwrap_or_default();
            format!(
                "{}{commit}, {} drift{health}{kept}, {}s ago",
                r.status.as_str(),
                s.drift + s.changed + s.failed + s.skipped,
                at.elapsed().as_secs()
            )
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "could not notify systemd");
    }
}

/// Hands the pages a finished run freed back to the system. glibc keeps
/// freed memory for reuse, and a run's allocations (the parsed branch, the
/// rendered files, every observation) would otherwise stay resident in an
/// idle agent until the next run.
///
/// Then it unmaps the pages of program code a run touched (trueup's own and
/// the shared libraries'): they are clean copies of files in the page
/// cache, counted in the agent's RSS while it sleeps, and the next run maps
/// again the few it needs. The page cache keeps them; nothing is read back
/// from disk unless memory pressure dropped them anyway.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns the allocator's own free pages.
    unsafe {
        libc::malloc_trim(0);
    }
    unmap_code_pages();
}

/// `MADV_DONTNEED` on every executable, non-writable mapping of a file
/// that holds no page of its own (`Anonymous: 0 kB`, so no text relocated
/// or patched in place): for such a private mapping it only drops this
/// process's page table entries, and the next access maps the page
/// cache's copy again. Data and RELRO mappings are not executable and are
/// never touched, so no content can be lost.
fn unmap_code_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut code: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // A mapping's header: range, perms, offset, device, inode, path.
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            code = (perms == "r-xp" && path.starts_with('/')).then_some((start, end));
        } else if first == "Anonymous:"
            && let Some((start, end)) = code.take()
            && fields.next() == Some("0")
        {
            // SAFETY: a read-only, executable private file mapping with no
            // anonymous page holds no data of its own (see above).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Returns Ok for a clean stop.
pub async fn run(opts: AgentOptions, runner: Runner) -> Result<()> {
    let _presence = crate::lock::acquire(&opts.pid_file, Duration::ZERO, &|| false)
        .context("another trueup agent is already running")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let watchdog = sd_notify::watchdog_enabled();
    // Feed the watchdog at half its timeout; tick slowly when there is none.
    let tick_every = watchdog
        .map(|d| (d / 2).max(Duration::from_millis(10)))
        .unwrap_or(Duration::from_secs(10));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let offset = splay_offset(&opts.machine_id, opts.splay);
    info!(interval = ?opts.interval, splay_offset = ?offset, "agent started");
    notify(&[NotifyState::Ready, NotifyState::Status("starting")]);

    let stop = Arc::new(AtomicBool::new(false));
    let schedule = |jitter: f64| machine::Schedule {
        interval: opts.interval,
        splay: opts.splay,
        splay_offset: offset,
        first_backoff: FIRST_BACKOFF,
        jitter,
    };
    let mut m = machine::Machine::default();
    let mut next_run =
        tokio::time::Instant::now() + machine::first_wait(&schedule(random_fraction()));
    let mut last: Option<(RunReport, Instant)> = None;

    'daemon: loop {
        // Idle until the next run is due, a SIGHUP, or a stop.
        let event = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_run) => break Event::Due,
                _ = hup.recv() => { info!("SIGHUP: running now"); break Event::Hangup }
                _ = term.recv() => break Event::Terminate,
                _ = int.recv() => break Event::Terminate,
                _ = tick.tick() => {
                    if watchdog.is_some() { notify(&[NotifyState::Watchdog]); }
                    notify(&[NotifyState::Status(&idle_status(&last))]);
                }
            }
        };
        let action;
        (m, action) = machine::transition(m, event, &schedule(0.0));
        if action != Action::StartRun {
            break 'daemon;
        }

        let started = tokio::time::Instant::now();
        let control = RunControl {
            stop: stop.clone(),
            progress: Arc::new(Progress::new()),
            lock: Arc::default(),
        };
        control.progress.touch();
        let job = {
            let control = control.clone();
            let runner = runner.clone();
            tokio::task::spawn_blocking(move || runner(&control))
        };
        tokio::pin!(job);
        let result = loop {
            let event = tokio::select! {
                r = &mut job => break r,
                _ = term.recv() => Event::Terminate,
                _ = int.recv() => Event::Terminate,
                _ = hup.recv() => Event::Hangup,
                _ = tick.tick() => {
                    // A run that makes no progress for a whole watchdog period is
                    // hung: stop feeding the watchdog and let systemd act.
                    if let Some(limit) = watchdog && control.progress.since_last() < limit {
                        notify(&[NotifyState::Watchdog]);
                    }
                    continue;
                }
            };
            let action;
            (m, action) = machine::transition(m, event, &schedule(0.0));
            if action == Action::StopRun {
                info!("SIGTERM: finishing the change in hand");
                stop.store(true, Ordering::SeqCst);
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status("stopping after the change in hand"),
                ]);
            }
        };
        let result = result.unwrap_or_else(|e| Err(anyhow::anyhow!("the run panicked: {e}")));
        release_free_memory();
        let failure = failed(&result);
        if let Ok(report) = &result {
            if let Some(path) = &opts.metrics
                && let Err(e) = crate::report::metrics::write(path, report, SystemTime::now())
            {
                warn!(error = %e, path = %path.display(), "could not write metrics");
            }
            info!(
                status = report.status.as_str(),
                commit = report.source.commit.as_deref().unwrap_or(""),
                drift = report.summary.drift,
                changed = report.summary.changed,
                failed = report.summary.failed,
                "run finished"
            );
            last = Some((report.clone(), Instant::now()));
        }
        notify(&[NotifyState::Status(&idle_status(&last))]);
        let outcome = outcome(&result, failure.as_ref());
        let action;
        (m, action) =
            machine::transition(m, Event::Finished(outcome), &schedule(random_fraction()));
        match action {
            Action::Wait(wait) => {
                if let Some(cause) = &failure {
                    if outcome == RunOutcome::Blocked {
                        // Retrying soon cannot help: a push or a person must.
                        warn!(error = %cause, class = "permanent", next_in = ?wait, "run failed, not retried before the next interval");
                    } else {
                        // retry_in is the backoff proper; jitter comes on top.
                        let retry_in = m.backoff.unwrap_or_default();
                        warn!(error = %cause, retry_in = ?retry_in, jitter = ?wait.saturating_sub(retry_in), "run failed");
                    }
                }
                next_run = tokio::time::Instant::now() + wait;
            }
            Action::WaitFromStart(wait) => next_run = started + wait,
            Action::ExitMisconfigured => {
                let cause = failure.unwrap_or_default();
                error!(error = %cause, "configuration error: the agent stops (exit 78)");
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status(&format!("configuration error: {cause}")),
                ]);
                return Err(Misconfigured(cause).into());
            }
            Action::Exit | Action::None | Action::StartRun | Action::StopRun => break 'daemon,
        }
    }
    notify(&[NotifyState::Stopping]);
    info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Other tests in this process fault code pages in while this one
    /// measures, so the measurement runs in a child test process that runs
    /// this test alone.
    #[test]
    fn code_pages_are_unmapped_between_runs_and_mapped_again_when_run() {
        const CHILD: &str = "TRUEUP_TEST_CODE_PAGES_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name =
                "agent::tests::code_pages_are_unmapped_between_runs_and_mapped_again_when_run";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "the child ran no test: {text}");
            return;
        }
        // Some code mapped first.
        let _ = serde_json::to_string(&serde_json::json!({ "a": [1, 2, 3] })).unwrap();
        let before = rss_file_kb();
        unmap_code_pages();
        let after = rss_file_kb();
        assert!(
            after < before,
            "file-backed RSS {before} kB before, {after} kB after"
        );
        // Code runs on after it: its pages come back from the page cache.
        let v: serde_json::Value = serde_json::from_str("{\"b\": [4, 5]}").unwrap();
        assert_eq!(v["b"][1], 5);
    }

    /// How the agent reads a finished run: a resource that failed because
    /// another apt held the dpkg lock backs off and retries soon; resources
    /// that all failed for good wait for the interval, as after a success.
    #[test]
    fn a_failed_run_backs_off_when_a_resource_failure_is_transient() {
        use crate::apply::{Outcome, Status};
        use crate::error_class::ErrorClass;
        use crate::report::{Mode, SourceInfo};
        use crate::resource::Kind;
        let lock = "`apt-get install -y hello` failed (exit status 100): E: Could not get \
                    lock /var/lib/dpkg/lock-frontend. It is held by process 4711";
        let run_with = |class| {
            let mut hello = Outcome::in_sync(Kind::Package, "hello".into());
            hello.status = Status::Failed;
            hello.error = Some(lock.into());
            hello.error_class = Some(class);
            let mut curl = Outcome::in_sync(Kind::Package, "curl".into());
            curl.status = Status::Failed;
            curl.error = Some("package curl is not in any apt source".into());
            curl.error_class = Some(ErrorClass::Permanent);
            Ok(RunReport::from_outcomes(
                "h",
                Mode::Apply,
                false,
                SystemTime::now(),
                SourceInfo::default(),
                vec![curl, hello],
            ))
        };
        let s = machine::Schedule {
            interval: Duration::from_secs(300),
            splay: Duration::ZERO,
            splay_offset: Duration::ZERO,
            first_backoff: FIRST_BACKOFF,
            jitter: 0.0,
        };
        let running = machine::Machine {
            state: machine::State::Running { again: false },
            backoff: None,
            first: false,
        };

        let transient = run_with(ErrorClass::Transient);
        let why = failed(&transient);
        assert_eq!(why, Some(format!("package hello: {lock}")));
        let o = outcome(&transient, why.as_ref());
        assert_eq!(o, RunOutcome::Failed);
        let (m, a) = machine::transition(running, Event::Finished(o), &s);
        assert_eq!(a, Action::Wait(FIRST_BACKOFF));
        assert_eq!(m.backoff, Some(FIRST_BACKOFF));

        let permanent = run_with(ErrorClass::Permanent);
        let why = failed(&permanent);
        assert_eq!(why, None);
        let o = outcome(&permanent, why.as_ref());
        assert_eq!(o, RunOutcome::Succeeded);
        let (m, a) = machine::transition(running, Event::Finished(o), &s);
        assert_eq!(a, Action::WaitFromStart(s.interval));
        assert_eq!(m.backoff, None);
    }

    #[test]
    fn splay_is_stable_per_machine_and_within_bounds() {
        let splay = Duration::from_secs(30);
        let a: Vec<_> = (0..20).map(|_| splay_offset("machine-a", splay)).collect();
        assert!(a.iter().all(|d| *d < splay));
        // Only the random tenth varies.
        let min = a.iter().min().unwrap();
        let max = a.iter().max().unwrap();
        assert!(
            *max - *min <= splay / 10 || *max - *min >= splay - splay / 10,
            "{a:?}"
        );
        assert_eq!(splay_offset("x", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let i = Duration::from_secs(20);
        let mut b = None;
        let mut seen = vec![];
        for _ in 0..6 {
            let n = next_backoff(b, i);
            seen.push(n.as_secs());
            b = Some(n);
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 20, 20]);
    }
}
