#!/usr/bin/env python3
"""Measures ringlb's memory per idle keep-alive client connection.

Opens N connections to URL's host:port, sends one GET on each and reads its response (so every
connection has been through a full exchange and sits idle in keep-alive), then reports the RSS of
PID before and after, and the difference per connection.
Usage: idle_rss.py PID HOST PORT [N]
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def main():
    pid, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
    before = rss_kib(pid)
    conns = []
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection((host, port))
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(pid)
    per = (after - before) / n
    print(f"connections={n} rss_before_kib={before} rss_after_kib={after} per_connection_kib={per:.2f}")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
