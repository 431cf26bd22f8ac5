//! d) A fresh Debian with cloud-init boots with a NoCloud seed holding
//! `examples/cloud-init/user-data`, and converges with no other step:
//! cloud-init adds the (signed) apt repository, installs the trueup package,
//! writes the agent's configuration, deploy key, known_hosts and allowed
//! signers, and starts the agent, which fetches the host's signed branch
//! over ssh from the host's loopback and applies it.
//!
//! The example is used as it is, with only the values it marks `CHANGE:`
//! replaced (each must occur exactly once, so the test fails if the example
//! drifts from what is tested):
//!
//! | in the example | here |
//! | --- | --- |
//! | `ssh://git@git.example.com/infra/hosts.git` | the loopback sshd's URL |
//! | the deploy key | the key that sshd accepts |
//! | `git.example.com ssh-ed25519 …` (known_hosts) | `[127.0.0.1]:PORT` and sshd's host key |
//! | `ops@example.com … ssh-ed25519 …` (allowed_signers) | the key signing the test commits |
//! | the apt repository's OpenPGP key | the key signing the test repository |
//! | `https://apt.example.com/trueup bookworm main` | `file:/srv/trueup-apt ./` (a flat repository in the container) |

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gitserver::{SshKey, SshServer, TestRepo};
use crate::harness::*;
use crate::packages::{AptSigner, built_deb, record_timing, replace_block, replace_once};

const HOSTNAME: &str = "web1";
const APT_DIR: &str = "/srv/trueup-apt";
const DEMO_CONF: &str = "/etc/trueup-demo.conf";

