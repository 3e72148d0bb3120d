//! The audit record, and the spool line types that carry it.
//!
//! The line format is a contract with the streaming sinks and with external
//! verifiers; it is described in `docs/audit.md` and by the JSON Schema
//! `docs/audit-record.schema.json` ([`record_schema`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `v` of every line this version writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One audit record of a request, allowed or denied.
///
/// A denial, and an allowed read that ends normally, have one record. An
/// allowed request with effects (`audit.intent`) has an `intent` record
/// written before it is forwarded and an `outcome` record when it ends; a
/// read whose response fails, and a WebSocket tunnel, get an `outcome`
/// record after their first. Fields without a value are left out (readers
/// treat a missing field as null/empty).
///
/// Never contains the token (an `access_token` query parameter is
/// `[removed]`), a request or response body. Field names are a contract with
/// SIEM rules: add fields, never rename.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    /// When the decision was made, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Request id (the caller's `X-Request-Id` if well-formed, else generated).
    pub request_id: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The stable reason vocabulary (`allowed`, `missing_token`, ...).
    pub reason: String,
    /// HTTP status sent to the client.
    pub status: u16,
    /// HTTP method.
    pub method: String,
    /// The canonical path (or the raw target, truncated, when it was rejected).
    pub path: String,
    /// The request's query string as received, without the `?` (at most
    /// 2048 bytes; see `truncated`). The value of an `access_token`
    /// parameter (RFC 6750 §2.3) is replaced by `[removed]`. Absent when the
    /// request had none, and in records written before this field existed
    /// (`phigate policy replay` then cannot rebuild the request exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The matched route's label, if a route matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The validated token's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The validated token's `client_id` (else `azp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The validated token's issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_granted: Vec<String>,
    /// The claims of the validated token the policy used for this decision
    /// (never the token itself): `roles` (always, from the issuer's roles
    /// claim, possibly empty), `acr`, `amr`, `auth_time`, `patient`, and
    /// every claim a route condition reads, keyed by its dotted path
    /// (`realm_access.roles`). Claims the token lacks are left out. At most
    /// 4 KiB serialised: a claim beyond that is left out and noted in
    /// `truncated` as `claims.<name>`. Absent without a validated token.
    #[serde(default, skip_serializing_if = "no_claims")]
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
    /// The scopes that would satisfy the request: the route's scopes, or for
    /// FHIR-aware routes every SMART form that would (`patient/`, `user/`,
    /// `system/`, v2 and v1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_required: Vec<String>,
    /// The granted scopes that did satisfy an allowed request (absent for
    /// denials and public routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope_used: Vec<String>,
    /// The upstream's status for allowed requests that reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Request duration in milliseconds.
    pub duration_ms: f64,
    /// The client's socket address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// Hash of the policy that made the decision.
    pub policy_version: String,
    /// The patient this access concerns, when known (token `patient` claim,
    /// or the Patient id / single patient reference of the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Emergency (break-glass) access was used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The break-glass justification (when one was presented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Shadow mode: `deny` when a `report_only` rule would have denied this
    /// allowed request (`reason` holds the would-be denial's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<String>,
    /// The client's `User-Agent` (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// An opted-in protocol upgrade (WebSocket): one record when the tunnel
    /// opens (`phase: open`, status 101) and one when it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
    /// `intent`: written before an allowed request with effects was
    /// forwarded (its outcome follows); `outcome`: completes an earlier
    /// record of the same request (`completes`). Absent: the request's first
    /// and, so far, only record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// For `phase: outcome`: the `event_id` of the record it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completes: Option<String>,
    /// For `phase: outcome`: whether the response reached the client whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    /// For `phase: outcome`: response body bytes delivered to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_to_client: Option<u64>,
    /// For `phase: outcome`: request body bytes forwarded to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_from_client: Option<u64>,
    /// The client certificate verified on the connection (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCert>,
    /// `HTTP/1.1`, `HTTP/2`, … as the client spoke it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<String>,
    /// The TLS version of the client connection (`TLSv1_3`), absent for plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// The name of the upstream the request was (or would have been) sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The upstream address of the last attempt (`ip:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<String>,
    /// Connection attempts to the upstream (more than 1: retried on another
    /// address after a connect failure; idempotent methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_attempts: Option<u32>,
    /// Client-controlled fields that were cut to their bound
    /// ([`AuditRecord::enforce_bounds`]): field name → original length and
    /// SHA-256, so a reviewer can match the full value seen elsewhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub truncated: BTreeMap<String, Truncation>,
}

