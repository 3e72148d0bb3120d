use super::*;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn spec(name: &str, prefix: &str, rewrite: Option<&str>, addresses: &[&str]) -> UpstreamSpec {
    UpstreamSpec {
        name: name.into(),
        prefix: prefix.into(),
        rewrite: rewrite.map(Into::into),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        tls: None,
        health_check: None,
        resolve_interval: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
    }
}

#[test]
fn rewrite_target_table() {
    // (prefix as configured, rewrite as configured, target, expected)
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("/fhir", None, "/fhir", Some("/fhir")),
        ("/fhir", None, "/fhir/Patient/1?x=1", Some("/fhir/Patient/1?x=1")),
        ("/fhir", None, "/fhirx", None),
        ("/fhir", None, "/fhirx/Patient", None),
        ("/fhir", None, "/other", None),
        ("/fhir", None, "/", None),
        (
            "/fhir",
            Some("/fhir/R4"),
            "/fhir/Patient/1?x=1",
            Some("/fhir/R4/Patient/1?x=1"),
        ),
        ("/fhir", Some("/fhir/R4"), "/fhir", Some("/fhir/R4")),
        ("/fhir", Some("/fhir/R4"), "/fhir/", Some("/fhir/R4/")),
        ("/fhir", Some("/fhir/R4"), "/fhir?x=1", Some("/fhir/R4?x=1")),
        (
            "/fhir/",
            Some("/fhir/R4/"),
            "/fhir/Patient",
            Some("/fhir/R4/Patient"),
        ),
        ("/fhir/", Some("/fhir/R4/"), "/fhir", Some("/fhir/R4")),
        ("/fhir", Some("/"), "/fhir/Patient", Some("/Patient")),
        ("/fhir", Some("/"), "/fhir", Some("/")),
        ("/fhir", Some("/"), "/fhir/", Some("/")),
        ("/fhir", Some("/"), "/fhir?x=1", Some("/?x=1")),
        ("/", None, "/", Some("/")),
        ("/", None, "/anything/at/all?q=/x", Some("/anything/at/all?q=/x")),
        ("/", Some("/base"), "/", Some("/base/")),
        ("/", Some("/base"), "/Patient/1", Some("/base/Patient/1")),
        ("/", Some("/base/"), "/Patient?x=/y", Some("/base/Patient?x=/y")),
        ("/", Some("/base"), "/?x=1", Some("/base/?x=1")),
        ("/", Some("/"), "/Patient", Some("/Patient")),
        ("/a/b", Some("/c"), "/a/b/d", Some("/c/d")),
        ("/a/b", Some("/c"), "/a/bd", None),
        ("/a/b", Some("/c"), "/a", None),
        (
            "/fhir",
            Some("/base"),
            "/fhir/x?y=/fhir/z",
            Some("/base/x?y=/fhir/z"),
        ),
        ("/", None, "*", None),
        ("/", None, "", None),
        ("/", None, "http://h/x", None),
    ];
    for (prefix, rewrite, target, expected) in cases {
        let p = normalize_prefix(prefix);
        let r = rewrite.map(normalize_prefix);
        assert_eq!(
            rewrite_target(&p, r.as_deref(), target).as_deref(),
            *expected,
            "prefix {prefix:?} rewrite {rewrite:?} target {target:?}"
        );
    }
}

#[test]
fn route_takes_the_longest_prefix() {
    let (ups, services) = Upstreams::build(vec![
        spec("root", "/", Some("/base"), &["127.0.0.1:1"]),
        spec("fhir", "/fhir", Some("/fhir/R4"), &["127.0.0.1:2"]),
        spec("fhir-admin", "/fhir/admin/", None, &["127.0.0.1:3"]),
    ])
    .unwrap();
    assert!(
        services.is_empty(),
        "IP literals without health checks need no service"
    );
    let cases = [
        ("/fhir/Patient/1?x=1", "fhir", "/fhir/R4/Patient/1?x=1"),
        ("/fhir", "fhir", "/fhir/R4"),
        ("/fhir?x", "fhir", "/fhir/R4?x"),
        ("/fhirx", "root", "/base/fhirx"),
        ("/fhir/admin", "fhir-admin", "/fhir/admin"),
        ("/fhir/admin/x", "fhir-admin", "/fhir/admin/x"),
        ("/fhir/administrator", "fhir", "/fhir/R4/administrator"),
        ("/", "root", "/base/"),
        ("/metadata", "root", "/base/metadata"),
    ];
    for (target, upstream, forwarded) in cases {
        let r = ups.route(target).unwrap();
        assert_eq!(
            (r.upstream.name(), r.target.as_str()),
            (upstream, forwarded),
            "{target}"
        );
    }
    assert!(ups.route("*").is_none());
    assert_eq!(ups.get("fhir-admin").unwrap().prefix(), "/fhir/admin");
    assert_eq!(ups.get("root").unwrap().prefix(), "/");

    let (ups, _) = Upstreams::build(vec![spec("fhir", "/fhir", None, &["127.0.0.1:2"])]).unwrap();
    assert!(ups.route("/other").is_none());
}

