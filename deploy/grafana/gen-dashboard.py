#!/usr/bin/env python3
"""Writes phigate.json, the Grafana dashboard (schemaVersion 39, Grafana 10+).
Edit here and re-run; scripts/test-deploy checks that every metric the
dashboard queries exists in a real /metrics scrape of phigate."""
import json, pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, desc="", legend=None):
    n = len(panels)
    p = {
        "id": n + 1, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": (n % 2) * 12 if w == 12 else 0, "y": (n // 2) * h, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(exprs)],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}}
    panels.append(p)

sel = '{job=~"$job", instance=~"$instance"}'
def s(extra=""):
    return '{job=~"$job", instance=~"$instance"' + (", " + extra if extra else "") + "}"
R = "$__rate_interval"
panel("Requests by decision", [(f"sum by (decision) (rate(phigate_requests_total{sel}[{R}]))", "{{decision}}")], "reqps")
DENY = s('decision="deny"')
panel("Denials by reason", [(f"sum by (reason) (rate(phigate_requests_total{DENY}[{R}]))", "{{reason}}")], "reqps",
      desc="The reason vocabulary is shared with the audit record and the response body.")
panel("Requests by route", [(f"sum by (route) (rate(phigate_requests_total{sel}[{R}]))", "{{route}}")], "reqps")
panel("Latency (phigate + upstream)", [
    (f"histogram_quantile({q}, sum by (le) (rate(phigate_request_duration_seconds_bucket{sel}[{R}])))", f"p{int(q*100)}")
    for q in (0.5, 0.95, 0.99)], "s")
panel("Decision core latency p99", [(f"histogram_quantile(0.99, sum by (le) (rate(phigate_decide_duration_seconds_bucket{sel}[{R}])))", "p99")], "s")
panel("Token cache hit ratio", [(
    f"sum(rate(phigate_token_cache_hits_total{sel}[{R}])) / (sum(rate(phigate_token_cache_hits_total{sel}[{R}])) + sum(rate(phigate_token_cache_misses_total{sel}[{R}])))",
    "hit ratio")], "percentunit")
panel("JWKS age by issuer", [(f"max by (issuer) (phigate_jwks_age_seconds{sel})", "{{issuer}}")], "s",
      desc="Seconds since the issuer's keys were last fetched; alert PhigateJwksStale above 1 h.")
panel("JWKS fetches by result", [(f"sum by (issuer, result) (increase(phigate_jwks_fetch_total{sel}[{R}]))", "{{issuer}} {{result}}")])
panel("Audit queue depth", [(f"max by (instance) (phigate_audit_queue_depth{sel})", "{{instance}}")])
panel("Audit spool fill", [(f"max by (instance) (phigate_audit_spool_bytes{sel} / phigate_audit_spool_max_bytes{sel})", "{{instance}}")],
      "percentunit", desc="At 100% phigate fails closed (503 audit_unavailable).")
panel("Audit sink lag", [(f"max by (instance, sink) (phigate_audit_sink_lag_records{sel})", "{{instance}} {{sink}}")],
      desc="Spool records not yet acknowledged by each sink.")
panel("Audit fail-closed denials", [(f"sum by (instance) (increase(phigate_audit_fail_closed_total{sel}[{R}]))", "{{instance}}")])
panel("Break-glass accesses", [(f"sum by (instance) (increase(phigate_break_glass_total{sel}[{R}]))", "{{instance}}")],
      desc="Every emergency access must be reviewed: `phigate audit` filters break_glass=true.")
panel("Shadow-mode denials by route", [(f"sum by (route, reason) (increase(phigate_shadow_denials_total{sel}[{R}]))", "{{route}} {{reason}}")])
panel("Upstream addresses healthy", [(f"min by (upstream, address) (phigate_upstream_healthy{sel})", "{{upstream}} {{address}}")])
panel("Policy reload", [(f"min by (instance) (phigate_policy_last_reload_success{sel})", "last reload ok {{instance}}"),
                        (f"count by (version) (phigate_policy_info{sel})", "version {{version}}")])

dash = {
    "title": "phigate", "uid": "phigate", "tags": ["phigate", "fhir", "hipaa"],
    "schemaVersion": 39, "version": 1, "editable": True, "timezone": "utc",
    "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "job", "type": "query", "datasource": DS, "query": "label_values(phigate_requests_total, job)",
         "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        {"name": "instance", "type": "query", "datasource": DS,
         "query": 'label_values(phigate_requests_total{job=~"$job"}, instance)',
         "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2},
    ]},
    "panels": panels,
}
out = pathlib.Path(__file__).with_name("phigate.json")
out.write_text(json.dumps(dash, indent=2) + "\n")
