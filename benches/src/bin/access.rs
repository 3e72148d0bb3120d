//! Cost per request of what runs after a token verified — the session check
//! and DPoP proof validation — as ratios against the plain cached-token path
//! measured in the same run (interleaved rounds; these machines are noisy).
//!
//! Variants (each: `Validator::validate` of a cached token, then
//! `AccessControl::check` of phigate-gateway, exactly what the proxy runs):
//! - `cached`: validation only (the baseline);
//! - `session/memory`, `session/nats`: + the session check (idle timeout
//!   15m) with the memory store and with NATS JetStream KV (a real
//!   `nats-server` on loopback; skipped if it is not installed);
//! - `dpop/memory`, `dpop/nats`: a DPoP-bound token with a fresh proof per
//!   request (generated before timing): proof checks + the `jti` claim;
//! - `dpop+session/nats`: both, as a DPoP deployment with sessions runs.
//!
//! `cargo run --release -p phigate-benches --bin access -- [--rounds 5] [--iterations 3000]`
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use phigate_gateway::access::{AccessControl, Presented, Scheme};
use phigate_gateway::config::{DpopSettings, SessionSettings, StoreSettings};
use phigate_token::{IssuerConfig, KeySource, Validator, VerifiedToken};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.bench";
const AUDIENCE: &str = "phigate-bench";
const HTU: &str = "http://gw.bench/fhir/Patient/123";

