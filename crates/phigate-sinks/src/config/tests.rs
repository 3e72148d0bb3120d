use super::*;

fn nats(name: &str) -> NatsSinkFile {
    NatsSinkFile {
        name: name.into(),
        ..Default::default()
    }
}

fn syslog(name: &str) -> SyslogSinkFile {
    SyslogSinkFile {
        name: name.into(),
        ..Default::default()
    }
}

fn fhir(name: &str) -> FhirSinkFile {
    FhirSinkFile {
        name: name.into(),
        ..Default::default()
    }
}

fn stdout(name: &str) -> SinkConfig {
    SinkConfig::Stdout(StdoutSinkFile {
        name: name.into(),
        ..Default::default()
    })
}

fn problems(configs: &[SinkConfig]) -> Vec<SinkProblem> {
    match validate(configs) {
        Err(p) => p,
        Ok(v) => panic!("expected problems, got {v:?}"),
    }
}

fn located(problems: &[SinkProblem]) -> Vec<(usize, Option<&'static str>)> {
    problems.iter().map(|p| (p.index, p.key)).collect()
}

#[test]
fn defaults_are_applied() {
    let n = NatsSinkFile {
        url: Some("nats://127.0.0.1:4222".into()),
        ..nats("fleet")
    };
    let s = SyslogSinkFile {
        address: Some("127.0.0.1:514".into()),
        transport: Some("tcp".into()),
        ..syslog("atna")
    };
    let f = FhirSinkFile {
        base_url: Some("https://arr.example/fhir".into()),
        ..fhir("arr")
    };
    let v = validate(&[
        SinkConfig::Nats(n),
        stdout("out"),
        SinkConfig::Syslog(s),
        SinkConfig::Fhir(f),
    ])
    .unwrap();
    let SinkSpec::Nats(c) = &v[0].spec else { panic!() };
    assert_eq!(
        (c.subject.as_str(), c.stream.as_str()),
        ("phigate.audit", "PHIGATE_AUDIT")
    );
    assert!(!c.create_stream);
    assert_eq!(c.duplicate_window, Duration::from_secs(120));
    assert_eq!(c.timeout, Duration::from_secs(5));
    assert_eq!(v[0].settings, ForwarderSettings::default());
    assert!(matches!(v[1].spec, SinkSpec::Stdout));
    let SinkSpec::Syslog(s) = &v[2].spec else { panic!() };
    assert!(s.tls.is_none());
    assert_eq!(s.enterprise_id, DEFAULT_ENTERPRISE_ID);
    assert_eq!(s.confirm_delay, Duration::from_millis(50));
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.hostname, syslog::local_hostname());
    let SinkSpec::Fhir(f) = &v[3].spec else { panic!() };
    assert_eq!(f.timeout, Duration::from_secs(10));
    let names: Vec<_> = v.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["fleet", "out", "atna", "arr"]);
}

#[test]
fn every_problem_is_reported() {
    let bad_nats = NatsSinkFile {
        subject: Some("x.*".into()),
        duplicate_window: Some(Duration::from_secs(60)),
        ..nats("a b")
    };
    let bad_syslog = SyslogSinkFile {
        transport: Some("udp".into()),
        ..syslog("s")
    };
    let tls_missing_ca = SyslogSinkFile {
        transport: Some("tls".into()),
        address: Some("arr:6514".into()),
        client_cert_file: Some("c.pem".into()),
        ..syslog("t")
    };
    let bad_fhir = FhirSinkFile {
        base_url: Some("ftp://x".into()),
        batch_size: Some(0),
        max_backoff: Some(Duration::from_millis(10)),
        ..fhir("f")
    };
    let p = problems(&[
        SinkConfig::Nats(bad_nats),
        SinkConfig::Syslog(bad_syslog),
        SinkConfig::Syslog(tls_missing_ca),
        SinkConfig::Fhir(bad_fhir),
        stdout("f"),
    ]);
    let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
    let want = [
        "sinks[0].name: `name` must be 1-64 characters",
        "sinks[0]: `url` is required for a `nats` sink",
        "sinks[0].subject: `subject` must be a literal subject",
        "sinks[0].duplicate_window: `duplicate_window` only applies with `create_stream: true`",
        "sinks[1]: `address` is required for a `syslog` sink",
        "sinks[1].transport: `transport` must be `tcp` or `tls`, not `udp`",
        "sinks[2]: `ca_file` is required for a `syslog` sink",
        "sinks[2].client_cert_file: `client_cert_file` and `client_key_file` go together",
        "sinks[3].batch_size: `batch_size` must be at least 1",
        "sinks[3].max_backoff: `max_backoff` must be at least 100ms",
        "sinks[3].base_url: `base_url` must be an http(s) URL",
        "sinks[4].name: duplicate sink name `f`",
    ];
    assert_eq!(shown.len(), want.len(), "{shown:#?}");
    for (got, want) in shown.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} does not start with {want:?}");
    }
}

