//! The spool, verify and report against real files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::testing::{access, copy_spool, segments, Running};
use crate::verify::verify;
use crate::*;

/// Options with compression off, so that these tests see plain segments
/// deterministically (compression has its own tests in `spool::tests`).
fn opts(durability: Durability) -> SpoolOptions {
    SpoolOptions {
        durability,
        compress_closed_segments: false,
        ..SpoolOptions::default()
    }
}

fn verify_dir(dir: &Path) -> verify::VerifyReport {
    verify(&[dir.to_path_buf()], &[]).unwrap()
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn records_are_chained_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::default()));
    let infos = run.commit(0, 50).await;
    let stats = run.spool.stats();
    assert_eq!(
        (stats.records_written, stats.last_seq, stats.queue_depth),
        (50, 50, 0)
    );
    assert!(stats.healthy && stats.accepting);
    // Interval mode: the fsync follows within the interval (10 ms), without new records.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while run.spool.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no interval fsync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.stop().await;

    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].0, "segment-00000000000000000001.jsonl");
    let mut prev = chain::GENESIS_HASH.to_string();
    for (i, line) in segs[0].1.iter().enumerate() {
        let v = parse(line);
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "access");
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["prev_hash"], prev.as_str());
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["request_id"], format!("req-{i}"));
        assert_eq!(v["event_id"], infos[i].event_id.as_str());
        assert_eq!(
            uuid::Uuid::parse_str(&infos[i].event_id)
                .unwrap()
                .get_version_num(),
            7
        );
        let mut without = v.clone();
        let hash = without.as_object_mut().unwrap().remove("hash").unwrap();
        assert_eq!(chain::record_hash(&prev, &without), hash.as_str().unwrap());
        assert_eq!(infos[i].hash, hash.as_str().unwrap());
        prev = infos[i].hash.clone();
        // Every line matches the published schema's types.
        let _: SpoolRecord = serde_json::from_value(v).unwrap();
    }
    let r = verify_dir(dir.path());
    assert!(r.ok, "{}", r.to_text());
    assert_eq!((r.records, r.first_seq, r.last_seq), (50, Some(1), Some(50)));
    assert_eq!(r.last_hash.as_deref(), Some(prev.as_str()));
    assert!(r.to_text().contains("OK: the chain is intact"));
}

#[tokio::test]
async fn per_request_commit_resolves_after_the_line_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let run = Arc::new(Running::start(dir.path(), opts(Durability::PerRequest)));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let run = run.clone();
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let slot = run.spool.reserve().unwrap();
                let info = slot.commit(access(t * 100 + i)).await.unwrap();
                // Read back through another handle: the line is there, and an fsync has happened.
                let text = std::fs::read_to_string(dir.join("segment-00000000000000000001.jsonl")).unwrap();
                assert!(text.contains(&info.event_id));
                assert!(run.spool.stats().fsyncs >= 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = run.spool.stats();
    assert_eq!(stats.records_written, 200);
    // Group commit: never more than one fsync per record.
    assert!(stats.fsyncs <= 200, "{stats:?}");
    Arc::into_inner(run).unwrap().stop().await;
    assert!(verify_dir(dir.path()).ok);
}

#[tokio::test]
async fn rotation_chains_segments_named_by_first_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::PerRequest);
    o.segment_max_bytes = 2_000;
    let run = Running::start(dir.path(), o);
    run.commit(0, 40).await;
    run.stop().await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 5, "{}", segs.len());
    let mut last_hash = chain::GENESIS_HASH.to_string();
    for (name, lines) in &segs {
        let first = parse(&lines[0]);
        assert_eq!(*name, segment::segment_file_name(first["seq"].as_u64().unwrap()));
        assert_eq!(first["prev_hash"], last_hash.as_str());
        last_hash = parse(lines.last().unwrap())["hash"].as_str().unwrap().to_owned();
        let bytes = std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(bytes <= 2_000 || lines.len() == 1, "{name}: {bytes}");
    }
    let r = verify_dir(dir.path());
    assert!(r.ok, "{}", r.to_text());
    assert_eq!((r.records, r.segments.len()), (40, segs.len()));
}

