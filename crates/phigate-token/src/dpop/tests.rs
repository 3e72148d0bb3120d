use std::sync::OnceLock;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jsonwebtoken::EncodingKey;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::test_keys::TestKey;

const NOW: i64 = 1_700_000_000;
const HTU: &str = "https://api.example.test/fhir/Patient";
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.access-token.sig";

/// A proof-signing key and its public JWK as a client would put it in the
/// proof header (no `kid`, `use` or `alg`).
struct ProofKey {
    encoding: EncodingKey,
    alg: Algorithm,
    jwk: Value,
}

impl ProofKey {
    fn es256() -> Self {
        let k = TestKey::es256("unused");
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": k.jwk["x"], "y": k.jwk["y"]});
        ProofKey {
            encoding: k.encoding,
            alg: Algorithm::ES256,
            jwk,
        }
    }

    fn ed25519() -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        ProofKey {
            encoding: EncodingKey::from_ed_der(doc.as_ref()),
            alg: Algorithm::EdDSA,
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        }
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": format!("{:?}", self.alg), "jwk": self.jwk})
    }

    /// A proof with this header and payload text, signed with this key.
    fn sign_raw(&self, header: &str, payload: &str) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{msg}.{sig}")
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }
}

fn claims() -> Value {
    json!({
        "jti": "e1j3V_bKic8-LAEB",
        "htm": "GET",
        "htu": HTU,
        "iat": NOW,
        "ath": access_token_hash(TOKEN),
    })
}

fn request(proof: &str) -> ProofRequest<'_> {
    ProofRequest {
        proof,
        method: "GET",
        htu: HTU,
        access_token: Some(TOKEN),
        now: NOW,
        expected_nonce: NonceCheck::NotRequired,
    }
}

fn check(proof: &str) -> Result<DpopProof, DpopError> {
    verify_proof(&request(proof), &DpopPolicy::default())
}

/// RFC 7638 computed by hand (and hashed with aws-lc, not `sha2`).
fn independent_ec_thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
}

#[test]
fn valid_es256_proof_is_accepted_with_its_thumbprint() {
    let k = ProofKey::es256();
    let mut c = claims();
    c["nonce"] = json!("n-1");
    let proof = check(&k.sign(&k.header(), &c)).unwrap();
    assert_eq!(proof.jkt, independent_ec_thumbprint(&k.jwk));
    assert_eq!(proof.jti, "e1j3V_bKic8-LAEB");
    assert_eq!(proof.iat, NOW);
    assert_eq!(proof.nonce.as_deref(), Some("n-1"));
}

#[test]
fn extra_jwk_members_do_not_change_the_thumbprint() {
    let k = ProofKey::es256();
    let mut h = k.header();
    h["jwk"]["kid"] = json!("client-key");
    h["jwk"]["use"] = json!("sig");
    h["jwk"]["alg"] = json!("ES256");
    let proof = check(&k.sign(&h, &claims())).unwrap();
    assert_eq!(proof.jkt, independent_ec_thumbprint(&k.jwk));
}

#[test]
fn valid_ed25519_proof_is_accepted() {
    let k = ProofKey::ed25519();
    let proof = check(&k.sign(&k.header(), &claims())).unwrap();
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        k.jwk["x"].as_str().unwrap()
    );
    assert_eq!(
        proof.jkt,
        URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
    );
}

