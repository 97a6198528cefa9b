//! Raw HTTP/2 for tests that must send what no well-behaved client library would: frames
//! written byte by byte (RFC 9113 §4), header blocks in the plainest HPACK (RFC 7541: literal
//! fields without indexing, no Huffman), and a reader that waits, with a deadline, for the
//! frame, reset, GOAWAY or close a test expects. h2c by prior knowledge over a plain socket.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload too long");
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    frame(DATA, flags, stream, bytes)
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits from `first` (RFC 7541 §5.1).
pub fn int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal without Huffman coding.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// "Literal header field without indexing — new name" (0x00).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    string(out, name.as_bytes());
    string(out, value.as_bytes());
}

/// A header block of literal fields, in order.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        literal(&mut out, n, v);
    }
    out
}

/// The pseudo-header fields of a request (authority "test").
pub fn request<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "test"),
        (":path", path),
    ]
}

/// A GET that ends the stream with its HEADERS.
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &block(&request("GET", path)),
    )
}

/// A frame as the server sent it.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of RST_STREAM or GOAWAY.
    pub fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `:status` of a HEADERS frame, when its first field is one this decoder knows: a static
    /// table entry, or a literal with the static name `:status` (plain or Huffman digits).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let b = &self.payload;
        let mut i = 0;
        while *b.get(i)? & 0xe0 == 0x20 {
            read_int(b, &mut i, 5)?; // dynamic table size update
        }
        if b[i] & 0x80 != 0 {
            let idx = read_int(b, &mut i, 7)?;
            let statuses = [200, 204, 206, 304, 400, 404, 500];
            return idx.checked_sub(8).and_then(|k| statuses.get(k)).copied();
        }
        let name = if b[i] & 0xc0 == 0x40 {
            read_int(b, &mut i, 6)?
        } else {
            read_int(b, &mut i, 4)?
        };
        if name != 8 {
            return None;
        }
        let huffman = *b.get(i)? & 0x80 != 0;
        let len = read_int(b, &mut i, 7)?;
        let value = b.get(i..i + len)?;
        let text = if huffman {
            huffman_digits(value)
        } else {
            String::from_utf8_lossy(value).into_owned()
        };
        text.parse().ok()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            DATA => "DATA",
            HEADERS => "HEADERS",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PING => "PING",
            GOAWAY => "GOAWAY",
            0x8 => "WINDOW_UPDATE",
            _ => "frame",
        };
        write!(
            f,
            "{name}(type {:#x}, stream {}, flags {:#x}, {} bytes",
            self.kind,
            self.stream,
            self.flags,
            self.payload.len()
        )?;
        if let Some(s) = self.status() {
            write!(f, ", :status {s}")?;
        }
        if let Some(c) = self.code() {
            write!(f, ", code {c:#x}")?;
        }
        if self.kind == GOAWAY && self.payload.len() > 8 {
            write!(f, ", {:?}", String::from_utf8_lossy(&self.payload[8..]))?;
        }
        write!(f, ")")
    }
}

fn read_int(b: &[u8], i: &mut usize, n: u8) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*b.get(*i)?) & max;
    *i += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*i)?;
        *i += 1;
        v += usize::from(c & 0x7f) << shift;
        shift += 7;
        if c & 0x80 == 0 || shift > 28 {
            return Some(v);
        }
    }
}

/// Huffman-coded decimal digits (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' 6 bits).
fn huffman_digits(bytes: &[u8]) -> String {
    let bit = |k: usize| (bytes[k / 8] >> (7 - k % 8)) & 1;
    let total = bytes.len() * 8;
    let (mut k, mut out) = (0, String::new());
    while k + 5 <= total {
        let v5 = (0..5).fold(0u8, |a, j| (a << 1) | bit(k + j));
        if v5 <= 2 {
            out.push(char::from(b'0' + v5));
            k += 5;
        } else if k + 6 <= total && (25..=31).contains(&((v5 << 1) | bit(k + 5))) {
            out.push(char::from(b'0' + ((v5 << 1) | bit(k + 5)) - 22));
            k += 6;
        } else {
            break; // padding (all ones) or a symbol this decoder does not know
        }
    }
    out
}

/// How a wait ended without the frame it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// EOF or an error (reset) reading: the server closed the connection.
    Closed(String),
    TimedOut,
}

/// What became of a stream (or, for stream 0, of the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed(String),
    TimedOut,
}

