//! An HTTP/2 stream forwarded over HTTP/2 to a target (`protocol_version = "http2"` or
//! `"grpc"`): the request body and the response flow at the same time (gRPC's client, server
//! and bidirectional streaming), each direction within the receiver's flow-control window, and
//! the target's trailers (`grpc-status`, `grpc-message`) reach the client as they are.
//!
//! Runs in the stream's task on the worker of its connection. The upstream stream belongs to
//! that task; its connection is pooled in the worker's `LocalTarget` and shared with other
//! streams. A `grpc-timeout` on the call bounds the whole exchange: when it passes, the target's
//! stream is reset and the client gets DEADLINE_EXCEEDED.

use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Response};
use tokio::time::{timeout, timeout_at, Instant};

use super::response::{connection_specific, send_flow};
use super::{BodyFail, Stream};
use crate::access_log::Exchange;
use crate::config::Stickiness;
use crate::http::rewrite::{HeaderOps, RequestId, ResponseAdds, Rewrites};
use crate::http2::grpc;
use crate::http2::upstream::{request, H2Up};
use crate::metrics::{ErrorKind, ListenerSlot};
use crate::sticky::Affinity;

/// The message of a call ended by its own `grpc-timeout`.
const DEADLINE_MESSAGE: &str = "ringlb: call deadline (grpc-timeout) exceeded";

/// How the forwarding of one stream ended, when it did not end with a whole response.
enum Ended {
    /// The response went to the client (whole, or reset on the way).
    Done,
    /// Nothing was sent to the client: answer with this status.
    Answer(u16),
    /// The call's `grpc-timeout` passed before the response head.
    Deadline,
    /// No response head came (a timeout, the target reset the stream or closed): counted toward
    /// the target's `passive_failures`, then answered with this status.
    Failed(ErrorKind, u16),
}

