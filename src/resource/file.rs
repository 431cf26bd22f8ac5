//! Regular files: presence, content, owner, group and mode.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::accounts::{Accounts, WantedMeta};
use super::node::{NodeAction, NodeObservation, Previous};
use super::{Attribute, Drift, meta_drift};
use crate::desired::FileSpec;

/// Default mode of a file trueup creates without a declared mode.
pub const DEFAULT_MODE: u32 = 0o644;

/// Largest diff kept in a report; beyond it the diff is cut.
const MAX_DIFF: usize = 64 * 1024;

/// Compares a declared file with what is on disk.
pub fn diff(
    path: &Path,
    spec: &FileSpec,
    want: &WantedMeta,
    obs: NodeObservation,
    accounts: &dyn Accounts,
) -> (Vec<Drift>, Option<NodeAction>) {
    // Most files differ in one way (a new file: its presence), and a
    // vector's first growth would hold four.
    let mut drift = Vec::with_capacity(1);
    let Some(content) = &spec.content else {
        // Declared absent.
        return match obs {
            NodeObservation::Missing => (drift, None),
            NodeObservation::Directory { .. } | NodeObservation::Other => {
                drift.push(Drift::new(Attribute::Presence, "absent", obs.describe()));
                let why = format!(
                    "{} is a {}, not a file; remove it by hand",
                    path.display(),
                    obs.describe()
                );
                (drift, Some(NodeAction::Refuse(why)))
            }
            obs => {
                drift.push(Drift::new(Attribute::Presence, "absent", obs.describe()));
                (
                    drift,
                    Some(NodeAction::Remove {
                        previous: Previous::of(obs),
                    }),
                )
            }
        };
    };
    if let Some(why) = &content.undecryptable {
        // Nothing to compare with: this file fails alone, whatever is on
        // disk stays as it is, and the rest of the run goes on.
        drift.push(Drift::new(
            Attribute::Content,
            "(secret)",
            "(secret, cannot be decrypted on this host)",
        ));
        return (drift, Some(NodeAction::Refuse(why.clone())));
    }
    let write = |uid, gid, mode, previous| NodeAction::WriteFile {
        content: content.to_write(),
        uid,
        gid,
        mode,
        previous,
    };
    match obs {
        NodeObservation::Missing => {
            drift.push(Drift::new(Attribute::Presence, "file", "absent"));
            let action = write(
                want.uid(),
                want.gid(),
                want.mode.unwrap_or(DEFAULT_MODE),
                None,
            );
            (drift, Some(action))
        }
        NodeObservation::File {
            meta,
            content: have,
        } => {
            let bytes = match content.current() {
                Ok(b) => b,
                Err(why) => return (drift, Some(NodeAction::Refuse(why))),
            };
            let same = have.as_deref() == Some(&bytes[..]);
            if !same {
                drift.push(content_drift(path, &bytes, have.as_deref(), spec.secret));
            }
            meta_drift(want, &meta, accounts, &mut drift);
            let action = if !same {
                // Replacing keeps what is not declared as it was.
                let previous = have.map(Previous::Content);
                Some(write(
                    Some(want.uid().unwrap_or(meta.uid)),
                    Some(want.gid().unwrap_or(meta.gid)),
                    want.mode.unwrap_or(meta.mode),
                    previous,
                ))
            } else if !drift.is_empty() {
                Some(NodeAction::SetMetadata {
                    uid: want.uid().filter(|u| *u != meta.uid),
                    gid: want.gid().filter(|g| *g != meta.gid),
                    mode: want.mode.filter(|m| *m != meta.mode),
                })
            } else {
                None
            };
            (drift, action)
        }
        NodeObservation::Symlink { target } => {
            drift.push(Drift::new(
                Attribute::Presence,
                "file",
                format!("symlink to {}", target.display()),
            ));
            // The link itself is replaced; what it points to is never touched.
            let action = write(
                want.uid(),
                want.gid(),
                want.mode.unwrap_or(DEFAULT_MODE),
                Some(Previous::Link(target)),
            );
            (drift, Some(action))
        }
        obs @ (NodeObservation::Directory { .. } | NodeObservation::Other) => {
            drift.push(Drift::new(Attribute::Presence, "file", obs.describe()));
            let why = format!(
                "{} is a {}, not a file; remove it by hand",
                path.display(),
                obs.describe()
            );
            (drift, Some(NodeAction::Refuse(why)))
        }
    }
}

