//! The one process runner. The tools trueup drives (`apt-get`,
//! `apt-cache`, `dnf`, `rpm`, `systemctl`, the account tools, `ssh-keygen`
//! and `gpgv` for commit signatures) go through [`run`] or [`output`]: one
//! place that checks the exit status and puts the tool's own words (the
//! tail of its stderr) into the error. The commands a branch declares
//! (`commands:`, `validate:`, health command checks) go through
//! [`run_limited`], under the time limit the branch gives them.
//!
//! Liveness: a tool that prints nothing for its kind's timeout is taken
//! as hung, killed, and reported; every chunk of output it prints counts
//! as progress (it resets the timeout and feeds the agent's watchdog
//! through [`set_progress`]). So a slow `apt-get upgrade` that keeps
//! printing is never killed, and a hung one is. While a tool is inside
//! its timeout the run counts as alive for the watchdog too: the timeout
//! decides when a tool is hung (and reports it), so systemd does not kill
//! the agent mid-dpkg when `timeouts.packages` is longer than
//! `WatchdogSec=`.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of a failing tool's output an error keeps.
const MAX_ERROR_LINES: usize = 12;

/// Why a tool run failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` printed nothing for {}s and was killed (hung?): {output}", .after.as_secs())]
    TimedOut {
        command: String,
        after: Duration,
        /// The tail of what it printed before.
        output: String,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        /// The tail of stderr, or of stdout when stderr is empty.
        output: String,
    },
}

/// Called for each chunk of output a tool prints: the run's progress.
type ProgressHook = Arc<dyn Fn() + Send + Sync>;

static PROGRESS: Mutex<Option<ProgressHook>> = Mutex::new(None);
static TIMEOUTS: Mutex<Option<Timeouts>> = Mutex::new(None);

/// How long a tool may stay silent before it is taken as hung, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// apt-get, dnf (downloads and maintainer scripts can be slow).
    pub packages: Duration,
    /// Everything else: dpkg-query, rpm, systemctl, account tools.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            packages: Duration::from_secs(30 * 60),
            other: Duration::from_secs(5 * 60),
        }
    }
}

/// Sets the process-wide timeouts (from the agent configuration).
pub fn set_timeouts(t: Timeouts) {
    if let Ok(mut slot) = TIMEOUTS.lock() {
        *slot = Some(t);
    }
}

/// Where tools report progress: the run in hand sets it (the agent feeds
/// its watchdog from it), `None` clears it.
pub fn set_progress(hook: Option<ProgressHook>) {
    if let Ok(mut slot) = PROGRESS.lock() {
        *slot = hook;
    }
}

/// Counts as progress of the run in hand (the agent's watchdog): called
/// for a tool's output, and for bytes a Git transfer moved.
pub fn progress() {
    let hook = PROGRESS.lock().ok().and_then(|h| h.clone());
    if let Some(hook) = hook {
        hook();
    }
}

/// A tool still inside its time limit keeps the run alive for the
/// agent's watchdog, once a second: the limit, not systemd, ends a hung
/// tool (killed and reported), so the watchdog never kills the agent in
/// the middle of dpkg because a package's script was quiet for longer
/// than `WatchdogSec=` but shorter than `timeouts.packages`. The watchdog
/// still catches trueup itself hanging anywhere else.
struct Alive(Instant);

impl Alive {
    fn new() -> Alive {
        Alive(Instant::now())
    }

    fn tick(&mut self) {
        if self.0.elapsed() >= Duration::from_secs(1) {
            self.0 = Instant::now();
            progress();
        }
    }
}

/// The silence allowed to `cmd`, by what it is.
fn timeout_for(cmd: &Command) -> Duration {
    let t = TIMEOUTS.lock().ok().and_then(|t| *t).unwrap_or_default();
    let program = cmd.get_program().to_string_lossy();
    let name = program.rsplit('/').next().unwrap_or("");
    if matches!(name, "apt-get" | "dnf" | "yum") {
        t.packages
    } else {
        t.other
    }
}

/// Runs `cmd` to completion, stdin from /dev/null; returns its output when
/// it exits 0. Killed (and an error) when silent longer than its kind's
/// timeout.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let timeout = timeout_for(cmd);
    run_with_timeout(cmd, timeout)
}

/// [`run`] with an explicit silence timeout.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, ToolError> {
    let out = execute(cmd, None, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(cmd, &out))
    }
}

