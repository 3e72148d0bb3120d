//! Segment files and cursor files of a spool directory.
//!
//! A spool is a directory of `segment-<first seq, 20 digits>.jsonl` files;
//! sinks keep their acknowledged position in `cursors/<sink>.json` as
//! `{"seq": N}`. Other files in the directory are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.jsonl")
}

/// The first seq encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of a spool directory, sorted by first seq.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_name) {
            if entry.file_type()?.is_file() {
                out.push((seq, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
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
    pub bytes: u64,
    /// Every sink has acknowledged every record of this segment, and it is
    /// not the last segment.
    pub forwarded: bool,
}

/// The segments of a spool with what retention needs to know. With no sink
/// cursors, nothing counts as forwarded.
pub fn segment_infos(dir: &Path) -> std::io::Result<Vec<SegmentInfo>> {
    let segments = list_segments(dir)?;
    let min_cursor = read_cursors(dir)?.into_values().min();
    let mut out = Vec::with_capacity(segments.len());
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let last_seq = segments.get(i + 1).map(|(next, _)| next.saturating_sub(1));
        let bytes = std::fs::metadata(path)?.len();
        let forwarded = matches!((last_seq, min_cursor), (Some(l), Some(c)) if l <= c);
        out.push(SegmentInfo {
            path: path.clone(),
            first_seq: *first_seq,
            last_seq,
            bytes,
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
