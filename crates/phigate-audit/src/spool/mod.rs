//! The durable, hash-chained audit spool and its single writer.
//!
//! Request side: [`Spool::reserve`] takes a place in a bounded queue *before*
//! the request is served (fail closed), [`Slot::commit`] hands the finished
//! record over and returns a [`Commit`] future that resolves according to
//! the [`Durability`] mode. The writer state (one segment file, the chain)
//! sits behind one mutex — one writer at a time, one total order — and
//! assigns `seq`/`event_id`/`prev_hash`/`hash` in commit order.
//!
//! - `Interval` and `None` durability: the committing thread seals and
//!   writes its record itself (`write` to the page cache, a few µs), so a
//!   request never waits for another thread to be scheduled — handing each
//!   record to a writer thread cost two context switches per request. The
//!   interval `fsync` runs on the writer thread, on a duplicate of the file
//!   handle, outside the mutex.
//! - `PerRequest`: records go to the writer thread ([`SpoolWorker::run`]),
//!   which group-commits batches with one `write` and one `fsync` per batch.
//!
//! The writer thread also does the periodic work (free space, recovery of a
//! failed writer, re-measuring a full spool).
//! Closed segments are compressed with zstd by a second background thread
//! (`compress`). [`Spool::close`] drains and stops the writer from any
//! thread, with or without an async runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::checkpoint::SigningKey;
use crate::segment::list_segments;
use crate::{AuditError, AuditRecord, LogoutRecord};

mod compress;
mod recovery;
#[cfg(test)]
mod tests;
mod writer;
#[cfg(test)]
pub(crate) use writer::Unsealed;

use recovery::scan_tail;
use writer::{lock_dir, Writer};

/// When a commit resolves, and how often the spool is `fsync`ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A commit resolves only after its record is written *and* `fsync`ed.
    /// Group commit: one write + one fsync per batch of pending records.
    /// Zero loss on process crash and on power failure.
    PerRequest,
    /// A commit resolves once its record is written to the file (the page
    /// cache); the file is `fsync`ed at most this long after a write. A
    /// process crash loses nothing that was written; a power failure or
    /// kernel crash can lose the records of the last interval.
    Interval(Duration),
    /// Never `fsync` (benchmarks only): a power failure can lose everything
    /// not yet flushed by the kernel.
    None,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Interval(Duration::from_millis(10))
    }
}

/// Signed checkpoints: every `every` records, a `checkpoint` line with an
/// Ed25519 signature over the hash of the record before it.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub every: u64,
    pub key: Arc<SigningKey>,
}

/// How the free space of the spool's filesystem is measured (bytes
/// available to this process). Tests inject a fake; the default is
/// `fs2::available_space`. Not a configuration setting.
#[doc(hidden)]
#[derive(Clone)]
pub struct FreeSpaceProbe(pub Arc<FreeSpaceFn>);

/// Free bytes available on the filesystem holding this directory.
#[doc(hidden)]
pub type FreeSpaceFn = dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync;

impl Default for FreeSpaceProbe {
    fn default() -> Self {
        FreeSpaceProbe(Arc::new(|dir: &Path| fs2::available_space(dir)))
    }
}

impl std::fmt::Debug for FreeSpaceProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FreeSpaceProbe")
    }
}

