//! The fleet report's pages, rendered from a `FleetView` with handlebars.
//!
//! This is a Handlebars instance of its own, with the default escape
//! function (HTML: `& < > " ' ` =`), unlike the branch renderer, which
//! turns escaping off for configuration files. Every value comes from a
//! note, and a note is written by whoever controls a host, so every value
//! goes through `{{…}}`; no template uses `{{{…}}}` (a unit test holds
//! that), and no link target is taken from a note: links point at pages
//! named by this module. Each page also carries a Content-Security-Policy
//! that allows no script at all, in case a future template slips.

use handlebars::{Handlebars, handlebars_helper};
use serde::Serialize;

use super::model::{FleetView, HostView, MALFORMED, RUN_STATUSES, UNKNOWN, severity};

/// A page of the site: its path under the output directory and its HTML.
pub struct Page {
    pub path: String,
    pub html: String,
}

/// The colour class of a status (always shown beside its word).
fn kind(status: &str) -> &'static str {
    match status {
        "in_sync" | "converged" | "healthy" | "passed" => "k-ok",
        "drift" | "unhealthy" | "stale" | "pending" | "skipped" | "changed" => "k-warn",
        "failed" | "error" | "refused" | "rolled_back" | MALFORMED => "k-bad",
        "audit" => "k-info",
        _ => "k-gray",
    }
}

/// A symbol beside the word (from DejaVu's ranges, so it renders on a
/// bare server too): shape as well as colour.
fn icon(status: &str) -> &'static str {
    match status {
        "in_sync" | "healthy" | "passed" => "✓",
        "converged" | "changed" => "↻",
        "drift" => "≠",
        "failed" => "✗",
        "error" => "⚠",
        "refused" => "⊘",
        "unhealthy" => "♥",
        "rolled_back" => "↶",
        "stale" | "pending" => "◷",
        "disabled" => "‖",
        "audit" => "⊙",
        "skipped" => "–",
        MALFORMED => "⁉",
        _ => "?",
    }
}

handlebars_helper!(status_kind: |s: str| kind(s));
handlebars_helper!(status_icon: |s: str| icon(s));
handlebars_helper!(status_word: |s: str| s.replace('_', " "));

const TEMPLATES: [(&str, &str); 8] = [
    ("head", include_str!("templates/head.hbs")),
    ("foot", include_str!("templates/foot.hbs")),
    ("badge", include_str!("templates/badge.hbs")),
    ("host_table", include_str!("templates/host_table.hbs")),
    ("filters", include_str!("templates/filters.hbs")),
    ("index", include_str!("templates/index.hbs")),
    ("list", include_str!("templates/list.hbs")),
    ("host", include_str!("templates/host.hbs")),
];

/// The engine with the report's templates.
pub fn engine() -> Result<Handlebars<'static>, handlebars::TemplateError> {
    let mut hb = Handlebars::new();
    // Not strict: absent optional values (null) render as nothing.
    // The default escape function is HTML's; say so, so a change of
    // default cannot turn it off.
    hb.register_escape_fn(handlebars::html_escape);
    hb.register_helper("status_kind", Box::new(status_kind));
    hb.register_helper("status_icon", Box::new(status_icon));
    hb.register_helper("status_word", Box::new(status_word));
    for (name, text) in TEMPLATES {
        hb.register_template_string(name, text)?;
    }
    Ok(hb)
}

/// What every page's head and foot show.
#[derive(Serialize)]
struct Frame<'a> {
    title: String,
    root: &'a str,
    generated_at: &'a str,
    repository: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct IndexPage<'a> {
    #[serde(flatten)]
    frame: Frame<'a>,
    total: usize,
    statuses: &'a [super::model::StatusCount],
    flags: &'a [super::model::StatusCount],
    commits: &'a [super::model::CommitGroup],
    sort: &'a str,
    rows: Vec<Row<'a>>,
}

#[derive(Serialize)]
struct ListPage<'a> {
    #[serde(flatten)]
    frame: Frame<'a>,
    heading: String,
    sort: &'a str,
    rows: Vec<Row<'a>>,
}

