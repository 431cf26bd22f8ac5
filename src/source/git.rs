//! A Git remote as a source: a bare cache repository in the state directory
//! that holds only the host branch, updated only when the remote tip moved,
//! and a [`GitTree`] that reads files straight from a commit's tree.
//!
//! The cache keeps the remote tip under `refs/trueup/remote/<branch>`; no
//! work tree is ever checked out, so there is nothing on disk to drift.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{ObjectType, Oid, Repository, RepositoryInitOptions};
use tracing::{debug, info, warn};

use super::poll::{self, Polled};
use super::remote::{RemoteUrl, Transport};
use super::transport::{Connector, SourceError};
use super::{MAX_TREE_FILE, RepoPath, Tree, TreeError};
use crate::config::Auth;

/// Name of the cache repository inside the state directory.
pub const CACHE_DIR: &str = "repo.git";

/// The host branch's tip after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub commit: Oid,
    /// Whether objects were downloaded (false: the cache was current).
    pub fetched: bool,
}

/// The bare cache repository.
pub struct GitCache {
    repo: Repository,
    path: PathBuf,
}

impl GitCache {
    /// Opens `<state_dir>/repo.git`, creating it on first use.
    pub fn open(state_dir: &Path) -> Result<GitCache, SourceError> {
        let path = state_dir.join(CACHE_DIR);
        let cache_err = |e: git2::Error| SourceError::Cache {
            path: path.display().to_string(),
            detail: e.message().to_string(),
        };
        let repo = if path.join("HEAD").exists() {
            Repository::open_bare(&path).map_err(cache_err)?
        } else {
            let mut opts = RepositoryInitOptions::new();
            opts.bare(true).mkpath(true).no_reinit(false);
            Repository::init_opts(&path, &opts).map_err(cache_err)?
        };
        Ok(GitCache { repo, path })
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cache_err(&self, e: &git2::Error) -> SourceError {
        SourceError::Cache {
            path: self.path.display().to_string(),
            detail: e.message().to_string(),
        }
    }

    /// Brings the cached branch up to date: lists the remote's refs, and
    /// fetches only when the tip is not already in the cache.
    pub fn update(
        &self,
        remote: &RemoteUrl,
        auth: &Auth,
        branch: &str,
    ) -> Result<Tip, SourceError> {
        let head = format!("refs/heads/{branch}");
        let tracking = tracking_ref(branch);
        let conn = Connector::new(remote, auth)?;
        // file:// stays with libgit2 (in-process, no ref advertisement cost
        // worth saving); every network transport polls with protocol v2.
        if remote.transport != Transport::File {
            match poll::poll_branch(
                &self.path,
                remote,
                auth,
                conn.basic_credentials(),
                branch,
                &tracking,
            ) {
                Ok(Polled::Tip {
                    commit,
                    fetched,
                    protocol,
                }) if self.has_commit(commit) => {
                    if fetched {
                        info!(branch, commit = %commit, protocol, "fetched");
                    } else {
                        debug!(branch, commit = %commit, protocol, "remote tip unchanged, no fetch");
                    }
                    return Ok(Tip { commit, fetched });
                }
                Ok(Polled::Tip { commit, .. }) => {
                    warn!(branch, commit = %commit, "the v2 fetch left the tip missing from the cache; fetching again with libgit2");
                }
                Ok(Polled::Missing) => {
                    return Err(SourceError::MissingBranch {
                        url: remote.redacted().to_string(),
                        branch: branch.to_string(),
                    });
                }
                Err(e) => {
                    warn!(branch, reason = %e, "protocol v2 poll failed; polling again with libgit2 (protocol v0)");
                }
            }
        }
        let refs = conn.list_refs(&self.repo)?;
        let Some(remote_tip) = refs.iter().find(|(n, _)| *n == head).map(|(_, o)| *o) else {
            return Err(SourceError::MissingBranch {
                url: remote.redacted().to_string(),
                branch: branch.to_string(),
            });
        };
        let cached = self.repo.refname_to_id(&tracking).ok();
        if cached == Some(remote_tip) && self.has_commit(remote_tip) {
            debug!(branch, commit = %remote_tip, "remote tip unchanged, no fetch");
            return Ok(Tip {
                commit: remote_tip,
                fetched: false,
            });
        }
        if self.has_commit(remote_tip) {
            // Moved back to (or onto) a commit already fetched: no download.
            self.repo
                .reference(&tracking, remote_tip, true, "trueup: tip already cached")
                .map_err(|e| self.cache_err(&e))?;
            return Ok(Tip {
                commit: remote_tip,
                fetched: false,
            });
        }
        let refspec = format!("+{head}:{tracking}");
        conn.fetch(&self.repo, &[&refspec])?;
        let commit = self
            .repo
            .refname_to_id(&tracking)
            .map_err(|e| self.cache_err(&e))?;
        info!(branch, commit = %commit, "fetched");
        Ok(Tip {
            commit,
            fetched: true,
        })
    }

    /// The cached tip of `branch` (for `--offline`).
    pub fn cached_tip(&self, branch: &str) -> Result<Oid, SourceError> {
        self.repo
            .refname_to_id(&tracking_ref(branch))
            .ok()
            .filter(|o| self.has_commit(*o))
            .ok_or_else(|| SourceError::NotCached {
                branch: branch.to_string(),
                path: self.path.display().to_string(),
            })
    }

    fn has_commit(&self, oid: Oid) -> bool {
        self.repo.find_commit(oid).is_ok()
    }

    /// Whether `commit` descends from (or is) `ancestor`. An ancestor the
    /// cache does not hold counts as not descending.
    pub fn descends_from(&self, commit: Oid, ancestor: Oid) -> bool {
        commit == ancestor
            || self
                .repo
                .graph_descendant_of(commit, ancestor)
                .unwrap_or(false)
    }

    /// The tree of `commit`, for rendering.
    pub fn tree(&self, commit: Oid, describe: String) -> Result<GitTree, SourceError> {
        GitTree::open(&self.path, commit, describe)
    }

    /// Throws the cache away and starts an empty one, for a cache that has
    /// lost objects (a disk fault, an interrupted write): with the remote tip
    /// unchanged nothing would ever fetch them again. Notes not yet pushed
    /// go with it; the next run writes its own.
    pub fn rebuild(&mut self) -> Result<(), SourceError> {
        warn!(path = %self.path.display(), "the Git cache lost objects; rebuilding it from the remote");
        std::fs::remove_dir_all(&self.path).map_err(|e| SourceError::Cache {
            path: self.path.display().to_string(),
            detail: format!("removing the damaged cache: {e}"),
        })?;
        let state_dir = self.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        *self = GitCache::open(&state_dir)?;
        Ok(())
    }
}

/// Where the cache keeps the remote's tip of `branch`.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/trueup/remote/{branch}")
}

