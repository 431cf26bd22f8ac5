//! Users, groups and SSH keys, commands, `validate:`, `notify: reload` and
//! owners that a package creates in the same run (issue 13), on real
//! systemd, apt and shadow-utils: the trueup binary inside one booted
//! Debian container for the whole sequence, to keep the tier fast.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const BRANCH: &str = "/srv/branch";
const KEY_1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ1 ops@example.com";
const KEY_2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2 deploy@example.com";
const GOOD_SUDOERS: &str = "app ALL=(root) NOPASSWD: /usr/bin/true\n";
const BAD_SUDOERS: &str = "app ALL=(root) NOPASSWD /usr/bin/true = = (\n";

/// Must-show 1: a package that creates `uuidd`, and a file owned by it.
const UUIDD_PART: &str = r#"packages:
  uuid-runtime: {}
files:
  /etc/uuidd-test.conf:
    content: "owned by a user the package creates\n"
    owner: uuidd
    group: uuidd
    mode: "0640"
"#;

/// The rest of the branch, in the same `files:` mapping as `UUIDD_PART`.
fn rest(sysctl: &str, reloader: &str, sudoers: &str, motd: &str) -> String {
    format!(
        r#"  /etc/sysctl.d/90-app.conf:
    content: "{sysctl}\n"
  /etc/reloader.conf:
    content: "{reloader}\n"
    notify: {{ reloader.service: reload }}
  /etc/systemd/system/reloader.service:
    content: |
      [Service]
      ExecStart=/bin/sleep infinity
      ExecReload=/bin/sh -c 'echo reloaded >> /run/reloader-reloads'
      [Install]
      WantedBy=multi-user.target
  /etc/sudoers.d/app:
    content: {sudoers:?}
    mode: "0440"
    validate: [visudo, -cf, "{{path}}"]
  /etc/motd:
    content: "{motd}\n"
services:
  reloader.service: {{ enabled: true, state: running }}
groups:
  app: {{ gid: 990, system: true }}
users:
  app:
    uid: 990
    group: app
    groups: [adm]
    home: /srv/app
    shell: /usr/sbin/nologin
    system: true
    authorized_keys:
      - {KEY_1}
      - {KEY_2}
  olduser: {{ state: absent }}
commands:
  sysctl-reload:
    run: [sh, -c, "echo ran >> /var/lib/sysctl-runs"]
    on_change: [/etc/sysctl.d/90-app.conf]
  init-db:
    run: [sh, -c, "echo ran >> /srv/app/init-runs; touch /srv/app/.initialized"]
    creates: /srv/app/.initialized
    user: app
    cwd: /srv/app
"#
    )
}

fn write_branch(c: &Container, text: &str) {
    c.write_file(&format!("{BRANCH}/trueup.yaml"), text, 0o644);
}

fn full_branch(c: &Container, sysctl: &str, reloader: &str, sudoers: &str, motd: &str) {
    write_branch(
        c,
        &format!("{UUIDD_PART}{}", rest(sysctl, reloader, sudoers, motd)),
    );
}

/// Runs `trueup VERB --source /srv/branch --format json` inside.
fn trueup(c: &Container, verb: &str) -> (i32, Value) {
    let t = Instant::now();
    let out = c.exec(&["trueup", verb, "--source", BRANCH, "--format", "json"]);
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        c.fail(format!(
            "trueup {verb}: exit {code}, stdout is not a report ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    });
    eprintln!(
        "[accounts] trueup {verb}: exit {code} in {:.1?}",
        t.elapsed()
    );
    (code, report)
}

fn find<'a>(report: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["resource"] == name)
}

#[track_caller]
fn resource<'a>(report: &'a Value, kind: &str, name: &str) -> &'a Value {
    find(report, kind, name).unwrap_or_else(|| panic!("no {kind} {name} in {report:#}"))
}

