//! Audit records for every allowed or denied PHI access, and their writer.
//!
//! The gateway [`AuditWriter::reserve`]s a queue slot *before* it lets a
//! request through: if no slot can be had (queue full, file unwritable) the
//! request is refused with 503 `audit_unavailable` instead of being served
//! unaudited. The record itself is sent through the slot once the response is
//! known, and a background [`AuditWorker`] appends it as one JSON line to an
//! append-only file. A record is therefore never dropped silently.
#![forbid(unsafe_code)]

mod record;
mod writer;

pub use record::{now_rfc3339, AuditRecord};
pub use writer::{AuditError, AuditSlot, AuditStats, AuditWorker, AuditWriter};
