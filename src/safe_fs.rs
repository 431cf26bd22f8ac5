//! File system access that never follows a symlink and never leaves a file
//! half-written.
//!
//! Every managed path is reached by walking from the root one component at a
//! time with `openat(O_NOFOLLOW | O_DIRECTORY)`, so a symlink anywhere in the
//! parent chain (even one swapped in during a run) stops the walk instead of
//! redirecting it. The final component is then inspected, read or replaced
//! relative to the parent's descriptor. Replacing a file writes a temporary
//! file in the same directory (mode 0600 while it is written), sets owner and
//! mode on it, fsyncs it, renames it over the destination and fsyncs the
//! directory: a reader sees the old file or the new one, never a mix.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

/// What went wrong, on which path, while doing what.
#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error("{path}: refusing to follow the symlink at {at}")]
    Symlink { path: PathBuf, at: PathBuf },
    #[error("{path}: {at} is not a directory")]
    NotADirectory { path: PathBuf, at: PathBuf },
    #[error("{path}: path must be absolute and must not contain '..'")]
    BadPath { path: PathBuf },
    #[error("{path}: {what}: {errno}")]
    Io {
        path: PathBuf,
        what: &'static str,
        errno: Errno,
    },
    #[error("{path}: {what}")]
    Refused { path: PathBuf, what: String },
}

type Result<T> = std::result::Result<T, SafeFsError>;

/// The kind and metadata of a node, read without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    pub kind: NodeKind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
    Other,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Directory => "directory",
            NodeKind::Symlink => "symlink",
            NodeKind::Other => "special file",
        }
    }
}

/// The normal components of an absolute path; `..` is refused.
pub fn components(path: &Path) -> Result<Vec<&OsStr>> {
    if !path.is_absolute() {
        return Err(SafeFsError::BadPath { path: path.into() });
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(SafeFsError::BadPath { path: path.into() });
            }
        }
    }
    Ok(out)
}

/// The parent directory of a managed path, opened without following any
/// symlink, and the name of the path inside it.
#[derive(Debug)]
pub struct Entry {
    /// Shared with a `WalkCache` when the walk reused its directories.
    dir: Arc<OwnedFd>,
    name: OsString,
    /// The full host path (root prefix included), for messages.
    shown: PathBuf,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(Errno) -> SafeFsError + 'a {
    move |errno| SafeFsError::Io {
        path: path.into(),
        what,
        errno,
    }
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `root` itself (the operator's `--root`, trusted and followed).
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io(root, "opening the root directory"))
}

