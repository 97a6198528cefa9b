//! A response in HTTP/1.1 form (a target's, or one of ringlb's own) sent on an HTTP/2 stream:
//! the head as HEADERS without the connection-specific fields, the body (length, chunked or
//! close-delimited) as DATA frames sent only as the client's window allows, chunked trailers as
//! trailing HEADERS when the client asked for them, and a truncated body as RST_STREAM so the
//! client never takes it for whole.
//!
//! Runs in the stream's task; the upstream connection and its buffer belong to that task and
//! the connection goes back to the worker's pool when its response was whole.

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, SendStream};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tokio::time::timeout;

use super::{head, Stream};
use crate::http::body::ChunkedDecoder;
use crate::http::parse::{parse_response, BodyKind, Method, ResponseHead};
use crate::http::proxy::{Upstream, MAX_INTERIM, MAX_RESPONSE_HEAD, RELAY_CHUNK};
use crate::io::deadline;
use crate::metrics::ErrorKind;
use std::os::fd::AsRawFd;

/// Fields of an HTTP/1.1 response that HTTP/2 must not carry (RFC 9113 §8.2.2).
pub(super) fn connection_specific(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// An interim (1xx) response without fields.
pub(super) fn interim(status: u16) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::CONTINUE);
    r
}

/// The HTTP/2 form of a parsed HTTP/1.1 response head; `None` when a field cannot be carried.
/// Each field value is its own copy, not a slice of a shared chunk: HPACK's table keeps the
/// values it indexes for the connection's life, and a slice would keep its whole chunk.
fn to_h2(buf: &[u8], head: &ResponseHead) -> Option<Response<()>> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(head.status).ok()?;
    let map = r.headers_mut();
    for h in head.headers.iter().filter(|h| !h.hop_by_hop) {
        let name = h.name.of(buf);
        if connection_specific(name) {
            continue;
        }
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_bytes(h.value.of(buf)).ok()?;
        map.append(name, value);
    }
    Some(r)
}

/// How a response body is found in what the target sends.
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilEof,
}

impl Stream {
    /// Sends a whole response written in HTTP/1.1 form (ringlb's own answers).
    pub(super) async fn send_h1(&mut self, bytes: &[u8]) {
        let mut rh = ResponseHead::new();
        let Ok(Some(hl)) = parse_response(bytes, Method::Get, MAX_RESPONSE_HEAD, &mut rh) else {
            self.respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        };
        let Some(resp) = to_h2(bytes, &rh) else {
            self.respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        };
        self.stats().response(rh.status);
        self.ex.status.set(rh.status);
        // A HEAD request gets the head alone.
        let body = if self.head_request {
            &[][..]
        } else {
            &bytes[hl..]
        };
        let Ok(mut send) = self.respond.send_response(resp, body.is_empty()) else {
            return;
        };
        if !body.is_empty() {
            // A few bytes: h2 queues them until the window allows.
            if send
                .send_data(crate::http2::arena::copy(body), true)
                .is_ok()
            {
                self.ex.add_out(body.len() as u64);
                self.stats().bytes(0, body.len() as u64);
            }
        }
    }

