//! phigate's pure decision core.
//!
//! Policy file types ([`file`]), their compilation into a runtime
//! [`PolicySet`] ([`compile`]), request-target canonicalisation
//! ([`canonicalize`]) and the decision itself ([`decide`]). No async, no I/O,
//! no pingora: everything here is a plain function over plain data, tested
//! table-driven and benchmarked in isolation.
#![forbid(unsafe_code)]

mod compile;
mod decide;
pub mod fhir;
pub mod fhir_data;
pub mod file;
mod path;
pub mod protocol;
mod reason;
mod request;
pub mod smart;
pub mod testing;

pub use compile::{
    compile, is_broad_scope, scope_satisfied, Access, BreakGlass, ClaimCondition, ConditionOp, Operand,
    PolicySet, PolicySource, RequiredScopes, Route, RouteMatch, StepUp, TimeWindow, METHODS,
};
pub use decide::{
    decide, decide_continuation, Authn, Claims, Decision, Forward, Outcome, StepUpChallenge,
    MAX_BUNDLE_ENTRIES,
};
pub use path::{canonicalize, CanonicalTarget, PathError};
pub use phigate_yaml::{Diagnostic, Location};
pub use reason::Reason;
pub use request::{
    prepare, BodyKind, HeaderList, Headers, HttpVersion, Prepared, RawRequest, Upgrade, MAX_INSPECTED_BODY,
    METHOD_OVERRIDE_HEADERS,
};
