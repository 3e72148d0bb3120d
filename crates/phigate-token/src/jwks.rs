//! Parsing and vetting a JSON Web Key Set.
//!
//! A key set is accepted only as a whole: one bad member (a private key part,
//! a symmetric key, a weak RSA modulus, a duplicate `kid`) rejects the update
//! and the caller keeps serving the previous set.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Largest JWKS document accepted (bytes).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys accepted in one set.
pub const MAX_KEYS: usize = 100;
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("key set is not valid JSON: {0}")]
    NotJson(String),
    #[error("key set has no `keys` array")]
    NoKeysArray,
    #[error("key set holds no usable signing keys")]
    Empty,
    #[error("key set holds more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("key `{0}` carries private key material")]
    PrivateMember(String),
    #[error("key `{0}` is a symmetric (oct) key; only public keys are accepted")]
    Symmetric(String),
    #[error("key id `{0}` appears twice")]
    DuplicateKid(String),
    #[error("key `{kid}`: RSA modulus of {bits} bits is outside [{MIN_RSA_BITS}, {MAX_RSA_BITS}]")]
    RsaSize { kid: String, bits: usize },
    #[error("key `{kid}`: {message}")]
    BadKey { kid: String, message: String },
}

/// The shape of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be verified with this key.
    pub fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One vetted verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    /// Whether this key may verify a token with header `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A vetted key set, indexed by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (usable only when the set has exactly one key).
    anonymous: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Find the key for a token header `kid` (or the only key when the token
    /// names none and the set holds exactly one).
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(k) => self.by_kid.get(k),
            None if self.len() == 1 => self.by_kid.values().next().or_else(|| self.anonymous.first()),
            None => None,
        }
    }
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
    /// Key ids in this set (sorted), for logs.
    pub fn kids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_kid.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Parse and vet a JWKS document. Keys whose `use` is not `sig` (or whose
/// `key_ops` lacks `verify`) and unknown key types are skipped; everything
/// else that is wrong rejects the whole set.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let doc = phigate_json::parse(bytes).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let mut set = KeySet::default();
    for (i, raw) in keys.iter().enumerate() {
        let obj = raw.as_object().ok_or_else(|| JwksError::BadKey {
            kid: format!("#{i}"),
            message: "not a JSON object".into(),
        })?;
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(_) => {
                return Err(JwksError::BadKey {
                    kid: format!("#{i}"),
                    message: "`kid` must be a non-empty string".into(),
                })
            }
        };
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            if *m == "k" || obj.get("kty").and_then(Value::as_str) == Some("oct") {
                return Err(JwksError::Symmetric(label));
            }
            return Err(JwksError::PrivateMember(label));
        }
        let kty = obj.get("kty").and_then(Value::as_str).unwrap_or_default();
        if kty == "oct" {
            return Err(JwksError::Symmetric(label));
        }
        if let Some(u) = obj.get("use") {
            if u.as_str() != Some("sig") {
                tracing::debug!(kid = %label, "skipping JWK whose use is not sig");
                continue;
            }
        }
        if let Some(ops) = obj.get("key_ops") {
            let verify = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verify {
                tracing::debug!(kid = %label, "skipping JWK without key_ops verify");
                continue;
            }
        }
        let bad = |message: String| JwksError::BadKey {
            kid: label.clone(),
            message,
        };
        let kind = match kty {
            "RSA" => {
                let n = obj
                    .get("n")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("RSA key without `n`".into()))?;
                let n = URL_SAFE_NO_PAD
                    .decode(n)
                    .map_err(|_| bad("`n` is not base64url".into()))?;
                let bits = rsa_bits(&n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(JwksError::RsaSize { kid: label, bits });
                }
                KeyKind::Rsa { bits }
            }
            "EC" => match obj.get("crv").and_then(Value::as_str) {
                Some("P-256") => KeyKind::P256,
                Some("P-384") => KeyKind::P384,
                other => return Err(bad(format!("unsupported EC curve {other:?}"))),
            },
            "OKP" => match obj.get("crv").and_then(Value::as_str) {
                Some("Ed25519") => KeyKind::Ed25519,
                other => return Err(bad(format!("unsupported OKP curve {other:?}"))),
            },
            other => {
                tracing::debug!(kid = %label, kty = other, "skipping JWK of unsupported type");
                continue;
            }
        };
        let alg = match obj.get("alg") {
            None => None,
            Some(Value::String(a)) => {
                let alg = Algorithm::from_str(a).map_err(|_| bad(format!("unknown alg `{a}`")))?;
                if !kind.supports(alg) {
                    return Err(bad(format!("alg `{a}` does not match key type {kty}")));
                }
                Some(alg)
            }
            Some(_) => return Err(bad("`alg` must be a string".into())),
        };
        let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| bad(format!("invalid JWK: {e}")))?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| bad(format!("unusable key: {e}")))?;
        let key = Arc::new(Key {
            kid: kid.clone(),
            kind,
            alg,
            decoding,
        });
        match kid {
            Some(k) => {
                if set.by_kid.insert(k.clone(), key).is_some() {
                    return Err(JwksError::DuplicateKid(k));
                }
            }
            None => set.anonymous.push(key),
        }
    }
    if set.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(set)
}

