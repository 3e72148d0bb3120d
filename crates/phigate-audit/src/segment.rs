//! Segment files and cursor files of a spool directory.
//!
//! A spool is a directory of `segment-<first seq, 20 digits>.jsonl` files;
//! closed segments may be compressed with zstd and then are named
//! `segment-<first seq>.jsonl.zst` (one zstd frame holding exactly the bytes
//! of the `.jsonl` file it replaces). Sinks keep their acknowledged position
//! in `cursors/<sink>.json` as `{"seq": N}`. Other files in the directory are
//! ignored.
//!
//! Every reader here decodes compressed segments as a stream
//! ([`open_segment`]): nothing is ever decompressed to disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// File-name suffix of a plain segment.
pub const SEGMENT_SUFFIX: &str = ".jsonl";
/// File-name suffix of a compressed (closed) segment.
pub const COMPRESSED_SEGMENT_SUFFIX: &str = ".jsonl.zst";
/// The first bytes of every zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The file name of the compressed form of that segment.
pub fn compressed_segment_file_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}{COMPRESSED_SEGMENT_SUFFIX}")
}

/// The first seq encoded in a segment file name (plain or compressed), if
/// it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_segment_file_name(name).map(|(seq, _)| seq)
}

/// The first seq encoded in a segment file name and whether the name is the
/// compressed form (`.jsonl.zst`).
pub fn parse_segment_file_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("segment-")?;
    let (digits, compressed) = match rest.strip_suffix(COMPRESSED_SEGMENT_SUFFIX) {
        Some(d) => (d, true),
        None => (rest.strip_suffix(SEGMENT_SUFFIX)?, false),
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, compressed))
}

/// One segment file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Named `.jsonl.zst`.
    pub compressed: bool,
}

/// Every segment file of a spool directory, sorted by first seq (plain
/// before compressed for the same seq). Both forms of one segment are listed
/// when both exist (a compression interrupted by a crash): use
/// [`list_segments`] to read the spool.
pub fn list_segment_files(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((first_seq, compressed)) = name.to_str().and_then(parse_segment_file_name) {
            if entry.file_type()?.is_file() {
                out.push(SegmentFile {
                    first_seq,
                    path: entry.path(),
                    compressed,
                });
            }
        }
    }
    out.sort_by_key(|f| (f.first_seq, f.compressed));
    Ok(out)
}

/// The segments of a spool directory, one per first seq, sorted. When a
/// segment exists in both forms (a crash between writing the compressed
/// copy and removing the plain one — both are complete), the plain file is
/// listed.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    for f in list_segment_files(dir)? {
        if out.last().is_some_and(|(seq, _)| *seq == f.first_seq) {
            continue;
        }
        out.push((f.first_seq, f.path));
    }
    Ok(out)
}

/// A segment opened for reading: plain, or decoded from zstd on the fly.
pub struct SegmentReader {
    inner: Box<dyn BufRead + Send>,
    compressed: bool,
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("compressed", &self.compressed)
            .finish_non_exhaustive()
    }
}

impl SegmentReader {
    /// The file is zstd-compressed (by content, whatever its name).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl BufRead for SegmentReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

/// Open a segment for reading its JSONL text. A zstd file (recognised by its
/// magic number, so a renamed archive works too) is decoded as a stream; a
/// decoding error (truncated or corrupt file) surfaces as an I/O error from
/// the reads. A plain `.jsonl` path that no longer exists is looked up as
/// `.jsonl.zst` (the segment was compressed between listing and opening).
pub fn open_segment(path: &Path) -> std::io::Result<SegmentReader> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match parse_segment_file_name(name) {
                Some((seq, false)) => {
                    File::open(path.with_file_name(compressed_segment_file_name(seq))).map_err(|_| e)?
                }
                _ => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    if got == magic.len() && magic == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::new(file)?;
        Ok(SegmentReader {
            inner: Box::new(BufReader::with_capacity(64 * 1024, decoder)),
            compressed: true,
        })
    } else {
        Ok(SegmentReader {
            inner: Box::new(BufReader::with_capacity(64 * 1024, file)),
            compressed: false,
        })
    }
}

/// The zstd level of compressed segments: fast, about 10× on audit records.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Compress a plain segment file into `dst` the way the spool does: one
/// zstd frame (level [`COMPRESSION_LEVEL`]) carrying the content size and a
/// checksum, `fsync`ed. Returns the compressed size. (Archiving tools may
/// use it; the spool itself also checks the result and renames it into
/// place atomically.)
pub fn compress_segment_file(src: &Path, dst: &Path) -> std::io::Result<u64> {
    compress_file(src, dst, &|| false)?.ok_or_else(|| std::io::Error::other("compression interrupted"))
}

/// [`compress_segment_file`], giving up (`Ok(None)`, `dst` left for the
/// caller to remove) when `abort` turns true between chunks.
pub(crate) fn compress_file(
    src: &Path,
    dst: &Path,
    abort: &dyn Fn() -> bool,
) -> std::io::Result<Option<u64>> {
    use std::io::Write;
    let mut input = File::open(src)?;
    let len = input.metadata()?.len();
    let mut enc = zstd::stream::write::Encoder::new(File::create(dst)?, COMPRESSION_LEVEL)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(len))?;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        if abort() {
            return Ok(None);
        }
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
    }
    let out = enc.finish()?;
    out.sync_all()?;
    Ok(Some(out.metadata()?.len()))
}

