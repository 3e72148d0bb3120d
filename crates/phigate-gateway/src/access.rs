//! What the gateway checks after a token verified and before the policy
//! decides: sender constraints (DPoP proof, RFC 9449; certificate binding,
//! RFC 8705), and the session the token belongs to (automatic log-off,
//! logout, revocation), with state shared by replicas through
//! [`phigate_sessions`]. Also the OpenID Connect Back-Channel Logout
//! receiver and security-officer revocation.
//!
//! The checks run in a fixed order, each with its own `reason`:
//! 1. the scheme: a DPoP-bound token (`cnf.jkt`) must come as `DPoP`
//!    (`dpop_bound_token_as_bearer`); `require_dpop` (issuer or route)
//!    refuses `Bearer` (`dpop_required`);
//! 2. for `DPoP`: exactly one proof (`dpop_proof_missing`), the proof
//!    itself ([`phigate_token::dpop::verify_proof`], one reason per rule),
//!    its key = `cnf.jkt` (`dpop_key_mismatch`), its `jti` unused on every
//!    replica (`dpop_proof_replayed`);
//! 3. `cnf.x5t#S256` = the connection's client certificate
//!    (`certificate_binding_mismatch`);
//! 4. the session: not revoked (`session_revoked`), not idle
//!    (`session_idle_timeout`).
//!
//! A store that cannot be trusted fails closed (`session_store_unavailable`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use phigate_policy::Reason;
use phigate_sessions::{SessionError, SessionKey, SessionVerdict, Sessions};
use phigate_token::dpop::{DpopError, DpopPolicy, NonceCheck, ProofRequest};
use phigate_token::VerifiedToken;
use serde_json::Value;

use crate::config::{
    DpopSettings, IssuerRules, LogoutSettings, SessionKeyMode, SessionSettings, StoreSettings,
};

/// Idle timeout used when none is configured (the check still runs for
/// revocation).
const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The `Authorization` scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// What the request presented, for the checks.
#[derive(Debug)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
    /// Every `DPoP` header value.
    pub proofs: Vec<&'a str>,
    pub method: &'a str,
    /// The request path as sent (no query).
    pub path: &'a str,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: Option<&'a str>,
    /// `http` or `https`: the listener's scheme.
    pub listener_scheme: &'a str,
    /// The client certificate thumbprint (base64url SHA-256) on this connection.
    pub client_cert_sha256: Option<&'a str>,
}

/// A refusal by these checks: the reason and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    /// `WWW-Authenticate` value.
    pub challenge: Option<String>,
    /// A fresh `DPoP-Nonce` to send.
    pub nonce: Option<String>,
    /// A short explanation for the audit record.
    pub detail: Option<String>,
}

/// The access checks and their state. One per gateway, shared by listeners.
pub struct AccessControl {
    sessions: Option<Arc<Sessions>>,
    /// Where DPoP and logout-token `jti`s are remembered: the session store,
    /// or a memory store of this process when sessions are not configured.
    replay: Arc<Sessions>,
    settings: Option<SessionSettings>,
    dpop: DpopSettings,
    dpop_policy: DpopPolicy,
    algs_text: String,
    nonce_key: Option<hmac::Key>,
    issuer_rules: BTreeMap<String, IssuerRules>,
    logout: Option<LogoutSettings>,
}

/// Build the store configuration of [`phigate_sessions`] from ours.
fn store_config(s: &SessionSettings) -> phigate_sessions::SessionsConfig {
    let store = match &s.store {
        StoreSettings::Memory => phigate_sessions::StoreConfig::Memory,
        StoreSettings::Nats {
            url,
            bucket,
            credentials,
            tls_ca,
            tls_cert,
            tls_key,
            replicas,
            connect_timeout,
        } => phigate_sessions::StoreConfig::Nats(phigate_sessions::NatsStoreConfig {
            url: url.clone(),
            bucket: bucket.clone(),
            credentials: credentials.clone(),
            tls: (tls_ca.is_some() || tls_cert.is_some()).then(|| phigate_sessions::NatsTls {
                ca: tls_ca.clone(),
                cert: tls_cert.clone(),
                key: tls_key.clone(),
            }),
            replicas: *replicas,
            connect_timeout: *connect_timeout,
        }),
    };
    let mut c = phigate_sessions::SessionsConfig::new(s.idle_timeout.unwrap_or(NO_IDLE_TIMEOUT), store);
    c.write_interval = s.write_interval;
    c.stale_grace = s.stale_grace;
    c.max_local_entries = s.max_local_entries;
    c
}