    /// Relays the target's response (its head already in `up.buf`), then pools the upstream
    /// connection when the response was whole and the connection may be reused.
    pub(super) async fn relay_response(
        &mut self,
        mut up: Upstream,
        method: Method,
        trailers: bool,
        rw: &crate::http::rewrite::Rewrites,
    ) {
        let resp_timeout = self.group().settings.response_timeout;
        let idle = self.conn.plan.limits.idle_timeout;
        // Interim responses (100, 103, ...) go to the client as they are.
        let mut interims = 0;
        while up.head.is_interim() && up.head.status != 101 {
            interims += 1;
            let hl = up.head.head_len;
            if let Some(r) = to_h2(&up.buf, &up.head) {
                let _ = self.respond.send_informational(r);
            }
            up.buf.drain(..hl);
            let res = if interims > MAX_INTERIM {
                Err(crate::http::proxy::ResponseFail::Bad)
            } else {
                self.cx().read_response_head(&mut up, method).await
            };
            if let Err(fail) = res {
                self.cx().abandon(up);
                self.stats().error(ErrorKind::BadResponse);
                self.send_error(fail.status(), &[]).await;
                return;
            }
        }
        let h2_head = if up.head.upgrade || up.head.status == 101 {
            // No request over HTTP/2 asked for an upgrade.
            None
        } else if up.head.te_other_coding && up.head.body != BodyKind::Empty {
            // A transfer coding other than chunked (gzip, ...) has no HTTP/2 form.
            None
        } else {
            to_h2(&up.buf, &up.head)
        };
        let Some(mut resp) = h2_head else {
            self.cx().abandon(up);
            self.stats().error(ErrorKind::BadResponse);
            self.send_error(502, &[]).await;
            return;
        };
        let id = self.ex.request_id.get();
        let mut cookie = None;
        let sets = |name: &str| {
            resp.headers()
                .get_all(http::header::SET_COOKIE)
                .iter()
                .any(|v| crate::sticky::sets_cookie(v.as_bytes(), name))
        };
        let adds = self.response_adds(rw, &up.target, sets, &id, &mut cookie);
        adds.apply(resp.headers_mut());
        let mut body = match up.head.body {
            BodyKind::Empty => Body::Length(0),
            BodyKind::Length(n) => Body::Length(n),
            BodyKind::Chunked => Body::Chunked(ChunkedDecoder::new(u64::MAX)),
            BodyKind::CloseDelimited => Body::UntilEof,
        };
        let status = up.head.status;
        self.ex.response_head();
        self.ex.status.set(status);
        up.target.failures.set(0);
        self.stats().response(status);
        let empty = matches!(body, Body::Length(0));
        let mut send = match self.respond.send_response(resp, empty) {
            Ok(s) => s,
            Err(_) => {
                // The client reset the stream.
                self.cx().abandon(up);
                return;
            }
        };
        if empty {
            // Bytes after an empty response's head would start the next response on a reused
            // connection: such a connection is not reused.
            let clean = up.buf.len() == up.head.head_len;
            self.finish(up, clean);
            return;
        }
        let mut buf = std::mem::take(&mut up.buf);
        let mut start = up.head.head_len;
        let mut section = Vec::new();
        let mut whole = false;
        let mut extra = false;
        let mut ended = false;
        loop {
            // What of buf[start..] is body, and the data in it.
            let avail = buf.len() - start;
            let (consumed, data) = match &mut body {
                Body::Length(n) => {
                    let take = (*n).min(avail as u64) as usize;
                    *n -= take as u64;
                    (take, take)
                }
                Body::UntilEof => (avail, avail),
                Body::Chunked(d) => {
                    let keep = trailers.then_some(&mut section);
                    match d.advance_dechunked(&mut buf[start..], keep) {
                        Ok((p, n)) => (p.consumed, n),
                        Err(_) => break,
                    }
                }
            };
            let done = match &body {
                Body::Length(n) => *n == 0,
                Body::Chunked(d) => d.is_done(),
                Body::UntilEof => false,
            };
            // The last data carries END_STREAM unless trailers follow.
            let last = done && (!trailers || section.is_empty());
            if data > 0 {
                let bytes = crate::http2::arena::copy(&buf[start..start + data]);
                if send_flow(&mut send, bytes, last, idle).await.is_err() {
                    break;
                }
                ended = last;
                self.ex.add_out(data as u64);
                self.stats().bytes(0, data as u64);
            }
            if done {
                whole = true;
                extra = start + consumed < buf.len();
                break;
            }
            buf.clear();
            if buf.capacity() < RELAY_CHUNK {
                buf.reserve(RELAY_CHUNK);
            }
            start = 0;
            let watch = deadline::arm(up.stream.as_raw_fd(), resp_timeout);
            let (res, b) = up.stream.read(buf).await;
            buf = b;
            if watch.expired() {
                break;
            }
            match res {
                Ok(0) => {
                    whole = matches!(body, Body::UntilEof);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        up.buf = buf;
        if !whole {
            // Cut short (or the client went away): a reset, never an END_STREAM.
            self.stats().error(ErrorKind::UpstreamReset);
            send.send_reset(Reason::INTERNAL_ERROR);
            self.cx().abandon(up);
            return;
        }
        let sent = if ended {
            Ok(())
        } else if trailers && !section.is_empty() {
            let map = head::parse_trailers(&section);
            if map.is_empty() {
                send.send_data(Bytes::new(), true)
            } else {
                send.send_trailers(map)
            }
        } else {
            send.send_data(Bytes::new(), true)
        };
        let reusable = !matches!(body, Body::UntilEof) && !extra && sent.is_ok();
        self.finish(up, reusable);
    }

    /// Ends the upstream connection's part in this request: back to the pool when `reusable`.
    fn finish(&self, up: Upstream, reusable: bool) {
        if !(reusable && up.head.keep_alive) {
            self.cx().abandon(up);
            return;
        }
        up.target.end();
        let (stream, target) = up.release();
        target.put_idle(stream);
    }
}

/// Sends `data` as DATA frames no faster than the client's window opens (the last one with
/// END_STREAM when `last`); gives up after `idle` without window (a reader that never reads) or
/// when the client reset the stream.
pub(crate) async fn send_flow(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
    idle: Duration,
) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        // Window already open (the usual case for a short body): no timer.
        let n = match poll_fn(|cx| std::task::Poll::Ready(send.poll_capacity(cx))).await {
            std::task::Poll::Ready(Some(Ok(n))) if n > 0 => n,
            std::task::Poll::Ready(Some(Err(_)) | None) => return Err(()),
            _ => match timeout(idle, poll_fn(|cx| send.poll_capacity(cx))).await {
                Ok(Some(Ok(0))) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Some(Ok(n))) => n,
                _ => return Err(()),
            },
        };
        let chunk = data.split_to(n.min(data.len()));
        let end = last && data.is_empty();
        send.send_data(chunk, end).map_err(|_| ())?;
    }
    Ok(())
}
