//! Reading the audit spool through its file-format contract, and the
//! per-sink cursors.
//!
//! This module deliberately does not use `phigate-audit`'s Rust API: the
//! spool is a directory of files, and the contract below is the interface.
//!
//! - A spool is a directory of segments `segment-<first seq, 20 digits>.jsonl`,
//!   append-only, one JSON object per `\n`-terminated line. The last line of
//!   the newest segment may still be being written: a line is consumed only
//!   once its `\n` is there.
//! - Every line carries `v`, `kind`, `seq` (1, 2, … across segments),
//!   `event_id`, `ts`, `prev_hash`, `hash`.
//! - Operators may delete old segments, but only ones every sink has
//!   acknowledged. A segment deleted too early shows up here as a *gap* in
//!   `seq`, which is reported loudly (see [`Gap`]).
//! - `<spool>/cursors/<sink>.json` = `{"seq": N}`: the last seq the sink has
//!   acknowledged, replaced atomically; absent means 0.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Error;

/// File-name prefix of a spool segment.
pub const SEGMENT_PREFIX: &str = "segment-";
/// File-name suffix of a spool segment.
pub const SEGMENT_SUFFIX: &str = ".jsonl";
/// Directory (inside the spool) holding the per-sink cursor files.
pub const CURSOR_DIR: &str = "cursors";

/// The first seq of a segment, from its file name (`segment-` + exactly 20
/// digits + `.jsonl`); `None` for any other file.
pub fn segment_first_seq(file_name: &str) -> Option<u64> {
    let digits = file_name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segments of `dir`, ordered by first seq. A missing directory has none.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::io(dir, source)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::io(dir, source))?;
        if let Some(first) = entry.file_name().to_str().and_then(segment_first_seq) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort_by_key(|(first, _)| *first);
    Ok(segments)
}

/// One spool line, as read: the raw JSON text (forwarded byte for byte, so
/// receivers can re-check `hash`) and the parsed value.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub seq: u64,
    /// Unique id of the record: the de-duplication key for receivers.
    pub event_id: String,
    /// `access`, `recovery` or `checkpoint`.
    pub kind: String,
    /// The line without its terminating `\n`.
    pub line: String,
    pub value: Value,
}

impl SpoolRecord {
    /// Parse one complete line (without its `\n`). Needs a JSON object with a
    /// numeric `seq`, a string `event_id` and a string `kind`.
    pub fn parse(line: &str) -> Result<SpoolRecord, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let seq = value
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or("no numeric `seq`")?;
        let event_id = value
            .get("event_id")
            .and_then(Value::as_str)
            .ok_or("no string `event_id`")?
            .to_owned();
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("no string `kind`")?
            .to_owned();
        Ok(SpoolRecord {
            seq,
            event_id,
            kind,
            line: line.to_owned(),
            value,
        })
    }
}

/// Records missing from the spool: the reader expected `expected` but the
/// next record it found was `found` (so `expected..found` are gone — a
/// segment deleted before every sink acknowledged it, or lines removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub found: u64,
    /// The segment (file name) where reading resumed.
    pub segment: String,
}

impl Gap {
    /// How many records are missing.
    pub fn missing(&self) -> u64 {
        self.found.saturating_sub(self.expected)
    }
}

/// What one [`SpoolReader::read_available`] call found.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Records in seq order, each exactly once.
    pub records: Vec<SpoolRecord>,
    /// Gaps crossed while reading (already logged at error level).
    pub gaps: Vec<Gap>,
}

#[derive(Debug)]
struct Position {
    first_seq: u64,
    path: PathBuf,
    name: String,
    /// Byte offset just after the last consumed line.
    offset: u64,
    /// Whether a record at or past the cursor has been seen in this segment
    /// (before that, records below the cursor are expected and skipped).
    positioned: bool,
}

/// Reads spool records in seq order, from a cursor on, across segments.
///
/// It is a plain, synchronous file reader: each [`read_available`] call
/// re-opens the current segment at the offset after the last consumed line
/// and returns whatever complete lines are there. Tailing is the caller
/// polling it (the [`Forwarder`](crate::Forwarder) does, off the async
/// runtime's worker threads).
///
/// [`read_available`]: SpoolReader::read_available
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    next_seq: u64,
    current: Option<Position>,
}

/// A line that ended this call's reading.
enum LineStop {
    /// `max` records collected.
    Full,
    /// No more complete lines; `partial` = bytes of an incomplete last line.
    End { partial: bool },
}

impl SpoolReader {
    /// A reader yielding the records after `cursor` (the last acknowledged
    /// seq; 0 = from the beginning).
    pub fn new(dir: impl Into<PathBuf>, cursor: u64) -> SpoolReader {
        SpoolReader {
            dir: dir.into(),
            next_seq: cursor.saturating_add(1),
            current: None,
        }
    }

