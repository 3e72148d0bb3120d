//! RFC 7662 token introspection for issuers that hand out opaque access tokens.
//!
//! Owns which tokens are opaque ([`is_jwt`]), the introspection request (form
//! body, client authentication by `client_secret_basic` or `private_key_jwt`
//! per RFC 7523), reading the answer into a [`VerifiedToken`] ([`read_answer`],
//! pure), and the introspection cache with its single flight.
//!
//! **Routing.** A token whose first of exactly three dot-separated base64url
//! segments decodes to a JSON object (a JOSE header) is a JWT and is always
//! verified locally against the issuer's keys, never introspected. Any other
//! token goes to the one issuer that configures introspection. An opaque token
//! names no issuer, and sending a bearer credential to an issuer that did not
//! mint it would disclose it, so at most one issuer may configure
//! introspection ([`crate::ConfigError::MultipleIntrospectionIssuers`]).
//!
//! **Fail closed.** A network error, timeout, non-200 status, an answer that
//! is not a strict JSON object within [`MAX_INTROSPECTION_RESPONSE_BYTES`], or
//! one without a boolean `active` is [`TokenError::IntrospectionUnavailable`]
//! (503) and is not cached. The token itself is never logged or stored; the
//! cache is keyed by its SHA-256.
//!
//! **Cache.** An accepted answer is remembered until `exp` or `cache_ttl`,
//! whichever comes first; a refusal (`active: false`, expired, wrong
//! audience, …) for `negative_cache_ttl`. Concurrent validations of the same
//! uncached token share one introspection request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;
use url::form_urlencoded;

use super::cache::{sha256, DEFAULT_CACHE_ENTRIES};
use super::verify::{extract_roles, extract_scopes};
use crate::{ConfigError, IssuerConfig, TokenError, VerifiedToken};

/// Default for [`IntrospectionConfig::cache_ttl`].
pub const DEFAULT_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default for [`IntrospectionConfig::negative_cache_ttl`].
pub const DEFAULT_INTROSPECTION_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default for [`IntrospectionConfig::timeout`].
pub const DEFAULT_INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest introspection answer read; a larger one is
/// [`TokenError::IntrospectionUnavailable`].
pub const MAX_INTROSPECTION_RESPONSE_BYTES: usize = 64 * 1024;

/// `client_assertion_type` for `private_key_jwt` (RFC 7523 §2.2).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a `private_key_jwt` client assertion (seconds).
const ASSERTION_LIFETIME: u64 = 60;

/// How an issuer's opaque tokens are checked: its RFC 7662 introspection
/// endpoint and how phigate authenticates to it.
#[derive(Clone)]
pub struct IntrospectionConfig {
    /// `https` URL; plain `http` only to a loopback address (tests, sidecars).
    pub endpoint: String,
    /// phigate's client id at the issuer.
    pub client_id: String,
    pub auth: ClientAuth,
    /// Upper bound on how long an accepted answer is reused (never past the
    /// answer's `exp`); zero disables caching of accepted answers.
    pub cache_ttl: Duration,
    /// How long a refusal (`active: false`, expired, wrong audience, …) is
    /// reused; zero disables negative caching.
    pub negative_cache_ttl: Duration,
    /// Total time allowed for one introspection request, answer included.
    pub timeout: Duration,
}

impl IntrospectionConfig {
    /// An introspection endpoint with the documented defaults: 60 s cache,
    /// 10 s negative cache, 2 s timeout.
    pub fn new(endpoint: impl Into<String>, client_id: impl Into<String>, auth: ClientAuth) -> Self {
        Self {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            auth,
            cache_ttl: DEFAULT_INTROSPECTION_CACHE_TTL,
            negative_cache_ttl: DEFAULT_INTROSPECTION_NEGATIVE_CACHE_TTL,
            timeout: DEFAULT_INTROSPECTION_TIMEOUT,
        }
    }
}

impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("cache_ttl", &self.cache_ttl)
            .field("negative_cache_ttl", &self.negative_cache_ttl)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How phigate authenticates to the introspection endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret, each form-urlencoded first
    /// (RFC 6749 §2.3.1).
    ClientSecretBasic { secret: String },
    /// A client assertion JWT signed with phigate's private key (RFC 7523:
    /// `iss` = `sub` = client id, `aud` = the endpoint, random `jti`, 60 s
    /// lifetime). `key_pem` is a PKCS#8 PEM private key (EC P-256, or RSA,
    /// also PKCS#1) fitting `alg`.
    PrivateKeyJwt {
        key_pem: String,
        alg: Algorithm,
        kid: Option<String>,
    },
}

