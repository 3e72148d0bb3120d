//! The stable `reason` vocabulary.
//!
//! One enum whose snake_case name is, at the same time, the audit record's
//! `reason`, the `reason` label of `phigate_requests_total` and the `error`
//! field of the JSON deny body. Renaming a variant is a breaking change for
//! dashboards and SIEM rules: add new variants instead.

use std::fmt;

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A token with the required scopes matched a route. (200)
    Allowed,
    /// The matched route is `public: true`; no token needed. (200)
    PublicRoute,
    /// Emergency access: the request would have been denied, the token carries the break-glass scope and a valid justification was given. (200)
    BreakGlass,
    /// The request target failed canonicalisation. (400)
    BadRequestPath,
    /// More than one `Authorization` header, or an unusable one. (400)
    MalformedAuthorization,
    /// A body phigate must inspect could not be read (client error, truncated). (400)
    BadRequestBody,
    /// A body phigate must inspect (FHIR batch/transaction) exceeds the inspection limit. (413)
    PayloadTooLarge,
    /// A request the HTTP layer refuses: malformed request line or headers,
    /// ambiguous framing (two `Content-Length`s, `Transfer-Encoding` with
    /// `Content-Length`), HTTP/1.1 without `Host`, `CONNECT`. (400)
    BadRequest,
    /// `X-HTTP-Method-Override` / `X-HTTP-Method` / `X-Method-Override` or a
    /// `_method` parameter: the backend could execute another method than
    /// the one authorised. (400)
    MethodOverride,
    /// A protocol upgrade (`Upgrade`, `Connection: upgrade`, `HTTP2-Settings`)
    /// on a route that does not opt in with `upgrade: websocket`. (400)
    UpgradeRefused,
    /// The client took too long to send the request head or an inspected body. (408)
    RequestTimeout,
    /// A body phigate must inspect has a media type it cannot read (a
    /// `POST _search` body that is not `application/x-www-form-urlencoded`). (415)
    UnsupportedMediaType,
    /// No bearer token. (401)
    MissingToken,
    /// Not a well-formed compact JWS (or a forbidden header such as `crit`). (401)
    MalformedToken,
    /// `alg` none, HS*, not allowed for the issuer, or not matching the key. (401)
    UnsupportedAlgorithm,
    /// `iss` is not a configured issuer. (401)
    UnknownIssuer,
    /// `kid` not in the issuer's key set (after the allowed refetch). (401)
    UnknownKey,
    /// Signature does not verify. (401)
    InvalidSignature,
    /// `exp` is past (beyond leeway). (401)
    TokenExpired,
    /// `nbf` or `iat` in the future (beyond leeway). (401)
    TokenNotYetValid,
    /// `aud` does not name this gateway. (401)
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is absent. (401)
    MissingClaim,
    /// The token's authentication is too weak or too old for the route (`require_acr`, `require_amr`, `max_auth_age`); RFC 9470. (401)
    StepUpRequired,
    /// The token lacks the scopes the route requires. (403)
    InsufficientScope,
    /// No route matches method + path (default deny). (403)
    NoMatchingRoute,
    /// A `patient/` scope used outside the token's patient compartment (or where it cannot be verified). (403)
    OutsidePatientCompartment,
    /// A claim condition (`when.claims`) does not hold. (403)
    ConditionFailed,
    /// The request falls outside the route's time window. (403)
    OutsideTimeWindow,
    /// A FHIR-aware route received a request that maps to no FHIR interaction phigate can authorise. (403)
    UnmappedInteraction,
    /// Break-glass was attempted but refused (a write, or an invalid justification). (403)
    BreakGlassRejected,
    /// Too many invalid tokens from this client address. (429)
    RateLimited,
    /// This client address already has `limits.max_in_flight_per_client`
    /// requests in flight (each holds an audit slot). (429)
    ConcurrencyLimited,
    /// The issuer's keys have never been fetched (or are too old to trust). (503)
    KeysUnavailable,
    /// The audit pipeline cannot take the record; PHI access is refused. (503)
    AuditUnavailable,
    /// Allowed, but the upstream could not be reached (connection refused,
    /// reset or closed before a response). (502)
    UpstreamUnreachable,
    /// Allowed, but the upstream did not connect or answer in time. (504)
    UpstreamTimeout,
    /// Allowed, but the upstream's answer is not valid HTTP (or a 101 to a
    /// request that was no upgrade). (502)
    UpstreamInvalidResponse,
    /// Allowed, the upstream started its response and broke off (reset or
    /// closed mid-body); the client got part of it. (status already sent)
    UpstreamIncomplete,
    /// Allowed, and the client went away before the response was complete.
    /// (nothing more sent)
    ClientAborted,
    /// Allowed, and phigate shut down (end of `shutdown_grace`, or SIGINT)
    /// while the request was in flight. (nothing more sent)
    AbortedShutdown,
    /// Allowed by the policy, but no configured upstream serves the path
    /// (no `upstreams[].prefix` matches). Refused. (404)
    NoUpstream,
    /// Allowed, but no address of the request's upstream is healthy (active
    /// health checks, or every address cooling down after connect failures). (503)
    UpstreamUnavailable,
}

