//! `sessions`, `dpop` and `backchannel_logout`: the file types and their
//! validation into the runtime settings (automatic log-off, logout and
//! revocation, sender-constrained tokens; see `docs/sessions.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use phigate_token::Algorithm;
use phigate_yaml::PathSeg;
use serde::Deserialize;

use super::parse_algorithm;
use super::validate::Problems;

/// `sessions:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsFile {
    /// Automatic log-off: a session idle longer than this is ended (e.g.
    /// `15m`). Absent: no idle log-off, but logout and revocation still apply.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// `sid` (default: the token's `sid` claim, else issuer + `sub` +
    /// `client_id`) or `subject` (always issuer + `sub` + `client_id`).
    #[serde(default)]
    pub key: Option<SessionKeyMode>,
    /// `memory` (default; one instance) or `nats` (shared by replicas).
    #[serde(default)]
    pub store: Option<StoreKind>,
    /// The NATS JetStream key-value store (with `store: nats`).
    #[serde(default)]
    pub nats: Option<NatsStoreFile>,
    /// Longest time between two writes of one session's last activity
    /// (default min(idle_timeout / 10, 30s)).
    #[serde(default, with = "humantime_serde")]
    pub write_interval: Option<Duration>,
    /// How long sessions already known to this replica are checked against
    /// its local view while the store is unreachable (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub stale_grace: Option<Duration>,
    /// Sessions held in memory per replica (default 100000).
    #[serde(default)]
    pub max_local_entries: Option<usize>,
}

/// How a token names its session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKeyMode {
    #[default]
    Sid,
    Subject,
}

/// `sessions.store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Nats,
}

/// `sessions.nats`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStoreFile {
    /// Server URL(s), comma-separated (`nats://nats:4222`; required).
    #[serde(default)]
    pub url: Option<String>,
    /// Key-value bucket (default `phigate-sessions`; `<bucket>-jti` holds
    /// DPoP and logout-token `jti`s).
    #[serde(default)]
    pub bucket: Option<String>,
    /// NATS `.creds` file.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<NatsTlsFile>,
    /// Bucket replicas when phigate creates it (default 1).
    #[serde(default)]
    pub replicas: Option<usize>,
    /// Connect timeout (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// `sessions.nats.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsFile {
    /// CA certificates (PEM) to verify the server with.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `dpop:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopFile {
    /// The scheme, host and port clients address (`https://fhir.example.org`):
    /// a proof's `htu` must be this + the request path. Default: the
    /// listener's scheme and the request's `Host`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Proof algorithms accepted (default ES256, ES384, PS256, RS256, EdDSA).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Oldest proof `iat` accepted (default 5m); also how long a `jti` is remembered.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Require server nonces (RFC 9449 §8): proofs must carry a `nonce`
    /// phigate issued (`DPoP-Nonce`), valid on every replica.
    #[serde(default)]
    pub nonce: Option<bool>,
    /// How long an issued nonce is accepted (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub nonce_lifetime: Option<Duration>,
}

/// `backchannel_logout:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackchannelLogoutFile {
    /// Path on the proxy listeners (default `/phigate/backchannel-logout`).
    #[serde(default)]
    pub path: Option<String>,
    /// The client ids registered with the issuers: a logout token's `aud`
    /// must name one (required).
    #[serde(default)]
    pub client_ids: Option<Vec<String>>,
    /// Oldest logout token `iat` accepted (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// Per-issuer `sessions:` override.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSessionsFile {
    /// This issuer's idle timeout (overrides `sessions.idle_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// Runtime: where sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    Memory,
    Nats {
        url: String,
        bucket: String,
        credentials: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        replicas: usize,
        connect_timeout: Duration,
    },
}

/// Runtime: `sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    pub idle_timeout: Option<Duration>,
    pub key: SessionKeyMode,
    pub store: StoreSettings,
    pub write_interval: Option<Duration>,
    pub stale_grace: Duration,
    pub max_local_entries: usize,
}

