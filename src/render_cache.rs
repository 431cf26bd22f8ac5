//! The rendered state of the last commit, kept so that checking the same
//! commit again parses and renders nothing.
//!
//! A host checks the same commit every interval. After a run that rendered
//! a commit from a Git source, `store` writes `render-cache.json` in the
//! state directory: the key (commit, a digest of the facts, trueup's
//! version) and, per file, what it must be on disk — a SHA-256 of the
//! content, its size and declared mode. Never the content itself, and a
//! state holding anything secret is not kept at all. The next run of the
//! same key calls `drifted`, which reads every file and compares digests:
//! all equal, the run is in sync without reading the branch; otherwise the
//! run renders only the files that differ (the branch is parsed, their
//! content comes from the commit's templates, never from here), and the
//! others are reported in sync on the strength of the digests just read.
//! A repair of a few drifted files thus neither renders nor reads the rest
//! a second time.
//!
//! The entry is verified before it is used: its format, trueup's version,
//! the commit and the facts must be this run's, and a digest over the
//! entry must match, so a corrupted, truncated or foreign entry is ignored
//! and rebuilt, never acted on. The cache only ever says "in sync": it
//! never supplies content to write, so the worst a bad entry could do is
//! hide drift, which the digest check on every file rules out.
//!
//! Only states of plain files are kept (no directories, symlinks,
//! packages, services, accounts, commands or health checks, and no file
//! with owner, group, `secret`, `validate` or `notify`): their whole
//! check is reading files. Anything else renders every time, as does a
//! directory source (no commit to key by).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::DesiredState;
use crate::facts::Facts;
use crate::resource::node::MAX_OBSERVED_FILE;
use crate::safe_fs::{Entry, WalkCache};

/// The file name in the state directory.
pub const FILE_NAME: &str = "render-cache.json";

/// Bumped when the entry's shape or meaning changes.
const FORMAT: u32 = 1;

/// What an entry is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub commit: String,
    /// SHA-256 of the facts as templates see them (JSON).
    pub facts: String,
    pub trueup_version: String,
    /// SHA-256 of the run's settings that change what a commit means on
    /// this host (`--root`, `allowed_paths`): narrowing `allowed_paths`
    /// must refuse a branch the cache last saw accepted.
    pub settings: String,
}

impl CacheKey {
    pub fn new(commit: &str, facts: &Facts, root: &Path, allowed_paths: &[PathBuf]) -> CacheKey {
        let json = serde_json::to_vec(facts).unwrap_or_default();
        let settings = serde_json::to_vec(&(root, allowed_paths)).unwrap_or_default();
        CacheKey {
            commit: commit.to_string(),
            facts: hex::encode(Sha256::digest(&json)),
            trueup_version: env!("CARGO_PKG_VERSION").to_string(),
            settings: hex::encode(Sha256::digest(&settings)),
        }
    }
}

/// One managed file as the commit wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The declared mode; `None` accepts any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// What `render-cache.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedState {
    pub format: u32,
    pub key: CacheKey,
    pub files: Vec<CachedFile>,
    /// SHA-256 over `format`, `key` and `files` as JSON, so an entry that
    /// was cut short or edited is told apart from a good one.
    pub digest: String,
}

/// Why an entry was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheMiss {
    #[error("no entry")]
    Missing,
    #[error("unreadable entry: {0}")]
    Corrupt(String),
    #[error("entry for another commit, facts, version or format")]
    Foreign,
}

fn body_digest(format: u32, key: &CacheKey, files: &[CachedFile]) -> String {
    // Serialized straight into the hash: the JSON of a thousand files is
    // never held whole.
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    // Writing to a hash cannot fail, nor can serializing these types.
    let _ = serde_json::to_writer(&mut hashing, &(format, key, files));
    hex::encode(hashing.0.finalize())
}

