//! HTTP/2 load (`load --http2`): the `h2` crate's client over tokio TCP (h2c with prior
//! knowledge for http://) or tokio-rustls (ALPN `h2` for https://), `--streams` closed-loop (or
//! scheduled, with `--rate`) streams multiplexed on each connection.
//! Runs on the load threads: each runs a tokio current-thread runtime (epoll) with a `LocalSet`.
//! A connection task owns its `h2` connection (the driver is a task of its own) and reconnects
//! when it fails; its stream tasks share the connection's `SendRequest` and `ConnState`; every
//! task of a thread shares the thread's `ThreadStats` (`Rc<RefCell>`), as HTTP/1.1 does.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{note_error, ErrKind, Target};
use crate::io::IoKind;
use crate::load::{
    Clock, LoadError, Progress, ThreadPlan, ThreadStats, CONNECT_BACKOFF, END_GRACE,
};

/// Flow-control windows we grant the server: large, so a body never waits on a WINDOW_UPDATE
/// round trip (bodies are read and released at once; memory is not held).
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 1 << 24;

/// Request headers HTTP/2 forbids (RFC 9113 §8.2.2); `te` is allowed only as `trailers`.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// What every HTTP/2 connection of a run shares (built once on the main thread, read-only).
pub struct H2Setup {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Absolute URI: scheme, authority (the Host, or a `-H Host:` override) and path.
    uri: Uri,
    /// The user's `-H` headers, minus Host (it is the `:authority`).
    headers: HeaderMap,
    streams: usize,
}

impl H2Setup {
    /// Checks the headers for HTTP/2 and prebuilds the request parts.
    pub fn new(
        target: &Target,
        headers: &[(String, String)],
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        streams: usize,
    ) -> Result<H2Setup, LoadError> {
        let bad = |what: String| LoadError::Option(format!("--http2: {what}"));
        let mut authority = target.host_header();
        let mut map = HeaderMap::with_capacity(headers.len());
        for (n, v) in headers {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| bad(format!("bad header name '{n}'")))?;
            if name == http::header::HOST {
                authority = v.clone();
                continue;
            }
            if CONNECTION_SPECIFIC.contains(&name.as_str())
                || (name == http::header::TE && !v.eq_ignore_ascii_case("trailers"))
            {
                return Err(bad(format!(
                    "header '{n}' is connection-specific and not allowed in HTTP/2"
                )));
            }
            let value =
                HeaderValue::from_str(v).map_err(|_| bad(format!("bad value for header '{n}'")))?;
            map.append(name, value);
        }
        let scheme = if target.https { "https" } else { "http" };
        let uri = Uri::try_from(format!("{scheme}://{authority}{}", target.path))
            .map_err(|e| bad(format!("cannot build the request URI: {e}")))?;
        Ok(H2Setup {
            addr: target.addr,
            tls: tls.map(|(cfg, name)| (tokio_rustls::TlsConnector::from(cfg), name)),
            uri,
            headers: map,
            streams,
        })
    }

    /// One request (a `Request` per stream is what `h2` takes; the parts are shared clones).
    fn request(&self) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = Version::HTTP_2;
        *r.uri_mut() = self.uri.clone();
        if !self.headers.is_empty() {
            *r.headers_mut() = self.headers.clone();
        }
        r
    }
}

