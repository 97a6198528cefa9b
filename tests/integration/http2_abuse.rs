//! HTTP/2 abuse: real frames (h2c by prior knowledge, raw bytes from `h2frames.rs`) sent at
//! ringlb to check the defences a user expects after the 2023–2024 HTTP/2 CVEs — rapid reset,
//! PING / SETTINGS / empty DATA floods, CONTINUATION floods, HPACK bombs, zero-window readers,
//! max_concurrent_streams — and that requests malformed per RFC 9113 §8 get a stream or
//! connection error and never reach the target. Every test checks what the backend saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::h2frames::*;
use super::support::{pattern, simple_config, Backend, Proxy};

const WAIT: Duration = Duration::from_secs(5);

/// ringlb with h2c on its listener; `tables`: sub-tables of the listener (`[listener.limits]`,
/// `[listener.http2]`, which turns HTTP/2 on by itself).
fn start(backend: &Backend, tables: &str) -> Proxy {
    let mut cfg = simple_config(&[backend.addr.to_string()], "");
    if !tables.contains("[listener.http2]") {
        cfg = cfg.replacen(
            "protocol = \"http\"\n",
            "protocol = \"http\"\nhttp2 = true\n",
            1,
        );
    }
    let cfg = cfg.replacen(
        "\n[[target_group]]",
        &format!("\n{tables}\n[[target_group]]"),
        1,
    );
    Proxy::start(&cfg)
}

/// A fresh connection is served: GET on stream 1 answers 200.
fn assert_served(addr: SocketAddr) {
    let mut c = Conn::open(addr);
    c.send(&get(1, "/fresh"));
    let (status, _) = c.response(1, WAIT);
    assert_eq!(status, 200, "a fresh connection after the attack");
}

/// Resident memory of this process (ringlb runs in it), in bytes.
fn vm_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kb * 1024
}

/// Writes `setup` then floods `chunk` (`max` bytes at most) and expects the connection to end:
/// GOAWAY ENHANCE_YOUR_CALM and close, or a close outright, within a few seconds.
fn assert_flood_ends(addr: SocketAddr, what: &str, setup: &[u8], chunk: Vec<u8>, max: usize) {
    let mut c = Conn::open(addr);
    c.send(setup);
    let started = Instant::now();
    let writer = flood(&c.sock, chunk, max);
    let fate = c.fate(0, WAIT);
    let closed = matches!(fate, Fate::Closed(_)) || c.closes_within(Duration::from_secs(3));
    let took = started.elapsed();
    let _ = c.sock.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().expect("writer");
    let goaway = c.log.iter().find(|f| f.starts_with("GOAWAY"));
    eprintln!("{what}: {goaway:?}, closed {closed} after {took:?}, {sent} of {max} bytes written");
    assert!(
        matches!(fate, Fate::GoAway(ENHANCE_YOUR_CALM) | Fate::Closed(_)),
        "{what}: {fate:?}; last frames {:?}",
        &c.log[c.log.len().saturating_sub(8)..]
    );
    assert!(closed, "{what}: the connection stayed open after {fate:?}");
}

#[test]
fn a_raw_get_is_served() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let mut c = Conn::open(p.addr);
    assert!(
        c.server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 128)),
        "{:?}",
        c.server_settings
    );
    c.send(&get(1, "/hello"));
    let (status, body) = c.response(1, WAIT);
    assert_eq!((status, body.as_slice()), (200, &b"b1"[..]));
    assert_eq!(b.last().target, "/hello");
    // A body over several DATA frames (within the default 64 KiB windows).
    c.send(&get(3, "/big/40000"));
    let (status, body) = c.response(3, WAIT);
    assert_eq!(status, 200);
    assert!(
        body == pattern(40000),
        "body of {} bytes differs",
        body.len()
    );
    // A status that is not in the static table.
    b.set_status(418);
    c.send(&get(5, "/teapot"));
    assert_eq!(c.response(5, WAIT), (418, b"b1".to_vec()));
    b.set_status(0);
    assert_eq!(b.traffic(), 3);
}

