//! Per-client limits: invalid-token attempts, requests in flight, and
//! repeated error log lines.
//!
//! Rate limit on invalid-token attempts per client address.
//!
//! Signature verification is the expensive part of a request; a flood of
//! tokens with invalid signatures must not starve valid traffic. After
//! `invalid_tokens` failures within `window` from one address, further
//! requests *carrying a token* from that address are refused with 429
//! `rate_limited` before any decoding or cryptography, until the window ends.
//! Valid tokens never count. Memory is bounded (per-shard entry cap).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::RateLimit;

const SHARDS: usize = 16;
const MAX_PER_SHARD: usize = 8192;

pub struct InvalidTokenLimiter {
    limit: RateLimit,
    shards: Vec<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl InvalidTokenLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, (Instant, u32)>> {
        let h = match ip {
            IpAddr::V4(v) => v
                .octets()
                .iter()
                .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(*b as usize)),
            IpAddr::V6(v) => v
                .octets()
                .iter()
                .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(*b as usize)),
        };
        &self.shards[h % SHARDS]
    }

    /// Whether requests with a token from `ip` are currently refused.
    pub fn is_limited(&self, ip: IpAddr) -> bool {
        if self.limit.invalid_tokens == 0 {
            return false;
        }
        let Ok(map) = self.shard(&ip).lock() else {
            return false;
        };
        map.get(&ip)
            .is_some_and(|(start, n)| start.elapsed() < self.limit.window && *n >= self.limit.invalid_tokens)
    }

    /// Count one invalid token from `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        if self.limit.invalid_tokens == 0 {
            return;
        }
        let Ok(mut map) = self.shard(&ip).lock() else {
            return;
        };
        if map.len() >= MAX_PER_SHARD && !map.contains_key(&ip) {
            let window = self.limit.window;
            map.retain(|_, (start, _)| start.elapsed() < window);
            if map.len() >= MAX_PER_SHARD {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.limit.window {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_after_n_failures_per_address_and_resets_after_the_window() {
        let l = InvalidTokenLimiter::new(RateLimit {
            invalid_tokens: 3,
            window: Duration::from_millis(200),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.is_limited(a));
            l.record_failure(a);
        }
        assert!(l.is_limited(a));
        assert!(!l.is_limited(b), "other addresses unaffected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!l.is_limited(a), "window over");
    }

    #[test]
    fn zero_disables_and_memory_is_bounded() {
        let off = InvalidTokenLimiter::new(RateLimit {
            invalid_tokens: 0,
            window: Duration::from_secs(10),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            off.record_failure(a);
        }
        assert!(!off.is_limited(a));
        let l = InvalidTokenLimiter::new(RateLimit {
            invalid_tokens: 1,
            window: Duration::from_secs(10),
        });
        for i in 0..(SHARDS * MAX_PER_SHARD + 1000) as u32 {
            l.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * MAX_PER_SHARD);
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(format!("`{s}`: bad prefix length"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
            _ => ip,
        };
        let ((net, width), (addr, _)) = (bits(self.net), bits(ip));
        if self.prefix == 0 {
            return true;
        }
        let shift = u32::from(width - self.prefix);
        (net >> shift) == (addr >> shift)
    }
}

/// The client address to rate-limit: the socket peer, unless the peer is a
/// trusted proxy — then the right-most address in `X-Forwarded-For` that is
/// not itself a trusted proxy (left-most entries are client-controlled and
/// never trusted). Unparsable headers fall back to the peer.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|c| c.contains(ip)) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "v4-mapped v6");
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &'static [&'static str]| v.iter().copied();
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), xff(&["1.2.3.4"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Trusted peer: right-most non-trusted hop; spoofed left entries ignored.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                xff(&["6.6.6.6, 198.51.100.7", "10.0.0.5"]),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // Garbage or no header: the peer.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), xff(&["garbage"]), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), xff(&[]), &trusted),
            Some(ip("10.0.0.2"))
        );
    }
}

/// Requests in flight per client address. An audit slot is held from the
/// decision until the record is committed (the upstream's response
/// headers), and while a forwarded request body streams in; without a
/// per-client bound, a few clients sending bodies slowly could hold every
/// slot and get everyone else 503 `audit_unavailable`.
///
/// Counters live in a fixed table of buckets indexed by a keyed hash of the
/// address (random key per process, so a client cannot aim at another's
/// bucket): memory is constant and the check is one atomic add. Two
/// addresses sharing a bucket share its cap.
pub struct InFlightLimiter {
    cap: u32,
    buckets: Box<[AtomicU32]>,
    keys: std::collections::hash_map::RandomState,
}

const IN_FLIGHT_BUCKETS: usize = 4096;

/// Releases one in-flight place when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    limiter: Arc<InFlightLimiter>,
    bucket: usize,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.limiter.buckets[self.bucket].fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for InFlightLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightLimiter").field("cap", &self.cap).finish()
    }
}

