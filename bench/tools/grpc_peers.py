#!/usr/bin/env python3
"""gRPC and HTTP/2 upstreams: ringlb vs nginx for unary gRPC, and ringlb's HTTP/1.1 vs HTTP/2
upstreams, in one run.

Two comparisons, each with its subjects alternating within every round (the first subject
rotates each round); the figures are medians over --rounds. Every proxy runs one worker pinned
to --proxy-cpu behind a plain-TCP h2c listener (HTTP/2 by prior knowledge); the load and the two
origins of each kind are pinned to --load-cpu. CPU us/request is the proxy's CPU time
(utime+stime of its processes, nginx master and worker, from /proc/<pid>/stat) over the measured
run divided by the requests the load generator completed; "proxy CPU" is that time over the
run's wall time (100% = the proxy's core was saturated).

a. unary gRPC, h2load with a gRPC POST (a 5-byte-prefixed 13-byte protobuf-style message,
   content-type application/grpc, te: trailers):
     ringlb-grpc  ringlb, target group protocol_version = "grpc", listener http2 = true
     nginx-grpc   nginx, `listen ... http2`, `grpc_pass grpc://up`, upstream keepalive
   Origins: `ringlb-bench backend --h2` (echoes the message, trailers grpc-status: 0).
   Reported: calls/s (h2load), CPU us/call. Every call must come back 2xx (h2load's status
   counts) or the subject is marked FAILED. h2load does not read grpc-status, so before and
   after each measured run one call through the proxy with curl checks the echo and the
   `grpc-status: 0` trailer (skipped when curl is missing; comparison b checks the GET body).
b. plain GETs over h2c with `ringlb-bench load --http2 --streams M` (it reports percentiles;
   h2load does not): requests/s, p50/p99 latency and CPU us/request all come from that run.
     ringlb-h1up  HTTP/1.1 upstream (protocol_version left at its default, "http1"), origins:
                  `ringlb-bench backend`
     ringlb-h2up  HTTP/2 upstream, protocol_version = "http2", origins: `ringlb-bench backend --h2`
   Both origins answer with the same 12-byte text/plain body. Closed loop by default (p99 then
   includes queueing at saturation); --rate R makes it open loop at R requests/s in total.

A subject that cannot run (config refused, e.g. a ringlb without protocol_version; process exits;
wrong answer; any non-2xx or error) is reported as FAILED with the reason and skipped in the
later rounds; the others go on. Exit status 1 when any subject failed.

Usage (release build first: cargo build --release --bin ringlb --bin ringlb-bench):
  bench/tools/grpc_peers.py [--only a|b|SUBJECT,...] [--rounds 3] [--seconds 5]
                            [--connections 16] [--streams 32] [--rate RPS]
                            [--ringlb PATH] [--bench PATH] [--json FILE]
  --only takes comparison letters (a, b), subject names or their prefixes: `--only nginx`,
  `--only a`, `--only ringlb-h1up,nginx-grpc`.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import SubjectFailed, wait_port, port_free, tree_cpu_seconds, stop, require_free  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

PORT = 19410
H1_ORIGINS = ["127.0.0.1:19401", "127.0.0.1:19402"]
H2_ORIGINS = ["127.0.0.1:19403", "127.0.0.1:19404"]
GRPC_PATH = "/bench.Echo/Call"
# protobuf-style `field 1 (string) = "hello world"`, with the gRPC 5-byte prefix.
MESSAGE = b"\x0a\x0bhello world"
FRAME = b"\x00" + struct.pack(">I", len(MESSAGE)) + MESSAGE

# name -> (comparison, proxy, origins, protocol_version written in ringlb's config)
SUBJECTS = {
    "ringlb-grpc": ("a", "ringlb", "h2", "grpc"),
    "nginx-grpc": ("a", "nginx", "h2", None),
    "ringlb-h1up": ("b", "ringlb", "h1", None),
    "ringlb-h2up": ("b", "ringlb", "h2", "http2"),
}


def ringlb_config(version, origins):
    pv = "" if version is None else 'protocol_version = "%s"\n' % version
    return """[runtime]
