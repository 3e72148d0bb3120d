//! `gateway.yaml` as operators write it: the file types. Every key is
//! optional to serde (so one bad value never hides the rest of the file);
//! required keys and everything serde cannot check are validated in
//! [`super::parse`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use super::LogFormat;

/// `gateway.yaml` as written by operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Proxy listener, e.g. `0.0.0.0:8080`: shorthand for one plaintext
    /// HTTP/1.1 listener (this or `listeners` is required).
    #[serde(default)]
    pub listen: Option<String>,
    /// Proxy listeners, each plaintext or TLS (with HTTP/2 by ALPN), h2c opt-in.
    #[serde(default)]
    pub listeners: Option<Vec<ListenerFile>>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9090` (required).
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The FHIR server: shorthand for one upstream with prefix `/` (this or
    /// `upstreams` is required).
    #[serde(default)]
    pub upstream: Option<UpstreamFile>,
    /// Named upstreams, chosen per request by the longest matching path prefix.
    #[serde(default)]
    pub upstreams: Option<Vec<UpstreamFile>>,
    /// Which forwarding headers phigate sets: `x_forwarded` (default),
    /// `forwarded` (RFC 7239), `both` or `none`.
    #[serde(default)]
    pub forwarded_headers: Option<ForwardedHeaders>,
    /// Proxies (CIDRs) in front of phigate whose forwarding headers are
    /// believed (`X-Forwarded-For` for the client address, and the
    /// forwarding headers passed on); `rate_limit.trusted_proxies` is the
    /// older spelling.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
    /// Token issuers (at least one).
    #[serde(default)]
    pub issuers: Option<Vec<IssuerFile>>,
    /// Directory of policy YAML files (relative paths are relative to the config file; required).
    #[serde(default)]
    pub policies: Option<PathBuf>,
    /// The audit spool (required).
    #[serde(default)]
    pub audit: Option<AuditFile>,
    #[serde(default)]
    pub log: Option<LogFile>,
    /// Worker threads for the proxy service (default 2).
    #[serde(default)]
    pub threads: Option<usize>,
    /// How long a graceful shutdown waits for in-flight requests (default 5 s).
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// Verified-token cache size in entries (default 10000; 0 disables).
    #[serde(default)]
    pub token_cache_entries: Option<usize>,
    /// Rate limit on invalid tokens per client address.
    #[serde(default)]
    pub rate_limit: Option<RateLimitFile>,
    /// Streaming audit sinks, fed from the spool (NATS, syslog, FHIR, stdout).
    #[serde(default)]
    pub sinks: Vec<phigate_sinks::SinkConfig>,
    /// Bounds on slow or greedy clients.
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    /// Paging links of allowed FHIR searches (see `crate::paging`).
    #[serde(default)]
    pub paging: Option<PagingFile>,
    /// Automatic log-off, logout and revocation, shared by replicas.
    #[serde(default)]
    pub sessions: Option<super::SessionsFile>,
    /// DPoP proof checking (RFC 9449).
    #[serde(default)]
    pub dpop: Option<super::DpopFile>,
    /// OpenID Connect Back-Channel Logout receiver on the proxy listeners.
    #[serde(default)]
    pub backchannel_logout: Option<super::BackchannelLogoutFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingFile {
    /// How long a search's paging links may be followed (default 10m).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Links remembered at most, oldest dropped first (default 100000; 0 disables).
    #[serde(default)]
    pub max_links: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Longest time from the first byte of a request head to its end (default 5s; 408).
    #[serde(default, with = "humantime_serde")]
    pub request_header_timeout: Option<Duration>,
    /// Longest time to receive a request body: an inspected body before the
    /// decision, a forwarded one while it streams (default 10s; 408).
    #[serde(default, with = "humantime_serde")]
    pub request_body_timeout: Option<Duration>,
    /// Requests in flight per client address (default 256; 0 disables).
    #[serde(default)]
    pub max_in_flight_per_client: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Invalid-token attempts allowed per client address per window (default 20; 0 disables).
    #[serde(default)]
    pub invalid_tokens: Option<u32>,
    /// Window length (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Load balancers / ingress proxies (CIDRs) whose `X-Forwarded-For` names
    /// the client; without this, everyone behind one proxy shares a limit.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// One proxy listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// `ip:port` (required).
    #[serde(default)]
    pub address: Option<String>,
    /// Terminate TLS here (HTTP/2 and HTTP/1.1 by ALPN).
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
    /// Offer HTTP/2 by ALPN on a TLS listener (default true).
    #[serde(default)]
    pub http2: Option<bool>,
    /// Accept HTTP/2 with prior knowledge (h2c) on a plaintext listener (default false).
    #[serde(default)]
    pub h2c: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// PEM certificate chain, leaf first (required).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (required).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `optional` (default with `client_ca`) or `required`.
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthFile {
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeaders {
    XForwarded,
    Forwarded,
    Both,
    None,
}

/// One upstream (`upstream:` or an entry of `upstreams:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Name in metrics, audit and logs (required in `upstreams:`; `default` for `upstream:`).
    #[serde(default)]
    pub name: Option<String>,
    /// Canonical path prefix this upstream serves (required in `upstreams:`; `/` for `upstream:`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Replaces `prefix` in the forwarded path (e.g. `/fhir` → `/fhir/R4`).
    #[serde(default)]
    pub rewrite: Option<String>,
    /// `host:port` of the server (shorthand for one address).
    #[serde(default)]
    pub address: Option<String>,
    /// `host:port` of each server; hostnames are resolved and re-resolved.
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    /// Re-resolve hostnames this often (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub resolve_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Forward the client's `Authorization` header upstream (default true).
    #[serde(default)]
    pub forward_authorization: Option<bool>,
    /// TLS to the upstream.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    /// Active health checks (default: none; every resolved address is used).
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    /// Extra attempts on another address after a connect failure, for
    /// idempotent methods only (default 1).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Send the client's `Host` (default true) or the upstream address's
    /// own `host[:port]` (false).
    #[serde(default)]
    pub preserve_host: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM CA bundle to verify the server (default: the system's roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Server name to send and verify (default: the address's host).
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the server's certificate (default true).
    #[serde(default)]
    pub verify: Option<bool>,
    /// Client certificate (PEM chain) for mTLS to the upstream.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client certificate's key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// Path to GET (required); 2xx is healthy.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub healthy_threshold: Option<usize>,
    #[serde(default)]
    pub unhealthy_threshold: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// Exact `iss` value (required).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences (required, at least one).
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub jwks_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub unknown_kid_cooldown: Option<Duration>,
    /// Use OIDC discovery (`<issuer>/.well-known/openid-configuration`) to find the JWKS.
    #[serde(default)]
    pub discovery: Option<bool>,
    /// How long last-known-good keys keep serving when refreshes fail (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_stale: Option<Duration>,
    /// Require a `typ` header (RFC 9068: `at+jwt`).
    #[serde(default)]
    pub require_typ: Option<bool>,
    /// Accepted `typ` values (default `[at+jwt, JWT]`).
    #[serde(default)]
    pub allowed_typ: Option<Vec<String>>,
    /// Tokens larger than this are refused before decoding (default 8192 bytes).
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    /// Claim holding scopes (default: `scope`, then `scp`).
    #[serde(default)]
    pub scope_claim: Option<String>,
    /// Claim holding roles, dotted path (default `roles`; e.g. `realm_access.roles`).
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Only DPoP-bound tokens (RFC 9449) with a valid proof are accepted.
    #[serde(default)]
    pub require_dpop: Option<bool>,
    /// Tokens whose `exp - iat` exceeds this are refused (`token_lifetime_exceeded`).
    #[serde(default, with = "humantime_serde")]
    pub max_token_lifetime: Option<Duration>,
    /// This issuer's session settings (overrides `sessions`).
    #[serde(default)]
    pub sessions: Option<super::IssuerSessionsFile>,
    /// RFC 7662 introspection of this issuer's opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionFile>,
}

