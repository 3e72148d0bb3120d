use std::time::Duration;

/// Everything that can go wrong. The gateway answers 503
/// `session_store_unavailable` for [`SessionError::Unavailable`],
/// [`SessionError::Capacity`] and [`SessionError::Corrupt`] (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store cannot be reached or failed, or the local view has been
    /// stale for longer than `stale_grace`.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The local cap (`max_local_entries`) is reached and nothing can be
    /// dropped safely (memory store).
    #[error("session store full: {0} local entries")]
    Capacity(usize),
    /// A stored value is not what this crate writes.
    #[error("session store value under {key} is malformed: {detail}")]
    Corrupt { key: String, detail: String },
    /// A `claim_once` TTL of zero or above `jti_max_ttl`.
    #[error("one-time-use ttl {ttl:?} must be positive and at most {max:?}")]
    InvalidTtl { ttl: Duration, max: Duration },
    /// A shared-secret name outside `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid name {0:?}: use 1 to 64 of [A-Za-z0-9_-]")]
    InvalidName(String),
    /// Bad configuration, or the NATS connection options could not be built.
    #[error("session store configuration: {0}")]
    Config(String),
}

impl SessionError {
    /// The stable reason name of the gateway's deny for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Unavailable(_) | SessionError::Capacity(_) | SessionError::Corrupt { .. } => {
                "session_store_unavailable"
            }
            SessionError::InvalidTtl { .. } | SessionError::InvalidName(_) | SessionError::Config(_) => {
                "session_store_misconfigured"
            }
        }
    }
}
