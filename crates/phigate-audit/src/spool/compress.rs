//! Compressing closed segments with zstd, on a background thread.
//!
//! The steps for segment `S`, each crash-safe (at every point at least one
//! complete copy of `S` exists under a segment name, and readers prefer the
//! plain file while both exist):
//!
//! 1. compress `segment-S.jsonl` into `.segment-S.jsonl.zst.tmp`, `fsync` it;
//! 2. decode the temporary file and compare it with the plain file;
//! 3. rename it to `segment-S.jsonl.zst`, `fsync` the directory;
//! 4. remove `segment-S.jsonl`, `fsync` the directory.
//!
//! A crash leaves at worst a temporary file (removed at the next open) or
//! both forms (the next run compares them and finishes step 4, or drops a
//! compressed copy that does not match and starts over).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::writer::sync_dir;
use super::{Shared, UNKNOWN};
use crate::segment::{
    compress_file, compressed_segment_file_name, list_segment_files, open_segment, segment_file_name,
};

/// The temporary file a compression writes before renaming it into place.
pub(super) fn temp_name(first_seq: u64) -> String {
    format!(".{}.tmp", compressed_segment_file_name(first_seq))
}

/// Remove temporary files left by a compression interrupted by a crash.
pub(super) fn remove_temp_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".segment-") && name.ends_with(".jsonl.zst.tmp") {
            tracing::info!(
                file = name,
                "audit spool: removing an interrupted compression's temporary file"
            );
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The background compressor of one spool.
#[derive(Debug)]
pub(super) struct Compressor {
    tx: Option<mpsc::Sender<u64>>,
    abort: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Compressor {
    pub(super) fn start(dir: PathBuf, shared: Arc<Shared>) -> std::io::Result<Compressor> {
        let (tx, rx) = mpsc::channel::<u64>();
        let abort = Arc::new(AtomicBool::new(false));
        let stop = abort.clone();
        let handle = std::thread::Builder::new()
            .name("phigate-audit-zstd".into())
            .spawn(move || {
                let mut below = 0;
                let mut retry = false;
                loop {
                    // Segments left plain (failed, or deferred for lack of
                    // space) are retried at the next rotation, or after a while.
                    let msg = if retry {
                        rx.recv_timeout(RETRY_AFTER)
                    } else {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    match msg {
                        Ok(b) => below = below.max(b),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    while let Ok(b) = rx.try_recv() {
                        below = below.max(b);
                    }
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    retry = !compress_closed(&dir, below, &shared, &stop);
                }
            })?;
        Ok(Compressor {
            tx: Some(tx),
            abort,
            handle: Some(handle),
        })
    }

    /// Every segment whose first seq is below `first_seq` is closed:
    /// compress those still plain.
    pub(super) fn closed_below(&self, first_seq: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(first_seq);
        }
    }

    /// Abandon the work in progress (its temporary file is removed; the
    /// plain segment stays and is compressed on the next run) and wait for
    /// the thread.
    pub(super) fn stop(&mut self) {
        self.abort.store(true, Ordering::Release);
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long segments left plain wait for another try when no rotation comes.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Compress every plain segment whose first seq is below `below`. `false`
/// when some stay plain for now (an error, or too little free space to
/// hold the compressed copy next to the original).
pub(super) fn compress_closed(dir: &Path, below: u64, shared: &Shared, abort: &AtomicBool) -> bool {
    let files = match list_segment_files(dir) {
        Ok(f) => f,
        Err(e) => {
            shared.compress_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, dir = %dir.display(), "audit spool: cannot list segments to compress");
            return false;
        }
    };
    let mut all = true;
    for f in files.iter().filter(|f| !f.compressed && f.first_seq < below) {
        if abort.load(Ordering::Acquire) {
            return true;
        }
        // The compressed copy needs room next to the original until the
        // original is removed: do not take the writer's last bytes for it.
        let free = shared.free_bytes.load(Ordering::Relaxed);
        let plain_len = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
        if free != UNKNOWN && free < plain_len / 4 {
            tracing::warn!(
                segment = %segment_file_name(f.first_seq),
                free_bytes = free,
                "audit spool: too little free space to compress a closed segment now; retrying later"
            );
            all = false;
            continue;
        }
        match compress_segment(dir, f.first_seq, shared, abort) {
            Ok(Outcome::Compressed { plain, compressed }) => {
                shared.segments_compressed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    segment = %segment_file_name(f.first_seq),
                    plain_bytes = plain,
                    compressed_bytes = compressed,
                    ratio = format_args!("{:.1}", plain as f64 / compressed.max(1) as f64),
                    "audit spool: closed segment compressed"
                );
            }
            Ok(Outcome::Finished) => {
                shared.segments_compressed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(segment = %segment_file_name(f.first_seq), "audit spool: finished an interrupted compression");
            }
            Ok(Outcome::Gone | Outcome::Aborted) => {}
            Err(e) => {
                all = false;
                shared.compress_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    segment = %segment_file_name(f.first_seq),
                    "audit spool: compressing a closed segment failed; it stays uncompressed (retried later)"
                );
            }
        }
    }
    all
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Written, checked, renamed into place; the plain file removed.
    Compressed { plain: u64, compressed: u64 },
    /// Both forms existed and matched: the plain file was removed.
    Finished,
    /// The plain file is not there (already compressed, or removed).
    Gone,
    /// Stopped on request; nothing changed.
    Aborted,
}

/// Compress one closed segment (see the module documentation for the steps).
pub(super) fn compress_segment(
    dir: &Path,
    first_seq: u64,
    shared: &Shared,
    abort: &AtomicBool,
) -> std::io::Result<Outcome> {
    let plain = dir.join(segment_file_name(first_seq));
    let zst = dir.join(compressed_segment_file_name(first_seq));
    let tmp = dir.join(temp_name(first_seq));
    let plain_len = match std::fs::metadata(&plain) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
        Err(e) => return Err(e),
    };
    if let Ok(meta) = std::fs::metadata(&zst) {
        // A crash after step 3: finish, or start over if the copy differs.
        if same_content(&plain, &zst)? {
            remove_counted(dir, &plain, plain_len, shared)?;
            return Ok(Outcome::Finished);
        }
        tracing::warn!(file = %zst.display(), "audit spool: a compressed segment does not match its plain copy; compressing again");
        remove_counted(dir, &zst, meta.len(), shared)?;
    }
    let result = (|| -> std::io::Result<Option<u64>> {
        let Some(len) = compress_file(&plain, &tmp, &|| abort.load(Ordering::Acquire))? else {
            return Ok(None);
        };
        if !same_content(&plain, &tmp)? {
            return Err(std::io::Error::other(
                "the compressed copy does not decode to the segment's bytes",
            ));
        }
        Ok(Some(len))
    })();
    let compressed = match result {
        Ok(Some(len)) => len,
        Ok(None) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Outcome::Aborted);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    {
        let _guard = shared.accounting();
        std::fs::rename(&tmp, &zst)?;
        shared.add_bytes(compressed);
    }
    sync_dir(dir)?;
    remove_counted(dir, &plain, plain_len, shared)?;
    Ok(Outcome::Compressed {
        plain: plain_len,
        compressed,
    })
}

/// Remove a segment file, take its bytes off the spool size, `fsync` the directory.
fn remove_counted(dir: &Path, path: &Path, len: u64, shared: &Shared) -> std::io::Result<()> {
    {
        let _guard = shared.accounting();
        std::fs::remove_file(path)?;
        shared.sub_bytes(len);
    }
    sync_dir(dir)
}

/// Does `copy` (plain or zstd) hold exactly the bytes of `plain`? Errors
/// reading `plain` are errors; a `copy` that cannot be decoded is `false`.
fn same_content(plain: &Path, copy: &Path) -> std::io::Result<bool> {
    let mut a = open_segment(plain)?;
    let mut b = match open_segment(copy) {
        Ok(r) => r,
        Err(_) => return Ok(false),
    };
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut a, &mut buf_a)?;
        let m = match read_full(&mut b, &mut buf_b) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, file = %copy.display(), "audit spool: compressed segment cannot be decoded");
                return Ok(false);
            }
        };
        if n != m || buf_a[..n] != buf_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
