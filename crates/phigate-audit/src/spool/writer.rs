//! The writer thread's state: sealing lines, group commit, rotation,
//! failure and recovery.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use super::compress::Compressor;
use super::recovery::Tail;
use super::{CheckpointOptions, CommitInfo, Durability, Job, JobBody, Msg, Shared, SpoolOptions, RETRY};
use crate::chain;
use crate::record::{AccessRecord, CheckpointRecord, Outcome, RecordBody, RecoveryRecord, SCHEMA_VERSION};
use crate::segment::{list_segment_files, parse_segment_name, segment_file_name};
use crate::{now_rfc3339, AuditError};

/// The chain position after the last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chain {
    pub(super) seq: u64,
    pub(super) hash: String,
    /// Access/logout/recovery records since the last checkpoint.
    pub(super) since_checkpoint: u64,
}

/// One sealed line waiting to be written.
struct Entry {
    line: String,
    info: CommitInfo,
    reply: Option<oneshot::Sender<Result<CommitInfo, AuditError>>>,
    after: Chain,
}

/// What a spool line holds before its `hash` is added: the text the hash
/// chain covers (in canonical form). The canonical serializer's tests use
/// this very type.
#[derive(Serialize)]
pub(crate) struct Unsealed<'a> {
    pub(crate) v: u32,
    pub(crate) seq: u64,
    pub(crate) event_id: &'a str,
    pub(crate) prev_hash: &'a str,
    #[serde(flatten)]
    pub(crate) body: &'a RecordBody,
}

#[derive(Debug)]
pub(super) struct Writer {
    dir: PathBuf,
    file: Option<File>,
    /// Current segment file name.
    segment: String,
    /// Length of the current segment up to the last good line.
    len: u64,
    /// The chain after the last good line.
    chain: Chain,
    unsynced: bool,
    last_sync: Instant,
    needs_recovery: bool,
    last_recovery: Instant,
    last_rescan: Instant,
    last_space_check: Instant,
    pub(super) options: SpoolOptions,
    pub(super) shared: Arc<Shared>,
    /// Plain JSONL copy of every line ([`SpoolOptions::mirror`]).
    mirror: Option<File>,
    /// Compresses closed segments ([`SpoolOptions::compress_closed_segments`]),
    /// started with the writer thread.
    compressor: Option<Compressor>,
    /// The directory lock (`.lock`), held until the writer is done.
    lock: Option<File>,
}

impl Writer {
    /// Open the segment where the chain ends, cut its torn tail (if any) and
    /// append the `recovery` record for it, synced.
    pub(super) fn open(
        dir: &Path,
        tail: Tail,
        options: SpoolOptions,
        shared: Arc<Shared>,
        lock: File,
    ) -> Result<Writer, AuditError> {
        let path = dir.join(&tail.segment);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
        if let Some((from, _)) = tail.torn {
            file.set_len(from).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        if tail.len == 0 {
            // Possibly a new file: make its directory entry durable.
            sync_dir(dir).map_err(io)?;
        }
        shared
            .spool_bytes
            .store(dir_bytes(dir).map_err(io)?, Ordering::Relaxed);
        let mirror = match &options.mirror {
            None => None,
            Some(m) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(m)
                    .map_err(|source| AuditError::Open {
                        path: m.clone(),
                        source,
                    })?,
            ),
        };
        let mut writer = Writer {
            mirror,
            dir: dir.to_path_buf(),
            file: Some(file),
            segment: tail.segment.clone(),
            len: tail.torn.map_or(tail.len, |(from, _)| from),
            chain: tail.chain,
            unsynced: false,
            last_sync: Instant::now(),
            needs_recovery: false,
            last_recovery: Instant::now(),
            last_rescan: Instant::now(),
            last_space_check: Instant::now(),
            options,
            shared,
            compressor: None,
            lock: Some(lock),
        };
        if let Some((from, to)) = tail.torn {
            tracing::warn!(segment = %tail.segment, truncated_from = from, truncated_to = to, "audit spool: torn last line truncated; appending a recovery record");
            let mut entries = Vec::new();
            let mut chain = writer.chain.clone();
            let body = RecordBody::Recovery(RecoveryRecord {
                ts: now_rfc3339(),
                segment: tail.segment,
                truncated_from: from,
                truncated_to: to,
                reason: "torn last line".into(),
            });
            writer.push_entry(&mut chain, body, None, &mut entries);
            writer.write_entries(entries, true).map_err(io)?;
        }
        Ok(writer)
    }

