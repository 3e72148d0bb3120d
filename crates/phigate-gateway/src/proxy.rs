//! The pingora glue: prepare the request → validate the token → read an
//! inspected body → decide → audit → respond or forward; `logging()` hands
//! the outcome to metrics and the log.
//!
//! Nothing here decides anything: the decision is
//! [`phigate_policy::prepare`] + [`phigate_policy::decide`], the same
//! functions `phigate policy test` runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use phigate_audit::{AuditError, AuditRecord, Slot, Spool, Tunnel, TunnelPhase};
use phigate_policy::{
    Authn, BodyKind, CanonicalTarget, Claims, Decision, HttpVersion, PolicySet, RawRequest, Reason,
    MAX_INSPECTED_BODY,
};
use phigate_token::{TokenError, Validator, VerifiedToken};

use crate::config::{Limits, UpstreamConfig};
use crate::forward::{self, HeaderView};
use crate::limiter::{InFlightGuard, InFlightLimiter, LogLimiter};
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
    pub limits: Limits,
    /// Requests in flight per client address.
    pub in_flight: Arc<InFlightLimiter>,
    /// Rate limit of the "audit unavailable" error line.
    pub audit_error_log: LogLimiter,
    /// Paging links of allowed searches, per caller.
    pub paging: crate::paging::PagingLinks,
}

impl Shared {
    /// Count a request the audit pipeline could not take and log it (at most
    /// once per second, with the number of lines suppressed since).
    pub fn note_audit_failure(&self, e: &AuditError) {
        self.metrics.audit_fail_closed.inc();
        if let Some(suppressed) = self.audit_error_log.should_log() {
            tracing::error!(error = %e, suppressed, "audit unavailable; refusing requests");
        }
    }
}

/// The `ProxyHttp` implementation.
pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// A WebSocket tunnel opened through an opted-in route.
struct TunnelState {
    opened: Instant,
    from_client: u64,
    to_client: u64,
    /// The slot for the record written when the tunnel closes.
    close_slot: Option<Slot>,
}

/// Per-request state, filled in as the request moves through the phases.
pub struct RequestCtx {
    start: Instant,
    request_id: String,
    method: String,
    /// Canonical path, or the raw target when it was rejected (the audit
    /// record bounds it).
    path: String,
    target: Option<CanonicalTarget>,
    decision: Option<Decision>,
    claims: Option<Claims>,
    /// The break-glass justification as recorded.
    justification: Option<String>,
    user_agent: Option<String>,
    policy_version: String,
    /// The reserved audit slot, until the record is committed.
    audit_slot: Option<Slot>,
    /// This request's place in its client's in-flight share.
    in_flight: Option<InFlightGuard>,
    upstream_status: Option<u16>,
    /// phigate answered `100 Continue` and read the body itself.
    sent_continue: bool,
    /// A forwarded (streamed) request body must end by then.
    body_deadline: Option<Instant>,
    tunnel: Option<TunnelState>,
    /// An allowed search whose result's paging links are being read.
    links: Option<LinkCapture>,
}