/// A verified client certificate (see [`AuditRecord::client_cert`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ClientCert {
    /// The certificate's subject, e.g. `CN=app-7,O=Example`.
    pub subject: String,
    /// SHA-256 of the certificate (DER), base64url without padding: RFC 8705 `x5t#S256`.
    pub sha256: String,
}

/// Which record of a request this is (see [`AuditRecord::phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before an allowed request with effects was forwarded.
    Intent,
    /// How a request that already has a record ended.
    Outcome,
}

/// The phase and traffic of a WebSocket tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tunnel {
    /// `open` (the backend answered 101) or `close`.
    pub phase: TunnelPhase,
    /// Bytes the client sent through the tunnel (0 at open).
    pub bytes_from_client: u64,
    /// Bytes the backend sent through the tunnel (0 at open).
    pub bytes_to_client: u64,
    /// How long the tunnel was open, milliseconds (0 at open).
    pub duration_ms: u64,
}

/// See [`Tunnel::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TunnelPhase {
    Open,
    Close,
}

/// How a field was cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Truncation {
    /// The original length in bytes (UTF-8).
    pub length: usize,
    /// Lowercase hex SHA-256 of the original value.
    pub sha256: String,
}

/// Bounds of the client-controlled fields of a record, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;
/// See [`MAX_PATH_BYTES`].
pub const MAX_METHOD_BYTES: usize = 32;
/// See [`MAX_PATH_BYTES`].
pub const MAX_USER_AGENT_BYTES: usize = 256;
/// See [`MAX_PATH_BYTES`] (the policy caps justifications at 4096 characters).
pub const MAX_JUSTIFICATION_BYTES: usize = 2048;
/// Bound of a client certificate subject in a record.
pub const MAX_CERT_SUBJECT_BYTES: usize = 1024;
/// See [`MAX_PATH_BYTES`].
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Bound of `query`, in bytes.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Bound of `claims` (the serialised `name:value` pairs together), in bytes.
pub const MAX_CLAIMS_BYTES: usize = 4096;

fn no_claims(c: &Option<BTreeMap<String, serde_json::Value>>) -> bool {
    c.as_ref().is_none_or(BTreeMap::is_empty)
}

impl AuditRecord {
    /// Cut every client-controlled field to its bound (path, query, method,
    /// user agent, justification, request id; on a UTF-8 character
    /// boundary) and note each cut in `truncated`, so no request can make a
    /// record large enough to fill the spool: anyone can send a 64 KiB path
    /// without a token. Claims beyond [`MAX_CLAIMS_BYTES`] are left out
    /// (noted as `claims.<name>`). Replaces the value of an `access_token`
    /// query parameter (in `query`, or in a refused raw target in `path`)
    /// with `[removed]` first, so a token sent in the URI never reaches the
    /// spool. Applied by [`crate::Slot::commit`] to every record.
    pub fn enforce_bounds(&mut self) {
        if let Some(q) = &mut self.query {
            if let Some(clean) = without_access_token(q) {
                *q = clean;
            }
        }
        if let Some((p, q)) = self.path.split_once('?') {
            if let Some(clean) = without_access_token(q) {
                self.path = format!("{p}?{clean}");
            }
        }
        let t = &mut self.truncated;
        cut("path", &mut self.path, MAX_PATH_BYTES, t);
        if let Some(q) = &mut self.query {
            cut("query", q, MAX_QUERY_BYTES, t);
        }
        if let Some(c) = &mut self.claims {
            bound_claims(c, t);
        }
        cut("method", &mut self.method, MAX_METHOD_BYTES, t);
        cut("request_id", &mut self.request_id, MAX_REQUEST_ID_BYTES, t);
        if let Some(ua) = &mut self.user_agent {
            cut("user_agent", ua, MAX_USER_AGENT_BYTES, t);
        }
        if let Some(j) = &mut self.justification {
            cut("justification", j, MAX_JUSTIFICATION_BYTES, t);
        }
        if let Some(c) = &mut self.client_cert {
            cut("client_cert.subject", &mut c.subject, MAX_CERT_SUBJECT_BYTES, t);
        }
    }
}

