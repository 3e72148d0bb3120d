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
//! - A closed (rotated) segment may be replaced by its zstd-compressed form,
//!   `segment-<first seq>.jsonl.zst`: one zstd frame holding exactly the
//!   bytes of the `.jsonl` file. The writer creates the `.zst` completely
//!   (temporary file, `fsync`, rename) before it removes the `.jsonl`, so
//!   both may exist for a moment (or after a crash): they are the same
//!   segment, and the plain one is read. Compressed segments are decoded as a
//!   stream; offsets below are offsets in the JSONL text, so a reader in the
//!   middle of a segment that gets compressed carries on in the `.zst`.
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

/// A compressed segment being decoded.
type Decoder = zstd::stream::read::Decoder<'static, BufReader<File>>;

use serde_json::Value;

use crate::Error;

/// File-name prefix of a spool segment.
pub const SEGMENT_PREFIX: &str = "segment-";
/// File-name suffix of a spool segment.
pub const SEGMENT_SUFFIX: &str = ".jsonl";
/// File-name suffix of a compressed (closed) spool segment.
pub const COMPRESSED_SEGMENT_SUFFIX: &str = ".jsonl.zst";
/// Directory (inside the spool) holding the per-sink cursor files.
pub const CURSOR_DIR: &str = "cursors";

/// The first seq of a segment, from its file name (`segment-` + exactly 20
/// digits + `.jsonl` or `.jsonl.zst`); `None` for any other file.
pub fn segment_first_seq(file_name: &str) -> Option<u64> {
    let rest = file_name.strip_prefix(SEGMENT_PREFIX)?;
    let digits = rest
        .strip_suffix(COMPRESSED_SEGMENT_SUFFIX)
        .or_else(|| rest.strip_suffix(SEGMENT_SUFFIX))?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a segment file name is the compressed form (`.jsonl.zst`).
pub fn is_compressed_segment(file_name: &str) -> bool {
    segment_first_seq(file_name).is_some() && file_name.ends_with(COMPRESSED_SEGMENT_SUFFIX)
}

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The file name of the compressed form of that segment.
pub fn compressed_segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{COMPRESSED_SEGMENT_SUFFIX}")
}

/// The segments of `dir`, ordered by first seq, one per seq (the plain file
/// when both forms exist). A missing directory has none.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::io(dir, source)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::io(dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = segment_first_seq(name) {
            segments.push((first, is_compressed_segment(name), entry.path()));
        }
    }
    segments.sort_by_key(|(first, compressed, _)| (*first, *compressed));
    segments.dedup_by_key(|(first, ..)| *first);
    Ok(segments
        .into_iter()
        .map(|(first, _, path)| (first, path))
        .collect())
}

/// Open a compressed segment for decoding.
fn open_decoder(path: &Path) -> std::io::Result<BufReader<Decoder>> {
    Ok(BufReader::with_capacity(
        64 * 1024,
        Decoder::new(File::open(path)?)?,
    ))
}

/// One spool line, as read: the raw JSON text (forwarded byte for byte, so
/// receivers can re-check `hash`) and the parsed value.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub seq: u64,
    /// Unique id of the record: the de-duplication key for receivers.
    pub event_id: String,
    /// `access`, `logout`, `recovery` or `checkpoint` (readers pass on
    /// kinds they do not know).
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
    /// Offset in the segment's JSONL text just after the last consumed line
    /// (for a compressed segment: in the decoded text).
    offset: u64,
    /// Whether a record at or past the cursor has been seen in this segment
    /// (before that, records below the cursor are expected and skipped).
    positioned: bool,
    /// The file is the compressed form.
    compressed: bool,
    /// A compressed segment's decoder, kept between calls, positioned at
    /// `offset` (compressed segments never change).
    stream: Option<Stream>,
}

