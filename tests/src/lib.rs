//! Test harness: real servers on ephemeral loopback ports and the real
//! `phigate` binary as a child process.
//!
//! - [`JwksServer`]: serves a JWKS over HTTP, counts fetches, can be told to fail.
//! - [`Upstream`]: a FHIR-ish HTTP/1.1 upstream that records every request.
//! - [`Gateway`]: writes a config, starts `phigate run`, waits for `/healthz`,
//!   and kills the process on drop.
//! - [`http`]: a raw HTTP/1.1 client over `TcpStream`, so request targets are
//!   sent byte for byte (no client-side normalisation).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod audit_repo;
pub mod faults;
pub mod http;
pub mod jwks_helpers;
pub mod keys;
pub mod nats;
pub mod prom;
pub mod realworld;
pub mod rsyslog;
pub mod servers;
pub mod sessions;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use keys::TestKey;
pub use servers::{JwksServer, RawMode, RawUpstream, RecordedRequest, Upstream};

/// A free loopback port: bind `127.0.0.1:0`, read the port, release it.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Poll `f` until it returns `Some`, for at most `limit`. Bounded waiting for
/// asynchronous effects (audit lines, fetches) — never a timing assertion.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `phigate` child process.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub audit_file: PathBuf,
    /// The hash-chained audit spool directory.
    pub spool_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub log_file: PathBuf,
    env: Vec<(String, String)>,
}

/// Default test policy: the skeleton's rules plus a custom-scope route.
pub const TEST_POLICY: &str = r#"
version: 1
routes:
  - name: fhir-metadata
    methods: [GET]
    path: /fhir/metadata
    public: true
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
  - methods: [GET]
    path: /fhir/Observation
    scopes: { any_of: [user/Observation.rs] }
  - methods: [POST]
    path: /fhir/Observation
    scopes: { any_of: [user/Observation.c] }
"#;

pub const ISSUER: &str = "https://idp.test.phigate";
pub const AUDIENCE: &str = "phigate-test";

/// Options for [`Gateway::start`].
pub struct GatewayOptions<'a> {
    pub jwks_uri: String,
    pub upstream: SocketAddr,
    pub policy: &'a str,
    /// Extra keys for the issuer (4-space indented lines); `unknown_kid_cooldown`
    /// here replaces the harness default of 1s.
    pub extra_issuer_yaml: &'a str,
    pub audit_queue_size: usize,
    /// Extra top-level keys (e.g. `rate_limit: …`).
    pub extra_yaml: &'a str,
    /// Extra keys of the `audit:` section (one line, 2-space indented context), e.g. `durability: per_request`.
    pub audit_yaml: &'a str,
    /// Extra keys of the `upstream:` section, each line indented by two
    /// spaces (e.g. `  read_timeout: 1s\n`).
    pub upstream_yaml: &'a str,
    /// The audit spool directory (default: `spool` in the temp dir), e.g.
    /// on a filesystem the test controls.
    pub spool_dir: Option<PathBuf>,
    /// Listeners and upstreams written by the test instead of the
    /// harness's `listen:` and `upstream:` (then `upstream` and
    /// `upstream_yaml` are unused).
    pub network: Option<Network>,
    /// Environment variables of the gateway process.
    pub env: Vec<(String, String)>,
}

/// Network sections written by a test (see [`GatewayOptions::network`]).
pub struct Network {
    /// The address tests reach the proxy on (`Gateway::proxy`).
    pub proxy: SocketAddr,
    /// Top-level YAML: `listeners:`/`listen:` and `upstreams:`/`upstream:`.
    pub yaml: String,
}

impl<'a> GatewayOptions<'a> {
    /// Defaults for everything but the key server, upstream and policy.
    pub fn new(jwks_uri: String, upstream: SocketAddr, policy: &'a str) -> Self {
        GatewayOptions {
            jwks_uri,
            upstream,
            policy,
            extra_issuer_yaml: "",
            audit_queue_size: 10_000,
            extra_yaml: "",
            audit_yaml: "",
            upstream_yaml: "",
            spool_dir: None,
            network: None,
            env: Vec::new(),
        }
    }
}

