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
    }
    let style = match report.status {
        RunStatus::InSync | RunStatus::Converged => GREEN,
        RunStatus::Drift => YELLOW,
        _ => RED,
    };
    let _ = writeln!(out, "{style}{}{style:#}", report.headline());
    out
}
