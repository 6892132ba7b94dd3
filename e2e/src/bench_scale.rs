//! `make bench-scale`: the first complete assessment, memory and idle CPU
//! of a cluster-wide operator (release build) at growing numbers of
//! opted-in Deployments, beside Deployments that did not opt in, and the
//! cold `freshen report` over the same.
//!
//! The workloads grow in place (1,000, then 2,500, ...): each size starts a
//! fresh operator, so every figure is a first assessment from nothing.
//!
//! With `--mixed` the opted-in workloads are a mixed fleet instead, in a
//! namespace of their own ([`MIXED`]): of every 20, 12 Deployments, 3
//! StatefulSets, 2 DaemonSets (each held to one node by a nodeSelector, so
//! the pods stay one per workload), 1 CronJob (no Job runs) and 2 bare
//! pods; a workload counts as assessed once it has a record
//! (`freshen_workload_config_errors`), since a CronJob has no running
//! container to age.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use crate::image::{ImageSpec, Pushed, push};
use crate::operator::Operator;
use crate::{Harness, deployment};

/// The benchmark's namespaces: the governed workloads, and the others.
pub const GOVERNED: &str = "scale-governed";
/// The namespace of the Deployments that did not opt in.
pub const IGNORED: &str = "scale-ignored";
/// The namespace of the mixed fleet (`--mixed`).
pub const MIXED: &str = "scale-mixed";

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Numbers of opted-in Deployments, ascending.
    pub sizes: Vec<usize>,
    /// Deployments that did not opt in (present at every size).
    pub ignored: usize,
    /// Distinct images the workloads share.
    pub images: usize,
    /// The operator's poll interval.
    pub poll_interval: Duration,
    /// Another build to measure at each size too (e.g. the previous
    /// commit's), as the baseline.
    pub baseline: Option<std::path::PathBuf>,
    /// Opted-in workloads of every kind instead of Deployments only.
    pub mixed: bool,
}

/// What one size measured.
#[derive(Debug, Clone)]
pub struct ScaleRow {
    /// Which build: `freshen` or `baseline`.
    pub build: &'static str,
    /// Opted-in Deployments.
    pub workloads: usize,
    /// Operator start -> every workload has an image-age series.
    pub first_assessment: Duration,
    /// Resident memory once assessed, and after the idle window.
    pub rss_mib: (f64, f64),
    /// CPU between polls, share of one core, over the idle window.
    pub idle_cpu: f64,
    /// Mean reconcile of the deployment controller.
    pub mean_reconcile: Duration,
    /// `freshen report` over the governed namespace, cold.
    pub report: Duration,
    /// The operator's requests to the API server from its start to the
    /// first complete assessment.
    pub api_first: ApiCounts,
    /// Its requests during the idle window.
    pub api_idle: ApiCounts,
}

/// Requests to the API server by kind, from `freshen_api_requests_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiCounts {
    /// LISTs.
    pub list: u64,
    /// GETs of one object.
    pub get: u64,
    /// WATCHes started.
    pub watch: u64,
    /// Creates, updates, patches and deletes.
    pub write: u64,
}

impl ApiCounts {
    /// The counts in an exposition `text`.
    pub fn of(text: &str) -> Self {
        let mut counts = Self::default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("freshen_api_requests_total{"))
        {
            let (Some(labels), Some(value)) = (line.split('}').next(), line.rsplit(' ').next())
            else {
                continue;
            };
            let n = value.parse::<f64>().unwrap_or(0.0) as u64;
            let verb = labels
                .split(',')
                .find_map(|l| l.trim_start_matches('{').split_once("verb=\""))
                .map(|(_, v)| v.trim_end_matches('"'))
                .unwrap_or_default();
            match verb {
                "list" => counts.list += n,
                "get" => counts.get += n,
                "watch" => counts.watch += n,
                _ => counts.write += n,
            }
        }
        counts
    }

    /// What was counted since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            list: self.list.saturating_sub(before.list),
            get: self.get.saturating_sub(before.get),
            watch: self.watch.saturating_sub(before.watch),
            write: self.write.saturating_sub(before.write),
        }
    }
}

impl std::fmt::Display for ApiCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} list, {} get, {} watch, {} write",
            self.list, self.get, self.watch, self.write
        )
    }
}

/// Runs every size; returns one row each.
pub async fn run(harness: &Harness, config: &ScaleConfig) -> anyhow::Result<Vec<ScaleRow>> {
    let images = prepare(harness, config.images).await?;
    ensure_workloads(harness, IGNORED, config.ignored, &images, false).await?;
    let mut rows = Vec::new();
    for &n in &config.sizes {
        if config.mixed {
            ensure_mixed(harness, n, &images).await?;
        } else {
            ensure_workloads(harness, GOVERNED, n, &images, true).await?;
        }
        let mut builds = vec![("freshen", crate::operator::binary())];
        builds.extend(config.baseline.iter().map(|b| ("baseline", b.clone())));
        for (build, binary) in builds {
            rows.push(measure(harness, config, n, build, &binary).await?);
            eprintln!("{}", row_line(rows.last().context("a row")?));
        }
    }
    Ok(rows)
}

