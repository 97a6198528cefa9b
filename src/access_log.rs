//! JSON access logs: one object per request, buffered per worker, written by one writer thread,
//! reopened on SIGUSR1 (logrotate's `postrotate`).
//!
//! Threads and ownership:
//! - Each worker owns a `WorkerLogs`: one `RefCell<Vec<u8>>` per logging listener. A request
//!   appends its line there (no lock, no syscall). When a buffer passes `FLUSH_BYTES`, or at the
//!   worker's once-a-second tick (`flush_loop`), the whole buffer is handed to the writer thread
//!   through a bounded channel; a full channel drops the batch and counts it, so a slow disk never
//!   blocks a worker or grows memory without bound.
//! - The **access-log writer thread** (`AccessLogs`, created by the main thread in
//!   `Server::start`) owns the open files. It writes each batch with one `write_all` on a file
//!   opened with O_APPEND; batches hold whole lines and only this thread writes, so lines from
//!   different workers never interleave. Disk latency stays off the workers: a worker's event
//!   loop serves thousands of connections, and one slow `write(2)` would stall them all.
//! - Reopen: the main thread bumps a shared generation counter (`AccessLogs::reopen`); the writer
//!   reopens every file path at its next wake-up (at most `FLUSH_INTERVAL` later).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::worker::Worker;

mod format;

pub use format::{json_bytes, write_line, write_rfc3339, Exchange, LineContext};

/// A worker hands its buffer to the writer once it holds this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// And at least this often while it holds anything.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Batches queued for the writer thread (each up to about `FLUSH_BYTES` plus one line): bounds the
/// memory a stalled disk can hold at about 16 MiB. Beyond, batches are dropped and counted.
pub const QUEUE_BATCHES: usize = 256;
/// The `access_log` value that means standard output.
pub const STDOUT: &str = "-";

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("listener '{listener}': cannot open access_log {path}: {source} (check that the directory exists and ringlb may write there)")]
    Open {
        listener: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the access log writer thread: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Lines {
        sink: usize,
        bytes: Vec<u8>,
    },
    /// Reopen now (the generation changed); sent without waiting, so it may be lost to a full
    /// queue, in which case the writer notices at its next wake-up.
    Wake,
    Stop,
}

