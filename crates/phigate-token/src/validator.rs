//! The validator: per-issuer key caches and the validation sequence.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::{Map, Value};
use tokio::sync::{watch, Mutex};

use crate::jwks::{parse_jwks, KeySet, MAX_JWKS_BYTES};
use crate::{ConfigError, FetchObserver, FetchOutcome, IssuerConfig, KeySource, TokenError, VerifiedToken};

/// Bounds applied to a `Cache-Control: max-age` from the key server.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retry interval while an issuer has no keys yet.
const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(1);
/// Refresh this fraction of the TTL after a fetch (ahead of expiry).
const REFRESH_AT: f64 = 0.8;
/// Default size of the verified-token cache (entries).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// Most remembered unknown `kid`s per issuer (negative cache).
const NEGATIVE_KIDS: usize = 1024;
/// Largest OIDC discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// A successful validation, remembered until the token expires or its key
/// leaves the key set. Keyed by SHA-256 of the token (the token itself is
/// never stored).
struct CachedToken {
    digest: [u8; 32],
    token: Arc<VerifiedToken>,
    issuer: Arc<Issuer>,
    key: Arc<crate::Key>,
    /// `exp` + leeway, seconds since the epoch.
    valid_until: u64,
}

/// Verified-token cache counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Keys currently served for one issuer.
struct Snapshot {
    set: KeySet,
    fetched_at: Instant,
    ttl: Duration,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Last refetch caused by an unknown `kid` (the cooldown clock).
    last_kid_refetch: Option<Instant>,
    /// Consecutive failures since the last good fetch (for retry backoff).
    failures: u32,
}

struct Issuer {
    config: IssuerConfig,
    keys: ArcSwapOption<Snapshot>,
    fetch: Mutex<FetchState>,
    /// Unknown kids seen since the last refetch (answered without waiting).
    negative: StdMutex<HashMap<String, Instant>>,
    /// `jwks_uri` found by OIDC discovery.
    discovered: StdMutex<Option<String>>,
}