/// Creates the benchmark's namespaces and pushes `count` images
/// (`scale/img<i>:v1`); returns them.
pub async fn prepare(harness: &Harness, count: usize) -> anyhow::Result<Vec<Pushed>> {
    let client = harness.client().await?;
    for ns in [GOVERNED, IGNORED, MIXED] {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
        }))?;
        Api::<Namespace>::all(client.clone())
            .patch(
                ns,
                &PatchParams::apply("freshen-bench").force(),
                &Patch::Apply(&namespace),
            )
            .await?;
    }
    let mut images = Vec::new();
    for i in 0..count {
        images.push(
            push(
                &harness.registry,
                &format!("scale/img{i}"),
                "v1",
                &ImageSpec::built_at(Utc::now()),
            )
            .await?,
        );
    }
    Ok(images)
}

/// Creates Deployments `w00000`.. up to `count` in `namespace` (server-side
/// apply, 32 at a time; those already there are left) and waits for their
/// pods.
pub async fn ensure_workloads(
    harness: &Harness,
    namespace: &str,
    count: usize,
    images: &[Pushed],
    opted_in: bool,
) -> anyhow::Result<()> {
    let client = harness.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let existing = deployments
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    if existing < count {
        eprintln!("creating Deployments {existing}..{count} in {namespace} ...");
        let started = Instant::now();
        let apply = PatchParams::apply("freshen-bench").force();
        futures::stream::iter(existing..count)
            .map(|i| {
                let deployments = deployments.clone();
                let apply = apply.clone();
                let image = images[i % images.len()].pinned();
                async move {
                    let name = format!("w{i:05}");
                    let annotations: &[(&str, &str)] = if opted_in {
                        &[("freshen.dev/refresh", "enabled")]
                    } else {
                        &[]
                    };
                    let mut d = deployment(&name, &image, 1, annotations)?;
                    d.metadata.namespace = Some(namespace.to_owned());
                    deployments.patch(&name, &apply, &Patch::Apply(&d)).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        eprintln!("  created in {:.1}s", started.elapsed().as_secs_f64());
    }
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let started = Instant::now();
    crate::await_ready_pods(
        &pods,
        count,
        Duration::from_secs(1800),
        Duration::from_secs(3),
    )
    .await?;
    eprintln!(
        "  {count} pods Ready in {namespace} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The kind of mixed-fleet workload `i` (12 of every 20 Deployments, 3
/// StatefulSets, 2 DaemonSets, 1 CronJob, 2 bare pods).
fn mixed_kind(i: usize) -> &'static str {
    match i % 20 {
        0..12 => "Deployment",
        12..15 => "StatefulSet",
        15..17 => "DaemonSet",
        17 => "CronJob",
        _ => "Pod",
    }
}

/// Creates the mixed fleet `w00000`.. up to `count` in [`MIXED`] (server-
/// side apply, 32 at a time; re-applying those already there changes
/// nothing) and waits for the pods of every kind but the CronJobs.
pub async fn ensure_mixed(
    harness: &Harness,
    count: usize,
    images: &[Pushed],
) -> anyhow::Result<()> {
    let client = harness.client().await?;
    let nodes: Vec<String> = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "the harness has no nodes");
    let existing = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), MIXED)
        .get_opt("fleet")
        .await?
        .and_then(|cm| cm.data?.get("count")?.parse::<usize>().ok())
        .unwrap_or(0);
    if existing < count {
        eprintln!("creating mixed workloads {existing}..{count} in {MIXED} ...");
        let started = Instant::now();
        let apply = PatchParams::apply("freshen-bench").force();
        futures::stream::iter(existing..count)
            .map(|i| {
                let (client, apply) = (client.clone(), apply.clone());
                let object = mixed_object(i, &images[i % images.len()].pinned(), &nodes);
                async move {
                    let kind = mixed_kind(i);
                    let resource = kube::discovery::ApiResource::from_gvk(&match kind {
                        "CronJob" => kube::api::GroupVersionKind::gvk("batch", "v1", kind),
                        "Pod" => kube::api::GroupVersionKind::gvk("", "v1", kind),
                        _ => kube::api::GroupVersionKind::gvk("apps", "v1", kind),
                    });
                    let api: Api<kube::api::DynamicObject> =
                        Api::namespaced_with(client, MIXED, &resource);
                    let object: kube::api::DynamicObject = serde_json::from_value(object)?;
                    api.patch(
                        &object.metadata.name.clone().unwrap_or_default(),
                        &apply,
                        &Patch::Apply(&object),
                    )
                    .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        let marker = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "fleet", "namespace": MIXED},
            "data": {"count": count.to_string()},
        });
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), MIXED)
            .patch("fleet", &apply, &Patch::Apply(&marker))
            .await?;
        eprintln!("  created in {:.1}s", started.elapsed().as_secs_f64());
    }
    let pods: Api<Pod> = Api::namespaced(client, MIXED);
    let with_pods = (0..count).filter(|i| mixed_kind(*i) != "CronJob").count();
    let started = Instant::now();
    crate::await_ready_pods(
        &pods,
        with_pods,
        Duration::from_secs(1800),
        Duration::from_secs(3),
    )
    .await?;
    eprintln!(
        "  {with_pods} pods Ready in {MIXED} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Mixed-fleet workload `i`, opted in, running `image`.
fn mixed_object(i: usize, image: &str, nodes: &[String]) -> serde_json::Value {
    let name = format!("w{i:05}");
    let kind = mixed_kind(i);
    let opted_in = serde_json::json!({"freshen.dev/refresh": "enabled"});
    let pod_spec = serde_json::json!({"containers": [{"name": "app", "image": image}]});
    let template = |spec: serde_json::Value| serde_json::json!({"metadata": {"labels": {"app": name}}, "spec": spec});
    let selector = serde_json::json!({"matchLabels": {"app": name}});
    let (api_version, spec) = match kind {
        "Deployment" => (
            "apps/v1",
            serde_json::json!({
                "replicas": 1, "selector": selector, "template": template(pod_spec),
            }),
        ),
        "StatefulSet" => (
            "apps/v1",
            serde_json::json!({
                "replicas": 1, "serviceName": name, "selector": selector, "template": template(pod_spec),
            }),
        ),
        "DaemonSet" => {
            let mut spec = pod_spec;
            spec["nodeSelector"] =
                serde_json::json!({"kubernetes.io/hostname": nodes[i % nodes.len()]});
            (
                "apps/v1",
                serde_json::json!({"selector": selector, "template": template(spec)}),
            )
        }
        "CronJob" => {
            let mut spec = pod_spec;
            spec["restartPolicy"] = serde_json::json!("Never");
            (
                "batch/v1",
                serde_json::json!({
                    "schedule": "0 0 1 1 *",
                    "jobTemplate": {"spec": {"template": template(spec)}},
                }),
            )
        }
        _ => {
            return serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": MIXED, "labels": {"app": name},
                             "annotations": opted_in},
                "spec": pod_spec,
            });
        }
    };
    serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": MIXED, "annotations": opted_in},
        "spec": spec,
    })
}

