//! Configuration snapshots and hot reload (SIGHUP, `POST /reload`).
//!
//! Runs on the main thread (SIGHUP) or the admin thread (`POST /reload`), serialised by the
//! `Reloader` mutex in `Shared`. It re-reads the config file, builds a whole new `Snapshot`
//! (target table, listener plans, TLS configs) reusing what stays (targets with their health,
//! kept listeners' sockets and stats), publishes it with one atomic swap, sends each worker its
//! new sockets and the listeners to close, and restarts the health and dns threads on the new
//! table. Open connections keep the `Arc<ListenerPlan>` they started with until they end.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigErrors, ListenerProtocol, RuntimeConfig};
use crate::http::parse::HeadLimits;
use crate::metrics::ListenerStats;
use crate::runtime::{Shared, Snapshot, StartError};
use crate::target::Table;
use crate::worker::{ListenerPlan, SocketSettings};

/// How long a reload waits for every worker to apply it before answering (a worker busy past
/// this still applies it; the reload is not undone).
pub const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a worker receives on reload.
pub struct Update {
    /// The new snapshot: its listener plans replace the worker's current ones.
    pub snapshot: Arc<Snapshot>,
    /// New listeners: this worker's socket of each.
    pub add: Vec<(Arc<ListenerPlan>, TcpListener)>,
    /// Listener indexes whose sockets stop accepting.
    pub remove: Vec<usize>,
    /// Told once the worker applied the update: connections it accepts from then on use it.
    pub applied: std::sync::mpsc::Sender<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("the server is starting or draining; try the reload again once it runs")]
    NotRunning,
    #[error("{0}")]
    AccessLogs(String),
    #[error("a binary upgrade (SIGUSR2) is in progress; reload the new process once it serves")]
    Upgrading,
}

/// What a reload changed, for the log and `POST /reload`.
#[derive(Debug, Default)]
pub struct Summary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub target_groups: usize,
    /// Settings that changed but need a restart (ignored).
    pub ignored: Vec<String>,
}

/// The main thread's reload state: held in `Shared` behind a mutex.
pub struct Reloader {
    pub(crate) senders: Vec<mpsc::UnboundedSender<Update>>,
    pub(crate) workers: usize,
    /// The runtime settings the process started with (changes need a restart).
    pub(crate) runtime: RuntimeConfig,
    pub(crate) admin_bind: Option<std::net::SocketAddr>,
    /// The next listener index (indexes are never reused).
    pub(crate) next_index: usize,
    /// Stops the current health and dns threads.
    pub(crate) aux_stop: watch::Sender<bool>,
    pub(crate) aux: Vec<JoinHandle<()>>,
}

impl Reloader {
    /// Stops the health and dns threads and returns them to be joined (drain).
    pub fn stop_aux(&mut self) -> Vec<JoinHandle<()>> {
        let _ = self.aux_stop.send(true);
        self.senders.clear();
        std::mem::take(&mut self.aux)
    }
}

/// A built snapshot plus the sockets of its new listeners (one per worker).
pub struct Built {
    pub snapshot: Snapshot,
    pub fresh: Vec<(Arc<ListenerPlan>, Vec<TcpListener>)>,
    /// Plans of `old` that the new config no longer has.
    pub removed: Vec<Arc<ListenerPlan>>,
    pub kept: Vec<String>,
    /// Settings of kept listeners that changed but need a restart, as `listener.NAME.FIELD`.
    pub ignored: Vec<String>,
}

