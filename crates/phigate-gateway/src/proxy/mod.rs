//! The pingora glue: prepare the request → validate the token → read an
//! inspected body → decide → audit → respond or forward; `logging()` hands
//! the outcome to metrics and the log.
//!
//! Nothing here decides anything: the decision is
//! [`phigate_policy::prepare`] + [`phigate_policy::decide`], the same
//! functions `phigate policy test` runs. The request's state is typed
//! ([`RequestCtx`]: [`RequestInfo`], [`Verdict`], [`AuditTicket`]); every
//! hook that ends a request's audit calls [`Gateway::finish_audit`], the one
//! place a ticket is committed.

mod inspect;
mod ticket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use phigate_audit::{AuditError, Spool};
use phigate_policy::{Authn, BodyKind, Claims, Decision, HttpVersion, PolicySet, RawRequest, Reason};
use phigate_token::{TokenError, Validator};

pub use inspect::{bearer_token, claims_of, deny_response, token_reason, BearerHeader};
pub use ticket::{AuditTicket, Permit, RecordKind, RequestCtx, RequestInfo, Verdict};

use crate::config::{Limits, UpstreamConfig};
use crate::forward::{self, HeaderView};
use crate::limiter::{InFlightLimiter, LogLimiter};
use crate::metrics::Metrics;
use inspect::{read_inspected_body, request_id, wire_target};
use ticket::{LinkCapture, TunnelState};

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
        let (resp, body) = deny_response(decision, &ctx.info.request_id)?;
        if matches!(decision.deny_status(), 400 | 408) {
            session.set_keepalive(None);
        }
        session.write_response_header(resp, false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// Make the decision for this request (no response written, no audit
    /// slot held: a slow client holds nothing while its body arrives).
    async fn decide_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Verdict {
        let policy = self.shared.policy.load_full();
        ctx.info.policy_version = policy.version().to_string();

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
                method: &ctx.info.method,
                target: raw,
                version,
                headers: &HeaderView(&session.req_header().headers),
                now: unix_now(),
            },
        );
        ctx.info.path = prepared.path().to_string();
        ctx.info.justification = prepared.justification_for_audit();
        if let Some(refusal) = prepared.refusal() {
            return Verdict::Denied(refusal.clone());
        }
        let authn = if prepared.needs_token() {
            match bearer_token(&session.req_header().headers) {
                BearerHeader::Absent | BearerHeader::NotBearer => Authn::Missing,
                BearerHeader::Ambiguous => {
                    return Verdict::Denied(Decision::deny(Reason::MalformedAuthorization))
                }
                BearerHeader::Token(t) => {
                    // Only token-carrying requests are rate limited, so only they
                    // need the client's identity.
                    let client_ip = self.client_ip(session);
                    if client_ip.is_some_and(|ip| self.shared.limiter.is_limited(ip)) {
                        self.shared.metrics.rate_limited.inc();
                        return Verdict::Denied(Decision::deny(Reason::RateLimited));
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
        if let Authn::Valid(claims) = &authn {
            ctx.info.claims = Some(claims.clone());
        }
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
                        let mut d = Decision::deny(reason);
                        d.route = prepared.route_label().cloned();
                        d.detail = Some(match kind {
                            BodyKind::Bundle => "the batch/transaction body".into(),
                            BodyKind::Form => "the form body".into(),
                        });
                        return Verdict::Denied(d);
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
        if !decision.is_allow() {
            return Verdict::Denied(decision);
        }
        let Some(target) = prepared.target() else {
            // prepare() refuses every request without a canonical target.
            return Verdict::Denied(Decision::deny(Reason::BadRequestPath));
        };
        if let Authn::Valid(claims) = &authn {
            if decision.shadow.is_none() && decision.forward.search_links {
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
        Verdict::Allowed(Permit {
            decision,
            target: target.clone(),
        })
    }

    /// Take an audit ticket and this request's place in its client's share.
    /// Returns the refusal when either is unavailable; `ctx.ticket` is then
    /// set if the refusal itself can be audited.
    fn reserve(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Decision> {
        let guard = self.shared.in_flight.acquire(self.client_ip(session));
        match self.shared.audit.reserve() {
            Ok(slot) => ctx.ticket = Some(AuditTicket::new(slot)),
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

    /// Finish one of this request's audit records: build it from the
    /// verdict as of now, with the status being sent, and commit it (on disk
    /// in `per_request` mode when this returns). The one place a ticket is
    /// committed. Returns false when there was no ticket or the commit
    /// failed: the caller must not release a PHI response then.
    async fn finish_audit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        status: u16,
        kind: RecordKind,
    ) -> bool {
        let ticket = match kind {
            RecordKind::Request => ctx.ticket.take(),
            RecordKind::TunnelClose => ctx.tunnel.as_mut().and_then(|t| t.close_ticket.take()),
        };
        let Some(ticket) = ticket else {
            return false;
        };
        let remote = session.client_addr().map(|a| a.to_string());
        let Some(record) = ctx.record(status, remote, kind) else {
            // Nothing was decided: there is nothing true to record.
            return false;
        };
        match ticket.finish(record).await {
            Ok(()) => true,
            Err(e) => {
                self.shared.note_audit_failure(&e);
                false
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    /// Runs once per request, before anything is sent upstream. Returns
    /// `true` when the response (a denial) has been written here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.start = Instant::now();
        let headers = &session.req_header().headers;
        ctx.info.request_id = request_id(headers);
        ctx.info.user_agent = headers
            .get("user-agent")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        ctx.info.method = session.req_header().method.as_str().to_string();

        ctx.verdict = self.decide_request(session, ctx).await;
        // Fail closed: without a place for the audit record, nothing is
        // served. The slot is taken only now, after the head and any
        // inspected body arrived, so slow clients hold none while sending.
        if let Some(refusal) = self.reserve(session, ctx) {
            ctx.verdict = Verdict::Denied(refusal.clone());
            let refusal = if ctx.ticket.is_some()
                && !self
                    .finish_audit(session, ctx, refusal.deny_status(), RecordKind::Request)
                    .await
            {
                Decision::deny(Reason::AuditUnavailable)
            } else {
                refusal
            };
            self.respond_deny(session, ctx, &refusal).await?;
            ctx.verdict = Verdict::Denied(refusal);
            return Ok(true);
        }
        if let Verdict::Denied(d) = &ctx.verdict {
            // The record is on its way to disk (durable in per_request mode)
            // before the client learns the outcome.
            let denial = d.clone();
            let answer = if self
                .finish_audit(session, ctx, denial.deny_status(), RecordKind::Request)
                .await
            {
                denial
            } else {
                Decision::deny(Reason::AuditUnavailable)
            };
            self.respond_deny(session, ctx, &answer).await?;
            ctx.verdict = Verdict::Denied(answer);
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
        Ok(Box::new(forward::peer(
            &self.shared.upstream,
            ctx.verdict.forward(),
        )))
    }

    /// Forward exactly the canonical target that was authorised, and nothing
    /// the backend could execute differently.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(permit) = ctx.verdict.permit() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "forwarding a request that was not allowed",
            );
        };
        let uri: http::Uri = permit
            .target
            .to_request_target()
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "canonical target is not a URI", e))?;
        upstream_request.set_uri(uri);
        if !self.shared.upstream.forward_authorization {
            upstream_request.remove_header("authorization");
        }
        forward::edit_request(upstream_request, permit.decision.forward, ctx.sent_continue)?;
        if ctx.links.is_some() {
            // The paging links are read from the result: ask for it uncompressed.
            upstream_request.remove_header("accept-encoding");
        }
        upstream_request.insert_header("x-request-id", ctx.info.request_id.as_str())?;
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
        upstream_response.insert_header("x-request-id", ctx.info.request_id.as_str())?;
        let status = upstream_response.status.as_u16();
        if status == 101 {
            if !ctx.verdict.forward().websocket {
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
                        close_ticket: Some(AuditTicket::new(slot)),
                    })
                }
                Err(e) => {
                    self.shared.note_audit_failure(&e);
                    ctx.verdict = Verdict::Denied(Decision::deny(Reason::AuditUnavailable));
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
        if !self.finish_audit(session, ctx, status, RecordKind::Request).await {
            if ctx.tunnel.take().is_some() {
                self.shared.metrics.tunnels_open.dec();
            }
            ctx.verdict = Verdict::Denied(Decision::deny(Reason::AuditUnavailable));
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
        if ctx.ticket.is_some()
            && !self.finish_audit(session, ctx, code, RecordKind::Request).await
            && code > 0
        {
            ctx.verdict = Verdict::Denied(Decision::deny(Reason::AuditUnavailable));
            code = 503;
        }
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(request_id = %ctx.info.request_id, error = %err, "failed to send error response");
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
        if ctx.ticket.is_some() {
            self.finish_audit(session, ctx, status, RecordKind::Request).await;
        }
        if ctx.tunnel.is_some() {
            self.shared.metrics.tunnels_open.dec();
            self.finish_audit(session, ctx, status, RecordKind::TunnelClose)
                .await;
            ctx.tunnel = None;
        }
        ctx.in_flight = None;
        let Some(decision) = ctx.verdict.decision() else {
            // Nothing was decided (the request ended while being read).
            tracing::debug!(request_id = %ctx.info.request_id, "request ended before a decision");
            return;
        };
        self.shared.metrics.count_request(decision, ctx.start.elapsed());
        let route = decision.route.as_deref().unwrap_or("none");
        if decision.break_glass {
            tracing::warn!(request_id = %ctx.info.request_id, route, "break-glass access");
        }
        tracing::info!(
            request_id = %ctx.info.request_id,
            decision = decision.outcome.as_str(),
            reason = decision.reason.as_str(),
            status,
            route,
            detail = decision.detail.as_deref(),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
