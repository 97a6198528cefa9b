//! Starting and stopping the server: choose the I/O backend, bind every listener once per worker,
//! spawn the pinned worker threads, and drain them on shutdown.
//!
//! Runs on the main thread. It builds the state the workers share (`Shared`: the current
//! `Snapshot` of listener plans and target table, swapped whole by a reload — see `reload.rs`)
//! and then only signals: the drain flag goes to every worker through a watch channel; no worker
//! ever waits for another.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, IoBackend};
use crate::io::Backend;
use crate::reload::Reloader;
use crate::target::Table;
use crate::worker::ListenerPlan;

/// io_uring submission queue size per worker.
pub const URING_ENTRIES: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is not available ({0}); set runtime.io = \"epoll\" or \"auto\"")]
    UringUnavailable(std::io::Error),
    #[error("listener '{name}': cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread {id}: {source}")]
    Thread { id: usize, source: std::io::Error },
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error("listener '{name}': {source}")]
    Rules {
        name: String,
        source: crate::router::RouterError,
    },
    #[error("no CPU is available to run a worker on")]
    NoCpu,
    #[error(transparent)]
    Tls(#[from] crate::tls::LocatedTlsError),
}

/// One configuration as served: built whole by the main thread, replaced whole by a reload.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub table: Arc<Table>,
    pub listeners: Vec<Arc<ListenerPlan>>,
    /// By group index: the TLS client of https target groups (re-encryption), `None` for plain.
    pub upstream_tls: Vec<Option<Arc<crate::tls::UpstreamTls>>>,
}

/// What every thread reads: the current snapshot, the drain signal, and the reload state.
pub struct Shared {
    current: ArcSwap<Snapshot>,
    /// The listeners' access logs and their writer thread, opened at start (by listener index;
    /// a reload may not change them: see `reload::check_access_logs`).
    pub access_logs: crate::access_log::AccessLogs,
    drain: watch::Sender<bool>,
    /// `None` until the workers run and again once draining started.
    pub(crate) reloader: Mutex<Option<Reloader>>,
    /// Every worker's listening sockets (registered by the worker before its accept loop, taken
    /// out before the socket closes), so that a drain stops all of them at once.
    listening: Mutex<Vec<RawFd>>,
    /// Set as the drain begins, before any listener stops.
    stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A worker's listening socket joins the registry.
    pub fn listening_opened(&self, fd: RawFd) {
        if let Ok(mut l) = self.listening.lock() {
            l.push(fd);
        }
    }

    /// A listening socket leaves the registry; call before it closes.
    pub fn listening_closing(&self, fd: RawFd) {
        if let Ok(mut l) = self.listening.lock() {
            l.retain(|&f| f != fd);
        }
    }

    /// True once a drain began (any thread may ask).
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Begins the drain: every worker's listening sockets stop accepting at the same moment,
    /// before any worker answers with `Connection: close`. Otherwise clients that reconnect after
    /// such an answer could land in the backlog of a worker that has not seen the drain yet,
    /// and be reset when it closes its socket.
    pub fn begin_drain(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(l) = self.listening.lock() {
            for &fd in l.iter() {
                // SAFETY: registered fds are open: a worker takes its fd out (under this lock)
                // before the socket closes.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
        let _ = self.drain.send(true);
    }

    pub fn drain_rx(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// The configuration in force now (a connection keeps the plan it started with).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        self.current.store(snapshot);
    }
}

/// A running server.
pub struct Server {
    pub shared: Arc<Shared>,
    pub backend: Backend,
    pub workers: usize,
    /// Where the admin API listens (port 0 resolved); `None` without an `[admin]` table.
    pub admin_addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    /// The health thread and the admin thread: they stop on the drain signal.
    aux: Vec<JoinHandle<()>>,
    done_rx: mpsc::Receiver<usize>,
}

/// Builds an io_uring runtime for the calling thread, with COOP_TASKRUN + SINGLE_ISSUER where the
/// kernel has them, and without them where it does not.
pub fn uring_runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut flags = tokio_uring::uring_builder();
    flags.setup_coop_taskrun().setup_single_issuer();
    let mut b = tokio_uring::builder();
    b.entries(URING_ENTRIES).uring_builder(&flags);
    match tokio_uring::Runtime::new(&b) {
        Ok(rt) => Ok(rt),
        Err(_) => {
            let mut plain = tokio_uring::builder();
            plain.entries(URING_ENTRIES);
            tokio_uring::Runtime::new(&plain)
        }
    }
}

/// Probes whether this process may use io_uring (sysctl `kernel.io_uring_disabled`, seccomp).
pub fn probe_uring() -> Result<(), std::io::Error> {
    // Probe on a scratch thread: a runtime must not be created inside another one.
    std::thread::spawn(|| uring_runtime().map(drop))
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("io_uring probe panicked")))
}

/// Chooses the backend `io` asks for; `auto` falls back to epoll with one warning.
pub fn choose_backend(io: IoBackend) -> Result<Backend, StartError> {
    match io {
        IoBackend::Epoll => Ok(Backend::Epoll),
        IoBackend::Uring => probe_uring()
            .map(|_| Backend::Uring)
            .map_err(StartError::UringUnavailable),
        IoBackend::Auto => match probe_uring() {
            Ok(()) => Ok(Backend::Uring),
            Err(e) => {
                tracing::warn!(
                    "io_uring is refused here ({e}); serving with epoll. \
                     Check sysctl kernel.io_uring_disabled or the container's seccomp profile."
                );
                Ok(Backend::Epoll)
            }
        },
    }
}

