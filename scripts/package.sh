#!/usr/bin/env bash
# Builds the .deb and the .rpm with cargo alone: the release binary (LTO,
# one codegen unit, its code laid out by packaging/symbol-order.txt; the
# copy packaged is stripped), its man pages and shell completions
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

# The packaged binary without its symbol table (target/release keeps it
# for scripts/symbol-order.sh and profilers).
mkdir -p target/package
strip -o target/package/trueup target/release/trueup

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
echo "binary: target/package/trueup, $(stat -c %s target/package/trueup) bytes (stripped)"
echo "deb:    $deb, $(stat -c %s "$deb") bytes"
echo "rpm:    $rpm, $(stat -c %s "$rpm") bytes"
# How much of packaging/symbol-order.txt this build has: names carry a
# hash of the compiler and the dependencies, and a stale file (run
# scripts/symbol-order.sh) costs speed and memory, not correctness.
listed=$(wc -l <packaging/symbol-order.txt)
found=$(nm --defined-only target/release/trueup | awk '{ print $NF }' | LC_ALL=C sort -u |
  LC_ALL=C comm -12 - <(LC_ALL=C sort -u packaging/symbol-order.txt) | wc -l)
echo "layout: $found of the $listed functions in packaging/symbol-order.txt are in this build"
echo "took:   release build $((t1 - t0))s, packaging $((t2 - t1))s"
