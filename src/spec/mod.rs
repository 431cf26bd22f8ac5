//! A host branch's state files → the rendered, validated `DesiredState`.
//!
//! `trueup.yaml` at the tree's root is read first; its `include:` list names
//! more files (paths relative to the tree's root), loaded depth-first and
//! merged in order, with the including file last: later wins per resource
//! and per top-level var. Everything is parsed, rendered and checked here,
//! before anything on the host is touched, and every error names the file,
//! line and column it comes from.

pub mod accounts;
pub mod commands;
pub mod health;
pub mod render;
pub mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_saphyr::Spanned;

use crate::desired::{
    DesiredState, DirectorySpec, FileContent, FileSpec, PackageSpec, ServiceSpec, SymlinkSpec,
};
use crate::facts::Facts;
use crate::secrets::{Opened, Secrets};
use crate::source::{RepoPath, Tree, TreeError};
use render::{Renderer, TemplateFailure};
use schema::RawEncryption;
use schema::{
    IdName, RawDirectory, RawDocument, RawFile, RawPackage, RawPresence, RawService, RawSymlink,
};

/// The file every host branch starts from.
pub const ENTRY_FILE: &str = "trueup.yaml";

/// Deepest include chain accepted.
const MAX_INCLUDE_DEPTH: usize = 32;

/// Most file content (rendered, or copied from sources) one state may hold,
/// so that a branch naming one big source file many times cannot exhaust
/// memory before anything is checked.
pub const MAX_STATE_CONTENT: usize = 1024 * 1024 * 1024;

/// One problem in a branch, where it is and what it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u64,
    pub column: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(r) = &self.resource {
            write!(f, ": {r}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a branch (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// A one-line message for a YAML error, without its position or snippet.
///
/// Worded for the person who wrote the file: the parser's own hints name
/// its API ("set DuplicateKeyPolicy in Options") and budget breaches print
/// as Rust debug output, so those are reworded here.
pub fn yaml_error_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    match inner {
        E::Budget { breach, .. } => return budget_message(breach),
        E::MultipleDocuments { .. } => {
            return "the file holds more than one YAML document ('---'); trueup reads one".into();
        }
        _ => {}
    }
    let text = inner.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // The position is reported separately as file:line:column.
    let first = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // The parser names its events; say what the file should have held.
    match first {
        "expected mapping start" => "expected a mapping (key: value pairs) here".into(),
        "expected sequence start" => "expected a list here".into(),
        "expected string scalar" => "expected a text value here, not a list or mapping".into(),
        other => other.to_string(),
    }
}

fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let what = match breach {
        B::Depth { .. } => "it nests too deeply".to_string(),
        B::Nodes { nodes } | B::Events { events: nodes } => {
            format!("it has too many values (more than {})", nodes - 1)
        }
        B::Aliases { .. } | B::Anchors { .. } => "it uses too many anchors or aliases".into(),
        B::ScalarBytes { .. } => "its strings are too large in total".into(),
        B::Documents { .. } => "it holds too many documents".into(),
        other => format!("{other:?}"),
    };
    format!("the YAML document is too large or too complex: {what}")
}

fn at<T>(
    file: &Arc<str>,
    spanned: &Spanned<T>,
    resource: Option<&str>,
    message: String,
) -> SpecError {
    SpecError {
        file: file.to_string(),
        line: spanned.referenced.line(),
        column: spanned.referenced.column(),
        resource: resource.map(str::to_string),
        message,
    }
}

/// A value and the file it was declared in.
struct Located<T> {
    file: Arc<str>,
    value: Spanned<T>,
}

/// All documents of a branch merged, before rendering.
#[derive(Default)]
struct Merged {
    vars: serde_json::Map<String, serde_json::Value>,
    files: BTreeMap<String, Located<RawFile>>,
    directories: BTreeMap<String, Located<RawDirectory>>,
    symlinks: BTreeMap<String, Located<RawSymlink>>,
    packages: BTreeMap<String, Located<RawPackage>>,
    services: BTreeMap<String, Located<RawService>>,
    health: health::MergedHealth,
    groups: BTreeMap<String, Located<accounts::RawGroup>>,
    users: BTreeMap<String, Located<accounts::RawUser>>,
    commands: BTreeMap<String, Located<commands::RawCommand>>,
}

