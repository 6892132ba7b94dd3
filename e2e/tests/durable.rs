//! Durable observations: since when a tag has named its digest is kept in
//! a TagRecord in freshen's namespace, so an operator restart changes no
//! "update available since" and no digest age.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::TagRecord;
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{Harness, OPERATOR_NAMESPACE, TestNamespace, init_tls, wait_for};
use kube::Api;

#[tokio::test]
async fn a_restart_changes_no_age_kept_in_tag_records() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "durable").await?;
    let repo = format!("e2e/{}/app", ns.name);
    // A reproducible build: no build time, so its only age is how long its
    // digest has been what the tag names.
    let reproducible = ImageSpec {
        created: None,
        ..ImageSpec::built_at(Utc::now())
    };
    let v1 = push(&harness.registry, &repo, "1", &reproducible).await?;
    ns.deploy_ready(
        &client,
        "web",
        &v1.pinned(),
        1,
        &[("freshen.dev/refresh", "enabled")],
    )
    .await?;
    let args = ["--poll-interval", "2s", "--namespace", ns.name.as_str()];
    let mut operator = Operator::start(&harness, &args).await?;
    let web = [
        format!(r#"namespace="{}""#, ns.name),
        r#"workload="web""#.to_owned(),
    ];
    let seen = ("freshen_image_digest_seen_seconds", &web);
    wait_for(
        "the digest's age",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || read(&operator, seen),
    )
    .await?;
    // Its build time is unknown: no build age, never mixed with this one.
    assert_eq!(
        read(&operator, ("freshen_image_age_seconds", &web)).await?,
        None
    );
    // The tag moves: an update is available since now.
    let v2 = push(
        &harness.registry,
        &repo,
        "1",
        &ImageSpec {
            content: "v2".into(),
            ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(1))
        },
    )
    .await?;
    let waiting = ("freshen_image_update_available_seconds", &web);
    wait_for(
        "an update to be available",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || read(&operator, waiting),
    )
    .await?;
    // Recorded once per tag and digest, in freshen's namespace.
    let records: Vec<TagRecord> = Api::<TagRecord>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.image == v1.tagged)
        .collect();
    assert_eq!(records.len(), 1, "one record per tag");
    assert_eq!(records[0].spec.digest, v2.digest, "the tag's latest digest");
    // Old enough that an age restarted from zero would show.
    let before = wait_for(
        "the update to be waiting three seconds",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { Ok(read(&operator, waiting).await?.filter(|age| *age >= 3.0)) },
    )
    .await?;

    // A restart: the ages carry on from the records, not from zero.
    operator.kill()?;
    let operator = Operator::start(&harness, &args).await?;
    let after = wait_for(
        "the update's age after the restart",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || read(&operator, waiting),
    )
    .await?;
    assert!(
        after >= before,
        "update available for {after} s after the restart, {before} s before"
    );
    assert!(before >= 3.0, "{before}");
    Ok(())
}

/// The value of the first series of `metric` whose labels include every
/// one of `labels` (`name="value"`), in the operator's scrape.
async fn read(
    operator: &Operator,
    (metric, labels): (&str, &[String; 2]),
) -> anyhow::Result<Option<f64>> {
    let text = operator.scrape().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

#[tokio::test]
async fn a_policy_may_judge_a_reproducible_build_by_how_long_its_digest_was_seen()
-> anyhow::Result<()> {
    use freshen_api::policy::UnknownBuildAge;
    use freshen_api::{PolicyLimits, RefreshPolicy, RefreshPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::PostParams;
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "first-seen").await?;
    let image = push(
        &harness.registry,
        &format!("e2e/{}/ko-built", ns.name),
        "1",
        &ImageSpec {
            created: None,
            ..ImageSpec::built_at(Utc::now())
        },
    )
    .await?;
    let policy = RefreshPolicy::new(
        "by-first-seen",
        RefreshPolicySpec {
            selector: LabelSelector {
                match_labels: Some([("app".to_owned(), "ko".to_owned())].into()),
                match_expressions: None,
            },
            limits: PolicyLimits {
                max_image_age: Some("3s".into()),
                unknown_build_age: Some(UnknownBuildAge::FirstSeen),
                ..PolicyLimits::default()
            },
            refresh: Default::default(),
            pipelines: Default::default(),
        },
    );
    Api::<RefreshPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await?;
    ns.deploy_ready(&client, "ko", &image.pinned(), 1, &[])
        .await?;
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", ns.name.as_str()],
    )
    .await?;
    // Unknown build time, so never old by build; by first seen, past 3s
    // moments after freshen first looked.
    let note =
        freshen_e2e::await_warning(&client, &ns.name, "Deployment", "ko", "MaxAgeExceeded").await?;
    assert!(
        note.contains("exceeds 3s") && note.contains("since its digest was first seen"),
        "{note}"
    );
    Ok(())
}
