//! Key fetching and per-issuer key state.
//!
//! Owns where keys come from (a JWKS URI over HTTP(S), OIDC discovery, or a
//! local file), the per-issuer state that decides which keys are served (the
//! current set and its TTL, the last-known-good bound `max_stale`, refresh
//! ahead of expiry, retry backoff, the unknown-`kid` cooldown, and the
//! negative cache of unknown `kid`s), the single flight of fetches, and the
//! background refresher ([`run_refresher`]), which also watches `jwks_file`
//! sources. Nothing here looks at a token's signature; verification is in
//! `verify.rs`.
//!
//! **Single flight.** Every fetch runs as its own background task, at most one
//! per issuer at a time; whoever needs keys joins the fetch in flight (or
//! starts one). Requests wait for it at most [`IssuerConfig::fetch_wait`] and
//! are then answered with the keys at hand; the fetch carries on (bounded by
//! `fetch_timeout`) and installs its result for later requests. Because only
//! the fetch in flight installs keys, installs never race each other.
//!
//! **Key-set changes.** A fetch that returns the document already installed
//! keeps the very same keys (verified-token cache entries stay valid) and only
//! renews their age. A different document, once vetted, replaces the set,
//! bumps the set's generation and clears the issuer's negative cache, so an
//! earlier unknown-`kid` miss never delays a key that has since arrived.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::cache::sha256;
use crate::jwks::{parse_jwks, JwksError, KeySet, MAX_JWKS_BYTES};
use crate::{ConfigError, FetchObserver, FetchOutcome, IssuerConfig, KeySource, TokenError};

/// How often the refresher checks a `jwks_file` source for changes: its
/// metadata (size, modification and change time, device and inode, so an
/// atomic rename-over is noticed) is compared with what the last read saw,
/// and the file is re-read only when that differs. A change (removals
/// included) is thus applied within about this interval.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(500);

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
    /// SHA-256 of the document `set` was parsed from.
    digest: [u8; 32],
    /// Counts changes of the set (not refreshes that returned the same
    /// document): a negative-cache entry holds only for the generation it was
    /// observed against.
    pub(super) generation: u64,
}

/// The outcome of one fetch: `None` while it runs, then whether it succeeded.
type Flight = watch::Receiver<Option<bool>>;

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Last refetch caused by a request (unknown `kid`, no keys yet): the
    /// cooldown clock.
    last_kid_refetch: Option<Instant>,
    /// Consecutive failures since the last good fetch (for retry backoff).
    failures: u32,
    /// The fetch in flight, if any (at most one per issuer).
    flight: Option<Flight>,
    /// `jwks_file` sources: the file as the last read found it.
    file_seen: Option<FileSeen>,
    /// Why the last fetch failed (`None` after a good one).
    last_error: Option<String>,
}

impl FetchState {
    /// The fetch still in flight: started, not finished, task alive.
    fn running(&self) -> Option<&Flight> {
        self.flight
            .as_ref()
            .filter(|f| f.borrow().is_none() && f.has_changed().is_ok())
    }
}

/// A key file as `stat` (following symlinks) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileSeen {
    /// Missing or unreadable.
    Missing,
    At(FileStamp),
}

/// Everything about a file that changes when its contents are replaced,
/// in place or by renaming another file over it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    id: (u64, u64, i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            id: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One configured issuer and the state of its keys.
pub(super) struct Issuer {
    pub(super) config: IssuerConfig,
    keys: ArcSwapOption<Snapshot>,
    state: StdMutex<FetchState>,
    /// Unknown kids: when they missed, and against which key-set generation
    /// (answered without waiting for the rest of the cooldown).
    negative: StdMutex<HashMap<String, (Instant, u64)>>,
    /// `jwks_uri` found by OIDC discovery.
    discovered: StdMutex<Option<String>>,
}

