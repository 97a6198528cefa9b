//! The seam between the `h2` crate and ringlb's I/O: [`H2Io`] gives h2 the poll-based
//! `AsyncRead`/`AsyncWrite` it needs on top of a completion-based client connection (`MaybeTls`
//! over io_uring or epoll), and meters the frames the client sends ([`FrameMeter`]).
//!
//! Runs inside one HTTP/2 connection's driver task on the worker that accepted it; the adapter,
//! its buffers and its in-flight operations belong to that task.
//!
//! Reads: one owned-buffer read is in flight at a time, as a boxed future that keeps the socket
//! alive (`Rc`). A read that waits long parks (`io::park`): its buffer goes back to the free
//! list and the wait goes on without one, so an idle HTTP/2 connection holds no read buffer.
//! Writes: h2's bytes are staged in one buffer, written by one in-flight `write_all` at a time
//! (on flush, or when the stage is full); while one is in flight the next batch stages.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::{bufs, ParkRead};
use crate::tls::MaybeTls;

/// Most bytes staged for writing; beyond it `poll_write` waits for the write in flight.
pub const WRITE_STAGE: usize = 64 * 1024;
/// The client connection preface (RFC 9113 §3.4), which the meter skips.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frames a client may send that cost work and carry no request (PING, SETTINGS, PRIORITY,
/// RST_STREAM, and empty DATA/HEADERS/CONTINUATION without END_STREAM): this many at once...
pub const FLOOD_BURST: u32 = 1000;
/// ...and this many more per second. Beyond that the connection is a flood (CVE-2019-9512,
/// -9515, -9518, rapid reset CVE-2023-44487) and gets GOAWAY ENHANCE_YOUR_CALM.
pub const FLOOD_RATE: u32 = 1000;

type ReadFut = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type WriteFut = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// h2's transport over one client connection.
pub struct H2Io {
    conn: Rc<MaybeTls>,
    /// Bytes read and not yet handed to h2: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    reading: Option<ReadFut>,
    /// Bytes h2 wrote, not yet handed to a write.
    stage: Vec<u8>,
    writing: Option<WriteFut>,
    /// Client connections only: a target's frames are not metered.
    meter: Option<FrameMeter>,
    /// Set when the meter found a flood; the driver then ends the connection.
    flood: Rc<Cell<bool>>,
    /// Client connections only: set while the read waits parked (quiet past
    /// `io::park::PARK_AFTER`, no buffer held), cleared when bytes come; the driver then gives
    /// h2's buffers back too.
    parked: Option<Rc<Cell<bool>>>,
}

impl H2Io {
    /// `first`: bytes already read from the client (the preface, for h2c), handed to h2 first.
    pub fn new(
        conn: Rc<MaybeTls>,
        first: Vec<u8>,
        flood: Rc<Cell<bool>>,
        parked: Rc<Cell<bool>>,
    ) -> H2Io {
        let mut meter = FrameMeter::new();
        if meter.scan(&first) {
            flood.set(true);
        }
        H2Io {
            conn,
            rbuf: first,
            rpos: 0,
            reading: None,
            stage: Vec::new(),
            writing: None,
            meter: Some(meter),
            flood,
            parked: Some(parked),
        }
    }

    /// The transport of an HTTP/2 connection to a target (`http2::upstream`): nothing read
    /// yet, no frame meter.
    pub fn upstream(conn: Rc<MaybeTls>) -> H2Io {
        H2Io {
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            reading: None,
            stage: Vec::new(),
            writing: None,
            meter: None,
            flood: Rc::new(Cell::new(false)),
            parked: None,
        }
    }

