use std::path::Path;

use super::*;

const GOOD: &str = r#"
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream:
  address: 127.0.0.1:8081
issuers:
  - issuer: https://idp.example.com
    audiences: [phigate]
    jwks_uri: https://idp.example.com/jwks.json
    leeway: 10s
policies: policies
audit:
  dir: audit
"#;

fn messages(errs: &[Diagnostic]) -> String {
    errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

#[test]
fn loads_a_valid_file_with_defaults() {
    let c = parse("g.yaml", GOOD, Path::new("/etc/phigate")).unwrap();
    assert_eq!(c.listeners[0].address.port(), 8080);
    assert!(c.listeners[0].tls.is_none());
    assert_eq!(c.issuers[0].leeway, Duration::from_secs(10));
    assert_eq!(c.issuers[0].algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(c.policies, Path::new("/etc/phigate/policies"));
    assert_eq!(c.audit.queue, DEFAULT_AUDIT_QUEUE);
    assert_eq!(c.audit.dir, Path::new("/etc/phigate/audit"));
    assert_eq!(
        c.audit.durability,
        phigate_audit::Durability::Interval(Duration::from_millis(10))
    );
    assert!(c.upstreams[0].forward_authorization);
    assert_eq!(c.upstreams[0].spec.prefix, "/");
    assert_eq!(c.upstreams[0].spec.addresses, ["127.0.0.1:8081"]);
    assert_eq!(c.upstreams[0].retries, 1);
    assert_eq!(
        c.policies_origin
            .as_ref()
            .and_then(|o| o.location)
            .map(|l| l.line),
        Some(11)
    );
    // The file loader and dev mode share the defaults of GatewayConfig::new.
    let d = GatewayConfig::new(
        c.listeners[0].address,
        c.admin_listen,
        UpstreamConfig::new("127.0.0.1:8081".parse().unwrap()),
        Vec::new(),
        PathBuf::new(),
        AuditConfig::new(PathBuf::from("/x")),
    );
    assert_eq!(
        (
            d.threads,
            d.shutdown_grace,
            d.token_cache_entries,
            d.limits,
            d.rate_limit
        ),
        (
            c.threads,
            c.shutdown_grace,
            c.token_cache_entries,
            c.limits,
            c.rate_limit
        )
    );
}

#[test]
fn reports_all_errors_with_locations() {
    let bad = r#"
listen: nowhere
admin_listen: 127.0.0.1:9090
upstream:
  address: also-nowhere
issuers:
  - issuer: https://idp.example.com
    audiences: []
    algorithms: [HS256, RS256]
    jwks_uri: ftp://x
policies: policies
audit:
  dir: audit
  queue_size: 0
"#;
    let errs = parse("g.yaml", bad, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:2:",
        "g.yaml:5:",
        "g.yaml:8:",
        "g.yaml:9:",
        "g.yaml:10:",
        "g.yaml:14:",
    ] {
        assert!(joined.contains(want), "missing {want} in\n{joined}");
    }
    assert!(joined.contains("never allowed"), "{joined}");
}

/// Issue 10: an unknown key, a bad duration and a bad address in one file —
/// all three used to stop at the first.
#[test]
fn every_error_kind_is_reported_in_one_run() {
    let text = GOOD
        .replace("policies: policies", "policy: policies\npolicies: policies")
        .replace("    leeway: 10s", "    leeway: ten seconds")
        .replace("  address: 127.0.0.1:8081", "  address: fhir-backend")
        .replace(
            "audit:\n  dir: audit",
            "audit:\n  dir: audit\n  durability: sometimes\n  queue_size: lots",
        )
        + "shutdown_grace: soon\nsinks:\n  - { type: nats, name: fleet, url: \"nats://n:4222\", address: \"x:1\" }\n  - { type: stdout, name: \"bad name\" }\n";
    let errs = parse("g.yaml", &text, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:5:12: `fhir-backend`: not host:port",
        "g.yaml:10:13: invalid value: string \"ten seconds\", expected a duration",
        "g.yaml:11:9: unknown field `policy`",
        "g.yaml:15:15: unknown variant `sometimes`",
        "g.yaml:16:15: invalid type: string \"lots\"",
        "g.yaml:17:17: invalid value: string \"soon\"",
        "g.yaml:19:63: unknown field `address`",
        "g.yaml:20:",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(errs.len(), 8, "{joined}");
}

#[test]
fn required_keys_are_reported_where_they_belong() {
    let text = "listen: 127.0.0.1:1\nupstream: {}\nissuers:\n  - audiences: [a]\n    jwks_uri: https://x/j\naudit: {}\n";
    let errs = parse("g.yaml", text, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "`admin_listen` is required in the configuration",
        "`address` is required in `upstream`",
        "`issuer` is required in `issuers[0]`",
        "`policies` is required in the configuration",
        "`dir` is required in `audit`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let errs = parse(
        "g.yaml",
        &GOOD.replace("policies: policies", "policy: policies"),
        Path::new("."),
    )
    .unwrap_err();
    let joined = messages(&errs);
    assert!(joined.contains("unknown field `policy`"), "{joined}");
    assert!(joined.contains("`policies` is required"), "{joined}");
}

#[test]
fn needs_exactly_one_key_source() {
    let text = GOOD.replace("    jwks_uri: https://idp.example.com/jwks.json\n", "");
    let errs = parse("g.yaml", &text, Path::new(".")).unwrap_err();
    assert!(errs[0]
        .message
        .contains("exactly one of `jwks_uri`, `jwks_file` or `discovery: true`"));
}

/// Issue 10: a missing policy directory named the directory but not the
/// configuration line that points at it.
#[test]
fn a_missing_policy_directory_is_reported_at_its_config_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, GOOD.replace("policies: policies", "policies: no-such-dir")).unwrap();
    let c = load(&path).unwrap();
    let errs = load_policies(&c).unwrap_err();
    let shown = errs[0].to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:11:11: policies: cannot read policy directory",
            path.display()
        )),
        "{shown}"
    );
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::write(&path, GOOD.replace("policies: policies", "policies: empty")).unwrap();
    let errs = load_policies(&load(&path).unwrap()).unwrap_err();
    assert!(
        errs[0].to_string().contains(":11:11: policies: no policy files"),
        "{}",
        errs[0]
    );
}