/// Spool settings. See [`SpoolOptions::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub durability: Durability,
    /// A new segment starts before a line that would take the current one
    /// past this size (a segment exceeds it only with a single line).
    pub segment_max_bytes: u64,
    /// Byte bound on all segments in the directory, counted as bytes on
    /// disk (the compressed size of compressed segments): at or above it,
    /// [`Spool::reserve`] fails with [`AuditError::SpoolFull`] until segments
    /// are removed (re-checked at most once per second). Records already
    /// reserved are still written, so the bound can be overshot by at most
    /// `queue` records.
    pub max_bytes: u64,
    /// Compress each segment with zstd once it is closed (rotated), on a
    /// background thread, into `segment-<seq>.jsonl.zst`; the current
    /// segment stays plain. Every reader decodes compressed segments
    /// transparently. Audit records compress about 10×.
    pub compress_closed_segments: bool,
    /// Free-space reserve of the spool's filesystem: while less is available
    /// (measured at open and at most once per second), [`Spool::reserve`]
    /// fails with [`AuditError::LowDiskSpace`], so that records already
    /// reserved can still be written. 0 disables the check.
    pub min_free_bytes: u64,
    /// How free space is measured (tests only).
    #[doc(hidden)]
    pub free_space: FreeSpaceProbe,
    /// Maximum records in flight (reserved, or committed and not yet written).
    pub queue: usize,
    pub checkpoint: Option<CheckpointOptions>,
    /// Also append every line, as written, to this plain JSONL file (for
    /// tools that tail one file, e.g. dev mode's `--audit-file`). Best effort:
    /// the spool is the record of truth; a failed mirror write is logged and
    /// counted (`mirror_errors`), never fails a request.
    pub mirror: Option<PathBuf>,
    /// After shutdown is signalled (the watch of [`SpoolWorker::run`]) the
    /// writer keeps serving until nothing is reserved and no record arrived
    /// for this long. [`Spool::close`] does not wait for it.
    pub shutdown_idle: Duration,
}

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default byte bound of a spool: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default queue: 10,000 records in flight.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Default free-space reserve: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for SpoolOptions {
    /// `Interval(10ms)`, 64 MiB segments, 10 GiB bound, closed segments
    /// compressed, 64 MiB free-space reserve, 10,000 in flight, no
    /// checkpoints, 2 s shutdown idle.
    fn default() -> Self {
        SpoolOptions {
            durability: Durability::default(),
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            compress_closed_segments: true,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            free_space: FreeSpaceProbe::default(),
            queue: DEFAULT_QUEUE,
            checkpoint: None,
            mirror: None,
            shutdown_idle: Duration::from_secs(2),
        }
    }
}

/// Where a committed record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub seq: u64,
    pub event_id: String,
    pub hash: String,
}

/// A snapshot of the spool's counters, for metrics and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpoolStats {
    /// Lines appended since start (access, logout, recovery and checkpoint records).
    pub records_written: u64,
    /// Bytes appended to segments since start.
    pub bytes_written: u64,
    /// `fsync` calls (segment files and the directory).
    pub fsyncs: u64,
    /// Failed writes or syncs.
    pub write_errors: u64,
    /// Reservations refused ([`Spool::reserve`] errors).
    pub fail_closed: u64,
    /// Failed writes to the JSONL mirror file (the spool still has the records).
    pub mirror_errors: u64,
    /// The writer is running and its last write/sync succeeded (or it recovered).
    pub healthy: bool,
    /// `reserve` would currently succeed as far as health, free space and
    /// the byte bound go (the queue may still be full).
    pub accepting: bool,
    /// Why not `accepting` (for `/readyz` and logs), e.g. "free space 12 MiB
    /// is below the 64 MiB reserve", "writer unhealthy: <last error>",
    /// "spool at max_bytes (…)"; `None` while accepting.
    pub not_accepting: Option<String>,
    /// Records reserved or queued and not yet written.
    pub queue_depth: usize,
    /// Bytes on disk of all segments of the directory (compressed size for
    /// compressed segments).
    pub spool_bytes: u64,
    pub max_bytes: u64,
    /// `spool_bytes / max_bytes`: 1.0 and above refuses requests.
    pub fill_ratio: f64,
    /// Free space of the spool's filesystem at the last check (at most a
    /// second old while the writer runs); `None` if it could not be measured.
    pub free_bytes: Option<u64>,
    /// The free-space reserve ([`SpoolOptions::min_free_bytes`]).
    pub min_free_bytes: u64,
    /// Closed segments compressed since start.
    pub segments_compressed: u64,
    /// Failed compressions (the segment stays plain; retried later).
    pub compress_errors: u64,
    /// The seq of the last line written (0: empty spool).
    pub last_seq: u64,
}

enum Msg {
    Record(Box<Job>),
    /// Re-check the stop condition.
    Wake,
}

struct Job {
    body: JobBody,
    reply: oneshot::Sender<Result<CommitInfo, AuditError>>,
}

