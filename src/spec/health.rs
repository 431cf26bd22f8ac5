//! The branch's `health:` key: its raw schema, how includes merge it
//! (`window` and `on_failure`: later wins; `checks`: keyed by name, later
//! wins per check), and its validation into `health::HealthSpec`.
//!
//! ```yaml
//! health:
//!   window: 60s
//!   on_failure: rollback        # or: report
//!   checks:
//!     nginx:   { service: nginx.service }
//!     healthz: { http: "http://127.0.0.1:8080/healthz", status: 200, timeout: 3s }
//!     db:      { tcp: "127.0.0.1:5432" }
//!     ready:   { command: [/usr/local/bin/app-ready, --quick], required: false }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Builder, at};
use crate::health::{CheckSpec, DEFAULT_TIMEOUT, DEFAULT_WINDOW, HealthSpec, OnFailure, Probe};

/// The longest window accepted: a host waits this long on a bad commit.
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// `health:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub window: Option<Spanned<String>>,
    pub on_failure: Option<OnFailure>,
    #[serde(default)]
    pub checks: BTreeMap<String, Spanned<RawCheck>>,
}

/// One check as written: exactly one of `service`, `http`, `tcp`,
/// `command`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub service: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    pub tcp: Option<Spanned<String>>,
    pub command: Option<Vec<Spanned<String>>>,
    pub status: Option<Spanned<u16>>,
    pub timeout: Option<Spanned<String>>,
    pub required: Option<bool>,
}

/// `health:` of every document, merged.
#[derive(Default)]
pub(super) struct MergedHealth {
    window: Option<(Arc<str>, Spanned<String>)>,
    on_failure: Option<OnFailure>,
    checks: BTreeMap<String, (Arc<str>, Spanned<RawCheck>)>,
}

impl MergedHealth {
    /// Merges one document's `health:` over what came before it.
    pub(super) fn merge(&mut self, file: &Arc<str>, raw: Option<RawHealth>) {
        let Some(raw) = raw else { return };
        if let Some(w) = raw.window {
            self.window = Some((file.clone(), w));
        }
        if raw.on_failure.is_some() {
            self.on_failure = raw.on_failure;
        }
        for (name, check) in raw.checks {
            self.checks.insert(name, (file.clone(), check));
        }
    }
}

