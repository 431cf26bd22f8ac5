//! New files written while the rest of the branch is still rendering.
//!
//! A first apply spends about as long in the kernel creating and writing
//! its files as it spends rendering them, one after the other on one core.
//! A [`Prestager`] takes each file as soon as it is rendered and, on a
//! thread of its own, writes it to an unnamed file (`O_TMPFILE`) in its
//! directory (`safe_fs::Entry::prestage`): invisible, and gone when
//! dropped. Once the plan is whole, the apply stage adopts such a file
//! into its write batch instead of writing it again, when the plan says to
//! write exactly those bytes with that mode to a path that was missing;
//! anything else about it (owner, backup, `validate:`) sends the file the
//! usual way. Nothing is named before the batch commits, so a branch that
//! fails to render or plan leaves the host as it was, as without it.
//!
//! Only for runs that apply (never a check or a dry run), files that are
//! missing when offered, without owner, group or `validate:`, inside the
//! host's `allowed_paths`, and while the process may hold more unnamed
//! files open (`safe_fs`' budget, shared with the batches).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use crate::desired::FileSpec;
use crate::resource::file::DEFAULT_MODE;
use crate::safe_fs::{self, Prestaged};

/// A file for the thread to write.
struct Job {
    path: PathBuf,
    bytes: Arc<[u8]>,
    mode: u32,
}

/// Files are handed to the thread this many at a time: waking it for each
/// cost more than writing the file.
const HANDOFF: usize = 32;

/// At most this many descriptors are made room for up front (a larger
/// branch grows the table as it goes, a little slower).
const MAX_RESERVED: usize = 4096;

/// The thread writing rendered files ahead of the plan.
pub struct Prestager {
    send: Option<mpsc::Sender<Vec<Job>>>,
    /// Offered, not yet handed over.
    pending: RefCell<Vec<Job>>,
    thread: Option<std::thread::JoinHandle<PrestagedFiles>>,
    allowed: Vec<PathBuf>,
}

impl Prestager {
    /// Starts the thread for files under `root`. `None` when no thread can
    /// be started (files are then written by the apply alone).
    pub fn start(root: &Path, allowed: &[PathBuf]) -> Option<Prestager> {
        // Before the thread exists: see `reserve_descriptors`.
        safe_fs::reserve_descriptors(MAX_RESERVED);
        let (send, receive) = mpsc::channel::<Vec<Job>>();
        let root = root.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("prestage".into())
            .spawn(move || {
                // One walk per directory; a file allocates nothing here
                // (the thread shares the main thread's malloc arena, and
                // each wait for its lock costs both threads).
                let mut walk = safe_fs::WalkCache::default();
                let mut dir: Option<(PathBuf, Option<safe_fs::PrestageDir>)> = None;
                let mut files = Vec::new();
                for job in receive.iter().flatten() {
                    let (Some(parent), Some(name)) = (job.path.parent(), job.path.file_name())
                    else {
                        continue;
                    };
                    if dir.as_ref().is_none_or(|(p, _)| p != parent) {
                        let found = safe_fs::prestage_dir(&mut walk, &root, &job.path);
                        dir = Some((parent.to_path_buf(), found));
                    }
                    let Some((_, Some(d))) = &dir else {
                        continue;
                    };
                    if let Some(file) = d.prestage(name, &job.bytes, job.mode) {
                        files.push((job.path, Some((file, job.bytes))));
                    }
                }
                PrestagedFiles::new(files)
            })
            .ok()?;
        Some(Prestager {
            send: Some(send),
            pending: RefCell::new(Vec::with_capacity(HANDOFF)),
            thread: Some(thread),
            allowed: allowed.to_vec(),
        })
    }

    /// Offers a rendered file; the thread writes it when it qualifies (see
    /// the module's docs). Never blocks.
    pub fn offer(&self, path: &Path, spec: &FileSpec) {
        let Some(content) = &spec.content else {
            return;
        };
        if content.undecryptable.is_some()
            || spec.owner.is_some()
            || spec.group.is_some()
            || !spec.validate.is_empty()
            || !(self.allowed.is_empty() || self.allowed.iter().any(|a| path.starts_with(a)))
        {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        pending.push(Job {
            path: path.to_path_buf(),
            bytes: content.bytes.clone(),
            mode: spec.mode.unwrap_or(DEFAULT_MODE),
        });
        if pending.len() >= HANDOFF {
            let jobs = std::mem::replace(&mut *pending, Vec::with_capacity(HANDOFF));
            self.hand_over(jobs);
        }
    }

    fn hand_over(&self, jobs: Vec<Job>) {
        if let Some(send) = &self.send {
            // The thread stops only when dropped: a failed send loses a
            // head start, nothing else.
            let _ = send.send(jobs);
        }
    }

    /// Waits for the thread to write what it was offered, and returns it.
    pub fn finish(mut self) -> PrestagedFiles {
        self.join()
    }

    fn join(&mut self) -> PrestagedFiles {
        let jobs = std::mem::take(&mut *self.pending.borrow_mut());
        if !jobs.is_empty() {
            self.hand_over(jobs);
        }
        drop(self.send.take());
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Prestager {
    /// Not finished (the branch did not render or plan): the thread ends
    /// and what it wrote goes, never having had a name.
    fn drop(&mut self) {
        drop(self.join());
    }
}

/// A file written ahead (until taken), with the content it was written
/// from, by host path.
type Written = (PathBuf, Option<(Prestaged, Arc<[u8]>)>);

/// Files written ahead, sorted by host path: a list searched in halves
/// holds a thousand of them in half the memory of a hash table (and the
/// table's growth beside it), at a time when every rendered file is still
/// in memory.
#[derive(Debug, Default)]
pub struct PrestagedFiles {
    files: Vec<Written>,
    /// How many are not taken yet.
    left: usize,
}

impl PrestagedFiles {
    fn new(mut files: Vec<Written>) -> PrestagedFiles {
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let left = files.len();
        PrestagedFiles { files, left }
    }

    fn find(&self, path: &Path) -> Option<usize> {
        self.files
            .binary_search_by(|(p, _)| p.as_path().cmp(path))
            .ok()
    }

    /// The file written ahead for `path`, when it holds exactly `content`
    /// (the same rendered bytes, not an equal copy) with `mode`. A file
    /// written for `path` from anything else is dropped. The list goes
    /// once every file is taken.
    pub fn take(&mut self, path: &Path, content: &Arc<[u8]>, mode: u32) -> Option<Prestaged> {
        let i = self.find(path)?;
        let (file, bytes) = self.files[i].1.take()?;
        self.left -= 1;
        if self.left == 0 {
            self.files = Vec::new();
        }
        (Arc::ptr_eq(&bytes, content) && file.mode() == mode).then_some(file)
    }

    /// The inode of the file written ahead for `path`.
    #[cfg(test)]
    pub fn inode_of(&self, path: &Path) -> Option<u64> {
        let (_, written) = &self.files[self.find(path)?];
        written.as_ref().map(|(file, _)| file.inode())
    }

    /// How many files are written ahead and not taken.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}