/// The commented sample in deploy/ must always load.
#[test]
fn deploy_sample_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gateway.yaml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.issuers.len(), 1);
    assert_eq!(c.audit.queue, 10_000);
    assert!(c.policies.ends_with("policies/dev"));
    assert_eq!(c.listeners.len(), 2);
    assert!(c.listeners[0].tls.is_some() && c.listeners[1].h2c);
    assert_eq!(c.upstreams[0].spec.name, "fhir");
    load_policies(&c).unwrap_or_else(|e| panic!("{e:?}"));
}

const NETWORK_TAIL: &str = r#"admin_listen: 127.0.0.1:9090
issuers:
  - issuer: https://idp.example.com
    audiences: [phigate]
    jwks_uri: https://idp.example.com/jwks.json
policies: policies
audit:
  dir: audit
"#;

/// Issue 12: listeners and upstreams, each problem at its line:column.
#[test]
fn listeners_and_upstreams_are_validated_with_locations() {
    let good = r#"listeners:
  - address: 0.0.0.0:8443
    tls: { cert: tls/c.pem, key: tls/k.pem, client_ca: tls/ca.pem, client_auth: required }
  - address: 127.0.0.1:8080
    h2c: true
upstreams:
  - name: fhir
    prefix: /fhir
    rewrite: /fhir/R4
    addresses: [fhir-0.fhir:8080, "10.0.0.7:8080"]
    health_check: { path: /fhir/metadata, interval: 2s }
    tls: { ca: ca.pem, sni: fhir.internal }
    retries: 2
    preserve_host: false
  - name: records
    prefix: /records
    address: records:80
forwarded_headers: both
trusted_proxies: [10.0.0.0/8]
"#
    .to_string()
        + NETWORK_TAIL;
    let c = parse("g.yaml", &good, Path::new("/etc/phigate")).unwrap_or_else(|e| panic!("{}", messages(&e)));
    assert_eq!(c.listeners.len(), 2);
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/phigate/tls/c.pem"));
    assert_eq!(tls.client_auth, crate::tls::ClientAuth::Required);
    assert_eq!(c.listeners[0].scheme(), "https");
    assert!(c.listeners[1].h2c && c.listeners[1].tls.is_none());
    let fhir = &c.upstreams[0];
    assert_eq!(fhir.spec.rewrite.as_deref(), Some("/fhir/R4"));
    assert_eq!(fhir.spec.addresses, ["fhir-0.fhir:8080", "10.0.0.7:8080"]);
    assert_eq!(
        fhir.spec.health_check.as_ref().unwrap().interval,
        Duration::from_secs(2)
    );
    assert_eq!(fhir.spec.health_check.as_ref().unwrap().unhealthy_threshold, 3);
    let t = fhir.spec.tls.as_ref().unwrap();
    assert_eq!(t.ca.as_deref(), Some(Path::new("/etc/phigate/ca.pem")));
    assert!(t.verify);
    assert_eq!((fhir.retries, fhir.preserve_host), (2, false));
    assert_eq!(c.upstreams[1].spec.addresses, ["records:80"]);
    assert!(c.forwarded.x_forwarded && c.forwarded.forwarded);
    assert_eq!(c.trusted_proxies.len(), 1);

    let bad = r#"listen: 127.0.0.1:8080
listeners:
  - address: 0.0.0.0:8443
    tls: { cert: c.pem }
    h2c: true
  - address: 0.0.0.0:8443
    http2: false
upstreams:
  - name: fhir
    prefix: fhir
    addresses: [nope, "fhir:0"]
    health_check: { interval: 1s, timeout: 5s }
    tls: { cert: c.pem, sni: "bad host" }
    retries: 9
  - name: fhir
    prefix: /fhir/
    address: x:1
    rewrite: /a/../b
upstream:
  address: y:1
"#
    .to_string()
        + NETWORK_TAIL;
    let errs = parse("g.yaml", &bad, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:3:3: `listen` and `listeners` exclude each other",
        "`key` is required in `listeners[0].tls`",
        "g.yaml:5:10: h2c is HTTP/2 without TLS",
        "g.yaml:7:12: `http2` applies to TLS listeners",
        "g.yaml:9:3: `upstream` and `upstreams` exclude each other",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    // The list itself is validated too when both forms are given.
    let bad_list = bad.replace("upstream:\n  address: y:1\n", "");
    let errs = parse("g.yaml", &bad_list, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:10:13: prefix must start with `/`",
        "g.yaml:11:17: `nope`: not host:port",
        "g.yaml:11:23: `fhir:0`: port must be 1-65535",
        "`path` is required in `upstreams[0].health_check`",
        "timeout must be at least 10ms and at most the interval",
        "a client certificate needs both `cert` and `key`",
        "`bad host` is not a hostname or IP address",
        "g.yaml:14:14: retries must be between 0 and 5",
        "g.yaml:15:11: duplicate upstream name `fhir`",
        "g.yaml:18:14: rewrite must not contain `.` or `..` segments",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn duplicate_listeners_and_prefixes_are_refused() {
    let text = "listeners:\n  - address: 0.0.0.0:8443\n  - address: 0.0.0.0:8443\nupstreams:\n  - { name: a, prefix: /fhir, address: \"a:1\" }\n  - { name: b, prefix: /fhir/, address: \"b:1\" }\n".to_string()
        + NETWORK_TAIL;
    let joined = messages(&parse("g.yaml", &text, Path::new(".")).unwrap_err());
    assert!(
        joined.contains("g.yaml:3:14: duplicate listener address 0.0.0.0:8443"),
        "{joined}"
    );
    assert!(
        joined.contains("g.yaml:6:24: another upstream already serves prefix `/fhir/`"),
        "{joined}"
    );
}

/// `${VAR}` substitution in the gateway config (issue 12).
#[test]
fn environment_variables_are_substituted() {
    let text = "listen: ${L}\nupstream:\n  address: \"${UP:-127.0.0.1:8081}\"\n  retries: ${R}\n".to_string()
        + NETWORK_TAIL;
    let env = |k: &str| match k {
        "L" => Some("127.0.0.1:8181".to_string()),
        "R" => Some("3".to_string()),
        _ => None,
    };
    let c =
        parse_with_env("g.yaml", &text, Path::new("."), &env).unwrap_or_else(|e| panic!("{}", messages(&e)));
    assert_eq!(c.listeners[0].address.port(), 8181);
    assert_eq!(c.upstreams[0].spec.addresses, ["127.0.0.1:8081"]);
    assert_eq!(c.upstreams[0].retries, 3);
    let errs = parse_with_env("g.yaml", &text, Path::new("."), &|_| None).unwrap_err();
    let joined = messages(&errs);
    assert!(
        joined.contains("g.yaml:1:9: environment variable `L` is not set"),
        "{joined}"
    );
    assert!(
        joined.contains("g.yaml:4:12: environment variable `R` is not set"),
        "{joined}"
    );
}

/// Issue 14: sessions, DPoP, back-channel logout and the issuer's token
/// rules load into their runtime values; relative paths resolve against the
/// config file's directory.
#[test]
fn sessions_dpop_logout_and_issuer_token_rules_load_into_runtime_settings() {
    let text = r#"
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream:
  address: 127.0.0.1:8081
issuers:
  - issuer: https://idp.example.com
    audiences: [phigate]
    jwks_uri: https://idp.example.com/jwks.json
    require_dpop: true
    max_token_lifetime: 1h
    sessions:
      idle_timeout: 5m
    introspection:
      endpoint: https://idp.example.com/introspect
      client_id: phigate
      client_secret: s3cret
      cache_ttl: 30s
      negative_cache_ttl: 5s
      timeout: 1500ms
  - issuer: https://partner.example.com
    audiences: [phigate]
    jwks_uri: https://partner.example.com/jwks.json
policies: policies
audit:
  dir: audit
sessions:
  idle_timeout: 15m
  key: subject
  store: nats
  nats:
    url: "nats://nats-0:4222, tls://nats-1:4222"
    bucket: phigate_sessions-2
    credentials: nats/phigate.creds
    tls: { ca: nats/ca.pem, cert: nats/client.pem, key: nats/client.key }
    replicas: 3
    connect_timeout: 2s
  write_interval: 10s
  stale_grace: 1m
  max_local_entries: 5000
dpop:
  public_base_url: https://fhir.example.org/
  algorithms: [ES256, EdDSA]
  max_age: 2m
  nonce: true
  nonce_lifetime: 10m
backchannel_logout:
  client_ids: [ehr-web, ehr-mobile]
  max_age: 2m
"#;
    let c = parse("g.yaml", text, Path::new("/etc/phigate")).unwrap_or_else(|e| panic!("{}", messages(&e)));
    let etc = |p: &str| Some(Path::new("/etc/phigate").join(p));
    assert_eq!(
        c.sessions,
        Some(SessionSettings {
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            key: SessionKeyMode::Subject,
            store: StoreSettings::Nats {
                url: "nats://nats-0:4222, tls://nats-1:4222".into(),
                bucket: "phigate_sessions-2".into(),
                credentials: etc("nats/phigate.creds"),
                tls_ca: etc("nats/ca.pem"),
                tls_cert: etc("nats/client.pem"),
                tls_key: etc("nats/client.key"),
                replicas: 3,
                connect_timeout: Duration::from_secs(2),
            },
            write_interval: Some(Duration::from_secs(10)),
            stale_grace: Duration::from_secs(60),
            max_local_entries: 5000,
        })
    );
    assert_eq!(
        c.dpop,
        DpopSettings {
            public_base_url: Some("https://fhir.example.org".into()),
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            max_age: Duration::from_secs(120),
            nonce: true,
            nonce_lifetime: Duration::from_secs(600),
        }
    );
    assert_eq!(
        c.backchannel_logout,
        Some(LogoutSettings {
            path: DEFAULT_LOGOUT_PATH.into(),
            client_ids: vec!["ehr-web".into(), "ehr-mobile".into()],
            max_age: Duration::from_secs(120),
        })
    );
    assert_eq!(c.issuer_rules.len(), 2);
    assert_eq!(
        c.issuer_rules["https://idp.example.com"],
        IssuerRules {
            require_dpop: true,
            idle_timeout: Some(Duration::from_secs(300)),
        }
    );
    assert_eq!(
        c.issuer_rules["https://partner.example.com"],
        IssuerRules::default()
    );
    assert_eq!(c.issuers[0].max_token_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(c.issuers[1].max_token_lifetime, None);
    assert!(c.issuers[1].introspection.is_none());
    let intro = c.issuers[0].introspection.as_ref().unwrap();
    assert_eq!(intro.endpoint, "https://idp.example.com/introspect");
    assert_eq!(intro.client_id, "phigate");
    assert!(
        matches!(&intro.auth, phigate_token::ClientAuth::ClientSecretBasic { secret } if secret == "s3cret"),
        "{:?}",
        intro.auth
    );
    assert!(!format!("{intro:?}").contains("s3cret"), "the secret is redacted");
    assert_eq!(
        (intro.cache_ttl, intro.negative_cache_ttl, intro.timeout),
        (
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_millis(1500)
        )
    );

    // Without the blocks: no sessions, no receiver, the documented DPoP defaults.
    let c = parse("g.yaml", GOOD, Path::new(".")).unwrap();
    assert_eq!(c.sessions, None);
    assert_eq!(c.backchannel_logout, None);
    assert_eq!(c.dpop, DpopSettings::default());
    assert_eq!(c.issuers[0].max_token_lifetime, None);
    assert!(c.issuers[0].introspection.is_none());
    assert_eq!(c.issuer_rules["https://idp.example.com"], IssuerRules::default());

    // A memory store needs nothing else; the nats defaults.
    let minimal = GOOD.to_string()
        + "sessions:\n  idle_timeout: 10m\n  store: nats\n  nats: { url: \"nats://n:4222\" }\n";
    let c = parse("g.yaml", &minimal, Path::new(".")).unwrap_or_else(|e| panic!("{}", messages(&e)));
    let s = c.sessions.unwrap();
    assert_eq!(s.key, SessionKeyMode::Sid);
    // Default: a tenth of the shortest idle timeout, at most 30s.
    assert_eq!(s.write_interval, Some(Duration::from_secs(30)));
    assert_eq!(
        s.store,
        StoreSettings::Nats {
            url: "nats://n:4222".into(),
            bucket: "phigate-sessions".into(),
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
        }
    );
}

/// Issue 14: every problem of the `sessions`, `dpop`, `backchannel_logout`
/// and per-issuer blocks in one run, each at its line:column. Three files,
/// since some problems exclude each other (a `sessions` block is needed for
/// some, its absence for others).
#[test]
fn session_dpop_logout_and_introspection_errors_are_all_reported_at_their_place() {
    // Without a global `sessions` block.
    let no_sessions = r#"listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream:
  address: 127.0.0.1:8081
issuers:
  - issuer: https://idp.example.com
    audiences: [phigate]
    jwks_uri: https://idp.example.com/jwks.json
    sessions:
      idle_timeout: 5m
    introspection:
      endpoint: https://idp.example.com/introspect
      client_id: phigate
      client_secret: s3cret
      private_key_jwt: { key_file: phigate.key }
policies: policies
audit:
  dir: audit
dpop:
  public_base_url: not a url
  algorithms: [HS256]
backchannel_logout:
  max_age: 2m
"#;
    let errs = parse("g.yaml", no_sessions, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:10:21: a per-issuer idle_timeout needs the global `sessions` block",
        "g.yaml:12:7: exactly one of `client_secret` or `private_key_jwt` is required",
        "g.yaml:20:20: `not a url` must be an http(s) URL like https://fhir.example.org (no query)",
        "g.yaml:21:15: algorithm `HS256` is never allowed (symmetric or unsigned)",
        "g.yaml:23:3: `client_ids` is required in `backchannel_logout`",
        "g.yaml:23:3: back-channel logout ends sessions: configure `sessions` too",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(errs.len(), 6, "{joined}");

    // A `sessions` block with `store: nats` but no `nats`.
    let no_nats = GOOD.to_string()
        + r#"sessions:
  idle_timeout: 0s
  store: nats
  cache_size: 10
"#;
    let errs = parse("g.yaml", &no_nats, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:17:15: unknown field `cache_size`",
        "g.yaml:15:17: idle_timeout must be between 1s and 24h",
        "g.yaml:16:10: `store: nats` needs a `sessions.nats` block with `url`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(errs.len(), 3, "{joined}");

    // A `nats` block with a bad URL and bucket; activity written too rarely.
    let bad_nats = GOOD.to_string()
        + r#"sessions:
  idle_timeout: 10s
  write_interval: 10s
  store: nats
  nats:
    url: "nats://ok:4222,http://nats:4222"
    bucket: sessions.v1
"#;
    let errs = parse("g.yaml", &bad_nats, Path::new(".")).unwrap_err();
    let joined = messages(&errs);
    for want in [
        "g.yaml:16:19: write_interval must be shorter than idle_timeout",
        "g.yaml:19:10: `http://nats:4222` must be a nats:// or tls:// URL",
        "g.yaml:20:13: bucket `sessions.v1` may only hold letters, digits, `-` and `_`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(errs.len(), 3, "{joined}");
}

/// DPoP proofs are signed with the client's private key: symmetric
/// algorithms (and `none`) are refused like for access tokens, and an empty
/// list is an error.
#[test]
fn dpop_algorithms_refuse_symmetric_unknown_and_empty_lists() {
    for (list, want) in [
        ("[HS256]", "algorithm `HS256` is never allowed"),
        ("[hs512]", "algorithm `hs512` is never allowed"),
        ("[none]", "algorithm `none` is never allowed"),
        ("[ES257]", "unknown algorithm `ES257`"),
        ("[]", "at least one algorithm is required"),
    ] {
        let text = GOOD.to_string() + &format!("dpop:\n  algorithms: {list}\n");
        let errs = parse("g.yaml", &text, Path::new(".")).unwrap_err();
        let joined = messages(&errs);
        assert!(joined.contains("g.yaml:15:15: "), "{list}: {joined}");
        assert_eq!(errs.len(), 1, "{list}: {joined}");
        assert!(joined.contains(want), "{list}: missing {want:?} in\n{joined}");
    }
}

#[test]
fn write_interval_follows_the_shortest_issuer_idle_timeout() {
    let text = GOOD.replace(
        "    audiences: [phigate]\n",
        "    audiences: [phigate]\n    sessions: { idle_timeout: 20s }\n",
    ) + "sessions:\n  idle_timeout: 15m\n";
    assert!(text.contains("idle_timeout: 20s"), "fixture changed: {text}");
    let c = parse("g.yaml", &text, Path::new(".")).unwrap_or_else(|e| panic!("{}", messages(&e)));
    assert_eq!(c.sessions.unwrap().write_interval, Some(Duration::from_secs(2)));

    let bad = text.replace(
        "sessions:\n  idle_timeout: 15m\n",
        "sessions:\n  idle_timeout: 15m\n  write_interval: 30s\n",
    );
    let e = parse("g.yaml", &bad, Path::new(".")).unwrap_err();
    assert!(
        messages(&e).contains("idle_timeout must be longer than sessions.write_interval"),
        "{}",
        messages(&e)
    );
}
