//! What is forwarded: the upstream peer's options and the edits to the
//! upstream request that make the backend execute what was authorised.

use http::HeaderMap;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_error::Result;
use pingora_http::RequestHeader;

use phigate_policy::{Forward, Headers, METHOD_OVERRIDE_HEADERS};

use crate::config::ForwardedMode;

/// Hop-by-hop fields (RFC 9110 §7.6.1) and upgrade fields, removed before
/// forwarding (pingora's request policy removes them too, together with the
/// fields named in `Connection`; this is the explicit second line).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// The upstream peer for an allowed request (as selected, with its address,
/// TLS and timeouts). Upgrade handshakes are forwarded only when the
/// decision says the route opted in.
pub fn peer(mut peer: HttpPeer, forward: Forward) -> HttpPeer {
    peer.options.http_upstream_request_policy = if forward.websocket {
        HttpUpstreamRequestPolicy::standard()
    } else {
        HttpUpstreamRequestPolicy::deny_upgrades()
    };
    peer
}

/// Remove a header if the request has it. pingora's `remove_header` edits
/// its case map even for a header it does not hold, and these run on every
/// request for a dozen names that are almost never there.
fn remove_present(req: &mut RequestHeader, name: &str) {
    if req.headers.contains_key(name) {
        req.remove_header(name);
    }
}

/// Edit the upstream request: hop-by-hop and method-override fields out,
/// `Prefer: handling=strict` in when the decision relied on search
/// parameters, `Expect` out when phigate already answered `100 Continue`
/// and read the body.
pub fn edit_request(req: &mut RequestHeader, forward: Forward, sent_continue: bool) -> Result<()> {
    if !forward.websocket {
        for h in HOP_BY_HOP {
            remove_present(req, h);
        }
    }
    for h in METHOD_OVERRIDE_HEADERS {
        remove_present(req, h);
    }
    if sent_continue {
        remove_present(req, "expect");
    }
    if forward.prefer_strict {
        let existing: Vec<String> = req
            .headers
            .get_all("prefer")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        req.remove_header("prefer");
        req.insert_header("prefer", strict_prefer(&existing))?;
    }
    Ok(())
}

/// The `Prefer` value to forward: the client's preferences without any
/// `handling`, plus `handling=strict` (RFC 7240; FHIR search: a server must
/// then refuse parameters it does not support instead of ignoring them).
pub fn strict_prefer(existing: &[String]) -> String {
    let mut prefs: Vec<&str> = existing
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| {
            let name = p.split(['=', ';']).next().unwrap_or("").trim();
            !p.is_empty() && !name.eq_ignore_ascii_case("handling")
        })
        .collect();
    prefs.push("handling=strict");
    prefs.join(", ")
}

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The socket peer.
    pub peer: Option<std::net::IpAddr>,
    /// The peer is one of `trusted_proxies`: its forwarding headers are kept
    /// and extended; anyone else's are replaced.
    pub trusted: bool,
    /// `http` or `https` (the listener).
    pub scheme: &'a str,
    /// The `Host` (HTTP/1.1) or `:authority` (HTTP/2) the client sent.
    pub host: Option<&'a str>,
}

/// Headers of the `x_forwarded` mode.
const X_FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Set the forwarding headers: values from a trusted proxy are kept and
/// the peer appended; values from anyone else are removed first, never
/// passed on — a client cannot make the backend believe another address,
/// scheme or host. Headers of a mode that is off are passed on only from
/// trusted proxies.
pub fn set_forwarding_headers(
    req: &mut RequestHeader,
    origin: Origin<'_>,
    mode: ForwardedMode,
) -> Result<()> {
    let existing = |req: &RequestHeader, name: &str| -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    if !origin.trusted {
        for h in X_FORWARDED.iter().chain(std::iter::once(&"forwarded")) {
            remove_present(req, h);
        }
    }
    let peer = origin.peer.map(|ip| ip.to_string());
    if mode.x_forwarded {
        let mut chain = existing(req, "x-forwarded-for");
        chain.extend(peer.clone());
        remove_present(req, "x-forwarded-for");
        if !chain.is_empty() {
            req.insert_header("x-forwarded-for", chain.join(", "))?;
        }
        if existing(req, "x-forwarded-proto").is_empty() {
            req.insert_header("x-forwarded-proto", origin.scheme)?;
        }
        if existing(req, "x-forwarded-host").is_empty() {
            if let Some(h) = origin.host {
                req.insert_header("x-forwarded-host", h)?;
            }
        }
    }
    if mode.forwarded {
        let mut elements = existing(req, "forwarded");
        let mut el = String::new();
        if let Some(ip) = origin.peer {
            el.push_str(&match ip {
                std::net::IpAddr::V4(v4) => format!("for={v4}"),
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            });
        }
        let pairs = [("proto", Some(origin.scheme)), ("host", origin.host)];
        for (k, v) in pairs {
            let Some(v) = v else { continue };
            if !el.is_empty() {
                el.push(';');
            }
            el.push_str(k);
            el.push('=');
            el.push_str(&forwarded_value(v));
        }
        elements.push(el);
        remove_present(req, "forwarded");
        req.insert_header("forwarded", elements.join(", "))?;
    }
    Ok(())
}

