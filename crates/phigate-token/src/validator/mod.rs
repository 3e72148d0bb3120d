//! The validator: per-issuer key caches and the validation sequence.
//!
//! [`Validator`] glues three parts together:
//! - `cache`: the verified-token cache and its rules;
//! - `verify`: pure verification of one token against a snapshot of its
//!   issuer's keys and configuration;
//! - `fetch`: key fetching (single flight per issuer), per-issuer key state,
//!   and the background refresher that also watches `jwks_file` sources.
//!
//! Opaque (non-JWT) tokens go to `introspect` instead: RFC 7662 introspection
//! at the one issuer that configures it, with its own cache.
//!
//! When `verify` reports a `kid` the snapshot does not hold, the validator
//! asks `fetch` for the keys to retry against (the current set if it has
//! changed meanwhile, else after a cooldown-limited, shared refetch waited
//! for at most `fetch_wait`) and verifies once more against that snapshot.

mod cache;
mod fetch;
mod introspect;
mod logout;
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
use introspect::Introspector;
pub use introspect::{
    ClientAuth, IntrospectionConfig, DEFAULT_INTROSPECTION_CACHE_TTL,
    DEFAULT_INTROSPECTION_NEGATIVE_CACHE_TTL, DEFAULT_INTROSPECTION_TIMEOUT,
    MAX_INTROSPECTION_RESPONSE_BYTES,
};
pub use logout::{LogoutError, LogoutRules, LogoutToken, BACKCHANNEL_LOGOUT_EVENT, DEFAULT_LOGOUT_MAX_AGE};
use verify::Unverified;

use crate::{ConfigError, FetchObserver, IssuerConfig, TokenError, VerifiedToken};

/// Validates bearer tokens for a fixed set of issuers. Cheap to share (`Arc`).
pub struct Validator {
    issuers: HashMap<String, Arc<Issuer>>,
    order: Vec<Arc<Issuer>>,
    fetcher: Fetcher,
    cache: TokenCache,
    /// For opaque tokens: the one issuer that configures introspection.
    introspector: Option<Introspector>,
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
        let mut introspectors = Vec::new();
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
            if let Some(ic) = &c.introspection {
                introspectors.push(Introspector::new(&c, ic)?);
            }
            let issuer = Arc::new(Issuer::new(c));
            if map.insert(issuer.config.issuer.clone(), issuer.clone()).is_some() {
                return Err(ConfigError::DuplicateIssuer(issuer.config.issuer.clone()));
            }
            order.push(issuer);
        }
        if introspectors.len() > 1 {
            let names = introspectors.iter().map(|i| i.issuer().to_string()).collect();
            return Err(ConfigError::MultipleIntrospectionIssuers(names));
        }
        let fetcher = Fetcher::new(observer)?;
        Ok(Self {
            issuers: map,
            order,
            fetcher,
            cache: TokenCache::new(DEFAULT_CACHE_ENTRIES),
            introspector: introspectors.pop(),
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

    /// Validate a bearer token: a compact JWS locally, an opaque token by
    /// introspection.
    ///
    /// A JWT validated before is answered from the verified-token cache
    /// (keyed by its SHA-256) as long as it has not expired and the key that
    /// verified it is still in the issuer's current, usable key set.
    ///
    /// A token that is not a JWT (see `introspect`) goes to the issuer that
    /// configures [`crate::IssuerConfig::introspection`] (answers cached, see
    /// [`IntrospectionConfig`]); [`TokenError::Inactive`] if it says the token
    /// is not active, [`TokenError::IntrospectionUnavailable`] if it cannot
    /// answer. Without such an issuer it is [`TokenError::Malformed`].
    pub async fn validate(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let cap = self.max_token_bytes();
        if token.is_empty() || token.len() > cap {
            return Err(TokenError::Malformed);
        }
        if let Some(introspector) = &self.introspector {
            if !introspect::is_jwt(token) {
                return introspector.validate(token).await;
            }
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

    /// Validate an OpenID Connect Back-Channel Logout token (§2.4–2.6), as
    /// posted to the back-channel logout endpoint.
    ///
    /// The token is verified with its issuer's keys through the same fetch
    /// path as [`Validator::validate`] (an unknown `kid` may trigger a
    /// cooldown-limited refetch; without usable keys it fails closed with
    /// [`LogoutError::KeysUnavailable`]), with an algorithm the issuer
    /// allows. Then: `aud` names one of `rules.client_ids`; `iat` is at most
    /// `rules.max_age` old and at most the issuer's `leeway` ahead; `exp`, if
    /// present, has not passed (with `leeway`); `jti` is present; `sid`
    /// and/or `sub` is present; `events` holds [`BACKCHANNEL_LOGOUT_EVENT`]
    /// with an object value; `nonce` is absent. `typ`, if present, is
    /// `logout+jwt` or `JWT`; the issuer's access-token `typ` rules and
    /// [`crate::IssuerConfig::max_token_lifetime`] do not apply. The
    /// verified-token cache is not used. `jti` replay is the caller's to
    /// check.
    pub async fn validate_logout_token(
        &self,
        token: &str,
        rules: &LogoutRules<'_>,
    ) -> Result<LogoutToken, LogoutError> {
        logout::validate(self, token, rules).await
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
