//! Key-source helpers for the JWKS change tests (`tests/jwks_changes.rs`):
//! a gateway whose issuer reads a `jwks_file`, atomic file replacement, and a
//! JWKS server that can be told to hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Gateway, TestEnv};

/// Start a [`TestEnv`] (`policy`, extra issuer and top-level YAML as in
/// [`TestEnv::start_with`]) whose issuer then takes its keys from `source`
/// (a YAML key line such as `jwks_file: "/tmp/x/jwks.json"` or
/// `jwks_uri: http://…`) instead of the env's own JWKS server.
pub fn start_with_key_source(policy: &str, issuer_yaml: &str, top_yaml: &str, source: &str) -> TestEnv {
    let mut env = TestEnv::start_with(policy, issuer_yaml, top_yaml);
    switch_key_source(&mut env.gw, source);
    env
}

/// Start a [`TestEnv`] whose issuer reads its keys from `jwks_file`.
pub fn start_with_jwks_file(policy: &str, issuer_yaml: &str, top_yaml: &str, jwks_file: &Path) -> TestEnv {
    let path = serde_json::to_string(&jwks_file.display().to_string()).unwrap();
    start_with_key_source(policy, issuer_yaml, top_yaml, &format!("jwks_file: {path}"))
}

/// Replace the issuer's `jwks_uri:` line in the gateway's configuration with
/// `source` and restart the gateway with it (same ports and files); waits
/// until it is ready, i.e. has keys from the new source.
pub fn switch_key_source(gw: &mut Gateway, source: &str) {
    let config = gw.dir().join("gateway.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut replaced = 0;
    let new: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("    jwks_uri: ") {
            Some(_) => {
                replaced += 1;
                format!("    {source}")
            }
            None => l.to_string(),
        })
        .collect();
    assert_eq!(replaced, 1, "expected one `jwks_uri:` line in\n{text}");
    std::fs::write(&config, new.join("\n") + "\n").unwrap();
    gw.restart();
}

/// Replace `path` atomically: write a sibling file, then rename it over.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A JWKS endpoint on a raw socket that serves its key set until told to
/// hang; then it accepts connections, reads the request and never answers
/// (the connections are held open).
pub struct HangingJwks {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hang: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl HangingJwks {
    pub fn start(jwks: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(jwks));
        let hang = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (b, h, r, k) = (body.clone(), hang.clone(), requests.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (b, h, r, k) = (b.clone(), h.clone(), r.clone(), k.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&chunk[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    if h.load(Ordering::SeqCst) {
                        k.lock().unwrap().push(stream);
                        return;
                    }
                    let body = b.lock().unwrap().clone();
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        HangingJwks {
            addr,
            body,
            hang,
            requests,
            held,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set_jwks(&self, jwks: String) {
        *self.body.lock().unwrap() = jwks;
    }

    /// From now on, read requests and never answer them.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// Requests read so far (answered or not).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests currently held open without an answer.
    pub fn hanging(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}