/// Parses one YAML document. An empty file is an empty document.
pub fn parse_document(file: &str, bytes: &[u8]) -> Result<RawDocument, SpecError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64
            + 1;
        SpecError {
            file: file.to_string(),
            line,
            column: 1,
            resource: None,
            message: "the file is not valid UTF-8".into(),
        }
    })?;
    if text.contains('\0') {
        return Err(SpecError {
            file: file.to_string(),
            line: 0,
            column: 0,
            resource: None,
            message: "the file contains a NUL byte".into(),
        });
    }
    // Comments are never used: not collecting them saves 4% of parsing.
    let options = serde_saphyr::options! { emit_comments: false };
    let parsed: Result<Option<RawDocument>, _> = serde_saphyr::from_str_with_options(text, options);
    match parsed {
        Ok(doc) => Ok(doc.unwrap_or_default()),
        Err(e) => {
            let loc = e.location();
            Err(SpecError {
                file: file.to_string(),
                line: loc.map(|l| l.line()).unwrap_or(0),
                column: loc.map(|l| l.column()).unwrap_or(0),
                resource: None,
                message: yaml_error_message(&e),
            })
        }
    }
}

/// `include:` entries, which may use `{{ }}` over facts (never vars: those
/// come from the very files being included), so one `trueup.yaml` can name
/// `hosts/{{facts.hostname}}.yaml` for every host of a fleet.
struct IncludePaths<'f> {
    facts: &'f Facts,
    /// Built on the first templated entry: most branches have none.
    renderer: Option<Renderer<'static>>,
}

impl<'f> IncludePaths<'f> {
    fn new(facts: &'f Facts) -> IncludePaths<'f> {
        IncludePaths {
            facts,
            renderer: None,
        }
    }

    fn render(&mut self, raw: &str) -> Result<String, TemplateFailure> {
        if !raw.contains("{{") {
            return Ok(raw.to_string());
        }
        let facts = self.facts;
        self.renderer
            .get_or_insert_with(|| Renderer::new(serde_json::json!({ "facts": facts })))
            .render_inline(raw)
    }
}

/// Loads `path` and its includes, depth-first, into `merged`.
fn load_into(
    tree: &dyn Tree,
    path: &RepoPath,
    stack: &mut Vec<RepoPath>,
    merged: &mut Merged,
    includes: &mut IncludePaths,
) -> Result<(), SpecError> {
    let name: Arc<str> = Arc::from(path.as_str());
    let bytes = tree.read(path).map_err(|e| SpecError {
        file: name.to_string(),
        line: 0,
        column: 0,
        resource: None,
        message: tree_error_reason(&e),
    })?;
    let doc = parse_document(&name, &bytes)?;
    // The text is not needed once parsed; a big branch's is ~1 MB.
    drop(bytes);
    stack.push(path.clone());
    for inc in &doc.include {
        let raw = includes.render(&inc.value).map_err(|f| {
            at(
                &name,
                inc,
                None,
                format!("include '{}': {}", inc.value, f.reason),
            )
        })?;
        let target =
            RepoPath::parse(&raw).map_err(|m| at(&name, inc, None, format!("include: {m}")))?;
        if let Some(pos) = stack.iter().position(|p| p == &target) {
            let mut chain: Vec<&str> = stack[pos..].iter().map(RepoPath::as_str).collect();
            chain.push(target.as_str());
            return Err(at(
                &name,
                inc,
                None,
                format!("include cycle: {}", chain.join(" → ")),
            ));
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(at(
                &name,
                inc,
                None,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH}"),
            ));
        }
        match tree.read(&target) {
            Err(TreeError::NotFound(..)) => {
                return Err(at(
                    &name,
                    inc,
                    None,
                    format!("include '{target}' does not exist"),
                ));
            }
            Err(e) => {
                return Err(at(
                    &name,
                    inc,
                    None,
                    format!("include '{target}': {}", tree_error_reason(&e)),
                ));
            }
            Ok(_) => {}
        }
        load_into(tree, &target, stack, merged, includes)?;
    }
    stack.pop();
    for (k, v) in doc.vars {
        merged.vars.insert(k, v);
    }
    let located = |value| Located {
        file: name.clone(),
        value,
    };
    merged.files.extend(
        doc.files
            .into_iter()
            .map(|(k, v)| (k, located_file(&name, v))),
    );
    merged
        .directories
        .extend(doc.directories.into_iter().map(|(k, v)| {
            (
                k,
                Located {
                    file: name.clone(),
                    value: v,
                },
            )
        }));
    merged
        .symlinks
        .extend(doc.symlinks.into_iter().map(|(k, v)| {
            (
                k,
                Located {
                    file: name.clone(),
                    value: v,
                },
            )
        }));
    merged
        .packages
        .extend(doc.packages.into_iter().map(|(k, v)| {
            (
                k,
                Located {
                    file: name.clone(),
                    value: v,
                },
            )
        }));
    merged
        .services
        .extend(doc.services.into_iter().map(|(k, v)| (k, located(v))));
    merged.health.merge(&name, doc.health);
    merged.groups.extend(doc.groups.into_iter().map(|(k, v)| {
        (
            k,
            Located {
                file: name.clone(),
                value: v,
            },
        )
    }));
    merged.users.extend(doc.users.into_iter().map(|(k, v)| {
        (
            k,
            Located {
                file: name.clone(),
                value: v,
            },
        )
    }));
    merged
        .commands
        .extend(doc.commands.into_iter().map(|(k, v)| {
            (
                k,
                Located {
                    file: name.clone(),
                    value: v,
                },
            )
        }));
    Ok(())
}

