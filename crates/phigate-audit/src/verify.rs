//! `phigate audit verify`: walk the hash chain of spool segments, plain or
//! zstd-compressed (decoded as a stream).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::chain::{self, GENESIS_HASH};
use crate::checkpoint::VerifyKey;
use crate::record::{RecordBody, SpoolRecord, SCHEMA_VERSION};
use crate::segment::{list_segments, open_segment, parse_segment_file_name, parse_segment_name};
use crate::AuditError;

/// The result of walking the chain. `problem` is the first bad record, if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub segments: Vec<SegmentSummary>,
    /// Lines checked (every kind).
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// The chain starts after seq 1 (earlier segments not given, or removed
    /// by retention): its first `prev_hash` is taken on trust.
    pub starts_mid_chain: bool,
    /// Crash recoveries: byte ranges cut from torn segment tails.
    pub recoveries: Vec<RecoveryGap>,
    pub checkpoints: CheckpointSummary,
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SegmentSummary {
    pub file: String,
    /// The file is zstd-compressed.
    pub compressed: bool,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryGap {
    /// Where the `recovery` record is (`file:line`).
    pub at: String,
    pub seq: u64,
    pub ts: String,
    /// The segment whose tail was cut, and the byte range removed.
    pub segment: String,
    pub truncated_from: u64,
    pub truncated_to: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckpointSummary {
    pub count: u64,
    /// Signatures checked and valid.
    pub verified: u64,
    /// Signatures not checked (no `--checkpoint-key` given).
    pub unchecked: u64,
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last checkpoint: their removal from the tail could
    /// not be detected. `None` when there is no checkpoint at all.
    pub records_after_last: Option<u64>,
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub seq: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "{}:{} (seq {seq}): {}", self.file, self.line, self.message),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.message),
        }
    }
}

/// The segment files named by `paths` (spool directories or segment files),
/// in chain order: by the first seq in the file name, else by the first
/// record's seq. A directory without segments is an error. Of a segment
/// given in both forms (`.jsonl` and `.jsonl.zst`, e.g. a compression
/// interrupted by a crash) only the plain file is kept.
pub fn segment_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for p in paths {
        let io = |source| AuditError::Io {
            path: p.clone(),
            source,
        };
        let meta = std::fs::metadata(p).map_err(io)?;
        if meta.is_dir() {
            let segs = list_segments(p).map_err(io)?;
            if segs.is_empty() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no segment-<seq>.jsonl(.zst) files in this directory",
                )));
            }
            files.extend(segs);
        } else {
            let seq = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .or_else(|| first_seq(p))
                .unwrap_or(u64::MAX);
            files.push((seq, p.clone()));
        }
    }
    files.sort();
    let mut seen = std::collections::HashSet::new();
    files.retain(|(_, p)| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    // Both forms of one segment: keep the plain one.
    let plain: std::collections::HashSet<PathBuf> = files
        .iter()
        .filter(|(_, p)| name_form(p).is_some_and(|(_, compressed)| !compressed))
        .map(|(_, p)| p.clone())
        .collect();
    files.retain(|(_, p)| match name_form(p) {
        Some((seq, true)) => !plain.contains(&p.with_file_name(crate::segment::segment_file_name(seq))),
        _ => true,
    });
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

fn name_form(path: &Path) -> Option<(u64, bool)> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_file_name)
}

fn first_seq(path: &Path) -> Option<u64> {
    let mut line = String::new();
    open_segment(path).ok()?.read_line(&mut line).ok()?;
    serde_json::from_str::<Value>(&line).ok()?.get("seq")?.as_u64()
}

/// Verify the chain across `paths`. `keys` check checkpoint signatures
/// (matched by `key_id`); with no keys, signatures are counted as unchecked.
/// I/O errors (a path that cannot be read) are errors; everything wrong
/// with the content is the report's `problem`.
pub fn verify(paths: &[PathBuf], keys: &[VerifyKey]) -> Result<VerifyReport, AuditError> {
    let files = segment_files(paths)?;
    let keys: BTreeMap<&str, &VerifyKey> = keys.iter().map(|k| (k.key_id(), k)).collect();
    let mut w = Walk {
        report: VerifyReport::default(),
        keys,
        prev: None,
    };
    for path in &files {
        let display = path.display().to_string();
        let name_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_name);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let mut reader = open_segment(path).map_err(io)?;
        w.report.segments.push(SegmentSummary {
            file: display.clone(),
            compressed: reader.is_compressed(),
            ..SegmentSummary::default()
        });
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if reader.is_compressed() => {
                    w.report.problem = Some(Problem {
                        file: display.clone(),
                        line: line_no + 1,
                        seq: None,
                        message: format!(
                            "compressed segment cannot be decoded ({e}): the file is truncated or corrupt"
                        ),
                    });
                    return Ok(w.finish());
                }
                Err(e) => return Err(io(e)),
            }
            line_no += 1;
            if let Err(p) = w.line(&display, line_no, name_seq, &buf) {
                w.report.problem = Some(p);
                return Ok(w.finish());
            }
        }
    }
    Ok(w.finish())
}

