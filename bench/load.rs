//! The `load` engine: starts one pinned thread per `-t`, each running its share of the
//! connections (closed loop, or open loop on a schedule with `--rate`), and merges the per-thread
//! histograms and error counters at the end. HTTP/1.1 connections run here; `--http2` threads
//! run `h2load` instead (same stats, clock and progress counters).
//! The caller's thread coordinates (window edges, progress line); each load thread owns its
//! `ThreadStats` (shared by its connection tasks through an `Rc<RefCell>`), returned on join.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;

use crate::client::{build_request, Conn, ConnSetup, ErrKind, Target, READ_BUF};
use crate::io::{self, IoKind};

/// Histogram range: 1 µs .. 60 s, 3 significant figures.
pub const HIST_MAX_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;
/// How long requests still in flight at the end of the window may take to finish.
pub(crate) const END_GRACE: Duration = Duration::from_millis(250);
/// Pause after a failed connect before the next try (keeps a dead target from spinning a core).
pub(crate) const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Most connections or threads accepted (bounded memory).
pub const MAX_CONNECTIONS: usize = 100_000;
pub const MAX_THREADS: usize = 1024;
/// Most `--streams` per HTTP/2 connection, and in total over all connections.
pub const MAX_STREAMS: usize = 10_000;
pub const MAX_TOTAL_STREAMS: usize = 1_000_000;
/// Bounds of `--rate` (requests/s in total).
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1e8;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    pub threads: usize,
    pub rate: Option<f64>,
    pub close: bool,
    pub insecure: bool,
    /// https: disable session resumption (every new connection is a full handshake).
    pub no_resume: bool,
    pub headers: Vec<(String, String)>,
    pub warmup: Duration,
    pub timeout: Duration,
    pub cpus: Option<Vec<usize>>,
    pub progress: bool,
    /// Speak HTTP/2 (ALPN h2 over TLS, h2c with prior knowledge over plain TCP).
    pub http2: bool,
    /// HTTP/2: concurrent streams per connection (ignored for HTTP/1.1).
    pub streams: usize,
}

/// Bad options or a failed setup.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad option: {0}")]
    Option(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("bad TLS server name '{0}': use a DNS name or an IP address in the URL")]
    ServerName(String),
    #[error("cannot start load thread {0}: {1}")]
    Thread(usize, std::io::Error),
    #[error("load thread {0} failed: {1}")]
    ThreadFailed(usize, String),
}

/// Requests failed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; ErrKind::ALL.len()]);

impl ErrorCounts {
    pub fn add(&mut self, k: ErrKind) {
        self.0[k as usize] += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ErrKind::ALL.iter().map(|&k| (k.name(), self.0[k as usize]))
    }
    fn merge(&mut self, o: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
}

/// The outcome of a run.
pub struct LoadResult {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub rate: Option<f64>,
    pub close: bool,
    /// The measured window (warm-up excluded).
    pub duration: Duration,
    /// Successful requests in the window.
    pub requests: u64,
    pub errors: ErrorCounts,
    /// Latency in µs of the successful requests.
    pub hist: Histogram<u64>,
    pub io: IoKind,
    /// The first connect/TLS (or HTTP/2 connection) failure's message, if any.
    pub first_error: Option<String>,
    pub http2: bool,
    /// Streams per connection (1 for HTTP/1.1).
    pub streams: usize,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Moments the coordinator reports to the caller (e.g. to sample a process's CPU time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    WindowStart,
    WindowEnd,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("constant histogram bounds")
}

/// One load thread's results.
pub(crate) struct ThreadStats {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub errors: ErrorCounts,
}

impl ThreadStats {
    pub fn new() -> ThreadStats {
        ThreadStats {
            hist: new_histogram(),
            requests: 0,
            errors: ErrorCounts::default(),
        }
    }

