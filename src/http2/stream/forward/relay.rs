//! The response half of an HTTP/2 stream forwarded over HTTP/2: waits for the target's response
//! head, sends it with ringlb's additions (rewrites, request id, stickiness cookie), then the body
//! within the client's window, then the trailers. A client that resets its stream ends the wait
//! at once (the target's stream is then reset too).
//!
//! Runs in the stream's task; borrows what it needs of the stream ([`Relay`]).

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::{HeaderMap, Response};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{Ended, Progress};
use crate::access_log::Exchange;
use crate::config::Stickiness;
use crate::http::rewrite::{HeaderOps, RequestId, ResponseAdds};
use crate::http2::grpc;
use crate::http2::stream::response::{connection_specific, send_flow};
use crate::http2::upstream::H2Up;
use crate::metrics::{ErrorKind, ListenerSlot};
use crate::sticky::Affinity;

/// A wait without a limit of its own.
pub(super) const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The response half: what it borrows of the stream.
pub(super) struct Relay<'a> {
    pub respond: &'a mut SendResponse<Bytes>,
    pub ex: &'a Exchange,
    pub stats: &'a ListenerSlot,
    pub head_request: bool,
    pub grpc: bool,
    pub response_timeout: Duration,
    pub idle: Duration,
    pub deadline: Option<Instant>,
    pub ops: &'a HeaderOps,
    pub id: Option<(&'a str, &'a RequestId)>,
    /// The group's stickiness, the request's cookies, and whether the listener is https.
    pub sticky: Option<(&'a Stickiness, &'a Affinity, bool)>,
    pub progress: &'a Progress,
}

/// What a wait ended with.
enum Wait<T> {
    Got(T),
    /// `response_timeout` (false) or the call's deadline (true) passed.
    Late(bool),
    /// The client reset its stream.
    ClientGone,
}

impl Relay<'_> {
    /// `wait` from now, or the call's deadline if that comes first (true).
    fn limit(&self, wait: Duration) -> (Instant, bool) {
        let by = Instant::now() + wait;
        match self.deadline {
            Some(d) if d <= by => (d, true),
            _ => (by, false),
        }
    }

    /// Waits for the response head: the response timeout runs from the end of the upload (the
    /// call's deadline from its start); a client reset ends the wait.
    async fn head(
        &mut self,
        response: &mut h2::client::ResponseFuture,
    ) -> Wait<Result<http::Response<h2::RecvStream>, h2::Error>> {
        let progress = self.progress;
        let mut limit = if progress.uploading.get() {
            (
                self.deadline.unwrap_or_else(|| Instant::now() + FOREVER),
                true,
            )
        } else {
            self.limit(self.response_timeout)
        };
        loop {
            let respond = &mut *self.respond;
            tokio::select! {
                biased;
                r = &mut *response => return Wait::Got(r),
                _ = poll_fn(|cx| respond.poll_reset(cx)) => return Wait::ClientGone,
                _ = progress.done.notified(), if progress.uploading.get() => {
                    limit = self.limit(self.response_timeout);
                }
                _ = sleep_until(limit.0) => {
                    if progress.uploading.get() && !limit.1 {
                        continue;
                    }
                    return Wait::Late(limit.1 && self.deadline.is_some_and(|d| d <= Instant::now()));
                }
            }
        }
    }

    /// Waits for `f` within `response_timeout` (or the deadline); a client reset ends the wait.
    async fn within<T>(
        &self,
        send: &mut SendStream<Bytes>,
        f: impl std::future::Future<Output = T>,
    ) -> Wait<T> {
        let (by, is_deadline) = self.limit(self.response_timeout);
        tokio::select! {
            biased;
            r = timeout_at(by, f) => match r {
                Ok(v) => Wait::Got(v),
                Err(_) => Wait::Late(is_deadline),
            },
            _ = poll_fn(|cx| send.poll_reset(cx)) => Wait::ClientGone,
        }
    }

    /// Waits for the target's response head, sends it, then its body within the client's
    /// window, then its trailers. The client's response stream is kept in `slot` once the head
    /// went out.
    pub(super) async fn run(
        mut self,
        up: &mut H2Up,
        slot: &mut Option<SendStream<Bytes>>,
    ) -> Ended {
        let Some(mut response) = up.response.take() else {
            return Ended::Answer(502);
        };
        let resp = match self.head(&mut response).await {
            Wait::ClientGone => return Ended::Done,
            Wait::Late(true) => return Ended::Deadline,
            Wait::Late(false) => return Ended::Failed(ErrorKind::UpstreamTimeout, 504),
            Wait::Got(Err(e)) => {
                tracing::debug!(target = %up.target.target.addr, error = %e, "HTTP/2 upstream stream failed");
                return if crate::http2::upstream::unprocessed(&e) {
                    Ended::Refused
                } else {
                    Ended::Failed(ErrorKind::UpstreamReset, 502)
                };
            }
            Wait::Got(Ok(r)) => r,
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
        self.progress.responding.set(true);
        let send = slot.insert(send);
        if end {
            return Ended::Done;
        }
        loop {
            let data = match self.within(send, body.data()).await {
                Wait::ClientGone => return Ended::Done,
                Wait::Late(deadline) => {
                    self.cut_short(send, deadline);
                    return Ended::Done;
                }
                Wait::Got(None) => break,
                Wait::Got(Some(Err(e))) => {
                    self.upstream_broke(send, &e);
                    return Ended::Done;
                }
                Wait::Got(Some(Ok(d))) => d,
            };
            let n = data.len();
            if send_flow(send, data, false, self.idle).await.is_err() {
                return Ended::Done;
            }
            let _ = body.flow_control().release_capacity(n);
            self.ex.add_out(n as u64);
            self.stats.bytes(0, n as u64);
        }
        let _ = match self.within(send, body.trailers()).await {
            Wait::Got(Ok(Some(t))) => send.send_trailers(without_connection_fields(t)),
            Wait::Got(Ok(None)) => send.send_data(Bytes::new(), true),
            Wait::Got(Err(e)) => {
                self.upstream_broke(send, &e);
                Ok(())
            }
            Wait::Late(deadline) => {
                self.cut_short(send, deadline);
                Ok(())
            }
            Wait::ClientGone => Ok(()),
        };
        Ended::Done
    }

    /// The target's stream broke mid-response: a gRPC call ends UNAVAILABLE (a status its client
    /// may retry on), anything else is reset (never taken for whole).
    fn upstream_broke(&self, send: &mut SendStream<Bytes>, e: &h2::Error) {
        tracing::debug!(error = %e, "HTTP/2 upstream stream broke mid-response");
        self.stats.error(ErrorKind::UpstreamReset);
        if self.grpc {
            let t = grpc::trailers(grpc::UNAVAILABLE, "ringlb: upstream stream reset");
            if send.send_trailers(t).is_ok() {
                return;
            }
        }
        send.send_reset(Reason::INTERNAL_ERROR);
    }

    /// The response stopped coming in time: a gRPC call past its deadline ends with
    /// DEADLINE_EXCEEDED, anything else is reset (never taken for whole).
    fn cut_short(&self, send: &mut SendStream<Bytes>, deadline: bool) {
        if !deadline {
            self.stats.error(ErrorKind::UpstreamTimeout);
        }
        if self.grpc {
            let message = if deadline {
                super::DEADLINE_MESSAGE
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
