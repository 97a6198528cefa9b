//! Traffic management (DESIGN §9), told as a user meets it: sticky sessions with ringlb's own
//! cookie and with the application's, slow start for targets that join, `max_connections` with a
//! FIFO queue and `queue_timeout`, header rewriting on listeners and rules, request ids (HTTP/1.1,
//! HTTP/2 and the access log), and retries on a connection closed or reset before any response.
//!
//! Besides `support.rs`'s backends, targets here are [`Origin`]s: in-process HTTP/1.1 servers whose
//! answer is chosen per request (extra response headers, a delay, hanging up, resetting, never
//! answering), which count requests and connections in progress and can refuse connections beyond
//! a limit, as a small server does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::write_config;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Test targets, clients and config.

/// What an [`Origin`] does with one request.
#[derive(Clone)]
enum Act {
    /// 200 with these extra header fields and body, after `delay`.
    Reply {
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    },
    /// Closes the connection without a byte of response (FIN).
    Hangup,
    /// Resets the connection without a byte of response (RST).
    Reset,
    /// Never answers (keeps the connection open until the peer leaves).
    Silent,
}

fn reply(body: &str) -> Act {
    Act::Reply {
        headers: Vec::new(),
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn slow_reply(body: &str, delay: Duration) -> Act {
    Act::Reply {
        headers: Vec::new(),
        body: body.to_string(),
        delay,
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Act + Send + Sync>;

/// What an origin counts.
#[derive(Default)]
struct Counts {
    /// Requests being answered now, and the most at once.
    busy: AtomicUsize,
    peak_busy: AtomicUsize,
    /// Connections open now, and the most at once (refused ones included).
    conns: AtomicUsize,
    peak_conns: AtomicUsize,
    /// Connections reset at accept for being over the limit.
    refused: AtomicUsize,
}

/// An in-process HTTP/1.1 origin whose answers `act` chooses.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Counts>,
}

impl Origin {
    /// `max_conns`: connections beyond this many open at once are reset at accept (0: no limit).
    fn start(max_conns: usize, act: impl Fn(&Seen) -> Act + Send + Sync + 'static) -> Origin {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Counts::default());
        let act: Handler = Arc::new(act);
        let (s, c) = (seen.clone(), counts.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    let open = c.conns.fetch_add(1, SeqCst) + 1;
                    c.peak_conns.fetch_max(open, SeqCst);
                    if max_conns > 0 && open > max_conns {
                        // A small server out of connection slots: the connection is reset.
                        c.refused.fetch_add(1, SeqCst);
                        c.conns.fetch_sub(1, SeqCst);
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                        drop(sock);
                        continue;
                    }
                    let (s, c, act) = (s.clone(), c.clone(), act.clone());
                    tokio::spawn(async move {
                        let _ = origin_conn(sock, &s, &c, &act).await;
                        c.conns.fetch_sub(1, SeqCst);
                    });
                }
            });
        });
        Origin { addr, seen, counts }
    }

    /// An origin that answers `body` to everything.
    fn named(body: &'static str) -> Origin {
        Origin::start(0, move |_| reply(body))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn busy(&self) -> usize {
        self.counts.busy.load(SeqCst)
    }

    fn peak_busy(&self) -> usize {
        self.counts.peak_busy.load(SeqCst)
    }
}

async fn origin_conn(
    mut s: tokio::net::TcpStream,
    seen: &Mutex<Vec<Seen>>,
    counts: &Counts,
    act: &Handler,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (head_len, req) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_string(), v)
                    })
                    .collect();
                let req = Seen {
                    method: r.method.unwrap_or("").to_string(),
                    target: r.path.unwrap_or("").to_string(),
                    headers,
                    body_len: 0,
                };
                break (n, req);
            }
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        buf.drain(..head_len);
        let mut req = req;
        let len = req
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..len);
        req.body_len = len;
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let what = act(&req);
        seen.lock().unwrap().push(req);
        let now = counts.busy.fetch_add(1, SeqCst) + 1;
        counts.peak_busy.fetch_max(now, SeqCst);
        let done = match what {
            Act::Reply {
                headers,
                body,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len());
                for (n, v) in &headers {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                if close {
                    head.push_str("Connection: close\r\n");
                }
                head.push_str("\r\n");
                head.push_str(&body);
                counts.busy.fetch_sub(1, SeqCst);
                s.write_all(head.as_bytes()).await?;
                close
            }
            Act::Hangup => {
                counts.busy.fetch_sub(1, SeqCst);
                true
            }
            Act::Reset => {
                counts.busy.fetch_sub(1, SeqCst);
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                true
            }
            Act::Silent => {
                counts.busy.fetch_sub(1, SeqCst);
                let mut sink = [0u8; 1024];
                while s.read(&mut sink).await? > 0 {}
                true
            }
        };
        if done {
            return Ok(());
        }
    }
}

