//! Memory and file-descriptor soak for the gateway: does RSS come back after
//! many keep-alive connections close? A bounded tool for people, not run in CI.
//!
//! ```sh
//! cargo build --release -p phigate -p phigate-benches
//! target/release/soak                                  # one round, 2000 connections (~2 min)
//! target/release/soak --minutes 10                     # the full soak: load/idle rounds for 10 min
//! target/release/soak --phigate A --phigate B --repeat 2   # compare binaries, interleaved A B A B
//! ```
//!
//! Options: `--connections N` (2000), `--phigate PATH` (repeatable;
//! `target/release/phigate`), `--minutes M` (total per binary; default one
//! round), `--load-seconds S` (30), `--idle-seconds S` (60),
//! `--baseline-seconds S` (10), `--repeat K` (1), `--csv FILE` (the per-second
//! samples: binary, run, seconds, phase, RSS, fds).
//!
//! For each binary it starts `phigate dev` (dev issuer, demo FHIR upstream,
//! gateway) on free loopback ports, mints a token from the admin listener's
//! `/dev/token`, and samples the gateway process's `VmRSS`
//! (`/proc/<pid>/status`) and open fds (`/proc/<pid>/fd`) every second. Then:
//! 1. baseline: idle for `--baseline-seconds`;
//! 2. a round: `--connections` keep-alive HTTP/1.1 connections (one thread
//!    each; source addresses spread over 127.0.0.2.. at most 100 per address,
//!    below the gateway's per-client in-flight limit) each send requests back
//!    to back for `--load-seconds` — three `GET /fhir/Patient/123` with the
//!    token for every public `GET /fhir/metadata` — then all close, and the
//!    gateway idles for `--idle-seconds`;
//! 3. with `--minutes`, rounds repeat while the next one fits in the time.
//!
//! It prints RSS and fds at baseline, peak under load, and 5 s / 30 s / 60 s
//! after the close, with req/s and p50/p99 latency per round. The exit code
//! is non-zero only on errors: the gateway died or failed to start, a
//! connection failed, or a response was not 200.
//!
//! Each connection is a client thread and a gateway socket (plus a pooled
//! upstream connection to the demo upstream in the same process): raise
//! `ulimit -n` if the hard limit is below ~3× `--connections`; the tool
//! raises its own soft limit (inherited by the gateway) to the hard limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report
#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use phigate_benches::devproc::DevProcess;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

struct Args {
    connections: usize,
    phigates: Vec<String>,
    minutes: Option<f64>,
    load_seconds: u64,
    idle_seconds: u64,
    baseline_seconds: u64,
    repeat: usize,
    csv: Option<PathBuf>,
}

const USAGE: &str = "usage: soak [--connections N] [--phigate PATH]... [--minutes M] [--load-seconds S] \
                     [--idle-seconds S] [--baseline-seconds S] [--repeat K] [--csv FILE]";