/// Builds the snapshot for `config`. With `old` (a reload), a listener whose bind address is
/// unchanged keeps its sockets, index and stats, and targets keep their identity and health.
/// Certificates are read and every check that can fail runs before any socket is bound.
pub fn build(
    config: Config,
    workers: usize,
    old: Option<&Snapshot>,
    next_index: &mut usize,
    mut inherited: Option<&mut crate::upgrade::Inherited>,
) -> Result<Built, StartError> {
    let mut listener_tls = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        // The same listener before this reload: unchanged certificates keep its sessions.
        let previous = old
            .and_then(|o| o.listeners.iter().find(|p| p.name == l.name))
            .and_then(|p| p.tls.as_ref());
        listener_tls.push(match (&l.tls, l.protocol) {
            (Some(t), ListenerProtocol::Https) => {
                let carried = inherited.as_deref().and_then(|i| i.tickets(&l.name));
                Some(crate::tls::server_config(
                    &l.name, t, l.http2, previous, carried,
                )?)
            }
            _ => None,
        });
    }
    let mut upstream_tls = Vec::with_capacity(config.target_groups.len());
    for g in &config.target_groups {
        upstream_tls.push(match g.protocol {
            crate::config::GroupProtocol::Https => Some(Arc::new(crate::tls::upstream_config(
                &g.name,
                g.tls.as_ref(),
                g.protocol_version.is_h2(),
            )?)),
            _ => None,
        });
    }
    if old.is_none()
        && (listener_tls.iter().any(Option::is_some) || upstream_tls.iter().any(Option::is_some))
    {
        crate::tls::log_ktls_status();
    }
    let table = Arc::new(Table::rebuild(
        &config,
        workers,
        old.map(|o| &*o.table),
        upstream_tls.clone(),
    ));

    // Match listeners to old ones by bind address, and compile the rules.
    let old_plans: Vec<&Arc<ListenerPlan>> = old
        .map(|o| o.listeners.iter().collect())
        .unwrap_or_default();
    let old_bind = |p: &ListenerPlan| {
        old.and_then(|o| o.config.listeners.iter().find(|c| c.name == p.name))
            .map(|c| c.bind)
    };
    // First the same name on the same address, then (a renamed listener) the same address
    // unless it is port 0, which names no address to keep.
    let mut taken = vec![false; old_plans.len()];
    let mut matches: Vec<Option<usize>> = vec![None; config.listeners.len()];
    for same_name in [true, false] {
        for (i, l) in config.listeners.iter().enumerate() {
            if matches[i].is_some() || (!same_name && l.bind.port() == 0) {
                continue;
            }
            let found = old_plans.iter().enumerate().position(|(j, p)| {
                !taken[j] && (!same_name || p.name == l.name) && old_bind(p) == Some(l.bind)
            });
            if let Some(j) = found {
                taken[j] = true;
                matches[i] = Some(j);
            }
        }
    }
    let mut staged = Vec::with_capacity(config.listeners.len());
    let mut ignored = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let matched = matches.get(i).copied().flatten();
        if let Some(j) = matched {
            // A kept listener keeps its sockets, and with them what they were created with.
            let running = &old_plans[j].sockets;
            for (field, differs) in [
                ("backlog", running.backlog != l.backlog),
                (
                    "congestion_control",
                    running.congestion_control != l.congestion_control,
                ),
                ("defer_accept", running.defer_accept != l.defer_accept),
            ] {
                if differs {
                    tracing::warn!(listener = %l.name, "{field} differs from the running sockets' and needs a restart; they keep theirs");
                    ignored.push(format!("listener.{}.{field}", l.name));
                }
            }
        }
        let Some(group) = table.group(&l.target_group).cloned() else {
            // Validation guarantees the group exists; a missing one means a config bug.
            continue;
        };
        let router = crate::router::Router::build_with(
            &l.rules,
            group.clone(),
            &table,
            (&l.request_headers, &l.response_headers),
        )
        .map_err(|source| StartError::Rules {
            name: l.name.clone(),
            source,
        })?;
        staged.push((i, matched.map(|j| old_plans[j].clone()), group, router));
    }

    let mut plans = Vec::with_capacity(staged.len());
    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    for (i, previous, group, router) in staged {
        let Some(l) = config.listeners.get(i) else {
            continue;
        };
        let (index, bound, stats, socks, sockets) = match &previous {
            Some(p) => {
                kept.push(l.name.clone());
                (p.index, p.bound, p.stats.clone(), None, p.sockets.clone())
            }
            None => {
                let set = SocketSettings::of(l);
                let taken = inherited
                    .as_deref_mut()
                    .and_then(|i| i.take_listener(&l.name, l.bind));
                let (socks, bound) = match taken {
                    // A binary upgrade: the old process's sockets, never bound again.
                    Some((socks, bound)) => crate::listener::adopt(socks, bound, &set, workers),
                    None => crate::listener::bind_all(l.bind, &set, workers),
                }
                .map_err(|source| StartError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
                let index = *next_index;
                *next_index += 1;
                (
                    index,
                    bound,
                    Arc::new(ListenerStats::new(workers)),
                    Some(socks),
                    set,
                )
            }
        };
        let plan = Arc::new(ListenerPlan {
            index,
            name: l.name.clone(),
            bound,
            protocol: l.protocol,
            scheme: match l.protocol {
                ListenerProtocol::Https => "https",
                _ => "http",
            },
            limits: l.limits.clone(),
            head_limits: HeadLimits {
                max_header_bytes: l.limits.max_header_bytes,
                max_headers: l.limits.max_headers,
                max_uri_bytes: l.limits.max_uri_bytes,
            },
            group,
            router,
            accept_proxy_protocol: l.accept_proxy_protocol,
            stats,
            tls: listener_tls.get(i).cloned().flatten(),
            http2: l.http2.then_some(l.http2_settings),
            request_id: l.request_id.clone(),
            sockets,
        });
        if let Some(socks) = socks {
            fresh.push((plan.clone(), socks));
        }
        plans.push(plan);
    }
    let removed = old_plans
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(p, _)| (*p).clone())
        .collect();
    Ok(Built {
        snapshot: Snapshot {
            config: Arc::new(config),
            table,
            listeners: plans,
            upstream_tls,
        },
        fresh,
        removed,
        kept,
        ignored,
    })
}

