//! `trueup fleet report` on a fleet of 30 hosts in mixed states, opened in
//! headless Chromium (Debian's `chromium`, which needs root here).
//!
//! The notes come from real `trueup apply`/`check` runs of the real binary
//! against a real repository, and, for the states a run under `--root`
//! cannot reach (stale, unhealthy, rolled back) and for hostile content,
//! from a real run's report changed and written with trueup's own note
//! writer. One note is garbage and one has a status this trueup does not
//! know. Chromium loads the pages from `file://`; the test reads the DOM it
//! dumps, and writes screenshots under `target/tmp/fleet-report/`.

mod common;
mod gitsupport;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::gitserver::{SshKey, TestRepo, git};
use gitsupport::*;
use scraper::{Html, Selector};
use tempfile::TempDir;

const SECRET: &str = "S3CRET-TOKEN-fleet-report-7f3a9c";
const XSS_HOST: &str = "<script>document.title='PWNED'</script>";
const XSS_IMG: &str = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";
const XSS_LINK: &str = "javascript:document.title='PWNED'";

fn branch_yaml(workers: u32) -> String {
    format!(
        "files:\n  /etc/motd:\n    content: \"Managed by trueup\\n\"\n    mode: \"0644\"\n  \
         /etc/app.conf:\n    content: \"listen = 8080\\nworkers = {workers}\\nlog = info\\n\"\n    mode: \"0644\"\n  \
         /etc/app/secret.key:\n    content: \"{SECRET}\\n\"\n    mode: \"0600\"\n    secret: true\n"
    )
}

/// Points `refs/heads/hosts/NAME` of the bare repository at `commit`.
fn set_branch(repo: &TestRepo, host: &str, commit: &str) {
    git(
        &repo.work,
        &[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("{commit}:refs/heads/hosts/{host}"),
        ],
    );
}

fn ok(run: &Run) -> serde_json::Value {
    assert!(
        run.code == 0 || run.code == 2,
        "exit {}\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    run.json()
}

/// Writes `report` (a run's JSON report, changed) as a note with trueup's
/// own note writer, on the report's commit, under the ref of its host.
fn write_note(bare: &Path, report: serde_json::Value) {
    let report: trueup::report::RunReport = serde_json::from_value(report).unwrap();
    let repo = git2::Repository::open(bare).unwrap();
    trueup::report::notes::write_note(&repo, &report).unwrap();
}

/// Adds a note with `text` as it is, under `refs/notes/trueup/HOST`.
fn raw_note(repo: &TestRepo, host: &str, commit: &str, text: &str) {
    let file = repo.bare.join("note.txt");
    std::fs::write(&file, text).unwrap();
    git(
        &repo.bare,
        &[
            "notes",
            &format!("--ref=refs/notes/trueup/{host}"),
            "add",
            "-f",
            "-F",
            file.to_str().unwrap(),
            commit,
        ],
    );
    std::fs::remove_file(file).unwrap();
}

/// Chromium, headless, as root, loading nothing from the network.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}): run scripts/install-test-deps.sh as root")
        });
    let deadline = Instant::now() + Duration::from_secs(120);
    // Drain stdout while it runs: a DOM can be bigger than a pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("chromium did not finish in 120 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "chromium {args:?}: {status}\n{err}");
    out
}

fn dom(profile: &Path, page: &Path) -> Html {
    let url = format!("file://{}", page.display());
    let text = chromium(profile, &["--dump-dom", &url]);
    assert!(text.contains("<html"), "no DOM for {url}: {text}");
    Html::parse_document(&text)
}

