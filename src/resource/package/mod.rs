//! Package resources: the backend (apt or dnf) chosen from os-release.
//!
//! A backend observes every installed package in one batch (one read of the
//! dpkg status database, or one `rpm -qa`) and changes packages in batches
//! (one `apt-get` call; one `dnf install` and one `dnf remove`). The
//! comparison, [`diff`], is pure.

pub mod apt;
pub mod dnf;
pub mod dpkg;
pub mod rpm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Attribute, BackendError, Drift};
use crate::desired::PackageSpec;

/// One package as the package database records it.
///
/// Both backends produce this type: [`dpkg::parse_status`] from
/// `/var/lib/dpkg/status` and [`rpm::parse_query`] from `rpm -qa`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstalledPackage {
    /// Package name, without architecture qualifier (`libc6`, not `libc6:amd64`).
    pub name: String,
    /// Version as the backend writes it: Debian `[epoch:]upstream[-revision]`
    /// (`7.88.1-10+deb12u5`, `2:9.0.1378-2`), or rpm `[epoch:]version-release`
    /// with a zero epoch left out (`1.0-1`, `2:3.1.4-5.el9`).
    pub version: String,
    /// Architecture (`amd64`, `all`, `x86_64`, `noarch`).
    pub arch: String,
    /// Whether the package's files are on the machine and configured. A dpkg
    /// entry that only remembers configuration files, or whose installation
    /// was interrupted, is listed with `installed: false`.
    pub installed: bool,
}

/// Whether an installed `version` satisfies a version pin from the spec.
///
/// The pin is a glob: `*` matches any run of characters (including none),
/// `?` matches exactly one character, and every other character matches
/// itself, so a pin without wildcards is an exact comparison. Matching is
/// anchored at both ends: `7.88.*` matches `7.88.1-10+deb12u5` but not
/// `17.88.1`.
///
/// Epochs are what operators forget: when the pin has no `:` and the version
/// carries an epoch (`2:9.0.1378-2`), the pin is also tried against the
/// version without it, so `9.0.*` matches. A pin that names an epoch is
/// compared against the full version only.
pub fn version_matches(pin: &str, version: &str) -> bool {
    if glob_matches(pin, version) {
        return true;
    }
    if pin.contains(':') {
        return false;
    }
    match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            glob_matches(pin, rest)
        }
        _ => false,
    }
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    crate::wildcard::matches(pattern, text, crate::wildcard::Case::Sensitive)
}

/// The package manager that converges packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Apt,
    Dnf,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Apt => "apt",
            BackendKind::Dnf => "dnf",
        }
    }

    /// The backend for an os-release `ID` and `ID_LIKE`: the ID decides when
    /// it is known, then the first known ID_LIKE word (Linux Mint is
    /// `ID=linuxmint ID_LIKE="ubuntu debian"`, Rocky `ID_LIKE="rhel centos
    /// fedora"`).
    pub fn for_os(id: &str, id_like: &[String]) -> Option<BackendKind> {
        std::iter::once(id)
            .chain(id_like.iter().map(String::as_str))
            .find_map(|word| match word {
                "debian" | "ubuntu" => Some(BackendKind::Apt),
                "fedora" | "rhel" | "centos" | "rocky" | "almalinux" => Some(BackendKind::Dnf),
                _ => None,
            })
    }
}

/// How packages are managed on this host (the `packages:` section of the
/// agent configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSettings {
    /// Forces a backend; `None` chooses from os-release.
    pub backend: Option<BackendKind>,
    /// `apt-get update` runs before installing when the package lists are
    /// older than this.
    pub apt_lists_max_age: Duration,
    /// Extra options for every dnf call (a repository setup, `--releasever`).
    pub dnf_options: Vec<String>,
}

impl Default for PackageSettings {
    fn default() -> PackageSettings {
        PackageSettings {
            backend: None,
            apt_lists_max_age: Duration::from_secs(24 * 3600),
            dnf_options: vec![],
        }
    }
}

/// Chooses and builds the backend for a host whose os-release says `id`
/// and `id_like`, managing packages under `root`.
pub fn backend(
    settings: &PackageSettings,
    id: &str,
    id_like: &[String],
    root: &Path,
) -> Result<Box<dyn PackageBackend>, String> {
    let kind = match settings.backend {
        Some(k) => k,
        None => BackendKind::for_os(id, id_like).ok_or_else(|| {
            format!(
                "packages are declared, but trueup has no package backend for this OS \
                 (os-release ID '{id}', ID_LIKE '{}'): apt serves debian and ubuntu, dnf \
                 serves fedora, rhel, centos, rocky and almalinux; set packages.backend \
                 in the agent configuration to choose one",
                id_like.join(" ")
            )
        })?,
    };
    Ok(match kind {
        BackendKind::Apt => Box::new(apt::Apt::new(root, settings.apt_lists_max_age)),
        BackendKind::Dnf => Box::new(dnf::Dnf::new(root, settings.dnf_options.clone())),
    })
}

