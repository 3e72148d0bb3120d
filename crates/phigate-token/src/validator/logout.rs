//! OpenID Connect Back-Channel Logout 1.0: logout-token validation (§2.4–2.6).
//!
//! A logout token is a JWT the OP posts to the RP's back-channel logout
//! endpoint. It is verified with the issuer's keys through the same fetching
//! and rotation path as access tokens (including the unknown-`kid` refetch),
//! but under its own rules: the caller's client ids as audiences, `iat`
//! freshness, the back-channel logout event, `sid` and/or `sub`, no `nonce`;
//! the issuer's access-token `typ` rules and lifetime cap do not apply.
//! `jti` replay is left to the caller, who shares it across replicas.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::verify;
use super::Validator;
use crate::{Key, TokenError};

/// The `events` member that marks a logout token (§2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Default for [`LogoutRules::max_age`].
pub const DEFAULT_LOGOUT_MAX_AGE: Duration = Duration::from_secs(300);

/// A logout token that checked out: end the sessions it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub issuer: String,
    /// The OP session to end (`sid`).
    pub sid: Option<String>,
    /// The end-user whose sessions to end (`sub`).
    pub sub: Option<String>,
    /// For the caller's replay check.
    pub jti: String,
    pub iat: i64,
    pub exp: Option<i64>,
}

/// What a logout token is checked against.
#[derive(Debug, Clone, Copy)]
pub struct LogoutRules<'a> {
    /// Accepted `aud` values (this RP's client ids); the token must name one.
    pub client_ids: &'a [String],
    /// How old `iat` may be. `iat` may also lie up to the issuer's `leeway`
    /// in the future.
    pub max_age: Duration,
    /// The current time (seconds since the epoch).
    pub now: i64,
}

impl<'a> LogoutRules<'a> {
    /// Rules with [`DEFAULT_LOGOUT_MAX_AGE`].
    pub fn new(client_ids: &'a [String], now: i64) -> Self {
        Self {
            client_ids,
            max_age: DEFAULT_LOGOUT_MAX_AGE,
            now,
        }
    }
}

/// Why a logout token was refused. Each variant maps to one audit `reason`
/// ([`LogoutError::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutError {
    /// Not a compact JWS of strict JSON, too large, `crit`/`cty`/`enc`
    /// present, a `typ` other than `logout+jwt`/`JWT`, or a claim missing
    /// (`iss`, `iat`) or of the wrong type.
    #[error("logout token is malformed")]
    Malformed,
    #[error("logout token issuer is not trusted")]
    UnknownIssuer,
    /// Includes a `kid` unknown even after a refetch, a key that does not
    /// fit the algorithm, and an algorithm the issuer does not allow.
    #[error("logout token signature is invalid")]
    BadSignature,
    #[error("logout token audience does not match")]
    WrongAudience,
    #[error("logout token `iat` is outside the accepted window")]
    IatOutOfWindow,
    #[error("logout token has expired")]
    Expired,
    #[error("logout token lacks the back-channel logout event")]
    MissingEvent,
    #[error("logout token has neither `sid` nor `sub`")]
    MissingSubject,
    #[error("logout token carries a `nonce`")]
    HasNonce,
    #[error("logout token lacks `jti`")]
    MissingJti,
    #[error("issuer keys are unavailable")]
    KeysUnavailable,
}

impl LogoutError {
    /// The stable snake_case name (audit `reason`, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutError::Malformed => "logout_token_malformed",
            LogoutError::UnknownIssuer => "logout_token_unknown_issuer",
            LogoutError::BadSignature => "logout_token_bad_signature",
            LogoutError::WrongAudience => "logout_token_wrong_audience",
            LogoutError::IatOutOfWindow => "logout_token_iat_out_of_window",
            LogoutError::Expired => "logout_token_expired",
            LogoutError::MissingEvent => "logout_token_missing_event",
            LogoutError::MissingSubject => "logout_token_missing_subject",
            LogoutError::HasNonce => "logout_token_has_nonce",
            LogoutError::MissingJti => "logout_token_missing_jti",
            LogoutError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// The shared structural and key-path errors, in logout terms.
fn from_token_error(e: TokenError) -> LogoutError {
    match e {
        TokenError::KeysUnavailable => LogoutError::KeysUnavailable,
        TokenError::UnknownIssuer => LogoutError::UnknownIssuer,
        TokenError::UnsupportedAlgorithm | TokenError::UnknownKey | TokenError::InvalidSignature => {
            LogoutError::BadSignature
        }
        _ => LogoutError::Malformed,
    }
}

/// See [`Validator::validate_logout_token`].
pub(super) async fn validate(
    v: &Validator,
    token: &str,
    rules: &LogoutRules<'_>,
) -> Result<LogoutToken, LogoutError> {
    if token.is_empty() || token.len() > v.max_token_bytes() {
        return Err(LogoutError::Malformed);
    }
    // Shape, alphabet, strict JSON, `alg` (never none/HS*), no `crit`,
    // `cty`, `enc` or `zip`: the same structural checks as access tokens.
    let parsed = verify::parse(token).map_err(from_token_error)?;
    let iss = parsed
        .payload
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(LogoutError::Malformed)?;
    let issuer = v.issuers.get(iss).cloned().ok_or(LogoutError::UnknownIssuer)?;
    let c = &issuer.config;
    if token.len() > c.max_token_bytes {
        return Err(LogoutError::Malformed);
    }
    match parsed.header.get("typ") {
        None => {}
        Some(Value::String(t)) => {
            // §2.4 recommends `logout+jwt`; plain `JWT` is still common.
            let t = t.strip_prefix("application/").unwrap_or(t);
            if !t.eq_ignore_ascii_case("logout+jwt") && !t.eq_ignore_ascii_case("JWT") {
                return Err(LogoutError::Malformed);
            }
        }
        Some(_) => return Err(LogoutError::Malformed),
    }
    if !c.algorithms.contains(&parsed.alg) {
        return Err(LogoutError::BadSignature);
    }

    let key = key_for(v, &issuer, parsed.kid.as_deref()).await?;
    if !key.accepts(parsed.alg) {
        return Err(LogoutError::BadSignature);
    }
    let Some((message, signature)) = token.rsplit_once('.') else {
        return Err(LogoutError::Malformed);
    };
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.decoding, parsed.alg) {
        Ok(true) => {}
        _ => return Err(LogoutError::BadSignature),
    }

