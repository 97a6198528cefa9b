//! OCSP stapling: a certificate's `ocsp = "file.der"` (a DER OCSP response, fetched by the
//! operator's cron from the CA's responder) is checked against the certificate and handed to
//! rustls, which staples it in every handshake that asks (`status_request`).
//!
//! Runs on the main thread: when the config is read (`ringlb check` and start: a response for
//! another certificate is a located error) and when TLS configs are built (start, reload: the
//! file is re-read each time, so renewing it is a reload). Parsing is x509-ocsp's.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::Decode;
use rustls::pki_types::CertificateDer;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

use super::TlsError;

/// The CertID hashes responders use.
const OID_SHA1: &str = "1.3.14.3.2.26";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_SHA512: &str = "2.16.840.1.101.3.4.2.3";

/// A checked OCSP response.
#[derive(Debug)]
pub struct Stapled {
    pub der: Vec<u8>,
    /// When the responder says the answer goes stale (`None`: it did not say).
    pub next_update: Option<SystemTime>,
}

impl Stapled {
    /// Whether the response's `nextUpdate` has passed.
    pub fn expired(&self) -> bool {
        self.next_update.is_some_and(|t| t < SystemTime::now())
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::BadOcsp {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the response at `path` and checks it is a successful answer about `chain[0]`
/// (serial, and issuer name and key when `chain[1]` is its issuer), saying "good".
pub fn load(path: &Path, chain: &[CertificateDer<'_>]) -> Result<Stapled, TlsError> {
    let der = std::fs::read(path).map_err(|source| TlsError::Read {
        path: PathBuf::from(path),
        source,
    })?;
    let resp = OcspResponse::from_der(&der)
        .map_err(|e| bad(path, format!("not a DER OCSP response: {e}")))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(bad(
            path,
            format!("the responder did not answer ({:?})", resp.response_status),
        ));
    }
    let bytes = resp
        .response_bytes
        .ok_or_else(|| bad(path, "a successful response without a body"))?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| bad(path, format!("not a basic OCSP response: {e}")))?;
    let leaf = chain
        .first()
        .and_then(|c| x509_cert::Certificate::from_der(c.as_ref()).ok())
        .ok_or_else(|| bad(path, "its certificate cannot be parsed"))?;
    let issuer = chain
        .get(1)
        .and_then(|c| x509_cert::Certificate::from_der(c.as_ref()).ok());
    let serial = leaf.tbs_certificate.serial_number.as_bytes();
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| strip_zeros(r.cert_id.serial_number.as_bytes()) == strip_zeros(serial))
        .ok_or_else(|| {
            let theirs: Vec<String> = basic
                .tbs_response_data
                .responses
                .iter()
                .map(|r| hex(strip_zeros(r.cert_id.serial_number.as_bytes())))
                .collect();
            bad(
                path,
                format!(
                    "it is for another certificate (serial {}; the certificate's is {})",
                    theirs.join(", "),
                    hex(strip_zeros(serial))
                ),
            )
        })?;
    if let Some(issuer) = issuer {
        let id = &single.cert_id;
        let alg = match id.hash_algorithm.oid.to_string().as_str() {
            OID_SHA1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            OID_SHA256 => Some(&ring::digest::SHA256),
            OID_SHA384 => Some(&ring::digest::SHA384),
            OID_SHA512 => Some(&ring::digest::SHA512),
            _ => None,
        };
        if let Some(alg) = alg {
            let name = der::Encode::to_der(&leaf.tbs_certificate.issuer)
                .map_err(|e| bad(path, e.to_string()))?;
            let key = issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            let same_name =
                ring::digest::digest(alg, &name).as_ref() == id.issuer_name_hash.as_bytes();
            let same_key = ring::digest::digest(alg, key).as_ref() == id.issuer_key_hash.as_bytes();
            if !(same_name && same_key) {
                return Err(bad(
                    path,
                    "it is for a certificate of another issuer (its CertID's issuer hashes do not match the chain)",
                ));
            }
        }
    }
    match &single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => {
            return Err(bad(path, "the responder says this certificate is revoked"))
        }
        CertStatus::Unknown(_) => {
            return Err(bad(path, "the responder does not know this certificate"))
        }
    }
    Ok(Stapled {
        der,
        next_update: single.next_update.map(|t| t.0.to_system_time()),
    })
}

/// What `ringlb check` warns about a listener's OCSP responses: expired ones (they are not
/// stapled until renewed), as "listener 'web': tls.certificates[0].ocsp: ...".
pub fn warnings(l: &crate::config::ListenerConfig) -> Vec<String> {
    let mut out = Vec::new();
    let Some(tls) = &l.tls else {
        return out;
    };
    for (i, files) in tls.certificates.iter().enumerate() {
        let Some(path) = &files.ocsp else { continue };
        let Ok(ck) = super::load_certified_key(&files.cert, &files.key) else {
            continue;
        };
        if let Ok(s) = load(path, &ck.cert) {
            if s.expired() {
                let when = s
                    .next_update
                    .map(|t| {
                        let mut b = Vec::new();
                        crate::access_log::write_rfc3339(&mut b, t);
                        String::from_utf8_lossy(&b).into_owned()
                    })
                    .unwrap_or_default();
                out.push(format!(
                    "listener '{}': tls.certificates[{i}].ocsp: {}: the OCSP response expired (nextUpdate {when}); it is not stapled until the file is renewed",
                    l.name,
                    path.display()
                ));
            }
        }
    }
    out
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
