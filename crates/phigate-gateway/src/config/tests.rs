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
    assert_eq!(c.listen.port(), 8080);
    assert_eq!(c.issuers[0].leeway, Duration::from_secs(10));
    assert_eq!(c.issuers[0].algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(c.policies, Path::new("/etc/phigate/policies"));
    assert_eq!(c.audit.queue, DEFAULT_AUDIT_QUEUE);
    assert_eq!(c.audit.dir, Path::new("/etc/phigate/audit"));
    assert_eq!(
        c.audit.durability,
        phigate_audit::Durability::Interval(Duration::from_millis(10))
    );
    assert!(c.upstream.forward_authorization);
    assert_eq!(
        c.policies_origin
            .as_ref()
            .and_then(|o| o.location)
            .map(|l| l.line),
        Some(11)
    );
    // The file loader and dev mode share the defaults of GatewayConfig::new.
    let d = GatewayConfig::new(
        c.listen,
        c.admin_listen,
        UpstreamConfig::new(c.upstream.address),
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
        "g.yaml:5:12: `fhir-backend` is not an address",
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
    load_policies(&c).unwrap_or_else(|e| panic!("{e:?}"));
}
