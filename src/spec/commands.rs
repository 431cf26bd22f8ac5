//! The branch's `commands:` key, a file's `validate:` and the mapping form
//! of `notify:`: their raw schema and validation.
//!
//! ```yaml
//! commands:
//!   sysctl-reload:
//!     run: [sysctl, --system]
//!     on_change: [/etc/sysctl.d/90-app.conf]   # only in a run where one of these changed
//!   init-db:
//!     run: [/usr/local/bin/init-db]
//!     creates: /srv/app/db/.initialized        # skipped while this path exists
//!     user: app
//!     cwd: /srv/app
//!     env: { RAILS_ENV: production }
//!     timeout: 10m
//! files:
//!   /etc/sudoers.d/app:
//!     source: files/sudoers-app
//!     validate: [visudo, -cf, "{path}"]
//!   /etc/nginx/nginx.conf:
//!     template: templates/nginx.conf.hbs
//!     notify: { nginx.service: reload }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::accounts::valid_account_name;
use super::{Builder, Located, normalize_host_path};
use crate::desired::{CommandSpec, DesiredState, NotifyAction};
use crate::resource::command::DEFAULT_TIMEOUT_SECS;
use crate::resource::{Kind, ResourceId};

/// The longest timeout accepted for a command.
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// A command as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    pub run: Option<Vec<Spanned<String>>>,
    pub on_change: Option<Vec<Spanned<String>>>,
    pub creates: Option<Spanned<String>>,
    pub unless: Option<Vec<Spanned<String>>>,
    pub user: Option<Spanned<String>>,
    pub cwd: Option<Spanned<String>>,
    pub env: Option<BTreeMap<String, Spanned<String>>>,
    pub timeout: Option<Spanned<String>>,
    pub secret: Option<bool>,
}

/// `notify:` as written: a list of units (restarted, or `notify_action`)
/// or a mapping of unit to `restart` or `reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawNotify {
    List(Vec<String>),
    Map(BTreeMap<String, NotifyAction>),
}

