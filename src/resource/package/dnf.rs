//! The dnf backend (Fedora, RHEL, CentOS, Rocky, Alma): observes with one
//! `rpm -qa --qf`, installs with one `dnf install` and removes with one
//! `dnf remove`.
//!
//! Under `--root R` (other than `/`) dnf gets `--installroot=R` and rpm
//! `--root R`. Extra dnf options come from the agent configuration
//! (`packages.dnf_options`), for example a private repository setup. The
//! rpm database location comes from rpm's macros, which dnf and rpm read
//! alike (on Debian, `%_dbpath` defaults to `~/.rpmdb`: see the quirks at
//! the top of [`super::rpm`]).
//!
//! dnf exits 0 for "Nothing to do" and for removing a package that is not
//! installed, so every result is checked against a fresh `rpm -qa`
//! afterwards ([`super::verify`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    BackendKind, InstalledPackage, PackageAction, PackageBackend, PackageChange, is_host_root, rpm,
    verify,
};
use crate::error_class::ErrorClass;
use crate::resource::BackendError;
use crate::resource::tool;

/// The dnf backend for the system under `root`.
pub struct Dnf {
    root: PathBuf,
    options: Vec<String>,
}

impl Dnf {
    pub fn new(root: &Path, options: Vec<String>) -> Dnf {
        Dnf {
            root: root.to_path_buf(),
            options,
        }
    }

    fn dnf(&self, verb: &str, targets: &[String]) -> Result<(), BackendError> {
        tool::run(Command::new("dnf").args(dnf_args(&self.root, &self.options, verb, targets)))?;
        Ok(())
    }
}

/// Arguments for `dnf VERB TARGETS` on `root` with the configured options.
pub fn dnf_args(root: &Path, options: &[String], verb: &str, targets: &[String]) -> Vec<String> {
    let mut args = vec!["-y".to_string()];
    if !is_host_root(root) {
        args.push(format!("--installroot={}", root.display()));
    }
    args.extend(options.iter().cloned());
    args.push(verb.to_string());
    args.extend(targets.iter().cloned());
    args
}

/// Arguments for the `rpm -qa` that lists every package under `root`.
pub fn query_args(root: &Path) -> Vec<String> {
    let mut args = Vec::new();
    if !is_host_root(root) {
        args.push("--root".to_string());
        args.push(root.display().to_string());
    }
    args.extend(["-qa".to_string(), "--qf".into(), rpm::QUERY_FORMAT.into()]);
    args
}

/// The `dnf install` argument for a package: `name`, or `name-PIN` (dnf
/// matches globs against `[epoch:]version-release`, as the pin does).
pub fn install_target(name: &str, pin: Option<&str>) -> String {
    match pin {
        Some(p) => format!("{name}-{p}"),
        None => name.to_string(),
    }
}

impl PackageBackend for Dnf {
    fn kind(&self) -> BackendKind {
        BackendKind::Dnf
    }

    fn installed(&self) -> Result<Vec<InstalledPackage>, BackendError> {
        let out = tool::run(Command::new("rpm").args(query_args(&self.root)))?;
        rpm::parse_query(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| BackendError::permanent(format!("parsing rpm -qa output: {e}")))
    }

    fn change(&self, changes: &[PackageChange]) -> Vec<Result<(), BackendError>> {
        let installs: Vec<String> = changes
            .iter()
            .filter_map(|c| match &c.action {
                PackageAction::Install { version } => {
                    Some(install_target(&c.name, version.as_deref()))
                }
                PackageAction::Remove => None,
            })
            .collect();
        let removes: Vec<String> = changes
            .iter()
            .filter(|c| c.action == PackageAction::Remove)
            .map(|c| c.name.clone())
            .collect();
        let mut errors = Vec::new();
        if !installs.is_empty()
            && let Err(e) = self.dnf("install", &installs)
        {
            errors.push(e);
        }
        if !removes.is_empty()
            && let Err(e) = self.dnf("remove", &removes)
        {
            errors.push(e);
        }
        let tool_error = (!errors.is_empty()).then(|| joined(&errors));
        verify(
            changes,
            vec![None; changes.len()],
            tool_error.as_ref(),
            self.installed(),
        )
    }
}

/// The errors of the install and the remove as one: both messages, and
/// transient when either is (a retry redoes both).
fn joined(errors: &[BackendError]) -> BackendError {
    let message = errors
        .iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let class = if errors.iter().any(|e| e.class == ErrorClass::Transient) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    };
    BackendError::new(message, class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installroot_only_for_another_root() {
        let opts = vec!["--setopt=reposdir=/x".to_string()];
        assert_eq!(
            dnf_args(Path::new("/"), &opts, "install", &["a".into()]),
            ["-y", "--setopt=reposdir=/x", "install", "a"]
        );
        assert_eq!(
            dnf_args(
                Path::new("/tmp/r"),
                &[],
                "remove",
                &["a".into(), "b".into()]
            ),
            ["-y", "--installroot=/tmp/r", "remove", "a", "b"]
        );
    }

    #[test]
    fn rpm_query_takes_the_root() {
        assert_eq!(query_args(Path::new("/"))[0], "-qa");
        let a = query_args(Path::new("/tmp/r"));
        assert_eq!(&a[..3], ["--root", "/tmp/r", "-qa"]);
        assert_eq!(a.last().unwrap(), rpm::QUERY_FORMAT);
    }

    #[test]
    fn pins_become_name_version_globs() {
        assert_eq!(install_target("a", None), "a");
        assert_eq!(install_target("a", Some("1.0-*")), "a-1.0-*");
        assert_eq!(install_target("a", Some("2:3.1.*")), "a-2:3.1.*");
    }
}