impl Entry {
    /// Walks to the parent of `path` (absolute, without `..`) beneath `root`.
    ///
    /// Returns `None` when a parent is missing and `create` is false. With
    /// `create`, missing parents are made with mode 0755.
    pub fn open(root: &Path, path: &Path, create: bool) -> Result<Option<Entry>> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(SafeFsError::Refused {
                path: path.into(),
                what: "the root directory itself cannot be managed".into(),
            });
        };
        let shown = join_root(root, path);
        let mut dir = open_root(root)?;
        let mut at = root.to_path_buf();
        for part in parents {
            at.push(part);
            dir = match open_dir_at(&dir, part) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(&dir, *part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io(&at, "creating a parent directory")(e)),
                    }
                    open_dir_at(&dir, part).map_err(|e| classify(&dir, part, &shown, &at, e))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(classify(&dir, part, &shown, &at, e)),
            };
        }
        Ok(Some(Entry {
            dir: Arc::new(dir),
            name: name.to_os_string(),
            shown,
        }))
    }

    /// `open` without `create`, reusing the directories an earlier walk
    /// through `cache` opened, and leaving this walk's there for the next.
    pub fn open_cached(cache: &mut WalkCache, root: &Path, path: &Path) -> Result<Option<Entry>> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(SafeFsError::Refused {
                path: path.into(),
                what: "the root directory itself cannot be managed".into(),
            });
        };
        let shown = join_root(root, path);
        let root_fd = match &cache.root {
            Some((r, fd)) if r == root => fd.clone(),
            _ => {
                let fd = Arc::new(open_root(root)?);
                cache.root = Some((root.to_path_buf(), fd.clone()));
                cache.chain.clear();
                cache.missing = None;
                fd
            }
        };
        let shared = cache
            .chain
            .iter()
            .zip(parents)
            .take_while(|((have, _), want)| have.as_os_str() == **want)
            .count();
        cache.chain.truncate(shared);
        if let Some((depth, gone)) = &cache.missing {
            if *depth > shared {
                cache.missing = None;
            } else if parents.get(*depth).is_some_and(|p| *p == gone.as_os_str()) {
                // Under a directory this walk found missing: missing too.
                return Ok(None);
            }
        }
        for (i, part) in parents.iter().enumerate().skip(shared) {
            let dir = cache.chain.last().map_or(&root_fd, |(_, fd)| fd);
            let opened = match open_dir_at(dir, part) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    cache.missing = Some((i, part.to_os_string()));
                    return Ok(None);
                }
                Err(e) => {
                    let mut at = root.to_path_buf();
                    at.extend(&parents[..=i]);
                    return Err(classify(dir, part, &shown, &at, e));
                }
            };
            cache.chain.push((part.to_os_string(), Arc::new(opened)));
        }
        let dir = cache.chain.last().map_or(root_fd, |(_, fd)| fd.clone());
        Ok(Some(Entry {
            dir,
            name: name.to_os_string(),
            shown,
        }))
    }

    /// The path as shown in messages (root prefix included).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Metadata of the entry itself, `None` when it does not exist.
    pub fn stat(&self) -> Result<Option<NodeStat>> {
        match nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(node_stat(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io(&self.shown, "reading metadata")(e)),
        }
    }

    /// Opens the entry itself read-only, never through a symlink (and
    /// without blocking on a FIFO or taking a terminal).
    fn open_nofollow(&self) -> Result<OwnedFd> {
        nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP => SafeFsError::Symlink {
                path: self.shown.clone(),
                at: self.shown.clone(),
            },
            e => io(&self.shown, "opening")(e),
        })
    }

    /// Opens the entry for reading, refusing symlinks and anything that is
    /// not a regular file (a FIFO would block, a device would never end).
    fn open_regular(&self) -> Result<(std::fs::File, NodeStat)> {
        let fd = self.open_nofollow()?;
        let st =
            node_stat(&nix::sys::stat::fstat(&fd).map_err(io(&self.shown, "reading metadata"))?);
        if st.kind != NodeKind::File {
            return Err(SafeFsError::Refused {
                path: self.shown.clone(),
                what: format!("is a {}, not a regular file", st.kind.as_str()),
            });
        }
        Ok((std::fs::File::from(fd), st))
    }

    /// Reads a regular file's content, at most `limit` bytes.
    pub fn read(&self, limit: u64) -> Result<Vec<u8>> {
        self.read_with_stat(limit).map(|(content, _)| content)
    }

    /// Reads a regular file's content, at most `limit` bytes, with the
    /// metadata of the file read (one `fstat` of the open file: no `lstat`
    /// before it is needed to refuse a symlink or a special file).
    pub fn read_with_stat(&self, limit: u64) -> Result<(Vec<u8>, NodeStat)> {
        let (mut file, st) = self.open_regular()?;
        if st.size > limit {
            return Err(SafeFsError::Refused {
                path: self.shown.clone(),
                what: format!("is larger than the limit of {limit} bytes"),
            });
        }
        // One read asking for a byte more than the file holds: a regular
        // file that returns exactly its size then is at its end, which
        // spares the read that would only return 0. A file that changed
        // since fstat (or a short read) goes on to the general loop.
        let size = st.size as usize;
        let mut buf = vec![0; size + 1];
        let first = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io(&self.shown, "reading")(errno_of(&e)))?,
            }
        };
        buf.truncate(first);
        if first != size {
            (&mut file)
                .take(limit + 1 - first as u64)
                .read_to_end(&mut buf)
                .map_err(|e| io(&self.shown, "reading")(errno_of(&e)))?;
        }
        if buf.len() as u64 > limit {
            return Err(SafeFsError::Refused {
                path: self.shown.clone(),
                what: format!("is larger than the limit of {limit} bytes"),
            });
        }
        Ok((buf, st))
    }

    /// The target of a symlink.
    pub fn read_link(&self) -> Result<PathBuf> {
        nix::fcntl::readlinkat(&self.dir, self.name.as_os_str())
            .map(PathBuf::from)
            .map_err(io(&self.shown, "reading the link"))
    }

    /// Replaces the entry with a regular file holding `content`, atomically.
    pub fn write_atomic(
        &self,
        content: &[u8],
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
    ) -> Result<()> {
        let tmp = self.temp_name();
        let fd = nix::fcntl::openat(
            &self.dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io(&self.shown, "creating a temporary file"))?;
        let result = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(content)
                .map_err(|e| io(&self.shown, "writing a temporary file")(errno_of(&e)))?;
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(file.as_fd(), uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                    .map_err(io(&self.shown, "setting the owner"))?;
            }
            // After fchown: changing the owner clears setuid/setgid bits.
            nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode))
                .map_err(io(&self.shown, "setting the mode"))?;
            file.sync_all()
                .map_err(|e| io(&self.shown, "syncing a temporary file")(errno_of(&e)))?;
            nix::fcntl::renameat(&self.dir, tmp.as_os_str(), &self.dir, self.name.as_os_str())
                .map_err(io(&self.shown, "renaming into place"))
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(&self.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return result;
        }
        self.sync_dir()
    }

    /// Sets owner and mode of an existing file or directory in place.
    pub fn set_metadata(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<()> {
        let fd = self.open_nofollow()?;
        if uid.is_some() || gid.is_some() {
            nix::unistd::fchown(&fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                .map_err(io(&self.shown, "setting the owner"))?;
        }
        if let Some(mode) = mode {
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(io(&self.shown, "setting the mode"))?;
        }
        nix::unistd::fsync(&fd).map_err(io(&self.shown, "syncing"))
    }

    /// Creates the entry as a directory.
    pub fn mkdir(&self, mode: u32) -> Result<()> {
        nix::sys::stat::mkdirat(
            &self.dir,
            self.name.as_os_str(),
            Mode::from_bits_truncate(mode),
        )
        .map_err(io(&self.shown, "creating the directory"))?;
        // mkdir is subject to the umask; set the mode exactly.
        self.set_metadata(None, None, Some(mode))?;
        self.sync_dir()
    }

    /// Replaces the entry with a symlink to `target`, atomically.
    pub fn symlink_atomic(&self, target: &Path) -> Result<()> {
        let tmp = self.temp_name();
        nix::unistd::symlinkat(target, &self.dir, tmp.as_os_str())
            .map_err(io(&self.shown, "creating a temporary symlink"))?;
        if let Err(e) =
            nix::fcntl::renameat(&self.dir, tmp.as_os_str(), &self.dir, self.name.as_os_str())
        {
            let _ = nix::unistd::unlinkat(&self.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(io(&self.shown, "renaming into place")(e));
        }
        self.sync_dir()
    }

    /// Removes a file or symlink (not a directory).
    pub fn remove(&self) -> Result<()> {
        nix::unistd::unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(io(&self.shown, "removing"))?;
        self.sync_dir()
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self) -> Result<()> {
        nix::unistd::unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::RemoveDir)
            .map_err(io(&self.shown, "removing the directory"))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        nix::unistd::fsync(&self.dir).map_err(io(&self.shown, "syncing the directory"))
    }

    fn temp_name(&self) -> OsString {
        temp_name(&self.name)
    }
}

/// `.<name>.trueup-<pid>-<counter>`: a temporary file for `name` beside it
/// (the stale-file sweep reads the pid back).
fn temp_name(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The pid, asked of the kernel once (a getpid per file otherwise).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let mut tmp = OsString::from(".");
    // Keep the temporary name within NAME_MAX even for long names.
    let base = name.as_bytes();
    tmp.push(OsStr::from_bytes(&base[..base.len().min(200)]));
    tmp.push(format!(".trueup-{}-{n}", PID.get_or_init(std::process::id)));
    tmp
}

impl Entry {
    /// The first half of a batched `write_atomic`: writes `content` to a
    /// temporary file beside the entry and sets its owner and mode, but
    /// neither syncs nor renames it; `WriteBatch::commit` does both for
    /// every staged file at once. Returns the file's index in the batch.
    /// On error nothing is left behind and the entry is untouched.
    ///
    /// `absent`: the caller saw no entry at this path (its observation), so
    /// it is not looked up again. A hint: should the entry be there after
    /// all, the commit puts the file over it as it would any replacement.
    pub fn stage_file(
        &self,
        batch: &mut WriteBatch,
        content: &[u8],
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
        absent: bool,
    ) -> Result<usize> {
        let fill = |fd: OwnedFd, unnamed: bool| -> Result<OwnedFd> {
            let mut file = std::fs::File::from(fd);
            file.write_all(content)
                .map_err(|e| io(&self.shown, "writing a temporary file")(errno_of(&e)))?;
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(file.as_fd(), uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                    .map_err(io(&self.shown, "setting the owner"))?;
            }
            // After fchown: changing the owner clears setuid/setgid bits.
            // An unnamed file created with the mode already has it.
            if !created_with(mode, uid, gid, unnamed) {
                nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode))
                    .map_err(io(&self.shown, "setting the mode"))?;
            }
            Ok(OwnedFd::from(file))
        };
        let unnamed = self.open_unnamed(mode, absent);
        let temp = match unnamed {
            // Dropped on error: an unnamed file leaves nothing behind.
            Some(UnnamedFd { fd, open }) => Temp::Unnamed(UnnamedFd {
                fd: fill(fd, true)?,
                open,
            }),
            None => {
                let tmp = self.temp_name();
                let fd = nix::fcntl::openat(
                    &self.dir,
                    tmp.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io(&self.shown, "creating a temporary file"))?;
                if let Err(e) = fill(fd, false) {
                    let _ = nix::unistd::unlinkat(
                        &self.dir,
                        tmp.as_os_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                    return Err(e);
                }
                Temp::Named(tmp)
            }
        };
        batch.staged.push(Staged {
            dir: self.dir.clone(),
            temp,
            name: self.name.clone(),
            shown: self.shown.clone(),
        });
        batch.bytes = batch.bytes.saturating_add(content.len() as u64);
        Ok(batch.staged.len() - 1)
    }

    /// An unnamed file (`O_TMPFILE`) in the entry's directory, for an
    /// entry that does not exist yet: `commit` names it with one `linkat`,
    /// where a named temporary file costs a create and a rename (two
    /// directory updates), and a crash before that leaves nothing on disk.
    /// `None` (a named temporary file is used) when the entry exists (asked
    /// unless the caller saw it `absent`), the file system has no
    /// `O_TMPFILE`, `/proc/self/fd` is not there to link through, or the
    /// process holds as many unnamed files open as it may.
    fn open_unnamed(&self, mode: u32, absent: bool) -> Option<UnnamedFd> {
        if !absent {
            match nix::sys::stat::fstatat(
                &self.dir,
                self.name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Err(Errno::ENOENT) => {}
                _ => return None,
            }
        }
        unnamed_in(&self.dir, mode)
    }
}

