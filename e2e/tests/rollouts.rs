//! An Argo Rollout refreshed through Argo Rollouts, end to end: the real
//! rollouts-controller (v1.10, built from the Go module proxy) runs the
//! Rollout's own canary steps on the real control plane with kwok pods;
//! freshen sets the image and follows the Rollout. A good digest ends
//! Succeeded once the Rollout is Healthy on it; a crash-looping one, or
//! one Argo aborts, is rolled back (the old image set back, Argo returns
//! to its stable ReplicaSet) and rejected; a paused Rollout is held.

use std::time::Duration;

use freshen_api::Refresh;
use freshen_api::refresh::REJECTED_DIGESTS;
use freshen_core::rollout::{Failure, Phase, Strategy};
use freshen_e2e::peers::{Peer, argo_rollouts, custom};
use freshen_e2e::scene::{Scene, image};
use freshen_e2e::{await_event, await_warning, wait_for};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// Argo Rollouts' metrics port in these tests (health on the next).
const ARGO_PORT: u16 = 18095;

/// The shared scene, with Argo Rollouts' controller watching its
/// namespace.
struct Argo {
    scene: Scene,
    _controller: Peer,
}

impl std::ops::Deref for Argo {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.scene
    }
}

impl Argo {
    /// A namespace with the Argo Rollouts controller watching it (its CRDs
    /// installed before freshen starts, so freshen watches Rollouts).
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let scene = Scene::new(prefix).await?;
        let controller = argo_rollouts(&scene.harness, &scene.ns.name, ARGO_PORT)?;
        Ok(Self {
            scene,
            _controller: controller,
        })
    }

    fn rollouts(&self) -> Api<DynamicObject> {
        custom(
            &self.client,
            &self.ns.name,
            "argoproj.io",
            "v1alpha1",
            "Rollout",
        )
    }

    /// Rollout `name` of 2 replicas running `image` with canary `steps`,
    /// its template annotated `annotations`; waits until it is Healthy.
    async fn rollout(
        &self,
        name: &str,
        image: &str,
        steps: Value,
        annotations: Value,
    ) -> anyhow::Result<()> {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
                "strategy": {"canary": {"steps": steps}},
            },
        }))?;
        self.rollouts()
            .create(&PostParams::default(), &object)
            .await?;
        self.await_rollout(name, "Healthy on its first image", |r| {
            r.phase == "Healthy" && r.image == image
        })
        .await?;
        Ok(())
    }

    /// What the test reads of Rollout `name`.
    async fn read(&self, name: &str) -> anyhow::Result<Seen> {
        let r = serde_json::to_value(self.rollouts().get(name).await?)?;
        let text = |path: &str| {
            r.pointer(path)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Seen {
            image: text("/spec/template/spec/containers/0/image"),
            phase: text("/status/phase"),
            stable: text("/status/stableRS"),
            current: text("/status/currentPodHash"),
            rejected: text(&format!(
                "/metadata/annotations/{}",
                REJECTED_DIGESTS.replace('/', "~1")
            )),
        })
    }

    async fn await_rollout(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<Seen> {
        let done = &done;
        wait_for(
            &format!("Rollout {name}: {what}"),
            Duration::from_secs(90),
            Duration::from_millis(100),
            || async move {
                let seen = self.read(name).await?;
                if done(&seen) {
                    Ok(Some(seen))
                } else {
                    anyhow::bail!("{seen:?}")
                }
            },
        )
        .await
    }
}

/// What the test reads of a Rollout.
#[derive(Debug)]
struct Seen {
    image: String,
    phase: String,
    stable: String,
    current: String,
    rejected: String,
}

fn phase(r: &Refresh) -> Phase {
    r.progress().phase
}