fn located_file(name: &Arc<str>, value: Spanned<RawFile>) -> Located<RawFile> {
    Located {
        file: name.clone(),
        value,
    }
}

fn tree_error_reason(e: &TreeError) -> String {
    match e {
        TreeError::NotFound(_, _) => "no such file".into(),
        TreeError::Refused(_, why) | TreeError::Io(_, why) => why.clone(),
    }
}

/// Reads, merges, renders and validates a branch into its desired state.
///
/// No host key is given: every age secret fails its own file (use
/// `load_with_secrets` on a host, or with `Secrets::Unread` to check a
/// branch without decrypting).
pub fn load(tree: &dyn Tree, facts: &Facts) -> Result<DesiredState, SpecErrors> {
    let none = Secrets::NoIdentity("no host key was given to this render".into());
    load_with_secrets(tree, facts, &none)
}

/// `load`, opening age-encrypted sources and `{{secret}}` as `secrets`
/// says.
pub fn load_with_secrets(
    tree: &dyn Tree,
    facts: &Facts,
    secrets: &Secrets,
) -> Result<DesiredState, SpecErrors> {
    load_files(tree, facts, secrets, None, None)
}

/// What `load_streaming` hands each file to.
pub type OnFile<'a> = &'a dyn Fn(&Path, &mut FileSpec);

/// `load_with_secrets` that hands each file to `on_file` as soon as it is
/// rendered (while no error has been found), for work that can start
/// before the whole branch is rendered (`prestage`).
pub fn load_streaming(
    tree: &dyn Tree,
    facts: &Facts,
    secrets: &Secrets,
    on_file: OnFile<'_>,
) -> Result<DesiredState, SpecErrors> {
    load_files(tree, facts, secrets, None, Some(on_file))
}

/// `load_with_secrets` of the files at `only` (host paths): every state
/// file is parsed, but the other `files:` entries are read past unbuilt
/// (`schema::KeepOnlyFiles`), only those files are rendered, and the state
/// holds them alone. For a commit known to render (the render cache), when
/// only some of its files need their content.
pub fn load_only(
    tree: &dyn Tree,
    facts: &Facts,
    secrets: &Secrets,
    only: &HashSet<PathBuf>,
) -> Result<DesiredState, SpecErrors> {
    load_files(tree, facts, secrets, Some(only), None)
}

fn load_files(
    tree: &dyn Tree,
    facts: &Facts,
    secrets: &Secrets,
    only: Option<&HashSet<PathBuf>>,
    on_file: Option<OnFile<'_>>,
) -> Result<DesiredState, SpecErrors> {
    let mut merged = Merged::default();
    let entry = RepoPath::parse(ENTRY_FILE).map_err(|m| {
        SpecErrors(vec![SpecError {
            file: ENTRY_FILE.into(),
            line: 0,
            column: 0,
            resource: None,
            message: m,
        }])
    })?;
    let kept = only.map(schema::KeepOnlyFiles::new);
    load_into(
        tree,
        &entry,
        &mut Vec::new(),
        &mut merged,
        &mut IncludePaths::new(facts),
    )
    .map_err(|e| SpecErrors(vec![e]))?;
    drop(kept);
    let context = serde_json::json!({ "facts": facts, "vars": merged.vars });
    let mut b = Builder {
        tree,
        renderer: Renderer::with_secrets(context, tree, secrets.clone()),
        errors: Vec::new(),
        content_bytes: 0,
        secrets: secrets.clone(),
        content_secret: false,
        only,
        on_file,
    };
    let state = b.build(merged);
    if b.errors.is_empty() {
        Ok(state)
    } else {
        Err(SpecErrors(b.errors))
    }
}

/// Turns merged raw documents into a desired state, collecting every error.
struct Builder<'t> {
    tree: &'t dyn Tree,
    renderer: Renderer<'t>,
    errors: Vec<SpecError>,
    /// File content held so far, against `MAX_STATE_CONTENT`.
    content_bytes: usize,
    /// How age secrets are opened.
    secrets: Secrets,
    /// Set by `content` when the file's content came from a secret.
    content_secret: bool,
    /// When set, the only files rendered and kept (`load_only`).
    only: Option<&'t HashSet<PathBuf>>,
    /// Given each file once rendered (`load_streaming`).
    on_file: Option<OnFile<'t>>,
}