/// An unnamed file in `dir`, within the process's budget (see
/// `Entry::open_unnamed`). Nobody can open it by name, so it may carry its
/// final permission bits from the start (less the umask). Open for reading
/// too: a file written ahead is read back when it cannot be adopted.
fn unnamed_in(dir: &OwnedFd, mode: u32) -> Option<UnnamedFd> {
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if UNNAMED_OPEN.load(Ordering::Relaxed) >= unnamed_budget()
        || !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir())
    {
        return None;
    }
    nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDWR | OFlag::O_TMPFILE | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode & 0o777),
    )
    .ok()
    .map(UnnamedFd::counted)
}

/// Where the files of one directory are written ahead of a plan
/// (`prestage`), found by one walk for all of them.
///
/// Unnamed files are made in the directory itself; when it is missing
/// (the apply makes it, and any missing parent above it), in the nearest
/// directory above it that exists: the apply links them into the new one,
/// on the same file system, and each has what a directory made there
/// would have passed on (the group of a setgid directory, its default
/// ACL).
#[derive(Debug)]
pub struct PrestageDir {
    dir: Arc<OwnedFd>,
    /// Whether `dir` is the files' own directory (else they cannot exist).
    own: bool,
}

/// The `PrestageDir` of `path`'s directory under `root`, walked through
/// `cache`; `None` when a parent is not a directory or cannot be opened.
pub fn prestage_dir(cache: &mut WalkCache, root: &Path, path: &Path) -> Option<PrestageDir> {
    match Entry::open_cached(cache, root, path) {
        Ok(Some(entry)) => Some(PrestageDir {
            dir: entry.dir,
            own: true,
        }),
        // The walk stopped at the first missing directory: the last one
        // it opened is the nearest that exists.
        Ok(None) => cache
            .chain
            .last()
            .map(|(_, fd)| fd)
            .or(cache.root.as_ref().map(|(_, fd)| fd))
            .map(|dir| PrestageDir {
                dir: dir.clone(),
                own: false,
            }),
        Err(_) => None,
    }
}

impl PrestageDir {
    /// Writes `content` for the file `name` of this directory ahead of a
    /// plan, to an unnamed file with `mode` and the process's owner, for a
    /// `WriteBatch::adopt` once a plan says to write exactly that to the
    /// missing file. Allocates nothing. `None` when the file exists, no
    /// unnamed file can be had (`Entry::open_unnamed`) or writing fails:
    /// the file is then written as usual. Nothing is visible before a
    /// batch commits it; dropped, it is gone.
    pub fn prestage(&self, name: &OsStr, content: &[u8], mode: u32) -> Option<Prestaged> {
        if self.own {
            match nix::sys::stat::fstatat(&*self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => {}
                _ => return None,
            }
        }
        let UnnamedFd { fd, open } = unnamed_in(&self.dir, mode)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content).ok()?;
        if !created_with(mode, None, None, true) {
            nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).ok()?;
        }
        let st = nix::sys::stat::fstat(file.as_fd()).ok()?;
        Some(Prestaged {
            fd: UnnamedFd {
                fd: OwnedFd::from(file),
                open,
            },
            dev: st.st_dev,
            gid: st.st_gid,
            mode,
            len: content.len() as u64,
        })
    }
}

/// `prestage_dir`, then `PrestageDir::prestage`, for one file.
#[cfg(test)]
pub fn prestage(
    cache: &mut WalkCache,
    root: &Path,
    path: &Path,
    content: &[u8],
    mode: u32,
) -> Option<Prestaged> {
    prestage_dir(cache, root, path)?.prestage(path.file_name()?, content, mode)
}

/// Grows the process's descriptor table to hold as many unnamed files as
/// it may (`unnamed_budget`, at most `cap`), best effort. Called while the
/// process has one thread: a table shared by several threads waits for an
/// RCU grace period each time it doubles (`expand_fdtable`), which made a
/// second thread writing 1,000 unnamed files three times slower than the
/// main thread. A table never shrinks; the kernel memory is a few bytes
/// per descriptor.
pub fn reserve_descriptors(cap: usize) {
    let Ok(high) = i32::try_from(unnamed_budget().min(cap)) else {
        return;
    };
    let Ok(dir) = nix::fcntl::open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if let Ok(fd) = nix::fcntl::fcntl(&dir, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(high)) {
        // SAFETY: `fd` was just made by F_DUPFD and is owned by nobody else.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
}

/// Unnamed files held open by the process (`UnnamedFd`), against
/// `unnamed_budget`.
static UNNAMED_OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An open unnamed file, counted in `UNNAMED_OPEN` while its `open`
/// token lives (the descriptor may be taken out to be written and put
/// back with the same token).
#[derive(Debug)]
struct UnnamedFd {
    fd: OwnedFd,
    open: OpenUnnamed,
}

impl UnnamedFd {
    fn counted(fd: OwnedFd) -> UnnamedFd {
        UNNAMED_OPEN.fetch_add(1, Ordering::Relaxed);
        UnnamedFd {
            fd,
            open: OpenUnnamed(()),
        }
    }
}

/// One count in `UNNAMED_OPEN`, given back when dropped.
#[derive(Debug)]
struct OpenUnnamed(());

impl Drop for OpenUnnamed {
    fn drop(&mut self) {
        UNNAMED_OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A file written by `prestage`: an unnamed file with its content and
/// mode, not yet part of a batch.
#[derive(Debug)]
pub struct Prestaged {
    fd: UnnamedFd,
    /// The file system it is on.
    dev: u64,
    /// Its group, as creating it gave it.
    gid: u32,
    mode: u32,
    len: u64,
}

impl Prestaged {
    /// The mode it was written with.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Its first `len` bytes, read back (the file's content when it was
    /// written with `len` bytes).
    pub fn read_back(&self, len: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("too large"))?;
        let file = std::fs::File::from(self.fd.fd.try_clone()?);
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    #[cfg(test)]
    pub fn inode(&self) -> u64 {
        nix::sys::stat::fstat(&self.fd.fd).unwrap().st_ino
    }
}

/// Whether an unnamed file created with `mode` already has it: no owner to
/// change, no setuid/setgid/sticky bit, and none of its bits taken by the
/// umask (read once from `/proc/self/status`; unknown: assume it does not).
fn created_with(mode: u32, uid: Option<u32>, gid: Option<u32>, unnamed: bool) -> bool {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let umask = UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
    });
    unnamed && keeps_mode(mode, uid.is_some() || gid.is_some(), *umask)
}

/// Whether a file created with `mode` under `umask` has exactly `mode`
/// and keeps it (changing the owner would clear setuid and setgid).
fn keeps_mode(mode: u32, chown: bool, umask: Option<u32>) -> bool {
    !chown && mode & !0o777 == 0 && umask.is_some_and(|u| mode & u == 0)
}

/// How many unnamed files a batch may hold open: what the soft open-file
/// limit leaves after a margin for everything else (beyond it, files go to
/// named temporary files). The limit is not raised: the programs trueup
/// runs would inherit it.
fn unnamed_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| usize::try_from(soft.saturating_sub(256)).unwrap_or(0))
            .unwrap_or(0)
    })
}