fn build_err(specs: Vec<UpstreamSpec>) -> String {
    match Upstreams::build(specs) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn build_rejects_bad_specs_naming_upstream_and_value() {
    let a = &["127.0.0.1:1"];
    let e = build_err(vec![spec("x", "/a", None, a), spec("x", "/b", None, a)]);
    assert!(e.contains("`x`") && e.contains("name"), "{e}");
    let e = build_err(vec![spec("x", "/a", None, a), spec("y", "/a/", None, a)]);
    assert!(
        e.contains("`y`") && e.contains("`/a/`") && e.contains("`x`"),
        "{e}"
    );
    let e = build_err(vec![spec("x", "fhir", None, a)]);
    assert!(e.contains("`x`") && e.contains("`fhir`"), "{e}");
    let e = build_err(vec![spec("x", "/a", Some("b"), a)]);
    assert!(e.contains("rewrite `b`"), "{e}");
    let e = build_err(vec![spec("x", "/a//b", None, a)]);
    assert!(e.contains("//"), "{e}");
    let e = build_err(vec![spec("x", "/a", None, &[])]);
    assert!(e.contains("`x`: no addresses"), "{e}");
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "::1:80",
        "bad host:80",
        "-x:80",
        "h:99999",
        ":80",
    ] {
        let e = build_err(vec![spec("x", "/", None, &[bad])]);
        assert!(e.contains(&format!("address `{bad}`")), "{e}");
    }
    let mut s = spec("x", "/", None, a);
    s.resolve_interval = Duration::ZERO;
    assert!(build_err(vec![s]).contains("resolve_interval"));
    let mut s = spec("x", "/", None, a);
    s.health_check = Some(HealthCheckSpec {
        path: "healthz".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    });
    assert!(build_err(vec![s]).contains("health_check.path `healthz`"));

    let dir = tempfile::tempdir().unwrap();
    let tls = |ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>| {
        let mut s = spec("t", "/", None, a);
        s.tls = Some(UpstreamTlsSpec {
            ca,
            sni: None,
            verify: true,
            cert,
            key,
        });
        s
    };
    let missing = dir.path().join("missing.pem");
    let e = build_err(vec![tls(Some(missing.clone()), None, None)]);
    assert!(
        e.contains("`t`") && e.contains("tls.ca") && e.contains("missing.pem"),
        "{e}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let e = build_err(vec![tls(Some(garbage.clone()), None, None)]);
    assert!(e.contains("garbage.pem") && e.contains("no CERTIFICATE"), "{e}");
    let bad_der = dir.path().join("bad-der.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAECAwQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = build_err(vec![tls(Some(bad_der), None, None)]);
    assert!(e.contains("bad-der.pem") && e.contains("not X.509"), "{e}");
    let e = build_err(vec![tls(None, Some(garbage.clone()), None)]);
    assert!(e.contains("only tls.cert"), "{e}");
    let e = build_err(vec![tls(None, None, Some(garbage.clone()))]);
    assert!(e.contains("only tls.key"), "{e}");

    let pki = Pki::generate(dir.path());
    let e = build_err(vec![tls(None, Some(pki.client_cert.clone()), Some(garbage))]);
    assert!(e.contains("tls.key") && e.contains("garbage.pem"), "{e}");
    // A key that is not the certificate's.
    let e = build_err(vec![tls(
        None,
        Some(pki.client_cert.clone()),
        Some(pki.server_key.clone()),
    )]);
    assert!(e.contains("not a usable client certificate"), "{e}");
    let mut s = tls(Some(pki.ca.clone()), None, None);
    if let Some(t) = s.tls.as_mut() {
        t.sni = Some("bad sni".into());
    }
    assert!(build_err(vec![s]).contains("tls.sni `bad sni`"));
}

#[test]
fn dns_failure_keeps_the_last_good_answer() {
    let a: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:443".parse().unwrap();
    let mut r = Resolution::default();
    apply_answer("u", "db:443", &mut r, Err("timeout".into()));
    assert!(r.addrs.is_empty() && r.failing);
    apply_answer("u", "db:443", &mut r, Ok(vec![a]));
    assert_eq!(r.addrs, vec![a]);
    apply_answer("u", "db:443", &mut r, Err("SERVFAIL".into()));
    assert_eq!(r.addrs, vec![a], "kept");
    assert!(r.failing);
    apply_answer("u", "db:443", &mut r, Ok(vec![a, b]));
    assert_eq!(r.addrs, vec![a, b]);
    assert!(!r.failing);
    assert!(normalize_answer(std::iter::empty()).is_err());
    assert_eq!(normalize_answer([b, a, b].into_iter()).unwrap(), vec![a, b]);
}

#[test]
fn round_robin_exclude_and_passive_failures() {
    let (ups, _) = Upstreams::build_with_cooldown(
        vec![
            spec("two", "/two", None, &["127.0.0.1:1001", "127.0.0.1:1002"]),
            spec("one", "/one", None, &["127.0.0.1:1003"]),
        ],
        Duration::from_millis(300),
    )
    .unwrap();
    let two = ups.get("two").unwrap();
    let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();

    // Round robin: both addresses, alternating.
    let picks: Vec<SocketAddr> = (0..4).map(|_| ups.select(two, &[]).unwrap().addr).collect();
    assert!(picks.contains(&a) && picks.contains(&b), "{picks:?}");
    assert_ne!(picks[0], picks[1]);

    // Exclusion for retries.
    for _ in 0..5 {
        assert_eq!(ups.select(two, &[a]).unwrap().addr, b);
    }
    let err = ups.select(two, &[a, b]).unwrap_err();
    assert_eq!((err.known, err.excluded), (2, 2));

    // Passive failure: out for the cooldown, then back.
    ups.report_connect_failure(two, a);
    for _ in 0..10 {
        assert_eq!(ups.select(two, &[]).unwrap().addr, b);
    }
    let h = ups.health();
    let ha = h.iter().find(|h| h.address == a.to_string()).unwrap();
    assert!(ha.healthy && ha.passive_down, "{h:?}");
    assert!(ups.any_healthy(two));
    std::thread::sleep(Duration::from_millis(350));
    let picks: Vec<SocketAddr> = (0..4).map(|_| ups.select(two, &[]).unwrap().addr).collect();
    assert!(picks.contains(&a), "back after the cooldown: {picks:?}");

    // A single address cooling down and no other: tried anyway (passive
    // state only steers), and the upstream still counts as available.
    let one = ups.get("one").unwrap();
    let c: SocketAddr = "127.0.0.1:1003".parse().unwrap();
    ups.report_connect_failure(one, c);
    assert_eq!(ups.select(one, &[]).unwrap().addr, c);
    assert!(ups.any_healthy(one));
    assert!(ups.health().iter().any(|h| h.upstream == "one" && h.passive_down));
    // Excluded (already tried by this request): nothing left.
    let err = ups.select(one, &[c]).unwrap_err();
    assert_eq!(err.upstream, "one");
    assert!(err.to_string().contains("`one`"));
    ups.report_success(one, c);
    assert_eq!(ups.select(one, &[]).unwrap().addr, c);
    assert!(ups.any_healthy(one));
}

#[test]
fn selected_plain_peer() {
    let mut s = spec("p", "/", None, &["127.0.0.1:8080"]);
    s.connect_timeout = Duration::from_millis(1500);
    s.read_timeout = Duration::from_secs(7);
    let (ups, _) = Upstreams::build(vec![s]).unwrap();
    let sel = ups.select(ups.get("p").unwrap(), &[]).unwrap();
    assert!(!sel.peer.is_tls());
    assert_eq!(sel.peer._address.as_inet(), Some(&sel.addr));
    assert_eq!(
        sel.peer.options.connection_timeout,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(sel.peer.options.read_timeout, Some(Duration::from_secs(7)));
    assert_eq!(
        (sel.upstream.as_str(), sel.address.as_str()),
        ("p", "127.0.0.1:8080")
    );
    assert_eq!(sel.authority, "127.0.0.1:8080");
    assert_eq!(
        ups.health(),
        vec![AddressHealth {
            upstream: "p".into(),
            address: "127.0.0.1:8080".into(),
            healthy: true,
            passive_down: false,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_resolves_and_is_selected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = format!("localhost:{port}");
    let (ups, services) = Upstreams::build(vec![spec("h", "/", None, &[&written])]).unwrap();
    assert_eq!(services.len(), 1, "hostnames are re-resolved by a service");
    let u = ups.get("h").unwrap();
    let sel = ups.select(u, &[]).unwrap();
    assert!(sel.addr.ip().is_loopback() && sel.addr.port() == port, "{sel:?}");
    assert_eq!(sel.address, written);
    assert_eq!(sel.authority, written);
    let h = ups.health();
    assert!(
        h.iter()
            .any(|h| h.address == format!("{written} ({})", sel.addr) && h.healthy),
        "{h:?}"
    );
    // The background service re-resolves (and keeps the answer).
    let stop = run(services);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ups.select(u, &[]).is_ok());
    stop.send(true).unwrap();
}

// ---- real peers ----

/// Runs the background services as the pingora server would; dropping
/// or sending `true` stops them.
fn run(services: BackgroundServices) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    for mut s in services {
        let rx = rx.clone();
        tokio::spawn(async move {
            let (ready, _ready_rx) = tokio::sync::watch::channel(false);
            s.start_service(
                None,
                rx,
                1,
                pingora_core::services::ServiceReadyNotifier::new(ready),
            )
            .await;
        });
    }
    tx
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tiny HTTP/1.1 server: `/healthz` answers 200 while `healthy`, else
/// 503; every answer closes the connection. With TLS it records whether
/// the client presented a certificate.
struct TestServer {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    health_ok: Arc<AtomicUsize>,
    health_requests: Arc<AtomicUsize>,
    client_certs: Arc<AtomicUsize>,
    hosts: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    healthy: &AtomicBool,
    ok: &AtomicUsize,
    requests: &AtomicUsize,
    hosts: &Mutex<Vec<String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    if let Some(h) = head
        .lines()
        .find_map(|l| l.strip_prefix("Host: ").or_else(|| l.strip_prefix("host: ")))
    {
        hosts.lock().unwrap().push(h.to_string());
    }
    let status = if path == "/healthz" {
        requests.fetch_add(1, Ordering::SeqCst);
        if healthy.load(Ordering::SeqCst) {
            ok.fetch_add(1, Ordering::SeqCst);
            "200 OK"
        } else {
            "503 Service Unavailable"
        }
    } else {
        "200 OK"
    };
    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn start_server(tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let health_ok = Arc::new(AtomicUsize::new(0));
    let health_requests = Arc::new(AtomicUsize::new(0));
    let client_certs = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (h, o, r, c, hs) = (
        Arc::clone(&healthy),
        Arc::clone(&health_ok),
        Arc::clone(&health_requests),
        Arc::clone(&client_certs),
        Arc::clone(&hosts),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, o, r, c, hs, acceptor) = (
                Arc::clone(&h),
                Arc::clone(&o),
                Arc::clone(&r),
                Arc::clone(&c),
                Arc::clone(&hs),
                acceptor.clone(),
            );
            tokio::spawn(async move {
                match acceptor {
                    None => answer(stream, &h, &o, &r, &hs).await,
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        if tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        answer(tls, &h, &o, &r, &hs).await;
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        healthy,
        health_ok,
        health_requests,
        client_certs,
        hosts,
        task,
    }
}

fn health_spec(interval_ms: u64, healthy_threshold: usize, unhealthy_threshold: usize) -> HealthCheckSpec {
    HealthCheckSpec {
        path: "/healthz".into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(500),
        healthy_threshold,
        unhealthy_threshold,
    }
}

fn healthy_of(ups: &Upstreams, addr: SocketAddr) -> Option<bool> {
    ups.health()
        .into_iter()
        .find(|h| h.address.contains(&addr.to_string()))
        .map(|h| h.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_takes_a_dead_address_out() {
    let live = start_server(None).await;
    // A port with nothing listening: bound, then released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut s = spec("hc", "/", None, &[&live.addr.to_string(), &dead.to_string()]);
    s.health_check = Some(health_spec(50, 1, 2));
    let (ups, services) = Upstreams::build(vec![s]).unwrap();
    let u = ups.get("hc").unwrap();
    // Before the first check both count as healthy.
    assert_eq!(healthy_of(&ups, dead), Some(true));
    let stop = run(services);
    eventually("dead address marked unhealthy", || {
        healthy_of(&ups, dead) == Some(false)
    })
    .await;
    assert_eq!(healthy_of(&ups, live.addr), Some(true));
    for _ in 0..20 {
        assert_eq!(ups.select(u, &[]).unwrap().addr, live.addr);
    }
    assert!(ups.any_healthy(u));
    // The health check sent Host = the address's authority.
    assert!(live.hosts.lock().unwrap().contains(&live.addr.to_string()));
    // Only the dead address left: none healthy.
    let err = ups.select(u, &[live.addr]).unwrap_err();
    assert_eq!(err.known, 2);
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_follows_the_http_answer() {
    let a = start_server(None).await;
    let b = start_server(None).await;
    let mut s = spec("hc", "/", None, &[&a.addr.to_string(), &b.addr.to_string()]);
    s.health_check = Some(health_spec(40, 3, 2));
    let (ups, services) = Upstreams::build(vec![s]).unwrap();
    let u = ups.get("hc").unwrap();
    let stop = run(services);
    eventually("checks running", || b.health_requests.load(Ordering::SeqCst) >= 2).await;

    b.healthy.store(false, Ordering::SeqCst);
    eventually("503 marks it unhealthy", || {
        healthy_of(&ups, b.addr) == Some(false)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(ups.select(u, &[]).unwrap().addr, a.addr);
    }
    let h = ups.health();
    assert!(
        h.iter()
            .any(|h| h.address == b.addr.to_string() && !h.healthy && !h.passive_down),
        "{h:?}"
    );

    let ok_before = b.health_ok.load(Ordering::SeqCst);
    b.healthy.store(true, Ordering::SeqCst);
    eventually("200 makes it healthy again", || {
        healthy_of(&ups, b.addr) == Some(true)
    })
    .await;
    assert!(
        b.health_ok.load(Ordering::SeqCst) - ok_before >= 3,
        "healthy only after healthy_threshold passed checks"
    );
    let picks: Vec<SocketAddr> = (0..4).map(|_| ups.select(u, &[]).unwrap().addr).collect();
    assert!(picks.contains(&b.addr), "{picks:?}");
    stop.send(true).unwrap();
}

// ---- TLS ----

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    /// A CA with a server certificate (`localhost`, `127.0.0.1`) and a
    /// client certificate, and an unrelated second CA.
    fn generate(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let make_ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = make_ca("phigate test CA");
        let (other_pem, _) = make_ca("unrelated CA");
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let leaf = |name: &str, sans: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = leaf("server", vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf("client", vec!["phigate-client".into()]);
        Pki {
            ca: write("ca.pem", ca_pem),
            other_ca: write("other-ca.pem", other_pem),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Server config; clients may (or must) present a certificate of the CA.
    fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        );
        let verifier = if require_client_cert {
            verifier.build().unwrap()
        } else {
            verifier.allow_unauthenticated().build().unwrap()
        };
        let certs = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap(),
        )
    }
}

fn tls_spec(addr: &str, ca: &Path, sni: Option<&str>, verify: bool, client: Option<&Pki>) -> UpstreamSpec {
    let mut s = spec("tls", "/", None, &[addr]);
    s.tls = Some(UpstreamTlsSpec {
        ca: Some(ca.to_path_buf()),
        sni: sni.map(Into::into),
        verify,
        cert: client.map(|p| p.client_cert.clone()),
        key: client.map(|p| p.client_key.clone()),
    });
    s
}

async fn connect(spec: UpstreamSpec) -> pingora_error::Result<()> {
    let (ups, _) = Upstreams::build(vec![spec]).unwrap();
    let sel = ups.select(ups.get("tls").unwrap(), &[]).unwrap();
    let connector = pingora_core::connectors::TransportConnector::new(None);
    connector.get_stream(&sel.peer).await.map(|_| ())
}

#[test]
fn selected_tls_peer_carries_sni_ca_and_client_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());

    let (ups, _) =
        Upstreams::build(vec![tls_spec("127.0.0.1:8443", &pki.ca, None, true, Some(&pki))]).unwrap();
    let sel = ups.select(ups.get("tls").unwrap(), &[]).unwrap();
    assert!(sel.peer.is_tls());
    assert_eq!(
        sel.peer.sni, "127.0.0.1",
        "SNI defaults to the host, IP literals too"
    );
    assert!(sel.peer.options.verify_cert && sel.peer.options.verify_hostname);
    assert_eq!(sel.peer.options.ca.as_ref().map(|c| c.len()), Some(1));
    assert!(sel.peer.client_cert_key.is_some());
    assert_eq!(sel.authority, "127.0.0.1:8443");

    let (ups, _) = Upstreams::build(vec![tls_spec(
        "[::1]:443",
        &pki.ca,
        Some("fhir.example"),
        false,
        None,
    )])
    .unwrap();
    let sel = ups.select(ups.get("tls").unwrap(), &[]).unwrap();
    assert_eq!(sel.peer.sni, "fhir.example");
    assert!(!sel.peer.options.verify_cert && !sel.peer.options.verify_hostname);
    assert!(sel.peer.client_cert_key.is_none());
    assert_eq!(sel.authority, "[::1]", "default port omitted");

    let (ups, _) = Upstreams::build(vec![tls_spec("[::1]:8443", &pki.ca, None, true, None)]).unwrap();
    let sel = ups.select(ups.get("tls").unwrap(), &[]).unwrap();
    assert_eq!(sel.peer.sni, "::1", "no brackets in the SNI");
    assert_eq!(sel.authority, "[::1]:8443");
    assert_ne!(sel.peer.group_key, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_through_pingora_connector() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = start_server(Some(pki.server_config(false))).await;
    let addr = server.addr.to_string();

    // Right CA, SNI = the IP literal, client certificate presented.
    connect(tls_spec(&addr, &pki.ca, None, true, Some(&pki)))
        .await
        .unwrap();
    eventually("server saw the client certificate", || {
        server.client_certs.load(Ordering::SeqCst) == 1
    })
    .await;
    // Right CA, explicit SNI matching the certificate, no client cert.
    connect(tls_spec(&addr, &pki.ca, Some("localhost"), true, None))
        .await
        .unwrap();
    // Wrong CA.
    let e = connect(tls_spec(&addr, &pki.other_ca, None, true, None))
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("tls"), "{e}");
    // Right CA, name not in the certificate.
    assert!(
        connect(tls_spec(&addr, &pki.ca, Some("other.example"), true, None))
            .await
            .is_err()
    );
    // verify: false accepts the unknown CA.
    connect(tls_spec(&addr, &pki.other_ca, None, false, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        server.client_certs.load(Ordering::SeqCst),
        1,
        "only when configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = start_server(Some(pki.server_config(true))).await;
    let addr = server.addr.to_string();

    let mut with_cert = tls_spec(&addr, &pki.ca, None, true, Some(&pki));
    with_cert.health_check = Some(health_spec(50, 1, 1));
    let mut without_cert = tls_spec(&addr, &pki.ca, None, true, None);
    without_cert.name = "tls-nocert".into();
    without_cert.prefix = "/nocert".into();
    without_cert.health_check = Some(health_spec(50, 1, 1));
    let (ups, services) = Upstreams::build(vec![with_cert, without_cert]).unwrap();
    let stop = run(services);
    eventually(
        "the server requiring a client certificate rejects the check without one",
        || {
            ups.health()
                .iter()
                .any(|h| h.upstream == "tls-nocert" && !h.healthy)
        },
    )
    .await;
    eventually("checks with the client certificate pass", || {
        server.health_ok.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(ups.health().iter().any(|h| h.upstream == "tls" && h.healthy));
    assert!(ups.any_healthy(ups.get("tls").unwrap()));
    assert!(!ups.any_healthy(ups.get("tls-nocert").unwrap()));
    stop.send(true).unwrap();
}