fn args() -> Args {
    let mut a = Args {
        connections: 2000,
        phigates: Vec::new(),
        minutes: None,
        load_seconds: 30,
        idle_seconds: 60,
        baseline_seconds: 10,
        repeat: 1,
        csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value\n{USAGE}"));
        match k.as_str() {
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--phigate" => a.phigates.push(v),
            "--minutes" => a.minutes = Some(v.parse().expect("--minutes M")),
            "--load-seconds" => a.load_seconds = v.parse().expect("--load-seconds S"),
            "--idle-seconds" => a.idle_seconds = v.parse().expect("--idle-seconds S"),
            "--baseline-seconds" => a.baseline_seconds = v.parse().expect("--baseline-seconds S"),
            "--repeat" => a.repeat = v.parse().expect("--repeat K"),
            "--csv" => a.csv = Some(v.into()),
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.phigates.is_empty() {
        a.phigates.push("target/release/phigate".into());
    }
    assert!(a.connections > 0 && a.repeat > 0, "{USAGE}");
    a
}

/// RSS (KiB) and open fds of a process; `None` once it has exited (or is a zombie).
fn proc_sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// What one client connection did in a round.
#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    non_200: usize,
    errors: Vec<String>,
}

fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(10))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// One client connection: connect, wait for everyone, request until `stop`, close.
fn client(src: Ipv4Addr, to: SocketAddr, token: &str, start: &Barrier, stop: &AtomicBool) -> ConnStats {
    let mut st = ConnStats::default();
    let mut conn = {
        let mut tries = 0;
        loop {
            match connect_from(src, to) {
                Ok(s) => break Some(BufReader::new(s)),
                Err(e) if tries >= 5 => {
                    st.errors.push(format!("connect from {src}: {e}"));
                    break None;
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    };
    start.wait();
    let Some(c) = conn.as_mut() else { return st };
    let token_req =
        format!("GET /fhir/Patient/123 HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\r\n");
    let public_req = "GET /fhir/metadata HTTP/1.1\r\nHost: soak\r\n\r\n";
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let req = if i % 4 == 3 {
            public_req
        } else {
            token_req.as_str()
        };
        i += 1;
        let t = Instant::now();
        let r = c
            .get_mut()
            .write_all(req.as_bytes())
            .and_then(|()| phigate_benches::http1::read_response(c).map(|(status, _)| status));
        match r {
            Ok(status) => {
                st.latencies_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if status != 200 {
                    st.non_200 += 1;
                }
            }
            Err(e) => {
                st.errors.push(format!("request: {e}"));
                break;
            }
        }
    }
    st // dropping `conn` closes the connection
}

type Dev = DevProcess;

fn start_dev(binary: &str) -> Result<Dev, String> {
    DevProcess::start(binary, |_| Vec::new())
}

/// Per-second samples of the gateway, taken by a background thread.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    phase: Arc<Mutex<&'static str>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Sample {
    t: f64,
    phase: &'static str,
    rss_kb: u64,
    fds: usize,
}

impl Sampler {
    fn start(pid: u32, t0: Instant) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let phase = Arc::new(Mutex::new("baseline"));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (samples, phase, stop) = (samples.clone(), phase.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss_kb, fds)) = proc_sample(pid) {
                        let p = *phase.lock().unwrap();
                        samples.lock().unwrap().push(Sample {
                            t: t0.elapsed().as_secs_f64(),
                            phase: p,
                            rss_kb,
                            fds,
                        });
                    }
                    next += Duration::from_secs(1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        Sampler {
            samples,
            phase,
            stop,
            handle: Some(handle),
        }
    }

    fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap() = p;
    }

    /// The largest RSS and fd count sampled at or after `since` seconds.
    fn peak_since(&self, since: f64) -> (u64, usize) {
        let s = self.samples.lock().unwrap();
        let it = s.iter().filter(|x| x.t >= since);
        (
            it.clone().map(|x| x.rss_kb).max().unwrap_or(0),
            it.map(|x| x.fds).max().unwrap_or(0),
        )
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

#[derive(Clone, Copy, Default)]
struct Mark {
    rss_kb: u64,
    fds: usize,
}

struct Round {
    peak: Mark,
    after: [Mark; 3], // 5 s, 30 s, 60 s after the close (or the end of a shorter idle)
    requests: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    non_200: usize,
    errors: usize,
}

struct Run {
    binary: String,
    run: usize,
    baseline: Mark,
    rounds: Vec<Round>,
    samples: Vec<Sample>,
    error: Option<String>,
}

fn mark(dev: &mut Dev) -> Result<Mark, String> {
    dev.alive()?;
    proc_sample(dev.pid())
        .map(|(rss_kb, fds)| Mark { rss_kb, fds })
        .ok_or_else(|| "the gateway's /proc entry is gone".to_string())
}

/// Sleep until `t0 + secs`.
fn sleep_until(t0: Instant, secs: u64) {
    std::thread::sleep((t0 + Duration::from_secs(secs)).saturating_duration_since(Instant::now()));
}

fn load_round(a: &Args, dev: &mut Dev, sampler: &Sampler, t0: Instant) -> Result<Round, String> {
    let token = Arc::new(dev.token("user/Patient.rs")?);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(a.connections + 1));
    let proxy = dev.proxy;
    sampler.set_phase("load");
    let load_from = t0.elapsed().as_secs_f64();
    let handles: Vec<_> = (0..a.connections)
        .map(|i| {
            let (token, start, stop) = (token.clone(), start.clone(), stop.clone());
            // 127.0.0.2 + i/100: 100 connections per client address.
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i / 100) as u32);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(src, proxy, &token, &start, &stop))
                .expect("spawn a client thread (raise ulimit -u?)")
        })
        .collect();
    start.wait(); // every connection is open (or has failed)
    let began = Instant::now();
    let connected = proc_sample(dev.pid()).map(|(_, f)| f).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(a.load_seconds));
    let end_of_load = mark(dev);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut non_200, mut errors) = (0, Vec::new());
    for h in handles {
        let st = h.join().map_err(|_| "a client thread panicked".to_string())?;
        lat.extend(st.latencies_us);
        non_200 += st.non_200;
        errors.extend(st.errors);
    }
    let elapsed = began.elapsed();
    let closed = Instant::now();
    sampler.set_phase("idle");
    let (peak_rss, peak_fds) = sampler.peak_since(load_from);
    let end_of_load = end_of_load?;
    let peak = Mark {
        rss_kb: peak_rss.max(end_of_load.rss_kb),
        fds: peak_fds.max(end_of_load.fds).max(connected),
    };
    lat.sort_unstable();
    let pct = |p: f64| {
        let us = lat
            .get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        Duration::from_micros(us.into())
    };
    let mut after = [Mark::default(); 3];
    for (slot, secs) in after.iter_mut().zip([5u64, 30, 60]) {
        let secs = secs.min(a.idle_seconds);
        sleep_until(closed, secs);
        *slot = mark(dev)?;
    }
    sleep_until(closed, a.idle_seconds);
    dev.alive()?;
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        eprintln!("soak: {} connection error(s), e.g. {}", errors.len(), errors[0]);
    }
    Ok(Round {
        peak,
        after,
        requests: lat.len(),
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        non_200,
        errors: errors.len(),
    })
}

