//! Zero-downtime binary upgrade (SIGUSR2), as nginx and Pingora do it: the running process
//! starts the binary at the path it was started from, with the same arguments, and hands it every
//! listening socket over a socketpair, so the new process never binds and no SYN is refused.
//!
//! Old process: SIGUSR2 reaches the main thread ([`crate::runtime::run`]), which calls [`begin`]:
//! it copies the listening descriptors (workers' and admin), starts the child and leaves the rest
//! to an upgrade thread that sends them with the TLS ticket keys and waits for the child's word.
//! Only on "ready" does the main thread stop accepting (each worker cancels its own accepts: the
//! sockets stay open in the new process, so they are never shut down) and drain as on SIGTERM,
//! then exit 0. On any failure the child is reaped, the reason logged, and nothing changed: the
//! listening sockets get back this process's backlog and options, which the new one may have
//! set on them before it gave up.
//!
//! New process: [`Inherited::from_env`] (main thread, before the config is loaded) takes the
//! socket named by [`ENV_FD`] and reads the handover; `reload::build` then takes a listener's
//! sockets instead of binding, the admin socket likewise, and the ticket keys for unchanged
//! certificates. Once its workers run it reports ready (and tells systemd its PID).

mod wire;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::runtime::Shared;
use crate::tls::{CarriedTickets, TicketKeys};
use crate::worker::SocketSettings;

/// The environment variable naming the handover socket's descriptor in the new process.
pub const ENV_FD: &str = "RINGLB_UPGRADE_FD";
/// How long the new process may take from exec to serving (certificates, rules, workers).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Each wait on the handover socket, between checks that the child still runs.
const POLL: Duration = Duration::from_millis(200);
/// Format of the handover header; a new binary refuses a header it does not know.
const HANDOVER_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "{ENV_FD}={0}: not a handover socket from a running ringlb (unset it to start normally)"
    )]
    NotHandover(String),
    #[error("handover socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the old process closed the handover socket before sending its listeners")]
    Closed,
    #[error("the old process sent nothing within {0:?}")]
    TimedOut(Duration),
    #[error("the handover is malformed: {0}")]
    Malformed(String),
}

/// One listener's sockets as the old process had them.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct ListenerEntry {
    name: String,
    /// The configured address (port 0 stays 0); `bound` is what it resolved to.
    bind: SocketAddr,
    bound: SocketAddr,
    fds: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct TicketEntry {
    listener: String,
    /// Hex SHA-256 of the certificates the keys sealed sessions for.
    certificates: String,
    /// Base64 of [`TicketKeys::export`].
    keys: String,
}

/// The first message, old → new; the descriptors follow in order (listeners', then the admin's).
#[derive(Serialize, Deserialize, Debug)]
struct Header {
    version: u32,
    from_pid: u32,
    listeners: Vec<ListenerEntry>,
    admin: Option<SocketAddr>,
    tickets: Vec<TicketEntry>,
}

/// The new process's answer.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ready { pid: u32 },
    Failed { error: String },
}

// ---------------------------------------------------------------------------------------------
// The new process.

/// What the new process received: sockets to serve on instead of binding, and ticket keys.
pub struct Inherited {
    pub from_pid: u32,
    socket: OwnedFd,
    listeners: Vec<(ListenerEntry, Vec<TcpListener>)>,
    admin: Option<(SocketAddr, TcpListener)>,
    tickets: BTreeMap<String, CarriedTickets>,
}

impl Inherited {
    /// `None` when this process was not started by an upgrade; otherwise the handover, read now.
    pub fn from_env() -> Option<Result<Inherited, UpgradeError>> {
        let value = std::env::var(ENV_FD).ok()?;
        Some(Inherited::receive(&value))
    }