struct Stream(BufReader<Decoder>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
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
            compressed: is_compressed_segment(&name),
            path,
            name,
            offset: 0,
            positioned: false,
            stream: None,
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
        if !pos.compressed {
            match File::open(&pos.path) {
                Ok(file) => return read_plain(file, pos, &self.dir, &mut self.next_seq, max, out),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let zst = pos
                        .path
                        .with_file_name(compressed_segment_file_name(pos.first_seq));
                    if !zst.is_file() {
                        // Deleted under us (it should have been fully
                        // acknowledged): locate again; a gap, if any, is
                        // reported there.
                        tracing::warn!(segment = %pos.name, "audit spool segment disappeared while being read");
                        self.current = None;
                        return Ok(LineStop::End { partial: false });
                    }
                    // Compressed while we were reading it: carry on at the
                    // same offset of the same text.
                    tracing::debug!(segment = %pos.name, offset = pos.offset, "audit spool segment was compressed; reading on in the .zst");
                    pos.name = compressed_segment_file_name(pos.first_seq);
                    pos.path = zst;
                    pos.compressed = true;
                }
                Err(source) => return Err(Error::io(&pos.path, source)),
            }
        }
        let mut stream = match pos.stream.take() {
            Some(s) => s,
            None => match open_decoder(&pos.path) {
                Ok(mut reader) => {
                    let skipped = std::io::copy(&mut (&mut reader).take(pos.offset), &mut std::io::sink())
                        .map_err(|source| Error::io(&pos.path, source))?;
                    if skipped < pos.offset {
                        return Err(Error::Spool(format!(
                            "compressed segment {} is shorter than the read position ({} < {})",
                            pos.name, skipped, pos.offset
                        )));
                    }
                    Stream(reader)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(segment = %pos.name, "audit spool segment disappeared while being read");
                    self.current = None;
                    return Ok(LineStop::End { partial: false });
                }
                Err(source) => return Err(Error::io(&pos.path, source)),
            },
        };
        let result = read_lines(&mut stream.0, pos, &self.dir, &mut self.next_seq, max, out);
        // Keep the decoder only where it stands exactly at `offset`.
        if matches!(result, Ok(LineStop::Full | LineStop::End { partial: false })) {
            pos.stream = Some(stream);
        }
        result
    }
}

/// Read complete lines of a plain segment from the position's offset.
fn read_plain(
    mut file: File,
    pos: &mut Position,
    dir: &Path,
    next_seq: &mut u64,
    max: usize,
    out: &mut ReadOutcome,
) -> Result<LineStop, Error> {
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
    read_lines(&mut reader, pos, dir, next_seq, max, out)
}

/// Consume complete lines from `reader` (standing at `pos.offset`).
fn read_lines(
    reader: &mut impl BufRead,
    pos: &mut Position,
    dir: &Path,
    next_seq: &mut u64,
    max: usize,
    out: &mut ReadOutcome,
) -> Result<LineStop, Error> {
    let mut buf = Vec::new();
    loop {
        if out.records.len() >= max {
            return Ok(LineStop::Full);
        }
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|source| {
            if pos.compressed {
                tracing::error!(segment = %pos.name, offset = pos.offset, error = %source, "compressed audit spool segment cannot be decoded");
            }
            Error::io(&pos.path, source)
        })?;
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
        if record.seq < *next_seq {
            if pos.positioned {
                tracing::warn!(
                    segment = %pos.name,
                    seq = record.seq,
                    expected = *next_seq,
                    "audit spool seq went backwards; skipping the repeated record"
                );
            }
            pos.offset += line_len;
            continue;
        }
        pos.positioned = true;
        if record.seq > *next_seq {
            let gap = Gap {
                expected: *next_seq,
                found: record.seq,
                segment: pos.name.clone(),
            };
            tracing::error!(
                spool = %dir.display(),
                missing_from = gap.expected,
                missing_to = record.seq - 1,
                missing = gap.missing(),
                segment = %pos.name,
                "audit spool gap inside a segment: records are missing and cannot be forwarded"
            );
            out.gaps.push(gap);
        }
        *next_seq = record.seq + 1;
        pos.offset += line_len;
        out.records.push(record);
    }
}

