//! A DaemonSet's refresh: the canary runs on a bounded set of nodes. One
//! patch sets the new image, switches the update strategy to `OnDelete`
//! (so the DaemonSet controller replaces nothing by itself) and records in
//! [`CANARY_HOLD`](freshen_api::refresh::CANARY_HOLD) the user's own
//! strategy and the canary's nodes; then the pods on those nodes are
//! deleted, by uid, and the controller recreates them from the new
//! template. Promotion puts the user's strategy back, and the controller
//! rolls the other nodes as it says (`maxUnavailable`, `maxSurge`): never
//! all nodes at once. A rollback puts the old image and the strategy back
//! and replaces the canary nodes' broken pods. An `OnDelete` DaemonSet is
//! held for its owner.

use std::collections::BTreeSet;
use std::sync::Arc;

use freshen_api::Refresh;
use freshen_api::refresh::CANARY_HOLD;
use freshen_core::rollout::{Change, Phase, Target, WorkloadState};
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::in_place::{CanaryHold, delete_broken_pods, hold_of, template_applied};
use super::{Mechanics, Sight, patch_guarded, pod_health, runs_target, template_patch};
use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;

/// The mechanics of DaemonSets.
pub struct DaemonSets;

/// The node a pod runs on.
fn node_of(pod: &CachedPod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The state machine's view of a DaemonSet's `container`: one pod per
/// node that should run one; rolled out when the controller saw the
/// latest spec and every such node runs an available pod of the current
/// template.
pub fn workload_state(
    workload: &CachedWorkload,
    target: &Target,
    hold: Option<&CanaryHold>,
) -> Option<WorkloadState> {
    let template = workload.template()?;
    let container = workload.container(&target.container);
    let status = workload.status.clone().unwrap_or_default();
    let desired = status.desired_number_scheduled.unwrap_or(0).max(0);
    let rolled_out = hold.is_none()
        && status.observed_generation >= workload.metadata.generation
        && status.updated_number_scheduled == Some(desired)
        && status.number_available == Some(desired);
    Some(WorkloadState {
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        restart_token: template.restarted_by.clone(),
        template: container.map(|c| c.fingerprint.clone()).unwrap_or_default(),
        replicas: u32::try_from(desired).unwrap_or(0),
        rolled_out,
        held: hold.is_some(),
        gave_up: None,
    })
}

/// The canary's nodes: the first `canary` nodes, by name, of those the
/// DaemonSet runs a pod on.
pub fn canary_nodes<'a>(nodes: impl IntoIterator<Item = &'a str>, canary: u32) -> Vec<String> {
    let sorted: BTreeSet<&str> = nodes.into_iter().collect();
    sorted
        .into_iter()
        .take(usize::try_from(canary).unwrap_or(usize::MAX))
        .map(str::to_owned)
        .collect()
}

impl Mechanics for DaemonSets {
    fn in_place(&self) -> bool {
        true
    }

    fn observe(&self, ctx: &Context, refresh: &Refresh, phase: Phase, sight: &mut Sight) {
        sight.canary_name.clear();
        let Some(workload) = sight.workload.clone() else {
            return;
        };
        let name = refresh.name_any();
        let target = refresh.target(&name);
        let hold = hold_of(&workload, &name);
        let live = live_pods(ctx, &workload);
        let running: Vec<&Arc<CachedPod>> =
            live.iter().filter(|p| runs_target(p, &target)).collect();
        let on_canary_node = |p: &&&Arc<CachedPod>| {
            hold.as_ref()
                .is_some_and(|h| node_of(p).is_some_and(|n| h.nodes.iter().any(|c| c == n)))
        };
        let bad_left = phase == Phase::RollingBack
            && !template_applied(&workload, &target)
            && !running.is_empty();
        if workload.on_delete() && hold.is_none() && matches!(phase, Phase::Pending | Phase::Canary)
        {
            sight.observed.untrusted = Some(
                "the DaemonSet's updateStrategy is OnDelete: its pods change only when someone \
                 deletes them"
                    .into(),
            );
        }
        sight.observed.workload = workload_state(&workload, &target, hold.as_ref());
        sight.observed.canary_exists = hold.is_some() || bad_left;
        sight.observed.canary_pods = running
            .iter()
            .filter(on_canary_node)
            .map(|p| pod_health(p))
            .collect();
        sight.observed.new_pods = running.iter().map(|p| pod_health(p)).collect();
    }

