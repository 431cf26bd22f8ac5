//! Retention of the replaced contents kept under `<state_dir>/backup/`.
//!
//! Every run that replaces something keeps the old content in a directory
//! of its own (`backup/<start time>-<pid>/`). Without pruning these grow
//! forever; after each run the agent keeps those younger than `max_age`
//! (default 30 days) and, when `max_count` is set, at most that many of the
//! newest. Which ones go is a pure function of names and times.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long and how many backups are kept (`backups:` in agent.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: Option<usize>,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_count: None,
        }
    }
}

/// One run's backup directory: its name and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunBackup {
    pub name: String,
    pub modified: SystemTime,
}

/// The backups to remove: older than `max_age`, or beyond the `max_count`
/// newest. A backup dated in the future (a clock step) is kept.
pub fn to_prune(backups: &[RunBackup], retention: Retention, now: SystemTime) -> Vec<String> {
    let mut newest_first: Vec<&RunBackup> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.name.cmp(&a.name)));
    newest_first
        .iter()
        .enumerate()
        .filter(|(i, b)| {
            let too_old = now
                .duration_since(b.modified)
                .is_ok_and(|age| age > retention.max_age);
            let too_many = retention.max_count.is_some_and(|n| *i >= n);
            too_old || too_many
        })
        .map(|(_, b)| b.name.clone())
        .collect()
}

/// Removes the run backups under `<state_dir>/backup` that `retention`
/// no longer keeps. Returns how many went. Only directories are
/// considered; anything else there is not trueup's and is left alone.
pub fn prune(state_dir: &Path, retention: Retention, now: SystemTime) -> std::io::Result<usize> {
    let dir = state_dir.join("backup");
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry?;
        // symlink_metadata: a link planted there is not followed.
        let meta = std::fs::symlink_metadata(entry.path())?;
        if !meta.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        backups.push(RunBackup {
            name,
            modified: meta.modified()?,
        });
    }
    let gone = to_prune(&backups, retention, now);
    for name in &gone {
        std::fs::remove_dir_all(dir.join(name))?;
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(now: SystemTime, days_ago: u64, name: &str) -> RunBackup {
        RunBackup {
            name: name.into(),
            modified: now - DAY * u32::try_from(days_ago).unwrap(),
        }
    }

    #[test]
    fn older_than_max_age_goes() {
        let now = SystemTime::now();
        let b = [at(now, 31, "old"), at(now, 29, "young"), at(now, 0, "new")];
        assert_eq!(to_prune(&b, Retention::default(), now), vec!["old"]);
    }

    #[test]
    fn beyond_max_count_the_oldest_go() {
        let now = SystemTime::now();
        let b = [at(now, 3, "c"), at(now, 1, "a"), at(now, 2, "b")];
        let r = Retention {
            max_age: DAY * 365,
            max_count: Some(1),
        };
        let mut gone = to_prune(&b, r, now);
        gone.sort();
        assert_eq!(gone, vec!["b", "c"]);
    }

    #[test]
    fn a_backup_from_the_future_is_kept() {
        let now = SystemTime::now();
        let b = [RunBackup {
            name: "later".into(),
            modified: now + DAY,
        }];
        assert!(to_prune(&b, Retention::default(), now).is_empty());
    }

    #[test]
    fn prune_removes_only_old_directories() {
        let state = tempfile::tempdir().unwrap();
        let backup = state.path().join("backup");
        std::fs::create_dir_all(backup.join("old/etc")).unwrap();
        std::fs::write(backup.join("old/etc/motd"), "x").unwrap();
        std::fs::create_dir_all(backup.join("new")).unwrap();
        std::fs::write(backup.join("stray-file"), "x").unwrap();
        let now = SystemTime::now() + DAY * 40;
        std::fs::File::open(backup.join("new"))
            .unwrap()
            .set_modified(now)
            .unwrap();
        assert_eq!(prune(state.path(), Retention::default(), now).unwrap(), 1);
        assert!(!backup.join("old").exists());
        assert!(backup.join("new").exists() && backup.join("stray-file").exists());
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(prune(empty.path(), Retention::default(), now).unwrap(), 0);
    }
}
