//! `state.json`: what this host remembers between runs — the last applied
//! commit (for anti-rollback), whether convergence is paused and why, and
//! the last note written (for the heartbeat).
//!
//! A broken state file is an error that names the file, never a silent
//! reset: forgetting the applied commit would disable the rollback check.
//! Unknown fields are ignored, so an older agent reads a newer agent's
//! state (a fleet is upgraded and downgraded host by host).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The commit last converged (or checked) from the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Set by `trueup disable`: checks still run and report, nothing changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// The last Git note written, to decide when the next one is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_note: Option<NoteMark>,
    /// The commit whose health checks last passed: where a rollback goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy: Option<String>,
    /// A commit rolled back for failing its health checks; not applied
    /// again until the branch tip moves past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_commit: Option<BadCommit>,
    /// A health window in progress (its commit, deadline, and what the
    /// commit created), so an agent restarted during it finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_health: Option<crate::health::PendingHealth>,
}

/// A commit that was applied, failed its health checks and was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommit {
    pub commit: String,
    /// Why it was rolled back (the failed checks), for people.
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// What the last note said, in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteMark {
    pub commit: String,
    pub status: String,
    pub drift: usize,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// Whether the note still has to be pushed.
    #[serde(default)]
    pub unpushed: bool,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error(
        "{0}: broken state file (line {1}, column {2}): {3}; fix or remove it by hand (removing it forgets the applied commit)"
    )]
    Parse(PathBuf, usize, usize, String),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

impl HostState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Reads the state; a missing file is a fresh host.
    pub fn load(state_dir: &Path) -> Result<HostState, StateError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StateError::Parse(path, e.line(), e.column(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostState::default()),
            Err(e) => Err(StateError::Read(path, e)),
        }
    }

    /// Writes the state atomically; a state the file already holds is not
    /// written again (a check of an unchanged host changes nothing, and
    /// each write costs two fsyncs).
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        let path = Self::path(state_dir);
        match self.to_save(state_dir)? {
            Some(json) => crate::safe_fs::write_own_file(&path, &json, 0o644)
                .map_err(|e| StateError::Write(path, e)),
            None => Ok(()),
        }
    }

    /// The JSON `save` writes, or `None` when the file already holds it.
    pub fn to_save(&self, state_dir: &Path) -> Result<Option<Vec<u8>>, StateError> {
        let path = Self::path(state_dir);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Write(path.clone(), std::io::Error::other(e)))?;
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == json) {
            return Ok(None);
        }
        Ok(Some(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostState::load(dir.path()).unwrap(), HostState::default());
        let s = HostState {
            applied_commit: Some("a".repeat(40)),
            disabled: Some(Disabled {
                reason: "maintenance".into(),
                since: "2026-11-28T00:00:00Z".into(),
            }),
            ..HostState::default()
        };
        s.save(dir.path()).unwrap();
        assert_eq!(HostState::load(dir.path()).unwrap(), s);
        // Saved again unchanged: the same file, not a new one renamed over it.
        use std::os::unix::fs::MetadataExt;
        let inode = || {
            std::fs::metadata(HostState::path(dir.path()))
                .unwrap()
                .ino()
        };
        let first = inode();
        s.save(dir.path()).unwrap();
        assert_eq!(inode(), first);
        let changed = HostState {
            applied_commit: Some("b".repeat(40)),
            ..s.clone()
        };
        changed.save(dir.path()).unwrap();
        assert_ne!(inode(), first);
        assert_eq!(HostState::load(dir.path()).unwrap(), changed);
        std::fs::write(HostState::path(dir.path()), "{\"applied_commit\": 3").unwrap();
        let e = HostState::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_fields_from_a_newer_agent_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            HostState::path(dir.path()),
            r#"{"applied_commit": "abc", "from_the_future": {"x": 1},
                "disabled": {"reason": "r", "since": "s", "by": "ops"},
                "bad_commit": {"commit": "def", "reason": "http check", "at": "t", "checks": []}}"#,
        )
        .unwrap();
        let s = HostState::load(dir.path()).unwrap();
        assert_eq!(s.applied_commit.as_deref(), Some("abc"));
        assert_eq!(s.disabled.unwrap().reason, "r");
        assert_eq!(s.bad_commit.unwrap().commit, "def");
    }
}
