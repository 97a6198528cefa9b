//! HTTP/2 to targets (`protocol_version = "http2"` or `"grpc"`): per-worker, per-target pools of
//! multiplexed connections (h2c to http targets, h2 by ALPN to https targets), and the upstream
//! half of an exchange over them ([`Cx::send_h2`]: pick, connect or reuse, open a stream, retry).
//!
//! Runs on a worker thread: the pool lives in the worker's [`LocalTarget`] (`Rc`, `Cell`), each
//! connection's I/O is driven by its own task on that worker, and each request's stream belongs
//! to the task of the request. A connection carries streams up to the target's
//! SETTINGS_MAX_CONCURRENT_STREAMS (at most [`MAX_STREAMS_PER_CONN`]); beyond that a request
//! opens another connection. While a connect is under way, requests that find no room wait for
//! it instead of opening connections of their own. Connections without streams for the
//! group's `keepalive_timeout`, and those the target closed or sent GOAWAY on, leave the pool
//! at the worker's sweep.

pub mod request;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::Request;
use tokio::sync::Notify;
use tokio::time::timeout;

use super::io::H2Io;
use super::SEND_BUFFER;
use crate::http::proxy::{connect_upstream, Cx, Failure, RetryCause, MAX_RESPONSE_HEAD};
use crate::metrics::ErrorKind;
use crate::pool::LocalTarget;
use crate::target::{Group, WorkerSlot};
use crate::tls::MaybeTls;
use crate::worker::Worker;

/// Most streams ringlb opens at once on one connection to a target, whatever the target allows
/// (a target without a limit would otherwise take every request on one connection).
pub const MAX_STREAMS_PER_CONN: usize = 128;
/// Window ringlb offers a target for one stream's response. A stream's window is released as its
/// client takes the data, so a client that reads slowly holds at most this much here...
pub const UPSTREAM_STREAM_WINDOW: u32 = 256 * 1024;
/// ...and the connection's window covers every stream's at once, so slow clients on some
/// streams never stall the others sharing the connection.
pub const UPSTREAM_CONNECTION_WINDOW: u32 = UPSTREAM_STREAM_WINDOW * MAX_STREAMS_PER_CONN as u32;

/// One worker's HTTP/2 connections to one target.
#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<Vec<Rc<H2Conn>>>,
    /// Connects under way.
    connecting: Cell<u32>,
    /// Counts finished connect attempts; a waiter that sees it move and still finds no room
    /// after a failed attempt gives up too (one refused connect is not retried by every waiter).
    attempts: Cell<u64>,
    last_failed: Cell<bool>,
    settled: Notify,
}

/// One multiplexed connection to a target.
pub struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams of this worker's requests open on it.
    streams: Cell<usize>,
    /// Set by the connection's task when the connection ended (error, GOAWAY, close).
    closed: Rc<Cell<bool>>,
    /// When the last stream ended (for `keepalive_timeout`).
    idle_since: Cell<Instant>,
}

impl H2Conn {
    fn room(&self) -> bool {
        let max = self
            .send
            .current_max_send_streams()
            .min(MAX_STREAMS_PER_CONN);
        !self.closed.get() && self.streams.get() < max
    }

    /// No new streams go to this connection (a failed stream open, GOAWAY).
    fn retire(&self) {
        self.closed.set(true);
    }
}

/// A request's claim on one stream of a pooled connection; released when dropped.
pub struct StreamSlot {
    conn: Rc<H2Conn>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let n = self.conn.streams.get().saturating_sub(1);
        self.conn.streams.set(n);
        if n == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

/// Why no stream could be had.
#[derive(Debug)]
pub enum ConnectFail {
    Io(std::io::Error),
    /// A TLS target that did not choose h2 by ALPN.
    NotH2,
    /// The HTTP/2 handshake failed.
    Handshake(h2::Error),
    /// Another request's connect to this target failed just now.
    PeerFailed,
}

impl std::fmt::Display for ConnectFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFail::Io(e) => write!(f, "{e}"),
            ConnectFail::NotH2 => f.write_str("the target did not choose h2 by ALPN"),
            ConnectFail::Handshake(e) => write!(f, "HTTP/2 handshake: {e}"),
            ConnectFail::PeerFailed => f.write_str("a concurrent connect failed"),
        }
    }
}

