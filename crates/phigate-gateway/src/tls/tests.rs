#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM, leaf DER)
    fn leaf(&self, dn: &[(DnType, &str)], sans: &[&str], client: bool) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        // Not rcgen's default `CN=rcgen self signed cert` first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn server(&self, cn: &str) -> (String, String, Vec<u8>) {
        self.leaf(&[(DnType::CommonName, cn)], &["localhost", "127.0.0.1"], false)
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Replace a file the way rotators do: write aside, rename over.
    fn put(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
        self.path(name)
    }
    fn spec(&self, client_auth: ClientAuth) -> ListenerTlsSpec {
        ListenerTlsSpec {
            cert: self.path("tls.crt"),
            key: self.path("tls.key"),
            client_ca: (client_auth != ClientAuth::None).then(|| self.path("ca.crt")),
            client_auth,
        }
    }
    fn put_pair(&self, pair: &(String, String, Vec<u8>)) {
        self.put("tls.crt", &pair.0);
        self.put("tls.key", &pair.1);
    }
}

fn leaf_der(tls: &ListenerTls) -> Vec<u8> {
    tls.certified_key().cert[0].to_vec()
}

#[test]
fn loads_a_valid_pair() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let a = ca.server("server-a");
    f.put_pair(&a);
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    assert_eq!(leaf_der(&tls), a.2);
    assert_eq!(tls.reload(), ReloadResult::Unchanged);
}

#[test]
fn loads_a_chain_leaf_first() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let a = ca.server("server-a");
    f.put("tls.crt", &format!("{}{}", a.0, ca.pem));
    f.put("tls.key", &a.1);
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    assert_eq!(tls.certified_key().cert.len(), 2);
    assert_eq!(leaf_der(&tls), a.2);
}

#[test]
fn mismatched_key_is_rejected_naming_both_files() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let (a, b) = (ca.server("server-a"), ca.server("server-b"));
    f.put("tls.crt", &a.0);
    f.put("tls.key", &b.1);
    let err = ListenerTls::load(f.spec(ClientAuth::None)).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("tls.key "), "{msg}");
    assert!(msg.contains("key does not match the certificate"), "{msg}");
    assert!(msg.contains(&f.path("tls.key").display().to_string()), "{msg}");
    assert!(msg.contains(&f.path("tls.crt").display().to_string()), "{msg}");
}

#[test]
fn garbage_files_are_rejected_without_panicking() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let a = ca.server("server-a");
    let cert = f.path("tls.crt").display().to_string();
    let key = f.path("tls.key").display().to_string();

    let cases: Vec<(&str, String, String)> = vec![
        (
            "not PEM at all",
            "hello\n".into(),
            format!("tls.cert {cert}: no certificate found"),
        ),
        (
            "empty",
            String::new(),
            format!("tls.cert {cert}: no certificate found"),
        ),
        (
            "key only",
            a.1.clone(),
            format!("tls.cert {cert}: no certificate found"),
        ),
        (
            "bad base64",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
            format!("tls.cert {cert}: invalid PEM"),
        ),
        (
            "valid PEM, not a certificate",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".into(),
            format!("tls.cert {cert}: certificate #1 is not a valid X.509 certificate"),
        ),
    ];
    f.put("tls.key", &a.1);
    for (what, text, expected) in cases {
        f.put("tls.crt", &text);
        let err = ListenerTls::load(f.spec(ClientAuth::None))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&expected), "{what}: {err}");
    }

    f.put("tls.crt", &a.0);
    for (what, text, expected) in [
        ("no key", a.0.clone(), "no private key found"),
        (
            "not a key",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n".to_string(),
            "unsupported or invalid private key",
        ),
    ] {
        f.put("tls.key", &text);
        let err = ListenerTls::load(f.spec(ClientAuth::None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("tls.key {key}: {expected}")),
            "{what}: {err}"
        );
    }

    std::fs::remove_file(f.path("tls.key")).unwrap();
    let err = ListenerTls::load(f.spec(ClientAuth::None))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!("tls.key {key}: cannot read")), "{err}");
}

#[test]
fn client_auth_needs_a_valid_ca() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    f.put_pair(&ca.server("server-a"));
    let mut spec = f.spec(ClientAuth::Required);
    spec.client_ca = None;
    assert_eq!(ListenerTls::load(spec).unwrap_err(), TlsError::MissingClientCa);

    f.put("ca.crt", "# no certificates here\n");
    let err = ListenerTls::load(f.spec(ClientAuth::Optional))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "tls.client_ca {}: no certificate found",
            f.path("ca.crt").display()
        )
    );

    f.put("ca.crt", &ca.pem);
    ListenerTls::load(f.spec(ClientAuth::Required)).unwrap();
}

