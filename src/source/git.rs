//! A Git remote as a source: a bare cache repository in the state directory
//! that holds only the host branch, updated only when the remote tip moved,
//! and a [`GitTree`] that reads files straight from a commit's tree.
//!
//! The cache keeps the remote tip under `refs/trueup/remote/<branch>`; no
//! work tree is ever checked out, so there is nothing on disk to drift.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{Oid, Repository};
use tracing::{debug, info, warn};

use super::poll::{self, Polled};
use super::remote::{RemoteUrl, Transport};
use super::transport::{Connector, SourceError};
use super::{MAX_TREE_FILE, RepoPath, Tree, TreeError};
use crate::config::Auth;

/// Name of the cache repository inside the state directory.
pub const CACHE_DIR: &str = "repo.git";

/// The most objects a `file://` fetch copies one by one, as loose objects;
/// more go as one pack (libgit2's fetch). The same line as git's own
/// `fetch.unpackLimit` default.
const LOCAL_COPY_LIMIT: usize = 100;

/// A commit's id, as gitoxide reads it: reading the cache (refs, commits,
/// trees, blobs) never starts libgit2, so a run whose tip did not move
/// never initialises libgit2 (and OpenSSL with it).
pub type CommitId = gix::ObjectId;

/// The host branch's tip after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub commit: CommitId,
    /// Whether objects were downloaded (false: the cache was current).
    pub fetched: bool,
}

/// libgit2's id of `id`, for the calls that still go through libgit2. Both
/// are SHA-1 (20 bytes), the only length either side is built for here.
pub fn git2_oid(id: &gix::oid) -> Oid {
    Oid::from_bytes(id.as_bytes()).unwrap_or(Oid::ZERO_SHA1)
}

/// gitoxide's id of a libgit2 id.
pub fn commit_id(oid: Oid) -> CommitId {
    CommitId::try_from(oid.as_bytes()).unwrap_or_else(|_| CommitId::null(gix::hash::Kind::Sha1))
}

/// Parses a full hexadecimal commit id (as `state.json` and reports hold
/// them).
pub fn parse_commit_id(hex: &str) -> Result<CommitId, String> {
    CommitId::from_hex(hex.as_bytes()).map_err(|e| format!("'{hex}' is not a commit id: {e}"))
}

/// Opens a repository for reading with gitoxide, isolated from the user's
/// and the system's Git configuration.
fn open_gix(path: &Path) -> Result<gix::Repository, String> {
    let opts = gix::open::Options::isolated().with_enforced_trust(gix::sec::Trust::Full);
    gix::open_opts(path, opts).map_err(|e| poll::chain(&e))
}

/// The bare cache repository. Reads go through gitoxide; libgit2 is opened
/// only for what needs it (a fetch, a signature, a note, a push).
pub struct GitCache {
    objects: gix::Repository,
    repo: std::cell::OnceCell<Repository>,
    path: PathBuf,
}

impl GitCache {
    /// Opens `<state_dir>/repo.git`, creating it on first use.
    pub fn open(state_dir: &Path) -> Result<GitCache, SourceError> {
        let path = state_dir.join(CACHE_DIR);
        let cache_err = |detail: String| SourceError::Cache {
            path: path.display().to_string(),
            detail,
        };
        if !path.join("HEAD").exists() {
            init_bare(&path).map_err(|e| cache_err(format!("creating it: {e}")))?;
        }
        let objects = open_gix(&path).map_err(cache_err)?;
        Ok(GitCache {
            objects,
            repo: std::cell::OnceCell::new(),
            path,
        })
    }

