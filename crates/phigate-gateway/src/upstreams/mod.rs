//! Named upstreams: which upstream serves a path (longest prefix, optional
//! rewrite), which of its addresses gets the next request (round robin over
//! healthy addresses), and the pingora peer to connect with.
//!
//! Built once from plain [`UpstreamSpec`]s ([`Upstreams::build`]); the
//! configuration loader maps the YAML file onto them. Balancing, DNS
//! re-resolution and active health checks are pingora-load-balancing's: one
//! `LoadBalancer<RoundRobin>` per upstream with a DNS [`ServiceDiscovery`]
//! and, when configured, an [`HttpHealthCheck`] per address, run by the
//! pingora background services that `build` returns.
//!
//! Semantics, in one place:
//! - **First resolution**: `build` resolves every hostname once, blocking,
//!   on helper threads with one overall budget ([`BUILD_RESOLVE_BUDGET`]), so
//!   the first request already has addresses. A name that does not resolve
//!   in time starts with none (a warning is logged) and is retried as soon as
//!   the background service starts, then every `resolve_interval`. Call
//!   `build` at start-up, not on a thread that serves traffic.
//! - **DNS failures** keep the last good resolution of that address; a change
//!   of the resolved set and the start and end of failures are logged.
//! - **Active health**: every address counts as healthy until a check says
//!   otherwise (pingora's initial state), so also before the first check
//!   (which runs when the service starts) and for newly resolved IPs. Without
//!   a health check every resolved address counts as healthy. An address
//!   flips after `unhealthy_threshold` consecutive failed checks and back
//!   after `healthy_threshold` passed ones; a check passes on any 2xx.
//! - **Passive health**: after [`PASSIVE_FAILURE_THRESHOLD`] consecutive
//!   connect failures ([`Upstreams::report_connect_failure`]) an address is
//!   skipped for [`PASSIVE_COOLDOWN`]; [`Upstreams::report_success`] ends it
//!   early. After the cooldown it gets requests again (half open): one more
//!   failure takes it out for another cooldown. Passive state only steers:
//!   when every actively healthy address is cooling down, they are tried
//!   anyway (a "panic" fallback, as Envoy does), because a connection attempt
//!   is better than refusing everything for the cooldown; `any_healthy`
//!   (readiness of an upstream, 503 `upstream_unavailable`) follows active
//!   health only.
//! - **TLS**: the SNI is always set (explicit `tls.sni`, else the address's
//!   host, also an IP literal), because pingora's rustls connector skips
//!   certificate verification for an empty SNI. CA, client certificate and
//!   key are read and checked completely in `build` (pingora `unwrap`s on
//!   what it cannot parse). Each upstream has its own connection-reuse group
//!   (`HttpPeer::group_key`), since pingora's reuse hash ignores the per-peer
//!   CA.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::tls::CaType;
use pingora_core::services::background::GenBackgroundService;
use pingora_core::services::ServiceWithDependents;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, Extensions, LoadBalancer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::{info, warn};

/// How long `build` waits, in total, for the first resolution of hostnames.
pub const BUILD_RESOLVE_BUDGET: Duration = Duration::from_secs(5);
/// How long one background DNS lookup may take.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive connect failures that take an address out of selection.
pub const PASSIVE_FAILURE_THRESHOLD: u32 = 1;
/// How long an address stays out of selection after connect failures.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(5);
/// At most this many IPs are used per hostname (sorted, the first ones).
const MAX_ADDRS_PER_NAME: usize = 64;

/// One upstream as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: String,
    /// Canonical path prefix; `/` serves everything. A trailing `/` is
    /// ignored (`/fhir/` is `/fhir`).
    pub prefix: String,
    /// Replaces `prefix` before forwarding (trailing `/` ignored, `/` =
    /// remove the prefix).
    pub rewrite: Option<String>,
    /// `host:port`, `ip:port` or `[ipv6]:port`; hostnames are resolved.
    pub addresses: Vec<String>,
    pub tls: Option<UpstreamTlsSpec>,
    pub health_check: Option<HealthCheckSpec>,
    /// DNS re-resolution period of hostnames.
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// TLS to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// PEM CA bundle trusted for this upstream instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Server name sent and verified; default: the host of each address.
    pub sni: Option<String>,
    /// Verify the certificate chain and name (`false`: neither).
    pub verify: bool,
    /// PEM client certificate chain (leaf first), with `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: Option<PathBuf>,
}

/// Active HTTP health check of every address of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// Path (and optional query) of the `GET`.
    pub path: String,
    pub interval: Duration,
    /// Limit for one whole check: connect, TLS, request and response head.
    pub timeout: Duration,
    /// Consecutive passed checks that make an unhealthy address healthy.
    pub healthy_threshold: usize,
    /// Consecutive failed checks that make a healthy address unhealthy.
    pub unhealthy_threshold: usize,
}

