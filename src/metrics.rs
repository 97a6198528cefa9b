//! Counters and latency histograms.
//!
//! Every worker writes only its own cache-line-padded slot (single-writer load + store, no atomic
//! read-modify-write, no shared line written per request); the admin thread sums the slots when
//! asked. Latency goes into a per-worker hdrhistogram `Recorder` (lock-free on record) whose
//! samples the admin thread merges with `SyncHistogram::refresh_timeout`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam::utils::CachePadded;
use hdrhistogram::sync::{Recorder, SyncHistogram};
use hdrhistogram::Histogram;

/// Latency histograms record microseconds from 1 µs to 10 minutes at 3 significant figures.
pub const LATENCY_MAX_US: u64 = 600_000_000;
pub const LATENCY_SIGFIG: u8 = 3;
/// How long a latency merge waits for the workers' recorders. A busy worker hands its samples
/// over at its next record; an idle one from its pool sweeper (`Worker::publish_latency`, every
/// `POOL_SWEEP_INTERVAL`), so this is a little longer than that interval.
pub const LATENCY_REFRESH_TIMEOUT: Duration = Duration::from_millis(750);

/// Kinds of failure counted per listener (the label of `ringlb_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest = 0,
    ClientTimeout = 1,
    UpstreamConnect = 2,
    UpstreamTimeout = 3,
    UpstreamReset = 4,
    BadResponse = 5,
    NoTarget = 6,
    ClientReset = 7,
    AcceptResource = 8,
    /// A TLS handshake failed or timed out (garbage, plain HTTP, old protocol versions).
    TlsHandshake = 9,
}

pub const ERROR_KINDS: [ErrorKind; 10] = [
    ErrorKind::BadRequest,
    ErrorKind::ClientTimeout,
    ErrorKind::UpstreamConnect,
    ErrorKind::UpstreamTimeout,
    ErrorKind::UpstreamReset,
    ErrorKind::BadResponse,
    ErrorKind::NoTarget,
    ErrorKind::ClientReset,
    ErrorKind::AcceptResource,
    ErrorKind::TlsHandshake,
];

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::NoTarget => "no_target",
            ErrorKind::ClientReset => "client_reset",
            ErrorKind::AcceptResource => "accept_resource",
            ErrorKind::TlsHandshake => "tls_handshake",
        }
    }
}

/// One worker's counters for one listener.
#[derive(Default)]
pub struct ListenerSlot {
    /// Responses by status class: index 1..=5 for 1xx..5xx.
    pub responses: [AtomicU64; 6],
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub errors: [AtomicU64; ERROR_KINDS.len()],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Connections and requests refused at the door, by `guard::Rejection`.
    pub rejections: [AtomicU64; crate::guard::REJECTIONS.len()],
    /// Client connections that speak HTTP/2 (h2 or h2c), and those open now.
    pub h2_connections_total: AtomicU64,
    pub h2_connections_open: AtomicU64,
    /// HTTP/2 streams (requests) taken, and those refused or reset by ringlb's own limits.
    pub h2_streams_total: AtomicU64,
    pub h2_streams_refused: AtomicU64,
    /// Failed TLS handshakes by `tls::client_auth::FailureReason`.
    pub tls_failures: [AtomicU64; crate::tls::client_auth::FAILURE_REASONS.len()],
}

#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl ListenerSlot {
    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        add(&self.responses[class], 1);
    }
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        add(&self.errors[kind as usize], 1);
    }
    /// A TLS handshake failed (also counted as an `ErrorKind::TlsHandshake` error).
    #[inline]
    pub fn tls_failed(&self, r: crate::tls::client_auth::FailureReason) {
        add(&self.tls_failures[r as usize], 1);
    }
    #[inline]
    pub fn rejected(&self, r: crate::guard::Rejection) {
        add(&self.rejections[r as usize], 1);
    }
    #[inline]
    pub fn opened(&self) {
        add(&self.connections_total, 1);
        add(&self.connections_open, 1);
    }
    #[inline]
    pub fn closed(&self) {
        self.connections_open.store(
            self.connections_open.load(Relaxed).saturating_sub(1),
            Relaxed,
        );
    }
    #[inline]
    pub fn h2_opened(&self) {
        add(&self.h2_connections_total, 1);
        add(&self.h2_connections_open, 1);
    }
    #[inline]
    pub fn h2_closed(&self) {
        self.h2_connections_open.store(
            self.h2_connections_open.load(Relaxed).saturating_sub(1),
            Relaxed,
        );
    }
    #[inline]
    pub fn h2_stream(&self) {
        add(&self.h2_streams_total, 1);
    }
    #[inline]
    pub fn h2_refused(&self) {
        add(&self.h2_streams_refused, 1);
    }
    #[inline]
    pub fn bytes(&self, inbound: u64, outbound: u64) {
        add(&self.bytes_in, inbound);
        add(&self.bytes_out, outbound);
    }
}

/// A listener's counters (one slot per worker) and its merged latency histogram.
pub struct ListenerStats {
    pub slots: Box<[CachePadded<ListenerSlot>]>,
    latency: Mutex<SyncHistogram<u64>>,
}

impl ListenerStats {
    pub fn new(workers: usize) -> ListenerStats {
        let h = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
            .unwrap_or_else(|_| {
                Histogram::<u64>::new(LATENCY_SIGFIG).unwrap_or_else(|_| unreachable!())
            });
        ListenerStats {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(ListenerSlot::default()))
                .collect(),
            latency: Mutex::new(SyncHistogram::from(h)),
        }
    }

    pub fn slot(&self, worker: usize) -> &ListenerSlot {
        &self.slots[worker % self.slots.len()]
    }

    /// A recorder for one worker (taken once at worker start, never on the request path).
    pub fn recorder(&self) -> Recorder<u64> {
        match self.latency.lock() {
            Ok(h) => h.recorder(),
            Err(poisoned) => poisoned.into_inner().recorder(),
        }
    }

    /// Merges what the workers recorded and hands the merged histogram to `f` (admin thread).
    pub fn with_latency<R>(&self, f: impl FnOnce(&Histogram<u64>) -> R) -> R {
        let mut h = match self.latency.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        h.refresh_timeout(LATENCY_REFRESH_TIMEOUT);
        f(&h)
    }

    /// As [`Self::with_latency`], without waiting: merges what the workers already handed over
    /// and asks for the rest, which the next merge picks up (the dashboard's 1 s sampler, which
    /// must not stall the admin thread).
    pub fn with_latency_now<R>(&self, f: impl FnOnce(&Histogram<u64>) -> R) -> R {
        let mut h = match self.latency.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        h.refresh_timeout(Duration::ZERO);
        f(&h)
    }

    pub fn sum(&self, f: impl Fn(&ListenerSlot) -> &AtomicU64) -> u64 {
        self.slots.iter().map(|s| f(s).load(Relaxed)).sum()
    }
}