impl AccessControl {
    /// Connect the session store (if configured) and set up the checks.
    pub async fn start(
        sessions: Option<SessionSettings>,
        dpop: DpopSettings,
        issuer_rules: BTreeMap<String, IssuerRules>,
        logout: Option<LogoutSettings>,
    ) -> Result<AccessControl, SessionError> {
        let store = match &sessions {
            Some(s) => Some(Arc::new(Sessions::connect(store_config(s)).await?)),
            None => None,
        };
        let replay = match &store {
            Some(s) => s.clone(),
            None => Arc::new(
                Sessions::connect(phigate_sessions::SessionsConfig::new(
                    NO_IDLE_TIMEOUT,
                    phigate_sessions::StoreConfig::Memory,
                ))
                .await?,
            ),
        };
        let nonce_key = if dpop.nonce {
            let secret = replay.shared_secret("dpop-nonce").await?;
            Some(hmac::Key::new(hmac::HMAC_SHA256, &secret))
        } else {
            None
        };
        let dpop_policy = DpopPolicy {
            algorithms: dpop.algorithms.clone(),
            max_age: dpop.max_age,
            ..DpopPolicy::default()
        };
        let algs_text = dpop
            .algorithms
            .iter()
            // jsonwebtoken's variant names are the JOSE names (`ES256`, `EdDSA`).
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(AccessControl {
            sessions: store,
            replay,
            settings: sessions,
            dpop,
            dpop_policy,
            algs_text,
            nonce_key,
            issuer_rules,
            logout,
        })
    }

    /// The session store, when sessions are configured.
    pub fn sessions(&self) -> Option<&Arc<Sessions>> {
        self.sessions.as_ref()
    }

    /// The store that remembers `jti`s (always present).
    pub fn replay_store(&self) -> &Arc<Sessions> {
        &self.replay
    }

    /// The back-channel logout settings, if the receiver is on.
    pub fn logout(&self) -> Option<&LogoutSettings> {
        self.logout.as_ref()
    }

    /// Whether a request to `path` is for the back-channel logout receiver.
    pub fn is_logout_path(&self, path: &str) -> bool {
        self.logout.as_ref().is_some_and(|l| l.path == path)
    }

    /// The key a token's session is kept under, or `None` for a token that
    /// names neither a session nor a subject (a machine client without `sub`).
    pub fn session_key(&self, t: &VerifiedToken) -> Option<SessionKey> {
        let mode = self.settings.as_ref().map(|s| s.key).unwrap_or_default();
        let sid = match mode {
            SessionKeyMode::Sid => t.claims.get("sid").and_then(Value::as_str),
            SessionKeyMode::Subject => None,
        };
        if sid.is_none() && t.subject.is_none() {
            return None;
        }
        Some(SessionKey::for_token(
            &t.issuer,
            sid,
            t.subject.as_deref(),
            t.client_id.as_deref(),
        ))
    }

