//! Stand-ins for the package manager and systemd, for unit tests of the
//! plan and of apply: they answer from plain values and record every call.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use super::BackendError;
use super::package::{BackendKind, InstalledPackage, PackageAction, PackageBackend, PackageChange};
use super::service::systemctl::UnitState;
use super::service::{ServiceAction, UnitControl};
use crate::error_class::classify_tool_output;

/// A package database in memory; changes succeed unless the package is in
/// `broken`, or `refused` gives the package manager's words for it
/// (classified as the real tool's are).
#[derive(Default)]
pub struct FakePackages {
    pub installed: RefCell<Vec<InstalledPackage>>,
    pub broken: HashSet<String>,
    pub refused: BTreeMap<String, String>,
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

    fn installed(&self) -> Result<Vec<InstalledPackage>, BackendError> {
        Ok(self.installed.borrow().clone())
    }

    fn change(&self, changes: &[PackageChange]) -> Vec<Result<(), BackendError>> {
        self.batches.borrow_mut().push(changes.to_vec());
        changes
            .iter()
            .map(|c| {
                if self.broken.contains(&c.name) {
                    return Err(format!("E: cannot install {}", c.name).into());
                }
                if let Some(words) = self.refused.get(&c.name) {
                    return Err(BackendError::new(
                        words.clone(),
                        classify_tool_output(words),
                    ));
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
    /// What every restart fails with, when set.
    pub restart_error: Option<BackendError>,
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
            restart_error: None,
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

    fn observe(&self, names: &[&str]) -> Result<Vec<UnitState>, BackendError> {
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

    fn converge(&self, unit: &str, action: &ServiceAction) -> Result<(), BackendError> {
        let mut units = self.units.borrow_mut();
        for verb in action.verbs() {
            self.calls.borrow_mut().push(format!("{verb} {unit}"));
            let Some(u) = units.get_mut(unit) else {
                return Err(format!("Unit {unit} not found.").into());
            };
            match verb {
                "unmask" => u.2 = false,
                "mask" => u.2 = true,
                "enable" => u.0 = true,
                "disable" => u.0 = false,
                "start" if self.failing.contains(unit) => {
                    return Err(format!("Job for {unit} failed.").into());
                }
                "start" => u.1 = true,
                "stop" => u.1 = false,
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn daemon_reload(&self) -> Result<(), BackendError> {
        self.calls.borrow_mut().push("daemon-reload".into());
        Ok(())
    }

    fn restart(&self, unit: &str, reload: bool) -> Result<(), BackendError> {
        let verb = if reload { "reload" } else { "try-restart" };
        self.calls.borrow_mut().push(format!("{verb} {unit}"));
        match &self.restart_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Account databases in memory, changed by reading the arguments trueup
/// gives `useradd`, `usermod`, `userdel`, `groupadd`, `groupmod` and
/// `groupdel`; every call is recorded.
#[derive(Default)]
pub struct FakeAccountDb {
    pub db: RefCell<super::user::AccountDb>,
    pub calls: RefCell<Vec<String>>,
}

impl FakeAccountDb {
    fn next_id(&self) -> u32 {
        let db = self.db.borrow();
        let used = db
            .users
            .values()
            .map(|u| u.uid)
            .chain(db.groups.values().map(|g| g.gid));
        used.max().unwrap_or(999) + 1
    }
}

impl super::user::AccountControl for FakeAccountDb {
    fn observe(&self) -> Result<super::user::AccountDb, BackendError> {
        Ok(self.db.borrow().clone())
    }

    fn run_tool(&self, tool: &str, args: &[String]) -> Result<(), BackendError> {
        use super::group::GroupEntry;
        use super::user::PasswdEntry;
        self.calls
            .borrow_mut()
            .push(format!("{tool} {}", args.join(" ")));
        let name = args.last().cloned().unwrap_or_default();
        let opt = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let id = self.next_id();
        let mut db = self.db.borrow_mut();
        let gid_of = |db: &super::user::AccountDb, g: &str| {
            db.groups
                .get(g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("{tool}: group '{g}' does not exist"))
        };
        match tool {
            "groupadd" => {
                let gid = opt("--gid").map(|g| g.parse().unwrap()).unwrap_or(id);
                db.groups.insert(
                    name.clone(),
                    GroupEntry {
                        name,
                        gid,
                        members: vec![],
                    },
                );
            }
            "groupmod" => {
                let gid = opt("--gid").map(|g| g.parse().unwrap()).unwrap_or(id);
                db.groups.get_mut(&name).ok_or("no such group")?.gid = gid;
            }
            "groupdel" => {
                db.groups.remove(&name).ok_or("no such group")?;
            }
            "useradd" | "usermod" => {
                let mut entry = match (tool, db.users.get(&name)) {
                    ("useradd", Some(_)) => {
                        return Err(format!("user '{name}' already exists").into());
                    }
                    ("useradd", None) => PasswdEntry {
                        name: name.clone(),
                        uid: id,
                        gid: id,
                        home: format!("/home/{name}"),
                        shell: "/bin/sh".into(),
                    },
                    (_, Some(u)) => u.clone(),
                    (_, None) => return Err(format!("user '{name}' does not exist").into()),
                };
                if let Some(u) = opt("--uid") {
                    entry.uid = u.parse().unwrap();
                }
                if args.iter().any(|a| a == "--user-group") {
                    db.groups.insert(
                        name.clone(),
                        GroupEntry {
                            name: name.clone(),
                            gid: entry.uid,
                            members: vec![],
                        },
                    );
                    entry.gid = entry.uid;
                }
                if let Some(g) = opt("--gid") {
                    entry.gid = gid_of(&db, &g)?;
                }
                if let Some(h) = opt("--home-dir").or(opt("--home")) {
                    entry.home = h;
                }
                if let Some(s) = opt("--shell") {
                    entry.shell = s;
                }
                if let Some(groups) = opt("--groups") {
                    let want: Vec<&str> = groups.split(',').filter(|g| !g.is_empty()).collect();
                    for g in &want {
                        gid_of(&db, g)?;
                    }
                    for g in db.groups.values_mut() {
                        g.members.retain(|m| m != &name);
                        if want.contains(&g.name.as_str()) {
                            g.members.push(name.clone());
                        }
                    }
                }
                db.users.insert(name, entry);
            }
            "userdel" => {
                db.users.remove(&name).ok_or("no such user")?;
            }
            other => return Err(format!("unknown tool {other}").into()),
        }
        Ok(())
    }

    fn lookup(&self) -> Box<dyn super::accounts::Accounts + '_> {
        Box::new(DbAccounts(self.db.borrow().clone()))
    }
}

/// Names and ids from an `AccountDb`, for owners in unit tests.
pub struct DbAccounts(pub super::user::AccountDb);

impl super::accounts::Accounts for DbAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        self.0.users.get(name).map(|u| u.uid)
    }
    fn gid(&self, name: &str) -> Option<u32> {
        self.0.groups.get(name).map(|g| g.gid)
    }
    fn user_name(&self, uid: u32) -> String {
        self.0
            .users
            .values()
            .find(|u| u.uid == uid)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }
    fn group_name(&self, gid: u32) -> String {
        self.0.group_name(gid)
    }
}