#[test]
fn rfc7638_rsa_example_thumbprint() {
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(
        jwk_thumbprint(jwk.as_object().unwrap()).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn rfc9449_example_key_thumbprint() {
    // The proof key of RFC 9449 §4.1 and its `jkt` from §6.1.
    let jwk = json!({
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256"
    });
    assert_eq!(
        jwk_thumbprint(jwk.as_object().unwrap()).unwrap(),
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
}

#[test]
fn thumbprint_refuses_incomplete_or_unknown_keys() {
    for jwk in [
        json!({"kty": "EC", "crv": "P-256", "x": "AA"}),
        json!({"kty": "RSA", "n": "AA", "e": 65537}),
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"crv": "Ed25519", "x": "AA"}),
        json!({"kty": "OKP", "crv": "", "x": "AA"}),
    ] {
        assert_eq!(
            jwk_thumbprint(jwk.as_object().unwrap()),
            Err(DpopError::BadJwk),
            "{jwk}"
        );
    }
}

#[test]
fn access_token_hash_is_base64url_sha256() {
    // SHA-256("abc"), RFC 6234 test vector.
    assert_eq!(
        access_token_hash("abc"),
        URL_SAFE_NO_PAD.encode([
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
            0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
        ])
    );
}

#[test]
fn every_rule_has_its_own_error() {
    let k = ProofKey::es256();
    let other = ProofKey::es256();
    let ed = ProofKey::ed25519();
    let with_header = |f: &dyn Fn(&mut Value)| {
        let mut h = k.header();
        f(&mut h);
        k.sign(&h, &claims())
    };
    let with_claims = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        k.sign(&k.header(), &c)
    };
    let remove = |name: &'static str| move |c: &mut Value| drop(c.as_object_mut().unwrap().remove(name));
    let valid = k.sign(&k.header(), &claims());
    let (h, p, _) = split_compact(&valid).unwrap();
    let cases: Vec<(&str, String, DpopError)> = vec![
        ("empty", String::new(), DpopError::Malformed),
        ("two segments", format!("{h}.{p}"), DpopError::Malformed),
        ("four segments", format!("{valid}.x"), DpopError::Malformed),
        ("padding", format!("{valid}="), DpopError::Malformed),
        ("oversize", "a".repeat(MAX_PROOF_BYTES + 1), DpopError::Malformed),
        ("empty signature", format!("{h}.{p}."), DpopError::Malformed),
        (
            "duplicate header key",
            k.sign_raw(
                &format!(
                    r#"{{"typ":"dpop+jwt","alg":"ES256","alg":"none","jwk":{}}}"#,
                    k.jwk
                ),
                &claims().to_string(),
            ),
            DpopError::Malformed,
        ),
        (
            "duplicate claim",
            k.sign_raw(&k.header().to_string(), r#"{"jti":"a","jti":"b","htm":"GET"}"#),
            DpopError::Malformed,
        ),
        (
            "crit",
            with_header(&|h| h["crit"] = json!(["exp"])),
            DpopError::Malformed,
        ),
        (
            "no typ",
            with_header(&|h| drop(h.as_object_mut().unwrap().remove("typ"))),
            DpopError::WrongTyp,
        ),
        (
            "access token typ",
            with_header(&|h| h["typ"] = json!("at+jwt")),
            DpopError::WrongTyp,
        ),
        (
            "alg none",
            with_header(&|h| h["alg"] = json!("none")),
            DpopError::BadAlg,
        ),
        (
            "alg HS256",
            with_header(&|h| h["alg"] = json!("HS256")),
            DpopError::BadAlg,
        ),
        (
            "alg not in policy",
            with_header(&|h| h["alg"] = json!("ES512")),
            DpopError::BadAlg,
        ),
        (
            "no jwk",
            with_header(&|h| drop(h.as_object_mut().unwrap().remove("jwk"))),
            DpopError::BadJwk,
        ),
        (
            "private jwk",
            with_header(&|h| h["jwk"]["d"] = json!("AAAA")),
            DpopError::BadJwk,
        ),
        (
            "symmetric jwk",
            with_header(&|h| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
            DpopError::BadJwk,
        ),
        (
            "kty does not fit alg",
            with_header(&|h| h["alg"] = json!("RS256")),
            DpopError::BadJwk,
        ),
        (
            "curve does not fit alg",
            with_header(&|h| h["alg"] = json!("ES384")),
            DpopError::BadJwk,
        ),
        (
            "short coordinate",
            with_header(&|h| h["jwk"]["x"] = json!("AAAA")),
            DpopError::BadJwk,
        ),
        (
            "jwk of another key",
            with_header(&|h| h["jwk"] = other.jwk.clone()),
            DpopError::BadSignature,
        ),
        (
            "ed25519 jwk, ES256 signature",
            with_header(&|h| {
                h["alg"] = json!("EdDSA");
                h["jwk"] = ed.jwk.clone();
            }),
            DpopError::BadSignature,
        ),
        ("missing jti", with_claims(&remove("jti")), DpopError::MissingJti),
        (
            "empty jti",
            with_claims(&|c| c["jti"] = json!("")),
            DpopError::MissingJti,
        ),
        (
            "overlong jti",
            with_claims(&|c| c["jti"] = json!("j".repeat(257))),
            DpopError::Malformed,
        ),
        ("missing htm", with_claims(&remove("htm")), DpopError::Malformed),
        (
            "wrong htm",
            with_claims(&|c| c["htm"] = json!("POST")),
            DpopError::HtmMismatch,
        ),
        (
            "htm case",
            with_claims(&|c| c["htm"] = json!("get")),
            DpopError::HtmMismatch,
        ),
        ("missing htu", with_claims(&remove("htu")), DpopError::Malformed),
        (
            "other path",
            with_claims(&|c| c["htu"] = json!("https://api.example.test/fhir/Observation")),
            DpopError::HtuMismatch,
        ),
        (
            "other host",
            with_claims(&|c| c["htu"] = json!("https://evil.test/fhir/Patient")),
            DpopError::HtuMismatch,
        ),
        (
            "other scheme",
            with_claims(&|c| c["htu"] = json!("http://api.example.test/fhir/Patient")),
            DpopError::HtuMismatch,
        ),
        ("missing iat", with_claims(&remove("iat")), DpopError::Malformed),
        (
            "string iat",
            with_claims(&|c| c["iat"] = json!("1700000000")),
            DpopError::Malformed,
        ),
        (
            "stale iat",
            with_claims(&|c| c["iat"] = json!(NOW - 301)),
            DpopError::IatOutOfWindow,
        ),
        (
            "future iat",
            with_claims(&|c| c["iat"] = json!(NOW + 6)),
            DpopError::IatOutOfWindow,
        ),
        ("missing ath", with_claims(&remove("ath")), DpopError::AthMismatch),
        (
            "ath of another token",
            with_claims(&|c| c["ath"] = json!(access_token_hash("other"))),
            DpopError::AthMismatch,
        ),
        (
            "numeric nonce",
            with_claims(&|c| c["nonce"] = json!(7)),
            DpopError::Malformed,
        ),
    ];
    assert_eq!(check(&valid).map(|p| p.jti), Ok("e1j3V_bKic8-LAEB".into()));
    for (name, proof, want) in cases {
        assert_eq!(check(&proof), Err(want), "{name}");
    }
}

#[test]
fn iat_window_edges_are_inclusive() {
    let k = ProofKey::es256();
    for iat in [NOW - 300, NOW + 5, NOW] {
        let mut c = claims();
        c["iat"] = json!(iat);
        assert!(check(&k.sign(&k.header(), &c)).is_ok(), "iat {iat}");
    }
    let mut c = claims();
    c["iat"] = json!(NOW as f64 + 0.5);
    assert_eq!(check(&k.sign(&k.header(), &c)).map(|p| p.iat), Ok(NOW));
}

#[test]
fn nonce_is_checked_only_when_required() {
    let k = ProofKey::es256();
    let current = |n: &str| n == "server-nonce-2";
    let required = |proof: &str| {
        let mut r = request(proof);
        r.expected_nonce = NonceCheck::Required(&current);
        verify_proof(&r, &DpopPolicy::default())
    };
    let without = k.sign(&k.header(), &claims());
    let mut c = claims();
    c["nonce"] = json!("server-nonce-1");
    let stale = k.sign(&k.header(), &c);
    c["nonce"] = json!("server-nonce-2");
    let fresh = k.sign(&k.header(), &c);
    assert_eq!(required(&without), Err(DpopError::NonceRequired));
    assert_eq!(required(&stale), Err(DpopError::NonceRequired));
    assert_eq!(
        required(&fresh).map(|p| p.nonce),
        Ok(Some("server-nonce-2".into()))
    );
    assert_eq!(check(&without).map(|p| p.nonce), Ok(None));
}

#[test]
fn ath_is_not_required_without_an_access_token() {
    let k = ProofKey::es256();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("ath");
    let proof = k.sign(&k.header(), &c);
    let mut r = request(&proof);
    r.access_token = None;
    assert!(verify_proof(&r, &DpopPolicy::default()).is_ok());
}

#[test]
fn hmac_is_refused_even_when_listed_in_the_policy() {
    let k = ProofKey::es256();
    let mut h = k.header();
    h["alg"] = json!("HS256");
    let proof = k.sign(&h, &claims());
    let policy = DpopPolicy {
        algorithms: vec![Algorithm::HS256, Algorithm::ES256],
        ..DpopPolicy::default()
    };
    assert_eq!(verify_proof(&request(&proof), &policy), Err(DpopError::BadAlg));
}

#[test]
fn htu_is_compared_after_normalisation() {
    let cases = [
        ("https://API.Example.TEST/fhir/Patient", true),
        ("HTTPS://api.example.test/fhir/Patient", true),
        ("https://api.example.test:443/fhir/Patient", true),
        ("https://api.example.test/fhir/Patient?_id=1", true),
        ("https://api.example.test/fhir/Patient#frag", true),
        ("https://api.example.test/fhir/./Patient", true),
        ("https://api.example.test:8443/fhir/Patient", false),
        ("https://api.example.test/fhir/patient", false),
        ("https://api.example.test/fhir/Patient/", false),
        ("https://api.example.test.evil/fhir/Patient", false),
        ("/fhir/Patient", false),
        ("ftp://api.example.test/fhir/Patient", false),
        ("", false),
    ];
    for (claim, ok) in cases {
        assert_eq!(htu_matches(claim, HTU), ok, "{claim}");
    }
    assert!(htu_matches("http://h.test/", "http://h.test:80"));
    assert!(!htu_matches("http://h.test/", "not a uri"));
}

#[test]
fn error_names_are_stable() {
    assert_eq!(DpopError::NonceRequired.as_str(), "dpop_nonce_required");
    assert_eq!(DpopError::IatOutOfWindow.as_str(), "dpop_proof_iat_out_of_window");
    assert_eq!(DpopError::MissingJti.as_str(), "dpop_proof_missing_jti");
}

/// Keys generated once for the property test (key generation is the slow part).
fn keys() -> &'static [ProofKey] {
    static KEYS: OnceLock<Vec<ProofKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        vec![
            ProofKey::es256(),
            ProofKey::es256(),
            ProofKey::es256(),
            ProofKey::ed25519(),
            ProofKey::ed25519(),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_proof_signed_by_another_key_is_never_accepted(
        named in 0usize..5,
        offset in 1usize..5,
        jti in "[A-Za-z0-9_-]{1,40}",
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
        iat_delta in -300i64..=5,
        with_ath in any::<bool>(),
    ) {
        let keys = keys();
        let (named, signer) = (&keys[named], &keys[(named + offset) % keys.len()]);
        // The header names one key and its alg; another key signs.
        let mut header = named.header();
        header["alg"] = json!(format!("{:?}", signer.alg));
        let mut c = json!({"jti": jti, "htm": method, "htu": HTU, "iat": NOW + iat_delta});
        if with_ath {
            c["ath"] = json!(access_token_hash(TOKEN));
        }
        let proof = signer.sign(&header, &c);
        let mut r = request(&proof);
        r.method = method;
        r.access_token = with_ath.then_some(TOKEN);
        let got = verify_proof(&r, &DpopPolicy::default());
        prop_assert!(got.is_err());
        if named.alg == signer.alg {
            prop_assert_eq!(got, Err(DpopError::BadSignature));
        } else {
            prop_assert_eq!(got, Err(DpopError::BadJwk));
        }
        // The same claims signed by the named key itself are accepted.
        let own = named.sign(&named.header(), &c);
        let mut r = request(&own);
        r.method = method;
        r.access_token = with_ath.then_some(TOKEN);
        prop_assert!(verify_proof(&r, &DpopPolicy::default()).is_ok());
    }
}
