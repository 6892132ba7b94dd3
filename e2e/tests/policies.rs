//! Policies end to end: the API server validates them from the generated
//! CRDs, the operator applies them to workloads and writes their status,
//! Prometheus shows the limits, and `freshen report` agrees.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyStatus, RefreshPolicy,
    RefreshPolicySpec,
};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::{Operator, report, report_as};
use freshen_e2e::prometheus::await_value;
use freshen_e2e::{Harness, TestNamespace, await_warning, init_tls, wait_for};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::PostParams;
use kube::{Api, Client};

const DAY: f64 = 86_400.0;

fn selector_in(key: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: "In".into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }]),
    }
}

fn refresh_policy(name: &str, selector: LabelSelector, max_image_age: &str) -> RefreshPolicy {
    RefreshPolicy::new(
        name,
        RefreshPolicySpec {
            pipelines: Default::default(),
            refresh: Default::default(),
            selector,
            limits: PolicyLimits {
                max_image_age: Some(max_image_age.into()),
                ..PolicyLimits::default()
            },
        },
    )
}

/// Waits until policy `name`'s status satisfies `done`; returns it.
async fn await_status(
    api: &Api<RefreshPolicy>,
    name: &str,
    what: &str,
    done: impl Fn(&PolicyStatus) -> bool,
) -> anyhow::Result<PolicyStatus> {
    wait_for(
        &format!("RefreshPolicy {name}: {what}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let api = api.clone();
            let done = &done;
            async move {
                let status = api.get(name).await?.status.unwrap_or_default();
                Ok(done(&status).then_some(status))
            }
        },
    )
    .await
}

fn condition<'a>(status: &'a PolicyStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

