//! The request as the policy core sees it: [`prepare`] turns a raw request
//! (method, target, headers) into a [`Prepared`] request once — canonical
//! target, the one route match, what the request still needs before it can
//! be decided (a token, a body) and the request-shape refusals that need no
//! token — and [`crate::decide`] decides it. The gateway and the policy
//! tools (`policy test`, `policy explain`) call the same two functions, so a
//! policy test proves what the gateway will do.

use std::sync::Arc;

use crate::compile::{Access, PolicySet, RouteMatch};
use crate::decide::Decision;
use crate::fhir::{self, Interaction};
use crate::{canonicalize, CanonicalTarget, Reason};

/// The HTTP version a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// Read access to request headers. Names are compared case-insensitively;
/// `name` is always given in ASCII lower case.
pub trait Headers {
    /// Call `f` with every value of the header `name`, in request order.
    fn each(&self, name: &str, f: &mut dyn FnMut(&[u8]));
}

/// Helpers over any [`Headers`].
pub(crate) fn count(h: &dyn Headers, name: &str) -> usize {
    let mut n = 0;
    h.each(name, &mut |_| n += 1);
    n
}

/// Every value of `name`, copied.
pub(crate) fn values(h: &dyn Headers, name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    h.each(name, &mut |v| out.push(v.to_vec()));
    out
}

/// Whether any `name` header lists `token` (comma-separated, case-insensitive).
pub(crate) fn lists_token(h: &dyn Headers, name: &str, token: &str) -> bool {
    let mut found = false;
    h.each(name, &mut |v| {
        found |= v
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()));
    });
    found
}

/// A plain list of headers (policy tests, `policy explain`, unit tests).
/// Repeated names are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, Vec<u8>)>);

impl HeaderList {
    /// A list from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        HeaderList(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }
}

impl Headers for HeaderList {
    fn each(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for (k, v) in &self.0 {
            if k.eq_ignore_ascii_case(name) {
                f(v);
            }
        }
    }
}

/// One request as received, before anything is interpreted.
pub struct RawRequest<'a> {
    /// The method as sent (methods are case-sensitive).
    pub method: &'a str,
    /// The request target exactly as on the wire (`/path?query`).
    pub target: &'a [u8],
    pub version: HttpVersion,
    pub headers: &'a dyn Headers,
    /// Current time, seconds since the Unix epoch (time windows, `max_auth_age`).
    pub now: i64,
    /// The SHA-256 thumbprint (base64url, RFC 8705 `x5t#S256`) of the client
    /// certificate verified on this connection (mTLS), if any.
    pub client_cert_sha256: Option<&'a str>,
}

/// A body that must be read before the request can be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A FHIR batch/transaction Bundle (POST to the FHIR base): every entry
    /// is authorised.
    Bundle,
    /// `application/x-www-form-urlencoded`: the parameters of a FHIR
    /// `POST [type]/_search` (merged with the query string), and on any
    /// route a `_method` override is looked for.
    Form,
}

/// Largest body phigate inspects (pingora replays at most this much to the
/// upstream after reading it); larger inspected bodies are refused (413).
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;

/// A protocol upgrade the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade.
    None,
    /// A well-formed RFC 6455 WebSocket handshake.
    WebSocket,
    /// Any other `Upgrade` / `Connection: upgrade` / `HTTP2-Settings` request.
    Other,
}

/// The break-glass justification header, when the policy enables break-glass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JustificationHeader {
    Absent,
    One(Vec<u8>),
    /// Sent more than once: ambiguous, never accepted.
    Repeated,
}

/// Headers that ask a server to execute another method than the request's
/// (frameworks honour them): never forwarded, the request is refused.
pub const METHOD_OVERRIDE_HEADERS: &[&str] =
    &["x-http-method-override", "x-http-method", "x-method-override"];

