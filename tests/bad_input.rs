//! The bad-input corpus: branches written by someone who can push but
//! should not be able to hurt the host by pushing garbage. Every case must
//! make `trueup apply` exit 1 with a message naming the problem (and, for
//! schema errors, file:line:column), never panic, and change nothing at all
//! under --root.
//!
//! Committed cases live in `tests/bad_input/<case>/`: a small branch and an
//! `expect` file holding the substring the message must contain (first
//! line), and optionally an `args` file (extra arguments, one per line).
//! Cases too big or too strange to commit (huge files, deep nesting, binary
//! data, NUL bytes, non-UTF-8 names, symlinks out of the checkout) are
//! generated here at run time.

mod support;

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Longest a bad branch may take to be refused (a hang is a failure).
const DEADLINE: Duration = Duration::from_secs(60);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input")
}

/// A host whose root already holds content, so that any change shows.
fn populated_host() -> Host {
    let host = Host::new();
    for (path, content) in [
        ("/etc/motd", "old motd\n"),
        ("/etc/app.conf", "old app.conf\n"),
        ("/etc/link-target", "target\n"),
        ("/srv/app/data", "data\n"),
        ("/usr/local/bin/tool", "#!/bin/sh\n"),
    ] {
        write(host.root.path(), path.trim_start_matches('/'), content);
    }
    std::os::unix::fs::symlink("/etc/link-target", host.path("/etc/link")).unwrap();
    host
}

