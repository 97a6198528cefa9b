//! Streaming a body from one socket to another without buffering it whole, and two-way tunnels.
//!
//! Runs inside a connection task on a worker; the buffers passed in are owned by that task for the
//! duration of the call and handed back.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::http::body::{BodyError, ChunkedDecoder};
use crate::tls::MaybeTls;

/// How the end of a body is found.
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// A chunked body, validated as it passes through unchanged.
    Chunked(ChunkedDecoder),
    /// A chunked body forwarded as its data alone, to an HTTP/1.0 client that cannot read chunked
    /// framing (trailers are dropped); the client's connection then closes to end the body.
    Dechunk(ChunkedDecoder),
    /// Until the sender closes (responses only).
    UntilEof,
}

impl Framing {
    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) | Framing::Dechunk(d) => d.is_done(),
            Framing::UntilEof => false,
        }
    }

    /// Takes the prefix of `data` that belongs to the body and readies what to send for it at the
    /// front of `data`: returns (bytes of `data` consumed, bytes to send). The two differ only for
    /// `Dechunk`, which moves the chunk data forward over the framing; bytes after the consumed
    /// ones are never touched.
    pub fn forward(&mut self, data: &mut [u8]) -> Result<(usize, usize), BodyError> {
        match self {
            Framing::Dechunk(d) => {
                if d.is_done() {
                    return Ok((0, 0));
                }
                let (p, send) = d.advance_dechunked(data)?;
                Ok((p.consumed, send))
            }
            other => other.consume(data).map(|n| (n, n)),
        }
    }

    /// Takes the prefix of `data` that belongs to the body; returns its length. For `Dechunk` it
    /// only walks the framing: the bytes to send come from [`Framing::forward`].
    pub fn consume(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        match self {
            Framing::Length(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            Framing::Chunked(d) | Framing::Dechunk(d) => {
                if d.is_done() {
                    return Ok(0);
                }
                Ok(d.advance(data)?.consumed)
            }
            Framing::UntilEof => Ok(data.len()),
        }
    }
}

#[derive(Debug)]
pub enum RelayError {
    /// The source sent nothing for the read timeout.
    ReadTimeout,
    /// The source failed (reset).
    ReadFailed,
    /// The source closed before the body ended.
    Truncated,
    /// The destination failed or timed out.
    WriteFailed,
    /// The body's framing is broken or over the limit.
    Framing(BodyError),
}

/// Relays the rest of a body from `src` to `dst`, adding the bytes relayed to `moved`. Returns the
/// buffer holding any bytes read past the body's end (the start of the next message), possibly
/// empty.
pub async fn relay_body(
    src: &MaybeTls,
    dst: &MaybeTls,
    mut buf: Vec<u8>,
    framing: &mut Framing,
    read_timeout: Duration,
    write_timeout: Duration,
    moved: &Cell<u64>,
) -> Result<Vec<u8>, RelayError> {
    buf.clear();
    while !framing.is_done() {
        buf.clear();
        let n = match timeout(read_timeout, src.read(buf)).await {
            Err(_) => {
                let _ = src.shutdown(std::net::Shutdown::Both);
                return Err(RelayError::ReadTimeout);
            }
            Ok((Err(_), _)) => return Err(RelayError::ReadFailed),
            Ok((Ok(0), b)) => {
                buf = b;
                if matches!(framing, Framing::UntilEof) {
                    return Ok(buf);
                }
                return Err(RelayError::Truncated);
            }
            Ok((Ok(n), b)) => {
                buf = b;
                n
            }
        };
        let (take, send) = framing
            .forward(&mut buf[..n])
            .map_err(RelayError::Framing)?;
        match timeout(write_timeout, dst.write_range(buf, 0, send)).await {
            Ok((Ok(()), b)) => {
                buf = b;
                moved.set(moved.get() + send as u64);
            }
            Ok((Err(_), _)) => return Err(RelayError::WriteFailed),
            Err(_) => {
                let _ = dst.shutdown(std::net::Shutdown::Both);
                return Err(RelayError::WriteFailed);
            }
        }
        if take < n {
            buf.drain(..take);
            return Ok(buf);
        }
    }
    buf.clear();
    Ok(buf)
}

/// Copies both ways until each side has closed its half, or nothing moved for `idle`. Half-close is
/// passed on (EOF from one side becomes a write shutdown towards the other).
pub async fn tunnel(
    a: &MaybeTls,
    b: &MaybeTls,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
    idle: Duration,
) -> (u64, u64) {
    let last = Cell::new(Instant::now());
    let a_to_b = copy_half(a, b, buf_a, &last);
    let b_to_a = copy_half(b, a, buf_b, &last);
    let watchdog = async {
        loop {
            let deadline = last.get() + idle;
            tokio::time::sleep_until(deadline).await;
            if last.get() + idle <= Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        (x, y) = async { tokio::join!(a_to_b, b_to_a) } => (x, y),
        _ = watchdog => {
            // Pending reads are not cancelled by dropping them: shutting the sockets down ends them.
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
            (0, 0)
        }
    }
}

async fn copy_half(src: &MaybeTls, dst: &MaybeTls, mut buf: Vec<u8>, last: &Cell<Instant>) -> u64 {
    let mut total = 0u64;
    // Bytes already buffered (e.g. read together with a 101 response) go first.
    if !buf.is_empty() {
        let (res, b) = dst.write_all(buf).await;
        buf = b;
        if res.is_err() {
            let _ = src.shutdown(std::net::Shutdown::Read);
            return total;
        }
        total += buf.len() as u64;
    }
    loop {
        buf.clear();
        let (res, b) = src.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => {
                let _ = dst.shutdown(std::net::Shutdown::Write);
                return total;
            }
            Ok(n) => {
                last.set(Instant::now());
                let (res, b) = dst.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    let _ = src.shutdown(std::net::Shutdown::Read);
                    return total;
                }
                total += n as u64;
            }
        }
    }
}
