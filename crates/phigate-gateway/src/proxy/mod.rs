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
mod logout;
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
pub use logout::{logout_reason, LogoutOutcome};
pub use ticket::{recorded_claims, AuditTicket, Permit, RecordKind, RequestCtx, RequestInfo, Verdict};

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
    /// Sender constraints and sessions (checked after the token verified).
    pub access: Arc<crate::access::AccessControl>,
    pub audit: Spool,
    pub metrics: Arc<Metrics>,
    /// The upstreams: routing, balancing, health.
    pub upstreams: Arc<crate::upstreams::Upstreams>,
    /// What is forwarded to each upstream (by name).
    pub upstream_configs: Vec<UpstreamConfig>,
    /// Which forwarding headers are set.
    pub forwarded: crate::config::ForwardedMode,
    pub limiter: crate::limiter::InvalidTokenLimiter,
    /// Proxies whose forwarding headers are believed (client address for
    /// rate limits and in-flight shares; headers passed on upstream).
    pub trusted_proxies: Vec<crate::limiter::Cidr>,
    /// Status of each streaming audit sink.
    pub sinks: Vec<Arc<phigate_sinks::SinkStatus>>,
    pub limits: Limits,
    /// Requests in flight per client address.
    pub in_flight: Arc<InFlightLimiter>,
    /// Rate limit of repeated error logs, per kind.
    pub error_log: LogLimiter,
    /// Paging links of allowed searches, per caller.
    pub paging: crate::paging::PagingLinks,
    /// Which allowed requests get an intent record before forwarding.
    pub intent: crate::config::IntentMode,
    /// Set when SIGTERM or SIGINT arrives: `/readyz` turns 503, responses
    /// close their connections, and requests cut off from then on are
    /// recorded as `aborted_shutdown`.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Requests in flight on every listener (the shutdown drain waits for 0).
    pub in_flight_total: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Requests in flight now.
    pub fn in_flight_now(&self) -> usize {
        self.in_flight_total.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What is forwarded to the upstream named `name`.
    pub fn upstream_config(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstream_configs.iter().find(|u| u.spec.name == name)
    }

    /// Count a request the audit pipeline could not take and log it (at most
    /// once per second, with the number of lines suppressed since).
    pub fn note_audit_failure(&self, e: &AuditError) {
        self.metrics.audit_fail_closed.inc();
        if let Some(suppressed) = self.error_log.should_log("audit_unavailable") {
            tracing::error!(error = %e, suppressed, "audit unavailable; refusing requests");
        }
    }

    /// Count an allowed request that failed after the decision (upstream,
    /// client) and log it — at most once per second per kind, with the
    /// number suppressed: a dead backend under load must not flood the log.
    pub fn note_failure(&self, r: Reason, e: &Error, request_id: &str) {
        if let Some(kind) = upstream_kind(r) {
            self.metrics.upstream_errors.with_label_values(&[kind]).inc();
        }
        if let Some(suppressed) = self.error_log.should_log(r.as_str()) {
            if r == Reason::ClientAborted {
                tracing::info!(reason = r.as_str(), error = %e, request_id, suppressed, "client went away");
            } else if matches!(r, Reason::BadRequest | Reason::RequestTimeout) {
                tracing::info!(reason = r.as_str(), error = %e, request_id, suppressed, "client request failed after the decision");
            } else {
                tracing::warn!(reason = r.as_str(), error = %e, request_id, suppressed, "upstream failure");
            }
        }
    }
}

/// The listener a [`Gateway`] serves.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub address: std::net::SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// The `ProxyHttp` implementation (one per listener).
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub listener: Arc<ListenerInfo>,
}

/// How an allowed request failed after the decision, and the status to
/// answer with (0: nothing can be sent). `started`: the response had begun.
fn failure_of(e: &Error, started: bool) -> (Option<Reason>, u16) {
    use ErrorType::*;
    let upstream = |r: Reason, code: u16| {
        if started {
            (Some(Reason::UpstreamIncomplete), 0)
        } else {
            (Some(r), code)
        }
    };
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(503)) => (Some(Reason::AuditUnavailable), 503),
        (_, HTTPStatus(408)) => (Some(Reason::RequestTimeout), 408),
        (_, HTTPStatus(502)) => (Some(Reason::UpstreamInvalidResponse), 502),
        (_, HTTPStatus(code)) => (None, *code),
        (ErrorSource::Downstream, ReadTimedout) => (Some(Reason::RequestTimeout), 408),
        (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed | WriteTimedout) => {
            (Some(Reason::ClientAborted), 0)
        }
        (ErrorSource::Downstream, _) => (Some(Reason::BadRequest), 400),
        (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout) => {
            if started {
                (Some(Reason::UpstreamTimeout), 0)
            } else {
                (Some(Reason::UpstreamTimeout), 504)
            }
        }
        (ErrorSource::Upstream, InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade) => {
            upstream(Reason::UpstreamInvalidResponse, 502)
        }
        (ErrorSource::Upstream, _) => upstream(Reason::UpstreamUnreachable, 502),
        (ErrorSource::Internal | ErrorSource::Unset, _) => (None, 500),
    }
}

