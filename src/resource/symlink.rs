//! Symbolic links: presence and target.

use std::path::Path;

use super::node::{NodeAction, NodeObservation, Previous};
use super::{Attribute, Drift};
use crate::desired::SymlinkSpec;

/// Compares a declared symlink with what is on disk.
pub fn diff(
    path: &Path,
    spec: &SymlinkSpec,
    obs: NodeObservation,
) -> (Vec<Drift>, Option<NodeAction>) {
    let mut drift = Vec::new();
    let Some(target) = &spec.target else {
        return match obs {
            NodeObservation::Symlink { target } => {
                drift.push(Drift::new(
                    Attribute::Presence,
                    "absent",
                    format!("symlink to {}", target.display()),
                ));
                (
                    drift,
                    Some(NodeAction::Remove {
                        previous: Some(Previous::Link(target)),
                    }),
                )
            }
            // Anything else is not a symlink: nothing to remove.
            _ => (drift, None),
        };
    };
    let link = |previous| NodeAction::Link {
        target: target.clone(),
        previous,
    };
    match obs {
        NodeObservation::Symlink { target: have } if &have == target => (drift, None),
        NodeObservation::Symlink { target: have } => {
            drift.push(Drift::new(
                Attribute::Target,
                target.display().to_string(),
                have.display().to_string(),
            ));
            (drift, Some(link(Some(Previous::Link(have)))))
        }
        NodeObservation::Missing => {
            drift.push(Drift::new(
                Attribute::Presence,
                format!("symlink to {}", target.display()),
                "absent",
            ));
            (drift, Some(link(None)))
        }
        obs @ NodeObservation::File { .. } => {
            drift.push(Drift::new(
                Attribute::Presence,
                format!("symlink to {}", target.display()),
                "file",
            ));
            (drift, Some(link(Previous::of(obs))))
        }
        obs => {
            drift.push(Drift::new(
                Attribute::Presence,
                format!("symlink to {}", target.display()),
                obs.describe(),
            ));
            let why = format!(
                "{} is a {}; remove it by hand",
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

    fn spec(target: &str) -> SymlinkSpec {
        SymlinkSpec {
            target: Some(target.into()),
        }
    }

    #[test]
    fn right_target_is_in_sync() {
        let obs = NodeObservation::Symlink {
            target: "/a".into(),
        };
        assert_eq!(diff(Path::new("/l"), &spec("/a"), obs), (vec![], None));
    }

    #[test]
    fn wrong_target_is_relinked() {
        let obs = NodeObservation::Symlink {
            target: "/b".into(),
        };
        let (d, a) = diff(Path::new("/l"), &spec("/a"), obs);
        assert_eq!(d, vec![Drift::new(Attribute::Target, "/a", "/b")]);
        assert!(matches!(a, Some(NodeAction::Link { .. })));
    }

    #[test]
    fn absent_link_is_removed_only_if_a_link() {
        let absent = SymlinkSpec { target: None };
        let obs = NodeObservation::Symlink {
            target: "/b".into(),
        };
        assert!(matches!(
            diff(Path::new("/l"), &absent, obs).1,
            Some(NodeAction::Remove { .. })
        ));
        assert_eq!(
            diff(Path::new("/l"), &absent, NodeObservation::Missing),
            (vec![], None)
        );
    }
}
