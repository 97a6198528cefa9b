//! Certificate chains and keys from PEM files, and the SNI resolver that picks one by name.
//!
//! Loading runs on the main thread (config validation and start); the resolver is immutable after
//! it is built and is called by rustls on whichever worker runs a handshake.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{read_certs, TlsError};

/// Longest name the resolver looks up (a DNS name is at most 253 characters).
pub const MAX_SNI_NAME: usize = 253;

/// Loads a PEM chain and its key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    if let Some(first) = chain.first() {
        webpki::EndEntityCert::try_from(first).map_err(|e| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let data = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let der = rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Pem {
            path: key.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_path_buf(),
        })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        TlsError::UnsupportedKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        // A key type that cannot state its public key: rustls checks it at the first handshake.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(_) => Err(TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
    }
}

/// Config-time check of one `{ cert, key }` pair (what `ringlb check` reports).
/// Checks that `cert` and `key` load and belong together, and that `ocsp` (when given) is a good
/// OCSP response about that certificate.
pub fn check_pair(cert: &Path, key: &Path, ocsp: Option<&Path>) -> Result<(), TlsError> {
    let ck = load_certified_key(cert, key)?;
    if let Some(o) = ocsp {
        super::ocsp::load(o, &ck.cert)?;
    }
    Ok(())
}

/// The DNS names a certificate answers for: its SAN DNS entries, or its subject CN when it has
/// none. Lower-cased; wildcards keep their "*." prefix.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let sans: Vec<String> = ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if !sans.is_empty() {
        return sans;
    }
    common_name(ee.subject())
        .map(|cn| vec![cn.to_ascii_lowercase()])
        .unwrap_or_default()
}

/// The first commonName (OID 2.5.4.3) in a DER-encoded Name, when it is a string type.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN_OID.len()).position(|w| w == CN_OID)?;
    let rest = subject.get(at + CN_OID.len()..)?;
    let (&tag, rest) = rest.split_first()?;
    // UTF8String, PrintableString, IA5String.
    if !matches!(tag, 0x0c | 0x13 | 0x16) {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    // Short-form lengths only: a CN is at most 64 characters.
    if len >= 0x80 {
        return None;
    }
    let value = rest.get(..len as usize)?;
    std::str::from_utf8(value).ok().map(str::to_string)
}

/// Picks a certificate by the client's SNI name: exact name first, then a `*.` wildcard covering
/// exactly one label; without SNI or without a match, the listener's first certificate.
#[derive(Debug)]
pub struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// Wildcard certificates by the part after "*.".
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// The first key is the default. Earlier certificates win when two claim the same name.
    pub fn new(keys: Vec<CertifiedKey>) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let Some(ee) = k.cert.first() else { continue };
            for name in certificate_names(ee) {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(name).or_insert(i),
                };
            }
        }
        SniResolver {
            keys: keys.into_iter().map(Arc::new).collect(),
            exact,
            wildcard,
        }
    }

    /// The index of the certificate serving `name` (`None`: no SNI).
    pub fn choose(&self, name: Option<&str>) -> usize {
        let Some(name) = name.filter(|n| n.len() <= MAX_SNI_NAME) else {
            return 0;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.choose(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(names: &[&str]) -> CertifiedKey {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).expect("key");
        CertifiedKey::new(vec![c.cert.der().clone()], signer)
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let r = SniResolver::new(vec![
            key_for(&["default.test"]),
            key_for(&["api.example.com"]),
            key_for(&["*.example.org"]),
        ]);
        assert_eq!(r.choose(Some("api.example.com")), 1);
        assert_eq!(r.choose(Some("API.Example.COM.")), 1);
        assert_eq!(r.choose(Some("www.example.org")), 2);
        // A wildcard covers one label only, and not the bare parent.
        assert_eq!(r.choose(Some("a.b.example.org")), 0);
        assert_eq!(r.choose(Some("example.org")), 0);
        assert_eq!(r.choose(Some("unknown.test")), 0);
        assert_eq!(r.choose(None), 0);
    }

    #[test]
    fn common_name_is_used_without_sans() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-only.test");
        let kp = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&kp).expect("cert");
        assert_eq!(certificate_names(cert.der()), vec!["cn-only.test"]);
    }
}