fn rsa_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ec_jwk(kid: &str) -> Value {
        crate::test_keys::TestKey::es256(kid).jwk
    }

    #[test]
    fn accepts_a_normal_set_and_skips_enc_keys() {
        let mut enc = ec_jwk("enc");
        enc["use"] = json!("enc");
        let doc = json!({"keys": [ec_jwk("a"), ec_jwk("b"), enc]}).to_string();
        let set = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.kids(), vec!["a", "b"]);
        assert!(set.find(Some("a")).unwrap().accepts(Algorithm::ES256));
        assert!(!set.find(Some("a")).unwrap().accepts(Algorithm::RS256));
        assert!(
            set.find(None).is_none(),
            "two keys: a token without kid matches none"
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let mut private = ec_jwk("p");
        private["d"] = json!("AAAA");
        let mut wrong_alg = ec_jwk("w");
        wrong_alg["alg"] = json!("RS256");
        let small_rsa = json!({"kty":"RSA","kid":"r","n": URL_SAFE_NO_PAD.encode([0xffu8; 128]),"e":"AQAB"});
        type Check = fn(&JwksError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (b"<html>".to_vec(), |e| matches!(e, JwksError::NotJson(_))),
            (b"{}".to_vec(), |e| matches!(e, JwksError::NoKeysArray)),
            (br#"{"keys":[]}"#.to_vec(), |e| matches!(e, JwksError::Empty)),
            (json!({"keys":[private]}).to_string().into_bytes(), |e| {
                matches!(e, JwksError::PrivateMember(_))
            }),
            (
                br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#.to_vec(),
                |e| matches!(e, JwksError::Symmetric(_)),
            ),
            (
                json!({"keys":[ec_jwk("d"), ec_jwk("d")]})
                    .to_string()
                    .into_bytes(),
                |e| matches!(e, JwksError::DuplicateKid(_)),
            ),
            (json!({"keys":[small_rsa]}).to_string().into_bytes(), |e| {
                matches!(e, JwksError::RsaSize { bits: 1024, .. })
            }),
            (json!({"keys":[wrong_alg]}).to_string().into_bytes(), |e| {
                matches!(e, JwksError::BadKey { .. })
            }),
            (br#"{"keys":[{"kid":"a"}],"keys":[]}"#.to_vec(), |e| {
                matches!(e, JwksError::NotJson(_))
            }),
            (vec![b' '; MAX_JWKS_BYTES + 1], |e| {
                matches!(e, JwksError::TooLarge)
            }),
        ];
        for (doc, check) in cases {
            let err = parse_jwks(&doc).unwrap_err();
            assert!(
                check(&err),
                "unexpected error {err:?} for {}",
                String::from_utf8_lossy(&doc[..doc.len().min(80)])
            );
        }
    }

    #[test]
    fn rsa_bit_length_ignores_leading_zero_bytes() {
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_bits(&[0x01]), 1);
        assert_eq!(rsa_bits(&[0, 0]), 0);
    }
}
