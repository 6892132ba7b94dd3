//! The shapes freshen caches pods and Deployments in: only the fields it
//! reads, each deserialized straight from the watch (serde skips the rest),
//! so a pod costs a few hundred bytes instead of k8s-openapi's `Pod` (2,416
//! bytes before a single string, plus 2,144 per container and 752 per
//! container status, whatever the pod holds), and a Deployment about a
//! third of its `Deployment` (2,448 bytes, plus 2,144 per container and a
//! map node of 544 bytes for each of its template's labels, annotations
//! and selector).
//!
//! [`CachedPod`] and [`CachedWorkload`] are [`kube::Resource`]s of kind
//! Pod and Deployment (through k8s-openapi's `Resource` and `Metadata`),
//! so watches, lists and reflector stores work on them as on `Pod` and
//! `Deployment`. They are read-only: freshen never writes a pod, and
//! writes Deployments through k8s-openapi's type, from a fresh read where
//! it copies a template.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::borrow::Cow;

use kube::runtime::reflector::ObjectRef;

use freshen_core::kind::{Kind, is_sidecar};
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
    /// The init containers (the cache keeps only native sidecars:
    /// the pod watch trims the others away).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<CachedContainer>,
    /// The node it is scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pull secrets it names (read for pods no workload controls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<SecretName>,
    /// Its ServiceAccount (read for pods no workload controls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

impl CachedPodSpec {
    /// Its long-running containers: the regular ones, then the native
    /// sidecars (`true`).
    pub fn long_running(&self) -> impl Iterator<Item = (&CachedContainer, bool)> {
        self.containers.iter().map(|c| (c, false)).chain(
            self.init_containers
                .iter()
                .filter(|c| is_sidecar(c.restart_policy.as_deref()))
                .map(|c| (c, true)),
        )
    }
}

/// A reference to a Secret by name.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SecretName {
    /// The Secret's name.
    #[serde(default)]
    pub name: String,
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
    /// An init container's `restartPolicy` (`Always`: a native sidecar).
    #[serde(
        default,
        rename = "restartPolicy",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_policy: Option<String>,
}

/// A pod's status: conditions and containers' statuses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
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

/// A workload of any [`Kind`] that carries a pod template: metadata,
/// replicas, the owner's own controls (paused, suspended), rollout status,
/// and of its pod template what freshen reads ([`CachedPodTemplate`]).
/// Pods without such a workload become one through [`CachedWorkload::of_pod`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CachedWorkload {
    /// Which kind it is. The API omits it from the items of a list, so
    /// the watch that read the object stamps it ([`CachedWorkload::stamp`]).
    #[serde(skip, default = "unstamped")]
    pub kind: Kind,
    /// Name, namespace, labels, annotations, owners, generation.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Replicas and the pod template.
    #[serde(default)]
    pub spec: Option<CachedWorkloadSpec>,
    /// How far its rollout is.
    #[serde(default)]
    pub status: Option<CachedWorkloadStatus>,
}

/// The kind a workload has until its watch stamps it.
fn unstamped() -> Kind {
    Kind::Pod
}

/// A workload's spec: replicas, its owner's controls and the pod template
/// (a CronJob's from its Job template).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedWorkloadSpec {
    /// Desired pods (`None`: the API's default, 1).
    #[serde(default)]
    pub replicas: Option<i32>,
    /// A Deployment's or Rollout's `paused`: its owner stopped rollouts.
    #[serde(default)]
    pub paused: bool,
    /// A CronJob's `suspend`: no Job starts.
    #[serde(default)]
    pub suspend: bool,
    /// What freshen reads of the pod template.
    #[serde(default)]
    pub template: CachedPodTemplate,
    /// A CronJob's Job template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_template: Option<CachedJobTemplate>,
    /// A StatefulSet's or DaemonSet's `updateStrategy`.
    #[serde(default)]
    pub update_strategy: Option<UpdateStrategy>,
}

/// A StatefulSet's or DaemonSet's `updateStrategy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `RollingUpdate` (the default) or `OnDelete`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Its rolling update's settings.
    #[serde(default)]
    pub rolling_update: Option<RollingUpdate>,
}

