//! Real apt and systemd: the trueup binary inside a booted Debian container
//! converges a package from a local apt repository, its templated
//! configuration (with `notify`) and its service, from nothing, in one run;
//! then drift made by hand (service stopped, disabled, package removed) is
//! found by `check` and repaired by `apply`. One container for the whole
//! sequence, to keep the tier fast.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const BRANCH: &str = "/srv/branch";

/// The host branch: the test service's package, its configuration from a
/// template that notifies the service, and the service itself.
/// `version` pins the package.
fn write_branch(c: &Container, greeting: &str, version: Option<&str>) {
    let pin = version
        .map(|v| format!("version: \"{v}\""))
        .unwrap_or_default();
    c.write_file(
        &format!("{BRANCH}/trueup.yaml"),
        format!(
            "vars:\n  greeting: {greeting}\n\
             packages:\n  {TESTSVC_PACKAGE}: {{ {pin} }}\n\
             files:\n  {TESTSVC_CONF}:\n    template: templates/testsvc.conf.hbs\n    mode: \"0644\"\n    notify: [{TESTSVC_UNIT}]\n\
             services:\n  {TESTSVC_UNIT}: {{ enabled: true, state: running }}\n"
        ),
        0o644,
    );
    c.write_file(
        &format!("{BRANCH}/templates/testsvc.conf.hbs"),
        "# managed by trueup on {{facts.hostname}}\ngreeting={{vars.greeting}}\n",
        0o644,
    );
}

/// Runs `trueup VERB --source /srv/branch --format json` inside; returns
/// the exit code and the report.
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
        "[apt-systemd] trueup {verb}: exit {code} in {:.1?}",
        t.elapsed()
    );
    (code, report)
}

/// (kind, resource, attributes) of every resource in a report.
fn drift(report: &Value) -> Vec<(String, String, Vec<String>)> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["resource"].as_str().unwrap().to_string(),
                r["drift"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .map(|x| x["attribute"].as_str().unwrap().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn resource<'a>(report: &'a Value, kind: &str, name: &str) -> &'a Value {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["resource"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report:#}"))
}

/// Exit 0 and nothing left to do.
#[track_caller]
fn assert_converged(c: &Container, what: &str) {
    let (code, report) = trueup(c, "apply");
    assert_eq!(code, 0, "{what}: apply failed: {report:#}");
    let (code, report) = trueup(c, "check");
    assert_eq!(code, 0, "{what}: still drifting after apply: {report:#}");
}

fn main_pid(c: &Container) -> String {
    let pid = c.unit_property(TESTSVC_UNIT, "MainPID");
    assert_ne!(pid, "0", "{TESTSVC_UNIT} has no main process");
    pid
}