impl Builder<'_> {
    fn build(&mut self, merged: Merged) -> DesiredState {
        let mut state = DesiredState::default();
        // Hashed, and the path maps below built in bulk from (nearly) sorted
        // lists: comparing paths component by component made one insert per
        // resource into a tree the largest cost of rendering big states.
        let mut kinds: HashMap<PathBuf, &'static str> = HashMap::new();
        let kept = self.only.map_or(usize::MAX, HashSet::len);
        let mut files = Vec::with_capacity(merged.files.len().min(kept));
        for (path, loc) in merged.files {
            let id = format!("file {path}");
            if let Some(p) = self.host_path(&loc, &path, &id, &mut kinds, "file")
                && self.only.is_none_or(|only| only.contains(&p))
                && let Some(mut spec) = self.file_with_secrets(&loc, &id)
            {
                if let Some(on_file) = self.on_file
                    && self.errors.is_empty()
                {
                    on_file(&p, &mut spec);
                }
                files.push((p, spec));
            }
        }
        state.files = files.into_iter().collect();
        let mut directories = Vec::with_capacity(merged.directories.len());
        for (path, loc) in merged.directories {
            let id = format!("directory {path}");
            if let Some(p) = self.host_path(&loc, &path, &id, &mut kinds, "directory")
                && let Some(spec) = self.directory(&loc, &id)
            {
                directories.push((p, spec));
            }
        }
        state.directories = directories.into_iter().collect();
        let mut symlinks = Vec::with_capacity(merged.symlinks.len());
        for (path, loc) in merged.symlinks {
            let id = format!("symlink {path}");
            if let Some(p) = self.host_path(&loc, &path, &id, &mut kinds, "symlink")
                && let Some(spec) = self.symlink(&loc, &id)
            {
                symlinks.push((p, spec));
            }
        }
        state.symlinks = symlinks.into_iter().collect();
        for (name, loc) in merged.packages {
            let id = format!("package {name}");
            if let Some(spec) = self.package(&loc, &name, &id) {
                state.packages.insert(name, spec);
            }
        }
        for (name, loc) in merged.services {
            let id = format!("service {name}");
            if let Some(spec) = self.service(&loc, &name, &id, &state.packages) {
                state.services.insert(name, spec);
            }
        }
        state.health = self.health(merged.health);
        for (name, loc) in &merged.groups {
            if let Some(spec) = self.group(loc, name, &format!("group {name}")) {
                state.groups.insert(name.clone(), spec);
            }
        }
        for (name, loc) in &merged.users {
            if let Some(spec) = self.user(loc, name, &format!("user {name}")) {
                state.users.insert(name.clone(), spec);
            }
        }
        self.check_user_groups(&state.users, &state.groups);
        for (name, loc) in &merged.commands {
            if let Some(spec) = self.command(loc, name, &format!("command {name}")) {
                state.commands.insert(name.clone(), spec);
            }
        }
        self.resolve_on_change(&merged.commands, &mut state);
        for (path, file) in &state.files {
            for unit in &file.notify {
                if !state.services.contains_key(unit) {
                    self.errors.push(SpecError {
                        file: ENTRY_FILE.into(),
                        line: 0,
                        column: 0,
                        resource: Some(format!("file {}", path.display())),
                        message: format!("notify names '{unit}', which is not a declared service"),
                    });
                }
            }
        }
        state
    }

    fn error<T>(&mut self, loc: &Located<T>, id: &str, message: String) {
        self.errors
            .push(at(&loc.file, &loc.value, Some(id), message));
    }

    fn error_at<T, U>(&mut self, loc: &Located<T>, value: &Spanned<U>, id: &str, message: String) {
        self.errors.push(at(&loc.file, value, Some(id), message));
    }

    /// Validates a managed path: absolute, normalized, no `..`, declared once.
    fn host_path<T>(
        &mut self,
        loc: &Located<T>,
        raw: &str,
        id: &str,
        kinds: &mut HashMap<PathBuf, &'static str>,
        kind: &'static str,
    ) -> Option<PathBuf> {
        match normalize_host_path(raw) {
            Ok(p) => {
                if let Some(other) = kinds.insert(p.clone(), kind) {
                    self.error(loc, id, format!("the path is also declared as a {other}"));
                    return None;
                }
                Some(p)
            }
            Err(m) => {
                self.error(loc, id, m);
                None
            }
        }
    }

    fn render_string(
        &mut self,
        loc_file: &Arc<str>,
        value: &Spanned<String>,
        id: &str,
        field: &str,
    ) -> Option<String> {
        match self.renderer.render_inline(&value.value) {
            Ok(_) if field != "content" && self.renderer.inline_secret_use().used => {
                self.errors.push(at(
                    loc_file,
                    value,
                    Some(id),
                    format!(
                        "{field}: {{{{secret}}}} may only be used in a file's content or template"
                    ),
                ));
                None
            }
            Ok(s) => Some(s),
            Err(f) => {
                self.errors.push(at(
                    loc_file,
                    value,
                    Some(id),
                    format!("{field}: template {f}"),
                ));
                None
            }
        }
    }

    fn owner(
        &mut self,
        file: &Arc<str>,
        v: Option<&Spanned<IdName>>,
        id: &str,
        field: &str,
    ) -> Result<Option<String>, ()> {
        let Some(v) = v else { return Ok(None) };
        let as_string = Spanned::new(v.value.0.clone(), v.referenced, v.defined);
        let rendered = self.render_string(file, &as_string, id, field).ok_or(())?;
        if rendered.is_empty() || rendered.contains(['\n', ':', '\0']) {
            self.errors.push(at(
                file,
                v,
                Some(id),
                format!("{field}: '{rendered}' is not a valid name"),
            ));
            return Err(());
        }
        Ok(Some(rendered))
    }

    fn mode(
        &mut self,
        file: &Arc<str>,
        v: Option<&Spanned<String>>,
        id: &str,
    ) -> Result<Option<u32>, ()> {
        let Some(v) = v else { return Ok(None) };
        match parse_mode(&v.value) {
            Ok(m) => Ok(Some(m)),
            Err(m) => {
                self.errors.push(at(file, v, Some(id), m));
                Err(())
            }
        }
    }

    fn file(&mut self, loc: &Located<RawFile>, id: &str) -> Option<FileSpec> {
        let raw = &loc.value.value;
        let f = &loc.file;
        let absent = raw.state == Some(RawPresence::Absent);
        let sources = [
            raw.content.is_some(),
            raw.template.is_some(),
            raw.source.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        let owner = self.owner(f, raw.owner.as_deref(), id, "owner");
        let group = self.owner(f, raw.group.as_deref(), id, "group");
        let mode = self.mode(f, raw.mode.as_deref(), id);
        let validate = self.validate(f, raw.validate.as_deref(), id);
        if absent && let Some(vars) = raw.vars.as_deref() {
            let message = "vars: a file with state: absent is not rendered".to_string();
            self.error_at(loc, vars, id, message);
            return None;
        }
        let (notify, notify_actions) = match &raw.notify {
            None => (vec![], BTreeMap::new()),
            Some(commands::RawNotify::List(units)) => (units.clone(), BTreeMap::new()),
            Some(commands::RawNotify::Map(map)) => {
                if raw.notify_action.is_some() {
                    self.error(
                        loc,
                        id,
                        "notify_action goes with the list form of notify; the mapping form names each unit's action".into(),
                    );
                    return None;
                }
                (map.keys().cloned().collect(), map.clone())
            }
        };
        if absent && raw.validate.is_some() {
            self.error(
                loc,
                id,
                "a file with state: absent takes no validate".into(),
            );
            return None;
        }
        if absent {
            if sources > 0 {
                self.error(
                    loc,
                    id,
                    "a file with state: absent takes no content, template or source".into(),
                );
                return None;
            }
        } else if sources != 1 {
            self.error(
                loc,
                id,
                "a file needs exactly one of content, template or source (or state: absent)".into(),
            );
            return None;
        }
        let content = if absent {
            None
        } else {
            let c = self.content(loc, raw, id)?;
            let before = self.content_bytes;
            self.content_bytes = before.saturating_add(c.bytes.len());
            if self.content_bytes > MAX_STATE_CONTENT {
                if before > MAX_STATE_CONTENT {
                    return None; // already reported once
                }
                self.error(
                    loc,
                    id,
                    format!(
                        "the files declared so far hold more than {} MiB of content in total",
                        MAX_STATE_CONTENT / (1024 * 1024)
                    ),
                );
                return None;
            }
            Some(c)
        };
        Some(FileSpec {
            content,
            owner: owner.ok()?,
            group: group.ok()?,
            mode: mode.ok()?,
            notify,
            notify_action: raw.notify_action.unwrap_or_default(),
            notify_actions,
            secret: raw.secret.unwrap_or(false),
            validate: validate.ok()?,
        })
    }

    /// `file`, then what a secret source or `{{secret}}` implies: the file
    /// is secret and mode 0600 unless its mode is declared.
    fn file_with_secrets(&mut self, loc: &Located<RawFile>, id: &str) -> Option<FileSpec> {
        let raw = &loc.value.value;
        if raw.encrypted.is_some() && raw.source.is_none() {
            self.error(
                loc,
                id,
                "encrypted: age applies to a source: (an age file in the branch)".into(),
            );
            return None;
        }
        let encrypted = self.is_encrypted(raw);
        if encrypted && raw.secret == Some(false) {
            self.error(
                loc,
                id,
                "an encrypted source is always secret: remove secret: false".into(),
            );
            return None;
        }
        self.content_secret = false;
        let mut spec = self.file(loc, id)?;
        if std::mem::take(&mut self.content_secret) {
            spec.secret = true;
            spec.mode.get_or_insert(0o600);
        }
        Some(spec)
    }

    fn is_encrypted(&self, raw: &RawFile) -> bool {
        raw.encrypted == Some(RawEncryption::Age)
            || raw
                .source
                .as_deref()
                .is_some_and(|s| s.value.ends_with(".age"))
    }

    /// Content from an age file: decrypted, or empty and marked
    /// undecryptable so that this file alone fails on this host.
    fn secret_content(
        &mut self,
        loc: &Located<RawFile>,
        spanned: &Spanned<String>,
        path: &RepoPath,
        ciphertext: &[u8],
        id: &str,
    ) -> Option<FileContent> {
        self.content_secret = true;
        let origin = format!("source:{path}");
        match self.secrets.open(ciphertext) {
            Ok(Opened::Plain(plain)) => Some(FileContent {
                bytes: plain.into(),
                origin,
                undecryptable: None,
                ahead: None,
            }),
            Ok(Opened::Unread) => Some(FileContent {
                bytes: Arc::from(&b""[..]),
                origin,
                undecryptable: None,
                ahead: None,
            }),
            Err(e) if matches!(self.secrets, Secrets::Unread) => {
                self.error_at(loc, spanned, id, format!("source '{path}': {e}"));
                None
            }
            Err(e) => Some(FileContent {
                bytes: Arc::from(&b""[..]),
                origin,
                undecryptable: Some(format!("cannot decrypt {path}: {e}")),
                ahead: None,
            }),
        }
    }

    /// Marks content rendered with `{{secret}}` as secret, and as
    /// undecryptable when a secret it used did not open.
    fn with_secret_use(&mut self, mut c: FileContent, used: render::SecretUse) -> FileContent {
        if used.used {
            self.content_secret = true;
            if let Some(why) = used.failure {
                c.bytes = Arc::from(&b""[..]);
                c.undecryptable = Some(why);
            }
        }
        c
    }

    fn content(&mut self, loc: &Located<RawFile>, raw: &RawFile, id: &str) -> Option<FileContent> {
        if let Some(vars) = raw.vars.as_deref() {
            return self.content_with_vars(loc, raw, vars, id);
        }
        let f = loc.file.clone();
        if let Some(text) = &raw.content {
            let bytes = self.render_string(&f, text, id, "content")?.into_bytes();
            let used = self.renderer.inline_secret_use();
            let c = FileContent {
                bytes: bytes.into(),
                origin: "content".into(),
                undecryptable: None,
                ahead: None,
            };
            return Some(self.with_secret_use(c, used));
        }
        let (spanned, is_template) = match (raw.template.as_deref(), raw.source.as_deref()) {
            (Some(t), _) => (t, true),
            (None, Some(s)) => (s, false),
            (None, None) => return None,
        };
        let field = if is_template { "template" } else { "source" };
        let path = match RepoPath::parse(&spanned.value) {
            Ok(p) => p,
            Err(m) => {
                self.error_at(loc, spanned, id, format!("{field}: {m}"));
                return None;
            }
        };
        // A template many files use is read, compiled and rendered once.
        if is_template && let Some(done) = self.renderer.rendered(path.as_str()) {
            return self.template_content(&path, done, id);
        }
        let bytes = match self.tree.read(&path) {
            Ok(b) => b,
            Err(TreeError::NotFound(..)) => {
                self.error_at(loc, spanned, id, format!("{field} '{path}' does not exist"));
                return None;
            }
            Err(e) => {
                self.error_at(
                    loc,
                    spanned,
                    id,
                    format!("{field} '{path}': {}", tree_error_reason(&e)),
                );
                return None;
            }
        };
        if !is_template && self.is_encrypted(raw) {
            return self.secret_content(loc, spanned, &path, &bytes, id);
        }
        if !is_template {
            return Some(FileContent {
                bytes: bytes.into(),
                origin: format!("source:{path}"),
                undecryptable: None,
                ahead: None,
            });
        }
        let Ok(text) = String::from_utf8(bytes) else {
            self.error_at(
                loc,
                spanned,
                id,
                format!("template '{path}' is not valid UTF-8"),
            );
            return None;
        };
        let done = self.renderer.render_file(path.as_str(), &text);
        self.template_content(&path, done, id)
    }

    /// The content of a file with its own `vars:`: its template (compiled
    /// once, whoever uses it) or inline content rendered with those vars
    /// over the run's.
    fn content_with_vars(
        &mut self,
        loc: &Located<RawFile>,
        raw: &RawFile,
        vars: &Spanned<schema::FileVars>,
        id: &str,
    ) -> Option<FileContent> {
        let f = loc.file.clone();
        if let Some(text) = &raw.content {
            return match self
                .renderer
                .render_inline_with_vars(&text.value, &vars.value.0)
            {
                Ok(out) => {
                    let used = self.renderer.inline_secret_use();
                    let c = FileContent {
                        bytes: out.into_bytes().into(),
                        origin: "content".into(),
                        undecryptable: None,
                        ahead: None,
                    };
                    Some(self.with_secret_use(c, used))
                }
                Err(fail) => {
                    self.errors
                        .push(at(&f, text, Some(id), format!("content: template {fail}")));
                    None
                }
            };
        }
        let Some(spanned) = raw.template.as_deref() else {
            self.error_at(
                loc,
                vars,
                id,
                "vars: only a file rendered from template: or content: takes vars (source: is copied as it is)".into(),
            );
            return None;
        };
        let path = match RepoPath::parse(&spanned.value) {
            Ok(p) => p,
            Err(m) => {
                self.error_at(loc, spanned, id, format!("template: {m}"));
                return None;
            }
        };
        let text = if self.renderer.is_compiled(path.as_str()) {
            None
        } else {
            let bytes = match self.tree.read(&path) {
                Ok(b) => b,
                Err(TreeError::NotFound(..)) => {
                    self.error_at(
                        loc,
                        spanned,
                        id,
                        format!("template '{path}' does not exist"),
                    );
                    return None;
                }
                Err(e) => {
                    let why = tree_error_reason(&e);
                    self.error_at(loc, spanned, id, format!("template '{path}': {why}"));
                    return None;
                }
            };
            let Ok(text) = String::from_utf8(bytes) else {
                let message = format!("template '{path}' is not valid UTF-8");
                self.error_at(loc, spanned, id, message);
                return None;
            };
            Some(text)
        };
        let done =
            self.renderer
                .render_file_with_vars(path.as_str(), text.as_deref(), &vars.value.0);
        self.template_content(&path, done, id)
    }

    fn template_content(
        &mut self,
        path: &RepoPath,
        rendered: Result<Arc<str>, TemplateFailure>,
        id: &str,
    ) -> Option<FileContent> {
        match rendered {
            Ok(out) => {
                let c = FileContent {
                    bytes: out.into(),
                    origin: format!("template:{path}"),
                    undecryptable: None,
                    ahead: None,
                };
                let used = self.renderer.file_secret_use(path.as_str());
                Some(self.with_secret_use(c, used))
            }
            Err(fail) => {
                self.errors.push(template_error(path, &fail, id));
                None
            }
        }
    }

    fn directory(&mut self, loc: &Located<RawDirectory>, id: &str) -> Option<DirectorySpec> {
        let raw = &loc.value.value;
        let f = &loc.file;
        let owner = self.owner(f, raw.owner.as_ref(), id, "owner");
        let group = self.owner(f, raw.group.as_ref(), id, "group");
        let mode = self.mode(f, raw.mode.as_ref(), id);
        Some(DirectorySpec {
            present: raw.state != Some(RawPresence::Absent),
            owner: owner.ok()?,
            group: group.ok()?,
            mode: mode.ok()?,
        })
    }

    fn symlink(&mut self, loc: &Located<RawSymlink>, id: &str) -> Option<SymlinkSpec> {
        let raw = &loc.value.value;
        let absent = raw.state == Some(RawPresence::Absent);
        match (&raw.target, absent) {
            (Some(_), true) => {
                self.error(
                    loc,
                    id,
                    "a symlink with state: absent takes no target".into(),
                );
                None
            }
            (None, true) => Some(SymlinkSpec { target: None }),
            (None, false) => {
                self.error(
                    loc,
                    id,
                    "a symlink needs a target (or state: absent)".into(),
                );
                None
            }
            (Some(t), false) => {
                let target = self.render_string(&loc.file, t, id, "target")?;
                if target.is_empty() || target.contains('\0') {
                    self.error_at(loc, t, id, "target is empty or holds a NUL byte".into());
                    return None;
                }
                Some(SymlinkSpec {
                    target: Some(PathBuf::from(target)),
                })
            }
        }
    }

    fn package(&mut self, loc: &Located<RawPackage>, name: &str, id: &str) -> Option<PackageSpec> {
        let raw = &loc.value.value;
        if !valid_package_name(name) {
            self.error(loc, id, format!("'{name}' is not a valid package name"));
            return None;
        }
        let present = raw.state != Some(RawPresence::Absent);
        if !present && raw.version.is_some() {
            self.error(
                loc,
                id,
                "a package with state: absent takes no version".into(),
            );
            return None;
        }
        if let Some(v) = &raw.version
            && (v.value.is_empty() || v.value.contains(char::is_whitespace))
        {
            self.error_at(
                loc,
                v,
                id,
                format!("version '{}' is not a valid version or pin", v.value),
            );
            return None;
        }
        Some(PackageSpec {
            present,
            version: raw.version.as_ref().map(|v| v.value.clone()),
        })
    }

    fn service(
        &mut self,
        loc: &Located<RawService>,
        name: &str,
        id: &str,
        packages: &BTreeMap<String, PackageSpec>,
    ) -> Option<ServiceSpec> {
        let raw = &loc.value.value;
        if !valid_unit_name(name) {
            self.error(
                loc,
                id,
                format!("'{name}' is not a systemd unit name (such as nginx.service)"),
            );
            return None;
        }
        if name.contains("@.") {
            // systemctl refuses a template outright, failing the batch that
            // observes every declared unit.
            self.error(
                loc,
                id,
                format!("'{name}' is a template; declare an instance such as getty@tty1.service"),
            );
            return None;
        }
        if raw.masked == Some(true)
            && (raw.enabled == Some(true)
                || raw.state == Some(crate::desired::ServiceRunState::Running))
        {
            self.error(loc, id, "a masked unit cannot be enabled or running".into());
            return None;
        }
        // The package that ships the unit: named, or else a declared package
        // called like the unit without its suffix (nginx for nginx.service).
        let package = match &raw.package {
            Some(p) => match packages.get(&p.value) {
                Some(spec) if spec.present => Some(p.value.clone()),
                Some(_) => {
                    self.error_at(
                        loc,
                        p,
                        id,
                        format!("package '{}' is declared absent", p.value),
                    );
                    return None;
                }
                None => {
                    self.error_at(
                        loc,
                        p,
                        id,
                        format!("package '{}' is not a declared package", p.value),
                    );
                    return None;
                }
            },
            None => name
                .rsplit_once('.')
                .map(|(stem, _)| stem)
                .filter(|stem| packages.get(*stem).is_some_and(|p| p.present))
                .map(str::to_string),
        };
        Some(ServiceSpec {
            enabled: raw.enabled,
            state: raw.state,
            masked: raw.masked,
            package,
        })
    }
}

