//! The pingora glue: extract facts → validate token → decide → respond or
//! forward; `logging()` hands the outcome to audit and metrics.
//!
//! Nothing here decides anything: the decision is [`phigate_policy::decide`].

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use phigate_audit::{AuditRecord, Slot, Spool};
use phigate_policy::{Authn, CanonicalTarget, Claims, Decision, PolicySet, Reason, RequestFacts};
use phigate_token::{TokenError, Validator, VerifiedToken};

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// State shared by every request.
pub struct Shared {
    /// The current policy; a reload swaps it atomically.
    pub policy: ArcSwap<PolicySet>,
    pub validator: Arc<Validator>,
    pub audit: Spool,
    pub metrics: Arc<Metrics>,
    pub upstream: UpstreamConfig,
    pub limiter: crate::limiter::InvalidTokenLimiter,
    /// Proxies whose `X-Forwarded-For` names the client (rate limiting).
    pub trusted_proxies: Vec<crate::limiter::Cidr>,
    /// Status of each streaming audit sink.
    pub sinks: Vec<Arc<phigate_sinks::SinkStatus>>,
}

/// The `ProxyHttp` implementation.
pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// Per-request state, filled in as the request moves through the phases.
pub struct RequestCtx {
    start: Instant,
    request_id: String,
    method: String,
    /// Canonical path, or the (truncated) raw target when it was rejected.
    path: String,
    target: Option<CanonicalTarget>,
    decision: Option<Decision>,
    claims: Option<Claims>,
    /// The break-glass justification header, when the policy enables break-glass.
    justification: Option<String>,
    policy_version: String,
    /// The reserved audit slot, until the record is committed.
    audit_slot: Option<Slot>,
    upstream_status: Option<u16>,
}

/// Map a token validation failure to the shared reason vocabulary.
pub fn token_reason(e: &TokenError) -> Reason {
    match e {
        TokenError::Malformed => Reason::MalformedToken,
        TokenError::UnsupportedAlgorithm => Reason::UnsupportedAlgorithm,
        TokenError::UnknownIssuer => Reason::UnknownIssuer,
        TokenError::UnknownKey => Reason::UnknownKey,
        TokenError::InvalidSignature => Reason::InvalidSignature,
        TokenError::Expired => Reason::TokenExpired,
        TokenError::NotYetValid => Reason::TokenNotYetValid,
        TokenError::WrongAudience => Reason::WrongAudience,
        TokenError::MissingClaim(_) => Reason::MissingClaim,
        TokenError::KeysUnavailable => Reason::KeysUnavailable,
    }
}

/// What the `Authorization` header(s) hold.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerHeader<'a> {
    Absent,
    Token(&'a str),
    /// Two or more `Authorization` headers, or a non-ASCII one.
    Ambiguous,
    /// A scheme other than Bearer, or `Bearer` without a usable token.
    NotBearer,
}

/// Extract the bearer token: exactly one `Authorization` header, scheme
/// `Bearer` (case-insensitive), a token of RFC 6750 `b64token` characters.
/// A token in the query string is never looked at.
pub fn bearer_token(headers: &HeaderMap) -> BearerHeader<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return BearerHeader::Absent;
    };
    if values.next().is_some() {
        return BearerHeader::Ambiguous;
    }
    let Ok(value) = value.to_str() else {
        return BearerHeader::Ambiguous;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return BearerHeader::NotBearer;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return BearerHeader::NotBearer;
    }
    let token = token.trim_start_matches(' ');
    let b64token =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
    if token.is_empty() || !token.bytes().all(b64token) {
        return BearerHeader::NotBearer;
    }
    BearerHeader::Token(token)
}

/// Accept a caller's `X-Request-Id` only if it is short and plain; otherwise
/// generate one (UUIDv7), so ids can never inject into logs.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The request-target exactly as the client sent it (HTTP/1.x request line).
///
/// pingora's parsed URI silently drops a `#fragment`; the raw line keeps it so
/// that such requests are refused rather than quietly rewritten.
fn wire_target(head: &[u8]) -> Option<&[u8]> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let mut parts = line.split(|b| *b == b' ');
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (version.starts_with(b"HTTP/") && parts.next().is_none() && !target.is_empty()).then_some(target)
}

