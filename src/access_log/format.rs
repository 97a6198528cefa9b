//! One access log line: what a connection task notes about its current request (`Exchange`) and
//! how that becomes one JSON object (`write_line`), RFC 3339 timestamps included.
//!
//! Runs inside a connection task on a worker. An `Exchange` belongs to that task (one per client
//! connection, reset per request, so its scratch buffer is reused); lines are appended to the
//! worker's per-listener buffer without a per-request allocation.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::parse::RequestHead;
use crate::http::rewrite::RequestId;

/// Longest method, host or path copied into a log line; longer values are cut (and marked).
pub const MAX_FIELD_BYTES: usize = 2048;

/// What a connection task learns about one request as it goes, for its log line.
#[derive(Default)]
pub struct Exchange {
    /// When the first byte of the request was seen.
    pub start: Cell<Option<Instant>>,
    /// The status answered; 0 = none (the client went away first).
    pub status: Cell<u16>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// The target the request was sent to (last attempt).
    target: Cell<Option<SocketAddr>>,
    /// When it was sent there; only read for a request whose line will be written
    /// ([`Exchange::capture`] was called), so others cost no clock reads for it.
    sent_at: Cell<Option<Instant>>,
    /// [`Exchange::capture`] was called for this request: its line will be written.
    logged: Cell<bool>,
    /// Time from sending the request to the target until its response head was read.
    upstream: Cell<Option<Duration>>,
    /// `"method":..,"host":..,"path":..` already in JSON (empty: the head is unknown).
    request: RefCell<Vec<u8>>,
    /// "HTTP/1.0", "HTTP/1.1" or "HTTP/2"; `None` while the head is unknown.
    protocol: Cell<Option<&'static str>>,
    /// The request's id (`request_id` on), kept or made by ringlb.
    pub request_id: Cell<Option<RequestId>>,
}

impl Exchange {
    /// Forgets the previous request (keeps the scratch buffer's capacity).
    pub fn reset(&self) {
        self.start.set(None);
        self.status.set(0);
        self.bytes_in.set(0);
        self.bytes_out.set(0);
        self.target.set(None);
        self.sent_at.set(None);
        self.logged.set(false);
        self.upstream.set(None);
        self.request.borrow_mut().clear();
        self.protocol.set(None);
        self.request_id.set(None);
    }

    /// The request came over HTTP/2 (its head was captured from the HTTP/1.1 form it is
    /// forwarded in).
    pub fn set_protocol(&self, p: &'static str) {
        self.protocol.set(Some(p));
    }

    /// Notes that the request's first byte arrived now (once per request); returns that time.
    #[inline]
    pub fn started(&self) -> Instant {
        match self.start.get() {
            Some(at) => at,
            None => {
                let now = Instant::now();
                self.start.set(Some(now));
                now
            }
        }
    }

    /// Copies method, host and path (with query) out of the parsed head, before its buffer is
    /// consumed.
    pub fn capture(&self, buf: &[u8], head: &RequestHead) {
        self.logged.set(true);
        let mut r = self.request.borrow_mut();
        r.clear();
        r.extend_from_slice(b"\"method\":");
        json_bytes(&mut r, head.method_span.of(buf));
        r.extend_from_slice(b",\"host\":");
        match head.host {
            Some(h) => json_bytes(&mut r, h.of(buf)),
            None => r.extend_from_slice(b"null"),
        }
        r.extend_from_slice(b",\"path\":");
        json_bytes(&mut r, head.target.of(buf));
        self.protocol.set(Some(match head.version {
            crate::http::parse::Version::Http10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }));
    }

    /// The request goes to `target` now.
    #[inline]
    pub fn forwarded(&self, target: SocketAddr) {
        self.target.set(Some(target));
        if self.logged.get() {
            self.sent_at.set(Some(Instant::now()));
        }
    }

    /// The target's response head has been read.
    #[inline]
    pub fn response_head(&self) {
        if let Some(at) = self.sent_at.get() {
            self.upstream.set(Some(at.elapsed()));
        }
    }

    #[inline]
    pub fn add_in(&self, n: u64) {
        self.bytes_in.set(self.bytes_in.get() + n);
    }

    #[inline]
    pub fn add_out(&self, n: u64) {
        self.bytes_out.set(self.bytes_out.get() + n);
    }
}

/// The parts of a line that are not in the `Exchange`.
pub struct LineContext<'a> {
    pub now: SystemTime,
    pub client: SocketAddr,
    /// The listener's name, already a JSON string (quoted, escaped).
    pub listener_json: &'a [u8],
    /// "TLSv1.2" / "TLSv1.3", or `None` for plain HTTP.
    pub tls: Option<&'static str>,
    /// The verified client certificate (mutual TLS).
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

