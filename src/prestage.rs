//! New files written while the rest of the branch is still rendering.
//!
//! A first apply spends about as long in the kernel creating and writing
//! its files as it spends rendering them, one after the other on one core.
//! A [`Prestager`] takes each file as soon as it is rendered and, on a
//! thread of its own, writes it to an unnamed file (`O_TMPFILE`) in its
//! directory (`safe_fs::PrestageDir::prestage`): invisible, and gone when
//! dropped. When the thread falls behind, the main thread writes a batch
//! itself, and it writes the last ones with the thread once the branch is
//! rendered. From then on the file's rendered bytes are not held in memory:
//! the unnamed file holds them ([`Ahead`]), so a first apply never holds
//! every rendered file at once. Once the plan is whole, the apply stage
//! adopts such a file into its write batch instead of writing it again,
//! when the plan writes it with that mode to a path that was missing;
//! anything else (an owner, a backup, another mode, a file system that
//! will not take it) reads the bytes back and sends the file the usual
//! way. Nothing is named before the batch commits, so a branch that fails
//! to render or plan leaves the host as it was, as without it.
//!
//! Only for runs that apply (never a check or a dry run), files that are
//! missing when the thread comes to them, without owner, group or
//! `validate:`, inside the host's `allowed_paths`, and while the process
//! may hold more unnamed files open (`safe_fs`' budget, shared with the
//! batches).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::desired::FileSpec;
use crate::resource::file::DEFAULT_MODE;
use crate::safe_fs::{self, Prestaged};

/// A file for the thread to write. Comes back to the main thread once
/// written, with the bytes the thread held, so that they are freed there:
/// the thread shares the main thread's malloc arena, and every free of a
/// rendered file on it waited for the arena's lock while the main thread
/// rendered.
struct Job {
    path: PathBuf,
    ahead: Arc<Ahead>,
    mode: u32,
    /// Set by the thread to the bytes it wrote.
    written: Option<Arc<[u8]>>,
}

/// Files are handed to the thread this many at a time: waking it for each
/// cost more than writing the file.
const HANDOFF: usize = 32;

/// At most this many descriptors are made room for up front (a larger
/// branch grows the table as it goes, a little slower).
const MAX_RESERVED: usize = 4096;

/// The content of a file offered to be written ahead: its rendered bytes
/// until the thread has written them, then the unnamed file holding them.
/// Held by the file's spec and by the plan's step that writes it.
pub struct Ahead(Mutex<Held>);

enum Held {
    /// Not written ahead (yet, or it could not be).
    Bytes(Arc<[u8]>),
    /// Written ahead; `file` is `None` once the apply took it.
    Written {
        file: Option<Prestaged>,
        len: u64,
        sha256: [u8; 32],
    },
}

