//! A tiny spool writer for tests: valid lines per the file-format contract
//! (hashes are placeholders — sinks do not verify the chain), size-less
//! rotation every `lines_per_segment` lines, and torn-line simulation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::spool::segment_file_name;

/// Appends records to a spool directory.
#[derive(Debug)]
pub struct TestSpool {
    dir: PathBuf,
    lines_per_segment: u64,
    next_seq: u64,
    in_segment: u64,
    segment: Option<PathBuf>,
}

impl TestSpool {
    /// A writer for `dir` (created), starting at seq 1.
    pub fn new(dir: impl Into<PathBuf>, lines_per_segment: u64) -> std::io::Result<TestSpool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(TestSpool {
            dir,
            lines_per_segment: lines_per_segment.max(1),
            next_seq: 1,
            in_segment: 0,
            segment: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The event id of record `seq` (deterministic, UUID-shaped).
    pub fn event_id(seq: u64) -> String {
        format!("01900000-0000-7000-8000-{seq:012x}")
    }

    /// An `access` record for `seq`: allow for odd seqs, deny for even ones;
    /// every fifth allowed record names a patient.
    pub fn access_record(seq: u64) -> Value {
        let allow = seq % 2 == 1;
        let mut r = json!({
            "v": 1, "kind": "access", "seq": seq, "event_id": Self::event_id(seq),
            "ts": "2026-11-25T10:08:35.639Z", "prev_hash": format!("{:064x}", seq - 1), "hash": format!("{seq:064x}"),
            "request_id": format!("01900000-0000-7000-9000-{seq:012x}"),
            "decision": if allow { "allow" } else { "deny" },
            "reason": if allow { "allowed" } else { "insufficient_scope" },
            "status": if allow { 200 } else { 403 },
            "method": "GET", "path": format!("/fhir/Observation/{seq}"), "route": "observation-read",
            "sub": "alice", "client_id": "app", "iss": "https://idp.test",
            "scopes_granted": ["user/Observation.rs"], "scopes_required": ["user/Observation.r"],
            "upstream_status": if allow { json!(200) } else { Value::Null },
            "duration_ms": 1.25, "remote_addr": "127.0.0.1:40000", "policy_version": "sha256:0011223344556677",
            "outcome": if allow { "success" } else { "denied" },
        });
        if allow && seq.is_multiple_of(5) {
            r["patient"] = json!("123");
        }
        r
    }

    /// A `logout` record for `seq` (a back-channel logout): accepted for odd
    /// seqs, refused (bad signature) for even ones.
    pub fn logout_record(seq: u64) -> Value {
        let accepted = seq % 2 == 1;
        json!({
            "v": 1, "kind": "logout", "seq": seq, "event_id": Self::event_id(seq),
            "ts": "2026-11-25T10:08:36.001Z", "prev_hash": format!("{:064x}", seq - 1), "hash": format!("{seq:064x}"),
            "request_id": format!("01900000-0000-7000-9000-{seq:012x}"),
            "source": "backchannel",
            "decision": if accepted { "allow" } else { "deny" },
            "reason": if accepted { "logged_out" } else { "logout_token_bad_signature" },
            "status": if accepted { 200 } else { 400 },
            "issuer": "https://idp.test", "sid": format!("sid-{seq}"), "sub": "alice", "jti": format!("jti-{seq}"),
            "client_ip": "127.0.0.1",
        })
    }

    /// Append `n` logout records; returns their seqs.
    pub fn append_logouts(&mut self, n: u64) -> std::io::Result<std::ops::RangeInclusive<u64>> {
        let first = self.next_seq;
        for _ in 0..n {
            let seq = self.next_seq;
            self.append(Self::logout_record(seq))?;
        }
        Ok(first..=self.next_seq - 1)
    }

    fn file(&mut self) -> std::io::Result<File> {
        if self.segment.is_none() || self.in_segment >= self.lines_per_segment {
            self.segment = Some(self.dir.join(segment_file_name(self.next_seq)));
            self.in_segment = 0;
        }
        let path = self.segment.as_deref().unwrap_or(&self.dir);
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Append `record` (its `seq` is overwritten with the next seq).
    pub fn append(&mut self, mut record: Value) -> std::io::Result<u64> {
        let seq = self.next_seq;
        record["seq"] = json!(seq);
        let mut f = self.file()?;
        f.write_all(format!("{record}\n").as_bytes())?;
        self.next_seq += 1;
        self.in_segment += 1;
        Ok(seq)
    }

    /// Append `n` access records; returns their seqs.
    pub fn append_access(&mut self, n: u64) -> std::io::Result<std::ops::RangeInclusive<u64>> {
        let first = self.next_seq;
        for _ in 0..n {
            let seq = self.next_seq;
            self.append(Self::access_record(seq))?;
        }
        Ok(first..=self.next_seq - 1)
    }

    /// Write the first `cut` bytes of the next access record's line (no
    /// `\n`): a line still being written. [`finish_torn`](Self::finish_torn) completes it.
    pub fn append_torn(&mut self, cut: usize) -> std::io::Result<String> {
        let line = format!("{}\n", Self::access_record(self.next_seq));
        let mut f = self.file()?;
        f.write_all(&line.as_bytes()[..cut.min(line.len() - 1)])?;
        Ok(line)
    }

    /// Complete the line started by [`append_torn`](Self::append_torn).
    pub fn finish_torn(&mut self, line: &str, cut: usize) -> std::io::Result<()> {
        let mut f = self.file()?;
        f.write_all(&line.as_bytes()[cut.min(line.len() - 1)..])?;
        self.next_seq += 1;
        self.in_segment += 1;
        Ok(())
    }
}
