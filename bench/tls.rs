//! Client-side TLS for the load generator: the rustls (ring) client config — system roots, or a
//! signature-checking but trust-everything verifier with `--insecure` — and a TLS stream driving a
//! `rustls::ClientConnection` over an owned-buffer `io::Stream` (HTTP/1.1; `--http2` uses
//! tokio-rustls over the same config instead, see `h2load`).
//! The config is built once on the main thread and shared (`Arc`); each `TlsConn` is owned by
//! the connection task of a load thread.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::io::Stream;

/// Bytes of ciphertext read from the socket at once.
const CIPHER_BUF: usize = 32 * 1024;

/// Why a TLS client config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no trusted root certificates found on this system ({0}); install the ca-certificates package, set SSL_CERT_FILE, or pass --insecure to skip verification")]
    NoRoots(String),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the shared client config (TLS 1.2 and 1.3, ALPN `h2` when `http2`, else `http/1.1`);
/// `resume: false` makes every connection a full handshake.
pub fn client_config(
    insecure: bool,
    resume: bool,
    http2: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
            .with_no_client_auth()
    } else {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = loaded
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "the system store is empty".into());
            return Err(TlsSetupError::NoRoots(why));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// `--insecure`: any certificate chain is accepted, but handshake signatures are still checked
/// so the CPU cost matches a verifying client's.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client connection over an owned-buffer stream.
pub struct TlsConn {
    io: Stream,
    tls: rustls::ClientConnection,
    /// Ciphertext read from the socket; `cpos..len` not yet fed to rustls.
    cbuf: Vec<u8>,
    cpos: usize,
    /// Ciphertext waiting to be written.
    wbuf: Vec<u8>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// Runs the handshake over `io` for `name`.
    pub async fn connect(
        io: Stream,
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsConn> {
        let tls = rustls::ClientConnection::new(cfg, name).map_err(tls_err)?;
        let mut c = TlsConn {
            io,
            tls,
            cbuf: Vec::with_capacity(CIPHER_BUF),
            cpos: 0,
            wbuf: Vec::with_capacity(CIPHER_BUF),
        };
        while c.tls.is_handshaking() {
            c.flush().await?;
            if c.tls.wants_read() && c.feed().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the TLS handshake",
                ));
            }
        }
        c.flush().await?;
        Ok(c)
    }

    /// Writes the ciphertext rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.wbuf.clear();
            self.tls.write_tls(&mut self.wbuf)?;
            let (res, b) = self.io.write_all(std::mem::take(&mut self.wbuf)).await;
            self.wbuf = b;
            res?;
        }
        Ok(())
    }

    /// Feeds buffered (or newly read) ciphertext to rustls; returns 0 at end of stream.
    async fn feed(&mut self) -> io::Result<usize> {
        if self.cpos == self.cbuf.len() {
            self.cbuf.clear();
            self.cpos = 0;
            let (res, b) = self.io.read_append(std::mem::take(&mut self.cbuf)).await;
            self.cbuf = b;
            if res? == 0 {
                return Ok(0);
            }
        }
        let mut rest = &self.cbuf[self.cpos..];
        let n = self.tls.read_tls(&mut rest)?;
        if n == 0 {
            // rustls took nothing although bytes are pending: never spin on it.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS record buffer refused more data",
            ));
        }
        self.cpos += n;
        self.tls.process_new_packets().map_err(tls_err)?;
        Ok(n)
    }

    /// Appends decrypted bytes to `buf`'s spare capacity; returns the count (0 = closed).
    pub async fn read_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            let room = buf.capacity() - buf.len();
            if room == 0 {
                let e = io::Error::new(io::ErrorKind::OutOfMemory, "read buffer full");
                return (Err(e), buf);
            }
            let mut reader = self.tls.reader();
            match reader.fill_buf() {
                Ok(avail) => {
                    // Copy what fits into the spare capacity (no zero-filling).
                    let n = avail.len().min(room);
                    buf.extend_from_slice(&avail[..n]);
                    reader.consume(n);
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
            match self.feed().await {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed without TLS close_notify",
                    );
                    return (Err(e), buf);
                }
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
            if self.tls.wants_write() {
                if let Err(e) = self.flush().await {
                    return (Err(e), buf);
                }
            }
        }
    }

    /// Encrypts and writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.tls.writer().write_all(&buf) {
            return (Err(e), buf);
        }
        (self.flush().await, buf)
    }

    pub fn shutdown(&self) {
        self.io.shutdown();
    }
}
