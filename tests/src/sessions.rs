//! Helpers for the session suite (`tests/sessions.rs`): two phigate
//! replicas sharing one JWKS server, one recording upstream and one real
//! `nats-server`; session-bound tokens, back-channel logout tokens, and a
//! keep-alive HTTP/1.1 client for request loops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::http::{self, Response};
use crate::keys::now;
use crate::nats::NatsServer;
use crate::{eventually, Gateway, GatewayOptions, JwksServer, TestKey, Upstream, AUDIENCE, ISSUER};

/// The client id registered for back-channel logout (`backchannel_logout.client_ids`).
pub const LOGOUT_CLIENT_ID: &str = "phigate-test-client";
/// The logout path the suite configures.
pub const LOGOUT_PATH: &str = "/phigate/backchannel-logout";
/// The `events` member of a logout token (OpenID Connect Back-Channel Logout §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// `dpop.public_base_url` of the suite: a proof's `htu` is this + the path.
pub const PUBLIC_BASE_URL: &str = "http://gw.test";

/// Two replicas (`a`, `b`) of one deployment: the same issuer keys, upstream
/// and session store. Fields drop in order: gateways before the servers.
pub struct Cluster {
    pub a: Gateway,
    pub b: Gateway,
    pub key: TestKey,
    pub jwks: JwksServer,
    pub upstream: Upstream,
    pub nats: NatsServer,
}

impl Cluster {
    /// Start a nats-server, then two gateways with `policy`, extra issuer
    /// keys (4-space indented) and the top-level YAML `top(nats_url)`, and
    /// wait until both are ready.
    pub fn start(policy: &str, issuer_yaml: &str, top: impl Fn(&str) -> String) -> Cluster {
        let nats = NatsServer::start();
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(TestKey::jwks(&[&key]));
        let upstream = Upstream::start();
        let top = top(&nats.url());
        let replica = || {
            let gw = Gateway::start(GatewayOptions {
                extra_issuer_yaml: issuer_yaml,
                extra_yaml: &top,
                ..GatewayOptions::new(jwks.uri(), upstream.addr, policy)
            });
            gw.wait_ready();
            gw
        };
        let a = replica();
        let b = replica();
        Cluster {
            a,
            b,
            key,
            jwks,
            upstream,
            nats,
        }
    }

    /// An access token of the session `sid` (or, without, of `sub` +
    /// client) issued now.
    pub fn token(&self, scope: &str, sid: Option<&str>, sub: &str) -> String {
        self.key.sign(&session_claims(scope, sid, sub))
    }

    /// A logout token signed by the issuer's key.
    pub fn logout_token(&self, claims: &Value) -> String {
        self.key.sign_with_typ(claims, "logout+jwt")
    }

    /// Requests the upstream has received so far.
    pub fn forwarded(&self) -> usize {
        self.upstream.requests().len()
    }
}

/// `sessions:` with a NATS store at `nats_url`.
pub fn sessions_yaml(nats_url: &str, idle_timeout: &str, write_interval: &str, stale_grace: &str) -> String {
    format!(
        "sessions:\n  idle_timeout: {idle_timeout}\n  write_interval: {write_interval}\n  stale_grace: {stale_grace}\n  store: nats\n  nats:\n    url: {nats_url}\n    bucket: phigate-sessions\n"
    )
}

/// `backchannel_logout:` at [`LOGOUT_PATH`] for [`LOGOUT_CLIENT_ID`].
pub fn logout_yaml() -> String {
    format!("backchannel_logout:\n  path: {LOGOUT_PATH}\n  client_ids: [{LOGOUT_CLIENT_ID}]\n")
}

/// `dpop:` with [`PUBLIC_BASE_URL`], server nonces on or off.
pub fn dpop_yaml(nonce: bool) -> String {
    format!("dpop:\n  public_base_url: {PUBLIC_BASE_URL}\n  nonce: {nonce}\n")
}

/// A random id (`prefix-<32 hex>`), for `jti`s.
pub fn unique_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    format!("{prefix}-{:032x}", u128::from_be_bytes(b))
}

