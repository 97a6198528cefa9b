#!/usr/bin/env python3
"""Memory per idle client connection: ringlb, HAProxy and nginx side by side, in one run.

For each kind (plain HTTP, HTTPS, HTTP/2 over TLS, WebSocket, TCP) and each subject, a fresh proxy process (one
worker/thread, pinned to --proxy-cpu) is started in front of a small asyncio origin. Client
connections are opened one by one, each goes through one full exchange (an HTTP request and its
response; for HTTP/2 a GET on stream 1 after the prefaces; for WebSocket the 101 upgrade and one
echoed message; for TCP a request through the tunnel) and then stays open and idle. The proxy's RSS (all its processes: nginx's master and
worker) is read at --counts N1 and N2 connections, after --settle seconds each, and the figure is
the slope (RSS(N2) - RSS(N1)) / (N2 - N1): the memory each further idle connection costs, without
what a process holds anyway (its code, its pools, the first connections' warm-up).

Kernel socket memory is not in RSS and is the same for every subject (the sockets are the
kernel's): a tunnel (WebSocket, TCP) holds two sockets, an HTTP keep-alive client one.

Usage (release build first: cargo build --release):
  bench/tools/idle_memory.py [--subjects ringlb,haproxy,nginx] [--kinds plain,tls,h2,websocket,tcp]
                             [--counts 2000,8000] [--tls-counts 1000,4000] [--rounds 3] [--json FILE]
Subjects whose binary is missing are skipped with a note. The open-file limit bounds the counts:
a tunnel needs two descriptors per client in the proxy.
"""
import argparse
import atexit
import asyncio
import base64
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from proclib import require_free  # noqa: E402
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BODY = b"hello from the origin\n"


# --- the origin: HTTP keep-alive, WebSocket upgrade then echo -------------------------------

async def origin_conn(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            if fields.get("upgrade", "").lower() == "websocket":
                key = fields.get("sec-websocket-key", "")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
                await writer.drain()
                while True:  # the tunnel: echo whatever comes
                    data = await reader.read(4096)
                    if not data:
                        return
                    writer.write(data)
                    await writer.drain()
            n = int(fields.get("content-length", "0") or 0)
            if n:
                await reader.readexactly(n)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(BODY), BODY))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def start_origin(port):
    ready = threading.Event()

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(origin_conn, "127.0.0.1", port, backlog=4096))
        ready.set()
        loop.run_until_complete(server.serve_forever())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(5)


# --- subjects --------------------------------------------------------------------------------

def ringlb_config(kind, port, origin, cert, key):
    proto = {"plain": "http", "websocket": "http", "tls": "https", "h2": "https", "tcp": "tcp"}[kind]
    tls = (f'\n  [listener.tls]\n  certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
           if kind in ("tls", "h2") else "")
    group_proto = "tcp" if kind == "tcp" else "http"
    return f"""[runtime]
workers = 1
max_connections = 1000000
[[listener]]
name = "m"
bind = "127.0.0.1:{port}"
protocol = "{proto}"
target_group = "o"
  [listener.limits]
  idle_timeout = "600s"
{tls}
[[target_group]]
name = "o"
protocol = "{group_proto}"
targets = ["{origin}"]
"""


def haproxy_config(kind, port, origin, pem):
    mode = "tcp" if kind == "tcp" else "http"
    ssl_part = {"tls": f" ssl crt {pem} alpn http/1.1", "h2": f" ssl crt {pem} alpn h2,http/1.1"}.get(kind, "")
    return f"""global
    nbthread 1
    maxconn 9500
defaults
    mode {mode}
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout tunnel 600s
    timeout http-keep-alive 600s
frontend f
    bind 127.0.0.1:{port}{ssl_part}
    default_backend b
backend b
    server o {origin}
"""


def nginx_config(kind, port, origin, cert, key, tmp):
    common = f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr error;
daemon off;
worker_rlimit_nofile 19500;
events {{ worker_connections 19000; }}
"""
    if kind == "tcp":
        return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
{common}
stream {{
    server {{ listen 127.0.0.1:{port}; proxy_pass {origin}; proxy_timeout 600s; }}
}}
"""
    ssl_part = (f"{' ssl http2' if kind == 'h2' else ' ssl'};\n        ssl_certificate {cert};\n"
                f"        ssl_certificate_key {key}" if kind in ("tls", "h2") else "")
    return f"""{common}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    upstream o {{ server {origin}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port}{ssl_part};
        location / {{
            proxy_pass http://o;
            proxy_http_version 1.1;
            proxy_read_timeout 600s;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
}}
"""


def start_subject(name, kind, port, origin, tmp, args, certs):
    cert, key, pem = certs
    path = os.path.join(tmp, f"{name}-{kind}.conf")
    if name == "ringlb":
        text, cmd = ringlb_config(kind, port, origin, cert, key), [args.ringlb, "run", "--config", path]
    elif name == "haproxy":
        text, cmd = haproxy_config(kind, port, origin, pem), ["haproxy", "-db", "-f", path]
    else:
        text, cmd = nginx_config(kind, port, origin, cert, key, tmp), ["nginx", "-p", tmp, "-c", path]
    with open(path, "w") as f:
        f.write(text)
    proc = subprocess.Popen(["taskset", "-c", str(args.proxy_cpu)] + cmd, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, f"{name}-{kind}.log"), "w"), start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise StartFailed(f"{name} exited at start ({kind}); see {tmp}/{name}-{kind}.log")
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise StartFailed(f"{name} did not listen on {port} ({kind})")


class StartFailed(Exception):
    """A subject could not serve this kind (e.g. nginx without its stream module for tcp)."""


