//! phigate's pingora glue: configuration loading, the `ProxyHttp`
//! implementation, the admin service and the wiring of background work.
//!
//! ```text
//! client ──► proxy listeners (TCP / TLS, HTTP/1.1 via front::Front, HTTP/2) ──► Gateway::request_filter
//!                                 ├─ canonicalise path      (phigate-policy)
//!                                 ├─ bearer token → Validator (phigate-token, JWKS cache)
//!                                 ├─ decide()               (phigate-policy, pure)
//!                                 ├─ audit slot reserved    (phigate-audit Spool; none → 503)
//!                                 ├─ deny → commit record ──► JSON 400/401/403/503
//!                                 └─ allow → upstreams::route/select (prefix, rewrite, health) → upstream
//!                               Gateway::response_filter ──► commit record (awaited) ──► response
//!                               SpoolWorker ──► hash-chained segments (fsync per durability)
//!                               Gateway::logging ──► Metrics ──► admin /metrics
//! ```
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
/// Built without the `dev` feature (the production image): no dev issuer,
/// no token minting, no `/dev/*` endpoints. The type has no values, so the
/// gateway's `Option<Arc<DevIssuer>>` is always `None`.
#[cfg(not(feature = "dev"))]
pub mod dev {
    /// No dev issuer exists in this build.
    #[derive(Debug)]
    pub enum DevIssuer {}
}
pub mod forward;
pub mod front;
pub mod limiter;
pub mod metrics;
pub mod online;
pub mod paging;
pub mod policy_loader;
pub mod proxy;
pub mod reload;
mod server;
pub mod shutdown;
pub mod tls;
pub mod upstreams;

pub use server::serve;
#[cfg(feature = "dev")]
pub use server::{dev, DevOptions};

use phigate_policy::Diagnostic;

/// Errors of the gateway crate; each is reported to the operator and makes
/// the process exit non-zero. Pingora errors are mapped at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration:\n{}", join(.0))]
    Config(Vec<Diagnostic>),
    #[error("invalid policy:\n{}", join(.0))]
    Policy(Vec<Diagnostic>),
    #[error("audit: {0}")]
    Audit(#[from] phigate_audit::AuditError),
    #[error("issuer configuration: {0}")]
    Token(#[from] phigate_token::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("upstreams: {0}")]
    Upstream(#[from] crate::upstreams::UpstreamError),
    #[error("dev key: {0}")]
    DevKey(String),
    #[error("session store: {0}")]
    Sessions(#[from] phigate_sessions::SessionError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn join(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}
