//! The upstream half of an exchange: picking a target, connecting (or taking a pooled
//! connection), sending the request with retries, reading the response head, and counting
//! failures for passive ejection.
//!
//! Runs in the task of the request it serves (an HTTP/1.1 connection's, or an HTTP/2 stream's)
//! on the worker that accepted the client; [`Cx`] names what it borrows of that request.

use super::*;
use crate::balance::Want;
use crate::io::deadline;
use crate::queue::Waited;
use crate::target::GroupSlot;
use std::sync::atomic::Ordering::Relaxed;

/// What the upstream half borrows of the request it serves: its worker, listener, target group,
/// access log record and client. Built by an HTTP/1.1 connection (`ClientConn::cx`) or an HTTP/2
/// stream (`http2::stream`).
pub(crate) struct Cx<'a> {
    pub w: &'a Worker,
    pub plan: &'a ListenerPlan,
    pub group: &'a Group,
    pub ex: &'a Exchange,
    pub peer: std::net::IpAddr,
    /// The target the request's stickiness cookie names.
    pub sticky: Option<&'a crate::sticky::Token>,
}

/// Why an attempt on a target failed, as `retry_on` names it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryCause {
    /// The connect failed or timed out: nothing was sent.
    Connect,
    /// The connection (or stream) closed or reset before any response byte.
    Reset,
    /// No response head within `response_timeout`.
    Timeout,
}

