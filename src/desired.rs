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
    /// Checks run after a change; not a resource (not counted by `len`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthSpec>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, GroupSpec>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, UserSpec>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub commands: BTreeMap<String, CommandSpec>,
}

impl DesiredState {
    /// Lets go of the rendered bytes of every file but those `keep` names
    /// (each file keeps an empty content, its origin and whether it could
    /// be decrypted): once a plan is made, its steps carry the bytes that
    /// are written, and a first apply then holds each file's content only
    /// until the file is staged. A file the plan defers (its owner comes
    /// with this run) is compared again from its spec when its turn
    /// comes: it must be kept.
    pub fn release_file_contents(&mut self, keep: &dyn Fn(&std::path::Path) -> bool) {
        let empty: std::sync::Arc<[u8]> = std::sync::Arc::from(&b""[..]);
        for (path, spec) in self.files.iter_mut() {
            if keep(path) {
                continue;
            }
            if let Some(c) = spec.content.as_mut() {
                c.bytes = empty.clone();
                c.ahead = None;
            }
        }
    }

    /// Number of declared resources.
    pub fn len(&self) -> usize {
        self.files.len()
            + self.directories.len()
            + self.symlinks.len()
            + self.packages.len()
            + self.services.len()
            + self.groups.len()
            + self.users.len()
            + self.commands.len()
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
    /// Per-unit actions of the mapping form (`notify: { UNIT: reload }`);
    /// a unit not in here gets `notify_action`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notify_actions: BTreeMap<String, NotifyAction>,
    /// Content never appears in diffs, reports or logs.
    pub secret: bool,
    /// A command run on the new content before it replaces the file; one
    /// argument is `{path}`, the temporary file. Empty: no validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validate: Vec<String>,
}

impl FileSpec {
    /// What a change to this file does to `unit`, which it notifies.
    pub fn notify_action_for(&self, unit: &str) -> NotifyAction {
        self.notify_actions
            .get(unit)
            .copied()
            .unwrap_or(self.notify_action)
    }
}

/// Rendered file content and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileContent {
    /// Shared: every file rendered from one template holds the same bytes.
    #[serde(skip)]
    pub bytes: Arc<[u8]>,
    /// `content`, `template:PATH` or `source:PATH`, for messages.
    pub origin: String,
    /// Set when the content is an age secret that this host could not
    /// decrypt: why (the file and the reason). The file then fails alone,
    /// and `bytes` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecryptable: Option<String>,
    /// Set when the file is written ahead of the plan (`prestage`): then
    /// this holds the content, and `bytes` is empty.
    #[serde(skip)]
    pub ahead: Option<Arc<crate::prestage::Ahead>>,
}

impl FileContent {
    /// Content held in memory.
    pub fn new(bytes: Arc<[u8]>, origin: String) -> FileContent {
        FileContent {
            bytes,
            origin,
            undecryptable: None,
            ahead: None,
        }
    }

    /// The rendered bytes (read back when the file was written ahead).
    pub fn current(&self) -> Result<Arc<[u8]>, String> {
        match &self.ahead {
            Some(a) => a.bytes(),
            None => Ok(self.bytes.clone()),
        }
    }

    /// Size and SHA-256 of the rendered bytes.
    pub fn digest(&self) -> Result<(u64, [u8; 32]), String> {
        use sha2::Digest;
        match &self.ahead {
            Some(a) => a.digest(),
            None => Ok((
                self.bytes.len() as u64,
                sha2::Sha256::digest(&self.bytes[..]).into(),
            )),
        }
    }

    /// What a step that writes the file carries.
    pub fn to_write(&self) -> crate::resource::node::NewContent {
        use crate::resource::node::NewContent;
        match &self.ahead {
            Some(a) => NewContent::ahead(a.clone()),
            None => NewContent::new(self.bytes.clone()),
        }
    }
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

/// A group, keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSpec {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Created as a system group (`groupadd -r`); not compared afterwards.
    pub system: bool,
}

/// A user, keyed by name. Passwords are never managed: new users are
/// locked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserSpec {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The primary group, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups, exactly these (sorted); `None`: not managed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Created as a system user (`useradd -r`); not compared afterwards.
    pub system: bool,
    /// `~/.ssh/authorized_keys`, exactly these lines; `None`: not managed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<Vec<String>>,
}

/// A command run when something it watches changed, or while a guard
/// says it has not run yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    /// Program and arguments; no shell.
    pub run: Vec<String>,
    /// Declared resources: runs only in a run where one of them changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_change: Vec<crate::resource::ResourceId>,
    /// Skipped while this path exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creates: Option<PathBuf>,
    /// Skipped while this (read-only) command exits 0; run during check too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unless: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds before the command is killed.
    pub timeout_secs: u64,
    /// Output and exit status never appear in reports or logs.
    pub secret: bool,
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
