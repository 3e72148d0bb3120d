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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phigate_policy::PolicySet;
use phigate_token::{Algorithm, IssuerConfig, KeySource};
use phigate_yaml::{Diagnostic, Location, Locator, PathSeg};
use serde::Deserialize;

/// `gateway.yaml` as written by operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Proxy listener, e.g. `0.0.0.0:8080` (required).
    #[serde(default)]
    pub listen: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9090` (required).
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The FHIR server (required).
    #[serde(default)]
    pub upstream: Option<UpstreamFile>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` of the FHIR server (plain HTTP/1.1; required).
    #[serde(default)]
    pub address: Option<String>,
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
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: UpstreamConfig,
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
            listen,
            admin_listen,
            upstream,
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

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub forward_authorization: bool,
}

impl UpstreamConfig {
    /// An upstream with the default timeouts (connect 2 s, read 30 s) that
    /// receives the client's `Authorization`.
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

/// Collects problems at their location in one file.
struct Problems<'a> {
    name: &'a str,
    loc: Locator,
    errors: Vec<Diagnostic>,
}

impl Problems<'_> {
    fn at(&mut self, path: &[PathSeg<'_>], msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.name, self.loc.locate(path), msg.into()));
    }

    /// `value`, or an error "missing `key`" at `parent` when it is absent.
    fn required<'v, T>(&mut self, parent: &[PathSeg<'_>], key: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            let mut at = parent.to_vec();
            at.push(PathSeg::Key(key));
            let owner = if parent.is_empty() {
                "the configuration".to_string()
            } else {
                format!("`{}`", describe(parent))
            };
            self.errors.push(Diagnostic::new(
                self.name,
                self.loc.locate(&at),
                format!("`{key}` is required in {owner}"),
            ));
        }
        value.as_ref()
    }
}

fn describe(path: &[PathSeg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn address(p: &mut Problems<'_>, path: &[PathSeg<'_>], value: &str, example: &str) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.at(path, format!("`{value}` is not an address like {example}"));
            None
        }
    }
}

/// Validate configuration text; `base` resolves relative paths. Every
/// problem — serde's and the checks below — is reported together.
pub fn parse(name: &str, text: &str, base: &Path) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let (file, errors, loc) = phigate_yaml::parse_all_located::<GatewayFile>(name, text);
    let mut p = Problems { name, loc, errors };
    let Some(file) = file else { return Err(p.errors) };
    let root: &[PathSeg<'_>] = &[];

    let listen = p
        .required(root, "listen", &file.listen)
        .and_then(|v| address(&mut p, &[PathSeg::Key("listen")], v, "0.0.0.0:8080"));
    let admin_listen = p
        .required(root, "admin_listen", &file.admin_listen)
        .and_then(|v| address(&mut p, &[PathSeg::Key("admin_listen")], v, "127.0.0.1:9090"));
    if listen.is_some() && listen == admin_listen {
        p.at(
            &[PathSeg::Key("admin_listen")],
            "admin listener must differ from the proxy listener",
        );
    }
    let upstream = p
        .required(root, "upstream", &file.upstream)
        .and_then(|u| upstream(&mut p, u));
    let issuers = issuers(&mut p, file.issuers.as_deref(), base);
    let policies = p.required(root, "policies", &file.policies).map(|d| base.join(d));
    let audit = p
        .required(root, "audit", &file.audit)
        .and_then(|a| audit(&mut p, a, base));

    let mut rate_limit = RateLimit::default();
    let mut trusted_proxies = Vec::new();
    if let Some(r) = &file.rate_limit {
        let at = |k: &'static str| [PathSeg::Key("rate_limit"), PathSeg::Key(k)];
        for (i, c) in r.trusted_proxies.iter().enumerate() {
            match c.parse::<crate::limiter::Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(m) => p.at(
                    &[
                        PathSeg::Key("rate_limit"),
                        PathSeg::Key("trusted_proxies"),
                        PathSeg::Index(i),
                    ],
                    m,
                ),
            }
        }
        if let Some(n) = r.invalid_tokens {
            rate_limit.invalid_tokens = n;
        }
        if let Some(w) = r.window {
            if w < Duration::from_secs(1) || w > Duration::from_secs(3600) {
                p.at(&at("window"), "window must be between 1s and 1h");
            }
            rate_limit.window = w;
        }
    }
    let sinks = match phigate_sinks::config::validate(&file.sinks) {
        Ok(v) => v,
        Err(problems) => {
            for problem in problems {
                let mut at = vec![PathSeg::Key("sinks"), PathSeg::Index(problem.index)];
                if let Some(k) = problem.key {
                    at.push(PathSeg::Key(k));
                }
                p.at(&at, problem.message);
            }
            Vec::new()
        }
    };
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
                    p.at(&at(key), format!("{key} must be between 100ms and 10m"));
                }
                *slot = v;
            }
        }
        if let Some(n) = l.max_in_flight_per_client {
            limits.max_in_flight_per_client = n;
        }
    }
    let mut paging = crate::paging::PagingConfig::default();
    if let Some(pg) = &file.paging {
        if let Some(t) = pg.ttl {
            if t < Duration::from_secs(1) || t > Duration::from_secs(24 * 3600) {
                p.at(
                    &[PathSeg::Key("paging"), PathSeg::Key("ttl")],
                    "ttl must be between 1s and 24h",
                );
            }
            paging.ttl = t;
        }
        if let Some(n) = pg.max_links {
            paging.max_links = n;
        }
    }
    if file.threads == Some(0) {
        p.at(&[PathSeg::Key("threads")], "threads must be at least 1");
    }

    match (listen, admin_listen, upstream, policies, audit) {
        (Some(listen), Some(admin_listen), Some(upstream), Some(policies), Some(audit))
            if p.errors.is_empty() =>
        {
            let mut c = GatewayConfig::new(listen, admin_listen, upstream, issuers, policies, audit);
            c.policies_origin = Some(Origin {
                file: name.to_string(),
                location: p.loc.locate(&[PathSeg::Key("policies")]),
            });
            if let Some(f) = file.log.as_ref().and_then(|l| l.format) {
                c.log_format = f;
            }
            if let Some(t) = file.threads {
                c.threads = t;
            }
            if let Some(g) = file.shutdown_grace {
                c.shutdown_grace = g;
            }
            if let Some(n) = file.token_cache_entries {
                c.token_cache_entries = n;
            }
            c.rate_limit = rate_limit;
            c.trusted_proxies = trusted_proxies;
            c.sinks = sinks;
            c.limits = limits;
            c.paging = paging;
            Ok(c)
        }
        _ => Err(p.errors),
    }
}

