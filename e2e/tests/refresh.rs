//! Refresh execution end to end: a real control plane (kwok makes pods
//! Ready, or crash-loop when their image contains a marked digest), a real
//! registry the tests push new digests to, a real Prometheus for the metric
//! check. Every scenario of the refresh issue: canary promoted, canary
//! rolled back and the digest rejected, failure after promotion restored,
//! operator SIGKILLed mid-canary and mid-promotion, a Prometheus check
//! failing, a restart inside and outside a window, a GitOps-managed
//! workload left alone.

use std::time::Duration;

use chrono::{Datelike, TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, PrometheusCheck, REJECTED_DIGESTS, RolloutSpec};
use freshen_api::{PolicyRefresh, Refresh, RefreshPolicy, RefreshPolicySpec};
use freshen_core::rollout::{Failure, Phase, Reason, Verdict};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, OPERATOR_NAMESPACE, TestNamespace, await_event, await_warning, deployment_with,
    init_tls, merge_json, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// One test's namespace, workload, repository and operator.
struct Scene {
    harness: Harness,
    client: Client,
    ns: TestNamespace,
    repo: String,
}

impl Scene {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let client = harness.client().await?;
        let ns = TestNamespace::create(&harness, &client, prefix).await?;
        let repo = format!("e2e/{}", ns.name);
        Ok(Self {
            harness,
            client,
            ns,
            repo,
        })
    }

    /// Pushes a distinct image (built `hours_ago`) as `tag`.
    async fn push(&self, tag: &str, content: &str, hours_ago: i64) -> anyhow::Result<Pushed> {
        self.push_spec(tag, &spec(content, hours_ago)).await
    }

    /// Pushes `spec` as `tag`; the same spec is the same digest.
    async fn push_spec(&self, tag: &str, spec: &ImageSpec) -> anyhow::Result<Pushed> {
        push(&self.harness.registry, &self.repo, tag, spec).await
    }

    /// A RefreshPolicy for the workload labelled `app=<app>`: follow the tag,
    /// canary with fast analysis.
    async fn policy(&self, app: &str, refresh: PolicyRefresh) -> anyhow::Result<()> {
        let selector = LabelSelector {
            match_labels: Some([("app".to_owned(), app.to_owned())].into()),
            ..LabelSelector::default()
        };
        let policy = RefreshPolicy::new(
            app,
            RefreshPolicySpec {
                pipelines: Default::default(),
                selector,
                limits: Default::default(),
                refresh,
            },
        );
        Api::<RefreshPolicy>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &policy)
            .await?;
        Ok(())
    }

    /// Creates Deployment `name` running `image`, its pod template
    /// annotated `template_annotations` (kwok's crash markers), and waits
    /// for its pods.
    async fn deploy(
        &self,
        name: &str,
        image: &str,
        replicas: i32,
        template_annotations: &[(&str, &str)],
        extra: serde_json::Value,
    ) -> anyhow::Result<()> {
        let annotations: serde_json::Map<String, serde_json::Value> = template_annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let mut patch =
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": annotations}}}});
        merge_json(&mut patch, extra);
        let deploy = deployment_with(name, image, replicas, patch)?;
        self.deployments()
            .create(&PostParams::default(), &deploy)
            .await?;
        let ready = usize::try_from(replicas)?;
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            name,
            ready,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn refreshes(&self) -> Api<Refresh> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn operator(&self, extra: &[&str]) -> anyhow::Result<Operator> {
        let mut args = self.operator_args();
        args.extend_from_slice(extra);
        Operator::start(&self.harness, &args).await
    }

    /// Every operator's arguments: this namespace, a short
    /// poll, and a short Lease so that one SIGKILLed is replaced quickly.
    fn operator_args(&self) -> Vec<&str> {
        vec![
            "--poll-interval",
            "2s",
            "--namespace",
            &self.ns.name,
            "--leader-elect-lease-duration",
            "3s",
        ]
    }

    /// Refreshes of `workload`.
    async fn refreshes_of(&self, workload: &str) -> anyhow::Result<Vec<Refresh>> {
        let list = self
            .refreshes()
            .list(&ListParams::default().labels(&format!("freshen.dev/workload={workload}")))
            .await?;
        Ok(list.items)
    }

    /// Waits until a Refresh of `workload` satisfies `done`; returns it.
    async fn await_refresh(
        &self,
        workload: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Refresh) -> bool,
    ) -> anyhow::Result<Refresh> {
        let done = &done;
        wait_for(
            &format!("a Refresh of {workload}: {what}"),
            limit,
            Duration::from_millis(100),
            || async move {
                let all = self.refreshes_of(workload).await?;
                let phases: Vec<String> = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {:?} {}",
                            r.name_any(),
                            r.progress().phase,
                            r.progress().message
                        )
                    })
                    .collect();
                match all.into_iter().find(done) {
                    Some(r) => Ok(Some(r)),
                    None => anyhow::bail!("refreshes: {phases:?}"),
                }
            },
        )
        .await
    }

    /// The template image of `workload`'s container `app`.
    async fn image_of(&self, workload: &str) -> anyhow::Result<String> {
        let d = self.deployments().get(workload).await?;
        Ok(d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default())
    }

    /// Waits until Deployment `name` exists. The executor stores a phase
    /// before it acts, so a Refresh seen in Canary may not have its canary
    /// yet.
    async fn await_deployment(&self, name: &str) -> anyhow::Result<Deployment> {
        let api = self.deployments();
        wait_for(
            &format!("Deployment {name} to exist"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let api = api.clone();
                async move { Ok(api.get_opt(name).await?) }
            },
        )
        .await
    }

    async fn await_gone(&self, name: &str) -> anyhow::Result<()> {
        let api = self.deployments();
        wait_for(
            &format!("Deployment {name} to be gone"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let api = api.clone();
                async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
            },
        )
        .await
    }

    /// ReplicaSets of `workload`: one per template it ever had.
    async fn replica_sets(&self, workload: &str) -> anyhow::Result<usize> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api
            .list(&ListParams::default().labels(&format!("app={workload}")))
            .await?;
        Ok(list
            .items
            .iter()
            .filter(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| o.kind == "Deployment" && o.name == workload)
            })
            .count())
    }

    /// Waits until the operator has reconciled at least `n` more times,
    /// so that an absence is an absence after that many looks.
    async fn await_reconciles(&self, operator: &Operator, n: u32) -> anyhow::Result<()> {
        let series = r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#;
        let count = || operator.metric(series);
        let start = count().await?;
        wait_for(
            &format!("{n} more reconciles"),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || async { Ok((count().await? >= start + f64::from(n)).then_some(())) },
        )
        .await
    }
}

