//! A client connection's life between busy spells: parked while it waits for its next request,
//! busy while it serves requests, or a tunnel after a 101.
//!
//! Runs in the connection's task on the worker that accepted it. The task keeps only what a
//! parked connection needs ([`Idle`]: the socket, its TLS state, its listener); a busy spell
//! (`ClientConn` with its buffers, head, upstream and relays) and a tunnel run in boxed futures
//! that are freed when they end. So an idle connection costs its socket and a few hundred bytes,
//! and a busy one costs one allocation per spell, never one per request.

use super::*;
use crate::http::relay::Duplex;

/// What a parked connection keeps while it waits for its next request: the socket (with its
/// TLS state) and where it belongs; no buffer and no request state.
pub struct Idle {
    pub(super) w: Rc<Worker>,
    pub(super) plan: Arc<ListenerPlan>,
    pub(super) client: MaybeTls,
    pub(super) peer: SocketAddr,
}

/// What follows a busy spell.
pub enum After {
    /// The connection is done (closed or reset).
    Closed,
    /// The client went quiet between requests: wait for it parked.
    Parked(Idle),
    /// A 101 was relayed: copy both ways until either side is done.
    Tunnel(Tunnel),
    /// The client speaks HTTP/2 (ALPN h2, or the h2c preface, which leads the bytes given).
    Http2(Idle, Vec<u8>),
}

/// How `ClientConn::run` ended.
#[derive(PartialEq, Eq)]
pub(super) enum Ended {
    Closed,
    Parked,
    Tunnel,
    Http2,
}

/// An upgraded connection (WebSocket and the like): both sockets and the target whose
/// in-flight count it holds.
pub struct Tunnel {
    client: MaybeTls,
    upstream: MaybeTls,
    target: Rc<LocalTarget>,
    idle_timeout: std::time::Duration,
}

impl Tunnel {
    /// Copies both ways until each side has closed its half, or nothing moved for the
    /// listener's idle timeout. Neither direction holds a buffer while nothing moves. Boxed,
    /// and built for plain sockets when neither side is TLS (a much smaller state).
    fn run(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let Tunnel {
            client,
            upstream,
            target,
            idle_timeout,
        } = self;
        match (client, upstream) {
            (MaybeTls::Plain(c), MaybeTls::Plain(u)) => {
                Box::pin(copy_both(c, u, target, idle_timeout))
            }
            (c, u) => Box::pin(copy_both(c, u, target, idle_timeout)),
        }
    }
}

async fn copy_both<A: Duplex, B: Duplex>(
    client: A,
    upstream: B,
    target: Rc<LocalTarget>,
    idle: std::time::Duration,
) {
    crate::http::relay::tunnel(&client, &upstream, Vec::new(), idle).await;
    target.end();
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// What serves a connection after a busy spell until it closes, boxed (`None`: it is closed).
/// The connection's task holds only this pointer, so what it keeps while parked is the parked
/// loop's own state (`Idle` and its wait), not every form the connection passed through.
pub fn serve_parked(
    after: After,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
    match after {
        After::Closed => None,
        After::Tunnel(t) => Some(t.run()),
        After::Http2(idle, first) => {
            let Idle {
                w,
                plan,
                client,
                peer,
            } = idle;
            Some(crate::http2::serve_boxed(w, plan, client, peer, first))
        }
        After::Parked(idle) => Some(crate::boxed::pinned(move || parked(idle))),
    }
}

/// A parked connection: each next request is waited for holding no buffer, then served in a
/// boxed busy spell; what follows a spell other than parking again is served by its own boxed
/// future. A plain function around an `async move` block: the block uses `idle` where it was
/// captured, where an `async fn` would keep its argument and a copy of it (measured: 480 bytes
/// against 336).
#[allow(clippy::manual_async_fn)]
fn parked(mut idle: Idle) -> impl std::future::Future<Output = ()> {
    async move {
        loop {
            if !idle.wait().await {
                let _ = idle.client.shutdown(std::net::Shutdown::Both);
                return;
            }
            // Whatever follows the spell is boxed before anything is awaited, so no `After` is
            // part of this (long-lived) state.
            let rest = match crate::boxed::pinned(move || busy(idle, Vec::new())).await {
                After::Parked(next) => {
                    idle = next;
                    continue;
                }
                other => serve_parked(other),
            };
            if let Some(rest) = rest {
                rest.await;
            }
            return;
        }
    }
}

impl Idle {
    /// Waits, holding no buffer, for the next request's first bytes, at most what is left of
    /// the idle timeout (the connection went quiet about `PARK_AFTER` ago). `false`: close (the
    /// timeout, an error, or the worker drains).
    async fn wait(&self) -> bool {
        if self.w.idle_closing() {
            return false;
        }
        let left = self
            .plan
            .limits
            .idle_timeout
            .saturating_sub(crate::io::park::PARK_AFTER);
        let fd = self.client.as_raw_fd();
        let key = self.w.idle_enter(fd);
        // The worker's watchdog ends the wait at the timeout (it shuts the socket's receiving
        // side down, which wakes the wait), so a parked connection holds no timer of its own.
        // Only that side: the caller's shutdown still sends a TLS client its close_notify.
        let watch = crate::io::deadline::arm_read(fd, left);
        let res = self.client.readable().await;
        self.w.idle_leave(key);
        // Readable while draining: a request came in the grace; it is served (and the
        // connection then closes). After the grace the read finds the end of the stream.
        res.is_ok() && !watch.expired()
    }
}

/// Serves requests on a connection until the client closes, goes quiet, or upgrades.
pub(super) async fn busy(idle: Idle, rbuf: Vec<u8>) -> After {
    let Idle {
        w,
        plan,
        client,
        peer,
    } = idle;
    let mut conn = ClientConn {
        w,
        group: plan.group.clone(),
        plan,
        client,
        peer,
        rbuf,
        head: RequestHead::new(),
        ex: Exchange::default(),
        upgraded: None,
        affinity: Default::default(),
        corked: Default::default(),
    };
    let ended = conn.run().await;
    let ClientConn {
        w,
        plan,
        client,
        peer,
        mut rbuf,
        upgraded,
        ..
    } = conn;
    if ended != Ended::Http2 {
        bufs::give(std::mem::take(&mut rbuf));
    }
    match (ended, upgraded) {
        (Ended::Parked, _) => After::Parked(Idle {
            w,
            plan,
            client,
            peer,
        }),
        (Ended::Http2, _) => After::Http2(
            Idle {
                w,
                plan,
                client,
                peer,
            },
            rbuf,
        ),
        (Ended::Tunnel, Some((upstream, target))) => After::Tunnel(Tunnel {
            client,
            upstream,
            target,
            idle_timeout: plan.limits.idle_timeout,
        }),
        _ => After::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a one-argument function returns, without calling it.
    fn future_size<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A parked connection holds this state for as long as it waits (thousands of them on a
    /// busy listener): the `Idle` once, its wait (a readiness wait and a watchdog entry, no
    /// timer of its own), and a pointer to whatever runs next. As an `async fn` the loop kept
    /// its argument twice (480 bytes in a release build); with a tokio `Sleep` in its wait it
    /// was 336, which mimalloc rounds up to 384; now 248, in the 256-byte class.
    #[test]
    fn a_parked_connections_state_holds_its_idle_once_and_no_timer() {
        let idle = std::mem::size_of::<Idle>();
        let size = future_size(parked);
        assert!(
            size < 2 * idle,
            "the parked loop's state is {size} bytes (Idle is {idle})"
        );
        assert!(size <= 256, "the parked loop's state is {size} bytes");
    }
}
