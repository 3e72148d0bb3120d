//! The `sinks:` section of the gateway configuration: file types (serde,
//! unknown keys rejected) validated into runtime sinks, every problem
//! reported at once.
//!
//! ```yaml
//! sinks:
//!   - type: nats
//!     name: fleet
//!     url: nats://nats.internal:4222
//!     subject: phigate.audit          # default
//!     stream: PHIGATE_AUDIT           # default
//!     create_stream: true             # default false
//!     duplicate_window: 2m            # default 2m (only used when creating)
//!   - type: syslog
//!     name: atna
//!     address: arr.example.org:6514
//!     transport: tls                  # tcp | tls (required)
//!     ca_file: /etc/phigate/arr-ca.pem
//!     client_cert_file: /etc/phigate/client.pem   # optional, with client_key_file
//!     client_key_file: /etc/phigate/client.key
//!     enterprise_id: 32473            # SD-ID phigate@<n>; set your PEN
//!   - type: fhir
//!     name: arr-fhir
//!     base_url: https://arr.example.org/fhir
//!     bearer_token_file: /run/secrets/arr-token
//!   - type: stdout
//!     name: stdout
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::fhir::{FhirConfig, FhirSink};
use crate::forwarder::{Forwarder, ForwarderSettings, Sink};
use crate::nats::{NatsConfig, NatsSink, DEFAULT_DUPLICATE_WINDOW, DEFAULT_STREAM, DEFAULT_SUBJECT};
use crate::stdout::StdoutSink;
use crate::syslog::{self, SyslogConfig, SyslogSink, SyslogTransport, DEFAULT_ENTERPRISE_ID};
use crate::Error;

/// One entry of `sinks:` as written in the file. Which keys apply depends on
/// `type`; a key that does not apply to the type is an error.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `nats`, `syslog`, `fhir` or `stdout`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unique name: the cursor file `<spool>/cursors/<name>.json` and the
    /// `sink` metric label. `[A-Za-z0-9_-]`, at most 64 characters.
    pub name: String,

    // Every type.
    /// Most records per send (default 256).
    pub batch_size: Option<usize>,
    /// Cap of the retry back-off (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// nats: connect + PubAck timeout (default 5s); syslog: connect and
    /// write timeout (default 10s); fhir: request timeout (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// nats, syslog (tls), fhir: CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,

    // nats
    pub url: Option<String>,
    pub subject: Option<String>,
    pub stream: Option<String>,
    pub create_stream: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub duplicate_window: Option<Duration>,
    pub credentials_file: Option<PathBuf>,

    // syslog
    /// `host:port`.
    pub address: Option<String>,
    /// `tcp` or `tls`.
    pub transport: Option<String>,
    /// TLS server name to verify (default: the host of `address`).
    pub server_name: Option<String>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// HOSTNAME field (default: this host's name).
    pub hostname: Option<String>,
    pub enterprise_id: Option<u32>,
    /// How long a written batch must survive on an open connection to count
    /// as acknowledged (default 50ms).
    #[serde(default, with = "humantime_serde")]
    pub confirm_delay: Option<Duration>,

    // fhir
    pub base_url: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
}

/// A validated sink, before any file is read or connection made.
#[derive(Debug, Clone)]
pub struct ValidatedSink {
    pub name: String,
    pub settings: ForwarderSettings,
    pub spec: SinkSpec,
}

/// The type-specific part of a [`ValidatedSink`].
#[derive(Debug, Clone)]
pub enum SinkSpec {
    Nats(NatsConfig),
    Syslog(SyslogSpec),
    Fhir(FhirConfig),
    Stdout,
}

/// Syslog settings before the TLS files are loaded.
#[derive(Debug, Clone)]
pub struct SyslogSpec {
    pub address: String,
    /// `None` = plain TCP.
    pub tls: Option<SyslogTlsSpec>,
    pub hostname: String,
    pub enterprise_id: u32,
    pub confirm_delay: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SyslogTlsSpec {
    pub ca_file: PathBuf,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub server_name: String,
}

/// Sink names become file names and metric labels.
pub fn valid_sink_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The host part of `host:port` / `[v6]:port`.
fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !address.starts_with('[') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

struct Check<'a> {
    errors: &'a mut Vec<String>,
    at: String,
    cfg: &'a SinkConfig,
}

