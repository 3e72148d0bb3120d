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
    /// The session (`sid`, else issuer + subject + client) was idle longer than `sessions.idle_timeout` (or the route's `idle_timeout`): automatic log-off. Tokens issued before that moment stay refused. (401)
    SessionIdleTimeout,
    /// The session or subject was logged out (back-channel logout) or revoked (`phigate sessions revoke`) after this token was issued. (401)
    SessionRevoked,
    /// The shared session store (NATS JetStream KV) cannot be reached and the local view may not be trusted (an unknown session, a DPoP `jti`, beyond `sessions.stale_grace`). (503)
    SessionStoreUnavailable,
    /// `exp - iat` exceeds the issuer's `max_token_lifetime` (or `iat` is absent while one is set). (401)
    TokenLifetimeExceeded,
    /// The issuer's introspection endpoint (RFC 7662) says the opaque token is not active. (401)
    TokenInactive,
    /// The issuer's introspection endpoint failed (down, timeout, non-200, unreadable answer). (503)
    IntrospectionUnavailable,
    /// The token is bound to a client certificate (`cnf.x5t#S256`, RFC 8705) other than the one presented on this connection, or none was presented. (401)
    CertificateBindingMismatch,
    /// The issuer or route requires DPoP (`require_dpop`) and the request is not DPoP-bound. (401)
    DpopRequired,
    /// A DPoP-bound token (`cnf.jkt`) presented with the `Bearer` scheme. (401)
    DpopBoundTokenAsBearer,
    /// `Authorization: DPoP` without exactly one `DPoP` proof header. (401)
    DpopProofMissing,
    /// The DPoP proof is not a well-formed compact JWS with JSON header and claims. (401)
    DpopProofMalformed,
    /// The DPoP proof has no usable `jti`. (401)
    DpopProofMissingJti,
    /// The DPoP proof's `typ` is not `dpop+jwt`. (401)
    DpopProofWrongTyp,
    /// The DPoP proof's `alg` is symmetric, `none` or not in `dpop.algorithms`. (401)
    DpopProofBadAlg,
    /// The DPoP proof's `jwk` is missing, holds private key members, or does not fit `alg`. (401)
    DpopProofBadJwk,
    /// The DPoP proof's signature does not verify with its `jwk`. (401)
    DpopProofBadSignature,
    /// The DPoP proof's `htm` is not the request method. (401)
    DpopProofHtmMismatch,
    /// The DPoP proof's `htu` is not the URI the client addressed (`dpop.public_base_url` + path). (401)
    DpopProofHtuMismatch,
    /// The DPoP proof's `iat` is older than `dpop.max_age` or in the future. (401)
    DpopProofIatOutOfWindow,
    /// The DPoP proof's `ath` is missing or is not the hash of the access token. (401)
    DpopProofAthMismatch,
    /// The DPoP proof's `jti` was already used (on any replica) within its window. (401)
    DpopProofReplayed,
    /// The DPoP proof key's thumbprint is not the token's `cnf.jkt`. (401)
    DpopKeyMismatch,
    /// `dpop.nonce` is on and the proof carries no valid, fresh server nonce (`use_dpop_nonce`; a new one is in `DPoP-Nonce`). (401)
    DpopNonceRequired,
    /// A back-channel logout token was accepted; its sessions are ended on every replica. (200, audit kind `logout`)
    LoggedOut,
    /// A security officer revoked sessions (`phigate sessions revoke`). (200, audit kind `logout`)
    Revoked,
    /// The logout token is not a well-formed signed JWT, or the request carries no single `logout_token`. (400)
    LogoutTokenMalformed,
    /// The logout token's `iss` is not a configured issuer. (400)
    LogoutTokenUnknownIssuer,
    /// The logout token's signature does not verify with the issuer's keys (or its `alg` is not allowed). (400)
    LogoutTokenBadSignature,
    /// The logout token's `aud` does not name a configured `backchannel_logout.client_ids` entry. (400)
    LogoutTokenWrongAudience,
    /// The logout token's `iat` is missing, too old or in the future. (400)
    LogoutTokenIatOutOfWindow,
    /// The logout token's `exp` is past. (400)
    LogoutTokenExpired,
    /// The logout token's `events` lacks the back-channel logout event. (400)
    LogoutTokenMissingEvent,
    /// The logout token names neither `sid` nor `sub`. (400)
    LogoutTokenMissingSubject,
    /// The logout token carries a `nonce` (forbidden by the spec). (400)
    LogoutTokenHasNonce,
    /// The logout token has no `jti`. (400)
    LogoutTokenMissingJti,
    /// The logout token's `jti` was already used. (400)
    LogoutTokenReplayed,
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
        Reason::SessionIdleTimeout,
        Reason::SessionRevoked,
        Reason::SessionStoreUnavailable,
        Reason::TokenLifetimeExceeded,
        Reason::TokenInactive,
        Reason::IntrospectionUnavailable,
        Reason::CertificateBindingMismatch,
        Reason::DpopRequired,
        Reason::DpopBoundTokenAsBearer,
        Reason::DpopProofMissing,
        Reason::DpopProofMalformed,
        Reason::DpopProofMissingJti,
        Reason::DpopProofWrongTyp,
        Reason::DpopProofBadAlg,
        Reason::DpopProofBadJwk,
        Reason::DpopProofBadSignature,
        Reason::DpopProofHtmMismatch,
        Reason::DpopProofHtuMismatch,
        Reason::DpopProofIatOutOfWindow,
        Reason::DpopProofAthMismatch,
        Reason::DpopProofReplayed,
        Reason::DpopKeyMismatch,
        Reason::DpopNonceRequired,
        Reason::LoggedOut,
        Reason::Revoked,
        Reason::LogoutTokenMalformed,
        Reason::LogoutTokenUnknownIssuer,
        Reason::LogoutTokenBadSignature,
        Reason::LogoutTokenWrongAudience,
        Reason::LogoutTokenIatOutOfWindow,
        Reason::LogoutTokenExpired,
        Reason::LogoutTokenMissingEvent,
        Reason::LogoutTokenMissingSubject,
        Reason::LogoutTokenHasNonce,
        Reason::LogoutTokenMissingJti,
        Reason::LogoutTokenReplayed,
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
            Reason::SessionIdleTimeout => "session_idle_timeout",
            Reason::SessionRevoked => "session_revoked",
            Reason::SessionStoreUnavailable => "session_store_unavailable",
            Reason::TokenLifetimeExceeded => "token_lifetime_exceeded",
            Reason::TokenInactive => "token_inactive",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::CertificateBindingMismatch => "certificate_binding_mismatch",
            Reason::DpopRequired => "dpop_required",
            Reason::DpopBoundTokenAsBearer => "dpop_bound_token_as_bearer",
            Reason::DpopProofMissing => "dpop_proof_missing",
            Reason::DpopProofMalformed => "dpop_proof_malformed",
            Reason::DpopProofMissingJti => "dpop_proof_missing_jti",
            Reason::DpopProofWrongTyp => "dpop_proof_wrong_typ",
            Reason::DpopProofBadAlg => "dpop_proof_bad_alg",
            Reason::DpopProofBadJwk => "dpop_proof_bad_jwk",
            Reason::DpopProofBadSignature => "dpop_proof_bad_signature",
            Reason::DpopProofHtmMismatch => "dpop_proof_htm_mismatch",
            Reason::DpopProofHtuMismatch => "dpop_proof_htu_mismatch",
            Reason::DpopProofIatOutOfWindow => "dpop_proof_iat_out_of_window",
            Reason::DpopProofAthMismatch => "dpop_proof_ath_mismatch",
            Reason::DpopProofReplayed => "dpop_proof_replayed",
            Reason::DpopKeyMismatch => "dpop_key_mismatch",
            Reason::DpopNonceRequired => "dpop_nonce_required",
            Reason::LoggedOut => "logged_out",
            Reason::Revoked => "revoked",
            Reason::LogoutTokenMalformed => "logout_token_malformed",
            Reason::LogoutTokenUnknownIssuer => "logout_token_unknown_issuer",
            Reason::LogoutTokenBadSignature => "logout_token_bad_signature",
            Reason::LogoutTokenWrongAudience => "logout_token_wrong_audience",
            Reason::LogoutTokenIatOutOfWindow => "logout_token_iat_out_of_window",
            Reason::LogoutTokenExpired => "logout_token_expired",
            Reason::LogoutTokenMissingEvent => "logout_token_missing_event",
            Reason::LogoutTokenMissingSubject => "logout_token_missing_subject",
            Reason::LogoutTokenHasNonce => "logout_token_has_nonce",
            Reason::LogoutTokenMissingJti => "logout_token_missing_jti",
            Reason::LogoutTokenReplayed => "logout_token_replayed",
        }
    }

    /// Parse a snake_case name (policy tests, tooling).
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// True for the reasons that let a request through.
    pub const fn is_allow(self) -> bool {
        matches!(
            self,
            Reason::Allowed | Reason::PublicRoute | Reason::BreakGlass | Reason::LoggedOut | Reason::Revoked
        )
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
            Reason::SessionIdleTimeout
            | Reason::SessionRevoked
            | Reason::TokenLifetimeExceeded
            | Reason::TokenInactive
            | Reason::CertificateBindingMismatch
            | Reason::DpopRequired
            | Reason::DpopBoundTokenAsBearer
            | Reason::DpopProofMissing
            | Reason::DpopProofMalformed
            | Reason::DpopProofMissingJti
            | Reason::DpopProofWrongTyp
            | Reason::DpopProofBadAlg
            | Reason::DpopProofBadJwk
            | Reason::DpopProofBadSignature
            | Reason::DpopProofHtmMismatch
            | Reason::DpopProofHtuMismatch
            | Reason::DpopProofIatOutOfWindow
            | Reason::DpopProofAthMismatch
            | Reason::DpopProofReplayed
            | Reason::DpopKeyMismatch
            | Reason::DpopNonceRequired => 401,
            Reason::SessionStoreUnavailable | Reason::IntrospectionUnavailable => 503,
            Reason::LoggedOut | Reason::Revoked => 200,
            Reason::LogoutTokenMalformed
            | Reason::LogoutTokenUnknownIssuer
            | Reason::LogoutTokenBadSignature
            | Reason::LogoutTokenWrongAudience
            | Reason::LogoutTokenIatOutOfWindow
            | Reason::LogoutTokenExpired
            | Reason::LogoutTokenMissingEvent
            | Reason::LogoutTokenMissingSubject
            | Reason::LogoutTokenHasNonce
            | Reason::LogoutTokenMissingJti
            | Reason::LogoutTokenReplayed => 400,
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
