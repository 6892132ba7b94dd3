//! Tenants do not interfere with each other: two namespaces' policies of
//! one name keep separate limits, one namespace's stuck canaries cannot use
//! up the operator-wide limit, and a workload cannot pin a
//! ClusterRefreshPolicy that was not written for its namespace.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyRefresh, Refresh,
    RefreshPolicy, RefreshPolicySpec,
};
use freshen_core::rollout::Phase;
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::PostParams;
use kube::{Api, Client};

/// A policy named `team` for the workloads labelled `tier=web`: follow the
/// tag, and a canary whose analysis takes an hour, so it stays active for
/// the whole test (a stuck canary).
fn team_policy(max_concurrent: Option<u32>) -> RefreshPolicy {
    RefreshPolicy::new(
        "team",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: LabelSelector {
                match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
                ..LabelSelector::default()
            },
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh {
                follow_tag: Some(true),
                max_concurrent,
                rollout: Some(RolloutSpec {
                    analysis: Some(AnalysisSpec {
                        interval: Some("1h".into()),
                        iterations: Some(3),
                        readiness_timeout: Some("1h".into()),
                        ..AnalysisSpec::default()
                    }),
                    ..RolloutSpec::default()
                }),
                ..PolicyRefresh::default()
            },
        },
    )
}

async fn deploy(client: &Client, ns: &str, name: &str, image: &str) -> anyhow::Result<()> {
    let deploy = deployment_with(
        name,
        image,
        1,
        serde_json::json!({"metadata": {"labels": {"tier": "web"}}}),
    )?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deploy)
        .await?;
    wait_ready_pods(client, ns, name, 1, Duration::from_secs(60)).await?;
    Ok(())
}

async fn active(client: &Client, ns: &str) -> anyhow::Result<Vec<Refresh>> {
    let list = Api::<Refresh>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|r| !r.progress().phase.is_terminal())
        .collect())
}

async fn await_active(client: &Client, ns: &str, n: usize) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} active Refresh(es) in {ns}, in their canary"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async move {
            let list = active(client, ns).await?;
            let canaries = list
                .iter()
                .filter(|r| r.progress().phase == Phase::Canary)
                .count();
            if canaries == n {
                Ok(Some(()))
            } else {
                anyhow::bail!("{canaries} in Canary of {} active", list.len())
            }
        },
    )
    .await
}

/// Waits until no Refresh is active cluster-wide: the operator-wide limit
/// counts every one, and earlier tests' namespaces may still be going away.
async fn await_no_active_refresh(client: &Client) -> anyhow::Result<()> {
    wait_for(
        "no active Refresh left by earlier tests",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let all = Api::<Refresh>::all(client.clone())
                .list(&Default::default())
                .await?;
            let left = all
                .items
                .iter()
                .filter(|r| !r.progress().phase.is_terminal())
                .count();
            if left == 0 {
                Ok(Some(()))
            } else {
                anyhow::bail!("{left} active")
            }
        },
    )
    .await
}

async fn push_at(harness: &Harness, repo: &str, hours_ago: i64) -> anyhow::Result<Pushed> {
    let built = Utc::now() - TimeDelta::hours(hours_ago);
    push(
        &harness.registry,
        repo,
        "stable",
        &ImageSpec::built_at(built),
    )
    .await
}

