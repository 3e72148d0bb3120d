//! Prometheus metrics. Names and labels are a contract with dashboards.
//!
//! Labels carry only bounded, non-identifying values: decision, reason (the
//! stable vocabulary), route label (from the policy), status class, issuer.
//! Never a subject, patient, path or token.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use phigate_audit::SpoolStats;
use phigate_token::{FetchObserver, FetchOutcome};

/// All gateway metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_responses: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub audit_records: IntCounter,
    pub audit_queue_depth: IntGauge,
    pub audit_fail_closed: IntCounter,
    pub audit_write_errors: IntCounter,
    pub audit_fsyncs: IntCounter,
    pub sink_lag: IntGaugeVec,
    pub sink_errors: IntCounterVec,
    pub sink_healthy: IntGaugeVec,
    pub sink_gap_records: IntCounterVec,
    pub audit_spool_bytes: IntGauge,
    pub audit_bytes: IntCounter,
    pub audit_last_seq: IntGauge,
    pub audit_fill_ratio: Gauge,
    pub audit_free_bytes: IntGauge,
    pub audit_accepting: IntGauge,
    /// `audit.max_bytes`, so that alerts on the spool's fill need not repeat it.
    pub audit_max_bytes: IntGauge,
    /// 1 while `/readyz` would answer 200 (evaluated at each scrape).
    pub ready: IntGauge,
    pub audit_segments_compressed: IntCounter,
    pub audit_compress_errors: IntCounter,
    pub tunnels_open: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub tls_reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub policy_reloads: IntCounterVec,
    pub policy_last_reload_success: IntGauge,
    pub policy_last_reload_timestamp: Gauge,
    pub decide_seconds: Histogram,
    pub break_glass: IntCounter,
    pub rate_limited: IntCounter,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub jwks_age: GaugeVec,
    pub shadow_denials: IntCounterVec,
    /// Back-channel logouts and admin revocations by source and reason.
    pub logouts: IntCounterVec,
    pub session_store_writes: IntCounter,
    pub session_store_reads: IntCounter,
    pub sessions_local: IntGauge,
    pub session_store_up: IntGauge,
}

