//! A TLS connection driven over the owned-buffer I/O seam: ciphertext moves with the [`Stream`]'s
//! `read`/`write_all`, and rustls (`read_tls`/`process_new_packets`/`write_tls`) turns it into
//! plaintext in the caller's buffers. No AsyncRead adapter, so it serves io_uring and epoll alike.
//!
//! Runs inside one connection task on a worker. The rustls state sits in a `RefCell` that is
//! never borrowed across an await, so a tunnel may read and write the same stream concurrently;
//! socket writes are serialised by a task-local mutex so records leave in order.
//!
//! Ciphertext buffers come from the thread's free lists (`io::bufs`) and go back as soon as they
//! hold nothing: an idle TLS connection keeps only rustls's own state.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, Connection, ServerConfig};

use crate::io::{bufs, ParkRead, Stream};

/// Ciphertext read from the socket at once.
pub const CIPHER_BUF: usize = 32 * 1024;
/// Time allowed to deliver the alert after a failed handshake.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed handshake's alert: how long, and how many bytes, ringlb reads and drops before
/// closing, so the close is not a reset that destroys the alert on its way.
pub const ALERT_LINGER: Duration = Duration::from_millis(500);
pub const ALERT_LINGER_BYTES: usize = 64 * 1024;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection during the TLS handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake I/O error: {0}")]
    Io(io::Error),
}

/// What one [`TlsStream::fill`] did.
enum Fill {
    /// rustls took ciphertext (there may be plaintext, or a handshake step, to act on).
    Progress,
    /// The peer closed.
    Eof,
    /// Nothing came by the park time; nothing is buffered.
    Parked,
}

struct State {
    conn: Connection,
    /// Ciphertext from the socket; `rpos..` not yet taken by rustls. Without capacity while a
    /// read is out or nothing is buffered (given back to the free list).
    rbuf: Vec<u8>,
    rpos: usize,
    /// The peer closed its side (EOF seen by rustls).
    eof: bool,
}

/// A TLS connection (server or client side) over a [`Stream`].
pub struct TlsStream {
    io: Stream,
    st: RefCell<State>,
    /// Held by whoever writes ciphertext to the socket.
    wlock: tokio::sync::Mutex<()>,
    /// Server side with mutual TLS: the verified client certificate's identity, made once after
    /// the handshake (a resumed session brings the certificate it was made with).
    client_cert: Option<Arc<super::ClientCert>>,
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    fn new(io: Stream, conn: Connection) -> TlsStream {
        TlsStream {
            io,
            st: RefCell::new(State {
                conn,
                rbuf: Vec::new(),
                rpos: 0,
                eof: false,
            }),
            wlock: tokio::sync::Mutex::new(()),
            client_cert: None,
        }
    }

    /// Runs the server side of a handshake within `limit`. On failure the alert rustls queued is
    /// sent (bounded by [`ALERT_TIMEOUT`]) and the socket is shut down.
    pub async fn accept(
        io: Stream,
        config: Arc<ServerConfig>,
        limit: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        TlsStream::accept_with(io, config, limit, Vec::new()).await
    }

    /// As `accept`, with ciphertext already read from the socket (bytes that followed a PROXY
    /// protocol header in the same packet).
    pub async fn accept_with(
        io: Stream,
        config: Arc<ServerConfig>,
        limit: Duration,
        initial: Vec<u8>,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = rustls::ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        let s = TlsStream::new(io, Connection::Server(conn));
        if !initial.is_empty() {
            let mut st = s.st.borrow_mut();
            st.rbuf.clear();
            st.rbuf.extend_from_slice(&initial);
            st.rpos = 0;
        }
        s.handshake(limit).await?;
        let mut s = s;
        let (cert, presented) = match &s.st.borrow().conn {
            Connection::Server(c) => (
                super::ClientCert::of_connection(c.peer_certificates()),
                c.peer_certificates().is_some_and(|p| !p.is_empty()),
            ),
            Connection::Client(_) => (None, false),
        };
        let refused = match &cert {
            // webpki accepted a certificate ringlb cannot read: no identity to forward, so no
            // service (an `optional` listener would otherwise serve it as anonymous).
            None if presented => Some(rustls::CertificateError::BadEncoding),
            // A session resumed after its certificate expired (rustls checks nothing again on
            // resumption).
            Some(c) if s.resumed() && c.not_after < std::time::SystemTime::now() => {
                Some(rustls::CertificateError::Expired)
            }
            _ => None,
        };
        if let Some(why) = refused {
            let _ = s.io.shutdown(Shutdown::Both);
            return Err(HandshakeError::Tls(rustls::Error::InvalidCertificate(why)));
        }
        s.client_cert = cert;
        Ok(s)
    }