/// Why [`Upstreams::build`] refused the specs.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{upstream}`: the name is used by another upstream")]
    DuplicateName { upstream: String },
    #[error("upstream `{upstream}`: prefix `{prefix}` is already served by upstream `{other}`")]
    DuplicatePrefix {
        upstream: String,
        prefix: String,
        other: String,
    },
    #[error("upstream `{upstream}`: no addresses")]
    NoAddresses { upstream: String },
    #[error("upstream `{upstream}`: {field} `{value}`: {problem}")]
    Invalid {
        upstream: String,
        field: &'static str,
        value: String,
        problem: String,
    },
    #[error("upstream `{upstream}`: cannot read tls.{field} `{}`: {error}", .path.display())]
    ReadFile {
        upstream: String,
        field: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("upstream `{upstream}`: tls.{field} `{}`: {problem}", .path.display())]
    BadPem {
        upstream: String,
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("upstream `{upstream}`: tls.cert and tls.key go together, only tls.{given} is set")]
    CertKeyPair { upstream: String, given: &'static str },
    #[error(
        "upstream `{upstream}`: tls.cert `{}` and tls.key `{}` are not a usable client certificate: {problem}",
        .cert.display(), .key.display()
    )]
    ClientCert {
        upstream: String,
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

/// No address of the upstream may be used now: none resolved, all
/// unhealthy, cooling down after connect failures, or excluded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream `{upstream}`: no healthy address ({known} known, {excluded} excluded by the caller)")]
pub struct NoHealthyAddress {
    pub upstream: String,
    /// Resolved addresses at the time of the selection.
    pub known: usize,
    pub excluded: usize,
}

/// The upstream serving a request and the target to send it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub upstream: Arc<Upstream>,
    /// Path with the prefix replaced by the rewrite, plus the query as given.
    pub target: String,
}

/// The address chosen for one connection attempt.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Ready to connect: address, TLS on/off, SNI, verification, per-peer
    /// CA, client certificate, connect and read timeouts, reuse group.
    pub peer: HttpPeer,
    pub addr: SocketAddr,
    pub upstream: String,
    /// The configured address this IP came from (`host:port`).
    pub address: String,
    /// `host[:port]` of that address (port omitted when it is the scheme's
    /// default), e.g. for the upstream `Host` header.
    pub authority: String,
}

/// One address of one upstream, for `phigate_upstream_healthy` and
/// `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressHealth {
    pub upstream: String,
    /// `ip:port`, or `host:port (ip:port)` for hostnames, or
    /// `host:port (unresolved)` while a hostname has no address.
    pub address: String,
    /// Active health (always true without a health check; false when
    /// unresolved).
    pub healthy: bool,
    /// Out of selection after connect failures, for the cooldown.
    pub passive_down: bool,
}

/// The upstreams of a gateway.
pub struct Upstreams {
    /// In configuration order.
    upstreams: Vec<Arc<Upstream>>,
    /// Indices into `upstreams`, longest prefix first.
    by_prefix: Vec<usize>,
}

/// One upstream at run time.
pub struct Upstream {
    name: String,
    /// Normalised: no trailing `/`; the root prefix is empty.
    prefix: String,
    /// Normalised like `prefix`.
    rewrite: Option<String>,
    tls: bool,
    addresses: Vec<Address>,
    lb: Arc<LoadBalancer<RoundRobin>>,
    /// Current resolution of each configured address (same order).
    resolved: Arc<Mutex<Vec<Resolution>>>,
    passive: Mutex<HashMap<SocketAddr, Passive>>,
    passive_cooldown: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("prefix", &self.prefix())
            .field("rewrite", &self.rewrite)
            .field("tls", &self.tls)
            .field(
                "addresses",
                &self.addresses.iter().map(|a| &a.written).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Upstream {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The normalised prefix (`/` for the root).
    pub fn prefix(&self) -> &str {
        if self.prefix.is_empty() {
            "/"
        } else {
            &self.prefix
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The configured addresses, as written.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.addresses.iter().map(|a| a.written.as_str())
    }
}

/// A configured address.
struct Address {
    written: String,
    host: Host,
    port: u16,
    authority: String,
    /// TLS, SNI, CA, client certificate, timeouts; `_address` is replaced.
    peer: HttpPeer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Which configured address a backend came from (`Backend::ext`).
#[derive(Debug, Clone, Copy)]
struct AddressIndex(usize);

/// The resolution of one configured address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Resolution {
    /// Last good answer (sorted, deduplicated); empty until one.
    addrs: Vec<SocketAddr>,
    /// The latest lookup failed (for logging transitions).
    failing: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Passive {
    consecutive_failures: u32,
    down_until: Option<Instant>,
}

impl Passive {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| now < t)
    }
}

/// The background service of one upstream: its load balancer's discovery and
/// health-check loop.
type UpstreamService = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// What the pingora server must run for the upstreams (`Server::add_services`).
pub type BackgroundServices = Vec<Box<dyn ServiceWithDependents>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upstreams {
    /// Validate `specs` and build the upstreams, plus the background services
    /// the pingora server must run (`Server::add_services`): one per upstream
    /// that has hostnames to re-resolve or a health check. Blocks for at most
    /// [`BUILD_RESOLVE_BUDGET`] resolving hostnames (see the module docs).
    pub fn build(specs: Vec<UpstreamSpec>) -> Result<(Arc<Upstreams>, BackgroundServices), UpstreamError> {
        Self::build_with_cooldown(specs, PASSIVE_COOLDOWN)
    }

    fn build_with_cooldown(
        specs: Vec<UpstreamSpec>,
        passive_cooldown: Duration,
    ) -> Result<(Arc<Upstreams>, BackgroundServices), UpstreamError> {
        let mut checked = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == spec.name) {
                return Err(UpstreamError::DuplicateName {
                    upstream: spec.name.clone(),
                });
            }
            let c = check_spec(spec)?;
            if let Some(other) = checked
                .iter()
                .find(|o: &&CheckedSpec| o.prefix == c.prefix)
                .map(|o| o.name.clone())
            {
                return Err(UpstreamError::DuplicatePrefix {
                    upstream: spec.name.clone(),
                    prefix: spec.prefix.clone(),
                    other,
                });
            }
            checked.push(c);
        }

        // First resolution of every hostname, all at once.
        let names: Vec<(String, u16)> = checked
            .iter()
            .flat_map(|c| c.addresses.iter())
            .filter_map(|a| match &a.host {
                Host::Name(n) => Some((n.clone(), a.port)),
                Host::Ip(_) => None,
            })
            .collect();
        let first = resolve_blocking(&names, BUILD_RESOLVE_BUDGET);

        let mut upstreams = Vec::with_capacity(checked.len());
        let mut services: BackgroundServices = Vec::new();
        for c in checked {
            let (upstream, service) = build_upstream(c, &first, passive_cooldown)?;
            upstreams.push(Arc::new(upstream));
            if let Some(s) = service {
                services.push(Box::new(s));
            }
        }
        let mut by_prefix: Vec<usize> = (0..upstreams.len()).collect();
        by_prefix.sort_by_key(|&i| std::cmp::Reverse(upstreams[i].prefix.len()));
        Ok((Arc::new(Upstreams { upstreams, by_prefix }), services))
    }

