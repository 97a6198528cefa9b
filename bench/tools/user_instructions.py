#!/usr/bin/env python3
"""User-space instructions per request: ringlb, HAProxy and nginx under valgrind's callgrind.

CPU time per request moves by 10-20% between runs on a shared host; an instruction count does
not. Each subject runs alone (one worker/thread, single process) under
`valgrind --tool=callgrind` in front of two `ringlb-bench backend` origins, and serves --small
and then, in a fresh process, --large requests from h2load. Modes: h1 (HTTP/1.1 keep-alive, --h1,
64 connections), close (HTTP/1.1 with `Connection: close`, 16 connections: h2load reconnects, so
each request brings a new connection, as wrk's close mode in vs-peers.py) and h2 (HTTP/2 over
TLS, 16 connections of 32 streams). The figure is
(Ir(large) - Ir(small)) / (large - small): what one more request costs in the proxy's own code
and libraries, without start-up, TLS handshakes and warm-up. Kernel work (the sockets, the
syscalls or ring operations) is not in it: read it next to `perf`'s kernel share.

It counts work, not time. With --cache-sim it also counts misses per request in callgrind's
simulated caches (I1 and D1 as this host's L1, and a last level): code spread over many cache
lines shows there (a profile-guided build has a quarter of the plain build's I1 misses under
HTTP/2), which an instruction count and this guest's perf (no hardware counters) cannot show.
Use it to see what a change does to the code path; confirm with the CPU benchmarks.

Usage (release build first: cargo build --release; valgrind and h2load installed):
  bench/tools/user_instructions.py [--subjects ringlb,haproxy,nginx] [--modes h1,close,h2]
                                   [--small 4000] [--large 24000] [--ringlb BINARY]
                                   [--functions N] [--cache-sim] [--keep]
--functions N also prints, per subject and mode, the N functions with the most instructions of
their own per request (callgrind_annotate of both runs, the same difference), to see where a
request's instructions go. --keep leaves the callgrind outputs (cg.SUBJECT.MODE.REQUESTS) in the
folder it names, for callgrind_annotate's line and call-tree views; without it the folder goes.
"""
import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import wait_port, port_free, stop, require_free  # noqa: E402
from h2_peers import configs as h2_configs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BENCH = os.path.join(ROOT, "target", "release", "ringlb-bench")
PORT = 19410
DEFAULT_RINGLB = os.path.join(ROOT, "target", "release", "ringlb")
ORIGINS = ["127.0.0.1:19401", "127.0.0.1:19402"]


MODE_NAMES = {"h1": "HTTP/1.1 keep-alive", "close": "HTTP/1.1, a new connection per request",
              "h2": "HTTP/2, TLS"}


def h1_configs(tmp, request_id=True):
    """Plain HTTP/1.1 keep-alive configs (the same origins, round robin, pooled)."""
    b1, b2 = ORIGINS
    texts = {
        "ringlb": ("toml", """[runtime]
workers = 1
[[listener]]
name = "h1"
bind = "127.0.0.1:%d"
protocol = "http"
target_group = "app"
%s
[[target_group]]
name = "app"
targets = ["%s", "%s"]
algorithm = "round_robin"
""" % (PORT, "" if request_id else 'request_id = ""', b1, b2)),
        "haproxy": ("cfg", """global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend h1
    bind 127.0.0.1:%d
    default_backend app
backend app
    balance roundrobin
    server b1 %s
    server b2 %s
""" % (PORT, b1, b2)),
        "nginx": ("conf", """worker_processes 1;
pid %(tmp)s/nginx.pid;
error_log stderr error;
events { worker_connections 50000; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/nb; proxy_temp_path %(tmp)s/np;
    fastcgi_temp_path %(tmp)s/nf; uwsgi_temp_path %(tmp)s/nu; scgi_temp_path %(tmp)s/ns;
    keepalive_requests 10000000;
    upstream app { server %(b1)s; server %(b2)s; keepalive 2048; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:%(port)d;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
""" % {"tmp": tmp, "b1": b1, "b2": b2, "port": PORT}),
    }
    paths = {}
    for name, (ext, text) in texts.items():
        paths[name] = os.path.join(tmp, "h1-%s.%s" % (name, ext))
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def command(name, path, ringlb):
    if name == "ringlb":
        return [ringlb, "run", "--config", path]
    if name == "haproxy":
        return ["haproxy", "-db", "-f", path]
    return ["nginx", "-c", path, "-g", "daemon off; master_process off;"]


