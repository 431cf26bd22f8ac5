//! `fleet.yaml` at the root of `main`: the fleet repository, where reports
//! live, every host with its groups (and pinned SSH host key), the rollout
//! waves, and which hosts each age secret is for.
//!
//! Strict like `trueup.yaml`: unknown keys are errors, and every error names
//! `fleet.yaml`, line and column. Everything is checked at load (durations,
//! shares, host names usable as branch names, groups named by waves and
//! secrets exist), so the commands that use it work on typed values only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use crate::source::RepoPath;
use crate::spec::{SpecError, SpecErrors, yaml_error_message};

/// The file at the root of the fleet repository's `main`.
pub const FLEET_FILE: &str = "fleet.yaml";

/// How long a wave may take to report back when `fleet.yaml` does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// The whole of `fleet.yaml`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetConfig {
    /// The fleet repository's URL, as the hosts and the CLI reach it.
    pub repo: Option<String>,
    /// Where the hosts' notes live when apart from `repo` (fleet scale).
    pub reports: Option<String>,
    /// Every host by name (= its `facts.hostname` = its branch `hosts/<name>`).
    pub hosts: BTreeMap<String, FleetHost>,
    pub rollout: Rollout,
    pub secrets: SecretsConfig,
}

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetHost {
    pub groups: Vec<String>,
    /// The host's SSH public host key (`ssh-ed25519 AAAA...`), pinned so a
    /// host cannot publish a false one in its reports.
    pub ssh_key: Option<String>,
}

/// How a change reaches the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub waves: Vec<Wave>,
    /// How long a wave may take to report back healthy.
    pub wait: Duration,
    /// Hosts per wave that may be unhealthy before the rollout stops.
    pub max_unhealthy: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            waves: vec![Wave::Share(100)],
            wait: DEFAULT_WAIT,
            max_unhealthy: 0,
        }
    }
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wave {
    /// Every not yet promoted host of the group.
    Group(String),
    /// This percentage (1..=100) of the hosts not yet promoted, rounded up.
    Share(u8),
}

impl Wave {
    /// `canary` or `25%`; the group is not checked against a fleet here.
    pub fn parse(raw: &str) -> Result<Wave, String> {
        let raw = raw.trim();
        if let Some(n) = raw.strip_suffix('%') {
            return match n.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Wave::Share(p)),
                _ => Err(format!(
                    "wave '{raw}': a share is a whole percentage from 1% to 100%"
                )),
            };
        }
        check_name(raw)
            .map(|()| Wave::Group(raw.to_string()))
            .map_err(|why| format!("wave '{raw}': not a group name or a share like \"25%\": {why}"))
    }

    /// Parses a comma-separated list (`--waves canary,25%,100%`).
    pub fn parse_list(raw: &str) -> Result<Vec<Wave>, String> {
        let waves = raw
            .split(',')
            .filter(|w| !w.trim().is_empty())
            .map(Wave::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if waves.is_empty() {
            return Err("no waves given".into());
        }
        Ok(waves)
    }
}

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wave::Group(g) => write!(f, "{g}"),
            Wave::Share(p) => write!(f, "{p}%"),
        }
    }
}

/// `secrets:`: who may always decrypt, and which hosts each secret is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretsConfig {
    /// Admin recipients (`age1...` or an SSH public key) added to every secret.
    pub admins: Vec<String>,
    /// Repository path of an encrypted file → the hosts and groups it is for.
    pub files: BTreeMap<String, Vec<String>>,
}

/// A name given where a host or a group is expected that is neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is neither a host nor a group in fleet.yaml")]
pub struct UnknownTarget(pub String);

/// `fleet.yaml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetConfigError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{0}")]
    Invalid(SpecErrors),
}

impl FleetConfig {
    /// Every group some host belongs to.
    pub fn groups(&self) -> BTreeSet<&str> {
        self.hosts
            .values()
            .flat_map(|h| h.groups.iter().map(String::as_str))
            .collect()
    }

