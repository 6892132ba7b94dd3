//! A DaemonSet refreshed on a bounded set of nodes first, end to end on
//! the real control plane (the real DaemonSet controller over kwok's
//! simulated nodes): the canary's node gets the new image while the
//! DaemonSet is held at `OnDelete`; promotion puts the user's own strategy
//! back, exactly, and the controller rolls the other nodes (an operator
//! killed mid-canary resumes from the hold); a crash-looping
//! digest is rolled back and rejected; an `OnDelete` DaemonSet is held.

use std::time::Duration;

use freshen_api::refresh::{CANARY_HOLD, REJECTED_DIGESTS};
use freshen_core::rollout::{Failure, Phase};
use freshen_e2e::scene::{Scene, image};
use freshen_e2e::{await_event, await_warning, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// DaemonSet `name` running `image` with `strategy`, its pods annotated
/// `annotations`; waits until every node runs a Ready pod of it.
async fn daemon_set(
    s: &Scene,
    name: &str,
    image: &str,
    strategy: Value,
    annotations: Value,
) -> anyhow::Result<usize> {
    let object: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }))?;
    sets(s).create(&PostParams::default(), &object).await?;
    let nodes = wait_for(
        "the DaemonSet's pods on every node",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let d = sets(s).get(name).await?;
            let status = d.status.unwrap_or_default();
            let desired = status.desired_number_scheduled;
            Ok((desired > 0 && status.number_ready == desired)
                .then(|| usize::try_from(desired).unwrap_or(0)))
        },
    )
    .await?;
    Ok(nodes)
}

fn sets(s: &Scene) -> Api<DaemonSet> {
    Api::namespaced(s.client.clone(), &s.ns.name)
}

/// The DaemonSet as JSON.
async fn read(s: &Scene, name: &str) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(sets(s).get(name).await?)?)
}

fn image_of(d: &Value) -> &str {
    d.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `(image, Ready)` of each live pod of `name`.
async fn pods(s: &Scene, name: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let api: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    let list = api
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (image, ready)
        })
        .collect())
}

async fn await_pods(
    s: &Scene,
    name: &str,
    what: &str,
    done: impl Fn(&[(String, bool)]) -> bool,
) -> anyhow::Result<Vec<(String, bool)>> {
    let done = &done;
    wait_for(
        &format!("pods of {name}: {what}"),
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async move {
            let p = pods(s, name).await?;
            if done(&p) {
                Ok(Some(p))
            } else {
                anyhow::bail!("{p:?}")
            }
        },
    )
    .await
}

fn phase(r: &freshen_api::Refresh) -> Phase {
    r.progress().phase
}

#[tokio::test]
async fn a_good_digest_canaries_on_one_node_then_rolls_with_the_users_strategy()
-> anyhow::Result<()> {
    let s = Scene::new("ds-promote").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("agent", 1, 8, "30s").await?;
    let strategy = json!({"type": "RollingUpdate",
                          "rollingUpdate": {"maxUnavailable": "50%", "maxSurge": 0}});
    let nodes = daemon_set(&s, "agent", &v1.pinned(), strategy.clone(), json!({})).await?;
    assert!(nodes >= 2, "the harness has {nodes} node(s)");
    let mut operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;

    // The canary: OnDelete while it runs, and one node's pod replaced.
    wait_for(
        "the canary's hold",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let d = read(&s, "agent").await?;
            Ok(
                (d.pointer("/spec/updateStrategy/type") == Some(&json!("OnDelete"))
                    && image_of(&d) == v2.pinned())
                .then_some(()),
            )
        },
    )
    .await?;
    let during = await_pods(&s, "agent", "one node on the new image", |p| {
        p.iter().filter(|(i, r)| *i == v2.pinned() && *r).count() == 1
    })
    .await?;
    assert_eq!(
        during.iter().filter(|(i, _)| *i == v1.pinned()).count(),
        nodes - 1,
        "every other node keeps the old pod: {during:?}"
    );

    // Killed mid-canary, a new operator carries it on from the hold.
    operator.kill()?;
    drop(operator);
    let _operator = s.operator().await?;

    let done = s
        .await_refresh("agent", "Succeeded", |r| phase(r) == Phase::Succeeded)
        .await?;
    let after = read(&s, "agent").await?;
    assert_eq!(image_of(&after), v2.pinned());
    assert_eq!(
        after.pointer("/spec/updateStrategy"),
        Some(&strategy),
        "the user's strategy, exactly"
    );
    assert_eq!(
        after.pointer(&format!(
            "/metadata/annotations/{}",
            CANARY_HOLD.replace('/', "~1")
        )),
        None
    );
    await_pods(&s, "agent", "every node on the new image", |p| {
        p.len() == nodes && p.iter().all(|(i, r)| *i == v2.pinned() && *r)
    })
    .await?;
    let name = done.name_any();
    for reason in ["CanaryStarted", "Promoting", "RefreshSucceeded"] {
        await_event(&s.client, &s.ns.name, ("Refresh", &name), reason, "").await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_looping_digest_is_rolled_back_on_its_canary_node_and_rejected()
-> anyhow::Result<()> {
    let s = Scene::new("ds-rollback").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    let bad_spec = image("bad", 1);
    let bad = s.push("candidate", &bad_spec).await?;
    s.policy("proxy", 1, 3, "30s").await?;
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}});
    let nodes = daemon_set(
        &s,
        "proxy",
        &v1.pinned(),
        strategy,
        json!({"e2e.freshen.dev/crash-on": bad.digest}),
    )
    .await?;
    let _operator = s.operator().await?;
    s.push("stable", &bad_spec).await?;

    let rolled_back = s
        .await_refresh("proxy", "RolledBack", |r| phase(r) == Phase::RolledBack)
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::PodFailure), "{progress:?}");
    assert_eq!(progress.promoted_at, None);
    let after = read(&s, "proxy").await?;
    assert_eq!(image_of(&after), v1.pinned());
    assert_eq!(
        after.pointer("/spec/updateStrategy/type"),
        Some(&json!("RollingUpdate"))
    );
    assert_eq!(
        after
            .pointer(&format!(
                "/metadata/annotations/{}",
                REJECTED_DIGESTS.replace('/', "~1")
            ))
            .and_then(Value::as_str),
        Some(format!("app@{}", bad.digest).as_str())
    );
    await_pods(&s, "proxy", "every node back on the old image", |p| {
        p.len() == nodes && p.iter().all(|(i, r)| *i == v1.pinned() && *r)
    })
    .await?;
    await_warning(&s.client, &s.ns.name, "DaemonSet", "proxy", "RolledBack").await?;
    Ok(())
}

#[tokio::test]
async fn an_on_delete_daemon_set_is_left_to_its_owner() -> anyhow::Result<()> {
    let s = Scene::new("ds-ondelete").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("cni", 1, 1, "30s").await?;
    daemon_set(
        &s,
        "cni",
        &v1.pinned(),
        json!({"type": "OnDelete"}),
        json!({}),
    )
    .await?;
    let _operator = s.operator().await?;
    s.push("stable", &image("v2", 1)).await?;
    let note = await_warning(&s.client, &s.ns.name, "DaemonSet", "cni", "WorkloadPaused").await?;
    assert!(note.contains("updateStrategy OnDelete"), "{note}");
    assert!(s.refreshes_of("cni").await?.is_empty());
    assert_eq!(image_of(&read(&s, "cni").await?), v1.pinned());
    Ok(())
}
