//! The hash chain: how a line's `hash` is computed.
//!
//! `hash = hex(SHA-256(prev_hash_hex_ascii || canonical))`, where
//! `canonical` is the line as a JSON object without its `hash` member, keys
//! sorted lexicographically at every level, compact. serde_json's default
//! `Map` is a `BTreeMap`, so `serde_json::to_string(&Value)` *is* that form
//! (the workspace must not enable serde_json's `preserve_order`). A verifier
//! therefore parses a line as a `Value`, removes `"hash"`, re-serialises and
//! hashes; `float_roundtrip` makes every number parse back to the exact value
//! that was written.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the very first record (seq 1).
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a record, given the previous record's hash and the record as a
/// JSON value *without* its `hash` member.
pub fn record_hash(prev_hash: &str, record_without_hash: &Value) -> String {
    hash_canonical(prev_hash, &canonical(record_without_hash))
}

/// The canonical text of a record (sorted keys, compact).
pub fn canonical(record_without_hash: &Value) -> String {
    // Serialising a Value cannot fail (its keys are strings).
    serde_json::to_string(record_without_hash).unwrap_or_default()
}

/// SHA-256 over `prev_hash` and an already canonical text.
pub fn hash_canonical(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Is `s` a hash as this format writes it (64 lowercase hex digits)?
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Seal a record: compute its hash and produce its line (with `\n`).
///
/// `record` must be an object without `hash` whose `prev_hash` is
/// `prev_hash`. The line is the canonical text with `"hash"` appended as the
/// last member: verifiers parse lines, so member order on the line does not
/// matter, and this avoids serialising twice.
pub fn seal(prev_hash: &str, record: &Value) -> (String, String) {
    seal_canonical(prev_hash, canonical(record))
}

/// [`seal`] for a record already in canonical form
/// ([`crate::canonical::to_canonical_string`]).
pub fn seal_canonical(prev_hash: &str, canonical: String) -> (String, String) {
    let hash = hash_canonical(prev_hash, &canonical);
    let mut line = canonical;
    line.pop(); // the closing `}` of the object
    if line.len() > 1 {
        line.push(',');
    }
    line.push_str("\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// Recompute the hash of a parsed line. Returns `(stored, computed)`, or
/// `None` when the line has no string `hash` or no string `prev_hash`.
pub fn check_line(mut line: serde_json::Map<String, Value>) -> Option<(String, String)> {
    let stored = match line.remove("hash")? {
        Value::String(s) => s,
        _ => return None,
    };
    let prev = line.get("prev_hash")?.as_str()?.to_owned();
    let computed = record_hash(&prev, &Value::Object(line));
    Some((stored, computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer, computed independently:
    /// `printf '%s' "$(printf '0%.0s' {1..64}){\"a\":1,\"b\":{\"c\":\"x\",\"d\":[2,1]},\"prev_hash\":\"…\"}" | sha256sum`
    #[test]
    fn record_hash_known_answer() {
        // Keys deliberately out of order: the canonical form sorts them at every level.
        let v: Value = serde_json::from_str(&format!(
            r#"{{"prev_hash":"{GENESIS_HASH}","b":{{"d":[2,1],"c":"x"}},"a":1}}"#
        ))
        .unwrap();
        assert_eq!(
            canonical(&v),
            format!(r#"{{"a":1,"b":{{"c":"x","d":[2,1]}},"prev_hash":"{GENESIS_HASH}"}}"#)
        );
        assert_eq!(
            record_hash(GENESIS_HASH, &v),
            "f76a366d9bdeda4cb4adaf4403a167afdc77f578d865d26db1d941f2c228cda4"
        );
    }

    #[test]
    fn sealed_line_verifies_by_parse_remove_reserialise() {
        let v: Value =
            serde_json::json!({"prev_hash": GENESIS_HASH, "seq": 1, "x": 0.1 + 0.2, "s": "é\n\"q\""});
        let (line, hash) = seal(GENESIS_HASH, &v);
        assert!(line.ends_with("\"}\n") && line.matches('\n').count() == 1);
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(check_line(parsed), Some((hash.clone(), hash.clone())));
        assert!(is_hash(&hash));
    }

    #[test]
    fn every_f64_round_trips_through_a_line() {
        // The verifier re-serialises parsed numbers: they must come back bit for bit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            let v = serde_json::json!({"prev_hash": GENESIS_HASH, "duration_ms": f});
            let (line, hash) = seal(GENESIS_HASH, &v);
            let parsed: serde_json::Map<String, Value> = serde_json::from_str(&line).unwrap();
            assert_eq!(check_line(parsed), Some((hash.clone(), hash)), "{f:e}");
        }
    }
}