    fn receive(value: &str) -> Result<Inherited, UpgradeError> {
        let fd: RawFd = value
            .parse()
            .ok()
            .filter(|fd| *fd > 2 && wire::is_handover_socket(*fd))
            .ok_or_else(|| UpgradeError::NotHandover(value.to_string()))?;
        // SAFETY: the descriptor is an open SEQPACKET socket this process inherited for exactly
        // this purpose, and nothing else in the process refers to it.
        let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // Not passed on to whatever this process starts later (its own upgrade).
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        wire::set_timeout(&socket, READY_TIMEOUT)?;
        let (body, mut fds) = match wire::recv(&socket)? {
            wire::Received::Message(b, f) => (b, f),
            wire::Received::Closed => return Err(UpgradeError::Closed),
            wire::Received::TimedOut => return Err(UpgradeError::TimedOut(READY_TIMEOUT)),
        };
        let header: Header = serde_json::from_slice(&body)
            .map_err(|e| UpgradeError::Malformed(format!("header: {e}")))?;
        if header.version != HANDOVER_VERSION {
            return Err(UpgradeError::Malformed(format!(
                "handover version {} (this binary speaks {HANDOVER_VERSION})",
                header.version
            )));
        }
        let expected = header.listeners.iter().map(|l| l.fds).sum::<usize>()
            + usize::from(header.admin.is_some());
        while fds.len() < expected {
            match wire::recv(&socket)? {
                wire::Received::Message(_, more) if !more.is_empty() => fds.extend(more),
                wire::Received::Message(..) => {
                    return Err(UpgradeError::Malformed(
                        "a message without descriptors".into(),
                    ))
                }
                wire::Received::Closed => return Err(UpgradeError::Closed),
                wire::Received::TimedOut => return Err(UpgradeError::TimedOut(READY_TIMEOUT)),
            }
        }
        if fds.len() != expected {
            return Err(UpgradeError::Malformed(format!(
                "{} descriptors for {expected} sockets",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut listeners = Vec::with_capacity(header.listeners.len());
        for entry in header.listeners {
            let socks: Vec<TcpListener> = fds
                .by_ref()
                .take(entry.fds)
                .map(TcpListener::from)
                .collect();
            listeners.push((entry, socks));
        }
        let admin = header
            .admin
            .and_then(|addr| fds.next().map(|fd| (addr, TcpListener::from(fd))));
        let mut tickets = BTreeMap::new();
        for t in header.tickets {
            let engine = base64::engine::general_purpose::STANDARD;
            let keys = engine
                .decode(&t.keys)
                .ok()
                .and_then(|b| TicketKeys::import(&b));
            let certificates = hex32(&t.certificates);
            if let (Some(keys), Some(certificates)) = (keys, certificates) {
                tickets.insert(
                    t.listener,
                    CarriedTickets {
                        certificates,
                        keys: Arc::new(keys),
                    },
                );
            } else {
                tracing::warn!(listener = %t.listener, "upgrade: unreadable ticket keys; its clients make full handshakes once");
            }
        }
        Ok(Inherited {
            from_pid: header.from_pid,
            socket,
            listeners,
            admin,
            tickets,
        })
    }

    /// The old process's sockets of listener `name` if it listened on the same configured
    /// address, and the address they are bound to.
    pub fn take_listener(
        &mut self,
        name: &str,
        bind: SocketAddr,
    ) -> Option<(Vec<TcpListener>, SocketAddr)> {
        let same_name = self
            .listeners
            .iter()
            .position(|(e, _)| e.name == name && e.bind == bind);
        // A renamed listener on the same (non-zero) port keeps its sockets too, as on reload.
        let i = same_name.or_else(|| {
            (bind.port() != 0)
                .then(|| self.listeners.iter().position(|(e, _)| e.bind == bind))
                .flatten()
        })?;
        let (entry, socks) = self.listeners.swap_remove(i);
        (!socks.is_empty()).then_some((socks, entry.bound))
    }

    /// The old process's admin socket, if it listened on `bind` (or port 0 resolved from it).
    pub fn take_admin(&mut self, bind: SocketAddr) -> Option<TcpListener> {
        let same = self
            .admin
            .as_ref()
            .is_some_and(|(a, _)| *a == bind || (bind.port() == 0 && a.ip() == bind.ip()));
        if same {
            self.admin.take().map(|(_, l)| l)
        } else {
            None
        }
    }

    /// The old process's ticket keys for listener `name`.
    pub fn tickets(&self, name: &str) -> Option<&CarriedTickets> {
        self.tickets.get(name)
    }

    /// Closes the sockets the new config has no use for (the old process serves them until it
    /// has drained); call once the snapshot is built.
    pub fn release_unused(&mut self) {
        for (entry, _) in self.listeners.drain(..) {
            tracing::info!(listener = %entry.name, addr = %entry.bound, "upgrade: the new configuration has no such listener; it stops with the old process");
        }
        self.admin = None;
    }

    /// Tells the old process this one serves (it then stops accepting and drains).
    pub fn report_ready(&self) -> std::io::Result<()> {
        self.reply(&Reply::Ready {
            pid: std::process::id(),
        })
    }

    /// Tells the old process why this one will not serve (the old one keeps serving).
    pub fn report_failure(&self, error: &str) {
        let _ = self.reply(&Reply::Failed {
            error: error.to_string(),
        });
    }

    fn reply(&self, r: &Reply) -> std::io::Result<()> {
        let body = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        wire::send(&self.socket, &body, &[])
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The old process.

/// How an upgrade ended, from the upgrade thread to the main thread.
#[derive(Debug)]
pub enum Outcome {
    /// The new process (this PID) serves on the handed-over sockets.
    Ready(u32),
    /// It will not serve; this process keeps serving. The reason, for the log.
    Failed(String),
}

/// An upgrade under way.
pub struct InProgress {
    pub pid: u32,
    pub started: Instant,
    pidfd: Option<OwnedFd>,
}

/// Starts the new process and hands it the sockets (on a thread of its own); the outcome arrives
/// on `outcomes`. An error here means no process was started.
pub fn begin(
    shared: &Arc<Shared>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Result<InProgress, std::io::Error> {
    let mut argv = std::env::args_os();
    let program = argv
        .next()
        .ok_or_else(|| std::io::Error::other("this process has no argv[0] to start again"))?;
    // Under the reload lock: a reload either finished before (its listeners are handed over)
    // or sees `handing_over` and refuses (it must not add or shut down a listener now).
    let reload_lock = match shared.reloader.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    shared.set_handing_over(true);
    let collected = collect(shared);
    drop(reload_lock);
    let (header, fds, settings) = match collected {
        Ok(c) => c,
        Err(e) => {
            shared.set_handing_over(false);
            return Err(e);
        }
    };
    let body = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let (ours, theirs) = wire::pair()?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&program);
    cmd.args(argv)
        .env(ENV_FD, their_fd.to_string())
        .stdin(Stdio::null());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // The child's end survives exec; every other descriptor of ours stays close-on-exec.
            if libc::fcntl(their_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            shared.set_handing_over(false);
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", program.to_string_lossy()),
            ));
        }
    };
    // Only the child holds its end now: its exit closes the socket, which the thread sees.
    drop(theirs);
    let pid = child.id();
    // Signals to the child go through a pidfd: its PID may be reaped and reused meanwhile.
    let pidfd = pidfd_open(pid);
    let shared2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("ringlb-upgrade".to_string())
        .spawn(move || {
            let outcome = supervise(child, &ours, &body, &fds);
            if matches!(outcome, Outcome::Failed(_)) {
                // The child is gone and its copies of the sockets with it.
                restore_settings(&fds, &settings);
                shared2.set_handing_over(false);
            }
            let _ = outcomes.send(outcome);
        });
    if let Err(e) = spawned {
        // Without its supervisor the child would hang waiting; stop and reap it.
        // SAFETY: kill and waitpid on the PID of our own unreaped child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        shared.set_handing_over(false);
        return Err(e);
    }
    Ok(InProgress {
        pid,
        started: Instant::now(),
        pidfd,
    })
}

/// A pidfd for `pid` (Linux 5.3+), `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: the syscall takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| {
        // SAFETY: a fresh descriptor the kernel just gave us.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) }
    })
}

