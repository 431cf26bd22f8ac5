//! The agent's configuration: `/etc/trueup/agent.yaml`, then every
//! `agent.d/*.yaml` beside it in name order (cloud-init drops one there).
//!
//! Three stages, as in zincati: raw fragments where every field is optional
//! and unknown keys are errors; fragments merged field by field, later wins;
//! then validated `Settings` whose types rule out bad states (durations are
//! `Duration`, the mode is an enum, paths are absolute). Every error names
//! the file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::facts::Facts;

/// Default location of the main configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/trueup/agent.yaml";

/// Exit status for a configuration error: systemd must not restart the
/// agent in a loop over it (`RestartPreventExitStatus=78`). EX_CONFIG.
pub const EXIT_CONFIG: i32 = 78;

/// A configuration problem, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", if *line > 0 { format!(":{line}:{column}") } else { String::new() })]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl ConfigError {
    fn at<T>(file: &Path, v: &Spanned<T>, message: String) -> ConfigError {
        ConfigError {
            file: file.display().to_string(),
            line: v.referenced.line(),
            column: v.referenced.column(),
            message,
        }
    }

    fn file(file: &Path, message: String) -> ConfigError {
        ConfigError {
            file: file.display().to_string(),
            line: 0,
            column: 0,
            message,
        }
    }
}

/// One configuration file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub repo: Option<Spanned<String>>,
    pub branch: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub splay: Option<Spanned<String>>,
    pub mode: Option<AgentMode>,
    pub root: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub lock_timeout: Option<Spanned<String>>,
    pub allowed_paths: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub auth: AuthFragment,
    #[serde(default)]
    pub trust: TrustFragment,
    #[serde(default)]
    pub report: ReportFragment,
    #[serde(default)]
    pub packages: PackagesFragment,
    #[serde(default)]
    pub secrets: SecretsFragment,
    #[serde(default)]
    pub backups: BackupsFragment,
    #[serde(default)]
    pub timeouts: TimeoutsFragment,
}

/// How long an external tool may print nothing before it is taken as hung.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFragment {
    /// apt-get and dnf (default 30m).
    pub packages: Option<Spanned<String>>,
    /// dpkg-query, rpm, systemctl, account tools (default 5m).
    pub tools: Option<Spanned<String>>,
}

