//! Start-up crash recovery: where does the chain end, and is there a torn tail to cut?
//!
//! Only the last, open segment can be torn. Compressed segments are closed
//! and complete by construction: they are read (as a stream) only to find
//! the chain's end, and an incomplete one is corruption, never repaired.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::writer::Chain;
use crate::chain::{self, GENESIS_HASH};
use crate::segment::{open_segment, parse_segment_file_name, segment_file_name};
use crate::AuditError;

/// What start-up recovery found at the end of the spool.
#[derive(Debug)]
pub(super) struct Tail {
    /// The segment to continue (file name).
    pub(super) segment: String,
    /// Its length as found.
    pub(super) len: u64,
    /// The chain up to its last good line.
    pub(super) chain: Chain,
    /// Bytes to cut: `(new length, old length)`.
    pub(super) torn: Option<(u64, u64)>,
}

/// Find where the chain ends: the last segment's last complete, parsable
/// line (whose hash must verify and chain to the line before it), after
/// cutting a torn tail — bytes after the last `\n`, and trailing complete
/// lines that are not JSON objects (e.g. zero-filled blocks after a power
/// failure).
pub(super) fn scan_tail(segments: &[(u64, PathBuf)]) -> Result<Tail, AuditError> {
    let Some((first_seq, path)) = segments.last() else {
        return Ok(Tail {
            segment: segment_file_name(1),
            len: 0,
            chain: Chain {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
                since_checkpoint: 0,
            },
            torn: None,
        });
    };
    let name = file_name(path);
    if parse_segment_file_name(&name).is_some_and(|(_, compressed)| compressed) {
        return compressed_tail(*first_seq, path);
    }
    let bytes = std::fs::read(path).map_err(|source| AuditError::Io {
        path: path.clone(),
        source,
    })?;
    let corrupt = |message: String| AuditError::Corrupt {
        path: path.clone(),
        message: format!("{message}; run `phigate audit verify` and investigate before restarting"),
    };
    let good_end = good_end(&bytes);
    let torn = (good_end < bytes.len()).then_some((good_end as u64, bytes.len() as u64));
    let lines = complete_lines(&bytes[..good_end]);
    let chain = match lines.last() {
        Some(last) => {
            let (seq, hash, prev) = checked_line(last).map_err(|m| corrupt(format!("last record: {m}")))?;
            if lines.len() >= 2 {
                let (before_seq, before_hash, _) =
                    checked_line(lines[lines.len() - 2]).map_err(|m| corrupt(format!("second-to-last record: {m}")))?;
                if before_hash != prev || before_seq + 1 != seq {
                    return Err(corrupt(format!(
                        "the last record (seq {seq}) does not chain to the one before it (seq {before_seq})"
                    )));
                }
            }
            let (first, ..) = checked_line(lines[0]).map_err(|m| corrupt(format!("first record: {m}")))?;
            if first != *first_seq {
                return Err(corrupt(format!(
                    "segment name says first seq {first_seq}, its first record has seq {first}"
                )));
            }
            Chain {
                seq,
                hash,
                since_checkpoint: 0,
            }
        }
        None if segments.len() >= 2 => {
            // The last segment holds nothing valid: continue from the one before.
            let prev_path = &segments[segments.len() - 2].1;
            let end = read_closed(prev_path)?;
            let last = match end.last {
                Some(l) if end.complete => l,
                _ => {
                    return Err(AuditError::Corrupt {
                        path: prev_path.clone(),
                        message: "a closed segment ends with an incomplete line; run `phigate audit verify`"
                            .into(),
                    })
                }
            };
            let (seq, hash, _) = checked_line(&last).map_err(|m| AuditError::Corrupt {
                path: prev_path.clone(),
                message: format!("last record: {m}"),
            })?;
            Chain {
                seq,
                hash,
                since_checkpoint: 0,
            }
        }
        None if *first_seq == 1 => Chain {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            since_checkpoint: 0,
        },
        None => {
            return Err(corrupt(format!(
                "the only segment starts at seq {first_seq} but holds no complete record, so the chain cannot be continued (keep the segment before an empty last segment)"
            )))
        }
    };
    if lines.is_empty() && chain.seq + 1 != *first_seq {
        return Err(corrupt(format!(
            "empty last segment is named for seq {first_seq} but the chain ends at seq {}",
            chain.seq
        )));
    }
    Ok(Tail {
        segment: name,
        len: bytes.len() as u64,
        chain,
        torn,
    })
}