fn wait_active(c: &Container) {
    c.wait_for(Duration::from_secs(10), "trueup-testsvc active", || {
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]) == "active"
    });
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn apt_package_config_and_service_converge_and_drift_is_repaired() {
    let started = Instant::now();
    let base = Base::debian();
    let c = Container::boot(&base);
    eprintln!(
        "[apt-systemd] copy of the root {:.1?}, boot {:.1?}",
        c.copy_time(),
        c.boot_time()
    );

    // The binary cargo built runs inside: the container is Debian 12 too.
    let t = Instant::now();
    let bin = Path::new(env!("CARGO_BIN_EXE_trueup"));
    std::fs::copy(bin, c.path("/usr/local/bin/trueup")).expect("copy trueup into the container");
    let repo = AptRepo::new();
    repo.add(&testsvc_deb("1.0"));
    repo.publish(&c);
    write_branch(&c, "hello", None);
    eprintln!(
        "[apt-systemd] binary, repository and branch in place: {:.1?}",
        t.elapsed()
    );
    assert_eq!(
        c.exec_stdout(&["dpkg-query", "-W", "-f", "${Status}", TESTSVC_PACKAGE]),
        "",
        "the package must not be there yet"
    );

    // Must show 4: from nothing, package, configuration and service in one run.
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        drift(&report),
        [
            (
                "package".to_string(),
                TESTSVC_PACKAGE.to_string(),
                strings(&["presence"])
            ),
            (
                "file".to_string(),
                TESTSVC_CONF.to_string(),
                strings(&["presence"])
            ),
            (
                "service".to_string(),
                TESTSVC_UNIT.to_string(),
                strings(&["enabled", "state"])
            ),
        ],
        "{report:#}"
    );
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    let order: Vec<String> = drift(&report)
        .into_iter()
        .map(|(k, r, _)| format!("{k} {r}"))
        .collect();
    assert_eq!(
        order,
        [
            format!("package {TESTSVC_PACKAGE}"),
            format!("file {TESTSVC_CONF}"),
            format!("service {TESTSVC_UNIT}"),
        ],
        "converged in plan order: {report:#}"
    );
    assert_eq!(report["summary"]["changed"], 3, "{report:#}");
    // The package's own scripts started the service before the config was
    // written, so the notify restart follows the start.
    assert_eq!(
        resource(&report, "service", TESTSVC_UNIT)["action"],
        "enable, start, restart",
        "{report:#}"
    );
    assert_eq!(
        c.exec_stdout(&[
            "dpkg-query",
            "-W",
            "-f",
            "${Status} ${Version}",
            TESTSVC_PACKAGE
        ]),
        "install ok installed 1.0"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", TESTSVC_UNIT]),
        "enabled"
    );
    wait_active(&c);
    let pid = main_pid(&c);
    let conf = c.read_file(TESTSVC_CONF);
    assert!(conf.contains("greeting=hello"), "{conf}");
    // The running service read trueup's configuration, not the packaged one.
    c.wait_for(
        Duration::from_secs(10),
        "the service to load trueup's config",
        || {
            c.exec(&["cat", TESTSVC_LOADED])
                .stdout
                .windows(14)
                .any(|w| w == b"greeting=hello")
        },
    );
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 0, "one run was enough: {report:#}");

    // Must show 3: a template change restarts the service through notify.
    write_branch(&c, "bonjour", None);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(
        drift(&report),
        [(
            "file".to_string(),
            TESTSVC_CONF.to_string(),
            vec!["content".to_string()]
        )],
        "a pending restart is not drift: {report:#}"
    );
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        resource(&report, "service", TESTSVC_UNIT)["action"],
        "restart",
        "{report:#}"
    );
    wait_active(&c);
    let restarted = main_pid(&c);
    assert_ne!(
        restarted, pid,
        "MainPID unchanged: the config change did not restart the service"
    );
    assert!(c.read_file(TESTSVC_LOADED).contains("greeting=bonjour"));
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 0, "{report:#}");

    // Stopped by hand: drift on state, repaired.
    c.run_ok(&["systemctl", "stop", TESTSVC_UNIT]);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(
        drift(&report),
        [(
            "service".to_string(),
            TESTSVC_UNIT.to_string(),
            vec!["state".to_string()]
        )]
    );
    let d = &resource(&report, "service", TESTSVC_UNIT)["drift"][0];
    assert_eq!(
        (d["expected"].as_str(), d["actual"].as_str()),
        (Some("running"), Some("not running (inactive)"))
    );
    assert_converged(&c, "stopped by hand");
    wait_active(&c);
    assert_ne!(main_pid(&c), restarted);

    // Disabled by hand: drift on enabled, repaired.
    c.run_ok(&["systemctl", "disable", TESTSVC_UNIT]);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(
        drift(&report),
        [(
            "service".to_string(),
            TESTSVC_UNIT.to_string(),
            vec!["enabled".to_string()]
        )]
    );
    assert_converged(&c, "disabled by hand");
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", TESTSVC_UNIT]),
        "enabled"
    );

    // The package removed by hand (its postrm masks the unit): the package
    // is reinstalled, the service enabled and running again, the kept
    // configuration untouched.
    c.run_ok(&["dpkg", "-r", TESTSVC_PACKAGE]);
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    let found = drift(&report);
    assert_eq!(
        found[0],
        (
            "package".to_string(),
            TESTSVC_PACKAGE.to_string(),
            vec!["presence".to_string()]
        ),
        "{report:#}"
    );
    assert_eq!(found[1].1, TESTSVC_UNIT, "{report:#}");
    assert_eq!(
        found.len(),
        2,
        "the kept conffile is still trueup's: {report:#}"
    );
    assert_converged(&c, "package removed by hand");
    assert_eq!(
        c.exec_stdout(&["dpkg-query", "-W", "-f", "${Status}", TESTSVC_PACKAGE]),
        "install ok installed"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", TESTSVC_UNIT]),
        "enabled"
    );
    wait_active(&c);
    assert!(c.read_file(TESTSVC_LOADED).contains("greeting=bonjour"));

    // Version pins. 1.1 comes in a second local source that the
    // container's lists do not know yet (a `file:` source is read in place,
    // so a new one is what needs the update): trueup must run
    // `apt-get update` to find the pinned version.
    let t = Instant::now();
    repo.add(&testsvc_deb("1.1"));
    repo.index();
    let next = "/srv/testrepo-next";
    std::fs::create_dir_all(c.path(next)).unwrap();
    for e in std::fs::read_dir(repo.dir()).unwrap().flatten() {
        std::fs::copy(e.path(), c.path(next).join(e.file_name())).unwrap();
    }
    c.write_file(
        "/etc/apt/sources.list.d/trueup-next.list",
        format!("deb [trusted=yes] file:{next} ./\n"),
        0o644,
    );
    assert!(
        !c.exec_stdout(&["apt-cache", "madison", TESTSVC_PACKAGE])
            .contains("1.1"),
        "the container's lists must not know 1.1 yet"
    );
    eprintln!("[apt-systemd] 1.1 in the repository: {:.1?}", t.elapsed());
    write_branch(&c, "bonjour", Some("1.1*"));
    let (code, report) = trueup(&c, "check");
    assert_eq!(code, 2, "{report:#}");
    let d = &resource(&report, "package", TESTSVC_PACKAGE)["drift"][0];
    assert_eq!(
        (
            d["attribute"].as_str(),
            d["expected"].as_str(),
            d["actual"].as_str()
        ),
        (Some("version"), Some("1.1*"), Some("1.0"))
    );
    let before = main_pid(&c);
    assert_converged(&c, "pinned to 1.1*");
    assert_eq!(
        c.exec_stdout(&["dpkg-query", "-W", "-f", "${Version}", TESTSVC_PACKAGE]),
        "1.1"
    );
    // The upgrade kept trueup's configuration (--force-confold) and the
    // package restarted the service with it.
    assert!(c.read_file(TESTSVC_CONF).contains("greeting=bonjour"));
    wait_active(&c);
    assert_ne!(main_pid(&c), before);
    // And back down: an exact pin downgrades.
    write_branch(&c, "bonjour", Some("1.0"));
    assert_converged(&c, "pinned back to 1.0");
    assert_eq!(
        c.exec_stdout(&["dpkg-query", "-W", "-f", "${Version}", TESTSVC_PACKAGE]),
        "1.0"
    );
    // A pin that no source offers fails plainly, naming what is offered.
    write_branch(&c, "bonjour", Some("2.*"));
    let (code, report) = trueup(&c, "apply");
    assert_eq!(code, 1, "{report:#}");
    let p = resource(&report, "package", TESTSVC_PACKAGE);
    assert_eq!(p["status"], "failed");
    let err = p["error"].as_str().unwrap();
    assert!(
        err.contains("no version of trueup-testsvc matches 2.*") && err.contains("1.1, 1.0"),
        "{err}"
    );

    let t = Instant::now();
    drop(c);
    eprintln!("[apt-systemd] shutdown: {:.1?}", t.elapsed());
    eprintln!("[apt-systemd] whole test: {:.1?}", started.elapsed());
}
