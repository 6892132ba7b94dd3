//! The shapes freshen caches pods and Deployments in: only the fields it
//! reads, each deserialized straight from the watch (serde skips the rest),
//! so a pod costs a few hundred bytes instead of k8s-openapi's `Pod` (2,416
//! bytes before a single string, plus 2,144 per container and 752 per
//! container status, whatever the pod holds), and a Deployment about a
//! third of its `Deployment` (2,448 bytes, plus 2,144 per container and a
//! map node of 544 bytes for each of its template's labels, annotations
//! and selector).
//!
//! [`CachedPod`] and [`CachedDeployment`] are [`kube::Resource`]s of kind
//! Pod and Deployment (through k8s-openapi's `Resource` and `Metadata`),
//! so watches, lists and reflector stores work on them as on `Pod` and
//! `Deployment`. They are read-only: freshen never writes a pod, and
//! writes Deployments through k8s-openapi's type, from a fresh read where
//! it copies a template.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer, Serialize};

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

/// A pod's status: conditions and containers' statuses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
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

/// A container's status: the image it runs, restarts, current and last
/// state.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// The image the runtime resolved (`...@sha256:...`); empty until
    /// pulled.
    #[serde(rename = "imageID", default)]
    pub image_id: String,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: i32,
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

/// A Deployment: metadata, replicas, rollout status, and of its pod
/// template what freshen reads ([`CachedPodTemplate`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedDeployment {
    /// Name, namespace, labels, annotations, owners, generation.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Replicas and the pod template.
    #[serde(default)]
    pub spec: Option<CachedDeploymentSpec>,
    /// How far its rollout is.
    #[serde(default)]
    pub status: Option<CachedDeploymentStatus>,
}

/// A Deployment's spec: its replicas and pod template.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedDeploymentSpec {
    /// Desired pods (`None`: the API's default, 1).
    #[serde(default)]
    pub replicas: Option<i32>,
    /// What freshen reads of the pod template.
    #[serde(default)]
    pub template: CachedPodTemplate,
}

/// A Deployment's rollout status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedDeploymentStatus {
    /// The generation the Deployment controller last acted on.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Pods of every ReplicaSet.
    #[serde(default)]
    pub replicas: Option<i32>,
    /// Pods of the current template.
    #[serde(default)]
    pub updated_replicas: Option<i32>,
    /// Pods available (ready for `minReadySeconds`).
    #[serde(default)]
    pub available_replicas: Option<i32>,
}

/// Of a pod template: its regular containers (with each one's
/// fingerprint), the pull secrets and service account, and freshen's
/// restart stamp. It is read from the whole template (a k8s-openapi
/// `PodTemplateSpec`, dropped once read), because a fingerprint covers
/// all of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPodTemplate {
    /// The regular containers, in order.
    pub containers: Vec<TemplateContainer>,
    /// The names of the Secrets in `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// `serviceAccountName`, when set.
    pub service_account_name: Option<String>,
    /// The template's `freshen.dev/restarted-by` annotation.
    pub restarted_by: Option<String>,
}

/// A regular container of a pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateContainer {
    /// Its name.
    pub name: String,
    /// Its image reference, as written.
    pub image: Option<String>,
    /// The whole template's fingerprint apart from what a refresh of this
    /// container changes ([`fingerprint_of`]).
    pub fingerprint: String,
}

impl CachedPodTemplate {
    /// What freshen keeps of `template`.
    pub fn of(template: &PodTemplateSpec) -> Self {
        let spec = template.spec.as_ref();
        Self {
            containers: spec
                .map(|s| s.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|c| TemplateContainer {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    fingerprint: fingerprint_of(template, &c.name),
                })
                .collect(),
            image_pull_secrets: spec
                .and_then(|s| s.image_pull_secrets.as_ref())
                .map(|refs| refs.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default(),
            service_account_name: spec.and_then(|s| s.service_account_name.clone()),
            restarted_by: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(freshen_api::refresh::RESTARTED_BY))
                .cloned(),
        }
    }
}

/// The fingerprint of a whole pod template apart from what a refresh of
/// `container` itself changes: `container`'s image and freshen's restart
/// stamp. Any other edit (an env var, a limit, `kubectl rollout restart`)
/// changes it.
pub fn fingerprint_of(template: &PodTemplateSpec, container: &str) -> String {
    // Serializing k8s-openapi's types cannot fail (every map key is a
    // string); `Null` would still fingerprint, the same each time.
    let mut template = serde_json::to_value(template).unwrap_or_default();
    if let Some(containers) = template
        .pointer_mut("/spec/containers")
        .and_then(serde_json::Value::as_array_mut)
    {
        for c in containers.iter_mut().filter(|c| c["name"] == container) {
            if let Some(c) = c.as_object_mut() {
                c.remove("image");
            }
        }
    }
    if let Some(meta) = template
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        // The stamp may be the template's only annotation: adding it must
        // not show as a change either.
        if let Some(annotations) = meta
            .get_mut("annotations")
            .and_then(serde_json::Value::as_object_mut)
        {
            annotations.remove(freshen_api::refresh::RESTARTED_BY);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if meta.is_empty()
            && let Some(t) = template.as_object_mut()
        {
            t.remove("metadata");
        }
    }
    freshen_core::plan::fingerprint(&template.to_string())
}

impl<'de> Deserialize<'de> for CachedPodTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PodTemplateSpec::deserialize(deserializer).map(|whole| Self::of(&whole))
    }
}

impl CachedDeployment {
    /// What freshen reads of the pod template; `None` without a spec.
    pub fn template(&self) -> Option<&CachedPodTemplate> {
        self.spec.as_ref().map(|s| &s.template)
    }

    /// The template's regular containers (none without a spec).
    pub fn containers(&self) -> &[TemplateContainer] {
        self.template()
            .map(|t| t.containers.as_slice())
            .unwrap_or_default()
    }

    /// The template's container `name`.
    pub fn container(&self, name: &str) -> Option<&TemplateContainer> {
        self.containers().iter().find(|c| c.name == name)
    }
}

impl From<&Deployment> for CachedDeployment {
    /// What the cache would keep of `whole` (a fresh read), metadata
    /// untrimmed.
    fn from(whole: &Deployment) -> Self {
        Self {
            metadata: whole.metadata.clone(),
            spec: whole
                .spec
                .as_ref()
                .map(|spec: &DeploymentSpec| CachedDeploymentSpec {
                    replicas: spec.replicas,
                    template: CachedPodTemplate::of(&spec.template),
                }),
            status: whole
                .status
                .as_ref()
                .map(|status: &DeploymentStatus| CachedDeploymentStatus {
                    observed_generation: status.observed_generation,
                    replicas: status.replicas,
                    updated_replicas: status.updated_replicas,
                    available_replicas: status.available_replicas,
                }),
        }
    }
}

impl k8s_openapi::Resource for CachedDeployment {
    const API_VERSION: &'static str = "apps/v1";
    const GROUP: &'static str = "apps";
    const KIND: &'static str = "Deployment";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "deployments";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedDeployment {
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
