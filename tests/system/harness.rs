//! Container harness for the system tests: a cached Debian root file system
//! (debootstrap), booted with `systemd-nspawn --boot`, commands run inside
//! with `nsenter`, and small test `.deb` packages served from a local apt
//! repository inside the container.
//!
//! Everything here needs root, `debootstrap`, `systemd-nspawn` (package
//! `systemd-container`), `nsenter` and `dpkg-dev` on the host
//! (`scripts/install-test-deps.sh`).
//!
//! Typical use:
//!
//! ```ignore
//! let base = Base::debian();                 // cached under /var/cache/trueup-tests
//! let c = Container::boot(&base);            // fresh copy of the root, booted
//! let repo = AptRepo::new();
//! repo.add(&testsvc_deb("1.0"));
//! repo.publish(&c);                          // /srv/testrepo + apt source + apt-get update
//! c.run_ok(&["apt-get", "install", "-y", TESTSVC_PACKAGE]);
//! assert_eq!(c.exec_stdout(&["systemctl", "is-active", TESTSVC_UNIT]), "active");
//! // dropping `c` powers the container off and deletes its root
//! ```
//!
//! Failures panic with what failed plus the tail of the container's console
//! log and journal.
//!
//! Environment: `TRUEUP_TEST_MIRROR` (Debian mirror; default: this machine's
//! apt sources), `TRUEUP_TEST_CACHE` (default /var/cache/trueup-tests),
//! `TRUEUP_TEST_RUN_DIR` (default /var/tmp/trueup-tests), and
//! `TRUEUP_TEST_OVERLAY=1` (overlayfs over the cached root instead of a
//! `cp -a` copy per container: much faster when several tests run at once).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The Debian suite every base root is built from.
pub const SUITE: &str = "bookworm";

/// Packages of the default base root (`debootstrap --include`).
/// `cron` is there so a test sees a real, enabled, running service besides
/// its own; `procps` gives `ps`/`pgrep` inside; `busybox` gives the health
/// tests a small HTTP server (`busybox httpd`) and `sudo` is what the users
/// tests check a sudoers drop-in with.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "ca-certificates",
    "cron",
    "procps",
    "busybox",
    "sudo",
];

/// Extra packages for the cloud-init variant. debootstrap's dependency
/// resolver ignores virtual packages, so `python3-cffi-backend` (which
/// provides `python3-cffi-backend-api-*`, needed by `python3-cryptography`)
/// must be named explicitly, or configuring cloud-init fails.
pub const CLOUD_INIT_PACKAGES: &[&str] = &["cloud-init", "python3-cffi-backend"];

/// Bump when the post-debootstrap customisation of the base root changes, so
/// cached roots are rebuilt.
const CACHE_VERSION: &str = "2";

/// How long a container may take to reach `running`/`degraded`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound for one command run inside a container.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a container may take to power off before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where cached base roots live (`TRUEUP_TEST_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TRUEUP_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/trueup-tests"))
}

/// Where per-test container roots and console logs live
/// (`TRUEUP_TEST_RUN_DIR` overrides). Keep it on the same file system as
/// [`cache_dir`] so `cp --reflink=auto` can share blocks.
pub fn run_dir() -> PathBuf {
    std::env::var_os("TRUEUP_TEST_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/trueup-tests"))
}

/// `TRUEUP_TEST_OVERLAY=1` boots each container on an overlayfs mount over
/// the cached root (instant, nothing copied) instead of a `cp -a` copy.
pub fn overlay_requested() -> bool {
    std::env::var_os("TRUEUP_TEST_OVERLAY").is_some_and(|v| v == "1")
}

/// Panics unless the process is root and the host tools are installed.
pub fn require_host_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the system tests need root (they run debootstrap and systemd-nspawn)"
    );
    for tool in [
        "debootstrap",
        "systemd-nspawn",
        "nsenter",
        "dpkg-deb",
        "dpkg-scanpackages",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed; run scripts/install-test-deps.sh as root"
        );
    }
}

// ---------------------------------------------------------------------------
// Mirror
// ---------------------------------------------------------------------------

