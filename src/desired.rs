//! The desired state: what a rendered host branch says the machine must be.
//!
//! Built by `spec` from a tree, fully rendered and validated, so that nothing
//! on the host is touched until every resource is known to be well formed.
//! Paths are absolute host paths, not yet prefixed by `--root`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

/// Everything a host branch declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub files: BTreeMap<PathBuf, FileSpec>,
    pub directories: BTreeMap<PathBuf, DirectorySpec>,
    pub symlinks: BTreeMap<PathBuf, SymlinkSpec>,
    pub packages: BTreeMap<String, PackageSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
}

impl DesiredState {
    /// Number of declared resources.
    pub fn len(&self) -> usize {
        self.files.len()
            + self.directories.len()
            + self.symlinks.len()
            + self.packages.len()
            + self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// `None` when the file must be absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<FileContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_mode")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    pub notify_action: NotifyAction,
    /// Content never appears in diffs, reports or logs.
    pub secret: bool,
}

/// Rendered file content and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileContent {
    /// Shared: every file rendered from one template holds the same bytes.
    #[serde(skip)]
    pub bytes: Arc<[u8]>,
    /// `content`, `template:PATH` or `source:PATH`, for messages.
    pub origin: String,
}

/// What a change to a file does to the services it notifies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyAction {
    #[default]
    Restart,
    Reload,
}

/// A directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectorySpec {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_mode")]
    pub mode: Option<u32>,
}

/// A symbolic link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymlinkSpec {
    /// `None` when the link must be absent.
    pub target: Option<PathBuf>,
}

/// A package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageSpec {
    pub present: bool,
    /// A version or glob pin such as `7.88.*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A systemd unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceRunState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked: Option<bool>,
    /// The declared package that ships the unit: when it fails, the service
    /// is skipped. `package:`, or else a declared package named like the
    /// unit without its suffix (`nginx` for `nginx.service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceRunState {
    Running,
    Stopped,
}

/// Formats a permission mode the way people write it: `0644`.
pub fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

fn ser_mode<S: serde::Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => s.serialize_str(&format_mode(*m)),
        None => s.serialize_none(),
    }
}
