//! System tests: real systemd, apt (and cloud-init) in systemd-nspawn
//! containers booted from a cached debootstrap root. They need root and the
//! tools from `scripts/install-test-deps.sh`; see `harness.rs`.
//!
//! Add a test module here (`mod my_tests;`) and use `crate::harness::*`.

mod harness;
mod smoke;

// Packages and services (issue 4): apt and systemd converged in order.
mod apt_systemd;

// Typed backend errors (issue 14): a held apt lock is retried soon.
mod apt_lock;

// Packaging (issue 6): the .deb under systemd, cloud-init, the .rpm.
mod cloud_init;
mod deb_agent;
#[path = "../common/gitserver.rs"]
mod gitserver;
mod packages;
mod rpm;

// Health checks and rollback (issue 12).
mod health;

// Users, groups, commands, validate, notify reload, pending owners (issue 13).
mod accounts_commands;