/// Where a staged file's content waits for its name.
#[derive(Debug)]
enum Temp {
    /// A temporary file beside the destination, renamed over it.
    Named(OsString),
    /// An unnamed file in the destination's directory, linked to its name.
    Unnamed(UnnamedFd),
}

/// Files written by `Entry::stage_file` and not yet in place.
///
/// Making each file durable on its own costs two fsyncs a file (the file,
/// then its directory), each a journal commit; a first apply of 1,000
/// files spent nearly all its time there. A batch keeps the same promise
/// for each file — after a power cut at any moment it holds its old
/// content or its new content, never a mix — at the cost of one `syncfs`
/// per file system and one fsync per directory:
///
/// 1. every temporary file is written (`stage_file`),
/// 2. `syncfs` makes all of them durable together, with anything else
///    registered through `sync_also` (the backups of replaced content),
/// 3. each is renamed over its destination, directory by directory, and
///    each directory is fsynced once after its renames.
///
/// No rename happens before its content is durable, so a crash leaves
/// every file old or new; a crash before step 3 leaves temporary files,
/// which the next write of the same file removes. A batch that is dropped
/// without `commit` removes its temporary files.
#[derive(Debug, Default)]
pub struct WriteBatch {
    staged: Vec<Staged>,
    /// Other directories whose file systems must be synced before any
    /// rename (the backup directory).
    also: Vec<PathBuf>,
    bytes: u64,
    /// The directory a file was last adopted into, its file system, and
    /// the group a file created in it gets.
    adopt_dev: Option<(Arc<OwnedFd>, u64, u32)>,
}

#[derive(Debug)]
struct Staged {
    dir: Arc<OwnedFd>,
    temp: Temp,
    name: OsString,
    shown: PathBuf,
}

impl WriteBatch {
    /// How many files are staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Bytes of content staged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes a file written ahead (`prestage`) into the batch as the new
    /// content of `entry`, which the caller saw missing, as `stage_file`
    /// would have staged it. Gives the file back when it is not on the
    /// entry's file system (it cannot be linked there), or when creating
    /// it in the entry's directory now would give it another group (the
    /// directory was made setgid, or given another group, after the file
    /// was written ahead elsewhere).
    pub fn adopt(&mut self, entry: &Entry, file: Prestaged) -> std::result::Result<(), Prestaged> {
        let (dev, gid) = match &self.adopt_dev {
            Some((dir, dev, gid)) if Arc::ptr_eq(dir, &entry.dir) => (*dev, *gid),
            _ => match nix::sys::stat::fstat(&*entry.dir) {
                Ok(st) => {
                    let gid = if st.st_mode & libc::S_ISGID != 0 {
                        st.st_gid
                    } else {
                        nix::unistd::getegid().as_raw()
                    };
                    self.adopt_dev = Some((entry.dir.clone(), st.st_dev, gid));
                    (st.st_dev, gid)
                }
                Err(_) => return Err(file),
            },
        };
        if dev != file.dev || gid != file.gid {
            return Err(file);
        }
        self.bytes = self.bytes.saturating_add(file.len);
        self.staged.push(Staged {
            dir: entry.dir.clone(),
            temp: Temp::Unnamed(file.fd),
            name: entry.name.clone(),
            shown: entry.shown.clone(),
        });
        Ok(())
    }

    /// Syncs the file system holding `dir` too before any rename: files
    /// written there (unsynced) must be durable before a staged file
    /// replaces anything.
    pub fn sync_also(&mut self, dir: &Path) {
        if !self.also.iter().any(|d| d == dir) {
            self.also.push(dir.to_path_buf());
        }
    }

