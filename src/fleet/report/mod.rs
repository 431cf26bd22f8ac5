//! `trueup fleet report`: a static site a person opens in a browser,
//! generated from the hosts' Git notes alone.
//!
//! `index.html` shows the counts per status (and the stale, disabled and
//! audit flags), the rollout (hosts per applied commit, newest first) and
//! the host table; `by-*.html` hold the same table sorted by another
//! column and `status-*.html` the hosts of one status, so sorting and
//! filtering need no script; `hosts/<ref>.html` shows one host's latest
//! run in full, its timeline, health checks and facts. Pages carry their
//! CSS inline and load nothing, so they work from `file://` and behind any
//! static web server.
//!
//! Notes are untrusted: the model reads them leniently (`model`), and the
//! HTML layer escapes every value (`html`).

pub mod html;
pub mod model;
pub mod read;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::safe_fs::{Entry, SafeFsError, WriteBatch};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report's templates do not parse: {0}")]
    Template(#[from] Box<handlebars::TemplateError>),
    #[error("rendering the report: {0}")]
    Render(#[from] Box<handlebars::RenderError>),
    #[error("writing the report: {0}")]
    Write(#[from] SafeFsError),
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub hosts: usize,
    pub pages: usize,
    pub bytes: u64,
}

/// Renders the fleet as pages (no I/O).
pub fn render(
    hosts: &[model::HostNotes],
    graph: &dyn model::CommitGraph,
    repository: &str,
    now: SystemTime,
) -> Result<(model::FleetView, Vec<html::Page>), ReportError> {
    let view = model::fleet(hosts, graph, now);
    let hb = html::engine().map_err(Box::new)?;
    let pages = html::render(&hb, &view, repository).map_err(Box::new)?;
    Ok((view, pages))
}

/// Writes the site under `out` (created if missing). Every page is
/// replaced atomically, without following a symlink inside `out`; host
/// pages of hosts no longer in the fleet are removed from `out/hosts`.
pub fn write_site(out: &Path, pages: &[html::Page]) -> Result<Written, ReportError> {
    std::fs::create_dir_all(out.join("hosts")).map_err(|e| ReportError::Io {
        path: out.join("hosts"),
        detail: e.to_string(),
    })?;
    // One batch: every page written, one syncfs, then the renames, so a
    // site of 10,000 pages does not pay two fsyncs a page.
    let mut batch = WriteBatch::default();
    // Kept open until the batch is committed: it stages into them.
    let mut entries = Vec::with_capacity(pages.len());
    for page in pages {
        let path = PathBuf::from("/").join(&page.path);
        let entry = Entry::open(out, &path, true)?.ok_or_else(|| ReportError::Io {
            path: out.join(&page.path),
            detail: "its directory is missing".into(),
        })?;
        entry.stage_file(&mut batch, page.html.as_bytes(), None, None, 0o644, false)?;
        entries.push(entry);
    }
    let bytes = batch.bytes();
    for result in batch.commit() {
        result?;
    }
    remove_gone_hosts(out, pages)?;
    Ok(Written {
        hosts: pages
            .iter()
            .filter(|p| p.path.starts_with("hosts/"))
            .count(),
        pages: pages.len(),
        bytes,
    })
}

/// Removes `hosts/*.html` pages this run did not write (hosts whose notes
/// ref is gone), so the site never links a stale page by accident.
fn remove_gone_hosts(out: &Path, pages: &[html::Page]) -> Result<(), ReportError> {
    let written: HashSet<&str> = pages
        .iter()
        .filter_map(|p| p.path.strip_prefix("hosts/"))
        .collect();
    let dir = out.join("hosts");
    let io = |e: std::io::Error| ReportError::Io {
        path: dir.clone(),
        detail: e.to_string(),
    };
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".html")
            && !written.contains(name)
            && entry.file_type().map_err(io)?.is_file()
        {
            std::fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    Ok(())
}

/// Reads the fleet (branches from `remote`, notes from `reports`, which
/// may be the same repository) and writes the site under `out`.
pub fn generate(
    remote: &crate::source::remote::RemoteUrl,
    reports: &crate::source::remote::RemoteUrl,
    auth: &crate::config::Auth,
    out: &Path,
    now: SystemTime,
) -> anyhow::Result<Written> {
    use anyhow::Context;
    let fleet = read::read_fleet(remote, reports, auth)
        .with_context(|| format!("reading the notes of {}", reports.redacted()))?;
    let (_, pages) = render(&fleet.hosts, &fleet, remote.redacted(), now)?;
    write_site(out, &pages).with_context(|| format!("writing the report to {}", out.display()))
}