#[tokio::test]
async fn torn_tail_is_truncated_and_a_recovery_record_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    run.commit(0, 10).await;
    run.stop().await;
    let seg = dir.path().join("segment-00000000000000000001.jsonl");
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A crash in the middle of a write: half a line, then a zero-filled block.
    let line = segments(dir.path())[0].1[3].clone();
    let mut torn = line.as_bytes()[..line.len() / 2].to_vec();
    torn.extend_from_slice(b"\n\0\0\0\0\n\0\0");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &torn))
        .unwrap();
    let torn_len = good_len + torn.len() as u64;
    assert!(!verify_dir(dir.path()).ok);

    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    let info = run.commit(10, 1).await;
    run.stop().await;
    assert_eq!(info[0].seq, 12);
    let lines = &segments(dir.path())[0].1;
    assert_eq!(lines.len(), 12);
    let rec = parse(&lines[10]);
    assert_eq!(rec["kind"], "recovery");
    assert_eq!(rec["seq"], 11);
    assert_eq!(rec["segment"], "segment-00000000000000000001.jsonl");
    assert_eq!(rec["truncated_from"], good_len);
    assert_eq!(rec["truncated_to"], torn_len);
    assert_eq!(rec["reason"], "torn last line");
    let r = verify_dir(dir.path());
    assert!(r.ok, "{}", r.to_text());
    assert_eq!(r.recoveries.len(), 1);
    assert_eq!(
        (r.recoveries[0].truncated_from, r.recoveries[0].truncated_to),
        (good_len, torn_len)
    );
    assert!(r.to_text().contains(&format!("bytes {good_len}..{torn_len}")));
}

#[tokio::test]
async fn an_empty_segment_left_by_a_crash_during_rotation_is_continued() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    run.commit(0, 3).await;
    run.stop().await;
    // Crash right after creating the next segment: it is empty.
    std::fs::write(dir.path().join(segment::segment_file_name(4)), "").unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    assert_eq!(run.commit(3, 1).await[0].seq, 4);
    run.stop().await;
    assert_eq!(segments(dir.path())[1].1.len(), 1);
    assert!(verify_dir(dir.path()).ok);
    // An empty last segment named for the wrong seq cannot be continued.
    std::fs::write(dir.path().join(segment::segment_file_name(9)), "").unwrap();
    let e = Spool::open(dir.path(), SpoolOptions::default()).unwrap_err();
    assert!(e.to_string().contains("named for seq 9"), "{e}");
}

#[tokio::test]
async fn an_altered_last_record_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    run.commit(0, 3).await;
    run.stop().await;
    let seg = dir.path().join("segment-00000000000000000001.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replace("\"req-2\"", "\"req-X\"")).unwrap();
    let e = Spool::open(dir.path(), SpoolOptions::default()).unwrap_err();
    assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("hash mismatch"), "{e}");
}

#[tokio::test]
async fn a_spool_directory_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (_spool, _worker) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let e = Spool::open(dir.path(), SpoolOptions::default()).unwrap_err();
    assert!(matches!(e, AuditError::Locked(_)), "{e}");
}

#[tokio::test]
async fn full_queue_refuses_and_dropped_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::default());
    o.queue = 2;
    let (spool, _worker) = Spool::open(dir.path(), o).unwrap();
    let a = spool.reserve().unwrap();
    let _b = spool.reserve().unwrap();
    assert!(matches!(spool.reserve(), Err(AuditError::QueueFull)));
    assert_eq!(spool.stats().queue_depth, 2);
    assert_eq!(spool.stats().fail_closed, 1);
    drop(a);
    assert!(spool.reserve().is_ok());
}

#[tokio::test]
async fn byte_bound_refuses_until_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::PerRequest);
    o.segment_max_bytes = 1_500;
    o.max_bytes = 6_000;
    let run = Running::start(dir.path(), o);
    let mut n = 0;
    let err = loop {
        match run.spool.reserve() {
            Ok(slot) => {
                slot.commit(access(n)).await.unwrap();
                n += 1;
            }
            Err(e) => break e,
        }
        assert!(n < 100, "the bound was never reached");
    };
    assert!(matches!(err, AuditError::SpoolFull), "{err}");
    let stats = run.spool.stats();
    assert!(
        stats.spool_bytes >= 6_000 && !stats.accepting && stats.healthy,
        "{stats:?}"
    );
    // The operator removes forwarded segments (never the last one): admission resumes.
    let segs = segment::list_segments(dir.path()).unwrap();
    for (_, p) in &segs[..segs.len() - 1] {
        std::fs::remove_file(p).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while run.spool.reserve().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "still refusing after removal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.commit(n, 1).await;
    run.stop().await;
}