    /// How long the writer thread may sleep waiting for records.
    pub(super) fn wait_time(&self) -> Duration {
        match self.options.durability {
            Durability::Interval(every) if self.unsynced => every.saturating_sub(self.last_sync.elapsed()),
            _ => RETRY,
        }
        .max(Duration::from_micros(100))
    }

    /// Seal `body` as the next line (and a checkpoint after it when one is due).
    fn push_entry(
        &self,
        chain: &mut Chain,
        body: RecordBody,
        reply: Option<oneshot::Sender<Result<CommitInfo, AuditError>>>,
        out: &mut Vec<Entry>,
    ) {
        let entry = match self.seal(chain, &body) {
            Ok(mut e) => {
                e.after.since_checkpoint += 1;
                e.reply = reply;
                e
            }
            Err(e) => {
                if let Some(reply) = reply {
                    self.answer(
                        reply,
                        Err(AuditError::WriteFailed(format!("cannot encode record: {e}"))),
                    );
                }
                return;
            }
        };
        *chain = entry.after.clone();
        out.push(entry);
        if let Some(cp) = &self.options.checkpoint {
            if chain.since_checkpoint >= cp.every {
                self.push_checkpoint(chain, cp, out);
            }
        }
    }

    fn push_checkpoint(&self, chain: &mut Chain, cp: &CheckpointOptions, out: &mut Vec<Entry>) {
        let body = RecordBody::Checkpoint(CheckpointRecord {
            ts: now_rfc3339(),
            covers_seq: chain.seq,
            covers_hash: chain.hash.clone(),
            key_id: cp.key.key_id().to_owned(),
            signature: cp.key.sign(&chain.hash),
        });
        if let Ok(mut e) = self.seal(chain, &body) {
            e.after.since_checkpoint = 0;
            *chain = e.after.clone();
            out.push(e);
        }
    }

    fn seal(&self, chain: &Chain, body: &RecordBody) -> Result<Entry, crate::canonical::Error> {
        let seq = chain.seq + 1;
        let event_id = uuid::Uuid::now_v7().to_string();
        let canonical = crate::canonical::to_canonical_string(&Unsealed {
            v: SCHEMA_VERSION,
            seq,
            event_id: &event_id,
            prev_hash: &chain.hash,
            body,
        })?;
        let (line, hash) = chain::seal_canonical(&chain.hash, canonical);
        Ok(Entry {
            line,
            info: CommitInfo {
                seq,
                event_id,
                hash: hash.clone(),
            },
            reply: None,
            after: Chain {
                seq,
                hash,
                since_checkpoint: chain.since_checkpoint,
            },
        })
    }

    /// Answer a job's commit and free its place in the queue.
    fn answer(
        &self,
        reply: oneshot::Sender<Result<CommitInfo, AuditError>>,
        result: Result<CommitInfo, AuditError>,
    ) {
        self.shared.release(1);
        let _ = reply.send(result);
    }

    /// Write a batch of committed records; every job is answered.
    pub(super) fn write_jobs(&mut self, jobs: &mut Vec<Job>) {
        let n = jobs.len();
        if self.needs_recovery {
            self.recover();
        }
        if self.needs_recovery {
            for job in jobs.drain(..) {
                self.answer(job.reply, Err(AuditError::Unhealthy));
            }
            return;
        }
        let mut entries = Vec::with_capacity(n + 1);
        let mut chain = self.chain.clone();
        for job in jobs.drain(..) {
            let body = match job.body {
                JobBody::Access(mut record) => {
                    if !record.duration_ms.is_finite() {
                        record.duration_ms = 0.0;
                    }
                    let outcome = Outcome::of(&record);
                    RecordBody::Access(AccessRecord { record, outcome })
                }
                JobBody::Logout(record) => RecordBody::Logout(*record),
            };
            self.push_entry(&mut chain, body, Some(job.reply), &mut entries);
        }
        let durable = self.options.durability == Durability::PerRequest;
        if let Err(e) = self.write_entries(entries, durable) {
            self.failed(&e);
        }
    }

