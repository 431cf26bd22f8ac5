//! The apt backend (Debian, Ubuntu): observes by reading the dpkg status
//! database in one pass, changes packages with one `apt-get` call.
//!
//! What was checked on Debian 12 (apt 2.6) and shapes this module:
//!
//! - `apt-get install` takes `name=VERSION` and, since apt 1.x, a glob
//!   there (`curl=7.88.*`, `curl=*deb12u5`), picking the first match in the
//!   cache's version order. Its glob is not [`version_matches`]: it is
//!   case-insensitive and an epoch must be written. So pins are resolved
//!   here, with one `apt-cache madison` for every package to install, to the
//!   newest listed version that [`version_matches`] accepts, and apt gets
//!   that exact version. No match is a per-package error naming what the
//!   sources offer.
//! - `apt-cache madison A B C` prints one `name | version | source` line per
//!   version a source offers, newest first, and nothing (not even an error,
//!   exit 0) for a name no source has; that is how an unknown package is
//!   recognised. An unknown package, a pin no offered version matches, or
//!   lists older than `packages.apt_lists_max_age` trigger one
//!   `apt-get update` before installing (never for removals alone).
//! - `apt-get install NAME-` removes NAME (keeping its configuration), so
//!   installs and removals go in one call. `--allow-downgrades` lets a pin
//!   move a package back; held packages stay an error.
//! - Freshness of the lists: `apt-get update` rewrites files in
//!   `/var/lib/apt/lists/partial` on every run, even when nothing changed
//!   (the list files keep the server's modification time), so the lists'
//!   age is the newest modification time of `lists/` and `lists/partial/`.
//! - apt has no install root (`-o RootDir=` changes where apt reads its
//!   configuration, not where dpkg installs safely), so under `--root R`
//!   other than `/` this backend reads `R/var/lib/dpkg/status` but refuses
//!   to install or remove, per package, with a clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{
    BackendKind, InstalledPackage, PackageAction, PackageBackend, PackageChange, dpkg,
    is_host_root, under_root, verify, version_matches,
};
use crate::error_class::{Classify, ErrorClass};
use crate::resource::BackendError;
use crate::resource::tool;

/// How long apt-get waits for another apt or dpkg (unattended-upgrades) to
/// let go of the dpkg lock.
const LOCK_TIMEOUT_SECS: u32 = 120;

/// The apt backend for the system under `root`.
pub struct Apt {
    root: PathBuf,
    lists_max_age: Duration,
}

impl Apt {
    pub fn new(root: &Path, lists_max_age: Duration) -> Apt {
        Apt {
            root: root.to_path_buf(),
            lists_max_age,
        }
    }

    fn status_path(&self) -> PathBuf {
        under_root(&self.root, dpkg::STATUS_PATH)
    }

    /// `apt-cache madison` for `names`: the versions each source offers.
    fn madison(&self, names: &[&str]) -> Result<BTreeMap<String, Vec<String>>, BackendError> {
        let out = tool::run(Command::new("apt-cache").arg("madison").args(names))?;
        Ok(parse_madison(&String::from_utf8_lossy(&out.stdout)))
    }

    fn update(&self) -> Result<(), BackendError> {
        tool::run(apt_get().args(["update", "-q"]))?;
        Ok(())
    }

    fn lists_stale(&self) -> bool {
        match lists_age(
            &under_root(&self.root, "/var/lib/apt/lists"),
            SystemTime::now(),
        ) {
            Some(age) => age > self.lists_max_age,
            None => true,
        }
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("APT_LISTCHANGES_FRONTEND", "none")
        // Ubuntu's needrestart would otherwise ask which services to restart.
        .env("NEEDRESTART_MODE", "a");
    cmd
}

impl PackageBackend for Apt {
    fn kind(&self) -> BackendKind {
        BackendKind::Apt
    }

    fn installed(&self) -> Result<Vec<InstalledPackage>, BackendError> {
        dpkg::read_status(&self.status_path())
            .map_err(|e| BackendError::new(tool::chain(&e), e.class()))
    }

