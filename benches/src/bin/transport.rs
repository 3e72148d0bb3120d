//! Transport bench: TLS + HTTP/2 throughput through phigate against
//! plaintext HTTP/1.1, as ratios measured in the same run (these machines
//! are noisy). A tool for people, not a test.
//!
//! ```sh
//! cargo build --release -p phigate -p phigate-benches
//! target/release/transport [--seconds 10] [--clients 16] [--streams 10] [--phigate target/release/phigate]
//! ```
//!
//! Needs `h2load` (Debian nghttp2-client, installed by scripts/bootstrap.sh).
//! It writes a self-signed certificate (rcgen), starts `phigate dev` with a
//! plaintext listener (`--h2c`) and a TLS listener, mints a token from
//! `/dev/token`, and drives the same authorised `GET /fhir/Patient/123` with
//! h2load over: plaintext HTTP/1.1 (the baseline), TLS HTTP/1.1, TLS HTTP/2
//! (`--streams` concurrent streams per connection), h2c; plus the demo
//! upstream directly for reference. Every run uses `--clients` connections
//! for `--seconds` after a 1 s warm-up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report
#![forbid(unsafe_code)]

use std::process::Command;

use phigate_benches::devproc::{free_addr, DevProcess};

struct Args {
    seconds: u64,
    clients: usize,
    streams: usize,
    phigate: String,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        clients: 16,
        streams: 10,
        phigate: "target/release/phigate".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--clients" => a.clients = v.parse().expect("--clients N"),
            "--streams" => a.streams = v.parse().expect("--streams N"),
            "--phigate" => a.phigate = v,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// One h2load run: requests/s, and how many responses were 2xx vs total.
fn h2load(a: &Args, url: &str, token: &str, h1: bool) -> (f64, u64, u64) {
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-c",
        &a.clients.to_string(),
        "-D",
        &a.seconds.to_string(),
        "--warm-up-time",
        "1",
    ])
    .args(["-H", &format!("authorization: Bearer {token}")]);
    if h1 {
        cmd.arg("--h1");
    } else {
        cmd.args(["-m", &a.streams.to_string()]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("h2load (Debian nghttp2-client) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.trim_end_matches(" req/s").parse::<f64>().ok())
        .unwrap_or_else(|| panic!("unexpected h2load output:\n{text}"));
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default()
        .to_string();
    let two = codes
        .split(',')
        .find_map(|p| {
            p.trim()
                .strip_prefix("status codes: ")
                .and_then(|v| v.strip_suffix(" 2xx"))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" done")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rps, two, done)
}

fn main() {
    let a = args();
    let tls = free_addr();
    let dev = DevProcess::start(&a.phigate, |dir| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("tls.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        vec![
            "--h2c".into(),
            "--tls-listen".into(),
            tls.to_string(),
            "--tls-cert".into(),
            dir.join("tls.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("tls.key").display().to_string(),
        ]
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (plain, upstream) = (dev.proxy, dev.upstream);
    let token = dev.token("user/Patient.rs").unwrap_or_else(|e| panic!("{e}"));
    let path = "/fhir/Patient/123";
    println!(
        "transport: {} connections × {} s per run ({} streams per HTTP/2 connection); 2 cores shared by client and server",
        a.clients, a.seconds, a.streams
    );
    let runs = [
        (
            "upstream direct, HTTP/1.1 (reference)",
            format!("http://{upstream}{path}"),
            true,
        ),
        (
            "phigate plaintext HTTP/1.1 (baseline)",
            format!("http://{plain}{path}"),
            true,
        ),
        ("phigate TLS HTTP/1.1", format!("https://{tls}{path}"), true),
        ("phigate TLS HTTP/2", format!("https://{tls}{path}"), false),
        (
            "phigate h2c (HTTP/2, no TLS)",
            format!("http://{plain}{path}"),
            false,
        ),
    ];
    let mut results = Vec::new();
    for (name, url, h1) in runs {
        let (rps, ok, done) = h2load(&a, &url, &token, h1);
        assert!(
            done > 0 && ok == done,
            "{name}: {ok} of {done} responses were 2xx"
        );
        results.push((name, rps));
    }
    let base = results[1].1;
    println!("{:<42} {:>10} {:>16}", "run", "req/s", "vs plaintext h1");
    for (name, rps) in &results {
        println!("{name:<42} {rps:>10.0} {:>15.2}x", rps / base);
    }
}
