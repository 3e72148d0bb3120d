//! Key fetching and per-issuer key state.
//!
//! Owns where keys come from (a JWKS URI over HTTP(S), OIDC discovery, or a
//! local file), the per-issuer state that decides which keys are served (the
//! current set and its TTL, the last-known-good bound `max_stale`, refresh
//! ahead of expiry, retry backoff, the unknown-`kid` cooldown with its single
//! shared refetch, and the negative cache of unknown `kid`s), and the
//! background refresher ([`run_refresher`]). Nothing here looks at a token's
//! signature; verification is in `verify.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::{watch, Mutex};

use crate::jwks::{parse_jwks, KeySet, MAX_JWKS_BYTES};
use crate::{ConfigError, FetchObserver, FetchOutcome, IssuerConfig, KeySource, TokenError};

/// Bounds applied to a `Cache-Control: max-age` from the key server.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retry interval while an issuer has no keys yet.
const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(1);
/// Refresh this fraction of the TTL after a fetch (ahead of expiry).
const REFRESH_AT: f64 = 0.8;
/// Most remembered unknown `kid`s per issuer (negative cache).
const NEGATIVE_KIDS: usize = 1024;
/// Largest OIDC discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// Keys currently served for one issuer.
pub(super) struct Snapshot {
    pub(super) set: KeySet,
    pub(super) fetched_at: Instant,
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

/// One configured issuer and the state of its keys.
pub(super) struct Issuer {
    pub(super) config: IssuerConfig,
    keys: ArcSwapOption<Snapshot>,
    fetch: Mutex<FetchState>,
    /// Unknown kids seen since the last refetch (answered without waiting).
    negative: StdMutex<HashMap<String, Instant>>,
    /// `jwks_uri` found by OIDC discovery.
    discovered: StdMutex<Option<String>>,
}

impl Issuer {
    /// An issuer with no keys yet.
    pub(super) fn new(config: IssuerConfig) -> Self {
        Self {
            config,
            keys: ArcSwapOption::empty(),
            fetch: Mutex::new(FetchState::default()),
            negative: StdMutex::new(HashMap::new()),
            discovered: StdMutex::new(None),
        }
    }

    /// Number of keys and time since the last good fetch (`None` before the first).
    pub(super) fn key_status(&self) -> (usize, Option<Duration>) {
        let snap = self.keys.load();
        match snap.as_ref() {
            Some(s) => (s.set.len(), Some(s.fetched_at.elapsed())),
            None => (0, None),
        }
    }

    /// Whether `kid` missed since the last refetch, within the cooldown.
    fn recently_unknown(&self, kid: &str) -> bool {
        let cooldown = self.config.unknown_kid_cooldown;
        self.negative
            .lock()
            .is_ok_and(|n| n.get(kid).is_some_and(|t| t.elapsed() < cooldown))
    }

    /// Remember that `kid` was still unknown after a refetch (negative cache).
    pub(super) fn remember_unknown(&self, kid: &str) {
        if let Ok(mut n) = self.negative.lock() {
            if n.len() >= NEGATIVE_KIDS {
                n.clear();
            }
            n.insert(kid.to_string(), Instant::now());
        }
    }

    /// Keys that may still be used at `now`: fetched, and not older than
    /// TTL + last-known-good bound.
    pub(super) fn usable_keys(&self, now: Instant) -> Option<Arc<Snapshot>> {
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

/// Fetches key sets (HTTP client and metrics hook shared by all issuers).
pub(super) struct Fetcher {
    http: reqwest::Client,
    observer: Arc<dyn FetchObserver>,
}

impl Fetcher {
    pub(super) fn new(observer: Arc<dyn FetchObserver>) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(0)
            .user_agent(concat!("phigate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Self { http, observer })
    }

    /// Fetch every issuer's keys once (ignores cooldowns). Returns whether all succeeded.
    pub(super) async fn refresh_all(&self, issuers: &[Arc<Issuer>]) -> bool {
        let mut ok = true;
        for i in issuers {
            let mut st = i.fetch.lock().await;
            ok &= self.fetch_locked(i, &mut st).await;
        }
        ok
    }

    /// The issuer's usable keys for a validation. An issuer that never had
    /// keys gets one (cooldown-limited) fetch first; without usable keys the
    /// request fails closed with [`TokenError::KeysUnavailable`].
    pub(super) async fn keys_for(&self, issuer: &Arc<Issuer>) -> Result<Arc<Snapshot>, TokenError> {
        let now = Instant::now();
        let mut snap = issuer.usable_keys(now);
        if snap.is_none() && issuer.keys.load().is_none() {
            // Never had keys: try once (cooldown-limited) before failing closed.
            self.refetch_if_cool(issuer).await;
            snap = issuer.usable_keys(Instant::now());
        }
        snap.ok_or(TokenError::KeysUnavailable)
    }

    /// The token's `kid` is not in the issuer's current keys: refetch them
    /// (cooldown-limited, shared) and return the keys to retry against. A
    /// token without a `kid`, an overlong `kid`, or one that missed recently
    /// (negative cache) is answered with [`TokenError::UnknownKey`] at once.
    /// If the retry misses too, the caller records the `kid` with
    /// [`Issuer::remember_unknown`].
    pub(super) async fn refetch_for_unknown_kid(
        &self,
        issuer: &Arc<Issuer>,
        kid: Option<&str>,
    ) -> Result<Arc<Snapshot>, TokenError> {
        let Some(k) = kid else {
            return Err(TokenError::UnknownKey);
        };
        if k.len() > 256 || issuer.recently_unknown(k) {
            return Err(TokenError::UnknownKey);
        }
        self.refetch_if_cool(issuer).await;
        issuer
            .usable_keys(Instant::now())
            .ok_or(TokenError::KeysUnavailable)
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

/// Keep every issuer's keys fresh until `shutdown` flips to true: retry
/// every second while an issuer has no keys (with backoff to 30 s after
/// repeated failures), otherwise refresh at 80 % of the TTL.
pub(super) async fn run_refresher(
    fetcher: &Fetcher,
    issuers: &[Arc<Issuer>],
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let now = Instant::now();
        let mut next = Duration::from_secs(300);
        for i in issuers {
            let mut st = i.fetch.lock().await;
            if i.next_refresh(&st, now) <= now {
                fetcher.fetch_locked(i, &mut st).await;
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

fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30)).max(RETRY_WITHOUT_KEYS)
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
pub(super) fn parse_max_age(v: &str) -> Option<Duration> {
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
