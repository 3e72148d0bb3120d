#!/usr/bin/env python3
"""Structural checks of the Prometheus Operator objects in a rendered
Kustomize output (no offline schema for these CRDs): required fields and
types of PodMonitor/ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1),
a PodMonitor port that exists on the selected pods, and each PrometheusRule's
spec written out as a rule file for `promtool check rules`.

    check-crds.py RENDERED.yaml OUTDIR
(PyYAML comes with kubernetes-validate.)"""
import sys, yaml

rendered, outdir = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

pod_ports = {}  # container port names by pod template labels
for d in docs:
    if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
        tpl = d["spec"]["template"]
        labels = tpl["metadata"].get("labels", {})
        names = {p.get("name") for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
        pod_ports[tuple(sorted(labels.items()))] = names

def selected_ports(selector):
    want = selector.get("matchLabels", {})
    found = set()
    for labels, names in pod_ports.items():
        if all(dict(labels).get(k) == v for k, v in want.items()):
            found |= names
    return found

n_rules = 0
for d in docs:
    kind, name = d.get("kind"), d.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    if kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        need(d.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion must be monitoring.coreos.com/v1")
        need(isinstance(name, str) and name, f"{where}: metadata.name")
    if kind == "PodMonitor":
        spec = d.get("spec", {})
        sel = spec.get("selector")
        need(isinstance(sel, dict) and sel.get("matchLabels"), f"{where}: spec.selector.matchLabels")
        eps = spec.get("podMetricsEndpoints")
        need(isinstance(eps, list) and eps, f"{where}: spec.podMetricsEndpoints")
        for ep in eps or []:
            need(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret"},
                 f"{where}: unknown endpoint fields {sorted(set(ep))}")
            need(isinstance(ep.get("port"), str), f"{where}: endpoint port must be a named port")
            need(ep.get("port") in selected_ports(sel or {}), f"{where}: port {ep.get('port')!r} is not a container port of the selected pods")
            need(str(ep.get("path", "/metrics")).startswith("/"), f"{where}: path")
    if kind == "PrometheusRule":
        groups = d.get("spec", {}).get("groups")
        need(isinstance(groups, list) and groups, f"{where}: spec.groups")
        for g in groups or []:
            need(isinstance(g.get("name"), str), f"{where}: group name")
            for r in g.get("rules", []):
                need(("alert" in r) != ("record" in r), f"{where}: rule must be an alert or a record: {r}")
                need(isinstance(r.get("expr"), str), f"{where}: expr")
        n_rules += 1
        with open(f"{outdir}/prometheusrule-{name}.yml", "w") as f:
            yaml.safe_dump({"groups": groups}, f)

if errors:
    for e in errors:
        print(f"check-crds: {rendered}: {e}", file=sys.stderr)
    sys.exit(1)
print(f"check-crds: {rendered}: ok ({n_rules} PrometheusRule, monitors checked)")