fn upstream(p: &mut Problems<'_>, u: &UpstreamFile) -> Option<UpstreamConfig> {
    let at = [PathSeg::Key("upstream")];
    let address = p.required(&at, "address", &u.address).and_then(|a| {
        address(
            p,
            &[PathSeg::Key("upstream"), PathSeg::Key("address")],
            a,
            "127.0.0.1:8081",
        )
    })?;
    let mut c = UpstreamConfig::new(address);
    if let Some(t) = u.connect_timeout {
        c.connect_timeout = t;
    }
    if let Some(t) = u.read_timeout {
        c.read_timeout = t;
    }
    if let Some(f) = u.forward_authorization {
        c.forward_authorization = f;
    }
    Some(c)
}

fn issuers(p: &mut Problems<'_>, files: Option<&[IssuerFile]>, base: &Path) -> Vec<IssuerConfig> {
    let files = files.unwrap_or_default();
    if files.is_empty() {
        p.at(&[PathSeg::Key("issuers")], "at least one issuer is required");
    }
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let here = [PathSeg::Key("issuers"), PathSeg::Index(i)];
        let at = |k: &'static str| [PathSeg::Key("issuers"), PathSeg::Index(i), PathSeg::Key(k)];
        let issuer = p
            .required(&here, "issuer", &f.issuer)
            .cloned()
            .unwrap_or_default();
        if f.issuer.is_some() {
            if issuer.is_empty() {
                p.at(&at("issuer"), "issuer must not be empty");
            } else if issuers.iter().any(|c| c.issuer == issuer) {
                p.at(&at("issuer"), format!("duplicate issuer `{issuer}`"));
            }
        }
        let audiences = p
            .required(&here, "audiences", &f.audiences)
            .cloned()
            .unwrap_or_default();
        if f.audiences.is_some() && (audiences.is_empty() || audiences.iter().any(String::is_empty)) {
            p.at(&at("audiences"), "at least one non-empty audience is required");
        }
        let source = match (&f.jwks_uri, &f.jwks_file) {
            (None, None) if f.discovery == Some(true) => {
                if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                    p.at(&at("discovery"), "OIDC discovery needs an http(s) issuer URL");
                }
                Some(KeySource::Discovery)
            }
            (Some(_), _) | (_, Some(_)) if f.discovery == Some(true) => {
                p.at(
                    &at("discovery"),
                    "`discovery: true` excludes `jwks_uri` and `jwks_file`",
                );
                None
            }
            (Some(u), None) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    p.at(&at("jwks_uri"), format!("`{u}` must be an http(s) URL"));
                }
                Some(KeySource::JwksUri(u.clone()))
            }
            (None, Some(path)) => Some(KeySource::JwksFile(base.join(path))),
            _ => {
                p.at(
                    &here,
                    "exactly one of `jwks_uri`, `jwks_file` or `discovery: true` is required",
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
                Err(msg) => p.at(&at("algorithms"), msg),
            }
        }
        if algorithms.is_empty() && f.algorithms.is_some() {
            p.at(&at("algorithms"), "at least one algorithm is required");
        }
        for (key, value) in [("scope_claim", &f.scope_claim), ("roles_claim", &f.roles_claim)] {
            if let Some(v) = value {
                if v.is_empty() || v.split('.').any(str::is_empty) {
                    p.at(&at(key), format!("`{v}` is not a claim name or dotted path"));
                }
            }
        }
        if f.leeway.is_some_and(|l| l > Duration::from_secs(300)) {
            p.at(&at("leeway"), "leeway above 5m defeats expiry; keep it small");
        }
        if f.allowed_typ.as_ref().is_some_and(Vec::is_empty) {
            p.at(&at("allowed_typ"), "allowed_typ must list at least one value");
        }
        if f.max_token_bytes.is_some_and(|n| !(512..=65536).contains(&n)) {
            p.at(
                &at("max_token_bytes"),
                "max_token_bytes must be between 512 and 65536",
            );
        }
        let Some(source) = source else { continue };
        let mut c = IssuerConfig::new(issuer, audiences, source);
        c.algorithms = algorithms;
        if let Some(l) = f.leeway {
            c.leeway = l;
        }
        if let Some(t) = f.jwks_ttl {
            c.jwks_ttl = t;
        }
        if let Some(t) = f.unknown_kid_cooldown {
            c.unknown_kid_cooldown = t;
        }
        c.scope_claim = f.scope_claim.clone();
        if let Some(m) = f.max_stale {
            c.max_stale = m;
        }
        if let Some(r) = f.require_typ {
            c.require_typ = r;
        }
        if let Some(t) = &f.allowed_typ {
            c.allowed_typ = t.clone();
        }
        if let Some(n) = f.max_token_bytes {
            c.max_token_bytes = n;
        }
        if let Some(r) = &f.roles_claim {
            c.roles_claim = r.clone();
        }
        issuers.push(c);
    }
    issuers
}

