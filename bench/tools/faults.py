#!/usr/bin/env python3
"""Fault-injection figures for ringlb: reloads under keep-alive load, a target that never
answers, pooled connections left behind by reloads, and SIGTERM under load.

Setup (every subcommand): ringlb with 2 workers pinned to --proxy-cpu (taskset; both workers on
that one CPU), nginx origins (`return 200`, one server block per target, each with its own
access log of `$msec` lines, buffered and read after nginx quits), wrk and any helper on
--load-cpu. The figures are counts (requests, errors, sockets, fds, RSS), not CPU: they hold on
a shared, noisy machine.

  reload     1. wrk -c32 -d20s keep-alive to 3 targets; at t=5 s the config loses target 3 and
                is reloaded (POST /reload, which answers once every worker has applied it).
                Counted: requests target 3 logged after that answer (requests in flight at the
                reload may finish there: at most ~32), and whether it left /status.
                Then a reload storm: 300 reloads (POST /reload every 100 ms) alternating the
                3-target config and one with a 4th target, under wrk -c32 for 30 s. Counted:
                requests the 4th target got (~1/8 of all would be its fair share: 1/4 of the
                traffic for half the time).
  blackhole  2. a target that accepts and never answers (a Python server that accepts and keeps
                the socket) + 2 nginx targets, response_timeout = "2s", no health check,
                passive_failures default; wrk -c32 -d30s --timeout 5s. Counted: requests,
                non-2xx (504s), req/s, connections the bad target accepted, its state in
                /status over time and at the end.
  leak       3. 1000 reloads by SIGHUP (each waits for ringlb's "configuration reloaded" log
                line before the next) alternating targets [o1,o2] and [o1,o3], no health check,
                twice: under light load (wrk -c8 with a 10 ms pause between requests), then
                under busy load (wrk -c8 closed loop: requests in flight at every reload). ringlb's
                sockets by state and peer, fds and VmRSS before, right after, and after a quiet
                settle (longer than ringlb's keepalive_timeout, 4 s, and nginx's, 5 s: any
                upstream socket still open then is one nobody owns; it shows as CLOSE_WAIT).
  drain      4. SIGTERM under wrk -c32 keep-alive load, --runs times: wrk runs 5 s, SIGTERM at
                3 s. wrk counts a refused reconnect as a write error, so a catcher joins the
                listener's SO_REUSEPORT group before the signal and holds every reconnect after
                the listener closed unanswered (counted apart). Lost requests = wrk read + write
                + timeout errors + non-2xx on connections to the proxy. The same for HAProxy's
                soft stop (SIGUSR1) for reference (--no-haproxy to skip).
  all        all four in turn.

Each prints its figures and a markdown row `| item | before | after |` (before = the figures of
the original report, against an older release).

Usage (release build first: cargo build --release --bin ringlb):
  bench/tools/faults.py all [--ringlb PATH] [--runs 3] [--proxy-cpu 0] [--load-cpu 1]
  bench/tools/faults.py reload|blackhole|leak|drain [--reloads 1000] [--keep DIR] [--verbose]
Ports 19800-19815 on 127.0.0.1.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import require_free  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
NGINX = "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

PORT = 19800          # ringlb's (or HAProxy's) listener
ADMIN = 19809
ORIGINS = [19801, 19802, 19803, 19804]
BLACKHOLE = 19805

BEFORE = {
    "reload": "310,442 requests to target 3 after its removal (1/3); storm: new target got 0 in 30 s",
    "blackhole": "stayed healthy 30 s; 480 × 504, 50 req/s",
    "leak": "~1 orphaned pooled conn per 130–200 reloads (CLOSE_WAIT)",
    "drain": "6, 16, 0 lost (read errors); HAProxy 0",
}

A = None  # parsed arguments


# ---------------------------------------------------------------- processes and helpers

class Lab:
    """A temporary folder, a log file, and every process started, stopped in reverse order."""

    def __init__(self, name):
        self.tmp = tempfile.mkdtemp(prefix="ringlb-faults-%s-" % name)
        os.chmod(self.tmp, 0o755)  # nginx workers run as nobody
        self.log = open(os.path.join(self.tmp, "log"), "w")
        self.procs = []

    def start(self, cmd, cpu, out=None):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=out or self.log,
                             stderr=subprocess.STDOUT if out else self.log, start_new_session=True)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            stop(p)
        self.log.close()
        if A.keep:
            dst = os.path.join(A.keep, os.path.basename(self.tmp))
            shutil.copytree(self.tmp, dst, dirs_exist_ok=True)
            print("kept", dst)
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop(p, sig=signal.SIGTERM, wait=10):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        p.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


def write_atomic(path, text):
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


def nginx_conf(lab, ports, keepalive="75s"):
    servers = "".join(
        "  server { listen 127.0.0.1:%d backlog=4096; access_log %s/o%d.log t buffer=256k flush=1s;"
        " location / { return 200 \"ok\\n\"; } }\n" % (port, lab.tmp, port)
        for port in ports)
    conf = os.path.join(lab.tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""worker_processes 1;
error_log %s/nginx-error.log crit;
pid %s/nginx.pid;
events { worker_connections 8192; multi_accept on; }
http {
  log_format t '$msec';
  keepalive_requests 1000000;
  keepalive_timeout %s;
%s}
""" % (lab.tmp, lab.tmp, keepalive, servers))
    return conf