fn template_error(path: &RepoPath, fail: &TemplateFailure, id: &str) -> SpecError {
    SpecError {
        file: path.to_string(),
        line: fail.line.map(|l| l as u64).unwrap_or(0),
        column: fail.column.map(|c| c as u64).unwrap_or(0),
        resource: Some(id.to_string()),
        message: fail.reason.clone(),
    }
}

/// Validates a managed path: absolute, without `..` or `.`, normalized.
pub fn normalize_host_path(raw: &str) -> Result<PathBuf, String> {
    if !raw.starts_with('/') {
        return Err(format!("'{raw}' is not an absolute path"));
    }
    if raw.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(raw).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("'{raw}' contains '.' or '..'"));
            }
        }
    }
    if out == Path::new("/") {
        return Err("'/' itself cannot be managed".into());
    }
    Ok(out)
}

/// Parses an octal permission mode written as a string: "0644", "755".
pub fn parse_mode(raw: &str) -> Result<u32, String> {
    let digits = raw.strip_prefix("0o").unwrap_or(raw);
    if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "mode '{raw}' is not an octal mode such as \"0644\""
        ));
    }
    u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode '{raw}' is not an octal mode such as \"0644\""))
}

fn valid_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._:".contains(&b))
        && !name.starts_with('-')
}

fn valid_unit_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".path", ".mount", ".target",
    ];
    SUFFIXES
        .iter()
        .any(|s| name.ends_with(s) && name.len() > s.len())
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@-_.:\\".contains(&b))
}

#[cfg(test)]
mod tests;