#[tokio::test]
async fn dropped_commit_futures_are_still_written_and_shutdown_drains_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, worker) = Spool::open(
        dir.path(),
        SpoolOptions {
            shutdown_idle: Duration::ZERO,
            ..opts(Durability::PerRequest)
        },
    )
    .unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(rx));
    drop(spool.reserve().unwrap().commit(access(0)));
    let held = spool.reserve().unwrap();
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Still reserved: the writer waits for it.
    assert!(!task.is_finished());
    let info = held.commit(access(1)).await.unwrap();
    assert_eq!(info.seq, 2);
    task.await.unwrap();
    assert!(matches!(spool.reserve(), Err(AuditError::Closed)));
    assert!(!spool.stats().healthy);
    assert_eq!(verify_dir(dir.path()).records, 2);
}

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_bytes(&[42u8; 32]).unwrap())
}

#[tokio::test]
async fn checkpoints_sign_the_chain_and_verify_with_the_right_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::PerRequest);
    o.checkpoint = Some(CheckpointOptions { every: 5, key: key() });
    let run = Running::start(dir.path(), o);
    let infos = run.commit(0, 12).await;
    // Checkpoints take seqs 6 and 12: records are 1-5, 7-11, 13-14.
    assert_eq!(infos.iter().map(|i| i.seq).collect::<Vec<_>>()[4..7], [5, 7, 8]);
    run.stop().await;
    let lines = &segments(dir.path())[0].1;
    // 12 records + 2 periodic checkpoints + 1 at shutdown sealing the tail.
    assert_eq!(lines.len(), 15);
    let cp = parse(&lines[5]);
    assert_eq!(
        (cp["kind"].as_str(), cp["covers_seq"].as_u64()),
        (Some("checkpoint"), Some(5))
    );
    assert_eq!(cp["covers_hash"], parse(&lines[4])["hash"]);
    assert_eq!(cp["key_id"], key().key_id());

    let right = verify(&[dir.path().to_path_buf()], &[key().verify_key()]).unwrap();
    assert!(right.ok, "{}", right.to_text());
    assert_eq!(right.checkpoints.verified, 3);
    assert_eq!(right.checkpoints.records_after_last, Some(0));
    let unchecked = verify_dir(dir.path());
    assert!(unchecked.ok);
    assert_eq!(unchecked.checkpoints.unchecked, 3);

    let other = SigningKey::from_bytes(&[7u8; 32]).unwrap();
    let wrong = verify(&[dir.path().to_path_buf()], &[other.verify_key()]).unwrap();
    assert!(!wrong.ok);
    let p = wrong.problem.unwrap();
    assert_eq!((p.line, p.seq), (6, Some(6)));
    assert!(p.message.contains("not among the given keys"), "{p}");

    // A re-signed chain: edit record 3 and recompute every hash after it. Only
    // the signature catches it.
    let forged = copy_spool(dir.path());
    let seg = forged.path().join("segment-00000000000000000001.jsonl");
    let mut prev = chain::GENESIS_HASH.to_string();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let mut v = parse(line);
        let m = v.as_object_mut().unwrap();
        m.remove("hash");
        m.insert("prev_hash".into(), prev.clone().into());
        if i == 2 {
            m.insert("path".into(), "/fhir/Patient/other".into());
        }
        if m["kind"] == "checkpoint" {
            m.insert("covers_hash".into(), prev.clone().into());
        }
        let (l, h) = chain::seal(&prev, &v);
        out.push_str(&l);
        prev = h;
    }
    std::fs::write(&seg, out).unwrap();
    assert!(
        verify_dir(forged.path()).ok,
        "without a key the rewrite is undetectable"
    );
    let r = verify(&[forged.path().to_path_buf()], &[key().verify_key()]).unwrap();
    let p = r.problem.unwrap();
    assert_eq!((p.line, p.seq), (6, Some(6)));
    assert!(p.message.contains("signature is invalid"), "{p}");
}

/// A finished spool of 30 records in several segments, for tampering.
async fn spool_for_tampering() -> (tempfile::TempDir, Vec<(String, Vec<String>)>) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::None);
    o.segment_max_bytes = 4_000;
    let run = Running::start(dir.path(), o);
    run.commit(0, 30).await;
    run.stop().await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3 && segs[0].1.len() >= 6, "{}", segs.len());
    assert!(verify_dir(dir.path()).ok);
    (dir, segs)
}

