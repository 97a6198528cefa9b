#!/usr/bin/env python3
"""ringlb vs HAProxy vs nginx under wrk, keep-alive and `Connection: close`, in one run.

Each proxy runs one worker/thread pinned to --proxy-cpu, in front of the same two nginx origins
(`bench/peers/origin-nginx.conf`, 12-byte body), round robin, keep-alive to the origins. wrk and
the origins share --load-cpu. Modes:
  keepalive  wrk -c CONNS (default 64)
  close      wrk -c CLOSE_CONNS (default 16) -H "Connection: close": a new connection per request
Subjects alternate within each round (the order rotates every round); each run is a 1 s warm-up
and then --seconds measured. Figures are medians over --rounds: requests/s and p99 as wrk
reports them (`--latency`), and CPU us/request = the proxy's utime+stime (all its processes,
from /proc) over the requests wrk completed; "kernel us/req" is the stime part of it. The
last lines give, round by round, ringlb's CPU/req over the best peer's, and its kernel time
alone over the best peer's whole CPU/req: where that reaches a target ratio, no change to
ringlb's own code can meet it, only less work in the kernel.

--baseline BINARY adds another ringlb build as subject "baseline" (same config), so two builds
compare in the same run.

--defer-accept turns on every proxy's deferred accept (TCP_DEFER_ACCEPT: a connection is accepted
once its request has arrived): ringlb `defer_accept = true`, HAProxy `defer-accept`, nginx
`deferred`. Without it each runs with its default (off for all three). With --baseline too, the
baseline build must know `defer_accept` (ringlb from December 2026 on).

Usage (release build first: cargo build --release):
  bench/peers/vs-peers.py [--rounds 3] [--seconds 10] [--subjects ringlb,haproxy,nginx]
                          [--modes keepalive,close] [--connections 64] [--close-connections 16]
                          [--ringlb BINARY] [--baseline path/to/other/ringlb] [--defer-accept]
                          [--json FILE]
"""
import argparse
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "tools"))
from proclib import wait_port, stop, tree_cpu_split, require_free  # noqa: E402

RINGLB = os.path.join(ROOT, "target", "release", "ringlb")
ORIGINS = ("127.0.0.1:19001", "127.0.0.1:19002")
PORTS = {"ringlb": 18080, "haproxy": 18081, "nginx": 18082, "baseline": 18083}


def ringlb_config(tmp, name, port, defer):
    path = os.path.join(tmp, "%s.toml" % name)
    with open(path, "w") as f:
        f.write("[runtime]\nworkers = 1\n\n[[listener]]\nname = \"bench\"\n"
                "bind = \"127.0.0.1:%d\"\nprotocol = \"http\"\ntarget_group = \"origins\"\n%s\n"
                "[[target_group]]\nname = \"origins\"\nalgorithm = \"round_robin\"\n"
                "targets = [\"%s\", \"%s\"]\n"
                % (port, "defer_accept = true\n" if defer else "", ORIGINS[0], ORIGINS[1]))
    return path


def nginx_config(tmp, port, defer):
    """bench/peers/nginx.conf (the scenario template) with its placeholders filled in."""
    text = open(os.path.join(HERE, "nginx.conf")).read()
    for k, v in {"pidfile": os.path.join(tmp, "nginx.pid"), "dir": tmp,
                 "backend1": ORIGINS[0], "backend2": ORIGINS[1], "listen_port": str(port),
                 "nginx_defer_accept": " deferred" if defer else ""}.items():
        text = text.replace("{{%s}}" % k, v)
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def haproxy_config(tmp, defer):
    """bench/peers/haproxy-keepalive.cfg, with `defer-accept` on its bind when asked."""
    text = open(os.path.join(HERE, "haproxy-keepalive.cfg")).read()
    if defer:
        bind = "bind 127.0.0.1:%d" % PORTS["haproxy"]
        text = replace_once(text, bind + "\n", bind + " defer-accept\n")
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(text)
    return path


