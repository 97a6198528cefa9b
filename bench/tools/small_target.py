#!/usr/bin/env python3
"""A flood of clients against a small target: how many requests fail.

One nginx origin that can hold only --slots connections (worker_connections; beyond them it
drops new connections), 2 proxy workers, and wrk with --clients connections (far more than the
origin's slots). Subjects:
  ringlb            no limit: ringlb opens as many upstream connections as requests in flight
  ringlb-maxconn    max_connections = slots/workers - 2 per worker, queue_timeout 5s: requests
                    beyond the limit wait in ringlb's queue
  haproxy-maxconn   HAProxy with `maxconn` on the server line (its queue), for reference
Prints requests, errors (non-2xx + socket errors as wrk counts them) and the error share.

Usage (release build first: cargo build --release):
  bench/tools/small_target.py [--slots 64] [--clients 500] [--seconds 10] [--subjects ...]
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RINGLB = os.path.join(ROOT, "target", "release", "ringlb")
sys.path.insert(0, HERE)
from proclib import require_free  # noqa: E402


def wait_port(port, limit=10.0):
    import socket
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


def start(cmd, cpu, log):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=log, stderr=log,
                            start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def origin_conf(tmp, port, slots):
    conf = os.path.join(tmp, "origin.conf")
    with open(conf, "w") as f:
        f.write("""worker_processes 1;
error_log %s/origin-error.log crit;
pid %s/origin.pid;
events { worker_connections %d; multi_accept on; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:%d backlog=4096; location / { return 200 "ok\\n"; } }
}
""" % (tmp, tmp, slots, port))
    return conf


def proxy_conf(tmp, subject, port, origin, slots, workers):
    if subject.startswith("ringlb"):
        limit = ""
        if subject == "ringlb-maxconn":
            limit = "max_connections = %d\nqueue_timeout = \"5s\"\n" % max(1, slots // workers - 2)
        path = os.path.join(tmp, subject + ".toml")
        with open(path, "w") as f:
            f.write("""[runtime]
workers = %d
[[listener]]
name = "web"
bind = "127.0.0.1:%d"
protocol = "http"
target_group = "app"
request_id = ""
  [listener.limits]
  idle_timeout = "60s"
[[target_group]]
name = "app"
targets = ["127.0.0.1:%d"]
%s""" % (workers, port, origin, limit))
        return [RINGLB, "run", "--config", path]
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write("""global
  nbthread %d
  maxconn 8000
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  timeout queue 5s
frontend web
  bind 127.0.0.1:%d
  default_backend app
backend app
  http-reuse always
  server o1 127.0.0.1:%d maxconn %d
""" % (workers, port, origin, max(1, slots - 4)))
    return ["/usr/sbin/haproxy", "-f", path]


def wrk(port, clients, seconds, cpu):
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t2", "-c%d" % clients, "-d%ds" % seconds,
         "--timeout", "10s", "http://127.0.0.1:%d/index.html" % port],
        capture_output=True, text=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return reqs, errors, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--subjects", default="ringlb,ringlb-maxconn,haproxy-maxconn")
    ap.add_argument("--verbose", action="store_true", help="print wrk's output")
    a = ap.parse_args()
    if not os.path.exists(RINGLB):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="ringlb-small-")
    log = open(os.path.join(tmp, "log"), "w")
    origin_port, proxy_port = 19551, 19552
    # A process left on these ports from an earlier run would answer in place of the ones
    # started here (or, through SO_REUSEPORT, share their connections), and skew the counts.
    require_free(origin_port, proxy_port)
    conf = origin_conf(tmp, origin_port, a.slots)
    rows = []
    try:
        for subject in a.subjects.split(","):
            # A fresh origin for each subject: connections the previous one left closing would
            # hold its few slots.
            origin = start(["/usr/sbin/nginx", "-p", tmp, "-c", conf, "-g", "daemon off;"], 1, log)
            cmd = proxy_conf(tmp, subject, proxy_port, origin_port, a.slots, a.workers)
            p = start(cmd, 0, log)
            try:
                wait_port(origin_port)
                wait_port(proxy_port)
                time.sleep(0.5)
                reqs, errors, out = wrk(proxy_port, a.clients, a.seconds, 1)
            finally:
                stop(p)
                stop(origin)
                time.sleep(1.0)
            share = 100.0 * errors / max(1, reqs)
            if a.verbose:
                print(out)
            print("%-16s %9d requests %7d errors  %.3f%%" % (subject, reqs, errors, share),
                  flush=True)
            rows.append((subject, reqs, errors, share))
    finally:
        log.close()
    print("\ncommand: bench/tools/small_target.py --slots %d --clients %d --seconds %d --workers %d"
          % (a.slots, a.clients, a.seconds, a.workers))
    print("\n| subject | requests | errors | errors % |\n|---|---:|---:|---:|")
    for s, r, e, p in rows:
        print("| %s | %d | %d | %.3f |" % (s, r, e, p))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