/// How long the replaced contents under `<state_dir>/backup` are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsFragment {
    /// Remove a run's backups once older than this (default 30d).
    pub max_age: Option<Spanned<String>>,
    /// Keep at most this many runs' backups (default: no limit).
    pub max_count: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFragment {
    /// The SSH private key age secrets are decrypted with (default
    /// /etc/ssh/ssh_host_ed25519_key; `--root` does not move it).
    pub identity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFragment {
    /// Private key for ssh:// remotes.
    pub ssh_key: Option<Spanned<String>>,
    /// known_hosts file that ssh:// host keys are checked against.
    pub known_hosts: Option<Spanned<String>>,
    /// Accept (and record) a host key not yet in known_hosts. Off by default.
    pub accept_new_host_keys: Option<bool>,
    /// Extra CA certificate (PEM) for https:// remotes.
    pub ca_file: Option<Spanned<String>>,
    /// File holding a bearer token for https:// remotes.
    pub token_file: Option<Spanned<String>>,
    /// File holding `user:password` for https:// remotes.
    pub credentials_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFragment {
    /// ssh-keygen allowed_signers file; commits must be SSH-signed by one.
    pub allowed_signers: Option<Spanned<String>>,
    /// OpenPGP keyring for gpgv; commits must be signed by one of its keys.
    pub gpg_keyring: Option<Spanned<String>>,
    /// Accept a tip that does not descend from the last applied commit.
    pub allow_rewind: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFragment {
    /// Write a Git note per run (default true).
    pub notes: Option<bool>,
    /// Longest time between two notes when nothing changes (default 1h).
    pub heartbeat: Option<Spanned<String>>,
    /// Prometheus textfile to write after each run.
    pub metrics: Option<Spanned<String>>,
    /// A repository of its own for the notes (`report: { repo: URL }`), so
    /// the fleet repository can stay read-only for hosts.
    pub repo: Option<Spanned<String>>,
    /// Credentials for the reports repository (same keys as `auth:`).
    pub auth: Option<AuthFragment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesFragment {
    /// Run `apt-get update` first when the lists are older than this.
    pub apt_lists_max_age: Option<Spanned<String>>,
    /// `apt` or `dnf`; chosen from os-release when not set.
    pub backend: Option<crate::resource::package::BackendKind>,
    /// Extra options for every dnf call, e.g. a private repository setup.
    pub dnf_options: Option<Vec<Spanned<String>>>,
}

/// What the agent does with drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Converge.
    #[default]
    Apply,
    /// Audit: report drift, change nothing.
    Check,
}

/// A fragment and the file it came from.
pub struct Located {
    pub file: PathBuf,
    pub fragment: Fragment,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Repository URL or directory; `None` when only `--source` will say.
    pub repo: Option<String>,
    /// Branch name template, with `{hostname}`, `{fqdn}`, `{machine_id}`.
    pub branch: String,
    pub interval: Duration,
    pub splay: Duration,
    pub mode: AgentMode,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub lock_timeout: Duration,
    /// Managed paths must be under one of these; empty allows every path.
    pub allowed_paths: Vec<PathBuf>,
    pub auth: Auth,
    pub trust: Trust,
    pub report: ReportSettings,
    pub apt_lists_max_age: Duration,
    /// `packages.backend`: forces apt or dnf.
    pub package_backend: Option<crate::resource::package::BackendKind>,
    /// `packages.dnf_options`: added to every dnf command line.
    pub dnf_options: Vec<String>,
    /// `secrets.identity`: the host key that decrypts age secrets.
    pub secrets_identity: PathBuf,
    /// `backups:`: retention of replaced contents.
    pub backups: crate::backup::Retention,
    /// `timeouts:`: silence allowed to external tools, per kind.
    pub timeouts: crate::resource::tool::Timeouts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// trueup's own known_hosts file, `<state_dir>/known_hosts`: read
    /// first when `known_hosts` is not set, and the only file an accepted
    /// new host key is then written to (never the machine's or a user's).
    pub own_known_hosts: Option<PathBuf>,
    pub accept_new_host_keys: bool,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pub allowed_signers: Option<PathBuf>,
    pub gpg_keyring: Option<PathBuf>,
    pub allow_rewind: bool,
}

impl Trust {
    /// Whether commits must be signed.
    pub fn required(&self) -> bool {
        self.allowed_signers.is_some() || self.gpg_keyring.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSettings {
    pub notes: bool,
    pub heartbeat: Duration,
    pub metrics: Option<PathBuf>,
    /// `report.repo`: where notes are pushed instead of the fleet
    /// repository (a Git URL, validated at load).
    pub repo: Option<String>,
    /// `report.auth`: credentials for `report.repo` (not those of `auth:`).
    pub auth: Auth,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            repo: None,
            branch: "hosts/{hostname}".into(),
            interval: Duration::from_secs(300),
            splay: Duration::from_secs(30),
            mode: AgentMode::Apply,
            root: PathBuf::from("/"),
            state_dir: PathBuf::from("/var/lib/trueup"),
            lock_timeout: Duration::from_secs(60),
            allowed_paths: vec![],
            auth: Auth::default(),
            trust: Trust::default(),
            report: ReportSettings {
                notes: true,
                heartbeat: Duration::from_secs(3600),
                metrics: None,
                repo: None,
                auth: Auth::default(),
            },
            apt_lists_max_age: Duration::from_secs(24 * 3600),
            package_backend: None,
            dnf_options: vec![],
            secrets_identity: PathBuf::from(crate::secrets::DEFAULT_IDENTITY),
            backups: crate::backup::Retention::default(),
            timeouts: crate::resource::tool::Timeouts::default(),
        }
    }
}

impl Settings {
    /// How packages are managed (the `packages:` section).
    pub fn package_settings(&self) -> crate::resource::package::PackageSettings {
        crate::resource::package::PackageSettings {
            backend: self.package_backend,
            apt_lists_max_age: self.apt_lists_max_age,
            dnf_options: self.dnf_options.clone(),
        }
    }

    /// The host branch for these facts: `hosts/{hostname}` → `hosts/web1`.
    pub fn branch_for(&self, facts: &Facts) -> String {
        self.branch
            .replace("{hostname}", &facts.hostname)
            .replace("{fqdn}", &facts.fqdn)
            .replace("{machine_id}", &facts.machine_id)
    }
}

/// Parses one fragment.
pub fn parse_fragment(file: &Path, text: &str) -> Result<Fragment, ConfigError> {
    let parsed: Result<Option<Fragment>, _> = serde_saphyr::from_str(text);
    parsed.map(Option::unwrap_or_default).map_err(|e| {
        let loc = e.location();
        ConfigError {
            file: file.display().to_string(),
            line: loc.map(|l| l.line()).unwrap_or(0),
            column: loc.map(|l| l.column()).unwrap_or(0),
            message: crate::spec::yaml_error_message(&e),
        }
    })
}

/// The files making up the configuration: the main file (if it exists),
/// then `agent.d/*.yaml` beside it, in name order.
pub fn config_files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    if main.exists() {
        files.push(main.to_path_buf());
    }
    let dir = main.parent().unwrap_or(Path::new("/")).join("agent.d");
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            let mut extra: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            extra.sort();
            files.extend(extra);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ConfigError::file(&dir, e.to_string())),
    }
    Ok(files)
}

