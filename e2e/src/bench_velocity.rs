//! `make bench-velocity`: patch velocity on the real harness, from an
//! upstream base push to every dependant running the rebuilt image.
//!
//! Notifications on (the harness's notifying registry), the poll interval
//! an hour, a Job pipeline whose pod kwok completes at once, N dependants
//! of one image on one base, a canary analysis of one 1 s check. For each
//! run the base's tag moves and three moments are taken on this process'
//! clock:
//! - **(a) pipeline triggered**: the rebuild's Job exists;
//! - **(b) rebuilt digest seen**: the Rebuild succeeded (this includes the
//!   bench's own push of the rebuilt image, made when (a) is seen: it
//!   plays the build system);
//! - **(c) every dependant Succeeded**: each has a Succeeded Refresh to the
//!   rebuilt digest.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use freshen_api::pipeline::{JobPipeline, Pipeline, RebuildOn, RebuildSettings};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{
    PolicyPipelines, PolicyRefresh, Rebuild, Refresh, RefreshPolicy, RefreshPolicySpec,
};
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::Phase;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::bench_refresh::median_max;
use crate::image::{ImageSpec, Pushed, push};
use crate::operator::Operator;
use crate::{Harness, TestNamespace, deployment_with, wait_for, wait_ready_pods};

/// What the runs for one number of dependants measured.
#[derive(Debug, Clone)]
pub struct VelocityBench {
    /// Dependants of the image.
    pub dependants: usize,
    /// Base pushed -> Job created, per run.
    pub triggered: Vec<Duration>,
    /// Base pushed -> Rebuild succeeded, per run.
    pub rebuilt: Vec<Duration>,
    /// Base pushed -> every dependant Succeeded, per run.
    pub done: Vec<Duration>,
}

impl fmt::Display for VelocityBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = |samples: &[Duration]| {
            let (m, x) = median_max(samples);
            format!("{:.2} s / {:.2} s", m.as_secs_f64(), x.as_secs_f64())
        };
        write!(
            f,
            "| {} | {} | {} | {} | {} |",
            self.dependants,
            self.triggered.len(),
            cell(&self.triggered),
            cell(&self.rebuilt),
            cell(&self.done)
        )
    }
}

/// The table header the rows print under.
pub const HEADER: &str = "| dependants | runs | (a) triggered, median / max | (b) rebuilt digest seen | (c) every dependant Succeeded |\n|---|---|---|---|---|";

