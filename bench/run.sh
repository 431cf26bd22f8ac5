#!/usr/bin/env bash
# Whole-process benchmarks of trueup. Prints Markdown tables.
#
#   bench/run.sh [--sizes "100 1000 10000"] [--runs N] [--slow-runs N]
#                [--templates shared|distinct] [--no-packages] [--no-build]
#                [--keep]
#
# For each N it generates a host branch of N files rendered from a template
# that uses facts and vars (bench/gen.sh) and times, against a scratch
# --root and --state-dir (no root needed):
#   first apply      every file missing: written, fsynced, renamed
#   no-op check      everything in sync
#   1% drift check   every 100th file edited by hand (exit 2; at least one)
#   repair           apply after the same 1% drift
# Beside each, the floor: `sha256sum` over the same N files, the least any
# checker must do (read them), and the ratio to it. Times are the minimum
# and median of several runs of the whole process (spawn to exit, measured
# by bench/measure.rs); RSS is the peak of each run (wait4's rusage).
# Then: the RSS of an idle `trueup agent` after 10 runs, the stripped
# binary's size, and an unchanged-remote poll against a local `git daemon`.
#
# --templates shared (the default) renders every file from one template, so
# every file has the same content; distinct gives each file its own
# template (and content), which adds compiling N templates.
# Every state also declares 50 packages that are installed (the first 50 of
# `dpkg-query -W`); the scratch root gets a copy of this machine's
# /var/lib/dpkg/status, which is what the apt backend reads under --root.
# --no-packages leaves them out (and is implied where dpkg is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

sizes="100 1000 10000"
runs=10
slow_runs=3
templates=shared
with_packages=1
build=1
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --slow-runs) slow_runs=$2; shift 2 ;;
    --templates) templates=$2; shift 2 ;;
    --no-packages) with_packages=0; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case $templates in shared|distinct) ;; *) echo "--templates shared|distinct" >&2; exit 2 ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/trueup-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

target=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then
  log "building (cargo build --release)..."
  cargo build --release --quiet
fi
bin=$target/release/trueup
[ -x "$bin" ] || { echo "no $bin: build it or drop --no-build" >&2; exit 1; }
rustc --edition 2024 -O bench/measure.rs -o "$work/measure"
measure=$work/measure

# Same config for every run: nothing from /etc/trueup leaks in.
cfg=$work/agent.yaml
printf 'interval: 1h\nsplay: 0s\nmode: apply\nreport: { notes: false }\n' >"$cfg"

packages_file=""
if [ "$with_packages" = 1 ] && ! command -v dpkg-query >/dev/null; then
  log "no dpkg-query: measuring without packages"
  with_packages=0
fi
if [ "$with_packages" = 1 ]; then
  packages_file=$work/packages
  dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' |
    sort -u | awk 'NR <= 50' >"$packages_file"
  [ "$(wc -l <"$packages_file")" = 50 ] || { echo "fewer than 50 installed packages" >&2; exit 1; }
fi