fn audit(p: &mut Problems<'_>, a: &AuditFile, base: &Path) -> Option<AuditConfig> {
    let here = [PathSeg::Key("audit")];
    let at = |k: &'static str| [PathSeg::Key("audit"), PathSeg::Key(k)];
    let dir = p.required(&here, "dir", &a.dir).map(|d| base.join(d));
    let mut audit = AuditConfig::new(dir.clone().unwrap_or_default());
    audit.mirror = a.file.as_ref().map(|f| base.join(f));
    if audit.mirror.as_ref().is_some_and(|m| m.starts_with(&audit.dir)) && dir.is_some() {
        p.at(
            &at("file"),
            "the mirror file must not live inside the spool directory",
        );
    }
    let interval = a.fsync_interval.unwrap_or(Duration::from_millis(10));
    if a.fsync_interval.is_some() && a.durability.is_some_and(|d| d != DurabilityFile::Interval) {
        p.at(
            &at("fsync_interval"),
            "fsync_interval only applies to `durability: interval`",
        );
    }
    if interval.is_zero() || interval > Duration::from_secs(1) {
        p.at(&at("fsync_interval"), "fsync_interval must be between 1ms and 1s");
    }
    audit.durability = match a.durability.unwrap_or(DurabilityFile::Interval) {
        DurabilityFile::Interval => phigate_audit::Durability::Interval(interval),
        DurabilityFile::PerRequest => phigate_audit::Durability::PerRequest,
        DurabilityFile::None => phigate_audit::Durability::None,
    };
    if let Some(n) = a.segment_max_bytes {
        if n < 64 * 1024 {
            p.at(
                &at("segment_max_bytes"),
                "segment_max_bytes must be at least 65536",
            );
        }
        audit.segment_max_bytes = n;
    }
    if let Some(n) = a.max_bytes {
        if n < audit.segment_max_bytes {
            p.at(&at("max_bytes"), "max_bytes must be at least segment_max_bytes");
        }
        audit.max_bytes = n;
    }
    audit.queue = a.queue_size.unwrap_or(DEFAULT_AUDIT_QUEUE);
    if audit.queue == 0 {
        p.at(&at("queue_size"), "queue_size must be at least 1");
    }
    if let Some(c) = &a.checkpoint {
        let cp = [PathSeg::Key("audit"), PathSeg::Key("checkpoint")];
        let every = p.required(&cp, "every", &c.every).copied();
        let key = p.required(&cp, "key", &c.key).map(|k| base.join(k));
        if every == Some(0) {
            p.at(
                &[
                    PathSeg::Key("audit"),
                    PathSeg::Key("checkpoint"),
                    PathSeg::Key("every"),
                ],
                "checkpoint.every must be at least 1",
            );
        }
        if let (Some(every), Some(key)) = (every, key) {
            audit.checkpoint = Some((every, key));
        }
    }
    dir.map(|_| audit)
}

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