/// What converging one package takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageAction {
    /// Install it, or change its version to one matching `version`.
    Install {
        version: Option<String>,
    },
    Remove,
}

impl PackageAction {
    /// A short verb for reports: "install", "install 1.2.*", "remove".
    pub fn describe(&self) -> String {
        match self {
            PackageAction::Install { version: None } => "install".into(),
            PackageAction::Install { version: Some(v) } => format!("install {v}"),
            PackageAction::Remove => "remove".into(),
        }
    }
}

/// One package to change, as a backend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    pub action: PackageAction,
}

/// A package manager: observes every package at once and changes many in
/// a batch.
pub trait PackageBackend {
    fn kind(&self) -> BackendKind;
    /// Every package the database knows, in one read or one query.
    fn installed(&self) -> Result<Vec<InstalledPackage>, BackendError>;
    /// Carries out `changes` in as few calls as the tool allows; one result
    /// per change, in order. A change is reported done only when the
    /// package database says so afterwards.
    fn change(&self, changes: &[PackageChange]) -> Vec<Result<(), BackendError>>;
}

/// The installed entries named `name` (several for multiarch or
/// install-only packages).
pub fn installed_named<'a>(all: &'a [InstalledPackage], name: &str) -> Vec<&'a InstalledPackage> {
    all.iter()
        .filter(|p| p.installed && p.name == name)
        .collect()
}

/// Compares a declared package with the installed entries of that name.
pub fn diff(
    spec: &PackageSpec,
    installed: &[&InstalledPackage],
) -> (Vec<Drift>, Option<PackageAction>) {
    let versions = || {
        let mut v: Vec<&str> = installed.iter().map(|p| p.version.as_str()).collect();
        v.dedup();
        v.join(", ")
    };
    if !spec.present {
        if installed.is_empty() {
            return (vec![], None);
        }
        let drift = Drift::new(
            Attribute::Presence,
            "absent",
            format!("installed ({})", versions()),
        );
        return (vec![drift], Some(PackageAction::Remove));
    }
    let install = || PackageAction::Install {
        version: spec.version.clone(),
    };
    if installed.is_empty() {
        let expected = match &spec.version {
            Some(v) => format!("installed ({v})"),
            None => "installed".into(),
        };
        return (
            vec![Drift::new(Attribute::Presence, expected, "absent")],
            Some(install()),
        );
    }
    match &spec.version {
        Some(pin) if !installed.iter().any(|p| version_matches(pin, &p.version)) => (
            vec![Drift::new(Attribute::Version, pin.clone(), versions())],
            Some(install()),
        ),
        _ => (vec![], None),
    }
}

/// Whether the database now holds what `change` asked for.
pub fn change_done(change: &PackageChange, all: &[InstalledPackage]) -> bool {
    let found = installed_named(all, &change.name);
    match &change.action {
        PackageAction::Remove => found.is_empty(),
        PackageAction::Install { version: None } => !found.is_empty(),
        PackageAction::Install { version: Some(pin) } => {
            found.iter().any(|p| version_matches(pin, &p.version))
        }
    }
}

/// Per-change results after a batch: a change the database shows done
/// succeeded whatever the tool said; otherwise the tool's error, or a
/// plain statement of what is still wrong (permanent: the tool said it
/// did what it did not). `earlier` holds results decided before the batch
/// ran (a package no source has), kept as they are.
pub fn verify(
    changes: &[PackageChange],
    earlier: Vec<Option<Result<(), BackendError>>>,
    tool_error: Option<&BackendError>,
    after: Result<Vec<InstalledPackage>, BackendError>,
) -> Vec<Result<(), BackendError>> {
    changes
        .iter()
        .zip(earlier)
        .map(|(change, earlier)| {
            if let Some(r) = earlier {
                return r;
            }
            let all = match &after {
                Ok(all) => all,
                Err(e) => {
                    return Err(e
                        .clone()
                        .context("could not read the package database afterwards"));
                }
            };
            if change_done(change, all) {
                return Ok(());
            }
            if let Some(e) = tool_error {
                return Err(e.clone());
            }
            let now: Vec<&str> = installed_named(all, &change.name)
                .iter()
                .map(|p| p.version.as_str())
                .collect();
            Err(BackendError::permanent(match &change.action {
                PackageAction::Remove => format!(
                    "the package manager succeeded, but {} is still installed ({})",
                    change.name,
                    now.join(", ")
                ),
                PackageAction::Install { version } => format!(
                    "the package manager succeeded, but {} is {}{}",
                    change.name,
                    if now.is_empty() {
                        "not installed".to_string()
                    } else {
                        format!("at {}", now.join(", "))
                    },
                    version
                        .as_deref()
                        .map(|v| format!(", not {v}"))
                        .unwrap_or_default()
                ),
            }))
        })
        .collect()
}