/// A host as a table row shows it: only what the table needs, so a page
/// of 10,000 rows does not carry every host's whole run.
#[derive(Serialize)]
struct Row<'a> {
    page: &'a str,
    name: &'a str,
    status: &'a str,
    stale: bool,
    disabled: bool,
    audit: bool,
    applied_short: Option<&'a str>,
    behind: &'a str,
    age: &'a str,
    drift: u64,
    changed: u64,
    failed: u64,
    health: &'a str,
}

impl<'a> From<&'a HostView> for Row<'a> {
    fn from(h: &'a HostView) -> Row<'a> {
        Row {
            page: &h.page,
            name: &h.name,
            status: &h.status,
            stale: h.stale,
            disabled: h.disabled,
            audit: h.audit,
            applied_short: h.applied_short.as_deref(),
            behind: &h.behind,
            age: &h.age,
            drift: h.drift,
            changed: h.changed,
            failed: h.failed,
            health: &h.health,
        }
    }
}

#[derive(Serialize)]
struct HostPage<'a> {
    #[serde(flatten)]
    frame: Frame<'a>,
    host: &'a HostView,
}

/// Every page of the site.
pub fn render(
    hb: &Handlebars<'_>,
    fleet: &FleetView,
    repository: &str,
) -> Result<Vec<Page>, handlebars::RenderError> {
    let version = env!("CARGO_PKG_VERSION");
    let frame = |title: String, root: &'static str| Frame {
        title,
        root,
        generated_at: &fleet.generated_at,
        repository,
        version,
    };
    let mut pages = Vec::with_capacity(fleet.hosts.len() + 16);
    pages.push(Page {
        path: "index.html".into(),
        html: hb.render(
            "index",
            &IndexPage {
                frame: frame(format!("trueup fleet: {} hosts", fleet.hosts.len()), ""),
                total: fleet.hosts.len(),
                statuses: &fleet.statuses,
                flags: &fleet.flags,
                commits: &fleet.commits,
                sort: "name",
                rows: fleet.hosts.iter().map(Row::from).collect(),
            },
        )?,
    });

    // The table sorted by other columns, one page each: sorting that
    // needs no script.
    type Order = fn(&&HostView, &&HostView) -> std::cmp::Ordering;
    let sorts: [(&str, &str, Order); 5] = [
        ("status", "Hosts, worst status first", |a, b| {
            severity(&a.status).cmp(&severity(&b.status))
        }),
        ("age", "Hosts, oldest report first", |a, b| {
            // No time at all is the oldest.
            let key = |h: &HostView| h.age_secs.map_or(u64::MAX, |s| s);
            key(b).cmp(&key(a))
        }),
        ("behind", "Hosts, furthest behind first", |a, b| {
            let key = |h: &HostView| h.behind_n.map_or(-1, |n| n as i64);
            key(b).cmp(&key(a))
        }),
        ("drift", "Hosts, most drift first", |a, b| {
            b.drift.cmp(&a.drift)
        }),
        ("failed", "Hosts, most failed first", |a, b| {
            b.failed.cmp(&a.failed)
        }),
    ];
    for (key, heading, order) in sorts {
        let mut rows: Vec<&HostView> = fleet.hosts.iter().collect();
        // Stable: ties stay in name order.
        rows.sort_by(order);
        pages.push(list_page(
            hb,
            &frame,
            key,
            heading.to_string(),
            rows,
            &format!("by-{key}.html"),
        )?);
    }

    // One page per status and flag: filtering that needs no script.
    let statuses = RUN_STATUSES.iter().chain(&[UNKNOWN, MALFORMED]);
    for s in statuses {
        let rows: Vec<&HostView> = fleet.hosts.iter().filter(|h| h.status == *s).collect();
        let heading = format!("Hosts whose latest run is {}", s.replace('_', " "));
        pages.push(list_page(
            hb,
            &frame,
            "name",
            heading,
            rows,
            &format!("status-{s}.html"),
        )?);
    }
    type Keep = fn(&HostView) -> bool;
    let flags: [(&str, &str, Keep); 3] = [
        (
            "stale",
            "Stale hosts: no report for twice their heartbeat",
            |h| h.stale,
        ),
        ("disabled", "Disabled hosts", |h| h.disabled),
        ("audit", "Hosts in audit mode", |h| h.audit),
    ];
    for (key, heading, keep) in flags {
        let rows: Vec<&HostView> = fleet.hosts.iter().filter(|h| keep(h)).collect();
        pages.push(list_page(
            hb,
            &frame,
            "name",
            heading.into(),
            rows,
            &format!("status-{key}.html"),
        )?);
    }

    for host in &fleet.hosts {
        pages.push(Page {
            path: host.page.clone(),
            html: hb.render(
                "host",
                &HostPage {
                    frame: frame(format!("{} — trueup", host.name), "../"),
                    host,
                },
            )?,
        });
    }
    Ok(pages)
}

