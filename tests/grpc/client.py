#!/usr/bin/env python3
"""A gRPC client for ringlb's integration tests (tests/integration/grpc.rs).

    python3 tests/grpc/client.py [GLOBAL...] STEP [ARGS...] [then [GLOBAL...] STEP [ARGS...]]...

GLOBAL: --target HOST:PORT   where to call (required)
        --tls-ca CA.pem      a TLS channel trusting CA.pem (default: plaintext h2c)
        --authority NAME     the TLS name to verify (grpc.ssl_target_name_override) and the
                             :authority sent; without --tls-ca only the :authority
        --deadline SECONDS   per-call deadline of grpcio calls (default 20; a safety net)
Steps after `then` run in the same process; GLOBAL options given there override the first ones.
Every step prints one JSON object per call on stdout, with at least "step", "code" (a grpc
status name: "OK", "UNAVAILABLE", ...), "details" and "elapsed_ms".

Steps (grpcio, on one channel per target):
  unary [--size N] [--count C] [--meta K=V]... [--sleep-ms MS] [--status CODE --message TEXT]
        [--deadline S]         test.Echo/Unary with pattern(N, 1); C calls in a row
  client-stream --messages N --size S     test.Echo/ClientStream with pattern(S, i), i < N
  server-stream --count N --size S        test.Echo/ServerStream, checks each message's bytes
  bidi --messages N --size S              test.Echo/Bidi in lockstep: message i+1 is sent only
                                          after the echo of message i came back
  meta [--meta K=V]...                    test.Echo/Meta: what the origin saw
  health [--service NAME]                 grpc.health.v1.Health/Check
  set-serving SERVING|NOT_SERVING         test.Control/SetServing
  stats                                   test.Control/Stats
Step with the `h2` library on a plain socket (h2c prior knowledge, no deadline of its own):
  raw [--path P] [--header K=V]... [--size N] [--wait S] [--cancel-after-ms MS]
        one gRPC request (content-type application/grpc, te: trailers, a message of N bytes);
        prints "status", "headers", "trailers", "trailers_only" (the first HEADERS frame ended
        the stream), "grpc_status", "grpc_message", "messages" (their lengths), "reset" (the
        RST_STREAM error code, or null), "goaway", "elapsed_ms" (headers sent to stream end).
  raw-timeout                             raw with grpc-timeout: 300m and x-sleep-ms: 3000 to
                                          test.Echo/Unary: proves a proxy's own deadline.
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time

import grpc

MAX_MESSAGE = 64 * 1024 * 1024
STEPS = (
    "unary",
    "client-stream",
    "server-stream",
    "bidi",
    "meta",
    "health",
    "set-serving",
    "stats",
    "raw",
    "raw-timeout",
)


def pattern(size, seed):
    """Deterministic bytes: message `seed` of `size` bytes (server.py has the same function)."""
    base = bytes(((j * 31) ^ (seed * 7)) & 0xFF for j in range(256))
    return (base * (size // 256 + 1))[:size]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def md_dict(md):
    out = {}
    for k, v in md or ():
        out[k] = v.hex() if isinstance(v, bytes) else v
    return out


def pairs(items):
    out = []
    for item in items or ():
        k, _, v = item.partition("=")
        k = k.lower()
        out.append((k, v.encode() if k.endswith("-bin") else v))
    return out


class Channels:
    """One grpcio channel per (target, tls, authority)."""

    def __init__(self):
        self.channels = {}

    def get(self, g):
        key = (g.target, g.tls_ca, g.authority)
        if key not in self.channels:
            opts = [
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.enable_http_proxy", 0),
                ("grpc.enable_retries", 0),
            ]
            if g.tls_ca:
                with open(g.tls_ca, "rb") as f:
                    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
                if g.authority:
                    opts.append(("grpc.ssl_target_name_override", g.authority))
                    opts.append(("grpc.default_authority", g.authority))
                self.channels[key] = grpc.secure_channel(g.target, creds, options=opts)
            else:
                if g.authority:
                    opts.append(("grpc.default_authority", g.authority))
                self.channels[key] = grpc.insecure_channel(g.target, options=opts)
        return self.channels[key]


def failure(step, e, started):
    out = {
        "step": step,
        "code": e.code().name if hasattr(e, "code") else "UNKNOWN",
        "details": e.details() if hasattr(e, "details") else str(e),
        "elapsed_ms": round((time.monotonic() - started) * 1000),
    }
    try:
        out["trailing"] = md_dict(e.trailing_metadata())
        out["debug"] = e.debug_error_string()
    except Exception:  # noqa: BLE001 - not every RpcError is a Call
        pass
    return out


def step_unary(ch, g, a):
    call = ch.unary_unary("/test.Echo/Unary")
    md = pairs(a.meta)
    if a.sleep_ms:
        md.append(("x-sleep-ms", str(a.sleep_ms)))
    if a.status:
        md.append(("x-status", a.status))
        md.append(("x-message", a.message or ""))
    payload = pattern(a.size, 1)
    deadline = a.deadline if a.deadline is not None else g.deadline
    for i in range(a.count):
        started = time.monotonic()
        try:
            resp, c = call.with_call(payload, metadata=md or None, timeout=deadline)
            emit(
                {
                    "step": "unary",
                    "i": i,
                    "code": c.code().name,
                    "details": c.details() or "",
                    "len": len(resp),
                    "sha256": sha(resp),
                    "match": resp == payload,
                    "trailing": md_dict(c.trailing_metadata()),
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                }
            )
        except grpc.RpcError as e:
            out = failure("unary", e, started)
            out["i"] = i
            emit(out)


def step_client_stream(ch, g, a):
    call = ch.stream_unary("/test.Echo/ClientStream")
    msgs = [pattern(a.size, i) for i in range(a.messages)]
    whole = b"".join(msgs)
    started = time.monotonic()
    try:
        resp = call(iter(msgs), timeout=g.deadline).decode()
        want = f"{len(whole)} {sha(whole)}"
        emit(
            {
                "step": "client-stream",
                "code": "OK",
                "details": "",
                "sent_len": len(whole),
                "reply": resp,
                "match": resp == want,
                "elapsed_ms": round((time.monotonic() - started) * 1000),
            }
        )
    except grpc.RpcError as e:
        emit(failure("client-stream", e, started))


def step_server_stream(ch, g, a):
    call = ch.unary_stream("/test.Echo/ServerStream")
    started = time.monotonic()
    sizes, ok, h = [], True, hashlib.sha256()
    try:
        for i, m in enumerate(call(f"{a.count} {a.size}".encode(), timeout=g.deadline)):
            sizes.append(len(m))
            ok = ok and m == pattern(a.size, i)
            h.update(m)
        emit(
            {
                "step": "server-stream",
                "code": "OK",
                "details": "",
                "count": len(sizes),
                "sizes": sizes,
                "pattern_ok": ok,
                "sha256": h.hexdigest(),
                "elapsed_ms": round((time.monotonic() - started) * 1000),
            }
        )
    except grpc.RpcError as e:
        out = failure("server-stream", e, started)
        out["count"] = len(sizes)
        emit(out)


def step_bidi(ch, g, a):
    call = ch.stream_stream("/test.Echo/Bidi")
    msgs = [pattern(a.size, i) for i in range(a.messages)]
    echoed = [threading.Event() for _ in msgs]
    stalled = []

    def requests():
        for i, m in enumerate(msgs):
            yield m
            # Lockstep: a proxy that held messages back until the stream ended would stall here.
            if not echoed[i].wait(10):
                stalled.append(i)

    started = time.monotonic()
    got, match = 0, True
    try:
        for i, m in enumerate(call(requests(), timeout=g.deadline)):
            match = match and i < len(msgs) and m == msgs[i]
            got += 1
            if i < len(echoed):
                echoed[i].set()
        emit(
            {
                "step": "bidi",
                "code": "OK",
                "details": "",
                "sent": len(msgs),
                "received": got,
                "match": match and got == len(msgs),
                "lockstep": not stalled,
                "elapsed_ms": round((time.monotonic() - started) * 1000),
            }
        )
    except grpc.RpcError as e:
        out = failure("bidi", e, started)
        out["received"] = got
        emit(out)


def step_meta(ch, g, a):
    call = ch.unary_unary("/test.Echo/Meta")
    started = time.monotonic()
    try:
        resp = json.loads(call(b"", metadata=pairs(a.meta) or None, timeout=g.deadline))
        out = {"step": "meta", "code": "OK", "details": ""}
        out.update(resp)
        out["elapsed_ms"] = round((time.monotonic() - started) * 1000)
        emit(out)
    except grpc.RpcError as e:
        emit(failure("meta", e, started))


def step_health(ch, g, a):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(ch)
    started = time.monotonic()
    try:
        r = stub.Check(health_pb2.HealthCheckRequest(service=a.service), timeout=g.deadline)
        emit(
            {
                "step": "health",
                "code": "OK",
                "details": "",
                "status": health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
                "elapsed_ms": round((time.monotonic() - started) * 1000),
            }
        )
    except grpc.RpcError as e:
        emit(failure("health", e, started))


def step_control(ch, g, method, body, name):
    call = ch.unary_unary(f"/test.Control/{method}")
    started = time.monotonic()
    try:
        resp = call(body, timeout=g.deadline)
        out = {"step": name, "code": "OK", "details": ""}
        if method == "Stats":
            out.update(json.loads(resp))
        else:
            out["reply"] = resp.decode()
        emit(out)
    except grpc.RpcError as e:
        emit(failure(name, e, started))


def step_raw(g, a, name="raw"):
    import h2.config
    import h2.connection
    import h2.errors
    import h2.exceptions
    import h2.events
    import h2.settings

    host, _, port = g.target.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=a.wait)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    sock.sendall(conn.data_to_send())

    sid = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", a.path),
        (":authority", g.authority or g.target),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] + pairs(a.header)
    msg = pattern(a.size, 1)
    body = b"\x00" + len(msg).to_bytes(4, "big") + msg
    started = time.monotonic()
    conn.send_headers(sid, headers)
    sock.sendall(conn.data_to_send())

    res = {
        "step": name,
        "status": None,
        "headers": {},
        "trailers": {},
        "trailers_only": False,
        "data": b"",
        "reset": None,
        "goaway": None,
        "ended": False,
        "cancelled_by_client": False,
    }

    def handle(events):
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                res["headers"] = {k: v for k, v in ev.headers}
                res["status"] = int(res["headers"].get(":status", "0"))
                res["trailers_only"] = ev.stream_ended is not None
            elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                res["trailers"] = {k: v for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id == sid:
                    res["data"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                res["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                res["reset"] = getattr(ev.error_code, "name", str(ev.error_code))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                res["goaway"] = getattr(ev.error_code, "name", str(ev.error_code))

    def done():
        return res["ended"] or res["reset"] is not None or res["goaway"] is not None

    def pump(timeout):
        sock.settimeout(max(timeout, 0.001))
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            return True
        except OSError as e:
            res["socket_error"] = str(e)
            return False
        if not chunk:
            res["socket_closed"] = True
            return False
        try:
            handle(conn.receive_data(chunk))
        except h2.exceptions.ProtocolError as e:
            res["protocol_error"] = repr(e)
            return False
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        return True

    deadline = started + a.wait
    cancel_at = started + a.cancel_after_ms / 1000 if a.cancel_after_ms else None
    alive = True
    # Send the message within flow control, stopping if the server already answered.
    sent = 0
    while alive and sent < len(body) and not done() and time.monotonic() < deadline:
        window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if window <= 0:
            alive = pump(0.05)
            continue
        piece = body[sent : sent + window]
        try:
            conn.send_data(sid, piece)
            sock.sendall(conn.data_to_send())
        except (h2.exceptions.H2Error, OSError) as e:
            res["send_error"] = repr(e)  # the server answered (or reset) before the end
            break
        sent += len(piece)
    if alive and not done():
        try:
            conn.end_stream(sid)
            sock.sendall(conn.data_to_send())
        except (h2.exceptions.H2Error, OSError) as e:  # the server closed the stream first
            res["end_stream_error"] = repr(e)
    while alive and not done():
        now = time.monotonic()
        if cancel_at and now >= cancel_at and not res["cancelled_by_client"]:
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())
            res["cancelled_by_client"] = True
            break
        if now >= deadline:
            res["timed_out"] = True
            break
        wait = deadline - now
        if cancel_at and not res["cancelled_by_client"]:
            wait = min(wait, max(cancel_at - now, 0.001))
        alive = pump(wait)
    res["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    res["sent"] = sent
    try:
        sock.close()
    except OSError:
        pass

    data = res.pop("data")
    messages, i = [], 0
    while i + 5 <= len(data):
        n = int.from_bytes(data[i + 1 : i + 5], "big")
        messages.append(n)
        i += 5 + n
    res["messages"] = messages
    res["data_len"] = len(data)
    # grpc-status from the trailers, or from the headers of a trailers-only response.
    where = res["trailers"] if "grpc-status" in res["trailers"] else res["headers"]
    res["grpc_status"] = where.get("grpc-status")
    res["grpc_message"] = where.get("grpc-message")
    codes = {c.value[0]: c.name for c in grpc.StatusCode}
    gs = res["grpc_status"]
    res["code"] = codes.get(int(gs), gs) if gs is not None and gs.isdigit() else None
    res["details"] = res["grpc_message"] or ""
    emit(res)


def build_parser():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", required=True)
    ap.add_argument("--tls-ca")
    ap.add_argument("--authority")
    ap.add_argument("--deadline", type=float, default=20.0)
    sub = ap.add_subparsers(dest="step", required=True)

    p = sub.add_parser("unary")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--meta", action="append")
    p.add_argument("--sleep-ms", type=int, default=0)
    p.add_argument("--status")
    p.add_argument("--message")
    p.add_argument("--deadline", type=float, dest="call_deadline")

    p = sub.add_parser("client-stream")
    p.add_argument("--messages", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)

    p = sub.add_parser("server-stream")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)

    p = sub.add_parser("bidi")
    p.add_argument("--messages", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)

    p = sub.add_parser("meta")
    p.add_argument("--meta", action="append")

    p = sub.add_parser("health")
    p.add_argument("--service", default="")

    p = sub.add_parser("set-serving")
    p.add_argument("status", choices=("SERVING", "NOT_SERVING"))

    sub.add_parser("stats")

    for name in ("raw", "raw-timeout"):
        p = sub.add_parser(name)
        p.add_argument("--path", default="/test.Echo/Unary")
        p.add_argument("--header", action="append")
        p.add_argument("--size", type=int, default=16)
        p.add_argument("--wait", type=float, default=10.0)
        p.add_argument("--cancel-after-ms", type=int, default=0)
    return ap


def main():
    # A test that hangs helps nobody: give up after a minute whatever happens.
    watchdog = threading.Timer(60, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    argv = sys.argv[1:]
    chunks, cur = [], []
    for word in argv:
        if word == "then":
            chunks.append(cur)
            cur = []
        else:
            cur.append(word)
    chunks.append(cur)
    first = chunks[0]
    cut = next((i for i, w in enumerate(first) if w in STEPS), len(first))
    globals_ = first[:cut]
    ap = build_parser()
    channels = Channels()
    for chunk in chunks:
        a = ap.parse_args(chunk if chunk is first else globals_ + chunk)
        if a.step == "unary":
            a.deadline_global = a.deadline
            a.deadline = a.call_deadline
            g = argparse.Namespace(
                target=a.target, tls_ca=a.tls_ca, authority=a.authority, deadline=a.deadline_global
            )
        else:
            g = a
        if a.step == "raw":
            step_raw(g, a)
        elif a.step == "raw-timeout":
            a.header = (a.header or []) + ["grpc-timeout=300m", "x-sleep-ms=3000"]
            step_raw(g, a, "raw-timeout")
        else:
            ch = channels.get(g)
            if a.step == "unary":
                step_unary(ch, g, a)
            elif a.step == "client-stream":
                step_client_stream(ch, g, a)
            elif a.step == "server-stream":
                step_server_stream(ch, g, a)
            elif a.step == "bidi":
                step_bidi(ch, g, a)
            elif a.step == "meta":
                step_meta(ch, g, a)
            elif a.step == "health":
                step_health(ch, g, a)
            elif a.step == "set-serving":
                step_control(ch, g, "SetServing", a.status.encode(), "set-serving")
            elif a.step == "stats":
                step_control(ch, g, "Stats", b"", "stats")
    for ch in channels.channels.values():
        ch.close()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