/// `root` joined with an absolute path inside it.
pub(crate) fn under_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Whether `root` is the running system.
pub(crate) fn is_host_root(root: &Path) -> bool {
    root == Path::new("/")
}

#[cfg(test)]
mod tests {
    use super::version_matches;

    #[test]
    fn exact_pin_matches_only_itself() {
        assert!(version_matches("7.88.1-10+deb12u5", "7.88.1-10+deb12u5"));
        assert!(!version_matches("7.88.1-10+deb12u5", "7.88.1-10+deb12u12"));
        assert!(!version_matches("7.88.1", "7.88.1-10"));
        assert!(!version_matches("", "1.0"));
        assert!(version_matches("", ""));
    }

    #[test]
    fn star_matches_any_run() {
        assert!(version_matches("7.88.*", "7.88.1-10+deb12u5"));
        assert!(version_matches("7.88.*", "7.88."));
        assert!(!version_matches("7.88.*", "7.89.0-1"));
        assert!(!version_matches("7.88.*", "17.88.1"));
        assert!(version_matches("*", "anything"));
        assert!(version_matches("*", ""));
        assert!(version_matches("*deb12*", "7.88.1-10+deb12u5"));
        assert!(version_matches("1.*-*", "1.0-1"));
        assert!(!version_matches("1.*-*", "1.0"));
        assert!(version_matches("**1", "1"));
    }

