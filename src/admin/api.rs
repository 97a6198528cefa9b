//! The admin API's JSON endpoints: `/status`, target registration and deregistration (with the
//! deregistration timer).
//!
//! Runs on the admin thread. Reads the shared table; writes membership through
//! `Group::edit_members` and target state through `Target::set_state`; the deregistration timers
//! are tasks on the admin thread's `LocalSet`, owned by it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{ApiError, Reply};
use crate::runtime::Shared;
use crate::target::{Group, Reason, State, Target};

/// Largest weight a registered target may have (as in the config file).
pub const MAX_WEIGHT: u32 = 1000;
/// How often a draining target is checked for its last in-flight request.
pub const DRAIN_POLL: Duration = Duration::from_millis(50);

/// One target as `/status` shows it.
pub fn target_json(t: &Target) -> Value {
    let (state, reason) = t.health();
    json!({
        "address": t.addr.to_string(),
        "state": state.name(),
        "reason": reason.name(),
        "weight": t.weight(),
        "in_flight": t.total_in_flight(),
        "requests": t.total_requests(),
    })
}

/// The `/status` document (DESIGN §6).
pub fn status_json(shared: &Shared) -> Value {
    let groups: Vec<Value> = shared
        .snapshot()
        .table
        .groups
        .iter()
        .map(|g| {
            let members = g.members();
            let targets: Vec<Value> = members.targets.iter().map(|t| target_json(t)).collect();
            json!({ "name": g.name, "targets": targets })
        })
        .collect();
    let listeners: Vec<Value> = shared
        .snapshot()
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "bind": l.bound.to_string(),
                "connections": l.stats.sum(|s| &s.connections_open),
            })
        })
        .collect();
    json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "target_groups": groups,
        "listeners": listeners,
    })
}

fn group(shared: &Shared, name: &str) -> Result<Arc<Group>, ApiError> {
    let snapshot = shared.snapshot();
    snapshot.table.group(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = snapshot
            .table
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        ApiError::NotFound(format!(
            "no target group named '{name}' (known: {})",
            known.join(", ")
        ))
    })
}

/// `POST /target_groups/NAME/targets` with `{"address":"ip:port","weight":1}`: registers a target,
/// `initial` when the group has a health check, else healthy at once. 201 with the target.
pub fn register(shared: &Shared, group_name: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let g = group(shared, group_name)?;
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body is not JSON ({e}); send {{\"address\":\"ip:port\",\"weight\":1}}"
        ))
    })?;
    let Some(obj) = doc.as_object() else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object like {\"address\":\"ip:port\",\"weight\":1}".into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "address" && *k != "weight") {
        return Err(ApiError::BadRequest(format!(
            "unknown field \"{k}\"; expected \"address\" and optionally \"weight\""
        )));
    }
    let text = obj.get("address").and_then(Value::as_str).ok_or_else(|| {
        ApiError::BadRequest("\"address\" (a string \"ip:port\") is required".into())
    })?;
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        use crate::config::document::{addr_problem, AddrProblem};
        ApiError::BadRequest(match addr_problem(text) {
            AddrProblem::PortOutOfRange(p) => {
                format!("address \"{text}\": port {p} is out of range (1..=65535)")
            }
            _ => format!(
                "address \"{text}\" is not \"ip:port\" (like \"10.0.0.5:8080\" or \"[::1]:8080\")"
            ),
        })
    })?;
    if addr.port() == 0 {
        return Err(ApiError::BadRequest(format!(
            "address \"{text}\": port must not be 0"
        )));
    }
    let weight = match obj.get("weight") {
        None => 1,
        Some(w) => w
            .as_u64()
            .filter(|w| (1..=u64::from(MAX_WEIGHT)).contains(w))
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "weight must be a whole number from 1 to {MAX_WEIGHT}, got {w}"
                ))
            })?,
    };
    let target = shared
        .snapshot()
        .table
        .new_target(addr, weight, g.settings.has_health_check);
    let added = g.edit_members(|members| {
        if let Some(existing) = members.iter().find(|t| t.addr == addr) {
            return Err(existing.state());
        }
        members.push(target.clone());
        Ok(())
    });
    match added {
        Ok(()) => {
            tracing::info!(group = %g.name, target = %addr, weight, "target registered");
            Ok(Reply::json(201, target_json(&target).to_string()))
        }
        Err(State::Draining) => Err(ApiError::Conflict(format!(
            "{addr} is still draining from target group '{}'; register it again once it is gone from /status",
            g.name
        ))),
        Err(_) => Err(ApiError::Conflict(format!(
            "{addr} is already registered in target group '{}'",
            g.name
        ))),
    }
}

/// `DELETE /target_groups/NAME/targets/ADDRESS`: the target drains (no new requests) and leaves
/// the membership once its in-flight requests finish, or after `deregistration_delay` at the
/// latest (as ALB). 202 with the target. Must run on the admin thread's `LocalSet`.
pub fn deregister(shared: &Shared, group_name: &str, address: &str) -> Result<Reply, ApiError> {
    let g = group(shared, group_name)?;
    let addr: SocketAddr = address.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "\"{address}\" is not a target address \"ip:port\" (IPv6: \"[::1]:80\", percent-escaped)"
        ))
    })?;
    let target = g
        .members()
        .targets
        .iter()
        .find(|t| t.addr == addr)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "target {addr} is not registered in target group '{}'",
                g.name
            ))
        })?;
    if target.state() != State::Draining {
        target
            .draining_since_ms
            .store(shared.snapshot().table.millis_since_epoch(), Relaxed);
        target.set_state(State::Draining, Reason::DeregistrationInProgress);
        tracing::info!(group = %g.name, target = %addr, "target deregistering");
        tokio::task::spawn_local(reap(g.clone(), target.clone()));
    }
    Ok(Reply::json(202, target_json(&target).to_string()))
}

/// Removes a draining target from its group once nothing is in flight to it, or once the
/// group's `deregistration_delay` has passed.
async fn reap(group: Arc<Group>, target: Arc<Target>) {
    let deadline = Instant::now() + group.settings.deregistration_delay;
    loop {
        tokio::time::sleep(DRAIN_POLL).await;
        if target.total_in_flight() == 0 || Instant::now() >= deadline {
            break;
        }
    }
    group.edit_members(|members| members.retain(|t| t.id != target.id));
    tracing::info!(group = %group.name, target = %target.addr, "target deregistered");
}
