//! Load test for the proxy: requests/s and latency through phigate, as a
//! ratio against the same upstream hit directly, measured in the same run.
//!
//! ```sh
//! cargo build --release -p phigate -p phigate-benches
//! target/release/load [--seconds 10] [--connections 16] [--phigate target/release/phigate]
//! ```
//!
//! It starts `phigate dev` (its own dev issuer and demo FHIR upstream) on free
//! loopback ports with a temporary audit file, mints a token from
//! `/dev/token`, and drives keep-alive HTTP/1.1 connections at:
//! 1. the demo upstream directly (baseline),
//! 2. phigate, public route (`/fhir/metadata`, no token),
//! 3. phigate, `GET /fhir/Patient/123` with a token (validation from the
//!    verified-token cache, FHIR-aware decision, audit record),
//! 4. phigate, `POST /fhir/Observation` (a request with effects: an `intent`
//!    record committed before forwarding and an `outcome` record after),
//! 5. phigate with a fresh token per request (uncached signature verification),
//! 6. the read again with `--audit-intent all` (two records per read; skipped
//!    for binaries without the flag), and the read under each audit durability.
//!
//! Each run also reports the phigate process's CPU time per request (in dev
//! mode that includes its in-process demo upstream: compare runs, not
//! absolutes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use phigate_benches::devproc::DevProcess;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    seconds: u64,
    connections: usize,
    phigate: String,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        connections: 16,
        phigate: "target/release/phigate".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--phigate" => a.phigate = v,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// One keep-alive HTTP/1.1 client connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            stream: BufReader::new(s),
        }
    }

    /// Send a request and read the whole response; returns the status.
    fn send(&mut self, req: &Req, token: Option<&str>) -> u16 {
        // A bearer token, or (containing ": ") whole header lines, e.g.
        // `Authorization: DPoP …` plus its `DPoP` proof.
        let auth = token
            .map(|t| {
                if t.contains(": ") {
                    t.to_string()
                } else {
                    format!("Authorization: Bearer {t}\r\n")
                }
            })
            .unwrap_or_default();
        let body = if req.body.is_empty() {
            String::new()
        } else {
            format!(
                "Content-Type: application/fhir+json\r\nContent-Length: {}\r\n",
                req.body.len()
            )
        };
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: bench\r\n{auth}{body}\r\n",
            req.method, req.target
        );
        let mut wire = head.into_bytes();
        wire.extend_from_slice(req.body);
        self.stream.get_mut().write_all(&wire).unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).unwrap();
        status
    }
}

/// One request shape of a run.
#[derive(Clone, Copy)]
struct Req {
    method: &'static str,
    target: &'static str,
    body: &'static [u8],
}

const fn get(target: &'static str) -> Req {
    Req {
        method: "GET",
        target,
        body: b"",
    }
}

/// A FHIR create: a request with effects (intent + outcome records).
const CREATE: Req = Req {
    method: "POST",
    target: "/fhir/Observation",
    body: br#"{"resourceType":"Observation","status":"final","code":{"text":"heart rate"},"subject":{"reference":"Patient/123"}}"#,
};