/// Runs one load thread's HTTP/2 connections to the end of the run.
pub(crate) fn run_thread(
    setup: Arc<H2Setup>,
    plan: ThreadPlan,
) -> io::Result<(ThreadStats, IoKind, Option<String>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, async move {
        let stats = Rc::new(RefCell::new(ThreadStats::new()));
        let n = setup.streams;
        let total_senders = (plan.total_conns * n) as f64;
        let mut tasks = Vec::with_capacity(plan.conns);
        for c in 0..plan.conns {
            // Spread every stream's schedule evenly over one interval, run-wide.
            let offsets = (0..n)
                .map(|s| {
                    let k = ((plan.first_conn + c) * n + s) as f64;
                    plan.clock.interval.map(|iv| iv.mul_f64(k / total_senders))
                })
                .collect();
            let task = ConnTask {
                setup: setup.clone(),
                stats: stats.clone(),
                progress: plan.progress.clone(),
                thread: plan.thread,
                clock: plan.clock,
                offsets,
            };
            tasks.push(tokio::task::spawn_local(task.run()));
        }
        for t in tasks {
            let _ = t.await;
        }
        let first_error = crate::client::FIRST_ERROR.with(|f| f.borrow_mut().take());
        (ThreadStats::take(stats), IoKind::Epoll, first_error)
    }))
}

/// Maps an `h2` error to the error kinds HTTP/1.1 reports.
fn kind_of(e: &h2::Error, tls: bool) -> ErrKind {
    match e.get_io() {
        Some(io) => ErrKind::from_io(io, tls),
        // RST_STREAM or GOAWAY with an error from the server.
        None if e.is_remote() => ErrKind::Reset,
        // A protocol violation noticed here (e.g. the server does not speak HTTP/2).
        None => ErrKind::BadResponse,
    }
}

/// One connection's state, shared by its driver and stream tasks.
struct ConnState {
    tls: bool,
    /// Set to `true` once the connection is over (its driver returned).
    dead: watch::Sender<bool>,
    /// The driver's error, if it ended with one.
    error: Cell<Option<ErrKind>>,
    /// Requests that succeeded / failed on this connection.
    ok: Cell<u64>,
    failed: Cell<u64>,
}

impl ConnState {
    fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }
}

/// One connection's loop: connects, runs its streams until the connection fails or the run
/// ends, and reconnects. Owns the streams' schedules across reconnects.
struct ConnTask {
    setup: Arc<H2Setup>,
    stats: Rc<RefCell<ThreadStats>>,
    progress: Progress,
    thread: usize,
    clock: Clock,
    /// Each stream's offset in the open-loop schedule (`None`: closed loop).
    offsets: Vec<Option<Duration>>,
}

impl ConnTask {
    async fn run(self) {
        let clock = self.clock;
        let start = clock.warm_end.min(Instant::now());
        let mut schedules: Vec<Option<Instant>> =
            self.offsets.iter().map(|o| o.map(|o| start + o)).collect();
        loop {
            let opened = Instant::now();
            if opened >= clock.end {
                break;
            }
            let req_deadline = opened + clock.timeout;
            let deadline = req_deadline.min(clock.end + END_GRACE);
            let state = Rc::new(ConnState {
                tls: self.setup.tls.is_some(),
                dead: watch::channel(false).0,
                error: Cell::new(None),
                ok: Cell::new(0),
                failed: Cell::new(0),
            });
            let res = tokio::time::timeout_at(deadline.into(), connect(&self.setup, &state)).await;
            let (send, driver) = match res {
                Ok(Ok(c)) => c,
                Ok(Err(kind)) => {
                    self.count_conn_error(opened, Some(kind));
                    backoff(&clock).await;
                    continue;
                }
                Err(_) => {
                    self.count_conn_error(
                        opened,
                        (deadline == req_deadline).then_some(ErrKind::Timeout),
                    );
                    continue;
                }
            };
            let mut set = JoinSet::new();
            for next_send in schedules.drain(..) {
                let stream = StreamTask {
                    setup: self.setup.clone(),
                    stats: self.stats.clone(),
                    progress: self.progress.clone(),
                    thread: self.thread,
                    clock,
                    conn: state.clone(),
                    send: send.clone(),
                    next_send,
                };
                set.spawn_local(stream.run());
            }
            drop(send);
            while let Some(r) = set.join_next().await {
                // A stream task cannot panic short of a bug; its schedule would be lost.
                if let Ok(next_send) = r {
                    schedules.push(next_send);
                }
            }
            driver.abort();
            if state.ok.get() == 0 {
                // A connection that never answered: count its failure once (if no request on
                // it was counted) and pause, so a non-HTTP/2 server does not spin a core.
                if state.failed.get() == 0 {
                    self.count_conn_error(opened, state.error.get());
                }
                backoff(&clock).await;
            }
        }
    }

