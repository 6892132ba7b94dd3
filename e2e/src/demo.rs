//! `make demo`: the story that makes freshen worth installing, told on the
//! harness in a couple of minutes, each step narrated with what a user
//! would look at (`kubectl get refreshes`, the Events, `freshen report`).
//!
//! 1. A policy flags a stale image; `freshen report` shows why.
//! 2. A new digest is pushed and goes through a canary to Succeeded.
//! 3. A bad digest crash-loops in its canary, is rolled back and rejected.
//! 4. A base image moves: the policy's pipeline rebuilds the image, and the
//!    dependant moves to the rebuilt digest through a canary.
//!
//! Then every dashboard panel is evaluated against the harness' Prometheus.

// The demo's output is its purpose.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::Context as _;
use chrono::{TimeDelta, Utc};
use freshen_api::Refresh;
use freshen_api::pipeline::Rebuild;
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::Phase;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::image::{ImageSpec, Pushed, push};
use crate::operator::{Operator, report};
use crate::prometheus::{dashboard_queries, query};
use crate::{Harness, deployment_with, wait_for, wait_ready_pods};

/// The demo's namespace.
pub const NAMESPACE: &str = "freshen-demo";
/// How long any one step may take before the demo gives up and says so.
const STEP: Duration = Duration::from_secs(90);

/// The demo's images, pushed fresh on every run.
struct Images {
    base: Pushed,
    checkout: Pushed,
    search: Pushed,
    catalog: Pushed,
    payments: Pushed,
    payments_bad: ImageSpec,
    payments_bad_digest: String,
    legacy: Pushed,
}

/// A distinct image built `days` ago, optionally on `base`.
fn built(days: i64, content: &str, base: Option<&Pushed>) -> ImageSpec {
    ImageSpec {
        content: content.to_owned(),
        base: base.map(|b| (b.tagged.clone(), b.digest.clone())),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::days(days))
    }
}

