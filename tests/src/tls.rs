//! TLS for the end-to-end tests: a throwaway PKI ([`TestPki`], rcgen), a
//! recording HTTPS/1.1 upstream ([`TlsUpstream`], hyper over tokio-rustls),
//! and a small blocking HTTPS client ([`TlsClient`], [`https_request`]) that
//! also reports which certificate the server presented.
//!
//! Everything is on loopback with fresh keys per test; nothing touches the
//! system trust store.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http;
use crate::servers::RecordedRequest;

/// A test certificate authority that issues server and client certificates
/// (PEM, leaf only: signed directly by the CA).
pub struct TestPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// A CA named `CN=<name>`.
    pub fn new(name: &str) -> TestPki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The usual test CA (`CN=phigate test CA`).
    pub fn generate() -> TestPki {
        TestPki::new("phigate test CA")
    }

    /// A second CA that trusts nothing of the first, for negative tests.
    pub fn unrelated() -> TestPki {
        TestPki::new("unrelated test CA")
    }

    /// The CA certificate (PEM), to trust this PKI.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate (`CN=<first name>`, extended key usage
    /// serverAuth) for `names`: DNS names and IP addresses (`"127.0.0.1"`
    /// becomes an IP SAN). Returns (certificate PEM, private key PEM).
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let cn = names.first().copied().unwrap_or("server");
        self.issue(
            &[(DnType::CommonName, cn)],
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with subject `CN=<cn>` (extended key usage
    /// clientAuth). Returns (certificate PEM, private key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        self.issue(
            &[(DnType::CommonName, cn)],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A client certificate with subject `CN=<cn>,O=<org>` in RFC 4514
    /// order (encoded as O then CN).
    pub fn client_in(&self, cn: &str, org: &str) -> (String, String) {
        self.issue(
            &[(DnType::OrganizationName, org), (DnType::CommonName, cn)],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        dn: &[(DnType, &str)],
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        // Not rcgen's default `CN=rcgen self signed cert`.
        params.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Write `pem` to `dir/name` the way certificate rotators do (write a
    /// temporary file, rename it over), so a watcher never sees half a file.
    pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate in the PEM")
        .unwrap()
        .to_vec()
}

/// RFC 8705 `x5t#S256` of a DER certificate: base64url (no padding) of its SHA-256.
pub fn x5t_s256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The subject common name of a DER certificate.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    // Own runtime: the one in `servers` is private to that module.
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One request as [`TlsUpstream`] saw it, with the client certificate of
/// its connection. Derefs to the plain [`RecordedRequest`].
#[derive(Debug, Clone)]
pub struct TlsRecordedRequest {
    pub request: RecordedRequest,
    /// Subject CN of the presented client certificate.
    pub client_cn: Option<String>,
    /// DER of the presented client certificate.
    pub client_cert: Option<Vec<u8>>,
}

impl Deref for TlsRecordedRequest {
    type Target = RecordedRequest;
    fn deref(&self) -> &RecordedRequest {
        &self.request
    }
}

/// A recording HTTPS/1.1 upstream on `127.0.0.1:0` with a server
/// certificate for `localhost` and `127.0.0.1` from the given PKI,
/// optionally requiring client certificates. Answers like
/// [`crate::Upstream`]: POST echoes the body (201), anything else gets
/// `{"resourceType":"Basic","echo":<target>,"client_cn":<cn or null>}`.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// The certificate it serves (PEM).
    pub cert_pem: String,
    requests: Arc<Mutex<Vec<TlsRecordedRequest>>>,
    handshakes: Arc<AtomicUsize>,
    handshake_failures: Arc<AtomicUsize>,
}

impl TlsUpstream {
    /// Start serving; with `require_client_ca`, a client certificate issued
    /// by that CA is required to complete the handshake.
    pub fn start(pki: &TestPki, require_client_ca: Option<&TestPki>) -> TlsUpstream {
        let (cert_pem, key_pem) = pki.server(&["localhost", "127.0.0.1"]);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match require_client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca.ca_pem())),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                certs(&cert_pem),
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let (r, ok, failed) = (requests.clone(), handshakes.clone(), handshake_failures.clone());
        runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, r, ok, failed) = (acceptor.clone(), r.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    ok.fetch_add(1, Ordering::SeqCst);
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let client_cn = client_cert.as_deref().and_then(subject_cn);
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (r, client_cert, client_cn) = (r.clone(), client_cert.clone(), client_cn.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let rec = TlsRecordedRequest {
                                request: RecordedRequest::of(
                                    &parts.method,
                                    &parts.uri,
                                    &parts.headers,
                                    body.clone(),
                                ),
                                client_cn: client_cn.clone(),
                                client_cert,
                            };
                            r.lock().unwrap().push(rec);
                            Ok::<_, Infallible>(answer(&parts.method, &parts.uri, body, client_cn))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            cert_pem,
            requests,
            handshakes,
            handshake_failures,
        }
    }

    pub fn requests(&self) -> Vec<TlsRecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Completed TLS handshakes.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Connections whose TLS handshake failed (e.g. no or an untrusted
    /// client certificate).
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(Ordering::SeqCst)
    }
}

fn answer(
    method: &hyper::Method,
    uri: &hyper::Uri,
    body: Bytes,
    client_cn: Option<String>,
) -> Response<Full<Bytes>> {
    let (status, body) = if method == hyper::Method::POST {
        (StatusCode::CREATED, body)
    } else {
        let json = serde_json::json!({
            "resourceType": "Basic",
            "echo": uri.to_string(),
            "client_cn": client_cn,
        });
        (StatusCode::OK, Bytes::from(json.to_string()))
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

/// A blocking HTTPS/1.1 client for one request per connection.
#[derive(Debug, Clone, Copy)]
pub struct TlsClient<'a> {
    pub addr: SocketAddr,
    /// SNI and the name the server certificate is checked against
    /// (`"localhost"` or `"127.0.0.1"`).
    pub server_name: &'a str,
    /// The CA(s) to trust (PEM).
    pub ca_pem: &'a str,
    /// A client certificate: (certificate PEM, key PEM).
    pub client: Option<(&'a str, &'a str)>,
    /// ALPN protocols to offer (none by default).
    pub alpn: &'a [&'a str],
}

/// A response over TLS and what the handshake showed.
#[derive(Debug, Clone)]
pub struct TlsResponse {
    pub response: http::Response,
    /// DER of the certificate the server presented (its leaf).
    pub server_cert: Vec<u8>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<String>,
}

impl<'a> TlsClient<'a> {
    pub fn new(addr: SocketAddr, server_name: &'a str, ca_pem: &'a str) -> Self {
        TlsClient {
            addr,
            server_name,
            ca_pem,
            client: None,
            alpn: &[],
        }
    }

    /// The same client presenting a certificate.
    pub fn with_client_cert(self, cert_pem: &'a str, key_pem: &'a str) -> Self {
        TlsClient {
            client: Some((cert_pem, key_pem)),
            ..self
        }
    }

    fn connect(&self) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let invalid = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots(self.ca_pem));
        let mut config = match self.client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    certs(cert),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .map_err(invalid)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(self.server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(invalid)?;
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// Complete a handshake only; the certificate the server presented (DER).
    pub fn served_certificate(&self) -> std::io::Result<Vec<u8>> {
        let stream = self.connect()?;
        leaf(&stream.conn)
    }

    /// Send one request (`Connection: close`) and read the whole response.
    /// A handshake the server refuses (e.g. a missing client certificate
    /// under TLS 1.3, reported at the first read) is an error.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<TlsResponse> {
        let mut s = self.connect()?;
        let server_cert = leaf(&s.conn)?;
        let alpn = s
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let host = format!("{}:{}", self.server_name, self.addr.port());
        let req = crate::http::request_head(method, &host, target, headers, body);
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                // A peer closing without close_notify after a full response.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(TlsResponse {
            response: http::parse(&raw)?,
            server_cert,
            alpn,
        })
    }
}

