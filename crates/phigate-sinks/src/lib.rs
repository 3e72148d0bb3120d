//! Streaming audit sinks: forward phigate's durable audit spool to NATS
//! JetStream, syslog (RFC 5424 over TCP or TLS, IHE ATNA), a FHIR server as
//! IHE BALP AuditEvents, or stdout — at least once, resumable, each message
//! carrying the record's `event_id` for de-duplication.
//!
//! ```text
//!  spool dir ──► SpoolReader ──batch──► Sink::send ──ack──► cursors/<sink>.json
//!   (segments,    (seq order, tails,      (nats|syslog|       (atomic replace;
//!    JSON lines)   reports gaps)           fhir|stdout)        resume point)
//! ```
//!
//! - [`spool`]: the spool file-format contract (reader, cursors).
//! - [`Forwarder`]: one task per sink; retries with capped back-off, never
//!   skips a record, stops gracefully on a `watch` signal; [`SinkStatus`] for
//!   metrics and readiness.
//! - [`config`]: the `sinks:` configuration and [`build_sinks`].
//! - [`fhir::to_audit_event`] / [`fhir::export_fhir`]: the BALP mapping, also
//!   used by `phigate audit export --format fhir`.
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod fhir;
mod forwarder;
pub mod nats;
pub mod spool;
pub mod stdout;
pub mod syslog;
pub mod testing;

pub use config::{
    build_forwarders, build_sinks, FhirSinkFile, NatsSinkFile, SinkConfig, SinkProblem, StdoutSinkFile,
    SyslogSinkFile,
};
pub use error::Error;
pub use fhir::{export_fhir, to_audit_event};
pub use forwarder::{Forwarder, ForwarderSettings, Sink, SinkError, SinkStatus, SinkStatusSnapshot};
pub use spool::{SpoolReader, SpoolRecord};

#[cfg(test)]
mod tests;
