//! Users: `/etc/passwd` (and the memberships in `/etc/group`) under the
//! managed root, parsed, compared with `users:`, and changed with the
//! system's own `useradd`, `usermod` and `userdel`, which keep shadow,
//! locking and nscd in step. Under a root other than `/` the tools get
//! `--prefix ROOT`.
//!
//! Passwords are never managed: `useradd` leaves a new user locked (`!` in
//! `/etc/shadow`), and nothing here reads or writes a password. A user's
//! `authorized_keys` are written by trueup itself (through `safe_fs`), owned
//! by the user, 0600, in `~/.ssh` (0700).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::accounts::Accounts;
use super::group::{AccountParseError, GroupEntry, parse_id, skipped_line};
use super::node::NodeObservation;
use super::{Attribute, BackendError, Drift};
use crate::desired::UserSpec;

/// Where the user database lives, under the root.
pub const PASSWD_PATH: &str = "/etc/passwd";

/// Mode of a written `authorized_keys` and of the `~/.ssh` holding it.
pub const KEYS_MODE: u32 = 0o600;
pub const SSH_DIR_MODE: u32 = 0o700;

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Parses `/etc/passwd`. Blank lines, comments and NIS compat lines are
/// skipped, as glibc does.
pub fn parse_passwd(text: &str) -> Result<Vec<PasswdEntry>, AccountParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if skipped_line(line) {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            return Err(AccountParseError::Fields {
                line: line_no,
                expected: 7,
                found: f.len(),
            });
        }
        out.push(PasswdEntry {
            name: f[0].to_string(),
            uid: parse_id(f[2], line_no, "uid")?,
            gid: parse_id(f[3], line_no, "gid")?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        });
    }
    Ok(out)
}

/// The users and groups of the managed root, as its databases list them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountDb {
    pub users: BTreeMap<String, PasswdEntry>,
    pub groups: BTreeMap<String, GroupEntry>,
}

impl AccountDb {
    pub fn from_entries(users: Vec<PasswdEntry>, groups: Vec<GroupEntry>) -> AccountDb {
        AccountDb {
            // The first entry of a name wins, as in glibc.
            users: users
                .into_iter()
                .rev()
                .map(|u| (u.name.clone(), u))
                .collect(),
            groups: groups
                .into_iter()
                .rev()
                .map(|g| (g.name.clone(), g))
                .collect(),
        }
    }

    /// A group's name, or its id as text when it has none.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups
            .values()
            .find(|g| g.gid == gid)
            .map(|g| g.name.clone())
            .unwrap_or_else(|| gid.to_string())
    }

    /// The supplementary groups `user` is listed in, sorted.
    pub fn memberships(&self, user: &str) -> Vec<String> {
        self.groups
            .values()
            .filter(|g| g.members.iter().any(|m| m == user))
            .map(|g| g.name.clone())
            .collect()
    }
}

/// Reads the account databases under the root and changes them with the
/// system's tools; a stand-in answers from memory in unit tests.
pub trait AccountControl {
    /// `/etc/passwd` and `/etc/group`, parsed.
    fn observe(&self) -> Result<AccountDb, BackendError>;
    /// Runs `tool` (`useradd`, `groupdel`, ...) with `args`.
    fn run_tool(&self, tool: &str, args: &[String]) -> Result<(), BackendError>;
    /// Names to ids for owners, looked up afresh (nothing cached from
    /// before a user or group was created).
    fn lookup(&self) -> Box<dyn Accounts + '_>;
}

/// The real account databases, changed by shadow-utils.
pub struct ShadowUtils {
    root: PathBuf,
}

impl ShadowUtils {
    pub fn new(root: &Path) -> ShadowUtils {
        ShadowUtils { root: root.into() }
    }
}

/// Reads and parses `<root>/etc/passwd`.
pub fn read_passwd(root: &Path) -> Result<Vec<PasswdEntry>, String> {
    let path = crate::safe_fs::join_root(root, Path::new(PASSWD_PATH));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_passwd(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl AccountControl for ShadowUtils {
    fn observe(&self) -> Result<AccountDb, BackendError> {
        // The files are replaced by a rename: what does not read or parse
        // stays so.
        Ok(AccountDb::from_entries(
            read_passwd(&self.root)?,
            super::group::read_groups(&self.root)?,
        ))
    }

    fn run_tool(&self, tool: &str, args: &[String]) -> Result<(), BackendError> {
        let mut cmd = std::process::Command::new(tool);
        if self.root != Path::new("/") {
            cmd.arg("--prefix").arg(&self.root);
        }
        cmd.args(args);
        super::tool::run(&mut cmd)?;
        Ok(())
    }

    fn lookup(&self) -> Box<dyn Accounts + '_> {
        // The same resolution as the plan's (`accounts::for_root`); a root
        // whose databases no longer read leaves its owners unresolved, and
        // those nodes fail alone.
        super::accounts::for_root(&self.root).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the account databases again");
            Box::new(super::accounts::RootAccounts::new(AccountDb::default()))
        })
    }
}

