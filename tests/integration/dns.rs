//! dns targets against a real DNS server: dnsmasq on 127.0.0.1 (ephemeral port) answers
//! `app.test` from a hosts file the test rewrites (SIGHUP re-reads it). Skipped, saying so, when
//! dnsmasq is not installed (`apt-get install dnsmasq-base`; .ci/run installs it).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const DNSMASQ_PATHS: [&str; 3] = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"];

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq answering from `hosts` only; `None` when it is not installed.
    fn start(hosts_text: &str) -> Option<Dnsmasq> {
        let bin = DNSMASQ_PATHS
            .iter()
            .find(|p| std::path::Path::new(p).exists())?;
        // One folder per server: tests run in parallel threads of one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = crate::testdir::test_path(&format!("dns-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, hosts_text).unwrap();
        // dnsmasq cannot report a port it chose: pick a free one and retry on a clash.
        let log = dir.join("dnsmasq.log");
        for _ in 0..5 {
            let port = free_dns_port();
            let mut child = Command::new(bin)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--log-facility=-",
                    "--cache-size=0",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts.display()))
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if answers(addr, &mut child) {
                return Some(Dnsmasq { child, addr, hosts });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start on 127.0.0.1 after 5 tries; its last log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Replaces the zone and makes dnsmasq re-read it.
    fn set(&self, hosts_text: &str) {
        std::fs::write(&self.hosts, hosts_text).unwrap();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1, below the ephemeral range: ports in that range
/// may be held by connections in TIME_WAIT (after the benchmarks' tests), and dnsmasq's TCP
/// listener could not bind those.
fn free_dns_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(2048);
    for _ in 0..200 {
        let port = fastrand::u16(1024..low);
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port for dnsmasq below {low} on 127.0.0.1");
}

/// Whether dnsmasq answers a query on `addr` within 3 s (false when it exited: port taken).
fn answers(addr: SocketAddr, child: &mut Child) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let q = ringlb::dns::wire::encode_query(1, "app.test", ringlb::dns::wire::TYPE_A).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let _ = sock.send_to(&q, addr);
        if sock.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// The target addresses of group `app` in /status, sorted.
fn targets(admin: SocketAddr) -> Vec<String> {
    let s = status(admin);
    let mut v: Vec<String> = s["target_groups"][0]["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn dns_targets_follow_a_changed_record_and_survive_a_dead_resolver() {
    let a = Backend::start("a");
    let port = a.addr.port();
    let Some(dns) = Dnsmasq::start("127.0.0.1 app.test\n") else {
        eprintln!(
            "SKIPPED dns_targets_follow_a_changed_record: dnsmasq is not installed \
             (apt-get install dnsmasq-base)"
        );
        return;
    };
    // The same port on another loopback address: where the record moves to.
    let b = Backend::start_on("b", SocketAddr::from(([127, 0, 0, 2], port)));
    let proxy = Proxy::start(&format!(
        "[runtime]\nworkers = 1\nresolver = \"{}\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
         [[target_group]]\nname = \"app\"\n\
         targets = [{{ dns = \"app.test:{port}\", refresh = \"100ms\" }}]\n",
        dns.addr
    ));
    let admin = proxy.admin();
    wait_for(Duration::from_secs(5), "the dns target", || {
        targets(admin) == [format!("127.0.0.1:{port}")]
    });
    assert_eq!(get(proxy.addr, "/").text(), "a");

    dns.set("127.0.0.2 app.test\n");
    wait_for(Duration::from_secs(5), "the changed record", || {
        targets(admin) == [format!("127.0.0.2:{port}")]
    });
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/").text(), "b");
    }
    assert_eq!(b.traffic(), 3);
    let a_before = a.traffic();

    // The resolver dies: several refreshes fail, the last good answer stays.
    drop(dns);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(targets(admin), [format!("127.0.0.2:{port}")]);
    assert_eq!(get(proxy.addr, "/").text(), "b");
    assert_eq!(a.traffic(), a_before, "the removed address gets no traffic");
}

/// An answer too big for one UDP datagram (EDNS0 asks for 1232 bytes) comes back truncated; the
/// client asks again over TCP and gets every address.
#[test]
fn a_truncated_answer_is_fetched_again_over_tcp() {
    let zone: String = (1..=150)
        .map(|i| format!("10.0.{}.{} many.test\n", i / 100, i % 100 + 1))
        .collect();
    let Some(dns) = Dnsmasq::start(&zone) else {
        eprintln!("SKIPPED a_truncated_answer_is_fetched_again_over_tcp: dnsmasq is not installed");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ips = rt
        .block_on(ringlb::dns::query(
            dns.addr,
            "many.test",
            ringlb::dns::wire::TYPE_A,
        ))
        .expect("answer");
    assert_eq!(ips.len(), 150, "{ips:?}");
    let resolver = ringlb::dns::Resolver::Server(dns.addr);
    let addrs = rt
        .block_on(resolver.resolve("many.test", 80))
        .expect("resolve");
    assert_eq!(addrs.len(), 150);
    // A name the zone does not have is an error (the group keeps its last good answer).
    assert!(rt.block_on(resolver.resolve("nothing.test", 80)).is_err());
}
