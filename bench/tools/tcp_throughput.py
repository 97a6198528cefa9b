#!/usr/bin/env python3
"""Bulk TCP throughput through a ringlb tcp listener, as a ratio of a direct loopback connection.

Starts `iperf3 -s` as the target and one ringlb per variant, each with a `protocol = "tcp"`
listener in front of it, then runs `iperf3 -c` alternately against the target directly and through
each variant, ROUNDS times, in both directions (upload: client -> target; download: -R). Prints one
line per run and, per variant and direction, the median ratio to the direct runs of the same round.

Variants: "default" (ringlb with the host's congestion control on every socket), "cc=NAME"
(ringlb's listener and target group set `congestion_control = "NAME"`; the client and target keep
the host default) and "haproxy" (HAProxy in tcp mode with `option splice-auto`, one thread, pinned
like ringlb). Needs iperf3 (apt-get install iperf3; haproxy for its variant) and a release build.

Usage: tcp_throughput.py [--rounds 5] [--seconds 5] [--variants default,cc=cubic]
                         [--proxy-cpu 0] [--load-cpu 1] [--ringlb target/release/ringlb]
  --proxy-cpu/--load-cpu pin ringlb and the iperf3 pair (pass "" to leave either unpinned).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BASE_PORT = 15300
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def taskset(cpu):
    return ["taskset", "-c", cpu] if cpu else []


def port_free(port):
    s = socket.socket()
    # As the servers bind: connections of an earlier run left in TIME_WAIT do not count.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def listening(port):
    """Whether a socket listens on `port` (any address, IPv4 or IPv6), read from /proc/net/tcp*:
    no connection is made, so iperf3 never sees a stray control connection."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in list(f)[1:]]
        except OSError:
            continue
        if any(r[1].endswith(suffix) and r[3] == "0A" for r in rows):
            return True
    return False


def wait_listening(port, proc, log, within=10.0):
    end = time.time() + within
    while time.time() < end:
        if proc.poll() is not None:
            with open(log) as f:
                tail = f.read()[-2000:]
            raise SystemExit(f"`{' '.join(proc.args)}` exited (status {proc.returncode}) "
                             f"before listening on {port}:\n{tail}")
        if listening(port):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {within:.0f}s (log: {log})")


def start(cmd, log):
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def config(listen, target, admin, cc):
    line = f'congestion_control = "{cc}"\n' if cc else ""
    return (
        "[runtime]\nworkers = 1\n\n"
        f'[admin]\nbind = "127.0.0.1:{admin}"\n\n'
        f'[[listener]]\nname = "bulk"\nbind = "127.0.0.1:{listen}"\nprotocol = "tcp"\n'
        f'target_group = "iperf"\n{line}\n'
        f'[[target_group]]\nname = "iperf"\nprotocol = "tcp"\ntargets = ["127.0.0.1:{target}"]\n{line}'
    )


def haproxy_config(listen, target):
    return (
        "global\n  nbthread 1\n  maxconn 1000\n\n"
        "defaults\n  mode tcp\n  option splice-auto\n  timeout connect 3s\n"
        "  timeout client 60s\n  timeout server 60s\n\n"
        f"frontend bulk\n  bind 127.0.0.1:{listen}\n  default_backend iperf\n\n"
        f"backend iperf\n  server target 127.0.0.1:{target}\n"
    )


def iperf(port, seconds, reverse, cpu):
    cmd = taskset(cpu) + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        cmd.append("-R")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout or "{}")
    except subprocess.TimeoutExpired:
        raise SystemExit(f"iperf3 -p {port} did not finish within {seconds + 30}s")
    except json.JSONDecodeError:
        raise SystemExit(f"iperf3 -p {port} printed no JSON: {out.stdout[-500:]}{out.stderr[-500:]}")
    if "error" in data or "end" not in data:
        raise SystemExit(f"iperf3 -p {port} failed: {data.get('error', out.stderr.strip())}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--variants", default="default,cc=cubic")
    ap.add_argument("--proxy-cpu", default="0")
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--ringlb", default=os.path.join(REPO, "target/release/ringlb"))
    a = ap.parse_args()
    if not shutil.which("iperf3"):
        raise SystemExit("iperf3 is not installed (apt-get install iperf3)")
    if not os.access(a.ringlb, os.X_OK):
        raise SystemExit(f"no ringlb binary at {a.ringlb}: run cargo build --release")
    # A stopped run must still stop what it started (the finally below).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _: sys.exit(128 + n))
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("default", "haproxy") and not v.startswith("cc="):
            raise SystemExit(f"unknown variant {v!r}: use default, cc=NAME or haproxy")
        if v == "haproxy" and not shutil.which("haproxy"):
            raise SystemExit("haproxy is not installed (apt-get install haproxy)")

    target = BASE_PORT
    busy = [p for p in range(BASE_PORT, BASE_PORT + 1 + 2 * len(variants)) if not port_free(p)]
    if busy:
        raise SystemExit(f"ports {busy} are in use (a previous run still going?): stop it first")
    procs = []
    tmp = tempfile.mkdtemp(prefix="ringlb-tcp-")
    try:
        log = os.path.join(tmp, "iperf3-s.log")
        procs.append(start(taskset(a.load_cpu) + ["iperf3", "-s", "-p", str(target)], log))
        wait_listening(target, procs[-1], log)
        ports = {}
        for i, v in enumerate(variants):
            listen, admin = BASE_PORT + 1 + 2 * i, BASE_PORT + 2 + 2 * i
            if v == "haproxy":
                path = os.path.join(tmp, f"{i}.cfg")
                with open(path, "w") as f:
                    f.write(haproxy_config(listen, target))
                cmd = ["haproxy", "-db", "-f", path]
            else:
                path = os.path.join(tmp, f"{i}.toml")
                with open(path, "w") as f:
                    f.write(config(listen, target, admin, v[3:] if v.startswith("cc=") else None))
                cmd = [a.ringlb, "run", "-c", path]
            log = os.path.join(tmp, f"{i}.log")
            procs.append(start(taskset(a.proxy_cpu) + cmd, log))
            wait_listening(listen, procs[-1], log)
            ports[v] = listen
        cc = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
        print(f"host congestion control {cc}; proxy cpu {a.proxy_cpu or '-'}, load cpu {a.load_cpu or '-'}; "
              f"{a.rounds} rounds of {a.seconds}s; Gbit/s")
        ratios = {(v, d): [] for v in variants for d in ("upload", "download")}
        for r in range(1, a.rounds + 1):
            for d in ("upload", "download"):
                direct = iperf(target, a.seconds, d == "download", a.load_cpu)
                line = [f"round {r} {d:8} direct {direct:6.2f}"]
                for v in variants:
                    x = iperf(ports[v], a.seconds, d == "download", a.load_cpu)
                    ratios[(v, d)].append(x / direct)
                    line.append(f"{v} {x:6.2f} ({x / direct:.2f})")
                print("  ".join(line), flush=True)
        for (v, d), rs in ratios.items():
            print(f"median ratio {v:12} {d:8} {statistics.median(rs):.2f}  "
                  f"(range {min(rs):.2f}-{max(rs):.2f})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
