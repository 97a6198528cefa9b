//! HTTP/2 to clients: h2 by ALPN on https listeners, h2c by prior knowledge on http listeners,
//! each stream proxied as one HTTP/1.1 request to the listener's targets.
//!
//! Runs on the worker that accepted the connection: one driver task per connection (this
//! file), which owns the `h2` connection and polls it, and one task per stream (`stream.rs`)
//! spawned on the same worker. Nothing is shared across workers.
//!
//! Design of the adapter:
//! - **Framing, HPACK, flow control and the protocol's own checks are the `h2` crate's.**
//!   ringlb gives it a transport ([`io::H2Io`]) over its own I/O seam: the client socket with
//!   its TLS state (`MaybeTls`) on io_uring or epoll, through owned-buffer reads and writes.
//! - **One request path.** A stream's request is written as the HTTP/1.1 head it is forwarded
//!   as (`:authority` becomes Host, cookies are joined, the body framed by its length or
//!   chunked) and parsed by the same strict parser as an HTTP/1.1 client's head; then rules,
//!   limits, X-Forwarded-*, target picking with health and retries, pooled upstream
//!   connections, access log and latency histograms are those of HTTP/1.1 (`http::proxy`).
//!   The response head is parsed as HTTP/1.1 and sent as HEADERS; its body (length, chunked
//!   or close-delimited) as DATA frames within the client's flow-control window; chunked
//!   trailers as a trailing HEADERS when the client sent `te: trailers`. ringlb's own answers
//!   (errors, redirects, fixed responses) take the same conversion.
//! - **Bounded.** h2 enforces `max_concurrent_streams`, the decoded header list size
//!   (`max_header_bytes`, 431 beyond it), CONTINUATION and reset-stream limits, and the
//!   content-length of DATA. On top: streams still being served after the client reset them
//!   count against twice `max_concurrent_streams` (rapid reset); PING, SETTINGS, PRIORITY,
//!   RST_STREAM and empty frames draw on a budget ([`io::FrameMeter`]) and a flood ends the
//!   connection with GOAWAY ENHANCE_YOUR_CALM; a stream buffers at most one read of its
//!   target's response while it waits for window (zero-window readers time out).
//! - **Graceful.** Drain (SIGTERM) and reload send GOAWAY and let the streams in flight
//!   finish; an h2 connection without streams for `idle_timeout` gets GOAWAY and closes.

pub(crate) mod arena;
pub mod grpc;
pub mod io;
mod stream;
pub mod upstream;

pub(crate) use stream::send_flow;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use tokio::time::Instant;

use crate::tls::MaybeTls;
use crate::worker::{ListenerPlan, Worker};

/// Initial stream window ringlb offers clients (request bodies): 1 MiB, as nginx's 64 KiB
/// would make uploads wait on round trips.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection window offered to clients.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Most bytes h2 buffers for one stream waiting for the client's window.
pub const SEND_BUFFER: usize = 256 * 1024;
/// How long the GOAWAY of a flood or of an idle connection may take to leave.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the stream tasks of one connection share with its driver.
pub(crate) struct ConnState {
    pub w: Rc<Worker>,
    pub plan: Arc<ListenerPlan>,
    pub peer: SocketAddr,
    pub tls: Option<&'static str>,
    /// The verified client certificate (mutual TLS).
    pub client_cert: Option<Arc<crate::tls::ClientCert>>,
    /// Stream tasks still running (including streams the client reset).
    pub active: Cell<usize>,
    /// When the last stream task ended (for the idle timeout).
    pub last_end: Cell<Instant>,
    /// Streams refused for being over the in-flight cap.
    pub refused: Cell<u32>,
}