/// Runs `cmd` with `input` on its stdin (or /dev/null), under its kind's
/// silence timeout, and returns its output whatever its exit status: for
/// tools whose status the caller reads itself (`ssh-keygen -Y verify`,
/// `gpgv`). Errors only when it cannot start or is killed as hung.
pub fn output(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, ToolError> {
    let timeout = timeout_for(cmd);
    execute(cmd, input, timeout)
}

/// Spawns `cmd` in its own process group, feeds `input`, collects its
/// output while counting each chunk as progress, and kills the group when
/// it stays silent for `timeout`.
fn execute(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, ToolError> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    // Its own process group, so a hung tool is killed with its children
    // (dpkg under apt-get), which would otherwise keep the pipes open.
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    // Written from a thread so a tool that prints before it reads cannot
    // block on a full pipe; one that exits early closes it (its status
    // says why).
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let last_output = Arc::new(Mutex::new(Instant::now()));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let last = last_output.clone();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let Some(mut pipe) = pipe else {
                return all;
            };
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        if let Ok(mut t) = last.lock() {
                            *t = Instant::now();
                        }
                        progress();
                    }
                }
            }
            all
        })
    };
    let out_thread = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_thread = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let mut timed_out = false;
    let mut alive = Alive::new();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(ToolError::Spawn {
                    program: cmd.get_program().to_string_lossy().into_owned(),
                    source,
                });
            }
        }
        let silent = last_output.lock().map(|t| t.elapsed()).unwrap_or_default();
        if silent >= timeout {
            timed_out = true;
            kill_group(&mut child);
        } else {
            alive.tick();
        }
        std::thread::sleep(Duration::from_millis(20).min(timeout / 4 + Duration::from_millis(1)));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let out = Output {
        status,
        stdout,
        stderr,
    };
    if timed_out {
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        return Err(ToolError::TimedOut {
            command: describe(cmd),
            after: timeout,
            output: tail(&text, MAX_ERROR_LINES),
        });
    }
    Ok(out)
}

/// How a command run under a total time limit ([`run_limited`]) ended.
pub struct Limited {
    /// Its exit status; `None` when it was killed at the limit.
    pub status: Option<std::process::ExitStatus>,
    /// stdout and stderr together, in the order written (one file, so a
    /// chatty command never blocks on a full pipe); callers read its tail.
    pub output: std::fs::File,
}

/// Runs `cmd` (stdin from /dev/null, in its own process group) for at
/// most `limit` in all, killing the group then: for the commands a branch
/// declares (`commands:`, `validate:`, health checks), whose time limit the
/// branch sets. Output counts as progress for the watchdog, as with
/// [`run`]. Errors only when it cannot start.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Result<Limited, ToolError> {
    use std::os::unix::process::CommandExt;
    let spawn_error = |cmd: &Command, source| ToolError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    };
    let out = tempfile::tempfile().map_err(|e| spawn_error(cmd, e))?;
    let (o1, o2) = (
        out.try_clone().map_err(|e| spawn_error(cmd, e))?,
        out.try_clone().map_err(|e| spawn_error(cmd, e))?,
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(o1)
        .stderr(o2)
        .process_group(0)
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    let deadline = Instant::now() + limit;
    let mut written = 0;
    let mut alive = Alive::new();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => {}
            Err(e) => return Err(spawn_error(cmd, e)),
        }
        let now = out.metadata().map(|m| m.len()).unwrap_or(written);
        if now > written {
            written = now;
            progress();
        }
        alive.tick();
        std::thread::sleep(Duration::from_millis(20).min(limit / 4 + Duration::from_millis(1)));
    };
    if status.is_none() {
        // The child is reaped only below, so its pid (and group) is still
        // ours and the kill cannot hit another process.
        kill_group(&mut child);
        let _ = child.wait();
    }
    Ok(Limited {
        status,
        output: out,
    })
}

/// The error for a run that exited non-zero.
pub fn failed(cmd: &Command, out: &Output) -> ToolError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    ToolError::Failed {
        command: describe(cmd),
        status: match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{}", out.status),
        },
        output: tail(&text, MAX_ERROR_LINES),
    }
}

/// The command line, for messages: program and arguments separated by
/// spaces (environment left out).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` non-empty lines of `text`, joined with "; " so an error
/// stays on one line in reports.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    let shown = lines[start..].join("; ");
    if shown.is_empty() {
        "(no output)".into()
    } else {
        shown
    }
}

