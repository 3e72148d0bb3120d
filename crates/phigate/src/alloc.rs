//! The allocator of the `phigate` binaries: jemalloc, which returns freed
//! memory to the OS (glibc malloc kept RSS at its peak after thousands of
//! keep-alive connections closed: docs/performance.md, "Memory after load
//! and soak"). A binary opts in with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: phigate::alloc::Jemalloc = phigate::alloc::Jemalloc;
//! ```
//!
//! and calls [`start_background_purge`] first thing in `main`. The library
//! itself never sets a global allocator, so tools linking it keep their own.

pub use tikv_jemallocator::Jemalloc;

/// Start jemalloc's background threads: they purge dirty pages on its decay
/// schedule (10 s) even when the process is idle; without them purging only
/// happens on later allocations, so an idle gateway would keep its peak.
pub fn start_background_purge() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("phigate: cannot start jemalloc background threads: {e}");
    }
}