    #[test]
    fn star_backtracks() {
        assert!(version_matches("*1-1", "1.1-1-1"));
        assert!(version_matches("a*b*c", "aXbYbZc"));
        assert!(!version_matches("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn question_mark_matches_one_character() {
        assert!(version_matches("1.?-1", "1.0-1"));
        assert!(!version_matches("1.?-1", "1.10-1"));
        assert!(!version_matches("1.0?", "1.0"));
        assert!(version_matches("1.0-é?", "1.0-éa"));
    }

    #[test]
    fn epoch_may_be_left_out_of_the_pin() {
        assert!(version_matches("9.0.*", "2:9.0.1378-2"));
        assert!(version_matches("2:9.0.*", "2:9.0.1378-2"));
        assert!(version_matches("9.0.1378-2", "2:9.0.1378-2"));
        assert!(!version_matches("1:9.0.*", "2:9.0.1378-2"));
        assert!(!version_matches("9.0.*", "x:9.0.1378-2"));
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            installed: true,
        }
    }

    fn spec(present: bool, version: Option<&str>) -> PackageSpec {
        PackageSpec {
            present,
            version: version.map(str::to_string),
        }
    }

    #[test]
    fn backend_from_os_release() {
        let like = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(BackendKind::for_os("debian", &[]), Some(BackendKind::Apt));
        assert_eq!(
            BackendKind::for_os("ubuntu", &like(&["debian"])),
            Some(BackendKind::Apt)
        );
        assert_eq!(
            BackendKind::for_os("linuxmint", &like(&["ubuntu", "debian"])),
            Some(BackendKind::Apt)
        );
        assert_eq!(BackendKind::for_os("fedora", &[]), Some(BackendKind::Dnf));
        for id in ["rhel", "centos", "rocky", "almalinux"] {
            assert_eq!(BackendKind::for_os(id, &[]), Some(BackendKind::Dnf), "{id}");
        }
        assert_eq!(
            BackendKind::for_os("ol", &like(&["fedora"])),
            Some(BackendKind::Dnf)
        );
        assert_eq!(BackendKind::for_os("arch", &[]), None);
        assert_eq!(BackendKind::for_os("", &[]), None);
    }

    #[test]
    fn unknown_os_is_a_clear_error_unless_forced() {
        let s = PackageSettings::default();
        let err = backend(&s, "arch", &[], Path::new("/")).err().unwrap();
        assert!(
            err.contains("'arch'") && err.contains("packages.backend"),
            "{err}"
        );
        let forced = PackageSettings {
            backend: Some(BackendKind::Dnf),
            ..PackageSettings::default()
        };
        assert_eq!(
            backend(&forced, "arch", &[], Path::new("/"))
                .unwrap()
                .kind(),
            BackendKind::Dnf
        );
    }

    #[test]
    fn missing_package_is_installed_with_its_pin() {
        let (d, a) = diff(&spec(true, Some("1.2.*")), &[]);
        assert_eq!(
            d,
            vec![Drift::new(
                Attribute::Presence,
                "installed (1.2.*)",
                "absent"
            )]
        );
        assert_eq!(
            a,
            Some(PackageAction::Install {
                version: Some("1.2.*".into())
            })
        );
        assert_eq!(a.unwrap().describe(), "install 1.2.*");
    }

    #[test]
    fn installed_package_in_sync_with_or_without_pin() {
        let p = pkg("curl", "7.88.1-10+deb12u5");
        assert_eq!(diff(&spec(true, None), &[&p]), (vec![], None));
        assert_eq!(diff(&spec(true, Some("7.88.*")), &[&p]), (vec![], None));
    }

    #[test]
    fn wrong_version_drifts_on_version() {
        let p = pkg("curl", "7.74.0-1.3");
        let (d, a) = diff(&spec(true, Some("7.88.*")), &[&p]);
        assert_eq!(
            d,
            vec![Drift::new(Attribute::Version, "7.88.*", "7.74.0-1.3")]
        );
        assert!(matches!(a, Some(PackageAction::Install { .. })));
    }

    #[test]
    fn one_matching_multiarch_entry_is_enough() {
        let a = pkg("libc6", "2.36-9");
        let b = pkg("libc6", "2.36-9");
        assert_eq!(diff(&spec(true, Some("2.36-*")), &[&a, &b]), (vec![], None));
    }

    #[test]
    fn absent_package_is_removed() {
        let p = pkg("telnet", "0.17+2.4-2");
        let (d, a) = diff(&spec(false, None), &[&p]);
        assert_eq!(
            d,
            vec![Drift::new(
                Attribute::Presence,
                "absent",
                "installed (0.17+2.4-2)"
            )]
        );
        assert_eq!(a, Some(PackageAction::Remove));
        assert_eq!(diff(&spec(false, None), &[]), (vec![], None));
    }

    #[test]
    fn removed_with_config_files_kept_counts_as_absent() {
        let mut p = pkg("telnet", "0.17+2.4-2");
        p.installed = false;
        let all = vec![p];
        assert!(installed_named(&all, "telnet").is_empty());
        let change = PackageChange {
            name: "telnet".into(),
            action: PackageAction::Remove,
        };
        assert!(change_done(&change, &all));
    }

    #[test]
    fn verify_trusts_the_database_over_the_tool() {
        let changes = vec![
            PackageChange {
                name: "a".into(),
                action: PackageAction::Install { version: None },
            },
            PackageChange {
                name: "b".into(),
                action: PackageAction::Install {
                    version: Some("2.*".into()),
                },
            },
            PackageChange {
                name: "c".into(),
                action: PackageAction::Remove,
            },
            PackageChange {
                name: "d".into(),
                action: PackageAction::Install { version: None },
            },
        ];
        let after = vec![pkg("a", "1.0"), pkg("b", "1.5"), pkg("c", "1.0")];
        let earlier = vec![None, None, None, Some(Err("d: not in any source".into()))];
        // The tool failed: a got installed anyway, b and c did not change,
        // and keep the tool's error with its class.
        let boom = BackendError::new("E: boom", crate::error_class::ErrorClass::Transient);
        let r = verify(&changes, earlier.clone(), Some(&boom), Ok(after.clone()));
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1], Err(boom.clone()));
        assert_eq!(r[2], Err(boom));
        assert_eq!(r[3], Err("d: not in any source".into()));
        // The tool said yes, the database says otherwise.
        let r = verify(&changes, earlier, None, Ok(after));
        assert!(
            r[1].as_ref()
                .unwrap_err()
                .message
                .contains("b is at 1.5, not 2.*"),
            "{r:?}"
        );
        assert!(
            r[2].as_ref()
                .unwrap_err()
                .message
                .contains("c is still installed"),
            "{r:?}"
        );
    }
}