impl CachedState {
    /// The entry for a rendered state, or `None` when the state is not
    /// one the cache keeps (see the module docs).
    pub fn of(key: CacheKey, desired: &DesiredState) -> Option<CachedState> {
        let only_files = desired.directories.is_empty()
            && desired.symlinks.is_empty()
            && desired.packages.is_empty()
            && desired.services.is_empty()
            && desired.groups.is_empty()
            && desired.users.is_empty()
            && desired.commands.is_empty()
            && desired.health.is_none();
        if !only_files {
            return None;
        }
        let mut files = Vec::with_capacity(desired.files.len());
        for (path, spec) in &desired.files {
            let content = spec.content.as_ref()?;
            if spec.owner.is_some()
                || spec.group.is_some()
                || spec.secret
                || !spec.validate.is_empty()
                || !spec.notify.is_empty()
                || content.undecryptable.is_some()
            {
                return None;
            }
            let (size, sha256) = content.digest().ok()?;
            files.push(CachedFile {
                path: path.clone(),
                size,
                sha256: hex::encode(sha256),
                mode: spec.mode,
            });
        }
        let digest = body_digest(FORMAT, &key, &files);
        Some(CachedState {
            format: FORMAT,
            key,
            files,
            digest,
        })
    }

    /// Reads and verifies the entry in `state_dir` against `key`.
    pub fn load(state_dir: &Path, key: &CacheKey) -> Result<CachedState, CacheMiss> {
        let bytes = match std::fs::read(state_dir.join(FILE_NAME)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Missing),
            Err(e) => return Err(CacheMiss::Corrupt(e.to_string())),
        };
        let entry: CachedState =
            serde_json::from_slice(&bytes).map_err(|e| CacheMiss::Corrupt(e.to_string()))?;
        if entry.format != FORMAT || &entry.key != key {
            return Err(CacheMiss::Foreign);
        }
        if body_digest(entry.format, &entry.key, &entry.files) != entry.digest {
            return Err(CacheMiss::Corrupt("its digest does not match".into()));
        }
        Ok(entry)
    }

    /// Writes the entry atomically but without fsyncs: `load` verifies an
    /// entry and ignores a bad one, so what a power cut may leave (the old
    /// entry, none, or a torn one) costs one render, never a wrong answer.
    pub fn store(&self, state_dir: &Path) -> std::io::Result<()> {
        // Straight into the file: the entry of a thousand files is some
        // 130 KB that need not be in memory at once.
        crate::safe_fs::write_own_file_from(&state_dir.join(FILE_NAME), 0o600, false, |out| {
            serde_json::to_writer(out, self).map_err(std::io::Error::other)
        })
    }

    /// Whether every file under `root` is exactly as the entry says:
    /// a regular file (never through a symlink) of that size, mode and
    /// digest.
    pub fn in_sync(&self, root: &Path) -> bool {
        self.drifted(root).is_empty()
    }

    /// The files under `root` that are not exactly as the entry says (see
    /// `in_sync`), in the entry's order. Every file is read once.
    pub fn drifted(&self, root: &Path) -> Vec<&Path> {
        let mut walk = WalkCache::default();
        self.files
            .iter()
            .filter(|f| !f.matches(&mut walk, root))
            .map(|f| f.path.as_path())
            .collect()
    }
}

impl CachedFile {
    fn matches(&self, walk: &mut WalkCache, root: &Path) -> bool {
        let Ok(Some(entry)) = Entry::open_cached(walk, root, &self.path) else {
            return false;
        };
        if self.size > MAX_OBSERVED_FILE {
            return false;
        }
        // Opened without following a symlink, refused unless a regular
        // file, then its own fstat: no lstat before it. A file larger
        // than the entry says is not read past that size.
        match entry.read_with_stat(self.size) {
            Ok((have, st)) => {
                st.size == self.size
                    && self.mode.is_none_or(|m| m == st.mode)
                    && hex::encode(Sha256::digest(&have)) == self.sha256
            }
            Err(_) => false,
        }
    }
}