#[tokio::test]
async fn a_refresh_policy_makes_an_old_image_violate() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "policy").await?;

    let old = push(
        &harness.registry,
        &format!("e2e/{}/old", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
    )
    .await?;
    let fresh = push(
        &harness.registry,
        &format!("e2e/{}/fresh", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(1)),
    )
    .await?;
    // No opt-in annotation: matching a policy is what brings them in.
    ns.deploy_ready(&client, "old", &old.pinned(), 1, &[])
        .await?;
    ns.deploy_ready(&client, "fresh", &fresh.pinned(), 1, &[])
        .await?;
    // Old too, but its owner snoozed it: shown, counted nowhere.
    let until = (Utc::now() + TimeDelta::days(7)).to_rfc3339();
    ns.deploy_ready(
        &client,
        "snoozed",
        &old.pinned(),
        1,
        &[("freshen.dev/snooze-until", until.as_str())],
    )
    .await?;
    // Opted out explicitly: a matching policy does not bring it in.
    ns.deploy_ready(
        &client,
        "opted-out",
        &old.pinned(),
        1,
        &[("freshen.dev/refresh", "disabled")],
    )
    .await?;

    // Two policies match `old`. Created in the same second they tie on age,
    // and the name breaks the tie: `a-strict` governs either way.
    let policies: Api<RefreshPolicy> = Api::namespaced(client.clone(), &ns.name);
    let params = PostParams::default();
    policies
        .create(
            &params,
            &refresh_policy(
                "a-strict",
                selector_in("app", &["old", "fresh", "snoozed", "opted-out"]),
                "5d",
            ),
        )
        .await?;
    policies
        .create(
            &params,
            &refresh_policy("b-lenient", selector_in("app", &["old"]), "30d"),
        )
        .await?;

    let operator = Operator::start(&harness, &["--poll-interval", "3s"]).await?;

    let strict = await_status(&policies, "a-strict", "3 matched, 1 violating", |s| {
        s.matched_workloads == 3 && s.violating_workloads == 1
    })
    .await?;
    assert_eq!(strict.observed_generation, Some(1));
    let (ready, reason, _) = condition(&strict, "Ready").unwrap_or_default();
    assert_eq!((ready, reason), ("True", "Active"));
    let (overlapping, _, message) = condition(&strict, "Overlapping").unwrap_or_default();
    assert_eq!(overlapping, "True", "{message}");
    assert!(message.contains("b-lenient"), "{message}");

    let lenient = await_status(&policies, "b-lenient", "1 matched, 0 violating", |s| {
        s.matched_workloads == 1
    })
    .await?;
    assert_eq!(lenient.violating_workloads, 0);
    let (overlapping, _, message) = condition(&lenient, "Overlapping").unwrap_or_default();
    assert_eq!(overlapping, "True");
    assert!(
        message.contains("a-strict") && message.contains("governs 0 of its 1"),
        "{message}"
    );

    // The limit in force is a series next to the age it bounds.
    let limit = format!(
        r#"freshen_policy_max_image_age_seconds{{namespace="{}",workload="old"}}"#,
        ns.name
    );
    await_value(
        &harness.prometheus_url,
        &limit,
        5.0 * DAY,
        harness.scrape_interval,
    )
    .await?;

    // The workload itself gets a Warning Event saying what and who.
    let note = await_event(&client, &ns.name, "old", "MaxAgeExceeded").await?;
    assert!(
        note.contains("image age 10d exceeds 5d")
            && note.contains(&format!("RefreshPolicy {}/a-strict", ns.name)),
        "{note}"
    );

    // `kubectl get` shows the counts.
    let table = std::process::Command::new(&harness.kubectl)
        .arg("--kubeconfig")
        .arg(&harness.kubeconfig)
        .args(["get", "refreshpolicies", "-n", &ns.name])
        .output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MAX",
            "IMAGE",
            "AGE",
            "MAX",
            "CONTAINER",
            "AGE",
            "MATCHED",
            "VIOLATING",
            "READY",
            "AGE"
        ],
        "{table}"
    );
    let strict_line = table
        .lines()
        .find(|l| l.starts_with("a-strict"))
        .unwrap_or_default();
    assert!(
        strict_line.split_whitespace().collect::<Vec<_>>()[1..5] == ["5d", "3", "1", "True"],
        "{table}"
    );

    // The report reaches the same verdict, from a kubeconfig alone.
    let out = report(
        &harness,
        &["-n", &ns.name, "-o", "json", "--fail-on-violation"],
    )?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "violations fail the run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = json["rows"].as_array().cloned().unwrap_or_default();
    let workloads: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(
        workloads,
        ["old", "snoozed", "fresh"],
        "worst first, opted-out left out"
    );
    assert_eq!(
        rows[0]["maxImageAge"]["source"],
        format!("RefreshPolicy {}/a-strict", ns.name)
    );
    assert_eq!(rows[0]["violations"].as_array().map(Vec::len), Some(1));
    assert_eq!(rows[1]["snoozed"], true);
    assert_eq!(rows[1]["violations"].as_array().map(Vec::len), Some(1));
    assert!(rows[2]["violations"].as_array().is_some_and(Vec::is_empty));
    // Snoozed violations alone do not fail a CI run.
    let out = report(
        &harness,
        &["-n", &ns.name, "-l", "app=snoozed", "--fail-on-violation"],
    )?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(snoozed)"));
    let out = report(&harness, &["-n", &ns.name])?;
    assert_eq!(out.status.code(), Some(0), "without --fail-on-violation");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("5d (rp/a-strict)"), "{table}");
    assert!(table.contains("VIOLATING"), "{table}");

    // A restarted operator finds the policies' status already current (no
    // spec change to fan out) and must still judge the workloads by them.
    drop(operator);
    let operator = Operator::start(&harness, &["--poll-interval", "1h"]).await?;
    let series = format!(
        r#"freshen_policy_max_image_age_seconds{{container="app",image="{}/e2e/{}/old",kind="Deployment",namespace="{}",workload="old"}} 432000"#,
        harness.registry, ns.name, ns.name
    );
    wait_for(
        "the restarted operator to apply the policy to `old` again",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (operator, series) = (&operator, &series);
            async move {
                let text = operator.scrape().await?;
                Ok(text.lines().any(|l| l == series.as_str()).then_some(()))
            }
        },
    )
    .await?;
    Ok(())
}

async fn await_event(
    client: &Client,
    namespace: &str,
    workload: &str,
    reason: &str,
) -> anyhow::Result<String> {
    await_warning(client, namespace, "Deployment", workload, reason).await
}