    /// Append sealed entries, rotating segments as needed, and answer each
    /// entry's commit: success once written (and synced when `durable` or
    /// when its segment is closed by a rotation), failure for every entry
    /// from the first failed write/sync on. The chain and length advance
    /// only over answered successes.
    fn write_entries(&mut self, entries: Vec<Entry>, durable: bool) -> std::io::Result<()> {
        let mut queue: VecDeque<Entry> = entries.into();
        let result = self.write_queue(&mut queue, durable);
        if let Err(e) = &result {
            for entry in queue {
                if let Some(reply) = entry.reply {
                    self.answer(reply, Err(AuditError::WriteFailed(e.to_string())));
                }
            }
        }
        result
    }

    fn write_queue(&mut self, queue: &mut VecDeque<Entry>, durable: bool) -> std::io::Result<()> {
        let max = self.options.segment_max_bytes;
        while !queue.is_empty() {
            // The lines that fit into the current segment.
            let mut size = 0u64;
            let mut count = 0;
            for e in queue.iter() {
                let l = e.line.len() as u64;
                if self.len + size + l > max && self.len + size > 0 {
                    break;
                }
                size += l;
                count += 1;
            }
            if count == 0 {
                self.rotate()?;
                continue;
            }
            let mut buf = Vec::with_capacity(size as usize);
            for e in queue.iter().take(count) {
                buf.extend_from_slice(e.line.as_bytes());
            }
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("segment not open"))?;
            file.write_all(&buf)?;
            if let Some(m) = self.mirror.as_mut() {
                if let Err(e) = m.write_all(&buf) {
                    self.shared.mirror_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "audit mirror file write failed (the spool has the records)");
                }
            }
            let rotating = count < queue.len();
            if rotating || durable {
                self.sync()?;
            } else {
                if !self.unsynced && matches!(self.options.durability, Durability::Interval(_)) {
                    // An inline write: the writer thread may sleep long;
                    // wake it to time the interval fsync (once per interval).
                    let _ = self.shared.tx.send(Msg::Wake);
                }
                self.unsynced = true;
            }
            self.len += size;
            self.shared.spool_bytes.fetch_add(size, Ordering::Relaxed);
            self.shared.bytes_written.fetch_add(size, Ordering::Relaxed);
            self.shared
                .records_written
                .fetch_add(count as u64, Ordering::Relaxed);
            let done: Vec<Entry> = queue.drain(..count).collect();
            if let Some(last) = done.last() {
                self.chain = last.after.clone();
                self.shared.last_seq.store(self.chain.seq, Ordering::Relaxed);
            }
            for e in done {
                if let Some(reply) = e.reply {
                    self.answer(reply, Ok(e.info));
                }
            }
            if rotating {
                self.open_next_segment()?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Close the current segment (synced) and start the next one, named
    /// after the seq of its first record.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        self.open_next_segment()
    }

    /// Start compressing closed segments in the background (if configured):
    /// every segment before the current one, then each one a rotation closes.
    pub(super) fn start_compressor(&mut self) {
        if !self.options.compress_closed_segments || self.compressor.is_some() {
            return;
        }
        match Compressor::start(self.dir.clone(), self.shared.clone()) {
            Ok(c) => {
                if let Some(current) = parse_segment_name(&self.segment) {
                    c.closed_below(current);
                }
                self.compressor = Some(c);
            }
            Err(e) => {
                self.shared.compress_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot start the audit segment compressor; closed segments stay uncompressed");
            }
        }
    }

    /// Stop the background compressor (an unfinished compression is
    /// abandoned safely and redone by the next run).
    pub(super) fn stop_compressor(&mut self) {
        if let Some(mut c) = self.compressor.take() {
            c.stop();
        }
    }

    /// Release the directory lock (the writer is done with the directory).
    pub(super) fn release_lock(&mut self) {
        self.stop_compressor();
        self.lock = None;
    }

    /// Start the next segment (the current one must already be synced).
    fn open_next_segment(&mut self) -> std::io::Result<()> {
        let name = segment_file_name(self.chain.seq + 1);
        let path = self.dir.join(&name);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() != 0 {
            return Err(std::io::Error::other(format!(
                "{}: next segment already exists and is not empty",
                path.display()
            )));
        }
        sync_dir(&self.dir)?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(segment = %name, previous = %self.segment, "audit spool: new segment");
        self.file = Some(file);
        self.segment = name;
        self.len = 0;
        if let Some(c) = &self.compressor {
            c.closed_below(self.chain.seq + 1);
        }
        Ok(())
    }