/// A distinct image built `hours_ago`.
fn spec(content: &str, hours_ago: i64) -> ImageSpec {
    ImageSpec {
        content: content.into(),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(hours_ago))
    }
}

/// Follow the tag; canary of 50 %, checks every `interval`, `iterations`
/// passes to promote, readiness within 30s.
fn canary(interval: &str, iterations: u32) -> PolicyRefresh {
    PolicyRefresh {
        follow_tag: Some(true),
        rollout: Some(RolloutSpec {
            strategy: None,
            canary_weight: Some(50),
            analysis: Some(AnalysisSpec {
                interval: Some(interval.into()),
                iterations: Some(iterations),
                readiness_timeout: Some("30s".into()),
                ..AnalysisSpec::default()
            }),
        }),
        ..PolicyRefresh::default()
    }
}

fn phase(r: &Refresh) -> Phase {
    r.progress().phase
}

#[tokio::test]
async fn a_new_digest_goes_through_a_canary_and_is_promoted() -> anyhow::Result<()> {
    let s = Scene::new("refresh-promote").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("web", canary("1s", 3)).await?;
    s.deploy("web", &v1.pinned(), 2, &[], serde_json::json!({}))
        .await?;
    let operator = s.operator(&[]).await?;

    let v2 = s.push("stable", "v2", 1).await?;
    let canary_seen = s
        .await_refresh("web", "in Canary", Duration::from_secs(30), |r| {
            phase(r) == Phase::Canary
        })
        .await?;
    assert_eq!(canary_seen.spec.reason, Reason::NewDigest);
    assert_eq!(canary_seen.spec.from_image, v1.pinned());
    assert_eq!(canary_seen.spec.to_image, v2.pinned());
    assert_eq!(canary_seen.spec.digest, v2.digest);
    let canary = s.await_deployment("web-canary").await?;
    assert_eq!(canary.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let labels = canary
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .map(|m| m.labels.clone().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("web"),
        "canary pods take the workload's traffic"
    );
    assert_eq!(
        labels.get("freshen.dev/canary").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        canary.owner_references().first().map(|o| o.kind.as_str()),
        Some("Refresh")
    );

    let done = s
        .await_refresh("web", "Succeeded", Duration::from_secs(60), |r| {
            phase(r) == Phase::Succeeded
        })
        .await?;
    let progress = done.progress();
    assert!(progress.passes >= 2, "{progress:?}");
    assert!(progress.analysis.iter().all(|c| c.verdict != Verdict::Fail));
    assert!(progress.canary_started_at <= progress.promoted_at);
    assert_eq!(s.image_of("web").await?, v2.pinned());
    s.await_gone("web-canary").await?;
    let pods = wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(30)).await?;
    assert!(pods.iter().any(|p| {
        p.spec
            .as_ref()
            .is_some_and(|s| s.containers[0].image.as_deref() == Some(&v2.pinned()))
    }));
    let ready = done
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(ready, Some(("True".into(), "Succeeded".into())));
    operator
        .await_metric(
            r#"freshen_refreshes_total{outcome="Succeeded",reason="NewDigest"}"#,
            1.0,
        )
        .await?;
    // Succeeded: the workload runs the tag's digest, nothing more to do.
    s.await_reconciles(&operator, 3).await?;
    assert_eq!(s.refreshes_of("web").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_crash_looping_canary_is_rolled_back_and_its_digest_never_proposed_again()
-> anyhow::Result<()> {
    let s = Scene::new("refresh-rollback").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    // The bad digest is known before the workload exists, so that kwok can
    // be told which digest crash-loops.
    let bad_spec = spec("bad", 1);
    let bad = s.push_spec("candidate", &bad_spec).await?;
    s.policy("api", canary("10s", 2)).await?;
    s.deploy(
        "api",
        &v1.pinned(),
        2,
        &[("e2e.freshen.dev/crash-on", &bad.digest)],
        serde_json::json!({}),
    )
    .await?;
    let operator = s.operator(&[]).await?;
    let bad = s.push_spec("stable", &bad_spec).await?;

    let rolled_back = s
        .await_refresh("api", "RolledBack", Duration::from_secs(60), |r| {
            phase(r) == Phase::RolledBack
        })
        .await?;
    let progress = rolled_back.progress();
    assert_eq!(progress.failure, Some(Failure::PodFailure), "{progress:?}");
    assert!(
        progress.message.contains("CrashLoopBackOff"),
        "{}",
        progress.message
    );
    let (started, rollback) = (
        progress.canary_started_at.unwrap_or_default(),
        progress.rollback_started_at.unwrap_or_default(),
    );
    assert!(
        rollback - started < TimeDelta::seconds(10),
        "rollback began {:?} after the canary started, more than one 10s analysis interval",
        rollback - started
    );
    assert_eq!(progress.promoted_at, None);
    assert_eq!(
        s.image_of("api").await?,
        v1.pinned(),
        "the workload is unchanged"
    );
    s.await_gone("api-canary").await?;
    let deploy = s.deployments().get("api").await?;
    let rejected = deploy
        .annotations()
        .get(REJECTED_DIGESTS)
        .cloned()
        .unwrap_or_default();
    assert_eq!(rejected, format!("app@{}", bad.digest));
    let note = await_warning(&s.client, &s.ns.name, "Deployment", "api", "RolledBack").await?;
    assert!(note.contains("CrashLoopBackOff"), "{note}");
    operator
        .await_metric(r#"freshen_rollbacks_total{reason="PodFailure"}"#, 1.0)
        .await?;

    // Later polls do not propose the rejected digest again.
    s.await_reconciles(&operator, 4).await?;
    assert_eq!(s.refreshes_of("api").await?.len(), 1);

    // A newer, good digest is rolled out.
    let v3 = s.push("stable", "v3", 0).await?;
    s.await_refresh(
        "api",
        "the newer digest Succeeded",
        Duration::from_secs(60),
        |r| r.spec.digest == v3.digest && phase(r) == Phase::Succeeded,
    )
    .await?;
    assert_eq!(s.image_of("api").await?, v3.pinned());
    Ok(())
}

#[tokio::test]
async fn a_failure_after_promotion_restores_the_previous_image_exactly() -> anyhow::Result<()> {
    let s = Scene::new("refresh-restore").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    let bad_spec = spec("bad-in-rollout", 1);
    let bad = s.push_spec("candidate", &bad_spec).await?;
    s.policy("shop", canary("1s", 1)).await?;
    // Tag-and-digest as the user wrote it: restored byte for byte.
    s.deploy(
        "shop",
        &v1.pinned(),
        2,
        &[("e2e.freshen.dev/crash-on-rollout", &bad.digest)],
        serde_json::json!({}),
    )
    .await?;
    let _operator = s.operator(&[]).await?;
    s.push_spec("stable", &bad_spec).await?;

    let r = s
        .await_refresh("shop", "RolledBack", Duration::from_secs(60), |r| {
            phase(r) == Phase::RolledBack
        })
        .await?;
    let progress = r.progress();
    assert!(progress.passes >= 1, "the canary passed: {progress:?}");
    assert!(
        progress.patched_at.is_some(),
        "the workload was patched: {progress:?}"
    );
    assert_eq!(progress.failure, Some(Failure::PodFailure));
    assert!(
        progress.message.contains("workload pod"),
        "{}",
        progress.message
    );
    assert_eq!(s.image_of("shop").await?, v1.pinned());
    wait_ready_pods(&s.client, &s.ns.name, "shop", 2, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn a_refresh_deleted_while_it_changes_the_workload_finishes_first() -> anyhow::Result<()> {
    let s = Scene::new("refresh-delete").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    let bad_spec = spec("bad-in-rollout-deleted", 1);
    let bad = s.push_spec("candidate", &bad_spec).await?;
    s.policy("till", canary("1s", 1)).await?;
    // minReadySeconds keeps the change (and its rollback) under way for
    // seconds: kwok crashes the new pods at once, and the restore of a
    // template whose pods still run otherwise completes between two looks.
    s.deploy(
        "till",
        &v1.pinned(),
        2,
        &[("e2e.freshen.dev/crash-on-rollout", &bad.digest)],
        serde_json::json!({"spec": {"minReadySeconds": 5}}),
    )
    .await?;
    let mut operator = s.operator(&[]).await?;
    s.push_spec("stable", &bad_spec).await?;

    // The operator dies while the workload is being changed: patched to
    // the digest that crashes in the rollout.
    let r = s
        .await_refresh("till", "promoting", Duration::from_secs(60), |r| {
            phase(r).changes_workload()
        })
        .await?;
    operator.kill()?;
    drop(operator);
    let name = r.name_any();
    let seen = s.refreshes().get(&name).await?;
    assert!(
        seen.progress().phase.changes_workload(),
        "killed mid-change: {:?}",
        seen.progress().phase
    );
    assert!(
        seen.finalizers()
            .iter()
            .any(|f| f == "freshen.dev/finish-rollout"),
        "{:?}",
        seen.finalizers()
    );

    // Someone deletes the Refresh meanwhile: it stays until freshen has
    // finished the change (here: the rollback), then goes.
    s.refreshes().delete(&name, &Default::default()).await?;
    assert!(
        s.refreshes()
            .get(&name)
            .await?
            .metadata
            .deletion_timestamp
            .is_some(),
        "the delete waits for the finalizer"
    );
    let _operator = s.operator(&[]).await?;
    wait_for(
        "the deleted Refresh to be gone",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let r = s.refreshes().get_opt(&name).await?;
            match r {
                None => Ok(Some(())),
                Some(r) => anyhow::bail!("{:?} {}", phase(&r), r.progress().message),
            }
        },
    )
    .await?;
    assert_eq!(
        s.image_of("till").await?,
        v1.pinned(),
        "restored before the Refresh went"
    );
    let rejected = s.deployments().get("till").await?;
    assert!(
        rejected
            .annotations()
            .get(REJECTED_DIGESTS)
            .is_some_and(|v| v.contains(&bad.digest)),
        "the digest is rejected"
    );
    s.await_gone("till-canary").await?;
    wait_ready_pods(&s.client, &s.ns.name, "till", 2, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn an_edit_of_the_template_during_the_canary_stops_the_refresh_until_told_to_retry()
-> anyhow::Result<()> {
    let s = Scene::new("refresh-conflict").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("inv", canary("2s", 5)).await?;
    s.deploy("inv", &v1.pinned(), 2, &[], serde_json::json!({}))
        .await?;
    let _operator = s.operator(&[]).await?;
    let v2 = s.push("stable", "v2", 1).await?;
    s.await_refresh("inv", "in Canary", Duration::from_secs(30), |r| {
        phase(r) == Phase::Canary
    })
    .await?;
    s.await_deployment("inv-canary").await?;

    // Someone changes the workload (not its image) while the canary runs:
    // the canary tested a template that is no longer the workload's.
    let env = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "MODE", "value": "edited"}]}
    ]}}}});
    s.deployments()
        .patch("inv", &PatchParams::default(), &Patch::Strategic(&env))
        .await?;
    let failed = s
        .await_refresh("inv", "Failed", Duration::from_secs(30), |r| {
            phase(r) == Phase::Failed
        })
        .await?;
    let progress = failed.progress();
    assert_eq!(progress.failure, Some(Failure::Conflict), "{progress:?}");
    assert!(
        progress
            .message
            .contains("someone else changed the workload's pod template during the canary"),
        "{}",
        progress.message
    );
    s.await_gone("inv-canary").await?;
    assert_eq!(s.image_of("inv").await?, v1.pinned(), "nothing overwritten");
    let env_of = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers[0].env.clone())
            .unwrap_or_default()
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(env_of(&s.deployments().get("inv").await?), ["MODE"]);

    // Not tried again on its own, and the workload says why and what to do.
    let note = await_warning(
        &s.client,
        &s.ns.name,
        "Deployment",
        "inv",
        "RefreshNotRetried",
    )
    .await?;
    assert!(note.contains(&failed.name_any()), "{note}");
    assert!(note.contains("Delete that Refresh to try again"), "{note}");
    assert_eq!(s.refreshes_of("inv").await?.len(), 1);

    // Deleting the failed Refresh is the way to ask for another attempt.
    s.refreshes()
        .delete(&failed.name_any(), &Default::default())
        .await?;
    s.await_refresh("inv", "the retry Succeeded", Duration::from_secs(90), |r| {
        phase(r) == Phase::Succeeded
    })
    .await?;
    let inv = s.deployments().get("inv").await?;
    assert_eq!(s.image_of("inv").await?, v2.pinned());
    assert_eq!(env_of(&inv), ["MODE"], "the edit is kept");
    Ok(())
}

