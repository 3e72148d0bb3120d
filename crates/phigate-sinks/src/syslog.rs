//! Syslog sink: RFC 5424 messages over TCP (RFC 6587) or TLS (RFC 5425),
//! octet-counting framing — the transport of IHE ATNA ITI-20.
//!
//! TCP gives no application-level acknowledgement. This sink treats a batch
//! as acknowledged when it is written and flushed *and* the connection is
//! still open `confirm_delay` later (a receiver that died meanwhile closes or
//! resets it, and the batch is re-sent on a new connection). Records written
//! into a connection whose receiver dies later than that, before reading
//! them, can be lost — the standard's known limit (see REFERENCES.md,
//! "IHE ATNA ITI-20": no delivery guarantee). Use the NATS or FHIR sink where
//! an acknowledged hand-over is required.

use std::fmt::Write as _;
use std::future::Future as _;
use std::path::Path;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::forwarder::{Sink, SinkError};
use crate::spool::SpoolRecord;

/// Syslog facility `authpriv` (10): security/authorization messages.
pub const FACILITY_AUTHPRIV: u8 = 10;
/// Severity `warning`: denials, break-glass access, refused logouts, spool recovery.
pub const SEVERITY_WARNING: u8 = 4;
/// Severity `notice`: allowed access, logouts carried out.
pub const SEVERITY_NOTICE: u8 = 5;
/// Severity `informational`: checkpoints.
pub const SEVERITY_INFO: u8 = 6;
/// The APP-NAME of every message.
pub const APP_NAME: &str = "phigate";
/// IANA private enterprise number reserved for documentation (RFC 5612);
/// the default SD-ID is `phigate@32473`. Set your organisation's number.
pub const DEFAULT_ENTERPRISE_ID: u32 = 32473;

/// The transport to the receiver.
#[derive(Clone)]
pub enum SyslogTransport {
    /// Plain TCP (RFC 6587 octet counting).
    Tcp,
    /// TLS (RFC 5425); the server certificate is always verified.
    Tls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
}

impl std::fmt::Debug for SyslogTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTransport::Tcp => f.write_str("Tcp"),
            SyslogTransport::Tls { server_name, .. } => {
                f.debug_struct("Tls").field("server_name", server_name).finish()
            }
        }
    }
}

/// Runtime configuration of a [`SyslogSink`].
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// `host:port` of the receiver.
    pub address: String,
    pub transport: SyslogTransport,
    /// HOSTNAME field (printable ASCII, no spaces); `-` when empty.
    pub hostname: String,
    /// The enterprise number of the SD-ID `phigate@<n>`.
    pub enterprise_id: u32,
    /// How long a written batch must survive on an open connection before it
    /// counts as acknowledged.
    pub confirm_delay: Duration,
    /// Bound on connect + TLS handshake, and on each write.
    pub timeout: Duration,
}

/// Build a TLS client configuration that trusts only the CA certificates in
/// `ca_file` (PEM), optionally presenting a client certificate.
pub fn tls_client_config(
    ca_file: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("{}: {e}", ca_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", ca_file.display()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", ca_file.display()))?;
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| format!("{}: {e}", cert_file.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert_file.display()))?;
            if chain.is_empty() {
                return Err(format!("{}: no PEM certificate found", cert_file.display()));
            }
            let key =
                PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: client certificate/key: {e}", cert_file.display()))?
        }
    };
    Ok(Arc::new(config))
}

/// The local host name (`/proc/sys/kernel/hostname`, `/etc/hostname`), or
/// `-` when unknown.
pub fn local_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| printable(s.trim(), 255))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

/// Keep printable US-ASCII without spaces (RFC 5424 PRINTUSASCII), at most `max` chars.
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect()
}