def start_nginx(lab, ports, keepalive="75s"):
    conf = nginx_conf(lab, ports, keepalive)
    p = lab.start([NGINX, "-p", lab.tmp, "-c", conf, "-g", "daemon off;"], A.load_cpu)
    for port in ports:
        wait_port(port)
    return p


def quit_nginx(p):
    """Graceful quit: flushes the buffered access logs."""
    stop(p, signal.SIGQUIT, wait=15)


def log_times(lab, port):
    try:
        with open(os.path.join(lab.tmp, "o%d.log" % port)) as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def ringlb_conf(targets, extra=""):
    return """[runtime]
workers = 2
drain_timeout = "10s"
[admin]
bind = "127.0.0.1:%d"
[[listener]]
name = "web"
bind = "127.0.0.1:%d"
protocol = "http"
target_group = "app"
[[target_group]]
name = "app"
targets = [%s]
%s""" % (ADMIN, PORT, ", ".join('"127.0.0.1:%d"' % t for t in targets), extra)


def start_ringlb(lab, text, name="ringlb"):
    path = os.path.join(lab.tmp, "ringlb.toml")
    write_atomic(path, text)
    out = open(os.path.join(lab.tmp, name + ".err"), "w")
    p = lab.start([A.ringlb, "run", "--config", path], A.proxy_cpu, out=out)
    wait_port(PORT)
    wait_port(ADMIN)
    time.sleep(0.3)
    return p, path


def admin(method, path, timeout=10):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (ADMIN, path), method=method,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def status_targets():
    st = admin("GET", "/status")
    return {t["address"]: t for g in st["target_groups"] for t in g["targets"]}


