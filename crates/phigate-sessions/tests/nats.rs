//! The NATS store against a real `nats-server` with JetStream: two
//! `Sessions` on one server play two gateway replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phigate_sessions::{
    NatsStoreConfig, SessionError, SessionKey, SessionVerdict, Sessions, SessionsConfig, StoreConfig,
};
use support::{eventually_async, NatsServer};
use tokio::sync::watch;

const IDLE: Duration = Duration::from_secs(600);
const IDLE_MS: i64 = 600_000;
/// Bound on waiting for propagation (generous; the functional requirement is
/// well under a second on loopback).
const PROPAGATION: Duration = Duration::from_secs(10);
/// Bound on reconnecting after a restart (the client backs off up to 4 s).
const RECONNECT: Duration = Duration::from_secs(30);
const ISS: &str = "https://idp.example";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn iat(ms: i64) -> Option<i64> {
    Some(ms / 1000)
}

fn key(sid: &str) -> SessionKey {
    SessionKey::for_token(ISS, Some(sid), Some("alice"), Some("app"))
}

struct Options {
    write_interval: Duration,
    stale_grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write_interval: Duration::from_millis(50),
            stale_grace: Duration::from_secs(60),
        }
    }
}

async fn connect(url: &str, o: &Options) -> Sessions {
    // The fields the gateway sets, spelled out (a struct literal, as it does).
    let nats = NatsStoreConfig {
        url: url.to_string(),
        bucket: phigate_sessions::DEFAULT_BUCKET.to_string(),
        credentials: None,
        tls: None,
        replicas: 1,
        connect_timeout: Duration::from_secs(5),
    };
    let mut cfg = SessionsConfig::new(IDLE, StoreConfig::Nats(nats));
    cfg.request_timeout = Duration::from_secs(2);
    cfg.write_interval = Some(o.write_interval);
    cfg.stale_grace = o.stale_grace;
    Sessions::connect(cfg).await.expect("connect to nats-server")
}

/// A replica with its background task running until dropped.
struct Replica {
    s: Sessions,
    _stop: watch::Sender<bool>,
}

impl std::ops::Deref for Replica {
    type Target = Sessions;
    fn deref(&self) -> &Sessions {
        &self.s
    }
}

async fn replica(url: &str, o: &Options) -> Replica {
    let s = connect(url, o).await;
    let (stop, rx) = watch::channel(false);
    tokio::spawn({
        let s = s.clone();
        async move { s.run(rx).await }
    });
    Replica { s, _stop: stop }
}