#[tokio::test]
async fn a_killed_operator_resumes_every_refresh_without_a_second_rollout() -> anyhow::Result<()> {
    let s = Scene::new("refresh-crash").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    // A canary long enough to be killed in, and a workload whose rollout
    // takes a while (minReadySeconds) to be killed in its promotion.
    s.policy("cart", canary("2s", 4)).await?;
    s.deploy(
        "cart",
        &v1.pinned(),
        2,
        &[],
        serde_json::json!({"spec": {"minReadySeconds": 6}}),
    )
    .await?;
    let mut operator = s.operator(&[]).await?;
    let v2 = s.push("stable", "v2", 1).await?;

    s.await_refresh("cart", "in Canary", Duration::from_secs(30), |r| {
        phase(r) == Phase::Canary
    })
    .await?;
    operator.kill()?;
    drop(operator);
    let mut operator = s.operator(&[]).await?;
    s.await_refresh("cart", "Promoting", Duration::from_secs(60), |r| {
        phase(r) == Phase::Promoting && r.progress().patched_at.is_some()
    })
    .await?;
    operator.kill()?;
    drop(operator);
    let _operator = s.operator(&[]).await?;
    s.await_refresh("cart", "Succeeded", Duration::from_secs(60), |r| {
        phase(r) == Phase::Succeeded
    })
    .await?;
    let refreshes = s.refreshes_of("cart").await?;
    assert_eq!(refreshes.len(), 1, "one Refresh");
    assert_eq!(s.image_of("cart").await?, v2.pinned());
    s.await_gone("cart-canary").await?;
    assert_eq!(
        s.replica_sets("cart").await?,
        2,
        "one rollout: the old and the new template"
    );
    // No step went unannounced, whenever the kills came.
    let name = refreshes[0].name_any();
    for reason in ["CanaryStarted", "Promoting", "RefreshSucceeded"] {
        await_event(&s.client, &s.ns.name, ("Refresh", &name), reason, "").await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_event_stored_but_not_published_is_published_by_the_next_operator() -> anyhow::Result<()>
{
    let s = Scene::new("refresh-outbox").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("mail", canary("1s", 1)).await?;
    s.deploy("mail", &v1.pinned(), 1, &[], serde_json::json!({}))
        .await?;
    let mut operator = s.operator(&[]).await?;
    s.push("stable", "v2", 1).await?;
    let done = s
        .await_refresh("mail", "Succeeded", Duration::from_secs(60), |r| {
            phase(r) == Phase::Succeeded
        })
        .await?;
    operator.kill()?;
    drop(operator);
    // What an operator killed between storing Succeeded and publishing its
    // Event leaves behind: the Event in the status, not in the cluster.
    let name = done.name_any();
    let note = "stored before the operator was killed";
    let lost = serde_json::json!({"status": {"pendingEvents": [{
        "phase": "Succeeded",
        "kind": "Normal",
        "reason": "RefreshSucceeded",
        "note": note,
    }]}});
    s.refreshes()
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&lost))
        .await?;

    let operator = s.operator(&[]).await?;
    let event = await_event(
        &s.client,
        &s.ns.name,
        ("Refresh", &name),
        "RefreshSucceeded",
        note,
    )
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    await_event(
        &s.client,
        &s.ns.name,
        ("Deployment", "mail"),
        "RefreshSucceeded",
        note,
    )
    .await?;
    s.await_refresh("mail", "its Events cleared", Duration::from_secs(30), |r| {
        r.progress().pending_events.is_empty()
    })
    .await?;
    // The new process counts the outcome it announced.
    operator
        .await_metric(
            r#"freshen_refreshes_total{outcome="Succeeded",reason="NewDigest"}"#,
            1.0,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn two_operators_racing_make_one_refresh_and_one_rollout() -> anyhow::Result<()> {
    let s = Scene::new("refresh-race").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("race", canary("1s", 2)).await?;
    s.deploy("race", &v1.pinned(), 2, &[], serde_json::json!({}))
        .await?;
    // Two operators acting at once (leader election off, or a leader
    // paused past its Lease) step the same Refresh: status writes are
    // guarded by the Refresh's resourceVersion, image patches by the
    // Deployment's.
    let _first = s.operator(&["--leader-elect=false"]).await?;
    let mut args = s.operator_args();
    args.push("--leader-elect=false");
    let second = Operator::start_at(&s.harness, "127.0.0.1:18089", &args).await?;
    second.await_leading().await?;
    let v2 = s.push("stable", "v2", 1).await?;
    s.await_refresh("race", "Succeeded", Duration::from_secs(60), |r| {
        phase(r) == Phase::Succeeded
    })
    .await?;
    assert_eq!(s.refreshes_of("race").await?.len(), 1);
    assert_eq!(s.image_of("race").await?, v2.pinned());
    assert_eq!(s.replica_sets("race").await?, 2, "one rollout");
    s.await_gone("race-canary").await?;
    Ok(())
}

#[tokio::test]
async fn of_two_operators_one_acts_and_the_other_takes_over_when_it_dies() -> anyhow::Result<()> {
    let s = Scene::new("refresh-leader").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("lead", canary("1s", 3)).await?;
    s.deploy("lead", &v1.pinned(), 2, &[], serde_json::json!({}))
        .await?;
    let mut leader = s.operator(&[]).await?;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), OPERATOR_NAMESPACE);
    let transitions = |lease: Lease| lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    let before = transitions(leases.get("freshen-leader").await?);
    let standby = Operator::start_at(&s.harness, "127.0.0.1:18089", &s.operator_args()).await?;
    let v2 = s.push("stable", "v2", 1).await?;
    s.await_refresh("lead", "in Canary", Duration::from_secs(30), |r| {
        phase(r) == Phase::Canary
    })
    .await?;
    assert_eq!(standby.metric("freshen_leader").await?, 0.0, "it stands by");

    // The leader dies without releasing its Lease: the standby takes over
    // once the Lease expires (3s) and finishes the Refresh.
    leader.kill()?;
    drop(leader);
    let killed = std::time::Instant::now();
    standby.await_leading().await?;
    let took_over = killed.elapsed();
    s.await_refresh("lead", "Succeeded", Duration::from_secs(60), |r| {
        phase(r) == Phase::Succeeded
    })
    .await?;
    assert_eq!(s.refreshes_of("lead").await?.len(), 1);
    assert_eq!(s.image_of("lead").await?, v2.pinned());
    assert_eq!(s.replica_sets("lead").await?, 2, "one rollout");
    s.await_gone("lead-canary").await?;
    // The Lease lives in the operator's namespace (its Role allows no
    // other), shared by every test: one take-over since the leader led.
    assert_eq!(
        transitions(leases.get("freshen-leader").await?),
        before + 1,
        "one take-over"
    );
    eprintln!("standby led {took_over:?} after the leader was killed");
    Ok(())
}

