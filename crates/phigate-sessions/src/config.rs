//! Runtime configuration (already validated by whoever parsed the config
//! file; [`SessionsConfig::validate`] reports every problem at once).

use std::path::PathBuf;
use std::time::Duration;

/// Default NATS bucket of session and subject records.
pub const DEFAULT_BUCKET: &str = "phigate-sessions";
/// Default bound on how long the local view is trusted while the store is
/// unreachable.
pub const DEFAULT_STALE_GRACE: Duration = Duration::from_secs(30);
/// Default cap on locally held sessions (and, separately, subjects and
/// one-time ids).
pub const DEFAULT_MAX_LOCAL_ENTRIES: usize = 250_000;
/// Default maximum `ttl` of [`crate::Sessions::claim_once`].
pub const DEFAULT_JTI_MAX_TTL: Duration = Duration::from_secs(3600);
/// Floor of the default record TTL.
pub const MIN_DEFAULT_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Ceiling of the default record TTL (an idle timeout of "never" must not
/// keep records for ever).
pub const MAX_DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest accepted record TTL or `jti_max_ttl`.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default bound on one store request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Configuration of [`crate::Sessions`].
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// The global idle timeout (automatic log-off). A route may pass a
    /// shorter one to [`crate::Sessions::check`].
    pub idle_timeout: Duration,
    /// At most one touch write per session per interval;
    /// default min(`idle_timeout` / 10, 30 s).
    pub write_interval: Option<Duration>,
    /// How long the local view is trusted while the store is unreachable.
    pub stale_grace: Duration,
    /// Cap on sessions held locally (subjects and, in memory, one-time ids
    /// are capped separately by the same number).
    pub max_local_entries: usize,
    /// How long the store keeps a record after its last write (the bucket's
    /// `max_age`; in memory, after the last local access); default
    /// `idle_timeout` × 4 within [24 h, 30 d]. Must exceed the longest access-token
    /// lifetime: an ended session whose record has expired would start again
    /// for a token issued before the end.
    pub record_ttl: Option<Duration>,
    /// Largest `ttl` accepted by [`crate::Sessions::claim_once`] (the jti
    /// bucket's `max_age`).
    pub jti_max_ttl: Duration,
    /// Bound on each store request (a read or write on the request path, a
    /// revocation, a claim). Unused by the memory store.
    pub request_timeout: Duration,
    pub store: StoreConfig,
}

impl SessionsConfig {
    /// Defaults around `idle_timeout` and `store`.
    pub fn new(idle_timeout: Duration, store: StoreConfig) -> SessionsConfig {
        SessionsConfig {
            idle_timeout,
            write_interval: None,
            stale_grace: DEFAULT_STALE_GRACE,
            max_local_entries: DEFAULT_MAX_LOCAL_ENTRIES,
            record_ttl: None,
            jti_max_ttl: DEFAULT_JTI_MAX_TTL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            store,
        }
    }

    /// The effective write interval.
    pub fn effective_write_interval(&self) -> Duration {
        self.write_interval
            .unwrap_or_else(|| (self.idle_timeout / 10).min(Duration::from_secs(30)))
    }

    /// The effective record TTL.
    pub fn effective_record_ttl(&self) -> Duration {
        self.record_ttl.unwrap_or_else(|| {
            self.idle_timeout
                .saturating_mul(4)
                .clamp(MIN_DEFAULT_RECORD_TTL, MAX_DEFAULT_RECORD_TTL)
        })
    }

    /// Every problem, not just the first.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.idle_timeout.is_zero() {
            errors.push("idle_timeout must be positive".to_string());
        }
        if self.max_local_entries == 0 {
            errors.push("max_local_entries must be positive".to_string());
        }
        if self.jti_max_ttl < Duration::from_secs(1) {
            errors.push("jti_max_ttl must be at least 1s".to_string());
        }
        if let Some(ttl) = self.record_ttl {
            if ttl < self.idle_timeout {
                errors.push("record_ttl must not be shorter than idle_timeout".to_string());
            }
            if ttl > MAX_TTL {
                errors.push("record_ttl must be at most 365 days".to_string());
            }
        }
        if self.jti_max_ttl > MAX_TTL {
            errors.push("jti_max_ttl must be at most 365 days".to_string());
        }
        if self.request_timeout.is_zero() {
            errors.push("request_timeout must be positive".to_string());
        }
        if let StoreConfig::Nats(n) = &self.store {
            if n.url.split(',').all(|u| u.trim().is_empty()) {
                errors.push("store.url is empty".to_string());
            }
            let valid = |b: &str| {
                !b.is_empty()
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            };
            if !valid(&n.bucket) {
                errors.push(format!(
                    "store.bucket {:?} must be non-empty [A-Za-z0-9_-]",
                    n.bucket
                ));
            }
            if n.replicas == 0 || n.replicas > 5 {
                errors.push("store.replicas must be 1..=5".to_string());
            }
            if let Some(tls) = &n.tls {
                if tls.cert.is_some() != tls.key.is_some() {
                    errors.push("store.tls: cert and key go together".to_string());
                }
            }
        }
        errors
    }
}

/// Where shared state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// This process only (a single gateway instance).
    Memory,
    /// NATS JetStream key-value buckets shared by all replicas.
    Nats(NatsStoreConfig),
}

/// A NATS JetStream store.
#[derive(Debug, Clone)]
pub struct NatsStoreConfig {
    /// Server URL(s), comma-separated (`nats://host:4222`, `tls://…`).
    pub url: String,
    /// Session/subject bucket; the one-time ids live in `<bucket>-jti`, the
    /// shared secrets in `<bucket>-secrets`.
    pub bucket: String,
    /// A NATS `.creds` file (JWT + NKey).
    pub credentials: Option<PathBuf>,
    pub tls: Option<NatsTls>,
    /// Bucket replicas in a JetStream cluster.
    pub replicas: usize,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
}

impl NatsStoreConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> NatsStoreConfig {
        NatsStoreConfig {
            url: url.into(),
            bucket: DEFAULT_BUCKET.to_string(),
            credentials: None,
            tls: None,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS to NATS: `ca` pins the roots (and requires TLS), `cert` + `key` present
/// a client certificate.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}