/// Runs `trueup` with a deadline; a process still running is killed and
/// reported as a hang.
fn run_with_deadline(host: &Host, source: &Path, args: &[String]) -> Run {
    let mut child = Command::new(trueup_bin())
        .arg("--config")
        .arg(host.state.path().join("no-agent.yaml"))
        .arg("--source")
        .arg(source)
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args(args)
        .env_remove("TRUEUP_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes while waiting, so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trueup {args:?} on {} hung for {DEADLINE:?}",
                source.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
}

/// Applies `source` to a populated root and checks the outcome. Returns a
/// description of what went wrong, if anything.
fn check_case(name: &str, source: &Path, expect: &str, extra: &[String]) -> Option<String> {
    let host = populated_host();
    let before = snapshot(host.root.path());
    let mut problems = Vec::new();
    for format in ["text", "json"] {
        let mut args: Vec<String> = extra.to_vec();
        args.extend(["--format".into(), format.into(), "apply".into()]);
        let r = run_with_deadline(&host, source, &args);
        let all = r.all();
        if r.code != 1 {
            problems.push(format!("{format}: exit code {} (want 1)", r.code));
        }
        if all.contains("panicked") || all.contains("RUST_BACKTRACE") {
            problems.push(format!("{format}: panicked"));
        }
        if !all.contains(expect) {
            problems.push(format!("{format}: message lacks {expect:?}"));
        }
        if format == "json" && r.code == 1 && !r.stdout.trim().is_empty() {
            match serde_json::from_str::<serde_json::Value>(&r.stdout) {
                Ok(report) if report["status"] == "error" => {}
                Ok(report) => problems.push(format!("json: status {}", report["status"])),
                Err(e) => problems.push(format!("json: stdout is not JSON: {e}")),
            }
        }
        if snapshot(host.root.path()) != before {
            problems.push(format!("{format}: the root changed"));
        }
        if !problems.is_empty() {
            problems.push(format!("output:\n{all}"));
            break;
        }
    }
    (!problems.is_empty()).then(|| format!("{name}: {}", problems.join("; ")))
}

#[test]
fn committed_bad_branches_exit_1_say_why_and_change_nothing() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus holds {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expect = std::fs::read_to_string(case.join("expect"))
            .unwrap_or_else(|e| panic!("{name}: no expect file: {e}"));
        let expect = expect.lines().next().unwrap_or("").to_string();
        assert!(!expect.is_empty(), "{name}: empty expect file");
        let args: Vec<String> = std::fs::read_to_string(case.join("args"))
            .map(|a| a.lines().map(str::to_string).collect())
            .unwrap_or_default();
        // The branch is the case directory minus its test metadata.
        let branch = tempfile::tempdir().unwrap();
        copy_tree(case, branch.path());
        for meta in ["expect", "args"] {
            let _ = std::fs::remove_file(branch.path().join(meta));
        }
        if let Some(f) = check_case(&name, branch.path(), &expect, &args) {
            failures.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// A motd change riding along with the bad part, so a run that wrongly
/// went ahead would change the root.
const MOTD: &str = "files:\n  /etc/motd:\n    content: \"changed by a bad branch\\n\"\n";

fn branch(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, content) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

#[test]
fn generated_bad_branches_exit_1_say_why_and_change_nothing() {
    let mut cases: Vec<(&str, tempfile::TempDir, &str)> = Vec::new();

    // Huge files: a state file and a source file over the 64 MiB limit
    // (sparse, so they cost no disk).
    let huge = branch(&[("trueup.yaml", MOTD.as_bytes())]);
    let f = std::fs::File::create(huge.path().join("trueup.yaml")).unwrap();
    f.set_len(65 * 1024 * 1024).unwrap();
    cases.push(("huge trueup.yaml", huge, "larger than the limit"));
    let huge_src = branch(&[(
        "trueup.yaml",
        format!("{MOTD}  /etc/app.conf:\n    source: files/big\n").as_bytes(),
    )]);
    std::fs::create_dir(huge_src.path().join("files")).unwrap();
    let f = std::fs::File::create(huge_src.path().join("files/big")).unwrap();
    f.set_len(65 * 1024 * 1024).unwrap();
    cases.push(("huge source file", huge_src, "trueup.yaml:5:13"));

    // Many values: 300 000 vars.
    let mut many = String::from(MOTD);
    many.push_str("vars:\n");
    for i in 0..300_000 {
        many.push_str(&format!("  v{i}: {i}\n"));
    }
    cases.push((
        "300 000 values",
        branch(&[("trueup.yaml", many.as_bytes())]),
        "too large or too complex",
    ));

    // Deep nesting: flow and block collections, and template blocks.
    let n = 100_000;
    let deep_flow = format!("{MOTD}vars:\n  x: {}{}\n", "[".repeat(n), "]".repeat(n));
    cases.push((
        "100 000 nested flow lists",
        branch(&[("trueup.yaml", deep_flow.as_bytes())]),
        "trueup.yaml:5:261: recursion limit",
    ));
    let mut deep_block = format!("{MOTD}vars:\n");
    for i in 0..200 {
        deep_block.push_str(&format!("{}k{i}:\n", " ".repeat(2 + 2 * i)));
    }
    cases.push((
        "200 nested block mappings",
        branch(&[("trueup.yaml", deep_block.as_bytes())]),
        "too large or too complex",
    ));
    let deep_tpl = format!(
        "{}x{}",
        "{{#with facts}}".repeat(20_000),
        "{{/with}}".repeat(20_000)
    );
    cases.push((
        "20 000 nested template blocks",
        branch(&[
            (
                "trueup.yaml",
                format!("{MOTD}  /etc/app.conf:\n    template: app.hbs\n").as_bytes(),
            ),
            ("app.hbs", deep_tpl.as_bytes()),
        ]),
        "nest deeper than",
    ));
    let deep_includes: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            let name = if i == 0 {
                "trueup.yaml".to_string()
            } else {
                format!("inc/{i}.yaml")
            };
            (
                name,
                format!("include: [inc/{}.yaml]\n", i + 1).into_bytes(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = deep_includes
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    cases.push((
        "includes 40 deep",
        branch(&refs),
        "includes nest deeper than 32",
    ));

    // Binary data and NUL bytes.
    let mut noise = Vec::with_capacity(8192);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    cases.push((
        "binary trueup.yaml",
        branch(&[("trueup.yaml", &noise)]),
        "trueup.yaml:",
    ));
    let mut nul = MOTD.as_bytes().to_vec();
    nul.extend_from_slice(b"  /etc/app.conf:\n    content: a\x00b\n");
    cases.push((
        "NUL byte in trueup.yaml",
        branch(&[("trueup.yaml", &nul)]),
        "NUL byte",
    ));
    let mut nul_inc = b"include: [roles/a.yaml]\n".to_vec();
    nul_inc.extend_from_slice(MOTD.as_bytes());
    cases.push((
        "NUL byte in an include",
        branch(&[
            ("trueup.yaml", &nul_inc),
            ("roles/a.yaml", b"files:\n  /etc/app.conf:\x00\n"),
        ]),
        "roles/a.yaml: the file contains a NUL byte",
    ));

    // Non-UTF-8: in a path key, in a template, and in file names.
    let mut bad_key = MOTD.as_bytes().to_vec();
    bad_key.extend_from_slice(b"  /etc/app\xff\xfe.conf:\n    content: x\n");
    cases.push((
        "non-UTF-8 path in trueup.yaml",
        branch(&[("trueup.yaml", &bad_key)]),
        "trueup.yaml:4:1: the file is not valid UTF-8",
    ));
    cases.push((
        "non-UTF-8 template",
        branch(&[
            (
                "trueup.yaml",
                format!("{MOTD}  /etc/app.conf:\n    template: app.hbs\n").as_bytes(),
            ),
            ("app.hbs", b"port \xc3\x28 {{vars.x}}\n"),
        ]),
        "template 'app.hbs' is not valid UTF-8",
    ));
    let odd_names = branch(&[(
        "trueup.yaml",
        format!("{MOTD}  /etc/app.conf:\n    source: files/caf\u{e9}\n").as_bytes(),
    )]);
    // The file is there, but under a Latin-1 name the YAML cannot spell.
    let dir = odd_names.path().join("files");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1 name\n",
    )
    .unwrap();
    cases.push((
        "source named in UTF-8, file named in Latin-1",
        odd_names,
        "does not exist",
    ));

    // Sources and includes that leave the checkout through symlinks.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("shadow"), "root:secret-hash:\n").unwrap();
    let via_link = branch(&[(
        "trueup.yaml",
        format!("{MOTD}  /etc/app.conf:\n    source: files/shadow\n").as_bytes(),
    )]);
    std::fs::create_dir(via_link.path().join("files")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("shadow"),
        via_link.path().join("files/shadow"),
    )
    .unwrap();
    cases.push(("source is a symlink out", via_link, "trueup.yaml:5:13"));
    let via_dir = branch(&[(
        "trueup.yaml",
        format!("{MOTD}  /etc/app.conf:\n    source: files/shadow\n").as_bytes(),
    )]);
    std::os::unix::fs::symlink(outside.path(), via_dir.path().join("files")).unwrap();
    cases.push((
        "source's directory is a symlink out",
        via_dir,
        "a parent directory is a symlink",
    ));
    let inc_link = branch(&[(
        "trueup.yaml",
        format!("include: [roles/web.yaml]\n{MOTD}").as_bytes(),
    )]);
    std::fs::write(outside.path().join("web.yaml"), "files: {}\n").unwrap();
    std::fs::create_dir(inc_link.path().join("roles")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("web.yaml"),
        inc_link.path().join("roles/web.yaml"),
    )
    .unwrap();
    cases.push(("include is a symlink out", inc_link, "trueup.yaml:1:11"));
    let entry_link = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("trueup.yaml"), MOTD).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("trueup.yaml"),
        entry_link.path().join("trueup.yaml"),
    )
    .unwrap();
    cases.push(("trueup.yaml is a symlink out", entry_link, "trueup.yaml"));
    let fifo = branch(&[(
        "trueup.yaml",
        format!("{MOTD}  /etc/app.conf:\n    source: files/pipe\n").as_bytes(),
    )]);
    std::fs::create_dir(fifo.path().join("files")).unwrap();
    nix::unistd::mkfifo(
        &fifo.path().join("files/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    cases.push(("source is a FIFO", fifo, "not a regular file"));

    let mut failures = Vec::new();
    let total = cases.len();
    for (name, dir, expect) in &cases {
        if let Some(f) = check_case(name, dir.path(), expect, &[]) {
            failures.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} generated cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The runner itself can fail: a good branch changes the root, and a
/// wrong expectation is caught.
#[test]
fn the_runner_notices_a_change_and_a_wrong_message() {
    let good = branch(&[("trueup.yaml", MOTD.as_bytes())]);
    let f = check_case("good branch", good.path(), "anything", &[]).expect("must fail");
    assert!(f.contains("exit code 0"), "{f}");
    assert!(f.contains("the root changed"), "{f}");
    let bad = branch(&[("trueup.yaml", b"nope: 1\n")]);
    let f =
        check_case("bad branch", bad.path(), "a message nobody prints", &[]).expect("must fail");
    assert!(f.contains("message lacks"), "{f}");
}

/// A source URL carrying credentials that cannot be reached: exit 1, the
/// root unchanged, and the password nowhere in the output, the logs (at
/// trace level) or the report.
#[test]
fn credentials_in_an_unreachable_source_url_never_show() {
    let host = populated_host();
    let before = snapshot(host.root.path());
    // Port 1 on loopback: nothing listens, the connection is refused.
    let url = "https://deploy:Pa55-w0rd-bad-input@127.0.0.1:1/infra/hosts.git";
    for args in [&["apply"][..], &["--format", "json", "apply"]] {
        let out = Command::new(trueup_bin())
            .arg("--config")
            .arg(host.state.path().join("no-agent.yaml"))
            .args(["--source", url, "--branch", "hosts/web1"])
            .arg("--root")
            .arg(host.root.path())
            .arg("--state-dir")
            .arg(host.state.path())
            .args(args)
            .env("TRUEUP_LOG", "trace")
            .output()
            .unwrap();
        let r = Run::from(out);
        assert_eq!(r.code, 1, "{args:?}: {}", r.all());
        assert!(!r.all().contains("panicked"), "{}", r.all());
        assert!(!r.all().contains("Pa55-w0rd"), "{args:?}: {}", r.all());
        assert!(
            r.all().contains("127.0.0.1"),
            "{args:?}: says where: {}",
            r.all()
        );
        let last = std::fs::read_to_string(host.state.path().join("last-run.json")).unwrap();
        assert!(!last.contains("Pa55-w0rd"), "{last}");
        assert_eq!(snapshot(host.root.path()), before);
    }
}