    fn change(&self, changes: &[PackageChange]) -> Vec<Result<(), BackendError>> {
        if !is_host_root(&self.root) {
            let why = format!(
                "apt has no install root: trueup does not install or remove packages \
                 under --root {} (it only reads {})",
                self.root.display(),
                self.status_path().display()
            );
            return changes
                .iter()
                .map(|_| Err(BackendError::permanent(why.clone())))
                .collect();
        }
        let mut earlier: Vec<Option<Result<(), BackendError>>> = vec![None; changes.len()];
        let installs: Vec<&str> = changes
            .iter()
            .filter(|c| matches!(c.action, PackageAction::Install { .. }))
            .map(|c| c.name.as_str())
            .collect();
        let mut offered = BTreeMap::new();
        let mut updated = None;
        if !installs.is_empty() {
            let first = self.madison(&installs);
            let unresolved = match &first {
                Ok(o) => changes.iter().any(|c| match &c.action {
                    PackageAction::Install { version } => {
                        resolve(&c.name, version.as_deref(), o).is_err()
                    }
                    PackageAction::Remove => false,
                }),
                Err(_) => true,
            };
            offered = first.unwrap_or_default();
            if unresolved || self.lists_stale() {
                updated = Some(self.update());
                match self.madison(&installs) {
                    Ok(o) => offered = o,
                    Err(e) => {
                        for (i, c) in changes.iter().enumerate() {
                            if matches!(c.action, PackageAction::Install { .. }) {
                                earlier[i] = Some(Err(e.clone()));
                            }
                        }
                    }
                }
            }
        }
        let mut args = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if earlier[i].is_some() {
                continue;
            }
            match &c.action {
                PackageAction::Remove => args.push(format!("{}-", c.name)),
                PackageAction::Install { version } => {
                    match resolve(&c.name, version.as_deref(), &offered) {
                        Ok(arg) => args.push(arg),
                        Err(e) => earlier[i] = Some(Err(unresolved(&e, updated.as_ref()))),
                    }
                }
            }
        }
        let tool_error = if args.is_empty() {
            None
        } else {
            tool::run(apt_get().args(install_args(&args)))
                .err()
                .map(BackendError::from)
        };
        verify(changes, earlier, tool_error.as_ref(), self.installed())
    }
}

/// A package (or pin) the apt sources do not offer, and how the
/// `apt-get update` before went, if one ran: permanent, unless that update
/// failed for a reason that passes (the mirror unreachable), when the
/// lists may only lack it until the next update.
pub fn unresolved(error: &str, update: Option<&Result<(), BackendError>>) -> BackendError {
    match update {
        None => BackendError::permanent(error),
        Some(Ok(())) => BackendError::permanent(format!("{error} (after apt-get update)")),
        Some(Err(e)) => BackendError::new(
            format!("{error} (apt-get update failed: {e})"),
            match e.class {
                ErrorClass::Transient => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
        ),
    }
}

/// The `apt-get` arguments that install and remove `targets` (`name`,
/// `name=version`, `name-`) in one noninteractive call, without
/// recommends, keeping changed configuration files.
pub fn install_args(targets: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("DPkg::Lock::Timeout={LOCK_TIMEOUT_SECS}"));
    args.extend(targets.iter().cloned());
    args
}

/// The `apt-get install` argument for one package: `name`, or
/// `name=VERSION` with the newest offered version matching `pin`.
pub fn resolve(
    name: &str,
    pin: Option<&str>,
    offered: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let Some(versions) = offered.get(name) else {
        return Err(format!("package {name} is not in any apt source"));
    };
    let Some(pin) = pin else {
        return Ok(name.to_string());
    };
    match versions.iter().find(|v| version_matches(pin, v)) {
        Some(v) => Ok(format!("{name}={v}")),
        None => Err(format!(
            "no version of {name} matches {pin}; the apt sources offer {}",
            versions.join(", ")
        )),
    }
}

/// Parses `apt-cache madison` output into the versions each package is
/// offered in, in output order (newest first), without duplicates. Source
/// package lines (`… Sources`) are left out.
pub fn parse_madison(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split('|').map(str::trim);
        let (Some(name), Some(version), Some(source)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if name.is_empty() || version.is_empty() || source.ends_with(" Sources") {
            continue;
        }
        let versions = out.entry(name.to_string()).or_default();
        if !versions.iter().any(|v| v == version) {
            versions.push(version.to_string());
        }
    }
    out
}