/// What happened to an access, as one word (the `outcome` of `access` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed, and the upstream answered below 400.
    Success,
    /// Denied by phigate (any `deny` decision, whatever its status).
    Denied,
    /// Allowed, and the upstream answered 4xx.
    ClientError,
    /// Allowed, and the upstream answered 5xx, could not be reached, timed
    /// out, answered something that is not HTTP, or failed mid-response.
    UpstreamError,
    /// An `intent` record: forwarded, the outcome follows in another record.
    Pending,
    /// The client went away before the response was complete.
    ClientAborted,
    /// phigate shut down while the request was in flight.
    AbortedShutdown,
}

impl Outcome {
    /// The outcome of a record, from its `phase`, `decision`, `reason`,
    /// `complete` and `upstream_status`.
    pub fn of(record: &AuditRecord) -> Outcome {
        if record.decision != "allow" {
            return Outcome::Denied;
        }
        if record.phase == Some(Phase::Intent) {
            return Outcome::Pending;
        }
        match record.reason.as_str() {
            "client_aborted" => return Outcome::ClientAborted,
            "aborted_shutdown" => return Outcome::AbortedShutdown,
            // Allowed, then the client's own request failed (a malformed or
            // reset HTTP/2 stream, a body or head too slow): not the upstream.
            "bad_request" | "request_timeout" => return Outcome::ClientError,
            _ => {}
        }
        if record.complete == Some(false) {
            return Outcome::UpstreamError;
        }
        match record.upstream_status {
            None => Outcome::UpstreamError,
            Some(s) if s >= 500 => Outcome::UpstreamError,
            Some(s) if s >= 400 => Outcome::ClientError,
            Some(_) => Outcome::Success,
        }
    }

    /// The snake_case name written to the spool.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Pending => "pending",
            Outcome::ClientAborted => "client_aborted",
            Outcome::AbortedShutdown => "aborted_shutdown",
        }
    }
}

/// One line of a spool segment: the chain header plus one record body.
///
/// Every line is one JSON object terminated by a newline. `hash` =
/// hex(SHA-256(`prev_hash` as ASCII ‖ canonical JSON of the line without
/// `hash`: keys sorted at every level, compact)); see `docs/audit.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "phigate audit spool record (v1)")]
pub struct SpoolRecord {
    /// Schema version: 1.
    #[schemars(range(min = 1, max = 1))]
    pub v: u32,
    /// Position in the spool: 1 for the first record, +1 per line, across
    /// segments and for every kind.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Unique id (UUIDv7) for de-duplication by receivers.
    pub event_id: String,
    /// The previous line's `hash` (64 zeros for seq 1).
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub prev_hash: String,
    /// This line's hash: 64 lowercase hex characters.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub hash: String,
    #[serde(flatten)]
    pub body: RecordBody,
}

/// What a line records, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // nearly every line is an access record: boxing it would only add an allocation
pub enum RecordBody {
    /// One request, allowed or denied.
    Access(AccessRecord),
    /// Crash recovery cut a torn tail off a segment on start.
    Recovery(RecoveryRecord),
    /// A signature over the chain so far.
    Checkpoint(CheckpointRecord),
    /// A session ended: an OpenID Connect Back-Channel Logout token or a
    /// security officer's revocation, accepted or refused.
    Logout(LogoutRecord),
}

/// The body of an `access` line: the [`AuditRecord`] fields plus `outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessRecord {
    #[serde(flatten)]
    pub record: AuditRecord,
    /// `success`, `denied`, `client_error` (upstream 4xx) or
    /// `upstream_error` (upstream 5xx or unreachable).
    pub outcome: Outcome,
}

/// The body of a `recovery` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecoveryRecord {
    /// When the recovery ran (RFC 3339 UTC, milliseconds).
    pub ts: String,
    /// The segment file name whose tail was cut.
    pub segment: String,
    /// The byte offset the segment was truncated to (its new length).
    pub truncated_from: u64,
    /// The segment's length before truncation: bytes
    /// `truncated_from..truncated_to` were removed.
    pub truncated_to: u64,
    /// Why (`torn last line`).
    pub reason: String,
}

