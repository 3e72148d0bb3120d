//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and — only in
//! `phigate dev` — the dev issuer's `/dev/jwks.json` and `/dev/token`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::dev::DevIssuer;
use crate::proxy::Shared;

/// The admin HTTP app.
pub struct Admin {
    pub shared: Arc<Shared>,
    /// Present only in dev mode.
    pub dev: Option<Arc<DevIssuer>>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_error(status: StatusCode, message: String) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

impl Admin {
    /// Readiness: policy loaded (always true once serving: start-up fails
    /// without one), every issuer's keys usable, audit spool accepting, not
    /// draining for a shutdown.
    /// Streaming sinks are reported but do not gate readiness: the spool
    /// buffers for them, and a SIEM outage must not take the API down.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let keys = self.shared.validator.is_ready();
        let stats = self.shared.audit.stats();
        let audit = stats.accepting;
        let draining = self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire);
        let ready = keys && audit && !draining;
        // Upstreams are reported, not gating: a backend outage is the same
        // for every replica, and taking them all out of the load balancer
        // would turn precise 503 `upstream_unavailable` answers into
        // connection errors.
        let mut upstreams = serde_json::Map::new();
        for h in self.shared.upstreams.health() {
            let entry = upstreams
                .entry(h.upstream.clone())
                .or_insert_with(|| serde_json::json!({ "healthy": false, "addresses": {} }));
            let up = h.healthy && !h.passive_down;
            if up {
                entry["healthy"] = serde_json::Value::Bool(true);
            }
            entry["addresses"][h.address.as_str()] = serde_json::json!({
                "healthy": h.healthy,
                "passive_down": h.passive_down,
            });
        }
        let sinks: serde_json::Map<String, serde_json::Value> = self
            .shared
            .sinks
            .iter()
            .map(|s| {
                let s = s.snapshot();
                (
                    s.name.clone(),
                    serde_json::json!({
                        "healthy": s.healthy,
                        "lag_records": s.lag_records,
                        "last_error": s.last_error,
                    }),
                )
            })
            .collect();
        (
            ready,
            serde_json::json!({
                "ready": ready,
                "policy_version": self.shared.policy.load().version(),
                "keys": keys,
                "audit": audit,
                "audit_spool": {
                    "accepting": stats.accepting,
                    "not_accepting": stats.not_accepting,
                    "healthy": stats.healthy,
                    "fill_ratio": stats.fill_ratio,
                    "spool_bytes": stats.spool_bytes,
                    "max_bytes": stats.max_bytes,
                    "free_bytes": stats.free_bytes,
                    "min_free_bytes": stats.min_free_bytes,
                    "queue_depth": stats.queue_depth,
                },
                "sinks": sinks,
                "upstreams": upstreams,
                "draining": draining,
            }),
        )
    }

    /// `POST /sessions/revoke?sid=…|sub=…[&issuer=…][&actor=…]`: end a
    /// session (`sid`) or every session of a subject issued before now
    /// (`sub`) on every replica, audited as a `logout` record (source
    /// `admin`). `issuer` may be left out when one issuer is configured.
    async fn revoke(
        &self,
        method: &http::Method,
        query: Option<&str>,
        peer: Option<String>,
    ) -> Response<Vec<u8>> {
        if method != http::Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n");
        }
        let (mut sid, mut sub, mut issuer, mut actor) = (None, None, None, None);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if v.is_empty() || v.len() > 1024 {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("`{k}` must be 1 to 1024 characters"),
                );
            }
            let slot = match k.as_ref() {
                "sid" => &mut sid,
                "sub" => &mut sub,
                "issuer" => &mut issuer,
                "actor" => &mut actor,
                other => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter `{other}` (known: sid, sub, issuer, actor)"),
                    )
                }
            };
            *slot = Some(v.into_owned());
        }
        if sid.is_some() == sub.is_some() {
            return json_error(
                StatusCode::BAD_REQUEST,
                "give exactly one of `sid` or `sub`".into(),
            );
        }
        let issuers: Vec<String> = self
            .shared
            .validator
            .issuers()
            .map(|i| i.issuer.clone())
            .collect();
        let issuer = match issuer {
            Some(i) if issuers.contains(&i) => i,
            Some(i) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("`{i}` is not a configured issuer"),
                )
            }
            None if issuers.len() == 1 => issuers[0].clone(),
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "several issuers are configured: give `issuer` (one of {})",
                        issuers.join(", ")
                    ),
                )
            }
        };
        if self.shared.access.sessions().is_none() {
            return json_error(
                StatusCode::CONFLICT,
                "sessions are not configured (gateway.yaml `sessions`): nothing to revoke".into(),
            );
        }
        let request_id = uuid::Uuid::now_v7().to_string();
        let slot = match self.shared.audit.reserve() {
            Ok(s) => s,
            Err(e) => {
                self.shared.note_audit_failure(&e);
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit unavailable; nothing was changed".into(),
                );
            }
        };
        let result = self.shared.revoke(&issuer, sid.as_deref(), sub.as_deref()).await;
        let outcome = crate::proxy::LogoutOutcome {
            reason: Some(result.err().unwrap_or(phigate_policy::Reason::Revoked)),
            issuer: Some(issuer.clone()),
            sid: sid.clone(),
            sub: sub.clone(),
            jti: None,
            detail: None,
        };
        let reason = outcome.reason.unwrap_or(phigate_policy::Reason::Revoked);
        let status = if reason == phigate_policy::Reason::Revoked {
            200
        } else {
            503
        };
        let mut record = outcome.record(phigate_audit::LogoutSource::Admin, &request_id, status);
        record.client_ip = peer;
        record.actor = actor.clone();
        let audited = self.shared.audit_logout(slot, record).await;
        let reason = if audited {
            reason
        } else {
            phigate_policy::Reason::AuditUnavailable
        };
        self.shared
            .metrics
            .logouts
            .with_label_values(&["admin", reason.as_str()])
            .inc();
        if reason != phigate_policy::Reason::Revoked {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, reason.as_str().to_string());
        }
        tracing::warn!(issuer = %issuer, sid = sid.as_deref(), sub = sub.as_deref(), actor = actor.as_deref(), "sessions revoked by an administrator");
        reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({
                "revoked": { "issuer": issuer, "sid": sid, "sub": sub },
                "request_id": request_id,
            })
            .to_string(),
        )
    }

    fn route(&self, method: &http::Method, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        #[cfg(not(feature = "dev"))]
        let _ = query; // only the dev issuer's /dev/token reads it
        if method != http::Method::GET && method != http::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
        }
        match path {
            "/metrics" => {
                self.shared.metrics.observe_validator(&self.shared.validator);
                self.shared.metrics.observe_sinks(&self.shared.sinks);
                if let Some(store) = self.shared.access.sessions() {
                    self.shared.metrics.observe_sessions(&store.stats());
                }
                self.shared
                    .metrics
                    .observe_upstreams(&self.shared.upstreams.health());
                let (ready, _) = self.readiness();
                self.shared.metrics.ready.set(i64::from(ready));
                let body = self.shared.metrics.render(&self.shared.audit.stats());
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                let (ready, detail) = self.readiness();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                reply(status, "application/json", detail.to_string())
            }
            #[cfg(feature = "dev")]
            "/dev/jwks.json" | "/dev/token" | "/dev/logout-token" => match &self.dev {
                Some(dev) if path == "/dev/jwks.json" => {
                    reply(StatusCode::OK, "application/json", dev.jwks_json())
                }
                Some(dev) if path == "/dev/logout-token" => {
                    match dev.logout_token_from_query(query.unwrap_or("")) {
                        Ok(t) => reply(StatusCode::OK, "text/plain", t),
                        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                    }
                }
                Some(dev) => match dev.token_from_query(query.unwrap_or("")) {
                    Ok(t) => reply(StatusCode::OK, "text/plain", t),
                    Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                },
                None => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        if path == "/sessions/revoke" {
            let peer = session.client_addr().map(|a| a.to_string());
            return self.revoke(&method, query.as_deref(), peer).await;
        }
        self.route(&method, &path, query.as_deref())
    }
}
