//! Stand-ins for the package manager and systemd, for unit tests of the
//! plan and of apply: they answer from plain values and record every call.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use super::package::{BackendKind, InstalledPackage, PackageAction, PackageBackend, PackageChange};
use super::service::systemctl::UnitState;
use super::service::{ServiceAction, UnitControl};

/// A package database in memory; changes succeed unless the package is in
/// `broken`.
#[derive(Default)]
pub struct FakePackages {
    pub installed: RefCell<Vec<InstalledPackage>>,
    pub broken: HashSet<String>,
    /// Every batch `change` was given.
    pub batches: RefCell<Vec<Vec<PackageChange>>>,
    /// When set, installing NAME brings the unit NAME.service, as a
    /// package with a service does.
    pub ships_units: Option<Units>,
}

impl FakePackages {
    pub fn with(installed: &[(&str, &str)]) -> FakePackages {
        let p = FakePackages::default();
        for (name, version) in installed {
            p.installed.borrow_mut().push(package(name, version));
        }
        p
    }
}

pub fn package(name: &str, version: &str) -> InstalledPackage {
    InstalledPackage {
        name: name.into(),
        version: version.into(),
        arch: "all".into(),
        installed: true,
    }
}

impl PackageBackend for FakePackages {
    fn kind(&self) -> BackendKind {
        BackendKind::Apt
    }

    fn installed(&self) -> Result<Vec<InstalledPackage>, String> {
        Ok(self.installed.borrow().clone())
    }

    fn change(&self, changes: &[PackageChange]) -> Vec<Result<(), String>> {
        self.batches.borrow_mut().push(changes.to_vec());
        changes
            .iter()
            .map(|c| {
                if self.broken.contains(&c.name) {
                    return Err(format!("E: cannot install {}", c.name));
                }
                let mut db = self.installed.borrow_mut();
                db.retain(|p| p.name != c.name);
                if let PackageAction::Install { version } = &c.action {
                    let v = version.as_deref().unwrap_or("1.0").replace('*', "0");
                    db.push(package(&c.name, &v));
                    if let Some(units) = &self.ships_units {
                        units
                            .borrow_mut()
                            .entry(format!("{}.service", c.name))
                            .or_insert((false, false, false));
                    }
                }
                Ok(())
            })
            .collect()
    }
}

/// Units by name, each (enabled, running, masked).
pub type Units = Rc<RefCell<BTreeMap<String, (bool, bool, bool)>>>;

/// systemd in memory.
pub struct FakeUnits {
    pub units: Units,
    pub runtime: bool,
    /// Units whose start fails.
    pub failing: HashSet<String>,
    /// Every call, as "verb unit" ("daemon-reload" alone).
    pub calls: RefCell<Vec<String>>,
}

impl FakeUnits {
    pub fn new(units: &[(&str, bool, bool)]) -> FakeUnits {
        FakeUnits {
            units: Rc::new(RefCell::new(
                units
                    .iter()
                    .map(|(n, e, r)| (n.to_string(), (*e, *r, false)))
                    .collect(),
            )),
            runtime: true,
            failing: HashSet::new(),
            calls: RefCell::new(vec![]),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl UnitControl for FakeUnits {
    fn runtime(&self) -> bool {
        self.runtime
    }

    fn observe(&self, names: &[&str]) -> Result<Vec<UnitState>, String> {
        self.calls
            .borrow_mut()
            .push(format!("show {}", names.join(" ")));
        let units = self.units.borrow();
        Ok(names
            .iter()
            .map(|n| {
                let (load, active, file, pid) = match units.get(*n) {
                    None => ("not-found", "inactive", "", None),
                    Some((_, _, true)) => ("masked", "inactive", "masked", None),
                    Some((e, r, _)) => (
                        "loaded",
                        if *r { "active" } else { "inactive" },
                        if *e { "enabled" } else { "disabled" },
                        r.then_some(100),
                    ),
                };
                UnitState {
                    id: n.to_string(),
                    load_state: load.into(),
                    active_state: active.into(),
                    sub_state: if active == "active" {
                        "running"
                    } else {
                        "dead"
                    }
                    .into(),
                    unit_file_state: file.into(),
                    main_pid: pid,
                }
            })
            .collect())
    }

    fn converge(&self, unit: &str, action: &ServiceAction) -> Result<(), String> {
        let mut units = self.units.borrow_mut();
        for verb in action.verbs() {
            self.calls.borrow_mut().push(format!("{verb} {unit}"));
            let Some(u) = units.get_mut(unit) else {
                return Err(format!("Unit {unit} not found."));
            };
            match verb {
                "unmask" => u.2 = false,
                "mask" => u.2 = true,
                "enable" => u.0 = true,
                "disable" => u.0 = false,
                "start" if self.failing.contains(unit) => {
                    return Err(format!("Job for {unit} failed."));
                }
                "start" => u.1 = true,
                "stop" => u.1 = false,
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn daemon_reload(&self) -> Result<(), String> {
        self.calls.borrow_mut().push("daemon-reload".into());
        Ok(())
    }

    fn restart(&self, unit: &str, reload: bool) -> Result<(), String> {
        let verb = if reload { "reload" } else { "try-restart" };
        self.calls.borrow_mut().push(format!("{verb} {unit}"));
        Ok(())
    }
}
