//! Building and running the pingora server.

#[cfg(feature = "dev")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;

use phigate_audit::{CheckpointOptions, SigningKey, Spool, SpoolOptions, SpoolWorker};
use phigate_policy::PolicySet;
use phigate_token::{FetchObserver, Validator};

use crate::admin::Admin;
use crate::config::GatewayConfig;
use crate::dev::DevIssuer;
// `phigate dev` only (the `dev` feature).
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Shared};
use crate::reload::{self, PolicyWatcher, Reloader};
use crate::GatewayError;
#[cfg(feature = "dev")]
use {
    crate::config::{LogFormat, UpstreamConfig},
    crate::dev::{DEV_AUDIENCE, DEV_ISSUER},
    crate::policy_loader,
    phigate_policy::PolicySource,
    phigate_token::{Algorithm, IssuerConfig, KeySource},
};

/// Keeps every issuer's key set fresh (pingora background service).
struct JwksRefresher(Arc<Validator>);

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run_refresher(shutdown).await;
    }
}

/// Owns the audit worker until the server starts it.
struct AuditService(Mutex<Option<SpoolWorker>>);

#[async_trait]
impl BackgroundService for AuditService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let worker = match self.0.lock() {
            Ok(mut w) => w.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(worker) = worker {
            worker.run(shutdown).await;
        }
    }
}

/// Runs one audit sink forwarder (pingora background service).
struct SinkService(Mutex<Option<phigate_sinks::Forwarder>>, PathBuf);

#[async_trait]
impl BackgroundService for SinkService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let forwarder = match self.0.lock() {
            Ok(mut f) => f.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(f) = forwarder {
            let name = f.name().to_string();
            if let Err(e) = f.run(self.1.clone(), shutdown).await {
                tracing::error!(sink = %name, error = %e, "audit sink stopped");
            }
        }
    }
}

