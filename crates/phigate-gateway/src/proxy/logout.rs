//! The OpenID Connect Back-Channel Logout 1.0 receiver (`POST
//! backchannel_logout.path` on the proxy listeners) and the session
//! revocation both it and `phigate sessions revoke` perform.
//!
//! A logout is never forwarded. Its audit slot is reserved before anything
//! is changed (no slot: 503, nothing done, the issuer retries); the token is
//! validated exactly as §2.6 says ([`phigate_token::Validator::validate_logout_token`]),
//! its `jti` is claimed once across replicas, then the sessions are ended in
//! the shared store and the `logout` record is committed before the answer:
//! 200, or 400 with `{"error":"invalid_request","error_description":<reason>}`
//! (503 when keys, the store or the audit cannot be had).

use std::time::Duration;

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use phigate_audit::{LogoutDecision, LogoutRecord, LogoutSource};
use phigate_policy::Reason;
use phigate_token::{LogoutError, LogoutRules};

use super::inspect::read_inspected_body;
use super::{unix_now, unix_now_ms, Gateway, RequestCtx, Shared};

/// What a logout or revocation did.
#[derive(Debug, Default)]
pub struct LogoutOutcome {
    pub reason: Option<Reason>,
    pub issuer: Option<String>,
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub detail: Option<String>,
}

impl LogoutOutcome {
    fn refused(reason: Reason, detail: impl Into<String>) -> Self {
        LogoutOutcome {
            reason: Some(reason),
            detail: Some(detail.into()),
            ..Default::default()
        }
    }

    /// For the audit record of a refused token: its `iss`, `sid`, `sub` and
    /// `jti` as the payload states them, unverified (cut to their bounds
    /// when the record is committed). Nothing when the payload is not a
    /// base64url JSON object; never the token itself.
    fn add_unverified_claims(&mut self, token: &str) {
        use base64::Engine as _;
        let Some(payload) = token.split('.').nth(1) else {
            return;
        };
        let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
            return;
        };
        let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&bytes) else {
            return;
        };
        let claim = |k: &str| {
            claims
                .get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        self.issuer = claim("iss");
        self.sid = claim("sid");
        self.sub = claim("sub");
        self.jti = claim("jti");
    }

    fn reason(&self) -> Reason {
        self.reason.unwrap_or(Reason::LogoutTokenMalformed)
    }

    /// The `logout` audit record of this outcome.
    pub fn record(&self, source: LogoutSource, request_id: &str, status: u16) -> LogoutRecord {
        let reason = self.reason();
        let decision = if reason.is_allow() {
            LogoutDecision::Allow
        } else {
            LogoutDecision::Deny
        };
        let mut record = LogoutRecord::new(request_id, source, decision, reason.as_str(), status);
        record.issuer = self.issuer.clone();
        record.sid = self.sid.clone();
        record.sub = self.sub.clone();
        record.jti = self.jti.clone();
        record.detail = self.detail.clone();
        record
    }
}

/// The reason for a refused logout token.
pub fn logout_reason(e: LogoutError) -> Reason {
    match e {
        LogoutError::Malformed => Reason::LogoutTokenMalformed,
        LogoutError::UnknownIssuer => Reason::LogoutTokenUnknownIssuer,
        LogoutError::BadSignature => Reason::LogoutTokenBadSignature,
        LogoutError::WrongAudience => Reason::LogoutTokenWrongAudience,
        LogoutError::IatOutOfWindow => Reason::LogoutTokenIatOutOfWindow,
        LogoutError::Expired => Reason::LogoutTokenExpired,
        LogoutError::MissingEvent => Reason::LogoutTokenMissingEvent,
        LogoutError::MissingSubject => Reason::LogoutTokenMissingSubject,
        LogoutError::HasNonce => Reason::LogoutTokenHasNonce,
        LogoutError::MissingJti => Reason::LogoutTokenMissingJti,
        LogoutError::KeysUnavailable => Reason::KeysUnavailable,
    }
}

