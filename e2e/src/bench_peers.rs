//! `make bench-peers`: freshen beside the tools a user would run instead,
//! on the same cluster, the same workloads, in one run.
//!
//! - **Image age**: `bench/peers/image-age.sh` (kubectl, then `crane config`
//!   per distinct image, as a user without freshen would) against freshen's
//!   first complete assessment: wall time, CPU, peak memory and registry
//!   requests (from the registry's access log), at each number of
//!   Deployments.
//! - **Container age**: one pass of descheduler's PodLifeTime (dry run)
//!   over the same pods: wall time, peak memory, pods judged too old;
//!   beside freshen's containers over the same limit.
//! - **Rollback**: Argo Rollouts and Flagger (kubernetes provider), each
//!   with the fastest detection its docs give for pods that never become
//!   ready (a progress deadline), on a canary whose pods crash-loop (the
//!   kwok crash stage): from the first canary pod in CrashLoopBackOff to
//!   the rollback started (Argo: `status.abort`; Flagger: phase `Failed`),
//!   polled every 100 ms. freshen's figure comes from `bench-refresh` in the
//!   same run (canary created -> rollback started, from the Refresh's own
//!   timestamps: it includes the time kwok takes to crash the pod, so it
//!   overstates freshen's).
//!
//! The peers are built from their Go modules by `e2e/harness/build-tools.sh`
//! (cached by version, like the control plane).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};

use crate::bench_refresh::median_max;
use crate::bench_scale::{GOVERNED, cpu_time, ensure_workloads, prepare};
use crate::operator::Operator;
use crate::peers::{Peer, Tools, apply_files, apply_yaml, custom};
use crate::{Harness, TestNamespace, registry_log_barrier, repo_root, wait_for};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// Numbers of opted-in Deployments for the image and container age
    /// comparisons, ascending.
    pub sizes: Vec<usize>,
    /// Deployments that did not opt in (present at every size).
    pub ignored: usize,
    /// Distinct images the workloads share.
    pub images: usize,
    /// Rollback runs per tool.
    pub runs: usize,
    /// freshen's poll interval while measuring the warm interval.
    pub poll_interval: Duration,
}

/// One tool's measurement of one age at one size.
#[derive(Debug, Clone)]
pub struct AgeRow {
    /// What was measured: `image age` or `container age`.
    pub what: &'static str,
    /// The tool.
    pub tool: &'static str,
    /// Opted-in Deployments.
    pub workloads: usize,
    /// Wall time of one complete pass.
    pub seconds: f64,
    /// Peak resident memory (the largest process of a script).
    pub rss_mib: f64,
    /// CPU time over wall time, share of one core.
    pub cpu: f64,
    /// Registry requests of the pass, and of a later warm pass (freshen
    /// polls; a script asks again).
    pub registry_requests: (usize, Option<usize>),
    /// Containers (or pods) judged: measured, or over the age limit.
    pub judged: usize,
}