fn build<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: prometheus::Result<T>,
) -> T {
    // Metric definitions are static: a failure here is a programming error
    // caught by the unit test below, never triggered by input.
    #[allow(clippy::expect_used)]
    let c = c.expect("static metric definition");
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            requests: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_requests_total",
                        "Requests by decision, reason and matched route",
                    ),
                    &["decision", "reason", "route"],
                ),
            ),
            request_duration: build(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "phigate_request_duration_seconds",
                        "Time from request start to the end of the response, by decision",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                    &["decision"],
                ),
            ),
            upstream_responses: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_upstream_responses_total",
                        "Upstream responses by status class",
                    ),
                    &["status_class"],
                ),
            ),
            jwks_fetches: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_jwks_fetch_total",
                        "JWKS fetches by issuer and result (ok, error, invalid)",
                    ),
                    &["issuer", "result"],
                ),
            ),
            jwks_keys: build(
                &r,
                IntGaugeVec::new(
                    Opts::new("phigate_jwks_keys", "Keys in the current key set"),
                    &["issuer"],
                ),
            ),
            audit_records: build(
                &r,
                IntCounter::new(
                    "phigate_audit_records_total",
                    "Audit records appended to the spool (access, recovery and checkpoint records)",
                ),
            ),
            audit_queue_depth: build(
                &r,
                IntGauge::new(
                    "phigate_audit_queue_depth",
                    "Audit records queued or reserved, not yet written",
                ),
            ),
            audit_fail_closed: build(
                &r,
                IntCounter::new(
                    "phigate_audit_fail_closed_total",
                    "Requests refused with 503 because the audit pipeline could not take their record",
                ),
            ),
            rate_limited: build(
                &r,
                IntCounter::new(
                    "phigate_rate_limited_total",
                    "Requests refused with 429 after too many invalid tokens from the client address",
                ),
            ),
            token_cache_hits: build(
                &r,
                IntCounter::new("phigate_token_cache_hits_total", "Validations answered from the verified-token cache"),
            ),
            token_cache_misses: build(
                &r,
                IntCounter::new(
                    "phigate_token_cache_misses_total",
                    "Validations that needed signature verification",
                ),
            ),
            jwks_age: build(
                &r,
                GaugeVec::new(
                    Opts::new("phigate_jwks_age_seconds", "Seconds since the issuer's keys were last fetched successfully"),
                    &["issuer"],
                ),
            ),
            break_glass: build(
                &r,
                IntCounter::new(
                    "phigate_break_glass_total",
                    "Requests allowed through break-glass (emergency access)",
                ),
            ),
            shadow_denials: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_shadow_denials_total",
                        "Requests a report_only rule would have denied (let through), by would-be reason and route",
                    ),
                    &["reason", "route"],
                ),
            ),
            sink_lag: build(
                &r,
                IntGaugeVec::new(
                    Opts::new("phigate_audit_sink_lag_records", "Spool records not yet acknowledged by the sink"),
                    &["sink"],
                ),
            ),
            sink_errors: build(
                &r,
                IntCounterVec::new(
                    Opts::new("phigate_audit_sink_errors_total", "Failed connects/sends/reads of the sink"),
                    &["sink"],
                ),
            ),
            sink_healthy: build(
                &r,
                IntGaugeVec::new(Opts::new("phigate_audit_sink_healthy", "1 when the sink's last attempt succeeded"), &["sink"]),
            ),
            sink_gap_records: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_audit_sink_gap_records_total",
                        "Records missing from the spool (deleted before the sink sent them)",
                    ),
                    &["sink"],
                ),
            ),
            audit_fsyncs: build(&r, IntCounter::new("phigate_audit_fsyncs_total", "fsync calls of the audit spool")),
            audit_spool_bytes: build(
                &r,
                IntGauge::new("phigate_audit_spool_bytes", "Bytes in all segments of the audit spool"),
            ),
            audit_bytes: build(
                &r,
                IntCounter::new(
                    "phigate_audit_bytes_total",
                    "Bytes appended to the audit spool (every client-controlled field of a record is bounded)",
                ),
            ),
            upstream_healthy: build(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "phigate_upstream_healthy",
                        "1 when the upstream address may receive requests (health checks pass, not cooling down after a connect failure)",
                    ),
                    &["upstream", "address"],
                ),
            ),
            logouts: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_logouts_total",
                        "Back-channel logouts (source=backchannel) and revocations (source=admin) by reason",
                    ),
                    &["source", "reason"],
                ),
            ),
            session_store_writes: build(
                &r,
                IntCounter::new(
                    "phigate_session_store_writes_total",
                    "Writes to the session store (coalesced activity, ends, revocations, jti claims)",
                ),
            ),
            session_store_reads: build(
                &r,
                IntCounter::new(
                    "phigate_session_store_reads_total",
                    "Reads from the session store (sessions not yet known to this replica)",
                ),
            ),
            sessions_local: build(
                &r,
                IntGauge::new("phigate_sessions_local", "Sessions held in this replica's memory"),
            ),
            session_store_up: build(
                &r,
                IntGauge::new(
                    "phigate_session_store_up",
                    "1 while the session store answers (always 1 for the memory store; absent without sessions)",
                ),
            ),
            tls_reloads: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_tls_reload_total",
                        "Listener certificate reloads by result (ok: swapped in; error: a new pair refused, the old one kept)",
                    ),
                    &["result"],
                ),
            ),
            upstream_errors: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_upstream_errors_total",
                        "Allowed requests the upstream failed: unreachable, timeout, invalid_response, incomplete (mid-body)",
                    ),
                    &["kind"],
                ),
            ),
            tunnels_open: build(
                &r,
                IntGauge::new(
                    "phigate_tunnels_open",
                    "WebSocket tunnels open through opted-in routes",
                ),
            ),
            audit_last_seq: build(
                &r,
                IntGauge::new("phigate_audit_last_seq", "Sequence number of the last audit record written"),
            ),
            audit_fill_ratio: build(
                &r,
                Gauge::new(
                    "phigate_audit_spool_fill_ratio",
                    "Bytes on disk of the audit spool over audit.max_bytes; at 1 new requests are refused",
                ),
            ),
            audit_free_bytes: build(
                &r,
                IntGauge::new(
                    "phigate_audit_spool_free_bytes",
                    "Free space of the audit spool's filesystem (-1: cannot be measured)",
                ),
            ),
            audit_accepting: build(
                &r,
                IntGauge::new(
                    "phigate_audit_spool_accepting",
                    "1 while the audit spool accepts records (else requests are refused with 503)",
                ),
            ),
            audit_max_bytes: build(
                &r,
                IntGauge::new(
                    "phigate_audit_spool_max_bytes",
                    "audit.max_bytes: the byte bound of the audit spool (reached: requests are refused with 503)",
                ),
            ),
            ready: build(
                &r,
                IntGauge::new(
                    "phigate_ready",
                    "1 while the gateway is ready (policy loaded, keys fetched, audit spool accepting, not draining), as /readyz",
                ),
            ),
            audit_segments_compressed: build(
                &r,
                IntCounter::new(
                    "phigate_audit_segments_compressed_total",
                    "Closed audit segments compressed with zstd",
                ),
            ),
            audit_compress_errors: build(
                &r,
                IntCounter::new(
                    "phigate_audit_compress_errors_total",
                    "Failed compressions of closed audit segments (retried; the segment stays plain)",
                ),
            ),
            audit_write_errors: build(
                &r,
                IntCounter::new(
                    "phigate_audit_write_errors_total",
                    "Failed audit spool writes or fsyncs",
                ),
            ),
            policy_info: build(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "phigate_policy_info",
                        "The loaded policy version (value is always 1)",
                    ),
                    &["version"],
                ),
            ),
            policy_reloads: build(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "phigate_policy_reload_total",
                        "Policy reload attempts by result (ok, error)",
                    ),
                    &["result"],
                ),
            ),
            policy_last_reload_success: build(
                &r,
                IntGauge::new(
                    "phigate_policy_last_reload_success",
                    "1 if the last policy load or reload succeeded, 0 if it was rejected",
                ),
            ),
            policy_last_reload_timestamp: build(
                &r,
                Gauge::new(
                    "phigate_policy_last_reload_timestamp_seconds",
                    "Unix time of the last policy load or reload attempt",
                ),
            ),
            decide_seconds: build(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "phigate_decide_duration_seconds",
                        "Time spent in the pure decision core",
                    )
                    .buckets(vec![0.000001, 0.000005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001]),
                ),
            ),
            registry: r,
        }
    }

    /// Count one finished request (`phigate_requests_total`,
    /// `phigate_request_duration_seconds`, break-glass and shadow counters).
    /// Count a decided request; `reason` is the decision's own, or the
    /// failure of an allowed request that failed afterwards.
    pub fn count_request(
        &self,
        decision: &phigate_policy::Decision,
        reason: phigate_policy::Reason,
        elapsed: std::time::Duration,
    ) {
        let route = decision.route.as_deref().unwrap_or("none");
        self.requests
            .with_label_values(&[decision.outcome.as_str(), reason.as_str(), route])
            .inc();
        self.request_duration
            .with_label_values(&[decision.outcome.as_str()])
            .observe(elapsed.as_secs_f64());
        if decision.break_glass {
            self.break_glass.inc();
        }
        if let Some(would) = decision.shadow {
            self.shadow_denials
                .with_label_values(&[would.as_str(), route])
                .inc();
        }
    }

    /// Count a request refused before the proxy phases (by the HTTP front).
    pub fn record_refusal(&self, decision: &phigate_policy::Decision) {
        self.count_request(decision, decision.reason, std::time::Duration::ZERO);
    }

    /// The `status_class` label value for a status code.
    pub fn status_class(status: u16) -> &'static str {
        match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        }
    }

    /// Record the policy loaded at start-up: `policy_info{version}` is 1, the
    /// load counts as a successful (non-reload) attempt, and both reload
    /// results are exported at 0 so `increase()` works from the first scrape.
    pub fn policy_started(&self, version: &str) {
        self.policy_info.with_label_values(&[version]).set(1);
        for result in ["ok", "error"] {
            self.policy_reloads.with_label_values(&[result]);
        }
        self.policy_last_reload_success.set(1);
        self.policy_last_reload_timestamp.set(unix_now());
    }

    /// Record a successful reload. When the version changed, `policy_info`
    /// moves from `old` to `new` (the old label is removed, not left at 0).
    pub fn policy_reload_ok(&self, old: &str, new: &str) {
        if old != new {
            self.policy_info.with_label_values(&[new]).set(1);
            // Absent only if it was never set; nothing to remove then.
            let _ = self.policy_info.remove_label_values(&[old]);
        }
        self.policy_reloads.with_label_values(&["ok"]).inc();
        self.policy_last_reload_success.set(1);
        self.policy_last_reload_timestamp.set(unix_now());
    }

    /// Record a rejected reload; the previous policy stays in force.
    pub fn policy_reload_failed(&self) {
        self.policy_reloads.with_label_values(&["error"]).inc();
        self.policy_last_reload_success.set(0);
        self.policy_last_reload_timestamp.set(unix_now());
    }

    /// Copy the validator's counters and key ages into the registry (called before a scrape).
    pub fn observe_validator(&self, v: &phigate_token::Validator) {
        use std::sync::atomic::Ordering;
        advance(
            &self.token_cache_hits,
            v.cache_stats().hits.load(Ordering::Relaxed),
        );
        advance(
            &self.token_cache_misses,
            v.cache_stats().misses.load(Ordering::Relaxed),
        );
        for (issuer, keys, age) in v.key_status() {
            self.jwks_keys
                .with_label_values(&[issuer.as_str()])
                .set(keys as i64);
            if let Some(age) = age {
                self.jwks_age
                    .with_label_values(&[issuer.as_str()])
                    .set(age.as_secs_f64());
            }
        }
    }

    /// Copy the sinks' status into the registry (called before a scrape).
    /// Session store counters and gauges (at each scrape).
    pub fn observe_sessions(&self, stats: &phigate_sessions::SessionStats) {
        advance(&self.session_store_writes, stats.writes);
        advance(&self.session_store_reads, stats.reads);
        self.sessions_local
            .set(i64::try_from(stats.local_entries).unwrap_or(i64::MAX));
        self.session_store_up.set(i64::from(stats.healthy));
    }

    pub fn observe_sinks(&self, sinks: &[std::sync::Arc<phigate_sinks::SinkStatus>]) {
        for s in sinks {
            let s = s.snapshot();
            let name = s.name.as_str();
            self.sink_lag.with_label_values(&[name]).set(s.lag_records as i64);
            self.sink_healthy
                .with_label_values(&[name])
                .set(i64::from(s.healthy));
            advance(&self.sink_errors.with_label_values(&[name]), s.errors_total);
            advance(
                &self.sink_gap_records.with_label_values(&[name]),
                s.gap_records_total,
            );
        }
    }

    /// The health of every upstream address, as of now. Addresses that
    /// disappeared (DNS) are removed from the family.
    pub fn observe_upstreams(&self, health: &[crate::upstreams::AddressHealth]) {
        self.upstream_healthy.reset();
        for h in health {
            self.upstream_healthy
                .with_label_values(&[h.upstream.as_str(), h.address.as_str()])
                .set(i64::from(h.healthy && !h.passive_down));
        }
    }

    /// Bring the audit values up to date and encode the text exposition format.
    pub fn render(&self, audit: &SpoolStats) -> Vec<u8> {
        advance(&self.audit_records, audit.records_written);
        advance(&self.audit_bytes, audit.bytes_written);
        advance(&self.audit_write_errors, audit.write_errors);
        advance(&self.audit_fsyncs, audit.fsyncs);
        self.audit_queue_depth.set(audit.queue_depth as i64);
        self.audit_spool_bytes.set(audit.spool_bytes as i64);
        self.audit_last_seq.set(audit.last_seq as i64);
        self.audit_fill_ratio.set(audit.fill_ratio);
        self.audit_free_bytes.set(
            audit
                .free_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
        self.audit_accepting.set(i64::from(audit.accepting));
        self.audit_max_bytes
            .set(i64::try_from(audit.max_bytes).unwrap_or(i64::MAX));
        advance(&self.audit_segments_compressed, audit.segments_compressed);
        advance(&self.audit_compress_errors, audit.compress_errors);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        buf
    }
}