impl Ahead {
    /// Content not written ahead (yet).
    pub fn new(bytes: Arc<[u8]>) -> Ahead {
        Ahead(Mutex::new(Held::Bytes(bytes)))
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes: in memory, or read back from the file written ahead
    /// (and checked against the digest taken when it was written).
    pub fn bytes(&self) -> Result<Arc<[u8]>, String> {
        match &*self.held() {
            Held::Bytes(b) => Ok(b.clone()),
            Held::Written {
                file: Some(file),
                len,
                sha256,
            } => {
                let bytes = file
                    .read_back(*len)
                    .map_err(|e| format!("reading back the file written ahead: {e}"))?;
                if Sha256::digest(&bytes)[..] != sha256[..] {
                    return Err("the file written ahead no longer holds what was written".into());
                }
                Ok(bytes.into())
            }
            Held::Written { file: None, .. } => {
                Err("the new content was already written and let go".into())
            }
        }
    }

    /// Size and SHA-256 of the bytes.
    pub fn digest(&self) -> Result<(u64, [u8; 32]), String> {
        if let Held::Written { len, sha256, .. } = &*self.held() {
            return Ok((*len, *sha256));
        }
        let bytes = self.bytes()?;
        Ok((bytes.len() as u64, Sha256::digest(&bytes[..]).into()))
    }

    /// The file written ahead, when there is one with `mode`; the bytes
    /// are read back from it should it be given back (`give_back`).
    pub fn take(&self, mode: u32) -> Option<Prestaged> {
        match &mut *self.held() {
            Held::Written { file, .. } if file.as_ref().is_some_and(|f| f.mode() == mode) => {
                file.take()
            }
            _ => None,
        }
    }

    /// A file `take` gave that could not be used.
    pub fn give_back(&self, given: Prestaged) {
        if let Held::Written { file, .. } = &mut *self.held() {
            *file = Some(given);
        }
    }

    /// Whether the thread wrote this file ahead (taken or not).
    pub fn is_written(&self) -> bool {
        matches!(&*self.held(), Held::Written { .. })
    }

    /// The thread's side: the bytes to write, unless already written.
    fn to_write(&self) -> Option<Arc<[u8]>> {
        match &*self.held() {
            Held::Bytes(b) => Some(b.clone()),
            Held::Written { .. } => None,
        }
    }

    /// The thread's side: `file` now holds the bytes. The bytes the state
    /// held are let go (the caller still holds them, to be freed on the
    /// main thread).
    fn written(&self, file: Prestaged, bytes: &[u8]) {
        *self.held() = Held::Written {
            file: Some(file),
            len: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        };
    }

    /// The inode of the file written ahead.
    #[cfg(test)]
    pub fn inode(&self) -> Option<u64> {
        match &*self.held() {
            Held::Written { file: Some(f), .. } => Some(f.inode()),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Ahead {
    /// The size only: the file may be a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.held() {
            Held::Bytes(b) => write!(f, "Ahead({} bytes, in memory)", b.len()),
            Held::Written { file, len, .. } => write!(
                f,
                "Ahead({len} bytes, written ahead{})",
                if file.is_some() { "" } else { ", taken" }
            ),
        }
    }
}

/// One content is itself: two files' contents are never the same `Ahead`.
impl PartialEq for Ahead {
    fn eq(&self, other: &Ahead) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Ahead {}

/// Writes jobs, one directory walk per directory; a file allocates
/// nothing here. One per thread that writes (the thread, and the main
/// thread when it helps).
struct Writer {
    root: PathBuf,
    walk: safe_fs::WalkCache,
    dir: Option<(PathBuf, Option<safe_fs::PrestageDir>)>,
}

impl Writer {
    fn new(root: &Path) -> Writer {
        Writer {
            root: root.to_path_buf(),
            walk: safe_fs::WalkCache::default(),
            dir: None,
        }
    }

    fn write(&mut self, jobs: &mut [Job]) {
        for job in jobs {
            let (Some(parent), Some(name)) = (job.path.parent(), job.path.file_name()) else {
                continue;
            };
            let Some(bytes) = job.ahead.to_write() else {
                continue;
            };
            if self.dir.as_ref().is_none_or(|(p, _)| p != parent) {
                let found = safe_fs::prestage_dir(&mut self.walk, &self.root, &job.path);
                self.dir = Some((parent.to_path_buf(), found));
            }
            let Some((_, Some(d))) = &self.dir else {
                continue;
            };
            if let Some(file) = d.prestage(name, &bytes, job.mode) {
                job.ahead.written(file, &bytes);
                job.written = Some(bytes);
            }
        }
    }
}

/// Batches between the main thread and the thread.
#[derive(Default)]
struct Queue {
    /// Handed over, not yet taken by a writer.
    waiting: std::collections::VecDeque<Vec<Job>>,
    /// Written by the thread, to be dropped on the main thread.
    done: Vec<Vec<Job>>,
    /// No more batches come.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a batch is handed over or the queue is closed.
    handed: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When this many batches wait for the thread, the main thread writes the
/// next one itself: the thread is behind, and each waiting file's bytes
/// are held until it is written.
const MAX_WAITING: usize = 2;

/// The thread writing rendered files ahead of the plan.
pub struct Prestager {
    shared: Arc<Shared>,
    /// Offered, not yet handed over.
    pending: RefCell<Vec<Job>>,
    /// The main thread's own writer, for when it helps.
    writer: RefCell<Writer>,
    thread: Option<std::thread::JoinHandle<()>>,
    allowed: Vec<PathBuf>,
    /// What an offered file's spec holds in place of its bytes.
    empty: Arc<[u8]>,
}

impl Prestager {
    /// Starts the thread for files under `root`. `None` when no thread can
    /// be started (files are then written by the apply alone).
    pub fn start(root: &Path, allowed: &[PathBuf]) -> Option<Prestager> {
        // Before the thread exists: see `reserve_descriptors`.
        safe_fs::reserve_descriptors(MAX_RESERVED);
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let mut writer = Writer::new(root);
        let thread = std::thread::Builder::new()
            .name("prestage".into())
            .spawn(move || {
                loop {
                    let mut jobs = {
                        let mut q = theirs.queue();
                        loop {
                            if let Some(jobs) = q.waiting.pop_front() {
                                break jobs;
                            }
                            if q.closed {
                                return;
                            }
                            q = theirs.handed.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    writer.write(&mut jobs);
                    theirs.queue().done.push(jobs);
                }
            })
            .ok()?;
        Some(Prestager {
            shared,
            pending: RefCell::new(Vec::with_capacity(HANDOFF)),
            writer: RefCell::new(Writer::new(root)),
            thread: Some(thread),
            allowed: allowed.to_vec(),
            empty: Arc::from(&b""[..]),
        })
    }

    /// Offers a rendered file; it is written ahead when it qualifies (see
    /// the module's docs), and from then on the file's content is held by
    /// the file written ahead.
    pub fn offer(&self, path: &Path, spec: &mut FileSpec) {
        let mode = spec.mode.unwrap_or(DEFAULT_MODE);
        let qualifies = spec.owner.is_none()
            && spec.group.is_none()
            && spec.validate.is_empty()
            && (self.allowed.is_empty() || self.allowed.iter().any(|a| path.starts_with(a)));
        let Some(content) = spec.content.as_mut() else {
            return;
        };
        if !qualifies || content.undecryptable.is_some() || content.ahead.is_some() {
            return;
        }
        let bytes = std::mem::replace(&mut content.bytes, self.empty.clone());
        let ahead = Arc::new(Ahead::new(bytes));
        content.ahead = Some(ahead.clone());
        let mut pending = self.pending.borrow_mut();
        pending.push(Job {
            path: path.to_path_buf(),
            ahead,
            mode,
            written: None,
        });
        if pending.len() < HANDOFF {
            return;
        }
        let (behind, done) = {
            let mut q = self.shared.queue();
            (q.waiting.len() >= MAX_WAITING, std::mem::take(&mut q.done))
        };
        // What the thread wrote is freed here (see `Job`), and one of its
        // batches carries the next.
        let mut next = None;
        for mut used in done {
            used.clear();
            next = Some(used);
        }
        let next = next.unwrap_or_else(|| Vec::with_capacity(HANDOFF));
        let mut jobs = std::mem::replace(&mut *pending, next);
        if behind {
            self.writer.borrow_mut().write(&mut jobs);
        } else {
            self.shared.queue().waiting.push_back(jobs);
            self.shared.handed.notify_one();
        }
    }

    /// Writes what was offered, with the thread, and waits for it.
    pub fn finish(mut self) {
        let rest = std::mem::take(&mut *self.pending.borrow_mut());
        if !rest.is_empty() {
            self.shared.queue().waiting.push_back(rest);
        }
        self.shared.queue().closed = true;
        self.shared.handed.notify_one();
        // The main thread takes the newest batches while the thread works
        // through the oldest.
        loop {
            let Some(mut jobs) = self.shared.queue().waiting.pop_back() else {
                break;
            };
            self.writer.borrow_mut().write(&mut jobs);
        }
        self.join();
    }

    /// Stops the thread once it has written the batch in hand (no other
    /// is written) and frees what it wrote here.
    fn join(&mut self) {
        {
            let mut q = self.shared.queue();
            q.closed = true;
            q.waiting.clear();
        }
        self.shared.handed.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(std::mem::take(&mut self.shared.queue().done));
    }
}

impl Drop for Prestager {
    /// Not finished (the branch did not render): the thread ends, and
    /// what was written goes with the specs, never having had a name.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::FileContent;

    fn spec(body: &str) -> FileSpec {
        FileSpec {
            content: Some(FileContent::new(
                body.as_bytes().to_vec().into(),
                "content".into(),
            )),
            owner: None,
            group: None,
            mode: None,
            notify: vec![],
            notify_action: Default::default(),
            notify_actions: Default::default(),
            secret: false,
            validate: vec![],
        }
    }

    impl Prestager {
        /// A prestager whose thread never takes a batch: the main thread
        /// writes them all (when two wait, and at `finish`).
        fn without_thread(root: &Path) -> Prestager {
            Prestager {
                shared: Arc::new(Shared::default()),
                pending: RefCell::new(Vec::with_capacity(HANDOFF)),
                writer: RefCell::new(Writer::new(root)),
                thread: None,
                allowed: vec![],
                empty: Arc::from(&b""[..]),
            }
        }
    }

    /// Offers `n` files in two directories (one of them still to be made)
    /// and checks that each is written ahead, holds its own bytes, and
    /// nothing has a name.
    fn offers_all(p: Prestager, root: &Path, n: usize) {
        std::fs::create_dir(root.join("etc")).unwrap();
        let mut specs: Vec<(PathBuf, FileSpec)> = (0..n)
            .map(|i| {
                let dir = if i % 2 == 0 { "etc" } else { "srv/new" };
                (
                    PathBuf::from(format!("/{dir}/f{i:04}.conf")),
                    spec(&format!("file {i}\n")),
                )
            })
            .collect();
        for (path, spec) in specs.iter_mut() {
            p.offer(path, spec);
        }
        p.finish();
        for (i, (path, spec)) in specs.iter().enumerate() {
            let content = spec.content.as_ref().unwrap();
            assert!(content.bytes.is_empty(), "{}", path.display());
            let ahead = content.ahead.as_ref().unwrap();
            assert!(ahead.is_written(), "{}", path.display());
            assert_eq!(
                &ahead.bytes().unwrap()[..],
                format!("file {i}\n").as_bytes()
            );
        }
        assert_eq!(std::fs::read_dir(root.join("etc")).unwrap().count(), 0);
        assert!(!root.join("srv").exists());
    }

    #[test]
    fn every_file_offered_is_written_ahead_by_the_thread_or_the_main_thread() {
        let root = tempfile::tempdir().unwrap();
        let p = Prestager::start(root.path(), &[]).unwrap();
        offers_all(p, root.path(), 10 * HANDOFF + 7);
    }

    #[test]
    fn the_main_thread_writes_what_the_thread_does_not_take() {
        let root = tempfile::tempdir().unwrap();
        let p = Prestager::without_thread(root.path());
        offers_all(p, root.path(), 10 * HANDOFF + 7);
    }

    #[test]
    fn a_thread_behind_holds_at_most_two_batches_of_bytes() {
        let root = tempfile::tempdir().unwrap();
        let p = Prestager::without_thread(root.path());
        let mut specs: Vec<(PathBuf, FileSpec)> = (0..5 * HANDOFF)
            .map(|i| (PathBuf::from(format!("/f{i:03}")), spec("x\n")))
            .collect();
        for (path, spec) in specs.iter_mut() {
            p.offer(path, spec);
        }
        assert_eq!(p.shared.queue().waiting.len(), MAX_WAITING);
        let written = specs
            .iter()
            .filter(|(_, s)| {
                s.content
                    .as_ref()
                    .unwrap()
                    .ahead
                    .as_ref()
                    .unwrap()
                    .is_written()
            })
            .count();
        // Two batches wait; the other three were written as they came.
        assert_eq!(written, 3 * HANDOFF);
        p.finish();
    }

    #[test]
    fn a_prestager_dropped_unfinished_writes_nothing_more() {
        let root = tempfile::tempdir().unwrap();
        let p = Prestager::without_thread(root.path());
        let mut specs: Vec<(PathBuf, FileSpec)> = (0..HANDOFF + 1)
            .map(|i| (PathBuf::from(format!("/f{i}")), spec("x\n")))
            .collect();
        for (path, spec) in specs.iter_mut() {
            p.offer(path, spec);
        }
        drop(p);
        // Nothing was written; every file keeps its bytes.
        for (_, spec) in &specs {
            let ahead = spec.content.as_ref().unwrap().ahead.clone().unwrap();
            assert!(!ahead.is_written());
            assert_eq!(&ahead.bytes().unwrap()[..], b"x\n");
        }
    }
}