/// Reading the paging links of an allowed search's result.
struct LinkCapture {
    caller: crate::paging::Caller,
    /// The canonical target of the search the links continue.
    original: String,
    /// The route's FHIR base, for relative links.
    base: String,
    buf: Vec<u8>,
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
        .map(|v| v.as_bytes())
        .filter(|v| phigate_policy::protocol::is_plain_request_id(v))
        .map(|v| String::from_utf8_lossy(v).into_owned())
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

/// Read a body that must be inspected before deciding, up to
/// [`MAX_INSPECTED_BODY`] (pingora replays it to the upstream), by
/// `deadline`. A client that asked `Expect: 100-continue` is told to send.
async fn read_inspected_body(
    session: &mut Session,
    deadline: Instant,
    sent_continue: &mut bool,
) -> std::result::Result<Vec<u8>, Reason> {
    let limit = MAX_INSPECTED_BODY;
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Reason::PayloadTooLarge);
    }
    if declared == Some(0) {
        return Ok(Vec::new());
    }
    let expects_continue = session
        .req_header()
        .headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| Reason::BadRequestBody)?;
        *sent_continue = true;
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body()).await;
        match chunk {
            Err(_) => return Err(Reason::RequestTimeout),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(Reason::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => break,
            Ok(Err(_)) => return Err(Reason::BadRequestBody),
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

/// Who a paging link belongs to.
fn caller(c: &Claims) -> crate::paging::Caller {
    crate::paging::Caller {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        client_id: c.client_id.clone(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The response for a denial: a small JSON body with the reason and request
/// id — never the token, never a hint about whether the resource exists —
/// and `WWW-Authenticate` where RFC 6750 / RFC 9470 ask for it.
pub fn deny_response(decision: &Decision, request_id: &str) -> Result<(Box<ResponseHeader>, Bytes)> {
    let status = decision.deny_status();
    let body = serde_json::json!({ "error": decision.reason.as_str(), "request_id": request_id }).to_string();
    let mut resp = ResponseHeader::build(status, Some(6))?;
    let headers = [
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
        ("x-request-id", request_id.to_string()),
        ("content-length", body.len().to_string()),
    ];
    for (k, v) in headers
        .into_iter()
        .chain(decision.www_authenticate().map(|w| ("www-authenticate", w)))
    {
        resp.insert_header(k, v)?;
    }
    if decision.deny_status() == 408 || decision.reason == Reason::BadRequest {
        resp.insert_header("connection", "close")?;
    }
    Ok((Box::new(resp), Bytes::from(body)))
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

    async fn respond_deny(&self, session: &mut Session, ctx: &RequestCtx, decision: &Decision) -> Result<()> {
        let (resp, body) = deny_response(decision, &ctx.request_id)?;
        if matches!(decision.deny_status(), 400 | 408) {
            session.set_keepalive(None);
        }
        session.write_response_header(resp, false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// Make the decision for this request (no response written, no audit
    /// slot held: a slow client holds nothing while its body arrives).
    async fn decide_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Decision {
        let policy = self.shared.policy.load_full();
        ctx.policy_version = policy.version().to_string();

        let raw_line = session.as_downstream().to_h1_raw();
        let raw = wire_target(&raw_line).unwrap_or_else(|| session.req_header().raw_path());
        let version = match session.req_header().version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => HttpVersion::Http10,
            http::Version::HTTP_2 => HttpVersion::Http2,
            _ => HttpVersion::Http11,
        };
        let prepared = phigate_policy::prepare(
            &policy,
            &RawRequest {
                method: &ctx.method,
                target: raw,
                version,
                headers: &HeaderView(&session.req_header().headers),
                now: unix_now(),
            },
        );
        ctx.path = prepared.path().to_string();
        ctx.justification = prepared.justification_for_audit();
        if let Some(refusal) = prepared.refusal() {
            return refusal.clone();
        }
        let authn = if prepared.needs_token() {
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
        // Bundles and forms are authorised on their content, so the (bounded)
        // body is read here — unless a protected route's token already failed:
        // the answer is 401 either way. pingora replays the body upstream.
        let mut body = None;
        if let Some(kind) = prepared.needs_body() {
            if matches!(authn, Authn::Valid(_)) || !prepared.needs_token() {
                let deadline = ctx.start + self.shared.limits.request_body_timeout;
                match read_inspected_body(session, deadline, &mut ctx.sent_continue).await {
                    Ok(b) => body = Some(b),
                    Err(reason) => {
                        if let Authn::Valid(claims) = authn {
                            ctx.claims = Some(claims);
                        }
                        let mut d = Decision::deny(reason);
                        d.route = prepared.route_label().cloned();
                        d.detail = Some(match kind {
                            BodyKind::Bundle => "the batch/transaction body".into(),
                            BodyKind::Form => "the form body".into(),
                        });
                        return d;
                    }
                }
            }
        }
        let started = Instant::now();
        // A page of an earlier search by the same caller, e.g. HAPI's
        // `GET [base]?_getpages=…`: decided as that search.
        let original = match (&authn, prepared.target()) {
            (Authn::Valid(claims), Some(t)) if prepared.is_paging_candidate() => {
                self.shared.paging.lookup(&caller(claims), &t.to_request_target())
            }
            _ => None,
        };
        let mut search_target = prepared.target().map(|t| t.to_request_target());
        let decision = match &original {
            Some(orig) => {
                let orig_prepared = phigate_policy::prepare(
                    &policy,
                    &RawRequest {
                        method: "GET",
                        target: orig.as_bytes(),
                        version,
                        headers: &HeaderView(&session.req_header().headers),
                        now: unix_now(),
                    },
                );
                search_target = Some(orig.clone());
                phigate_policy::decide_continuation(&prepared, &orig_prepared, &authn)
            }
            None => phigate_policy::decide(&prepared, body.as_deref(), &authn),
        };
        self.shared
            .metrics
            .decide_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Authn::Valid(claims) = &authn {
            if decision.is_allow() && decision.shadow.is_none() && decision.forward.search_links {
                if let (Some(base), Some(original)) = (prepared.fhir_base(), search_target) {
                    ctx.links = Some(LinkCapture {
                        caller: caller(claims),
                        original,
                        base: base.to_string(),
                        buf: Vec::new(),
                    });
                }
            }
        }
        if let Authn::Valid(claims) = authn {
            ctx.claims = Some(claims);
        }
        ctx.target = prepared.target().cloned();
        decision
    }

    /// Take an audit slot and this request's place in its client's share.
    /// Returns the refusal when either is unavailable; `ctx.audit_slot` is
    /// then set if the refusal itself can be audited.
    fn reserve(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Decision> {
        let guard = self.shared.in_flight.acquire(self.client_ip(session));
        match self.shared.audit.reserve() {
            Ok(slot) => ctx.audit_slot = Some(slot),
            Err(e) => {
                self.shared.note_audit_failure(&e);
                return Some(Decision::deny(Reason::AuditUnavailable));
            }
        }
        match guard {
            Some(g) => {
                ctx.in_flight = Some(g);
                None
            }
            None => Some(Decision::deny(Reason::ConcurrencyLimited).with_detail(format!(
                "more than {} requests in flight from this client address",
                self.shared.limits.max_in_flight_per_client
            ))),
        }
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
            user_agent: None,
            policy_version: String::new(),
            audit_slot: None,
            in_flight: None,
            upstream_status: None,
            sent_continue: false,
            body_deadline: None,
            tunnel: None,
            links: None,
        }
    }

    /// Runs once per request, before anything is sent upstream. Returns
    /// `true` when the response (a denial) has been written here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.start = Instant::now();
        let headers = &session.req_header().headers;
        ctx.request_id = request_id(headers);
        ctx.user_agent = headers
            .get("user-agent")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        ctx.method = session.req_header().method.as_str().to_string();

        let decision = self.decide_request(session, ctx).await;
        // Fail closed: without a place for the audit record, nothing is
        // served. The slot is taken only now, after the head and any
        // inspected body arrived, so slow clients hold none while sending.
        if let Some(refusal) = self.reserve(session, ctx) {
            ctx.decision = Some(refusal.clone());
            let refusal = if ctx.audit_slot.is_some()
                && !self.commit_audit(session, ctx, refusal.deny_status()).await
            {
                Decision::deny(Reason::AuditUnavailable)
            } else {
                refusal
            };
            self.respond_deny(session, ctx, &refusal).await?;
            ctx.decision = Some(refusal);
            return Ok(true);
        }
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
            return Ok(true);
        }
        // A forwarded body must arrive in time too; stalls fail the read.
        let timeout = self.shared.limits.request_body_timeout;
        ctx.body_deadline = Some(ctx.start + timeout);
        session.as_downstream_mut().set_read_timeout(Some(timeout));
        Ok(false)
    }

    /// Only reached for allowed requests.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let forward = ctx.decision.as_ref().map(|d| d.forward).unwrap_or_default();
        Ok(Box::new(forward::peer(&self.shared.upstream, forward)))
    }

    /// Forward exactly the canonical target that was authorised, and nothing
    /// the backend could execute differently.
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
        let forward = ctx.decision.as_ref().map(|d| d.forward).unwrap_or_default();
        forward::edit_request(upstream_request, forward, ctx.sent_continue)?;
        if ctx.links.is_some() {
            // The paging links are read from the result: ask for it uncompressed.
            upstream_request.remove_header("accept-encoding");
        }
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    /// Streamed request bodies: count tunnel traffic, enforce the body deadline.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(t) = &mut ctx.tunnel {
            t.from_client += body.as_ref().map_or(0, |b| b.len() as u64);
            return Ok(());
        }
        if ctx.body_deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                "the request body took longer than limits.request_body_timeout",
            );
        }
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
        let readable = status == 200
            && upstream_response
                .headers
                .get("content-encoding")
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if !readable {
            ctx.links = None;
        }
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
        let status = upstream_response.status.as_u16();
        let websocket = ctx.decision.as_ref().is_some_and(|d| d.forward.websocket);
        if status == 101 {
            if !websocket {
                // pingora refuses a 101 to a request that was not an upgrade;
                // never let one through unaudited either.
                return Error::e_explain(ErrorType::HTTPStatus(502), "unexpected 101 from the upstream");
            }
            // The tunnel's close record needs its own slot: take it before
            // the tunnel opens, or do not open it.
            match self.shared.audit.reserve() {
                Ok(slot) => {
                    ctx.tunnel = Some(TunnelState {
                        opened: Instant::now(),
                        from_client: 0,
                        to_client: 0,
                        close_slot: Some(slot),
                    })
                }
                Err(e) => {
                    self.shared.note_audit_failure(&e);
                    ctx.decision = Some(Decision::deny(Reason::AuditUnavailable));
                    return Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        "no audit slot for the tunnel's close record",
                    );
                }
            }
            // The tunnel has no body deadline.
            ctx.body_deadline = None;
            session.as_downstream_mut().set_read_timeout(None);
            self.shared.metrics.tunnels_open.inc();
        }
        // Allowed request: record it (durably in per_request mode) before the
        // response is released; if the audit pipeline fails, the client gets
        // 503 instead of an unaudited PHI response.
        if !self.commit_audit(session, ctx, status).await {
            if ctx.tunnel.take().is_some() {
                self.shared.metrics.tunnels_open.dec();
            }
            ctx.decision = Some(Decision::deny(Reason::AuditUnavailable));
            return Error::e_explain(ErrorType::HTTPStatus(503), "audit record could not be committed");
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(t) = &mut ctx.tunnel {
            t.to_client += body.as_ref().map_or(0, |b| b.len() as u64);
        }
        if let Some(c) = &mut ctx.links {
            if let Some(b) = body {
                let room = crate::paging::CAPTURE_BYTES.saturating_sub(c.buf.len());
                c.buf.extend_from_slice(&b[..b.len().min(room)]);
            }
            if end_of_stream || c.buf.len() >= crate::paging::CAPTURE_BYTES {
                if let Some(c) = ctx.links.take() {
                    let links: Vec<String> = phigate_policy::fhir::bundle_links(&c.buf)
                        .into_iter()
                        .filter_map(|(_, url)| crate::paging::link_target(&url, &c.base))
                        .collect();
                    self.shared.paging.remember(&c.caller, &links, &c.original);
                }
            }
        }
        Ok(None)
    }

    /// Errors before a response (upstream unreachable, timeouts, a failed
    /// audit commit): record the outcome first, then answer.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        let mut code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadTimedout => 408,
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
    /// decision, allow or deny, has one audit record (two for a tunnel: at
    /// open and at close) and one metric sample.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // Normally committed at response time; a request that ended without
        // one (client gone mid-request) is recorded here.
        if ctx.audit_slot.is_some() {
            self.commit_audit(session, ctx, status).await;
        }
        if let Some(mut t) = ctx.tunnel.take() {
            self.shared.metrics.tunnels_open.dec();
            let mut record = self.audit_record(session, ctx, status);
            record.tunnel = Some(Tunnel {
                phase: TunnelPhase::Close,
                bytes_from_client: t.from_client,
                bytes_to_client: t.to_client,
                duration_ms: t.opened.elapsed().as_millis() as u64,
            });
            if let Some(slot) = t.close_slot.take() {
                if let Err(err) = slot.commit(record).await {
                    self.shared.note_audit_failure(&err);
                }
            }
        }
        let decision = ctx
            .decision
            .take()
            .unwrap_or_else(|| Decision::deny(Reason::BadRequest));
        self.shared.metrics.count_request(&decision, ctx.start.elapsed());
        let route = decision.route.as_deref().unwrap_or("none");
        if decision.break_glass {
            tracing::warn!(request_id = %ctx.request_id, route, "break-glass access");
        }
        tracing::info!(
            request_id = %ctx.request_id,
            decision = decision.outcome.as_str(),
            reason = decision.reason.as_str(),
            status,
            route,
            detail = decision.detail.as_deref(),
            error = e.map(|e| e.to_string()),
            "request"
        );
        ctx.in_flight = None;
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
        let mut record = self.audit_record(session, ctx, status);
        if status == 101 && ctx.tunnel.is_some() {
            record.tunnel = Some(Tunnel {
                phase: TunnelPhase::Open,
                bytes_from_client: 0,
                bytes_to_client: 0,
                duration_ms: 0,
            });
        }
        match slot.commit(record).await {
            Ok(_) => true,
            Err(e) => {
                self.shared.note_audit_failure(&e);
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
                fallback = Decision::deny(Reason::BadRequest);
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
            scope_used: if decision.is_allow() && decision.shadow.is_none() {
                decision.scope_used.clone()
            } else {
                Vec::new()
            },
            upstream_status: ctx.upstream_status,
            duration_ms: (ctx.start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            remote_addr: session.client_addr().map(|a| a.to_string()),
            policy_version: ctx.policy_version.clone(),
            patient: decision.patient.clone(),
            break_glass: decision.break_glass,
            justification: ctx.justification.clone(),
            shadow_decision: decision.shadow.map(|_| "deny".to_string()),
            user_agent: ctx.user_agent.clone(),
            ..AuditRecord::default()
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
    fn deny_responses_carry_reason_and_request_id() {
        let (h, body) = deny_response(&Decision::deny(Reason::MethodOverride), "r-1").unwrap();
        assert_eq!(h.status.as_u16(), 400);
        assert_eq!(h.headers.get("content-type").unwrap(), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_override");
        assert_eq!(v["request_id"], "r-1");
        let (h, _) = deny_response(&Decision::deny(Reason::MissingToken), "r-2").unwrap();
        assert_eq!(h.headers.get("www-authenticate").unwrap(), "Bearer");
        let (h, _) = deny_response(&Decision::deny(Reason::RequestTimeout), "r-3").unwrap();
        assert_eq!(
            (
                h.status.as_u16(),
                h.headers.get("connection").unwrap().to_str().unwrap()
            ),
            (408, "close")
        );
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