/// The CPUs this process may run on (its affinity mask: taskset and cpusets are respected).
pub fn allowed_cpus() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

impl Server {
    /// Validated config in, running workers out.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let backend = choose_backend(config.runtime.io)?;
        let cpus = allowed_cpus();
        let workers = match config.runtime.workers {
            0 => cpus.len().max(1),
            n => n,
        };
        if config.runtime.pin && cpus.is_empty() {
            return Err(StartError::NoCpu);
        }
        // Certificates, rules and every listener's sockets (one per worker) before any thread.
        let mut next_index = 0;
        let built = crate::reload::build(config, workers, None, &mut next_index)?;
        let config = built.snapshot.config.clone();
        let per_worker = crate::reload::per_worker(built.fresh, workers);
        // The admin socket is bound before any thread starts, so a bad address stops start-up.
        let admin_sock = match &config.admin {
            Some(a) => Some(
                crate::admin::bind(a.bind).map_err(|source| StartError::Bind {
                    name: "admin".to_string(),
                    addr: a.bind,
                    source,
                })?,
            ),
            None => None,
        };
        let admin_addr = admin_sock.as_ref().and_then(|l| l.local_addr().ok());
        let access_logs = crate::access_log::AccessLogs::open(&config)?;
        let (drain, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(built.snapshot),
            access_logs,
            drain,
            reloader: Mutex::new(None),
            listening: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let snapshot = shared.snapshot();
        let mut senders = Vec::with_capacity(workers);

        let (done_tx, done_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        for (id, sockets) in per_worker.into_iter().enumerate() {
            let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            let shared = shared.clone();
            let cpu = if config.runtime.pin {
                cpus.get(id % cpus.len().max(1)).copied()
            } else {
                None
            };
            let done = done_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("ringlb-w{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(cpu) {
                            tracing::warn!(worker = id, cpu = cpu.id, "could not pin worker");
                        }
                    }
                    if let Err(e) = crate::worker::run_thread(id, backend, shared, sockets, updates)
                    {
                        tracing::error!(worker = id, error = %e, "worker failed to start");
                    }
                    let _ = done.send(id);
                })
                .map_err(|source| StartError::Thread { id, source })?;
            threads.push(t);
        }
        let mut aux = Vec::with_capacity(1);
        let (aux_stop, aux_rx) = watch::channel(false);
        let checks = crate::reload::spawn_aux(&snapshot, aux_rx);
        let admin = admin_sock.map(|sock| crate::admin::spawn(shared.clone(), sock));
        let mut reloader = Reloader {
            senders,
            workers,
            runtime: config.runtime.clone(),
            admin_bind: config.admin.as_ref().map(|a| a.bind),
            next_index,
            aux_stop,
            aux: Vec::new(),
        };
        for (id, started) in [
            (usize::MAX - 1, Some(checks)),
            (usize::MAX - 2, admin.map(|r| r.map(|t| vec![t]))),
        ] {
            match started {
                Some(Ok(t)) if id == usize::MAX - 1 => reloader.aux.extend(t),
                Some(Ok(t)) => aux.extend(t),
                Some(Err(source)) => {
                    // Stop what already runs before reporting.
                    let _ = shared.drain.send(true);
                    drop(reloader.stop_aux());
                    return Err(StartError::Thread { id, source });
                }
                None => {}
            }
        }
        if let Ok(mut slot) = shared.reloader.lock() {
            *slot = Some(reloader);
        }
        if let Some(a) = admin_addr {
            tracing::info!(addr = %a, "admin API listening");
        }
        tracing::info!(workers, backend = backend.name(), "ringlb started");
        for p in &snapshot.listeners {
            tracing::info!(listener = %p.name, addr = %p.bound, "listening");
        }
        Ok(Server {
            shared,
            backend,
            workers,
            admin_addr,
            threads,
            aux,
            done_rx,
        })
    }

    /// The address a listener actually bound (port 0 resolved).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .snapshot()
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.bound)
    }

    /// Reopens every access log file by path, as SIGUSR1 does (after logrotate moved them).
    pub fn reopen_logs(&self) {
        self.shared.access_logs.reopen();
    }

    /// Stops accepting, lets in-flight requests finish, closes idle keep-alive connections, and
    /// waits at most `timeout`. Returns whether every worker finished in time.
    pub fn drain(self, timeout: Duration) -> bool {
        self.shared.begin_drain();
        let checks = match self.shared.reloader.lock() {
            Ok(mut r) => r.take().map(|mut r| r.stop_aux()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(_) => finished += 1,
                Err(_) => break,
            }
        }
        let all = finished == self.threads.len();
        if all {
            for t in self.threads {
                let _ = t.join();
            }
        }
        // The workers flushed their access log buffers as they ended.
        self.shared.access_logs.stop();
        // The health and admin threads end at their next poll of the drain signal.
        for t in self.aux.into_iter().chain(checks) {
            let _ = t.join();
        }
        all
    }
}

/// `ringlb run`: start, then serve until SIGTERM/SIGINT, and drain.
pub fn run(config: Config) -> Result<(), StartError> {
    let server = Server::start(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Thread {
            id: usize::MAX,
            source,
        })?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening access logs");
                    server.reopen_logs();
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by `reload` itself.
                    let _ = crate::reload::reload(&server.shared);
                }
            }
        }
    });
    let drain_timeout = server.shared.snapshot().config.runtime.drain_timeout;
    if server.drain(drain_timeout) {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; exiting with requests still in flight");
    }
    Ok(())
}