def tree_rss_kib(pid):
    """RSS of `pid` and its descendants (nginx: master + worker)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


# --- clients ----------------------------------------------------------------------------------

def recv_until(s, marker):
    data = b""
    while marker not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the exchange")
        data += chunk
    return data


def h2_frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return bytes([n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(s):
    """One GET / on stream 1 (HPACK: :method GET, :scheme https, :path / from the static table,
    :authority as a literal), read until the response's END_STREAM; SETTINGS are acknowledged."""
    block = bytes([0x82, 0x87, 0x84, 0x01, 9]) + b"localhost"
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) + h2_frame(1, 0x5, 1, block))
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the HTTP/2 exchange")
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + n:]
        if kind == 4 and not flags & 1:
            s.sendall(h2_frame(4, 1, 0))
        if kind == 7:
            raise ConnectionError("GOAWAY during the HTTP/2 exchange")
        if stream == 1 and kind in (0, 1) and flags & 1:
            return


def open_client(kind, port, ctx):
    s = socket.create_connection(("127.0.0.1", port))
    if kind == "tls":
        s = ctx.wrap_socket(s, server_hostname="localhost")
    if kind == "h2":
        s = ctx.h2.wrap_socket(s, server_hostname="localhost")
        if s.selected_alpn_protocol() != "h2":
            raise ConnectionError("the server did not choose h2 by ALPN")
        h2_get(s)
        return s
    if kind == "websocket":
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
        head = recv_until(s, b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError("no 101: %r" % head[:80])
        s.sendall(b"ping")
        recv_until(s, b"ping")
    else:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        recv_until(s, BODY)
    return s


def measure(name, kind, args, tmp, certs, counts, port):
    # A fresh origin for each measurement: one that just saw a proxy killed under thousands of
    # its connections can still be busy with them.
    start_origin(port + 1)
    origin = f"127.0.0.1:{port + 1}"
    proc = start_subject(name, kind, port, origin, tmp, args, certs)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.h2 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.h2.check_hostname = False
    ctx.h2.verify_mode = ssl.CERT_NONE
    ctx.h2.set_alpn_protocols(["h2"])
    clients, points = [], []
    try:
        for n in counts:
            while len(clients) < n:
                clients.append(open_client(kind, port, ctx))
            time.sleep(args.settle)
            points.append((n, tree_rss_kib(proc.pid)))
    finally:
        for c in clients:
            c.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (n1, r1), (n2, r2) = points[0], points[-1]
    return (r2 - r1) / (n2 - n1), points


def make_certs(tmp):
    cert, key, pem = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, pem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", default="ringlb,haproxy,nginx")
    ap.add_argument("--kinds", default="plain,tls,websocket,tcp")
    ap.add_argument("--counts", default="2000,8000")
    ap.add_argument("--tls-counts", default="1000,4000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--ringlb", default=os.path.join(ROOT, "target", "release", "ringlb"))
    ap.add_argument("--base-port", type=int, default=27000)
    ap.add_argument("--json")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {args.client_cpu})
    subjects = []
    for s in args.subjects.split(","):
        exe = args.ringlb if s == "ringlb" else s
        if shutil.which(exe) or os.path.exists(exe):
            subjects.append(s)
        else:
            print(f"note: {s} not found, skipped")
    kinds = args.kinds.split(",")
    # A process left on these ports from an earlier run would answer in place of the ones
    # started here (or, through SO_REUSEPORT, share their connections), and skew the counts.
    runs = len(kinds) * args.rounds * len(subjects)
    require_free(*range(args.base_port, args.base_port + 2 * runs))
    tmp = tempfile.mkdtemp(prefix="ringlb-idle-")
    # Configs and certificates of this run only; kept when a subject failed to start, so the
    # log the note names is still there.
    failed = []
    atexit.register(lambda: print(f"kept {tmp} (a subject failed to start)") if failed
                    else shutil.rmtree(tmp, True))
    certs = make_certs(tmp)
    results = {}
    port = args.base_port
    for kind in args.kinds.split(","):
        counts = [int(c) for c in (args.tls_counts if kind in ("tls", "h2") else args.counts).split(",")]
        need = counts[-1] * (2 if kind in ("websocket", "tcp") else 1) + 100
        if need > hard:
            raise SystemExit(f"{kind}: {counts[-1]} connections need {need} descriptors; the limit is {hard}")
        for rnd in range(args.rounds):
            for s in subjects:  # alternating subjects within each round
                try:
                    per, points = measure(s, kind, args, tmp, certs, counts, port)
                except StartFailed as e:
                    failed.append(s)
                    # One subject that cannot serve a kind leaves a gap, not the whole run.
                    print(f"note: {e}: skipped", flush=True)
                    results.setdefault(kind, {}).setdefault(s, [])
                    port += 2
                    continue
                results.setdefault(kind, {}).setdefault(s, []).append(per)
                print(f"{kind:9} round {rnd + 1} {s:8} {per:6.2f} KiB/conn   points {points}", flush=True)
                port += 2
    print()
    print("| kind | " + " | ".join(subjects) + " |")
    print("|---|" + "---:|" * len(subjects))
    for kind, by in results.items():
        cells = [f"{statistics.median(by[s]):.2f}" if by.get(s) else "-" for s in subjects]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\nKiB of RSS per further idle connection, median of %d rounds (counts %s, TLS %s)"
          % (args.rounds, args.counts, args.tls_counts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {s: statistics.median(v) for s, v in by.items() if v} for k, by in results.items()}, f,
                      indent=1)


if __name__ == "__main__":
    main()
