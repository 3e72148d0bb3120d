//! [`Sessions`]: the local view, the store, and the background tasks that
//! keep them in step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;

use crate::cache::{lock, Cache, Pressure};
use crate::config::{SessionsConfig, StoreConfig};
use crate::key::{jti_key, SessionKey, SESSION_PREFIX, SUBJECT_PREFIX};
use crate::rules::{decide, EndReason, SessionEnd, SessionRecord, SessionVerdict, SubjectRecord, WriteKind};
use crate::store::{parse, NatsStore};
use crate::SessionError;

/// Writes the flusher runs at once.
const FLUSH_CONCURRENCY: usize = 32;
/// How often idle local entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Added to the longest idle timeout before an unused local entry goes.
const MIN_EVICT_MARGIN: Duration = Duration::from_secs(60);
/// Bound on the final flush at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Counters and gauges for metrics (`phigate_session_store_writes_total`,
/// `…_reads_total`, `…_conflicts_total`, `phigate_sessions_local`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Store write attempts (compare-and-set updates and creates).
    pub writes: u64,
    /// Store reads.
    pub reads: u64,
    /// Compare-and-set conflicts (another replica wrote first; merged and
    /// retried).
    pub conflicts: u64,
    /// Sessions held locally.
    pub local_entries: usize,
    /// Subjects held locally.
    pub local_subjects: usize,
    /// Sessions with a local change not yet written.
    pub pending_writes: usize,
    /// Local entries dropped to stay within bounds.
    pub evictions: u64,
    /// The store is reachable and the last store operation succeeded (always
    /// true for the memory store).
    pub healthy: bool,
}

/// The store's state as seen by a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    /// Unreachable or failing for at most `stale_grace`.
    Degraded,
    /// Unreachable or failing for longer.
    Down,
}

struct Inner {
    idle_timeout: Duration,
    write_interval: Duration,
    stale_grace: Duration,
    record_ttl: Duration,
    jti_max_ttl: Duration,
    max_local_entries: usize,
    store: Option<NatsStore>,
    sessions: Cache<SessionRecord>,
    subjects: Cache<SubjectRecord>,
    /// Memory store: one-time id → expiry.
    jtis: Mutex<HashMap<String, Instant>>,
    secrets: Mutex<HashMap<String, [u8; 32]>>,
    pending: Mutex<Vec<String>>,
    /// The longest idle timeout any check asked for, in ms.
    max_idle_ms: AtomicU64,
    down_since: Mutex<Option<Instant>>,
    /// A disconnect was seen during the current outage.
    lost_connection: AtomicBool,
    /// Tells the watcher to resume from its last revision (after an outage).
    rewatch: tokio::sync::Notify,
    evictions: AtomicU64,
}