/// The access logs of a server: shared by all workers, built by the main thread.
pub struct AccessLogs {
    tx: Option<SyncSender<Msg>>,
    /// By listener index: the sink its lines go to.
    sink_of: Vec<Option<usize>>,
    /// By listener index: its name as a JSON string.
    names_json: Vec<Vec<u8>>,
    generation: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where lines go: a file (reopened by path) or standard output.
struct Sink {
    path: Option<PathBuf>,
    file: Option<File>,
    /// A failure was logged and no write succeeded since: stay quiet.
    failing: bool,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        let res = match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => std::io::stdout().lock().write_all(bytes),
        };
        match res {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(path = ?self.path, error = %e, "access log write failed; lines are lost until it works again");
            }
            Err(_) => {}
        }
    }

    fn reopen(&mut self) {
        let Some(path) = &self.path else { return };
        match open(path) {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot reopen access log; still writing to the old file")
            }
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLogs {
    /// Opens every listener's `access_log` (listeners naming the same path share one file) and
    /// starts the writer thread when at least one listener logs.
    pub fn open(config: &Config) -> Result<AccessLogs, AccessLogError> {
        let mut sinks: Vec<Sink> = Vec::new();
        let mut sink_of = Vec::with_capacity(config.listeners.len());
        let mut names_json = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let mut name = Vec::new();
            json_bytes(&mut name, l.name.as_bytes());
            names_json.push(name);
            let Some(target) = &l.access_log else {
                sink_of.push(None);
                continue;
            };
            let path = (target != STDOUT).then(|| PathBuf::from(target));
            if let Some(i) = sinks.iter().position(|s| s.path == path) {
                sink_of.push(Some(i));
                continue;
            }
            let file = match &path {
                Some(p) => Some(open(p).map_err(|source| AccessLogError::Open {
                    listener: l.name.clone(),
                    path: p.clone(),
                    source,
                })?),
                None => None,
            };
            sink_of.push(Some(sinks.len()));
            sinks.push(Sink {
                path,
                file,
                failing: false,
            });
        }
        let generation = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, thread) = if sinks.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = sync_channel(QUEUE_BATCHES);
            let (g, d) = (generation.clone(), dropped.clone());
            let t = std::thread::Builder::new()
                .name("ringlb-alog".into())
                .spawn(move || writer(sinks, rx, g, d))
                .map_err(AccessLogError::Thread)?;
            (Some(tx), Some(t))
        };
        Ok(AccessLogs {
            tx,
            sink_of,
            names_json,
            generation,
            dropped,
            thread: Mutex::new(thread),
        })
    }

    /// What SIGUSR1 does: every log file is reopened by path (after logrotate moved it).
    pub fn reopen(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::Wake);
        }
    }

    /// Batches dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is queued and ends the writer thread (after the workers flushed).
    pub fn stop(&self) {
        let Ok(mut t) = self.thread.lock() else {
            return;
        };
        if let (Some(tx), Some(handle)) = (&self.tx, t.take()) {
            let _ = tx.send(Msg::Stop);
            let _ = handle.join();
        }
    }

    /// A worker's buffers, one per logging listener.
    pub fn for_worker(&self) -> WorkerLogs {
        WorkerLogs {
            tx: self.tx.clone(),
            bufs: self
                .sink_of
                .iter()
                .map(|s| s.map(|sink| (sink, RefCell::new(Vec::new()))))
                .collect(),
            names_json: self.names_json.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// The writer thread: writes batches, reopens on a new generation, reports drops.
fn writer(
    mut sinks: Vec<Sink>,
    rx: Receiver<Msg>,
    generation: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let mut seen = generation.load(Ordering::Acquire);
    let mut reported = 0;
    loop {
        let msg = rx.recv_timeout(FLUSH_INTERVAL);
        let g = generation.load(Ordering::Acquire);
        if g != seen {
            seen = g;
            sinks.iter_mut().for_each(Sink::reopen);
            tracing::info!("access logs reopened");
        }
        match msg {
            Ok(Msg::Lines { sink, bytes }) => {
                if let Some(s) = sinks.get_mut(sink) {
                    s.write(&bytes);
                }
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
        }
        let d = dropped.load(Ordering::Relaxed);
        if d != reported {
            tracing::warn!(
                batches = d - reported,
                "access log lines dropped: the log writer could not keep up with the disk"
            );
            reported = d;
        }
    }
}

/// One worker's log buffers (indexed by listener); owned by the worker's thread.
pub struct WorkerLogs {
    tx: Option<SyncSender<Msg>>,
    bufs: Vec<Option<(usize, RefCell<Vec<u8>>)>>,
    names_json: Vec<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl WorkerLogs {
    /// Whether listener `index` logs (cheap: checked before anything is noted for a line).
    #[inline]
    pub fn enabled(&self, index: usize) -> bool {
        matches!(self.bufs.get(index), Some(Some(_)))
    }

    /// Whether any listener logs on this worker.
    pub fn any(&self) -> bool {
        self.bufs.iter().any(Option::is_some)
    }

    /// Appends the line of one finished request of listener `index`.
    pub fn log(
        &self,
        index: usize,
        client: std::net::SocketAddr,
        tls: Option<&'static str>,
        client_cert: Option<&crate::tls::ClientCert>,
        ex: &Exchange,
    ) {
        let Some(Some((sink, buf))) = self.bufs.get(index) else {
            return;
        };
        let cx = LineContext {
            now: SystemTime::now(),
            client,
            listener_json: self.names_json.get(index).map_or(b"null", |n| n),
            tls,
            client_cert,
        };
        let full = {
            let mut b = buf.borrow_mut();
            if b.capacity() == 0 {
                b.reserve(FLUSH_BYTES + FLUSH_BYTES / 8);
            }
            write_line(&mut b, &cx, ex);
            b.len() >= FLUSH_BYTES
        };
        if full {
            self.send(*sink, buf);
        }
    }

    /// Hands every non-empty buffer to the writer.
    pub fn flush(&self) {
        for (sink, buf) in self.bufs.iter().flatten() {
            if !buf.borrow().is_empty() {
                self.send(*sink, buf);
            }
        }
    }

    fn send(&self, sink: usize, buf: &RefCell<Vec<u8>>) {
        let Some(tx) = &self.tx else { return };
        let bytes = std::mem::replace(
            &mut *buf.borrow_mut(),
            Vec::with_capacity(FLUSH_BYTES + FLUSH_BYTES / 8),
        );
        match tx.try_send(Msg::Lines { sink, bytes }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The line of a connection refused at accept (over a connection cap: 503 on http listeners;
/// denied by the ACL or on other protocols: closed, status null).
pub fn log_refusal(
    logs: &WorkerLogs,
    plan: &crate::worker::ListenerPlan,
    client: std::net::SocketAddr,
    r: crate::guard::Rejection,
) {
    if !logs.enabled(plan.index) {
        return;
    }
    let ex = Exchange::default();
    ex.started();
    if r != crate::guard::Rejection::AclDenied
        && plan.protocol == crate::config::ListenerProtocol::Http
    {
        ex.status.set(503);
    }
    logs.log(plan.index, client, None, None, &ex);
}

/// A worker task: flushes the worker's log buffers every `FLUSH_INTERVAL` until it drains (the
/// worker flushes once more when its last connection ended).
pub async fn flush_loop(w: Rc<Worker>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        w.access_logs().flush();
        if w.is_draining() {
            break;
        }
    }
}