#[tokio::test]
async fn one_namespace_cannot_use_up_another_namespaces_refreshes() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let busy = TestNamespace::create(&harness, &client, "tenant-busy").await?;
    let quiet = TestNamespace::create(&harness, &client, "tenant-quiet").await?;
    // Both namespaces have a policy called `team`; the quiet one's allows
    // one refresh at a time, the busy one's any number.
    Api::<RefreshPolicy>::namespaced(client.clone(), &busy.name)
        .create(&PostParams::default(), &team_policy(None))
        .await?;
    Api::<RefreshPolicy>::namespaced(client.clone(), &quiet.name)
        .create(&PostParams::default(), &team_policy(Some(1)))
        .await?;
    let busy_repo = format!("e2e/{}", busy.name);
    let quiet_repo = format!("e2e/{}", quiet.name);
    let v1 = push_at(&harness, &busy_repo, 48).await?;
    for name in ["b1", "b2", "b3"] {
        deploy(&client, &busy.name, name, &v1.pinned()).await?;
    }
    let q1 = push_at(&harness, &quiet_repo, 48).await?;
    deploy(&client, &quiet.name, "q1", &q1.pinned()).await?;

    // Two refreshes operator-wide, one per namespace at most. Earlier
    // tests' namespaces may still be going away: the limit counts every
    // active Refresh, so wait until theirs are gone.
    await_no_active_refresh(&client).await?;
    let _operator = Operator::start(
        &harness,
        &[
            "--poll-interval",
            "2s",
            "--max-concurrent-refreshes",
            "2",
            "--max-concurrent-refreshes-per-namespace",
            "1",
        ],
    )
    .await?;
    // The busy namespace's three workloads all want the new digest; one
    // canary starts and stays (its analysis takes an hour).
    push_at(&harness, &busy_repo, 1).await?;
    await_active(&client, &busy.name, 1).await?;

    // The quiet namespace still gets its refresh: neither the busy
    // namespace's canaries nor its same-named policy count against it.
    push_at(&harness, &quiet_repo, 1).await?;
    await_active(&client, &quiet.name, 1).await?;
    assert_eq!(
        active(&client, &busy.name).await?.len(),
        1,
        "the busy namespace stays at its share"
    );
    Ok(())
}

#[tokio::test]
async fn a_pin_cannot_borrow_a_cluster_policy_written_for_other_namespaces() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "tenant-pin").await?;
    let name = format!("prod-only-{}", ns.name);
    let _cleanup = harness.delete_on_drop("clusterrefreshpolicy", &name);
    Api::<ClusterRefreshPolicy>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterRefreshPolicy::new(
                &name,
                ClusterRefreshPolicySpec {
                    pipelines: Default::default(),
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some([("env".to_owned(), "prod".to_owned())].into()),
                        ..LabelSelector::default()
                    }),
                    selector: None,
                    limits: PolicyLimits {
                        max_image_age: Some("3650d".into()),
                        ..PolicyLimits::default()
                    },
                    refresh: PolicyRefresh::default(),
                },
            ),
        )
        .await?;
    let image = push_at(&harness, &format!("e2e/{}", ns.name), 48).await?;
    let deploy = deployment_with(
        "pinned",
        &image.pinned(),
        1,
        serde_json::json!({"metadata": {"annotations": {
            "freshen.dev/refresh": "enabled",
            "freshen.dev/policy": name,
        }}}),
    )?;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deploy)
        .await?;
    wait_ready_pods(&client, &ns.name, "pinned", 1, Duration::from_secs(60)).await?;
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "pinned",
        "InvalidAnnotation",
    )
    .await?;
    assert!(note.contains("freshen.dev/policy"), "{note}");
    assert!(note.contains("namespaceSelector selects"), "{note}");
    Ok(())
}

/// Waits until `ns` has exactly `n` Refreshes in their canary, returning
/// them.
async fn await_canaries(client: &Client, ns: &str, n: usize) -> anyhow::Result<Vec<Refresh>> {
    await_active(client, ns, n).await?;
    active(client, ns).await
}