fn heading(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Runs the demo; with `keep_running`, leaves the operator up until Ctrl-C.
pub async fn run(harness: &Harness, keep_running: bool) -> anyhow::Result<()> {
    let client = harness.client().await?;
    let started = Utc::now();
    fresh_namespace(harness, &client).await?;
    let run = Utc::now().format("%H%M%S").to_string();
    let images = push_images(harness, &run).await?;
    deploy(harness, &client, &images).await?;

    println!("\nStarting freshen (log: target/e2e-logs/) with the chart's identity ...");
    let operator = Operator::start(
        harness,
        &["--poll-interval", "3s", "--namespace", NAMESPACE],
    )
    .await?;

    heading("1. A policy flags a stale image");
    stale_image(harness, &client).await?;
    heading("2. A new digest goes through a canary to Succeeded");
    new_digest(harness, &client, &run).await?;
    heading("3. A bad digest crash-loops in its canary and is rolled back");
    bad_digest(harness, &client, &images).await?;
    heading("4. A moved base triggers a rebuild, and the dependant moves to it");
    moved_base(harness, &client, &images, &run).await?;
    heading("What an SRE sees");
    dashboard(harness).await?;
    // `make plots` draws this run's window, not whatever ran before it.
    let window = crate::repo_root().join("target/demo-window");
    std::fs::write(
        &window,
        format!("{} {}\n", started.timestamp(), Utc::now().timestamp()),
    )?;

    println!(
        "\nPrometheus: {}/graph?g0.expr=freshen_image_age_seconds",
        harness.prometheus_url
    );
    println!("The operator's metrics: curl {}/metrics", operator.url);
    println!("The dashboard's panels as PNG plots: make plots (writes docs/src/plots/)");
    println!(
        "Look around: kubectl --kubeconfig .e2e/kubeconfig -n {NAMESPACE} get refreshes,rebuilds,deployments"
    );
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

/// Deletes the namespace of an earlier run (its Refreshes released, as an
/// admin would after uninstalling) and creates it again with the policy.
async fn fresh_namespace(harness: &Harness, client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NAMESPACE).await?.is_some() {
        println!("Removing the namespace of an earlier demo run ...");
        let refreshes: Api<Refresh> = Api::namespaced(client.clone(), NAMESPACE);
        for r in refreshes.list(&ListParams::default()).await? {
            let clear = serde_json::json!({"metadata": {"finalizers": null}});
            refreshes
                .patch(
                    &r.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&clear),
                )
                .await?;
        }
        namespaces
            .delete(NAMESPACE, &DeleteParams::default())
            .await?;
        wait_for(
            "the old demo namespace to be gone",
            Duration::from_secs(120),
            Duration::from_millis(250),
            || async { Ok(namespaces.get_opt(NAMESPACE).await?.is_none().then_some(())) },
        )
        .await?;
    }
    let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    let policy = crate::repo_root().join("e2e/demo/shop-policy.yaml");
    for (args, stdin) in [
        (vec!["apply", "-f", "-"], Some(namespace.as_bytes())),
        (
            vec!["apply", "-f", policy.to_str().unwrap_or_default()],
            None,
        ),
    ] {
        let out = harness.kubectl(&args, stdin)?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("Namespace {NAMESPACE} with RefreshPolicy shop (e2e/demo/shop-policy.yaml):");
    println!("  maxImageAge 30d, followTag, canary 50% with 2 checks, rebuild Job on BaseMoved");
    Ok(())
}

async fn push_images(harness: &Harness, run: &str) -> anyhow::Result<Images> {
    let registry = &harness.registry;
    let base = push(
        registry,
        "demo/base",
        "12",
        &built(60, &format!("base {run}"), None),
    )
    .await?;
    let checkout = push(
        registry,
        "demo/checkout",
        "stable",
        &built(45, &format!("checkout {run}"), Some(&base)),
    )
    .await?;
    let search = push(
        registry,
        "demo/search",
        "stable",
        &built(20, &format!("search {run}"), Some(&base)),
    )
    .await?;
    let catalog = push(
        registry,
        "demo/catalog",
        "stable",
        &built(2, &format!("catalog {run}"), None),
    )
    .await?;
    let payments = push(
        registry,
        "demo/payments",
        "stable",
        &built(5, &format!("payments {run}"), None),
    )
    .await?;
    // The bad build is known before it is released, so that kwok can be
    // told that its digest crash-loops.
    let payments_bad = built(0, &format!("payments {run} with a bug"), None);
    let staged = push(registry, "demo/payments", "candidate", &payments_bad).await?;
    let legacy = push(
        registry,
        "demo/legacy",
        "v1",
        &built(400, &format!("legacy {run}"), None),
    )
    .await?;
    println!(
        "Pushed to {registry}: demo/base:12 (60 days old), demo/checkout:stable (45 days, on that base),"
    );
    println!(
        "  demo/catalog:stable (2 days), demo/payments:stable (5 days), demo/legacy:v1 (400 days)"
    );
    Ok(Images {
        base,
        checkout,
        search,
        catalog,
        payments,
        payments_bad,
        payments_bad_digest: staged.digest,
        legacy,
    })
}

async fn deploy(harness: &Harness, client: &Client, images: &Images) -> anyhow::Result<()> {
    let apply = PatchParams::apply("freshen-demo").force();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let workloads = [
        ("checkout", &images.checkout, "shop", None),
        ("search", &images.search, "shop", None),
        ("catalog", &images.catalog, "shop", None),
        (
            "payments",
            &images.payments,
            "shop",
            Some(images.payments_bad_digest.as_str()),
        ),
        ("legacy", &images.legacy, "none", None),
    ];
    for (name, image, tier, crashes_on) in workloads {
        let mut template_annotations = serde_json::Map::new();
        if let Some(digest) = crashes_on {
            template_annotations.insert("e2e.freshen.dev/crash-on".into(), digest.into());
        }
        let mut d = deployment_with(
            name,
            &image.pinned(),
            2,
            serde_json::json!({
                "metadata": {"labels": {"tier": tier}},
                "spec": {"template": {"metadata": {"annotations": template_annotations}}},
            }),
        )?;
        d.metadata.namespace = Some(NAMESPACE.into());
        deployments.patch(name, &apply, &Patch::Apply(&d)).await?;
    }
    for (name, ..) in workloads {
        wait_ready_pods(client, NAMESPACE, name, 2, STEP).await?;
    }
    println!(
        "Deployed checkout, catalog, payments (tier=shop, 2 replicas each) and legacy (not governed)"
    );
    let _ = harness;
    Ok(())
}

/// Act 1: the ages in Prometheus, `freshen report`, the Warning.
async fn stale_image(harness: &Harness, client: &Client) -> anyhow::Result<()> {
    let ages = wait_for(
        "Prometheus to have the demo's image ages",
        STEP,
        harness.scrape_interval,
        || async {
            let samples = query(
                &harness.prometheus_url,
                &format!(r#"freshen_image_age_seconds{{namespace="{NAMESPACE}"}}"#),
            )
            .await?;
            Ok((samples.len() >= 4).then_some(samples))
        },
    )
    .await?;
    println!(
        "Prometheus has freshen_image_age_seconds for {} containers (legacy is not governed, so not measured).",
        ages.len()
    );
    let out = report(harness, &["-n", NAMESPACE])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("\n$ freshen report -n {NAMESPACE}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let note = crate::await_event(
        client,
        NAMESPACE,
        ("Deployment", "checkout"),
        "MaxAgeExceeded",
        "",
    )
    .await?
    .note
    .unwrap_or_default();
    println!("\nEvent on deployment/checkout: Warning MaxAgeExceeded: {note}");
    Ok(())
}

/// Waits until the newest Refresh of `workload` satisfies `done`, printing
/// `kubectl get refreshes` each time its phase changes.
async fn follow_refresh(
    harness: &Harness,
    client: &Client,
    workload: &str,
    what: &str,
    done: impl Fn(&Refresh) -> bool,
) -> anyhow::Result<Refresh> {
    let refreshes: Api<Refresh> = Api::namespaced(client.clone(), NAMESPACE);
    let seen = std::sync::Mutex::new(None::<(String, Phase)>);
    let done = &done;
    let found = wait_for(what, STEP, Duration::from_millis(200), || {
        let refreshes = refreshes.clone();
        let seen = &seen;
        async move {
            let mut mine: Vec<Refresh> = refreshes
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|r| r.spec.workload == workload)
                .collect();
            mine.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
            let Some(latest) = mine.pop() else {
                return Ok(None);
            };
            let now = (latest.name_any(), latest.progress().phase);
            let changed = seen
                .lock()
                .map(|mut s| s.replace(now.clone()) != Some(now))
                .unwrap_or(false);
            if changed {
                get_refreshes(harness, &latest.name_any())?;
            }
            Ok(done(&latest).then_some(latest))
        }
    })
    .await?;
    Ok(found)
}

/// Prints `kubectl get refresh NAME` as the user would see it.
fn get_refreshes(harness: &Harness, name: &str) -> anyhow::Result<()> {
    let out = harness.kubectl(&["-n", NAMESPACE, "get", "refresh", name], None)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    if let (Some(header), Some(row)) = (lines.next(), lines.next()) {
        println!("  $ kubectl get refresh {name}\n    {header}\n    {row}");
    }
    Ok(())
}

/// Prints the Events on object `name`, oldest first.
async fn events_of(client: &Client, kind: &str, name: &str) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let mut mine: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect();
    mine.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    println!("  Events on {kind} {name}:");
    for e in mine {
        println!(
            "    {:<8} {:<18} {}",
            e.type_.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.note.unwrap_or_default()
        );
    }
    Ok(())
}

