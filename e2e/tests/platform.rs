//! Multi-arch images are read for the platform the workload's nodes run:
//! a Deployment scheduled on an arm64 node is aged by the arm64 build of a
//! multi-arch tag, one on amd64 nodes by the amd64 build.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_e2e::image::{ImageSpec, push, push_index};
use freshen_e2e::operator::Operator;
use freshen_e2e::prometheus::await_series;
use freshen_e2e::{Harness, TestNamespace, deployment, init_tls, rand_suffix, wait_ready_pods};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Toleration};
use kube::Api;
use kube::api::PostParams;

const DAY: f64 = 86_400.0;
const TAINT: &str = "e2e.freshen.dev/arm64";

/// A kwok-managed arm64 node, tainted so that only pods that ask land on
/// it; deleted when dropped.
struct ArmNode {
    name: String,
    _delete: freshen_e2e::DeleteOnDrop,
}

impl ArmNode {
    async fn create(harness: &Harness, client: &kube::Client) -> anyhow::Result<Self> {
        let name = format!("arm64-{:08x}", rand_suffix());
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { "kwok.x-k8s.io/node": "fake" },
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/arch": "arm64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                },
            },
            "spec": { "taints": [ { "key": TAINT, "value": "true", "effect": "NoSchedule" } ] },
            "status": {
                "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
                "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
                "nodeInfo": { "architecture": "arm64", "operatingSystem": "linux" },
            },
        }))?;
        let api: Api<Node> = Api::all(client.clone());
        api.create(&PostParams::default(), &node).await?;
        Ok(Self {
            _delete: harness.delete_on_drop("node", &name),
            name,
        })
    }
}

#[tokio::test]
async fn multi_arch_images_are_aged_for_the_platform_their_nodes_run() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "platform").await?;
    let arm_node = ArmNode::create(&harness, &client).await?;

    let repository = format!("e2e/{}/multi", ns.name);
    let amd64 = push(
        &harness.registry,
        &repository,
        "amd64",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(2)),
    )
    .await?;
    let mut arm = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    arm.architecture = "arm64".into();
    let arm64 = push(&harness.registry, &repository, "arm64", &arm).await?;
    let index = push_index(
        &harness.registry,
        &repository,
        "v1",
        &[(&amd64, "linux", "amd64"), (&arm64, "linux", "arm64")],
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let enabled = [("freshen.dev/refresh", "enabled")];
    let mut on_arm = deployment("on-arm", &index.pinned(), 1, &enabled)?;
    if let Some(spec) = on_arm.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_selector =
            Some([("kubernetes.io/hostname".to_owned(), arm_node.name.clone())].into());
        spec.tolerations = Some(vec![Toleration {
            key: Some(TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
    }
    deployments.create(&PostParams::default(), &on_arm).await?;
    deployments
        .create(
            &PostParams::default(),
            &deployment("on-amd", &index.pinned(), 1, &enabled)?,
        )
        .await?;
    for name in ["on-arm", "on-amd"] {
        wait_ready_pods(&client, &ns.name, name, 1, Duration::from_secs(60)).await?;
    }

    let _operator = Operator::start(&harness, &["--poll-interval", "1m"]).await?;
    for (workload, days) in [("on-arm", 20.0), ("on-amd", 2.0)] {
        let age = format!(
            r#"freshen_image_age_seconds{{namespace="{}",workload="{workload}"}}"#,
            ns.name
        );
        let samples = await_series(&harness.prometheus_url, &age, harness.scrape_interval).await?;
        assert!(
            (samples[0].value - days * DAY).abs() < 120.0,
            "{workload} should be aged by its platform's build ({days} days): {samples:?}"
        );
    }
    Ok(())
}
