//! Store keys derived from token claims. Claims never appear in the store:
//! keys are `<prefix>.` + base64url(SHA-256(domain tag, parts)), which also
//! makes every key a valid NATS KV key (`[-/_=.a-zA-Z0-9]`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Prefix of session keys.
pub(crate) const SESSION_PREFIX: &str = "s.";
/// Prefix of subject (revocation-by-subject) keys.
pub(crate) const SUBJECT_PREFIX: &str = "u.";
/// Prefix of one-time-use (jti) keys.
pub(crate) const JTI_PREFIX: &str = "j.";

/// Hash `parts` injectively: each part is length-prefixed, so no choice of
/// claim values (which may contain any byte, `\0` included) can make two
/// different part lists collide. The tag separates key kinds.
fn hashed(prefix: &str, tag: &str, parts: &[Option<&str>]) -> String {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    for part in parts {
        match part {
            None => h.update([0u8]),
            Some(p) => {
                h.update([1u8]);
                h.update((p.len() as u64).to_be_bytes());
                h.update(p.as_bytes());
            }
        }
    }
    let mut key = String::with_capacity(prefix.len() + 43);
    key.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(h.finalize(), &mut key);
    key
}

/// The identity of one login session, derived from token claims.
///
/// - With a `sid` claim: hash(`iss`, "sid", `sid`): every token of the IdP
///   session shares it, whatever client it was issued to.
/// - Without: hash(`iss`, "sub", `sub`, `client_id`): one session per
///   subject and client.
///
/// It also carries the subject key (hash(`iss`, `sub`)) when `sub` is known,
/// so a check honours [`crate::Sessions::revoke_sub`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    key: String,
    subject: Option<String>,
}

impl SessionKey {
    /// The key of the session a token belongs to. Tokens with neither `sid`
    /// nor `sub` (client credentials) would all share one session per
    /// client: leave them out of session checks.
    pub fn for_token(iss: &str, sid: Option<&str>, sub: Option<&str>, client_id: Option<&str>) -> SessionKey {
        let key = match sid {
            Some(sid) => hashed(
                SESSION_PREFIX,
                "phigate-session-v1",
                &[Some(iss), Some("sid"), Some(sid)],
            ),
            None => hashed(
                SESSION_PREFIX,
                "phigate-session-v1",
                &[Some(iss), Some("sub"), sub, client_id],
            ),
        };
        SessionKey {
            key,
            subject: sub.map(|s| SessionKey::subject(iss, s)),
        }
    }

    /// The key of a subject's revocation record: `u.` + hash(`iss`, `sub`).
    pub fn subject(iss: &str, sub: &str) -> String {
        hashed(SUBJECT_PREFIX, "phigate-subject-v1", &[Some(iss), Some(sub)])
    }

    /// The store key (`s.<43 base64url chars>`).
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The subject key, when the token had a `sub`.
    pub fn subject_key(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// The key of a one-time-use id: `j.` + hash(namespace, id).
pub(crate) fn jti_key(namespace: &str, id: &str) -> String {
    hashed(JTI_PREFIX, "phigate-jti-v1", &[Some(namespace), Some(id)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_nats_key(k: &str) -> bool {
        !k.is_empty()
            && !k.starts_with('.')
            && !k.ends_with('.')
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
    }

    #[test]
    fn keys_are_valid_nats_kv_keys() {
        let k = SessionKey::for_token("https://idp/\0", Some("s\u{e9}d"), Some("u"), None);
        assert!(valid_nats_key(k.as_str()), "{k}");
        assert!(k.as_str().starts_with("s."));
        assert_eq!(k.as_str().len(), 45);
        let s = SessionKey::subject("iss", "sub");
        assert!(valid_nats_key(&s) && s.starts_with("u."));
        assert!(valid_nats_key(&jti_key("dpop", "x")));
        assert_eq!(
            k.subject_key(),
            Some(SessionKey::subject("https://idp/\0", "u").as_str())
        );
    }

    #[test]
    fn sid_sessions_span_clients_and_subjects() {
        let a = SessionKey::for_token("iss", Some("sid1"), Some("alice"), Some("app1"));
        let b = SessionKey::for_token("iss", Some("sid1"), Some("alice"), Some("app2"));
        let c = SessionKey::for_token("iss", Some("sid2"), Some("alice"), Some("app1"));
        let d = SessionKey::for_token("other", Some("sid1"), Some("alice"), Some("app1"));
        assert_eq!(a.as_str(), b.as_str());
        assert_ne!(a.as_str(), c.as_str());
        assert_ne!(a.as_str(), d.as_str());
    }

    #[test]
    fn sub_sessions_are_per_client() {
        let a = SessionKey::for_token("iss", None, Some("alice"), Some("app1"));
        let b = SessionKey::for_token("iss", None, Some("alice"), Some("app2"));
        let c = SessionKey::for_token("iss", None, Some("alice"), None);
        let d = SessionKey::for_token("iss", None, Some("alice"), Some(""));
        assert_ne!(a.as_str(), b.as_str());
        assert_ne!(c.as_str(), d.as_str(), "absent and empty client_id differ");
    }

    #[test]
    fn parts_cannot_be_shifted_into_each_other() {
        // Joining with a separator would make these equal.
        let a = SessionKey::for_token("a\0sid\0b", Some("c"), None, None);
        let b = SessionKey::for_token("a", Some("b\0sid\0c"), None, None);
        assert_ne!(a.as_str(), b.as_str());
        let sid = SessionKey::for_token("iss", Some("x"), None, None);
        let sub = SessionKey::for_token("iss", None, Some("x"), None);
        assert_ne!(sid.as_str(), sub.as_str());
        assert_ne!(jti_key("a", "bc"), jti_key("ab", "c"));
    }
}