impl InProgress {
    /// Sends SIGTERM to the new process (SIGTERM during an upgrade stops both); through the
    /// pidfd, so a child already reaped is never confused with a process that reused its PID.
    pub fn terminate(&self) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own; no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGTERM,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// Copies of every listening socket (each worker's, by listener) and of the admin socket, with the
/// header that describes them.
/// The handover: its header, the descriptors it carries (listeners', then the admin socket),
/// and the settings each listener descriptor runs with here, in the same order.
type Collected = (Header, Vec<OwnedFd>, Vec<SocketSettings>);

fn collect(shared: &Shared) -> std::io::Result<Collected> {
    let snapshot = shared.snapshot();
    let mut by_index: BTreeMap<usize, Vec<OwnedFd>> = BTreeMap::new();
    for (index, fd) in shared.listening_copies()? {
        by_index.entry(index).or_default().push(fd);
    }
    let mut listeners = Vec::new();
    let mut fds = Vec::new();
    let mut settings = Vec::new();
    let mut tickets = Vec::new();
    for plan in &snapshot.listeners {
        let Some(socks) = by_index.remove(&plan.index) else {
            continue;
        };
        let bind = snapshot
            .config
            .listeners
            .iter()
            .find(|c| c.name == plan.name)
            .map(|c| c.bind)
            .unwrap_or(plan.bound);
        listeners.push(ListenerEntry {
            name: plan.name.clone(),
            bind,
            bound: plan.bound,
            fds: socks.len(),
        });
        settings.extend(std::iter::repeat_n(plan.sockets.clone(), socks.len()));
        fds.extend(socks);
        if let Some(tls) = &plan.tls {
            tickets.push(TicketEntry {
                listener: plan.name.clone(),
                certificates: to_hex(&tls.certificates),
                keys: base64::engine::general_purpose::STANDARD.encode(tls.tickets.export()),
            });
        }
    }
    let admin = match shared.admin_copy()? {
        Some((addr, fd)) => {
            fds.push(fd);
            // The configured address, so a new config with the same `[admin] bind` takes it.
            Some(
                snapshot
                    .config
                    .admin
                    .as_ref()
                    .map(|a| a.bind)
                    .filter(|b| b.port() != 0)
                    .unwrap_or(addr),
            )
        }
        None => None,
    };
    Ok((
        Header {
            version: HANDOVER_VERSION,
            from_pid: std::process::id(),
            listeners,
            admin,
            tickets,
        },
        fds,
        settings,
    ))
}

/// After a failed upgrade: the listening sockets get this process's backlog and options back,
/// which the new process may have changed (`listener::adopt`) before it gave up.
fn restore_settings(fds: &[OwnedFd], settings: &[SocketSettings]) {
    for (fd, set) in fds.iter().zip(settings) {
        if let Err(e) = crate::listener::restore(fd.as_raw_fd(), set) {
            tracing::warn!(error = %e, "upgrade: a listening socket keeps the new process's settings");
        }
    }
}

/// The upgrade thread: send the handover, then wait for the child's word, its exit, or the
/// timeout. A child that is not serving at the end is killed and reaped.
fn supervise(mut child: Child, sock: &OwnedFd, header: &[u8], fds: &[OwnedFd]) -> Outcome {
    let result = match handover(sock, header, fds) {
        Ok(()) => wait_ready(&mut child, sock),
        // Most likely it ended already (not a ringlb binary, or one without upgrade support).
        Err(e) => Err(match wait_exit(&mut child) {
            status if !status.is_empty() => format!(
                "the new process ended{status} before taking the listening sockets (its own log lines say why)"
            ),
            _ => e,
        }),
    };
    match result {
        Ok(pid) => Outcome::Ready(pid),
        Err(reason) => {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
            Outcome::Failed(reason)
        }
    }
}

fn handover(sock: &OwnedFd, header: &[u8], fds: &[OwnedFd]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot hand the listening sockets over: {e}");
    wire::set_timeout(sock, READY_TIMEOUT).map_err(fail)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut chunks = raw.chunks(wire::FDS_PER_MESSAGE);
    wire::send(sock, header, chunks.next().unwrap_or(&[])).map_err(fail)?;
    for chunk in chunks {
        wire::send(sock, b"+", chunk).map_err(fail)?;
    }
    Ok(())
}

fn wait_ready(child: &mut Child, sock: &OwnedFd) -> Result<u32, String> {
    wire::set_timeout(sock, POLL).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match wire::recv(sock) {
            Ok(wire::Received::Message(body, _)) => {
                return match serde_json::from_slice::<Reply>(&body) {
                    Ok(Reply::Ready { pid }) => Ok(pid),
                    Ok(Reply::Failed { error }) => {
                        // It exits on its own after saying why.
                        let status = wait_exit(child);
                        Err(format!("the new process refused to start{status}: {error}"))
                    }
                    Err(e) => Err(format!("the new process answered nonsense: {e}")),
                };
            }
            // A child that ends without reading what was sent resets the socket.
            Ok(wire::Received::Closed) | Err(_) => {
                let status = wait_exit(child);
                return Err(format!(
                    "the new process ended{status} before it was ready (its own log lines say why)"
                ));
            }
            Ok(wire::Received::TimedOut) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process ended ({status}) before it was ready (its own log lines say why)"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new process was not ready within {READY_TIMEOUT:?}; it was stopped"
            ));
        }
    }
}