def wrk(seconds, conns=32, threads=2, timeout="5s", script=None):
    cmd = ["taskset", "-c", str(A.load_cpu), "wrk", "-t%d" % threads, "-c%d" % conns,
           "-d%ds" % seconds, "--timeout", timeout]
    if script:
        cmd += ["-s", script]
    return subprocess.Popen(cmd + ["http://127.0.0.1:%d/" % PORT], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wrk_result(p):
    out = p.communicate()[0]
    r = {"requests": 0, "non2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0,
         "rps": 0.0, "out": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["connect"], r["read"], r["write"], r["timeout"] = (int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    if A.verbose:
        print(out)
    return r


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def proc_sockets(pid):
    """(fd count, [(local port, remote port, state)]) of the process's TCP sockets."""
    inodes = set()
    fds = os.listdir("/proc/%d/fd" % pid)
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    socks = []
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[9] in inodes:
                socks.append((int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16),
                              TCP_STATES.get(parts[3], parts[3])))
    return len(fds), socks


def snapshot(pid, label):
    nfd, socks = proc_sockets(pid)
    up = {}
    for _l, r, st in socks:
        if r in ORIGINS:
            up.setdefault(r, {}).setdefault(st, 0)
            up[r][st] += 1
    close_wait = sum(1 for s in socks if s[2] == "CLOSE_WAIT")
    snap = {"label": label, "fds": nfd, "rss_kib": rss_kib(pid), "close_wait": close_wait,
            "upstream": up, "tcp": len(socks)}
    print("  %-14s fds %4d  VmRSS %6d KiB  tcp sockets %4d  CLOSE_WAIT %3d  upstream by port %s"
          % (label, nfd, snap["rss_kib"], len(socks), close_wait,
             json.dumps({str(k): v for k, v in sorted(up.items())})), flush=True)
    return snap


def row(item, after):
    line = "| %s | %s | %s |" % (item, BEFORE[item], after)
    print("\n| item | before | after |\n|---|---|---|\n" + line + "\n", flush=True)
    return line


# ---------------------------------------------------------------- 1. reload under keep-alive

def item_reload():
    print("== 1. reload: keep-alive clients and removed / added targets", flush=True)
    lab = Lab("reload")
    o1, o2, o3, o4 = ORIGINS
    try:
        ng = start_nginx(lab, ORIGINS)
        rl, path = start_ringlb(lab, ringlb_conf([o1, o2, o3]))
        # Part 1: removal at t=5 s of a 20 s run.
        t0 = time.time()
        w = wrk(20)
        time.sleep(5.0 - (time.time() - t0))
        write_atomic(path, ringlb_conf([o1, o2]))
        t_sent = time.time()
        ans = admin("POST", "/reload")
        t_rel = time.time()
        listed = sorted(status_targets())
        r1 = wrk_result(w)
        t_end1 = time.time()
        # Part 2: the storm, on the same ringlb (now at [o1, o2]); back to 3 targets first.
        write_atomic(path, ringlb_conf([o1, o2, o3]))
        admin("POST", "/reload")
        time.sleep(0.5)
        n_storm = 300
        w = wrk(31)
        s0 = time.time() + 0.5
        present = 0.0
        with_4 = False
        last = None
        for i in range(n_storm):
            at = s0 + i * 0.1
            time.sleep(max(0.0, at - time.time()))
            with_4 = i % 2 == 0
            write_atomic(path, ringlb_conf([o1, o2, o3, o4] if with_4 else [o1, o2, o3]))
            admin("POST", "/reload")
            now = time.time()
            if last is not None and not with_4:
                present += now - last
            last = now if with_4 else None
        s_end = time.time()
        r2 = wrk_result(w)
        quit_nginx(ng)
        t3 = [t for t in log_times(lab, o3) if t <= t_end1]  # part 2 adds it back
        after = [t for t in t3 if t > t_rel]
        after_sent = [t for t in t3 if t > t_sent]
        late = [t for t in t3 if t > t_rel + 0.1]
        per = {o: len(log_times(lab, o)) for o in ORIGINS}
        t4 = log_times(lab, o4)
        t4_storm = [t for t in t4 if s0 - 1 <= t <= s_end + 1]
        all_storm = sum(1 for o in ORIGINS for t in log_times(lab, o) if s0 <= t <= s_end)
    finally:
        lab.close()
    print("  removal run: wrk %d requests, %d non-2xx, socket errors c/r/w/t %d/%d/%d/%d, "
          "%.0f req/s" % (r1["requests"], r1["non2xx"], r1["connect"], r1["read"], r1["write"],
                          r1["timeout"], r1["rps"]))
    print("  POST /reload took %.1f ms, answered %s" % ((t_rel - t_sent) * 1e3, json.dumps(ans)))
    print("  /status after the reload lists: %s" % listed)
    print("  target 3 (127.0.0.1:%d): %d requests in all; %d logged after POST /reload was sent, "
          "%d after its answer, %d later than 100 ms after it; last at +%.3f s"
          % (o3, len(t3), len(after_sent), len(after), len(late),
             (max(t3) - t_rel) if t3 else float("nan")))
    print("  requests by target over both parts: %s" % per)
    print("  storm: %d reloads in %.1f s; wrk %d requests, %d non-2xx, socket errors c/r/w/t "
          "%d/%d/%d/%d" % (n_storm, s_end - s0, r2["requests"], r2["non2xx"], r2["connect"],
                           r2["read"], r2["write"], r2["timeout"]))
    share = 100.0 * len(t4_storm) / max(1, all_storm)
    print("  storm: 4th target got %d requests of %d logged (%.1f%%; fair share about %.1f%%: "
          "1/4 while present, present %.1f of %.1f s)"
          % (len(t4_storm), all_storm, share, 25.0 * present / max(0.001, s_end - s0), present,
             s_end - s0), flush=True)
    return row("reload", "%d requests to target 3 after the reload answer (%d > 100 ms after), "
               "left /status: %s; storm: new target got %s of %s (%.1f%%)"
               % (len(after), len(late), "yes" if "127.0.0.1:%d" % o3 not in listed else "NO",
                  "{:,}".format(len(t4_storm)), "{:,}".format(all_storm), share))


# ---------------------------------------------------------------- 2. a target that never answers

HOLD_SRC = r"""
import os, signal, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sys.argv[3] == "1":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
print("ready", flush=True)
held = []
def bye(*_):
    with open(sys.argv[2], "w") as f: f.write(str(len(held)))
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
while True:
    c, _ = s.accept()
    held.append(c)          # accepted, never read, never answered
"""


def item_blackhole():
    print("== 2. blackhole: a target that accepts and never answers", flush=True)
    lab = Lab("blackhole")
    o1, o2 = ORIGINS[:2]
    try:
        ng = start_nginx(lab, [o1, o2])
        count_file = os.path.join(lab.tmp, "blackhole.count")
        bh = lab.start([sys.executable, "-c", HOLD_SRC, str(BLACKHOLE), count_file, "0"],
                       A.load_cpu)
        wait_port(BLACKHOLE)
        bad = "127.0.0.1:%d" % BLACKHOLE
        # The probe above was one accepted connection; subtract it.
        rl, _ = start_ringlb(lab, ringlb_conf([o1, BLACKHOLE, o2], 'response_timeout = "2s"\n'))
        timeline = []
        done = threading.Event()

        def poll():
            t0 = time.time()
            while not done.is_set():
                try:
                    timeline.append((time.time() - t0, status_targets()[bad]["state"]))
                except Exception as e:  # noqa: BLE001 - keep polling
                    timeline.append((time.time() - t0, "?%s" % e))
                done.wait(0.5)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        w = wrk(30, timeout="5s")
        r = wrk_result(w)
        done.set()
        th.join()
        final = status_targets()[bad]
        stop(bh)
        accepted = int(open(count_file).read()) - 1 if os.path.exists(count_file) else -1
        quit_nginx(ng)
    finally:
        lab.close()
    trans = []
    for t, st in timeline:
        if not trans or trans[-1][1] != st:
            trans.append((t, st))
    unhealthy = sum(1 for _t, st in timeline if st != "healthy")
    print("  wrk: %d requests, %d non-2xx, socket errors c/r/w/t %d/%d/%d/%d, %.1f req/s"
          % (r["requests"], r["non2xx"], r["connect"], r["read"], r["write"], r["timeout"],
             r["rps"]))
    print("  connections the bad target accepted: %d" % accepted)
    print("  its state over the run (s, state): %s" % ", ".join("%.1f %s" % x for x in trans))
    print("  not healthy in %d of %d polls; at the end: %s (%s), requests %s"
          % (unhealthy, len(timeline), final["state"], final.get("reason"), final.get("requests")))
    return row("blackhole", "%s requests, %d non-2xx (504), %.0f req/s; bad target accepted %d "
               "connections, ejected at %s s, state at the end: %s"
               % ("{:,}".format(r["requests"]), r["non2xx"], r["rps"], accepted,
                  next(("%.1f" % t for t, st in trans if st == "unhealthy"), "never"),
                  final["state"]))


# ---------------------------------------------------------------- 3. pooled connections leak

def leak_phase(load):
    """One fresh nginx + ringlb; `load` is "light" (wrk -c8, 10 ms pause between requests) or
    "busy" (wrk -c8 closed loop: requests are always in flight when a reload lands)."""
    n = A.reloads
    print("-- %s load" % load, flush=True)
    lab = Lab("leak-" + load)
    o1, o2, o3 = ORIGINS[:3]
    try:
        # nginx closes idle keep-alive connections after 5 s, ringlb its pooled ones after 4 s
        # (keepalive_timeout default): after a quiet settle of 8 s, any upstream socket ringlb
        # still has is one no pool owns, and nginx's close leaves it in CLOSE_WAIT.
        ng = start_nginx(lab, [o1, o2, o3], keepalive="5s")
        rl, path = start_ringlb(lab, ringlb_conf([o1, o2]))
        errf = os.path.join(lab.tmp, "ringlb.err")
        lua = None
        if load == "light":
            lua = os.path.join(lab.tmp, "light.lua")
            with open(lua, "w") as f:
                f.write("function delay()\n  return 10\nend\n")
        idle = snapshot(rl.pid, "idle at start")
        w = wrk(600, conns=8, threads=1, script=lua)
        time.sleep(2.0)
        snaps = [snapshot(rl.pid, "under load")]
        t0 = time.time()
        missed = 0
        for i in range(n):
            write_atomic(path, ringlb_conf([o1, o3] if i % 2 == 0 else [o1, o2]))
            before = open(errf).read().count("configuration reloaded")
            os.kill(rl.pid, signal.SIGHUP)
            end = time.time() + 3.0
            while open(errf).read().count("configuration reloaded") <= before:
                if time.time() > end:
                    missed += 1
                    break
                time.sleep(0.002)
            time.sleep(0.02)  # let some requests through between reloads
            if (i + 1) % 250 == 0:
                print("  %d reloads, %.1f s" % (i + 1, time.time() - t0), flush=True)
        took = time.time() - t0
        snaps.append(snapshot(rl.pid, "after reloads"))
        os.kill(w.pid, signal.SIGINT)
        r = wrk_result(w)
        time.sleep(1.0)
        snaps.append(snapshot(rl.pid, "load stopped"))
        time.sleep(8.0)
        snaps.append(snapshot(rl.pid, "settled 8 s"))
        log = open(errf).read()
        reloaded = log.count("configuration reloaded")
        refused = log.count("reload refused")
        current = [o1, o3] if (n - 1) % 2 == 0 else [o1, o2]
        quit_nginx(ng)
    finally:
        lab.close()
    last = snaps[-1]
    stale = sum(sum(v.values()) for p, v in last["upstream"].items())
    print("  %d reloads in %.1f s (%d logged as applied, %d refused, %d not acknowledged)"
          % (n, took, reloaded, refused, missed))
    print("  %s load: %d requests, %d non-2xx, socket errors c/r/w/t %d/%d/%d/%d"
          % (load, r["requests"], r["non2xx"], r["connect"], r["read"], r["write"], r["timeout"]))
    print("  after the settle: %d upstream sockets left (config now %s), %d in CLOSE_WAIT; "
          "idle fds %d -> %d, VmRSS %d -> %d KiB" % (stale, current, last["close_wait"],
                                                    idle["fds"], last["fds"], idle["rss_kib"],
                                                    last["rss_kib"]), flush=True)
    return ("%s load (%s req): %d CLOSE_WAIT, %d upstream sockets left after 8 s quiet; "
            "fds idle %d → %d (under load %d → %d right after the reloads); "
            "VmRSS idle %.1f → %.1f MiB (under load %.1f)"
            % (load, "{:,}".format(r["requests"]), last["close_wait"], stale, idle["fds"],
               last["fds"], snaps[0]["fds"], snaps[1]["fds"], idle["rss_kib"] / 1024,
               last["rss_kib"] / 1024, snaps[0]["rss_kib"] / 1024))


def item_leak():
    print("== 3. leak: %d SIGHUP reloads alternating target sets, no health check"
          % A.reloads, flush=True)
    parts = [leak_phase(load) for load in ("light", "busy")]
    return row("leak", "%d reloads each; " % A.reloads + "; ".join(parts))


# ---------------------------------------------------------------- 4. SIGTERM under load

def haproxy_conf(lab):
    path = os.path.join(lab.tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write("""global
  nbthread 2
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend web
  bind 127.0.0.1:%d
  default_backend app
backend app
  balance roundrobin
  http-reuse safe
%s""" % (PORT, "".join("  server o%d 127.0.0.1:%d\n" % (i, p)
                       for i, p in enumerate(ORIGINS[:3]))))
    return path


def drain_run(lab, subject, k):
    """One run. wrk counts a refused reconnect as a *write* error (its connect is non-blocking),
    so refusals after the listener closed would drown the requests lost mid-flight. A catcher
    joins the listener's SO_REUSEPORT group 0.5 s before the signal: once the proxy's listening
    sockets are gone it takes every reconnect and holds it unanswered (wrk's --timeout 5s is
    longer than what is left of the run, so a held request is no error). What wrk then reports
    as read/write/timeout errors and non-2xx are requests on connections to the proxy; the
    connections the catcher took are the reconnects after shutdown."""
    name = "%s-%d" % (subject, k)
    if subject == "ringlb":
        p, _ = start_ringlb(lab, ringlb_conf(ORIGINS[:3]), name=name)
        sig = signal.SIGTERM
    else:
        out = open(os.path.join(lab.tmp, name + ".err"), "w")
        p = lab.start([HAPROXY, "-f", haproxy_conf(lab)], A.proxy_cpu, out=out)
        wait_port(PORT)
        time.sleep(0.3)
        sig = signal.SIGUSR1
    count_file = os.path.join(lab.tmp, name + ".caught")
    t0 = time.time()
    w = wrk(5)
    time.sleep(2.5 - (time.time() - t0))
    catcher = subprocess.Popen(["taskset", "-c", str(A.load_cpu), sys.executable, "-c", HOLD_SRC,
                                str(PORT), count_file, "1"], stdout=subprocess.PIPE, text=True,
                               stderr=lab.log, start_new_session=True)
    lab.procs.append(catcher)
    if catcher.stdout.readline().strip() != "ready":
        raise RuntimeError("the catcher could not join port %d's SO_REUSEPORT group" % PORT)
    time.sleep(max(0.0, 3.0 - (time.time() - t0)))
    t_sig = time.time()
    os.kill(p.pid, sig)
    try:
        p.wait(timeout=15)
        exit_s = time.time() - t_sig
    except subprocess.TimeoutExpired:
        exit_s = float("nan")
    r = wrk_result(w)
    if p.poll() is None:
        stop(p)
    stop(catcher)
    try:
        caught = int(open(count_file).read())
    except (OSError, ValueError):
        caught = -1
    r["caught"] = caught
    lost = r["read"] + r["write"] + r["timeout"] + r["non2xx"]
    print("  %-7s run %d: %8d requests, lost %d (read %d, write %d, timeout %d, non-2xx %d, "
          "connect %d); reconnects after shutdown (caught) %d; exit code %s %.2f s after the "
          "signal" % (subject, k, r["requests"], lost, r["read"], r["write"], r["timeout"],
                      r["non2xx"], r["connect"], caught, p.returncode, exit_s), flush=True)
    return lost, r, exit_s


def item_drain():
    print("== 4. drain: SIGTERM under wrk -c32 keep-alive load (signal at 3 s of 5 s)", flush=True)
    lab = Lab("drain")
    res = {"ringlb": [], "haproxy": []}
    subjects = ["ringlb"] + ([] if A.no_haproxy or not os.path.exists(HAPROXY) else ["haproxy"])
    try:
        ng = start_nginx(lab, ORIGINS[:3])
        for k in range(A.runs):
            for s in subjects:
                res[s].append(drain_run(lab, s, k + 1))
                time.sleep(0.5)
        quit_nginx(ng)
    finally:
        lab.close()
    after = "ringlb lost %s" % ", ".join(str(x[0]) for x in res["ringlb"])
    after += " (reconnects after shutdown %s)" % ", ".join(
        str(x[1]["caught"]) for x in res["ringlb"])
    if res["haproxy"]:
        after += "; HAProxy SIGUSR1 lost %s" % ", ".join(str(x[0]) for x in res["haproxy"])
    return row("drain", after)


# ---------------------------------------------------------------- main

ITEMS = {"reload": item_reload, "blackhole": item_blackhole, "leak": item_leak,
         "drain": item_drain}


def main():
    global A
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("item", choices=list(ITEMS) + ["all"])
    ap.add_argument("--ringlb", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="drain: runs per subject")
    ap.add_argument("--reloads", type=int, default=1000, help="leak: SIGHUP reloads")
    ap.add_argument("--no-haproxy", action="store_true", help="drain: skip HAProxy")
    ap.add_argument("--keep", help="copy each run's folder (configs, logs) here")
    ap.add_argument("--verbose", action="store_true", help="print wrk's output")
    A = ap.parse_args()
    if not os.path.exists(A.ringlb):
        sys.exit("build first: cargo build --release --bin ringlb")
    # A process left on these ports from an earlier run would answer in place of the ones
    # started here (or, through SO_REUSEPORT, share their connections), and skew the counts.
    require_free(PORT, ADMIN, BLACKHOLE, *ORIGINS)
    print("ringlb: %s" % A.ringlb)
    rows = []
    for name in (list(ITEMS) if A.item == "all" else [A.item]):
        rows.append(ITEMS[name]())
    if len(rows) > 1:
        print("| item | before | after |\n|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