/// The body of a `checkpoint` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointRecord {
    /// When the checkpoint was written (RFC 3339 UTC, milliseconds).
    pub ts: String,
    /// The seq of the record this checkpoint signs (always `seq - 1`).
    pub covers_seq: u64,
    /// That record's hash (always equal to this line's `prev_hash`).
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub covers_hash: String,
    /// Which key signed: the first 16 hex digits of SHA-256 of the raw
    /// 32-byte Ed25519 public key.
    pub key_id: String,
    /// base64url (no padding) Ed25519 signature over the ASCII bytes of
    /// `covers_hash`.
    pub signature: String,
}

/// The body of a `logout` line: one OpenID Connect Back-Channel Logout
/// request or one security officer's revocation, accepted or refused, with
/// what was (or would have been) logged out.
///
/// Never contains a token (the logout token included): `jti` identifies it.
/// `issuer`, `sid`, `sub` and `jti` of a refused logout token were not
/// verified — they are what the sender claimed. Every string a caller
/// controls is bounded when the record is committed
/// ([`LogoutRecord::enforce_bounds`]). Fields without a value are left out.
/// Field names are a contract with SIEM rules: add fields, never rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogoutRecord {
    /// When the logout was decided, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Request id (the caller's `X-Request-Id` if well-formed, else generated).
    pub request_id: String,
    /// `backchannel` (a logout token from an identity provider) or `admin`
    /// (a revocation asked for by a security officer).
    pub source: LogoutSource,
    /// `allow`: the logout was carried out; `deny`: it was refused.
    pub decision: LogoutDecision,
    /// The stable reason vocabulary (`logged_out`, `revoked`,
    /// `logout_token_bad_signature`, `session_store_unavailable`, ...).
    pub reason: String,
    /// HTTP status answered.
    pub status: u16,
    /// The logout token's `iss` (unverified when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The session id (`sid`) logged out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The subject (`sub`) logged out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The logout token's `jti` (replay detection), never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// `admin`: who asked for the revocation (free text from the command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Detail for operators (e.g. why a token was refused; how many sessions ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields that were cut to their bound ([`LogoutRecord::enforce_bounds`]):
    /// field name → original length and SHA-256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub truncated: BTreeMap<String, Truncation>,
}

/// Where a logout came from (see [`LogoutRecord::source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogoutSource {
    /// An OpenID Connect Back-Channel Logout token POSTed by an identity provider.
    Backchannel,
    /// A revocation asked for by a security officer (`phigate` admin command).
    Admin,
}

/// Whether a logout was carried out (see [`LogoutRecord::decision`]). Written
/// as `allow`/`deny`, the words of an access record's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogoutDecision {
    /// Accepted: the sessions are logged out (or revoked).
    Allow,
    /// Refused: nothing was logged out.
    Deny,
}

impl LogoutDecision {
    /// `allow` or `deny`, as written to the spool.
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutDecision::Allow => "allow",
            LogoutDecision::Deny => "deny",
        }
    }
}

impl From<phigate_policy::Outcome> for LogoutDecision {
    fn from(o: phigate_policy::Outcome) -> Self {
        match o {
            phigate_policy::Outcome::Allow => LogoutDecision::Allow,
            phigate_policy::Outcome::Deny => LogoutDecision::Deny,
        }
    }
}

/// Bound of `issuer`, `sid`, `sub` and `jti` in a `logout` record.
pub const MAX_LOGOUT_CLAIM_BYTES: usize = 512;
/// Bound of `reason` in a `logout` record.
pub const MAX_REASON_BYTES: usize = 64;
/// Bound of `client_ip` in a `logout` record.
pub const MAX_CLIENT_IP_BYTES: usize = 64;
/// Bound of `actor` in a `logout` record.
pub const MAX_ACTOR_BYTES: usize = 256;
/// Bound of `detail` in a `logout` record.
pub const MAX_DETAIL_BYTES: usize = 1024;

impl LogoutRecord {
    /// A record made now (`ts`), without the optional fields.
    pub fn new(
        request_id: impl Into<String>,
        source: LogoutSource,
        decision: LogoutDecision,
        reason: impl Into<String>,
        status: u16,
    ) -> LogoutRecord {
        LogoutRecord {
            ts: now_rfc3339(),
            request_id: request_id.into(),
            source,
            decision,
            reason: reason.into(),
            status,
            issuer: None,
            sid: None,
            sub: None,
            jti: None,
            client_ip: None,
            actor: None,
            detail: None,
            truncated: BTreeMap::new(),
        }
    }