/// Run the gateway with a validated configuration and compiled policy until
/// a shutdown signal (SIGTERM: graceful, SIGINT: fast). Unless
/// `config.policies` is empty (an embedded policy), the policy directory is
/// watched and reloaded on change or `SIGHUP` (see [`crate::reload`]).
pub fn serve(
    config: GatewayConfig,
    policy: PolicySet,
    dev: Option<Arc<DevIssuer>>,
) -> Result<(), GatewayError> {
    let metrics = Arc::new(Metrics::new());
    metrics.policy_started(policy.version());
    let observer: Arc<dyn FetchObserver> = metrics.clone();
    let validator = Arc::new(
        Validator::new(config.issuers.clone(), observer)?.with_cache_capacity(config.token_cache_entries),
    );
    let (audit, worker) = open_spool(&config.audit)?;
    // The session store's connection and background work (watch, coalesced
    // writes) live on their own small runtime for the life of the server:
    // pingora's runtimes start only in `server.run`.
    let sessions_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("phigate-sessions")
        .enable_all()
        .build()?;
    let access = Arc::new(sessions_rt.block_on(crate::access::AccessControl::start(
        config.sessions.clone(),
        config.dpop.clone(),
        config.issuer_rules.clone(),
        config.backchannel_logout.clone(),
    ))?);
    let (sessions_stop, sessions_stop_rx) = tokio::sync::watch::channel(false);
    let sessions_task = {
        let store = access.replay_store().clone();
        sessions_rt.spawn(async move { store.run(sessions_stop_rx).await })
    };
    let forwarders = phigate_sinks::config::build_forwarders(&config.sinks).map_err(|e| {
        GatewayError::Config(vec![phigate_yaml::Diagnostic::new("sinks", None, e.to_string())])
    })?;
    let sink_status: Vec<_> = forwarders.iter().map(|f| f.status()).collect();
    // Upstreams: validated, hostnames resolved once (bounded), balancers
    // and health checks ready before the first request.
    let (upstreams, upstream_services) =
        crate::upstreams::Upstreams::build(config.upstreams.iter().map(|u| u.spec.clone()).collect())?;
    for u in &config.upstreams {
        if u.spec.tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(upstream = %u.spec.name, "the upstream's TLS certificate is not verified (tls.verify: false)");
        }
    }
    // TLS listeners: certificates (and client CAs) loaded and checked now.
    let mut listener_tls = Vec::new();
    for l in &config.listeners {
        listener_tls.push(match &l.tls {
            Some(spec) => Some(crate::tls::ListenerTls::load(spec.clone())?),
            None => None,
        });
    }
    tracing::info!(
        listeners = %config
            .listeners
            .iter()
            .map(|l| format!("{}://{}", l.scheme(), l.address))
            .collect::<Vec<_>>()
            .join(", "),
        admin = %config.admin_listen,
        upstreams = %config
            .upstreams
            .iter()
            .map(|u| format!("{} {} -> {}", u.spec.name, u.spec.prefix, u.spec.addresses.join(",")))
            .collect::<Vec<_>>()
            .join("; "),
        policy_version = policy.version(),
        routes = policy.routes().len(),
        audit_dir = %config.audit.dir.display(),
        audit_durability = ?config.audit.durability,
        "starting phigate"
    );
    let shared = Arc::new(Shared {
        policy: ArcSwap::from_pointee(policy),
        validator: validator.clone(),
        access: access.clone(),
        audit,
        metrics,
        upstreams,
        upstream_configs: config.upstreams.clone(),
        forwarded: config.forwarded,
        limiter: crate::limiter::InvalidTokenLimiter::new(config.rate_limit),
        trusted_proxies: config.trusted_proxies.clone(),
        sinks: sink_status,
        limits: config.limits,
        in_flight: crate::limiter::InFlightLimiter::new(config.limits.max_in_flight_per_client),
        error_log: crate::limiter::LogLimiter::new(Duration::from_secs(1)),
        paging: crate::paging::PagingLinks::new(config.paging),
        intent: config.audit.intent,
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        in_flight_total: std::sync::atomic::AtomicUsize::new(0),
    });
    // Every kind exported from the first scrape, so increase() works.
    for kind in [
        "unreachable",
        "timeout",
        "invalid_response",
        "incomplete",
        "unavailable",
    ] {
        shared.metrics.upstream_errors.with_label_values(&[kind]);
    }
    for result in ["ok", "error"] {
        shared.metrics.tls_reloads.with_label_values(&[result]);
    }

    // An empty path means an embedded policy (dev mode without --policies):
    // nothing on disk to watch.
    let watcher = if config.policies.as_os_str().is_empty() {
        None
    } else {
        let reloader = Reloader::new(&config.policies, shared.clone(), shared.metrics.clone());
        reload::install_sighup_handler()?;
        Some(PolicyWatcher::new(reloader, reload::DEFAULT_POLL_INTERVAL))
    };

    // pingora's own grace sleep is off: phigate's signal watch drains
    // (returns as soon as nothing is in flight, at the latest after
    // shutdown_grace), then the runtimes stop and cut off what is left.
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    for (l, tls) in config.listeners.iter().zip(&listener_tls) {
        server.add_service(listener_service(&server, l, tls.as_ref(), &shared, &config)?);
    }

    let mut admin = Service::new(
        "phigate admin".to_string(),
        Admin {
            shared: shared.clone(),
            dev,
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());
    server.add_service(admin);

    server.add_service(background_service("jwks refresher", JwksRefresher(validator)));
    server.add_service(background_service(
        "audit writer",
        AuditService(Mutex::new(Some(worker))),
    ));
    for f in forwarders {
        let name = format!("audit sink {}", f.name());
        server.add_service(background_service(
            &name,
            SinkService(Mutex::new(Some(f)), config.audit.dir.clone()),
        ));
    }
    if let Some(watcher) = watcher {
        server.add_service(background_service("policy watcher", watcher));
    }
    server.add_services(upstream_services);
    let tls_listeners: Vec<_> = listener_tls.into_iter().flatten().collect();
    if !tls_listeners.is_empty() {
        let metrics = shared.metrics.clone();
        let observe: Arc<dyn Fn(&'static str) + Send + Sync> =
            Arc::new(move |result| metrics.tls_reloads.with_label_values(&[result]).inc());
        server.add_service(background_service(
            "tls watcher",
            crate::tls::TlsWatcher::new(tls_listeners, observe),
        ));
    }

    server.run(RunArgs {
        shutdown_signal: Box::new(crate::shutdown::DrainingSignalWatch {
            shared: shared.clone(),
            grace: config.shutdown_grace,
        }),
    });
    // pingora's runtimes are gone: requests still in flight were dropped,
    // and each wrote its `aborted_shutdown` record from its Drop. Wait for
    // every outstanding record to be written before the process exits.
    shared
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Release);
    // Queued session writes (coalesced activity) are flushed.
    let _ = sessions_stop.send(true);
    let _ = sessions_rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), sessions_task).await });
    sessions_rt.shutdown_timeout(Duration::from_secs(1));
    let drained = shared.audit.close(config.audit.drain_timeout);
    if drained {
        tracing::info!("audit spool drained; exiting");
    } else {
        tracing::error!(
            timeout = ?config.audit.drain_timeout,
            "audit spool not drained in time; records still queued may be lost"
        );
    }
    Ok(())
}