/// Claims of an access token for the test issuer and audience, issued now,
/// with a `sid` when given.
pub fn session_claims(scope: &str, sid: Option<&str>, sub: &str) -> Value {
    let now = now();
    let mut c = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "client_id": "app-7",
        "scope": scope, "iat": now, "exp": now + 600, "jti": unique_id("at"),
    });
    if let Some(sid) = sid {
        c["sid"] = json!(sid);
    }
    c
}

/// Valid logout-token claims naming `sid` and/or `sub`.
pub fn logout_claims(sid: Option<&str>, sub: Option<&str>) -> Value {
    let mut c = json!({
        "iss": ISSUER, "aud": LOGOUT_CLIENT_ID, "iat": now(), "jti": unique_id("lt"),
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    });
    if let Some(sid) = sid {
        c["sid"] = json!(sid);
    }
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    c
}

/// `GET target` with `Authorization: Bearer token`.
pub fn bearer(gw: &Gateway, target: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    http::request(gw.proxy, "GET", target, &[("Authorization", &auth)], b"").unwrap()
}

/// `GET target` with `Authorization: DPoP token` and `DPoP: proof`.
pub fn dpop_get(gw: &Gateway, target: &str, token: &str, proof: &str) -> Response {
    let auth = format!("DPoP {token}");
    http::request(
        gw.proxy,
        "GET",
        target,
        &[("Authorization", &auth), ("DPoP", proof)],
        b"",
    )
    .unwrap()
}

/// `POST` a logout token to the back-channel logout path (a JWT needs no
/// form encoding: its alphabet is `[A-Za-z0-9_.-]`).
pub fn post_logout(gw: &Gateway, logout_token: &str) -> Response {
    let body = format!("logout_token={logout_token}");
    http::request(
        gw.proxy,
        "POST",
        LOGOUT_PATH,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap()
}

/// The refusal reason of a response: the deny body's `error`, a logout
/// answer's `error_description`, or `ok` for a 2xx.
pub fn reason(r: &Response) -> String {
    if (200..300).contains(&r.status) {
        return "ok".into();
    }
    let v = r.json();
    v["error_description"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Wait (at most 10 s) for an audit record of `gw` that `pred` accepts.
pub fn wait_record(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(10), || {
        gw.audit_records().into_iter().find(|r| pred(r))
    })
    .unwrap_or_else(|| panic!("no audit record {what}:\n{}", gw.audit_text()))
}

/// The audit record of the request answered by `r` (its `x-request-id`).
pub fn record_of(gw: &Gateway, r: &Response) -> Value {
    let id = r.header("x-request-id").expect("x-request-id on the answer");
    gw.record(id)
}

/// Sleep until the wall clock has passed the next whole second (+ 50 ms):
/// a token minted afterwards has an `iat` later than any end recorded
/// before the call (ends compare `iat * 1000 <= end`).
pub fn sleep_past_second_boundary() {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(1000 - ms) + 50));
}

/// A persistent HTTP/1.1 connection (keep-alive) for request loops; it
/// reconnects when the server closes. Responses must carry
/// `Content-Length` (phigate's and the test upstream's do).
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Connections opened so far.
    pub connections: usize,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAlive {
            addr,
            stream: None,
            connections: 0,
        }
    }

    /// Send one `GET` with `headers` and read its response (once more on a
    /// new connection if a reused one turns out to be closed).
    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let reused = self.stream.is_some();
        match self.get_once(target, headers) {
            Err(_) if reused => self.get_once(target, headers),
            r => r,
        }
    }

    fn get_once(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.connections += 1;
        }
        let result = self.exchange(target, headers);
        let keep = matches!(&result, Ok(r) if !r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")));
        if !keep {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let s = self.stream.as_mut().expect("connected");
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&chunk[..n]);
        };
        let mut r = http::parse(&raw[..head_end])?;
        let len = r
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
        while raw.len() < head_end + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        r.body = raw[head_end..head_end + len].to_vec();
        Ok(r)
    }
}
