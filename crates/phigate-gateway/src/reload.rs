//! Policy hot reload: the policy directory is polled and `SIGHUP` reloads it
//! at once.
//!
//! The core, [`Reloader`], is synchronous and testable without a runtime:
//! [`Reloader::poll_once`] reads the directory, and once a change has been
//! stable for one poll it compiles it and swaps it into the shared policy
//! (an `ArcSwap`, so every request sees either the old or the new policy,
//! never a mix). An invalid change keeps the policy in force. The pingora
//! background service [`PolicyWatcher`] only drives it: a timer, `SIGHUP`,
//! and the shutdown signal.
//!
//! Why polling and not inotify: editors and deploy tools replace files by
//! renaming a temporary file over them, which inotify watches on the file
//! lose; a directory listing plus a content hash sees every kind of write and
//! costs nothing for a directory of small YAML files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, Signal, SignalKind};

use phigate_policy::{Diagnostic, PolicySet, PolicySource};

use crate::metrics::Metrics;
use crate::policy_loader;
use crate::proxy::Shared;

/// How often the policy directory is polled by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where the policy in force lives; a reload swaps it.
pub trait PolicySlot: Send + Sync {
    fn policy_slot(&self) -> &ArcSwap<PolicySet>;
}

impl PolicySlot for Shared {
    fn policy_slot(&self) -> &ArcSwap<PolicySet> {
        &self.policy
    }
}

impl PolicySlot for ArcSwap<PolicySet> {
    fn policy_slot(&self) -> &ArcSwap<PolicySet> {
        self
    }
}

/// What caused a reload attempt (the `trigger` field of reload log events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The poller saw a change that has settled.
    Poll,
    /// `SIGHUP`: reload now, changed or not.
    Signal,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Poll => "poll",
            Trigger::Signal => "sighup",
        }
    }
}

