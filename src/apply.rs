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
use crate::error_class::ErrorClass;
use crate::plan::{Action, Plan, Step};
use crate::resource::accounts::WantedMeta;
use crate::resource::command::CommandRun;
use crate::resource::node::{self, NodeAction, Previous};
use crate::resource::package::PackageChange;
use crate::resource::user;
use crate::resource::{BackendError, Backends, Drift, Kind, ResourceId};
use crate::safe_fs;

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
    /// How a command (or a file's `validate:` command) ended: its exit
    /// status and the tail of its output. Never for a `secret` command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<CommandRun>,
    /// What `error` calls for, when a backend said (another apt holding
    /// the dpkg lock: retry soon); for the agent's schedule, through
    /// `RunReport::error_class`, not part of the report's JSON.
    #[serde(skip)]
    pub error_class: Option<ErrorClass>,
}

impl Outcome {
    /// A resource found in sync without a plan (the render cache).
    pub fn in_sync(kind: Kind, resource: String) -> Outcome {
        Outcome {
            kind,
            resource,
            status: Status::InSync,
            drift: vec![],
            action: None,
            error: None,
            run: None,
            error_class: None,
        }
    }

    fn new(step: &Step, status: Status) -> Outcome {
        Outcome {
            kind: step.resource.kind,
            resource: step.resource.name.clone(),
            status,
            drift: step.drift.clone(),
            action: step.action.as_ref().map(Action::describe),
            error: step.error.clone(),
            run: None,
            error_class: step.error_class,
        }
    }

    /// Marks the outcome failed by `e` (its error added to any it has),
    /// transient when any of its failures is.
    fn fail(&mut self, e: &BackendError) {
        self.status = Status::Failed;
        self.error = Some(match self.error.take() {
            Some(prev) => format!("{prev}; {}", e.message),
            None => e.message.clone(),
        });
        self.error_class = match self.error_class {
            Some(ErrorClass::Transient) => Some(ErrorClass::Transient),
            _ => Some(e.class),
        };
    }
}

/// The outcomes of a plan that is only looked at (check, dry run).
/// Follow-ups are left out: they are consequences, not drift (a command
/// is not: `check` lists the commands that would run).
pub fn check(plan: &Plan) -> Vec<Outcome> {
    plan.steps
        .iter()
        .filter(|s| !s.is_follow_up() || s.resource.kind == Kind::Command)
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

/// Removes what killed runs left beside managed files, once per managed
/// directory: runs hold the run lock, so a trueup temporary file found
/// there now is stale, even beside a file that is never written again.
fn sweep_stale_temps(desired: &DesiredState, root: &Path) {
    // The files come sorted, so those of one directory are side by side:
    // skipping repeats first keeps the set small (1,000 files in one
    // directory are one entry, not 1,000 path comparisons).
    let mut dirs: std::collections::BTreeSet<&Path> = std::collections::BTreeSet::new();
    let mut last: Option<&Path> = None;
    for dir in desired
        .files
        .keys()
        .chain(desired.symlinks.keys())
        .filter_map(|p| p.parent())
    {
        if last.is_some_and(|l| l.as_os_str() == dir.as_os_str()) {
            continue;
        }
        last = Some(dir);
        dirs.insert(dir);
    }
    for dir in dirs {
        match safe_fs::sweep_stale_temps(root, dir) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(directory = %dir.display(), removed = n, "stale temporary files removed")
            }
            Err(e) => {
                tracing::warn!(directory = %dir.display(), error = %e, "could not sweep stale temporary files")
            }
        }
    }
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
    sweep_stale_temps(desired, opts.root);
    let mut broken: HashSet<&ResourceId> = HashSet::new();
    let mut changed: HashSet<&ResourceId> = HashSet::new();
    let mut packages = PackageBatch::of(plan);
    let mut out = Vec::with_capacity(plan.steps.len());
    let mut writes = StagedWrites {
        any_validate: desired.files.values().any(|f| !f.validate.is_empty()),
        ..StagedWrites::default()
    };
    for step in &plan.steps {
        let stages = writes.stages(step, desired);
        let commit_first = if stages {
            writes.full(step)
        } else {
            step.is_follow_up() || step.action.is_some()
        };
        if commit_first {
            // Anything else may depend on the files written so far (a
            // unit file before daemon-reload, a file before a restart).
            writes.commit(&mut out, &mut changed, &mut broken);
        }
        let command = step.resource.kind == Kind::Command;
        if command && step.is_follow_up() && !step.triggered_by.iter().any(|t| changed.contains(t))
        {
            // What it watches did not change after all: it does not run.
            let mut o = Outcome::new(step, Status::InSync);
            o.action = None;
            o.drift.clear();
            if let Some(t) = step.triggered_by.iter().find(|t| broken.contains(t)) {
                o.status = Status::Skipped;
                o.drift = step.drift.clone();
                o.error = Some(format!("not run because {t} failed"));
                broken.insert(&step.resource);
            }
            out.push(o);
            continue;
        }
        if step.is_follow_up() && !command {
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
        if let Some(why) = not_run_here(step, action, desired, opts) {
            broken.insert(&step.resource);
            let mut o = Outcome::new(step, Status::Skipped);
            o.error = Some(why);
            out.push(o);
            continue;
        }
        if stages {
            match writes.stage(step, opts) {
                Ok(()) => {
                    // Changed once the batch is in place; see commit.
                    writes.pending.push((out.len(), &step.resource));
                    out.push(Outcome::new(step, Status::Changed));
                }
                Err(e) => {
                    broken.insert(&step.resource);
                    let mut o = Outcome::new(step, Status::Failed);
                    o.error = Some(e);
                    out.push(o);
                }
            }
            continue;
        }
        let mut o = Outcome::new(step, Status::Changed);
        let result = match action {
            Action::Command => run_command(step, desired, opts, &mut o).map_err(BackendError::from),
            _ => run_action(step, action, desired, opts, &mut packages),
        };
        match result {
            Ok(()) => {
                changed.insert(&step.resource);
            }
            Err(e) => {
                broken.insert(&step.resource);
                o.fail(&e);
            }
        }
        out.push(o);
    }
    writes.commit(&mut out, &mut changed, &mut broken);
    out
}

