//! Streaming a body from one socket to another without buffering it whole, and two-way tunnels.
//!
//! Runs inside a connection task on a worker; the buffers passed in are owned by that task for the
//! duration of the call and handed back.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

use crate::http::body::{BodyError, ChunkedDecoder};
use crate::io::{bufs, deadline, Stream};
use crate::tls::MaybeTls;
use std::os::fd::AsRawFd;

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
    /// Until the sender closes, sent chunked (each read one chunk, the close the last chunk), so
    /// an HTTP/1.1 client keeps its connection when an HTTP/1.0 target ends a body by closing.
    Rechunk,
}

/// Room left before a re-chunked read for its chunk-size line (16 hex digits and CRLF).
const CHUNK_HEAD: usize = 18;

/// Appends `data` to `out` as one chunk (nothing for empty data: that would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let digits = hex_len(data.len(), &mut hex);
    out.extend_from_slice(&hex[16 - digits..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in hex at the end of `hex`; returns how many digits it took.
fn hex_len(mut n: usize, hex: &mut [u8; 16]) -> usize {
    let mut i = 16;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return 16 - i;
        }
    }
}

impl Framing {
    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) | Framing::Dechunk(d) => d.is_done(),
            Framing::UntilEof | Framing::Rechunk => false,
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
                let (p, send) = d.advance_dechunked(data, None)?;
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
            Framing::UntilEof | Framing::Rechunk => Ok(data.len()),
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
    if matches!(framing, Framing::Rechunk) {
        return rechunk(src, dst, buf, read_timeout, write_timeout, moved).await;
    }
    while !framing.is_done() {
        buf.clear();
        let n = match read_within(src, buf, read_timeout).await {
            Err(e) => return Err(e),
            Ok((0, b)) => {
                buf = b;
                if matches!(framing, Framing::UntilEof) {
                    return Ok(buf);
                }
                return Err(RelayError::Truncated);
            }
            Ok((n, b)) => {
                buf = b;
                n
            }
        };
        let (take, send) = framing
            .forward(&mut buf[..n])
            .map_err(RelayError::Framing)?;
        buf = write_within(dst, buf, 0, send, write_timeout).await?;
        moved.set(moved.get() + send as u64);
        if take < n {
            buf.drain(..take);
            return Ok(buf);
        }
    }
    buf.clear();
    Ok(buf)
}

/// Reads from `src` within `limit` (past that the watchdog shuts down its receiving side, so a
/// client whose body stalls can still be answered 408): the bytes read (0 at the end of the
/// stream) and the buffer.
async fn read_within(
    src: &MaybeTls,
    buf: Vec<u8>,
    limit: Duration,
) -> Result<(usize, Vec<u8>), RelayError> {
    let watch = deadline::arm_read(src.as_raw_fd(), limit);
    let (res, buf) = src.read(buf).await;
    if watch.expired() {
        return Err(RelayError::ReadTimeout);
    }
    match res {
        Ok(n) => Ok((n, buf)),
        Err(_) => Err(RelayError::ReadFailed),
    }
}

/// Writes `buf[start..end]` to `dst` within `limit`; the buffer comes back.
async fn write_within(
    dst: &MaybeTls,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
) -> Result<Vec<u8>, RelayError> {
    let watch = deadline::arm(dst.as_raw_fd(), limit);
    match dst.write_range(buf, start, end).await {
        (Ok(()), buf) if !watch.expired() => Ok(buf),
        _ => Err(RelayError::WriteFailed),
    }
}

/// Relays a close-delimited body as chunks: each read becomes one chunk (its size line written
/// into room kept before the data, so a chunk goes out in one write), and the sender's close
/// becomes the last chunk.
async fn rechunk(
    src: &MaybeTls,
    dst: &MaybeTls,
    mut buf: Vec<u8>,
    read_timeout: Duration,
    write_timeout: Duration,
    moved: &Cell<u64>,
) -> Result<Vec<u8>, RelayError> {
    loop {
        buf.clear();
        buf.resize(CHUNK_HEAD, 0);
        let (n, b) = read_within(src, buf, read_timeout).await?;
        buf = b;
        let start = if n == 0 {
            buf.clear();
            buf.extend_from_slice(b"0\r\n\r\n");
            0
        } else {
            let mut hex = [0u8; 16];
            let digits = hex_len(n, &mut hex);
            let start = CHUNK_HEAD - digits - 2;
            buf[start..start + digits].copy_from_slice(&hex[16 - digits..]);
            buf[CHUNK_HEAD - 2..CHUNK_HEAD].copy_from_slice(b"\r\n");
            buf.extend_from_slice(b"\r\n");
            start
        };
        let end = buf.len();
        buf = write_within(dst, buf, start, end, write_timeout).await?;
        moved.set(moved.get() + (end - start) as u64);
        if n == 0 {
            buf.clear();
            return Ok(buf);
        }
    }
}

