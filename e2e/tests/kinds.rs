//! Every workload kind, measured on the real control plane: one namespace
//! with a Deployment (with a native sidecar and a plain init container), a
//! StatefulSet, a DaemonSet, a CronJob with a running Job, a Job of its
//! own, a ReplicaSet of its own, a bare pod and a pod a Node controls (as
//! a static pod's mirror is), and an Argo Rollout. The real StatefulSet,
//! DaemonSet, Job and ReplicaSet controllers and the real Argo Rollouts
//! controller make their pods; kwok runs them. `/metrics` and
//! `freshen report` must list every long-running container once, with
//! its kind, and one RefreshPolicy's selector must match every kind.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::{PolicyLimits, RefreshPolicy, RefreshPolicySpec};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::{Operator, report};
use freshen_e2e::{Harness, TestNamespace, init_tls, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `(kind, workload, container)`, as the report and the metrics name them.
type Listed = BTreeSet<(String, String, String)>;

/// A pod template labelled `fleet=yes` and `app=<name>`, one container.
fn template(name: &str, image: &str) -> Value {
    json!({
        "metadata": {"labels": {"fleet": "yes", "app": name}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    })
}

async fn create<K>(client: &Client, namespace: &str, object: Value) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let object: K = serde_json::from_value(object)?;
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?;
    Ok(())
}

/// The `(kind, workload, container)` of every series of `family` in the
/// namespace, failing on one listed twice.
fn series(text: &str, family: &str, namespace: &str) -> anyhow::Result<Listed> {
    let mut listed = Listed::new();
    let in_namespace = format!("namespace=\"{namespace}\"");
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&in_namespace))
    {
        let label = |name: &str| -> String {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let entry = (label("kind"), label("workload"), label("container"));
        anyhow::ensure!(listed.insert(entry.clone()), "{entry:?} twice:\n{text}");
    }
    Ok(listed)
}

