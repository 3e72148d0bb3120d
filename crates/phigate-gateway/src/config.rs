//! Gateway configuration: the file types (`*File`), kept apart from the
//! runtime [`GatewayConfig`] they are validated into once, at load.
//!
//! Every problem in a file is reported in one run, each at its
//! `file:line:column`: serde's own errors (unknown keys, bad durations,
//! wrong types) are collected by [`phigate_yaml::parse_all`], which removes
//! each bad value and reads on; every key is optional to serde, so a
//! removed value never hides the rest, and required keys are checked here,
//! together with everything serde cannot know (addresses, ranges, files).
//! Defaults live in one place: [`GatewayConfig::new`] and the `new`/`default`
//! of its parts; dev mode builds its configuration through the same
//! constructors.

mod access;
mod file;
mod network;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use phigate_policy::PolicySet;
use phigate_token::{Algorithm, IssuerConfig};
use phigate_yaml::{Diagnostic, Location};
use serde::Deserialize;

pub use file::{
    AuditFile, CheckpointFile, ClientAuthFile, DurabilityFile, ForwardedHeaders, GatewayFile,
    HealthCheckFile, IntentFile, IssuerFile, LimitsFile, ListenerFile, ListenerTlsFile, LogFile, PagingFile,
    RateLimitFile, UpstreamFile, UpstreamTlsFile,
};

/// Which allowed requests get an `intent` audit record before forwarding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IntentMode {
    /// Requests with effects: every method but GET and HEAD. Reads are
    /// recorded when their response headers arrive, before the response is
    /// released (no disclosure without evidence), with one record.
    #[default]
    Writes,
    /// Every allowed request (two records per request).
    All,
}
pub use access::{
    BackchannelLogoutFile, DpopFile, DpopSettings, IssuerRules, IssuerSessionsFile, LogoutSettings,
    NatsStoreFile, NatsTlsFile, SessionKeyMode, SessionSettings, SessionsFile, StoreKind, StoreSettings,
    DEFAULT_LOGOUT_PATH,
};
pub use validate::{load, parse, parse_with_env};

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// Where a setting was written, for errors found after loading (a policy
/// directory that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub location: Option<Location>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Proxy listeners (at least one).
    pub listeners: Vec<ListenerConfig>,
    pub admin_listen: SocketAddr,
    /// Upstreams (at least one), chosen by the longest matching prefix.
    pub upstreams: Vec<UpstreamConfig>,
    /// Which forwarding headers are set on upstream requests.
    pub forwarded: ForwardedMode,
    pub issuers: Vec<IssuerConfig>,
    /// The policy directory; empty for an embedded policy (dev mode).
    pub policies: PathBuf,
    /// Where `policies:` was configured.
    pub policies_origin: Option<Origin>,
    pub audit: AuditConfig,
    pub log_format: LogFormat,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub token_cache_entries: usize,
    pub rate_limit: RateLimit,
    /// Validated sinks (built into forwarders at start).
    pub sinks: Vec<phigate_sinks::config::ValidatedSink>,
    /// Proxies whose `X-Forwarded-For` identifies the client (rate limits, in-flight share).
    pub trusted_proxies: Vec<crate::limiter::Cidr>,
    pub limits: Limits,
    pub paging: crate::paging::PagingConfig,
    /// Automatic log-off, logout and revocation (`None`: not configured —
    /// DPoP `jti`s are then remembered in this process only).
    pub sessions: Option<SessionSettings>,
    /// DPoP proof checking (RFC 9449).
    pub dpop: DpopSettings,
    /// The OpenID Connect Back-Channel Logout receiver.
    pub backchannel_logout: Option<LogoutSettings>,
    /// Per-issuer rules (`require_dpop`, idle timeout), by exact issuer.
    pub issuer_rules: std::collections::BTreeMap<String, IssuerRules>,
}

impl GatewayConfig {
    /// A configuration with every optional setting at its default: the one
    /// place the defaults are written down (the file loader and dev mode
    /// both start here).
    pub fn new(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        upstream: UpstreamConfig,
        issuers: Vec<IssuerConfig>,
        policies: PathBuf,
        audit: AuditConfig,
    ) -> Self {
        GatewayConfig {
            listeners: vec![ListenerConfig::plain(listen)],
            admin_listen,
            upstreams: vec![upstream],
            forwarded: ForwardedMode::default(),
            issuers,
            policies,
            policies_origin: None,
            audit,
            log_format: LogFormat::default(),
            threads: DEFAULT_THREADS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            token_cache_entries: phigate_token::DEFAULT_CACHE_ENTRIES,
            rate_limit: RateLimit::default(),
            sinks: Vec::new(),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            paging: crate::paging::PagingConfig::default(),
            sessions: None,
            dpop: DpopSettings::default(),
            backchannel_logout: None,
            issuer_rules: std::collections::BTreeMap::new(),
        }
    }
}

/// Default proxy worker threads.
pub const DEFAULT_THREADS: usize = 2;
/// Default graceful-shutdown wait.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Invalid-token rate limit per client address (`invalid_tokens` = 0 disables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub invalid_tokens: u32,
    pub window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            invalid_tokens: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// Bounds on slow or greedy clients (see [`LimitsFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_header_timeout: Duration,
    pub request_body_timeout: Duration,
    /// 0: unlimited.
    pub max_in_flight_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_header_timeout: Duration::from_secs(5),
            request_body_timeout: Duration::from_secs(10),
            max_in_flight_per_client: 256,
        }
    }
}

