//! Validation of a [`GatewayFile`] into a [`GatewayConfig`]: every problem
//! reported together, each at its `file:line:column`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use phigate_token::{IssuerConfig, KeySource};
use phigate_yaml::{Diagnostic, Locator, PathSeg};

use super::file::{AuditFile, DurabilityFile, GatewayFile, IssuerFile};
use super::{parse_algorithm, AuditConfig, GatewayConfig, Limits, Origin, RateLimit, DEFAULT_AUDIT_QUEUE};

/// Read and validate a configuration file. Every problem is reported.
pub fn load(path: &Path) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::new(&name, None, format!("cannot read: {e}"))])?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&name, &text, base)
}

/// Collects problems at their location in one file.
pub(super) struct Problems<'a> {
    name: &'a str,
    loc: Locator,
    errors: Vec<Diagnostic>,
}

impl Problems<'_> {
    pub(super) fn at(&mut self, path: &[PathSeg<'_>], msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.name, self.loc.locate(path), msg.into()));
    }

    /// `value`, or an error "missing `key`" at `parent` when it is absent.
    pub(super) fn required<'v, T>(
        &mut self,
        parent: &[PathSeg<'_>],
        key: &str,
        value: &'v Option<T>,
    ) -> Option<&'v T> {
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

pub(super) fn address(
    p: &mut Problems<'_>,
    path: &[PathSeg<'_>],
    value: &str,
    example: &str,
) -> Option<SocketAddr> {
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
    parse_with_env(name, text, base, &|k| std::env::var(k).ok())
}

/// As [`parse`], with `env` for `${VAR}` substitution (tests pass their own).
pub fn parse_with_env(
    name: &str,
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let (file, errors, loc) = phigate_yaml::parse_all_located_env::<GatewayFile>(name, text, env);
    let mut p = Problems { name, loc, errors };
    let Some(file) = file else { return Err(p.errors) };
    let root: &[PathSeg<'_>] = &[];

    let listeners = super::network::listeners(&mut p, &file, base);
    let admin_listen = p
        .required(root, "admin_listen", &file.admin_listen)
        .and_then(|v| address(&mut p, &[PathSeg::Key("admin_listen")], v, "127.0.0.1:9090"));
    if listeners.iter().any(|l| Some(l.address) == admin_listen) {
        p.at(
            &[PathSeg::Key("admin_listen")],
            "admin listener must differ from the proxy listeners",
        );
    }
    let upstreams = super::network::upstreams(&mut p, &file, base);
    let forwarded = super::network::forwarded(file.forwarded_headers);
    let trusted_proxies = super::network::trusted_proxies(&mut p, &file);
    let issuers = issuers(&mut p, file.issuers.as_deref(), base);
    let policies = p.required(root, "policies", &file.policies).map(|d| base.join(d));
    let audit = p
        .required(root, "audit", &file.audit)
        .and_then(|a| audit(&mut p, a, base));

    let mut rate_limit = RateLimit::default();
    if let Some(r) = &file.rate_limit {
        let at = |k: &'static str| [PathSeg::Key("rate_limit"), PathSeg::Key(k)];
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
    let sessions = file
        .sessions
        .as_ref()
        .and_then(|s| super::access::sessions(&mut p, s, base));
    let dpop = file
        .dpop
        .as_ref()
        .map(|d| super::access::dpop(&mut p, d))
        .unwrap_or_default();
    let backchannel_logout = file
        .backchannel_logout
        .as_ref()
        .and_then(|l| super::access::backchannel_logout(&mut p, l));
    if backchannel_logout.is_some() && sessions.is_none() {
        p.at(
            &[PathSeg::Key("backchannel_logout")],
            "back-channel logout ends sessions: configure `sessions` too",
        );
    }
    let mut issuer_rules = std::collections::BTreeMap::new();
    for (i, f) in file.issuers.as_deref().unwrap_or_default().iter().enumerate() {
        let idle = f.sessions.as_ref().and_then(|s| s.idle_timeout);
        if let Some(t) = idle {
            let at = [
                PathSeg::Key("issuers"),
                PathSeg::Index(i),
                PathSeg::Key("sessions"),
                PathSeg::Key("idle_timeout"),
            ];
            if sessions.is_none() {
                p.at(&at, "a per-issuer idle_timeout needs the global `sessions` block");
            } else if t < Duration::from_secs(1) || t > Duration::from_secs(24 * 3600) {
                p.at(&at, "idle_timeout must be between 1s and 24h");
            }
        }
        if let Some(iss) = &f.issuer {
            issuer_rules.insert(
                iss.clone(),
                super::IssuerRules {
                    require_dpop: f.require_dpop.unwrap_or(false),
                    idle_timeout: idle,
                },
            );
        }
    }
    // Activity is written at most once per `write_interval`: it must be well
    // below every idle timeout an issuer sets, or another replica could end
    // a live session early. The default follows the shortest one.
    let mut sessions = sessions;
    if let Some(s) = sessions.as_mut() {
        let shortest = issuer_rules
            .values()
            .filter_map(|r| r.idle_timeout)
            .chain(s.idle_timeout)
            .min();
        match (s.write_interval, shortest) {
            (Some(w), Some(t)) if w >= t => {
                for (i, f) in file.issuers.as_deref().unwrap_or_default().iter().enumerate() {
                    if f.sessions
                        .as_ref()
                        .and_then(|x| x.idle_timeout)
                        .is_some_and(|t| w >= t)
                    {
                        p.at(
                            &[
                                PathSeg::Key("issuers"),
                                PathSeg::Index(i),
                                PathSeg::Key("sessions"),
                                PathSeg::Key("idle_timeout"),
                            ],
                            "idle_timeout must be longer than sessions.write_interval",
                        );
                    }
                }
            }
            (None, Some(t)) => {
                s.write_interval = Some((t / 10).clamp(Duration::from_millis(100), Duration::from_secs(30)));
            }
            _ => {}
        }
    }
    if file.threads == Some(0) {
        p.at(&[PathSeg::Key("threads")], "threads must be at least 1");
    }

    match (admin_listen, policies, audit) {
        (Some(admin_listen), Some(policies), Some(audit))
            if p.errors.is_empty() && !listeners.is_empty() && !upstreams.is_empty() =>
        {
            let first = listeners[0].address;
            let mut c = GatewayConfig::new(
                first,
                admin_listen,
                upstreams[0].clone(),
                issuers,
                policies,
                audit,
            );
            c.listeners = listeners;
            c.upstreams = upstreams;
            c.forwarded = forwarded;
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
            c.sessions = sessions;
            c.dpop = dpop;
            c.backchannel_logout = backchannel_logout;
            c.issuer_rules = issuer_rules;
            Ok(c)
        }
        _ => Err(p.errors),
    }
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
        if let Some(m) = f.max_token_lifetime {
            if m < Duration::from_secs(10) || m > Duration::from_secs(30 * 24 * 3600) {
                p.at(
                    &at("max_token_lifetime"),
                    "max_token_lifetime must be between 10s and 30d",
                );
            }
            c.max_token_lifetime = Some(m);
        }
        if let Some(intro) = &f.introspection {
            c.introspection = super::access::introspection(p, intro, i, base);
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
    if let Some(i) = a.intent {
        audit.intent = match i {
            super::file::IntentFile::Writes => super::IntentMode::Writes,
            super::file::IntentFile::All => super::IntentMode::All,
        };
    }
    if let Some(t) = a.drain_timeout {
        if t < Duration::from_millis(100) || t > Duration::from_secs(600) {
            p.at(
                &at("drain_timeout"),
                "drain_timeout must be between 100ms and 10m",
            );
        }
        audit.drain_timeout = t;
    }
    if let Some(n) = a.min_free_bytes {
        audit.min_free_bytes = n;
    }
    if let Some(c) = a.compress {
        audit.compress = c;
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