    /// A write or sync failed: refuse new records until [`Writer::recover`] succeeds.
    fn failed(&mut self, e: &std::io::Error) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared
            .set_last_error(Some(format!("write to {} failed: {e}", self.segment)));
        self.shared.healthy.store(false, Ordering::Release);
        self.needs_recovery = true;
        self.file = None;
        tracing::error!(error = %e, segment = %self.segment, "audit write failed; refusing PHI requests until the spool recovers");
    }

    /// Reopen the current segment, cut anything after the last good line
    /// (a partial write), sync it and resume.
    fn recover(&mut self) {
        self.last_recovery = Instant::now();
        let path = self.dir.join(&self.segment);
        let result = (|| -> std::io::Result<File> {
            let file = OpenOptions::new().append(true).open(&path)?;
            let actual = file.metadata()?.len();
            if actual < self.len {
                return Err(std::io::Error::other(format!(
                    "segment shrank from {} to {actual} bytes while in use; restart phigate to run crash recovery",
                    self.len
                )));
            }
            if actual > self.len {
                file.set_len(self.len)?;
            }
            file.sync_data()?;
            sync_dir(&self.dir)?;
            Ok(file)
        })();
        match result {
            Ok(file) => {
                self.file = Some(file);
                self.needs_recovery = false;
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.shared.set_last_error(None);
                self.shared.healthy.store(true, Ordering::Release);
                tracing::info!(segment = %self.segment, "audit writer recovered");
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .set_last_error(Some(format!("still failing: {}: {e}", path.display())));
                tracing::error!(error = %e, path = %path.display(), "audit writer still failing");
            }
        }
    }

    /// Periodic work: retrying a failed writer, measuring free space (at
    /// most once per second), re-measuring a full spool (an operator may
    /// have removed segments), and — returned, to be run outside the
    /// writer's mutex — the interval `fsync` when one is due.
    pub(super) fn tick(&mut self) -> Option<PendingSync> {
        if self.last_space_check.elapsed() >= SPACE_CHECK {
            self.last_space_check = Instant::now();
            self.shared.check_free_space(&self.options.free_space);
        }
        let mut pending = None;
        if let Durability::Interval(every) = self.options.durability {
            if self.unsynced && self.last_sync.elapsed() >= every && !self.needs_recovery {
                match self.file.as_ref().map(File::try_clone) {
                    Some(Ok(file)) => {
                        // Everything written so far is covered by this fsync.
                        self.unsynced = false;
                        self.last_sync = Instant::now();
                        pending = Some(PendingSync { file });
                    }
                    Some(Err(e)) => self.failed(&e),
                    None => {}
                }
            }
        }
        if self.needs_recovery && self.last_recovery.elapsed() >= RETRY {
            self.recover();
        }
        if self.shared.spool_bytes.load(Ordering::Relaxed) >= self.shared.max_bytes
            && self.last_rescan.elapsed() >= RETRY
        {
            self.last_rescan = Instant::now();
            let _guard = self.shared.accounting();
            if let Ok(bytes) = dir_bytes(&self.dir) {
                self.shared.spool_bytes.store(bytes, Ordering::Relaxed);
            }
        }
        pending
    }

    /// The outcome of a [`PendingSync`]: a failed fsync makes the writer
    /// unhealthy (requests are refused until it recovers).
    pub(super) fn synced(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(&e),
        }
    }

    /// On stop: stop compressing, seal the tail with a checkpoint (if
    /// configured) and sync.
    pub(super) fn finish(&mut self) {
        self.stop_compressor();
        if self.needs_recovery {
            self.recover();
        }
        if !self.needs_recovery {
            if let Some(cp) = self.options.checkpoint.clone() {
                if self.chain.since_checkpoint > 0 {
                    let mut chain = self.chain.clone();
                    let mut entries = Vec::new();
                    self.push_checkpoint(&mut chain, &cp, &mut entries);
                    if let Err(e) = self.write_entries(entries, false) {
                        self.failed(&e);
                    }
                }
            }
            if let Err(e) = self.sync() {
                self.failed(&e);
            }
        }
        tracing::info!(
            last_seq = self.chain.seq,
            written = self.shared.records_written.load(Ordering::Relaxed),
            "audit writer stopped"
        );
    }
}

