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
use std::sync::Mutex;
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