    fn start_read(&mut self) -> ReadFut {
        let conn = self.conn.clone();
        let parked = self.parked.clone();
        let buf = if self.rbuf.capacity() > 0 {
            let mut b = std::mem::take(&mut self.rbuf);
            b.clear();
            b
        } else {
            bufs::take_small()
        };
        Box::pin(async move {
            let mut buf = buf;
            loop {
                match conn.read_or_park(buf).await {
                    ParkRead::Read(res, b) => {
                        if let Some(p) = &parked {
                            p.set(false);
                        }
                        return (res, b);
                    }
                    ParkRead::Parked(b) => {
                        // Quiet: wait holding no buffer. This poll is the driver's (the read
                        // woke it), and it sees the flag when h2 returns.
                        bufs::give(b);
                        if let Some(p) = &parked {
                            p.set(true);
                        }
                        if let Err(e) = conn.readable().await {
                            if let Some(p) = &parked {
                                p.set(false);
                            }
                            return (Err(e), Vec::new());
                        }
                        buf = bufs::take_small();
                    }
                }
            }
        })
    }

    /// Polls the write in flight, if any; its buffer goes back to the free list (an idle
    /// connection holds no write buffer either).
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(fut) = self.writing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (res, buf) = std::task::ready!(fut.as_mut().poll(cx));
        self.writing = None;
        bufs::give(buf);
        Poll::Ready(res)
    }

    fn start_write(&mut self) {
        let conn = self.conn.clone();
        let buf = std::mem::take(&mut self.stage);
        // The read may be pending meanwhile: the parking lot must not withdraw it by descriptor
        // while this write is in flight.
        let mark = crate::io::park::writing(std::os::fd::AsRawFd::as_raw_fd(&*conn));
        self.writing = Some(Box::pin(async move {
            let res = conn.write_all(buf).await;
            drop(mark);
            res
        }));
    }
}

