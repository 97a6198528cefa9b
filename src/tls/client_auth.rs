//! Mutual TLS on https listeners: the client-certificate verifier (CA bundle + CRLs, rustls'
//! webpki verifier), what a verified certificate tells the target (`X-Client-Cert-*`), and the
//! reasons a handshake failed, for `/metrics`.
//!
//! The verifier is built by the main thread with the listener's TLS config (start and reload:
//! CRLs are re-read every reload) and shared by its workers. A [`ClientCert`] is made once per
//! connection by the worker that did the handshake, right after it, and owned by the connection
//! (`Rc`): each forwarded request copies its prepared header block, nothing more.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use der::Decode;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

use super::TlsError;

/// Header names a verified client certificate is forwarded in (client-sent ones are always
/// removed: `http::parse` treats them as hop-by-hop).
pub const HEADER_SUBJECT: &str = "X-Client-Cert-Subject";
pub const HEADER_ISSUER: &str = "X-Client-Cert-Issuer";
pub const HEADER_SERIAL: &str = "X-Client-Cert-Serial";
pub const HEADER_FINGERPRINT: &str = "X-Client-Cert-Fingerprint";
pub const HEADER_CERT: &str = "X-Client-Cert";

pub use crate::config::ClientAuth;

/// Builds the verifier for `client_auth` with the CAs in `ca` and the CRLs in `crls`.
pub fn verifier(
    mode: ClientAuth,
    ca: &Path,
    crls: &[std::path::PathBuf],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let crls = crls
        .iter()
        .map(|p| Ok((p.as_path(), read(p)?)))
        .collect::<Result<Vec<_>, TlsError>>()?;
    verifier_from(mode, (ca, &read(ca)?), &crls)
}

/// [`verifier`] over file contents already read (`(path, bytes)`: the path names errors), so a
/// reload builds the verifier from the very bytes it compared.
pub fn verifier_from(
    mode: ClientAuth,
    (ca, ca_pem): (&Path, &[u8]),
    crls: &[(&Path, Vec<u8>)],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = rustls_pemfile::certs(&mut &ca_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: ca.to_path_buf(),
            source,
        })?;
    for cert in certs {
        // A bundle may hold certificates webpki cannot use as anchors; the rest still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa {
            path: ca.to_path_buf(),
        });
    }
    let mut revoked = Vec::new();
    for (path, pem) in crls {
        revoked.extend(parse_crls(path, pem)?);
    }
    let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .with_crls(revoked)
        // The CRLs an operator lists are checked against the client's own certificate; one
        // whose issuer has no CRL listed is not refused for that.
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status();
    if mode == ClientAuth::Optional {
        b = b.allow_unauthenticated();
    }
    b.build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(format!("client_ca: {e}"))))
}

/// The CRLs in a PEM file; a file without any is an error (a CRL list that checks nothing
/// would be a silent hole).
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_crls(path, &data)
}

fn parse_crls(
    path: &Path,
    data: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = rustls_pemfile::crls(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    // Parsed now, so a broken CRL is a config error, not a handshake failure.
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|e| TlsError::BadCrl {
            path: path.to_path_buf(),
            reason: format!("{e:?}"),
        })?;
    }
    Ok(crls)
}