/// Most files written in a run, staged and then made durable together
/// (`safe_fs::WriteBatch`): one `syncfs` and one fsync per directory
/// instead of two fsyncs per file, and the backups of the content they
/// replace written unsynced and made durable by the same `syncfs`.
#[derive(Default)]
struct StagedWrites<'p> {
    batch: safe_fs::WriteBatch,
    /// The outcome index and resource of each staged file, in batch order.
    pending: Vec<(usize, &'p ResourceId)>,
    /// Parent directories shared by consecutive files.
    walk: safe_fs::WalkCache,
    backup_dir_made: bool,
    /// The directory of the files staged so far.
    dir: Option<PathBuf>,
    /// Whether any file has a `validate:` command (a file write without
    /// one joins the batch without a lookup of its spec).
    any_validate: bool,
}

/// A batch is committed at this many files or bytes even without a step
/// that needs it: it bounds the descriptors held (one per directory), the
/// temporary files a crash can leave, and the disk space old and new
/// content take side by side.
const MAX_BATCH_FILES: usize = 1024;
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

impl<'p> StagedWrites<'p> {
    /// Whether this step's change is a file write that joins the batch (a
    /// file with `validate:` is written on its own, after its check).
    fn stages(&self, step: &Step, desired: &DesiredState) -> bool {
        step.error.is_none()
            && step.resource.kind == Kind::File
            && matches!(
                step.action,
                Some(Action::Node(NodeAction::WriteFile { .. }))
            )
            && (!self.any_validate
                || desired
                    .files
                    .get(Path::new(&step.resource.name))
                    .is_some_and(|f| f.validate.is_empty() && f.content.is_some()))
    }

    /// Keeps the replaced content, then writes the new content (carried by
    /// the step) to a temporary file beside the destination.
    fn stage(&mut self, step: &'p Step, opts: &ApplyOptions) -> Result<(), String> {
        let Some(Action::Node(NodeAction::WriteFile {
            content,
            uid,
            gid,
            mode,
            previous,
        })) = &step.action
        else {
            return Err("not a file write".into());
        };
        let path = Path::new(&step.resource.name);
        if let Some(prev) = previous {
            if !self.backup_dir_made {
                make_backup_dir(&opts.backup_dir)?;
                self.backup_dir_made = true;
                self.batch.sync_also(&opts.backup_dir);
            }
            backup_unsynced(&opts.backup_dir, path, prev)?;
        }
        let entry = match safe_fs::Entry::open_cached(&mut self.walk, opts.root, path) {
            Ok(Some(e)) => e,
            // A parent is missing: made (never through a symlink) by a
            // walk of its own.
            Ok(None) => {
                // The cache remembers the parent as missing: it starts
                // again once the parents are made.
                self.walk = safe_fs::WalkCache::default();
                safe_fs::Entry::open(opts.root, path, true)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{}: the parent directory is missing", path.display()))?
            }
            Err(e) => return Err(e.to_string()),
        };
        // A missing file written ahead (`prestage`) with this mode; given
        // back (and its bytes read back below) when the batch cannot take it.
        if previous.is_none()
            && uid.is_none()
            && gid.is_none()
            && let Some(file) = content.take_ahead(*mode)
        {
            match self.batch.adopt(&entry, file) {
                Ok(()) => {
                    content.release();
                    return Ok(());
                }
                Err(file) => content.give_back(file),
            }
        }
        entry
            .stage_file(
                &mut self.batch,
                &content.bytes()?,
                *uid,
                *gid,
                *mode,
                previous.is_none(),
            )
            .map_err(|e| e.to_string())?;
        // On disk (unnamed or beside its destination) until the batch
        // commits: the bytes are not needed again.
        content.release();
        Ok(())
    }

    /// Puts every staged file in place and settles its outcome: changed,
    /// or failed with the reason.
    fn commit(
        &mut self,
        out: &mut [Outcome],
        changed: &mut HashSet<&'p ResourceId>,
        broken: &mut HashSet<&'p ResourceId>,
    ) {
        // The chain of directories may be stale once other steps run.
        self.walk = safe_fs::WalkCache::default();
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        for ((i, id), result) in self.pending.drain(..).zip(batch.commit()) {
            match result {
                Ok(()) => {
                    changed.insert(id);
                }
                Err(e) => {
                    broken.insert(id);
                    out[i].status = Status::Failed;
                    out[i].error = Some(e.to_string());
                }
            }
        }
    }

    /// Whether the batch should be committed before `next` joins it: at
    /// its size limits, or when `next` is in another directory. A batch
    /// per directory keeps one directory descriptor, fsyncs its directory
    /// right after its renames, and leaves each directory old or new as
    /// a whole after a crash while the next one is written.
    fn full(&mut self, next: &Step) -> bool {
        let dir = Path::new(&next.resource.name).parent();
        let other_dir = self.dir.as_deref() != dir;
        if other_dir {
            self.dir = dir.map(Path::to_path_buf);
        }
        !self.batch.is_empty()
            && (other_dir
                || self.batch.len() >= MAX_BATCH_FILES
                || self.batch.bytes() >= MAX_BATCH_BYTES)
    }
}

/// Carries out one step's action.
fn run_action(
    step: &Step,
    action: &Action,
    desired: &DesiredState,
    opts: &ApplyOptions,
    packages: &mut PackageBatch,
) -> Result<(), BackendError> {
    let units = opts.backends.units;
    match action {
        Action::Node(a) => Ok(apply_node(&step.resource, a, desired, opts)?),
        Action::Package(_) => packages.result(&step.resource.name, opts),
        Action::Service(a) => units.converge(&step.resource.name, a),
        Action::DaemonReload => units
            .daemon_reload()
            .map_err(|e| e.context("systemctl daemon-reload")),
        Action::Restart { reload } => units.restart(&step.resource.name, *reload).map_err(|e| {
            e.context(format_args!(
                "{} after a change it is notified of",
                action.describe()
            ))
        }),
        Action::Group(g) => {
            let (tool, args) = g.args(&step.resource.name);
            opts.backends.accounts.run_tool(tool, &args)
        }
        Action::User(u) => apply_user(&step.resource.name, u, desired, opts),
        Action::Deferred => Ok(apply_deferred(&step.resource, desired, opts)?),
        Action::Command => Err("a command runs through run_command".into()),
    }
}