/// One tool's rollback runs.
#[derive(Debug, Clone)]
pub struct RollbackRow {
    /// The tool.
    pub tool: &'static str,
    /// How detection was configured, and what the time is measured from.
    pub how: String,
    /// One latency per run.
    pub samples: Vec<Duration>,
    /// The controller's resident memory at idle, when it is a process
    /// this benchmark runs.
    pub idle_rss_mib: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct PeersReport {
    /// Image and container age rows.
    pub ages: Vec<AgeRow>,
    /// Rollback rows.
    pub rollbacks: Vec<RollbackRow>,
    /// Tools that could not be measured, and why.
    pub skipped: Vec<String>,
}

/// The progress deadline given to Argo Rollouts and Flagger: how long a
/// canary may fail to become ready before they roll back (their default
/// is 600 s; their docs set it per rollout).
const PROGRESS_DEADLINE_S: u32 = 10;

/// The container age limit of the descheduler comparison.
const MAX_POD_LIFETIME_S: u64 = 1;

/// Runs every comparison.
pub async fn run(harness: &Harness, config: &PeersConfig) -> anyhow::Result<PeersReport> {
    let tools = Tools::find()?;
    let images = prepare(harness, config.images).await?;
    ensure_workloads(
        harness,
        crate::bench_scale::IGNORED,
        config.ignored,
        &images,
        false,
    )
    .await?;
    let mut report = PeersReport::default();
    for &n in &config.sizes {
        ensure_workloads(harness, GOVERNED, n, &images, true).await?;
        report
            .ages
            .extend(freshen_ages(harness, config, n).await.context("freshen")?);
        report.ages.push(
            image_age_script(harness, &tools, n)
                .await
                .context("image-age script")?,
        );
        match descheduler(harness, &tools, n) {
            Ok(row) => report.ages.push(row),
            Err(e) => report.skipped.push(format!("descheduler at {n}: {e:#}")),
        }
        for row in report.ages.iter().filter(|r| r.workloads == n) {
            eprintln!("{}", age_line(row));
        }
    }
    eprintln!(
        "freshen: {} rollback runs (make bench-refresh) ...",
        config.runs
    );
    let freshen = crate::bench_refresh::run(harness, config.runs, Duration::from_secs(5)).await?;
    report.rollbacks.push(RollbackRow {
        tool: "freshen",
        how: "crash loop seen in the canary's pods (restarts), default analysis; measured \
              from the canary's creation"
            .into(),
        samples: freshen.to_rollback,
        idle_rss_mib: None,
    });
    let argo = argo_rollouts(harness, &tools, config.runs).await;
    let flagger = flagger(harness, &tools, config.runs).await;
    for (name, measured) in [("Argo Rollouts", argo), ("Flagger", flagger)] {
        match measured {
            Ok(row) => report.rollbacks.push(row),
            Err(e) => report.skipped.push(format!("{name}: {e:#}")),
        }
    }
    Ok(report)
}

/// Registry requests in the access log so far (the barrier's excepted).
fn registry_requests(harness: &Harness) -> anyhow::Result<usize> {
    let log = std::fs::read_to_string(&harness.registry_log)?;
    Ok(log
        .lines()
        .filter(|l| l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/"))
        .filter(|l| !l.contains("freshen-e2e-barrier"))
        .count())
}

/// freshen's first complete assessment (cluster-wide, from nothing), its
/// registry requests, then one warm poll interval's; the same pass's
/// container ages, against the container-age limit.
async fn freshen_ages(
    harness: &Harness,
    config: &PeersConfig,
    n: usize,
) -> anyhow::Result<[AgeRow; 2]> {
    registry_log_barrier(harness).await?;
    let before = registry_requests(harness)?;
    let poll = freshen_core::HumanDuration(config.poll_interval).to_string();
    let started = Instant::now();
    let operator = Operator::start_with(
        harness,
        &crate::operator::binary(),
        &["--poll-interval", &poll],
    )
    .await?;
    operator
        .await_assessed(
            GOVERNED,
            n,
            Duration::from_secs(1200),
            Duration::from_millis(500),
        )
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_time(operator.pid())?.as_secs_f64() / seconds;
    let rss_mib = operator.rss_bytes()? as f64 / 1_048_576.0;
    registry_log_barrier(harness).await?;
    let first = registry_requests(harness)? - before;
    // The next interval re-resolves each tag once: U HEADs, no GET.
    let heads = |h: &Harness| crate::registry_log_lines(h, "\"HEAD /v2/scale/");
    let heads_before = heads(harness)?;
    wait_for(
        "a warm poll interval's tag look-ups",
        config.poll_interval * 3,
        Duration::from_millis(500),
        || async { Ok((heads(harness)? >= heads_before + config.images).then_some(())) },
    )
    .await?;
    // Every workload's reconcile of the interval has run once it is over.
    tokio::time::sleep(config.poll_interval / 2).await;
    registry_log_barrier(harness).await?;
    let warm = registry_requests(harness)? - before - first;
    let text = operator.scrape().await?;
    let namespace = format!(r#"namespace="{GOVERNED}""#);
    let judged = text
        .lines()
        .filter(|l| l.starts_with("freshen_image_age_seconds{") && l.contains(&namespace))
        .count();
    let limit = MAX_POD_LIFETIME_S as f64;
    let over_limit = text
        .lines()
        .filter(|l| l.starts_with("freshen_container_age_seconds{") && l.contains(&namespace))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .filter(|age| *age > limit)
        .count();
    let image_age = AgeRow {
        what: "image age",
        tool: "freshen",
        workloads: n,
        seconds,
        rss_mib,
        cpu,
        registry_requests: (first, Some(warm)),
        judged,
    };
    // The same pass measures container ages: the containers over the limit.
    let container_age = AgeRow {
        what: "container age",
        registry_requests: (0, None),
        judged: over_limit,
        ..image_age.clone()
    };
    Ok([image_age, container_age])
}

/// `/usr/bin/time -f "%e %U %S %M"` of a command: wall s, CPU s, peak KiB.
struct Timed {
    wall: f64,
    cpu: f64,
    peak_kib: f64,
    stdout: String,
}

fn timed(command: Command) -> anyhow::Result<Timed> {
    let marks = tempfile_path("time");
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<_> = command
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let out = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&marks)
        .args(["-f", "%e %U %S %M"])
        .arg(program)
        .args(args)
        .envs(envs)
        .stdin(Stdio::null())
        .output()
        .context("running /usr/bin/time (Debian package time)")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            command.get_program(),
            tail(&stderr, 2000)
        );
    }
    let text = std::fs::read_to_string(&marks)?;
    let _ = std::fs::remove_file(&marks);
    let f: Vec<f64> = text
        .split_whitespace()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("time's output: {text}"))?;
    let [wall, user, system, peak] = f[..] else {
        bail!("time's output: {text}")
    };
    Ok(Timed {
        wall,
        cpu: user + system,
        peak_kib: peak,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn tail(text: &str, n: usize) -> &str {
    &text[text.len().saturating_sub(n)..]
}

fn tempfile_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("freshen-peers-{what}-{:08x}", crate::rand_suffix()))
}