/// Removes the entry (a run that found drift or failed leaves none).
pub fn clear(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(FILE_NAME));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::OsFacts;
    use crate::source::MemTree;

    fn facts(host: &str) -> Facts {
        Facts {
            hostname: host.into(),
            fqdn: host.into(),
            os: OsFacts {
                id: "debian".into(),
                id_like: vec![],
                version_id: "12".into(),
                name: "Debian".into(),
            },
            arch: "x86_64".into(),
            cpus: 2,
            memory_mb: 1024,
            ipv4: vec![],
            ipv6: vec![],
            machine_id: "abc".into(),
            user: "root".into(),
        }
    }

    fn state(yaml: &str) -> DesiredState {
        crate::spec::load(&MemTree::new(&[("trueup.yaml", yaml)]), &facts("h")).unwrap()
    }

    const YAML: &str = "files:\n  /etc/a.conf:\n    content: \"a on {{facts.hostname}}\\n\"\n    mode: \"0640\"\n  /etc/b.conf:\n    content: \"b\\n\"\n";

    #[test]
    fn an_entry_says_in_sync_only_when_every_file_matches() {
        let root = tempfile::tempdir().unwrap();
        let sd = tempfile::tempdir().unwrap();
        let key = CacheKey::new("c1", &facts("h"), Path::new("/"), &[]);
        let entry = CachedState::of(key.clone(), &state(YAML)).unwrap();
        entry.store(sd.path()).unwrap();
        let loaded = CachedState::load(sd.path(), &key).unwrap();
        assert_eq!(loaded, entry);
        assert!(!loaded.in_sync(root.path()), "nothing written yet");
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("a.conf"), "a on h\n").unwrap();
        std::fs::write(etc.join("b.conf"), "b\n").unwrap();
        std::fs::set_permissions(
            etc.join("a.conf"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        assert!(loaded.in_sync(root.path()));
        // Same size, other bytes.
        std::fs::write(etc.join("b.conf"), "c\n").unwrap();
        assert!(!loaded.in_sync(root.path()));
        assert_eq!(loaded.drifted(root.path()), [Path::new("/etc/b.conf")]);
        std::fs::write(etc.join("b.conf"), "b\n").unwrap();
        std::fs::set_permissions(
            etc.join("a.conf"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(!loaded.in_sync(root.path()), "mode differs");
    }

    #[test]
    fn a_corrupted_or_foreign_entry_is_ignored() {
        let sd = tempfile::tempdir().unwrap();
        let key = CacheKey::new("c1", &facts("h"), Path::new("/"), &[]);
        assert_eq!(CachedState::load(sd.path(), &key), Err(CacheMiss::Missing));
        let entry = CachedState::of(key.clone(), &state(YAML)).unwrap();
        entry.store(sd.path()).unwrap();
        // Another commit, other facts, another version: foreign.
        for other in [
            CacheKey::new("c2", &facts("h"), Path::new("/"), &[]),
            CacheKey::new("c1", &facts("other"), Path::new("/"), &[]),
            CacheKey {
                trueup_version: "0.0.0-other".into(),
                ..key.clone()
            },
            CacheKey::new("c1", &facts("h"), Path::new("/"), &["/srv".into()]),
        ] {
            assert_eq!(
                CachedState::load(sd.path(), &other),
                Err(CacheMiss::Foreign)
            );
        }
        // An edited digest of a file: the entry's own digest no longer matches.
        let text = std::fs::read_to_string(sd.path().join(FILE_NAME)).unwrap();
        let edited = text.replacen(&entry.files[0].sha256, &"0".repeat(64), 1);
        assert_ne!(edited, text);
        std::fs::write(sd.path().join(FILE_NAME), edited).unwrap();
        assert!(matches!(
            CachedState::load(sd.path(), &key),
            Err(CacheMiss::Corrupt(_))
        ));
        // Cut short.
        std::fs::write(sd.path().join(FILE_NAME), &text[..text.len() / 2]).unwrap();
        assert!(matches!(
            CachedState::load(sd.path(), &key),
            Err(CacheMiss::Corrupt(_))
        ));
    }

    #[test]
    fn states_with_more_than_plain_files_are_not_kept() {
        let key = CacheKey::new("c1", &facts("h"), Path::new("/"), &[]);
        for yaml in [
            "files:\n  /etc/a:\n    content: x\n    secret: true\n",
            "files:\n  /etc/a:\n    content: x\n    owner: root\n",
            "files:\n  /etc/a:\n    state: absent\n",
            "files:\n  /etc/a:\n    content: x\ndirectories:\n  /srv: {}\n",
        ] {
            assert!(
                CachedState::of(key.clone(), &state(yaml)).is_none(),
                "{yaml}"
            );
        }
        let entry = CachedState::of(key, &state(YAML)).unwrap();
        let json = serde_json::to_string(&entry).unwrap();
        assert!(!json.contains("a on h"), "no content is kept: {json}");
    }
}