impl Check<'_> {
    fn err(&mut self, msg: impl std::fmt::Display) {
        self.errors.push(format!("{}: {msg}", self.at));
    }

    /// Keys set in the file that `kind` does not use.
    fn only(&mut self, allowed: &[&str]) {
        let c = self.cfg;
        let set: [(&str, bool); 20] = [
            ("batch_size", c.batch_size.is_some()),
            ("max_backoff", c.max_backoff.is_some()),
            ("timeout", c.timeout.is_some()),
            ("ca_file", c.ca_file.is_some()),
            ("url", c.url.is_some()),
            ("subject", c.subject.is_some()),
            ("stream", c.stream.is_some()),
            ("create_stream", c.create_stream.is_some()),
            ("duplicate_window", c.duplicate_window.is_some()),
            ("credentials_file", c.credentials_file.is_some()),
            ("address", c.address.is_some()),
            ("transport", c.transport.is_some()),
            ("server_name", c.server_name.is_some()),
            ("client_cert_file", c.client_cert_file.is_some()),
            ("client_key_file", c.client_key_file.is_some()),
            ("hostname", c.hostname.is_some()),
            ("enterprise_id", c.enterprise_id.is_some()),
            ("confirm_delay", c.confirm_delay.is_some()),
            ("base_url", c.base_url.is_some()),
            ("bearer_token_file", c.bearer_token_file.is_some()),
        ];
        const COMMON: [&str; 3] = ["batch_size", "max_backoff", "timeout"];
        for (key, present) in set {
            if present && !COMMON.contains(&key) && !allowed.contains(&key) {
                let kind = self.cfg.kind.clone();
                self.err(format!("`{key}` does not apply to a `{kind}` sink"));
            }
        }
    }

    fn required<T: Clone>(&mut self, key: &str, v: &Option<T>) -> Option<T> {
        if v.is_none() {
            let kind = self.cfg.kind.clone();
            self.err(format!("`{key}` is required for a `{kind}` sink"));
        }
        v.clone()
    }
}