async fn wait_flushed(s: &Sessions) {
    eventually_async(PROPAGATION, || async {
        let st = s.stats();
        (st.pending_writes == 0 && st.writes > 0).then_some(())
    })
    .await
    .expect("pending writes flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_is_logged_off_on_both_replicas() {
    let server = NatsServer::start();
    let o = Options::default();
    let a = replica(&server.url(), &o).await;
    let b = replica(&server.url(), &o).await;
    let t = now_ms();
    let k = key("idle");
    assert_eq!(
        a.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(
        b.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );

    let late = t + IDLE_MS + 1;
    assert_eq!(
        a.check(&k, iat(t), IDLE, late).await.unwrap(),
        SessionVerdict::Idle
    );
    // A wrote the end at once; B learns it from the watch.
    let seen_on_b = eventually_async(PROPAGATION, || async { b.local_record(&k)?.end }).await;
    assert_eq!(seen_on_b.map(|e| e.at), Some(late));
    assert_eq!(
        b.check(&k, iat(t), IDLE, late + 1).await.unwrap(),
        SessionVerdict::Idle
    );
    // And a replica that never held it reads the end rather than starting it.
    let c = connect(&server.url(), &o).await;
    assert_eq!(
        c.check(&k, iat(t), IDLE, late + 2).await.unwrap(),
        SessionVerdict::Idle
    );
    assert!(c.stats().reads >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_on_one_replica_keeps_the_other_alive() {
    let server = NatsServer::start();
    let o = Options::default();
    let a = replica(&server.url(), &o).await;
    let b = replica(&server.url(), &o).await;
    let t = now_ms();
    let k = key("busy");
    assert_eq!(
        b.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(
        a.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    // Traffic moves to A for most of the idle timeout.
    let active = t + IDLE_MS - 1_000;
    assert_eq!(
        a.check(&k, iat(t), IDLE, active).await.unwrap(),
        SessionVerdict::Active
    );
    let seen_on_b = eventually_async(PROPAGATION, || async {
        b.local_record(&k).filter(|r| r.seen == active).map(|_| ())
    })
    .await;
    assert!(seen_on_b.is_some(), "A's touch reached B");
    // Past the idle timeout counted from the start, B still says active.
    assert_eq!(
        b.check(&k, iat(t), IDLE, t + IDLE_MS + 30_000).await.unwrap(),
        SessionVerdict::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_replica_refuses_on_the_other() {
    let server = NatsServer::start();
    let o = Options::default();
    let a = replica(&server.url(), &o).await;
    let b = replica(&server.url(), &o).await;
    let t = now_ms();
    let by_sid = key("logout-me");
    let by_sub = SessionKey::for_token(ISS, None, Some("bob"), Some("app"));
    for k in [&by_sid, &by_sub] {
        assert_eq!(b.check(k, iat(t), IDLE, t).await.unwrap(), SessionVerdict::Active);
    }

    a.revoke_sid(ISS, "logout-me", t + 1_000).await.unwrap();
    a.revoke_sub(ISS, "bob", t + 1_000).await.unwrap();
    let revoked = std::time::Instant::now();

    for k in [&by_sid, &by_sub] {
        let refused = eventually_async(PROPAGATION, || async {
            match b.check(k, iat(t), IDLE, t + 2_000).await {
                Ok(SessionVerdict::Revoked) => Some(()),
                _ => None,
            }
        })
        .await;
        assert!(refused.is_some(), "B refuses {k} after A's revocation");
    }
    eprintln!("revocations refused on B after {:?}", revoked.elapsed());
    // A new login of bob after the revocation is fine.
    assert_eq!(
        b.check(&by_sub, iat(t + 5_000), IDLE, t + 6_000).await.unwrap(),
        SessionVerdict::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_once_holds_across_replicas() {
    let server = NatsServer::start();
    let o = Options::default();
    let a = connect(&server.url(), &o).await;
    let b = connect(&server.url(), &o).await;
    let ttl = Duration::from_secs(300);
    assert!(a.claim_once("dpop", "jti-1", ttl).await.unwrap());
    assert!(!b.claim_once("dpop", "jti-1", ttl).await.unwrap());
    assert!(!a.claim_once("dpop", "jti-1", ttl).await.unwrap());
    assert!(b.claim_once("logout", "jti-1", ttl).await.unwrap());
    assert!(b.claim_once("dpop", "jti-2", ttl).await.unwrap());
    assert!(matches!(
        a.claim_once("dpop", "jti-3", Duration::from_secs(2 * 3600)).await,
        Err(SessionError::InvalidTtl { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_is_the_same_on_every_replica() {
    let server = NatsServer::start();
    let o = Options::default();
    let a = connect(&server.url(), &o).await;
    let b = connect(&server.url(), &o).await;
    let sa = a.shared_secret("dpop-nonce").await.unwrap();
    let sb = b.shared_secret("dpop-nonce").await.unwrap();
    assert_eq!(sa, sb);
    assert_ne!(sa, [0u8; 32]);
    assert_ne!(a.shared_secret("other").await.unwrap(), sa);
    // A replica started later reads the same value.
    let c = connect(&server.url(), &o).await;
    assert_eq!(c.shared_secret("dpop-nonce").await.unwrap(), sa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_touch_never_resurrects_an_ended_session() {
    let server = NatsServer::start();
    let o = Options {
        // B's touch stays local until B flushes explicitly.
        write_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let a = connect(&server.url(), &o).await;
    // Neither runs its watcher: B's view stays stale, so its write races A's.
    let b = connect(&server.url(), &o).await;
    let t = now_ms();
    let k = key("race");
    assert_eq!(
        a.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(a.flush().await.unwrap(), 1);
    assert_eq!(
        b.check(&k, iat(t), IDLE, t + 1).await.unwrap(),
        SessionVerdict::Active
    );
    // B sees activity (not yet written) …
    assert_eq!(
        b.check(&k, iat(t), IDLE, t + 5_000).await.unwrap(),
        SessionVerdict::Active
    );
    // … while A, not knowing, logs the session off.
    let ended = t + IDLE_MS + 1;
    assert_eq!(
        a.check(&k, iat(t), IDLE, ended).await.unwrap(),
        SessionVerdict::Idle
    );
    // B's touch is written against a stale revision: conflict, merge, retry.
    b.flush().await.unwrap();
    assert!(b.stats().conflicts >= 1, "{:?}", b.stats());
    let on_b = b.local_record(&k).unwrap();
    assert_eq!(on_b.seen, t + 5_000);
    assert_eq!(on_b.end.map(|e| e.at), Some(ended), "the end survived B's write");
    // Every view refuses the old token.
    assert_eq!(
        b.check(&k, iat(t), IDLE, t + 6_000).await.unwrap(),
        SessionVerdict::Idle
    );
    let c = connect(&server.url(), &o).await;
    assert_eq!(
        c.check(&k, iat(t), IDLE, t + 6_000).await.unwrap(),
        SessionVerdict::Idle
    );
    assert_eq!(c.local_record(&k), Some(on_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touches_are_coalesced() {
    let server = NatsServer::start();
    let o = Options {
        write_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let a = replica(&server.url(), &o).await;
    let t = now_ms();
    let k = key("hot");
    for i in 0..10_000 {
        assert_eq!(
            a.check(&k, iat(t), IDLE, t + i).await.unwrap(),
            SessionVerdict::Active
        );
    }
    // The start is written on the flusher's next tick; the touches after it
    // wait for the write interval (an hour).
    let wrote = eventually_async(PROPAGATION, || async { (a.stats().writes >= 1).then_some(()) }).await;
    assert!(wrote.is_some(), "the session start was written");
    let st = a.stats();
    assert!(st.writes <= 3, "{st:?}");
    assert!(st.pending_writes <= 1, "{st:?}");
    assert!(st.reads <= 2, "{st:?}");
    assert_eq!(st.local_entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_uses_the_local_view_then_recovers() {
    let mut server = NatsServer::start();
    let o = Options::default();
    let a = replica(&server.url(), &o).await;
    let t = now_ms();
    let known = key("known");
    let ending = key("ending");
    for k in [&known, &ending] {
        assert_eq!(a.check(k, iat(t), IDLE, t).await.unwrap(), SessionVerdict::Active);
    }
    wait_flushed(&a).await;
    assert!(a.is_healthy());

    server.stop();
    let down = eventually_async(PROPAGATION, || async { (!a.is_healthy()).then_some(()) }).await;
    assert!(down.is_some(), "outage noticed");

    // Known sessions: decided locally within stale_grace.
    assert_eq!(
        a.check(&known, iat(t), IDLE, t + 1_000).await.unwrap(),
        SessionVerdict::Active
    );
    let ended = t + IDLE_MS + 1;
    assert_eq!(
        a.check(&ending, iat(t), IDLE, ended).await.unwrap(),
        SessionVerdict::Idle
    );
    assert!(a.stats().pending_writes >= 1, "the end is queued");
    // Unknown sessions, one-time ids and revocations: unavailable at once.
    let unknown = a.check(&key("unknown"), iat(t), IDLE, t + 1_000).await;
    assert!(
        matches!(unknown, Err(SessionError::Unavailable(_))),
        "{unknown:?}"
    );
    assert_eq!(unknown.unwrap_err().reason(), "session_store_unavailable");
    let claim = a.claim_once("dpop", "while-down", Duration::from_secs(60)).await;
    assert!(matches!(claim, Err(SessionError::Unavailable(_))), "{claim:?}");
    let revoke = a.revoke_sid(ISS, "known", t + 2_000).await;
    assert!(matches!(revoke, Err(SessionError::Unavailable(_))), "{revoke:?}");

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let back = eventually_async(RECONNECT, || async {
        a.check(&key("after"), iat(t), IDLE, t + 3_000).await.ok()
    })
    .await;
    assert_eq!(back, Some(SessionVerdict::Active), "works again after restart");
    // The end decided during the outage reached the store.
    wait_flushed(&a).await;
    let c = connect(&server.url(), &Options::default()).await;
    assert_eq!(
        c.check(&ending, iat(t), IDLE, ended + 1).await.unwrap(),
        SessionVerdict::Idle
    );
    assert!(a
        .claim_once("dpop", "after", Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(
        a.check(&known, iat(t), IDLE, t + 4_000).await.unwrap(),
        SessionVerdict::Active
    );
    assert!(a.is_healthy());
    // The watch resumed: another replica's logout reaches A's local view.
    c.revoke_sid(ISS, "known", t + 5_000).await.unwrap();
    let watched = eventually_async(PROPAGATION, || async { a.local_record(&known)?.end }).await;
    assert_eq!(watched.map(|e| e.at), Some(t + 5_000));
    assert_eq!(
        a.check(&known, iat(t), IDLE, t + 6_000).await.unwrap(),
        SessionVerdict::Revoked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_beyond_stale_grace_fails_closed() {
    let mut server = NatsServer::start();
    let o = Options {
        stale_grace: Duration::from_millis(200),
        ..Options::default()
    };
    let a = replica(&server.url(), &o).await;
    let t = now_ms();
    let k = key("known");
    assert_eq!(
        a.check(&k, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    server.stop();
    let closed = eventually_async(PROPAGATION, || async {
        matches!(
            a.check(&k, iat(t), IDLE, t + 1_000).await,
            Err(SessionError::Unavailable(_))
        )
        .then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "known sessions refused once stale_grace has passed"
    );
    assert!(!a.stats().healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_view_is_bounded_and_evicted_sessions_are_read_back() {
    let server = NatsServer::start();
    let url = server.url();
    let mut cfg = SessionsConfig::new(IDLE, StoreConfig::Nats(NatsStoreConfig::new(url.as_str())));
    cfg.write_interval = Some(Duration::from_millis(50));
    cfg.max_local_entries = 16;
    let a = Sessions::connect(cfg).await.unwrap();
    let (_stop, rx) = watch::channel(false);
    tokio::spawn({
        let a = a.clone();
        async move { a.run(rx).await }
    });
    let t = now_ms();
    let first = key("s0");
    assert_eq!(
        a.check(&first, iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    let ended = t + IDLE_MS + 1;
    assert_eq!(
        a.check(&first, iat(t), IDLE, ended).await.unwrap(),
        SessionVerdict::Idle
    );
    for i in 1..40 {
        let k = key(&format!("s{i}"));
        assert_eq!(
            a.check(&k, iat(t), IDLE, t).await.unwrap(),
            SessionVerdict::Active
        );
    }
    wait_flushed(&a).await;
    // The next new session makes room among the written ones.
    assert_eq!(
        a.check(&key("one-more"), iat(t), IDLE, t).await.unwrap(),
        SessionVerdict::Active
    );
    let st = a.stats();
    assert!(st.local_entries <= 16, "{st:?}");
    assert!(st.evictions > 0, "{st:?}");
    // An evicted, ended session is read back from the store, still ended.
    assert_eq!(a.local_record(&first), None, "the oldest went first");
    assert_eq!(
        a.check(&first, iat(t), IDLE, ended + 1).await.unwrap(),
        SessionVerdict::Idle
    );
}
