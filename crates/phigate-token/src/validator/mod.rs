//! The validator: per-issuer key caches and the validation sequence.
//!
//! [`Validator`] glues three parts together:
//! - `cache`: the verified-token cache and its rules;
//! - `verify`: pure verification of one token against a snapshot of its
//!   issuer's keys and configuration;
//! - `fetch`: key fetching (single flight per issuer), per-issuer key state,
//!   and the background refresher that also watches `jwks_file` sources.
//!
//! When `verify` reports a `kid` the snapshot does not hold, the validator
//! asks `fetch` for the keys to retry against (the current set if it has
//! changed meanwhile, else after a cooldown-limited, shared refetch waited
//! for at most `fetch_wait`) and verifies once more against that snapshot.

mod cache;
mod fetch;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::AlgorithmFamily;
use tokio::sync::watch;

use cache::TokenCache;
pub use cache::{CacheStats, DEFAULT_CACHE_ENTRIES};
pub use fetch::FILE_POLL_INTERVAL;
use fetch::{Fetcher, Issuer};
use verify::Unverified;

use crate::{ConfigError, FetchObserver, IssuerConfig, TokenError, VerifiedToken};

/// Validates bearer tokens for a fixed set of issuers. Cheap to share (`Arc`).
pub struct Validator {
    issuers: HashMap<String, Arc<Issuer>>,
    order: Vec<Arc<Issuer>>,
    fetcher: Fetcher,
    cache: TokenCache,
}

impl Validator {
    /// Check the configuration and build a validator. No keys are fetched
    /// yet: call [`Validator::refresh_all`] or run [`Validator::run_refresher`].
    pub fn new(issuers: Vec<IssuerConfig>, observer: Arc<dyn FetchObserver>) -> Result<Self, ConfigError> {
        if issuers.is_empty() {
            return Err(ConfigError::NoIssuers);
        }
        let mut map = HashMap::new();
        let mut order = Vec::new();
        for c in issuers {
            if c.audiences.is_empty() {
                return Err(ConfigError::NoAudience(c.issuer));
            }
            if c.algorithms.is_empty() {
                return Err(ConfigError::NoAlgorithms(c.issuer));
            }
            if let Some(alg) = c.algorithms.iter().find(|a| a.family() == AlgorithmFamily::Hmac) {
                return Err(ConfigError::ForbiddenAlgorithm {
                    issuer: c.issuer.clone(),
                    alg: *alg,
                });
            }
            let issuer = Arc::new(Issuer::new(c));
            if map.insert(issuer.config.issuer.clone(), issuer.clone()).is_some() {
                return Err(ConfigError::DuplicateIssuer(issuer.config.issuer.clone()));
            }
            order.push(issuer);
        }
        let fetcher = Fetcher::new(observer)?;
        Ok(Self {
            issuers: map,
            order,
            fetcher,
            cache: TokenCache::new(DEFAULT_CACHE_ENTRIES),
        })
    }

