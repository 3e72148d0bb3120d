//! The session decision as a pure function over plain data: no clock, no
//! store, no async. [`decide`] applies rules 1–6 of the crate docs to one
//! session record; [`SessionRecord::merge`] and [`SubjectRecord::merge`] are
//! the joins every replica uses to combine its view with the store's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// Automatic log-off: no activity for longer than the idle timeout.
    Idle,
    /// Logout (back-channel logout, admin revocation).
    Revoked,
}

/// The moment a session ended; tokens issued at or before it stay refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// Unix milliseconds.
    pub at: i64,
    pub reason: EndReason,
}

/// A session record as stored (JSON) under a [`crate::SessionKey`]:
/// `{"seen": <unix ms>, "end": null | {"at": <unix ms>, "reason": "idle"|"revoked"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Unix milliseconds of the last activity.
    pub seen: i64,
    #[serde(default)]
    pub end: Option<SessionEnd>,
}

/// A subject record as stored (JSON) under [`crate::SessionKey::subject`]:
/// `{"revoked_at": <unix ms>}`: every token of the subject issued at or
/// before `revoked_at` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRecord {
    pub revoked_at: i64,
}

/// The outcome of a session check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVerdict {
    /// The session is alive; the request may proceed.
    Active,
    /// The session ended by automatic log-off (idle timeout).
    Idle,
    /// The session or its subject was logged out / revoked.
    Revoked,
}

impl SessionVerdict {
    /// A stable snake_case name for audit records, metric labels and deny
    /// bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionVerdict::Active => "active",
            SessionVerdict::Idle => "session_idle",
            SessionVerdict::Revoked => "session_revoked",
        }
    }
}

/// How soon a changed record must reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Nothing changed.
    None,
    /// A touch or a start: coalesced, at most one write per `write_interval`.
    Coalesced,
    /// An end: written at once.
    Immediate,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: SessionVerdict,
    /// The record after the decision (the input record when nothing changed,
    /// `None` only when there was no record and none was started).
    pub record: Option<SessionRecord>,
    pub write: WriteKind,
}

impl SessionEnd {
    /// The later end wins; at the same instant `revoked` beats `idle`.
    pub fn merge(self, other: SessionEnd) -> SessionEnd {
        if (other.at, other.reason) > (self.at, self.reason) {
            other
        } else {
            self
        }
    }
}