impl SessionSettings {
    /// Memory store, the given idle timeout, defaults otherwise (dev mode, tests).
    pub fn memory(idle_timeout: Option<Duration>) -> Self {
        Self {
            idle_timeout,
            key: SessionKeyMode::Sid,
            store: StoreSettings::Memory,
            write_interval: None,
            stale_grace: Duration::from_secs(30),
            max_local_entries: 100_000,
        }
    }
}

/// Runtime: `dpop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    pub public_base_url: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub max_age: Duration,
    pub nonce: bool,
    pub nonce_lifetime: Duration,
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            public_base_url: None,
            algorithms: vec![
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::PS256,
                Algorithm::RS256,
                Algorithm::EdDSA,
            ],
            max_age: Duration::from_secs(300),
            nonce: false,
            nonce_lifetime: Duration::from_secs(300),
        }
    }
}

/// Runtime: `backchannel_logout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutSettings {
    pub path: String,
    pub client_ids: Vec<String>,
    pub max_age: Duration,
}

/// The default back-channel logout path.
pub const DEFAULT_LOGOUT_PATH: &str = "/phigate/backchannel-logout";

/// Per-issuer rules the gateway applies after a token verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerRules {
    /// Only DPoP-bound tokens with a valid proof.
    pub require_dpop: bool,
    /// Overrides `sessions.idle_timeout` for this issuer's tokens.
    pub idle_timeout: Option<Duration>,
}

fn within(
    p: &mut Problems<'_>,
    at: &[PathSeg<'_>],
    key: &str,
    v: Duration,
    min: Duration,
    max: Duration,
    range: &str,
) {
    if v < min || v > max {
        p.at(at, format!("{key} must be between {range}"));
    }
}

pub(super) fn sessions(p: &mut Problems<'_>, f: &SessionsFile, base: &Path) -> Option<SessionSettings> {
    let at = |k: &'static str| [PathSeg::Key("sessions"), PathSeg::Key(k)];
    let mut s = SessionSettings::memory(f.idle_timeout);
    if let Some(t) = f.idle_timeout {
        within(
            p,
            &at("idle_timeout"),
            "idle_timeout",
            t,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
            "1s and 24h",
        );
    }
    if let Some(w) = f.write_interval {
        within(
            p,
            &at("write_interval"),
            "write_interval",
            w,
            Duration::from_millis(100),
            Duration::from_secs(300),
            "100ms and 5m",
        );
        if f.idle_timeout.is_some_and(|t| w >= t) {
            p.at(
                &at("write_interval"),
                "write_interval must be shorter than idle_timeout (activity would be seen too late)",
            );
        }
        s.write_interval = Some(w);
    }
    if let Some(g) = f.stale_grace {
        within(
            p,
            &at("stale_grace"),
            "stale_grace",
            g,
            Duration::ZERO,
            Duration::from_secs(3600),
            "0s and 1h",
        );
        s.stale_grace = g;
    }
    if let Some(n) = f.max_local_entries {
        if n < 100 {
            p.at(&at("max_local_entries"), "max_local_entries must be at least 100");
        }
        s.max_local_entries = n;
    }
    s.key = f.key.unwrap_or_default();
    match (f.store.unwrap_or_default(), &f.nats) {
        (StoreKind::Memory, None) => {}
        (StoreKind::Memory, Some(_)) => {
            p.at(&at("nats"), "`sessions.nats` needs `store: nats`");
        }
        (StoreKind::Nats, None) => {
            p.at(
                &at("store"),
                "`store: nats` needs a `sessions.nats` block with `url`",
            );
        }
        (StoreKind::Nats, Some(n)) => {
            let nat = |k: &'static str| [PathSeg::Key("sessions"), PathSeg::Key("nats"), PathSeg::Key(k)];
            let url = p
                .required(&at("nats"), "url", &n.url)
                .cloned()
                .unwrap_or_default();
            for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                if !(u.starts_with("nats://") || u.starts_with("tls://") || u.starts_with("nats+tls://")) {
                    p.at(&nat("url"), format!("`{u}` must be a nats:// or tls:// URL"));
                }
            }
            let bucket = n.bucket.clone().unwrap_or_else(|| "phigate-sessions".into());
            if bucket.is_empty()
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                p.at(
                    &nat("bucket"),
                    format!("bucket `{bucket}` may only hold letters, digits, `-` and `_`"),
                );
            }
            if n.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
                p.at(&nat("replicas"), "replicas must be between 1 and 5");
            }
            let (tls_ca, tls_cert, tls_key) = match &n.tls {
                Some(t) => {
                    if t.cert.is_some() != t.key.is_some() {
                        p.at(
                            &[
                                PathSeg::Key("sessions"),
                                PathSeg::Key("nats"),
                                PathSeg::Key("tls"),
                            ],
                            "`cert` and `key` go together",
                        );
                    }
                    (
                        t.ca.as_ref().map(|x| base.join(x)),
                        t.cert.as_ref().map(|x| base.join(x)),
                        t.key.as_ref().map(|x| base.join(x)),
                    )
                }
                None => (None, None, None),
            };
            s.store = StoreSettings::Nats {
                url,
                bucket,
                credentials: n.credentials.as_ref().map(|c| base.join(c)),
                tls_ca,
                tls_cert,
                tls_key,
                replicas: n.replicas.unwrap_or(1),
                connect_timeout: n.connect_timeout.unwrap_or(Duration::from_secs(5)),
            };
        }
    }
    Some(s)
}

