//! One HTTP/2 stream proxied as one HTTP/1.1 request: the request head is written in HTTP/1.1
//! form and parsed by the HTTP/1.1 parser (`head.rs`), routed and forwarded through the same
//! upstream code as an HTTP/1.1 client's request (`http::proxy::Cx`), and the response comes back
//! as HEADERS, DATA within the client's window, and trailers.
//!
//! Runs as its own task on the worker of its connection; the task owns the stream's buffers,
//! its upstream connection and its access log record. `ConnState` is the connection's, shared.

mod forward;
mod head;
mod response;

pub(crate) use response::send_flow;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;
use tokio::time::timeout;

use super::ConnState;
use crate::access_log::Exchange;
use crate::guard::{Rejection, RETRY_AFTER_SECS};
use crate::http::error::write_own;
use crate::http::parse::{parse_request, write_request_head, BodyKind, ForwardInfo, RequestHead};
use crate::http::proxy::{generated_id, Cx, Upstream};
use crate::http::rewrite::{RequestAdds, RequestId, ResponseAdds, Rewrites};
use crate::io::bufs;
use crate::metrics::ErrorKind;
use crate::router::respond::write_answer;
use crate::router::{RequestView, Route};
use crate::target::Group;

/// How a stream's request body ended when it could not go whole to the target.
enum BodyFail {
    /// Nothing came for `idle_timeout`.
    Timeout,
    /// Over `max_body_bytes`.
    TooLarge,
    /// The client reset the stream or the connection went away.
    ClientGone,
    /// The target's connection failed or timed out.
    Upstream,
}

/// Serves one stream, then accounts for it on its connection.
pub(super) async fn serve(
    conn: Rc<ConnState>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let mut s = Stream {
        routed: None,
        conn: conn.clone(),
        ex: Exchange::default(),
        respond,
        head_request: req.method() == http::Method::HEAD,
        grpc: super::grpc::is_grpc(req.headers()),
        affinity: Default::default(),
        h1: Vec::new(),
        head: RequestHead::new(),
    };
    // The stream's one clock reading at its start: latency, rate bucket and the log's start.
    let started = Instant::now();
    s.ex.start.set(Some(started));
    s.ex.set_protocol("HTTP/2");
    let counted = s.run(req).await;
    let end = Instant::now();
    if counted {
        let micros = end.saturating_duration_since(started).as_micros() as u64;
        conn.w.record_latency(conn.plan.index, micros);
    }
    s.log();
    bufs::give(std::mem::take(&mut s.h1));
    conn.active.set(conn.active.get().saturating_sub(1));
    conn.last_end.set(tokio::time::Instant::from_std(end));
}

struct Stream {
    conn: Rc<ConnState>,
    /// The group a rule chose, when not the listener's own (see [`Stream::group`]): a stream
    /// takes no reference on a shared group, so no per-stream atomic write.
    routed: Option<Arc<Group>>,
    ex: Exchange,
    respond: SendResponse<Bytes>,
    /// The request head in HTTP/1.1 form, as parsed into `head`.
    h1: Vec<u8>,
    head: RequestHead,
    /// The request is a HEAD: every response to it goes without a body.
    head_request: bool,
    /// The request is a gRPC call: ringlb's own answers to it are gRPC statuses.
    grpc: bool,
    /// What the request's cookies say about stickiness.
    affinity: crate::sticky::Affinity,
}

impl Stream {
    /// The group of the request: the one a rule chose, or the listener's.
    fn group(&self) -> &Arc<Group> {
        self.routed.as_ref().unwrap_or(&self.conn.plan.group)
    }

    fn stats(&self) -> &crate::metrics::ListenerSlot {
        self.conn.plan.stats.slot(self.conn.w.id)
    }