/// Of a rolling update's settings, the one freshen reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RollingUpdate {
    /// A StatefulSet's partition: pods with a lower ordinal keep the old
    /// revision.
    #[serde(default)]
    pub partition: Option<i32>,
}

/// A generation as a number, or a numeric string; anything else is
/// unknown (`None`), never an error that would fail the whole list.
fn lenient_generation<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

/// A CronJob's Job template: of it, the pod template.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedJobTemplate {
    /// The Job's spec.
    #[serde(default)]
    pub spec: CachedJobSpec,
}

/// A Job template's spec: its pod template.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedJobSpec {
    /// What freshen reads of the pod template.
    #[serde(default)]
    pub template: CachedPodTemplate,
}

/// A workload's rollout status (the Deployment's fields; other kinds
/// leave what they lack unset).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedWorkloadStatus {
    /// The generation the Deployment controller last acted on (Argo
    /// Rollouts writes a string here: read as unknown unless a number).
    #[serde(default, deserialize_with = "lenient_generation")]
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
    /// A StatefulSet's revision of its current pods.
    #[serde(default)]
    pub current_revision: Option<String>,
    /// A StatefulSet's revision its template makes now.
    #[serde(default)]
    pub update_revision: Option<String>,
    /// A DaemonSet's nodes that should run its pod.
    #[serde(default)]
    pub desired_number_scheduled: Option<i32>,
    /// A DaemonSet's nodes running its current template's pod.
    #[serde(default)]
    pub updated_number_scheduled: Option<i32>,
    /// A DaemonSet's nodes whose pod is available.
    #[serde(default)]
    pub number_available: Option<i32>,
    /// An Argo Rollout's phase: Healthy, Progressing, Paused, Degraded.
    #[serde(default)]
    pub phase: Option<String>,
    /// An Argo Rollout's `abort`: its rollout was aborted.
    #[serde(default)]
    pub abort: bool,
    /// An Argo Rollout's status message.
    #[serde(default)]
    pub message: Option<String>,
    /// An Argo Rollout's pod-template hash of its current template.
    #[serde(default)]
    pub current_pod_hash: Option<String>,
    /// An Argo Rollout's stable ReplicaSet's pod-template hash.
    #[serde(default, rename = "stableRS")]
    pub stable_rs: Option<String>,
}

/// Of a pod template: its long-running containers (regular ones, then
/// native sidecars; each with its fingerprint), the pull secrets and
/// service account, and freshen's restart stamp. It is read from the whole template (a k8s-openapi
/// `PodTemplateSpec`, dropped once read), because a fingerprint covers
/// all of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPodTemplate {
    /// The regular containers, in order, then the native sidecars (init
    /// containers with `restartPolicy: Always`).
    pub containers: Vec<TemplateContainer>,
    /// The names of the Secrets in `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// `serviceAccountName`, when set.
    pub service_account_name: Option<String>,
    /// The template's `freshen.dev/restarted-by` annotation.
    pub restarted_by: Option<String>,
}