/// Whether `branch` can be a branch name.
pub fn valid_branch(branch: &str) -> bool {
    git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
}

/// A commit's tree, read blob by blob from the object database.
pub struct GitTree {
    // git2::Repository is Send but not Sync; reads are short.
    repo: Mutex<Repository>,
    tree: Oid,
    describe: String,
    /// Set when a read met an object the tree names but the cache lacks.
    missing: std::sync::atomic::AtomicBool,
}

impl GitTree {
    /// Opens the tree of `commit` in the repository at `path`.
    pub fn open(path: &Path, commit: Oid, describe: String) -> Result<GitTree, SourceError> {
        let err = |e: git2::Error| SourceError::Cache {
            path: path.display().to_string(),
            detail: format!("commit {commit}: {}", e.message()),
        };
        let repo = Repository::open_bare(path).map_err(err)?;
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(err)?
            .id();
        Ok(GitTree {
            repo: Mutex::new(repo),
            tree,
            describe,
            missing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether a read found an object missing from the cache: the cache is
    /// damaged, not the branch.
    pub fn missing_objects(&self) -> bool {
        self.missing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

const MODE_TREE: i32 = 0o040000;
const MODE_SYMLINK: i32 = 0o120000;
const MODE_SUBMODULE: i32 = 0o160000;

impl Tree for GitTree {
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError> {
        let io = |e: git2::Error| {
            if e.code() == git2::ErrorCode::NotFound {
                self.missing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            TreeError::Io(path.clone(), e.message().to_string())
        };
        let repo = self.repo.lock().unwrap_or_else(|p| p.into_inner());
        let mut tree = repo.find_tree(self.tree).map_err(io)?;
        let parts: Vec<&str> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let Some((mode, id)) = tree.get_name(part).map(|e| (e.filemode(), e.id())) else {
                return Err(TreeError::NotFound(path.clone(), self.describe()));
            };
            if !last {
                match mode {
                    MODE_TREE => {
                        let next = repo.find_tree(id).map_err(io)?;
                        tree = next;
                    }
                    MODE_SYMLINK => {
                        return Err(TreeError::Refused(
                            path.clone(),
                            format!("'{}' is a symlink in the commit", parts[..=i].join("/")),
                        ));
                    }
                    MODE_SUBMODULE => {
                        return Err(TreeError::Refused(
                            path.clone(),
                            format!(
                                "'{}' is a submodule; submodules are not read",
                                parts[..=i].join("/")
                            ),
                        ));
                    }
                    _ => return Err(TreeError::NotFound(path.clone(), self.describe())),
                }
                continue;
            }
            match mode {
                MODE_SYMLINK => {
                    return Err(TreeError::Refused(
                        path.clone(),
                        "is a symlink in the commit, not a regular file".into(),
                    ));
                }
                MODE_SUBMODULE => {
                    return Err(TreeError::Refused(
                        path.clone(),
                        "is a submodule, not a regular file".into(),
                    ));
                }
                MODE_TREE => {
                    return Err(TreeError::Refused(
                        path.clone(),
                        "is a directory, not a regular file".into(),
                    ));
                }
                _ => {}
            }
            let odb = repo.odb().map_err(io)?;
            let (size, kind) = odb.read_header(id).map_err(io)?;
            if kind != ObjectType::Blob {
                return Err(TreeError::Refused(path.clone(), "is not a file".into()));
            }
            if size as u64 > MAX_TREE_FILE {
                return Err(TreeError::Refused(
                    path.clone(),
                    format!("is {size} bytes, more than the {MAX_TREE_FILE} bytes trueup reads"),
                ));
            }
            let blob = repo.find_blob(id).map_err(io)?;
            return Ok(blob.content().to_vec());
        }
        Err(TreeError::NotFound(path.clone(), self.describe()))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_tree(repo: &Repository, build: impl FnOnce(&Repository) -> Oid) -> Oid {
        let tree = repo.find_tree(build(repo)).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        repo.commit(None, &sig, &sig, "t", &tree, &[]).unwrap()
    }

    #[test]
    fn reads_files_and_refuses_links_submodules_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let commit = commit_tree(&repo, |repo| {
            let blob = repo.blob(b"hello\n").unwrap();
            let link = repo.blob(b"/etc/shadow").unwrap();
            let mut sub = repo.treebuilder(None).unwrap();
            sub.insert("a.yaml", blob, 0o100644).unwrap();
            let sub = sub.write().unwrap();
            let mut root = repo.treebuilder(None).unwrap();
            root.insert("trueup.yaml", blob, 0o100644).unwrap();
            root.insert("exec.sh", blob, 0o100755).unwrap();
            root.insert("roles", sub, 0o040000).unwrap();
            root.insert("link", link, 0o120000).unwrap();
            root.insert("linkdir", link, 0o120000).unwrap();
            root.insert("sub", Oid::from_str(&"1".repeat(40)).unwrap(), 0o160000)
                .unwrap();
            root.write().unwrap()
        });
        let tree = GitTree::open(dir.path(), commit, "commit x".into()).unwrap();
        let p = |s: &str| RepoPath::parse(s).unwrap();
        assert_eq!(tree.read(&p("trueup.yaml")).unwrap(), b"hello\n");
        assert_eq!(tree.read(&p("exec.sh")).unwrap(), b"hello\n");
        assert_eq!(tree.read(&p("roles/a.yaml")).unwrap(), b"hello\n");
        let e = tree.read(&p("link")).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let e = tree.read(&p("linkdir/x")).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let e = tree.read(&p("sub")).unwrap_err().to_string();
        assert!(e.contains("submodule"), "{e}");
        let e = tree.read(&p("sub/x")).unwrap_err().to_string();
        assert!(e.contains("submodule"), "{e}");
        let e = tree.read(&p("roles")).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        assert!(matches!(
            tree.read(&p("nope.yaml")),
            Err(TreeError::NotFound(..))
        ));
        assert!(matches!(
            tree.read(&p("trueup.yaml/x")),
            Err(TreeError::NotFound(..))
        ));
    }

    #[test]
    fn branch_names() {
        assert!(valid_branch("hosts/web1"));
        assert!(!valid_branch("hosts/../x"));
        assert!(!valid_branch("a b"));
    }
}