pub(super) fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    use fs2::FileExt;
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AuditError::Open { path, source })?;
    file.try_lock_exclusive()
        .map_err(|_| AuditError::Locked(dir.to_path_buf()))?;
    Ok(file)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes on disk of every segment file (both forms of a segment whose
/// compression was interrupted).
pub(super) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for f in list_segment_files(dir)? {
        match std::fs::metadata(&f.path) {
            Ok(m) => total += m.len(),
            // Removed since listing (compressed, or by retention).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// An interval `fsync` to run without holding the writer's mutex (on a
/// duplicate of the segment's file handle).
pub(super) struct PendingSync {
    file: File,
}

impl PendingSync {
    pub(super) fn run(self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// How often the writer measures free space.
const SPACE_CHECK: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::super::Spool;
    use super::*;
    use crate::testing::access;

    /// A job as `Slot::commit` would send it, holding a real reservation.
    fn job(spool: &Spool, i: usize) -> (Job, oneshot::Receiver<Result<CommitInfo, AuditError>>) {
        let mut slot = spool.reserve().unwrap();
        slot.shared.take(); // the reservation now belongs to the job
        let (reply, rx) = oneshot::channel();
        (
            Job {
                body: JobBody::Access(access(i)),
                reply,
            },
            rx,
        )
    }

    fn options() -> SpoolOptions {
        SpoolOptions {
            durability: Durability::PerRequest,
            ..SpoolOptions::default()
        }
    }

    #[test]
    fn a_failed_write_fails_its_commits_and_the_writer_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, worker) = Spool::open(dir.path(), options()).unwrap();
        let mut guard = worker.shared.writer();
        let w = guard.as_mut().unwrap();
        let (j, mut ok) = job(&spool, 0);
        w.write_jobs(&mut vec![j]);
        assert_eq!(ok.try_recv().unwrap().unwrap().seq, 1);

        // The disk refuses the write (here: the segment handle is read-only).
        let path = dir.path().join(&w.segment);
        w.file = Some(File::open(&path).unwrap());
        let (j1, mut r1) = job(&spool, 1);
        let (j2, mut r2) = job(&spool, 2);
        w.write_jobs(&mut vec![j1, j2]);
        for r in [&mut r1, &mut r2] {
            assert!(matches!(r.try_recv().unwrap(), Err(AuditError::WriteFailed(_))));
        }
        let stats = spool.stats();
        assert!(
            !stats.healthy && stats.write_errors == 1 && stats.queue_depth == 0,
            "{stats:?}"
        );
        assert!(!stats.accepting);
        let why = stats.not_accepting.unwrap_or_default();
        assert!(
            why.starts_with("writer unhealthy: write to segment-") && why.contains("failed: "),
            "{why}"
        );
        assert!(matches!(spool.reserve(), Err(AuditError::Unhealthy)));

        // A partial line left behind by the failed write is cut on recovery.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"v\":1,\"seq\":2,\"ki"))
            .unwrap();
        w.recover();
        assert!(spool.stats().healthy);
        assert_eq!(spool.stats().not_accepting, None);
        let (j3, mut r3) = job(&spool, 3);
        w.write_jobs(&mut vec![j3]);
        // The failed records never got a seq: the chain continues at 2.
        assert_eq!(r3.try_recv().unwrap().unwrap().seq, 2);
        let report = crate::verify::verify(&[dir.path().to_path_buf()], &[]).unwrap();
        assert!(report.ok && report.records == 2, "{}", report.to_text());
    }

    #[test]
    fn a_segment_that_shrank_underneath_keeps_the_writer_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, worker) = Spool::open(dir.path(), options()).unwrap();
        let mut guard = worker.shared.writer();
        let w = guard.as_mut().unwrap();
        let (j, _r) = job(&spool, 0);
        w.write_jobs(&mut vec![j]);
        let (j, mut r) = job(&spool, 1);
        std::fs::write(dir.path().join(&w.segment), "").unwrap();
        w.failed(&std::io::Error::other("simulated"));
        w.write_jobs(&mut vec![j]);
        assert!(matches!(r.try_recv().unwrap(), Err(AuditError::Unhealthy)));
        assert!(!spool.stats().healthy);
    }
}
