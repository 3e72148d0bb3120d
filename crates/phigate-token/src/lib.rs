//! Bearer JWT validation against each issuer's JSON Web Key Set.
//!
//! [`Validator::validate`] runs a fixed sequence of cheap structural checks
//! (size cap, compact JWS shape, base64url, JSON without duplicate keys,
//! algorithm allow-list, issuer lookup) before any cryptography, then verifies
//! the signature with `jsonwebtoken` on the aws-lc-rs backend and checks the
//! registered claims. Key sets are fetched over HTTP(S) or read from a file,
//! vetted as a whole ([`parse_jwks`]), cached with a TTL and refreshed in the
//! background ([`Validator::run_refresher`], which also watches `jwks_file`
//! sources for changes). Fetches are single-flight per issuer: an unknown
//! `kid` triggers at most one shared refetch per cooldown, and a request never
//! waits longer than [`IssuerConfig::fetch_wait`] for a fetch it needs.
//!
//! Also here: DPoP proof validation ([`dpop::verify_proof`], pure code) and
//! OIDC Back-Channel Logout token validation
//! ([`Validator::validate_logout_token`], through the same key path).
//!
//! Opaque (non-JWT) access tokens are checked by RFC 7662 introspection at
//! the one issuer that sets [`IssuerConfig::introspection`]
//! ([`IntrospectionConfig`]); answers are cached briefly and an unreachable
//! endpoint fails closed ([`TokenError::IntrospectionUnavailable`]).
#![forbid(unsafe_code)]

pub mod dpop;
mod jwks;

mod validator;

#[cfg(test)]
mod test_keys;

use std::path::PathBuf;
use std::time::Duration;

pub use dpop::{DpopError, DpopPolicy, DpopProof, NonceCheck, ProofRequest};
pub use jsonwebtoken::Algorithm;
pub use jwks::{parse_jwks, JwksError, Key, KeyKind, KeySet, MAX_JWKS_BYTES};
pub use validator::{CacheStats, Validator, DEFAULT_CACHE_ENTRIES, FILE_POLL_INTERVAL};
pub use validator::{
    ClientAuth, IntrospectionConfig, DEFAULT_INTROSPECTION_CACHE_TTL,
    DEFAULT_INTROSPECTION_NEGATIVE_CACHE_TTL, DEFAULT_INTROSPECTION_TIMEOUT,
    MAX_INTROSPECTION_RESPONSE_BYTES,
};
pub use validator::{
    LogoutError, LogoutRules, LogoutToken, BACKCHANNEL_LOGOUT_EVENT, DEFAULT_LOGOUT_MAX_AGE,
};

/// Default for [`IssuerConfig::fetch_wait`]: the longest a request waits for a
/// key fetch it needs before it is answered with the keys already at hand.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_secs(1);

