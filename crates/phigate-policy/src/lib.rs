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
pub mod file;
mod path;
mod reason;

pub use compile::{compile, Access, PolicySet, PolicySource, RequiredScopes, Route, METHODS};
pub use decide::{decide, needs_token, Authn, Claims, Decision, Outcome, RequestFacts};
pub use path::{canonicalize, CanonicalTarget, PathError};
pub use phigate_yaml::{Diagnostic, Location};
pub use reason::Reason;
