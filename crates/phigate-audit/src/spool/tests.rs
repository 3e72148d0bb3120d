//! Compressed segments, the free-space reserve and `Spool::close`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::compress::{compress_closed, compress_segment, temp_name, Outcome};
use super::writer::dir_bytes;
use super::*;
use crate::segment::{
    compressed_segment_file_name, list_segment_files, segment_file_name, segment_infos, ZSTD_MAGIC,
};
use crate::testing::{access, realistic, segments, Running};
use crate::verify::verify;

const MIB: u64 = 1024 * 1024;

fn opts() -> SpoolOptions {
    SpoolOptions {
        durability: Durability::None,
        shutdown_idle: Duration::ZERO,
        ..SpoolOptions::default()
    }
}

/// A job as `Slot::commit` would send it, holding a real reservation.
fn job(spool: &Spool, record: AuditRecord) -> Job {
    let mut slot = spool.reserve().unwrap();
    slot.shared.take(); // the reservation now belongs to the job
    let (reply, _rx) = oneshot::channel();
    Job {
        body: JobBody::Access(record),
        reply,
    }
}

/// A spool of `n` gateway-like records in segments of `segment_max_bytes`,
/// written without running the worker (so nothing is compressed yet).
fn written_spool(dir: &Path, n: usize, segment_max_bytes: u64) -> (Spool, SpoolWorker) {
    let (spool, worker) = Spool::open(
        dir,
        SpoolOptions {
            segment_max_bytes,
            ..opts()
        },
    )
    .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut jobs: Vec<Job> = chunk.iter().map(|i| job(&spool, realistic(*i))).collect();
        worker.with_writer(|w| w.write_jobs(&mut jobs));
    }
    (spool, worker)
}

fn compressed_names(dir: &Path) -> Vec<bool> {
    list_segment_files(dir)
        .unwrap()
        .iter()
        .map(|f| f.compressed)
        .collect()
}

fn verify_ok(dir: &Path, records: u64) -> crate::verify::VerifyReport {
    let r = verify(&[dir.to_path_buf()], &[]).unwrap();
    assert!(r.ok, "{}", r.to_text());
    assert_eq!(r.records, records, "{}", r.to_text());
    r
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- compression

#[tokio::test]
async fn closed_segments_are_compressed_in_the_background_and_read_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(
        dir.path(),
        SpoolOptions {
            segment_max_bytes: 16 * 1024,
            ..opts()
        },
    );
    for i in 0..200 {
        run.commit_record(realistic(i)).await;
    }
    let d = dir.path().to_path_buf();
    let segs = crate::segment::list_segments(&d).unwrap().len();
    assert!(segs >= 5, "{segs}");
    wait_for("every closed segment compressed", || {
        let c = compressed_names(&d);
        c.len() == segs
            && c[..segs - 1].iter().all(|c| *c)
            && run.spool.stats().segments_compressed == segs as u64 - 1
    });
    // The open segment stays plain.
    assert_eq!(compressed_names(&d).last(), Some(&false));
    let stats = run.spool.stats();
    assert_eq!(stats.segments_compressed, segs as u64 - 1);
    assert_eq!(stats.compress_errors, 0);
    // The bound counts bytes on disk.
    assert_eq!(stats.spool_bytes, dir_bytes(&d).unwrap());
    assert!(stats.spool_bytes * 2 < stats.bytes_written, "{stats:?}");
    assert!((stats.fill_ratio - stats.spool_bytes as f64 / stats.max_bytes as f64).abs() < 1e-12);
    run.stop().await;

    // verify, report, the test helper's reader and segment_infos read them.
    let r = verify_ok(&d, 200);
    assert!(r.segments[0].compressed && !r.segments.last().unwrap().compressed);
    assert!(r.to_text().contains(".jsonl.zst (zstd): "), "{}", r.to_text());
    let report = crate::report::report(std::slice::from_ref(&d), None).unwrap();
    assert_eq!((report.records, report.unreadable_lines), (200, 0));
    let lines: usize = segments(&d).iter().map(|(_, l)| l.len()).sum();
    assert_eq!(lines, 200);
    let infos = segment_infos(&d).unwrap();
    assert!(infos[0].compressed && infos[0].uncompressed_bytes.unwrap() > infos[0].bytes * 2);
    assert!(infos[0].path.to_string_lossy().ends_with(".jsonl.zst"));

    // Restart: the chain continues; segments already compressed stay so.
    let run = Running::start(dir.path(), opts());
    assert_eq!(run.commit_record(realistic(200)).await.seq, 201);
    run.stop().await;
    verify_ok(&d, 201);
}

