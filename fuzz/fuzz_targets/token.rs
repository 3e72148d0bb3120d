//! Fuzz the token front end and validator: never panics, and never accepts
//! anything but the genuinely signed seed tokens (the fuzzer has no private
//! key of the configured issuer). Run with the seeds as the starting corpus:
//! `cargo fuzz run token corpus/token seeds/token -s none` (libFuzzer writes
//! new inputs into the first directory only).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use phigate_token::{IssuerConfig, KeySource, NoopObserver, Validator};

/// The issuer's only key: the public half of the key that signed the seed
/// tokens in `seeds/token/` (its private half was discarded).
const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256", "x": "7oXSStRnTf9twjFq-0y8IB82PFWmXc7w7u6M29vT4V4", "y": "5Mx1tv6ZOddUy_5g9sXhxZkDqICLR8guEDiopDoR9gI"}]}"#;

/// Seeds that carry a valid signature and unexpired claims: the only inputs
/// the validator may ever accept.
const SIGNED: &[&str] = &[include_str!("../seeds/token/valid"), include_str!("../seeds/token/scp-array")];

struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: Validator,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("phigate-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, JWKS).expect("write jwks");
        let mut c = IssuerConfig::new("https://idp.fuzz", vec!["phigate".into()], KeySource::JwksFile(path));
        c.unknown_kid_cooldown = std::time::Duration::from_secs(3600);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let validator = Validator::new(vec![c], Arc::new(NoopObserver)).expect("validator");
        assert!(rt.block_on(validator.refresh_all()));
        Fixture { rt, validator }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let token = String::from_utf8_lossy(data);
    if f.rt.block_on(f.validator.validate(&token)).is_ok() {
        assert!(SIGNED.contains(&token.as_ref()), "accepted a token nobody signed: {token}");
    }
});
