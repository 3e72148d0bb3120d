//! DPoP proof validation (RFC 9449 §4.3).
//!
//! [`verify_proof`] checks one `DPoP` header value against the request it
//! came with: the proof's shape and header (`typ`, an allowed asymmetric
//! `alg`, no `crit`), the public key in its `jwk` header (vetted like an
//! issuer's key: no private or symmetric members, RSA modulus of 2048–8192
//! bits, supported curve, key type fitting `alg`), the signature with that
//! key, and the claims `jti`, `htm`, `htu`, `iat`, `ath` and `nonce`. It
//! returns the key's RFC 7638 thumbprint (`jkt`), which the caller compares
//! with the access token's `cnf.jkt`.
//!
//! Pure code: no async, no I/O, no clock (the caller passes `now`), no
//! state. In particular `jti` replay is not tracked here; the caller records
//! [`DpopProof::jti`] (across replicas) for at least
//! [`DpopPolicy::max_age`] + [`DpopPolicy::max_future`].

use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::jwks::{parse_jwks, Key, KeyKind};

/// Largest proof accepted, checked before any decoding (bytes).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Longest `jti` accepted (characters).
pub const MAX_JTI_CHARS: usize = 256;

/// What a deployment accepts in DPoP proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopPolicy {
    /// Signature algorithms accepted for proofs. HMAC algorithms are refused
    /// even if listed (a proof must be signed with a private key whose public
    /// half it carries); `none` cannot be expressed.
    pub algorithms: Vec<Algorithm>,
    /// How old a proof's `iat` may be.
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be (clock-skew allowance).
    pub max_future: Duration,
}

impl Default for DpopPolicy {
    /// ES256, ES384, RS256, PS256 and EdDSA; `iat` at most 300 s old and at
    /// most 5 s ahead.
    fn default() -> Self {
        Self {
            algorithms: vec![
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::EdDSA,
            ],
            max_age: Duration::from_secs(300),
            max_future: Duration::from_secs(5),
        }
    }
}

/// Whether the proof must carry a server-provided nonce (RFC 9449 §8, §9).
#[derive(Clone, Copy)]
pub enum NonceCheck<'a> {
    /// Any `nonce` (or none) is accepted and reported in [`DpopProof::nonce`].
    NotRequired,
    /// The proof must carry a `nonce` that this function accepts; otherwise
    /// [`DpopError::NonceRequired`] (the caller answers `use_dpop_nonce`
    /// with a fresh `DPoP-Nonce`).
    Required(&'a dyn Fn(&str) -> bool),
}

impl std::fmt::Debug for NonceCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NonceCheck::NotRequired => f.write_str("NotRequired"),
            NonceCheck::Required(_) => f.write_str("Required(..)"),
        }
    }
}

/// One proof and the request it arrived with.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The `DPoP` header value (a single compact JWS).
    pub proof: &'a str,
    /// The request method, compared with `htm` exactly (case-sensitive).
    pub method: &'a str,
    /// The URI the client addressed, built by the caller:
    /// `scheme://host[:port]/path`, without query or fragment. Compared
    /// with `htu` after normalisation (see [`verify_proof`]); a value that
    /// is not an absolute http(s) URI matches nothing.
    pub htu: &'a str,
    /// The access token presented with the proof; when `Some`, the proof's
    /// `ath` must be [`access_token_hash`] of it.
    pub access_token: Option<&'a str>,
    /// The current time (seconds since the epoch).
    pub now: i64,
    pub expected_nonce: NonceCheck<'a>,
}

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's `jwk` (base64url, no
    /// padding), to compare with the access token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's `jti`, for the caller's replay check.
    pub jti: String,
    /// The proof's `iat` (seconds since the epoch, fraction dropped).
    pub iat: i64,
    /// The proof's `nonce`, if it carried one.
    pub nonce: Option<String>,
}

/// Why a proof was refused. Each variant maps to one audit `reason`
/// ([`DpopError::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Not a single compact JWS of strict JSON, too large, `crit` present,
    /// or a required claim missing or of the wrong type.
    #[error("DPoP proof is malformed")]
    Malformed,
    #[error("DPoP proof `typ` is not dpop+jwt")]
    WrongTyp,
    #[error("DPoP proof algorithm is not allowed")]
    BadAlg,
    #[error("DPoP proof `jwk` is not an acceptable public key")]
    BadJwk,
    #[error("DPoP proof signature is invalid")]
    BadSignature,
    #[error("DPoP proof `htm` does not match the request method")]
    HtmMismatch,
    #[error("DPoP proof `htu` does not match the request URI")]
    HtuMismatch,
    #[error("DPoP proof `iat` is outside the accepted window")]
    IatOutOfWindow,
    #[error("DPoP proof `ath` does not match the access token")]
    AthMismatch,
    #[error("DPoP proof lacks the required server nonce")]
    NonceRequired,
    #[error("DPoP proof lacks `jti`")]
    MissingJti,
}

