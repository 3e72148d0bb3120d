//! Spool reader, cursor and forwarder tests against real files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::spool::{self, spool_last_seq, SpoolReader};
use crate::stdout::StdoutSink;
use crate::testing::TestSpool;
use crate::{Error, Forwarder, ForwarderSettings, Sink, SinkError, SpoolRecord};

fn seqs(records: &[SpoolRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn reads_all_records_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 4).unwrap();
    w.append_access(10).unwrap();
    assert_eq!(spool::list_segments(dir.path()).unwrap().len(), 3);
    let mut r = SpoolReader::new(dir.path(), 0);
    let mut got = Vec::new();
    loop {
        let out = r.read_available(3).unwrap();
        assert!(out.gaps.is_empty());
        if out.records.is_empty() {
            break;
        }
        assert!(out.records.len() <= 3);
        got.extend(seqs(&out.records));
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    assert_eq!(r.next_seq(), 11);
    // Tailing: new lines and a new segment appear later.
    w.append_access(3).unwrap();
    assert_eq!(seqs(&r.read_available(100).unwrap().records), [11, 12, 13]);
}

#[test]
fn resumes_after_the_cursor_in_the_middle_of_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 4).unwrap();
    w.append_access(10).unwrap();
    let mut r = SpoolReader::new(dir.path(), 6);
    let out = r.read_available(100).unwrap();
    assert_eq!(seqs(&out.records), [7, 8, 9, 10]);
    assert!(out.gaps.is_empty());
    let rec = &out.records[0];
    assert_eq!(rec.event_id, TestSpool::event_id(7));
    assert_eq!(rec.kind, "access");
    assert!(!rec.line.ends_with('\n'));
}

#[test]
fn a_partial_last_line_is_not_consumed_until_its_newline_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 100).unwrap();
    w.append_access(2).unwrap();
    let line = w.append_torn(40).unwrap();
    let mut r = SpoolReader::new(dir.path(), 0);
    assert_eq!(seqs(&r.read_available(100).unwrap().records), [1, 2]);
    assert!(r.read_available(100).unwrap().records.is_empty());
    assert_eq!(
        spool_last_seq(dir.path()).unwrap(),
        2,
        "the torn line does not count"
    );
    w.finish_torn(&line, 40).unwrap();
    assert_eq!(seqs(&r.read_available(100).unwrap().records), [3]);
    assert_eq!(spool_last_seq(dir.path()).unwrap(), 3);
}

#[test]
fn a_segment_deleted_before_it_was_read_is_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 4).unwrap();
    w.append_access(12).unwrap();
    std::fs::remove_file(dir.path().join(spool::segment_file_name(5))).unwrap();
    let mut r = SpoolReader::new(dir.path(), 2);
    let out = r.read_available(100).unwrap();
    assert_eq!(seqs(&out.records), [3, 4, 9, 10, 11, 12]);
    assert_eq!(out.gaps.len(), 1);
    let gap = &out.gaps[0];
    assert_eq!((gap.expected, gap.found, gap.missing()), (5, 9, 4));
    assert_eq!(gap.segment, spool::segment_file_name(9));
}

#[test]
fn a_cursor_before_the_oldest_segment_is_a_gap_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 4).unwrap();
    w.append_access(8).unwrap();
    std::fs::remove_file(dir.path().join(spool::segment_file_name(1))).unwrap();
    let out = SpoolReader::new(dir.path(), 0).read_available(100).unwrap();
    assert_eq!(seqs(&out.records), [5, 6, 7, 8]);
    assert_eq!((out.gaps[0].expected, out.gaps[0].found), (1, 5));
}

#[test]
fn a_complete_line_that_is_not_a_record_stops_reading_and_is_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 100).unwrap();
    w.append_access(2).unwrap();
    let seg = dir.path().join(spool::segment_file_name(1));
    let mut text = std::fs::read_to_string(&seg).unwrap();
    text.push_str("{\"garbage\n");
    std::fs::write(&seg, &text).unwrap();
    let mut w2 = w; // records after the bad line
    w2.append_access(1).unwrap();
    let mut r = SpoolReader::new(dir.path(), 0);
    assert_eq!(seqs(&r.read_available(100).unwrap().records), [1, 2]);
    for _ in 0..2 {
        match r.read_available(100) {
            Err(Error::Spool(m)) => assert!(m.contains("not JSON"), "{m}"),
            other => panic!("expected a spool error, got {other:?}"),
        }
    }
    assert_eq!(r.next_seq(), 3);
}