    /// All upstreams, in configuration order.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// The upstream with the longest prefix matching `target` on a path
    /// segment boundary, and the target to forward. `target` is a canonical
    /// origin-form target: path plus optional `?query`; anything not starting
    /// with `/` matches nothing. See [`rewrite_target`].
    pub fn route(&self, target: &str) -> Option<Routed> {
        self.by_prefix.iter().find_map(|&i| {
            let u = &self.upstreams[i];
            rewrite_target(&u.prefix, u.rewrite.as_deref(), target).map(|target| Routed {
                upstream: Arc::clone(u),
                target,
            })
        })
    }

    /// Round robin over the addresses of `upstream` that are actively
    /// healthy, not cooling down after connect failures and not in `exclude`
    /// (addresses already tried by this request); when every such address
    /// is cooling down, over those (see the module doc: passive state only
    /// steers).
    pub fn select(&self, upstream: &Upstream, exclude: &[SocketAddr]) -> Result<Selected, NoHealthyAddress> {
        let now = Instant::now();
        let backends = upstream.lb.backends().get_backend();
        let chosen = {
            let passive = lock(&upstream.passive);
            let pick = |respect_passive: bool| {
                let accept = |b: &Backend, healthy: bool| {
                    let (Some(addr), Some(_)) = (b.addr.as_inet(), b.ext.get::<AddressIndex>()) else {
                        return false;
                    };
                    healthy
                        && !exclude.contains(addr)
                        && !(respect_passive && passive.get(addr).is_some_and(|p| p.is_down(now)))
                };
                upstream
                    .lb
                    .select_with(b"", 2 * backends.len() + 2, accept)
                    // A concurrently advanced round-robin counter can make the
                    // bounded walk miss an acceptable address: sweep them all.
                    .or_else(|| {
                        backends
                            .iter()
                            .find(|b| accept(b, upstream.lb.backends().ready(b)))
                            .cloned()
                    })
            };
            pick(true).or_else(|| pick(false))
        };
        let found = chosen.and_then(|b| {
            let addr = *b.addr.as_inet()?;
            let a = upstream.addresses.get(b.ext.get::<AddressIndex>()?.0)?;
            let mut peer = a.peer.clone();
            peer._address = PeerAddr::Inet(addr);
            Some(Selected {
                peer,
                addr,
                upstream: upstream.name.clone(),
                address: a.written.clone(),
                authority: a.authority.clone(),
            })
        });
        found.ok_or_else(|| NoHealthyAddress {
            upstream: upstream.name.clone(),
            known: backends.len(),
            excluded: exclude.len(),
        })
    }

    /// A connection to `addr` could not be established (connect, TLS
    /// handshake): after [`PASSIVE_FAILURE_THRESHOLD`] in a row the address
    /// is skipped for the cooldown.
    pub fn report_connect_failure(&self, upstream: &Upstream, addr: SocketAddr) {
        let now = Instant::now();
        let mut passive = lock(&upstream.passive);
        // Forget addresses that neither cool down nor count failures any more
        // and are gone from the resolution, so DNS churn cannot grow the map.
        if passive.len() > 64 {
            let known = upstream.lb.backends().get_backend();
            passive.retain(|a, p| p.is_down(now) || known.iter().any(|b| b.addr.as_inet() == Some(a)));
        }
        let p = passive.entry(addr).or_default();
        p.consecutive_failures = p.consecutive_failures.saturating_add(1);
        if p.consecutive_failures >= PASSIVE_FAILURE_THRESHOLD {
            if !p.is_down(now) {
                warn!(
                    upstream = %upstream.name,
                    address = %addr,
                    cooldown = ?upstream.passive_cooldown,
                    "upstream address failed to connect; skipped for the cooldown"
                );
            }
            p.down_until = Some(now + upstream.passive_cooldown);
        }
    }

