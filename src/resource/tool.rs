//! Running the external tools that observe and change packages and units
//! (`apt-get`, `apt-cache`, `dnf`, `rpm`, `systemctl`): one place that
//! checks the exit status and puts the tool's own words (the tail of its
//! stderr) into the error.

use std::process::{Command, Output};

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
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        /// The tail of stderr, or of stdout when stderr is empty.
        output: String,
    },
}

/// Runs `cmd` to completion, stdin from /dev/null; returns its output when
/// it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(cmd, &out))
    }
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

    #[test]
    fn tail_keeps_last_lines_on_one_line() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b; c");
        assert_eq!(tail("  \n", 2), "(no output)");
    }
}
