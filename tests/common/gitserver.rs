//! Real Git servers on loopback for integration tests.
//!
//! - [`TestRepo`]: a bare repository plus a work clone driven with the `git`
//!   CLI (commit, signed commit, push, force-push, read notes).
//! - [`SshKey`]: ed25519 keys made with `ssh-keygen` (commit signing, ssh
//!   client and host keys) and `allowed_signers` lines.
//! - [`GitDaemon`]: `git daemon` (git://), counting the packs it serves.
//! - [`SshServer`]: a real `sshd` (ssh://root@127.0.0.1:PORT/abs/path).
//! - [`HttpsServer`]: nginx + fcgiwrap + `git http-backend` over TLS with a
//!   generated CA and basic auth.
//!
//! Every server lives in its own temporary directory, waits until its port
//! accepts connections before `start` returns, and kills its whole process
//! tree on drop. Every helper panics with a readable message on failure:
//! this is test code.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Author and committer name of the commits made by [`TestRepo`].
pub const GIT_NAME: &str = "trueup test";
/// Author and committer email of unsigned commits made by [`TestRepo`].
pub const GIT_EMAIL: &str = "test@trueup.invalid";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How many ports a server tries before giving up (another process may grab
/// the free port between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Runs `cmd`, panics with its stderr unless it succeeds, returns its stdout
/// with surrounding whitespace trimmed.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `git` command in `dir`, isolated from the machine's and the user's Git
/// configuration (and from `GIT_SSL_*` variables), with an identity set so
/// commits work on a fresh machine, and with terminal prompts off.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("GIT_SSH")
        // The environment may point git at the system CA bundle, which
        // would override `-c http.sslCAInfo=...`.
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("GIT_SSL_CAPATH")
        .env_remove("GIT_SSL_NO_VERIFY")
        .args(["-c", &format!("user.name={GIT_NAME}")])
        .args(["-c", &format!("user.email={GIT_EMAIL}")])
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "commit.gpgSign=false"])
        .args(["-c", "tag.gpgSign=false"])
        .args(["-c", "advice.detachedHead=false"]);
    cmd
}

/// Runs `git ARGS` in `dir` (see [`git_command`]); panics on failure; returns
/// trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run(git_command(dir).args(args))
}