/// A long-running container of a pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateContainer {
    /// Its name.
    pub name: String,
    /// A native sidecar (an init container with `restartPolicy: Always`),
    /// not a regular container.
    pub sidecar: bool,
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
        let regular = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|c| is_sidecar(c.restart_policy.as_deref()));
        Self {
            containers: regular
                .iter()
                .map(|c| (c, false))
                .chain(sidecars.map(|c| (c, true)))
                .map(|(c, sidecar)| TemplateContainer {
                    name: c.name.clone(),
                    sidecar,
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
    for list in ["/spec/containers", "/spec/initContainers"] {
        if let Some(containers) = template
            .pointer_mut(list)
            .and_then(serde_json::Value::as_array_mut)
        {
            for c in containers.iter_mut().filter(|c| c["name"] == container) {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
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

impl CachedWorkload {
    /// A workload of `kind` with nothing set yet.
    pub fn empty(kind: Kind) -> Self {
        Self {
            kind,
            metadata: ObjectMeta::default(),
            spec: None,
            status: None,
        }
    }

    /// A reference to it, of its kind.
    pub fn reference(&self) -> ObjectRef<Self> {
        ObjectRef::from_obj_with(self, self.kind)
    }

    /// Marks the workload as of `kind`, as the watch of that kind does.
    pub fn stamp(&mut self, kind: Kind) {
        self.kind = kind;
    }

    /// What freshen reads of the pod template (a CronJob's Job's); `None`
    /// without a spec.
    pub fn template(&self) -> Option<&CachedPodTemplate> {
        self.spec.as_ref().map(|s| match &s.job_template {
            Some(job) => &job.spec.template,
            None => &s.template,
        })
    }

    /// Which of its own controls stops its rollouts, if one does: a paused
    /// Deployment or Rollout (no rollout proceeds), a suspended CronJob (no
    /// Job starts), an `OnDelete` update strategy (pods change only when
    /// someone deletes them) the owner set, not freshen's canary.
    pub fn paused(&self) -> Option<&'static str> {
        let spec = self.spec.as_ref()?;
        if spec.paused {
            Some("spec.paused")
        } else if spec.suspend {
            Some("spec.suspend")
        } else if self.on_delete()
            && !self
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(freshen_api::refresh::CANARY_HOLD))
        {
            // OnDelete set by freshen's own canary (a DaemonSet's) is not
            // the owner's word.
            Some("updateStrategy OnDelete")
        } else {
            None
        }
    }

    /// Whether its update strategy is `OnDelete`.
    pub fn on_delete(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.as_deref())
            == Some("OnDelete")
    }

    /// A StatefulSet's own partition (0 when none is set).
    pub fn partition(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
    }

    /// A pod no workload freshen knows controls, as a workload of kind
    /// [`Kind::Pod`]: its metadata and its containers as a template.
    /// Nothing refreshes it, so no fingerprint is computed.
    pub fn of_pod(pod: &CachedPod) -> Self {
        let spec = pod.spec.as_ref();
        let template = CachedPodTemplate {
            containers: spec
                .into_iter()
                .flat_map(CachedPodSpec::long_running)
                .map(|(c, sidecar)| TemplateContainer {
                    name: c.name.clone(),
                    sidecar,
                    image: c.image.clone(),
                    fingerprint: String::new(),
                })
                .collect(),
            image_pull_secrets: spec
                .map(|s| {
                    s.image_pull_secrets
                        .iter()
                        .map(|r| r.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            service_account_name: spec.and_then(|s| s.service_account_name.clone()),
            restarted_by: None,
        };
        Self {
            kind: Kind::Pod,
            metadata: pod.metadata.clone(),
            spec: Some(CachedWorkloadSpec {
                template,
                ..CachedWorkloadSpec::default()
            }),
            status: None,
        }
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

impl From<&Deployment> for CachedWorkload {
    /// What the cache would keep of `whole` (a fresh read), metadata
    /// untrimmed.
    fn from(whole: &Deployment) -> Self {
        Self {
            kind: Kind::Deployment,
            metadata: whole.metadata.clone(),
            spec: whole
                .spec
                .as_ref()
                .map(|spec: &DeploymentSpec| CachedWorkloadSpec {
                    replicas: spec.replicas,
                    paused: spec.paused.unwrap_or_default(),
                    template: CachedPodTemplate::of(&spec.template),
                    ..CachedWorkloadSpec::default()
                }),
            status: whole
                .status
                .as_ref()
                .map(|status: &DeploymentStatus| CachedWorkloadStatus {
                    observed_generation: status.observed_generation,
                    replicas: status.replicas,
                    updated_replicas: status.updated_replicas,
                    available_replicas: status.available_replicas,
                    ..CachedWorkloadStatus::default()
                }),
        }
    }
}

/// A workload is a resource whose kind is known only at run time: the
/// [`Kind`] is its dynamic type, so one reflector store, `Api` and
/// `ObjectRef` type serve every kind, each watch with its own.
impl kube::Resource for CachedWorkload {
    type DynamicType = Kind;
    // Namespaced, but the scope of a resource whose kind is known only at
    // run time is dynamic to kube (`Api::namespaced_with` asks for it).
    type Scope = kube::core::DynamicResourceScope;

    fn kind(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.as_str())
    }

    fn group(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.group())
    }

    fn version(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.version())
    }

    fn plural(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.plural())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
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
                image: Some("reg/app:1".into()),
                restart_policy: None,
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
    fn every_kind_reads_its_template_with_native_sidecars() -> Result<(), serde_json::Error> {
        let template = json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "reg/migrate:1"},
                    {"name": "proxy", "image": "reg/proxy:1", "restartPolicy": "Always"},
                ],
                "containers": [{"name": "app", "image": "reg/app:1"}],
            },
        });
        let names = |w: &CachedWorkload| -> Vec<(String, bool)> {
            w.template()
                .map(|t| {
                    t.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.sidecar))
                        .collect()
                })
                .unwrap_or_default()
        };
        let expected = vec![("app".to_owned(), false), ("proxy".to_owned(), true)];
        let stateful: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"replicas": 3, "template": template.clone()},
        }))?;
        assert_eq!(names(&stateful), expected);
        let cron: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "backup"},
            "spec": {"suspend": true, "jobTemplate": {"spec": {"template": template}}},
        }))?;
        assert_eq!(names(&cron), expected);
        assert_eq!(cron.paused(), Some("spec.suspend"));
        assert_eq!(stateful.paused(), None);
        // The sidecar's own image is left out of its fingerprint.
        let fingerprint =
            |w: &CachedWorkload| w.template().map(|t| t.containers[1].fingerprint.clone());
        let moved: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "reg/migrate:1"},
                    {"name": "proxy", "image": "reg/proxy:2", "restartPolicy": "Always"},
                ],
                "containers": [{"name": "app", "image": "reg/app:1"}],
            }}},
        }))?;
        assert_eq!(fingerprint(&moved), fingerprint(&stateful));
        Ok(())
    }

    #[test]
    fn an_argo_rollout_reads_with_its_string_generation() -> Result<(), serde_json::Error> {
        // Argo Rollouts writes status.observedGeneration as a string.
        let rollout: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "checkout"},
            "spec": {"replicas": 1, "paused": true, "template": {
                "spec": {"containers": [{"name": "app", "image": "reg/app:1"}]}}},
            "status": {"observedGeneration": "5d7f8c", "replicas": 1, "phase": "Healthy"},
        }))?;
        assert_eq!(rollout.paused(), Some("spec.paused"));
        assert_eq!(
            rollout.status.as_ref().and_then(|s| s.observed_generation),
            None
        );
        assert_eq!(rollout.status.as_ref().and_then(|s| s.replicas), Some(1));
        let numeric: CachedWorkloadStatus =
            serde_json::from_value(json!({"observedGeneration": 3}))?;
        assert_eq!(numeric.observed_generation, Some(3));
        Ok(())
    }

    #[test]
    fn a_pod_no_workload_controls_is_a_workload_of_its_own() -> Result<(), serde_json::Error> {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "debug", "namespace": "shop", "labels": {"team": "a"}},
            "spec": {
                "serviceAccountName": "robot",
                "imagePullSecrets": [{"name": "regcred"}],
                "initContainers": [
                    {"name": "setup", "image": "reg/setup:1"},
                    {"name": "log", "image": "reg/log:1", "restartPolicy": "Always"},
                ],
                "containers": [{"name": "app", "image": "reg/app:1"}],
            },
        }))?;
        let workload = CachedWorkload::of_pod(&pod);
        assert_eq!(workload.kind, Kind::Pod);
        assert_eq!(workload.metadata.labels, pod.metadata.labels);
        let template = workload.template().cloned().unwrap_or_default();
        let containers: Vec<(&str, bool)> = template
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.sidecar))
            .collect();
        assert_eq!(containers, [("app", false), ("log", true)]);
        assert_eq!(template.image_pull_secrets, ["regcred"]);
        assert_eq!(template.service_account_name.as_deref(), Some("robot"));
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
