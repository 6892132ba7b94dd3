//! `make bench-registry`: what the registry pays for W workloads over U
//! images, counted in the registry's own access log and the operator's
//! counter, on the real harness.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use crate::image::{ImageSpec, push};
use crate::operator::Operator;
use crate::{
    Harness, TestNamespace, deployment, rand_suffix, registry_log_barrier, registry_log_lines,
    wait_for,
};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Deployments (W), one replica each.
    pub workloads: usize,
    /// Distinct images (U) they share.
    pub images: usize,
    /// Poll intervals measured after the first full measurement.
    pub intervals: usize,
    /// The operator's poll interval (= tag TTL).
    pub poll_interval: Duration,
    /// Sign every image with cosign and govern the workloads with a
    /// RefreshPolicy whose `spec.verify` trusts that key: the running
    /// digests are then verified too.
    pub verify: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The settings.
    pub config: BenchConfig,
    /// From operator start until every workload had an image-age series.
    pub first_measurement: Duration,
    /// Requests in the first interval (cold cache): tag HEADs, manifest GETs, blob GETs,
    /// referrers GETs.
    pub first_interval: [usize; 4],
    /// Requests per later interval (warm cache), same order, averaged.
    pub per_interval: [f64; 4],
    /// The operator's own count of its requests to the harness registry over the run.
    pub operator_requests: f64,
    /// The operator's resident memory at the end.
    pub rss_bytes: u64,
    /// Mean reconcile duration, from the operator's histogram.
    pub mean_reconcile: Duration,
    /// `freshen report` of the same workloads, from a cold cache: wall time.
    pub report_duration: Duration,
    /// Its rows (one per container).
    pub report_rows: usize,
    /// Its registry requests, from the access log: HEADs, manifest GETs, blob GETs,
    /// referrers GETs.
    pub report_requests: [usize; 4],
}