/// Starts the health thread (and the dns thread when the config has dns targets) on `snapshot`'s
/// table; they run until `stop` turns true.
pub fn spawn_aux(
    snapshot: &Snapshot,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut threads = vec![crate::health::spawn(
        snapshot.table.clone(),
        stop.clone(),
        snapshot.upstream_tls.clone(),
    )?];
    if let Some(dns) = crate::dns::spawn(snapshot.table.clone(), &snapshot.config, stop) {
        threads.push(dns?);
    }
    Ok(threads)
}

/// Splits each new listener's sockets between the workers: worker `w` gets the `w`-th of each.
/// A listener with more sockets than workers (an upgrade from a process with more workers) gives
/// the extra ones out again from worker 0: every socket keeps being accepted on, since a socket
/// of the SO_REUSEPORT group that nobody accepts on would hold its share of new connections.
pub fn per_worker(
    fresh: Vec<(Arc<ListenerPlan>, Vec<TcpListener>)>,
    workers: usize,
) -> Vec<Vec<(Arc<ListenerPlan>, TcpListener)>> {
    let mut out: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for (plan, socks) in fresh {
        for (w, s) in socks.into_iter().enumerate() {
            if let Some(v) = out.get_mut(w % workers.max(1)) {
                v.push((plan.clone(), s));
            }
        }
    }
    out
}

/// Re-reads the config file and applies it. On any error the running configuration is kept
/// and the error (located, for config and certificate errors) is returned.
pub fn reload(shared: &Shared) -> Result<Summary, ReloadError> {
    let mut lock = match shared.reloader.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let r = lock.as_mut().ok_or(ReloadError::NotRunning)?;
    // The new process reads the same file; a listener added here now would be bound twice.
    if shared.handing_over() {
        return Err(ReloadError::Upgrading);
    }
    let old = shared.snapshot();
    let result = apply(shared, r, &old);
    match &result {
        Ok(s) => tracing::info!(
            added = ?s.added,
            removed = ?s.removed,
            target_groups = s.target_groups,
            "configuration reloaded from {}",
            old.config.path.display()
        ),
        Err(e) => {
            tracing::error!("configuration reload refused; the running configuration is kept:\n{e}")
        }
    }
    result
}