/// The status a logout answer carries.
fn status_of(r: Reason) -> u16 {
    match r {
        Reason::LoggedOut | Reason::Revoked => 200,
        Reason::KeysUnavailable | Reason::SessionStoreUnavailable | Reason::AuditUnavailable => 503,
        Reason::PayloadTooLarge => 413,
        Reason::RequestTimeout => 408,
        Reason::UnsupportedMediaType => 415,
        _ => 400,
    }
}

impl Shared {
    /// End sessions in the shared store: one session (`sid`), or every
    /// session of a subject issued before now (`sub`).
    pub async fn revoke(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) -> Result<(), Reason> {
        let Some(store) = self.access.sessions() else {
            return Err(Reason::SessionStoreUnavailable);
        };
        let now = unix_now_ms();
        let r = match (sid, sub) {
            (Some(sid), _) => store.revoke_sid(issuer, sid, now).await,
            (None, Some(sub)) => store.revoke_sub(issuer, sub, now).await,
            (None, None) => return Err(Reason::LogoutTokenMissingSubject),
        };
        r.map_err(|e| {
            if let Some(suppressed) = self.error_log.should_log("session_store_unavailable") {
                tracing::error!(error = %e, suppressed, "session store unavailable; logout not applied");
            }
            Reason::SessionStoreUnavailable
        })
    }

    /// Commit a `logout` record in `slot`; false when the audit failed.
    pub async fn audit_logout(&self, slot: phigate_audit::Slot, record: LogoutRecord) -> bool {
        match slot.commit_logout(record).await {
            Ok(_) => true,
            Err(e) => {
                self.note_audit_failure(&e);
                false
            }
        }
    }
}

