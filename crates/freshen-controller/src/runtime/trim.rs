//! What the watch caches keep of each object: only the fields freshen
//! reads. A cluster's pods carry volumes, env, resources, probes and
//! managed fields freshen never looks at; kept whole, 10,000 of them cost
//! hundreds of MiB. Each function here is applied to every object as it
//! arrives (`WatchStreamExt::modify`), before it reaches the store.
//!
//! Pods arrive already small: they are read into `CachedPod`
//! ([`crate::runtime::cached`]), which has only the fields freshen reads; [`pod`]
//! drops the metadata and conditions it does not.
//!
//! Workloads arrive already small too: read into `CachedWorkload`,
//! which keeps of the pod template the containers (names, images and each
//! one's fingerprint of the whole template), the pull secrets, the service
//! account and freshen's restart stamp. A canary, which copies the whole
//! template, is made from a fresh GET: one read per refresh, not a cache
//! of every template.

use k8s_openapi::api::core::v1::{Namespace, Node, NodeStatus, NodeSystemInfo, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use freshen_core::kind::Kind;

/// Annotations of other tools freshen reads: Argo CD's tracking id (which
/// marks a workload a GitOps reconciler manages).
const FOREIGN_ANNOTATIONS: [&str; 1] = ["argocd.argoproj.io/tracking-id"];

/// The metadata every kept object needs: identity, labels, owners,
/// deletion; of the annotations only freshen's own (`freshen.dev/...`) and
/// the [`FOREIGN_ANNOTATIONS`].
fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| {
            k.starts_with("freshen.dev/") || FOREIGN_ANNOTATIONS.contains(&k.as_str())
        });
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A workload (already only what [`CachedWorkload`] reads), stamped with
/// the kind its watch reads: its metadata as [`metadata`] keeps it. One
/// measured as part of its owner (a Deployment's ReplicaSet, a CronJob's
/// Job) keeps only its metadata: its owner reference is all freshen reads
/// of it, and a cluster holds one such ReplicaSet or more per Deployment.
pub fn workload(workload: &mut CachedWorkload, kind: Kind) {
    workload.stamp(kind);
    metadata(&mut workload.metadata);
    let owner = workload
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str());
    if freshen_core::kind::measured_by_owner(kind, owner) {
        workload.spec = None;
        workload.status = None;
        workload.metadata.labels = None;
        workload.metadata.annotations = None;
    }
}

/// A pod (already only what [`CachedPod`] reads): its metadata as
/// [`metadata`] keeps it, of its init containers only native sidecars,
/// and of its conditions only Ready.
pub fn pod(pod: &mut CachedPod) {
    metadata(&mut pod.metadata);
    if let Some(spec) = pod.spec.as_mut() {
        spec.init_containers
            .retain(|c| freshen_core::kind::is_sidecar(c.restart_policy.as_deref()));
    }
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        conditions.retain(|c| c.type_ == "Ready");
    }
}

/// A ServiceAccount: its imagePullSecrets.
pub fn service_account(sa: &mut ServiceAccount) {
    metadata(&mut sa.metadata);
    sa.metadata.labels = None;
    sa.secrets = None;
}

/// A Namespace: its labels (for namespace selectors).
pub fn namespace(ns: &mut Namespace) {
    metadata(&mut ns.metadata);
    ns.spec = None;
    ns.status = None;
}

