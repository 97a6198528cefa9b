#!/usr/bin/env python3
"""CPU cost of a TLS handshake with and without client certificates (issue 16).

Subjects, each one worker pinned to --proxy-cpu, terminating TLS with the same openssl-made
ECDSA P-256 certificate (tests/mtls/pki.sh) and answering through a local origin (nginx
`return 200`, on --load-cpu):
  ringlb-off        ringlb, https listener, client_auth off (default)
  ringlb-required   ringlb, client_auth = "required", client_ca + client_crl; the five
                    X-Client-Cert-* headers go to the origin
  nginx-off         nginx 1.22, ssl_verify_client off                      (reference)
  nginx-verify      nginx 1.22, ssl_verify_client on, ssl_client_certificate + ssl_crl, the same
                    five headers set with proxy_set_header
Load: `openssl s_time -new -time N -www /` (a full handshake and one HTTP/1.0 request per
connection, no resumption), with -cert/-key (alice) for every subject (servers that do not ask
ignore it), pinned to --load-cpu.
Measured: the server's CPU (utime+stime from /proc/PID/stat, all threads; nginx: master and
worker) over the s_time run, divided by the connections s_time reports -> µs CPU per handshake;
and handshakes/s = connections / the run's wall time. Subjects alternate (order rotated every
round); medians of --rounds.

Usage (release build first: cargo build --release --bins):
  bench/tools/mtls_cost.py [--rounds 3] [--time 5] [--proxy-cpu 0] [--load-cpu 1]
                           [--subjects ringlb-off,ringlb-required,nginx-off,nginx-verify] [--keep DIR]
Ports 19830-19832 on 127.0.0.1.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import faults  # noqa: E402
from faults import stop, wait_port  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PORT, ORIGIN, ADMIN = 19830, 19831, 19832
TICK = os.sysconf("SC_CLK_TCK")
SUBJECTS = ["ringlb-off", "ringlb-required", "nginx-off", "nginx-verify"]

A = None


def ticks(pid):
    """utime+stime of a process (all its threads), in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def family(pid):
    """pid and its descendants (nginx: master + workers)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            total += ticks(p)
        except OSError:
            pass
    return total


class Lab(faults.Lab):
    """faults.Lab (a temp folder, a log, processes stopped in reverse order) plus file helpers."""

    def __init__(self):
        super().__init__("mtls-cost")

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)


def origin(lab):
    conf = lab.write("origin.conf", """worker_processes 1;
error_log %s/origin-error.log crit;
pid %s/origin.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:%d backlog=4096; location / { return 200 "ok\\n"; } }
}
""" % (lab.tmp, lab.tmp, ORIGIN))
    p = lab.start([NGINX, "-p", lab.tmp, "-c", conf, "-g", "daemon off;"], A.load_cpu)
    wait_port(ORIGIN)
    return p


def ringlb(lab, pki, required):
    auth = ""
    if required:
        auth = ('  client_auth = "required"\n  client_ca = "%s/clients-ca.pem"\n'
                '  client_crl = ["%s/revoked.crl.pem"]\n' % (pki, pki))
    conf = lab.write("ringlb.toml", """[runtime]
workers = 1

[admin]
bind = "127.0.0.1:%d"

[[listener]]
name = "websecure"
bind = "127.0.0.1:%d"
protocol = "https"
target_group = "app"
  [listener.tls]
  certificates = [{ cert = "%s/site.crt", key = "%s/site.key" }]
%s
[[target_group]]
name = "app"
targets = ["127.0.0.1:%d"]
""" % (ADMIN, PORT, pki, pki, auth, ORIGIN))
    p = lab.start([A.ringlb, "run", "--config", conf], A.proxy_cpu)
    wait_port(PORT)
    return p, [p.pid]


def nginx(lab, pki, verify):
    tls = ""
    if verify:
        tls = """    ssl_verify_client on;
    ssl_client_certificate %s/clients-ca.pem;
    ssl_crl %s/revoked.crl.pem;
""" % (pki, pki)
    conf = lab.write("nginx.conf", """worker_processes 1;
error_log %s/nginx-error.log crit;
pid %s/nginx.pid;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  upstream app { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d ssl backlog=4096;
    ssl_certificate %s/site.crt;
    ssl_certificate_key %s/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
%s    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Client-Cert-Subject $ssl_client_s_dn;
      proxy_set_header X-Client-Cert-Issuer $ssl_client_i_dn;
      proxy_set_header X-Client-Cert-Serial $ssl_client_serial;
      proxy_set_header X-Client-Cert-Fingerprint $ssl_client_fingerprint;
      proxy_set_header X-Client-Cert $ssl_client_escaped_cert;
    }
  }
}
""" % (lab.tmp, lab.tmp, ORIGIN, PORT, pki, pki, tls))
    p = lab.start([NGINX, "-p", lab.tmp, "-c", conf, "-g", "daemon off;"], A.proxy_cpu)
    wait_port(PORT)
    time.sleep(0.2)  # the worker forks after the master binds
    return p, family(p.pid)


def one_request(pki, cert):
    """Status line of one HTTP/1.0 request over TLS (s_time's request), with or without a cert."""
    args = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % PORT, "-quiet"]
    if cert:
        args += ["-cert", "%s/alice.crt" % pki, "-key", "%s/alice.key" % pki]
    r = subprocess.run(args, input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=10)
    out = r.stdout.decode(errors="replace").splitlines()
    return out[0] if out else "(no response: %s)" % r.stderr.decode(errors="replace").strip()[-120:]


