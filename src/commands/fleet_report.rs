//! `trueup fleet report --out DIR`: writes the fleet's static HTML report
//! from the repository's notes, and says where it is.

use super::out::outln;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Common, Format, exit};

/// Reads the branches of `--source` (or `repo`) and the notes where
/// `--reports` or fleet.yaml says, and writes the site to `out`.
pub fn fleet_report(common: &Common, reports: Option<&str>, out: &Path) -> Result<i32> {
    let Some(source) = common.settings.repo.as_deref() else {
        bail!("no repository: give --source URL or set repo in the configuration");
    };
    let url = super::fleet::git_url("--source", source)?;
    let flag = reports
        .map(|r| super::fleet::git_url("--reports", r))
        .transpose()?;
    // The notes: --reports, else fleet.yaml's `reports:` on main, else the
    // fleet repository. The branches always come from the fleet repository.
    let notes =
        crate::fleet::promote::resolve_reports(&url, flag.as_ref(), &common.settings.auth, "main")
            .with_context(|| format!("finding where the notes of {url} are"))?;
    let started = std::time::Instant::now();
    let written = crate::fleet::report::generate(
        &url,
        &notes,
        &common.settings.auth,
        out,
        std::time::SystemTime::now(),
    )?;
    let index = out.join("index.html");
    match common.format {
        Format::Json => outln!(
            "{}",
            serde_json::json!({
                "repository": url.redacted(),
                "reports": notes.redacted(),
                "index": index,
                "hosts": written.hosts,
                "pages": written.pages,
                "bytes": written.bytes,
                "duration_ms": started.elapsed().as_millis() as u64,
            })
        ),
        Format::Text => outln!(
            "wrote {} ({} hosts, {} pages, {} KiB) in {:.1} s",
            index.display(),
            written.hosts,
            written.pages,
            written.bytes.div_ceil(1024),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(exit::OK)
}