#[tokio::test]
async fn a_good_digest_is_rolled_out_by_argo_and_followed_to_success() -> anyhow::Result<()> {
    let s = Argo::new("ro-promote").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("checkout", 50, 2, "60s").await?;
    let steps = json!([{"setWeight": 50}, {"pause": {"duration": "2s"}}]);
    s.rollout("checkout", &v1.pinned(), steps, json!({}))
        .await?;
    let _operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;

    let done = s
        .await_refresh("checkout", "Succeeded", |r| phase(r) == Phase::Succeeded)
        .await?;
    assert_eq!(
        done.spec.rollout.strategy,
        Strategy::Rolling,
        "Argo runs the canary; freshen adds none"
    );
    assert_eq!(done.status.as_ref().and_then(|s| s.canary.clone()), None);
    let seen = s.read("checkout").await?;
    assert_eq!(seen.image, v2.pinned());
    assert_eq!(seen.phase, "Healthy");
    assert_eq!(seen.stable, seen.current, "Argo promoted the new template");
    let name = done.name_any();
    for reason in ["Promoting", "RefreshSucceeded"] {
        await_event(&s.client, &s.ns.name, ("Refresh", &name), reason, "").await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_looping_digest_is_rolled_back_to_argos_stable_and_rejected() -> anyhow::Result<()>
{
    let s = Argo::new("ro-crash").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    let bad_spec = image("bad", 1);
    let bad = s.push("candidate", &bad_spec).await?;
    s.policy("pay", 50, 2, "60s").await?;
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    s.rollout(
        "pay",
        &v1.pinned(),
        steps,
        json!({"e2e.freshen.dev/crash-on": bad.digest}),
    )
    .await?;
    let operator = s.operator().await?;
    s.push("stable", &bad_spec).await?;

    let rolled_back = s
        .await_refresh("pay", "RolledBack", |r| phase(r) == Phase::RolledBack)
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::PodFailure), "{progress:?}");
    assert!(
        progress.message.contains("CrashLoopBackOff"),
        "{}",
        progress.message
    );
    let seen = s
        .await_rollout("pay", "Healthy on the old image", |r| {
            r.phase == "Healthy" && r.image == v1.pinned()
        })
        .await?;
    assert_eq!(seen.rejected, format!("app@{}", bad.digest));
    await_warning(&s.client, &s.ns.name, "Rollout", "pay", "RolledBack").await?;

    // Never proposed again.
    s.await_reconciles(&operator, "rollout", 4).await?;
    assert_eq!(s.refreshes_of("pay").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_rollout_argo_aborts_is_rolled_back_with_argos_reason() -> anyhow::Result<()> {
    let s = Argo::new("ro-abort").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("search", 50, 2, "60s").await?;
    // An indefinite pause: the canary waits for someone to promote or
    // abort it.
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    s.rollout("search", &v1.pinned(), steps, json!({})).await?;
    let _operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;
    s.await_rollout("search", "Paused in its canary", |r| {
        r.image == v2.pinned() && r.phase == "Paused"
    })
    .await?;

    // What `kubectl argo rollouts abort` does.
    s.rollouts()
        .patch_status(
            "search",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"abort": true}})),
        )
        .await?;
    let rolled_back = s
        .await_refresh("search", "RolledBack", |r| phase(r) == Phase::RolledBack)
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::Aborted), "{progress:?}");
    assert!(progress.message.contains("aborted"), "{}", progress.message);
    let seen = s.read("search").await?;
    assert_eq!(seen.image, v1.pinned(), "the old image is back");
    assert_eq!(seen.rejected, format!("app@{}", v2.digest));
    Ok(())
}

#[tokio::test]
async fn a_paused_rollout_is_held_until_resumed() -> anyhow::Result<()> {
    let s = Argo::new("ro-paused").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("cart", 50, 2, "60s").await?;
    let steps = json!([{"setWeight": 50}, {"pause": {"duration": "1s"}}]);
    s.rollout("cart", &v1.pinned(), steps, json!({})).await?;
    let pause = |paused: bool| json!({"spec": {"paused": paused}});
    s.rollouts()
        .patch("cart", &PatchParams::default(), &Patch::Merge(pause(true)))
        .await?;
    let _operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;
    let note = await_warning(&s.client, &s.ns.name, "Rollout", "cart", "WorkloadPaused").await?;
    assert!(note.contains("spec.paused"), "{note}");
    assert!(s.refreshes_of("cart").await?.is_empty());
    assert_eq!(s.read("cart").await?.image, v1.pinned());

    // Resumed: the refresh starts.
    s.rollouts()
        .patch("cart", &PatchParams::default(), &Patch::Merge(pause(false)))
        .await?;
    s.await_refresh("cart", "Succeeded", |r| phase(r) == Phase::Succeeded)
        .await?;
    assert_eq!(s.read("cart").await?.image, v2.pinned());
    Ok(())
}