    /// Cut every string a caller controls to its bound (on a UTF-8
    /// character boundary) and note each cut in `truncated`: a refused
    /// logout token's claims come from whoever sent it, unauthenticated.
    /// Also replaces anything shaped like a JWT in the free-text `actor`
    /// and `detail` with `[token removed]`, so an error message that quotes
    /// a token cannot put it in the spool. Applied by
    /// [`crate::Slot::commit_logout`] to every record.
    pub fn enforce_bounds(&mut self) {
        for text in [&mut self.actor, &mut self.detail].into_iter().flatten() {
            if let Some(clean) = without_jwts(text) {
                *text = clean;
            }
        }
        let t = &mut self.truncated;
        cut("request_id", &mut self.request_id, MAX_REQUEST_ID_BYTES, t);
        cut("reason", &mut self.reason, MAX_REASON_BYTES, t);
        for (field, value, max) in [
            ("issuer", &mut self.issuer, MAX_LOGOUT_CLAIM_BYTES),
            ("sid", &mut self.sid, MAX_LOGOUT_CLAIM_BYTES),
            ("sub", &mut self.sub, MAX_LOGOUT_CLAIM_BYTES),
            ("jti", &mut self.jti, MAX_LOGOUT_CLAIM_BYTES),
            ("client_ip", &mut self.client_ip, MAX_CLIENT_IP_BYTES),
            ("actor", &mut self.actor, MAX_ACTOR_BYTES),
            ("detail", &mut self.detail, MAX_DETAIL_BYTES),
        ] {
            if let Some(v) = value {
                cut(field, v, max, t);
            }
        }
    }
}

/// The value RFC 6750 §2.3 `access_token` query parameters are recorded with.
pub const REMOVED: &str = "[removed]";

/// `query` with the value of every `access_token` parameter (`&`- or
/// `;`-separated, the name compared after percent-decoding, any case)
/// replaced by [`REMOVED`]; `None` when there is none (no allocation).
pub fn without_access_token(query: &str) -> Option<String> {
    const NAME: &[u8] = b"access_token";
    let is_token_name = |name: &str| {
        if name.len() == NAME.len() {
            return name.as_bytes().eq_ignore_ascii_case(NAME);
        }
        // Percent-encoded (`access%5Ftoken`): decode only what could be it.
        if !name.contains('%') || name.len() > NAME.len() * 3 {
            return false;
        }
        let b = name.as_bytes();
        let mut decoded = Vec::with_capacity(NAME.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            match (
                b[i],
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    decoded.push(h * 16 + l);
                    i += 3;
                }
                (c, _, _) => {
                    decoded.push(c);
                    i += 1;
                }
            }
        }
        decoded.eq_ignore_ascii_case(NAME)
    };
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut start = 0;
    for piece in query.split(['&', ';']) {
        let end = start + piece.len();
        if let Some((name, value)) = piece.split_once('=') {
            if is_token_name(name) && value != REMOVED {
                let o = out.get_or_insert_with(|| String::with_capacity(query.len()));
                o.push_str(&query[copied..start]);
                o.push_str(name);
                o.push('=');
                o.push_str(REMOVED);
                copied = end;
            }
        }
        start = end + 1;
    }
    let mut o = out?;
    o.push_str(&query[copied..]);
    Some(o)
}

/// Leave out the claims beyond [`MAX_CLAIMS_BYTES`] (in name order, each
/// entry counted as its serialised `"name":value`), noting each in
/// `truncated` as `claims.<name>` with the length and SHA-256 of its
/// serialised value. Counting writes nothing: no allocation unless a claim
/// is cut.
fn bound_claims(
    claims: &mut BTreeMap<String, serde_json::Value>,
    truncated: &mut BTreeMap<String, Truncation>,
) {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn size<T: Serialize + ?Sized>(v: &T) -> usize {
        let mut c = Count(0);
        let _ = serde_json::to_writer(&mut c, v);
        c.0
    }
    // `{` and `}`, less the comma the last entry does not have.
    let mut total = 1usize;
    let mut over: Vec<String> = Vec::new();
    for (k, v) in claims.iter() {
        // `"name":value,`
        let n = size(k.as_str()) + 2 + size(v);
        if total + n > MAX_CLAIMS_BYTES {
            over.push(k.clone());
        } else {
            total += n;
        }
    }
    for k in over {
        if let Some(v) = claims.remove(&k) {
            use sha2::{Digest, Sha256};
            let text = serde_json::to_string(&v).unwrap_or_default();
            truncated.insert(
                format!("claims.{k}"),
                Truncation {
                    length: text.len(),
                    sha256: hex::encode(Sha256::digest(text.as_bytes())),
                },
            );
        }
    }
}

