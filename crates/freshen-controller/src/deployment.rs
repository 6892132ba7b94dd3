//! Reading and shaping Deployments and pods, without a client: which
//! Deployment a pod belongs to, which Deployment a Refresh belongs to, the
//! fingerprint of a pod template, and the field manager of every write.

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::cached::CachedPod;

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
pub fn owning_deployment(pod: &CachedPod) -> Option<ObjectRef<Deployment>> {
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

/// The pod-template annotation marking a Deployment trimmed for the cache
/// (by the cache's trim of Deployments): its template is partial, and each
/// container's fingerprint, computed from the whole template, is kept
/// under this prefix plus the container's name. Only ever in memory; a
/// tenant's annotation of the same name is replaced when trimmed.
pub const CACHED_FINGERPRINT: &str = "cache.freshen.dev/template-fingerprint";

/// Where a trimmed Deployment keeps `container`'s template fingerprint.
pub fn cached_fingerprint_key(container: &str) -> String {
    format!("{CACHED_FINGERPRINT}.{container}")
}

/// The fingerprint of `deploy`'s pod template apart from what a refresh
/// itself changes: `container`'s image and freshen's restart stamp. Any
/// other edit (an env var, a limit, `kubectl rollout restart`) changes it.
/// Of a trimmed Deployment (from the cache), the one computed before it
/// was trimmed.
pub fn template_fingerprint(deploy: &Deployment, container: &str) -> Option<String> {
    let template_annotations = deploy
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    if let Some(annotations) = template_annotations
        && annotations.contains_key(CACHED_FINGERPRINT)
    {
        return annotations.get(&cached_fingerprint_key(container)).cloned();
    }
    computed_fingerprint(deploy, container)
}

/// [`template_fingerprint`] computed from the template as it is, whatever
/// its annotations say: for a whole Deployment from the API server.
pub fn computed_fingerprint(deploy: &Deployment, container: &str) -> Option<String> {
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