/// Waits a little for the child to exit; " (exit status: N)" or "".
fn wait_exit(child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return format!(" ({status})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_names_its_sockets_and_keys_and_the_receiver_matches_them() {
        let (old, new) = wire::pair().expect("pair");
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
        let keys = TicketKeys::generate().expect("keys");
        let header = Header {
            version: HANDOVER_VERSION,
            from_pid: 1,
            listeners: vec![ListenerEntry {
                name: "web".into(),
                bind: "127.0.0.1:0".parse().expect("addr"),
                bound: a.local_addr().expect("addr"),
                fds: 2,
            }],
            admin: Some(admin.local_addr().expect("addr")),
            tickets: vec![TicketEntry {
                listener: "web".into(),
                certificates: to_hex(&[7u8; 32]),
                keys: base64::engine::general_purpose::STANDARD.encode(keys.export()),
            }],
        };
        let body = serde_json::to_vec(&header).expect("json");
        let fds: Vec<OwnedFd> = [&a, &b, &admin]
            .iter()
            .map(|l| OwnedFd::from(l.try_clone().expect("dup")))
            .collect();
        handover(&old, &body, &fds).expect("sent");
        let mut got = Inherited::receive(&new.as_raw_fd().to_string()).expect("received");
        std::mem::forget(new); // `got` owns the descriptor now
        assert_eq!(got.from_pid, 1);
        assert!(got
            .take_listener("api", "127.0.0.1:0".parse().expect("addr"))
            .is_none());
        let (socks, bound) = got
            .take_listener("web", "127.0.0.1:0".parse().expect("addr"))
            .expect("web's sockets");
        assert_eq!(socks.len(), 2);
        assert_eq!(bound, a.local_addr().expect("addr"));
        assert_eq!(
            socks[1].local_addr().expect("addr"),
            b.local_addr().expect("addr")
        );
        let carried = got.tickets("web").expect("keys");
        assert_eq!(carried.certificates, [7u8; 32]);
        let t = rustls::server::ProducesTickets::encrypt(&keys, b"x").expect("ticket");
        assert_eq!(
            rustls::server::ProducesTickets::decrypt(&*carried.keys, &t).as_deref(),
            Some(&b"x"[..])
        );
        assert!(got.take_admin(admin.local_addr().expect("addr")).is_some());
        got.report_ready().expect("reply");
        let wire::Received::Message(reply, _) = wire::recv(&old).expect("recv") else {
            panic!("no reply");
        };
        assert!(matches!(
            serde_json::from_slice::<Reply>(&reply),
            Ok(Reply::Ready { pid }) if pid == std::process::id()
        ));
    }

    #[test]
    fn a_descriptor_that_is_no_handover_socket_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        for bad in ["x", "-1", "1", &l.as_raw_fd().to_string()] {
            assert!(matches!(
                Inherited::receive(bad),
                Err(UpgradeError::NotHandover(_))
            ));
        }
    }
}