/// The drift attributes of one resource.
fn attributes(report: &Value, kind: &str, name: &str) -> Vec<String> {
    resource(report, kind, name)["drift"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x["attribute"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `check` finds `kind name` drifting in `attribute`; `apply` repairs it;
/// `check` is clean again.
#[track_caller]
fn drift_is_repaired(c: &Container, kind: &str, name: &str, attribute: &str) {
    let (code, report) = trueup(c, "check");
    assert_eq!(code, 2, "{kind} {name}: {report:#}");
    assert!(
        attributes(&report, kind, name)
            .iter()
            .any(|a| a == attribute),
        "{kind} {name} should drift in {attribute}: {report:#}"
    );
    let (code, report) = trueup(c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        resource(&report, kind, name)["status"],
        "changed",
        "{report:#}"
    );
    let (code, report) = trueup(c, "check");
    assert_eq!(
        code, 0,
        "still drifting after the repair of {kind} {name}: {report:#}"
    );
}

fn lines(c: &Container, path: &str) -> usize {
    c.exec_stdout(&["cat", path]).lines().count()
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn users_commands_validate_reload_and_owners_of_the_same_run() {
    let base = Base::debian();
    let c = Container::boot(&base);
    eprintln!(
        "[accounts] copy of the root {:.1?}, boot {:.1?}",
        c.copy_time(),
        c.boot_time()
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_trueup"));
    std::fs::copy(bin, c.path("/usr/local/bin/trueup")).expect("copy trueup into the container");

    // Must show 1: a file owned by the user uuid-runtime creates. Before
    // the apply that installs it, check reports drift (2), not an error.
    assert_eq!(c.exec_stdout(&["getent", "passwd", "uuidd"]), "");
    write_branch(&c, UUIDD_PART);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    let conf = resource(&report, "file", "/etc/uuidd-test.conf");
    let owner = conf["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attribute"] == "owner")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(owner["expected"], "uuidd");
    assert_eq!(owner["actual"], "not present yet");
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        c.run_ok(&["stat", "-c", "%U:%G %a", "/etc/uuidd-test.conf"]),
        "uuidd:uuidd 640"
    );
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 0, "{report:#}");

    // Must show 2 (creation), 4 (first runs) and the unit for 5.
    c.run_ok(&["useradd", "--no-create-home", "olduser"]);
    full_branch(&c, "vm.swappiness = 10", "level=1", GOOD_SUDOERS, "hello");
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
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
    let pos = |what: &str| {
        order
            .iter()
            .position(|o| o == what)
            .unwrap_or_else(|| panic!("{what} not in {order:?}"))
    };
    assert!(pos("group app") < pos("user app"), "{order:?}");
    assert!(
        pos("user app") < pos("file /etc/sudoers.d/app"),
        "{order:?}"
    );
    assert!(
        pos("file /etc/sysctl.d/90-app.conf") < pos("command sysctl-reload"),
        "{order:?}"
    );
    assert!(
        pos("command init-db") < pos("service reloader.service"),
        "{order:?}"
    );
    assert_eq!(
        c.run_ok(&["getent", "passwd", "app"]),
        "app:x:990:990::/srv/app:/usr/sbin/nologin"
    );
    assert_eq!(c.run_ok(&["getent", "group", "app"]), "app:x:990:");
    assert!(
        c.run_ok(&["id", "-nG", "app"])
            .split(' ')
            .any(|g| g == "adm")
    );
    assert_eq!(
        c.exec_stdout(&["getent", "passwd", "olduser"]),
        "",
        "olduser removed"
    );
    // New users are locked: no password is ever set.
    assert!(
        c.run_ok(&["passwd", "-S", "app"]).starts_with("app L "),
        "{}",
        c.run_ok(&["passwd", "-S", "app"])
    );
    assert_eq!(
        c.read_file("/srv/app/.ssh/authorized_keys"),
        format!("{KEY_1}\n{KEY_2}\n")
    );
    assert_eq!(
        c.run_ok(&[
            "stat",
            "-c",
            "%U:%G %a",
            "/srv/app/.ssh",
            "/srv/app/.ssh/authorized_keys"
        ]),
        "app:app 700\napp:app 600"
    );
    assert_eq!(lines(&c, "/var/lib/sysctl-runs"), 1);
    assert_eq!(lines(&c, "/srv/app/init-runs"), 1);
    assert_eq!(
        c.run_ok(&["stat", "-c", "%U", "/srv/app/init-runs"]),
        "app",
        "init-db ran as its user"
    );
    let run = &resource(&report, "command", "init-db")["run"];
    assert_eq!(run["exit_code"], 0, "{report:#}");
    c.run_ok(&["visudo", "-c"]);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 0, "{report:#}");
    // A run that changes nothing runs nothing.
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["summary"]["changed"], 0, "{report:#}");
    assert_eq!(lines(&c, "/var/lib/sysctl-runs"), 1);
    assert_eq!(lines(&c, "/srv/app/init-runs"), 1);

    // Must show 2: drift made by hand is found and repaired.
    c.run_ok(&["usermod", "-s", "/bin/bash", "app"]);
    drift_is_repaired(&c, "user", "app", "shell");
    assert!(
        c.run_ok(&["getent", "passwd", "app"])
            .ends_with(":/usr/sbin/nologin")
    );
    c.write_file(
        "/srv/app/.ssh/authorized_keys",
        "ssh-rsa AAAAB3Nza intruder\n",
        0o600,
    );
    drift_is_repaired(&c, "user", "app", "authorized_keys");
    assert_eq!(
        c.read_file("/srv/app/.ssh/authorized_keys"),
        format!("{KEY_1}\n{KEY_2}\n")
    );
    c.run_ok(&["userdel", "app"]);
    drift_is_repaired(&c, "user", "app", "presence");
    assert_eq!(
        c.run_ok(&["getent", "passwd", "app"]),
        "app:x:990:990::/srv/app:/usr/sbin/nologin"
    );
    assert_eq!(lines(&c, "/srv/app/init-runs"), 1, "init-db runs once");

    // Must show 4: sysctl-reload runs exactly when its file changes.
    full_branch(&c, "vm.swappiness = 20", "level=1", GOOD_SUDOERS, "hello");
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(
        resource(&report, "command", "sysctl-reload")["status"],
        "drift",
        "check lists it"
    );
    assert_eq!(lines(&c, "/var/lib/sysctl-runs"), 1, "check runs nothing");
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        resource(&report, "command", "sysctl-reload")["status"],
        "changed"
    );
    assert_eq!(lines(&c, "/var/lib/sysctl-runs"), 2);
    let (code, _) = trueup(&c, "apply");
    assert_eq!(code, 0);
    assert_eq!(lines(&c, "/var/lib/sysctl-runs"), 2);
    assert_eq!(lines(&c, "/srv/app/init-runs"), 1);

    // Must show 5: notify reload keeps the main process and runs ExecReload.
    let pid = c.unit_property("reloader.service", "MainPID");
    assert_ne!(pid, "0");
    // (A unit new in a run is reloaded after its start too: see
    // docs/resources.md, notify.)
    let before = lines(&c, "/run/reloader-reloads");
    full_branch(&c, "vm.swappiness = 20", "level=2", GOOD_SUDOERS, "hello");
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        resource(&report, "service", "reloader.service")["action"],
        "reload",
        "{report:#}"
    );
    c.wait_for(Duration::from_secs(10), "ExecReload to run", || {
        lines(&c, "/run/reloader-reloads") == before + 1
    });
    assert_eq!(
        c.unit_property("reloader.service", "MainPID"),
        pid,
        "reload, not restart"
    );

    // Must show 3: a sudoers drop-in that visudo refuses is not installed;
    // the rest of that run is applied.
    full_branch(
        &c,
        "vm.swappiness = 20",
        "level=2",
        BAD_SUDOERS,
        "changed in the same commit",
    );
    let (code, report) = trueup(&c, "apply");
    assert_ne!(code, 0, "{report:#}");
    let sudoers = resource(&report, "file", "/etc/sudoers.d/app");
    assert_eq!(sudoers["status"], "failed", "{report:#}");
    let err = sudoers["error"].as_str().unwrap();
    assert!(err.contains("visudo"), "{err}");
    assert!(err.contains("syntax error"), "visudo's own message: {err}");
    assert_eq!(c.read_file("/etc/sudoers.d/app"), GOOD_SUDOERS);
    c.run_ok(&["visudo", "-c"]);
    assert_eq!(resource(&report, "file", "/etc/motd")["status"], "changed");
    assert_eq!(c.read_file("/etc/motd"), "changed in the same commit\n");
    let leftovers = c.run_ok(&["ls", "-A", "/etc/sudoers.d"]);
    assert!(
        !leftovers.contains("trueup"),
        "temporary file left: {leftovers}"
    );

    // Fixed in the next commit: in sync everywhere.
    full_branch(
        &c,
        "vm.swappiness = 20",
        "level=2",
        GOOD_SUDOERS,
        "changed in the same commit",
    );
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 0, "{report:#}");
    c.shutdown();
}