/// The `kind` label of `phigate_upstream_errors_total` for a failure reason.
fn upstream_kind(r: Reason) -> Option<&'static str> {
    Some(match r {
        Reason::UpstreamUnreachable => "unreachable",
        Reason::UpstreamTimeout => "timeout",
        Reason::UpstreamInvalidResponse => "invalid_response",
        Reason::UpstreamIncomplete => "incomplete",
        Reason::UpstreamUnavailable => "unavailable",
        _ => return None,
    })
}

/// Who a paging link belongs to.
fn caller(c: &Claims) -> crate::paging::Caller {
    crate::paging::Caller {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        client_id: c.client_id.clone(),
    }
}

/// Milliseconds since the Unix epoch (session records).
pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn unix_now() -> i64 {
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

    /// What the request presented, for the access checks.
    fn presented<'s>(
        &self,
        session: &'s Session,
        ctx: &'s RequestCtx,
        scheme: crate::access::Scheme,
        token: &'s str,
        raw: &'s [u8],
    ) -> crate::access::Presented<'s> {
        let headers = &session.req_header().headers;
        let proofs = headers
            .get_all("dpop")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let target = std::str::from_utf8(raw).unwrap_or("");
        let path = match target.find("://") {
            // absolute-form: scheme://authority/path?query
            Some(i) if !target.starts_with('/') => {
                let rest = &target[i + 3..];
                rest.find('/').map_or("/", |j| &rest[j..])
            }
            _ => target,
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let host = session
            .req_header()
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()));
        crate::access::Presented {
            scheme,
            token,
            proofs,
            method: &ctx.info.method,
            path,
            host,
            listener_scheme: self.listener.scheme,
            client_cert_sha256: ctx.info.client_cert.as_ref().map(|c| c.sha256.as_str()),
        }
    }

    async fn respond_deny(&self, session: &mut Session, ctx: &RequestCtx, decision: &Decision) -> Result<()> {
        let (mut resp, body) = deny_response(decision, &ctx.info.request_id)?;
        // The access checks' challenge goes only with the refusal it was
        // made for (not with a later `audit_unavailable`).
        if matches!(&ctx.verdict, Verdict::Denied(d) if d.reason == decision.reason) {
            if let Some(c) = &ctx.info.challenge {
                resp.insert_header("www-authenticate", c.as_str())?;
            }
            if let Some(n) = &ctx.info.dpop_nonce {
                resp.insert_header("dpop-nonce", n.as_str())?;
            }
        }
        if matches!(decision.deny_status(), 400 | 408)
            || self
                .shared
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
        {
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
                client_cert_sha256: ctx.info.client_cert.as_ref().map(|c| c.sha256.as_str()),
            },
        );
        ctx.info.path = prepared.path().to_string();
        // The query as received (canonicalisation keeps it raw); the audit
        // crate removes an `access_token` value and bounds it.
        ctx.info.query = prepared.target().and_then(|t| t.query.clone());
        ctx.info.justification = prepared.justification_for_audit();
        if let Some(refusal) = prepared.refusal() {
            return Verdict::Denied(refusal.clone());
        }
        let authn = if prepared.needs_token() {
            let bearer = bearer_token(&session.req_header().headers);
            match bearer {
                BearerHeader::Absent | BearerHeader::NotBearer => Authn::Missing,
                BearerHeader::Ambiguous => {
                    return Verdict::Denied(Decision::deny(Reason::MalformedAuthorization))
                }
                BearerHeader::Token(t) | BearerHeader::Dpop(t) => {
                    let scheme = if matches!(bearer, BearerHeader::Dpop(_)) {
                        crate::access::Scheme::Dpop
                    } else {
                        crate::access::Scheme::Bearer
                    };
                    // Only token-carrying requests are rate limited, so only they
                    // need the client's identity.
                    let client_ip = self.client_ip(session);
                    if client_ip.is_some_and(|ip| self.shared.limiter.is_limited(ip)) {
                        self.shared.metrics.rate_limited.inc();
                        return Verdict::Denied(Decision::deny(Reason::RateLimited));
                    }
                    match self.shared.validator.validate(t).await {
                        Ok(v) => {
                            let presented = self.presented(session, ctx, scheme, t, raw);
                            if let Err(denial) = self
                                .shared
                                .access
                                .check(
                                    &presented,
                                    &v,
                                    prepared.route_idle_timeout(),
                                    prepared.route_requires_dpop(),
                                )
                                .await
                            {
                                let claims = claims_of(&v);
                                ctx.info.recorded_claims = Some(recorded_claims(&policy, &claims));
                                ctx.info.claims = Some(claims);
                                ctx.info.challenge = denial.challenge;
                                ctx.info.dpop_nonce = denial.nonce;
                                let mut d = Decision::deny(denial.reason);
                                d.route = prepared.route_label().cloned();
                                d.detail = denial.detail;
                                return Verdict::Denied(d);
                            }
                            if scheme == crate::access::Scheme::Dpop {
                                ctx.info.dpop_nonce = self.shared.access.new_nonce();
                            }
                            Authn::Valid(claims_of(&v))
                        }
                        Err(e) => {
                            // Only the client's own failures count toward its limit.
                            if !matches!(
                                e,
                                TokenError::KeysUnavailable | TokenError::IntrospectionUnavailable
                            ) {
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
            ctx.info.recorded_claims = Some(recorded_claims(&policy, claims));
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
                        client_cert_sha256: ctx.info.client_cert.as_ref().map(|c| c.sha256.as_str()),
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
        // Where it goes: the upstream with the longest matching prefix.
        let Some(upstream) = self.shared.upstreams.route(&target.to_request_target()) else {
            let mut d = Decision::deny(Reason::NoUpstream);
            d.route = decision.route.clone();
            d.detail = Some("no upstream serves this path".into());
            return Verdict::Denied(d);
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
            upstream,
        })
    }

    /// Take the request's audit tickets — one for a denial; for an allowed
    /// request also the outcome's, so its outcome can always be recorded —
    /// and its place in its client's share. Returns the refusal when any is
    /// unavailable; `ctx.first` is then set if the refusal itself can be
    /// audited.
    fn reserve(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Decision> {
        let guard = self.shared.in_flight.acquire(self.client_ip(session));
        match self.shared.audit.reserve() {
            Ok(slot) => ctx.first = Some(AuditTicket::new(slot)),
            Err(e) => {
                self.shared.note_audit_failure(&e);
                return Some(Decision::deny(Reason::AuditUnavailable));
            }
        }
        if matches!(ctx.verdict, Verdict::Allowed(_)) {
            match self.shared.audit.reserve() {
                Ok(slot) => ctx.outcome = Some(AuditTicket::new(slot)),
                Err(e) => {
                    self.shared.note_audit_failure(&e);
                    return Some(Decision::deny(Reason::AuditUnavailable));
                }
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
    /// committed while the request's task runs (a request cut off by
    /// shutdown is recorded by `RequestCtx`'s `Drop`). Returns false when
    /// there was no ticket or the commit failed: the caller must not release
    /// a PHI response, or forward an effect, then.
    async fn finish_audit(&self, ctx: &mut RequestCtx, status: u16, kind: RecordKind) -> bool {
        let ticket = match kind {
            RecordKind::First | RecordKind::Intent => ctx.first.take(),
            RecordKind::Outcome => ctx.outcome.take(),
        };
        let Some(ticket) = ticket else {
            return false;
        };
        let Some(record) = ctx.record(status, kind) else {
            // Nothing was decided: there is nothing true to record.
            return false;
        };
        match ticket.finish(record).await {
            Ok(info) => {
                if kind != RecordKind::Outcome {
                    ctx.first_event_id = Some(info.event_id);
                    ctx.intent = kind == RecordKind::Intent;
                }
                if kind == RecordKind::First && ctx.failure.is_some() {
                    // The failure is in this record already: nothing follows.
                    ctx.outcome = None;
                }
                true
            }
            Err(e) => {
                self.shared.note_audit_failure(&e);
                false
            }
        }
    }

    /// Whether an allowed request gets an intent record before it is
    /// forwarded: every request with effects (any method but GET and HEAD),
    /// or every request with `audit.intent: all`.
    fn needs_intent(&self, ctx: &RequestCtx) -> bool {
        match self.shared.intent {
            crate::config::IntentMode::All => true,
            crate::config::IntentMode::Writes => !matches!(ctx.info.method.as_str(), "GET" | "HEAD"),
        }
    }

    /// Answer a failure with the reason's JSON body (nothing for status 0).
    async fn respond_failure(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        reason: Option<Reason>,
        code: u16,
    ) {
        if code == 0 {
            return;
        }
        // A request body nobody read (the upstream failed before taking it)
        // would make closing the connection reset it, and the client could
        // lose the answer: read what arrives within a short bound first.
        if !session.as_downstream_mut().is_body_done() {
            let bound = self
                .shared
                .limits
                .request_body_timeout
                .min(Duration::from_secs(2));
            let _ = tokio::time::timeout(bound, session.as_downstream_mut().drain_request_body()).await;
        }
        let result = match reason {
            Some(r) if r.deny_status() == code => {
                let d = Decision::deny(r);
                match deny_response(&d, &ctx.info.request_id) {
                    Ok((h, b)) => match session.write_response_header(h, false).await {
                        Ok(()) => session.write_response_body(Some(b), true).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            _ => session.respond_error(code).await,
        };
        if let Err(err) = result {
            tracing::debug!(request_id = %ctx.info.request_id, error = %err, "failed to send error response");
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new(self.shared.clone())
    }

    /// pingora logs every failed request at ERROR; phigate records each in
    /// the audit and metrics and logs them rate-limited instead
    /// ([`Shared::note_failure`]).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        _error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        true
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
        ctx.info.remote_addr = session.client_addr().map(|a| a.to_string());
        ctx.info.http_version = Some(format!("{:?}", session.req_header().version));
        let digest = session.as_downstream().digest();
        ctx.info.client_cert = crate::tls::client_cert(digest);
        ctx.info.tls_version = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| s.version.to_string())
            .filter(|v| !v.is_empty());

        if self.shared.access.is_logout_path(session.req_header().uri.path()) {
            return self.backchannel_logout(session, ctx).await;
        }
        ctx.verdict = self.decide_request(session, ctx).await;
        // Fail closed: without a place for the audit record, nothing is
        // served. The slot is taken only now, after the head and any
        // inspected body arrived, so slow clients hold none while sending.
        if let Some(refusal) = self.reserve(session, ctx) {
            ctx.verdict = Verdict::Denied(refusal.clone());
            ctx.outcome = None;
            let refusal = if ctx.first.is_some()
                && !self
                    .finish_audit(ctx, refusal.deny_status(), RecordKind::First)
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
                .finish_audit(ctx, denial.deny_status(), RecordKind::First)
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
        // Nothing is recorded as forwarded that cannot be: with no healthy
        // address the request ends here (503 `upstream_unavailable`), before
        // any intent.
        if let Some(p) = ctx.verdict.permit() {
            if !self.shared.upstreams.any_healthy(&p.upstream.upstream) {
                let name = p.upstream.upstream.name().to_string();
                ctx.failure = Some(Reason::UpstreamUnavailable);
                self.shared
                    .metrics
                    .upstream_errors
                    .with_label_values(&["unavailable"])
                    .inc();
                if let Some(suppressed) = self.shared.error_log.should_log("upstream_unavailable") {
                    tracing::warn!(upstream = %name, suppressed, "no healthy upstream address; refusing");
                }
                let code = Reason::UpstreamUnavailable.deny_status();
                let (reason, code) = if self.finish_audit(ctx, code, RecordKind::First).await {
                    (Reason::UpstreamUnavailable, code)
                } else {
                    ctx.verdict = Verdict::Denied(Decision::deny(Reason::AuditUnavailable));
                    (Reason::AuditUnavailable, 503)
                };
                self.respond_failure(session, ctx, Some(reason), code).await;
                return Ok(true);
            }
        }
        // No effect without evidence: a request with effects is on record
        // (on disk in per_request mode) before it is forwarded.
        if self.needs_intent(ctx) && !self.finish_audit(ctx, 0, RecordKind::Intent).await {
            ctx.outcome = None;
            let refusal = Decision::deny(Reason::AuditUnavailable);
            self.respond_deny(session, ctx, &refusal).await?;
            ctx.verdict = Verdict::Denied(refusal);
            return Ok(true);
        }
        // A forwarded body must arrive in time too; stalls fail the read.
        let timeout = self.shared.limits.request_body_timeout;
        ctx.body_deadline = Some(ctx.start + timeout);
        session.as_downstream_mut().set_read_timeout(Some(timeout));
        Ok(false)
    }

    /// Only reached for allowed requests: the next healthy address of the
    /// request's upstream (round robin; a retry skips addresses tried).
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let Some(permit) = ctx.verdict.permit() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "forwarding a request that was not allowed",
            );
        };
        let forward = permit.decision.forward;
        match self
            .shared
            .upstreams
            .select(&permit.upstream.upstream, &ctx.attempts.tried)
        {
            Ok(selected) => {
                ctx.attempts.tried.push(selected.addr);
                ctx.attempts.address = Some(selected.address);
                ctx.attempts.authority = Some(selected.authority);
                Ok(Box::new(forward::peer(selected.peer, forward)))
            }
            Err(e) => {
                ctx.failure = Some(Reason::UpstreamUnavailable);
                Error::e_explain(ErrorType::ConnectNoRoute, e.to_string())
            }
        }
    }

    /// A connect failure: the address cools down (passive health), and an
    /// idempotent request is retried on another address, at most
    /// `retries` times.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(permit) = ctx.verdict.permit() else {
            return e;
        };
        if let Some(addr) = ctx.attempts.tried.last() {
            self.shared
                .upstreams
                .report_connect_failure(&permit.upstream.upstream, *addr);
        }
        let retries = self
            .shared
            .upstream_config(permit.upstream.upstream.name())
            .map_or(0, |u| u.retries) as usize;
        let idempotent = matches!(
            ctx.info.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        );
        // Only when another address is left to try: a retry that cannot
        // connect anywhere would turn the precise 502/504 into a 503.
        let retry = idempotent
            && !permit.decision.forward.websocket
            && ctx.attempts.tried.len() <= retries
            && self
                .shared
                .upstreams
                .select(&permit.upstream.upstream, &ctx.attempts.tried)
                .is_ok();
        e.set_retry(retry);
        e
    }

    /// Forward exactly the canonical target that was authorised, and nothing
    /// the backend could execute differently.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(permit) = ctx.verdict.permit() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "forwarding a request that was not allowed",
            );
        };
        // The canonical target, with the upstream's prefix rewritten.
        let uri: http::Uri = permit
            .upstream
            .target
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "canonical target is not a URI", e))?;
        // The client's Host (HTTP/2: `:authority`), unless the upstream asks
        // for its own.
        let client_host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| session.req_header().uri.authority().map(|a| a.to_string()));
        upstream_request.set_uri(uri);
        let up = self.shared.upstream_config(permit.upstream.upstream.name());
        let host = match (up.is_some_and(|u| u.preserve_host), &client_host) {
            (true, Some(h)) => Some(h.clone()),
            _ => ctx.attempts.authority.clone(),
        };
        if let Some(h) = host {
            upstream_request.insert_header(http::header::HOST, h)?;
        }
        if !up.is_some_and(|u| u.forward_authorization) {
            upstream_request.remove_header("authorization");
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        forward::set_forwarding_headers(
            upstream_request,
            forward::Origin {
                peer,
                trusted: peer.is_some_and(|ip| self.shared.trusted_proxies.iter().any(|c| c.contains(ip))),
                scheme: self.listener.scheme,
                host: client_host.as_deref(),
            },
            self.shared.forwarded,
        )?;
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
        let n = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.bytes_from_client += n;
        if let Some(t) = &mut ctx.tunnel {
            t.from_client += n;
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
        // The address answered: any connect-failure cooldown ends.
        if let (Some(p), Some(addr)) = (ctx.verdict.permit(), ctx.attempts.tried.last()) {
            self.shared.upstreams.report_success(&p.upstream.upstream, *addr);
        }
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
        // A fresh server nonce with every DPoP response (RFC 9449 §8.2), so
        // clients need not take a 401 when theirs ages out.
        if let Some(n) = ctx.info.dpop_nonce.take() {
            upstream_response.insert_header("dpop-nonce", n)?;
        }
        if self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Draining for a shutdown: keep-alive clients reconnect elsewhere.
            session.set_keepalive(None);
        }
        let status = upstream_response.status.as_u16();
        if status == 101 {
            if !ctx.verdict.forward().websocket {
                // pingora refuses a 101 to a request that was not an upgrade;
                // never let one through unaudited either.
                return Error::e_explain(ErrorType::HTTPStatus(502), "unexpected 101 from the upstream");
            }
            ctx.tunnel = Some(TunnelState {
                opened: Instant::now(),
                from_client: 0,
                to_client: 0,
            });
            // The tunnel has no body deadline.
            ctx.body_deadline = None;
            session.as_downstream_mut().set_read_timeout(None);
            self.shared.metrics.tunnels_open.inc();
        }
        if ctx.intent {
            // On record since before it was forwarded; the outcome follows.
            return Ok(());
        }
        // An allowed read: recorded (durably in per_request mode) before the
        // response is released; if the audit pipeline fails, the client gets
        // 503 instead of an unaudited PHI response.
        if !self.finish_audit(ctx, status, RecordKind::First).await {
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
        let n = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.bytes_to_client += n;
        if let Some(t) = &mut ctx.tunnel {
            t.to_client += n;
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
    /// audit commit, the client gone): record the outcome first, then answer.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        // pingora calls this for errors after the response began too.
        let sent = session.response_written().map(|r| r.status.as_u16());
        let started = sent.is_some();
        let (reason, mut code) = match ctx.failure {
            // No healthy address to try (upstream_peer said so).
            Some(Reason::UpstreamUnavailable) if !started => (Some(Reason::UpstreamUnavailable), 503),
            _ => failure_of(e, started),
        };
        // The record carries the status the client got (or is about to get).
        let recorded_status = sent.unwrap_or(code);
        let allowed = matches!(ctx.verdict, Verdict::Allowed(_));
        if allowed {
            // A downstream error after the decision that is not a clean
            // disconnect (an HTTP/2 stream the client broke, a malformed
            // body) is the client's `bad_request`: recorded as such, not as
            // `allowed` with a 400.
            let client = |r: &Reason| matches!(r, Reason::RequestTimeout | Reason::BadRequest);
            if let Some(r) = reason.filter(|r| r.is_failure_after_allow() || client(r)) {
                ctx.failure = Some(r);
                self.shared.note_failure(r, e, &ctx.info.request_id);
            }
        }
        let recorded = if ctx.first.is_some() {
            self.finish_audit(ctx, recorded_status, RecordKind::First).await
        } else if ctx.outcome_due() {
            self.finish_audit(ctx, recorded_status, RecordKind::Outcome).await
        } else {
            true
        };
        let mut reason = ctx.failure.or(reason);
        if !recorded && code > 0 {
            ctx.verdict = Verdict::Denied(Decision::deny(Reason::AuditUnavailable));
            reason = Some(Reason::AuditUnavailable);
            code = 503;
        }
        self.respond_failure(session, ctx, reason, code).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs once per request after the response (or a fatal error): every
    /// decision, allow or deny, has its records (a first or intent record,
    /// and an outcome record when one is due) and one metric sample.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let (Some(e), Verdict::Allowed(_)) = (e, &ctx.verdict) {
            if ctx.failure.is_none() {
                // The response had begun (else fail_to_proxy saw it): it is
                // incomplete, or the client left.
                let (reason, _) = failure_of(e, status > 0);
                if let Some(r) = reason.filter(|r| r.is_failure_after_allow()) {
                    ctx.failure = Some(r);
                    self.shared.note_failure(r, e, &ctx.info.request_id);
                }
            }
        }
        // Normally committed at response time; a request that ended without
        // one is recorded here.
        if ctx.first.is_some() {
            self.finish_audit(ctx, status, RecordKind::First).await;
        }
        if ctx.outcome_due() {
            self.finish_audit(ctx, status, RecordKind::Outcome).await;
        }
        if ctx.tunnel.take().is_some() {
            self.shared.metrics.tunnels_open.dec();
        }
        // An outcome slot nobody needed is released.
        ctx.outcome = None;
        ctx.in_flight = None;
        ctx.count(ctx.failure);
        let Some(decision) = ctx.verdict.decision() else {
            // Nothing was decided (the request ended while being read).
            tracing::debug!(request_id = %ctx.info.request_id, "request ended before a decision");
            return;
        };
        let reason = ctx
            .failure
            .filter(|_| decision.is_allow())
            .unwrap_or(decision.reason);
        let route = decision.route.as_deref().unwrap_or("none");
        if decision.break_glass {
            tracing::warn!(request_id = %ctx.info.request_id, route, "break-glass access");
        }
        // The audit record and the metrics carry every request; this line is
        // for debugging (`RUST_LOG=phigate_gateway::proxy=debug`): at info
        // level it cost ~4 % of the CPU per request.
        tracing::debug!(
            request_id = %ctx.info.request_id,
            decision = decision.outcome.as_str(),
            reason = reason.as_str(),
            status,
            route,
            detail = decision.detail.as_deref(),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
