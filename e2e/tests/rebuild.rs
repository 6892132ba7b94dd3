//! Rebuild pipelines end to end, on the harness's real parts: the real job
//! controller runs the pipeline's Job and kwok completes (or fails) its
//! pod; the test plays the build system and pushes the rebuilt image to
//! the real registry; every dependant then moves through its own canary,
//! and Prometheus shows the base fresh again.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::pipeline::{JobPipeline, Pipeline, RebuildOn, RebuildSettings};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{
    PolicyLimits, PolicyPipelines, PolicyRefresh, Rebuild, Refresh, RefreshPolicy,
    RefreshPolicySpec,
};
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::{Phase, Reason};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::prometheus::await_value;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// One test's namespace, client and repositories.
struct Scene {
    harness: Harness,
    client: Client,
    ns: TestNamespace,
}

impl Scene {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let client = harness.client().await?;
        let ns = TestNamespace::create(&harness, &client, prefix).await?;
        Ok(Self {
            harness,
            client,
            ns,
        })
    }

    fn repo(&self, name: &str) -> String {
        format!("e2e/{}/{name}", self.ns.name)
    }

    async fn push(&self, name: &str, tag: &str, spec: &ImageSpec) -> anyhow::Result<Pushed> {
        push(&self.harness.registry, &self.repo(name), tag, spec).await
    }

    /// A policy over the Deployments labelled `tier=shop`: a Job pipeline
    /// (`pod_annotations` on its pod: kwok's failure marker), rebuilds on
    /// `on`, canaries with a fast analysis, never following tags (so every
    /// refresh here comes from a rebuild).
    async fn policy(
        &self,
        on: RebuildOn,
        limits: PolicyLimits,
        backoff: &str,
        pod_annotations: serde_json::Value,
    ) -> anyhow::Result<()> {
        let template = json!({
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": pod_annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "build",
                        "image": "registry.example/builder:1",
                        "args": ["build", "$(image)", "from", "$(image.digest)",
                                 "on", "$(base.newDigest)", "because", "$(reason)",
                                 "id", "$(rebuild.id)"]
                    }]
                }
            }
        });
        let policy = RefreshPolicy::new(
            "shop",
            RefreshPolicySpec {
                selector: LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "In".into(),
                        values: Some(vec!["shop".into()]),
                    }]),
                    match_labels: None,
                },
                limits,
                refresh: PolicyRefresh {
                    rollout: Some(RolloutSpec {
                        strategy: None,
                        canary_weight: Some(50),
                        analysis: Some(AnalysisSpec {
                            interval: Some("1s".into()),
                            iterations: Some(2),
                            readiness_timeout: Some("30s".into()),
                            ..AnalysisSpec::default()
                        }),
                    }),
                    ..PolicyRefresh::default()
                },
                pipelines: PolicyPipelines {
                    pipelines: vec![Pipeline {
                        name: "build".into(),
                        job: Some(JobPipeline {
                            namespace: None,
                            template,
                        }),
                    }],
                    rebuild: Some(RebuildSettings {
                        pipeline: "build".into(),
                        on: Some(vec![on]),
                        timeout: Some("2m".into()),
                        backoff: Some(backoff.into()),
                    }),
                },
            },
        );
        Api::<RefreshPolicy>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &policy)
            .await?;
        Ok(())
    }

    /// Deployment `name` (label `tier=shop`) running `image`, its pods
    /// Ready.
    async fn deploy(&self, name: &str, image: &str) -> anyhow::Result<()> {
        let mut d = deployment(name, image, 1, &[])?;
        d.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("tier".into(), "shop".into());
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &d)
            .await?;
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            name,
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    async fn operator(&self) -> anyhow::Result<Operator> {
        Operator::start(
            &self.harness,
            &["--poll-interval", "2s", "--namespace", &self.ns.name],
        )
        .await
    }

    async fn rebuilds(&self) -> anyhow::Result<Vec<Rebuild>> {
        Ok(
            Api::<Rebuild>::namespaced(self.client.clone(), &self.ns.name)
                .list(&ListParams::default())
                .await?
                .items,
        )
    }

    async fn jobs(&self) -> anyhow::Result<Vec<Job>> {
        Ok(Api::<Job>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Waits until the namespace's one Rebuild satisfies `done`.
    async fn await_rebuild(
        &self,
        what: &str,
        done: impl Fn(&Rebuild) -> bool,
    ) -> anyhow::Result<Rebuild> {
        let done = &done;
        wait_for(
            &format!("the Rebuild {what}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async move {
                let all = self.rebuilds().await?;
                let seen: Vec<String> = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {}",
                            r.name_any(),
                            r.progress().phase,
                            r.progress().message
                        )
                    })
                    .collect();
                anyhow::ensure!(all.len() <= 1, "one Rebuild per image and cause: {seen:?}");
                match all.into_iter().find(done) {
                    Some(r) => Ok(Some(r)),
                    None => anyhow::bail!("rebuilds: {seen:?}"),
                }
            },
        )
        .await
    }

    /// Waits until `workload`'s Refresh has Succeeded; returns it.
    async fn await_refreshed(&self, workload: &str) -> anyhow::Result<Refresh> {
        let api: Api<Refresh> = Api::namespaced(self.client.clone(), &self.ns.name);
        let selector = format!("freshen.dev/workload={workload}");
        wait_for(
            &format!("{workload}'s Refresh to succeed"),
            Duration::from_secs(90),
            Duration::from_millis(200),
            || {
                let (api, selector) = (api.clone(), selector.clone());
                async move {
                    let all = api
                        .list(&ListParams::default().labels(&selector))
                        .await?
                        .items;
                    let phases: Vec<String> = all
                        .iter()
                        .map(|r| format!("{} {}", r.name_any(), r.progress().phase))
                        .collect();
                    match all
                        .into_iter()
                        .find(|r| r.progress().phase == Phase::Succeeded)
                    {
                        Some(r) => Ok(Some(r)),
                        None => anyhow::bail!("refreshes: {phases:?}"),
                    }
                }
            },
        )
        .await
    }
}

