//! Ed25519 keys for signed checkpoints.
//!
//! A checkpoint signs the ASCII bytes of the hash it covers; since every hash
//! commits to all earlier records, one valid signature vouches for the whole
//! chain up to it. Keys are what `openssl genpkey -algorithm ed25519` writes
//! (PKCS#8 PEM), or a raw 32-byte seed; public keys are SubjectPublicKeyInfo
//! PEM (`openssl pkey -pubout`) or the raw 32 bytes. Raw values may also be
//! given as 64 hex digits or base64url text.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::AuditError;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The `key_id` of a public key: the first 16 hex digits of SHA-256 of its raw 32 bytes.
pub fn key_id(raw_public_key: &[u8]) -> String {
    let mut id = hex::encode(Sha256::digest(raw_public_key));
    id.truncate(16);
    id
}

/// The private key that signs checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Load a PKCS#8 (PEM or DER) private key, or a raw 32-byte seed.
    pub fn from_file(path: &Path) -> Result<SigningKey, AuditError> {
        let bytes = std::fs::read(path).map_err(|e| key_error(path, e.to_string()))?;
        SigningKey::from_bytes(&bytes).map_err(|m| key_error(path, m))
    }

    /// See [`SigningKey::from_file`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, String> {
        let pair = if let Some(der) = pem(bytes, "PRIVATE KEY")? {
            Ed25519KeyPair::from_pkcs8(&der).map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?
        } else if let Some(seed) = raw32(bytes) {
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| format!("bad Ed25519 seed: {e}"))?
        } else {
            Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| {
                "expected an Ed25519 PKCS#8 key (PEM or DER) or a 32-byte seed (raw, hex or base64url)"
                    .to_string()
            })?
        };
        let key_id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    /// A new random key.
    pub fn generate() -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::generate().map_err(|e| format!("key generation failed: {e}"))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    /// The private key as PKCS#8 v1 PEM (what `openssl genpkey` writes).
    pub fn to_pkcs8_pem(&self) -> Result<String, String> {
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|e| format!("cannot encode key: {e}"))?;
        Ok(to_pem("PRIVATE KEY", doc.as_ref()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The matching public key.
    pub fn verify_key(&self) -> VerifyKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        VerifyKey {
            raw,
            key_id: self.key_id.clone(),
        }
    }

    /// The checkpoint `signature` over `covers_hash`: base64url, no padding.
    pub fn sign(&self, covers_hash: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.sign(covers_hash.as_bytes()).as_ref())
    }
}

/// A public key that checks checkpoint signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    raw: [u8; 32],
    key_id: String,
}

impl VerifyKey {
    /// Load a SubjectPublicKeyInfo PEM, a raw 32-byte public key (raw, hex or
    /// base64url), or a private key file (its public half is used).
    pub fn from_file(path: &Path) -> Result<VerifyKey, AuditError> {
        let bytes = std::fs::read(path).map_err(|e| key_error(path, e.to_string()))?;
        VerifyKey::from_bytes(&bytes).map_err(|m| key_error(path, m))
    }

    /// See [`VerifyKey::from_file`].
    pub fn from_bytes(bytes: &[u8]) -> Result<VerifyKey, String> {
        let raw = if let Some(der) = pem(bytes, "PUBLIC KEY")? {
            spki_raw(&der).ok_or("not an Ed25519 public key (SubjectPublicKeyInfo)")?
        } else if pem(bytes, "PRIVATE KEY")?.is_some() {
            return SigningKey::from_bytes(bytes).map(|k| k.verify_key());
        } else if let Some(raw) = raw32(bytes) {
            raw
        } else if let Some(raw) = spki_raw(bytes) {
            raw
        } else {
            return Err(
                "expected an Ed25519 public key: PEM, DER or 32 bytes (raw, hex or base64url)".into(),
            );
        };
        Ok(VerifyKey {
            raw,
            key_id: key_id(&raw),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        to_pem("PUBLIC KEY", &der)
    }

    /// Does `signature` (base64url, padding optional) sign `covers_hash`?
    pub fn verify(&self, covers_hash: &str, signature: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(covers_hash.as_bytes(), &sig)
            .is_ok()
    }
}

fn key_error(path: &Path, message: String) -> AuditError {
    AuditError::Key {
        path: path.to_path_buf(),
        message,
    }
}

/// The DER inside a PEM block with this label; `None` if the text has no such block.
fn pem(bytes: &[u8], label: &str) -> Result<Option<Vec<u8>>, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(None);
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        return Ok(None);
    };
    let body = &text[start + begin.len()..];
    let Some(stop) = body.find(&end) else {
        return Err(format!("PEM block `{label}` has no END line"));
    };
    let b64: String = body[..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(b64)
        .map(Some)
        .map_err(|e| format!("bad PEM base64: {e}"))
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// 32 raw bytes, or their hex / base64url text form.
fn raw32(bytes: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
        return Some(out);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = if text.len() == 64 {
        hex::decode(text).ok()?
    } else {
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?
    };
    (decoded.len() == 32).then(|| {
        out.copy_from_slice(&decoded);
        out
    })
}

fn spki_raw(der: &[u8]) -> Option<[u8; 32]> {
    let key = der.strip_prefix(&SPKI_PREFIX[..])?;
    let mut out = [0u8; 32];
    (key.len() == 32).then(|| {
        out.copy_from_slice(key);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_right_key_only() {
        let k = SigningKey::generate().unwrap();
        let h = crate::chain::GENESIS_HASH;
        let sig = k.sign(h);
        assert!(k.verify_key().verify(h, &sig));
        assert!(!k.verify_key().verify(&h.replace('0', "1"), &sig));
        let other = SigningKey::generate().unwrap();
        assert!(!other.verify_key().verify(h, &sig));
        assert_ne!(k.key_id(), other.key_id());
        assert!(!k.verify_key().verify(h, "not base64!"));
    }

    #[test]
    fn keys_load_from_pem_seed_and_public_forms() {
        let k = SigningKey::generate().unwrap();
        let pem_text = k.to_pkcs8_pem().unwrap();
        let again = SigningKey::from_bytes(pem_text.as_bytes()).unwrap();
        assert_eq!(again.key_id(), k.key_id());
        let public = VerifyKey::from_bytes(k.verify_key().to_pem().as_bytes()).unwrap();
        assert_eq!(public, k.verify_key());
        // A private key file is accepted where a public key is expected.
        assert_eq!(
            VerifyKey::from_bytes(pem_text.as_bytes()).unwrap(),
            k.verify_key()
        );

        let seed = [7u8; 32];
        let a = SigningKey::from_bytes(&seed).unwrap();
        let b = SigningKey::from_bytes(hex::encode(seed).as_bytes()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert!(SigningKey::from_bytes(b"nonsense").is_err());
        assert!(VerifyKey::from_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
    }

    /// `openssl genpkey -algorithm ed25519` output (RFC 8410 test key).
    #[test]
    fn loads_openssl_keys() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let k = SigningKey::from_bytes(private.as_bytes()).unwrap();
        let p = VerifyKey::from_bytes(public.as_bytes()).unwrap();
        assert_eq!(k.verify_key(), p);
        assert!(p.verify("abc", &k.sign("abc")));
    }
}
