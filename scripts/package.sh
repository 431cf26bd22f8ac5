#!/usr/bin/env bash
# Builds the .deb and the .rpm with cargo alone: the release binary (LTO,
# one codegen unit, stripped), its man pages and shell completions
# generated from the CLI, then cargo-deb and cargo-generate-rpm (both
# installed by scripts/install-test-deps.sh). Prints what it built, the
# binary's size and how long each step took.
#
#   target/debian/trueup_VERSION-1_ARCH.deb
#   target/generate-rpm/trueup-VERSION-1.ARCH.rpm
set -euo pipefail
cd "$(dirname "$0")/.."

now() { date +%s; }

t0=$(now)
cargo build --release --locked
t1=$(now)

# Man pages (gzipped, as both distributions ship them) and completions.
rm -rf target/assets
./target/release/trueup generate-assets --out target/assets
gzip -9n target/assets/man/*.1

# Only this build's packages are left for the tests to find.
rm -f target/debian/trueup_*.deb target/generate-rpm/trueup-*.rpm
cargo deb --no-build --locked --quiet
cargo generate-rpm
t2=$(now)

deb=$(ls target/debian/trueup_*.deb)
rpm=$(ls target/generate-rpm/trueup-*.rpm)
echo "binary: target/release/trueup, $(stat -c %s target/release/trueup) bytes (stripped)"
echo "deb:    $deb, $(stat -c %s "$deb") bytes"
echo "rpm:    $rpm, $(stat -c %s "$rpm") bytes"
echo "took:   release build $((t1 - t0))s, packaging $((t2 - t1))s"