/// An error and its causes on one line: "a: b: c".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// SIGKILL to the child's process group (it leads one of its own), or to
/// the child alone when its pid does not fit. Call before reaping it, so
/// the pid (and group) is still ours and the kill cannot hit another
/// process.
fn kill_group(child: &mut std::process::Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_command_status_and_stderr_tail() {
        let err = run(Command::new("sh").args(["-c", "echo out; echo 'E: broken' >&2; exit 3"]))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c"), "{text}");
        assert!(text.contains("exit status 3"), "{text}");
        assert!(text.contains("E: broken"), "{text}");
        assert!(
            text.ends_with("(exit status 3): E: broken"),
            "stdout is not shown when stderr says something: {text}"
        );
    }

    #[test]
    fn stdout_is_used_when_stderr_is_silent() {
        let err = run(Command::new("sh").args(["-c", "echo only-stdout; exit 1"])).unwrap_err();
        assert!(err.to_string().contains("only-stdout"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(&mut Command::new("/nonexistent/trueup-tool")).unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/trueup-tool"));
    }

    /// The progress hook is process-wide: tests that set it take turns.
    static HOOK: Mutex<()> = Mutex::new(());

    /// Takes the hook's turn and sets a hook that counts its calls.
    fn counting_hook() -> (
        std::sync::MutexGuard<'static, ()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = ticks.clone();
        set_progress(Some(Arc::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })));
        (turn, ticks)
    }

    #[test]
    fn a_quiet_tool_inside_its_timeout_keeps_the_run_alive() {
        let (_turn, ticks) = counting_hook();
        // Silent for 2.5 s, inside its 10 s timeout: about a tick a second.
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "sleep 2.5"]),
            Duration::from_secs(10),
        );
        set_progress(None);
        out.unwrap();
        assert!(ticks.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }

    #[test]
    fn a_slow_tool_that_keeps_printing_is_not_killed_and_feeds_progress() {
        // Longer in all than its timeout, but never silent that long.
        let (_turn, ticks) = counting_hook();
        let out = run_with_timeout(
            Command::new("sh").args([
                "-c",
                "for i in 1 2 3 4 5 6; do echo \"progress $i\"; sleep 0.2; done",
            ]),
            Duration::from_millis(800),
        );
        set_progress(None);
        let out = out.unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("progress 6"));
        assert!(ticks.load(std::sync::atomic::Ordering::SeqCst) >= 6);
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_timeout_and_reported() {
        let start = Instant::now();
        let err = run_with_timeout(
            // A child that keeps the pipes open must not keep us waiting.
            Command::new("sh").args(["-c", "echo started; sleep 30 & sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "not killed");
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`sh -c") && text.contains("killed") && text.contains("started"),
            "{text}"
        );
    }

    #[test]
    fn a_limited_run_keeps_interleaved_output_and_is_killed_at_its_limit() {
        use std::io::Read;
        let mut ran = run_limited(
            Command::new("sh").args(["-c", "echo one; echo two >&2; echo three; exit 4"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(ran.status.and_then(|s| s.code()), Some(4));
        let mut text = String::new();
        use std::io::Seek;
        ran.output.rewind().unwrap();
        ran.output.read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\nthree\n");

        let start = Instant::now();
        let ran = run_limited(
            // Printing all the while does not save it: the limit is total.
            Command::new("sh").args([
                "-c",
                "while true; do echo tick; sleep 0.05; done & sleep 30",
            ]),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(ran.status.is_none(), "killed at its limit");
        assert!(start.elapsed() < Duration::from_secs(10));
        let err = run_limited(&mut Command::new("/nonexistent/x"), Duration::from_secs(1));
        assert!(matches!(err, Err(ToolError::Spawn { .. })));
    }

    #[test]
    fn package_managers_get_the_longer_timeout() {
        let t = Timeouts::default();
        assert_eq!(timeout_for(&Command::new("apt-get")), t.packages);
        assert_eq!(timeout_for(&Command::new("/usr/bin/dnf")), t.packages);
        assert_eq!(timeout_for(&Command::new("systemctl")), t.other);
    }

    #[test]
    fn tail_keeps_last_lines_on_one_line() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b; c");
        assert_eq!(tail("  \n", 2), "(no output)");
    }
}
