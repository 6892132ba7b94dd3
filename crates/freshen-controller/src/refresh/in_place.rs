//! What the kinds whose canary runs inside the workload share (a
//! StatefulSet's partition, a DaemonSet's canary nodes): the
//! [`CANARY_HOLD`] annotation that records whose canary runs and what to
//! put back, written in the same patch that starts the canary; guarded
//! patches; and the deletion of the broken pods a rollback leaves.

use freshen_api::refresh::CANARY_HOLD;
use freshen_core::rollout::Target;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pod_health, runs_target};
use crate::error::Error;
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;

/// What [`CANARY_HOLD`] records: whose canary runs, and what to put back
/// when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryHold {
    /// The Refresh whose canary runs.
    pub refresh: String,
    /// A StatefulSet's own partition (`None`: none was set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// A DaemonSet's own `updateStrategy`, as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Value>,
    /// A DaemonSet's canary nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The template's restart stamp before the canary (`None`: none).
    #[serde(default)]
    pub restarted_by: Option<String>,
}

/// The hold `refresh` has on `workload`, if any. A malformed annotation
/// is no hold.
pub fn hold_of(workload: &CachedWorkload, refresh: &str) -> Option<CanaryHold> {
    let raw = workload.annotations().get(CANARY_HOLD)?;
    serde_json::from_str::<CanaryHold>(raw)
        .ok()
        .filter(|h| h.refresh == refresh)
}

/// Whether the template carries the refresh's change (its image, and its
/// stamp when it restarts).
pub fn template_applied(workload: &CachedWorkload, target: &Target) -> bool {
    let image = workload
        .container(&target.container)
        .and_then(|c| c.image.as_deref());
    image == Some(target.to_image.as_str())
        && (!target.restarts()
            || workload.template().and_then(|t| t.restarted_by.as_deref())
                == Some(target.name.as_str()))
}

/// Deletes the workload's pods that run the rolled-back change and are not
/// Ready, each by uid: its controller recreates them from the restored
/// template (a StatefulSet never replaces a broken pod by itself). Ready
/// ones it replaces itself, in order.
pub async fn delete_broken_pods(
    ctx: &Context,
    workload: &CachedWorkload,
    target: &Target,
) -> Result<(), Error> {
    let namespace = workload.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let broken = ctx
        .pods_of(&workload.reference())
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| runs_target(p, target) && !pod_health(p).ready);
    for pod in broken {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(Error::DeleteCanary(e)),
        }
    }
    Ok(())
}