/// An RFC 7239 value: a token as is, anything else as a quoted string.
fn forwarded_value(v: &str) -> String {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !v.is_empty() && v.chars().all(tchar) {
        v.to_string()
    } else {
        let escaped: String = v
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// A pingora/`http` header map as the policy core reads it.
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn each(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for v in self.0.get_all(name) {
            f(v.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_keeps_other_preferences_and_forces_strict() {
        let s = |v: &[&str]| strict_prefer(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&[]), "handling=strict");
        assert_eq!(s(&["handling=lenient"]), "handling=strict");
        assert_eq!(
            s(&["return=minimal, Handling=lenient"]),
            "return=minimal, handling=strict"
        );
        assert_eq!(
            s(&["respond-async", "handling"]),
            "respond-async, handling=strict"
        );
    }

    #[test]
    fn forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
        let build = || {
            let mut req = RequestHeader::build("GET", b"/fhir/Patient/1", None).unwrap();
            req.append_header("x-forwarded-for", "6.6.6.6").unwrap();
            req.append_header("x-forwarded-proto", "https").unwrap();
            req.append_header("x-forwarded-host", "evil.example").unwrap();
            req.append_header("forwarded", "for=6.6.6.6;host=evil.example")
                .unwrap();
            req
        };
        let h = |req: &RequestHeader, n: &str| {
            req.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let origin = |trusted| Origin {
            peer: Some("10.0.0.7".parse().unwrap()),
            trusted,
            scheme: "http",
            host: Some("fhir.example:8443"),
        };
        let both = ForwardedMode {
            x_forwarded: true,
            forwarded: true,
        };
        // Untrusted: every client value replaced.
        let mut req = build();
        set_forwarding_headers(&mut req, origin(false), both).unwrap();
        assert_eq!(h(&req, "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(h(&req, "x-forwarded-proto"), ["http"]);
        assert_eq!(h(&req, "x-forwarded-host"), ["fhir.example:8443"]);
        assert_eq!(
            h(&req, "forwarded"),
            ["for=10.0.0.7;proto=http;host=\"fhir.example:8443\""]
        );
        // Trusted: kept and extended.
        let mut req = build();
        set_forwarding_headers(&mut req, origin(true), both).unwrap();
        assert_eq!(h(&req, "x-forwarded-for"), ["6.6.6.6, 10.0.0.7"]);
        assert_eq!(h(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(h(&req, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(
            h(&req, "forwarded"),
            ["for=6.6.6.6;host=evil.example, for=10.0.0.7;proto=http;host=\"fhir.example:8443\""]
        );
        // Mode none: untrusted values still removed, nothing added.
        let mut req = build();
        let none = ForwardedMode {
            x_forwarded: false,
            forwarded: false,
        };
        set_forwarding_headers(&mut req, origin(false), none).unwrap();
        for n in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert!(h(&req, n).is_empty(), "{n}");
        }
        // IPv6 peers are quoted in Forwarded; odd hosts are escaped.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let o = Origin {
            peer: Some("::1".parse().unwrap()),
            trusted: false,
            scheme: "https",
            host: Some("a\"b"),
        };
        set_forwarding_headers(&mut req, o, both).unwrap();
        assert_eq!(
            h(&req, "forwarded"),
            ["for=\"[::1]\";proto=https;host=\"a\\\"b\""]
        );
    }

    #[test]
    fn request_edits() {
        let mut req = RequestHeader::build("GET", b"/fhir/Observation?patient=1", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-http-method-override", "DELETE"),
            ("expect", "100-continue"),
            ("prefer", "handling=lenient"),
            ("x-keep", "1"),
        ] {
            req.append_header(k, v).unwrap();
        }
        edit_request(
            &mut req,
            Forward {
                prefer_strict: true,
                ..Forward::default()
            },
            true,
        )
        .unwrap();
        for gone in [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "x-http-method-override",
            "expect",
        ] {
            assert!(req.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(req.headers.get("prefer").unwrap(), "handling=strict");
        assert_eq!(req.headers.get("x-keep").unwrap(), "1");
    }
}
