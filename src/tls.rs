//! TLS with rustls (ring provider): the per-listener server config (certificates, SNI, ALPN,
//! resumption), the per-group client config for re-encryption, and kernel-TLS detection.
//!
//! Configs are built once by the main thread at start and shared read-only (`Arc`) by every
//! worker, so session tickets sealed by one worker open on any other. The per-connection state
//! ([`TlsStream`]) is owned by the connection task on the worker that accepted or opened it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{CipherPreference, GroupTls, ListenerTls};

mod certs;
pub mod client_auth;
pub mod ocsp;
pub mod probe;
mod stream;
pub mod tickets;

pub use certs::{check_pair, load_certified_key, SniResolver};
pub use client_auth::{ClientAuth, ClientCert};
pub use stream::{HandshakeError, MaybeTls, TlsStream};
pub use tickets::TicketKeys;

/// TLS 1.2 session IDs remembered per listener (shared by its workers) for resumption.
pub const SESSION_CACHE_ENTRIES: usize = 16 * 1024;
/// TLS 1.3 tickets sent after each full handshake.
pub const TLS13_TICKETS: usize = 2;
/// The only application protocol offered and accepted.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN name of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// What is wrong with a certificate, key or CA file: each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {source}", .path.display())]
    Pem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no certificate found (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: the first certificate cannot be parsed: {reason}", .path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: no private key found (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: key type not supported (use ECDSA P-256/P-384, RSA or Ed25519): {reason}", .path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("{}: this key does not belong to the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: no usable CA certificate found", .path.display())]
    NoCa { path: PathBuf },
    #[error("no trusted root certificates found on this system ({0}); install ca-certificates or set tls.ca_file")]
    NoRoots(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{}: no CRL found (expected PEM blocks \"-----BEGIN X509 CRL-----\")", .path.display())]
    NoCrl { path: PathBuf },
    #[error("{}: the CRL cannot be parsed: {reason}", .path.display())]
    BadCrl { path: PathBuf, reason: String },
    #[error("{}: {reason}", .path.display())]
    BadOcsp { path: PathBuf, reason: String },
}

impl TlsError {
    /// The config field a certificate-pair error belongs to ("cert" or "key").
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::NoKey { .. }
            | TlsError::UnsupportedKey { .. }
            | TlsError::KeyMismatch { .. } => "key",
            TlsError::BadOcsp { .. } => "ocsp",
            _ => "cert",
        }
    }
}

/// A TLS error with the config location it came from.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {error}")]
pub struct LocatedTlsError {
    /// e.g. "listener 'web': tls.certificates[0].cert"
    pub at: String,
    pub error: TlsError,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An https listener's server side: the rustls config its workers share, and a digest of the
/// certificate chains it serves, so a reload can tell whether they changed.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 over every chain's DER certificates and its key's public half, in config order,
    /// and the client-auth settings (mode, CA and CRL contents): what decides who may resume a
    /// session, so what decides whether ticket keys are kept.
    pub certificates: [u8; 32],
    /// `certificates` plus everything else in the config (ALPN, cipher order, OCSP responses):
    /// equal means a reload keeps the config whole.
    pub settings: [u8; 32],
    pub client_auth: ClientAuth,
    /// The session ticket keys (handed to the new process by a binary upgrade).
    pub tickets: Arc<TicketKeys>,
}

/// Ticket keys an upgrade carried over from the old process for one listener, with the digest of
/// the certificates they sealed sessions for: they are used only for the very same certificates.
pub struct CarriedTickets {
    pub certificates: [u8; 32],
    pub keys: Arc<TicketKeys>,
}

