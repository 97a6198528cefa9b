//! HTTP/1.1 proxying of one client connection: read a head in place, pick a target, forward the
//! rewritten head and the body, relay the response, repeat for keep-alive and pipelined requests.
//!
//! Runs as one task on the worker that accepted the connection; the connection's buffers and
//! state are owned by that task. Upstream connections are borrowed from the worker's per-target
//! pool and returned after a clean response.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::time::{timeout, timeout_at};

use crate::access_log::Exchange;
use crate::balance::Pick;
use crate::guard::{Rejection, RETRY_AFTER_SECS};
use crate::http::body::ChunkedDecoder;
use crate::http::error::write_own;
use crate::http::parse::{
    could_complete, parse_request, parse_response, write_request_head, write_response_head,
    BodyKind, ForwardInfo, Method, RequestHead, ResponseHead, Version,
};
use crate::http::relay::{relay_body, Framing, RelayError};
use crate::http::rewrite::{RequestAdds, RequestId, ResponseAdds, Rewrites};
use crate::io::{bufs, ParkRead, Stream};
use crate::metrics::ErrorKind;
use crate::pool::LocalTarget;
use crate::router::respond::write_answer;
use crate::router::{RequestView, Route};
use crate::target::{Group, Reason, State, WorkerSlot};
use crate::tls::MaybeTls;
use crate::worker::{ListenerPlan, Worker};

mod client;
mod h2up;
mod lifecycle;
mod upstream;
use lifecycle::{busy, Ended};
pub use lifecycle::{serve_parked, After, Idle};
pub(crate) use upstream::{connect_upstream, Cx, ResponseFail, RetryCause};

/// The request id field and value to add to a forwarded request, when ringlb made the id (one the
/// client sent is forwarded as it came).
pub(crate) fn generated_id<'a>(
    name: Option<&'a str>,
    id: Option<&'a RequestId>,
) -> Option<(&'a str, &'a RequestId)> {
    name.zip(id.filter(|i| i.generated))
}

/// A client connection's read buffer (one from the worker's free list); grows up to
/// `max_header_bytes` for large heads, and an idle connection gives it back (`io::park`).
pub const CLIENT_BUF: usize = bufs::SMALL;
/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most 1xx interim responses relayed before the final one.
pub const MAX_INTERIM: usize = 8;
/// Requests a busy spell serves before its client socket settles ([`crate::io::Stream::settle`]):
/// registered as a fixed file (the registration and its release are two system calls, so only
/// a connection that keeps sending pays for them; each later read and write then saves the
/// kernel's descriptor look-up and reference count) and read through a standing multishot
/// receive (no read submitted, and no poll armed, per request).
const FIXED_AFTER: u32 = 4;

/// What ended the wait for a request head.
enum HeadRead {
    Complete(usize),
    /// EOF, reset, idle timeout or drain between requests: close quietly.
    Closed,
    /// Nothing came for a while between requests: the read was withdrawn and the buffer given
    /// back; the connection waits parked.
    Parked,
    /// A bad or too slow request: answer with this status, then close.
    Reject(u16, ErrorKind),
    /// The HTTP/2 client preface (h2c by prior knowledge, on a listener with `http2`).
    Http2,
}

/// What a read between requests brought.
enum IdleRead {
    Bytes(usize),
    /// End of stream or an error: close quietly.
    Closed,
    /// Nothing for a while: the buffer is back on the free list.
    Parked,
}

/// How the client connection goes on after one exchange.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Next {
    KeepAlive,
    Close,
    /// A response whose end only the close marks was cut short: reset the client's connection,
    /// so it cannot take what it got for the whole body.
    Reset,
    /// A 101 was relayed: the connection becomes a tunnel to `ClientConn::upgraded`.
    Tunnel,
}

impl Next {
    /// At most `Close`: keep-alive becomes a close, a reset or tunnel stays.
    fn min_close(self) -> Next {
        match self {
            Next::KeepAlive => Next::Close,
            other => other,
        }
    }
}

