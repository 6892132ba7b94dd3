//! An Argo Rollout's refresh: Argo Rollouts runs the canary or blue-green
//! its own strategy describes (steps, analysis, traffic), so freshen does
//! not add a canary of its own. A Refresh of a Rollout is planned with
//! strategy Rolling: freshen sets the image (one JSON patch, guarded by
//! the resourceVersion and the container's name at its index) and
//! follows the Rollout. It succeeds when the Rollout is Healthy on the new
//! template (the stable ReplicaSet is the current one, every replica
//! updated and available); it rolls back when the new pods fail (crash
//! loop, pull errors), when Argo aborts or degrades the rollout, or after
//! the readiness timeout, by setting the old image back, which Argo
//! Rollouts takes as a return to its stable ReplicaSet. The rejected
//! digest is recorded as for every kind.

use freshen_api::Refresh;
use freshen_api::refresh::RESTARTED_BY;
use freshen_core::rollout::{Change, Phase, Target, WorkloadState};
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::{Mechanics, Sight, pod_health, runs_target};
use crate::error::Error;
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;
use crate::runtime::objects::FIELD_MANAGER;

/// The mechanics of Argo Rollouts.
pub struct Rollouts;

/// Whether the Rollout's own rollout is done: Argo saw the latest spec,
/// it is Healthy and not aborted, its stable ReplicaSet is the current
/// template's, and every replica is updated and available.
pub fn rolled_out(rollout: &CachedWorkload) -> bool {
    let desired = rollout.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = rollout.status.as_ref() else {
        return false;
    };
    status.observed_generation.is_some()
        && status.observed_generation >= rollout.metadata.generation
        && !status.abort
        && status.phase.as_deref() == Some("Healthy")
        && status.current_pod_hash.is_some()
        && status.stable_rs == status.current_pod_hash
        && status.updated_replicas == Some(desired)
        && status.available_replicas == Some(desired)
}

/// Why Argo Rollouts gave the rollout up, if it did: aborted (by its
/// analysis, or by hand), or Degraded (its progress deadline passed).
pub fn gave_up(rollout: &CachedWorkload) -> Option<String> {
    let status = rollout.status.as_ref()?;
    let message = status.message.clone().unwrap_or_default();
    if status.abort {
        Some(format!("Argo Rollouts aborted it ({message})"))
    } else if status.phase.as_deref() == Some("Degraded") {
        Some(format!("the Rollout is Degraded ({message})"))
    } else {
        None
    }
}

/// The state machine's view of a Rollout's `container`.
pub fn workload_state(rollout: &CachedWorkload, target: &Target) -> Option<WorkloadState> {
    let spec = rollout.spec.as_ref()?;
    let container = rollout.container(&target.container);
    Some(WorkloadState {
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        restart_token: rollout.template()?.restarted_by.clone(),
        template: container.map(|c| c.fingerprint.clone()).unwrap_or_default(),
        replicas: u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0),
        rolled_out: rolled_out(rollout),
        held: false,
        gave_up: gave_up(rollout),
    })
}

impl Mechanics for Rollouts {
    fn in_place(&self) -> bool {
        false
    }

    fn observe(&self, ctx: &Context, refresh: &Refresh, _phase: Phase, sight: &mut Sight) {
        sight.canary_name.clear();
        let Some(rollout) = sight.workload.clone() else {
            return;
        };
        let target = refresh.target(&refresh.name_any());
        let new_pods: Vec<_> = ctx
            .pods_of(&rollout.reference())
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| runs_target(p, &target))
            .map(|p| pod_health(p))
            .collect();
        sight.observed.workload = workload_state(&rollout, &target);
        sight.observed.new_pods = new_pods;
    }

    fn act<'a>(
        &'a self,
        ctx: &'a Context,
        refresh: &'a Refresh,
        sight: &'a Sight,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let (Change::SetImage { image, stamp }, Some(rollout)) = (change, &sight.workload)
            else {
                // No canary of freshen's own; the rejection is generic.
                return Ok(());
            };
            let name = refresh.name_any();
            let stamp = stamp.then_some(name.as_str());
            set_image(ctx, rollout, &refresh.spec.container, image, stamp).await
        }
        .boxed()
    }
}