    /// The verified client certificate of a mutual-TLS connection.
    pub fn client_cert(&self) -> Option<&Arc<super::ClientCert>> {
        self.client_cert.as_ref()
    }

    /// Reads and drops what the peer sends until it closes (at most `ALERT_LINGER_BYTES`).
    async fn discard_reads(&self) {
        let mut buf = Vec::with_capacity(4096);
        let mut total = 0;
        while total < ALERT_LINGER_BYTES {
            buf.clear();
            let (res, b) = self.io.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }

    /// Runs the client side of a handshake for `name` within `limit`.
    pub async fn connect(
        io: Stream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = rustls::ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
        let s = TlsStream::new(io, Connection::Client(conn));
        s.handshake(limit).await?;
        Ok(s)
    }

    async fn handshake(&self, limit: Duration) -> Result<(), HandshakeError> {
        let res = match tokio::time::timeout(limit, self.drive_handshake()).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout(limit)),
        };
        if let Err(e) = &res {
            if matches!(e, HandshakeError::Tls(_)) {
                // The alert rustls queued for the failure.
                let _ = tokio::time::timeout(ALERT_TIMEOUT, self.flush()).await;
            }
            let server = matches!(self.st.borrow().conn, Connection::Server(_));
            if server && matches!(e, HandshakeError::Tls(_)) {
                // A lingering close: FIN after the alert, then what the client sent meanwhile is
                // read and dropped. Closing with unread bytes would send a reset, and a client
                // that wrote after its Finished (an HTTP/2 preface) would lose the alert to it.
                let _ = self.io.shutdown(Shutdown::Write);
                let _ = tokio::time::timeout(ALERT_LINGER, self.discard_reads()).await;
            }
            // A timed-out read may still be pending: shut down, never read again.
            let _ = self.io.shutdown(Shutdown::Both);
        }
        res
    }

    async fn drive_handshake(&self) -> Result<(), HandshakeError> {
        loop {
            let (handshaking, wants_write) = {
                let st = self.st.borrow();
                (st.conn.is_handshaking(), st.conn.wants_write())
            };
            if wants_write {
                self.flush().await.map_err(HandshakeError::Io)?;
            }
            if !handshaking {
                return Ok(());
            }
            match self.fill(false).await {
                Ok(Fill::Progress) => {}
                Ok(_) => return Err(HandshakeError::Closed),
                Err(e) => {
                    let tls = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .cloned();
                    return Err(match tls {
                        Some(t) => HandshakeError::Tls(t),
                        None => HandshakeError::Io(e),
                    });
                }
            }
        }
    }

    /// Hands buffered ciphertext to rustls, reading the socket once when none is buffered. With
    /// `may_park`, a read that brings nothing for a while is withdrawn ([`Fill::Parked`]).
    async fn fill(&self, may_park: bool) -> io::Result<Fill> {
        if self.feed()? {
            return Ok(Fill::Progress);
        }
        let buf = {
            let mut st = self.st.borrow_mut();
            if st.eof {
                return Ok(Fill::Eof);
            }
            if st.rpos < st.rbuf.len() {
                // rustls refuses more input while nothing is decrypted to drain: never spin.
                return Err(io::Error::other("TLS peer sent more than can be buffered"));
            }
            st.rpos = 0;
            let b = std::mem::take(&mut st.rbuf);
            if b.capacity() < CIPHER_BUF {
                bufs::take_large()
            } else {
                b
            }
        };
        let (res, buf) = match may_park {
            false => self.io.read(buf).await,
            true => match self.io.read_or_park(buf).await {
                ParkRead::Read(res, buf) => (res, buf),
                ParkRead::Parked(buf) => {
                    bufs::give(buf);
                    return Ok(Fill::Parked);
                }
            },
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                bufs::give(buf);
                return Err(e);
            }
        };
        {
            let mut st = self.st.borrow_mut();
            st.rbuf = buf;
            st.rpos = 0;
            if n == 0 {
                st.eof = true;
                bufs::give(std::mem::take(&mut st.rbuf));
                // Tell rustls, so a missing close_notify is seen as such.
                let _ = st.conn.read_tls(&mut io::empty());
                st.conn.process_new_packets().map_err(invalid)?;
                return Ok(Fill::Eof);
            }
        }
        self.feed()?;
        Ok(Fill::Progress)
    }

    /// Feeds buffered ciphertext to rustls as far as it takes it. Returns whether any was taken.
    fn feed(&self) -> io::Result<bool> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let mut took = false;
        while st.rpos < st.rbuf.len() {
            let mut rest = st.rbuf.get(st.rpos..).unwrap_or_default();
            match st.conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => {
                    st.rpos += n;
                    took = true;
                }
                // rustls holds as much as it buffers (unread plaintext): let the caller drain it.
                Err(e) if e.kind() == io::ErrorKind::Other && took => break,
                Err(e) if e.kind() == io::ErrorKind::Other => return Ok(false),
                Err(e) => return Err(e),
            }
            st.conn.process_new_packets().map_err(invalid)?;
        }
        if st.rpos >= st.rbuf.len() {
            // All taken: the buffer goes back until the next read.
            bufs::give(std::mem::take(&mut st.rbuf));
            st.rpos = 0;
        }
        Ok(took)
    }

    /// Writes every queued ciphertext record to the socket.
    async fn flush(&self) -> io::Result<()> {
        let _guard = self.wlock.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> io::Result<()> {
        loop {
            let out = {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                if !st.conn.wants_write() {
                    return Ok(());
                }
                // Ciphertext waiting for the socket, in a buffer from the free list.
                let mut out = bufs::take_large();
                while st.conn.wants_write() {
                    st.conn.write_tls(&mut out)?;
                }
                out
            };
            let (res, out) = self.io.write_all(out).await;
            bufs::give(out);
            res?;
        }
    }

    /// Moves decrypted bytes into `buf`'s spare capacity. `None`: nothing decrypted yet.
    fn take_plain(&self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        let mut st = self.st.borrow_mut();
        let mut reader = st.conn.reader();
        let n = match reader.fill_buf() {
            Ok(data) => {
                let n = data.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&data[..n]);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            // EOF without close_notify: for HTTP the framing tells truncation apart.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(Ok(0)),
            Err(e) => return Some(Err(e)),
        };
        reader.consume(n);
        Some(Ok(n))
    }

    /// Appends decrypted bytes to the buffer's spare capacity; `0` = the peer closed.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.read_inner(buf, false).await {
            ParkRead::Read(res, buf) => (res, buf),
            // Without a park time a read never parks.
            ParkRead::Parked(buf) => (Ok(0), buf),
        }
    }

    /// As [`Stream::read_or_park`]: parks only when no plaintext and no ciphertext is buffered,
    /// so [`Stream::readable`] on the socket is then the right wait.
    pub async fn read_or_park(&self, buf: Vec<u8>) -> ParkRead {
        self.read_inner(buf, true).await
    }

    async fn read_inner(&self, mut buf: Vec<u8>, may_park: bool) -> ParkRead {
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        loop {
            if let Some(res) = self.take_plain(&mut buf) {
                return ParkRead::Read(res, buf);
            }
            if self.st.borrow().conn.wants_write() {
                // Alerts, tickets or key updates produced by what was read.
                if let Err(e) = self.flush().await {
                    return ParkRead::Read(Err(e), buf);
                }
            }
            match self.fill(may_park).await {
                Ok(Fill::Progress) => {}
                Ok(Fill::Parked) => return ParkRead::Parked(buf),
                Ok(Fill::Eof) => {
                    return match self.take_plain(&mut buf) {
                        Some(res) => ParkRead::Read(res, buf),
                        None => ParkRead::Read(Ok(0), buf),
                    }
                }
                Err(e) => {
                    // Send the alert for a protocol error, best effort.
                    let _ = tokio::time::timeout(ALERT_TIMEOUT, self.flush()).await;
                    return ParkRead::Read(Err(e), buf);
                }
            }
        }
    }

    /// Encrypts and writes `buf[start..end]`; the buffer comes back unchanged.
    pub async fn write_range(
        &self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        let end = end.min(buf.len());
        let _guard = self.wlock.lock().await;
        let mut pos = start;
        while pos < end {
            let n = {
                let mut st = self.st.borrow_mut();
                match st
                    .conn
                    .writer()
                    .write(buf.get(pos..end).unwrap_or_default())
                {
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                }
            };
            pos += n;
            if let Err(e) = self.flush_locked().await {
                return (Err(e), buf);
            }
            if n == 0 {
                // rustls took nothing even with its queue flushed: closed for writing.
                return (Err(io::ErrorKind::WriteZero.into()), buf);
            }
        }
        (Ok(()), buf)
    }

    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let end = buf.len();
        self.write_range(buf, 0, end).await
    }

    /// Shuts the socket down. Closing for writing first sends close_notify when no write is in
    /// progress and the socket takes it at once (never waits).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            if let Ok(_guard) = self.wlock.try_lock() {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                if !st.conn.is_handshaking() {
                    st.conn.send_close_notify();
                    let mut out = bufs::take_large();
                    while st.conn.wants_write() {
                        if st.conn.write_tls(&mut out).is_err() {
                            break;
                        }
                    }
                    // SAFETY: a valid fd and a valid pointer/length pair.
                    unsafe {
                        libc::send(
                            self.io.as_raw_fd(),
                            out.as_ptr().cast(),
                            out.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    bufs::give(out);
                }
            }
        }
        self.io.shutdown(how)
    }

    /// Whether a read would find something without the socket: plaintext or ciphertext already
    /// buffered, or the peer's close already seen.
    pub fn has_buffered(&self) -> bool {
        let mut st = self.st.borrow_mut();
        if st.eof || st.rpos < st.rbuf.len() {
            return true;
        }
        let mut reader = st.conn.reader();
        !matches!(reader.fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.st.borrow().conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Whether the handshake was a resumption.
    pub fn resumed(&self) -> bool {
        matches!(
            self.st.borrow().conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    pub fn stream(&self) -> &Stream {
        &self.io
    }

    /// The negotiated protocol version as logs name it ("TLSv1.3"), once the handshake is done.
    pub fn version_name(&self) -> Option<&'static str> {
        self.st.borrow().conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        })
    }
}