/// RFC 5424 §6.3.3: escape `"`, `\` and `]` in a PARAM-VALUE.
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// PRI severity for a record.
pub fn severity(record: &Value) -> u8 {
    match record.get("kind").and_then(Value::as_str) {
        Some("access") => {
            let deny = record.get("decision").and_then(Value::as_str) == Some("deny");
            let break_glass = record.get("break_glass").and_then(Value::as_bool) == Some(true);
            if deny || break_glass {
                SEVERITY_WARNING
            } else {
                SEVERITY_NOTICE
            }
        }
        // A logout carried out is routine; a refused one (a forged or
        // replayed token, or sessions that could not be ended) is not.
        Some("logout") if record.get("decision").and_then(Value::as_str) == Some("allow") => SEVERITY_NOTICE,
        Some("checkpoint") => SEVERITY_INFO,
        _ => SEVERITY_WARNING,
    }
}

/// The RFC 5424 TIMESTAMP: the record's `ts` when it is a valid RFC 3339
/// time with at most 6 fractional digits, otherwise NILVALUE.
fn timestamp(record: &Value) -> String {
    let Some(ts) = record.get("ts").and_then(Value::as_str) else {
        return "-".into();
    };
    let parsed = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok();
    let frac_ok = ts
        .split_once('.')
        .map(|(_, rest)| rest.bytes().take_while(u8::is_ascii_digit).count() <= 6)
        .unwrap_or(true);
    if parsed && frac_ok && ts.is_ascii() && !ts.contains(' ') {
        ts.to_owned()
    } else {
        "-".into()
    }
}

/// One RFC 5424 SYSLOG-MSG for `record`:
/// `<PRI>1 TIMESTAMP HOSTNAME phigate PROCID MSGID [phigate@PEN event_id=… kind=… seq=… decision=…] JSON`.
///
/// PRI = authpriv × 8 + severity (notice for allow; warning for deny,
/// break-glass and recovery; info for checkpoints — for access and logout
/// records alike). MSGID is the `reason` of access and logout records (e.g.
/// `insufficient_scope`, `logged_out`), else the `kind`. MSG is the spool
/// line itself (JSON, UTF-8, without BOM).
pub fn format_message(record: &SpoolRecord, hostname: &str, enterprise_id: u32, procid: u32) -> String {
    let v = &record.value;
    let pri = FACILITY_AUTHPRIV * 8 + severity(v);
    let msgid = match record.kind.as_str() {
        kind @ ("access" | "logout") => v.get("reason").and_then(Value::as_str).unwrap_or(kind),
        other => other,
    };
    let msgid = printable(msgid, 32);
    let msgid = if msgid.is_empty() { "-".to_owned() } else { msgid };
    let hostname = if hostname.is_empty() { "-" } else { hostname };
    let mut sd = format!(
        "[{APP_NAME}@{enterprise_id} event_id=\"{}\" kind=\"{}\" seq=\"{}\"",
        sd_escape(&record.event_id),
        sd_escape(&record.kind),
        record.seq
    );
    if let Some(decision) = v.get("decision").and_then(Value::as_str) {
        let _ = write!(sd, " decision=\"{}\"", sd_escape(decision));
    }
    sd.push(']');
    format!(
        "<{pri}>1 {} {hostname} {APP_NAME} {procid} {msgid} {sd} {}",
        timestamp(v),
        record.line
    )
}

/// Octet-counting framing (RFC 6587 §3.4.1, RFC 5425 §4.3): `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(message: &str) -> String {
    format!("{} {message}", message.len())
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Conn for T {}

