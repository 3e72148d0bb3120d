//! Real HTTP servers for the tests, each on `127.0.0.1:0`, run by one shared
//! background tokio runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serve `handler` on a fresh loopback port; returns the address and a
/// counter of accepted connections.
fn serve(handler: Handler) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        // `x-test-delay-ms`: answer late (a slow backend).
                        let delay = req
                            .headers()
                            .get("x-test-delay-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        if let Some(ms) = delay {
                            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        }
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, Infallible>(handler(Request::from_parts(parts, body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, connections)
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).unwrap(),
    );
    r
}

/// A JWKS endpoint whose body and availability the test controls.
pub struct JwksServer {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start(jwks: String) -> Self {
        let body = Arc::new(Mutex::new(jwks));
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, u, f) = (body.clone(), up.clone(), fetches.clone());
        let (addr, _) = serve(Arc::new(move |req| {
            if req.uri().path() != "/jwks.json" {
                return respond(StatusCode::NOT_FOUND, "text/plain", "not found");
            }
            f.fetch_add(1, Ordering::SeqCst);
            if !u.load(Ordering::SeqCst) {
                return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down");
            }
            respond(StatusCode::OK, "application/json", b.lock().unwrap().clone())
        }));
        JwksServer {
            addr,
            body,
            up,
            fetches,
        }
    }
    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
    pub fn set_jwks(&self, jwks: String) {
        *self.body.lock().unwrap() = jwks;
    }
    /// While down, every fetch gets a 503.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The record of a request with this head and body.
    pub fn of(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap, body: Bytes) -> Self {
        RecordedRequest {
            method: method.to_string(),
            target: uri.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An upstream that records every request and answers with a small JSON
/// document echoing the request (and the body, for POSTs).
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        let (addr, connections) = serve(Arc::new(move |req: Request<Bytes>| {
            let rec = RecordedRequest::of(req.method(), req.uri(), req.headers(), req.body().clone());
            r.lock().unwrap().push(rec);
            if req.method() == http::Method::POST {
                // Echo the body byte for byte.
                return respond(StatusCode::CREATED, "application/fhir+json", req.body().clone());
            }
            // `x-test-next-link: URL`: answer like a FHIR server paging a
            // search (HAPI style), `link` before `entry`.
            if let Some(next) = req
                .headers()
                .get("x-test-next-link")
                .and_then(|v| v.to_str().ok())
            {
                let body = serde_json::json!({
                    "resourceType": "Bundle", "type": "searchset", "total": 40,
                    "link": [
                        {"relation": "self", "url": format!("http://backend{}", req.uri())},
                        {"relation": "next", "url": next}
                    ],
                    "entry": [{"resource": {"resourceType": "Basic", "echo": req.uri().to_string()}}]
                })
                .to_string();
                return respond(StatusCode::OK, "application/fhir+json", body);
            }
            let body =
                serde_json::json!({ "resourceType": "Basic", "echo": req.uri().to_string() }).to_string();
            respond(StatusCode::OK, "application/fhir+json", body)
        }));
        Upstream {
            addr,
            requests,
            connections,
        }
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A hand-written upstream on a raw socket, for what an HTTP library would
/// not do: answer `101 Switching Protocols` and then echo raw bytes.
/// Records every request head and every byte received after a 101.
pub struct RawUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    tunnelled: Arc<Mutex<Vec<u8>>>,
}

/// How a [`RawUpstream`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// 101 to a WebSocket handshake, then echo; 200 to anything else.
    WebSocketEcho,
    /// 101 to every request, then echo (a broken or hostile backend).
    Always101,
}

impl RawUpstream {
    pub fn start(mode: RawMode) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let tunnelled = Arc::new(Mutex::new(Vec::new()));
        let (h, t) = (heads.clone(), tunnelled.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (h, t) = (h.clone(), t.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head at a time (requests here have no body).
                        let end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break Some(p + 4);
                            }
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => break None,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let Some(end) = end else { return };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let lower = head.to_ascii_lowercase();
                        h.lock().unwrap().push(head);
                        let upgrade = mode == RawMode::Always101 || lower.contains("upgrade: websocket");
                        if !upgrade {
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                            );
                            continue;
                        }
                        let _ = stream.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        );
                        // Tunnel: echo whatever arrives, record it.
                        t.lock().unwrap().extend_from_slice(&buf);
                        let _ = stream.write_all(&buf);
                        loop {
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    t.lock().unwrap().extend_from_slice(&chunk[..n]);
                                    if stream.write_all(&chunk[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            heads,
            tunnelled,
        }
    }

    /// The request heads received, as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Bytes received through tunnels.
    pub fn tunnelled(&self) -> Vec<u8> {
        self.tunnelled.lock().unwrap().clone()
    }
}
