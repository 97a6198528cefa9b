//! TCP (layer 4) listeners: each accepted connection goes to one target of the listener's tcp
//! target group (another target is tried when a connect fails, up to `retries`), optionally
//! preceded by a PROXY v1/v2 header, then both directions stream until each side has closed its
//! half, or nothing moved for the listener's `idle_timeout`.
//!
//! Payload moves with splice(2) (`l4/splice.rs`, no copy through user space); where pipes cannot
//! be had (descriptor limit), it falls back to the buffered copy tunnel of `http::relay`.
//!
//! Runs as one task on the worker that accepted the connection; the connection's buffers are
//! owned by that task, the target choice uses the worker's own balancer state.

mod splice;

use std::rc::Rc;
use std::sync::Arc;

use tokio::time::timeout;

use crate::config::ProxyProtocol;
use crate::io::Stream;
use crate::metrics::ErrorKind;
use crate::pool::LocalTarget;
use crate::proxy_protocol::{encode_v1, encode_v2, Client, ProxyAddrs};
use crate::target::{Reason, State, WorkerSlot};
use crate::worker::{ListenerPlan, Worker};

/// Serves one accepted connection of a tcp listener until both sides have closed; with an
/// `access_log`, the connection gets one line.
pub async fn serve(w: Rc<Worker>, plan: Arc<ListenerPlan>, client: Stream, who: Client) {
    let ex = crate::access_log::Exchange::default();
    ex.started();
    let (peer, index) = (who.peer, plan.index);
    serve_logged(w.clone(), plan, client, who, &ex).await;
    let logs = w.access_logs();
    if logs.enabled(index) {
        logs.log(index, peer, None, None, &ex);
    }
}

async fn serve_logged(
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    client: Stream,
    who: Client,
    ex: &crate::access_log::Exchange,
) {
    let group = plan.group.clone();
    let s = &group.settings;
    let stats = plan.stats.slot(w.id);
    let mut tried: Vec<u64> = Vec::new();
    let (target, upstream) = loop {
        let target = match w.pick(&group, who.peer.ip(), &tried) {
            Ok(t) => t,
            Err(_) => {
                stats.error(ErrorKind::NoTarget);
                tracing::debug!(listener = %plan.name, client = %who.peer, tried = tried.len(), "no target can take the connection");
                let _ = client.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        match timeout(
            s.connect_timeout,
            Stream::connect_upstream(
                w.backend,
                target.target.addr,
                group.config.congestion_control.as_deref(),
            ),
        )
        .await
        {
            Ok(Ok(up)) => break (target, up),
            result => {
                if let Ok(Err(e)) = &result {
                    tracing::debug!(target = %target.target.addr, error = %e, "connect failed");
                }
                connect_failed(&plan, &w, &target, s.passive_failures);
                tried.push(target.target.id);
                if tried.len() > s.retries as usize {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    };
    target.failures.set(0);
    target.begin();
    ex.forwarded(target.target.addr);
    // The PROXY header and any bytes read with the client's own header go out first.
    let mut first = Vec::new();
    let addrs = || ProxyAddrs {
        src: who.peer,
        dst: who
            .local
            .unwrap_or_else(|| crate::proxy_protocol::local_addr(&client, plan.bound)),
    };
    match group.config.proxy_protocol {
        ProxyProtocol::Off => {}
        ProxyProtocol::V1 => encode_v1(addrs(), &mut first),
        ProxyProtocol::V2 => encode_v2(addrs(), &mut first),
    }
    first.extend_from_slice(&who.rest);
    let idle = plan.limits.idle_timeout;
    let sent = first.len() as u64;
    let written = first.is_empty()
        || timeout(idle, upstream.write_all(first))
            .await
            .is_ok_and(|(r, _)| r.is_ok());
    let (inbound, outbound) = if written {
        match splice::tunnel(&client, &upstream, idle).await {
            Ok((i, o)) => (i + sent, o),
            Err(e) => {
                tracing::debug!(error = %e, "splice tunnel failed");
                (sent, 0)
            }
        }
    } else {
        (0, 0)
    };
    stats.bytes(inbound, outbound);
    ex.bytes_in.set(inbound);
    ex.bytes_out.set(outbound);
    target.end();
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// Counts a failed connect; `passive_failures` in a row mark the target unhealthy.
fn connect_failed(plan: &ListenerPlan, w: &Worker, t: &LocalTarget, passive_failures: u32) {
    plan.stats.slot(w.id).error(ErrorKind::UpstreamConnect);
    WorkerSlot::bump(&t.target.slot(w.id).connect_errors);
    let n = t.failures.get() + 1;
    t.failures.set(n);
    if passive_failures > 0
        && n >= passive_failures
        && t.target
            .transition(State::Unhealthy, Reason::PassiveFailures)
    {
        tracing::warn!(target = %t.target.addr, failures = n, "target marked unhealthy by failed connects");
    }
}