    fn act<'a>(
        &'a self,
        ctx: &'a Context,
        refresh: &'a Refresh,
        sight: &'a Sight,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let Some(workload) = sight.workload.as_deref() else {
                return Ok(());
            };
            let name = refresh.name_any();
            let target = refresh.target(&name);
            let hold = hold_of(workload, &name);
            match change {
                Change::CreateCanary { replicas } => match &hold {
                    Some(h) => replace_on(ctx, workload, &target, &h.nodes).await,
                    None => start_canary(ctx, workload, &target, *replicas).await,
                },
                Change::SetImage { image, stamp } => {
                    let patch = image_patch(&target, image, *stamp, hold.as_ref());
                    patch_guarded(ctx, workload, patch, Error::PatchImage).await
                }
                Change::DeleteCanary => match &hold {
                    Some(h) => {
                        let patch = undo_patch(workload, &target, h);
                        patch_guarded(ctx, workload, patch, Error::DeleteCanary).await
                    }
                    None if !template_applied(workload, &target) => {
                        delete_broken_pods(ctx, workload, &target).await
                    }
                    None => Ok(()),
                },
                Change::RejectDigest => Ok(()),
            }
        }
        .boxed()
    }
}

/// The DaemonSet's live pods.
fn live_pods(ctx: &Context, workload: &CachedWorkload) -> Vec<Arc<CachedPod>> {
    ctx.pods_of(&workload.reference())
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Starts the canary: reads the whole DaemonSet (its own strategy is kept
/// exactly), chooses the nodes, and in one patch sets the new image,
/// `OnDelete` and the hold; then replaces the pods on those nodes.
async fn start_canary(
    ctx: &Context,
    workload: &CachedWorkload,
    target: &Target,
    canary: u32,
) -> Result<(), Error> {
    let api: Api<DaemonSet> = Api::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let whole = api
        .get(&workload.name_any())
        .await
        .map_err(Error::ReadWorkload)?;
    if whole.metadata.resource_version != workload.metadata.resource_version {
        return Err(Error::Stale("the workload changed since it was read"));
    }
    let strategy = whole
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| serde_json::to_value(u).ok());
    let pods = live_pods(ctx, workload);
    let nodes = canary_nodes(pods.iter().filter_map(|p| node_of(p)), canary);
    let hold = CanaryHold {
        refresh: target.name.clone(),
        restarted_by: workload.template().and_then(|t| t.restarted_by.clone()),
        strategy,
        nodes: nodes.clone(),
        ..CanaryHold::default()
    };
    patch_guarded(
        ctx,
        workload,
        canary_patch(target, &hold),
        Error::CreateCanary,
    )
    .await?;
    replace_on(ctx, workload, target, &nodes).await
}

/// Starts the canary: the new image (and stamp), `OnDelete`, the hold.
pub fn canary_patch(target: &Target, hold: &CanaryHold) -> Value {
    let template = template_patch(
        &target.container,
        &target.to_image,
        target.restarts().then(|| json!(target.name)),
    );
    json!({
        "metadata": {"annotations": {CANARY_HOLD: serde_json::to_string(hold).unwrap_or_default()}},
        "spec": {
            "updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
            "template": template,
        },
    })
}

/// The user's strategy as it was, as a patch: `rollingUpdate` removed
/// again when they had none.
fn strategy_back(hold: &CanaryHold) -> Value {
    let mut strategy = hold
        .strategy
        .clone()
        .unwrap_or_else(|| json!({"type": "RollingUpdate"}));
    if let Some(map) = strategy.as_object_mut() {
        map.entry("rollingUpdate").or_insert(Value::Null);
    }
    strategy
}

/// Sets the image (and stamp); with freshen's hold, also puts the user's
/// strategy back and drops the hold: the controller rolls the rest.
pub fn image_patch(target: &Target, image: &str, stamp: bool, hold: Option<&CanaryHold>) -> Value {
    let template = template_patch(&target.container, image, stamp.then(|| json!(target.name)));
    let mut patch = json!({"spec": {"template": template}});
    if let Some(h) = hold {
        patch["metadata"] = json!({"annotations": {CANARY_HOLD: null}});
        patch["spec"]["updateStrategy"] = strategy_back(h);
    }
    patch
}

/// Ends freshen's hold: the user's strategy back, and, while the template
/// still carries freshen's image (and stamp), the old ones back.
pub fn undo_patch(workload: &CachedWorkload, target: &Target, hold: &CanaryHold) -> Value {
    let mut patch = json!({
        "metadata": {"annotations": {CANARY_HOLD: null}},
        "spec": {"updateStrategy": strategy_back(hold)},
    });
    if template_applied(workload, target) {
        patch["spec"]["template"] = template_patch(
            &target.container,
            &target.from_image,
            target.restarts().then(|| json!(hold.restarted_by)),
        );
    }
    patch
}

/// Deletes, by uid, the DaemonSet's pods on `nodes` that do not run the
/// change yet: the controller recreates them from the new template.
async fn replace_on(
    ctx: &Context,
    workload: &CachedWorkload,
    target: &Target,
    nodes: &[String],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let old = live_pods(ctx, workload).into_iter().filter(|p| {
        !runs_target(p, target) && node_of(p).is_some_and(|n| nodes.iter().any(|c| c == n))
    });
    for pod in old {
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
            Err(e) => return Err(Error::CreateCanary(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_core::rollout::{Reason, Settings};

    fn target() -> Target {
        Target {
            name: "agent-app-222222222222".into(),
            container: "app".into(),
            reason: Reason::NewDigest,
            from_image: "reg/agent:1".into(),
            to_image: "reg/agent:1@sha256:22".into(),
            settings: Settings::default(),
            template: None,
        }
    }

    #[test]
    fn the_canary_takes_a_bounded_set_of_nodes_in_a_stable_order() {
        let nodes = ["node-3", "node-1", "node-2", "node-1"];
        assert_eq!(canary_nodes(nodes, 2), ["node-1", "node-2"]);
        assert_eq!(canary_nodes(nodes, 9), ["node-1", "node-2", "node-3"]);
    }

    #[test]
    fn the_users_strategy_goes_back_exactly() {
        let user = json!({"type": "RollingUpdate",
                          "rollingUpdate": {"maxUnavailable": "20%", "maxSurge": 0}});
        let hold = CanaryHold {
            refresh: target().name,
            strategy: Some(user.clone()),
            nodes: vec!["node-1".into()],
            ..CanaryHold::default()
        };
        let start = canary_patch(&target(), &hold);
        assert_eq!(
            start["spec"]["updateStrategy"],
            json!({"type": "OnDelete", "rollingUpdate": null})
        );
        let recorded: CanaryHold = serde_json::from_str(
            start["metadata"]["annotations"][CANARY_HOLD]
                .as_str()
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(recorded, hold);
        let promote = image_patch(&target(), "reg/agent:1@sha256:22", false, Some(&hold));
        assert_eq!(promote["spec"]["updateStrategy"], user);
        assert!(promote["metadata"]["annotations"][CANARY_HOLD].is_null());
        // No rollingUpdate of the user's: the one OnDelete dropped stays
        // dropped (the API defaults it again).
        let bare = CanaryHold {
            strategy: Some(json!({"type": "RollingUpdate"})),
            ..hold
        };
        let back = image_patch(&target(), "i", false, Some(&bare));
        assert!(back["spec"]["updateStrategy"]["rollingUpdate"].is_null());
    }
}