/// Serves an HTTP/2 connection until it closes. `first`: bytes already read from the client
/// (the h2c preface and what followed it; empty after a TLS handshake that chose h2).
pub async fn serve(
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    client: MaybeTls,
    peer: SocketAddr,
    first: Vec<u8>,
) {
    let stats = plan.stats.slot(w.id);
    stats.h2_opened();
    let settings = plan.http2.unwrap_or_default();
    // An HTTP/2 connection carries many streams: its socket is worth a fixed-file slot and a
    // standing multishot receive.
    client.stream().settle();
    let client = Rc::new(client);
    let flood = Rc::new(Cell::new(false));
    let parked = Rc::new(Cell::new(false));
    let io = io::H2Io::new(client.clone(), first, flood.clone(), parked.clone());
    // Twice the limit: a list over `max_header_bytes` is then refused by ringlb's own parser,
    // whose answer a gRPC client reads as RESOURCE_EXHAUSTED (h2's own 431 it cannot).
    let header_list =
        u32::try_from(plan.limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    // The handshake and the connection are boxed: inline, the connection (1.4 KiB) took room
    // in this future three times over (here, as `drive`'s argument and its binding) and the
    // handshake's codec beside it, 4.9 KiB for every connection's whole life; boxed, the
    // connection is one allocation of its own and the handshake's goes when it ends.
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(header_list)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let handshake = Box::pin(handshake);
    let conn = match tokio::time::timeout(plan.limits.header_timeout, handshake).await {
        Ok(Ok(c)) => Some(Box::new(c)),
        Ok(Err(e)) => {
            tracing::debug!(listener = %plan.name, client = %peer, error = %e, "HTTP/2 handshake failed");
            None
        }
        Err(_) => None,
    };
    if let Some(conn) = conn {
        let state = Rc::new(ConnState {
            tls: client.tls_version(),
            client_cert: client.client_cert().cloned(),
            w: w.clone(),
            plan: plan.clone(),
            peer,
            active: Cell::new(0),
            last_end: Cell::new(Instant::now()),
            refused: Cell::new(0),
        });
        drive(conn, state, flood, parked).await;
    }
    if matches!(*client, MaybeTls::Tls(_)) {
        let _ = client.shutdown(std::net::Shutdown::Write);
    }
    // Ends any read still in flight, so the socket closes once the last reference goes.
    let _ = client.shutdown(std::net::Shutdown::Both);
    stats.h2_closed();
}

type Conn = h2::server::Connection<io::H2Io, Bytes>;

/// GOAWAY; the streams in flight finish. The quiet period starts again now: a client that never
/// acknowledges the GOAWAY (its PING) is closed after one without streams.
fn go_away(
    conn: &mut Conn,
    state: &ConnState,
    timer: Pin<&mut tokio::time::Sleep>,
    idle: Duration,
    cx: &mut std::task::Context<'_>,
) {
    conn.graceful_shutdown();
    let now = Instant::now();
    state.last_end.set(now);
    timer.reset(now + idle);
    cx.waker().wake_by_ref();
}

/// Accepts streams and keeps the connection's I/O going until it ends: on drain or reload it
/// sends GOAWAY and waits for the streams in flight; idle, it says GOAWAY and closes; a flood
/// gets GOAWAY ENHANCE_YOUR_CALM.
async fn drive(
    mut conn: Box<Conn>,
    state: Rc<ConnState>,
    flood: Rc<Cell<bool>>,
    parked: Rc<Cell<bool>>,
) {
    let w = state.w.clone();
    let plan = state.plan.clone();
    let idle = plan.limits.idle_timeout;
    let cap = (plan.http2.map_or(crate::config::DEFAULT_H2_STREAMS, |h| {
        h.max_concurrent_streams
    }) as usize)
        .saturating_mul(2);
    // A reload installs a new plan for the listener: streams then go to new connections.
    let stale = || w.is_draining() || !w.plan_is(&plan);
    let mut changes = Box::pin(w.changed());
    let mut idle_timer = Box::pin(tokio::time::sleep(idle));
    let mut going_away = false;
    let mut closing_at: Option<Instant> = None;
    let mut grace = Box::pin(tokio::time::sleep(CLOSE_GRACE));
    std::future::poll_fn(|cx| {
        if flood.get() && closing_at.is_none() {
            tracing::info!(listener = %plan.name, client = %state.peer, "HTTP/2 flood: GOAWAY ENHANCE_YOUR_CALM");
            plan.stats.slot(w.id).h2_refused();
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            closing_at = Some(Instant::now());
            grace.as_mut().reset(Instant::now() + CLOSE_GRACE);
        }
        if !going_away && stale() {
            going_away = true;
            go_away(&mut conn, &state, idle_timer.as_mut(), idle, cx);
        } else if !going_away && changes.as_mut().poll(cx).is_ready() {
            changes = Box::pin(w.changed());
            let _ = changes.as_mut().poll(cx);
            if stale() {
                going_away = true;
                go_away(&mut conn, &state, idle_timer.as_mut(), idle, cx);
            }
        }
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let stats = plan.stats.slot(w.id);
                    if state.active.get() >= cap {
                        // Streams reset by the client still being served fill the cap: this
                        // client opens streams faster than it lets them finish (rapid reset).
                        let mut respond = respond;
                        respond.send_reset(Reason::REFUSED_STREAM);
                        stats.h2_refused();
                        state.refused.set(state.refused.get() + 1);
                        if state.refused.get() > cap as u32 && closing_at.is_none() {
                            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                            closing_at = Some(Instant::now());
                            grace.as_mut().reset(Instant::now() + CLOSE_GRACE);
                        }
                        continue;
                    }
                    stats.h2_stream();
                    state.active.set(state.active.get() + 1);
                    // Boxed in place: the task then holds a pointer, so neither spawning nor
                    // finishing copies the stream's (few KiB) state.
                    let state = state.clone();
                    tokio::task::spawn_local(crate::boxed::pinned(move || {
                        stream::serve(state, req, respond)
                    }));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(listener = %plan.name, client = %state.peer, error = %e, "HTTP/2 connection error");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        if closing_at.is_some() && grace.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Quiet for `idle_timeout` without a stream: GOAWAY; quiet as long again while going
        // away: close (streams in flight end by their own timeouts, so this comes).
        if closing_at.is_none() && idle_timer.as_mut().poll(cx).is_ready() {
            let quiet_since = state.last_end.get();
            let now = Instant::now();
            if state.active.get() == 0 && quiet_since + idle <= now {
                if going_away {
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    closing_at = Some(now);
                    grace.as_mut().reset(now + CLOSE_GRACE);
                    cx.waker().wake_by_ref();
                } else {
                    going_away = true;
                    go_away(&mut conn, &state, idle_timer.as_mut(), idle, cx);
                }
            } else {
                let next = if state.active.get() == 0 {
                    quiet_since + idle
                } else {
                    now + idle
                };
                idle_timer.as_mut().reset(next);
                let _ = idle_timer.as_mut().poll(cx);
            }
        }
        if parked.get() && state.active.get() == 0 && !conn.has_streams() {
            // Quiet (the client's read parked, as an idle HTTP/1.1 connection's does) and no
            // stream in flight, here or in h2 (a finished stream task's DATA may still be
            // queued there for a slow reader): h2's read, write and Huffman buffers (8, 16 and
            // 4 KiB) and its stream slabs' room go back to the allocator, so an idle connection
            // does not keep them; the next frame or stream takes them again
            // (vendor/h2/PATCHES.md). Not at every lull between bursts: those would free and
            // take them again each time.
            conn.release_idle_buffers();
        }
        Poll::Pending
    })
    .await;
    if let Some(at) = closing_at {
        // GOAWAY (and whatever else was queued) gets what is left of its moment to leave.
        let left = CLOSE_GRACE.saturating_sub(at.elapsed());
        let _ = tokio::time::timeout(left, std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
    }
}

/// True when `bytes` (the first bytes of a plain connection) are the start of the HTTP/2
/// client preface: the connection speaks h2c by prior knowledge.
pub fn is_preface(bytes: &[u8]) -> bool {
    const START: &[u8] = b"PRI * HTTP/2.0\r\n";
    bytes.len() >= START.len() && bytes.starts_with(START)
}

/// Boxes the connection's future (an HTTP/2 connection's state lives on the heap only while
/// it lasts, not in every connection task).
pub fn serve_boxed(
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    client: MaybeTls,
    peer: SocketAddr,
    first: Vec<u8>,
) -> Pin<Box<dyn Future<Output = ()>>> {
    crate::boxed::pinned(move || serve(w, plan, client, peer, first))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An HTTP/2 connection's task lives as long as the connection, idle or not: its future
    /// holds the h2 connection boxed (once), not inline. Inline it took 4,904 bytes, the
    /// connection's 1,424 three times over and the handshake's codec (656 boxed).
    #[test]
    fn an_http2_connections_future_holds_its_h2_connection_boxed() {
        let serve = future_size(serve);
        assert!(
            serve <= 1024,
            "the HTTP/2 connection future is {serve} bytes (h2's Connection is {})",
            std::mem::size_of::<Conn>()
        );
    }
}