/// Move a counter up to a total kept elsewhere (an atomic in the validator,
/// the spool or a sink): counters only ever increase.
fn advance(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FetchObserver for Metrics {
    fn jwks_fetched(&self, issuer: &str, outcome: FetchOutcome, key_count: usize) {
        self.jwks_fetches
            .with_label_values(&[issuer, outcome.as_str()])
            .inc();
        if matches!(outcome, FetchOutcome::Ok) {
            self.jwks_keys.with_label_values(&[issuer]).set(key_count as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["allow", "allowed", "/fhir/Patient/{id}"])
            .inc();
        let text = String::from_utf8(m.render(&SpoolStats {
            queue_depth: 3,
            ..SpoolStats::default()
        }))
        .unwrap();
        assert!(text.contains(
            "phigate_requests_total{decision=\"allow\",reason=\"allowed\",route=\"/fhir/Patient/{id}\"} 1"
        ));
        assert!(text.contains("phigate_audit_queue_depth 3"));
    }

    #[test]
    fn policy_reload_moves_the_info_label_and_counts_results() {
        let m = Metrics::new();
        m.policy_started("sha256:aaaa");
        let text = String::from_utf8(m.render(&SpoolStats::default())).unwrap();
        assert!(text.contains("phigate_policy_reload_total{result=\"ok\"} 0"));
        assert!(text.contains("phigate_policy_reload_total{result=\"error\"} 0"));
        assert!(text.contains("phigate_policy_last_reload_success 1"));

        m.policy_reload_failed();
        m.policy_reload_ok("sha256:aaaa", "sha256:bbbb");
        let text = String::from_utf8(m.render(&SpoolStats::default())).unwrap();
        assert!(text.contains("phigate_policy_info{version=\"sha256:bbbb\"} 1"));
        assert!(
            !text.contains("sha256:aaaa"),
            "old version label removed:\n{text}"
        );
        assert!(text.contains("phigate_policy_reload_total{result=\"ok\"} 1"));
        assert!(text.contains("phigate_policy_reload_total{result=\"error\"} 1"));
        assert!(text.contains("phigate_policy_last_reload_success 1"));
        assert!(m.policy_last_reload_timestamp.get() > 0.0);
    }

    #[test]
    fn status_classes() {
        assert_eq!(Metrics::status_class(204), "2xx");
        assert_eq!(Metrics::status_class(503), "5xx");
        assert_eq!(Metrics::status_class(0), "other");
    }
}
