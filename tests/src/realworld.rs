//! Real third-party servers for `tests/real_components.rs`, each started on a
//! loopback ephemeral port and killed on drop:
//!
//! - [`AuthorizationServer`]: npm `oidc-provider` (`tests/node/authorization-server.mjs`),
//!   issuing RFC 9068 JWT access tokens by the client credentials grant with
//!   resource indicators; phigate finds its keys by OIDC discovery.
//! - [`FhirServer`]: Medplum's FHIR engine (npm `@medplum/fhir-router` with its
//!   in-memory repository, `tests/node/fhir-server.mjs`), recording every
//!   request it receives.
//! - [`Prometheus`]: Debian's `prometheus` scraping phigate's admin listener
//!   and loading `deploy/prometheus/rules.yml`.
//!
//! The Node packages come from `tests/node/package-lock.json` and Prometheus
//! from apt, both installed by `scripts/bootstrap.sh`. When one is missing the
//! test is skipped with a message on the real stderr (not captured by the test
//! harness); with `PHIGATE_REQUIRE_REAL=1` (set by `.ci/run`) it fails instead.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;

use crate::http::{self, Response};
use crate::nats::find_binary;
use crate::{eventually, free_addr, Gateway, GatewayOptions, KillOnDrop};

/// The audience phigate is configured with: the resource indicator that
/// clients ask the authorization server for (RFC 8707). An identifier only;
/// nothing listens there.
pub const AUDIENCE: &str = "https://fhir.phigate.test/r4";
/// Another resource server of the same authorization server: tokens for it
/// must be refused by phigate (`wrong_audience`).
pub const OTHER_AUDIENCE: &str = "https://billing.phigate.test/api";
/// The patient in the launch context of the `patient-rs256` client (its
/// tokens' `patient` claim), seeded in the FHIR server with [`OTHER_PATIENT`].
pub const PATIENT: &str = "pat-a";
pub const OTHER_PATIENT: &str = "pat-b";

/// Clients of the authorization server (see `authorization-server.mjs`).
pub const SYSTEM_ES256: &str = "system-es256";
pub const PATIENT_RS256: &str = "patient-rs256";
pub const SHORT_LIVED: &str = "short-lived";
/// Lifetime of `short-lived` tokens, in seconds.
pub const SHORT_LIVED_TTL: i64 = 3;