    /// A connection to `addr` succeeded: its passive failure state is reset.
    pub fn report_success(&self, upstream: &Upstream, addr: SocketAddr) {
        let mut passive = lock(&upstream.passive);
        if let Some(p) = passive.remove(&addr) {
            if p.is_down(Instant::now()) {
                info!(upstream = %upstream.name, address = %addr, "upstream address connects again");
            }
        }
    }

    /// Every known address of every upstream, with its health.
    pub fn health(&self) -> Vec<AddressHealth> {
        let now = Instant::now();
        let mut out = Vec::new();
        for u in &self.upstreams {
            let passive = lock(&u.passive);
            for b in u.lb.backends().get_backend().iter() {
                let (Some(addr), Some(i)) = (b.addr.as_inet(), b.ext.get::<AddressIndex>()) else {
                    continue;
                };
                let address = match u.addresses.get(i.0) {
                    Some(a) if matches!(a.host, Host::Name(_)) => format!("{} ({addr})", a.written),
                    _ => addr.to_string(),
                };
                out.push(AddressHealth {
                    upstream: u.name.clone(),
                    address,
                    healthy: u.lb.backends().ready(b),
                    passive_down: passive.get(addr).is_some_and(|p| p.is_down(now)),
                });
            }
            drop(passive);
            for (a, r) in u.addresses.iter().zip(lock(&u.resolved).iter()) {
                if r.addrs.is_empty() {
                    out.push(AddressHealth {
                        upstream: u.name.clone(),
                        address: format!("{} (unresolved)", a.written),
                        healthy: false,
                        passive_down: false,
                    });
                }
            }
        }
        out
    }

    /// Every resolved address of every upstream with the peer `select`
    /// would build for it (`config check --online` connects to each), and
    /// every configured address that did not resolve (`Err`).
    pub fn all_peers(&self) -> Vec<(String, String, Result<HttpPeer, String>)> {
        let mut out = Vec::new();
        for u in &self.upstreams {
            for b in u.lb.backends().get_backend().iter() {
                let (Some(addr), Some(i)) = (b.addr.as_inet(), b.ext.get::<AddressIndex>()) else {
                    continue;
                };
                let Some(a) = u.addresses.get(i.0) else { continue };
                let mut peer = a.peer.clone();
                peer._address = PeerAddr::Inet(*addr);
                let label = match a.host {
                    Host::Name(_) => format!("{} ({addr})", a.written),
                    _ => addr.to_string(),
                };
                out.push((u.name.clone(), label, Ok(peer)));
            }
            for (a, r) in u.addresses.iter().zip(lock(&u.resolved).iter()) {
                if r.addrs.is_empty() {
                    out.push((
                        u.name.clone(),
                        a.written.clone(),
                        Err("did not resolve".to_string()),
                    ));
                }
            }
        }
        out
    }

    /// Whether `select` would find an address now (without exclusions):
    /// some address passes its active health checks (or has none).
    pub fn any_healthy(&self, upstream: &Upstream) -> bool {
        upstream
            .lb
            .backends()
            .get_backend()
            .iter()
            .any(|b| b.addr.as_inet().is_some() && upstream.lb.backends().ready(b))
    }
}

/// Forward `target` (path plus optional `?query`) of a request matching
/// `prefix`: `None` when it does not match. `prefix` and `rewrite` are
/// normalised (no trailing `/`, root = empty). A match is on a segment
/// boundary: `/fhir` matches `/fhir`, `/fhir/…` and `/fhir?…`, not `/fhirx`;
/// the root matches every target starting with `/`. The matched prefix is
/// replaced by `rewrite` (the query kept as is); an empty result is `/`.
pub fn rewrite_target(prefix: &str, rewrite: Option<&str>, target: &str) -> Option<String> {
    if !target.starts_with('/') {
        return None;
    }
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    let matches = path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'));
    if !matches {
        return None;
    }
    let Some(rewrite) = rewrite else {
        return Some(target.to_string());
    };
    let rest = &path[prefix.len()..];
    let mut out = String::with_capacity(rewrite.len() + rest.len() + query.len() + 1);
    out.push_str(rewrite);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out.push_str(query);
    Some(out)
}

/// `/a/b/` → `/a/b`, `/` → `` (the root).
fn normalize_prefix(p: &str) -> String {
    p.trim_end_matches('/').to_string()
}

/// Why `v` cannot be a `prefix` or `rewrite` (an absolute, plain ASCII path
/// without query, fragment, percent-encoding, `//` or dot segments).
pub fn path_problem(v: &str) -> Option<&'static str> {
    if !v.starts_with('/') {
        Some("must start with `/`")
    } else if v
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
    {
        Some("must be ASCII without spaces or control characters")
    } else if v.contains(['?', '#', '%']) {
        Some("must be a plain path (no query, fragment or percent-encoding)")
    } else if v.contains("//") {
        Some("must not contain `//`")
    } else if v.split('/').any(|s| s == "." || s == "..") {
        Some("must not contain `.` or `..` segments")
    } else {
        None
    }
}