impl AsRawFd for TlsStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

/// A connection that is plain TCP or TLS: what the proxy holds for clients and upstreams.
pub enum MaybeTls {
    Plain(Stream),
    Tls(Box<TlsStream>),
}

impl From<Stream> for MaybeTls {
    fn from(s: Stream) -> MaybeTls {
        MaybeTls::Plain(s)
    }
}

impl MaybeTls {
    /// Appends at most the buffer's spare capacity (plaintext); `0` = end of stream.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            MaybeTls::Plain(s) => s.read(buf).await,
            MaybeTls::Tls(s) => s.read(buf).await,
        }
    }

    /// Reads, or parks when nothing comes for a while (see [`Stream::read_or_park`]).
    pub async fn read_or_park(&self, buf: Vec<u8>) -> ParkRead {
        match self {
            MaybeTls::Plain(s) => s.read_or_park(buf).await,
            MaybeTls::Tls(s) => s.read_or_park(buf).await,
        }
    }

    /// A wait for bytes costs nothing here (see [`crate::io::Stream::waits_for_free`]); never
    /// on TLS, whose records are read through its own buffer.
    pub fn waits_for_free(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.waits_for_free(),
            MaybeTls::Tls(_) => false,
        }
    }

    /// Waits, holding no buffer, until the socket has something to read. After a
    /// [`ParkRead::Parked`] nothing is buffered above the socket, so this is the right wait.
    pub async fn readable(&self) -> io::Result<()> {
        if let MaybeTls::Tls(s) = self {
            if s.has_buffered() {
                return Ok(());
            }
        }
        self.stream().readable().await
    }

    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            MaybeTls::Plain(s) => s.write_all(buf).await,
            MaybeTls::Tls(s) => s.write_all(buf).await,
        }
    }

    pub async fn write_range(
        &self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        match self {
            MaybeTls::Plain(s) => s.write_range(buf, start, end).await,
            MaybeTls::Tls(s) => s.write_range(buf, start, end).await,
        }
    }

    /// See [`Stream::cork`]: the next writes are the connection's last (TLS: its records and
    /// the close_notify go out with the FIN).
    pub fn cork(&self) -> io::Result<()> {
        self.stream().cork()
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown(how),
            MaybeTls::Tls(s) => s.shutdown(how),
        }
    }

    /// The TLS version of a TLS connection ("TLSv1.3"), `None` for plain TCP.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(s) => s.version_name(),
        }
    }

    /// The verified client certificate (mutual TLS listeners).
    pub fn client_cert(&self) -> Option<&Arc<super::ClientCert>> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(s) => s.client_cert(),
        }
    }

    /// The TCP stream underneath.
    pub fn stream(&self) -> &Stream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.stream(),
        }
    }
}

impl AsRawFd for MaybeTls {
    fn as_raw_fd(&self) -> RawFd {
        self.stream().as_raw_fd()
    }
}