/// The policy of the real-component tests: FHIR-aware, so SMART scopes and the
/// patient compartment decide; metadata public.
pub const FHIR_POLICY: &str = r#"
version: 1
routes:
  - name: fhir-metadata
    methods: [GET]
    path: /fhir/metadata
    public: true
  - name: fhir
    methods: ["*"]
    path: /fhir/**
    fhir: { base: /fhir }
"#;

/// The `tests/node` directory (package.json, lock file, scripts).
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether a missing real component fails the test (`PHIGATE_REQUIRE_REAL=1`,
/// set by CI) instead of skipping it.
pub fn real_components_required() -> bool {
    std::env::var("PHIGATE_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// `test` cannot run because `why`: panic under `PHIGATE_REQUIRE_REAL=1`,
/// else say so on the process's stderr (visible in `cargo test` output
/// even for a passing test) and return `None`.
fn unavailable<T>(test: &str, why: &str) -> Option<T> {
    if real_components_required() {
        panic!("{test}: {why} (PHIGATE_REQUIRE_REAL=1: a missing real component fails instead of skipping)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}; run scripts/bootstrap.sh (set PHIGATE_REQUIRE_REAL=1 to make this a failure)"
    );
    None
}

/// The `node` binary, if it and the packages of `tests/node` are installed;
/// otherwise see [`unavailable`].
pub fn node_or_skip(test: &str) -> Option<PathBuf> {
    let Some(node) = find_binary("node", &["/usr/bin/node", "/usr/local/bin/node"]) else {
        return unavailable(test, "`node` is not installed");
    };
    // oidc-provider 9 and @medplum/fhir-router 4 need Node.js 20.19 or later.
    let version = Command::new(&node)
        .args(["-p", "process.versions.node"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (20, 19) {
        return unavailable(test, &format!("node {version:?} is older than 20.19"));
    }
    let modules = node_dir().join("node_modules");
    for package in ["oidc-provider", "@medplum/fhir-router"] {
        if !modules.join(package).join("package.json").is_file() {
            return unavailable(
                test,
                &format!("npm package {package} is not installed in {}", modules.display()),
            );
        }
    }
    Some(node)
}

/// The `prometheus` binary if installed; otherwise see [`unavailable`].
pub fn prometheus_or_skip(test: &str) -> Option<PathBuf> {
    match find_binary("prometheus", &["/usr/bin/prometheus"]) {
        Some(p) => Some(p),
        None => unavailable(test, "`prometheus` is not installed"),
    }
}

/// A Node script from `tests/node` run as a server: it prints `ready <port>`
/// on stdout once it listens on `127.0.0.1:<port>`. Its stdout lines are
/// kept, its stderr goes to a file; killed on drop.
pub struct NodeServer {
    pub addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_file: PathBuf,
    _dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl NodeServer {
    /// Run `node <script> --port 0 <args>` (the kernel picks the port; the
    /// script reports it) and wait until it is ready.
    pub fn start(node: &Path, script: &str, args: &[&str]) -> NodeServer {
        let dir = tempfile::tempdir().unwrap();
        let stderr_file = dir.path().join("stderr.log");
        let mut child = Command::new(node)
            .current_dir(node_dir())
            .arg(script)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node {script}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().unwrap();
        let lines = stdout.clone();
        // Drains stdout for the whole life of the process (ends at EOF).
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut child = KillOnDrop(child);
        let port = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Some(Err(status));
            }
            let lines = stdout.lock().unwrap();
            lines
                .iter()
                .find_map(|l| l.strip_prefix("ready ")?.trim().parse::<u16>().ok())
                .map(Ok)
        });
        let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
        let port = match port {
            Some(Ok(port)) => port,
            Some(Err(status)) => panic!(
                "node {script} exited ({status}) before it was ready:\n{}",
                stderr()
            ),
            None => panic!("node {script} never printed `ready <port>`:\n{}", stderr()),
        };
        NodeServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdout,
            stderr_file,
            _dir: dir,
            _child: child,
        }
    }

    /// The lines the script printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// What the script wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encode every byte but the RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The decoded header and payload of a compact JWS (not verified).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        let part = parts.next().expect("a JWS has three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    (decode(), decode())
}

/// npm `oidc-provider` as the OAuth 2.0 authorization server (issuer
/// `http://127.0.0.1:<port>`).
pub struct AuthorizationServer {
    pub server: NodeServer,
    pub issuer: String,
}

impl AuthorizationServer {
    pub fn start(node: &Path) -> AuthorizationServer {
        let ttl = SHORT_LIVED_TTL.to_string();
        let server = NodeServer::start(
            node,
            "authorization-server.mjs",
            &[
                "--audience",
                AUDIENCE,
                "--other-audience",
                OTHER_AUDIENCE,
                "--patient",
                PATIENT,
                "--short-ttl",
                &ttl,
            ],
        );
        let issuer = format!("http://{}", server.addr);
        AuthorizationServer { server, issuer }
    }

    /// The token endpoint's answer to a client credentials request by
    /// `client` for `scope` at `resource`.
    pub fn token_response(&self, client: &str, scope: &str, resource: &str) -> Response {
        let basic = STANDARD.encode(format!("{client}:{client}-secret"));
        let body = form_encode(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("resource", resource),
        ]);
        http::request(
            self.server.addr,
            "POST",
            "/token",
            &[
                ("Authorization", &format!("Basic {basic}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    }

    /// A JWT access token for `client` with `scope` and audience `resource`.
    pub fn token(&self, client: &str, scope: &str, resource: &str) -> String {
        let r = self.token_response(client, scope, resource);
        assert_eq!(
            r.status,
            200,
            "token request failed: {}\n{}",
            r.text(),
            self.server.stderr()
        );
        let body = r.json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    /// Replace every signing key by a new one; the old keys leave the JWKS.
    /// Returns the new key ids.
    pub fn rotate_keys(&self) -> Vec<String> {
        let r = http::request(self.server.addr, "POST", "/__admin/rotate", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["kids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }

    /// The key ids the server publishes now.
    pub fn published_kids(&self) -> Vec<String> {
        let r = http::get(self.server.addr, "/jwks").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Medplum's FHIR engine with an in-memory repository under `/fhir`.
pub struct FhirServer {
    pub server: NodeServer,
}

impl FhirServer {
    pub fn start(node: &Path) -> FhirServer {
        FhirServer {
            server: NodeServer::start(node, "fhir-server.mjs", &[]),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A request straight to the FHIR server (not through phigate), e.g. to
    /// seed data.
    pub fn direct(&self, method: &str, target: &str, body: &Value) -> Response {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        http::request(
            self.server.addr,
            method,
            target,
            &[("Content-Type", "application/fhir+json")],
            &body,
        )
        .unwrap()
    }

    /// Every request the FHIR server received, in order: `method`, `target`,
    /// `authorization` (whether the header was present), `request_id` (the
    /// `X-Request-Id` phigate adds; null for direct requests), `body_bytes`.
    pub fn requests(&self) -> Vec<Value> {
        let r = http::get(self.server.addr, "/__requests").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().unwrap().clone()
    }

    /// The requests that came through phigate (those with an `X-Request-Id`).
    pub fn proxied_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| !r["request_id"].is_null())
            .collect()
    }

    /// Two patients and one Observation for each, created straight in the
    /// server (client-assigned patient ids, by update-as-create).
    pub fn seed(&self) {
        for (id, family) in [(PATIENT, "Alpha"), (OTHER_PATIENT, "Beta")] {
            let patient = serde_json::json!({
                "resourceType": "Patient", "id": id, "name": [{ "family": family }],
            });
            let r = self.direct("PUT", &format!("/fhir/Patient/{id}"), &patient);
            assert!(matches!(r.status, 200 | 201), "seed {id}: {}", r.text());
            let obs = observation(id, "8867-4", "Heart rate");
            let r = self.direct("POST", "/fhir/Observation", &obs);
            assert_eq!(r.status, 201, "seed observation: {}", r.text());
        }
    }
}

/// An Observation about `patient` with a LOINC `code`.
pub fn observation(patient: &str, code: &str, display: &str) -> Value {
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": code, "display": display }] },
        "subject": { "reference": format!("Patient/{patient}") },
    })
}

/// The gateway configured for the real authorization server and FHIR engine.
pub struct RealEnv {
    pub auth: AuthorizationServer,
    pub fhir: FhirServer,
    pub gw: Gateway,
}

impl RealEnv {
    /// Start the authorization server, the FHIR engine (seeded) and phigate
    /// with [`FHIR_POLICY`], whose one issuer is the authorization server,
    /// found by OIDC discovery, with audience [`AUDIENCE`] and RFC 9068
    /// `typ: at+jwt` required; `issuer_yaml`: more issuer keys (4-space
    /// indented lines). `None` when a component is missing (see
    /// [`node_or_skip`]).
    pub fn start(test: &str, issuer_yaml: &str) -> Option<RealEnv> {
        let node = node_or_skip(test)?;
        let auth = AuthorizationServer::start(&node);
        let fhir = FhirServer::start(&node);
        fhir.seed();
        let issuer_yaml = format!("    require_typ: true\n    allowed_typ: [at+jwt]\n{issuer_yaml}");
        let mut gw = Gateway::start(GatewayOptions {
            extra_issuer_yaml: &issuer_yaml,
            ..GatewayOptions::new(format!("{}/jwks", auth.issuer), fhir.addr(), FHIR_POLICY)
        });
        use_discovery_issuer(&mut gw, &auth.issuer, AUDIENCE);
        Some(RealEnv { auth, fhir, gw })
    }

    /// `method target` through phigate, with a bearer token if given.
    pub fn send(&self, method: &str, target: &str, token: Option<&str>, body: &[u8]) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/fhir+json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        http::request(self.gw.proxy, method, target, &headers, body).unwrap()
    }

    pub fn get(&self, target: &str, token: &str) -> Response {
        self.send("GET", target, Some(token), b"")
    }
}

/// Turn the harness's issuer in the gateway's configuration into `issuer`
/// with OIDC discovery (`discovery: true` instead of its `jwks_uri:`) and
/// audience `audience`, then restart the gateway and wait until it is ready,
/// i.e. has discovered and fetched the issuer's keys.
pub fn use_discovery_issuer(gw: &mut Gateway, issuer: &str, audience: &str) {
    let config = gw.dir().join("gateway.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut replaced = 0;
    let new: Vec<String> = text
        .lines()
        .map(|l| {
            if l == format!("  - issuer: {}", crate::ISSUER) {
                replaced += 1;
                format!("  - issuer: {issuer}")
            } else if l == format!("    audiences: [{}]", crate::AUDIENCE) {
                replaced += 1;
                format!("    audiences: [\"{audience}\"]")
            } else if l.starts_with("    jwks_uri: ") {
                replaced += 1;
                "    discovery: true".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 3, "expected the harness issuer block in\n{text}");
    std::fs::write(&config, new.join("\n") + "\n").unwrap();
    gw.restart();
}

/// Debian's Prometheus server on a loopback port with its storage in a temp
/// dir; killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl Prometheus {
    /// Scrape `target`'s `/metrics` every second as job `phigate`, evaluate
    /// `rule_files` every second, and wait until the server is ready.
    pub fn start(binary: &Path, target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules: String = rule_files
            .iter()
            .map(|f| {
                format!(
                    "  - {}\n",
                    serde_json::to_string(&f.display().to_string()).unwrap()
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: phigate\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log_file = dir.path().join("prometheus.log");
        // A freed port can be taken before Prometheus binds it: retry with a
        // fresh one if it exits during start-up.
        for _ in 0..3 {
            let addr = free_addr();
            let child = Command::new(binary)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_file).unwrap())
                .spawn()
                .expect("spawn prometheus");
            let mut child = KillOnDrop(child);
            let ready = eventually(Duration::from_secs(60), || {
                if let Ok(Some(_)) = child.0.try_wait() {
                    return Some(false);
                }
                matches!(http::get(addr, "/-/ready"), Ok(r) if r.status == 200).then_some(true)
            });
            if ready == Some(true) {
                return Prometheus {
                    addr,
                    dir,
                    _child: child,
                };
            }
        }
        panic!(
            "prometheus did not start:\n{}",
            std::fs::read_to_string(&log_file).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer.
    pub fn api(&self, path: &str) -> Value {
        let r = http::get(self.addr, &format!("/api/v1/{path}")).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["status"], "success", "{body}");
        body["data"].clone()
    }

    /// An instant query's vector: (labels, value) per series.
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("query?query={}", percent_encode(expr)));
        assert_eq!(data["resultType"], "vector", "{data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that yields one series (`None`: no series yet).
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        assert!(result.len() <= 1, "{expr}: {result:?}");
        result.first().map(|(_, v)| *v)
    }

    /// The active scrape targets.
    pub fn targets(&self) -> Vec<Value> {
        self.api("targets")["activeTargets"].as_array().unwrap().clone()
    }
}
