//! Executes a `Plan`.
//!
//! Steps run in plan order. A failing step does not stop the others; a step
//! whose required resource failed or was skipped is skipped, with the reason.
//! Package steps go to the package backend as one batch, at the first of
//! them. A follow-up step (daemon-reload, restart) runs only when a step
//! that triggers it changed something; its result is folded into the
//! outcome of its own resource (a restart into its service's), or else into
//! the outcomes of the steps that triggered it (daemon-reload into the unit
//! files'), so a report lists declared resources only.
//! Content that a step replaces or removes is first kept under the run's
//! backup directory; if that copy cannot be written the step fails and the
//! file is left as it was.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::DesiredState;
use crate::plan::{Action, Plan, Step};
use crate::resource::node::{self, Previous};
use crate::resource::package::PackageChange;
use crate::resource::{Backends, Drift, Kind, ResourceId};

/// How one resource ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    /// Drift found and left alone (check, dry run, or a disabled host).
    Drift,
    Changed,
    Failed,
    Skipped,
}

/// One resource in a run's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub kind: Kind,
    pub resource: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// What was done, or would be done: "write", "remove"...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    fn new(step: &Step, status: Status) -> Outcome {
        Outcome {
            kind: step.resource.kind,
            resource: step.resource.name.clone(),
            status,
            drift: step.drift.clone(),
            action: step.action.as_ref().map(Action::describe),
            error: step.error.clone(),
        }
    }
}

/// The outcomes of a plan that is only looked at (check, dry run).
/// Follow-ups are left out: they are consequences, not drift.
pub fn check(plan: &Plan) -> Vec<Outcome> {
    plan.steps
        .iter()
        .filter(|s| !s.is_follow_up())
        .map(|s| {
            let status = if s.error.is_some() {
                Status::Failed
            } else if s.in_sync() {
                Status::InSync
            } else {
                Status::Drift
            };
            Outcome::new(s, status)
        })
        .collect()
}

/// Where and how a plan is applied.
pub struct ApplyOptions<'a> {
    /// Prefix of every managed path.
    pub root: &'a Path,
    /// Replaced content goes here, by path.
    pub backup_dir: PathBuf,
    /// Checked between steps: when it says stop, the remaining steps are
    /// skipped (the step in hand is always finished).
    pub stop: &'a dyn Fn() -> bool,
    /// Package manager and systemd.
    pub backends: Backends<'a>,
}

/// Executes the plan and returns one outcome per step.
pub fn apply(plan: &Plan, desired: &DesiredState, opts: &ApplyOptions) -> Vec<Outcome> {
    let mut broken: HashSet<&ResourceId> = HashSet::new();
    let mut changed: HashSet<&ResourceId> = HashSet::new();
    let mut packages = PackageBatch::of(plan);
    let mut out = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        if step.is_follow_up() {
            if !step.triggered_by.iter().any(|t| changed.contains(t)) {
                continue;
            }
            let result = if (opts.stop)() {
                FollowUp::Skipped("the run was stopped before it".into())
            } else if let Some(dep) = step.requires.iter().find(|r| broken.contains(r)) {
                FollowUp::Skipped(format!("skipped because {dep} failed"))
            } else {
                match step
                    .action
                    .as_ref()
                    .map(|a| run_action(step, a, desired, opts, &mut packages))
                {
                    Some(Err(e)) => FollowUp::Failed(e),
                    _ => FollowUp::Done,
                }
            };
            if !matches!(result, FollowUp::Done) {
                broken.insert(&step.resource);
            }
            fold_follow_up(&mut out, step, &changed, result);
            continue;
        }
        if step.in_sync() {
            out.push(Outcome::new(step, Status::InSync));
            continue;
        }
        if let Some(e) = &step.error {
            broken.insert(&step.resource);
            let mut o = Outcome::new(step, Status::Failed);
            o.error = Some(e.clone());
            out.push(o);
            continue;
        }
        // A package whose batch already ran is done, stop or not.
        let batched = matches!(step.action, Some(Action::Package(_))) && packages.ran();
        if !batched && (opts.stop)() {
            broken.insert(&step.resource);
            let mut o = Outcome::new(step, Status::Skipped);
            o.error = Some("the run was stopped before this step".into());
            out.push(o);
            continue;
        }
        if let Some(dep) = step.requires.iter().find(|r| broken.contains(r)) {
            broken.insert(&step.resource);
            let mut o = Outcome::new(step, Status::Skipped);
            o.error = Some(format!("skipped because {dep} failed"));
            out.push(o);
            continue;
        }
        let Some(action) = &step.action else {
            out.push(Outcome::new(step, Status::Drift));
            continue;
        };
        let result = run_action(step, action, desired, opts, &mut packages);
        let mut o = Outcome::new(step, Status::Changed);
        match result {
            Ok(()) => {
                changed.insert(&step.resource);
            }
            Err(e) => {
                broken.insert(&step.resource);
                o.status = Status::Failed;
                o.error = Some(e);
            }
        }
        out.push(o);
    }
    out
}

