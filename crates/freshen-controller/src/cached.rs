//! The shapes freshen caches pods in: only the fields it reads, each
//! deserialized straight from the watch (serde skips the rest), so a pod
//! costs a few hundred bytes instead of k8s-openapi's `Pod` (2,416 bytes
//! before a single string, plus 2,144 per container and 752 per container
//! status, whatever the pod holds).
//!
//! [`CachedPod`] is a [`kube::Resource`] of kind Pod (through
//! k8s-openapi's `Resource` and `Metadata`), so watches, lists and
//! reflector stores work on it as on `Pod`. It is read-only: freshen never
//! writes a pod.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

/// A pod: metadata, containers' names and images, node, and status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    /// Name, namespace, labels, owners, deletion.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the pod runs, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedPodSpec>,
    /// How it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

/// A pod's spec: its containers and its node.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    /// The (regular) containers, by name and image.
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    /// The node it is scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A container: its name and image.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainer {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// The image reference it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A pod's status: phase, conditions and containers' statuses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// `Pending`, `Running`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The pod's conditions (the cache keeps only `Ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CachedCondition>>,
    /// The regular containers' statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    /// The init containers' statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// A pod condition: its type and status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedCondition {
    /// `Ready`, `PodScheduled`, ...
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
}

/// A container's status: what it runs, restarts, current and last state.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// The image as the kubelet reports it.
    #[serde(default)]
    pub image: String,
    /// The image the runtime resolved (`...@sha256:...`); empty until
    /// pulled.
    #[serde(rename = "imageID", default)]
    pub image_id: String,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: i32,
    /// Whether it passes its readiness probe.
    #[serde(default)]
    pub ready: bool,
    /// Its current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CachedContainerState>,
    /// Its state before the last restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<CachedContainerState>,
}

/// A container state: at most one of waiting, running, terminated.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainerState {
    /// Waiting, with the reason (`CrashLoopBackOff`, `ImagePullBackOff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Reason>,
    /// Running since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    /// Terminated, with the reason (`Error`, `OOMKilled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<Reason>,
}

/// A waiting or terminated state's reason.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Reason {
    /// The machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A running state's start.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    /// When the container (last) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::Resource;
    use serde_json::json;

    #[test]
    fn a_cached_pod_is_a_pod_to_the_api() {
        assert_eq!(CachedPod::kind(&()), Pod::kind(&()));
        assert_eq!(CachedPod::api_version(&()), Pod::api_version(&()));
        assert_eq!(CachedPod::plural(&()), Pod::plural(&()));
        assert_eq!(
            CachedPod::url_path(&(), Some("shop")),
            Pod::url_path(&(), Some("shop"))
        );
    }

    #[test]
    fn a_whole_pod_reads_into_what_freshen_keeps() -> Result<(), serde_json::Error> {
        let whole = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {
                "nodeName": "n1",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "b"}]}],
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.1",
                "containerStatuses": [{"name": "app", "image": "reg/app:1", "imageID": "reg/app@sha256:1",
                    "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}],
            },
        });
        let pod: CachedPod = serde_json::from_value(whole)?;
        let spec = pod.spec.as_ref();
        assert_eq!(spec.and_then(|s| s.node_name.as_deref()), Some("n1"));
        assert_eq!(
            spec.map(|s| s.containers.clone()),
            Some(vec![CachedContainer {
                name: "app".into(),
                image: Some("reg/app:1".into())
            }])
        );
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first());
        assert_eq!(
            status.map(|s| s.image_id.as_str()),
            Some("reg/app@sha256:1")
        );
        assert_eq!(status.map(|s| s.restart_count), Some(3));
        let waiting = status
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.waiting.as_ref());
        assert_eq!(
            waiting.and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        let kept = serde_json::to_value(&pod)?;
        assert!(kept["spec"]["volumes"].is_null() && kept["status"]["podIP"].is_null());
        Ok(())
    }

    #[test]
    fn an_empty_pod_reads_without_error() -> Result<(), serde_json::Error> {
        let pod: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}}))?;
        assert_eq!(pod.spec, None);
        assert_eq!(pod.status, None);
        Ok(())
    }
}