impl Cx<'_> {
    /// Whether a request that failed on a target may go to another one, by the group's
    /// `retry_on` and `retries` (`tried`: targets tried so far, the failed one included);
    /// counts the retry when it may. `replayable`: nothing of the request can have been acted on
    /// twice (an idempotent request whose body ringlb holds whole); a failed connect always is.
    pub(crate) fn may_retry(&self, cause: RetryCause, replayable: bool, tried: usize) -> bool {
        let group = self.group;
        let on = group.config.retry_on;
        let allowed = match cause {
            RetryCause::Connect => on.connect_failure,
            RetryCause::Reset => on.reset && replayable,
            RetryCause::Timeout => on.timeout && replayable,
        };
        if !allowed || tried > group.settings.retries as usize {
            return false;
        }
        let slot = group.slot(self.w.id);
        let counter = match cause {
            RetryCause::Connect => &slot.retries_connect,
            RetryCause::Reset => &slot.retries_reset,
            RetryCause::Timeout => &slot.retries_timeout,
        };
        GroupSlot::add(counter, 1);
        true
    }

    fn stats(&self) -> &crate::metrics::ListenerSlot {
        self.plan.stats.slot(self.w.id)
    }
    /// Picks a target for the next attempt. When every eligible target is at the group's
    /// `max_connections`, waits in the group's queue (FIFO, on this worker) for a slot on any of
    /// them, up to `queue_timeout` (then 503 with Retry-After).
    pub(crate) async fn pick(
        &self,
        tried: &[u64],
        last_timed_out: bool,
    ) -> Result<Rc<LocalTarget>, Failure> {
        let group = self.group;
        let limited = group.config.max_connections > 0;
        let mut front = false;
        let mut waited: Option<tokio::time::Instant> = None;
        let mut pinned = None;
        loop {
            let queue = limited.then(|| self.w.queue_of(group));
            // Requests already waiting (or handed a slot) go first: a newcomer queues behind.
            let behind = !front && queue.as_ref().is_some_and(|q| q.busy());
            if !behind {
                let want = Want {
                    client: self.peer,
                    tried,
                    sticky: self.sticky,
                };
                match self.w.pick_for(group, &want) {
                    Ok((t, _)) => {
                        if let Some(since) = waited {
                            let us = since.elapsed().as_micros() as u64;
                            GroupSlot::add(&group.slot(self.w.id).queue_wait_us, us);
                        }
                        return Ok(t);
                    }
                    Err(Pick::Full) if limited => pinned = None,
                    Err(Pick::PinnedFull) if limited => pinned = self.sticky.copied(),
                    Err(pick) => {
                        self.stats().error(ErrorKind::NoTarget);
                        return Err(match pick {
                            Pick::Initial => (503, RETRY_AFTER),
                            _ if tried.is_empty() => (503, NO_HEADERS),
                            _ if last_timed_out => (504, NO_HEADERS),
                            _ => (502, NO_HEADERS),
                        });
                    }
                }
            }
            let Some(queue) = queue else {
                return Err((503, RETRY_AFTER));
            };
            let slot = group.slot(self.w.id);
            let since = *waited.get_or_insert_with(|| {
                GroupSlot::add(&slot.queue_waits, 1);
                tokio::time::Instant::now()
            });
            slot.queued.store(slot.queued.load(Relaxed) + 1, Relaxed);
            // A request pinned to a full target (stickiness) waits for a slot on that one.
            let r = queue
                .wait(since + group.config.queue_timeout, front, pinned)
                .await;
            slot.queued
                .store(slot.queued.load(Relaxed).saturating_sub(1), Relaxed);
            match r {
                Waited::Slot => front = true,
                Waited::TimedOut => {
                    GroupSlot::add(&slot.queue_timeouts, 1);
                    GroupSlot::add(&slot.queue_wait_us, since.elapsed().as_micros() as u64);
                    self.stats().error(ErrorKind::NoTarget);
                    return Err((503, RETRY_AFTER));
                }
            }
        }
    }

    /// Picks a target and writes the request. A failed connect is retried on another target (up to
    /// the group's `retries`, with `retry_on = ["connect-failure"]`, the default); a pooled
    /// connection that turns out dead before any response byte is retried once on a fresh
    /// connection (any method when the write failed, idempotent methods when the request went
    /// out). With the whole request buffered, also waits for the response head; then, with
    /// `retry_on` "reset" or "timeout", an idempotent request whose target closed, reset or did
    /// not answer before any response byte is retried on another target.
    pub(crate) async fn send_request(
        &self,
        out: Vec<u8>,
        complete: bool,
        method: Method,
    ) -> Result<Upstream, Failure> {
        let group = self.group;
        let s = &group.settings;
        let mut out = out;
        let mut tried: Vec<u64> = Vec::new();
        let mut fresh_only = false;
        let mut fresh_retry_used = false;
        let mut last_timed_out = false;
        // Another target may take the request again after a failure past the connect: only when
        // nothing of it could have been acted on twice.
        let replayable = complete && method.is_idempotent();
        loop {
            let target = match self.pick(&tried, last_timed_out).await {
                Ok(t) => t,
                Err(f) => {
                    self.w.give_buf(out);
                    return Err(f);
                }
            };
            let pooled = if fresh_only { None } else { target.take_idle() };
            fresh_only = false;
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => stream,
                None => {
                    // The connect holds a slot under max_connections until the request begins.
                    let connecting = crate::pool::Connecting::start(&target);
                    // Boxed: a connect (with its TLS handshake) is rare next to pooled reuse,
                    // and its state would otherwise sit in every request's future.
                    let connect = timeout(
                        s.connect_timeout,
                        Box::pin(connect_upstream(self.w, group, target.target.addr)),
                    )
                    .await;
                    match connect {
                        Ok(Ok(stream)) => {
                            connecting.done(true);
                            stream
                        }
                        result => {
                            connecting.done(false);
                            let timed_out = result.is_err();
                            last_timed_out = timed_out;
                            if let Ok(Err(e)) = &result {
                                tracing::debug!(target = %target.target.addr, error = %e, "connect failed");
                            }
                            self.upstream_failed(&target, ErrorKind::UpstreamConnect);
                            WorkerSlot::bump(&target.target.slot(self.w.id).connect_errors);
                            tried.push(target.target.id);
                            if !self.may_retry(RetryCause::Connect, true, tried.len()) {
                                self.w.give_buf(out);
                                return Err((if timed_out { 504 } else { 502 }, NO_HEADERS));
                            }
                            continue;
                        }
                    }
                }
            };
            target.begin();
            self.ex.forwarded(target.target.addr);
            let (res, o) = stream.write_all(out).await;
            out = o;
            if res.is_err() {
                target.end();
                if reused && complete && !fresh_retry_used {
                    fresh_retry_used = true;
                    fresh_only = true;
                    continue;
                }
                self.upstream_failed(&target, ErrorKind::UpstreamReset);
                tried.push(target.target.id);
                if self.may_retry(RetryCause::Reset, replayable, tried.len()) {
                    // Reset before any response byte: another target takes it.
                    continue;
                }
                self.w.give_buf(out);
                return Err((502, NO_HEADERS));
            }
            let mut up = Upstream {
                stream,
                target,
                // Taken by `read_response_head` once the response begins to arrive.
                buf: Vec::new(),
                head: ResponseHead::new(),
                out,
            };
            if !complete {
                // The rest of the body streams first; finish() then reads the response.
                return Ok(up);
            }
            match self.read_response_head(&mut up, method).await {
                Ok(()) => return Ok(up),
                Err(fail) => {
                    up.target.end();
                    let Upstream {
                        target,
                        buf,
                        out: o,
                        ..
                    } = up;
                    self.w.give_buf(buf);
                    out = o;
                    match fail {
                        ResponseFail::ClosedEarly
                            if reused && !fresh_retry_used && method.is_idempotent() =>
                        {
                            // A pooled connection the backend had already closed.
                            fresh_retry_used = true;
                            fresh_only = true;
                            continue;
                        }
                        ref other => self.response_failed(&target, other),
                    }
                    let cause = match fail {
                        ResponseFail::ClosedEarly => Some(RetryCause::Reset),
                        ResponseFail::Timeout => Some(RetryCause::Timeout),
                        // A malformed answer is the target's bug: not retried.
                        ResponseFail::Bad => None,
                    };
                    tried.push(target.target.id);
                    last_timed_out = matches!(fail, ResponseFail::Timeout);
                    if cause.is_some_and(|c| self.may_retry(c, replayable, tried.len())) {
                        continue;
                    }
                    self.w.give_buf(out);
                    return Err((fail.status(), NO_HEADERS));
                }
            }
        }
    }

    /// After a failed write of the request body: true when the target had answered first (a
    /// 413 or a 401 for an upload it refuses, then closed), with the whole final head now in
    /// `up`. That answer is the response, not a 502. The connection is not reused either way.
    /// Interim (1xx) heads before it are passed over.
    pub(crate) async fn early_response(&self, up: &mut Upstream, method: Method) -> bool {
        for _ in 0..=crate::http::proxy::MAX_INTERIM {
            if self.read_response_head(up, method).await.is_err() {
                return false;
            }
            if !up.head.is_interim() {
                up.head.keep_alive = false;
                return true;
            }
            let hl = up.head.head_len.min(up.buf.len());
            up.buf.drain(..hl);
        }
        false
    }

    /// Reads from the upstream until `up.buf` holds a complete response head (parsing what is
    /// already buffered first).
    pub(crate) async fn read_response_head(
        &self,
        up: &mut Upstream,
        method: Method,
    ) -> Result<(), ResponseFail> {
        // The watchdog shuts the socket down when the head is late: the read then ends.
        let watch = deadline::arm(up.stream.as_raw_fd(), self.group.settings.response_timeout);
        loop {
            if !up.buf.is_empty() {
                match parse_response(&up.buf, method, MAX_RESPONSE_HEAD, &mut up.head) {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(target = %up.target.target.addr, error = %e, "bad response");
                        return Err(ResponseFail::Bad);
                    }
                }
            }
            let had = up.buf.len();
            if up.buf.capacity() == 0 {
                // The read buffer is taken once the response has begun to arrive, where waiting
                // for it costs nothing: a worker with hundreds of requests in flight then holds
                // a few buffers, reused hot from the free list, instead of one per request.
                if up.stream.waits_for_free() {
                    // An error or the end of the stream shows in the read that follows.
                    let _ = up.stream.readable().await;
                    if watch.expired() {
                        return Err(ResponseFail::Timeout);
                    }
                }
                up.buf = self.w.take_buf();
            } else if up.buf.capacity() == had {
                up.buf.reserve(RELAY_CHUNK);
            }
            let buf = std::mem::take(&mut up.buf);
            let (res, buf) = up.stream.read(buf).await;
            up.buf = buf;
            if watch.expired() {
                return Err(ResponseFail::Timeout);
            }
            match res {
                Ok(0) | Err(_) => {
                    return Err(if had == 0 {
                        ResponseFail::ClosedEarly
                    } else {
                        ResponseFail::Bad
                    });
                }
                Ok(_) => {}
            }
        }
    }

    /// Drops an upstream connection that cannot be reused and ends its in-flight count.
    pub(crate) fn abandon(&self, up: Upstream) {
        up.target.end();
        let _ = up.stream.shutdown(std::net::Shutdown::Both);
        self.w.give_buf(up.buf);
        self.w.give_buf(up.out);
    }

    /// Counts a response that did not come: a timeout or a close before any byte counts toward
    /// the target's `passive_failures` (a target that accepts and never answers is ejected, as
    /// nginx's `max_fails` and Envoy's outlier detection count gateway failures); a malformed
    /// one is the target's bug, not its health.
    pub(crate) fn response_failed(&self, t: &LocalTarget, fail: &ResponseFail) {
        match fail {
            ResponseFail::Timeout => self.upstream_failed(t, ErrorKind::UpstreamTimeout),
            ResponseFail::ClosedEarly => self.upstream_failed(t, ErrorKind::UpstreamReset),
            ResponseFail::Bad => self.stats().error(ErrorKind::BadResponse),
        }
    }

    /// Counts a live-traffic failure; `passive_failures` in a row mark the target unhealthy (an
    /// active check, or the health thread's recovery probe, brings it back).
    pub(crate) fn upstream_failed(&self, t: &LocalTarget, kind: ErrorKind) {
        self.stats().error(kind);
        let n = t.failures.get() + 1;
        t.failures.set(n);
        let s = &self.group.settings;
        if s.passive_failures > 0
            && n >= s.passive_failures
            && t.target
                .transition(State::Unhealthy, Reason::PassiveFailures)
        {
            tracing::warn!(target = %t.target.addr, failures = n, "target marked unhealthy by live traffic");
        }
    }
}

/// Opens an upstream connection: plain TCP, or TLS for an https group (re-encryption).
pub(crate) async fn connect_upstream(
    w: &Worker,
    group: &crate::target::Group,
    addr: SocketAddr,
) -> std::io::Result<MaybeTls> {
    let cc = group.config.congestion_control.as_deref();
    let stream = Stream::connect_upstream(w.backend, addr, cc).await?;
    match group.upstream_tls.as_ref() {
        None => Ok(MaybeTls::Plain(stream)),
        Some(up) => {
            // Within the caller's connect timeout: this one only ends the handshake cleanly.
            crate::tls::TlsStream::connect(
                stream,
                up.config.clone(),
                up.name_for(addr),
                group.settings.connect_timeout,
            )
            .await
            .map(|s| MaybeTls::Tls(Box::new(s)))
            .map_err(std::io::Error::other)
        }
    }
}

pub(crate) enum ResponseFail {
    Timeout,
    /// EOF or reset before the first response byte.
    ClosedEarly,
    /// Malformed, truncated or oversized head.
    Bad,
}

impl ResponseFail {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ResponseFail::Timeout => 504,
            ResponseFail::ClosedEarly | ResponseFail::Bad => 502,
        }
    }
}
