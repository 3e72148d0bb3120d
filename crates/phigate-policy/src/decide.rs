//! The decision: a plain function over plain data.

use std::sync::Arc;

use crate::compile::{Access, PolicySet};
use crate::Reason;

/// Facts about the request, extracted once by the gateway.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Canonical path (see [`crate::canonicalize`]).
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
}

/// What phigate knows about the caller from a *validated* token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
}

/// The outcome of authentication, as input to [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Authn {
    /// No bearer token was presented.
    Missing,
    /// A token was presented and rejected for this reason.
    Invalid(Reason),
    /// A token was presented and validated.
    Valid(Claims),
}

/// Whether the request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub reason: Reason,
    /// The matched route's label (name or template); `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// Scopes the matched route required (empty for public or unmatched routes).
    pub scopes_required: Vec<String>,
}

impl Decision {
    /// A denial that happens before any route is consulted (bad path, audit down, ...).
    pub fn deny(reason: Reason) -> Self {
        Self {
            outcome: Outcome::Deny,
            reason,
            route: None,
            scopes_required: Vec::new(),
        }
    }

    pub fn is_allow(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The status to answer a denial with.
    pub fn deny_status(&self) -> u16 {
        self.reason.deny_status()
    }

    /// The `WWW-Authenticate` header for this denial, per RFC 6750 §3.
    ///
    /// No `error` attribute when no token was sent; `invalid_token` for a
    /// rejected token; `insufficient_scope` with the required scopes when the
    /// token lacks them.
    pub fn www_authenticate(&self) -> Option<String> {
        match self.reason {
            Reason::MissingToken => Some("Bearer".to_string()),
            Reason::InsufficientScope => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                self.scopes_required.join(" ")
            )),
            r if r.is_invalid_token() => Some("Bearer error=\"invalid_token\"".to_string()),
            _ => None,
        }
    }
}

/// Decide one request.
///
/// Order: a public route is allowed whatever the token; otherwise the caller
/// must be authenticated (so unauthenticated callers learn nothing about which
/// routes exist); then an unmatched route is denied (default deny); then the
/// route's scopes are checked.
pub fn decide(policy: &PolicySet, facts: &RequestFacts<'_>, authn: &Authn) -> Decision {
    let route = policy.match_route(facts.method, facts.path);
    if let Some(r) = route {
        if r.access == Access::Public {
            return Decision {
                outcome: Outcome::Allow,
                reason: Reason::PublicRoute,
                route: Some(r.label.clone()),
                scopes_required: Vec::new(),
            };
        }
    }
    let claims = match authn {
        Authn::Missing => return with_route(Decision::deny(Reason::MissingToken), route),
        Authn::Invalid(reason) => return with_route(Decision::deny(*reason), route),
        Authn::Valid(c) => c,
    };
    let Some(route) = route else {
        return Decision::deny(Reason::NoMatchingRoute);
    };
    let Access::Scopes(required) = &route.access else {
        // Public was handled above; any other access kind fails closed.
        return with_route(Decision::deny(Reason::NoMatchingRoute), Some(route));
    };
    let (outcome, reason) = if required.is_satisfied_by(&claims.scopes) {
        (Outcome::Allow, Reason::Allowed)
    } else {
        (Outcome::Deny, Reason::InsufficientScope)
    };
    Decision {
        outcome,
        reason,
        route: Some(route.label.clone()),
        scopes_required: required.scopes().to_vec(),
    }
}

fn with_route(mut d: Decision, route: Option<&crate::Route>) -> Decision {
    d.route = route.map(|r| r.label.clone());
    d
}

/// Whether a request needs a validated token to be decided, so the gateway
/// can skip token validation (and its possible key fetch) for public routes.
pub fn needs_token(policy: &PolicySet, facts: &RequestFacts<'_>) -> bool {
    !matches!(policy.match_route(facts.method, facts.path), Some(r) if r.access == Access::Public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, PolicySource};

    const POLICY: &str = r#"
version: 1
routes:
  - methods: [GET]
    path: /fhir/metadata
    public: true
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs, user/Patient.r] }
  - methods: [POST]
    path: /fhir/Observation
    scopes: { all_of: [user/Observation.c, v1.patient.records.write] }