struct Prev {
    file: String,
    line: u64,
    seq: u64,
    hash: String,
    text: Vec<u8>,
}

struct Walk<'k> {
    report: VerifyReport,
    keys: BTreeMap<&'k str, &'k VerifyKey>,
    prev: Option<Prev>,
}

impl Walk<'_> {
    fn line(&mut self, file: &str, line: u64, name_seq: Option<u64>, raw: &[u8]) -> Result<(), Problem> {
        let problem = |seq: Option<u64>, message: String| Problem {
            file: file.to_owned(),
            line,
            seq,
            message,
        };
        let Some(text) = raw.strip_suffix(b"\n") else {
            return Err(problem(
                None,
                "incomplete line (no newline at the end): the segment was truncated mid-line, or a torn write was not yet recovered".into(),
            ));
        };
        let mut map: Map<String, Value> =
            serde_json::from_slice(text).map_err(|e| problem(None, format!("not a JSON object: {e}")))?;
        let seq = map.get("seq").and_then(Value::as_u64);
        let stored = match map.remove("hash") {
            Some(Value::String(h)) if chain::is_hash(&h) => h,
            _ => return Err(problem(seq, "no valid `hash` (64 lowercase hex digits)".into())),
        };
        let prev_hash = match map.get("prev_hash").and_then(Value::as_str) {
            Some(h) if chain::is_hash(h) => h.to_owned(),
            _ => {
                return Err(problem(
                    seq,
                    "no valid `prev_hash` (64 lowercase hex digits)".into(),
                ))
            }
        };
        let value = Value::Object(map);
        let computed = chain::record_hash(&prev_hash, &value);
        if computed != stored {
            return Err(problem(
                seq,
                format!("hash mismatch: the record was altered (stored {stored}, computed {computed})"),
            ));
        }
        let Value::Object(mut map) = value else {
            return Err(problem(seq, "not a JSON object".into()));
        };
        map.insert("hash".into(), Value::String(stored.clone()));
        let record: SpoolRecord = serde_json::from_value(Value::Object(map))
            .map_err(|e| problem(seq, format!("does not match the record schema: {e}")))?;
        let seq = record.seq;
        if record.v != SCHEMA_VERSION {
            return Err(problem(
                Some(seq),
                format!("unsupported schema version v={}", record.v),
            ));
        }

        match &self.prev {
            Some(prev) => {
                let at = |p: &Prev| format!("{}:{}", p.file, p.line);
                if prev.text == text {
                    return Err(problem(
                        Some(seq),
                        format!("duplicated line: identical to the previous record ({})", at(prev)),
                    ));
                }
                let expected = prev.seq + 1;
                let boundary = if prev.file != file {
                    format!(
                        " (first record of this segment; the previous segment ends at seq {} with {})",
                        prev.seq,
                        at(prev)
                    )
                } else {
                    String::new()
                };
                if seq > expected {
                    return Err(problem(
                        Some(seq),
                        format!(
                            "seq gap: expected {expected}, found {seq}: records {expected}..{} are missing (deleted, reordered, or a segment removed or truncated){boundary}",
                            seq - 1
                        ),
                    ));
                }
                if seq < expected {
                    return Err(problem(
                        Some(seq),
                        format!("seq {seq} out of order: expected {expected} (records reordered, duplicated or inserted){boundary}"),
                    ));
                }
                if record.prev_hash != prev.hash {
                    return Err(problem(
                        Some(seq),
                        format!(
                            "prev_hash does not match the hash of the previous record ({}): a record was inserted, replaced or reordered{boundary}",
                            at(prev)
                        ),
                    ));
                }
            }
            None => {
                if seq == 1 && record.prev_hash != GENESIS_HASH {
                    return Err(problem(
                        Some(seq),
                        "the first record's prev_hash must be 64 zeros".into(),
                    ));
                }
                self.report.starts_mid_chain = seq != 1;
                self.report.first_seq = Some(seq);
            }
        }
        let summary = self.report.segments.last_mut();
        if let Some(s) = summary {
            if s.first_seq.is_none() {
                if let Some(n) = name_seq.filter(|n| *n != seq) {
                    return Err(problem(
                        Some(seq),
                        format!("segment file name says first seq {n}, but its first record has seq {seq} (records removed from its start, or the file renamed)"),
                    ));
                }
                s.first_seq = Some(seq);
            }
            s.last_seq = Some(seq);
            s.records += 1;
        }

        match &record.body {
            RecordBody::Access(_) | RecordBody::Logout(_) => {}
            RecordBody::Recovery(r) => self.report.recoveries.push(RecoveryGap {
                at: format!("{file}:{line}"),
                seq,
                ts: r.ts.clone(),
                segment: r.segment.clone(),
                truncated_from: r.truncated_from,
                truncated_to: r.truncated_to,
                reason: r.reason.clone(),
            }),
            RecordBody::Checkpoint(c) => {
                if c.covers_seq + 1 != seq || c.covers_hash != record.prev_hash {
                    return Err(problem(
                        Some(seq),
                        format!(
                            "checkpoint covers seq {} but does not sign the record before it",
                            c.covers_seq
                        ),
                    ));
                }
                let cp = &mut self.report.checkpoints;
                if self.keys.is_empty() {
                    cp.unchecked += 1;
                } else {
                    let Some(key) = self.keys.get(c.key_id.as_str()) else {
                        return Err(problem(
                            Some(seq),
                            format!(
                                "checkpoint signed by key id {} which is not among the given keys",
                                c.key_id
                            ),
                        ));
                    };
                    if !key.verify(&c.covers_hash, &c.signature) {
                        return Err(problem(
                            Some(seq),
                            format!("checkpoint signature is invalid (key id {})", c.key_id),
                        ));
                    }
                    cp.verified += 1;
                }
                cp.count += 1;
                cp.last_checkpoint_seq = Some(seq);
            }
        }
        self.report.records += 1;
        self.report.last_seq = Some(seq);
        self.report.last_hash = Some(stored.clone());
        self.prev = Some(Prev {
            file: file.to_owned(),
            line,
            seq,
            hash: stored,
            text: text.to_vec(),
        });
        Ok(())
    }

    fn finish(mut self) -> VerifyReport {
        let r = &mut self.report;
        r.ok = r.problem.is_none();
        if let (Some(cp), Some(last)) = (r.checkpoints.last_checkpoint_seq, r.last_seq) {
            r.checkpoints.records_after_last = Some(last.saturating_sub(cp));
        }
        self.report
    }
}