/// Size and short digest of some content, for reports.
pub fn summary(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!(
        "{} bytes, sha256 {}",
        bytes.len(),
        &hex::encode(digest)[..16]
    )
}

fn content_drift(path: &Path, want: &[u8], have: Option<&[u8]>, secret: bool) -> Drift {
    if secret {
        // Not even a digest: a digest of a short secret can be brute-forced.
        return Drift::new(Attribute::Content, "(secret)", "(secret, differs)");
    }
    let actual = match have {
        Some(h) => summary(h),
        None => "(too large to read)".into(),
    };
    let mut d = Drift::new(Attribute::Content, summary(want), actual);
    if let Some(have) = have {
        d.diff = unified_diff(path, have, want);
    }
    d
}

/// A unified diff from `old` to `new`, when both are text.
pub fn unified_diff(path: &Path, old: &[u8], new: &[u8]) -> Option<String> {
    let old = std::str::from_utf8(old)
        .ok()
        .filter(|s| !s.contains('\0'))?;
    let new = std::str::from_utf8(new)
        .ok()
        .filter(|s| !s.contains('\0'))?;
    let shown = path.display().to_string();
    let mut text = similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&shown, &shown)
        .to_string();
    if text.len() > MAX_DIFF {
        let mut cut = MAX_DIFF;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[diff cut at 64 KiB]\n");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{FileContent, NotifyAction};
    use crate::resource::accounts::FakeAccounts;
    use crate::resource::node::Meta;

    fn spec(content: Option<&str>, mode: Option<u32>, secret: bool) -> FileSpec {
        FileSpec {
            content: content
                .map(|c| FileContent::new(c.as_bytes().to_vec().into(), "content".into())),
            owner: None,
            group: None,
            mode,
            notify: vec![],
            notify_action: NotifyAction::Restart,
            notify_actions: Default::default(),
            secret,
            validate: vec![],
        }
    }

    fn file(content: &str, mode: u32) -> NodeObservation {
        NodeObservation::File {
            meta: Meta {
                uid: 0,
                gid: 0,
                mode,
            },
            content: Some(content.as_bytes().to_vec().into()),
        }
    }

    fn want(mode: Option<u32>, owner: Option<&str>) -> WantedMeta {
        WantedMeta::resolve(owner, None, mode, &FakeAccounts).unwrap()
    }

    #[test]
    fn missing_file_is_written_with_default_mode() {
        let (d, a) = diff(
            Path::new("/a"),
            &spec(Some("x"), None, false),
            &want(None, None),
            NodeObservation::Missing,
            &FakeAccounts,
        );
        assert_eq!(d, vec![Drift::new(Attribute::Presence, "file", "absent")]);
        assert!(matches!(
            a,
            Some(NodeAction::WriteFile {
                mode: 0o644,
                previous: None,
                ..
            })
        ));
    }

    #[test]
    fn same_content_and_mode_is_in_sync() {
        let (d, a) = diff(
            Path::new("/a"),
            &spec(Some("x\n"), Some(0o600), false),
            &want(Some(0o600), None),
            file("x\n", 0o600),
            &FakeAccounts,
        );
        assert!(d.is_empty());
        assert_eq!(a, None);
    }

    #[test]
    fn content_drift_has_a_unified_diff_and_keeps_previous() {
        let (d, a) = diff(
            Path::new("/etc/motd"),
            &spec(Some("new\n"), None, false),
            &want(None, None),
            file("old\n", 0o640),
            &FakeAccounts,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].attribute, Attribute::Content);
        let diff = d[0].diff.as_deref().unwrap();
        assert!(diff.contains("-old\n+new"), "{diff}");
        // The existing mode is kept when none is declared.
        assert_eq!(
            a,
            Some(NodeAction::WriteFile {
                // The new content travels with the step.
                content: crate::resource::node::NewContent::new(b"new\n".to_vec().into()),
                uid: Some(0),
                gid: Some(0),
                mode: 0o640,
                previous: Some(Previous::Content(b"old\n".to_vec().into()))
            })
        );
    }

    #[test]
    fn secret_content_never_shows() {
        let (d, _) = diff(
            Path::new("/k"),
            &spec(Some("hunter2"), None, true),
            &want(None, None),
            file("swordfish", 0o600),
            &FakeAccounts,
        );
        let text = format!("{d:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish"),
            "{text}"
        );
        assert!(d[0].diff.is_none());
    }

    #[test]
    fn mode_and_owner_drift_only_fix_metadata() {
        let (d, a) = diff(
            Path::new("/a"),
            &spec(Some("x"), Some(0o644), false),
            &want(Some(0o644), Some("app")),
            file("x", 0o600),
            &FakeAccounts,
        );
        let attrs: Vec<_> = d.iter().map(|d| d.attribute).collect();
        assert_eq!(attrs, vec![Attribute::Owner, Attribute::Mode]);
        assert_eq!(d[0].expected, "app");
        assert_eq!(d[0].actual, "root");
        assert_eq!(
            a,
            Some(NodeAction::SetMetadata {
                uid: Some(1000),
                gid: None,
                mode: Some(0o644)
            })
        );
    }

    #[test]
    fn symlink_in_place_of_file_is_replaced_not_followed() {
        let obs = NodeObservation::Symlink {
            target: "/etc/shadow".into(),
        };
        let (d, a) = diff(
            Path::new("/a"),
            &spec(Some("x"), None, false),
            &want(None, None),
            obs,
            &FakeAccounts,
        );
        assert_eq!(d[0].attribute, Attribute::Presence);
        assert!(matches!(
            a,
            Some(NodeAction::WriteFile {
                previous: Some(Previous::Link(_)),
                ..
            })
        ));
    }

    #[test]
    fn directory_in_place_of_file_is_refused() {
        let obs = NodeObservation::Directory {
            meta: Meta {
                uid: 0,
                gid: 0,
                mode: 0o755,
            },
        };
        let (_, a) = diff(
            Path::new("/a"),
            &spec(Some("x"), None, false),
            &want(None, None),
            obs,
            &FakeAccounts,
        );
        assert!(matches!(a, Some(NodeAction::Refuse(_))));
    }

    #[test]
    fn absent_file_is_removed_with_backup() {
        let (d, a) = diff(
            Path::new("/a"),
            &spec(None, None, false),
            &want(None, None),
            file("bye", 0o644),
            &FakeAccounts,
        );
        assert_eq!(d, vec![Drift::new(Attribute::Presence, "absent", "file")]);
        assert_eq!(
            a,
            Some(NodeAction::Remove {
                previous: Some(Previous::Content(b"bye".to_vec().into()))
            })
        );
        let (d, a) = diff(
            Path::new("/a"),
            &spec(None, None, false),
            &want(None, None),
            NodeObservation::Missing,
            &FakeAccounts,
        );
        assert!(d.is_empty() && a.is_none());
    }

    #[test]
    fn an_undecryptable_secret_is_refused_and_touches_nothing() {
        let mut s = spec(Some(""), None, true);
        if let Some(c) = s.content.as_mut() {
            c.undecryptable = Some("cannot decrypt secrets/a.age: not a recipient".into());
        }
        let (d, a) = diff(
            Path::new("/a"),
            &s,
            &want(None, None),
            file("old", 0o600),
            &FakeAccounts,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            a,
            Some(NodeAction::Refuse(
                "cannot decrypt secrets/a.age: not a recipient".into()
            ))
        );
    }

    #[test]
    fn binary_content_has_no_text_diff() {
        assert!(unified_diff(Path::new("/b"), b"\0\x01", b"\0\x02").is_none());
        assert!(unified_diff(Path::new("/b"), b"a\n", b"b\n").is_some());
    }
}
