//! The stdout sink: one spool line (JSON) per output line, for log
//! pipelines that collect a container's stdout. A flushed write counts as
//! acknowledged.

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::forwarder::{Sink, SinkError};
use crate::spool::SpoolRecord;

/// Writes JSON lines to any async writer; [`StdoutSink::stdout`] for the
/// process's standard output.
pub struct StdoutSink<W = tokio::io::Stdout> {
    out: W,
}

impl StdoutSink<tokio::io::Stdout> {
    pub fn stdout() -> Self {
        StdoutSink {
            out: tokio::io::stdout(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> StdoutSink<W> {
    /// A sink writing to `out` (tests, pipes).
    pub fn new(out: W) -> Self {
        StdoutSink { out }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send> Sink for StdoutSink<W> {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
        for record in batch {
            buf.extend_from_slice(record.line.as_bytes());
            buf.push(b'\n');
        }
        self.out
            .write_all(&buf)
            .await
            .map_err(|e| SinkError::new(format!("write: {e}")))?;
        self.out
            .flush()
            .await
            .map_err(|e| SinkError::new(format!("flush: {e}")))
    }
}
