//! The freshen binary.
//!
//! `freshen run` runs the operator: it measures every Deployment a policy
//! governs or `freshen.dev/refresh: enabled` opts in, exports the signals on
//! `/metrics` and keeps policy status true. `freshen report` makes the same
//! judgement once, from a kubeconfig. `freshen crd` prints the CRDs.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use freshen_controller::{Config, ControllerConfig};
use freshen_registry::{Platform, RegistryConfig};
use tracing_subscriber::EnvFilter;

mod reference;

/// Keeps running containers fresh: measures image and container age and
/// base staleness, exports them to Prometheus, judges them against max-age
/// policies, and rolls new digests out through a canary (restarting
/// containers that ran too long), rolling back what fails.
#[derive(Debug, Parser)]
#[command(name = "freshen", version, about, propagate_version = true)]
struct Cli {
    /// Log format (`RUST_LOG` filters what is logged).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "FRESHEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or
    /// the in-cluster service account).
    Run(Box<RunArgs>),
    /// Scan the Deployments of the current kubeconfig's cluster and show,
    /// per container, image and running age, base and update status, the
    /// limits in force and their source, worst first. Installs nothing.
    ///
    /// Exit status: 0 done, 1 violations found (with --fail-on-violation),
    /// 2 the scan could not be made.
    Report(Box<ReportArgs>),
    /// Print the CustomResourceDefinitions (YAML) to apply before `run`, or
    /// write one file per CRD into a directory.
    Crd(CrdArgs),
    /// Write the guide's generated reference pages (flags, metrics, Event
    /// reasons, conditions, annotations, CRD fields): `make reference`.
    #[command(hide = true)]
    Reference(ReferenceArgs),
}

