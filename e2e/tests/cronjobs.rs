//! A CronJob refreshed through a canary Job, end to end on the real
//! control plane (the real Job controller; kwok completes a Job's pod, or
//! fails it when its image holds a marked digest): the canary is one Job
//! made from the CronJob's template with the new image; a completed one
//! promotes the image into the CronJob's template, a failed one rolls back
//! with the CronJob untouched and the digest rejected; a suspended CronJob
//! is held for its owner.

use freshen_api::Refresh;
use freshen_api::refresh::{CANARY_LABEL, REJECTED_DIGESTS};
use freshen_core::rollout::{Failure, Phase};
use freshen_e2e::scene::{Scene, image};
use freshen_e2e::{await_event, await_warning, wait_for};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

/// CronJob `name` running `image` once a year (never during the test),
/// its pods annotated `annotations`.
async fn cron_job(
    s: &Scene,
    name: &str,
    image: &str,
    annotations: Value,
    suspend: bool,
) -> anyhow::Result<()> {
    let object: CronJob = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "schedule": "0 0 1 1 *",
            "suspend": suspend,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "app", "image": image}]},
            }}},
        },
    }))?;
    crons(s).create(&PostParams::default(), &object).await?;
    Ok(())
}

fn crons(s: &Scene) -> Api<CronJob> {
    Api::namespaced(s.client.clone(), &s.ns.name)
}

/// The CronJob's template image and its spec as a whole.
async fn read(s: &Scene, name: &str) -> anyhow::Result<(String, Value)> {
    let cron = serde_json::to_value(crons(s).get(name).await?)?;
    let image = cron
        .pointer("/spec/jobTemplate/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((image, cron))
}

/// Waits until no canary Job is left in the namespace.
async fn await_no_canary(s: &Scene) -> anyhow::Result<()> {
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    wait_for(
        "the canary Job to be gone",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let jobs = jobs.clone();
            async move {
                let left = jobs
                    .list(&ListParams::default().labels(&format!("{CANARY_LABEL}=true")))
                    .await?;
                Ok(left.items.is_empty().then_some(()))
            }
        },
    )
    .await
}

fn phase(r: &Refresh) -> Phase {
    r.progress().phase
}

#[tokio::test]
async fn a_good_digest_runs_one_canary_job_then_goes_into_the_template() -> anyhow::Result<()> {
    let s = Scene::new("cron-promote").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("backup", 100, 2, "30s").await?;
    cron_job(&s, "backup", &v1.pinned(), json!({}), false).await?;
    let (_, before) = read(&s, "backup").await?;
    let _operator = s.operator().await?;
    let v2 = s.push("stable", &image("v2", 1)).await?;

    // One canary Job, from the template, with the new image.
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let canary = wait_for(
        "the canary Job",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let jobs = jobs.clone();
            async move { Ok(jobs.get_opt("backup-canary").await?) }
        },
    )
    .await?;
    let canary = serde_json::to_value(&canary)?;
    assert_eq!(
        canary.pointer("/spec/template/spec/containers/0/image"),
        Some(&json!(v2.pinned()))
    );
    assert_eq!(canary.pointer("/spec/backoffLimit"), Some(&json!(0)));

    let done = s
        .await_refresh("backup", "Succeeded", |r| phase(r) == Phase::Succeeded)
        .await?;
    let (image, after) = read(&s, "backup").await?;
    assert_eq!(image, v2.pinned());
    for field in ["/spec/schedule", "/spec/suspend", "/spec/concurrencyPolicy"] {
        assert_eq!(
            after.pointer(field),
            before.pointer(field),
            "{field} as it was"
        );
    }
    await_no_canary(&s).await?;
    let name = done.name_any();
    for reason in ["CanaryStarted", "Promoting", "RefreshSucceeded"] {
        await_event(&s.client, &s.ns.name, ("Refresh", &name), reason, "").await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_digest_is_rolled_back_with_the_cron_job_untouched() -> anyhow::Result<()> {
    let s = Scene::new("cron-rollback").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    let bad_spec = image("bad", 1);
    let bad = s.push("candidate", &bad_spec).await?;
    s.policy("report", 100, 2, "30s").await?;
    cron_job(
        &s,
        "report",
        &v1.pinned(),
        json!({"e2e.freshen.dev/fail-on": bad.digest}),
        false,
    )
    .await?;
    let (_, before) = read(&s, "report").await?;
    let operator = s.operator().await?;
    s.push("stable", &bad_spec).await?;

    let rolled_back = s
        .await_refresh("report", "RolledBack", |r| phase(r) == Phase::RolledBack)
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::PodFailure), "{progress:?}");
    assert!(
        progress.message.contains("of the canary Job failed"),
        "{}",
        progress.message
    );
    let (image, after) = read(&s, "report").await?;
    assert_eq!(image, v1.pinned(), "the CronJob is untouched");
    assert_eq!(after.pointer("/spec"), before.pointer("/spec"));
    let rejected = after
        .pointer(&format!(
            "/metadata/annotations/{}",
            REJECTED_DIGESTS.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(rejected, format!("app@{}", bad.digest));
    await_no_canary(&s).await?;
    await_warning(&s.client, &s.ns.name, "CronJob", "report", "RolledBack").await?;
    s.await_reconciles(&operator, "cronjob", 4).await?;
    assert_eq!(
        s.refreshes_of("report").await?.len(),
        1,
        "never proposed again"
    );
    Ok(())
}

#[tokio::test]
async fn a_suspended_cron_job_is_held_for_its_owner() -> anyhow::Result<()> {
    let s = Scene::new("cron-suspended").await?;
    let v1 = s.push("stable", &image("v1", 48)).await?;
    s.policy("archive", 100, 1, "30s").await?;
    cron_job(&s, "archive", &v1.pinned(), json!({}), true).await?;
    let _operator = s.operator().await?;
    s.push("stable", &image("v2", 1)).await?;
    let note = await_warning(
        &s.client,
        &s.ns.name,
        "CronJob",
        "archive",
        "WorkloadPaused",
    )
    .await?;
    assert!(note.contains("spec.suspend"), "{note}");
    assert!(s.refreshes_of("archive").await?.is_empty());
    assert_eq!(read(&s, "archive").await?.0, v1.pinned());
    Ok(())
}