/// `issuers[].introspection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionFile {
    /// The introspection endpoint (required).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// phigate's client id at the authorization server (required).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret_basic` authentication (this or `private_key_jwt`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `private_key_jwt` authentication (RFC 7523).
    #[serde(default)]
    pub private_key_jwt: Option<PrivateKeyJwtFile>,
    /// Longest an active answer is cached (default 60s; never past `exp`).
    #[serde(default, with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// How long an inactive answer is cached (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub negative_cache_ttl: Option<Duration>,
    /// Request timeout (default 2s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// `issuers[].introspection.private_key_jwt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyJwtFile {
    /// PKCS#8 PEM private key (required).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Signing algorithm (default ES256).
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Spool directory: hash-chained, append-only JSONL segments (the record of truth; required).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Optional plain JSONL copy of every spool line (for tools that tail one file).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `interval` (default), `per_request`, or `none` (benchmarks only).
    #[serde(default)]
    pub durability: Option<DurabilityFile>,
    /// fsync period in `interval` mode (default 10ms).
    #[serde(default, with = "humantime_serde")]
    pub fsync_interval: Option<Duration>,
    /// Segment size before rotation, bytes (default 64 MiB).
    #[serde(default)]
    pub segment_max_bytes: Option<u64>,
    /// Byte bound on the spool directory (default 10 GiB); at the bound, PHI
    /// requests are refused with 503 until the operator archives segments.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Records in flight (default 10000); full → 503.
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Free-space reserve of the spool's filesystem, bytes (default 64 MiB;
    /// 0 disables the check): below it, new requests are refused with 503
    /// and `/readyz` is 503, so records already reserved can still be written.
    #[serde(default)]
    pub min_free_bytes: Option<u64>,
    /// Compress closed segments with zstd (default true).
    #[serde(default)]
    pub compress: Option<bool>,
    /// Signed checkpoints every `every` records with an Ed25519 key.
    #[serde(default)]
    pub checkpoint: Option<CheckpointFile>,
    /// Which allowed requests get an `intent` record before they are
    /// forwarded: `writes` (default: every method but GET/HEAD) or `all`.
    #[serde(default)]
    pub intent: Option<IntentFile>,
    /// How long the process waits at exit for every outstanding record to be
    /// written (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentFile {
    Writes,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityFile {
    Interval,
    PerRequest,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    #[serde(default)]
    pub every: Option<u64>,
    /// Ed25519 private key (PKCS#8 PEM or raw seed; `phigate audit keygen`).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    #[serde(default)]
    pub format: Option<LogFormat>,
}
