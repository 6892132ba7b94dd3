//! A StatefulSet's refresh: the canary runs inside the workload. Its
//! template takes the new image while `updateStrategy.rollingUpdate.partition`
//! keeps the update to the highest ordinals, the canary's pods; promotion
//! puts the user's own partition back and the StatefulSet controller rolls
//! the rest, highest ordinal first; rollback restores the template and the
//! partition, then deletes the pods that run the bad image and are not
//! Ready (a StatefulSet never replaces a broken pod by itself: the known
//! stuck rollout). The user's partition and the template's previous restart
//! stamp are kept in the [`CANARY_HOLD`] annotation, written in the same
//! patch that sets the canary's partition, so an operator killed at any
//! point restores them exactly. `OnDelete` StatefulSets are left alone
//! (the planner holds them): their owner decides when pods change.

use std::sync::Arc;

use freshen_api::Refresh;
use freshen_api::refresh::CANARY_HOLD;
use freshen_core::rollout::{Change, Phase, Target, WorkloadState};
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::in_place::{CanaryHold, delete_broken_pods, hold_of, template_applied};
use super::{Mechanics, Sight, patch_guarded, pod_health, runs_target, template_patch};
use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;

/// The mechanics of StatefulSets.
pub struct StatefulSets;

/// The state machine's view of a StatefulSet's `container`: the pods it
/// may update are those at or above the user's own partition, and it is
/// rolled out when the controller saw the latest spec, every pod is
/// available (Ready for the StatefulSet's `minReadySeconds`) and those
/// pods run the update revision.
pub fn workload_state(
    workload: &CachedWorkload,
    target: &Target,
    hold: Option<&CanaryHold>,
) -> Option<WorkloadState> {
    let spec = workload.spec.as_ref()?;
    let template = workload.template()?;
    let container = workload.container(&target.container);
    let desired = spec.replicas.unwrap_or(1).max(0);
    let own_partition = hold
        .map_or(workload.partition(), |h| h.partition.unwrap_or(0))
        .clamp(0, desired);
    let updatable = desired - own_partition;
    let status = workload.status.clone().unwrap_or_default();
    let rolled_out = hold.is_none()
        && status.observed_generation >= workload.metadata.generation
        && status.replicas == Some(desired)
        && status.available_replicas.unwrap_or(0) == desired
        && status.updated_replicas.unwrap_or(0) >= updatable
        && (own_partition > 0 || status.current_revision == status.update_revision);
    Some(WorkloadState {
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        restart_token: template.restarted_by.clone(),
        template: container.map(|c| c.fingerprint.clone()).unwrap_or_default(),
        replicas: u32::try_from(updatable).unwrap_or(0),
        rolled_out,
        held: hold.is_some(),
        gave_up: None,
    })
}

/// The partition that runs a canary of `canary` pods: the highest
/// ordinals, never below the user's own partition.
pub fn canary_partition(desired: i32, own: i32, canary: u32) -> i32 {
    let canary = i32::try_from(canary).unwrap_or(i32::MAX);
    desired.saturating_sub(canary).max(own).max(0)
}

impl Mechanics for StatefulSets {
    fn in_place(&self) -> bool {
        true
    }

    fn observe(&self, ctx: &Context, refresh: &Refresh, phase: Phase, sight: &mut Sight) {
        // No canary object of its own.
        sight.canary_name.clear();
        let Some(workload) = sight.workload.clone() else {
            return;
        };
        let name = refresh.name_any();
        let target = refresh.target(&name);
        let hold = hold_of(&workload, &name);
        let live: Vec<Arc<CachedPod>> = ctx
            .pods_of(&workload.reference())
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let new_pods: Vec<_> = live
            .iter()
            .filter(|p| runs_target(p, &target))
            .map(|p| pod_health(p))
            .collect();
        // Rolling back: the canary is gone once no pod runs the change.
        let bad_left = phase == Phase::RollingBack
            && !template_applied(&workload, &target)
            && !new_pods.is_empty();
        if workload.on_delete() && matches!(phase, Phase::Pending | Phase::Canary) {
            sight.observed.untrusted = Some(
                "the StatefulSet's updateStrategy is OnDelete: its pods change only when \
                 someone deletes them"
                    .into(),
            );
        }
        sight.observed.workload = workload_state(&workload, &target, hold.as_ref());
        sight.observed.canary_exists = hold.is_some() || bad_left;
        sight.observed.canary_pods = new_pods.clone();
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
            let Some(workload) = sight.workload.as_deref() else {
                return Ok(());
            };
            let name = refresh.name_any();
            let target = refresh.target(&name);
            let hold = hold_of(workload, &name);
            match change {
                Change::CreateCanary { replicas } if hold.is_none() => {
                    let patch = canary_patch(workload, &target, *replicas);
                    patch_guarded(ctx, workload, patch, Error::CreateCanary).await
                }
                Change::SetImage { image, stamp } => {
                    let patch = image_patch(workload, &target, image, *stamp, hold.as_ref());
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
                Change::CreateCanary { .. } | Change::RejectDigest => Ok(()),
            }
        }
        .boxed()
    }
}

