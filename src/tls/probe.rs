//! A one-shot TLS exchange for health checks of https target groups: handshake, send a request,
//! read the start of the answer.
//!
//! Runs on the health thread (plain tokio, tasks must be `Send`), so it owns its rustls client
//! connection outright instead of sharing it like [`super::TlsStream`]; each probe owns its state.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Ciphertext read at once by a probe.
const PROBE_READ: usize = 16 * 1024;

/// Handshakes with `name`, writes `request`, and appends plaintext to `out` until `done(out)`
/// says the answer is complete or `limit` bytes arrived. `None`: any failure or early close.
pub async fn exchange(
    mut s: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    request: &[u8],
    limit: usize,
    mut done: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    conn.writer().write_all(request).ok()?;
    let mut out = Vec::new();
    let mut cipher = Vec::with_capacity(PROBE_READ);
    loop {
        while conn.wants_write() {
            let mut w = Vec::new();
            conn.write_tls(&mut w).ok()?;
            s.write_all(&w).await.ok()?;
        }
        // Plaintext decrypted so far.
        loop {
            let mut r = conn.reader();
            match r.fill_buf() {
                Ok([]) => return done(&out).then_some(out),
                Ok(data) => {
                    let len = data.len();
                    let n = len.min(limit.saturating_sub(out.len()));
                    out.extend_from_slice(&data[..n]);
                    r.consume(len);
                    if done(&out) || out.len() >= limit {
                        return Some(out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return done(&out).then_some(out),
            }
        }
        cipher.clear();
        if s.read_buf(&mut cipher).await.ok()? == 0 {
            return None;
        }
        let mut rest = cipher.as_slice();
        while !rest.is_empty() {
            if conn.read_tls(&mut rest).ok()? == 0 {
                return None;
            }
            conn.process_new_packets().ok()?;
        }
    }
}