    /// The seq of the next record this reader will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Up to `max` records that are completely written now, in seq order.
    /// Returns no records (not an error) when there is nothing new.
    ///
    /// A complete line that is not a valid record is an error: the reader
    /// stays in front of it (it is never skipped), so every later call fails
    /// the same way until an operator intervenes. Records read before it in
    /// the same call are returned first.
    pub fn read_available(&mut self, max: usize) -> Result<ReadOutcome, Error> {
        let mut out = ReadOutcome::default();
        let max = max.max(1);
        // Bounded: each pass either fills `out`, moves to a newer segment, or stops.
        loop {
            if self.current.is_none() && !self.locate(&mut out)? {
                return Ok(out);
            }
            let stop = match self.read_current(max, &mut out) {
                Ok(stop) => stop,
                Err(e) if out.records.is_empty() => return Err(e),
                Err(_) => return Ok(out), // report the bad line on the next call
            };
            let partial = match stop {
                LineStop::Full => return Ok(out),
                LineStop::End { partial } => partial,
            };
            // At the end of the current segment: move on only when a newer
            // segment exists (the writer rotates after a complete line), and
            // after one more read, for lines appended just before rotation.
            let Some(current) = self.current.as_ref() else {
                continue; // the segment vanished; locate again
            };
            let segments = list_segments(&self.dir)?;
            let Some((next_first, next_path)) = segments
                .iter()
                .find(|(first, _)| *first > current.first_seq)
                .cloned()
            else {
                return Ok(out);
            };
            let before = out.records.len();
            match self.read_current(max, &mut out) {
                Ok(LineStop::Full) => return Ok(out),
                Ok(LineStop::End {
                    partial: still_partial,
                }) => {
                    if out.records.len() > before {
                        continue;
                    }
                    if partial && still_partial {
                        if let Some(current) = self.current.as_ref() {
                            tracing::error!(
                                segment = %current.name,
                                offset = current.offset,
                                "audit spool segment ends with an incomplete line although a newer segment exists; \
                                 the incomplete bytes are not a record and are not forwarded"
                            );
                        }
                    }
                }
                Err(e) if out.records.is_empty() => return Err(e),
                Err(_) => return Ok(out),
            }
            self.open(next_first, next_path, &mut out);
        }
    }

    /// Choose the segment holding `next_seq`. `false` when the spool has no
    /// segment yet.
    fn locate(&mut self, out: &mut ReadOutcome) -> Result<bool, Error> {
        let segments = list_segments(&self.dir)?;
        if let Some((first, path)) = segments.iter().rev().find(|(first, _)| *first <= self.next_seq) {
            self.open(*first, path.clone(), out);
            return Ok(true);
        }
        match segments.first() {
            Some((first, path)) => {
                self.open(*first, path.clone(), out);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Start reading `path`; a segment starting after `next_seq` is a gap.
    fn open(&mut self, first_seq: u64, path: PathBuf, out: &mut ReadOutcome) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if first_seq > self.next_seq {
            self.gap(first_seq, &name, out);
        }
        self.current = Some(Position {
            first_seq,
            path,
            name,
            offset: 0,
            positioned: false,
        });
    }

    fn gap(&mut self, found: u64, segment: &str, out: &mut ReadOutcome) {
        let gap = Gap {
            expected: self.next_seq,
            found,
            segment: segment.to_owned(),
        };
        tracing::error!(
            spool = %self.dir.display(),
            missing_from = gap.expected,
            missing_to = found - 1,
            missing = gap.missing(),
            segment,
            "audit spool gap: records were deleted before this sink acknowledged them; \
             they cannot be forwarded (check segment retention against every sink's cursor)"
        );
        out.gaps.push(gap);
        self.next_seq = found;
    }

    /// Read complete lines of the current segment from its offset.
    fn read_current(&mut self, max: usize, out: &mut ReadOutcome) -> Result<LineStop, Error> {
        let Some(pos) = self.current.as_mut() else {
            return Ok(LineStop::End { partial: false });
        };
        let mut file = match File::open(&pos.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted under us (it should have been fully acknowledged):
                // locate again; a gap, if any, is reported there.
                tracing::warn!(segment = %pos.name, "audit spool segment disappeared while being read");
                self.current = None;
                return Ok(LineStop::End { partial: false });
            }
            Err(source) => return Err(Error::io(&pos.path, source)),
        };
        let len = file
            .metadata()
            .map_err(|source| Error::io(&pos.path, source))?
            .len();
        if len < pos.offset {
            return Err(Error::Spool(format!(
                "segment {} shrank below the read position ({} < {}): the spool was truncated behind the reader",
                pos.name, len, pos.offset
            )));
        }
        file.seek(SeekFrom::Start(pos.offset))
            .map_err(|source| Error::io(&pos.path, source))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let mut buf = Vec::new();
        loop {
            if out.records.len() >= max {
                return Ok(LineStop::Full);
            }
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|source| Error::io(&pos.path, source))?;
            if n == 0 {
                return Ok(LineStop::End { partial: false });
            }
            if buf.last() != Some(&b'\n') {
                return Ok(LineStop::End { partial: true });
            }
            let text = std::str::from_utf8(&buf[..n - 1]).map_err(|_| {
                Error::Spool(format!(
                    "segment {} at byte {}: line is not UTF-8",
                    pos.name, pos.offset
                ))
            })?;
            let record = SpoolRecord::parse(text).map_err(|m| {
                tracing::error!(segment = %pos.name, offset = pos.offset, "audit spool line is not a record: {m}");
                Error::Spool(format!(
                    "segment {} at byte {}: {m}; forwarding stops here (run `phigate audit verify`)",
                    pos.name, pos.offset
                ))
            })?;
            let line_len = n as u64;
            if record.seq < self.next_seq {
                if pos.positioned {
                    tracing::warn!(
                        segment = %pos.name,
                        seq = record.seq,
                        expected = self.next_seq,
                        "audit spool seq went backwards; skipping the repeated record"
                    );
                }
                pos.offset += line_len;
                continue;
            }
            pos.positioned = true;
            if record.seq > self.next_seq {
                let gap = Gap {
                    expected: self.next_seq,
                    found: record.seq,
                    segment: pos.name.clone(),
                };
                tracing::error!(
                    spool = %self.dir.display(),
                    missing_from = gap.expected,
                    missing_to = record.seq - 1,
                    missing = gap.missing(),
                    segment = %pos.name,
                    "audit spool gap inside a segment: records are missing and cannot be forwarded"
                );
                out.gaps.push(gap);
            }
            self.next_seq = record.seq + 1;
            pos.offset += line_len;
            out.records.push(record);
        }
    }
}

