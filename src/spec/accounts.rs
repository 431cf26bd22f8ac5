//! The branch's `groups:` and `users:` keys: their raw schema and their
//! validation into `GroupSpec` and `UserSpec`.
//!
//! ```yaml
//! groups:
//!   app: { gid: 990, system: true }
//! users:
//!   app:
//!     uid: 990
//!     group: app
//!     groups: [adm]                 # supplementary; exactly these
//!     home: /srv/app
//!     shell: /usr/sbin/nologin
//!     system: true
//!     authorized_keys:
//!       - ssh-ed25519 AAAA... ops@example.com
//!   olduser: { state: absent }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::schema::{IdName, RawPresence};
use super::{Builder, Located, normalize_host_path};
use crate::desired::{GroupSpec, UserSpec};

/// A group as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub gid: Option<Spanned<IdName>>,
    pub system: Option<bool>,
    pub state: Option<RawPresence>,
}

/// A user as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub uid: Option<Spanned<IdName>>,
    pub group: Option<Spanned<IdName>>,
    pub groups: Option<Vec<Spanned<String>>>,
    pub home: Option<Spanned<String>>,
    pub shell: Option<Spanned<String>>,
    pub system: Option<bool>,
    pub authorized_keys: Option<Vec<Spanned<String>>>,
    pub state: Option<RawPresence>,
}

/// Whether `name` is a user or group name the shadow tools accept without
/// `--badname`: a lowercase letter or `_` first, then lowercase letters,
/// digits, `_`, `-` or `.`, an optional final `$`, at most 32 bytes.
pub fn valid_account_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut bytes = body.bytes();
    name.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

impl Builder<'_> {
    /// An id written as a number (a name is refused here).
    fn account_id(
        &mut self,
        loc: &Located<impl Sized>,
        v: Option<&Spanned<IdName>>,
        id: &str,
        field: &str,
    ) -> Result<Option<u32>, ()> {
        let Some(v) = v else { return Ok(None) };
        match v.value.0.parse::<u32>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                self.error_at(
                    loc,
                    v,
                    id,
                    format!(
                        "{field}: '{}' is not a number from 0 to {}",
                        v.value.0,
                        u32::MAX
                    ),
                );
                Err(())
            }
        }
    }

    pub(super) fn group(
        &mut self,
        loc: &Located<RawGroup>,
        name: &str,
        id: &str,
    ) -> Option<GroupSpec> {
        let raw = &loc.value.value;
        if !valid_account_name(name) {
            self.error(loc, id, format!("'{name}' is not a valid group name (lowercase letters, digits, '_', '-', '.'; a letter or '_' first; at most 32)"));
            return None;
        }
        let present = raw.state != Some(RawPresence::Absent);
        if !present && (raw.gid.is_some() || raw.system.is_some()) {
            self.error(
                loc,
                id,
                "a group with state: absent takes no gid or system".into(),
            );
            return None;
        }
        let gid = self.account_id(loc, raw.gid.as_ref(), id, "gid").ok()?;
        Some(GroupSpec {
            present,
            gid,
            system: raw.system.unwrap_or(false),
        })
    }

    pub(super) fn user(
        &mut self,
        loc: &Located<RawUser>,
        name: &str,
        id: &str,
    ) -> Option<UserSpec> {
        let raw = &loc.value.value;
        if !valid_account_name(name) {
            self.error(loc, id, format!("'{name}' is not a valid user name (lowercase letters, digits, '_', '-', '.'; a letter or '_' first; at most 32)"));
            return None;
        }
        if raw.state == Some(RawPresence::Absent) {
            let others = raw.uid.is_some()
                || raw.group.is_some()
                || raw.groups.is_some()
                || raw.home.is_some()
                || raw.shell.is_some()
                || raw.system.is_some()
                || raw.authorized_keys.is_some();
            if others {
                self.error(
                    loc,
                    id,
                    "a user with state: absent takes no other key".into(),
                );
                return None;
            }
            return Some(UserSpec::default());
        }
        let mut ok = true;
        let uid = self.account_id(loc, raw.uid.as_ref(), id, "uid");
        let group = match &raw.group {
            Some(g) if !valid_account_name(&g.value.0) && g.value.0.parse::<u32>().is_err() => {
                self.error_at(
                    loc,
                    g,
                    id,
                    format!("group: '{}' is not a valid group name", g.value.0),
                );
                ok = false;
                None
            }
            g => g.as_ref().map(|g| g.value.0.clone()),
        };
        let groups = raw.groups.as_ref().map(|list| {
            let mut names: Vec<String> = Vec::new();
            for g in list {
                if valid_account_name(&g.value) {
                    names.push(g.value.clone());
                } else {
                    self.error_at(
                        loc,
                        g,
                        id,
                        format!("groups: '{}' is not a valid group name", g.value),
                    );
                    ok = false;
                }
            }
            names.sort();
            names.dedup();
            names
        });
        let home = match &raw.home {
            Some(h) => match normalize_host_path(&h.value) {
                Ok(p) => Some(p),
                Err(m) => {
                    self.error_at(loc, h, id, format!("home: {m}"));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let shell = match &raw.shell {
            Some(s) if !s.value.starts_with('/') || s.value.contains([':', '\n', '\0']) => {
                self.error_at(
                    loc,
                    s,
                    id,
                    format!("shell: '{}' is not an absolute path", s.value),
                );
                ok = false;
                None
            }
            s => s.as_ref().map(|s| s.value.clone()),
        };
        let authorized_keys = match &raw.authorized_keys {
            Some(list) => {
                let mut keys = Vec::new();
                for k in list {
                    let Some(line) = self.render_string(&loc.file, k, id, "authorized_keys") else {
                        ok = false;
                        continue;
                    };
                    let line = line.trim().to_string();
                    if line.is_empty() || line.contains(['\n', '\r', '\0']) {
                        self.error_at(
                            loc,
                            k,
                            id,
                            "authorized_keys: a key is one non-empty line".into(),
                        );
                        ok = false;
                    } else {
                        keys.push(line);
                    }
                }
                Some(keys)
            }
            None => None,
        };
        let uid = uid.ok()?;
        if !ok {
            return None;
        }
        Some(UserSpec {
            present: true,
            uid,
            group,
            groups,
            home,
            shell,
            system: raw.system.unwrap_or(false),
            authorized_keys,
        })
    }

    /// A user's `group:` or `groups:` naming a group this branch removes.
    pub(super) fn check_user_groups(
        &mut self,
        users: &BTreeMap<String, UserSpec>,
        groups: &BTreeMap<String, GroupSpec>,
    ) {
        for (name, u) in users {
            let named = u.group.iter().chain(u.groups.iter().flatten());
            for g in named {
                if groups.get(g).is_some_and(|s| !s.present) {
                    self.errors.push(super::SpecError {
                        file: super::ENTRY_FILE.into(),
                        line: 0,
                        column: 0,
                        resource: Some(format!("user {name}")),
                        message: format!("group '{g}' is declared absent"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for good in ["app", "_apt", "systemd-network", "a.b", "machine$", "u1"] {
            assert!(valid_account_name(good), "{good}");
        }
        for bad in [
            "",
            "App",
            "1app",
            "-x",
            "a b",
            "a:b",
            "x$y",
            &"a".repeat(33),
        ] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }
}