fn screenshot(profile: &Path, page: &Path, png: &Path, size: &str) {
    let url = format!("file://{}", page.display());
    chromium(
        profile,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={size}"),
            &url,
        ],
    );
    let bytes = std::fs::read(png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} is not a screenshot",
        png.display()
    );
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn text_of(doc: &Html, selector: &str) -> Vec<String> {
    doc.select(&sel(selector))
        .map(|e| e.text().collect::<String>().trim().to_string())
        .collect()
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The hosts made so far, and the status each should show.
#[derive(Default)]
struct Fleet {
    expected: BTreeMap<String, &'static str>,
    hosts: BTreeMap<String, GitHost>,
}

impl Fleet {
    fn host(&mut self, name: &str, status: &'static str) -> &GitHost {
        self.expected.insert(name.to_string(), status);
        self.hosts
            .entry(name.to_string())
            .or_insert_with(|| GitHost::new(name))
    }
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn a_fleet_of_30_hosts_in_chromium() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let c1 = repo.commit(
        &[("trueup.yaml", branch_yaml(4).as_str())],
        "Base: motd, app config and API token",
    );
    let c2 = repo.commit(
        &[("trueup.yaml", branch_yaml(8).as_str())],
        "app: eight workers",
    );
    let c3 = repo.commit(&[("README.md", "The fleet.\n")], "docs: describe the fleet");
    repo.push("main");
    let broken = repo.commit(&[("trueup.yaml", "files: [oops\n")], "Broken YAML");
    repo.reset_hard(&c3);

    let mut fleet = Fleet::default();
    // In sync: converged on c2, then c3 changes nothing they manage.
    for n in 1..=4 {
        let name = format!("web0{n}");
        set_branch(&repo, &name, &c2);
        let h = fleet.host(&name, "in_sync");
        assert_eq!(ok(&h.apply(&url))["status"], "converged");
        set_branch(&repo, &name, &c3);
        assert_eq!(ok(&h.apply(&url))["status"], "in_sync");
    }
    // Converged on the newest commit, and on the oldest (a wave not yet
    // promoted).
    for n in 5..=8 {
        let name = format!("web0{n}");
        set_branch(&repo, &name, &c3);
        assert_eq!(
            ok(&fleet.host(&name, "converged").apply(&url))["status"],
            "converged"
        );
    }
    for n in 1..=3 {
        let name = format!("db0{n}");
        set_branch(&repo, &name, &c1);
        assert_eq!(
            ok(&fleet.host(&name, "converged").apply(&url))["status"],
            "converged"
        );
    }
    // Refused: applied c2, then the unsigned c3 under a trust policy.
    let keys = TempDir::new().unwrap();
    let signer = SshKey::generate(keys.path(), "ops", "ops@example.invalid");
    let allowed = keys.path().join("allowed_signers");
    common::gitserver::write_allowed_signers(&allowed, &[&signer]);
    for n in 1..=2 {
        let name = format!("edge0{n}");
        set_branch(&repo, &name, &c2);
        let h = fleet.host(&name, "refused");
        ok(&h.apply(&url));
        h.configure(&format!(
            "trust:\n  allowed_signers: {}\n",
            allowed.display()
        ));
        set_branch(&repo, &name, &c3);
        assert_eq!(h.apply(&url).json()["status"], "refused");
    }
    // Drift: changed by hand, found by a check (with a content diff; the
    // secret drifts too and must not show).
    for n in 1..=3 {
        let name = format!("app0{n}");
        set_branch(&repo, &name, &c3);
        let h = fleet.host(&name, "drift");
        ok(&h.apply(&url));
        std::fs::write(
            h.path("/etc/app.conf"),
            "listen = 8080\nworkers = 2\nlog = info\n",
        )
        .unwrap();
        std::fs::write(h.path("/etc/app/secret.key"), "someone else's token\n").unwrap();
        assert_eq!(ok(&h.check(&url))["status"], "drift");
    }
    // Failed: /etc/app is a file, so the secret cannot be written.
    for n in 4..=5 {
        let name = format!("app0{n}");
        set_branch(&repo, &name, &c3);
        let h = fleet.host(&name, "failed");
        std::fs::create_dir_all(h.path("/etc")).unwrap();
        std::fs::write(h.path("/etc/app"), "not a directory\n").unwrap();
        assert_eq!(h.apply(&url).json()["status"], "failed");
    }
    // Error: the branch does not parse, and there is nothing to fall back on.
    for n in 1..=2 {
        let name = format!("cache0{n}");
        set_branch(&repo, &name, &broken);
        assert_eq!(
            fleet.host(&name, "error").apply(&url).json()["status"],
            "error"
        );
    }
    // Disabled, and audit mode: both only check.
    for n in 1..=2 {
        let name = format!("batch0{n}");
        set_branch(&repo, &name, &c3);
        let h = fleet.host(&name, "drift");
        let d = h.run(&url, &["disable", "--reason", "kernel upgrade window"]);
        assert_eq!(d.code, 0, "{}", d.stderr);
        assert_eq!(
            ok(&h.apply(&url))["disabled"]["reason"],
            "kernel upgrade window"
        );
    }
    for n in 1..=2 {
        let name = format!("audit0{n}");
        set_branch(&repo, &name, &c3);
        let h = fleet.host(&name, "drift");
        h.configure("mode: check\n");
        assert_eq!(ok(&h.apply(&url))["audit"], true);
    }
    // Stale: its last note is 3 hours old, with a 1 hour heartbeat.
    set_branch(&repo, "old01", &c3);
    let mut r = ok(&fleet.host("old01", "converged").apply(&url));
    assert_eq!(r["heartbeat_secs"], 3600);
    assert_eq!(r["commit_subject"], "docs: describe the fleet");
    r["started_at"] =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3 * 3600))
            .to_string()
            .into();
    write_note(&repo.bare, r);
    // Unhealthy and rolled back: a real run's report with the health
    // section a failed check window writes.
    set_branch(&repo, "api01", &c3);
    let base = ok(&fleet.host("api01", "unhealthy").apply(&url));
    let check = serde_json::json!({"name": "api answers", "kind": "http",
        "target": "http://127.0.0.1:9/health", "required": true, "status": "failed",
        "duration_ms": 30000, "attempts": 15, "message": "connection refused"});
    let mut r = base.clone();
    r["status"] = "unhealthy".into();
    r["health"] = serde_json::json!({"status": "unhealthy", "commit": c3, "window_ms": 30000,
        "duration_ms": 30000, "checks": [check],
        "note": "on_failure: report: the commit is left in place"});
    write_note(&repo.bare, r);
    set_branch(&repo, "api02", &c3);
    let mut r = ok(&fleet.host("api02", "rolled_back").apply(&url));
    r["status"] = "rolled_back".into();
    r["source"]["applied"] = c2.clone().into();
    r["health"] = serde_json::json!({"status": "unhealthy", "commit": c3, "window_ms": 30000,
        "duration_ms": 30000, "checks": [check],
        "rollback": {"from": c3, "to": c2, "healthy_after": true}});
    write_note(&repo.bare, r);
    // A host that writes HTML and script into every field it can.
    let mut r = base.clone();
    fleet.expected.insert(
        trueup::report::notes::notes_ref(XSS_HOST)
            .trim_start_matches("refs/notes/trueup/")
            .to_string(),
        "failed",
    );
    r["host"] = XSS_HOST.into();
    r["status"] = "failed".into();
    r["commit_subject"] = format!("<a href=\"{XSS_LINK}\">release notes</a>").into();
    r["errors"] = serde_json::json!([XSS_LINK]);
    r["resources"] = serde_json::json!([{"kind": "file", "resource": XSS_IMG, "status": "failed",
        "error": XSS_HOST, "drift": [{"attribute": "content", "expected": XSS_IMG,
        "actual": XSS_LINK, "diff": format!("--- a\n+++ b\n@@ -1 +1 @@\n-{XSS_HOST}\n+{XSS_IMG}\n")}]}]);
    r["facts"] = serde_json::json!({"hostname": XSS_HOST, "os": {"id": XSS_IMG}});
    // Formatted by trueup; added with git, whose notes commit can be
    // signed whatever the host name (libgit2 refuses `<` in a signature).
    let report: trueup::report::RunReport = serde_json::from_value(r).unwrap();
    raw_note(
        &repo,
        trueup::report::notes::notes_ref(XSS_HOST).trim_start_matches("refs/notes/trueup/"),
        &c3,
        &trueup::report::notes::format_note(&report),
    );
    // A note that is no report, and one with a status from the future.
    fleet.expected.insert("broken01".into(), "malformed");
    raw_note(
        &repo,
        "broken01",
        &c3,
        "this is not a run report <b>bold</b>\n",
    );
    fleet.expected.insert("future01".into(), "unknown");
    let note = repo.note("refs/notes/trueup/web05", &c3).unwrap();
    raw_note(
        &repo,
        "future01",
        &c3,
        &note.replace("\"status\": \"converged\"", "\"status\": \"exploded\""),
    );
    assert_eq!(fleet.expected.len(), 30);
    let expected = fleet.expected;

    // Generate.
    let out = TempDir::new().unwrap();
    let site = out.path().join("site");
    let report = Command::new(trueup_bin())
        .args([
            "--config",
            "/nonexistent/agent.yaml",
            "--source",
            &url,
            "fleet",
            "report",
        ])
        .arg("--out")
        .arg(&site)
        .env_remove("TRUEUP_CONFIG")
        .output()
        .unwrap();
    let report = Run::from(report);
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    assert!(report.stdout.contains("30 hosts"), "{}", report.stdout);

    // Nothing of the secret anywhere in the site.
    let files = files_under(&site);
    assert!(files.len() > 30, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the secret",
            f.display()
        );
    }

    let profile = TempDir::new().unwrap();
    // Chromium runs pages' scripts here: a control page proves it, so the
    // checks below that no script ran can fail.
    let control = out.path().join("control.html");
    std::fs::write(
        &control,
        "<!doctype html><title>before</title><script>document.title='ran'</script>",
    )
    .unwrap();
    assert_eq!(text_of(&dom(profile.path(), &control), "title"), ["ran"]);

    // The fleet page: counts, flags, rows, links.
    let index = dom(profile.path(), &site.join("index.html"));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for tile in index.select(&sel("ul.tiles li[data-status]")) {
        let n: usize = tile
            .select(&sel(".n"))
            .next()
            .unwrap()
            .text()
            .collect::<String>()
            .parse()
            .unwrap();
        counts.insert(tile.value().attr("data-status").unwrap().to_string(), n);
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for s in [
        "error",
        "refused",
        "rolled_back",
        "unhealthy",
        "failed",
        "drift",
        "converged",
        "in_sync",
        "unknown",
        "malformed",
    ] {
        want.insert(s.into(), expected.values().filter(|v| **v == s).count());
    }
    assert_eq!(counts, want);
    assert_eq!(want["in_sync"], 4);
    assert_eq!(want["converged"], 8);
    assert_eq!(want["drift"], 7);
    let flag = |name: &str| -> String {
        index
            .select(&sel(&format!("li[data-flag='{name}'] .n")))
            .next()
            .unwrap()
            .text()
            .collect()
    };
    assert_eq!(
        (flag("stale"), flag("disabled"), flag("audit")),
        ("1".into(), "2".into(), "2".into())
    );
    // Every status is a word beside its colour.
    let words = text_of(&index, "ul.tiles li[data-status='rolled_back'] .w");
    assert!(words[0].ends_with("rolled back"), "{words:?}");

    let rows: Vec<_> = index.select(&sel(".scroll tbody tr")).collect();
    assert_eq!(rows.len(), 30);
    let mut pages: BTreeMap<String, PathBuf> = BTreeMap::new();
    for row in &rows {
        let link = row.select(&sel("td.host a")).next().unwrap();
        let name: String = link.text().collect();
        let href = link.value().attr("href").unwrap();
        assert!(
            href.starts_with("hosts/") && href.ends_with(".html"),
            "{name}: {href}"
        );
        let page = site.join(href);
        assert!(page.is_file(), "{name}: {href} is missing");
        let status = row.value().attr("data-status").unwrap();
        assert_eq!(Some(&status), expected.get(&name), "{name}");
        pages.insert(name, page);
    }
    assert_eq!(
        pages.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    // The rollout: hosts per commit, newest first, with subject and author.
    let rollout = text_of(&index, ".rollout li .subject");
    assert_eq!(
        rollout,
        [
            "docs: describe the fleet",
            "app: eight workers",
            "Base: motd, app config and API token"
        ]
    );
    let authors = text_of(&index, ".rollout li .muted");
    assert!(
        authors[0].contains(common::gitserver::GIT_NAME),
        "{authors:?}"
    );
    // The refused hosts stay on c2, one commit behind their branch.
    let edge = rows
        .iter()
        .find(|r| r.text().collect::<String>().contains("edge01"))
        .unwrap();
    assert!(edge.text().collect::<String>().contains("1 behind"));

    // Sorting and filtering pages exist and list the right hosts.
    let failed = dom(profile.path(), &site.join("status-failed.html"));
    assert_eq!(failed.select(&sel(".scroll tbody tr")).count(), 3);
    let by_status = dom(profile.path(), &site.join("by-status.html"));
    let first: Vec<String> = by_status
        .select(&sel(".scroll tbody tr"))
        .map(|r| r.value().attr("data-status").unwrap().to_string())
        .take(2)
        .collect();
    assert_eq!(first, ["malformed", "unknown"]);

    // A drifted host: attribute, expected, actual, and the diff; the
    // secret's drift is shown without content.
    let app = dom(profile.path(), &pages["app01"]);
    let adds = text_of(&app, "pre.diff .add");
    let dels = text_of(&app, "pre.diff .del");
    assert!(adds.iter().any(|l| l == "+workers = 8"), "{adds:?}");
    assert!(dels.iter().any(|l| l == "-workers = 2"), "{dels:?}");
    let cells = text_of(&app, ".resource td");
    assert!(cells.iter().any(|c| c.contains("(secret")), "{cells:?}");
    // The timeline: one note per commit is kept at the tip, newest first.
    let web = dom(profile.path(), &pages["web01"]);
    let runs = text_of(&web, "#timeline ~ ol li");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].contains("in sync") && runs[0].contains(&c3[..12]),
        "{runs:?}"
    );
    assert!(
        runs[1].contains("converged") && runs[1].contains(&c2[..12]),
        "{runs:?}"
    );
    let facts = text_of(&app, "#facts ~ dl dt");
    assert!(facts.iter().any(|f| f == "hostname"), "{facts:?}");

    // Health results.
    let api = dom(profile.path(), &pages["api02"]);
    let health = text_of(&api, "#health ~ .scroll td");
    assert!(
        health.iter().any(|c| c.contains("connection refused")),
        "{health:?}"
    );
    assert!(api.html().contains("Rolled back"));

    // The hostile host: inert text, and no script ran.
    let xss_name = trueup::report::notes::notes_ref(XSS_HOST)
        .trim_start_matches("refs/notes/trueup/")
        .to_string();
    for (what, doc) in [
        ("index", &index),
        ("host", &dom(profile.path(), &pages[&xss_name])),
    ] {
        // The payloads would set the title to PWNED.
        let title = text_of(doc, "title");
        let want = if what == "index" {
            "trueup fleet: 30 hosts".to_string()
        } else {
            format!("{xss_name} — trueup")
        };
        assert_eq!(title, [want], "{what}: a script ran");
        assert_eq!(doc.select(&sel("script")).count(), 0, "{what}");
        assert_eq!(doc.select(&sel("img")).count(), 0, "{what}");
        assert_eq!(doc.select(&sel("[onerror]")).count(), 0, "{what}");
        assert_eq!(doc.select(&sel("body[data-pwned]")).count(), 0, "{what}");
        for a in doc.select(&sel("a[href]")) {
            let href = a.value().attr("href").unwrap();
            assert!(!href.contains("javascript"), "{what}: link to {href}");
        }
    }
    let xss = dom(profile.path(), &pages[&xss_name]);
    let body: String = xss.root_element().text().collect();
    for payload in [XSS_HOST, XSS_IMG, XSS_LINK] {
        assert!(body.contains(payload), "{payload} not shown as text");
    }
    assert_eq!(text_of(&xss, "title"), [format!("{xss_name} — trueup")]);

    // The malformed note is shown as such.
    let broken = dom(profile.path(), &pages["broken01"]);
    let notice = text_of(&broken, "#malformed");
    assert!(
        notice[0].contains("Malformed note") && notice[0].contains("blank line"),
        "{notice:?}"
    );

    // Screenshots, for people (and the README).
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-report");
    std::fs::create_dir_all(&shots).unwrap();
    screenshot(
        profile.path(),
        &site.join("index.html"),
        &shots.join("fleet.png"),
        "1280,1800",
    );
    screenshot(
        profile.path(),
        &pages["app01"],
        &shots.join("host.png"),
        "1280,2000",
    );
    screenshot(
        profile.path(),
        &pages["app01"],
        &shots.join("host-phone.png"),
        "390,1800",
    );
    screenshot(
        profile.path(),
        &pages[&xss_name],
        &shots.join("hostile.png"),
        "1280,1600",
    );
}
