//! Directories: presence, owner, group and mode.

use std::path::Path;

use super::accounts::{Accounts, WantedMeta};
use super::node::{NodeAction, NodeObservation};
use super::{Attribute, Drift, meta_drift};
use crate::desired::DirectorySpec;

/// Default mode of a directory trueup creates without a declared mode.
pub const DEFAULT_MODE: u32 = 0o755;

/// Compares a declared directory with what is on disk.
pub fn diff(
    path: &Path,
    spec: &DirectorySpec,
    want: &WantedMeta,
    obs: NodeObservation,
    accounts: &dyn Accounts,
) -> (Vec<Drift>, Option<NodeAction>) {
    let mut drift = Vec::new();
    if !spec.present {
        return match obs {
            NodeObservation::Missing => (drift, None),
            NodeObservation::Directory { .. } => {
                drift.push(Drift::new(Attribute::Presence, "absent", "directory"));
                (drift, Some(NodeAction::RemoveDirectory))
            }
            // Something else is there: not a directory, so nothing to remove.
            _ => (drift, None),
        };
    }
    match obs {
        NodeObservation::Missing => {
            drift.push(Drift::new(Attribute::Presence, "directory", "absent"));
            let action = NodeAction::CreateDirectory {
                uid: want.uid(),
                gid: want.gid(),
                mode: want.mode.unwrap_or(DEFAULT_MODE),
            };
            (drift, Some(action))
        }
        NodeObservation::Directory { meta } => {
            meta_drift(want, &meta, accounts, &mut drift);
            let action = (!drift.is_empty()).then(|| NodeAction::SetMetadata {
                uid: want.uid().filter(|u| *u != meta.uid),
                gid: want.gid().filter(|g| *g != meta.gid),
                mode: want.mode.filter(|m| *m != meta.mode),
            });
            (drift, action)
        }
        obs => {
            drift.push(Drift::new(Attribute::Presence, "directory", obs.describe()));
            let why = format!(
                "{} is a {}, not a directory; remove it by hand",
                path.display(),
                obs.describe()
            );
            (drift, Some(NodeAction::Refuse(why)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::accounts::FakeAccounts;
    use crate::resource::node::Meta;

    fn spec(present: bool, mode: Option<u32>) -> DirectorySpec {
        DirectorySpec {
            present,
            owner: None,
            group: None,
            mode,
        }
    }

    fn want(mode: Option<u32>) -> WantedMeta {
        WantedMeta::resolve(None, None, mode, &FakeAccounts).unwrap()
    }

    fn dir(mode: u32) -> NodeObservation {
        NodeObservation::Directory {
            meta: Meta {
                uid: 0,
                gid: 0,
                mode,
            },
        }
    }

    #[test]
    fn missing_directory_is_created() {
        let (d, a) = diff(
            Path::new("/srv"),
            &spec(true, Some(0o750)),
            &want(Some(0o750)),
            NodeObservation::Missing,
            &FakeAccounts,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            a,
            Some(NodeAction::CreateDirectory {
                uid: None,
                gid: None,
                mode: 0o750
            })
        );
    }

    #[test]
    fn wrong_mode_is_fixed_in_place() {
        let (d, a) = diff(
            Path::new("/srv"),
            &spec(true, Some(0o750)),
            &want(Some(0o750)),
            dir(0o777),
            &FakeAccounts,
        );
        assert_eq!(d[0].attribute, Attribute::Mode);
        assert_eq!(
            a,
            Some(NodeAction::SetMetadata {
                uid: None,
                gid: None,
                mode: Some(0o750)
            })
        );
        let (d, a) = diff(
            Path::new("/srv"),
            &spec(true, Some(0o750)),
            &want(Some(0o750)),
            dir(0o750),
            &FakeAccounts,
        );
        assert!(d.is_empty() && a.is_none());
    }

    #[test]
    fn file_in_place_of_directory_is_refused() {
        let obs = NodeObservation::File {
            meta: Meta {
                uid: 0,
                gid: 0,
                mode: 0o644,
            },
            content: None,
        };
        let (_, a) = diff(
            Path::new("/srv"),
            &spec(true, None),
            &want(None),
            obs,
            &FakeAccounts,
        );
        assert!(matches!(a, Some(NodeAction::Refuse(_))));
    }

    #[test]
    fn absent_directory_is_removed() {
        let (_, a) = diff(
            Path::new("/srv"),
            &spec(false, None),
            &want(None),
            dir(0o755),
            &FakeAccounts,
        );
        assert_eq!(a, Some(NodeAction::RemoveDirectory));
    }
}