impl InFlightLimiter {
    /// At most `cap` requests in flight per client address (0: unlimited).
    pub fn new(cap: u32) -> Arc<Self> {
        Arc::new(InFlightLimiter {
            cap,
            buckets: (0..IN_FLIGHT_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            keys: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Take a place for `ip`, or `None` when it already has `cap` in flight.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<InFlightGuard> {
        use std::hash::BuildHasher;
        let bucket = match ip {
            Some(ip) => (self.keys.hash_one(ip) as usize) % IN_FLIGHT_BUCKETS,
            None => 0,
        };
        let b = &self.buckets[bucket];
        let before = b.fetch_add(1, Ordering::AcqRel);
        if self.cap > 0 && before >= self.cap {
            b.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightGuard {
            limiter: self.clone(),
            bucket,
        })
    }
}

/// Logs each kind of repeated error at most once per period, with the
/// number of occurrences of that kind suppressed in between (metrics carry
/// the full count). Kinds are independent: a flood of one never hides the
/// first occurrence of another.
#[derive(Debug)]
pub struct LogLimiter {
    period: std::time::Duration,
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(period: std::time::Duration) -> Self {
        LogLimiter {
            period,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when this occurrence of `kind` should be logged,
    /// with the count of occurrences of `kind` not logged since the last one.
    pub fn should_log(&self, kind: &'static str) -> Option<u64> {
        self.should_log_at(kind, Instant::now())
    }

    fn should_log_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.get_mut(kind) {
            Some((last, n)) if now.duration_since(*last) < self.period => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                let suppressed = *n;
                *last = now;
                *n = 0;
                Some(suppressed)
            }
            None => {
                s.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn caps_each_address_and_releases_on_drop() {
        let l = InFlightLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let g1 = l.acquire(Some(a)).unwrap();
        let g2 = l.acquire(Some(a)).unwrap();
        assert!(l.acquire(Some(a)).is_none(), "third in flight refused");
        drop(g1);
        let g3 = l.acquire(Some(a)).unwrap();
        drop((g2, g3));
        let unlimited = InFlightLimiter::new(0);
        let guards: Vec<_> = (0..100).map(|_| unlimited.acquire(Some(a)).unwrap()).collect();
        assert_eq!(guards.len(), 100);
    }

    #[test]
    fn log_limiter_counts_what_it_suppresses() {
        let l = LogLimiter::new(std::time::Duration::from_secs(3600));
        assert_eq!(l.should_log("a"), Some(0));
        for _ in 0..5 {
            assert_eq!(l.should_log("a"), None);
        }
        // Another kind is not hidden by the first one's flood.
        assert_eq!(l.should_log("b"), Some(0));
        assert_eq!(l.should_log("b"), None);
        let l = LogLimiter::new(std::time::Duration::ZERO);
        assert_eq!(l.should_log("a"), Some(0));
        for _ in 0..3 {
            assert_eq!(l.should_log("a"), Some(0));
        }
        let l = LogLimiter::new(std::time::Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        assert_eq!(l.should_log_at("a", at(0)), Some(0));
        assert_eq!(l.should_log_at("a", at(10)), None);
        assert_eq!(l.should_log_at("a", at(999)), None);
        assert_eq!(
            l.should_log_at("a", at(1000)),
            Some(2),
            "the suppressed count is reported"
        );
        assert_eq!(l.should_log_at("a", at(1500)), None);
    }
}