/// CPU time (user + system) of process `pid`, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ) in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // Linux reports in clock ticks of 100 Hz (USER_HZ).
    Ok(Duration::from_millis(ticks * 10))
}

async fn measure(
    harness: &Harness,
    config: &ScaleConfig,
    n: usize,
    build: &'static str,
    binary: &std::path::Path,
) -> anyhow::Result<ScaleRow> {
    let poll = freshen_core::HumanDuration(config.poll_interval).to_string();
    let started = Instant::now();
    // Cluster-wide, as production runs it.
    let operator = Operator::start_with(harness, binary, &["--poll-interval", &poll]).await?;
    let namespace = if config.mixed { MIXED } else { GOVERNED };
    if config.mixed {
        operator
            .await_series(
                "freshen_workload_config_errors{",
                namespace,
                n,
                Duration::from_secs(1200),
                Duration::from_secs(1),
            )
            .await?;
    } else {
        operator
            .await_assessed(
                namespace,
                n,
                Duration::from_secs(1200),
                Duration::from_secs(1),
            )
            .await?;
    }
    let first_assessment = started.elapsed();
    let rss_assessed = operator.rss_bytes()? as f64 / 1_048_576.0;
    let api_first = ApiCounts::of(&operator.scrape().await?);
    // Idle: between polls nothing should happen. 20 s of CPU time.
    let window = Duration::from_secs(20);
    let cpu_before = cpu_time(operator.pid())?;
    tokio::time::sleep(window).await;
    let idle_cpu = (cpu_time(operator.pid())? - cpu_before).as_secs_f64() / window.as_secs_f64();
    let rss_idle = operator.rss_bytes()? as f64 / 1_048_576.0;
    let text = operator.scrape().await?;
    let mean_reconcile = crate::operator::mean_reconcile(&text);
    let api_idle = ApiCounts::of(&text).since(api_first);
    drop(operator);
    let started = Instant::now();
    let out = crate::operator::report(harness, &["-n", namespace, "-o", "json"])?;
    let report = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ScaleRow {
        build,
        workloads: n,
        first_assessment,
        rss_mib: (rss_assessed, rss_idle),
        idle_cpu,
        mean_reconcile,
        report,
        api_first,
        api_idle,
    })
}

