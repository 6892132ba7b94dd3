//! Reading and shaping Deployments and pods, without a client: which
//! Deployment a pod belongs to, which Deployment a Refresh belongs to, the
//! fingerprint of a pod template, and the field manager of every write.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::cached::{CachedDeployment, CachedPod};

use freshen_api::Refresh;

/// The label the Deployment controller puts on a ReplicaSet's pods; a
/// ReplicaSet of Deployment `d` is named `d-<pod-template-hash>`.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The field manager of every change freshen makes.
pub const FIELD_MANAGER: &str = "freshen";

/// The Deployment a pod belongs to: its controlling ReplicaSet is named
/// `<deployment>-<pod-template-hash>`. Pods of bare ReplicaSets or other
/// controllers yield `None`.
pub fn owning_deployment(pod: &CachedPod) -> Option<ObjectRef<CachedDeployment>> {
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
pub fn owned_by(refresh: &Refresh, workload: &CachedDeployment) -> bool {
    let Some(uid) = workload.metadata.uid.as_deref() else {
        return false;
    };
    refresh
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "Deployment" && o.uid == uid)
}

/// The fingerprint of `deploy`'s pod template apart from what a refresh
/// of `container` itself changes (see [`crate::cached::fingerprint_of`]), read when the
/// Deployment was; `None` when the template has no such container.
pub fn template_fingerprint(deploy: &CachedDeployment, container: &str) -> Option<String> {
    deploy.container(container).map(|c| c.fingerprint.clone())
}