    /// The hosts of `group`, in name order.
    pub fn group_hosts(&self, group: &str) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.groups.iter().any(|g| g == group))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Hosts and groups → the set of hosts they name.
    pub fn resolve_targets<S: AsRef<str>>(
        &self,
        names: &[S],
    ) -> Result<BTreeSet<String>, UnknownTarget> {
        let mut out = BTreeSet::new();
        for name in names {
            let name = name.as_ref();
            if self.hosts.contains_key(name) {
                out.insert(name.to_string());
                continue;
            }
            let members = self.group_hosts(name);
            if members.is_empty() {
                return Err(UnknownTarget(name.to_string()));
            }
            out.extend(members.into_iter().map(str::to_string));
        }
        Ok(out)
    }

    /// Where the hosts' notes are read from: `--reports URL`, else
    /// `reports:`, else `repo:`.
    pub fn reports_location<'a>(&'a self, flag: Option<&'a str>) -> Option<&'a str> {
        reports_location(flag, Some(self))
    }
}

/// Where the hosts' notes are read from: `--reports URL`, else `fleet.yaml`'s
/// `reports:`, else its `repo:`; None when none of them says.
pub fn reports_location<'a>(
    flag: Option<&'a str>,
    config: Option<&'a FleetConfig>,
) -> Option<&'a str> {
    flag.or_else(|| config.and_then(|c| c.reports.as_deref()))
        .or_else(|| config.and_then(|c| c.repo.as_deref()))
}

/// Reads `DIR/fleet.yaml`.
pub fn read_fleet_config(dir: &Path) -> Result<FleetConfig, FleetConfigError> {
    let path = dir.join(FLEET_FILE);
    let bytes = std::fs::read(&path).map_err(|e| FleetConfigError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    parse_fleet_config(FLEET_FILE, &bytes).map_err(FleetConfigError::Invalid)
}

/// Parses and validates `fleet.yaml`; `file` names it in errors.
pub fn parse_fleet_config(file: &str, bytes: &[u8]) -> Result<FleetConfig, SpecErrors> {
    let pos_err = |line: u64, column: u64, message: String| SpecError {
        file: file.to_string(),
        line,
        column,
        resource: None,
        message,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| SpecErrors(vec![pos_err(0, 0, "the file is not valid UTF-8".into())]))?;
    let options = serde_saphyr::options! { emit_comments: false };
    let raw: Option<RawFleet> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let loc = e.location();
            SpecErrors(vec![pos_err(
                loc.map(|l| l.line()).unwrap_or(0),
                loc.map(|l| l.column()).unwrap_or(0),
                yaml_error_message(&e),
            )])
        })?;
    let mut v = Validator {
        file,
        errors: Vec::new(),
    };
    let config = v.fleet(raw.unwrap_or_default());
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(SpecErrors(v.errors))
    }
}

/// Whether `name` can be a host or group name: it must be usable as the
/// branch `hosts/<name>` and the notes ref `refs/notes/trueup/<name>`, and
/// be what a hostname can be.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 253 {
        return Err("the name is longer than 253 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "'{}' is not allowed (letters, digits, '-', '_' and '.' only)",
            c.escape_default()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("the name must start with a letter or a digit".into());
    }
    if !git2::Reference::is_valid_name(&format!("refs/heads/hosts/{name}")) {
        return Err("the name is not valid in a Git branch name".into());
    }
    Ok(())
}

// ---- the raw schema, exactly as written ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    repo: Option<Spanned<String>>,
    reports: Option<Spanned<String>>,
    #[serde(default)]
    hosts: Entries<Spanned<Option<RawHost>>>,
    rollout: Option<RawRollout>,
    secrets: Option<RawSecrets>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    ssh_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    waves: Option<Spanned<Vec<Spanned<String>>>>,
    wait: Option<Spanned<String>>,
    max_unhealthy: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    admins: Vec<Spanned<String>>,
    #[serde(default)]
    files: Entries<Vec<Spanned<String>>>,
}

