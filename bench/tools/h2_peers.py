#!/usr/bin/env python3
"""HTTP/2 to clients: ringlb, HAProxy and nginx side by side under h2load, in one run.

Each subject is one worker/thread pinned to --proxy-cpu, terminating TLS with ALPN h2 and
proxying to the same two HTTP/1.1 origins (`ringlb-bench backend`, keep-alive, round robin;
every subject may keep enough idle upstream connections for all streams in flight).
h2load (-c connections, -m streams each) runs pinned to --load-cpu for --seconds after a warm-up.
Subjects alternate within each round; the figures are medians over --rounds:
requests/s as h2load reports them, and the proxy's CPU time (all its processes, from /proc)
divided by the requests h2load completed: CPU us/request.

With --baseline BINARY, another ringlb build joins as subject "baseline" (same config), so two
builds alternate in one run and compare as a ratio (the subject "ringlb" is target/release/ringlb).

With --bench-client, each round also runs ringlb-bench `load --http2 --streams M` with the same
connections against ringlb, so the included load generator can be compared with h2load.

Usage (release build first: cargo build --release):
  bench/tools/h2_peers.py [--subjects ringlb,haproxy,nginx] [--rounds 3] [--seconds 5]
                          [--connections 16] [--streams 32] [--bench-client] [--json FILE]
                          [--ringlb BINARY] [--baseline path/to/other/ringlb]
"""
import argparse
import atexit
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import wait_port, tree_cpu_seconds, require_free  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RINGLB = os.path.join(ROOT, "target", "release", "ringlb")
BENCH = os.path.join(ROOT, "target", "release", "ringlb-bench")


