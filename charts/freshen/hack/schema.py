#!/usr/bin/env python3
"""Writes values.schema.json: every key of values.yaml with its type, and no
other key (additionalProperties: false at every level we own). Run it after
changing values.yaml (`python3 charts/freshen/hack/schema.py`); a test
checks the committed schema is what this writes.
"""
import json
import pathlib
import sys

DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w))+$",
            "description": "A duration such as 30s, 5m, 1h, 7d"}
OPT_DURATION = {"type": "string", "pattern": r"^(([0-9]+(ms|s|m|h|d|w))+)?$"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
POS = {"type": "integer", "minimum": 1}
STRS = {"type": "array", "items": {"type": "string", "minLength": 1}}
MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ANY_OBJ = {"type": "object"}
OBJS = {"type": "array", "items": {"type": "object"}}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
RENDER = {"type": "string", "enum": ["skipIfMissing", "failIfMissing", "alwaysRender"]}
NS = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def obj(props, required=None):
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        o["required"] = required
    return o


SCHEMA = {
    "$schema": "https://json-schema.org/draft-07/schema#",
    "title": "freshen chart values",
    **obj({
        "global": ANY_OBJ,
        "replicaCount": INT,
        "image": obj({
            "repository": {"type": "string", "minLength": 1},
            "tag": STR,
            "digest": {"type": "string", "pattern": "^(sha256:[0-9a-f]{64})?$"},
            "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
        }),
        "imagePullSecrets": OBJS,
        "nameOverride": STR,
        "fullnameOverride": STR,
        "commonLabels": MAP,
        "crds": obj({"enabled": BOOL, "keep": BOOL}),
        "admissionPolicies": obj({"enabled": BOOL}),
        "serviceAccount": obj({"create": BOOL, "name": STR, "annotations": MAP}),
        "rbac": obj({"create": BOOL, "aggregateToDefaultRoles": BOOL}),
        "watchNamespaces": {"type": "array", "items": NS, "maxItems": 1,
                            "description": "Empty (all namespaces) or one namespace"},
        "secrets": obj({
            "read": {"type": "string", "enum": ["all", "namespaces", "none"]},
            "namespaces": {"type": "array", "items": NS},
        }),
        "workloadKinds": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "contains": {"const": "Deployment"},
            "items": {"type": "string", "enum": [
                "Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job",
                "ReplicaSet", "Rollout", "Pod"]},
            "description": "Kinds of workload watched and measured; Deployment is required",
        },
        "pipelines": obj({
            "job": obj({"enabled": BOOL}),
            "tekton": obj({"enabled": BOOL}),
            "webhook": obj({"enabled": BOOL}),
            "namespaces": {"type": "array", "items": NS},
        }),
        "leaderElection": obj({"enabled": BOOL, "leaseDuration": DURATION, "leaseName": NS}),
        "config": obj({
            "logFormat": {"type": "string", "enum": ["text", "json"]},
            "logLevel": {"type": "string", "minLength": 1},
            "pollInterval": DURATION,
            "retryInterval": DURATION,
            "maxConcurrentRefreshes": INT,
            "maxConcurrentRefreshesPerNamespace": INT,
            "maxAnalysisTime": DURATION,
            "tagRecordBurst": POS,
            "maxTagRecordsPerNamespace": POS,
            "maxTagRecords": POS,
            "tagRecordRetention": DURATION,
            "refreshHistory": INT,
            "rebuildHistory": POS,
            "prometheusUrl": {"type": "string", "pattern": "^(https?://.+)?$"},
            "defaultMaxImageAge": OPT_DURATION,
            "defaultMaxContainerAge": OPT_DURATION,
            "platform": {"type": "string", "pattern": "^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$"},
        }),
        "registry": obj({
            "timeout": DURATION,
            "concurrency": POS,
            "qps": {"type": "number", "exclusiveMinimum": 0},
            "burst": POS,
            "plainHttp": STRS,
            "mirrors": MAP,
            "allow": STRS,
            "deny": STRS,
            "caBundle": obj({"configMap": STR, "key": {"type": "string", "minLength": 1}}),
        }),
        "notifications": obj({
            "enabled": BOOL,
            "port": PORT,
            "tokenSecret": obj({"name": STR, "key": {"type": "string", "minLength": 1}}),
            "signingSecret": obj({"name": STR, "key": {"type": "string", "minLength": 1}}),
            "debounce": DURATION,
        }),
        "extraArgs": STRS,
        "extraEnv": OBJS,
        "extraVolumes": OBJS,
        "extraVolumeMounts": OBJS,
        "metrics": obj({
            "port": PORT,
            "auth": {"type": "string", "enum": ["kubernetes", "none"]},
            "readers": OBJS,
            "service": obj({
                "enabled": BOOL,
                "type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "annotations": MAP,
            }),
            "serviceMonitor": obj({
                "enabled": BOOL, "renderMode": RENDER, "interval": DURATION,
                "scrapeTimeout": DURATION, "labels": MAP,
            }),
        }),
        "prometheusRule": obj({"enabled": BOOL, "renderMode": RENDER, "labels": MAP}),
        "dashboard": obj({"enabled": BOOL, "labels": MAP, "annotations": MAP, "namespace": STR}),
        "networkPolicy": obj({"enabled": BOOL, "metricsFrom": OBJS, "notificationsFrom": OBJS}),
        "podDisruptionBudget": obj({
            "enabled": BOOL,
            "minAvailable": {"type": ["integer", "string"]},
        }),
        "resources": ANY_OBJ,
        "podSecurityContext": ANY_OBJ,
        "securityContext": ANY_OBJ,
        "deploymentAnnotations": MAP,
        "podAnnotations": MAP,
        "podLabels": MAP,
        "priorityClassName": STR,
        "nodeSelector": MAP,
        "tolerations": OBJS,
        "affinity": ANY_OBJ,
        "topologySpreadConstraints": OBJS,
        "terminationGracePeriodSeconds": INT,
        "gitops": obj({"flux": BOOL, "argocd": BOOL, "argocdNamespace": NS, "batchWindow": DURATION}),
    }),
}


def main():
    """Writes the file; to the path given as the argument instead (a test
    compares that with the committed one)."""
    out = pathlib.Path(__file__).resolve().parent.parent / "values.schema.json"
    if len(sys.argv) > 1:
        out = pathlib.Path(sys.argv[1])
    out.write_text(json.dumps(SCHEMA, indent=2) + "\n")


if __name__ == "__main__":
    main()