/// The Debian mirror this machine itself uses for `suite`, read from
/// `/etc/apt/sources.list.d/*.sources` (deb822), `/etc/apt/sources.list` and
/// `/etc/apt/sources.list.d/*.list`. `TRUEUP_TEST_MIRROR` overrides.
pub fn host_mirror(suite: &str) -> String {
    if let Some(m) = std::env::var_os("TRUEUP_TEST_MIRROR") {
        return m.to_string_lossy().into_owned();
    }
    let mut found = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for path in &entries {
        if path.extension() == Some(OsStr::new("sources"))
            && let Ok(text) = fs::read_to_string(path)
        {
            found.extend(deb822_uris(&text, suite));
        }
    }
    let mut one_line = vec![PathBuf::from("/etc/apt/sources.list")];
    one_line.extend(
        entries
            .iter()
            .filter(|p| p.extension() == Some(OsStr::new("list")))
            .cloned(),
    );
    for path in &one_line {
        if let Ok(text) = fs::read_to_string(path) {
            found.extend(one_line_uris(&text, suite));
        }
    }
    found
        .into_iter()
        .find(|u| u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file:"))
        .unwrap_or_else(|| {
            panic!(
                "no apt source for suite {suite} in /etc/apt/sources.list(.d); \
                 set TRUEUP_TEST_MIRROR to a Debian mirror URL"
            )
        })
}

fn deb822_uris(text: &str, suite: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        if get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        if !get("types").split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if !get("suites").split_whitespace().any(|s| s == suite) {
            continue;
        }
        out.extend(get("uris").split_whitespace().map(str::to_string));
    }
    out
}

fn one_line_uris(text: &str, suite: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        {
            Some(r) => r.trim_start(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(s)) = (words.next(), words.next())
            && s == suite
        {
            out.push(uri.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Base root file systems
// ---------------------------------------------------------------------------

/// A cached, read-only Debian root file system built by debootstrap.
/// Never boot it directly: [`Container::boot`] boots a copy.
#[derive(Debug, Clone)]
pub struct Base {
    name: String,
    packages: Vec<String>,
    root: PathBuf,
    build_time: Option<Duration>,
}

impl Base {
    /// The default root: [`BASE_PACKAGES`].
    pub fn debian() -> Base {
        Base::with_packages(BASE_PACKAGES)
    }

    /// The default root plus cloud-init ([`CLOUD_INIT_PACKAGES`]).
    pub fn cloud_init() -> Base {
        Base::with_extra(CLOUD_INIT_PACKAGES)
    }

    /// [`BASE_PACKAGES`] plus `extra`.
    pub fn with_extra(extra: &[&str]) -> Base {
        let all: Vec<&str> = BASE_PACKAGES.iter().chain(extra).copied().collect();
        Base::with_packages(&all)
    }

    /// A root with exactly `packages` passed to `debootstrap --include` (it
    /// should contain at least systemd, systemd-sysv and dbus to boot).
    /// Built on first use and cached under [`cache_dir`], keyed by a hash of
    /// the sorted package list; concurrent callers (threads or processes)
    /// wait on a lock file while one of them builds.
    pub fn with_packages(packages: &[&str]) -> Base {
        require_host_tools();
        let mut pkgs: Vec<String> = packages.iter().map(|p| p.trim().to_string()).collect();
        pkgs.retain(|p| !p.is_empty());
        pkgs.sort();
        pkgs.dedup();
        let mut h = Sha256::new();
        h.update(format!(
            "v{CACHE_VERSION}\n{SUITE}\nminbase\n{}\n",
            pkgs.join(",")
        ));
        let key = hex::encode(h.finalize());
        let name = format!("{SUITE}-{}", &key[..16]);
        let dir = cache_dir();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let root = dir.join(&name);

        let _lock = FileLock::exclusive(&dir.join(format!("{name}.lock")));
        let mut build_time = None;
        if !root.join("etc/os-release").exists() {
            let started = Instant::now();
            build_base(&dir, &name, &pkgs, &root);
            build_time = Some(started.elapsed());
        }
        Base {
            name,
            packages: pkgs,
            root,
            build_time,
        }
    }

    /// The cached root directory (do not modify it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Cache key, e.g. `bookworm-0123456789abcdef`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sorted `--include` list.
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// How long debootstrap took, when this call built the root
    /// (`None` when it came from the cache).
    pub fn build_time(&self) -> Option<Duration> {
        self.build_time
    }
}

fn build_base(dir: &Path, name: &str, pkgs: &[String], root: &Path) {
    // Anything left over from an interrupted build (we hold the lock).
    let tmp_prefix = format!(".{name}.tmp-");
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                remove_tree(&e.path());
            }
        }
    }
    if root.exists() {
        remove_tree(root);
    }
    let tmp = dir.join(format!("{tmp_prefix}{}", std::process::id()));
    let log_path = dir.join(format!("{name}.debootstrap.log"));
    let mirror = host_mirror(SUITE);
    let include = pkgs.join(",");
    eprintln!(
        "[harness] building base root {name} (debootstrap {SUITE} from {mirror}, \
         --include={include}); log: {}",
        log_path.display()
    );
    let mut ok = false;
    for attempt in 1..=2 {
        if tmp.exists() {
            remove_tree(&tmp);
        }
        let log = File::create(&log_path).expect("create debootstrap log");
        let status = Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={include}"))
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run debootstrap");
        if status.success() {
            ok = true;
            break;
        }
        eprintln!("[harness] debootstrap attempt {attempt} failed: {status}");
    }
    if !ok {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let detail =
            fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
        remove_tree(&tmp);
        panic!(
            "debootstrap of {SUITE} with --include={include} from {mirror} failed\n\
             --- {} (tail) ---\n{}\n--- debootstrap/debootstrap.log (tail) ---\n{}",
            log_path.display(),
            tail(&log, 30),
            tail(&detail, 40)
        );
    }
    customize_base(&tmp);
    fs::write(
        dir.join(format!("{name}.packages")),
        format!("{}\n", pkgs.join("\n")),
    )
    .ok();
    fs::rename(&tmp, root)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), root.display()));
}

