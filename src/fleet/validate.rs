//! `trueup validate --fleet DIR`: renders the state of every host listed in
//! `fleet.yaml` with that host's own facts, so a change that breaks only
//! one host fails the pull request that brings it.
//!
//! A host's facts come from its latest run report (the `facts` it rendered
//! with, read from the reports location), else from
//! `hosts/<host>.facts.yaml` in the checkout (a host that never reported).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::config::FleetConfig;
use super::tips::read_tips;
use crate::config::Auth;
use crate::facts::{Facts, PublishedFacts};
use crate::report::notes::parse_note;
use crate::secrets::Secrets;
use crate::source::DirTree;
use crate::source::remote::RemoteUrl;
use crate::source::transport::SourceError;
use crate::spec;

/// Where one host's facts came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FactsOrigin {
    /// The host's latest run report, about this commit.
    Report { commit: Option<String> },
    /// `hosts/<host>.facts.yaml` in the checkout.
    File { path: String },
    /// Neither: the host cannot be rendered.
    Missing,
}

/// One host's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostValidation {
    pub host: String,
    pub valid: bool,
    pub facts: FactsOrigin,
    /// Resources in the rendered state (when valid).
    pub resources: usize,
    /// Every problem, one per line (`file:line:column: ...`).
    pub errors: Vec<String>,
}

/// The facts each host's latest report carries, by host. A report without
/// facts (an older agent), or one that cannot be read, is left out.
pub fn reported_facts(
    reports: &RemoteUrl,
    auth: &Auth,
) -> Result<BTreeMap<String, (PublishedFacts, Option<String>)>, SourceError> {
    let tips = read_tips(reports, auth, false)?;
    Ok(tips
        .hosts
        .into_iter()
        .filter_map(|t| {
            let text = t.latest.ok()??;
            let (_, report) = parse_note(&text).ok()?;
            Some((t.host, (report.facts?, report.source.commit)))
        })
        .collect())
}

/// The path of a host's stand-in facts in the fleet checkout.
pub fn facts_file(host: &str) -> String {
    format!("hosts/{host}.facts.yaml")
}

/// Reads `hosts/<host>.facts.yaml`: facts as `trueup facts --format json`
/// prints them, any of them left out (defaults: empty, `hostname` the
/// host's name). Unknown keys are errors, like everywhere in a branch.
pub fn read_facts_file(dir: &Path, host: &str) -> Result<Option<Facts>, String> {
    let rel = facts_file(host);
    let path = dir.join(&rel);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{rel}: {e}")),
    };
    let given: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        format!("{rel}{at}: {}", spec::yaml_error_message(&e))
    })?;
    let mut base = PublishedFacts {
        hostname: host.to_string(),
        fqdn: host.to_string(),
        ..PublishedFacts::default()
    }
    .into_facts();
    base.cpus = 1;
    let mut merged = serde_json::to_value(&base).map_err(|e| e.to_string())?;
    match given {
        serde_json::Value::Null => {}
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "os"
                    && let (Some(o), serde_json::Value::Object(given_os)) =
                        (merged.get_mut("os"), &v)
                {
                    for (ok, ov) in given_os {
                        o[ok] = ov.clone();
                    }
                    continue;
                }
                merged[k] = v;
            }
        }
        _ => return Err(format!("{rel}: expected a mapping of facts")),
    }
    serde_json::from_value(merged)
        .map(Some)
        .map_err(|e| format!("{rel}: {e}"))
}