/// One proxy listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// TLS termination; `None`: plaintext.
    pub tls: Option<crate::tls::ListenerTlsSpec>,
    /// Offer HTTP/2 by ALPN (TLS listeners).
    pub http2: bool,
    /// Accept HTTP/2 with prior knowledge (plaintext listeners).
    pub h2c: bool,
}

impl ListenerConfig {
    /// A plaintext HTTP/1.1 listener.
    pub fn plain(address: SocketAddr) -> Self {
        ListenerConfig {
            address,
            tls: None,
            http2: true,
            h2c: false,
        }
    }

    /// `https` for TLS listeners, else `http` (`X-Forwarded-Proto`).
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// One upstream: where and how to connect ([`crate::upstreams::UpstreamSpec`])
/// and what phigate forwards to it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub spec: crate::upstreams::UpstreamSpec,
    pub forward_authorization: bool,
    /// Extra attempts on another address after a connect failure
    /// (idempotent methods only).
    pub retries: u32,
    /// Send the client's `Host` (true), or the upstream address's own
    /// `host[:port]` (false: for backends behind name-based virtual hosting).
    pub preserve_host: bool,
}

/// Default name of the upstream given as `upstream:`.
pub const DEFAULT_UPSTREAM_NAME: &str = "default";

impl UpstreamConfig {
    /// One plain-HTTP address serving every path, with the default timeouts
    /// (connect 2 s, read 30 s), one retry, receiving the client's
    /// `Authorization`.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            spec: crate::upstreams::UpstreamSpec {
                name: DEFAULT_UPSTREAM_NAME.to_string(),
                prefix: "/".to_string(),
                rewrite: None,
                addresses: vec![address.to_string()],
                tls: None,
                health_check: None,
                resolve_interval: DEFAULT_RESOLVE_INTERVAL,
                connect_timeout: Duration::from_secs(2),
                read_timeout: Duration::from_secs(30),
            },
            forward_authorization: true,
            retries: 1,
            preserve_host: true,
        }
    }
}

/// Default DNS re-resolution period of upstream hostnames.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Which forwarding headers phigate sets on upstream requests. Values a
/// client sent are passed on (extended) only from `trusted_proxies`;
/// from anyone else they are removed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedMode {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`.
    pub forwarded: bool,
}

impl Default for ForwardedMode {
    fn default() -> Self {
        ForwardedMode {
            x_forwarded: true,
            forwarded: false,
        }
    }
}

/// The validated audit settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub mirror: Option<PathBuf>,
    pub durability: phigate_audit::Durability,
    pub segment_max_bytes: u64,
    pub max_bytes: u64,
    pub queue: usize,
    /// (every N records, key file)
    pub checkpoint: Option<(u64, PathBuf)>,
    pub intent: IntentMode,
    /// How long the process waits at exit for outstanding records.
    pub drain_timeout: Duration,
    /// Free-space reserve of the spool's filesystem (0: no check).
    pub min_free_bytes: u64,
    /// Compress closed segments with zstd.
    pub compress: bool,
}

impl AuditConfig {
    /// Defaults for a spool in `dir` (interval durability, 10 ms).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            mirror: None,
            durability: phigate_audit::Durability::default(),
            segment_max_bytes: phigate_audit::DEFAULT_SEGMENT_MAX_BYTES,
            max_bytes: phigate_audit::DEFAULT_MAX_BYTES,
            queue: DEFAULT_AUDIT_QUEUE,
            checkpoint: None,
            intent: IntentMode::default(),
            drain_timeout: Duration::from_secs(10),
            min_free_bytes: phigate_audit::DEFAULT_MIN_FREE_BYTES,
            compress: true,
        }
    }
}

/// Default audit queue size.
pub const DEFAULT_AUDIT_QUEUE: usize = 10_000;

/// Read and compile the configured policy directory. Problems with the
/// directory itself (missing, unreadable, no policy file in it) are reported
/// at the `policies:` line of the configuration that names it.
pub fn load_policies(config: &GatewayConfig) -> Result<PolicySet, Vec<Diagnostic>> {
    let dir = &config.policies;
    let at_config = |msg: String| match &config.policies_origin {
        Some(o) => vec![Diagnostic::new(&o.file, o.location, format!("policies: {msg}"))],
        None => vec![Diagnostic::new(dir.display().to_string(), None, msg)],
    };
    let files = match std::fs::read_dir(dir) {
        Err(e) => {
            return Err(at_config(format!(
                "cannot read policy directory {}: {e}",
                dir.display()
            )))
        }
        Ok(_) => crate::policy_loader::policy_files(dir)?,
    };
    if files.is_empty() {
        return Err(at_config(format!(
            "no policy files (*.yaml, *.yml) in {}",
            dir.display()
        )));
    }
    crate::policy_loader::load_dir(dir)
}

/// Parse an algorithm name from the allow-list. Symmetric and `none`
/// algorithms are refused outright: a gateway verifying third-party tokens
/// never shares a secret with the issuer.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        n if n.to_ascii_uppercase().starts_with("HS") || n.eq_ignore_ascii_case("none") => {
            return Err(format!(
                "algorithm `{n}` is never allowed (symmetric or unsigned)"
            ))
        }
        n => return Err(format!("unknown algorithm `{n}`")),
    };
    Ok(alg)
}

#[cfg(test)]
mod tests;