/// Adjustments that make the root a good test machine. Bump CACHE_VERSION
/// when changing this.
fn customize_base(root: &Path) {
    // No static host name: the container's host name is then the machine
    // name nspawn gives it (unique per container, see Container::name).
    let _ = fs::remove_file(root.join("etc/hostname"));
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .unwrap();
    // Periodic apt runs would take the dpkg lock in the middle of a test.
    for unit in [
        "apt-daily.timer",
        "apt-daily.service",
        "apt-daily-upgrade.timer",
        "apt-daily-upgrade.service",
    ] {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link).unwrap();
    }
    // The downloaded .debs (debootstrap keeps them) only slow every copy down.
    // The package lists stay: apt inside knows the mirror without an update.
    if let Ok(rd) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in rd.flatten() {
            if e.path().extension() == Some(OsStr::new("deb")) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // Like Debian's slim images: no documentation, manual pages or message
    // catalogues, now or in packages installed later. Fewer files make the
    // per-test copy faster.
    fs::write(
        root.join("etc/dpkg/dpkg.cfg.d/trueup-tests-excludes"),
        "path-exclude=/usr/share/doc/*\n\
         path-include=/usr/share/doc/*/copyright\n\
         path-exclude=/usr/share/man/*\n\
         path-exclude=/usr/share/info/*\n\
         path-exclude=/usr/share/locale/*\n\
         path-include=/usr/share/locale/locale.alias\n",
    )
    .unwrap();
    for dir in [
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/doc",
    ] {
        let Ok(rd) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let keep = e.file_name() == "locale.alias";
            if keep {
                continue;
            }
            if dir == "usr/share/doc" && p.is_dir() && !p.is_symlink() {
                // Keep the copyright files.
                for f in fs::read_dir(&p).into_iter().flatten().flatten() {
                    if f.file_name() != "copyright" {
                        let fp = f.path();
                        if fp.is_dir() && !fp.is_symlink() {
                            let _ = fs::remove_dir_all(&fp);
                        } else {
                            let _ = fs::remove_file(&fp);
                        }
                    }
                }
            } else if p.is_dir() && !p.is_symlink() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    // Each container gets its own machine id at boot.
    fs::write(root.join("etc/machine-id"), "").unwrap();
}

/// An exclusive `flock(2)` on a lock file, released on drop.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> FileLock {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open lock file {}: {e}", path.display()));
        loop {
            // SAFETY: flock on a valid, owned descriptor.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                panic!("flock {}: {err}", path.display());
            }
        }
        FileLock(f)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

// ---------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------

static NEXT_CONTAINER: AtomicUsize = AtomicUsize::new(0);

/// A booted copy of a [`Base`]: `systemd-nspawn --boot` running as a child
/// of the test process, sharing the host's network (and loopback).
///
/// Dropping it powers the container off, waits for nspawn and deletes the
/// copied root. If the test thread is panicking, the console log is kept and
/// its path printed. nspawn gets SIGTERM (an orderly shutdown) if the thread
/// that booted it exits, so drop a container on the thread that booted it.
pub struct Container {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    log: PathBuf,
    nspawn: Option<Child>,
    pid1: i32,
    copy_time: Duration,
    boot_time: Duration,
}