/// Checks that every CRL in `crls` (read from `path`) was issued by a CA of the bundle `ca`:
/// one from another issuer would revoke nothing, silently.
pub fn check_crl_issuers(
    ca: &Path,
    path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<(), TlsError> {
    let pem = std::fs::read(ca).map_err(|source| TlsError::Read {
        path: ca.to_path_buf(),
        source,
    })?;
    let subjects: Vec<x509_cert::name::Name> = rustls_pemfile::certs(&mut &pem[..])
        .flatten()
        .filter_map(|c| x509_cert::Certificate::from_der(c.as_ref()).ok())
        .map(|c| c.tbs_certificate.subject)
        .collect();
    for crl in crls {
        let list = x509_cert::crl::CertificateList::from_der(crl.as_ref()).map_err(|e| {
            TlsError::BadCrl {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let issuer = &list.tbs_cert_list.issuer;
        if !subjects.contains(issuer) {
            return Err(TlsError::BadCrl {
                path: path.to_path_buf(),
                reason: format!(
                    "issued by \"{issuer}\", which is not a CA in {}: it would revoke nothing",
                    ca.display()
                ),
            });
        }
    }
    Ok(())
}

/// What `ringlb check` warns about a listener's CRLs: ones past their nextUpdate (they still
/// revoke what they list, but the CA has published newer ones).
pub fn warnings(l: &crate::config::ListenerConfig) -> Vec<String> {
    let mut out = Vec::new();
    let Some(tls) = &l.tls else { return out };
    for (i, path) in tls.client_crl.iter().enumerate() {
        let Ok(crls) = read_crls(path) else { continue };
        for crl in &crls {
            let Ok(list) = x509_cert::crl::CertificateList::from_der(crl.as_ref()) else {
                continue;
            };
            let next = list.tbs_cert_list.next_update.map(|t| t.to_system_time());
            if next.is_some_and(|t| t < std::time::SystemTime::now()) {
                out.push(format!(
                    "listener '{}': tls.client_crl[{i}]: {}: the CRL of \"{}\" is past its nextUpdate; fetch the current one and reload",
                    l.name,
                    path.display(),
                    list.tbs_cert_list.issuer
                ));
            }
        }
    }
    out
}

/// Why a handshake failed, as `/metrics` labels it (`reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    NoCertificate = 0,
    UnknownCa = 1,
    Revoked = 2,
    Expired = 3,
    BadCertificate = 4,
    Other = 5,
}

pub const FAILURE_REASONS: [FailureReason; 6] = [
    FailureReason::NoCertificate,
    FailureReason::UnknownCa,
    FailureReason::Revoked,
    FailureReason::Expired,
    FailureReason::BadCertificate,
    FailureReason::Other,
];

impl FailureReason {
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::NoCertificate => "no_certificate",
            FailureReason::UnknownCa => "unknown_ca",
            FailureReason::Revoked => "revoked",
            FailureReason::Expired => "expired",
            FailureReason::BadCertificate => "bad_certificate",
            FailureReason::Other => "other",
        }
    }

    /// The reason behind a failed handshake (anything but a client certificate's fault is
    /// `Other`: timeouts, closed connections, protocol errors).
    pub fn of(e: &super::HandshakeError) -> FailureReason {
        let super::HandshakeError::Tls(e) = e else {
            return FailureReason::Other;
        };
        match e {
            rustls::Error::NoCertificatesPresented => FailureReason::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => FailureReason::UnknownCa,
                CertificateError::Revoked => FailureReason::Revoked,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    FailureReason::Expired
                }
                _ => FailureReason::BadCertificate,
            },
            _ => FailureReason::Other,
        }
    }
}

/// What a verified client certificate tells: its fields, and the header block forwarded with
/// every request of the connection.
#[derive(Debug)]
pub struct ClientCert {
    /// RFC 4514 (most specific RDN first), non-ASCII and control bytes as `\XX`.
    pub subject: String,
    /// `subject` in the form `client_cert_subject` patterns are matched against
    /// ([`dn_match_form`]).
    pub subject_match: Box<[u8]>,
    /// When the certificate expires (a resumed session is refused after it).
    pub not_after: std::time::SystemTime,
    pub issuer: String,
    /// Upper-case hex, no leading zero bytes (as nginx's `$ssl_client_serial`).
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// `X-Client-Cert-Subject: ...\r\n` and the four others, ready to append to a head.
    pub header_block: Vec<u8>,
}

