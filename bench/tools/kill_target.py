#!/usr/bin/env python3
"""Client-visible errors when a target dies under load: one of three origins is SIGKILLed in the
middle of a GET load and restarted a few seconds later, behind each subject in turn.

Subjects (each proxy one worker/thread pinned to --proxy-cpu; the load and the three origins,
`ringlb-bench backend`, pinned to --load-cpu):
  ringlb-reset    ringlb, retry_on = ["connect-failure", "reset"], passive_failures default (5),
                  no health check (a passively ejected target is probed back by tcp connect)
  ringlb-default  ringlb, retry_on left at its default (["connect-failure"])
  haproxy         HAProxy, `retry-on all-retryable-errors`, `option redispatch`, `retries 2`,
                  `balance roundrobin`, no `check` on the servers (retries only, as ringlb here)

Each run uses fresh origins and a fresh proxy: the load starts (closed loop, keep-alive, GET /),
at --kill-at seconds the victim origin gets SIGKILL (requests in flight on it fail with a reset
or an EOF before the response, and every pooled keep-alive connection to it dies), --down
seconds later it is started again on the same port, and the load runs to --seconds. Counted:
every request the client saw fail, by `ringlb-bench load` (per kind: reset, status = not
2xx/3xx, timeout, refused, ...; exact counts, nothing retried by the client; --warmup 0s so the
whole run counts) or, with --load wrk, wrk's "Non-2xx or 3xx responses" + socket errors.
Error % = errors / (successful requests + errors). The subjects alternate within each round
(the first rotates each round); the table sums the rounds.

The origins run on io_uring by default (--origin-io uring). A SIGKILLed io_uring process keeps
its listening socket a few ms longer than the rest (measured: connects still complete for
0.5-9 ms after the signal, then are reset before any byte), so requests sent on fresh
connections in that window fail too; --origin-io epoll (RINGLB_BENCH_IO=epoll) gives an origin
whose port refuses at once, which leaves only the requests in flight at the kill.

Also printed per run (ringlb: /metrics and /status on an admin port; HAProxy: `show stat` on a
stats socket): retries by cause, the proxy's own failure counts (ringlb: ringlb_errors_total by
kind and 5xx responses; HAProxy: the backend's hrsp_5xx, econ, eresp), and the requests the
victim served after its restart (0 would mean it never came back into rotation).

Usage (release build first: cargo build --release --bin ringlb --bin ringlb-bench):
  bench/tools/kill_target.py [--rounds 3] [--seconds 10] [--kill-at 3] [--down 3]
                             [--connections 32] [--threads 1] [--load bench|wrk]
                             [--origin-io uring|epoll] [--victim 0]
                             [--only ringlb-reset,haproxy] [--proxy-cpu 0] [--load-cpu 1]
                             [--ringlb PATH] [--bench PATH] [--haproxy PATH] [--json FILE]
Exit status 1 when a subject could not run; 0 otherwise (errors are the measurement, not a
failure of the tool).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proclib import SubjectFailed, wait_port, port_free, stop, require_free  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

PORT = 19710
ADMIN_PORT = 19719
ORIGINS = ["127.0.0.1:19711", "127.0.0.1:19712", "127.0.0.1:19713"]

# name -> (proxy, retry_on written in ringlb's config; None = the default)
SUBJECTS = {
    "ringlb-reset": ("ringlb", '["connect-failure", "reset"]'),
    "ringlb-default": ("ringlb", None),
    "haproxy": ("haproxy", None),
}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def ringlb_config(retry_on):
    ro = "" if retry_on is None else "retry_on = %s\n" % retry_on
    return """[runtime]
workers = 1
drain_timeout = "1s"

[admin]
bind = "127.0.0.1:%d"

[[listener]]
name = "web"
bind = "127.0.0.1:%d"
protocol = "http"
target_group = "app"

[[target_group]]
name = "app"
targets = ["%s", "%s", "%s"]
algorithm = "round_robin"
%s""" % (ADMIN_PORT, PORT, ORIGINS[0], ORIGINS[1], ORIGINS[2], ro)


def haproxy_config(tmp):
    servers = "".join("    server s%d %s\n" % (i + 1, o) for i, o in enumerate(ORIGINS))
    return """global
    nbthread 1
    maxconn 4096
    stats socket %(tmp)s/haproxy.sock mode 600 level admin
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    retries 2
    option redispatch
    retry-on all-retryable-errors
frontend web
    bind 127.0.0.1:%(port)d
    default_backend app
backend app
    balance roundrobin
