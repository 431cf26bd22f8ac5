#!/usr/bin/env python3
"""Fleet simulator: what one Git server pays for a fleet of trueup hosts.

    bench/fleet-sim/sim.py [--sizes 1000,10000] [--clients 8] [--polls 5]
                           [--trueup target/release/trueup] [--keep]

For each N in --sizes it builds a fleet repository on loopback with N host
branches (hosts/host-00001 ...), N notes history refs and N latest-note refs
(3N refs; 30,000 at N=10,000), each holding a real RunReport note, and
serves it with `git daemon` (git://) and with nginx + fcgiwrap + `git
http-backend` over TLS (https://, Git-Protocol passed through, so protocol
v2 works). A counting TCP proxy sits in front of each server and counts the
bytes of every connection both ways; nginx logs each request's body sizes
(the Git payload); the server's CPU time is read from /proc (the children
git daemon and fcgiwrap reaped).

Then M concurrent clients run the real `trueup` binary, each as its own host
(own state directory and cache, own branch), and it prints, per transport:
  - bytes and server CPU per unchanged poll (`trueup check`, notes off),
  - bytes per changed poll (the host's branch moved by one commit),
  - bytes per notes push (a heartbeat: the latest-note ref, one push),
  - the time and peak RSS of `trueup fleet status` over the N hosts,
  - the reports repository's growth for one simulated day of one host
    (24 hourly heartbeats and one change).
Everything is on 127.0.0.1, in a temporary directory, bounded by --sizes,
--clients and --polls. Figures are printed, never asserted.

Needs: git, nginx, fcgiwrap, openssl (scripts/install-test-deps.sh).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK = os.sysconf("SC_CLK_TCK")


def sh(*args, cwd=None, env=None, input=None):
    r = subprocess.run(args, cwd=cwd, env=env, input=input, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not open port {port}")


def child_cpu(pid):
    """CPU seconds used by `pid` and every process under it, the reaped ones
    included (user + system). `git daemon` is a `git` wrapper whose child
    `git-daemon` forks a process per connection, so the tree is walked."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    # utime stime cutime cstime are fields 14-17 (1-based) of the whole line.
    own = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK
    return own + sum(child_cpu(c) for c in children)


