#!/usr/bin/env python3
"""Binary upgrade (SIGUSR2) under load: what clients see across the switch, against a window
without one.

Setup as bench/tools/faults.py (its helpers): ringlb with 2 workers pinned to --proxy-cpu, three
nginx origins (`return 200`) and wrk on --load-cpu. Each round runs two windows of --seconds,
in turn:

  steady    wrk -c32 keep-alive (--latency) and wrk -c8 with `Connection: close` (a new
            connection per request: a refused SYN would show as a connect/write error);
  upgrade   the same, with SIGUSR2 to the serving process at 1/3 of the window: it starts the
            binary again (same path, same arguments), hands it the listening sockets, and drains
            once the new process serves.

Per window: requests, errors (wrk's connect/read/write/timeout + non-2xx) and wrk's p99 for each
wrk; for the upgrade window also the time from the signal to the new PID answering /status and
to the old process's exit. Medians over --rounds. Counts and latency, not CPU: they hold on a
shared machine.

Usage (release build first: cargo build --release --bin ringlb):
  bench/tools/upgrade.py [--rounds 3] [--seconds 6] [--ringlb PATH] [--proxy-cpu 0] [--load-cpu 1]
Ports 19800-19809 on 127.0.0.1.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402  (the shared lab helpers)
from faults import ORIGINS, PORT  # noqa: E402


def p99_ms(out):
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def window(seconds, upgrade_pid=None):
    """One window; with `upgrade_pid`, SIGUSR2 it at a third of the way."""
    keep = wrk(seconds, 32, [])
    close = wrk(seconds, 8, ["-H", "Connection: close"])
    t0 = time.time()
    switch = {}
    if upgrade_pid:
        time.sleep(seconds / 3)
        t_sig = time.time()
        os.kill(upgrade_pid, signal.SIGUSR2)
        new = upgrade_pid
        while new == upgrade_pid and time.time() - t_sig < 10:
            try:
                new = faults.admin("GET", "/status")["pid"]
            except OSError:
                pass
            if new == upgrade_pid:
                time.sleep(0.005)
        switch["serving_s"] = time.time() - t_sig
        while alive(upgrade_pid) and time.time() - t_sig < 30:
            time.sleep(0.005)
        switch["old_exit_s"] = time.time() - t_sig
        switch["new_pid"] = new
    time.sleep(max(0.0, seconds - (time.time() - t0)))
    rk, rc = faults.wrk_result(keep), faults.wrk_result(close)
    res = {}
    for name, r in (("keepalive", rk), ("close", rc)):
        res[name] = {
            "requests": r["requests"],
            "errors": r["connect"] + r["read"] + r["write"] + r["timeout"] + r["non2xx"],
            "p99_ms": p99_ms(r["out"]),
        }
    res["switch"] = switch
    return res


def wrk(seconds, conns, extra):
    cmd = ["taskset", "-c", str(faults.A.load_cpu), "wrk", "-t1", "-c%d" % conns,
           "-d%ds" % seconds, "--timeout", "5s", "--latency"] + extra
    return subprocess.Popen(cmd + ["http://127.0.0.1:%d/" % PORT], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def alive(pid):
    """Running and not a zombie (an orphan's zombie may linger unreaped in a container)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def line(label, w):
    k, c = w["keepalive"], w["close"]
    s = w["switch"]
    extra = ""
    if s:
        extra = "; new PID serving %.0f ms after the signal, old exited after %.2f s" % (
            s["serving_s"] * 1000, s["old_exit_s"])
    print("  %-8s keep-alive %7d req, %d errors, p99 %.2f ms | close %6d req, %d errors, "
          "p99 %.2f ms%s" % (label, k["requests"], k["errors"], k["p99_ms"], c["requests"],
                             c["errors"], c["p99_ms"], extra), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ringlb", default=os.path.join(faults.ROOT, "target", "release", "ringlb"))
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--keep", help="copy the run's folder (configs, logs) here")
    ap.add_argument("--verbose", action="store_true", help="print wrk's output")
    faults.A = A = ap.parse_args()
    if not os.path.exists(A.ringlb):
        sys.exit("build first: cargo build --release --bin ringlb")
    # A process left on these ports from an earlier run would answer in place of the ones
    # started here (or, through SO_REUSEPORT, share their connections), and skew the counts.
    faults.require_free(PORT, faults.ADMIN, *ORIGINS)
    print("ringlb: %s; %d rounds of two %d s windows" % (A.ringlb, A.rounds, A.seconds))
    lab = faults.Lab("upgrade")
    results = {"steady": [], "upgrade": []}
    pid = None
    try:
        ng = faults.start_nginx(lab, ORIGINS[:3])
        first, _ = faults.start_ringlb(lab, faults.ringlb_conf(ORIGINS[:3]))
        pid = first.pid
        for k in range(A.rounds):
            print("round %d" % (k + 1), flush=True)
            w = window(A.seconds)
            line("steady", w)
            results["steady"].append(w)
            w = window(A.seconds, upgrade_pid=pid)
            line("upgrade", w)
            results["upgrade"].append(w)
            if pid == first.pid:
                first.wait(timeout=30)  # reap the one this script started
            pid = w["switch"]["new_pid"]
        faults.quit_nginx(ng)
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            end = time.time() + 15
            while alive(pid) and time.time() < end:
                time.sleep(0.05)
        lab.close()

    def med(kind, conn, key):
        return statistics.median(w[conn][key] for w in results[kind])

    print("\n| window | keep-alive req | errors | p99 ms | close req | errors | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in ("steady", "upgrade"):
        errs_k = [w["keepalive"]["errors"] for w in results[kind]]
        errs_c = [w["close"]["errors"] for w in results[kind]]
        print("| %s (median of %d) | %d | %s | %.2f | %d | %s | %.2f |" % (
            kind, A.rounds, med(kind, "keepalive", "requests"), ", ".join(map(str, errs_k)),
            med(kind, "keepalive", "p99_ms"), med(kind, "close", "requests"),
            ", ".join(map(str, errs_c)), med(kind, "close", "p99_ms")))
    sw = [w["switch"] for w in results["upgrade"]]
    print("\nnew process serving after %s ms; old process exited after %s s" % (
        ", ".join("%.0f" % (s["serving_s"] * 1000) for s in sw),
        ", ".join("%.2f" % s["old_exit_s"] for s in sw)))


if __name__ == "__main__":
    main()