/// Serves an accepted client connection (its TLS handshake, then requests) until it closes
/// or goes quiet between requests, then says what comes next (see [`serve_parked`]). `rbuf` holds
/// bytes already read from the client (after a PROXY protocol header): plain text for http
/// listeners, the start of the TLS handshake for https ones.
pub async fn serve_with(
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    client: Stream,
    peer: SocketAddr,
    rbuf: Vec<u8>,
) -> After {
    let (client, rbuf) = match &plan.tls {
        None => (MaybeTls::Plain(client), rbuf),
        Some(cfg) => {
            let limit = plan.limits.header_timeout;
            let accept =
                crate::tls::TlsStream::accept_with(client, cfg.config.clone(), limit, rbuf);
            match accept.await {
                Ok(s) => {
                    let h2 = plan.http2.is_some()
                        && s.alpn_protocol().as_deref() == Some(crate::tls::ALPN_H2);
                    let client = MaybeTls::Tls(Box::new(s));
                    if h2 {
                        return After::Http2(
                            Idle {
                                w,
                                plan,
                                client,
                                peer,
                            },
                            Vec::new(),
                        );
                    }
                    (client, Vec::new())
                }
                Err(e) => {
                    tracing::debug!(listener = %plan.name, client = %peer, error = %e, "TLS handshake failed");
                    let slot = plan.stats.slot(w.id);
                    slot.error(ErrorKind::TlsHandshake);
                    slot.tls_failed(crate::tls::client_auth::FailureReason::of(&e));
                    return After::Closed;
                }
            }
        }
    };
    busy(
        Idle {
            w,
            plan,
            client,
            peer,
        },
        rbuf,
    )
    .await
}

struct ClientConn {
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    /// The target group of the current request (the listener's, or the one a rule chose).
    group: Arc<Group>,
    client: MaybeTls,
    peer: SocketAddr,
    /// Bytes read from the client and not yet consumed (a head, body bytes, pipelined requests).
    rbuf: Vec<u8>,
    head: RequestHead,
    /// The current request as its access log line will tell it.
    ex: Exchange,
    /// After a 101: the upstream connection the tunnel goes to, and its target.
    upgraded: Option<(MaybeTls, Rc<LocalTarget>)>,
    /// What the current request's cookies say about stickiness.
    affinity: crate::sticky::Affinity,
    /// The response being written is the connection's last, held back for the FIN of the
    /// shutdown that follows it ([`ClientConn::last_response`]).
    corked: std::cell::Cell<bool>,
}

/// An upstream connection carrying one request.
pub(crate) struct Upstream {
    pub(crate) stream: MaybeTls,
    pub(crate) target: Rc<LocalTarget>,
    /// Upstream read buffer: the response head and any body bytes read with it.
    pub(crate) buf: Vec<u8>,
    pub(crate) head: ResponseHead,
    /// The forwarded request, kept for a retry; reused for the forwarded response head.
    pub(crate) out: Vec<u8>,
}

impl Upstream {
    /// Gives its buffers back; the connection and its target go on (to the pool or a tunnel).
    pub(crate) fn release(self) -> (MaybeTls, Rc<LocalTarget>) {
        let Upstream {
            stream,
            target,
            buf,
            out,
            ..
        } = self;
        bufs::give(buf);
        bufs::give(out);
        (stream, target)
    }
}

impl ClientConn {
    /// The stickiness cookie of a response from `target` (`sets_app_cookie`: whether the
    /// response sets the named application cookie).
    fn response_cookie(
        &self,
        target: &LocalTarget,
        sets_app_cookie: impl FnOnce(&str) -> bool,
    ) -> Option<crate::sticky::SetCookie> {
        let st = self.group.config.stickiness.as_ref()?;
        crate::sticky::response_cookie(
            st,
            &self.affinity,
            &target.token,
            sets_app_cookie,
            self.plan.scheme == "https",
        )
    }

