//! Token validation per algorithm, uncached vs through the verified-token cache.
//!
//! Target (issue 4): a cached validation is at least 20× faster than an
//! uncached ES256 validation measured in the same run
//! (`cargo run -p phigate-benches --bin bench-report` prints the ratios).
#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report
use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phigate_token::{IssuerConfig, KeySource, NoopObserver, Validator};
use serde_json::{json, Value};

const ISS: &str = "https://idp.bench";
const AUD: &str = "phigate-bench";

/// Extract the PKCS#1 RSAPrivateKey from a PKCS#8 PrivateKeyInfo (DER).
fn pkcs8_to_pkcs1(der: &[u8]) -> Vec<u8> {
    fn read(d: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = d[0];
        let (len, hdr) = if d[1] < 0x80 {
            (d[1] as usize, 2)
        } else {
            let n = (d[1] & 0x7f) as usize;
            (
                d[2..2 + n].iter().fold(0usize, |a, b| (a << 8) | *b as usize),
                2 + n,
            )
        };
        (tag, &d[hdr..hdr + len], &d[hdr + len..])
    }
    let (_, seq, _) = read(der);
    let (_, _version, rest) = read(seq);
    let (_, _alg, rest) = read(rest);
    let (tag, key, _) = read(rest);
    assert_eq!(tag, 0x04, "OCTET STRING");
    key.to_vec()
}

struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
}

fn keys() -> (Vec<Signer>, Value) {
    use aws_lc_rs::encoding::AsDer;
    let rng = SystemRandom::new();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let rsa = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = rsa.as_der().unwrap();
    let pkcs1 = pkcs8_to_pkcs1(pkcs8.as_ref());
    let public = rsa.public_key();
    let n = b64(public.modulus().big_endian_without_leading_zero());
    let e = b64(public.exponent().big_endian_without_leading_zero());
    let ec_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref()).unwrap();
    let point = ec.public_key().as_ref().to_vec();
    let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "use": "sig", "n": n, "e": e},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig", "alg": "ES256",
         "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig", "alg": "EdDSA", "x": b64(ed.public_key().as_ref())},
    ]});
    let signers = vec![
        Signer {
            alg: Algorithm::RS256,
            kid: "rsa",
            key: EncodingKey::from_rsa_der(&pkcs1),
        },
        Signer {
            alg: Algorithm::PS256,
            kid: "rsa",
            key: EncodingKey::from_rsa_der(&pkcs1),
        },
        Signer {
            alg: Algorithm::ES256,
            kid: "ec",
            key: EncodingKey::from_ec_der(ec_doc.as_ref()),
        },
        Signer {
            alg: Algorithm::EdDSA,
            kid: "ed",
            key: EncodingKey::from_ed_der(ed_doc.as_ref()),
        },
    ];
    (signers, jwks)
}

fn bench_validate(c: &mut Criterion) {
    let (signers, jwks) = keys();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let mut cfg = IssuerConfig::new(ISS, vec![AUD.into()], KeySource::JwksFile(path));
    cfg.algorithms = vec![
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uncached = Validator::new(vec![cfg.clone()], Arc::new(NoopObserver))
        .unwrap()
        .with_cache_capacity(0);
    let cached = Validator::new(vec![cfg], Arc::new(NoopObserver)).unwrap();
    assert!(rt.block_on(uncached.refresh_all()) && rt.block_on(cached.refresh_all()));
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "user-42", "client_id": "app-7", "iat": now, "exp": now + 3600,
        "scope": "user/Patient.rs user/Observation.rs launch openid", "jti": "bench",
    });
    let mut g = c.benchmark_group("validate");
    for s in &signers {
        let mut h = Header::new(s.alg);
        h.kid = Some(s.kid.into());
        h.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&h, &claims, &s.key).unwrap();
        let name = format!("{:?}", s.alg);
        assert!(rt.block_on(uncached.validate(&token)).is_ok(), "{name}");
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| rt.block_on(uncached.validate(black_box(&token))).unwrap())
        });
        assert!(rt.block_on(cached.validate(&token)).is_ok());
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| rt.block_on(cached.validate(black_box(&token))).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_validate);
criterion_main!(benches);
