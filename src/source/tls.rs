//! When libgit2 loads the system's CA certificates: when it first speaks
//! https, not when it starts.
//!
//! libgit2 (built with OpenSSL) parses the whole system CA bundle while it
//! initialises (`SSL_CTX_set_default_verify_paths`), whatever the URL: for
//! a check from `file://` or `ssh://` that was some 236 million
//! instructions (callgrind), three quarters of a no-op check of 1,000
//! files. [`defer_system_roots`] lets libgit2 start with an empty bundle
//! and [`load_system_roots`] loads the same bundle before the first https
//! connection, so what https trusts is unchanged: the bundle OpenSSL would
//! have loaded (the file `SSL_CERT_FILE` names, or the one `openssl-probe`
//! finds), the certificate directory, and `auth.ca_file` on top.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

const CERT_FILE: &str = "SSL_CERT_FILE";

/// The bundle libgit2 started without (set only by `defer_system_roots`).
static DEFERRED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Starts libgit2 without parsing the system CA bundle, and leaves the
/// environment exactly as libgit2 would have left it (children see the same
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`).
///
/// # Safety
///
/// It sets environment variables: call it while the process has one thread
/// (first thing in `main`), before anything else touches libgit2.
pub unsafe fn defer_system_roots() {
    if DEFERRED.get().is_some() {
        return;
    }
    let before: Option<OsString> = std::env::var_os(CERT_FILE);
    // SAFETY: single-threaded, per this function's contract.
    unsafe {
        // An empty bundle: OpenSSL reads nothing from it and ignores the
        // error. libgit2's start-up (through git2's own probe, which keeps a
        // variable that names an existing path) sees it.
        std::env::set_var(CERT_FILE, "/dev/null");
    }
    // Any call that starts libgit2; this one reads an option.
    // SAFETY: single-threaded, per this function's contract.
    let _ = unsafe { git2::opts::get_mwindow_size() };
    // SAFETY: as above.
    unsafe {
        match &before {
            Some(v) => std::env::set_var(CERT_FILE, v),
            None => std::env::remove_var(CERT_FILE),
        }
        // What git2's start-up sets when it is the one probing.
        openssl_probe::try_init_openssl_env_vars();
    }
    let bundle = std::env::var_os(CERT_FILE)
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let _ = DEFERRED.set(bundle);
}

/// Starts libgit2 once, the cheap way when it still can: a one-shot run
/// starts it only when it first needs it (a fetch, a signature, a note), so
/// one whose tip did not move never starts it, nor OpenSSL with it. The
/// environment may be changed only while the process has one thread; with
/// more (a https poll's client still running), libgit2 starts as it would
/// on its own, parsing the bundle.
pub fn start_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::debug!("starting libgit2");
        if threads() == Some(1) {
            // SAFETY: this process has a single thread (just counted), and
            // nothing else touches libgit2 or the environment meanwhile.
            unsafe { defer_system_roots() };
        }
    });
}

/// How many threads this process has (`/proc/self/status`).
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Loads the system CA bundle into libgit2 if [`defer_system_roots`] left
/// it out; once per process. Call it before libgit2 connects over https.
pub fn load_system_roots() -> Result<(), git2::Error> {
    static LOADED: Mutex<bool> = Mutex::new(false);
    let Some(Some(bundle)) = DEFERRED.get() else {
        return Ok(());
    };
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if *loaded {
        return Ok(());
    }
    // SAFETY: libgit2's global options are not synchronised; every caller
    // goes through the LOADED lock above (and `auth.ca_file`, the other
    // caller, runs after this on the same thread).
    unsafe { git2::opts::set_ssl_cert_file(bundle) }?;
    *loaded = true;
    Ok(())
}