#[test]
fn mixed_compressed_and_plain_segments_verify_and_report_and_tampering_shows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (spool, worker) = written_spool(d, 120, 8 * 1024);
    drop((spool, worker));
    let files = list_segment_files(d).unwrap();
    assert!(files.len() >= 5);
    let shared = Spool::open(d, opts()).unwrap().0.shared; // for byte accounting only
    let never = AtomicBool::new(false);
    // Compress every other closed segment.
    for f in files
        .iter()
        .step_by(2)
        .filter(|f| f.first_seq != files.last().unwrap().first_seq)
    {
        let out = compress_segment(d, f.first_seq, &shared, &never).unwrap();
        assert!(matches!(out, Outcome::Compressed { .. }), "{out:?}");
    }
    drop(shared);
    let c = compressed_names(d);
    assert!(c.contains(&true) && c.contains(&false), "{c:?}");
    verify_ok(d, 120);
    let report = crate::report::report(&[d.to_path_buf()], None).unwrap();
    assert_eq!(report.records, 120);

    // A compressed segment edited (decoded, changed, re-encoded): hash mismatch.
    let copy = crate::testing::copy_spool(d);
    let zst = copy.path().join(compressed_segment_file_name(1));
    let text = String::from_utf8(zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap()).unwrap();
    let edited = text.replacen("\"status\":200", "\"status\":204", 1);
    assert_ne!(text, edited);
    std::fs::write(&zst, zstd::encode_all(edited.as_bytes(), 3).unwrap()).unwrap();
    let p = verify(&[copy.path().to_path_buf()], &[])
        .unwrap()
        .problem
        .unwrap();
    assert!(
        p.file.ends_with(".jsonl.zst") && p.message.contains("hash mismatch"),
        "{p}"
    );

    // A truncated compressed segment: named, with the line it stopped at.
    let copy = crate::testing::copy_spool(d);
    let zst = copy.path().join(compressed_segment_file_name(1));
    let bytes = std::fs::read(&zst).unwrap();
    std::fs::write(&zst, &bytes[..bytes.len() / 2]).unwrap();
    let r = verify(&[copy.path().to_path_buf()], &[]).unwrap();
    let p = r.problem.unwrap();
    assert!(p.message.contains("cannot be decoded"), "{p}");
    assert!(p.file.ends_with(".jsonl.zst"));
}