/// Apply `edit` to the lines of segment `seg` of a copy; verify it; return
/// the problem.
fn tampered(
    dir: &Path,
    segs: &[(String, Vec<String>)],
    seg: usize,
    edit: impl FnOnce(&mut Vec<String>),
) -> verify::Problem {
    let copy = copy_spool(dir);
    let mut lines = segs[seg].1.clone();
    edit(&mut lines);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(copy.path().join(&segs[seg].0), text).unwrap();
    let r = verify_dir(copy.path());
    assert!(!r.ok);
    assert!(r.to_text().contains("FAILED: "));
    r.problem.unwrap()
}

fn assert_problem(p: &verify::Problem, file: &str, line: u64, seq: u64, words: &str) {
    assert!(p.file.ends_with(file), "{p}");
    assert_eq!((p.line, p.seq), (line, Some(seq)), "{p}");
    assert!(p.message.contains(words), "expected `{words}` in: {p}");
}

#[tokio::test]
async fn verify_names_the_first_bad_record_for_every_kind_of_tampering() {
    let (dir, segs) = spool_for_tampering().await;
    let d = dir.path();
    let s0 = segs[0].0.as_str();

    // Edit a field.
    let p = tampered(d, &segs, 0, |l| {
        l[4] = l[4].replace("\"status\":200", "\"status\":403")
    });
    assert_problem(&p, s0, 5, 5, "hash mismatch");
    // Delete a line.
    let p = tampered(d, &segs, 0, |l| {
        l.remove(4);
    });
    assert_problem(&p, s0, 5, 6, "seq gap: expected 5, found 6");
    // Swap two lines.
    let p = tampered(d, &segs, 0, |l| l.swap(3, 4));
    assert_problem(&p, s0, 4, 5, "seq gap: expected 4, found 5");
    // Insert a forged line (naively edited copy).
    let p = tampered(d, &segs, 0, |l| {
        let forged = l[3].replace("req-3", "req-forged");
        l.insert(4, forged);
    });
    assert_problem(&p, s0, 5, 4, "hash mismatch");
    // Insert a carefully forged line (valid hash, seq, prev_hash): the record after it breaks.
    let p = tampered(d, &segs, 0, |l| {
        let mut v = parse(&l[4]);
        let m = v.as_object_mut().unwrap();
        m.remove("hash");
        m.insert("request_id".into(), "forged".into());
        let prev = m["prev_hash"].as_str().unwrap().to_owned();
        let (line, _) = chain::seal(&prev, &v);
        l.insert(4, line.trim_end().to_owned());
    });
    assert_problem(&p, s0, 6, 5, "seq 5 out of order: expected 6");
    // Duplicate a line.
    let p = tampered(d, &segs, 0, |l| {
        let dup = l[4].clone();
        l.insert(5, dup);
    });
    assert_problem(&p, s0, 6, 5, "duplicated line");

    // Truncate the tail mid-line.
    let last = segs.len() - 1;
    let copy = copy_spool(d);
    let path = copy.path().join(&segs[last].0);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    let p = verify_dir(copy.path()).problem.unwrap();
    assert!(p.file.ends_with(&segs[last].0), "{p}");
    assert_eq!(p.line, segs[last].1.len() as u64);
    assert!(p.message.contains("incomplete line"), "{p}");

    // Delete a middle segment.
    let copy = copy_spool(d);
    std::fs::remove_file(copy.path().join(&segs[1].0)).unwrap();
    let p = verify_dir(copy.path()).problem.unwrap();
    let first_of_2 = parse(&segs[2].1[0])["seq"].as_u64().unwrap();
    let first_of_1 = parse(&segs[1].1[0])["seq"].as_u64().unwrap();
    assert_problem(
        &p,
        &segs[2].0,
        1,
        first_of_2,
        &format!("expected {first_of_1}, found {first_of_2}"),
    );
    assert!(p.message.contains("previous segment ends at seq"), "{p}");

    // Truncate a middle segment at a line boundary: the next segment no longer chains.
    let p = tampered(d, &segs, 1, |l| {
        l.pop();
    });
    assert_problem(&p, &segs[2].0, 1, first_of_2, "seq gap");
}

#[tokio::test]
async fn verify_accepts_segment_files_in_any_order_and_a_retention_trimmed_spool() {
    let (dir, segs) = spool_for_tampering().await;
    let mut files: Vec<PathBuf> = segs.iter().map(|(n, _)| dir.path().join(n)).collect();
    files.reverse();
    let r = verify(&files, &[]).unwrap();
    assert!(r.ok, "{}", r.to_text());
    assert_eq!(r.records, 30);
    // The first segment removed by retention: intact, but flagged as starting mid-chain.
    let r = verify(&files[..files.len() - 1], &[]).unwrap();
    assert!(r.ok && r.starts_mid_chain, "{}", r.to_text());
    assert!(r.to_text().contains("taken on trust"));
    assert!(verify(&[dir.path().join("nope")], &[]).is_err());
}