/// `text` with every JWT-shaped run (`eyJ…` + two more base64url parts
/// joined by `.`, as a compact JWS or JWE begins) replaced by
/// `[token removed]`; `None` when there is none.
fn without_jwts(text: &str) -> Option<String> {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = text[i..].find("eyJ") {
        let start = i + found;
        // A run of base64url parts separated by dots, from `start`.
        let mut end = start;
        let mut parts = 1;
        while end < bytes.len() && (is_b64(bytes[end]) || bytes[end] == b'.') {
            if bytes[end] == b'.' {
                parts += 1;
            }
            end += 1;
        }
        let preceded = start > 0 && is_b64(bytes[start - 1]);
        if parts >= 3 && !preceded {
            let o = out.get_or_insert_with(String::new);
            o.push_str(&text[copied..start]);
            o.push_str("[token removed]");
            copied = end;
        }
        i = end.max(start + 3);
    }
    let mut o = out?;
    o.push_str(&text[copied..]);
    Some(o)
}

/// Cut `value` to `max` bytes (on a character boundary), noting the
/// original length and SHA-256 under `field` in `truncated`.
fn cut(field: &str, value: &mut String, max: usize, truncated: &mut BTreeMap<String, Truncation>) {
    if value.len() <= max {
        return;
    }
    use sha2::{Digest, Sha256};
    truncated.insert(
        field.to_string(),
        Truncation {
            length: value.len(),
            sha256: hex::encode(Sha256::digest(value.as_bytes())),
        },
    );
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.truncate(end);
}

/// The JSON Schema of a spool line (committed as
/// `docs/audit-record.schema.json`).
pub fn record_schema() -> String {
    let schema = schemars::schema_for!(SpoolRecord);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    rfc3339_millis(time::OffsetDateTime::now_utc())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), written by hand: every record carries