#[test]
fn reload_picks_up_a_new_pair() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let (a, b) = (ca.server("server-a"), ca.server("server-b"));
    f.put_pair(&a);
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    f.put_pair(&b);
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    assert_eq!(leaf_der(&tls), b.2);
    assert_eq!(tls.reload(), ReloadResult::Unchanged);
}

#[test]
fn reload_through_a_symlink_swap() {
    // The kubelet's atomic writer: files live in a timestamped directory,
    // `..data` is a symlink renamed over to switch them all at once.
    let ca = Ca::new("test CA");
    let f = Files::new();
    let (a, b) = (ca.server("server-a"), ca.server("server-b"));
    for (dir, pair) in [("v1", &a), ("v2", &b)] {
        std::fs::create_dir(f.path(dir)).unwrap();
        std::fs::write(f.path(dir).join("tls.crt"), &pair.0).unwrap();
        std::fs::write(f.path(dir).join("tls.key"), &pair.1).unwrap();
    }
    std::os::unix::fs::symlink("v1", f.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", f.path("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", f.path("tls.key")).unwrap();
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    assert_eq!(leaf_der(&tls), a.2);

    std::os::unix::fs::symlink("v2", f.path("..data_tmp")).unwrap();
    std::fs::rename(f.path("..data_tmp"), f.path("..data")).unwrap();
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    assert_eq!(leaf_der(&tls), b.2);
}

#[test]
fn broken_new_pair_keeps_the_old_one_and_is_reported_once() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let (a, b) = (ca.server("server-a"), ca.server("server-b"));
    f.put_pair(&a);
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();

    f.put("tls.crt", "garbage");
    assert!(matches!(tls.reload(), ReloadResult::Pending(e) if e.contains("no certificate found")));
    assert!(matches!(tls.reload(), ReloadResult::Failed(e) if e.contains("no certificate found")));
    assert_eq!(tls.reload(), ReloadResult::Unchanged, "reported once per content");
    assert_eq!(leaf_der(&tls), a.2, "old pair still in force");

    // A different broken content is a new failure.
    f.put("tls.crt", "other garbage");
    assert!(matches!(tls.reload(), ReloadResult::Pending(_)));
    assert!(matches!(tls.reload(), ReloadResult::Failed(_)));

    // Fixing it reloads.
    f.put_pair(&b);
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    assert_eq!(leaf_der(&tls), b.2);

    // Going back to the content in force clears a pending failure.
    f.put("tls.crt", "garbage");
    assert!(matches!(tls.reload(), ReloadResult::Pending(_)));
    f.put_pair(&b);
    assert_eq!(tls.reload(), ReloadResult::Unchanged);
}

#[test]
fn cert_and_key_replaced_a_poll_apart_is_not_an_error() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    let (a, b) = (ca.server("server-a"), ca.server("server-b"));
    f.put_pair(&a);
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    f.put("tls.crt", &b.0);
    let ReloadResult::Pending(e) = tls.reload() else {
        panic!("a mismatch is retried");
    };
    assert!(e.contains("key does not match"), "{e}");
    assert_eq!(leaf_der(&tls), a.2);
    f.put("tls.key", &b.1);
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    assert_eq!(leaf_der(&tls), b.2);
}

#[test]
fn watcher_observes_swaps_and_reported_failures() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    f.put_pair(&ca.server("server-a"));
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let watcher = TlsWatcher::new(vec![tls], Arc::new(move |r| s.lock().unwrap().push(r)));
    watcher.poll_once();
    f.put_pair(&ca.server("server-b"));
    watcher.poll_once();
    f.put("tls.key", "garbage");
    for _ in 0..4 {
        watcher.poll_once();
    }
    assert_eq!(*seen.lock().unwrap(), vec!["ok", "error"]);
}

