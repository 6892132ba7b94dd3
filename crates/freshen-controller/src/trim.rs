//! What the watch caches keep of each object: only the fields freshen
//! reads. A cluster's pods carry volumes, env, resources, probes and
//! managed fields freshen never looks at; kept whole, 10,000 of them cost
//! hundreds of MiB. Each function here is applied to every object as it
//! arrives (`WatchStreamExt::modify`), before it reaches the store.
//!
//! Pods arrive already small: they are read into `CachedPod`
//! ([`crate::cached`]), which has only the fields freshen reads; [`pod`]
//! drops the metadata and conditions it does not.
//!
//! Deployments keep their pod template's containers (names and images),
//! pull secrets and service account, and the template's fingerprint per
//! container, computed from the whole template as it arrives
//! ([`deployment`]). A canary, which copies the whole template, is made
//! from a fresh GET: one read per refresh, not a cache of every template.

use std::collections::BTreeMap;

use freshen_api::refresh::RESTARTED_BY;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeStatus, NodeSystemInfo, PodSpec, PodTemplateSpec,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cached::CachedPod;

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

/// A Deployment: metadata, replicas, selector and rollout status; of its
/// pod template the containers' names and images, the pull secrets, the
/// service account, freshen's restart stamp, and (under
/// [`crate::deployment::CACHED_FINGERPRINT`]) each container's template
/// fingerprint, computed here from the whole template before it is
/// dropped.
pub fn deployment(deploy: &mut Deployment) {
    metadata(&mut deploy.metadata);
    let fingerprints: BTreeMap<String, String> = crate::assess::template_containers(deploy)
        .into_iter()
        .map(|c| c.name)
        .filter_map(|name| {
            let fingerprint = crate::deployment::computed_fingerprint(deploy, &name)?;
            Some((
                crate::deployment::cached_fingerprint_key(&name),
                fingerprint,
            ))
        })
        .collect();
    deploy.spec = deploy.spec.take().map(|spec| {
        let template = spec.template;
        let mut annotations = fingerprints;
        annotations.insert(
            crate::deployment::CACHED_FINGERPRINT.to_owned(),
            String::new(),
        );
        if let Some(stamp) = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTARTED_BY))
        {
            annotations.insert(RESTARTED_BY.to_owned(), stamp.clone());
        }
        DeploymentSpec {
            replicas: spec.replicas,
            selector: spec.selector,
            paused: spec.paused,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: template.metadata.and_then(|m| m.labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: template.spec.map(|pod| PodSpec {
                    containers: pod.containers.iter().map(container).collect(),
                    init_containers: pod
                        .init_containers
                        .map(|cs| cs.iter().map(container).collect()),
                    image_pull_secrets: pod.image_pull_secrets,
                    service_account_name: pod.service_account_name,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }
    });
    deploy.status = deploy.status.take().map(|status| DeploymentStatus {
        conditions: None,
        ..status
    });
}

/// A container: its name and image.
fn container(c: &Container) -> Container {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        ..Container::default()
    }
}

/// A pod (already only what [`CachedPod`] reads): its metadata as
/// [`metadata`] keeps it, and of its conditions only Ready.
pub fn pod(pod: &mut CachedPod) {
    metadata(&mut pod.metadata);
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
        let before_owner = crate::deployment::owning_deployment(&p);
        pod(&mut p);
        assert_eq!(
            format!("{:?}", crate::workload::pod_facts(&p)),
            format!("{before_facts:?}")
        );
        assert_eq!(
            format!("{:?}", crate::refresh::pod_health(&p)),
            format!("{before_health:?}")
        );
        assert_eq!(crate::deployment::owning_deployment(&p), before_owner);
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

    fn whole_deployment() -> Result<Deployment, serde_json::Error> {
        serde_json::from_value(json!({
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
        }))
    }

    #[test]
    fn a_trimmed_deployment_keeps_what_freshen_reads() -> Result<(), serde_json::Error> {
        let whole = whole_deployment()?;
        let mut d = whole.clone();
        deployment(&mut d);
        for container in ["app", "side"] {
            let state =
                |d: &Deployment| format!("{:?}", crate::refresh::workload_state(d, container));
            assert_eq!(state(&d), state(&whole));
            assert_eq!(
                crate::deployment::template_fingerprint(&d, container),
                crate::deployment::computed_fingerprint(&whole, container)
            );
        }
        assert_eq!(
            format!("{:?}", crate::assess::template_containers(&d)),
            format!("{:?}", crate::assess::template_containers(&whole))
        );
        assert_eq!(d.annotations().len(), 2, "{:?}", d.annotations());
        assert_eq!(d.labels(), whole.labels());
        let value = serde_json::to_value(&d)?;
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "web");
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(
            pod["initContainers"],
            json!([{"name": "init", "image": "reg/init:1"}])
        );
        assert!(pod["volumes"].is_null() && pod["containers"][0]["env"].is_null());
        assert!(
            value["status"]["conditions"].is_null() && value["metadata"]["managedFields"].is_null()
        );
        Ok(())
    }

    #[test]
    fn any_edit_of_the_whole_template_changes_the_trimmed_fingerprint()
    -> Result<(), serde_json::Error> {
        let trimmed = |d: &Deployment| {
            let mut d = d.clone();
            deployment(&mut d);
            crate::deployment::template_fingerprint(&d, "app")
        };
        let whole = whole_deployment()?;
        let mut edited = whole.clone();
        if let Some(pod) = edited.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            pod.volumes = None;
        }
        assert_ne!(trimmed(&whole), trimmed(&edited));
        // What a refresh itself changes does not count.
        let mut refreshed = whole.clone();
        if let Some(pod) = refreshed
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            pod.containers[0].image = Some("reg/app@sha256:2".into());
        }
        assert_eq!(trimmed(&whole), trimmed(&refreshed));
        // A tenant's forgery of the cache keys is hashed as part of the
        // template, never taken as the fingerprint.
        let mut forged = whole.clone();
        if let Some(meta) = forged
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
        {
            let annotations = meta.annotations.get_or_insert_with(Default::default);
            annotations.insert(
                "cache.freshen.dev/template-fingerprint".into(),
                String::new(),
            );
            annotations.insert(
                "cache.freshen.dev/template-fingerprint.app".into(),
                "forged".into(),
            );
        }
        assert_eq!(
            trimmed(&forged),
            crate::deployment::computed_fingerprint(&forged, "app")
        );
        assert_ne!(trimmed(&forged).as_deref(), Some("forged"));
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
        let before = crate::assess::node_platform(&n);
        node(&mut n);
        assert_eq!(crate::assess::node_platform(&n), before);
        assert!(serde_json::to_value(&n)?["status"]["images"].is_null());
        Ok(())
    }
}