impl Issuer {
    /// An issuer with no keys yet.
    pub(super) fn new(config: IssuerConfig) -> Self {
        Self {
            config,
            keys: ArcSwapOption::empty(),
            state: StdMutex::new(FetchState::default()),
            negative: StdMutex::new(HashMap::new()),
            discovered: StdMutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn negative(&self) -> MutexGuard<'_, HashMap<String, (Instant, u64)>> {
        self.negative.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn generation(&self) -> Option<u64> {
        self.keys.load().as_ref().map(|s| s.generation)
    }

    /// Number of keys and time since the last good fetch (`None` before the first).
    /// Why the issuer's last fetch failed, if it did.
    pub(super) fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    pub(super) fn key_status(&self) -> (usize, Option<Duration>) {
        let snap = self.keys.load();
        match snap.as_ref() {
            Some(s) => (s.set.len(), Some(s.fetched_at.elapsed())),
            None => (0, None),
        }
    }

    /// Whether `kid` missed against the current key set, within the cooldown.
    fn recently_unknown(&self, kid: &str) -> bool {
        let cooldown = self.config.unknown_kid_cooldown;
        let negative = self.negative();
        let current = self.generation();
        negative
            .get(kid)
            .is_some_and(|(t, g)| t.elapsed() < cooldown && Some(*g) == current)
    }

    /// Remember that `kid` was still unknown in the key set of `generation`
    /// after a refetch (negative cache). Ignored if the set has changed since.
    pub(super) fn remember_unknown(&self, kid: &str, generation: u64) {
        let mut n = self.negative();
        // Read under the lock: `install` clears the cache after switching sets.
        if self.generation() != Some(generation) {
            return;
        }
        if n.len() >= NEGATIVE_KIDS {
            n.clear();
        }
        n.insert(kid.to_string(), (Instant::now(), generation));
    }

    /// Keys that may still be used at `now`: fetched, and not older than
    /// TTL + last-known-good bound.
    pub(super) fn usable_keys(&self, now: Instant) -> Option<Arc<Snapshot>> {
        let snap = self.keys.load_full()?;
        let limit = snap.ttl.saturating_add(self.config.max_stale);
        (now.saturating_duration_since(snap.fetched_at) <= limit).then_some(snap)
    }

    /// Install a fetched key-set document. The document already installed
    /// keeps its keys (same `Arc`s, so cached validations stay valid) and only
    /// renews their age; a new one is vetted as a whole and, if accepted,
    /// replaces the set and clears the negative cache. Returns the number of
    /// keys and whether the set changed; on error the previous set stays.
    fn install(&self, body: &[u8], ttl: Duration) -> Result<(usize, bool), JwksError> {
        let digest = sha256(body);
        let current = self.keys.load_full();
        if let Some(cur) = current.as_ref().filter(|c| c.digest == digest) {
            self.keys.store(Some(Arc::new(Snapshot {
                set: cur.set.clone(),
                fetched_at: Instant::now(),
                ttl,
                digest,
                generation: cur.generation,
            })));
            return Ok((cur.set.len(), false));
        }
        let set = parse_jwks(body)?;
        let n = set.len();
        self.keys.store(Some(Arc::new(Snapshot {
            set,
            fetched_at: Instant::now(),
            ttl,
            digest,
            generation: current.as_ref().map_or(0, |c| c.generation.wrapping_add(1)),
        })));
        self.negative().clear();
        Ok((n, true))
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

/// Wait until `flight` lands, at most `limit` (`None`: however long it
/// takes). Its result, or `None` if the wait ran out first.
async fn land(mut flight: Flight, limit: Option<Duration>) -> Option<bool> {
    let done = async move {
        flight
            .wait_for(Option::is_some)
            .await
            .map(|r| (*r).unwrap_or(false))
            .unwrap_or(false)
    };
    match limit {
        None => Some(done.await),
        Some(l) => tokio::time::timeout(l, done).await.ok(),
    }
}

/// Fetches key sets (HTTP client and metrics hook shared by all issuers).
#[derive(Clone)]
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

    /// Fetch every issuer's keys once (ignores cooldowns) and wait for the
    /// results. A fetch already in flight may predate a change, so it is
    /// waited for and a fresh one follows. Returns whether all succeeded.
    pub(super) async fn refresh_all(&self, issuers: &[Arc<Issuer>]) -> bool {
        let mut ok = true;
        for i in issuers {
            loop {
                match self.flight(i, |_| true) {
                    Some((f, true)) => {
                        ok &= land(f, None).await == Some(true);
                        break;
                    }
                    Some((f, false)) => {
                        land(f, None).await;
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
        }
        ok
    }

    /// The issuer's usable keys for a validation. An issuer that never had
    /// keys gets a (cooldown-limited, shared) fetch first, waited for at most
    /// `fetch_wait`; without usable keys the request fails closed with
    /// [`TokenError::KeysUnavailable`].
    pub(super) async fn keys_for(&self, issuer: &Arc<Issuer>) -> Result<Arc<Snapshot>, TokenError> {
        if let Some(snap) = issuer.usable_keys(Instant::now()) {
            return Ok(snap);
        }
        if issuer.keys.load().is_none() {
            // Never had keys: join the fetch in flight (or start one) before failing closed.
            self.fetch_for_request(issuer).await;
        }
        issuer
            .usable_keys(Instant::now())
            .ok_or(TokenError::KeysUnavailable)
    }

    /// The token's `kid` is not in the issuer's key set of generation `seen`:
    /// return the keys to retry against. If the set has changed since (file
    /// change, refresh), that is the new set at once; otherwise after a
    /// (cooldown-limited, shared) refetch, waited for at most `fetch_wait`. A
    /// token without a `kid`, an overlong `kid`, or one that missed recently
    /// against the current set (negative cache) is answered with
    /// [`TokenError::UnknownKey`] at once. If the retry misses too, the caller
    /// records the `kid` with [`Issuer::remember_unknown`].
    pub(super) async fn refetch_for_unknown_kid(
        &self,
        issuer: &Arc<Issuer>,
        kid: Option<&str>,
        seen: u64,
    ) -> Result<Arc<Snapshot>, TokenError> {
        let Some(k) = kid else {
            return Err(TokenError::UnknownKey);
        };
        if k.len() > 256 {
            return Err(TokenError::UnknownKey);
        }
        if let Some(snap) = issuer.usable_keys(Instant::now()) {
            if snap.generation != seen {
                return Ok(snap);
            }
        }
        if issuer.recently_unknown(k) {
            return Err(TokenError::UnknownKey);
        }
        self.fetch_for_request(issuer).await;
        issuer
            .usable_keys(Instant::now())
            .ok_or(TokenError::KeysUnavailable)
    }

    /// A fetch a request needs: join the one in flight, or start one unless
    /// a request started one within the unknown-`kid` cooldown; then wait
    /// for it at most `fetch_wait` (it carries on in the background).
    async fn fetch_for_request(&self, issuer: &Arc<Issuer>) {
        let cooldown = issuer.config.unknown_kid_cooldown;
        let flight = self.flight(issuer, |st| {
            if st.last_kid_refetch.is_some_and(|t| t.elapsed() < cooldown) {
                return false;
            }
            st.last_kid_refetch = Some(Instant::now());
            true
        });
        if let Some((f, _)) = flight {
            land(f, Some(issuer.config.fetch_wait)).await;
        }
    }

    /// The single flight: the fetch of `issuer`'s keys in flight (`false`),
    /// or, if there is none and `may_start` agrees (asked under the state
    /// lock), a new one started as a background task (`true`). `None` if no
    /// fetch runs.
    fn flight(
        &self,
        issuer: &Arc<Issuer>,
        may_start: impl FnOnce(&mut FetchState) -> bool,
    ) -> Option<(Flight, bool)> {
        let mut st = issuer.state();
        if let Some(f) = st.running() {
            return Some((f.clone(), false));
        }
        if !may_start(&mut st) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        st.last_attempt = Some(Instant::now());
        drop(st);
        let (fetcher, issuer) = (self.clone(), issuer.clone());
        tokio::spawn(async move {
            let ok = fetcher.fetch_once(&issuer).await;
            let _ = tx.send(Some(ok));
        });
        Some((rx, true))
    }

    /// `jwks_file` sources: start a re-read if the file's metadata differ
    /// from what the last read saw. Silent while nothing changed; a change
    /// seen while a fetch is in flight is picked up by the next poll.
    async fn poll_file(&self, issuer: &Arc<Issuer>, path: &Path) {
        let seen = match tokio::time::timeout(issuer.config.fetch_timeout, tokio::fs::metadata(path)).await {
            Err(_) => return,
            Ok(Ok(meta)) => FileSeen::At(FileStamp::of(&meta)),
            Ok(Err(_)) => FileSeen::Missing,
        };
        let changed = issuer.state().file_seen.as_ref() != Some(&seen);
        if changed {
            self.flight(issuer, |_| true);
        }
    }

    /// One fetch: load the document from the issuer's source and install it.
    /// Runs only as the issuer's single flight.
    async fn fetch_once(&self, issuer: &Issuer) -> bool {
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
            KeySource::JwksFile(path) => {
                let (seen, body) = read_file(path, c.fetch_timeout).await;
                if let Some(seen) = seen {
                    issuer.state().file_seen = Some(seen);
                }
                body.map(|b| (b, None))
            }
        };
        let mut error = None;
        let (outcome, count) = match fetched {
            Err(msg) => {
                tracing::warn!(issuer = %c.issuer, source = %c.key_source, error = %msg, "JWKS fetch failed; keeping previous keys");
                error = Some(msg);
                (FetchOutcome::Error, 0)
            }
            Ok((body, max_age)) => {
                let ttl = max_age.map(|a| a.clamp(MIN_TTL, MAX_TTL)).unwrap_or(c.jwks_ttl);
                match issuer.install(&body, ttl) {
                    Err(e) => {
                        tracing::warn!(issuer = %c.issuer, source = %c.key_source, error = %e, "JWKS refused; keeping previous keys");
                        error = Some(format!("key set refused: {e}"));
                        (FetchOutcome::Invalid, 0)
                    }
                    Ok((n, changed)) => {
                        if changed {
                            let kids = issuer
                                .keys
                                .load()
                                .as_ref()
                                .map(|s| s.set.kids())
                                .unwrap_or_default();
                            tracing::info!(issuer = %c.issuer, source = %c.key_source, keys = n, kids = ?kids, ttl_s = ttl.as_secs(), "JWKS loaded");
                        } else {
                            tracing::debug!(issuer = %c.issuer, source = %c.key_source, keys = n, ttl_s = ttl.as_secs(), "JWKS unchanged");
                        }
                        (FetchOutcome::Ok, n)
                    }
                }
            }
        };
        {
            let mut st = issuer.state();
            if outcome == FetchOutcome::Ok {
                st.failures = 0;
            } else {
                st.failures = st.failures.saturating_add(1);
            }
            st.last_error = error;
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
        let named = doc.get("issuer").and_then(Value::as_str);
        if named != Some(c.issuer.as_str()) {
            let named = named.unwrap_or("(none)");
            let hint = if named.trim_end_matches('/') == c.issuer.trim_end_matches('/') {
                " — they differ only in a trailing slash; `iss` in tokens is compared exactly, so configure the issuer exactly as the discovery document (and the tokens) spell it"
            } else {
                ""
            };
            return Err(format!(
                "discovery document at {url} names issuer `{named}`, configured `{}`{hint}",
                c.issuer
            ));
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
/// repeated failures), otherwise refresh at 80 % of the TTL; check
/// `jwks_file` sources for changes every [`FILE_POLL_INTERVAL`]. Fetches run
/// as background tasks (the issuer's single flight), so one slow key server
/// delays neither the other issuers nor file changes.
pub(super) async fn run_refresher(
    fetcher: &Fetcher,
    issuers: &[Arc<Issuer>],
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut next = Duration::from_secs(300);
        for i in issuers {
            if let KeySource::JwksFile(path) = &i.config.key_source {
                fetcher.poll_file(i, path).await;
                next = next.min(FILE_POLL_INTERVAL);
            }
            let now = Instant::now();
            fetcher.flight(i, |st| i.next_refresh(st, now) <= now);
            let st = i.state();
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

/// Read a key file (capped at [`MAX_JWKS_BYTES`], bounded by `timeout`),
/// with what `stat` saw of the very file read (`None` if that is not known).
async fn read_file(path: &Path, timeout: Duration) -> (Option<FileSeen>, Result<Vec<u8>, String>) {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let read = async {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) => return (Some(FileSeen::Missing), Err(err(e))),
        };
        let seen = match file.metadata().await {
            Ok(meta) => FileSeen::At(FileStamp::of(&meta)),
            Err(e) => return (Some(FileSeen::Missing), Err(err(e))),
        };
        let mut body = Vec::new();
        if let Err(e) = (&mut file)
            .take(MAX_JWKS_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .await
        {
            return (Some(seen), Err(err(e)));
        }
        if body.len() > MAX_JWKS_BYTES {
            return (
                Some(seen),
                Err(format!("{}: larger than the JWKS size cap", path.display())),
            );
        }
        (Some(seen), Ok(body))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => (
            None,
            Err(format!("{}: timed out after {timeout:?}", path.display())),
        ),
    }
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