#[tokio::test]
async fn every_kind_is_measured_once_with_its_kind() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "kinds").await?;
    let n = ns.name.as_str();

    let image = push(
        &harness.registry,
        &format!("e2e/{n}/app"),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
    )
    .await?;
    let image = image.pinned();

    // One policy, by label, over every kind: a 5-day limit all violate.
    Api::<RefreshPolicy>::namespaced(client.clone(), n)
        .create(
            &PostParams::default(),
            &RefreshPolicy::new(
                "fleet",
                RefreshPolicySpec {
                    pipelines: Default::default(),
                    refresh: Default::default(),
                    selector: LabelSelector {
                        match_labels: Some([("fleet".to_owned(), "yes".to_owned())].into()),
                        match_expressions: None,
                    },
                    limits: PolicyLimits {
                        max_image_age: Some("5d".into()),
                        ..PolicyLimits::default()
                    },
                },
            ),
        )
        .await?;

    let fleet = json!({"fleet": "yes"});
    let selector = |name: &str| json!({"matchLabels": {"app": name}});
    let mut web = template("web", &image);
    web["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": image},
        {"name": "proxy", "image": image, "restartPolicy": "Always"},
    ]);
    create::<Deployment>(
        &client,
        n,
        json!({
            "metadata": {"name": "web", "labels": fleet},
            "spec": {"replicas": 1, "selector": selector("web"), "template": web},
        }),
    )
    .await?;
    create::<StatefulSet>(
        &client,
        n,
        json!({
            "metadata": {"name": "db", "labels": fleet},
            "spec": {"replicas": 2, "serviceName": "db", "selector": selector("db"),
                     "template": template("db", &image)},
        }),
    )
    .await?;
    create::<DaemonSet>(
        &client,
        n,
        json!({
            "metadata": {"name": "agent", "labels": fleet},
            "spec": {"selector": selector("agent"), "template": template("agent", &image)},
        }),
    )
    .await?;
    let mut job_template = template("backup", &image);
    job_template["spec"]["restartPolicy"] = json!("Never");
    // kwok completes a Job's pod at once unless told to keep it running.
    job_template["metadata"]["annotations"] = json!({"e2e.freshen.dev/keep-running": "true"});
    create::<CronJob>(
        &client,
        n,
        json!({
            "metadata": {"name": "backup", "labels": fleet},
            "spec": {"schedule": "0 0 1 1 *",
                     "jobTemplate": {"spec": {"template": job_template.clone()}}},
        }),
    )
    .await?;
    // A Job of the CronJob, as `kubectl create job --from=cronjob/backup`
    // makes one: owned by it.
    let cron_job = Api::<CronJob>::namespaced(client.clone(), n)
        .get("backup")
        .await?;
    create::<Job>(
        &client,
        n,
        json!({
            "metadata": {"name": "backup-manual", "labels": fleet,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                            "name": "backup", "uid": cron_job.uid(), "controller": true}]},
            "spec": {"template": job_template.clone()},
        }),
    )
    .await?;
    let mut once = template("once", &image);
    once["spec"]["restartPolicy"] = json!("Never");
    once["metadata"]["annotations"] = json!({"e2e.freshen.dev/keep-running": "true"});
    create::<Job>(
        &client,
        n,
        json!({
            "metadata": {"name": "once", "labels": fleet},
            "spec": {"template": once},
        }),
    )
    .await?;
    create::<ReplicaSet>(
        &client,
        n,
        json!({
            "metadata": {"name": "rs", "labels": fleet},
            "spec": {"replicas": 1, "selector": selector("rs"), "template": template("rs", &image)},
        }),
    )
    .await?;
    let mut bare = template("debug", &image);
    bare["metadata"]["name"] = json!("debug");
    create::<Pod>(&client, n, bare).await?;
    let node = Api::<Node>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?
        .items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the harness has no node"))?;
    let mut mirror = template("etcd", &image);
    mirror["metadata"]["name"] = json!("etcd-mirror");
    mirror["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
        "name": node.name_any(), "uid": node.uid(), "controller": true}]);
    mirror["spec"]["nodeName"] = json!(node.name_any());
    create::<Pod>(&client, n, mirror).await?;
    // An Argo Rollout: the real controller makes its ReplicaSet (named
    // `checkout-<hash>`, its pods labelled rollouts-pod-template-hash).
    let _argo = freshen_e2e::peers::argo_rollouts(&harness, n, 18093)?;
    let rollout = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "checkout", "labels": fleet},
        "spec": {"replicas": 1, "selector": selector("checkout"),
                 "template": template("checkout", &image),
                 "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}},
    });
    freshen_e2e::peers::apply_yaml(&harness, n, &rollout.to_string())?;
    freshen_e2e::wait_ready_pods(&client, n, "checkout", 1, Duration::from_secs(90)).await?;

    let operator = Operator::start(&harness, &["--poll-interval", "3s"]).await?;

    let expected: Listed = [
        ("Deployment", "web", "app"),
        ("Deployment", "web", "proxy"),
        ("StatefulSet", "db", "app"),
        ("DaemonSet", "agent", "app"),
        ("CronJob", "backup", "app"),
        ("Job", "once", "app"),
        ("ReplicaSet", "rs", "app"),
        ("Pod", "debug", "app"),
        ("Pod", "etcd-mirror", "app"),
        ("Rollout", "checkout", "app"),
    ]
    .into_iter()
    .map(|(k, w, c)| (k.to_owned(), w.to_owned(), c.to_owned()))
    .collect();

    // Every container has its limit in force, once, with its kind, and
    // an age: the CronJob's through its running Job's pod.
    let text = wait_for(
        "every kind's limit series",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let (operator, expected) = (&operator, &expected);
            async move {
                let text = operator.scrape().await?;
                let limits = series(&text, "freshen_policy_max_image_age_seconds", n)?;
                anyhow::ensure!(limits == *expected, "{limits:?}");
                let running = series(&text, "freshen_container_age_seconds", n)?;
                anyhow::ensure!(running == *expected, "running: {running:?}");
                Ok(Some(text))
            }
        },
    )
    .await?;
    assert_eq!(series(&text, "freshen_image_age_seconds", n)?, expected);

    // The policy matches every kind, and all violate it.
    let policies: Api<RefreshPolicy> = Api::namespaced(client.clone(), n);
    wait_for(
        "the policy to count every kind",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let policies = policies.clone();
            async move {
                let status = policies.get("fleet").await?.status.unwrap_or_default();
                anyhow::ensure!(
                    status.matched_workloads == 9 && status.violating_workloads == 9,
                    "{status:?}"
                );
                Ok(Some(()))
            }
        },
    )
    .await?;

    // The report, from a kubeconfig alone, lists the same containers.
    let out = report(&harness, &["-n", n, "-o", "json"])?;
    let json: Value = serde_json::from_slice(&out.stdout)?;
    let mut rows = Listed::new();
    for row in json["rows"].as_array().into_iter().flatten() {
        let entry = (
            row["kind"].as_str().unwrap_or_default().to_owned(),
            row["workload"].as_str().unwrap_or_default().to_owned(),
            row["container"].as_str().unwrap_or_default().to_owned(),
        );
        anyhow::ensure!(rows.insert(entry.clone()), "{entry:?} twice in the report");
    }
    assert_eq!(rows, expected, "{}", String::from_utf8_lossy(&out.stdout));
    let table = report(&harness, &["-n", n])?;
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("NAMESPACE") && h.contains(" KIND ")),
        "{table}"
    );
    Ok(())
}