/// A response with every header field as sent (`Set-Cookie` may come more than once).
#[derive(Debug)]
struct Full {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Full {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// The whole `Set-Cookie` value that sets cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.all("set-cookie")
            .into_iter()
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The value `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        let v = self.set_cookie(name)?;
        let v = &v[name.len() + 1..];
        Some(v.split(';').next().unwrap_or("").to_string())
    }
}

/// One request on a new connection (`Connection: close`), read to the end. `headers`: extra fields.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Full {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to ringlb");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    let body = if method == "POST" { "payload" } else { "" };
    if method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    s.write_all(raw.as_bytes()).expect("write request");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(&got) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "{method} {path}: no whole response ({other:?}): {:?}",
            String::from_utf8_lossy(&got)
        ),
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), v)
        })
        .collect();
    let mut body = got[n..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Full {
        status: r.code.unwrap_or(0),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Full {
    request(addr, "GET", path, headers)
}

/// A config: `workers` workers, an admin API, listener "web" forwarding to group "app" of
/// `targets`. `listener_extra` goes in [[listener]] (rules last), `group_extra` in [[target_group]]
/// (a health_check table last).
fn config(
    workers: usize,
    listener_extra: &str,
    targets: &[SocketAddr],
    group_extra: &str,
) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[runtime]\nworkers = {workers}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         target_group = \"app\"\n{listener_extra}\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [{}]\n{group_extra}\n",
        t.join(", ")
    )
}

/// ringlb in-process from a config file (so `POST /reload` can re-read it).
fn serve_file(path: &Path) -> Proxy {
    let mut config = ringlb::config::Config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
    if std::env::var("RINGLB_TEST_IO").as_deref() == Ok("epoll") {
        config.runtime.io = ringlb::config::IoBackend::Epoll;
    }
    let server = ringlb::runtime::Server::start(config).expect("start ringlb");
    Proxy {
        addr: server.listener_addr("web").expect("bound"),
        server: Some(server),
    }
}

fn reload(p: &Proxy) {
    let r = admin_request(p.admin(), "POST", "/reload", None, None);
    assert_eq!(r.status, 200, "reload: {}", r.text());
}

/// The value of one series of `/metrics` (`series`: name and labels as printed), if present.
fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let text = admin_request(admin, "GET", "/metrics", None, None).text();
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn metric_value(admin: SocketAddr, series: &str) -> f64 {
    metric(admin, series).unwrap_or_else(|| panic!("{series} is not in /metrics"))
}

fn register(admin: SocketAddr, addr: SocketAddr) {
    let body = format!("{{\"address\":\"{addr}\",\"weight\":1}}");
    let r = admin_request(
        admin,
        "POST",
        "/target_groups/app/targets",
        Some(&body),
        None,
    );
    assert_eq!(r.status, 201, "register {addr}: {}", r.text());
}

fn deregister(admin: SocketAddr, addr: SocketAddr) {
    let path = format!("/target_groups/app/targets/{addr}");
    let r = admin_request(admin, "DELETE", &path, None, None);
    assert!(
        r.status < 300,
        "deregister {addr}: {} {}",
        r.status,
        r.text()
    );
}

fn temp_dir(test: &str) -> PathBuf {
    let d = crate::testdir::test_path(&format!("traffic-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Waits for `n` lines in the access log at `path` and returns them as JSON.
fn log_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_for(Duration::from_secs(3), "access log lines", || {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() >= n)
    });
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// True for a UUID-form id: 8-4-4-4-12 lower-case hex digits.
fn uuid_form(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Runs `n` requests at once (released together by a barrier); each thread runs `f(i)`.
fn all_at_once<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let go = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (f, go) = (f.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                f(i)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Sticky sessions: lb_cookie.

/// Names of the backends `backends(n)` starts, in order; each answers with its name.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn backends(n: usize) -> Vec<Backend> {
    NAMES[..n].iter().map(|name| Backend::start(name)).collect()
}

fn by_name<'a>(backends: &'a [Backend], name: &str) -> &'a Backend {
    &backends[NAMES.iter().position(|n| *n == name).expect("known name")]
}

/// Pins a new client and returns (the target's name, the RINGLB cookie value).
fn pin(addr: SocketAddr) -> (String, String) {
    let r = get_with(addr, "/", &[]);
    assert_eq!(r.status, 200);
    let v = r.cookie("RINGLB").expect("RINGLB set");
    (r.body, v)
}

#[test]
fn an_lb_cookie_pins_a_client_to_one_target_on_every_worker() {
    let backends = backends(3);
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&config(
        2,
        "",
        &addrs,
        "stickiness = { type = \"lb_cookie\", duration = \"1h\" }",
    ));

    // A new client is served and handed ringlb's cookie.
    let first = get_with(p.addr, "/", &[]);
    assert_eq!(first.status, 200);
    let pinned = first.body.clone();
    let set = first
        .set_cookie("RINGLB")
        .expect("a new client gets RINGLB");
    for attr in ["Max-Age=3600", "Path=/", "HttpOnly"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let value = first.cookie("RINGLB").unwrap();
    let target = by_name(&backends, &pinned).addr;
    assert!(
        !value.contains("127.0.0.1") && !value.contains(&target.port().to_string()),
        "the cookie does not give the target's address away: {value}"
    );

    // Twenty requests, each on a new connection (so both workers decode it), among the client's
    // other cookies: all reach the same target, and no new cookie is needed.
    let cookie = format!("theme=dark; RINGLB={value}; lang=en");
    for i in 0..20 {
        let r = get_with(p.addr, "/", &[("Cookie", &cookie)]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, pinned.as_str()),
            "request {i}"
        );
        assert_eq!(
            r.set_cookie("RINGLB"),
            None,
            "already pinned: {:?}",
            r.headers
        );
    }

    // Clients without the cookie are spread over all three, each handed a cookie.
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        let r = get_with(p.addr, "/", &[]);
        assert!(r.set_cookie("RINGLB").is_some());
        *counts.entry(r.body).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 5), "{counts:?}");

    // A cookie ringlb did not make names nothing: served, and handed a real one.
    let r = get_with(p.addr, "/", &[("Cookie", "RINGLB=not-a-target")]);
    assert_eq!(r.status, 200);
    assert!(r.set_cookie("RINGLB").is_some(), "{:?}", r.headers);
}

#[test]
fn an_lb_cookie_set_over_https_is_secure() {
    let pki = crate::tls::Pki::new("traffic-sticky");
    let leaf = pki.leaf("site", &["site.test"]);
    let a = Backend::start("a");
    let p = Proxy::start(&format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"https\"\ntarget_group = \"app\"\n  [listener.tls]\n  certificates = [{}]\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n\
         stickiness = {{ type = \"lb_cookie\", duration = \"30m\" }}\n",
        crate::tls::cert_list(&[&leaf]),
        a.addr
    ));
    let cfg = Arc::new(pki.client(&["http/1.1"]));
    let (r, _) = crate::tls::https_get(p.addr, &cfg, "site.test", "/");
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").expect("RINGLB set");
    assert!(set.starts_with("RINGLB="), "{set}");
    for attr in ["Max-Age=1800", "Path=/", "HttpOnly", "Secure"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
}

#[test]
fn a_pinned_target_that_turns_unhealthy_is_replaced_and_the_cookie_updated() {
    let backends = backends(3);
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&config(
        1,
        "",
        &addrs,
        &format!(
            "stickiness = {{ type = \"lb_cookie\", duration = \"1h\" }}\n{}",
            health_check(100, 2, 2)
        ),
    ));
    let admin = p.admin();
    for a in &addrs {
        wait_state(admin, *a, "healthy");
    }
    let (old, v) = pin(p.addr);
    let cookie = format!("RINGLB={v}");

    by_name(&backends, &old).set_status(500);
    wait_state(admin, by_name(&backends, &old).addr, "unhealthy");
    let r = get_with(p.addr, "/", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    assert_ne!(r.body, old, "the unhealthy target is replaced");
    let new = r.body.clone();
    let w = r
        .cookie("RINGLB")
        .expect("the cookie names the replacement");
    assert_ne!(w, v);

    // The client now sticks to the replacement, even once its first target is back.
    let cookie = format!("RINGLB={w}");
    for _ in 0..10 {
        let r = get_with(p.addr, "/", &[("Cookie", &cookie)]);
        assert_eq!(r.body, new);
        assert_eq!(r.set_cookie("RINGLB"), None);
    }
    by_name(&backends, &old).set_status(0);
    wait_state(admin, by_name(&backends, &old).addr, "healthy");
    for _ in 0..5 {
        assert_eq!(get_with(p.addr, "/", &[("Cookie", &cookie)]).body, new);
    }
}

#[test]
fn a_pinned_target_that_is_draining_is_replaced_and_the_cookie_updated() {
    let backends = backends(3);
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&config(
        1,
        "",
        &addrs,
        "stickiness = { type = \"lb_cookie\", duration = \"1h\" }\nderegistration_delay = \"20s\"",
    ));
    let admin = p.admin();
    let (old, v) = pin(p.addr);
    let old_addr = by_name(&backends, &old).addr;
    let before = by_name(&backends, &old).traffic();

    deregister(admin, old_addr);
    wait_state(admin, old_addr, "draining");
    let r = get_with(p.addr, "/", &[("Cookie", &format!("RINGLB={v}"))]);
    assert_eq!(r.status, 200);
    assert_ne!(
        r.body, old,
        "a draining target takes no new sticky requests"
    );
    let new = r.body.clone();
    let w = r
        .cookie("RINGLB")
        .expect("the cookie names the replacement");
    assert_ne!(w, v);
    for _ in 0..5 {
        let r = get_with(p.addr, "/", &[("Cookie", &format!("RINGLB={w}"))]);
        assert_eq!(r.body, new, "the client sticks to the replacement");
    }
    assert_eq!(by_name(&backends, &old).traffic(), before);
}

#[test]
fn stickiness_survives_a_reload_that_keeps_the_target() {
    let backends = backends(4);
    let sticky = "stickiness = { type = \"lb_cookie\", duration = \"1h\" }";
    let text = |targets: &[&Backend], extra: &str| {
        let addrs: Vec<SocketAddr> = targets.iter().map(|b| b.addr).collect();
        config(2, "", &addrs, &format!("{sticky}\n{extra}"))
    };
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| &backends[i]);
    let path = write_config("traffic-sticky-reload.toml", &text(&[a, b, c], ""));
    let p = serve_file(&path);
    let (pinned, v) = pin(p.addr);
    let cookie = format!("RINGLB={v}");

    // A reload that adds a target and reorders the others keeps the client where it was.
    let kept: Vec<&Backend> = vec![d, c, b, a];
    std::fs::write(&path, text(&kept, "retries = 1")).expect("rewrite");
    reload(&p);
    for _ in 0..10 {
        let r = get_with(p.addr, "/", &[("Cookie", &cookie)]);
        assert_eq!((r.status, r.body.as_str()), (200, pinned.as_str()));
        assert_eq!(r.set_cookie("RINGLB"), None, "still pinned: no new cookie");
    }

    // A reload that removes the pinned target moves the client, with a new cookie.
    let gone = by_name(&backends, &pinned).addr;
    let rest: Vec<&Backend> = backends.iter().filter(|x| x.addr != gone).collect();
    std::fs::write(&path, text(&rest, "")).expect("rewrite");
    reload(&p);
    let r = get_with(p.addr, "/", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    assert_ne!(r.body, pinned);
    assert!(
        r.cookie("RINGLB").is_some_and(|w| w != v),
        "{:?}",
        r.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Sticky sessions: app_cookie.

#[test]
fn an_app_cookie_keeps_the_session_on_the_target_that_set_it() {
    // `/login` starts the application's session: it sets SESSIONID; nothing else sets cookies.
    let app = |name: &'static str| {
        Origin::start(0, move |req| {
            if req.target.starts_with("/login") {
                Act::Reply {
                    headers: vec![(
                        "Set-Cookie".into(),
                        format!("SESSIONID={name}-42; Path=/; HttpOnly"),
                    )],
                    body: name.into(),
                    delay: Duration::ZERO,
                }
            } else {
                reply(name)
            }
        })
    };
    let origins = [app("a"), app("b"), app("c")];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let p = Proxy::start(&config(
        2,
        "",
        &addrs,
        "stickiness = { type = \"app_cookie\", cookie = \"SESSIONID\", duration = \"10m\" }\n\
         deregistration_delay = \"20s\"",
    ));

    // No session yet: nothing sticks and ringlb sets no cookie.
    let mut spread = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = get_with(p.addr, "/", &[]);
        assert!(r.all("set-cookie").is_empty(), "{:?}", r.headers);
        spread.insert(r.body);
    }
    assert!(spread.len() >= 2, "{spread:?}");

    // The application sets its cookie: ringlb's companion goes with it.
    let login = get_with(p.addr, "/login", &[]);
    let owner = login.body.clone();
    assert_eq!(
        login.cookie("SESSIONID").as_deref(),
        Some(format!("{owner}-42").as_str()),
        "the application's cookie reaches the client untouched"
    );
    let companion = login.cookie("RINGLBAPP").expect("companion cookie");
    let set = login.set_cookie("RINGLBAPP").unwrap();
    assert!(set.contains("Max-Age=600"), "{set}");
    let owner_addr = addrs[["a", "b", "c"].iter().position(|n| *n == owner).unwrap()];
    assert!(!companion.contains(&owner_addr.port().to_string()));

    // Requests carrying the session keep going to its target, on new connections.
    let session = format!("SESSIONID={owner}-42; RINGLBAPP={companion}");
    for _ in 0..15 {
        let r = get_with(p.addr, "/cart", &[("Cookie", &session)]);
        assert_eq!(r.body, owner);
        assert_eq!(r.set_cookie("RINGLBAPP"), None);
    }
    // Without the application's cookie (the session ended) the companion alone does not stick.
    let mut spread = std::collections::HashSet::new();
    for _ in 0..9 {
        let lone = format!("RINGLBAPP={companion}");
        spread.insert(get_with(p.addr, "/", &[("Cookie", &lone)]).body);
    }
    assert!(spread.len() >= 2, "companion alone sticks: {spread:?}");

    // The session's target is deregistered: the session moves, and the companion follows it.
    deregister(p.admin(), owner_addr);
    wait_state(p.admin(), owner_addr, "draining");
    let r = get_with(p.addr, "/cart", &[("Cookie", &session)]);
    assert_eq!(r.status, 200);
    assert_ne!(r.body, owner);
    let moved = r.cookie("RINGLBAPP").expect("companion updated");
    assert_ne!(moved, companion);
    let next = r.body.clone();
    let session = format!("SESSIONID={owner}-42; RINGLBAPP={moved}");
    for _ in 0..5 {
        assert_eq!(
            get_with(p.addr, "/cart", &[("Cookie", &session)]).body,
            next
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Slow start.

/// Which of `names` answered each of `n` GETs on one keep-alive connection.
fn tally(c: &mut Client, n: usize) -> std::collections::HashMap<String, usize> {
    let mut t = std::collections::HashMap::new();
    for _ in 0..n {
        let r = c.get("/");
        assert_eq!(r.status, 200);
        *t.entry(r.text()).or_insert(0) += 1;
    }
    t
}

fn share(t: &std::collections::HashMap<String, usize>, name: &str) -> usize {
    t.get(name).copied().unwrap_or(0)
}

#[test]
fn a_registered_target_ramps_up_over_slow_start() {
    let (a, b, c) = (Origin::named("a"), Origin::named("b"), Origin::named("c"));
    let p = Proxy::start(&config(1, "", &[a.addr, b.addr], "slow_start = \"2s\""));
    let mut client = Client::connect(p.addr);
    // The targets ringlb started with take their full share at once.
    let t = tally(&mut client, 20);
    assert_eq!((share(&t, "a"), share(&t, "b")), (10, 10), "{t:?}");

    register(p.admin(), c.addr);
    let joined = Instant::now();
    // Requests sent in a window of the ramp: (requests, of them to c).
    let mut window = |from: Duration, to: Duration| {
        while joined.elapsed() < from {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mut n, mut to_c) = (0, 0);
        while joined.elapsed() < to {
            let r = client.get("/");
            assert_eq!(r.status, 200);
            n += 1;
            to_c += usize::from(r.text() == "c");
        }
        (n, to_c)
    };
    // First 400 ms: c's weight is under a fifth of the others' (~5% of requests on average).
    let (n, early) = window(Duration::ZERO, Duration::from_millis(400));
    assert!(n >= 20, "only {n} requests in 400 ms");
    assert!(
        early <= n / 6 + 1,
        "c took {early} of {n} right after joining"
    );
    // Around 1.1 s: about half its weight (~20% of requests).
    let (m, mid) = window(Duration::from_millis(900), Duration::from_millis(1300));
    assert!(m >= 20, "only {m} requests in 400 ms");
    let mid_share = mid as f64 / m as f64;
    assert!(
        (0.08..0.31).contains(&mid_share),
        "c took {mid} of {m} half-way through its ramp (early: {early} of {n})"
    );
    // After the ramp: its fair third.
    window(Duration::from_millis(2100), Duration::from_millis(2100));
    let t = tally(&mut client, 60);
    for name in ["a", "b", "c"] {
        assert!((17..=23).contains(&share(&t, name)), "{t:?}");
    }
}

#[test]
fn targets_healthy_from_the_first_check_round_take_full_share_and_recovering_ones_ramp() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let p = Proxy::start(&config(
        1,
        "",
        &[a.addr, b.addr],
        &format!("slow_start = \"30s\"\n{}", health_check(100, 2, 2)),
    ));
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");
    wait_state(admin, b.addr, "healthy");
    let mut client = Client::connect(p.addr);
    let t = tally(&mut client, 20);
    assert_eq!((share(&t, "a"), share(&t, "b")), (10, 10), "{t:?}");

    // A target registered later ramps from its first healthy check. Had a and b ramped too (from
    // their own first healthy check, a few hundred ms earlier), c would by now take about a
    // quarter of the requests; at full weight, a third.
    register(admin, c.addr);
    wait_state(admin, c.addr, "healthy");
    std::thread::sleep(Duration::from_millis(600));
    let t = tally(&mut client, 60);
    assert!(share(&t, "c") <= 4, "{t:?}");
    assert!(share(&t, "a").abs_diff(share(&t, "b")) <= 2, "{t:?}");

    // A target that fails and recovers ramps up again from near zero.
    b.set_status(500);
    wait_state(admin, b.addr, "unhealthy");
    b.set_status(0);
    wait_state(admin, b.addr, "healthy");
    let t = tally(&mut client, 40);
    assert!(share(&t, "b") <= 4, "{t:?}");
    assert!(share(&t, "a") >= 30, "{t:?}");
}

// ---------------------------------------------------------------------------------------------
// max_connections and the queue.

#[test]
fn max_connections_holds_a_target_to_n_requests_and_queues_the_rest() {
    let o = Origin::start(0, |_| slow_reply("slow", Duration::from_millis(400)));
    let p = Proxy::start(&config(
        1,
        "",
        &[o.addr],
        "max_connections = 2\nqueue_timeout = \"10s\"",
    ));
    let (addr, admin) = (p.addr, p.admin());
    let started = Instant::now();
    let clients = std::thread::spawn(move || all_at_once(6, move |_| get(addr, "/").status));
    wait_for(
        Duration::from_secs(3),
        "requests waiting in the queue",
        || metric(admin, "ringlb_queue_length{group=\"app\"}").is_some_and(|v| v >= 1.0),
    );
    let statuses = clients.join().expect("clients");
    assert_eq!(statuses, vec![200; 6], "every queued request is served");
    assert_eq!(o.peak_busy(), 2, "the target never had more than 2 at once");
    assert_eq!(o.requests(), 6);
    // Two at a time: three rounds of 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(admin, "ringlb_queue_waits_total{group=\"app\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(admin, "ringlb_queue_length{group=\"app\"}"),
        Some(0.0)
    );
    // Two waited one round, two waited two: about 2.4 s in all.
    let waited = metric_value(admin, "ringlb_queue_wait_seconds_total{group=\"app\"}");
    assert!((1.5..6.0).contains(&waited), "{waited}");
    assert_eq!(
        metric(admin, "ringlb_queue_timeouts_total{group=\"app\"}"),
        Some(0.0)
    );
}

#[test]
fn a_slot_freed_on_any_target_takes_the_next_queued_request() {
    let x = Origin::start(0, |_| slow_reply("x", Duration::from_millis(300)));
    let y = Origin::start(0, |_| slow_reply("y", Duration::from_millis(300)));
    let p = Proxy::start(&config(1, "", &[x.addr, y.addr], "max_connections = 1"));
    let addr = p.addr;
    let answers = all_at_once(6, move |_| {
        let r = get(addr, "/");
        (r.status, r.text())
    });
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!((x.peak_busy(), y.peak_busy()), (1, 1));
    assert_eq!(x.requests() + y.requests(), 6);
    assert!(
        x.requests() >= 2 && y.requests() >= 2,
        "both targets serve the queue"
    );
}

#[test]
fn the_queue_is_first_in_first_out() {
    let o = Origin::start(0, |_| slow_reply("o", Duration::from_millis(200)));
    let p = Proxy::start(&config(1, "", &[o.addr], "max_connections = 1"));
    let addr = p.addr;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(std::thread::spawn(move || {
            get(addr, &format!("/{i}")).status
        }));
        // Each request reaches ringlb before the next is sent.
        std::thread::sleep(Duration::from_millis(30));
    }
    for c in clients {
        assert_eq!(c.join().expect("client"), 200);
    }
    let order: Vec<String> = o.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        order,
        ["/0", "/1", "/2", "/3", "/4"],
        "served in arrival order"
    );
}

/// Two targets named "x" and "y" answering `/slow` after `slow`, anything else at once, one
/// request at a time each, behind lb_cookie stickiness. Returns them, ringlb, the name of the
/// target a new client was pinned to and its cookie.
fn pinned_and_full(slow: Duration) -> (Origin, Origin, Proxy, String, String) {
    let target = |name: &'static str| {
        Origin::start(0, move |req| {
            if req.target == "/slow" {
                slow_reply(name, slow)
            } else {
                reply(name)
            }
        })
    };
    let (x, y) = (target("x"), target("y"));
    let p = Proxy::start(&config(
        1,
        "",
        &[x.addr, y.addr],
        "max_connections = 1\nstickiness = { type = \"lb_cookie\", duration = \"1h\" }",
    ));
    let r = get_with(p.addr, "/", &[]);
    let cookie = format!("RINGLB={}", r.cookie("RINGLB").expect("pinned"));
    (x, y, p, r.body, cookie)
}

#[test]
fn a_request_pinned_to_a_full_target_waits_for_that_target() {
    let (x, y, p, pinned, cookie) = pinned_and_full(Duration::from_millis(600));
    let (to, other) = if pinned == "x" { (&x, &y) } else { (&y, &x) };
    let addr = p.addr;
    let c = cookie.clone();
    let holder = std::thread::spawn(move || get_with(addr, "/slow", &[("Cookie", &c)]).status);
    wait_for(Duration::from_secs(3), "the pinned target busy", || {
        to.busy() == 1
    });
    // The other target is free, but the session stays where it is: the request waits.
    let asked = Instant::now();
    let r = get_with(addr, "/again", &[("Cookie", &cookie)]);
    assert_eq!((r.status, r.body.as_str()), (200, pinned.as_str()));
    assert_eq!(r.set_cookie("RINGLB"), None, "not moved: {:?}", r.headers);
    assert!(asked.elapsed() >= Duration::from_millis(300), "it waited");
    assert_eq!(holder.join().expect("holder"), 200);
    assert!(other.seen().iter().all(|s| s.target != "/again"));
    assert_eq!(
        metric(p.admin(), "ringlb_queue_waits_total{group=\"app\"}"),
        Some(1.0)
    );
}

#[test]
fn a_request_waiting_for_its_pinned_target_does_not_hold_up_others() {
    let (x, y, p, pinned, cookie) = pinned_and_full(Duration::from_millis(1500));
    let (to, other) = if pinned == "x" { (&x, &y) } else { (&y, &x) };
    let other_name = if pinned == "x" { "y" } else { "x" };
    let (addr, admin) = (p.addr, p.admin());
    let c = cookie.clone();
    let holder = std::thread::spawn(move || get_with(addr, "/slow", &[("Cookie", &c)]).status);
    wait_for(Duration::from_secs(3), "the pinned target busy", || {
        to.busy() == 1
    });
    let c = cookie.clone();
    let waiter = std::thread::spawn(move || get_with(addr, "/", &[("Cookie", &c)]).body);
    wait_for(Duration::from_secs(3), "the pinned request queued", || {
        metric(admin, "ringlb_queue_length{group=\"app\"}") == Some(1.0)
    });
    // A new client may go anywhere, and the other target is idle: it is served there now, not
    // after the pinned target's slow request.
    let asked = Instant::now();
    let r = get_with(addr, "/", &[]);
    let took = asked.elapsed();
    assert_eq!((r.status, r.body.as_str()), (200, other_name));
    assert!(
        took < Duration::from_millis(500),
        "a new client waited {took:?} behind a request pinned to the busy target while {} was idle",
        other.addr
    );
    assert_eq!(holder.join().expect("holder"), 200);
    assert_eq!(waiter.join().expect("waiter"), pinned);
}

#[test]
fn past_queue_timeout_the_answer_is_503_with_retry_after() {
    let o = Origin::start(0, |req| {
        if req.target == "/slow" {
            slow_reply("slow", Duration::from_millis(1000))
        } else {
            reply("fast")
        }
    });
    let p = Proxy::start(&config(
        1,
        "",
        &[o.addr],
        "max_connections = 1\nqueue_timeout = \"200ms\"",
    ));
    let (addr, admin) = (p.addr, p.admin());
    let holder = std::thread::spawn(move || get(addr, "/slow"));
    wait_for(Duration::from_secs(3), "the slot taken", || o.busy() == 1);

    let asked = Instant::now();
    let r = get(addr, "/");
    let waited = asked.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(
        waited >= Duration::from_millis(180) && waited < Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert_eq!(
        o.requests(),
        1,
        "the timed-out request never reached the target"
    );
    assert_eq!(
        metric(admin, "ringlb_queue_timeouts_total{group=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "ringlb_queue_waits_total{group=\"app\"}"),
        Some(1.0)
    );
    let wait_s = metric_value(admin, "ringlb_queue_wait_seconds_total{group=\"app\"}");
    assert!((0.15..0.9).contains(&wait_s), "{wait_s}");

    assert_eq!(holder.join().expect("holder").status, 200);
    // The slot is free again: the next request goes straight through.
    assert_eq!(get(addr, "/").text(), "fast");
    assert_eq!(
        metric(admin, "ringlb_queue_waits_total{group=\"app\"}"),
        Some(1.0)
    );
}

/// A target with 16 connection slots (it resets connections beyond them, as a small server out
/// of workers does), flooded by `clients` clients sending `each` requests apiece through ringlb
/// with two workers. Returns the target and every status (0: no response).
fn flood(group_extra: &str, clients: usize, each: usize, delay: Duration) -> (Origin, Vec<u16>) {
    let o = Origin::start(16, move |_| slow_reply("ok", delay));
    let p = Proxy::start(&config(
        2,
        "",
        &[o.addr],
        &format!("passive_failures = 0\n{group_extra}"),
    ));
    let addr = p.addr;
    let statuses = all_at_once(clients, move |_| {
        let mut c = Client::connect(addr);
        (0..each)
            .map(|_| {
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                c.read_response(false).map_or(0, |r| r.status)
            })
            .collect::<Vec<u16>>()
    });
    drop(p);
    (o, statuses.into_iter().flatten().collect())
}

#[test]
fn a_flood_on_a_small_target_gets_no_errors_with_max_connections() {
    // 6 per worker, two workers: at most 12 at once on a target with 16 slots.
    let (o, statuses) = flood(
        "max_connections = 6\nqueue_timeout = \"20s\"",
        150,
        3,
        Duration::from_millis(20),
    );
    let errors = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(errors, 0, "{errors} of {} failed", statuses.len());
    assert_eq!(
        o.counts.refused.load(SeqCst),
        0,
        "no connection was refused"
    );
    assert!(o.peak_busy() <= 12, "{} at once", o.peak_busy());
    assert!(o.counts.peak_conns.load(SeqCst) <= 16);
    assert_eq!(o.requests(), 450);
}

#[test]
fn without_max_connections_the_same_flood_overruns_the_small_target() {
    let (o, statuses) = flood("", 150, 1, Duration::from_millis(100));
    let errors = statuses.iter().filter(|s| **s != 200).count();
    assert!(
        o.counts.refused.load(SeqCst) > 0 && errors > 0,
        "{errors} errors, {} refused",
        o.counts.refused.load(SeqCst)
    );
    assert!(
        statuses.iter().all(|s| [200, 502].contains(s)),
        "{statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Header rewriting.

/// Values of field `name` in a head the origin saw.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// An origin answering with a few fields a site would rather not show, and one it would keep.
fn chatty_origin() -> Origin {
    Origin::start(0, |_| Act::Reply {
        headers: [
            ("Server", "origin/1.0"),
            ("X-Powered-By", "php/8.3"),
            ("X-Keep", "yes"),
            ("Strict-Transport-Security", "max-age=1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect(),
        body: "page".into(),
        delay: Duration::ZERO,
    })
}

const REWRITES: &str = "request_headers = { set = { \"X-Env\" = \"prod\", \"x-tier\" = \"web\" }, remove = [\"x-debug\"] }\n\
    response_headers = { set = { \"strict-transport-security\" = \"max-age=63072000\" }, remove = [\"server\", \"X-Powered-By\"] }\n\
    \n  [[listener.rule]]\n  priority = 10\n  path = [\"/api/*\"]\n  forward = \"app\"\n\
    request_headers = { set = { \"x-tier\" = \"api\" }, remove = [\"x-env\"] }\n\
    response_headers = { set = { \"x-api-version\" = \"2\" }, remove = [\"strict-transport-security\"] }\n";

#[test]
fn listener_rewrites_apply_and_a_rules_rewrites_come_after() {
    let o = chatty_origin();
    let p = Proxy::start(&config(1, REWRITES, &[o.addr], ""));
    let client_fields = [("X-Debug", "1"), ("X-Env", "dev"), ("X-Other", "kept")];

    // No rule matches: the listener's rewrites.
    let r = get_with(p.addr, "/page", &client_fields);
    assert_eq!(r.status, 200);
    let seen = o.seen().pop().expect("seen");
    assert_eq!(
        values(&seen, "x-env"),
        ["prod"],
        "set replaces the client's"
    );
    assert_eq!(values(&seen, "x-tier"), ["web"]);
    assert!(values(&seen, "x-debug").is_empty(), "removed");
    assert_eq!(values(&seen, "x-other"), ["kept"]);
    assert_eq!(r.all("strict-transport-security"), ["max-age=63072000"]);
    assert!(r.all("server").is_empty() && r.all("x-powered-by").is_empty());
    assert_eq!(r.all("x-keep"), ["yes"]);
    assert!(r.all("x-api-version").is_empty());

    // The rule matches: its rewrites after the listener's, and what it sets or removes wins.
    let r = get_with(p.addr, "/api/items", &client_fields);
    assert_eq!(r.status, 200);
    let seen = o.seen().pop().expect("seen");
    assert_eq!(seen.target, "/api/items");
    assert_eq!(values(&seen, "x-tier"), ["api"]);
    assert!(
        values(&seen, "x-env").is_empty(),
        "the rule removes even the listener's"
    );
    assert!(values(&seen, "x-debug").is_empty());
    assert_eq!(values(&seen, "x-other"), ["kept"]);
    assert_eq!(r.all("x-api-version"), ["2"]);
    assert!(
        r.all("strict-transport-security").is_empty(),
        "{:?}",
        r.headers
    );
    assert!(r.all("server").is_empty() && r.all("x-powered-by").is_empty());
    assert_eq!(r.all("x-keep"), ["yes"]);
}

#[test]
fn set_and_remove_also_apply_to_the_forwarded_fields() {
    // ringlb behind a TLS-terminating proxy: the operator sets X-Forwarded-Proto to https, and
    // drops the X-Forwarded-For clients send (they can claim any address). Either `ringlb check`
    // refuses these names, or the target sees what the operator asked for: one
    // X-Forwarded-Proto, https ("`set` replaces any field of that name"), and no address the
    // client claimed (ringlb may still add the client's own).
    let o = Origin::named("a");
    let text = config(
        1,
        "request_headers = { set = { \"x-forwarded-proto\" = \"https\" }, \
         remove = [\"x-forwarded-for\"] }",
        &[o.addr],
        "",
    );
    if let Err(e) = ringlb::config::Config::parse(&text, Path::new("test.toml")) {
        let e = e.to_string();
        assert!(e.contains("x-forwarded-"), "refused, naming the field: {e}");
        return;
    }
    let p = Proxy::start(&text);
    let r = get_with(p.addr, "/", &[("X-Forwarded-For", "192.0.2.7")]);
    assert_eq!(r.status, 200);
    let seen = o.seen().pop().expect("seen");
    assert_eq!(
        values(&seen, "x-forwarded-proto"),
        ["https"],
        "set replaces ringlb's own: {:?}",
        seen.headers
    );
    let xff = values(&seen, "x-forwarded-for");
    assert!(
        xff.len() <= 1 && xff.iter().all(|v| !v.contains("192.0.2.7")),
        "the client's X-Forwarded-For is removed: {:?}",
        seen.headers
    );
}

#[test]
fn check_refuses_rewriting_framing_and_connection_fields_and_says_where() {
    let bad = write_config(
        "traffic-rewrite-bad.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
         target_group = \"app\"\nrequest_headers = { set = { \"content-length\" = \"1\" } }\n\n\
         [[listener.rule]]\npriority = 1\npath = [\"/api/*\"]\nforward = \"app\"\n\
         response_headers = { set = { \"Transfer-Encoding\" = \"chunked\" } }\n\
         request_headers = { set = { \"Connection\" = \"close\", \"Host\" = \"x\" } }\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n",
    );
    let out = std::process::Command::new(crate::cli::bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run ringlb check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (line, field) in [
        (6, "content-length"),
        (12, "Transfer-Encoding"),
        (13, "Connection"),
        (13, "Host"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("traffic-rewrite-bad.toml:{line}:"))
                    && l.contains(&format!("\"{field}\""))),
            "{field} refused on line {line}: {err}"
        );
    }

    let good = write_config(
        "traffic-rewrite-good.toml",
        &format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
             target_group = \"app\"\n{REWRITES}\n[[target_group]]\nname = \"app\"\n\
             targets = [\"127.0.0.1:3000\"]\n"
        ),
    );
    let out = std::process::Command::new(crate::cli::bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .expect("run ringlb check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Request ids.

#[test]
fn request_ids_are_made_when_absent_kept_when_sent_returned_and_logged() {
    let dir = temp_dir("request-id");
    let log = dir.join("web.log");
    let o = Origin::named("a");
    let p = Proxy::start(&config(
        1,
        &format!("access_log = \"{}\"", log.display()),
        &[o.addr],
        "",
    ));

    // None sent: ringlb makes one, the target sees it, the client gets it back.
    let r = get_with(p.addr, "/one", &[]);
    let made = r.header("x-request-id").expect("id returned").to_string();
    assert!(uuid_form(&made), "{made}");
    assert_eq!(values(&o.seen()[0], "x-request-id"), [made.as_str()]);
    // Every request has its own.
    let other = get_with(p.addr, "/two", &[]);
    let other = other.header("x-request-id").expect("id").to_string();
    assert!(uuid_form(&other) && other != made, "{other}");

    // Sent by the client: kept as it came, once.
    let r = get_with(p.addr, "/three", &[("X-Request-Id", "client-trace-7")]);
    assert_eq!(r.all("x-request-id"), ["client-trace-7"]);
    assert_eq!(values(&o.seen()[2], "x-request-id"), ["client-trace-7"]);

    // One too long to keep (over 64 bytes) is replaced, not doubled.
    let long = "x".repeat(100);
    let r = get_with(p.addr, "/four", &[("X-Request-Id", &long)]);
    let replaced = r.header("x-request-id").expect("id").to_string();
    assert!(uuid_form(&replaced), "{replaced}");
    assert_eq!(values(&o.seen()[3], "x-request-id"), [replaced.as_str()]);

    let lines = log_lines(&log, 4);
    let logged = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("{path} logged: {lines:?}"))["request_id"]
            .clone()
    };
    assert_eq!(logged("/one"), made.as_str());
    assert_eq!(logged("/two"), other.as_str());
    assert_eq!(logged("/three"), "client-trace-7");
    assert_eq!(logged("/four"), replaced.as_str());
}

#[test]
fn request_ids_can_be_renamed_or_turned_off() {
    let o = Origin::named("a");
    let text = format!(
        "[runtime]\nworkers = 1\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\
         request_id = \"X-Trace-Id\"\n\n\
         [[listener]]\nname = \"off\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\
         request_id = \"\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
        o.addr
    );
    let p = Proxy::start(&text);
    let off = p
        .server
        .as_ref()
        .and_then(|s| s.listener_addr("off"))
        .expect("second listener");

    let r = get_with(p.addr, "/", &[]);
    let id = r
        .header("x-trace-id")
        .expect("renamed id returned")
        .to_string();
    assert!(uuid_form(&id), "{id}");
    assert!(r.header("x-request-id").is_none());
    let seen = o.seen().pop().unwrap();
    assert_eq!(values(&seen, "x-trace-id"), [id.as_str()]);
    assert!(values(&seen, "x-request-id").is_empty());

    // Off: nothing made, nothing returned; a field the client sends is an ordinary field.
    let r = get_with(off, "/", &[]);
    assert!(r.header("x-request-id").is_none(), "{:?}", r.headers);
    assert!(!o.seen().pop().unwrap().has("x-request-id"));
    let r = get_with(off, "/", &[("X-Request-Id", "from-client")]);
    assert!(r.header("x-request-id").is_none(), "{:?}", r.headers);
    assert_eq!(
        values(&o.seen().pop().unwrap(), "x-request-id"),
        ["from-client"]
    );
}

// HTTP/2 (h2c by prior knowledge).

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A new h2c connection to `addr`.
async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One GET stream with `headers`; (status, response headers, body).
async fn h2_get(
    send: &h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut req = http::Request::builder().uri(format!("http://test:{}{path}", addr.port()));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, _) = send
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&data).into_owned(),
    )
}

#[test]
fn request_ids_and_rewrites_work_over_http2_too() {
    let dir = temp_dir("request-id-h2");
    let log = dir.join("web.log");
    let o = chatty_origin();
    let p = Proxy::start(&config(
        1,
        &format!(
            "http2 = true\naccess_log = \"{}\"\n{REWRITES}",
            log.display()
        ),
        &[o.addr],
        "",
    ));
    let addr = p.addr;
    let (made, kept) = rt().block_on(async {
        let send = h2c(addr).await;
        let (status, h, _) = h2_get(&send, addr, "/page", &[("x-debug", "1")]).await;
        assert_eq!(status, 200);
        let made = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(h["strict-transport-security"], "max-age=63072000");
        assert!(h.get("server").is_none() && h.get("x-powered-by").is_none());
        let (status, h, _) =
            h2_get(&send, addr, "/api/x", &[("x-request-id", "h2-client-id")]).await;
        assert_eq!(status, 200);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        assert_eq!(h["x-api-version"], "2");
        assert!(h.get("strict-transport-security").is_none());
        (made, h["x-request-id"].to_str().unwrap().to_string())
    });
    assert!(uuid_form(&made), "{made}");
    assert_eq!(kept, "h2-client-id");
    let seen = o.seen();
    assert_eq!(values(&seen[0], "x-request-id"), [made.as_str()]);
    assert_eq!(values(&seen[0], "x-env"), ["prod"]);
    assert!(values(&seen[0], "x-debug").is_empty());
    assert_eq!(values(&seen[1], "x-request-id"), ["h2-client-id"]);
    assert_eq!(values(&seen[1], "x-tier"), ["api"]);

    let lines = log_lines(&log, 2);
    assert_eq!(lines[0]["protocol"], "HTTP/2");
    assert_eq!(lines[0]["request_id"], made.as_str());
    assert_eq!(lines[1]["request_id"], "h2-client-id");
}

#[test]
fn an_lb_cookie_pins_http2_clients_too() {
    let origins = [Origin::named("a"), Origin::named("b"), Origin::named("c")];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let p = Proxy::start(&config(
        2,
        "http2 = true",
        &addrs,
        "stickiness = { type = \"lb_cookie\", duration = \"1h\" }",
    ));
    let addr = p.addr;
    rt().block_on(async {
        let (status, h, pinned) = h2_get(&h2c(addr).await, addr, "/", &[]).await;
        assert_eq!(status, 200);
        let set = h["set-cookie"].to_str().unwrap().to_string();
        assert!(set.starts_with("RINGLB="), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        // New connections, the cookie in its own field beside another (as browsers send them).
        for _ in 0..10 {
            let send = h2c(addr).await;
            let (status, h, body) = h2_get(
                &send,
                addr,
                "/",
                &[("cookie", "theme=dark"), ("cookie", &cookie)],
            )
            .await;
            assert_eq!((status, body.as_str()), (200, pinned.as_str()));
            assert!(h.get("set-cookie").is_none());
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Retries (retry_on).

fn retries(admin: SocketAddr, cause: &str) -> f64 {
    metric_value(
        admin,
        &format!("ringlb_retries_total{{group=\"app\",cause=\"{cause}\"}}"),
    )
}

fn methods(o: &Origin, method: &str) -> usize {
    o.seen().iter().filter(|s| s.method == method).count()
}

#[test]
fn reset_retries_idempotent_requests_on_another_target_but_never_posts() {
    let hangup = Origin::start(0, |_| Act::Hangup);
    let reset = Origin::start(0, |_| Act::Reset);
    let good = Origin::named("good");
    let p = Proxy::start(&config(
        1,
        "",
        &[hangup.addr, reset.addr, good.addr],
        "retry_on = [\"connect-failure\", \"reset\"]\nretries = 2\npassive_failures = 0",
    ));
    let admin = p.admin();
    let mut idempotent = vec!["GET"; 12];
    idempotent.extend(["HEAD", "PUT", "DELETE", "OPTIONS"]);
    for method in idempotent {
        let r = request(p.addr, method, "/", &[]);
        assert_eq!(r.status, 200, "{method}: {r:?}");
    }
    assert!(methods(&hangup, "GET") > 0 && methods(&reset, "GET") > 0);
    let after_gets = retries(admin, "reset");
    assert!(after_gets >= 2.0, "{after_gets}");

    // POST: whatever target takes it answers, or the client gets 502; it never goes twice.
    let mut failed = 0;
    for _ in 0..9 {
        match request(p.addr, "POST", "/", &[]).status {
            200 => {}
            502 => failed += 1,
            s => panic!("POST answered {s}"),
        }
    }
    let (lost, served) = (
        methods(&hangup, "POST") + methods(&reset, "POST"),
        methods(&good, "POST"),
    );
    assert_eq!(lost + served, 9, "each POST reached one target");
    assert_eq!(failed, lost);
    assert!(failed > 0, "some POSTs met the bad targets");
    assert_eq!(retries(admin, "reset"), after_gets, "no POST was retried");
}

#[test]
fn without_reset_in_retry_on_a_closed_connection_is_a_502() {
    let hangup = Origin::start(0, |_| Act::Hangup);
    let good = Origin::named("good");
    let p = Proxy::start(&config(
        1,
        "",
        &[hangup.addr, good.addr],
        "passive_failures = 0",
    ));
    let mut failed = 0;
    for _ in 0..10 {
        match get_with(p.addr, "/", &[]).status {
            200 => {}
            502 => failed += 1,
            s => panic!("answered {s}"),
        }
    }
    assert!(failed > 0);
    assert_eq!(failed, hangup.requests());
    assert_eq!(good.requests(), 10 - failed);
    assert_eq!(retries(p.admin(), "reset"), 0.0);
}

#[test]
fn retries_are_bounded_by_retries() {
    let hangup = Origin::start(0, |_| Act::Hangup);
    let reset = Origin::start(0, |_| Act::Reset);
    let good = Origin::named("good");
    let p = Proxy::start(&config(
        1,
        "",
        &[hangup.addr, reset.addr, good.addr],
        "retry_on = [\"reset\"]\nretries = 1\npassive_failures = 0",
    ));
    let mut failed = 0;
    for i in 0..12 {
        match get_with(p.addr, &format!("/{i}"), &[]).status {
            200 => {}
            502 => failed += 1,
            s => panic!("answered {s}"),
        }
    }
    assert!(failed > 0, "two bad targets in a row exhaust one retry");
    // No request reached more than two targets.
    let mut tries = std::collections::HashMap::new();
    for o in [&hangup, &reset, &good] {
        for s in o.seen() {
            *tries.entry(s.target).or_insert(0) += 1;
        }
    }
    assert!(tries.values().all(|&n| n <= 2), "{tries:?}");
    assert_eq!(tries.len(), 12);
}

#[test]
fn timeout_retries_an_idempotent_request_a_silent_target_never_answered() {
    let silent = Origin::start(0, |_| Act::Silent);
    let good = Origin::named("good");
    let p = Proxy::start(&config(
        1,
        "",
        &[silent.addr, good.addr],
        "retry_on = [\"connect-failure\", \"timeout\"]\nresponse_timeout = \"200ms\"\n\
         passive_failures = 0",
    ));
    for _ in 0..4 {
        let r = get_with(p.addr, "/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "good"));
    }
    assert!(silent.requests() > 0);
    assert!(retries(p.admin(), "timeout") >= 1.0);
    // A POST the silent target took is not sent again: 504.
    let statuses: Vec<u16> = (0..2)
        .map(|_| request(p.addr, "POST", "/", &[]).status)
        .collect();
    assert_eq!(methods(&silent, "POST") + methods(&good, "POST"), 2);
    assert_eq!(
        statuses.iter().filter(|s| **s == 504).count(),
        methods(&silent, "POST"),
        "{statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reload.

#[test]
fn traffic_settings_change_on_reload() {
    let o = Origin::start(0, |req| {
        if req.target == "/slow" {
            slow_reply("slow", Duration::from_millis(800))
        } else {
            reply("o")
        }
    });
    let text = |listener: &str, group: &str| config(1, listener, &[o.addr], group);
    let path = write_config(
        "traffic-reload.toml",
        &text("response_headers = { set = { \"x-config\" = \"1\" } }", ""),
    );
    let p = serve_file(&path);
    let r = get_with(p.addr, "/", &[]);
    assert_eq!(r.all("x-config"), ["1"]);
    assert!(r.header("x-request-id").is_some());
    assert!(r.all("set-cookie").is_empty());

    std::fs::write(
        &path,
        text(
            "response_headers = { set = { \"x-config\" = \"2\" } }\nrequest_id = \"x-trace-id\"",
            "stickiness = { type = \"lb_cookie\", duration = \"1h\" }\nmax_connections = 1\n\
             queue_timeout = \"100ms\"",
        ),
    )
    .expect("rewrite");
    reload(&p);
    let r = get_with(p.addr, "/", &[]);
    assert_eq!(r.all("x-config"), ["2"]);
    assert!(r.header("x-request-id").is_none());
    let id = r.header("x-trace-id").expect("renamed id");
    assert_eq!(values(&o.seen().pop().unwrap(), "x-trace-id"), [id]);
    assert!(r.set_cookie("RINGLB").is_some(), "{:?}", r.headers);

    // The new limit holds: one request at a time, the next one waits 100 ms and gets 503.
    let addr = p.addr;
    let holder = std::thread::spawn(move || get(addr, "/slow").status);
    wait_for(Duration::from_secs(3), "the slot taken", || o.busy() == 1);
    let r = get(addr, "/");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(holder.join().expect("holder"), 200);
}