#[tokio::test]
async fn a_prometheus_check_over_its_threshold_rolls_back() -> anyhow::Result<()> {
    let s = Scene::new("refresh-metric").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    let mut refresh = canary("1s", 3);
    if let Some(a) = refresh.rollout.as_mut().and_then(|r| r.analysis.as_mut()) {
        // A query the real Prometheus answers with 1: above the max.
        a.prometheus = Some(PrometheusCheck {
            query: "vector(1)".into(),
            max: 0.5,
            on_no_data: None,
            max_consecutive_errors: None,
        });
    }
    s.policy("pay", refresh).await?;
    s.deploy("pay", &v1.pinned(), 2, &[], serde_json::json!({}))
        .await?;
    let prometheus = s.harness.prometheus_url.clone();
    let _operator = s.operator(&["--prometheus-url", &prometheus]).await?;
    s.push("stable", "v2", 1).await?;
    let r = s
        .await_refresh("pay", "RolledBack", Duration::from_secs(60), |r| {
            phase(r) == Phase::RolledBack
        })
        .await?;
    let progress = r.progress();
    assert_eq!(progress.failure, Some(Failure::Metric), "{progress:?}");
    let last = progress.analysis.last().cloned();
    assert_eq!(last.as_ref().and_then(|c| c.metric), Some(1.0), "{last:?}");
    assert!(
        progress.cause.contains("metric 1 above max 0.5"),
        "{}",
        progress.message
    );
    assert_eq!(s.image_of("pay").await?, v1.pinned());
    Ok(())
}

