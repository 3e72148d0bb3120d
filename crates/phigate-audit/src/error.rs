//! The one error type of the audit crate.

use std::path::PathBuf;

/// Errors of the audit pipeline: start-up (open, recovery, keys), admission
/// ([`crate::Spool::reserve`]) and commits.
///
/// Every variant returned by `reserve` or by a commit means "this request has
/// no durable audit record": the gateway must refuse it (503
/// `audit_unavailable`), never serve it unaudited.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An I/O error at start-up or while reading segments (verify, report).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spool's tail is inconsistent in a way crash recovery must not
    /// repair on its own (an altered record, a broken chain): start-up stops
    /// so that an operator looks (`phigate audit verify`).
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// Another process holds the spool directory's lock.
    #[error("audit spool {0} is in use by another process (lock held on .lock)")]
    Locked(PathBuf),
    /// Invalid options (zero queue, zero segment size, ...).
    #[error("invalid audit spool options: {0}")]
    Options(String),
    /// A checkpoint key could not be loaded.
    #[error("checkpoint key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("audit queue size must be at least 1")]
    ZeroQueue,
    /// Every queue slot is taken: the request must be refused.
    #[error("audit queue is full")]
    QueueFull,
    /// The writer cannot write (disk full, file gone, ...): the request must be refused.
    #[error("audit writer is failing")]
    Unhealthy,
    /// The spool reached its byte bound (`max_bytes`): the request must be
    /// refused until an operator removes forwarded segments.
    #[error("audit spool is full (byte bound reached)")]
    SpoolFull,
    /// The spool's filesystem has less free space than the reserve
    /// (`min_free_bytes`): the request must be refused, so that records
    /// already reserved can still be written. Re-checked every second.
    #[error("audit spool filesystem has {free} bytes free, below the reserve of {min} bytes")]
    LowDiskSpace { free: u64, min: u64 },
    /// The writer has stopped (shutdown, or [`crate::Spool::close`]) or was never started.
    #[error("audit writer has stopped")]
    Closed,
    /// Writing or syncing this record failed: it is NOT durable.
    #[error("audit write failed: {0}")]
    WriteFailed(String),
}
