//! Tools around the e2e harness: `demo` (what `make demo` runs), `image`
//! (freshen's own image, `make image`), the benchmarks, and `push-image`
//! (push a small real OCI image with a chosen build time).

// This binary is a command-line tool whose output is its purpose.
#![allow(clippy::print_stdout)]

use chrono::{TimeDelta, Utc};
use clap::{Parser, Subcommand};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::{Harness, init_tls};

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
    /// The story of freshen on the harness: a stale image flagged, a canary
    /// promoted, a bad digest rolled back, a moved base rebuilt.
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
        /// Sign every image with cosign and verify the running digests
        /// (a RefreshPolicy with `spec.verify`).
        #[arg(long)]
        verify: bool,
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
    /// Assemble freshen's own OCI image (a static base and the static
    /// release binary) and push it to the harness registry (`make image`).
    Image {
        /// The statically linked freshen binary.
        #[arg(long, default_value = freshen_e2e::ship::STATIC_BINARY)]
        binary: std::path::PathBuf,
        /// Repository prefix: pushes <prefix>/static-base and <prefix>/freshen.
        #[arg(long, default_value = "freshen-dev")]
        repository: String,
    },
    /// First complete assessment, RSS and idle CPU of a cluster-wide
    /// operator at growing numbers of Deployments (`make bench-scale`).
    BenchScale {
        /// Numbers of opted-in Deployments, comma-separated, ascending.
        #[arg(long, default_value = "1000,2500,5000,10000", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Deployments that did not opt in, beside them.
        #[arg(long, default_value_t = 2000)]
        ignored: usize,
        /// Distinct images.
        #[arg(long, default_value_t = 10)]
        images: usize,
        /// The operator's poll interval.
        #[arg(long, default_value = "2m")]
        poll_interval: String,
        /// Another freshen binary to measure at each size too (a baseline).
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
        /// A mixed fleet of every kind instead of Deployments only.
        #[arg(long)]
        mixed: bool,
    },
    /// freshen beside the tools a user would run instead: image age
    /// (crane script), container age (descheduler PodLifeTime), rollback
    /// (Argo Rollouts, Flagger) (`make bench-peers`).
    BenchPeers {
        /// Numbers of opted-in Deployments, comma-separated, ascending.
        #[arg(long, default_value = "1000,2500,5000,10000", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Deployments that did not opt in, beside them.
        #[arg(long, default_value_t = 2000)]
        ignored: usize,
        /// Distinct images.
        #[arg(long, default_value_t = 10)]
        images: usize,
        /// Rollback runs per tool.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// freshen's poll interval while a warm interval is measured.
        #[arg(long, default_value = "60s")]
        poll_interval: String,
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
        Command::Demo { keep_running } => freshen_e2e::demo::run(&harness, keep_running).await,
        Command::BenchRegistry {
            workloads,
            images,
            intervals,
            poll_interval,
            verify,
        } => {
            let config = freshen_e2e::bench::BenchConfig {
                workloads,
                images,
                intervals,
                poll_interval: freshen_core::parse_duration(&poll_interval)?,
                verify,
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
        Command::BenchScale {
            sizes,
            ignored,
            images,
            poll_interval,
            baseline,
            mixed,
        } => {
            let config = freshen_e2e::bench_scale::ScaleConfig {
                sizes,
                ignored,
                images,
                poll_interval: freshen_core::parse_duration(&poll_interval)?,
                baseline,
                mixed,
            };
            let rows = freshen_e2e::bench_scale::run(&harness, &config).await?;
            println!("{}", freshen_e2e::bench_scale::HEADER);
            for row in &rows {
                println!("{}", freshen_e2e::bench_scale::row_line(row));
            }
            let path = freshen_e2e::bench_scale::write_results(&config, &rows)?;
            println!("written to {}", path.display());
            Ok(())
        }
        Command::BenchPeers {
            sizes,
            ignored,
            images,
            runs,
            poll_interval,
        } => {
            let config = freshen_e2e::bench_peers::PeersConfig {
                sizes,
                ignored,
                images,
                runs,
                poll_interval: freshen_core::parse_duration(&poll_interval)?,
            };
            let report = freshen_e2e::bench_peers::run(&harness, &config).await?;
            println!("{}", freshen_e2e::bench_peers::AGE_HEADER);
            for row in &report.ages {
                println!("{}", freshen_e2e::bench_peers::age_line(row));
            }
            println!("{}", freshen_e2e::bench_peers::ROLLBACK_HEADER);
            for row in &report.rollbacks {
                println!("{}", freshen_e2e::bench_peers::rollback_line(row));
            }
            for skipped in &report.skipped {
                println!("not measured: {skipped}");
            }
            let path = freshen_e2e::bench_peers::write_results(&config, &report)?;
            println!("written to {}", path.display());
            Ok(())
        }
        Command::Image { binary, repository } => {
            let recipe = freshen_e2e::ship::Recipe::at_head(binary)?;
            let shipped = freshen_e2e::ship::ship(&harness.registry, &repository, &recipe).await?;
            println!("base   {}", shipped.base.pinned());
            println!("image  {}", shipped.image.pinned());
            println!(
                "created {} (the commit time: the same commit gives the same digest)",
                recipe.created.to_rfc3339()
            );
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