def instructions(name, path, mode, n, args, tmp):
    """Ir of one process serving n requests (all of its threads)."""
    out = os.path.join(tmp, "cg.%s.%s.%d" % (name, mode, n))
    sim = ["--cache-sim=yes"] if args.cache_sim else []
    cmd = ["valgrind", "--tool=callgrind"] + sim + ["--callgrind-out-file=" + out] + command(name, path, args.ringlb)
    p = subprocess.Popen(["taskset", "-c", str(args.proxy_cpu)] + cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(PORT, p, limit=60.0)
        url = ("https://127.0.0.1:%d/" if mode == "h2" else "http://127.0.0.1:%d/") % PORT
        load = {"h1": ["--h1", "-c", "64"],
                "close": ["--h1", "-c", "16", "-H", "Connection: close"],
                "h2": ["-c", "16", "-m", "32"]}[mode]
        res = subprocess.run(["taskset", "-c", str(args.load_cpu), "h2load", "-n", str(n)] + load + [url],
                             capture_output=True, text=True)
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", res.stdout)
        if not done or int(done.group(2)) != n:
            raise RuntimeError("%s %s: h2load did not complete %d requests:\n%s" % (name, mode, n, res.stdout))
    finally:
        stop(p)
        port_free(PORT)
    if p.returncode == -signal.SIGKILL:
        # Killed for not stopping: callgrind wrote no count to trust.
        raise RuntimeError("%s %s: did not stop within 10 s of SIGTERM" % (name, mode))
    events = []
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("summary:"):
                if "Ir" not in events:
                    raise RuntimeError("%s: no events line with Ir in %s" % (name, out))
                return dict(zip(events, (int(v) for v in line.split()[1:])))
    raise RuntimeError("%s: no callgrind summary in %s" % (name, out))


def own_costs(out):
    """Instructions of each function's own code in one callgrind output, by function name."""
    res = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--show-percs=no", out],
                         capture_output=True, text=True, check=True)
    costs = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if not m or ":" not in m.group(2):
            continue
        name = m.group(2).split(":", 1)[1].split(" [", 1)[0].strip()
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def top_functions(tmp, name, mode, args):
    small = own_costs(os.path.join(tmp, "cg.%s.%s.%d" % (name, mode, args.small)))
    large = own_costs(os.path.join(tmp, "cg.%s.%s.%d" % (name, mode, args.large)))
    n = args.large - args.small
    per = sorted(((large.get(f, 0) - small.get(f, 0)) / n, f) for f in set(small) | set(large))
    print("  top functions, own instructions per request (%s, %s):" % (name, mode))
    for cost, f in reversed(per[-args.functions:]):
        print("  %8.0f  %s" % (cost, f[:150]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="ringlb,haproxy,nginx")
    ap.add_argument("--modes", default="h1,close,h2")
    ap.add_argument("--small", type=int, default=4000)
    ap.add_argument("--large", type=int, default=24000)
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--ringlb", default=DEFAULT_RINGLB)
    ap.add_argument("--functions", type=int, default=0, metavar="N",
                    help="also print the N functions with the most own instructions per request")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also count data reads and writes and simulated cache misses per request "
                         "(callgrind --cache-sim=yes; slower)")
    ap.add_argument("--no-request-id", action="store_true",
                    help='ringlb with request_id = "" (the cost of request ids, on by default)')
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind outputs (the folder is printed at the end)")
    args = ap.parse_args()
    if args.large <= args.small:
        sys.exit("--large must be more than --small")
    unknown = [m for m in args.modes.split(",") if m not in MODE_NAMES]
    if unknown:
        sys.exit("unknown mode %s: the modes are %s" % (", ".join(unknown), ",".join(MODE_NAMES)))
    for tool in ("valgrind", "h2load"):
        if not shutil.which(tool):
            sys.exit("%s is needed (apt-get install valgrind nghttp2-client)" % tool)
    subjects = [s for s in args.subjects.split(",") if s == "ringlb" or shutil.which(s)]
    tmp = tempfile.mkdtemp(prefix="ringlb-instr-")
    if args.keep:
        atexit.register(print, "callgrind outputs kept in %s" % tmp)
    else:
        atexit.register(shutil.rmtree, tmp, True)
    cert, key, pem = (os.path.join(tmp, n) for n in ("c.pem", "k.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    rid = not args.no_request_id
    h1 = h1_configs(tmp, rid)
    paths = {"h1": h1, "close": h1, "h2": h2_configs(tmp, PORT, ORIGINS, cert, key, pem, rid)}
    require_free(PORT, *ORIGINS)
    backs = [subprocess.Popen(["taskset", "-c", str(args.load_cpu), BENCH, "backend", "--bind", o],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for o in ORIGINS]
    rows = []
    try:
        for o in ORIGINS:
            wait_port(int(o.rsplit(":", 1)[1]))
        for mode in args.modes.split(","):
            for s in subjects:
                small = instructions(s, paths[mode][s], mode, args.small, args, tmp)
                large = instructions(s, paths[mode][s], mode, args.large, args, tmp)
                if set(small) != set(large):
                    raise RuntimeError("%s %s: the two runs counted different events (%s, %s)"
                                       % (s, mode, sorted(small), sorted(large)))
                diff = {e: (large[e] - small[e]) / (args.large - args.small) for e in large}
                per = diff["Ir"]
                rows.append((mode, s, per))
                print("%s %-8s %8.0f instructions/request" % (mode, s, per), flush=True)
                if args.cache_sim:
                    # callgrind's simulated caches (I1, D1 and the last level, LL), misses per
                    # request: the code's and the data's footprint, which an instruction count
                    # misses and this guest's perf (no hardware counters) cannot show.
                    # Dr and Dw are data reads and writes, the rest misses.
                    print("  data reads and writes (Dr, Dw) and simulated cache misses per request: " + ", ".join(
                        "%s %.0f" % (e, v) for e, v in diff.items() if e != "Ir"), flush=True)
                if args.functions:
                    top_functions(tmp, s, mode, args)
    finally:
        for b in backs:
            b.kill()
    print("\n| mode | subject | user-space instructions per request |\n|---|---|---:|")
    for mode, s, per in rows:
        print("| %s | %s | %.0f |" % (MODE_NAMES[mode], s, per))
    print("\ncommand: bench/tools/user_instructions.py --subjects %s --modes %s --small %d --large %d%s"
          % (",".join(subjects), args.modes, args.small, args.large,
             " --no-request-id" if args.no_request_id else "")
          + (" --cache-sim" if args.cache_sim else "")
          + ("" if args.ringlb == DEFAULT_RINGLB else " --ringlb %s" % args.ringlb)
          + (" --functions %d" % args.functions if args.functions else ""))


if __name__ == "__main__":
    main()
