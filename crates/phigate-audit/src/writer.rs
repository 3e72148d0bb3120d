//! The skeleton's bounded audit queue and single-file writer.
//!
//! Superseded by [`crate::Spool`] (durable, hash-chained, segmented); kept
//! until the gateway has switched over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::{AuditError, AuditRecord};

/// Shared counters, read by metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    written: AtomicU64,
    write_errors: AtomicU64,
    healthy: AtomicBool,
}

impl AuditStats {
    /// Records appended to the file so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Failed write attempts so far.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
    /// False while the last write failed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The request-side handle: reserves queue slots. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<AuditRecord>,
    capacity: usize,
    stats: Arc<AuditStats>,
}

/// A reserved place in the audit queue. Sending through it cannot fail for
/// lack of room; dropping it unused frees the place.
#[derive(Debug)]
pub struct AuditSlot(mpsc::OwnedPermit<AuditRecord>);

impl AuditSlot {
    /// Hand the record to the writer.
    pub fn send(self, record: AuditRecord) {
        self.0.send(record);
    }
}

/// The background half: owns the file and appends records.
#[derive(Debug)]
pub struct AuditWorker {
    rx: mpsc::Receiver<AuditRecord>,
    path: PathBuf,
    file: Option<std::fs::File>,
    stats: Arc<AuditStats>,
}

impl AuditWriter {
    /// Open (create or append to) the audit file and build both halves.
    /// Fails if the file cannot be opened, so a misconfigured path stops
    /// start-up instead of the first request.
    pub fn open(path: &Path, queue_size: usize) -> Result<(AuditWriter, AuditWorker), AuditError> {
        if queue_size == 0 {
            return Err(AuditError::ZeroQueue);
        }
        let file = open_append(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(queue_size);
        let stats = Arc::new(AuditStats::default());
        stats.healthy.store(true, Ordering::Relaxed);
        Ok((
            AuditWriter {
                tx,
                capacity: queue_size,
                stats: stats.clone(),
            },
            AuditWorker {
                rx,
                path: path.to_path_buf(),
                file: Some(file),
                stats,
            },
        ))
    }

    /// Reserve a slot for one request's record, or say why not.
    pub fn reserve(&self) -> Result<AuditSlot, AuditError> {
        if !self.stats.is_healthy() {
            return Err(AuditError::Unhealthy);
        }
        self.tx
            .clone()
            .try_reserve_owned()
            .map(AuditSlot)
            .map_err(|_| AuditError::QueueFull)
    }

    /// Records queued (or reserved) and not yet written.
    pub fn queue_depth(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    /// Counters shared with the worker.
    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.stats
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// After shutdown is signalled, in-flight requests may still finish and send
/// their records; the worker keeps draining until the queue has been idle
/// this long.
const SHUTDOWN_IDLE: Duration = Duration::from_secs(2);

impl AuditWorker {
    /// Run until shutdown: receive records in batches, append each batch as
    /// JSON lines and flush it. On a write failure the batch is kept, the
    /// writer is marked unhealthy (so new requests are refused) and the write
    /// is retried every second with a freshly opened file.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut pending: Vec<AuditRecord> = Vec::new();
        let mut shutting_down = *shutdown.borrow();
        loop {
            if pending.is_empty() {
                let got = if shutting_down {
                    match tokio::time::timeout(SHUTDOWN_IDLE, self.rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        r = self.rx.recv() => r,
                        _ = shutdown.changed() => {
                            shutting_down = true;
                            continue;
                        }
                    }
                };
                match got {
                    Some(r) => pending.push(r),
                    None => break,
                }
                while let Ok(r) = self.rx.try_recv() {
                    pending.push(r);
                    if pending.len() >= 4096 {
                        break;
                    }
                }
            }
            match self.write_batch(&pending) {
                Ok(()) => {
                    self.stats
                        .written
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    self.stats.healthy.store(true, Ordering::Relaxed);
                    pending.clear();
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, path = %self.path.display(), records = pending.len(), "audit write failed; refusing PHI requests until it recovers");
                    self.file = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.sync_all();
        }
        tracing::info!(written = self.stats.written(), "audit writer stopped");
    }

    fn write_batch(&mut self, batch: &[AuditRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for r in batch {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        match self.file.as_mut() {
            // One write_all of whole lines onto an O_APPEND file.
            Some(f) => {
                f.write_all(&buf)?;
                f.flush()
            }
            None => Err(std::io::Error::other("audit file not open")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            ts: crate::now_rfc3339(),
            request_id: format!("req-{i}"),
            decision: "allow".into(),
            reason: "allowed".into(),
            status: 200,
            method: "GET".into(),
            path: "/fhir/Patient/1".into(),
            route: Some("/fhir/Patient/{id}".into()),
            sub: Some("u".into()),
            client_id: Some("c".into()),
            iss: Some("i".into()),
            scopes_granted: vec!["user/Patient.rs".into()],
            scopes_required: vec!["user/Patient.rs".into()],
            upstream_status: Some(200),
            duration_ms: 1.5,
            remote_addr: Some("127.0.0.1:1".into()),
            policy_version: "sha256:x".into(),
            patient: None,
            break_glass: false,
            justification: None,
            shadow_decision: None,
        }
    }

    #[tokio::test]
    async fn writes_every_record_as_a_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (w, worker) = AuditWriter::open(&path, 8).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(worker.run(stop_rx));
        for i in 0..100 {
            let slot = loop {
                match w.reserve() {
                    Ok(s) => break s,
                    Err(AuditError::QueueFull) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            };
            slot.send(record(i));
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 100);
        for (i, r) in lines.iter().enumerate() {
            assert_eq!(r.request_id, format!("req-{i}"));
        }
        assert_eq!(w.stats().written(), 100);
    }

    #[tokio::test]
    async fn full_queue_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _worker) = AuditWriter::open(&dir.path().join("a.jsonl"), 2).unwrap();
        let a = w.reserve().unwrap();
        let _b = w.reserve().unwrap();
        assert!(matches!(w.reserve(), Err(AuditError::QueueFull)));
        assert_eq!(w.queue_depth(), 2);
        drop(a);
        assert!(w.reserve().is_ok());
    }

    #[test]
    fn unopenable_file_fails_at_start() {
        let e = AuditWriter::open(Path::new("/nonexistent-dir/x/audit.jsonl"), 4).unwrap_err();
        assert!(e.to_string().contains("cannot open audit file"));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            AuditWriter::open(&dir.path().join("a"), 0),
            Err(AuditError::ZeroQueue)
        ));
    }
}