#[derive(Debug, clap::Args)]
struct ReferenceArgs {
    /// The directory to write the pages into.
    #[arg(long, value_name = "DIR", default_value = "docs/src/reference")]
    output_dir: std::path::PathBuf,
    /// Write nothing: compare the pages in the directory with the code's
    /// and fail, naming each line, when one differs.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
struct CrdArgs {
    /// Write `<plural>.yaml` files into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<std::path::PathBuf>,
    /// Write them as the Helm chart's templates (`charts/freshen/templates/crds/`).
    #[arg(long)]
    helm: bool,
}

/// Who may read /metrics.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricsAuthMode {
    /// Anyone who reaches the port.
    None,
    /// A token the API server authenticates, allowed to `get` /metrics.
    Kubernetes,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address to serve /metrics, /healthz and /readyz on (/readyz is
    /// ready once every watch has listed, and names those still listing).
    #[arg(long, default_value = "0.0.0.0:8080", env = "FRESHEN_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Who may read /metrics: `none` (anyone who reaches the port) or
    /// `kubernetes` (a bearer token the API server authenticates, whose
    /// identity may `get` the non-resource URL /metrics: TokenReview and
    /// SubjectAccessReview, as controller-runtime does). The metrics name
    /// every tenant's workloads and images; the chart sets `kubernetes`.
    #[arg(long, value_enum, default_value_t = MetricsAuthMode::None, env = "FRESHEN_METRICS_AUTH")]
    metrics_auth: MetricsAuthMode,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "FRESHEN_NAMESPACE")]
    namespace: Option<String>,
    /// How often an unchanged workload is measured again, e.g. 5m, 1h.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    poll_interval: Duration,
    /// How long after a failed measurement (e.g. registry unreachable) it is retried.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    retry_interval: Duration,
    /// Active refreshes (rollouts under way) across all workloads, at most.
    #[arg(long, default_value_t = 10)]
    max_concurrent_refreshes: u32,
    /// Active refreshes in one namespace, at most, so that one namespace's
    /// stuck canaries cannot use up --max-concurrent-refreshes for all.
    #[arg(long, default_value_t = 3)]
    max_concurrent_refreshes_per_namespace: u32,
    /// The longest a canary's analysis (interval x iterations) or a
    /// readiness timeout may take, whatever a policy or annotation asks:
    /// a Refresh ends within about three times this, so no namespace holds
    /// a share of --max-concurrent-refreshes for longer, e.g. 6h, 30m.
    #[arg(long, default_value = "6h", value_parser = duration_arg)]
    max_analysis_time: Duration,
    /// Where the bare git clones of `gitops: Commit` repositories are kept
    /// between pushes (shallow; an emptyDir in the chart).
    #[arg(long, env = "FRESHEN_GIT_DIR", default_value = "/tmp/freshen-git")]
    git_dir: std::path::PathBuf,
    /// Argo CD's namespace: where an Application named by a workload's
    /// tracking annotation without a namespace is read (gitops: Commit).
    #[arg(long, default_value = "argocd")]
    argocd_namespace: String,
    /// Edits to one repository and branch asked for within this window are
    /// pushed as one commit (a base move that rebuilt forty images: a few
    /// commits, not forty).
    #[arg(long, default_value = "2s", value_parser = duration_arg)]
    git_batch_window: Duration,
    /// TagRecords (since when a tag has named its digest) kept at most;
    /// past it, a new tag is answered from memory only.
    #[arg(long, default_value_t = 20_000)]
    max_tag_records: usize,
    /// TagRecords the workloads of one namespace may bring, at most.
    #[arg(long, default_value_t = 1_000)]
    max_tag_records_per_namespace: usize,
    /// New tags one workload may have recorded at once; then one a minute
    /// (churning `freshen.dev/base-image` cannot grow the records).
    #[arg(long, default_value_t = 20)]
    tag_record_burst: u32,
    /// A TagRecord nothing has looked at for this long is deleted.
    #[arg(long, default_value = "24h", value_parser = duration_arg)]
    tag_record_retention: Duration,
    /// Finished Refresh objects kept per workload; older ones are deleted.
    #[arg(long, default_value_t = 10)]
    refresh_history: usize,
    /// Ended Rebuild objects kept per image and pipeline (at least 1);
    /// older ones, and their runs, are deleted.
    #[arg(long, default_value_t = 5)]
    rebuild_history: usize,
    /// The kinds of rebuild pipeline to run, comma-separated (job, tekton,
    /// webhook), or `none`. A Rebuild of another kind fails and says so;
    /// Jobs are watched only when `job` is listed. Match it to the rights
    /// granted (the Helm chart's `pipelines.*.enabled` does both).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "job,tekton,webhook",
        env = "FRESHEN_PIPELINE_KINDS",
        value_parser = parse_pipeline_kind
    )]
    pipeline_kinds: Vec<KindArg>,
    /// Kinds of workload to watch and measure, comma-separated: Deployment
    /// (required), StatefulSet, DaemonSet, CronJob, Job, ReplicaSet,
    /// Rollout (when Argo Rollouts is installed) and Pod (pods no other
    /// workload controls). Each kind left out is one watch fewer, and its
    /// containers go unmeasured.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Deployment,StatefulSet,DaemonSet,CronJob,Job,ReplicaSet,Rollout,Pod",
        env = "FRESHEN_WORKLOAD_KINDS",
        value_parser = parse_workload_kind
    )]
    workload_kinds: Vec<freshen_core::kind::Kind>,
    /// Prometheus server for canary metric checks, e.g. http://prometheus:9090.
    #[arg(long)]
    prometheus_url: Option<String>,
    #[command(flatten)]
    leader: LeaderArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    defaults: DefaultLimits,
    #[command(flatten)]
    notify: NotifyArgs,
}

/// Registry push notifications (off unless --notify-addr is given).
#[derive(Debug, clap::Args)]
struct NotifyArgs {
    /// Address to accept registry push notifications on (POST /notify),
    /// e.g. 0.0.0.0:8081. Needs a token or a signing secret.
    #[arg(long, env = "FRESHEN_NOTIFY_ADDR")]
    notify_addr: Option<SocketAddr>,
    /// File holding the bearer token notifications must present
    /// (`Authorization: Bearer <token>`).
    #[arg(long, value_name = "PATH")]
    notify_token_file: Option<std::path::PathBuf>,
    /// File holding a Standard Webhooks signing secret (`whsec_...`)
    /// notifications may be signed with instead.
    #[arg(long, value_name = "PATH")]
    notify_signing_secret_file: Option<std::path::PathBuf>,
    /// Pushes to one tag within this window count once, e.g. 500ms, 2s.
    #[arg(long, default_value = "500ms", value_parser = short_duration_arg)]
    notify_debounce: Duration,
}

