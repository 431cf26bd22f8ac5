//! The raw YAML schema of a state file, exactly as written.
//!
//! Every field is optional here and unknown keys are refused; `spec` turns
//! these into the validated, rendered `DesiredState`. Values keep their
//! position (`Spanned`) so a later error can still name line and column.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::desired::{NotifyAction, ServiceRunState};

/// One YAML file: `trueup.yaml` or an included one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocument {
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
    #[serde(default, deserialize_with = "files_kept")]
    pub files: BTreeMap<String, Spanned<RawFile>>,
    #[serde(default)]
    pub directories: BTreeMap<String, Spanned<RawDirectory>>,
    #[serde(default)]
    pub symlinks: BTreeMap<String, Spanned<RawSymlink>>,
    #[serde(default)]
    pub packages: BTreeMap<String, Spanned<RawPackage>>,
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<RawService>>,
    /// Checks run after a change (`spec::health`).
    #[serde(default)]
    pub health: Option<super::health::RawHealth>,
    /// `spec::accounts`.
    #[serde(default)]
    pub groups: BTreeMap<String, Spanned<super::accounts::RawGroup>>,
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<super::accounts::RawUser>>,
    /// `spec::commands`.
    #[serde(default)]
    pub commands: BTreeMap<String, Spanned<super::commands::RawCommand>>,
}

/// `state:` of files, directories, symlinks and packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawPresence {
    Present,
    Absent,
}

/// The positioned values are boxed: a `Spanned` string is 80 bytes and a
/// file sets two or three of these six, so unboxed a branch of 10,000 files
/// held 5 MB of empty slots while it was being read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub content: Option<Box<Spanned<String>>>,
    pub template: Option<Box<Spanned<String>>>,
    pub source: Option<Box<Spanned<String>>>,
    pub owner: Option<Box<Spanned<IdName>>>,
    pub group: Option<Box<Spanned<IdName>>>,
    pub mode: Option<Box<Spanned<String>>>,
    pub state: Option<RawPresence>,
    pub notify: Option<super::commands::RawNotify>,
    pub notify_action: Option<NotifyAction>,
    pub secret: Option<bool>,
    /// A command run on the new content first (`spec::commands`).
    pub validate: Option<Box<Spanned<Vec<Spanned<String>>>>>,
    /// `age`: `source` is an age-encrypted file, decrypted on the host
    /// (also implied by a source ending in `.age`).
    pub encrypted: Option<RawEncryption>,
    /// This file's own template variables, laid key by key over the run's
    /// `vars` (so one template renders many files that differ by a value).
    pub vars: Option<Box<Spanned<FileVars>>>,
}

/// A file's own `vars:`, a mapping kept as a short list: a file has a
/// handful, and a map per file (a B-tree node of eleven slots each) was
/// the largest part of parsing a state of a thousand such files. The YAML
/// parser refuses a key given twice, with its line and column.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileVars(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for FileVars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vars;
        impl<'de> serde::de::Visitor<'de> for Vars {
            type Value = FileVars;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of template variables")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FileVars, A::Error> {
                let mut vars: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    vars.push(entry);
                }
                vars.shrink_to_fit();
                Ok(FileVars(vars))
            }
        }
        d.deserialize_map(Vars)
    }
}

/// `encrypted:` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawEncryption {
    Age,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    pub owner: Option<Spanned<IdName>>,
    pub group: Option<Spanned<IdName>>,
    pub mode: Option<Spanned<String>>,
    pub state: Option<RawPresence>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSymlink {
    pub target: Option<Spanned<String>>,
    pub state: Option<RawPresence>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackage {
    pub version: Option<Spanned<String>>,
    pub state: Option<RawPresence>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub enabled: Option<bool>,
    pub state: Option<ServiceRunState>,
    pub masked: Option<bool>,
    /// The declared package that ships this unit.
    pub package: Option<Spanned<String>>,
}

/// A user or group: a name, or a numeric id written with or without quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdName(pub String);

impl<'de> Deserialize<'de> for IdName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IdName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdName, E> {
                Ok(IdName(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdName, E> {
                u32::try_from(v)
                    .map(|id| IdName(id.to_string()))
                    .map_err(|_| E::custom(format!("id {v} is out of range (0 to {})", u32::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdName, E> {
                u32::try_from(v)
                    .map(|id| IdName(id.to_string()))
                    .map_err(|_| E::custom(format!("id {v} is out of range (0 to {})", u32::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

thread_local! {
    /// The host paths whose `files:` entries a parse on this thread keeps
    /// (set by [`KeepOnlyFiles`]); `None`, the usual case, keeps them all.
    static KEPT_FILES: RefCell<Option<HashSet<PathBuf>>> = const { RefCell::new(None) };
}

/// While alive, documents parsed on this thread keep only the `files:`
/// entries at these host paths: the others' values are read past by the
/// YAML parser (still checked as YAML) without being built. For a commit
/// that rendered before (the render cache), when a run needs a few of its
/// files: a thousand built and dropped entries were most of its memory. An
/// entry whose path does not normalize is kept, so its error still shows.
pub(super) struct KeepOnlyFiles(());

impl KeepOnlyFiles {
    pub(super) fn new(paths: &HashSet<PathBuf>) -> KeepOnlyFiles {
        KEPT_FILES.with(|k| *k.borrow_mut() = Some(paths.clone()));
        KeepOnlyFiles(())
    }
}

impl Drop for KeepOnlyFiles {
    fn drop(&mut self) {
        KEPT_FILES.with(|k| *k.borrow_mut() = None);
    }
}

/// `files:`, less the entries [`KeepOnlyFiles`] leaves out.
fn files_kept<'de, D>(d: D) -> Result<BTreeMap<String, Spanned<RawFile>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Kept(HashSet<PathBuf>);
    impl<'de> serde::de::Visitor<'de> for Kept {
        type Value = BTreeMap<String, Spanned<RawFile>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of file paths to files")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut files = BTreeMap::new();
            while let Some(path) = map.next_key::<String>()? {
                let kept = super::normalize_host_path(&path).map_or(true, |p| self.0.contains(&p));
                if kept {
                    files.insert(path, map.next_value()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(files)
        }
    }
    match KEPT_FILES.with(|k| k.borrow().clone()) {
        None => BTreeMap::deserialize(d),
        Some(kept) => d.deserialize_map(Kept(kept)),
    }
}
