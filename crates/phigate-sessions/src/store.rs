//! The NATS JetStream key-value store: connection, buckets, reads and
//! compare-and-set writes that merge on conflict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::cache::lock;
use crate::config::NatsStoreConfig;
use crate::rules::Mergeable;
use crate::SessionError;

/// Compare-and-set attempts before a write gives up (each conflict means
/// another replica wrote the same key in between; a handful is plenty).
const MAX_CAS_ATTEMPTS: usize = 8;

#[derive(Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub conflicts: AtomicU64,
}

pub(crate) struct NatsStore {
    client: async_nats::Client,
    /// Sessions (`s.`) and subjects (`u.`).
    pub kv: kv::Store,
    /// One-time ids (`j.`), `max_age` = `jti_max_ttl`.
    pub jti: kv::Store,
    /// Shared secrets (`secret.<name>`), no `max_age`.
    pub secrets: kv::Store,
    /// The watch created at connect time, from the revision after the last
    /// one that existed then; taken by `run`.
    pub initial_watch: Mutex<Option<kv::Watch>>,
    /// The newest revision the watcher applied (resume point).
    pub watched_rev: AtomicU64,
    pub counters: Counters,
}

fn unavailable(what: impl std::fmt::Display) -> SessionError {
    SessionError::Unavailable(what.to_string())
}

impl NatsStore {
    pub async fn connect(
        cfg: &NatsStoreConfig,
        request_timeout: Duration,
        record_ttl: Duration,
        jti_max_ttl: Duration,
    ) -> Result<NatsStore, SessionError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("phigate-sessions")
            .connection_timeout(cfg.connect_timeout)
            .request_timeout(Some(request_timeout));
        if let Some(creds) = &cfg.credentials {
            opts = opts
                .credentials_file(creds)
                .await
                .map_err(|e| SessionError::Config(format!("{}: {e}", creds.display())))?;
        }
        if let Some(tls) = &cfg.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca {
                opts = opts.add_root_certificates(ca.clone());
            }
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    opts = opts.add_client_certificate(cert.clone(), key.clone());
                }
                (None, None) => {}
                _ => return Err(SessionError::Config("tls: cert and key go together".into())),
            }
        }
        let servers: Vec<&str> = cfg
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = opts
            .connect(servers)
            .await
            .map_err(|e| unavailable(format!("connect {}: {e}", cfg.url)))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(request_timeout);

        let kv = open_bucket(&js, &cfg.bucket, record_ttl, cfg.replicas, None).await?;
        let jti = open_bucket(
            &js,
            &format!("{}-jti", cfg.bucket),
            jti_max_ttl,
            cfg.replicas,
            Some(jti_max_ttl),
        )
        .await?;
        let secrets = open_bucket(
            &js,
            &format!("{}-secrets", cfg.bucket),
            Duration::ZERO,
            cfg.replicas,
            None,
        )
        .await?;

        // Watch from the revision after the newest one that exists now: every
        // read made after `connect` returns sees at least that state, and the
        // watch delivers everything later, so no update falls in between.
        let last = kv.stream.cached_info().state.last_sequence;
        let watch = kv
            .watch_all_from_revision(last + 1)
            .await
            .map_err(|e| unavailable(format!("watch bucket {}: {e}", cfg.bucket)))?;
        Ok(NatsStore {
            client,
            kv,
            jti,
            secrets,
            initial_watch: Mutex::new(Some(watch)),
            watched_rev: AtomicU64::new(last),
            counters: Counters::default(),
        })
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// A JetStream round trip (the session bucket's stream info).
    pub async fn probe(&self) -> bool {
        self.kv.stream.get_info().await.is_ok()
    }

    pub fn take_initial_watch(&self) -> Option<kv::Watch> {
        lock(&self.initial_watch).take()
    }

    /// Read `key`: its value (None: no value, deleted or purged) and
    /// revision (0: never written or expired).
    pub async fn read<R: Mergeable>(&self, key: &str) -> Result<(Option<R>, u64), SessionError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        match self.kv.entry(key).await {
            Ok(None) => Ok((None, 0)),
            Ok(Some(e)) => match e.operation {
                kv::Operation::Put => Ok((Some(parse(key, &e.value)?), e.revision)),
                kv::Operation::Delete | kv::Operation::Purge => Ok((None, e.revision)),
            },
            Err(e) => Err(unavailable(format!("read: {e}"))),
        }
    }

    /// Write `local` joined with the store's value, compare-and-set against
    /// the revision the join was made with; on a conflict re-read, re-join and
    /// retry. `known` is the store value and revision already merged into
    /// `local` (None: read first). Returns the value now stored and its
    /// revision. Never writes less than the store had: the join keeps every
    /// end and the latest activity, so no write can resurrect a session.
    pub async fn cas_write<R: Mergeable>(
        &self,
        key: &str,
        known: Option<(Option<R>, u64)>,
        local: R,
    ) -> Result<(R, u64), SessionError> {
        let (mut stored, mut rev) = match known {
            Some(k) => k,
            None => self.read::<R>(key).await?,
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let merged = match stored {
                Some(s) => s.join(local),
                None => local,
            };
            if stored == Some(merged) {
                return Ok((merged, rev));
            }
            let value = serde_json::to_vec(&merged).map_err(|e| SessionError::Corrupt {
                key: key.to_string(),
                detail: e.to_string(),
            })?;
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            match self.kv.update(key, Bytes::from(value), rev).await {
                Ok(new_rev) => return Ok((merged, new_rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    (stored, rev) = self.read::<R>(key).await?;
                }
                Err(e) => return Err(unavailable(format!("write: {e}"))),
            }
        }
        Err(unavailable(format!(
            "write {key}: still conflicting after {MAX_CAS_ATTEMPTS} attempts"
        )))
    }

    /// `true` when `key` was created now, `false` when it already existed.
    pub async fn create_once(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
    ) -> Result<bool, SessionError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        match store.create(key, value).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(format!("create: {e}"))),
        }
    }

    /// The value under `key` in `store` (a Put), if any.
    pub async fn get_raw(&self, store: &kv::Store, key: &str) -> Result<Option<Bytes>, SessionError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        store
            .get(key)
            .await
            .map_err(|e| unavailable(format!("read: {e}")))
    }
}

