//! Listener rules through a running ringlb with real backends: each condition and each action,
//! priority order, a weighted canary split, and WebSocket echo through a rule (tokio-tungstenite).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// One http listener (default group "app") with `rules`, and one group per (name, backend).
fn rules_config(app: SocketAddr, groups: &[(&str, SocketAddr)], rules: &str) -> String {
    let mut out = format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         target_group = \"app\"\n{rules}\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{app}\"]\n"
    );
    for (name, addr) in groups {
        out.push_str(&format!(
            "[[target_group]]\nname = \"{name}\"\ntargets = [\"{addr}\"]\n"
        ));
    }
    out
}

fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.read_response(raw.starts_with("HEAD ")).expect("response")
}

fn body_of(addr: SocketAddr, raw: &str) -> String {
    request(addr, raw).text()
}

#[test]
fn each_condition_routes_to_its_group() {
    let app = Backend::start("app");
    let names = [
        "host", "wild", "path", "method", "header", "query", "source",
    ];
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    let groups: Vec<(&str, SocketAddr)> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| (*n, b.addr))
        .collect();
    let rules = "[[listener.rule]]\npriority = 1\nhost = [\"api.example.com\"]\nforward = \"host\"\n\
         [[listener.rule]]\npriority = 2\nhost = [\"*.example.org\"]\nforward = \"wild\"\n\
         [[listener.rule]]\npriority = 3\npath = [\"/static/*\", \"*.png\"]\nforward = \"path\"\n\
         [[listener.rule]]\npriority = 4\nmethod = [\"DELETE\"]\nforward = \"method\"\n\
         [[listener.rule]]\npriority = 5\nheader = { x-beta = \"on*\" }\nforward = \"header\"\n\
         [[listener.rule]]\npriority = 6\nquery = { lang = \"fr\" }\nforward = \"query\"\n\
         [[listener.rule]]\npriority = 7\nsource_ip = [\"10.0.0.0/8\"]\nforward = \"app\"\n\
         [[listener.rule]]\npriority = 8\nsource_ip = [\"127.0.0.0/8\"]\npath = [\"/internal\"]\nforward = \"source\"\n";
    let p = Proxy::start(&rules_config(app.addr, &groups, rules));
    let get = |host: &str, target: &str| {
        body_of(
            p.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
    };
    assert_eq!(get("API.example.com:8080", "/"), "host");
    assert_eq!(get("shop.example.org", "/"), "wild");
    assert_eq!(get("example.org", "/"), "app");
    assert_eq!(get("x", "/static/app.js"), "path");
    assert_eq!(get("x", "/img/logo.png"), "path");
    assert_eq!(get("x", "/staticfile"), "app");
    assert_eq!(
        body_of(p.addr, "DELETE /item HTTP/1.1\r\nHost: x\r\n\r\n"),
        "method"
    );
    assert_eq!(
        body_of(
            p.addr,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Beta: ON-please\r\n\r\n"
        ),
        "header"
    );
    assert_eq!(get("x", "/page?a=1&lang=FR"), "query");
    assert_eq!(get("x", "/page?lang=de"), "app");
    assert_eq!(get("x", "/internal"), "source");
    assert_eq!(get("x", "/other"), "app");
    // The chosen group's backend saw the request as forwarded, X-Forwarded-For included.
    let seen = backends[2].last();
    assert_eq!(seen.target, "/img/logo.png");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn first_matching_rule_by_priority_wins() {
    let app = Backend::start("app");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // Listed out of order: priority decides, not position.
    let rules = "[[listener.rule]]\npriority = 20\npath = [\"/api/*\"]\nforward = \"b\"\n\
         [[listener.rule]]\npriority = 10\npath = [\"/api/v2/*\"]\nforward = \"a\"\n\
         [[listener.rule]]\npriority = 5\npath = [\"/api/v2/admin\"]\nmethod = [\"POST\"]\n\
         fixed_response = { status = 403, body = \"no\" }\n";
    let p = Proxy::start(&rules_config(
        app.addr,
        &[("a", a.addr), ("b", b.addr)],
        rules,
    ));
    let get = |t: &str| body_of(p.addr, &format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(get("/api/v2/users"), "a");
    assert_eq!(get("/api/v1/users"), "b");
    assert_eq!(get("/api/v2/admin"), "a");
    let r = request(
        p.addr,
        "POST /api/v2/admin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (403, "no"));
    assert_eq!(get("/"), "app");
}

#[test]
fn one_keep_alive_connection_follows_each_requests_rule() {
    // Requests on one connection alternate between a rule's group and the listener's own:
    // each goes where its own head says, not where the previous one went.
    let app = Backend::start("app");
    let a = Backend::start("a");
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/a/*\"]\nforward = \"a\"\n";
    let p = Proxy::start(&rules_config(app.addr, &[("a", a.addr)], rules));
    let mut c = Client::connect(p.addr);
    for (target, want) in [
        ("/a/1", "a"),
        ("/", "app"),
        ("/x", "app"),
        ("/a/2", "a"),
        ("/", "app"),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c
            .read_response(false)
            .expect("response on the same connection");
        assert_eq!((r.status, r.text().as_str()), (200, want), "{target}");
    }
}

#[test]
fn redirect_keeps_unset_parts_and_drops_default_ports() {
    let app = Backend::start("app");
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/secure/*\"]\n\
         redirect = { protocol = \"https\", port = 443, status = 301 }\n\
         [[listener.rule]]\npriority = 2\nhost = [\"old.example.com\"]\n\
         redirect = { host = \"new.example.com\", path = \"/welcome\", status = 308 }\n\
         [[listener.rule]]\npriority = 3\npath = [\"/moved\"]\n\
         redirect = { port = 8443, query = \"from=moved\", status = 302 }\n\
         [[listener.rule]]\npriority = 4\nhost = [\"bare.test\"]\n\
         redirect = { host = \"www.#{host}\", query = \"#{query}&r=1\" }\n";
    let p = Proxy::start(&rules_config(app.addr, &[], rules));
    let r = request(
        p.addr,
        "GET /secure/cart?id=7 HTTP/1.1\r\nHost: shop.example.com:80\r\n\r\n",
    );
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.com/secure/cart?id=7")
    );
    let r = request(
        p.addr,
        "GET /x?q=1 HTTP/1.1\r\nHost: old.example.com:8080\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("http://new.example.com:8080/welcome?q=1")
    );
    let r = request(p.addr, "GET /moved?a=b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://h:8443/moved?from=moved"));
    let r = request(p.addr, "GET /p?a=1 HTTP/1.1\r\nHost: bare.test\r\n\r\n");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://www.bare.test/p?a=1&r=1"));
    assert_eq!(app.traffic(), 0, "redirects never reach a backend");
}

#[test]
fn fixed_response_answers_without_a_backend_and_keeps_the_connection() {
    let app = Backend::start("app");
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/health\"]\n\
         fixed_response = { status = 200, body = \"{\\\"up\\\":true}\", content_type = \"application/json\" }\n\
         [[listener.rule]]\npriority = 2\npath = [\"/gone\"]\nfixed_response = { status = 410 }\n";
    let p = Proxy::start(&rules_config(app.addr, &[], rules));
    let mut c = Client::connect(p.addr);
    let r = c.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"up\":true}");
    // Same connection: a request with a body that has fully arrived is skipped, not misread.
    c.send(b"POST /gone HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read_response(false).expect("410");
    assert_eq!((r.status, r.text().as_str()), (410, ""));
    c.send(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true).expect("head");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(c.get("/app").text(), "app");
    assert_eq!(app.traffic(), 1);
}

#[test]
fn weighted_forward_splits_ten_thousand_requests_by_weight() {
    let app = Backend::start("app");
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/*\"]\nforward = [\
         { target_group = \"stable\", weight = 90 }, { target_group = \"canary\", weight = 10 }]\n";
    let p = Proxy::start(&rules_config(
        app.addr,
        &[("stable", stable.addr), ("canary", canary.addr)],
        rules,
    ));
    const TOTAL: usize = 10_000;
    const BATCH: usize = 200;
    let mut c = Client::connect(p.addr);
    let batch = "GET /w HTTP/1.1\r\nHost: t\r\n\r\n".repeat(BATCH);
    let mut canary_hits = 0;
    for _ in 0..TOTAL / BATCH {
        c.send(batch.as_bytes());
        for _ in 0..BATCH {
            let r = c.read_response(false).expect("pipelined response");
            match r.text().as_str() {
                "canary" => canary_hits += 1,
                "stable" => {}
                other => panic!("unexpected backend {other}"),
            }
        }
    }
    // 10% ± 1.5% (5 standard deviations of a fair 90/10 draw over 10,000).
    assert!(
        (850..=1150).contains(&canary_hits),
        "canary got {canary_hits} of {TOTAL}"
    );
    assert_eq!(app.traffic(), 0);
}

/// A WebSocket echo server (tokio-tungstenite) on its own thread.
fn ws_echo_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ws");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((sock, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
    addr
}

#[test]
fn websocket_echo_through_a_rule() {
    let app = Backend::start("app");
    let ws = ws_echo_server();
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/ws/*\"]\nforward = \"ws\"\n\
         [[listener.rule]]\npriority = 2\npath = [\"/blocked/*\"]\nfixed_response = { status = 403 }\n";
    let p = Proxy::start(&rules_config(app.addr, &[("ws", ws)], rules));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let url = format!("ws://{}/ws/chat", p.addr);
        let (mut c, resp) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("handshake in time")
        .expect("handshake through ringlb");
        assert_eq!(resp.status().as_u16(), 101);
        for i in 0..20 {
            let text = format!("message {i}");
            c.send(Message::text(text.clone())).await.expect("send");
            let back = c.next().await.expect("echo").expect("frame");
            assert_eq!(back.into_text().expect("text").as_str(), text);
        }
        let big = pattern(1 << 20);
        c.send(Message::binary(big.clone()))
            .await
            .expect("send big");
        let back = c.next().await.expect("echo").expect("frame");
        assert_eq!(back.into_data().as_ref(), &big[..]);
        c.close(None).await.expect("close");
        // An upgrade request still passes the rules: this one is answered 403, never upgraded.
        let url = format!("ws://{}/blocked/chat", p.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 403)
            }
            other => panic!("expected a 403, got {:?}", other.map(|r| r.1.status())),
        }
    });
    assert_eq!(app.traffic(), 0);
}