/// Why a step cannot run under this root, if it cannot: commands and
/// `validate:` run on the host, so not under another `--root`.
fn not_run_here(
    step: &Step,
    action: &Action,
    desired: &DesiredState,
    opts: &ApplyOptions,
) -> Option<String> {
    if opts.backends.commands.live {
        return None;
    }
    match action {
        Action::Command => Some(format!(
            "commands do not run under --root {}",
            opts.root.display()
        )),
        Action::Node(NodeAction::WriteFile { .. }) | Action::Deferred
            if step.resource.kind == Kind::File
                && desired
                    .files
                    .get(Path::new(&step.resource.name))
                    .is_some_and(|f| !f.validate.is_empty()) =>
        {
            Some(format!(
                "validate does not run under --root {}, so the file is not written",
                opts.root.display()
            ))
        }
        _ => None,
    }
}

/// Runs a declared command; its exit status and output tail go into the
/// outcome unless it is secret.
fn run_command(
    step: &Step,
    desired: &DesiredState,
    opts: &ApplyOptions,
    o: &mut Outcome,
) -> Result<(), String> {
    let spec = desired
        .commands
        .get(&step.resource.name)
        .ok_or("the command is not declared")?;
    let run = opts.backends.commands.run(spec)?;
    let ok = run.success();
    let status = run.status.clone();
    tracing::info!(command = %step.resource.name, status = %if spec.secret { "(secret)" } else { &status }, "command ran");
    if !spec.secret {
        o.run = Some(run);
    }
    if ok {
        Ok(())
    } else if spec.secret {
        Err("the command failed (secret: its status and output are not shown)".into())
    } else {
        Err(format!("`{}` failed ({status})", spec.run.join(" ")))
    }
}

/// Creates, changes or removes a user with the account tools, then writes
/// its `authorized_keys` (owned by the user, in a 0700 `~/.ssh`).
fn apply_user(
    name: &str,
    action: &user::UserAction,
    desired: &DesiredState,
    opts: &ApplyOptions,
) -> Result<(), BackendError> {
    let accounts = opts.backends.accounts;
    if let Some((tool, args)) = action.tool(name) {
        accounts.run_tool(tool, &args)?;
    }
    if !action.write_keys {
        return Ok(());
    }
    let spec = desired.users.get(name).ok_or("the user is not declared")?;
    let keys = spec.authorized_keys.as_deref().unwrap_or_default();
    let db = accounts.observe()?;
    let entry = db
        .users
        .get(name)
        .ok_or_else(|| format!("user '{name}' is not in the user database after creating it"))?;
    let home = user::home_of(spec, Some(entry)).unwrap_or_default();
    let keys_path = user::keys_path(&home);
    let ssh_dir = keys_path.parent().unwrap_or(Path::new("/"));
    let (uid, gid) = (Some(entry.uid), Some(entry.gid));
    let dir_action =
        match node::observe_node(opts.root, ssh_dir, false).map_err(|e| e.to_string())? {
            node::NodeObservation::Missing => NodeAction::CreateDirectory {
                uid,
                gid,
                mode: user::SSH_DIR_MODE,
            },
            node::NodeObservation::Directory { .. } => NodeAction::SetMetadata {
                uid,
                gid,
                mode: Some(user::SSH_DIR_MODE),
            },
            other => {
                return Err(format!(
                    "{} is a {}, not a directory",
                    ssh_dir.display(),
                    other.describe()
                )
                .into());
            }
        };
    node::execute(opts.root, ssh_dir, &dir_action)?;
    let previous = node::Previous::of(
        node::observe_node(opts.root, &keys_path, true).map_err(|e| e.to_string())?,
    );
    if let Some(prev) = &previous {
        backup(&opts.backup_dir, &keys_path, prev)?;
    }
    let write = NodeAction::WriteFile {
        content: node::NewContent::new(user::keys_content(keys).into()),
        uid,
        gid,
        mode: user::KEYS_MODE,
        previous,
    };
    Ok(node::execute(opts.root, &keys_path, &write)?)
}

/// A node whose owner or group was pending at planning: names are looked
/// up afresh now that packages, groups and users ran, the node observed
/// and compared again, and converged. A name still missing fails this
/// node alone.
fn apply_deferred(
    id: &ResourceId,
    desired: &DesiredState,
    opts: &ApplyOptions,
) -> Result<(), String> {
    let path = Path::new(&id.name);
    let lookup = opts.backends.accounts.lookup();
    let obs =
        |want_content| node::observe_node(opts.root, path, want_content).map_err(|e| e.to_string());
    let (_, action) = match id.kind {
        Kind::File => {
            let spec = desired.files.get(path).ok_or("the file is not declared")?;
            let want = WantedMeta::resolve(
                spec.owner.as_deref(),
                spec.group.as_deref(),
                spec.mode,
                &*lookup,
            )?;
            crate::resource::file::diff(path, spec, &want, obs(true)?, &*lookup)
        }
        Kind::Directory => {
            let spec = desired
                .directories
                .get(path)
                .ok_or("the directory is not declared")?;
            let want = WantedMeta::resolve(
                spec.owner.as_deref(),
                spec.group.as_deref(),
                spec.mode,
                &*lookup,
            )?;
            crate::resource::directory::diff(path, spec, &want, obs(false)?, &*lookup)
        }
        _ => return Err(format!("{id} cannot wait for its owner")),
    };
    match action {
        Some(a) => apply_node(id, &a, desired, opts),
        None => Ok(()),
    }
}

/// Every package change of the plan, handed to the backend in one batch
/// when the first package step runs.
struct PackageBatch {
    changes: Vec<PackageChange>,
    results: Option<BTreeMap<String, Result<(), BackendError>>>,
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

