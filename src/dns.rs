//! DNS targets (`{ dns = "app.internal:3000", refresh = "10s" }`): each is re-resolved on its
//! `refresh` interval and the group's membership follows the answer.
//!
//! Runs on the one resolver thread (`ringlb-dns`, a current-thread tokio runtime, off the data
//! path), started by [`crate::runtime::Server::start`] only when the config has dns targets. The
//! thread owns which targets each dns entry added; the only shared state it writes is the group's
//! membership (`Group::edit_members`), which workers and the health thread already follow. A
//! failed or empty resolution keeps the last good answer.
//!
//! `runtime.resolver = "system"` asks the system resolver (getaddrinfo through
//! `std::net::ToSocketAddrs` on a blocking thread: /etc/hosts, nsswitch and resolv.conf apply);
//! `"ip:port"` asks that DNS server directly with A and AAAA queries over UDP (TCP when the answer
//! is truncated). Names sent to a DNS server are taken as fully qualified: resolv.conf search
//! domains do not apply.

pub mod wire;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::{Config, TargetSpec};
use crate::target::{Group, Table};

/// How long one query (or one system lookup) may take before it counts as failed.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP answer read (EDNS0 asks for at most [`wire::EDNS_UDP_PAYLOAD`]).
pub const MAX_UDP_ANSWER: usize = 4096;
/// Shortest interval between two resolutions of one entry, whatever `refresh` says.
pub const MIN_REFRESH: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("no answer from DNS server {server} within {timeout:?}; is it running and reachable?")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("DNS server {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("system resolver: {0}")]
    System(std::io::Error),
    #[error("system resolver gave no answer within {0:?}")]
    SystemTimeout(Duration),
    #[error("the answer has no address")]
    Empty,
}

/// Where names are resolved (`runtime.resolver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// getaddrinfo, on a blocking thread.
    System,
    /// A DNS server asked directly.
    Server(SocketAddr),
}

impl Resolver {
    /// From `runtime.resolver` (validated: "system" or "ip:port").
    pub fn from_config(text: &str) -> Resolver {
        match text.parse::<SocketAddr>() {
            Ok(a) => Resolver::Server(a),
            Err(_) => Resolver::System,
        }
    }

    /// The addresses of `host`, each with `port`: sorted, without duplicates, never empty.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let mut ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match *self {
                Resolver::System => system_lookup(host).await?,
                Resolver::Server(server) => server_lookup(server, host).await?,
            },
        };
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err(ResolveError::Empty);
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

async fn system_lookup(host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let name = host.to_string();
    let lookup = tokio::task::spawn_blocking(move || {
        (name.as_str(), 0u16)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect::<Vec<_>>())
    });
    match tokio::time::timeout(QUERY_TIMEOUT, lookup).await {
        Ok(Ok(r)) => r.map_err(ResolveError::System),
        Ok(Err(join)) => Err(ResolveError::System(std::io::Error::other(join))),
        Err(_) => Err(ResolveError::SystemTimeout(QUERY_TIMEOUT)),
    }
}

/// A and AAAA from `server`. One family failing is fine when the other answers; an NXDOMAIN or
/// an error from both is the error of the A query.
async fn server_lookup(server: SocketAddr, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let (a, aaaa) = tokio::join!(
        query(server, host, wire::TYPE_A),
        query(server, host, wire::TYPE_AAAA)
    );
    match (a, aaaa) {
        (Ok(mut v4), Ok(v6)) => {
            v4.extend(v6);
            Ok(v4)
        }
        (Ok(v), Err(_)) | (Err(_), Ok(v)) => Ok(v),
        (Err(e), Err(_)) => Err(e),
    }
}