/// One proxy listener: the HTTP/1 front around its own pingora proxy (so
/// each request knows its listener's scheme), TLS with HTTP/2 by ALPN, or
/// plaintext with optional h2c.
fn listener_service(
    server: &Server,
    l: &crate::config::ListenerConfig,
    tls: Option<&Arc<crate::tls::ListenerTls>>,
    shared: &Arc<Shared>,
    config: &GatewayConfig,
) -> Result<Service<crate::front::Front>, GatewayError> {
    let mut proxy = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway {
            shared: shared.clone(),
            listener: Arc::new(crate::proxy::ListenerInfo {
                address: l.address,
                scheme: l.scheme(),
            }),
        },
    );
    if l.h2c {
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = true;
        proxy.server_options = Some(options);
    }
    let front = crate::front::Front::new(proxy, shared.clone(), config.limits.request_header_timeout, l.h2c);
    let mut service = Service::new(format!("phigate proxy {}://{}", l.scheme(), l.address), front);
    match tls {
        Some(tls) => {
            let settings = tls.settings(l.http2)?;
            service.add_tls_with_settings(&l.address.to_string(), None, settings);
        }
        None => service.add_tcp(&l.address.to_string()),
    }
    Ok(service)
}

/// Open (and crash-recover) the audit spool.
fn open_spool(a: &crate::config::AuditConfig) -> Result<(Spool, SpoolWorker), GatewayError> {
    let checkpoint = match &a.checkpoint {
        None => None,
        Some((every, key)) => Some(CheckpointOptions {
            every: *every,
            key: Arc::new(SigningKey::from_file(key)?),
        }),
    };
    let options = SpoolOptions {
        durability: a.durability,
        segment_max_bytes: a.segment_max_bytes,
        max_bytes: a.max_bytes,
        queue: a.queue,
        checkpoint,
        mirror: a.mirror.clone(),
        min_free_bytes: a.min_free_bytes,
        compress_closed_segments: a.compress,
        ..SpoolOptions::default()
    };
    Ok(Spool::open(&a.dir, options)?)
}

/// Options of `phigate dev`.
#[cfg(feature = "dev")]
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Plain JSONL copy of every audit line (`--audit-file`).
    pub audit_file: PathBuf,
    /// The durable audit spool (`--audit-dir`).
    pub audit_dir: PathBuf,
    pub audit_durability: phigate_audit::Durability,
    pub audit_intent: crate::config::IntentMode,
    /// Policy directory; `None` uses the bundled dev policy embedded in the binary.
    pub policies: Option<PathBuf>,
    pub dev_key: Option<PathBuf>,
    /// Accept HTTP/2 with prior knowledge (h2c) on `listen`.
    pub h2c: bool,
    /// A second, TLS listener (HTTP/2 and HTTP/1.1 by ALPN) with this
    /// certificate and key (PEM).
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    /// Automatic log-off after this idle time (memory session store).
    pub idle_timeout: Option<Duration>,
}

/// The bundled development policy (`policies/dev/`), embedded so that
/// `phigate dev` works from any directory.
#[cfg(feature = "dev")]
pub const EMBEDDED_DEV_POLICY: &[(&str, &str)] = &[(
    "<embedded>/policies/dev/fhir.yaml",
    include_str!("../../../policies/dev/fhir.yaml"),
)];