/// A mapping read as its entries in order, each key with its position, so
/// an error about a key (a bad host name) can point at it.
#[derive(Debug)]
struct Entries<V>(Vec<(Spanned<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Visit<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<Spanned<String>, V>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

/// Turns the raw file into a `FleetConfig`, collecting every error.
struct Validator<'f> {
    file: &'f str,
    errors: Vec<SpecError>,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, message: String) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            resource: None,
            message,
        });
    }

    fn url(&mut self, key: &str, raw: Option<Spanned<String>>) -> Option<String> {
        let raw = raw?;
        if raw.value.trim().is_empty() {
            self.err(&raw, format!("{key}: the URL is empty"));
            return None;
        }
        Some(raw.value)
    }

    fn fleet(&mut self, raw: RawFleet) -> FleetConfig {
        let repo = self.url("repo", raw.repo);
        let reports = self.url("reports", raw.reports);
        let names: BTreeSet<String> = raw.hosts.0.iter().map(|(n, _)| n.value.clone()).collect();
        let mut hosts = BTreeMap::new();
        for (name, host) in raw.hosts.0 {
            if let Err(why) = check_name(&name.value) {
                self.err(&name, format!("host '{}': {why}", name.value));
                continue;
            }
            if hosts.contains_key(&name.value) {
                self.err(&name, format!("host '{}' is listed twice", name.value));
                continue;
            }
            let parsed = self.host(&name.value, host.value.unwrap_or_default(), &names);
            hosts.insert(name.value, parsed);
        }
        let groups: BTreeSet<String> = hosts
            .values()
            .flat_map(|h: &FleetHost| h.groups.iter().cloned())
            .collect();
        let mut config = FleetConfig {
            repo,
            reports,
            hosts,
            rollout: Rollout::default(),
            secrets: SecretsConfig::default(),
        };
        if let Some(r) = raw.rollout {
            config.rollout = self.rollout(r, &groups);
        }
        if let Some(s) = raw.secrets {
            config.secrets = self.secrets(s, &config);
        }
        config
    }

    fn host(&mut self, name: &str, raw: RawHost, hosts: &BTreeSet<String>) -> FleetHost {
        let mut host = FleetHost::default();
        for g in raw.groups {
            // Group and host names share one namespace where "a host or a
            // group" is expected (secrets), so they must not collide.
            if let Err(why) = check_name(&g.value) {
                self.err(&g, format!("host '{name}': group '{}': {why}", g.value));
            } else if host.groups.contains(&g.value) {
                self.err(
                    &g,
                    format!("host '{name}': group '{}' is listed twice", g.value),
                );
            } else if hosts.contains(&g.value) {
                self.err(
                    &g,
                    format!(
                        "host '{name}': group '{}' has the name of a host; a name given \
                         as \"host or group\" must say which",
                        g.value
                    ),
                );
            } else {
                host.groups.push(g.value);
            }
        }
        if let Some(k) = raw.ssh_key {
            match check_ssh_key(&k.value) {
                Ok(()) => host.ssh_key = Some(k.value.trim().to_string()),
                Err(why) => self.err(&k, format!("host '{name}': ssh_key: {why}")),
            }
        }
        host
    }

    fn rollout(&mut self, raw: RawRollout, groups: &BTreeSet<String>) -> Rollout {
        let mut r = Rollout::default();
        if let Some(waves) = raw.waves {
            if waves.value.is_empty() {
                self.err(&waves, "rollout.waves: the list is empty".into());
            }
            let mut out = Vec::new();
            for w in &waves.value {
                match Wave::parse(&w.value) {
                    Ok(Wave::Group(g)) if !groups.contains(&g) => {
                        self.err(w, format!("rollout.waves: no host is in the group '{g}'"))
                    }
                    Ok(wave) => out.push(wave),
                    Err(why) => self.err(w, format!("rollout.waves: {why}")),
                }
            }
            if !out.is_empty() {
                r.waves = out;
            }
        }
        if let Some(w) = raw.wait {
            match humantime::parse_duration(w.value.trim()) {
                Ok(d) if !d.is_zero() => r.wait = d,
                Ok(_) => self.err(&w, "rollout.wait: must be longer than 0s".into()),
                Err(e) => self.err(
                    &w,
                    format!(
                        "rollout.wait: '{}' is not a duration like 10m: {e}",
                        w.value
                    ),
                ),
            }
        }
        if let Some(m) = raw.max_unhealthy {
            r.max_unhealthy = m.value;
        }
        r
    }

    fn secrets(&mut self, raw: RawSecrets, config: &FleetConfig) -> SecretsConfig {
        let mut s = SecretsConfig::default();
        for a in raw.admins {
            let v = a.value.trim();
            if v.starts_with("age1") && !v.contains(char::is_whitespace) {
                s.admins.push(v.to_string());
            } else {
                match check_ssh_key(v) {
                    Ok(()) => s.admins.push(v.to_string()),
                    Err(why) => self.err(
                        &a,
                        format!("secrets.admins: not an age recipient (age1...) or {why}"),
                    ),
                }
            }
        }
        for (path, targets) in raw.files.0 {
            if let Err(why) = RepoPath::parse(&path.value) {
                self.err(&path, format!("secrets.files: '{}': {why}", path.value));
                continue;
            }
            if s.files.contains_key(&path.value) {
                self.err(
                    &path,
                    format!("secrets.files: '{}' is listed twice", path.value),
                );
                continue;
            }
            let mut names = Vec::new();
            for t in targets {
                if config.resolve_targets(&[&t.value]).is_err() {
                    self.err(
                        &t,
                        format!(
                            "secrets.files: '{}': '{}' is neither a host nor a group",
                            path.value, t.value
                        ),
                    );
                } else {
                    names.push(t.value);
                }
            }
            if names.is_empty() {
                self.err(
                    &path,
                    format!(
                        "secrets.files: '{}': no host or group to encrypt for",
                        path.value
                    ),
                );
            }
            s.files.insert(path.value, names);
        }
        s
    }
}

