//! `/metrics` names every tenant's workloads and images: with
//! `--metrics-auth kubernetes` (the chart's default) only an identity the
//! API server authenticates (TokenReview) and lets `get` /metrics
//! (SubjectAccessReview) reads it. The operator runs with the chart's
//! ServiceAccount and RBAC, and the reader is bound to the chart's
//! ClusterRole.

use freshen_e2e::operator::Operator;
use std::time::Duration;

use freshen_e2e::{Harness, TestNamespace, init_tls, wait_for};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};

#[tokio::test]
async fn only_identities_granted_get_on_metrics_read_them() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let ns = TestNamespace::create(&harness, &admin, "metrics-auth").await?;
    // A namespace owner (ServiceAccount `tenant`, admin in its namespace).
    ns.tenant_client(&harness, &admin).await?;
    let scraper = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("prometheus".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &scraper)
        .await?;
    let binding_name = format!("{}-metrics-reader", ns.name);
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name.clone()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "freshen-metrics-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "prometheus".into(),
            namespace: Some(ns.name.clone()),
            ..Subject::default()
        }]),
    };
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    bindings.create(&PostParams::default(), &binding).await?;
    // On an address of its own: the harness' Prometheus, which scrapes the
    // usual one, has no token.
    let operator = Operator::start_at(
        &harness,
        "127.0.0.1:18097",
        &["--metrics-auth", "kubernetes", "--namespace", &ns.name],
    )
    .await?;
    // No token, or one the API server does not know: 401.
    let (status, _) = operator.scrape_as(None).await?;
    assert_eq!(status, 401);
    let (status, _) = operator.scrape_as(Some("not-a-token")).await?;
    assert_eq!(status, 401);
    // A namespace admin: authenticated, not allowed.
    let (status, text) = operator
        .scrape_as(Some(&harness.token_for(&ns.name, "tenant")?))
        .await?;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("tenant may not get /metrics"), "{text}");
    // The scraper bound to the chart's ClusterRole reads them (once the
    // binding is in the authorizer's cache).
    let token = harness.token_for(&ns.name, "prometheus")?;
    let text = wait_for(
        "the bound scraper to read /metrics",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            match operator.scrape_as(Some(&token)).await? {
                (200, text) => Ok(Some(text)),
                (status, text) => anyhow::bail!("{status}: {text}"),
            }
        },
    )
    .await?;
    assert!(text.contains("freshen_leader"), "{text}");
    // The probes stay open for the kubelet.
    assert!(operator.ready().await?);
    bindings
        .delete(&binding_name, &DeleteParams::default())
        .await?;
    Ok(())
}