impl Container {
    /// Copies `base` to a fresh directory, boots it and waits until
    /// `systemctl is-system-running` says running or degraded.
    pub fn boot(base: &Base) -> Container {
        Container::boot_with(base, |_| {})
    }

    /// Like [`Container::boot`], but calls `prepare` with the copied root
    /// directory before booting (e.g. to place a cloud-init NoCloud seed in
    /// `var/lib/cloud/seed/nocloud/`, or units and config files).
    pub fn boot_with(base: &Base, prepare: impl FnOnce(&Path)) -> Container {
        require_host_tools();
        let runs = run_dir();
        fs::create_dir_all(&runs).unwrap_or_else(|e| panic!("create {}: {e}", runs.display()));
        clean_stale_runs(&runs);

        let name = format!(
            "trueup-{}-{}",
            std::process::id(),
            NEXT_CONTAINER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = runs.join(&name);
        let root = dir.join("root");
        let log = dir.join("console.log");
        fs::create_dir_all(&dir).unwrap();
        let mut c = Container {
            name,
            dir,
            root,
            log,
            nspawn: None,
            pid1: 0,
            copy_time: Duration::ZERO,
            boot_time: Duration::ZERO,
        };
        let copy_started = Instant::now();

        if overlay_requested() {
            // Opt-in: an overlay over the read-only base instead of a copy.
            let upper = c.dir.join("upper");
            let work = c.dir.join("work");
            for d in [&upper, &work, &c.root] {
                fs::create_dir_all(d).unwrap();
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                base.root().display(),
                upper.display(),
                work.display()
            );
            let out = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&c.root)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount -t overlay -o {opts} {} failed: {}",
                c.root.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let out = Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg(base.root())
                .arg(&c.root)
                .output()
                .expect("run cp");
            if !out.status.success() {
                panic!(
                    "cp -a {} {} failed: {}",
                    base.root().display(),
                    c.root.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut id = [0u8; 16];
        File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut id)
            .unwrap();
        fs::write(
            c.root.join("etc/machine-id"),
            format!("{}\n", hex::encode(id)),
        )
        .unwrap();
        c.copy_time = copy_started.elapsed();
        prepare(&c.root);

        let started = Instant::now();
        let console = File::create(&c.log).expect("create console log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--register=no")
            .arg("--keep-unit")
            .arg("--quiet")
            .arg("--settings=no")
            .arg("--link-journal=no")
            .arg("--console=read-only")
            .arg(format!("--machine={}", c.name))
            .arg("-D")
            .arg(&c.root)
            .arg("--boot")
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        c.nspawn = Some(cmd.spawn().expect("spawn systemd-nspawn"));
        c.pid1 = c.find_pid1();
        c.wait_until_up();
        c.boot_time = started.elapsed();
        c
    }

    fn nspawn_pid(&self) -> i32 {
        self.nspawn.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Panics (with the console log) if nspawn has exited.
    fn check_alive(&mut self, doing: &str) {
        if let Some(child) = self.nspawn.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.nspawn = None;
            panic!(
                "systemd-nspawn exited ({status}) while {doing}\n{}",
                self.console_section(60)
            );
        }
    }

    /// The container's PID 1 (as seen from the host): the child of nspawn
    /// that is PID 1 in its own PID namespace.
    fn find_pid1(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let parent = self.nspawn_pid();
        loop {
            self.check_alive("starting");
            if let Some(pid) = child_pids(parent).into_iter().find(|&p| is_ns_init(p)) {
                return pid;
            }
            if Instant::now() > deadline {
                panic!(
                    "container {}: no PID 1 under systemd-nspawn (pid {parent}) after 20 s\n{}",
                    self.name,
                    self.console_section(40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            self.check_alive("booting");
            let out = self.exec_timeout(
                &["systemctl", "is-system-running"],
                None,
                Duration::from_secs(10),
            );
            let last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if last == "running" {
                return;
            }
            if last == "degraded" {
                let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
                eprintln!(
                    "[harness] container {} is degraded; failed units:\n{}",
                    self.name,
                    String::from_utf8_lossy(&failed.stdout)
                );
                return;
            }
            if Instant::now() > deadline {
                let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "container {} did not finish booting within {BOOT_TIMEOUT:?} \
                     (is-system-running: {last:?})\n--- systemctl list-jobs ---\n{}\n{}",
                    self.name,
                    String::from_utf8_lossy(&jobs.stdout),
                    self.console_section(60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Machine name, also the container's host name (unless a test sets
    /// /etc/hostname), e.g. `trueup-1234-0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's root directory on the host. Writing here is fine for
    /// plain directories; prefer [`Container::write_file`] for paths that
    /// may be symlinks (an absolute symlink would resolve on the host).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root()` joined with an absolute path inside the container.
    pub fn path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let p = inside.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Host PID of the container's systemd.
    pub fn pid1(&self) -> i32 {
        self.pid1
    }

    /// From starting nspawn to `is-system-running` = running/degraded.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// How long copying the base root took.
    pub fn copy_time(&self) -> Duration {
        self.copy_time
    }

    /// Path of the captured console output on the host.
    pub fn console_log_path(&self) -> &Path {
        &self.log
    }

    /// The console output so far, ANSI colours and carriage returns removed.
    pub fn console_log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.log).unwrap_or_default(),
        ))
    }

    /// The last `lines` lines of [`Container::console_log`].
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console_log(), lines)
    }

    fn console_section(&self, lines: usize) -> String {
        format!(
            "--- console log of {} (last {lines} lines; {}) ---\n{}",
            self.name,
            self.log.display(),
            self.console_tail(lines)
        )
    }

    /// Console tail plus the journal tail, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = self.console_section(40);
        if self.pid1 != 0 && self.nspawn.is_some() {
            let j = self.exec_timeout(
                &[
                    "journalctl",
                    "--no-pager",
                    "-n",
                    "40",
                    "-o",
                    "short-monotonic",
                ],
                None,
                Duration::from_secs(10),
            );
            let _ = write!(
                s,
                "\n--- journal of {} (last 40 lines) ---\n{}",
                self.name,
                String::from_utf8_lossy(&j.stdout)
            );
        }
        s
    }

    /// Panics with `msg` and the container's diagnostics.
    #[track_caller]
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n{}", self.diagnostics())
    }

    fn nsenter(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty command");
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid1.to_string())
            .arg("-a")
            .arg("-r")
            .arg("-w")
            .arg("--")
            .args(argv)
            .env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .process_group(0);
        cmd
    }