fn example_user_data() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloud-init/user-data");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
#[ignore = "needs root: run by scripts/test.sh"]
fn cloud_init_bootstraps_a_host_from_the_example_user_data() {
    let deb = built_deb();
    let base = Base::cloud_init();
    if let Some(t) = base.build_time() {
        record_timing("debootstrap of the cloud-init root (not cached)", t);
    }

    // The fleet repository behind sshd on the host's loopback, with the
    // host's branch signed by a key the host is told to trust.
    let served = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(served.path(), "fleet");
    let ssh = SshServer::start(served.path());
    let signer = SshKey::generate(keys.path(), "ops", "ops@trueup.invalid");
    let branch = format!("hosts/{HOSTNAME}");
    let state = format!(
        r#"files:
  {DEMO_CONF}:
    content: "bootstrapped by cloud-init on {{{{facts.hostname}}}}\n"
packages:
  {TESTSVC_PACKAGE}: {{}}
services:
  {TESTSVC_UNIT}: {{ enabled: true, state: running }}
"#
    );
    let c1 = repo.commit_signed(&[("trueup.yaml", &state)], "web1", &signer);
    repo.push(&branch);

    // The apt repository: the built trueup .deb and the test service,
    // signed like a real one.
    let apt = AptRepo::new();
    apt.add_file(&deb);
    apt.add(&testsvc_deb("1.0"));
    let apt_signer = AptSigner::new();
    apt_signer.sign(&apt);

    // The example, with only its environment-specific values replaced.
    let mut ud = example_user_data();
    ud = replace_once(
        &ud,
        "ssh://git@git.example.com/infra/hosts.git",
        &ssh.url(&repo.rel()),
    );
    ud = replace_block(
        &ud,
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "-----END OPENSSH PRIVATE KEY-----",
        &fs::read_to_string(ssh.client_key()).unwrap(),
    );
    ud = replace_once(
        &ud,
        "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICHANGEMEchangemeCHANGEMEchangemeCHANGEME",
        &format!("[127.0.0.1]:{} {}", ssh.port(), ssh.host_key_line()),
    );
    ud = replace_once(
        &ud,
        r#"ops@example.com namespaces="git" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICHANGEMEchangemeCHANGEMEchangemeCHANGEME"#,
        &signer.allowed_signers_line(),
    );
    ud = replace_block(
        &ud,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        "-----END PGP PUBLIC KEY BLOCK-----",
        &apt_signer.public_key_armored(),
    );
    ud = replace_once(
        &ud,
        "https://apt.example.com/trueup bookworm main",
        &format!("file:{APT_DIR} ./"),
    );
    assert!(
        !ud.contains("CHANGEME") && !ud.contains("CHANGE-ME"),
        "a placeholder is left:\n{ud}"
    );

    let d = Instant::now();
    let c = Container::boot_with(&base, |root| {
        let seed = root.join("var/lib/cloud/seed/nocloud");
        fs::create_dir_all(&seed).unwrap();
        fs::write(
            seed.join("meta-data"),
            format!("instance-id: trueup-system-test-{HOSTNAME}\nlocal-hostname: {HOSTNAME}\n"),
        )
        .unwrap();
        fs::write(seed.join("user-data"), &ud).unwrap();
        let dst = root.join(APT_DIR.trim_start_matches('/'));
        fs::create_dir_all(&dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
        for e in fs::read_dir(apt.dir()).unwrap().flatten() {
            let to = dst.join(e.file_name());
            fs::copy(e.path(), &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        }
    });
    let booted = d.elapsed();

    // Nothing else is done to the host: wait for its agent's report.
    let last_run = c.path("/var/lib/trueup/last-run.json");
    let report = |want: &dyn Fn(&Value) -> bool| -> Option<Value> {
        let r: Value = serde_json::from_str(&fs::read_to_string(&last_run).ok()?).ok()?;
        want(&r).then_some(r)
    };
    // The first run converges; the next comes an interval (5m) later.
    c.wait_for(
        Duration::from_secs(180),
        "the host to converge on its own",
        || {
            report(&|r| {
                r["source"]["commit"] == c1.as_str()
                    && (r["status"] == "converged" || r["status"] == "in_sync")
            })
            .is_some()
        },
    );
    let converged = d.elapsed();

    // cloud-init finished without errors, and did all of it.
    let status = c.exec_stdout(&["cloud-init", "status", "--long"]);
    assert!(status.contains("status: done"), "{status}");
    let result = c.read_file("/run/cloud-init/result.json");
    let result: Value = serde_json::from_str(&result).expect("result.json");
    assert_eq!(
        result["v1"]["errors"],
        serde_json::json!([]),
        "cloud-init errors: {result:#}"
    );
    assert_eq!(c.run_ok(&["hostname"]), HOSTNAME);
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "trueup"]),
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-enabled", "trueup"]),
        "enabled"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", "trueup"]),
        "active"
    );
    assert_eq!(
        c.run_ok(&["stat", "-c", "%a", "/etc/trueup/deploy_key"]),
        "600"
    );
    // The host's desired state.
    assert_eq!(
        c.read_file(DEMO_CONF),
        format!("bootstrapped by cloud-init on {HOSTNAME}\n")
    );
    assert_eq!(
        c.run_ok(&["dpkg-query", "-W", "-f", "${Status}", TESTSVC_PACKAGE]),
        "install ok installed"
    );
    assert_eq!(
        c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]),
        "active"
    );
    // The commit was verified, and the run noted back in the repository.
    let journal = c.exec_stdout(&["journalctl", "-u", "trueup", "--no-pager"]);
    assert!(journal.contains("signature verified"), "{journal}");
    let note = repo
        .note(&format!("refs/notes/trueup/{HOSTNAME}"), &c1)
        .unwrap_or_else(|| c.fail("no note on the applied commit"));
    assert!(note.contains(&c1), "{note}");
    assert_eq!(c.exec(&["trueup", "check"]).status.code(), Some(0));
    record_timing(
        &format!(
            "d) cloud-init: boot to system up {:.1}s, to converged with no other step",
            booted.as_secs_f64()
        ),
        converged,
    );
}
