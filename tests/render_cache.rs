//! The rendered-state cache (`render-cache.json`): a check of the commit
//! last converged is answered from digests, and an entry that is
//! corrupted or was written for something else (another version, commit
//! or facts) is ignored and rebuilt — never believed, even when it claims
//! that drifted content is what the commit wants.

mod common;
mod gitsupport;

use common::gitserver::TestRepo;
use gitsupport::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use trueup::render_cache::{CachedFile, CachedState};

const BRANCH: &str = "hosts/web1";

fn branch() -> Vec<(&'static str, String)> {
    vec![
        (
            "trueup.yaml",
            "vars:\n  port: 80\nfiles:\n  /etc/app/conf-2:\n    template: t.hbs\n    vars: { n: 2 }\n  /etc/app/conf-10:\n    template: t.hbs\n    vars: { n: 10 }\n  /etc/motd:\n    content: \"hello {{facts.hostname}}\\n\"\n    mode: \"0644\"\n"
                .into(),
        ),
        ("t.hbs", "n={{vars.n}} port={{vars.port}} on {{facts.hostname}}\n".into()),
    ]
}

fn logged(host: &GitHost, url: &str, args: &[&str]) -> Run {
    Run::from(
        host.command(url, args)
            .env("TRUEUP_LOG", "info")
            .output()
            .unwrap(),
    )
}

fn entry_path(host: &GitHost) -> std::path::PathBuf {
    host.state.path().join("render-cache.json")
}

fn read_entry(host: &GitHost) -> CachedState {
    serde_json::from_slice(&std::fs::read(entry_path(host)).unwrap()).unwrap()
}

#[test]
fn a_check_of_the_same_commit_uses_the_cache_and_a_bad_entry_is_never_believed() {
    let tmp = TempDir::new().unwrap();
    let repo = TestRepo::create(tmp.path(), "fleet");
    let url = format!("file://{}", repo.bare.display());
    let host = GitHost::new("web1");
    repo.commit_and_push(BRANCH, &files(&branch()), "first");

    let run = host.apply(&url);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.json()["status"], "converged");
    assert_eq!(
        host.read("/etc/app/conf-10").unwrap(),
        "n=10 port=80 on web1\n"
    );
    let good = std::fs::read_to_string(entry_path(&host)).unwrap();
    assert!(
        !good.contains("port=80"),
        "digests only, never content: {good}"
    );
    assert!(!good.contains("hello web1"), "{good}");

    // Same commit, host unchanged: answered from the cache.
    let run = logged(&host, &url, &["check", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("cached rendered state"),
        "{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["status"], "in_sync");
    assert_eq!(report["summary"]["resources"], 3);
    assert_eq!(report["summary"]["in_sync"], 3);

    // Drift by hand: the cache does not match for that file alone, which
    // is rendered from the commit and reported with its diff; the others
    // are in sync by their digests.
    std::fs::write(host.path("/etc/motd"), "edited by hand\n").unwrap();
    let run = logged(&host, &url, &["check", "--format", "json"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("rendering only the files that differ")
            && run.stderr.contains("drifted=1"),
        "{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["summary"]["resources"], 3, "{}", run.stdout);
    assert_eq!(report["summary"]["in_sync"], 2, "{}", run.stdout);
    assert_eq!(report["summary"]["drift"], 1, "{}", run.stdout);
    let names: Vec<&str> = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/etc/motd"], "what differs: {}", run.stdout);
    assert!(run.stdout.contains("+hello web1"), "{}", run.stdout);

    // Its repair writes the commit's content, changes nothing else and
    // keeps the entry.
    std::fs::write(host.path("/etc/app/conf-2"), "n=2 port=8080 on web1\n").unwrap();
    let run = logged(&host, &url, &["apply", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("drifted=2"), "{}", run.stderr);
    assert_eq!(run.json()["summary"]["changed"], 2, "{}", run.stdout);
    assert_eq!(run.json()["summary"]["in_sync"], 1, "{}", run.stdout);
    assert_eq!(host.read("/etc/motd").unwrap(), "hello web1\n");
    assert_eq!(
        host.read("/etc/app/conf-2").unwrap(),
        "n=2 port=80 on web1\n"
    );
    assert_eq!(std::fs::read_to_string(entry_path(&host)).unwrap(), good);
    let run = logged(&host, &url, &["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("in sync with the cached rendered state"),
        "{}",
        run.stderr
    );
    std::fs::write(host.path("/etc/motd"), "edited by hand\n").unwrap();

    // A corrupted entry that claims the hand-edited motd is what the
    // commit wants (its own digest no longer matches): ignored.
    let mut lying = read_entry(&host);
    let edited = b"edited by hand\n";
    for f in &mut lying.files {
        if f.path.ends_with("motd") {
            *f = CachedFile {
                path: f.path.clone(),
                size: edited.len() as u64,
                sha256: hex::encode(Sha256::digest(edited)),
                mode: f.mode,
            };
        }
    }
    std::fs::write(entry_path(&host), serde_json::to_vec(&lying).unwrap()).unwrap();
    let run = logged(&host, &url, &["check", "--format", "json"]);
    assert_eq!(run.code, 2, "a corrupted entry hid drift: {}", run.all());
    assert!(
        run.stderr.contains("ignoring the render cache"),
        "{}",
        run.stderr
    );

    // A well-formed entry of another trueup version making the same claim:
    // foreign, ignored; the apply repairs from the commit itself.
    let mut foreign = lying.clone();
    foreign.key.trueup_version = "0.0.1-older".into();
    foreign.digest = self_digest(&foreign);
    std::fs::write(entry_path(&host), serde_json::to_vec(&foreign).unwrap()).unwrap();
    let run = logged(&host, &url, &["apply", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("ignoring the render cache"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["summary"]["changed"], 1, "{}", run.stdout);
    assert_eq!(host.read("/etc/motd").unwrap(), "hello web1\n");

    // Rebuilt: the entry is this version's again and used.
    assert_eq!(std::fs::read_to_string(entry_path(&host)).unwrap(), good);
    let run = logged(&host, &url, &["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("cached rendered state"),
        "{}",
        run.stderr
    );

    // Garbage: ignored, the check renders and answers in sync.
    std::fs::write(entry_path(&host), b"{\"format\": 1, \"key\": ").unwrap();
    let run = logged(&host, &url, &["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("ignoring the render cache"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(entry_path(&host)).unwrap(), good);
}

/// The entry digest as trueup computes it, so that the foreign entry
/// above is well formed and refused for its key alone.
fn self_digest(entry: &CachedState) -> String {
    let body = serde_json::to_vec(&(entry.format, &entry.key, &entry.files)).unwrap();
    hex::encode(Sha256::digest(&body))
}

#[test]
fn a_directory_source_renders_every_time() {
    let host = GitHost::new("web1");
    let src = TempDir::new().unwrap();
    for (p, text) in branch() {
        std::fs::write(src.path().join(p), text).unwrap();
    }
    let dir = src.path().to_str().unwrap();
    let run = host.run(dir, &["apply"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!entry_path(&host).exists(), "no commit, no cache entry");
    let run = logged(&host, dir, &["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        !run.stderr.contains("cached rendered state"),
        "{}",
        run.stderr
    );
}