#[tokio::test]
async fn report_compares_granted_and_used_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::None));
    let mk = |client: &str, sub: &str, granted: &[&str], required: &[&str], allow: bool, patient: &str| {
        let mut r = access(0);
        r.client_id = Some(client.into());
        r.sub = Some(sub.into());
        r.scopes_granted = granted.iter().map(|s| s.to_string()).collect();
        r.scopes_required = required.iter().map(|s| s.to_string()).collect();
        r.patient = Some(patient.into());
        if !allow {
            r.decision = "deny".into();
            r.reason = "insufficient_scope".into();
            r.status = 403;
            r.upstream_status = None;
        }
        r
    };
    let app = [
        "openid",
        "user/Patient.read",
        "user/Observation.rs",
        "user/Encounter.cruds",
    ];
    run.commit_record(mk("app", "alice", &app, &["user/Patient.rs"], true, "p1"))
        .await;
    run.commit_record(mk("app", "alice", &app, &["user/Patient.rs"], true, "p2"))
        .await;
    run.commit_record(mk("app", "alice", &app, &["user/Patient.rs"], true, "p1"))
        .await;
    // Denied requests use nothing.
    run.commit_record(mk("app", "bob", &app, &["user/Observation.rs"], false, "p3"))
        .await;
    run.commit_record(mk(
        "tight",
        "bob",
        &["system/*.rs"],
        &["system/Observation.rs"],
        true,
        "p4",
    ))
    .await;
    let mut bg = mk("app", "carol", &app, &["user/Patient.rs"], true, "p9");
    bg.break_glass = true;
    bg.justification = Some("ER: unconscious patient".into());
    run.commit_record(bg).await;
    run.stop().await;

    let r = report::report(&[dir.path().to_path_buf()], None).unwrap();
    assert_eq!(r.records, 6);
    let app = &r.clients[0];
    assert_eq!(app.id, "app");
    assert_eq!(app.scopes_used, ["user/Patient.read"]);
    assert_eq!(app.scopes_unused, ["user/Encounter.cruds", "user/Observation.rs"]);
    assert_eq!(app.context_scopes, ["openid"]);
    assert!(app.over_granted);
    assert_eq!(
        (app.requests, app.allowed, app.denied, app.patients_accessed),
        (5, 4, 1, 3)
    );
    let tight = &r.clients[1];
    assert!(!tight.over_granted, "{tight:?}");
    assert_eq!(r.over_granted_clients, ["app"]);
    let alice = r.subjects.iter().find(|s| s.id == "alice").unwrap();
    assert_eq!(alice.patients_accessed, 2);
    let bob = r.subjects.iter().find(|s| s.id == "bob").unwrap();
    assert_eq!(bob.scopes_used, ["system/*.rs"]);
    assert_eq!(bob.denials_by_reason["insufficient_scope"], 1);
    assert_eq!(r.denials_by_reason["insufficient_scope"], 1);
    assert_eq!(r.break_glass.len(), 1);
    assert_eq!(
        r.break_glass[0].justification.as_deref(),
        Some("ER: unconscious patient")
    );
    assert_eq!(r.break_glass[0].sub.as_deref(), Some("carol"));

    let text = r.to_text();
    assert!(
        text.contains("[OVER-GRANTED]") && text.contains("UNUSED:  user/Encounter.cruds"),
        "{text}"
    );
    assert!(text.contains("ER: unconscious patient"));
    // Patient ids appear only in the break-glass section.
    assert!(
        !text.contains("p1") && !text.contains("p2") && text.contains("patient=p9"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["subjects"][0]["patients_accessed"].is_u64());

    // --since in the future: nothing counted.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(
        report::report(&[dir.path().to_path_buf()], Some(later))
            .unwrap()
            .records,
        0
    );
    let since = report::parse_since("24h").unwrap();
    assert_eq!(
        report::report(&[dir.path().to_path_buf()], Some(since))
            .unwrap()
            .records,
        6
    );
    assert!(report::parse_since_at("2026-01-01T00:00:00Z", time::OffsetDateTime::now_utc()).is_ok());
    assert!(report::parse_since("yesterday-ish").is_err());
}

