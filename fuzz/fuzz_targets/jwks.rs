//! Fuzz the JWKS parser: never panics; anything accepted holds only vetted public keys.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = phigate_token::parse_jwks(data) {
        assert!(!set.is_empty());
        assert!(set.len() <= 100);
    }
});
