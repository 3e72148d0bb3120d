//! `phigate dev`: a development issuer and a demo FHIR upstream, so the
//! whole request path can be tried on one machine with nothing else running.
//!
//! NOTHING HERE MAY BE USED IN PRODUCTION. These endpoints mint tokens for
//! anybody who asks; they exist only in `phigate dev`, never in `phigate run`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::GatewayError;

/// The issuer name and audience the dev gateway trusts.
pub const DEV_ISSUER: &str = "phigate-dev";
pub const DEV_AUDIENCE: &str = "phigate-dev";
/// The client id the dev issuer addresses back-channel logout tokens to.
pub const DEV_LOGOUT_CLIENT_ID: &str = "phigate-dev";

/// The dev issuer: an ES256 (P-256) key, its JWKS, and a token minter.
pub struct DevIssuer {
    encoding: EncodingKey,
    kid: String,
    jwks: String,
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

fn pem_to_der(text: &str) -> Option<Vec<u8>> {
    let start = text.find(PEM_BEGIN)? + PEM_BEGIN.len();
    let end = text.find(PEM_END)?;
    let b64: String = text
        .get(start..end)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

/// Parameters accepted by `GET /dev/token`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenParams {
    pub scope: String,
    pub sub: String,
    pub client_id: String,
    pub patient: Option<String>,
    pub ttl: i64,
    pub roles: Vec<String>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_age: i64,
    /// `sid`: the session the token belongs to.
    pub sid: Option<String>,
    /// `cnf.jkt`: binds the token to a DPoP key (RFC 9449).
    pub jkt: Option<String>,
    /// `cnf.x5t#S256`: binds the token to a client certificate (RFC 8705).
    pub x5t: Option<String>,
}

impl Default for TokenParams {
    fn default() -> Self {
        Self {
            scope: String::new(),
            sub: "dev-user".into(),
            client_id: "dev-client".into(),
            patient: None,
            ttl: 300,
            roles: Vec::new(),
            acr: None,
            amr: Vec::new(),
            auth_age: 0,
            sid: None,
            jkt: None,
            x5t: None,
        }
    }
}

impl TokenParams {
    /// Parse a `/dev/token` query string; unknown or malformed parameters are errors.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut p = TokenParams::default();
        let int = |k: &str, v: &str| -> Result<i64, String> {
            v.parse::<i64>()
                .ok()
                .filter(|n| n.abs() <= 7 * 86_400)
                .ok_or_else(|| format!("`{k}` must be an integer number of seconds within ±7 days"))
        };
        let list = |v: &str| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if v.len() > 1024 {
                return Err(format!("`{k}` is too long"));
            }
            match k.as_ref() {
                "scope" => p.scope = v.split_whitespace().collect::<Vec<_>>().join(" "),
                "sub" => p.sub = v.into_owned(),
                "client_id" => p.client_id = v.into_owned(),
                "patient" => p.patient = Some(v.into_owned()),
                "ttl" => p.ttl = int("ttl", &v)?,
                "roles" => p.roles = list(&v),
                "acr" => p.acr = Some(v.into_owned()),
                "amr" => p.amr = list(&v),
                "auth_age" => p.auth_age = int("auth_age", &v)?,
                "sid" => p.sid = Some(v.into_owned()),
                "jkt" => p.jkt = Some(v.into_owned()),
                "x5t" => p.x5t = Some(v.into_owned()),
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (known: scope, sub, client_id, patient, ttl, roles, acr, amr, auth_age, sid, jkt, x5t)"
                    ))
                }
            }
        }
        Ok(p)
    }
}