/// Under `--root` (an image being built, no container needed): groups and
/// users are changed with the tools' `--prefix` in the root's own
/// databases, never the machine's; commands and `validate:` do not run and
/// are reported skipped.
#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn under_another_root_accounts_use_prefix_and_commands_are_skipped() {
    use std::process::Command;
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let branch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow", "login.defs"] {
        let from = Path::new("/etc").join(f);
        if from.exists() {
            std::fs::copy(&from, root.path().join("etc").join(f)).unwrap();
        }
    }
    let marker = state.path().join("command-ran");
    std::fs::write(
        branch.path().join("trueup.yaml"),
        format!(
            r#"groups:
  imgapp: {{ gid: 3990 }}
users:
  imgapp:
    uid: 3990
    group: imgapp
    home: /srv/imgapp
    shell: /usr/sbin/nologin
    authorized_keys: ["{KEY_1}"]
files:
  /etc/sudoers.d/imgapp:
    content: "{GOOD_SUDOERS}"
    validate: [visudo, -cf, "{{path}}"]
  /etc/motd:
    content: "image\n"
commands:
  init:
    run: [touch, {marker}]
    creates: /srv/imgapp/.done
"#,
            GOOD_SUDOERS = GOOD_SUDOERS.trim_end(),
            marker = marker.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trueup"))
        .arg("--config")
        .arg(state.path().join("no-agent.yaml"))
        .args(["apply", "--format", "json", "--source"])
        .arg(branch.path())
        .arg("--root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        resource(&report, "group", "imgapp")["status"],
        "changed",
        "{report:#}"
    );
    assert_eq!(
        resource(&report, "user", "imgapp")["status"],
        "changed",
        "{report:#}"
    );
    assert_eq!(
        resource(&report, "file", "/etc/motd")["status"],
        "changed",
        "{report:#}"
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("imgapp:x:3990:3990::/srv/imgapp:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("imgapp"),
        "the machine's own users are untouched"
    );
    let keys = root.path().join("srv/imgapp/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        format!("{KEY_1}\n")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&keys).unwrap().uid(), 3990);
    // Commands and validate run on the machine, so not for another root.
    let init = resource(&report, "command", "init");
    assert_eq!(init["status"], "skipped", "{report:#}");
    assert!(init["error"].as_str().unwrap().contains("under --root"));
    assert!(!marker.exists(), "the command must not run");
    let sudoers = resource(&report, "file", "/etc/sudoers.d/imgapp");
    assert_eq!(sudoers["status"], "skipped", "{report:#}");
    assert!(!root.path().join("etc/sudoers.d/imgapp").exists());
    assert_ne!(out.status.code(), Some(0), "skipped resources fail the run");
}
