//! Admission control at the door: allow/deny lists, per-client-IP connection caps and request
//! rates, the per-worker connection cap, and a rate limit on rejection logging.
//!
//! Runs on a worker thread. One `Guard` per listener per worker, owned by that worker (`RefCell`,
//! no locks, nothing shared is written). Per-IP state is per worker: a client's connections are
//! spread over workers by the kernel, so a limit of N admits at most N per worker. The tables are
//! bounded (`MAX_TRACKED_IPS`) and idle entries expire, so a flood of distinct addresses cannot
//! grow them without bound.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::Limits;

/// Most client addresses one worker tracks per listener for rate limiting.
pub const MAX_TRACKED_IPS: usize = 65_536;
/// Rejections one worker logs per second; the rest are counted and summarized.
pub const MAX_REJECTION_LOGS_PER_SEC: u32 = 10;
/// `Retry-After` sent with 429.
pub const RETRY_AFTER_SECS: &str = "1";

/// Why a connection or request was refused (the label of `ringlb_rejections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    AclDenied = 0,
    IpConnections = 1,
    WorkerConnections = 2,
    RateLimited = 3,
    HeaderTimeout = 4,
    BodyTimeout = 5,
    HeaderTooLarge = 6,
    UriTooLong = 7,
    BodyTooLarge = 8,
    BadRequest = 9,
    NotImplemented = 10,
    Version = 11,
}

pub const REJECTIONS: [Rejection; 12] = [
    Rejection::AclDenied,
    Rejection::IpConnections,
    Rejection::WorkerConnections,
    Rejection::RateLimited,
    Rejection::HeaderTimeout,
    Rejection::BodyTimeout,
    Rejection::HeaderTooLarge,
    Rejection::UriTooLong,
    Rejection::BodyTooLarge,
    Rejection::BadRequest,
    Rejection::NotImplemented,
    Rejection::Version,
];

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::AclDenied => "acl_denied",
            Rejection::IpConnections => "ip_connections",
            Rejection::WorkerConnections => "worker_connections",
            Rejection::RateLimited => "rate_limited",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::UriTooLong => "uri_too_long",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BadRequest => "bad_request",
            Rejection::NotImplemented => "not_implemented",
            Rejection::Version => "version_not_supported",
        }
    }

    /// The rejection a request error's status stands for.
    pub fn from_status(status: u16) -> Rejection {
        match status {
            408 => Rejection::HeaderTimeout,
            413 => Rejection::BodyTooLarge,
            414 => Rejection::UriTooLong,
            429 => Rejection::RateLimited,
            431 => Rejection::HeaderTooLarge,
            501 => Rejection::NotImplemented,
            505 => Rejection::Version,
            _ => Rejection::BadRequest,
        }
    }
}