/// What the account tools must do for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    Create(Vec<String>),
    Modify(Vec<String>),
    Remove,
}

/// What converging one user takes: the account, then its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAction {
    pub account: Option<AccountChange>,
    /// Write `~/.ssh/authorized_keys` (after the account exists).
    pub write_keys: bool,
}

impl UserAction {
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        match &self.account {
            Some(AccountChange::Create(_)) => words.push("create"),
            Some(AccountChange::Modify(_)) => words.push("modify"),
            Some(AccountChange::Remove) => words.push("remove"),
            None => {}
        }
        if self.write_keys {
            words.push("write authorized_keys");
        }
        words.join(", ")
    }

    /// The tool and its arguments for the account change, if any.
    pub fn tool(&self, name: &str) -> Option<(&'static str, Vec<String>)> {
        let with_name = |mut a: Vec<String>| {
            a.extend(["--".into(), name.into()]);
            a
        };
        match self.account.as_ref()? {
            AccountChange::Create(a) => Some(("useradd", with_name(a.clone()))),
            AccountChange::Modify(a) => Some(("usermod", with_name(a.clone()))),
            AccountChange::Remove => Some(("userdel", with_name(vec![]))),
        }
    }
}

/// The `authorized_keys` content declared for a user.
pub fn keys_content(keys: &[String]) -> Vec<u8> {
    let mut s = String::new();
    for k in keys {
        s.push_str(k);
        s.push('\n');
    }
    s.into_bytes()
}

/// Where a user's keys live: `<home>/.ssh/authorized_keys`.
pub fn keys_path(home: &str) -> PathBuf {
    Path::new(home).join(".ssh").join("authorized_keys")
}

/// The home a user has or will have: declared, else the database's.
pub fn home_of(spec: &UserSpec, have: Option<&PasswdEntry>) -> Option<String> {
    spec.home
        .as_ref()
        .map(|h| h.display().to_string())
        .or_else(|| have.map(|u| u.home.clone()))
}

/// Compares a declared user with the databases and its keys file.
///
/// `group_exists` says whether a group named like the user exists or is
/// declared: `useradd` then joins it instead of creating it.
pub fn diff(
    name: &str,
    spec: &UserSpec,
    db: &AccountDb,
    keys: Option<&NodeObservation>,
    group_exists: bool,
) -> (Vec<Drift>, Option<UserAction>) {
    let have = db.users.get(name);
    let mut drift = Vec::new();
    if !spec.present {
        return match have {
            None => (drift, None),
            Some(_) => {
                drift.push(Drift::new(Attribute::Presence, "absent", "present"));
                (
                    drift,
                    Some(UserAction {
                        account: Some(AccountChange::Remove),
                        write_keys: false,
                    }),
                )
            }
        };
    }
    let account = match have {
        None => {
            drift.push(Drift::new(Attribute::Presence, "present", "absent"));
            Some(AccountChange::Create(create_args(name, spec, group_exists)))
        }
        Some(u) => {
            let args = modify_args(spec, u, db, &mut drift);
            (!args.is_empty()).then_some(AccountChange::Modify(args))
        }
    };
    let mut write_keys = false;
    if let Some(want) = &spec.authorized_keys {
        let want = keys_content(want);
        let uid = spec.uid.or(have.map(|u| u.uid));
        match keys {
            _ if have.is_none() => write_keys = true,
            Some(NodeObservation::File { meta, content }) => {
                if content.as_deref() != Some(&want[..]) {
                    let mut d = Drift::new(
                        Attribute::AuthorizedKeys,
                        super::file::summary(&want),
                        content
                            .as_deref()
                            .map(super::file::summary)
                            .unwrap_or_else(|| "(too large to read)".into()),
                    );
                    if let Some(c) = content {
                        d.diff = super::file::unified_diff(Path::new("authorized_keys"), c, &want);
                    }
                    drift.push(d);
                    write_keys = true;
                } else if meta.mode != KEYS_MODE || uid.is_some_and(|u| u != meta.uid) {
                    drift.push(Drift::new(
                        Attribute::AuthorizedKeys,
                        format!(
                            "owned by {name}, {}",
                            crate::desired::format_mode(KEYS_MODE)
                        ),
                        format!(
                            "uid {}, {}",
                            meta.uid,
                            crate::desired::format_mode(meta.mode)
                        ),
                    ));
                    write_keys = true;
                }
            }
            other => {
                drift.push(Drift::new(
                    Attribute::AuthorizedKeys,
                    super::file::summary(&want),
                    other
                        .map(NodeObservation::describe)
                        .unwrap_or_else(|| "absent".into()),
                ));
                write_keys = true;
            }
        }
    }
    let action = (account.is_some() || write_keys).then_some(UserAction {
        account,
        write_keys,
    });
    (drift, action)
}