class CountingProxy:
    """TCP proxy on 127.0.0.1 that counts bytes per connection, both ways."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.total = 0
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(512)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            s = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            c.close()
            return
        with self.lock:
            self.connections += 1
        done = threading.Event()

        def pump(a, b):
            n = 0
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    n += len(data)
                    b.sendall(data)
            except OSError:
                pass
            with self.lock:
                self.total += n
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            done.set()

        t = threading.Thread(target=pump, args=(s, c), daemon=True)
        t.start()
        pump(c, s)
        t.join()
        c.close()
        s.close()

    def snapshot(self):
        with self.lock:
            return self.total, self.connections


def make_note(trueup, work):
    """A real note, as trueup writes it: one apply against a tiny branch."""
    repo = os.path.join(work, "seed.git")
    sh("git", "init", "-q", "--bare", repo)
    src = os.path.join(work, "seed")
    sh("git", "init", "-q", src)
    with open(os.path.join(src, "trueup.yaml"), "w") as f:
        f.write('files:\n  /etc/motd:\n    content: "managed\\n"\n    mode: "0644"\n')
    sh("git", "-c", "user.name=sim", "-c", "user.email=sim@x", "add", ".", cwd=src)
    sh("git", "-c", "user.name=sim", "-c", "user.email=sim@x", "commit", "-qm", "seed", cwd=src)
    sh("git", "push", "-q", repo, "HEAD:refs/heads/hosts/seed", cwd=src)
    host = Host(trueup, work, "seed")
    host.run(f"file://{repo}", "apply")
    commit = sh("git", "rev-parse", "refs/heads/hosts/seed", cwd=repo).strip()
    return sh("git", "notes", "--ref", "trueup/seed", "show", commit, cwd=repo)


class Host:
    """One simulated host: own facts, state directory (cache) and root."""

    def __init__(self, trueup, base, name, config="", group="hosts"):
        self.trueup = trueup
        self.name = name
        self.dir = os.path.join(base, group, name)
        os.makedirs(os.path.join(self.dir, "root"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "state"), exist_ok=True)
        with open(os.path.join(self.dir, "facts.yaml"), "w") as f:
            f.write(
                f"hostname: {name}\nfqdn: {name}.sim\nos: {{ id: debian, version_id: \"12\" }}\n"
                "arch: x86_64\ncpus: 1\nmemory_mb: 1024\nipv4: []\nipv6: []\n"
                "machine_id: 0123456789abcdef0123456789abcdef\nuser: root\n"
            )
        self.configure(config)

    def configure(self, yaml):
        with open(os.path.join(self.dir, "agent.yaml"), "w") as f:
            f.write(yaml)

    def run(self, url, *args):
        cmd = [
            self.trueup, "--config", os.path.join(self.dir, "agent.yaml"),
            "--facts", os.path.join(self.dir, "facts.yaml"),
            "--root", os.path.join(self.dir, "root"),
            "--state-dir", os.path.join(self.dir, "state"),
            "--source", url, "--branch", f"hosts/{self.name}", *args,
        ]
        r = subprocess.run(cmd, capture_output=True, env=clean_env())
        if r.returncode not in (0, 2):
            sys.exit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}\n{r.stdout.decode(errors='replace')[-2000:]}")
        return r


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSL_", "TRUEUP_"))}
    return env


def build_fleet(work, n, note_template):
    """The fleet repository: N branches, N notes refs, N latest refs."""
    bare = os.path.join(work, "fleet.git")
    sh("git", "init", "-q", "--bare", bare)
    sh("git", "config", "http.receivepack", "true", cwd=bare)
    src = os.path.join(work, "fleet-src")
    sh("git", "init", "-q", src)
    with open(os.path.join(src, "trueup.yaml"), "w") as f:
        f.write('files:\n  /etc/motd:\n    content: "managed\\n"\n    mode: "0644"\n')
    ident = ["-c", "user.name=sim", "-c", "user.email=sim@x"]
    sh("git", *ident, "add", ".", cwd=src)
    sh("git", *ident, "commit", "-qm", "fleet", cwd=src)
    sh("git", "push", "-q", bare, "HEAD:refs/heads/main", cwd=src)
    base = sh("git", "rev-parse", "HEAD", cwd=src).strip()
    summary, body = note_template.split("\n\n", 1)
    report = json.loads(body)
    stream = []
    mark = 1
    for i in range(1, n + 1):
        name = f"host-{i:05d}"
        report["host"] = name
        text = f"{summary}\n\n{json.dumps(report, indent=2)}\n".encode()
        for ref in (f"refs/notes/trueup/{name}", f"refs/notes/trueup-latest/{name}"):
            stream.append(f"commit {ref}\nmark :{mark}\n".encode())
            stream.append(b"committer sim <sim@x> 1767225600 +0000\n")
            msg = f"Note on {base}\n".encode()
            stream.append(b"data %d\n%s" % (len(msg), msg))
            stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (base.encode(), len(text), text))
            mark += 1
    sh("git", "fast-import", "--quiet", cwd=bare, input=b"".join(stream))
    refs = "".join(f"create refs/heads/hosts/host-{i:05d} {base}\n" for i in range(1, n + 1))
    sh("git", "update-ref", "--stdin", cwd=bare, input=refs.encode())
    sh("git", "pack-refs", "--all", cwd=bare)
    sh("git", "gc", "-q", cwd=bare)
    count = len(sh("git", "for-each-ref", cwd=bare).splitlines())
    return bare, src, base, count


def start_daemon(work, base):
    port = free_port()
    log = open(os.path.join(work, "daemon.log"), "w")
    p = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", "--export-all",
         "--enable=receive-pack", f"--base-path={base}", base],
        stdout=log, stderr=log, env=clean_env(), start_new_session=True,
    )
    wait_port(port, p, "git daemon")
    return p, port


def start_https(work, base):
    d = os.path.join(work, "nginx")
    os.makedirs(d)
    for sub in ("body", "fastcgi", "proxy", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, "tmp", sub))
    ca_key, ca, key, csr, cert, ext = (os.path.join(d, x) for x in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "server.ext"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    sh("openssl", "req", "-x509", *ec, "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=trueup sim CA")
    sh("openssl", "req", *ec, "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    backend = os.path.join(sh("git", "--exec-path").strip(), "git-http-backend")
    sock = os.path.join(d, "fcgiwrap.sock")
    fcgi = subprocess.Popen(["fcgiwrap", "-f", "-c", "4", "-s", f"unix:{sock}"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "fcgiwrap.log"), "w"),
                            env=clean_env(), start_new_session=True)
    deadline = time.time() + 10
    while not os.path.exists(sock):
        if time.time() > deadline or fcgi.poll() is not None:
            sys.exit("fcgiwrap did not start")
        time.sleep(0.02)
    port = free_port()
    access = os.path.join(d, "access.log")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        # As root, nginx's workers would run as nobody and could not reach
        # the fcgiwrap socket in this private temporary directory.
        user = "user root;" if os.geteuid() == 0 else ""
        f.write(f"""
{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/tmp/body;
    fastcgi_temp_path {d}/tmp/fastcgi;
    proxy_temp_path {d}/tmp/proxy;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format git '$request_method $uri $status $request_length $bytes_sent $content_length $body_bytes_sent';
    access_log {access} git;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            fastcgi_pass unix:{sock};
            fastcgi_param SCRIPT_FILENAME {backend};
            fastcgi_param GIT_PROJECT_ROOT {base};
            fastcgi_param GIT_HTTP_EXPORT_ALL 1;
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param REMOTE_USER sim;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param HTTPS on;
        }}
    }}
}}
""")
    ng = subprocess.Popen(["nginx", "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")],
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "nginx.stderr"), "w"),
                          start_new_session=True)
    wait_port(port, ng, "nginx")
    return ng, fcgi, port, ca, access


def payload(access, start):
    """Git payload (request + response bodies) and HTTP bytes logged since `start`."""
    with open(access) as f:
        lines = f.readlines()[start:]
    body = total = 0
    for l in lines:
        m, uri, status, req_len, sent, clen, body_sent = l.split()
        body += (int(clen) if clen != "-" else 0) + int(body_sent)
        total += int(req_len) + int(sent)
    return body, total, len(lines)


def log_lines(access):
    with open(access) as f:
        return len(f.readlines())


def measure(label, proxy, server_pid, hosts, action, per, access=None):
    """Runs `action(host)` on every host at once; bytes and CPU per action."""
    b0, c0 = proxy.snapshot()
    cpu0 = child_cpu(server_pid)
    a0 = log_lines(access) if access else 0
    t0 = time.time()
    with ThreadPoolExecutor(len(hosts)) as ex:
        list(ex.map(action, hosts))
    wall = time.time() - t0
    time.sleep(0.3)  # let the last connections close and be counted
    b1, c1 = proxy.snapshot()
    cpu1 = child_cpu(server_pid)
    count = len(hosts) * per
    row = {
        "what": label,
        "ops": count,
        "bytes_per_op": (b1 - b0) / count,
        "connections_per_op": (c1 - c0) / count,
        "server_cpu_ms_per_op": (cpu1 - cpu0) * 1000 / count,
        "wall_s": wall,
    }
    if access:
        body, total, reqs = payload(access, a0)
        row["git_payload_per_op"] = body / count
        row["http_requests_per_op"] = reqs / count
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--polls", type=int, default=5)
    ap.add_argument("--trueup", default=os.path.join(ROOT, "target/release/trueup"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > 10000 or args.clients > 64 or args.polls > 50:
        sys.exit("bounded: N <= 10000, clients <= 64, polls <= 50")
    trueup = os.path.abspath(args.trueup)
    if not os.access(trueup, os.X_OK):
        sys.exit(f"{trueup}: build it first (cargo build --release)")
    results = []
    for n in sizes:
        work = tempfile.mkdtemp(prefix=f"trueup-fleet-sim-{n}-")
        procs = []
        try:
            note = make_note(trueup, work)
            t0 = time.time()
            bare, src, base_commit, refs = build_fleet(work, n, note)
            print(f"\n## N = {n} hosts: {refs} refs (built in {time.time() - t0:.1f}s)", flush=True)
            # The reports repository: the notes refs only (2N refs).
            rep_all = os.path.join(work, "reports.git")
            sh("git", "init", "-q", "--bare", rep_all)
            sh("git", "config", "http.receivepack", "true", cwd=rep_all)
            sh("git", "push", "-q", rep_all, "refs/notes/*:refs/notes/*", cwd=bare)
            daemon, dport = start_daemon(work, work)
            procs.append(daemon)
            ng, fcgi, hport, ca, access = start_https(work, work)
            procs += [ng, fcgi]
            gproxy = CountingProxy(dport)
            hproxy = CountingProxy(hport)
            urls = {
                "git://": (f"git://127.0.0.1:{gproxy.port}/fleet.git", gproxy, daemon.pid, None, ""),
                "https://": (f"https://127.0.0.1:{hproxy.port}/fleet.git", hproxy, fcgi.pid, access,
                             f"auth:\n  ca_file: {ca}\n"),
            }
            m = min(args.clients, n)
            for scheme, (url, proxy, pid, acc, auth) in urls.items():
                group = scheme.strip(":/")
                hosts = [Host(trueup, work, f"host-{i:05d}", auth + "report:\n  notes: false\n", group)
                         for i in range(1, m + 1)]
                first = measure(f"{scheme} first apply (empty cache)", proxy, pid, hosts,
                                lambda h: h.run(url, "apply"), 1, acc)
                polls = measure(f"{scheme} unchanged poll", proxy, pid, hosts,
                                lambda h: [h.run(url, "check") for _ in range(args.polls)], args.polls, acc)
                # Move each client's branch one commit on, then poll.
                ident = ["-c", "user.name=sim", "-c", "user.email=sim@x"]
                for h in hosts:
                    with open(os.path.join(src, "trueup.yaml"), "w") as f:
                        f.write(f'files:\n  /etc/motd:\n    content: "{h.name} {time.time()}\\n"\n    mode: "0644"\n')
                    sh("git", *ident, "commit", "-qam", f"change {h.name}", cwd=src)
                    sh("git", "push", "-q", "-f", bare, f"HEAD:refs/heads/hosts/{h.name}", cwd=src)
                changed = measure(f"{scheme} changed poll (apply)", proxy, pid, hosts,
                                  lambda h: h.run(url, "apply"), 1, acc)
                for h in hosts:
                    h.configure(auth + "report:\n  heartbeat: 0s\n")
                # The first notes push of each host also merges onto the
                # generated history; the second is the steady state.
                for h in hosts:
                    h.run(url, "check")
                push = measure(f"{scheme} poll + heartbeat push to the fleet repository ({refs} refs)",
                               proxy, pid, hosts, lambda h: h.run(url, "check"), 1, acc)
                reports_url = url.replace("/fleet.git", "/reports.git")
                for h in hosts:
                    h.configure(auth + f"report:\n  heartbeat: 0s\n  repo: {reports_url}\n")
                    h.run(url, "check")
                rpush = measure(f"{scheme} poll + heartbeat push to a reports repository ({2 * n} refs)",
                                proxy, pid, hosts, lambda h: h.run(url, "check"), 1, acc)
                for row in (first, polls, changed, push, rpush):
                    row["n"] = n
                    row["refs"] = refs
                    results.append(row)
                    extra = ""
                    if "git_payload_per_op" in row:
                        extra = (f", Git payload {row['git_payload_per_op']:.0f} B, "
                                 f"{row['http_requests_per_op']:.1f} HTTP requests")
                    print(f"- {row['what']}: {row['bytes_per_op']:.0f} B on the wire{extra}, "
                          f"{row['connections_per_op']:.1f} connections, "
                          f"server CPU {row['server_cpu_ms_per_op']:.1f} ms per op "
                          f"({row['ops']} ops by {m} concurrent clients in {row['wall_s']:.1f}s)", flush=True)
            # fleet status over N hosts (git://, then https://).
            for scheme, (url, proxy, pid, acc, auth) in urls.items():
                viewer = Host(trueup, work, "viewer", auth)
                cmd = [trueup, "--config", os.path.join(viewer.dir, "agent.yaml"), "--source", url,
                       "fleet", "status", "--format", "json"]
                b0, _ = proxy.snapshot()
                out_path = os.path.join(work, "fleet-status.json")
                err_path = os.path.join(work, "fleet-status.err")
                t0 = time.time()
                with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
                    p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=clean_env())
                    # wait4: this one process's peak RSS, not any other child's.
                    _, status, ru = os.wait4(p.pid, 0)
                wall = time.time() - t0
                if status != 0:
                    with open(err_path) as f:
                        sys.exit(f"fleet status: wait status {status}\n{f.read()}")
                with open(out_path) as f:
                    hosts_seen = len(json.load(f)["hosts"])
                time.sleep(0.2)
                b1, _ = proxy.snapshot()
                rss = ru.ru_maxrss / 1024
                row = {"what": f"{scheme} fleet status", "n": n, "refs": refs, "wall_s": wall,
                       "hosts": hosts_seen, "bytes": b1 - b0, "peak_rss_mib": rss}
                results.append(row)
                print(f"- {scheme} fleet status: {hosts_seen} hosts in {wall:.2f}s, "
                      f"{(b1 - b0) / 1e6:.2f} MB on the wire, peak RSS {rss:.0f} MiB", flush=True)
            # A simulated day of one host against a reports repository.
            rep = os.path.join(work, "day-reports.git")
            sh("git", "init", "-q", "--bare", rep)
            day_host = Host(trueup, work, "host-00001", "report:\n  heartbeat: 0s\n"
                            f"  repo: git://127.0.0.1:{dport}/day-reports.git\n", "day")
            day_url = f"git://127.0.0.1:{dport}/fleet.git"
            day_host.run(day_url, "apply")
            size0 = repo_size(rep)
            hist0 = history_len(rep)
            for hour in range(24):
                if hour == 12:
                    with open(os.path.join(src, "trueup.yaml"), "w") as f:
                        f.write(f'files:\n  /etc/motd:\n    content: "day {time.time()}\\n"\n    mode: "0644"\n')
                    sh("git", "-c", "user.name=sim", "-c", "user.email=sim@x", "commit", "-qam", "daily change", cwd=src)
                    sh("git", "push", "-q", "-f", bare, "HEAD:refs/heads/hosts/host-00001", cwd=src)
                    day_host.run(day_url, "apply")
                else:
                    day_host.run(day_url, "check")
            loose = repo_size(rep) - size0
            sh("git", "gc", "-q", "--prune=now", cwd=rep)
            packed = repo_size(rep)
            hist = history_len(rep) - hist0
            row = {"what": "one host, one day (24 heartbeats, 1 change)", "n": n, "history_commits_added": hist,
                   "bytes_before_gc": loose, "reports_repo_bytes_after_gc": packed}
            results.append(row)
            print(f"- one host, one simulated day (24 heartbeats + 1 change) into a reports repository: "
                  f"{hist} history commit(s) added, {loose} B written before gc, "
                  f"repository {packed} B after gc", flush=True)
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"kept {work}")
    with open(os.path.join(tempfile.gettempdir(), "trueup-fleet-sim.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n(all figures as JSON in {tempfile.gettempdir()}/trueup-fleet-sim.json)")


def repo_size(path):
    total = 0
    for d, _, files in os.walk(os.path.join(path, "objects")):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def history_len(rep):
    r = subprocess.run(["git", "rev-list", "--count", "refs/notes/trueup/host-00001"], cwd=rep,
                       capture_output=True, text=True)
    return int(r.stdout.strip() or 0)


if __name__ == "__main__":
    main()