/// The args the one Job ran with.
fn job_args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

fn job_finished(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

#[tokio::test]
async fn a_moved_base_rebuilds_the_image_once_and_every_dependant_moves_through_a_canary()
-> anyhow::Result<()> {
    let s = Scene::new("rebuild-base").await?;
    let base_v1 = s
        .push(
            "base",
            "12",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(30)),
        )
        .await?;
    let mut app = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    app.base = Some((base_v1.tagged.clone(), base_v1.digest.clone()));
    let app_v1 = s.push("app", "1", &app).await?;
    s.policy(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        json!({}),
    )
    .await?;
    let dependants = ["cart", "checkout", "catalog"];
    for name in dependants {
        s.deploy(name, &app_v1.pinned()).await?;
    }
    let operator = s.operator().await?;

    // The upstream base is patched.
    let base_v2 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;

    // Exactly one rebuild and one Job for the image its three dependants run.
    let rebuild = s
        .await_rebuild("running its Job", |r| r.progress().attempts == 1)
        .await?;
    assert_eq!(rebuild.spec.reason, Reason::BaseMoved);
    assert_eq!(rebuild.spec.image, app_v1.tagged);
    assert_eq!(rebuild.spec.from_digest, app_v1.digest);
    let job = wait_for(
        "the Job to complete",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let jobs = s.jobs().await?;
            anyhow::ensure!(
                jobs.len() <= 1,
                "one Job: {:?}",
                jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
            );
            Ok(jobs.into_iter().find(|j| job_finished(j, "Complete")))
        },
    )
    .await?;
    assert_eq!(job.name_any(), format!("{}-1", rebuild.name_any()));
    let args = job_args(&job);
    assert_eq!(
        args,
        [
            "build".to_owned(),
            app_v1.tagged.clone(),
            "from".into(),
            app_v1.digest.clone(),
            "on".into(),
            base_v2.digest.clone(),
            "because".into(),
            "BaseMoved".into(),
            "id".into(),
            rebuild.name_any().trim_start_matches("rebuild-").to_owned(),
        ],
        "the template's variables, rendered"
    );
    assert_eq!(
        job.owner_references().first().map(|o| o.kind.as_str()),
        Some("Rebuild")
    );

    // The build system pushes the rebuilt image, on the new base.
    let mut rebuilt = ImageSpec::built_at(Utc::now());
    rebuilt.base = Some((base_v2.tagged.clone(), base_v2.digest.clone()));
    let app_v2 = s.push("app", "1", &rebuilt).await?;
    let done = s
        .await_rebuild("succeeded", |r| {
            r.progress().phase == RebuildPhase::Succeeded
        })
        .await?;
    assert_eq!(
        done.progress().digest.as_deref(),
        Some(app_v2.digest.as_str())
    );

    // Every dependant moves to the rebuilt digest through its own canary.
    for name in dependants {
        let refresh = s.await_refreshed(name).await?;
        assert_eq!(refresh.spec.reason, Reason::BaseMoved);
        assert_eq!(refresh.spec.digest, app_v2.digest);
        assert!(
            refresh.progress().canary_started_at.is_some(),
            "{name} went through a canary"
        );
    }
    for name in dependants {
        let series = format!(
            r#"freshen_base_image_stale{{namespace="{}",workload="{name}"}}"#,
            s.ns.name
        );
        await_value(
            &s.harness.prometheus_url,
            &series,
            0.0,
            s.harness.scrape_interval,
        )
        .await?;
    }
    // Still one Rebuild and one Job; the outcome counted once.
    assert_eq!(s.rebuilds().await?.len(), 1);
    assert_eq!(s.jobs().await?.len(), 1);
    operator
        .await_metric(
            r#"freshen_rebuilds_total{kind="job",outcome="Succeeded"}"#,
            1.0,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_pipeline_backs_off_and_runs_no_second_job_across_a_restart() -> anyhow::Result<()>
{
    let s = Scene::new("rebuild-fail").await?;
    let old = s
        .push(
            "app",
            "1",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
        )
        .await?;
    let limits = PolicyLimits {
        max_image_age: Some("7d".into()),
        ..PolicyLimits::default()
    };
    s.policy(
        RebuildOn::ImageTooOld,
        limits,
        "1h",
        json!({"e2e.freshen.dev/fail": "true"}),
    )
    .await?;
    s.deploy("legacy", &old.pinned()).await?;
    let mut operator = s.operator().await?;

    // Past maxImageAge: one rebuild, whose Job fails.
    let failed = s
        .await_rebuild("backing off", |r| {
            r.progress().phase == RebuildPhase::BackingOff
        })
        .await?;
    assert_eq!(failed.spec.reason, Reason::ImageTooOld);
    let progress = failed.progress();
    assert_eq!(progress.attempts, 1);
    assert!(
        progress.message.contains("run 1 failed")
            && progress.message.contains("run 2 starts in 1h"),
        "{}",
        progress.message
    );
    let note = await_warning(
        &s.client,
        &s.ns.name,
        "Deployment",
        "legacy",
        "RebuildFailed",
    )
    .await?;
    assert!(note.contains(&failed.name_any()), "{note}");
    operator
        .await_metric(
            r#"freshen_rebuilds_total{kind="job",outcome="Failed"}"#,
            1.0,
        )
        .await?;

    // Many polls and a restart later: no second run before the backoff ends.
    let count = r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#;
    let seen = operator.metric(count).await?;
    wait_for(
        "five more polls",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { Ok((operator.metric(count).await? >= seen + 5.0).then_some(())) },
    )
    .await?;
    operator.kill()?;
    let operator = s.operator().await?;
    let seen = operator.metric(count).await.unwrap_or_default();
    wait_for(
        "five polls of the new operator",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { Ok((operator.metric(count).await? >= seen + 5.0).then_some(())) },
    )
    .await?;
    let rebuilds = s.rebuilds().await?;
    assert_eq!(rebuilds.len(), 1, "one Rebuild for the image");
    assert_eq!(rebuilds[0].progress().attempts, 1, "no second run yet");
    assert_eq!(rebuilds[0].progress().phase, RebuildPhase::BackingOff);
    let jobs = s.jobs().await?;
    assert_eq!(jobs.len(), 1, "one Job");
    assert!(job_finished(&jobs[0], "Failed"));
    Ok(())
}