/// The seq of the last complete record in the spool (0 when empty), from the
/// tail of the newest segment. Used for the lag metric.
pub fn spool_last_seq(dir: &Path) -> Result<u64, Error> {
    let segments = list_segments(dir)?;
    let Some((first, path)) = segments.last() else {
        return Ok(0);
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if is_compressed_segment(name) {
        return compressed_last_seq(*first, path);
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let zst = path.with_file_name(compressed_segment_file_name(*first));
            if zst.is_file() {
                return compressed_last_seq(*first, &zst);
            }
            return Ok(first.saturating_sub(1));
        }
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

/// The seq of the last complete line of a compressed segment (decoded as a
/// stream; the newest segment is normally plain, so this is rare).
fn compressed_last_seq(first: u64, path: &Path) -> Result<u64, Error> {
    let mut reader = open_decoder(path).map_err(|source| Error::io(path, source))?;
    let mut buf = Vec::new();
    let mut last = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| Error::io(path, source))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        std::mem::swap(&mut last, &mut buf);
    }
    let seq = serde_json::from_slice::<Value>(last.strip_suffix(b"\n").unwrap_or(&last))
        .ok()
        .and_then(|v| v.get("seq").and_then(Value::as_u64));
    Ok(seq.unwrap_or(first.saturating_sub(1)))
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

#[cfg(test)]
mod compressed_tests {
    //! The reader over compressed (`.jsonl.zst`) segments.

    use super::*;
    use crate::testing::TestSpool;

    fn seqs(records: &[SpoolRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// Compress segment `first` as the writer does; keep the plain file or not.
    fn compress(dir: &Path, first: u64, keep_plain: bool) {
        let plain = dir.join(segment_file_name(first));
        let bytes = std::fs::read(&plain).unwrap();
        let zst = zstd::stream::encode_all(&bytes[..], 3).unwrap();
        std::fs::write(dir.join(compressed_segment_file_name(first)), zst).unwrap();
        if !keep_plain {
            std::fs::remove_file(plain).unwrap();
        }
    }

    fn read_all(r: &mut SpoolReader, batch: usize) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let out = r.read_available(batch).unwrap();
            assert!(out.gaps.is_empty(), "{:?}", out.gaps);
            if out.records.is_empty() {
                return got;
            }
            got.extend(seqs(&out.records));
        }
    }

    #[test]
    fn names_of_both_forms_parse() {
        assert_eq!(segment_first_seq(&compressed_segment_file_name(42)), Some(42));
        assert!(is_compressed_segment(&compressed_segment_file_name(42)));
        assert!(!is_compressed_segment(&segment_file_name(42)));
        assert_eq!(
            segment_first_seq(".segment-00000000000000000042.jsonl.zst.tmp"),
            None
        );
        assert_eq!(
            segment_first_seq("segment-00000000000000000042.jsonl.zst.tmp"),
            None
        );
    }

    #[test]
    fn reads_in_order_across_compressed_and_plain_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = TestSpool::new(d, 4).unwrap();
        w.append_access(20).unwrap(); // segments 1, 5, 9, 13, 17
        compress(d, 1, false);
        compress(d, 9, false);
        compress(d, 13, false);
        assert_eq!(list_segments(d).unwrap().len(), 5);
        for batch in [1, 3, 100] {
            let mut r = SpoolReader::new(d, 0);
            assert_eq!(
                read_all(&mut r, batch),
                (1..=20).collect::<Vec<_>>(),
                "batch {batch}"
            );
            assert_eq!(r.next_seq(), 21);
        }
        // A cursor in the middle of a compressed segment.
        let mut r = SpoolReader::new(d, 10);
        assert_eq!(read_all(&mut r, 2), (11..=20).collect::<Vec<_>>());
        // Tailing goes on in the plain current segment.
        w.append_access(2).unwrap();
        assert_eq!(seqs(&r.read_available(100).unwrap().records), [21, 22]);
        assert_eq!(spool_last_seq(d).unwrap(), 22);
    }

    #[test]
    fn a_segment_compressed_while_being_read_is_read_on_without_gap_or_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = TestSpool::new(d, 6).unwrap();
        w.append_access(14).unwrap(); // segments 1, 7, 13
        let mut r = SpoolReader::new(d, 0);
        assert_eq!(seqs(&r.read_available(2).unwrap().records), [1, 2]);
        // The writer compresses segment 1 (a lagging sink is in the middle of it).
        compress(d, 1, false);
        assert_eq!(seqs(&r.read_available(3).unwrap().records), [3, 4, 5]);
        // The same for segment 7, caught between the two steps too.
        assert_eq!(seqs(&r.read_available(3).unwrap().records), [6, 7, 8]);
        compress(d, 7, true);
        assert_eq!(seqs(&r.read_available(2).unwrap().records), [9, 10]);
        std::fs::remove_file(d.join(segment_file_name(7))).unwrap();
        assert_eq!(read_all(&mut r, 1), (11..=14).collect::<Vec<_>>());
    }

    #[test]
    fn both_forms_of_a_segment_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = TestSpool::new(d, 5).unwrap();
        w.append_access(12).unwrap();
        compress(d, 1, true);
        compress(d, 6, true);
        assert_eq!(list_segments(d).unwrap().len(), 3);
        let mut r = SpoolReader::new(d, 0);
        assert_eq!(read_all(&mut r, 4), (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_corrupt_compressed_segment_stops_the_reader_and_is_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = TestSpool::new(d, 5).unwrap();
        w.append_access(12).unwrap();
        compress(d, 6, false);
        let zst = d.join(compressed_segment_file_name(6));
        let bytes = std::fs::read(&zst).unwrap();
        std::fs::write(&zst, &bytes[..bytes.len() / 2]).unwrap();
        let mut r = SpoolReader::new(d, 0);
        let first = r.read_available(100).unwrap();
        assert_eq!(seqs(&first.records)[..5], [1, 2, 3, 4, 5]);
        // Whatever decoded before the damage was returned; then it stops, every time.
        for _ in 0..2 {
            assert!(r.read_available(100).is_err());
        }
        assert!(r.next_seq() <= 11);
    }

    #[test]
    fn the_last_seq_of_a_spool_ending_in_a_compressed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = TestSpool::new(d, 5).unwrap();
        w.append_access(10).unwrap(); // segments 1 and 6
        compress(d, 6, false);
        assert_eq!(spool_last_seq(d).unwrap(), 10);
        compress(d, 1, false);
        assert_eq!(
            read_all(&mut SpoolReader::new(d, 0), 3),
            (1..=10).collect::<Vec<_>>()
        );
    }
}