/// The image-age script over every Deployment in the cluster.
async fn image_age_script(harness: &Harness, tools: &Tools, n: usize) -> anyhow::Result<AgeRow> {
    registry_log_barrier(harness).await?;
    let before = registry_requests(harness)?;
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("bench/peers/image-age.sh"))
        .env("KUBECONFIG", &harness.kubeconfig)
        .env("KUBECTL", &harness.kubectl)
        .env("CRANE", &tools.crane)
        .env("CRANE_FLAGS", "--insecure");
    let t = timed(command)?;
    registry_log_barrier(harness).await?;
    let requests = registry_requests(harness)? - before;
    let judged = t
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{GOVERNED}\t")) && !l.ends_with("\tunknown"))
        .count();
    Ok(AgeRow {
        what: "image age",
        tool: "crane script",
        workloads: n,
        seconds: t.wall,
        rss_mib: t.peak_kib / 1024.0,
        cpu: t.cpu / t.wall,
        registry_requests: (requests, Some(requests)),
        judged,
    })
}

/// One dry-run pass of descheduler's PodLifeTime over the benchmark's pods.
fn descheduler(harness: &Harness, tools: &Tools, n: usize) -> anyhow::Result<AgeRow> {
    let policy = tempfile_path("descheduler-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            r#"apiVersion: descheduler/v1alpha2
kind: DeschedulerPolicy
profiles:
  - name: lifetime
    pluginConfig:
      - name: DefaultEvictor
        args: {{}}
      - name: PodLifeTime
        args:
          maxPodLifeTimeSeconds: {MAX_POD_LIFETIME_S}
          namespaces:
            include: ["{GOVERNED}"]
    plugins:
      deschedule:
        enabled: ["PodLifeTime"]
"#
        ),
    )?;
    // Its dry run copies the cluster into a sandbox client as the watch
    // events arrive, and a pass right after start sees only part of it
    // (4 of 100 pods here): so it runs every 2 s, and the second pass is
    // the one measured.
    let mut command = Command::new(&tools.descheduler);
    command
        .arg("--kubeconfig")
        .arg(&harness.kubeconfig)
        .arg("--policy-config-file")
        .arg(&policy)
        .args(["--dry-run", "--descheduling-interval", "2s"])
        .args(["--secure-port", "0", "--v", "3"]);
    let launched = Instant::now();
    let peer = Peer::start("descheduler", command)?;
    let passes = |log: &str| -> Vec<(f64, f64, usize)> { descheduler_passes(log) };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (pass, peak_mib, cpu) = loop {
        let log = std::fs::read_to_string(&peer.log)?;
        if let Some(second) = passes(&log).get(1).copied() {
            let peak = peer.status_kib("VmHWM:")? / 1024.0;
            let cpu = cpu_time(peer.child.id())?.as_secs_f64() / launched.elapsed().as_secs_f64();
            break (second, peak, cpu);
        }
        if Instant::now() > deadline {
            bail!(
                "descheduler made no second pass in 600 s; log: {}",
                peer.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(peer);
    let _ = std::fs::remove_file(&policy);
    let (started, ended, judged) = pass;
    let seconds = ended - started;
    Ok(AgeRow {
        what: "container age",
        tool: "descheduler PodLifeTime",
        workloads: n,
        seconds,
        rss_mib: peak_mib,
        // Over the whole run (start, informer sync, two passes).
        cpu,
        registry_requests: (0, None),
        judged,
    })
}

/// The passes in a descheduler log (`--v 3`): start and end, seconds of the
/// day from klog's timestamps, and the pods it would evict.
fn descheduler_passes(log: &str) -> Vec<(f64, f64, usize)> {
    let stamp = |line: &str| -> Option<f64> {
        let time = line.split_whitespace().nth(1)?;
        let mut parts = time.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let mut passes = Vec::new();
    let mut current: Option<(f64, usize)> = None;
    for line in log.lines() {
        if line.contains("Resetting pod evictor counters") {
            current = stamp(line).map(|t| (t, 0));
        } else if line.contains("Evicted pod in dry run mode") {
            if let Some((_, count)) = current.as_mut() {
                *count += 1;
            }
        } else if line.contains("\"Number of evictions/requests\"")
            && let (Some((start, count)), Some(end)) = (current.take(), stamp(line))
        {
            passes.push((start, end, count));
        }
    }
    passes
}

/// The first moment (polled) a pod running `image` waits in
/// CrashLoopBackOff, then the first moment `rolled_back` holds: their
/// difference.
async fn crash_to_rollback<F, Fut>(
    pods: &Api<Pod>,
    image: &str,
    limit: Duration,
    mut rolled_back: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    let mut crashed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if crashed.is_none() {
            let listed = pods.list(&ListParams::default()).await?;
            let looping = listed.items.iter().any(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .any(|c| c.image.as_deref() == Some(image))
                }) && p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.state
                                .as_ref()
                                .and_then(|s| s.waiting.as_ref())
                                .and_then(|w| w.reason.as_deref())
                                == Some("CrashLoopBackOff")
                        })
                    })
            });
            if looping {
                crashed = Some(now);
            }
        }
        if rolled_back().await? {
            let Some(crashed) = crashed else {
                bail!("rolled back before a pod of {image} was seen crash-looping");
            };
            return Ok(now.duration_since(crashed));
        }
        if Instant::now() > deadline {
            bail!(
                "no rollback within {limit:?} (crash loop seen: {})",
                crashed.is_some()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A field of a custom resource's status, as JSON.
async fn status_field(
    api: &Api<DynamicObject>,
    name: &str,
    field: &str,
) -> anyhow::Result<serde_json::Value> {
    let object = api.get(name).await?;
    Ok(object.data["status"][field].clone())
}

async fn argo_rollouts(
    harness: &Harness,
    tools: &Tools,
    runs: usize,
) -> anyhow::Result<RollbackRow> {
    let client = harness.client().await?;
    let ns = TestNamespace::create(harness, &client, "peers-argo").await?;
    let mut peer = crate::peers::argo_rollouts(harness, &ns.name, 18091)?;
    let good = format!("{}/peers/app:good", harness.registry);
    let rollout = |image: &str| {
        format!(
            r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: app}}
spec:
  replicas: 2
  progressDeadlineSeconds: {PROGRESS_DEADLINE_S}
  progressDeadlineAbort: true
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
  strategy:
    canary:
      steps: [{{setWeight: 50}}, {{pause: {{}}}}]
"#
        )
    };
    apply_yaml(harness, &ns.name, &rollout(&good))?;
    let rollouts = custom(&client, &ns.name, "argoproj.io", "v1alpha1", "Rollout");
    let healthy = || async {
        let phase = status_field(&rollouts, "app", "phase").await?;
        let abort = status_field(&rollouts, "app", "abort").await?;
        Ok((phase == "Healthy" && abort != true).then_some(()))
    };
    wait_for(
        "the Rollout Healthy",
        Duration::from_secs(120),
        Duration::from_millis(200),
        healthy,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut samples = Vec::new();
    for run in 0..runs {
        peer.alive()?;
        let bad = format!("{}/peers/crashloop:r{run}", harness.registry);
        apply_yaml(harness, &ns.name, &rollout(&bad))?;
        let latency = crash_to_rollback(&pods, &bad, Duration::from_secs(180), || async {
            Ok(status_field(&rollouts, "app", "abort").await? == true)
        })
        .await
        .with_context(|| format!("run {run}; log: {}", peer.log.display()))?;
        eprintln!("  Argo Rollouts run {run}: {latency:.2?}");
        samples.push(latency);
        apply_yaml(harness, &ns.name, &rollout(&good))?;
        wait_for(
            "the Rollout Healthy again",
            Duration::from_secs(120),
            Duration::from_millis(200),
            healthy,
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(RollbackRow {
        tool: "Argo Rollouts",
        how: format!(
            "{} (rollouts-controller): progressDeadlineSeconds {PROGRESS_DEADLINE_S}, \
                 progressDeadlineAbort, canary steps setWeight 50 + pause; until status.abort",
            tools.version("ARGO_ROLLOUTS_VERSION")
        ),
        samples,
        idle_rss_mib: Some(peer.rss_mib()?),
    })
}

async fn flagger(harness: &Harness, tools: &Tools, runs: usize) -> anyhow::Result<RollbackRow> {
    let client = harness.client().await?;
    let crd = tools.modcache.join(format!(
        "github.com/fluxcd/flagger@{}/artifacts/flagger/crd.yaml",
        tools.version("FLAGGER_VERSION")
    ));
    apply_files(harness, &[crd])?;
    let ns = TestNamespace::create(harness, &client, "peers-flagger").await?;
    let mut command = Command::new(&tools.flagger);
    command
        .arg("-kubeconfig")
        .arg(&harness.kubeconfig)
        .args(["-mesh-provider", "kubernetes", "-namespace", &ns.name])
        .args(["-metrics-server", &harness.prometheus_url])
        .args([
            "-port",
            "18093",
            "-control-loop-interval",
            "1s",
            "-log-level",
            "info",
        ])
        .arg("-enable-config-tracking=false");
    let mut peer = Peer::start("flagger", command)?;
    let good = format!("{}/peers/app:good", harness.registry);
    let deployment = |image: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: app}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
"#
        )
    };
    apply_yaml(harness, &ns.name, &deployment(&good))?;
    apply_yaml(
        harness,
        &ns.name,
        &format!(
            r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {{name: app}}
spec:
  provider: kubernetes
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: app}}
  progressDeadlineSeconds: {PROGRESS_DEADLINE_S}
  service: {{port: 80}}
  analysis: {{interval: 1s, threshold: 1, iterations: 1}}
"#
        ),
    )?;
    let canaries = custom(&client, &ns.name, "flagger.app", "v1beta1", "Canary");
    let settled = || async {
        let phase = status_field(&canaries, "app", "phase").await?;
        Ok((phase == "Initialized" || phase == "Succeeded").then_some(()))
    };
    wait_for(
        "the Canary Initialized",
        Duration::from_secs(180),
        Duration::from_millis(200),
        settled,
    )
    .await
    .with_context(|| format!("log: {}", peer.log.display()))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    let set_image = |image: String| {
        let deployments = deployments.clone();
        async move {
            let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
            deployments
                .patch("app", &PatchParams::default(), &Patch::Strategic(patch))
                .await?;
            anyhow::Ok(())
        }
    };
    let mut samples = Vec::new();
    for run in 0..runs {
        peer.alive()?;
        let bad = format!("{}/peers/crashloop:r{run}", harness.registry);
        set_image(bad.clone()).await?;
        let latency = crash_to_rollback(&pods, &bad, Duration::from_secs(180), || async {
            Ok(status_field(&canaries, "app", "phase").await? == "Failed")
        })
        .await
        .with_context(|| format!("run {run}; log: {}", peer.log.display()))?;
        eprintln!("  Flagger run {run}: {latency:.2?}");
        samples.push(latency);
        // Back to a good build: a new tag, so that Flagger analyses and
        // promotes it (the spec it last promoted would not count as a
        // new revision, and the Canary would stay Failed).
        set_image(format!("{good}-{run}")).await?;
        let promoted = || async {
            let phase = status_field(&canaries, "app", "phase").await?;
            Ok((phase == "Succeeded").then_some(()))
        };
        wait_for(
            "the Canary to promote a good build",
            Duration::from_secs(180),
            Duration::from_millis(200),
            promoted,
        )
        .await
        .with_context(|| format!("log: {}", peer.log.display()))?;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(RollbackRow {
        tool: "Flagger",
        how: format!(
            "{} (kubernetes provider): progressDeadlineSeconds {PROGRESS_DEADLINE_S}, analysis \
                 interval 1s, threshold 1, control loop 1s; until phase Failed",
            tools.version("FLAGGER_VERSION")
        ),
        samples,
        idle_rss_mib: Some(peer.rss_mib()?),
    })
}