/// Reads, merges and validates the configuration rooted at `main`.
pub fn load(main: &Path) -> Result<Settings, ConfigError> {
    let mut located = Vec::new();
    for file in config_files(main)? {
        let text =
            std::fs::read_to_string(&file).map_err(|e| ConfigError::file(&file, e.to_string()))?;
        located.push(Located {
            fragment: parse_fragment(&file, &text)?,
            file,
        });
    }
    settings(&located)
}

/// Merges fragments in order (later wins per field) and validates them.
pub fn settings(fragments: &[Located]) -> Result<Settings, ConfigError> {
    let mut s = Settings::default();
    for Located { file, fragment: f } in fragments {
        let file = file.as_path();
        if let Some(v) = &f.repo {
            if v.value.trim().is_empty() {
                return Err(ConfigError::at(file, v, "repo is empty".into()));
            }
            // A URL that cannot work is a configuration error now (exit 78,
            // no retrying), not a failed run on every interval. A
            // directory is checked at run time: it may appear later.
            let repo = v.value.trim();
            if !repo.starts_with('/')
                && !repo.starts_with('.')
                && let Err(e) = crate::source::remote::RemoteUrl::parse(repo)
            {
                return Err(ConfigError::at(
                    file,
                    v,
                    format!(
                        "repo: {e} (a Git URL: ssh://, https://, git://, file://, user@host:path; or an absolute directory)"
                    ),
                ));
            }
            s.repo = Some(v.value.clone());
        }
        if let Some(v) = &f.branch {
            if v.value.trim().is_empty() || v.value.contains(char::is_whitespace) {
                return Err(ConfigError::at(
                    file,
                    v,
                    format!("branch '{}' is not a valid branch name", v.value),
                ));
            }
            s.branch = v.value.clone();
        }
        if let Some(v) = &f.interval {
            s.interval = duration(file, v, "interval")?;
            if s.interval < Duration::from_secs(1) {
                return Err(ConfigError::at(
                    file,
                    v,
                    "interval must be at least 1s".into(),
                ));
            }
        }
        if let Some(v) = &f.splay {
            s.splay = duration(file, v, "splay")?;
        }
        if let Some(m) = f.mode {
            s.mode = m;
        }
        if let Some(v) = &f.root {
            s.root = abs_path(file, v, "root")?;
        }
        if let Some(v) = &f.state_dir {
            s.state_dir = abs_path(file, v, "state_dir")?;
        }
        if let Some(v) = &f.lock_timeout {
            s.lock_timeout = duration(file, v, "lock_timeout")?;
        }
        if let Some(list) = &f.allowed_paths {
            s.allowed_paths = list
                .iter()
                .map(|v| abs_path(file, v, "allowed_paths"))
                .collect::<Result<_, _>>()?;
        }
        merge_auth(file, &f.auth, &mut s.auth, "auth")?;
        let t = &f.trust;
        if let Some(v) = &t.allowed_signers {
            s.trust.allowed_signers = Some(abs_path(file, v, "trust.allowed_signers")?);
        }
        if let Some(v) = &t.gpg_keyring {
            s.trust.gpg_keyring = Some(abs_path(file, v, "trust.gpg_keyring")?);
        }
        if let Some(b) = t.allow_rewind {
            s.trust.allow_rewind = b;
        }
        let r = &f.report;
        if let Some(b) = r.notes {
            s.report.notes = b;
        }
        if let Some(v) = &r.heartbeat {
            s.report.heartbeat = duration(file, v, "report.heartbeat")?;
        }
        if let Some(v) = &r.metrics {
            s.report.metrics = Some(abs_path(file, v, "report.metrics")?);
        }
        if let Some(v) = &r.repo {
            match crate::source::remote::RemoteUrl::parse(&v.value) {
                Ok(_) => s.report.repo = Some(v.value.trim().to_string()),
                Err(e) => {
                    return Err(ConfigError::at(
                        file,
                        v,
                        format!("report.repo: {e} (a Git URL: git://, ssh://, https://, file://)"),
                    ));
                }
            }
        }
        if let Some(a) = &r.auth {
            merge_auth(file, a, &mut s.report.auth, "report.auth")?;
        }
        if let Some(v) = &f.backups.max_age {
            s.backups.max_age = duration(file, v, "backups.max_age")?;
        }
        if let Some(n) = f.backups.max_count {
            s.backups.max_count = Some(n);
        }
        if let Some(v) = &f.timeouts.packages {
            s.timeouts.packages = positive(file, v, "timeouts.packages")?;
        }
        if let Some(v) = &f.timeouts.tools {
            s.timeouts.other = positive(file, v, "timeouts.tools")?;
        }
        if let Some(v) = &f.packages.apt_lists_max_age {
            s.apt_lists_max_age = duration(file, v, "packages.apt_lists_max_age")?;
        }
        if let Some(b) = f.packages.backend {
            s.package_backend = Some(b);
        }
        if let Some(list) = &f.packages.dnf_options {
            s.dnf_options = Vec::with_capacity(list.len());
            for v in list {
                // Options only: a bare word would become a dnf command.
                if !v.value.starts_with('-') || v.value.trim() != v.value {
                    return Err(ConfigError::at(
                        file,
                        v,
                        format!(
                            "packages.dnf_options: '{}' is not a dnf option (such as --setopt=reposdir=/etc/trueup/repos.d)",
                            v.value
                        ),
                    ));
                }
                s.dnf_options.push(v.value.clone());
            }
        }
        if let Some(v) = &f.secrets.identity {
            s.secrets_identity = abs_path(file, v, "secrets.identity")?;
        }
    }
    Ok(s)
}

