//! Users and groups: names in the spec, ids on disk.
//!
//! Lookups go through the host's NSS (`getpwnam`, `getgrnam`) once per name
//! and are cached, so ten thousand files owned by `root` cost one lookup.

use std::cell::RefCell;
use std::collections::HashMap;

/// Resolves user and group names and ids.
pub trait Accounts {
    fn uid(&self, name: &str) -> Option<u32>;
    fn gid(&self, name: &str) -> Option<u32>;
    /// A user's name, or the id as text when it has none.
    fn user_name(&self, uid: u32) -> String;
    fn group_name(&self, gid: u32) -> String;
}

/// Owner, group and mode as declared, with names resolved to ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedMeta {
    pub owner: Option<(String, u32)>,
    pub group: Option<(String, u32)>,
    pub mode: Option<u32>,
}

impl WantedMeta {
    /// Resolves declared names; an unknown user or group is an error.
    pub fn resolve(
        owner: Option<&str>,
        group: Option<&str>,
        mode: Option<u32>,
        accounts: &dyn Accounts,
    ) -> Result<WantedMeta, String> {
        let owner = match owner {
            Some(name) => Some((
                name.to_string(),
                numeric_or(name, |n| accounts.uid(n))
                    .ok_or_else(|| format!("owner '{name}' does not exist"))?,
            )),
            None => None,
        };
        let group = match group {
            Some(name) => Some((
                name.to_string(),
                numeric_or(name, |n| accounts.gid(n))
                    .ok_or_else(|| format!("group '{name}' does not exist"))?,
            )),
            None => None,
        };
        Ok(WantedMeta { owner, group, mode })
    }

    pub fn uid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.1)
    }

    pub fn gid(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.1)
    }
}

fn numeric_or(name: &str, lookup: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse().ok();
    }
    lookup(name)
}

/// The host's users and groups, cached.
#[derive(Default)]
pub struct SystemAccounts {
    users: RefCell<HashMap<String, Option<u32>>>,
    groups: RefCell<HashMap<String, Option<u32>>>,
    user_names: RefCell<HashMap<u32, String>>,
    group_names: RefCell<HashMap<u32, String>>,
}

impl Accounts for SystemAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        *self
            .users
            .borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| {
                nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            })
    }

    fn gid(&self, name: &str) -> Option<u32> {
        *self
            .groups
            .borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| {
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            })
    }

    fn user_name(&self, uid: u32) -> String {
        self.user_names
            .borrow_mut()
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone()
    }

    fn group_name(&self, gid: u32) -> String {
        self.group_names
            .borrow_mut()
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| gid.to_string())
            })
            .clone()
    }
}

/// The users and groups of a managed root other than `/`, from its own
/// `etc/passwd` and `etc/group`: under `--root` an owner names a user of
/// the image being built, not of the machine building it.
pub struct RootAccounts {
    db: super::user::AccountDb,
}

impl RootAccounts {
    pub fn new(db: super::user::AccountDb) -> RootAccounts {
        RootAccounts { db }
    }
}

impl Accounts for RootAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        self.db.users.get(name).map(|u| u.uid)
    }
    fn gid(&self, name: &str) -> Option<u32> {
        self.db.groups.get(name).map(|g| g.gid)
    }
    fn user_name(&self, uid: u32) -> String {
        self.db
            .users
            .values()
            .find(|u| u.uid == uid)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }
    fn group_name(&self, gid: u32) -> String {
        self.db.group_name(gid)
    }
}

/// Where owners resolve for a run converging `root`: the machine's NSS for
/// `/`; the root's own `etc/passwd` and `etc/group` when it has them. A
/// scratch root without account databases (a few files for a test or an
/// image stage) resolves against the machine, as before.
pub fn for_root(root: &std::path::Path) -> Result<Box<dyn Accounts>, String> {
    let passwd = crate::safe_fs::join_root(root, std::path::Path::new(super::user::PASSWD_PATH));
    if root == std::path::Path::new("/") || !passwd.exists() {
        return Ok(Box::new(SystemAccounts::default()));
    }
    let users = super::user::read_passwd(root)?;
    let group = crate::safe_fs::join_root(root, std::path::Path::new(super::group::GROUP_PATH));
    let groups = if group.exists() {
        super::group::read_groups(root)?
    } else {
        Vec::new()
    };
    Ok(Box::new(RootAccounts::new(
        super::user::AccountDb::from_entries(users, groups),
    )))
}

/// Fixed users and groups, for unit tests of the pure core.
#[cfg(test)]
pub struct FakeAccounts;

#[cfg(test)]
impl Accounts for FakeAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "app" => Some(1000),
            _ => None,
        }
    }
    fn gid(&self, name: &str) -> Option<u32> {
        self.uid(name)
    }
    fn user_name(&self, uid: u32) -> String {
        match uid {
            0 => "root".into(),
            1000 => "app".into(),
            n => n.to_string(),
        }
    }
    fn group_name(&self, gid: u32) -> String {
        self.user_name(gid)
    }
}