impl NotifyArgs {
    fn config(&self) -> anyhow::Result<Option<freshen_controller::notify::NotifyConfig>> {
        let Some(addr) = self.notify_addr else {
            return Ok(None);
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let token = self
            .notify_token_file
            .as_deref()
            .map(read)
            .transpose()?
            .map(|t| String::from_utf8_lossy(&t).trim().to_owned());
        let signing_key = self
            .notify_signing_secret_file
            .as_deref()
            .map(read)
            .transpose()?
            .map(|s| freshen_controller::rebuild::webhook::signing_key(&s));
        if token.is_none() && signing_key.is_none() {
            anyhow::bail!(
                "--notify-addr needs --notify-token-file or --notify-signing-secret-file: \
                 notifications are accepted only from callers that prove who they are"
            );
        }
        Ok(Some(freshen_controller::notify::NotifyConfig {
            addr,
            token,
            signing_key,
            debounce: self.notify_debounce,
        }))
    }
}

/// Leader election among replicas.
#[derive(Debug, Clone, clap::Args)]
struct LeaderArgs {
    /// Take part in leader election (a coordination.k8s.io Lease), so that
    /// of several replicas one acts and the others stand by. `false` acts
    /// at once.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "FRESHEN_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else --namespace,
    /// else `default`).
    #[arg(long, value_name = "NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "freshen-leader", value_name = "NAME")]
    leader_elect_lease_name: String,
    /// A Lease its holder has not renewed for this long is taken over by a
    /// standby; the holder gives up after two thirds of it.
    #[arg(long, default_value = "15s", value_parser = duration_arg)]
    leader_elect_lease_duration: Duration,
}

impl LeaderArgs {
    fn config(
        &self,
        namespace: Option<&str>,
    ) -> Option<freshen_controller::runtime::leader::LeaderConfig> {
        if !self.leader_elect {
            return None;
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let lease_namespace = self
            .leader_elect_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .or_else(|| namespace.map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        // In a pod, its name; elsewhere the host plus this process, so that
        // two operators on one machine are two candidates.
        let identity = env("POD_NAME").unwrap_or_else(|| {
            let host = env("HOSTNAME")
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|| "freshen".to_owned());
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            format!("{host}-{}-{nanos:08x}", std::process::id())
        });
        Some(
            freshen_controller::runtime::leader::LeaderConfig::with_lease_duration(
                lease_namespace,
                self.leader_elect_lease_name.clone(),
                identity,
                self.leader_elect_lease_duration,
            ),
        )
    }
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Scan only this namespace (default: all namespaces).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Scan only workloads with these labels, e.g. `tier=web,team!=ops`.
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    selector: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Exit with status 1 when a container is past a limit (snoozed ones
    /// excepted), for CI.
    #[arg(long)]
    fail_on_violation: bool,
    /// freshen's namespace: where a ClusterRefreshPolicy's verification
    /// keys (secretRef, configMapRef) are read from.
    #[arg(long, value_name = "NAMESPACE", default_value = "freshen-system")]
    freshen_namespace: String,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    defaults: DefaultLimits,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// An aligned table with details below.
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// How registries are reached.
#[derive(Debug, Clone, clap::Args)]
struct RegistryArgs {
    /// A registry (host[:port]) to reach over plain HTTP instead of HTTPS.
    /// Repeat for several; no registry is plain HTTP unless listed.
    #[arg(long = "plain-http-registry", value_name = "HOST[:PORT]")]
    plain_http_registries: Vec<String>,
    /// Platform read from multi-arch images, as os/architecture[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: Platform,
    /// Timeout of one registry request.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    registry_timeout: Duration,
    /// Requests in flight to one registry at most.
    #[arg(long, default_value_t = freshen_registry::DEFAULT_MAX_CONCURRENT_PER_REGISTRY)]
    registry_concurrency: usize,
    /// Requests per second to one registry, sustained (a token bucket).
    #[arg(long, default_value_t = freshen_registry::BudgetConfig::default().rate)]
    registry_qps: f64,
    /// Requests that may go to one registry at once after a quiet spell.
    #[arg(long, default_value_t = freshen_registry::BudgetConfig::default().burst)]
    registry_burst: u32,
    /// Read a registry's images from a mirror instead, as SOURCE=MIRROR
    /// (hosts, e.g. docker.io=mirror.internal:5000). Repeat for several.
    #[arg(long = "registry-mirror", value_name = "SOURCE=MIRROR", value_parser = mirror_arg)]
    registry_mirrors: Vec<(String, String)>,
    /// A PEM file of CA certificates to trust for registries, in addition to
    /// the system's (a private registry's CA). Repeat for several.
    #[arg(long = "registry-ca-file", value_name = "PEM")]
    registry_ca_files: Vec<std::path::PathBuf>,
    /// A registry host freshen may always reach, even on a loopback or
    /// link-local address: a host, *.domain, an address or a range
    /// (10.0.0.0/8). Repeat for several; wins over --registry-deny.
    #[arg(long = "registry-allow", value_name = "PATTERN", value_parser = host_pattern_arg)]
    registry_allow: Vec<freshen_registry::HostPattern>,
    /// A registry host freshen never reaches, by name or by any address it
    /// resolves to (e.g. 10.0.0.0/8, *.svc.cluster.local, or * with
    /// --registry-allow for an allow-list). Loopback and link-local
    /// addresses are refused unless allowed.
    #[arg(long = "registry-deny", value_name = "PATTERN", value_parser = host_pattern_arg)]
    registry_deny: Vec<freshen_registry::HostPattern>,
}

fn host_pattern_arg(s: &str) -> Result<freshen_registry::HostPattern, String> {
    s.parse()
}

impl RegistryArgs {
    /// The registry client's settings; a tag is resolved at most once per
    /// `tag_ttl`, however many workloads follow it.
    fn config(&self, tag_ttl: Duration) -> anyhow::Result<RegistryConfig> {
        anyhow::ensure!(
            self.registry_qps > 0.0 && self.registry_qps.is_finite(),
            "--registry-qps must be a positive number of requests per second, got {}",
            self.registry_qps
        );
        anyhow::ensure!(
            self.registry_burst > 0,
            "--registry-burst must be at least 1"
        );
        let extra_root_certificates = self
            .registry_ca_files
            .iter()
            .map(|path| {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--registry-ca-file {}", path.display()))?;
                anyhow::ensure!(
                    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"),
                    "--registry-ca-file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    path.display()
                );
                Ok(pem)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(RegistryConfig {
            plain_http: self.plain_http_registries.clone(),
            platform: self.platform.clone(),
            timeout: Some(self.registry_timeout),
            max_concurrent_per_registry: self.registry_concurrency,
            extra_root_certificates,
            budget: freshen_registry::BudgetConfig {
                rate: self.registry_qps,
                burst: self.registry_burst,
                ..freshen_registry::BudgetConfig::default()
            },
            mirrors: self.registry_mirrors.iter().cloned().collect(),
            reach: freshen_registry::Reach {
                allow: self.registry_allow.clone(),
                deny: self.registry_deny.clone(),
            },
            ..RegistryConfig::with_tag_ttl(tag_ttl)
        })
    }
}

/// The last level of policy precedence, below workload annotations,
/// RefreshPolicies and ClusterRefreshPolicies.
#[derive(Debug, Clone, clap::Args)]
struct DefaultLimits {
    /// Image age limit for workloads no annotation or policy sets one for,
    /// e.g. 30d. None by default.
    #[arg(long, value_parser = duration_arg, env = "FRESHEN_DEFAULT_MAX_IMAGE_AGE")]
    default_max_image_age: Option<Duration>,
    /// Container age limit for workloads no annotation or policy sets one
    /// for, e.g. 7d. None by default.
    #[arg(long, value_parser = duration_arg, env = "FRESHEN_DEFAULT_MAX_CONTAINER_AGE")]
    default_max_container_age: Option<Duration>,
}

impl DefaultLimits {
    fn limits(&self) -> freshen_core::policy::Limits {
        freshen_core::policy::Limits {
            max_image_age: self.default_max_image_age,
            max_container_age: self.default_max_container_age,
            track_base_image: None,
            unknown_build_as_first_seen: None,
        }
    }
}

fn mirror_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((source, mirror))
            if !source.is_empty() && !mirror.is_empty() && !mirror.contains('/') =>
        {
            Ok((source.to_owned(), mirror.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not SOURCE=MIRROR with two registry hosts, e.g. docker.io=mirror.internal:5000"
        )),
    }
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    freshen_core::parse_duration(s).map_err(|e| e.to_string())
}

/// A duration that may be in milliseconds, e.g. `500ms`, or as
/// [`duration_arg`] reads it.
fn short_duration_arg(s: &str) -> Result<Duration, String> {
    match s.strip_suffix("ms") {
        Some(ms) => ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{s:?}: expected milliseconds like 500ms, or 1s")),
        None if s == "0" || s == "0s" => Ok(Duration::ZERO),
        None => duration_arg(s),
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Exit status of a scan that could not be made (1 means violations).
const EXIT_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The operator logs its work; one-shot commands say what matters in
    // their output and exit status, so only warnings (and no duplicate of
    // the client's connection errors) reach stderr.
    let default_filter = match cli.command {
        Command::Run(_) => "info,kube_runtime=warn,kube_client=warn",
        Command::Report(_) | Command::Crd(_) | Command::Reference(_) => "warn,kube_client=off",
    };
    init_tracing(cli.log_format, default_filter);
    // kube and the registry client share one TLS stack: rustls with ring.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let outcome = match cli.command {
        Command::Run(args) => run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Report(args) => report(*args).await,
        Command::Crd(args) => crd(&args).map(|()| ExitCode::SUCCESS),
        Command::Reference(args) => write_reference(&args).map(|()| ExitCode::SUCCESS),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {}", error_chain(&e));
        ExitCode::from(EXIT_ERROR)
    })
}

/// An error and its causes on one line, leaving out a cause whose text an
/// earlier one already contains (kube's config errors repeat themselves).
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A `--workload-kinds` entry, as the API spells the kind.
fn parse_workload_kind(text: &str) -> Result<freshen_core::kind::Kind, String> {
    use freshen_core::kind::Kind;
    let text = text.trim();
    Kind::parse(text).ok_or_else(|| {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "unknown workload kind {text:?}; expected one of {}",
            kinds.join(", ")
        )
    })
}

/// A `--pipeline-kinds` entry: a kind, or `none`.
#[derive(Debug, Clone, Copy)]
struct KindArg(Option<freshen_api::pipeline::PipelineKind>);

fn parse_pipeline_kind(text: &str) -> Result<KindArg, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(KindArg(None));
    }
    text.trim().parse().map(|k| KindArg(Some(k))).map_err(|_| {
        format!("unknown pipeline kind {text:?}: expected job, tekton, webhook or none")
    })
}

/// Why no client could be made.
const NO_CLUSTER: &str =
    "no Kubernetes cluster: set KUBECONFIG (or ~/.kube/config), or run inside a cluster";

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context(NO_CLUSTER)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Every request the operator sends is counted (freshen_api_requests_total).
    let api_requests = freshen_controller::runtime::api_requests::ApiRequests::new()?;
    let counted = api_requests
        .client(kube::Config::infer().await.context(NO_CLUSTER)?)
        .context("a Kubernetes client")?;
    // Rebuilds of ClusterRefreshPolicy pipelines that name no namespace
    // live with freshen.
    let rebuild_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "freshen-system".to_owned());
    let config = Config {
        git: freshen_controller::GitConfig {
            dir: args.git_dir.clone(),
            batch_window: args.git_batch_window,
        },
        metrics_addr: args.metrics_addr,
        metrics_auth: matches!(args.metrics_auth, MetricsAuthMode::Kubernetes),
        leader: args.leader.config(args.namespace.as_deref()),
        namespace: args.namespace,
        controller: ControllerConfig {
            poll_interval: args.poll_interval,
            error_requeue: args.retry_interval,
            defaults: args.defaults.limits(),
            max_concurrent_refreshes: args.max_concurrent_refreshes,
            max_concurrent_refreshes_per_namespace: args.max_concurrent_refreshes_per_namespace,
            max_analysis_time: args.max_analysis_time,
            tags: freshen_controller::workload::tags::TagSettings {
                limits: freshen_core::tag_budget::TagLimits {
                    total: args.max_tag_records,
                    per_namespace: args.max_tag_records_per_namespace,
                    burst: args.tag_record_burst,
                    refill: Duration::from_secs(60),
                },
                retention: args.tag_record_retention,
            },
            refresh_history: args.refresh_history,
            rebuild_history: args.rebuild_history,
            rebuild_namespace,
            pipeline_kinds: args.pipeline_kinds.iter().filter_map(|k| k.0).collect(),
            workload_kinds: args.workload_kinds,
            argocd_namespace: args.argocd_namespace,
        },
        registry: args.registry.config(args.poll_interval)?,
        prometheus_url: args.prometheus_url,
        notify: args.notify.config()?,
        api_requests: Some(api_requests.clone()),
    };
    freshen_controller::run(counted, config).await?;
    Ok(())
}

