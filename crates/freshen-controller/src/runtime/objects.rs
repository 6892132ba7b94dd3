//! Reading and shaping workloads and pods, without a client: which
//! workload a pod belongs to, which Deployment a Refresh belongs to, the
//! fingerprint of a pod template, and the field manager of every write.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use freshen_core::kind::{Kind, PodOwner, ROLLOUTS_POD_TEMPLATE_HASH, owner_of};

use freshen_api::Refresh;

pub use freshen_core::kind::POD_TEMPLATE_HASH;

/// The field manager of every change freshen makes.
pub const FIELD_MANAGER: &str = "freshen";

/// A reference to the workload of `kind` named `name` in `namespace`.
pub fn workload_ref(kind: Kind, name: &str, namespace: &str) -> ObjectRef<CachedWorkload> {
    ObjectRef::new_with(name, kind).within(namespace)
}

/// A reference to Deployment `namespace/name`.
pub fn deployment_ref(name: &str, namespace: &str) -> ObjectRef<CachedWorkload> {
    workload_ref(Kind::Deployment, name, namespace)
}

/// The workload a pod belongs to ([`freshen_core::kind::owner_of`]): a
/// Deployment through its ReplicaSet, a StatefulSet, ... or the pod itself
/// (kind Pod). `None` only for a pod without a name or namespace.
pub fn owning_workload(pod: &CachedPod) -> Option<ObjectRef<CachedWorkload>> {
    let controller = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let labels = pod.labels();
    let owner = PodOwner {
        kind: controller.map(|o| o.kind.as_str()),
        name: controller.map(|o| o.name.as_str()),
        template_hash: labels.get(POD_TEMPLATE_HASH).map(String::as_str),
        rollouts_template_hash: labels.get(ROLLOUTS_POD_TEMPLATE_HASH).map(String::as_str),
    };
    let (kind, name) = owner_of(pod.metadata.name.as_deref()?, owner);
    Some(workload_ref(kind, name, pod.metadata.namespace.as_deref()?))
}

/// Whether `refresh` is owned (as controller) by `workload`, by uid.
pub fn owned_by(refresh: &Refresh, workload: &CachedWorkload) -> bool {
    let Some(uid) = workload.metadata.uid.as_deref() else {
        return false;
    };
    refresh
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == workload.kind.as_str() && o.uid == uid)
}

/// The fingerprint of `deploy`'s pod template apart from what a refresh
/// of `container` itself changes (see [`crate::runtime::cached::fingerprint_of`]), read when the
/// Deployment was; `None` when the template has no such container.
pub fn template_fingerprint(deploy: &CachedWorkload, container: &str) -> Option<String> {
    deploy.container(container).map(|c| c.fingerprint.clone())
}