/// The result of one [`Reloader::poll_once`] or [`Reloader::reload_now`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The directory is as it was at the last attempt; nothing to do.
    Unchanged,
    /// A change was seen; it is compiled once it has stayed the same for
    /// one more poll (so half-written files are not compiled).
    Settling,
    /// The new policy is in force.
    Swapped {
        old_version: String,
        new_version: String,
        routes: usize,
    },
    /// The files compile to the policy already in force; nothing was swapped.
    /// Counts as a successful reload.
    Identical { version: String },
    /// The change was rejected; the previous policy stays in force.
    Rejected {
        kept_version: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Identity of the policy directory's contents: per file (sorted by path)
/// its length, modification time and SHA-256 of its contents, or why the
/// directory or file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Files(Vec<FileStamp>),
    Unreadable(Vec<Diagnostic>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: Option<u64>,
    modified: Option<SystemTime>,
    content: Result<[u8; 32], Diagnostic>,
}

/// The directory read once: its fingerprint and the very sources that were
/// fingerprinted, so what is compiled is exactly what was seen to settle.
struct Snapshot {
    fingerprint: Fingerprint,
    sources: Result<Vec<PolicySource>, Vec<Diagnostic>>,
}

fn snapshot(dir: &Path) -> Snapshot {
    let paths = match policy_loader::policy_files(dir) {
        Ok(paths) => paths,
        Err(diagnostics) => {
            return Snapshot {
                fingerprint: Fingerprint::Unreadable(diagnostics.clone()),
                sources: Err(diagnostics),
            }
        }
    };
    let mut stamps = Vec::with_capacity(paths.len());
    let mut sources = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(&path).ok();
        let content = match policy_loader::read_file(&path) {
            Ok(source) => {
                let digest: [u8; 32] = Sha256::digest(source.text.as_bytes()).into();
                sources.push(source);
                Ok(digest)
            }
            Err(d) => {
                errors.push(d.clone());
                Err(d)
            }
        };
        stamps.push(FileStamp {
            len: meta.as_ref().map(|m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
            path,
            content,
        });
    }
    if stamps.is_empty() {
        errors.push(Diagnostic::new(
            dir.display().to_string(),
            None,
            "no policy files (*.yaml, *.yml) in the policy directory",
        ));
    }
    Snapshot {
        fingerprint: Fingerprint::Files(stamps),
        sources: if errors.is_empty() {
            Ok(sources)
        } else {
            Err(errors)
        },
    }
}

struct WatchState {
    /// The directory as of the last reload attempt (or start-up); `None`
    /// forces an attempt once the directory has settled.
    attempted: Option<Fingerprint>,
    /// A change seen at the previous poll, not yet attempted.
    settling: Option<Fingerprint>,
}

/// Reloads the policy from a directory into a [`PolicySlot`], keeping the
/// metrics (`phigate_policy_*`) and logs up to date. Synchronous: call it
/// from a blocking context.
pub struct Reloader {
    dir: PathBuf,
    slot: Arc<dyn PolicySlot>,
    metrics: Arc<Metrics>,
    state: Mutex<WatchState>,
}

impl Reloader {
    /// A reloader for `dir`, whose policy is currently in `slot`.
    ///
    /// The directory is read now. If its files do not compile to the policy
    /// in force (they changed since it was loaded), the first polls reload
    /// them rather than treating them as the baseline.
    pub fn new(dir: impl Into<PathBuf>, slot: Arc<dyn PolicySlot>, metrics: Arc<Metrics>) -> Self {
        let dir = dir.into();
        let snap = snapshot(&dir);
        let current = slot.policy_slot().load();
        let in_force = matches!(
            snap.sources.map(|s| phigate_policy::compile(&s)),
            Ok(Ok(p)) if p.version() == current.version()
        );
        Self {
            state: Mutex::new(WatchState {
                attempted: in_force.then_some(snap.fingerprint),
                settling: None,
            }),
            dir,
            slot,
            metrics,
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One poll: read the directory; if it differs from the last attempt and
    /// is the same as at the previous poll, reload it.
    pub fn poll_once(&self) -> ReloadOutcome {
        let snap = snapshot(&self.dir);
        let mut state = self.lock_state();
        if state.attempted.as_ref() == Some(&snap.fingerprint) {
            state.settling = None;
            return ReloadOutcome::Unchanged;
        }
        if state.settling.as_ref() != Some(&snap.fingerprint) {
            state.settling = Some(snap.fingerprint);
            return ReloadOutcome::Settling;
        }
        state.settling = None;
        state.attempted = Some(snap.fingerprint.clone());
        self.apply(snap, Trigger::Poll)
    }

    /// Reload now, without waiting for the directory to settle and even if
    /// it did not change (`SIGHUP`).
    pub fn reload_now(&self) -> ReloadOutcome {
        let snap = snapshot(&self.dir);
        let mut state = self.lock_state();
        state.settling = None;
        state.attempted = Some(snap.fingerprint.clone());
        self.apply(snap, Trigger::Signal)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        // The state is two fingerprints, consistent even after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compile `snap` and swap it in if valid and different. Callers hold the
    /// state lock, so attempts never interleave.
    fn apply(&self, snap: Snapshot, trigger: Trigger) -> ReloadOutcome {
        let slot = self.slot.policy_slot();
        let current = slot.load_full();
        let old_version = current.version().to_string();
        match snap.sources.and_then(|s| phigate_policy::compile(&s)) {
            Ok(new) if new.version() == old_version => {
                self.metrics.policy_reload_ok(&old_version, &old_version);
                tracing::info!(
                    trigger = trigger.as_str(),
                    policy_version = %old_version,
                    "policy reloaded: unchanged, nothing swapped"
                );
                ReloadOutcome::Identical { version: old_version }
            }
            Ok(new) => {
                let new_version = new.version().to_string();
                let routes = new.routes().len();
                slot.store(Arc::new(new));
                self.metrics.policy_reload_ok(&old_version, &new_version);
                tracing::info!(
                    trigger = trigger.as_str(),
                    old_version = %old_version,
                    new_version = %new_version,
                    routes,
                    "policy reloaded"
                );
                ReloadOutcome::Swapped {
                    old_version,
                    new_version,
                    routes,
                }
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!(trigger = trigger.as_str(), "invalid policy: {d}");
                }
                self.metrics.policy_reload_failed();
                tracing::error!(
                    trigger = trigger.as_str(),
                    errors = diagnostics.len(),
                    policy_version = %old_version,
                    dir = %self.dir.display(),
                    "policy reload rejected; keeping the policy in force"
                );
                ReloadOutcome::Rejected {
                    kept_version: old_version,
                    diagnostics,
                }
            }
        }
    }
}

/// Install the process's `SIGHUP` handler now, before pingora starts the
/// services. `SIGHUP`'s default action terminates the process, pingora does
/// not handle it, and the watcher's own `signal()` runs only once its service
/// has started. Tokio never uninstalls a signal handler, so from here on a
/// `SIGHUP` can no longer kill the process (one sent before the watcher
/// starts is simply not acted on: the policy was just loaded).
pub fn install_sighup_handler() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _guard = rt.enter();
    signal(SignalKind::hangup()).map(drop)
}

/// Pingora background service: polls the policy directory every `interval`,
/// reloads at once on `SIGHUP`, and stops when the server shuts down.
pub struct PolicyWatcher {
    reloader: Arc<Reloader>,
    interval: Duration,
}

impl PolicyWatcher {
    pub fn new(reloader: Reloader, interval: Duration) -> Self {
        Self {
            reloader: Arc::new(reloader),
            interval,
        }
    }
}

/// The next `SIGHUP`; never, if there is no handler.
async fn hangup(sig: &mut Option<Signal>) {
    if let Some(s) = sig {
        if s.recv().await.is_some() {
            return;
        }
        // The stream ended: only polling and shutdown remain.
        *sig = None;
    }
    std::future::pending::<()>().await
}

#[async_trait]
impl BackgroundService for PolicyWatcher {
    /// Runs from server start until `shutdown` flips to `true`.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut sighup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; policy reloads by polling only");
                None
            }
        };
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            dir = %self.reloader.dir().display(),
            interval_ms = self.interval.as_millis() as u64,
            "watching the policy directory (SIGHUP reloads immediately)"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            let trigger = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                _ = ticks.tick() => Trigger::Poll,
                _ = hangup(&mut sighup) => Trigger::Signal,
            };
            if trigger == Trigger::Signal {
                tracing::info!(dir = %self.reloader.dir().display(), "SIGHUP: reloading the policy");
            }
            let reloader = self.reloader.clone();
            // File reads and compilation are blocking work.
            let done = tokio::task::spawn_blocking(move || match trigger {
                Trigger::Poll => reloader.poll_once(),
                Trigger::Signal => reloader.reload_now(),
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "policy reload task failed; keeping the policy in force");
            }
        }
        tracing::info!("policy watcher stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BASE: &str =
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n";
    const EXTRA: &str = "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Encounter/{id}\n    scopes: { any_of: [user/Encounter.rs] }\n";
    const BROKEN: &str = "version: 1\nroutes: [ {methods: [GET], path: /x, bogus: 1} ]\n";

    struct Fixture {
        dir: tempfile::TempDir,
        slot: Arc<ArcSwap<PolicySet>>,
        metrics: Arc<Metrics>,
        reloader: Reloader,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
            let policy = policy_loader::load_dir(dir.path()).unwrap();
            let metrics = Arc::new(Metrics::new());
            metrics.policy_started(policy.version());
            let slot = Arc::new(ArcSwap::from_pointee(policy));
            let reloader = Reloader::new(dir.path(), slot.clone(), metrics.clone());
            Self {
                dir,
                slot,
                metrics,
                reloader,
            }
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).unwrap();
        }

        fn version(&self) -> String {
            self.slot.load().version().to_string()
        }

        fn reloads(&self, result: &str) -> u64 {
            self.metrics.policy_reloads.with_label_values(&[result]).get()
        }

        /// Poll until the change has settled and been attempted.
        fn settle(&self) -> ReloadOutcome {
            assert_eq!(self.reloader.poll_once(), ReloadOutcome::Settling);
            self.reloader.poll_once()
        }
    }

    #[test]
    fn unchanged_directory_does_nothing() {
        let f = Fixture::new();
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Unchanged);
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Unchanged);
        assert_eq!(f.reloads("ok") + f.reloads("error"), 0);
    }

    #[test]
    fn valid_change_is_swapped_in_after_one_stable_poll() {
        let f = Fixture::new();
        let before = f.slot.load_full();
        f.write("extra.yaml", EXTRA);
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Settling);
        assert!(
            Arc::ptr_eq(&before, &f.slot.load_full()),
            "not swapped while settling"
        );

        let ReloadOutcome::Swapped {
            old_version,
            new_version,
            routes,
        } = f.reloader.poll_once()
        else {
            panic!("expected a swap");
        };
        assert_eq!(old_version, before.version());
        assert_eq!(new_version, f.version());
        assert_ne!(old_version, new_version);
        assert_eq!(routes, 2);
        assert!(f.slot.load().match_route("GET", "/fhir/Encounter/1").is_some());
        assert_eq!(f.reloads("ok"), 1);
        assert_eq!(f.metrics.policy_last_reload_success.get(), 1);
        assert_eq!(f.metrics.policy_info.with_label_values(&[&new_version]).get(), 1);
        assert!(
            f.metrics
                .policy_info
                .remove_label_values(&[&old_version])
                .is_err(),
            "old label removed"
        );
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Unchanged);
    }

    #[test]
    fn invalid_change_keeps_the_previous_policy_and_counts_an_error_once() {
        let f = Fixture::new();
        let before = f.version();
        f.write("broken.yaml", BROKEN);
        let ReloadOutcome::Rejected {
            kept_version,
            diagnostics,
        } = f.settle()
        else {
            panic!("expected a rejection");
        };
        assert_eq!(kept_version, before);
        assert_eq!(f.version(), before);
        let d = &diagnostics[0];
        assert!(d.file.ends_with("broken.yaml"), "{d}");
        assert!(d.location.is_some(), "diagnostic has line:column: {d}");
        assert!(d.to_string().contains("bogus"), "{d}");
        assert_eq!(f.reloads("error"), 1);
        assert_eq!(f.reloads("ok"), 0);
        assert_eq!(f.metrics.policy_last_reload_success.get(), 0);

        // The same broken content is not retried (or re-counted) every poll.
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Unchanged);
        assert_eq!(f.reloads("error"), 1);

        // Fixing it reloads and clears the failure.
        f.write("broken.yaml", EXTRA.replace("Encounter", "Condition").as_str());
        assert!(matches!(f.settle(), ReloadOutcome::Swapped { routes: 2, .. }));
        assert_eq!(f.metrics.policy_last_reload_success.get(), 1);
    }

    /// A Kubernetes ConfigMap volume as the kubelet writes it (its
    /// AtomicWriter): the files live in a hidden timestamped directory,
    /// `..data` links to it, and each visible name links through `..data`.
    /// An update writes a new directory, points a temporary link at it,
    /// renames that link over `..data` and deletes the old directory. The
    /// hidden entries are not policy files; the swap is a change like any
    /// other, and a broken update keeps the policy in force.
    #[cfg(unix)]
    #[test]
    fn a_configmap_symlink_swap_is_reloaded() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let publish = |generation: &str, files: &[(&str, &str)]| {
            let data = dir.path().join(format!("..2026_11_30_{generation}"));
            std::fs::create_dir(&data).unwrap();
            for (name, text) in files {
                std::fs::write(data.join(name), text).unwrap();
            }
            let tmp = dir.path().join("..data_tmp");
            symlink(data.file_name().unwrap(), &tmp).unwrap();
            let previous = std::fs::read_link(dir.path().join("..data")).ok();
            std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
            for (name, _) in files {
                let visible = dir.path().join(name);
                if std::fs::symlink_metadata(&visible).is_err() {
                    symlink(format!("..data/{name}"), &visible).unwrap();
                }
            }
            if let Some(old) = previous {
                std::fs::remove_dir_all(dir.path().join(old)).unwrap();
            }
        };
        publish("01", &[("fhir.yaml", BASE)]);
        let policy = policy_loader::load_dir(dir.path()).unwrap();
        assert_eq!(
            policy.routes().len(),
            1,
            "hidden ..data entries are not loaded twice"
        );
        let metrics = Arc::new(Metrics::new());
        metrics.policy_started(policy.version());
        let slot = Arc::new(ArcSwap::from_pointee(policy));
        let reloader = Reloader::new(dir.path(), slot.clone(), metrics.clone());
        assert_eq!(reloader.poll_once(), ReloadOutcome::Unchanged);

        // The ConfigMap gains a route: the same name, new content behind the swap.
        let both = format!("{BASE}{}", EXTRA.trim_start_matches("version: 1\nroutes:\n"));
        publish("02", &[("fhir.yaml", &both)]);
        assert_eq!(reloader.poll_once(), ReloadOutcome::Settling);
        assert!(matches!(
            reloader.poll_once(),
            ReloadOutcome::Swapped { routes: 2, .. }
        ));
        assert!(slot.load().match_route("GET", "/fhir/Encounter/1").is_some());

        // A broken ConfigMap update is rejected; the two routes stay.
        publish("03", &[("fhir.yaml", BROKEN)]);
        assert_eq!(reloader.poll_once(), ReloadOutcome::Settling);
        assert!(matches!(reloader.poll_once(), ReloadOutcome::Rejected { .. }));
        assert_eq!(slot.load().routes().len(), 2);
        assert_eq!(metrics.policy_last_reload_success.get(), 0);
    }

    #[test]
    fn half_written_file_is_compiled_only_once_it_stops_changing() {
        let f = Fixture::new();
        f.write("extra.yaml", &EXTRA[..EXTRA.len() / 2]);
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Settling);
        f.write("extra.yaml", EXTRA);
        assert_eq!(
            f.reloader.poll_once(),
            ReloadOutcome::Settling,
            "still changing: not compiled"
        );
        assert!(matches!(f.reloader.poll_once(), ReloadOutcome::Swapped { .. }));
        assert_eq!(f.reloads("error"), 0);
    }

    #[test]
    fn half_written_file_that_stays_invalid_is_rejected() {
        let f = Fixture::new();
        f.write(
            "extra.yaml",
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Enc",
        );
        assert!(matches!(f.settle(), ReloadOutcome::Rejected { .. }));
        assert!(f.slot.load().match_route("GET", "/fhir/metadata").is_some());
    }

    #[test]
    fn deleting_the_only_file_is_rejected() {
        let f = Fixture::new();
        let before = f.version();
        std::fs::remove_file(f.dir.path().join("base.yaml")).unwrap();
        let ReloadOutcome::Rejected { diagnostics, .. } = f.settle() else {
            panic!("expected a rejection");
        };
        assert!(
            diagnostics[0].message.contains("no policy files"),
            "{:?}",
            diagnostics
        );
        assert_eq!(f.version(), before);
        assert_eq!(f.reloads("error"), 1);
    }

    #[test]
    fn deleting_one_of_several_files_removes_its_routes() {
        let f = Fixture::new();
        f.write("extra.yaml", EXTRA);
        assert!(matches!(f.settle(), ReloadOutcome::Swapped { routes: 2, .. }));
        std::fs::remove_file(f.dir.path().join("extra.yaml")).unwrap();
        assert!(matches!(f.settle(), ReloadOutcome::Swapped { routes: 1, .. }));
        assert!(f.slot.load().match_route("GET", "/fhir/Encounter/1").is_none());
    }

    #[test]
    fn unreadable_directory_is_rejected() {
        let f = Fixture::new();
        let before = f.version();
        std::fs::remove_dir_all(f.dir.path()).unwrap();
        let ReloadOutcome::Rejected { diagnostics, .. } = f.settle() else {
            panic!("expected a rejection");
        };
        assert!(
            diagnostics[0].message.contains("cannot read policy directory"),
            "{:?}",
            diagnostics
        );
        assert_eq!(f.version(), before);
        assert_eq!(f.reloader.poll_once(), ReloadOutcome::Unchanged);
        assert_eq!(f.reloads("error"), 1);
    }

    #[test]
    fn identical_content_counts_as_ok_without_a_swap() {
        let f = Fixture::new();
        let before = f.slot.load_full();
        // Same bytes, new modification time: the files changed, the policy did not.
        let file = std::fs::File::options()
            .write(true)
            .open(f.dir.path().join("base.yaml"))
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            f.settle(),
            ReloadOutcome::Identical {
                version: before.version().to_string()
            }
        );
        assert!(Arc::ptr_eq(&before, &f.slot.load_full()), "not swapped");
        assert_eq!(f.reloads("ok"), 1);
    }

    #[test]
    fn reload_now_skips_the_settling_poll_and_reloads_even_when_unchanged() {
        let f = Fixture::new();
        assert!(matches!(f.reloader.reload_now(), ReloadOutcome::Identical { .. }));
        f.write("extra.yaml", EXTRA);
        assert!(matches!(f.reloader.reload_now(), ReloadOutcome::Swapped { .. }));
        assert_eq!(
            f.reloader.poll_once(),
            ReloadOutcome::Unchanged,
            "already attempted"
        );
        assert_eq!(f.reloads("ok"), 2);
    }

    #[test]
    fn files_changed_before_the_watcher_started_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
        let slot = Arc::new(ArcSwap::from_pointee(
            policy_loader::load_dir(dir.path()).unwrap(),
        ));
        std::fs::write(dir.path().join("extra.yaml"), EXTRA).unwrap();
        let reloader = Reloader::new(dir.path(), slot.clone(), Arc::new(Metrics::new()));
        assert_eq!(reloader.poll_once(), ReloadOutcome::Settling);
        assert!(matches!(
            reloader.poll_once(),
            ReloadOutcome::Swapped { routes: 2, .. }
        ));
    }

    #[tokio::test]
    async fn watcher_stops_when_the_server_shuts_down() {
        let f = Fixture::new();
        let watcher = PolicyWatcher::new(f.reloader, Duration::from_millis(10));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { watcher.start(rx).await });
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
}