#[tokio::test]
async fn four_namespaces_hogging_the_operator_leave_a_fifth_its_share() -> anyhow::Result<()> {
    use freshen_api::RefreshPolicy;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let mut spaces = Vec::new();
    for prefix in ["hog-a", "hog-b", "hog-c", "hog-d", "fifth"] {
        spaces.push(TestNamespace::create(&harness, &admin, prefix).await?);
    }
    let mut tenants = Vec::new();
    for ns in &spaces {
        tenants.push(ns.tenant_client(&harness, &admin).await?);
    }
    // The platform's ClusterRefreshPolicy governs hog-a and hog-b, three
    // refreshes at a time, with an hour of analysis: its maxConcurrent
    // applies in each namespace, not once for both.
    let label = format!("hogs-{}", spaces[0].name);
    for ns in &spaces[..2] {
        Api::<Namespace>::all(admin.clone())
            .patch(
                &ns.name,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {"freshen-e2e/hogs": label}}}),
                ),
            )
            .await?;
    }
    let cluster_policy = format!("platform-{}", spaces[0].name);
    let _cleanup = harness.delete_on_drop("clusterrefreshpolicy", &cluster_policy);
    let platform = team_policy(Some(3)).spec;
    Api::<ClusterRefreshPolicy>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRefreshPolicy::new(
                &cluster_policy,
                ClusterRefreshPolicySpec {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some([("freshen-e2e/hogs".to_owned(), label)].into()),
                        ..LabelSelector::default()
                    }),
                    selector: None,
                    limits: PolicyLimits::default(),
                    refresh: platform.refresh,
                    pipelines: Default::default(),
                },
            ),
        )
        .await?;
    // hog-c and hog-d: the tenants themselves ask for a century of
    // analysis (the most a duration may say), to hold their slots forever.
    let mut century = team_policy(None);
    if let Some(analysis) = century
        .spec
        .refresh
        .rollout
        .as_mut()
        .and_then(|r| r.analysis.as_mut())
    {
        analysis.interval = Some("36500d".into());
        analysis.readiness_timeout = Some("36500d".into());
    }
    for (ns, tenant) in spaces[2..4].iter().zip(&tenants[2..4]) {
        Api::<RefreshPolicy>::namespaced(tenant.clone(), &ns.name)
            .create(&PostParams::default(), &century)
            .await?;
    }
    Api::<RefreshPolicy>::namespaced(tenants[4].clone(), &spaces[4].name)
        .create(&PostParams::default(), &team_policy(None))
        .await?;
    // Three workloads in each hog namespace, one in the fifth, all on an
    // image built two days ago; the tenants deploy them.
    for (i, (ns, tenant)) in spaces.iter().zip(&tenants).enumerate() {
        let v1 = push_at(&harness, &format!("e2e/{}", ns.name), 48).await?;
        let count = if i < 4 { 3 } else { 1 };
        for n in 0..count {
            deploy(tenant, &ns.name, &format!("app-{n}"), &v1.pinned()).await?;
        }
    }
    await_no_active_refresh(&admin).await?;
    // The defaults: 10 refreshes operator-wide, 3 per namespace; analyses
    // capped at 30 minutes.
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--max-analysis-time", "30m"],
    )
    .await?;
    let new_digest = |i: usize| {
        let repo = format!("e2e/{}", spaces[i].name);
        let harness = &harness;
        async move { push_at(harness, &repo, 1).await }
    };
    // hog-a and hog-b each get the cluster policy's three.
    new_digest(0).await?;
    await_canaries(&admin, &spaces[0].name, 3).await?;
    new_digest(1).await?;
    await_canaries(&admin, &spaces[1].name, 3).await?;
    // hog-c gets two: its third would take one of the last two slots,
    // which are kept for namespaces with nothing under way. Its century
    // of analysis is cut to the operator's 30 minutes.
    new_digest(2).await?;
    let hog_c = await_canaries(&admin, &spaces[2].name, 2).await?;
    for refresh in &hog_c {
        let settings = &refresh.spec.rollout;
        assert_eq!(settings.interval_seconds, 600, "30m over 3 iterations");
        assert_eq!(settings.readiness_timeout_seconds, 1800);
    }
    // hog-d, arriving as the fourth namespace, starts one.
    new_digest(3).await?;
    await_canaries(&admin, &spaces[3].name, 1).await?;
    // Nine slots held by canaries that would never end on their own; the
    // fifth namespace's refresh still starts.
    new_digest(4).await?;
    await_canaries(&admin, &spaces[4].name, 1).await?;
    let mut total = 0;
    for ns in &spaces {
        let n = active(&admin, &ns.name).await?.len();
        assert!(n <= 3, "{}: {n} under way", ns.name);
        total += n;
    }
    assert_eq!(total, 10, "the operator-wide limit holds");
    Ok(())
}