    /// The idle timeout for a token of `issuer` on a route with `route_idle`:
    /// the shortest that applies.
    fn idle_timeout(&self, issuer: &str, route_idle: Option<Duration>) -> Duration {
        let global = self.settings.as_ref().and_then(|s| s.idle_timeout);
        let issuer = self
            .issuer_rules
            .get(issuer)
            .and_then(|r| r.idle_timeout)
            .or(global);
        match (issuer, route_idle) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => NO_IDLE_TIMEOUT,
        }
    }

    fn deny(&self, reason: Reason, scheme: Scheme, detail: Option<String>) -> Denial {
        let challenge = self.challenge(reason, scheme);
        let nonce = (reason == Reason::DpopNonceRequired)
            .then(|| self.new_nonce())
            .flatten();
        Denial {
            reason,
            challenge,
            nonce,
            detail,
        }
    }

    /// `WWW-Authenticate` for a refusal (RFC 6750 §3, RFC 9449 §7.1).
    pub fn challenge(&self, reason: Reason, scheme: Scheme) -> Option<String> {
        let algs = &self.algs_text;
        let description = match reason {
            Reason::SessionIdleTimeout => Some("session idle timeout"),
            Reason::SessionRevoked => Some("session revoked"),
            Reason::CertificateBindingMismatch => Some("certificate binding mismatch"),
            _ => None,
        };
        let dpop_proof = matches!(
            reason,
            Reason::DpopProofMissing
                | Reason::DpopProofMalformed
                | Reason::DpopProofMissingJti
                | Reason::DpopProofWrongTyp
                | Reason::DpopProofBadAlg
                | Reason::DpopProofBadJwk
                | Reason::DpopProofBadSignature
                | Reason::DpopProofHtmMismatch
                | Reason::DpopProofHtuMismatch
                | Reason::DpopProofIatOutOfWindow
                | Reason::DpopProofAthMismatch
                | Reason::DpopProofReplayed
        );
        Some(match reason {
            Reason::DpopNonceRequired => format!(
                "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\", algs=\"{algs}\""
            ),
            _ if dpop_proof => format!("DPoP error=\"invalid_dpop_proof\", algs=\"{algs}\""),
            Reason::DpopRequired => format!("DPoP algs=\"{algs}\""),
            Reason::DpopBoundTokenAsBearer | Reason::DpopKeyMismatch => {
                format!("DPoP error=\"invalid_token\", algs=\"{algs}\"")
            }
            r if r.is_invalid_token() => {
                let mut h = match scheme {
                    Scheme::Bearer => "Bearer error=\"invalid_token\"".to_string(),
                    Scheme::Dpop => format!("DPoP error=\"invalid_token\", algs=\"{algs}\""),
                };
                if let Some(d) = description {
                    h.push_str(&format!(", error_description=\"{d}\""));
                }
                h
            }
            _ => return None,
        })
    }

    /// A server nonce valid on every replica for `nonce_lifetime`:
    /// base64url(issued-at seconds, 8 bytes BE ‖ HMAC-SHA256(secret, those 8 bytes)[..16]).
    pub fn new_nonce(&self) -> Option<String> {
        let key = self.nonce_key.as_ref()?;
        let ts = (crate::proxy::unix_now() as u64).to_be_bytes();
        let tag = hmac::sign(key, &ts);
        let mut raw = ts.to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    fn nonce_valid(&self, nonce: &str) -> bool {
        let Some(key) = &self.nonce_key else { return false };
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 24 {
            return false;
        }
        let (ts, tag) = raw.split_at(8);
        let expected = hmac::sign(key, ts);
        // Constant-time comparison of the truncated tag.
        if aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..16], tag).is_err() {
            return false;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(ts);
        let issued = u64::from_be_bytes(b) as i64;
        let now = crate::proxy::unix_now();
        issued <= now + 5 && now - issued <= self.dpop.nonce_lifetime.as_secs() as i64
    }

    /// The URI the client addressed, as a DPoP proof's `htu` must name it.
    fn htu(&self, p: &Presented<'_>) -> Option<String> {
        match &self.dpop.public_base_url {
            Some(base) => Some(format!("{base}{}", p.path)),
            None => p.host.map(|h| format!("{}://{h}{}", p.listener_scheme, p.path)),
        }
    }

    /// Run the checks for a verified token. `route_idle` and `route_dpop`
    /// come from the matched route.
    pub async fn check(
        &self,
        p: &Presented<'_>,
        t: &VerifiedToken,
        route_idle: Option<Duration>,
        route_dpop: bool,
    ) -> Result<(), Denial> {
        let cnf = t.claims.get("cnf").and_then(Value::as_object);
        let jkt = cnf.and_then(|c| c.get("jkt")).and_then(Value::as_str);
        let require_dpop = route_dpop || self.issuer_rules.get(&t.issuer).is_some_and(|r| r.require_dpop);
        match p.scheme {
            Scheme::Bearer if jkt.is_some() => {
                return Err(self.deny(Reason::DpopBoundTokenAsBearer, p.scheme, None));
            }
            Scheme::Bearer if require_dpop => {
                return Err(self.deny(Reason::DpopRequired, p.scheme, None));
            }
            Scheme::Bearer => {}
            Scheme::Dpop => self.check_dpop(p, jkt).await?,
        }
        if let Some(x5t) = cnf.and_then(|c| c.get("x5t#S256")) {
            let bound = x5t.as_str();
            match (bound, p.client_cert_sha256) {
                (Some(b), Some(c)) if b == c => {}
                (_, None) => {
                    return Err(self.deny(
                        Reason::CertificateBindingMismatch,
                        p.scheme,
                        Some("no client certificate on this connection".into()),
                    ))
                }
                _ => {
                    return Err(self.deny(
                        Reason::CertificateBindingMismatch,
                        p.scheme,
                        Some("another client certificate".into()),
                    ))
                }
            }
        }
        if let (Some(store), Some(key)) = (&self.sessions, self.session_key(t)) {
            let iat = t.claims.get("iat").and_then(Value::as_f64).map(|f| f as i64);
            let idle = self.idle_timeout(&t.issuer, route_idle);
            let now_ms = crate::proxy::unix_now_ms();
            match store.check(&key, iat, idle, now_ms).await {
                Ok(SessionVerdict::Active) => {}
                Ok(SessionVerdict::Idle) => {
                    return Err(self.deny(Reason::SessionIdleTimeout, p.scheme, None))
                }
                Ok(SessionVerdict::Revoked) => return Err(self.deny(Reason::SessionRevoked, p.scheme, None)),
                Err(e) => {
                    return Err(self.deny(
                        Reason::SessionStoreUnavailable,
                        p.scheme,
                        Some(format!("session store: {e}")),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn check_dpop(&self, p: &Presented<'_>, jkt: Option<&str>) -> Result<(), Denial> {
        let [proof] = p.proofs[..] else {
            return Err(self.deny(Reason::DpopProofMissing, p.scheme, None));
        };
        let Some(htu) = self.htu(p) else {
            return Err(self.deny(
                Reason::DpopProofHtuMismatch,
                p.scheme,
                Some("no Host to build the request URI from; set dpop.public_base_url".into()),
            ));
        };
        // Verified in a block: the nonce check borrows `self` through a
        // `dyn Fn` that must not live across the `await` below.
        let verified = {
            let valid = |n: &str| self.nonce_valid(n);
            let req = ProofRequest {
                proof,
                method: p.method,
                htu: &htu,
                access_token: Some(p.token),
                now: crate::proxy::unix_now(),
                expected_nonce: if self.nonce_key.is_some() {
                    NonceCheck::Required(&valid)
                } else {
                    NonceCheck::NotRequired
                },
            };
            phigate_token::dpop::verify_proof(&req, &self.dpop_policy)
        };
        let proof = verified.map_err(|e| self.deny(dpop_reason(e), p.scheme, None))?;
        match jkt {
            Some(j) if j == proof.jkt => {}
            Some(_) => {
                return Err(self.deny(
                    Reason::DpopKeyMismatch,
                    p.scheme,
                    Some("proof key is not the token's cnf.jkt".into()),
                ))
            }
            None => {
                return Err(self.deny(
                    Reason::DpopKeyMismatch,
                    p.scheme,
                    Some("the token is not DPoP-bound (no cnf.jkt)".into()),
                ))
            }
        }
        // A proof is remembered for as long as its `iat` would be accepted.
        let ttl = self.dpop.max_age + Duration::from_secs(60);
        let id = format!("{}.{}", proof.jkt, proof.jti);
        match self.replay.claim_once("dpop", &id, ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.deny(Reason::DpopProofReplayed, p.scheme, None)),
            Err(e) => Err(self.deny(
                Reason::SessionStoreUnavailable,
                p.scheme,
                Some(format!("jti store: {e}")),
            )),
        }
    }
}

/// The reason for a refused DPoP proof.
pub fn dpop_reason(e: DpopError) -> Reason {
    match e {
        DpopError::Malformed => Reason::DpopProofMalformed,
        DpopError::MissingJti => Reason::DpopProofMissingJti,
        DpopError::WrongTyp => Reason::DpopProofWrongTyp,
        DpopError::BadAlg => Reason::DpopProofBadAlg,
        DpopError::BadJwk => Reason::DpopProofBadJwk,
        DpopError::BadSignature => Reason::DpopProofBadSignature,
        DpopError::HtmMismatch => Reason::DpopProofHtmMismatch,
        DpopError::HtuMismatch => Reason::DpopProofHtuMismatch,
        DpopError::IatOutOfWindow => Reason::DpopProofIatOutOfWindow,
        DpopError::AthMismatch => Reason::DpopProofAthMismatch,
        DpopError::NonceRequired => Reason::DpopNonceRequired,
    }
}
