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
    // --- allow ---
    /// A token with the required scopes matched a route.
    Allowed,
    /// The matched route is `public: true`; no token needed.
    PublicRoute,

    // --- deny: request shape (400) ---
    /// The request target failed canonicalisation.
    BadRequestPath,
    /// More than one `Authorization` header, or an unusable one.
    MalformedAuthorization,

    // --- deny: authentication (401) ---
    MissingToken,
    MalformedToken,
    UnsupportedAlgorithm,
    UnknownIssuer,
    UnknownKey,
    InvalidSignature,
    TokenExpired,
    TokenNotYetValid,
    WrongAudience,
    MissingClaim,

    // --- deny: authorisation (403) ---
    InsufficientScope,
    NoMatchingRoute,

    // --- deny: fail closed (503) ---
    /// The issuer's keys have never been fetched (or are too old to trust).
    KeysUnavailable,
    /// The audit pipeline cannot take the record; PHI access is refused.
    AuditUnavailable,
}

impl Reason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: &'static [Reason] = &[
        Reason::Allowed,
        Reason::PublicRoute,
        Reason::BadRequestPath,
        Reason::MalformedAuthorization,
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
        Reason::InsufficientScope,
        Reason::NoMatchingRoute,
        Reason::KeysUnavailable,
        Reason::AuditUnavailable,
    ];

    /// The snake_case name used in audit records, metric labels and deny bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::PublicRoute => "public_route",
            Reason::BadRequestPath => "bad_request_path",
            Reason::MalformedAuthorization => "malformed_authorization",
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
            Reason::InsufficientScope => "insufficient_scope",
            Reason::NoMatchingRoute => "no_matching_route",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
        }
    }

    /// True for the reasons that let a request through.
    pub const fn is_allow(self) -> bool {
        matches!(self, Reason::Allowed | Reason::PublicRoute)
    }

    /// The HTTP status a denial with this reason is answered with
    /// (allowed requests carry the upstream's status instead).
    pub const fn deny_status(self) -> u16 {
        match self {
            Reason::Allowed | Reason::PublicRoute => 200,
            Reason::BadRequestPath | Reason::MalformedAuthorization => 400,
            Reason::MissingToken
            | Reason::MalformedToken
            | Reason::UnsupportedAlgorithm
            | Reason::UnknownIssuer
            | Reason::UnknownKey
            | Reason::InvalidSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::WrongAudience
            | Reason::MissingClaim => 401,
            Reason::InsufficientScope | Reason::NoMatchingRoute => 403,
            Reason::KeysUnavailable | Reason::AuditUnavailable => 503,
        }
    }

    /// True for the reasons that describe an invalid bearer token (answered
    /// with `WWW-Authenticate: Bearer error="invalid_token"`).
    pub const fn is_invalid_token(self) -> bool {
        self.deny_status() == 401 && !matches!(self, Reason::MissingToken)
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