impl Stream {
    /// Forwards the stream (its forwarded HTTP/1.1 head in `fwd`) to the group's targets over
    /// HTTP/2. True when the exchange counts toward latency (it was forwarded or answered).
    pub(super) async fn forward_h2(
        &mut self,
        fwd: Vec<u8>,
        mut body: RecvStream,
        end_stream: bool,
        te_trailers: bool,
        deadline: Option<Duration>,
        rw: &Rewrites,
    ) {
        let scheme = if self.group.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let fallback = self.conn.plan.bound.to_string();
        let req = request::from_h1(&fwd, scheme, &fallback, te_trailers);
        crate::io::bufs::give(fwd);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(listener = %self.conn.plan.name, client = %self.conn.peer, error = %e, "request has no HTTP/2 form");
                self.stats().error(ErrorKind::BadRequest);
                self.send_error(400, &[]).await;
                return;
            }
        };
        let deadline = deadline.map(|d| Instant::now() + d);
        let sent = async { self.cx().send_h2(&req, end_stream).await };
        let up = match deadline {
            Some(at) => match timeout_at(at, sent).await {
                Ok(up) => up,
                Err(_) => {
                    self.send_deadline().await;
                    return;
                }
            },
            None => sent.await,
        };
        let mut up = match up {
            Ok(up) => up,
            Err((status, extra)) => {
                self.send_error(status, extra).await;
                return;
            }
        };
        drop(req);
        // The client's response stream, once its head went out.
        let mut answer: Option<SendStream<Bytes>> = None;
        let rid = self.ex.request_id.get();
        let grpc = self.grpc;
        let upload = up.body.take();
        let ended = {
            let limits = &self.conn.plan.limits;
            let stats = self.conn.plan.stats.slot(self.conn.w.id);
            let relay = Relay {
                respond: &mut self.respond,
                ex: &self.ex,
                stats,
                head_request: self.head_request,
                grpc: self.grpc,
                response_timeout: self.group.settings.response_timeout,
                idle: limits.idle_timeout,
                deadline,
                ops: &rw.response,
                id: self.conn.plan.request_id.as_deref().zip(rid.as_ref()),
                sticky: self
                    .group
                    .config
                    .stickiness
                    .as_ref()
                    .map(|st| (st, &self.affinity, self.conn.plan.scheme == "https")),
            };
            let relay = relay.run(&mut up, &mut answer);
            tokio::pin!(relay);
            match upload {
                None => Ok(relay.await),
                Some(send) => {
                    let pump = pump(
                        &mut body,
                        send,
                        Upload {
                            max_body: limits.max_body_bytes,
                            grpc,
                            idle: limits.idle_timeout,
                        },
                        &self.ex,
                        stats,
                    );
                    tokio::pin!(pump);
                    tokio::select! {
                        biased;
                        ended = &mut relay => Ok(ended),
                        res = &mut pump => match res {
                            Ok(()) => Ok(relay.await),
                            Err(fail) => Err(fail),
                        },
                    }
                }
            }
        };
        let ended = ended.unwrap_or_else(|fail| self.body_failed(fail, answer.as_mut()));
        if let Ended::Failed(kind, _) = ended {
            self.cx().upstream_failed(&up.target, kind);
        }
        // The target's stream is reset (CANCEL) if it is still open: dropping it says so.
        drop(up);
        drop(body);
        match ended {
            Ended::Answer(status) | Ended::Failed(_, status) => self.send_error(status, &[]).await,
            Ended::Deadline => self.send_deadline().await,
            Ended::Done => {}
        }
    }

    /// The call's `grpc-timeout` passed before its response began: DEADLINE_EXCEEDED to a gRPC
    /// client (504 to any other, counted as 504 either way).
    async fn send_deadline(&mut self) {
        if !self.grpc {
            return self.send_error(504, &[]).await;
        }
        self.stats().response(504);
        self.ex.status.set(504);
        let answer = grpc::trailers_only(grpc::DEADLINE_EXCEEDED, DEADLINE_MESSAGE);
        let _ = self.respond.send_response(answer, true);
    }

    /// What a request body that could not go whole to the target means for the client (whose
    /// response stream is `sent` when the response had started).
    fn body_failed(&self, fail: BodyFail, sent: Option<&mut SendStream<Bytes>>) -> Ended {
        let status = match fail {
            BodyFail::Timeout => {
                self.rejected(crate::guard::Rejection::BodyTimeout, 408);
                408
            }
            BodyFail::TooLarge => {
                self.rejected(crate::guard::Rejection::BodyTooLarge, 413);
                413
            }
            BodyFail::Upstream => {
                self.stats().error(ErrorKind::UpstreamReset);
                502
            }
            BodyFail::ClientGone => return Ended::Done,
        };
        match sent {
            None => Ended::Answer(status),
            // The response had started: a gRPC call ends with its status as trailers, anything
            // else is reset.
            Some(send) => {
                let t = grpc::trailers(grpc::status_for(status), grpc::message_for(status));
                if !self.grpc || send.send_trailers(t).is_err() {
                    send.send_reset(Reason::CANCEL);
                }
                Ended::Done
            }
        }
    }
}

/// The limits of a request body on its way up.
struct Upload {
    /// `max_body_bytes`: of the whole body, or of each message of a gRPC call (whose streams
    /// may carry any number of them, as gRPC's own max_receive_message_length counts).
    max_body: u64,
    grpc: bool,
    idle: Duration,
}