    /// libgit2's handle on the cache, opened (and libgit2 started) on first
    /// use.
    pub fn repo(&self) -> Result<&Repository, SourceError> {
        if let Some(repo) = self.repo.get() {
            return Ok(repo);
        }
        super::tls::start_libgit2();
        let opened = Repository::open_bare(&self.path).map_err(|e| self.cache_err(&e))?;
        Ok(self.repo.get_or_init(|| opened))
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

    /// The commit a ref of the cache names, if it names one the cache holds.
    fn ref_commit(&self, name: &str) -> Option<CommitId> {
        let mut reference = self.objects.try_find_reference(name).ok()??;
        let id = reference.peel_to_id().ok()?.detach();
        self.has_commit(&id).then_some(id)
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
        if remote.transport == Transport::File {
            // A repository on this machine: its ref is read in place, and
            // a moved tip's few new objects are copied from it, both with
            // gitoxide; libgit2 fetches only a larger download (or one the
            // copy could not make), as a pack.
            if let Some((source, tip)) = local_tip(remote, &head) {
                if self.ref_commit(&tracking) == Some(tip) {
                    debug!(branch, commit = %tip, "remote tip unchanged, no fetch");
                    return Ok(Tip {
                        commit: tip,
                        fetched: false,
                    });
                }
                match self.copy_local(&source, tip) {
                    Ok(Some(copied)) => {
                        self.set_tracking(&tracking, tip)?;
                        if copied > 0 {
                            info!(branch, commit = %tip, objects = copied, "fetched");
                        }
                        return Ok(Tip {
                            commit: tip,
                            fetched: copied > 0,
                        });
                    }
                    Ok(None) => {
                        debug!(branch, commit = %tip, "more than {LOCAL_COPY_LIMIT} objects to copy; fetching a pack with libgit2");
                    }
                    Err(e) => {
                        warn!(branch, commit = %tip, reason = %e, "copying from the repository failed; fetching with libgit2");
                    }
                }
            }
        } else {
            // Every network transport polls with protocol v2.
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
                }) if self.has_commit(&commit) => {
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
        let repo = self.repo()?;
        let refs = conn.list_refs(repo)?;
        let Some(remote_tip) = refs.iter().find(|(n, _)| *n == head).map(|(_, o)| *o) else {
            return Err(SourceError::MissingBranch {
                url: remote.redacted().to_string(),
                branch: branch.to_string(),
            });
        };
        let remote_id = commit_id(remote_tip);
        let cached = repo.refname_to_id(&tracking).ok();
        if cached == Some(remote_tip) && self.has_commit(&remote_id) {
            debug!(branch, commit = %remote_tip, "remote tip unchanged, no fetch");
            return Ok(Tip {
                commit: remote_id,
                fetched: false,
            });
        }
        if self.has_commit(&remote_id) {
            // Moved back to (or onto) a commit already fetched: no download.
            repo.reference(&tracking, remote_tip, true, "trueup: tip already cached")
                .map_err(|e| self.cache_err(&e))?;
            return Ok(Tip {
                commit: remote_id,
                fetched: false,
            });
        }
        let refspec = format!("+{head}:{tracking}");
        conn.fetch(repo, &[&refspec])?;
        let commit = repo
            .refname_to_id(&tracking)
            .map_err(|e| self.cache_err(&e))?;
        info!(branch, commit = %commit, "fetched");
        Ok(Tip {
            commit: commit_id(commit),
            fetched: true,
        })
    }

    /// The cached tip of `branch` (for `--offline`).
    pub fn cached_tip(&self, branch: &str) -> Result<CommitId, SourceError> {
        self.ref_commit(&tracking_ref(branch))
            .ok_or_else(|| SourceError::NotCached {
                branch: branch.to_string(),
                path: self.path.display().to_string(),
            })
    }

    fn has_commit(&self, id: &gix::oid) -> bool {
        self.objects
            .find_header(id)
            .is_ok_and(|h| h.kind() == gix::object::Kind::Commit)
    }

    /// Points the cache's `tracking` ref at `tip`. No reflog (the cache is
    /// bare, and `core.logAllRefUpdates` is off for bare repositories), so
    /// no committer either: asking gitoxide for one reads the local time
    /// zone, and jiff indexes all of `/usr/share/zoneinfo` to name it.
    fn set_tracking(&self, tracking: &str, tip: CommitId) -> Result<(), SourceError> {
        use gix::refs::transaction::{PreviousValue, RefEdit};
        let err = |detail: String| SourceError::Cache {
            path: self.path.display().to_string(),
            detail: format!("updating {tracking}: {detail}"),
        };
        let name = gix::refs::FullName::try_from(tracking).map_err(|e| err(poll::chain(&e)))?;
        let edit = RefEdit::update(name, tip, PreviousValue::Any, "trueup: fetch");
        self.objects
            .edit_references_as([edit], None)
            .map_err(|e| err(poll::chain(&e)))?;
        Ok(())
    }

    /// Copies what `tip` reaches and the cache lacks from `source`, a
    /// repository on this machine, as loose objects: what libgit2's local
    /// fetch would download, without starting libgit2 (and OpenSSL) for a
    /// handful of objects. Objects are written after everything they name
    /// (a post-order walk), so whatever point a crash stops the copy at, an
    /// object in the cache has all it names, and the next run's walk, which
    /// stops at objects the cache holds, finds the rest. Every object is
    /// hashed as it is written and must have the id it was asked for.
    ///
    /// Returns how many objects were copied, or `None` when more than
    /// [`LOCAL_COPY_LIMIT`] are missing (libgit2 then moves them as one
    /// pack).
    fn copy_local(&self, source: &gix::Repository, tip: CommitId) -> Result<Option<usize>, String> {
        use gix::object::Kind;
        use gix::objs::Write as _;
        enum Step {
            /// An object to look at (`true`: a tree entry names it as a blob).
            Visit(gix::ObjectId, bool),
            /// A commit or tree all of whose children are written or queued.
            Write(gix::ObjectId, Kind, Vec<u8>),
        }
        let hash = source.object_hash();
        let read = |id: &gix::oid| -> Result<(Kind, Vec<u8>), String> {
            let object = source
                .find_object(id)
                .map_err(|e| format!("object {id}: {}", poll::chain(&e)))?;
            Ok((object.kind, object.detach().data))
        };
        let mut seen = std::collections::HashSet::new();
        let mut missing = 0;
        let mut order: Vec<(gix::ObjectId, Kind, Option<Vec<u8>>)> = Vec::new();
        let mut stack = vec![Step::Visit(tip, false)];
        while let Some(step) = stack.pop() {
            let (id, blob) = match step {
                Step::Write(id, kind, data) => {
                    order.push((id, kind, Some(data)));
                    continue;
                }
                Step::Visit(id, blob) => (id, blob),
            };
            // The odb's own lookup: `Repository::has_object` counts the
            // empty tree as present even when no file holds it.
            if !seen.insert(id) || gix::objs::Exists::exists(&self.objects.objects, &id) {
                continue;
            }
            // Only missing objects count: a new tree of a thousand entries
            // of which one changed is a handful to copy.
            missing += 1;
            if missing > LOCAL_COPY_LIMIT {
                return Ok(None);
            }
            if blob {
                // Read when written: a blob names nothing.
                order.push((id, Kind::Blob, None));
                continue;
            }
            let (kind, data) = read(&id)?;
            let mut children = Vec::new();
            match kind {
                Kind::Commit => {
                    let mut commit = gix::objs::CommitRefIter::from_bytes(&data, hash);
                    let tree = commit
                        .tree_id()
                        .map_err(|e| format!("commit {id}: {}", poll::chain(&e)))?;
                    children.push(Step::Visit(tree, false));
                    children.extend(commit.parent_ids().map(|p| Step::Visit(p, false)));
                }
                Kind::Tree => {
                    for entry in gix::objs::TreeRefIter::from_bytes(&data, hash) {
                        let entry = entry.map_err(|e| format!("tree {id}: {}", poll::chain(&e)))?;
                        // A submodule's commit is not in this repository.
                        if !entry.mode.is_commit() {
                            children.push(Step::Visit(entry.oid.to_owned(), !entry.mode.is_tree()));
                        }
                    }
                }
                Kind::Blob | Kind::Tag => {}
            }
            stack.push(Step::Write(id, kind, data));
            stack.extend(children);
        }
        // The writing runs on a thread of its own: gitoxide's loose-object
        // writer moves its zlib buffers by value (about 180 KiB of stack
        // in all), and a thread's stack is given back when it ends, where
        // the main thread's would stay resident for the rest of the run.
        // Objects go to it one at a time, in walk order.
        let loose = gix::odb::loose::Store::at(self.path.join("objects"), hash);
        let count = order.len();
        std::thread::scope(|scope| {
            let (send, receive) =
                std::sync::mpsc::sync_channel::<(gix::ObjectId, Kind, Vec<u8>)>(1);
            let writer = std::thread::Builder::new()
                .name("copy objects".into())
                .spawn_scoped(scope, move || -> Result<(), String> {
                    for (id, kind, data) in receive {
                        let written = loose
                            .write_buf(kind, &data)
                            .map_err(|e| format!("writing object {id}: {}", poll::chain(&e)))?;
                        if written != id {
                            return Err(format!(
                                "object {id} in the repository is damaged: its content hashes to {written}"
                            ));
                        }
                    }
                    Ok(())
                })
                .map_err(|e| format!("starting a thread to write objects: {e}"))?;
            let mut read_error = None;
            for (id, kind, data) in order {
                let data = match data {
                    Some(data) => data,
                    None => match read(&id) {
                        Ok((found, _)) if found != kind => {
                            read_error = Some(format!(
                                "object {id}: a tree names it as a blob, it is a {found}"
                            ));
                            break;
                        }
                        Ok((_, data)) => data,
                        Err(e) => {
                            read_error = Some(e);
                            break;
                        }
                    },
                };
                // A send fails only once the writer has stopped on an
                // error, which `join` returns.
                if send.send((id, kind, data)).is_err() {
                    break;
                }
            }
            drop(send);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err("the thread writing objects panicked".into()));
            match read_error {
                Some(e) => Err(e),
                None => written,
            }
        })?;
        Ok(Some(count))
    }

