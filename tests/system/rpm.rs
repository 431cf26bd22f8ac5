//! The .rpm built by cargo-generate-rpm, inspected with the real rpm on the
//! host: its file list, modes and flags (agent.yaml is
//! `%config(noreplace)`), its scriptlets and requirements, then installed
//! into an empty `rpm --root` to check the layout, verified, and erased (a
//! changed configuration is kept as `.rpmsave`).
//!
//! Debian's rpm keeps its database under `$HOME` unless told otherwise (see
//! `src/resource/package/rpm.rs`), so every call gets `--dbpath
//! /var/lib/rpm`, relative to the root, and a scratch `HOME`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::packages::{built_rpm, host_ok, record_timing};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn rpm(home: &Path) -> Command {
    let mut cmd = Command::new("rpm");
    cmd.env("HOME", home).env("LANG", "C.UTF-8");
    cmd
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn rpm_holds_the_agent_unit_config_and_docs_with_scriptlets() {
    let started = Instant::now();
    let pkg = built_rpm();
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    fs::create_dir_all(&home).unwrap();

    // File list with modes and flags: c = %config, n = noreplace, d = %doc.
    let listing = host_ok(rpm(&home).arg("-qp").arg("--qf").arg(
        "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEFLAGS:fflags}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\n]",
    ).arg(&pkg));
    let files: BTreeMap<String, (String, String, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "unexpected rpm --qf line {l:?}");
            (
                f[0].to_string(),
                (f[1].to_string(), f[2].to_string(), f[3].to_string()),
            )
        })
        .collect();
    let expect = |path: &str, perms: &str, flags: &str| {
        let Some((p, fl, owner)) = files.get(path) else {
            panic!("{path} is not in the rpm; it holds:\n{listing}");
        };
        assert_eq!(p, perms, "mode of {path}");
        assert_eq!(fl, flags, "flags of {path}");
        assert_eq!(owner, "root:root", "owner of {path}");
    };
    expect("/usr/bin/trueup", "-rwxr-xr-x", "");
    expect("/usr/lib/systemd/system/trueup.service", "-rw-r--r--", "");
    expect("/etc/trueup/agent.yaml", "-rw-r--r--", "cn");
    expect("/usr/share/man/man1/trueup.1.gz", "-rw-r--r--", "d");
    expect("/usr/share/man/man1/trueup-agent.1.gz", "-rw-r--r--", "d");
    expect(
        "/usr/share/bash-completion/completions/trueup",
        "-rw-r--r--",
        "",
    );
    expect("/usr/share/zsh/site-functions/_trueup", "-rw-r--r--", "");
    expect(
        "/usr/share/fish/vendor_completions.d/trueup.fish",
        "-rw-r--r--",
        "",
    );
    // `rpm -qpl` and `-qpc` agree with the above.
    let l = host_ok(rpm(&home).arg("-qpl").arg(&pkg));
    assert_eq!(
        l.lines().count(),
        files.len(),
        "rpm -qpl lists other files:\n{l}"
    );
    let configs = host_ok(rpm(&home).arg("-qpc").arg(&pkg));
    assert_eq!(configs.trim(), "/etc/trueup/agent.yaml");

    // Scriptlets: enable and start on install, try-restart without blocking
    // on upgrade, disable and stop on removal only.
    let scripts = host_ok(rpm(&home).arg("-qp").arg("--scripts").arg(&pkg));
    let section = |name: &str| -> String {
        let start = scripts
            .find(&format!("{name} scriptlet"))
            .unwrap_or_else(|| panic!("no {name} scriptlet in:\n{scripts}"));
        let rest = &scripts[start..];
        let end = rest[1..]
            .find(" scriptlet (using")
            .and_then(|i| rest[..i + 1].rfind('\n'))
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let post = section("postinstall");
    assert!(post.contains("systemctl enable trueup.service"), "{post}");
    assert!(post.contains("systemctl start trueup.service"), "{post}");
    assert!(
        post.contains("systemctl --no-block try-restart trueup.service"),
        "{post}"
    );
    let preun = section("preuninstall");
    assert!(preun.contains(r#"if [ "$1" -eq 0 ]"#), "{preun}");
    assert!(preun.contains("systemctl stop trueup.service"), "{preun}");
    assert!(
        preun.contains("systemctl disable trueup.service"),
        "{preun}"
    );
    let postun = section("postuninstall");
    assert!(postun.contains("daemon-reload"), "{postun}");
    assert!(
        !postun.contains("rm -"),
        "rpm has no purge; %postun must not delete anything:\n{postun}"
    );
    let requires = host_ok(rpm(&home).arg("-qpR").arg(&pkg));
    assert!(
        requires.lines().any(|l| l.trim().starts_with("systemd")),
        "{requires}"
    );

    // Install into an empty root: no dependencies there, and no shell to
    // run scriptlets with (they were read above).
    let root = scratch.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let in_root = |args: &[&str]| {
        let mut cmd = rpm(&home);
        cmd.arg("--root")
            .arg(&root)
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args);
        cmd
    };
    host_ok(in_root(&["-i", "--nodeps", "--noscripts"]).arg(&pkg));
    let installed = host_ok(&mut in_root(&["-qa", "--qf", "%{NAME} %{VERSION}\n"]));
    assert_eq!(
        installed.trim(),
        format!("trueup {}", env!("CARGO_PKG_VERSION"))
    );
    let bin = root.join("usr/bin/trueup");
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    let version = host_ok(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("trueup {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        fs::read(root.join("usr/lib/systemd/system/trueup.service")).unwrap(),
        fs::read(Path::new(REPO).join("systemd/trueup.service")).unwrap()
    );
    let conf = root.join("etc/trueup/agent.yaml");
    assert_eq!(
        fs::read(&conf).unwrap(),
        fs::read(Path::new(REPO).join("packaging/agent.yaml")).unwrap()
    );
    let man = fs::read(root.join("usr/share/man/man1/trueup.1.gz")).unwrap();
    assert_eq!(&man[..2], b"\x1f\x8b", "man page is not gzipped");
    // Every file is as the package says (digest, mode, owner).
    host_ok(&mut in_root(&["-V", "--nodeps", "trueup"]));

    // Erase: a changed %config(noreplace) file is kept as .rpmsave.
    fs::write(&conf, "repo: /srv/changed-by-the-admin\n").unwrap();
    host_ok(&mut in_root(&["-e", "--nodeps", "--noscripts", "trueup"]));
    assert!(!bin.exists(), "/usr/bin/trueup left after rpm -e");
    assert_eq!(
        fs::read_to_string(root.join("etc/trueup/agent.yaml.rpmsave")).unwrap(),
        "repo: /srv/changed-by-the-admin\n"
    );
    record_timing(
        "rpm: inspect, install into --root, erase",
        started.elapsed(),
    );
}
