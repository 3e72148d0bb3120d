//! Validation of the network sections: `listen`/`listeners`,
//! `upstream`/`upstreams`, `forwarded_headers` and `trusted_proxies`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use phigate_yaml::PathSeg;

use super::file::{
    ClientAuthFile, ForwardedHeaders, GatewayFile, HealthCheckFile, ListenerFile, UpstreamFile,
    UpstreamTlsFile,
};
use super::validate::{address, Problems};
use super::{ForwardedMode, ListenerConfig, UpstreamConfig, DEFAULT_UPSTREAM_NAME};
use crate::tls::{ClientAuth, ListenerTlsSpec};
use crate::upstreams::{HealthCheckSpec, UpstreamTlsSpec};

/// `listen:` (one plaintext listener) or `listeners:`, exactly one of them.
pub(super) fn listeners(p: &mut Problems<'_>, file: &GatewayFile, base: &Path) -> Vec<ListenerConfig> {
    match (&file.listen, &file.listeners) {
        (Some(_), Some(list)) => {
            p.at(
                &[PathSeg::Key("listeners")],
                "`listen` and `listeners` exclude each other: `listen: ADDR` is shorthand for one plaintext listener",
            );
            // Every problem in the list is still reported.
            listener_list(p, list, base);
            Vec::new()
        }
        (Some(l), None) => address(p, &[PathSeg::Key("listen")], l, "0.0.0.0:8080")
            .map(ListenerConfig::plain)
            .into_iter()
            .collect(),
        (None, Some(list)) => listener_list(p, list, base),
        (None, None) => {
            // "`listen` is required", at the top of the file.
            p.required(&[], "listen", &file.listen);
            Vec::new()
        }
    }
}

fn listener_list(p: &mut Problems<'_>, list: &[ListenerFile], base: &Path) -> Vec<ListenerConfig> {
    if list.is_empty() {
        p.at(&[PathSeg::Key("listeners")], "at least one listener is required");
    }
    let mut out: Vec<ListenerConfig> = Vec::new();
    for (i, l) in list.iter().enumerate() {
        if let Some(c) = listener(p, i, l, base) {
            if out.iter().any(|o| o.address == c.address) {
                p.at(
                    &[
                        PathSeg::Key("listeners"),
                        PathSeg::Index(i),
                        PathSeg::Key("address"),
                    ],
                    format!("duplicate listener address {}", c.address),
                );
            }
            out.push(c);
        }
    }
    out
}

fn listener(p: &mut Problems<'_>, i: usize, l: &ListenerFile, base: &Path) -> Option<ListenerConfig> {
    let here = [PathSeg::Key("listeners"), PathSeg::Index(i)];
    let at = |k: &'static str| [PathSeg::Key("listeners"), PathSeg::Index(i), PathSeg::Key(k)];
    let addr = p
        .required(&here, "address", &l.address)
        .and_then(|a| address(p, &at("address"), a, "0.0.0.0:8443"));
    let tls = l.tls.as_ref().and_then(|t| {
        let tls_at = |k: &'static str| {
            [
                PathSeg::Key("listeners"),
                PathSeg::Index(i),
                PathSeg::Key("tls"),
                PathSeg::Key(k),
            ]
        };
        let tls_here = [PathSeg::Key("listeners"), PathSeg::Index(i), PathSeg::Key("tls")];
        let cert = p.required(&tls_here, "cert", &t.cert).map(|c| base.join(c));
        let key = p.required(&tls_here, "key", &t.key).map(|k| base.join(k));
        let client_ca = t.client_ca.as_ref().map(|c| base.join(c));
        let client_auth = match (t.client_auth, &client_ca) {
            (Some(_), None) => {
                p.at(&tls_at("client_auth"), "client_auth needs `client_ca`");
                ClientAuth::None
            }
            (None, None) => ClientAuth::None,
            (None | Some(ClientAuthFile::Optional), Some(_)) => ClientAuth::Optional,
            (Some(ClientAuthFile::Required), Some(_)) => ClientAuth::Required,
        };
        Some(ListenerTlsSpec {
            cert: cert?,
            key: key?,
            client_ca,
            client_auth,
        })
    });
    let h2c = l.h2c.unwrap_or(false);
    if h2c && l.tls.is_some() {
        p.at(
            &at("h2c"),
            "h2c is HTTP/2 without TLS; on a TLS listener HTTP/2 is negotiated by ALPN (`http2`)",
        );
    }
    if l.http2.is_some() && l.tls.is_none() {
        p.at(
            &at("http2"),
            "`http2` applies to TLS listeners (ALPN); use `h2c: true` for HTTP/2 without TLS",
        );
    }
    Some(ListenerConfig {
        address: addr?,
        tls: if l.tls.is_some() { Some(tls?) } else { None },
        http2: l.http2.unwrap_or(true),
        h2c,
    })
}