impl<'de> Deserialize<'de> for RawNotify {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawNotify;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of units, or a mapping of unit to restart or reload")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawNotify, A::Error> {
                let mut out = Vec::new();
                while let Some(unit) = seq.next_element::<String>()? {
                    out.push(unit);
                }
                Ok(RawNotify::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawNotify, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((unit, action)) = map.next_entry::<String, NotifyAction>()? {
                    if out.insert(unit.clone(), action).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "unit '{unit}' is named twice"
                        )));
                    }
                }
                Ok(RawNotify::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Builder<'_> {
    /// Renders each argument of an argv list; `None` after an error.
    fn argv(
        &mut self,
        file: &Arc<str>,
        list: &[Spanned<String>],
        id: &str,
        field: &str,
    ) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for a in list {
            match self.render_string(file, a, id, field) {
                Some(s) if s.contains('\0') => {
                    self.errors.push(super::at(
                        file,
                        a,
                        Some(id),
                        format!("{field}: an argument holds a NUL byte"),
                    ));
                    ok = false;
                }
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A file's `validate:`: a command with `{path}` among its arguments.
    pub(super) fn validate(
        &mut self,
        file: &Arc<str>,
        v: Option<&Spanned<Vec<Spanned<String>>>>,
        id: &str,
    ) -> Result<Vec<String>, ()> {
        let Some(v) = v else { return Ok(vec![]) };
        let argv = self.argv(file, &v.value, id, "validate").ok_or(())?;
        let problem = match argv.split_first() {
            None => Some("validate: the command is empty"),
            Some((p, _)) if p.is_empty() => Some("validate: the program is empty"),
            Some((_, args)) if !args.iter().any(|a| a.contains("{path}")) => {
                Some("validate: no argument holds {path}, the temporary file with the new content")
            }
            _ => None,
        };
        match problem {
            Some(m) => {
                self.errors.push(super::at(file, v, Some(id), m.into()));
                Err(())
            }
            None => Ok(argv),
        }
    }

    /// A command, except `on_change` (resolved once every resource is
    /// known, by [`Builder::resolve_on_change`]).
    pub(super) fn command(
        &mut self,
        loc: &Located<RawCommand>,
        name: &str,
        id: &str,
    ) -> Option<CommandSpec> {
        let raw = &loc.value.value;
        let f = loc.file.clone();
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            self.error(
                loc,
                id,
                format!(
                    "'{name}' is not a valid command name (letters, digits, '-', '_', '.', '@')"
                ),
            );
            return None;
        }
        let Some(run) = &raw.run else {
            self.error(loc, id, "a command needs run: [PROGRAM, ARG...]".into());
            return None;
        };
        let run = self.argv(&f, run, id, "run")?;
        if run.first().is_none_or(|p| p.is_empty()) {
            self.error(loc, id, "run: the program is empty".into());
            return None;
        }
        if raw.on_change.as_ref().is_none_or(Vec::is_empty)
            && raw.creates.is_none()
            && raw.unless.is_none()
        {
            self.error(loc, id, "a command needs on_change, creates or unless, so that a run that changes nothing runs nothing".into());
            return None;
        }
        let mut ok = true;
        let mut path = |b: &mut Self, v: &Option<Spanned<String>>, field: &str| match v {
            Some(p) => match normalize_host_path(&p.value) {
                Ok(p) => Some(p),
                Err(m) => {
                    b.error_at(loc, p, id, format!("{field}: {m}"));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let creates = path(self, &raw.creates, "creates");
        let cwd = path(self, &raw.cwd, "cwd");
        let unless = match &raw.unless {
            Some(list) => {
                let argv = self.argv(&f, list, id, "unless");
                match &argv {
                    Some(a) if a.first().is_none_or(|p| p.is_empty()) => {
                        self.error(loc, id, "unless: the program is empty".into());
                        ok = false;
                    }
                    None => ok = false,
                    _ => {}
                }
                argv
            }
            None => None,
        };
        let user = match &raw.user {
            Some(u) if !valid_account_name(&u.value) => {
                self.error_at(
                    loc,
                    u,
                    id,
                    format!("user: '{}' is not a valid user name", u.value),
                );
                ok = false;
                None
            }
            u => u.as_ref().map(|u| u.value.clone()),
        };
        let mut env = BTreeMap::new();
        for (k, v) in raw.env.iter().flatten() {
            let valid = k
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                self.error_at(
                    loc,
                    v,
                    id,
                    format!("env: '{k}' is not a valid variable name"),
                );
                ok = false;
                continue;
            }
            match self.render_string(&f, v, id, "env") {
                Some(s) if !s.contains('\0') => {
                    env.insert(k.clone(), s);
                }
                Some(_) => {
                    self.error_at(loc, v, id, format!("env: {k} holds a NUL byte"));
                    ok = false;
                }
                None => ok = false,
            }
        }
        let timeout_secs = match &raw.timeout {
            Some(t) => {
                match humantime::parse_duration(&t.value) {
                    Ok(d) if d.as_secs() >= 1 && d.as_secs() <= MAX_TIMEOUT_SECS => d.as_secs(),
                    _ => {
                        self.error_at(loc, t, id, format!("timeout: '{}' is not a duration from 1s to 24h (such as 30s or 10m)", t.value));
                        ok = false;
                        0
                    }
                }
            }
            None => DEFAULT_TIMEOUT_SECS,
        };
        ok.then(|| CommandSpec {
            run,
            on_change: vec![],
            creates,
            unless,
            user,
            cwd,
            env,
            timeout_secs,
            secret: raw.secret.unwrap_or(false),
        })
    }

    /// Resolves each command's `on_change` against the declared resources:
    /// an absolute path (a file, directory or symlink), or `package:NAME`,
    /// `service:UNIT`, `user:NAME`, `group:NAME`.
    pub(super) fn resolve_on_change(
        &mut self,
        raw: &BTreeMap<String, Located<RawCommand>>,
        state: &mut DesiredState,
    ) {
        let mut paths: HashMap<PathBuf, Kind> = HashMap::new();
        paths.extend(state.files.keys().map(|p| (p.clone(), Kind::File)));
        paths.extend(
            state
                .directories
                .keys()
                .map(|p| (p.clone(), Kind::Directory)),
        );
        paths.extend(state.symlinks.keys().map(|p| (p.clone(), Kind::Symlink)));
        for (name, loc) in raw {
            let Some(cmd) = state.commands.get_mut(name) else {
                continue;
            };
            let id = format!("command {name}");
            for t in loc.value.value.on_change.iter().flatten() {
                let found = match t.value.split_once(':') {
                    _ if t.value.starts_with('/') => {
                        normalize_host_path(&t.value).ok().and_then(|p| {
                            paths
                                .get(&p)
                                .map(|k| ResourceId::new(*k, p.display().to_string()))
                        })
                    }
                    Some(("package", n)) => state
                        .packages
                        .contains_key(n)
                        .then(|| ResourceId::new(Kind::Package, n)),
                    Some(("service", n)) => state
                        .services
                        .contains_key(n)
                        .then(|| ResourceId::new(Kind::Service, n)),
                    Some(("user", n)) => state
                        .users
                        .contains_key(n)
                        .then(|| ResourceId::new(Kind::User, n)),
                    Some(("group", n)) => state
                        .groups
                        .contains_key(n)
                        .then(|| ResourceId::new(Kind::Group, n)),
                    _ => None,
                };
                match found {
                    Some(r) => {
                        if !cmd.on_change.contains(&r) {
                            cmd.on_change.push(r);
                        }
                    }
                    None => self.errors.push(super::at(
                        &loc.file,
                        t,
                        Some(&id),
                        format!(
                            "on_change: '{}' is not a declared resource (an absolute path of a file, directory or symlink, or package:NAME, service:UNIT, user:NAME, group:NAME)",
                            t.value
                        ),
                    )),
                }
            }
        }
    }
}