#[test]
fn a_crash_between_compression_steps_leaves_a_complete_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(written_spool(d, 60, 8 * 1024));
    let files = list_segment_files(d).unwrap();
    assert!(files.len() >= 3);
    let (s1, s2) = (files[0].first_seq, files[1].first_seq);

    // Crash during step 1: a temporary file (partial) is left behind.
    std::fs::write(d.join(temp_name(s1)), ZSTD_MAGIC).unwrap();
    // Crash after step 3: both forms, both complete.
    crate::segment::compress_segment_file(
        &d.join(segment_file_name(s1)),
        &d.join(compressed_segment_file_name(s1)),
    )
    .unwrap();
    // Both forms, but the compressed copy is bad (cannot happen by
    // construction; it must never win over the plain file).
    std::fs::write(d.join(compressed_segment_file_name(s2)), b"not zstd at all\n").unwrap();

    // Listing and readers take the plain file once.
    assert_eq!(crate::segment::list_segments(d).unwrap().len(), files.len());
    verify_ok(d, 60);
    let infos = segment_infos(d).unwrap();
    assert!(!infos[0].compressed && infos[0].other_copy.is_some());
    // The bound counts both copies while both exist.
    let all: u64 = list_segment_files(d)
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(&f.path).unwrap().len())
        .sum();
    assert_eq!(dir_bytes(d).unwrap(), all);

    // The next run removes the temporary file and finishes the job.
    let (spool, worker) = Spool::open(d, opts()).unwrap();
    assert!(!d.join(temp_name(s1)).exists());
    assert_eq!(spool.stats().spool_bytes, all);
    let never = AtomicBool::new(false);
    let below = files.last().unwrap().first_seq;
    assert!(compress_closed(d, below, &spool.shared, &never));
    let stats = spool.stats();
    assert_eq!(stats.compress_errors, 0);
    assert_eq!(stats.segments_compressed as usize, files.len() - 1);
    assert_eq!(stats.spool_bytes, dir_bytes(d).unwrap());
    let c = compressed_names(d);
    assert_eq!(c.len(), files.len());
    assert!(c[..c.len() - 1].iter().all(|c| *c) && !c[c.len() - 1]);
    drop((spool, worker));
    verify_ok(d, 60);
}

#[test]
fn an_aborted_compression_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (spool, _worker) = written_spool(d, 30, 8 * 1024);
    let before = dir_bytes(d).unwrap();
    let abort = AtomicBool::new(true);
    assert_eq!(
        compress_segment(d, 1, &spool.shared, &abort).unwrap(),
        Outcome::Aborted
    );
    assert!(!d.join(temp_name(1)).exists());
    assert_eq!(compressed_names(d).iter().filter(|c| **c).count(), 0);
    assert_eq!(dir_bytes(d).unwrap(), before);
    assert_eq!(spool.stats().spool_bytes, before);
}

#[test]
fn compression_waits_when_the_copy_would_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(written_spool(d, 60, 8 * 1024));
    let free = Arc::new(AtomicU64::new(100));
    let (spool, _worker) = Spool::open(
        d,
        SpoolOptions {
            free_space: probe(&free),
            ..opts()
        },
    )
    .unwrap();
    let below = list_segment_files(d).unwrap().last().unwrap().first_seq;
    let never = AtomicBool::new(false);
    assert!(!compress_closed(d, below, &spool.shared, &never));
    assert!(!compressed_names(d).contains(&true));
    free.store(u64::MAX / 2, Ordering::Relaxed);
    spool.shared.check_free_space(&probe(&free));
    assert!(compress_closed(d, below, &spool.shared, &never));
    assert_eq!(compressed_names(d).iter().filter(|c| !**c).count(), 1);
}

#[test]
fn a_compressed_last_segment_is_continued_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(written_spool(d, 30, 8 * 1024));
    let last = list_segment_files(d).unwrap().pop().unwrap();
    let zst = d.join(compressed_segment_file_name(last.first_seq));
    crate::segment::compress_segment_file(&last.path, &zst).unwrap();
    std::fs::remove_file(&last.path).unwrap();
    let (spool, worker) = Spool::open(d, opts()).unwrap();
    let mut jobs = vec![job(&spool, realistic(30))];
    worker.with_writer(|w| w.write_jobs(&mut jobs));
    drop((spool, worker));
    assert!(d.join(segment_file_name(31)).exists());
    verify_ok(d, 31);

    // A truncated compressed last segment is corruption, not a torn tail.
    let bytes = std::fs::read(&zst).unwrap();
    std::fs::remove_file(d.join(segment_file_name(31))).unwrap();
    std::fs::write(&zst, &bytes[..bytes.len() - 20]).unwrap();
    let e = Spool::open(d, opts()).unwrap_err();
    assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
}