    /// Counts a failed connection attempt (`None`: cut off by the end of the run).
    fn count_conn_error(&self, opened: Instant, kind: Option<ErrKind>) {
        let Some(kind) = kind else { return };
        if self.clock.counts(opened) {
            self.stats
                .borrow_mut()
                .record(opened, Instant::now(), Err(Some(kind)));
        }
        self.progress[self.thread].fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits `CONNECT_BACKOFF` (no longer than the run's end).
async fn backoff(clock: &Clock) {
    let until = (Instant::now() + CONNECT_BACKOFF).min(clock.end);
    tokio::time::sleep_until(until.into()).await;
}

/// Connects (TCP_NODELAY, TLS with ALPN h2 for https), runs the HTTP/2 handshake and spawns
/// the connection's driver task.
async fn connect(
    setup: &H2Setup,
    state: &Rc<ConnState>,
) -> Result<(SendRequest<Bytes>, JoinHandle<()>), ErrKind> {
    let tcp = tokio::net::TcpStream::connect(setup.addr)
        .await
        .map_err(|e| {
            note_error("connect", &e);
            match e.kind() {
                io::ErrorKind::ConnectionRefused => ErrKind::Refused,
                io::ErrorKind::TimedOut => ErrKind::Timeout,
                _ => ErrKind::Connect,
            }
        })?;
    tcp.set_nodelay(true).map_err(|_| ErrKind::Connect)?;
    match &setup.tls {
        None => handshake(tcp, state).await,
        Some((connector, name)) => {
            let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                note_error("TLS handshake", &e);
                match e.kind() {
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => ErrKind::Reset,
                    _ => ErrKind::Tls,
                }
            })?;
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn != Some(b"h2") {
                let got = alpn.map_or("no ALPN".into(), |p| {
                    String::from_utf8_lossy(p).into_owned()
                });
                note_error("TLS ALPN", &format!("the server did not select h2 ({got})"));
                return Err(ErrKind::Tls);
            }
            handshake(tls, state).await
        }
    }
}

/// The HTTP/2 handshake over `io`; the connection's driver runs as its own task and marks the
/// connection dead when it ends.
async fn handshake<T>(
    io: T,
    state: &Rc<ConnState>,
) -> Result<(SendRequest<Bytes>, JoinHandle<()>), ErrKind>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| {
            note_error("HTTP/2 handshake", &e);
            kind_of(&e, state.tls)
        })?;
    let st = state.clone();
    let driver = tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            note_error("HTTP/2 connection", &e);
            st.error.set(Some(kind_of(&e, st.tls)));
        }
        st.dead.send_replace(true);
    });
    Ok((send, driver))
}

/// How one exchange failed.
enum Failure {
    /// The request failed (counted as an error of this kind).
    Request(ErrKind),
    /// The connection takes no new streams (closed, or GOAWAY): not a request failure; the
    /// stream ends and the request is tried again on the next connection.
    Unusable,
}

/// One stream's loop on one connection: sends the request, reads the whole response, records
/// it, repeats; ends with the run or when its connection is over. Returns its next scheduled
/// send (open loop) so the schedule carries over to the next connection.
struct StreamTask {
    setup: Arc<H2Setup>,
    stats: Rc<RefCell<ThreadStats>>,
    progress: Progress,
    thread: usize,
    clock: Clock,
    conn: Rc<ConnState>,
    send: SendRequest<Bytes>,
    next_send: Option<Instant>,
}