/// Requests malformed per RFC 9113 §8 (fields in order; content-length cases add DATA).
fn malformed_cases() -> Vec<(&'static str, Vec<u8>)> {
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f = request("GET", "/bad");
        f.extend_from_slice(extra);
        f
    };
    let without = |name: &str| {
        let mut f = request("GET", "/bad");
        f.retain(|(n, _)| *n != name);
        f
    };
    let fields: Vec<(&'static str, Vec<(&'static str, &'static str)>)> = vec![
        (
            "connection: keep-alive",
            with(&[("connection", "keep-alive")]),
        ),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
        ),
        ("keep-alive", with(&[("keep-alive", "timeout=5")])),
        ("upgrade", with(&[("upgrade", "h2c")])),
        ("proxy-connection", with(&[("proxy-connection", "x")])),
        ("te: gzip", with(&[("te", "gzip")])),
        ("uppercase name", with(&[("X-Foo", "bar")])),
        ("space in name", with(&[("x foo", "bar")])),
        ("pseudo after regular", {
            let mut f = without(":path");
            f.push(("x-a", "1"));
            f.push((":path", "/bad"));
            f
        }),
        ("repeated :method", {
            let mut f = request("GET", "/bad");
            f.insert(1, (":method", "POST"));
            f
        }),
        ("missing :path", without(":path")),
        ("empty :path", {
            let mut f = without(":path");
            f.push((":path", ""));
            f
        }),
        ("space in :path", request("GET", "/a b")),
        ("space in :authority", {
            let mut f = without(":authority");
            f.insert(2, (":authority", "exa mple"));
            f
        }),
        ("missing :method", without(":method")),
        ("missing :scheme", without(":scheme")),
        ("unknown pseudo :foo", {
            let mut f = request("GET", "/bad");
            f.insert(0, (":foo", "bar"));
            f
        }),
        (":status in request", {
            let mut f = request("GET", "/bad");
            f.insert(0, (":status", "200"));
            f
        }),
        ("CR in value", with(&[("x-a", "a\rb")])),
        ("LF in value", with(&[("x-a", "a\nb")])),
        ("NUL in value", with(&[("x-a", "a\0b")])),
        ("leading space", with(&[("x-a", " a")])),
        ("trailing space", with(&[("x-a", "a ")])),
        ("trailing tab", with(&[("x-a", "a\t")])),
        ("host != :authority", with(&[("host", "other.example")])),
    ];
    let mut cases: Vec<(&'static str, Vec<u8>)> = fields
        .into_iter()
        .map(|(name, f)| {
            (
                name,
                frame(HEADERS, END_STREAM | END_HEADERS, 1, &block(&f)),
            )
        })
        .collect();
    for (name, length) in [
        ("content-length 10, 5 bytes", "10"),
        ("content-length 2, 5 bytes", "2"),
    ] {
        let mut f = request("POST", "/echo");
        f.push(("content-length", length));
        let mut h = frame(HEADERS, END_HEADERS, 1, &block(&f));
        h.extend(data(1, END_STREAM, b"12345"));
        cases.push((name, h));
    }
    cases
}

#[test]
fn malformed_requests_never_reach_the_target() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let mut good = 0;
    let mut wrong = Vec::new();
    for (name, frames) in malformed_cases() {
        let mut c = Conn::open(p.addr);
        c.send(&frames);
        let fate = c.fate(1, WAIT);
        eprintln!("{name}: {fate:?}");
        match fate {
            Fate::Reset(PROTOCOL_ERROR) => {
                // A stream error: the connection goes on and serves the next stream.
                c.send(&get(3, "/after"));
                let (status, _) = c.response(3, WAIT);
                assert_eq!(status, 200, "{name}: the next stream");
                good += 1;
            }
            Fate::GoAway(code) if code != 0 => {}
            Fate::Closed(_) => {}
            other => wrong.push(format!("{name}: {other:?}, frames {:?}", c.log)),
        }
        assert_eq!(
            b.traffic(),
            good,
            "{name} reached the target: {:?}",
            b.last()
        );
    }
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
}