/// The record a [`Job`] carries. A logout is boxed so that a job stays the
/// size of an access record, which is what nearly every job holds.
#[allow(clippy::large_enum_variant)] // boxing the access record would add an allocation per request
enum JobBody {
    Access(AuditRecord),
    Logout(Box<LogoutRecord>),
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    tx: mpsc::Sender<Msg>,
    /// The writer state; `None` once the writer has finished.
    writer: Mutex<Option<Writer>>,
    /// Commits are written by the committing thread (not `PerRequest`).
    inline: bool,
    queue: usize,
    max_bytes: u64,
    min_free_bytes: u64,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// The text of the write/sync error that made the writer unhealthy.
    last_error: Mutex<Option<String>>,
    closed: AtomicBool,
    stopping: AtomicBool,
    /// [`Spool::close`]: stop as soon as nothing is reserved (no idle wait).
    draining: AtomicBool,
    /// The writer thread has finished (or will never run).
    done: Mutex<bool>,
    done_cv: Condvar,
    /// Free bytes at the last check ([`UNKNOWN`] if it failed).
    free_bytes: AtomicU64,
    low_space: AtomicBool,
    spool_bytes: AtomicU64,
    /// Serialises changes of the segment set with re-measuring `spool_bytes`.
    accounting: Mutex<()>,
    segments_compressed: AtomicU64,
    compress_errors: AtomicU64,
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    write_errors: AtomicU64,
    fail_closed: AtomicU64,
    last_seq: AtomicU64,
    mirror_errors: AtomicU64,
}

/// `Shared::free_bytes` when the free space could not be measured.
const UNKNOWN: u64 = u64::MAX;

impl Shared {
    fn release(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    fn accounting(&self) -> MutexGuard<'_, ()> {
        self.accounting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_bytes(&self, n: u64) {
        self.spool_bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_bytes(&self, n: u64) {
        let _ = self
            .spool_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
    }

    fn writer(&self) -> MutexGuard<'_, Option<Writer>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = e;
    }

    /// The writer thread is gone: wake [`Spool::close`].
    fn mark_done(&self) {
        self.closed.store(true, Ordering::Release);
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.done_cv.notify_all();
    }

    /// Measure the free space of the spool's filesystem and update the
    /// reserve state (logged on every change).
    fn check_free_space(&self, probe: &FreeSpaceProbe) {
        match (probe.0)(&self.dir) {
            Ok(free) => {
                self.free_bytes.store(free, Ordering::Relaxed);
                let low = self.min_free_bytes > 0 && free < self.min_free_bytes;
                let was = self.low_space.swap(low, Ordering::AcqRel);
                if low && !was {
                    tracing::error!(
                        free_bytes = free,
                        min_free_bytes = self.min_free_bytes,
                        dir = %self.dir.display(),
                        "audit spool filesystem is below its free-space reserve; refusing PHI requests"
                    );
                } else if was && !low {
                    tracing::info!(
                        free_bytes = free,
                        "audit spool free space is above the reserve again"
                    );
                }
            }
            Err(e) => {
                let was = self.free_bytes.swap(UNKNOWN, Ordering::Relaxed);
                // The probe failing is not a full disk: real write errors still fail closed.
                self.low_space.store(false, Ordering::Release);
                if was != UNKNOWN {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot measure the audit spool's free space");
                }
            }
        }
    }
}

/// `12 MiB`, `1.5 GiB`, `900 bytes`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// The request-side handle of a spool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

/// A reserved place for one record. [`Slot::commit`] it (or
/// [`Slot::commit_logout`]) once the record is known; dropping it unused
/// frees the place.
#[derive(Debug)]
pub struct Slot {
    shared: Option<Arc<Shared>>,
}

/// The outcome of a commit: resolves per the [`Durability`] mode to where
/// the record landed, or to an error meaning the record is NOT durable.
///
/// The record is handed to the writer when [`Slot::commit`] is called;
/// dropping this future does not withdraw it.
#[derive(Debug)]
#[must_use = "await the commit to know the record is durable"]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Failed(Option<AuditError>),
    Waiting(oneshot::Receiver<Result<CommitInfo, AuditError>>),
}

impl Future for Commit {
    type Output = Result<CommitInfo, AuditError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            CommitState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(AuditError::Closed))),
            // A dropped reply sender means the writer stopped without writing it.
            CommitState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(AuditError::Closed))),
        }
    }
}

impl Slot {
    /// Hand the record to the writer, which gives it the next `seq`, a new
    /// `event_id` and its place in the hash chain. The returned future
    /// resolves after the record is written (`Interval`, `None`) or written
    /// and `fsync`ed (`PerRequest`); an error means it is not durable.
    pub fn commit(self, mut record: AuditRecord) -> Commit {
        record.enforce_bounds();
        self.send(JobBody::Access(record))
    }