pub(crate) fn parse<R: Mergeable>(key: &str, value: &[u8]) -> Result<R, SessionError> {
    serde_json::from_slice(value).map_err(|e| SessionError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// Open `bucket`, creating it (history 1, file storage, `max_age`) when it
/// does not exist. With `min_age`, an existing bucket whose `max_age` is
/// shorter is refused: it would forget one-time ids too early.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
    min_age: Option<Duration>,
) -> Result<kv::Store, SessionError> {
    // The bucket's stream is created directly (the configuration
    // `create_key_value` would use) rather than through `create_key_value`,
    // which first queries the account info in a shape nats-server 2.9 does
    // not send.
    let store = match js.get_key_value(bucket).await {
        Ok(store) => store,
        Err(_) => {
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("phigate session state".to_string()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: true,
                deny_purge: false,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("create bucket {bucket}: {e}")))?;
            js.get_key_value(bucket)
                .await
                .map_err(|e| unavailable(format!("open bucket {bucket}: {e}")))?
        }
    };
    let have = store.stream.cached_info().config.max_age;
    if let Some(min) = min_age {
        if !have.is_zero() && have < min {
            return Err(SessionError::Config(format!(
                "bucket {bucket} keeps entries for {have:?}, less than the configured {min:?}"
            )));
        }
    } else if have != max_age {
        tracing::warn!(
            bucket,
            existing = ?have,
            configured = ?max_age,
            "session bucket exists with a different max_age; keeping the existing one"
        );
    }
    Ok(store)
}
