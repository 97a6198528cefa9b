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
/// How long a worker's park may wait in its ring (one `io_uring_enter` that submits and waits)
/// before it goes back to tokio's `epoll_wait` for a while (vendored tokio-uring, patch 5).
/// Longer than the kernel's scheduler tick (4 ms at 250 Hz), so that the timer the kernel arms
/// for the wait is seldom the next one due and seldom reprograms the hardware timer (a trip to
/// the host in a VM): with 1 ms that cost more than the wait saved (+9.5% CPU per request, wrk
/// `Connection: close`). A tokio timer due while a worker waits here with nothing else to do
/// is late by at most this much.
pub const RING_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
/// How long `Server::start` waits for the workers' accept loops to run.
pub const WORKERS_LISTENING_WITHIN: Duration = Duration::from_secs(5);

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
    #[error("cannot install the signal handlers (SIGTERM, SIGHUP, SIGUSR1, SIGUSR2)")]
    Signals,
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
    /// Every worker's listening sockets with their listener's index (registered by the worker
    /// before its accept loop, taken out before the socket closes), so that a drain stops all of
    /// them at once and an upgrade can hand them over.
    listening: Mutex<Vec<(RawFd, usize)>>,
    /// Set as the drain begins, before any listener stops.
    stopping: std::sync::atomic::AtomicBool,
    /// The admin socket's address and descriptor (open while the admin thread runs).
    admin_socket: std::sync::OnceLock<(SocketAddr, RawFd)>,
    /// A binary upgrade holds copies of the listening sockets: they are never shut down (that
    /// would stop the new process too); workers cancel their own accepts instead, and reloads
    /// wait until the upgrade has ended.
    handing_over: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A worker's listening socket of listener `index` joins the registry.
    pub fn listening_opened(&self, fd: RawFd, index: usize) {
        if let Ok(mut l) = self.listening.lock() {
            l.push((fd, index));
        }
    }

    /// How many listening sockets have an accept loop now.
    pub fn listening_count(&self) -> usize {
        self.listening.lock().map_or(0, |l| l.len())
    }

    /// A listening socket leaves the registry; call before it closes.
    pub fn listening_closing(&self, fd: RawFd) {
        if let Ok(mut l) = self.listening.lock() {
            l.retain(|&(f, _)| f != fd);
        }
    }

    /// A copy (`dup`, close-on-exec) of every registered listening socket, by listener index.
    pub fn listening_copies(&self) -> std::io::Result<Vec<(usize, std::os::fd::OwnedFd)>> {
        let l = self
            .listening
            .lock()
            .map_err(|_| std::io::Error::other("listening registry poisoned"))?;
        l.iter()
            .map(|&(fd, index)| {
                // SAFETY: registered fds are open while the lock is held (see `begin_drain`).
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                Ok((index, fd.try_clone_to_owned()?))
            })
            .collect()
    }

    /// A copy of the admin socket and its address, when the admin API runs.
    pub fn admin_copy(&self) -> std::io::Result<Option<(SocketAddr, std::os::fd::OwnedFd)>> {
        if self.stopping() {
            return Ok(None);
        }
        match self.admin_socket.get() {
            // SAFETY: the admin thread keeps the socket open until the drain, which has not
            // begun (checked above; drains and upgrades both start on the main thread).
            Some(&(addr, fd)) => Ok(Some((
                addr,
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?,
            ))),
            None => Ok(None),
        }
    }

    /// Whether a binary upgrade holds copies of the listening sockets.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_handing_over(&self, on: bool) {
        self.handing_over
            .store(on, std::sync::atomic::Ordering::Release);
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
        // After an upgrade the new process accepts on these very sockets: each worker cancels
        // its own accepts instead (`Worker::start_drain`).
        if self.handing_over() {
            let _ = self.drain.send(true);
            return;
        }
        if let Ok(l) = self.listening.lock() {
            for &(fd, _) in l.iter() {
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

/// Builds an io_uring runtime for the calling thread, with COOP_TASKRUN + TASKRUN_FLAG +
/// SINGLE_ISSUER where the kernel has them, and without them where it does not. Its park
/// waits in the ring for up to [`RING_WAIT`] (patch 5 of the vendored tokio-uring,
/// `vendor/tokio-uring/PATCHES.md`); in the parks that do not (a quiet runtime's), TASKRUN_FLAG
/// lets it skip its `io_uring_enter` when there is nothing to submit and no completion is due
/// (patch 1).
pub fn uring_runtime() -> std::io::Result<tokio_uring::Runtime> {
    uring_runtime_with(URING_ENTRIES, RING_WAIT)
}

/// [`uring_runtime`] with a ring of `entries` submission slots (twice as many completion
/// slots) and a park that waits in the ring for up to `ring_wait`.
fn uring_runtime_with(
    entries: u32,
    ring_wait: std::time::Duration,
) -> std::io::Result<tokio_uring::Runtime> {
    let mut flags = tokio_uring::uring_builder();
    flags
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    let mut b = tokio_uring::builder();
    b.entries(entries)
        .uring_builder(&flags)
        .ring_wait(ring_wait);
    match tokio_uring::Runtime::new(&b) {
        Ok(rt) => Ok(rt),
        Err(_) => {
            let mut plain = tokio_uring::builder();
            plain.entries(entries).ring_wait(ring_wait);
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
        Server::start_inheriting(config, None)
    }

    /// [`Server::start`] for the new process of a binary upgrade: listeners and the admin API
    /// take the old process's sockets where the config still has them, instead of binding.
    pub fn start_inheriting(
        config: Config,
        mut inherited: Option<&mut crate::upgrade::Inherited>,
    ) -> Result<Server, StartError> {
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
        let built = crate::reload::build(
            config,
            workers,
            None,
            &mut next_index,
            inherited.as_deref_mut(),
        )?;
        let config = built.snapshot.config.clone();
        let per_worker = crate::reload::per_worker(built.fresh, workers);
        let listening_sockets: usize = per_worker.iter().map(Vec::len).sum();
        // The admin socket is bound before any thread starts, so a bad address stops start-up.
        let admin_sock = match &config.admin {
            Some(a) => match inherited.as_deref_mut().and_then(|i| i.take_admin(a.bind)) {
                Some(sock) => Some(sock),
                None => Some(
                    crate::admin::bind(a.bind).map_err(|source| StartError::Bind {
                        name: "admin".to_string(),
                        addr: a.bind,
                        source,
                    })?,
                ),
            },
            None => None,
        };
        let inherited_any = inherited.is_some();
        if let Some(i) = inherited {
            i.release_unused();
        }
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
            admin_socket: std::sync::OnceLock::new(),
            handing_over: std::sync::atomic::AtomicBool::new(false),
        });
        // The new process of an upgrade shares its listening sockets with the old one until it
        // has reported ready: a failure before that must not shut them down.
        if inherited_any {
            shared.set_handing_over(true);
        }
        if let (Some(addr), Some(sock)) = (admin_addr, &admin_sock) {
            use std::os::fd::AsRawFd;
            let _ = shared.admin_socket.set((addr, sock.as_raw_fd()));
        }
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
        // Started means accepting: every worker has its accept loops running (so a SIGUSR2 right
        // after start hands over every socket, and READY=1 tells the truth). A worker that
        // failed to start never registers; its sockets are logged as missing below.
        let until = Instant::now() + WORKERS_LISTENING_WITHIN;
        while shared.listening_count() < listening_sockets && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        if shared.listening_count() < listening_sockets {
            tracing::warn!(
                expected = listening_sockets,
                accepting = shared.listening_count(),
                "not every worker is accepting yet"
            );
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

/// `ringlb run`: start, then serve until SIGTERM/SIGINT, and drain; SIGUSR2 upgrades the binary
/// (see [`crate::upgrade`]). `inherited`: this process is an upgrade's new one.
pub fn run(
    config: Config,
    mut inherited: Option<crate::upgrade::Inherited>,
) -> Result<(), StartError> {
    for w in config.listeners.iter().flat_map(|l| l.warnings()) {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Thread {
            id: usize::MAX,
            source,
        })?;
    // Handlers first: once the ports are open a SIGUSR2 or SIGHUP may come, and their default
    // action would end the process.
    let signals = {
        let _in_runtime = rt.enter();
        Signals::install()
    };
    let Some(signals) = signals else {
        if let Some(i) = &inherited {
            i.report_failure(&StartError::Signals.to_string());
        }
        return Err(StartError::Signals);
    };
    let server = match Server::start_inheriting(config, inherited.as_mut()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(i) = &inherited {
                i.report_failure(&e.to_string());
            }
            return Err(e);
        }
    };
    if let Some(i) = &inherited {
        tracing::info!(
            old_pid = i.from_pid,
            "upgrade: serving on the sockets of the old process; it stops accepting and drains"
        );
        if let Err(e) = i.report_ready() {
            tracing::warn!(error = %e, "upgrade: cannot tell the old process this one is ready; it keeps serving alongside until stopped");
        }
        // Ours alone from now on: the old process stops accepting and never shuts them down.
        server.shared.set_handing_over(false);
    }
    drop(inherited);
    // systemd (Type=notify): serving now, and this is the main process (after an upgrade too).
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Ready,
    ]);
    let handed_over = rt.block_on(signals.serve(&server));
    let drain_timeout = server.shared.snapshot().config.runtime.drain_timeout;
    if !handed_over {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    if server.drain(drain_timeout) {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; exiting with requests still in flight");
    }
    Ok(())
}

/// The signals the main thread handles (installed within its tokio runtime).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
            usr1: signal(SignalKind::user_defined1()).ok()?,
            usr2: signal(SignalKind::user_defined2()).ok()?,
        })
    }

    /// The main thread's signal loop; returns when the server should drain: `true` when a new
    /// process took over the listening sockets (SIGUSR2), `false` on SIGTERM/SIGINT.
    async fn serve(self, server: &Server) -> bool {
        signal_loop(self, server).await
    }
}

