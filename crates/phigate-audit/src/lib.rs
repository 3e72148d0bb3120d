//! Audit records for every allowed or denied PHI access and every session
//! logout (accepted or refused): the durable hash-chained spool that stores
//! them, the verifier that proves the spool unaltered, and the scope-use
//! report.
//!
//! The gateway [`Spool::reserve`]s a place *before* it lets a request
//! through: if none can be had (queue full, writer failing, spool full) the
//! request is refused with 503 `audit_unavailable` instead of being served
//! unaudited. Once the response is known the record is committed through the
//! [`Slot`]; the [`SpoolWorker`] (one writer thread, one total order) gives
//! it its `seq`, `event_id` and place in the SHA-256 hash chain, appends it
//! to the current JSONL segment and resolves the commit per [`Durability`].
//! A record is never dropped silently: every failure reaches the committer.
//! A session logout takes the same path ([`Slot::commit_logout`]), so it is
//! refused, ordered and made durable exactly as an access is.
//!
//! The file format is a contract (`docs/audit.md`,
//! `docs/audit-record.schema.json`): the streaming sinks and
//! `phigate audit verify` read it.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod chain;
pub mod checkpoint;
mod error;
pub mod html;
mod record;
pub mod report;
pub mod review;
pub mod scan;
pub mod segment;
mod spool;
pub mod suggest;
pub mod verify;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use checkpoint::{SigningKey, VerifyKey};
pub use error::AuditError;
pub use html::{render_html, BreakGlassRow, FindingRow, HtmlReport, LeastPrivilegeRow, TimelinePoint};
pub use record::{
    now_rfc3339, record_schema, without_access_token, AccessRecord, AuditRecord, CheckpointRecord,
    ClientCert, LogoutDecision, LogoutRecord, LogoutSource, Outcome, Phase, RecordBody, RecoveryRecord,
    SpoolRecord, Truncation, Tunnel, TunnelPhase, MAX_CLAIMS_BYTES, MAX_QUERY_BYTES, SCHEMA_VERSION,
};
pub use review::{review, Finding, ReviewConfig, ReviewError, ReviewOptions, ReviewReport, Rule, Severity};
#[doc(hidden)]
pub use spool::FreeSpaceProbe;
pub use spool::{
    CheckpointOptions, Commit, CommitInfo, Durability, Slot, Spool, SpoolOptions, SpoolStats, SpoolWorker,
    DEFAULT_MAX_BYTES, DEFAULT_MIN_FREE_BYTES, DEFAULT_QUEUE, DEFAULT_SEGMENT_MAX_BYTES,
};
pub use suggest::{ClientSuggestion, RoleProposal, Suggestions, UsageAccumulator};