#[tokio::test]
async fn the_api_server_rejects_invalid_policies_naming_the_field() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "invalidpolicy").await?;
    let policies: Api<RefreshPolicy> = Api::namespaced(client.clone(), &ns.name);
    let params = PostParams::default();

    let rejection = |result: Result<RefreshPolicy, kube::Error>| match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("expected the API server to reject it, got {other:?}"),
    };
    for bad in ["5 days", "-1d", "0d", "1h1d", "7"] {
        let message = rejection(
            policies
                .create(
                    &params,
                    &refresh_policy("bad", selector_in("app", &["x"]), bad),
                )
                .await,
        );
        assert!(
            message.contains("spec.maxImageAge") && message.contains("must be a positive duration"),
            "{bad:?}: {message}"
        );
    }
    // The refresh settings' durations carry the same rule.
    let mut soon = refresh_policy("soon", selector_in("app", &["x"]), "5d");
    soon.spec.refresh = serde_json::from_value(serde_json::json!({
        "minDigestAge": "soon",
        "rollout": {"analysis": {"interval": "30 s"}}
    }))?;
    let message = rejection(policies.create(&params, &soon).await);
    assert!(
        message.contains("spec.minDigestAge")
            && message.contains("spec.rollout.analysis.interval")
            && message.contains("must be a positive duration"),
        "{message}"
    );
    let message = rejection(
        policies
            .create(
                &params,
                &refresh_policy("everything", LabelSelector::default(), "5d"),
            )
            .await,
    );
    assert!(
        message.contains("spec.selector") && message.contains("at least one matchLabels"),
        "{message}"
    );

    let cluster: Api<ClusterRefreshPolicy> = Api::all(client.clone());
    let result = cluster
        .create(
            &params,
            &ClusterRefreshPolicy::new(
                &format!("{}-everything", ns.name),
                ClusterRefreshPolicySpec {
                    pipelines: Default::default(),
                    refresh: Default::default(),
                    namespace_selector: Some(LabelSelector::default()),
                    selector: None,
                    limits: PolicyLimits::default(),
                },
            ),
        )
        .await;
    match result {
        Err(kube::Error::Api(status)) => assert!(
            status
                .message
                .contains("set a non-empty namespaceSelector or selector"),
            "{}",
            status.message
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A valid one is accepted as written.
    let created = policies
        .create(
            &params,
            &refresh_policy("good", selector_in("app", &["x"]), "1d12h"),
        )
        .await?;
    assert_eq!(created.spec.limits.max_image_age.as_deref(), Some("1d12h"));
    Ok(())
}

#[tokio::test]
async fn a_limit_crossed_between_polls_is_seen_when_it_is_crossed() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "crossing").await?;
    // Five days old in about 20 seconds.
    let image = push(
        &harness.registry,
        &format!("e2e/{}/app", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(5) + TimeDelta::seconds(20)),
    )
    .await?;
    ns.deploy_ready(
        &client,
        "almost",
        &image.pinned(),
        1,
        &[
            ("freshen.dev/refresh", "enabled"),
            ("freshen.dev/max-image-age", "5d"),
        ],
    )
    .await?;
    // A poll interval far longer than the test: only the requeue at the
    // crossing can notice it in time.
    let _operator = Operator::start(&harness, &["--poll-interval", "1h"]).await?;
    let note = await_event(&client, &ns.name, "almost", "MaxAgeExceeded").await?;
    assert!(
        note.contains("image age 5d exceeds 5d (from annotation)"),
        "{note}"
    );
    Ok(())
}

#[tokio::test]
async fn the_report_says_what_permission_it_lacks() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;

    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "noperm").await?;
    // A ServiceAccount with no role at all, and a kubeconfig that uses it.
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await?;
    let path = harness.kubeconfig_for(&ns.name, "nobody")?;

    let out = report_as(&harness, &path, &["-n", &ns.name])?;
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a scan that cannot be made exits 2"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot list deployments in namespace {}", ns.name))
            && stderr.contains("permission denied")
            && stderr.contains("kubectl auth can-i list deployments"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    Ok(())
}