/// `upstream:` (one upstream serving `/`) or `upstreams:`, exactly one.
pub(super) fn upstreams(p: &mut Problems<'_>, file: &GatewayFile, base: &Path) -> Vec<UpstreamConfig> {
    match (&file.upstream, &file.upstreams) {
        (Some(_), Some(list)) => {
            p.at(
                &[PathSeg::Key("upstreams")],
                "`upstream` and `upstreams` exclude each other: `upstream:` is shorthand for one upstream with prefix `/`",
            );
            upstream_list(p, list, base);
            Vec::new()
        }
        (Some(u), None) => upstream(p, &[PathSeg::Key("upstream")], u, base, true)
            .into_iter()
            .collect(),
        (None, Some(list)) => upstream_list(p, list, base),
        (None, None) => {
            p.required(&[], "upstream", &file.upstream);
            Vec::new()
        }
    }
}

fn upstream_list(p: &mut Problems<'_>, list: &[UpstreamFile], base: &Path) -> Vec<UpstreamConfig> {
    if list.is_empty() {
        p.at(&[PathSeg::Key("upstreams")], "at least one upstream is required");
    }
    let mut out: Vec<UpstreamConfig> = Vec::new();
    for (i, u) in list.iter().enumerate() {
        let here = [PathSeg::Key("upstreams"), PathSeg::Index(i)];
        let Some(c) = upstream(p, &here, u, base, false) else {
            continue;
        };
        if out.iter().any(|o| o.spec.name == c.spec.name) {
            p.at(
                &[PathSeg::Key("upstreams"), PathSeg::Index(i), PathSeg::Key("name")],
                format!("duplicate upstream name `{}`", c.spec.name),
            );
        }
        let norm = |s: &str| s.trim_end_matches('/').to_string();
        if out.iter().any(|o| norm(&o.spec.prefix) == norm(&c.spec.prefix)) {
            p.at(
                &[
                    PathSeg::Key("upstreams"),
                    PathSeg::Index(i),
                    PathSeg::Key("prefix"),
                ],
                format!("another upstream already serves prefix `{}`", c.spec.prefix),
            );
        }
        out.push(c);
    }
    out
}

/// A path prefix or rewrite: the upstreams' own check decides.
fn path_problem(v: &str) -> Option<&'static str> {
    crate::upstreams::path_problem(v)
}

/// A `host:port` address as written (hostnames are resolved at run time):
/// the upstreams' own parser decides.
fn host_port_problem(v: &str) -> Option<String> {
    crate::upstreams::check_address(v)
        .err()
        .map(|m| format!("`{v}`: {m}"))
}