/// Builds the server side of an https listener: every certificate loaded and checked (with its
/// stapled OCSP response), the SNI resolver, ALPN (h2 first when `http2`, then http/1.1),
/// TLS 1.2 + 1.3, the client-certificate verifier (`client_auth`), the cipher order, rotating
/// tickets and a TLS 1.2 session cache.
///
/// With `previous` (the same listener before a reload): the very same settings and files keep its
/// config whole (ticket keys, cached sessions); the same certificates and client-auth settings
/// (CA and CRL contents included) keep its ticket keys, so clients resume after the reload;
/// anything else that decides who may resume (new certificates, a CRL that revoked someone,
/// `client_auth` changed) starts afresh: sessions made before are not resumed. `carried` (a
/// binary upgrade's, for this listener) keeps the old process's ticket keys on the same terms.
pub fn server_config(
    listener: &str,
    tls: &ListenerTls,
    http2: bool,
    previous: Option<&Arc<ServerTls>>,
    carried: Option<&CarriedTickets>,
) -> Result<Arc<ServerTls>, LocatedTlsError> {
    let alpn = if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
    } else {
        vec![ALPN_HTTP1.to_vec()]
    };
    let mut keys = Vec::with_capacity(tls.certificates.len());
    let mut stapled = Vec::with_capacity(tls.certificates.len());
    for (i, files) in tls.certificates.iter().enumerate() {
        let at = |error: TlsError| LocatedTlsError {
            at: format!(
                "listener '{listener}': tls.certificates[{i}].{}",
                error.field()
            ),
            error,
        };
        let mut ck = load_certified_key(&files.cert, &files.key).map_err(at)?;
        if let Some(path) = &files.ocsp {
            let s = ocsp::load(path, &ck.cert).map_err(at)?;
            if s.expired() {
                tracing::warn!(listener, certificate = i, file = %path.display(), "the OCSP response has expired (nextUpdate passed); it is not stapled until the file is renewed and ringlb reloaded");
            } else {
                // Only what is stapled decides whether a reload keeps the config: an expired
                // response (not stapled) must not keep a config that still staples it.
                stapled.push(s.der.clone());
                ck.ocsp = Some(s.der);
            }
        }
        keys.push(ck);
    }
    let located = |error: TlsError| LocatedTlsError {
        at: format!("listener '{listener}': tls"),
        error,
    };
    // Who may resume a session: the certificates, and the client-auth settings with the CA and
    // CRL files' contents.
    // Read once: the digest and the verifier see the same bytes.
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut ca_pem = None;
    let mut crl_pems = Vec::new();
    if tls.client_auth != ClientAuth::Off {
        if let Some(ca) = &tls.client_ca {
            ca_pem = Some((ca.as_path(), read(ca).map_err(located)?));
        }
        for crl in &tls.client_crl {
            crl_pems.push((crl.as_path(), read(crl).map_err(located)?));
        }
    }
    let mut auth = vec![tls.client_auth as u8];
    for (_, data) in ca_pem.iter().chain(crl_pems.iter()) {
        auth.extend_from_slice(&(data.len() as u64).to_be_bytes());
        auth.extend_from_slice(data);
    }
    let certificates = chains_digest(&keys, &[&auth]);
    let settings = chains_digest(
        &keys,
        &[
            &auth,
            &alpn.concat(),
            &[tls.cipher_preference as u8],
            &stapled.concat(),
        ],
    );
    if let Some(p) = previous.filter(|p| p.settings == settings) {
        return Ok(p.clone());
    }
    let verifier = match (tls.client_auth, &ca_pem) {
        (ClientAuth::Off, _) => None,
        (mode, Some((ca, pem))) => Some(
            client_auth::verifier_from(mode, (ca, pem), &crl_pems).map_err(|error| {
                LocatedTlsError {
                    at: format!("listener '{listener}': tls.client_ca"),
                    error,
                }
            })?,
        ),
        // Config validation requires client_ca with client_auth.
        (_, None) => {
            return Err(located(TlsError::Rustls(rustls::Error::General(
                "client_auth needs client_ca".to_string(),
            ))))
        }
    };
    let resolver = SniResolver::new(keys);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| located(e.into()))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn;
    cfg.ignore_client_order = tls.cipher_preference == CipherPreference::Server;
    let kept = previous
        .filter(|p| p.certificates == certificates)
        .map(|p| p.tickets.clone());
    let tickets = match (kept, carried.filter(|c| c.certificates == certificates)) {
        (Some(k), _) => k,
        (None, Some(c)) => c.keys.clone(),
        (None, None) => Arc::new(TicketKeys::generate().ok_or_else(|| {
            located(TlsError::Rustls(rustls::Error::General(
                "the system's random source failed while making ticket keys".to_string(),
            )))
        })?),
    };
    cfg.ticketer = tickets.clone();
    cfg.session_storage = match previous.filter(|p| p.certificates == certificates) {
        Some(p) => p.config.session_storage.clone(),
        None => ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
    };
    cfg.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(ServerTls {
        config: Arc::new(cfg),
        certificates,
        settings,
        tickets,
        client_auth: tls.client_auth,
    }))
}