/// A spec that passed the checks that need no I/O besides reading files.
struct CheckedSpec {
    name: String,
    prefix: String,
    rewrite: Option<String>,
    addresses: Vec<ParsedAddress>,
    tls: Option<TlsMaterial>,
    health_check: Option<HealthCheckSpec>,
    resolve_interval: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
}

struct ParsedAddress {
    written: String,
    host: Host,
    port: u16,
}

struct TlsMaterial {
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

fn invalid(upstream: &str, field: &'static str, value: &str, problem: impl Into<String>) -> UpstreamError {
    UpstreamError::Invalid {
        upstream: upstream.to_string(),
        field,
        value: value.to_string(),
        problem: problem.into(),
    }
}

fn check_spec(spec: &UpstreamSpec) -> Result<CheckedSpec, UpstreamError> {
    let name = spec.name.as_str();
    if let Some(m) = path_problem(&spec.prefix) {
        return Err(invalid(name, "prefix", &spec.prefix, m));
    }
    if let Some(r) = &spec.rewrite {
        if let Some(m) = path_problem(r) {
            return Err(invalid(name, "rewrite", r, m));
        }
    }
    if spec.addresses.is_empty() {
        return Err(UpstreamError::NoAddresses {
            upstream: name.to_string(),
        });
    }
    let addresses = spec
        .addresses
        .iter()
        .map(|a| parse_address(a).map_err(|m| invalid(name, "address", a, m)))
        .collect::<Result<Vec<_>, _>>()?;
    for (field, d) in [
        ("resolve_interval", spec.resolve_interval),
        ("connect_timeout", spec.connect_timeout),
        ("read_timeout", spec.read_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(name, field, "0s", "must be greater than zero"));
        }
    }
    if let Some(h) = &spec.health_check {
        if !h.path.starts_with('/')
            || h.path.contains('#')
            || h.path
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        {
            return Err(invalid(
                name,
                "health_check.path",
                &h.path,
                "must start with `/`, ASCII without spaces, control characters or `#`",
            ));
        }
        for (field, d) in [
            ("health_check.interval", h.interval),
            ("health_check.timeout", h.timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(name, field, "0s", "must be greater than zero"));
            }
        }
        for (field, n) in [
            ("health_check.healthy_threshold", h.healthy_threshold),
            ("health_check.unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if n == 0 {
                return Err(invalid(name, field, "0", "must be at least 1"));
            }
        }
    }
    let tls = spec.tls.as_ref().map(|t| load_tls(name, t)).transpose()?;
    Ok(CheckedSpec {
        name: name.to_string(),
        prefix: normalize_prefix(&spec.prefix),
        rewrite: spec.rewrite.as_deref().map(normalize_prefix),
        addresses,
        tls,
        health_check: spec.health_check.clone(),
        resolve_interval: spec.resolve_interval,
        connect_timeout: spec.connect_timeout,
        read_timeout: spec.read_timeout,
    })
}

/// Whether `v` is a usable upstream address (`ip:port`, `[ipv6]:port` or
/// `hostname:port`); the problem otherwise. Used by the config loader, so
/// both agree.
pub fn check_address(v: &str) -> Result<(), String> {
    parse_address(v).map(|_| ())
}

/// `ip:port`, `[ipv6]:port` or `hostname:port`.
fn parse_address(v: &str) -> Result<ParsedAddress, String> {
    if let Ok(sa) = v.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port must be 1-65535".into());
        }
        return Ok(ParsedAddress {
            written: v.to_string(),
            host: Host::Ip(sa.ip()),
            port: sa.port(),
        });
    }
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err("not host:port".into());
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err("port must be 1-65535".into()),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if host.contains([':', '[', ']']) {
        return Err("not an IP address (IPv6 needs brackets: `[::1]:443`) or hostname".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(format!("`{host}` is not a hostname or IP address"));
    }
    if ServerName::try_from(host).is_err() {
        return Err(format!("`{host}` is not usable as a TLS server name"));
    }
    Ok(ParsedAddress {
        written: v.to_string(),
        host: Host::Name(host.to_string()),
        port,
    })
}

fn read_file(upstream: &str, field: &'static str, path: &Path) -> Result<Vec<u8>, UpstreamError> {
    std::fs::read(path).map_err(|error| UpstreamError::ReadFile {
        upstream: upstream.to_string(),
        field,
        path: path.to_path_buf(),
        error,
    })
}

/// The certificates of a PEM file, each checked with the parser pingora
/// uses (it panics on what it cannot parse).
fn read_certs(
    upstream: &str,
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let bad = |problem: String| UpstreamError::BadPem {
        upstream: upstream.to_string(),
        field,
        path: path.to_path_buf(),
        problem,
    };
    let bytes = read_file(upstream, field, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        if c.is_empty() {
            return Err(bad(format!("certificate {} is empty", i + 1)));
        }
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(bad(format!("certificate {} is not X.509: {e}", i + 1)));
        }
    }
    Ok(certs)
}