fn apply(shared: &Shared, r: &mut Reloader, old: &Snapshot) -> Result<Summary, ReloadError> {
    let config = Config::load(&old.config.path).map_err(ReloadError::Config)?;
    for w in config.listeners.iter().flat_map(|l| l.warnings()) {
        tracing::warn!("{w}");
    }
    check_access_logs(&old.config, &config).map_err(ReloadError::AccessLogs)?;
    let mut summary = Summary::default();
    let rt = &config.runtime;
    for (name, changed) in [
        ("runtime.workers", rt.workers != r.runtime.workers),
        ("runtime.io", rt.io != r.runtime.io),
        ("runtime.pin", rt.pin != r.runtime.pin),
        (
            "admin.bind",
            config.admin.as_ref().map(|a| a.bind) != r.admin_bind,
        ),
    ] {
        if changed {
            tracing::warn!("{name} changed: this needs a restart; the running value is kept");
            summary.ignored.push(name.to_string());
        }
    }
    // Every check and every bind happens here: nothing is published until all succeeded.
    let mut next_index = r.next_index;
    let built = build(config, r.workers, Some(old), &mut next_index, None)?;
    r.next_index = next_index;
    let snapshot = Arc::new(built.snapshot);
    shared.publish(snapshot.clone());

    summary.added = built.fresh.iter().map(|(p, _)| p.name.clone()).collect();
    summary.removed = built.removed.iter().map(|p| p.name.clone()).collect();
    summary.kept = built.kept;
    summary.ignored.extend(built.ignored);
    summary.target_groups = snapshot.table.groups.len();
    let remove: Vec<usize> = built.removed.iter().map(|p| p.index).collect();
    let mut sockets = per_worker(built.fresh, r.workers).into_iter();
    let (applied, acks) = std::sync::mpsc::channel();
    let mut waiting = 0;
    for tx in &r.senders {
        let update = Update {
            snapshot: snapshot.clone(),
            add: sockets.next().unwrap_or_default(),
            remove: remove.clone(),
            applied: applied.clone(),
        };
        // A worker that already ended has nothing left to update.
        if tx.send(update).is_ok() {
            waiting += 1;
        }
    }
    drop(applied);
    // Answer once new connections get the new configuration on every worker.
    let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
    while waiting > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if acks.recv_timeout(left).is_err() {
            tracing::warn!(
                workers = waiting,
                "reload: some workers have not applied the new configuration yet"
            );
            break;
        }
        waiting -= 1;
    }

    // Health checks and dns refresh follow the new table.
    let _ = r.aux_stop.send(true);
    let (stop, stop_rx) = watch::channel(false);
    r.aux_stop = stop;
    match spawn_aux(&snapshot, stop_rx) {
        Ok(threads) => r.aux.extend(threads),
        Err(e) => {
            tracing::error!(error = %e, "cannot restart the health-check thread after reload")
        }
    }
    r.aux.retain(|t| !t.is_finished());
    for p in &snapshot.listeners {
        if summary.added.contains(&p.name) {
            tracing::info!(listener = %p.name, addr = %p.bound, "listening");
        }
    }
    Ok(summary)
}

/// Access log files are opened at start and addressed by listener index: a reload may not add,
/// remove, move or re-point one (that needs a restart). Listeners without access logs may change
/// freely.
pub fn check_access_logs(old: &Config, new: &Config) -> Result<(), String> {
    let n = old.listeners.len().max(new.listeners.len());
    for i in 0..n {
        let (o, c) = (old.listeners.get(i), new.listeners.get(i));
        let log = |l: Option<&crate::config::ListenerConfig>| l.and_then(|l| l.access_log.clone());
        if log(o).is_none() && log(c).is_none() {
            continue;
        }
        let same = matches!((o, c), (Some(o), Some(c)) if o.name == c.name && o.access_log == c.access_log);
        if !same {
            let name = c.or(o).map_or("?", |l| l.name.as_str());
            return Err(format!(
                "listener '{name}': access_log settings changed (or a logging listener moved in the file); \
                 access logs are opened at start: restart ringlb to apply this change, or keep the old access_log lines"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod access_log_tests {
    use super::check_access_logs;
    use crate::config::Config;
    use std::path::Path;

    fn cfg(listeners: &[(&str, Option<&str>)]) -> Config {
        let mut t = String::new();
        for (i, (name, log)) in listeners.iter().enumerate() {
            t += &format!(
                "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{}\"\ntarget_group = \"g\"\n",
                18000 + i
            );
            if let Some(l) = log {
                t += &format!("access_log = \"{l}\"\n");
            }
        }
        t += "[[target_group]]\nname = \"g\"\ntargets = [\"127.0.0.1:1\"]\n";
        Config::parse(&t, Path::new("/tmp/x.toml")).unwrap()
    }

    #[test]
    fn access_log_layout_changes_need_a_restart() {
        let old = cfg(&[("a", Some("-")), ("b", None)]);
        assert!(check_access_logs(&old, &cfg(&[("a", Some("-")), ("b", None)])).is_ok());
        // Listeners without logs may come, go and change.
        assert!(
            check_access_logs(&old, &cfg(&[("a", Some("-")), ("c", None), ("d", None)])).is_ok()
        );
        assert!(check_access_logs(&old, &cfg(&[("a", Some("-"))])).is_ok());
        // A logging listener re-pointed, removed, moved, or a new one with a log: refused.
        let e = check_access_logs(&old, &cfg(&[("a", Some("/tmp/other.log")), ("b", None)]))
            .unwrap_err();
        assert!(e.contains("listener 'a'") && e.contains("restart"), "{e}");
        assert!(check_access_logs(&old, &cfg(&[("b", None)])).is_err());
        assert!(check_access_logs(&old, &cfg(&[("b", None), ("a", Some("-"))])).is_err());
        assert!(check_access_logs(&old, &cfg(&[("a", Some("-")), ("b", Some("-"))])).is_err());
    }
}