/// Run `phigate dev`: dev issuer + demo FHIR upstream + the gateway.
#[cfg(feature = "dev")]
pub fn dev(opts: DevOptions) -> Result<(), GatewayError> {
    let issuer = Arc::new(DevIssuer::load_or_generate(opts.dev_key.as_deref())?);
    let policy = match &opts.policies {
        Some(dir) => policy_loader::load_dir(dir).map_err(GatewayError::Policy)?,
        None => phigate_policy::compile(
            &EMBEDDED_DEV_POLICY
                .iter()
                .map(|(n, t)| PolicySource::new(*n, *t))
                .collect::<Vec<_>>(),
        )
        .map_err(GatewayError::Policy)?,
    };
    let upstream = crate::dev::spawn_demo_upstream()?;
    let mut dev_issuer = IssuerConfig::new(
        DEV_ISSUER,
        vec![DEV_AUDIENCE.to_string()],
        KeySource::JwksUri(format!("http://{}/dev/jwks.json", opts.admin_listen)),
    );
    dev_issuer.algorithms = vec![Algorithm::ES256];
    let mut config = GatewayConfig::new(
        opts.listen,
        opts.admin_listen,
        UpstreamConfig::new(upstream),
        vec![dev_issuer],
        opts.policies.clone().unwrap_or_default(),
        crate::config::AuditConfig {
            mirror: Some(opts.audit_file.clone()),
            durability: opts.audit_durability,
            intent: opts.audit_intent,
            ..crate::config::AuditConfig::new(opts.audit_dir.clone())
        },
    );
    config.listeners[0].h2c = opts.h2c;
    if let Some((address, cert, key)) = &opts.tls {
        config.listeners.push(crate::config::ListenerConfig {
            tls: Some(crate::tls::ListenerTlsSpec {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                client_auth: crate::tls::ClientAuth::None,
            }),
            ..crate::config::ListenerConfig::plain(*address)
        });
    }
    // Sessions (memory store) and the back-channel logout receiver for the
    // dev issuer's logout tokens (`/dev/logout-token`).
    config.sessions = Some(crate::config::SessionSettings::memory(opts.idle_timeout));
    config.backchannel_logout = Some(crate::config::LogoutSettings {
        path: crate::config::DEFAULT_LOGOUT_PATH.to_string(),
        client_ids: vec![crate::dev::DEV_LOGOUT_CLIENT_ID.to_string()],
        max_age: Duration::from_secs(300),
    });
    // Dev mode differs only here: readable logs and a quick Ctrl-C.
    config.log_format = LogFormat::Pretty;
    config.shutdown_grace = Duration::from_secs(1);
    print_banner(&opts, upstream, policy.version());
    serve(config, policy, Some(issuer))
}

#[cfg(feature = "dev")]
fn print_banner(opts: &DevOptions, upstream: SocketAddr, version: &str) {
    let (p, a) = (opts.listen, opts.admin_listen);
    let policies = opts
        .policies
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "bundled dev policy (policies/dev/)".into());
    eprintln!(
        r#"
################################################################################
#  PHIGATE DEV MODE — FOR DEVELOPMENT ONLY. NEVER EXPOSE THIS TO REAL PHI.     #
#  /dev/token mints valid tokens for anyone who asks.                          #
################################################################################
  proxy      http://{p}{h2c}{tls}
  admin      http://{a}  (/metrics /healthz /readyz /dev/jwks.json /dev/token)
  upstream   http://{upstream}  (demo FHIR server, synthetic data)
  policies   {policies}  [{version}]
  audit      {audit}  (JSONL copy; hash-chained spool in {spool}/)

Try:
  curl -i http://{p}/fhir/metadata
  curl -i http://{p}/fhir/Patient/123
  TOKEN=$(curl -s 'http://{a}/dev/token?scope=user/Patient.rs%20user/Observation.rs')
  curl -i -H "Authorization: Bearer $TOKEN" http://{p}/fhir/Patient/123
  curl -i -H "Authorization: Bearer $TOKEN" 'http://{p}/fhir/Observation?patient=123'
  curl -i -H "Authorization: Bearer $TOKEN" -X POST -H 'Content-Type: application/fhir+json' \
       -d '{{"resourceType":"Observation","status":"final"}}' http://{p}/fhir/Observation   # 403: needs user/Observation.c
  curl -i http://{p}/fhir/..%2FPatient/123   # 400
  curl -s http://{a}/metrics | grep phigate_requests_total
  tail -n 3 {audit}
  phigate audit verify {spool}
"#,
        audit = opts.audit_file.display(),
        spool = opts.audit_dir.display(),
        h2c = if opts.h2c { "  (HTTP/1.1 and h2c)" } else { "" },
        tls = opts
            .tls
            .as_ref()
            .map(|(t, _, _)| format!("\n  proxy      https://{t}  (TLS, HTTP/2 and HTTP/1.1 by ALPN)"))
            .unwrap_or_default(),
    );
}
