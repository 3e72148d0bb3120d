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

/// One entry of `sinks:` as written (unknown keys rejected by serde, per
/// kind: a key of another kind, e.g. `address` on a `nats` sink, is an
/// `unknown field`).
///
/// Keys that are required for a kind are still `Option` in the `*SinkFile`
/// structs: their absence is reported by [`validate`] as a located
/// [`SinkProblem`], not by serde, so a parser that drops bad values and goes
/// on is not stopped by a required key it dropped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Nats(NatsSinkFile),
    Syslog(SyslogSinkFile),
    Fhir(FhirSinkFile),
    Stdout(StdoutSinkFile),
}

impl SinkConfig {
    /// The entry's `name`.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Nats(c) => &c.name,
            SinkConfig::Syslog(c) => &c.name,
            SinkConfig::Fhir(c) => &c.name,
            SinkConfig::Stdout(c) => &c.name,
        }
    }

    /// `nats`, `syslog`, `fhir` or `stdout`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Fhir(_) => "fhir",
            SinkConfig::Stdout(_) => "stdout",
        }
    }

    /// The keys every kind accepts.
    fn common(&self) -> Common {
        let (batch_size, max_backoff, timeout) = match self {
            SinkConfig::Nats(c) => (c.batch_size, c.max_backoff, c.timeout),
            SinkConfig::Syslog(c) => (c.batch_size, c.max_backoff, c.timeout),
            SinkConfig::Fhir(c) => (c.batch_size, c.max_backoff, c.timeout),
            SinkConfig::Stdout(c) => (c.batch_size, c.max_backoff, c.timeout),
        };
        Common {
            batch_size,
            max_backoff,
            timeout,
        }
    }
}

/// The keys every kind accepts (listed in each `*SinkFile`: serde's
/// `flatten` does not work with `deny_unknown_fields`).
struct Common {
    batch_size: Option<usize>,
    max_backoff: Option<Duration>,
    timeout: Option<Duration>,
}

/// `type: nats` — publish to a JetStream stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkFile {
    /// Unique name: the cursor file `<spool>/cursors/<name>.json` and the
    /// `sink` metric label. `[A-Za-z0-9_-]`, at most 64 characters.
    pub name: String,
    /// Most records per send (default 256, 1..=10000).
    pub batch_size: Option<usize>,
    /// Cap of the retry back-off (default 5s, at least 100ms).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// Connect + PubAck timeout (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Server URL(s), comma-separated. Required.
    pub url: Option<String>,
    /// Literal subject (default `phigate.audit`).
    pub subject: Option<String>,
    /// Stream that must store the records (default `PHIGATE_AUDIT`).
    pub stream: Option<String>,
    /// Create the stream if missing (default false).
    pub create_stream: Option<bool>,
    /// Duplicate window of a created stream (default 2m; only with
    /// `create_stream: true`).
    #[serde(default, with = "humantime_serde")]
    pub duplicate_window: Option<Duration>,
    /// NATS `.creds` file.
    pub credentials_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust; requires TLS.
    pub ca_file: Option<PathBuf>,
}

/// `type: syslog` — RFC 5424 over TCP (RFC 6587) or TLS (RFC 5425).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkFile {
    /// See [`NatsSinkFile::name`].
    pub name: String,
    /// Most records per send (default 256, 1..=10000).
    pub batch_size: Option<usize>,
    /// Cap of the retry back-off (default 5s, at least 100ms).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// Connect/handshake and write timeout (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `host:port`. Required.
    pub address: Option<String>,
    /// `tcp` or `tls`. Required. A string checked by [`validate`] (not a
    /// serde enum) so that a bad value is reported at `transport`.
    pub transport: Option<String>,
    /// tls: CA certificates (PEM), the only trust anchors. Required with tls.
    pub ca_file: Option<PathBuf>,
    /// tls: server name to verify (default: the host of `address`).
    pub server_name: Option<String>,
    /// tls: client certificate, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// tls: client key, with `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// HOSTNAME field (default: this host's name).
    pub hostname: Option<String>,
    /// SD-ID `phigate@<n>` (default 32473).
    pub enterprise_id: Option<u32>,
    /// How long a written batch must survive on an open connection to count
    /// as acknowledged (default 50ms).
    #[serde(default, with = "humantime_serde")]
    pub confirm_delay: Option<Duration>,
}

/// `type: fhir` — POST IHE BALP AuditEvents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSinkFile {
    /// See [`NatsSinkFile::name`].
    pub name: String,
    /// Most records per send (default 256, 1..=10000).
    pub batch_size: Option<usize>,
    /// Cap of the retry back-off (default 5s, at least 100ms).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// Request timeout (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// FHIR base, http(s) without a query. Required.
    pub base_url: Option<String>,
    /// Bearer token, re-read for every batch.
    pub bearer_token_file: Option<PathBuf>,
    /// CA certificates (PEM) added to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// `type: stdout` — one JSON line per record.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkFile {
    /// See [`NatsSinkFile::name`].
    pub name: String,
    /// Most records per send (default 256, 1..=10000).
    pub batch_size: Option<usize>,
    /// Cap of the retry back-off (default 5s, at least 100ms).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// Accepted for uniformity; must be positive if set.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A problem found by [`validate`], located by the entry index and the key
