//! Streaming the access records of a spool: the one reader behind
//! `policy suggest`, `policy replay` and the HTML report.

use std::io::BufRead;
use std::path::PathBuf;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::record::{RecordBody, SpoolRecord};
use crate::segment::open_segment;
use crate::verify::segment_files;
use crate::{AuditError, AuditRecord};

/// What [`scan`] read besides the records it handed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    /// Access records handed to the callback.
    pub access_records: u64,
    /// Lines that could not be read as records (or had an unreadable `ts`
    /// under `since`).
    pub unreadable_lines: u64,
}

/// Stream the access records of spool directories or segment files (plain
/// or zstd-compressed) in seq order, at or after `since`, to `f` with their
/// `seq` and `event_id`. One record in memory at a time. Does not check the
/// chain (see [`crate::verify::verify`]).
pub fn scan(
    paths: &[PathBuf],
    since: Option<OffsetDateTime>,
    mut f: impl FnMut(u64, &str, &AuditRecord),
) -> Result<ScanStats, AuditError> {
    let mut stats = ScanStats::default();
    for path in segment_files(paths)? {
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let reader = open_segment(&path).map_err(io)?;
        for line in reader.split(b'\n') {
            let line = line.map_err(io)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<SpoolRecord>(&line) else {
                stats.unreadable_lines += 1;
                continue;
            };
            let RecordBody::Access(a) = &record.body else {
                continue;
            };
            if let Some(since) = since {
                match OffsetDateTime::parse(&a.record.ts, &Rfc3339) {
                    Ok(ts) if ts >= since => {}
                    Ok(_) => continue,
                    Err(_) => {
                        stats.unreadable_lines += 1;
                        continue;
                    }
                }
            }
            stats.access_records += 1;
            f(record.seq, &record.event_id, &a.record);
        }
    }
    Ok(stats)
}