#[test]
fn sink_problems_are_located_by_index_and_key() {
    let s = SyslogSinkFile {
        address: Some("no-port".into()),
        transport: Some("tls".into()),
        ca_file: Some("ca.pem".into()),
        server_name: Some("bad name".into()),
        hostname: Some("has space".into()),
        timeout: Some(Duration::ZERO),
        ..syslog("s")
    };
    let n = NatsSinkFile {
        url: Some("nats://h".into()),
        stream: Some("a.b".into()),
        batch_size: Some(10_001),
        ..nats("n")
    };
    let p = problems(&[stdout("ok"), SinkConfig::Syslog(s), SinkConfig::Nats(n)]);
    assert_eq!(
        located(&p),
        [
            (1, Some("timeout")),
            (1, Some("address")),
            (1, Some("server_name")),
            (1, Some("hostname")),
            (2, Some("batch_size")),
            (2, Some("stream")),
        ]
    );
    assert_eq!(
        p[1],
        SinkProblem {
            index: 1,
            key: Some("address"),
            message: "`address` must be host:port".into()
        }
    );
    assert_eq!(p[1].to_string(), "sinks[1].address: `address` must be host:port");
    let missing = problems(&[SinkConfig::Fhir(fhir("f"))]);
    assert_eq!(
        missing,
        [SinkProblem {
            index: 0,
            key: None,
            message: "`base_url` is required for a `fhir` sink".into()
        }]
    );
    assert_eq!(
        missing[0].to_string(),
        "sinks[0]: `base_url` is required for a `fhir` sink"
    );
}

#[test]
fn tls_options_need_tls_transport() {
    let s = SyslogSinkFile {
        transport: Some("tcp".into()),
        address: Some("127.0.0.1:514".into()),
        ca_file: Some("ca.pem".into()),
        client_key_file: Some("c.key".into()),
        ..syslog("s")
    };
    let p = problems(&[SinkConfig::Syslog(s)]);
    let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "sinks[0].ca_file: `ca_file` needs `transport: tls`",
            "sinks[0].client_key_file: `client_key_file` needs `transport: tls`",
        ]
    );
}

#[test]
fn build_reports_unreadable_files() {
    let s = SyslogSinkFile {
        transport: Some("tls".into()),
        address: Some("localhost:6514".into()),
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..syslog("s")
    };
    let n = NatsSinkFile {
        url: Some("nats://127.0.0.1:4222".into()),
        credentials_file: Some("/nonexistent/n.creds".into()),
        ..nats("n")
    };
    let validated = validate(&[SinkConfig::Syslog(s), stdout("out"), SinkConfig::Nats(n)]).unwrap();
    let Err(Error::Config(e)) = build_forwarders(&validated) else {
        panic!()
    };
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("sink s: /nonexistent/ca.pem:"), "{e:?}");
    assert!(e[1].starts_with("sink n: /nonexistent/n.creds:"), "{e:?}");
}

#[test]
fn build_sinks_reports_problems_as_strings() {
    let Err(Error::Config(e)) = build_sinks(&[stdout("x"), stdout("x")]) else {
        panic!()
    };
    assert_eq!(e, ["sinks[1].name: duplicate sink name `x`"]);
    assert_eq!(build_sinks(&[stdout("x")]).unwrap().len(), 1);
}

fn parse(v: serde_json::Value) -> Result<Vec<SinkConfig>, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn yaml_shape_parses_with_unknown_keys_rejected() {
    let ok = parse(serde_json::json!([
        {"type": "syslog", "name": "atna", "address": "127.0.0.1:514", "transport": "tcp", "confirm_delay": "20ms"},
        {"type": "nats", "name": "js", "url": "nats://h", "duplicate_window": "5m", "create_stream": true},
        {"type": "fhir", "name": "arr", "base_url": "https://x/fhir", "timeout": "3s"},
        {"type": "stdout", "name": "out", "batch_size": 8, "max_backoff": "1s"},
    ]))
    .unwrap();
    let SinkConfig::Syslog(s) = &ok[0] else {
        panic!("{ok:?}")
    };
    assert_eq!(s.confirm_delay, Some(Duration::from_millis(20)));
    let kinds: Vec<_> = ok.iter().map(|c| (c.kind(), c.name())).collect();
    assert_eq!(
        kinds,
        [
            ("syslog", "atna"),
            ("nats", "js"),
            ("fhir", "arr"),
            ("stdout", "out")
        ]
    );
    assert_eq!(
        ok[3],
        SinkConfig::Stdout(StdoutSinkFile {
            name: "out".into(),
            batch_size: Some(8),
            max_backoff: Some(Duration::from_secs(1)),
            timeout: None,
        })
    );

    let bad = parse(serde_json::json!([{"type": "stdout", "name": "x", "colour": 1}]));
    assert!(bad.unwrap_err().contains("unknown field `colour`"));
}

#[test]
fn a_key_of_another_kind_is_an_unknown_field() {
    for (entry, field) in [
        (
            serde_json::json!({"type": "nats", "name": "n", "url": "nats://h", "address": "h:1"}),
            "address",
        ),
        (
            serde_json::json!({"type": "fhir", "name": "f", "base_url": "https://x", "url": "nats://h"}),
            "url",
        ),
        (
            serde_json::json!({"type": "stdout", "name": "o", "ca_file": "ca.pem"}),
            "ca_file",
        ),
        (
            serde_json::json!({"type": "syslog", "name": "s", "credentials_file": "x.creds"}),
            "credentials_file",
        ),
    ] {
        let e = parse(serde_json::json!([entry])).unwrap_err();
        assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
    }
    let e = parse(serde_json::json!([{"type": "kafka", "name": "k"}])).unwrap_err();
    assert!(e.contains("unknown variant `kafka`"), "{e}");
    // A missing required key is not a serde error: `validate` locates it.
    let missing = parse(serde_json::json!([{"type": "nats", "name": "n"}])).unwrap();
    assert_eq!(
        problems(&missing)[0].to_string(),
        "sinks[0]: `url` is required for a `nats` sink"
    );
}