pub(super) fn dpop(p: &mut Problems<'_>, f: &DpopFile) -> DpopSettings {
    let at = |k: &'static str| [PathSeg::Key("dpop"), PathSeg::Key(k)];
    let mut d = DpopSettings::default();
    if let Some(u) = &f.public_base_url {
        let trimmed = u.trim_end_matches('/');
        match url::Url::parse(trimmed) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https")
                    && parsed.host().is_some()
                    && parsed.query().is_none()
                    && parsed.fragment().is_none() =>
            {
                d.public_base_url = Some(trimmed.to_string());
            }
            _ => p.at(
                &at("public_base_url"),
                format!("`{u}` must be an http(s) URL like https://fhir.example.org (no query)"),
            ),
        }
    }
    if let Some(list) = &f.algorithms {
        let mut algs = Vec::new();
        for a in list {
            match parse_algorithm(a) {
                Ok(alg) => algs.push(alg),
                Err(msg) => p.at(&at("algorithms"), msg),
            }
        }
        if list.is_empty() {
            p.at(&at("algorithms"), "at least one algorithm is required");
        }
        d.algorithms = algs;
    }
    if let Some(m) = f.max_age {
        within(
            p,
            &at("max_age"),
            "max_age",
            m,
            Duration::from_secs(5),
            Duration::from_secs(3600),
            "5s and 1h",
        );
        d.max_age = m;
    }
    if let Some(n) = f.nonce {
        d.nonce = n;
    }
    if let Some(l) = f.nonce_lifetime {
        within(
            p,
            &at("nonce_lifetime"),
            "nonce_lifetime",
            l,
            Duration::from_secs(10),
            Duration::from_secs(24 * 3600),
            "10s and 24h",
        );
        d.nonce_lifetime = l;
    }
    d
}

pub(super) fn backchannel_logout(p: &mut Problems<'_>, f: &BackchannelLogoutFile) -> Option<LogoutSettings> {
    let here = [PathSeg::Key("backchannel_logout")];
    let at = |k: &'static str| [PathSeg::Key("backchannel_logout"), PathSeg::Key(k)];
    let path = f.path.clone().unwrap_or_else(|| DEFAULT_LOGOUT_PATH.into());
    if !path.starts_with('/')
        || path.contains(['?', '#', '%', '*', '{', '}'])
        || path.split('/').any(|s| s == ".." || s == ".")
    {
        p.at(
            &at("path"),
            format!("`{path}` must be a plain absolute path like {DEFAULT_LOGOUT_PATH}"),
        );
    }
    let client_ids = p
        .required(&here, "client_ids", &f.client_ids)
        .cloned()
        .unwrap_or_default();
    if f.client_ids.is_some() && (client_ids.is_empty() || client_ids.iter().any(String::is_empty)) {
        p.at(&at("client_ids"), "at least one non-empty client id is required");
    }
    let max_age = f.max_age.unwrap_or(Duration::from_secs(300));
    within(
        p,
        &at("max_age"),
        "max_age",
        max_age,
        Duration::from_secs(10),
        Duration::from_secs(24 * 3600),
        "10s and 24h",
    );
    Some(LogoutSettings {
        path,
        client_ids,
        max_age,
    })
}