#[tokio::test]
async fn the_mirror_file_holds_exactly_the_spool_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir(&spool_dir).unwrap();
    let mirror = dir.path().join("audit.jsonl");
    let mut o = opts(Durability::PerRequest);
    o.mirror = Some(mirror.clone());
    let run = Running::start(&spool_dir, o);
    run.commit(0, 5).await;
    let stats = run.spool.stats();
    run.stop().await;
    let spool_lines: Vec<String> = segments(&spool_dir).into_iter().flat_map(|(_, l)| l).collect();
    let mirror_text = std::fs::read_to_string(&mirror).unwrap();
    let mirror_lines: Vec<String> = mirror_text.lines().map(str::to_owned).collect();
    assert_eq!(spool_lines.len(), 5);
    assert_eq!(mirror_lines, spool_lines);
    assert_eq!(stats.mirror_errors, 0);
}

/// Issue 10: a backend service holding `system/` scopes was flagged
/// over-granted, because its records named only `user/` and `patient/`
/// forms as required. A grant that satisfied a request (`scope_used`) is used.
#[tokio::test]
async fn report_counts_the_scope_that_satisfied_a_request_as_used() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::None));
    let mut r = access(0);
    r.client_id = Some("backend-svc".into());
    r.sub = Some("backend-svc".into());
    r.scopes_granted = vec!["system/Patient.rs".into(), "system/Observation.rs".into()];
    // What an older gateway wrote as required: no system/ form at all.
    r.scopes_required = vec!["user/Patient.r".into(), "patient/Patient.r".into()];
    r.scope_used = vec!["system/Patient.rs".into()];
    run.commit_record(r).await;
    run.stop().await;
    let rep = report::report(&[dir.path().to_path_buf()], None).unwrap();
    let svc = &rep.clients[0];
    assert_eq!(svc.scopes_used, ["system/Patient.rs"]);
    assert_eq!(svc.scopes_unused, ["system/Observation.rs"]);
    // Over-granted only for the scope it really never used.
    assert_eq!(rep.over_granted_clients, ["backend-svc"]);
    let mut one = access(1);
    one.client_id = Some("backend-2".into());
    one.scopes_granted = vec!["system/Patient.rs".into()];
    one.scopes_required = vec!["user/Patient.r".into(), "patient/Patient.r".into()];
    one.scope_used = vec!["system/Patient.rs".into()];
    let dir2 = tempfile::tempdir().unwrap();
    let run = Running::start(dir2.path(), opts(Durability::None));
    run.commit_record(one).await;
    run.stop().await;
    let rep = report::report(&[dir2.path().to_path_buf()], None).unwrap();
    assert!(rep.over_granted_clients.is_empty(), "{:?}", rep.clients);
}

#[tokio::test]
async fn report_counts_requests_once_and_lists_failures_and_open_intents() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::None));
    let write = |id: &str, phase: Phase| {
        let mut r = access(0);
        r.request_id = id.into();
        r.method = "POST".into();
        r.path = "/fhir/Observation".into();
        r.client_id = Some("app".into());
        r.phase = Some(phase);
        r
    };
    // A completed write, a write whose upstream timed out, a write with no
    // outcome (cut off by a crash), and a read whose body was cut.
    let i1 = run.commit_record(write("w1", Phase::Intent)).await;
    let i2 = run.commit_record(write("w2", Phase::Intent)).await;
    let i3 = run.commit_record(write("w3", Phase::Intent)).await;
    let mut o1 = write("w1", Phase::Outcome);
    o1.completes = Some(i1.event_id.clone());
    o1.complete = Some(true);
    run.commit_record(o1).await;
    let mut o2 = write("w2", Phase::Outcome);
    o2.completes = Some(i2.event_id.clone());
    o2.complete = Some(false);
    o2.reason = "upstream_timeout".into();
    run.commit_record(o2).await;
    let read = run.commit_record(access(1)).await;
    let mut cut = access(1);
    cut.phase = Some(Phase::Outcome);
    cut.completes = Some(read.event_id.clone());
    cut.complete = Some(false);
    cut.reason = "upstream_incomplete".into();
    run.commit_record(cut).await;
    run.stop().await;

    let r = report::report(&[dir.path().to_path_buf()], None).unwrap();
    assert_eq!(r.records, 7);
    let app = r.clients.iter().find(|c| c.id == "app").unwrap();
    assert_eq!((app.requests, app.allowed), (3, 3), "each request counted once");
    assert_eq!(r.failures_by_reason["upstream_timeout"], 1);
    assert_eq!(r.failures_by_reason["upstream_incomplete"], 1);
    assert_eq!(r.open_intents.len(), 1);
    assert_eq!(r.open_intents[0].event_id, i3.event_id);
    assert_eq!(r.open_intents[0].request_id, "w3");
    let text = r.to_text();
    assert!(
        text.contains("Open intents (1)") && text.contains("request w3"),
        "{text}"
    );
    assert!(text.contains("upstream_timeout"), "{text}");
}