fn upstream(
    p: &mut Problems<'_>,
    here: &[PathSeg<'static>],
    u: &UpstreamFile,
    base: &Path,
    shorthand: bool,
) -> Option<UpstreamConfig> {
    let at = |k: &'static str| {
        let mut v = here.to_vec();
        v.push(PathSeg::Key(k));
        v
    };
    let name = if shorthand {
        u.name
            .clone()
            .unwrap_or_else(|| DEFAULT_UPSTREAM_NAME.to_string())
    } else {
        p.required(here, "name", &u.name).cloned().unwrap_or_default()
    };
    if u.name.is_some()
        && (name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        p.at(
            &at("name"),
            "name must be non-empty: letters, digits, `-`, `_`, `.`",
        );
    }
    let prefix = if shorthand && u.prefix.is_none() {
        "/".to_string()
    } else if shorthand {
        u.prefix.clone().unwrap_or_default()
    } else {
        p.required(here, "prefix", &u.prefix).cloned().unwrap_or_default()
    };
    if u.prefix.is_some() {
        if let Some(m) = path_problem(&prefix) {
            p.at(&at("prefix"), format!("prefix {m}"));
        }
    }
    if let Some(r) = &u.rewrite {
        if let Some(m) = path_problem(r) {
            p.at(&at("rewrite"), format!("rewrite {m}"));
        }
    }
    let addresses: Vec<String> = match (&u.address, &u.addresses) {
        (Some(_), Some(_)) => {
            p.at(&at("addresses"), "`address` and `addresses` exclude each other");
            Vec::new()
        }
        (Some(a), None) => {
            if let Some(m) = host_port_problem(a) {
                p.at(&at("address"), m);
            }
            vec![a.clone()]
        }
        (None, Some(list)) => {
            if list.is_empty() {
                p.at(&at("addresses"), "at least one address is required");
            }
            for (i, a) in list.iter().enumerate() {
                if let Some(m) = host_port_problem(a) {
                    let mut loc = at("addresses");
                    loc.push(PathSeg::Index(i));
                    p.at(&loc, m);
                }
            }
            list.clone()
        }
        (None, None) => {
            p.required(here, "address", &u.address);
            Vec::new()
        }
    };
    let mut c = UpstreamConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)));
    c.spec.name = name;
    c.spec.prefix = prefix;
    c.spec.rewrite = u.rewrite.clone();
    c.spec.addresses = addresses;
    for (key, value, slot, min, max) in [
        (
            "connect_timeout",
            u.connect_timeout,
            &mut c.spec.connect_timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        ),
        (
            "read_timeout",
            u.read_timeout,
            &mut c.spec.read_timeout,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
        (
            "resolve_interval",
            u.resolve_interval,
            &mut c.spec.resolve_interval,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
    ] {
        if let Some(v) = value {
            if v < min || v > max {
                p.at(&at(key), format!("{key} must be between {min:?} and {max:?}"));
            }
            *slot = v;
        }
    }
    if let Some(f) = u.forward_authorization {
        c.forward_authorization = f;
    }
    if let Some(h) = u.preserve_host {
        c.preserve_host = h;
    }
    if let Some(r) = u.retries {
        if r > 5 {
            p.at(&at("retries"), "retries must be between 0 and 5");
        }
        c.retries = r;
    }
    if let Some(t) = &u.tls {
        c.spec.tls = Some(upstream_tls(p, &at("tls"), t, base));
    }
    if let Some(h) = &u.health_check {
        c.spec.health_check = health_check(p, &at("health_check"), h);
    }
    Some(c)
}

fn upstream_tls(
    p: &mut Problems<'_>,
    here: &[PathSeg<'static>],
    t: &UpstreamTlsFile,
    base: &Path,
) -> UpstreamTlsSpec {
    let at = |k: &'static str| {
        let mut v = here.to_vec();
        v.push(PathSeg::Key(k));
        v
    };
    if t.cert.is_some() != t.key.is_some() {
        p.at(
            &at(if t.cert.is_some() { "cert" } else { "key" }),
            "a client certificate needs both `cert` and `key`",
        );
    }
    if let Some(sni) = &t.sni {
        if sni.is_empty() || host_port_problem(&format!("{sni}:1")).is_some() {
            p.at(&at("sni"), format!("`{sni}` is not a hostname or IP address"));
        }
    }
    UpstreamTlsSpec {
        ca: t.ca.as_ref().map(|c| base.join(c)),
        sni: t.sni.clone(),
        verify: t.verify.unwrap_or(true),
        cert: t.cert.as_ref().map(|c| base.join(c)),
        key: t.key.as_ref().map(|k| base.join(k)),
    }
}

fn health_check(
    p: &mut Problems<'_>,
    here: &[PathSeg<'static>],
    h: &HealthCheckFile,
) -> Option<HealthCheckSpec> {
    let at = |k: &'static str| {
        let mut v = here.to_vec();
        v.push(PathSeg::Key(k));
        v
    };
    let path = p.required(here, "path", &h.path).cloned();
    if let Some(m) = path.as_deref().and_then(|v| {
        if v.starts_with('/') && !v.contains([' ', '#']) {
            None
        } else {
            Some("path must start with `/`")
        }
    }) {
        p.at(&at("path"), m);
    }
    let interval = h.interval.unwrap_or(Duration::from_secs(5));
    let timeout = h.timeout.unwrap_or(Duration::from_secs(2));
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        p.at(&at("interval"), "interval must be between 100ms and 1h");
    }
    if timeout < Duration::from_millis(10) || timeout > interval.max(Duration::from_millis(10)) {
        p.at(
            &at("timeout"),
            "timeout must be at least 10ms and at most the interval",
        );
    }
    let healthy_threshold = h.healthy_threshold.unwrap_or(2);
    let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(3);
    for (key, v) in [
        ("healthy_threshold", healthy_threshold),
        ("unhealthy_threshold", unhealthy_threshold),
    ] {
        if !(1..=100).contains(&v) {
            p.at(&at(key), format!("{key} must be between 1 and 100"));
        }
    }
    Some(HealthCheckSpec {
        path: path?,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

/// `forwarded_headers`.
pub(super) fn forwarded(f: Option<ForwardedHeaders>) -> ForwardedMode {
    match f {
        None | Some(ForwardedHeaders::XForwarded) => ForwardedMode::default(),
        Some(ForwardedHeaders::Forwarded) => ForwardedMode {
            x_forwarded: false,
            forwarded: true,
        },
        Some(ForwardedHeaders::Both) => ForwardedMode {
            x_forwarded: true,
            forwarded: true,
        },
        Some(ForwardedHeaders::None) => ForwardedMode {
            x_forwarded: false,
            forwarded: false,
        },
    }
}

/// `trusted_proxies` (or the older `rate_limit.trusted_proxies`).
pub(super) fn trusted_proxies(p: &mut Problems<'_>, file: &GatewayFile) -> Vec<crate::limiter::Cidr> {
    let old = file
        .rate_limit
        .as_ref()
        .map(|r| &r.trusted_proxies)
        .filter(|v| !v.is_empty());
    let (list, key): (&[String], &[PathSeg<'static>]) = match (&file.trusted_proxies, old) {
        (Some(_), Some(_)) => {
            p.at(
                &[PathSeg::Key("trusted_proxies")],
                "set `trusted_proxies` or `rate_limit.trusted_proxies`, not both",
            );
            return Vec::new();
        }
        (Some(l), None) => (l, &[PathSeg::Key("trusted_proxies")]),
        (None, Some(l)) => (l, &[PathSeg::Key("rate_limit"), PathSeg::Key("trusted_proxies")]),
        (None, None) => return Vec::new(),
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c.parse::<crate::limiter::Cidr>() {
            Ok(c) => out.push(c),
            Err(m) => {
                let mut at = key.to_vec();
                at.push(PathSeg::Index(i));
                p.at(&at, m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_address_checks() {
        for ok in ["/", "/fhir", "/fhir/R4", "/a-b_c.d"] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for bad in ["fhir", "/fhir?x", "/a//b", "/a/../b", "/a/./b", "/%2e", "/a b"] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
        for ok in [
            "fhir:8080",
            "localhost:1",
            "10.0.0.1:443",
            "[::1]:8443",
            "fhir.ns.svc.cluster.local:80",
        ] {
            assert_eq!(host_port_problem(ok), None, "{ok}");
        }
        for bad in [
            "fhir",
            "fhir:0",
            "fhir:99999",
            ":80",
            "bad host:80",
            "-x:80",
            "a..b:80",
            "[::1:80",
        ] {
            assert!(host_port_problem(bad).is_some(), "{bad}");
        }
    }
}
