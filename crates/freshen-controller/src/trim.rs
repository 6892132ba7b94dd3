//! What the watch caches keep of each object: only the fields freshen
//! reads. A cluster's pods carry volumes, env, resources, probes and
//! managed fields freshen never looks at; kept whole, 10,000 of them cost
//! hundreds of MiB. Each function here is applied to every object as it
//! arrives (`WatchStreamExt::modify`), before it reaches the store.
//!
//! Deployments are kept whole (but for managed fields): a canary copies the
//! workload's pod template, and the template fingerprint covers all of it.

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Namespace, Node, NodeStatus, NodeSystemInfo, Pod, PodCondition,
    PodSpec, PodStatus, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The metadata every kept object needs: identity, labels, owners,
/// deletion; of the annotations only freshen's own (`freshen.dev/...`).
fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("freshen.dev/"));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A container: its name and image.
fn container(c: &Container) -> Container {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        ..Container::default()
    }
}

/// A pod: its containers' names and images, its node; its Ready condition
/// and its containers' statuses (image id, state, restarts).
pub fn pod(pod: &mut Pod) {
    metadata(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec.containers.iter().map(container).collect(),
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        conditions: status.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                })
                .collect()
        }),
        container_statuses: status
            .container_statuses
            .map(|s| s.into_iter().map(status_of).collect()),
        init_container_statuses: status
            .init_container_statuses
            .map(|s| s.into_iter().map(status_of).collect()),
        phase: status.phase,
        ..PodStatus::default()
    });
}

/// A container status without what freshen does not read.
fn status_of(s: ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        name: s.name,
        image: s.image,
        image_id: s.image_id,
        restart_count: s.restart_count,
        ready: s.ready,
        started: s.started,
        state: s.state,
        last_state: s.last_state,
        ..ContainerStatus::default()
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
    use serde_json::json;

    #[test]
    fn a_trimmed_pod_keeps_what_freshen_reads() -> Result<(), serde_json::Error> {
        let mut p: Pod = serde_json::from_value(json!({
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