impl DpopError {
    /// The stable snake_case name (audit `reason`, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            DpopError::Malformed => "dpop_proof_malformed",
            DpopError::WrongTyp => "dpop_proof_wrong_typ",
            DpopError::BadAlg => "dpop_proof_bad_alg",
            DpopError::BadJwk => "dpop_proof_bad_jwk",
            DpopError::BadSignature => "dpop_proof_bad_signature",
            DpopError::HtmMismatch => "dpop_proof_htm_mismatch",
            DpopError::HtuMismatch => "dpop_proof_htu_mismatch",
            DpopError::IatOutOfWindow => "dpop_proof_iat_out_of_window",
            DpopError::AthMismatch => "dpop_proof_ath_mismatch",
            DpopError::NonceRequired => "dpop_nonce_required",
            DpopError::MissingJti => "dpop_proof_missing_jti",
        }
    }
}

/// Validate a DPoP proof for one request (RFC 9449 §4.3).
///
/// In order: size cap ([`MAX_PROOF_BYTES`]) and compact JWS shape (three
/// non-empty base64url segments); header as strict JSON (duplicate keys
/// refused); `typ` is `dpop+jwt` (ASCII case-insensitive); `alg` in
/// `policy.algorithms` and asymmetric; no `crit`; `jwk` a vetted public key
/// fitting `alg`; payload as strict JSON; the signature; then the claims:
/// `jti` (non-empty string of at most [`MAX_JTI_CHARS`]), `htm` equal to
/// the method, `htu` matching the request URI, `iat` within
/// `[now - max_age, now + max_future]`, `ath` (when an access token is
/// given) and `nonce` (per [`ProofRequest::expected_nonce`]).
///
/// `htu` matching ignores query and fragment and applies RFC 3986
/// syntax- and scheme-based normalisation on both sides (scheme and host
/// case, default ports 80/443, empty path as `/`, dot segments); otherwise
/// the URIs must be equal. Only `http` and `https` URIs match.
pub fn verify_proof(req: &ProofRequest<'_>, policy: &DpopPolicy) -> Result<DpopProof, DpopError> {
    let (h, p, s) = split_compact(req.proof)?;
    let header = decode_object(h)?;
    match header.get("typ").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("dpop+jwt") => {}
        _ => return Err(DpopError::WrongTyp),
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(DpopError::Malformed)?;
    let alg = Algorithm::from_str(alg_name).map_err(|_| DpopError::BadAlg)?;
    if alg.family() == AlgorithmFamily::Hmac || !policy.algorithms.contains(&alg) {
        return Err(DpopError::BadAlg);
    }
    if header.contains_key("crit") {
        // We understand no extensions, so any critical one must fail (RFC 7515 §4.1.11).
        return Err(DpopError::Malformed);
    }
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(DpopError::BadJwk)?;
    let key = public_key(jwk, alg)?;
    let jkt = jwk_thumbprint(jwk)?;
    let claims = decode_object(p)?;
    // The message is the first two segments as sent (RFC 7515 §5.2).
    let message = &req.proof[..h.len() + 1 + p.len()];
    match jsonwebtoken::crypto::verify(s, message.as_bytes(), &key.decoding, alg) {
        Ok(true) => {}
        _ => return Err(DpopError::BadSignature),
    }

    let jti = match claims.get("jti") {
        None => return Err(DpopError::MissingJti),
        Some(Value::String(j)) if j.is_empty() => return Err(DpopError::MissingJti),
        Some(Value::String(j)) if j.chars().count() <= MAX_JTI_CHARS => j.clone(),
        Some(_) => return Err(DpopError::Malformed),
    };
    let htm = claims
        .get("htm")
        .and_then(Value::as_str)
        .ok_or(DpopError::Malformed)?;
    if htm != req.method {
        return Err(DpopError::HtmMismatch);
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or(DpopError::Malformed)?;
    if !htu_matches(htu, req.htu) {
        return Err(DpopError::HtuMismatch);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or(DpopError::Malformed)?
        .floor() as i64; // saturating, never panics
    let oldest = req.now.saturating_sub(secs(policy.max_age));
    let newest = req.now.saturating_add(secs(policy.max_future));
    if iat < oldest || iat > newest {
        return Err(DpopError::IatOutOfWindow);
    }
    if let Some(token) = req.access_token {
        match claims.get("ath").and_then(Value::as_str) {
            Some(ath) if ath == access_token_hash(token) => {}
            _ => return Err(DpopError::AthMismatch),
        }
    }
    let nonce = match claims.get("nonce") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(DpopError::Malformed),
    };
    if let NonceCheck::Required(accepts) = req.expected_nonce {
        match nonce.as_deref() {
            Some(n) if accepts(n) => {}
            _ => return Err(DpopError::NonceRequired),
        }
    }
    Ok(DpopProof { jkt, jti, iat, nonce })
}

/// RFC 7638 JWK thumbprint with SHA-256, base64url without padding: the
/// required members in lexicographic order, as JSON without whitespace.
/// Required members: EC `crv`, `kty`, `x`, `y`; RSA `e`, `kty`, `n`; OKP
/// `crv`, `kty`, `x`. Other key types, and missing, empty or non-string
/// required members, are refused with [`DpopError::BadJwk`].
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Result<String, DpopError> {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or(DpopError::BadJwk)
    };
    let required: &[&str] = match member("kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return Err(DpopError::BadJwk),
    };
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        // `Value`'s Display writes compact JSON with the escaping RFC 7638 asks for.
        canonical.push_str(&Value::from(*name).to_string());
        canonical.push(':');
        canonical.push_str(&Value::from(member(name)?).to_string());
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `ath` for an access token: base64url (no padding) of its SHA-256.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The three segments of a compact JWS: size cap, alphabet (base64url and
/// dots only), exactly two dots, no empty segment.
fn split_compact(proof: &str) -> Result<(&str, &str, &str), DpopError> {
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Malformed);
    }
    let base64url_or_dot = |b: u8| b == b'.' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric();
    if !proof.bytes().all(base64url_or_dot) {
        return Err(DpopError::Malformed);
    }
    let mut parts = proof.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() && !s.is_empty() => Ok((h, p, s)),
        _ => Err(DpopError::Malformed),
    }
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, DpopError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| DpopError::Malformed)?;
    match phigate_json::parse(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DpopError::Malformed),
    }
}

