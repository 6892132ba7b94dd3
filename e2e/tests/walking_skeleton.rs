//! The walking skeleton, end to end on real parts: an image pushed to a real
//! registry, Deployments running it on a real control plane, the real operator
//! binary measuring them, and a real Prometheus scraping the result.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::prometheus::{Sample, await_value, query};
use freshen_e2e::{Harness, TestNamespace, init_tls, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::DeleteParams;

#[tokio::test]
async fn image_and_container_age_reach_prometheus() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "skeleton").await?;

    // An image whose config says it was built 10 days ago.
    let built = Utc::now() - TimeDelta::days(10);
    let repository = format!("e2e/{}/app", ns.name);
    let image = push(
        &harness.registry,
        &repository,
        "v1",
        &ImageSpec::built_at(built),
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    ns.deploy_ready(
        &client,
        "measured",
        &image.pinned(),
        2,
        &[("freshen.dev/refresh", "enabled")],
    )
    .await?;
    ns.deploy_ready(&client, "ignored", &image.pinned(), 1, &[])
        .await?;

    // A short poll interval: a moved tag is noticed by polling (no watch
    // event exists for a registry push).
    let operator = Operator::start(&harness, &["--poll-interval", "3s"]).await?;

    // Prometheus scrapes the operator; wait for the image age to arrive there.
    let image_age = format!(
        r#"freshen_image_age_seconds{{namespace="{}",workload="measured"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &image_age).await?;
    assert_eq!(samples.len(), 1, "one container, one series: {samples:?}");
    let sample = &samples[0];
    let expected = (Utc::now() - built).num_seconds() as f64;
    assert!(
        (sample.value - expected).abs() < 60.0,
        "image age {}s should be 10 days ({expected}s) within a minute",
        sample.value
    );
    assert_eq!(
        sample.labels.get("container").map(String::as_str),
        Some("app")
    );
    assert_eq!(
        sample.labels.get("image"),
        Some(&format!("{}/{repository}", harness.registry)),
        "the image label is the repository, without tag or digest"
    );

    let container_age = format!(
        r#"freshen_container_age_seconds{{namespace="{}",workload="measured"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &container_age).await?;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert!(
        (0.0..300.0).contains(&samples[0].value),
        "the pods started during this test, so container age {}s must be small",
        samples[0].value
    );

    // The tag names the digest the pods run: no update. Pushing a new build to
    // the tag makes one available, seen at the next poll.
    let update = format!(
        r#"freshen_image_update_available{{namespace="{}",workload="measured"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &update).await?;
    assert_eq!(samples[0].value, 0.0, "{samples:?}");
    push(
        &harness.registry,
        &repository,
        "v1",
        &ImageSpec::built_at(Utc::now()),
    )
    .await?;
    await_value(
        &harness.prometheus_url,
        &update,
        1.0,
        harness.scrape_interval,
    )
    .await?;
    // And since when: freshen saw it moments ago.
    let waiting = format!(
        r#"freshen_image_update_available_seconds{{namespace="{}",workload="measured"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &waiting).await?;
    assert!((0.0..120.0).contains(&samples[0].value), "{samples:?}");

    // The exposition passes Prometheus' own linter.
    let exposition = operator.scrape().await?;
    let lint = promtool_check_metrics(&exposition)?;
    assert!(
        lint.is_empty(),
        "promtool check metrics found problems:\n{lint}"
    );

    // The Deployment without the annotation never had a series, at any scrape
    // since the operator started.
    for metric in ["freshen_image_age_seconds", "freshen_container_age_seconds"] {
        let ever = format!(
            r#"count_over_time({metric}{{namespace="{}",workload="ignored"}}[10m])"#,
            ns.name
        );
        let seen = query(&harness.prometheus_url, &ever).await?;
        assert!(
            seen.is_empty(),
            "{metric} of a workload that did not opt in: {seen:?}"
        );
    }

    // Deleting the Deployment removes its series from the operator at once,
    // and so from Prometheus (as stale) at the next scrape.
    deployments
        .delete("measured", &DeleteParams::default())
        .await?;
    // Labels are rendered sorted by name, so these two are adjacent.
    let series_of_measured = format!(r#"namespace="{}",workload="measured""#, ns.name);
    wait_for(
        "the deleted workload's series to leave /metrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (operator, needle) = (&operator, &series_of_measured);
            async move {
                let text = operator.scrape().await?;
                Ok((!text.contains(needle.as_str())).then_some(()))
            }
        },
    )
    .await?;
    wait_for(
        "Prometheus to mark the deleted workload's series stale",
        Duration::from_secs(30),
        harness.scrape_interval,
        || {
            let image_age = image_age.clone();
            let url = harness.prometheus_url.clone();
            async move { Ok(query(&url, &image_age).await?.is_empty().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

/// Waits until Prometheus returns at least one sample for `promql`.
async fn await_series(harness: &Harness, promql: &str) -> anyhow::Result<Vec<Sample>> {
    freshen_e2e::prometheus::await_series(&harness.prometheus_url, promql, harness.scrape_interval)
        .await
}

/// Runs `promtool check metrics` on an exposition; returns its complaints
/// (empty when it has none).
fn promtool_check_metrics(exposition: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running promtool (Debian's prometheus package): {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("promtool has no stdin"))?
        .write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(complaints.trim().to_owned())
    } else {
        Ok(format!("exit {}: {complaints}", out.status))
    }
}

#[tokio::test]
async fn a_malformed_annotation_is_a_warning_event_not_a_crash() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "badannotation").await?;
    let image = push(
        &harness.registry,
        &format!("e2e/{}/app", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(1)),
    )
    .await?;
    ns.deploy_ready(
        &client,
        "typo",
        &image.pinned(),
        1,
        &[
            ("freshen.dev/refresh", "yes"),
            ("freshen.dev/max-image-age", "5 days"),
        ],
    )
    .await?;
    ns.deploy_ready(
        &client,
        "good",
        &image.pinned(),
        1,
        &[("freshen.dev/refresh", "enabled")],
    )
    .await?;

    let operator = Operator::start(&harness, &["--poll-interval", "30s"]).await?;

    // A Warning Event naming each bad annotation, its value and the
    // expected form.
    let note =
        freshen_e2e::await_warning(&client, &ns.name, "Deployment", "typo", "InvalidAnnotation")
            .await?;
    assert!(
        note.contains("freshen.dev/refresh")
            && note.contains("\"yes\"")
            && note.contains("\"enabled\" or \"disabled\""),
        "{note}"
    );
    assert!(
        note.contains("freshen.dev/max-image-age")
            && note.contains("\"5 days\"")
            && note.contains("e.g. 90s, 36h, 7d"),
        "{note}"
    );

    // Nothing crashes and nothing is lost: both workloads are measured (a
    // bad opt-in value is shown, not hidden), and the bad one's errors are
    // counted where SREs look.
    for workload in ["good", "typo"] {
        let age = format!(
            r#"freshen_image_age_seconds{{namespace="{}",workload="{workload}"}}"#,
            ns.name
        );
        await_series(&harness, &age).await?;
    }
    let errors = |workload: &str| {
        format!(
            r#"freshen_workload_config_errors{{namespace="{}",workload="{workload}"}}"#,
            ns.name
        )
    };
    await_value(
        &harness.prometheus_url,
        &errors("typo"),
        2.0,
        harness.scrape_interval,
    )
    .await?;
    await_value(
        &harness.prometheus_url,
        &errors("good"),
        0.0,
        harness.scrape_interval,
    )
    .await?;
    // The bad limit is ignored, not guessed at: no limit is in force.
    let text = operator.scrape().await?;
    let typo = format!(r#"namespace="{}",workload="typo""#, ns.name);
    assert!(
        text.lines()
            .any(|l| l.starts_with("freshen_image_age_seconds{") && l.contains(&typo)),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("freshen_policy_max_image_age_seconds{") && l.contains(&typo)),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_moved_base_image_reaches_prometheus_as_stale() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "base").await?;

    // A base image, and an app built on it that records which base digest.
    let base_repository = format!("e2e/{}/base", ns.name);
    let base_v1 = push(
        &harness.registry,
        &base_repository,
        "12",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(30)),
    )
    .await?;
    let mut app = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    app.base = Some((base_v1.tagged.clone(), base_v1.digest.clone()));
    let app = push(
        &harness.registry,
        &format!("e2e/{}/app", ns.name),
        "v1",
        &app,
    )
    .await?;

    ns.deploy_ready(
        &client,
        "on-base",
        &app.pinned(),
        1,
        &[("freshen.dev/refresh", "enabled")],
    )
    .await?;
    // The same image under a policy that does not track bases: measured,
    // but no base look-ups and no base series.
    ns.deploy_ready(&client, "untracked", &app.pinned(), 1, &[])
        .await?;
    let untracked = freshen_api::RefreshPolicy::new(
        "no-base",
        freshen_api::RefreshPolicySpec {
            pipelines: Default::default(),
            refresh: Default::default(),
            selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("app".to_owned(), "untracked".to_owned())].into()),
                match_expressions: None,
            },
            limits: freshen_api::PolicyLimits {
                track_base_image: Some(false),
                ..freshen_api::PolicyLimits::default()
            },
        },
    );
    Api::<freshen_api::RefreshPolicy>::namespaced(client.clone(), &ns.name)
        .create(&kube::api::PostParams::default(), &untracked)
        .await?;
    let operator = Operator::start(&harness, &["--poll-interval", "3s"]).await?;

    let stale = format!(
        r#"freshen_base_image_stale{{namespace="{}",workload="on-base"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &stale).await?;
    assert_eq!(
        samples[0].value, 0.0,
        "the base tag still names the digest built on: {samples:?}"
    );

    // The upstream base is patched: its tag moves to a new digest.
    push(
        &harness.registry,
        &base_repository,
        "12",
        &ImageSpec::built_at(Utc::now()),
    )
    .await?;
    await_value(
        &harness.prometheus_url,
        &stale,
        1.0,
        harness.scrape_interval,
    )
    .await?;
    let stale_seconds = format!(
        r#"freshen_base_image_stale_seconds{{namespace="{}",workload="on-base"}}"#,
        ns.name
    );
    let samples = await_series(&harness, &stale_seconds).await?;
    assert!(
        (0.0..300.0).contains(&samples[0].value),
        "stale since the new base was built, moments ago: {samples:?}"
    );

    // Only a rebuild can fix a moved base: the workload is told so.
    let note = freshen_e2e::await_warning(
        &harness.client().await?,
        &ns.name,
        "Deployment",
        "on-base",
        "RebuildRequired",
    )
    .await?;
    assert!(
        note.contains("container app: its base image moved on"),
        "{note}"
    );

    // `freshen report` names the base and says it moved.
    let out = freshen_e2e::operator::report(&harness, &["-n", &ns.name, "-o", "json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = json["rows"].as_array().cloned().unwrap_or_default();
    let row = |workload: &str| {
        rows.iter()
            .find(|r| r["workload"] == workload)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("on-base")["baseImage"], base_v1.tagged, "{rows:?}");
    assert_eq!(row("on-base")["baseStale"], true, "{rows:?}");

    // The untracked workload is measured, without base.
    let untracked_age = format!(
        r#"freshen_image_age_seconds{{namespace="{}",workload="untracked"}}"#,
        ns.name
    );
    await_series(&harness, &untracked_age).await?;
    let text = operator.scrape().await?;
    let untracked = format!(r#"namespace="{}",workload="untracked""#, ns.name);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("freshen_base_image_stale") && l.contains(&untracked)),
        "{text}"
    );
    assert!(row("untracked")["baseImage"].is_null(), "{rows:?}");
    Ok(())
}