    fn cx(&self) -> Cx<'_> {
        Cx {
            w: &self.conn.w,
            plan: &self.conn.plan,
            group: self.group(),
            ex: &self.ex,
            peer: self.conn.peer.ip(),
            sticky: self.affinity.token.as_ref(),
        }
    }

    /// The response's additions (rewrites, request id, a stickiness cookie for `target`).
    fn response_adds<'a>(
        &'a self,
        rw: &'a Rewrites,
        target: &crate::pool::LocalTarget,
        sets_app_cookie: impl FnOnce(&str) -> bool,
        id: &'a Option<RequestId>,
        cookie: &'a mut Option<crate::sticky::SetCookie>,
    ) -> ResponseAdds<'a> {
        *cookie = self.group().config.stickiness.as_ref().and_then(|st| {
            crate::sticky::response_cookie(
                st,
                &self.affinity,
                &target.token,
                sets_app_cookie,
                self.conn.plan.scheme == "https",
            )
        });
        ResponseAdds {
            ops: &rw.response,
            id: self.conn.plan.request_id.as_deref().zip(id.as_ref()),
            cookie: cookie.as_ref().map(|c| c.as_bytes()),
        }
    }

    fn log(&self) {
        let logs = self.conn.w.access_logs();
        if logs.enabled(self.conn.plan.index) {
            logs.log(
                self.conn.plan.index,
                self.conn.peer,
                self.conn.tls,
                self.conn.client_cert.as_deref(),
                &self.ex,
            );
        }
    }

    /// Counts a refusal and logs it, at most a few lines a second per worker.
    fn rejected(&self, r: Rejection, status: u16) {
        self.stats().rejected(r);
        if let Some(g) = self.conn.w.guard(self.conn.plan.index) {
            if g.may_log(Instant::now()) {
                tracing::info!(listener = %self.conn.plan.name, client = %self.conn.peer, status, reason = r.label(), protocol = "HTTP/2", "request refused");
            }
        }
    }

    /// The request, from its head to the end of its response. True when it was forwarded or
    /// answered (its latency counts), false when it was refused or reset.
    async fn run(&mut self, req: Request<RecvStream>) -> bool {
        // A stream the client reset before it was taken goes no further (rapid reset).
        let reset = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(self.respond.poll_reset(cx).is_ready())
        })
        .await;
        if reset {
            return false;
        }
        let (parts, mut body) = req.into_parts();
        // The connection, not its plan, is cloned: an `Rc`, so no shared write per stream.
        let conn = self.conn.clone();
        let plan = &conn.plan;
        let end_stream = body.is_end_stream();
        // The HTTP/1.1 form of the head, then the HTTP/1.1 parser's verdict on it.
        let mut h1 = bufs::take_small();
        let shape = match head::write_h1(&parts, end_stream, &mut h1) {
            Ok(shape) => shape,
            Err(e) => {
                tracing::debug!(listener = %plan.name, client = %self.conn.peer, error = %e, "malformed HTTP/2 request");
                bufs::give(h1);
                self.stats().error(ErrorKind::BadRequest);
                self.rejected(Rejection::BadRequest, 400);
                self.respond.send_reset(Reason::PROTOCOL_ERROR);
                return false;
            }
        };
        self.h1 = h1;
        let head_len = match parse_request(&self.h1, &plan.head_limits, &mut self.head) {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.stats().error(ErrorKind::BadRequest);
                self.send_error(400, &[]).await;
                return false;
            }
            Err(e) => {
                tracing::debug!(listener = %plan.name, client = %self.conn.peer, error = %e, "bad HTTP/2 request");
                self.stats().error(ErrorKind::BadRequest);
                self.rejected(Rejection::from_status(e.status()), e.status());
                self.send_error(e.status(), &[]).await;
                return false;
            }
        };
        self.ex.add_in(head_len as u64);
        if self.conn.w.access_logs().enabled(plan.index) {
            self.ex.capture(&self.h1, &self.head);
            self.ex.set_protocol("HTTP/2");
        }
        // The stream's start (its one clock read) stands for now in the rate bucket.
        let started = self.ex.start.get().unwrap_or_else(Instant::now);
        let allowed = self
            .conn
            .w
            .guard(plan.index)
            .is_none_or(|g| g.allow_request(self.conn.peer.ip(), started));
        if !allowed {
            self.rejected(Rejection::RateLimited, 429);
            self.send_error(429, &[("Retry-After", RETRY_AFTER_SECS)])
                .await;
            return false;
        }
        if let BodyKind::Length(n) = self.head.body {
            if n > plan.limits.max_body_bytes {
                self.stats().error(ErrorKind::BadRequest);
                self.rejected(Rejection::BodyTooLarge, 413);
                self.send_error(413, &[]).await;
                return false;
            }
        }
        if let Some(name) = &plan.request_id {
            let sent = self.head.header(&self.h1, name);
            self.ex.request_id.set(Some(RequestId::for_request(sent)));
        }
        let route = plan.router.route(&RequestView {
            buf: &self.h1,
            head: &self.head,
            source: self.conn.peer.ip(),
            client_cert_subject: self.conn.client_cert.as_ref().map(|c| &*c.subject_match),
        });
        let rw = match route {
            Route::Forward(g, rw) => {
                if !Arc::ptr_eq(g, &plan.group) {
                    self.routed = Some(g.clone());
                }
                rw
            }
            answer => {
                let mut out = bufs::take_large();
                let status = write_answer(
                    &mut out,
                    &answer,
                    &self.h1,
                    &self.head,
                    plan.scheme,
                    plan.bound,
                    false,
                );
                if status.is_some() {
                    self.send_h1(&out).await;
                }
                bufs::give(out);
                return true;
            }
        };
        self.affinity = match &self.group().config.stickiness {
            Some(st) => crate::sticky::from_request(st, &self.h1, &self.head),
            None => Default::default(),
        };
        let rid = self.ex.request_id.get();
        let adds = RequestAdds {
            ops: &rw.request,
            id: generated_id(plan.request_id.as_deref(), rid.as_ref()),
        };
        // The forwarded head (it grows for a large one).
        let mut out = bufs::take_small();
        let fwd = ForwardInfo {
            client_ip: self.conn.peer.ip(),
            proto: plan.scheme,
            port: plan.bound.port(),
            client_cert: self.conn.client_cert.as_deref(),
        };
        write_request_head(&self.h1, &self.head, &fwd, &adds, &mut out);
        if self.group().settings.version.is_h2() {
            bufs::give(std::mem::take(&mut self.h1));
            let deadline = super::grpc::timeout(&parts.headers);
            let (trailers, expect) = (shape.wants_trailers, shape.expect_continue);
            // Boxed: the HTTP/2-to-target state (about 7 KiB) would otherwise be inlined into
            // every stream's future, which is copied into its task when the stream is spawned.
            crate::boxed::pinned(|| {
                self.forward_h2(out, body, end_stream, trailers, expect, deadline, rw)
            })
            .await;
            return true;
        }
        let method = self.head.method;
        // The HTTP/1.1 form has served (routing, log capture, the forwarded head): its buffer
        // goes back now, not after the response.
        bufs::give(std::mem::take(&mut self.h1));
        if shape.expect_continue && !end_stream {
            // The client waits for this before sending its body (the target is not asked).
            let _ = self.respond.send_informational(response::interim(100));
        }
        let up = match self.cx().send_request(out, end_stream, method).await {
            Ok(up) => up,
            Err((status, extra)) => {
                self.send_error(status, extra).await;
                return true;
            }
        };
        let mut up = up;
        if !end_stream {
            let chunked = self.head.body == BodyKind::Chunked;
            let sent = self.send_body(&mut body, &up, chunked).await;
            // The target stopped taking the body: if it answered first, that is the response.
            let early = matches!(sent, Err(BodyFail::Upstream))
                && self.cx().early_response(&mut up, method).await;
            if let (Err(fail), false) = (sent, early) {
                self.cx().abandon(up);
                let status = match fail {
                    BodyFail::Timeout => Some(408),
                    BodyFail::TooLarge => Some(413),
                    BodyFail::Upstream => Some(502),
                    BodyFail::ClientGone => None,
                };
                match status {
                    Some(408) => self.rejected(Rejection::BodyTimeout, 408),
                    Some(413) => self.rejected(Rejection::BodyTooLarge, 413),
                    _ => {}
                }
                if let Some(st) = status {
                    self.stats().error(if st == 502 {
                        ErrorKind::UpstreamReset
                    } else {
                        ErrorKind::BadRequest
                    });
                    self.send_error(st, &[]).await;
                }
                return true;
            }
            if early {
                // Its head is in `up`; the rest of the client's body is not read.
            } else if let Err(fail) = self.cx().read_response_head(&mut up, method).await {
                self.cx().response_failed(&up.target, &fail);
                self.cx().abandon(up);
                self.send_error(fail.status(), &[]).await;
                return true;
            }
        }
        drop(body);
        self.relay_response(up, method, shape.wants_trailers, rw)
            .await;
        true
    }

    /// Streams the request body to the target (chunk-framed when the head says chunked, with
    /// the client's trailers), releasing the client's window as bytes go out.
    async fn send_body(
        &self,
        body: &mut RecvStream,
        up: &Upstream,
        chunked: bool,
    ) -> Result<(), BodyFail> {
        let limits = &self.conn.plan.limits;
        let write_limit = self.group().settings.response_timeout;
        let mut total: u64 = 0;
        let mut out = bufs::take_large();
        let res = async {
            loop {
                let data = match timeout(limits.idle_timeout, body.data()).await {
                    Err(_) => return Err(BodyFail::Timeout),
                    Ok(None) => break,
                    Ok(Some(Err(_))) => return Err(BodyFail::ClientGone),
                    Ok(Some(Ok(d))) => d,
                };
                if data.is_empty() {
                    continue;
                }
                total += data.len() as u64;
                if total > limits.max_body_bytes {
                    return Err(BodyFail::TooLarge);
                }
                out.clear();
                if chunked {
                    head::chunk_start(&mut out, data.len());
                }
                out.extend_from_slice(&data);
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                out = write_up(up, out, write_limit).await?;
                let _ = body.flow_control().release_capacity(data.len());
                self.ex.add_in(data.len() as u64);
                self.stats().bytes(data.len() as u64, 0);
            }
            if chunked {
                out.clear();
                out.extend_from_slice(b"0\r\n");
                if let Ok(Ok(Some(trailers))) = timeout(limits.idle_timeout, body.trailers()).await
                {
                    head::write_trailers(&trailers, &mut out);
                }
                out.extend_from_slice(b"\r\n");
                out = write_up(up, out, write_limit).await?;
            }
            Ok(out)
        }
        .await;
        match res {
            Ok(out) => {
                bufs::give(out);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one of ringlb's own short responses (written in HTTP/1.1 form, then converted);
    /// to a gRPC call, the gRPC status it stands for (counted and logged as `status`).
    async fn send_error(&mut self, status: u16, extra: &[(&str, &str)]) {
        let id = self.ex.request_id.get();
        let id_field = self.conn.plan.request_id.as_deref().zip(id.as_ref());
        if self.grpc {
            use super::grpc;
            self.stats().response(status);
            self.ex.status.set(status);
            let mut answer =
                grpc::trailers_only(grpc::status_for(status), grpc::message_for(status));
            if let Some((name, id)) = id_field {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_bytes(id.as_bytes()),
                ) {
                    answer.headers_mut().insert(n, v);
                }
            }
            let _ = self.respond.send_response(answer, true);
            return;
        }
        let mut out = bufs::take_small();
        match id_field {
            // The request id goes back on ringlb's own answers too.
            Some((name, id)) => {
                let mut all = extra.to_vec();
                all.push((name, id.as_str()));
                write_own(&mut out, status, &all, false);
            }
            None => write_own(&mut out, status, extra, false),
        }
        self.send_h1(&out).await;
        bufs::give(out);
    }
}

/// Writes `out` to the target within `limit`; gives the buffer back for reuse.
async fn write_up(up: &Upstream, out: Vec<u8>, limit: Duration) -> Result<Vec<u8>, BodyFail> {
    use std::os::fd::AsRawFd;
    let watch = crate::io::deadline::arm(up.stream.as_raw_fd(), limit);
    match up.stream.write_all(out).await {
        (Ok(()), out) if !watch.expired() => Ok(out),
        (_, out) => {
            bufs::give(out);
            Err(BodyFail::Upstream)
        }
    }
}