/// SHA-256 over the certificate chains and their keys' public halves, then `extra` items, each
/// item length-prefixed.
fn chains_digest(keys: &[rustls::sign::CertifiedKey], extra: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut item = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    for k in keys {
        item(&(k.cert.len() as u64).to_be_bytes());
        for c in &k.cert {
            item(c);
        }
        // The certificate already binds the key; this covers key types rustls cannot match.
        item(k.key.public_key().as_deref().unwrap_or_default());
    }
    for e in extra {
        item(e);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The client side of one https target group.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// `tls.server_name`; `None`: the target's address.
    pub server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The same client offering only `alpn` (an HTTP/1.1 health check of an HTTP/2 group).
    pub fn with_alpn(&self, alpn: &[u8]) -> UpstreamTls {
        let mut cfg = (*self.config).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        UpstreamTls {
            config: Arc::new(cfg),
            server_name: self.server_name.clone(),
        }
    }

    /// The SNI / verification name for a target.
    pub fn name_for(&self, addr: std::net::SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

/// Builds the client config for an https target group: `tls.ca_file` or the system roots,
/// TLS 1.2 + 1.3, ALPN http/1.1 (or h2 alone when `h2`: the group speaks HTTP/2 to its targets,
/// and a target that cannot is a failed connect rather than a silent downgrade).
pub fn upstream_config(
    group: &str,
    tls: Option<&GroupTls>,
    h2: bool,
) -> Result<UpstreamTls, LocatedTlsError> {
    let located = |field: &str, error: TlsError| LocatedTlsError {
        at: format!("target_group '{group}': tls.{field}"),
        error,
    };
    let mut roots = RootCertStore::empty();
    match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(path) => {
            let certs = read_certs(path).map_err(|e| located("ca_file", e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(located(
                    "ca_file",
                    TlsError::NoCa {
                        path: path.to_path_buf(),
                    },
                ));
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "the system store is empty".into());
                return Err(located("ca_file", TlsError::NoRoots(why)));
            }
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| located("ca_file", e.into()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![if h2 { ALPN_H2 } else { ALPN_HTTP1 }.to_vec()];
    let server_name = match tls.and_then(|t| t.server_name.as_deref()) {
        Some(n) => Some(ServerName::try_from(n.to_string()).map_err(|e| {
            located(
                "server_name",
                TlsError::Rustls(rustls::Error::General(format!(
                    "\"{n}\" is not a DNS name or IP address: {e}"
                ))),
            )
        })?),
        None => None,
    };
    Ok(UpstreamTls {
        config: Arc::new(cfg),
        server_name,
    })
}

/// Every certificate in a PEM file (none is an error).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Whether this kernel can take TLS records over (the `tls` upper-layer protocol): `Err` says why
/// not. Probed on a connected loopback socket, as `setsockopt(TCP_ULP, "tls")` needs one.
pub fn ktls_available() -> Result<(), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot open a loopback probe socket: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot open a loopback probe socket: {e}"))?;
    let client = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("cannot connect the loopback probe socket: {e}"))?;
    let ulp = b"tls";
    // SAFETY: a valid fd and a valid pointer/length pair for the option value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "the kernel has no \"tls\" module (CONFIG_TLS unset or not loaded; try modprobe tls): {e}"
        ),
        Some(libc::EOPNOTSUPP) => format!("the kernel refuses the \"tls\" ULP: {e}"),
        _ => format!("setsockopt(TCP_ULP, \"tls\") failed: {e}"),
    })
}

/// Logs, once at start, whether TLS records are handled by the kernel or in user space.
pub fn log_ktls_status() {
    match ktls_available() {
        Ok(()) => tracing::info!(
            "kernel TLS is available; TLS records are still encrypted in user space (rustls)"
        ),
        Err(why) => {
            tracing::info!(reason = %why, "kernel TLS unavailable; TLS records are encrypted in user space (rustls)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktls_detection_reports_a_reason_when_unavailable() {
        match ktls_available() {
            // A kernel with the tls module: nothing more to check.
            Ok(()) => {}
            Err(why) => {
                eprintln!("kTLS unavailable: {why}");
                assert!(
                    why.contains("tls") && why.contains("os error"),
                    "the reason names the cause and the errno: {why}"
                );
            }
        }
    }

    #[test]
    fn ktls_unavailable_on_this_kernel_when_config_tls_is_unset() {
        // These machines' kernels lack CONFIG_TLS (DESIGN §8); where the module is present (the
        // probe may have loaded it) the probe must agree instead.
        let probe = ktls_available();
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|m| m.lines().any(|l| l.starts_with("tls ")))
            .unwrap_or(false);
        let builtin = std::path::Path::new("/sys/module/tls").exists();
        assert_eq!(probe.is_ok(), loaded || builtin, "{probe:?}");
    }
}
