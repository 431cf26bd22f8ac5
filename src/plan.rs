//! Desired state + observations → an ordered `Plan`.
//!
//! Pure: the observations are read beforehand, by the resource layer
//! (`resource::observe`), so planning is tested with plain values. The order is the one converging needs:
//! packages, directories (parents first), files and symlinks, directories to
//! remove (children first), `daemon-reload` when a unit file changes, services,
//! then the restarts that changed files `notify`.
//!
//! `daemon-reload` and restarts are follow-ups: steps that run only when one
//! of the steps they are `triggered_by` actually changed something in this
//! run. A service that will not be running is not restarted, nor is one
//! that its own step starts (after the files) — unless its package is
//! installed in the same run or its unit is not there yet, because package
//! scripts start a service as they install it, before its files are written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::desired::{DesiredState, NotifyAction};
use crate::error_class::ErrorClass;
use crate::resource::accounts::{Accounts, WantedMeta};
use crate::resource::command::{self, CommandObservation};
use crate::resource::group::GroupAction;
use crate::resource::node::{NodeAction, NodeObservation};
use crate::resource::package::{self, InstalledPackage, PackageAction};
use crate::resource::service::systemctl::UnitState;
use crate::resource::service::{self, ServiceAction};
use crate::resource::user::{self, AccountChange, AccountDb, UserAction};
use crate::resource::{BackendError, Drift, Kind, ResourceId, directory, file, symlink};

/// Where systemd looks for unit files: a change to a file or symlink under
/// one of these is followed by `systemctl daemon-reload`.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The resource id of the `daemon-reload` follow-up (not a declared
/// resource; unit names always have a suffix, so it cannot clash).
pub const DAEMON_RELOAD: &str = "daemon-reload";

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Node(NodeAction),
    /// Packages are changed together: apply hands every package step to the
    /// backend as one batch.
    Package(PackageAction),
    Service(ServiceAction),
    DaemonReload,
    /// Restart (or reload) a running service after a file it watches changed.
    Restart {
        reload: bool,
    },
    Group(GroupAction),
    User(UserAction),
    /// Run a declared command.
    Command,
    /// A file or directory whose owner or group does not exist yet but is
    /// created earlier in this run (by a package, a group or a user): it is
    /// observed and compared again, with fresh names, when its turn comes.
    Deferred,
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Node(n) => n.verb().to_string(),
            Action::Package(p) => p.describe(),
            Action::Service(s) => s.describe(),
            Action::DaemonReload => "daemon-reload".into(),
            Action::Restart { reload: false } => "restart".into(),
            Action::Restart { reload: true } => "reload".into(),
            Action::Group(g) => g.describe(),
            Action::User(u) => u.describe(),
            Action::Command => "run".into(),
            Action::Deferred => "converge once its owner exists".into(),
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
    /// What `error` calls for, when a backend said (a package database
    /// or systemd that could not be read for a reason that passes).
    pub error_class: Option<ErrorClass>,
    /// A follow-up (daemon-reload, restart) runs only when one of these
    /// steps changed something; empty for ordinary steps.
    pub triggered_by: Vec<ResourceId>,
}

impl Step {
    fn new(resource: ResourceId) -> Step {
        Step {
            resource,
            drift: vec![],
            action: None,
            requires: vec![],
            error: None,
            error_class: None,
            triggered_by: vec![],
        }
    }

    /// The step cannot run: `e` says why, and what it calls for.
    fn fail(&mut self, e: &BackendError) {
        self.error = Some(e.message.clone());
        self.error_class = Some(e.class);
    }

    /// Whether this step only follows up on others (see the module docs).
    pub fn is_follow_up(&self) -> bool {
        !self.triggered_by.is_empty()
    }

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

    /// The files whose step waits for an owner the same run creates: the
    /// deferred step compares them again from the desired state, which
    /// must keep their rendered content.
    pub fn deferred_files(&self) -> std::collections::HashSet<&std::path::Path> {
        self.steps
            .iter()
            .filter(|s| s.resource.kind == Kind::File && matches!(s.action, Some(Action::Deferred)))
            .map(|s| std::path::Path::new(s.resource.name.as_str()))
            .collect()
    }
}

