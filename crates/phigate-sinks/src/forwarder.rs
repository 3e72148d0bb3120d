//! The [`Sink`] trait and the [`Forwarder`] loop: read → send → on ack
//! persist the cursor → repeat, retrying failures with capped exponential
//! back-off and never skipping a record.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::spool::{self, Gap, ReadOutcome, SpoolReader, SpoolRecord};
use crate::Error;

/// A delivery failure. `acked` records at the front of the batch were
/// acknowledged before the failure; the forwarder advances its cursor past
/// them and resends the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub acked: usize,
    pub message: String,
}

impl SinkError {
    /// Nothing of the batch was acknowledged.
    pub fn new(message: impl Into<String>) -> SinkError {
        SinkError {
            acked: 0,
            message: message.into(),
        }
    }

    /// The first `acked` records were acknowledged, then delivery failed.
    pub fn after(acked: usize, message: impl Into<String>) -> SinkError {
        SinkError {
            acked,
            message: message.into(),
        }
    }
}

/// One destination for audit records.
///
/// A sink is driven by exactly one [`Forwarder`] task, so its methods take
/// `&mut self` and keep connection state inside.
#[async_trait]
pub trait Sink: Send {
    /// A short type name for logs and status (`nats`, `syslog`, `fhir`, `stdout`).
    fn kind(&self) -> &'static str;

    /// Runs once when the forwarder starts (and is retried until it
    /// succeeds): connect and check the destination (e.g. that the JetStream
    /// stream exists). `Ok` marks the sink healthy before anything is sent.
    async fn connect(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Deliver `batch` (non-empty, in seq order) and return `Ok` only once
    /// the receiver has acknowledged every record in it. Sinks (re)connect
    /// lazily here. On `Err`, the forwarder persists the acknowledged prefix,
    /// calls [`disconnect`](Sink::disconnect), waits, and calls `send` again
    /// with the remaining records.
    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError>;

    /// Runs after a failed `send` and when the forwarder stops: drop (or
    /// gracefully close) the connection so the next `send` starts afresh.
    async fn disconnect(&mut self) {}
}

/// Tuning of one forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwarderSettings {
    /// Most records handed to [`Sink::send`] at once.
    pub batch_size: usize,
    /// How often an idle forwarder looks for new spool lines.
    pub poll_interval: Duration,
    /// First retry delay after a failure; doubled per consecutive failure.
    pub initial_backoff: Duration,
    /// Cap of the retry delay.
    pub max_backoff: Duration,
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        ForwarderSettings {
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Live state of one forwarder, shared with metrics and `/readyz`.
///
/// Metric names the gateway exports from it:
/// `phigate_audit_sink_lag_records{sink}` ([`lag_records`](SinkStatusSnapshot::lag_records)),
/// `phigate_audit_sink_errors_total{sink}` ([`errors_total`](SinkStatusSnapshot::errors_total)),
/// `phigate_audit_sink_gap_records_total{sink}` and `phigate_audit_sink_healthy{sink}`.
#[derive(Debug)]
pub struct SinkStatus {
    name: String,
    kind: &'static str,
    cursor: AtomicU64,
    spool_last_seq: AtomicU64,
    errors_total: AtomicU64,
    records_sent_total: AtomicU64,
    gaps_total: AtomicU64,
    gap_records_total: AtomicU64,
    healthy: AtomicBool,
    running: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// A copy of a [`SinkStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatusSnapshot {
    pub name: String,
    pub kind: &'static str,
    /// Last seq acknowledged by the sink (the persisted cursor).
    pub cursor: u64,
    /// Last seq in the spool, as last looked up.
    pub spool_last_seq: u64,
    /// `spool_last_seq - cursor`: records not yet acknowledged.
    pub lag_records: u64,
    /// Failed connects/sends, spool read errors and cursor write errors.
    pub errors_total: u64,
    /// Records acknowledged by the sink (including re-sent ones).
    pub records_sent_total: u64,
    /// Seq gaps found in the spool (records deleted before they were sent).
    pub gaps_total: u64,
    /// Records lost in those gaps.
    pub gap_records_total: u64,
    /// The last connect/send succeeded (false until the first success).
    pub healthy: bool,
    /// The forwarder task is running.
    pub running: bool,
    /// The most recent error, kept after recovery for diagnosis.
    pub last_error: Option<String>,
}

impl SinkStatus {
    fn new(name: &str, kind: &'static str) -> SinkStatus {
        SinkStatus {
            name: name.to_owned(),
            kind,
            cursor: AtomicU64::new(0),
            spool_last_seq: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            records_sent_total: AtomicU64::new(0),
            gaps_total: AtomicU64::new(0),
            gap_records_total: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            running: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The sink's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the last connect/send succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records in the spool not yet acknowledged by this sink.
    pub fn lag_records(&self) -> u64 {
        self.spool_last_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.cursor.load(Ordering::Relaxed))
    }

    /// Failures so far.
    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> SinkStatusSnapshot {
        SinkStatusSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            cursor: self.cursor.load(Ordering::Relaxed),
            spool_last_seq: self.spool_last_seq.load(Ordering::Relaxed),
            lag_records: self.lag_records(),
            errors_total: self.errors_total(),
            records_sent_total: self.records_sent_total.load(Ordering::Relaxed),
            gaps_total: self.gaps_total.load(Ordering::Relaxed),
            gap_records_total: self.gap_records_total.load(Ordering::Relaxed),
            healthy: self.healthy(),
            running: self.running.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn failed(&self, what: &str, message: &str) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        tracing::warn!(sink = %self.name, kind = self.kind, "audit sink {what} failed: {message}");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{what}: {message}"));
    }

    fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(sink = %self.name, kind = self.kind, "audit sink healthy");
        }
    }

    fn gap(&self, gap: &Gap) {
        self.gaps_total.fetch_add(1, Ordering::Relaxed);
        self.gap_records_total.fetch_add(gap.missing(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
            "spool gap: records {}..={} are missing (segment {})",
            gap.expected,
            gap.found - 1,
            gap.segment
        ));
    }
}

/// Capped exponential back-off.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleep for `delay`; `true` if shutdown was requested meanwhile (or its
/// sender is gone).
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => *shutdown.borrow(),
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
    }
}

