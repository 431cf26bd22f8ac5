#!/usr/bin/env bash
# Runs trueup against a scratch root on this machine, without root:
# check (drift), apply, check (in sync), then a hand edit and its repair.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo build --quiet --manifest-path "$here/../Cargo.toml"
trueup="$here/../target/debug/trueup"
root="$(mktemp -d)"; state="$(mktemp -d)"
trap 'rm -rf "$root" "$state"' EXIT
run() { echo; echo "\$ trueup $*"; "$trueup" --source "$here/demo" --root "$root" --state-dir "$state" "$@" || echo "(exit $?)"; }
run check
run apply
run check
echo; echo "# someone edits a managed file by hand"
echo "listen = 1" >> "$root/etc/demo/app.conf"
chmod 600 "$root/usr/local/bin/healthcheck"
run check
run apply
run check
echo; echo "replaced content kept under $state/backup:"; (cd "$state/backup" && find . -type f | sort)