async fn signal_loop(s: Signals, server: &Server) -> bool {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
        mut usr2,
    } = s;
    let (outcome_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let mut upgrade: Option<crate::upgrade::InProgress> = None;
    // SIGTERM during an upgrade: the new process is stopped too (it may be serving already).
    let stop_child = |u: &Option<crate::upgrade::InProgress>| {
        if let Some(u) = u {
            tracing::info!(pid = u.pid, "stopping the upgrade's new process as well");
            u.terminate();
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); stop_child(&upgrade); return false; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); stop_child(&upgrade); return false; }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening access logs");
                server.reopen_logs();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged by `reload` itself.
                let _ = crate::reload::reload(&server.shared);
            }
            _ = usr2.recv() => match &upgrade {
                Some(u) => tracing::warn!(
                    pid = u.pid,
                    "SIGUSR2 refused: an upgrade is already in progress (new process started {:.1}s ago)",
                    u.started.elapsed().as_secs_f64()
                ),
                None => match crate::upgrade::begin(&server.shared, outcome_tx.clone()) {
                    Ok(u) => {
                        tracing::info!(pid = u.pid, "SIGUSR2: upgrading: started the new process; handing it the listening sockets");
                        upgrade = Some(u);
                    }
                    Err(e) => tracing::error!(error = %e, "SIGUSR2: upgrade not started; this process keeps serving"),
                },
            },
            Some(outcome) = outcomes.recv() => {
                upgrade = None;
                match outcome {
                    crate::upgrade::Outcome::Ready(pid) => {
                        tracing::info!(new_pid = pid, "upgrade: the new process serves; this one stops accepting, drains and exits");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]);
                        return true;
                    }
                    crate::upgrade::Outcome::Failed(reason) => {
                        tracing::error!("upgrade failed; this process keeps serving: {reason}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod park_tests;

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use crate::io::{Backend, Stream};

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    /// The park skips its submit only when nothing is queued: a write queued by a task that a
    /// timer woke (nothing else wakes this runtime) still reaches the kernel at the next park.
    #[test]
    fn a_write_queued_after_a_timer_wakes_its_task_is_submitted() {
        let (mut peer, ours) = pair();
        let rt = super::uring_runtime().expect("io_uring runtime");
        let wrote = rt.block_on(async move {
            let s = Stream::from_std(Backend::Uring, ours).expect("stream");
            let task = tokio_uring::spawn(async move {
                // The runtime parks idle first (the flush with nothing to submit), then the
                // timer wakes this task, which queues its write.
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.write_all(b"after the timer".to_vec()).await.0
            });
            tokio::time::timeout(Duration::from_secs(5), task).await
        });
        let wrote = wrote.expect("the write was never submitted");
        wrote.expect("join").expect("write");
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = [0u8; 15];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"after the timer");
    }

    /// A burst of completions larger than the completion queue overflows it; the kernel keeps
    /// the overflow until a submit asks for events, so the park's skipped submit must not skip
    /// it then (a ring of 4 entries has 8 completion slots; 64 operations complete at once).
    #[test]
    fn completions_beyond_a_full_completion_queue_are_not_stranded() {
        let rt = super::uring_runtime_with(4, super::RING_WAIT).expect("io_uring runtime");
        let done = rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| tokio_uring::spawn(tokio_uring::no_op()))
                .collect();
            tokio::time::timeout(Duration::from_secs(5), async {
                let mut done = 0;
                for t in tasks {
                    if matches!(t.await, Ok(Ok(()))) {
                        done += 1;
                    }
                }
                done
            })
            .await
        });
        assert_eq!(done.expect("completions were stranded"), 64);
    }

    /// Two runtimes on one thread each have their own table of fixed files: a socket
    /// registered while the first runs uses the first ring's slot, not the second's.
    #[test]
    fn two_runtimes_on_one_thread_keep_their_fixed_files_apart() {
        let (mut peer0, ours0) = pair();
        let (mut peer1, ours1) = pair();
        let a = super::uring_runtime().expect("first runtime");
        let s0 = a.block_on(async move {
            let s = Stream::from_std(Backend::Uring, ours0).expect("stream");
            assert!(s.register_fixed(), "no slot on the first ring");
            s
        });
        let b = super::uring_runtime().expect("second runtime");
        let s1 = a.block_on(async move {
            let s = Stream::from_std(Backend::Uring, ours1).expect("stream");
            assert!(s.register_fixed(), "no slot on the first ring");
            let (res, _) = s.write_all(b"for peer 1".to_vec()).await;
            res.expect("write");
            s
        });
        peer1
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = [0u8; 10];
        peer1.read_exact(&mut got).expect("peer 1 reads its bytes");
        assert_eq!(&got, b"for peer 1");
        // Both close: their slots are emptied, so each peer sees the end of its stream.
        drop(s0);
        drop(s1);
        for peer in [&mut peer0, &mut peer1] {
            peer.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut rest = [0u8; 16];
            assert_eq!(peer.read(&mut rest).expect("end of stream"), 0);
        }
        drop(b);
    }

    /// A read pending while the runtime sleeps completes when its bytes arrive: the completion
    /// is due as task work, which the park's skipped submit must not strand.
    #[test]
    fn a_read_pending_while_the_runtime_sleeps_completes_when_its_bytes_arrive() {
        let (mut peer, ours) = pair();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            peer.write_all(b"late bytes").expect("write");
            peer
        });
        let rt = super::uring_runtime().expect("io_uring runtime");
        let got = rt.block_on(async move {
            let s = Stream::from_std(Backend::Uring, ours).expect("stream");
            let mut got = Vec::new();
            while got.len() < 10 {
                let read =
                    tokio::time::timeout(Duration::from_secs(5), s.read(Vec::with_capacity(64)))
                        .await;
                let (res, buf) = read.expect("the read never completed");
                let n = res.expect("read");
                assert!(n > 0, "end of stream before the bytes");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        assert_eq!(got, b"late bytes");
        drop(writer.join());
    }
}
