//! `make bench-refresh`: how fast freshen reacts, on the real harness.
//!
//! For each of N runs, a new digest whose pods crash-loop is pushed to a tag
//! a workload follows, and two latencies are taken:
//! - **digest pushed -> Refresh created**, on this process' clock (the push
//!   returns, then the Refresh is awaited with a 20 ms poll);
//! - **canary created -> rollback started**, from the Refresh's own stored
//!   timestamps (`canaryStartedAt`, `rollbackStartedAt`): what kwok needs to
//!   crash the canary's pods plus what freshen needs to notice.
//!
//! The canary's analysis interval stays at its default (30 s): a crash loop
//! must fail the canary when it is seen, not at the next check.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{PolicyRefresh, Refresh, RefreshPolicy, RefreshPolicySpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use crate::image::{ImageSpec, push};
use crate::operator::Operator;
use crate::{Harness, TestNamespace, deployment_with, wait_for, wait_ready_pods};

/// What the runs measured.
#[derive(Debug, Clone)]
pub struct RefreshBench {
    /// The operator's poll interval.
    pub poll_interval: Duration,
    /// Digest pushed -> Refresh created, per run.
    pub to_refresh: Vec<Duration>,
    /// Canary created -> rollback started, per run.
    pub to_rollback: Vec<Duration>,
}

/// The median and the largest of `samples`.
pub fn median_max(samples: &[Duration]) -> (Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let median = match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    };
    (median, sorted.last().copied().unwrap_or_default())
}

impl fmt::Display for RefreshBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m1, x1) = median_max(&self.to_refresh);
        let (m2, x2) = median_max(&self.to_rollback);
        writeln!(
            f,
            "runs: {} (operator poll interval {:?})",
            self.to_refresh.len(),
            self.poll_interval
        )?;
        writeln!(
            f,
            "digest pushed -> Refresh created: median {m1:.2?}, max {x1:.2?}"
        )?;
        write!(
            f,
            "crash-looping canary created -> rollback started: median {m2:.2?}, max {x2:.2?}"
        )
    }
}

/// Runs the benchmark: `runs` workloads, one run each, one after another.
pub async fn run(
    harness: &Harness,
    runs: usize,
    poll_interval: Duration,
) -> anyhow::Result<RefreshBench> {
    let client = harness.client().await?;
    let ns = TestNamespace::create(harness, &client, "bench-refresh").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let refreshes: Api<Refresh> = Api::namespaced(client.clone(), &ns.name);
    let policy = RefreshPolicy::new(
        "bench",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: LabelSelector {
                match_labels: Some([("bench".to_owned(), "refresh".to_owned())].into()),
                ..LabelSelector::default()
            },
            limits: Default::default(),
            refresh: PolicyRefresh {
                follow_tag: Some(true),
                rollout: Some(RolloutSpec {
                    analysis: Some(AnalysisSpec {
                        readiness_timeout: Some("2m".into()),
                        ..AnalysisSpec::default()
                    }),
                    ..RolloutSpec::default()
                }),
                ..PolicyRefresh::default()
            },
        },
    );
    Api::<RefreshPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await?;

    // Every workload first, each on its own repository, told by kwok which
    // digest of it crash-loops.
    let mut bad_specs = Vec::new();
    for i in 0..runs {
        let repo = format!("bench-refresh/{}-{i}", ns.name);
        let built = Utc::now() - TimeDelta::hours(2);
        let good = ImageSpec {
            content: format!("good-{i}"),
            ..ImageSpec::built_at(built)
        };
        let bad = ImageSpec {
            content: format!("bad-{i}"),
            ..ImageSpec::built_at(built)
        };
        let v1 = push(&harness.registry, &repo, "stable", &good).await?;
        let bad_digest = push(&harness.registry, &repo, "candidate", &bad)
            .await?
            .digest;
        let name = format!("w{i}");
        let deploy = deployment_with(
            &name,
            &v1.pinned(),
            1,
            serde_json::json!({
                "metadata": {"labels": {"bench": "refresh"}},
                "spec": {"template": {"metadata": {
                    "annotations": {"e2e.freshen.dev/crash-on": bad_digest}
                }}}
            }),
        )?;
        deployments.create(&PostParams::default(), &deploy).await?;
        wait_ready_pods(&client, &ns.name, &name, 1, Duration::from_secs(60)).await?;
        bad_specs.push((name, repo, bad));
    }
    let poll = format!("{}s", poll_interval.as_secs().max(1));
    let _operator = Operator::start(
        harness,
        &["--poll-interval", &poll, "--namespace", &ns.name],
    )
    .await?;

    let mut report = RefreshBench {
        poll_interval,
        to_refresh: Vec::new(),
        to_rollback: Vec::new(),
    };
    for (name, repo, bad) in &bad_specs {
        push(&harness.registry, repo, "stable", bad).await?;
        let pushed = Instant::now();
        let selector = format!("freshen.dev/workload={name}");
        let refresh = wait_for(
            &format!("a Refresh of {name}"),
            Duration::from_secs(120),
            Duration::from_millis(20),
            || {
                let (refreshes, selector) = (refreshes.clone(), selector.clone());
                async move {
                    let list = refreshes
                        .list(&ListParams::default().labels(&selector))
                        .await?;
                    Ok(list.items.into_iter().next())
                }
            },
        )
        .await?;
        report.to_refresh.push(pushed.elapsed());
        let refresh_name = refresh.name_any();
        let rolled = wait_for(
            &format!("Refresh {refresh_name} to roll back"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                let (refreshes, refresh_name) = (refreshes.clone(), refresh_name.clone());
                async move {
                    let r = refreshes.get(&refresh_name).await?;
                    let p = r.progress();
                    Ok(p.canary_started_at.zip(p.rollback_started_at))
                }
            },
        )
        .await?;
        report
            .to_rollback
            .push((rolled.1 - rolled.0).to_std().unwrap_or_default());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max() {
        let s = |v: &[u64]| {
            v.iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            median_max(&s(&[30, 10, 20])),
            (Duration::from_millis(20), Duration::from_millis(30))
        );
        assert_eq!(
            median_max(&s(&[40, 10, 20, 30])),
            (Duration::from_millis(25), Duration::from_millis(40))
        );
        assert_eq!(median_max(&[]), (Duration::ZERO, Duration::ZERO));
    }
}
