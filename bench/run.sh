#!/usr/bin/env bash
# Whole-process benchmarks of trueup. Prints Markdown tables.
#
#   bench/run.sh [--sizes "100 1000 10000"] [--runs N] [--slow-runs N]
#                [--templates shared|distinct] [--no-packages] [--no-build]
#                [--keep] [--peers [--peers-only] [--peer-sizes "100 1000"]
#                [--large N] [--first-runs N]]
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
# by bench/measure.rs); RSS is the peak of each run (wait4's rusage), and
# beside it the anonymous part (RssAnon) of one more run, read as it exits.
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
#
# --peers adds a side-by-side table against CFEngine (Debian's cfengine3,
# installed with apt-get when missing, which needs root) on one workload:
# N files in ONE directory, /srv/peers/fNNNNN.conf, each rendered from one
# template with the hostname fact, two run variables and one per-file
# variable (trueup: `vars:` on the file; CFEngine: a mustache template and
# `template_data` in a files promise over a list). trueup reads its branch
# from a local Git repository (file://), as an agent would, so a check of
# the same commit uses its render cache. Each cell is a fresh process doing
# the whole job: first apply (nothing there), no-op check (CFEngine: the
# same agent run again, which changes nothing), repair of 10 hand-edited
# files, with peak RSS, the median CPU time, the sha256sum floor and the
# ratio CFEngine / trueup. --large N (default 10000) adds trueup's first
# apply of N files in the one directory, with the CPU ratio to the largest
# peer size (linear would be N / that size). --peers-only skips the
# tables above. The first applies of the two tools take turns, N rounds of
# one each (--first-runs, default 5): this shared machine's speed drifts
# by tens of percent within minutes, and a first apply (6 s of settling
# each) takes long enough for one tool's runs to meet a slow spell the
# other's do not.
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
peers=0
peers_only=0
peer_sizes="100 1000"
large=10000
first_runs=5
while [ $# -gt 0 ]; do
  case $1 in
    --peers) peers=1; shift ;;
    --peers-only) peers=1; peers_only=1; shift ;;
    --peer-sizes) peer_sizes=$2; shift 2 ;;
    --large) large=$2; shift 2 ;;
    --first-runs) first_runs=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --slow-runs) slow_runs=$2; shift 2 ;;
    --templates) templates=$2; shift 2 ;;
    --no-packages) with_packages=0; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case $templates in shared|distinct) ;; *) echo "--templates shared|distinct" >&2; exit 2 ;; esac
if [ "$peers_only" = 1 ]; then sizes=""; fi
if [ "$peers" = 1 ] && ! command -v cf-agent >/dev/null; then
  echo "installing cfengine3 for --peers (apt-get)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cfengine3 >&2 ||
    { echo "--peers needs cf-agent (apt-get install cfengine3, as root)" >&2; exit 1; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/trueup-bench.XXXXXX")
pids=()
mounted=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true; fi
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
mb() { awk -v v="$1" 'BEGIN { printf "%.1f MiB (%.1f MB)", v / 1024, v * 1.024 / 1000 }'; }
# peak RSS with its anonymous part (RssAnon at exit; see bench/measure.rs)
mba() { awk -v v="$1" -v a="$2" 'BEGIN { printf "%.1f MiB (%.1f MB; anon %.1f MiB)", v / 1024, v * 1.024 / 1000, a / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f×", a / b }'; }
thousands() { printf "%'d" "$1" 2>/dev/null || printf '%d' "$1"; }

# Lists every 100th file under a root (1%), the ones drift edits.
drift_list() {
  local root=$1 n=$2 i
  for ((i = 0; i < n; i += 100)); do
    printf '%s/srv/bench/d%03d/f%05d.conf\n' "$root" $((i / 100)) "$i"
  done
}

# time ARGS... -> "min median rss [cpu] [anon]" (see bench/measure.rs)
timed() { "$measure" time "$@"; }
# min_median VALUES...: "min median" of the numbers given.
min_median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s %s\n", v[1], m }'
}