fn soak(a: &Args, binary: &str, run: usize) -> Run {
    let mut out = Run {
        binary: binary.to_string(),
        run,
        baseline: Mark::default(),
        rounds: Vec::new(),
        samples: Vec::new(),
        error: None,
    };
    let mut dev = match start_dev(binary) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let t0 = Instant::now();
    let sampler = Sampler::start(dev.pid(), t0);
    let round_len = a.load_seconds + a.idle_seconds + 2;
    let budget = a.minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let result = (|| -> Result<(), String> {
        sleep_until(t0, a.baseline_seconds);
        out.baseline = mark(&mut dev)?;
        loop {
            let r = load_round(a, &mut dev, &sampler, t0)?;
            let round = out.rounds.len() + 1;
            let mb = |m: Mark| m.rss_kb as f64 / 1024.0;
            eprintln!(
                "soak: {binary} run {run} round {round}: RSS {:.0} MB peak {:.0} +60s {:.0}; {} requests, {:.0} req/s, p99 {:.1?}",
                mb(out.baseline),
                mb(r.peak),
                mb(r.after[2]),
                r.requests,
                r.rps,
                r.p99
            );
            out.rounds.push(r);
            let next_end = t0.elapsed() + Duration::from_secs(round_len);
            match budget {
                Some(b) if next_end <= b => {}
                _ => return Ok(()),
            }
        }
    })();
    out.error = result.err();
    out.samples = sampler.finish();
    out
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn print_report(a: &Args, runs: &[Run]) {
    println!();
    println!(
        "soak: {} keep-alive connections, {} s load + {} s idle per round, baseline after {} s idle; RSS in MB",
        a.connections, a.load_seconds, a.idle_seconds, a.baseline_seconds
    );
    let after_label: Vec<String> = [5u64, 30, 60]
        .iter()
        .map(|s| format!("+{}s", s.min(&a.idle_seconds)))
        .collect();
    println!(
        "{:<28} {:>3} {:>3} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>5} {:>5} {:>5} {:>5} {:>5} | {:>7} {:>9} {:>9} {:>5} {:>4}",
        "binary",
        "run",
        "rnd",
        "RSS0",
        "peak",
        after_label[0],
        after_label[1],
        after_label[2],
        "fd0",
        "peak",
        after_label[0],
        after_label[1],
        after_label[2],
        "req/s",
        "p50",
        "p99",
        "!200",
        "err"
    );
    for r in runs {
        let name = Path::new(&r.binary)
            .components()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<PathBuf>()
            .display()
            .to_string();
        for (i, x) in r.rounds.iter().enumerate() {
            println!(
                "{:<28} {:>3} {:>3} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>5} {:>5} {:>5} {:>5} {:>5} | {:>7.0} {:>9.2?} {:>9.2?} {:>5} {:>4}",
                name,
                r.run,
                i + 1,
                mb(r.baseline.rss_kb),
                mb(x.peak.rss_kb),
                mb(x.after[0].rss_kb),
                mb(x.after[1].rss_kb),
                mb(x.after[2].rss_kb),
                r.baseline.fds,
                x.peak.fds,
                x.after[0].fds,
                x.after[1].fds,
                x.after[2].fds,
                x.rps,
                x.p50,
                x.p99,
                x.non_200,
                x.errors
            );
        }
        if let Some(e) = &r.error {
            println!("{name:<28} {:>3}     | ERROR: {e}", r.run);
        }
    }
}

fn write_csv(path: &Path, runs: &[Run]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "binary,run,t_s,phase,rss_kb,fds")?;
    for r in runs {
        for s in &r.samples {
            writeln!(
                f,
                "{},{},{:.1},{},{},{}",
                r.binary, r.run, s.t, s.phase, s.rss_kb, s.fds
            )?;
        }
    }
    f.flush()
}

fn main() -> ExitCode {
    let a = args();
    // Each connection costs an fd here and ~2 in the gateway (which inherits this limit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < a.connections * 3 + 200 => eprintln!(
            "soak: open-file limit {n} is low for {} connections; raise the hard limit (ulimit -Hn)",
            a.connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("soak: cannot raise the open-file limit: {e}"),
    }
    let mut runs = Vec::new();
    for run in 1..=a.repeat {
        for binary in &a.phigates {
            eprintln!("soak: {binary}, run {run}");
            runs.push(soak(&a, binary, run));
        }
    }
    print_report(&a, &runs);
    if let Some(path) = &a.csv {
        if let Err(e) = write_csv(path, &runs) {
            eprintln!("soak: cannot write {}: {e}", path.display());
        }
    }
    let failed = runs
        .iter()
        .any(|r| r.error.is_some() || r.rounds.iter().any(|x| x.errors > 0 || x.non_200 > 0));
    if failed {
        eprintln!("soak: errors (see above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