struct Key {
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl Key {
    /// The issuer's ES256 key with `kid`.
    fn es256(kid: &str) -> Key {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).expect("PKCS#8");
        let point = pair.public_key().as_ref();
        Key {
            encoding: jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// An access token (`typ: at+jwt`).
    fn token(&self, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = self.jwk["kid"].as_str().map(str::to_string);
        h.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("ES256 signing")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A real nats-server with JetStream on a free loopback port (the temp dir
/// holds its store for as long as it runs).
struct Nats(Child, #[allow(dead_code)] tempfile::TempDir, u16);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

fn start_nats(bin: &Path) -> Nats {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Nats(child, dir, port)
}

struct Variant {
    name: &'static str,
    access: Option<Arc<AccessControl>>,
    dpop: bool,
    /// The token has a session (`sid`/`sub`); DPoP-only variants use a
    /// bound machine token without `sub`, which has none.
    session: bool,
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = arg("--rounds", 5);
    let iterations = arg("--iterations", 3000);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let issuer_key = Key::es256("k1");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({ "keys": [issuer_key.jwk] }).to_string()).expect("jwks");
    let mut ic = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], KeySource::JwksFile(jwks_file));
    ic.algorithms = vec![jsonwebtoken::Algorithm::ES256];
    let validator = Validator::new(vec![ic], Arc::new(phigate_token::NoopObserver)).expect("validator");
    assert!(rt.block_on(validator.refresh_all()), "keys");

    let client_key = phigate_benches::dpop::ClientKey::generate();
    // Every proof of the run gets its own `jti` (variants share the NATS store).
    let proof_no = std::cell::Cell::new(0usize);
    let t = now();
    let plain = issuer_key.token(
        &json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "client_id": "app", "sid": "sid-1",
                 "scope": "user/Patient.rs", "iat": t, "exp": t + 3600 }),
    );
    let bound = issuer_key.token(
        &json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "u2", "client_id": "app", "sid": "sid-2",
                 "scope": "user/Patient.rs", "iat": t, "exp": t + 3600, "cnf": { "jkt": client_key.jkt() } }),
    );

    let bound_machine = issuer_key.token(&json!({ "iss": ISSUER, "aud": AUDIENCE, "client_id": "machine",
                 "scope": "system/Patient.rs", "iat": t, "exp": t + 3600, "cnf": { "jkt": client_key.jkt() } }),
    );
    let dpop = DpopSettings {
        public_base_url: Some("http://gw.bench".into()),
        ..DpopSettings::default()
    };
    let start = |sessions: Option<SessionSettings>| {
        Arc::new(
            rt.block_on(AccessControl::start(
                sessions,
                dpop.clone(),
                Default::default(),
                None,
            ))
            .expect("access control"),
        )
    };
    let idle = Some(Duration::from_secs(900));
    let mut variants = vec![
        Variant {
            name: "cached",
            access: None,
            dpop: false,
            session: false,
        },
        Variant {
            name: "session/memory",
            access: Some(start(Some(SessionSettings::memory(idle)))),
            dpop: false,
            session: true,
        },
        Variant {
            name: "dpop/memory",
            access: Some(start(None)),
            dpop: true,
            session: false,
        },
    ];
    let nats = nats_binary().map(|b| start_nats(&b));
    let mut stops = Vec::new();
    if let Some(n) = &nats {
        let settings = SessionSettings {
            store: StoreSettings::Nats {
                url: format!("nats://127.0.0.1:{}", n.2),
                bucket: "bench".into(),
                credentials: None,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
                replicas: 1,
                connect_timeout: Duration::from_secs(5),
            },
            ..SessionSettings::memory(idle)
        };
        let a = start(Some(settings));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = a.replay_store().clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(store.run(rx));
        });
        stops.push((tx, handle));
        for (name, dpop, session) in [
            ("session/nats", false, true),
            ("dpop/nats", true, false),
            ("dpop+session/nats", true, true),
        ] {
            variants.push(Variant {
                name,
                access: Some(a.clone()),
                dpop,
                session,
            });
        }
    } else {
        eprintln!("nats-server not found: NATS variants skipped (scripts/bootstrap.sh installs it)");
    }

    let run = |v: &Variant| -> f64 {
        let token = match (v.dpop, v.session) {
            (false, _) => plain.as_str(),
            (true, true) => bound.as_str(),
            (true, false) => bound_machine.as_str(),
        };
        let proofs: Vec<String> = if v.dpop {
            (0..iterations)
                .map(|_| {
                    proof_no.set(proof_no.get() + 1);
                    client_key.proof("GET", HTU, token, proof_no.get())
                })
                .collect()
        } else {
            Vec::new()
        };
        let started = Instant::now();
        rt.block_on(async {
            for i in 0..iterations {
                let verified: Arc<VerifiedToken> = validator.validate(token).await.expect("valid token");
                if let Some(a) = &v.access {
                    let p = Presented {
                        scheme: if v.dpop { Scheme::Dpop } else { Scheme::Bearer },
                        token,
                        proofs: proofs.get(i).map(|p| vec![p.as_str()]).unwrap_or_default(),
                        method: "GET",
                        path: "/fhir/Patient/123",
                        host: Some("gw.bench"),
                        listener_scheme: "http",
                        client_cert_sha256: None,
                    };
                    a.check(&p, &verified, None, false)
                        .await
                        .expect("access check passes");
                }
            }
        });
        started.elapsed().as_nanos() as f64 / iterations as f64
    };

    // Warm up every variant once (keys, caches, store connections).
    for v in &variants {
        run(v);
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        let mut this = Vec::new();
        for v in &variants {
            this.push(run(v));
        }
        for (i, x) in this.iter().enumerate() {
            ns[i].push(*x);
            ratios[i].push(x / this[0]);
        }
    }
    println!(
        "access checks per request, {rounds} rounds × {iterations} requests, interleaved; median [min–max]"
    );
    println!("{:<20} {:>22} {:>26}", "variant", "µs/request", "× cached");
    for (i, v) in variants.iter().enumerate() {
        let (lo, hi) = (
            ns[i].iter().cloned().fold(f64::MAX, f64::min),
            ns[i].iter().cloned().fold(0.0, f64::max),
        );
        let med = percentile(&mut ns[i], 0.5);
        let (rlo, rhi) = (
            ratios[i].iter().cloned().fold(f64::MAX, f64::min),
            ratios[i].iter().cloned().fold(0.0, f64::max),
        );
        let rmed = percentile(&mut ratios[i], 0.5);
        println!(
            "{:<20} {:>8.2} [{:.2}–{:.2}] {:>10.2}× [{:.2}–{:.2}]",
            v.name,
            med / 1000.0,
            lo / 1000.0,
            hi / 1000.0,
            rmed,
            rlo,
            rhi
        );
    }
    for (tx, handle) in stops {
        let _ = tx.send(true);
        let _ = handle.join();
    }
    drop(nats);
}