workers = 1
drain_timeout = "1s"
[[listener]]
name = "h2c"
bind = "127.0.0.1:%d"
protocol = "http"
http2 = true
target_group = "app"
[[target_group]]
name = "app"
protocol = "http"
%stargets = ["%s", "%s"]
algorithm = "round_robin"
max_idle_per_target = 1024
""" % (PORT, pv, origins[0], origins[1])


def nginx_config(tmp, origins):
    return """worker_processes 1;
pid %(tmp)s/nginx.pid;
error_log stderr error;
events { worker_connections 50000; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/nb; proxy_temp_path %(tmp)s/np;
    fastcgi_temp_path %(tmp)s/nf; uwsgi_temp_path %(tmp)s/nu; scgi_temp_path %(tmp)s/ns;
    keepalive_requests 10000000;
    upstream grpc_up {
        server %(b1)s; server %(b2)s;
        keepalive 1024; keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:%(port)d http2;
        location / { grpc_pass grpc://grpc_up; }
    }
}
""" % {"tmp": tmp, "b1": origins[0], "b2": origins[1], "port": PORT}


class Subject:
    def __init__(self, name, args, tmp):
        self.name = name
        self.part, self.proxy, self.upstream, self.version = SUBJECTS[name]
        self.args = args
        self.tmp = tmp
        origins = H2_ORIGINS if self.upstream == "h2" else H1_ORIGINS
        if self.proxy == "ringlb":
            self.conf = os.path.join(tmp, "%s.toml" % name)
            text = ringlb_config(self.version, origins)
        else:
            self.conf = os.path.join(tmp, "%s.conf" % name)
            text = nginx_config(tmp, origins)
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = os.path.join(tmp, "%s.log" % name)
        self.failed = None
        self.runs = []

    def command(self):
        pin = ["taskset", "-c", str(self.args.proxy_cpu)]
        if self.proxy == "ringlb":
            return pin + [self.args.ringlb, "run", "--config", self.conf]
        return pin + [NGINX, "-p", self.tmp, "-c", self.conf, "-g", "daemon off;"]

    def check(self):
        """The proxy's own config check: a refused config fails the subject before any run."""
        if self.proxy == "ringlb":
            cmd = [self.args.ringlb, "check", "--config", self.conf]
        else:
            cmd = [NGINX, "-t", "-p", self.tmp, "-c", self.conf, "-g", "daemon off;"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip()).splitlines()
            raise SubjectFailed("config refused: " + " | ".join(why[-3:]))

    def start(self):
        logf = open(self.log, "ab")
        p = subprocess.Popen(self.command(), stdout=logf, stderr=logf)
        logf.close()
        try:
            wait_port(PORT, p)
        except SubjectFailed as e:
            stop(p)
            raise SubjectFailed("%s; log: %s" % (e, self.log_tail()))
        return p

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
            return " | ".join(lines[-3:]) or "(empty)"
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------------- load

def h2load_cmd(args, frame_file, seconds):
    return ["taskset", "-c", str(args.load_cpu), "h2load", "-c", str(args.connections),
            "-m", str(args.streams), "-t", "1", "-D", str(seconds), "-d", frame_file,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "http://127.0.0.1:%d%s" % (PORT, GRPC_PATH)]


def run_h2load(cmd, seconds):
    """Runs h2load; returns (calls/s, calls done); raises SubjectFailed unless every call was 2xx."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise SubjectFailed("h2load did not finish")
    out = r.stdout
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rate or not req or not st:
        raise SubjectFailed("h2load output not understood:\n" + out + r.stderr)
    done, ok, failed, errored, timeout = (int(req.group(i)) for i in (3, 4, 5, 6, 7))
    s2, s3, s4, s5 = (int(st.group(i)) for i in (1, 2, 3, 4))
    # With -D, a call whose head arrived just before the end counts in "2xx" but not in "done".
    if done == 0 or s2 < done or ok != done or failed or errored or timeout or s3 or s4 or s5:
        raise SubjectFailed("not every call was 2xx: %d done, %d succeeded, %d failed, %d errored, "
                            "%d timeout; status codes %d 2xx, %d 3xx, %d 4xx, %d 5xx"
                            % (done, ok, failed, errored, timeout, s2, s3, s4, s5))
    return float(rate.group(1)), done


def bench_cmd(args, seconds, out):
    cmd = ["taskset", "-c", str(args.load_cpu), args.bench, "load", "--http2",
           "--streams", str(args.streams), "-c", str(args.connections), "-t", "1",
           "-d", "%ds" % seconds, "--warmup", "0s", "--json", out]
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    return cmd + ["http://127.0.0.1:%d/" % PORT]


def run_bench(cmd, seconds, out):
    """Runs ringlb-bench load; returns its JSON; raises SubjectFailed on any error."""
    if os.path.exists(out):
        os.unlink(out)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise SubjectFailed("ringlb-bench load did not finish")
    try:
        with open(out) as f:
            j = json.load(f)
    except (OSError, ValueError):
        raise SubjectFailed("ringlb-bench load wrote no result (exit %d): %s"
                            % (r.returncode, (r.stderr or r.stdout).strip()[-400:]))
    if j.get("errors") or r.returncode != 0 or not j.get("requests"):
        first = [l for l in (r.stdout + r.stderr).splitlines() if "error" in l.lower()]
        raise SubjectFailed("ringlb-bench load: %d requests, %d errors %s %s"
                            % (j.get("requests", 0), j.get("errors", 0),
                               j.get("errors_by_kind", {}), " | ".join(first[:2])))
    return j


def preflight(s, frame_file):
    """One request through the proxy with curl: gRPC echo + grpc-status 0, or the GET body."""
    if not shutil.which("curl"):
        return "skipped (no curl)"
    url = "http://127.0.0.1:%d" % PORT
    body_out = os.path.join(s.tmp, "preflight.out")
    if s.part == "a":
        cmd = ["curl", "-sS", "-v", "--http2-prior-knowledge", "--data-binary", "@" + frame_file,
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-o", body_out, url + GRPC_PATH]
    else:
        cmd = ["curl", "-sS", "-v", "--http2-prior-knowledge", "-o", body_out, url + "/"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    got = open(body_out, "rb").read() if os.path.exists(body_out) else b""
    head = [l[2:].strip().lower() for l in r.stderr.splitlines() if l.startswith("< ")]
    if r.returncode != 0 or not head or not head[0].startswith("http/2 200"):
        raise SubjectFailed("preflight: curl exit %d, answer %r" % (r.returncode, head[:1]))
    if s.part == "a":
        if "grpc-status: 0" not in head:
            raise SubjectFailed("preflight: no 'grpc-status: 0' trailer (got %s)" % head)
        if got != FRAME:
            raise SubjectFailed("preflight: the message did not come back (got %r)" % got[:64])
    elif got != b"hello world\n":
        raise SubjectFailed("preflight: unexpected body %r" % got[:64])
    return "ok"


def measure(s, args, frame_file, first):
    """One measured run of subject s (a fresh proxy process); appends to s.runs."""
    port_free(PORT)
    p = s.start()
    try:
        time.sleep(0.3)
        pre = preflight(s, frame_file)
        bench_out = os.path.join(s.tmp, "bench.json")
        if s.part == "a":
            run_h2load(h2load_cmd(args, frame_file, 1), 1)  # warm-up, not counted
            cmd = h2load_cmd(args, frame_file, args.seconds)
            if first:
                print("  %s load: %s" % (s.name, shlex.join(cmd)), flush=True)
            c0, t0 = tree_cpu_seconds(p.pid), time.time()
            rps, done = run_h2load(cmd, args.seconds)
            c1, t1 = tree_cpu_seconds(p.pid), time.time()
            run = {"rps": rps, "requests": done}
        else:
            run_bench(bench_cmd(args, 1, bench_out), 1, bench_out)  # warm-up, not counted
            cmd = bench_cmd(args, args.seconds, bench_out)
            if first:
                print("  %s load: %s" % (s.name, shlex.join(cmd)), flush=True)
            c0, t0 = tree_cpu_seconds(p.pid), time.time()
            j = run_bench(cmd, args.seconds, bench_out)
            c1, t1 = tree_cpu_seconds(p.pid), time.time()
            run = {"rps": j["rps"], "requests": j["requests"],
                   "p50_us": j["latency_us"]["p50"], "p99_us": j["latency_us"]["p99"]}
        if p.poll() is not None:
            raise SubjectFailed("the proxy exited during the run; log: " + s.log_tail())
        preflight(s, frame_file)  # still answering correctly after the load
        run["cpu_us"] = (c1 - c0) * 1e6 / max(run["requests"], 1)
        run["cpu_pct"] = 100.0 * (c1 - c0) / max(t1 - t0, 1e-9)
        run["preflight"] = pre
        s.runs.append(run)
        return run
    finally:
        stop(p)


# ---------------------------------------------------------------------------------------- main

def select(only):
    if not only:
        return list(SUBJECTS)
    picked = []
    for tok in [t.strip() for t in only.split(",") if t.strip()]:
        hits = [n for n, v in SUBJECTS.items() if tok == v[0] or n == tok or n.startswith(tok)]
        if not hits:
            sys.exit("--only: '%s' matches no subject (subjects: %s; comparisons: a, b)"
                     % (tok, ", ".join(SUBJECTS)))
        picked += [h for h in hits if h not in picked]
    return [n for n in SUBJECTS if n in picked]


def start_origins(args, kinds):
    for kind in kinds:
        require_free(*(H2_ORIGINS if kind == "h2" else H1_ORIGINS))
    procs = []
    for kind in kinds:
        for o in (H2_ORIGINS if kind == "h2" else H1_ORIGINS):
            cmd = ["taskset", "-c", str(args.load_cpu), args.bench, "backend", "--bind", o]
            if kind == "h2":
                cmd.append("--h2")
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    for kind in kinds:
        for o in (H2_ORIGINS if kind == "h2" else H1_ORIGINS):
            try:
                wait_port(int(o.rsplit(":", 1)[1]), limit=10)
            except SubjectFailed as e:
                for p in procs:
                    stop(p)
                sys.exit("origin %s (%s) did not start: %s" % (o, kind, e))
    return procs


def short(why, limit=160):
    return why if len(why) <= limit else why[:limit - 3] + "..."


def fmt(v, spec):
    return "-" if v is None else spec % v


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comparison letters, subject names or prefixes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--rate", type=float, help="comparison b: open loop at this many requests/s")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--ringlb", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "ringlb-bench"))
    ap.add_argument("--json")
    args = ap.parse_args()
    print("command: " + shlex.join([sys.argv[0]] + sys.argv[1:]), flush=True)
    names = select(args.only)
    for path, what in ((args.bench, "ringlb-bench"),):
        if not os.access(path, os.X_OK):
            sys.exit("%s not found at %s (cargo build --release --bin ringlb-bench, or --bench)"
                     % (what, path))
    if any(SUBJECTS[n][1] == "ringlb" for n in names) and not os.access(args.ringlb, os.X_OK):
        sys.exit("ringlb not found at %s (cargo build --release --bin ringlb, or --ringlb)"
                 % args.ringlb)
    if any(SUBJECTS[n][0] == "a" for n in names) and not shutil.which("h2load"):
        sys.exit("h2load is needed for comparison a (apt-get install nghttp2-client)")
    notes = []
    if "nginx-grpc" in names and not os.access(NGINX, os.X_OK):
        notes.append("nginx-grpc skipped: nginx is not installed")
        names.remove("nginx-grpc")
    if not names:
        sys.exit("nothing to run: " + "; ".join(notes))

    tmp = tempfile.mkdtemp(prefix="ringlb-grpcpeers-")
    frame_file = os.path.join(tmp, "call.bin")
    with open(frame_file, "wb") as f:
        f.write(FRAME)
    subjects = {n: Subject(n, args, tmp) for n in names}
    for s in subjects.values():
        try:
            s.check()
        except SubjectFailed as e:
            s.failed = str(e)
            print("FAILED %s: %s" % (s.name, s.failed), flush=True)
    kinds = sorted({s.upstream for s in subjects.values() if not s.failed})
    origins = start_origins(args, kinds) if kinds else []
    printed = set()
    try:
        for r in range(args.rounds):
            for part in ("a", "b"):
                group = [n for n in names if SUBJECTS[n][0] == part]
                if not group:
                    continue
                k = r % len(group)
                for n in group[k:] + group[:k]:
                    s = subjects[n]
                    if s.failed:
                        continue
                    try:
                        run = measure(s, args, frame_file, n not in printed)
                        printed.add(n)
                    except SubjectFailed as e:
                        s.failed = "round %d: %s" % (r + 1, e)
                        print("FAILED %s: %s" % (n, s.failed), flush=True)
                        continue
                    lat = ""
                    if "p99_us" in run:
                        lat = "  p50 %.3f ms  p99 %.3f ms" % (run["p50_us"] / 1e3,
                                                             run["p99_us"] / 1e3)
                    print("round %d %-12s %9.0f req/s  %6.2f CPU us/req  proxy CPU %3.0f%%%s"
                          % (r + 1, n, run["rps"], run["cpu_us"], run["cpu_pct"], lat), flush=True)
    finally:
        for p in origins:
            stop(p)

    def med(s, key):
        vals = [run[key] for run in s.runs if key in run]
        return statistics.median(vals) if vals else None

    summary = {}
    for n in names:
        s = subjects[n]
        summary[n] = {"comparison": s.part, "failed": s.failed, "runs": s.runs,
                      "config": open(s.conf).read(), "command": shlex.join(s.command())}
        for key in ("rps", "cpu_us", "cpu_pct", "p50_us", "p99_us"):
            summary[n][key] = med(s, key)
    print()
    print("command: " + shlex.join([sys.argv[0]] + sys.argv[1:]))
    print("%d round(s) x %d s, %d connections x %d streams, proxy on CPU %d, load and origins on "
          "CPU %d%s" % (args.rounds, args.seconds, args.connections, args.streams, args.proxy_cpu,
                        args.load_cpu, ", rate %g/s (b)" % args.rate if args.rate else ""))
    if any(SUBJECTS[n][0] == "a" for n in names):
        print("\na. unary gRPC (h2load, POST %s, %d-byte message; medians)\n" % (GRPC_PATH, len(FRAME)))
        print("| subject | calls/s | CPU us/call | proxy CPU | status |\n|---|---:|---:|---:|---|")
        for n in names:
            v = summary[n]
            if v["comparison"] == "a":
                print("| %s | %s | %s | %s | %s |" % (
                    n, fmt(v["rps"], "%.0f"), fmt(v["cpu_us"], "%.2f"), fmt(v["cpu_pct"], "%.0f%%"),
                    "FAILED: " + short(v["failed"]) if v["failed"] else "ok, all 2xx"))
        a, b = summary.get("ringlb-grpc"), summary.get("nginx-grpc")
        if a and b and a["cpu_us"] and b["cpu_us"]:
            print("\nringlb CPU/call vs nginx: %.2fx; calls/s vs nginx: %.2fx"
                  % (a["cpu_us"] / b["cpu_us"], a["rps"] / b["rps"]))
    if any(SUBJECTS[n][0] == "b" for n in names):
        print("\nb. HTTP/1.1 vs HTTP/2 upstream (ringlb-bench load --http2, GET /; medians; "
              "rps, latency and CPU from the same run)\n")
        print("| subject | req/s | p50 ms | p99 ms | CPU us/req | proxy CPU | status |\n"
              "|---|---:|---:|---:|---:|---:|---|")
        for n in names:
            v = summary[n]
            if v["comparison"] == "b":
                print("| %s | %s | %s | %s | %s | %s | %s |" % (
                    n, fmt(v["rps"], "%.0f"),
                    fmt(v["p50_us"] and v["p50_us"] / 1e3, "%.3f"),
                    fmt(v["p99_us"] and v["p99_us"] / 1e3, "%.3f"),
                    fmt(v["cpu_us"], "%.2f"), fmt(v["cpu_pct"], "%.0f%%"),
                    "FAILED: " + short(v["failed"]) if v["failed"] else "ok"))
        a, b = summary.get("ringlb-h1up"), summary.get("ringlb-h2up")
        if a and b and a["cpu_us"] and b["cpu_us"]:
            print("\nHTTP/2 upstream vs HTTP/1.1 upstream: CPU/req %.2fx, p99 %.2fx"
                  % (b["cpu_us"] / a["cpu_us"], b["p99_us"] / max(a["p99_us"], 1)))
    for note in notes:
        print("note: " + note)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    failed = [n for n in names if subjects[n].failed]
    if failed:
        print("\nFAILED subjects: %s (configs and logs in %s)" % (", ".join(failed), tmp))
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