/// Validates bearer tokens for a fixed set of issuers. Cheap to share (`Arc`).
pub struct Validator {
    issuers: HashMap<String, Arc<Issuer>>,
    order: Vec<Arc<Issuer>>,
    http: reqwest::Client,
    observer: Arc<dyn FetchObserver>,
    cache: Option<tinyufo::TinyUfo<[u8; 32], Arc<CachedToken>>>,
    cache_stats: CacheStats,
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
            let issuer = Arc::new(Issuer {
                config: c,
                keys: ArcSwapOption::empty(),
                fetch: Mutex::new(FetchState::default()),
                negative: StdMutex::new(HashMap::new()),
                discovered: StdMutex::new(None),
            });
            if map.insert(issuer.config.issuer.clone(), issuer.clone()).is_some() {
                return Err(ConfigError::DuplicateIssuer(issuer.config.issuer.clone()));
            }
            order.push(issuer);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(0)
            .user_agent(concat!("phigate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Self {
            issuers: map,
            order,
            http,
            observer,
            cache: Some(tinyufo::TinyUfo::new(
                DEFAULT_CACHE_ENTRIES,
                DEFAULT_CACHE_ENTRIES,
            )),
            cache_stats: CacheStats::default(),
        })
    }

    /// Size the verified-token cache (entries); 0 disables it.
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache = (entries > 0).then(|| tinyufo::TinyUfo::new(entries, entries));
        self
    }

    /// Verified-token cache hits and misses.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.cache_stats
    }

    /// Configured issuers, in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &IssuerConfig> {
        self.order.iter().map(|i| &i.config)
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
                let snap = i.keys.load();
                let (n, age) = match snap.as_ref() {
                    Some(s) => (s.set.len(), Some(s.fetched_at.elapsed())),
                    None => (0, None),
                };
                (i.config.issuer.clone(), n, age)
            })
            .collect()
    }

    /// Fetch every issuer's keys once (ignores cooldowns). Returns whether all succeeded.
    pub async fn refresh_all(&self) -> bool {
        let mut ok = true;
        for i in &self.order {
            let mut st = i.fetch.lock().await;
            ok &= self.fetch_locked(i, &mut st).await;
        }
        ok
    }

    /// Keep every issuer's keys fresh until `shutdown` flips to true: retry
    /// every second while an issuer has no keys (with backoff to 30 s after
    /// repeated failures), otherwise refresh at 80 % of the TTL.
    pub async fn run_refresher(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = Instant::now();
            let mut next = Duration::from_secs(300);
            for i in &self.order {
                let mut st = i.fetch.lock().await;
                if i.next_refresh(&st, now) <= now {
                    self.fetch_locked(i, &mut st).await;
                }
                let after = Instant::now();
                next = next.min(i.next_refresh(&st, after).saturating_duration_since(after));
            }
            let wait = next.max(Duration::from_millis(200));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
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
        let digest = self.cache.as_ref().map(|_| sha256(token.as_bytes()));
        if let (Some(cache), Some(d)) = (&self.cache, &digest) {
            if let Some(hit) = cache.get(d) {
                if hit.digest == *d && self.still_valid(&hit) {
                    self.cache_stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(hit.token.clone());
                }
                cache.remove(d);
            }
            self.cache_stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        let (verified, issuer, key) = self.validate_uncached(token).await?;
        let verified = Arc::new(verified);
        if let (Some(cache), Some(d)) = (&self.cache, digest) {
            let valid_until = verified.expires_at.saturating_add(issuer.config.leeway.as_secs());
            let entry = CachedToken {
                digest: d,
                token: verified.clone(),
                issuer,
                key,
                valid_until,
            };
            cache.put(d, Arc::new(entry), 1);
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

    /// A cached validation still holds: not expired, key still current and usable.
    fn still_valid(&self, c: &CachedToken) -> bool {
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

    async fn validate_uncached(
        &self,
        token: &str,
    ) -> Result<(VerifiedToken, Arc<Issuer>, Arc<crate::Key>), TokenError> {
        let pre = self.precheck(token)?;
        let issuer = pre.issuer;
        let now = Instant::now();
        let mut snap = issuer.usable_keys(now);
        if snap.is_none() && issuer.keys.load().is_none() {
            // Never had keys: try once (cooldown-limited) before failing closed.
            self.refetch_if_cool(&issuer).await;
            snap = issuer.usable_keys(Instant::now());
        }
        let Some(mut snap) = snap else {
            return Err(TokenError::KeysUnavailable);
        };
        let kid = pre.kid.as_deref();
        if snap.set.find(kid).is_none() {
            let Some(k) = kid else {
                return Err(TokenError::UnknownKey);
            };
            if k.len() > 256 || issuer.recently_unknown(k) {
                return Err(TokenError::UnknownKey);
            }
            self.refetch_if_cool(&issuer).await;
            match issuer.usable_keys(Instant::now()) {
                Some(s) => snap = s,
                None => return Err(TokenError::KeysUnavailable),
            }
            if snap.set.find(kid).is_none() {
                issuer.remember_unknown(k);
                return Err(TokenError::UnknownKey);
            }
        }
        let key = snap.set.find(kid).cloned().ok_or(TokenError::UnknownKey)?;
        if !key.accepts(pre.alg) {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let c = &issuer.config;
        let mut v = Validation::new(pre.alg);
        v.leeway = c.leeway.as_secs();
        v.set_audience(&c.audiences);
        v.set_issuer(&[&c.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.decoding, &v)
            .map_err(|e| map_jwt_error(e.kind()))?;
        // jsonwebtoken verified signature, exp, nbf, iss and aud; the payload
        // we parsed strictly is the one that was signed.
        let claims = pre.payload;
        let now_s = jsonwebtoken::get_current_timestamp();
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(TokenError::Malformed)?;
            if iat > (now_s + c.leeway.as_secs()) as f64 {
                return Err(TokenError::NotYetValid);
            }
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::Malformed)?;
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_string);
        let client_id = claims
            .get("client_id")
            .or_else(|| claims.get("azp"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let scopes = extract_scopes(&claims, c.scope_claim.as_deref());
        let roles = extract_roles(&claims, &c.roles_claim);
        let verified = VerifiedToken {
            issuer: c.issuer.clone(),
            subject,
            client_id,
            scopes,
            roles,
            expires_at,
            kid: pre.kid,
            claims: Arc::new(claims),
        };
        Ok((verified, issuer, key))
    }

    /// Structural checks before any key lookup or cryptography. The global
    /// size cap was checked by [`Validator::validate`]; here the alphabet (a
    /// compact JWS is base64url segments and dots, nothing else) and, once
    /// the issuer is known, its own cap.
    fn precheck(&self, token: &str) -> Result<Pre, TokenError> {
        let mut dots = 0usize;
        for b in token.bytes() {
            match b {
                b'.' => dots += 1,
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                _ => return Err(TokenError::Malformed),
            }
        }
        if dots != 2 {
            // JWE (5 parts), nested garbage, or a dot flood: all malformed.
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (h, p, s) = match (parts.next(), parts.next(), parts.next()) {
            // An empty signature is left to fail later (as `alg: none` or as a bad signature).
            (Some(h), Some(p), Some(s)) if !h.is_empty() && !p.is_empty() => (h, p, s),
            _ => return Err(TokenError::Malformed),
        };
        let _ = s;
        let header = decode_object(h)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenError::Malformed)?;
        if alg_name.eq_ignore_ascii_case("none") || alg_name.to_ascii_uppercase().starts_with("HS") {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let alg = Algorithm::from_str(alg_name).map_err(|_| TokenError::UnsupportedAlgorithm)?;
        if header.contains_key("crit") {
            // We understand no extensions, so any critical one must fail (RFC 7515 §4.1.11).
            return Err(TokenError::Malformed);
        }
        if let Some(cty) = header.get("cty") {
            let cty = cty.as_str().ok_or(TokenError::Malformed)?;
            if cty.eq_ignore_ascii_case("jwt") || cty.eq_ignore_ascii_case("application/jwt") {
                return Err(TokenError::Malformed); // nested token
            }
        }
        if header.contains_key("enc") || header.contains_key("zip") {
            return Err(TokenError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(TokenError::Malformed),
        };
        // `jwk`, `jku`, `x5u`, `x5c` headers are ignored: keys come only from
        // the issuer's configured key source.
        let payload = decode_object(p)?;
        let iss = payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("iss"))?;
        let issuer = self.issuers.get(iss).cloned().ok_or(TokenError::UnknownIssuer)?;
        let c = &issuer.config;
        if token.len() > c.max_token_bytes {
            return Err(TokenError::Malformed);
        }
        match header.get("typ") {
            None if c.require_typ => return Err(TokenError::Malformed),
            None => {}
            Some(Value::String(t)) => {
                let t = t.strip_prefix("application/").unwrap_or(t);
                if !c.allowed_typ.iter().any(|a| a.eq_ignore_ascii_case(t)) {
                    return Err(TokenError::Malformed);
                }
            }
            Some(_) => return Err(TokenError::Malformed),
        }
        if !c.algorithms.contains(&alg) {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        match payload.get("exp") {
            None => return Err(TokenError::MissingClaim("exp")),
            Some(v) if !v.is_number() => return Err(TokenError::Malformed),
            Some(_) => {}
        }
        for claim in ["nbf", "iat"] {
            if payload.get(claim).is_some_and(|v| !v.is_number()) {
                return Err(TokenError::Malformed);
            }
        }
        if !payload.contains_key("aud") {
            return Err(TokenError::MissingClaim("aud"));
        }
        Ok(Pre {
            issuer,
            alg,
            kid,
            payload,
        })
    }

    /// Refetch `issuer`'s keys unless a fetch happened within the cooldown.
    /// Concurrent callers queue on the lock and share one fetch.
    async fn refetch_if_cool(&self, issuer: &Arc<Issuer>) {
        let mut st = issuer.fetch.lock().await;
        let cooldown = issuer.config.unknown_kid_cooldown;
        if st.last_kid_refetch.is_some_and(|t| t.elapsed() < cooldown) {
            return;
        }
        st.last_kid_refetch = Some(Instant::now());
        self.fetch_locked(issuer, &mut st).await;
    }

    /// Fetch and install keys; caller holds the issuer's fetch lock.
    async fn fetch_locked(&self, issuer: &Issuer, st: &mut FetchState) -> bool {
        st.last_attempt = Some(Instant::now());
        let c = &issuer.config;
        let fetched = match &c.key_source {
            KeySource::JwksUri(uri) => self.fetch_http(uri, c.fetch_timeout).await,
            KeySource::Discovery => match self.discover(issuer).await {
                Ok(uri) => {
                    let r = self.fetch_http(&uri, c.fetch_timeout).await;
                    if r.is_err() {
                        // Re-discover next time: the jwks_uri may have moved.
                        if let Ok(mut d) = issuer.discovered.lock() {
                            *d = None;
                        }
                    }
                    r
                }
                Err(e) => Err(e),
            },
            KeySource::JwksFile(path) => read_file(path).await.map(|b| (b, None)),
        };
        let (outcome, count) = match fetched {
            Err(msg) => {
                tracing::warn!(issuer = %c.issuer, source = %c.key_source, error = %msg, "JWKS fetch failed; keeping previous keys");
                (FetchOutcome::Error, 0)
            }
            Ok((body, max_age)) => match parse_jwks(&body) {
                Err(e) => {
                    tracing::warn!(issuer = %c.issuer, source = %c.key_source, error = %e, "JWKS refused; keeping previous keys");
                    (FetchOutcome::Invalid, 0)
                }
                Ok(set) => {
                    let ttl = max_age.map(|a| a.clamp(MIN_TTL, MAX_TTL)).unwrap_or(c.jwks_ttl);
                    let n = set.len();
                    tracing::info!(issuer = %c.issuer, keys = n, kids = ?set.kids(), ttl_s = ttl.as_secs(), "JWKS loaded");
                    issuer.keys.store(Some(Arc::new(Snapshot {
                        set,
                        fetched_at: Instant::now(),
                        ttl,
                    })));
                    (FetchOutcome::Ok, n)
                }
            },
        };
        if outcome == FetchOutcome::Ok {
            st.failures = 0;
        } else {
            st.failures = st.failures.saturating_add(1);
        }
        self.observer.jwks_fetched(&c.issuer, outcome, count);
        outcome == FetchOutcome::Ok
    }

    /// The `jwks_uri` from the issuer's OIDC discovery document (cached).
    async fn discover(&self, issuer: &Issuer) -> Result<String, String> {
        if let Some(u) = issuer.discovered.lock().ok().and_then(|d| d.clone()) {
            return Ok(u);
        }
        let c = &issuer.config;
        let url = format!(
            "{}/.well-known/openid-configuration",
            c.issuer.trim_end_matches('/')
        );
        let (body, _) = self
            .fetch_http_capped(&url, c.fetch_timeout, MAX_DISCOVERY_BYTES)
            .await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("discovery document is not JSON: {e}"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(c.issuer.as_str()) {
            return Err("discovery document names a different issuer".into());
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("discovery document has no jwks_uri")?;
        let parsed = url::Url::parse(jwks_uri).map_err(|e| format!("jwks_uri `{jwks_uri}`: {e}"))?;
        let issuer_https = c.issuer.starts_with("https://");
        if parsed.scheme() != "https" && (issuer_https || parsed.scheme() != "http") {
            return Err(format!("jwks_uri `{jwks_uri}` must use https"));
        }
        tracing::info!(issuer = %c.issuer, jwks_uri, "OIDC discovery");
        if let Ok(mut d) = issuer.discovered.lock() {
            *d = Some(jwks_uri.to_string());
        }
        Ok(jwks_uri.to_string())
    }

    async fn fetch_http(&self, uri: &str, timeout: Duration) -> Result<(Vec<u8>, Option<Duration>), String> {
        self.fetch_http_capped(uri, timeout, MAX_JWKS_BYTES).await
    }

    async fn fetch_http_capped(
        &self,
        uri: &str,
        timeout: Duration,
        cap: usize,
    ) -> Result<(Vec<u8>, Option<Duration>), String> {
        let fut = async {
            let mut resp = self.http.get(uri).send().await.map_err(|e| e.to_string())?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("HTTP status {}", resp.status()));
            }
            if resp.content_length().is_some_and(|n| n > cap as u64) {
                return Err("response larger than the size cap".into());
            }
            let max_age = resp
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > cap {
                    return Err("response larger than the size cap".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, max_age))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }
}

struct Pre {
    issuer: Arc<Issuer>,
    alg: Algorithm,
    kid: Option<String>,
    payload: Map<String, Value>,
}

impl Issuer {
    /// Whether `kid` missed since the last refetch, within the cooldown.
    fn recently_unknown(&self, kid: &str) -> bool {
        let cooldown = self.config.unknown_kid_cooldown;
        self.negative
            .lock()
            .is_ok_and(|n| n.get(kid).is_some_and(|t| t.elapsed() < cooldown))
    }

    fn remember_unknown(&self, kid: &str) {
        if let Ok(mut n) = self.negative.lock() {
            if n.len() >= NEGATIVE_KIDS {
                n.clear();
            }
            n.insert(kid.to_string(), Instant::now());
        }
    }

    /// Keys that may still be used at `now`: fetched, and not older than
    /// TTL + last-known-good bound.
    fn usable_keys(&self, now: Instant) -> Option<Arc<Snapshot>> {
        let snap = self.keys.load_full()?;
        let limit = snap.ttl.saturating_add(self.config.max_stale);
        (now.saturating_duration_since(snap.fetched_at) <= limit).then_some(snap)
    }

    /// When the refresher should next fetch this issuer's keys: at once if
    /// never attempted; after failures, with backoff (1 s doubling to 30 s);
    /// otherwise at 80 % of the TTL after the last good fetch.
    fn next_refresh(&self, st: &FetchState, now: Instant) -> Instant {
        let retry = st.last_attempt.map(|t| t + backoff(st.failures));
        match self.keys.load().as_ref() {
            None => retry.unwrap_or(now),
            Some(s) => {
                let planned = s.fetched_at + s.ttl.mul_f64(REFRESH_AT);
                match retry {
                    Some(r) if st.failures > 0 => r.max(planned),
                    _ => planned,
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30)).max(RETRY_WITHOUT_KEYS)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    match phigate_json::parse(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed),
    }
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!("{}: larger than the JWKS size cap", path.display()));
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `max-age=N` from a Cache-Control value (`no-store`/`no-cache` → minimum).
fn parse_max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',').map(str::trim) {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=").or_else(|| d.strip_prefix("s-maxage=")) {
            if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                out = Some(Duration::from_secs(n));
            }
        }
    }
    out
}

fn extract_scopes(claims: &Map<String, Value>, claim: Option<&str>) -> Vec<String> {
    let names: &[&str] = match claim {
        Some(c) => &[c][..],
        None => &["scope", "scp"][..],
    };
    for name in names {
        if let Some(v) = claims.get(*name) {
            let mut seen = HashSet::new();
            let list: Vec<String> = match v {
                Value::String(s) => s.split_ascii_whitespace().map(str::to_string).collect(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                _ => Vec::new(),
            };
            return list.into_iter().filter(|s| seen.insert(s.clone())).collect();
        }
    }
    Vec::new()
}

fn extract_roles(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut parts = path.split('.');
    let mut cur = parts.next().and_then(|first| claims.get(first));
    for p in parts {
        cur = cur.and_then(Value::as_object).and_then(|o| o.get(p));
    }
    match cur {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::InvalidSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::UnsupportedAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "aud" => "aud",
            "iss" => "iss",
            "nbf" => "nbf",
            _ => "sub",
        }),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            TokenError::InvalidSignature
        }
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests;