/// Streams the client's request body to the target's stream, releasing the client's window as
/// the target's opens, then the client's trailers (or the end of the stream).
async fn pump(
    body: &mut RecvStream,
    mut send: SendStream<Bytes>,
    limits: Upload,
    ex: &Exchange,
    stats: &ListenerSlot,
) -> Result<(), BodyFail> {
    let Upload {
        max_body,
        grpc,
        idle,
    } = limits;
    let mut total: u64 = 0;
    let mut messages = MessageSizes::default();
    loop {
        let data = match timeout(idle, body.data()).await {
            Err(_) => return Err(BodyFail::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyFail::ClientGone),
            Ok(Some(Ok(d))) => d,
        };
        if data.is_empty() {
            continue;
        }
        let n = data.len();
        total += n as u64;
        let over = if grpc {
            messages.scan(&data) > max_body
        } else {
            total > max_body
        };
        if over {
            send.send_reset(Reason::CANCEL);
            return Err(BodyFail::TooLarge);
        }
        if send_flow(&mut send, data, false, idle).await.is_err() {
            return Err(BodyFail::Upstream);
        }
        let _ = body.flow_control().release_capacity(n);
        ex.add_in(n as u64);
        stats.bytes(n as u64, 0);
    }
    let sent = match timeout(idle, body.trailers()).await {
        Ok(Ok(Some(t))) => send.send_trailers(t),
        Ok(Ok(None)) => send.send_data(Bytes::new(), true),
        Ok(Err(_)) => return Err(BodyFail::ClientGone),
        Err(_) => return Err(BodyFail::Timeout),
    };
    // Done sending: dropping the handle of a stream whose request side ended resets nothing
    // (the relay still holds its response side).
    sent.map_err(|_| BodyFail::Upstream)
}

/// The response half: what it borrows of the stream.
struct Relay<'a> {
    respond: &'a mut SendResponse<Bytes>,
    ex: &'a Exchange,
    stats: &'a ListenerSlot,
    head_request: bool,
    grpc: bool,
    response_timeout: Duration,
    idle: Duration,
    deadline: Option<Instant>,
    ops: &'a HeaderOps,
    id: Option<(&'a str, &'a RequestId)>,
    /// The group's stickiness, the request's cookies, and whether the listener is https.
    sticky: Option<(&'a Stickiness, &'a Affinity, bool)>,
}

impl Relay<'_> {
    fn limit(&self, wait: Duration) -> (Instant, bool) {
        let by = Instant::now() + wait;
        match self.deadline {
            Some(d) if d <= by => (d, true),
            _ => (by, false),
        }
    }

    /// Waits for the target's response head, sends it, then its body within the client's
    /// window, then its trailers. The client's response stream is kept in `slot` once the head
    /// went out.
    async fn run(self, up: &mut H2Up, slot: &mut Option<SendStream<Bytes>>) -> Ended {
        let Some(response) = up.response.take() else {
            return Ended::Answer(502);
        };
        let (by, is_deadline) = self.limit(self.response_timeout);
        let resp = match timeout_at(by, response).await {
            Err(_) => {
                if is_deadline {
                    return Ended::Deadline;
                }
                return Ended::Failed(ErrorKind::UpstreamTimeout, 504);
            }
            Ok(Err(e)) => {
                tracing::debug!(target = %up.target.target.addr, error = %e, "HTTP/2 upstream stream failed");
                return Ended::Failed(ErrorKind::UpstreamReset, 502);
            }
            Ok(Ok(r)) => r,
        };
        up.target.failures.set(0);
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let mut head = Response::new(());
        *head.status_mut() = parts.status;
        *head.headers_mut() = without_connection_fields(parts.headers);
        let cookie = self.sticky.and_then(|(st, asked, secure)| {
            let sets = |name: &str| {
                head.headers()
                    .get_all(http::header::SET_COOKIE)
                    .iter()
                    .any(|v| crate::sticky::sets_cookie(v.as_bytes(), name))
            };
            crate::sticky::response_cookie(st, asked, &up.target.token, sets, secure)
        });
        let adds = ResponseAdds {
            ops: self.ops,
            id: self.id,
            cookie: cookie.as_ref().map(|c| c.as_bytes()),
        };
        adds.apply(head.headers_mut());
        self.ex.response_head();
        self.ex.status.set(status);
        self.stats.response(status);
        let end = body.is_end_stream() || self.head_request;
        let Ok(send) = self.respond.send_response(head, end) else {
            // The client reset the stream.
            return Ended::Done;
        };
        let send = slot.insert(send);
        if end {
            return Ended::Done;
        }
        loop {
            let (by, is_deadline) = self.limit(self.response_timeout);
            let data = match timeout_at(by, body.data()).await {
                Err(_) => {
                    self.cut_short(send, is_deadline);
                    return Ended::Done;
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    self.stats.error(ErrorKind::UpstreamReset);
                    send.send_reset(Reason::INTERNAL_ERROR);
                    return Ended::Done;
                }
                Ok(Some(Ok(d))) => d,
            };
            let n = data.len();
            if send_flow(send, data, false, self.idle).await.is_err() {
                return Ended::Done;
            }
            let _ = body.flow_control().release_capacity(n);
            self.ex.add_out(n as u64);
            self.stats.bytes(0, n as u64);
        }
        let (by, is_deadline) = self.limit(self.response_timeout);
        let _ = match timeout_at(by, body.trailers()).await {
            Ok(Ok(Some(t))) => send.send_trailers(without_connection_fields(t)),
            Ok(Ok(None)) => send.send_data(Bytes::new(), true),
            Ok(Err(_)) => {
                self.stats.error(ErrorKind::UpstreamReset);
                send.send_reset(Reason::INTERNAL_ERROR);
                Ok(())
            }
            Err(_) => {
                self.cut_short(send, is_deadline);
                Ok(())
            }
        };
        Ended::Done
    }

    /// The response stopped coming in time: a gRPC call past its deadline ends with
    /// DEADLINE_EXCEEDED, anything else is reset (never taken for whole).
    fn cut_short(&self, send: &mut SendStream<Bytes>, deadline: bool) {
        if !deadline {
            self.stats.error(ErrorKind::UpstreamTimeout);
        }
        if self.grpc {
            let message = if deadline {
                DEADLINE_MESSAGE
            } else {
                grpc::message_for(504)
            };
            let t = grpc::trailers(grpc::DEADLINE_EXCEEDED, message);
            if send.send_trailers(t).is_ok() {
                return;
            }
        }
        send.send_reset(Reason::CANCEL);
    }
}

