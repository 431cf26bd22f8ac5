//! `trueup fleet report --out DIR`: writes the fleet's static HTML report
//! from the repository's notes, and says where it is.

use super::out::outln;
use std::path::Path;

use anyhow::{Result, bail};

use super::{Common, Format, exit};

/// Reads the notes of `--source` (or `repo`) and writes the site to `out`.
pub fn fleet_report(common: &Common, out: &Path) -> Result<i32> {
    let Some(source) = common.settings.repo.as_deref() else {
        bail!("no repository: give --source URL or set repo in the configuration");
    };
    let url = match crate::source::remote::locate(source).map_err(anyhow::Error::msg)? {
        crate::source::remote::Location::Git(u) => u,
        crate::source::remote::Location::Dir(d) => bail!(
            "{}: fleet report reads a Git repository; give its URL (file://{})",
            d.display(),
            d.display()
        ),
    };
    let started = std::time::Instant::now();
    let written = crate::fleet::report::generate(
        &url,
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
