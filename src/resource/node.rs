//! Nodes on disk (files, directories, symlinks): observing them without
//! following symlinks, and the actions that converge them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::prestage::Ahead;
use crate::safe_fs::{Entry, NodeKind, Prestaged, SafeFsError, WalkCache};

/// A node on disk, read without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeObservation {
    Missing,
    File {
        meta: Meta,
        /// `None` when the content was not needed or was too large to read.
        content: Option<Arc<[u8]>>,
    },
    Directory {
        meta: Meta,
    },
    Symlink {
        target: PathBuf,
    },
    Other,
}

impl NodeObservation {
    /// What is there, in words: "missing", "file", "symlink to /x"...
    pub fn describe(&self) -> String {
        match self {
            NodeObservation::Missing => "absent".into(),
            NodeObservation::File { .. } => "file".into(),
            NodeObservation::Directory { .. } => "directory".into(),
            NodeObservation::Symlink { target } => format!("symlink to {}", target.display()),
            NodeObservation::Other => "special file".into(),
        }
    }
}

/// Owner, group and permission bits of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Largest existing file read for comparison and backup.
pub const MAX_OBSERVED_FILE: u64 = 256 * 1024 * 1024;

/// Reads a managed node under `root` without following any symlink.
///
/// `want_content` reads a regular file's content (to compare and to back up).
pub fn observe_node(
    root: &Path,
    path: &Path,
    want_content: bool,
) -> Result<NodeObservation, SafeFsError> {
    observe_node_in(&mut WalkCache::default(), root, path, want_content, None)
}

/// `observe_node` for one of many paths: parent directories are reused
/// through `cache`, and content equal to `expected` (the declared content)
/// is kept as that same shared buffer, so a file in sync costs no memory.
pub fn observe_node_in(
    cache: &mut WalkCache,
    root: &Path,
    path: &Path,
    want_content: bool,
    expected: Option<&Arc<[u8]>>,
) -> Result<NodeObservation, SafeFsError> {
    let Some(entry) = Entry::open_cached(cache, root, path)? else {
        return Ok(NodeObservation::Missing);
    };
    let Some(st) = entry.stat()? else {
        return Ok(NodeObservation::Missing);
    };
    let meta = Meta {
        uid: st.uid,
        gid: st.gid,
        mode: st.mode,
    };
    Ok(match st.kind {
        NodeKind::File => NodeObservation::File {
            meta,
            content: if want_content {
                let have = entry.read(MAX_OBSERVED_FILE)?;
                Some(match expected {
                    Some(want) if want[..] == have[..] => want.clone(),
                    _ => have.into(),
                })
            } else {
                None
            },
        },
        NodeKind::Directory => NodeObservation::Directory { meta },
        NodeKind::Symlink => NodeObservation::Symlink {
            target: entry.read_link()?,
        },
        NodeKind::Other => NodeObservation::Other,
    })
}

/// What was at a path before trueup replaced or removed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    Content(Arc<[u8]>),
    Link(PathBuf),
}

impl Previous {
    /// Takes what a node held, for the backup kept before replacing it.
    pub fn of(obs: NodeObservation) -> Option<Previous> {
        match obs {
            NodeObservation::File {
                content: Some(c), ..
            } => Some(Previous::Content(c)),
            NodeObservation::Symlink { target } => Some(Previous::Link(target)),
            _ => None,
        }
    }
}

/// The bytes a file write puts in place, carried by its step so that
/// applying it needs nothing but the plan. Shared with the desired state
/// (no copy) until the run lets go of them there, and given up by the step
/// once the file is staged: a first apply of a thousand files holds each
/// file's content only until it is written, not all of them to the end.
/// A file written ahead of the plan (`prestage`) carries that file
/// instead, and its bytes are read back only if it cannot be used.
/// Debug shows the size only: the file may be a secret.
pub struct NewContent(std::sync::Mutex<Option<Carried>>);

#[derive(Clone, PartialEq, Eq)]
enum Carried {
    Bytes(Arc<[u8]>),
    Ahead(Arc<Ahead>),
}

impl NewContent {
    pub fn new(bytes: Arc<[u8]>) -> NewContent {
        NewContent(std::sync::Mutex::new(Some(Carried::Bytes(bytes))))
    }