%(servers)s""" % {"tmp": tmp, "port": PORT, "servers": servers}


class Subject:
    def __init__(self, name, args, tmp):
        self.name = name
        self.proxy, self.retry_on = SUBJECTS[name]
        self.args = args
        self.tmp = tmp
        if self.proxy == "ringlb":
            self.conf = os.path.join(tmp, "%s.toml" % name)
            text = ringlb_config(self.retry_on)
        else:
            self.conf = os.path.join(tmp, "%s.cfg" % name)
            text = haproxy_config(tmp)
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = os.path.join(tmp, "%s.log" % name)
        self.failed = None
        self.runs = []

    def command(self):
        pin = ["taskset", "-c", str(self.args.proxy_cpu)]
        if self.proxy == "ringlb":
            return pin + [self.args.ringlb, "run", "--config", self.conf]
        return pin + [self.args.haproxy, "-f", self.conf, "-db"]

    def check(self):
        if self.proxy == "ringlb":
            cmd = [self.args.ringlb, "check", "--config", self.conf]
        else:
            cmd = [self.args.haproxy, "-c", "-f", self.conf]
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

    def log_tail(self, n=3):
        try:
            with open(self.log, errors="replace") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
            return " | ".join(lines[-n:]) or "(empty)"
        except OSError:
            return "(no log)"

    def counters(self):
        """{origin address: requests served so far, "retries": {cause: n}}; {} when unreadable."""
        try:
            if self.proxy == "ringlb":
                return ringlb_counters()
            return haproxy_counters(os.path.join(self.tmp, "haproxy.sock"))
        except (OSError, ValueError) as e:
            return {"error": str(e)}


def ringlb_counters():
    base = "http://127.0.0.1:%d" % ADMIN_PORT
    with urllib.request.urlopen(base + "/status", timeout=2) as r:
        st = json.load(r)
    out = {"retries": {}, "state": {}}
    for g in st["target_groups"]:
        for t in g["targets"]:
            out[t["address"]] = t.get("requests", 0)
            out["state"][t["address"]] = t.get("state")
    with urllib.request.urlopen(base + "/metrics", timeout=2) as r:
        text = r.read().decode()
    out["proxy_errors"] = {}
    for line in text.splitlines():
        m = re.match(r'ringlb_retries_total\{.*cause="([^"]+)".*\}\s+(\d+)', line)
        if m:
            out["retries"][m.group(1)] = out["retries"].get(m.group(1), 0) + int(m.group(2))
        m = re.match(r'ringlb_errors_total\{.*kind="([^"]+)".*\}\s+(\d+)', line)
        if m and int(m.group(2)):
            out["proxy_errors"][m.group(1)] = int(m.group(2))
        m = re.match(r'ringlb_responses_total\{.*class="5xx".*\}\s+(\d+)', line)
        if m and int(m.group(1)):
            out["proxy_errors"]["5xx"] = out["proxy_errors"].get("5xx", 0) + int(m.group(1))
    return out


def haproxy_counters(sock_path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sock_path)
    s.sendall(b"show stat\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    lines = data.decode().splitlines()
    cols = lines[0].lstrip("# ").split(",")
    out = {"retries": {}, "state": {}}
    for line in lines[1:]:
        row = dict(zip(cols, line.split(",")))
        if row.get("pxname") != "app":
            continue
        if row.get("svname", "").startswith("s"):
            addr = ORIGINS[int(row["svname"][1:]) - 1]
            out[addr] = int(row.get("stot") or 0)
            out["state"][addr] = row.get("status")
        elif row.get("svname") == "BACKEND":
            out["retries"]["retries"] = int(row.get("wretr") or 0)
            out["retries"]["redispatches"] = int(row.get("wredis") or 0)
            out["proxy_errors"] = {k: int(row.get(c) or 0) for k, c in
                                   (("5xx", "hrsp_5xx"), ("econ", "econ"), ("eresp", "eresp"))
                                   if int(row.get(c) or 0)}
    return out


# ---------------------------------------------------------------------------------------- load

def load_cmd(args, out):
    pin = ["taskset", "-c", str(args.load_cpu)]
    url = "http://127.0.0.1:%d/" % PORT
    if args.load == "wrk":
        return pin + ["wrk", "-t", str(args.threads), "-c", str(args.connections),
                      "-d", "%ds" % args.seconds, url]
    return pin + [args.bench, "load", url, "-c", str(args.connections), "-t", str(args.threads),
                  "--cpus", str(args.load_cpu),
                  "-d", "%ds" % args.seconds, "--warmup", "0s", "--json", out]


def load_result(args, proc_out, out):
    """(successful requests, errors, {kind: n})."""
    if args.load == "wrk":
        m = re.search(r"(\d+) requests in", proc_out)
        if not m:
            raise SubjectFailed("wrk output not understood: " + proc_out[-400:])
        total = int(m.group(1))
        kinds = {}
        s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      proc_out)
        if s:
            for k, v in zip(("connect", "read", "write", "timeout"), s.groups()):
                if int(v):
                    kinds[k] = int(v)
        n = re.search(r"Non-2xx or 3xx responses: (\d+)", proc_out)
        if n and int(n.group(1)):
            kinds["status"] = int(n.group(1))
        errors = sum(kinds.values())
        return total - kinds.get("status", 0), errors, kinds
    try:
        with open(out) as f:
            j = json.load(f)
    except (OSError, ValueError):
        raise SubjectFailed("ringlb-bench load wrote no result: " + proc_out.strip()[-400:])
    kinds = {k: v for k, v in (j.get("errors_by_kind") or {}).items() if v}
    return j["requests"], j["errors"], kinds


def start_origin(args, addr):
    cmd = ["taskset", "-c", str(args.load_cpu), args.bench, "backend", "--bind", addr]
    env = dict(os.environ)
    if args.origin_io == "epoll":
        env["RINGLB_BENCH_IO"] = "epoll"
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def measure(s, args, victim, first):
    """One run of subject s with fresh origins and a fresh proxy; appends to s.runs."""
    port_free(PORT)
    for o in ORIGINS:
        port_free(port_of(o))
    origins = {}
    p = None
    load = None
    try:
        for o in ORIGINS:
            origins[o] = start_origin(args, o)
        for o in ORIGINS:
            wait_port(port_of(o), origins[o])
        p = s.start()
        time.sleep(0.3)
        out = os.path.join(s.tmp, "load.json")
        if os.path.exists(out):
            os.unlink(out)
        cmd = load_cmd(args, out)
        if first:
            print("  %s load: %s" % (s.name, shlex.join(cmd)), flush=True)
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.time()
        time.sleep(args.kill_at)
        before = s.counters()
        origins[victim].send_signal(signal.SIGKILL)
        origins[victim].wait()
        t_kill = time.time() - t0
        time.sleep(args.down)
        origins[victim] = start_origin(args, victim)
        wait_port(port_of(victim), origins[victim])
        t_back = time.time() - t0
        at_restart = s.counters()
        try:
            proc_out, _ = load.communicate(timeout=args.seconds + 60)
        except subprocess.TimeoutExpired:
            raise SubjectFailed("the load did not finish")
        end = s.counters()
        if p.poll() is not None:
            raise SubjectFailed("the proxy exited during the run; log: " + s.log_tail())
        ok, errors, kinds = load_result(args, proc_out, out)
        run = {"victim": victim, "requests": ok, "errors": errors, "errors_by_kind": kinds,
               "kill_at_s": round(t_kill, 2), "back_at_s": round(t_back, 2),
               "retries": end.get("retries"), "proxy_errors": end.get("proxy_errors"),
               "victim_state_end": end.get("state", {}).get(victim),
               "victim_requests_before_kill": before.get(victim),
               "victim_requests_after_restart":
                   (end.get(victim) - at_restart.get(victim))
                   if isinstance(end.get(victim), int) and isinstance(at_restart.get(victim), int)
                   else None}
        if "error" in end:
            run["counters_error"] = end["error"]
        s.runs.append(run)
        return run
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        stop(p)
        for o in origins.values():
            stop(o)


# ---------------------------------------------------------------------------------------- main

def select(only):
    if not only:
        return list(SUBJECTS)
    picked = []
    for tok in [t.strip() for t in only.split(",") if t.strip()]:
        hits = [n for n in SUBJECTS if n == tok or n.startswith(tok)]
        if not hits:
            sys.exit("--only: '%s' matches no subject (subjects: %s)" % (tok, ", ".join(SUBJECTS)))
        picked += [h for h in hits if h not in picked]
    return [n for n in SUBJECTS if n in picked]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="subject names or prefixes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="load duration per run")
    ap.add_argument("--kill-at", type=float, default=3.0, help="SIGKILL the victim after this")
    ap.add_argument("--down", type=float, default=3.0, help="restart the victim after this")
    ap.add_argument("--victim", type=int, default=0, help="index of the origin killed (0..2)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", choices=("bench", "wrk"), default="bench")
    ap.add_argument("--origin-io", choices=("uring", "epoll"), default="uring",
                    help="I/O of the origins (RINGLB_BENCH_IO); see the docstring")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--ringlb", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "ringlb-bench"))
    ap.add_argument("--haproxy", default=HAPROXY)
    ap.add_argument("--json")
    args = ap.parse_args()
    print("command: " + shlex.join([sys.argv[0]] + sys.argv[1:]), flush=True)
    if args.kill_at + args.down + 1 > args.seconds:
        sys.exit("--seconds must leave at least 1 s of load after the restart "
                 "(--kill-at + --down + 1 <= --seconds)")
    if not 0 <= args.victim < len(ORIGINS):
        sys.exit("--victim is 0..%d" % (len(ORIGINS) - 1))
    victim = ORIGINS[args.victim]
    names = select(args.only)
    if not os.access(args.bench, os.X_OK):
        sys.exit("ringlb-bench not found at %s (cargo build --release --bin ringlb-bench, or "
                 "--bench)" % args.bench)
    if any(SUBJECTS[n][0] == "ringlb" for n in names) and not os.access(args.ringlb, os.X_OK):
        sys.exit("ringlb not found at %s (cargo build --release --bin ringlb, or --ringlb)"
                 % args.ringlb)
    if args.load == "wrk" and not shutil.which("wrk"):
        sys.exit("--load wrk: wrk is not installed")
    notes = []
    if "haproxy" in names and not os.access(args.haproxy, os.X_OK):
        notes.append("haproxy skipped: not installed at %s" % args.haproxy)
        names.remove("haproxy")
    if not names:
        sys.exit("nothing to run: " + "; ".join(notes))

    # A process left on one of these ports would answer for the origin that is killed (or
    # share its connections), and the errors counted would not be the kill's.
    require_free(PORT, ADMIN_PORT, *ORIGINS)
    tmp = tempfile.mkdtemp(prefix="ringlb-killtarget-")
    subjects = {n: Subject(n, args, tmp) for n in names}
    for s in subjects.values():
        try:
            s.check()
        except SubjectFailed as e:
            s.failed = str(e)
            print("FAILED %s: %s" % (s.name, s.failed), flush=True)
    printed = set()
    for r in range(args.rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            s = subjects[n]
            if s.failed:
                continue
            try:
                run = measure(s, args, victim, n not in printed)
                printed.add(n)
            except SubjectFailed as e:
                s.failed = "round %d: %s" % (r + 1, e)
                print("FAILED %s: %s" % (n, s.failed), flush=True)
                continue
            total = run["requests"] + run["errors"]
            print("round %d %-15s %8d ok %5d errors (%.4f%%) %s  killed %.1fs back %.1fs  "
                  "retries %s  proxy counts %s  victim after restart: %s requests, %s"
                  % (r + 1, n, run["requests"], run["errors"],
                     100.0 * run["errors"] / max(total, 1), run["errors_by_kind"] or "",
                     run["kill_at_s"], run["back_at_s"], run["retries"], run["proxy_errors"],
                     run["victim_requests_after_restart"], run["victim_state_end"]), flush=True)

    print()
    print("command: " + shlex.join([sys.argv[0]] + sys.argv[1:]))
    print("%d round(s) x %d s GET / keep-alive, %d connections, load %s; origin %s SIGKILLed at "
          "%.0f s, restarted %.0f s later; origins on %s; proxy on CPU %d, load and 3 origins on "
          "CPU %d"
          % (args.rounds, args.seconds, args.connections,
             "wrk" if args.load == "wrk" else "ringlb-bench load", victim, args.kill_at,
             args.down, args.origin_io, args.proxy_cpu, args.load_cpu))
    print()
    print("| subject | requests | errors | error % | errors by kind | per round |")
    print("|---|---:|---:|---:|---|---|")
    summary = {}
    for n in names:
        s = subjects[n]
        ok = sum(r["requests"] for r in s.runs)
        err = sum(r["errors"] for r in s.runs)
        kinds = {}
        for r in s.runs:
            for k, v in r["errors_by_kind"].items():
                kinds[k] = kinds.get(k, 0) + v
        summary[n] = {"requests": ok, "errors": err, "errors_by_kind": kinds, "runs": s.runs,
                      "failed": s.failed, "config": open(s.conf).read(),
                      "command": shlex.join(s.command())}
        if s.failed and not s.runs:
            print("| %s | - | - | - | FAILED: %s | |" % (n, s.failed[:160]))
            continue
        kinds_s = ", ".join("%s %d" % kv for kv in sorted(kinds.items())) or "-"
        per = " / ".join(str(r["errors"]) for r in s.runs)
        print("| %s | %d | %d | %.4f%% | %s | %s |"
              % (n, ok + err, err, 100.0 * err / max(ok + err, 1), kinds_s, per))
    print("\nrequests = successful + failed; error % = errors / requests.")
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