impl DevIssuer {
    /// Load the key from `path` if it exists, else generate one (and write it
    /// to `path`, mode 0600, when a path was given).
    pub fn load_or_generate(path: Option<&Path>) -> Result<Self, GatewayError> {
        let der = match path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| GatewayError::DevKey(format!("{}: {e}", p.display())))?;
                pem_to_der(&text).ok_or_else(|| {
                    GatewayError::DevKey(format!("{}: not a PEM PKCS#8 private key", p.display()))
                })?
            }
            _ => {
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                        .map_err(|_| GatewayError::DevKey("key generation failed".into()))?;
                let der = doc.as_ref().to_vec();
                if let Some(p) = path {
                    write_private(p, &der_to_pem(&der))
                        .map_err(|e| GatewayError::DevKey(format!("{}: {e}", p.display())))?;
                }
                der
            }
        };
        Self::from_pkcs8(&der)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, GatewayError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| GatewayError::DevKey(format!("not a P-256 PKCS#8 key: {e}")))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(GatewayError::DevKey("unexpected public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638 thumbprint as kid.
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumb_input.as_bytes()));
        let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256" }] })
            .to_string();
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            kid,
            jwks,
        })
    }

    /// The public JWKS served at `/dev/jwks.json`.
    pub fn jwks_json(&self) -> String {
        self.jwks.clone()
    }

    /// The key id of the dev key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mint a signed access token (RFC 9068 shape, `typ: at+jwt`).
    pub fn token(&self, p: &TokenParams) -> Result<String, String> {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut claims = json!({
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": p.sub,
            "client_id": p.client_id,
            "scope": p.scope,
            "iat": now,
            "exp": now + p.ttl,
            "jti": uuid::Uuid::new_v4().to_string(),
            "auth_time": now - p.auth_age,
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(pt) = &p.patient {
                obj.insert("patient".into(), Value::String(pt.clone()));
            }
            if !p.roles.is_empty() {
                obj.insert("roles".into(), json!(p.roles));
            }
            if let Some(acr) = &p.acr {
                obj.insert("acr".into(), Value::String(acr.clone()));
            }
            if !p.amr.is_empty() {
                obj.insert("amr".into(), json!(p.amr));
            }
            if let Some(sid) = &p.sid {
                obj.insert("sid".into(), Value::String(sid.clone()));
            }
            let mut cnf = serde_json::Map::new();
            if let Some(jkt) = &p.jkt {
                cnf.insert("jkt".into(), Value::String(jkt.clone()));
            }
            if let Some(x5t) = &p.x5t {
                cnf.insert("x5t#S256".into(), Value::String(x5t.clone()));
            }
            if !cnf.is_empty() {
                obj.insert("cnf".into(), Value::Object(cnf));
            }
        }
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| format!("signing failed: {e}"))
    }

    /// A signed OpenID Connect Back-Channel Logout token for the dev client
    /// id [`DEV_LOGOUT_CLIENT_ID`]: `GET /dev/logout-token?sid=…&sub=…`
    /// (at least one of them).
    pub fn logout_token_from_query(&self, query: &str) -> Result<String, String> {
        let (mut sid, mut sub) = (None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if v.is_empty() || v.len() > 1024 {
                return Err(format!("`{k}` must be 1 to 1024 characters"));
            }
            match k.as_ref() {
                "sid" => sid = Some(v.into_owned()),
                "sub" => sub = Some(v.into_owned()),
                other => return Err(format!("unknown parameter `{other}` (known: sid, sub)")),
            }
        }
        if sid.is_none() && sub.is_none() {
            return Err("give `sid`, `sub` or both".into());
        }
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut claims = json!({
            "iss": DEV_ISSUER,
            "aud": DEV_LOGOUT_CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": uuid::Uuid::new_v4().to_string(),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(s) = sid {
                obj.insert("sid".into(), Value::String(s));
            }
            if let Some(s) = sub {
                obj.insert("sub".into(), Value::String(s));
            }
        }
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("logout+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| format!("signing failed: {e}"))
    }

    /// `/dev/token?...` → token, or a message saying what was wrong.
    pub fn token_from_query(&self, query: &str) -> Result<String, String> {
        self.token(&TokenParams::from_query(query)?)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

// ---------------------------------------------------------------------------
// Demo FHIR upstream
// ---------------------------------------------------------------------------

/// Clearly synthetic demo data: no real person is described here.
struct DemoStore {
    patients: HashMap<&'static str, Value>,
    observations: Mutex<Vec<Value>>,
}

fn demo_store() -> DemoStore {
    let patient = |id: &'static str, family: &str, given: &str, birth: &str| {
        (
            id,
            json!({
                "resourceType": "Patient", "id": id,
                "meta": { "tag": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data" }] },
                "name": [{ "family": family, "given": [given] }],
                "birthDate": birth
            }),
        )
    };
    let obs = |id: &str, patient: &str, code: &str, display: &str, value: f64, unit: &str| {
        json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": code, "display": display }] },
            "subject": { "reference": format!("Patient/{patient}") },
            "valueQuantity": { "value": value, "unit": unit }
        })
    };
    DemoStore {
        patients: [
            patient("example", "Synthetic", "Example", "1970-01-01"),
            patient("123", "Testperson", "Demo", "1985-05-05"),
            patient("999", "Fictional", "Sample", "2001-09-09"),
        ]
        .into_iter()
        .collect(),
        observations: Mutex::new(vec![
            obs("obs-1", "example", "8867-4", "Heart rate", 72.0, "beats/minute"),
            obs("obs-2", "123", "8310-5", "Body temperature", 36.8, "Cel"),
            obs("obs-3", "123", "8867-4", "Heart rate", 64.0, "beats/minute"),
            obs("obs-4", "999", "29463-7", "Body weight", 70.5, "kg"),
        ]),
    }
}

