#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, cargo
# tools), checks formatting and lints, then unit, integration and system
# tests. Run as root on Debian 12 (the system tier boots containers).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
t0=$(date +%s)

step "installing test dependencies"
./scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings

step "building the .deb and .rpm (scripts/package.sh; the system tests install them)"
./scripts/package.sh

step "cargo test (unit, integration and system tiers)"
# The system tests append their step timings here; printed below.
timings=target/tmp/system-timings.txt
rm -f "$timings"
status=0
# Tests that need root, a container, sshd, dnf or gpgv are #[ignore]d so a
# plain `cargo test` as a normal user leaves them out visibly; here they run.
cargo test --all-targets -- --include-ignored 2>&1 || status=$?
if [ -s "$timings" ]; then
  step "system test timings"
  cat "$timings"
fi
[ "$status" = 0 ] || exit "$status"

step "fuzzing: 30 s each for the state parser and renderer, and the note and report parser"
./scripts/fuzz.sh 30

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - t0 ))"