struct Result {
    name: &'static str,
    requests: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the phigate process (gateway and, in dev mode, its demo
    /// upstream) per request, in microseconds.
    cpu_us: Option<f64>,
}

/// CPU time (user + system) of process `pid` so far, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is 3rd.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Drive `connections` threads for `seconds`; `token` yields the token per
/// request; `pid`: the phigate process whose CPU time is measured.
fn run(
    name: &'static str,
    addr: SocketAddr,
    req: Req,
    token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    a: &Args,
    expect: u16,
    pid: u32,
) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    let handles: Vec<_> = (0..a.connections)
        .map(|_| {
            let (stop, lat, token) = (stop.clone(), lat.clone(), token.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = token();
                    let s = Instant::now();
                    let status = c.send(&req, t.as_deref());
                    mine.push(s.elapsed());
                    assert_eq!(status, expect, "{name}: unexpected status");
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(a.seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before.zip(cpu_time(pid)).map(|(b, a)| a.saturating_sub(b));
    let mut l = std::mem::take(&mut *lat.lock().unwrap());
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Result {
        name,
        requests: l.len(),
        rps: l.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_us: cpu.map(|c| c.as_secs_f64() * 1e6 / l.len().max(1) as f64),
    }
}

fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    phigate_benches::devproc::http_get(addr, target).unwrap()
}

/// (hits, misses) of the verified-token cache from `/metrics`.
fn cache_counters(admin: SocketAddr) -> (f64, f64) {
    let (_, text) = http_get(admin, "/metrics");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    (
        value("phigate_token_cache_hits_total"),
        value("phigate_token_cache_misses_total"),
    )
}

/// `phigate dev` with the given durability and extra arguments.
fn start_dev(a: &Args, durability: &str, extra: &[&str]) -> DevProcess {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["--audit-durability".to_string(), durability.to_string()]);
    DevProcess::start(&a.phigate, |_| args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the binary under test knows `phigate dev --audit-intent`
/// (binaries before issue 11 do not: that run is skipped for them).
fn has_intent_flag(a: &Args) -> bool {
    Command::new(&a.phigate)
        .args(["dev", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--audit-intent"))
        .unwrap_or(false)
}

fn main() {
    let a = args();
    println!(
        "load: {} connections × {} s per run, 2 cores shared by client and server (ratios matter, not absolutes)",
        a.connections, a.seconds
    );
    let dev = start_dev(&a, "interval", &[]);
    let (proxy, admin, upstream, pid) = (dev.proxy, dev.admin, dev.upstream, dev.pid());
    let mint = move |scope: &str| {
        http_get(admin, &format!("/dev/token?scope={scope}&ttl=3600"))
            .1
            .trim()
            .to_string()
    };
    let token = mint("user/Patient.rs");
    let mut results = Vec::new();
    results.push(run(
        "upstream direct (baseline)",
        upstream,
        get("/fhir/Patient/123"),
        Arc::new(|| None),
        &a,
        200,
        pid,
    ));
    results.push(run(
        "phigate, public route",
        proxy,
        get("/fhir/metadata"),
        Arc::new(|| None),
        &a,
        200,
        pid,
    ));
    let t = token.clone();
    results.push(run(
        "phigate, token (cached), FHIR read",
        proxy,
        get("/fhir/Patient/123"),
        Arc::new(move || Some(t.clone())),
        &a,
        200,
        pid,
    ));
    // A request with effects: intent record before forwarding, outcome after.
    let w = mint("user/Observation.c");
    results.push(run(
        "phigate, token (cached), FHIR create (POST)",
        proxy,
        CREATE,
        Arc::new(move || Some(w.clone())),
        &a,
        201,
        pid,
    ));
    // Uncached: pre-mint a pool of distinct tokens (unique jti) twice the
    // size of the verified-token cache and cycle through it; the cache hit
    // ratio of the run is printed so the label can be checked.
    let pool: Arc<Vec<String>> = Arc::new((0..20_000).map(|_| mint("user/Patient.rs")).collect());
    let before = cache_counters(admin);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    results.push(run(
        "phigate, fresh token per request (uncached)",
        proxy,
        get("/fhir/Patient/123"),
        Arc::new(move || Some(pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()].clone())),
        &a,
        200,
        pid,
    ));
    let after = cache_counters(admin);
    let (hits, misses) = (after.0 - before.0, after.1 - before.1);
    println!(
        "uncached run: {misses:.0} signature verifications, {hits:.0} cache hits ({:.1}% hits)",
        100.0 * hits / (hits + misses).max(1.0)
    );
    // DPoP (RFC 9449): a bound token (cached) with a fresh proof per request
    // — proof signature, checks and the one-time `jti` (memory store in dev
    // mode). Proofs are signed before the run, enough for it.
    let client = phigate_benches::dpop::ClientKey::generate();
    let bound = http_get(
        admin,
        &format!("/dev/token?scope=user/Patient.rs&ttl=3600&jkt={}", client.jkt()),
    )
    .1
    .trim()
    .to_string();
    let n = (a.seconds as usize * 12_000).max(20_000);
    let proofs: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| {
                format!(
                    "Authorization: DPoP {bound}\r\nDPoP: {}\r\n",
                    client.proof("GET", "http://bench/fhir/Patient/123", &bound, i)
                )
            })
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    results.push(run(
        "phigate, DPoP-bound token (cached) + fresh proof",
        proxy,
        get("/fhir/Patient/123"),
        Arc::new(move || {
            let i = next.fetch_add(1, Ordering::Relaxed);
            assert!(i < proofs.len(), "proof pool exhausted: raise its size");
            Some(proofs[i].clone())
        }),
        &a,
        200,
        pid,
    ));
    drop(dev);
    // Reads with an intent record too (`audit.intent: all`).
    if has_intent_flag(&a) {
        let d = start_dev(&a, "interval", &["--audit-intent", "all"]);
        let t = http_get(d.admin, "/dev/token?scope=user/Patient.rs&ttl=3600")
            .1
            .trim()
            .to_string();
        results.push(run(
            "phigate, FHIR read, audit.intent all",
            d.proxy,
            get("/fhir/Patient/123"),
            Arc::new(move || Some(t.clone())),
            &a,
            200,
            d.pid(),
        ));
    } else {
        println!("(this binary has no --audit-intent: the intent-all run is skipped)");
    }
    // Audit durability: the same cached-token read with each spool mode.
    for (name, mode) in [
        ("audit durability none (no fsync)", "none"),
        ("audit durability interval (10 ms)", "interval"),
        ("audit durability per_request", "per_request"),
    ] {
        let d = start_dev(&a, mode, &[]);
        let admin = d.admin;
        let t = http_get(admin, "/dev/token?scope=user/Patient.rs&ttl=3600")
            .1
            .trim()
            .to_string();
        results.push(run(
            name,
            d.proxy,
            get("/fhir/Patient/123"),
            Arc::new(move || Some(t.clone())),
            &a,
            200,
            d.pid(),
        ));
    }
    let base = results[0].rps;
    println!(
        "{:<46} {:>9} {:>10} {:>9} {:>9} {:>8} {:>12}",
        "run", "requests", "req/s", "p50", "p99", "vs base", "cpu µs/req"
    );
    for r in &results {
        println!(
            "{:<46} {:>9} {:>10.0} {:>9.2?} {:>9.2?} {:>7.2}x {:>12}",
            r.name,
            r.requests,
            r.rps,
            r.p50,
            r.p99,
            r.rps / base,
            r.cpu_us.map_or("-".to_string(), |c| format!("{c:.0}"))
        );
    }
    let none = results
        .iter()
        .find(|r| r.name.contains("none"))
        .map_or(1.0, |r| r.rps);
    for r in results.iter().filter(|r| r.name.starts_with("audit durability")) {
        println!("{:<46} {:>7.2}x of durability none", r.name, r.rps / none);
    }
}
