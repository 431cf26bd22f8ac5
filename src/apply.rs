//! Executes a `Plan`.
//!
//! Steps run in plan order. A failing step does not stop the others; a step
//! whose required resource failed or was skipped is skipped, with the reason.
//! Content that a step replaces or removes is first kept under the run's
//! backup directory; if that copy cannot be written the step fails and the
//! file is left as it was.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::DesiredState;
use crate::plan::{Action, Plan, Step};
use crate::resource::node::{self, Previous};
use crate::resource::{Drift, Kind, ResourceId};

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
pub fn check(plan: &Plan) -> Vec<Outcome> {
    plan.steps
        .iter()
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
}

/// Executes the plan and returns one outcome per step.
pub fn apply(plan: &Plan, desired: &DesiredState, opts: &ApplyOptions) -> Vec<Outcome> {
    let mut broken: HashSet<&ResourceId> = HashSet::new();
    let mut out = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
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
        if (opts.stop)() {
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
        let result = match action {
            Action::Node(a) => apply_node(&step.resource, a, desired, opts),
        };
        let mut o = Outcome::new(step, Status::Changed);
        if let Err(e) = result {
            broken.insert(&step.resource);
            o.status = Status::Failed;
            o.error = Some(e);
        }
        out.push(o);
    }
    out
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
            .map(|c| c.bytes.as_slice()),
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
        Previous::Content(c) => (backup_dir.join(rel), c.as_slice()),
        Previous::Link(t) => {
            let mut name = rel.as_os_str().to_os_string();
            name.push(".symlink");
            (backup_dir.join(name), t.as_os_str().as_bytes())
        }
    };
    crate::safe_fs::write_own_file(&dest, bytes, 0o600)
        .map_err(|e| format!("keeping the replaced content in {}: {e}", dest.display()))
}