#[test]
fn the_byte_bound_counts_compressed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(written_spool(d, 150, 16 * 1024));
    let plain = dir_bytes(d).unwrap();
    // A bound the plain spool exceeds but the compressed one does not.
    let (spool, worker) = Spool::open(
        d,
        SpoolOptions {
            max_bytes: plain / 2,
            ..opts()
        },
    )
    .unwrap();
    let stats = spool.stats();
    assert!(!stats.accepting && stats.fill_ratio > 1.9, "{stats:?}");
    assert!(
        stats
            .not_accepting
            .as_deref()
            .unwrap_or_default()
            .starts_with("spool at max_bytes"),
        "{stats:?}"
    );
    assert!(matches!(spool.reserve(), Err(AuditError::SpoolFull)));
    let never = AtomicBool::new(false);
    let below = list_segment_files(d).unwrap().last().unwrap().first_seq;
    assert!(compress_closed(d, below, &spool.shared, &never));
    let stats = spool.stats();
    assert_eq!(stats.spool_bytes, dir_bytes(d).unwrap());
    assert!(stats.accepting && stats.fill_ratio < 1.0, "{stats:?}");
    assert!(spool.reserve().is_ok());
    drop(worker);
}

/// Not a pass/fail test of a number: prints the ratio on gateway-like
/// records (`cargo test -p phigate-audit compression_ratio -- --nocapture`).
#[test]
fn compression_ratio_on_gateway_like_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 20_000;
    let (spool, worker) = written_spool(d, n, DEFAULT_SEGMENT_MAX_BYTES);
    let plain = dir_bytes(d).unwrap();
    let never = AtomicBool::new(false);
    // Close the segment by hand: compress it as the spool would.
    let started = Instant::now();
    let out = compress_segment(d, 1, &spool.shared, &never).unwrap();
    let took = started.elapsed();
    let Outcome::Compressed { plain: p, compressed } = out else {
        panic!("{out:?}")
    };
    assert_eq!(p, plain);
    let ratio = plain as f64 / compressed as f64;
    if let Some((_, lines)) = segments(d).first() {
        println!("sample line ({} bytes): {}", lines[7].len() + 1, lines[7]);
    }
    println!(
        "{n} gateway-like records: {} bytes/record plain, {} compressed ({:.1} bytes/record): {ratio:.1}x, in {took:?}",
        plain / n as u64,
        compressed,
        compressed as f64 / n as f64
    );
    assert!(ratio > 5.0, "{ratio}");
    drop((spool, worker));
    verify_ok(d, n as u64);
    // PHIGATE_ZSTD_LEVELS=1: compare levels on the same text (level 19 is slow).
    if std::env::var_os("PHIGATE_ZSTD_LEVELS").is_some() {
        let data = std::fs::read(d.join(compressed_segment_file_name(1))).unwrap();
        let text = zstd::decode_all(&data[..]).unwrap();
        for level in [1, 3, 6, 9, 19] {
            let t = Instant::now();
            let c = zstd::encode_all(&text[..], level).unwrap();
            println!(
                "level {level}: {:.1}x in {:?}",
                text.len() as f64 / c.len() as f64,
                t.elapsed()
            );
        }
    }
}

// ------------------------------------------------------------ free space

/// A free-space probe the test controls.
fn probe(free: &Arc<AtomicU64>) -> FreeSpaceProbe {
    let free = free.clone();
    FreeSpaceProbe(Arc::new(move |_: &Path| Ok(free.load(Ordering::Relaxed))))
}

