#!/usr/bin/env bash
# Builds the .deb and .rpm: the release binary (LTO, stripped), its man
# pages and completions, then cargo-deb and cargo-generate-rpm. Prints the
# packages' paths and the binary's size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
./target/release/trueup generate-assets --out target/assets
deb=$(cargo deb --no-build --locked 2>&1 | tail -n 1)
cargo generate-rpm
rpm=$(ls -t target/generate-rpm/*.rpm | head -n 1)
echo "binary: target/release/trueup, $(stat -c %s target/release/trueup) bytes (stripped)"
echo "deb:    $deb"
echo "rpm:    $rpm"
