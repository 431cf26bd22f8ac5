//! Prometheus textfile metrics (for node_exporter's textfile collector),
//! written atomically after each run so the collector never reads half a
//! file.

use std::fmt::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{RunReport, RunStatus};

const STATUSES: [RunStatus; 8] = [
    RunStatus::InSync,
    RunStatus::Drift,
    RunStatus::Converged,
    RunStatus::Failed,
    RunStatus::Error,
    RunStatus::Refused,
    RunStatus::Unhealthy,
    RunStatus::RolledBack,
];

/// The metrics text for one run that finished at `finished`.
pub fn render(report: &RunReport, finished: SystemTime) -> String {
    let mut out = String::new();
    let end = finished
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let duration = report.duration_ms as f64 / 1000.0;
    let mut gauge = |name: &str, help: &str, lines: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    gauge(
        "trueup_last_run_timestamp_seconds",
        "When the last run finished, in seconds since the epoch.",
        &[(String::new(), end.floor())],
    );
    gauge(
        "trueup_last_run_duration_seconds",
        "How long the last run took.",
        &[(String::new(), duration)],
    );
    let status_lines: Vec<(String, f64)> = STATUSES
        .iter()
        .map(|s| {
            let name = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            (
                format!("{{status=\"{name}\"}}"),
                if *s == report.status { 1.0 } else { 0.0 },
            )
        })
        .collect();
    gauge(
        "trueup_last_run_status",
        "Outcome of the last run (1 for the current one).",
        &status_lines,
    );
    let s = &report.summary;
    gauge(
        "trueup_drift_resources",
        "Resources that differed from the desired state in the last run.",
        &[(
            String::new(),
            (s.drift + s.changed + s.failed + s.skipped) as f64,
        )],
    );
    gauge(
        "trueup_changed_resources",
        "Resources changed by the last run.",
        &[(String::new(), s.changed as f64)],
    );
    gauge(
        "trueup_failed_resources",
        "Resources that failed or were skipped in the last run.",
        &[(String::new(), (s.failed + s.skipped) as f64)],
    );
    if let Some(h) = &report.health {
        use crate::health::{CheckStatus, HealthStatus};
        let lines: Vec<(String, f64)> = [
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Pending,
        ]
        .iter()
        .map(|s| {
            (
                format!("{{status=\"{}\"}}", s.as_str()),
                if *s == h.status { 1.0 } else { 0.0 },
            )
        })
        .collect();
        gauge(
            "trueup_health_status",
            "Health after the last run (1 for the current one); after a rollback, the rolled-back commit's.",
            &lines,
        );
        let checks: Vec<(String, f64)> = h
            .checks
            .iter()
            .map(|c| {
                (
                    format!(
                        "{{check=\"{}\",kind=\"{}\",required=\"{}\"}}",
                        escape(&c.name),
                        escape(&c.kind),
                        c.required
                    ),
                    if c.status == CheckStatus::Passed {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        gauge(
            "trueup_health_check_passed",
            "Whether each health check passed at the end of the last run's window.",
            &checks,
        );
    }
    if let Some(commit) = &report.source.commit {
        gauge(
            "trueup_applied_commit_info",
            "The commit of the last run.",
            &[(format!("{{commit=\"{}\"}}", escape(commit)), 1.0)],
        );
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the metrics file atomically.
pub fn write(path: &Path, report: &RunReport, finished: SystemTime) -> std::io::Result<()> {
    crate::safe_fs::write_own_file(path, render(report, finished).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Mode, SourceInfo};

    #[test]
    fn metrics_text_has_every_series() {
        let mut r = RunReport::failed_early(
            "web1",
            Mode::Apply,
            false,
            SystemTime::now(),
            SourceInfo {
                location: "x".into(),
                branch: None,
                commit: Some("a".repeat(40)),
                applied: None,
                rejected: None,
            },
            RunStatus::Converged,
            vec![],
        );
        r.summary.changed = 3;
        r.duration_ms = 1500;
        let text = render(&r, UNIX_EPOCH + std::time::Duration::from_secs(100));
        assert!(
            text.contains("trueup_last_run_timestamp_seconds 100\n"),
            "{text}"
        );
        assert!(
            text.contains("trueup_last_run_duration_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("trueup_last_run_status{status=\"converged\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("trueup_last_run_status{status=\"failed\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("trueup_changed_resources 3\n"), "{text}");
        assert!(text.contains(&format!(
            "trueup_applied_commit_info{{commit=\"{}\"}} 1",
            "a".repeat(40)
        )));
    }

    #[test]
    fn health_gauges_follow_the_report() {
        use crate::health::{CheckResult, CheckStatus, HealthReport, HealthStatus};
        let mut r = RunReport::failed_early(
            "web1",
            Mode::Apply,
            false,
            SystemTime::now(),
            SourceInfo::default(),
            RunStatus::RolledBack,
            vec![],
        );
        let check = |name: &str, status| CheckResult {
            name: name.into(),
            kind: "http".into(),
            target: "http://127.0.0.1/".into(),
            required: true,
            status,
            duration_ms: 0,
            attempts: 1,
            message: String::new(),
            output: None,
        };
        r.health = Some(HealthReport {
            status: HealthStatus::Unhealthy,
            commit: None,
            window_ms: 5000,
            duration_ms: 5000,
            checks: vec![
                check("page", CheckStatus::Failed),
                check("web\"x", CheckStatus::Passed),
            ],
            rollback: None,
            note: None,
        });
        let text = render(&r, UNIX_EPOCH);
        for line in [
            "trueup_last_run_status{status=\"rolled_back\"} 1\n",
            "trueup_health_status{status=\"unhealthy\"} 1\n",
            "trueup_health_status{status=\"healthy\"} 0\n",
            "trueup_health_check_passed{check=\"page\",kind=\"http\",required=\"true\"} 0\n",
            "trueup_health_check_passed{check=\"web\\\"x\",kind=\"http\",required=\"true\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
