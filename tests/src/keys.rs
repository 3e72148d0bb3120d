//! Test signing keys and token minting.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An ES256 key with a kid.
pub struct TestKey {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn es256(kid: &str) -> Self {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        TestKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(doc.as_ref()),
            jwk,
        }
    }

    /// A JWKS holding the given keys.
    pub fn jwks(keys: &[&TestKey]) -> String {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
    }

    /// Sign `claims` with this key (ES256, kid set).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    /// Sign `claims` with this key (ES256, kid set) and the header `typ`
    /// given, e.g. `logout+jwt` for an OpenID Connect logout token.
    pub fn sign_with_typ(&self, claims: &Value, typ: &str) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some(typ.into());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Valid claims for the test issuer and audience with the given scopes.
pub fn claims(scope: &str) -> Value {
    let now = now();
    json!({
        "iss": crate::ISSUER, "aud": crate::AUDIENCE, "sub": "user-42", "client_id": "app-7",
        "scope": scope, "iat": now, "exp": now + 300, "jti": format!("jti-{now}"),
    })
}

/// A compact JWS with an arbitrary header and payload and the given signature bytes.
pub fn forge(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// HS256-sign with `secret` (the classic algorithm-confusion attack when the
/// secret is the issuer's public key).
pub fn hs256(header_kid: &str, payload: &Value, secret: &[u8]) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(header_kid.to_string());
    jsonwebtoken::encode(&h, payload, &EncodingKey::from_secret(secret)).unwrap()
}

/// A DPoP key pair of a client (ES256), and the proofs it signs (RFC 9449).
pub struct DpopKey {
    encoding: EncodingKey,
    /// The public JWK (`kty`, `crv`, `x`, `y`).
    pub jwk: Value,
}

impl DpopKey {
    pub fn generate() -> Self {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        DpopKey {
            encoding: EncodingKey::from_ec_der(doc.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// The RFC 7638 thumbprint: a bound token's `cnf.jkt`.
    pub fn jkt(&self) -> String {
        use sha2_free::sha256;
        let j = &self.jwk;
        let canonical = format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            j["crv"].as_str().unwrap(),
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
    }

    /// A fresh proof for `method htu` bound to `access_token` (`ath`), with
    /// an optional server nonce.
    pub fn proof(&self, method: &str, htu: &str, access_token: &str, nonce: Option<&str>) -> String {
        let mut claims = json!({
            "jti": format!("{:032x}", rand_u128()),
            "htm": method,
            "htu": htu,
            "iat": now(),
            "ath": URL_SAFE_NO_PAD.encode(sha2_free::sha256(access_token.as_bytes())),
        });
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        self.sign_proof(&claims)
    }

    /// Sign arbitrary proof claims with this key and its `jwk` in the header.
    pub fn sign_proof(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u128::from_be_bytes(b)
}

/// SHA-256 via aws-lc-rs (no extra dependency).
mod sha2_free {
    pub fn sha256(data: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
            .as_ref()
            .to_vec()
    }
}
