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

step "cargo test (unit, integration and system tiers)"
cargo test --all-targets 2>&1

step "fuzzing: 30 s each for the state parser and renderer, and the note and report parser"
./scripts/fuzz.sh 30

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - t0 ))"