/// (`None` = the entry itself, e.g. a required key that is missing).
///
/// `message` names the key it is about (in backticks), so it reads on its
/// own when shown at the key's `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkProblem {
    /// Index in the `sinks:` list.
    pub index: usize,
    /// The key whose value is wrong; `None` for the entry as a whole.
    pub key: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for SinkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            Some(key) => write!(f, "sinks[{}].{key}: {}", self.index, self.message),
            None => write!(f, "sinks[{}]: {}", self.index, self.message),
        }
    }
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

/// Collects the problems of one entry.
struct Problems<'a> {
    out: &'a mut Vec<SinkProblem>,
    index: usize,
    kind: &'static str,
}

impl Problems<'_> {
    /// A problem with the value of `key`.
    fn at(&mut self, key: &'static str, message: impl Into<String>) {
        self.out.push(SinkProblem {
            index: self.index,
            key: Some(key),
            message: message.into(),
        });
    }

    /// A problem with the entry as a whole.
    fn entry(&mut self, message: impl Into<String>) {
        self.out.push(SinkProblem {
            index: self.index,
            key: None,
            message: message.into(),
        });
    }

    /// A key the kind requires; its absence is located at the entry.
    fn required<T: Clone>(&mut self, key: &'static str, v: &Option<T>) -> Option<T> {
        if v.is_none() {
            let kind = self.kind;
            self.entry(format!("`{key}` is required for a `{kind}` sink"));
        }
        v.clone()
    }
}