/// A client connection speaking raw frames.
pub struct Conn {
    pub sock: TcpStream,
    buf: Vec<u8>,
    /// The server's SETTINGS (its first frame).
    pub server_settings: Vec<(u16, u32)>,
    /// Every frame read, for failure messages.
    pub log: Vec<String>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::open_with(addr, &[])
    }

    /// Connects, sends the preface and SETTINGS (`pairs`), reads the server's SETTINGS and acks.
    pub fn open_with(addr: SocketAddr, pairs: &[(u16, u32)]) -> Conn {
        let sock = TcpStream::connect(addr).expect("connect to ringlb");
        sock.set_nodelay(true).expect("nodelay");
        sock.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        let mut c = Conn {
            sock,
            buf: Vec::new(),
            server_settings: Vec::new(),
            log: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(pairs));
        c.send(&hello);
        let first = c.next(Instant::now() + Duration::from_secs(5));
        let f = first.unwrap_or_else(|e| panic!("no SETTINGS from the server: {e:?}"));
        assert!(
            f.kind == SETTINGS && f.flags & ACK == 0,
            "first frame {f:?}"
        );
        c.server_settings = f
            .payload
            .chunks_exact(6)
            .map(|p| {
                let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                (u16::from_be_bytes([p[0], p[1]]), v)
            })
            .collect();
        c.send(&frame(SETTINGS, ACK, 0, &[]));
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to ringlb");
    }

    /// The next frame, or why none came before `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<Frame, End> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let h: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let f = Frame {
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                        payload: h[9..].to_vec(),
                    };
                    self.log.push(format!("{f:?}"));
                    return Ok(f);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::TimedOut);
            }
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            let mut tmp = [0u8; 65536];
            match self.sock.read(&mut tmp) {
                Ok(0) => return Err(End::Closed("EOF".into())),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(End::TimedOut)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Closed(format!("{:?}", e.kind()))),
            }
        }
    }

    /// The first decisive event for `stream` within `within`: its response status, its reset,
    /// GOAWAY or close. Stream 0 waits for the connection's end only.
    pub fn fate(&mut self, stream: u32, within: Duration) -> Fate {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline) {
                Err(End::Closed(why)) => return Fate::Closed(why),
                Err(End::TimedOut) => return Fate::TimedOut,
                Ok(f) if f.kind == GOAWAY => return Fate::GoAway(f.code().unwrap_or(u32::MAX)),
                Ok(f) if f.stream != stream || stream == 0 => {}
                Ok(f) if f.kind == RST_STREAM => return Fate::Reset(f.code().unwrap_or(0)),
                Ok(f) => match f.status() {
                    Some(s) if s >= 200 => return Fate::Status(s),
                    _ => {}
                },
            }
        }
    }

    /// A whole response on `stream`: its status and body, which must end with END_STREAM.
    pub fn response(&mut self, stream: u32, within: Duration) -> (u16, Vec<u8>) {
        let deadline = Instant::now() + within;
        let (mut status, mut body) = (None, Vec::new());
        loop {
            let f = match self.next(deadline) {
                Ok(f) => f,
                Err(e) => panic!("stream {stream}: {e:?}; frames: {:?}", self.log),
            };
            let mine = f.stream == stream;
            assert!(
                f.kind != GOAWAY && !(mine && f.kind == RST_STREAM),
                "stream {stream}: {f:?}; frames: {:?}",
                self.log
            );
            if mine && f.kind == HEADERS && status.is_none() {
                status = f.status();
                assert!(status.is_some(), "no :status read in {f:?}");
            } else if mine && f.kind == DATA {
                body.extend_from_slice(&f.payload);
            }
            if mine && f.flags & END_STREAM != 0 && f.kind != RST_STREAM {
                return (status.unwrap_or(0), body);
            }
        }
    }

    /// Whether the server closes the connection within `within` (frames before are skipped).
    pub fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline) {
                Ok(_) => {}
                Err(End::Closed(_)) => return true,
                Err(End::TimedOut) => return false,
            }
        }
    }
}

/// Writes `chunk` over and over on a clone of `sock` (at most `max` bytes in all) from another
/// thread, until a write fails (the server closed, or stopped reading for 5 s). Joins to the
/// number of bytes written.
pub fn flood(sock: &TcpStream, chunk: Vec<u8>, max: usize) -> std::thread::JoinHandle<usize> {
    let mut s = sock.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        let mut sent = 0;
        while sent < max {
            let n = chunk.len().min(max - sent);
            if s.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
        }
        sent
    })
}