/// Session state shared by all replicas. Clones share one state (an `Arc`).
///
/// Spawn [`Sessions::run`] once per process: it applies other replicas'
/// updates, writes coalesced touches, and evicts idle local entries.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field(
                "store",
                &if self.inner.store.is_some() {
                    "nats"
                } else {
                    "memory"
                },
            )
            .field("stats", &self.stats())
            .finish()
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn random_32() -> Result<[u8; 32], SessionError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| SessionError::Unavailable("no randomness".into()))?;
    Ok(b)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Sessions {
    /// Validate `cfg`; for NATS, connect, create the buckets when absent
    /// (`<bucket>`: history 1, `max_age` = record TTL (see
    /// [`SessionsConfig::record_ttl`]); `<bucket>-jti`:
    /// `max_age` = `jti_max_ttl`; `<bucket>-secrets`: no `max_age`) and start
    /// watching the session bucket. Fails when the store is unreachable.
    pub async fn connect(cfg: SessionsConfig) -> Result<Sessions, SessionError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(SessionError::Config(problems.join("; ")));
        }
        let record_ttl = cfg.effective_record_ttl();
        let store = match &cfg.store {
            StoreConfig::Memory => None,
            StoreConfig::Nats(n) => {
                Some(NatsStore::connect(n, cfg.request_timeout, record_ttl, cfg.jti_max_ttl).await?)
            }
        };
        Ok(Sessions {
            inner: Arc::new(Inner {
                idle_timeout: cfg.idle_timeout,
                write_interval: cfg.effective_write_interval(),
                stale_grace: cfg.stale_grace,
                record_ttl,
                jti_max_ttl: cfg.jti_max_ttl,
                max_local_entries: cfg.max_local_entries,
                store,
                sessions: Cache::new(cfg.max_local_entries),
                subjects: Cache::new(cfg.max_local_entries),
                jtis: Mutex::new(HashMap::new()),
                secrets: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                max_idle_ms: AtomicU64::new(duration_ms(cfg.idle_timeout)),
                down_since: Mutex::new(None),
                lost_connection: AtomicBool::new(false),
                rewatch: tokio::sync::Notify::new(),
                evictions: AtomicU64::new(0),
            }),
        })
    }

    /// Check the session of a request and record its activity.
    ///
    /// Runs on the request path after the token is validated. `token_iat` is
    /// the token's `iat` (unix seconds), `idle` the idle timeout of the route,
    /// `now_ms` unix milliseconds. A session known locally is decided from
    /// memory; an unknown one is read from the store first. `Err` means the
    /// answer cannot be trusted (store unavailable): fail closed.
    pub async fn check(
        &self,
        key: &SessionKey,
        token_iat: Option<i64>,
        idle: Duration,
        now_ms: i64,
    ) -> Result<SessionVerdict, SessionError> {
        let inner = &*self.inner;
        inner.max_idle_ms.fetch_max(duration_ms(idle), Ordering::Relaxed);
        let Some(store) = &inner.store else {
            return self.check_memory(key, token_iat, idle, now_ms);
        };
        let health = self.health();
        let connected = store.connected();
        if health != Health::Down {
            if let Some(out) = self.decide_known(key, token_iat, idle, now_ms) {
                return Ok(self.after_decision(key, out).await);
            }
        }
        // Unknown here (or stale beyond the grace): the store must answer.
        if !connected {
            return Err(SessionError::Unavailable(match health {
                Health::Down => "not connected for longer than stale_grace".into(),
                _ => "not connected; session unknown to this replica".into(),
            }));
        }
        self.load(store, key).await?;
        match self.decide_known(key, token_iat, idle, now_ms) {
            Some(out) => Ok(self.after_decision(key, out).await),
            None => Err(SessionError::Unavailable("session evicted while loading".into())),
        }
    }

    /// Decide from the local view, if it knows the session (and its subject).
    fn decide_known(
        &self,
        key: &SessionKey,
        token_iat: Option<i64>,
        idle: Duration,
        now_ms: i64,
    ) -> Option<(SessionVerdict, WriteKind, bool)> {
        let inner = &*self.inner;
        let subject = match key.subject_key() {
            None => None,
            Some(sk) => inner.subjects.with(sk, |slot| match slot {
                Some(s) if s.loaded => {
                    s.last_access = Instant::now();
                    Some(s.rec)
                }
                _ => None,
            })?,
        };
        inner.sessions.with(key.as_str(), |slot| {
            let slot = slot.filter(|s| s.loaded)?;
            slot.last_access = Instant::now();
            let d = decide(slot.rec.as_ref(), subject.as_ref(), token_iat, idle, now_ms);
            let mut enqueue = false;
            if d.write != WriteKind::None {
                slot.rec = crate::rules::merge_opt(slot.rec, d.record);
                if slot.dirty() && !slot.queued {
                    slot.queued = true;
                    enqueue = true;
                }
            }
            Some((d.verdict, d.write, enqueue))
        })
    }

    async fn after_decision(
        &self,
        key: &SessionKey,
        out: (SessionVerdict, WriteKind, bool),
    ) -> SessionVerdict {
        let (verdict, write, enqueue) = out;
        if enqueue {
            lock(&self.inner.pending).push(key.as_str().to_string());
        }
        let connected = self.inner.store.as_ref().is_some_and(NatsStore::connected);
        if write == WriteKind::Immediate && connected {
            // An end goes out at once; when that fails (or the store is
            // unreachable) it stays queued and the flusher retries. The
            // verdict (a refusal) stands either way.
            if let Err(e) = self.write_session(key.as_str()).await {
                tracing::warn!(error = %e, "session end not yet written; queued");
            }
        }
        verdict
    }

    /// Read the session (and its subject when not known) from the store and
    /// merge them into the local view. Placeholders go in first so a watch
    /// update that arrives during the read is merged, not missed.
    async fn load(&self, store: &NatsStore, key: &SessionKey) -> Result<(), SessionError> {
        let inner = &*self.inner;
        let retention = self.evict_after();
        let subject_key = key.subject_key();
        let reread = self.health() == Health::Down;
        let subject_needed = match subject_key {
            None => false,
            Some(sk) => inner
                .subjects
                .with_or_insert(
                    sk,
                    false,
                    Pressure::EvictClean,
                    retention,
                    &inner.evictions,
                    |s| reread || !s.loaded,
                )
                .unwrap_or(true),
        };
        let _ = inner.sessions.with_or_insert(
            key.as_str(),
            false,
            Pressure::EvictClean,
            retention,
            &inner.evictions,
            |_| (),
        );
        let (session, subject) = tokio::join!(store.read::<SessionRecord>(key.as_str()), async {
            match subject_key {
                Some(sk) if subject_needed => Some(store.read::<SubjectRecord>(sk).await),
                _ => None,
            }
        });
        let (value, rev) = session.inspect_err(|e| self.store_failed(e))?;
        let subject = subject.transpose().inspect_err(|e| self.store_failed(e))?;
        self.store_ok();
        if let (Some(sk), Some((value, rev))) = (subject_key, subject) {
            inner.subjects.with(sk, |slot| {
                if let Some(slot) = slot {
                    slot.merge_stored(value, rev);
                    slot.loaded = true;
                }
            });
        }
        let enqueue = inner.sessions.with(key.as_str(), |slot| {
            let Some(slot) = slot else { return false };
            slot.merge_stored(value, rev);
            slot.loaded = true;
            // Local decisions kept over an outage may be ahead of the store.
            if slot.dirty() && !slot.queued {
                slot.queued = true;
                return true;
            }
            false
        });
        if enqueue {
            lock(&inner.pending).push(key.as_str().to_string());
        }
        Ok(())
    }

    fn check_memory(
        &self,
        key: &SessionKey,
        token_iat: Option<i64>,
        idle: Duration,
        now_ms: i64,
    ) -> Result<SessionVerdict, SessionError> {
        let inner = &*self.inner;
        let subject = match key.subject_key() {
            None => None,
            Some(sk) => inner.subjects.with(sk, |slot| {
                slot.and_then(|s| {
                    s.last_access = Instant::now();
                    s.rec
                })
            }),
        };
        let decided = inner.sessions.with(key.as_str(), |slot| {
            slot.map(|slot| {
                slot.last_access = Instant::now();
                let d = decide(slot.rec.as_ref(), subject.as_ref(), token_iat, idle, now_ms);
                slot.rec = crate::rules::merge_opt(slot.rec, d.record);
                d.verdict
            })
        });
        if let Some(v) = decided {
            return Ok(v);
        }
        let d = decide(None, subject.as_ref(), token_iat, idle, now_ms);
        if d.record.is_none() {
            return Ok(d.verdict);
        }
        inner
            .sessions
            .with_or_insert(
                key.as_str(),
                true,
                Pressure::RetentionOnly,
                inner.record_ttl,
                &inner.evictions,
                |slot| {
                    let d = decide(slot.rec.as_ref(), subject.as_ref(), token_iat, idle, now_ms);
                    slot.rec = crate::rules::merge_opt(slot.rec, d.record);
                    d.verdict
                },
            )
            .map_err(SessionError::Capacity)
    }

    /// Log out one IdP session (`sid`): tokens of it issued at or before
    /// `now_ms` are refused from now on, on every replica.
    pub async fn revoke_sid(&self, iss: &str, sid: &str, now_ms: i64) -> Result<(), SessionError> {
        self.revoke_session(&SessionKey::for_token(iss, Some(sid), None, None), now_ms)
            .await
    }

    /// Log out every session of a subject: its tokens issued at or before
    /// `now_ms` are refused from now on, on every replica.
    ///
    /// Written to the store before it returns; `Err` means the logout was not
    /// recorded (answer 503 so the IdP retries).
    pub async fn revoke_sub(&self, iss: &str, sub: &str, now_ms: i64) -> Result<(), SessionError> {
        let key = SessionKey::subject(iss, sub);
        let delta = SubjectRecord { revoked_at: now_ms };
        self.write_through(&self.inner.subjects, &key, delta).await
    }

    /// End one session as revoked at `now_ms` (logout). Written to the store
    /// before it returns; `Err` means the logout was not recorded.
    pub async fn revoke_session(&self, key: &SessionKey, now_ms: i64) -> Result<(), SessionError> {
        // `seen: 0` joins as "no activity": the end is the only news.
        let delta = SessionRecord {
            seen: 0,
            end: Some(SessionEnd {
                at: now_ms,
                reason: EndReason::Revoked,
            }),
        };
        self.write_through(&self.inner.sessions, key.as_str(), delta)
            .await
    }

    /// Join `delta` into the record under `key`, in the store before this
    /// returns (compare-and-set), or in the map when the map is the store.
    async fn write_through<R: crate::rules::Mergeable>(
        &self,
        cache: &Cache<R>,
        key: &str,
        delta: R,
    ) -> Result<(), SessionError> {
        let inner = &*self.inner;
        match &inner.store {
            None => cache
                .with_or_insert(
                    key,
                    true,
                    Pressure::RetentionOnly,
                    inner.record_ttl,
                    &inner.evictions,
                    |slot| {
                        slot.last_access = Instant::now();
                        slot.rec = crate::rules::merge_opt(slot.rec, Some(delta));
                    },
                )
                .map_err(SessionError::Capacity),
            Some(store) => {
                self.require_connected(store)?;
                let (merged, rev) = store
                    .cas_write(key, None, delta)
                    .await
                    .inspect_err(|e| self.store_failed(e))?;
                self.store_ok();
                cache.with(key, |slot| {
                    if let Some(slot) = slot {
                        slot.merge_stored(Some(merged), rev);
                    }
                });
                Ok(())
            }
        }
    }

    /// Record a one-time id (DPoP proof `jti`, logout-token `jti`): `true`
    /// the first time `(namespace, id)` is claimed within `ttl`, `false` on a
    /// replay. `ttl` must be positive and at most `jti_max_ttl`; the NATS
    /// store remembers ids for `jti_max_ttl` (at least `ttl`: a replay is
    /// never accepted early). `Err` when the store is unreachable.
    pub async fn claim_once(&self, namespace: &str, id: &str, ttl: Duration) -> Result<bool, SessionError> {
        let inner = &*self.inner;
        if ttl.is_zero() || ttl > inner.jti_max_ttl {
            return Err(SessionError::InvalidTtl {
                ttl,
                max: inner.jti_max_ttl,
            });
        }
        let key = jti_key(namespace, id);
        match &inner.store {
            None => {
                let now = Instant::now();
                let mut map = lock(&inner.jtis);
                if let Some(exp) = map.get(&key) {
                    if *exp > now {
                        return Ok(false);
                    }
                }
                if map.len() >= inner.max_local_entries && !map.contains_key(&key) {
                    let before = map.len();
                    map.retain(|_, exp| *exp > now);
                    inner
                        .evictions
                        .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
                    if map.len() >= inner.max_local_entries {
                        return Err(SessionError::Capacity(inner.max_local_entries));
                    }
                }
                map.insert(key, now + ttl);
                Ok(true)
            }
            Some(store) => {
                self.require_connected(store)?;
                let first = store
                    .create_once(&store.jti, &key, Bytes::from_static(b"1"))
                    .await
                    .inspect_err(|e| self.store_failed(e))?;
                self.store_ok();
                Ok(first)
            }
        }
    }

    /// A 32-byte secret shared by all replicas (e.g. the DPoP nonce key):
    /// created at random by the first replica that asks, read by the others.
    /// The memory store makes one per process.
    pub async fn shared_secret(&self, name: &str) -> Result<[u8; 32], SessionError> {
        let inner = &*self.inner;
        if !valid_name(name) {
            return Err(SessionError::InvalidName(name.to_string()));
        }
        if let Some(s) = lock(&inner.secrets).get(name) {
            return Ok(*s);
        }
        let secret = match &inner.store {
            None => random_32()?,
            Some(store) => {
                self.require_connected(store)?;
                let key = format!("secret.{name}");
                let fresh = random_32()?;
                let created = store
                    .create_once(&store.secrets, &key, Bytes::copy_from_slice(&fresh))
                    .await
                    .inspect_err(|e| self.store_failed(e))?;
                if created {
                    fresh
                } else {
                    let value = store
                        .get_raw(&store.secrets, &key)
                        .await
                        .inspect_err(|e| self.store_failed(e))?;
                    let value = value.ok_or_else(|| SessionError::Unavailable(format!("{key} vanished")))?;
                    <[u8; 32]>::try_from(value.as_ref()).map_err(|_| SessionError::Corrupt {
                        key,
                        detail: format!("{} bytes, expected 32", value.len()),
                    })?
                }
            }
        };
        self.store_ok();
        // A racing caller in this process may have stored one first: keep
        // the first, which every caller then sees.
        Ok(*lock(&inner.secrets).entry(name.to_string()).or_insert(secret))
    }

    /// The local view of a session (diagnostics and tests); `None` when this
    /// replica does not hold it.
    pub fn local_record(&self, key: &SessionKey) -> Option<SessionRecord> {
        self.inner
            .sessions
            .with(key.as_str(), |slot| slot.filter(|s| s.loaded).and_then(|s| s.rec))
    }

    pub fn stats(&self) -> SessionStats {
        let inner = &*self.inner;
        let (reads, writes, conflicts) = match &inner.store {
            None => (0, 0, 0),
            Some(s) => (
                s.counters.reads.load(Ordering::Relaxed),
                s.counters.writes.load(Ordering::Relaxed),
                s.counters.conflicts.load(Ordering::Relaxed),
            ),
        };
        SessionStats {
            writes,
            reads,
            conflicts,
            local_entries: inner.sessions.len(),
            local_subjects: inner.subjects.len(),
            pending_writes: lock(&inner.pending).len(),
            evictions: inner.evictions.load(Ordering::Relaxed),
            healthy: self.is_healthy(),
        }
    }

    /// The store is reachable and its last operation succeeded.
    pub fn is_healthy(&self) -> bool {
        self.health() == Health::Up
    }

    /// Background work; spawn once per process, runs until `shutdown` turns
    /// true (or its sender is dropped):
    /// - applies the session bucket's updates from other replicas to the
    ///   local view (resuming after a disconnect from the last revision seen);
    /// - writes coalesced touches (at most one per session per
    ///   `write_interval`) and retries writes that failed;
    /// - probes the store while it is unhealthy;
    /// - evicts local entries idle beyond the longest idle timeout + margin.
    ///
    /// On shutdown it writes what is still pending (bounded).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        tokio::join!(self.watch_loop(shutdown.clone()), self.maintenance_loop(shutdown));
        if self.inner.store.is_some() {
            match tokio::time::timeout(SHUTDOWN_FLUSH, self.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "session writes lost at shutdown"),
                Err(_) => tracing::warn!("session writes still pending at shutdown"),
            }
        }
    }

    /// Write every pending local change now, ignoring `write_interval`.
    /// Returns how many sessions were written; `Err` if any write failed
    /// (those stay queued).
    pub async fn flush(&self) -> Result<usize, SessionError> {
        self.flush_pending(true).await
    }

    // ---- store health ----

    fn health(&self) -> Health {
        let inner = &*self.inner;
        let Some(store) = &inner.store else {
            return Health::Up;
        };
        let mut down = lock(&inner.down_since);
        if !store.connected() {
            inner.lost_connection.store(true, Ordering::Relaxed);
            down.get_or_insert_with(Instant::now);
        }
        match *down {
            None => Health::Up,
            Some(t) if t.elapsed() <= inner.stale_grace => Health::Degraded,
            Some(_) => Health::Down,
        }
    }

    fn store_failed(&self, e: &SessionError) {
        if matches!(e, SessionError::Unavailable(_)) {
            lock(&self.inner.down_since).get_or_insert_with(Instant::now);
        }
    }

    /// A store operation succeeded. After an outage with a disconnect, the
    /// whole local view is marked unloaded: each session is re-read (and
    /// merged with what was decided locally meanwhile) on its next check, so
    /// nothing another replica wrote while this one was cut off is missed.
    fn store_ok(&self) {
        let inner = &*self.inner;
        let Some(store) = &inner.store else { return };
        if !store.connected() {
            return;
        }
        let was_down = lock(&inner.down_since).take().is_some();
        if was_down && inner.lost_connection.swap(false, Ordering::Relaxed) {
            inner.sessions.for_each(|_, s| s.loaded = false);
            inner.subjects.for_each(|_, s| s.loaded = false);
            // The client's own resubscription replays the whole bucket when
            // nothing had arrived yet; resume from the last revision instead.
            inner.rewatch.notify_one();
            tracing::info!("session store reachable again; local view will be re-read");
        }
    }

    fn require_connected(&self, store: &NatsStore) -> Result<(), SessionError> {
        if store.connected() {
            Ok(())
        } else {
            self.health();
            Err(SessionError::Unavailable("not connected".into()))
        }
    }

    /// Unused local entries go after the longest idle timeout + margin
    /// (NATS), or after the record TTL (memory: the map is the store).
    fn evict_after(&self) -> Duration {
        let inner = &*self.inner;
        if inner.store.is_none() {
            return inner.record_ttl;
        }
        let max_idle = Duration::from_millis(inner.max_idle_ms.load(Ordering::Relaxed));
        max_idle
            .max(inner.idle_timeout)
            .saturating_add(MIN_EVICT_MARGIN.max(inner.write_interval.saturating_mul(2)))
    }

    // ---- writes ----

    /// Write one session's local view (compare-and-set, merged on conflict).
    /// `Ok(false)`: nothing to write. A slot not loaded (invalidated after an
    /// outage) is read first, so its local changes join the store's latest.
    async fn write_session(&self, key: &str) -> Result<bool, SessionError> {
        let inner = &*self.inner;
        let Some(store) = &inner.store else {
            return Ok(false);
        };
        let snapshot = inner.sessions.with(key, |slot| {
            let slot = slot?;
            if !slot.dirty() {
                return None;
            }
            slot.last_write = Some(Instant::now());
            let known = slot.loaded.then_some((slot.stored, slot.rev));
            Some((known, slot.rec?))
        });
        let Some((known, local)) = snapshot else {
            return Ok(false);
        };
        let result = store.cas_write(key, known, local).await;
        let (merged, rev) = match result {
            Ok(v) => v,
            Err(e) => {
                self.store_failed(&e);
                // Retried on the flusher's next tick, not a write interval later.
                inner.sessions.with(key, |slot| {
                    if let Some(s) = slot {
                        s.last_write = None;
                    }
                });
                self.requeue(key);
                return Err(e);
            }
        };
        self.store_ok();
        let still_dirty = inner.sessions.with(key, |slot| match slot {
            Some(slot) => {
                slot.merge_stored(Some(merged), rev);
                // The write's read (or the known revision) plus the watch
                // merged into the slot meanwhile make it current.
                slot.loaded = true;
                slot.dirty()
            }
            None => false,
        });
        if still_dirty {
            self.requeue(key);
        }
        Ok(true)
    }

    fn requeue(&self, key: &str) {
        let newly = self.inner.sessions.with(key, |slot| match slot {
            Some(s) if !s.queued => {
                s.queued = true;
                true
            }
            _ => false,
        });
        if newly {
            lock(&self.inner.pending).push(key.to_string());
        }
    }

    /// Write the queued sessions that are due (all of them with `force`).
    async fn flush_pending(&self, force: bool) -> Result<usize, SessionError> {
        let inner = &*self.inner;
        let Some(store) = &inner.store else { return Ok(0) };
        if !store.connected() {
            self.health();
            return if force && !lock(&inner.pending).is_empty() {
                Err(SessionError::Unavailable("not connected".into()))
            } else {
                Ok(0)
            };
        }
        let keys = std::mem::take(&mut *lock(&inner.pending));
        let mut later = Vec::new();
        let mut due = Vec::new();
        for key in keys {
            let state = inner.sessions.with(&key, |slot| match slot {
                None => None,
                Some(s) if !s.dirty() => {
                    s.queued = false;
                    None
                }
                Some(s) => Some(force || s.last_write.is_none_or(|t| t.elapsed() >= inner.write_interval)),
            });
            match state {
                None => {}
                Some(true) => due.push(key),
                Some(false) => later.push(key),
            }
        }
        lock(&inner.pending).extend(later);
        let mut written = 0;
        let mut failed = None;
        let mut tasks = tokio::task::JoinSet::new();
        for key in due {
            // Off the queue while written: a check that changes the session
            // meanwhile queues it again, and `write_session` requeues what
            // its write left dirty.
            inner.sessions.with(&key, |slot| {
                if let Some(s) = slot {
                    s.queued = false;
                }
            });
            let this = self.clone();
            tasks.spawn(async move { this.write_session(&key).await });
            if tasks.len() >= FLUSH_CONCURRENCY {
                if let Some(r) = tasks.join_next().await {
                    tally(r, &mut written, &mut failed);
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            tally(r, &mut written, &mut failed);
        }
        match failed {
            Some(e) if force => Err(e),
            _ => Ok(written),
        }
    }

    // ---- background loops ----

    async fn maintenance_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let inner = &*self.inner;
        let tick = (inner.write_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = wait_shutdown(&mut shutdown) => return,
                _ = ticker.tick() => {}
            }
            if let Some(store) = &inner.store {
                if self.health() != Health::Up && store.connected() && store.probe().await {
                    self.store_ok();
                }
                if let Err(e) = self.flush_pending(false).await {
                    tracing::warn!(error = %e, "session flush failed");
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
    }

    /// Evict local entries unused for [`Sessions::evict_after`].
    fn sweep(&self) {
        let inner = &*self.inner;
        let retention = self.evict_after();
        let keep_unwritten = inner.store.is_some();
        let n =
            inner.sessions.sweep(retention, keep_unwritten) + inner.subjects.sweep(retention, keep_unwritten);
        let now = Instant::now();
        let mut jtis = lock(&inner.jtis);
        let before = jtis.len();
        jtis.retain(|_, exp| *exp > now);
        let n = n + (before - jtis.len());
        inner.evictions.fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn watch_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let Some(store) = &self.inner.store else {
            wait_shutdown(&mut shutdown).await;
            return;
        };
        let mut watch = store.take_initial_watch();
        loop {
            let mut w = match watch.take() {
                Some(w) => w,
                None => {
                    let from = store.watched_rev.load(Ordering::Relaxed) + 1;
                    match store.kv.watch_all_from_revision(from).await {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::warn!(error = %e, "session watch failed; retrying");
                            tokio::select! {
                                _ = wait_shutdown(&mut shutdown) => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = wait_shutdown(&mut shutdown) => return,
                    _ = self.inner.rewatch.notified() => break,
                    item = w.next() => match item {
                        Some(Ok(entry)) => self.apply_remote(store, entry),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "session watch interrupted; resuming");
                            break;
                        }
                        None => break,
                    },
                }
            }
            tokio::select! {
                _ = wait_shutdown(&mut shutdown) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Merge a watched update into the local view when the key is held here
    /// (keys not held are read on first use instead). Deletes and purges are
    /// ignored: dropping a record must not revive a session a replica holds
    /// as ended.
    fn apply_remote(&self, store: &NatsStore, entry: async_nats::jetstream::kv::Entry) {
        store.watched_rev.fetch_max(entry.revision, Ordering::Relaxed);
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return;
        }
        let key = entry.key.as_str();
        if key.starts_with(SESSION_PREFIX) {
            match parse::<SessionRecord>(key, &entry.value) {
                Ok(rec) => self.inner.sessions.with(key, |slot| {
                    if let Some(slot) = slot {
                        slot.merge_stored(Some(rec), entry.revision);
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed session update"),
            }
        } else if key.starts_with(SUBJECT_PREFIX) {
            match parse::<SubjectRecord>(key, &entry.value) {
                Ok(rec) => self.inner.subjects.with(key, |slot| {
                    if let Some(slot) = slot {
                        slot.merge_stored(Some(rec), entry.revision);
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed subject update"),
            }
        }
    }
}

fn tally(
    r: Result<Result<bool, SessionError>, tokio::task::JoinError>,
    written: &mut usize,
    failed: &mut Option<SessionError>,
) {
    match r {
        Ok(Ok(true)) => *written += 1,
        Ok(Ok(false)) => {}
        Ok(Err(e)) => *failed = Some(e),
        Err(e) => *failed = Some(SessionError::Unavailable(format!("write task: {e}"))),
    }
}

/// Resolves when `rx` says shut down or its sender is gone.
async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