/// one, and the general formatter was a measurable part of sealing one.
fn rfc3339_millis(t: time::OffsetDateTime) -> String {
    use std::fmt::Write as _;
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit-record.schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == record_schema(),
            "docs/audit-record.schema.json is out of date: run `cargo run -p phigate -- audit schema --write docs`"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_milliseconds() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        for unix_ms in [0i64, 1_764_466_800_123, 253_402_300_799_999, 951_782_400_007] {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap();
            assert_eq!(rfc3339_millis(t), t.format(&fmt).unwrap(), "{unix_ms}");
        }
        let t = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+5:30));
        assert!(rfc3339_millis(t).ends_with('Z'));
        assert_eq!(now_rfc3339().len(), 24);
    }

    #[test]
    fn outcome_follows_decision_and_upstream_status() {
        let mut r = crate::testing::access(1);
        for (decision, upstream, want) in [
            ("deny", None, Outcome::Denied),
            ("deny", Some(200), Outcome::Denied),
            ("allow", Some(200), Outcome::Success),
            ("allow", Some(304), Outcome::Success),
            ("allow", Some(404), Outcome::ClientError),
            ("allow", Some(502), Outcome::UpstreamError),
            ("allow", None, Outcome::UpstreamError),
        ] {
            r.decision = decision.into();
            r.upstream_status = upstream;
            assert_eq!(Outcome::of(&r), want, "{decision} {upstream:?}");
        }
        assert_eq!(
            serde_json::to_string(&Outcome::ClientError).unwrap(),
            "\"client_error\""
        );
        r.decision = "allow".into();
        r.upstream_status = Some(200);
        r.phase = Some(Phase::Intent);
        assert_eq!(Outcome::of(&r), Outcome::Pending);
        r.phase = Some(Phase::Outcome);
        r.complete = Some(false);
        assert_eq!(
            Outcome::of(&r),
            Outcome::UpstreamError,
            "a cut-off body is not a success"
        );
        r.reason = "bad_request".into();
        assert_eq!(
            Outcome::of(&r),
            Outcome::ClientError,
            "the client's request failed"
        );
        r.reason = "request_timeout".into();
        assert_eq!(Outcome::of(&r), Outcome::ClientError);
        r.reason = "client_aborted".into();
        assert_eq!(Outcome::of(&r), Outcome::ClientAborted);
        r.reason = "aborted_shutdown".into();
        assert_eq!(Outcome::of(&r), Outcome::AbortedShutdown);
    }

    #[test]
    fn client_controlled_fields_are_bounded_with_length_and_hash() {
        let mut r = crate::testing::access(1);
        let long = format!("/fhir/{}", "é".repeat(40_000));
        r.path = long.clone();
        r.user_agent = Some("u".repeat(300));
        r.justification = Some("j".repeat(10));
        r.enforce_bounds();
        assert!(r.path.len() <= MAX_PATH_BYTES && long.starts_with(&r.path));
        assert_eq!(r.user_agent.as_ref().map(String::len), Some(MAX_USER_AGENT_BYTES));
        assert_eq!(r.justification.as_deref(), Some("jjjjjjjjjj"));
        let t = &r.truncated["path"];
        assert_eq!(t.length, long.len());
        use sha2::Digest;
        assert_eq!(t.sha256, hex::encode(sha2::Sha256::digest(long.as_bytes())));
        assert!(r.truncated.contains_key("user_agent"));
        assert!(!r.truncated.contains_key("justification"));
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.len() < 4096, "{} bytes", line.len());
    }

    #[test]
    fn access_tokens_in_the_query_are_removed() {
        for (query, want) in [
            ("a=1&b=2", None),
            ("access_token=eyJ.x.y", Some("access_token=[removed]")),
            (
                "_id=1&access_token=abc;ACCESS_TOKEN=def&x=access_token",
                Some("_id=1&access_token=[removed];ACCESS_TOKEN=[removed]&x=access_token"),
            ),
            ("access%5Ftoken=abc&y=1", Some("access%5Ftoken=[removed]&y=1")),
            ("access%5ftoken", None),
            ("access_tokens=abc&my_access_token=1", None),
            ("access_token=[removed]", None),
            ("", None),
        ] {
            assert_eq!(without_access_token(query).as_deref(), want, "{query}");
        }
        let mut r = crate::testing::access(1);
        r.query = Some(format!("access_token=secret{}", "x".repeat(3000)));
        r.path = "/fhir/Patient?access_token=secret&_id=1".into();
        r.enforce_bounds();
        assert_eq!(r.query.as_deref(), Some("access_token=[removed]"));
        assert_eq!(r.path, "/fhir/Patient?access_token=[removed]&_id=1");
        assert!(!serde_json::to_string(&r).unwrap().contains("secret"));
    }

    #[test]
    fn query_and_claims_are_bounded() {
        let mut r = crate::testing::access(1);
        let long = format!("name={}", "é".repeat(2_000));
        r.query = Some(long.clone());
        let big_groups: Vec<String> = (0..400).map(|i| format!("group-{i:04}")).collect();
        let claims = BTreeMap::from([
            ("acr".to_string(), serde_json::json!("loa3")),
            ("groups".to_string(), serde_json::json!(big_groups)),
            ("roles".to_string(), serde_json::json!(["nurse"])),
        ]);
        r.claims = Some(claims.clone());
        r.enforce_bounds();
        let q = r.query.as_deref().unwrap();
        assert!(q.len() <= MAX_QUERY_BYTES && long.starts_with(q));
        assert_eq!(r.truncated["query"].length, long.len());
        let kept = r.claims.as_ref().unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["acr", "roles"]);
        let t = &r.truncated["claims.groups"];
        let text = serde_json::to_string(&claims["groups"]).unwrap();
        assert_eq!(t.length, text.len());
        use sha2::Digest;
        assert_eq!(t.sha256, hex::encode(sha2::Sha256::digest(text.as_bytes())));
        // Within bounds: untouched; no claims and no query: not written.
        let mut small = crate::testing::access(2);
        small.query = Some("_count=10".into());
        small.claims = Some(BTreeMap::from([("roles".to_string(), serde_json::json!([]))]));
        let before = small.clone();
        small.enforce_bounds();
        assert_eq!(small, before);
        let v = serde_json::to_value(&small).unwrap();
        assert_eq!(v["query"], "_count=10");
        assert_eq!(v["claims"], serde_json::json!({"roles": []}));
        small.claims = Some(BTreeMap::new());
        small.query = None;
        let v = serde_json::to_value(&small).unwrap();
        assert!(v.get("claims").is_none() && v.get("query").is_none());
        let back: AuditRecord = serde_json::from_value(v).unwrap();
        assert_eq!((back.claims, back.query), (None, None));
    }

    #[test]
    fn a_record_with_every_field_at_its_bound_stays_under_16_kib() {
        let mut r = crate::testing::access(1);
        r.path = "p".repeat(100_000);
        r.query = Some("q".repeat(100_000));
        r.method = "M".repeat(100);
        r.request_id = "r".repeat(1_000);
        r.user_agent = Some("u".repeat(1_000));
        r.justification = Some("j".repeat(10_000));
        r.client_cert = Some(ClientCert {
            subject: "s".repeat(10_000),
            sha256: "x".repeat(43),
        });
        r.claims = Some(
            (0..10)
                .map(|i| (format!("claim_{i:03}"), serde_json::json!("v".repeat(600))))
                .collect(),
        );
        r.enforce_bounds();
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.len() < 16 * 1024, "{} bytes", line.len());
        assert!(serde_json::to_string(&r.claims).unwrap().len() <= MAX_CLAIMS_BYTES);
    }

    #[test]
    fn logout_fields_are_bounded_and_tokens_removed_from_free_text() {
        let mut l = crate::testing::logout(1);
        let long_sid = "é".repeat(1_000);
        l.sid = Some(long_sid.clone());
        l.client_ip = Some("1".repeat(100));
        l.actor = Some(format!("officer {}", "a".repeat(500)));
        l.reason = "r".repeat(100);
        l.request_id = "q".repeat(200);
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcCJ9.MEUCIQ-_x";
        l.detail = Some(format!("{jwt} and ({jwt}) but not xeyJa.b.c nor eyJonly.two"));
        l.enforce_bounds();
        let sid = l.sid.as_deref().unwrap();
        assert!(sid.len() <= MAX_LOGOUT_CLAIM_BYTES && long_sid.starts_with(sid));
        assert_eq!(l.client_ip.as_ref().map(String::len), Some(MAX_CLIENT_IP_BYTES));
        assert_eq!(l.actor.as_ref().map(String::len), Some(MAX_ACTOR_BYTES));
        assert_eq!(l.reason.len(), MAX_REASON_BYTES);
        assert_eq!(l.request_id.len(), MAX_REQUEST_ID_BYTES);
        assert_eq!(
            l.detail.as_deref(),
            Some("[token removed] and ([token removed]) but not xeyJa.b.c nor eyJonly.two")
        );
        let keys: Vec<&str> = l.truncated.keys().map(String::as_str).collect();
        assert_eq!(keys, ["actor", "client_ip", "reason", "request_id", "sid"]);
        use sha2::Digest;
        assert_eq!(l.truncated["sid"].length, long_sid.len());
        assert_eq!(
            l.truncated["sid"].sha256,
            hex::encode(sha2::Sha256::digest(long_sid.as_bytes()))
        );
        // Within bounds and without tokens: untouched.
        let mut ok = crate::testing::logout(0);
        let before = ok.clone();
        ok.enforce_bounds();
        assert_eq!(ok, before);
    }

    #[test]
    fn logout_lines_leave_out_empty_fields_and_read_back() {
        let mut l = LogoutRecord::new("r1", LogoutSource::Admin, LogoutDecision::Allow, "revoked", 200);
        l.sub = Some("alice".into());
        l.actor = Some("K. Jones".into());
        let body = RecordBody::Logout(l.clone());
        let v = serde_json::to_value(&body).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "actor",
                "decision",
                "kind",
                "reason",
                "request_id",
                "source",
                "status",
                "sub",
                "ts"
            ]
        );
        assert_eq!(v["kind"], "logout");
        assert_eq!(v["source"], "admin");
        assert_eq!(v["decision"], "allow");
        assert_eq!(serde_json::from_value::<RecordBody>(v).unwrap(), body);
        assert_eq!(LogoutDecision::Deny.as_str(), "deny");
        assert_eq!(
            LogoutDecision::from(phigate_policy::Outcome::Deny),
            LogoutDecision::Deny
        );
        let schema = record_schema();
        assert!(schema.contains("\"logout\"") && schema.contains("backchannel"));
    }

    #[test]
    fn timestamp_is_rfc3339_utc_millis() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
