//! A small real FHIR audit repository over HTTP/1.1 (hyper) on a loopback
//! port: records every AuditEvent POSTed to `/fhir/AuditEvent` and answers
//! `201 Created` — or fails the first N requests with a chosen status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

#[derive(Default)]
struct State {
    accepted: Mutex<Vec<serde_json::Value>>,
    requests: AtomicUsize,
    fail_remaining: AtomicUsize,
    fail_status: AtomicU16,
    bad: Mutex<Vec<String>>,
}

pub struct AuditRepo {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditRepo {
    /// Start on the current tokio runtime.
    pub async fn start() -> AuditRepo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuditRepo { addr, state, task }
    }

    /// The FHIR base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Answer the next `n` requests with `status` (without storing them).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
        self.state.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// Every AuditEvent accepted (2xx), in arrival order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Requests received, failed ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests that were not a well-formed AuditEvent POST.
    pub fn bad_requests(&self) -> Vec<String> {
        self.state.bad.lock().unwrap().clone()
    }
}

impl Drop for AuditRepo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let fail = st
        .fail_remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        let status = StatusCode::from_u16(st.fail_status.load(Ordering::SeqCst)).unwrap();
        return reply(
            status,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}"#,
        );
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    match parsed {
        Some(ev)
            if parts.method == http::Method::POST
                && parts.uri.path() == "/fhir/AuditEvent"
                && content_type == "application/fhir+json"
                && ev["resourceType"] == "AuditEvent" =>
        {
            st.accepted.lock().unwrap().push(ev);
            reply(StatusCode::CREATED, "{}")
        }
        _ => {
            st.bad
                .lock()
                .unwrap()
                .push(format!("{} {} {content_type}", parts.method, parts.uri));
            reply(StatusCode::BAD_REQUEST, "{}")
        }
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    r
}