/// The table's header.
pub const HEADER: &str = "| build | opted-in workloads (+ ignored Deployments) | first complete assessment | operator RSS assessed / idle | idle CPU (one core) | mean reconcile | `freshen report`, cold | API requests to the first assessment | API requests while idle (20 s) |\n|---|---|---|---|---|---|---|---|---|";

/// One row of the table.
pub fn row_line(r: &ScaleRow) -> String {
    format!(
        "| {} | {} | {:.1} s | {:.0} / {:.0} MiB | {:.1} % | {:.1} ms | {:.2} s | {} | {} |",
        r.build,
        r.workloads,
        r.first_assessment.as_secs_f64(),
        r.rss_mib.0,
        r.rss_mib.1,
        r.idle_cpu * 100.0,
        r.mean_reconcile.as_secs_f64() * 1e3,
        r.report.as_secs_f64(),
        r.api_first,
        r.api_idle,
    )
}

/// Writes `bench/results/scale-<date>.md` (the table and how it was made)
/// and `.csv` (for the plot); returns the markdown's path.
pub fn write_results(
    config: &ScaleConfig,
    rows: &[ScaleRow],
) -> anyhow::Result<std::path::PathBuf> {
    let dir = crate::repo_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let date = Utc::now().format("%Y-%m-%d");
    let fleet = if config.mixed {
        "opted-in workloads a mixed fleet (of every 20: 12 Deployments, 3 StatefulSets, \
         2 DaemonSets, 1 CronJob, 2 bare pods)"
    } else {
        "opted-in workloads Deployments"
    };
    let mut md = format!(
        "# Scale, {date}\n\n`make bench-scale` (release build, cluster-wide operator, {fleet}, {} \
         ignored Deployments beside them, {} images, poll interval {}; 2 cores).\n\n{HEADER}\n",
        config.ignored,
        config.images,
        freshen_core::HumanDuration(config.poll_interval)
    );
    let mut csv = String::from(
        "build,workloads,first_assessment_s,rss_assessed_mib,rss_idle_mib,idle_cpu,mean_reconcile_ms,report_s,api_first_list,api_first_get,api_first_watch,api_first_write,api_idle_list,api_idle_get,api_idle_watch,api_idle_write\n",
    );
    for r in rows {
        md.push_str(&row_line(r));
        md.push('\n');
        csv.push_str(&format!(
            "{},{},{:.3},{:.1},{:.1},{:.4},{:.3},{:.3},{},{},{},{},{},{},{},{}\n",
            r.build,
            r.workloads,
            r.first_assessment.as_secs_f64(),
            r.rss_mib.0,
            r.rss_mib.1,
            r.idle_cpu,
            r.mean_reconcile.as_secs_f64() * 1e3,
            r.report.as_secs_f64(),
            r.api_first.list,
            r.api_first.get,
            r.api_first.watch,
            r.api_first.write,
            r.api_idle.list,
            r.api_idle.get,
            r.api_idle.watch,
            r.api_idle.write,
        ));
    }
    let suffix = if config.mixed { "-mixed" } else { "" };
    let path = dir.join(format!("scale-{date}{suffix}.md"));
    std::fs::write(&path, md)?;
    std::fs::write(dir.join(format!("scale-{date}{suffix}.csv")), csv)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_summed_by_verb() {
        let text = "# TYPE freshen_api_requests_total counter\n\
            freshen_api_requests_total{resource=\"pods\",verb=\"list\"} 2\n\
            freshen_api_requests_total{resource=\"deployments\",verb=\"list\"} 1\n\
            freshen_api_requests_total{resource=\"pods\",verb=\"watch\"} 3\n\
            freshen_api_requests_total{resource=\"secrets\",verb=\"get\"} 4\n\
            freshen_api_requests_total{resource=\"leases\",verb=\"update\"} 5\n\
            freshen_api_requests_total{resource=\"refreshes/status\",verb=\"patch\"} 6\n\
            freshen_leader 1\n";
        let counts = ApiCounts::of(text);
        assert_eq!(
            counts,
            ApiCounts {
                list: 3,
                get: 4,
                watch: 3,
                write: 11
            }
        );
        assert_eq!(
            counts.since(ApiCounts {
                list: 3,
                get: 0,
                watch: 1,
                write: 10
            }),
            ApiCounts {
                list: 0,
                get: 4,
                watch: 2,
                write: 1
            }
        );
        assert_eq!(counts.to_string(), "3 list, 4 get, 3 watch, 11 write");
    }
}