    /// Content offered to be written ahead (`prestage`).
    pub fn ahead(ahead: Arc<Ahead>) -> NewContent {
        NewContent(std::sync::Mutex::new(Some(Carried::Ahead(ahead))))
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, Option<Carried>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives up the bytes (they are written).
    pub fn release(&self) {
        self.carried().take();
    }

    /// Whether `release` gave the content up.
    pub fn is_released(&self) -> bool {
        self.carried().is_none()
    }

    /// The bytes, or why not: a step's content is written once.
    pub fn bytes(&self) -> Result<Arc<[u8]>, String> {
        let carried = self.carried().clone();
        match carried {
            Some(Carried::Bytes(b)) => Ok(b),
            Some(Carried::Ahead(a)) => a.bytes(),
            None => Err("the new content was already written and let go".to_string()),
        }
    }

    /// The file written ahead with these bytes and `mode`, if any
    /// (`Ahead::take`); give it back with `give_back` if it is not used.
    pub fn take_ahead(&self, mode: u32) -> Option<Prestaged> {
        match &*self.carried() {
            Some(Carried::Ahead(a)) => a.take(mode),
            _ => None,
        }
    }

    /// A file `take_ahead` gave that was not used.
    pub fn give_back(&self, file: Prestaged) {
        if let Some(Carried::Ahead(a)) = &*self.carried() {
            a.give_back(file);
        }
    }
}

impl Clone for NewContent {
    fn clone(&self) -> NewContent {
        NewContent(std::sync::Mutex::new(self.carried().clone()))
    }
}

impl PartialEq for NewContent {
    fn eq(&self, other: &NewContent) -> bool {
        // One at a time: a step compared with itself must not wait for
        // its own lock.
        let mine = self.carried().clone();
        mine == *other.carried()
    }
}

impl Eq for NewContent {}

impl std::fmt::Debug for NewContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.carried() {
            Some(Carried::Bytes(b)) => write!(f, "NewContent({} bytes)", b.len()),
            Some(Carried::Ahead(a)) => write!(f, "NewContent({a:?})"),
            None => write!(f, "NewContent(written)"),
        }
    }
}

/// What converging one node takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Replace whatever is there with `content`, atomically.
    WriteFile {
        content: NewContent,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
        previous: Option<Previous>,
    },
    /// Fix owner, group or mode in place.
    SetMetadata {
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    },
    /// Remove a file or symlink.
    Remove { previous: Option<Previous> },
    CreateDirectory {
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
    },
    /// Remove an empty directory.
    RemoveDirectory,
    /// Make the path a symlink to `target`, atomically.
    Link {
        target: PathBuf,
        previous: Option<Previous>,
    },
    /// Drift trueup will not repair by itself, and why.
    Refuse(String),
}

impl NodeAction {
    /// A short verb for reports: "write", "chmod/chown", "remove"...
    pub fn verb(&self) -> &'static str {
        match self {
            NodeAction::WriteFile { .. } => "write",
            NodeAction::SetMetadata { .. } => "set owner/group/mode",
            NodeAction::Remove { .. } => "remove",
            NodeAction::CreateDirectory { .. } => "create directory",
            NodeAction::RemoveDirectory => "remove directory",
            NodeAction::Link { .. } => "link",
            NodeAction::Refuse(_) => "refuse",
        }
    }

    /// The content or link replaced, if any.
    pub fn previous(&self) -> Option<&Previous> {
        match self {
            NodeAction::WriteFile { previous, .. }
            | NodeAction::Remove { previous }
            | NodeAction::Link { previous, .. } => previous.as_ref(),
            _ => None,
        }
    }
}

/// Carries out a node action under `root`. `content` is the declared
/// content for `WriteFile`. Parents are created as needed, never through a
/// symlink.
pub fn execute(root: &Path, path: &Path, action: &NodeAction) -> Result<(), String> {
    // Before the path is opened: a missing parent must not turn a refusal
    // into "nothing to do".
    if let NodeAction::Refuse(why) = action {
        return Err(why.clone());
    }
    let create = matches!(
        action,
        NodeAction::WriteFile { .. } | NodeAction::CreateDirectory { .. } | NodeAction::Link { .. }
    );
    let entry = match Entry::open(root, path, create) {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(()), // nothing to remove or chmod: the parent is gone
        Err(e) => return Err(e.to_string()),
    };
    let r = match action {
        NodeAction::WriteFile {
            content,
            uid,
            gid,
            mode,
            ..
        } => {
            let bytes = content.bytes()?;
            entry.write_atomic(&bytes, *uid, *gid, *mode)
        }
        NodeAction::SetMetadata { uid, gid, mode } => entry.set_metadata(*uid, *gid, *mode),
        NodeAction::Remove { .. } => entry.remove(),
        NodeAction::CreateDirectory { uid, gid, mode } => entry.mkdir(*mode).and_then(|()| {
            if uid.is_some() || gid.is_some() {
                entry.set_metadata(*uid, *gid, Some(*mode))
            } else {
                Ok(())
            }
        }),
        NodeAction::RemoveDirectory => entry.remove_dir(),
        NodeAction::Link { target, .. } => entry.symlink_atomic(target),
        NodeAction::Refuse(why) => return Err(why.clone()),
    };
    r.map_err(|e| e.to_string())
}
