//! A request's state through the pingora phases, typed: what is known about
//! it ([`RequestInfo`]), what was decided ([`Verdict`]: still pending,
//! denied with a reason, or allowed with its permit and target), and its
//! [`AuditTicket`] — the reserved audit slot that builds the record from the
//! verdict and is finished exactly once, by [`super::Gateway::finish_audit`].

use std::time::Instant;

use phigate_audit::{AuditError, AuditRecord, Slot, Tunnel, TunnelPhase};
use phigate_policy::{CanonicalTarget, Claims, Decision, Forward};

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
    pub user_agent: Option<String>,
    /// The break-glass justification as recorded.
    pub justification: Option<String>,
    /// Version of the policy that decided.
    pub policy_version: String,
    /// From a validated token.
    pub claims: Option<Claims>,
}

/// What was decided.
#[derive(Debug, Default)]
pub enum Verdict {
    /// Not decided yet: the request is still being read.
    #[default]
    Pending,
    /// Refused by phigate; never forwarded.
    Denied(Decision),
    /// Let through: forwarded as the permit says.
    Allowed(Permit),
}

/// An allowed request: the decision and exactly the target to forward.
#[derive(Debug)]
pub struct Permit {
    pub decision: Decision,
    pub target: CanonicalTarget,
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
    pub async fn finish(self, record: AuditRecord) -> Result<(), AuditError> {
        self.slot.commit(record).await.map(|_| ())
    }
}

/// Which record of a request is being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The request's record (for a tunnel: at the 101, `phase: open`).
    Request,
    /// A tunnel's second record, when it closes.
    TunnelClose,
}

/// A WebSocket tunnel opened through an opted-in route.
#[derive(Debug)]
pub struct TunnelState {
    pub opened: Instant,
    pub from_client: u64,
    pub to_client: u64,
    /// The ticket for the record written when the tunnel closes.
    pub close_ticket: Option<AuditTicket>,
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
#[derive(Debug)]
pub struct RequestCtx {
    pub start: Instant,
    pub info: RequestInfo,
    pub verdict: Verdict,
    /// The audit slot, from the decision until the record is committed.
    pub ticket: Option<AuditTicket>,
    /// This request's place in its client's in-flight share.
    pub in_flight: Option<InFlightGuard>,
    pub upstream_status: Option<u16>,
    /// phigate answered `100 Continue` and read the body itself.
    pub sent_continue: bool,
    /// A forwarded (streamed) request body must end by then.
    pub body_deadline: Option<Instant>,
    pub tunnel: Option<TunnelState>,
    /// An allowed search whose result's paging links are being read.
    pub links: Option<LinkCapture>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            info: RequestInfo::default(),
            verdict: Verdict::Pending,
            ticket: None,
            in_flight: None,
            upstream_status: None,
            sent_continue: false,
            body_deadline: None,
            tunnel: None,
            links: None,
        }
    }

    /// The audit record of this request as of now, sent with `status`.
    /// `None` while nothing was decided (no record is ever made up).
    pub fn record(&self, status: u16, remote_addr: Option<String>, kind: RecordKind) -> Option<AuditRecord> {
        let decision = self.verdict.decision()?;
        let claims = self.info.claims.clone().unwrap_or_default();
        let tunnel = self.tunnel.as_ref().map(|t| match kind {
            RecordKind::Request => Tunnel {
                phase: TunnelPhase::Open,
                bytes_from_client: 0,
                bytes_to_client: 0,
                duration_ms: 0,
            },
            RecordKind::TunnelClose => Tunnel {
                phase: TunnelPhase::Close,
                bytes_from_client: t.from_client,
                bytes_to_client: t.to_client,
                duration_ms: t.opened.elapsed().as_millis() as u64,
            },
        });
        Some(AuditRecord {
            ts: phigate_audit::now_rfc3339(),
            request_id: self.info.request_id.clone(),
            decision: decision.outcome.as_str().to_string(),
            reason: decision.reason.as_str().to_string(),
            status,
            method: self.info.method.clone(),
            path: self.info.path.clone(),
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
            upstream_status: self.upstream_status,
            duration_ms: (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            remote_addr,
            policy_version: self.info.policy_version.clone(),
            patient: decision.patient.clone(),
            break_glass: decision.break_glass,
            justification: self.info.justification.clone(),
            shadow_decision: decision.shadow.map(|_| "deny".to_string()),
            user_agent: self.info.user_agent.clone(),
            tunnel,
            ..AuditRecord::default()
        })
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