    /// Takes the stats out of the thread's shared cell once its tasks are done.
    pub fn take(stats: Rc<RefCell<ThreadStats>>) -> ThreadStats {
        Rc::try_unwrap(stats)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| {
                let b = rc.borrow();
                ThreadStats {
                    hist: b.hist.clone(),
                    requests: b.requests,
                    errors: b.errors,
                }
            })
    }

    /// Records one finished request started (or scheduled) at `t0`: a latency sample on
    /// success, an error count on failure (`None`: cut off by the end of the run, not counted).
    pub fn record(&mut self, t0: Instant, done: Instant, outcome: Result<(), Option<ErrKind>>) {
        match outcome {
            Ok(()) => {
                let us = (done - t0).as_micros().min(HIST_MAX_US as u128) as u64;
                self.hist.saturating_record(us.max(1));
                self.requests += 1;
            }
            Err(Some(kind)) => self.errors.add(kind),
            Err(None) => {}
        }
    }
}

/// Timing shared by every connection of a run.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub warm_end: Instant,
    pub end: Instant,
    pub timeout: Duration,
    /// Per-connection (HTTP/2: per-stream) interval between intended sends (open loop).
    pub interval: Option<Duration>,
}

impl Clock {
    /// Whether a request started (or scheduled) at `t0` belongs to the measured window.
    pub fn counts(&self, t0: Instant) -> bool {
        t0 >= self.warm_end && t0 < self.end
    }
}

/// Per-thread progress counters (requests finished), read by the coordinator.
pub(crate) type Progress = Arc<Vec<CachePadded<AtomicU64>>>;

/// One load thread's share of the connections.
pub(crate) struct ThreadPlan {
    pub thread: usize,
    /// Connections this thread runs, and the run-wide index of its first one.
    pub conns: usize,
    pub first_conn: usize,
    pub total_conns: usize,
    pub clock: Clock,
    pub progress: Progress,
}

