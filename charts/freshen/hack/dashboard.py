#!/usr/bin/env python3
"""Writes files/dashboard.json, freshen's Grafana dashboard.

Kept as a generator so that every panel is one readable line below; run it
after changing a panel (`python3 charts/freshen/hack/dashboard.py`). A test
checks the committed JSON is what this writes, and the e2e suite sends every
expression to the harness' real Prometheus.
"""
import json
import pathlib
import sys

NS = 'namespace=~"$namespace"'
DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, type, [(expr, legend)], unit, width, height, description)
PANELS = [
    ("Workloads measured", "stat",
     [(f'count(count by (namespace, kind, workload) (freshen_container_age_seconds{{{NS}}}))', "workloads")],
     "short", 4, 4, "Deployments freshen measures (opted in)."),
    ("Images past their limit", "stat",
     [(f'count(freshen_image_age_seconds{{{NS}}} > on (namespace, workload, container, image) freshen_policy_max_image_age_seconds) or vector(0)', "containers")],
     "short", 4, 4, "Containers whose image is older than the max image age in force."),
    ("Stale bases", "stat",
     [(f'count(freshen_base_image_stale{{{NS}}} == 1) or vector(0)', "containers")],
     "short", 4, 4, "Containers built on a base image whose tag has moved to a newer digest."),
    ("Updates available", "stat",
     [(f'sum(freshen_image_update_available{{{NS}}}) or vector(0)', "containers")],
     "short", 4, 4, "Containers whose tag names a digest no pod runs yet."),
    ("Refreshes under way", "stat",
     [('sum(freshen_refreshes_active) or vector(0)', "active")],
     "short", 4, 4, "Refreshes in a non-terminal phase."),
    ("Leader", "stat",
     [('sum(freshen_leader)', "leaders")],
     "short", 4, 4, "Replicas that lead: 1 is healthy, 0 means nothing acts."),
    ("Fleet image age (days)", "histogram",
     [(f'freshen_image_age_seconds{{{NS}}} / 86400', "{{namespace}}/{{workload}}/{{container}}")],
     "short", 12, 8, "Distribution of image ages across every measured container."),
    ("Worst workloads against their image age limit", "table",
     [(f'topk(20, freshen_image_age_seconds{{{NS}}} / on (namespace, workload, container, image) freshen_policy_max_image_age_seconds)', "")],
     "percentunit", 12, 8, "Image age as a share of the limit; above 100% is a violation."),
    ("Container age against its limit", "timeseries",
     [(f'topk(10, freshen_container_age_seconds{{{NS}}} / on (namespace, workload, container, image) freshen_policy_max_container_age_seconds)', "{{namespace}}/{{workload}}/{{container}}")],
     "percentunit", 12, 8, "Running time as a share of the max container age."),
    ("Stale bases (days since the base moved)", "table",
     [(f'freshen_base_image_stale_seconds{{{NS}}} / 86400', "")],
     "short", 12, 8, "Containers on a superseded base and for how long."),
    ("Refresh outcomes", "timeseries",
     [('sum by (outcome) (increase(freshen_refreshes_total[$__rate_interval]))', "{{outcome}}")],
     "short", 8, 8, "Finished refreshes by outcome: Succeeded, RolledBack, Failed."),
    ("Rollbacks by cause", "timeseries",
     [('sum by (reason) (increase(freshen_rollbacks_total[$__rate_interval]))', "{{reason}}")],
     "short", 8, 8, "Why canaries were rolled back."),
    ("Rebuilds", "timeseries",
     [('sum by (kind, outcome) (increase(freshen_rebuilds_total[$__rate_interval]))', "{{kind}} {{outcome}}"),
      ('sum by (kind) (freshen_rebuilds_active)', "{{kind}} active")],
     "short", 8, 8, "Rebuild pipeline runs ended, and those running or backing off."),
    ("Registry requests", "timeseries",
     [('sum by (registry, code) (rate(freshen_registry_requests_total[$__rate_interval]))', "{{registry}} {{code}}")],
     "reqps", 12, 8, "Requests per second to each registry, by HTTP status (error: no answer)."),
    ("Registry errors", "timeseries",
     [('sum by (registry) (rate(freshen_registry_requests_total{code=~"4..|5..|error"}[$__rate_interval])) or vector(0)', "{{registry}}")],
     "reqps", 12, 8, "Failed registry requests per second: 401/403 credentials, 404 gone, 429 rate-limited, 5xx, transport errors."),
]


def panel(i, x, y, spec):
    title, kind, targets, unit, w, h, description = spec
    p = {
        "id": i + 1,
        "title": title,
        "description": description,
        "type": kind,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + j),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "instant": kind in ("stat", "table", "histogram"),
                "range": kind == "timeseries",
            }
            for j, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "table":
        p["transformations"] = [{"id": "labelsToFields", "options": {}}]
    return p


def dashboard():
    panels, x, y, row_h = [], 0, 0, 0
    for i, spec in enumerate(PANELS):
        w, h = spec[4], spec[5]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(panel(i, x, y, spec))
        x, row_h = x + w, max(row_h, h)
    return {
        "title": "freshen",
        "uid": "freshen-overview",
        "description": "Image age, container age, stale bases, refreshes, rebuilds and registry health, from freshen's metrics.",
        "tags": ["freshen"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "datasource": DS, "label": "Namespace",
             "query": "label_values(freshen_image_age_seconds, namespace)",
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        ]},
        "panels": panels,
    }


def main():
    """Writes the file; to the path given as the argument instead (a test
    compares that with the committed one)."""
    out = pathlib.Path(__file__).resolve().parent.parent / "files" / "dashboard.json"
    if len(sys.argv) > 1:
        out = pathlib.Path(sys.argv[1])
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")


if __name__ == "__main__":
    main()
