//! What is forwarded: the upstream peer's options and the edits to the
//! upstream request that make the backend execute what was authorised.

use http::HeaderMap;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_error::Result;
use pingora_http::RequestHeader;

use phigate_policy::{Forward, Headers, METHOD_OVERRIDE_HEADERS};

use crate::config::UpstreamConfig;

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

/// The upstream peer for an allowed request. Upgrade handshakes are
/// forwarded only when the decision says the route opted in.
pub fn peer(up: &UpstreamConfig, forward: Forward) -> HttpPeer {
    let mut peer = HttpPeer::new(up.address, false, String::new());
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(up.read_timeout);
    peer.options.http_upstream_request_policy = if forward.websocket {
        HttpUpstreamRequestPolicy::standard()
    } else {
        HttpUpstreamRequestPolicy::deny_upgrades()
    };
    peer
}

/// Edit the upstream request: hop-by-hop and method-override fields out,
/// `Prefer: handling=strict` in when the decision relied on search
/// parameters, `Expect` out when phigate already answered `100 Continue`
/// and read the body.
pub fn edit_request(req: &mut RequestHeader, forward: Forward, sent_continue: bool) -> Result<()> {
    if !forward.websocket {
        for h in HOP_BY_HOP {
            req.remove_header(*h);
        }
    }
    for h in METHOD_OVERRIDE_HEADERS {
        req.remove_header(*h);
    }
    if sent_continue {
        req.remove_header("expect");
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