#[tokio::test]
async fn watcher_stops_when_the_server_shuts_down() {
    let ca = Ca::new("test CA");
    let f = Files::new();
    f.put_pair(&ca.server("server-a"));
    let tls = ListenerTls::load(f.spec(ClientAuth::None)).unwrap();
    let mut watcher = TlsWatcher::new(vec![tls], Arc::new(|_| {}));
    watcher.interval = Duration::from_millis(10);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { watcher.start(rx).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn client_cert_subject_and_thumbprint() {
    let ca = Ca::new("test CA");
    let (_, _, der) = ca.leaf(
        &[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Example, Inc."),
            (DnType::CommonName, "app-7"),
        ],
        &[],
        true,
    );
    let c = ClientCert::from_der(&der);
    assert_eq!(c.subject, "CN=app-7,O=Example\\, Inc.,C=DE");
    // Independently: SHA-256 by aws-lc-rs, base64url by hand.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    assert_eq!(c.sha256, base64url(digest.as_ref()));
    assert_eq!(c.sha256.len(), 43);
    assert!(!c.sha256.contains(['=', '+', '/']));
}

/// RFC 4648 section 5 without padding, written out independently.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn unparsable_client_cert_gets_an_empty_subject() {
    let c = ClientCert::from_der(b"\x30\x03\x02\x01\x01");
    assert_eq!(c.subject, "");
    assert_eq!(c.sha256, thumbprint_sha256(b"\x30\x03\x02\x01\x01"));
}

#[test]
fn rfc4514_escaping() {
    assert_eq!(escape_value(" a,b+c "), "\\ a\\,b\\+c\\ ");
    assert_eq!(escape_value("#x#"), "\\#x#");
    assert_eq!(escape_value("a\"<>;\\"), "a\\\"\\<\\>\\;\\\\");
    assert_eq!(escape_value("app-7"), "app-7");
}

#[test]
fn unknown_attribute_types_are_dotted_with_hex_values() {
    let ca = Ca::new("test CA");
    let oid = DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]);
    let (_, _, der) = ca.leaf(&[(oid, "a@b"), (DnType::CommonName, "x")], &[], true);
    // rcgen encodes custom types as UTF8String (tag 0x0c).
    assert_eq!(
        ClientCert::from_der(&der).subject,
        "CN=x,1.2.840.113549.1.9.1=#0c03614062"
    );
}

/// Accepts every certificate, like a webpki that parses more than x509-parser.
#[derive(Debug)]
struct AcceptAll;

impl ClientCertVerifier for AcceptAll {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

#[test]
fn verifier_refuses_certificates_pingora_could_not_parse() {
    let v = ReloadableVerifier(ArcSwap::from_pointee(
        Arc::new(AcceptAll) as Arc<dyn ClientCertVerifier>
    ));
    let garbage = CertificateDer::from(b"\x30\x03\x02\x01\x01".to_vec());
    assert_eq!(
        v.verify_client_cert(&garbage, &[], UnixTime::now()).unwrap_err(),
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
    );
    let ca = Ca::new("test CA");
    let (_, _, der) = ca.leaf(&[(DnType::CommonName, "ok")], &[], true);
    v.verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
        .unwrap();
    assert!(v.root_hint_subjects().is_empty());
}

// --- real handshakes through pingora's acceptor ---

struct Pki {
    ca: Ca,
    other: Ca,
    files: Files,
    a: (String, String, Vec<u8>),
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("test CA");
        let files = Files::new();
        let a = ca.server("server-a");
        files.put_pair(&a);
        files.put("ca.crt", &ca.pem);
        Pki {
            other: Ca::new("other CA"),
            ca,
            files,
            a,
        }
    }
}

/// Accept connections with the pingora acceptor built from `tls`; after
/// each handshake answer one line, the client certificate's subject and
/// thumbprint as recorded by the callback (`-` if none), then close.
async fn serve(tls: &Arc<ListenerTls>, h2: bool) -> std::net::SocketAddr {
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use pingora_core::protocols::Ssl;
    let acceptor = Arc::new(tls.settings(h2).unwrap().build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.tls_handshake(L4Stream::from(tcp)).await else {
                    return;
                };
                let line = match s.get_ssl_digest().as_deref().and_then(client_cert_of_ssl) {
                    Some(c) => format!("{}|{}\n", c.subject, c.sha256),
                    None => "-\n".to_string(),
                };
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Answer {
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
    line: String,
}

/// Connect trusting `ca_pem`, optionally with a client certificate, and
/// read the server's line.
async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&(String, String, Vec<u8>)>,
    alpn: &[&[u8]],
) -> std::io::Result<Answer> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key, _)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await?;
    let (_, conn) = s.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let mut line = String::new();
    s.read_to_string(&mut line).await?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(Answer { leaf, alpn, line })
}

