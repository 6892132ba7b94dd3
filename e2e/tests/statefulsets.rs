//! A StatefulSet refreshed in place, end to end on the real control plane:
//! the real StatefulSet controller, kwok pods (Ready, or crash-looping when
//! their image holds a marked digest), a real registry. The canary is the
//! highest ordinals through the partition; promotion puts the user's own
//! partition back; a crash-looping digest is rolled back, its broken pod
//! replaced and the digest rejected; someone else's edit mid-canary stops
//! freshen without overwriting it; an operator killed mid-canary and
//! mid-promotion resumes;
//! an `OnDelete` StatefulSet is left to its owner.

use std::time::Duration;

use freshen_api::Refresh;
use freshen_api::refresh::{CANARY_HOLD, REJECTED_DIGESTS};
use freshen_core::rollout::{Failure, Phase, Reason};
use freshen_e2e::scene::{Scene, image};
use freshen_e2e::{await_event, await_warning, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// The shared scene, and the StatefulSets it makes and reads.
struct Sets(Scene);

impl std::ops::Deref for Sets {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.0
    }
}

impl Sets {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        Ok(Self(Scene::new(prefix).await?))
    }

    /// StatefulSet `name` of 3 replicas running `image`, with `strategy`
    /// and its template annotated `annotations`; waits for its pods.
    async fn stateful_set(
        &self,
        name: &str,
        image: &str,
        strategy: Value,
        annotations: Value,
    ) -> anyhow::Result<()> {
        let object: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 3,
                "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "updateStrategy": strategy,
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
            },
        }))?;
        self.stateful_sets()
            .create(&PostParams::default(), &object)
            .await?;
        self.await_pods(name, "3 pods Ready on the first image", |pods| {
            pods.len() == 3 && pods.iter().all(|p| p.ready && p.image == image)
        })
        .await?;
        Ok(())
    }

    fn stateful_sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// What the test reads of StatefulSet `name`.
    async fn read(&self, name: &str) -> anyhow::Result<Seen> {
        let s = self.stateful_sets().get(name).await?;
        let spec = s.spec.clone().unwrap_or_default();
        let template = spec.template.spec.clone().unwrap_or_default();
        Ok(Seen {
            image: template.containers[0].image.clone().unwrap_or_default(),
            env: template.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect(),
            partition: spec
                .update_strategy
                .and_then(|u| u.rolling_update)
                .and_then(|r| r.partition),
            hold: s.annotations().get(CANARY_HOLD).cloned(),
            rejected: s.annotations().get(REJECTED_DIGESTS).cloned(),
        })
    }

    /// Waits until `name`'s StatefulSet satisfies `done`.
    async fn await_set(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<Seen> {
        let done = &done;
        wait_for(
            &format!("StatefulSet {name}: {what}"),
            Duration::from_secs(60),
            Duration::from_millis(50),
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

    /// The live pods of `name`, by ordinal.
    async fn pods(&self, name: &str) -> anyhow::Result<Vec<Member>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await?;
        let mut pods: Vec<Member> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| Member {
                name: p.name_any(),
                image: p
                    .spec
                    .as_ref()
                    .map(|s| s.containers[0].image.clone().unwrap_or_default())
                    .unwrap_or_default(),
                ready: p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// Waits until `name`'s pods satisfy `done`.
    async fn await_pods(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&[Member]) -> bool,
    ) -> anyhow::Result<Vec<Member>> {
        let done = &done;
        wait_for(
            &format!("pods of {name}: {what}"),
            Duration::from_secs(90),
            Duration::from_millis(100),
            || async move {
                let pods = self.pods(name).await?;
                if done(&pods) {
                    Ok(Some(pods))
                } else {
                    anyhow::bail!("{pods:?}")
                }
            },
        )
        .await
    }
}

/// What the test reads of a StatefulSet.
#[derive(Debug)]
struct Seen {
    image: String,
    env: Vec<String>,
    partition: Option<i32>,
    hold: Option<String>,
    rejected: Option<String>,
}

/// One pod of a StatefulSet.
#[derive(Debug)]
struct Member {
    name: String,
    image: String,
    ready: bool,
}

fn phase(r: &Refresh) -> Phase {
    r.progress().phase
}

fn rolling(partition: Option<i32>) -> Value {
    match partition {
        Some(p) => json!({"type": "RollingUpdate", "rollingUpdate": {"partition": p}}),
        None => json!({"type": "RollingUpdate"}),
    }
}

#[tokio::test]
async fn a_good_digest_canaries_on_the_highest_ordinal_and_keeps_the_users_partition()
-> anyhow::Result<()> {
    let s = Sets::new("sts-promote").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("db", 33, 4, "30s").await?;
    // The user holds ordinal 0 back with a partition of their own.
    s.stateful_set("db", &v1.pinned(), rolling(Some(1)), json!({}))
        .await?;
    // A pod counts as available 3s after it is Ready: the promotion takes
    // long enough to be killed in.
    s.stateful_sets()
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minReadySeconds": 3}})),
        )
        .await?;
    let operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;

    // The canary: the new image in the template, the partition raised to
    // the highest ordinal only, the hold recording the user's partition.
    let canary = s
        .await_set("db", "canary partition", |x| {
            x.image == v2.pinned() && x.partition == Some(2) && x.hold.is_some()
        })
        .await?;
    assert!(
        canary
            .hold
            .as_deref()
            .is_some_and(|h| h.contains("\"partition\":1")),
        "{canary:?}"
    );
    let pods = s
        .await_pods("db", "db-2 on the new image", |p| {
            p.len() == 3 && p[2].image == v2.pinned() && p[2].ready
        })
        .await?;
    assert_eq!(pods[0].image, v1.pinned());
    assert_eq!(pods[1].image, v1.pinned(), "only the canary's ordinal");

    // Killed mid-canary, and again mid-promotion: each new operator
    // carries the Refresh on.
    let mut operator = operator;
    operator.kill()?;
    drop(operator);
    let mut operator = s.operator().await?;
    s.await_refresh("db", "Promoting, the hold released", |r| {
        phase(r) == Phase::Promoting && r.progress().patched_at.is_some()
    })
    .await?;
    operator.kill()?;
    drop(operator);
    let _operator = s.operator().await?;

    let done = s
        .await_refresh("db", "Succeeded", |r| phase(r) == Phase::Succeeded)
        .await?;
    assert_eq!(
        done.spec.workload_kind.map(|k| k.as_str()),
        Some("StatefulSet")
    );
    let after = s.read("db").await?;
    assert_eq!(after.image, v2.pinned());
    assert_eq!(after.partition, Some(1), "the user's partition is back");
    assert_eq!(after.hold, None);
    let pods = s
        .await_pods("db", "ordinals 1 and 2 on the new image", |p| {
            p.len() == 3 && p[1].image == v2.pinned() && p[2].image == v2.pinned()
        })
        .await?;
    assert_eq!(
        pods[0].image,
        v1.pinned(),
        "ordinal 0 stays under the user's partition"
    );
    assert_eq!(s.refreshes_of("db").await?.len(), 1);
    let name = done.name_any();
    for reason in ["CanaryStarted", "Promoting", "RefreshSucceeded"] {
        await_event(&s.client, &s.ns.name, ("Refresh", &name), reason, "").await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_looping_digest_is_rolled_back_its_pod_replaced_and_rejected() -> anyhow::Result<()>
{
    let s = Sets::new("sts-rollback").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    let bad_spec = image("bad", 1);
    let bad = s.push("candidate", &bad_spec).await?;
    s.policy("queue", 33, 3, "30s").await?;
    // OrderedReady (the default): the controller waits on the broken pod
    // before anything else, so the rollback must delete it.
    s.stateful_set(
        "queue",
        &v1.pinned(),
        rolling(None),
        json!({"e2e.freshen.dev/crash-on": bad.digest}),
    )
    .await?;
    let operator = s.operator().await?;
    s.push("stable", &bad_spec).await?;

    let rolled_back = s
        .await_refresh("queue", "RolledBack", |r| phase(r) == Phase::RolledBack)
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::PodFailure), "{progress:?}");
    assert!(
        progress.message.contains("CrashLoopBackOff"),
        "{}",
        progress.message
    );
    assert_eq!(progress.promoted_at, None);

    // The template, partition and hold are as before; the broken pod was
    // replaced by one of the old revision.
    let after = s.read("queue").await?;
    assert_eq!(after.image, v1.pinned());
    assert_eq!(
        after.partition.unwrap_or(0),
        0,
        "the user's partition (none)"
    );
    assert_eq!(after.hold, None);
    assert_eq!(after.rejected, Some(format!("app@{}", bad.digest)));
    s.await_pods("queue", "all Ready on the old image", |p| {
        p.len() == 3 && p.iter().all(|m| m.ready && m.image == v1.pinned())
    })
    .await?;
    let note = await_warning(&s.client, &s.ns.name, "StatefulSet", "queue", "RolledBack").await?;
    assert!(note.contains("CrashLoopBackOff"), "{note}");

    // Never proposed again.
    operator
        .await_metric(r#"freshen_rollbacks_total{reason="PodFailure"}"#, 1.0)
        .await?;
    s.await_reconciles(&operator, "statefulset", 4).await?;
    assert_eq!(s.refreshes_of("queue").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn someone_elses_edit_mid_canary_stops_freshen_and_is_kept() -> anyhow::Result<()> {
    let s = Sets::new("sts-conflict").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("cache", 33, 30, "30s").await?;
    s.stateful_set("cache", &v1.pinned(), rolling(None), json!({}))
        .await?;
    let _operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;
    s.await_set("cache", "canary partition", |x| {
        x.image == v2.pinned() && x.partition == Some(2)
    })
    .await?;

    // Someone adds an environment variable while the canary runs.
    let env = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "MODE", "value": "edited"}]}
    ]}}}});
    s.stateful_sets()
        .patch("cache", &PatchParams::default(), &Patch::Strategic(&env))
        .await?;
    let failed = s
        .await_refresh("cache", "Failed", |r| phase(r) == Phase::Failed)
        .await?;
    assert_eq!(failed.progress().failure, Some(Failure::Conflict));
    // freshen's hold is gone, the user's partition (none) is back, and
    // freshen's unproven image is taken out again: it never reaches every
    // pod. Their edit stays.
    let after = s
        .await_set("cache", "hold released", |x| x.hold.is_none())
        .await?;
    assert_eq!(after.partition.unwrap_or(0), 0);
    assert_eq!(after.env, ["MODE"]);
    assert_eq!(after.image, v1.pinned());
    s.await_pods("cache", "all Ready on the old image", |p| {
        p.len() == 3 && p.iter().all(|m| m.ready && m.image == v1.pinned())
    })
    .await?;
    assert_eq!(s.refreshes_of("cache").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_on_delete_stateful_set_is_left_to_its_owner() -> anyhow::Result<()> {
    let s = Sets::new("sts-ondelete").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("ledger", 33, 1, "30s").await?;
    s.stateful_set(
        "ledger",
        &v1.pinned(),
        json!({"type": "OnDelete"}),
        json!({}),
    )
    .await?;
    let _operator = s.operator().await?;
    s.push("stable", &image("v2", 1)).await?;
    let note = await_warning(
        &s.client,
        &s.ns.name,
        "StatefulSet",
        "ledger",
        "WorkloadPaused",
    )
    .await?;
    assert!(note.contains("updateStrategy OnDelete"), "{note}");
    assert_eq!(s.refreshes_of("ledger").await?.len(), 0);
    assert_eq!(s.read("ledger").await?.image, v1.pinned());
    Ok(())
}

#[tokio::test]
async fn a_restart_waits_for_the_disruption_budget_then_rolls_in_order() -> anyhow::Result<()> {
    let s = Sets::new("sts-budget").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    // Opted in by annotation: restart containers older than 3s.
    let object: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "kv", "labels": {"app": "kv"}, "annotations": {
            "freshen.dev/refresh": "enabled",
            "freshen.dev/max-container-age": "3s",
        }},
        "spec": {
            "replicas": 3,
            "serviceName": "kv",
            "selector": {"matchLabels": {"app": "kv"}},
            "template": {
                "metadata": {"labels": {"app": "kv"}},
                "spec": {"containers": [{"name": "app", "image": v1.pinned()}]},
            },
        },
    }))?;
    s.stateful_sets()
        .create(&PostParams::default(), &object)
        .await?;
    // A budget that allows no disruption at all.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(s.client.clone(), &s.ns.name);
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "kv"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "kv"}}},
    }))?;
    budgets.create(&PostParams::default(), &budget).await?;
    s.await_pods("kv", "3 pods Ready", |p| {
        p.len() == 3 && p.iter().all(|m| m.ready)
    })
    .await?;
    let operator = s.operator().await?;

    let note = await_warning(
        &s.client,
        &s.ns.name,
        "StatefulSet",
        "kv",
        "DisruptionBudgetExhausted",
    )
    .await?;
    assert!(note.contains("PodDisruptionBudget kv"), "{note}");
    s.await_reconciles(&operator, "statefulset", 3).await?;
    assert!(s.refreshes_of("kv").await?.is_empty(), "held, not started");

    // The budget allows one: the restart starts and rolls in order.
    budgets
        .patch(
            "kv",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": 1}})),
        )
        .await?;
    let done = s
        .await_refresh("kv", "a restart Succeeded", |r| {
            r.spec.reason == Reason::ContainerTooOld && phase(r) == Phase::Succeeded
        })
        .await?;
    assert_eq!(done.spec.to_image, v1.pinned(), "the same digest");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    let restarted = pods
        .list(&ListParams::default().labels("app=kv"))
        .await?
        .items
        .iter()
        .filter(|p| p.annotations().get("freshen.dev/restarted-by") == Some(&done.name_any()))
        .count();
    assert_eq!(restarted, 3, "every pod restarted by the Refresh");
    Ok(())
}