fn list_page<'a>(
    hb: &Handlebars<'_>,
    frame: &impl Fn(String, &'static str) -> Frame<'a>,
    sort: &str,
    heading: String,
    rows: Vec<&HostView>,
    path: &str,
) -> Result<Page, handlebars::RenderError> {
    let html = hb.render(
        "list",
        &ListPage {
            frame: frame(format!("{heading} — trueup fleet"), ""),
            heading,
            sort,
            rows: rows.into_iter().map(Row::from).collect(),
        },
    )?;
    Ok(Page {
        path: path.to_string(),
        html,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::model::{HostNotes, NoGraph, NoteText, fleet};

    #[test]
    fn no_template_turns_escaping_off() {
        for (name, text) in TEMPLATES {
            assert!(!text.contains("{{{"), "{name} has a triple-stash");
            assert!(!text.contains("{{&"), "{name} has an unescaped value");
            assert!(!text.contains("<script"), "{name} has a script");
        }
    }

    #[test]
    fn hostile_note_text_is_escaped_everywhere() {
        let evil = r#"<script>document.title='owned'</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">x</a>"#;
        let json = serde_json::json!({
            "schema": 1, "trueup_version": evil, "host": evil, "mode": evil, "dry_run": false,
            "started_at": "2026-01-01T00:00:00Z", "duration_ms": 1,
            "source": {"location": evil, "branch": evil, "commit": "a".repeat(40)},
            "status": evil,
            "summary": {"resources":1,"in_sync":0,"drift":1,"changed":0,"failed":0,"skipped":0},
            "resources": [{"kind": evil, "resource": evil, "status": "drift", "action": evil, "error": evil,
                "drift": [{"attribute": evil, "expected": evil, "actual": evil, "diff": format!("+{evil}\n-{evil}")}]}],
            "errors": [evil],
            "health": {"status": evil, "window_ms": 1, "duration_ms": 1, "note": evil,
                "checks": [{"name": evil, "kind": evil, "target": evil, "required": true, "status": evil,
                    "duration_ms": 1, "attempts": 1, "message": evil, "output": evil}]},
            "facts": {"hostname": evil, evil: evil},
            "commit_subject": evil, "commit_author": evil,
            "disabled": {"reason": evil, "since": evil}, "audit": true
        });
        let hosts = vec![
            HostNotes {
                notes_ref: "refs/notes/trueup/<b>x".into(),
                notes: Ok(vec![NoteText {
                    commit: "a".repeat(40),
                    text: Ok(format!("{evil}\n\n{json}")),
                    newest: true,
                }]),
            },
            HostNotes {
                notes_ref: "refs/notes/trueup/y".into(),
                notes: Ok(vec![NoteText {
                    commit: evil.into(),
                    text: Ok(evil.into()),
                    newest: true,
                }]),
            },
        ];
        let view = fleet(&hosts, &NoGraph, std::time::SystemTime::UNIX_EPOCH);
        let pages = render(&engine().unwrap(), &view, evil).unwrap();
        assert!(pages.iter().any(|p| p.path == "hosts/_b_x.html"));
        for p in &pages {
            for bad in ["<script", "<img", "<a href=\"javascript", "<b>"] {
                assert!(!p.html.contains(bad), "{} holds {bad}", p.path);
            }
            assert!(!p.html.contains("onerror=\""), "{}", p.path);
        }
        let host = pages.iter().find(|p| p.path == "hosts/_b_x.html").unwrap();
        assert!(host.html.contains("&lt;script&gt;"), "the text is shown");
        let broken = pages.iter().find(|p| p.path == "hosts/y.html").unwrap();
        assert!(broken.html.contains("Malformed note"));
    }
}
