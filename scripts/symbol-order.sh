#!/usr/bin/env bash
# Regenerates packaging/symbol-order.txt: the functions of the release
# binary that the common runs execute, in the order build.rs asks the linker
# to lay them out (see build.rs for why).
#
#   scripts/symbol-order.sh [--no-build]
#
# Runs each of these under valgrind's callgrind, which names every function
# a run executes (a sampling profiler misses the short ones, and each one
# missed is a page fault of its own): start-up (--version), a no-op check of
# an unchanged commit from a Git repository (the render cache), a check
# that finds drift (renders), its repair, a first apply, a check of a plain
# directory, `status`, and last a repair that writes and pushes a note
# (libgit2, which the runs before it no longer start: a file:// fetch of a
# few objects is gitoxide's). The functions come out in that order, each once:
# what a no-op check runs is the first few hundred KiB of the text. Names
# carry a hash of the build's settings and compiler, so the file is
# regenerated after a compiler or dependency upgrade; names it lists that a
# build lacks are skipped by the linker.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=1
[ "${1:-}" = --no-build ] && build=0
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then cargo build --release --locked; fi
bin=$(realpath "$target/release/trueup")
nm "$bin" >/dev/null 2>&1 && [ -n "$(nm "$bin" | head -1)" ] ||
  { echo "$bin has no symbol table (stripped?): rebuild it" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One template, 1,000 files in one directory, vars per file, 10 of them
# drifted for the repair: the workload of bench/run.sh --peers, the same
# template and variables (sizes and types change which paths run: sorting 10
# drifted files is not sorting one, and a number renders through serde_json).
branch=$work/branch
mkdir -p "$branch"
{
  printf '# {{vars.n}}: managed on {{facts.hostname}}\n[service]\nname = {{vars.app}}-{{vars.n}}\nlisten = 0.0.0.0:{{vars.port}}\n'
  for j in $(seq -w 0 15); do printf 'option_%s = value-{{vars.n}}-%s lorem ipsum dolor sit amet\n' "$j" "$j"; done
} >"$branch/t.hbs"
awk 'BEGIN { print "vars:\n  app: bench\n  port: 8080\nfiles:"
  for (i = 0; i < 1000; i++) printf "  /srv/f%03d.conf: { template: t.hbs, mode: \"0644\", vars: { n: \"%03d\" } }\n", i, i }' \
  >"$branch/trueup.yaml"
git -C "$branch" init -q -b hosts/order
git -C "$branch" add -A
git -C "$branch" -c user.name=order -c user.email=order@invalid commit -q -m order
printf 'interval: 1h\nsplay: 0s\nmode: apply\nreport: { notes: false }\n' >"$work/agent.yaml"
root=$work/root state=$work/state
mkdir -p "$root" "$state" "$work/dirstate"
git_run=(--config "$work/agent.yaml" --source "file://$branch" --branch hosts/order --root "$root" --state-dir "$state")

drift() { local i; for ((i = 7; i < 1000; i += 100)); do printf 'edited by hand\n' >>"$root/srv/f$(printf %03d $i).conf"; done; }
n=0
cg() { # callgrind one run; its output file is numbered in run order
  n=$((n + 1))
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.$(printf %02d $n)" \
    "$bin" "$@" >/dev/null 2>&1 || true
}
"$bin" apply "${git_run[@]}" >/dev/null # the cache and the render cache
cg --version
cg check "${git_run[@]}"
drift # ten files edited by hand
cg check "${git_run[@]}"
cg apply "${git_run[@]}"
rm -rf "$root" "$state" && mkdir -p "$root" "$state"
cg apply "${git_run[@]}"
cg check --config "$work/agent.yaml" --source "$branch" --root "$root" --state-dir "$work/dirstate"
cg status --config "$work/agent.yaml" --state-dir "$state"
printf 'interval: 1h\nsplay: 0s\nmode: apply\n' >"$work/notes.yaml"
drift # ten files edited by hand
cg apply --config "$work/notes.yaml" "${git_run[@]:2}"

python3 - "$bin" "$work"/cg.* >"$repo/packaging/symbol-order.txt" <<'EOF'
import re, sys
binary, outputs = sys.argv[1], sys.argv[2:]
seen, order = set(), []
for path in outputs:
    names, objs = {}, {}
    ob = None
    for line in open(path, errors="replace"):
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        called, kind, ident, name = m.groups()
        table = objs if kind == "ob" else names
        if name is not None:
            table[ident] = name
        if called:
            continue
        if kind == "ob":
            ob = objs.get(ident)
        elif ob == binary:
            # callgrind marks a recursion level ("'2"); "(below main)" and
            # bare addresses are not symbols.
            fn = re.sub(r"'\d+$", "", names.get(ident) or "")
            if fn and not fn.startswith(("(", "0x")) and fn not in seen:
                seen.add(fn)
                order.append(fn)
for fn in order:
    print(fn)
EOF
# Valgrind cannot run AVX-512, VPCLMULQDQ or the SHA extensions, so under
# callgrind the libraries that pick an implementation by CPU feature
# (CRC-32, hex, SHA-1 and SHA-256) run their AVX2 or generic code, and the
# variants a real run on this machine's CPUs takes never get named: each
# one left out maps a 128 KiB block of its own. They go after the rest,
# with the program's entry point (valgrind starts in the loader) and the
# blocking side of std's channel (an object copy waits on it; under
# valgrind the threads take turns, so it never blocks).
paste <(nm --defined-only "$bin") <(nm -C --defined-only "$bin") |
  awk -F'\t' '$1 ~ / [tT] / {
      split($1, m, " "); d = $2; sub(/^[0-9a-f]+ [tT] /, "", d)
      if (m[3] == "_start" ||
          (d ~ /^(crc32fast|faster_hex|sha1dc|sha1|sha2|zlib_rs|memchr)::/ && d ~ /(avx512|sha_ni|shani|x86_sha|sha256::x86::|pclmul)/) ||
          d ~ /^std::sync::mpmc::.*::(recv|send)::\{\{closure\}\}/)
        print m[3]
    }' | grep -vxF -f "$repo/packaging/symbol-order.txt" >>"$repo/packaging/symbol-order.txt" || true
echo "packaging/symbol-order.txt: $(wc -l <"$repo/packaging/symbol-order.txt") functions from $n runs" >&2