/// The proof's public key, vetted exactly as a key in an issuer's key set
/// ([`parse_jwks`]: no private or symmetric members, RSA modulus size,
/// supported curve, `use`/`key_ops`/`alg` fitting a signature key), with
/// coordinates of the curve's size, and fitting the proof's `alg`.
fn public_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<Key, DpopError> {
    let mut doc = Map::new();
    doc.insert("keys".into(), Value::Array(vec![Value::Object(jwk.clone())]));
    let doc = Value::Object(doc).to_string();
    let set = parse_jwks(doc.as_bytes()).map_err(|_| DpopError::BadJwk)?;
    // One key in the set: `find(None)` returns it whatever its `kid`.
    let key = set.find(None).ok_or(DpopError::BadJwk)?;
    if !key.accepts(alg) {
        return Err(DpopError::BadJwk);
    }
    let (coordinates, size): (&[&str], usize) = match key.kind {
        KeyKind::P256 => (&["x", "y"], 32),
        KeyKind::P384 => (&["x", "y"], 48),
        KeyKind::Ed25519 => (&["x"], 32),
        KeyKind::Rsa { .. } => (&[], 0),
    };
    for c in coordinates {
        let raw = jwk
            .get(*c)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
        if raw.is_none_or(|r| r.len() != size) {
            return Err(DpopError::BadJwk);
        }
    }
    Ok(Key::clone(key))
}

fn htu_matches(claim: &str, expected: &str) -> bool {
    match (normalise_htu(claim), normalise_htu(expected)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// An absolute http(s) URI without query and fragment, normalised by the
/// WHATWG URL parser (lower-case scheme and host, default port dropped,
/// empty path as `/`, dot segments resolved).
fn normalise_htu(uri: &str) -> Option<String> {
    let mut u = url::Url::parse(uri).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    u.set_query(None);
    u.set_fragment(None);
    Some(u.into())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