    /// Makes every staged file durable and renames it into place; see the
    /// type's docs. Returns one result per staged file, in staging order.
    pub fn commit(mut self) -> Vec<Result<()>> {
        let staged = std::mem::take(&mut self.staged);
        let mut results: Vec<Result<()>> = Vec::with_capacity(staged.len());
        // One syncfs per file system: the staged files' directories and
        // the extra ones. An error from syncfs may be anybody's (it reports
        // any writeback error on the file system), so on error each file
        // is fsynced on its own and only those that fail are dropped.
        let mut devices: Vec<u64> = Vec::new();
        let mut synced_all = true;
        let mut last: Option<&Arc<OwnedFd>> = None;
        for s in &staged {
            if last.is_some_and(|l| Arc::ptr_eq(l, &s.dir)) {
                continue;
            }
            last = Some(&s.dir);
            let Ok(st) = nix::sys::stat::fstat(&s.dir) else {
                synced_all = false;
                continue;
            };
            if devices.contains(&st.st_dev) {
                continue;
            }
            devices.push(st.st_dev);
            if nix::unistd::syncfs(&s.dir).is_err() {
                synced_all = false;
            }
        }
        // What was written beside the batch (the backups of the content
        // it replaces) must be durable before anything is replaced: when
        // that cannot be made sure of, nothing is renamed.
        let mut also_failed: Option<(PathBuf, Errno)> = None;
        for dir in &self.also {
            let synced = nix::fcntl::open(
                dir.as_path(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .and_then(|fd| {
                let st = nix::sys::stat::fstat(&fd)?;
                if !devices.contains(&st.st_dev) {
                    devices.push(st.st_dev);
                    nix::unistd::syncfs(&fd)?;
                }
                Ok(())
            });
            if let Err(e) = synced {
                also_failed.get_or_insert((dir.clone(), e));
            }
        }
        for s in &staged {
            let durable = if let Some((dir, e)) = &also_failed {
                Err(SafeFsError::Io {
                    path: dir.clone(),
                    what: "syncing the backups of replaced content",
                    errno: *e,
                })
            } else if synced_all {
                Ok(())
            } else {
                match &s.temp {
                    Temp::Named(tmp) => fsync_at(&s.dir, tmp),
                    Temp::Unnamed(u) => nix::unistd::fsync(&u.fd),
                }
                .map_err(io(&s.shown, "syncing a temporary file"))
            };
            let placed = durable.and_then(|()| match &s.temp {
                Temp::Named(tmp) => {
                    nix::fcntl::renameat(&s.dir, tmp.as_os_str(), &s.dir, s.name.as_os_str())
                        .map_err(io(&s.shown, "renaming into place"))
                }
                Temp::Unnamed(fd) => link_unnamed(&s.dir, &fd.fd, &s.name)
                    .map_err(io(&s.shown, "linking into place")),
            });
            // Not in place: a named temporary file goes (an unnamed one
            // goes when the batch is dropped).
            if let (Err(_), Temp::Named(tmp)) = (&placed, &s.temp) {
                let _ = nix::unistd::unlinkat(&s.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
            results.push(placed);
        }
        // Each directory once, after the renames into it (files come in
        // path order, so a directory's files are next to each other).
        let mut i = 0;
        while i < staged.len() {
            let mut j = i + 1;
            while j < staged.len() && Arc::ptr_eq(&staged[j].dir, &staged[i].dir) {
                j += 1;
            }
            if results[i..j].iter().any(|r| r.is_ok())
                && let Err(e) = nix::unistd::fsync(&*staged[i].dir)
            {
                for (k, r) in results.iter_mut().enumerate().take(j).skip(i) {
                    if r.is_ok() {
                        *r = Err(io(&staged[k].shown, "syncing the directory")(e));
                    }
                }
            }
            i = j;
        }
        close_later(staged);
        results
    }
}

/// From this many files on, a committed batch closes its files on a
/// thread of its own.
const CLOSE_ON_THREAD: usize = 256;

/// Closes the files of a committed batch: each is an unnamed file's last
/// descriptor (or a name), and closing a thousand of them took 1–2 ms the
/// run can spend on its report meanwhile. Nothing waits for it: a closed
/// descriptor changes nothing on disk. Closed here when no thread starts.
fn close_later(staged: Vec<Staged>) {
    if staged.len() < CLOSE_ON_THREAD {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("close".into())
        .spawn(move || drop(staged));
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        for s in &self.staged {
            // An unnamed file goes when its descriptor closes.
            if let Temp::Named(tmp) = &s.temp {
                let _ = nix::unistd::unlinkat(&s.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// Gives the unnamed file `fd` the name `name` in `dir`. Should the name
/// have appeared since the file was staged, the file is linked under a
/// temporary name and renamed over it, as a named temporary file would be.
///
/// The file is linked by its descriptor (`AT_EMPTY_PATH`) where the kernel
/// allows it (a process with `CAP_DAC_READ_SEARCH`, as the agent), else
/// through its `/proc/self/fd` link, a path lookup through procfs more.
fn link_unnamed(dir: &OwnedFd, fd: &OwnedFd, name: &OsStr) -> std::result::Result<(), Errno> {
    static BY_FD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let link = |to: &OsStr| {
        let by_proc = || {
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)).as_str(),
                dir,
                to,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
        };
        if !BY_FD.load(std::sync::atomic::Ordering::Relaxed) {
            return by_proc();
        }
        match nix::unistd::linkat(fd, "", dir, to, AtFlags::AT_EMPTY_PATH) {
            // Refused for want of the capability (ENOENT, as the kernel
            // says it): the procfs link, from now on when that works.
            Err(Errno::ENOENT | Errno::EPERM) => by_proc().inspect(|()| {
                BY_FD.store(false, std::sync::atomic::Ordering::Relaxed);
            }),
            r => r,
        }
    };
    match link(name) {
        Err(Errno::EEXIST) => {
            let tmp = temp_name(name);
            link(&tmp)?;
            nix::fcntl::renameat(dir, tmp.as_os_str(), dir, name).inspect_err(|_| {
                let _ = nix::unistd::unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            })
        }
        r => r,
    }
}

/// fsyncs the file `name` in `dir` (a temporary file of ours).
fn fsync_at(dir: &OwnedFd, name: &OsStr) -> std::result::Result<(), Errno> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::unistd::fsync(&fd)
}

/// Why a validated write left the file as it was.
#[derive(Debug, thiserror::Error)]
pub enum ValidatedWriteError {
    #[error(transparent)]
    Fs(#[from] SafeFsError),
    /// The check refused the new content; its words.
    #[error("{0}")]
    Rejected(String),
}

impl Entry {
    /// `write_atomic`, with `check` run on the complete temporary file
    /// (given its path, which lies beside the entry) before it replaces the
    /// entry: when `check` refuses, the temporary file is removed and the
    /// entry is left exactly as it was. For `validate:` commands, which
    /// must see the file where it will live (`visudo`, `nginx -t`).
    pub fn write_atomic_validated(
        &self,
        content: &[u8],
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
        check: &mut dyn FnMut(&Path) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), ValidatedWriteError> {
        let tmp = self.temp_name();
        let fd = nix::fcntl::openat(
            &self.dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io(&self.shown, "creating a temporary file"))?;
        let tmp_path = self.shown.parent().unwrap_or(Path::new("/")).join(&tmp);
        let result = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(content)
                .map_err(|e| io(&self.shown, "writing a temporary file")(errno_of(&e)))?;
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(file.as_fd(), uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                    .map_err(io(&self.shown, "setting the owner"))?;
            }
            nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode))
                .map_err(io(&self.shown, "setting the mode"))?;
            file.sync_all()
                .map_err(|e| io(&self.shown, "syncing a temporary file")(errno_of(&e)))?;
            drop(file);
            check(&tmp_path).map_err(ValidatedWriteError::Rejected)?;
            nix::fcntl::renameat(&self.dir, tmp.as_os_str(), &self.dir, self.name.as_os_str())
                .map_err(io(&self.shown, "renaming into place"))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(&self.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return result;
        }
        Ok(self.sync_dir()?)
    }
}

/// Removes the temporary files a killed trueup left in the directory
/// `dir` beneath `root` (`.<name>.trueup-<pid>-<n>` whose process is
/// gone), whatever file they were for, so a file that is never written
/// again does not keep its leftovers. Called once per managed directory at
/// the start of an apply, replacing a listing per write. A missing
/// directory has none. Returns how many were removed.
pub fn sweep_stale_temps(root: &Path, dir: &Path) -> Result<usize> {
    use std::os::fd::AsRawFd;
    let mut fd = open_root(root)?;
    let mut at = root.to_path_buf();
    for part in components(dir)? {
        at.push(part);
        fd = match open_dir_at(&fd, part) {
            Ok(next) => next,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => return Ok(0),
            Err(e) => return Err(io(&at, "opening the directory")(e)),
        };
    }
    // The descriptor's own directory, whatever happens to its path.
    let listing = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let entries =
        std::fs::read_dir(listing).map_err(|e| io(&at, "listing the directory")(errno_of(&e)))?;
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let bytes = name.as_bytes();
        let Some(at_marker) = bytes.windows(8).rposition(|w| w == b".trueup-") else {
            continue;
        };
        if !bytes.starts_with(b".") {
            continue;
        }
        let Some(pid) = stale_temp_owner(&bytes[at_marker + 8..]) else {
            continue;
        };
        // A live process's file may be a write in hand (this run's, or one
        // under another state directory and lock): left alone.
        let alive = pid == std::process::id()
            || !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
                Err(Errno::ESRCH)
            );
        if alive {
            continue;
        }
        match nix::unistd::unlinkat(&fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => removed += 1,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(io(&at.join(&name), "removing a stale temporary file")(e)),
        }
    }
    Ok(removed)
}

/// The pid in the tail `<pid>-<n>` of a temporary file's name.
fn stale_temp_owner(rest: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(rest).ok()?;
    let (pid, n) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0 && *p <= i32::MAX as u32)
}

/// The directories of the last walk made through `Entry::open_cached`.
///
/// Observing thousands of files in path order would otherwise open and
/// close every parent directory once per file; each walk keeps the part of
/// the chain it shares with the one before. These descriptors were opened
/// with `O_NOFOLLOW` like any walk's, so reusing them follows no symlink.
/// A cache serves one pass over the machine (one observation), and holds
/// as many descriptors as the deepest path has parents.
#[derive(Debug, Default)]
pub struct WalkCache {
    root: Option<(PathBuf, Arc<OwnedFd>)>,
    chain: Vec<(OsString, Arc<OwnedFd>)>,
    /// A directory found missing: the name after the first `.0` entries
    /// of `chain`. Whoever creates directories starts a new cache.
    missing: Option<(usize, OsString)>,
}

/// `root` joined with an absolute `path`.
pub fn join_root(root: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    root.join(rel)
}

fn classify(dir: &OwnedFd, name: &OsStr, path: &Path, at: &Path, e: Errno) -> SafeFsError {
    // O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP.
    let is_link = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| node_stat(&st).kind == NodeKind::Symlink)
        .unwrap_or(false);
    match e {
        Errno::ELOOP | Errno::ENOTDIR if is_link => SafeFsError::Symlink {
            path: path.into(),
            at: at.into(),
        },
        Errno::ENOTDIR => SafeFsError::NotADirectory {
            path: path.into(),
            at: at.into(),
        },
        e => SafeFsError::Io {
            path: path.into(),
            what: "opening a parent directory",
            errno: e,
        },
    }
}

fn node_stat(st: &nix::sys::stat::FileStat) -> NodeStat {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let kind = if fmt == SFlag::S_IFREG {
        NodeKind::File
    } else if fmt == SFlag::S_IFDIR {
        NodeKind::Directory
    } else if fmt == SFlag::S_IFLNK {
        NodeKind::Symlink
    } else {
        NodeKind::Other
    };
    NodeStat {
        kind,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        size: u64::try_from(st.st_size).unwrap_or(0),
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// Writes a file of trueup's own (state, reports, backups) atomically and
/// durably, creating its directory. These live under the state directory,
/// which the operator chose, so only the final component is protected.
pub fn write_own_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    replace_own_file(path, content, mode, true)
}

fn replace_own_file(path: &Path, content: &[u8], mode: u32, sync: bool) -> std::io::Result<()> {
    replace_own_file_with(path, mode, sync, |out| out.write_all(content))
}

/// `write_own_file` for content that `fill` writes straight into the
/// temporary file through a buffer: a large report is never held whole in
/// memory. `sync: false` leaves out the two fsyncs, for a file whose loss
/// in a power cut costs nothing that matters: the render cache (every
/// reader verifies it and ignores a bad one) and an in-sync run's
/// `last-run.json`. Readers still see the old file or the new one, never
/// a part.
pub fn write_own_file_from(
    path: &Path,
    mode: u32,
    sync: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    replace_own_file_with(path, mode, sync, fill)
}

fn replace_own_file_with(
    path: &Path,
    mode: u32,
    sync: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut fill = Some(fill);
    let mut files = [OwnFile {
        path,
        mode,
        sync,
        fill: &mut |out| match fill.take() {
            Some(f) => f(out),
            None => Ok(()),
        },
    }];
    let [result] = write_own_files(&mut files);
    result
}

/// Starts writing `file`'s dirty pages to disk without waiting for them
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`); best effort, as only
/// the fsync after it promises anything.
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open; it reads
    // and writes no memory of ours.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// One of trueup's own files for `write_own_files`.
pub struct OwnFile<'a> {
    pub path: &'a Path,
    pub mode: u32,
    /// Durable when written (see `write_own_file_from` for when not).
    pub sync: bool,
    /// Writes the content, through a buffer; called once.
    pub fill: &'a mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
}

/// Writes several of trueup's own files, each atomically, for the price of
/// one: every temporary file is written, those to be durable are fsynced
/// (the first fsync commits the journal with all of them, so the others
/// find little left to do), every file is renamed into place, and each
/// directory is fsynced once. Two durable files cost two journal commits
/// instead of four. Each file still holds its old content or its new one
/// after a crash; the files are not replaced as one (a crash between two
/// renames leaves the first new and the second old). One result per file,
/// in order.
pub fn write_own_files<const N: usize>(files: &mut [OwnFile<'_>; N]) -> [std::io::Result<()>; N] {
    let mut results: [std::io::Result<()>; N] = std::array::from_fn(|_| Ok(()));
    let mut temps: [Option<tempfile::NamedTempFile>; N] = std::array::from_fn(|_| None);
    for (i, f) in files.iter_mut().enumerate() {
        let written = (|| {
            let dir = f.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".trueup-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(f.mode))
                .tempfile_in(dir)?;
            {
                let mut out = std::io::BufWriter::new(tmp.as_file_mut());
                (f.fill)(&mut out)?;
                out.flush()?;
            }
            Ok(tmp)
        })();
        match written {
            Ok(tmp) => temps[i] = Some(tmp),
            Err(e) => results[i] = Err(e),
        }
    }
    // Writeback of every durable file starts before the first fsync waits:
    // their blocks are then allocated in the journal transaction that
    // fsync commits, and the fsyncs after it have no commit of their own.
    for (f, tmp) in files.iter().zip(&temps) {
        if let (true, Some(tmp)) = (f.sync, tmp) {
            start_writeback(tmp.as_file());
        }
    }
    for (i, f) in files.iter().enumerate() {
        if let (true, Some(tmp)) = (f.sync, &temps[i])
            && let Err(e) = tmp.as_file().sync_all()
        {
            results[i] = Err(e);
            temps[i] = None;
        }
    }
    for (i, f) in files.iter().enumerate() {
        if let Some(tmp) = temps[i].take()
            && let Err(e) = tmp.persist(f.path)
        {
            results[i] = Err(e.error);
        }
    }
    // Each directory once, after every rename into it.
    fn parent<'p>(f: &OwnFile<'p>) -> &'p Path {
        f.path.parent().unwrap_or(Path::new("."))
    }
    let mut synced_dirs: Vec<&Path> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let dir = parent(f);
        if !f.sync || results[i].is_err() || synced_dirs.contains(&dir) {
            continue;
        }
        synced_dirs.push(dir);
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            for (j, g) in files.iter().enumerate() {
                if g.sync && parent(g) == dir && results[j].is_ok() {
                    results[j] = Err(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_is_refused() {
        assert!(components(Path::new("/etc/../shadow")).is_err());
        assert!(components(Path::new("etc/motd")).is_err());
        assert_eq!(
            components(Path::new("/etc//motd")).unwrap(),
            vec!["etc", "motd"]
        );
    }

    #[test]
    fn write_read_and_replace() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/a/b/c.txt"), true)
            .unwrap()
            .unwrap();
        assert_eq!(e.stat().unwrap(), None);
        e.write_atomic(b"one", None, None, 0o640).unwrap();
        let st = e.stat().unwrap().unwrap();
        assert_eq!((st.kind, st.mode, st.size), (NodeKind::File, 0o640, 3));
        e.write_atomic(b"two", None, None, 0o600).unwrap();
        assert_eq!(e.read(10).unwrap(), b"two");
        assert!(e.read(2).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("a/b"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn stale_temp_files_are_swept_from_a_directory() {
        assert_eq!(stale_temp_owner(b"123-0"), Some(123));
        assert_eq!(stale_temp_owner(b"123-"), None);
        assert_eq!(stale_temp_owner(b"x-1"), None);
        assert_eq!(stale_temp_owner(b"0-1"), None);
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/etc/a.conf"), true)
            .unwrap()
            .unwrap();
        e.write_atomic(b"whole", None, None, 0o644).unwrap();
        let etc = root.path().join("etc");
        std::fs::write(etc.join(".a.conf.trueup-4194999-7"), "torn").unwrap();
        std::fs::write(etc.join(".b.conf.trueup-4194998-7"), "torn").unwrap();
        std::fs::write(etc.join(".c.trueup-notapid"), "keep").unwrap();
        std::fs::write(etc.join("d.trueup-1-1"), "keep").unwrap();
        let mine = format!(".e.trueup-{}-1", std::process::id());
        std::fs::write(etc.join(&mine), "a write in hand").unwrap();
        // pid 1 is always alive: its file is left alone.
        std::fs::write(etc.join(".f.trueup-1-1"), "live").unwrap();
        assert_eq!(
            sweep_stale_temps(root.path(), Path::new("/etc")).unwrap(),
            2
        );
        let mut names: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec![
            ".c.trueup-notapid",
            ".f.trueup-1-1",
            "a.conf",
            "d.trueup-1-1",
            mine.as_str(),
        ];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(
            sweep_stale_temps(root.path(), Path::new("/nowhere")).unwrap(),
            0
        );
    }

    #[test]
    fn a_batch_renames_nothing_before_commit_and_everything_at_it() {
        let root = tempfile::tempdir().unwrap();
        let old = Entry::open(root.path(), Path::new("/etc/a.conf"), true)
            .unwrap()
            .unwrap();
        old.write_atomic(b"old a", None, None, 0o644).unwrap();
        let mut batch = WriteBatch::default();
        let mut cache = WalkCache::default();
        for (p, text) in [("/etc/a.conf", "new a"), ("/etc/b.conf", "new b")] {
            let e = Entry::open_cached(&mut cache, root.path(), Path::new(p))
                .unwrap()
                .unwrap();
            e.stage_file(&mut batch, text.as_bytes(), None, None, 0o640, false)
                .unwrap();
        }
        let etc = root.path().join("etc");
        // Staged: the old content is still in place, the new one beside it.
        assert_eq!(
            std::fs::read_to_string(etc.join("a.conf")).unwrap(),
            "old a"
        );
        assert!(!etc.join("b.conf").exists());
        // a.conf's new content waits in a temporary file beside it; b.conf,
        // a new file, in an unnamed one (O_TMPFILE) that has no entry yet.
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 2);
        let results = batch.commit();
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(
            std::fs::read_to_string(etc.join("a.conf")).unwrap(),
            "new a"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("b.conf")).unwrap(),
            "new b"
        );
        let st = Entry::open(root.path(), Path::new("/etc/b.conf"), false)
            .unwrap()
            .unwrap()
            .stat()
            .unwrap()
            .unwrap();
        assert_eq!(st.mode, 0o640);
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 2, "no temp left");
    }

    #[test]
    fn files_written_ahead_have_no_name_until_adopted_and_committed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/old.conf"), "old").unwrap();
        let listing = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let mut cache = WalkCache::default();
        let mut ahead = |p: &str, text: &str| {
            prestage(
                &mut cache,
                root.path(),
                Path::new(p),
                text.as_bytes(),
                0o640,
            )
        };
        // In its directory; under a directory still to be made (in the
        // nearest one there, /etc); and one that goes unused.
        let beside = ahead("/etc/new.conf", "new").unwrap();
        let deep = ahead("/etc/app/conf.d/deep.conf", "deep").unwrap();
        let unused = ahead("/etc/unused.conf", "unused").unwrap();
        // Only a missing file is written ahead.
        assert!(ahead("/etc/old.conf", "replaced").is_none());
        assert_eq!(beside.mode(), 0o640);
        assert_eq!(listing(root.path()), ["etc"]);
        assert_eq!(listing(&root.path().join("etc")), ["old.conf"]);
        drop(unused);

        // The apply makes the missing parents, then takes the files in.
        let mut batch = WriteBatch::default();
        for (p, file) in [
            ("/etc/new.conf", beside),
            ("/etc/app/conf.d/deep.conf", deep),
        ] {
            let e = Entry::open(root.path(), Path::new(p), true)
                .unwrap()
                .unwrap();
            batch.adopt(&e, file).unwrap();
        }
        assert_eq!(listing(&root.path().join("etc")), ["app", "old.conf"]);
        assert!(listing(&root.path().join("etc/app/conf.d")).is_empty());
        let results = batch.commit();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(
            listing(&root.path().join("etc")),
            ["app", "new.conf", "old.conf"]
        );
        for (p, text) in [
            ("etc/new.conf", "new"),
            ("etc/app/conf.d/deep.conf", "deep"),
        ] {
            let path = root.path().join(p);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{p}");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o640, "{p}");
        }
        assert_eq!(listing(&root.path().join("etc/app/conf.d")), ["deep.conf"]);
    }

    #[test]
    fn a_file_written_ahead_is_given_back_when_its_new_directory_gives_another_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // chown to a group of our choosing needs root.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let mut cache = WalkCache::default();
        let path = Path::new("/srv/shared/a.conf");
        // Written ahead in the nearest directory there (the root).
        let file = prestage(&mut cache, root.path(), path, b"a", 0o644).unwrap();
        // The apply makes /srv/shared, and a step makes it setgid to
        // another group: a file created there now would get that group.
        let e = Entry::open(root.path(), path, true).unwrap().unwrap();
        let shared = root.path().join("srv/shared");
        nix::unistd::chown(&shared, None, Some(Gid::from_raw(4242))).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let mut batch = WriteBatch::default();
        let file = batch.adopt(&e, file).unwrap_err();
        assert!(batch.is_empty());
        drop(file);
        // Staged as usual instead, it gets the directory's group.
        e.stage_file(&mut batch, b"a", None, None, 0o644, true)
            .unwrap();
        assert!(batch.commit().iter().all(|r| r.is_ok()));
        assert_eq!(
            std::fs::metadata(shared.join("a.conf")).unwrap().gid(),
            4242
        );
    }

    #[test]
    fn a_file_written_ahead_on_another_file_system_is_given_back() {
        use std::os::unix::fs::MetadataExt;
        // Needs a second file system: /dev/shm (tmpfs) beside the
        // temporary directory's.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let disk = tempfile::tempdir().unwrap();
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(disk.path()) {
            return;
        }
        let mut cache = WalkCache::default();
        let file = prestage(&mut cache, shm.path(), Path::new("/a.conf"), b"a", 0o644).unwrap();
        let e = Entry::open(disk.path(), Path::new("/a.conf"), true)
            .unwrap()
            .unwrap();
        let mut batch = WriteBatch::default();
        assert!(batch.adopt(&e, file).is_err());
        assert!(batch.is_empty());
    }

    #[test]
    fn a_new_file_that_appears_before_commit_is_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/etc/new.conf"), true)
            .unwrap()
            .unwrap();
        let mut batch = WriteBatch::default();
        e.stage_file(&mut batch, b"ours\n", None, None, 0o644, true)
            .unwrap();
        let etc = root.path().join("etc");
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 0, "unnamed");
        // Someone writes the name between the plan and the commit: the
        // link cannot take it, the rename over it does.
        std::fs::write(etc.join("new.conf"), "theirs\n").unwrap();
        let results = batch.commit();
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(std::fs::read(etc.join("new.conf")).unwrap(), b"ours\n");
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn a_file_wrongly_said_absent_replaces_the_old_one_whole() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/etc/a.conf"), true)
            .unwrap()
            .unwrap();
        e.write_atomic(b"old\n", None, None, 0o644).unwrap();
        let mut batch = WriteBatch::default();
        e.stage_file(&mut batch, b"new\n", None, None, 0o600, true)
            .unwrap();
        let etc = root.path().join("etc");
        assert_eq!(std::fs::read(etc.join("a.conf")).unwrap(), b"old\n");
        let results = batch.commit();
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(std::fs::read(etc.join("a.conf")).unwrap(), b"new\n");
        let mode = std::fs::metadata(etc.join("a.conf")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
            0o600
        );
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn a_mode_is_set_apart_only_when_creating_cannot_give_it() {
        assert!(keeps_mode(0o644, false, Some(0o022)));
        assert!(keeps_mode(0o600, false, Some(0o077)));
        assert!(
            !keeps_mode(0o644, false, Some(0o077)),
            "the umask takes bits"
        );
        assert!(!keeps_mode(0o644, true, Some(0o022)), "an owner to change");
        assert!(!keeps_mode(0o4755, false, Some(0o022)), "setuid");
        assert!(!keeps_mode(0o644, false, None), "umask unknown");
    }

    #[test]
    fn a_dropped_batch_leaves_the_old_files_and_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/etc/a.conf"), true)
            .unwrap()
            .unwrap();
        e.write_atomic(b"old", None, None, 0o644).unwrap();
        let mut batch = WriteBatch::default();
        e.stage_file(&mut batch, b"new", None, None, 0o644, false)
            .unwrap();
        drop(batch);
        let etc = root.path().join("etc");
        assert_eq!(std::fs::read_to_string(etc.join("a.conf")).unwrap(), "old");
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);
    }

    #[test]
    fn a_batch_whose_backups_cannot_be_synced_replaces_nothing() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::open(root.path(), Path::new("/a.conf"), true)
            .unwrap()
            .unwrap();
        e.write_atomic(b"old", None, None, 0o644).unwrap();
        let mut batch = WriteBatch::default();
        e.stage_file(&mut batch, b"new", None, None, 0o644, false)
            .unwrap();
        batch.sync_also(&root.path().join("no-such-backup-dir"));
        let results = batch.commit();
        assert!(results[0].is_err());
        assert_eq!(std::fs::read(root.path().join("a.conf")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinked_parent_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        let err = Entry::open(root.path(), Path::new("/etc/motd"), true).unwrap_err();
        assert!(matches!(err, SafeFsError::Symlink { .. }), "{err}");
    }

    #[test]
    fn symlink_destination_is_not_read_through() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("motd")).unwrap();
        let e = Entry::open(root.path(), Path::new("/motd"), false)
            .unwrap()
            .unwrap();
        assert_eq!(e.stat().unwrap().unwrap().kind, NodeKind::Symlink);
        assert!(e.read(100).is_err());
        assert!(e.set_metadata(None, None, Some(0o600)).is_err());
    }

    #[test]
    fn reads_whole_files_of_every_size_up_to_the_limit() {
        let root = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 200_000] {
            let text: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(root.path().join("f"), &text).unwrap();
            let e = Entry::open(root.path(), Path::new("/f"), false)
                .unwrap()
                .unwrap();
            assert_eq!(e.read(len as u64).unwrap(), text, "{len} bytes");
            if len > 0 {
                assert!(e.read(len as u64 - 1).is_err(), "{len} bytes");
            }
        }
    }

    #[test]
    fn cached_walks_read_what_fresh_walks_read() {
        let root = tempfile::tempdir().unwrap();
        for (p, text) in [
            ("a/b/one", "1"),
            ("a/b/two", "2"),
            ("a/c/three", "3"),
            ("top", "t"),
        ] {
            let path = root.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x"), "outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/link")).unwrap();
        let mut cache = WalkCache::default();
        let read = |cache: &mut WalkCache, p: &str| {
            Entry::open_cached(cache, root.path(), Path::new(p))
                .map(|e| e.map(|e| e.read(100).unwrap()))
        };
        assert_eq!(read(&mut cache, "/a/b/one").unwrap().unwrap(), b"1");
        assert_eq!(read(&mut cache, "/a/b/two").unwrap().unwrap(), b"2");
        // A missing parent ends the walk; the next one still works.
        assert!(read(&mut cache, "/a/b/nope/four").unwrap().is_none());
        // Under it, missing without a look; beside it, found.
        assert!(read(&mut cache, "/a/b/nope/five").unwrap().is_none());
        assert!(read(&mut cache, "/a/b/nope/deeper/six").unwrap().is_none());
        assert_eq!(read(&mut cache, "/a/b/two").unwrap().unwrap(), b"2");
        assert!(read(&mut cache, "/a/c/nope/x").unwrap().is_none());
        assert!(matches!(
            read(&mut cache, "/a/link/x"),
            Err(SafeFsError::Symlink { .. })
        ));
        assert_eq!(read(&mut cache, "/a/c/three").unwrap().unwrap(), b"3");
        assert_eq!(read(&mut cache, "/top").unwrap().unwrap(), b"t");
        assert_eq!(read(&mut cache, "/a/b/one").unwrap().unwrap(), b"1");
        // Another root is walked from that root.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("top"), "other").unwrap();
        let e = Entry::open_cached(&mut cache, other.path(), Path::new("/top"))
            .unwrap()
            .unwrap();
        assert_eq!(e.read(100).unwrap(), b"other");
        assert!(Entry::open_cached(&mut cache, root.path(), Path::new("/")).is_err());
    }

    #[test]
    fn own_files_written_together_each_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("sub/b.json"));
        std::fs::write(&a, "old a").unwrap();
        let blocked = dir.path().join("file/c.json");
        std::fs::write(dir.path().join("file"), "not a directory").unwrap();
        let mut fill_a = |out: &mut dyn Write| out.write_all(b"new a");
        let mut fill_b = |out: &mut dyn Write| out.write_all(b"new b");
        let mut fill_c = |out: &mut dyn Write| out.write_all(b"never");
        let mut failing = |out: &mut dyn Write| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("serializer gave up"))
        };
        let file = |path, sync, fill| OwnFile {
            path,
            mode: 0o640,
            sync,
            fill,
        };
        let [ra, rb, rc] = write_own_files(&mut [
            file(&a, true, &mut fill_a),
            file(&b, false, &mut fill_b),
            file(&blocked, true, &mut fill_c),
        ]);
        ra.unwrap();
        rb.unwrap();
        assert!(rc.is_err(), "a parent that is a file fails that file alone");
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        assert_eq!(std::fs::read(&b).unwrap(), b"new b");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&a).unwrap().permissions())
                & 0o777;
        assert_eq!(mode, 0o640);
        // A fill that fails leaves the old file, and no temporary file.
        let [r] = write_own_files(&mut [file(&a, true, &mut failing)]);
        assert_eq!(r.unwrap_err().to_string(), "serializer gave up");
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".trueup-")),
            "{names:?}"
        );
    }
}