impl Gateway {
    /// The gateway binary built by this crate (`target/<profile>/phigate-under-test`),
    /// found next to the running test executable (`target/<profile>/deps/…`).
    pub fn binary() -> std::path::PathBuf {
        let exe = std::env::current_exe().expect("current test executable");
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile> directory");
        let bin = profile_dir.join(format!("phigate-under-test{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} not built; run `cargo build --workspace --all-targets`",
            bin.display()
        );
        bin
    }

    /// Write config + policy into a temp dir and start `phigate run`.
    pub fn start(opts: GatewayOptions<'_>) -> Gateway {
        // A freed port can be taken by someone else before phigate binds it;
        // retry with fresh ports if the process dies during start-up.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("policies")).unwrap();
            std::fs::write(dir.path().join("policies/test.yaml"), opts.policy).unwrap();
            let proxy = opts.network.as_ref().map_or_else(free_addr, |n| n.proxy);
            let admin = free_addr();
            let network = match &opts.network {
                Some(n) => n.yaml.clone(),
                None => format!(
                    "listen: {proxy}\nupstream:\n  address: {}\n{}",
                    opts.upstream, opts.upstream_yaml
                ),
            };
            let spool_dir = opts.spool_dir.clone().unwrap_or_else(|| dir.path().join("spool"));
            let config = format!(
                r#"
{network}
admin_listen: {admin}
issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {jwks}
{cooldown}{extra}
policies: policies
audit:
  dir: {spool}
  file: audit.jsonl
  queue_size: {queue}
  {audit_extra}
{grace}{top}
"#,
                jwks = opts.jwks_uri,
                extra = opts.extra_issuer_yaml,
                cooldown = if opts.extra_issuer_yaml.contains("unknown_kid_cooldown") {
                    ""
                } else {
                    "    unknown_kid_cooldown: 1s\n"
                },
                top = opts.extra_yaml,
                queue = opts.audit_queue_size,
                audit_extra = opts.audit_yaml,
                grace = if opts.extra_yaml.contains("shutdown_grace") {
                    ""
                } else {
                    "shutdown_grace: 1s\n"
                },
                spool = spool_dir.display(),
            );
            std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
            let log_file = dir.path().join("phigate.log");
            let child = Self::spawn(dir.path(), &log_file, &opts.env);
            let mut gw = Gateway {
                child,
                proxy,
                admin,
                audit_file: dir.path().join("audit.jsonl"),
                spool_dir,
                log_file,
                dir,
                env: opts.env.clone(),
            };
            if gw.wait_healthy(Duration::from_secs(20)) {
                return gw;
            }
            last_log = std::fs::read_to_string(&gw.log_file).unwrap_or_default();
        }
        panic!("phigate did not start:\n{last_log}");
    }

    fn spawn(dir: &Path, log_file: &Path, env: &[(String, String)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .unwrap();
        Command::new(Self::binary())
            .args(["run", "--config"])
            .arg(dir.join("gateway.yaml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL the gateway (no shutdown, no flush) and wait for it to die.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// Start the gateway again with the same configuration, ports and files
    /// (after [`Gateway::kill9`]), and wait until it is ready.
    pub fn restart(&mut self) {
        self.restart_unready();
        self.wait_ready();
    }

    /// Restart as [`Gateway::restart`] but wait only for `/healthz` (the
    /// gateway may be deliberately unready, e.g. on a full disk).
    pub fn restart_unready(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), &self.log_file, &self.env);
        assert!(
            self.wait_healthy(Duration::from_secs(20)),
            "restart failed:\n{}",
            self.log()
        );
    }

    /// The directory holding config, policies, audit spool and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let (admin, proxy) = (self.admin, self.proxy);
        let child = &mut self.child;
        eventually(limit, || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            // The proxy listener too: pingora starts services in parallel.
            match http::get(admin, "/healthz") {
                Ok(r) if r.status == 200 && std::net::TcpStream::connect(proxy).is_ok() => Some(true),
                _ => None,
            }
        })
        .unwrap_or(false)
    }