impl VerifyReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "segments: {}", self.segments.len());
        for s in &self.segments {
            let range = match (s.first_seq, s.last_seq) {
                (Some(a), Some(b)) => format!("seq {a}..{b}"),
                _ => "empty".into(),
            };
            let zstd = if s.compressed { " (zstd)" } else { "" };
            let _ = writeln!(out, "  {}{zstd}: {} record(s), {range}", s.file, s.records);
        }
        let (records, last) = match self.problem {
            None => ("records", "last hash"),
            Some(_) => ("records verified before the failure", "last good hash"),
        };
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => {
                let _ = writeln!(out, "{records}: {} (seq {a}..{b})", self.records);
            }
            _ => {
                let _ = writeln!(out, "{records}: {}", self.records);
            }
        }
        if let Some(h) = &self.last_hash {
            let _ = writeln!(out, "{last}: {h}");
        }
        if self.starts_mid_chain {
            let _ = writeln!(
                out,
                "note: the chain starts at seq {} (earlier segments not given or removed by retention); its first prev_hash is taken on trust",
                self.first_seq.unwrap_or_default()
            );
        }
        let _ = writeln!(out, "recovery gaps: {}", self.recoveries.len());
        for g in &self.recoveries {
            let _ = writeln!(
                out,
                "  {} (seq {}, {}): bytes {}..{} of {} were cut on start ({})",
                g.at, g.seq, g.ts, g.truncated_from, g.truncated_to, g.segment, g.reason
            );
        }
        let cp = &self.checkpoints;
        match cp.records_after_last {
            None => {
                let _ = writeln!(
                    out,
                    "checkpoints: none (records removed from the end of the spool cannot be detected)"
                );
            }
            Some(after) => {
                let sigs = if cp.unchecked > 0 {
                    format!("{} signature(s) not checked (no --checkpoint-key)", cp.unchecked)
                } else {
                    format!("{} signature(s) valid", cp.verified)
                };
                let _ = writeln!(
                    out,
                    "checkpoints: {}, {sigs}; records after last checkpoint: {after}",
                    cp.count
                );
            }
        }
        match &self.problem {
            None => out.push_str("OK: the chain is intact\n"),
            Some(p) => {
                let _ = writeln!(out, "FAILED: {p}");
            }
        }
        out
    }
}