def s_time(pki, seconds):
    cmd = ["taskset", "-c", str(A.load_cpu), "openssl", "s_time", "-connect",
           "127.0.0.1:%d" % PORT, "-new", "-time", str(seconds), "-www", "/",
           "-cert", "%s/alice.crt" % pki, "-key", "%s/alice.key" % pki]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, timeout=seconds + 60)
    wall = time.monotonic() - t0
    out = r.stdout.decode(errors="replace")
    m = re.search(r"(\d+) connections in (\d+) real seconds, (\d+) bytes read per connection", out)
    if not m:
        raise RuntimeError("s_time: no result:\n%s\n%s" % (out, r.stderr.decode(errors="replace")))
    return int(m.group(1)), wall, int(m.group(3)), out


def measure(lab, pki, subject):
    if subject.startswith("ringlb"):
        p, pids = ringlb(lab, pki, subject == "ringlb-required")
    else:
        p, pids = nginx(lab, pki, subject == "nginx-verify")
    try:
        # Sanity: the request s_time sends is answered 200; with verification, no cert is refused.
        ok = one_request(pki, True)
        if " 200" not in ok:
            raise RuntimeError("%s: with a certificate: %s" % (subject, ok))
        if subject in ("ringlb-required", "nginx-verify"):
            refused = one_request(pki, False)
            if " 200" in refused:
                raise RuntimeError("%s: served without a certificate: %s" % (subject, refused))
        s_time(pki, 1)  # warm-up
        before = cpu_ticks(pids)
        conns, wall, bytes_per, out = s_time(pki, A.time)
        used = cpu_ticks(pids) - before
        if conns == 0:
            raise RuntimeError("%s: s_time made no connection:\n%s" % (subject, out))
        if bytes_per == 0:
            raise RuntimeError("%s: s_time read nothing back:\n%s" % (subject, out))
        us = used / TICK * 1e6 / conns
        return {"conns": conns, "hs_s": conns / wall, "us": us, "cpu_s": used / TICK,
                "wall": wall}
    finally:
        stop(p, signal.SIGQUIT if subject.startswith("nginx") else signal.SIGTERM)
        lab.procs.remove(p)
        time.sleep(0.3)


def main():
    global A
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ringlb", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time", type=int, default=5, help="s_time -time, seconds per run")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--keep", help="copy the run's folder (configs, logs) here")
    faults.A = A = ap.parse_args()
    # A process left on these ports from an earlier run would answer in place of the ones
    # started here (or, through SO_REUSEPORT, share their connections), and skew the counts.
    faults.require_free(PORT, ORIGIN, ADMIN)
    subjects = [s for s in A.subjects.split(",") if s]
    for s in subjects:
        if s not in SUBJECTS:
            sys.exit("unknown subject %s (known: %s)" % (s, ", ".join(SUBJECTS)))
    if not os.path.exists(A.ringlb):
        sys.exit("build first: cargo build --release --bins")
    for tool in ("openssl", "taskset"):
        if not shutil.which(tool):
            sys.exit("%s not found" % tool)
    if any(s.startswith("nginx") for s in subjects) and not os.path.exists(NGINX):
        sys.exit("nginx not found (needed for the origin and the nginx subjects)")
    ver = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    ngv = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    print("ringlb: %s\n%s; %s\nproxy CPU %d, load CPU %d (s_time and the origin), "
          "s_time -new -time %d -www /, %d rounds"
          % (A.ringlb, ver, ngv, A.proxy_cpu, A.load_cpu, A.time, A.rounds))

    lab = Lab()
    results = {s: [] for s in subjects}
    try:
        pki = lab.path("pki")
        subprocess.run(["sh", os.path.join(ROOT, "tests", "mtls", "pki.sh"), pki], check=True,
                       stdout=lab.log, stderr=lab.log)
        origin(lab)
        for r in range(A.rounds):
            order = subjects[r % len(subjects):] + subjects[:r % len(subjects)]
            for s in order:
                m = measure(lab, pki, s)
                results[s].append(m)
                print("round %d  %-16s %7d handshakes in %5.2f s  %8.0f /s  CPU %6.2f s  "
                      "%7.1f µs/handshake" % (r + 1, s, m["conns"], m["wall"], m["hs_s"],
                                              m["cpu_s"], m["us"]), flush=True)
    finally:
        lab.close()

    med = {s: (statistics.median(m["hs_s"] for m in v), statistics.median(m["us"] for m in v))
           for s, v in results.items() if v}
    print("\nmedians of %d rounds, %d s each:\n" % (A.rounds, A.time))
    print("| subject | handshakes/s | CPU µs/handshake |")
    print("|---|---:|---:|")
    for s in subjects:
        if s in med:
            print("| %s | %s | %.1f |" % (s, format(round(med[s][0]), ","), med[s][1]))
    for a, b in (("ringlb-required", "ringlb-off"), ("nginx-verify", "nginx-off")):
        if a in med and b in med:
            print("\n%s costs %+.1f µs CPU per handshake over %s (%+.0f%%)"
                  % (a, med[a][1] - med[b][1], b, 100 * (med[a][1] / med[b][1] - 1)), end="")
    print()


if __name__ == "__main__":
    main()