/// Appends one JSON object and a newline to `out`.
pub fn write_line(out: &mut Vec<u8>, cx: &LineContext<'_>, ex: &Exchange) {
    out.extend_from_slice(b"{\"time\":\"");
    write_rfc3339(out, cx.now);
    // Writes into a Vec<u8> cannot fail.
    let _ = write!(out, "\",\"client\":\"{}\",\"listener\":", cx.client);
    out.extend_from_slice(cx.listener_json);
    out.push(b',');
    let request = ex.request.borrow();
    if request.is_empty() {
        out.extend_from_slice(b"\"method\":null,\"host\":null,\"path\":null");
    } else {
        out.extend_from_slice(&request);
    }
    out.extend_from_slice(b",\"status\":");
    match ex.status.get() {
        0 => out.extend_from_slice(b"null"),
        s => number(out, u64::from(s)),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, ex.bytes_in.get());
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, ex.bytes_out.get());
    out.extend_from_slice(b",\"target\":");
    match ex.target.get() {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_ms\":");
    match ex.upstream.get() {
        Some(d) => millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"total_ms\":");
    let total = ex.start.get().map(|s| s.elapsed()).unwrap_or_default();
    millis(out, total);
    out.extend_from_slice(b",\"tls\":");
    match cx.tls {
        Some(v) => {
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"protocol\":");
    match ex.protocol.get() {
        Some(p) => {
            out.push(b'"');
            out.extend_from_slice(p.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_id\":");
    match ex.request_id.get() {
        Some(id) => json_bytes(out, id.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    match cx.client_cert {
        Some(c) => {
            out.extend_from_slice(b",\"client_cert_subject\":");
            json_bytes(out, c.subject.as_bytes());
            out.extend_from_slice(b",\"client_cert_fingerprint\":\"");
            out.extend_from_slice(c.fingerprint.as_bytes());
            out.push(b'"');
        }
        None => {
            out.extend_from_slice(b",\"client_cert_subject\":null,\"client_cert_fingerprint\":null")
        }
    }
    out.extend_from_slice(b"}\n");
}

/// A JSON string of `s`, cut to `MAX_FIELD_BYTES`; bytes that are not UTF-8 become U+FFFD.
pub fn json_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let cut = s.len() > MAX_FIELD_BYTES;
    let s = s.get(..MAX_FIELD_BYTES).unwrap_or(s);
    let text = String::from_utf8_lossy(s);
    if cut {
        let mut owned = text.into_owned();
        owned.push('…');
        let _ = serde_json::to_writer(&mut *out, &owned);
    } else {
        let _ = serde_json::to_writer(&mut *out, text.as_ref());
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    number(out, us / 1000);
    let frac = us % 1000;
    out.push(b'.');
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// `2026-11-26T16:56:09.123Z` (UTC, milliseconds).
pub fn write_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_date((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days grouped in 400-year eras
/// of 146 097 days, years starting in March so the leap day comes last).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, HeadLimits};

    fn at(secs: u64, ms: u32) -> String {
        let mut out = Vec::new();
        write_rfc3339(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms.into()),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_795_712_169, 123), "2026-11-26T16:56:09.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    fn line(ex: &Exchange, tls: Option<&'static str>) -> serde_json::Value {
        let mut out = Vec::new();
        let cx = LineContext {
            now: SystemTime::now(),
            client: "127.0.0.1:5000".parse().unwrap(),
            listener_json: b"\"web\"",
            tls,
            client_cert: None,
        };
        write_line(&mut out, &cx, ex);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).expect("a JSON line")
    }

    #[test]
    fn a_line_carries_the_request_and_escapes_hostile_bytes() {
        let raw = b"GET /a\"b\\c?q=\x01 HTTP/1.1\r\nHost: ex\xffample\r\n\r\n";
        let mut head = RequestHead::new();
        // The parser may refuse control bytes in the target; then build from a clean one.
        let buf: &[u8] = match parse_request(raw, &HeadLimits::default(), &mut head) {
            Ok(Some(_)) => raw,
            _ => {
                let clean = b"GET /a\"b\\c?q=1 HTTP/1.1\r\nHost: example\r\n\r\n";
                assert!(matches!(
                    parse_request(clean, &HeadLimits::default(), &mut head),
                    Ok(Some(_))
                ));
                clean
            }
        };
        let ex = Exchange::default();
        ex.started();
        ex.capture(buf, &head);
        ex.status.set(200);
        ex.add_in(10);
        ex.add_out(20);
        ex.forwarded("10.0.0.1:80".parse().unwrap());
        ex.response_head();
        let v = line(&ex, Some("TLSv1.3"));
        assert_eq!(v["method"], "GET");
        assert!(v["path"].as_str().unwrap().starts_with("/a\"b\\c?q="));
        assert!(v["host"].as_str().unwrap().starts_with("ex"));
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_in"], 10);
        assert_eq!(v["bytes_out"], 20);
        assert_eq!(v["target"], "10.0.0.1:80");
        assert!(v["upstream_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["total_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["tls"], "TLSv1.3");
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["listener"], "web");
    }

    #[test]
    fn an_unknown_head_and_no_target_are_null() {
        let ex = Exchange::default();
        ex.status.set(400);
        let v = line(&ex, None);
        assert!(v["method"].is_null() && v["host"].is_null() && v["path"].is_null());
        assert!(v["target"].is_null() && v["upstream_ms"].is_null() && v["tls"].is_null());
        assert_eq!(v["status"], 400);
        ex.reset();
        assert!(line(&ex, None)["status"].is_null());
    }

    #[test]
    fn long_fields_are_cut_and_invalid_utf8_replaced() {
        let mut out = Vec::new();
        json_bytes(&mut out, &vec![b'a'; MAX_FIELD_BYTES * 3]);
        let s: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(s.len(), MAX_FIELD_BYTES + '…'.len_utf8());
        out.clear();
        json_bytes(&mut out, b"a\xffb\n");
        let s: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(s, "a\u{fffd}b\n");
    }

    #[test]
    fn durations_are_milliseconds_with_three_decimals() {
        let mut out = Vec::new();
        millis(&mut out, Duration::from_micros(12_345));
        assert_eq!(out, b"12.345");
        out.clear();
        millis(&mut out, Duration::from_micros(7));
        assert_eq!(out, b"0.007");
    }
}
