#!/usr/bin/env python3
"""Runs one proxy under wrk, in vs-peers.py's layout, and a measuring command in the middle of
the load: for profiles and counters of one subject at a time (perf record, perf stat, nstat).

The proxy (ringlb, haproxy or nginx, with vs-peers.py's configs) runs one worker pinned to
--proxy-cpu in front of two nginx origins (bench/peers/origin-nginx.conf) on --load-cpu, where
wrk runs too. After a 1 s warm-up, wrk runs --seconds; --delay seconds in, the command after
`--` runs, and the script waits for it. PID in the command stands for the process that serves:
ringlb's or HAProxy's pid, nginx's worker (not its master). At the end it
prints the requests, the requests/s, and the proxy's CPU per request split into user space and
kernel (/proc), so the command's counts can be divided by the requests of its own window
(requests/s times its duration).

Examples (release build first; cargo build --release, or bench/tools/pgo.sh):
  bench/tools/under_load.py nginx -- perf stat -C 0 -e raw_syscalls:sys_enter,context-switches sleep 4
  bench/tools/under_load.py ringlb --ringlb target/pgo/release/ringlb -- \\
      perf record -g -e cpu-clock -C 0 -o ringlb.data sleep 4
  bench/tools/under_load.py haproxy --keepalive --connections 64 -- nstat ...
"""
import argparse
import atexit
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from proclib import wait_port, stop, tree_cpu_split, require_free  # noqa: E402


def vs_peers():
    """bench/peers/vs-peers.py as a module (its configs and its start/wrk helpers)."""
    spec = importlib.util.spec_from_file_location("vs_peers", os.path.join(ROOT, "bench", "peers", "vs-peers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def serving_pid(subject, pid):
    """The process that serves the load: nginx's (single) worker rather than its master."""
    if subject != "nginx":
        return pid
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else pid


def main():
    argv = sys.argv[1:]
    command = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s {ringlb,haproxy,nginx} [options] [-- COMMAND ...]")
    ap.add_argument("subject", choices=("ringlb", "haproxy", "nginx"))
    ap.add_argument("--ringlb", metavar="BINARY", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--keepalive", action="store_true", help="keep-alive (default: Connection: close)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--delay", type=float, default=2.0, help="seconds into the load before the command")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--defer-accept", action="store_true")
    args = ap.parse_args(argv)
    if command and args.delay >= args.seconds:
        sys.exit("--delay %.1f must leave the command inside the %d s of load" % (args.delay, args.seconds))
    for tool in ("wrk", "nginx") + (("haproxy",) if args.subject == "haproxy" else ()):
        if not shutil.which(tool):
            sys.exit("%s is needed (apt-get install %s)" % (tool, tool))
    if args.subject == "ringlb" and not os.access(args.ringlb, os.X_OK):
        sys.exit("--ringlb %s: not an executable file (cargo build --release)" % args.ringlb)
    vp = vs_peers()
    vp.RINGLB = args.ringlb
    port = vp.PORTS[args.subject]
    require_free(*vp.ORIGINS, port)
    tmp = tempfile.mkdtemp(prefix="ringlb-under-load-")
    atexit.register(shutil.rmtree, tmp, True)
    origin = subprocess.Popen(["taskset", "-c", str(args.load_cpu), "nginx", "-c",
                               os.path.join(ROOT, "bench", "peers", "origin-nginx.conf"), "-g", "daemon off;"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = load = None
    try:
        for o in vp.ORIGINS:
            wait_port(int(o.rsplit(":", 1)[1]), origin)
        proxy = vp.start(args.subject, tmp, args.proxy_cpu, None, args.defer_accept)
        close = not args.keepalive
        vp.wrk(port, args.connections, 1, close, args.load_cpu)  # warm-up
        u0, s0 = tree_cpu_split(proxy.pid)
        cmd = ["taskset", "-c", str(args.load_cpu), "wrk", "-t1", "-c%d" % args.connections,
               "-d%ds" % args.seconds]
        if close:
            cmd += ["-H", "Connection: close"]
        load = subprocess.Popen(cmd + ["http://127.0.0.1:%d/" % port], stdout=subprocess.PIPE, text=True)
        if command:
            time.sleep(args.delay)
            serving = serving_pid(args.subject, proxy.pid)
            started = time.time()
            rc = subprocess.run([a.replace("PID", str(serving)) for a in command]).returncode
            if rc != 0:
                print("warning: the command exited with status %d" % rc, file=sys.stderr)
            if load.poll() is not None or args.delay + time.time() - started > args.seconds:
                print("warning: the command outlasted the load; its counts include an idle proxy",
                      file=sys.stderr)
        out = load.communicate()[0]
        load = None
        u1, s1 = tree_cpu_split(proxy.pid)
        reqs = re.search(r"(\d+) requests in", out)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not (reqs and rps):
            sys.exit("wrk output not understood:\n" + out)
        n = max(int(reqs.group(1)), 1)
        print("%s: %d requests, %s requests/s, CPU %.2f us/req (user %.2f, kernel %.2f)"
              % (args.subject, n, rps.group(1), (u1 - u0 + s1 - s0) * 1e6 / n, (u1 - u0) * 1e6 / n,
                 (s1 - s0) * 1e6 / n))
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if proxy:
            stop(proxy)
        stop(origin)


if __name__ == "__main__":
    main()