/// Secrets never reach logs through `Debug`.
impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::ClientSecretBasic { .. } => f
                .debug_struct("ClientSecretBasic")
                .field("secret", &"<redacted>")
                .finish(),
            ClientAuth::PrivateKeyJwt { alg, kid, .. } => f
                .debug_struct("PrivateKeyJwt")
                .field("key_pem", &"<redacted>")
                .field("alg", alg)
                .field("kid", kid)
                .finish(),
        }
    }
}

/// Whether `token` is a JWT (verified locally) rather than an opaque token
/// (introspected): exactly three dot-separated base64url segments, the first
/// decoding to a JSON object. A JWT that fails later checks stays a local
/// refusal; it is never sent to the issuer.
pub(super) fn is_jwt(token: &str) -> bool {
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if token.bytes().filter(|&b| b == b'.').count() != 2 || !token.bytes().all(b64url) {
        return false;
    }
    let header = token.split('.').next().unwrap_or_default();
    match URL_SAFE_NO_PAD.decode(header) {
        Ok(bytes) => matches!(phigate_json::parse(&bytes), Ok(Value::Object(_))),
        Err(_) => false,
    }
}

/// RFC 6750 §2.1 `b64token`: the only bearer token syntax sent to an issuer.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// What a validation through introspection comes to (shared by a flight).
type Outcome = Result<Arc<VerifiedToken>, TokenError>;

/// A remembered answer; keyed by SHA-256 of the token (never the token).
struct Cached {
    digest: [u8; 32],
    outcome: Outcome,
    until: Instant,
}

/// Client authentication, prepared once at startup.
enum Credentials {
    /// The whole `Authorization` header value (marked sensitive).
    Basic(HeaderValue),
    /// The header is boxed: it dwarfs the other variant.
    Jwt { key: EncodingKey, header: Box<Header> },
}

/// Introspects opaque tokens for the one issuer that configures it.
pub(super) struct Introspector {
    issuer: IssuerConfig,
    cfg: IntrospectionConfig,
    credentials: Credentials,
    http: reqwest::Client,
    cache: tinyufo::TinyUfo<[u8; 32], Arc<Cached>>,
    /// Introspections in flight, by token digest (single flight).
    flights: StdMutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>,
}

