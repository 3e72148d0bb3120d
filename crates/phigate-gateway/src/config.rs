//! Gateway configuration: the file types (`*File`), kept apart from the
//! runtime [`GatewayConfig`] they are validated into once, at load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phigate_token::{Algorithm, IssuerConfig, KeySource};
use phigate_yaml::{Diagnostic, Locator, PathSeg};
use serde::Deserialize;

/// `gateway.yaml` as written by operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Proxy listener, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9090`.
    pub admin_listen: String,
    pub upstream: UpstreamFile,
    pub issuers: Vec<IssuerFile>,
    /// Directory of policy YAML files (relative paths are relative to the config file).
    pub policies: PathBuf,
    pub audit: AuditFile,
    #[serde(default)]
    pub log: LogFile,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` of the FHIR server (plain HTTP/1.1).
    pub address: String,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Forward the client's `Authorization` header upstream (default true).
    #[serde(default)]
    pub forward_authorization: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    pub issuer: String,
    pub audiences: Vec<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Spool directory: hash-chained, append-only JSONL segments (the record of truth).
    pub dir: PathBuf,
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
    /// Signed checkpoints every `every` records with an Ed25519 key.
    #[serde(default)]
    pub checkpoint: Option<CheckpointFile>,
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
    pub every: u64,
    /// Ed25519 private key (PKCS#8 PEM or raw seed; `phigate audit keygen`).
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    #[serde(default)]
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: UpstreamConfig,
    pub issuers: Vec<IssuerConfig>,
    pub policies: PathBuf,
    pub audit: AuditConfig,
    pub log_format: LogFormat,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub token_cache_entries: usize,
    pub rate_limit: RateLimit,
    /// Validated sink configurations (built into forwarders at start).
    pub sinks: Vec<phigate_sinks::SinkConfig>,
    /// Proxies whose `X-Forwarded-For` identifies the client for rate limiting.
    pub trusted_proxies: Vec<crate::limiter::Cidr>,
    pub limits: Limits,
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

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub forward_authorization: bool,
}

impl UpstreamConfig {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            forward_authorization: true,
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
        }
    }
}

/// Default audit queue size.
pub const DEFAULT_AUDIT_QUEUE: usize = 10_000;

/// Read and validate a configuration file. Every problem is reported.
pub fn load(path: &Path) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::new(&name, None, format!("cannot read: {e}"))])?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&name, &text, base)
}

/// Validate configuration text; `base` resolves relative paths.
pub fn parse(name: &str, text: &str, base: &Path) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let file: GatewayFile = phigate_yaml::parse(name, text).map_err(|d| vec![d])?;
    let loc = Locator::new(text);
    let mut errors = Vec::new();
    let mut err =
        |path: &[PathSeg<'_>], msg: String| errors.push(Diagnostic::new(name, loc.locate(path), msg));

    let addr =
        |key: &'static str, value: &str, err: &mut dyn FnMut(&[PathSeg<'_>], String)| -> Option<SocketAddr> {
            match value.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    err(
                        &[PathSeg::Key(key)],
                        format!("`{value}` is not an address like 127.0.0.1:8080"),
                    );
                    None
                }
            }
        };
    let listen = addr("listen", &file.listen, &mut err);
    let admin_listen = addr("admin_listen", &file.admin_listen, &mut err);
    if listen.is_some() && listen == admin_listen {
        err(
            &[PathSeg::Key("admin_listen")],
            "admin listener must differ from the proxy listener".into(),
        );
    }
    let upstream_addr = match file.upstream.address.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            err(
                &[PathSeg::Key("upstream"), PathSeg::Key("address")],
                format!(
                    "`{}` is not an address like 127.0.0.1:8081",
                    file.upstream.address
                ),
            );
            None
        }
    };

    if file.issuers.is_empty() {
        err(
            &[PathSeg::Key("issuers")],
            "at least one issuer is required".into(),
        );
    }
    let mut issuers = Vec::new();
    for (i, f) in file.issuers.iter().enumerate() {
        let at = |k: &'static str| [PathSeg::Key("issuers"), PathSeg::Index(i), PathSeg::Key(k)];
        if issuers.iter().any(|c: &IssuerConfig| c.issuer == f.issuer) {
            err(&at("issuer"), format!("duplicate issuer `{}`", f.issuer));
        }
        if f.issuer.is_empty() {
            err(&at("issuer"), "issuer must not be empty".into());
        }
        if f.audiences.is_empty() || f.audiences.iter().any(String::is_empty) {
            err(
                &at("audiences"),
                "at least one non-empty audience is required".into(),
            );
        }
        let source = match (&f.jwks_uri, &f.jwks_file) {
            (None, None) if f.discovery == Some(true) => {
                if !(f.issuer.starts_with("https://") || f.issuer.starts_with("http://")) {
                    err(
                        &at("discovery"),
                        "OIDC discovery needs an http(s) issuer URL".into(),
                    );
                }
                Some(KeySource::Discovery)
            }
            (Some(_), _) | (_, Some(_)) if f.discovery == Some(true) => {
                err(
                    &at("discovery"),
                    "`discovery: true` excludes `jwks_uri` and `jwks_file`".into(),
                );
                None
            }
            (Some(u), None) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    err(&at("jwks_uri"), format!("`{u}` must be an http(s) URL"));
                }
                Some(KeySource::JwksUri(u.clone()))
            }
            (None, Some(p)) => Some(KeySource::JwksFile(base.join(p))),
            _ => {
                err(
                    &at("issuer"),
                    "exactly one of `jwks_uri`, `jwks_file` or `discovery: true` is required".into(),
                );
                None
            }
        };
        let mut algorithms = Vec::new();
        for a in f
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()])
        {
            match parse_algorithm(&a) {
                Ok(alg) => algorithms.push(alg),
                Err(msg) => err(&at("algorithms"), msg),
            }
        }
        if algorithms.is_empty() && f.algorithms.is_some() {
            err(&at("algorithms"), "at least one algorithm is required".into());
        }
        if let Some(source) = source {
            let mut c = IssuerConfig::new(f.issuer.clone(), f.audiences.clone(), source);
            c.algorithms = algorithms;
            if let Some(l) = f.leeway {
                if l > Duration::from_secs(300) {
                    err(
                        &at("leeway"),
                        "leeway above 5m defeats expiry; keep it small".into(),
                    );
                }
                c.leeway = l;
            }
            if let Some(t) = f.jwks_ttl {
                c.jwks_ttl = t;
            }
            if let Some(t) = f.unknown_kid_cooldown {
                c.unknown_kid_cooldown = t;
            }
            for (key, value) in [("scope_claim", &f.scope_claim), ("roles_claim", &f.roles_claim)] {
                if let Some(v) = value {
                    if v.is_empty() || v.split('.').any(str::is_empty) {
                        err(&at(key), format!("`{v}` is not a claim name or dotted path"));
                    }
                }
            }
            c.scope_claim = f.scope_claim.clone();
            if let Some(m) = f.max_stale {
                c.max_stale = m;
            }
            if let Some(r) = f.require_typ {
                c.require_typ = r;
            }
            if let Some(t) = &f.allowed_typ {
                if t.is_empty() {
                    err(
                        &at("allowed_typ"),
                        "allowed_typ must list at least one value".into(),
                    );
                }
                c.allowed_typ = t.clone();
            }
            if let Some(n) = f.max_token_bytes {
                if !(512..=65536).contains(&n) {
                    err(
                        &at("max_token_bytes"),
                        "max_token_bytes must be between 512 and 65536".into(),
                    );
                }
                c.max_token_bytes = n;
            }
            if let Some(r) = &f.roles_claim {
                c.roles_claim = r.clone();
            }
            issuers.push(c);
        }
    }

    let a = &file.audit;
    let audit_at = |k: &'static str| [PathSeg::Key("audit"), PathSeg::Key(k)];
    let mut audit = AuditConfig::new(base.join(&a.dir));
    audit.mirror = a.file.as_ref().map(|f| base.join(f));
    if audit.mirror.as_ref().is_some_and(|m| m.starts_with(&audit.dir)) {
        err(
            &audit_at("file"),
            "the mirror file must not live inside the spool directory".into(),
        );
    }
    let interval = a.fsync_interval.unwrap_or(Duration::from_millis(10));
    if a.fsync_interval.is_some() && a.durability.is_some_and(|d| d != DurabilityFile::Interval) {
        err(
            &audit_at("fsync_interval"),
            "fsync_interval only applies to `durability: interval`".into(),
        );
    }
    if interval.is_zero() || interval > Duration::from_secs(1) {
        err(
            &audit_at("fsync_interval"),
            "fsync_interval must be between 1ms and 1s".into(),
        );
    }
    audit.durability = match a.durability.unwrap_or(DurabilityFile::Interval) {
        DurabilityFile::Interval => phigate_audit::Durability::Interval(interval),
        DurabilityFile::PerRequest => phigate_audit::Durability::PerRequest,
        DurabilityFile::None => phigate_audit::Durability::None,
    };
    if let Some(n) = a.segment_max_bytes {
        if n < 64 * 1024 {
            err(
                &audit_at("segment_max_bytes"),
                "segment_max_bytes must be at least 65536".into(),
            );
        }
        audit.segment_max_bytes = n;
    }
    if let Some(n) = a.max_bytes {
        if n < audit.segment_max_bytes {
            err(
                &audit_at("max_bytes"),
                "max_bytes must be at least segment_max_bytes".into(),
            );
        }
        audit.max_bytes = n;
    }
    audit.queue = a.queue_size.unwrap_or(DEFAULT_AUDIT_QUEUE);
    if audit.queue == 0 {
        err(&audit_at("queue_size"), "queue_size must be at least 1".into());
    }
    if let Some(c) = &a.checkpoint {
        if c.every == 0 {
            err(
                &audit_at("checkpoint"),
                "checkpoint.every must be at least 1".into(),
            );
        }
        audit.checkpoint = Some((c.every, base.join(&c.key)));
    }
    let mut rate_limit = RateLimit::default();
    let mut trusted_proxies = Vec::new();
    if let Some(r) = &file.rate_limit {
        for c in &r.trusted_proxies {
            match c.parse::<crate::limiter::Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(m) => err(&[PathSeg::Key("rate_limit"), PathSeg::Key("trusted_proxies")], m),
            }
        }
        if let Some(n) = r.invalid_tokens {
            rate_limit.invalid_tokens = n;
        }
        if let Some(w) = r.window {
            if w < Duration::from_secs(1) || w > Duration::from_secs(3600) {
                err(
                    &[PathSeg::Key("rate_limit"), PathSeg::Key("window")],
                    "window must be between 1s and 1h".into(),
                );
            }
            rate_limit.window = w;
        }
    }
    if let Err(e) = phigate_sinks::config::validate(&file.sinks) {
        let messages = match e {
            phigate_sinks::Error::Config(m) => m,
            other => vec![other.to_string()],
        };
        for m in messages {
            err(&[PathSeg::Key("sinks")], m);
        }
    }
    let mut limits = Limits::default();
    if let Some(l) = &file.limits {
        let at = |k: &'static str| [PathSeg::Key("limits"), PathSeg::Key(k)];
        for (key, value, slot) in [
            (
                "request_header_timeout",
                l.request_header_timeout,
                &mut limits.request_header_timeout,
            ),
            (
                "request_body_timeout",
                l.request_body_timeout,
                &mut limits.request_body_timeout,
            ),
        ] {
            if let Some(v) = value {
                if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
                    err(&at(key), format!("{key} must be between 100ms and 10m"));
                }
                *slot = v;
            }
        }
        if let Some(n) = l.max_in_flight_per_client {
            limits.max_in_flight_per_client = n;
        }
    }
    let threads = file.threads.unwrap_or(2);
    if threads == 0 {
        err(&[PathSeg::Key("threads")], "threads must be at least 1".into());
    }

    match (listen, admin_listen, upstream_addr) {
        (Some(listen), Some(admin_listen), Some(address)) if errors.is_empty() => Ok(GatewayConfig {
            listen,
            admin_listen,
            upstream: UpstreamConfig {
                address,
                connect_timeout: file.upstream.connect_timeout.unwrap_or(Duration::from_secs(2)),
                read_timeout: file.upstream.read_timeout.unwrap_or(Duration::from_secs(30)),
                forward_authorization: file.upstream.forward_authorization.unwrap_or(true),
            },
            issuers,
            policies: base.join(&file.policies),
            audit,
            log_format: file.log.format.unwrap_or_default(),
            threads,
            shutdown_grace: file.shutdown_grace.unwrap_or(Duration::from_secs(5)),
            token_cache_entries: file
                .token_cache_entries
                .unwrap_or(phigate_token::DEFAULT_CACHE_ENTRIES),
            rate_limit,
            sinks: file.sinks.clone(),
            trusted_proxies,
            limits,
        }),
        _ => Err(errors),
    }
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream:
  address: 127.0.0.1:8081
issuers:
  - issuer: https://idp.example.com
    audiences: [phigate]
    jwks_uri: https://idp.example.com/jwks.json
    leeway: 10s
policies: policies
audit:
  dir: audit
"#;

    #[test]
    fn loads_a_valid_file_with_defaults() {
        let c = parse("g.yaml", GOOD, Path::new("/etc/phigate")).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.issuers[0].leeway, Duration::from_secs(10));
        assert_eq!(c.issuers[0].algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(c.policies, Path::new("/etc/phigate/policies"));
        assert_eq!(c.audit.queue, DEFAULT_AUDIT_QUEUE);
        assert_eq!(c.audit.dir, Path::new("/etc/phigate/audit"));
        assert_eq!(
            c.audit.durability,
            phigate_audit::Durability::Interval(Duration::from_millis(10))
        );
        assert!(c.upstream.forward_authorization);
    }

    #[test]
    fn reports_all_errors_with_locations() {
        let bad = r#"
listen: nowhere
admin_listen: 127.0.0.1:9090
upstream:
  address: also-nowhere
issuers:
  - issuer: https://idp.example.com
    audiences: []
    algorithms: [HS256, RS256]
    jwks_uri: ftp://x
policies: policies
audit:
  dir: audit
  queue_size: 0
"#;
        let errs = parse("g.yaml", bad, Path::new(".")).unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let joined = all.join("\n");
        for want in [
            "g.yaml:2:",
            "g.yaml:5:",
            "g.yaml:8:",
            "g.yaml:9:",
            "g.yaml:10:",
            "g.yaml:14:",
        ] {
            assert!(joined.contains(want), "missing {want} in\n{joined}");
        }
        assert!(joined.contains("never allowed"), "{joined}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let errs = parse(
            "g.yaml",
            &GOOD.replace("policies: policies", "policy: policies"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            errs[0].to_string().contains("unknown field `policy`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn needs_exactly_one_key_source() {
        let text = GOOD.replace("    jwks_uri: https://idp.example.com/jwks.json\n", "");
        let errs = parse("g.yaml", &text, Path::new(".")).unwrap_err();
        assert!(errs[0]
            .message
            .contains("exactly one of `jwks_uri`, `jwks_file` or `discovery: true`"));
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The commented sample in deploy/ must always load.
    #[test]
    fn deploy_sample_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gateway.yaml");
        let c = load(&path).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.issuers.len(), 1);
        assert_eq!(c.audit.queue, 10_000);
        assert!(c.policies.ends_with("policies/dev"));
        crate::policy_loader::load_dir(&c.policies).unwrap_or_else(|e| panic!("{e:?}"));
    }
}