    /// Whether `commit` descends from (or is) `ancestor`: a walk of
    /// `commit`'s history with gitoxide. An ancestor the cache does not
    /// hold, or a history it cannot read, counts as not descending.
    pub fn descends_from(&self, commit: &gix::oid, ancestor: &gix::oid) -> bool {
        if commit == ancestor {
            return true;
        }
        if !self.has_commit(ancestor) {
            return false;
        }
        let Ok(walk) = self.objects.rev_walk([commit.to_owned()]).all() else {
            return false;
        };
        for info in walk {
            match info {
                Ok(info) if info.id == ancestor => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// The subject line and the author (`Name <email>`) of `commit`, for
    /// reports. Lossy: a commit message or name need not be UTF-8.
    pub fn commit_details(&self, commit: &gix::oid) -> Option<(Option<String>, Option<String>)> {
        let commit = self.objects.find_commit(commit.to_owned()).ok()?;
        let subject = commit
            .message()
            .ok()
            .map(|m| m.summary().to_string())
            .filter(|s| !s.is_empty());
        let author = commit.author().ok().and_then(|a| {
            let name = a.name.to_string();
            let email = a.email.to_string();
            match (name.is_empty(), email.is_empty()) {
                (false, false) => Some(format!("{name} <{email}>")),
                (false, true) => Some(name),
                (true, false) => Some(format!("<{email}>")),
                (true, true) => None,
            }
        });
        Some((subject, author))
    }

    /// The tree of `commit`, for rendering.
    pub fn tree(&self, commit: &gix::oid, describe: String) -> Result<GitTree, SourceError> {
        GitTree::with_repo(self.objects.clone(), &self.path, commit, describe)
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

/// The repository behind a `file://` remote and the tip of `head` in it,
/// read in place; `None` when it cannot be read that way (libgit2 then
/// lists the remote, and its errors are the ones users see).
fn local_tip(remote: &RemoteUrl, head: &str) -> Option<(gix::Repository, CommitId)> {
    let path = url::Url::parse(remote.for_libgit2())
        .ok()?
        .to_file_path()
        .ok()?;
    let repo = open_gix(&path).ok()?;
    let tip = repo
        .try_find_reference(head)
        .ok()??
        .peel_to_id()
        .ok()?
        .detach();
    Some((repo, tip))
}

/// Creates an empty bare repository at `path`: the layout `git init --bare`
/// makes, less its sample hooks, `description` and `info/exclude`, which
/// nothing in a cache reads (libgit2's and gitoxide's `init` write them,
/// with or without a template: a dozen files on every first run). `HEAD`
/// comes last, whole (written as `HEAD.lock` and renamed, as git does): a
/// cache is taken as made once it has one, and one cut short before then
/// is made again.
fn init_bare(path: &Path) -> std::io::Result<()> {
    for dir in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        std::fs::create_dir_all(path.join(dir))?;
    }
    std::fs::write(
        path.join("config"),
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n",
    )?;
    let lock = path.join("HEAD.lock");
    std::fs::write(&lock, "ref: refs/heads/main\n")?;
    std::fs::rename(&lock, path.join("HEAD"))
}

/// Where the cache keeps the remote's tip of `branch`.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/trueup/remote/{branch}")
}

/// Whether `branch` can be a branch name.
pub fn valid_branch(branch: &str) -> bool {
    let name = format!("refs/heads/{branch}");
    gix::validate::reference::name(name.as_bytes().into()).is_ok()
}

/// A commit's tree, read blob by blob from the object database (with
/// gitoxide: rendering a commit never starts libgit2).
pub struct GitTree {
    // gix::Repository is Send but not Sync; reads are short.
    repo: Mutex<gix::Repository>,
    tree: gix::ObjectId,
    describe: String,
    /// Set when a read met an object the tree names but the cache lacks.
    missing: std::sync::atomic::AtomicBool,
}

impl GitTree {
    /// Opens the tree of `commit` in the repository at `path`.
    pub fn open(path: &Path, commit: &gix::oid, describe: String) -> Result<GitTree, SourceError> {
        let repo = open_gix(path).map_err(|detail| SourceError::Cache {
            path: path.display().to_string(),
            detail,
        })?;
        Self::with_repo(repo, path, commit, describe)
    }

    /// The tree of `commit` in `repo` (at `path`, for messages).
    fn with_repo(
        repo: gix::Repository,
        path: &Path,
        commit: &gix::oid,
        describe: String,
    ) -> Result<GitTree, SourceError> {
        let err = |detail: String| SourceError::Cache {
            path: path.display().to_string(),
            detail: format!("commit {commit}: {detail}"),
        };
        let tree = repo
            .find_commit(commit.to_owned())
            .map_err(|e| err(poll::chain(&e)))?
            .tree_id()
            .map_err(|e| err(poll::chain(&e)))?
            .detach();
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

impl Tree for GitTree {
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError> {
        // Every object the tree names should be there: one that is not
        // means the cache lost it.
        let lost = |e: &dyn std::error::Error| {
            self.missing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            TreeError::Io(path.clone(), poll::chain(e))
        };
        let repo = self.repo.lock().unwrap_or_else(|p| p.into_inner());
        let mut tree = repo.find_tree(self.tree).map_err(|e| lost(&e))?;
        let parts: Vec<&str> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let Some((mode, id)) = tree.find_entry(*part).map(|e| (e.mode(), e.object_id())) else {
                return Err(TreeError::NotFound(path.clone(), self.describe()));
            };
            let refused = |what: &str| TreeError::Refused(path.clone(), what.to_string());
            if !last {
                if mode.is_tree() {
                    tree = repo.find_tree(id).map_err(|e| lost(&e))?;
                    continue;
                }
                let above = parts[..=i].join("/");
                return Err(if mode.is_link() {
                    refused(&format!("'{above}' is a symlink in the commit"))
                } else if mode.is_commit() {
                    refused(&format!(
                        "'{above}' is a submodule; submodules are not read"
                    ))
                } else {
                    TreeError::NotFound(path.clone(), self.describe())
                });
            }
            if mode.is_link() {
                return Err(refused("is a symlink in the commit, not a regular file"));
            }
            if mode.is_commit() {
                return Err(refused("is a submodule, not a regular file"));
            }
            if mode.is_tree() {
                return Err(refused("is a directory, not a regular file"));
            }
            let header = repo.find_header(id).map_err(|e| lost(&e))?;
            if header.kind() != gix::object::Kind::Blob {
                return Err(refused("is not a file"));
            }
            if header.size() > MAX_TREE_FILE {
                return Err(refused(&format!(
                    "is {} bytes, more than the {MAX_TREE_FILE} bytes trueup reads",
                    header.size()
                )));
            }
            let mut blob = repo.find_blob(id).map_err(|e| lost(&e))?;
            return Ok(blob.take_data());
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
        let tree = GitTree::open(dir.path(), &commit_id(commit), "commit x".into()).unwrap();
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
    fn a_new_cache_holds_no_template_files() {
        let state = tempfile::tempdir().unwrap();
        let cache = GitCache::open(state.path()).unwrap();
        assert!(cache.path().join("HEAD").is_file());
        let mut files = Vec::new();
        let mut dirs = vec![cache.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else {
                    files.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        // libgit2's own few files only, never a copy of git's sample hooks.
        files.sort();
        assert!(
            files
                .iter()
                .all(|f| !f.ends_with(".sample") || f == "README.sample"),
            "{files:?}"
        );
        assert!(files.len() <= 5, "{files:?}");
    }

    #[test]
    fn branch_names() {
        assert!(valid_branch("hosts/web1"));
        assert!(!valid_branch("hosts/../x"));
        assert!(!valid_branch("a b"));
    }
}