impl Gateway {
    /// Handle a request to the back-channel logout path (always answered here).
    pub(super) async fn backchannel_logout(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // Not a PHI request: counted in `phigate_logouts_total` instead.
        ctx.counted = true;
        let shared = self.shared.clone();
        let slot = match shared.audit.reserve() {
            Ok(s) => Some(s),
            Err(e) => {
                shared.note_audit_failure(&e);
                None
            }
        };
        let outcome = match &slot {
            Some(_) => self.logout_from_request(session, ctx).await,
            None => {
                LogoutOutcome::refused(Reason::AuditUnavailable, "audit unavailable; nothing was changed")
            }
        };
        let mut reason = outcome.reason();
        let mut status = status_of(reason);
        if let Some(slot) = slot {
            let mut record = outcome.record(LogoutSource::Backchannel, &ctx.info.request_id, status);
            record.client_ip = self.client_ip(session).map(|ip| ip.to_string());
            if !shared.audit_logout(slot, record).await {
                reason = Reason::AuditUnavailable;
                status = 503;
            }
        }
        shared
            .metrics
            .logouts
            .with_label_values(&["backchannel", reason.as_str()])
            .inc();
        if reason == Reason::LoggedOut {
            tracing::info!(
                request_id = %ctx.info.request_id,
                issuer = outcome.issuer.as_deref(),
                sid = outcome.sid.as_deref(),
                sub = outcome.sub.as_deref(),
                "back-channel logout"
            );
        } else if let Some(suppressed) = shared.error_log.should_log("logout_refused") {
            tracing::warn!(request_id = %ctx.info.request_id, reason = reason.as_str(), detail = outcome.detail.as_deref(), suppressed, "back-channel logout refused");
        }
        let body = if status == 200 {
            Bytes::new()
        } else {
            let error = if status == 400 {
                "invalid_request"
            } else {
                "temporarily_unavailable"
            };
            Bytes::from(
                serde_json::json!({ "error": error, "error_description": reason.as_str(), "request_id": ctx.info.request_id })
                    .to_string(),
            )
        };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.info.request_id.as_str())?;
        resp.insert_header("content-length", body.len().to_string())?;
        if !body.is_empty() {
            resp.insert_header("content-type", "application/json")?;
        }
        if status != 200 {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn logout_from_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> LogoutOutcome {
        let shared = &self.shared;
        let Some(settings) = shared.access.logout().cloned() else {
            return LogoutOutcome::refused(Reason::LogoutTokenMalformed, "logout receiver is off");
        };
        if ctx.info.method != "POST" {
            return LogoutOutcome::refused(Reason::LogoutTokenMalformed, "method must be POST");
        }
        let form = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !form {
            return LogoutOutcome::refused(
                Reason::UnsupportedMediaType,
                "body must be application/x-www-form-urlencoded",
            );
        }
        let deadline = ctx.start + shared.limits.request_body_timeout;
        let body = match read_inspected_body(session, deadline, &mut ctx.sent_continue).await {
            Ok(b) => b,
            Err(r) => return LogoutOutcome::refused(r, "the logout request body"),
        };
        let mut tokens = form_urlencoded::parse(&body).filter(|(k, _)| k == "logout_token");
        let token = match (tokens.next(), tokens.next()) {
            (Some((_, t)), None) => t.into_owned(),
            _ => {
                return LogoutOutcome::refused(
                    Reason::LogoutTokenMalformed,
                    "exactly one logout_token parameter is required",
                )
            }
        };
        let rules = LogoutRules {
            client_ids: &settings.client_ids,
            max_age: settings.max_age,
            now: unix_now(),
        };
        let t = match shared.validator.validate_logout_token(&token, &rules).await {
            Ok(t) => t,
            Err(e) => {
                let mut o = LogoutOutcome::refused(logout_reason(e), e.to_string());
                o.add_unverified_claims(&token);
                return o;
            }
        };
        let mut o = LogoutOutcome {
            reason: None,
            issuer: Some(t.issuer.clone()),
            sid: t.sid.clone(),
            sub: t.sub.clone(),
            jti: Some(t.jti.clone()),
            detail: None,
        };
        // A logout token is remembered for as long as its `iat` is accepted.
        let ttl = settings.max_age + Duration::from_secs(60);
        let id = format!("{}|{}", t.issuer, t.jti);
        match shared.access.replay_store().claim_once("logout", &id, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                o.reason = Some(Reason::LogoutTokenReplayed);
                o.detail = Some("jti already used".into());
                return o;
            }
            Err(e) => {
                o.reason = Some(Reason::SessionStoreUnavailable);
                o.detail = Some(format!("jti store: {e}"));
                return o;
            }
        }
        o.reason = Some(
            match shared.revoke(&t.issuer, t.sid.as_deref(), t.sub.as_deref()).await {
                Ok(()) => Reason::LoggedOut,
                Err(r) => r,
            },
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    #[test]
    fn refused_logout_records_name_the_unverified_claims() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"https://idp","sid":"s-1","jti":"j-1","nonce":"n"}"#);
        let mut o = LogoutOutcome::refused(Reason::LogoutTokenHasNonce, "nonce");
        o.add_unverified_claims(&format!("e30.{payload}.c2ln"));
        let rec = o.record(LogoutSource::Backchannel, "r-1", 400);
        assert_eq!(
            (
                rec.issuer.as_deref(),
                rec.sid.as_deref(),
                rec.sub.as_deref(),
                rec.jti.as_deref()
            ),
            (Some("https://idp"), Some("s-1"), None, Some("j-1"))
        );
        for garbage in [
            "",
            "no-dots",
            "a.!!!.b",
            &format!("a.{}.b", URL_SAFE_NO_PAD.encode("[1]")),
        ] {
            let mut o = LogoutOutcome::refused(Reason::LogoutTokenMalformed, "malformed");
            o.add_unverified_claims(garbage);
            assert_eq!(
                (o.issuer, o.sid, o.sub, o.jti),
                (None, None, None, None),
                "{garbage}"
            );
        }
    }
}