fn load_tls(upstream: &str, t: &UpstreamTlsSpec) -> Result<TlsMaterial, UpstreamError> {
    if let Some(sni) = &t.sni {
        if sni.is_empty() || ServerName::try_from(sni.as_str()).is_err() {
            return Err(invalid(upstream, "tls.sni", sni, "not a DNS name or IP address"));
        }
    }
    let ca = match &t.ca {
        None => None,
        Some(path) => {
            let certs = read_certs(upstream, "ca", path)?;
            let mut store = rustls::RootCertStore::empty();
            for (i, c) in certs.iter().enumerate() {
                store.add(c.clone()).map_err(|e| UpstreamError::BadPem {
                    upstream: upstream.to_string(),
                    field: "ca",
                    path: path.clone(),
                    problem: format!("certificate {} is not usable as a trust anchor: {e}", i + 1),
                })?;
            }
            let wrapped: Vec<WrappedX509> = certs
                .iter()
                .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                .collect();
            Some(Arc::<CaType>::from(wrapped))
        }
    };
    let client = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(UpstreamError::CertKeyPair {
                upstream: upstream.to_string(),
                given: "cert",
            })
        }
        (None, Some(_)) => {
            return Err(UpstreamError::CertKeyPair {
                upstream: upstream.to_string(),
                given: "key",
            })
        }
        (Some(cert), Some(key)) => Some(Arc::new(load_client_cert(upstream, cert, key)?)),
    };
    if !t.verify {
        warn!(
            upstream,
            "TLS certificate verification is disabled for this upstream"
        );
    }
    Ok(TlsMaterial {
        sni: t.sni.clone(),
        verify: t.verify,
        ca,
        client,
    })
}

fn load_client_cert(upstream: &str, cert: &Path, key: &Path) -> Result<CertKey, UpstreamError> {
    let certs = read_certs(upstream, "cert", cert)?;
    let key_bytes = read_file(upstream, "key", key)?;
    let bad_key = |problem: String| UpstreamError::BadPem {
        upstream: upstream.to_string(),
        field: "key",
        path: key.to_path_buf(),
        problem,
    };
    let parsed = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| bad_key(format!("no unencrypted PKCS#8, PKCS#1 or SEC1 private key: {e}")))?;
    let der = parsed.secret_der().to_vec();
    // pingora turns the DER back into a key with this conversion and unwraps.
    let reparsed = PrivateKeyDer::try_from(der.clone()).map_err(|e| bad_key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(certs.clone(), reparsed)
        })
        .map_err(|e| UpstreamError::ClientCert {
            upstream: upstream.to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            problem: e.to_string(),
        })?;
    Ok(CertKey::new(certs.iter().map(|c| c.to_vec()).collect(), der))
}

/// Isolates connection reuse per upstream (pingora's reuse hash ignores the
/// per-peer CA).
fn group_key(upstream: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "phigate-upstream".hash(&mut h);
    upstream.hash(&mut h);
    h.finish()
}