    /// What the upstream half borrows of this connection's current request.
    fn cx(&self) -> Cx<'_> {
        Cx {
            w: &self.w,
            plan: &self.plan,
            group: &self.group,
            ex: &self.ex,
            peer: self.peer.ip(),
            sticky: self.affinity.token.as_ref(),
        }
    }

    async fn send_request(
        &self,
        out: Vec<u8>,
        complete: bool,
        method: Method,
    ) -> Result<Upstream, Failure> {
        self.cx().send_request(out, complete, method).await
    }

    async fn read_response_head(
        &self,
        up: &mut Upstream,
        method: Method,
    ) -> Result<(), ResponseFail> {
        self.cx().read_response_head(up, method).await
    }

    fn abandon(&self, up: Upstream) {
        self.cx().abandon(up)
    }

    async fn run(&mut self) -> Ended {
        // The plan the exchanges borrow their router and rewrites from: one reference per busy
        // spell (and per reload), not per request, since a reference count is a write every
        // worker's connections to the listener share.
        let mut plan = self.plan.clone();
        let mut served = 0u32;
        loop {
            self.ex.reset();
            let head_len = match self.read_head().await {
                HeadRead::Complete(n) => n,
                HeadRead::Parked => return Ended::Parked,
                HeadRead::Http2 => return Ended::Http2,
                HeadRead::Closed => break,
                HeadRead::Reject(status, kind) => {
                    self.stats().error(kind);
                    self.rejected(Rejection::from_status(status), status);
                    self.ex.add_in(self.rbuf.len() as u64);
                    self.send_error(status, true, &[]).await;
                    self.log_request();
                    break;
                }
            };
            // The head is here: it goes by the listener's current plan.
            self.follow_reload();
            if !Arc::ptr_eq(&plan, &self.plan) {
                plan = self.plan.clone();
            }
            self.note_head(head_len);
            let started = Instant::now();
            if !self.allow_request(started) {
                // Over the per-IP rate: 429, and close (an unread body must not be taken for a request).
                self.rejected(Rejection::RateLimited, 429);
                self.send_error(429, true, &[("Retry-After", RETRY_AFTER_SECS)])
                    .await;
                self.log_request();
                break;
            }
            let next = self.exchange(&plan, head_len).await;
            self.w
                .record_latency(self.plan.index, started.elapsed().as_micros() as u64);
            self.log_request();
            served += 1;
            if served == FIXED_AFTER {
                self.client.stream().settle();
            }
            if next == Next::Reset {
                reset(&self.client);
                return Ended::Closed;
            }
            if next == Next::Tunnel {
                // Logged above, at the 101: the tunnel's own life is not the request's.
                return Ended::Tunnel;
            }
            // Draining: a response that went out as keep-alive just before the drain began may
            // have a next request already on its way. Within the drain's grace for idle clients
            // it is read and answered (with `Connection: close`); after it, the connection closes.
            if next == Next::Close || self.w.idle_closing() {
                break;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 2 * CLIENT_BUF {
                // Grown for a large head: back to the free list's size.
                bufs::give(std::mem::take(&mut self.rbuf));
            } else if self.rbuf.capacity() > 2 * CLIENT_BUF && self.rbuf.len() <= CLIENT_BUF {
                self.rbuf.shrink_to(CLIENT_BUF);
            }
        }
        // Nothing is in flight on the socket here (a timed-out operation shut it down already),
        // so closing it says all a shutdown would; but TLS still owes the client its
        // close_notify, and a corked last response waits for a shutdown (a close with unread
        // bytes would send a reset and drop it).
        if matches!(self.client, MaybeTls::Tls(_)) || self.corked.get() {
            let _ = self.client.shutdown(std::net::Shutdown::Both);
        }
        bufs::give(std::mem::take(&mut self.rbuf));
        Ended::Closed
    }

    /// Before each request: a reload may have replaced the listener's plan (rules, groups and
    /// their targets); the request goes by the new one, so keep-alive clients move off removed
    /// targets at once. A listener the reload removed keeps serving its open connections by
    /// its last plan until they close.
    fn follow_reload(&mut self) {
        if self.w.plan_is(&self.plan) {
            return;
        }
        if let Some(plan) = self.w.plan(self.plan.index) {
            self.group = plan.group.clone();
            self.plan = plan;
        }
    }

    /// Takes a request token from the client's per-IP bucket (always true without a rate limit).
    #[inline]
    fn allow_request(&self, now: Instant) -> bool {
        self.w
            .guard(self.plan.index)
            .is_none_or(|g| g.allow_request(self.peer.ip(), now))
    }

    /// Counts a refusal and logs it, at most a few lines a second per worker.
    fn rejected(&self, r: Rejection, status: u16) {
        self.stats().rejected(r);
        if let Some(g) = self.w.guard(self.plan.index) {
            if g.may_log(Instant::now()) {
                tracing::info!(listener = %self.plan.name, client = %self.peer, status, reason = r.label(), "request refused");
            }
        }
    }

    /// A complete head arrived: its bytes count in, and the log line notes what it asked.
    fn note_head(&self, head_len: usize) {
        self.ex.add_in(head_len as u64);
        if self.w.access_logs().enabled(self.plan.index) {
            self.ex.capture(&self.rbuf, &self.head);
        }
    }

    /// Appends the current request's access log line (when the listener has an access log).
    fn log_request(&self) {
        let logs = self.w.access_logs();
        if logs.enabled(self.plan.index) {
            logs.log(
                self.plan.index,
                self.peer,
                self.client.tls_version(),
                self.client.client_cert().map(|c| &**c),
                &self.ex,
            );
        }
    }

    fn stats(&self) -> &crate::metrics::ListenerSlot {
        self.plan.stats.slot(self.w.id)
    }

    /// One request/response exchange. `rbuf[..head_len]` is the parsed head; `plan` is
    /// `self.plan`, lent by the busy spell.
    async fn exchange(&mut self, plan: &crate::worker::ListenerPlan, head_len: usize) -> Next {
        let method = self.head.method;
        let client_keep = self.head.keep_alive;
        let limits = &self.plan.limits;

        // Body framing and how much of the body is already buffered.
        let mut framing = match self.head.body {
            BodyKind::Length(n) if n > limits.max_body_bytes => {
                self.stats().error(ErrorKind::BadRequest);
                self.rejected(Rejection::BodyTooLarge, 413);
                self.send_error(413, true, &[]).await;
                return Next::Close;
            }
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => {
                Framing::Chunked(ChunkedDecoder::for_request(limits.max_body_bytes))
            }
            BodyKind::Empty | BodyKind::CloseDelimited => Framing::Length(0),
        };
        if let Some(name) = &plan.request_id {
            let sent = self.head.header(&self.rbuf, name);
            self.ex.request_id.set(Some(RequestId::for_request(sent)));
        }
        let route = plan.router.route(&RequestView {
            buf: &self.rbuf,
            head: &self.head,
            source: self.peer.ip(),
            client_cert_subject: self.client.client_cert().map(|c| &*c.subject_match),
        });
        let rw = match route {
            Route::Forward(g, rw) => {
                // A reference is taken only when the group changes: most requests go where the
                // last one went, and a clone is an atomic write all workers share.
                if !Arc::ptr_eq(g, &self.group) {
                    self.group = g.clone();
                }
                rw
            }
            answer => return self.answer(answer, head_len, framing, client_keep).await,
        };
        self.affinity = match &self.group.config.stickiness {
            Some(st) => crate::sticky::from_request(st, &self.rbuf, &self.head),
            None => Default::default(),
        };
        if self.head.expect_continue && !framing.is_done() && self.rbuf.len() == head_len {
            let (res, b) = self
                .write_client(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await;
            drop(b);
            if res.is_err() {
                return Next::Close;
            }
        }

        let mut out = self.w.take_buf();
        let fwd = ForwardInfo {
            client_ip: self.peer.ip(),
            proto: self.plan.scheme,
            port: self.plan.bound.port(),
            client_cert: self.client.client_cert().map(|c| &**c),
        };
        let rid = self.ex.request_id.get();
        let adds = RequestAdds {
            ops: &rw.request,
            id: generated_id(plan.request_id.as_deref(), rid.as_ref()),
        };
        write_request_head(&self.rbuf, &self.head, &fwd, &adds, &mut out);
        if self.group.settings.version.is_h2() {
            // Boxed: the HTTP/2 exchange's state (about 8 KiB) would otherwise be inlined into
            // every connection's future, and copied whenever one is spawned or boxed.
            return crate::boxed::pinned(|| {
                self.exchange_h2(head_len, framing, out, client_keep, rw)
            })
            .await;
        }
        // Body bytes that arrived with the head go out with it.
        let body_avail = &self.rbuf[head_len..];
        let taken = match framing.consume(body_avail) {
            Ok(n) => n,
            Err(e) => {
                self.w.give_buf(out);
                self.stats().error(ErrorKind::BadRequest);
                self.rejected(Rejection::from_status(e.status()), e.status());
                self.send_error(e.status(), true, &[]).await;
                return Next::Close;
            }
        };
        out.extend_from_slice(&body_avail[..taken]);
        self.ex.add_in(taken as u64);
        let consumed = head_len + taken;
        let complete = framing.is_done();
        // Whole request buffered: it can be retried. Otherwise the rest streams from the client.
        self.rbuf.drain(..consumed);

        let upstream = match self.send_request(out, complete, method).await {
            Ok(u) => u,
            Err((status, extra)) => {
                if !complete {
                    // The unread body would be taken for the next request: close.
                    self.send_error(status, true, extra).await;
                    return Next::Close;
                }
                self.send_error(status, !client_keep, extra).await;
                return if client_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        };
        let (upstream, framing_left) = if complete {
            (upstream, None)
        } else {
            (upstream, Some(framing))
        };
        self.finish(upstream, framing_left, method, client_keep, rw)
            .await
    }

    /// Streams the rest of the request body (if any), then relays the response to the client and
    /// parks the upstream connection when it can be reused.
    async fn finish(
        &mut self,
        mut up: Upstream,
        body_left: Option<Framing>,
        method: Method,
        client_keep: bool,
        rw: &Rewrites,
    ) -> Next {
        let limits_idle = self.plan.limits.idle_timeout;
        let resp_timeout = self.group.settings.response_timeout;
        let mut client_keep = client_keep;
        if let Some(mut framing) = body_left {
            let buf = self.w.take_buf();
            let res = relay_body(
                &self.client,
                &up.stream,
                buf,
                &mut framing,
                limits_idle,
                resp_timeout,
                &self.ex.bytes_in,
            )
            .await;
            let early = match res {
                Ok(leftover) => {
                    self.rbuf.extend_from_slice(&leftover);
                    self.w.give_buf(leftover);
                    false
                }
                // The target stopped taking the body: if it answered first (a 413 or a 401 for
                // an upload it refuses, then closed), its answer is the response, not a 502.
                // The client's connection then closes: the rest of its body is not read.
                Err(RelayError::WriteFailed) if self.cx().early_response(&mut up, method).await => {
                    client_keep = false;
                    true
                }
                Err(e) => {
                    self.abandon(up);
                    let status = match e {
                        RelayError::ReadTimeout => Some(408),
                        RelayError::Framing(b) => Some(b.status()),
                        RelayError::WriteFailed => Some(502),
                        RelayError::ReadFailed | RelayError::Truncated => None,
                    };
                    if let Some(status) = status {
                        self.stats().error(if status == 502 {
                            ErrorKind::UpstreamReset
                        } else {
                            ErrorKind::BadRequest
                        });
                        match status {
                            502 => {}
                            408 => self.rejected(Rejection::BodyTimeout, status),
                            _ => self.rejected(Rejection::from_status(status), status),
                        }
                        self.send_error(status, true, NO_HEADERS).await;
                    }
                    return Next::Close;
                }
            };
            if early {
                // Its head is in `up`, read above.
            } else if let Err(fail) = self.read_response_head(&mut up, method).await {
                self.cx().response_failed(&up.target, &fail);
                let status = fail.status();
                self.abandon(up);
                self.send_error(status, !client_keep, NO_HEADERS).await;
                return if client_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        }

        // Interim 1xx responses (103 Early Hints, ...) go to the client as they are; an HTTP/1.0
        // client must not get any (it would take one for the response).
        let mut interim = 0;
        while up.head.is_interim() {
            interim += 1;
            let hl = up.head.head_len;
            let res = if self.head.version == Version::Http10 {
                Ok(())
            } else {
                let head_bytes = up.buf[..hl].to_vec();
                self.write_client(head_bytes).await.0
            };
            up.buf.drain(..hl);
            if res.is_err() || interim > MAX_INTERIM {
                self.abandon(up);
                return Next::Close;
            }
            if let Err(fail) = self.read_response_head(&mut up, method).await {
                let status = fail.status();
                self.abandon(up);
                self.send_error(status, true, NO_HEADERS).await;
                return Next::Close;
            }
        }

        let upgrade = up.head.upgrade && self.head.upgrade;
        // An HTTP/1.0 client has no Transfer-Encoding: a chunked body reaches it as its data,
        // ended by a close, and a body in any other coding (gzip, ...) cannot reach it at all.
        let dechunk = self.head.version == Version::Http10;
        let undeliverable = (up.head.upgrade && !self.head.upgrade)
            || (dechunk && up.head.te_other_coding && up.head.body != BodyKind::Empty);
        if undeliverable {
            // A 101 the client did not ask for, or a coding an HTTP/1.0 client cannot be told.
            self.abandon(up);
            self.stats().error(ErrorKind::BadResponse);
            self.send_error(502, true, NO_HEADERS).await;
            return Next::Close;
        }
        let mut framing = match up.head.body {
            BodyKind::Empty => Framing::Length(0),
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked if dechunk => Framing::Dechunk(ChunkedDecoder::new(u64::MAX)),
            BodyKind::Chunked => Framing::Chunked(ChunkedDecoder::new(u64::MAX)),
            // A body the target ends by closing goes chunked to an HTTP/1.1 client, whose
            // connection then stays open (as nginx does); an HTTP/1.0 client gets it as is.
            BodyKind::CloseDelimited if !dechunk && !upgrade && !up.head.te_other_coding => {
                Framing::Rechunk
            }
            BodyKind::CloseDelimited => Framing::UntilEof,
        };
        let close_delimited = matches!(framing, Framing::UntilEof);
        let rechunk = matches!(framing, Framing::Rechunk);
        let dechunked = matches!(framing, Framing::Dechunk(_));
        let keep =
            client_keep && !close_delimited && !dechunked && !upgrade && !self.w.is_draining();

        let mut out = std::mem::take(&mut up.out);
        out.clear();
        let cookie = self.response_cookie(&up.target, |name| {
            up.head.headers.iter().any(|h| {
                h.name.of(&up.buf).eq_ignore_ascii_case(b"set-cookie")
                    && crate::sticky::sets_cookie(h.value.of(&up.buf), name)
            })
        });
        let rid = self.ex.request_id.get();
        let adds = ResponseAdds {
            ops: &rw.response,
            id: self.plan.request_id.as_deref().zip(rid.as_ref()),
            cookie: cookie.as_ref().map(|c| c.as_bytes()),
        };
        write_response_head(
            &up.buf,
            &up.head,
            self.head.version,
            keep || upgrade,
            rechunk,
            &adds,
            &mut out,
        );
        let hl = up.head.head_len;
        let (taken, send) = if upgrade {
            (up.buf.len() - hl, up.buf.len() - hl)
        } else {
            match framing.forward(&mut up.buf[hl..]) {
                Ok(n) => n,
                Err(_) => {
                    self.w.give_buf(out);
                    self.abandon(up);
                    self.stats().error(ErrorKind::BadResponse);
                    self.send_error(502, true, NO_HEADERS).await;
                    return Next::Close;
                }
            }
        };
        // The response goes to the client: count it (a refused one above counts as its 502).
        let status = up.head.status;
        self.ex.response_head();
        self.ex.status.set(status);
        up.target.failures.set(0);
        self.stats().response(status);
        let extra = up.buf.len() - hl - taken;
        if !keep && !upgrade && framing.is_done() {
            self.last_response();
        }
        if rechunk {
            crate::http::relay::push_chunk(&mut out, &up.buf[hl..hl + send]);
            let (res, o) = self.write_client(out).await;
            self.w.give_buf(o);
            if res.is_err() {
                self.abandon(up);
                return Next::Close;
            }
        } else if send <= INLINE_BODY {
            out.extend_from_slice(&up.buf[hl..hl + send]);
            let (res, o) = self.write_client(out).await;
            self.w.give_buf(o);
            if res.is_err() {
                self.abandon(up);
                return Next::Close;
            }
        } else {
            let (res, o) = self.write_client(out).await;
            self.w.give_buf(o);
            let buf = std::mem::take(&mut up.buf);
            let (res2, buf) = match res {
                Ok(()) => self.write_client_range(buf, hl, hl + send).await,
                Err(()) => (Err(()), buf),
            };
            up.buf = buf;
            if res2.is_err() {
                self.abandon(up);
                return Next::Close;
            }
        }

        if upgrade {
            // The head and the bytes that came with it have been written to the client.
            up.buf.clear();
            return self.tunnel(up).await;
        }

        let mut reusable = up.head.keep_alive && extra == 0 && !close_delimited && !rechunk;
        if !framing.is_done() {
            let buf = std::mem::take(&mut up.buf);
            match relay_body(
                &up.stream,
                &self.client,
                buf,
                &mut framing,
                resp_timeout,
                limits_idle,
                &self.ex.bytes_out,
            )
            .await
            {
                Ok(leftover) => {
                    reusable &= leftover.is_empty();
                    up.buf = leftover;
                }
                Err(e) => {
                    let upstream_failed = !matches!(e, RelayError::WriteFailed);
                    if upstream_failed {
                        self.stats().error(ErrorKind::UpstreamReset);
                    }
                    self.abandon(up);
                    // Where a close ends the body for the client, a plain close would pass the
                    // truncated body off as whole. (A de-chunked body whose last chunk came is
                    // whole: only trailers, which HTTP/1.0 clients never see, were missing.)
                    let close_ends_body = close_delimited
                        || matches!(&framing, Framing::Dechunk(d) if !d.data_done());
                    return if upstream_failed && close_ends_body {
                        Next::Reset
                    } else {
                        Next::Close
                    };
                }
            }
        }
        up.target.end();
        let Upstream {
            stream,
            target,
            buf,
            ..
        } = up;
        self.w.give_buf(buf);
        if reusable {
            target.put_idle(stream);
        }
        if keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// After a 101: the connection is to become a two-way tunnel. Bytes the client sent after
    /// its upgrade request go to the target first; the tunnel itself runs outside the busy
    /// spell (see `lifecycle.rs`), so it keeps none of the request's state.
    async fn tunnel(&mut self, up: Upstream) -> Next {
        if !self.rbuf.is_empty() {
            let pending = std::mem::take(&mut self.rbuf);
            let (res, pending) = up.stream.write_all(pending).await;
            bufs::give(pending);
            if res.is_err() {
                self.abandon(up);
                return Next::Close;
            }
        }
        self.upgraded = Some(up.release());
        Next::Tunnel
    }

    /// Answers a request a rule redirects or answers itself. The connection stays open when the
    /// client keeps it and the whole request body (if any) has already arrived, so it can be
    /// skipped; otherwise the answer closes it.
    async fn answer(
        &mut self,
        answer: Route<'_>,
        head_len: usize,
        mut framing: Framing,
        client_keep: bool,
    ) -> Next {
        let avail = self.rbuf.get(head_len..).unwrap_or(&[]);
        let body = match framing.consume(avail) {
            Ok(n) if framing.is_done() => Some(n),
            _ => None,
        };
        let keep = client_keep && body.is_some() && !self.head.upgrade && !self.w.is_draining();
        let mut out = self.w.take_buf();
        let (buf, head, plan) = (&self.rbuf, &self.head, &self.plan);
        let status = write_answer(&mut out, &answer, buf, head, plan.scheme, plan.bound, !keep);
        self.rbuf
            .drain(..(head_len + body.unwrap_or(0)).min(self.rbuf.len()));
        let Some(status) = status else {
            // Not an answer (a forward): nothing was written.
            self.w.give_buf(out);
            return Next::Close;
        };
        self.stats().response(status);
        self.ex.status.set(status);
        self.ex.add_in(body.unwrap_or(0) as u64);
        if !keep {
            // The connection's last response, whole in `out`: it leaves with the FIN.
            self.last_response();
        }
        let (res, out) = self.write_client(out).await;
        self.w.give_buf(out);
        if res.is_ok() && keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// Responses this small are copied behind the head and written with it in one write.
pub const INLINE_BODY: usize = 16 * 1024;
/// Growth step of an upstream read buffer.
pub const RELAY_CHUNK: usize = 16 * 1024;

pub(crate) type Failure = (u16, &'static [(&'static str, &'static str)]);
const NO_HEADERS: &[(&str, &str)] = &[];
const RETRY_AFTER: &[(&str, &str)] = &[("Retry-After", "5")];

/// Resets a client connection (RST, no FIN and no TLS close_notify): SO_LINGER 0, then the
/// descriptor closes when the connection is dropped. Bytes still in the send buffer are dropped,
/// which is the point: the client must see an error, not an end. (With io_uring the descriptor
/// closes once no operation on it is in flight; none is when a response is being relayed.)
fn reset(client: &MaybeTls) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor is owned by `client`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(client.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
}