impl StreamTask {
    async fn run(mut self) -> Option<Instant> {
        let clock = self.clock;
        let mut dead = self.conn.dead.subscribe();
        loop {
            let now = Instant::now();
            if now >= clock.end || self.conn.is_dead() {
                break;
            }
            // Closed loop: start now. Open loop: at the scheduled time (late = at once, and the
            // lateness is part of the measured latency).
            let t0 = match (self.next_send, clock.interval) {
                (Some(t), Some(iv)) => {
                    if t >= clock.end {
                        break;
                    }
                    if t > now {
                        tokio::select! {
                            _ = tokio::time::sleep_until(t.into()) => {}
                            _ = dead.wait_for(|d| *d) => break,
                        }
                    }
                    self.next_send = Some(t + iv);
                    t
                }
                _ => now,
            };
            let started = Instant::now();
            let req_deadline = started + clock.timeout;
            let deadline = req_deadline.min(clock.end + END_GRACE);
            // On timeout the stream is dropped, which resets it (RST_STREAM CANCEL); the
            // connection goes on.
            let res = tokio::time::timeout_at(deadline.into(), self.exchange()).await;
            let done = Instant::now();
            let outcome = match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(Failure::Request(kind))) => Err(Some(kind)),
                Ok(Err(Failure::Unusable)) => {
                    if self.next_send.is_some() {
                        self.next_send = Some(t0);
                    }
                    break;
                }
                Err(_) => Err((deadline == req_deadline).then_some(ErrKind::Timeout)),
            };
            match outcome {
                Ok(()) => self.conn.ok.set(self.conn.ok.get() + 1),
                Err(_) => self.conn.failed.set(self.conn.failed.get() + 1),
            }
            if clock.counts(t0) {
                self.stats.borrow_mut().record(t0, done, outcome);
            }
            self.progress[self.thread].fetch_add(1, Ordering::Relaxed);
        }
        self.next_send
    }

    /// Opens a stream (waiting for the server's concurrency limit), sends the request and
    /// reads the whole response body, releasing flow-control capacity as it goes.
    async fn exchange(&mut self) -> Result<(), Failure> {
        let tls = self.conn.tls;
        poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .map_err(|_| Failure::Unusable)?;
        let (response, _) = self
            .send
            .send_request(self.setup.request(), true)
            .map_err(|e| {
                if e.is_io() || e.is_go_away() || e.is_reset() {
                    Failure::Unusable
                } else {
                    Failure::Request(kind_of(&e, tls))
                }
            })?;
        let response = response
            .await
            .map_err(|e| Failure::Request(kind_of(&e, tls)))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| Failure::Request(kind_of(&e, tls)))?;
            // Releasing capacity only fails once the stream is gone; the body has ended then.
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        if !(200..400).contains(&status) {
            return Err(Failure::Request(ErrKind::Status));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_maps_host_to_authority_and_rejects_connection_headers() {
        let t = Target::parse("http://127.0.0.1:81/p?q=1").unwrap();
        let s = H2Setup::new(&t, &[], None, 4).unwrap();
        assert_eq!(s.uri.to_string(), "http://127.0.0.1:81/p?q=1");
        let h = vec![
            ("Host".to_string(), "example.com".to_string()),
            ("X-A".to_string(), "1".to_string()),
            ("TE".to_string(), "trailers".to_string()),
        ];
        let s = H2Setup::new(&t, &h, None, 1).unwrap();
        let r = s.request();
        assert_eq!(r.uri().authority().map(|a| a.as_str()), Some("example.com"));
        assert_eq!(r.headers().get("x-a").unwrap(), "1");
        assert!(r.headers().get("host").is_none());
        assert_eq!(r.version(), Version::HTTP_2);
        for bad in ["Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade"] {
            let h = vec![(bad.to_string(), "x".to_string())];
            assert!(H2Setup::new(&t, &h, None, 1).is_err(), "{bad}");
        }
        let h = vec![("te".to_string(), "gzip".to_string())];
        assert!(H2Setup::new(&t, &h, None, 1).is_err());
    }
}