fn fhir(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

fn outcome(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    fhir(
        status,
        json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "code": "processing", "diagnostics": text }] }),
    )
}

async fn demo_handle(
    store: Arc<DemoStore>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match (method.as_str(), segs.as_slice()) {
        ("GET", ["fhir", "metadata"]) => fhir(
            StatusCode::OK,
            json!({ "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
                    "format": ["json"], "software": { "name": "phigate demo upstream (synthetic data)" },
                    "rest": [{ "mode": "server", "resource": [
                        { "type": "Patient", "interaction": [{ "code": "read" }] },
                        { "type": "Observation", "interaction": [{ "code": "search-type" }, { "code": "create" }] } ] }] }),
        ),
        ("GET", ["fhir", "Patient", id]) => match store.patients.get(id) {
            Some(p) => fhir(StatusCode::OK, p.clone()),
            None => outcome(StatusCode::NOT_FOUND, "Patient not found"),
        },
        ("GET", ["fhir", "Observation"]) => {
            let wanted: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "patient" || k == "subject")
                .map(|(_, v)| v.trim_start_matches("Patient/").to_string())
                .collect();
            let all = store.observations.lock().map(|v| v.clone()).unwrap_or_default();
            let hits: Vec<Value> = all
                .into_iter()
                .filter(|o| {
                    let subject = o["subject"]["reference"]
                        .as_str()
                        .unwrap_or("")
                        .trim_start_matches("Patient/");
                    wanted.is_empty() || wanted.iter().any(|w| w == subject)
                })
                .map(|o| json!({ "resource": o }))
                .collect();
            fhir(
                StatusCode::OK,
                json!({ "resourceType": "Bundle", "type": "searchset", "total": hits.len(), "entry": hits }),
            )
        }
        ("POST", ["fhir", "Observation"]) => {
            let body = Limited::new(req.into_body(), 1 << 20).collect().await;
            match body
                .map(|b| b.to_bytes())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                Some(mut v) if v["resourceType"] == "Observation" => {
                    let mut list = match store.observations.lock() {
                        Ok(l) => l,
                        Err(p) => p.into_inner(),
                    };
                    let id = format!("obs-{}", list.len() + 1);
                    v["id"] = Value::String(id);
                    list.push(v.clone());
                    fhir(StatusCode::CREATED, v)
                }
                _ => outcome(StatusCode::BAD_REQUEST, "body must be an Observation resource"),
            }
        }
        _ => outcome(StatusCode::NOT_FOUND, "unknown resource or interaction"),
    };
    Ok(resp)
}

/// Start the demo FHIR upstream on `127.0.0.1:0` in its own thread and
/// runtime; returns the address it listens on.
pub fn spawn_demo_upstream() -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-upstream".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "demo upstream failed to start");
                        return;
                    }
                };
                let store = Arc::new(demo_store());
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let store = store.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| demo_handle(store.clone(), req));
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_params_parse_and_reject_unknown() {
        let p = TokenParams::from_query(
            "scope=user/Patient.rs+user/Observation.rs&sub=alice&ttl=-60&roles=nurse,admin&amr=mfa",
        )
        .unwrap();
        assert_eq!(p.scope, "user/Patient.rs user/Observation.rs");
        assert_eq!(p.sub, "alice");
        assert_eq!(p.ttl, -60);
        assert_eq!(p.roles, vec!["nurse", "admin"]);
        assert_eq!(p.amr, vec!["mfa"]);
        assert!(TokenParams::from_query("scop=x")
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(TokenParams::from_query("ttl=abc").is_err());
        assert_eq!(TokenParams::from_query("").unwrap(), TokenParams::default());
    }

    #[test]
    fn key_round_trips_through_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.pem");
        let a = DevIssuer::load_or_generate(Some(&path)).unwrap();
        let b = DevIssuer::load_or_generate(Some(&path)).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks_json(), b.jwks_json());
        let c = DevIssuer::load_or_generate(None).unwrap();
        assert_ne!(a.kid(), c.kid());
        std::fs::write(dir.path().join("bad.pem"), "nope").unwrap();
        assert!(DevIssuer::load_or_generate(Some(&dir.path().join("bad.pem"))).is_err());
    }

    #[test]
    fn minted_token_has_kid_and_claims() {
        let d = DevIssuer::load_or_generate(None).unwrap();
        let t = d
            .token(&TokenParams {
                patient: Some("123".into()),
                ..Default::default()
            })
            .unwrap();
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.kid.as_deref(), Some(d.kid()));
        assert_eq!(h.typ.as_deref(), Some("at+jwt"));
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["patient"], "123");
        assert_eq!(payload["iss"], DEV_ISSUER);
    }
}