/// Runs the benchmark once.
pub async fn run(harness: &Harness, config: BenchConfig) -> anyhow::Result<BenchReport> {
    let client = harness.client().await?;
    let ns = TestNamespace::create(harness, &client, "bench").await?;
    let prefix = format!("bench-{:08x}", rand_suffix());
    let mut images = Vec::new();
    for i in 0..config.images {
        let repository = format!("{prefix}/img{i}");
        let pushed = push(
            &harness.registry,
            &repository,
            "v1",
            &ImageSpec::built_at(Utc::now()),
        )
        .await?;
        images.push((repository, pushed));
    }
    if config.verify {
        sign_and_govern(harness, &client, &ns.name, &images).await?;
    }

    eprintln!(
        "creating {} Deployments over {} images ...",
        config.workloads, config.images
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    futures::stream::iter(0..config.workloads)
        .map(|i| {
            let deployments = deployments.clone();
            let image = images[i % images.len()].1.pinned();
            async move {
                let d = deployment(
                    &format!("w{i:04}"),
                    &image,
                    1,
                    &[("freshen.dev/refresh", "enabled")],
                )?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let want = config.workloads;
    crate::await_ready_pods(
        &pods,
        want,
        Duration::from_secs(600),
        Duration::from_secs(1),
    )
    .await?;

    let count = |pattern: &str| -> anyhow::Result<usize> {
        images
            .iter()
            .map(|(repository, _)| {
                registry_log_lines(harness, &pattern.replace("{repo}", repository))
            })
            .sum()
    };
    let counts = || -> anyhow::Result<[usize; 4]> {
        Ok([
            count("\"HEAD /v2/{repo}/manifests/")?,
            count("\"GET /v2/{repo}/manifests/")?,
            count("\"GET /v2/{repo}/blobs/")?,
            count("\"GET /v2/{repo}/referrers/")?,
        ])
    };
    registry_log_barrier(harness).await?;
    let before = counts()?;

    eprintln!(
        "starting the operator; measuring {} poll intervals of {:?} ...",
        config.intervals, config.poll_interval
    );
    let poll = freshen_core::HumanDuration(config.poll_interval).to_string();
    let started = tokio::time::Instant::now();
    // Scoped to the benchmark's namespace, so that the operator's own request
    // counter covers the benchmark's workloads only.
    let operator = Operator::start(
        harness,
        &["--poll-interval", &poll, "--namespace", &ns.name],
    )
    .await?;
    operator
        .await_assessed(
            &ns.name,
            want,
            Duration::from_secs(300),
            Duration::from_millis(200),
        )
        .await?;
    let first_measurement = started.elapsed();
    registry_log_barrier(harness).await?;
    let first = sub(counts()?, before);

    // Each later interval re-resolves every tag once: await exactly that.
    let heads_target = first[0] + config.images * config.intervals;
    let limit = config.poll_interval * u32::try_from(config.intervals + 2)?;
    wait_for(
        "the measured intervals' tag look-ups",
        limit,
        Duration::from_millis(200),
        || async {
            let heads = sub(counts()?, before)[0];
            Ok((heads >= heads_target).then_some(()))
        },
    )
    .await?;
    registry_log_barrier(harness).await?;
    let total = sub(counts()?, before);
    let later = sub(total, first);
    let n = config.intervals as f64;

    let text = operator.scrape().await?;
    let registry_label = format!(r#"registry="{}""#, harness.registry);
    let operator_requests = text
        .lines()
        .filter(|l| {
            l.starts_with("freshen_registry_requests_total{") && l.contains(&registry_label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let mean_reconcile = crate::operator::mean_reconcile(&text);
    let rss_bytes = operator
        .rss_bytes()
        .context("reading the operator's memory")?;

    // The one-shot report over the same workloads, with its own cold cache.
    registry_log_barrier(harness).await?;
    let before_report = counts()?;
    let started = std::time::Instant::now();
    let out = crate::operator::report(harness, &["-n", &ns.name, "-o", "json"])?;
    let report_duration = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "freshen report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let report_rows = json["rows"].as_array().map_or(0, Vec::len);
    registry_log_barrier(harness).await?;
    let report_requests = sub(counts()?, before_report);
    Ok(BenchReport {
        config,
        first_measurement,
        first_interval: first,
        per_interval: later.map(|c| c as f64 / n),
        operator_requests,
        rss_bytes,
        mean_reconcile,
        report_duration,
        report_rows,
        report_requests,
    })
}

fn sub(a: [usize; 4], b: [usize; 4]) -> [usize; 4] {
    std::array::from_fn(|i| a[i].saturating_sub(b[i]))
}

/// Signs every image with a new cosign key and makes a RefreshPolicy
/// trusting it govern the namespace's workloads.
async fn sign_and_govern(
    harness: &Harness,
    client: &kube::Client,
    namespace: &str,
    images: &[(String, crate::image::Pushed)],
) -> anyhow::Result<()> {
    use freshen_api::refresh::{KeyAuthoritySpec, KeySpec, VerifySpec};
    let dir = crate::repo_root()
        .join("target/e2e-cosign")
        .join(format!("bench-{:08x}", rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    let keys = crate::cosign::generate_key_pair(harness, &dir, "bench")?;
    for (repository, pushed) in images {
        let pinned = format!("{}/{repository}@{}", harness.registry, pushed.digest);
        crate::cosign::sign(harness, &dir, &keys, &pinned, false)?;
    }
    let policy = freshen_api::RefreshPolicy::new(
        "signed",
        freshen_api::RefreshPolicySpec {
            // Every bench workload: `app` is each one's own name.
            selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "Exists".into(),
                        values: None,
                    },
                ]),
                ..Default::default()
            },
            limits: Default::default(),
            refresh: freshen_api::PolicyRefresh {
                verify: Some(VerifySpec {
                    authorities: vec![KeyAuthoritySpec {
                        name: "bench".into(),
                        key: Some(KeySpec::inline(keys.public_pem)),
                        keyless: None,
                    }],
                    ..VerifySpec::default()
                }),
                ..Default::default()
            },
            pipelines: Default::default(),
        },
    );
    Api::<freshen_api::RefreshPolicy>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &policy)
        .await?;
    Ok(())
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "W={} Deployments over U={} images, poll interval {:?}, {} warm intervals{}",
            c.workloads,
            c.images,
            c.poll_interval,
            c.intervals,
            if c.verify {
                ", every image signed and verified"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "| what | tag HEADs | manifest GETs | blob GETs | referrers GETs |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        let [h, m, b, r] = self.first_interval;
        writeln!(f, "| first interval (cold cache) | {h} | {m} | {b} | {r} |")?;
        let [h, m, b, r] = self.per_interval;
        writeln!(
            f,
            "| each later interval (registry access log) | {h:.1} | {m:.1} | {b:.1} | {r:.1} |"
        )?;
        writeln!(
            f,
            "operator's freshen_registry_requests_total for the registry, whole run: {}",
            self.operator_requests
        )?;
        writeln!(
            f,
            "time from operator start to all {} workloads measured: {:.2}s",
            c.workloads,
            self.first_measurement.as_secs_f64()
        )?;
        writeln!(
            f,
            "mean reconcile: {:.2}ms; operator RSS at the end: {:.1} MiB",
            self.mean_reconcile.as_secs_f64() * 1e3,
            self.rss_bytes as f64 / 1048576.0
        )?;
        let [h, m, b, r] = self.report_requests;
        writeln!(
            f,
            "freshen report, cold cache: {} rows in {:.2}s; registry requests: {h} HEADs, {m} manifest GETs, {b} blob GETs, {r} referrers GETs",
            self.report_rows,
            self.report_duration.as_secs_f64()
        )
    }
}