/// One question to `server`: over UDP, again over TCP when the answer is truncated.
pub async fn query(
    server: SocketAddr,
    host: &str,
    qtype: u16,
) -> Result<Vec<IpAddr>, ResolveError> {
    let id = fastrand::u16(..);
    let msg = wire::encode_query(id, host, qtype)?;
    let io = |source| ResolveError::Io { server, source };
    let udp = async {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
        sock.connect(server).await.map_err(io)?;
        sock.send(&msg).await.map_err(io)?;
        let mut buf = vec![0u8; MAX_UDP_ANSWER];
        loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            match wire::decode_answer(buf.get(..n).unwrap_or(&[]), id, qtype) {
                // A stray or spoofed datagram: keep waiting for the real answer.
                Err(wire::WireError::Mismatch) => continue,
                other => return other.map_err(ResolveError::from),
            }
        }
    };
    let timeout = ResolveError::Timeout {
        server,
        timeout: QUERY_TIMEOUT,
    };
    match tokio::time::timeout(QUERY_TIMEOUT, udp).await {
        Err(_) => Err(timeout),
        Ok(Err(ResolveError::Wire(wire::WireError::Truncated))) => {
            tokio::time::timeout(QUERY_TIMEOUT, tcp_query(server, &msg, id, qtype))
                .await
                .unwrap_or(Err(timeout))
        }
        Ok(r) => r,
    }
}

async fn tcp_query(
    server: SocketAddr,
    msg: &[u8],
    id: u16,
    qtype: u16,
) -> Result<Vec<IpAddr>, ResolveError> {
    let io = |source| ResolveError::Io { server, source };
    let mut s = tokio::net::TcpStream::connect(server).await.map_err(io)?;
    let len = u16::try_from(msg.len()).map_err(|_| wire::WireError::Malformed(0))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).await.map_err(io)?;
    let n = usize::from(s.read_u16().await.map_err(io)?);
    // The 2-byte length bounds the answer at 64 KiB.
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.map_err(io)?;
    Ok(wire::decode_answer(&buf, id, qtype)?)
}

/// One dns entry of one group, and the targets its answers added.
pub struct Entry {
    pub group: Arc<Group>,
    pub host: String,
    pub port: u16,
    pub refresh: Duration,
    pub weight: u32,
    /// Ids of the targets this entry added and still owns.
    owned: HashSet<u64>,
}

/// What one answer changed in a group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl Entry {
    pub fn new(
        group: Arc<Group>,
        host: String,
        port: u16,
        refresh: Duration,
        weight: u32,
    ) -> Entry {
        Entry {
            group,
            host,
            port,
            refresh,
            weight,
            owned: HashSet::new(),
        }
    }

    /// Makes the group's membership follow `answer`: addresses new to the group become targets
    /// (through `Table::new_target`, so they pass health checks first where the group has them),
    /// and the targets this entry added whose address left the answer are dropped. Targets from
    /// the config or the admin API are never touched. Publishes nothing when nothing changes.
    pub fn apply(&mut self, table: &Table, answer: &[SocketAddr]) -> Change {
        let current = self.group.members();
        self.owned
            .retain(|id| current.targets.iter().any(|t| t.id == *id));
        let stale = |t: &crate::target::Target| !answer.contains(&t.addr);
        let needs_removal = current
            .targets
            .iter()
            .any(|t| self.owned.contains(&t.id) && stale(t));
        let needs_add = answer
            .iter()
            .any(|a| !current.targets.iter().any(|t| t.addr == *a));
        drop(current);
        if !needs_removal && !needs_add {
            return Change::default();
        }
        let health_checked = self.group.settings.has_health_check;
        let owned = &mut self.owned;
        let weight = self.weight;
        self.group.edit_members(|members| {
            let mut change = Change::default();
            members.retain(|t| {
                let drop = owned.contains(&t.id) && stale(t);
                if drop {
                    owned.remove(&t.id);
                    change.removed.push(t.addr);
                }
                !drop
            });
            for a in answer {
                if !members.iter().any(|t| t.addr == *a) {
                    let t = table.new_target(*a, weight, health_checked);
                    owned.insert(t.id);
                    members.push(t);
                    change.added.push(*a);
                }
            }
            change
        })
    }
}

/// Whether exactly one dns target of `g` has `port`: that entry owns the group's non-static
/// members with that port (kept across a reload until it resolves again).
pub fn sole_entry_port(g: &crate::config::TargetGroupConfig, port: u16) -> bool {
    g.targets
        .iter()
        .filter(|t| matches!(t, TargetSpec::Dns { port: p, .. } if *p == port))
        .count()
        == 1
}