    fn result(&mut self, name: &str, opts: &ApplyOptions) -> Result<(), BackendError> {
        let changes = &self.changes;
        self.results
            .get_or_insert_with(|| {
                let results = match opts.backends.packages {
                    Some(b) => b.change(changes),
                    None => vec![Err(BackendError::permanent("no package backend")); changes.len()],
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
    Failed(BackendError),
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
            FollowUp::Failed(e) => o.fail(e),
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
    // The content comes with the step; the spec only says whether a
    // `validate:` command must accept it first.
    let spec = match id.kind {
        Kind::File => desired.files.get(path),
        _ => None,
    };
    if let (
        Some(spec),
        NodeAction::WriteFile {
            content,
            uid,
            gid,
            mode,
            ..
        },
    ) = (spec, action)
        && !spec.validate.is_empty()
    {
        let meta = (*uid, *gid, *mode);
        let bytes = content.bytes()?;
        return write_validated(opts, path, &spec.validate, &bytes, meta, spec.secret);
    }
    node::execute(opts.root, path, action)
}

/// Writes a file whose `validate:` command must accept the new content
/// first; when it does not, the file stays as it was and the error holds
/// the command's own words.
fn write_validated(
    opts: &ApplyOptions,
    path: &Path,
    argv: &[String],
    content: &[u8],
    (uid, gid, mode): (Option<u32>, Option<u32>, u32),
    secret: bool,
) -> Result<(), String> {
    let entry = crate::safe_fs::Entry::open(opts.root, path, true)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: the parent directory is missing", path.display()))?;
    let runner = opts.backends.commands;
    let mut check = |tmp: &Path| {
        let run = runner.validate(argv, tmp)?;
        if run.success() {
            Ok(())
        } else if secret {
            // A validator may quote the content it refuses.
            Err(format!(
                "validate `{}` refused the new content ({}); its output is not shown for a secret file; the file was not replaced",
                argv.join(" "),
                run.status
            ))
        } else {
            Err(format!(
                "validate `{}` refused the new content ({}): {}; the file was not replaced",
                argv.join(" "),
                run.status,
                crate::resource::tool::tail(&run.output, 12)
            ))
        }
    };
    entry
        .write_atomic_validated(content, uid, gid, mode, &mut check)
        .map_err(|e| e.to_string())
}

/// Keeps what is about to be replaced: `<backup_dir>/<path>` holds the old
/// content; for a symlink, `<path>.symlink` holds its target.
fn backup(backup_dir: &Path, path: &Path, prev: &Previous) -> Result<(), String> {
    make_backup_dir(backup_dir)?;
    let (dest, bytes) = backup_path(backup_dir, path, prev);
    crate::safe_fs::write_own_file(&dest, bytes, 0o600)
        .map_err(|e| format!("keeping the replaced content in {}: {e}", dest.display()))
}

fn make_backup_dir(backup_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if !backup_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(backup_dir)
            .map_err(|e| format!("creating backup directory {}: {e}", backup_dir.display()))?;
    }
    Ok(())
}

/// `backup` for a file in a `StagedWrites` batch: written straight to its
/// name in this run's own backup directory, without a sync, since the
/// batch syncs that file system before it replaces anything. A crash
/// before then may leave a torn backup, but of a file still untouched.
fn backup_unsynced(backup_dir: &Path, path: &Path, prev: &Previous) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (dest, bytes) = backup_path(backup_dir, path, prev);
    let fail =
        |e: std::io::Error| format!("keeping the replaced content in {}: {e}", dest.display());
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&dest)
        .and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        // A partial backup is no backup: the step fails, the file stays.
        let _ = std::fs::remove_file(&dest);
        return Err(fail(e));
    }
    Ok(())
}