fn build_upstream(
    c: CheckedSpec,
    first: &HashMap<(String, u16), Result<Vec<SocketAddr>, String>>,
    passive_cooldown: Duration,
) -> Result<(Upstream, Option<UpstreamService>), UpstreamError> {
    let tls = c.tls.is_some();
    let default_port = if tls { 443 } else { 80 };
    let placeholder = SocketAddr::from(([0, 0, 0, 0], 1));
    let mut addresses = Vec::with_capacity(c.addresses.len());
    let mut resolutions = Vec::with_capacity(c.addresses.len());
    for a in c.addresses {
        let host_text = match &a.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        };
        let authority = if a.port == default_port {
            host_text
        } else {
            format!("{host_text}:{}", a.port)
        };
        let mut peer = match &c.tls {
            Some(t) => {
                // Never empty: pingora skips verification for an empty SNI.
                let sni = t.sni.clone().unwrap_or_else(|| match &a.host {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Name(n) => n.clone(),
                });
                let mut p = HttpPeer::new(placeholder, true, sni);
                p.options.verify_cert = t.verify;
                p.options.verify_hostname = t.verify;
                p.options.ca = t.ca.clone();
                p.client_cert_key = t.client.clone();
                p
            }
            None => HttpPeer::new(placeholder, false, String::new()),
        };
        peer.options.connection_timeout = Some(c.connect_timeout);
        peer.options.read_timeout = Some(c.read_timeout);
        peer.group_key = group_key(&c.name);
        let resolution = match &a.host {
            Host::Ip(ip) => Resolution {
                addrs: vec![SocketAddr::new(*ip, a.port)],
                failing: false,
            },
            Host::Name(n) => match first.get(&(n.clone(), a.port)) {
                Some(Ok(addrs)) => {
                    info!(upstream = %c.name, address = %a.written, resolved = ?addrs, "upstream address resolved");
                    Resolution {
                        addrs: addrs.clone(),
                        failing: false,
                    }
                }
                Some(Err(e)) => {
                    warn!(upstream = %c.name, address = %a.written, error = %e, "upstream address does not resolve yet; retrying in the background");
                    Resolution {
                        addrs: Vec::new(),
                        failing: true,
                    }
                }
                None => {
                    warn!(upstream = %c.name, address = %a.written, budget = ?BUILD_RESOLVE_BUDGET, "upstream address did not resolve in time; retrying in the background");
                    Resolution {
                        addrs: Vec::new(),
                        failing: true,
                    }
                }
            },
        };
        resolutions.push(resolution);
        addresses.push(Address {
            written: a.written,
            host: a.host,
            port: a.port,
            authority,
            peer,
        });
    }

    let resolved = Arc::new(Mutex::new(resolutions));
    let has_names = addresses.iter().any(|a| matches!(a.host, Host::Name(_)));
    let discovery = DnsDiscovery {
        upstream: c.name.clone(),
        targets: addresses
            .iter()
            .map(|a| (a.written.clone(), a.host.clone(), a.port))
            .collect(),
        resolved: Arc::clone(&resolved),
        seeded: AtomicBool::new(true),
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
    if let Some(h) = &c.health_check {
        let checks = addresses
            .iter()
            .map(|a| address_check(&c.name, a, h))
            .collect::<Result<Vec<_>, _>>()?;
        lb.set_health_check(Box::new(AddressHealthChecks {
            upstream: c.name.clone(),
            labels: addresses.iter().map(|a| a.written.clone()).collect(),
            hostnames: addresses
                .iter()
                .map(|a| matches!(a.host, Host::Name(_)))
                .collect(),
            checks,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            last_error: Mutex::new(HashMap::new()),
        }));
        lb.health_check_frequency = Some(h.interval);
        lb.parallel_health_check = true;
    }
    lb.update_frequency = has_names.then_some(c.resolve_interval);
    // The seeded discovery answers without awaiting, so this first update
    // completes in one poll: requests have addresses before any service runs.
    if !update_now(&lb) {
        warn!(upstream = %c.name, "initial upstream membership not applied; the background service will apply it");
    }
    let lb = Arc::new(lb);
    let service = (has_names || c.health_check.is_some())
        .then(|| GenBackgroundService::new(format!("upstream {}", c.name), Arc::clone(&lb)));
    Ok((
        Upstream {
            name: c.name,
            prefix: c.prefix,
            rewrite: c.rewrite,
            tls,
            addresses,
            lb,
            resolved,
            passive: Mutex::new(HashMap::new()),
            passive_cooldown,
        },
        service,
    ))
}

/// Poll `lb.update()` once; true when it completed successfully.
fn update_now(lb: &LoadBalancer<RoundRobin>) -> bool {
    let mut fut = std::pin::pin!(lb.update());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())))
}

/// The pingora health check of one address: `GET path` with `Host` = the
/// address's authority, over TLS with the upstream's SNI, CA and client
/// certificate when the upstream uses TLS.
fn address_check(upstream: &str, a: &Address, h: &HealthCheckSpec) -> Result<HttpHealthCheck, UpstreamError> {
    let bad = |e: Box<Error>| invalid(upstream, "health_check.path", &h.path, e.to_string());
    let mut req = RequestHeader::build("GET", h.path.as_bytes(), None).map_err(bad)?;
    req.insert_header("Host", a.authority.as_str()).map_err(bad)?;
    req.insert_header("User-Agent", "phigate-health-check")
        .map_err(bad)?;
    // `new` takes a host it puts into a header with `unwrap`: give it a
    // constant and replace the request and peer right away.
    let mut check = HttpHealthCheck::new("localhost", false);
    check.req = req;
    let mut peer = a.peer.clone();
    peer.options.connection_timeout = Some(h.timeout);
    peer.options.read_timeout = Some(h.timeout);
    peer.options.write_timeout = Some(h.timeout);
    check.peer_template = peer;
    check.reuse_connection = false;
    check.consecutive_success = h.healthy_threshold;
    check.consecutive_failure = h.unhealthy_threshold;
    check.validator = Some(Box::new(|resp: &ResponseHeader| {
        if resp.status.is_success() {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("health check status", resp.status.as_u16()),
                format!("health check answered {}", resp.status),
            )
        }
    }));
    Ok(check)
}

/// The health check of an upstream: dispatches each backend to the check of
/// the address it was resolved from, bounds it by the timeout, logs flips.
struct AddressHealthChecks {
    upstream: String,
    labels: Vec<String>,
    hostnames: Vec<bool>,
    checks: Vec<HttpHealthCheck>,
    timeout: Duration,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
    /// The latest failure per IP, logged when the address flips to unhealthy.
    last_error: Mutex<HashMap<SocketAddr, String>>,
}

impl AddressHealthChecks {
    fn label(&self, target: &Backend) -> String {
        let i = target.ext.get::<AddressIndex>().map(|i| i.0);
        match (i.and_then(|i| self.labels.get(i)), target.addr.as_inet()) {
            (Some(l), Some(a)) if i.and_then(|i| self.hostnames.get(i)) == Some(&true) => {
                format!("{l} ({a})")
            }
            (_, Some(a)) => a.to_string(),
            (_, None) => target.addr.to_string(),
        }
    }
}