/// How long ago `apt-get update` last ran, judged from the lists directory
/// (see the module documentation); `None` when there are no lists.
pub fn lists_age(lists: &Path, now: SystemTime) -> Option<Duration> {
    let newest = [lists.to_path_buf(), lists.join("partial")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()?;
    Some(now.duration_since(newest).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache madison curl hello libc6 nosuchpkg tzdata` on Debian 12.
    const MADISON: &str = include_str!("../../../tests/fixtures/apt/madison-debian12.txt");

    #[test]
    fn madison_lists_offered_versions_newest_first() {
        let m = parse_madison(MADISON);
        assert_eq!(
            m["curl"],
            vec!["7.88.1-10+deb12u15".to_string(), "7.88.1-10+deb12u5".into()]
        );
        assert_eq!(m["hello"], vec!["2.10-3".to_string()]);
        assert_eq!(m["tzdata"].len(), 3);
        assert!(
            !m.contains_key("nosuchpkg"),
            "unknown packages print nothing"
        );
    }

    #[test]
    fn madison_skips_sources_and_junk() {
        let m = parse_madison(
            "  foo | 1.0 | http://x bookworm/main Sources\n  foo | 1.0 | http://x bookworm/main amd64 Packages\n\
             garbage\n  foo | 1.0 | http://y bookworm/main amd64 Packages\n",
        );
        assert_eq!(m["foo"], vec!["1.0".to_string()]);
    }

    #[test]
    fn pins_resolve_to_the_newest_matching_version() {
        let m = parse_madison(MADISON);
        assert_eq!(resolve("hello", None, &m), Ok("hello".into()));
        assert_eq!(
            resolve("curl", Some("7.88.*"), &m),
            Ok("curl=7.88.1-10+deb12u15".into())
        );
        assert_eq!(
            resolve("curl", Some("*deb12u5"), &m),
            Ok("curl=7.88.1-10+deb12u5".into())
        );
        let err = resolve("curl", Some("8.*"), &m).unwrap_err();
        assert!(err.contains("no version of curl matches 8.*"), "{err}");
        assert!(err.contains("7.88.1-10+deb12u5"), "{err}");
        let err = resolve("nosuchpkg", None, &m).unwrap_err();
        assert!(err.contains("not in any apt source"), "{err}");
    }

    #[test]
    fn epoch_less_pin_matches_an_epoch_version() {
        let mut m = BTreeMap::new();
        m.insert("vim".to_string(), vec!["2:9.0.1378-2".to_string()]);
        assert_eq!(
            resolve("vim", Some("9.0.*"), &m),
            Ok("vim=2:9.0.1378-2".into())
        );
    }

    #[test]
    fn install_and_remove_in_one_noninteractive_call() {
        let args = install_args(&["a".into(), "b=1.0-1".into(), "c-".into()]);
        assert_eq!(args[0], "install");
        for want in [
            "-y",
            "--no-install-recommends",
            "Dpkg::Options::=--force-confold",
            "Dpkg::Options::=--force-confdef",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert_eq!(&args[args.len() - 3..], ["a", "b=1.0-1", "c-"]);
    }

    #[test]
    fn lists_age_is_that_of_the_newest_of_lists_and_partial() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lists_age(&dir.path().join("nope"), SystemTime::now()), None);
        std::fs::create_dir(dir.path().join("partial")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let age = lists_age(dir.path(), later).unwrap();
        assert!(
            age >= Duration::from_secs(3590) && age <= Duration::from_secs(3700),
            "{age:?}"
        );
    }

    #[test]
    fn a_package_missing_after_an_update_that_could_not_reach_the_mirror_is_transient() {
        let missing = "package hello is not in any apt source";
        let e = unresolved(missing, None);
        assert_eq!(
            (e.message.as_str(), e.class),
            (missing, ErrorClass::Permanent)
        );
        let e = unresolved(missing, Some(&Ok(())));
        assert_eq!(
            (e.message.as_str(), e.class),
            (
                "package hello is not in any apt source (after apt-get update)",
                ErrorClass::Permanent
            )
        );
        let offline = BackendError::from(tool::ToolError::Failed {
            command: "apt-get update -q".into(),
            status: "exit status 100".into(),
            output: "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  \
                     Temporary failure resolving 'deb.debian.org'"
                .into(),
        });
        let e = unresolved(missing, Some(&Err(offline.clone())));
        assert_eq!(
            e.message,
            format!("package hello is not in any apt source (apt-get update failed: {offline})")
        );
        assert_eq!(e.class, ErrorClass::Transient);
        let broken = BackendError::permanent("E: Malformed entry 1 in list file");
        assert_eq!(
            unresolved(missing, Some(&Err(broken))).class,
            ErrorClass::Permanent
        );
    }

    #[test]
    fn no_install_under_another_root() {
        let apt = Apt::new(Path::new("/tmp/some-root"), Duration::from_secs(60));
        let r = apt.change(&[PackageChange {
            name: "hello".into(),
            action: PackageAction::Install { version: None },
        }]);
        let err = r[0].as_ref().unwrap_err();
        assert!(err.message.contains("--root /tmp/some-root"), "{err}");
        assert_eq!(err.class, ErrorClass::Permanent);
    }
}
