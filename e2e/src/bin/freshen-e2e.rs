//! Tools around the e2e harness: `demo` (what `make demo` runs) and
//! `push-image` (push a small real OCI image with a chosen build time).

// This binary is a command-line tool whose output is its purpose.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{TimeDelta, Utc};
use clap::{Parser, Subcommand};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::prometheus::query;
use freshen_e2e::{Harness, deployment, init_tls, wait_for, wait_ready_pods};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};

const DEMO_NAMESPACE: &str = "freshen-demo";

#[derive(Parser)]
#[command(
    name = "freshen-e2e",
    about = "Tools around freshen's e2e harness (run `make e2e-up` first)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy sample workloads, run the operator, print the ages it measured.
    Demo {
        /// Keep the operator running (Prometheus keeps scraping) until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Measure registry requests for W Deployments over U images
    /// (`make bench-registry`).
    BenchRegistry {
        /// Deployments (W), one replica each.
        #[arg(long, default_value_t = 500)]
        workloads: usize,
        /// Distinct images (U).
        #[arg(long, default_value_t = 5)]
        images: usize,
        /// Warm poll intervals to measure.
        #[arg(long, default_value_t = 3)]
        intervals: usize,
        /// The operator's poll interval, e.g. 10s.
        #[arg(long, default_value = "10s")]
        poll_interval: String,
    },
    /// Time digest pushed -> Refresh created and crash-looping canary ->
    /// rollback started over N runs (`make bench-refresh`).
    BenchRefresh {
        /// Runs (one workload each).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The operator's poll interval, e.g. 5s.
        #[arg(long, default_value = "5s")]
        poll_interval: String,
    },
    /// Time base pushed -> pipeline triggered -> rebuilt digest seen ->
    /// every dependant Succeeded, for N dependants (`make bench-velocity`).
    BenchVelocity {
        /// Runs (base moves) per number of dependants.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Numbers of dependants, comma-separated.
        #[arg(long, default_value = "1,10,50", value_delimiter = ',')]
        dependants: Vec<usize>,
    },
    /// Build a small OCI image and push it to the harness registry.
    PushImage {
        /// Repository, e.g. `demo/app`.
        repository: String,
        /// Tag, e.g. `v1`.
        tag: String,
        /// How long ago it was built, e.g. `10d`.
        #[arg(long, default_value = "1d")]
        age: String,
        /// Base image name for the base annotations, with --base-digest.
        #[arg(long, requires = "base_digest")]
        base_name: Option<String>,
        /// Base image digest for the base annotations, with --base-name.
        #[arg(long, requires = "base_name")]
        base_digest: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tls();
    let cli = Cli::parse();
    let harness = Harness::load()?;
    match cli.command {
        Command::Demo { keep_running } => demo(&harness, keep_running).await,
        Command::BenchRegistry {
            workloads,
            images,
            intervals,
            poll_interval,
        } => {
            let config = freshen_e2e::bench::BenchConfig {
                workloads,
                images,
                intervals,
                poll_interval: freshen_core::parse_duration(&poll_interval)?,
            };
            let report = freshen_e2e::bench::run(&harness, config).await?;
            println!("{report}");
            Ok(())
        }
        Command::BenchRefresh {
            runs,
            poll_interval,
        } => {
            let poll = freshen_core::parse_duration(&poll_interval)?;
            let report = freshen_e2e::bench_refresh::run(&harness, runs, poll).await?;
            println!("{report}");
            Ok(())
        }
        Command::BenchVelocity { runs, dependants } => {
            let mut rows = Vec::new();
            for n in dependants {
                rows.push(freshen_e2e::bench_velocity::run(&harness, runs, n).await?);
            }
            println!("{}", freshen_e2e::bench_velocity::HEADER);
            for row in rows {
                println!("{row}");
            }
            Ok(())
        }
        Command::PushImage {
            repository,
            tag,
            age,
            base_name,
            base_digest,
        } => {
            let age = freshen_core::parse_duration(&age)?;
            let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::from_std(age)?);
            spec.base = base_name.zip(base_digest);
            let pushed = push(&harness.registry, &repository, &tag, &spec).await?;
            println!("{}", pushed.pinned());
            Ok(())
        }
    }
}

struct Sample {
    name: &'static str,
    repository: &'static str,
    age_days: i64,
    replicas: i32,
    opted_in: bool,
}

const SAMPLES: [Sample; 3] = [
    Sample {
        name: "checkout",
        repository: "demo/checkout",
        age_days: 45,
        replicas: 3,
        opted_in: true,
    },
    Sample {
        name: "catalog",
        repository: "demo/catalog",
        age_days: 2,
        replicas: 2,
        opted_in: true,
    },
    Sample {
        name: "legacy",
        repository: "demo/legacy",
        age_days: 400,
        replicas: 1,
        opted_in: false,
    },
];