/// Applies one `auth:`-shaped fragment (`auth` or `report.auth`).
fn merge_auth(
    file: &Path,
    a: &AuthFragment,
    into: &mut Auth,
    field: &str,
) -> Result<(), ConfigError> {
    if let Some(v) = &a.ssh_key {
        into.ssh_key = Some(abs_path(file, v, &format!("{field}.ssh_key"))?);
    }
    if let Some(v) = &a.known_hosts {
        into.known_hosts = Some(abs_path(file, v, &format!("{field}.known_hosts"))?);
    }
    if let Some(b) = a.accept_new_host_keys {
        into.accept_new_host_keys = b;
    }
    if let Some(v) = &a.ca_file {
        into.ca_file = Some(abs_path(file, v, &format!("{field}.ca_file"))?);
    }
    if let Some(v) = &a.token_file {
        into.token_file = Some(abs_path(file, v, &format!("{field}.token_file"))?);
    }
    if let Some(v) = &a.credentials_file {
        into.credentials_file = Some(abs_path(file, v, &format!("{field}.credentials_file"))?);
    }
    Ok(())
}

fn duration(file: &Path, v: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.value.trim()).map_err(|e| {
        ConfigError::at(
            file,
            v,
            format!(
                "{field}: '{}' is not a duration such as 30s or 5m ({e})",
                v.value
            ),
        )
    })
}

