//! Lays out the release binary's code in the order a run uses it.
//!
//! `packaging/symbol-order.txt` (written by `scripts/symbol-order.sh`)
//! lists the functions the common runs execute, those of a no-op check
//! first. Handed to the linker (LLD's `--symbol-ordering-file`), it puts
//! them side by side at the start of the text, so a run maps a few hundred
//! KiB of code instead of pages scattered over 12 MiB: the kernel maps
//! code 64 KiB around each page a run touches, and those pages count in its
//! RSS and cost a page fault each.
//!
//! Only release builds for x86_64 Linux with a Rust that links with LLD by
//! default (1.90 and later) get it. A name the file lists that the build
//! does not have is skipped: a stale file costs only speed.

use std::process::Command;

const ORDER: &str = "packaging/symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRUEUP_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = std::path::Path::new(&manifest).join(ORDER);
    if !release
        || target != "x86_64-unknown-linux-gnu"
        || std::env::var_os("TRUEUP_NO_SYMBOL_ORDER").is_some()
        || !order.is_file()
        || !links_with_lld()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=trueup=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=trueup=-Wl,--no-warn-symbol-ordering");
}

/// Whether rustc links with its own LLD by default (x86_64 Linux since Rust
/// 1.90), which knows `--symbol-ordering-file`; GNU ld does not.
fn links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major > 1 || (major == 1 && minor >= 90)
}
