//! Shutdown: phigate's own signal watch for pingora's main loop.
//!
//! pingora on SIGTERM stops its listeners and then *sleeps* for the whole
//! grace period before stopping the runtimes, whether anything is in flight
//! or not. phigate instead drains: on SIGTERM (or SIGQUIT — phigate does not
//! do pingora's socket hand-over upgrades) it marks itself shutting down
//! (`/readyz` 503, responses close their connections so keep-alive clients
//! go elsewhere), keeps serving, and tells pingora to stop as soon as no
//! request is in flight or `shutdown_grace` has passed, whichever is first.
//! Requests still in flight then are cut off and recorded `aborted_shutdown`
//! (see `RequestCtx`'s `Drop`). SIGINT stops at once (the same records).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::proxy::Shared;

/// How often the drain checks whether requests are still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Waits for SIGTERM/SIGQUIT (drain) or SIGINT (stop now).
pub struct DrainingSignalWatch {
    pub shared: Arc<Shared>,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = quit.recv() => "SIGQUIT",
            _ = int.recv() => {
                self.shared.shutting_down.store(true, Ordering::Release);
                tracing::info!(in_flight = self.shared.in_flight_now(), "SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
        };
        self.shared.shutting_down.store(true, Ordering::Release);
        let started = Instant::now();
        tracing::info!(
            signal = name,
            in_flight = self.shared.in_flight_now(),
            grace = ?self.grace,
            "draining: serving requests in flight, then exiting"
        );
        loop {
            let in_flight = self.shared.in_flight_now();
            if in_flight == 0 {
                tracing::info!(elapsed = ?started.elapsed(), "drained; exiting");
                return ShutdownSignal::GracefulTerminate;
            }
            if started.elapsed() >= self.grace {
                tracing::warn!(
                    in_flight,
                    grace = ?self.grace,
                    "shutdown_grace over: cutting off the requests still in flight (recorded aborted_shutdown)"
                );
                return ShutdownSignal::GracefulTerminate;
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = int.recv() => {
                    tracing::info!(in_flight, "SIGINT during the drain: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}