/// Every dns entry of the config, bound to its group in `table`. After a reload, an entry adopts
/// the group's kept non-static members with its port (see `Table::rebuild`), so its next answer
/// drops those that left.
pub fn entries(config: &Config, table: &Table) -> Vec<Entry> {
    let mut out = Vec::new();
    for g in &config.target_groups {
        let Some(group) = table.group(&g.name) else {
            continue;
        };
        for t in &g.targets {
            if let TargetSpec::Dns {
                host,
                port,
                refresh,
                weight,
            } = t
            {
                let mut e = Entry::new(group.clone(), host.clone(), *port, *refresh, *weight);
                if sole_entry_port(g, *port) {
                    let is_static = |a: SocketAddr| {
                        g.targets.iter().any(
                            |t| matches!(t, TargetSpec::Static { address, .. } if *address == a),
                        )
                    };
                    e.owned.extend(
                        group
                            .members()
                            .targets
                            .iter()
                            .filter(|t| t.addr.port() == *port && !is_static(t.addr))
                            .map(|t| t.id),
                    );
                }
                out.push(e);
            }
        }
    }
    out
}

/// Starts the resolver thread when the config has dns targets; `None` when it has none. The
/// thread runs until `drain` turns true.
pub fn spawn(
    table: Arc<Table>,
    config: &Config,
    drain: watch::Receiver<bool>,
) -> Option<std::io::Result<JoinHandle<()>>> {
    let entries = entries(config, &table);
    if entries.is_empty() {
        return None;
    }
    let resolver = Resolver::from_config(&config.runtime.resolver);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Some(Err(e)),
    };
    Some(
        std::thread::Builder::new()
            .name("ringlb-dns".to_string())
            .spawn(move || {
                rt.block_on(async move {
                    let tasks: Vec<_> = entries
                        .into_iter()
                        .map(|e| tokio::spawn(follow(e, resolver, table.clone(), drain.clone())))
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                // A system lookup may still block its thread: do not wait for it.
                rt.shutdown_background();
            }),
    )
}

/// Resolves one entry every `refresh` until the drain signal, applying each good answer.
async fn follow(
    mut entry: Entry,
    resolver: Resolver,
    table: Arc<Table>,
    mut drain: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        if *drain.borrow_and_update() {
            return;
        }
        let name = format!("{}:{}", entry.host, entry.port);
        let resolved = tokio::select! {
            r = resolver.resolve(&entry.host, entry.port) => r,
            _ = drain.changed() => return,
        };
        match resolved {
            Ok(answer) => {
                if failing {
                    tracing::info!(group = %entry.group.name, dns = %name, "dns target resolves again");
                    failing = false;
                }
                let change = entry.apply(&table, &answer);
                if change != Change::default() {
                    tracing::info!(
                        group = %entry.group.name, dns = %name,
                        added = ?change.added, removed = ?change.removed,
                        "dns target membership changed"
                    );
                }
            }
            Err(e) => {
                // Logged once per outage (then at debug) so a dead resolver does not flood logs.
                if failing {
                    tracing::debug!(group = %entry.group.name, dns = %name, error = %e, "dns resolution still failing");
                } else {
                    tracing::warn!(
                        group = %entry.group.name, dns = %name, error = %e,
                        "dns resolution failed; keeping the last good answer"
                    );
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(entry.refresh.max(MIN_REFRESH)) => {}
            r = drain.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> (Config, Table) {
        let toml = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\", \
             {{ dns = \"app.test:3000\", refresh = \"1s\", weight = 3 }}]\n{extra}"
        );
        let config = Config::parse(&toml, std::path::Path::new("t.toml")).expect("config");
        let table = Table::build(&config, 2);
        (config, table)
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn members(e: &Entry) -> Vec<String> {
        let mut v: Vec<String> = e
            .group
            .members()
            .targets
            .iter()
            .map(|t| t.addr.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_reload_keeps_resolved_targets_until_the_next_answer_prunes_them() {
        let (config, table) = table("");
        let mut es = entries(&config, &table);
        es[0].apply(&table, &addrs(&["10.0.0.1:3000", "10.0.0.2:3000"]));
        let rebuilt = Table::rebuild(&config, 2, Some(&table), Vec::new());
        let mut es = entries(&config, &rebuilt);
        assert_eq!(
            members(&es[0]),
            ["10.0.0.1:3000", "10.0.0.2:3000", "127.0.0.1:3000"],
            "no gap while the resolver has not answered yet"
        );
        let c = es[0].apply(&rebuilt, &addrs(&["10.0.0.2:3000"]));
        assert_eq!(c.removed, addrs(&["10.0.0.1:3000"]), "adopted and pruned");
        assert!(c.added.is_empty());
        assert_eq!(members(&es[0]), ["10.0.0.2:3000", "127.0.0.1:3000"]);
    }

    #[test]
    fn membership_follows_answers_and_keeps_static_targets() {
        let (config, table) = table("");
        let mut es = entries(&config, &table);
        assert_eq!(es.len(), 1);
        let e = &mut es[0];
        assert_eq!((e.host.as_str(), e.port, e.weight), ("app.test", 3000, 3));

        let c = e.apply(&table, &addrs(&["10.0.0.1:3000", "10.0.0.2:3000"]));
        assert_eq!(c.added.len(), 2);
        assert_eq!(
            members(e),
            ["10.0.0.1:3000", "10.0.0.2:3000", "127.0.0.1:3000"]
        );
        let t = e.group.members().targets[1].clone();
        assert_eq!(t.weight(), 3);
        assert_eq!(t.state(), crate::target::State::Healthy, "no health check");

        let v = e.group.version();
        assert_eq!(
            e.apply(&table, &addrs(&["10.0.0.2:3000", "10.0.0.1:3000"])),
            Change::default()
        );
        assert_eq!(
            e.group.version(),
            v,
            "an unchanged answer publishes nothing"
        );

        let c = e.apply(&table, &addrs(&["10.0.0.2:3000", "10.0.0.3:3000"]));
        assert_eq!(c.added, addrs(&["10.0.0.3:3000"]));
        assert_eq!(c.removed, addrs(&["10.0.0.1:3000"]));
        assert_eq!(
            members(e),
            ["10.0.0.2:3000", "10.0.0.3:3000", "127.0.0.1:3000"]
        );
        let kept = e
            .group
            .members()
            .targets
            .iter()
            .find(|t| t.addr.to_string() == "10.0.0.2:3000")
            .map(|t| t.id);

        // An answer naming the static target's address does not duplicate it, and the entry
        // never removes it.
        e.apply(&table, &addrs(&["127.0.0.1:3000", "10.0.0.2:3000"]));
        e.apply(&table, &addrs(&["10.0.0.2:3000"]));
        assert_eq!(members(e), ["10.0.0.2:3000", "127.0.0.1:3000"]);
        let same = e
            .group
            .members()
            .targets
            .iter()
            .find(|t| t.addr.to_string() == "10.0.0.2:3000")
            .map(|t| t.id);
        assert_eq!(
            kept, same,
            "a target that stays keeps its identity (pools, state)"
        );
    }

    #[test]
    fn new_addresses_start_initial_when_the_group_has_health_checks() {
        let (config, table) = table("[target_group.health_check]\npath = \"/\"\n");
        let mut es = entries(&config, &table);
        es[0].apply(&table, &addrs(&["10.0.0.9:3000"]));
        let m = es[0].group.members();
        let t = m
            .targets
            .iter()
            .find(|t| t.addr.port() == 3000 && t.addr.ip().to_string() == "10.0.0.9");
        assert_eq!(t.map(|t| t.state()), Some(crate::target::State::Initial));
    }

    #[test]
    fn resolver_setting() {
        assert_eq!(Resolver::from_config("system"), Resolver::System);
        assert_eq!(
            Resolver::from_config("127.0.0.1:5353"),
            Resolver::Server("127.0.0.1:5353".parse().unwrap())
        );
    }

    #[test]
    fn ip_literals_and_localhost_resolve_without_a_server() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Port 9 on loopback: nothing answers, so only the literal path can succeed.
        let dead = Resolver::Server("127.0.0.1:9".parse().unwrap());
        let got = rt.block_on(dead.resolve("10.1.2.3", 80)).unwrap();
        assert_eq!(got, addrs(&["10.1.2.3:80"]));
        let err = rt.block_on(dead.resolve("app.test", 80)).unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
        let got = rt
            .block_on(Resolver::System.resolve("localhost", 80))
            .unwrap();
        assert!(
            got.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
            "{got:?}"
        );
    }
}