#[async_trait]
impl HealthCheck for AddressHealthChecks {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let Some(check) = target
            .ext
            .get::<AddressIndex>()
            .and_then(|i| self.checks.get(i.0))
        else {
            return Error::e_explain(ErrorType::InternalError, "backend without its configured address");
        };
        let result = match tokio::time::timeout(self.timeout, check.check(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!("health check took longer than {:?}", self.timeout),
            ),
        };
        if let Some(addr) = target.addr.as_inet() {
            let mut errors = lock(&self.last_error);
            match &result {
                Ok(()) => {
                    errors.remove(addr);
                }
                Err(e) => {
                    errors.insert(*addr, e.to_string());
                }
            }
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let address = self.label(target);
        if healthy {
            info!(upstream = %self.upstream, %address, "upstream address is healthy");
        } else {
            let error = target
                .addr
                .as_inet()
                .and_then(|a| lock(&self.last_error).get(a).cloned())
                .unwrap_or_default();
            warn!(upstream = %self.upstream, %address, %error, "upstream address is unhealthy");
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream `{}` address {}", self.upstream, self.label(target))
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}

/// Service discovery by DNS: IP literals as they are, hostnames looked up
/// (tokio `lookup_host`); a failed lookup keeps that address's last good
/// answer.
struct DnsDiscovery {
    upstream: String,
    /// (as written, host, port) per configured address.
    targets: Vec<(String, Host, u16)>,
    resolved: Arc<Mutex<Vec<Resolution>>>,
    /// The next `discover` returns the resolution made by `build` without
    /// looking up anything (so it completes in one poll).
    seeded: AtomicBool,
}

impl DnsDiscovery {
    fn backends(&self) -> BTreeSet<Backend> {
        let resolved = lock(&self.resolved);
        let mut set = BTreeSet::new();
        for (i, r) in resolved.iter().enumerate() {
            for addr in &r.addrs {
                let mut ext = Extensions::new();
                ext.insert(AddressIndex(i));
                // An IP reached through two configured addresses is one
                // backend: the first address keeps it.
                set.insert(Backend {
                    addr: PeerAddr::Inet(*addr),
                    weight: 1,
                    ext,
                });
            }
        }
        set
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if !self.seeded.swap(false, Ordering::Relaxed) {
            let mut answers = Vec::new();
            for (i, (_, host, port)) in self.targets.iter().enumerate() {
                if let Host::Name(name) = host {
                    answers.push((i, resolve(name, *port).await));
                }
            }
            let mut resolved = lock(&self.resolved);
            for (i, answer) in answers {
                if let (Some(r), Some((written, _, _))) = (resolved.get_mut(i), self.targets.get(i)) {
                    apply_answer(&self.upstream, written, r, answer);
                }
            }
        }
        Ok((self.backends(), HashMap::new()))
    }
}

/// Record one lookup: a good answer replaces the resolution, a failure keeps
/// the last good one. Logs changes and the start and end of failures.
fn apply_answer(upstream: &str, address: &str, r: &mut Resolution, answer: Result<Vec<SocketAddr>, String>) {
    match answer {
        Ok(addrs) => {
            if r.failing {
                info!(upstream, address, "upstream address resolves again");
            }
            if addrs != r.addrs {
                info!(upstream, address, resolved = ?addrs, previous = ?r.addrs, "upstream address resolution changed");
            }
            r.addrs = addrs;
            r.failing = false;
        }
        Err(error) => {
            if !r.failing {
                warn!(upstream, address, %error, kept = ?r.addrs, "upstream address lookup failed; keeping the last good answer");
            }
            r.failing = true;
        }
    }
}

fn normalize_answer(addrs: impl Iterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let mut v: Vec<SocketAddr> = addrs.collect();
    v.sort();
    v.dedup();
    v.truncate(MAX_ADDRS_PER_NAME);
    if v.is_empty() {
        Err("no addresses in the answer".into())
    } else {
        Ok(v)
    }
}

async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Err(_) => Err(format!("no answer within {DNS_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) => normalize_answer(addrs),
    }
}

/// Resolve `names` with the system resolver on helper threads, waiting at
/// most `budget` in total; names without an answer by then are missing.
fn resolve_blocking(
    names: &[(String, u16)],
    budget: Duration,
) -> HashMap<(String, u16), Result<Vec<SocketAddr>, String>> {
    let mut out = HashMap::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pending = 0usize;
    let unique: BTreeSet<&(String, u16)> = names.iter().collect();
    for key in unique {
        let key = key.clone();
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("phigate-dns".into())
            .spawn(move || {
                let answer = (key.0.as_str(), key.1)
                    .to_socket_addrs()
                    .map_err(|e| e.to_string())
                    .and_then(normalize_answer);
                // The receiver is gone when the budget ran out: nothing to do.
                let _ = tx.send((key, answer));
            });
        match spawned {
            Ok(_) => pending += 1,
            Err(e) => warn!(error = %e, "cannot start a DNS lookup thread"),
        }
    }
    drop(tx);
    let deadline = Instant::now() + budget;
    while pending > 0 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((key, answer)) => {
                pending -= 1;
                out.insert(key, answer);
            }
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests;