impl Introspector {
    /// Check `cfg` (endpoint scheme, client credentials; a private key is
    /// test-signed so a bad key fails now, not per request) and build the
    /// introspector for `issuer`.
    pub(super) fn new(issuer: &IssuerConfig, cfg: &IntrospectionConfig) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Introspection {
            issuer: issuer.issuer.clone(),
            reason,
        };
        check_endpoint(&cfg.endpoint).map_err(bad)?;
        if cfg.client_id.is_empty() {
            return Err(bad("client_id is empty".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(bad("timeout must be above zero".into()));
        }
        let credentials = credentials(cfg).map_err(bad)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
            .user_agent(concat!("phigate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Self {
            issuer: issuer.clone(),
            cfg: cfg.clone(),
            credentials,
            http,
            cache: tinyufo::TinyUfo::new(DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_ENTRIES),
            flights: StdMutex::new(HashMap::new()),
        })
    }

    /// The issuer whose endpoint this is.
    pub(super) fn issuer(&self) -> &str {
        &self.issuer.issuer
    }

    /// Validate an opaque token: from the cache, else by joining the
    /// introspection of the same token in flight, else by introspecting it.
    pub(super) async fn validate(&self, token: &str) -> Outcome {
        if token.len() > self.issuer.max_token_bytes || !is_b64token(token) {
            return Err(TokenError::Malformed);
        }
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.cached(&digest) {
            return hit;
        }
        let flight = self.join(digest);
        flight
            .cell
            .get_or_init(|| async {
                // A flight that just landed may have filled the cache.
                if let Some(hit) = self.cached(&digest) {
                    return hit;
                }
                let outcome = self.introspect(token).await.map(Arc::new);
                self.remember(digest, &outcome);
                outcome
            })
            .await
            .clone()
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<[u8; 32], Arc<OnceCell<Outcome>>>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flight for `digest`: the one in progress, or a new one.
    fn join(&self, digest: [u8; 32]) -> Flight<'_> {
        let cell = self.flights().entry(digest).or_default().clone();
        Flight {
            owner: self,
            digest,
            cell,
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Outcome> {
        let hit = self.cache.get(digest)?;
        if hit.digest == *digest && Instant::now() < hit.until {
            return Some(hit.outcome.clone());
        }
        self.cache.remove(digest);
        None
    }

    /// Remember an answer: accepted until `exp` or `cache_ttl`, refused for
    /// `negative_cache_ttl`; an unavailable endpoint is not remembered.
    fn remember(&self, digest: [u8; 32], outcome: &Outcome) {
        let ttl = match outcome {
            Ok(t) => {
                let left = t.expires_at.saturating_sub(jsonwebtoken::get_current_timestamp());
                self.cfg.cache_ttl.min(Duration::from_secs(left))
            }
            Err(TokenError::IntrospectionUnavailable) => return,
            Err(_) => self.cfg.negative_cache_ttl,
        };
        if ttl.is_zero() {
            return;
        }
        let entry = Cached {
            digest,
            outcome: outcome.clone(),
            until: Instant::now() + ttl,
        };
        self.cache.put(digest, Arc::new(entry), 1);
    }

    /// Ask the endpoint about `token` and read its answer (uncached).
    async fn introspect(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let unavailable = |why: &str| {
            tracing::warn!(issuer = %self.issuer.issuer, endpoint = %self.cfg.endpoint, error = why, "token introspection failed; refusing the token (503)");
            TokenError::IntrospectionUnavailable
        };
        let body = match tokio::time::timeout(self.cfg.timeout, self.post(token)).await {
            Err(_) => return Err(unavailable(&format!("timed out after {:?}", self.cfg.timeout))),
            Ok(Err(why)) => return Err(unavailable(&why)),
            Ok(Ok(body)) => body,
        };
        let now = jsonwebtoken::get_current_timestamp();
        read_answer(&body, &self.issuer, self.cfg.cache_ttl, now).map_err(|why| unavailable(&why))?
    }

    /// POST the introspection request; the answer's body if the status is 200.
    async fn post(&self, token: &str) -> Result<Vec<u8>, String> {
        let mut resp = self.request(token)?.send().await.map_err(|e| e.to_string())?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let cap = MAX_INTROSPECTION_RESPONSE_BYTES;
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err("answer larger than the size cap".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > cap {
                return Err("answer larger than the size cap".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The introspection request for `token`: form body and client
    /// authentication (kept out of `post` because the form serializer is not
    /// `Send`).
    fn request(&self, token: &str) -> Result<reqwest::RequestBuilder, String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        let mut req = self
            .http
            .post(&self.cfg.endpoint)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        match &self.credentials {
            Credentials::Basic(value) => req = req.header(AUTHORIZATION, value.clone()),
            Credentials::Jwt { key, header } => {
                let assertion = self.assertion(key, header)?;
                form.append_pair("client_id", &self.cfg.client_id)
                    .append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", &assertion);
            }
        }
        Ok(req.body(form.finish()))
    }

    /// A fresh RFC 7523 client assertion.
    fn assertion(&self, key: &EncodingKey, header: &Header) -> Result<String, String> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness for the client assertion")?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({
            "iss": self.cfg.client_id,
            "sub": self.cfg.client_id,
            "aud": self.cfg.endpoint,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        jsonwebtoken::encode(header, &claims, key)
            .map_err(|e| format!("cannot sign the client assertion: {e}"))
    }
}

/// One participant in a single flight. Whoever leaves it first (done or
/// cancelled) removes it from the map, so a cancelled flight never blocks
/// later requests and no entry outlives its participants; a participant
/// still waiting on a cancelled leader's cell takes over the introspection.
struct Flight<'a> {
    owner: &'a Introspector,
    digest: [u8; 32],
    cell: Arc<OnceCell<Outcome>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.owner.flights();
        if flights
            .get(&self.digest)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            flights.remove(&self.digest);
        }
    }
}

/// `https`, or `http` to a loopback address; no credentials or fragment.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let u = url::Url::parse(endpoint).map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "endpoint `{endpoint}` must not carry credentials (use `auth`)"
        ));
    }
    if u.fragment().is_some() {
        return Err(format!("endpoint `{endpoint}` must not have a fragment"));
    }
    let loopback = match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "endpoint `{endpoint}` must use https (http only to a loopback address)"
        )),
    }
}