impl H2Pool {
    /// A connection with room for one more stream, claimed.
    fn claim(&self) -> Option<StreamSlot> {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| !c.closed.get());
        let conn = conns.iter().find(|c| c.room())?.clone();
        conn.streams.set(conn.streams.get() + 1);
        Some(StreamSlot { conn })
    }

    /// A stream slot on a pooled connection, or on a new one to `addr` (the caller bounds the
    /// wait by `connect_timeout`).
    pub async fn checkout(
        &self,
        w: &Worker,
        group: &Group,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<StreamSlot, ConnectFail> {
        loop {
            if !fresh {
                if let Some(slot) = self.claim() {
                    return Ok(slot);
                }
                if self.connecting.get() > 0 {
                    let seen = self.attempts.get();
                    let settled = self.settled.notified();
                    settled.await;
                    if let Some(slot) = self.claim() {
                        return Ok(slot);
                    }
                    if self.attempts.get() != seen && self.last_failed.get() {
                        return Err(ConnectFail::PeerFailed);
                    }
                    continue;
                }
            }
            // Settled when the attempt ends, or when its caller gives up on it (a timeout drops
            // this future): waiters are told either way, never left waiting on a connect that
            // no longer runs.
            let attempt = Attempt::start(self);
            let res = open(w, group, addr).await;
            attempt.end(res.is_ok());
            return res.map(|conn| {
                conn.streams.set(1);
                self.conns.borrow_mut().push(conn.clone());
                StreamSlot { conn }
            });
        }
    }

    /// Drops connections the target closed, and those without streams for `keepalive`.
    pub fn sweep(&self, now: Instant, keepalive: std::time::Duration) {
        self.conns.borrow_mut().retain(|c| {
            !c.closed.get()
                && (c.streams.get() > 0 || now.duration_since(c.idle_since.get()) < keepalive)
        });
    }

    /// Closes every connection once its streams are done.
    pub fn clear(&self) {
        self.conns.borrow_mut().clear();
    }

    /// Connections in the pool (for tests and the admin view).
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connect under way in a pool (see [`H2Pool::checkout`]).
struct Attempt<'a> {
    pool: &'a H2Pool,
    ok: bool,
}

impl<'a> Attempt<'a> {
    fn start(pool: &'a H2Pool) -> Attempt<'a> {
        pool.connecting.set(pool.connecting.get() + 1);
        Attempt { pool, ok: false }
    }

    fn end(mut self, ok: bool) {
        self.ok = ok;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let p = self.pool;
        p.connecting.set(p.connecting.get().saturating_sub(1));
        p.attempts.set(p.attempts.get() + 1);
        p.last_failed.set(!self.ok);
        p.settled.notify_waiters();
    }
}

/// Connects to `addr` (with TLS for https groups), says the HTTP/2 preface, starts the
/// connection's task and waits for the target's SETTINGS.
async fn open(w: &Worker, group: &Group, addr: SocketAddr) -> Result<Rc<H2Conn>, ConnectFail> {
    let stream = connect_upstream(w, group, addr)
        .await
        .map_err(ConnectFail::Io)?;
    if let MaybeTls::Tls(t) = &stream {
        if t.alpn_protocol().as_deref() != Some(crate::tls::ALPN_H2) {
            return Err(ConnectFail::NotH2);
        }
    }
    // One connection carries many streams for as long as the target keeps it: a fixed slot
    // and a standing multishot receive.
    stream.stream().settle();
    let sock = Rc::new(stream);
    let io = H2Io::upstream(sock.clone());
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(UPSTREAM_STREAM_WINDOW)
        .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_RESPONSE_HEAD as u32)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(ConnectFail::Handshake)?;
    let mut pings = conn.ping_pong();
    let closed = Rc::new(Cell::new(false));
    let done = closed.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target = %addr, error = %e, "HTTP/2 upstream connection ended");
        }
        done.set(true);
        let _ = sock.shutdown(std::net::Shutdown::Both);
    });
    // One PING round trip: the target's SETTINGS come before its PONG, so the connection is
    // offered with the target's own stream limit (not h2's guess of 100, which would send
    // streams a small limit refuses), and a target that does not speak HTTP/2 fails here.
    if let Some(p) = pings.as_mut() {
        p.ping(h2::Ping::opaque())
            .await
            .map_err(ConnectFail::Handshake)?;
    }
    Ok(Rc::new(H2Conn {
        send,
        streams: Cell::new(0),
        closed,
        idle_since: Cell::new(Instant::now()),
    }))
}