    /// Size the verified-token cache (entries); 0 disables it.
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache.set_capacity(entries);
        self
    }

    /// Verified-token cache hits and misses.
    pub fn cache_stats(&self) -> &CacheStats {
        self.cache.stats()
    }

    /// Configured issuers, in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &IssuerConfig> {
        self.order.iter().map(|i| &i.config)
    }

    /// Per issuer: why its last key fetch failed (`None`: it succeeded or
    /// none ran yet).
    pub fn fetch_errors(&self) -> Vec<(String, Option<String>)> {
        self.order
            .iter()
            .map(|i| (i.config.issuer.clone(), i.last_error()))
            .collect()
    }

    /// True once every issuer has usable (not too stale) keys.
    pub fn is_ready(&self) -> bool {
        let now = Instant::now();
        self.order.iter().all(|i| i.usable_keys(now).is_some())
    }

    /// Per issuer: number of keys and seconds since the last good fetch.
    pub fn key_status(&self) -> Vec<(String, usize, Option<Duration>)> {
        self.order
            .iter()
            .map(|i| {
                let (n, age) = i.key_status();
                (i.config.issuer.clone(), n, age)
            })
            .collect()
    }

    /// Fetch every issuer's keys once (ignores cooldowns) and wait for the
    /// results (not bounded by `fetch_wait`). Returns whether all succeeded.
    pub async fn refresh_all(&self) -> bool {
        self.fetcher.refresh_all(&self.order).await
    }

    /// Keep every issuer's keys fresh until `shutdown` flips to true: retry
    /// every second while an issuer has no keys (with backoff to 30 s after
    /// repeated failures), otherwise refresh at 80 % of the TTL. `jwks_file`
    /// sources are checked for changes every [`FILE_POLL_INTERVAL`] and a
    /// changed file is applied at once (removed keys included); an invalid
    /// file keeps the previous keys and is reported once per change
    /// ([`crate::FetchOutcome::Invalid`]). Fetches run in the background, one
    /// at a time per issuer, shared with requests that need keys.
    pub async fn run_refresher(&self, shutdown: watch::Receiver<bool>) {
        fetch::run_refresher(&self.fetcher, &self.order, shutdown).await
    }

    /// Validate a compact JWS bearer token.
    ///
    /// A token validated before is answered from the verified-token cache
    /// (keyed by its SHA-256) as long as it has not expired and the key that
    /// verified it is still in the issuer's current, usable key set.
    pub async fn validate(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let cap = self.max_token_bytes();
        if token.is_empty() || token.len() > cap {
            return Err(TokenError::Malformed);
        }
        let digest = self.cache.digest(token);
        if let Some(d) = &digest {
            if let Some(hit) = self.cache.get(d) {
                return Ok(hit);
            }
        }
        let (verified, issuer, key) = self.validate_uncached(token).await?;
        let verified = Arc::new(verified);
        if let Some(d) = digest {
            self.cache.put(d, verified.clone(), issuer, key);
        }
        Ok(verified)
    }

    fn max_token_bytes(&self) -> usize {
        self.order
            .iter()
            .map(|i| i.config.max_token_bytes)
            .max()
            .unwrap_or(crate::DEFAULT_MAX_TOKEN_BYTES)
    }

    async fn validate_uncached(
        &self,
        token: &str,
    ) -> Result<(VerifiedToken, Arc<Issuer>, Arc<crate::Key>), TokenError> {
        let parsed = verify::parse(token)?;
        let issuer = self
            .issuers
            .get(parsed.issuer()?)
            .cloned()
            .ok_or(TokenError::UnknownIssuer)?;
        let pre = parsed.check_for(token, &issuer.config)?;
        let snap = self.fetcher.keys_for(&issuer).await?;
        let pre = match verify::verify(token, pre, &issuer.config, &snap.set) {
            Ok((verified, key)) => return Ok((verified, issuer, key)),
            Err(Unverified::Rejected(e)) => return Err(e),
            Err(Unverified::UnknownKid(pre)) => pre,
        };
        // Not in the current keys: the issuer may have rotated. Retry against
        // a set that changed meanwhile, or refetch (cooldown-limited, shared,
        // waited for at most `fetch_wait`) and try once more.
        let snap = self
            .fetcher
            .refetch_for_unknown_kid(&issuer, pre.kid.as_deref(), snap.generation)
            .await?;
        match verify::verify(token, pre, &issuer.config, &snap.set) {
            Ok((verified, key)) => Ok((verified, issuer, key)),
            Err(Unverified::Rejected(e)) => Err(e),
            Err(Unverified::UnknownKid(pre)) => {
                if let Some(k) = pre.kid.as_deref() {
                    issuer.remember_unknown(k, snap.generation);
                }
                Err(TokenError::UnknownKey)
            }
        }
    }
}

#[cfg(test)]
mod tests;