/// Runs the load; blocks until done. `on_edge` is called on this thread at the window's edges.
pub fn run(opts: &LoadOpts, on_edge: &mut dyn FnMut(Edge)) -> Result<LoadResult, LoadError> {
    if opts.connections == 0 || opts.connections > MAX_CONNECTIONS {
        return Err(LoadError::Option(format!(
            "-c must be 1..={MAX_CONNECTIONS}, got {}",
            opts.connections
        )));
    }
    if opts.threads == 0 || opts.threads > MAX_THREADS {
        return Err(LoadError::Option(format!(
            "-t must be 1..={MAX_THREADS}, got {}",
            opts.threads
        )));
    }
    if opts.duration.is_zero() {
        return Err(LoadError::Option("-d must be longer than 0".into()));
    }
    if opts.timeout.is_zero() {
        return Err(LoadError::Option("--timeout must be longer than 0".into()));
    }
    let streams = if opts.http2 { opts.streams } else { 1 };
    if opts.http2 {
        if opts.streams == 0 || opts.streams > MAX_STREAMS {
            return Err(LoadError::Option(format!(
                "--streams must be 1..={MAX_STREAMS}, got {}",
                opts.streams
            )));
        }
        if opts.connections.saturating_mul(opts.streams) > MAX_TOTAL_STREAMS {
            return Err(LoadError::Option(format!(
                "-c × --streams must be at most {MAX_TOTAL_STREAMS}"
            )));
        }
        if opts.close {
            return Err(LoadError::Option(
                "--close cannot be combined with --http2 (HTTP/2 multiplexes requests over \
                 long-lived connections; run --close over HTTP/1.1)"
                    .into(),
            ));
        }
    } else if opts.streams != 1 {
        return Err(LoadError::Option(
            "--streams needs --http2 (HTTP/1.1 has one request in flight per connection)".into(),
        ));
    }
    // Each HTTP/1.1 connection, or each HTTP/2 stream, keeps its own schedule.
    let senders = opts.connections * streams;
    let interval = match opts.rate {
        None => None,
        Some(r) if (MIN_RATE..=MAX_RATE).contains(&r) => {
            Some(Duration::from_secs_f64(senders as f64 / r))
        }
        Some(r) => {
            return Err(LoadError::Option(format!(
                "--rate must be {MIN_RATE}..={MAX_RATE} requests/s, got {r}"
            )))
        }
    };
    let threads = opts.threads.min(opts.connections);
    let tls = if opts.target.https {
        let cfg = crate::tls::client_config(opts.insecure, !opts.no_resume, opts.http2)?;
        let name = ServerName::try_from(opts.target.host.clone())
            .map_err(|_| LoadError::ServerName(opts.target.host.clone()))?;
        Some((cfg, name))
    } else {
        None
    };
    let h2 = if opts.http2 {
        Some(Arc::new(crate::h2load::H2Setup::new(
            &opts.target,
            &opts.headers,
            tls.clone(),
            streams,
        )?))
    } else {
        None
    };
    let request = Arc::new(build_request(&opts.target, &opts.headers, opts.close));
    let start = Instant::now();
    let clock = Clock {
        warm_end: start + opts.warmup,
        end: start + opts.warmup + opts.duration,
        timeout: opts.timeout,
        interval,
    };
    let progress: Progress = Arc::new(
        (0..threads)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
    );

    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let conns = opts.connections / threads + usize::from(i < opts.connections % threads);
        let first_conn = i * (opts.connections / threads) + i.min(opts.connections % threads);
        let cpus = opts.cpus.clone();
        let tls = tls.clone();
        let request = request.clone();
        let progress = progress.clone();
        let addr = opts.target.addr;
        let close = opts.close;
        let total_conns = opts.connections;
        let h2 = h2.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                io::pin_thread(i, cpus.as_deref());
                if let Some(h2) = h2 {
                    let plan = ThreadPlan {
                        thread: i,
                        conns,
                        first_conn,
                        total_conns,
                        clock,
                        progress,
                    };
                    return crate::h2load::run_thread(h2, plan);
                }
                io::block_on(|kind| async move {
                    let setup = Rc::new(ConnSetup { kind, addr, tls });
                    let stats = Rc::new(RefCell::new(ThreadStats::new()));
                    let mut tasks = Vec::with_capacity(conns);
                    for c in 0..conns {
                        let task = ConnTask {
                            setup: setup.clone(),
                            stats: stats.clone(),
                            progress: progress.clone(),
                            thread: i,
                            request: request.as_ref().clone(),
                            close,
                            clock,
                            // Spread the connections' schedules evenly over one interval.
                            offset: clock
                                .interval
                                .map(|iv| iv.mul_f64((first_conn + c) as f64 / total_conns as f64)),
                        };
                        tasks.push(tokio::task::spawn_local(task.run()));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    let s = ThreadStats::take(stats);
                    let first_error = crate::client::FIRST_ERROR.with(|f| f.borrow_mut().take());
                    (s, kind, first_error)
                })
            })
            .map_err(|e| LoadError::Thread(i, e))?;
        handles.push(h);
    }

    coordinate(opts, &clock, start, &progress, on_edge);

    let mut hist = new_histogram();
    let mut requests = 0;
    let mut errors = ErrorCounts::default();
    let mut io_kind = IoKind::Uring;
    let mut first_error = None;
    for (i, h) in handles.into_iter().enumerate() {
        let (s, kind, err) = h
            .join()
            .map_err(|_| LoadError::ThreadFailed(i, "panicked".into()))?
            .map_err(|e| LoadError::ThreadFailed(i, e.to_string()))?;
        // Same bounds on every histogram: adding cannot fail.
        let _ = hist.add(&s.hist);
        requests += s.requests;
        errors.merge(&s.errors);
        io_kind = kind;
        first_error = first_error.or(err);
    }
    Ok(LoadResult {
        url: opts.target.url.clone(),
        connections: opts.connections,
        threads,
        rate: opts.rate,
        close: opts.close,
        duration: opts.duration,
        requests,
        errors,
        hist,
        io: io_kind,
        first_error,
        http2: opts.http2,
        streams,
    })
}

