//! NATS JetStream sink: every record is published (its spool line as the
//! payload) with header `Nats-Msg-Id: <event_id>` and acknowledged by a
//! JetStream PubAck, so the stream stores it once even when it is re-sent
//! within the stream's duplicate window. Re-sends after a longer outage than
//! the window rely on consumers de-duplicating by `event_id`.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;

use crate::forwarder::{Sink, SinkError};
use crate::spool::SpoolRecord;

/// Default subject.
pub const DEFAULT_SUBJECT: &str = "phigate.audit";
/// Default stream name.
pub const DEFAULT_STREAM: &str = "PHIGATE_AUDIT";
/// Default duplicate window of a stream this sink creates.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Runtime configuration of a [`NatsSink`].
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (`nats://host:4222`, `tls://…`).
    pub url: String,
    pub subject: String,
    /// The stream that must store the records (checked on every PubAck).
    pub stream: String,
    /// Create the stream (file storage, `subjects: [subject]`,
    /// `duplicate_window`) when it does not exist.
    pub create_stream: bool,
    pub duplicate_window: Duration,
    /// Bound on connecting and on each PubAck.
    pub timeout: Duration,
    /// A NATS `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// CA certificates (PEM) for a TLS connection; setting it requires TLS.
    pub ca_file: Option<PathBuf>,
}

/// Publishes records to a JetStream stream.
pub struct NatsSink {
    config: NatsConfig,
    js: Option<jetstream::Context>,
}

impl NatsSink {
    pub fn new(config: NatsConfig) -> NatsSink {
        NatsSink { config, js: None }
    }

    async fn open(&self) -> Result<jetstream::Context, SinkError> {
        let c = &self.config;
        let mut opts = async_nats::ConnectOptions::new()
            .name("phigate-audit")
            .connection_timeout(c.timeout)
            .request_timeout(Some(c.timeout));
        if let Some(creds) = &c.credentials_file {
            opts = opts
                .credentials_file(creds)
                .await
                .map_err(|e| SinkError::new(format!("{}: {e}", creds.display())))?;
        }
        if let Some(ca) = &c.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = opts
            .connect(c.url.as_str())
            .await
            .map_err(|e| SinkError::new(format!("connect {}: {e}", c.url)))?;
        let mut js = jetstream::new(client);
        js.set_timeout(c.timeout);
        if c.create_stream {
            js.get_or_create_stream(stream::Config {
                name: c.stream.clone(),
                subjects: vec![c.subject.clone()],
                duplicate_window: c.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| SinkError::new(format!("create stream {}: {e}", c.stream)))?;
        } else {
            js.get_stream(&c.stream)
                .await
                .map_err(|e| SinkError::new(format!("stream {} (create_stream is off): {e}", c.stream)))?;
        }
        Ok(js)
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        if self.js.is_none() {
            self.js = Some(self.open().await?);
        }
        Ok(())
    }

    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError> {
        self.connect().await?;
        let Some(js) = self.js.as_ref() else {
            return Err(SinkError::new("not connected"));
        };
        // Publish the whole batch, then collect the acks in order: the
        // publishes are pipelined, and the acknowledged prefix is exact.
        let mut pending = Vec::with_capacity(batch.len());
        for record in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", record.event_id.as_str());
            headers.insert("Phigate-Seq", record.seq.to_string().as_str());
            match js
                .publish_with_headers(self.config.subject.clone(), headers, record.line.clone().into())
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    let acked = self.collect(pending).await?;
                    return Err(SinkError::after(
                        acked,
                        format!("publish seq {}: {e}", record.seq),
                    ));
                }
            }
        }
        self.collect(pending).await.map(|_| ())
    }

    async fn disconnect(&mut self) {
        self.js = None;
    }
}

impl NatsSink {
    /// Await `pending` acks in order: `Ok(n)` when all `n` were acknowledged
    /// by the configured stream; the error carries the acknowledged prefix.
    async fn collect(&self, pending: Vec<jetstream::context::PublishAckFuture>) -> Result<usize, SinkError> {
        let mut acked = 0;
        for fut in pending {
            match fut.await {
                Ok(ack) if ack.stream == self.config.stream => acked += 1,
                Ok(ack) => {
                    return Err(SinkError::after(
                        acked,
                        format!(
                            "subject {} is stored by stream {}, not the configured {}",
                            self.config.subject, ack.stream, self.config.stream
                        ),
                    ))
                }
                Err(e) => return Err(SinkError::after(acked, format!("PubAck: {e}"))),
            }
        }
        Ok(acked)
    }
}