impl Reason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: &'static [Reason] = &[
        Reason::Allowed,
        Reason::PublicRoute,
        Reason::BreakGlass,
        Reason::BadRequestPath,
        Reason::MalformedAuthorization,
        Reason::BadRequestBody,
        Reason::PayloadTooLarge,
        Reason::BadRequest,
        Reason::MethodOverride,
        Reason::UpgradeRefused,
        Reason::RequestTimeout,
        Reason::UnsupportedMediaType,
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::UnsupportedAlgorithm,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::InvalidSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::WrongAudience,
        Reason::MissingClaim,
        Reason::StepUpRequired,
        Reason::InsufficientScope,
        Reason::NoMatchingRoute,
        Reason::OutsidePatientCompartment,
        Reason::ConditionFailed,
        Reason::OutsideTimeWindow,
        Reason::UnmappedInteraction,
        Reason::BreakGlassRejected,
        Reason::RateLimited,
        Reason::ConcurrencyLimited,
        Reason::KeysUnavailable,
        Reason::AuditUnavailable,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTimeout,
        Reason::UpstreamInvalidResponse,
        Reason::UpstreamIncomplete,
        Reason::ClientAborted,
        Reason::AbortedShutdown,
        Reason::NoUpstream,
        Reason::UpstreamUnavailable,
    ];

    /// The snake_case name used in audit records, metric labels and deny bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::PublicRoute => "public_route",
            Reason::BreakGlass => "break_glass",
            Reason::BadRequestPath => "bad_request_path",
            Reason::MalformedAuthorization => "malformed_authorization",
            Reason::BadRequestBody => "bad_request_body",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::BadRequest => "bad_request",
            Reason::MethodOverride => "method_override",
            Reason::UpgradeRefused => "upgrade_refused",
            Reason::RequestTimeout => "request_timeout",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::InvalidSignature => "invalid_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::StepUpRequired => "step_up_required",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::NoMatchingRoute => "no_matching_route",
            Reason::OutsidePatientCompartment => "outside_patient_compartment",
            Reason::ConditionFailed => "condition_failed",
            Reason::OutsideTimeWindow => "outside_time_window",
            Reason::UnmappedInteraction => "unmapped_interaction",
            Reason::BreakGlassRejected => "break_glass_rejected",
            Reason::RateLimited => "rate_limited",
            Reason::ConcurrencyLimited => "concurrency_limited",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamInvalidResponse => "upstream_invalid_response",
            Reason::UpstreamIncomplete => "upstream_incomplete",
            Reason::ClientAborted => "client_aborted",
            Reason::AbortedShutdown => "aborted_shutdown",
            Reason::NoUpstream => "no_upstream",
            Reason::UpstreamUnavailable => "upstream_unavailable",
        }
    }

    /// Parse a snake_case name (policy tests, tooling).
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// True for the reasons that let a request through.
    pub const fn is_allow(self) -> bool {
        matches!(self, Reason::Allowed | Reason::PublicRoute | Reason::BreakGlass)
    }

    /// The HTTP status a denial with this reason is answered with
    /// (allowed requests carry the upstream's status instead).
    pub const fn deny_status(self) -> u16 {
        match self {
            Reason::Allowed | Reason::PublicRoute | Reason::BreakGlass => 200,
            Reason::BadRequestPath
            | Reason::MalformedAuthorization
            | Reason::BadRequestBody
            | Reason::BadRequest
            | Reason::MethodOverride
            | Reason::UpgradeRefused => 400,
            Reason::RequestTimeout => 408,
            Reason::PayloadTooLarge => 413,
            Reason::UnsupportedMediaType => 415,
            Reason::MissingToken
            | Reason::MalformedToken
            | Reason::UnsupportedAlgorithm
            | Reason::UnknownIssuer
            | Reason::UnknownKey
            | Reason::InvalidSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::WrongAudience
            | Reason::MissingClaim
            | Reason::StepUpRequired => 401,
            Reason::InsufficientScope
            | Reason::NoMatchingRoute
            | Reason::OutsidePatientCompartment
            | Reason::ConditionFailed
            | Reason::OutsideTimeWindow
            | Reason::UnmappedInteraction
            | Reason::BreakGlassRejected => 403,
            Reason::RateLimited | Reason::ConcurrencyLimited => 429,
            Reason::KeysUnavailable | Reason::AuditUnavailable | Reason::UpstreamUnavailable => 503,
            Reason::NoUpstream => 404,
            Reason::UpstreamUnreachable | Reason::UpstreamInvalidResponse => 502,
            Reason::UpstreamTimeout => 504,
            // The response had already begun, or nobody was left to answer:
            // the status of the record is what was sent, if anything.
            Reason::UpstreamIncomplete | Reason::ClientAborted | Reason::AbortedShutdown => 0,
        }
    }

    /// True for the reasons that describe an invalid bearer token (answered
    /// with `WWW-Authenticate: Bearer error="invalid_token"`).
    pub const fn is_invalid_token(self) -> bool {
        self.deny_status() == 401 && !matches!(self, Reason::MissingToken | Reason::StepUpRequired)
    }

    /// Denials that shadow mode (`report_only`) may turn into allows: what a
    /// policy decides about an authenticated-or-not caller. Request-shape and
    /// fail-closed infrastructure denials are never shadowed.
    pub const fn is_shadowable(self) -> bool {
        !self.is_allow() && matches!(self.deny_status(), 401 | 403)
    }

    /// Reasons that describe how an *allowed* request failed after the
    /// decision (the upstream, the client, a shutdown), not a denial.
    pub const fn is_failure_after_allow(self) -> bool {
        matches!(
            self,
            Reason::UpstreamUnreachable
                | Reason::UpstreamTimeout
                | Reason::UpstreamInvalidResponse
                | Reason::UpstreamIncomplete
                | Reason::ClientAborted
                | Reason::AbortedShutdown
                | Reason::UpstreamUnavailable
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s}");
            assert!(seen.insert(s), "duplicate {s}");
        }
    }

    #[test]
    fn only_allow_reasons_allow() {
        for r in Reason::ALL {
            assert_eq!(r.is_allow(), r.deny_status() == 200, "{r}");
        }
    }
}
