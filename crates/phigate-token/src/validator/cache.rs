//! The verified-token cache.
//!
//! Owns remembering successful validations (a TinyUFO keyed by the SHA-256 of
//! the token; the token itself is never stored), the rule for when a cached
//! entry is honoured (not past `exp` + leeway, and the key that verified it
//! still in the issuer's current, usable key set), and the hit/miss counters
//! ([`CacheStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::fetch::Issuer;
use crate::jwks::Key;
use crate::VerifiedToken;

/// Default size of the verified-token cache (entries).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// A successful validation, remembered until the token expires or its key
/// leaves the key set. Keyed by SHA-256 of the token (the token itself is
/// never stored).
struct CachedToken {
    digest: [u8; 32],
    token: Arc<VerifiedToken>,
    issuer: Arc<Issuer>,
    key: Arc<Key>,
    /// `exp` + leeway, seconds since the epoch.
    valid_until: u64,
}

/// Verified-token cache counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The cache (absent when disabled) and its counters.
pub(super) struct TokenCache {
    cache: Option<tinyufo::TinyUfo<[u8; 32], Arc<CachedToken>>>,
    stats: CacheStats,
}

impl TokenCache {
    /// A cache of `entries` entries; 0 disables it.
    pub(super) fn new(entries: usize) -> Self {
        Self {
            cache: build(entries),
            stats: CacheStats::default(),
        }
    }

    /// Resize (dropping every entry; counters are kept); 0 disables the cache.
    pub(super) fn set_capacity(&mut self, entries: usize) {
        self.cache = build(entries);
    }

    pub(super) fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The cache key for `token`, or `None` while the cache is disabled.
    pub(super) fn digest(&self, token: &str) -> Option<[u8; 32]> {
        self.cache.as_ref().map(|_| sha256(token.as_bytes()))
    }

    /// The remembered validation for `digest` if it still holds (a hit);
    /// otherwise a miss, and a stale entry is dropped.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
        let cache = self.cache.as_ref()?;
        if let Some(hit) = cache.get(digest) {
            if hit.digest == *digest && still_valid(&hit) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Some(hit.token.clone());
            }
            cache.remove(digest);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Remember that `token` was verified by `issuer`'s `key`.
    pub(super) fn put(
        &self,
        digest: [u8; 32],
        token: Arc<VerifiedToken>,
        issuer: Arc<Issuer>,
        key: Arc<Key>,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        let valid_until = token.expires_at.saturating_add(issuer.config.leeway.as_secs());
        let entry = CachedToken {
            digest,
            token,
            issuer,
            key,
            valid_until,
        };
        cache.put(digest, Arc::new(entry), 1);
    }
}

fn build(entries: usize) -> Option<tinyufo::TinyUfo<[u8; 32], Arc<CachedToken>>> {
    (entries > 0).then(|| tinyufo::TinyUfo::new(entries, entries))
}

/// A cached validation still holds: not expired, key still current and usable.
fn still_valid(c: &CachedToken) -> bool {
    if jsonwebtoken::get_current_timestamp() > c.valid_until {
        return false;
    }
    let Some(snap) = c.issuer.usable_keys(Instant::now()) else {
        return false;
    };
    snap.set
        .find(c.token.kid.as_deref())
        .is_some_and(|k| Arc::ptr_eq(k, &c.key))
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