#[test]
fn rapid_reset_ends_the_connection() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let mut c = Conn::open(p.addr);
    const N: u32 = 5000;
    let mut all = Vec::new();
    for i in 0..N {
        all.extend(get(2 * i + 1, "/rr"));
        all.extend(rst(2 * i + 1, CANCEL));
    }
    let len = all.len();
    let started = Instant::now();
    let writer = flood(&c.sock, all, len);
    let fate = c.fate(0, WAIT);
    let closed = matches!(fate, Fate::Closed(_)) || c.closes_within(Duration::from_secs(3));
    let took = started.elapsed();
    let _ = c.sock.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().expect("writer");
    assert!(
        matches!(fate, Fate::GoAway(ENHANCE_YOUR_CALM) | Fate::Closed(_)),
        "{fate:?}; last frames {:?}",
        &c.log[c.log.len().saturating_sub(8)..]
    );
    assert!(closed, "the connection stayed open after {fate:?}");
    assert_served(p.addr);
    let reached = b.traffic() - 1;
    let goaway = c.log.iter().find(|f| f.starts_with("GOAWAY"));
    eprintln!("rapid reset: {goaway:?} after {took:?}, {sent} of {len} bytes written, {reached} of {N} requests reached the target");
    assert!(
        reached < 2000,
        "{reached} of {N} reset requests reached the target"
    );
}

/// Rapid reset of streams ringlb already forwards (reset after the target saw them, so h2's
/// limit on streams reset before they are accepted does not apply): ringlb counts the streams
/// still being served against 2 × max_concurrent_streams (256), refuses beyond it, and ends the
/// connection once it refused more than that.
#[test]
fn rapid_reset_of_streams_in_flight_is_capped() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let mut c = Conn::open(p.addr);
    let (mut next, mut refused, mut fate) = (1u32, 0, Fate::TimedOut);
    'rounds: for _ in 0..12 {
        let ids: Vec<u32> = (0..100).map(|k| next + 2 * k).collect();
        next += 200;
        let batch: Vec<u8> = ids.iter().flat_map(|&id| get(id, "/slow/3000")).collect();
        let seen = b.traffic();
        let mut refused_now = 0;
        if std::io::Write::write_all(&mut c.sock, &batch).is_err() {
            fate = c.fate(0, WAIT);
            break;
        }
        // Each stream either reaches the target or is refused.
        let deadline = Instant::now() + WAIT;
        while b.traffic() - seen + refused_now < ids.len() {
            assert!(Instant::now() < deadline, "round stuck; frames {:?}", c.log);
            match c.next(Instant::now() + Duration::from_millis(20)) {
                Ok(f) if f.kind == RST_STREAM && ids.contains(&f.stream) => {
                    assert_eq!(f.code(), Some(REFUSED_STREAM), "{f:?}");
                    refused_now += 1;
                }
                Ok(f) if f.kind == GOAWAY => {
                    fate = Fate::GoAway(f.code().unwrap_or(u32::MAX));
                    break 'rounds;
                }
                Err(End::Closed(why)) => {
                    fate = Fate::Closed(why);
                    break 'rounds;
                }
                _ => {}
            }
        }
        refused += refused_now;
        let resets: Vec<u8> = ids.iter().flat_map(|&id| rst(id, CANCEL)).collect();
        if std::io::Write::write_all(&mut c.sock, &resets).is_err() {
            fate = c.fate(0, WAIT);
            break;
        }
    }
    let reached = b.traffic();
    eprintln!("rapid reset in flight: {fate:?}, {reached} reached the target, {refused} refused (+ the last round's)");
    assert!(
        matches!(fate, Fate::GoAway(ENHANCE_YOUR_CALM) | Fate::Closed(_)),
        "{fate:?} after {reached} forwarded and {refused} refused"
    );
    assert!(reached <= 256, "{reached} streams in flight were forwarded");
    assert_served(p.addr);
}

#[test]
fn priority_flood_gets_enhance_your_calm() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    // PRIORITY on idle streams: dependency on stream 0, weight 16 (CVE-2019-9513).
    let all: Vec<u8> = (0..5000u32)
        .flat_map(|i| frame(0x2, 0, 2 * i + 1, &[0, 0, 0, 0, 15]))
        .collect();
    let n = all.len();
    assert_flood_ends(p.addr, "PRIORITY flood", &[], all, n);
    assert_served(p.addr);
    assert_eq!(b.traffic(), 1);
}

#[test]
fn ping_flood_gets_enhance_your_calm() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let pings: Vec<u8> = (0..5000u32)
        .flat_map(|i| frame(PING, 0, 0, &u64::from(i).to_be_bytes()))
        .collect();
    let n = pings.len();
    assert_flood_ends(p.addr, "PING flood", &[], pings, n);
    assert_served(p.addr);
    assert_eq!(b.traffic(), 1);
}

