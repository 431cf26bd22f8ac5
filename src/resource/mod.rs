//! Resources: what trueup manages on a host, how each is observed and
//! compared with its desired state.
//!
//! Each kind pairs an `observe` that reads the machine with a pure `diff`
//! that turns (desired, observed) into drift and the action that repairs it,
//! so the comparison is tested with plain values.

use std::borrow::Cow;
pub mod accounts;
pub mod command;
pub mod directory;
#[cfg(test)]
pub mod fake;
pub mod file;
pub mod group;
pub mod node;
pub mod observe;
pub mod package;
pub mod service;
pub mod symlink;
pub mod tool;
pub mod user;

use serde::{Deserialize, Serialize};

use crate::error_class::{Classify, ErrorClass};

/// A failure of a backend (the package manager, systemd, the account
/// tools): the message a report shows, and whether retrying soon may help
/// (another apt holding the dpkg lock, the mirror unreachable) or not (a
/// package no source has).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub message: String,
    pub class: ErrorClass,
}

impl BackendError {
    pub fn new(message: impl Into<String>, class: ErrorClass) -> BackendError {
        BackendError {
            message: message.into(),
            class,
        }
    }

    /// A failure that retrying will not mend.
    pub fn permanent(message: impl Into<String>) -> BackendError {
        BackendError::new(message, ErrorClass::Permanent)
    }

    /// The same failure, its message put in `context` ("reading the
    /// installed packages: …"), its class kept.
    pub fn context(self, context: impl std::fmt::Display) -> BackendError {
        BackendError {
            message: format!("{context}: {}", self.message),
            class: self.class,
        }
    }
}

/// A tool's failure, classified by what it is (hung, missing) and by what
/// it printed (`error_class::classify_tool_output`); the message is its
/// whole chain on one line.
impl From<tool::ToolError> for BackendError {
    fn from(e: tool::ToolError) -> BackendError {
        BackendError::new(tool::chain(&e), e.class())
    }
}

/// A failure no backend classified (a file that cannot be written, a
/// declaration that cannot work): permanent, as words a package manager
/// prints that are not known to be transient are.
impl From<String> for BackendError {
    fn from(message: String) -> BackendError {
        BackendError::permanent(message)
    }
}

impl From<&str> for BackendError {
    fn from(message: &str) -> BackendError {
        BackendError::permanent(message)
    }
}

impl Classify for BackendError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// The tools that observe and change packages, units, users and groups
/// on this host, and whether commands run.
#[derive(Clone, Copy)]
pub struct Backends<'a> {
    /// `None` when no package is declared: no backend is chosen then.
    pub packages: Option<&'a dyn package::PackageBackend>,
    pub units: &'a dyn service::UnitControl,
    pub accounts: &'a dyn user::AccountControl,
    pub commands: command::Runner,
}

/// The kinds of resource a branch can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Package,
    Service,
    User,
    Group,
    Command,
    /// A kind this version does not know (a report from a newer host).
    #[serde(other)]
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
            Kind::Package => "package",
            Kind::Service => "service",
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Command => "command",
            Kind::Unknown => "unknown",
        }
    }
}

/// A resource's identity: its kind and its key (a path, a package or a unit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> ResourceId {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// One attribute of one resource that differs from the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub attribute: Attribute,
    /// Borrowed when fixed ("file", "absent"): a first apply of a
    /// thousand files makes two thousand of these.
    pub expected: Cow<'static, str>,
    pub actual: Cow<'static, str>,
    /// Unified diff from the actual to the expected content, for files whose
    /// content is text and not secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl Drift {
    pub fn new(
        attribute: Attribute,
        expected: impl Into<Cow<'static, str>>,
        actual: impl Into<Cow<'static, str>>,
    ) -> Drift {
        Drift {
            attribute,
            expected: expected.into(),
            actual: actual.into(),
            diff: None,
        }
    }
}

/// Which attribute drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribute {
    /// Present or absent, or the wrong kind of node (a symlink for a file).
    Presence,
    Content,
    Owner,
    Group,
    Mode,
    Target,
    Version,
    Enabled,
    State,
    Masked,
    Uid,
    Gid,
    /// Supplementary groups of a user.
    Groups,
    Home,
    Shell,
    /// A user's `~/.ssh/authorized_keys`.
    #[serde(rename = "authorized_keys")]
    AuthorizedKeys,
    /// A command that is due to run, and why.
    Run,
    /// An attribute this version does not know (a report from a newer host).
    #[serde(other)]
    Unknown,
}

impl Attribute {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribute::Presence => "presence",
            Attribute::Content => "content",
            Attribute::Owner => "owner",
            Attribute::Group => "group",
            Attribute::Mode => "mode",
            Attribute::Target => "target",
            Attribute::Version => "version",
            Attribute::Enabled => "enabled",
            Attribute::State => "state",
            Attribute::Masked => "masked",
            Attribute::Uid => "uid",
            Attribute::Gid => "gid",
            Attribute::Groups => "groups",
            Attribute::Home => "home",
            Attribute::Shell => "shell",
            Attribute::AuthorizedKeys => "authorized_keys",
            Attribute::Run => "run",
            Attribute::Unknown => "unknown",
        }
    }
}

/// Compares owner, group and mode with what is declared.
pub(crate) fn meta_drift(
    want: &accounts::WantedMeta,
    have: &node::Meta,
    accounts: &dyn accounts::Accounts,
    out: &mut Vec<Drift>,
) {
    if let Some((name, uid)) = &want.owner
        && *uid != have.uid
    {
        out.push(Drift::new(
            Attribute::Owner,
            name.clone(),
            accounts.user_name(have.uid),
        ));
    }
    if let Some((name, gid)) = &want.group
        && *gid != have.gid
    {
        out.push(Drift::new(
            Attribute::Group,
            name.clone(),
            accounts.group_name(have.gid),
        ));
    }
    if let Some(mode) = want.mode
        && mode != have.mode
    {
        out.push(Drift::new(
            Attribute::Mode,
            crate::desired::format_mode(mode),
            crate::desired::format_mode(have.mode),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_attributes_of_newer_hosts_read_as_unknown() {
        let d: Drift =
            serde_json::from_str(r#"{"attribute":"selinux_label","expected":"a","actual":"b"}"#)
                .unwrap();
        assert_eq!(d.attribute, Attribute::Unknown);
        let k: Kind = serde_json::from_str(r#""firewall_rule""#).unwrap();
        assert_eq!(k, Kind::Unknown);
        let k: Kind = serde_json::from_str(r#""user""#).unwrap();
        assert_eq!(k.as_str(), "user");
        assert_eq!(
            serde_json::to_string(&Attribute::AuthorizedKeys).unwrap(),
            r#""authorized_keys""#
        );
    }
}
