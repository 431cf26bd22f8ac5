//! Desired state + observations → an ordered `Plan`.
//!
//! Pure: the observations are read beforehand (`observe`), so planning is
//! tested with plain values. The order is the one converging needs:
//! packages, directories (parents first), files and symlinks, directories to
//! remove (children first), `daemon-reload` when a unit file changes, services,
//! then the restarts that changed files `notify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::desired::DesiredState;
use crate::resource::accounts::{Accounts, WantedMeta};
use crate::resource::node::{NodeAction, NodeObservation, observe_node};
use crate::resource::{Drift, Kind, ResourceId, directory, file, symlink};

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Node(NodeAction),
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Node(n) => n.verb().to_string(),
        }
    }
}

/// One declared resource: its drift and what repairing it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub resource: ResourceId,
    pub drift: Vec<Drift>,
    pub action: Option<Action>,
    /// Resources that must succeed before this one is attempted.
    pub requires: Vec<ResourceId>,
    /// Set when the resource could not even be observed.
    pub error: Option<String>,
}

impl Step {
    pub fn in_sync(&self) -> bool {
        self.drift.is_empty() && self.action.is_none() && self.error.is_none()
    }
}

/// Every declared resource, in the order it is converged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn drift_count(&self) -> usize {
        self.steps.iter().filter(|s| !s.drift.is_empty()).count()
    }

    pub fn has_changes(&self) -> bool {
        self.steps.iter().any(|s| s.action.is_some())
    }
}

/// What the machine looks like for each declared path.
#[derive(Debug, Default)]
pub struct Observations {
    pub nodes: BTreeMap<PathBuf, Result<NodeObservation, String>>,
}

/// Reads every declared path under `root`.
pub fn observe(root: &Path, desired: &DesiredState) -> Observations {
    let mut nodes = BTreeMap::new();
    let paths = desired
        .files
        .keys()
        .map(|p| (p, true))
        .chain(desired.directories.keys().map(|p| (p, false)))
        .chain(desired.symlinks.keys().map(|p| (p, true)));
    for (path, want_content) in paths {
        let obs = observe_node(root, path, want_content).map_err(|e| e.to_string());
        nodes.insert(path.clone(), obs);
    }
    Observations { nodes }
}

/// Problems that stop a run before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub resource: ResourceId,
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.resource, self.message)
    }
}

