//! TagRecords are bounded: a tenant churning `freshen.dev/base-image`
//! through many tags gets a burst of records, then one a minute, answered
//! from memory past that; records nothing looks at any more are deleted.
//! Run as the tenant (a ServiceAccount with `admin` in its namespace)
//! against the real control plane and registry.
//!
//! `FRESHEN_E2E_TAG_CHURN` sets the number of annotation changes (default
//! 1,000; the figures in the guide's Scale page are from 10,000).

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use freshen_api::TagRecord;
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{Harness, OPERATOR_NAMESPACE, TestNamespace, init_tls, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Distinct base tags the tenant cycles through.
const BASE_TAGS: usize = 200;
/// New tags one workload may have recorded at once, in this test.
const BURST: usize = 5;

async fn records_from(admin: &Client, ns: &str) -> anyhow::Result<Vec<TagRecord>> {
    Ok(
        Api::<TagRecord>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|r| r.spec.origin.as_deref() == Some(ns))
            .collect(),
    )
}

#[tokio::test]
async fn churning_base_image_annotations_leaves_records_and_memory_bounded() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let ns = TestNamespace::create(&harness, &admin, "tag-churn").await?;
    let tenant = ns.tenant_client(&harness, &admin).await?;
    let churn: usize = std::env::var("FRESHEN_E2E_TAG_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    // The tenant's app, built two days ago on no recorded base, and as many
    // base tags as it likes, each built an hour ago (so each is a base
    // that moved on, whose first sighting freshen would record).
    let app = push(
        &harness.registry,
        &format!("e2e/{}/app", ns.name),
        "1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::hours(48)),
    )
    .await?;
    let base_repo = format!("e2e/{}/base", ns.name);
    for i in 0..BASE_TAGS {
        let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::hours(1));
        spec.content = format!("base {i}");
        push(&harness.registry, &base_repo, &format!("t{i}"), &spec).await?;
    }
    let base = |i: usize| format!("{}/{base_repo}:t{}", harness.registry, i % BASE_TAGS);
    let deploy = freshen_e2e::deployment_with(
        "churn",
        &app.pinned(),
        1,
        serde_json::json!({"metadata": {"annotations": {
            "freshen.dev/refresh": "enabled",
            "freshen.dev/base-image": base(0),
        }}}),
    )?;
    let deployments: Api<Deployment> = Api::namespaced(tenant.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deploy).await?;
    let operator = Operator::start(
        &harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &ns.name,
            "--tag-record-burst",
            &BURST.to_string(),
            "--tag-record-retention",
            "20s",
        ],
    )
    .await?;
    wait_for(
        "the first records",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let n = records_from(&admin, &ns.name).await?.len();
            if n >= 2 {
                Ok(Some(()))
            } else {
                anyhow::bail!("{n} records")
            }
        },
    )
    .await?;
    let rss_before = operator.rss_bytes()?;
    let started = Instant::now();
    for i in 1..=churn {
        let patch = serde_json::json!({"metadata": {"annotations": {
            "freshen.dev/base-image": base(i),
        }}});
        deployments
            .patch("churn", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let churned_in = started.elapsed();
    // The workload's bucket ran dry: further tags were answered from
    // memory.
    wait_for(
        "new tags refused a record",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let refused = operator
                .metric(r#"freshen_tag_records_total{outcome="workload_rate"}"#)
                .await?;
            if refused > 0.0 {
                Ok(Some(refused))
            } else {
                anyhow::bail!("none refused yet")
            }
        },
    )
    .await?;
    let records = records_from(&admin, &ns.name).await?.len();
    let minutes = usize::try_from(started.elapsed().as_secs() / 60)?;
    // The burst (the app's own tag and the first bases among it), then
    // one a minute.
    assert!(
        records <= BURST + minutes + 1,
        "{records} records after {churn} changes in {}s",
        started.elapsed().as_secs()
    );
    let rss_after = operator.rss_bytes()?;
    eprintln!(
        "{churn} base-image changes in {:.1}s: {records} records of this namespace, \
         operator RSS {} -> {} MiB",
        churned_in.as_secs_f64(),
        rss_before / (1 << 20),
        rss_after / (1 << 20),
    );
    assert!(
        rss_after < rss_before + 64 * (1 << 20),
        "RSS grew from {rss_before} to {rss_after}"
    );
    // The annotation settles; the records of the bases it named before are
    // looked at no more and deleted after the retention (20 s here): the
    // app's tag and the current base remain.
    wait_for(
        "records nothing looks at to be deleted",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || async {
            let left = records_from(&admin, &ns.name).await?;
            if left.len() <= 2 {
                Ok(Some(left))
            } else {
                anyhow::bail!("{} records left", left.len())
            }
        },
    )
    .await?;
    assert!(
        operator
            .metric(r#"freshen_tag_records_total{outcome="deleted"}"#)
            .await?
            > 0.0
    );
    Ok(())
}
