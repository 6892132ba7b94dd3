//! One refresh test's world: its namespace, an image repository of its
//! own in the harness registry, a follow-the-tag policy, an operator
//! watching only that namespace, and waits on its Refreshes. Shared by the
//! per-kind refresh suites (StatefulSets, CronJobs, Argo Rollouts).

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{PolicyRefresh, Refresh, RefreshPolicy, RefreshPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::image::{ImageSpec, Pushed, push};
use crate::operator::Operator;
use crate::{Harness, TestNamespace, init_tls, wait_for};

/// A namespace, its repository and its client.
pub struct Scene {
    /// The harness.
    pub harness: Harness,
    /// A client of the harness API server.
    pub client: Client,
    /// The test's namespace (deleted when dropped).
    pub ns: TestNamespace,
    /// The test's repository in the harness registry.
    pub repo: String,
}

impl Scene {
    /// A fresh namespace named after `prefix`.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
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

    /// Pushes `spec` as `tag`; the same spec is the same digest.
    pub async fn push(&self, tag: &str, spec: &ImageSpec) -> anyhow::Result<Pushed> {
        push(&self.harness.registry, &self.repo, tag, spec).await
    }

    /// A RefreshPolicy for the workloads labelled `app=<app>`: follow the
    /// tag; a canary of `weight` percent, `iterations` checks 1s apart,
    /// Ready within `readiness`.
    pub async fn policy(
        &self,
        app: &str,
        weight: u32,
        iterations: u32,
        readiness: &str,
    ) -> anyhow::Result<()> {
        let selector = LabelSelector {
            match_labels: Some([("app".to_owned(), app.to_owned())].into()),
            ..LabelSelector::default()
        };
        let refresh = PolicyRefresh {
            follow_tag: Some(true),
            rollout: Some(RolloutSpec {
                strategy: None,
                canary_weight: Some(weight),
                analysis: Some(AnalysisSpec {
                    interval: Some("1s".into()),
                    iterations: Some(iterations),
                    readiness_timeout: Some(readiness.into()),
                    ..AnalysisSpec::default()
                }),
            }),
            ..PolicyRefresh::default()
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

    /// An operator watching only this namespace, polling every 2s, with a
    /// short Lease so that one killed is replaced quickly.
    pub async fn operator(&self) -> anyhow::Result<Operator> {
        Operator::start(
            &self.harness,
            &[
                "--poll-interval",
                "2s",
                "--namespace",
                &self.ns.name,
                "--leader-elect-lease-duration",
                "3s",
            ],
        )
        .await
    }

    /// The Refreshes of `workload`.
    pub async fn refreshes_of(&self, workload: &str) -> anyhow::Result<Vec<Refresh>> {
        let api: Api<Refresh> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api
            .list(&ListParams::default().labels(&format!("freshen.dev/workload={workload}")))
            .await?;
        Ok(list.items)
    }

    /// Waits (90s at most) until a Refresh of `workload` satisfies `done`.
    pub async fn await_refresh(
        &self,
        workload: &str,
        what: &str,
        done: impl Fn(&Refresh) -> bool,
    ) -> anyhow::Result<Refresh> {
        let done = &done;
        wait_for(
            &format!("a Refresh of {workload}: {what}"),
            Duration::from_secs(90),
            Duration::from_millis(100),
            || async move {
                let all = self.refreshes_of(workload).await?;
                let phases: Vec<String> = all
                    .iter()
                    .map(|r| format!("{:?} {}", r.progress().phase, r.progress().message))
                    .collect();
                match all.into_iter().find(done) {
                    Some(r) => Ok(Some(r)),
                    None => anyhow::bail!("refreshes: {phases:?}"),
                }
            },
        )
        .await
    }

    /// Waits until the operator has reconciled workloads of `controller`
    /// (`statefulset`, `cronjob`, ...) `n` more times, so that an absence
    /// is an absence after that many looks.
    pub async fn await_reconciles(
        &self,
        operator: &Operator,
        controller: &str,
        n: u32,
    ) -> anyhow::Result<()> {
        let series =
            format!(r#"freshen_reconcile_duration_seconds_count{{controller="{controller}"}}"#);
        let start = operator.metric(&series).await?;
        wait_for(
            &format!("{n} more reconciles of {controller}"),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || async {
                Ok((operator.metric(&series).await? >= start + f64::from(n)).then_some(()))
            },
        )
        .await
    }
}

/// A distinct image (by `content`) built `hours_ago`.
pub fn image(content: &str, hours_ago: i64) -> ImageSpec {
    ImageSpec {
        content: content.into(),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(hours_ago))
    }
}