/// Compares the desired state with the observations and orders the steps.
///
/// An owner or group that does not exist is an error for the whole run, so
/// that nothing is half-applied for a branch that cannot fully apply.
pub fn plan(
    desired: &DesiredState,
    mut obs: Observations,
    accounts: &dyn Accounts,
) -> Result<Plan, Vec<PlanError>> {
    let mut errors = Vec::new();
    let mut take = |p: &Path| obs.nodes.remove(p).unwrap_or(Ok(NodeObservation::Missing));
    let mut resolve =
        |id: &ResourceId, owner: Option<&str>, group: Option<&str>, mode: Option<u32>| {
            WantedMeta::resolve(owner, group, mode, accounts)
                .map_err(|message| {
                    errors.push(PlanError {
                        resource: id.clone(),
                        message,
                    })
                })
                .ok()
        };

    let mut present_dirs = Vec::new();
    let mut absent_dirs = Vec::new();
    for (path, spec) in &desired.directories {
        let id = ResourceId::new(Kind::Directory, path.display().to_string());
        let Some(want) = resolve(&id, spec.owner.as_deref(), spec.group.as_deref(), spec.mode)
        else {
            continue;
        };
        let step = node_step(id, take(path), |o| {
            directory::diff(path, spec, &want, o, accounts)
        });
        if spec.present {
            present_dirs.push(step);
        } else {
            absent_dirs.push(step);
        }
    }
    let mut nodes = Vec::new();
    for (path, spec) in &desired.files {
        let id = ResourceId::new(Kind::File, path.display().to_string());
        let Some(want) = resolve(&id, spec.owner.as_deref(), spec.group.as_deref(), spec.mode)
        else {
            continue;
        };
        nodes.push((
            path,
            node_step(id, take(path), |o| {
                file::diff(path, spec, &want, o, accounts)
            }),
        ));
    }
    for (path, spec) in &desired.symlinks {
        let id = ResourceId::new(Kind::Symlink, path.display().to_string());
        nodes.push((
            path,
            node_step(id, take(path), |o| symlink::diff(path, spec, o)),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // A node inside a declared directory waits for that directory.
    let declared_dirs: Vec<&PathBuf> = desired
        .directories
        .iter()
        .filter(|(_, s)| s.present)
        .map(|(p, _)| p)
        .collect();
    let parents_of = |path: &Path| -> Vec<ResourceId> {
        declared_dirs
            .iter()
            .filter(|d| path != d.as_path() && path.starts_with(d))
            .map(|d| ResourceId::new(Kind::Directory, d.display().to_string()))
            .collect()
    };
    let mut steps = Vec::with_capacity(desired.len());
    // BTreeMap order puts a parent before its children.
    for mut s in present_dirs {
        s.requires = parents_of(Path::new(&s.resource.name));
        steps.push(s);
    }
    nodes.sort_by(|a, b| a.0.cmp(b.0));
    for (path, mut s) in nodes {
        s.requires = parents_of(path);
        steps.push(s);
    }
    absent_dirs.reverse();
    steps.extend(absent_dirs);
    Ok(Plan { steps })
}

fn node_step(
    resource: ResourceId,
    obs: Result<NodeObservation, String>,
    diff: impl FnOnce(NodeObservation) -> (Vec<Drift>, Option<NodeAction>),
) -> Step {
    match obs {
        Ok(o) => {
            let (drift, action) = diff(o);
            Step {
                resource,
                drift,
                action: action.map(Action::Node),
                requires: vec![],
                error: None,
            }
        }
        Err(e) => Step {
            resource,
            drift: vec![],
            action: None,
            requires: vec![],
            error: Some(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{DirectorySpec, FileContent, FileSpec, NotifyAction, SymlinkSpec};
    use crate::resource::accounts::FakeAccounts;

    fn file_spec(content: &str) -> FileSpec {
        FileSpec {
            content: Some(FileContent {
                bytes: content.as_bytes().to_vec(),
                origin: "content".into(),
            }),
            owner: None,
            group: None,
            mode: None,
            notify: vec![],
            notify_action: NotifyAction::Restart,
            secret: false,
        }
    }

    fn dir_spec(present: bool) -> DirectorySpec {
        DirectorySpec {
            present,
            owner: None,
            group: None,
            mode: None,
        }
    }

    #[test]
    fn order_is_dirs_then_nodes_then_removed_dirs() {
        let mut d = DesiredState::default();
        d.files.insert("/srv/app/conf".into(), file_spec("x"));
        d.files.insert("/etc/motd".into(), file_spec("y"));
        d.symlinks.insert(
            "/etc/link".into(),
            SymlinkSpec {
                target: Some("/etc/motd".into()),
            },
        );
        d.directories.insert("/srv/app".into(), dir_spec(true));
        d.directories.insert("/srv".into(), dir_spec(true));
        d.directories.insert("/old".into(), dir_spec(false));
        d.directories.insert("/old/sub".into(), dir_spec(false));
        let p = plan(&d, Observations::default(), &FakeAccounts).unwrap();
        let order: Vec<String> = p.steps.iter().map(|s| s.resource.to_string()).collect();
        assert_eq!(
            order,
            vec![
                "directory /srv",
                "directory /srv/app",
                "symlink /etc/link",
                "file /etc/motd",
                "file /srv/app/conf",
                "directory /old/sub",
                "directory /old",
            ]
        );
        let conf = p
            .steps
            .iter()
            .find(|s| s.resource.name == "/srv/app/conf")
            .unwrap();
        assert_eq!(conf.requires.len(), 2);
        // Everything is missing: all but the absent directories drift.
        assert_eq!(p.drift_count(), 5);
    }

    #[test]
    fn unknown_owner_fails_the_whole_plan() {
        let mut d = DesiredState::default();
        let mut f = file_spec("x");
        f.owner = Some("nosuchuser".into());
        d.files.insert("/a".into(), f);
        d.files.insert("/b".into(), file_spec("y"));
        let errs = plan(&d, Observations::default(), &FakeAccounts).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("nosuchuser"));
    }

    #[test]
    fn observation_error_is_kept_on_the_step() {
        let mut d = DesiredState::default();
        d.files.insert("/a".into(), file_spec("x"));
        let mut obs = Observations::default();
        obs.nodes.insert("/a".into(), Err("boom".into()));
        let p = plan(&d, obs, &FakeAccounts).unwrap();
        assert_eq!(p.steps[0].error.as_deref(), Some("boom"));
        assert!(!p.steps[0].in_sync());
    }
}