/// Forwards one spool to one sink, at least once.
pub struct Forwarder {
    name: String,
    sink: Box<dyn Sink>,
    settings: ForwarderSettings,
    status: Arc<SinkStatus>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("name", &self.name)
            .field("kind", &self.sink.kind())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Forwarder {
    /// A forwarder for `sink`, whose cursor is `<spool>/cursors/<name>.json`.
    /// `name` must be a valid sink name (see [`valid_sink_name`](crate::config::valid_sink_name)).
    pub fn new(name: impl Into<String>, sink: Box<dyn Sink>, settings: ForwarderSettings) -> Forwarder {
        let name = name.into();
        let status = Arc::new(SinkStatus::new(&name, sink.kind()));
        Forwarder {
            name,
            sink,
            settings,
            status,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &'static str {
        self.sink.kind()
    }

    /// The live status; keep the handle to read it while [`run`](Forwarder::run) runs.
    pub fn status(&self) -> Arc<SinkStatus> {
        self.status.clone()
    }

    /// Forward `spool_dir` until `shutdown` becomes `true` (or its sender is
    /// dropped).
    ///
    /// Resumes after the persisted cursor. Each batch is sent until the sink
    /// acknowledges it — failures are retried with back-off (doubling from
    /// `initial_backoff` up to `max_backoff`), records are never skipped —
    /// and the cursor is persisted after every acknowledgement. On shutdown
    /// a batch being sent is finished and its cursor persisted; a batch
    /// waiting for a retry is left for the next start (at least once).
    ///
    /// Returns `Err` only when the cursor file cannot be read (a corrupt
    /// cursor must not silently restart from 0 or skip ahead).
    pub async fn run(
        mut self,
        spool_dir: impl Into<PathBuf>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let dir: PathBuf = spool_dir.into();
        let status = self.status.clone();
        status.running.store(true, Ordering::Relaxed);
        let result = self.run_inner(&dir, &mut shutdown).await;
        self.sink.disconnect().await;
        status.running.store(false, Ordering::Relaxed);
        if let Err(e) = &result {
            status.failed("start", &e.to_string());
        }
        tracing::info!(sink = %self.name, cursor = status.cursor.load(Ordering::Relaxed), "audit sink forwarder stopped");
        result
    }

    async fn run_inner(&mut self, dir: &Path, shutdown: &mut watch::Receiver<bool>) -> Result<(), Error> {
        let status = self.status.clone();
        let cursor = {
            let (d, n) = (dir.to_owned(), self.name.clone());
            blocking(move || spool::read_cursor(&d, &n)).await?
        };
        status.cursor.store(cursor, Ordering::Relaxed);
        tracing::info!(sink = %self.name, kind = self.sink.kind(), cursor, spool = %dir.display(), "audit sink forwarder started");
        let mut backoff = Backoff::new(self.settings.initial_backoff, self.settings.max_backoff);

        loop {
            match self.sink.connect().await {
                Ok(()) => {
                    status.succeeded();
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    status.failed("connect", &e.message);
                    self.sink.disconnect().await;
                    refresh_lag(&status, dir).await;
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return Ok(());
                    }
                }
            }
        }

        let mut reader = Some(SpoolReader::new(dir, cursor));
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let Some(r) = reader.take() else {
                return Err(Error::Spool("internal: spool reader lost".into()));
            };
            let max = self.settings.batch_size;
            let (r, read, last) = blocking(move || {
                let mut r = r;
                let read = r.read_available(max);
                let last = spool::spool_last_seq(r.dir());
                Ok((r, read, last))
            })
            .await?;
            reader = Some(r);
            if let Ok(last) = last {
                status.spool_last_seq.store(last, Ordering::Relaxed);
            }
            let batch = match read {
                Ok(ReadOutcome { records, gaps }) => {
                    for gap in &gaps {
                        status.gap(gap);
                    }
                    records
                }
                Err(e) => {
                    status.failed("spool read", &e.to_string());
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                if sleep_or_shutdown(self.settings.poll_interval, shutdown).await {
                    return Ok(());
                }
                continue;
            }
            if !self.deliver(dir, &batch, &mut backoff, shutdown).await {
                return Ok(());
            }
        }
    }

    /// Send `batch` until all of it is acknowledged (`true`), or shutdown
    /// interrupts a retry wait (`false`).
    async fn deliver(
        &mut self,
        dir: &Path,
        batch: &[SpoolRecord],
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let status = self.status.clone();
        let mut start = 0;
        while start < batch.len() {
            let rest = &batch[start..];
            match self.sink.send(rest).await {
                Ok(()) => {
                    self.acknowledge(dir, rest).await;
                    status.succeeded();
                    backoff.reset();
                    start = batch.len();
                }
                Err(e) => {
                    let acked = e.acked.min(rest.len());
                    if acked > 0 {
                        self.acknowledge(dir, &rest[..acked]).await;
                        start += acked;
                    }
                    status.failed("send", &e.message);
                    self.sink.disconnect().await;
                    refresh_lag(&status, dir).await;
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Persist the cursor after `acked` (non-empty).
    async fn acknowledge(&mut self, dir: &Path, acked: &[SpoolRecord]) {
        let Some(last) = acked.last() else { return };
        let seq = last.seq;
        self.status
            .records_sent_total
            .fetch_add(acked.len() as u64, Ordering::Relaxed);
        let (d, n) = (dir.to_owned(), self.name.clone());
        match blocking(move || spool::write_cursor(&d, &n, seq)).await {
            // The status reports the *persisted* cursor.
            Ok(()) => self.status.cursor.store(seq, Ordering::Relaxed),
            Err(e) => {
                // Delivered but not persisted: a restart re-sends these records
                // (receivers de-duplicate by event_id); the next ack retries.
                self.status.failed("cursor write", &e.to_string());
                tracing::error!(sink = %self.name, seq, "could not persist the audit sink cursor: {e}");
            }
        }
    }
}

/// Look up the spool's last seq for the lag metric (errors leave it as is).
async fn refresh_lag(status: &SinkStatus, dir: &Path) {
    let d = dir.to_owned();
    if let Ok(last) = blocking(move || spool::spool_last_seq(&d)).await {
        status.spool_last_seq.store(last, Ordering::Relaxed);
    }
}

/// Run blocking file I/O off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Spool(format!("spool I/O task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
