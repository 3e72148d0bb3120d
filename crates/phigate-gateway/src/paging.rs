//! Paging links of allowed FHIR searches, so the caller who ran the search
//! can follow them.
//!
//! Servers answer a search with `Bundle.link` URLs for the next and previous
//! pages. Some (HAPI: `GET [base]?_getpages=<id>&_getpagesoffset=20`) name
//! only a server-side page id: phigate cannot see what they return, so on
//! its own it refuses them. When an allowed search's result passes through,
//! phigate remembers its links for the caller (issuer, subject, client) and
//! the search they continue; a later request for exactly such a link from
//! the same caller is decided as that search, with the caller's current token
//! ([`phigate_policy::decide_continuation`]). Anyone else, or a link phigate
//! never saw, is refused.
//!
//! Memory is bounded (`paging.max_links`, oldest evicted first) and links
//! expire after `paging.ttl`. Links are read from the first
//! [`CAPTURE_BYTES`] of an uncompressed JSON result (servers write `link`
//! before `entry`); phigate asks for an uncompressed body on searches
//! (`Accept-Encoding` is not forwarded) so the links can be read. The memory
//! is per process: with several replicas, a page request that reaches
//! another replica is refused (retry, or enable session affinity).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much of a search result is read for its links.
pub const CAPTURE_BYTES: usize = 64 * 1024;

/// Who ran a search: paging links are honoured for the same caller only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
}

/// Settings of [`PagingLinks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingConfig {
    pub ttl: Duration,
    /// 0 disables remembering links (page requests are then refused).
    pub max_links: usize,
}

impl Default for PagingConfig {
    fn default() -> Self {
        PagingConfig {
            ttl: Duration::from_secs(600),
            max_links: 100_000,
        }
    }
}

struct Entry {
    /// The canonical target of the search the link continues.
    original: String,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(Caller, String), Entry>,
    /// Insertion order, for evicting the oldest.
    order: VecDeque<(Caller, String)>,
}

/// The remembered links. Cheap to share behind an `Arc`.
pub struct PagingLinks {
    config: PagingConfig,
    inner: Mutex<Inner>,
}

impl PagingLinks {
    pub fn new(config: PagingConfig) -> Self {
        PagingLinks {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember `links` (canonical request targets) of a result of the search
    /// `original`, for `caller`.
    pub fn remember(&self, caller: &Caller, links: &[String], original: &str) {
        if self.config.max_links == 0 || links.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        for link in links {
            let key = (caller.clone(), link.clone());
            let fresh = !inner.map.contains_key(&key);
            inner.map.insert(
                key.clone(),
                Entry {
                    original: original.to_string(),
                    expires: now + self.config.ttl,
                },
            );
            if fresh {
                inner.order.push_back(key);
            }
        }
        while inner.map.len() > self.config.max_links {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// The search that `target` continues, if `caller` was given it as a
    /// paging link and it has not expired.
    pub fn lookup(&self, caller: &Caller, target: &str) -> Option<String> {
        let key = (caller.clone(), target.to_string());
        let mut inner = self.lock();
        match inner.map.get(&key) {
            Some(e) if e.expires > Instant::now() => Some(e.original.clone()),
            Some(_) => {
                inner.map.remove(&key);
                inner.order.retain(|k| k != &key);
                None
            }
            None => None,
        }
    }

    /// Links remembered now (metrics, tests).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The canonical request target of a paging link as a client would send it
/// to phigate: `http://backend:8080/fhir?_getpages=x` → `/fhir?_getpages=x`;
/// a relative link (`Observation?patient=1&_offset=20`) is taken relative to
/// the FHIR `base`. `None` for anything that does not canonicalise.
pub fn link_target(url: &str, base: &str) -> Option<String> {
    let path_and_query = match url.split_once("://") {
        Some((_scheme, rest)) => match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        },
        None if url.starts_with('/') => url,
        None => {
            return phigate_policy::canonicalize(&format!("{base}/{url}"))
                .ok()
                .map(|t| t.to_request_target())
        }
    };
    phigate_policy::canonicalize(path_and_query)
        .ok()
        .map(|t| t.to_request_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str) -> Caller {
        Caller {
            issuer: "https://idp".into(),
            subject: Some(sub.into()),
            client_id: Some("app".into()),
        }
    }

    #[test]
    fn links_are_for_their_caller_and_expire() {
        let p = PagingLinks::new(PagingConfig {
            ttl: Duration::from_millis(200),
            max_links: 10,
        });
        p.remember(
            &caller("alice"),
            &["/fhir?_getpages=a".into()],
            "/fhir/Observation?patient=1",
        );
        assert_eq!(
            p.lookup(&caller("alice"), "/fhir?_getpages=a").as_deref(),
            Some("/fhir/Observation?patient=1")
        );
        assert_eq!(p.lookup(&caller("bob"), "/fhir?_getpages=a"), None);
        assert_eq!(p.lookup(&caller("alice"), "/fhir?_getpages=b"), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(p.lookup(&caller("alice"), "/fhir?_getpages=a"), None);
        assert!(p.is_empty());
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let p = PagingLinks::new(PagingConfig {
            ttl: Duration::from_secs(60),
            max_links: 3,
        });
        for i in 0..5 {
            p.remember(
                &caller("a"),
                &[format!("/fhir?_getpages={i}")],
                "/fhir/Observation",
            );
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.lookup(&caller("a"), "/fhir?_getpages=0"), None);
        assert!(p.lookup(&caller("a"), "/fhir?_getpages=4").is_some());
        let off = PagingLinks::new(PagingConfig {
            ttl: Duration::from_secs(60),
            max_links: 0,
        });
        off.remember(&caller("a"), &["/fhir?x=1".into()], "/fhir/Observation");
        assert!(off.is_empty());
    }

    #[test]
    fn link_targets_as_the_client_sends_them() {
        assert_eq!(
            link_target(
                "http://backend:8080/fhir?_getpages=abc&_getpagesoffset=20",
                "/fhir"
            )
            .as_deref(),
            Some("/fhir?_getpages=abc&_getpagesoffset=20")
        );
        assert_eq!(
            link_target("Observation?patient=1&_offset=20", "/fhir").as_deref(),
            Some("/fhir/Observation?patient=1&_offset=20")
        );
        assert_eq!(
            link_target("/fhir/Patient?_id=1", "/fhir").as_deref(),
            Some("/fhir/Patient?_id=1")
        );
        assert_eq!(link_target("http://h/fhir/../admin", "/fhir"), None);
    }
}
