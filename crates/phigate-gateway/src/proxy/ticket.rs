//! A request's state through the pingora phases, typed: what is known about
//! it ([`RequestInfo`]), what was decided ([`Verdict`]: still pending,
//! denied with a reason, or allowed with its permit and target), and its
//! audit tickets — reserved spool slots that build records from the verdict
//! and are finished by [`super::Gateway::finish_audit`], or, for a request
//! cut off by shutdown, by [`RequestCtx`]'s `Drop`.
//!
//! Records of one request ([`RecordKind`]):
//! - **first**: a denial; an allowed read, committed when the response
//!   headers arrive and before they are released;
//! - **intent**: an allowed request with effects (every method but GET and
//!   HEAD; every request with `audit.intent: all`), committed *before* it is
//!   forwarded — no effect without evidence;
//! - **outcome**: how a request with a first or intent record ended — always
//!   after an intent and for a WebSocket tunnel (at close), and after a read
//!   whose response failed or was cut off.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use phigate_audit::{AuditError, AuditRecord, CommitInfo, Phase, Slot, Tunnel, TunnelPhase};
use phigate_policy::{CanonicalTarget, Claims, Decision, Forward, PolicySet, Reason};
use serde_json::Value;

use super::Shared;
use crate::limiter::InFlightGuard;
use crate::paging::Caller;

/// What is known about a request before (and whatever) the decision.
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub request_id: String,
    pub method: String,
    /// Canonical path, or the raw target when it was refused (the audit
    /// crate bounds it).
    pub path: String,
    /// The query string as received, without `?` (the audit crate removes
    /// an `access_token` value and bounds it).
    pub query: Option<String>,
    pub user_agent: Option<String>,
    /// The client's socket address.
    pub remote_addr: Option<String>,
    /// The break-glass justification as recorded.
    pub justification: Option<String>,
    /// Version of the policy that decided.
    pub policy_version: String,
    /// From a validated token.
    pub claims: Option<Claims>,
    /// The token's claims the policy can use, as recorded
    /// ([`recorded_claims`]); set with `claims`.
    pub recorded_claims: Option<BTreeMap<String, Value>>,
    /// The client certificate verified on the connection (mTLS).
    pub client_cert: Option<Arc<crate::tls::ClientCert>>,
    /// `HTTP/1.1`, `HTTP/2`, …
    pub http_version: Option<String>,
    /// The client connection's TLS version; `None` for plaintext.
    pub tls_version: Option<String>,
    /// `WWW-Authenticate` for a refusal by the access checks (DPoP,
    /// sessions), replacing the decision's own.
    pub challenge: Option<String>,
    /// A `DPoP-Nonce` to send with the response.
    pub dpop_nonce: Option<String>,
}

/// The claims of a validated token that a decision by `policy` can depend
/// on, as the audit record keeps them (`AuditRecord::claims`): `roles` (the
/// issuer's roles claim as the policy saw it, always present), `acr`,
/// `amr`, `auth_time`, `patient`, and every claim path a route condition
/// reads, by dotted name. Claims the token lacks are left out; the audit
/// crate bounds the whole. `phigate policy replay` decides recorded
/// requests again from these.
pub fn recorded_claims(policy: &PolicySet, claims: &Claims) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for path in policy.claim_paths() {
        if let Some(v) = claims.get_path(path) {
            out.insert(path.join("."), v.clone());
        }
    }
    for name in ["acr", "amr", "auth_time", "patient"] {
        if let Some(v) = claims.claims.get(name) {
            out.insert(name.to_string(), v.clone());
        }
    }
    out.insert("roles".to_string(), Value::from(claims.roles.clone()));
    out
}

/// What was decided.
#[derive(Debug, Default)]
pub enum Verdict {
    /// Not decided yet: the request is still being read.
    #[default]
    Pending,
    /// Refused by phigate (or, for an allowed request whose record could not
    /// be committed, turned into the `audit_unavailable` refusal the client
    /// got instead of the response).
    Denied(Decision),
    /// Let through: forwarded as the permit says.
    Allowed(Permit),
}

