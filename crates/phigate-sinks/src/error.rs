//! The crate's error type.

use std::path::{Path, PathBuf};

/// Errors of the spool reader, the cursors and the sink configuration.
/// Delivery errors of a sink are [`SinkError`](crate::SinkError)s: they are
/// retried, never returned from [`Forwarder::run`](crate::Forwarder::run).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The spool breaks its file-format contract (e.g. a complete line that
    /// is not a record, a cursor file that is not `{"seq": N}`).
    #[error("audit spool: {0}")]
    Spool(String),
    /// Every problem of a `sinks:` configuration, one message each.
    #[error("invalid audit sink configuration: {}", .0.join("; "))]
    Config(Vec<String>),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}