"#;

    fn claims(scopes: &[&str]) -> Authn {
        Authn::Valid(Claims {
            issuer: "iss".into(),
            subject: Some("u1".into()),
            client_id: Some("c1".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn decision_table() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        use Reason::*;
        let cases: Vec<(&str, &str, Authn, Reason, Option<&str>)> = vec![
            (
                "GET",
                "/fhir/metadata",
                Authn::Missing,
                PublicRoute,
                Some("/fhir/metadata"),
            ),
            (
                "GET",
                "/fhir/metadata",
                Authn::Invalid(TokenExpired),
                PublicRoute,
                Some("/fhir/metadata"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                Authn::Missing,
                MissingToken,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                Authn::Invalid(InvalidSignature),
                InvalidSignature,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                claims(&["user/Patient.rs"]),
                Allowed,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                claims(&["user/Patient.r"]),
                Allowed,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                claims(&["user/Observation.rs"]),
                InsufficientScope,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "GET",
                "/fhir/Patient/1",
                claims(&[]),
                InsufficientScope,
                Some("/fhir/Patient/{id}"),
            ),
            (
                "POST",
                "/fhir/Observation",
                claims(&["user/Observation.c"]),
                InsufficientScope,
                Some("/fhir/Observation"),
            ),
            (
                "POST",
                "/fhir/Observation",
                claims(&["v1.patient.records.write", "user/Observation.c"]),
                Allowed,
                Some("/fhir/Observation"),
            ),
            (
                "DELETE",
                "/fhir/Patient/1",
                claims(&["user/Patient.rs"]),
                NoMatchingRoute,
                None,
            ),
            (
                "GET",
                "/fhir/Secret",
                claims(&["user/Patient.rs"]),
                NoMatchingRoute,
                None,
            ),
            ("GET", "/fhir/Secret", Authn::Missing, MissingToken, None),
            (
                "GET",
                "/fhir/Patient",
                claims(&["user/Patient.rs"]),
                NoMatchingRoute,
                None,
            ),
        ];
        for (method, path, authn, want, route) in cases {
            let d = decide(
                &p,
                &RequestFacts {
                    method,
                    path,
                    query: None,
                },
                &authn,
            );
            assert_eq!(d.reason, want, "{method} {path} {authn:?}");
            assert_eq!(d.is_allow(), want.is_allow(), "{method} {path}");
            assert_eq!(d.route.as_deref(), route, "{method} {path}");
        }
    }

    #[test]
    fn insufficient_scope_names_required_scopes() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        let d = decide(
            &p,
            &RequestFacts {
                method: "POST",
                path: "/fhir/Observation",
                query: None,
            },
            &claims(&[]),
        );
        assert_eq!(
            d.www_authenticate().as_deref(),
            Some(
                "Bearer error=\"insufficient_scope\", scope=\"user/Observation.c v1.patient.records.write\""
            )
        );
        assert_eq!(d.deny_status(), 403);
    }

    #[test]
    fn www_authenticate_per_reason() {
        assert_eq!(
            Decision::deny(Reason::MissingToken).www_authenticate().as_deref(),
            Some("Bearer")
        );
        assert_eq!(
            Decision::deny(Reason::TokenExpired).www_authenticate().as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(Decision::deny(Reason::NoMatchingRoute).www_authenticate(), None);
        assert_eq!(Decision::deny(Reason::KeysUnavailable).www_authenticate(), None);
    }

    #[test]
    fn needs_token_only_off_public_routes() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        assert!(!needs_token(
            &p,
            &RequestFacts {
                method: "GET",
                path: "/fhir/metadata",
                query: None
            }
        ));
        assert!(needs_token(
            &p,
            &RequestFacts {
                method: "POST",
                path: "/fhir/metadata",
                query: None
            }
        ));
        assert!(needs_token(
            &p,
            &RequestFacts {
                method: "GET",
                path: "/nope",
                query: None
            }
        ));
    }
}
