//! The freshen binary.
//!
//! `freshen run` runs the operator: it measures the image age and container
//! age of every Deployment annotated `freshen.dev/refresh: enabled` and
//! exports them on `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use freshen_controller::{Config, ControllerConfig};
use freshen_registry::{Platform, RegistryConfig};
use tracing_subscriber::EnvFilter;

/// Keeps running containers fresh: measures image and container age,
/// exports them to Prometheus, and (soon) refreshes what is too old.
#[derive(Debug, Parser)]
#[command(name = "freshen", version, about, propagate_version = true)]
struct Cli {
    /// Log format.
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
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "0.0.0.0:8080", env = "FRESHEN_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "FRESHEN_NAMESPACE")]
    namespace: Option<String>,
    /// How often an unchanged workload is measured again, e.g. 5m, 1h.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    poll_interval: Duration,
    /// How long after a failed measurement (e.g. registry unreachable) it is retried.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    retry_interval: Duration,
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
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    freshen_core::parse_duration(s).map_err(|e| e.to_string())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // kube and the registry client share one TLS stack: rustls with ring.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(
        "no Kubernetes cluster: set KUBECONFIG (or ~/.kube/config), or run inside a cluster",
    )?;
    let config = Config {
        metrics_addr: args.metrics_addr,
        namespace: args.namespace,
        controller: ControllerConfig {
            poll_interval: args.poll_interval,
            error_requeue: args.retry_interval,
        },
        registry: RegistryConfig {
            plain_http: args.plain_http_registries,
            platform: args.platform,
            timeout: Some(args.registry_timeout),
            // A tag is resolved once per poll interval, however many
            // workloads follow it.
            tag_ttl: args.poll_interval,
            max_concurrent_per_registry: args.registry_concurrency,
            ..RegistryConfig::with_tag_ttl(args.poll_interval)
        },
    };
    freshen_controller::run(client, config).await?;
    Ok(())
}
