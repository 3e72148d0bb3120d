//! Fuzz the token front end and validator: never panics, never accepts
//! anything (the fuzzer has no private key of the configured issuer).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use phigate_token::{IssuerConfig, KeySource, NoopObserver, Validator};

/// A P-256 public key (from RFC 7515 appendix A.3) as the issuer's only key.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

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
    assert!(f.rt.block_on(f.validator.validate(&token)).is_err());
});