// ------------------------------------------------------------------ logout

/// The logout line of `lines` with request id `id`.
fn line_of<'a>(lines: &'a [String], id: &str) -> serde_json::Value {
    let found: Vec<&'a String> = lines.iter().filter(|l| parse(l)["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "{id}");
    parse(found[0])
}

#[tokio::test]
async fn logout_records_are_chained_between_access_records_in_every_durability_mode() {
    for durability in [Durability::PerRequest, Durability::default(), Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let run = Running::start(dir.path(), opts(durability));
        let a1 = run.commit(0, 1).await;
        let accepted = run.commit_logout(testing::logout(0)).await;
        let a2 = run.commit(1, 1).await;
        let refused = run.commit_logout(testing::logout(1)).await;
        let a3 = run.commit(2, 1).await;
        let seqs: Vec<u64> = [&a1[0], &accepted, &a2[0], &refused, &a3[0]]
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "{durability:?}");
        assert_eq!(run.spool.stats().records_written, 5);
        run.stop().await;

        let lines = &segments(dir.path())[0].1;
        let l = line_of(lines, "logout-0");
        assert_eq!(l["kind"], "logout");
        assert_eq!(l["seq"], 2);
        assert_eq!(l["event_id"], accepted.event_id.as_str());
        assert_eq!(l["hash"], accepted.hash.as_str());
        assert_eq!(l["prev_hash"], a1[0].hash.as_str());
        assert_eq!(
            (&l["source"], &l["decision"], &l["reason"], &l["status"]),
            (
                &serde_json::json!("backchannel"),
                &serde_json::json!("allow"),
                &serde_json::json!("logged_out"),
                &serde_json::json!(200)
            )
        );
        assert_eq!(l["sid"], "sid-0");
        assert_eq!(l["jti"], "jti-0");
        assert_eq!(l["issuer"], "https://idp.example.org/realms/clinic");
        assert!(l.get("actor").is_none() && l.get("detail").is_none() && l.get("truncated").is_none());
        assert!(l.get("outcome").is_none(), "access fields stay on access lines");
        let r = line_of(lines, "logout-1");
        assert_eq!(
            (&r["decision"], &r["status"]),
            (&serde_json::json!("deny"), &serde_json::json!(400))
        );
        assert_eq!(r["reason"], "logout_token_bad_signature");
        assert_eq!(parse(&lines[2])["prev_hash"], accepted.hash.as_str());
        // Every line parses as the published record type.
        for line in lines {
            let _: SpoolRecord = serde_json::from_str(line).unwrap();
        }
        let rep = verify_dir(dir.path());
        assert!(rep.ok, "{durability:?}: {}", rep.to_text());
        assert_eq!((rep.records, rep.last_seq), (5, Some(5)));
    }
}

#[tokio::test]
async fn a_logout_survives_reopen_and_torn_tail_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    run.commit(0, 2).await;
    let logout = run.commit_logout(testing::logout(0)).await;
    run.stop().await;
    let seg = dir.path().join("segment-00000000000000000001.jsonl");

    // Reopen: the chain continues from the logout line (the last one).
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    let next = run.commit(2, 1).await;
    assert_eq!(next[0].seq, 4);
    run.stop().await;
    assert_eq!(
        parse(&segments(dir.path())[0].1[3])["prev_hash"],
        logout.hash.as_str()
    );

    // A crash in the middle of writing a logout line: the torn half is cut,
    // a recovery record follows, and a logout after it still chains.
    let text = std::fs::read_to_string(&seg).unwrap();
    let logout_line = text.lines().nth(2).unwrap().to_owned();
    let before = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &logout_line.as_bytes()[..logout_line.len() / 2]))
        .unwrap();
    let run = Running::start(dir.path(), opts(Durability::PerRequest));
    let mut admin = testing::logout(2);
    admin.source = LogoutSource::Admin;
    admin.actor = Some("security officer K. Jones (ticket SEC-42)".into());
    admin.reason = "revoked".into();
    let after = run.commit_logout(admin).await;
    run.stop().await;
    assert_eq!(after.seq, 6);
    let lines = &segments(dir.path())[0].1;
    assert_eq!(lines.len(), 6);
    let rec = parse(&lines[4]);
    assert_eq!(
        (&rec["kind"], &rec["truncated_from"]),
        (&serde_json::json!("recovery"), &serde_json::json!(before))
    );
    let admin = parse(&lines[5]);
    assert_eq!(
        (&admin["kind"], &admin["source"]),
        (&serde_json::json!("logout"), &serde_json::json!("admin"))
    );
    assert_eq!(admin["actor"], "security officer K. Jones (ticket SEC-42)");
    let r = verify_dir(dir.path());
    assert!(r.ok, "{}", r.to_text());
    assert_eq!((r.records, r.recoveries.len()), (6, 1));
}

