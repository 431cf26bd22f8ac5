#!/usr/bin/env python3
"""The fleet report at scale: `trueup fleet report` over N hosts.

    bench/fleet-report.py [--sizes 1000,10000] [--runs 3]
                          [--trueup target/release/trueup] [--keep]

For each N it builds a fleet repository in a temporary directory: two
commits on main, N host branches, and for each host a notes history ref
and a latest-note ref holding a real RunReport note. The notes are made
from real runs of the real binary (one apply that converges, then a check
that finds a hand-made change, with its content diff), copied to every
host with its name and status varied (in sync, converged, drift, failed,
error, and a few stale or malformed), written with `git fast-import`.

Then it times `trueup fleet report --source file://... --out DIR` (the
whole process: reading every notes ref, rendering, writing the site), and
prints the wall time, the peak RSS, the number of pages and the site's
size (total, index.html, the largest host page), and beside it the time
of `trueup fleet status` over the same notes (reading alone, no
rendering). Figures are printed,
never asserted. No root needed; nothing leaves the temporary directory.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENT = ["-c", "user.name=Fleet Bench", "-c", "user.email=bench@example.invalid"]


def sh(*args, cwd=None, input=None, env=None):
    r = subprocess.run(args, cwd=cwd, input=input, capture_output=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}")
    return r.stdout.decode()


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSL_", "TRUEUP_"))}


BRANCH = (
    'files:\n'
    '  /etc/motd:\n    content: "Managed by trueup\\n"\n    mode: "0644"\n'
    '  /etc/app.conf:\n    content: "listen = 8080\\nworkers = {w}\\nlog = info\\n"\n    mode: "0644"\n'
)


def seed_notes(trueup, work):
    """Two real notes from the real binary: a converging apply and a check
    that finds drift (with a diff). Returns (commits, converged, drift)."""
    bare = os.path.join(work, "seed.git")
    src = os.path.join(work, "seed")
    sh("git", "init", "-q", "--bare", "-b", "main", bare)
    sh("git", "init", "-q", "-b", "main", src)
    commits = []
    for w, msg in ((4, "Base: motd and app config"), (8, "app: eight workers")):
        with open(os.path.join(src, "trueup.yaml"), "w") as f:
            f.write(BRANCH.replace("{w}", str(w)))
        sh("git", *IDENT, "add", ".", cwd=src)
        sh("git", *IDENT, "commit", "-qm", msg, cwd=src)
        commits.append(sh("git", "rev-parse", "HEAD", cwd=src).strip())
    sh("git", "push", "-q", bare, "HEAD:refs/heads/main", cwd=src)
    sh("git", "push", "-q", bare, "HEAD:refs/heads/hosts/seed", cwd=src)
    host = os.path.join(work, "seed-host")
    for d in ("root", "state"):
        os.makedirs(os.path.join(host, d), exist_ok=True)
    with open(os.path.join(host, "facts.yaml"), "w") as f:
        f.write(
            "hostname: seed\nfqdn: seed.bench\nos: { id: debian, version_id: \"12\" }\n"
            "arch: x86_64\ncpus: 2\nmemory_mb: 2048\nipv4: [\"192.0.2.10\"]\nipv6: []\n"
            "machine_id: 0123456789abcdef0123456789abcdef\nuser: root\n"
        )
    open(os.path.join(host, "agent.yaml"), "w").close()

    def run(*args):
        cmd = [trueup, "--config", os.path.join(host, "agent.yaml"),
               "--facts", os.path.join(host, "facts.yaml"),
               "--root", os.path.join(host, "root"),
               "--state-dir", os.path.join(host, "state"),
               "--source", f"file://{bare}", *args, "--format", "json"]
        r = subprocess.run(cmd, capture_output=True, env=clean_env())
        if r.returncode not in (0, 2):
            sys.exit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}")

    def note():
        return sh("git", "notes", "--ref=refs/notes/trueup/seed", "show", commits[1], cwd=bare)

    run("apply")
    converged = note()
    with open(os.path.join(host, "root", "etc", "app.conf"), "w") as f:
        f.write("listen = 8080\nworkers = 2\nlog = debug\n")
    run("check")
    return commits, converged, note()


STATUSES = ["in_sync"] * 6 + ["converged"] * 2 + ["drift", "failed", "error"]


def build_fleet(work, n, commits, converged, drift):
    """N branches, N notes history refs and N latest refs, by fast-import."""
    bare = os.path.join(work, "fleet.git")
    sh("git", "clone", "-q", "--bare", os.path.join(work, "seed.git"), bare)
    now = time.time()
    stream = []
    mark = 1
    for i in range(1, n + 1):
        name = f"host-{i:05d}"
        status = STATUSES[i % len(STATUSES)]
        summary, body = (drift if status == "drift" else converged).split("\n\n", 1)
        report = json.loads(body)
        report["host"] = name
        report["status"] = status
        # Most hosts on the newest commit, a tenth still on the older one.
        commit = commits[0] if i % 10 == 0 else commits[1]
        report["source"]["commit"] = commit
        age = 3 * 3600 * 3 if i % 500 == 0 else (i % 600)
        report["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - age))
        if status == "error":
            report["errors"] = [f"trueup.yaml:3:5: unknown key 'filez' (host {name})"]
            report["resources"] = []
        text = f"{summary}\n\n{json.dumps(report, indent=2)}\n"
        if i % 1000 == 7:
            text = "this note is not a run report\n"
        data = text.encode()
        for ref in (f"refs/notes/trueup/{name}", f"refs/notes/trueup-latest/{name}"):
            stream.append(f"commit {ref}\nmark :{mark}\n".encode())
            stream.append(b"committer trueup <trueup@bench> 1767225600 +0000\n")
            msg = b"Notes added by trueup\n"
            stream.append(b"data %d\n%s" % (len(msg), msg))
            stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (commit.encode(), len(data), data))
            mark += 1
    sh("git", "fast-import", "--quiet", cwd=bare, input=b"".join(stream))
    refs = "".join(f"create refs/heads/hosts/host-{i:05d} {commits[1]}\n" for i in range(1, n + 1))
    sh("git", "update-ref", "--stdin", cwd=bare, input=refs.encode())
    sh("git", "pack-refs", "--all", cwd=bare)
    sh("git", "gc", "-q", cwd=bare)
    return bare


def site_size(out):
    total, pages, biggest = 0, 0, 0
    for d, _, files in os.walk(out):
        for f in files:
            s = os.path.getsize(os.path.join(d, f))
            total += s
            pages += 1
            if d.endswith("hosts"):
                biggest = max(biggest, s)
    return total, pages, biggest, os.path.getsize(os.path.join(out, "index.html"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trueup", default=os.path.join(ROOT, "target/release/trueup"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not a.no_build and a.trueup == os.path.join(ROOT, "target/release/trueup"):
        sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    work = tempfile.mkdtemp(prefix="trueup-fleet-report-")
    try:
        commits, converged, drift = seed_notes(a.trueup, work)
        print("| hosts | refs | run | wall time | peak RSS | pages | site | index.html | largest host page | `fleet status` alone |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in [int(s) for s in a.sizes.split(",")]:
            nwork = os.path.join(work, str(n))
            os.makedirs(nwork)
            shutil.copytree(os.path.join(work, "seed.git"), os.path.join(nwork, "seed.git"))
            bare = build_fleet(nwork, n, commits, converged, drift)
            refs = len(sh("git", "for-each-ref", cwd=bare).splitlines())
            out = os.path.join(nwork, "site")
            for run in range(1, a.runs + 1):
                t0 = time.monotonic()
                p = subprocess.Popen(
                    [a.trueup, "--config", "/nonexistent/agent.yaml",
                     "--source", f"file://{bare}", "fleet", "report", "--out", out,
                     "--format", "json"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
                err = p.stderr.read()
                # wait4: this process's own peak RSS, not git's.
                _, status, usage = os.wait4(p.pid, 0)
                wall = time.monotonic() - t0
                p.returncode = os.waitstatus_to_exitcode(status)
                if p.returncode != 0:
                    sys.exit(f"fleet report: exit {p.returncode}\n{err.decode(errors='replace')}")
                rss_note = f"{usage.ru_maxrss / 1024:.0f} MiB"
                total, pages, biggest, index = site_size(out)
                # The same notes read by `fleet status`: what reading the
                # fleet costs, without rendering or writing.
                t1 = time.monotonic()
                sh(a.trueup, "--config", "/nonexistent/agent.yaml",
                   "--source", f"file://{bare}", "fleet", "status", "--format", "json",
                   env=clean_env())
                read_only = time.monotonic() - t1
                print(f"| {n} | {refs} | {run} | {wall:.2f} s | {rss_note} | {pages} | "
                      f"{total / 1048576:.1f} MiB | {index / 1024:.0f} KiB | {biggest / 1024:.1f} KiB | "
                      f"{read_only:.2f} s |",
                      flush=True)
        if a.keep:
            print(f"kept: {work}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
