//! Commands: what a file alone cannot do (`sysctl --system` after a sysctl
//! file changed, a one-time initialisation), and the `validate:` command of
//! a file. Argv only, never a shell unless the branch writes `[sh, -c, ..]`.
//!
//! A command runs only in a run where one of its `on_change` resources
//! changed, and only while its guards allow (`creates`: a path that does not
//! exist yet; `unless`: a read-only command that exits non-zero), so a run
//! that changes nothing runs nothing. `unless` runs during `check` too.
//! Under a root other than `/` no command runs (they would run on the host,
//! not in the root): they are reported as skipped.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::node::{NodeObservation, observe_node};
use super::{Attribute, Drift};
use crate::desired::CommandSpec;

/// How long a command may run when the branch does not say.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// How long a `validate:` command may run.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a command's output a report keeps (the end of it).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// How one run of a command ended, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRun {
    /// `exit status N`, `killed by signal N`, or `timed out after ...`.
    pub status: String,
    /// The process's own exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The tail of stdout and stderr together.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl CommandRun {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs commands on the host; `live` is false under another root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runner {
    pub live: bool,
}

impl Runner {
    /// Commands run only when the managed root is the host itself.
    pub fn for_root(root: &Path) -> Runner {
        Runner {
            live: root == Path::new("/"),
        }
    }

    /// Runs a declared command (its user, directory, environment and
    /// timeout); spawning it is the only error, a non-zero exit is a run.
    pub fn run(&self, spec: &CommandSpec) -> Result<CommandRun, String> {
        let mut cmd = build(&spec.run)?;
        if let Some(user) = &spec.user {
            let u = nix::unistd::User::from_name(user)
                .map_err(|e| format!("looking up user '{user}': {e}"))?
                .ok_or_else(|| format!("user '{user}' does not exist"))?;
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            cmd.env("HOME", &u.dir)
                .env("USER", user)
                .env("LOGNAME", user);
        }
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        cmd.envs(&spec.env);
        run_with_timeout(cmd, Duration::from_secs(spec.timeout_secs))
    }

    /// Runs a `validate:` command with `{path}` standing for `path`.
    pub fn validate(&self, argv: &[String], path: &Path) -> Result<CommandRun, String> {
        let shown = path.display().to_string();
        let argv: Vec<String> = argv.iter().map(|a| a.replace("{path}", &shown)).collect();
        run_with_timeout(build(&argv)?, VALIDATE_TIMEOUT)
    }
}

fn build(argv: &[String]) -> Result<Command, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// Runs `cmd` through the one process runner (`tool::run_limited`: stdout
/// and stderr into one file, its process group killed at `timeout`).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<CommandRun, String> {
    let ran = super::tool::run_limited(&mut cmd, timeout).map_err(|e| e.to_string())?;
    let status = ran.status;
    let output = read_tail(ran.output);
    let text = match status {
        None => format!("timed out after {}", humantime::format_duration(timeout)),
        Some(status) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => status.to_string(),
        },
    };
    Ok(CommandRun {
        status: text,
        exit_code: status.and_then(|s| s.code()),
        output,
    })
}

fn read_tail(mut f: std::fs::File) -> String {
    let Ok(len) = f.seek(SeekFrom::End(0)) else {
        return String::new();
    };
    let start = len.saturating_sub(OUTPUT_TAIL_BYTES as u64);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    // A cut in the middle of a character shows as U+FFFD: drop it.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// What the guards of one command found on the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandObservation {
    /// Whether `creates` exists (`None`: no `creates`).
    pub creates_exists: Option<bool>,
    /// How `unless` ended (`None`: no `unless`, or not run under `--root`).
    pub unless: Option<Result<CommandRun, String>>,
}

/// Checks a command's guards under `root`. `unless` runs only when the
/// runner is live.
pub fn observe(root: &Path, spec: &CommandSpec, runner: Runner) -> CommandObservation {
    let creates_exists = spec
        .creates
        .as_ref()
        .map(|p| !matches!(observe_node(root, p, false), Ok(NodeObservation::Missing)));
    // Skipped anyway while `creates` exists: nothing to ask.
    let unless = match (&spec.unless, creates_exists) {
        (Some(argv), c) if runner.live && c != Some(true) => Some(
            build(argv).and_then(|c| run_with_timeout(c, Duration::from_secs(spec.timeout_secs))),
        ),
        _ => None,
    };
    CommandObservation {
        creates_exists,
        unless,
    }
}