fn credentials(cfg: &IntrospectionConfig) -> Result<Credentials, String> {
    match &cfg.auth {
        ClientAuth::ClientSecretBasic { secret } => {
            if secret.is_empty() {
                return Err("client secret is empty".into());
            }
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&cfg.client_id), enc(secret));
            let mut value = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
                .map_err(|_| "client credentials do not fit an HTTP header".to_string())?;
            value.set_sensitive(true);
            Ok(Credentials::Basic(value))
        }
        ClientAuth::PrivateKeyJwt { key_pem, alg, kid } => {
            let pem = key_pem.as_bytes();
            let key = match alg.family() {
                AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
                AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
                AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
                AlgorithmFamily::Hmac => {
                    return Err(format!(
                        "private_key_jwt needs an asymmetric algorithm, not {alg:?}"
                    ))
                }
            }
            .map_err(|e| format!("private key for {alg:?}: {e}"))?;
            let mut header = Header::new(*alg);
            header.kid = kid.clone();
            jsonwebtoken::encode(&header, &json!({}), &key)
                .map_err(|e| format!("private key does not sign {alg:?}: {e}"))?;
            Ok(Credentials::Jwt {
                key,
                header: Box::new(header),
            })
        }
    }
}

/// Read an introspection answer `body` for issuer `c` at `now` (seconds since
/// the epoch). `Err(why)`: the answer is unusable (not a strict JSON object,
/// no boolean `active`, a claim of the wrong type), so the endpoint counts as
/// unavailable. `Ok(Err(_))`: a definite refusal of the token. Without `exp`
/// the identity's `expires_at` is `now + cache_ttl`.
pub(super) fn read_answer(
    body: &[u8],
    c: &IssuerConfig,
    cache_ttl: Duration,
    now: u64,
) -> Result<Result<VerifiedToken, TokenError>, String> {
    let claims = match phigate_json::parse(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("answer is not a JSON object".into()),
        Err(e) => return Err(format!("answer is not JSON: {e}")),
    };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Err(TokenError::Inactive)),
        Some(_) => return Err("`active` is not a boolean".into()),
        None => return Err("answer has no `active`".into()),
    }
    match claims.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == c.issuer => {}
        Some(Value::String(_)) => return Ok(Err(TokenError::UnknownIssuer)),
        Some(_) => return Err("`iss` is not a string".into()),
    }
    // A refresh token (or an ID token) is no access token, whatever the
    // issuer says about its activity.
    for kind in ["token_type", "token_use"] {
        match claims.get(kind) {
            None => {}
            Some(Value::String(t)) => {
                let t = t.to_ascii_lowercase();
                if t.contains("refresh") || t.contains("id_token") {
                    return Ok(Err(TokenError::Malformed));
                }
            }
            Some(_) => return Err(format!("`{kind}` is not a string")),
        }
    }
    let leeway = c.leeway.as_secs();
    let exp = numeric_date(&claims, "exp")?;
    if exp.is_some_and(|exp| exp.saturating_add(leeway) < now) {
        return Ok(Err(TokenError::Expired));
    }
    for claim in ["nbf", "iat"] {
        if numeric_date(&claims, claim)?.is_some_and(|t| t > now.saturating_add(leeway)) {
            return Ok(Err(TokenError::NotYetValid));
        }
    }
    if let Some(max) = c.max_token_lifetime {
        // As for JWTs: without `iat` (or `exp`) the lifetime cannot be
        // established, so the token is refused.
        let iat = numeric_date(&claims, "iat")?;
        match (iat, exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max.as_secs() => {}
            _ => return Ok(Err(TokenError::LifetimeExceeded)),
        }
    }
    let ours = |a: &str| c.audiences.iter().any(|x| x == a);
    let aud_ok = match claims.get("aud") {
        None => true,
        Some(Value::String(a)) => ours(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(ours),
        Some(_) => return Err("`aud` is neither a string nor an array".into()),
    };
    if !aud_ok {
        return Ok(Err(TokenError::WrongAudience));
    }
    let subject = claims.get("sub").and_then(Value::as_str).map(str::to_string);
    let client_id = claims
        .get("client_id")
        .or_else(|| claims.get("azp"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let scopes = extract_scopes(&claims, c.scope_claim.as_deref());
    let roles = extract_roles(&claims, &c.roles_claim);
    Ok(Ok(VerifiedToken {
        issuer: c.issuer.clone(),
        subject,
        client_id,
        scopes,
        roles,
        expires_at: exp.unwrap_or_else(|| now.saturating_add(cache_ttl.as_secs())),
        kid: None,
        claims: Arc::new(claims),
    }))
}

/// A NumericDate claim as whole seconds (`None` if absent).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_u64(), v.as_f64()) {
            (Some(t), _) => Ok(Some(t)),
            // Fractions are dropped (`as` saturates, never panics).
            (None, Some(t)) if t >= 0.0 && t.is_finite() => Ok(Some(t as u64)),
            _ => Err(format!("`{name}` is not a non-negative number")),
        },
    }
}

#[cfg(test)]
mod tests;