#[tokio::test]
async fn serves_the_reloaded_certificate_to_new_handshakes() {
    let p = Pki::new();
    let tls = ListenerTls::load(p.files.spec(ClientAuth::None)).unwrap();
    let addr = serve(&tls, false).await;
    let before = connect(addr, &p.ca.pem, None, &[]).await.unwrap();
    assert_eq!(before.leaf, p.a.2);
    assert_eq!(before.line, "-\n");

    let b = p.ca.server("server-b");
    p.files.put_pair(&b);
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    let after = connect(addr, &p.ca.pem, None, &[]).await.unwrap();
    assert_eq!(after.leaf, b.2);
}

#[tokio::test]
async fn alpn_offers_h2_only_when_enabled() {
    let p = Pki::new();
    let tls = ListenerTls::load(p.files.spec(ClientAuth::None)).unwrap();
    let (h1, h2) = (serve(&tls, false).await, serve(&tls, true).await);
    let offer: &[&[u8]] = &[b"h2", b"http/1.1"];
    let a = connect(h1, &p.ca.pem, None, offer).await.unwrap();
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let a = connect(h2, &p.ca.pem, None, offer).await.unwrap();
    assert_eq!(a.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn required_client_auth_refuses_clients_without_a_trusted_certificate() {
    let p = Pki::new();
    let tls = ListenerTls::load(p.files.spec(ClientAuth::Required)).unwrap();
    let addr = serve(&tls, false).await;
    assert!(
        connect(addr, &p.ca.pem, None, &[]).await.is_err(),
        "no certificate"
    );
    let stranger = p.other.leaf(&[(DnType::CommonName, "stranger")], &[], true);
    assert!(
        connect(addr, &p.ca.pem, Some(&stranger), &[]).await.is_err(),
        "certificate of another CA"
    );

    let client = p.ca.leaf(
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "app-7"),
        ],
        &[],
        true,
    );
    let a = connect(addr, &p.ca.pem, Some(&client), &[]).await.unwrap();
    assert_eq!(
        a.line,
        format!("CN=app-7,O=Example|{}\n", thumbprint_sha256(&client.2))
    );
}

#[tokio::test]
async fn optional_client_auth_accepts_anonymous_clients_but_verifies_presented_certificates() {
    let p = Pki::new();
    let tls = ListenerTls::load(p.files.spec(ClientAuth::Optional)).unwrap();
    let addr = serve(&tls, false).await;
    assert_eq!(connect(addr, &p.ca.pem, None, &[]).await.unwrap().line, "-\n");
    let client = p.ca.leaf(&[(DnType::CommonName, "app-7")], &[], true);
    let a = connect(addr, &p.ca.pem, Some(&client), &[]).await.unwrap();
    assert_eq!(a.line, format!("CN=app-7|{}\n", thumbprint_sha256(&client.2)));
    let stranger = p.other.leaf(&[(DnType::CommonName, "stranger")], &[], true);
    assert!(connect(addr, &p.ca.pem, Some(&stranger), &[]).await.is_err());
}

#[tokio::test]
async fn reloaded_client_ca_applies_to_new_handshakes() {
    let p = Pki::new();
    let tls = ListenerTls::load(p.files.spec(ClientAuth::Required)).unwrap();
    let addr = serve(&tls, false).await;
    let old_client = p.ca.leaf(&[(DnType::CommonName, "old")], &[], true);
    let new_client = p.other.leaf(&[(DnType::CommonName, "new")], &[], true);
    assert!(connect(addr, &p.ca.pem, Some(&new_client), &[]).await.is_err());

    p.files.put("ca.crt", &p.other.pem);
    assert_eq!(tls.reload(), ReloadResult::Reloaded);
    connect(addr, &p.ca.pem, Some(&new_client), &[]).await.unwrap();
    assert!(connect(addr, &p.ca.pem, Some(&old_client), &[]).await.is_err());

    // A broken CA bundle keeps the one in force.
    p.files.put("ca.crt", "nothing");
    assert!(matches!(tls.reload(), ReloadResult::Pending(_)));
    assert!(matches!(tls.reload(), ReloadResult::Failed(e) if e.starts_with("tls.client_ca")));
    connect(addr, &p.ca.pem, Some(&new_client), &[]).await.unwrap();
}