#[test]
fn settings_flood_gets_enhance_your_calm() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let all: Vec<u8> = (0..5000).flat_map(|_| settings(&[])).collect();
    let n = all.len();
    assert_flood_ends(p.addr, "SETTINGS flood", &[], all, n);
    assert_served(p.addr);
    assert_eq!(b.traffic(), 1);
}

#[test]
fn empty_data_flood_gets_enhance_your_calm() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let open = frame(HEADERS, END_HEADERS, 1, &block(&request("POST", "/echo")));
    let all: Vec<u8> = (0..5000).flat_map(|_| data(1, 0, b"")).collect();
    let n = all.len();
    assert_flood_ends(p.addr, "empty DATA flood", &open, all, n);
    assert_served(p.addr);
    assert_eq!(b.traffic(), 1, "the flooding POST reached the target");
}

#[test]
fn continuation_flood_is_cut_off() {
    let b = Backend::start("b1");
    let p = start(&b, "");
    let before = vm_rss();
    // 1 KiB of new literal fields per CONTINUATION, then CONTINUATION frames with nothing.
    for per_frame in [1024, 0] {
        let mut c = Conn::open(p.addr);
        c.send(&frame(
            HEADERS,
            END_STREAM,
            1,
            &block(&request("GET", "/cont")),
        ));
        let mut chunk = Vec::new();
        let mut i = 0;
        while chunk.len() < 64 * 1024 {
            let mut fields = Vec::new();
            while fields.len() < per_frame {
                literal(&mut fields, &format!("x-c{i}"), &"v".repeat(40));
                i += 1;
            }
            chunk.extend(frame(CONTINUATION, 0, 1, &fields));
        }
        let max = 50 << 20;
        let writer = flood(&c.sock, chunk, max);
        let fate = c.fate(1, Duration::from_secs(10));
        let closed = matches!(fate, Fate::Closed(_)) || c.closes_within(Duration::from_secs(3));
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        let sent = writer.join().expect("writer");
        let goaway = c.log.iter().find(|f| f.starts_with("GOAWAY"));
        eprintln!("CONTINUATION flood ({per_frame} B/frame): {goaway:?}, closed {closed}, {sent} bytes written");
        assert!(
            matches!(
                fate,
                Fate::GoAway(ENHANCE_YOUR_CALM | PROTOCOL_ERROR) | Fate::Closed(_)
            ) || fate == Fate::Status(431)
                || matches!(fate, Fate::Reset(_)),
            "{fate:?}; frames {:?}",
            c.log
        );
        assert!(
            closed || !matches!(fate, Fate::GoAway(_)),
            "still open after {fate:?}"
        );
        assert!(sent < max, "all {sent} bytes of CONTINUATION were taken");
    }
    let grown = vm_rss().saturating_sub(before);
    eprintln!("CONTINUATION flood: RSS grew {} KiB", grown / 1024);
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    assert_eq!(b.traffic(), 0);
    assert_served(p.addr);
}

#[test]
fn hpack_bomb_is_refused() {
    let b = Backend::start("b1");
    let p = start(&b, "[listener.limits]\nmax_header_bytes = \"8KiB\"\n");
    // One 4 KB field into the dynamic table (index 62), then 1-byte references to it: 12 KB
    // decoded (over 8 KiB), then about 2 MB.
    for refs in [2, 500] {
        let mut blk = block(&request("GET", "/bomb"));
        blk.push(0x40);
        string(&mut blk, b"x-bomb");
        string(&mut blk, "a".repeat(4000).as_bytes());
        blk.extend(std::iter::repeat_n(0xbe, refs));
        let mut c = Conn::open(p.addr);
        c.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &blk));
        let fate = c.fate(1, WAIT);
        let goaway = c.log.iter().find(|f| f.starts_with("GOAWAY"));
        eprintln!("HPACK bomb ({refs} references): {fate:?} {goaway:?}");
        match fate {
            Fate::Status(431) | Fate::Reset(_) => {
                c.send(&get(3, "/after"));
                assert_eq!(c.response(3, WAIT).0, 200, "the next stream");
            }
            Fate::GoAway(code) if code != 0 => {}
            Fate::Closed(_) => {}
            other => panic!("{refs} references: {other:?}; frames {:?}", c.log),
        }
    }
    // Only the two follow-up requests (if the connections stayed) reached the target.
    assert!(b.traffic() <= 2);
    assert!(b.seen.lock().unwrap().iter().all(|s| s.target == "/after"));
}

