//! The report as text for people: one block per resource that is not in
//! sync, unified diffs for content, and a closing summary line. Colour is
//! added by the caller's stream (anstream strips it when not a terminal).

use std::fmt::Write;

use anstyle::{AnsiColor, Style};

use super::{RunReport, RunStatus};
use crate::apply::Status;

const BOLD: Style = Style::new().bold();
const RED: Style = AnsiColor::Red.on_default();
const GREEN: Style = AnsiColor::Green.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const CYAN: Style = AnsiColor::Cyan.on_default();

/// Renders a report, with ANSI styles (strip them for a plain stream).
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    for e in &report.errors {
        let _ = writeln!(out, "{RED}error:{RED:#} {e}");
    }
    for r in &report.resources {
        let (word, style) = match r.status {
            Status::Drift => ("drift", YELLOW),
            Status::Changed => ("changed", GREEN),
            Status::Failed => ("failed", RED),
            Status::Skipped => ("skipped", RED),
            Status::InSync => ("in sync", GREEN),
        };
        let _ = writeln!(
            out,
            "{style}{word:>8}{style:#} {BOLD}{} {}{BOLD:#}",
            r.kind.as_str(),
            r.resource
        );
        for d in &r.drift {
            let _ = writeln!(
                out,
                "         {}: expected {}, found {}",
                d.attribute.as_str(),
                d.expected,
                d.actual
            );
            if let Some(diff) = &d.diff {
                for line in diff.lines() {
                    let style = if line.starts_with("+++") || line.starts_with("---") {
                        BOLD
                    } else if line.starts_with('+') {
                        GREEN
                    } else if line.starts_with('-') {
                        RED
                    } else if line.starts_with("@@") {
                        CYAN
                    } else {
                        Style::new()
                    };
                    let _ = writeln!(out, "         {style}{line}{style:#}");
                }
            }
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "         {RED}error:{RED:#} {e}");
        }
        // A command's own words: the tail of its output.
        if let Some(run) = &r.run {
            let _ = writeln!(out, "         ran: {}", run.status);
            for line in run.output.lines() {
                let _ = writeln!(out, "         | {line}");
            }
        }
    }
    if let Some(h) = &report.health {
        out.push_str(&health(h));
    }
    let style = match report.status {
        RunStatus::InSync | RunStatus::Converged => GREEN,
        RunStatus::Drift => YELLOW,
        _ => RED,
    };
    let _ = writeln!(out, "{style}{}{style:#}", report.headline());
    out
}

/// The health block: one line per check, then the rollback.
pub fn health(h: &crate::health::HealthReport) -> String {
    let mut out = String::new();
    render_health(&mut out, h);
    out
}

fn render_health(out: &mut String, h: &crate::health::HealthReport) {
    use crate::health::{CheckStatus, HealthStatus};
    let style = match h.status {
        HealthStatus::Healthy => GREEN,
        HealthStatus::Pending => YELLOW,
        _ => RED,
    };
    let _ = writeln!(
        out,
        "{style}{:>8}{style:#} {BOLD}health{BOLD:#} ({} checks, {:.1}s){}",
        h.status.as_str(),
        h.checks.len(),
        h.duration_ms as f64 / 1000.0,
        h.note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default()
    );
    let check_lines = |out: &mut String, checks: &[crate::health::CheckResult]| {
        for c in checks {
            let (word, style) = match c.status {
                CheckStatus::Passed => ("passed", GREEN),
                CheckStatus::Skipped => ("skipped", YELLOW),
                CheckStatus::Failed if !c.required => ("failed", YELLOW),
                _ => ("failed", RED),
            };
            let _ = writeln!(
                out,
                "         {style}{word}{style:#} {} ({} {}{}): {}",
                c.name,
                c.kind,
                c.target,
                if c.required { "" } else { ", not required" },
                c.message
            );
            if let Some(o) = &c.output {
                for line in o
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    let _ = writeln!(out, "           | {line}");
                }
            }
        }
    };
    check_lines(out, &h.checks);
    if let Some(r) = &h.rollback {
        let _ = writeln!(
            out,
            "{RED}rolled back{RED:#} {} → {}: {}",
            super::short_id(&r.from, 12),
            super::short_id(&r.to, 12),
            if r.healthy_after {
                "healthy again"
            } else {
                "still unhealthy"
            }
        );
        for p in &r.removed {
            let _ = writeln!(out, "         removed {p}");
        }
        for l in &r.left {
            let _ = writeln!(out, "         left {l} (a rollback does not remove it)");
        }
        for e in &r.errors {
            let _ = writeln!(out, "         {RED}error:{RED:#} {e}");
        }
        check_lines(out, &r.checks_after);
    }
}

#[cfg(test)]
mod command_output_tests {
    use crate::apply::{Outcome, Status};
    use crate::report::{Mode, RunReport, SourceInfo};
    use crate::resource::Kind;
    use crate::resource::command::CommandRun;

    #[test]
    fn a_command_shows_its_status_and_output_tail() {
        let o = Outcome {
            kind: Kind::Command,
            resource: "init-db".into(),
            status: Status::Failed,
            drift: vec![],
            action: Some("run".into()),
            error: Some("`init-db` failed (exit status 3)".into()),
            run: Some(CommandRun {
                status: "exit status 3".into(),
                exit_code: Some(3),
                output: "connecting\nno database\n".into(),
            }),
            error_class: None,
        };
        let report = RunReport::from_outcomes(
            "h",
            Mode::Apply,
            false,
            std::time::SystemTime::now(),
            SourceInfo::default(),
            vec![o],
        );
        let text = super::render(&report);
        assert!(text.contains("ran: exit status 3\n"), "{text}");
        assert!(
            text.contains("| connecting\n") && text.contains("| no database\n"),
            "{text}"
        );
    }
}