/// An OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`); the key
/// itself is checked by the secrets code that uses it.
fn check_ssh_key(raw: &str) -> Result<(), String> {
    let mut parts = raw.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    if !matches!(kind, "ssh-ed25519" | "ssh-rsa") {
        return Err("an SSH public key starts with ssh-ed25519 or ssh-rsa".into());
    }
    if !body.starts_with("AAAA") {
        return Err("the key's base64 body is missing".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
repo: git://git.example.com/fleet.git
hosts:
  web-01: { groups: [web, canary] }
  web-02: { groups: [web] }
  db-01:
    groups: [db]
    ssh_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGX host
  bare-01:
rollout:
  waves: [canary, \"25%\", 100%]
  wait: 90s
  max_unhealthy: 1
secrets:
  admins: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
  files:
    secrets/db.age: [db, web-01]
";

    fn parse(text: &str) -> Result<FleetConfig, SpecErrors> {
        parse_fleet_config(FLEET_FILE, text.as_bytes())
    }

    fn one_error(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => {
                assert_eq!(e.0.len(), 1, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn the_example_parses_into_typed_values() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.repo.as_deref(), Some("git://git.example.com/fleet.git"));
        assert_eq!(c.reports, None);
        assert_eq!(
            c.hosts.keys().collect::<Vec<_>>(),
            ["bare-01", "db-01", "web-01", "web-02"]
        );
        assert_eq!(c.hosts["web-01"].groups, ["web", "canary"]);
        assert!(c.hosts["bare-01"].groups.is_empty());
        assert!(
            c.hosts["db-01"]
                .ssh_key
                .as_deref()
                .unwrap()
                .starts_with("ssh-ed25519 ")
        );
        assert_eq!(
            c.rollout.waves,
            [
                Wave::Group("canary".into()),
                Wave::Share(25),
                Wave::Share(100)
            ]
        );
        assert_eq!(c.rollout.wait, Duration::from_secs(90));
        assert_eq!(c.rollout.max_unhealthy, 1);
        assert_eq!(c.secrets.admins.len(), 1);
        assert_eq!(c.secrets.files["secrets/db.age"], ["db", "web-01"]);
        assert_eq!(
            c.groups().into_iter().collect::<Vec<_>>(),
            ["canary", "db", "web"]
        );
    }

    #[test]
    fn an_empty_file_is_an_empty_fleet_with_one_full_wave() {
        let c = parse("").unwrap();
        assert!(c.hosts.is_empty());
        assert_eq!(c.rollout, Rollout::default());
        assert_eq!(c.rollout.waves, [Wave::Share(100)]);
        assert_eq!(c.rollout.wait, DEFAULT_WAIT);
    }

    #[test]
    fn targets_resolve_hosts_and_groups() {
        let c = parse(EXAMPLE).unwrap();
        let t = c.resolve_targets(&["web", "db-01"]).unwrap();
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            ["db-01", "web-01", "web-02"]
        );
        assert_eq!(
            c.resolve_targets(&["nope"]).unwrap_err(),
            UnknownTarget("nope".into())
        );
        assert_eq!(c.group_hosts("canary"), ["web-01"]);
    }

    #[test]
    fn reports_come_from_the_flag_then_reports_then_repo() {
        let mut c = parse(EXAMPLE).unwrap();
        assert_eq!(
            c.reports_location(None),
            Some("git://git.example.com/fleet.git")
        );
        c.reports = Some("git://r/reports.git".into());
        assert_eq!(c.reports_location(None), Some("git://r/reports.git"));
        assert_eq!(c.reports_location(Some("file:///x")), Some("file:///x"));
        assert_eq!(reports_location(None, None), None);
        assert_eq!(reports_location(Some("a"), None), Some("a"));
    }

    #[test]
    fn unknown_keys_name_line_and_column() {
        let e = one_error("hosts:\n  web-01:\n    groups: [web]\n    grups: [x]\n");
        assert!(e.starts_with("fleet.yaml:4:5: "), "{e}");
        assert!(e.contains("grups"), "{e}");
        let e = one_error("rollout:\n  wave: [x]\n");
        assert!(e.starts_with("fleet.yaml:2:3: "), "{e}");
        let e = one_error("hots: {}\n");
        assert!(e.starts_with("fleet.yaml:1:1: "), "{e}");
    }

    #[test]
    fn bad_host_names_point_at_the_key() {
        let e = one_error("hosts:\n  ok-1: {}\n  \"bad/name\": {}\n");
        assert!(e.starts_with("fleet.yaml:3:3: host 'bad/name': "), "{e}");
        let e = one_error("hosts:\n  -x: {}\n");
        assert!(e.contains("start with a letter"), "{e}");
        let e = one_error("hosts:\n  a..b: {}\n");
        assert!(e.contains("Git branch"), "{e}");
        let e = one_error("hosts:\n  a.lock: {}\n");
        assert!(e.contains("Git branch"), "{e}");
    }

    #[test]
    fn waves_must_name_existing_groups_and_whole_shares() {
        let e = one_error("hosts: { a: { groups: [web] } }\nrollout: { waves: [web, dbs] }\n");
        assert!(e.starts_with("fleet.yaml:2:25: "), "{e}");
        assert!(e.contains("no host is in the group 'dbs'"), "{e}");
        let e = one_error("rollout:\n  waves: [\"0%\"]\n");
        assert!(e.starts_with("fleet.yaml:2:11: "), "{e}");
        assert!(e.contains("1% to 100%"), "{e}");
        assert!(one_error("rollout: { waves: [\"101%\"] }").contains("1% to 100%"));
        assert!(one_error("rollout: { waves: [\"2.5%\"] }").contains("1% to 100%"));
        assert!(one_error("rollout: { waves: [] }").contains("empty"));
    }

    #[test]
    fn wait_is_a_duration_and_max_unhealthy_a_count() {
        let e = one_error("rollout:\n  wait: soon\n");
        assert!(e.starts_with("fleet.yaml:2:9: rollout.wait: 'soon'"), "{e}");
        assert!(one_error("rollout: { wait: 0s }").contains("longer than 0s"));
        let e = one_error("rollout:\n  max_unhealthy: -1\n");
        assert!(e.starts_with("fleet.yaml:2:"), "{e}");
    }

    #[test]
    fn secrets_name_known_hosts_or_groups_and_real_keys() {
        let e =
            one_error("hosts: { a: { groups: [g] } }\nsecrets:\n  files:\n    s/x.age: [g, b]\n");
        assert!(e.starts_with("fleet.yaml:4:18: "), "{e}");
        assert!(e.contains("'b' is neither a host nor a group"), "{e}");
        let e = one_error("secrets: { files: { /etc/x.age: [] } }");
        assert!(e.contains("'/etc/x.age'"), "{e}");
        let e = one_error("secrets:\n  admins: [\"ssh-dss AAAA\"]\n");
        assert!(e.starts_with("fleet.yaml:2:12: secrets.admins"), "{e}");
        let e = one_error("hosts:\n  a: { ssh_key: \"ssh-ed25519\" }\n");
        assert!(
            e.contains("host 'a': ssh_key: the key's base64 body"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_and_collisions_are_refused() {
        assert!(parse("hosts:\n  a: {}\n  a: {}\n").is_err());
        let e = one_error("hosts: { a: { groups: [g, g] } }");
        assert!(e.contains("listed twice"), "{e}");
        let e = one_error("hosts: { a: { groups: [a] } }");
        assert!(e.contains("name of a host"), "{e}");
        let e = one_error("hosts: { a: { groups: [b] }, b: {} }");
        assert!(e.contains("group 'b' has the name of a host"), "{e}");
    }

    #[test]
    fn every_error_is_collected() {
        let e = parse("hosts:\n  \"x y\": {}\nrollout: { waves: [nope], wait: x }\n").unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn wave_lists_from_the_command_line() {
        assert_eq!(
            Wave::parse_list("canary, 25%,100%").unwrap(),
            [
                Wave::Group("canary".into()),
                Wave::Share(25),
                Wave::Share(100)
            ]
        );
        assert!(Wave::parse_list("").is_err());
        assert!(Wave::parse_list("a/b").is_err());
        assert_eq!(Wave::Share(25).to_string(), "25%");
    }
}