/// The seq of the last complete record in the spool (0 when empty), from the
/// tail of the newest segment. Used for the lag metric.
pub fn spool_last_seq(dir: &Path) -> Result<u64, Error> {
    let segments = list_segments(dir)?;
    let Some((first, path)) = segments.last() else {
        return Ok(0);
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(first.saturating_sub(1)),
        Err(source) => return Err(Error::io(path, source)),
    };
    let len = file.metadata().map_err(|source| Error::io(path, source))?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))
            .map_err(|source| Error::io(path, source))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)
            .map_err(|source| Error::io(path, source))?;
        // Drop the incomplete last line, then take the last complete one.
        let Some(end) = tail.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                return Ok(first.saturating_sub(1));
            }
            window *= 4;
            continue;
        };
        let complete = &tail[..end];
        let line_start = complete.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
        let line = match line_start {
            Some(i) => &complete[i..],
            None if start == 0 => complete,
            None => {
                window *= 4;
                continue;
            }
        };
        let seq = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("seq").and_then(Value::as_u64));
        return Ok(seq.unwrap_or(first.saturating_sub(1)));
    }
}

/// `<spool>/cursors/<sink>.json`.
pub fn cursor_path(spool_dir: &Path, sink: &str) -> PathBuf {
    spool_dir.join(CURSOR_DIR).join(format!("{sink}.json"))
}

/// The last seq `sink` acknowledged (0 when it has no cursor yet).
pub fn read_cursor(spool_dir: &Path, sink: &str) -> Result<u64, Error> {
    let path = cursor_path(spool_dir, sink);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(Error::io(&path, source)),
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .ok_or_else(|| {
            Error::Spool(format!(
                "{}: not a cursor (expected {{\"seq\": N}})",
                path.display()
            ))
        })
}

/// Replace `sink`'s cursor atomically: write a temp file, fsync it, rename
/// it over the cursor, fsync the directory.
pub fn write_cursor(spool_dir: &Path, sink: &str, seq: u64) -> Result<(), Error> {
    let dir = spool_dir.join(CURSOR_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| Error::io(&dir, source))?;
    let path = cursor_path(spool_dir, sink);
    let tmp = dir.join(format!(".{sink}.json.tmp"));
    {
        let mut f = File::create(&tmp).map_err(|source| Error::io(&tmp, source))?;
        f.write_all(format!("{{\"seq\":{seq}}}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| Error::io(&tmp, source))?;
    }
    std::fs::rename(&tmp, &path).map_err(|source| Error::io(&path, source))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::io(&dir, source))?;
    Ok(())
}