fn leaf(conn: &rustls::ClientConnection) -> std::io::Result<Vec<u8>> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| std::io::Error::other("no server certificate"))
}

/// One HTTPS/1.1 request (`Connection: close`) to `addr`, checking the
/// server certificate for `server_name` against `ca_pem`, optionally with a
/// client certificate (certificate PEM, key PEM). See [`TlsClient`] for the
/// served certificate and ALPN.
#[allow(clippy::too_many_arguments)]
pub fn https_request(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<http::Response> {
    let client_config = TlsClient {
        client,
        ..TlsClient::new(addr, server_name, ca_pem)
    };
    Ok(client_config.request(method, target, headers, body)?.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_upstream_serves_https_and_records_the_client_certificate() {
        let pki = TestPki::generate();
        let clients = TestPki::new("client CA");
        let upstream = TlsUpstream::start(&pki, Some(&clients));
        let (cert, key) = clients.client_in("app-7", "Example");

        let r = https_request(
            upstream.addr,
            "localhost",
            pki.ca_pem(),
            Some((&cert, &key)),
            "GET",
            "/fhir/Patient/1?x=1",
            &[("X-Test", "yes")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["client_cn"], "app-7");
        assert_eq!(r.json()["echo"], "/fhir/Patient/1?x=1");

        let recorded = upstream.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].method, "GET");
        assert_eq!(recorded[0].target, "/fhir/Patient/1?x=1");
        assert_eq!(recorded[0].header("x-test"), Some("yes"));
        assert_eq!(recorded[0].client_cn.as_deref(), Some("app-7"));
        assert_eq!(recorded[0].client_cert.as_deref(), Some(&pem_to_der(&cert)[..]));

        // POST over 127.0.0.1 (IP SAN), body echoed; the served leaf is the upstream's.
        let client = TlsClient::new(upstream.addr, "127.0.0.1", pki.ca_pem()).with_client_cert(&cert, &key);
        let r = client
            .request("POST", "/fhir/Observation", &[], b"{\"a\":1}")
            .unwrap();
        assert_eq!(r.response.status, 201);
        assert_eq!(r.response.body, b"{\"a\":1}");
        assert_eq!(r.server_cert, pem_to_der(&upstream.cert_pem));
        assert_eq!(client.served_certificate().unwrap(), r.server_cert);
        assert_eq!(subject_cn(&r.server_cert).as_deref(), Some("localhost"));
    }

    #[test]
    fn tls_upstream_refuses_missing_or_untrusted_client_certificates() {
        let pki = TestPki::generate();
        let clients = TestPki::new("client CA");
        let upstream = TlsUpstream::start(&pki, Some(&clients));
        let stranger = TestPki::unrelated().client("stranger");
        let anonymous = TlsClient::new(upstream.addr, "localhost", pki.ca_pem());
        assert!(anonymous.request("GET", "/", &[], b"").is_err());
        assert!(anonymous
            .with_client_cert(&stranger.0, &stranger.1)
            .request("GET", "/", &[], b"")
            .is_err());
        assert!(
            crate::eventually(Duration::from_secs(10), || (upstream.handshake_failures() == 2)
                .then_some(()))
            .is_some()
        );
        assert!(upstream.requests().is_empty());
    }

    #[test]
    fn client_refuses_a_server_of_an_unrelated_ca() {
        let upstream = TlsUpstream::start(&TestPki::generate(), None);
        let other = TestPki::unrelated();
        let err = https_request(
            upstream.addr,
            "localhost",
            other.ca_pem(),
            None,
            "GET",
            "/",
            &[],
            b"",
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(upstream.handshakes(), 0);
    }

    #[test]
    fn write_replaces_files_whole_and_thumbprints_are_x5t_s256() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate();
        let (cert, _) = pki.client("c");
        let path = TestPki::write(dir.path(), "client.pem", &cert);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), cert);
        let path2 = TestPki::write(dir.path(), "client.pem", pki.ca_pem());
        assert_eq!(path, path2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pki.ca_pem());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        let t = x5t_s256(&pem_to_der(&cert));
        assert_eq!(t.len(), 43);
        assert!(!t.contains(['=', '+', '/']));
    }
}