/// Check every entry; all problems are reported together, in entry order.
pub fn validate(configs: &[SinkConfig]) -> Result<Vec<ValidatedSink>, Vec<SinkProblem>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (index, cfg) in configs.iter().enumerate() {
        let mut p = Problems {
            out: &mut problems,
            index,
            kind: cfg.kind(),
        };
        let name = cfg.name();
        if !valid_sink_name(name) {
            p.at("name", "`name` must be 1-64 characters of A-Z a-z 0-9 _ -");
        } else if !names.insert(name.to_owned()) {
            p.at("name", format!("duplicate sink name `{name}`"));
        }
        let common = cfg.common();
        let mut settings = ForwarderSettings::default();
        match common.batch_size {
            Some(0) => p.at("batch_size", "`batch_size` must be at least 1"),
            Some(n) if n > 10_000 => p.at("batch_size", "`batch_size` must be at most 10000"),
            Some(n) => settings.batch_size = n,
            None => {}
        }
        if let Some(b) = common.max_backoff {
            if b < settings.initial_backoff {
                p.at("max_backoff", "`max_backoff` must be at least 100ms");
            } else {
                settings.max_backoff = b;
            }
        }
        if common.timeout == Some(Duration::ZERO) {
            p.at("timeout", "`timeout` must be positive");
        }
        let spec = match cfg {
            SinkConfig::Nats(c) => nats_spec(&mut p, c),
            SinkConfig::Syslog(c) => syslog_spec(&mut p, c),
            SinkConfig::Fhir(c) => fhir_spec(&mut p, c),
            SinkConfig::Stdout(_) => Some(SinkSpec::Stdout),
        };
        if let Some(spec) = spec {
            out.push(ValidatedSink {
                name: name.to_owned(),
                settings,
                spec,
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn nats_spec(p: &mut Problems<'_>, c: &NatsSinkFile) -> Option<SinkSpec> {
    let url = p.required("url", &c.url);
    let subject = c.subject.clone().unwrap_or_else(|| DEFAULT_SUBJECT.into());
    if subject.is_empty() || subject.contains([' ', '*', '>']) {
        p.at(
            "subject",
            "`subject` must be a literal subject (no spaces or wildcards)",
        );
    }
    let stream = c.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
    if stream.is_empty() || stream.contains([' ', '.', '*', '>', '/', '\\']) {
        p.at(
            "stream",
            "`stream` must not be empty or contain spaces, `.`, `*`, `>`, `/`, `\\`",
        );
    }
    let duplicate_window = c.duplicate_window.unwrap_or(DEFAULT_DUPLICATE_WINDOW);
    if duplicate_window.is_zero() {
        p.at("duplicate_window", "`duplicate_window` must be positive");
    }
    if c.duplicate_window.is_some() && c.create_stream != Some(true) {
        p.at(
            "duplicate_window",
            "`duplicate_window` only applies with `create_stream: true` (set it on the existing stream)",
        );
    }
    url.map(|url| {
        SinkSpec::Nats(NatsConfig {
            url,
            subject,
            stream,
            create_stream: c.create_stream.unwrap_or(false),
            duplicate_window,
            timeout: c.timeout.unwrap_or(Duration::from_secs(5)),
            credentials_file: c.credentials_file.clone(),
            ca_file: c.ca_file.clone(),
        })
    })
}

fn syslog_spec(p: &mut Problems<'_>, c: &SyslogSinkFile) -> Option<SinkSpec> {
    let address = p.required("address", &c.address);
    let host = address
        .as_deref()
        .and_then(split_host_port)
        .map(|(h, _)| h.to_owned());
    if address.is_some() && host.is_none() {
        p.at("address", "`address` must be host:port");
    }
    let transport = p.required("transport", &c.transport);
    let tls = match transport.as_deref() {
        Some("tcp") => {
            for (key, set) in [
                ("ca_file", c.ca_file.is_some()),
                ("server_name", c.server_name.is_some()),
                ("client_cert_file", c.client_cert_file.is_some()),
                ("client_key_file", c.client_key_file.is_some()),
            ] {
                if set {
                    p.at(key, format!("`{key}` needs `transport: tls`"));
                }
            }
            None
        }
        Some("tls") => {
            let ca = p.required("ca_file", &c.ca_file);
            let client_cert = match (&c.client_cert_file, &c.client_key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                (Some(_), None) => {
                    p.at(
                        "client_cert_file",
                        "`client_cert_file` and `client_key_file` go together",
                    );
                    None
                }
                (None, Some(_)) => {
                    p.at(
                        "client_key_file",
                        "`client_cert_file` and `client_key_file` go together",
                    );
                    None
                }
            };
            let server_name = c.server_name.clone().or(host.clone()).unwrap_or_default();
            if c.server_name.is_some() && invalid_server_name(&server_name) {
                p.at(
                    "server_name",
                    "`server_name` is not a valid DNS name or IP address",
                );
            }
            ca.map(|ca_file| SyslogTlsSpec {
                ca_file,
                client_cert,
                server_name,
            })
        }
        Some(other) => {
            p.at(
                "transport",
                format!("`transport` must be `tcp` or `tls`, not `{other}`"),
            );
            None
        }
        None => None,
    };
    let hostname = match &c.hostname {
        Some(h) if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) => {
            p.at(
                "hostname",
                "`hostname` must be 1-255 printable ASCII characters without spaces",
            );
            String::new()
        }
        Some(h) => h.clone(),
        None => syslog::local_hostname(),
    };
    let ok = host.is_some() && (transport.as_deref() == Some("tcp") || tls.is_some());
    ok.then(|| {
        SinkSpec::Syslog(SyslogSpec {
            address: address.unwrap_or_default(),
            tls,
            hostname,
            enterprise_id: c.enterprise_id.unwrap_or(DEFAULT_ENTERPRISE_ID),
            confirm_delay: c.confirm_delay.unwrap_or(Duration::from_millis(50)),
            timeout: c.timeout.unwrap_or(Duration::from_secs(10)),
        })
    })
}

fn fhir_spec(p: &mut Problems<'_>, c: &FhirSinkFile) -> Option<SinkSpec> {
    let base = p.required("base_url", &c.base_url);
    if let Some(b) = &base {
        match reqwest::Url::parse(b) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
            _ => p.at("base_url", "`base_url` must be an http(s) URL without a query"),
        }
    }
    base.map(|base_url| {
        SinkSpec::Fhir(FhirConfig {
            base_url,
            timeout: c.timeout.unwrap_or(Duration::from_secs(10)),
            ca_file: c.ca_file.clone(),
            bearer_token_file: c.bearer_token_file.clone(),
        })
    })
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

/// Build one [`Forwarder`] per validated sink (reads CA, key and token
/// files; connections are made later, by [`Forwarder::run`]). Every failure
/// is reported together in one [`Error::Config`], as `sink <name>: ...`.
pub fn build_forwarders(validated: &[ValidatedSink]) -> Result<Vec<Forwarder>, Error> {
    let mut errors = Vec::new();
    let mut forwarders = Vec::new();
    for v in validated {
        match build_sink(v) {
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

/// [`validate`] then [`build_forwarders`]: a [`SinkProblem`] becomes its
/// `Display` string in [`Error::Config`] (the location is lost; callers that
/// can point at `file:line:column` use the two steps).
pub fn build_sinks(configs: &[SinkConfig]) -> Result<Vec<Forwarder>, Error> {
    let validated = validate(configs)
        .map_err(|problems| Error::Config(problems.iter().map(ToString::to_string).collect()))?;
    build_forwarders(&validated)
}

#[cfg(test)]
mod tests;