/// Read a body that must be inspected before forwarding, up to
/// [`phigate_policy::MAX_INSPECTED_BODY`] (pingora's replay buffer).
async fn read_inspected_body(session: &mut Session) -> std::result::Result<Vec<u8>, Reason> {
    let limit = phigate_policy::MAX_INSPECTED_BODY;
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Reason::PayloadTooLarge);
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Reason::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err(Reason::BadRequestBody),
        }
    }
    if session.as_downstream().retry_buffer_truncated() {
        return Err(Reason::PayloadTooLarge);
    }
    Ok(body)
}

/// The policy core's view of a verified token.
pub fn claims_of(t: &VerifiedToken) -> Claims {
    Claims {
        issuer: t.issuer.clone(),
        subject: t.subject.clone(),
        client_id: t.client_id.clone(),
        scopes: t.scopes.clone(),
        roles: t.roles.clone(),
        claims: t.claims.clone(),
    }
}

/// A justification as recorded: control characters replaced, at most 500 characters.
fn sanitize_justification(j: &str) -> String {
    j.chars()
        .take(500)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Gateway {
    /// The client to rate-limit: the socket peer, or the forwarded client
    /// when the peer is a trusted proxy (see [`crate::limiter::client_ip`]).
    fn client_ip(&self, session: &Session) -> Option<std::net::IpAddr> {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let forwarded = session.req_header().headers.get_all("x-forwarded-for");
        crate::limiter::client_ip(
            peer,
            forwarded.iter().filter_map(|v| v.to_str().ok()),
            &self.shared.trusted_proxies,
        )
    }

    /// Answer a denial: small JSON body with the reason and request id, never
    /// the token, never a hint about whether the resource exists.
    async fn respond_deny(&self, session: &mut Session, ctx: &RequestCtx, decision: &Decision) -> Result<()> {
        let status = decision.deny_status();
        let body = serde_json::json!({ "error": decision.reason.as_str(), "request_id": ctx.request_id })
            .to_string();
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        resp.insert_header("content-length", body.len().to_string())?;
        if let Some(w) = decision.www_authenticate() {
            resp.insert_header("www-authenticate", w)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(Bytes::from(body)), true).await
    }

    /// Make the decision for this request (no response written here).
    async fn decide_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Decision {
        let policy = self.shared.policy.load_full();
        ctx.policy_version = policy.version().to_string();

        let raw_line = session.as_downstream().to_h1_raw();
        let raw = wire_target(&raw_line).unwrap_or_else(|| session.req_header().raw_path());
        let target = match std::str::from_utf8(raw).ok().map(phigate_policy::canonicalize) {
            Some(Ok(t)) => t,
            _ => {
                let lossy = String::from_utf8_lossy(raw);
                ctx.path = lossy.chars().take(256).collect();
                return Decision::deny(Reason::BadRequestPath);
            }
        };
        ctx.path = target.path.clone();

        ctx.justification = policy.break_glass().and_then(|bg| {
            let mut values = session.req_header().headers.get_all(bg.header.as_str()).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                // Repeated headers are ambiguous: an (invalid) empty justification.
                (Some(_), Some(_)) => Some(String::new()),
                (None, _) => None,
            }
        });
        let mut facts = RequestFacts::new(&ctx.method, &target.path, target.query.as_deref(), unix_now());
        facts.break_glass_justification = ctx.justification.as_deref();
        let authn = if phigate_policy::needs_token(&policy, &facts) {
            match bearer_token(&session.req_header().headers) {
                BearerHeader::Absent | BearerHeader::NotBearer => Authn::Missing,
                BearerHeader::Ambiguous => return Decision::deny(Reason::MalformedAuthorization),
                BearerHeader::Token(t) => {
                    // Only token-carrying requests are rate limited, so only they
                    // need the client's identity.
                    let client_ip = self.client_ip(session);
                    if client_ip.is_some_and(|ip| self.shared.limiter.is_limited(ip)) {
                        self.shared.metrics.rate_limited.inc();
                        return Decision::deny(Reason::RateLimited);
                    }
                    match self.shared.validator.validate(t).await {
                        Ok(v) => Authn::Valid(claims_of(&v)),
                        Err(e) => {
                            if e != TokenError::KeysUnavailable {
                                if let Some(ip) = client_ip {
                                    self.shared.limiter.record_failure(ip);
                                }
                            }
                            Authn::Invalid(token_reason(&e))
                        }
                    }
                }
            }
        } else {
            Authn::Missing
        };
        // FHIR batch/transaction: every entry is authorised, so the (bounded)
        // body is read here; pingora replays it to the upstream.
        let body;
        if matches!(authn, Authn::Valid(_)) && phigate_policy::needs_body(&policy, &facts) {
            body = match read_inspected_body(session).await {
                Ok(b) => b,
                Err(reason) => {
                    if let Authn::Valid(claims) = authn {
                        ctx.claims = Some(claims);
                    }
                    return Decision::deny(reason);
                }
            };
            facts.body = Some(&body);
        }
        let started = Instant::now();
        let decision = phigate_policy::decide(&policy, &facts, &authn);
        self.shared
            .metrics
            .decide_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Authn::Valid(claims) = authn {
            ctx.claims = Some(claims);
        }
        ctx.target = Some(target);
        decision
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            start: Instant::now(),
            request_id: String::new(),
            method: String::new(),
            path: String::new(),
            target: None,
            decision: None,
            claims: None,
            justification: None,
            policy_version: String::new(),
            audit_slot: None,
            upstream_status: None,
        }
    }

    /// Runs once per request, before anything is sent upstream. Returns
    /// `true` when the response (a denial) has been written here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.request_id = request_id(&session.req_header().headers);
        ctx.method = session.req_header().method.as_str().to_string();

        // Fail closed: without a place for the audit record, nothing is served.
        match self.shared.audit.reserve() {
            Ok(slot) => ctx.audit_slot = Some(slot),
            Err(e) => {
                self.shared.metrics.audit_fail_closed.inc();
                tracing::error!(request_id = %ctx.request_id, error = %e, "audit unavailable; refusing request");
                let d = Decision::deny(Reason::AuditUnavailable);
                self.respond_deny(session, ctx, &d).await?;
                ctx.decision = Some(d);
                return Ok(true);
            }
        }

        let decision = self.decide_request(session, ctx).await;
        let deny = !decision.is_allow();
        ctx.decision = Some(decision);
        if deny {
            // The record is on its way to disk (durable in per_request mode)
            // before the client learns the outcome.
            let status = ctx.decision.as_ref().map_or(403, Decision::deny_status);
            let decision = if self.commit_audit(session, ctx, status).await {
                ctx.decision.clone()
            } else {
                Some(Decision::deny(Reason::AuditUnavailable))
            };
            if let Some(d) = &decision {
                self.respond_deny(session, ctx, d).await?;
            }
            ctx.decision = decision;
        }
        Ok(deny)
    }

    /// Only reached for allowed requests.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let up = &self.shared.upstream;
        let mut peer = HttpPeer::new(up.address, false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        Ok(Box::new(peer))
    }

    /// Forward exactly the canonical target that was authorised.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "allowed request without canonical target",
            );
        };
        let uri: http::Uri = target
            .to_request_target()
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "canonical target is not a URI", e))?;
        upstream_request.set_uri(uri);
        if !self.shared.upstream.forward_authorization {
            upstream_request.remove_header("authorization");
        }
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        self.shared
            .metrics
            .upstream_responses
            .with_label_values(&[Metrics::status_class(status)])
            .inc();
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        // Allowed request: record it (durably in per_request mode) before the
        // response is released; if the audit pipeline fails, the client gets
        // 503 instead of an unaudited PHI response.
        let status = upstream_response.status.as_u16();
        if !self.commit_audit(session, ctx, status).await {
            ctx.decision = Some(Decision::deny(Reason::AuditUnavailable));
            return Error::e_explain(ErrorType::HTTPStatus(503), "audit record could not be committed");
        }
        Ok(())
    }

    /// Errors before a response (upstream unreachable, timeouts, a failed
    /// audit commit): record the outcome first, then answer.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        let mut code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if ctx.audit_slot.is_some() && !self.commit_audit(session, ctx, code).await && code > 0 {
            ctx.decision = Some(Decision::deny(Reason::AuditUnavailable));
            code = 503;
        }
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(request_id = %ctx.request_id, error = %err, "failed to send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs once per request after the response (or a fatal error): every
    /// decision, allow or deny, becomes one audit record and metric sample.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // Normally committed at response time; a request that ended without
        // one (client gone mid-request) is recorded here.
        if ctx.audit_slot.is_some() {
            self.commit_audit(session, ctx, status).await;
        }
        let elapsed = ctx.start.elapsed();
        let decision = ctx
            .decision
            .take()
            .unwrap_or_else(|| Decision::deny(Reason::BadRequestPath));
        let route = decision.route.as_deref().unwrap_or("none");
        let m = &self.shared.metrics;
        m.requests
            .with_label_values(&[decision.outcome.as_str(), decision.reason.as_str(), route])
            .inc();
        m.request_duration
            .with_label_values(&[decision.outcome.as_str()])
            .observe(elapsed.as_secs_f64());
        if decision.break_glass {
            m.break_glass.inc();
            tracing::warn!(request_id = %ctx.request_id, route, "break-glass access");
        }
        if let Some(would) = decision.shadow {
            m.shadow_denials.with_label_values(&[would.as_str(), route]).inc();
        }
        tracing::info!(
            request_id = %ctx.request_id,
            decision = decision.outcome.as_str(),
            reason = decision.reason.as_str(),
            status,
            route,
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}

impl Gateway {
    /// Commit this request's audit record with the status being sent, and
    /// wait until the spool has it (on disk in `per_request` mode). Returns
    /// false when there was no slot or the commit failed: the caller must not
    /// release a PHI response then.
    async fn commit_audit(&self, session: &Session, ctx: &mut RequestCtx, status: u16) -> bool {
        let Some(slot) = ctx.audit_slot.take() else {
            return false;
        };
        let record = self.audit_record(session, ctx, status);
        match slot.commit(record).await {
            Ok(_) => true,
            Err(e) => {
                self.shared.metrics.audit_fail_closed.inc();
                tracing::error!(request_id = %ctx.request_id, error = %e, "audit commit failed; refusing to release the response");
                false
            }
        }
    }

    /// The audit record for this request, as of now.
    fn audit_record(&self, session: &Session, ctx: &RequestCtx, status: u16) -> AuditRecord {
        let fallback;
        let decision = match &ctx.decision {
            Some(d) => d,
            None => {
                fallback = Decision::deny(Reason::BadRequestPath);
                &fallback
            }
        };
        let claims = ctx.claims.clone().unwrap_or_default();
        AuditRecord {
            ts: phigate_audit::now_rfc3339(),
            request_id: ctx.request_id.clone(),
            decision: decision.outcome.as_str().to_string(),
            reason: decision.reason.as_str().to_string(),
            status,
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            route: decision.route.as_deref().map(str::to_string),
            sub: claims.subject,
            client_id: claims.client_id,
            iss: (!claims.issuer.is_empty()).then_some(claims.issuer),
            scopes_granted: claims.scopes,
            scopes_required: decision.scopes_required.clone(),
            upstream_status: ctx.upstream_status,
            duration_ms: (ctx.start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            remote_addr: session.client_addr().map(|a| a.to_string()),
            policy_version: ctx.policy_version.clone(),
            patient: decision.patient.clone(),
            break_glass: decision.break_glass,
            justification: ctx.justification.as_deref().map(sanitize_justification),
            shadow_decision: decision.shadow.map(|_| "deny".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_target_reads_the_request_line() {
        assert_eq!(
            super::wire_target(b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(&b"/a#f"[..])
        );
        assert_eq!(super::wire_target(b"GET /a HTTP/1.0\n"), Some(&b"/a"[..]));
        assert_eq!(super::wire_target(b"GET  /a HTTP/1.1\r\n"), None);
        assert_eq!(super::wire_target(b""), None);
    }

    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&[])), BearerHeader::Absent);
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            BearerHeader::Token("abc.def.ghi")
        );
        assert_eq!(
            bearer_token(&headers(&["bEaReR abc"])),
            BearerHeader::Token("abc")
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            BearerHeader::Ambiguous
        );
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            BearerHeader::NotBearer
        );
        assert_eq!(bearer_token(&headers(&["Bearer"])), BearerHeader::NotBearer);
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), BearerHeader::NotBearer);
        assert_eq!(bearer_token(&headers(&["Bearer a\"b"])), BearerHeader::NotBearer);
    }

    #[test]
    fn request_ids_are_sanitised() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id\"{}"));
        assert_ne!(request_id(&h), "bad id\"{}");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn every_token_error_has_a_401_or_503_reason() {
        for e in [
            TokenError::Malformed,
            TokenError::UnsupportedAlgorithm,
            TokenError::UnknownIssuer,
            TokenError::UnknownKey,
            TokenError::InvalidSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::MissingClaim("exp"),
        ] {
            assert_eq!(token_reason(&e).deny_status(), 401, "{e:?}");
        }
        assert_eq!(token_reason(&TokenError::KeysUnavailable).deny_status(), 503);
    }
}