fn without_connection_fields(mut h: HeaderMap) -> HeaderMap {
    let names: Vec<_> = h
        .keys()
        .filter(|n| connection_specific(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
    h
}

/// Follows the gRPC length-prefixed messages of a request body across DATA frames (a 1-byte
/// compressed flag and a 4-byte big-endian length before each message).
#[derive(Default)]
struct MessageSizes {
    /// Prefix bytes of the next message seen so far.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass.
    left: u64,
    /// Length of the largest message announced so far.
    largest: u64,
}

impl MessageSizes {
    /// Walks `data`; returns the largest message length announced so far.
    fn scan(&mut self, mut data: &[u8]) -> u64 {
        while !data.is_empty() {
            if self.left > 0 {
                let take = self.left.min(data.len() as u64) as usize;
                self.left -= take as u64;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == 5 {
                let p = self.prefix;
                self.left = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                self.largest = self.largest.max(self.left);
                self.have = 0;
            }
        }
        self.largest
    }
}

#[cfg(test)]
mod tests {
    use super::MessageSizes;

    fn framed(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn message_lengths_are_followed_across_frames() {
        let mut bytes = framed(10);
        bytes.extend(framed(300));
        bytes.extend(framed(0));
        bytes.extend(framed(20));
        // Any split into DATA frames finds the same largest message.
        for cut in [1, 2, 3, 5, 7, 64, 1000] {
            let mut m = MessageSizes::default();
            let mut largest = 0;
            for piece in bytes.chunks(cut) {
                largest = m.scan(piece);
            }
            assert_eq!(largest, 300, "cut {cut}");
        }
        // A prefix alone announces its message.
        let mut m = MessageSizes::default();
        assert_eq!(m.scan(&[0, 0, 0x10, 0, 0]), 1 << 20);
    }
}