impl ClientCert {
    /// The identity of `der` (the end-entity certificate rustls verified); `None` if it cannot be
    /// parsed (rustls accepted it, so this is not expected).
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = &cert.tbs_certificate;
        let subject = ascii_safe(&tbs.subject.to_string());
        let issuer = ascii_safe(&tbs.issuer.to_string());
        let not_after = tbs.validity.not_after.to_system_time();
        let serial_bytes = tbs.serial_number.as_bytes();
        let first = serial_bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(serial_bytes.len().saturating_sub(1));
        let serial = hex(serial_bytes.get(first..).unwrap_or_default(), true);
        let fingerprint = hex(
            ring::digest::digest(&ring::digest::SHA256, der).as_ref(),
            false,
        );
        let mut header_block = Vec::with_capacity(256 + der.len() * 2);
        for (name, value) in [
            (HEADER_SUBJECT, &subject),
            (HEADER_ISSUER, &issuer),
            (HEADER_SERIAL, &serial),
            (HEADER_FINGERPRINT, &fingerprint),
        ] {
            header_block.extend_from_slice(name.as_bytes());
            header_block.extend_from_slice(b": ");
            header_block.extend_from_slice(value.as_bytes());
            header_block.extend_from_slice(b"\r\n");
        }
        header_block.extend_from_slice(HEADER_CERT.as_bytes());
        header_block.extend_from_slice(b": ");
        percent_encode_into(&pem(der), &mut header_block);
        header_block.extend_from_slice(b"\r\n");
        Some(ClientCert {
            subject_match: dn_match_form(subject.as_bytes()).into_boxed_slice(),
            not_after,
            subject,
            issuer,
            serial,
            fingerprint,
            header_block,
        })
    }

    /// The identity of a finished handshake's client, if it presented a certificate.
    pub fn of_connection(peer: Option<&[CertificateDer<'_>]>) -> Option<Arc<ClientCert>> {
        let leaf = peer?.first()?;
        ClientCert::from_der(leaf.as_ref()).map(Arc::new)
    }
}

/// `s` with every byte outside printable ASCII written `\XX` (RFC 4514 allows a hex escape for
/// any character), so the value is safe in an HTTP field and a log line; the formatter's own
/// hex escapes (`\0d`) get upper-case digits too.
fn ascii_safe(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            match hex {
                Some(h) => {
                    out.push('\\');
                    out.extend(h.iter().map(|d| d.to_ascii_uppercase() as char));
                    i += 3;
                }
                // `\,`, `\\` and the other escaped specials stay as they are.
                None if (0x20..0x7f).contains(&b[i + 1]) => {
                    out.push('\\');
                    out.push(b[i + 1] as char);
                    i += 2;
                }
                None => {
                    out.push_str("\\5C");
                    i += 1;
                }
            }
        } else if (0x20..0x7f).contains(&c) {
            out.push(c as char);
            i += 1;
        } else {
            let _ = write!(out, "\\{c:02X}");
            i += 1;
        }
    }
    out
}