/// A duration that must not be zero (a zero timeout kills every tool).
fn positive(file: &Path, v: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
    let d = duration(file, v, field)?;
    if d.is_zero() {
        return Err(ConfigError::at(
            file,
            v,
            format!("{field} must be more than 0s"),
        ));
    }
    Ok(d)
}

fn abs_path(file: &Path, v: &Spanned<String>, field: &str) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(&v.value);
    if !p.is_absolute() {
        return Err(ConfigError::at(
            file,
            v,
            format!("{field}: '{}' must be an absolute path", v.value),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, text: &str) -> Located {
        Located {
            file: PathBuf::from(name),
            fragment: parse_fragment(Path::new(name), text).unwrap(),
        }
    }

    #[test]
    fn tool_timeouts_per_kind_and_backups() {
        let s = settings(&[frag(
            "a.yaml",
            "timeouts:\n  packages: 2h\n  tools: 90s\nbackups:\n  max_age: 7d\n  max_count: 5\n",
        )])
        .unwrap();
        assert_eq!(s.timeouts.packages, Duration::from_secs(7200));
        assert_eq!(s.timeouts.other, Duration::from_secs(90));
        assert_eq!(s.backups.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(s.backups.max_count, Some(5));
        let d = settings(&[]).unwrap();
        assert_eq!(d.timeouts, crate::resource::tool::Timeouts::default());
        let e = settings(&[frag("a.yaml", "timeouts:\n  tools: 0s\n")]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 10), "{e}");
        assert!(
            e.message.contains("timeouts.tools must be more than 0s"),
            "{e}"
        );
        let e = parse_fragment(Path::new("a.yaml"), "timeouts:\n  apt: 1h\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn defaults_without_any_file() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.interval, Duration::from_secs(300));
        assert_eq!(s.branch, "hosts/{hostname}");
        assert!(s.report.notes);
        assert!(!s.trust.required());
    }

    #[test]
    fn later_fragments_win_per_field() {
        let s = settings(&[
            frag("agent.yaml", "repo: git://a/x.git\ninterval: 5m\nreport: { heartbeat: 2h, notes: true }\n"),
            frag("agent.d/10-cloud.yaml", "interval: 30s\nreport: { notes: false }\ntrust: { allowed_signers: /etc/trueup/allowed_signers }\n"),
        ])
        .unwrap();
        assert_eq!(s.repo.as_deref(), Some("git://a/x.git"));
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.report.heartbeat, Duration::from_secs(7200));
        assert!(!s.report.notes);
        assert!(s.trust.required());
    }

    #[test]
    fn errors_name_file_line_column() {
        let e = parse_fragment(
            Path::new("/etc/trueup/agent.yaml"),
            "repo: x\nintervall: 5m\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert!(
            e.to_string().starts_with("/etc/trueup/agent.yaml:2:1:"),
            "{e}"
        );
        let e = settings(&[frag("a.yaml", "repo: /srv/x\ninterval: soon\n")]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("soon"), "{e}");
        // A repo that is no supported URL is found at load.
        let e = settings(&[frag("a.yaml", "repo: x\n")]).unwrap_err();
        assert_eq!((e.line, e.column), (1, 7), "{e}");
        assert!(e.message.starts_with("repo: "), "{e}");
        let e = settings(&[frag("a.yaml", "auth:\n  ssh_key: relative/key\n")]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn packages_section() {
        let s = settings(&[frag(
            "a.yaml",
            "packages:\n  backend: dnf\n  apt_lists_max_age: 2h\n  dnf_options: [--releasever=9, \"--setopt=reposdir=/r\"]\n",
        )])
        .unwrap();
        let p = s.package_settings();
        assert_eq!(p.backend, Some(crate::resource::package::BackendKind::Dnf));
        assert_eq!(p.apt_lists_max_age, Duration::from_secs(7200));
        assert_eq!(p.dnf_options, ["--releasever=9", "--setopt=reposdir=/r"]);
        let e = parse_fragment(Path::new("a.yaml"), "packages:\n  backend: yum\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e =
            settings(&[frag("a.yaml", "packages:\n  dnf_options:\n    - install\n")]).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("'install' is not a dnf option"), "{e}");
    }

    #[test]
    fn secrets_identity_is_an_absolute_path_with_a_default() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.secrets_identity,
            PathBuf::from("/etc/ssh/ssh_host_ed25519_key")
        );
        let s = settings(&[frag(
            "a.yaml",
            "secrets: { identity: /etc/trueup/host_key }\n",
        )])
        .unwrap();
        assert_eq!(s.secrets_identity, PathBuf::from("/etc/trueup/host_key"));
        let e = settings(&[frag("a.yaml", "secrets:\n  identity: host_key\n")]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("secrets.identity"), "{e}");
        let e = parse_fragment(Path::new("a.yaml"), "secrets:\n  identty: /k\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn branch_template_takes_facts() {
        let s = Settings::default();
        let mut f = crate::facts::Facts::gather();
        f.hostname = "web1".into();
        assert_eq!(s.branch_for(&f), "hosts/web1");
    }

    #[test]
    fn a_reports_repository_has_its_own_url_and_credentials() {
        let s = settings(&[frag(
            "a.yaml",
            "repo: ssh://git@git.example.com/fleet.git\nauth:\n  ssh_key: /etc/trueup/fleet_key\nreport:\n  repo: https://git.example.com/reports.git\n  auth:\n    token_file: /etc/trueup/reports_token\n",
        )])
        .unwrap();
        assert_eq!(
            s.report.repo.as_deref(),
            Some("https://git.example.com/reports.git")
        );
        assert_eq!(
            s.report.auth.token_file.as_deref(),
            Some(Path::new("/etc/trueup/reports_token"))
        );
        assert_eq!(s.report.auth.ssh_key, None);
        assert_eq!(
            s.auth.ssh_key.as_deref(),
            Some(Path::new("/etc/trueup/fleet_key"))
        );
        let e = settings(&[frag("a.yaml", "report:\n  repo: http://h/reports.git\n")]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 9), "{e}");
        assert!(e.message.contains("report.repo"), "{e}");
        assert!(e.message.contains("https"), "{e}");
        let e = settings(&[frag("a.yaml", "report:\n  repo: not a url\n")]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = settings(&[frag("a.yaml", "report:\n  auth:\n    ssh_key: key\n")]).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("report.auth.ssh_key"), "{e}");
        let e =
            parse_fragment(Path::new("a.yaml"), "report:\n  auth:\n    sshkey: /k\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }
}