/// Carries out one step's action.
fn run_action(
    step: &Step,
    action: &Action,
    desired: &DesiredState,
    opts: &ApplyOptions,
    packages: &mut PackageBatch,
) -> Result<(), String> {
    let units = opts.backends.units;
    match action {
        Action::Node(a) => apply_node(&step.resource, a, desired, opts),
        Action::Package(_) => packages.result(&step.resource.name, opts),
        Action::Service(a) => units.converge(&step.resource.name, a),
        Action::DaemonReload => units
            .daemon_reload()
            .map_err(|e| format!("systemctl daemon-reload: {e}")),
        Action::Restart { reload } => units.restart(&step.resource.name, *reload).map_err(|e| {
            format!(
                "{} after a change it is notified of: {e}",
                action.describe()
            )
        }),
    }
}

/// Every package change of the plan, handed to the backend in one batch
/// when the first package step runs.
struct PackageBatch {
    changes: Vec<PackageChange>,
    results: Option<BTreeMap<String, Result<(), String>>>,
}

impl PackageBatch {
    fn of(plan: &Plan) -> PackageBatch {
        let changes = plan
            .steps
            .iter()
            .filter(|s| s.error.is_none())
            .filter_map(|s| match &s.action {
                Some(Action::Package(a)) => Some(PackageChange {
                    name: s.resource.name.clone(),
                    action: a.clone(),
                }),
                _ => None,
            })
            .collect();
        PackageBatch {
            changes,
            results: None,
        }
    }

    fn ran(&self) -> bool {
        self.results.is_some()
    }

    fn result(&mut self, name: &str, opts: &ApplyOptions) -> Result<(), String> {
        let changes = &self.changes;
        self.results
            .get_or_insert_with(|| {
                let results = match opts.backends.packages {
                    Some(b) => b.change(changes),
                    None => vec![Err("no package backend".to_string()); changes.len()],
                };
                changes
                    .iter()
                    .map(|c| c.name.clone())
                    .zip(results)
                    .collect()
            })
            .remove(name)
            .unwrap_or_else(|| Err("not part of the package batch".into()))
    }
}

/// How a follow-up went.
enum FollowUp {
    Done,
    Failed(String),
    Skipped(String),
}

/// Folds a follow-up's result into the outcome of its own resource, or
/// else into the outcomes of the steps that triggered it and changed.
fn fold_follow_up(
    out: &mut [Outcome],
    step: &Step,
    changed: &HashSet<&ResourceId>,
    result: FollowUp,
) {
    let is = |o: &Outcome, id: &ResourceId| o.kind == id.kind && o.resource == id.name;
    let own: Vec<usize> = (0..out.len())
        .filter(|&i| is(&out[i], &step.resource))
        .collect();
    let targets = if own.is_empty() {
        (0..out.len())
            .filter(|&i| {
                step.triggered_by
                    .iter()
                    .any(|t| changed.contains(t) && is(&out[i], t))
            })
            .collect()
    } else {
        own
    };
    let verb = step
        .action
        .as_ref()
        .map(Action::describe)
        .unwrap_or_default();
    for i in targets {
        let o = &mut out[i];
        if matches!(result, FollowUp::Skipped(_))
            && matches!(o.status, Status::Failed | Status::Skipped)
        {
            // Already reported as not done, for the same reason or a worse one.
            continue;
        }
        o.action = Some(match o.action.take() {
            Some(a) => format!("{a}, {verb}"),
            None => verb.clone(),
        });
        let mut add_error = |e: String| {
            o.error = Some(match o.error.take() {
                Some(prev) => format!("{prev}; {e}"),
                None => e,
            });
        };
        match &result {
            FollowUp::Done => {
                if matches!(o.status, Status::InSync | Status::Drift) {
                    o.status = Status::Changed;
                }
            }
            FollowUp::Failed(e) => {
                add_error(e.clone());
                o.status = Status::Failed;
            }
            FollowUp::Skipped(why) => {
                add_error(format!("{verb} not done: {why}"));
                if o.status != Status::Failed {
                    o.status = Status::Skipped;
                }
            }
        }
    }
}