/// The age table's header.
pub const AGE_HEADER: &str = "| what | Deployments (+ ignored) | tool | one complete pass | CPU (one core) | peak RSS | registry requests: first / warm pass | judged |\n|---|---|---|---|---|---|---|---|";

/// One row of the age table.
pub fn age_line(r: &AgeRow) -> String {
    let warm = r
        .registry_requests
        .1
        .map_or_else(|| "-".to_owned(), |w| w.to_string());
    let requests = if r.what == "container age" {
        "none".to_owned()
    } else {
        format!("{} / {warm}", r.registry_requests.0)
    };
    format!(
        "| {} | {} | {} | {:.1} s | {:.0} % | {:.0} MiB | {requests} | {} |",
        r.what,
        r.workloads,
        r.tool,
        r.seconds,
        r.cpu * 100.0,
        r.rss_mib,
        r.judged
    )
}

/// The rollback table's header.
pub const ROLLBACK_HEADER: &str =
    "| tool | runs | median | max | idle RSS | configured |\n|---|---|---|---|---|---|";

/// One row of the rollback table.
pub fn rollback_line(r: &RollbackRow) -> String {
    let (median, max) = median_max(&r.samples);
    format!(
        "| {} | {} | {:.2} s | {:.2} s | {} | {} |",
        r.tool,
        r.samples.len(),
        median.as_secs_f64(),
        max.as_secs_f64(),
        r.idle_rss_mib
            .map_or_else(|| "see bench-scale".to_owned(), |m| format!("{m:.0} MiB")),
        r.how
    )
}