def replace_once(text, old, new):
    if text.count(old) != 1:
        raise RuntimeError("peer config template changed: %r not found once" % old)
    return text.replace(old, new)


def start(name, tmp, cpu, baseline, defer):
    pin = ["taskset", "-c", str(cpu)]
    if name in ("ringlb", "baseline"):
        binary = RINGLB if name == "ringlb" else baseline
        cmd = pin + [binary, "run", "--config", ringlb_config(tmp, name, PORTS[name], defer)]
    elif name == "haproxy":
        cmd = pin + ["haproxy", "-db", "-f", haproxy_config(tmp, defer)]
    else:
        cmd = pin + ["nginx", "-c", nginx_config(tmp, PORTS["nginx"], defer), "-g", "daemon off;"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PORTS[name], p)
    return p


def millis(text):
    """wrk's latency figure ('812.00us', '1.23ms', '1.02s') in milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if not m:
        raise RuntimeError("wrk latency not understood: %r" % text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(port, conns, seconds, close, cpu):
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d/" % port], capture_output=True, text=True).stdout
    reqs = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (reqs and rps and p50 and p99):
        raise RuntimeError("wrk output not understood:\n" + out)
    return (int(reqs.group(1)), float(rps.group(1)), millis(p50.group(1)), millis(p99.group(1)),
            int(errors.group(1)) if errors else 0)


def per_round_vs_best(rounds, ours, key="cpu_us"):
    """`ours`'s CPU/req (or its `key` part of it) over the best peer's whole CPU/req, round by
    round (empty unless every round has all)."""
    peers = [rounds[p]["cpu_us"] for p in ("haproxy", "nginx") if p in rounds and rounds[p]["cpu_us"]]
    mine = rounds.get(ours, {}).get(key, [])
    if not peers or not mine or any(len(p) != len(mine) for p in peers):
        return []
    return [c / min(p[i] for p in peers) for i, c in enumerate(mine)]


def main():
    global RINGLB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--subjects", default="ringlb,haproxy,nginx")
    ap.add_argument("--modes", default="keepalive,close")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--close-connections", type=int, default=16)
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--ringlb", metavar="BINARY", default=RINGLB,
                    help="the ringlb build under test (default target/release/ringlb; "
                         "target/pgo/release/ringlb after bench/tools/pgo.sh)")
    ap.add_argument("--baseline", metavar="BINARY")
    ap.add_argument("--defer-accept", action="store_true",
                    help="every proxy defers accept until the request arrives")
    ap.add_argument("--json")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit("%s is needed (apt-get install %s)" % (tool, tool))
    subjects = [s for s in args.subjects.split(",") if s]
    unknown = [s for s in subjects if s not in ("ringlb", "haproxy", "nginx")]
    if unknown:
        sys.exit("--subjects: unknown %s (ringlb, haproxy, nginx; --baseline adds a build)" % ",".join(unknown))
    RINGLB = args.ringlb
    if "ringlb" in subjects and not os.access(RINGLB, os.X_OK):
        sys.exit("--ringlb %s: not an executable file (cargo build --release)" % RINGLB)
    if args.baseline:
        if not os.access(args.baseline, os.X_OK):
            sys.exit("--baseline %s: not an executable file" % args.baseline)
        subjects.append("baseline")
    for s in subjects:
        if s == "haproxy" and not shutil.which(s):
            print("skipping haproxy: not installed")
    subjects = [s for s in subjects if s != "haproxy" or shutil.which(s)]
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("keepalive", "close") for m in modes):
        sys.exit("--modes: keepalive, close or both")
    tmp = tempfile.mkdtemp(prefix="ringlb-vs-peers-")
    atexit.register(shutil.rmtree, tmp, True)  # configs and logs of this run only
    # A leftover origin or proxy on these ports would answer (or share connections) in place of
    # the ones this run starts.
    require_free(*ORIGINS, *(PORTS[s] for s in subjects))
    origin = subprocess.Popen(["taskset", "-c", str(args.load_cpu), "nginx", "-c",
                               os.path.join(HERE, "origin-nginx.conf"), "-g", "daemon off;"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = {}
    results = {m: {s: {"rps": [], "cpu_us": [], "sys_us": [], "p50_ms": [], "p99_ms": [], "errors": 0}
                    for s in subjects} for m in modes}
    try:
        for o in ORIGINS:
            wait_port(int(o.rsplit(":", 1)[1]), origin)
        for s in subjects:
            procs[s] = start(s, tmp, args.proxy_cpu, args.baseline, args.defer_accept)
        for r in range(args.rounds):
            order = subjects[r % len(subjects):] + subjects[:r % len(subjects)]
            for m in modes:
                close = m == "close"
                conns = args.close_connections if close else args.connections
                for s in order:
                    wrk(PORTS[s], conns, 1, close, args.load_cpu)  # warm-up, not counted
                    u0, s0 = tree_cpu_split(procs[s].pid)
                    reqs, rps, p50, p99, errors = wrk(PORTS[s], conns, args.seconds, close, args.load_cpu)
                    u1, s1 = tree_cpu_split(procs[s].pid)
                    cell = results[m][s]
                    cell["rps"].append(rps)
                    cell["cpu_us"].append((u1 - u0 + s1 - s0) * 1e6 / max(reqs, 1))
                    cell["sys_us"].append((s1 - s0) * 1e6 / max(reqs, 1))
                    cell["p50_ms"].append(p50)
                    cell["p99_ms"].append(p99)
                    cell["errors"] += errors
                    print("round %d %-9s %-9s %9.0f req/s  %6.2f CPU us/req (kernel %5.2f)  p50 %.2f ms  p99 %.2f ms"
                          % (r + 1, m, s, rps, cell["cpu_us"][-1], cell["sys_us"][-1], p50, p99), flush=True)
    finally:
        for p in procs.values():
            stop(p)
        stop(origin)
    summary = {}
    print("\n| mode | subject | req/s | p50 ms | p99 ms | CPU us/req | kernel us/req | CPU vs best peer | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in modes:
        med = {s: {k: statistics.median(v[k]) for k in ("rps", "cpu_us", "sys_us", "p50_ms", "p99_ms")}
               for s, v in results[m].items() if v["rps"]}
        peers = [v["cpu_us"] for s, v in med.items() if s in ("haproxy", "nginx")]
        for s, v in med.items():
            ratio = "%.2f" % (v["cpu_us"] / min(peers)) if peers and s in ("ringlb", "baseline") else ""
            print("| %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %s | %d |"
                  % (m, s, v["rps"], v["p50_ms"], v["p99_ms"], v["cpu_us"], v["sys_us"], ratio,
                     results[m][s]["errors"]))
        summary[m] = {"medians": med, "rounds": results[m]}
    # Each round puts the subjects side by side within a minute, so the host's drift cancels out
    # of a per-round ratio: their median is steadier than the ratio of the medians above.
    for m in modes:
        for ours in ("ringlb", "baseline"):
            per = per_round_vs_best(results[m], ours)
            if per:
                print("%s %s CPU/req vs best peer, median of per-round ratios: %.2f (%s)"
                      % (m, ours, statistics.median(per), ", ".join("%.3f" % x for x in per)))
            # Its kernel time alone against the best peer's whole CPU, round by round: where
            # this reaches a target ratio, no change to ringlb's own code can meet the target.
            floor = per_round_vs_best(results[m], ours, key="sys_us")
            if floor:
                print("%s %s kernel time alone vs best peer's whole CPU, median of per-round ratios: %.2f (%s)"
                      % (m, ours, statistics.median(floor), ", ".join("%.3f" % x for x in floor)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