/// A byte stream a tunnel copies between: a plain [`Stream`], or a [`MaybeTls`]. A tunnel
/// between two plain streams is built for `Stream` alone, so its state is a fraction of one that
/// may have to drive TLS. Everything runs on one worker thread: no `Send` bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Duplex {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>);
    /// Reads what is there after readiness was reported: `None` (the buffer back) when the
    /// report was stale (epoll readiness can be), so the caller waits again without a buffer.
    async fn read_ready(&self, buf: Vec<u8>) -> Result<(std::io::Result<usize>, Vec<u8>), Vec<u8>>;
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>);
    async fn readable(&self) -> std::io::Result<()>;
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()>;
}

impl Duplex for Stream {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        Stream::read(self, buf).await
    }
    async fn read_ready(&self, buf: Vec<u8>) -> Result<(std::io::Result<usize>, Vec<u8>), Vec<u8>> {
        Stream::read_ready(self, buf).await
    }
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        Stream::write_all(self, buf).await
    }
    async fn readable(&self) -> std::io::Result<()> {
        Stream::readable(self).await
    }
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        Stream::shutdown(self, how)
    }
}

impl Duplex for MaybeTls {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        MaybeTls::read(self, buf).await
    }
    async fn read_ready(&self, buf: Vec<u8>) -> Result<(std::io::Result<usize>, Vec<u8>), Vec<u8>> {
        match self {
            MaybeTls::Plain(s) => s.read_ready(buf).await,
            // A TLS read may wait for the rest of a record; readiness said one has begun.
            MaybeTls::Tls(_) => Ok(self.read(buf).await),
        }
    }
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        MaybeTls::write_all(self, buf).await
    }
    async fn readable(&self) -> std::io::Result<()> {
        MaybeTls::readable(self).await
    }
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        MaybeTls::shutdown(self, how)
    }
}

/// Copies both ways until each side has closed its half, or nothing moved for `idle`. Half-close is
/// passed on (EOF from one side becomes a write shutdown towards the other). `pending` goes from
/// `a` to `b` first. A direction holds a buffer only while bytes move: it waits for readiness
/// without one, then moves a burst (reading at once again only after a read that filled its
/// buffer), so an idle tunnel costs no buffer and little state.
pub async fn tunnel<A: Duplex, B: Duplex>(
    a: &A,
    b: &B,
    pending: Vec<u8>,
    idle: Duration,
) -> (u64, u64) {
    let last = Cell::new(Instant::now());
    let a_to_b = copy_half(a, b, pending, &last);
    let b_to_a = copy_half(b, a, Vec::new(), &last);
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

async fn copy_half<S: Duplex, D: Duplex>(
    src: &S,
    dst: &D,
    pending: Vec<u8>,
    last: &Cell<Instant>,
) -> u64 {
    let mut total = 0u64;
    // Bytes already read (the start of the stream) go first (boxed, as a burst is).
    if !pending.is_empty() {
        let n = pending.len() as u64;
        let (res, b) = Box::pin(dst.write_all(pending)).await;
        bufs::give(b);
        if res.is_err() {
            let _ = src.shutdown(std::net::Shutdown::Read);
            return total;
        }
        total += n;
    }
    loop {
        // Wait without a buffer, and with nothing but this wait in the tunnel's state.
        if src.readable().await.is_err() {
            let _ = dst.shutdown(std::net::Shutdown::Write);
            return total;
        }
        // Boxed: the read and write states are large next to an idle tunnel's, and are needed
        // only while bytes move (one allocation per burst, not per read).
        match Box::pin(burst(src, dst, last)).await {
            Burst::Moved(n) => total += n,
            Burst::Ended(n) => return total + n,
        }
    }
}

/// What one burst of a tunnel direction did (here and in the tcp listeners' splice tunnel).
pub enum Burst {
    /// Bytes moved; the source has no more for now.
    Moved(u64),
    /// Bytes moved, then this direction ended (EOF, or either side failed): shut down as due.
    Ended(u64),
}

/// Moves what the source has: reads (into a buffer from the free list) and writes until a read
/// does not fill the buffer.
async fn burst<S: Duplex, D: Duplex>(src: &S, dst: &D, last: &Cell<Instant>) -> Burst {
    let mut moved = 0u64;
    loop {
        let (res, buf) = match src.read_ready(bufs::take_large()).await {
            Ok(read) => read,
            Err(buf) => {
                // Nothing after all: wait again, without the buffer.
                bufs::give(buf);
                return Burst::Moved(moved);
            }
        };
        let n = match res {
            Ok(0) | Err(_) => {
                bufs::give(buf);
                let _ = dst.shutdown(std::net::Shutdown::Write);
                return Burst::Ended(moved);
            }
            Ok(n) => n,
        };
        let full = n == buf.capacity();
        last.set(Instant::now());
        let (res, buf) = dst.write_all(buf).await;
        bufs::give(buf);
        if res.is_err() {
            let _ = src.shutdown(std::net::Shutdown::Read);
            return Burst::Ended(moved);
        }
        moved += n as u64;
        if !full {
            return Burst::Moved(moved);
        }
    }
}
