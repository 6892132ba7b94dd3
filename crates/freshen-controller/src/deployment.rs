//! Reading and shaping Deployments and pods, without a client: which
//! Deployment a pod belongs to, which Deployment a Refresh belongs to, the
//! fingerprint of a pod template, and the field manager of every write.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use freshen_api::Refresh;
use freshen_api::refresh::RESTARTED_BY;

/// The label the Deployment controller puts on a ReplicaSet's pods; a
/// ReplicaSet of Deployment `d` is named `d-<pod-template-hash>`.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The field manager of every change freshen makes.
pub const FIELD_MANAGER: &str = "freshen";

/// The Deployment a pod belongs to: its controlling ReplicaSet is named
/// `<deployment>-<pod-template-hash>`. Pods of bare ReplicaSets or other
/// controllers yield `None`.
pub fn owning_deployment(pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let hash = pod.labels().get(POD_TEMPLATE_HASH)?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let deployment = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    if deployment.is_empty() {
        return None;
    }
    Some(ObjectRef::new(deployment).within(&pod.namespace()?))
}

/// Whether `refresh` is owned (as controller) by `workload`, by uid.
pub fn owned_by(refresh: &Refresh, workload: &Deployment) -> bool {
    let Some(uid) = workload.metadata.uid.as_deref() else {
        return false;
    };
    refresh
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "Deployment" && o.uid == uid)
}

/// The fingerprint of `deploy`'s pod template apart from what a refresh
/// itself changes: `container`'s image and freshen's restart stamp. Any
/// other edit (an env var, a limit, `kubectl rollout restart`) changes it.
pub fn template_fingerprint(deploy: &Deployment, container: &str) -> Option<String> {
    let mut template = serde_json::to_value(&deploy.spec.as_ref()?.template).ok()?;
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
            annotations.remove(RESTARTED_BY);
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
    Some(freshen_core::plan::fingerprint(&template.to_string()))
}
