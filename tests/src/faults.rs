//! A fault-injecting upstream on a raw socket: each request picks its fault
//! with the `x-fault` header, so one server covers every failure mode and
//! records exactly which requests reached it.
//!
//! | `x-fault`        | the upstream…                                           |
//! |------------------|---------------------------------------------------------|
//! | (none)           | answers `200` with a small JSON body                    |
//! | `stall`          | reads the request and never answers                     |
//! | `close`          | reads the request and closes without a response         |
//! | `garbage`        | answers bytes that are not HTTP, then closes            |
//! | `cut-body`       | promises 100 000 body bytes, sends 1 000, then closes   |
//! | `slow-body`      | sends 600 000 body bytes, 1 000 every 100 ms            |
//! | `slow:<ms>`      | answers `200` after `<ms>` milliseconds                 |
//!
//! A refused connection needs no server: use an address nobody listens on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    /// The request line (`POST /fhir/Observation HTTP/1.1`).
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// The fault-injecting upstream.
pub struct FaultUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FaultUpstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let rec = rec.clone();
                std::thread::spawn(move || serve(stream, &rec));
            }
        });
        FaultUpstream { addr, received }
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests received carrying `x-request-id: id`.
    pub fn received_with_id(&self, id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.header("x-request-id").as_deref() == Some(id))
            .collect()
    }
}

/// Read one request (head + `content-length` body); `None` at EOF.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut r = Received {
        head,
        body: Vec::new(),
    };
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    r.body = buf.drain(..len.min(buf.len())).collect();
    Some(r)
}

fn serve(mut stream: TcpStream, rec: &Mutex<Vec<Received>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf) {
        let fault = req.header("x-fault").unwrap_or_default();
        rec.lock().unwrap().push(req);
        match fault.as_str() {
            "stall" => {
                // Hold the connection until the other side gives up.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            "close" => return,
            "garbage" => {
                let _ = stream.write_all(b"THIS IS NOT HTTP\r\n\x00\x01\x02\r\n\r\n");
                return;
            }
            "cut-body" => {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 100000\r\n\r\n",
                );
                let _ = stream.write_all(&[b'x'; 1000]);
                return;
            }
            "slow-body" => {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 600000\r\n\r\n",
                );
                for _ in 0..600 {
                    if stream.write_all(&[b'x'; 1000]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
            f => {
                if let Some(ms) = f.strip_prefix("slow:").and_then(|m| m.parse().ok()) {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                let body = br#"{"resourceType":"OperationOutcome","issue":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut out = head.into_bytes();
                out.extend_from_slice(body);
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        }
    }
}

/// Every record in an audit spool directory, in chain order, read with
/// `phigate audit export --format jsonl` (so compressed segments are read
/// the way operators read them). Empty when there is no spool yet.
pub fn spool_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    if !dir.exists() {
        return Vec::new();
    }
    let out = std::process::Command::new(crate::Gateway::binary())
        .args(["audit", "export", "--format", "jsonl"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad spool line {l:?}: {e}")))
        .collect()
}