    /// Wait until `/readyz` answers 200 (keys fetched).
    pub fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(20), || {
            matches!(http::get(self.admin, "/readyz"), Ok(r) if r.status == 200).then_some(())
        });
        assert!(ok.is_some(), "gateway never became ready:\n{}", self.log());
    }

    /// The audit records written so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.audit_file)
    }

    /// Wait until at least `n` audit records are on disk, and return them.
    pub fn wait_audit(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(Duration::from_secs(10), || {
            let r = self.audit_records();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("expected {n} audit records, got {:?}", self.audit_records()))
    }

    /// The audit record with this request id (waits up to 10 s for it).
    pub fn record(&self, request_id: &str) -> serde_json::Value {
        eventually(Duration::from_secs(10), || {
            self.audit_records()
                .into_iter()
                .find(|r| r["request_id"] == request_id)
        })
        .unwrap_or_else(|| {
            panic!(
                "no audit record for {request_id}:
{}",
                self.audit_text()
            )
        })
    }

    /// The raw audit file text.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_file).unwrap_or_default()
    }

    /// The policy directory the gateway watches (`<temp dir>/policies`,
    /// holding the start-up policy as `test.yaml`).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// The gateway's process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `limit`) for the process to exit on its own; its exit
    /// status, or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        eventually(limit, || child.try_wait().ok().flatten())
    }

    /// Whether the gateway process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The `/metrics` exposition, parsed.
    pub fn metrics(&self) -> prom::Scrape {
        let r = http::get(self.admin, "/metrics").unwrap();
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"));
        prom::parse(&r.text()).unwrap_or_else(|e| panic!("invalid exposition text: {e}\n{}", r.text()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the `phigate` binary with `args`; its success and stdout + stderr.
pub fn run_phigate<I, S>(args: I) -> (bool, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(Gateway::binary()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Parse a JSON-lines file (missing file: no records).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// A started gateway with its own real JWKS server (one ES256 key, `k1`) and
/// recording upstream, ready to serve. The shared fixture of the e2e suites.
pub struct TestEnv {
    pub key: TestKey,
    pub jwks: JwksServer,
    pub upstream: Upstream,
    pub gw: Gateway,
}

impl TestEnv {
    /// Start with `policy` and default issuer/top-level settings.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, "", "")
    }

    /// Start with extra issuer keys (4-space indented) and top-level keys.
    pub fn start_with(policy: &str, issuer_yaml: &str, top_yaml: &str) -> Self {
        Self::start_audited(policy, issuer_yaml, top_yaml, "")
    }

    /// As [`TestEnv::start_with`], plus extra keys for the `audit:` section
    /// (each line after the first indented by two spaces).
    pub fn start_audited(policy: &str, issuer_yaml: &str, top_yaml: &str, audit_yaml: &str) -> Self {
        Self::start_full(policy, issuer_yaml, top_yaml, audit_yaml, 10_000)
    }

    /// As [`TestEnv::start_audited`], with `audit.queue_size` (the number of
    /// audit slots).
    pub fn start_full(
        policy: &str,
        issuer_yaml: &str,
        top_yaml: &str,
        audit_yaml: &str,
        queue: usize,
    ) -> Self {
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(TestKey::jwks(&[&key]));
        let upstream = Upstream::start();
        let gw = Gateway::start(GatewayOptions {
            extra_issuer_yaml: issuer_yaml,
            audit_queue_size: queue,
            extra_yaml: top_yaml,
            audit_yaml,
            ..GatewayOptions::new(jwks.uri(), upstream.addr, policy)
        });
        gw.wait_ready();
        TestEnv {
            key,
            jwks,
            upstream,
            gw,
        }
    }

    /// `method target` through the proxy with a bearer token, extra headers and a body.
    pub fn send(
        &self,
        method: &str,
        target: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response {
        let auth = format!("Bearer {token}");
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(headers);
        http::request(self.gw.proxy, method, target, &h, body).unwrap()
    }

    /// `GET target` with a bearer token.
    pub fn get(&self, target: &str, token: &str) -> http::Response {
        self.send("GET", target, token, &[], b"")
    }
}

/// Kills (and reaps) a child process when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `phigate dev` process on free loopback ports, its files in `dir`
/// (`audit.jsonl`, `spool/`, `dev-key.pem`, `dev.log`).
pub struct DevProcess {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log_file: PathBuf,
    _child: KillOnDrop,
}

impl DevProcess {
    /// Start `phigate dev` with files under `dir` plus `extra` arguments, and
    /// wait (up to `limit`) until `/readyz` answers 200.
    pub fn start(dir: &Path, extra: &[&std::ffi::OsStr], limit: Duration) -> DevProcess {
        let (proxy, admin) = (free_addr(), free_addr());
        let log_file = dir.join("dev.log");
        let child = Command::new(Gateway::binary())
            .arg("dev")
            .args([
                "--listen",
                &proxy.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .arg("--audit-file")
            .arg(dir.join("audit.jsonl"))
            .arg("--audit-dir")
            .arg(dir.join("spool"))
            .arg("--dev-key")
            .arg(dir.join("dev-key.pem"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn()
            .unwrap();
        let dev = DevProcess {
            proxy,
            admin,
            log_file,
            _child: KillOnDrop(child),
        };
        // Ready, and the proxy listener accepting: pingora starts its
        // services in parallel, so the admin listener can answer first.
        let ready = eventually(limit, || {
            (matches!(http::get(admin, "/readyz"), Ok(r) if r.status == 200)
                && std::net::TcpStream::connect(proxy).is_ok())
            .then_some(())
        });
        assert!(ready.is_some(), "dev mode never ready:\n{}", dev.log());
        dev
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}