/// The form a subject and the `client_cert_subject` patterns are compared in: an escaped `,`,
/// `+` or `\` becomes one byte that no pattern literal stands for, so a `,` or `+` in a pattern
/// matches only a real RDN separator, never one escaped inside a value (a CN of
/// `x\,O=Example` cannot pass for an `O=Example` RDN).
pub fn dn_match_form(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (s[i], s.get(i + 1)) {
            (b'\\', Some(b',')) => out.push(0x01),
            (b'\\', Some(b'+')) => out.push(0x02),
            (b'\\', Some(b'\\')) => out.push(0x03),
            (c, _) => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

fn hex(bytes: &[u8], upper: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = if upper {
            write!(out, "{b:02X}")
        } else {
            write!(out, "{b:02x}")
        };
    }
    out
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters (as ALB's
/// `X-Amzn-Mtls-Clientcert` and nginx's `$ssl_client_escaped_cert`).
fn percent_encode_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &[(rcgen::DnType, &str)], serial: u64) -> (Vec<u8>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        let c = p.self_signed(&key).expect("cert");
        (c.der().to_vec(), key)
    }

    #[test]
    fn identity_fields_and_the_header_block() {
        let (der, _) = cert(
            &[
                (rcgen::DnType::CountryName, "US"),
                (rcgen::DnType::OrganizationName, "Example, Corp"),
                (rcgen::DnType::CommonName, "alice"),
            ],
            4096,
        );
        let c = ClientCert::from_der(&der).expect("parsed");
        assert_eq!(c.subject, "CN=alice,O=Example\\, Corp,C=US");
        assert_eq!(c.issuer, c.subject, "self-signed");
        assert_eq!(c.serial, "1000");
        assert_eq!(c.fingerprint.len(), 64);
        assert!(c
            .fingerprint
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let block = String::from_utf8(c.header_block.clone()).expect("ascii");
        assert!(block.starts_with("X-Client-Cert-Subject: CN=alice,O=Example\\, Corp,C=US\r\n"));
        assert!(block.contains("X-Client-Cert-Serial: 1000\r\n"));
        assert!(block.contains("X-Client-Cert: -----BEGIN%20CERTIFICATE-----%0A"));
        assert_eq!(
            block.matches("\r\n").count(),
            5,
            "five fields, no stray line breaks"
        );
    }

    #[test]
    fn control_and_non_ascii_bytes_cannot_break_a_header() {
        let (der, _) = cert(&[(rcgen::DnType::CommonName, "evil\r\nX-Admin: yes é")], 1);
        let c = ClientCert::from_der(&der).expect("parsed");
        assert!(!c.subject.contains('\r') && !c.subject.contains('\n'));
        assert!(c.subject.is_ascii());
        assert!(c.subject.contains("\\C3\\A9"), "{}", c.subject);
        let block = String::from_utf8(c.header_block).expect("ascii");
        assert_eq!(block.matches("\r\n").count(), 5);
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        (p.self_signed(&key).expect("ca"), key)
    }

    fn crl(issuer: &(rcgen::Certificate, rcgen::KeyPair), year: i32) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(year, 1, 1),
            next_update: rcgen::date_time_ymd(year + 1, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer.0, &issuer.1)
        .expect("crl")
        .pem()
        .expect("pem")
    }

    #[test]
    fn a_crl_must_come_from_a_ca_of_the_bundle() {
        let dir = crate::testdir::test_path("crl");
        std::fs::create_dir_all(&dir).expect("dir");
        let (ours, theirs) = (ca("Clients CA"), ca("Someone Else"));
        let bundle = dir.join("ca.pem");
        std::fs::write(&bundle, ours.0.pem()).expect("write");
        for (name, issuer, ok) in [("ours.crl", &ours, true), ("theirs.crl", &theirs, false)] {
            let path = dir.join(name);
            std::fs::write(&path, crl(issuer, 2030)).expect("write");
            let crls = read_crls(&path).expect("parses");
            let r = check_crl_issuers(&bundle, &path, &crls);
            assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("Someone Else"), "{e}");
            }
        }
    }

    #[test]
    fn check_warns_about_a_crl_past_its_next_update() {
        let dir = crate::testdir::test_path("crl-old");
        std::fs::create_dir_all(&dir).expect("dir");
        let clients = ca("Clients CA");
        std::fs::write(dir.join("ca.pem"), clients.0.pem()).expect("write");
        std::fs::write(dir.join("old.crl"), crl(&clients, 2020)).expect("write");
        std::fs::write(dir.join("new.crl"), crl(&clients, 2030)).expect("write");
        let key = rcgen::KeyPair::generate().expect("key");
        let site = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.join("site.crt"), site.pem()).expect("write");
        std::fs::write(dir.join("site.key"), key.serialize_pem()).expect("write");
        let text = |crl: &str| {
            format!(
                "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
                 target_group = \"app\"\n  [listener.tls]\n  certificates = [{{ cert = \"site.crt\", key = \"site.key\" }}]\n\
                 \x20 client_auth = \"required\"\n  client_ca = \"ca.pem\"\n  client_crl = [\"{crl}\"]\n\n\
                 [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:9\"]\n"
            )
        };
        let cfg = |crl: &str| {
            crate::config::Config::parse(&text(crl), &dir.join("t.toml")).expect("valid config")
        };
        let old = warnings(&cfg("old.crl").listeners[0]);
        assert_eq!(old.len(), 1, "{old:?}");
        assert!(
            old[0].contains("client_crl[0]") && old[0].contains("nextUpdate"),
            "{old:?}"
        );
        assert!(warnings(&cfg("new.crl").listeners[0]).is_empty());
    }
}
