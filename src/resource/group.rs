//! Groups: `/etc/group` under the managed root, parsed, compared with
//! `groups:`, and changed with the system's own `groupadd`, `groupmod` and
//! `groupdel` (which keep `/etc/gshadow` and nscd in step).
//!
//! Members are not managed here: a user's `groups:` says which
//! supplementary groups it is in (see `user`).

use std::path::Path;

use super::{Attribute, Drift};
use crate::desired::GroupSpec;

/// Where the group database lives, under the root.
pub const GROUP_PATH: &str = "/etc/group";

/// One line of `/etc/group`: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// What is wrong with a line of an account database (`/etc/group`,
/// `/etc/passwd`), and where (1-based line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountParseError {
    #[error("line {line}: expected {expected} ':'-separated fields, found {found}")]
    Fields {
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: {field} {value:?} is not a number")]
    BadId {
        line: usize,
        field: &'static str,
        value: String,
    },
}

/// Parses `/etc/group`. Blank lines, comments and NIS compat lines (`+`,
/// `-`) are skipped, as glibc does.
pub fn parse_group(text: &str) -> Result<Vec<GroupEntry>, AccountParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if skipped_line(line) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != 4 {
            return Err(AccountParseError::Fields {
                line: line_no,
                expected: 4,
                found: fields.len(),
            });
        }
        out.push(GroupEntry {
            name: fields[0].to_string(),
            gid: parse_id(fields[2], line_no, "gid")?,
            members: fields[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(out)
}

/// Lines glibc's files backend does not read as entries.
pub(crate) fn skipped_line(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with('#') || line.starts_with(['+', '-'])
}

pub(crate) fn parse_id(
    value: &str,
    line: usize,
    field: &'static str,
) -> Result<u32, AccountParseError> {
    value.parse().map_err(|_| AccountParseError::BadId {
        line,
        field,
        value: value.to_string(),
    })
}

/// What converging one group takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    Create { gid: Option<u32>, system: bool },
    SetGid(u32),
    Remove,
}

impl GroupAction {
    pub fn describe(&self) -> String {
        match self {
            GroupAction::Create { .. } => "create".into(),
            GroupAction::SetGid(_) => "set gid".into(),
            GroupAction::Remove => "remove".into(),
        }
    }

    /// The tool's arguments (after the program and any `--prefix`).
    pub fn args(&self, name: &str) -> (&'static str, Vec<String>) {
        match self {
            GroupAction::Create { gid, system } => {
                let mut a = Vec::new();
                if let Some(g) = gid {
                    a.extend(["--gid".into(), g.to_string()]);
                }
                if *system {
                    a.push("--system".into());
                }
                a.extend(["--".into(), name.into()]);
                ("groupadd", a)
            }
            GroupAction::SetGid(g) => (
                "groupmod",
                vec!["--gid".into(), g.to_string(), "--".into(), name.into()],
            ),
            GroupAction::Remove => ("groupdel", vec!["--".into(), name.into()]),
        }
    }
}

/// Compares a declared group with the database entry (if any).
pub fn diff(spec: &GroupSpec, have: Option<&GroupEntry>) -> (Vec<Drift>, Option<GroupAction>) {
    match (spec.present, have) {
        (false, None) => (vec![], None),
        (false, Some(_)) => (
            vec![Drift::new(Attribute::Presence, "absent", "present")],
            Some(GroupAction::Remove),
        ),
        (true, None) => (
            vec![Drift::new(Attribute::Presence, "present", "absent")],
            Some(GroupAction::Create {
                gid: spec.gid,
                system: spec.system,
            }),
        ),
        (true, Some(g)) => match spec.gid {
            Some(want) if want != g.gid => (
                vec![Drift::new(
                    Attribute::Gid,
                    want.to_string(),
                    g.gid.to_string(),
                )],
                Some(GroupAction::SetGid(want)),
            ),
            _ => (vec![], None),
        },
    }
}

/// Reads and parses `<root>/etc/group`.
pub fn read_groups(root: &Path) -> Result<Vec<GroupEntry>, String> {
    let path = crate::safe_fs::join_root(root, Path::new(GROUP_PATH));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_group(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/etc/group` of a Debian 12 machine (postgresql installed), copied
    /// to a prefix P, after the real tools ran there:
    /// `groupadd --prefix P --gid 990 --system app`,
    /// `useradd --prefix P --uid 990 --gid app --home-dir /srv/app --system app`,
    /// `useradd --prefix P --groups adm,sudo --shell /bin/bash ops`,
    /// `useradd --prefix P --system --home-dir /run/uuidd --user-group uuidd`.
    const CAPTURED: &str = include_str!("../../tests/fixtures/accounts/group");

    #[test]
    fn parses_a_captured_group_file() {
        let groups = parse_group(CAPTURED).unwrap();
        let by = |n: &str| groups.iter().find(|g| g.name == n).unwrap();
        assert_eq!(by("root").gid, 0);
        assert!(by("root").members.is_empty());
        assert_eq!(by("uuidd").gid, 995);
        assert_eq!(by("ssl-cert").members, ["postgres"]);
        assert_eq!(by("app").gid, 990);
        assert_eq!(by("adm").members, ["ops"]);
        assert_eq!(by("sudo").members, ["ops"]);
        assert!(groups.iter().all(|g| !g.name.is_empty()));
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            parse_group("root:x:0:\nbroken:x:1\n").unwrap_err(),
            AccountParseError::Fields {
                line: 2,
                expected: 4,
                found: 3
            }
        );
        assert!(
            parse_group("# c\n\n+nis\nx:x:zz:\n")
                .unwrap_err()
                .to_string()
                .starts_with("line 4: gid \"zz\"")
        );
    }

    #[test]
    fn diff_creates_changes_gid_and_removes() {
        let spec = |present, gid| GroupSpec {
            present,
            gid,
            system: true,
        };
        let have = GroupEntry {
            name: "app".into(),
            gid: 990,
            members: vec![],
        };
        let (d, a) = diff(&spec(true, Some(990)), None);
        assert_eq!(d[0].attribute, Attribute::Presence);
        assert_eq!(
            a,
            Some(GroupAction::Create {
                gid: Some(990),
                system: true
            })
        );
        assert_eq!(diff(&spec(true, Some(990)), Some(&have)), (vec![], None));
        assert_eq!(diff(&spec(true, None), Some(&have)), (vec![], None));
        let (d, a) = diff(&spec(true, Some(991)), Some(&have));
        assert_eq!(d, [Drift::new(Attribute::Gid, "991", "990")]);
        assert_eq!(a, Some(GroupAction::SetGid(991)));
        assert_eq!(
            diff(&spec(false, None), Some(&have)).1,
            Some(GroupAction::Remove)
        );
        assert_eq!(diff(&spec(false, None), None), (vec![], None));
    }

    #[test]
    fn tool_arguments_end_options_before_the_name() {
        let (tool, args) = GroupAction::Create {
            gid: Some(5),
            system: true,
        }
        .args("app");
        assert_eq!(tool, "groupadd");
        assert_eq!(args, ["--gid", "5", "--system", "--", "app"]);
        assert_eq!(GroupAction::Remove.args("app").1, ["--", "app"]);
    }
}