pub use crate::resource::observe::Observations;

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
    obs: Observations,
    accounts: &dyn Accounts,
) -> Result<Plan, Vec<PlanError>> {
    let mut errors = Vec::new();
    // Looked up by hash, once per resource: a tree lookup compares whole
    // paths component by component.
    let mut observed: HashMap<PathBuf, _> = HashMap::with_capacity(obs.nodes.len());
    observed.extend(obs.nodes);
    let mut take = |p: &Path| observed.remove(p).unwrap_or(Ok(NodeObservation::Missing));
    let (installed, units, runtime) = (obs.packages, obs.units, obs.systemd_runtime);
    let mut head = package_steps(desired, installed);
    head.extend(account_steps(desired, obs.accounts, obs.keys));
    let pending = Pending::of(&head);
    let mut resolve =
        |id: &ResourceId, owner: Option<&str>, group: Option<&str>, mode: Option<u32>| {
            resolve_meta(owner, group, mode, accounts, &pending)
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
        let step = match want {
            Resolved::Now(want) => node_step(id, take(path), |o| {
                directory::diff(path, spec, &want, o, accounts)
            }),
            Resolved::Later(later) => deferred_step(id, take(path), later, |o, want| {
                directory::diff(path, spec, want, o, accounts)
            }),
        };
        if spec.present {
            present_dirs.push(step);
        } else {
            absent_dirs.push(step);
        }
    }
    let mut nodes = Vec::with_capacity(desired.files.len() + desired.symlinks.len());
    for (path, spec) in &desired.files {
        let id = ResourceId::new(Kind::File, path.display().to_string());
        let Some(want) = resolve(&id, spec.owner.as_deref(), spec.group.as_deref(), spec.mode)
        else {
            continue;
        };
        let step = match want {
            Resolved::Now(want) => node_step(id, take(path), |o| {
                file::diff(path, spec, &want, o, accounts)
            }),
            Resolved::Later(later) => deferred_step(id, take(path), later, |o, want| {
                file::diff(path, spec, want, o, accounts)
            }),
        };
        nodes.push((path, step));
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

    // A node inside a declared directory waits for that directory. Its
    // ancestors are looked up (outermost first, the order of the map), so
    // the cost is the path's depth, not the number of directories.
    let declared_dirs: HashSet<&Path> = desired
        .directories
        .iter()
        .filter(|(_, s)| s.present)
        .map(|(p, _)| p.as_path())
        .collect();
    let parents_of = |path: &Path| -> Vec<ResourceId> {
        if declared_dirs.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<ResourceId> = path
            .ancestors()
            .skip(1)
            .filter(|d| declared_dirs.contains(d))
            .map(|d| ResourceId::new(Kind::Directory, d.display().to_string()))
            .collect();
        found.reverse();
        found
    };
    // Files come sorted; only symlinks need merging in (a sort of 10,000
    // steps would also take a scratch copy of them).
    if !desired.symlinks.is_empty() {
        nodes.sort_by(|a, b| a.0.cmp(b.0));
    }
    // The node steps become the plan's buffer in place (a Step is no larger
    // than a (path, Step)), so that 10,000 steps are not held twice.
    let mut steps: Vec<Step> = nodes
        .into_iter()
        .map(|(path, mut s)| {
            s.requires.splice(0..0, parents_of(path));
            s
        })
        .collect();
    // BTreeMap order puts a parent before its children.
    for mut s in present_dirs {
        s.requires
            .splice(0..0, parents_of(Path::new(&s.resource.name)));
        head.push(s);
    }
    steps.reserve_exact(head.len() + absent_dirs.len() + desired.services.len() + 1);
    steps.splice(0..0, head);
    absent_dirs.reverse();
    steps.extend(absent_dirs);
    service_steps(desired, &mut steps, units, runtime, obs.commands);
    Ok(Plan { steps })
}

/// Owner and group of a node: resolved now, or later in the run.
enum Resolved {
    Now(WantedMeta),
    Later(Later),
}

/// A node whose owner or group is created earlier in the same run.
struct Later {
    /// What can be resolved now (the pending names left out).
    partial: WantedMeta,
    /// "owner uuidd: not present yet".
    drift: Vec<Drift>,
    /// The declared users and groups that create the names.
    requires: Vec<ResourceId>,
}

/// What this run is about to create: any package install may bring users
/// and groups (its maintainer scripts create them), and declared users and
/// groups bring their own names.
#[derive(Default)]
struct Pending {
    packages: bool,
    users: HashMap<String, ResourceId>,
    groups: HashMap<String, ResourceId>,
}

impl Pending {
    fn of(steps: &[Step]) -> Pending {
        let mut p = Pending::default();
        for s in steps.iter().filter(|s| s.error.is_none()) {
            match &s.action {
                Some(Action::Package(PackageAction::Install { .. })) => p.packages = true,
                Some(Action::Group(GroupAction::Create { .. })) => {
                    p.groups.insert(s.resource.name.clone(), s.resource.clone());
                }
                Some(Action::User(UserAction {
                    account: Some(AccountChange::Create(args)),
                    ..
                })) => {
                    p.users.insert(s.resource.name.clone(), s.resource.clone());
                    if args.iter().any(|a| a == "--user-group") {
                        p.groups
                            .entry(s.resource.name.clone())
                            .or_insert_with(|| s.resource.clone());
                    }
                }
                _ => {}
            }
        }
        p
    }

    /// `Some(step)` when `name` is created in this run: `Some(None)` when a
    /// package may bring it, `None` when nothing pending could.
    fn creates(
        &self,
        names: &HashMap<String, ResourceId>,
        name: &str,
    ) -> Option<Option<ResourceId>> {
        match names.get(name) {
            Some(id) => Some(Some(id.clone())),
            None if self.packages => Some(None),
            None => None,
        }
    }
}

/// Resolves a node's owner and group. A name that does not exist is an
/// error for the whole run, unless something earlier in this run creates
/// it: then the node is converged after that (`Action::Deferred`).
fn resolve_meta(
    owner: Option<&str>,
    group: Option<&str>,
    mode: Option<u32>,
    accounts: &dyn Accounts,
    pending: &Pending,
) -> Result<Resolved, String> {
    if let Ok(want) = WantedMeta::resolve(owner, group, mode, accounts) {
        return Ok(Resolved::Now(want));
    }
    let mut later = Later {
        partial: WantedMeta::default(),
        drift: vec![],
        requires: vec![],
    };
    let owner_now = match owner {
        Some(o) if WantedMeta::resolve(Some(o), None, None, accounts).is_err() => {
            let Some(by) = pending.creates(&pending.users, o) else {
                return Err(format!("owner '{o}' does not exist"));
            };
            later.drift.push(Drift::new(
                crate::resource::Attribute::Owner,
                o.to_string(),
                "not present yet",
            ));
            later.requires.extend(by);
            None
        }
        o => o,
    };
    let group_now = match group {
        Some(g) if WantedMeta::resolve(None, Some(g), None, accounts).is_err() => {
            let Some(by) = pending.creates(&pending.groups, g) else {
                return Err(format!("group '{g}' does not exist"));
            };
            later.drift.push(Drift::new(
                crate::resource::Attribute::Group,
                g.to_string(),
                "not present yet",
            ));
            later.requires.extend(by);
            None
        }
        g => g,
    };
    later.partial = WantedMeta::resolve(owner_now, group_now, mode, accounts)?;
    Ok(Resolved::Later(later))
}

/// The step of a node with a pending owner: its other drift now, and the
/// whole comparison again when it runs.
fn deferred_step(
    resource: ResourceId,
    obs: Result<NodeObservation, String>,
    later: Later,
    diff: impl FnOnce(NodeObservation, &WantedMeta) -> (Vec<Drift>, Option<NodeAction>),
) -> Step {
    let partial = later.partial;
    let mut step = node_step(resource, obs, |o| diff(o, &partial));
    if step.error.is_none() {
        step.drift.extend(later.drift);
        step.action = Some(Action::Deferred);
        step.requires = later.requires;
    }
    step
}

/// Groups to create or change, then users (created, changed or removed),
/// then groups to remove: a group is removed after the users in it.
fn account_steps(
    desired: &DesiredState,
    accounts: Option<Result<AccountDb, BackendError>>,
    mut keys: BTreeMap<String, Result<NodeObservation, String>>,
) -> Vec<Step> {
    let db = match accounts {
        None => return Vec::new(),
        Some(Ok(db)) => Ok(db),
        Some(Err(e)) => Err(e.context("reading the account databases")),
    };
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for (name, spec) in &desired.groups {
        let mut step = Step::new(ResourceId::new(Kind::Group, name.clone()));
        match &db {
            Ok(db) => {
                let (drift, action) = crate::resource::group::diff(spec, db.groups.get(name));
                step.drift = drift;
                step.action = action.map(Action::Group);
            }
            Err(e) => step.fail(e),
        }
        if spec.present {
            present.push(step);
        } else {
            absent.push(step);
        }
    }
    let declared_group = |g: &str| {
        desired
            .groups
            .get(g)
            .is_some_and(|s| s.present)
            .then(|| ResourceId::new(Kind::Group, g))
    };
    for (name, spec) in &desired.users {
        let mut step = Step::new(ResourceId::new(Kind::User, name.clone()));
        match &db {
            Ok(db) => {
                let keys_obs = match keys.remove(name) {
                    Some(Ok(o)) => Some(o),
                    Some(Err(e)) => {
                        step.error = Some(format!("reading authorized_keys: {e}"));
                        None
                    }
                    None => None,
                };
                let group_exists = db.groups.contains_key(name) || declared_group(name).is_some();
                let (drift, action) = user::diff(name, spec, db, keys_obs.as_ref(), group_exists);
                step.drift = drift;
                step.action = action.map(Action::User);
            }
            Err(e) => step.fail(e),
        }
        if spec.present {
            let mut wanted: Vec<&str> = spec.group.iter().map(String::as_str).collect();
            wanted.extend(spec.groups.iter().flatten().map(String::as_str));
            if spec.group.is_none() {
                wanted.push(name);
            }
            for g in wanted {
                if let Some(id) = declared_group(g)
                    && !step.requires.contains(&id)
                {
                    step.requires.push(id);
                }
            }
        }
        present.push(step);
    }
    present.extend(absent);
    present
}

/// One step per command: it runs when its guards allow and, with
/// `on_change`, only when one of those resources changes in this run (a
/// follow-up of them).
fn command_steps(
    desired: &DesiredState,
    changing: &HashSet<ResourceId>,
    mut observed: BTreeMap<String, CommandObservation>,
) -> Vec<Step> {
    desired
        .commands
        .iter()
        .map(|(name, spec)| {
            let mut step = Step::new(ResourceId::new(Kind::Command, name.clone()));
            let obs = observed.remove(name).unwrap_or_default();
            let triggers: Option<Vec<ResourceId>> = (!spec.on_change.is_empty()).then(|| {
                spec.on_change
                    .iter()
                    .filter(|t| changing.contains(*t))
                    .cloned()
                    .collect()
            });
            let shown: Option<Vec<String>> = triggers
                .as_ref()
                .map(|t| t.iter().map(ToString::to_string).collect());
            match command::diff(spec, &obs, shown.as_deref()) {
                Ok(None) => {}
                Ok(Some(d)) => {
                    step.drift.push(d);
                    step.action = Some(Action::Command);
                    step.triggered_by = triggers.unwrap_or_default();
                }
                Err(e) => step.error = Some(e),
            }
            if let Some(u) = &spec.user
                && desired.users.get(u).is_some_and(|s| s.present)
            {
                step.requires.push(ResourceId::new(Kind::User, u.clone()));
            }
            step
        })
        .collect()
}

/// One step per declared package, compared with the installed packages.
fn package_steps(
    desired: &DesiredState,
    installed: Option<Result<Vec<InstalledPackage>, BackendError>>,
) -> Vec<Step> {
    let mut by_name: HashMap<&str, Vec<&InstalledPackage>> = HashMap::new();
    if let Some(Ok(all)) = &installed {
        for p in all.iter().filter(|p| p.installed) {
            by_name.entry(p.name.as_str()).or_default().push(p);
        }
    }
    desired
        .packages
        .iter()
        .map(|(name, spec)| {
            let mut step = Step::new(ResourceId::new(Kind::Package, name.clone()));
            match &installed {
                Some(Ok(_)) => {
                    let found = by_name.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                    let (drift, action) = package::diff(spec, found);
                    step.drift = drift;
                    step.action = action.map(Action::Package);
                }
                Some(Err(e)) => step.fail(&e.clone().context("reading the installed packages")),
                None => step.error = Some("the installed packages were not observed".into()),
            }
            step
        })
        .collect()
}

/// Whether a change to `path` needs `systemctl daemon-reload`.
pub fn is_unit_path(path: &Path) -> bool {
    UNIT_DIRS.iter().any(|d| path.starts_with(d))
}

/// Appends, after the steps already planned: `daemon-reload` when a unit
/// file (or, with a unit not yet found, a package) changes; one step per
/// service; then the restarts that changed files notify.
///
/// A service waits for its package (`ServiceSpec::package`) and for the
/// daemon-reload. Without a running systemd (`runtime` false, under
/// `--root`) there is neither daemon-reload nor restart.
fn service_steps(
    desired: &DesiredState,
    steps: &mut Vec<Step>,
    mut units: BTreeMap<String, Result<UnitState, BackendError>>,
    runtime: bool,
    commands: BTreeMap<String, CommandObservation>,
) {
    // What changes, of what is asked about below: packages, unit files,
    // and files that may notify a service (none without services). A run
    // of a thousand files and no service copies no id.
    let notifies = !desired.services.is_empty();
    let changing: HashSet<ResourceId> = steps
        .iter()
        .filter(|s| s.action.is_some() && s.error.is_none())
        .filter(|s| match s.resource.kind {
            Kind::Package => true,
            Kind::File => notifies || is_unit_path(Path::new(&s.resource.name)),
            Kind::Symlink => is_unit_path(Path::new(&s.resource.name)),
            _ => false,
        })
        .map(|s| s.resource.clone())
        .collect();
    let mut reload_triggers: Vec<ResourceId> = steps
        .iter()
        .filter(|s| {
            changing.contains(&s.resource)
                && matches!(s.resource.kind, Kind::File | Kind::Symlink)
                && is_unit_path(Path::new(&s.resource.name))
        })
        .map(|s| s.resource.clone())
        .collect();
    // A package may bring a unit that is not there yet; systemd must see it.
    if units.values().any(|u| matches!(u, Ok(u) if !u.exists())) {
        reload_triggers.extend(
            steps
                .iter()
                .filter(|s| s.resource.kind == Kind::Package && changing.contains(&s.resource))
                .map(|s| s.resource.clone()),
        );
    }
    let reload_id = ResourceId::new(Kind::Service, DAEMON_RELOAD);
    let reload = runtime && !reload_triggers.is_empty();
    if reload {
        let mut s = Step::new(reload_id.clone());
        s.action = Some(Action::DaemonReload);
        s.triggered_by = reload_triggers;
        steps.push(s);
    }
    // Commands go here, after the daemon-reload and before services; one
    // that watches a service goes after the services.
    let commands_at = steps.len();

    let mut restarts = Vec::new();
    for (name, spec) in &desired.services {
        let id = ResourceId::new(Kind::Service, name.clone());
        let mut step = Step::new(id.clone());
        if let Some(p) = &spec.package {
            step.requires
                .push(ResourceId::new(Kind::Package, p.clone()));
        }
        if reload {
            step.requires.push(reload_id.clone());
        }
        let unit = match units.remove(name) {
            Some(Ok(u)) => u,
            Some(Err(e)) => {
                step.fail(&e.context("observing the unit"));
                steps.push(step);
                continue;
            }
            None => {
                step.error = Some("the unit was not observed".into());
                steps.push(step);
                continue;
            }
        };
        match service::diff(name, spec, &unit, runtime) {
            Ok((drift, action)) => {
                step.drift = drift;
                step.action = action.map(Action::Service);
            }
            Err(e) => step.error = Some(e),
        }
        // Starting it after the files are written is enough, unless it may
        // be running before that: a unit not there yet comes with a package
        // in this run, and package scripts start services (with the
        // packaged configuration) as they install them.
        let starts = matches!(&step.action, Some(Action::Service(a)) if a.start == Some(true));
        let package_changes = spec
            .package
            .as_ref()
            .is_some_and(|p| changing.contains(&ResourceId::new(Kind::Package, p.clone())));
        let started_later = starts && unit.exists() && !package_changes;
        if runtime && step.error.is_none() && !started_later && service::runs_after(spec, &unit) {
            let notifying: Vec<(&PathBuf, NotifyAction)> = desired
                .files
                .iter()
                .filter(|(p, f)| {
                    f.notify.iter().any(|n| n == name)
                        && changing.contains(&ResourceId::new(Kind::File, p.display().to_string()))
                })
                .map(|(p, f)| (p, f.notify_action_for(name)))
                .collect();
            if !notifying.is_empty() {
                let mut r = Step::new(id.clone());
                r.action = Some(Action::Restart {
                    // One restart covers every reload.
                    reload: notifying.iter().all(|(_, a)| *a == NotifyAction::Reload),
                });
                r.triggered_by = notifying
                    .iter()
                    .map(|(p, _)| ResourceId::new(Kind::File, p.display().to_string()))
                    .collect();
                r.requires = step.requires.clone();
                r.requires.push(id);
                restarts.push(r);
            }
        }
        steps.push(step);
    }
    if !desired.commands.is_empty() {
        let changing: HashSet<ResourceId> = steps
            .iter()
            .filter(|s| s.action.is_some() && s.error.is_none() && !s.is_follow_up())
            .map(|s| s.resource.clone())
            .collect();
        let (late, early): (Vec<Step>, Vec<Step>) = command_steps(desired, &changing, commands)
            .into_iter()
            .partition(|s| s.triggered_by.iter().any(|t| t.kind == Kind::Service));
        steps.splice(commands_at..commands_at, early);
        steps.extend(late);
    }
    steps.extend(restarts);
}

/// Every declared file, directory and symlink outside `allowed` (this
/// host's `allowed_paths`), as errors for the whole run. An empty list
/// allows every path. Prefixes match whole components: `/etc/app` allows
/// `/etc/app/x.conf`, not `/etc/apple`.
pub fn outside_allowed_paths(desired: &DesiredState, allowed: &[PathBuf]) -> Vec<PlanError> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let shown = allowed
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let nodes = desired
        .files
        .keys()
        .map(|p| (Kind::File, p))
        .chain(desired.directories.keys().map(|p| (Kind::Directory, p)))
        .chain(desired.symlinks.keys().map(|p| (Kind::Symlink, p)));
    nodes
        .filter(|(_, path)| !allowed.iter().any(|a| path.starts_with(a)))
        .map(|(kind, path)| PlanError {
            resource: ResourceId::new(kind, path.display().to_string()),
            message: format!("outside this host's allowed paths ({shown})"),
        })
        .collect()
}