/// A request prepared for [`crate::decide`]: canonicalised and matched once.
#[derive(Debug)]
pub struct Prepared<'p> {
    pub(crate) policy: &'p PolicySet,
    /// The method as sent.
    pub(crate) method: String,
    pub(crate) target: Option<CanonicalTarget>,
    /// The raw target (lossy UTF-8) when it failed canonicalisation.
    pub(crate) raw_target: String,
    pub(crate) route: Option<RouteMatch<'p>>,
    /// A request-shape refusal that needs no token.
    pub(crate) refusal: Option<Decision>,
    pub(crate) justification: JustificationHeader,
    pub(crate) upgrade: Upgrade,
    /// `If-None-Exist` values (conditional create).
    pub(crate) if_none_exist: Vec<Vec<u8>>,
    /// The media type of the body (`Content-Type` without parameters, lower
    /// case) and whether its charset parameter, if any, is UTF-8.
    pub(crate) content_type: Option<(String, bool)>,
    pub(crate) body: Option<BodyKind>,
    pub(crate) now: i64,
    /// The verified client certificate's thumbprint (mTLS), for
    /// certificate-bound tokens.
    pub(crate) client_cert_sha256: Option<String>,
}

impl<'p> Prepared<'p> {
    /// The policy this request is decided by.
    pub fn policy(&self) -> &'p PolicySet {
        self.policy
    }

    /// The method as sent.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The SHA-256 thumbprint (base64url) of the verified client
    /// certificate, if the connection presented one.
    pub fn client_cert_sha256(&self) -> Option<&str> {
        self.client_cert_sha256.as_deref()
    }

    /// The canonical target (`None` when canonicalisation refused it).
    pub fn target(&self) -> Option<&CanonicalTarget> {
        self.target.as_ref()
    }

    /// The canonical path, or the raw target (lossy) when it was refused.
    pub fn path(&self) -> &str {
        self.target
            .as_ref()
            .map_or(self.raw_target.as_str(), |t| t.path.as_str())
    }

    /// The matched route's label.
    pub fn route_label(&self) -> Option<&Arc<str>> {
        self.route.as_ref().map(|m| &m.route.label)
    }

    /// The matched route's own session idle timeout, if it sets one.
    pub fn route_idle_timeout(&self) -> Option<std::time::Duration> {
        self.route.as_ref().and_then(|m| m.route.idle_timeout)
    }

    /// True when the matched route only accepts DPoP-bound tokens.
    pub fn route_requires_dpop(&self) -> bool {
        self.route.as_ref().is_some_and(|m| m.route.require_dpop)
    }

    /// Whether deciding needs a validated token: false for public routes
    /// and for requests refused by their shape, so the gateway skips token
    /// validation (and a possible key fetch) for them.
    pub fn needs_token(&self) -> bool {
        self.refusal.is_none() && !matches!(&self.route, Some(m) if m.route.access == Access::Public)
    }

    /// The body deciding needs, if any (read at most [`MAX_INSPECTED_BODY`]).
    pub fn needs_body(&self) -> Option<BodyKind> {
        if self.refusal.is_some() {
            return None;
        }
        self.body
    }

    /// A request-shape refusal decided without a token, if any.
    pub fn refusal(&self) -> Option<&Decision> {
        self.refusal.as_ref()
    }

    /// The break-glass justification as it will be recorded: valid UTF-8,
    /// NFC-normalised, control characters replaced, at most 500 characters;
    /// `Some("")` for a repeated or undecodable header.
    pub fn justification_for_audit(&self) -> Option<String> {
        match &self.justification {
            JustificationHeader::Absent => None,
            JustificationHeader::Repeated => Some(String::new()),
            JustificationHeader::One(b) => Some(crate::compile::sanitize_justification(b)),
        }
    }

    /// The protocol upgrade the request asks for.
    pub fn upgrade(&self) -> Upgrade {
        self.upgrade
    }

    /// Whether this could be a search-result page phigate recorded
    /// ([`crate::decide_continuation`]): a GET on a FHIR-aware route that is
    /// no interaction phigate can decide by itself (HAPI's
    /// `GET [base]?_getpages=…`). Anything phigate can decide directly is
    /// decided directly.
    pub fn is_paging_candidate(&self) -> bool {
        if self.refusal.is_some() || !matches!(self.method.as_str(), "GET" | "HEAD") {
            return false;
        }
        match (&self.route, &self.target) {
            (Some(m), Some(t)) => match &m.route.access {
                Access::Fhir { base } => {
                    fhir::classify("GET", fhir::relative_to_base(&t.path, base), t.query.as_deref()).is_err()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The FHIR base of the matched route, if it is FHIR-aware.
    pub fn fhir_base(&self) -> Option<&str> {
        match &self.route.as_ref()?.route.access {
            Access::Fhir { base } => Some(base),
            _ => None,
        }
    }
}

/// Canonicalise, match and check the shape of a request. Never fails: a
/// request that cannot be decided carries its refusal ([`Prepared::refusal`]).
///
/// Refused here, before any token is looked at (all `400`):
/// - a target that fails canonicalisation (`bad_request_path`);
/// - `CONNECT` (`bad_request`);
/// - a method override: `X-HTTP-Method-Override`, `X-HTTP-Method`,
///   `X-Method-Override` headers or a `_method` query parameter
///   (`method_override`): the backend could execute another method than
///   the one authorised;
/// - a protocol upgrade on a public route that does not opt in with
///   `upgrade: websocket` (`upgrade_refused`; on other routes the upgrade
///   is refused after authentication, so unauthenticated callers learn
///   nothing about routes).
pub fn prepare<'p>(policy: &'p PolicySet, req: &RawRequest<'_>) -> Prepared<'p> {
    let method = req.method.to_string();
    let mut p = Prepared {
        policy,
        method,
        target: None,
        raw_target: String::new(),
        route: None,
        refusal: None,
        justification: JustificationHeader::Absent,
        upgrade: detect_upgrade(req),
        if_none_exist: values(req.headers, "if-none-exist"),
        content_type: content_type(req.headers),
        body: None,
        now: req.now,
        client_cert_sha256: req.client_cert_sha256.map(str::to_string),
    };
    if let Some(bg) = policy.break_glass() {
        let v = values(req.headers, &bg.header);
        p.justification = match v.len() {
            0 => JustificationHeader::Absent,
            1 => JustificationHeader::One(v.into_iter().next().unwrap_or_default()),
            _ => JustificationHeader::Repeated,
        };
    }
    let target = match std::str::from_utf8(req.target).ok().map(canonicalize) {
        Some(Ok(t)) => t,
        _ => {
            p.raw_target = String::from_utf8_lossy(req.target).into_owned();
            p.refusal = Some(Decision::deny(Reason::BadRequestPath));
            return p;
        }
    };
    p.route = policy.match_with_params(&p.method, &target.path);
    let route = p.route.as_ref().map(|m| m.route);
    let refuse = |reason: Reason, detail: String| {
        let mut d = Decision::deny(reason).with_detail(detail);
        d.route = route.map(|r| r.label.clone());
        Some(d)
    };
    if p.method == "CONNECT" {
        p.refusal = refuse(
            Reason::BadRequest,
            "CONNECT is not supported (phigate is a reverse proxy)".into(),
        );
    } else if let Some(h) = METHOD_OVERRIDE_HEADERS.iter().find(|h| count(req.headers, h) > 0) {
        p.refusal = refuse(
            Reason::MethodOverride,
            format!("the `{h}` header asks the backend to execute another method"),
        );
    } else if query_has_method_override(target.query.as_deref()) {
        p.refusal = refuse(
            Reason::MethodOverride,
            "the `_method` query parameter asks the backend to execute another method".into(),
        );
    } else if p.upgrade != Upgrade::None
        && route
            .is_some_and(|r| r.access == Access::Public && !(r.websocket && p.upgrade == Upgrade::WebSocket))
    {
        p.refusal = refuse(
            Reason::UpgradeRefused,
            "protocol upgrades are refused unless the route opts in with `upgrade: websocket`".into(),
        );
    }
    if p.refusal.is_none() {
        p.body = body_kind(&p, route, &target);
    }
    p.target = Some(target);
    p
}

/// Which body (if any) must be inspected before deciding.
fn body_kind(p: &Prepared<'_>, route: Option<&crate::Route>, target: &CanonicalTarget) -> Option<BodyKind> {
    if p.method != "POST" {
        return None;
    }
    if let Some(Access::Fhir { base }) = route.map(|r| &r.access) {
        let rel = fhir::relative_to_base(&target.path, base);
        match fhir::classify(&p.method, rel, target.query.as_deref()) {
            Ok(r) if r.interaction == Interaction::Batch => return Some(BodyKind::Bundle),
            Ok(r) if r.interaction == Interaction::Search => return Some(BodyKind::Form),
            _ => {}
        }
    }
    // A form body may carry `_method` on any route (Rails, Laravel, ...).
    matches!(&p.content_type, Some((t, _)) if t == "application/x-www-form-urlencoded")
        .then_some(BodyKind::Form)
}

fn content_type(h: &dyn Headers) -> Option<(String, bool)> {
    let v = values(h, "content-type");
    let first = v.first()?;
    let s = String::from_utf8_lossy(first);
    let mut parts = s.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    // Two Content-Type headers are ambiguous: no usable media type.
    if v.len() > 1 {
        return Some((String::new(), false));
    }
    Some((media, utf8))
}

/// Whether a query string carries `_method` (any case, `&`- or
/// `;`-separated, percent-encoded or not).
pub(crate) fn query_has_method_override(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    q.split(['&', ';']).any(|piece| {
        let name = piece.split('=').next().unwrap_or("");
        let decoded = crate::smart::percent_decode(name, true).unwrap_or_else(|_| name.to_string());
        decoded.trim().eq_ignore_ascii_case("_method")
    })
}

fn detect_upgrade(req: &RawRequest<'_>) -> Upgrade {
    let h = req.headers;
    let asks =
        count(h, "upgrade") > 0 || lists_token(h, "connection", "upgrade") || count(h, "http2-settings") > 0;
    if !asks {
        return Upgrade::None;
    }
    let upgrade = values(h, "upgrade");
    let websocket = req.method == "GET"
        && req.version == HttpVersion::Http11
        && upgrade.len() == 1
        && upgrade[0].trim_ascii().eq_ignore_ascii_case(b"websocket")
        && lists_token(h, "connection", "upgrade")
        && count(h, "http2-settings") == 0
        && count(h, "sec-websocket-key") == 1
        && values(h, "sec-websocket-version")
            .first()
            .is_some_and(|v| v.trim_ascii() == b"13");
    if websocket {
        Upgrade::WebSocket
    } else {
        Upgrade::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, PolicySource};

    const POLICY: &str = r#"
version: 1
routes:
  - { methods: [GET], path: /public, public: true }
  - { methods: [GET], path: /ws, public: true, upgrade: websocket }
  - { name: fhir, methods: ["*"], path: /fhir/**, fhir: { base: /fhir } }
  - { name: batch, methods: [POST], path: /fhir, fhir: { base: /fhir } }
  - { methods: [POST], path: /api/form, scopes: { any_of: [a] } }
"#;

    fn prep<'p>(p: &'p PolicySet, method: &str, target: &str, headers: &[(&str, &str)]) -> Prepared<'p> {
        let h = HeaderList::from_pairs(headers.iter().copied());
        prepare(
            p,
            &RawRequest {
                method,
                target: target.as_bytes(),
                version: HttpVersion::Http11,
                headers: &h,
                now: 0,
                client_cert_sha256: None,
            },
        )
    }

    const WS: &[(&str, &str)] = &[
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    #[test]
    fn shape_refusals_need_no_token() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        type Case = (
            &'static str,
            &'static str,
            &'static [(&'static str, &'static str)],
            Option<Reason>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("GET", "/fhir/Patient/1", &[], None),
            ("GET", "/fhir/Patient/1", &[("X-HTTP-Method-Override", "DELETE")], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1", &[("x-http-method", "PUT")], Some(Reason::MethodOverride)),
            ("POST", "/fhir/Observation", &[("X-Method-Override", "DELETE")], Some(Reason::MethodOverride)),
            ("GET", "/public", &[("X-HTTP-Method-Override", "")], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1?_method=DELETE", &[], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1?a=1&_METHOD=DELETE", &[], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1?a=1;_method=DELETE", &[], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1?%5Fmethod=PUT", &[], Some(Reason::MethodOverride)),
            ("GET", "/fhir/Patient/1?x_method=PUT", &[], None),
            ("GET", "/nowhere?_method=PUT", &[], Some(Reason::MethodOverride)),
            ("CONNECT", "/fhir/Patient/1", &[], Some(Reason::BadRequest)),
            ("GET", "/fhir/../x", &[], Some(Reason::BadRequestPath)),
            // upgrades: public routes refuse at once, unless they opt in
            ("GET", "/public", WS, Some(Reason::UpgradeRefused)),
            ("GET", "/public", &[("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")], Some(Reason::UpgradeRefused)),
            ("GET", "/ws", WS, None),
            ("GET", "/ws", &[("Upgrade", "websocket"), ("Connection", "upgrade")], Some(Reason::UpgradeRefused)),
            // protected routes decide the upgrade after authentication
            ("GET", "/fhir/Patient/1", WS, None),
        ];
        for (method, target, headers, want) in cases {
            let got = prep(&p, method, target, headers);
            assert_eq!(
                got.refusal().map(|d| d.reason),
                *want,
                "{method} {target} {headers:?}"
            );
            if want.is_some() {
                assert!(!got.needs_token(), "{method} {target}: a refusal needs no token");
                assert_eq!(got.needs_body(), None);
            }
        }
    }

    #[test]
    fn upgrades_are_detected() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        assert_eq!(prep(&p, "GET", "/ws", WS).upgrade(), Upgrade::WebSocket);
        assert_eq!(prep(&p, "GET", "/ws", &[]).upgrade(), Upgrade::None);
        assert_eq!(prep(&p, "POST", "/ws", WS).upgrade(), Upgrade::Other);
        assert_eq!(
            prep(&p, "GET", "/ws", &[("Connection", "upgrade")]).upgrade(),
            Upgrade::Other
        );
        assert_eq!(
            prep(&p, "GET", "/ws", &[("Upgrade", "websocket")]).upgrade(),
            Upgrade::Other
        );
        let mut two = WS.to_vec();
        two.push(("Upgrade", "h2c"));
        assert_eq!(prep(&p, "GET", "/ws", &two).upgrade(), Upgrade::Other);
        let mut old = WS.to_vec();
        old[3] = ("Sec-WebSocket-Version", "8");
        assert_eq!(prep(&p, "GET", "/ws", &old).upgrade(), Upgrade::Other);
    }

    #[test]
    fn bodies_needed_before_deciding() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        let form = [("Content-Type", "application/x-www-form-urlencoded")];
        assert_eq!(
            prep(&p, "POST", "/fhir", &[]).needs_body(),
            Some(BodyKind::Bundle)
        );
        assert_eq!(
            prep(&p, "POST", "/fhir/Observation/_search", &[]).needs_body(),
            Some(BodyKind::Form)
        );
        assert_eq!(prep(&p, "POST", "/fhir/Observation", &[]).needs_body(), None);
        assert_eq!(
            prep(&p, "POST", "/api/form", &form).needs_body(),
            Some(BodyKind::Form)
        );
        assert_eq!(prep(&p, "POST", "/api/form", &[]).needs_body(), None);
        assert_eq!(prep(&p, "GET", "/fhir/Observation", &form).needs_body(), None);
        assert!(prep(&p, "GET", "/public", &[]).refusal().is_none());
        assert!(!prep(&p, "GET", "/public", &[]).needs_token());
        assert!(prep(&p, "GET", "/fhir/Patient/1", &[]).needs_token());
    }
}