#[test]
fn zero_window_reader_is_reset() {
    let b = Backend::start("b1");
    let p = start(&b, "[listener.limits]\nidle_timeout = \"1s\"\n");
    let mut c = Conn::open_with(p.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    let started = Instant::now();
    c.send(&get(1, "/big/1000000"));
    // HEADERS are not flow-controlled: the response starts, then no DATA can go.
    assert_eq!(c.fate(1, WAIT), Fate::Status(200), "{:?}", c.log);
    // Meanwhile other clients are served.
    assert_served(p.addr);
    let fate = c.fate(1, WAIT);
    let took = started.elapsed();
    eprintln!("zero-window reader: {fate:?} after {took:?}");
    assert!(
        matches!(fate, Fate::Reset(_)),
        "{fate:?}; frames {:?}",
        c.log
    );
    assert!(took < Duration::from_secs(5), "reset after {took:?}");
    assert!(
        !c.log
            .iter()
            .any(|f| f.starts_with("DATA") && !f.contains(" 0 bytes")),
        "DATA beyond a zero window: {:?}",
        c.log
    );
}

#[test]
fn streams_beyond_max_concurrent_streams_are_refused() {
    let b = Backend::start("b1");
    let p = start(&b, "[listener.http2]\nmax_concurrent_streams = 4\n");
    let mut c = Conn::open(p.addr);
    assert!(
        c.server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "server SETTINGS {:?}",
        c.server_settings
    );
    let ids: Vec<u32> = (0..6).map(|i| 2 * i + 1).collect();
    let batch: Vec<u8> = ids.iter().flat_map(|&id| get(id, "/slow/1000")).collect();
    c.send(&batch);
    let deadline = Instant::now() + WAIT;
    let mut fates: Vec<Option<Fate>> = vec![None; ids.len()];
    while fates.iter().any(Option::is_none) {
        let f = match c.next(deadline) {
            Ok(f) => f,
            Err(e) => panic!("{e:?} with {fates:?}; frames {:?}", c.log),
        };
        let Some(k) = ids.iter().position(|&id| id == f.stream) else {
            assert_ne!(f.kind, GOAWAY, "{f:?}");
            continue;
        };
        if f.kind == RST_STREAM {
            fates[k] = Some(Fate::Reset(f.code().unwrap_or(0)));
        } else if f.flags & END_STREAM != 0 {
            fates[k] = Some(Fate::Status(200));
        } else if let Some(s) = f.status() {
            assert_eq!(s, 200, "stream {}", f.stream);
        }
    }
    eprintln!("6 streams with max_concurrent_streams = 4: {fates:?}");
    let done = fates.iter().flatten().filter(|f| **f == Fate::Status(200));
    let refused = fates.iter().flatten().filter(
        |f| matches!(f, Fate::Reset(code) if *code == REFUSED_STREAM || *code == PROTOCOL_ERROR),
    );
    assert_eq!((done.count(), refused.count()), (4, 2), "{fates:?}");
    assert_eq!(b.traffic(), 4);
}

#[test]
fn a_client_that_ignores_goaway_is_still_closed() {
    // Idle for idle_timeout: GOAWAY (and h2's PING). This client never answers the PING (a
    // broken or hostile peer): after a second quiet period ringlb closes the connection anyway.
    let b = Backend::start("b1");
    let p = start(&b, "[listener.limits]\nidle_timeout = \"1s\"\n");
    let mut c = Conn::open(p.addr);
    c.send(&get(1, "/"));
    assert_eq!(c.response(1, WAIT).0, 200);
    let quiet = Instant::now();
    assert!(matches!(c.fate(0, WAIT), Fate::GoAway(0)), "{:?}", c.log);
    let goaway_after = quiet.elapsed();
    assert!(
        c.closes_within(WAIT),
        "closed without the PING's answer: {:?}",
        c.log
    );
    let closed_after = quiet.elapsed();
    assert!(
        goaway_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "GOAWAY after {goaway_after:?}, closed after {closed_after:?}"
    );
}