/// The partition as a patch value: the number, or `null` to remove it.
fn partition_value(partition: Option<i32>) -> Value {
    partition.map_or(Value::Null, Value::from)
}

/// Starts the canary: the new image (and the stamp of a restart), the
/// canary's partition, and the hold recording what to put back, in one
/// patch.
pub fn canary_patch(workload: &CachedWorkload, target: &Target, canary: u32) -> Value {
    let desired = workload.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let own = workload
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition);
    let hold = CanaryHold {
        refresh: target.name.clone(),
        partition: own,
        restarted_by: workload.template().and_then(|t| t.restarted_by.clone()),
        ..CanaryHold::default()
    };
    let partition = canary_partition(desired, own.unwrap_or(0), canary);
    let template = template_patch(
        &target.container,
        &target.to_image,
        target.restarts().then(|| json!(target.name)),
    );
    json!({
        "metadata": {"annotations": {CANARY_HOLD: serde_json::to_string(&hold).unwrap_or_default()}},
        "spec": {
            "updateStrategy": {"rollingUpdate": {"partition": partition}},
            "template": template,
        },
    })
}

/// Sets the image (and the stamp); with freshen's hold, also puts the
/// user's partition back and drops the hold: the rollout proceeds.
pub fn image_patch(
    _workload: &CachedWorkload,
    target: &Target,
    image: &str,
    stamp: bool,
    hold: Option<&CanaryHold>,
) -> Value {
    let template = template_patch(&target.container, image, stamp.then(|| json!(target.name)));
    let mut patch = json!({"spec": {"template": template}});
    if let Some(h) = hold {
        patch["metadata"] = json!({"annotations": {CANARY_HOLD: null}});
        patch["spec"]["updateStrategy"] =
            json!({"rollingUpdate": {"partition": partition_value(h.partition)}});
    }
    patch
}