#[test]
fn missing_spool_directory_reads_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(SpoolReader::new(&missing, 0)
        .read_available(10)
        .unwrap()
        .records
        .is_empty());
    assert_eq!(spool_last_seq(&missing).unwrap(), 0);
}

#[test]
fn cursor_round_trip_absent_is_zero_and_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(spool::read_cursor(dir.path(), "a").unwrap(), 0);
    spool::write_cursor(dir.path(), "a", 42).unwrap();
    assert_eq!(spool::read_cursor(dir.path(), "a").unwrap(), 42);
    let text = std::fs::read_to_string(dir.path().join("cursors/a.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::json!({"seq": 42})
    );
    spool::write_cursor(dir.path(), "a", 43).unwrap();
    assert_eq!(spool::read_cursor(dir.path(), "a").unwrap(), 43);
    std::fs::write(dir.path().join("cursors/b.json"), "{").unwrap();
    assert!(matches!(
        spool::read_cursor(dir.path(), "b"),
        Err(Error::Spool(_))
    ));
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("cursors"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A sink that records what it receives and fails on command.
#[derive(Clone, Default)]
struct MockSink {
    received: Arc<Mutex<Vec<u64>>>,
    /// Failures still to produce: each is the number of records acknowledged before failing.
    failures: Arc<Mutex<Vec<usize>>>,
    delay: Duration,
}

#[async_trait]
impl Sink for MockSink {
    fn kind(&self) -> &'static str {
        "mock"
    }

    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        let failure = self.failures.lock().unwrap().pop();
        let mut received = self.received.lock().unwrap();
        match failure {
            Some(acked) => {
                let acked = acked.min(batch.len());
                received.extend(batch[..acked].iter().map(|r| r.seq));
                Err(SinkError::after(acked, "injected failure"))
            }
            None => {
                received.extend(batch.iter().map(|r| r.seq));
                Ok(())
            }
        }
    }
}