/// One request's stream to a target: the response to wait for, the body to send, and the
/// target's in-flight count (ended when this drops).
pub struct H2Up {
    pub target: Rc<LocalTarget>,
    pub response: Option<ResponseFuture>,
    pub body: Option<SendStream<Bytes>>,
    _slot: StreamSlot,
}

impl H2Up {
    /// No new streams go to this stream's connection (it went silent, or refused streams).
    pub fn retire_conn(&self) {
        self._slot.conn.retire();
    }
}

impl Drop for H2Up {
    fn drop(&mut self) {
        self.target.end();
    }
}

const NO_HEADERS: &[(&str, &str)] = &[];

impl Cx<'_> {
    /// Picks a target and opens a stream to it carrying `req`'s head (`end_stream`: the request
    /// has no body). A failed connect is retried on another target (up to the group's
    /// `retries`); a stream that could not be opened on a pooled connection (it went away) is
    /// retried once on a fresh one.
    pub(crate) async fn send_h2(
        &self,
        req: &Request<()>,
        end_stream: bool,
        failed_before: &[u64],
    ) -> Result<H2Up, Failure> {
        let group = self.group;
        let s = &group.settings;
        // Targets that already failed this request (a retry after a reset or a timeout).
        let mut tried: Vec<u64> = failed_before.to_vec();
        let mut fresh = false;
        let mut fresh_used = false;
        let mut last_timed_out = false;
        loop {
            let target = self.pick(&tried, last_timed_out).await?;
            let addr = target.target.addr;
            let checkout = target.h2.checkout(self.w, group, addr, fresh);
            fresh = false;
            // The stream holds a slot under max_connections from here.
            let connecting = crate::pool::Connecting::start(&target);
            let checked = timeout(s.connect_timeout, checkout).await;
            connecting.done(matches!(checked, Ok(Ok(_))));
            let slot = match checked {
                Ok(Ok(slot)) => slot,
                result => {
                    last_timed_out = result.is_err();
                    if let Ok(Err(e)) = &result {
                        tracing::debug!(target = %addr, error = %e, "HTTP/2 connect failed");
                    }
                    self.upstream_failed(&target, ErrorKind::UpstreamConnect);
                    WorkerSlot::bump(&target.target.slot(self.w.id).connect_errors);
                    tried.push(target.target.id);
                    if !self.may_retry(RetryCause::Connect, true, tried.len()) {
                        return Err((if last_timed_out { 504 } else { 502 }, NO_HEADERS));
                    }
                    continue;
                }
            };
            target.begin();
            self.ex.forwarded(addr);
            let conn = slot.conn.clone();
            let opened = async {
                let mut send = conn.send.clone().ready().await?;
                send.send_request(clone_request(req), end_stream)
            };
            match timeout(s.connect_timeout, opened).await {
                Ok(Ok((response, body))) => {
                    return Ok(H2Up {
                        target,
                        response: Some(response),
                        body: (!end_stream).then_some(body),
                        _slot: slot,
                    });
                }
                result => {
                    // The connection went away (GOAWAY, reset) or is stuck: no new streams on it.
                    conn.retire();
                    target.end();
                    drop(slot);
                    if let Ok(Err(e)) = &result {
                        tracing::debug!(target = %addr, error = %e, "HTTP/2 stream not opened");
                    }
                    if !fresh_used {
                        fresh_used = true;
                        fresh = true;
                        continue;
                    }
                    self.upstream_failed(&target, ErrorKind::UpstreamReset);
                    return Err((502, NO_HEADERS));
                }
            }
        }
    }
}

/// True when the target did not process the stream (RFC 9113 §8.7): it refused it, or a GOAWAY
/// it sent cut it off. Such a stream may be sent again.
pub fn unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

/// A copy of a request head (`http::Request` is not `Clone`: its extensions).
fn clone_request(req: &Request<()>) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}
