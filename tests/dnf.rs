//! Real dnf and rpm through the binary: two small RPMs built with rpmbuild,
//! a local repository made with createrepo_c
//! (`tests/fixtures/rpm/build-test-rpms.sh`), and `trueup --root R` on a
//! fresh installroot with the dnf backend forced in the agent
//! configuration. Needs `dnf`, `rpm` and `createrepo-c` (Debian packages;
//! `scripts/install-test-deps.sh` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::*;

const A: &str = "trueup-test-a";
const B: &str = "trueup-test-b";

/// The test repository, an installroot and what trueup needs to use them.
struct DnfHost {
    _dir: tempfile::TempDir,
    out: PathBuf,
    root: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

impl DnfHost {
    fn new() -> DnfHost {
        let dir = tempfile::Builder::new()
            .prefix("trueup-dnf-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("out");
        let t = Instant::now();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rpm/build-test-rpms.sh");
        let built = Command::new(&script).arg(&out).output().unwrap();
        assert!(
            built.status.success(),
            "{} failed (are rpm and createrepo-c installed?):\n{}",
            script.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        eprintln!("[dnf] rpmbuild + createrepo_c: {:.1?}", t.elapsed());
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.path().join("agent.yaml");
        // The dnf options are the ones documented at the top of
        // src/resource/package/rpm.rs: only the test repository, and a
        // dnf.conf of our own instead of the host's.
        std::fs::write(
            &config,
            format!(
                "packages:\n  backend: dnf\n  dnf_options:\n    - --config={out}/dnf.conf\n    - --noplugins\n    - --setopt=reposdir={out}/repos.d\n    - --disablerepo=*\n    - --enablerepo=trueup-test\n    - --releasever=trueup\n",
                out = out.display()
            ),
        )
        .unwrap();
        DnfHost {
            _dir: dir,
            out,
            root,
            state,
            config,
        }
    }

    /// rpm and dnf find the database through $HOME/.rpmmacros (Debian's
    /// rpm keeps it under $HOME otherwise).
    fn home(&self) -> PathBuf {
        self.out.join("rpm-home")
    }

    fn trueup(&self, branch: &Path, args: &[&str]) -> Run {
        let t = Instant::now();
        let out = Command::new(trueup_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--source")
            .arg(branch)
            .arg("--root")
            .arg(&self.root)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .arg("--format")
            .arg("json")
            .env("HOME", self.home())
            .env_remove("TRUEUP_LOG")
            .output()
            .unwrap();
        eprintln!("[dnf] trueup {}: {:.1?}", args.join(" "), t.elapsed());
        Run::from(out)
    }

    /// Installed packages under the root, by name, as rpm itself says.
    fn rpm_names(&self) -> Vec<String> {
        let out = Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args(["-qa", "--qf", "%{NAME}\\n"])
            .env("HOME", self.home())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    fn rpm_erase_by_hand(&self, name: &str) {
        let out = Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args(["-e", "--nodeps", name])
            .env("HOME", self.home())
            .output()
            .unwrap();
        assert!(out.status.success(), "rpm -e {name}: {out:?}");
    }
}

fn branch(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "trueup.yaml", yaml);
    dir
}

fn status_of<'a>(report: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["resource"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report}"))
}

#[test]
#[ignore = "needs dnf and rpm: run by scripts/test.sh"]
fn dnf_installs_detects_drift_repairs_and_removes() {
    let started = Instant::now();
    let h = DnfHost::new();
    let present = branch(&format!(
        "packages:\n  {A}: {{}}\n  {B}: {{ version: \"1.0-*\" }}\n"
    ));

    // From an empty installroot: both missing.
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![
            ("package".into(), A.into(), vec!["presence".into()]),
            ("package".into(), B.into(), vec!["presence".into()]),
        ]
    );
    assert_eq!(
        status_of(&report, "package", B)["drift"][0]["expected"],
        "installed (1.0-*)"
    );
    assert!(h.rpm_names().is_empty(), "check installed something");

    let r = h.trueup(present.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let report = r.json();
    assert_eq!(report["summary"]["changed"], 2, "{report}");
    assert_eq!(status_of(&report, "package", B)["action"], "install 1.0-*");
    assert_eq!(h.rpm_names(), [A, B]);
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // One removed by hand is drift, named, and repaired.
    h.rpm_erase_by_hand(B);
    assert_eq!(h.rpm_names(), [A]);
    let r = h.trueup(present.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![("package".into(), B.into(), vec!["presence".into()])]
    );
    let r = h.trueup(present.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.json()["summary"]["changed"], 1);
    assert_eq!(h.rpm_names(), [A, B]);

    // A pin no version matches: version drift, and dnf's own error.
    let pinned = branch(&format!("packages:\n  {A}: {{ version: \"2.*\" }}\n"));
    let r = h.trueup(pinned.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let report = r.json();
    let d = &status_of(&report, "package", A)["drift"][0];
    assert_eq!(
        (
            d["attribute"].as_str(),
            d["expected"].as_str(),
            d["actual"].as_str()
        ),
        (Some("version"), Some("2.*"), Some("1.0-1"))
    );
    let r = h.trueup(pinned.path(), &["apply"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let failed = r.json();
    let a = status_of(&failed, "package", A);
    assert_eq!(a["status"], "failed");
    assert!(
        a["error"].as_str().unwrap().contains(&format!("{A}-2.*")),
        "the error shows dnf's words: {a}"
    );

    // Declared absent: both removed.
    let absent = branch(&format!(
        "packages:\n  {A}: {{ state: absent }}\n  {B}: {{ state: absent }}\n"
    ));
    let r = h.trueup(absent.path(), &["check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let r = h.trueup(absent.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.json()["summary"]["changed"], 2);
    assert!(h.rpm_names().is_empty(), "{:?}", h.rpm_names());
    let r = h.trueup(absent.path(), &["check"]);
    assert_eq!(r.code, 0, "{}", r.all());
    eprintln!("[dnf] whole test: {:.1?}", started.elapsed());
}

#[test]
#[ignore = "needs dnf and rpm: run by scripts/test.sh"]
fn packages_then_files_converge_in_one_run_from_nothing() {
    let started = Instant::now();
    let h = DnfHost::new();
    // The configuration goes next to what the package installs.
    let state = branch(&format!(
        "packages:\n  {A}: {{}}\n  {B}: {{}}\ndirectories:\n  /etc/trueup-test: {{ mode: \"0750\" }}\nfiles:\n  /etc/trueup-test/app.conf:\n    content: \"greeting = hello\\n\"\n  /usr/share/{A}/extra:\n    content: \"added by trueup\\n\"\n"
    ));
    let r = h.trueup(state.path(), &["apply"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let report = r.json();
    let order: Vec<String> = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap(),
                r["resource"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            format!("package {A}"),
            format!("package {B}"),
            "directory /etc/trueup-test".to_string(),
            "file /etc/trueup-test/app.conf".to_string(),
            format!("file /usr/share/{A}/extra"),
        ],
        "the report lists resources in the order they converged"
    );
    assert!(
        report["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "changed"),
        "{report}"
    );
    // The package's own file and ours sit side by side.
    let share = h.root.join(format!("usr/share/{A}"));
    assert_eq!(
        std::fs::read_to_string(share.join("hello")).unwrap(),
        format!("hello from {A}\n")
    );
    assert_eq!(
        std::fs::read_to_string(share.join("extra")).unwrap(),
        "added by trueup\n"
    );
    let r = h.trueup(state.path(), &["check"]);
    assert_eq!(r.code, 0, "one run was enough: {}", r.all());
    eprintln!("[dnf] whole test: {:.1?}", started.elapsed());
}

#[test]
fn apt_packages_under_a_scratch_root_are_read_but_never_installed() {
    // A scratch root with a dpkg status database: trueup reads it, and
    // refuses to run apt-get for it, so the host's packages are safe.
    let host = Host::new();
    let status = host.path("/var/lib/dpkg/status");
    std::fs::create_dir_all(status.parent().unwrap()).unwrap();
    std::fs::write(
        &status,
        "Package: hello\nStatus: install ok installed\nVersion: 2.10-3\nArchitecture: amd64\n\n",
    )
    .unwrap();
    let config = host.state.path().join("agent.yaml");
    std::fs::write(&config, "packages: { backend: apt }\n").unwrap();
    let b = branch("packages:\n  hello: { version: \"2.10-*\" }\n  trueup-nosuch: {}\n");
    let out = Command::new(trueup_bin())
        .arg("--config")
        .arg(&config)
        .arg("--source")
        .arg(b.path())
        .arg("--root")
        .arg(host.root.path())
        .arg("--state-dir")
        .arg(host.state.path())
        .args(["apply", "--format", "json"])
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{}", r.all());
    let report = r.json();
    assert_eq!(
        drifted(&report),
        vec![(
            "package".into(),
            "trueup-nosuch".into(),
            vec!["presence".into()]
        )],
        "hello is installed in the scratch root's database"
    );
    let err = status_of(&report, "package", "trueup-nosuch")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("apt has no install root"), "{err}");
}