#[test]
fn below_the_free_space_reserve_reserve_refuses_from_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(AtomicU64::new(12 * MIB));
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            free_space: probe(&free),
            ..opts()
        },
    )
    .unwrap();
    match spool.reserve() {
        Err(AuditError::LowDiskSpace { free, min }) => {
            assert_eq!((free, min), (12 * MIB, DEFAULT_MIN_FREE_BYTES))
        }
        other => panic!("{other:?}"),
    }
    let stats = spool.stats();
    assert!(!stats.accepting && stats.healthy, "{stats:?}");
    assert_eq!(
        stats.not_accepting.as_deref(),
        Some("free space 12 MiB is below the 64 MiB reserve")
    );
    assert_eq!((stats.free_bytes, stats.fail_closed), (Some(12 * MIB), 1));

    // Space comes back: the next check (the writer's, once a second) admits again.
    free.store(100 * MIB, Ordering::Relaxed);
    spool.shared.check_free_space(&probe(&free));
    let stats = spool.stats();
    assert!(stats.accepting && stats.not_accepting.is_none(), "{stats:?}");
    assert!(spool.reserve().is_ok());
    drop(worker);
}

#[test]
fn the_reserve_keeps_room_for_reservations_already_made() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(AtomicU64::new(u64::MAX / 2));
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            free_space: probe(&free),
            ..opts()
        },
    )
    .unwrap();
    let held = job(&spool, access(0));
    free.store(MIB, Ordering::Relaxed);
    spool.shared.check_free_space(&probe(&free));
    assert!(matches!(spool.reserve(), Err(AuditError::LowDiskSpace { .. })));
    worker.with_writer(|w| w.write_jobs(&mut vec![held]));
    assert_eq!(spool.stats().last_seq, 1);
    drop((spool, worker));
    verify_ok(dir.path(), 1);
}

#[test]
fn a_zero_reserve_disables_the_check_and_a_failing_probe_does_not_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(AtomicU64::new(0));
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            free_space: probe(&free),
            min_free_bytes: 0,
            ..opts()
        },
    )
    .unwrap();
    assert!(spool.reserve().is_ok());
    assert_eq!(spool.stats().free_bytes, Some(0));
    drop((spool, worker));

    let failing = FreeSpaceProbe(Arc::new(|_: &Path| Err(std::io::Error::other("statvfs failed"))));
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            free_space: failing,
            ..opts()
        },
    )
    .unwrap();
    assert!(spool.reserve().is_ok());
    let stats = spool.stats();
    assert!(stats.accepting && stats.free_bytes.is_none(), "{stats:?}");
    drop(worker);
}

#[tokio::test]
async fn the_running_writer_rechecks_free_space_every_second() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(AtomicU64::new(u64::MAX / 2));
    let run = Running::start(
        dir.path(),
        SpoolOptions {
            free_space: probe(&free),
            ..opts()
        },
    );
    run.commit(0, 1).await;
    free.store(MIB, Ordering::Relaxed);
    let spool = run.spool.clone();
    tokio::task::spawn_blocking(move || wait_for("low space noticed", || !spool.stats().accepting))
        .await
        .unwrap();
    assert!(matches!(
        run.spool.reserve(),
        Err(AuditError::LowDiskSpace { .. })
    ));
    free.store(u64::MAX / 2, Ordering::Relaxed);
    let spool = run.spool.clone();
    tokio::task::spawn_blocking(move || wait_for("space back", || spool.stats().accepting))
        .await
        .unwrap();
    run.commit(1, 1).await;
    run.stop().await;
}

// ------------------------------------------------------------ close

