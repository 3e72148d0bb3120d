//! Session state shared by gateway replicas: HIPAA automatic log-off (idle
//! timeout), logout / revocation, and one-time use of DPoP proof and
//! logout-token `jti`s. Shared state lives in NATS JetStream key-value
//! buckets; the memory store serves a single instance.
//!
//! ```text
//!  request ─► Sessions::check ─► local view (sharded map) ─► verdict
//!                  │ miss: read            ▲ watch (other replicas' writes)
//!                  ▼                       │
//!             NATS KV bucket ◄── CAS writes: ends at once, touches coalesced
//! ```
//!
//! # Data model
//!
//! - [`SessionKey`]: with a `sid` claim, `s.` + base64url(SHA-256(`iss`,
//!   "sid", `sid`)); without, `s.` + base64url(SHA-256(`iss`, "sub", `sub`,
//!   `client_id`)). Parts are length-prefixed before hashing (no separator
//!   tricks) and the key is a valid NATS KV key. The subject key
//!   [`SessionKey::subject`] is `u.` + hash(`iss`, `sub`). Claims never
//!   reach the store.
//! - Session record (JSON): `{"seen": <unix ms of last activity>, "end":
//!   null | {"at": <unix ms>, "reason": "idle" | "revoked"}}`
//!   ([`SessionRecord`]).
//! - Subject record (JSON): `{"revoked_at": <unix ms>}` ([`SubjectRecord`]).
//! - One-time ids: `j.` + hash(namespace, id) in `<bucket>-jti`
//!   (`max_age` = `jti_max_ttl`). Shared secrets: `secret.<name>` (32 raw
//!   bytes) in `<bucket>-secrets`, which has no `max_age` — a secret in the
//!   session bucket would expire with its `max_age` and replicas would end up
//!   with different secrets.
//!
//! # Rules of [`Sessions::check`] ([`decide`], a pure function)
//!
//! With `iat` the token's issue time (unknown counts as "before"):
//!
//! 1. The subject record says `revoked_at` and `iat <= revoked_at` → `Revoked`.
//! 2. The record has `end` and `iat <= end.at` → `Idle` or `Revoked` per
//!    `end.reason`: the session stays ended for tokens issued before it.
//! 3. The record has `end` and `iat > end.at` → a fresh login: if `seen <=
//!    end.at`, `seen = now` (the `end` stays, so old tokens stay refused) →
//!    `Active`; otherwise rules 5–6 apply to the fresh session.
//! 4. No record → start (`seen = now`) → `Active`.
//! 5. `now - seen > idle` → `end = {at: now, reason: idle}`, written at once
//!    → `Idle`.
//! 6. Otherwise touch (`seen = now`, coalesced) → `Active`.
//!
//! `idle` is passed per call: a route may have a shorter idle timeout than
//! the global one. Comparisons use `iat * 1000 <= at`, so a token issued in
//! the same second as an end is refused.
//!
//! # Consistency
//!
//! Records only grow under a join ([`SessionRecord::merge`]: `seen` = max,
//! `end` = the later end, `revoked` winning ties; [`SubjectRecord::merge`]:
//! max). Every write is a compare-and-set (`update(key, value, revision)`)
//! of the local view joined with the store value at that revision; on a
//! conflict the writer re-reads, re-joins and retries. So a write can never
//! remove an end another replica wrote (no resurrection), and replicas
//! converge whatever order they see writes in.
//!
//! - Ends (idle end, revocations) are written at once; touches at most once
//!   per session per `write_interval` (default min(idle / 10, 30 s)) by the
//!   background flusher. A replica may therefore see another's activity up
//!   to `write_interval` + propagation late, and end a session at most that
//!   much early; once ended, it stays ended for tokens issued before.
//! - Each replica watches the session bucket (from the revision current at
//!   [`Sessions::connect`]; every replica receives every write, i.e. about
//!   active sessions / `write_interval` messages per second) and merges
//!   updates into the sessions and subjects it holds, so a logout or an end written by one replica refuses the
//!   session on the others within the propagation delay (milliseconds on a
//!   healthy cluster), and activity on one keeps the others' view alive.
//! - A session not held locally is read from the store before it is decided
//!   (a replica never starts a session another one ended). A placeholder goes
//!   into the local map before the read, so a watch update that races the
//!   read is merged rather than lost.
//! - Revocations ([`Sessions::revoke_sid`], [`Sessions::revoke_sub`],
//!   [`Sessions::revoke_session`]) and [`Sessions::claim_once`] go to the
//!   store before they return; when it is unreachable they fail, so the
//!   caller answers 503 and the IdP (or client) retries.
//! - Records expire from the bucket `record_ttl` after their last write
//!   (default idle × 4, at least 24 h, at most 30 days). It must exceed the longest access-token
//!   lifetime, or an ended session could start again for an old token.
//!
//! # Memory bounds
//!
//! At most `max_local_entries` sessions and, separately, as many subjects
//! (and, for the memory store, one-time ids) are held (the map is split into
//! up to 16 shards, which rounds the cap up by less than 16). With NATS,
//! local entries unused for the longest idle timeout seen + max(60 s, 2 ×
//! `write_interval`) are evicted every 10 s, and a full map drops its least
//! recently used entries that hold no unwritten change (the store has them)
//! down to 7/8 of the cap. Entries with unwritten changes stay until written,
//! so during a store outage the map can exceed the cap by the sessions
//! decided locally meanwhile.
//! With the memory store the map *is* the store: entries go only `record_ttl`
//! after their last use, and a full map refuses new sessions with
//! [`SessionError::Capacity`] (fail closed) rather than forget an end.
//!
//! # When the store is down
//!
//! Health is "down" from the first failed store operation or observed
//! disconnect until the next successful operation (`run` probes every tick).
//!
//! - For at most `stale_grace` (default 30 s), sessions already held locally
//!   are checked against the local view: ends and touches decided locally
//!   apply locally at once and are queued for writing.
//! - After `stale_grace`, every check fails with
//!   [`SessionError::Unavailable`]; so do, at once, checks of sessions not
//!   held locally, `claim_once`, revocations and `shared_secret`: the
//!   gateway fails closed with 503 `session_store_unavailable`.
//! - When the store is back, queued writes are flushed (compare-and-set,
//!   merged with whatever other replicas wrote meanwhile), the watch resumes
//!   from the last revision it applied, and — if the connection was lost —
//!   every local entry is marked unloaded: its next check re-reads the store
//!   and joins it with what was decided locally. Nothing written elsewhere
//!   during the outage is missed, and nothing decided here is lost.
//!
//! [`is_healthy`](Sessions::is_healthy) and [`stats`](Sessions::stats)
//! expose this state for readiness and metrics.
#![forbid(unsafe_code)]

mod cache;
mod config;
mod error;
mod key;
mod rules;
mod sessions;
mod store;

pub use config::{
    NatsStoreConfig, NatsTls, SessionsConfig, StoreConfig, DEFAULT_BUCKET, DEFAULT_JTI_MAX_TTL,
    DEFAULT_MAX_LOCAL_ENTRIES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_STALE_GRACE, MAX_DEFAULT_RECORD_TTL, MAX_TTL,
    MIN_DEFAULT_RECORD_TTL,
};
pub use error::SessionError;
pub use key::SessionKey;
pub use rules::{
    decide, issued_at_or_before, Decision, EndReason, SessionEnd, SessionRecord, SessionVerdict,
    SubjectRecord, WriteKind,
};
pub use sessions::{SessionStats, Sessions};