impl Builder<'_> {
    /// The validated `health:`, or `None` when no check is declared.
    pub(super) fn health(&mut self, merged: MergedHealth) -> Option<HealthSpec> {
        let window = match &merged.window {
            Some((file, w)) => match duration(&w.value) {
                Ok(d) if !d.is_zero() && d <= MAX_WINDOW => d,
                Ok(_) => {
                    self.errors.push(at(
                        file,
                        w,
                        Some("health"),
                        format!("window: '{}' must be more than 0s and at most 1h", w.value),
                    ));
                    return None;
                }
                Err(m) => {
                    self.errors
                        .push(at(file, w, Some("health"), format!("window: {m}")));
                    return None;
                }
            },
            None => DEFAULT_WINDOW,
        };
        let mut checks = BTreeMap::new();
        let mut ok = true;
        for (name, (file, raw)) in &merged.checks {
            match self.check(file, name, raw) {
                Some(c) => {
                    checks.insert(name.clone(), c);
                }
                None => ok = false,
            }
        }
        if !ok || checks.is_empty() {
            return None;
        }
        Some(HealthSpec {
            window,
            on_failure: merged.on_failure.unwrap_or_default(),
            checks,
        })
    }

    fn check(&mut self, file: &Arc<str>, name: &str, raw: &Spanned<RawCheck>) -> Option<CheckSpec> {
        let id = format!("health check {name}");
        let c = &raw.value;
        let fail = |b: &mut Self, message: String| {
            b.errors.push(at(file, raw, Some(&id), message));
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            fail(self, "a check's name must be non-empty text".into());
            return None;
        }
        let kinds = [
            c.service.is_some(),
            c.http.is_some(),
            c.tcp.is_some(),
            c.command.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if kinds != 1 {
            fail(
                self,
                "a check needs exactly one of service, http, tcp or command".into(),
            );
            return None;
        }
        if let Some(s) = &c.status
            && c.http.is_none()
        {
            self.errors.push(at(
                file,
                s,
                Some(&id),
                "status: only an http check takes a status".into(),
            ));
            return None;
        }
        let timeout = match &c.timeout {
            Some(t) if c.service.is_some() => {
                self.errors.push(at(
                    file,
                    t,
                    Some(&id),
                    "timeout: a service check takes no timeout (the window bounds it)".into(),
                ));
                return None;
            }
            Some(t) => match duration(&t.value) {
                Ok(d) if !d.is_zero() && d <= MAX_WINDOW => d,
                Ok(_) => {
                    self.errors.push(at(
                        file,
                        t,
                        Some(&id),
                        format!("timeout: '{}' must be more than 0s and at most 1h", t.value),
                    ));
                    return None;
                }
                Err(m) => {
                    self.errors
                        .push(at(file, t, Some(&id), format!("timeout: {m}")));
                    return None;
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        let probe = if let Some(unit) = &c.service {
            let unit_name = self.render_string(file, unit, &id, "service")?;
            if !super::valid_unit_name(&unit_name) || !unit_name.ends_with(".service") {
                self.errors.push(at(
                    file,
                    unit,
                    Some(&id),
                    format!(
                        "service: '{unit_name}' is not a service unit name (such as nginx.service)"
                    ),
                ));
                return None;
            }
            Probe::Service(unit_name)
        } else if let Some(u) = &c.http {
            let url = self.render_string(file, u, &id, "http")?;
            match url::Url::parse(&url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
                Ok(_) => {
                    self.errors.push(at(
                        file,
                        u,
                        Some(&id),
                        format!("http: '{url}' is not an http:// or https:// URL with a host"),
                    ));
                    return None;
                }
                Err(e) => {
                    self.errors.push(at(
                        file,
                        u,
                        Some(&id),
                        format!("http: '{url}' is not a URL: {e}"),
                    ));
                    return None;
                }
            }
            let status = match &c.status {
                Some(s) if !(100..=599).contains(&s.value) => {
                    self.errors.push(at(
                        file,
                        s,
                        Some(&id),
                        format!("status: {} is not an HTTP status (100 to 599)", s.value),
                    ));
                    return None;
                }
                s => s.as_ref().map(|s| s.value),
            };
            Probe::Http { url, status }
        } else if let Some(t) = &c.tcp {
            let address = self.render_string(file, t, &id, "tcp")?;
            let port_ok = address
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_some_and(|p| p > 0);
            if !port_ok {
                self.errors.push(at(
                    file,
                    t,
                    Some(&id),
                    format!("tcp: '{address}' is not HOST:PORT (such as 127.0.0.1:5432)"),
                ));
                return None;
            }
            Probe::Tcp(address)
        } else {
            let args = c.command.as_deref().unwrap_or_default();
            let Some(first) = args.first() else {
                fail(
                    self,
                    "command: give the program and its arguments as a list".into(),
                );
                return None;
            };
            let mut argv = Vec::with_capacity(args.len());
            for a in args {
                argv.push(self.render_string(file, a, &id, "command")?);
            }
            if argv[0].is_empty() || argv.iter().any(|a| a.contains('\0')) {
                self.errors.push(at(
                    file,
                    first,
                    Some(&id),
                    "command: the program is empty or an argument holds a NUL byte".into(),
                ));
                return None;
            }
            Probe::Command(argv)
        };
        Some(CheckSpec {
            probe,
            required: c.required.unwrap_or(true),
            timeout,
        })
    }
}

/// A duration as people write it: `60s`, `2m`, `1m 30s`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration such as 30s or 2m: {e}"))
}

#[cfg(test)]
mod tests {
    use crate::facts::Facts;
    use crate::health::{OnFailure, Probe};
    use crate::source::MemTree;

    fn load(files: &[(&str, &str)]) -> Result<crate::desired::DesiredState, String> {
        // No template here reads a fact: the machine's own will do.
        crate::spec::load(&MemTree::new(files), &Facts::gather()).map_err(|e| e.to_string())
    }

    #[test]
    fn checks_merge_by_name_through_includes() {
        let d = load(&[
            (
                "trueup.yaml",
                "include: [base.yaml]\nvars: { port: 8080 }\nhealth:\n  window: 5s\n  checks:\n    web: { http: \"http://127.0.0.1:{{vars.port}}/\", status: 204 }\n    ready: { command: [/bin/true], required: false }\n",
            ),
            (
                "base.yaml",
                "health:\n  window: 60s\n  on_failure: report\n  checks:\n    web: { tcp: \"127.0.0.1:1\" }\n    svc: { service: cron.service }\n",
            ),
        ])
        .unwrap();
        let h = d.health.unwrap();
        assert_eq!(h.window, std::time::Duration::from_secs(5));
        assert_eq!(h.on_failure, OnFailure::Report);
        assert_eq!(h.checks.len(), 3);
        assert_eq!(
            h.checks["web"].probe,
            Probe::Http {
                url: "http://127.0.0.1:8080/".into(),
                status: Some(204)
            }
        );
        assert!(h.checks["web"].required);
        assert!(!h.checks["ready"].required);
        assert_eq!(h.checks["svc"].probe, Probe::Service("cron.service".into()));
    }

    #[test]
    fn bad_checks_name_file_line_column_and_the_check() {
        let cases = [
            (
                "health:\n  checks:\n    x: { tcp: nowhere }\n",
                "trueup.yaml:3:15: health check x: tcp: 'nowhere' is not HOST:PORT",
            ),
            (
                "health:\n  checks:\n    x: { tcp: \"a:1\", http: \"http://a/\" }\n",
                "health check x: a check needs exactly one of",
            ),
            (
                "health:\n  window: soon\n  checks:\n    x: { tcp: \"a:1\" }\n",
                "trueup.yaml:2:11: health: window: 'soon' is not a duration",
            ),
            (
                "health:\n  checks:\n    x: { service: nginx.service, timeout: 3s }\n",
                "a service check takes no timeout",
            ),
            (
                "health:\n  checks:\n    x: { tcp: \"a:1\", status: 200 }\n",
                "only an http check takes a status",
            ),
            (
                "health:\n  checks:\n    x: { http: \"ftp://a/\" }\n",
                "is not an http:// or https:// URL",
            ),
            (
                "health:\n  checks:\n    x: { command: [] }\n",
                "command: give the program",
            ),
            (
                "health:\n  checks:\n    x: { tcp: \"a:1\", retries: 3 }\n",
                "unknown field",
            ),
            (
                "health:\n  on_failure: panic\n  checks: {}\n",
                "trueup.yaml:2",
            ),
        ];
        for (yaml, want) in cases {
            let e = load(&[("trueup.yaml", yaml)]).unwrap_err();
            assert!(e.contains(want), "{yaml}\n→ {e}\nwanted: {want}");
        }
    }
}