/// Check every entry; all problems are reported together.
pub fn validate(configs: &[SinkConfig]) -> Result<Vec<ValidatedSink>, Error> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, cfg) in configs.iter().enumerate() {
        let mut ck = Check {
            errors: &mut errors,
            at: format!("sinks[{i}] ({})", cfg.name),
            cfg,
        };
        if !valid_sink_name(&cfg.name) {
            ck.err("`name` must be 1-64 characters of A-Z a-z 0-9 _ -");
        } else if !names.insert(cfg.name.clone()) {
            ck.err("duplicate sink name");
        }
        let mut settings = ForwarderSettings::default();
        match cfg.batch_size {
            Some(0) => ck.err("`batch_size` must be at least 1"),
            Some(n) if n > 10_000 => ck.err("`batch_size` must be at most 10000"),
            Some(n) => settings.batch_size = n,
            None => {}
        }
        if let Some(b) = cfg.max_backoff {
            if b < settings.initial_backoff {
                ck.err("`max_backoff` must be at least 100ms");
            } else {
                settings.max_backoff = b;
            }
        }
        if cfg.timeout == Some(Duration::ZERO) {
            ck.err("`timeout` must be positive");
        }
        let spec = match cfg.kind.as_str() {
            "nats" => {
                ck.only(&[
                    "url",
                    "subject",
                    "stream",
                    "create_stream",
                    "duplicate_window",
                    "credentials_file",
                    "ca_file",
                ]);
                let url = ck.required("url", &cfg.url);
                let subject = cfg.subject.clone().unwrap_or_else(|| DEFAULT_SUBJECT.into());
                if subject.is_empty() || subject.contains([' ', '*', '>']) {
                    ck.err("`subject` must be a literal subject (no spaces or wildcards)");
                }
                let stream = cfg.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
                if stream.is_empty() || stream.contains([' ', '.', '*', '>', '/', '\\']) {
                    ck.err("`stream` must not be empty or contain spaces, `.`, `*`, `>`, `/`, `\\`");
                }
                let duplicate_window = cfg.duplicate_window.unwrap_or(DEFAULT_DUPLICATE_WINDOW);
                if duplicate_window.is_zero() {
                    ck.err("`duplicate_window` must be positive");
                }
                if cfg.duplicate_window.is_some() && cfg.create_stream != Some(true) {
                    ck.err("`duplicate_window` only applies with `create_stream: true` (set it on the existing stream)");
                }
                url.map(|url| {
                    SinkSpec::Nats(NatsConfig {
                        url,
                        subject,
                        stream,
                        create_stream: cfg.create_stream.unwrap_or(false),
                        duplicate_window,
                        timeout: cfg.timeout.unwrap_or(Duration::from_secs(5)),
                        credentials_file: cfg.credentials_file.clone(),
                        ca_file: cfg.ca_file.clone(),
                    })
                })
            }
            "syslog" => {
                ck.only(&[
                    "address",
                    "transport",
                    "ca_file",
                    "server_name",
                    "client_cert_file",
                    "client_key_file",
                    "hostname",
                    "enterprise_id",
                    "confirm_delay",
                ]);
                let address = ck.required("address", &cfg.address);
                let host = address
                    .as_deref()
                    .and_then(split_host_port)
                    .map(|(h, _)| h.to_owned());
                if address.is_some() && host.is_none() {
                    ck.err("`address` must be host:port");
                }
                let transport = ck.required("transport", &cfg.transport);
                let tls = match transport.as_deref() {
                    Some("tcp") => {
                        for (key, set) in [
                            ("ca_file", cfg.ca_file.is_some()),
                            ("server_name", cfg.server_name.is_some()),
                            ("client_cert_file", cfg.client_cert_file.is_some()),
                            ("client_key_file", cfg.client_key_file.is_some()),
                        ] {
                            if set {
                                ck.err(format!("`{key}` needs `transport: tls`"));
                            }
                        }
                        None
                    }
                    Some("tls") => {
                        let ca = ck.required("ca_file", &cfg.ca_file);
                        let client_cert = match (&cfg.client_cert_file, &cfg.client_key_file) {
                            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                            (None, None) => None,
                            _ => {
                                ck.err("`client_cert_file` and `client_key_file` go together");
                                None
                            }
                        };
                        let server_name = cfg.server_name.clone().or(host.clone()).unwrap_or_default();
                        if cfg.server_name.is_some() && invalid_server_name(&server_name) {
                            ck.err("`server_name` is not a valid DNS name or IP address");
                        }
                        ca.map(|ca_file| SyslogTlsSpec {
                            ca_file,
                            client_cert,
                            server_name,
                        })
                    }
                    Some(other) => {
                        ck.err(format!("`transport` must be `tcp` or `tls`, not `{other}`"));
                        None
                    }
                    None => None,
                };
                let hostname = match &cfg.hostname {
                    Some(h) if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) => {
                        ck.err("`hostname` must be 1-255 printable ASCII characters without spaces");
                        String::new()
                    }
                    Some(h) => h.clone(),
                    None => syslog::local_hostname(),
                };
                let ok = address.is_some()
                    && host.is_some()
                    && (transport.as_deref() == Some("tcp") || tls.is_some());
                ok.then(|| {
                    SinkSpec::Syslog(SyslogSpec {
                        address: address.unwrap_or_default(),
                        tls,
                        hostname,
                        enterprise_id: cfg.enterprise_id.unwrap_or(DEFAULT_ENTERPRISE_ID),
                        confirm_delay: cfg.confirm_delay.unwrap_or(Duration::from_millis(50)),
                        timeout: cfg.timeout.unwrap_or(Duration::from_secs(10)),
                    })
                })
            }
            "fhir" => {
                ck.only(&["base_url", "bearer_token_file", "ca_file"]);
                let base = ck.required("base_url", &cfg.base_url);
                if let Some(b) = &base {
                    match reqwest::Url::parse(b) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
                        _ => ck.err("`base_url` must be an http(s) URL without a query"),
                    }
                }
                base.map(|base_url| {
                    SinkSpec::Fhir(FhirConfig {
                        base_url,
                        timeout: cfg.timeout.unwrap_or(Duration::from_secs(10)),
                        ca_file: cfg.ca_file.clone(),
                        bearer_token_file: cfg.bearer_token_file.clone(),
                    })
                })
            }
            "stdout" => {
                ck.only(&[]);
                Some(SinkSpec::Stdout)
            }
            other => {
                ck.err(format!(
                    "unknown sink `type: {other}` (expected nats, syslog, fhir or stdout)"
                ));
                None
            }
        };
        if let Some(spec) = spec {
            out.push(ValidatedSink {
                name: cfg.name.clone(),
                settings,
                spec,
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::Config(errors))
    }
}

fn invalid_server_name(name: &str) -> bool {
    rustls_pki_types::ServerName::try_from(name.to_owned()).is_err()
}

/// Build the sink of one validated entry: reads TLS/CA files, builds clients.
/// Connections are made later, by [`Forwarder::run`].
pub fn build_sink(v: &ValidatedSink) -> Result<Box<dyn Sink>, String> {
    Ok(match &v.spec {
        SinkSpec::Nats(c) => {
            for f in [&c.ca_file, &c.credentials_file].into_iter().flatten() {
                std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
            }
            Box::new(NatsSink::new(c.clone()))
        }
        SinkSpec::Syslog(s) => {
            let transport = match &s.tls {
                None => SyslogTransport::Tcp,
                Some(t) => {
                    let client = t.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                    let config = syslog::tls_client_config(&t.ca_file, client)?;
                    let server_name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
                        .map_err(|e| format!("server name {:?}: {e}", t.server_name))?;
                    SyslogTransport::Tls { config, server_name }
                }
            };
            Box::new(SyslogSink::new(SyslogConfig {
                address: s.address.clone(),
                transport,
                hostname: s.hostname.clone(),
                enterprise_id: s.enterprise_id,
                confirm_delay: s.confirm_delay,
                timeout: s.timeout,
            }))
        }
        SinkSpec::Fhir(c) => Box::new(FhirSink::new(c.clone())?),
        SinkSpec::Stdout => Box::new(StdoutSink::stdout()),
    })
}

