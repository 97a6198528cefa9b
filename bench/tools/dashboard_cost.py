#!/usr/bin/env python3
"""The admin dashboard's cost on the request path (issue 18).

CPU us/req of a release ringlb (one pinned worker, CPU 0) under ringlb-bench keep-alive load
(64 connections, CPU 1), with and without a headless Chromium keeping the dashboard open
(pinned to CPU 1, the load's CPU). Alternating, N rounds, medians.

Usage (release build first: cargo build --release):
  bench/tools/dashboard_cost.py [ROUNDS] [DURATION]      e.g. bench/tools/dashboard_cost.py 5 10s
"""
import atexit, json, os, shutil, signal, statistics, subprocess, sys, threading, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import require_free  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RL, BENCH = f"{ROOT}/target/release/ringlb", f"{ROOT}/target/release/ringlb-bench"
import tempfile
HERE = tempfile.mkdtemp(prefix="ringlb-dashboard-cost-")
atexit.register(shutil.rmtree, HERE, True)  # config, browser profiles and load files of this run
with open(os.path.join(HERE, "ringlb.toml"), "w") as _f:
    _f.write("""[runtime]
workers = 1

[admin]
bind = "127.0.0.1:29901"

[[listener]]
name = "bench"
bind = "127.0.0.1:28080"
protocol = "http"
target_group = "origins"

[[target_group]]
name = "origins"
algorithm = "round_robin"
targets = ["127.0.0.1:29001", "127.0.0.1:29002"]
""")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DUR = sys.argv[2] if len(sys.argv) > 2 else "10s"
TICK = os.sysconf("SC_CLK_TCK")

def ticks(path):
    f = open(path).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

def comm(pid, tid):
    return open(f"/proc/{pid}/task/{tid}/comm").read().strip()

def cpu(pid):
    """(utime+stime ticks of the process, {thread name: CPU ns from schedstat})"""
    per = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
            per[comm(pid, tid)] = per.get(comm(pid, tid), 0) + ns
        except OSError:
            pass
    return ticks(f"/proc/{pid}/stat"), per

def group_cpu_ms(pgid):
    """utime+stime (ms) of the live processes of a process group (Chromium and its helpers)."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                if int(f[2]) == pgid:
                    total += int(f[11]) + int(f[12])
            except (OSError, IndexError, ValueError):
                pass
    return total * 1000 / TICK

def poller(stop):
    """What the page asks for, every second, without a browser."""
    seq = 0
    while not stop.wait(1.0):
        urllib.request.urlopen("http://127.0.0.1:29901/status").read()
        doc = json.load(urllib.request.urlopen(f"http://127.0.0.1:29901/series?after={seq}"))
        seq = doc["seq"]

procs = []
def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p

def main():
    # A process left on these ports from an earlier run would serve in place of these.
    require_free(28080, 29901, 29001, 29002)
    for port in (29001, 29002):
        start(["taskset", "-c", "1", BENCH, "backend", "--bind", f"127.0.0.1:{port}", "--cpus", "1"])
    rl = start(["taskset", "-c", "0", RL, "run", "--config", f"{HERE}/ringlb.toml"])
    time.sleep(1.5)
    urllib.request.urlopen("http://127.0.0.1:29901/status").read()
    modes = ["off", "on", "poll"]
    rows = {m: [] for m in modes}
    for r in range(ROUNDS):
        order = modes[r % 3:] + modes[:r % 3]
        for mode in order:
            chrome = None
            stop = threading.Event()
            if mode == "poll":
                threading.Thread(target=poller, args=(stop,), daemon=True).start()
                time.sleep(2)
            if mode == "on":
                chrome = subprocess.Popen(
                    ["taskset", "-c", "1", "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                     "--no-first-run", f"--user-data-dir={HERE}/profile-{r}",
                     "--remote-debugging-port=0", "http://127.0.0.1:29901/"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(4)  # page loaded and polling
            # warm-up, then the measured run
            subprocess.run(["taskset", "-c", "1", BENCH, "load", "http://127.0.0.1:28080/",
                            "-c", "64", "-t", "1", "-d", "1s"], capture_output=True)
            out = f"{HERE}/load-{r}-{mode}.json"
            c0, t0 = cpu(rl.pid)
            g0 = group_cpu_ms(chrome.pid) if chrome else 0
            subprocess.run(["taskset", "-c", "1", BENCH, "load", "http://127.0.0.1:28080/",
                            "-c", "64", "-t", "1", "-d", DUR, "--warmup", "0s", "--json", out],
                           capture_output=True, check=True)
            c1, t1 = cpu(rl.pid)
            g1 = group_cpu_ms(chrome.pid) if chrome else 0
            stop.set()
            if chrome:
                os.killpg(chrome.pid, signal.SIGTERM)
                chrome.wait()
            res = json.load(open(out))
            n = res["requests"]
            us = lambda a, b: (b - a) * 1e6 / TICK / n
            row = {"round": r + 1, "mode": mode, "rps": res["rps"], "requests": n,
                   "errors": res["errors"], "p99_ms": res["latency_us"]["p99"] / 1000,
                   "cpu_us_per_req": us(c0, c1),
                   "sched_us_per_req": sum(t1.values()) / 1e3 / n - sum(t0.values()) / 1e3 / n,
                   "worker_us_per_req": (t1["ringlb-w0"] - t0["ringlb-w0"]) / 1e3 / n,
                   "admin_ms_per_s": (t1["ringlb-admin"] - t0["ringlb-admin"]) / 1e6
                                     / float(DUR.rstrip("s")),
                   "chromium_ms_per_s": (g1 - g0) / float(DUR.rstrip("s"))}
            rows[mode].append(row)
            print(json.dumps(row), flush=True)
            time.sleep(1)
    for mode in modes:
        m = lambda k: statistics.median(x[k] for x in rows[mode])
        print(f"median {mode}: {m('rps'):,.0f} req/s, p99 {m('p99_ms'):.2f} ms, "
              f"process {m('cpu_us_per_req'):.2f} CPU µs/req (utime+stime), "
              f"{m('sched_us_per_req'):.3f} (schedstat), worker thread {m('worker_us_per_req'):.3f}, "
              f"admin thread {m('admin_ms_per_s'):.2f} ms/s, chromium {m('chromium_ms_per_s'):.1f} ms/s")

try:
    main()
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