table=$work/table
printf '| files | run | time min (median) | sha256sum floor | ratio | peak RSS |\n' >"$table"
printf '| ---: | --- | ---: | ---: | ---: | ---: |\n' >>"$table"
row() { # files run min median floor rss anon
  printf '| %s | %s | %s (%s) | %s | %s | %s |\n' "$(thousands "$1")" "$2" "$(ms "$3")" "$(ms "$4")" \
    "$(ms "$5")" "$(ratio "$3" "$5")" "$(mba "$6" "$7")" >>"$table"
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
  read -r a_min a_med a_rss a_anon < <(timed --runs "$slow_runs" --warmup 0 --anon --prepare "$reset" -- "$bin" apply "${common[@]}")

  (cd "$root" && find ./srv -type f | sort) >"$d/files"
  [ "$(wc -l <"$d/files")" = "$n" ] || { echo "N=$n: apply wrote $(wc -l <"$d/files") files" >&2; exit 1; }
  log "N=$n: sha256sum floor"
  read -r f_min _ _ < <(cd "$root" && timed --runs "$runs" --warmup 2 --args-file "$d/files" -- sha256sum)

  log "N=$n: no-op check"
  read -r c_min c_med c_rss c_anon < <(timed --runs "$runs" --warmup 2 --anon -- "$bin" check "${common[@]}")

  log "N=$n: 1% drift check"
  drift_list "$root" "$n" >"$d/drifted"
  # Edits by hand (sh, for measure's --prepare).
  drift="while read -r f; do printf 'edited by hand\\n' >>\"\$f\"; done <'$d/drifted'"
  sh -c "$drift"
  read -r x_min x_med x_rss x_anon < <(timed --runs "$runs" --warmup 1 --exit 2 --anon -- "$bin" check "${common[@]}")

  log "N=$n: repair"
  read -r r_min r_med r_rss r_anon < <(timed --runs "$runs" --warmup 1 --anon \
    --prepare "$drift" -- "$bin" apply "${common[@]}")

  row "$n" "first apply" "$a_min" "$a_med" "$f_min" "$a_rss" "$a_anon"
  row "$n" "no-op check" "$c_min" "$c_med" "$f_min" "$c_rss" "$c_anon"
  row "$n" "1% drift check" "$x_min" "$x_med" "$f_min" "$x_rss" "$x_anon"
  row "$n" "repair 1%" "$r_min" "$r_med" "$f_min" "$r_rss" "$r_anon"
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
  printf '| %s | %s | %s | %s |\n' "$(thousands "$n")" "$(mb "$rss")" "$(mb "$anon")" "$(mb "$hwm")" >>"$agent_rows"
done

# --- unchanged-remote poll ---
poll_row="n/a (git sources not built yet)"
if [ -n "$sizes" ] && "$bin" check --help 2>/dev/null | grep -qi 'git url'; then
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

if [ "$peers_only" = 0 ]; then
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
fi

# --- peers: CFEngine side by side ---
[ "$peers" = 1 ] || exit 0
pw=$work/peers
mkdir -p "$pw"
# Where the tools write: a fresh journaled ext4 of its own when this runs as
# root (a 3 GiB sparse image on a loop device), as a server's file system
# is. ext4 without a journal (this VM's disk, like many a VM's) skips every
# inode freed in the last 5 s when it allocates one (`recently_deleted`),
# so a first apply right after the benchmark's own reset cost up to ten
# times more kernel CPU, for either tool, depending on what had just been
# deleted. Without root the roots stay under $work, as before.
scratch=$pw
fs_note="scratch roots under $work"
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then
  truncate -s 3G "$work/scratch.img"
  # Initialised whole now: by default the kernel zeroes the inode tables
  # and journal on a thread of its own for a while after the mount, under
  # the first cells' runs.
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/scratch.img"
  mkdir -p "$pw/fs"
  if mount -o loop "$work/scratch.img" "$pw/fs"; then
    mounted=$pw/fs scratch=$pw/fs fs_note="scratch roots on a fresh journaled ext4 (loop device)"
  else
    log "could not mount a scratch ext4; the roots stay under $work"
  fi
fi
# One template for both tools: the hostname fact, two run variables (app,
# port) and the file's own number.
peer_body() { # HOST APP PORT NUM: the template, in the tool's syntax
  local host=$1 app=$2 port=$3 num=$4 j
  printf '# %s: managed on %s\n[service]\nname = %s-%s\nlisten = 0.0.0.0:%s\n' "$num" "$host" "$app" "$num" "$port"
  for j in $(seq -w 0 15); do
    printf 'option_%s = value-%s-%s lorem ipsum dolor sit amet\n' "$j" "$num" "$j"
  done
}
peer_trueup_branch() { # DIR N
  local dir=$1 n=$2
  rm -rf "$dir" && mkdir -p "$dir"
  peer_body '{{facts.hostname}}' '{{vars.app}}' '{{vars.port}}' '{{vars.n}}' >"$dir/t.hbs"
  awk -v n="$n" 'BEGIN {
    print "vars:\n  app: bench\n  port: 8080\nfiles:"
    for (i = 0; i < n; i++)
      printf "  /srv/peers/f%05d.conf: { template: t.hbs, mode: \"0644\", vars: { n: \"%05d\" } }\n", i, i
  }' >"$dir/trueup.yaml"
  git -C "$dir" init -q -b hosts/bench
  git -C "$dir" add -A
  git -C "$dir" -c user.name=bench -c user.email=bench@invalid commit -q -m bench
}
peer_cfengine_policy() { # DIR N ROOT
  local dir=$1 n=$2 root=$3
  mkdir -p "$dir"
  peer_body '{{host}}' '{{app}}' '{{port}}' '{{n}}' >"$dir/t.mustache"
  cat >"$dir/policy.cf" <<EOF
body common control { bundlesequence => { "peers" }; }
body perms peers_mode { mode => "0644"; rxdirs => "false"; }
body edit_defaults peers_nobackup { edit_backup => "false"; }
bundle agent peers {
  vars:
    "i" slist => { $(seq -f '"%05g"' 0 $((n - 1)) | paste -sd, -) };
  files:
    "$root/srv/peers/f\$(i).conf"
      create => "true",
      perms => peers_mode,
      edit_defaults => peers_nobackup,
      template_method => "mustache",
      edit_template => "$dir/t.mustache",
      template_data => parsejson('{ "n": "\$(i)", "app": "bench", "port": "8080", "host": "\$(sys.uqhost)" }');
}
EOF
  chmod 600 "$dir/policy.cf"
}
peer_drift() { # ROOT N: a shell line that edits 10 of the files by hand
  local root=$1 n=$2 step i files=""
  step=$((n / 10))
  for ((i = 0; i < n; i += step)); do files="$files '$root/srv/peers/$(printf 'f%05d.conf' "$i")'"; done
  echo "for f in $files; do printf 'edited by hand\\n' >>\"\$f\"; done"
}
ptable=$work/peers-table
printf '| files (one directory) | run | trueup time min (median) | trueup CPU | CFEngine time min (median) | CFEngine CPU | CFEngine / trueup (min) | sha256sum floor | trueup / floor |\n' >"$ptable"
printf '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n' >>"$ptable"
prss=$work/peers-rss
printf '| files | peak RSS trueup (first apply / check / repair) | peak RSS CFEngine (first apply / check / repair) |\n| ---: | --- | --- |\n' >"$prss"
largest_peer=0
declare -A first_cpu
for n in $peer_sizes $large; do
  d=$pw/$n
  log "peers N=$n: generating"
  peer_trueup_branch "$d/branch" "$n"
  troot=$scratch/$n/troot tstate=$scratch/$n/tstate croot=$scratch/$n/croot
  tcommon=(--config "$cfg" --source "file://$d/branch" --branch hosts/bench --root "$troot" --state-dir "$tstate")
  # Each reset writes the deletion out and waits 6 s: without a journal
  # (no root, see above) ext4 passes over inodes freed in the last 5 s when
  # it allocates new ones (find_inode_bit/recently_deleted in perf); with
  # one, the wait costs nothing but time and keeps the runs alike. It
  # writes out every file system, not only the scratch one: CFEngine's
  # run leaves its own databases (/var/cfengine) dirty, and the next
  # run's fsyncs, through the loop device, would commit them on the host
  # (the first applies take turns; a trueup run after a CFEngine one took
  # up to twice as long).
  settle="sync && sleep 6"
  treset="rm -rf '$troot' '$tstate' && mkdir -p '$troot' '$tstate' && $settle"
  peer_cfengine_policy "$d/cf" "$n" "$croot"
  creset="rm -rf '$croot' && mkdir -p '$croot' && $settle"
  cf=(cf-agent -K -f "$d/cf/policy.cf")
  if printf '%s\n' $peer_sizes | grep -qx "$n"; then
    log "peers N=$n: first applies, trueup and CFEngine in turn"
    # CFEngine's warm-up run, as each of its cells has one.
    timed --runs 1 --warmup 0 --prepare "$creset" -- "${cf[@]}" >/dev/null
    ta=() tac=() ca=() cac=() ta_rss=0 ca_rss=0
    for _ in $(seq 1 "$first_runs"); do
      read -r t _ r c < <(timed --runs 1 --warmup 0 --cpu --prepare "$treset" -- "$bin" apply "${tcommon[@]}")
      ta+=("$t") tac+=("$c")
      if [ "$r" -gt "$ta_rss" ]; then ta_rss=$r; fi
      read -r t _ r c < <(timed --runs 1 --warmup 0 --cpu --prepare "$creset" -- "${cf[@]}")
      ca+=("$t") cac+=("$c")
      if [ "$r" -gt "$ca_rss" ]; then ca_rss=$r; fi
    done
    read -r ta_min ta_med < <(min_median "${ta[@]}")
    read -r _ ta_cpu < <(min_median "${tac[@]}")
    read -r ca_min ca_med < <(min_median "${ca[@]}")
    read -r _ ca_cpu < <(min_median "${cac[@]}")
    # The anonymous part: one more (untimed) run of each, which also
    # leaves each root applied for the cells below.
    read -r _ _ _ ta_anon < <(timed --runs 1 --warmup 0 --anon --prepare "$treset" -- "$bin" apply "${tcommon[@]}")
    read -r _ _ _ ca_anon < <(timed --runs 1 --warmup 0 --anon --prepare "$creset" -- "${cf[@]}")
  else
    log "peers N=$n: trueup first apply"
    read -r ta_min ta_med ta_rss ta_cpu ta_anon < <(timed --runs "$slow_runs" --warmup 0 --cpu --anon --prepare "$treset" -- "$bin" apply "${tcommon[@]}")
  fi
  first_cpu[$n]=$ta_cpu
  (cd "$troot" && find ./srv -type f | sort) >"$d/files"
  [ "$(wc -l <"$d/files")" = "$n" ] || { echo "peers N=$n: apply wrote $(wc -l <"$d/files") files" >&2; exit 1; }
  if ! printf '%s\n' $peer_sizes | grep -qx "$n"; then
    printf '| %s | first apply | %s (%s) | %s | | | | | |\n' "$(thousands "$n")" "$(ms "$ta_min")" "$(ms "$ta_med")" "$(ms "$ta_cpu")" >>"$ptable"
    printf '| %s | %s / - / - | |\n' "$(thousands "$n")" "$(mba "$ta_rss" "$ta_anon")" >>"$prss"
    continue
  fi
  largest_peer=$n
  log "peers N=$n: sha256sum floor"
  read -r f_min _ _ < <(cd "$troot" && timed --runs "$runs" --warmup 2 --args-file "$d/files" -- sha256sum)
  log "peers N=$n: trueup no-op check"
  read -r tc_min tc_med tc_rss tc_cpu tc_anon < <(timed --runs "$runs" --warmup 2 --cpu --anon -- "$bin" check "${tcommon[@]}")
  tdrift=$(peer_drift "$troot" "$n")
  log "peers N=$n: trueup repair of 10"
  read -r tr_min tr_med tr_rss tr_cpu tr_anon < <(timed --runs "$runs" --warmup 1 --cpu --anon --prepare "$tdrift" -- "$bin" apply "${tcommon[@]}")

  cmp -s "$croot/srv/peers/f00001.conf" "$troot/srv/peers/f00001.conf" ||
    log "peers N=$n: note: CFEngine's f00001.conf differs from trueup's"
  log "peers N=$n: CFEngine no-op run"
  read -r cc_min cc_med cc_rss cc_cpu cc_anon < <(timed --runs "$runs" --warmup 1 --cpu --anon -- "${cf[@]}")
  cdrift=$(peer_drift "$croot" "$n")
  log "peers N=$n: CFEngine repair of 10"
  read -r cr_min cr_med cr_rss cr_cpu cr_anon < <(timed --runs "$runs" --warmup 1 --cpu --anon --prepare "$cdrift" -- "${cf[@]}")
  prow() { # LABEL T_MIN T_MED T_CPU C_MIN C_MED C_CPU
    printf '| %s | %s | %s (%s) | %s | %s (%s) | %s | %s | %s | %s |\n' "$(thousands "$n")" "$1" \
      "$(ms "$2")" "$(ms "$3")" "$(ms "$4")" "$(ms "$5")" "$(ms "$6")" "$(ms "$7")" \
      "$(ratio "$5" "$2")" "$(ms "$f_min")" "$(ratio "$2" "$f_min")" >>"$ptable"
  }
  prow "first apply" "$ta_min" "$ta_med" "$ta_cpu" "$ca_min" "$ca_med" "$ca_cpu"
  prow "no-op check" "$tc_min" "$tc_med" "$tc_cpu" "$cc_min" "$cc_med" "$cc_cpu"
  prow "repair 10 drifted" "$tr_min" "$tr_med" "$tr_cpu" "$cr_min" "$cr_med" "$cr_cpu"
  printf '| %s | %s / %s / %s | %s / %s / %s |\n' "$(thousands "$n")" "$(mba "$ta_rss" "$ta_anon")" "$(mba "$tc_rss" "$tc_anon")" "$(mba "$tr_rss" "$tr_anon")" \
    "$(mba "$ca_rss" "$ca_anon")" "$(mba "$cc_rss" "$cc_anon")" "$(mba "$cr_rss" "$cr_anon")" >>"$prss"
done

echo
echo "## trueup and CFEngine side by side ($(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(cf-agent --version | head -1), $fs_note)"
echo
cat "$ptable"
echo
cat "$prss"
if [ "$largest_peer" != 0 ] && [ -n "$large" ] && [ -n "${first_cpu[$large]:-}" ]; then
  echo
  echo "First apply of $(thousands "$large") files in one directory: $(ms "${first_cpu[$large]}") of CPU, $(ratio "${first_cpu[$large]}" "${first_cpu[$largest_peer]}") the CPU of $(thousands "$largest_peer") files (linear: $((large / largest_peer))×)."
fi
