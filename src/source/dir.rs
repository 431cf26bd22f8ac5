//! A plain directory as a source tree.

use std::path::{Path, PathBuf};

use super::{MAX_TREE_FILE, RepoPath, Tree, TreeError};
use crate::safe_fs::{Entry, SafeFsError};

/// A checkout or any directory holding a `trueup.yaml`.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> DirTree {
        DirTree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Tree for DirTree {
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError> {
        let abs = PathBuf::from("/").join(path.as_str());
        // Walking with O_NOFOLLOW keeps a symlink in the checkout from
        // pointing a source at a file outside the repository.
        let entry = match Entry::open(&self.root, &abs, false) {
            Ok(Some(e)) => e,
            Ok(None) => return Err(TreeError::NotFound(path.clone(), self.describe())),
            Err(SafeFsError::Symlink { .. }) => {
                return Err(TreeError::Refused(
                    path.clone(),
                    "a parent directory is a symlink".into(),
                ));
            }
            Err(e) => return Err(TreeError::Io(path.clone(), e.to_string())),
        };
        match entry.stat() {
            Ok(None) => return Err(TreeError::NotFound(path.clone(), self.describe())),
            Ok(Some(st)) if st.kind != crate::safe_fs::NodeKind::File => {
                return Err(TreeError::Refused(
                    path.clone(),
                    format!("is a {}, not a regular file", st.kind.as_str()),
                ));
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(TreeError::Io(path.clone(), e.to_string())),
        }
        entry.read(MAX_TREE_FILE).map_err(|e| match e {
            SafeFsError::Refused { what, .. } => TreeError::Refused(path.clone(), what),
            e => TreeError::Io(path.clone(), e.to_string()),
        })
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}
