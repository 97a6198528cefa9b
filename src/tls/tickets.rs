//! Session ticket keys that ringlb owns, so a binary upgrade can hand them to the new process and
//! clients resume across it (rustls' own ticketer keeps its keys sealed inside).
//!
//! Built by the main thread with a listener's TLS config and shared read-only by every worker;
//! `encrypt`/`decrypt` run on the worker doing a handshake. Rotation is lock-free: the key set is an
//! immutable value behind an `ArcSwap`, replaced whole by whichever handshake first sees it due.
//!
//! A ticket is `key name (16) | nonce (12) | ChaCha20-Poly1305(state) + tag`, the key name being
//! the additional data, as rustls' own ticketer seals them. Each key seals for [`ROTATE_EVERY`];
//! the previous one still opens tickets for another period, so a ticket lives at most two.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// How long one key seals new tickets (and the lifetime clients are told).
pub const ROTATE_EVERY: u64 = 6 * 60 * 60;
const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Export format version (the first byte of [`TicketKeys::export`]).
const EXPORT_VERSION: u8 = 1;

struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(name: [u8; NAME_LEN], secret: [u8; KEY_LEN]) -> Option<Key> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &secret).ok()?;
        Some(Key {
            name,
            secret,
            aead: LessSafeKey::new(unbound),
        })
    }

    fn random(rng: &SystemRandom) -> Option<Key> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = [0u8; KEY_LEN];
        rng.fill(&mut name).ok()?;
        rng.fill(&mut secret).ok()?;
        Key::new(name, secret)
    }
}

/// The keys in force: `current` seals until `rotate_at` (Unix seconds); `previous` only opens.
struct Keys {
    current: Key,
    previous: Option<Key>,
    rotate_at: u64,
}

/// One listener's ticket keys (all its workers share them).
pub struct TicketKeys {
    keys: ArcSwap<Keys>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("TicketKeys").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketKeys {
    /// Fresh random keys; `None` only when the system's random source fails.
    pub fn generate() -> Option<TicketKeys> {
        let rng = SystemRandom::new();
        let current = Key::random(&rng)?;
        Some(TicketKeys {
            keys: ArcSwap::from_pointee(Keys {
                current,
                previous: None,
                rotate_at: now() + ROTATE_EVERY,
            }),
            rng,
        })
    }

    /// The keys as bytes, for the process an upgrade starts (sent over a local socketpair only).
    pub fn export(&self) -> Vec<u8> {
        let k = self.keys.load();
        let mut out = Vec::with_capacity(10 + 2 * (NAME_LEN + KEY_LEN));
        out.push(EXPORT_VERSION);
        out.extend_from_slice(&k.rotate_at.to_be_bytes());
        out.push(1 + u8::from(k.previous.is_some()));
        for key in std::iter::once(&k.current).chain(k.previous.as_ref()) {
            out.extend_from_slice(&key.name);
            out.extend_from_slice(&key.secret);
        }
        out
    }

    /// Keys from [`TicketKeys::export`]; `None` for anything malformed.
    pub fn import(bytes: &[u8]) -> Option<TicketKeys> {
        let (&version, rest) = bytes.split_first()?;
        if version != EXPORT_VERSION || rest.len() < 9 {
            return None;
        }
        let rotate_at = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let count = usize::from(rest[8]);
        let body = &rest[9..];
        if !(1..=2).contains(&count) || body.len() != count * (NAME_LEN + KEY_LEN) {
            return None;
        }
        let mut keys = body.chunks_exact(NAME_LEN + KEY_LEN).map(|c| {
            Key::new(
                c[..NAME_LEN].try_into().ok()?,
                c[NAME_LEN..].try_into().ok()?,
            )
        });
        let current = keys.next()??;
        let previous = match keys.next() {
            Some(k) => Some(k?),
            None => None,
        };
        Some(TicketKeys {
            keys: ArcSwap::from_pointee(Keys {
                current,
                previous,
                rotate_at,
            }),
            rng: SystemRandom::new(),
        })
    }

    /// The keys in force, rotated first when due.
    fn in_force(&self) -> Arc<Keys> {
        let k = self.keys.load_full();
        let t = now();
        if t < k.rotate_at {
            return k;
        }
        let Some(fresh) = Key::random(&self.rng) else {
            return k;
        };
        // After a quiet spell longer than a period the outgoing key is too old to open
        // anything: it is dropped, not kept as `previous`.
        let previous = if t < k.rotate_at + ROTATE_EVERY {
            Key::new(k.current.name, k.current.secret)
        } else {
            None
        };
        let next = Arc::new(Keys {
            current: fresh,
            previous,
            rotate_at: t + ROTATE_EVERY,
        });
        // Another worker may have rotated first: then its keys are the ones in force.
        self.keys.compare_and_swap(&k, next);
        self.keys.load_full()
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE_EVERY as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.in_force();
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        // Rotated first: a key past its time opens nothing, even after a quiet spell.
        let keys = self.in_force();
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_opens_with_the_same_keys_and_with_imported_ones_only() {
        let keys = TicketKeys::generate().expect("keys");
        let ticket = keys.encrypt(b"session state").expect("sealed");
        assert_eq!(
            keys.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let moved = TicketKeys::import(&keys.export()).expect("import");
        assert_eq!(
            moved.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let other = TicketKeys::generate().expect("keys");
        assert_eq!(other.decrypt(&ticket), None);
        let mut tampered = ticket.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(keys.decrypt(&tampered), None);
    }

    #[test]
    fn after_rotation_old_tickets_still_open_for_one_period() {
        let keys = TicketKeys::generate().expect("keys");
        let old = keys.encrypt(b"a").expect("sealed");
        // Make the rotation due.
        let k = keys.keys.load_full();
        keys.keys.store(Arc::new(Keys {
            current: Key::new(k.current.name, k.current.secret).expect("key"),
            previous: None,
            rotate_at: now() - 1,
        }));
        let new = keys.encrypt(b"b").expect("sealed");
        assert_ne!(old[..NAME_LEN], new[..NAME_LEN], "a new key seals");
        // A key that rotated out more than a period ago opens nothing.
        let stale = TicketKeys::generate().expect("keys");
        let ancient = stale.encrypt(b"c").expect("sealed");
        let k = stale.keys.load_full();
        stale.keys.store(Arc::new(Keys {
            current: Key::new(k.current.name, k.current.secret).expect("key"),
            previous: None,
            rotate_at: now().saturating_sub(ROTATE_EVERY + 1),
        }));
        assert_eq!(stale.decrypt(&ancient), None);
        assert_eq!(keys.decrypt(&old).as_deref(), Some(&b"a"[..]));
        // The exported set carries both keys.
        let moved = TicketKeys::import(&keys.export()).expect("import");
        assert_eq!(moved.decrypt(&old).as_deref(), Some(&b"a"[..]));
        assert_eq!(moved.decrypt(&new).as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn malformed_exports_are_refused() {
        assert!(TicketKeys::import(&[]).is_none());
        assert!(TicketKeys::import(&[9; 10]).is_none());
        let mut good = TicketKeys::generate().expect("keys").export();
        good.pop();
        assert!(TicketKeys::import(&good).is_none());
    }
}