/// Writes `bench/results/peers-<date>.md` and its two CSVs; returns the
/// markdown's path.
pub fn write_results(config: &PeersConfig, report: &PeersReport) -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let date = Utc::now().format("%Y-%m-%d");
    let mut md = format!(
        "# freshen beside its peers, {date}\n\n`make bench-peers`: one 2-core machine running \
         the control plane, kwok, the registry and every tool; {} Deployments that did not opt \
         in beside the opted-in ones; {} images; freshen release build, cluster-wide. \
         Container-age limit {MAX_POD_LIFETIME_S} s.\n\n## Image and container age\n\n{AGE_HEADER}\n",
        config.ignored, config.images
    );
    let mut ages_csv = String::from(
        "what,tool,workloads,seconds,cpu,rss_mib,first_requests,warm_requests,judged\n",
    );
    for r in &report.ages {
        md.push_str(&age_line(r));
        md.push('\n');
        ages_csv.push_str(&format!(
            "{},{},{},{:.3},{:.4},{:.1},{},{},{}\n",
            r.what,
            r.tool,
            r.workloads,
            r.seconds,
            r.cpu,
            r.rss_mib,
            r.registry_requests.0,
            r.registry_requests
                .1
                .map_or_else(String::new, |w| w.to_string()),
            r.judged
        ));
    }
    md.push_str(&format!(
        "\n## Rollback of a crash-looping canary\n\nFrom the first canary pod in CrashLoopBackOff \
         to the rollback started ({} runs each).\n\n{ROLLBACK_HEADER}\n",
        config.runs
    ));
    let mut rollback_csv = String::from("tool,run,seconds\n");
    for r in &report.rollbacks {
        md.push_str(&rollback_line(r));
        md.push('\n');
        for (i, s) in r.samples.iter().enumerate() {
            rollback_csv.push_str(&format!("{},{i},{:.3}\n", r.tool, s.as_secs_f64()));
        }
    }
    if !report.skipped.is_empty() {
        md.push_str("\n## Not measured\n\n");
        for s in &report.skipped {
            md.push_str(&format!("- {s}\n"));
        }
    }
    md.push_str(&format!(
        "\n![image age and rollback beside the peers](peers-{date}.png)\n"
    ));
    let path = dir.join(format!("peers-{date}.md"));
    std::fs::write(&path, md)?;
    std::fs::write(dir.join(format!("peers-{date}-ages.csv")), ages_csv)?;
    std::fs::write(dir.join(format!("peers-{date}-rollback.csv")), rollback_csv)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descheduler_passes_are_read_from_its_log() {
        let log = r#"I1130 18:23:19.900000 1 descheduler.go:235] Resetting pod evictor counters
I1130 18:23:20.000000 1 evictions.go:587] "Evicted pod in dry run mode" pod="ns/a"
I1130 18:23:20.500000 1 descheduler.go:252] "Number of evictions/requests" totalEvicted=1
I1130 18:23:22.000000 1 descheduler.go:235] Resetting pod evictor counters
I1130 18:23:22.100000 1 evictions.go:587] "Evicted pod in dry run mode" pod="ns/a"
I1130 18:23:22.200000 1 evictions.go:587] "Evicted pod in dry run mode" pod="ns/b"
I1130 18:23:23.250000 1 descheduler.go:252] "Number of evictions/requests" totalEvicted=2
I1130 18:23:24.000000 1 descheduler.go:235] Resetting pod evictor counters
"#;
        let passes = descheduler_passes(log);
        assert_eq!(passes.len(), 2, "{passes:?}");
        let (start, end, judged) = passes[1];
        assert!((end - start - 1.25).abs() < 1e-6, "{passes:?}");
        assert_eq!(judged, 2);
    }
}