async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use freshen_controller::report;
    let client = client().await?;
    let registry = freshen_registry::RegistryClient::new(
        // One scan: a tag resolved once is resolved for the whole scan.
        args.registry.config(Duration::from_secs(3600))?,
        freshen_registry::RegistryMetrics::new()?,
    );
    let options = report::ReportOptions {
        namespace: args.namespace,
        selector: args.selector,
        defaults: args.defaults.limits(),
        freshen_namespace: args.freshen_namespace,
    };
    let report = report::build(client, &registry, &options).await?;
    let text = match args.output {
        Output::Table => report::render_table(&report),
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Yaml => serde_yaml::to_string(&report)?,
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if args.fail_on_violation && report.violating() > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn crd(args: &CrdArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for (file, crd) in freshen_api::crd::crds() {
        let yaml = if args.helm {
            freshen_api::crd::to_helm_template(&crd)?
        } else {
            freshen_api::crd::to_yaml(&crd)?
        };
        match &args.output_dir {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => write!(stdout, "---\n{yaml}")?,
        }
    }
    Ok(())
}

fn write_reference(args: &ReferenceArgs) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let mut stale = Vec::new();
    for page in reference::pages(&Cli::command())? {
        let path = args.output_dir.join(&page.file);
        if args.check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(diff) = reference::stale(&committed, &page.text) {
                eprint!(
                    "{} is stale (+ in the code, - in the page):\n{diff}",
                    path.display()
                );
                stale.push(page.file);
            }
            continue;
        }
        std::fs::write(&path, page.text).with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        stale.is_empty(),
        "{} stale reference page(s): run `make reference` and commit the result",
        stale.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// The committed reference pages.
    fn committed(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/src/reference")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_default()
    }

    #[test]
    fn the_guide_s_reference_pages_match_the_code() {
        let pages = reference::pages(&Cli::command()).unwrap_or_default();
        assert!(pages.len() >= 10);
        let mut problems = String::new();
        for page in pages {
            if let Some(diff) = reference::stale(&committed(&page.file), &page.text) {
                problems.push_str(&format!(
                    "docs/src/reference/{} is stale (+ in the code, - in the page):\n{diff}",
                    page.file
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{problems}run `make reference` and commit the result"
        );
    }

    #[test]
    fn a_flag_added_without_its_line_in_the_reference_fails() {
        let committed = committed("flags.md");
        assert!(committed.contains("| `--poll-interval` |"));
        // A new `run` flag, as a developer would add it: the page from the
        // code now has its line, the committed page does not.
        let with_new_flag = Cli::command().mut_subcommand("run", |run| {
            run.arg(
                clap::Arg::new("rebuild-parallelism")
                    .long("rebuild-parallelism")
                    .help("Rebuilds run at once."),
            )
        });
        let generated = reference::flags(&with_new_flag);
        let page = reference::pages(&with_new_flag)
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.file == "flags.md")
            .map(|p| p.text)
            .unwrap_or_default();
        assert!(page.ends_with(&generated));
        let diff = reference::stale(&committed, &page).unwrap_or_default();
        assert_eq!(
            diff,
            "+ | `--rebuild-parallelism` |  |  | Rebuilds run at once. |\n"
        );
        // And the other way round: a line for a flag the code no longer has.
        let with_gone_flag = format!("{committed}| `--gone` |  |  | Removed. |\n");
        let current = reference::pages(&Cli::command())
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.file == "flags.md")
            .map(|p| p.text)
            .unwrap_or_default();
        assert_eq!(
            reference::stale(&with_gone_flag, &current).as_deref(),
            Some("- | `--gone` |  |  | Removed. |\n")
        );
    }
}