/// Act 2: a new catalog digest, canary, Succeeded.
async fn new_digest(harness: &Harness, client: &Client, run: &str) -> anyhow::Result<()> {
    let v2 = push(
        &harness.registry,
        "demo/catalog",
        "stable",
        &built(0, &format!("catalog {run} v2"), None),
    )
    .await?;
    println!(
        "Pushed a new demo/catalog:stable ({}); freshen sees the tag move on its next poll.",
        short(&v2.digest)
    );
    let done = follow_refresh(
        harness,
        client,
        "catalog",
        "catalog's Refresh to succeed",
        |r| r.progress().phase == Phase::Succeeded,
    )
    .await?;
    events_of(client, "Refresh", &done.name_any()).await?;
    Ok(())
}

/// Act 3: the bad payments digest, rolled back and rejected.
async fn bad_digest(harness: &Harness, client: &Client, images: &Images) -> anyhow::Result<()> {
    let bad = push(
        &harness.registry,
        "demo/payments",
        "stable",
        &images.payments_bad,
    )
    .await?;
    println!(
        "Released a buggy demo/payments:stable ({}): its pods crash-loop.",
        short(&bad.digest)
    );
    let done = follow_refresh(
        harness,
        client,
        "payments",
        "payments' Refresh to roll back",
        |r| r.progress().phase == Phase::RolledBack,
    )
    .await?;
    events_of(client, "Refresh", &done.name_any()).await?;
    let deploy = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("payments")
        .await?;
    println!(
        "  deployment/payments still runs {} and carries freshen.dev/rejected-digests: {}",
        short(&images.payments.digest),
        deploy
            .annotations()
            .get(freshen_api::refresh::REJECTED_DIGESTS)
            .map_or("-", String::as_str)
    );
    println!(
        "  freshen will not propose that digest for payments again; a newer push will be tried."
    );
    Ok(())
}