/// An allowed request: the decision, exactly the target that was
/// authorised, and where it goes (the upstream and the target as forwarded,
/// after the upstream's `rewrite`).
#[derive(Debug)]
pub struct Permit {
    pub decision: Decision,
    pub target: CanonicalTarget,
    pub upstream: crate::upstreams::Routed,
}

/// The attempts to reach the upstream of an allowed request.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Addresses tried, in order (the last one is the current attempt).
    pub tried: Vec<std::net::SocketAddr>,
    /// The label of the last address (`host:port (ip:port)`).
    pub address: Option<String>,
    /// `host[:port]` of the last address, for `Host` when not preserved.
    pub authority: Option<String>,
}

impl Verdict {
    /// The decision, once there is one.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Verdict::Pending => None,
            Verdict::Denied(d) => Some(d),
            Verdict::Allowed(p) => Some(&p.decision),
        }
    }

    /// How to forward (defaults for anything but an allowed request).
    pub fn forward(&self) -> Forward {
        match self {
            Verdict::Allowed(p) => p.decision.forward,
            _ => Forward::default(),
        }
    }

    /// The permit of an allowed request.
    pub fn permit(&self) -> Option<&Permit> {
        match self {
            Verdict::Allowed(p) => Some(p),
            _ => None,
        }
    }
}

/// A reserved place in the audit spool for one record.
#[derive(Debug)]
pub struct AuditTicket {
    slot: Slot,
}

impl AuditTicket {
    pub fn new(slot: Slot) -> Self {
        AuditTicket { slot }
    }

    /// Commit `record` (on disk in `per_request` mode when this resolves).
    pub async fn finish(self, record: AuditRecord) -> Result<CommitInfo, AuditError> {
        self.slot.commit(record).await
    }

    /// Hand `record` to the writer without waiting (from `Drop`, when no
    /// one is left to wait): it is written unless the spool is broken.
    pub fn finish_detached(self, record: AuditRecord) {
        drop(self.slot.commit(record));
    }
}

/// Which record of a request is being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The request's only or first record (a denial; an allowed read when
    /// its response headers arrive; for a tunnel, at the 101).
    First,
    /// Before an allowed request with effects is forwarded.
    Intent,
    /// How a request that has a first or intent record ended.
    Outcome,
}

/// A WebSocket tunnel opened through an opted-in route.
#[derive(Debug)]
pub struct TunnelState {
    pub opened: Instant,
    pub from_client: u64,
    pub to_client: u64,
}

/// Reading the paging links of an allowed search's result.
#[derive(Debug)]
pub struct LinkCapture {
    pub caller: Caller,
    /// The canonical target of the search the links continue.
    pub original: String,
    /// The route's FHIR base, for relative links.
    pub base: String,
    pub buf: Vec<u8>,
}

/// Per-request state, filled in as the request moves through the phases.
pub struct RequestCtx {
    pub start: Instant,
    pub info: RequestInfo,
    pub verdict: Verdict,
    /// The slot of the first (or intent) record, until it is committed.
    pub first: Option<AuditTicket>,
    /// The slot of the outcome record, reserved with the first so the
    /// outcome can always be written; released unused when no outcome is due.
    pub outcome: Option<AuditTicket>,
    /// The `event_id` of the committed first/intent record.
    pub first_event_id: Option<String>,
    /// An intent record was committed: an outcome record is due.
    pub intent: bool,
    /// Counted in `phigate_requests_total` (by `logging()`, or by `Drop` for
    /// a request cut off before it): exactly once per audited request.
    pub counted: bool,
    /// Why an allowed request failed after the decision (upstream, client),
    /// recorded as its reason.
    pub failure: Option<Reason>,
    /// This request's place in its client's in-flight share.
    pub in_flight: Option<InFlightGuard>,
    pub upstream_status: Option<u16>,
    /// Response body bytes passed to the client.
    pub bytes_to_client: u64,
    /// Request body bytes passed to the upstream.
    pub bytes_from_client: u64,
    /// phigate answered `100 Continue` and read the body itself.
    pub sent_continue: bool,
    /// A forwarded (streamed) request body must end by then.
    pub body_deadline: Option<Instant>,
    pub tunnel: Option<TunnelState>,
    /// An allowed search whose result's paging links are being read.
    pub links: Option<LinkCapture>,
    /// Connection attempts to the upstream.
    pub attempts: Attempts,
    /// For records of requests cut off by shutdown (`Drop`), and the
    /// process-wide count of requests in flight (the shutdown drain).
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for RequestCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCtx")
            .field("info", &self.info)
            .field("verdict", &self.verdict)
            .finish_non_exhaustive()
    }
}