async fn demo(harness: &Harness, keep_running: bool) -> anyhow::Result<()> {
    let client = harness.client().await?;
    let apply = PatchParams::apply("freshen-demo").force();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": DEMO_NAMESPACE }
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(DEMO_NAMESPACE, &apply, &Patch::Apply(&namespace))
        .await
        .context("creating the demo namespace")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), DEMO_NAMESPACE);

    println!(
        "Pushing sample images to {} and deploying them to namespace {DEMO_NAMESPACE}:",
        harness.registry
    );
    for s in &SAMPLES {
        let spec = ImageSpec::built_at(Utc::now() - TimeDelta::days(s.age_days));
        let image = push(&harness.registry, s.repository, "v1", &spec).await?;
        let annotations: &[(&str, &str)] = if s.opted_in {
            &[("freshen.dev/refresh", "enabled")]
        } else {
            &[]
        };
        let mut deploy = deployment(s.name, &image.pinned(), s.replicas, annotations)?;
        deploy.metadata.namespace = Some(DEMO_NAMESPACE.into());
        deployments
            .patch(s.name, &apply, &Patch::Apply(&deploy))
            .await?;
        println!(
            "  {:<9} {} replica(s), image built {:>3} days ago, {}",
            s.name,
            s.replicas,
            s.age_days,
            if s.opted_in {
                "freshen.dev/refresh=enabled"
            } else {
                "not opted in"
            }
        );
    }
    for s in &SAMPLES {
        wait_ready_pods(
            &client,
            DEMO_NAMESPACE,
            s.name,
            s.replicas as usize,
            Duration::from_secs(120),
        )
        .await?;
    }

    println!("\nStarting the operator (log: target/e2e-logs/) ...");
    let operator = Operator::start(harness, &["--poll-interval", "1m"]).await?;
    println!(
        "Waiting for Prometheus ({}) to scrape it ...\n",
        harness.prometheus_url
    );
    let opted_in = SAMPLES.iter().filter(|s| s.opted_in).count();
    let image_ages = wait_for(
        "Prometheus to have the demo's image ages",
        Duration::from_secs(90),
        harness.scrape_interval,
        || async {
            let samples = query(
                &harness.prometheus_url,
                &format!(r#"freshen_image_age_seconds{{namespace="{DEMO_NAMESPACE}"}}"#),
            )
            .await?;
            Ok((samples.len() >= opted_in).then_some(samples))
        },
    )
    .await?;
    let container_ages = query(
        &harness.prometheus_url,
        &format!(r#"freshen_container_age_seconds{{namespace="{DEMO_NAMESPACE}"}}"#),
    )
    .await?;
    let container_age: BTreeMap<String, f64> = container_ages
        .iter()
        .filter_map(|s| Some((s.labels.get("workload")?.clone(), s.value)))
        .collect();

    println!(
        "{:<10} {:<10} {:<36} {:>10} {:>14}",
        "WORKLOAD", "CONTAINER", "IMAGE", "IMAGE AGE", "CONTAINER AGE"
    );
    let mut rows = image_ages;
    rows.sort_by(|a, b| b.value.total_cmp(&a.value));
    for s in &rows {
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let workload = label("workload");
        let running = container_age.get(&workload).map_or_else(
            || "-".to_owned(),
            |v| freshen_core::short_age(Duration::from_secs_f64(*v)),
        );
        println!(
            "{:<10} {:<10} {:<36} {:>10} {:>14}",
            workload,
            label("container"),
            label("image"),
            freshen_core::short_age(Duration::from_secs_f64(s.value)),
            running
        );
    }
    let legacy_seen = rows
        .iter()
        .any(|s| s.labels.get("workload").is_some_and(|w| w == "legacy"));
    println!(
        "\n`legacy` runs a 400-day-old image but did not opt in, so it is {}.",
        if legacy_seen {
            "UNEXPECTEDLY measured"
        } else {
            "not measured"
        }
    );
    println!(
        "Query them yourself: {}/graph?g0.expr=freshen_image_age_seconds",
        harness.prometheus_url
    );
    println!("Or the operator directly: curl {}/metrics", operator.url);
    if keep_running {
        println!(
            "\nThe operator keeps running; Ctrl-C stops it. `make e2e-down` stops the harness."
        );
        tokio::signal::ctrl_c().await?;
    } else {
        println!(
            "\nThe operator stops now; `make demo ARGS=--keep-running` keeps it up. `make e2e-down` stops the harness."
        );
    }
    drop(operator);
    Ok(())
}