#[tokio::test]
async fn too_old_containers_restart_inside_their_window_only() -> anyhow::Result<()> {
    let s = Scene::new("refresh-restart").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    // Open all day, every day; and a window on a day two days away.
    let away = (Utc::now() + TimeDelta::days(2)).weekday();
    let closed = format!("{away} 00:00-24:00 UTC");
    for (name, window) in [("open", "* 00:00-24:00 UTC"), ("closed", closed.as_str())] {
        let meta = serde_json::json!({"metadata": {"annotations": {
            "freshen.dev/refresh": "enabled",
            "freshen.dev/max-container-age": "3s",
            "freshen.dev/window": window,
        }}});
        s.deploy(name, &v1.pinned(), 2, &[], meta).await?;
    }
    let operator = s.operator(&[]).await?;
    let r = s
        .await_refresh(
            "open",
            "a restart Succeeded",
            Duration::from_secs(60),
            |r| r.spec.reason == Reason::ContainerTooOld && phase(r) == Phase::Succeeded,
        )
        .await?;
    assert_eq!(r.spec.to_image, v1.pinned(), "the same digest, pinned");
    let restarted = s.deployments().get("open").await?;
    let stamp = restarted
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("freshen.dev/restarted-by").cloned());
    assert_eq!(stamp, Some(r.name_any()));
    s.await_reconciles(&operator, 4).await?;
    assert!(
        s.refreshes_of("closed").await?.is_empty(),
        "outside its window nothing happens"
    );
    assert_eq!(s.replica_sets("closed").await?, 1);
    Ok(())
}

#[tokio::test]
async fn an_argo_cd_managed_workload_is_left_alone_with_a_reason() -> anyhow::Result<()> {
    let s = Scene::new("refresh-gitops").await?;
    let v1 = s.push("stable", "v1", 48).await?;
    s.policy("argo", canary("1s", 1)).await?;
    let labels =
        serde_json::json!({"metadata": {"labels": {"argocd.argoproj.io/instance": "shop"}}});
    s.deploy("argo", &v1.pinned(), 1, &[], labels).await?;
    let _operator = s.operator(&[]).await?;
    s.push("stable", "v2", 1).await?;
    let note = await_warning(&s.client, &s.ns.name, "Deployment", "argo", "GitOpsManaged").await?;
    assert!(note.contains("managed by Argo CD"), "{note}");
    assert!(note.contains("gitops: Patch"), "{note}");
    assert!(s.refreshes_of("argo").await?.is_empty());
    assert_eq!(s.image_of("argo").await?, v1.pinned());
    Ok(())
}