impl RequestCtx {
    pub fn new(shared: Arc<Shared>) -> Self {
        shared.in_flight_total.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            start: Instant::now(),
            info: RequestInfo::default(),
            verdict: Verdict::Pending,
            first: None,
            outcome: None,
            first_event_id: None,
            intent: false,
            counted: false,
            failure: None,
            in_flight: None,
            upstream_status: None,
            bytes_to_client: 0,
            bytes_from_client: 0,
            sent_continue: false,
            body_deadline: None,
            tunnel: None,
            links: None,
            attempts: Attempts::default(),
            shared,
        }
    }

    /// An outcome record is due when the request ends: after an intent, for
    /// a tunnel, or when a read whose first record is committed failed.
    pub fn outcome_due(&self) -> bool {
        self.outcome.is_some()
            && self.first_event_id.is_some()
            && (self.intent || self.tunnel.is_some() || self.failure.is_some())
    }

    /// The audit record of this request as of now, sent with `status`.
    /// `None` while nothing was decided (no record is ever made up).
    pub fn record(&self, status: u16, kind: RecordKind) -> Option<AuditRecord> {
        let decision = self.verdict.decision()?;
        let claims = self.info.claims.clone().unwrap_or_default();
        let tunnel = self.tunnel.as_ref().map(|t| match kind {
            RecordKind::Outcome => Tunnel {
                phase: TunnelPhase::Close,
                bytes_from_client: t.from_client,
                bytes_to_client: t.to_client,
                duration_ms: t.opened.elapsed().as_millis() as u64,
            },
            _ => Tunnel {
                phase: TunnelPhase::Open,
                bytes_from_client: 0,
                bytes_to_client: 0,
                duration_ms: 0,
            },
        });
        let reason = match self.failure {
            Some(f) if kind != RecordKind::Intent && decision.is_allow() => f,
            _ => decision.reason,
        };
        let mut r = AuditRecord {
            ts: phigate_audit::now_rfc3339(),
            request_id: self.info.request_id.clone(),
            decision: decision.outcome.as_str().to_string(),
            reason: reason.as_str().to_string(),
            status,
            method: self.info.method.clone(),
            path: self.info.path.clone(),
            query: self.info.query.clone(),
            route: decision.route.as_deref().map(str::to_string),
            sub: claims.subject,
            client_id: claims.client_id,
            iss: (!claims.issuer.is_empty()).then_some(claims.issuer),
            scopes_granted: claims.scopes,
            claims: self.info.recorded_claims.clone(),
            scopes_required: decision.scopes_required.clone(),
            scope_used: if decision.is_allow() && decision.shadow.is_none() {
                decision.scope_used.clone()
            } else {
                Vec::new()
            },
            upstream_status: self.upstream_status,
            duration_ms: (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            remote_addr: self.info.remote_addr.clone(),
            policy_version: self.info.policy_version.clone(),
            patient: decision.patient.clone(),
            break_glass: decision.break_glass,
            justification: self.info.justification.clone(),
            shadow_decision: decision.shadow.map(|_| "deny".to_string()),
            user_agent: self.info.user_agent.clone(),
            tunnel,
            client_cert: self.info.client_cert.as_ref().map(|c| phigate_audit::ClientCert {
                subject: c.subject.clone(),
                sha256: c.sha256.clone(),
            }),
            http_version: self.info.http_version.clone(),
            tls_version: self.info.tls_version.clone(),
            upstream: self
                .verdict
                .permit()
                .map(|p| p.upstream.upstream.name().to_string()),
            upstream_address: self.attempts.address.clone(),
            upstream_attempts: (!self.attempts.tried.is_empty()).then_some(self.attempts.tried.len() as u32),
            ..AuditRecord::default()
        };
        match kind {
            RecordKind::First => {}
            RecordKind::Intent => {
                r.phase = Some(Phase::Intent);
                r.status = 0;
                r.upstream_status = None;
            }
            RecordKind::Outcome => {
                r.phase = Some(Phase::Outcome);
                r.completes = self.first_event_id.clone();
                r.complete = Some(self.failure.is_none());
                r.bytes_to_client = Some(self.bytes_to_client);
                r.bytes_from_client = Some(self.bytes_from_client);
            }
        }
        Some(r)
    }
}