/// The uncompressed size recorded in a zstd file's frame header (phigate
/// writes it), `None` if the file is not zstd or the header has no size.
pub fn uncompressed_size(path: &Path) -> std::io::Result<Option<u64>> {
    let mut header = Vec::with_capacity(18);
    File::open(path)?.take(18).read_to_end(&mut header)?;
    if !header.starts_with(&ZSTD_MAGIC) {
        return Ok(None);
    }
    Ok(zstd::zstd_safe::get_frame_content_size(&header).ok().flatten())
}

/// The acknowledged seq of every sink (`cursors/<sink>.json`); empty when
/// there is no `cursors` directory. Unreadable cursor files are errors: a
/// retention decision must not be taken on a guess.
pub fn read_cursors(dir: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let cursors = dir.join("cursors");
    let entries = match std::fs::read_dir(&cursors) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let (Some(sink), Some("json")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let seq = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: expected {{\"seq\": N}}", path.display()),
                )
            })?;
        out.insert(sink.to_owned(), seq);
    }
    Ok(out)
}

/// One segment of a spool, as seen from the file names alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_seq: u64,
    /// The last seq, known from the next segment's name; `None` for the last
    /// segment (still being written).
    pub last_seq: Option<u64>,
    /// Size of `path` on disk (the compressed size for a compressed segment).
    pub bytes: u64,
    /// `path` is the zstd-compressed form (`.jsonl.zst`).
    pub compressed: bool,
    /// Size of the JSONL text: `bytes` for a plain segment, from the zstd
    /// frame header for a compressed one (`None` if the header has none).
    pub uncompressed_bytes: Option<u64>,
    /// Both forms of this segment exist (a compression interrupted by a
    /// crash; both are complete, phigate removes the plain one when it next
    /// runs): archive or delete this file together with `path`.
    pub other_copy: Option<PathBuf>,
    /// Every sink has acknowledged every record of this segment, and it is
    /// not the last segment.
    pub forwarded: bool,
}

/// The segments of a spool with what retention needs to know. With no sink
/// cursors, nothing counts as forwarded.
pub fn segment_infos(dir: &Path) -> std::io::Result<Vec<SegmentInfo>> {
    let files = list_segment_files(dir)?;
    let segments = list_segments(dir)?;
    let min_cursor = read_cursors(dir)?.into_values().min();
    let mut out = Vec::with_capacity(segments.len());
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let last_seq = segments.get(i + 1).map(|(next, _)| next.saturating_sub(1));
        let bytes = std::fs::metadata(path)?.len();
        let compressed = files.iter().any(|f| f.path == *path && f.compressed);
        let uncompressed_bytes = if compressed {
            uncompressed_size(path)?
        } else {
            Some(bytes)
        };
        let other_copy = files
            .iter()
            .find(|f| f.first_seq == *first_seq && f.path != *path)
            .map(|f| f.path.clone());
        let forwarded = matches!((last_seq, min_cursor), (Some(l), Some(c)) if l <= c);
        out.push(SegmentInfo {
            path: path.clone(),
            first_seq: *first_seq,
            last_seq,
            bytes,
            compressed,
            uncompressed_bytes,
            other_copy,
            forwarded,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        assert_eq!(segment_file_name(1), "segment-00000000000000000001.jsonl");
        assert_eq!(parse_segment_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(
            parse_segment_file_name(&compressed_segment_file_name(7)),
            Some((7, true))
        );
        assert_eq!(
            parse_segment_name("segment-00000000000000000007.jsonl.zst.tmp"),
            None
        );
        assert_eq!(parse_segment_name("segment-1.jsonl"), None);
        assert_eq!(parse_segment_name("segment-0000000000000000000a.jsonl"), None);
        let dir = tempfile::tempdir().unwrap();
        for s in [120, 1, 57] {
            std::fs::write(dir.path().join(segment_file_name(s)), "").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let seqs: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [1, 57, 120]);
    }

    #[test]
    fn forwarded_segments_are_those_every_cursor_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        for s in [1, 57, 120] {
            std::fs::write(dir.path().join(segment_file_name(s)), "x").unwrap();
        }
        let none: Vec<bool> = segment_infos(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.forwarded)
            .collect();
        assert_eq!(none, [false, false, false]);
        std::fs::create_dir(dir.path().join("cursors")).unwrap();
        std::fs::write(dir.path().join("cursors/nats.json"), r#"{"seq": 500}"#).unwrap();
        std::fs::write(dir.path().join("cursors/syslog.json"), r#"{"seq": 60}"#).unwrap();
        let infos = segment_infos(dir.path()).unwrap();
        assert_eq!(infos[0].last_seq, Some(56));
        assert_eq!(
            infos.iter().map(|s| s.forwarded).collect::<Vec<_>>(),
            [true, false, false]
        );
        std::fs::write(dir.path().join("cursors/bad.json"), "{}").unwrap();
        assert!(segment_infos(dir.path()).is_err());
    }
}