pub(super) fn introspection(
    p: &mut Problems<'_>,
    f: &super::file::IntrospectionFile,
    index: usize,
    base: &Path,
) -> Option<phigate_token::IntrospectionConfig> {
    let here = [
        PathSeg::Key("issuers"),
        PathSeg::Index(index),
        PathSeg::Key("introspection"),
    ];
    let at = |k: &'static str| {
        [
            PathSeg::Key("issuers"),
            PathSeg::Index(index),
            PathSeg::Key("introspection"),
            PathSeg::Key(k),
        ]
    };
    let endpoint = p.required(&here, "endpoint", &f.endpoint).cloned();
    if let Some(e) = &endpoint {
        if !(e.starts_with("https://") || e.starts_with("http://")) {
            p.at(&at("endpoint"), format!("`{e}` must be an http(s) URL"));
        }
    }
    let client_id = p.required(&here, "client_id", &f.client_id).cloned();
    let auth = match (&f.client_secret, &f.private_key_jwt) {
        (Some(secret), None) => Some(phigate_token::ClientAuth::ClientSecretBasic {
            secret: secret.clone(),
        }),
        (None, Some(k)) => {
            let key_at = [
                PathSeg::Key("issuers"),
                PathSeg::Index(index),
                PathSeg::Key("introspection"),
                PathSeg::Key("private_key_jwt"),
            ];
            let alg = match k
                .alg
                .as_deref()
                .map(parse_algorithm)
                .unwrap_or(Ok(Algorithm::ES256))
            {
                Ok(a) => Some(a),
                Err(msg) => {
                    p.at(&key_at, msg);
                    None
                }
            };
            let pem = p
                .required(&key_at, "key_file", &k.key_file)
                .map(|f| base.join(f))
                .and_then(|path| match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        p.at(&key_at, format!("cannot read key_file {}: {e}", path.display()));
                        None
                    }
                });
            match (pem, alg) {
                (Some(key_pem), Some(alg)) => Some(phigate_token::ClientAuth::PrivateKeyJwt {
                    key_pem,
                    alg,
                    kid: k.kid.clone(),
                }),
                _ => None,
            }
        }
        _ => {
            p.at(
                &here,
                "exactly one of `client_secret` or `private_key_jwt` is required",
            );
            None
        }
    };
    let (endpoint, client_id, auth) = (endpoint?, client_id?, auth?);
    let mut c = phigate_token::IntrospectionConfig::new(endpoint, client_id, auth);
    if let Some(t) = f.cache_ttl {
        within(
            p,
            &at("cache_ttl"),
            "cache_ttl",
            t,
            Duration::ZERO,
            Duration::from_secs(3600),
            "0s and 1h",
        );
        c.cache_ttl = t;
    }
    if let Some(t) = f.negative_cache_ttl {
        within(
            p,
            &at("negative_cache_ttl"),
            "negative_cache_ttl",
            t,
            Duration::ZERO,
            Duration::from_secs(600),
            "0s and 10m",
        );
        c.negative_cache_ttl = t;
    }
    if let Some(t) = f.timeout {
        within(
            p,
            &at("timeout"),
            "timeout",
            t,
            Duration::from_millis(100),
            Duration::from_secs(30),
            "100ms and 30s",
        );
        c.timeout = t;
    }
    Some(c)
}