impl Drop for RequestCtx {
    /// A request whose tickets were not finished was cut off: pingora drops
    /// the request's task when its runtime shuts down (the end of
    /// `shutdown_grace`, or SIGINT), and nothing else runs for it. Its
    /// outstanding record is written here — `aborted_shutdown` while phigate
    /// shuts down, `client_aborted` otherwise — so a request that may have
    /// reached the upstream never ends without one. The gateway waits for
    /// these records before it exits (`Spool::close`).
    fn drop(&mut self) {
        self.record_if_cut_off();
        self.shared.in_flight_total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestCtx {
    /// The `Drop` of a request whose tickets were not finished (see there).
    fn record_if_cut_off(&mut self) {
        // `logging()` releases the outcome slot when it is done: one still
        // held after a committed first record means the request never got
        // there (a read cut off mid-body is incomplete too).
        let cut_off = self.outcome.is_some() && self.first_event_id.is_some();
        if self.first.is_none() && !cut_off {
            // Its record was committed (at response time), but the task was
            // dropped before `logging()` — an HTTP/2 stream whose connection
            // went away: count it, as every audited request is.
            if self.first_event_id.is_some() {
                self.count(None);
            }
            return;
        }
        let shutting_down = self.shared.shutting_down.load(Ordering::Acquire);
        if matches!(self.verdict, Verdict::Allowed(_)) {
            self.failure = Some(if shutting_down {
                Reason::AbortedShutdown
            } else {
                Reason::ClientAborted
            });
        }
        let (ticket, kind) = match self.first.take() {
            Some(t) => (t, RecordKind::First),
            None => match self.outcome.take() {
                Some(t) => (t, RecordKind::Outcome),
                None => return,
            },
        };
        if let Some(record) = self.record(0, kind) {
            self.count(self.failure);
            ticket.finish_detached(record);
        }
    }

    /// Count the request in the metrics once, with `failure` as its reason
    /// when it was allowed and then failed.
    pub fn count(&mut self, failure: Option<Reason>) {
        if self.counted {
            return;
        }
        let Some(d) = self.verdict.decision() else {
            return;
        };
        let reason = failure.filter(|_| d.is_allow()).unwrap_or(d.reason);
        self.shared.metrics.count_request(d, reason, self.start.elapsed());
        self.counted = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_claims_keep_what_the_policy_can_read_and_nothing_else() {
        let policy = phigate_policy::compile(&[phigate_policy::PolicySource::new(
            "p.yaml",
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /a/{t}\n    scopes: { any_of: [a] }\n    when:\n      claims:\n        - { claim: realm_access.roles, contains: { value: doctor } }\n        - { claim: tenant, equals: { param: t } }\n",
        )])
        .unwrap();
        let payload = serde_json::json!({
            "sub": "alice", "email": "alice@example.org", "acr": "loa3", "amr": ["pwd", "otp"],
            "auth_time": 1_764_466_800, "patient": "123",
            "realm_access": { "roles": ["doctor"], "other": true },
        });
        let claims = Claims {
            issuer: "https://idp".into(),
            roles: vec!["doctor".into()],
            claims: Arc::new(payload.as_object().cloned().unwrap()),
            ..Claims::default()
        };
        let m = recorded_claims(&policy, &claims);
        assert_eq!(
            m.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "acr",
                "amr",
                "auth_time",
                "patient",
                "realm_access.roles",
                "roles"
            ],
            "`tenant` is absent from the token; `email`, `sub` are not read by the policy"
        );
        assert_eq!(m["realm_access.roles"], serde_json::json!(["doctor"]));
        assert_eq!(m["roles"], serde_json::json!(["doctor"]));
        let bare = recorded_claims(&policy, &Claims::default());
        assert_eq!(
            bare,
            BTreeMap::from([("roles".to_string(), serde_json::json!([]))])
        );
    }
}