impl Drop for H2Io {
    /// The connection is over: its buffers go back to the free lists.
    fn drop(&mut self) {
        bufs::give(std::mem::take(&mut self.rbuf));
        bufs::give(std::mem::take(&mut self.stage));
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flood.get() {
            // Nothing more is read from a flooding client; the driver closes the connection.
            return Poll::Pending;
        }
        loop {
            if this.rpos < this.rbuf.len() {
                let n = out.remaining().min(this.rbuf.len() - this.rpos);
                out.put_slice(&this.rbuf[this.rpos..this.rpos + n]);
                this.rpos += n;
                if this.rpos == this.rbuf.len() {
                    // All handed over: an idle connection keeps no read buffer.
                    this.rpos = 0;
                    bufs::give(std::mem::take(&mut this.rbuf));
                }
                return Poll::Ready(Ok(()));
            }
            let fut = match this.reading.as_mut() {
                Some(f) => f,
                None => {
                    let f = this.start_read();
                    this.reading.insert(f)
                }
            };
            let (res, buf) = std::task::ready!(fut.as_mut().poll(cx));
            this.reading = None;
            match res {
                Ok(0) => {
                    bufs::give(buf);
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    this.rbuf = buf;
                    this.rpos = 0;
                    if this.meter.as_mut().is_some_and(|m| m.scan(&this.rbuf[..n])) {
                        this.flood.set(true);
                        // Wake the driver, which sees the flag (this read gives h2 nothing).
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Err(e) => {
                    bufs::give(buf);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
            return Poll::Ready(Err(e));
        }
        if this.stage.len() >= WRITE_STAGE {
            if this.writing.is_some() {
                return Poll::Pending;
            }
            this.start_write();
            // Registers the waker on the new write.
            if let Poll::Ready(Err(e)) = this.poll_writing(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if this.stage.capacity() == 0 {
            this.stage = bufs::take_large();
        }
        let n = data.len().min(WRITE_STAGE.saturating_sub(this.stage.len()));
        this.stage.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            std::task::ready!(this.poll_writing(cx))?;
            if this.stage.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.start_write();
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Walks the frame headers of what a client sends and charges the frames that cost work but
/// carry no request against a budget that refills with time (a clock is read only when the
/// budget runs out). Framing errors are h2's to find; the meter only counts.
pub struct FrameMeter {
    /// Preface bytes still to skip.
    preface_left: usize,
    /// Bytes of the current frame header seen so far.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    budget: i64,
    /// When the budget was last refilled (the connection's start at first).
    refilled: Instant,
}

impl Default for FrameMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameMeter {
    pub fn new() -> FrameMeter {
        FrameMeter {
            preface_left: PREFACE.len(),
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            budget: i64::from(FLOOD_BURST),
            refilled: Instant::now(),
        }
    }

    /// Scans the next bytes from the client; true when it is flooding.
    pub fn scan(&mut self, mut data: &[u8]) -> bool {
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        data = &data[skip..];
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len < 9 {
                break;
            }
            self.header_len = 0;
            let h = self.header;
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            self.payload_left = len;
            if Self::costly(h[3], h[4], len) && self.charge() {
                return true;
            }
        }
        false
    }

    /// Frames that cost the server work without carrying a request.
    fn costly(kind: u8, flags: u8, len: usize) -> bool {
        const END_STREAM: u8 = 0x1;
        const PADDED: u8 = 0x8;
        // A padded frame this short may carry padding alone (CVE-2019-9518).
        let empty = len == 0 || (flags & PADDED != 0 && len <= 256);
        match kind {
            // DATA, HEADERS, CONTINUATION: only when empty and not ending the stream.
            0x0 | 0x1 | 0x9 => empty && flags & END_STREAM == 0,
            // PRIORITY, RST_STREAM, SETTINGS, PING.
            0x2 | 0x3 | 0x4 | 0x6 => true,
            _ => false,
        }
    }

    /// Takes one from the budget; true when it is spent even after refilling.
    fn charge(&mut self) -> bool {
        self.budget -= 1;
        if self.budget >= 0 {
            return false;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled);
        if elapsed >= Duration::from_millis(10) {
            let add = (elapsed.as_secs_f64() * f64::from(FLOOD_RATE)) as i64;
            self.budget = (self.budget + add).min(i64::from(FLOOD_BURST));
            self.refilled = now;
        }
        self.budget < 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn requests_and_data_never_count_as_a_flood() {
        let mut m = FrameMeter::new();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..(FLOOD_BURST * 3) {
            bytes.extend(frame(0x1, 0x5, b"headers"));
            bytes.extend(frame(0x0, 0x0, &[7; 100]));
            bytes.extend(frame(0x0, 0x1, b""));
        }
        // Any split into reads gives the same verdict.
        for piece in bytes.chunks(7) {
            assert!(!m.scan(piece));
        }
    }

    #[test]
    fn a_burst_of_pings_beyond_the_budget_is_a_flood() {
        let mut m = FrameMeter::new();
        assert!(!m.scan(PREFACE));
        let ping = frame(0x6, 0, &[0; 8]);
        for _ in 0..FLOOD_BURST {
            assert!(!m.scan(&ping));
        }
        let mut flooded = false;
        for _ in 0..100 {
            flooded |= m.scan(&ping);
        }
        assert!(flooded);
    }

    #[test]
    fn the_budget_refills_with_time() {
        let mut m = FrameMeter::new();
        assert!(!m.scan(PREFACE));
        let ping = frame(0x6, 0, &[0; 8]);
        for _ in 0..FLOOD_BURST - 1 {
            assert!(!m.scan(&ping));
        }
        // Two seconds later (as if): a long-lived connection's keepalive pings are no flood.
        m.refilled -= Duration::from_secs(2);
        for _ in 0..FLOOD_BURST {
            assert!(!m.scan(&ping), "the budget refilled");
        }
    }

    #[test]
    fn padding_only_data_frames_count() {
        let mut m = FrameMeter::new();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..(FLOOD_BURST + 10) {
            bytes.extend(frame(0x0, 0x8, &[200; 201]));
        }
        assert!(m.scan(&bytes));
    }

    #[test]
    fn empty_data_frames_and_resets_count() {
        let mut m = FrameMeter::new();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..(FLOOD_BURST / 2 + 10) {
            bytes.extend(frame(0x0, 0, b""));
            bytes.extend(frame(0x3, 0, &[0, 0, 0, 8]));
        }
        assert!(m.scan(&bytes));
    }
}
