//! Audit sinks end to end against real receivers: a real `nats-server` with
//! JetStream, a real `rsyslogd` (TCP and TLS), and a real HTTP FHIR audit
//! repository. Each test writes a spool while the forwarder runs, stops the
//! forwarder mid-stream (gracefully or by aborting it) and restarts it from
//! its cursor, takes the receiver down and brings it back, and then checks
//! that every record arrived exactly once after de-duplication by event_id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phigate_sinks::testing::TestSpool;
use phigate_sinks::{build_forwarders, build_sinks, Error, SinkConfig, SinkStatus};
use phigate_tests::audit_repo::AuditRepo;
use phigate_tests::nats::NatsServer;
use phigate_tests::rsyslog::{Rsyslog, TestPki};
use tokio::sync::watch;

/// Appends `total` access records to a spool in small chunks, in the
/// background, so forwarders tail a spool that is still growing.
fn write_spool_gradually(dir: &Path, total: u64, lines_per_segment: u64) -> std::thread::JoinHandle<()> {
    let mut spool = TestSpool::new(dir, lines_per_segment).unwrap();
    std::thread::spawn(move || {
        while spool.next_seq() <= total {
            let n = (total + 1 - spool.next_seq()).min(10);
            spool.append_access(n).unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
    })
}

fn all_event_ids(total: u64) -> BTreeSet<String> {
    (1..=total).map(TestSpool::event_id).collect()
}

fn sink_config(yaml_like: serde_json::Value) -> SinkConfig {
    serde_json::from_value(yaml_like).unwrap()
}

/// A forwarder task with its shutdown switch.
struct Running {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    status: Arc<SinkStatus>,
}

impl Running {
    fn start(config: &SinkConfig, spool: &Path) -> Running {
        let fwd = build_sinks(std::slice::from_ref(config)).unwrap().pop().unwrap();
        let status = fwd.status();
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(fwd.run(spool.to_owned(), rx));
        Running {
            shutdown,
            task,
            status,
        }
    }

    /// Graceful stop: the in-flight batch is finished and its cursor persisted.
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("forwarder did not stop")
            .unwrap()
            .unwrap();
    }

    /// Hard stop, like a crash: nothing more is persisted.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    async fn wait_cursor(&self, at_least: u64, limit: Duration) {
        let start = Instant::now();
        while self.status.snapshot().cursor < at_least {
            assert!(
                start.elapsed() < limit,
                "cursor stuck below {at_least}: {:?}",
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_errors(&self, more_than: u64, limit: Duration) {
        let start = Instant::now();
        while self.status.snapshot().errors_total <= more_than {
            assert!(
                start.elapsed() < limit,
                "no sink error seen: {:?}",
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn cursor_file(spool: &Path, sink: &str) -> u64 {
    phigate_sinks::spool::read_cursor(spool, sink).unwrap()
}

/// Counts per id → (distinct ids, duplicate deliveries).
fn dedupe(ids: impl IntoIterator<Item = String>) -> (BTreeSet<String>, usize) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let dups = counts.values().map(|c| c - 1).sum();
    (counts.into_keys().collect(), dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_gets_every_record_once_across_forwarder_and_server_restarts() {
    let started = Instant::now();
    const TOTAL: u64 = 300;
    let mut nats = NatsServer::start();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path();
    let writer = write_spool_gradually(spool, TOTAL, 64);
    let config = sink_config(serde_json::json!({
        "type": "nats", "name": "fleet", "url": nats.url(), "subject": "phigate.audit.test",
        "stream": "AUDIT_TEST", "create_stream": true, "duplicate_window": "2m",
        "timeout": "2s", "batch_size": 16, "max_backoff": "1s",
    }));

    // Forwarder stopped gracefully mid-stream, then restarted from its cursor.
    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(60, Duration::from_secs(20)).await;
    let status = fwd.status.clone();
    fwd.stop().await;
    let persisted = cursor_file(spool, "fleet");
    assert_eq!(
        persisted,
        status.snapshot().cursor,
        "graceful stop persists the acknowledged cursor"
    );
    assert!(persisted < TOTAL, "stopped mid-stream");

    // Server stopped mid-stream and restarted on the same port and store.
    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(persisted + 40, Duration::from_secs(20)).await;
    nats.stop();
    let errors_before = fwd.status.snapshot().errors_total;
    fwd.wait_errors(errors_before, Duration::from_secs(15)).await;
    assert!(!fwd.status.snapshot().healthy);
    nats.restart();
    writer.join().unwrap();
    fwd.wait_cursor(TOTAL, Duration::from_secs(30)).await;
    let snap = fwd.status.snapshot();
    assert!(snap.healthy, "{snap:?}");
    assert_eq!((snap.lag_records, snap.gaps_total), (0, 0));
    fwd.stop().await;
    assert_eq!(cursor_file(spool, "fleet"), TOTAL);

    // Read back the whole stream.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("AUDIT_TEST").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut ids = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let record: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let event_id = record["event_id"].as_str().unwrap().to_owned();
        let header = msg.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
        assert_eq!(
            header.as_deref(),
            Some(event_id.as_str()),
            "Nats-Msg-Id = event_id"
        );
        assert_eq!(msg.subject.as_str(), "phigate.audit.test");
        ids.push(event_id);
    }
    let (distinct, dups) = dedupe(ids);
    assert_eq!(distinct, all_event_ids(TOTAL), "every record arrived");
    assert_eq!(dups, 0, "JetStream de-duplicated re-sends by Nats-Msg-Id");
    assert_eq!(info.state.messages, TOTAL);
    eprintln!(
        "nats: {TOTAL} records, {} sink errors during the outage, {:?}",
        snap.errors_total,
        started.elapsed()
    );
}

fn syslog_config(name: &str, address: &str, tls: Option<(&TestPki, bool)>) -> SinkConfig {
    let mut c = serde_json::json!({
        "type": "syslog", "name": name, "address": address, "transport": "tcp",
        "hostname": "gw-test", "enterprise_id": 32473, "batch_size": 16, "max_backoff": "1s",
        "timeout": "3s", "confirm_delay": "100ms",
    });
    if let Some((pki, client_cert)) = tls {
        c["transport"] = "tls".into();
        c["ca_file"] = pki.path("ca.pem").display().to_string().into();
        if client_cert {
            c["client_cert_file"] = pki.path("client.pem").display().to_string().into();
            c["client_key_file"] = pki.path("client.key").display().to_string().into();
        }
    }
    sink_config(c)
}

/// Wait until rsyslog has written messages for all `expected` ids; return
/// (distinct ids, duplicates) after checking every message's fields.
async fn received_by_rsyslog(rsyslog: &Rsyslog, expected: &BTreeSet<String>) -> (BTreeSet<String>, usize) {
    let start = Instant::now();
    loop {
        let received = rsyslog.received();
        let mut ids = Vec::new();
        for m in &received {
            assert_eq!(m.app_name, "phigate");
            let record: serde_json::Value = serde_json::from_str(&m.msg)
                .unwrap_or_else(|e| panic!("MSG is not the JSON record ({e}): {:?}", m.msg));
            let event_id = record["event_id"].as_str().unwrap().to_owned();
            assert_eq!(
                m.sd_param("event_id").as_deref(),
                Some(event_id.as_str()),
                "{m:?}"
            );
            assert_eq!(m.sd_param("seq"), Some(record["seq"].to_string()));
            assert!(m.structured_data.starts_with("[phigate@32473 "), "{m:?}");
            let allow = record["decision"] == "allow";
            assert_eq!(m.sd_param("decision").as_deref(), record["decision"].as_str());
            assert_eq!(
                m.pri,
                if allow { 85 } else { 84 },
                "authpriv.notice / authpriv.warning"
            );
            assert_eq!(Some(m.msgid.as_str()), record["reason"].as_str());
            ids.push(event_id);
        }
        let (distinct, dups) = dedupe(ids);
        if distinct == *expected || start.elapsed() > Duration::from_secs(15) {
            return (distinct, dups);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_to_rsyslog_gets_every_record_across_a_forwarder_crash_and_a_receiver_restart() {
    let started = Instant::now();
    const TOTAL: u64 = 300;
    let mut rsyslog = Rsyslog::start_tcp();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path();
    let writer = write_spool_gradually(spool, TOTAL, 64);
    let config = syslog_config("atna", &rsyslog.address(), None);

    // Forwarder killed mid-stream (no graceful stop), restarted from its cursor.
    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(60, Duration::from_secs(20)).await;
    fwd.crash().await;
    let persisted = cursor_file(spool, "atna");
    assert!((60..TOTAL).contains(&persisted));

    // rsyslog stopped mid-stream, restarted on the same port.
    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(persisted + 40, Duration::from_secs(20)).await;
    rsyslog.stop();
    let errors_before = fwd.status.snapshot().errors_total;
    fwd.wait_errors(errors_before, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rsyslog.restart();
    writer.join().unwrap();
    fwd.wait_cursor(TOTAL, Duration::from_secs(30)).await;
    let snap = fwd.status.snapshot();
    assert!(snap.healthy, "{snap:?}");
    fwd.stop().await;

    let (distinct, dups) = received_by_rsyslog(&rsyslog, &all_event_ids(TOTAL)).await;
    let missing: Vec<_> = all_event_ids(TOTAL).difference(&distinct).cloned().collect();
    assert!(
        missing.is_empty(),
        "missing {} records: {missing:?}\n{}",
        missing.len(),
        rsyslog.log()
    );
    assert_eq!(distinct.len() as u64, TOTAL);
    eprintln!(
        "syslog tcp: {TOTAL} records, {dups} duplicate deliveries (receivers de-duplicate by event_id), {} sink errors, {:?}",
        snap.errors_total,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_to_rsyslog_verifies_the_server_and_delivers_every_record() {
    let started = Instant::now();
    const TOTAL: u64 = 120;
    let pki = TestPki::generate();
    let rsyslog = Rsyslog::start_tls(&pki);
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path();
    let writer = write_spool_gradually(spool, TOTAL, 50);

    // A sink that trusts another CA must never hand anything over.
    let other_pki = TestPki::generate();
    let untrusting = Running::start(
        &syslog_config("wrong-ca", &rsyslog.address(), Some((&other_pki, false))),
        spool,
    );
    // Nor one without the client certificate the receiver requires: the
    // receiver ends the session, which the confirm delay catches.
    let anonymous = Running::start(
        &syslog_config("no-client-cert", &rsyslog.address(), Some((&pki, false))),
        spool,
    );

    let config = syslog_config("atna-tls", &rsyslog.address(), Some((&pki, true)));
    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(40, Duration::from_secs(20)).await;
    fwd.stop().await;
    let fwd = Running::start(&config, spool);
    writer.join().unwrap();
    fwd.wait_cursor(TOTAL, Duration::from_secs(30)).await;
    assert!(fwd.status.snapshot().healthy);
    fwd.stop().await;

    let (distinct, dups) = received_by_rsyslog(&rsyslog, &all_event_ids(TOTAL)).await;
    assert_eq!(distinct, all_event_ids(TOTAL), "{}", rsyslog.log());
    // Graceful stop re-sends nothing, and the rejected sinks' writes never landed.
    assert_eq!(dups, 0);

    let wrong = untrusting.status.snapshot();
    assert_eq!(wrong.cursor, 0, "{wrong:?}");
    assert!(!wrong.healthy);
    let err = wrong.last_error.clone().unwrap_or_default();
    assert!(err.contains("TLS handshake"), "{err}");
    untrusting.stop().await;
    assert_eq!(cursor_file(spool, "wrong-ca"), 0);
    let anon = anonymous.status.snapshot();
    assert_eq!((anon.cursor, anon.healthy), (0, false), "{anon:?}");
    anonymous.stop().await;
    eprintln!(
        "syslog tls: {TOTAL} records, {dups} duplicates, {:?}",
        started.elapsed()
    );
}

fn event_id_of(ev: &serde_json::Value) -> String {
    ev["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"]["identifier"]["system"] == "urn:phigate:event-id")
        .and_then(|e| e["what"]["identifier"]["value"].as_str())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_audit_repository_gets_every_audit_event_once_despite_failures_and_restarts() {
    let started = Instant::now();
    const TOTAL: u64 = 120;
    let repo = AuditRepo::start().await;
    repo.fail_next(3, 503);
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path();
    let writer = write_spool_gradually(spool, TOTAL, 40);
    let config = sink_config(serde_json::json!({
        "type": "fhir", "name": "arr", "base_url": repo.base_url(), "timeout": "2s",
        "batch_size": 16, "max_backoff": "1s",
    }));

    let fwd = Running::start(&config, spool);
    fwd.wait_cursor(50, Duration::from_secs(20)).await;
    let snap = fwd.status.snapshot();
    assert!(
        snap.errors_total >= 3,
        "the first three 503s were errors: {snap:?}"
    );
    assert!(snap.last_error.unwrap_or_default().contains("503"));
    fwd.stop().await;

    // A rejecting server (4xx) is not skipped: the sink turns unhealthy and
    // retries until the server accepts.
    repo.fail_next(2, 400);
    let fwd = Running::start(&config, spool);
    fwd.wait_errors(0, Duration::from_secs(15)).await;
    let snap = fwd.status.snapshot();
    assert!(
        snap.last_error.clone().unwrap_or_default().contains("400"),
        "{snap:?}"
    );
    writer.join().unwrap();
    fwd.wait_cursor(TOTAL, Duration::from_secs(30)).await;
    assert!(fwd.status.snapshot().healthy);
    fwd.stop().await;

    let accepted = repo.accepted();
    assert!(repo.bad_requests().is_empty(), "{:?}", repo.bad_requests());
    let (distinct, dups) = dedupe(accepted.iter().map(event_id_of));
    assert_eq!(distinct, all_event_ids(TOTAL));
    // Per-record POSTs are acknowledged one by one: nothing is re-sent.
    assert_eq!(dups, 0);
    for ev in &accepted {
        assert!(ev.get("id").is_none());
        let profile = ev["meta"]["profile"][0].as_str().unwrap_or_default();
        if ev["type"]["code"] == "110113" {
            assert!(profile.ends_with("IHE.BasicAudit.AuthZconsent"));
            assert_eq!(ev["outcome"], "4");
            assert_eq!(ev["outcomeDesc"], "insufficient_scope (HTTP 403)");
        } else {
            assert_eq!(ev["type"]["code"], "rest");
            assert_eq!(ev["subtype"][0]["code"], "read");
            assert!(profile.ends_with("Read"), "{profile}");
        }
    }
    eprintln!(
        "fhir: {TOTAL} records, {} requests for {} AuditEvents, {:?}",
        repo.requests(),
        accepted.len(),
        started.elapsed()
    );
}

/// `validate` + `build_forwarders` (and `build_sinks`, which chains them)
/// turn a mixed `sinks:` list into forwarders, in order, without connecting
/// anywhere.
#[test]
fn a_mixed_sinks_list_builds_without_connecting() {
    let configs: Vec<SinkConfig> = serde_json::from_value(serde_json::json!([
        {"type": "stdout", "name": "out"},
        {"type": "nats", "name": "js", "url": "nats://127.0.0.1:1"},
        {"type": "fhir", "name": "arr", "base_url": "https://arr.example/fhir"},
        {"type": "syslog", "name": "siem", "address": "127.0.0.1:514", "transport": "tcp"},
    ]))
    .unwrap();
    let want = [
        ("out".to_owned(), "stdout"),
        ("js".to_owned(), "nats"),
        ("arr".to_owned(), "fhir"),
        ("siem".to_owned(), "syslog"),
    ];
    let validated = phigate_sinks::config::validate(&configs).unwrap();
    let fwds = build_forwarders(&validated).unwrap();
    let kinds: Vec<_> = fwds.iter().map(|f| (f.name().to_owned(), f.kind())).collect();
    assert_eq!(kinds, want);
    let fwds = build_sinks(&configs).unwrap();
    let kinds: Vec<_> = fwds.iter().map(|f| (f.name().to_owned(), f.kind())).collect();
    assert_eq!(kinds, want);
}

/// Keys of another kind are rejected by serde; bad values are located by
/// entry index and key.
#[test]
fn sink_config_problems_are_located() {
    let e = serde_json::from_value::<Vec<SinkConfig>>(serde_json::json!([
        {"type": "nats", "name": "js", "url": "nats://127.0.0.1:1", "address": "h:1"},
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `address`"), "{e}");

    let configs: Vec<SinkConfig> = serde_json::from_value(serde_json::json!([
        {"type": "stdout", "name": "out"},
        {"type": "syslog", "name": "siem", "address": "127.0.0.1:514", "transport": "udp"},
        {"type": "fhir", "name": "arr"},
    ]))
    .unwrap();
    let problems = phigate_sinks::config::validate(&configs).unwrap_err();
    let at: Vec<_> = problems.iter().map(|p| (p.index, p.key)).collect();
    assert_eq!(at, [(1, Some("transport")), (2, None)]);
    let Err(Error::Config(messages)) = build_sinks(&configs) else {
        panic!("expected a configuration error")
    };
    assert_eq!(
        messages,
        [
            "sinks[1].transport: `transport` must be `tcp` or `tls`, not `udp`",
            "sinks[2]: `base_url` is required for a `fhir` sink",
        ]
    );
}
