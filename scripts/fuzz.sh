#!/usr/bin/env bash
# Runs trueup's fuzz targets (fuzz/, cargo-fuzz layout) for a while each:
#   spec_render   the state parser and renderer (spec::load on any branch)
#   report_parse  the note and report parsers (parse_note, last-run.json)
# Usage: scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]   (default 30 s, both)
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. Builds go to fuzz/target, apart from the main build.
# New inputs the fuzzer finds go to fuzz/target/corpus/TARGET (not
# committed); the committed seeds in fuzz/corpus/TARGET are only read. A
# crash leaves its input in fuzz/target/artifacts/TARGET/ and fails.
# TARGET.dict, when there is one, gives libFuzzer the words of the format.
# One state may legitimately hold 1 GiB of content, hence the RSS limit.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(spec_render report_parse)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "target/artifacts/$t"
  log="target/fuzz-$t.log"
  dict=()
  [ -f "$t.dict" ] && dict=(-dict="$t.dict")
  echo "fuzzing $t for ${secs}s (log: fuzz/$log)"
  if ! cargo fuzz run -O --target-dir target "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=8192 \
      -artifact_prefix="target/artifacts/$t/" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t failed; the input is in fuzz/target/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done|^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" || true
done
