//! A plain pingora passthrough proxy: the baseline of the side-by-side
//! harness (`benches/src/bin/sidebyside.rs`). It does what phigate does
//! minus everything phigate adds: `upstream_peer` only, every request to one
//! upstream over pingora's pooled keep-alive HTTP/1.1 connections — no
//! token, no policy, no audit, no header rewriting.
//!
//! ```sh
//! target/release/passthrough --listen 127.0.0.1:8080 --upstream 127.0.0.1:8081 [--threads 1]
//!     [--tls-listen ADDR --tls-cert PEM --tls-key PEM] [--h2c-listen ADDR]
//! ```
//!
//! It is built on the workspace's own pingora (the same crates and version
//! as phigate) and runs on the same allocator as the `phigate` binary —
//! jemalloc with background purging (`phigate::alloc`) — so that a
//! throughput, CPU or memory difference between the two is phigate's work,
//! not the allocator's. `--tls-listen` adds a TLS listener (rustls, HTTP/1.1
//! only: no ALPN, like phigate's `http2: false`); `--h2c-listen` a plaintext
//! listener accepting HTTP/2 with prior knowledge (and HTTP/1.1). Each
//! listener is its own pingora service with `--threads` worker threads, as
//! in phigate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: phigate::alloc::Jemalloc = phigate::alloc::Jemalloc;

const USAGE: &str = "usage: passthrough --listen ADDR --upstream ADDR [--threads N] \
                     [--tls-listen ADDR --tls-cert PEM --tls-key PEM] [--h2c-listen ADDR]";

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
    tls: Option<(String, String, String)>,
    h2c: Option<String>,
}

fn args() -> Args {
    let (mut listen, mut upstream, mut threads) = (None, None, 1usize);
    let (mut tls_listen, mut tls_cert, mut tls_key, mut h2c) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value\n{USAGE}"));
        match k.as_str() {
            "--listen" => listen = Some(v),
            "--upstream" => upstream = Some(v.parse().expect("--upstream ip:port")),
            "--threads" => threads = v.parse().expect("--threads N"),
            "--tls-listen" => tls_listen = Some(v),
            "--tls-cert" => tls_cert = Some(v),
            "--tls-key" => tls_key = Some(v),
            "--h2c-listen" => h2c = Some(v),
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    let tls = match (tls_listen, tls_cert, tls_key) {
        (Some(l), Some(c), Some(k)) => Some((l, c, k)),
        (None, None, None) => None,
        _ => panic!("--tls-listen, --tls-cert and --tls-key go together\n{USAGE}"),
    };
    Args {
        listen: listen.unwrap_or_else(|| panic!("--listen is required\n{USAGE}")),
        upstream: upstream.unwrap_or_else(|| panic!("--upstream is required\n{USAGE}")),
        threads: threads.max(1),
        tls,
        h2c,
    }
}

fn main() {
    phigate::alloc::start_background_purge();
    let a = args();
    let conf = ServerConf {
        threads: a.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let service = |name: &str| {
        pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            Passthrough { upstream: a.upstream },
            name,
        )
    };
    let mut plain = service("passthrough http");
    plain.add_tcp(&a.listen);
    let mut services = vec![plain];
    if let Some((listen, cert, key)) = &a.tls {
        let mut tls = service("passthrough https");
        tls.add_tls(listen, cert, key)
            .unwrap_or_else(|e| panic!("TLS listener {listen}: {e}"));
        services.push(tls);
    }
    if let Some(listen) = &a.h2c {
        let mut h2c = service("passthrough h2c");
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = true;
        h2c.app_logic_mut()
            .expect("a new proxy service has its app")
            .server_options = Some(options);
        h2c.add_tcp(listen);
        services.push(h2c);
    }
    for s in services {
        server.add_service(s);
    }
    eprintln!(
        "passthrough: {} -> {} ({} thread(s) per listener){}{}",
        a.listen,
        a.upstream,
        a.threads,
        a.tls
            .as_ref()
            .map(|(l, _, _)| format!(", TLS {l}"))
            .unwrap_or_default(),
        a.h2c.as_ref().map(|l| format!(", h2c {l}")).unwrap_or_default()
    );
    server.run_forever();
}
