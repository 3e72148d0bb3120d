//! The local view: a sharded map from store key to [`Slot`]. Every access is
//! a short synchronous critical section (no await under a lock).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rules::{merge_opt, Mergeable};

/// Lock without panicking on poison: the maps hold plain data that every
/// critical section leaves consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One key's local state.
#[derive(Debug, Clone)]
pub(crate) struct Slot<R> {
    /// The local view: the join of everything read, watched and decided here.
    pub rec: Option<R>,
    /// The join of the store values seen (at `rev`). `rec != stored` means
    /// the store lacks something decided here (a touch or an end).
    pub stored: Option<R>,
    /// The newest store revision merged (0: none; the key had no value).
    pub rev: u64,
    /// The store value has been read since the slot was created or
    /// invalidated; until then the slot cannot answer a check.
    pub loaded: bool,
    /// In the pending-write queue (or being written by the flusher).
    pub queued: bool,
    pub last_write: Option<Instant>,
    pub last_access: Instant,
}

impl<R: Mergeable> Slot<R> {
    fn new(now: Instant, loaded: bool) -> Slot<R> {
        Slot {
            rec: None,
            stored: None,
            rev: 0,
            loaded,
            queued: false,
            last_write: None,
            last_access: now,
        }
    }

    pub fn dirty(&self) -> bool {
        self.rec != self.stored
    }

    /// Merge a store value at `rev` into both views.
    pub fn merge_stored(&mut self, value: Option<R>, rev: u64) {
        self.stored = merge_opt(self.stored, value);
        self.rec = merge_opt(self.rec, value);
        self.rev = self.rev.max(rev);
    }
}

/// What to do when a shard is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pressure {
    /// The store is authoritative: drop the least recently used slots that
    /// hold nothing unwritten, down to seven eighths of the cap.
    EvictClean,
    /// The map is the store: only slots beyond `retention` may go; else the
    /// insert fails (fail closed).
    RetentionOnly,
}

type Shard<R> = Mutex<HashMap<String, Slot<R>>>;

pub(crate) struct Cache<R> {
    shards: Box<[Shard<R>]>,
    shard_cap: usize,
}

impl<R: Mergeable> Cache<R> {
    /// `cap` entries in at most 16 shards of at least 4096 entries each, so a
    /// small cap is not split into shards too small to be useful.
    pub fn new(cap: usize) -> Cache<R> {
        let n = (cap / 4096).clamp(1, 16);
        let shard_cap = cap.div_ceil(n).max(1);
        let shards = (0..n).map(|_| Mutex::new(HashMap::new())).collect();
        Cache { shards, shard_cap }
    }

    fn shard(&self, key: &str) -> &Shard<R> {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let i = usize::try_from(h % self.shards.len() as u64).unwrap_or(0);
        &self.shards[i]
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Run `f` on the slot of `key`, if any.
    pub fn with<T>(&self, key: &str, f: impl FnOnce(Option<&mut Slot<R>>) -> T) -> T {
        let mut shard = lock(self.shard(key));
        f(shard.get_mut(key))
    }

    /// Run `f` on the slot of `key`, creating it (`loaded` as given) when
    /// absent. `Err(cap)` when the shard is full and nothing may go.
    pub fn with_or_insert<T>(
        &self,
        key: &str,
        loaded: bool,
        pressure: Pressure,
        retention: Duration,
        evictions: &std::sync::atomic::AtomicU64,
        f: impl FnOnce(&mut Slot<R>) -> T,
    ) -> Result<T, usize> {
        let now = Instant::now();
        let mut shard = lock(self.shard(key));
        if !shard.contains_key(key) && shard.len() >= self.shard_cap {
            let before = shard.len();
            make_room(&mut shard, self.shard_cap, pressure, retention, now);
            evictions.fetch_add(
                (before - shard.len()) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if shard.len() >= self.shard_cap && pressure == Pressure::RetentionOnly {
                return Err(self.shard_cap * self.shards.len());
            }
        }
        let slot = shard
            .entry(key.to_string())
            .or_insert_with(|| Slot::new(now, loaded));
        Ok(f(slot))
    }

    /// Drop slots not accessed for `retention` (and, with `keep_unwritten`,
    /// holding nothing queued or unwritten). Returns how many went.
    pub fn sweep(&self, retention: Duration, keep_unwritten: bool) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let before = shard.len();
            shard.retain(|_, slot| {
                now.saturating_duration_since(slot.last_access) <= retention
                    || (keep_unwritten && (slot.queued || slot.dirty()))
            });
            dropped += before - shard.len();
        }
        dropped
    }

    /// Apply `f` to every slot (e.g. invalidate after an outage).
    pub fn for_each(&self, mut f: impl FnMut(&str, &mut Slot<R>)) {
        for s in self.shards.iter() {
            for (k, slot) in lock(s).iter_mut() {
                f(k, slot);
            }
        }
    }
}

fn make_room<R: Mergeable>(
    shard: &mut HashMap<String, Slot<R>>,
    shard_cap: usize,
    pressure: Pressure,
    retention: Duration,
    now: Instant,
) {
    shard.retain(|_, slot| {
        now.saturating_duration_since(slot.last_access) <= retention
            || (pressure == Pressure::EvictClean && (slot.queued || slot.dirty()))
    });
    if pressure == Pressure::RetentionOnly || shard.len() < shard_cap {
        return;
    }
    // Least recently used clean slots, down to seven eighths of the cap, so
    // the selection is amortised over many inserts.
    let mut clean: Vec<(Instant, String)> = shard
        .iter()
        .filter(|(_, s)| !s.queued && !s.dirty())
        .map(|(k, s)| (s.last_access, k.clone()))
        .collect();
    let target = shard.len().saturating_sub(shard_cap * 7 / 8).max(1);
    if clean.len() > target {
        clean.select_nth_unstable_by_key(target, |(t, _)| *t);
        clean.truncate(target);
    }
    for (_, k) in clean {
        shard.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SessionRecord;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn clean_slots_make_room_for_new_ones() {
        let c: Cache<SessionRecord> = Cache::new(16);
        let ev = AtomicU64::new(0);
        for i in 0..100 {
            let r = c.with_or_insert(
                &format!("s.{i}"),
                true,
                Pressure::EvictClean,
                Duration::from_secs(3600),
                &ev,
                |_| (),
            );
            assert!(r.is_ok());
            assert!(c.len() <= 16);
        }
        assert!(ev.load(std::sync::atomic::Ordering::Relaxed) >= 84);
    }

    #[test]
    fn the_only_copy_is_never_dropped_early() {
        let c: Cache<SessionRecord> = Cache::new(4);
        let ev = AtomicU64::new(0);
        for i in 0..4 {
            c.with_or_insert(
                &format!("s.{i}"),
                true,
                Pressure::RetentionOnly,
                Duration::from_secs(3600),
                &ev,
                |_| (),
            )
            .unwrap();
        }
        let full = c.with_or_insert(
            "s.x",
            true,
            Pressure::RetentionOnly,
            Duration::from_secs(3600),
            &ev,
            |_| (),
        );
        assert_eq!(full.err(), Some(4));
        // Existing keys stay reachable at the cap.
        assert!(c
            .with_or_insert(
                "s.1",
                true,
                Pressure::RetentionOnly,
                Duration::from_secs(3600),
                &ev,
                |_| ()
            )
            .is_ok());
        // Past retention, they may go.
        assert!(c
            .with_or_insert("s.y", true, Pressure::RetentionOnly, Duration::ZERO, &ev, |_| ())
            .is_ok());
    }
}
