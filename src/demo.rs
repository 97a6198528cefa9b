//! `ringlb demo`: the tutorial in one command — two built-in backends on loopback and a listener
//! in front of them, round robin on one worker (so successive requests alternate, as it says).
//!
//! The backends run on one extra thread with a small tokio runtime (they are a demo, not the data
//! path); the proxy itself runs exactly as `ringlb run` does.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head the demo backends accept.
const DEMO_MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo backends: {0}")]
    Backends(std::io::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("{0}")]
    Start(#[from] crate::runtime::StartError),
}

/// Starts the backends, prints what to try, and serves until SIGTERM/SIGINT.
pub fn run(port: u16) -> Result<(), DemoError> {
    let backends = start_backends(2).map_err(DemoError::Backends)?;
    let targets: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[runtime]\nworkers = 1\ndrain_timeout = \"2s\"\n\n\
         [[listener]]\nname = \"demo\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"http\"\ntarget_group = \"demo\"\n\n\
         [[target_group]]\nname = \"demo\"\nalgorithm = \"round_robin\"\ntargets = [{}]\n",
        targets.join(", ")
    );
    let config = crate::config::Config::parse(&text, Path::new("demo.toml"))?;
    println!("ringlb demo");
    println!(
        "  backend 1: http://{}  (answers \"hello from backend 1\")",
        backends[0]
    );
    println!(
        "  backend 2: http://{}  (answers \"hello from backend 2\")",
        backends[1]
    );
    println!("  listener : http://127.0.0.1:{port}  → round robin over both (one worker)\n");
    println!("Try:");
    println!("  curl -s http://127.0.0.1:{port}/    # run it twice: backend 1, then backend 2");
    println!("  (with more workers, each keeps its own round-robin cursor: the order interleaves)");
    println!("  for i in 1 2 3 4; do curl -s http://127.0.0.1:{port}/; done");
    println!("\nThe config this demo runs:\n\n{text}\nCtrl-C to stop.");
    crate::runtime::run(config, None)?;
    Ok(())
}

/// Starts `n` tiny HTTP backends on loopback ephemeral ports; backend i answers
/// "hello from backend i". Returns their addresses.
pub fn start_backends(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringlb-demo".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (i, l) in listeners.into_iter().enumerate() {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        continue;
                    };
                    tasks.push(tokio::spawn(serve_backend(
                        l,
                        format!("hello from backend {}\n", i + 1),
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })?;
    Ok(addrs)
}

async fn serve_backend(l: tokio::net::TcpListener, body: String) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let _ = demo_connection(s, body.as_bytes()).await;
        });
    }
}

/// Keep-alive request loop: reads a head (and discards a Content-Length body), answers `body`.
async fn demo_connection(mut s: tokio::net::TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > DEMO_MAX_HEAD || s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let close = head.contains("connection: close");
        while buf.len() < end + len {
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..end + len);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        s.write_all(resp.as_bytes()).await?;
        s.write_all(body).await?;
        if close {
            return Ok(());
        }
    }
}
