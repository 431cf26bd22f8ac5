//! Observe: read the machine for every declared resource, in batches
//! where a tool allows it (one read of the package database, one
//! systemctl call for all units, one walk cache for all paths). The result,
//! [`Observations`], is a plain value that the pure planner (`plan::plan`)
//! compares with the desired state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::desired::DesiredState;
use crate::resource::command::{self, CommandObservation};
use crate::resource::node::{NodeObservation, observe_node, observe_node_in};
use crate::resource::package::InstalledPackage;
use crate::resource::service::systemctl::UnitState;
use crate::resource::user::{self, AccountDb};
use crate::resource::{BackendError, Backends};
use crate::safe_fs::WalkCache;

/// What the machine looks like for each declared resource.
#[derive(Debug, Default)]
pub struct Observations {
    pub nodes: BTreeMap<PathBuf, Result<NodeObservation, String>>,
    /// Every installed package, from one read of the package database;
    /// `None` when no package is declared.
    pub packages: Option<Result<Vec<InstalledPackage>, BackendError>>,
    /// Each declared unit, from one systemctl call.
    pub units: BTreeMap<String, Result<UnitState, BackendError>>,
    /// Whether systemd runs the managed root (see
    /// [`crate::resource::service::UnitControl::runtime`]).
    pub systemd_runtime: bool,
    /// The account databases, when a user or group is declared.
    pub accounts: Option<Result<AccountDb, BackendError>>,
    /// The `authorized_keys` file of each declared user that has keys.
    pub keys: BTreeMap<String, Result<NodeObservation, String>>,
    /// What each command's guards found.
    pub commands: BTreeMap<String, CommandObservation>,
}

/// Reads every declared resource under `root`: paths one by one, packages
/// and units each in one batch (and not at all when none is declared).
pub fn observe(root: &Path, desired: &DesiredState, backends: &Backends) -> Observations {
    let packages = (!desired.packages.is_empty()).then(|| match backends.packages {
        Some(b) => b.installed(),
        None => Err(BackendError::permanent("no package backend")),
    });
    let mut units = BTreeMap::new();
    if !desired.services.is_empty() {
        let names: Vec<&str> = desired.services.keys().map(String::as_str).collect();
        match backends.units.observe(&names) {
            Ok(states) => {
                for (name, state) in names.iter().zip(states) {
                    units.insert(name.to_string(), Ok(state));
                }
            }
            Err(e) => {
                for name in names {
                    units.insert(name.to_string(), Err(e.clone()));
                }
            }
        }
    }
    let paths = desired
        .files
        .iter()
        .map(|(p, f)| (p, true, f.content.as_ref().map(|c| &c.bytes)))
        .chain(desired.directories.keys().map(|p| (p, false, None)))
        .chain(desired.symlinks.keys().map(|p| (p, true, None)));
    // In path order, so that each walk reuses the directories of the one
    // before; built in bulk, since the paths come in three sorted runs.
    let mut walks = WalkCache::default();
    let nodes = paths
        .map(|(path, want_content, expected)| {
            let obs = observe_node_in(&mut walks, root, path, want_content, expected)
                .map_err(|e| e.to_string());
            (path.clone(), obs)
        })
        .collect();
    let accounts = (!desired.users.is_empty() || !desired.groups.is_empty())
        .then(|| backends.accounts.observe());
    let mut keys = BTreeMap::new();
    if let Some(Ok(db)) = &accounts {
        for (name, spec) in desired.users.iter().filter(|(_, s)| s.present) {
            if spec.authorized_keys.is_some()
                && let Some(home) = user::home_of(spec, db.users.get(name))
            {
                let obs =
                    observe_node(root, &user::keys_path(&home), true).map_err(|e| e.to_string());
                keys.insert(name.clone(), obs);
            }
        }
    }
    let commands = desired
        .commands
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                command::observe(root, spec, backends.commands),
            )
        })
        .collect();
    Observations {
        nodes,
        packages,
        units,
        systemd_runtime: backends.units.runtime(),
        accounts,
        keys,
        commands,
    }
}
