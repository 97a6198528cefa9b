//! ringlb: a thread-per-core load balancer for Linux (HTTP, HTTPS and TCP) on io_uring.
//!
//! # Thread model
//! - The **main thread** parses and validates the config ([`config`]), builds the immutable
//!   listener plans and the shared target table ([`target`]), binds every listener once per worker
//!   ([`listener`]) and starts the workers ([`runtime`]). Afterwards it only handles signals.
//! - Each **worker** ([`worker`]) is a thread pinned to one allowed CPU, running its own event loop
//!   (tokio-uring, or tokio's epoll reactor where io_uring is refused) behind the owned-buffer I/O
//!   seam ([`io`]). It accepts on its own SO_REUSEPORT sockets, and a connection lives and dies on
//!   the worker that accepted it: HTTP heads are parsed in place ([`http::parse`]), a target is
//!   picked ([`balance`]) from the worker's mirror of the table, upstream connections come from the
//!   worker's own pools ([`pool`]), and bodies stream through ([`http::relay`]). HTTPS
//!   listeners and https target groups run rustls over the same seam on the same worker
//!   ([`tls`]); the TLS configs (certificates, ticket keys) are built once and shared. HTTP/2
//!   clients ([`http2`]) are served by the `h2` crate over that seam, one driver task per
//!   connection and one task per stream, each stream taking the HTTP/1.1 request path.
//! - The **health thread** ([`health`]) probes targets (active checks, and recovery probes for
//!   passively ejected ones) and writes their state atomics; the **admin thread** ([`admin`])
//!   serves `/status`, `/metrics`, `/latency` and target (de)registration. Both run their own
//!   current-thread tokio runtime, off the workers, and stop when the server drains. So does the
//!   **dns thread** ([`dns`]), present when the config has dns targets: it re-resolves them and
//!   swaps their group's membership.
//! - The **access-log writer thread** ([`access_log`]), present when a listener has an
//!   `access_log`, writes the JSON lines workers buffer and hand over in batches; SIGUSR1 (on the
//!   main thread) makes it reopen its files.
//! - On SIGUSR2 the main thread starts the binary again and an **upgrade thread** ([`upgrade`])
//!   hands the new process every listening socket and waits for its word; only once it serves
//!   does this process stop accepting and drain.
//! - Health state lives in atomics in the shared table; workers only read it, and write only their
//!   own padded counter slots ([`metrics`]). No lock is taken on the request path.
//!
//! # Data flow of one request
//! client bytes → worker's read buffer → `parse_request` (spans, no copy) → route ([`router`]:
//! listener rules) → pick target →
//! pooled or new upstream connection → forwarded head (hop-by-hop removed, X-Forwarded-* added) +
//! body → response head parsed in place → forwarded head + body streamed back → connection parked.
//! A tcp listener ([`l4`]) instead picks a target per connection and splices bytes both ways; a
//! PROXY header ([`proxy_protocol`]) may come first from the client and go first to the target.
//!
//! # Memory of a connection
//! A connection's task keeps only what it needs while nothing happens. Between requests a read
//! that brings nothing for 50 ms is withdrawn ([`io::park`]: the worker's parking lot cancels it
//! by descriptor on io_uring; on epoll the readiness wait times out), its buffer goes back to the
//! thread's free list ([`io::bufs`]), and the connection waits for readiness without a buffer.
//! A busy spell (requests, with their buffers, heads and upstreams), the TLS handshake and a
//! tunnel run in boxed futures freed when they end, so a parked connection's task is a few
//! hundred bytes; a tunnel direction, and a tcp listener's splice, hold a buffer or a pipe only
//! while bytes move. A busy keep-alive connection never parks and pays nothing for it.
//!
//! # Reload
//! SIGHUP or `POST /reload` ([`reload`]) builds a new [`runtime::Snapshot`] (table + plans) and
//! swaps it in whole; workers get new sockets and removed listeners by message; connections keep
//! the plan they started with.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod boxed;
pub mod config;
pub mod demo;
pub mod dns;
pub mod guard;
pub mod health;
pub mod http;
pub mod http2;
pub mod io;
pub mod l4;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy_protocol;
pub mod queue;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod sockopt;
pub mod sticky;
pub mod target;
pub mod tls;
pub mod tune;
pub mod upgrade;
pub mod worker;

#[cfg(test)]
#[path = "../tests/common/testdir.rs"]
mod testdir;
