//! The audit record.

use serde::{Deserialize, Serialize};

/// One audit record: one per request, allowed or denied.
///
/// Never contains the token, a request or response body, or the query string.
/// Field names are a contract with SIEM rules: add fields, never rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub method: String,
    /// The canonical path (or the raw target, truncated, when it was rejected).
    pub path: String,
    /// The matched route's label, if a route matched.
    pub route: Option<String>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub iss: Option<String>,
    pub scopes_granted: Vec<String>,
    pub scopes_required: Vec<String>,
    /// The upstream's status for allowed requests that reached it.
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
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
}

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339_utc_millis() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
