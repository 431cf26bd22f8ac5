//! The run lock shared by the daemon and the one-shot commands, so two runs
//! never overlap, and the agent's presence file that `status` reads.
//!
//! Both are `flock(2)` locks: the kernel drops them when the process dies,
//! so a crashed run never leaves a stale lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock lives: `/run/trueup/lock` for the default state
/// directory, otherwise `run.lock` inside the given state directory (so
/// hosts simulated side by side in tests or images do not contend).
pub fn default_lock_path(state_dir: &Path) -> PathBuf {
    if state_dir == Path::new("/var/lib/trueup") {
        PathBuf::from("/run/trueup/lock")
    } else {
        state_dir.join("run.lock")
    }
}

/// The agent's presence file, beside the lock.
pub fn agent_pid_path(lock_path: &Path) -> PathBuf {
    lock_path.with_file_name("agent.pid")
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Held {
    _lock: Flock<File>,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another trueup run holds {path}{}; gave up after {waited:?}", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy {
        path: PathBuf,
        holder: Option<u32>,
        waited: Duration,
    },
    #[error("opening lock file {0}: {1}")]
    Open(PathBuf, std::io::Error),
}

fn open(path: &Path) -> Result<File, LockError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LockError::Open(path.into(), e))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LockError::Open(path.into(), e))
}

fn try_lock(file: File) -> Result<Flock<File>, (File, Errno)> {
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
}

fn holder(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Takes the lock, waiting up to `timeout` (polling, so `stop` can end the
/// wait early). Writes this process's pid into the file for messages.
pub fn acquire(path: &Path, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Held, LockError> {
    let start = Instant::now();
    let mut file = open(path)?;
    let mut told = false;
    loop {
        match try_lock(file) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = write!(lock, "{}", std::process::id());
                let _ = lock.flush();
                return Ok(Held { _lock: lock });
            }
            Err((f, Errno::EWOULDBLOCK)) => {
                if !told {
                    // Said once, so a person (or a test) sees why we wait.
                    tracing::info!(path = %path.display(), holder = holder(path).unwrap_or(0), "waiting for the run lock");
                    told = true;
                }
                if start.elapsed() >= timeout || stop() {
                    return Err(LockError::Busy {
                        path: path.into(),
                        holder: holder(path),
                        waited: start.elapsed(),
                    });
                }
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => return Err(LockError::Open(path.into(), std::io::Error::from(e))),
        }
    }
}

/// Whether an agent holds its presence file, and its pid.
pub fn agent_running(lock_path: &Path) -> Option<u32> {
    let path = agent_pid_path(lock_path);
    let file = File::open(&path).ok()?;
    match try_lock(file) {
        Ok(_) => None,
        Err(_) => Some(holder(&path).unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_gives_up_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = acquire(&path, Duration::ZERO, &|| false).unwrap();
        let e = acquire(&path, Duration::from_millis(120), &|| false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        acquire(&path, Duration::ZERO, &|| false).unwrap();
    }
}