/// Like [`git`], with extra environment variables (e.g. `GIT_SSH_COMMAND`).
pub fn git_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = git_command(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Runs `git ARGS` in `dir` and returns its output whatever the exit status
/// (for checking that something fails).
pub fn git_output(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = git_command(dir);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Repositories
// ---------------------------------------------------------------------------

/// A bare repository `BASE/NAME.git` (what servers serve) and a work clone
/// `BASE/NAME.work` of it (what tests commit in).
pub struct TestRepo {
    /// Name given to [`TestRepo::create`].
    pub name: String,
    /// The bare repository, `BASE/NAME.git`.
    pub bare: PathBuf,
    /// The work clone, `BASE/NAME.work`, whose `origin` is `bare`.
    pub work: PathBuf,
}

impl TestRepo {
    /// Creates `BASE/NAME.git` (bare, HEAD → main) and clones it to
    /// `BASE/NAME.work`.
    pub fn create(base: &Path, name: &str) -> TestRepo {
        fs::create_dir_all(base).unwrap_or_else(|e| panic!("mkdir {}: {e}", base.display()));
        let bare = base.join(format!("{name}.git"));
        let work = base.join(format!("{name}.work"));
        git(
            base,
            &["init", "-q", "--bare", "-b", "main", path_str(&bare)],
        );
        git(base, &["clone", "-q", path_str(&bare), path_str(&work)]);
        TestRepo {
            name: name.to_string(),
            bare,
            work,
        }
    }

    /// The repository's path relative to the served base: `NAME.git`.
    pub fn rel(&self) -> String {
        format!("{}.git", self.name)
    }

    /// Writes `files` (path relative to the work tree, content) into the work
    /// tree, creating parent directories.
    pub fn write_files(&self, files: &[(&str, &str)]) {
        for (path, content) in files {
            let p = self.work.join(path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
            }
            fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
    }

    /// Writes `files`, stages everything and commits (even if nothing
    /// changed). Returns the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.write_files(files);
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// Like [`TestRepo::commit`], but the commit is SSH-signed with `key`
    /// (`gpg.format=ssh`, `user.signingkey=KEYFILE`, `-S`), and authored and
    /// committed as `key.email`. Returns the new commit id.
    pub fn commit_signed(&self, files: &[(&str, &str)], message: &str, key: &SshKey) -> String {
        self.write_files(files);
        git(&self.work, &["add", "-A"]);
        let email = format!("user.email={}", key.email);
        let signing_key = format!("user.signingkey={}", key.private_key.display());
        git(
            &self.work,
            &[
                "-c",
                &email,
                "-c",
                "gpg.format=ssh",
                "-c",
                &signing_key,
                "commit",
                "-q",
                "--allow-empty",
                "-S",
                "-m",
                message,
            ],
        );
        self.head()
    }

    /// Deletes `paths` from the work tree and commits. Returns the commit id.
    pub fn remove(&self, paths: &[&str], message: &str) -> String {
        let mut args = vec!["rm", "-q", "-r", "--"];
        args.extend_from_slice(paths);
        git(&self.work, &args);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// Pushes the work clone's HEAD to `refs/heads/BRANCH` of the bare
    /// repository (fast-forward only).
    pub fn push(&self, branch: &str) {
        let refspec = format!("HEAD:refs/heads/{branch}");
        git(&self.work, &["push", "-q", "origin", &refspec]);
    }

    /// Force-pushes the work clone's HEAD to `refs/heads/BRANCH`.
    pub fn force_push(&self, branch: &str) {
        let refspec = format!("+HEAD:refs/heads/{branch}");
        git(&self.work, &["push", "-q", "--force", "origin", &refspec]);
    }

    /// [`TestRepo::commit`] then [`TestRepo::push`]. Returns the commit id.
    pub fn commit_and_push(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let id = self.commit(files, message);
        self.push(branch);
        id
    }

    /// `git reset --hard REV` in the work clone (e.g. `HEAD~1` before a
    /// force-push that rewrites history).
    pub fn reset_hard(&self, rev: &str) {
        git(&self.work, &["reset", "-q", "--hard", rev]);
    }

    /// The work clone's HEAD commit id.
    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    /// `git rev-parse REV` in the work clone.
    pub fn rev_parse(&self, rev: &str) -> String {
        git(&self.work, &["rev-parse", "--verify", "-q", rev])
    }

    /// The commit `refs/heads/BRANCH` points to in the bare repository, if
    /// the branch exists.
    pub fn remote_branch(&self, branch: &str) -> Option<String> {
        let out = git_output(
            &self.bare,
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
            &[],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The note attached to `commit` under `notes_ref` (e.g.
    /// `refs/notes/trueup/web1`) in the bare repository, if any.
    pub fn note(&self, notes_ref: &str, commit: &str) -> Option<String> {
        let out = git_output(
            &self.bare,
            &["notes", &format!("--ref={notes_ref}"), "show", commit],
            &[],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Every ref of the bare repository: (refname, object id).
    pub fn remote_refs(&self) -> Vec<(String, String)> {
        git(
            &self.bare,
            &["for-each-ref", "--format=%(refname) %(objectname)"],
        )
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, o)| (r.to_string(), o.to_string()))
        .collect()
    }
}

// ---------------------------------------------------------------------------
// SSH keys
// ---------------------------------------------------------------------------

/// An ed25519 key pair made by `ssh-keygen` without a passphrase.
pub struct SshKey {
    /// Private key file (OpenSSH format, mode 0600).
    pub private_key: PathBuf,
    /// Public key file (`PRIVATE.pub`).
    pub public_key: PathBuf,
    /// Email (also the key's comment); the principal in `allowed_signers`.
    pub email: String,
}

impl SshKey {
    /// Generates `DIR/NAME` and `DIR/NAME.pub`.
    pub fn generate(dir: &Path, name: &str, email: &str) -> SshKey {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let private_key = dir.join(name);
        let _ = fs::remove_file(&private_key);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", email, "-f"])
            .arg(&private_key));
        let public_key = dir.join(format!("{name}.pub"));
        SshKey {
            private_key,
            public_key,
            email: email.to_string(),
        }
    }

    /// `ssh-ed25519 AAAA...` (type and key, no comment).
    pub fn public_key_line(&self) -> String {
        let text = fs::read_to_string(&self.public_key)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.public_key.display()));
        let mut fields = text.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(kind), Some(key)) => format!("{kind} {key}"),
            _ => panic!(
                "malformed public key {}: {text:?}",
                self.public_key.display()
            ),
        }
    }

    /// `EMAIL namespaces="git" ssh-ed25519 AAAA...`, a line of an
    /// `allowed_signers` file.
    pub fn allowed_signers_line(&self) -> String {
        format!(
            "{} namespaces=\"git\" {}",
            self.email,
            self.public_key_line()
        )
    }
}

/// Writes an `allowed_signers` file with one line per key.
pub fn write_allowed_signers(path: &Path, keys: &[&SshKey]) {
    let text: String = keys
        .iter()
        .map(|k| format!("{}\n", k.allowed_signers_line()))
        .collect();
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Processes, ports, readiness
// ---------------------------------------------------------------------------

/// A spawned server process, in its own process group. Drop kills it and
/// every descendant (including ones that called `setsid`, like sshd's
/// per-connection children) and waits for them to die.
struct ServerProcess {
    name: String,
    child: Child,
}

impl ServerProcess {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> ServerProcess {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ServerProcess {
            name: name.to_string(),
            child,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = self.pid();
        // Collect the tree first: once the root dies its children are
        // re-parented and can no longer be found from it.
        let tree = descendants(pid);
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        for &p in &tree {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tree.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// (pid, ppid) of every process, from /proc.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ..."; comm may contain spaces and ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Every descendant of `root` (not `root` itself).
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in process_table() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// Whether something accepts TCP connections on 127.0.0.1:PORT.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until `proc` is ready: `ready()` holds and the port accepts
/// connections. Err(reason) if the process exits or the wait times out.
fn wait_ready(
    proc: &mut ServerProcess,
    port: u16,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err(format!("{} exited during start-up: {status}", proc.name));
        }
        if ready() && port_open(port) {
            // Still ours? (a process that lost the port race exits at once)
            std::thread::sleep(Duration::from_millis(10));
            if let Some(status) = proc.exited() {
                return Err(format!("{} exited during start-up: {status}", proc.name));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not listening on 127.0.0.1:{port} after {START_TIMEOUT:?}",
                proc.name
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `attempt(port)` with fresh free ports until one start succeeds.
fn start_with_retries<T>(what: &str, mut attempt: impl FnMut(u16) -> Result<T, String>) -> T {
    let mut errors = Vec::new();
    for _ in 0..START_ATTEMPTS {
        match attempt(free_port()) {
            Ok(v) => return v,
            Err(e) => errors.push(e),
        }
    }
    panic!(
        "cannot start {what} after {START_ATTEMPTS} attempts:\n{}",
        errors.join("\n---\n")
    );
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non UTF-8 path {}", p.display()))
}

fn write_file(path: &Path, content: &str) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_executable(path: &Path, content: &str) {
    write_file(path, content);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn absolute(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------
// Pack counting (uploadpack.packObjectsHook)
// ---------------------------------------------------------------------------

/// A Git "global" config that sets `uploadpack.packObjectsHook` to a script
/// appending a line to a counter file before running pack-objects. The hook
/// is only honoured from protected (system, global, command line) config, so
/// servers get it through `GIT_CONFIG_GLOBAL`.
struct PackCounter {
    config: PathBuf,
    counter: PathBuf,
}

impl PackCounter {
    fn new(dir: &Path) -> PackCounter {
        let counter = dir.join("packs-served");
        let hook = dir.join("pack-objects-hook");
        let config = dir.join("gitconfig");
        write_executable(
            &hook,
            &format!(
                "#!/bin/sh\n# appended: the pack-objects command line\nprintf '%s\\n' \"$*\" >>'{}'\nexec \"$@\"\n",
                counter.display()
            ),
        );
        write_file(
            &config,
            &format!("[uploadpack]\n\tpackObjectsHook = \"{}\"\n", hook.display()),
        );
        PackCounter { config, counter }
    }

    fn count(&self) -> usize {
        read_or_empty(&self.counter).lines().count()
    }
}

// ---------------------------------------------------------------------------
// git daemon
// ---------------------------------------------------------------------------

/// `git daemon` on 127.0.0.1 serving every repository under a base directory
/// (export-all, receive-pack enabled), counting the packs it sends.
pub struct GitDaemon {
    proc: ServerProcess,
    port: u16,
    base: PathBuf,
    log: PathBuf,
    packs: PackCounter,
    // Last field: removed after the process is dead.
    dir: TempDir,
}

impl GitDaemon {
    /// Starts `git daemon --base-path=BASE` on a free port; returns once the
    /// port accepts connections.
    pub fn start(base: &Path) -> GitDaemon {
        Self::start_inner(base, None)
    }

    /// Starts it on a given port (to bring a remote "back" at the same URL).
    pub fn start_at(base: &Path, port: u16) -> GitDaemon {
        Self::start_inner(base, Some(port))
    }

    fn start_inner(base: &Path, fixed_port: Option<u16>) -> GitDaemon {
        let base = absolute(base);
        let dir = TempDir::new().expect("tempdir");
        let log = dir.path().join("daemon.log");
        let packs = PackCounter::new(dir.path());
        let attempt = |port: u16| {
            let mut cmd = Command::new("git");
            cmd.env("GIT_CONFIG_GLOBAL", &packs.config)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .args([
                    "daemon",
                    "--reuseaddr",
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                    "--export-all",
                    "--enable=receive-pack",
                    "--informative-errors",
                    "--verbose",
                    "--log-destination=stderr",
                    &format!("--base-path={}", base.display()),
                ]);
            let start_of_log = read_or_empty(&log).len();
            let mut proc = ServerProcess::spawn("git daemon", &mut cmd, &log);
            let ready = || read_or_empty(&log)[start_of_log..].contains("Ready to rumble");
            match wait_ready(&mut proc, port, ready) {
                Ok(()) => Ok((proc, port)),
                Err(e) => Err(format!("{e}\nlog:\n{}", read_or_empty(&log))),
            }
        };
        let (proc, port) = match fixed_port {
            Some(port) => {
                attempt(port).unwrap_or_else(|e| panic!("cannot start git daemon on {port}: {e}"))
            }
            None => start_with_retries("git daemon", attempt),
        };
        GitDaemon {
            proc,
            port,
            base,
            log,
            packs,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("git://127.0.0.1:{}", self.port)
    }

    /// `git://127.0.0.1:PORT/REPO` (REPO relative to the base, e.g. `fleet.git`).
    pub fn url(&self, repo: &str) -> String {
        format!("{}/{}", self.base_url(), repo.trim_start_matches('/'))
    }

    /// How many packs the daemon has sent (clones and fetches that
    /// transferred objects; not ref listings).
    pub fn packs_served(&self) -> usize {
        self.packs.count()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        read_or_empty(&self.log)
    }
}

// ---------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------

/// A real `sshd` on 127.0.0.1 accepting the generated client key for root.
/// Repositories are addressed by absolute path under the base directory.
pub struct SshServer {
    proc: ServerProcess,
    port: u16,
    base: PathBuf,
    client_key: SshKey,
    host_key: SshKey,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    log: PathBuf,
    packs: PackCounter,
    dir: TempDir,
}

impl SshServer {
    /// Starts `/usr/sbin/sshd -D -e -f CONFIG` on a free port with its own
    /// host key and a generated client key authorised for root; returns once
    /// the port accepts connections.
    pub fn start(base: &Path) -> SshServer {
        let base = absolute(base);
        let dir = TempDir::new().expect("tempdir");
        let d = dir.path();
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))
            .expect("chmod /run/sshd");
        let host_key = SshKey::generate(d, "ssh_host_ed25519_key", "host@trueup.invalid");
        let client_key = SshKey::generate(d, "client_ed25519", "client@trueup.invalid");
        let authorized_keys = d.join("authorized_keys");
        write_file(
            &authorized_keys,
            &format!("{}\n", client_key.public_key_line()),
        );
        let known_hosts = d.join("known_hosts");
        let packs = PackCounter::new(d);
        let log = d.join("sshd.log");
        let config = d.join("sshd_config");
        let pid_file = d.join("sshd.pid");
        let (proc, port) = start_with_retries("sshd", |port| {
            write_file(
                &config,
                &format!(
                    "Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
AcceptEnv GIT_PROTOCOL
SetEnv GIT_CONFIG_GLOBAL={gitconfig} GIT_CONFIG_NOSYSTEM=1
LogLevel VERBOSE
",
                    host_key = host_key.private_key.display(),
                    pid_file = pid_file.display(),
                    authorized_keys = authorized_keys.display(),
                    gitconfig = packs.config.display(),
                ),
            );
            let start_of_log = read_or_empty(&log).len();
            let mut cmd = Command::new("/usr/sbin/sshd");
            cmd.args(["-D", "-e", "-f"]).arg(&config);
            let mut proc = ServerProcess::spawn("sshd", &mut cmd, &log);
            let marker = format!("Server listening on 127.0.0.1 port {port}");
            let ready = || read_or_empty(&log)[start_of_log..].contains(&marker);
            match wait_ready(&mut proc, port, ready) {
                Ok(()) => Ok((proc, port)),
                Err(e) => Err(format!("{e}\nlog:\n{}", read_or_empty(&log))),
            }
        });
        write_file(
            &known_hosts,
            &format!("[127.0.0.1]:{port} {}\n", host_key.public_key_line()),
        );
        SshServer {
            proc,
            port,
            base,
            client_key,
            host_key,
            known_hosts,
            authorized_keys,
            log,
            packs,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://root@127.0.0.1:PORT/ABS/BASE/REPO` (REPO relative to the base,
    /// e.g. `fleet.git`).
    pub fn url(&self, repo: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/{}",
            self.port,
            self.base.display(),
            repo.trim_start_matches('/')
        )
    }

    /// The client's private key (ed25519, OpenSSH format, no passphrase).
    pub fn client_key(&self) -> &Path {
        &self.client_key.private_key
    }

    /// The client's public key file.
    pub fn client_public_key(&self) -> &Path {
        &self.client_key.public_key
    }

    /// A known_hosts file holding `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The server's host public key, `ssh-ed25519 AAAA...`.
    pub fn host_key_line(&self) -> String {
        self.host_key.public_key_line()
    }

    /// Also accepts `key` for root (appends it to authorized_keys).
    pub fn authorize(&self, key: &SshKey) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .expect("open authorized_keys");
        writeln!(f, "{}", key.public_key_line()).expect("write authorized_keys");
    }

    /// A `GIT_SSH_COMMAND` value using the client key and the known_hosts
    /// file with strict host key checking, ignoring ~/.ssh/config.
    pub fn git_ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.client_key.private_key.display(),
            self.known_hosts.display()
        )
    }

    /// How many packs were sent over ssh (fetches that transferred objects).
    pub fn packs_served(&self) -> usize {
        self.packs.count()
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        read_or_empty(&self.log)
    }
}

// ---------------------------------------------------------------------------
// nginx + fcgiwrap + git http-backend over TLS
// ---------------------------------------------------------------------------

/// nginx over TLS on 127.0.0.1 with basic auth, running `git http-backend`
/// through fcgiwrap for every repository under a base directory (push
/// allowed for the authenticated user).
pub struct HttpsServer {
    // Field order is drop order: nginx before fcgiwrap, both before `dir`.
    nginx: ServerProcess,
    fcgiwrap: ServerProcess,
    port: u16,
    base: PathBuf,
    ca_cert: PathBuf,
    user: String,
    password: String,
    access_log: PathBuf,
    error_log: PathBuf,
    packs: PackCounter,
    dir: TempDir,
}

impl HttpsServer {
    /// User name accepted by basic auth.
    pub const USER: &'static str = "trueup";
    /// Password accepted by basic auth.
    pub const PASSWORD: &'static str = "test-pass-0123";

    /// Generates a CA and a server certificate (SAN 127.0.0.1, localhost),
    /// an htpasswd file, starts fcgiwrap and nginx on a free port; returns
    /// once the port accepts connections.
    pub fn start(base: &Path) -> HttpsServer {
        let base = absolute(base);
        let dir = TempDir::new().expect("tempdir");
        let d = dir.path().to_path_buf();
        let (ca_cert, server_cert, server_key) = make_certificates(&d);

        let hash = run(Command::new("openssl").args(["passwd", "-apr1", Self::PASSWORD]));
        let htpasswd = d.join("htpasswd");
        write_file(&htpasswd, &format!("{}:{hash}\n", Self::USER));

        let packs = PackCounter::new(&d);
        let backend =
            PathBuf::from(run(Command::new("git").arg("--exec-path"))).join("git-http-backend");
        assert!(
            backend.is_file(),
            "git http-backend not found at {}",
            backend.display()
        );

        // fcgiwrap on a unix socket; CGI children inherit its environment.
        let socket = d.join("fcgiwrap.sock");
        let fcgi_log = d.join("fcgiwrap.log");
        let mut cmd = Command::new("/usr/sbin/fcgiwrap");
        cmd.args(["-f", "-c", "4", "-s"])
            .arg(format!("unix:{}", socket.display()))
            .env("GIT_CONFIG_GLOBAL", &packs.config)
            .env("GIT_CONFIG_NOSYSTEM", "1");
        let mut fcgiwrap = ServerProcess::spawn("fcgiwrap", &mut cmd, &fcgi_log);
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = fcgiwrap.exited() {
                panic!(
                    "fcgiwrap exited during start-up: {status}\n{}",
                    read_or_empty(&fcgi_log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "fcgiwrap did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        for sub in ["body", "fastcgi", "proxy", "uwsgi", "scgi"] {
            fs::create_dir_all(d.join("tmp").join(sub)).expect("mkdir nginx temp");
        }
        let access_log = d.join("access.log");
        let error_log = d.join("error.log");
        let pid_file = d.join("nginx.pid");
        let config = d.join("nginx.conf");
        let (nginx, port) = start_with_retries("nginx", |port| {
            write_file(
                &config,
                &nginx_config(NginxConfig {
                    port,
                    dir: &d,
                    base: &base,
                    backend: &backend,
                    socket: &socket,
                    htpasswd: &htpasswd,
                    cert: &server_cert,
                    key: &server_key,
                    gitconfig: &packs.config,
                    access_log: &access_log,
                    error_log: &error_log,
                    pid_file: &pid_file,
                }),
            );
            let _ = fs::remove_file(&pid_file);
            let mut cmd = Command::new("/usr/sbin/nginx");
            cmd.arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log);
            let mut proc = ServerProcess::spawn("nginx", &mut cmd, &d.join("nginx.stderr"));
            match wait_ready(&mut proc, port, || pid_file.exists()) {
                Ok(()) => Ok((proc, port)),
                Err(e) => Err(format!(
                    "{e}\nerror log:\n{}\nstderr:\n{}",
                    read_or_empty(&error_log),
                    read_or_empty(&d.join("nginx.stderr"))
                )),
            }
        });
        HttpsServer {
            nginx,
            fcgiwrap,
            port,
            base,
            ca_cert,
            user: Self::USER.to_string(),
            password: Self::PASSWORD.to_string(),
            access_log,
            error_log,
            packs,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA's certificate (PEM); trust it to reach the server.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `https://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT/REPO` (REPO relative to the base, e.g. `fleet.git`).
    pub fn url(&self, repo: &str) -> String {
        format!("{}/{}", self.base_url(), repo.trim_start_matches('/'))
    }

    /// `https://localhost:PORT/REPO` (the certificate also names localhost).
    pub fn url_localhost(&self, repo: &str) -> String {
        format!(
            "https://localhost:{}/{}",
            self.port,
            repo.trim_start_matches('/')
        )
    }

    /// `https://USER:PASSWORD@127.0.0.1:PORT/REPO`
    pub fn url_with_credentials(&self, repo: &str) -> String {
        format!(
            "https://{}:{}@127.0.0.1:{}/{}",
            self.user,
            self.password,
            self.port,
            repo.trim_start_matches('/')
        )
    }

    /// Successful (2xx) `POST .../git-upload-pack` requests so far, from
    /// nginx's access log. A fetch or clone makes at least one; a protocol
    /// v0 ref listing (libgit2's ls-remote) makes none, but note that the
    /// git CLI's protocol v2 ls-remote also POSTs (command=ls-refs).
    pub fn upload_pack_posts(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(method, uri, status, _)| {
                method == "POST" && uri.ends_with("/git-upload-pack") && status.starts_with('2')
            })
            .count()
    }

    /// Every request so far: (method, uri, status, remote user or "-").
    pub fn requests(&self) -> Vec<(String, String, String, String)> {
        read_or_empty(&self.access_log)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect()
    }

    /// How many packs git-upload-pack sent (fetches that transferred
    /// objects), counted by the packObjectsHook.
    pub fn packs_served(&self) -> usize {
        self.packs.count()
    }

    /// nginx's access log so far (`METHOD URI STATUS USER` per line).
    pub fn access_log(&self) -> String {
        read_or_empty(&self.access_log)
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        read_or_empty(&self.error_log)
    }
}

/// A test CA and a server certificate for 127.0.0.1 and localhost signed by
/// it, in `dir`. Returns (ca.crt, server.crt, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca_cert = dir.join("ca.crt");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.crt");
    let ext = dir.join("server.ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=trueup test CA",
        ])
        .args(ec)
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_cert));
    run(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    write_file(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "3650", "-set_serial", "2"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca_cert, cert, key)
}

struct NginxConfig<'a> {
    port: u16,
    dir: &'a Path,
    base: &'a Path,
    backend: &'a Path,
    socket: &'a Path,
    htpasswd: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    gitconfig: &'a Path,
    access_log: &'a Path,
    error_log: &'a Path,
    pid_file: &'a Path,
}

fn nginx_config(c: NginxConfig) -> String {
    let q = |p: &Path| format!("\"{}\"", p.display());
    let tmp = |s: &str| q(&c.dir.join("tmp").join(s));
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root root;
pid {pid};
error_log {error_log} notice;
events {{
    worker_connections 128;
}}
http {{
    log_format git '$request_method $uri $status $remote_user';
    access_log {access_log} git;
    client_body_temp_path {body};
    fastcgi_temp_path {fastcgi};
    proxy_temp_path {proxy};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name 127.0.0.1 localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            auth_basic "trueup test";
            auth_basic_user_file {htpasswd};
            fastcgi_pass unix:{socket};
            fastcgi_buffering off;
            fastcgi_request_buffering off;
            fastcgi_param SCRIPT_FILENAME {backend};
            fastcgi_param GIT_PROJECT_ROOT {base};
            fastcgi_param GIT_HTTP_EXPORT_ALL 1;
            fastcgi_param GIT_CONFIG_GLOBAL {gitconfig};
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param HTTPS on;
        }}
    }}
}}
"#,
        port = c.port,
        pid = q(c.pid_file),
        error_log = q(c.error_log),
        access_log = q(c.access_log),
        body = tmp("body"),
        fastcgi = tmp("fastcgi"),
        proxy = tmp("proxy"),
        uwsgi = tmp("uwsgi"),
        scgi = tmp("scgi"),
        cert = q(c.cert),
        key = q(c.key),
        htpasswd = q(c.htpasswd),
        socket = c.socket.display(),
        backend = q(c.backend),
        base = q(c.base),
        gitconfig = q(c.gitconfig),
    )
}