/// Whether the peer has closed or reset the connection. The receiver never
/// sends application data, so anything readable is EOF, an error, or TLS
/// housekeeping (consumed by rustls). Polled once, never waits.
fn peer_closed(conn: &mut (dyn Conn + '_)) -> Option<String> {
    let mut buf = [0u8; 256];
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = pin!(conn.read(&mut buf));
    match Pin::as_mut(&mut read).poll(&mut cx) {
        Poll::Pending | Poll::Ready(Ok(1..)) => None,
        Poll::Ready(Ok(0)) => Some("the receiver closed the connection".into()),
        Poll::Ready(Err(e)) => Some(format!("connection error: {e}")),
    }
}

/// Sends records to a syslog receiver.
pub struct SyslogSink {
    config: SyslogConfig,
    conn: Option<Box<dyn Conn>>,
    procid: u32,
}

impl SyslogSink {
    pub fn new(config: SyslogConfig) -> SyslogSink {
        SyslogSink {
            config,
            conn: None,
            procid: std::process::id(),
        }
    }

    async fn open(&self) -> Result<Box<dyn Conn>, SinkError> {
        let connect = async {
            let tcp = TcpStream::connect(&self.config.address)
                .await
                .map_err(|e| SinkError::new(format!("connect {}: {e}", self.config.address)))?;
            let _ = tcp.set_nodelay(true);
            match &self.config.transport {
                SyslogTransport::Tcp => Ok(Box::new(tcp) as Box<dyn Conn>),
                SyslogTransport::Tls { config, server_name } => {
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(server_name.clone(), tcp)
                        .await
                        .map_err(|e| {
                            SinkError::new(format!("TLS handshake with {}: {e}", self.config.address))
                        })?;
                    Ok(Box::new(tls) as Box<dyn Conn>)
                }
            }
        };
        tokio::time::timeout(self.config.timeout, connect)
            .await
            .map_err(|_| SinkError::new(format!("connect {}: timed out", self.config.address)))?
    }
}

#[async_trait]
impl Sink for SyslogSink {
    fn kind(&self) -> &'static str {
        "syslog"
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        Ok(())
    }

    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError> {
        // A connection the receiver closed since the last batch is replaced
        // before writing, so nothing is written into it.
        if let Some(conn) = self.conn.as_mut() {
            if let Some(why) = peer_closed(conn.as_mut()) {
                tracing::info!(address = %self.config.address, "syslog connection lost ({why}); reconnecting");
                self.conn = None;
            }
        }
        self.connect().await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::new("not connected"));
        };
        let mut buf = String::new();
        for record in batch {
            let msg = format_message(
                record,
                &self.config.hostname,
                self.config.enterprise_id,
                self.procid,
            );
            buf.push_str(&frame(&msg));
        }
        let write = async {
            conn.write_all(buf.as_bytes()).await?;
            conn.flush().await
        };
        match tokio::time::timeout(self.config.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SinkError::new(format!("write to {}: {e}", self.config.address))),
            Err(_) => {
                return Err(SinkError::new(format!(
                    "write to {}: timed out",
                    self.config.address
                )))
            }
        }
        tokio::time::sleep(self.config.confirm_delay).await;
        if let Some(why) = peer_closed(conn.as_mut()) {
            return Err(SinkError::new(format!(
                "{why} right after a write to {}; re-sending the batch",
                self.config.address
            )));
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // TLS close_notify / TCP FIN; bounded, best effort.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> SpoolRecord {
        SpoolRecord::parse(&value.to_string()).unwrap()
    }

    fn access(decision: &str, reason: &str, extra: Value) -> SpoolRecord {
        let mut v = json!({
            "v": 1, "kind": "access", "seq": 42, "event_id": "0190a0b0-0000-7000-8000-000000000042",
            "ts": "2026-11-25T10:08:35.639Z", "decision": decision, "reason": reason,
            "prev_hash": "0".repeat(64), "hash": "1".repeat(64)
        });
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        record(v)
    }

    #[test]
    fn allow_is_authpriv_notice_with_reason_as_msgid_and_event_id_in_structured_data() {
        let r = access("allow", "allowed", json!({}));
        let m = format_message(&r, "gw1", 32473, 77);
        let expected_prefix = "<85>1 2026-11-25T10:08:35.639Z gw1 phigate 77 allowed \
             [phigate@32473 event_id=\"0190a0b0-0000-7000-8000-000000000042\" kind=\"access\" seq=\"42\" decision=\"allow\"] {";
        assert!(m.starts_with(expected_prefix), "{m}");
        assert!(m.ends_with(&r.line), "MSG is the spool line byte for byte");
    }

    #[test]
    fn deny_and_break_glass_are_warnings() {
        let deny = access("deny", "insufficient_scope", json!({}));
        assert!(format_message(&deny, "h", 1, 1).starts_with("<84>1 "));
        assert!(format_message(&deny, "h", 1, 1).contains(" insufficient_scope [phigate@1 "));
        let bg = access(
            "allow",
            "break_glass",
            json!({"break_glass": true, "justification": "ER"}),
        );
        assert!(format_message(&bg, "h", 1, 1).starts_with("<84>1 "));
    }

    #[test]
    fn other_kinds_use_the_kind_as_msgid() {
        let cp =
            record(json!({"v":1,"kind":"checkpoint","seq":9,"event_id":"e9","ts":"2026-01-01T00:00:00Z"}));
        assert!(
            format_message(&cp, "h", 1, 1).starts_with("<86>1 2026-01-01T00:00:00Z h phigate 1 checkpoint ")
        );
        let rec =
            record(json!({"v":1,"kind":"recovery","seq":3,"event_id":"e3","ts":"2026-01-01T00:00:00Z"}));
        assert!(format_message(&rec, "h", 1, 1).starts_with("<84>1 "));
    }

    #[test]
    fn logouts_use_their_reason_as_msgid_and_refusals_are_warnings() {
        let logout = |decision: &str, reason: &str| {
            record(json!({
                "v": 1, "kind": "logout", "seq": 7, "event_id": "e7", "ts": "2026-01-01T00:00:00.000Z",
                "source": "backchannel", "decision": decision, "reason": reason, "status": 200,
                "sid": "s1", "prev_hash": "0".repeat(64), "hash": "1".repeat(64)
            }))
        };
        let ok = logout("allow", "logged_out");
        let m = format_message(&ok, "h", 1, 1);
        assert!(
            m.starts_with(
                "<85>1 2026-01-01T00:00:00.000Z h phigate 1 logged_out \
                 [phigate@1 event_id=\"e7\" kind=\"logout\" seq=\"7\" decision=\"allow\"] {"
            ),
            "{m}"
        );
        assert!(m.ends_with(&ok.line), "MSG is the spool line byte for byte");
        let refused = format_message(&logout("deny", "logout_token_bad_signature"), "h", 1, 1);
        assert!(refused.starts_with("<84>1 "), "{refused}");
        assert!(
            refused.contains(" logout_token_bad_signature [phigate@1 "),
            "{refused}"
        );
    }

    #[test]
    fn structured_data_values_are_escaped_and_header_fields_sanitised() {
        let r = record(
            json!({"v":1,"kind":"access","seq":1,"event_id":"a\"b]c\\d","decision":"allow",
            "reason":"a reason with spaces that is much longer than thirty-two characters","ts":"not a time"}),
        );
        let m = format_message(&r, "", 1, 1);
        assert!(m.contains(r#"event_id="a\"b\]c\\d""#), "{m}");
        assert!(
            m.starts_with("<85>1 - - phigate 1 areasonwithspacesthatismuchlonge [phigate@1 "),
            "{m}"
        );
    }

    #[test]
    fn octet_counting_frame_counts_bytes_not_chars() {
        assert_eq!(frame("<85>1 x"), "7 <85>1 x");
        let msg = "é"; // 2 bytes in UTF-8
        assert_eq!(frame(msg), "2 é");
        let r = access("allow", "allowed", json!({"path": "/fhir/Patient/ü"}));
        let framed = frame(&format_message(&r, "h", 1, 1));
        let (len, rest) = framed.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
    }

    #[test]
    fn timestamps_with_more_than_microseconds_become_nil() {
        let r = record(
            json!({"v":1,"kind":"checkpoint","seq":1,"event_id":"e","ts":"2026-01-01T00:00:00.1234567Z"}),
        );
        assert!(format_message(&r, "h", 1, 1).starts_with("<86>1 - h "));
    }
}