fn node_step(
    resource: ResourceId,
    obs: Result<NodeObservation, String>,
    diff: impl FnOnce(NodeObservation) -> (Vec<Drift>, Option<NodeAction>),
) -> Step {
    match obs {
        Ok(o) => {
            let (drift, action) = diff(o);
            let mut step = Step::new(resource);
            step.drift = drift;
            step.action = action.map(Action::Node);
            step
        }
        Err(e) => {
            let mut step = Step::new(resource);
            step.error = Some(e);
            step
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{DirectorySpec, FileContent, FileSpec, NotifyAction, SymlinkSpec};
    use crate::resource::accounts::FakeAccounts;

    fn file_spec(content: &str) -> FileSpec {
        FileSpec {
            content: Some(FileContent::new(
                content.as_bytes().to_vec().into(),
                "content".into(),
            )),
            owner: None,
            group: None,
            mode: None,
            notify: vec![],
            notify_action: NotifyAction::Restart,
            notify_actions: Default::default(),
            secret: false,
            validate: vec![],
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
    fn allowed_paths_refuse_what_lies_outside() {
        let mut d = DesiredState::default();
        d.files.insert("/etc/app/app.conf".into(), file_spec("x"));
        d.files.insert("/etc/apple".into(), file_spec("x"));
        d.files.insert("/etc/shadow".into(), file_spec("x"));
        d.directories.insert("/srv/app".into(), dir_spec(true));
        d.symlinks.insert(
            "/usr/bin/sudo".into(),
            SymlinkSpec {
                target: Some("/tmp/x".into()),
            },
        );
        assert!(
            outside_allowed_paths(&d, &[]).is_empty(),
            "empty allows all"
        );
        let allowed = [PathBuf::from("/etc/app"), PathBuf::from("/srv")];
        let errs: Vec<String> = outside_allowed_paths(&d, &allowed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            vec![
                "file /etc/apple: outside this host's allowed paths (/etc/app, /srv)",
                "file /etc/shadow: outside this host's allowed paths (/etc/app, /srv)",
                "symlink /usr/bin/sudo: outside this host's allowed paths (/etc/app, /srv)",
            ]
        );
        assert!(outside_allowed_paths(&d, &[PathBuf::from("/")]).is_empty());
    }

    #[test]
    fn a_backend_observation_error_keeps_its_class_on_the_steps() {
        use crate::desired::PackageSpec;
        let mut d = DesiredState::default();
        let pkg = PackageSpec {
            present: true,
            version: None,
        };
        d.packages.insert("a".into(), pkg.clone());
        d.packages.insert("b".into(), pkg);
        let obs = Observations {
            packages: Some(Err(BackendError::new(
                "reading dpkg status /var/lib/dpkg/status: Too many open files",
                ErrorClass::Transient,
            ))),
            ..Observations::default()
        };
        let p = plan(&d, obs, &FakeAccounts).unwrap();
        for step in &p.steps {
            assert_eq!(
                step.error.as_deref(),
                Some(
                    "reading the installed packages: reading dpkg status \
                     /var/lib/dpkg/status: Too many open files"
                )
            );
            assert_eq!(step.error_class, Some(ErrorClass::Transient));
        }
        assert_eq!(p.steps.len(), 2);
        let checked = crate::apply::check(&p);
        assert_eq!(checked[0].error_class, Some(ErrorClass::Transient));
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