    /// Hand a `logout` record to the writer: [`Slot::commit`] for a session
    /// logout (OpenID Connect Back-Channel Logout, or an administrator's
    /// revocation), accepted or refused. The same chain, the same `seq` and
    /// `event_id`, the same [`Durability`]: the returned future resolves once
    /// the record is written (and `fsync`ed for `PerRequest`); an error
    /// means it is not durable, and the logout must be answered as failed.
    /// The record's caller-controlled strings are bounded first
    /// ([`LogoutRecord::enforce_bounds`]).
    pub fn commit_logout(self, mut record: LogoutRecord) -> Commit {
        record.enforce_bounds();
        self.send(JobBody::Logout(Box::new(record)))
    }

    fn send(mut self, body: JobBody) -> Commit {
        let Some(shared) = self.shared.take() else {
            return Commit(CommitState::Failed(Some(AuditError::Closed)));
        };
        let (reply, rx) = oneshot::channel();
        let job = Job { body, reply };
        if shared.inline {
            // Sealed and written here: `rx` is answered before this returns.
            let mut writer = shared.writer();
            return match writer.as_mut() {
                Some(w) => {
                    w.write_jobs(&mut vec![job]);
                    Commit(CommitState::Waiting(rx))
                }
                None => {
                    drop(writer);
                    shared.release(1);
                    Commit(CommitState::Failed(Some(AuditError::Closed)))
                }
            };
        }
        match shared.tx.send(Msg::Record(Box::new(job))) {
            Ok(()) => Commit(CommitState::Waiting(rx)),
            Err(_) => {
                shared.release(1);
                Commit(CommitState::Failed(Some(AuditError::Closed)))
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release(1);
            if shared.stopping.load(Ordering::Acquire) {
                let _ = shared.tx.send(Msg::Wake);
            }
        }
    }
}

impl Spool {
    /// Open (or create) the spool directory and run crash recovery: a torn
    /// tail of the last segment is truncated and a `recovery` record naming
    /// the removed byte range is appended and `fsync`ed; the last record's
    /// hash is checked so the chain continues from it. Fails (and the
    /// gateway must not start) if the directory is unusable, locked by
    /// another process, or its tail is inconsistent in a way a crash cannot
    /// explain (an altered record).
    ///
    /// Also: temporary files of an interrupted compression are removed, and
    /// the free space is measured, so a spool opened on a full disk refuses
    /// reservations ([`AuditError::LowDiskSpace`]) from the first request.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, SpoolWorker), AuditError> {
        if options.queue == 0 {
            return Err(AuditError::ZeroQueue);
        }
        if options.segment_max_bytes == 0 || options.max_bytes == 0 {
            return Err(AuditError::Options(
                "segment_max_bytes and max_bytes must be positive".into(),
            ));
        }
        if options.checkpoint.as_ref().is_some_and(|c| c.every == 0) {
            return Err(AuditError::Options(
                "checkpoint interval must be at least 1 record".into(),
            ));
        }
        let io = |source| AuditError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock_dir(dir)?;
        compress::remove_temp_files(dir).map_err(io)?;
        let tail = scan_tail(&list_segments(dir).map_err(io)?)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            tx,
            writer: Mutex::new(None),
            inline: options.durability != Durability::PerRequest,
            queue: options.queue,
            max_bytes: options.max_bytes,
            min_free_bytes: options.min_free_bytes,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            free_bytes: AtomicU64::new(UNKNOWN),
            low_space: AtomicBool::new(false),
            spool_bytes: AtomicU64::new(0),
            accounting: Mutex::new(()),
            segments_compressed: AtomicU64::new(0),
            compress_errors: AtomicU64::new(0),
            records_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            fail_closed: AtomicU64::new(0),
            last_seq: AtomicU64::new(tail.chain.seq),
            mirror_errors: AtomicU64::new(0),
        });
        shared.check_free_space(&options.free_space);
        let writer = Writer::open(dir, tail, options, shared.clone(), lock)?;
        // Shared → writer → Shared is a cycle, broken when the worker ends
        // (it takes the writer out) or is dropped unused.
        *shared.writer() = Some(writer);
        Ok((
            Spool {
                shared: shared.clone(),
            },
            SpoolWorker { rx, shared },
        ))
    }

    /// Reserve a place for one request's record, or say why not (queue
    /// full, writer unhealthy or stopped, free space below the reserve, byte
    /// bound reached): then the request must be refused. Never blocks.
    pub fn reserve(&self) -> Result<Slot, AuditError> {
        let s = &self.shared;
        let refused = |e| {
            s.fail_closed.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        if s.closed.load(Ordering::Acquire) {
            return refused(AuditError::Closed);
        }
        if !s.healthy.load(Ordering::Acquire) {
            return refused(AuditError::Unhealthy);
        }
        if s.low_space.load(Ordering::Acquire) {
            return refused(AuditError::LowDiskSpace {
                free: s.free_bytes.load(Ordering::Relaxed),
                min: s.min_free_bytes,
            });
        }
        if s.spool_bytes.load(Ordering::Relaxed) >= s.max_bytes {
            return refused(AuditError::SpoolFull);
        }
        let mut cur = s.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= s.queue {
                return refused(AuditError::QueueFull);
            }
            match s
                .in_flight
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        Ok(Slot {
            shared: Some(s.clone()),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters and health, for metrics and `/readyz`.
    pub fn stats(&self) -> SpoolStats {
        let s = &self.shared;
        let closed = s.closed.load(Ordering::Acquire);
        let writer_ok = s.healthy.load(Ordering::Acquire);
        let healthy = writer_ok && !closed;
        let spool_bytes = s.spool_bytes.load(Ordering::Relaxed);
        let free = s.free_bytes.load(Ordering::Relaxed);
        let free_bytes = (free != UNKNOWN).then_some(free);
        let not_accepting = if closed {
            Some("audit writer stopped (shut down, or it could not start)".to_owned())
        } else if !writer_ok {
            let error = s
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "unknown error".into());
            Some(format!("writer unhealthy: {error}"))
        } else if s.low_space.load(Ordering::Acquire) {
            Some(format!(
                "free space {} is below the {} reserve",
                human_bytes(free),
                human_bytes(s.min_free_bytes)
            ))
        } else if spool_bytes >= s.max_bytes {
            Some(format!(
                "spool at max_bytes ({} of {}); remove forwarded segments",
                human_bytes(spool_bytes),
                human_bytes(s.max_bytes)
            ))
        } else {
            None
        };
        SpoolStats {
            records_written: s.records_written.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            fail_closed: s.fail_closed.load(Ordering::Relaxed),
            mirror_errors: s.mirror_errors.load(Ordering::Relaxed),
            healthy,
            accepting: not_accepting.is_none(),
            not_accepting,
            queue_depth: s.in_flight.load(Ordering::Relaxed),
            spool_bytes,
            max_bytes: s.max_bytes,
            fill_ratio: spool_bytes as f64 / s.max_bytes as f64,
            free_bytes,
            min_free_bytes: s.min_free_bytes,
            segments_compressed: s.segments_compressed.load(Ordering::Relaxed),
            compress_errors: s.compress_errors.load(Ordering::Relaxed),
            last_seq: s.last_seq.load(Ordering::Relaxed),
        }
    }

    /// Drain and stop the writer, from any thread, without an async runtime
    /// (the gateway calls it after its runtimes are gone): new reservations
    /// fail with [`AuditError::Closed`] from now on; records committed
    /// through slots reserved earlier are still written (the writer waits
    /// for every reserved slot to be committed and written, or dropped — no
    /// idle wait); then the final checkpoint (if configured) is written,
    /// the segment `fsync`ed, the background compression stopped (an
    /// unfinished one is resumed by the next run), and the writer thread
    /// ends.
    ///
    /// Waits at most `timeout`; returns whether the writer finished. On
    /// `false` (e.g. a slot that is never committed) the writer keeps
    /// waiting for the outstanding slots and stops once they resolve; call
    /// again to wait more. Safe to call more than once, whether or not
    /// [`SpoolWorker::run`]'s shutdown signal fired, and after its future
    /// was dropped with its runtime (the writer is a plain thread). A
    /// worker that was never run counts as finished once it is dropped.
    pub fn close(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        s.closed.store(true, Ordering::Release);
        s.draining.store(true, Ordering::Release);
        s.stopping.store(true, Ordering::Release);
        let _ = s.tx.send(Msg::Wake);
        let deadline = Instant::now().checked_add(timeout);
        let mut done = s.done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            done = s
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The writer half: the writer thread's end of the queue and its periodic
/// work. Drive it with [`SpoolWorker::run`].
#[derive(Debug)]
pub struct SpoolWorker {
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
}

impl Drop for SpoolWorker {
    /// The writer thread ends by dropping its worker (and a worker that
    /// never ran ends here): the writer is taken out (releasing the
    /// directory lock) and [`Spool::close`] stops waiting.
    fn drop(&mut self) {
        let writer = self.shared.writer().take();
        if let Some(mut w) = writer {
            w.release_lock();
        }
        self.shared.mark_done();
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Record(_) => "Record",
            Msg::Wake => "Wake",
        })
    }
}

/// At most this many records per write.
const MAX_BATCH: usize = 4096;
/// Retry period of a failed writer, and of re-measuring a full spool.
const RETRY: Duration = Duration::from_secs(1);

impl SpoolWorker {
    /// Run the writer on its own thread until `shutdown` turns true (or its
    /// sender is dropped); then keep serving until nothing is reserved and no
    /// record arrived for `shutdown_idle`, write a final checkpoint (if
    /// configured), `fsync`, and return. Reservations made after that fail
    /// with [`AuditError::Closed`].
    ///
    /// The writer (and the compressor) are plain threads, not tasks: if this
    /// future is dropped with its runtime they keep running, and
    /// [`Spool::close`] drains and stops them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let shared = self.shared.clone();
        let (done_tx, mut done_rx) = oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("phigate-audit".into())
            .spawn(move || {
                self.run_blocking();
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer thread; refusing PHI requests");
            shared.closed.store(true, Ordering::Release);
            return;
        }
        tokio::select! {
            _ = &mut done_rx => return,
            _ = async {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            } => {}
        }
        shared.stopping.store(true, Ordering::Release);
        let _ = shared.tx.send(Msg::Wake);
        let _ = done_rx.await;
    }

    /// Run `f` on the writer (`None` once it finished).
    fn with_writer<T>(&self, f: impl FnOnce(&mut Writer) -> T) -> Option<T> {
        self.shared.writer().as_mut().map(f)
    }

    fn run_blocking(self) {
        self.with_writer(Writer::start_compressor);
        let shared = self.shared.clone();
        let shutdown_idle = self.with_writer(|w| w.options.shutdown_idle).unwrap_or_default();
        let mut batch = Vec::new();
        let mut idle_since = Instant::now();
        loop {
            let stopping = shared.stopping.load(Ordering::Acquire);
            let draining = shared.draining.load(Ordering::Acquire);
            let mut wait = self.with_writer(|w| w.wait_time()).unwrap_or(RETRY);
            if stopping && !draining {
                wait = wait.min(
                    shutdown_idle
                        .saturating_sub(idle_since.elapsed())
                        .max(Duration::from_millis(1)),
                );
            }
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Record(job)) => {
                    batch.push(*job);
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(Msg::Record(job)) => batch.push(*job),
                            Ok(Msg::Wake) => {}
                            Err(_) => break,
                        }
                    }
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let wrote = !batch.is_empty();
            if wrote {
                self.with_writer(|w| w.write_jobs(&mut batch));
            }
            // The interval fsync runs outside the mutex (inline commits go on).
            let pending_sync = self.with_writer(|w| w.tick()).flatten();
            if let Some(sync) = pending_sync {
                let result = sync.run();
                self.with_writer(|w| w.synced(result));
            }
            if wrote || shared.in_flight.load(Ordering::Acquire) > 0 {
                idle_since = Instant::now();
            }
            // Re-read: close() may have asked to drain while we waited.
            if shared.stopping.load(Ordering::Acquire)
                && shared.in_flight.load(Ordering::Acquire) == 0
                && (shared.draining.load(Ordering::Acquire)
                    || (stopping && idle_since.elapsed() >= shutdown_idle))
            {
                break;
            }
        }
        // No new reservations from here on; whatever raced in is still written.
        shared.closed.store(true, Ordering::Release);
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Record(job) = msg {
                batch.push(*job);
            }
        }
        // Take the writer out: inline commits racing in now fail (Closed).
        let writer = shared.writer().take();
        if let Some(mut w) = writer {
            if !batch.is_empty() {
                w.write_jobs(&mut batch);
            }
            w.finish();
            w.release_lock();
        }
    }
}
