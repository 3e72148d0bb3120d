//! Shared fixtures for the benchmarks and the load tools.
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
#![forbid(unsafe_code)]

pub mod devproc;
pub mod http1;

use phigate_policy::{compile, PolicySet, PolicySource};

/// A policy with `n` routes: the FHIR routes a real deployment has (one FHIR-aware `/fhir/**`), padded
/// with `n - 5` distinct API routes mixing literal and `{param}` segments.
pub fn policy_with_routes(n: usize) -> PolicySet {
    compile(&[PolicySource::new("bench.yaml", policy_text_with_routes(n))])
        .unwrap_or_else(|e| panic!("bench policy: {e:?}"))
}

/// The text of [`policy_with_routes`]: `GET /fhir/Patient/{id}` needs
/// `user/Patient.rs`, `GET /fhir/metadata` is public (the load tools write
/// it to a policy file).
pub fn policy_text_with_routes(n: usize) -> String {
    let mut text = String::from(
        "version: 1\nroutes:\n  - methods: [\"*\"]\n    path: /fhir/**\n    fhir: { base: /fhir }\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n  - methods: [GET]\n    path: /fhir/Observation\n    scopes: { any_of: [user/Observation.rs] }\n  - methods: [POST]\n    path: /fhir/Observation\n    scopes: { all_of: [user/Observation.c] }\n",
    );
    for i in 0..n.saturating_sub(5) {
        text.push_str(&format!(
            "  - methods: [GET, PUT]\n    path: /api/v{}/service{}/items/{{id}}/detail{}\n    scopes: {{ all_of: [svc{}.read, v1.patient.records.read] }}\n",
            i % 7,
            i,
            i % 3,
            i
        ));
    }
    text
}

/// DPoP (RFC 9449) client keys and proofs for the load tools.
pub mod dpop {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::{json, Value};

    /// An ES256 client key whose public JWK goes into each proof's header.
    pub struct ClientKey {
        encoding: jsonwebtoken::EncodingKey,
        jwk: Value,
    }

    impl ClientKey {
        #[allow(clippy::expect_used)] // a benchmark tool: a panic is the report
        pub fn generate() -> ClientKey {
            use aws_lc_rs::rand::SystemRandom;
            use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("P-256 key generation");
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).expect("PKCS#8");
            let point = pair.public_key().as_ref();
            ClientKey {
                encoding: jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref()),
                jwk: json!({
                    "kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                }),
            }
        }

        /// RFC 7638 thumbprint (a bound token's `cnf.jkt`).
        pub fn jkt(&self) -> String {
            let canonical = format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                self.jwk["x"].as_str().unwrap_or(""),
                self.jwk["y"].as_str().unwrap_or("")
            );
            URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                canonical.as_bytes(),
            ))
        }

        /// A proof for `method htu` bound to `token`; `n` makes its `jti` unique.
        #[allow(clippy::expect_used)]
        pub fn proof(&self, method: &str, htu: &str, token: &str, n: usize) -> String {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let ath = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                token.as_bytes(),
            ));
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.typ = Some("dpop+jwt".into());
            h.jwk = Some(serde_json::from_value(self.jwk.clone()).expect("jwk"));
            let claims = json!({ "jti": format!("load-{now}-{n}"), "htm": method, "htu": htu, "iat": now, "ath": ath });
            jsonwebtoken::encode(&h, &claims, &self.encoding).expect("ES256 signing")
        }
    }
}
