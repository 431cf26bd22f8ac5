//! The note and report parsers on arbitrary bytes: a Git note read from any
//! host's notes ref (`parse_note`), and `last-run.json` as `trueup status`
//! reads it, must parse or fail, never panic. Whatever parses must print
//! (text, headline), format as a note that parses back to the same report,
//! and name a valid notes ref for its host.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trueup::report::RunReport;
use trueup::report::notes::{format_note, notes_ref, parse_note};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((_summary, report)) = parse_note(text) {
            check(&report);
        }
        let r = notes_ref(text);
        assert!(r.starts_with("refs/notes/trueup/"), "{r}");
    }
    if let Ok(report) = serde_json::from_slice::<RunReport>(data) {
        check(&report);
    }
    // last-run.json, read from the state directory.
    let dir = std::env::temp_dir().join(format!("trueup-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("last-run.json"), data).is_ok()
        && let Ok(Some(report)) = RunReport::read_last_run(&dir)
    {
        check(&report);
    }
});

fn check(report: &RunReport) {
    let _ = report.headline();
    let _ = trueup::report::text::render(report);
    let note = format_note(report);
    match parse_note(&note) {
        Ok((summary, again)) => {
            assert!(!summary.contains('\n'), "{summary:?}");
            assert_eq!(&again, report, "a formatted note parses back");
        }
        // A report of another schema version is refused on the way back.
        Err(e) => assert_ne!(report.schema, trueup::report::SCHEMA_VERSION, "{e}: {note}"),
    }
}