    /// Runs `argv` inside the container (all its namespaces, its root),
    /// with a clean environment, stdin from /dev/null, bounded by
    /// [`EXEC_TIMEOUT`]. Does not check the exit status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, None, EXEC_TIMEOUT)
    }

    /// Like [`Container::exec`], feeding `stdin`.
    pub fn exec_input(&self, argv: &[&str], stdin: &[u8]) -> Output {
        self.exec_timeout(argv, Some(stdin), EXEC_TIMEOUT)
    }

    /// [`Container::exec`] with an explicit bound; on timeout the command's
    /// process group is killed and the returned status is the signal's.
    pub fn exec_timeout(&self, argv: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        let mut cmd = self.nsenter(argv);
        let (out, timed_out) = run_with_timeout(&mut cmd, stdin, timeout);
        if timed_out {
            eprintln!(
                "[harness] `{}` in {} timed out after {timeout:?}",
                argv.join(" "),
                self.name
            );
        }
        out
    }

    /// Runs `argv` and panics (with stdout, stderr and diagnostics) unless
    /// it exits 0. Returns stdout without trailing whitespace.
    #[track_caller]
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        self.check_ok(&argv.join(" "), &out);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Stdout of `argv` (whatever its exit status), trimmed. Handy for
    /// `systemctl is-active` and friends, which exit non-zero for "inactive".
    pub fn exec_stdout(&self, argv: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(argv).stdout)
            .trim()
            .to_string()
    }

    /// Runs `script` with `/bin/sh -ec` inside. Does not check the status.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["/bin/sh", "-ec", script])
    }

    /// Runs `script` with `/bin/sh -ec`; panics unless it exits 0.
    /// Returns stdout without trailing whitespace.
    #[track_caller]
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        self.check_ok(script, &out);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    #[track_caller]
    fn check_ok(&self, what: &str, out: &Output) {
        if !out.status.success() {
            self.fail(format!(
                "command failed in container {}: `{what}`\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                describe_status(out.status),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Writes `contents` to `path` inside the container (through the
    /// container's own view, so symlinks resolve inside), creating parent
    /// directories, with the given mode.
    #[track_caller]
    pub fn write_file(&self, path: &str, contents: impl AsRef<[u8]>, mode: u32) {
        let mode = format!("{mode:o}");
        let out = self.exec_input(
            &[
                "/bin/sh",
                "-ec",
                "mkdir -p \"$(dirname \"$1\")\"; cat > \"$1\"; chmod \"$2\" \"$1\"",
                "sh",
                path,
                &mode,
            ],
            contents.as_ref(),
        );
        self.check_ok(&format!("write {path}"), &out);
    }

    /// Copies a host file to `path` inside the container, keeping its mode.
    #[track_caller]
    pub fn copy_in(&self, host: impl AsRef<Path>, path: &str) {
        let host = host.as_ref();
        let data = fs::read(host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        let mode = fs::metadata(host).unwrap().permissions().mode() & 0o7777;
        self.write_file(path, data, mode);
    }

    /// Reads a file inside the container (through the container's view).
    #[track_caller]
    pub fn read_file(&self, path: &str) -> String {
        let out = self.exec(&["cat", "--", path]);
        self.check_ok(&format!("cat {path}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `cond` every 100 ms until it returns true; panics with `what`
    /// and the container's diagnostics after `timeout`.
    #[track_caller]
    pub fn wait_for(&self, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "container {}: timed out after {timeout:?} waiting for {what}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl show -P PROPERTY UNIT`, trimmed.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.exec_stdout(&["systemctl", "show", "-P", property, unit])
    }

    /// Powers the container off now (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let pid = child.id() as i32;
        if matches!(child.try_wait(), Ok(None)) {
            // nspawn turns SIGTERM into an orderly shutdown of the container.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "[harness] container {} did not power off within {SHUTDOWN_TIMEOUT:?}; killing it",
                    self.name
                );
                // Killing the namespace's init kills everything in it.
                if self.pid1 > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.pid1),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        // nspawn's child is gone with it; make sure of it.
        if self.pid1 > 0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{}", self.pid1)).exists()
                && proc_ppid(self.pid1) == Some(pid)
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
        if self.root.exists() && !remove_tree(&self.root) {
            return;
        }
        for part in ["upper", "work"] {
            let _ = fs::remove_dir_all(self.dir.join(part));
        }
        if thread::panicking() {
            eprintln!(
                "[harness] console log of {} kept at {}",
                self.name,
                self.log.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes run directories of test processes that no longer exist.
fn clean_stale_runs(runs: &Path) {
    let Ok(rd) = fs::read_dir(runs) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("trueup-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let root = e.path().join("root");
            if root.exists() && !remove_tree(&root) {
                continue;
            }
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn child_pids(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                && proc_ppid(pid) == Some(parent)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// True when `pid` is PID 1 of a PID namespace other than ours.
fn is_ns_init(pid: i32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

/// Mount points at or below `path`, deepest first.
fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(path))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

/// Deletes a directory tree, first lazily unmounting anything mounted below
/// it (e.g. /proc of an interrupted debootstrap). Refuses, and returns
/// false, if something stays mounted: deleting through a bind mount would
/// delete host files.
fn remove_tree(path: &Path) -> bool {
    for m in mounts_below(path) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    let left = mounts_below(path);
    if !left.is_empty() {
        eprintln!(
            "[harness] not deleting {}: still mounted below it: {left:?}",
            path.display()
        );
        return false;
    }
    match fs::remove_dir_all(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            eprintln!("[harness] deleting {}: {e}", path.display());
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Processes and text
// ---------------------------------------------------------------------------

/// Runs `cmd` (which must be set up with `process_group(0)`), feeding
/// `stdin`, capturing stdout and stderr; kills its process group after
/// `timeout`. Returns the output and whether it timed out.
fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> (Output, bool) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break child.wait().expect("wait for killed child");
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes ANSI escape sequences and carriage returns.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters and intermediates, then a final byte.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Test packages and a local apt repository
// ---------------------------------------------------------------------------

/// Package name of the test service.
pub const TESTSVC_PACKAGE: &str = "trueup-testsvc";
/// Its systemd unit.
pub const TESTSVC_UNIT: &str = "trueup-testsvc.service";
/// Its configuration file (a conffile), read when the service starts.
pub const TESTSVC_CONF: &str = "/etc/trueup-testsvc.conf";
/// Where the running service copies the configuration it read at start:
/// compare with [`TESTSVC_CONF`] to see whether a restart picked it up.
pub const TESTSVC_LOADED: &str = "/run/trueup-testsvc.loaded";
/// Where [`AptRepo::publish`] puts the repository inside the container.
pub const TESTREPO_DIR: &str = "/srv/testrepo";
/// The apt source [`AptRepo::publish`] writes inside the container.
pub const TESTREPO_LIST: &str = "/etc/apt/sources.list.d/trueup-testrepo.list";

/// Builds a `.deb` with `dpkg-deb --build` (files owned by root).
#[derive(Debug, Clone)]
pub struct DebBuilder {
    name: String,
    version: String,
    architecture: String,
    depends: Option<String>,
    description: String,
    files: Vec<(String, Vec<u8>, u32)>,
    conffiles: Vec<String>,
    scripts: Vec<(String, String)>,
}

impl DebBuilder {
    pub fn new(name: &str, version: &str) -> DebBuilder {
        DebBuilder {
            name: name.to_string(),
            version: version.to_string(),
            architecture: "all".to_string(),
            depends: None,
            description: format!("{name} (trueup system test package)"),
            files: Vec::new(),
            conffiles: Vec::new(),
            scripts: Vec::new(),
        }
    }

    /// `Depends:` field.
    pub fn depends(mut self, depends: &str) -> DebBuilder {
        self.depends = Some(depends.to_string());
        self
    }

    pub fn description(mut self, text: &str) -> DebBuilder {
        self.description = text.to_string();
        self
    }

    /// A file at absolute `path` in the package.
    pub fn file(mut self, path: &str, contents: impl AsRef<[u8]>, mode: u32) -> DebBuilder {
        assert!(path.starts_with('/'), "package paths are absolute: {path}");
        self.files
            .push((path.to_string(), contents.as_ref().to_vec(), mode));
        self
    }

    /// A file under /etc registered as a conffile.
    pub fn conffile(mut self, path: &str, contents: impl AsRef<[u8]>) -> DebBuilder {
        self.conffiles.push(path.to_string());
        self.file(path, contents, 0o644)
    }

    /// A maintainer script (`preinst`, `postinst`, `prerm`, `postrm`);
    /// `body` follows `#!/bin/sh\nset -e\n`.
    pub fn script(mut self, name: &str, body: &str) -> DebBuilder {
        self.scripts.push((name.to_string(), body.to_string()));
        self
    }

    /// Ships `/lib/systemd/system/UNIT` and maintainer scripts equivalent to
    /// what debhelper generates: enable on install, start on install,
    /// restart on upgrade, stop on remove, purge the enablement on purge.
    /// Uses the maintainer script slots, so do not combine with `script`.
    pub fn systemd_service(self, unit: &str, unit_text: &str) -> DebBuilder {
        let postinst = format!(
            r#"if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	deb-systemd-helper unmask '{unit}' >/dev/null || true
	if deb-systemd-helper --quiet was-enabled '{unit}'; then
		deb-systemd-helper enable '{unit}' >/dev/null || true
	else
		deb-systemd-helper update-state '{unit}' >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then _action=restart; else _action=start; fi
		deb-systemd-invoke $_action '{unit}' >/dev/null || true
	fi
fi
"#
        );
        let prerm = format!(
            r#"if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop '{unit}' >/dev/null || true
fi
"#
        );
        let postrm = format!(
            r#"if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper mask '{unit}' >/dev/null || true
	fi
fi
if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge '{unit}' >/dev/null || true
		deb-systemd-helper unmask '{unit}' >/dev/null || true
	fi
fi
"#
        );
        self.file(&format!("/lib/systemd/system/{unit}"), unit_text, 0o644)
            .script("postinst", &postinst)
            .script("prerm", &prerm)
            .script("postrm", &postrm)
    }

    /// File name dpkg would use: `NAME_VERSION_ARCH.deb`.
    pub fn file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version, self.architecture)
    }

    /// Builds the package into `out_dir`; returns its path.
    pub fn build(&self, out_dir: &Path) -> PathBuf {
        let tree = tempfile::Builder::new()
            .prefix("trueup-deb-")
            .tempdir()
            .expect("temp dir");
        let t = tree.path();
        let debian = t.join("DEBIAN");
        fs::create_dir_all(&debian).unwrap();
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: trueup tests <tests@trueup.invalid>\n\
             Section: misc\nPriority: optional\n",
            self.name, self.version, self.architecture
        );
        if let Some(d) = &self.depends {
            let _ = writeln!(control, "Depends: {d}");
        }
        let _ = writeln!(control, "Description: {}", self.description);
        fs::write(debian.join("control"), control).unwrap();
        if !self.conffiles.is_empty() {
            fs::write(debian.join("conffiles"), self.conffiles.join("\n") + "\n").unwrap();
        }
        for (name, body) in &self.scripts {
            let p = debian.join(name);
            fs::write(&p, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for (path, contents, mode) in &self.files {
            let p = t.join(&path[1..]);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, contents).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        // Directories must not inherit a restrictive umask/tempdir mode.
        set_dir_modes(t, 0o755);
        fs::create_dir_all(out_dir).unwrap();
        let deb = out_dir.join(self.file_name());
        let out = Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .arg("-Zgzip")
            .arg("--build")
            .arg(t)
            .arg(&deb)
            .output()
            .expect("run dpkg-deb");
        assert!(
            out.status.success(),
            "dpkg-deb --build {} failed:\n{}{}",
            self.file_name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        deb
    }
}

fn set_dir_modes(dir: &Path, mode: u32) {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            set_dir_modes(&e.path(), mode);
        }
    }
}

/// The `trueup-testsvc` package at `version`: a service that copies
/// [`TESTSVC_CONF`] to [`TESTSVC_LOADED`] when it starts and then sleeps
/// forever (so it stays active, and a restart changes its MainPID). Its
/// conffile holds `version=VERSION`; `/usr/share/trueup-testsvc/version`
/// holds the version too.
pub fn testsvc_deb(version: &str) -> DebBuilder {
    let unit = format!(
        "[Unit]\n\
         Description=trueup test service {version}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart=/bin/sh -c 'cp /etc/trueup-testsvc.conf /run/trueup-testsvc.loaded; while :; do sleep 3600; done'\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    DebBuilder::new(TESTSVC_PACKAGE, version)
        .description("trueup system test service")
        .conffile(
            TESTSVC_CONF,
            format!("# trueup-testsvc configuration\nversion={version}\n"),
        )
        .file(
            "/usr/share/trueup-testsvc/version",
            format!("{version}\n"),
            0o644,
        )
        .systemd_service(TESTSVC_UNIT, &unit)
}

/// A flat local apt repository: `.deb` files and a `Packages` index, built
/// on the host in a temporary directory and published into a container as
/// `deb [trusted=yes] file:/srv/testrepo ./`.
pub struct AptRepo {
    dir: tempfile::TempDir,
}

impl AptRepo {
    pub fn new() -> AptRepo {
        AptRepo {
            dir: tempfile::Builder::new()
                .prefix("trueup-aptrepo-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The repository directory on the host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Builds `deb` into the repository; returns the .deb's path.
    pub fn add(&self, deb: &DebBuilder) -> PathBuf {
        deb.build(self.dir.path())
    }

    /// Copies an existing .deb (e.g. the trueup package) into the repository.
    pub fn add_file(&self, deb: &Path) -> PathBuf {
        let dst = self
            .dir
            .path()
            .join(deb.file_name().expect("a .deb file name"));
        fs::copy(deb, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", deb.display()));
        dst
    }

    /// (Re)writes `Packages` with dpkg-scanpackages (all versions kept).
    pub fn index(&self) {
        let out = Command::new("dpkg-scanpackages")
            .arg("--multiversion")
            .arg(".")
            .arg("/dev/null")
            .current_dir(self.dir.path())
            .output()
            .expect("run dpkg-scanpackages");
        assert!(
            out.status.success(),
            "dpkg-scanpackages failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(self.dir.path().join("Packages"), &out.stdout).unwrap();
    }

    /// Indexes the repository, replaces [`TESTREPO_DIR`] in the container
    /// with it, writes [`TESTREPO_LIST`] and runs `apt-get update` for this
    /// source only (no network). Call again after adding packages.
    #[track_caller]
    pub fn publish(&self, c: &Container) {
        self.index();
        let dst = c.path(TESTREPO_DIR);
        let srv = c.path("/srv");
        assert!(
            !fs::symlink_metadata(&srv)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false),
            "/srv is a symlink in container {}",
            c.name()
        );
        if dst.exists() {
            remove_tree(&dst);
        }
        fs::create_dir_all(&dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
        for e in fs::read_dir(self.dir.path()).unwrap().flatten() {
            let to = dst.join(e.file_name());
            fs::copy(e.path(), &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        }
        c.write_file(
            TESTREPO_LIST,
            format!("deb [trusted=yes] file:{TESTREPO_DIR} ./\n"),
            0o644,
        );
        c.run_ok(&[
            "apt-get",
            "update",
            "-q",
            "-o",
            &format!("Dir::Etc::sourcelist={TESTREPO_LIST}"),
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
        ]);
    }
}

impl Default for AptRepo {
    fn default() -> Self {
        AptRepo::new()
    }
}
