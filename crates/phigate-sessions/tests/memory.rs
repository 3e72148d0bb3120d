//! The memory store (a single gateway instance).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use phigate_sessions::{SessionError, SessionKey, SessionVerdict, Sessions, SessionsConfig, StoreConfig};

const IDLE: Duration = Duration::from_secs(900);
const IDLE_MS: i64 = 900_000;
const T: i64 = 1_700_000_000_000;

async fn memory() -> Sessions {
    Sessions::connect(SessionsConfig::new(IDLE, StoreConfig::Memory))
        .await
        .unwrap()
}

fn key(sid: &str) -> SessionKey {
    SessionKey::for_token("https://idp.example", Some(sid), Some("alice"), Some("app"))
}

fn iat(ms: i64) -> Option<i64> {
    Some(ms / 1000)
}

#[tokio::test]
async fn idle_session_is_logged_off() {
    let s = memory().await;
    let k = key("s1");
    assert_eq!(
        s.check(&k, iat(T), IDLE, T).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(
        s.check(&k, iat(T), IDLE, T + IDLE_MS + 1).await.unwrap(),
        SessionVerdict::Idle
    );
    // It stays ended for that token, even right after.
    assert_eq!(
        s.check(&k, iat(T), IDLE, T + IDLE_MS + 2).await.unwrap(),
        SessionVerdict::Idle
    );
    let rec = s.local_record(&k).unwrap();
    assert_eq!(rec.end.unwrap().at, T + IDLE_MS + 1);
}

#[tokio::test]
async fn activity_keeps_the_session_alive() {
    let s = memory().await;
    let k = key("s1");
    for i in 0..10 {
        let now = T + i * (IDLE_MS - 1);
        assert_eq!(
            s.check(&k, iat(T), IDLE, now).await.unwrap(),
            SessionVerdict::Active,
            "step {i}"
        );
    }
}

#[tokio::test]
async fn a_shorter_route_timeout_ends_the_session_for_all_routes() {
    let s = memory().await;
    let k = key("s1");
    s.check(&k, iat(T), IDLE, T).await.unwrap();
    let short = Duration::from_secs(60);
    assert_eq!(
        s.check(&k, iat(T), short, T + 61_000).await.unwrap(),
        SessionVerdict::Idle
    );
    assert_eq!(
        s.check(&k, iat(T), IDLE, T + 62_000).await.unwrap(),
        SessionVerdict::Idle
    );
}

#[tokio::test]
async fn revoke_sid_refuses_tokens_issued_before() {
    let s = memory().await;
    let k = key("s1");
    s.check(&k, iat(T), IDLE, T).await.unwrap();
    s.revoke_sid("https://idp.example", "s1", T + 5_000)
        .await
        .unwrap();
    assert_eq!(
        s.check(&k, iat(T), IDLE, T + 6_000).await.unwrap(),
        SessionVerdict::Revoked
    );
    assert_eq!(
        s.check(&k, None, IDLE, T + 6_000).await.unwrap(),
        SessionVerdict::Revoked
    );
    // Other sessions are unaffected.
    assert_eq!(
        s.check(&key("s2"), iat(T), IDLE, T + 6_000).await.unwrap(),
        SessionVerdict::Active
    );
}

#[tokio::test]
async fn revoke_of_an_unseen_session_still_refuses_it() {
    let s = memory().await;
    s.revoke_sid("https://idp.example", "never-seen", T)
        .await
        .unwrap();
    assert_eq!(
        s.check(&key("never-seen"), iat(T - 1_000), IDLE, T + 1)
            .await
            .unwrap(),
        SessionVerdict::Revoked
    );
}

#[tokio::test]
async fn revoke_sub_refuses_every_session_of_the_subject() {
    let s = memory().await;
    let a = SessionKey::for_token("https://idp.example", None, Some("alice"), Some("app1"));
    let b = SessionKey::for_token("https://idp.example", Some("sid-b"), Some("alice"), Some("app2"));
    let bob = SessionKey::for_token("https://idp.example", None, Some("bob"), Some("app1"));
    for k in [&a, &b, &bob] {
        assert_eq!(s.check(k, iat(T), IDLE, T).await.unwrap(), SessionVerdict::Active);
    }
    s.revoke_sub("https://idp.example", "alice", T + 1_000)
        .await
        .unwrap();
    assert_eq!(
        s.check(&a, iat(T), IDLE, T + 2_000).await.unwrap(),
        SessionVerdict::Revoked
    );
    assert_eq!(
        s.check(&b, iat(T), IDLE, T + 2_000).await.unwrap(),
        SessionVerdict::Revoked
    );
    assert_eq!(
        s.check(&bob, iat(T), IDLE, T + 2_000).await.unwrap(),
        SessionVerdict::Active
    );
    // A login after the revocation works.
    assert_eq!(
        s.check(&a, iat(T + 3_000), IDLE, T + 3_500).await.unwrap(),
        SessionVerdict::Active
    );
}

#[tokio::test]
async fn a_token_issued_after_the_end_starts_a_new_session() {
    let s = memory().await;
    let k = key("s1");
    s.check(&k, iat(T), IDLE, T).await.unwrap();
    let ended = T + IDLE_MS + 1;
    assert_eq!(
        s.check(&k, iat(T), IDLE, ended).await.unwrap(),
        SessionVerdict::Idle
    );
    let fresh = iat(ended + 1_000);
    assert_eq!(
        s.check(&k, fresh, IDLE, ended + 1_500).await.unwrap(),
        SessionVerdict::Active
    );
    // The old token stays refused; the new one lives on and idles out on its own.
    assert_eq!(
        s.check(&k, iat(T), IDLE, ended + 2_000).await.unwrap(),
        SessionVerdict::Idle
    );
    assert_eq!(
        s.check(&k, fresh, IDLE, ended + 1_500 + IDLE_MS).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(
        s.check(&k, fresh, IDLE, ended + 1_500 + 2 * IDLE_MS + 1)
            .await
            .unwrap(),
        SessionVerdict::Idle
    );
}

#[tokio::test]
async fn claim_once_detects_replay() {
    let s = memory().await;
    let ttl = Duration::from_secs(60);
    assert!(s.claim_once("dpop", "jti-1", ttl).await.unwrap());
    assert!(!s.claim_once("dpop", "jti-1", ttl).await.unwrap());
    assert!(
        s.claim_once("logout", "jti-1", ttl).await.unwrap(),
        "namespaces are separate"
    );
    assert!(s.claim_once("dpop", "jti-2", ttl).await.unwrap());
}

#[tokio::test]
async fn claim_once_forgets_after_ttl() {
    let s = memory().await;
    assert!(s
        .claim_once("dpop", "x", Duration::from_millis(20))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(s
        .claim_once("dpop", "x", Duration::from_millis(20))
        .await
        .unwrap());
}

#[tokio::test]
async fn claim_once_rejects_ttls_it_cannot_honour() {
    let s = memory().await;
    assert!(matches!(
        s.claim_once("dpop", "x", Duration::ZERO).await,
        Err(SessionError::InvalidTtl { .. })
    ));
    assert!(matches!(
        s.claim_once("dpop", "x", Duration::from_secs(10 * 3600)).await,
        Err(SessionError::InvalidTtl { .. })
    ));
}

#[tokio::test]
async fn maps_are_bounded_and_full_maps_fail_closed() {
    let mut cfg = SessionsConfig::new(IDLE, StoreConfig::Memory);
    cfg.max_local_entries = 64;
    let s = Sessions::connect(cfg).await.unwrap();
    for i in 0..64 {
        let k = key(&format!("s{i}"));
        assert_eq!(
            s.check(&k, iat(T), IDLE, T).await.unwrap(),
            SessionVerdict::Active
        );
    }
    let over = s.check(&key("one-too-many"), iat(T), IDLE, T).await;
    assert!(matches!(over, Err(SessionError::Capacity(64))), "{over:?}");
    assert_eq!(over.unwrap_err().reason(), "session_store_unavailable");
    // Known sessions still work at the cap, and ended ones stay ended.
    assert_eq!(
        s.check(&key("s1"), iat(T), IDLE, T + IDLE_MS + 1).await.unwrap(),
        SessionVerdict::Idle
    );
    assert_eq!(s.stats().local_entries, 64);

    let ttl = Duration::from_secs(60);
    for i in 0..64 {
        assert!(s.claim_once("dpop", &format!("j{i}"), ttl).await.unwrap());
    }
    assert!(matches!(
        s.claim_once("dpop", "j-over", ttl).await,
        Err(SessionError::Capacity(64))
    ));
    assert!(
        !s.claim_once("dpop", "j1", ttl).await.unwrap(),
        "replays are still detected"
    );
}

#[tokio::test]
async fn memory_secrets_are_per_process_and_stable() {
    let a = memory().await;
    let b = memory().await;
    let s1 = a.shared_secret("dpop-nonce").await.unwrap();
    assert_eq!(a.shared_secret("dpop-nonce").await.unwrap(), s1);
    assert_ne!(b.shared_secret("dpop-nonce").await.unwrap(), s1);
    assert_ne!(a.shared_secret("other").await.unwrap(), s1);
    assert!(matches!(
        a.shared_secret("bad name").await,
        Err(SessionError::InvalidName(_))
    ));
}

#[tokio::test]
async fn memory_store_is_healthy_and_writes_nothing_remote() {
    let s = memory().await;
    s.check(&key("s1"), iat(T), IDLE, T).await.unwrap();
    let st = s.stats();
    assert!(st.healthy && s.is_healthy());
    assert_eq!((st.writes, st.reads, st.local_entries), (0, 0, 1));
}

#[tokio::test]
async fn run_stops_on_shutdown() {
    let s = memory().await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let s = s.clone();
        async move { s.run(rx).await }
    });
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns on shutdown")
        .unwrap();
}

#[tokio::test]
async fn bad_config_reports_every_problem() {
    let mut cfg = SessionsConfig::new(
        Duration::ZERO,
        StoreConfig::Nats(phigate_sessions::NatsStoreConfig {
            bucket: "bad bucket".into(),
            replicas: 0,
            ..phigate_sessions::NatsStoreConfig::new("")
        }),
    );
    cfg.max_local_entries = 0;
    let err = Sessions::connect(cfg).await.unwrap_err().to_string();
    for needle in ["idle_timeout", "max_local_entries", "url", "bucket", "replicas"] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
}

#[tokio::test]
async fn an_idle_timeout_of_never_is_accepted() {
    // The gateway passes ~100 years when only revocation is wanted.
    let never = Duration::from_secs(100 * 365 * 24 * 3600);
    let cfg = SessionsConfig::new(never, StoreConfig::Memory);
    assert_eq!(
        cfg.effective_record_ttl(),
        phigate_sessions::MAX_DEFAULT_RECORD_TTL
    );
    assert_eq!(cfg.effective_write_interval(), Duration::from_secs(30));
    let s = Sessions::connect(cfg).await.unwrap();
    let k = key("s1");
    assert_eq!(
        s.check(&k, iat(T), never, T).await.unwrap(),
        SessionVerdict::Active
    );
    assert_eq!(
        s.check(&k, iat(T), never, T + 10 * IDLE_MS).await.unwrap(),
        SessionVerdict::Active
    );
    assert!(s.claim_once("dpop", "x", Duration::from_secs(360)).await.unwrap());
}

#[test]
fn record_ttl_defaults_to_four_idle_timeouts_within_bounds() {
    let cfg = |idle| SessionsConfig::new(idle, StoreConfig::Memory);
    assert_eq!(
        cfg(Duration::from_secs(900)).effective_record_ttl(),
        phigate_sessions::MIN_DEFAULT_RECORD_TTL
    );
    assert_eq!(
        cfg(Duration::from_secs(2 * 24 * 3600)).effective_record_ttl(),
        Duration::from_secs(8 * 24 * 3600)
    );
    assert_eq!(
        cfg(Duration::from_secs(900)).effective_write_interval(),
        Duration::from_secs(30)
    );
    assert_eq!(
        cfg(Duration::from_secs(60)).effective_write_interval(),
        Duration::from_secs(6)
    );
}
