//! Pure verification of one token against a snapshot of an issuer's keys.
//!
//! Owns the validation sequence proper: the structural checks (alphabet,
//! compact JWS shape, header and payload as strict JSON objects, algorithm
//! allow-list, `crit`/`cty`/`enc`/`zip`, `typ`, per-issuer size cap, presence
//! and type of `iss`/`aud`/`exp`/`nbf`/`iat`), key selection by `kid` and
//! key-type/algorithm fit, the signature and registered-claim check via
//! `jsonwebtoken`, and extracting the caller's identity. No async, no I/O, no
//! shared state: everything comes in as arguments. A `kid` the snapshot does
//! not hold is reported as [`Unverified::UnknownKid`] (handing the token back)
//! so that the caller can decide whether to refetch keys and retry.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::jwks::{Key, KeySet};
use crate::{IssuerConfig, TokenError, VerifiedToken};

/// A token that passed the issuer-independent structural checks ([`parse`]).
pub(super) struct Parsed {
    pub(super) header: Map<String, Value>,
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
    pub(super) payload: Map<String, Value>,
}

/// A token that passed every structural check for its issuer
/// ([`Parsed::check_for`]), ready for key selection and signature checking.
pub(super) struct Pre {
    alg: Algorithm,
    pub(super) kid: Option<String>,
    payload: Map<String, Value>,
}

/// Why [`verify`] did not produce a verified token.
pub(super) enum Unverified {
    /// The key set holds no key for the token's `kid` (or, for a token
    /// without one, no single key). The token is handed back unchanged so the
    /// caller may refetch the keys and retry.
    UnknownKid(Pre),
    /// Refused for good.
    Rejected(TokenError),
}

impl From<TokenError> for Unverified {
    fn from(e: TokenError) -> Self {
        Unverified::Rejected(e)
    }
}

/// Structural checks before any issuer lookup, key lookup or cryptography.
/// The global size cap was checked by `Validator::validate`; here the
/// alphabet (a compact JWS is base64url segments and dots, nothing else),
/// the shape, and the header and payload as JSON objects.
pub(super) fn parse(token: &str) -> Result<Parsed, TokenError> {
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
    Ok(Parsed {
        header,
        alg,
        kid,
        payload,
    })
}

impl Parsed {
    /// The `iss` claim, which names the issuer whose rules and keys apply.
    pub(super) fn issuer(&self) -> Result<&str, TokenError> {
        self.payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("iss"))
    }

    /// Structural checks once the issuer is known: its own size cap, `typ`,
    /// algorithm allow-list, and the presence and type of the registered
    /// claims.
    pub(super) fn check_for(self, token: &str, c: &IssuerConfig) -> Result<Pre, TokenError> {
        let Parsed {
            header,
            alg,
            kid,
            payload,
        } = self;
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
        Ok(Pre { alg, kid, payload })
    }
}

/// Verify `pre` (the checked form of `token`) with the issuer's key set
/// `keys`: select the key by `kid`, check that it fits the algorithm, check
/// the signature and registered claims (and the issuer's
/// `max_token_lifetime`), and build the verified identity.
/// Returns the key that verified the token along with it.
pub(super) fn verify(
    token: &str,
    pre: Pre,
    c: &IssuerConfig,
    keys: &KeySet,
) -> Result<(VerifiedToken, Arc<Key>), Unverified> {
    let Some(key) = keys.find(pre.kid.as_deref()).cloned() else {
        return Err(Unverified::UnknownKid(pre));
    };
    if !key.accepts(pre.alg) {
        return Err(TokenError::UnsupportedAlgorithm.into());
    }
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
            return Err(TokenError::NotYetValid.into());
        }
    }
    if let Some(max) = c.max_token_lifetime {
        check_lifetime(&claims, max)?;
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
    Ok((verified, key))
}

/// [`IssuerConfig::max_token_lifetime`]: `exp - iat` must not exceed `max`.
/// Without `iat` the lifetime cannot be established, so the token is refused.
fn check_lifetime(claims: &Map<String, Value>, max: std::time::Duration) -> Result<(), TokenError> {
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or(TokenError::LifetimeExceeded)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(TokenError::Malformed)?;
    if exp - iat > max.as_secs_f64() {
        return Err(TokenError::LifetimeExceeded);
    }
    Ok(())
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

pub(super) fn extract_scopes(claims: &Map<String, Value>, claim: Option<&str>) -> Vec<String> {
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

pub(super) fn extract_roles(claims: &Map<String, Value>, path: &str) -> Vec<String> {
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