/// Renders every host of `config` from the checkout `dir`.
pub fn validate_hosts(
    dir: &Path,
    config: &FleetConfig,
    reported: &BTreeMap<String, (PublishedFacts, Option<String>)>,
) -> Vec<HostValidation> {
    let tree = DirTree::new(dir);
    config
        .hosts
        .keys()
        .map(|host| {
            let mut v = HostValidation {
                host: host.clone(),
                valid: false,
                facts: FactsOrigin::Missing,
                resources: 0,
                errors: Vec::new(),
            };
            let facts = match reported.get(host) {
                Some((f, commit)) => {
                    v.facts = FactsOrigin::Report {
                        commit: commit.clone(),
                    };
                    f.clone().into_facts()
                }
                None => match read_facts_file(dir, host) {
                    Ok(Some(f)) => {
                        v.facts = FactsOrigin::File {
                            path: facts_file(host),
                        };
                        f
                    }
                    Ok(None) => {
                        v.errors.push(format!(
                            "no facts: the host has not reported, and there is no {}",
                            facts_file(host)
                        ));
                        return v;
                    }
                    Err(e) => {
                        v.errors.push(e);
                        return v;
                    }
                },
            };
            // Secrets are not opened: CI holds no host key.
            match spec::load_with_secrets(&tree, &facts, &Secrets::Unread) {
                Ok(state) => {
                    v.valid = true;
                    v.resources = state.len();
                }
                Err(errs) => v.errors = errs.0.iter().map(ToString::to_string).collect(),
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::config::parse_fleet_config;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn each_host_renders_with_its_own_facts_and_a_break_names_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(
            d,
            "trueup.yaml",
            "include: [\"hosts/{{facts.hostname}}.yaml\"]\nfiles:\n  /etc/motd: { content: \"{{facts.hostname}} on {{facts.os.id}}\" }\n",
        );
        write(d, "hosts/a.yaml", "vars: { port: 1 }\n");
        write(
            d,
            "hosts/b.yaml",
            "files:\n  /etc/b: { content: \"{{vars.port}}\" }\n",
        );
        write(d, "hosts/a.facts.yaml", "os: { id: debian }\n");
        write(d, "hosts/b.facts.yaml", "os: { id: rocky }\ncpus: 4\n");
        let config = parse_fleet_config("fleet.yaml", b"hosts: { a: {}, b: {}, c: {} }\n").unwrap();
        let mut reported = BTreeMap::new();
        let mut c_facts = PublishedFacts {
            hostname: "c".into(),
            ..PublishedFacts::default()
        };
        c_facts.os.id = "debian".into();
        reported.insert("c".to_string(), (c_facts, Some("f".repeat(40))));
        write(d, "hosts/c.yaml", "");
        let out = validate_hosts(d, &config, &reported);
        let by: BTreeMap<&str, &HostValidation> =
            out.iter().map(|v| (v.host.as_str(), v)).collect();
        assert!(by["a"].valid, "{:?}", by["a"]);
        assert_eq!(
            by["a"].facts,
            FactsOrigin::File {
                path: "hosts/a.facts.yaml".into()
            }
        );
        assert!(!by["b"].valid);
        assert!(
            by["b"].errors[0].starts_with("hosts/b.yaml:2:"),
            "{:?}",
            by["b"]
        );
        assert!(by["b"].errors[0].contains("vars.port"), "{:?}", by["b"]);
        assert!(by["c"].valid, "{:?}", by["c"]);
        assert!(matches!(by["c"].facts, FactsOrigin::Report { .. }));

        // Without facts, the host fails and says what is missing.
        let config = parse_fleet_config("fleet.yaml", b"hosts: { z: {} }\n").unwrap();
        let out = validate_hosts(d, &config, &BTreeMap::new());
        assert!(!out[0].valid);
        assert!(out[0].errors[0].contains("hosts/z.facts.yaml"), "{out:?}");
    }

    #[test]
    fn facts_files_are_strict_and_fill_what_they_leave_out() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "hosts/h.facts.yaml", "hostnme: x\n");
        let e = read_facts_file(tmp.path(), "h").unwrap_err();
        assert!(
            e.contains("hosts/h.facts.yaml") && e.contains("hostnme"),
            "{e}"
        );
        write(
            tmp.path(),
            "hosts/h.facts.yaml",
            "os: { version_id: \"12\" }\n",
        );
        let f = read_facts_file(tmp.path(), "h").unwrap().unwrap();
        assert_eq!((f.hostname.as_str(), f.os.version_id.as_str()), ("h", "12"));
        assert_eq!(read_facts_file(tmp.path(), "none").unwrap(), None);
    }
}