/// Waits out the run on the caller's thread: window edges, and a progress line per second on a
/// terminal.
fn coordinate(
    opts: &LoadOpts,
    clock: &Clock,
    start: Instant,
    progress: &[CachePadded<AtomicU64>],
    on_edge: &mut dyn FnMut(Edge),
) {
    let mut started = false;
    let mut last = 0u64;
    let mut next_tick = start + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if !started && now >= clock.warm_end {
            started = true;
            on_edge(Edge::WindowStart);
        }
        if now >= clock.end {
            on_edge(Edge::WindowEnd);
            break;
        }
        if opts.progress && now >= next_tick {
            let total: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            let phase = if started { "run" } else { "warm-up" };
            println!(
                "  {:>5.1}s {phase}: {} req/s",
                (now - start).as_secs_f64(),
                total - last
            );
            last = total;
            next_tick += Duration::from_secs(1);
        }
        let mut wake = clock.end;
        if opts.progress {
            wake = wake.min(next_tick);
        }
        if !started {
            wake = wake.min(clock.warm_end);
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

/// One connection's loop; owns its request bytes, read buffer and (re)connects as needed.
struct ConnTask {
    setup: Rc<ConnSetup>,
    stats: Rc<RefCell<ThreadStats>>,
    progress: Progress,
    thread: usize,
    request: Vec<u8>,
    close: bool,
    clock: Clock,
    offset: Option<Duration>,
}

impl ConnTask {
    async fn run(mut self) {
        let clock = self.clock;
        let mut conn: Option<Conn> = None;
        let mut buf = Vec::with_capacity(READ_BUF);
        let mut next_send = self.offset.map(|o| clock.warm_end.min(Instant::now()) + o);
        loop {
            let now = Instant::now();
            if now >= clock.end {
                break;
            }
            // Closed loop: start now. Open loop: start at the scheduled time (late = at once,
            // and the lateness is part of the measured latency).
            let t0 = match (&mut next_send, clock.interval) {
                (Some(next), Some(iv)) => {
                    let t = *next;
                    *next += iv;
                    if t >= clock.end {
                        break;
                    }
                    if t > now {
                        tokio::time::sleep_until(t.into()).await;
                    }
                    t
                }
                _ => now,
            };
            let started = Instant::now();
            let req_deadline = started + clock.timeout;
            let deadline = req_deadline.min(clock.end + END_GRACE);
            let res = tokio::time::timeout_at(
                deadline.into(),
                exchange(&self.setup, &mut conn, &mut self.request, &mut buf),
            )
            .await;
            let done = Instant::now();
            let counted = clock.counts(t0);
            let outcome = match res {
                Ok(Ok(keep)) => {
                    if !keep || self.close {
                        drop_conn(&mut conn);
                    }
                    Ok(())
                }
                Ok(Err(kind)) => {
                    drop_conn(&mut conn);
                    Err(Some(kind))
                }
                Err(_) => {
                    // A timed-out uring read is not cancelled: shut the socket, never reuse it.
                    drop_conn(&mut conn);
                    Err((deadline == req_deadline).then_some(ErrKind::Timeout))
                }
            };
            if counted {
                self.stats.borrow_mut().record(t0, done, outcome);
            }
            self.progress[self.thread].fetch_add(1, Ordering::Relaxed);
            if let Err(Some(ErrKind::Connect | ErrKind::Refused | ErrKind::Tls)) = outcome {
                if next_send.is_none() {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
        drop_conn(&mut conn);
    }
}

fn drop_conn(conn: &mut Option<Conn>) {
    if let Some(c) = conn.take() {
        c.shutdown();
    }
}

/// Opens the connection if needed, then runs one request/response.
async fn exchange(
    setup: &ConnSetup,
    conn: &mut Option<Conn>,
    req: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> Result<bool, ErrKind> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(setup).await?),
    };
    c.exchange(req, buf).await
}