    // The payload we parsed strictly is the one that was signed.
    let claims = parsed.payload;
    let leeway = i64::try_from(c.leeway.as_secs()).unwrap_or(i64::MAX);
    if !audience_matches(claims.get("aud"), rules.client_ids)? {
        return Err(LogoutError::WrongAudience);
    }
    let iat = numeric_date(claims.get("iat"))?.ok_or(LogoutError::Malformed)?;
    let max_age = i64::try_from(rules.max_age.as_secs()).unwrap_or(i64::MAX);
    if iat < rules.now.saturating_sub(max_age) || iat > rules.now.saturating_add(leeway) {
        return Err(LogoutError::IatOutOfWindow);
    }
    let exp = numeric_date(claims.get("exp"))?;
    if exp.is_some_and(|exp| exp < rules.now.saturating_sub(leeway)) {
        return Err(LogoutError::Expired);
    }
    let jti = match claims.get("jti") {
        None => return Err(LogoutError::MissingJti),
        Some(Value::String(j)) if j.is_empty() => return Err(LogoutError::MissingJti),
        Some(Value::String(j)) => j.clone(),
        Some(_) => return Err(LogoutError::Malformed),
    };
    let sid = optional_string(&claims, "sid")?;
    let sub = optional_string(&claims, "sub")?;
    if sid.is_none() && sub.is_none() {
        return Err(LogoutError::MissingSubject);
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err(LogoutError::MissingEvent);
    }
    if claims.contains_key("nonce") {
        // §2.4: prohibited, so that a logout token cannot pass as an ID token.
        return Err(LogoutError::HasNonce);
    }
    Ok(LogoutToken {
        issuer: c.issuer.clone(),
        sid,
        sub,
        jti,
        iat,
        exp,
    })
}

/// The issuer's key for `kid`, through the same path as access tokens: the
/// current usable keys, else (unknown `kid`) the set to retry against after
/// a cooldown-limited, shared refetch; a second miss is remembered in the
/// issuer's negative cache.
async fn key_for(
    v: &Validator,
    issuer: &Arc<super::Issuer>,
    kid: Option<&str>,
) -> Result<Arc<Key>, LogoutError> {
    let snap = v.fetcher.keys_for(issuer).await.map_err(from_token_error)?;
    if let Some(key) = snap.set.find(kid) {
        return Ok(key.clone());
    }
    let snap = v
        .fetcher
        .refetch_for_unknown_kid(issuer, kid, snap.generation)
        .await
        .map_err(from_token_error)?;
    if let Some(key) = snap.set.find(kid) {
        return Ok(key.clone());
    }
    if let Some(k) = kid {
        issuer.remember_unknown(k, snap.generation);
    }
    Err(LogoutError::BadSignature)
}

/// `aud` as a string or an array of strings; whether it names a client id.
/// Absent: no match.
fn audience_matches(aud: Option<&Value>, client_ids: &[String]) -> Result<bool, LogoutError> {
    let named = |a: &str| client_ids.iter().any(|c| c == a);
    match aud {
        None => Ok(false),
        Some(Value::String(a)) => Ok(named(a)),
        Some(Value::Array(list)) => {
            let mut found = false;
            for a in list {
                found |= named(a.as_str().ok_or(LogoutError::Malformed)?);
            }
            Ok(found)
        }
        Some(_) => Err(LogoutError::Malformed),
    }
}

/// A NumericDate claim (fraction dropped); absent is `None`, anything but a
/// number is malformed.
fn numeric_date(v: Option<&Value>) -> Result<Option<i64>, LogoutError> {
    match v {
        None => Ok(None),
        Some(n) => {
            let secs = n.as_f64().ok_or(LogoutError::Malformed)?;
            Ok(Some(secs.floor() as i64)) // saturating, never panics
        }
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, LogoutError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(LogoutError::Malformed),
    }
}

#[cfg(test)]
mod tests;