/// Largest token accepted, checked before any decoding (bytes).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched over HTTP(S) and refreshed.
    JwksUri(String),
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` names the
    /// `jwks_uri` (its `issuer` must equal the configured issuer exactly).
    Discovery,
    /// Read from a local JWKS file, watched for changes while
    /// [`Validator::run_refresher`] runs (see [`FILE_POLL_INTERVAL`]) and
    /// re-read on refresh.
    JwksFile(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::JwksUri(u) => f.write_str(u),
            KeySource::Discovery => f.write_str("oidc-discovery"),
            KeySource::JwksFile(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (the token must name at least one).
    pub audiences: Vec<String>,
    pub key_source: KeySource,
    /// Allowed signature algorithms (never `none` or HS*).
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Key cache lifetime when the JWKS response carries no `Cache-Control: max-age`.
    pub jwks_ttl: Duration,
    /// Minimum time between refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// Total timeout for one key fetch.
    pub fetch_timeout: Duration,
    /// Longest a request waits for a key fetch it needs (the first keys, or a
    /// refetch for an unknown `kid`). Concurrent requests share one fetch;
    /// when the wait is over the request is answered with the keys at hand
    /// (`unknown_key`, or `keys_unavailable` without usable keys) while the
    /// fetch continues in the background, bounded by `fetch_timeout`, and
    /// serves later requests. Default [`DEFAULT_FETCH_WAIT`] (1 s).
    pub fetch_wait: Duration,
    /// How long last-known-good keys keep serving after they should have been
    /// refreshed but could not be; afterwards requests fail closed (503).
    pub max_stale: Duration,
    /// Claim holding scopes; `None` reads `scope` (space-delimited) then `scp`.
    pub scope_claim: Option<String>,
    /// Claim holding the caller's roles; dots walk into objects
    /// (`realm_access.roles`). Default `roles`.
    pub roles_claim: String,
    /// Accepted `typ` header values (case-insensitive, `application/` prefix
    /// ignored); a missing `typ` is accepted unless `require_typ` is set.
    pub allowed_typ: Vec<String>,
    pub require_typ: bool,
    /// Size cap applied before any decoding.
    pub max_token_bytes: usize,
    /// RFC 7662 introspection for this issuer's opaque (non-JWT) tokens; at
    /// most one issuer may set it. JWTs are still verified locally.
    pub introspection: Option<IntrospectionConfig>,
    /// Longest lifetime (`exp - iat`) accepted for this issuer's access
    /// tokens; a longer one is refused with [`TokenError::LifetimeExceeded`].
    /// When set, a token without `iat` is refused the same way: its lifetime
    /// cannot be established. `None` (the default): no limit.
    pub max_token_lifetime: Option<Duration>,
}

impl IssuerConfig {
    /// An issuer with the documented defaults: RS256 + ES256, 30 s leeway,
    /// 10 min key TTL, 30 s unknown-kid cooldown, 5 s fetch timeout, 1 s
    /// fetch wait, 1 h last-known-good bound, `typ` in {`at+jwt`, `JWT`}.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, key_source: KeySource) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            key_source,
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: Duration::from_secs(30),
            jwks_ttl: Duration::from_secs(600),
            unknown_kid_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            fetch_wait: DEFAULT_FETCH_WAIT,
            max_stale: Duration::from_secs(3600),
            scope_claim: None,
            roles_claim: "roles".into(),
            allowed_typ: vec!["at+jwt".into(), "JWT".into()],
            require_typ: false,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            introspection: None,
            max_token_lifetime: None,
        }
    }
}

/// A token whose signature and registered claims checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: Option<String>,
    /// `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// Roles from the issuer's role claim (array of strings, or a space-separated string).
    pub roles: Vec<String>,
    /// `exp` as seconds since the epoch.
    pub expires_at: u64,
    pub kid: Option<String>,
    /// The whole payload, for claim conditions (shared, never copied per request).
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Why a token was refused. Each variant maps to one audit `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not allowed")]
    UnsupportedAlgorithm,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token key id is not in the issuer's key set")]
    UnknownKey,
    #[error("token signature is invalid")]
    InvalidSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience does not match")]
    WrongAudience,
    #[error("token lacks required claim `{0}`")]
    MissingClaim(&'static str),
    #[error("issuer keys are unavailable")]
    KeysUnavailable,
    #[error("token lifetime exceeds the issuer's maximum")]
    LifetimeExceeded,
    /// The issuer's introspection endpoint says the opaque token is not active.
    #[error("token is not active")]
    Inactive,
    /// Introspection failed (down, timeout, non-200, unusable answer): fail closed.
    #[error("the issuer's introspection endpoint is unavailable")]
    IntrospectionUnavailable,
}

/// Result of one key-set fetch, for metrics (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Fetched and accepted.
    Ok,
    /// Network error, timeout or non-200 status.
    Error,
    /// Fetched but refused by [`parse_jwks`]; the previous set was kept.
    Invalid,
}

impl FetchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::Error => "error",
            FetchOutcome::Invalid => "invalid",
        }
    }
}

/// Told about every key fetch (metrics hook).
pub trait FetchObserver: Send + Sync {
    fn jwks_fetched(&self, issuer: &str, outcome: FetchOutcome, key_count: usize);
}

/// An observer that ignores everything.
pub struct NoopObserver;

impl FetchObserver for NoopObserver {
    fn jwks_fetched(&self, _: &str, _: FetchOutcome, _: usize) {}
}

/// Invalid validator configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no issuers configured")]
    NoIssuers,
    #[error("issuer `{0}` is configured twice")]
    DuplicateIssuer(String),
    #[error("issuer `{0}` has no audiences")]
    NoAudience(String),
    #[error("issuer `{0}` has no algorithms")]
    NoAlgorithms(String),
    #[error("issuer `{issuer}`: algorithm {alg:?} is never allowed")]
    ForbiddenAlgorithm { issuer: String, alg: Algorithm },
    #[error("cannot build HTTP client: {0}")]
    Http(String),
    #[error("issuer `{issuer}`: introspection: {reason}")]
    Introspection { issuer: String, reason: String },
    /// An opaque token names no issuer; sending it to several would disclose
    /// it to issuers that did not mint it.
    #[error("issuers {} all configure introspection; at most one may (opaque tokens name no issuer)", .0.join(", "))]
    MultipleIntrospectionIssuers(Vec<String>),
}