/// The last segment is compressed (closed): the chain continues from its
/// last line into a new segment. Nothing is cut from a compressed segment.
fn compressed_tail(first_seq: u64, path: &Path) -> Result<Tail, AuditError> {
    let corrupt = |message: String| AuditError::Corrupt {
        path: path.to_path_buf(),
        message: format!("{message}; run `phigate audit verify` and investigate before restarting"),
    };
    let end = read_closed(path)?;
    let (Some(first), Some(last), true) = (end.first, end.last, end.complete) else {
        return Err(corrupt(
            "a compressed segment is empty or ends with an incomplete line".into(),
        ));
    };
    let (seq, hash, prev) = checked_line(&last).map_err(|m| corrupt(format!("last record: {m}")))?;
    if let Some(before) = end.before_last {
        let (before_seq, before_hash, _) =
            checked_line(&before).map_err(|m| corrupt(format!("second-to-last record: {m}")))?;
        if before_hash != prev || before_seq + 1 != seq {
            return Err(corrupt(format!(
                "the last record (seq {seq}) does not chain to the one before it (seq {before_seq})"
            )));
        }
    }
    let (first, ..) = checked_line(&first).map_err(|m| corrupt(format!("first record: {m}")))?;
    if first != first_seq {
        return Err(corrupt(format!(
            "segment name says first seq {first_seq}, its first record has seq {first}"
        )));
    }
    Ok(Tail {
        segment: segment_file_name(seq + 1),
        len: 0,
        chain: Chain {
            seq,
            hash,
            since_checkpoint: 0,
        },
        torn: None,
    })
}

/// The first and last two lines of a closed segment (plain or compressed),
/// read as a stream.
struct ClosedEnd {
    first: Option<Vec<u8>>,
    before_last: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    /// It ends with `\n` (or is empty).
    complete: bool,
}

fn read_closed(path: &Path) -> Result<ClosedEnd, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = open_segment(path).map_err(io)?;
    let mut end = ClosedEnd {
        first: None,
        before_last: None,
        last: None,
        complete: true,
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match reader.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) if reader.is_compressed() => {
                return Err(AuditError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!(
                        "compressed segment cannot be decoded ({e}); run `phigate audit verify`"
                    ),
                })
            }
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Ok(end);
        }
        end.complete = buf.ends_with(b"\n");
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf).to_vec();
        if end.first.is_none() {
            end.first = Some(line.clone());
        }
        end.before_last = end.last.replace(line);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The end of the last complete line that is a JSON object.
fn good_end(bytes: &[u8]) -> usize {
    let mut end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    while end > 0 {
        let start = bytes[..end - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes[start..end - 1])
            .is_ok()
        {
            break;
        }
        end = start;
    }
    end
}

/// The `\n`-terminated lines (without their `\n`); a trailing partial line is left out.
fn complete_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    lines.pop(); // after the last `\n`: empty, or a partial line
    lines
}

/// Parse a line and check its own hash: `(seq, hash, prev_hash)`.
fn checked_line(line: &[u8]) -> Result<(u64, String, String), String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let seq = map
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no seq")?;
    let prev = map
        .get("prev_hash")
        .and_then(serde_json::Value::as_str)
        .ok_or("no prev_hash")?
        .to_owned();
    let (stored, computed) = chain::check_line(map).ok_or("no hash")?;
    if stored != computed {
        return Err(format!("seq {seq}: hash mismatch (the record was altered)"));
    }
    Ok((seq, stored, prev))
}