fn create_args(name: &str, spec: &UserSpec, group_exists: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(uid) = spec.uid {
        a.extend(["--uid".into(), uid.to_string()]);
    }
    match &spec.group {
        Some(g) => a.extend(["--gid".into(), g.clone()]),
        // useradd refuses to create a user group that exists already.
        None if group_exists => a.extend(["--gid".into(), name.to_string()]),
        None => a.push("--user-group".into()),
    }
    if let Some(groups) = &spec.groups
        && !groups.is_empty()
    {
        a.extend(["--groups".into(), groups.join(",")]);
    }
    if let Some(home) = &spec.home {
        a.extend([
            "--home-dir".into(),
            home.display().to_string(),
            "--create-home".into(),
        ]);
    } else if spec.authorized_keys.is_some() {
        a.push("--create-home".into());
    } else {
        a.push("--no-create-home".into());
    }
    if let Some(shell) = &spec.shell {
        a.extend(["--shell".into(), shell.clone()]);
    }
    if spec.system {
        a.push("--system".into());
    }
    a
}

fn modify_args(
    spec: &UserSpec,
    have: &PasswdEntry,
    db: &AccountDb,
    drift: &mut Vec<Drift>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(uid) = spec.uid
        && uid != have.uid
    {
        drift.push(Drift::new(
            Attribute::Uid,
            uid.to_string(),
            have.uid.to_string(),
        ));
        a.extend(["--uid".into(), uid.to_string()]);
    }
    if let Some(g) = &spec.group {
        let current = db.group_name(have.gid);
        let same = &current == g || g.parse::<u32>().ok() == Some(have.gid);
        if !same {
            drift.push(Drift::new(Attribute::Group, g.clone(), current));
            a.extend(["--gid".into(), g.clone()]);
        }
    }
    if let Some(want) = &spec.groups {
        let have_groups = db.memberships(&have.name);
        let mut want_sorted = want.clone();
        want_sorted.sort();
        want_sorted.dedup();
        if want_sorted != have_groups {
            drift.push(Drift::new(
                Attribute::Groups,
                want_sorted.join(","),
                have_groups.join(","),
            ));
            a.extend(["--groups".into(), want_sorted.join(",")]);
        }
    }
    if let Some(home) = &spec.home {
        let home = home.display().to_string();
        if home != have.home {
            drift.push(Drift::new(Attribute::Home, home.clone(), have.home.clone()));
            a.extend(["--home".into(), home, "--move-home".into()]);
        }
    }
    if let Some(shell) = &spec.shell
        && shell != &have.shell
    {
        drift.push(Drift::new(
            Attribute::Shell,
            shell.clone(),
            have.shell.clone(),
        ));
        a.extend(["--shell".into(), shell.clone()]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::group::parse_group;
    use crate::resource::node::Meta;

    /// `/etc/passwd` of the same machine and prefix as the group fixture
    /// (see `group::tests::CAPTURED`).
    const CAPTURED: &str = include_str!("../../tests/fixtures/accounts/passwd");
    const GROUPS: &str = include_str!("../../tests/fixtures/accounts/group");

    fn db() -> AccountDb {
        AccountDb::from_entries(
            parse_passwd(CAPTURED).unwrap(),
            parse_group(GROUPS).unwrap(),
        )
    }

    fn app() -> UserSpec {
        UserSpec {
            present: true,
            uid: Some(990),
            group: Some("app".into()),
            groups: None,
            home: Some("/srv/app".into()),
            shell: Some("/usr/sbin/nologin".into()),
            system: true,
            authorized_keys: None,
        }
    }

    #[test]
    fn parses_a_captured_passwd_file() {
        let db = db();
        let root = &db.users["root"];
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.home, "/root");
        assert_eq!(root.shell, "/bin/bash");
        let pg = &db.users["postgres"];
        assert_eq!(pg.home, "/var/lib/postgresql");
        assert_eq!(db.users["app"].uid, 990);
        assert_eq!(db.users["uuidd"].home, "/run/uuidd");
        assert_eq!(db.memberships("ops"), ["adm", "sudo"]);
        assert_eq!(db.group_name(990), "app");
        assert_eq!(db.group_name(424242), "424242");
    }

    #[test]
    fn bad_passwd_line_names_its_line() {
        let err = parse_passwd("root:x:0:0:root:/root:/bin/bash\nx:x:1:1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected 7 ':'-separated fields, found 4"
        );
        let err = parse_passwd("x:x:-1:0::/:/bin/sh\n").unwrap_err();
        assert!(err.to_string().contains("uid \"-1\""), "{err}");
    }

    #[test]
    fn a_user_as_created_is_in_sync() {
        assert_eq!(diff("app", &app(), &db(), None, true), (vec![], None));
    }

    #[test]
    fn a_missing_user_is_created_with_everything_declared() {
        let mut spec = app();
        spec.groups = Some(vec!["adm".into()]);
        let (d, a) = diff("svc", &spec, &db(), None, false);
        assert_eq!(d, [Drift::new(Attribute::Presence, "present", "absent")]);
        let a = a.unwrap();
        assert_eq!(
            a.tool("svc").unwrap(),
            (
                "useradd",
                [
                    "--uid",
                    "990",
                    "--gid",
                    "app",
                    "--groups",
                    "adm",
                    "--home-dir",
                    "/srv/app",
                    "--create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--system",
                    "--",
                    "svc"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert!(!a.write_keys);
    }

    #[test]
    fn drift_in_each_attribute_becomes_one_usermod() {
        let spec = UserSpec {
            present: true,
            uid: Some(1001),
            group: Some("ops".into()),
            groups: Some(vec!["sudo".into()]),
            home: Some("/home/ops".into()),
            shell: Some("/usr/sbin/nologin".into()),
            system: false,
            authorized_keys: None,
        };
        let (d, a) = diff("ops", &spec, &db(), None, true);
        let attrs: Vec<_> = d.iter().map(|d| d.attribute).collect();
        assert_eq!(attrs, [Attribute::Groups, Attribute::Shell]);
        assert_eq!(d[0].expected, "sudo");
        assert_eq!(d[0].actual, "adm,sudo");
        assert_eq!(
            a.unwrap().tool("ops").unwrap().1,
            [
                "--groups",
                "sudo",
                "--shell",
                "/usr/sbin/nologin",
                "--",
                "ops"
            ]
        );
    }

    #[test]
    fn keys_are_compared_by_content_mode_and_owner() {
        let mut spec = app();
        spec.authorized_keys = Some(vec!["ssh-ed25519 AAAA ops@example.com".into()]);
        let want = keys_content(spec.authorized_keys.as_deref().unwrap());
        let file = |content: &[u8], uid, mode| NodeObservation::File {
            meta: Meta {
                uid,
                gid: 990,
                mode,
            },
            content: Some(content.to_vec().into()),
        };
        let in_sync = file(&want, 990, 0o600);
        assert_eq!(
            diff("app", &spec, &db(), Some(&in_sync), true),
            (vec![], None)
        );
        let edited = file(b"ssh-rsa BBBB intruder\n", 990, 0o600);
        let (d, a) = diff("app", &spec, &db(), Some(&edited), true);
        assert_eq!(d[0].attribute, Attribute::AuthorizedKeys);
        assert!(
            d[0].diff.as_deref().unwrap().contains("+ssh-ed25519"),
            "{d:?}"
        );
        assert_eq!(
            a,
            Some(UserAction {
                account: None,
                write_keys: true
            })
        );
        let loose = file(&want, 990, 0o644);
        assert!(
            diff("app", &spec, &db(), Some(&loose), true)
                .1
                .unwrap()
                .write_keys
        );
        let (d, _) = diff("app", &spec, &db(), Some(&NodeObservation::Missing), true);
        assert_eq!(d[0].actual, "absent");
    }

    #[test]
    fn absent_user_is_removed_and_never_others() {
        let gone = UserSpec {
            present: false,
            ..UserSpec::default()
        };
        let (d, a) = diff("ops", &gone, &db(), None, true);
        assert_eq!(d[0].expected, "absent");
        assert_eq!(
            a.unwrap().tool("ops").unwrap(),
            ("userdel", vec!["--".to_string(), "ops".into()])
        );
        assert_eq!(
            diff("nobody-here", &gone, &db(), None, false),
            (vec![], None)
        );
    }

    #[test]
    fn a_user_without_group_gets_its_own_unless_it_exists() {
        let spec = UserSpec {
            present: true,
            ..UserSpec::default()
        };
        let (_, a) = diff("new", &spec, &db(), None, false);
        let args = a.unwrap().tool("new").unwrap().1;
        assert!(args.contains(&"--user-group".to_string()), "{args:?}");
        let (_, a) = diff("new", &spec, &db(), None, true);
        let args = a.unwrap().tool("new").unwrap().1;
        assert_eq!(args[..2], ["--gid", "new"]);
    }
}