/// Ends freshen's hold: the user's partition back, and, while the
/// template still carries freshen's image (and stamp), the old ones back:
/// an unproven image is never released to every pod. Someone else's
/// change is never overwritten: another image of theirs stays, and so does
/// any other edit of the template (only the container's image is named).
pub fn undo_patch(workload: &CachedWorkload, target: &Target, hold: &CanaryHold) -> Value {
    let ours = template_applied(workload, target);
    let mut patch = json!({
        "metadata": {"annotations": {CANARY_HOLD: null}},
        "spec": {"updateStrategy": {"rollingUpdate": {"partition": partition_value(hold.partition)}}},
    });
    if ours {
        patch["spec"]["template"] = template_patch(
            &target.container,
            &target.from_image,
            target.restarts().then(|| json!(hold.restarted_by)),
        );
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::refresh::RESTARTED_BY;
    use freshen_core::rollout::{Reason, Settings};

    const FROM: &str = "reg/db:1";
    const TO: &str = "reg/db:1@sha256:22";

    fn stateful(image: &str, partition: Option<i32>, annotations: Value) -> CachedWorkload {
        let mut strategy = json!({"type": "RollingUpdate"});
        if let Some(p) = partition {
            strategy["rollingUpdate"] = json!({"partition": p});
        }
        let mut w: CachedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop", "generation": 2, "annotations": annotations},
            "spec": {
                "replicas": 5,
                "updateStrategy": strategy,
                "template": {
                    "metadata": {"labels": {"app": "db"}, "annotations": {RESTARTED_BY: "before"}},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
            },
            "status": {
                "observedGeneration": 2, "replicas": 5, "readyReplicas": 5, "availableReplicas": 5,
                "updatedReplicas": 5, "currentRevision": "db-1", "updateRevision": "db-1",
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        w.stamp(freshen_core::kind::Kind::StatefulSet);
        w
    }

    fn target(reason: Reason) -> Target {
        let w = stateful(FROM, None, json!({}));
        Target {
            name: "db-app-222222222222".into(),
            container: "app".into(),
            reason,
            from_image: FROM.into(),
            to_image: if reason == Reason::ContainerTooOld {
                FROM
            } else {
                TO
            }
            .into(),
            settings: Settings::default(),
            template: w.container("app").map(|c| c.fingerprint.clone()),
        }
    }

    #[test]
    fn the_canary_takes_the_highest_ordinals_above_the_users_partition() {
        assert_eq!(canary_partition(5, 0, 1), 4);
        assert_eq!(canary_partition(5, 0, 2), 3);
        // The user's partition is never lowered by a canary.
        assert_eq!(canary_partition(5, 4, 2), 4);
        assert_eq!(canary_partition(1, 0, 5), 0);
    }

    #[test]
    fn the_canary_patch_records_what_to_put_back_and_undo_restores_it() {
        let t = target(Reason::NewDigest);
        let w = stateful(FROM, Some(1), json!({}));
        let patch = canary_patch(&w, &t, 1);
        assert_eq!(
            patch["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            4
        );
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"][0]["image"],
            TO
        );
        assert!(
            patch["spec"]["template"]["metadata"].is_null(),
            "no stamp for a new digest"
        );
        let hold: CanaryHold = serde_json::from_str(
            patch["metadata"]["annotations"][CANARY_HOLD]
                .as_str()
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hold.partition, Some(1));
        assert_eq!(hold.restarted_by.as_deref(), Some("before"));

        // Held as the canary left it: the image and partition go back.
        let held = stateful(
            TO,
            Some(4),
            json!({CANARY_HOLD: serde_json::to_string(&hold).unwrap_or_default()}),
        );
        assert_eq!(hold_of(&held, &t.name), Some(hold.clone()));
        assert_eq!(hold_of(&held, "another-refresh"), None);
        let undo = undo_patch(&held, &t, &hold);
        assert_eq!(
            undo["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            1
        );
        assert_eq!(
            undo["spec"]["template"]["spec"]["containers"][0]["image"],
            FROM
        );
        assert!(undo["metadata"]["annotations"][CANARY_HOLD].is_null());

        // Someone else edited the template meanwhile: freshen's image
        // still goes (their edit is not named), but their own image stays.
        let mut edited = held.clone();
        if let Some(c) = edited
            .spec
            .as_mut()
            .and_then(|s| s.template.containers.first_mut())
        {
            c.fingerprint = "edited".into();
        }
        let undo = undo_patch(&edited, &t, &hold);
        assert_eq!(
            undo["spec"]["template"]["spec"]["containers"][0]["image"],
            FROM
        );
        assert_eq!(
            undo["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let theirs = stateful("reg/db:9", Some(4), json!({}));
        let undo = undo_patch(&theirs, &t, &hold);
        assert!(undo["spec"]["template"].is_null(), "{undo}");
        assert_eq!(
            undo["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            1
        );

        // No partition of the user's: it is removed again, not set to 0.
        let none = CanaryHold {
            partition: None,
            ..hold
        };
        let release = image_patch(&held, &t, TO, false, Some(&none));
        assert!(release["spec"]["updateStrategy"]["rollingUpdate"]["partition"].is_null());
        assert!(
            release["spec"]["updateStrategy"]["rollingUpdate"]
                .as_object()
                .is_some_and(|o| o.contains_key("partition"))
        );
    }

    #[test]
    fn a_restart_stamps_the_template_and_its_undo_restores_the_old_stamp() {
        let t = target(Reason::ContainerTooOld);
        let w = stateful(FROM, None, json!({}));
        let patch = canary_patch(&w, &t, 1);
        assert_eq!(
            patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY],
            t.name.as_str()
        );
        let mut stamped = w.clone();
        if let Some(s) = stamped.spec.as_mut() {
            s.template.restarted_by = Some(t.name.clone());
        }
        let hold = CanaryHold {
            refresh: t.name.clone(),
            partition: None,
            restarted_by: Some("before".into()),
            ..CanaryHold::default()
        };
        let undo = undo_patch(&stamped, &t, &hold);
        assert_eq!(
            undo["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY],
            "before"
        );
    }

    #[test]
    fn the_state_counts_only_the_pods_above_the_users_partition() {
        let t = target(Reason::NewDigest);
        let w = stateful(FROM, Some(2), json!({}));
        let s = workload_state(&w, &t, None).unwrap_or_default();
        assert_eq!((s.replicas, s.held, s.rolled_out), (3, false, true));
        // Held by the canary: the user's partition from the hold, never
        // rolled out while held.
        let hold = CanaryHold {
            refresh: t.name.clone(),
            partition: Some(2),
            restarted_by: None,
            ..CanaryHold::default()
        };
        let held = stateful(TO, Some(4), json!({}));
        let s = workload_state(&held, &t, Some(&hold)).unwrap_or_default();
        assert_eq!((s.replicas, s.held, s.rolled_out), (3, true, false));
        // A revision still rolling: not rolled out.
        let mut rolling = stateful(TO, None, json!({}));
        if let Some(st) = rolling.status.as_mut() {
            st.update_revision = Some("db-2".into());
            st.updated_replicas = Some(2);
        }
        let s = workload_state(&rolling, &t, None).unwrap_or_default();
        assert!(!s.rolled_out);
    }

    #[test]
    fn on_delete_is_the_owners_control() {
        let mut w = stateful(FROM, None, json!({}));
        if let Some(u) = w.spec.as_mut().and_then(|s| s.update_strategy.as_mut()) {
            u.type_ = Some("OnDelete".into());
        }
        assert_eq!(w.paused(), Some("updateStrategy OnDelete"));
    }
}
