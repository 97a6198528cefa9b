//! An HTTP/2 stream forwarded over HTTP/2 to a target (`protocol_version = "http2"` or
//! `"grpc"`): the request body and the response flow at the same time (gRPC's client, server
//! and bidirectional streaming), each direction within the receiver's flow-control window, and
//! the target's trailers (`grpc-status`, `grpc-message`) reach the client as they are.
//!
//! Runs in the stream's task on the worker of its connection. The upstream stream belongs to
//! that task; its connection is pooled in the worker's `LocalTarget` and shared with other
//! streams. The upload is this file's ([`pump`]); the response half is `forward/relay.rs`.
//! - A `grpc-timeout` bounds the whole exchange: when it passes, the target's stream is reset
//!   and the client gets DEADLINE_EXCEEDED.
//! - `response_timeout` counts from the end of the upload (a long client stream is not late).
//! - Once the response has begun, the client may go quiet (a bidirectional call); a target that
//!   stops reading the upload ends only the upload, and the response goes on.
//! - A stream the target refused unprocessed (REFUSED_STREAM, or cut by its GOAWAY) is tried
//!   again on a fresh connection when it had no body.

mod relay;

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::sync::Notify;
use tokio::time::{timeout, timeout_at, Instant};

use super::response::send_flow;
use super::{BodyFail, Stream};
use crate::access_log::Exchange;
use crate::http::proxy::RetryCause;
use crate::http::rewrite::Rewrites;
use crate::http2::grpc;
use crate::http2::upstream::request;
use crate::metrics::{ErrorKind, ListenerSlot};
use relay::Relay;

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
    /// The target refused the stream without processing it: safe to send again.
    Refused,
}

/// What the upload tells the response half.
#[derive(Default)]
struct Progress {
    /// The upload is still under way.
    uploading: Cell<bool>,
    /// It ended (the response timeout starts then).
    done: Notify,
    /// The response head went to the client (the client may go quiet now).
    responding: Cell<bool>,
}