fn apply_node(
    id: &ResourceId,
    action: &node::NodeAction,
    desired: &DesiredState,
    opts: &ApplyOptions,
) -> Result<(), String> {
    let path = Path::new(&id.name);
    if let Some(prev) = action.previous() {
        backup(&opts.backup_dir, path, prev)?;
    }
    let content = match id.kind {
        Kind::File => desired
            .files
            .get(path)
            .and_then(|f| f.content.as_ref())
            .map(|c| &c.bytes[..]),
        _ => None,
    };
    node::execute(opts.root, path, action, content)
}

/// Keeps what is about to be replaced: `<backup_dir>/<path>` holds the old
/// content; for a symlink, `<path>.symlink` holds its target.
fn backup(backup_dir: &Path, path: &Path, prev: &Previous) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::DirBuilderExt;
    if !backup_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(backup_dir)
            .map_err(|e| format!("creating backup directory {}: {e}", backup_dir.display()))?;
    }
    let rel = path.strip_prefix("/").unwrap_or(path);
    let (dest, bytes) = match prev {
        Previous::Content(c) => (backup_dir.join(rel), &c[..]),
        Previous::Link(t) => {
            let mut name = rel.as_os_str().to_os_string();
            name.push(".symlink");
            (backup_dir.join(name), t.as_os_str().as_bytes())
        }
    };
    crate::safe_fs::write_own_file(&dest, bytes, 0o600)
        .map_err(|e| format!("keeping the replaced content in {}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::desired::{
        FileContent, FileSpec, NotifyAction, PackageSpec, ServiceRunState, ServiceSpec,
    };
    use crate::plan::{self, Observations};
    use crate::resource::accounts::FakeAccounts;
    use crate::resource::fake::{FakePackages, FakeUnits};

    fn file(content: &str, notify: &[&str], action: NotifyAction) -> FileSpec {
        FileSpec {
            content: Some(FileContent {
                bytes: content.as_bytes().to_vec().into(),
                origin: "content".into(),
            }),
            owner: None,
            group: None,
            mode: None,
            notify: notify.iter().map(|s| s.to_string()).collect(),
            notify_action: action,
            secret: false,
        }
    }

    fn running(package: Option<&str>) -> ServiceSpec {
        ServiceSpec {
            enabled: Some(true),
            state: Some(ServiceRunState::Running),
            masked: None,
            package: package.map(str::to_string),
        }
    }

    fn present() -> PackageSpec {
        PackageSpec {
            present: true,
            version: None,
        }
    }

    /// A package that ships a service, its config (notifying it) and the
    /// service itself.
    fn app_state() -> DesiredState {
        let mut d = DesiredState::default();
        d.packages.insert("app".into(), present());
        d.packages.insert("tool".into(), present());
        d.files.insert(
            "/etc/app.conf".into(),
            file("port=1\n", &["app.service"], NotifyAction::Restart),
        );
        d.services
            .insert("app.service".into(), running(Some("app")));
        d
    }

    struct Host {
        root: tempfile::TempDir,
        backup: tempfile::TempDir,
        packages: FakePackages,
        units: FakeUnits,
    }

    impl Host {
        fn new(packages: FakePackages, units: FakeUnits) -> Host {
            Host {
                root: tempfile::tempdir().unwrap(),
                backup: tempfile::tempdir().unwrap(),
                packages,
                units,
            }
        }

        fn backends(&self) -> Backends<'_> {
            Backends {
                packages: Some(&self.packages),
                units: &self.units,
            }
        }

        fn plan(&self, d: &DesiredState) -> Plan {
            let obs = plan::observe(self.root.path(), d, &self.backends());
            plan::plan(d, obs, &FakeAccounts).unwrap()
        }

        fn apply(&self, d: &DesiredState) -> Vec<Outcome> {
            let p = self.plan(d);
            apply(
                &p,
                d,
                &ApplyOptions {
                    root: self.root.path(),
                    backup_dir: self.backup.path().join("b"),
                    stop: &|| false,
                    backends: self.backends(),
                },
            )
        }
    }

    fn by_resource(out: &[Outcome]) -> BTreeMap<String, (Status, Option<String>, Option<String>)> {
        out.iter()
            .map(|o| {
                (
                    format!("{} {}", o.kind.as_str(), o.resource),
                    (o.status, o.action.clone(), o.error.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn package_config_service_converge_in_one_run_from_nothing() {
        // Nothing installed; the unit appears when its package is installed.
        let units = FakeUnits::new(&[]);
        let packages = FakePackages {
            ships_units: Some(units.units.clone()),
            ..FakePackages::default()
        };
        let h = Host::new(packages, units);
        let d = app_state();
        let p = h.plan(&d);
        let order: Vec<String> = p.steps.iter().map(|s| s.resource.to_string()).collect();
        assert_eq!(
            order,
            [
                "package app",
                "package tool",
                "file /etc/app.conf",
                "service daemon-reload",
                "service app.service",
                "service app.service",
            ],
            "the package may start the service before its config is written: restart follows"
        );
        assert_eq!(p.steps[5].action, Some(Action::Restart { reload: false }));
        let svc = &p.steps[4];
        assert_eq!(
            svc.requires,
            [
                ResourceId::new(Kind::Package, "app"),
                ResourceId::new(Kind::Service, "daemon-reload")
            ]
        );
        let out = h.apply(&d);
        let r = by_resource(&out);
        assert_eq!(
            out.len(),
            4,
            "daemon-reload is not a resource of its own: {r:?}"
        );
        assert_eq!(r["package app"].0, Status::Changed);
        assert_eq!(r["file /etc/app.conf"].0, Status::Changed);
        assert_eq!(r["service app.service"].0, Status::Changed, "{r:?}");
        assert_eq!(
            r["service app.service"].1.as_deref(),
            Some("enable, start, restart")
        );
        // The packages went in one batch; the package step brought the unit,
        // so daemon-reload ran before the service was enabled and started.
        assert_eq!(h.packages.batches.borrow().len(), 1);
        assert_eq!(h.packages.batches.borrow()[0].len(), 2);
        assert_eq!(
            r["package app"].1.as_deref(),
            Some("install, daemon-reload")
        );
        let calls = h.units.calls();
        let reload = calls.iter().position(|c| c == "daemon-reload").unwrap();
        let start = calls.iter().position(|c| c == "start app.service").unwrap();
        assert!(reload < start, "{calls:?}");
        let restart = calls
            .iter()
            .position(|c| c == "try-restart app.service")
            .unwrap();
        assert!(start < restart, "{calls:?}");
        assert_eq!(
            std::fs::read_to_string(h.root.path().join("etc/app.conf")).unwrap(),
            "port=1\n"
        );
        // And the next plan has nothing to do.
        let again = h.plan(&d);
        assert!(again.steps.iter().all(Step::in_sync), "{again:?}");
        assert!(check(&again).iter().all(|o| o.status == Status::InSync));
    }

    #[test]
    fn config_change_restarts_a_running_service_once() {
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            FakeUnits::new(&[("app.service", true, true)]),
        );
        let mut d = app_state();
        d.files.insert(
            "/etc/app.extra".into(),
            file("x\n", &["app.service"], NotifyAction::Reload),
        );
        let p = h.plan(&d);
        let restart = p.steps.last().unwrap();
        assert_eq!(
            restart.action,
            Some(Action::Restart { reload: false }),
            "restart wins over reload"
        );
        assert_eq!(restart.triggered_by.len(), 2);
        // A check shows the files' drift, not the restart.
        let checked = check(&p);
        assert_eq!(checked.len(), 5);
        assert_eq!(
            checked.iter().filter(|o| o.status == Status::Drift).count(),
            2
        );

        let out = h.apply(&d);
        let r = by_resource(&out);
        assert_eq!(r["service app.service"].0, Status::Changed);
        assert_eq!(r["service app.service"].1.as_deref(), Some("restart"));
        assert_eq!(
            h.units
                .calls()
                .iter()
                .filter(|c| c.contains("restart"))
                .count(),
            1
        );
        assert!(h.packages.batches.borrow().is_empty(), "no package changed");
        // In sync now: no restart.
        let calls = h.units.calls().len();
        let out = h.apply(&d);
        assert!(out.iter().all(|o| o.status == Status::InSync), "{out:?}");
        assert_eq!(h.units.calls().len(), calls + 1, "only the observation");
    }

    #[test]
    fn a_stopped_service_started_after_its_config_is_not_restarted() {
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            FakeUnits::new(&[("app.service", true, false)]),
        );
        let d = app_state();
        let p = h.plan(&d);
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s.action, Some(Action::Restart { .. }))),
            "{p:?}"
        );
        let out = h.apply(&d);
        assert_eq!(
            by_resource(&out)["service app.service"].1.as_deref(),
            Some("start")
        );
        let calls: Vec<String> = h
            .units
            .calls()
            .into_iter()
            .filter(|c| !c.starts_with("show"))
            .collect();
        assert_eq!(calls, ["start app.service"]);
    }

    #[test]
    fn only_reload_files_reload() {
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            FakeUnits::new(&[("app.service", true, true)]),
        );
        let mut d = app_state();
        d.files
            .get_mut(Path::new("/etc/app.conf"))
            .unwrap()
            .notify_action = NotifyAction::Reload;
        h.apply(&d);
        assert!(h.units.calls().contains(&"reload app.service".to_string()));
    }

    #[test]
    fn stopped_service_is_not_restarted_by_a_config_change() {
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            FakeUnits::new(&[("app.service", true, false)]),
        );
        let mut d = app_state();
        d.services.get_mut("app.service").unwrap().state = Some(ServiceRunState::Stopped);
        let p = h.plan(&d);
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s.action, Some(Action::Restart { .. })))
        );
    }

    #[test]
    fn service_of_a_failed_package_is_skipped_with_the_reason() {
        let mut packages = FakePackages::default();
        packages.broken.insert("app".into());
        let h = Host::new(packages, FakeUnits::new(&[]));
        let d = app_state();
        let out = h.apply(&d);
        let r = by_resource(&out);
        assert_eq!(r["package app"].0, Status::Failed);
        assert_eq!(r["package app"].2.as_deref(), Some("E: cannot install app"));
        assert_eq!(r["package tool"].0, Status::Changed, "the batch goes on");
        assert_eq!(r["file /etc/app.conf"].0, Status::Changed);
        assert_eq!(r["service app.service"].0, Status::Skipped);
        assert_eq!(
            r["service app.service"].2.as_deref(),
            Some("skipped because package app failed")
        );
        assert!(!h.units.calls().iter().any(|c| c.contains("start")));
    }

    #[test]
    fn unit_file_change_reloads_systemd_before_services() {
        let h = Host::new(
            FakePackages::default(),
            FakeUnits::new(&[("x.service", true, true)]),
        );
        let mut d = DesiredState::default();
        d.files.insert(
            "/etc/systemd/system/x.service.d/override.conf".into(),
            file("[Service]\nNice=5\n", &["x.service"], NotifyAction::Restart),
        );
        d.files
            .insert("/etc/motd".into(), file("hi\n", &[], NotifyAction::Restart));
        d.services.insert("x.service".into(), running(None));
        let out = h.apply(&d);
        let r = by_resource(&out);
        assert_eq!(
            r["file /etc/systemd/system/x.service.d/override.conf"]
                .1
                .as_deref(),
            Some("write, daemon-reload")
        );
        assert_eq!(r["file /etc/motd"].1.as_deref(), Some("write"));
        assert_eq!(r["service x.service"].1.as_deref(), Some("restart"));
        assert_eq!(
            h.units.calls(),
            ["show x.service", "daemon-reload", "try-restart x.service"]
        );
    }

    #[test]
    fn no_reload_or_restart_without_a_running_systemd() {
        let mut units = FakeUnits::new(&[("x.service", true, true)]);
        units.runtime = false;
        let h = Host::new(FakePackages::default(), units);
        let mut d = DesiredState::default();
        d.files.insert(
            "/etc/systemd/system/x.service".into(),
            file("[Service]\n", &["x.service"], NotifyAction::Restart),
        );
        d.services.insert(
            "x.service".into(),
            ServiceSpec {
                enabled: Some(true),
                state: None,
                masked: None,
                package: None,
            },
        );
        let p = h.plan(&d);
        assert_eq!(p.steps.len(), 2, "{p:?}");
        d.services.get_mut("x.service").unwrap().state = Some(ServiceRunState::Running);
        let p = h.plan(&d);
        let err = p.steps[1].error.as_deref().unwrap();
        assert!(err.contains("--root"), "{err}");
    }

    #[test]
    fn nothing_declared_spawns_nothing() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let mut d = DesiredState::default();
        d.files
            .insert("/etc/motd".into(), file("hi\n", &[], NotifyAction::Restart));
        let obs: Observations = plan::observe(h.root.path(), &d, &h.backends());
        assert!(obs.packages.is_none());
        assert!(h.units.calls().is_empty());
    }

    #[test]
    fn stop_before_the_batch_skips_every_package() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let d = app_state();
        let p = h.plan(&d);
        let out = apply(
            &p,
            &d,
            &ApplyOptions {
                root: h.root.path(),
                backup_dir: h.backup.path().join("b"),
                stop: &|| true,
                backends: h.backends(),
            },
        );
        assert!(h.packages.batches.borrow().is_empty());
        assert!(out.iter().all(|o| o.status == Status::Skipped), "{out:?}");
    }
}