/// Where the backup of `path` goes, and what it holds.
fn backup_path<'a>(backup_dir: &Path, path: &Path, prev: &'a Previous) -> (PathBuf, &'a [u8]) {
    use std::os::unix::ffi::OsStrExt;
    let rel = path.strip_prefix("/").unwrap_or(path);
    match prev {
        Previous::Content(c) => (backup_dir.join(rel), &c[..]),
        Previous::Link(t) => {
            let mut name = rel.as_os_str().to_os_string();
            name.push(".symlink");
            (backup_dir.join(name), t.as_os_str().as_bytes())
        }
    }
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
            content: Some(FileContent::new(
                content.as_bytes().to_vec().into(),
                "content".into(),
            )),
            owner: None,
            group: None,
            mode: None,
            notify: notify.iter().map(|s| s.to_string()).collect(),
            notify_action: action,
            notify_actions: Default::default(),
            secret: false,
            validate: vec![],
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
        accounts: crate::resource::fake::FakeAccountDb,
        /// Whether commands run (real processes, on this machine).
        live: bool,
    }

    impl Host {
        fn new(packages: FakePackages, units: FakeUnits) -> Host {
            Host {
                root: tempfile::tempdir().unwrap(),
                backup: tempfile::tempdir().unwrap(),
                packages,
                units,
                accounts: Default::default(),
                live: false,
            }
        }

        fn backends(&self) -> Backends<'_> {
            Backends {
                packages: Some(&self.packages),
                units: &self.units,
                accounts: &self.accounts,
                commands: crate::resource::command::Runner { live: self.live },
            }
        }

        fn plan(&self, d: &DesiredState) -> Plan {
            let obs = crate::resource::observe::observe(self.root.path(), d, &self.backends());
            plan::plan(d, obs, &FakeAccounts).unwrap()
        }

        fn apply(&self, d: &DesiredState) -> Vec<Outcome> {
            self.apply_plan(&self.plan(d), d, &|| false)
        }

        fn apply_plan(&self, p: &Plan, d: &DesiredState, stop: &dyn Fn() -> bool) -> Vec<Outcome> {
            apply(
                p,
                d,
                &ApplyOptions {
                    root: self.root.path(),
                    backup_dir: self.backup.path().join("b"),
                    stop,
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
    fn staged_content_is_let_go_once_written() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let mut d = DesiredState::default();
        for n in 0..3 {
            let body = format!("n={n}\n");
            d.files.insert(
                format!("/etc/app/{n}.conf").into(),
                file(&body, &[], NotifyAction::Restart),
            );
        }
        let p = h.plan(&d);
        d.release_file_contents(&|_| false);
        let out = h.apply_plan(&p, &d, &|| false);
        let files = out.iter().filter(|o| o.kind == Kind::File);
        assert!(files.clone().count() == 3 && files.clone().all(|o| o.status == Status::Changed));
        for n in 0..3 {
            let on_disk = std::fs::read(h.root.path().join(format!("etc/app/{n}.conf"))).unwrap();
            assert_eq!(on_disk, format!("n={n}\n").as_bytes());
        }
        // Neither the desired state nor the steps hold the bytes any more.
        assert!(
            d.files
                .values()
                .all(|f| f.content.as_ref().unwrap().bytes.is_empty())
        );
        for step in &p.steps {
            if let Some(Action::Node(NodeAction::WriteFile { content, .. })) = &step.action {
                assert!(content.is_released(), "{}", step.resource);
                assert!(content.bytes().is_err());
            }
        }
    }

    /// Offers every file of `d` but those named in `keep`, as the render
    /// stage does, and waits for the thread.
    fn write_ahead(h: &Host, d: &mut DesiredState, keep: &[&str]) {
        let ahead = crate::prestage::Prestager::start(h.root.path(), &[]).unwrap();
        for (path, spec) in d.files.iter_mut() {
            if !keep.iter().any(|k| path == Path::new(k)) {
                ahead.offer(path, spec);
            }
        }
        ahead.finish();
    }

    #[test]
    fn a_file_written_ahead_is_taken_when_the_plan_writes_it_to_a_missing_path() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let mut d = DesiredState::default();
        let names = ["taken", "other-mode", "appeared", "plain"];
        for name in names {
            d.files.insert(
                format!("/etc/app/{name}.conf").into(),
                file(&format!("{name}\n"), &[], NotifyAction::Restart),
            );
        }
        write_ahead(&h, &mut d, &["/etc/app/plain.conf"]);
        // Written ahead: the spec holds the file, not the bytes.
        for (path, spec) in &d.files {
            let content = spec.content.as_ref().unwrap();
            let offered = path != Path::new("/etc/app/plain.conf");
            assert_eq!(content.bytes.is_empty(), offered, "{}", path.display());
            assert_eq!(
                content.ahead.as_ref().is_some_and(|a| a.is_written()),
                offered,
                "{}",
                path.display()
            );
        }
        let ahead_of = |d: &DesiredState, name: &str| {
            let path = PathBuf::from(format!("/etc/app/{name}.conf"));
            d.files[&path]
                .content
                .as_ref()
                .unwrap()
                .ahead
                .clone()
                .unwrap()
        };
        let taken_inode = ahead_of(&d, "taken").inode().unwrap();
        // The plan writes another mode than the file was written with.
        d.files
            .get_mut(Path::new("/etc/app/other-mode.conf"))
            .unwrap()
            .mode = Some(0o600);
        // A file appears before the plan: it is replaced, and kept.
        std::fs::create_dir_all(h.root.path().join("etc/app")).unwrap();
        std::fs::write(h.root.path().join("etc/app/appeared.conf"), "old\n").unwrap();
        let p = h.plan(&d);
        d.release_file_contents(&|_| false);
        let out = h.apply_plan(&p, &d, &|| false);
        assert!(
            out.iter()
                .filter(|o| o.kind == Kind::File)
                .all(|o| o.status == Status::Changed),
            "{out:?}"
        );
        for name in names {
            let path = h.root.path().join(format!("etc/app/{name}.conf"));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{name}\n"));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            let want = if name == "other-mode" { 0o600 } else { 0o644 };
            assert_eq!(mode, want, "{name}");
        }
        // The file written ahead is the one in place.
        let in_place = std::fs::metadata(h.root.path().join("etc/app/taken.conf")).unwrap();
        assert_eq!(in_place.ino(), taken_inode);
        assert_eq!(
            std::fs::read_to_string(h.backup.path().join("b/etc/app/appeared.conf")).unwrap(),
            "old\n"
        );
        assert_eq!(
            std::fs::read_dir(h.root.path().join("etc/app"))
                .unwrap()
                .count(),
            4
        );
        for step in &p.steps {
            if let Some(Action::Node(NodeAction::WriteFile { content, .. })) = &step.action {
                assert!(content.is_released(), "{}", step.resource);
            }
        }
    }

    #[test]
    fn the_bytes_of_a_file_written_ahead_are_read_back_as_written() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let mut d = DesiredState::default();
        let body: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        d.files.insert(
            "/etc/app/big.conf".into(),
            file(&body, &[], NotifyAction::Restart),
        );
        write_ahead(&h, &mut d, &[]);
        let content = d.files[Path::new("/etc/app/big.conf")]
            .content
            .as_ref()
            .unwrap();
        assert!(content.bytes.is_empty());
        assert_eq!(&content.current().unwrap()[..], body.as_bytes());
        let (len, sha256) = content.digest().unwrap();
        assert_eq!(len, body.len() as u64);
        use sha2::Digest;
        assert_eq!(sha256[..], sha2::Sha256::digest(body.as_bytes())[..]);
        // Taken by an apply, it is gone: nothing reads it again.
        let ahead = content.ahead.clone().unwrap();
        let file = ahead.take(0o644).unwrap();
        assert!(ahead.bytes().is_err());
        ahead.give_back(file);
        assert_eq!(&ahead.bytes().unwrap()[..], body.as_bytes());
    }

    #[test]
    fn a_stopped_apply_names_no_file_written_ahead() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let mut d = DesiredState::default();
        d.files.insert(
            "/etc/app/a.conf".into(),
            file("a\n", &[], NotifyAction::Restart),
        );
        write_ahead(&h, &mut d, &[]);
        let written = |d: &DesiredState| {
            d.files[Path::new("/etc/app/a.conf")]
                .content
                .as_ref()
                .unwrap()
                .ahead
                .as_ref()
                .is_some_and(|a| a.is_written())
        };
        assert!(written(&d));
        let out = h.apply_plan(&h.plan(&d), &d, &|| true);
        assert_eq!(out[0].status, Status::Skipped, "{out:?}");
        assert!(!h.root.path().join("etc/app").exists());
        assert_eq!(std::fs::read_dir(h.root.path()).unwrap().count(), 0);
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

    /// A package that could not be installed because another apt held
    /// the dpkg lock fails with apt's words and a transient class; one no
    /// source has fails permanent. The run's report calls for a retry
    /// soon when any failure is transient, and not when all are permanent.
    #[test]
    fn a_held_dpkg_lock_fails_its_package_and_the_run_transiently() {
        use crate::error_class::ErrorClass;
        use crate::report::{Mode, RunReport, RunStatus, SourceInfo};
        let lock = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by \
                    process 4711 (unattended-upgr)";
        let missing = "E: Unable to locate package tool";
        let mut packages = FakePackages::default();
        packages.refused.insert("app".into(), lock.into());
        packages.refused.insert("tool".into(), missing.into());
        let h = Host::new(packages, FakeUnits::new(&[]));
        let out = h.apply(&app_state());
        let r = by_resource(&out);
        let class = |name: &str| {
            out.iter()
                .find(|o| o.resource == name)
                .map(|o| (o.status, o.error_class))
        };
        assert_eq!(r["package app"].2.as_deref(), Some(lock));
        assert_eq!(
            class("app"),
            Some((Status::Failed, Some(ErrorClass::Transient)))
        );
        assert_eq!(
            class("tool"),
            Some((Status::Failed, Some(ErrorClass::Permanent)))
        );
        assert_eq!(class("app.service"), Some((Status::Skipped, None)));
        let report = |outcomes: Vec<Outcome>| {
            RunReport::from_outcomes(
                "h",
                Mode::Apply,
                false,
                std::time::SystemTime::now(),
                SourceInfo::default(),
                outcomes,
            )
        };
        let run = report(out.clone());
        assert_eq!(
            (run.status, run.error_class),
            (RunStatus::Failed, Some(ErrorClass::Transient))
        );
        // The class is for the agent alone: the report's JSON is as before.
        let json = serde_json::to_string(&run).unwrap();
        assert!(!json.contains("class"), "{json}");
        let permanent: Vec<Outcome> = out.into_iter().filter(|o| o.resource != "app").collect();
        let run = report(permanent);
        assert_eq!(
            (run.status, run.error_class),
            (RunStatus::Failed, Some(ErrorClass::Permanent))
        );
    }

    #[test]
    fn a_restart_that_times_out_fails_its_service_transiently() {
        use crate::error_class::ErrorClass;
        let mut units = FakeUnits::new(&[("app.service", true, true)]);
        units.restart_error = Some(crate::resource::BackendError::from(
            crate::resource::tool::ToolError::TimedOut {
                command: "systemctl try-restart -- app.service".into(),
                after: std::time::Duration::from_secs(300),
                output: "(no output)".into(),
            },
        ));
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            units,
        );
        let out = h.apply(&app_state());
        let service = out.iter().find(|o| o.resource == "app.service").unwrap();
        assert_eq!(service.status, Status::Failed);
        let error = service.error.as_deref().unwrap();
        assert!(
            error.starts_with("restart after a change it is notified of: `systemctl try-restart"),
            "{error}"
        );
        assert_eq!(service.error_class, Some(ErrorClass::Transient));
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
        let obs: Observations = crate::resource::observe::observe(h.root.path(), &d, &h.backends());
        assert!(obs.packages.is_none());
        assert!(h.units.calls().is_empty());
    }

    #[test]
    fn stop_before_the_batch_skips_every_package() {
        let h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        let d = app_state();
        let p = h.plan(&d);
        let out = h.apply_plan(&p, &d, &|| true);
        assert!(h.packages.batches.borrow().is_empty());
        assert!(out.iter().all(|o| o.status == Status::Skipped), "{out:?}");
    }

    // --- users, groups, commands, validate, pending owners -------------

    use crate::desired::{CommandSpec, GroupSpec, UserSpec};
    use crate::resource::group::GroupEntry;
    use crate::resource::user::{AccountControl, PasswdEntry};

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    /// A host whose account database holds root, `adm` and `olduser`;
    /// owners resolve from that database, and commands run for real.
    fn account_host() -> Host {
        let mut h = Host::new(FakePackages::default(), FakeUnits::new(&[]));
        h.live = true;
        {
            let mut db = h.accounts.db.borrow_mut();
            for (name, id) in [("root", 0), ("olduser", 4000)] {
                db.users.insert(
                    name.into(),
                    PasswdEntry {
                        name: name.into(),
                        uid: id,
                        gid: id,
                        home: format!("/home/{name}"),
                        shell: "/bin/sh".into(),
                    },
                );
            }
            for (name, id) in [("root", 0), ("adm", 4)] {
                db.groups.insert(
                    name.into(),
                    GroupEntry {
                        name: name.into(),
                        gid: id,
                        members: vec![],
                    },
                );
            }
        }
        h
    }

    impl Host {
        /// Plans with owners looked up in the (fake) account database.
        fn plan_accounts(&self, d: &DesiredState) -> Result<Plan, Vec<plan::PlanError>> {
            let obs = crate::resource::observe::observe(self.root.path(), d, &self.backends());
            plan::plan(d, obs, &*self.accounts.lookup())
        }

        fn apply_accounts(&self, d: &DesiredState) -> Vec<Outcome> {
            self.apply_plan(&self.plan_accounts(d).unwrap(), d, &|| false)
        }
    }

    fn app_user(uid: u32, keys: &[&str]) -> UserSpec {
        UserSpec {
            present: true,
            uid: Some(uid),
            group: Some("app".into()),
            groups: Some(vec!["adm".into()]),
            home: Some("/srv/app".into()),
            shell: Some("/usr/sbin/nologin".into()),
            system: true,
            authorized_keys: Some(keys.iter().map(|k| k.to_string()).collect()),
        }
    }

    fn accounts_state() -> DesiredState {
        let (uid, gid) = me();
        let mut d = DesiredState::default();
        d.groups.insert(
            "app".into(),
            GroupSpec {
                present: true,
                gid: Some(gid),
                system: true,
            },
        );
        d.users.insert(
            "app".into(),
            app_user(uid, &["ssh-ed25519 AAAA ops@example.com"]),
        );
        d.users.insert(
            "olduser".into(),
            UserSpec {
                present: false,
                ..UserSpec::default()
            },
        );
        d
    }

    #[test]
    fn users_and_groups_converge_then_plan_nothing() {
        use std::os::unix::fs::MetadataExt;
        let h = account_host();
        let d = accounts_state();
        let p = h.plan_accounts(&d).unwrap();
        let order: Vec<String> = p.steps.iter().map(|s| s.resource.to_string()).collect();
        assert_eq!(order, ["group app", "user app", "user olduser"]);
        assert_eq!(p.steps[1].requires, [ResourceId::new(Kind::Group, "app")]);
        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["group app"].0, Status::Changed, "{r:?}");
        assert_eq!(r["user app"].0, Status::Changed, "{r:?}");
        assert_eq!(
            r["user app"].1.as_deref(),
            Some("create, write authorized_keys")
        );
        assert_eq!(r["user olduser"].0, Status::Changed);
        let calls = h.accounts.calls.borrow().clone();
        assert!(calls[0].starts_with("groupadd --gid"), "{calls:?}");
        assert!(calls[1].starts_with("useradd --uid"), "{calls:?}");
        assert_eq!(calls[2], "userdel -- olduser");
        let keys = h.root.path().join("srv/app/.ssh/authorized_keys");
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            "ssh-ed25519 AAAA ops@example.com\n"
        );
        let meta = std::fs::metadata(&keys).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.uid(), me().0);
        let dir = std::fs::metadata(keys.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o7777, 0o700);
        // In sync now.
        let again = h.plan_accounts(&d).unwrap();
        assert!(again.steps.iter().all(Step::in_sync), "{again:?}");

        // Drift by hand: a shell, an edited key file, then the user gone.
        h.accounts
            .run_tool(
                "usermod",
                &["--shell".into(), "/bin/bash".into(), "app".into()],
            )
            .unwrap();
        std::fs::write(&keys, "ssh-rsa BBBB intruder\n").unwrap();
        let p = h.plan_accounts(&d).unwrap();
        let user = p
            .steps
            .iter()
            .find(|s| s.resource.name == "app" && s.resource.kind == Kind::User)
            .unwrap();
        let attrs: Vec<_> = user.drift.iter().map(|d| d.attribute).collect();
        assert_eq!(
            attrs,
            [
                crate::resource::Attribute::Shell,
                crate::resource::Attribute::AuthorizedKeys
            ]
        );
        let out = h.apply_accounts(&d);
        assert_eq!(
            by_resource(&out)["user app"].1.as_deref(),
            Some("modify, write authorized_keys")
        );
        assert!(h.plan_accounts(&d).unwrap().steps.iter().all(Step::in_sync));
        // The replaced keys were kept.
        assert!(
            walk(h.backup.path())
                .iter()
                .any(|p| p.ends_with("srv/app/.ssh/authorized_keys")),
            "{:?}",
            walk(h.backup.path())
        );
        h.accounts.run_tool("userdel", &["app".into()]).unwrap();
        let out = h.apply_accounts(&d);
        assert_eq!(by_resource(&out)["user app"].0, Status::Changed);
        assert!(h.plan_accounts(&d).unwrap().steps.iter().all(Step::in_sync));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn a_file_owned_by_a_user_of_the_same_run_waits_for_it() {
        let h = account_host();
        let mut d = accounts_state();
        let mut conf = file("x=1\n", &[], NotifyAction::Restart);
        conf.owner = Some("app".into());
        conf.group = Some("app".into());
        d.files.insert("/etc/app.conf".into(), conf);
        let p = h.plan_accounts(&d).unwrap();
        let step = p
            .steps
            .iter()
            .find(|s| s.resource.kind == Kind::File)
            .unwrap();
        assert_eq!(step.action, Some(Action::Deferred));
        let shown: Vec<String> = step
            .drift
            .iter()
            .map(|d| format!("{} {}: {}", d.attribute.as_str(), d.expected, d.actual))
            .collect();
        assert_eq!(
            shown,
            [
                "presence file: absent",
                "owner app: not present yet",
                "group app: not present yet"
            ]
        );
        assert_eq!(
            step.requires,
            [
                ResourceId::new(Kind::User, "app"),
                ResourceId::new(Kind::Group, "app")
            ]
        );
        assert_eq!(
            check(&p)
                .iter()
                .filter(|o| o.status == Status::Drift)
                .count(),
            4
        );
        // As the pipeline does: the desired state lets go of the contents
        // the steps carry, but keeps a deferred file's.
        let deferred: HashSet<PathBuf> = p.deferred_files().into_iter().map(Into::into).collect();
        assert_eq!(deferred.len(), 1);
        let mut released = accounts_state();
        released.files = d.files.clone();
        released.release_file_contents(&|path| deferred.contains(path));
        let out = h.apply_plan(&p, &released, &|| false);
        assert_eq!(
            by_resource(&out)["file /etc/app.conf"].0,
            Status::Changed,
            "{out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(h.root.path().join("etc/app.conf")).unwrap(),
            "x=1\n"
        );
        assert!(h.plan_accounts(&d).unwrap().steps.iter().all(Step::in_sync));
    }

    #[test]
    fn a_missing_owner_is_pending_only_while_something_could_create_it() {
        let h = account_host();
        let mut d = DesiredState::default();
        let mut conf = file("x\n", &[], NotifyAction::Restart);
        conf.owner = Some("uuidd".into());
        d.files.insert("/etc/uuidd.conf".into(), conf);
        d.files
            .insert("/etc/motd".into(), file("hi\n", &[], NotifyAction::Restart));
        let errs = h.plan_accounts(&d).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "file /etc/uuidd.conf: owner 'uuidd' does not exist"
        );
        // A package to install may create it; this one does not: the file
        // fails alone, the rest of the run goes on.
        d.packages.insert("uuid-runtime".into(), present());
        let p = h.plan_accounts(&d).unwrap();
        let step = p
            .steps
            .iter()
            .find(|s| s.resource.name == "/etc/uuidd.conf")
            .unwrap();
        assert_eq!(step.action, Some(Action::Deferred));
        assert!(step.requires.is_empty());
        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["package uuid-runtime"].0, Status::Changed);
        assert_eq!(r["file /etc/motd"].0, Status::Changed);
        assert_eq!(r["file /etc/uuidd.conf"].0, Status::Failed);
        assert_eq!(
            r["file /etc/uuidd.conf"].2.as_deref(),
            Some("owner 'uuidd' does not exist")
        );
        // Installed now, and still no uuidd: the branch is broken again.
        assert!(h.plan_accounts(&d).is_err());
    }

    fn command(run: &[&str]) -> CommandSpec {
        CommandSpec {
            run: run.iter().map(|s| s.to_string()).collect(),
            timeout_secs: 30,
            ..CommandSpec::default()
        }
    }

    #[test]
    fn commands_run_when_their_file_changes_or_their_guard_says() {
        let h = account_host();
        let marker = h.root.path().join("ran");
        let done = h.root.path().join("done");
        let mut d = DesiredState::default();
        d.files.insert(
            "/etc/sysctl.d/90-app.conf".into(),
            file("a=1\n", &[], NotifyAction::Restart),
        );
        let mut reload = command(&[
            "sh",
            "-c",
            "echo reload >> \"$0\"; echo reloaded",
            marker.to_str().unwrap(),
        ]);
        reload.on_change = vec![ResourceId::new(Kind::File, "/etc/sysctl.d/90-app.conf")];
        d.commands.insert("sysctl-reload".into(), reload);
        let mut init = command(&[
            "sh",
            "-c",
            "echo init >> \"$0\" && touch \"$1\"",
            marker.to_str().unwrap(),
            done.to_str().unwrap(),
        ]);
        init.creates = Some("/done".into());
        d.commands.insert("init-db".into(), init);
        let p = h.plan_accounts(&d).unwrap();
        let order: Vec<String> = p.steps.iter().map(|s| s.resource.to_string()).collect();
        assert_eq!(
            order,
            [
                "file /etc/sysctl.d/90-app.conf",
                "command init-db",
                "command sysctl-reload"
            ]
        );
        let checked = check(&p);
        assert_eq!(checked.len(), 3, "check lists the commands that would run");
        assert!(
            checked.iter().all(|o| o.status == Status::Drift),
            "{checked:?}"
        );

        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["command sysctl-reload"].0, Status::Changed, "{out:?}");
        assert_eq!(r["command init-db"].0, Status::Changed);
        let run = out
            .iter()
            .find(|o| o.resource == "sysctl-reload")
            .unwrap()
            .run
            .clone()
            .unwrap();
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.output, "reloaded\n");
        let runs = || std::fs::read_to_string(&marker).unwrap();
        assert_eq!(runs(), "init\nreload\n");

        // Nothing changed: nothing runs, nothing is due.
        let p = h.plan_accounts(&d).unwrap();
        assert!(p.steps.iter().all(Step::in_sync), "{p:?}");
        let out = h.apply_accounts(&d);
        assert!(out.iter().all(|o| o.status == Status::InSync), "{out:?}");
        assert_eq!(runs(), "init\nreload\n");

        // The file changes: only the on_change command runs.
        d.files.insert(
            "/etc/sysctl.d/90-app.conf".into(),
            file("a=2\n", &[], NotifyAction::Restart),
        );
        h.apply_accounts(&d);
        assert_eq!(runs(), "init\nreload\nreload\n");
    }

    #[test]
    fn a_failing_or_secret_command_and_one_under_another_root() {
        let mut h = account_host();
        let mut d = DesiredState::default();
        let mut bad = command(&["sh", "-c", "echo oops; exit 4"]);
        bad.creates = Some("/never".into());
        d.commands.insert("bad".into(), bad.clone());
        let mut secret = command(&["sh", "-c", "echo hunter2; exit 1"]);
        secret.creates = Some("/never".into());
        secret.secret = true;
        d.commands.insert("secret".into(), secret);
        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["command bad"].0, Status::Failed);
        assert_eq!(
            r["command bad"].2.as_deref(),
            Some("`sh -c echo oops; exit 4` failed (exit status 4)")
        );
        let run = out
            .iter()
            .find(|o| o.resource == "bad")
            .unwrap()
            .run
            .clone()
            .unwrap();
        assert_eq!((run.exit_code, run.output.as_str()), (Some(4), "oops\n"));
        let s = out.iter().find(|o| o.resource == "secret").unwrap();
        assert_eq!(s.status, Status::Failed);
        assert!(s.run.is_none());
        assert!(!format!("{s:?}").contains("hunter2"));

        h.live = false;
        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["command bad"].0, Status::Skipped);
        assert!(
            r["command bad"]
                .2
                .as_deref()
                .unwrap()
                .starts_with("commands do not run under --root")
        );
    }

    #[test]
    fn a_secret_file_refused_by_validate_does_not_show_the_output() {
        let h = account_host();
        let mut d = DesiredState::default();
        let mut key = file("hunter2\n", &[], NotifyAction::Restart);
        key.secret = true;
        key.validate = ["sh", "-c", "cat \"$0\"; exit 1", "{path}"]
            .map(String::from)
            .to_vec();
        d.files.insert("/etc/app.key".into(), key);
        let out = h.apply_accounts(&d);
        let o = &out[0];
        assert_eq!(o.status, Status::Failed);
        let err = o.error.as_deref().unwrap();
        assert!(
            err.contains("exit status 1") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(!h.root.path().join("etc/app.key").exists());
    }

    #[test]
    fn validate_keeps_the_old_file_when_the_new_content_is_refused() {
        let h = account_host();
        std::fs::create_dir_all(h.root.path().join("etc/sudoers.d")).unwrap();
        std::fs::write(h.root.path().join("etc/sudoers.d/app"), "good old\n").unwrap();
        let argv: Vec<String> = [
            "sh",
            "-c",
            "grep -q good \"$0\" || { echo \"$0: syntax error near line 1\" >&2; exit 1; }",
            "{path}",
        ]
        .map(String::from)
        .to_vec();
        let mut d = DesiredState::default();
        let mut sudoers = file("bad new\n", &[], NotifyAction::Restart);
        sudoers.validate = argv.clone();
        d.files.insert("/etc/sudoers.d/app".into(), sudoers);
        d.files
            .insert("/etc/motd".into(), file("hi\n", &[], NotifyAction::Restart));
        let out = h.apply_accounts(&d);
        let r = by_resource(&out);
        assert_eq!(r["file /etc/sudoers.d/app"].0, Status::Failed);
        let err = r["file /etc/sudoers.d/app"].2.clone().unwrap();
        assert!(err.contains("syntax error near line 1"), "{err}");
        assert!(err.contains("the file was not replaced"), "{err}");
        assert_eq!(r["file /etc/motd"].0, Status::Changed);
        assert_eq!(
            std::fs::read_to_string(h.root.path().join("etc/sudoers.d/app")).unwrap(),
            "good old\n"
        );
        let left: Vec<_> = std::fs::read_dir(h.root.path().join("etc/sudoers.d"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        // Accepted content is written; then nothing to do.
        let mut sudoers = file("good new\n", &[], NotifyAction::Restart);
        sudoers.validate = argv;
        d.files.insert("/etc/sudoers.d/app".into(), sudoers);
        let out = h.apply_accounts(&d);
        assert_eq!(
            by_resource(&out)["file /etc/sudoers.d/app"].0,
            Status::Changed
        );
        assert_eq!(
            std::fs::read_to_string(h.root.path().join("etc/sudoers.d/app")).unwrap(),
            "good new\n"
        );
        assert!(h.plan_accounts(&d).unwrap().steps.iter().all(Step::in_sync));
    }

    #[test]
    fn notify_mapping_reloads_per_unit() {
        let h = Host::new(
            FakePackages::with(&[("app", "1.0"), ("tool", "1.0")]),
            FakeUnits::new(&[("app.service", true, true), ("web.service", true, true)]),
        );
        let mut d = app_state();
        d.services.insert("web.service".into(), running(None));
        let conf = d.files.get_mut(Path::new("/etc/app.conf")).unwrap();
        conf.notify = vec!["app.service".into(), "web.service".into()];
        conf.notify_actions = [
            ("app.service".to_string(), NotifyAction::Reload),
            ("web.service".to_string(), NotifyAction::Restart),
        ]
        .into();
        h.apply(&d);
        let calls = h.units.calls();
        assert!(
            calls.contains(&"reload app.service".to_string()),
            "{calls:?}"
        );
        assert!(
            calls.contains(&"try-restart web.service".to_string()),
            "{calls:?}"
        );
    }
}