def configs(tmp, port, origins, cert, key, pem, request_id=True):
    b1, b2 = origins
    ringlb = """[runtime]
workers = 1
[[listener]]
name = "h2"
bind = "127.0.0.1:%d"
protocol = "https"
target_group = "app"
%s
  [listener.tls]
  certificates = [{ cert = "%s", key = "%s" }]
[[target_group]]
name = "app"
targets = ["%s", "%s"]
algorithm = "round_robin"
max_idle_per_target = 1024
""" % (port, "" if request_id else 'request_id = ""', cert, key, b1, b2)
    haproxy = """global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend h2
    bind 127.0.0.1:%d ssl crt %s alpn h2,http/1.1
    default_backend app
backend app
    balance roundrobin
    server b1 %s
    server b2 %s
""" % (port, pem, b1, b2)
    nginx = """worker_processes 1;
pid %(tmp)s/nginx.pid;
error_log stderr error;
events { worker_connections 50000; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/nb; proxy_temp_path %(tmp)s/np;
    fastcgi_temp_path %(tmp)s/nf; uwsgi_temp_path %(tmp)s/nu; scgi_temp_path %(tmp)s/ns;
    keepalive_requests 10000000;
    http2_max_requests 10000000;
    upstream app { server %(b1)s; server %(b2)s; keepalive 2048; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:%(port)d ssl http2;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
""" % {"tmp": tmp, "b1": b1, "b2": b2, "port": port, "cert": cert, "key": key}
    paths = {}
    for name, text, ext in (("ringlb", ringlb, "toml"), ("haproxy", haproxy, "cfg"),
                            ("nginx", nginx, "conf")):
        paths[name] = os.path.join(tmp, "%s.%s" % (name, ext))
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def start(name, path, cpu, baseline=None):
    pin = ["taskset", "-c", str(cpu)]
    if name == "ringlb":
        cmd = pin + [RINGLB, "run", "--config", path]
    elif name == "baseline":
        cmd = pin + [baseline, "run", "--config", path]
    elif name == "haproxy":
        cmd = pin + ["haproxy", "-db", "-f", path]
    else:
        cmd = pin + ["nginx", "-c", path, "-g", "daemon off;"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def h2load(port, args, seconds):
    cmd = ["taskset", "-c", str(args.load_cpu), "h2load", "-c", str(args.connections),
           "-m", str(args.streams), "-t", "1",
           "-D", str(seconds), "https://127.0.0.1:%d/" % port]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or not done:
        raise RuntimeError("h2load output not understood:\n" + out)
    return float(m.group(1)), int(done.group(2)), out


def bench_client(port, args, tmp):
    out = os.path.join(tmp, "bench.json")
    cmd = ["taskset", "-c", str(args.load_cpu), BENCH, "load", "--http2", "--streams",
           str(args.streams), "-c", str(args.connections), "-d", "%ds" % args.seconds,
           "--warmup", "1s", "--insecure", "--json", out, "https://127.0.0.1:%d/" % port]
    subprocess.run(cmd, capture_output=True, text=True)
    with open(out) as f:
        return json.load(f)


def main():
    global RINGLB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="ringlb,haproxy,nginx")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--bench-client", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--no-request-id", action="store_true",
                    help='ringlb with request_id = "" (the cost of request ids, on by default)')
    ap.add_argument("--ringlb", metavar="BINARY", default=RINGLB,
                    help="the ringlb build under test (default target/release/ringlb; "
                         "target/pgo/release/ringlb after bench/tools/pgo.sh)")
    ap.add_argument("--baseline", metavar="BINARY",
                    help='another ringlb build, run as subject "baseline" with the same config')
    args = ap.parse_args()
    subjects = [s for s in args.subjects.split(",") if s]
    RINGLB = args.ringlb
    if "ringlb" in subjects and not os.access(RINGLB, os.X_OK):
        sys.exit("--ringlb %s: not an executable file (cargo build --release)" % RINGLB)
    if args.baseline:
        if not os.access(args.baseline, os.X_OK):
            sys.exit("--baseline %s: not an executable file" % args.baseline)
        subjects.append("baseline")
    ours = ("ringlb", "baseline")
    for s in subjects:
        if s not in ours and not shutil.which(s):
            print("skipping %s: not installed" % s)
    subjects = [s for s in subjects if s in ours or shutil.which(s)]
    if not shutil.which("h2load"):
        sys.exit("h2load is needed (apt-get install nghttp2-client)")
    tmp = tempfile.mkdtemp(prefix="ringlb-h2peers-")
    atexit.register(shutil.rmtree, tmp, True)  # configs and certificates of this run only
    cert, key, pem = (os.path.join(tmp, n) for n in ("c.pem", "k.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    origins = ["127.0.0.1:19301", "127.0.0.1:19302"]
    port = 19310
    # A leftover origin or proxy on these ports would answer (or share connections) in place of
    # the ones this run starts.
    require_free(*origins, port)
    backs = [subprocess.Popen(["taskset", "-c", str(args.load_cpu), BENCH, "backend", "--bind", o],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for o in origins]
    paths = configs(tmp, port, origins, cert, key, pem, not args.no_request_id)
    paths["baseline"] = paths["ringlb"]
    results = {s: {"rps": [], "cpu_us": []} for s in subjects}
    bench = {"rps": [], "h2load_rps": []}
    try:
        for o in origins:
            wait_port(int(o.rsplit(":", 1)[1]))
        for r in range(args.rounds):
            order = subjects[r % len(subjects):] + subjects[:r % len(subjects)]
            for s in order:
                p = start(s, paths[s], args.proxy_cpu, args.baseline)
                try:
                    wait_port(port)
                    time.sleep(0.3)
                    h2load(port, args, 1)  # warm-up, not counted
                    c0 = tree_cpu_seconds(p.pid)
                    rps, done, _ = h2load(port, args, args.seconds)
                    c1 = tree_cpu_seconds(p.pid)
                    cpu_us = (c1 - c0) * 1e6 / max(done, 1)
                    results[s]["rps"].append(rps)
                    results[s]["cpu_us"].append(cpu_us)
                    print("round %d %-8s %9.0f req/s  %6.2f CPU us/req" % (r + 1, s, rps, cpu_us), flush=True)
                    if s == "ringlb" and args.bench_client:
                        j = bench_client(port, args, tmp)
                        bench["rps"].append(j.get("requests_per_sec", j.get("rps", 0)))
                        bench["h2load_rps"].append(rps)
                        print("round %d ringlb-bench load --http2: %s req/s" % (r + 1, bench["rps"][-1]), flush=True)
                finally:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                    time.sleep(0.3)
    finally:
        for b in backs:
            b.kill()
    summary = {s: {"rps": statistics.median(v["rps"]), "cpu_us_per_req": statistics.median(v["cpu_us"]),
                   "rounds": v} for s, v in results.items() if v["rps"]}
    print("\n| subject | req/s (median) | CPU us/req (median) |\n|---|---:|---:|")
    for s, v in summary.items():
        print("| %s | %.0f | %.2f |" % (s, v["rps"], v["cpu_us_per_req"]))
    peers = [v["cpu_us_per_req"] for s, v in summary.items() if s not in ours]
    if "ringlb" in summary and peers:
        print("\nringlb CPU/req vs best peer: %.2fx" % (summary["ringlb"]["cpu_us_per_req"] / min(peers)))
        # Per round, the host's drift cancels out: their median is steadier than the above.
        mine = results["ringlb"]["cpu_us"]
        rows = [results[s]["cpu_us"] for s in summary if s not in ours and s != "bench_client"]
        if all(len(r) == len(mine) for r in rows):
            per = [c / min(r[i] for r in rows) for i, c in enumerate(mine)]
            print("ringlb CPU/req vs best peer, median of per-round ratios: %.2fx (%s)"
                  % (statistics.median(per), ", ".join("%.3f" % x for x in per)))
    if "ringlb" in summary and "baseline" in summary:
        pairs = [a / b for a, b in zip(results["ringlb"]["cpu_us"], results["baseline"]["cpu_us"])]
        print("ringlb CPU/req vs baseline: %.3fx (median of per-round ratios: %s)"
              % (statistics.median(pairs), ", ".join("%.3f" % x for x in pairs)))
    if bench["rps"]:
        ratio = statistics.median(bench["rps"]) / statistics.median(bench["h2load_rps"])
        print("ringlb-bench load --http2 vs h2load requests/s: %.2fx" % ratio)
        summary["bench_client"] = bench
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