/// The JSON patch that sets `container`'s image (and the restart stamp)
/// in `whole` (the Rollout as read), guarded by its resourceVersion and
/// the container's name at its index: a Rollout is a custom resource, so
/// there is no strategic merge, and a merge patch would replace the whole
/// container list. `None` when the container is not in the template.
pub fn image_patch(
    whole: &Value,
    container: &str,
    image: &str,
    stamp: Option<&str>,
) -> Option<Value> {
    let containers = whole
        .pointer("/spec/template/spec/containers")?
        .as_array()?;
    let index = containers
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(container))?;
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion",
               "value": whole.pointer("/metadata/resourceVersion")?}),
        json!({"op": "test", "path": format!("/spec/template/spec/containers/{index}/name"),
               "value": container}),
        json!({"op": "replace", "path": format!("/spec/template/spec/containers/{index}/image"),
               "value": image}),
    ];
    if let Some(stamp) = stamp {
        let key = RESTARTED_BY.replace('~', "~0").replace('/', "~1");
        if whole
            .pointer("/spec/template/metadata/annotations")
            .is_some()
        {
            ops.push(json!({"op": "add",
                "path": format!("/spec/template/metadata/annotations/{key}"), "value": stamp}));
        } else if whole.pointer("/spec/template/metadata").is_some() {
            ops.push(
                json!({"op": "add", "path": "/spec/template/metadata/annotations",
                "value": {RESTARTED_BY: stamp}}),
            );
        } else {
            ops.push(json!({"op": "add", "path": "/spec/template/metadata",
                "value": {"annotations": {RESTARTED_BY: stamp}}}));
        }
    }
    Some(Value::Array(ops))
}

/// Sets the image on the Rollout read afresh (the cache keeps only part
/// of it), only if it is still the one the decision saw.
async fn set_image(
    ctx: &Context,
    rollout: &CachedWorkload,
    container: &str,
    image: &str,
    stamp: Option<&str>,
) -> Result<(), Error> {
    let resource = ApiResource::erase::<CachedWorkload>(&rollout.kind);
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &rollout.namespace().unwrap_or_default(),
        &resource,
    );
    let whole = api
        .get(&rollout.name_any())
        .await
        .map_err(Error::ReadWorkload)?;
    if whole.metadata.resource_version != rollout.metadata.resource_version {
        return Err(Error::Stale("the workload changed since it was read"));
    }
    let whole = serde_json::to_value(&whole).unwrap_or_default();
    let Some(ops) = image_patch(&whole, container, image, stamp) else {
        return Err(Error::MissingField(
            "the Refresh's container in the Rollout's pod template",
        ));
    };
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(Error::Serialize)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&rollout.name_any(), &params, &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        // A failed test op is 422 (Invalid); a conflict 409.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
            Err(Error::Stale("the workload changed since it was read"))
        }
        Err(e) => Err(Error::PatchImage(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(status: Value) -> CachedWorkload {
        let mut r: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "checkout", "generation": 4},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "reg/app:1"}
            ]}}},
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        r.stamp(freshen_core::kind::Kind::Rollout);
        r
    }

    #[test]
    fn a_rollout_is_done_when_healthy_on_its_current_template() {
        let healthy = json!({"observedGeneration": "4", "phase": "Healthy",
            "currentPodHash": "b", "stableRS": "b", "updatedReplicas": 2, "availableReplicas": 2});
        assert!(rolled_out(&rollout(healthy.clone())));
        assert_eq!(gave_up(&rollout(healthy.clone())), None);
        // Argo has not seen the new spec yet: the old template looks Healthy.
        let mut stale = healthy.clone();
        stale["observedGeneration"] = json!("3");
        assert!(!rolled_out(&rollout(stale)));
        // Mid-canary: the stable ReplicaSet is still the old one.
        let mut canary = healthy.clone();
        canary["stableRS"] = json!("a");
        canary["phase"] = json!("Paused");
        assert!(!rolled_out(&rollout(canary)));
        let mut aborted = healthy;
        aborted["abort"] = json!(true);
        aborted["phase"] = json!("Degraded");
        aborted["message"] = json!("RolloutAborted: metric error-rate failed");
        assert!(!rolled_out(&rollout(aborted.clone())));
        assert!(
            gave_up(&rollout(aborted))
                .is_some_and(|m| m.contains("aborted") && m.contains("error-rate"))
        );
    }

    #[test]
    fn the_patch_names_one_container_by_index_and_guards_the_version() {
        let whole = json!({
            "metadata": {"resourceVersion": "17"},
            "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [
                {"name": "proxy", "image": "reg/proxy:1"},
                {"name": "app", "image": "reg/app:1"},
            ]}}},
        });
        let ops = image_patch(&whole, "app", "reg/app:1@sha256:22", Some("r1")).unwrap_or_default();
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "17"})
        );
        assert_eq!(ops[1]["path"], "/spec/template/spec/containers/1/name");
        assert_eq!(ops[2]["path"], "/spec/template/spec/containers/1/image");
        assert_eq!(ops[2]["value"], "reg/app:1@sha256:22");
        assert_eq!(ops[3]["path"], "/spec/template/metadata/annotations");
        assert_eq!(image_patch(&whole, "missing", "i", None), None);
        let mut patched = whole.clone();
        let patch: json_patch::Patch =
            serde_json::from_value(ops).unwrap_or_else(|e| panic!("{e}"));
        json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"][0]["image"],
            "reg/proxy:1"
        );
        assert_eq!(
            patched["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY],
            "r1"
        );
    }
}
