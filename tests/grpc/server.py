#!/usr/bin/env python3
"""A gRPC origin for ringlb's integration tests (tests/integration/grpc.rs).

No generated code: every method is a generic handler on raw bytes.

    python3 tests/grpc/server.py --port 0 [--tls CERT KEY]

prints `READY <port>` on stdout (flushed) once it serves, then runs until killed.

Service test.Echo:
  Unary         echoes the request. Metadata `x-sleep-ms: MS` sleeps first (a call cancelled
                during the sleep, by RST_STREAM or its deadline, is counted in Stats);
                `x-status: CODE` (a number or a name such as NOT_FOUND) aborts with that code and
                `x-message`; `x-trailer: V` adds trailing metadata `x-trailer: V`.
  ClientStream  answers b"<total length> <sha256 hex of the concatenation>".
  ServerStream  request b"COUNT SIZE": streams COUNT messages of SIZE bytes, message i being
                pattern(SIZE, i) (see below).
  Bidi          echoes every message as it arrives.
  Meta          answers JSON: {"metadata": [[key, value], ...] (-bin values in base64),
                "authority": the request's :authority, "method", "peer", "time_remaining"}.
Service test.Control:
  SetServing    body b"SERVING" / b"NOT_SERVING": the health status of "" and "test.Echo".
  Stats         JSON {"calls": {method: n}, "cancelled": n, "cancelled_calls": {method: n},
                "health_checks": {service: n}, "deadlines": [seconds left at start, or null]}.
grpc.health.v1.Health is registered too ("" and "test.Echo" start SERVING).
Message size limits are 64 MiB both ways.
"""

import argparse
import base64
import hashlib
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MAX_MESSAGE = 64 * 1024 * 1024


def pattern(size, seed):
    """Deterministic bytes: message `seed` of `size` bytes (client.py has the same function)."""
    base = bytes(((j * 31) ^ (seed * 7)) & 0xFF for j in range(256))
    return (base * (size // 256 + 1))[:size]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}
        self.cancelled = {}
        self.health_checks = {}
        self.deadlines = []

    def call(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def cancel(self, method):
        with self.lock:
            self.cancelled[method] = self.cancelled.get(method, 0) + 1

    def health(self, service):
        with self.lock:
            self.health_checks[service] = self.health_checks.get(service, 0) + 1

    def deadline(self, left):
        with self.lock:
            self.deadlines.append(left)

    def json(self):
        with self.lock:
            return json.dumps(
                {
                    "calls": self.calls,
                    "cancelled": sum(self.cancelled.values()),
                    "cancelled_calls": self.cancelled,
                    "health_checks": self.health_checks,
                    "deadlines": self.deadlines,
                }
            ).encode()


STATS = Stats()


def metadata(context):
    return {k: v for k, v in context.invocation_metadata()}


def status_code(text):
    text = text.strip()
    for code in grpc.StatusCode:
        if text.upper() == code.name or (text.isdigit() and int(text) == code.value[0]):
            return code
    raise ValueError(f"unknown grpc status {text!r}")


def unary(request, context):
    STATS.call("Unary")
    md = metadata(context)
    left = context.time_remaining()
    STATS.deadline(left if left is not None and left < 1e9 else None)
    sleep_ms = int(md.get("x-sleep-ms", "0"))
    if sleep_ms:
        end = time.monotonic() + sleep_ms / 1000
        while time.monotonic() < end:
            if not context.is_active():
                STATS.cancel("Unary")
                return b""
            time.sleep(0.01)
        if not context.is_active():
            STATS.cancel("Unary")
            return b""
    if "x-trailer" in md:
        context.set_trailing_metadata((("x-trailer", md["x-trailer"]),))
    if "x-status" in md:
        context.abort(status_code(md["x-status"]), md.get("x-message", ""))
    return request


def client_stream(request_iterator, context):
    STATS.call("ClientStream")
    h = hashlib.sha256()
    total = 0
    for m in request_iterator:
        h.update(m)
        total += len(m)
    return f"{total} {h.hexdigest()}".encode()


def server_stream(request, context):
    STATS.call("ServerStream")
    count, size = (int(x) for x in request.decode().split())
    for i in range(count):
        if not context.is_active():
            STATS.cancel("ServerStream")
            return
        yield pattern(size, i)


def bidi(request_iterator, context):
    STATS.call("Bidi")
    for m in request_iterator:
        yield m


def meta(request, context):
    STATS.call("Meta")
    items = []
    for k, v in context.invocation_metadata():
        if isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        items.append([k, v])
    authority = None
    try:  # grpcio has no public accessor for :authority; the call details carry it.
        host = context._rpc_event.call_details.host
        authority = host.decode() if isinstance(host, bytes) else host
    except AttributeError:
        pass
    return json.dumps(
        {
            "metadata": items,
            "authority": authority,
            "method": "/test.Echo/Meta",
            "peer": context.peer(),
            "time_remaining": context.time_remaining(),
        }
    ).encode()


class CountingHealth(health.HealthServicer):
    """The stock health servicer, counting the checks per service name."""

    def Check(self, request, context):
        STATS.health(request.service)
        return super().Check(request, context)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--workers", type=int, default=64)
    args = ap.parse_args()

    opts = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=opts)

    hs = CountingHealth()
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    hs.set("", serving)
    hs.set("test.Echo", serving)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)

    def set_serving(request, context):
        STATS.call("SetServing")
        want = request.strip()
        if want not in (b"SERVING", b"NOT_SERVING"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "SERVING or NOT_SERVING")
        st = serving if want == b"SERVING" else not_serving
        hs.set("", st)
        hs.set("test.Echo", st)
        return want

    def stats(request, context):
        return STATS.json()

    echo = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Meta": grpc.unary_unary_rpc_method_handler(meta),
        },
    )
    control = grpc.method_handlers_generic_handler(
        "test.Control",
        {
            "SetServing": grpc.unary_unary_rpc_method_handler(set_serving),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )
    server.add_generic_rpc_handlers((echo, control))

    addr = f"127.0.0.1:{args.port}"
    if args.tls:
        with open(args.tls[0], "rb") as f:
            cert = f.read()
        with open(args.tls[1], "rb") as f:
            key = f.read()
        port = server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(addr)
    if port == 0:
        print(f"cannot bind {addr}", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