fn fast_settings(batch: usize) -> ForwarderSettings {
    ForwarderSettings {
        batch_size: batch,
        poll_interval: Duration::from_millis(10),
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "condition not reached in {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_retries_failures_without_skipping_and_persists_partial_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 7).unwrap();
    w.append_access(30).unwrap();
    let sink = MockSink::default();
    // Popped from the end: first send acks 3 then fails, then two total failures.
    *sink.failures.lock().unwrap() = vec![0, 0, 3];
    let fwd = Forwarder::new("mock", Box::new(sink.clone()), fast_settings(10));
    let status = fwd.status();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    // `spool_last_seq` is refreshed on the forwarder's next read: wait for both.
    wait_for(Duration::from_secs(10), || {
        let s = status.snapshot();
        s.cursor == 30 && s.spool_last_seq == 30
    })
    .await;
    let snap = status.snapshot();
    assert_eq!(snap.errors_total, 3);
    assert!(snap.healthy);
    assert_eq!(snap.lag_records, 0);
    assert_eq!(snap.spool_last_seq, 30);
    assert_eq!(snap.last_error.as_deref(), Some("send: injected failure"));
    // The acknowledged prefix (1..=3) was not re-sent; the rest was, in order.
    assert_eq!(*sink.received.lock().unwrap(), (1..=30).collect::<Vec<_>>());
    assert_eq!(spool::read_cursor(dir.path(), "mock").unwrap(), 30);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert!(!status.snapshot().running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_restart_resumes_from_the_cursor_and_tails_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 5).unwrap();
    w.append_access(12).unwrap();
    let sink = MockSink::default();
    let fwd = Forwarder::new("m", Box::new(sink.clone()), fast_settings(4));
    let status = fwd.status();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    wait_for(Duration::from_secs(10), || status.snapshot().cursor == 12).await;
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();

    w.append_access(6).unwrap();
    let fwd = Forwarder::new("m", Box::new(sink.clone()), fast_settings(4));
    let status = fwd.status();
    assert_eq!(status.snapshot().cursor, 0, "not started yet");
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    wait_for(Duration::from_secs(10), || status.snapshot().cursor == 18).await;
    w.append_access(2).unwrap(); // tailing while running
    wait_for(Duration::from_secs(10), || status.snapshot().cursor == 20).await;
    drop(tx); // a dropped sender stops the forwarder too
    task.await.unwrap().unwrap();
    assert_eq!(*sink.received.lock().unwrap(), (1..=20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_in_flight_batch_and_persists_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 100).unwrap();
    w.append_access(5).unwrap();
    let sink = MockSink {
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let fwd = Forwarder::new("slow", Box::new(sink.clone()), fast_settings(100));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    tokio::time::sleep(Duration::from_millis(100)).await; // the batch is in flight
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(*sink.received.lock().unwrap(), [1, 2, 3, 4, 5]);
    assert_eq!(spool::read_cursor(dir.path(), "slow").unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_failing_is_unhealthy_with_growing_lag_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 100).unwrap();
    w.append_access(5).unwrap();
    let sink = MockSink::default();
    *sink.failures.lock().unwrap() = vec![0; 1000];
    let fwd = Forwarder::new("down", Box::new(sink.clone()), fast_settings(100));
    let status = fwd.status();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    wait_for(Duration::from_secs(10), || status.errors_total() >= 3).await;
    w.append_access(5).unwrap();
    wait_for(Duration::from_secs(10), || status.lag_records() == 10).await;
    assert!(!status.healthy());
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        spool::read_cursor(dir.path(), "down").unwrap(),
        0,
        "nothing acknowledged, nothing skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_counted_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 3).unwrap();
    w.append_access(9).unwrap();
    std::fs::remove_file(dir.path().join(spool::segment_file_name(4))).unwrap();
    let sink = MockSink::default();
    let fwd = Forwarder::new("g", Box::new(sink.clone()), fast_settings(100));
    let status = fwd.status();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    wait_for(Duration::from_secs(10), || status.snapshot().cursor == 9).await;
    let snap = status.snapshot();
    assert_eq!((snap.gaps_total, snap.gap_records_total), (1, 3));
    assert!(snap.last_error.unwrap().contains("records 4..=6 are missing"));
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(*sink.received.lock().unwrap(), [1, 2, 3, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cursor_fails_the_start_instead_of_guessing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cursors")).unwrap();
    std::fs::write(dir.path().join("cursors/c.json"), "seq=5").unwrap();
    let fwd = Forwarder::new("c", Box::new(MockSink::default()), fast_settings(10));
    let status = fwd.status();
    let (_tx, rx) = watch::channel(false);
    assert!(fwd.run(dir.path().to_owned(), rx).await.is_err());
    assert!(!status.healthy());
}

#[tokio::test]
async fn stdout_sink_writes_one_json_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 100).unwrap();
    w.append_access(3).unwrap();
    let records = SpoolReader::new(dir.path(), 0)
        .read_available(10)
        .unwrap()
        .records;
    let mut sink = StdoutSink::new(Vec::new());
    sink.send(&records).await.unwrap();
    let out = String::from_utf8(sink.into_inner()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    for (line, r) in lines.iter().zip(&records) {
        assert_eq!(*line, r.line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_records_are_forwarded_in_order_with_access_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TestSpool::new(dir.path(), 4).unwrap();
    w.append_access(3).unwrap();
    w.append_logouts(2).unwrap();
    w.append_access(1).unwrap();
    w.append_logouts(1).unwrap();
    let records = SpoolReader::new(dir.path(), 0)
        .read_available(100)
        .unwrap()
        .records;
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["access", "access", "access", "logout", "logout", "access", "logout"]
    );
    assert_eq!(records[3].event_id, TestSpool::event_id(4));

    // The stdout sink (like NATS and syslog) passes the line on byte for byte.
    let mut sink = StdoutSink::new(Vec::new());
    sink.send(&records).await.unwrap();
    let out = String::from_utf8(sink.into_inner()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[4], records[4].line);
    assert!(lines[4].contains("\"kind\":\"logout\""));

    // The forwarder acknowledges every kind; nothing is skipped.
    let mock = MockSink::default();
    let fwd = Forwarder::new("mixed", Box::new(mock.clone()), fast_settings(3));
    let status = fwd.status();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(dir.path().to_owned(), rx));
    wait_for(Duration::from_secs(10), || status.snapshot().cursor == 7).await;
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(*mock.received.lock().unwrap(), (1..=7).collect::<Vec<_>>());
}