/// Start the worker on a runtime, then drop the runtime (as pingora's are
/// gone when the gateway closes the spool): the writer thread lives on.
fn start_then_drop_runtime(worker: SpoolWorker) -> watch::Sender<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, rx) = watch::channel(false);
    rt.block_on(async {
        tokio::spawn(worker.run(rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    drop(rt);
    stop
}

#[test]
fn close_drains_records_committed_from_another_thread_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(crate::SigningKey::generate().unwrap());
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            durability: Durability::Interval(Duration::from_millis(10)),
            checkpoint: Some(CheckpointOptions {
                every: 1000,
                key: key.clone(),
            }),
            // The idle wait of the watch path must not apply to close().
            shutdown_idle: Duration::from_secs(60),
            ..SpoolOptions::default()
        },
    )
    .unwrap();
    let _stop = start_then_drop_runtime(worker);
    let slots: Vec<Slot> = (0..20).map(|_| spool.reserve().unwrap()).collect();
    // Committed later, from another thread (like Drop impls during shutdown);
    // the commit futures are dropped unawaited.
    let committer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        for (i, slot) in slots.into_iter().enumerate() {
            drop(slot.commit(access(i)));
        }
    });
    let started = Instant::now();
    assert!(spool.close(Duration::from_secs(10)));
    assert!(started.elapsed() < Duration::from_secs(5), "no idle wait");
    committer.join().unwrap();
    assert!(matches!(spool.reserve(), Err(AuditError::Closed)));
    let stats = spool.stats();
    assert!(!stats.accepting && !stats.healthy, "{stats:?}");
    assert!(stats.not_accepting.unwrap_or_default().contains("stopped"));
    // Closing again is immediate; the lock is free for the next process.
    assert!(spool.close(Duration::ZERO));
    let r = verify(&[dir.path().to_path_buf()], &[key.verify_key()]).unwrap();
    assert!(r.ok, "{}", r.to_text());
    // 20 records and the final checkpoint sealing them.
    assert_eq!(r.records, 21);
    assert_eq!(r.checkpoints.records_after_last, Some(0));
    drop(Spool::open(dir.path(), opts()).unwrap());
}

#[test]
fn close_times_out_while_a_slot_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, worker) = Spool::open(dir.path(), opts()).unwrap();
    let _stop = start_then_drop_runtime(worker);
    let held = spool.reserve().unwrap();
    let started = Instant::now();
    assert!(!spool.close(Duration::from_millis(200)));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(matches!(spool.reserve(), Err(AuditError::Closed)));
    // The slot reserved before close() is still written once committed.
    drop(held.commit(access(7)));
    assert!(spool.close(Duration::from_secs(10)));
    assert_eq!(verify_ok(dir.path(), 1).last_seq, Some(1));
}

#[tokio::test]
async fn close_after_the_shutdown_watch_and_during_its_idle_wait() {
    // After the watch path finished: immediate.
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts());
    run.commit(0, 3).await;
    let spool = run.spool.clone();
    run.stop().await;
    assert!(spool.close(Duration::ZERO));

    // While the watch path waits for its idle period: close() cuts it short.
    let dir = tempfile::tempdir().unwrap();
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            shutdown_idle: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(worker.run(rx));
    spool.reserve().unwrap().commit(access(0)).await.unwrap();
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished());
    let s = spool.clone();
    let closed = tokio::task::spawn_blocking(move || s.close(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(closed);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    verify_ok(dir.path(), 1);
}

#[test]
fn close_with_a_worker_that_never_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, worker) = Spool::open(dir.path(), opts()).unwrap();
    assert!(!spool.close(Duration::from_millis(50)));
    drop(worker);
    assert!(spool.close(Duration::from_millis(50)));
    assert!(matches!(spool.reserve(), Err(AuditError::Closed)));
}

#[test]
fn close_stops_the_compressor_and_the_next_run_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(written_spool(d, 200, 16 * 1024));
    let segs = crate::segment::list_segments(d).unwrap().len();
    let (spool, worker) = Spool::open(d, opts()).unwrap();
    let _stop = start_then_drop_runtime(worker);
    assert!(spool.close(Duration::from_secs(10)));
    // Whatever was compressed is complete; the rest is still plain.
    verify_ok(d, 200);
    assert!(list_segment_files(d).unwrap().len() <= segs + 1);
    let (spool, worker) = Spool::open(d, opts()).unwrap();
    let _stop = start_then_drop_runtime(worker);
    wait_for("the rest compressed", || {
        let c = compressed_names(d);
        c.len() == segs && c[..segs - 1].iter().all(|c| *c)
    });
    assert!(spool.close(Duration::from_secs(10)));
    verify_ok(d, 200);
}