#[tokio::test]
async fn logouts_count_toward_checkpoints_and_verify_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::PerRequest);
    o.checkpoint = Some(CheckpointOptions { every: 2, key: key() });
    let run = Running::start(dir.path(), o);
    run.commit(0, 1).await;
    run.commit_logout(testing::logout(0)).await; // seq 2, then checkpoint 3
    run.commit_logout(testing::logout(1)).await;
    run.stop().await; // final checkpoint
    let kinds: Vec<String> = segments(dir.path())[0]
        .1
        .iter()
        .map(|l| parse(l)["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["access", "logout", "checkpoint", "logout", "checkpoint"]);
    let r = verify(&[dir.path().to_path_buf()], &[key().verify_key()]).unwrap();
    assert!(r.ok, "{}", r.to_text());
    assert_eq!(r.checkpoints.verified, 2);
}

#[tokio::test]
async fn a_logout_needs_a_reservation_and_is_bounded_when_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(Durability::default());
    o.queue = 1;
    let run = Running::start(dir.path(), o);
    let held = run.spool.reserve().unwrap();
    // Fail closed as for an access: no slot, no logout.
    assert!(matches!(run.spool.reserve(), Err(AuditError::QueueFull)));
    let mut big = testing::logout(1);
    big.sub = Some("s".repeat(10_000));
    big.detail = Some("bad token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln, refused".into());
    let info = held.commit_logout(big).await.unwrap();
    assert_eq!(
        run.spool.stats().queue_depth,
        0,
        "the slot is released once written"
    );
    run.stop().await;
    let line = &segments(dir.path())[0].1[0];
    assert!(line.len() < 4096, "{} bytes", line.len());
    assert!(!line.contains("eyJ"), "{line}");
    let v = parse(line);
    assert_eq!(v["event_id"], info.event_id.as_str());
    assert_eq!(v["truncated"]["sub"]["length"], 10_000);
    assert_eq!(v["detail"], "bad token [token removed], refused");
    assert!(verify_dir(dir.path()).ok);
}

#[tokio::test]
async fn report_counts_accepted_and_refused_logouts() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::None));
    run.commit(0, 2).await;
    for i in 0..5 {
        run.commit_logout(testing::logout(i)).await;
    }
    let mut admin = testing::logout(6);
    admin.source = LogoutSource::Admin;
    admin.reason = "revoked".into();
    run.commit_logout(admin).await;
    let mut unavailable = testing::logout(7);
    unavailable.reason = "session_store_unavailable".into();
    unavailable.status = 503;
    run.commit_logout(unavailable).await;
    run.stop().await;

    let r = report::report(&[dir.path().to_path_buf()], None).unwrap();
    assert_eq!(r.records, 2, "access records only");
    assert_eq!(r.unreadable_lines, 0);
    assert_eq!(
        (r.logouts.accepted, r.logouts.refused, r.logouts.admin),
        (4, 3, 1)
    );
    assert_eq!(r.logouts.refused_by_reason["logout_token_bad_signature"], 2);
    assert_eq!(r.logouts.refused_by_reason["session_store_unavailable"], 1);
    let text = r.to_text();
    assert!(
        text.contains("Logouts: 4 accepted, 3 refused (1 by an administrator)"),
        "{text}"
    );
    assert!(text.contains("session_store_unavailable"), "{text}");
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let r = report::report(&[dir.path().to_path_buf()], Some(later)).unwrap();
    assert_eq!(r.logouts, report::LogoutSummary::default());
    // Without logouts the text has no logout section.
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), opts(Durability::None));
    run.commit(0, 1).await;
    run.stop().await;
    let text = report::report(&[dir.path().to_path_buf()], None)
        .unwrap()
        .to_text();
    assert!(!text.contains("Logouts"), "{text}");
}