/// Whether the guards let the command run, and the drift that says why.
/// `triggers` are the `on_change` resources changing in this run (as
/// text); `None` when the command has no `on_change`.
pub fn diff(
    spec: &CommandSpec,
    obs: &CommandObservation,
    triggers: Option<&[String]>,
) -> Result<Option<Drift>, String> {
    if obs.creates_exists == Some(true) {
        return Ok(None);
    }
    match &obs.unless {
        Some(Ok(run)) if run.success() => return Ok(None),
        Some(Err(e)) => return Err(format!("unless: {e}")),
        _ => {}
    }
    let mut why = Vec::new();
    if let Some(t) = triggers {
        if t.is_empty() {
            return Ok(None);
        }
        why.push(format!("{} changes", t.join(", ")));
    }
    if let Some(p) = &spec.creates {
        why.push(format!("{} does not exist", p.display()));
    }
    if spec.secret && obs.unless.is_some() {
        why.push("unless: did not exit 0".into());
    } else if let Some(Ok(run)) = &obs.unless {
        why.push(format!("unless: {}", run.status));
    } else if spec.unless.is_some() {
        why.push("unless: not run under --root".into());
    }
    Ok(Some(Drift::new(Attribute::Run, "run", why.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn spec(run: &[&str]) -> CommandSpec {
        CommandSpec {
            run: argv(run),
            timeout_secs: 10,
            ..CommandSpec::default()
        }
    }

    #[test]
    fn a_run_keeps_exit_code_and_output_tail() {
        let r = Runner { live: true };
        let run = r
            .run(&spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(run.exit_code, Some(3));
        assert_eq!(run.status, "exit status 3");
        assert!(
            run.output.contains("out\n") && run.output.contains("err\n"),
            "{run:?}"
        );
        let big = r
            .run(&spec(&["sh", "-c", "seq 1 100000; echo last"]))
            .unwrap();
        assert!(big.output.len() <= OUTPUT_TAIL_BYTES);
        assert!(big.output.ends_with("last\n"));
    }

    #[test]
    fn env_and_cwd_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(&["sh", "-c", "echo \"$GREETING $(pwd)\""]);
        s.env.insert("GREETING".into(), "hello".into());
        s.cwd = Some(dir.path().into());
        let run = Runner { live: true }.run(&s).unwrap();
        assert_eq!(
            run.output,
            format!("hello {}\n", dir.path().canonicalize().unwrap().display())
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_children() {
        let mut s = spec(&["sh", "-c", "sleep 600 & wait"]);
        s.timeout_secs = 1;
        let run = Runner { live: true }.run(&s).unwrap();
        assert_eq!(run.exit_code, None);
        assert!(run.status.starts_with("timed out after 1s"), "{run:?}");
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let err = Runner { live: true }
            .run(&spec(&["/nonexistent/trueup-cmd"]))
            .unwrap_err();
        assert!(err.contains("/nonexistent/trueup-cmd"), "{err}");
    }

    #[test]
    fn validate_substitutes_the_path() {
        let run = Runner { live: true }
            .validate(
                &argv(&["echo", "checking", "{path}"]),
                Path::new("/tmp/x y"),
            )
            .unwrap();
        assert_eq!(run.output, "checking /tmp/x y\n");
    }

    #[test]
    fn guards_decide_whether_it_runs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("done"), "").unwrap();
        let live = Runner { live: true };
        let mut s = spec(&["true"]);
        s.creates = Some("/done".into());
        let obs = observe(root.path(), &s, live);
        assert_eq!(obs.creates_exists, Some(true));
        assert_eq!(diff(&s, &obs, None), Ok(None));
        s.creates = Some("/not-yet".into());
        let obs = observe(root.path(), &s, live);
        let d = diff(&s, &obs, None).unwrap().unwrap();
        assert_eq!(d.actual, "/not-yet does not exist");

        let mut s = spec(&["true"]);
        s.unless = Some(argv(&["true"]));
        assert_eq!(diff(&s, &observe(root.path(), &s, live), None), Ok(None));
        s.unless = Some(argv(&["false"]));
        let d = diff(&s, &observe(root.path(), &s, live), None)
            .unwrap()
            .unwrap();
        assert_eq!(d.actual, "unless: exit status 1");
        // Not live: unless does not run, and the command would.
        let obs = observe(root.path(), &s, Runner { live: false });
        assert_eq!(obs.unless, None);

        let s = spec(&["true"]);
        let none: &[String] = &[];
        assert_eq!(
            diff(&s, &CommandObservation::default(), Some(none)),
            Ok(None)
        );
        let d = diff(
            &s,
            &CommandObservation::default(),
            Some(&["file /etc/sysctl.d/90-app.conf".to_string()]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.actual, "file /etc/sysctl.d/90-app.conf changes");
    }
}