/// Validate `configs` and build one [`Forwarder`] per sink. Every problem
/// (bad setting, unreadable CA/key file) is reported in one
/// [`Error::Config`].
pub fn build_sinks(configs: &[SinkConfig]) -> Result<Vec<Forwarder>, Error> {
    let validated = validate(configs)?;
    let mut errors = Vec::new();
    let mut forwarders = Vec::new();
    for v in validated {
        match build_sink(&v) {
            Ok(sink) => forwarders.push(Forwarder::new(v.name.clone(), sink, v.settings.clone())),
            Err(e) => errors.push(format!("sink {}: {e}", v.name)),
        }
    }
    if errors.is_empty() {
        Ok(forwarders)
    } else {
        Err(Error::Config(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: &str, name: &str) -> SinkConfig {
        SinkConfig {
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn errors(configs: &[SinkConfig]) -> Vec<String> {
        match validate(configs) {
            Err(Error::Config(e)) => e,
            other => panic!("expected config errors, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_applied() {
        let mut n = cfg("nats", "fleet");
        n.url = Some("nats://127.0.0.1:4222".into());
        let v = validate(&[n, cfg("stdout", "out")]).unwrap();
        let SinkSpec::Nats(c) = &v[0].spec else { panic!() };
        assert_eq!(
            (c.subject.as_str(), c.stream.as_str()),
            ("phigate.audit", "PHIGATE_AUDIT")
        );
        assert!(!c.create_stream);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(v[0].settings, ForwarderSettings::default());
        assert!(matches!(v[1].spec, SinkSpec::Stdout));
    }

    #[test]
    fn every_problem_is_reported() {
        let mut bad_nats = cfg("nats", "a b");
        bad_nats.subject = Some("x.*".into());
        bad_nats.address = Some("h:1".into());
        let mut bad_syslog = cfg("syslog", "s");
        bad_syslog.transport = Some("udp".into());
        let mut tls_missing_ca = cfg("syslog", "t");
        tls_missing_ca.transport = Some("tls".into());
        tls_missing_ca.address = Some("arr:6514".into());
        tls_missing_ca.client_cert_file = Some("c.pem".into());
        let mut bad_fhir = cfg("fhir", "f");
        bad_fhir.base_url = Some("ftp://x".into());
        bad_fhir.batch_size = Some(0);
        let e = errors(&[
            bad_nats,
            bad_syslog,
            tls_missing_ca,
            bad_fhir,
            cfg("kafka", "k"),
            cfg("stdout", "f"),
        ]);
        let joined = e.join("\n");
        for needle in [
            "sinks[0] (a b): `name` must be",
            "sinks[0] (a b): `address` does not apply to a `nats` sink",
            "sinks[0] (a b): `url` is required",
            "sinks[0] (a b): `subject` must be a literal subject",
            "sinks[1] (s): `address` is required",
            "sinks[1] (s): `transport` must be `tcp` or `tls`, not `udp`",
            "sinks[2] (t): `ca_file` is required",
            "sinks[2] (t): `client_cert_file` and `client_key_file` go together",
            "sinks[3] (f): `base_url` must be an http(s) URL",
            "sinks[3] (f): `batch_size` must be at least 1",
            "sinks[4] (k): unknown sink `type: kafka`",
            "sinks[5] (f): duplicate sink name",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn tls_options_need_tls_transport() {
        let mut s = cfg("syslog", "s");
        s.transport = Some("tcp".into());
        s.address = Some("127.0.0.1:514".into());
        s.ca_file = Some("ca.pem".into());
        assert_eq!(errors(&[s]), ["sinks[0] (s): `ca_file` needs `transport: tls`"]);
    }

    #[test]
    fn build_reports_unreadable_files() {
        let mut s = cfg("syslog", "s");
        s.transport = Some("tls".into());
        s.address = Some("localhost:6514".into());
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let Err(Error::Config(e)) = build_sinks(&[s]) else {
            panic!()
        };
        assert!(e[0].starts_with("sink s: /nonexistent/ca.pem:"), "{e:?}");
    }

    #[test]
    fn yaml_shape_parses_with_unknown_keys_rejected() {
        let ok: Vec<SinkConfig> = serde_json::from_value(serde_json::json!([
            {"type": "syslog", "name": "atna", "address": "127.0.0.1:514", "transport": "tcp", "confirm_delay": "20ms"}
        ]))
        .unwrap();
        assert_eq!(ok[0].confirm_delay, Some(Duration::from_millis(20)));
        let bad = serde_json::from_value::<Vec<SinkConfig>>(
            serde_json::json!([{"type": "stdout", "name": "x", "colour": 1}]),
        );
        assert!(bad.unwrap_err().to_string().contains("unknown field `colour`"));
    }
}