impl SessionRecord {
    /// The join of two views of one session: `seen` is the latest activity,
    /// `end` the latest end. Commutative, associative and idempotent, so
    /// replicas converge whatever order they see writes in, and an end is
    /// never lost by merging it with a touch.
    pub fn merge(self, other: SessionRecord) -> SessionRecord {
        SessionRecord {
            seen: self.seen.max(other.seen),
            end: match (self.end, other.end) {
                (Some(a), Some(b)) => Some(a.merge(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

impl SubjectRecord {
    /// The later revocation wins.
    pub fn merge(self, other: SubjectRecord) -> SubjectRecord {
        SubjectRecord {
            revoked_at: self.revoked_at.max(other.revoked_at),
        }
    }
}

/// Join two optional views (absent = nothing known).
pub(crate) fn merge_opt<R: Mergeable>(a: Option<R>, b: Option<R>) -> Option<R> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.join(b)),
        (a, b) => a.or(b),
    }
}

/// A record type with a join (see [`SessionRecord::merge`]).
pub(crate) trait Mergeable: Copy + PartialEq + Serialize + for<'de> Deserialize<'de> {
    fn join(self, other: Self) -> Self;
}

impl Mergeable for SessionRecord {
    fn join(self, other: Self) -> Self {
        self.merge(other)
    }
}

impl Mergeable for SubjectRecord {
    fn join(self, other: Self) -> Self {
        self.merge(other)
    }
}

/// Whether a token with `iat` (unix seconds; `None` = unknown) was issued at
/// or before `at_ms`. Unknown counts as "before": it cannot prove otherwise.
/// Second granularity makes a token issued in the same second as an end
/// count as before it (refused), never the other way round.
pub fn issued_at_or_before(iat: Option<i64>, at_ms: i64) -> bool {
    match iat {
        None => true,
        Some(s) => s.saturating_mul(1000) <= at_ms,
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Rules 1–6 of the crate docs, in order.
///
/// - `record`: the session record (local view merged with the store), `None`
///   when the store has none.
/// - `subject`: the subject's revocation record, if any.
/// - `token_iat`: the token's `iat` in unix seconds.
/// - `idle`: the idle timeout that applies to this request.
/// - `now_ms`: unix milliseconds.
pub fn decide(
    record: Option<&SessionRecord>,
    subject: Option<&SubjectRecord>,
    token_iat: Option<i64>,
    idle: Duration,
    now_ms: i64,
) -> Decision {
    let unchanged = |verdict| Decision {
        verdict,
        record: record.copied(),
        write: WriteKind::None,
    };
    // 1. The subject was revoked after this token was issued.
    if let Some(s) = subject {
        if issued_at_or_before(token_iat, s.revoked_at) {
            return unchanged(SessionVerdict::Revoked);
        }
    }
    // 4. No record: start.
    let Some(rec) = record.copied() else {
        return Decision {
            verdict: SessionVerdict::Active,
            record: Some(SessionRecord {
                seen: now_ms,
                end: None,
            }),
            write: WriteKind::Coalesced,
        };
    };
    if let Some(end) = rec.end {
        // 2. The token predates the end: the session stays ended for it.
        if issued_at_or_before(token_iat, end.at) {
            return unchanged(match end.reason {
                EndReason::Idle => SessionVerdict::Idle,
                EndReason::Revoked => SessionVerdict::Revoked,
            });
        }
        // 3. A token issued after the end: a fresh login. Its activity
        // starts now; `end` stays so older tokens remain refused.
        if rec.seen <= end.at {
            return Decision {
                verdict: SessionVerdict::Active,
                record: Some(SessionRecord {
                    seen: rec.seen.max(now_ms),
                    end: rec.end,
                }),
                write: WriteKind::Coalesced,
            };
        }
        // The fresh session has been seen since: rules 5 and 6 apply to it.
    }
    // 5. Idle for longer than the timeout: end it now.
    if now_ms.saturating_sub(rec.seen) > duration_ms(idle) {
        let end = SessionEnd {
            at: now_ms,
            reason: EndReason::Idle,
        };
        let merged = rec.merge(SessionRecord {
            seen: rec.seen,
            end: Some(end),
        });
        // A clock behind an earlier end (skew between replicas) leaves the
        // later end in place; the verdict follows the record.
        let verdict = match merged.end {
            Some(SessionEnd {
                reason: EndReason::Revoked,
                ..
            }) => SessionVerdict::Revoked,
            _ => SessionVerdict::Idle,
        };
        return Decision {
            verdict,
            record: Some(merged),
            write: if merged == rec {
                WriteKind::None
            } else {
                WriteKind::Immediate
            },
        };
    }
    // 6. Active: touch.
    if now_ms > rec.seen {
        Decision {
            verdict: SessionVerdict::Active,
            record: Some(SessionRecord {
                seen: now_ms,
                end: rec.end,
            }),
            write: WriteKind::Coalesced,
        }
    } else {
        unchanged(SessionVerdict::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(900);
    const T: i64 = 1_700_000_000_000; // unix ms

    fn rec(seen: i64) -> SessionRecord {
        SessionRecord { seen, end: None }
    }

    fn ended(seen: i64, at: i64, reason: EndReason) -> SessionRecord {
        SessionRecord {
            seen,
            end: Some(SessionEnd { at, reason }),
        }
    }

    fn secs(ms: i64) -> Option<i64> {
        Some(ms / 1000)
    }

    struct Case {
        name: &'static str,
        record: Option<SessionRecord>,
        subject: Option<SubjectRecord>,
        iat: Option<i64>,
        now: i64,
        verdict: SessionVerdict,
        record_after: Option<SessionRecord>,
        write: WriteKind,
    }

    #[test]
    fn decision_table() {
        let idle_ms = duration_ms(IDLE);
        let cases = [
            Case {
                name: "1: subject revoked after the token was issued",
                record: Some(rec(T)),
                subject: Some(SubjectRecord { revoked_at: T + 10 }),
                iat: secs(T - 60_000),
                now: T + 20,
                verdict: SessionVerdict::Revoked,
                record_after: Some(rec(T)),
                write: WriteKind::None,
            },
            Case {
                name: "1: subject revoked, token without iat",
                record: None,
                subject: Some(SubjectRecord { revoked_at: T }),
                iat: None,
                now: T + 20,
                verdict: SessionVerdict::Revoked,
                record_after: None,
                write: WriteKind::None,
            },
            Case {
                name: "1: token issued in the same second as the revocation is refused",
                record: None,
                subject: Some(SubjectRecord { revoked_at: T + 999 }),
                iat: secs(T),
                now: T + 2_000,
                verdict: SessionVerdict::Revoked,
                record_after: None,
                write: WriteKind::None,
            },
            Case {
                name: "1: token issued after the subject revocation starts a session",
                record: None,
                subject: Some(SubjectRecord { revoked_at: T }),
                iat: secs(T + 1_000),
                now: T + 2_000,
                verdict: SessionVerdict::Active,
                record_after: Some(rec(T + 2_000)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "2: idle-ended session refuses a token issued before the end",
                record: Some(ended(T, T + idle_ms + 1, EndReason::Idle)),
                subject: None,
                iat: secs(T - 1_000),
                now: T + idle_ms + 5_000,
                verdict: SessionVerdict::Idle,
                record_after: Some(ended(T, T + idle_ms + 1, EndReason::Idle)),
                write: WriteKind::None,
            },
            Case {
                name: "2: revoked session refuses a token issued before the revocation",
                record: Some(ended(T, T + 1_000, EndReason::Revoked)),
                subject: None,
                iat: secs(T),
                now: T + 2_000,
                verdict: SessionVerdict::Revoked,
                record_after: Some(ended(T, T + 1_000, EndReason::Revoked)),
                write: WriteKind::None,
            },
            Case {
                name: "2: ended session refuses a token without iat",
                record: Some(ended(T, T + 1_000, EndReason::Revoked)),
                subject: None,
                iat: None,
                now: T + 2_000,
                verdict: SessionVerdict::Revoked,
                record_after: Some(ended(T, T + 1_000, EndReason::Revoked)),
                write: WriteKind::None,
            },
            Case {
                name: "3: a token issued after the end starts a fresh session, keeping the end",
                record: Some(ended(T, T + 1_000, EndReason::Revoked)),
                subject: None,
                iat: secs(T + 5_000),
                now: T + 6_000,
                verdict: SessionVerdict::Active,
                record_after: Some(ended(T + 6_000, T + 1_000, EndReason::Revoked)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "3: the fresh session is subject to the idle rule",
                record: Some(ended(T + 6_000, T + 1_000, EndReason::Revoked)),
                subject: None,
                iat: secs(T + 5_000),
                now: T + 6_000 + idle_ms + 1,
                verdict: SessionVerdict::Idle,
                record_after: Some(ended(T + 6_000, T + 6_000 + idle_ms + 1, EndReason::Idle)),
                write: WriteKind::Immediate,
            },
            Case {
                name: "3: the fresh session is touched",
                record: Some(ended(T + 6_000, T + 1_000, EndReason::Idle)),
                subject: None,
                iat: secs(T + 5_000),
                now: T + 7_000,
                verdict: SessionVerdict::Active,
                record_after: Some(ended(T + 7_000, T + 1_000, EndReason::Idle)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "4: no record starts a session",
                record: None,
                subject: None,
                iat: secs(T),
                now: T + 10,
                verdict: SessionVerdict::Active,
                record_after: Some(rec(T + 10)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "5: idle for longer than the timeout ends it at once",
                record: Some(rec(T)),
                subject: None,
                iat: secs(T),
                now: T + idle_ms + 1,
                verdict: SessionVerdict::Idle,
                record_after: Some(ended(T, T + idle_ms + 1, EndReason::Idle)),
                write: WriteKind::Immediate,
            },
            Case {
                name: "6: idle for exactly the timeout is still active",
                record: Some(rec(T)),
                subject: None,
                iat: secs(T),
                now: T + idle_ms,
                verdict: SessionVerdict::Active,
                record_after: Some(rec(T + idle_ms)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "6: activity touches seen",
                record: Some(rec(T)),
                subject: None,
                iat: secs(T),
                now: T + 1_000,
                verdict: SessionVerdict::Active,
                record_after: Some(rec(T + 1_000)),
                write: WriteKind::Coalesced,
            },
            Case {
                name: "6: a clock behind seen never moves seen back",
                record: Some(rec(T + 5_000)),
                subject: None,
                iat: secs(T),
                now: T + 1_000,
                verdict: SessionVerdict::Active,
                record_after: Some(rec(T + 5_000)),
                write: WriteKind::None,
            },
        ];
        for c in cases {
            let d = decide(c.record.as_ref(), c.subject.as_ref(), c.iat, IDLE, c.now);
            assert_eq!(d.verdict, c.verdict, "{}", c.name);
            assert_eq!(d.record, c.record_after, "{}", c.name);
            assert_eq!(d.write, c.write, "{}", c.name);
        }
    }

    #[test]
    fn shorter_route_idle_timeout_applies_per_call() {
        let r = rec(T);
        let d = decide(Some(&r), None, secs(T), Duration::from_secs(60), T + 61_000);
        assert_eq!(d.verdict, SessionVerdict::Idle);
        let d = decide(Some(&r), None, secs(T), IDLE, T + 61_000);
        assert_eq!(d.verdict, SessionVerdict::Active);
    }

    #[test]
    fn merge_keeps_the_end_and_the_latest_activity() {
        let ended_a = ended(T, T + 100, EndReason::Idle);
        let touched_b = rec(T + 50);
        let m = ended_a.merge(touched_b);
        assert_eq!(m, ended(T + 50, T + 100, EndReason::Idle));
        assert_eq!(touched_b.merge(ended_a), m, "commutative");
        assert_eq!(m.merge(m), m, "idempotent");
        // An old token stays refused after the merge.
        let d = decide(Some(&m), None, secs(T), IDLE, T + 200);
        assert_eq!(d.verdict, SessionVerdict::Idle);
    }

    #[test]
    fn merge_prefers_the_later_end_and_revoked_on_ties() {
        let a = SessionEnd {
            at: T,
            reason: EndReason::Revoked,
        };
        let b = SessionEnd {
            at: T + 1,
            reason: EndReason::Idle,
        };
        assert_eq!(a.merge(b), b);
        assert_eq!(b.merge(a), b);
        let c = SessionEnd {
            at: T,
            reason: EndReason::Idle,
        };
        assert_eq!(a.merge(c), a);
        assert_eq!(c.merge(a), a);
        assert_eq!(
            SubjectRecord { revoked_at: T }.merge(SubjectRecord { revoked_at: T + 1 }),
            SubjectRecord { revoked_at: T + 1 }
        );
    }

    #[test]
    fn records_have_the_documented_json_shape() {
        let r = ended(T, T + 1, EndReason::Revoked);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"seen":1700000000000,"end":{"at":1700000000001,"reason":"revoked"}}"#
        );
        assert_eq!(
            serde_json::to_string(&rec(T)).unwrap(),
            r#"{"seen":1700000000000,"end":null}"#
        );
        let back: SessionRecord = serde_json::from_str(r#"{"seen":5}"#).unwrap();
        assert_eq!(back, rec(5));
        assert_eq!(
            serde_json::to_string(&SubjectRecord { revoked_at: 7 }).unwrap(),
            r#"{"revoked_at":7}"#
        );
    }
}