impl Stream {
    /// Forwards the stream (its forwarded HTTP/1.1 head in `fwd`) to the group's targets over
    /// HTTP/2.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_h2(
        &mut self,
        fwd: Vec<u8>,
        mut body: RecvStream,
        end_stream: bool,
        te_trailers: bool,
        expect_continue: bool,
        deadline: Option<Duration>,
        rw: &Rewrites,
    ) {
        let scheme = if self.group().upstream_tls.is_some() {
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
        if expect_continue && !end_stream {
            // The client waits for this before sending its body (the target is not asked).
            let _ = self
                .respond
                .send_informational(super::response::interim(100));
        }
        let deadline = deadline.map(|d| Instant::now() + d);
        // A bodyless idempotent request the target refused unprocessed goes once more; with
        // `retry_on` "reset" or "timeout", one whose target failed before any response byte
        // goes to another target (up to `retries`).
        let replayable = end_stream && self.head.method.is_idempotent();
        let mut may_resend = replayable;
        let mut failed: Vec<u64> = Vec::new();
        loop {
            let sent = async { self.cx().send_h2(&req, end_stream, &failed).await };
            let up = match deadline {
                Some(at) => match timeout_at(at, sent).await {
                    Ok(up) => up,
                    Err(_) => return self.send_deadline().await,
                },
                None => sent.await,
            };
            let mut up = match up {
                Ok(up) => up,
                // From send_h2 a 504 is a connect timeout: the target is unreachable, which a
                // gRPC client may retry (UNAVAILABLE), not a deadline of its own.
                Err((504, _)) if self.grpc => return self.send_grpc(504, grpc::UNAVAILABLE).await,
                Err((status, extra)) => return self.send_error(status, extra).await,
            };
            // The client's response stream, once its head went out.
            let mut answer: Option<SendStream<Bytes>> = None;
            let rid = self.ex.request_id.get();
            let progress = Progress::default();
            let upload = up.body.take();
            progress.uploading.set(upload.is_some());
            let ended = {
                let limits = &self.conn.plan.limits;
                let stats = self.conn.plan.stats.slot(self.conn.w.id);
                let group = self.routed.as_ref().unwrap_or(&self.conn.plan.group);
                let relay = Relay {
                    respond: &mut self.respond,
                    ex: &self.ex,
                    stats,
                    head_request: self.head_request,
                    grpc: self.grpc,
                    response_timeout: group.settings.response_timeout,
                    idle: limits.idle_timeout,
                    deadline,
                    ops: &rw.response,
                    id: self.conn.plan.request_id.as_deref().zip(rid.as_ref()),
                    sticky: group
                        .config
                        .stickiness
                        .as_ref()
                        .map(|st| (st, &self.affinity, self.conn.plan.scheme == "https")),
                    progress: &progress,
                };
                let relay = relay.run(&mut up, &mut answer);
                tokio::pin!(relay);
                match upload {
                    None => Ok(relay.await),
                    Some(send) => {
                        let limits = Upload {
                            max_body: limits.max_body_bytes,
                            grpc: self.grpc,
                            idle: limits.idle_timeout,
                        };
                        let pump = pump(&mut body, send, limits, &self.ex, stats, &progress);
                        tokio::pin!(pump);
                        tokio::select! {
                            biased;
                            ended = &mut relay => Ok(ended),
                            res = &mut pump => match res {
                                Ok(()) => Ok(relay.await),
                                // The target stopped reading the upload: the response decides.
                                Err(BodyFail::Upstream) => Ok(relay.await),
                                Err(fail) => Err(fail),
                            },
                        }
                    }
                }
            };
            let ended = ended.unwrap_or_else(|fail| self.body_failed(fail, answer.as_mut()));
            match ended {
                Ended::Refused if may_resend => {
                    may_resend = false;
                    up.retire_conn();
                    continue;
                }
                Ended::Refused => {
                    up.retire_conn();
                    drop(up);
                    self.stats().error(ErrorKind::UpstreamReset);
                    return self.send_error(502, &[]).await;
                }
                Ended::Failed(kind, _) => {
                    let timed_out = kind == ErrorKind::UpstreamTimeout;
                    if timed_out {
                        // A target silent past response_timeout may be a dead connection:
                        // new streams go to another.
                        up.retire_conn();
                    }
                    self.cx().upstream_failed(&up.target, kind);
                    failed.push(up.target.target.id);
                    let cause = if timed_out {
                        RetryCause::Timeout
                    } else {
                        RetryCause::Reset
                    };
                    if self.cx().may_retry(cause, replayable, failed.len()) {
                        continue;
                    }
                }
                _ => {}
            }
            // The target's stream is reset (CANCEL) if it is still open: dropping it says so.
            drop(up);
            drop(body);
            match ended {
                Ended::Answer(status) | Ended::Failed(_, status) => {
                    self.send_error(status, &[]).await
                }
                Ended::Deadline => self.send_deadline().await,
                Ended::Done | Ended::Refused => {}
            }
            return;
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

    /// One of ringlb's own answers to a gRPC call with `code` (counted as `status`).
    async fn send_grpc(&mut self, status: u16, code: u32) {
        self.stats().response(status);
        self.ex.status.set(status);
        let answer = grpc::trailers_only(code, grpc::message_for(status));
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
    /// The longest pause in the upload before the response began (after, a client may be
    /// quiet as long as it likes: a bidirectional call).
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
    progress: &Progress,
) -> Result<(), BodyFail> {
    let res = pump_body(body, &mut send, &limits, ex, stats, progress).await;
    progress.uploading.set(false);
    progress.done.notify_one();
    res
}

async fn pump_body(
    body: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    limits: &Upload,
    ex: &Exchange,
    stats: &ListenerSlot,
    progress: &Progress,
) -> Result<(), BodyFail> {
    let mut total: u64 = 0;
    let mut messages = MessageSizes::default();
    loop {
        let next = match timeout(limits.idle, body.data()).await {
            Ok(next) => next,
            // The response has begun: a quiet client is a bidirectional call, not a slow one.
            Err(_) if progress.responding.get() => body.data().await,
            Err(_) => return Err(BodyFail::Timeout),
        };
        let data = match next {
            None => break,
            Some(Err(_)) => return Err(BodyFail::ClientGone),
            Some(Ok(d)) => d,
        };
        if data.is_empty() {
            continue;
        }
        let n = data.len();
        total += n as u64;
        let over = if limits.grpc {
            messages.scan(&data) > limits.max_body
        } else {
            total > limits.max_body
        };
        if over {
            send.send_reset(Reason::CANCEL);
            return Err(BodyFail::TooLarge);
        }
        // The target's window: no time limit once the response flows (the target reads when it
        // likes), the idle timeout before.
        let wait = if progress.responding.get() {
            relay::FOREVER
        } else {
            limits.idle
        };
        if send_flow(send, data, false, wait).await.is_err() {
            return Err(BodyFail::Upstream);
        }
        let _ = body.flow_control().release_capacity(n);
        ex.add_in(n as u64);
        stats.bytes(n as u64, 0);
    }
    let sent = match timeout(limits.idle, body.trailers()).await {
        Ok(Ok(Some(mut t))) => {
            // The same fields an HTTP/1.1 target would not get (a client's X-Client-Cert*
            // among them).
            let drop: Vec<_> = t
                .keys()
                .filter(|n| super::head::forbidden_trailer(n.as_str()))
                .cloned()
                .collect();
            for n in drop {
                t.remove(n);
            }
            send.send_trailers(t)
        }
        Ok(Ok(None)) => send.send_data(Bytes::new(), true),
        Ok(Err(_)) => return Err(BodyFail::ClientGone),
        Err(_) => return Err(BodyFail::Timeout),
    };
    // Done sending: dropping the handle of a stream whose request side ended resets nothing
    // (the relay still holds its response side).
    sent.map_err(|_| BodyFail::Upstream)
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