/// Act 4: the base moves; one Rebuild, its Job, the rebuilt image, the
/// dependant's canary.
async fn moved_base(
    harness: &Harness,
    client: &Client,
    images: &Images,
    run: &str,
) -> anyhow::Result<()> {
    let base_v2 = push(
        &harness.registry,
        "demo/base",
        "12",
        &built(0, &format!("base {run} patched"), None),
    )
    .await?;
    println!(
        "The upstream base demo/base:12 is patched ({} -> {}).",
        short(&images.base.digest),
        short(&base_v2.digest)
    );
    let rebuilds: Api<Rebuild> = Api::namespaced(client.clone(), NAMESPACE);
    // One Rebuild per image built on the old base (checkout and search),
    // each running its Job.
    let rebuild = wait_for(
        "a running Rebuild of each image on the old base",
        STEP,
        Duration::from_millis(200),
        || async {
            let all = rebuilds.list(&ListParams::default()).await?.items;
            let running = |image: &str| {
                all.iter()
                    .find(|r| r.spec.image == image && r.progress().attempts >= 1)
                    .cloned()
            };
            Ok(running(&images.search.tagged).and(running(&images.checkout.tagged)))
        },
    )
    .await?;
    let out = harness.kubectl(&["-n", NAMESPACE, "get", "rebuilds"], None)?;
    println!("  $ kubectl get rebuilds");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    println!(
        "  The Job {}-1 runs the policy's build pipeline; the demo plays the build system and pushes",
        rebuild.name_any()
    );
    let rebuilt = push(
        &harness.registry,
        "demo/checkout",
        "stable",
        &built(0, &format!("checkout {run} rebuilt"), Some(&base_v2)),
    )
    .await?;
    println!(
        "  demo/checkout:stable rebuilt on the new base ({}).",
        short(&rebuilt.digest)
    );
    wait_for(
        "the Rebuild to succeed",
        STEP,
        Duration::from_millis(200),
        || async {
            let r = rebuilds.get(&rebuild.name_any()).await?;
            Ok((r.progress().phase == RebuildPhase::Succeeded).then_some(()))
        },
    )
    .await?;
    events_of(client, "Rebuild", &rebuild.name_any()).await?;
    let done = follow_refresh(
        harness,
        client,
        "checkout",
        "checkout's Refresh to the rebuilt digest",
        |r| r.spec.digest == rebuilt.digest && r.progress().phase == Phase::Succeeded,
    )
    .await?;
    events_of(client, "Refresh", &done.name_any()).await?;
    println!(
        "  search's image was built on the old base too: its Rebuild waits for CI, and its base shows stale."
    );
    Ok(())
}

/// Every dashboard panel's expression against Prometheus: which have data.
async fn dashboard(harness: &Harness) -> anyhow::Result<()> {
    // The outcomes (two Succeeded, one RolledBack) must have been scraped.
    wait_for(
        "Prometheus to have scraped the three refresh outcomes",
        STEP,
        harness.scrape_interval,
        || async {
            let total = query(&harness.prometheus_url, "sum(freshen_refreshes_total)").await?;
            Ok(total.first().is_some_and(|s| s.value >= 3.0).then_some(()))
        },
    )
    .await?;
    let queries = dashboard_queries()?;
    let mut with_data = 0;
    println!(
        "The Grafana dashboard's panels (charts/freshen/files/dashboard.json), evaluated now:"
    );
    for (title, expr) in &queries {
        let samples = query(&harness.prometheus_url, expr)
            .await
            .with_context(|| format!("{title}: {expr}"))?;
        if !samples.is_empty() {
            with_data += 1;
        }
        let value = samples
            .iter()
            .map(|s| s.value)
            .fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  {:<48} {:>3} series{}",
            title,
            samples.len(),
            if samples.is_empty() {
                String::new()
            } else {
                format!(", max {value:.3}")
            }
        );
    }
    println!(
        "{with_data} of {} panel queries return data.",
        queries.len()
    );
    Ok(())
}

/// The first 12 hex digits of a digest.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}