/// Allow and deny lists, checked at accept. IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Acl {
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Acl {
        Acl {
            allow: allow.to_vec(),
            deny: deny.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Deny wins; a non-empty allow list admits only its members.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// A token bucket in thousandths of a token: `rate` per second, burst twice the rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    last: Instant,
}

/// One worker's admission state for one listener.
pub struct Guard {
    acl: Acl,
    max_conns_per_ip: u32,
    rate: u64,
    conns: RefCell<HashMap<IpAddr, u32>>,
    buckets: RefCell<HashMap<IpAddr, Bucket>>,
    log_window: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl Guard {
    pub fn new(limits: &Limits) -> Guard {
        Guard {
            acl: Acl::new(&limits.allow, &limits.deny),
            max_conns_per_ip: limits.max_connections_per_ip,
            rate: u64::from(limits.requests_per_second_per_ip),
            conns: RefCell::new(HashMap::new()),
            buckets: RefCell::new(HashMap::new()),
            log_window: Cell::new(None),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Checks a new connection from `ip`; on success it is counted until `release`.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Rejection> {
        if !self.acl.is_empty() && !self.acl.admits(ip) {
            return Err(Rejection::AclDenied);
        }
        if self.max_conns_per_ip > 0 {
            let mut conns = self.conns.borrow_mut();
            let n = conns.entry(ip.to_canonical()).or_insert(0);
            if *n >= self.max_conns_per_ip {
                if *n == 0 {
                    conns.remove(&ip.to_canonical());
                }
                return Err(Rejection::IpConnections);
            }
            *n += 1;
        }
        Ok(())
    }

    /// Ends a connection admitted by `admit`.
    pub fn release(&self, ip: IpAddr) {
        if self.max_conns_per_ip == 0 {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        let key = ip.to_canonical();
        if let Some(n) = conns.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&key);
            }
        }
    }

    /// Takes a token for one request from `ip`; false = over the rate (answer 429).
    #[inline]
    pub fn allow_request(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let cap = self.rate * 2 * 1000;
        let mut buckets = self.buckets.borrow_mut();
        let key = ip.to_canonical();
        if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED_IPS {
            evict(&mut buckets, now, self.rate);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            milli: cap,
            last: now,
        });
        let elapsed_ms = now.saturating_duration_since(b.last).as_millis() as u64;
        if elapsed_ms > 0 {
            // rate tokens per second = rate milli-tokens per millisecond.
            b.milli = (b.milli + elapsed_ms.saturating_mul(self.rate)).min(cap);
            b.last = now;
        }
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// How many client addresses are tracked (for tests and metrics).
    pub fn tracked(&self) -> (usize, usize) {
        (self.conns.borrow().len(), self.buckets.borrow().len())
    }

    /// Whether a rejection may be logged now; at most `MAX_REJECTION_LOGS_PER_SEC` per second,
    /// then one line says how many were not logged.
    pub fn may_log(&self, now: Instant) -> bool {
        let window = self.log_window.get();
        if window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            let skipped = self.suppressed.replace(0);
            if skipped > 0 {
                tracing::info!(
                    skipped,
                    "rejections not logged in the last second (rate-limited log)"
                );
            }
            self.log_window.set(Some(now));
            self.logged.set(0);
        }
        if self.logged.get() < MAX_REJECTION_LOGS_PER_SEC {
            self.logged.set(self.logged.get() + 1);
            true
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            false
        }
    }
}

/// Makes room in a full bucket table: first drop buckets that have refilled (idle clients), then,
/// under a flood of distinct addresses, an arbitrary eighth (HashMap order is randomized).
fn evict(buckets: &mut HashMap<IpAddr, Bucket>, now: Instant, rate: u64) {
    let full_after_ms = 2000u64;
    buckets.retain(|_, b| {
        let idle_ms = now.saturating_duration_since(b.last).as_millis() as u64;
        idle_ms < full_after_ms && b.milli + idle_ms.saturating_mul(rate) < rate * 2000
    });
    if buckets.len() >= MAX_TRACKED_IPS {
        let drop: Vec<IpAddr> = buckets.keys().take(MAX_TRACKED_IPS / 8).copied().collect();
        for k in drop {
            buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: u32, rate: u32, allow: &[&str], deny: &[&str]) -> Limits {
        Limits {
            max_connections_per_ip: conns,
            requests_per_second_per_ip: rate,
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
            ..Limits::default()
        }
    }

    #[test]
    fn acl_deny_wins_and_allow_restricts() {
        let acl = Acl::new(
            &[
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            &["10.1.0.0/16".parse().unwrap()],
        );
        assert!(acl.admits("10.2.3.4".parse().unwrap()));
        assert!(!acl.admits("10.1.3.4".parse().unwrap()));
        assert!(!acl.admits("192.168.1.1".parse().unwrap()));
        assert!(acl.admits("2001:db8::1".parse().unwrap()));
        assert!(!acl.admits("2001:db9::1".parse().unwrap()));
        // IPv4-mapped IPv6 is judged as IPv4.
        assert!(!acl.admits("::ffff:10.1.0.1".parse().unwrap()));
        assert!(acl.admits("::ffff:10.9.0.1".parse().unwrap()));
    }

    #[test]
    fn per_ip_connections_at_the_boundary_and_one_over() {
        let g = Guard::new(&limits(2, 0, &[], &[]));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.admit(ip), Ok(()));
        assert_eq!(g.admit(ip), Ok(()));
        assert_eq!(g.admit(ip), Err(Rejection::IpConnections));
        assert_eq!(
            g.admit("192.0.2.2".parse().unwrap()),
            Ok(()),
            "other clients unaffected"
        );
        g.release(ip);
        assert_eq!(g.admit(ip), Ok(()));
        g.release(ip);
        g.release(ip);
        g.release("192.0.2.2".parse().unwrap());
        assert_eq!(g.tracked().0, 0, "entries go away with their connections");
    }

    #[test]
    fn token_bucket_bursts_twice_the_rate_then_refills() {
        let g = Guard::new(&limits(0, 10, &[], &[]));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..25).filter(|_| g.allow_request(ip, t0)).count();
        assert_eq!(allowed, 20, "burst = 2 × rate");
        assert!(!g.allow_request(ip, t0));
        // 100 ms later: one more token (10/s).
        assert!(g.allow_request(ip, t0 + Duration::from_millis(100)));
        assert!(!g.allow_request(ip, t0 + Duration::from_millis(100)));
        // Another client has its own bucket.
        assert!(g.allow_request("192.0.2.9".parse().unwrap(), t0));
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let g = Guard::new(&limits(0, 5, &[], &[]));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_IPS as u32 + 10_000) {
            let ip = IpAddr::from(i.to_be_bytes());
            g.allow_request(ip, t0);
        }
        assert!(
            g.tracked().1 <= MAX_TRACKED_IPS,
            "tracked {}",
            g.tracked().1
        );
    }

    #[test]
    fn rejection_logging_is_rate_limited() {
        let g = Guard::new(&Limits::default());
        let t0 = Instant::now();
        let logged = (0..1000).filter(|_| g.may_log(t0)).count();
        assert_eq!(logged, MAX_REJECTION_LOGS_PER_SEC as usize);
        assert!(
            g.may_log(t0 + Duration::from_secs(1)),
            "a new second logs again"
        );
    }
}