#[tokio::test]
async fn a_policy_the_schema_cannot_reject_is_not_ready_and_says_why() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "notready").await?;
    let policies: Api<RefreshPolicy> = Api::namespaced(client.clone(), &ns.name);
    // Well-formed for the API server (a list of short strings), but no
    // maintenance window freshen can read. (Durations too large for a
    // clock no longer get this far: the schema refuses past 100 years.)
    let mut huge = refresh_policy("huge", selector_in("app", &["x"]), "30d");
    huge.spec.refresh.windows = Some(vec!["Mon-Fry 09:00-16:00".into()]);
    policies.create(&PostParams::default(), &huge).await?;
    let _operator = Operator::start(&harness, &["--poll-interval", "1m"]).await?;
    let status = await_status(&policies, "huge", "Ready=False", |s| {
        condition(s, "Ready").is_some_and(|(status, _, _)| status == "False")
    })
    .await?;
    let (_, reason, message) = condition(&status, "Ready").unwrap_or_default();
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.starts_with("spec.windows: \"Mon-Fry 09:00-16:00\" is not a window"),
        "{message}"
    );

    let note = await_warning(&client, &ns.name, "RefreshPolicy", "huge", "InvalidSpec").await?;
    assert!(note.contains("spec.windows"), "{note}");
    Ok(())
}

#[tokio::test]
async fn a_cluster_policy_follows_namespace_labels() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};

    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "clusterpolicy").await?;
    let old = push(
        &harness.registry,
        &format!("e2e/{}/old", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
    )
    .await?;
    ns.deploy_ready(&client, "old", &old.pinned(), 1, &[])
        .await?;

    // Selects namespaces by a label only this test's namespace will carry.
    let label = "e2e.freshen.dev/baseline";
    let policy = ClusterRefreshPolicy::new(
        &format!("{}-baseline", ns.name),
        ClusterRefreshPolicySpec {
            pipelines: Default::default(),
            refresh: Default::default(),
            namespace_selector: Some(LabelSelector {
                match_labels: Some([(label.to_owned(), ns.name.clone())].into()),
                match_expressions: None,
            }),
            selector: None,
            limits: PolicyLimits {
                max_image_age: Some("5d".into()),
                ..PolicyLimits::default()
            },
        },
    );
    let policies: Api<ClusterRefreshPolicy> = Api::all(client.clone());
    policies.create(&PostParams::default(), &policy).await?;
    let name = format!("{}-baseline", ns.name);
    let _cleanup = harness.delete_on_drop("clusterrefreshpolicy", &name);
    let _operator = Operator::start(&harness, &["--poll-interval", "1h"]).await?;

    let status_of = |what: &'static str, done: fn(&PolicyStatus) -> bool| {
        let (policies, name) = (policies.clone(), name.clone());
        wait_for(
            what,
            Duration::from_secs(30),
            Duration::from_millis(250),
            move || {
                let (policies, name) = (policies.clone(), name.clone());
                async move {
                    let status = policies.get(&name).await?.status.unwrap_or_default();
                    Ok(done(&status).then_some(status))
                }
            },
        )
    };
    // Not labelled yet: it matches nothing, and the workload is not measured.
    status_of("the cluster policy to be Ready with no match", |s| {
        s.observed_generation == Some(1)
            && s.matched_workloads == 0
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await?;

    // Labelling the namespace brings its workload under the policy at once
    // (a namespace change re-measures its workloads; the poll is 1h).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let patch = |value: serde_json::Value| serde_json::json!({ "metadata": { "labels": { label: value } } });
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(patch(ns.name.clone().into())),
        )
        .await?;
    let status = status_of("1 matched, 1 violating", |s| {
        s.matched_workloads == 1 && s.violating_workloads == 1
    })
    .await?;
    assert_eq!(status.matched_workloads, 1);
    let note = await_event(&client, &ns.name, "old", "MaxAgeExceeded").await?;
    assert!(
        note.contains(&format!("ClusterRefreshPolicy {name}")),
        "{note}"
    );

    // Removing the label releases it again.
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(patch(serde_json::Value::Null)),
        )
        .await?;
    status_of("0 matched", |s| s.matched_workloads == 0).await?;
    Ok(())
}
