//! Where a desired state comes from: a tree of files addressed by relative
//! paths. A plain directory is one (for `validate`, development and tests);
//! a Git commit's tree is another, read straight from the object database
//! with no work tree to drift.

pub mod dir;
pub mod git;
pub mod known_hosts;
pub mod poll;
pub mod remote;
pub mod tls;
pub mod transport;
pub mod trust;

pub use dir::DirTree;

/// A normalized path relative to a tree's root, such as `roles/web.yaml`.
///
/// It never starts with `/`, never contains `..` or `.`, and never escapes
/// the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoPath(String);

impl RepoPath {
    /// Validates a path written in a state file.
    pub fn parse(raw: &str) -> Result<RepoPath, String> {
        if raw.is_empty() {
            return Err("the path is empty".into());
        }
        if raw.starts_with('/') {
            return Err(format!(
                "'{raw}' is absolute; paths are relative to the repository root"
            ));
        }
        if raw.contains('\0') {
            return Err("the path contains a NUL byte".into());
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "'{raw}' contains '..'; paths cannot leave the repository"
                    ));
                }
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err(format!("'{raw}' names the repository root, not a file"));
        }
        Ok(RepoPath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl std::fmt::Display for RepoPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Largest file trueup reads from a tree; a bigger one is refused, not read.
pub const MAX_TREE_FILE: u64 = 64 * 1024 * 1024;

/// Why a file could not be read from a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{0}: no such file in {1}")]
    NotFound(RepoPath, String),
    #[error("{0}: {1}")]
    Refused(RepoPath, String),
    #[error("{0}: {1}")]
    Io(RepoPath, String),
}

/// A tree of files a desired state is rendered from.
pub trait Tree: Send + Sync {
    /// Reads one file. Symlinks and anything but regular files are refused.
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError>;

    /// What this tree is, for reports: a directory path or a commit.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths_are_normalized_and_contained() {
        assert_eq!(RepoPath::parse("a/./b//c").unwrap().as_str(), "a/b/c");
        assert!(RepoPath::parse("../etc/passwd").is_err());
        assert!(RepoPath::parse("a/../../b").is_err());
        assert!(RepoPath::parse("/etc/passwd").is_err());
        assert!(RepoPath::parse("").is_err());
        assert!(RepoPath::parse("./").is_err());
    }
}

/// A tree held in memory: for tests, benchmarks and fuzzing of the pure
/// core, where a real directory or repository would only add I/O.
#[derive(Debug, Clone, Default)]
pub struct MemTree(pub std::collections::BTreeMap<String, Vec<u8>>);

impl MemTree {
    /// A tree of (path, content) pairs.
    pub fn new(files: &[(&str, &str)]) -> MemTree {
        MemTree(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }
}

impl Tree for MemTree {
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError> {
        self.0
            .get(path.as_str())
            .cloned()
            .ok_or_else(|| TreeError::NotFound(path.clone(), "memory".into()))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