/// Runs `runs` base moves for each number of `dependants`.
pub async fn run(
    harness: &Harness,
    runs: usize,
    dependants: usize,
) -> anyhow::Result<VelocityBench> {
    let client = harness.client().await?;
    let ns = TestNamespace::create(harness, &client, "bench-velocity").await?;
    let base_repo = format!("bench-velocity/{}/base", ns.name);
    let app_repo = format!("bench-velocity/{}/app", ns.name);
    let registry = &harness.notify.addr;
    let base = push(registry, &base_repo, "1", &spec("base-0", None)).await?;
    let app = push(registry, &app_repo, "1", &spec("app-0", Some(&base))).await?;
    policy(&client, &ns.name).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..dependants {
        let name = format!("d{i}");
        let d = deployment_with(
            &name,
            &app.pinned(),
            1,
            serde_json::json!({"metadata": {"labels": {"bench": "velocity"}}}),
        )?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    for i in 0..dependants {
        wait_ready_pods(
            &client,
            &ns.name,
            &format!("d{i}"),
            1,
            Duration::from_secs(120),
        )
        .await?;
    }
    let token_file = harness.notify.token_file.display().to_string();
    let limit = (dependants + 1).to_string();
    let operator = Operator::start(
        harness,
        &[
            "--poll-interval",
            "1h",
            "--namespace",
            &ns.name,
            "--plain-http-registry",
            registry,
            "--notify-addr",
            &harness.notify.endpoint,
            "--notify-token-file",
            &token_file,
            "--max-concurrent-refreshes",
            &limit,
            "--max-concurrent-refreshes-per-namespace",
            &limit,
        ],
    )
    .await?;
    // Every dependant measured once (from the watches' initial lists)
    // before a push can be a change.
    let measured = r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#;
    wait_for(
        "every dependant's first measurement",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let n = operator.metric(measured).await?;
            Ok((n >= dependants as f64).then_some(()))
        },
    )
    .await?;

    let mut bench = VelocityBench {
        dependants,
        triggered: Vec::new(),
        rebuilt: Vec::new(),
        done: Vec::new(),
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let rebuilds: Api<Rebuild> = Api::namespaced(client.clone(), &ns.name);
    let refreshes: Api<Refresh> = Api::namespaced(client.clone(), &ns.name);
    for run in 1..=runs {
        let jobs_before = jobs.list(&ListParams::default()).await?.items.len();
        let new_base = push(
            registry,
            &base_repo,
            "1",
            &spec(&format!("base-{run}"), None),
        )
        .await?;
        let pushed = Instant::now();
        wait_for(
            "the rebuild's Job",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async {
                Ok(
                    (jobs.list(&ListParams::default()).await?.items.len() > jobs_before)
                        .then_some(()),
                )
            },
        )
        .await?;
        bench.triggered.push(pushed.elapsed());
        // The build system's push: the app rebuilt on the new base.
        let rebuilt = push(
            registry,
            &app_repo,
            "1",
            &spec(&format!("app-{run}"), Some(&new_base)),
        )
        .await?;
        wait_for(
            "the Rebuild to succeed",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async {
                let done = rebuilds
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .any(|r| {
                        r.progress().phase == RebuildPhase::Succeeded
                            && r.progress().digest.as_deref() == Some(rebuilt.digest.as_str())
                    });
                Ok(done.then_some(()))
            },
        )
        .await?;
        bench.rebuilt.push(pushed.elapsed());
        wait_for(
            "every dependant to succeed",
            Duration::from_secs(300),
            Duration::from_millis(100),
            || async {
                let n = refreshes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|r| {
                        r.progress().phase == Phase::Succeeded && r.spec.digest == rebuilt.digest
                    })
                    .count();
                Ok((n >= dependants).then_some(()))
            },
        )
        .await?;
        bench.done.push(pushed.elapsed());
        eprintln!(
            "N={dependants} run {run}: triggered {:.2?}, rebuilt {:.2?}, all Succeeded {:.2?}",
            bench.triggered[run - 1],
            bench.rebuilt[run - 1],
            bench.done[run - 1]
        );
    }
    Ok(bench)
}

/// An image whose content is `content`, built now, on `base` when given.
fn spec(content: &str, base: Option<&Pushed>) -> ImageSpec {
    ImageSpec {
        content: content.into(),
        base: base.map(|b| (b.tagged.clone(), b.digest.clone())),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::seconds(1))
    }
}

/// A policy over `bench=velocity`: a Job pipeline on BaseMoved, a canary
/// of one 1 s check.
async fn policy(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let template = serde_json::json!({
        "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "build", "image": "registry.example/builder:1", "args": ["$(image)"]}]}}
    });
    let policy = RefreshPolicy::new(
        "velocity",
        RefreshPolicySpec {
            selector: LabelSelector {
                match_labels: Some([("bench".to_owned(), "velocity".to_owned())].into()),
                match_expressions: None,
            },
            limits: Default::default(),
            refresh: PolicyRefresh {
                rollout: Some(RolloutSpec {
                    strategy: None,
                    canary_weight: Some(50),
                    analysis: Some(AnalysisSpec {
                        interval: Some("1s".into()),
                        iterations: Some(1),
                        readiness_timeout: Some("1m".into()),
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
                    tekton: None,
                    webhook: None,
                    images: Vec::new(),
                    allow_annotated_base: None,
                }],
                rebuild: Some(RebuildSettings {
                    pipeline: "build".into(),
                    selectable: None,
                    triggers: Some(vec![RebuildOn::BaseMoved]),
                    timeout: Some("5m".into()),
                    backoff: Some("1m".into()),
                }),
            },
        },
    );
    Api::<RefreshPolicy>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &policy)
        .await?;
    Ok(())
}