# --- formatting ---
ms() { awk -v v="$1" 'BEGIN { if (v < 10) printf "%.2f ms", v; else if (v < 100) printf "%.1f ms", v; else if (v < 10000) printf "%.0f ms", v; else printf "%.1f s", v / 1000 }'; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f×", a / b }'; }
thousands() { printf "%'d" "$1" 2>/dev/null || printf '%d' "$1"; }

# Lists every 100th file under a root (1%), the ones drift edits.
drift_list() {
  local root=$1 n=$2 i
  for ((i = 0; i < n; i += 100)); do
    printf '%s/srv/bench/d%03d/f%05d.conf\n' "$root" $((i / 100)) "$i"
  done
}

# time ARGS... -> "min median rss" (see bench/measure.rs)
timed() { "$measure" time "$@"; }

table=$work/table
printf '| files | run | time min (median) | sha256sum floor | ratio | peak RSS |\n' >"$table"
printf '| ---: | --- | ---: | ---: | ---: | ---: |\n' >>"$table"
row() { # files run min median floor rss
  printf '| %s | %s | %s (%s) | %s | %s | %s |\n' "$(thousands "$1")" "$2" "$(ms "$3")" "$(ms "$4")" \
    "$(ms "$5")" "$(ratio "$3" "$5")" "$(mib "$6")" >>"$table"
}

t_count=
for n in $sizes; do
  d=$work/$n
  src=$d/branch root=$d/root sd=$d/state
  if [ "$templates" = shared ]; then t_count=1; else t_count=$n; fi
  log "N=$n: generating"
  bench/gen.sh "$src" "$n" "$t_count" "$packages_file"
  common=(--config "$cfg" --source "$src" --root "$root" --state-dir "$sd")
  reset="rm -rf '$root' '$sd' && mkdir -p '$root' '$sd'"
  if [ "$with_packages" = 1 ]; then
    reset="$reset && mkdir -p '$root/var/lib/dpkg' && cp /var/lib/dpkg/status '$root/var/lib/dpkg/status'"
  fi

  log "N=$n: first apply"
  read -r a_min a_med a_rss < <(timed --runs "$slow_runs" --warmup 0 --prepare "$reset" -- "$bin" apply "${common[@]}")

  (cd "$root" && find ./srv -type f | sort) >"$d/files"
  [ "$(wc -l <"$d/files")" = "$n" ] || { echo "N=$n: apply wrote $(wc -l <"$d/files") files" >&2; exit 1; }
  log "N=$n: sha256sum floor"
  read -r f_min _ _ < <(cd "$root" && timed --runs "$runs" --warmup 2 --args-file "$d/files" -- sha256sum)

  log "N=$n: no-op check"
  read -r c_min c_med c_rss < <(timed --runs "$runs" --warmup 2 -- "$bin" check "${common[@]}")

  log "N=$n: 1% drift check"
  drift_list "$root" "$n" >"$d/drifted"
  # Edits by hand (sh, for measure's --prepare).
  drift="while read -r f; do printf 'edited by hand\\n' >>\"\$f\"; done <'$d/drifted'"
  sh -c "$drift"
  read -r x_min x_med x_rss < <(timed --runs "$runs" --warmup 1 --exit 2 -- "$bin" check "${common[@]}")

  log "N=$n: repair"
  read -r r_min r_med r_rss < <(timed --runs "$runs" --warmup 1 \
    --prepare "$drift" -- "$bin" apply "${common[@]}")

  row "$n" "first apply" "$a_min" "$a_med" "$f_min" "$a_rss"
  row "$n" "no-op check" "$c_min" "$c_med" "$f_min" "$c_rss"
  row "$n" "1% drift check" "$x_min" "$x_med" "$f_min" "$x_rss"
  row "$n" "repair 1%" "$r_min" "$r_med" "$f_min" "$r_rss"
done

# --- idle agent ---
agent_rows=$work/agent
for n in $sizes; do
  d=$work/$n
  if ! "$bin" agent --help >/dev/null 2>&1; then
    printf '| %s | n/a (not built yet) | n/a | n/a |\n' "$(thousands "$n")" >>"$agent_rows"
    continue
  fi
  log "N=$n: idle agent after 10 runs"
  report=$d/state/last-run.json
  stamp() { stat -c %y "$report" 2>/dev/null || echo none; }
  before=$(stamp)
  "$bin" agent --config "$cfg" --source "$d/branch" --root "$d/root" --state-dir "$d/state" \
    >"$d/agent.log" 2>&1 </dev/null &
  pid=$!
  pids+=("$pid")
  for i in $(seq 1 10); do
    [ "$i" -gt 1 ] && kill -HUP "$pid"
    for _ in $(seq 1 600); do
      [ "$(stamp)" != "$before" ] && break
      kill -0 "$pid" 2>/dev/null || { cat "$d/agent.log" >&2; exit 1; }
      sleep 0.05
    done
    now=$(stamp)
    [ "$now" != "$before" ] || { echo "N=$n: agent run $i did not finish" >&2; exit 1; }
    before=$now
  done
  sleep 2
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")
  kill -TERM "$pid"
  wait "$pid" || true
  printf '| %s | %s | %s | %s |\n' "$(thousands "$n")" "$(mib "$rss")" "$(mib "$anon")" "$(mib "$hwm")" >>"$agent_rows"
done

# --- unchanged-remote poll ---
poll_row="n/a (git sources not built yet)"
if "$bin" check --help 2>/dev/null | grep -qi 'git url'; then
  n=$(printf '%s\n' $sizes | sort -n | awk 'NR == 1 || $1 == 1000 { v = $1 } END { print v }')
  d=$work/$n
  log "unchanged-remote poll (N=$n, git daemon)"
  git init -q -b hosts/bench "$work/git/work"
  cp -r "$d/branch/." "$work/git/work/"
  git -C "$work/git/work" add -A
  git -C "$work/git/work" -c user.name=bench -c user.email=bench@invalid commit -q -m bench
  git clone -q --bare "$work/git/work" "$work/git/repo.git"
  port=$(( 20000 + RANDOM % 20000 )); pport=$((port + 1))
  git daemon --reuseaddr --listen=127.0.0.1 --port="$port" --base-path="$work/git" --export-all \
    "$work/git" >"$work/git/daemon.log" 2>&1 &
  pids+=("$!")
  "$measure" proxy "$pport" "$port" "$work/git/bytes" &
  pids+=("$!")
  sleep 0.5
  pd=$work/poll
  mkdir -p "$pd/root" "$pd/state"
  cp -r "$d/root/." "$pd/root/"
  poll=(--config "$cfg" --branch hosts/bench --root "$pd/root" --state-dir "$pd/state")
  # Warm the cache through the proxy, then count one unchanged poll.
  "$bin" check "${poll[@]}" --source "git://127.0.0.1:$pport/repo.git" >/dev/null
  read -r up0 down0 <"$work/git/bytes"
  "$bin" check "${poll[@]}" --source "git://127.0.0.1:$pport/repo.git" >/dev/null
  sleep 0.2
  read -r up1 down1 <"$work/git/bytes"
  read -r p_min p_med p_rss < <(timed --runs "$runs" --warmup 1 -- \
    "$bin" check "${poll[@]}" --source "git://127.0.0.1:$pport/repo.git")
  poll_row="$(ms "$p_min") ($(ms "$p_med")) | $((up1 - up0)) B sent, $((down1 - down0)) B received | $(mib "$p_rss")"
fi

# --- binary ---
strip -o "$work/trueup.stripped" "$bin"
size=$(stat -c %s "$work/trueup.stripped")

echo "## Whole process ($(nproc) cores, $(uname -r), template: $templates, $([ "$with_packages" = 1 ] && echo "with" || echo "without") 50 installed packages)"
echo
cat "$table"
echo
echo "| files | idle agent RSS after 10 runs | of which anonymous | agent peak RSS |"
echo "| ---: | ---: | ---: | ---: |"
cat "$agent_rows"
echo
echo "| unchanged-remote poll (git daemon, warm cache) | time min (median) | bytes moved | peak RSS |"
echo "| --- | ---: | ---: | ---: |"
if [ "${poll_row#n/a}" != "$poll_row" ]; then
  echo "| \`trueup check --source git://...\` | $poll_row | | |"
else
  echo "| \`trueup check --source git://...\` | $poll_row |"
fi
echo
echo "Stripped binary: $(awk -v v="$size" 'BEGIN { printf "%.2f MiB", v / 1048576 }') ($size bytes)."