/// A Node: its labels and the os and architecture its kubelet reports
/// (not its image list, conditions or capacity).
pub fn node(node: &mut Node) {
    metadata(&mut node.metadata);
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        node_info: status.node_info.map(|info| NodeSystemInfo {
            operating_system: info.operating_system,
            architecture: info.architecture,
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::ResourceExt;
    use serde_json::json;

    #[test]
    fn a_trimmed_pod_keeps_what_freshen_reads() -> Result<(), serde_json::Error> {
        let mut p: CachedPod = serde_json::from_value(json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web", "pod-template-hash": "abc"},
                "annotations": {"freshen.dev/restarted-by": "r1", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs", "controller": true}],
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {
                "nodeName": "n1",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "b"}], "args": ["x"]}],
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "reg/app:1", "imageID": "reg/app@sha256:1", "ready": true, "restartCount": 2,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
            },
        }))?;
        let before_facts = crate::workload::pod_facts(&p);
        let before_health = crate::refresh::pod_health(&p);
        let before_owner = crate::runtime::objects::owning_workload(&p);
        pod(&mut p);
        assert_eq!(
            format!("{:?}", crate::workload::pod_facts(&p)),
            format!("{before_facts:?}")
        );
        assert_eq!(
            format!("{:?}", crate::refresh::pod_health(&p)),
            format!("{before_health:?}")
        );
        assert_eq!(crate::runtime::objects::owning_workload(&p), before_owner);
        let value = serde_json::to_value(&p)?;
        assert_eq!(
            value["metadata"]["annotations"],
            json!({"freshen.dev/restarted-by": "r1"})
        );
        assert!(
            value["spec"]["volumes"].is_null() && value["spec"]["containers"][0]["env"].is_null()
        );
        assert!(value["metadata"]["managedFields"].is_null() && value["status"]["podIP"].is_null());
        Ok(())
    }

    fn whole_deployment() -> serde_json::Value {
        json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "generation": 3,
                "labels": {"app": "web", "argocd.argoproj.io/instance": "shop"},
                "annotations": {
                    "freshen.dev/rejected-digests": "app=sha256:1",
                    "argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/web",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                },
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {
                        "creationTimestamp": null,
                        "labels": {"app": "web"},
                        "annotations": {
                            "freshen.dev/restarted-by": "r1",
                            "prometheus.io/scrape": "true",
                        },
                    },
                    "spec": {
                        "serviceAccountName": "web",
                        "imagePullSecrets": [{"name": "regcred"}],
                        "volumes": [{"name": "v", "emptyDir": {}}],
                        "initContainers": [{"name": "init", "image": "reg/init:1", "args": ["x"]}],
                        "containers": [
                            {"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "b"}]},
                            {"name": "side", "image": "reg/side:2", "resources": {"limits": {"cpu": "1"}}},
                        ],
                    },
                },
            },
            "status": {
                "observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3,
                "conditions": [{"type": "Available", "status": "True"}],
            },
        })
    }

    #[test]
    fn a_replicaset_a_deployment_owns_keeps_only_its_identity() -> Result<(), serde_json::Error> {
        let mut whole = whole_deployment();
        whole["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u",
                    "controller": true}]);
        let mut rs: CachedWorkload = serde_json::from_value(whole.clone())?;
        workload(&mut rs, Kind::ReplicaSet);
        assert_eq!(rs.kind, Kind::ReplicaSet);
        assert!(rs.spec.is_none() && rs.status.is_none());
        assert_eq!(rs.metadata.name.as_deref(), Some("web"));
        assert_eq!(rs.owner_references().len(), 1);
        // A ReplicaSet of its own keeps what it is measured by.
        whole["metadata"]["ownerReferences"] = json!([]);
        let mut own: CachedWorkload = serde_json::from_value(whole)?;
        workload(&mut own, Kind::ReplicaSet);
        assert!(own.template().is_some_and(|t| t.containers.len() == 2));
        Ok(())
    }

    /// What the watch caches of `whole`: read as `CachedWorkload`, then
    /// trimmed.
    fn cached(whole: &serde_json::Value) -> Result<CachedWorkload, serde_json::Error> {
        let mut d: CachedWorkload = serde_json::from_value(whole.clone())?;
        workload(&mut d, Kind::Deployment);
        Ok(d)
    }

    #[test]
    fn a_cached_deployment_keeps_what_freshen_reads() -> Result<(), serde_json::Error> {
        let whole = whole_deployment();
        let typed: Deployment = serde_json::from_value(whole.clone())?;
        let d = cached(&whole)?;
        let template = typed.spec.as_ref().map(|s| &s.template);
        let containers: Vec<_> = d
            .containers()
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_deref()))
            .collect();
        assert_eq!(
            containers,
            [("app", Some("reg/app:1")), ("side", Some("reg/side:2"))]
        );
        for c in d.containers() {
            assert_eq!(
                Some(c.fingerprint.clone()),
                template.map(|t| crate::runtime::cached::fingerprint_of(t, &c.name))
            );
        }
        let kept = d.template().cloned().unwrap_or_default();
        assert_eq!(kept.image_pull_secrets, ["regcred"]);
        assert_eq!(kept.service_account_name.as_deref(), Some("web"));
        assert_eq!(kept.restarted_by.as_deref(), Some("r1"));
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
        assert_eq!(
            d.status.as_ref().and_then(|s| s.available_replicas),
            Some(3)
        );
        assert_eq!(d.annotations().len(), 2, "{:?}", d.annotations());
        assert_eq!(d.labels(), typed.labels());
        assert!(d.metadata.managed_fields.is_none());
        // A fresh read, converted, is what the cache holds (bar the
        // metadata the cache trims): the two are compared before a canary
        // is made.
        let mut converted = CachedWorkload::from(&typed);
        workload(&mut converted, Kind::Deployment);
        assert_eq!(converted, d);
        Ok(())
    }

    #[test]
    fn any_edit_of_the_whole_template_changes_the_cached_fingerprint()
    -> Result<(), serde_json::Error> {
        let fingerprint = |d: &serde_json::Value| -> Result<Option<String>, serde_json::Error> {
            Ok(crate::runtime::objects::template_fingerprint(
                &cached(d)?,
                "app",
            ))
        };
        let whole = whole_deployment();
        let before = fingerprint(&whole)?;
        assert!(before.is_some());
        let mut edited = whole.clone();
        edited["spec"]["template"]["spec"]["volumes"] = json!(null);
        assert_ne!(fingerprint(&edited)?, before);
        let mut init = whole.clone();
        init["spec"]["template"]["spec"]["initContainers"][0]["image"] = json!("reg/init:2");
        assert_ne!(fingerprint(&init)?, before);
        // What a refresh itself changes does not count: the container's
        // image, and freshen's restart stamp (even as the only annotation).
        let mut refreshed = whole.clone();
        refreshed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("reg/app@sha256:2");
        assert_eq!(fingerprint(&refreshed)?, before);
        let mut restarted = whole.clone();
        restarted["spec"]["template"]["metadata"]["annotations"]["freshen.dev/restarted-by"] =
            json!("r2");
        assert_eq!(fingerprint(&restarted)?, before);
        let mut unstamped = whole.clone();
        unstamped["spec"]["template"]["metadata"]["annotations"] =
            json!({"prometheus.io/scrape": "true"});
        assert_eq!(fingerprint(&unstamped)?, before);
        // Another container's image does.
        let mut side = whole.clone();
        side["spec"]["template"]["spec"]["containers"][1]["image"] = json!("reg/side:3");
        assert_ne!(fingerprint(&side)?, before);
        Ok(())
    }

    #[test]
    fn a_trimmed_node_keeps_its_platform() -> Result<(), serde_json::Error> {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}},
            "status": {
                "nodeInfo": {"operatingSystem": "linux", "architecture": "arm64", "kubeletVersion": "v1.36.3",
                    "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
                    "machineID": "", "osImage": "", "systemUUID": ""},
                "images": [{"names": ["reg/app:1"], "sizeBytes": 1}],
            },
        }))?;
        let before = crate::workload::assess::node_platform(&n);
        node(&mut n);
        assert_eq!(crate::workload::assess::node_platform(&n), before);
        assert!(serde_json::to_value(&n)?["status"]["images"].is_null());
        Ok(())
    }
}
