//! A private registry, as real clusters have them: basic auth (htpasswd)
//! over TLS from a private CA. freshen reads it with the credentials the
//! workload's pods pull with (their imagePullSecrets, or their
//! ServiceAccount's) and the CA given to it, and says why when it cannot.

use std::time::Duration;

use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use freshen_core::ImageReference;
use freshen_e2e::image::{ImageSpec, push_private};
use freshen_e2e::operator::{Operator, report, report_as};
use freshen_e2e::prometheus::await_series;
use freshen_e2e::{
    Harness, OPERATOR_NAMESPACE, TestNamespace, deployment, init_tls, wait_ready_pods,
};
use freshen_registry::{Credential, RegistryClient, RegistryMetrics};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::time::Instant;

const TEN_DAYS: f64 = 10.0 * 86_400.0;

fn registry_client(ca: Option<Vec<u8>>) -> anyhow::Result<std::sync::Arc<RegistryClient>> {
    let mut config = freshen_e2e::registry_config(Duration::from_secs(300));
    config.extra_root_certificates = ca.into_iter().collect();
    Ok(RegistryClient::new(config, RegistryMetrics::new()?))
}

#[tokio::test]
async fn the_registry_client_needs_the_credential_and_the_ca() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let private = &harness.private;
    let built = Utc::now() - TimeDelta::days(10);
    let repository = format!("e2e/client-{:08x}", freshen_e2e::rand_suffix());
    let pushed = push_private(private, &repository, "v1", &ImageSpec::built_at(built)).await?;
    let image = ImageReference::parse(&pushed.tagged)?;
    let credential = Credential {
        username: private.username.clone(),
        password: private.password.clone(),
    };
    let ca = std::fs::read(&private.ca_file)?;

    let client = registry_client(Some(ca))?;
    let anonymous = client.resolve_tag(&image, None, Instant::now()).await;
    assert_eq!(
        anonymous.err().map(|e| e.category()),
        Some("registry_unauthorized"),
        "without the credential the registry says 401"
    );
    let digest = registry_client(Some(std::fs::read(&private.ca_file)?))?
        .resolve_tag(&image, Some(&credential), Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(digest.to_string(), pushed.digest);
    let facts = client
        .image_facts(&image, &digest, None, Some(&credential))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        facts.created.map(|c| c.timestamp()),
        Some(built.timestamp())
    );

    // Without the CA, TLS fails before any HTTP answer (so not a 401): the
    // certificate is not trusted.
    let untrusted = registry_client(None)?
        .resolve_tag(&image, Some(&credential), Instant::now())
        .await
        .err();
    assert_eq!(
        untrusted.as_ref().map(|e| e.category()),
        Some("registry_resolve"),
        "{untrusted:?}"
    );
    let chain = format!("{untrusted:?}").to_lowercase();
    assert!(
        chain.contains("certificate"),
        "the cause names the certificate: {chain}"
    );
    Ok(())
}

fn docker_config_secret(harness: &Harness) -> Secret {
    let private = &harness.private;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", private.username, private.password));
    let config = serde_json::json!({
        "auths": { &private.addr: {
            "username": private.username,
            "password": private.password,
            "auth": auth,
        }}
    });
    Secret {
        metadata: ObjectMeta {
            name: Some("regcred".into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_owned(),
                ByteString(config.to_string().into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

#[tokio::test]
async fn workloads_are_measured_with_their_pull_secrets() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "private").await?;
    let pushed = push_private(
        &harness.private,
        &format!("e2e/{}/app", ns.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
    )
    .await?;
    let params = PostParams::default();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&params, &docker_config_secret(&harness))
        .await?;
    let puller = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("puller".into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "regcred".into(),
        }]),
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&params, &puller)
        .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let enabled = [("freshen.dev/refresh", "enabled")];
    for (name, pod_secret, account) in [
        ("via-pod-secret", true, None),
        ("via-service-account", false, Some("puller")),
        ("no-secret", false, None),
    ] {
        let mut d = deployment(name, &pushed.pinned(), 1, &enabled)?;
        let spec = d
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .ok_or_else(|| anyhow::anyhow!("no pod spec"))?;
        if pod_secret {
            spec.image_pull_secrets = Some(vec![LocalObjectReference {
                name: "regcred".into(),
            }]);
        }
        spec.service_account_name = account.map(str::to_owned);
        deployments.create(&params, &d).await?;
        wait_ready_pods(&client, &ns.name, name, 1, Duration::from_secs(60)).await?;
    }

    let ca = harness.private.ca_file.display().to_string();
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "1m", "--registry-ca-file", &ca],
    )
    .await?;
    for workload in ["via-pod-secret", "via-service-account"] {
        let age = format!(
            r#"freshen_image_age_seconds{{namespace="{}",workload="{workload}"}}"#,
            ns.name
        );
        let samples = await_series(&harness.prometheus_url, &age, harness.scrape_interval).await?;
        assert!(
            (samples[0].value - TEN_DAYS).abs() < 120.0,
            "{workload}: {samples:?}"
        );
    }

    // The report reads the same secrets; the workload without one gets a
    // row that says why, and the report still completes.
    let out = report(
        &harness,
        &["-n", &ns.name, "-o", "json", "--registry-ca-file", &ca],
    )?;
    assert_eq!(
        out.status.code(),
        Some(0),
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
    for workload in ["via-pod-secret", "via-service-account"] {
        let age = row(workload)["imageAgeSeconds"]
            .as_f64()
            .unwrap_or_default();
        assert!(
            (age - TEN_DAYS).abs() < 120.0,
            "{workload}: {}",
            row(workload)
        );
    }
    let blocked = row("no-secret");
    assert!(blocked["imageAgeSeconds"].is_null(), "{blocked}");
    let problems = blocked["problems"].to_string();
    let registry = &harness.private.addr;
    assert!(
        problems.contains(&format!("401 from {registry}"))
            && problems.contains(&format!(
                "the workload names no pull secret (pod spec or ServiceAccount imagePullSecrets) \
                 with credentials for {registry}"
            )),
        "the row says who refused and why: {problems}"
    );
    Ok(())
}

/// A second release of the chart, uninstalled when dropped.
struct Release<'a> {
    harness: &'a Harness,
    name: String,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self
            .harness
            .helm(&["uninstall", &self.name, "--namespace", OPERATOR_NAMESPACE]);
    }
}

#[tokio::test]
async fn with_secret_reading_restricted_a_private_image_elsewhere_is_reported_unreadable()
-> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let allowed = TestNamespace::create(&harness, &client, "secrets-allowed").await?;
    let denied = TestNamespace::create(&harness, &client, "secrets-denied").await?;
    let pushed = push_private(
        &harness.private,
        &format!("e2e/{}/app", allowed.name),
        "v1",
        &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
    )
    .await?;
    let params = PostParams::default();
    for ns in [&allowed.name, &denied.name] {
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&params, &docker_config_secret(&harness))
            .await?;
        let mut d = deployment(
            "app",
            &pushed.pinned(),
            1,
            &[("freshen.dev/enabled", "true")],
        )?;
        if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.image_pull_secrets = Some(vec![LocalObjectReference {
                name: "regcred".into(),
            }]);
        }
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&params, &d)
            .await?;
        wait_ready_pods(&client, ns, "app", 1, Duration::from_secs(60)).await?;
    }

    // The chart again, as a release whose identity may read the Secrets of
    // one namespace only (the cluster-wide pieces belong to the harness'
    // release).
    let release = Release {
        harness: &harness,
        name: format!("restricted-{:08x}", freshen_e2e::rand_suffix()),
    };
    let chart = freshen_e2e::repo_root().join("charts/freshen");
    let installed = harness.helm(&[
        "install",
        &release.name,
        chart.to_str().unwrap_or_default(),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--set",
        "crds.enabled=false,admissionPolicies.enabled=false,replicaCount=0",
        "--set",
        "dashboard.enabled=false,podDisruptionBudget.enabled=false",
        "--set",
        "secrets.read=namespaces",
        "--set",
        &format!("secrets.namespaces={{{}}}", allowed.name),
        "--wait",
    ])?;
    anyhow::ensure!(
        installed.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let account = format!("{}-freshen", release.name);
    let kubeconfig = harness.kubeconfig_for(OPERATOR_NAMESPACE, &account)?;

    // The identity itself: Secrets of the allowed namespace only.
    let restricted = Harness::client_from(&kubeconfig).await?;
    Api::<Secret>::namespaced(restricted.clone(), &allowed.name)
        .get("regcred")
        .await?;
    let refused = Api::<Secret>::namespaced(restricted, &denied.name)
        .get("regcred")
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
        "{refused:?}"
    );

    // The report run as that identity: the allowed namespace's workload is
    // measured; the other's row says the pull secret could not be read.
    let ca = harness.private.ca_file.display().to_string();
    let rows = |namespace: &str| -> anyhow::Result<serde_json::Value> {
        let out = report_as(
            &harness,
            &kubeconfig,
            &["-n", namespace, "-o", "json", "--registry-ca-file", &ca],
        )?;
        anyhow::ensure!(
            out.status.code() == Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(json["rows"][0].clone())
    };
    let measured = rows(&allowed.name)?;
    let age = measured["imageAgeSeconds"].as_f64().unwrap_or_default();
    assert!((age - TEN_DAYS).abs() < 120.0, "{measured}");
    let unreadable = rows(&denied.name)?;
    assert!(unreadable["imageAgeSeconds"].is_null(), "{unreadable}");
    let problems = unreadable["problems"].to_string();
    assert!(
        problems.contains("imagePullSecret regcred not read") && problems.contains("forbidden"),
        "the row says the pull secret could not be read: {problems}"
    );
    assert!(
        problems.contains(&format!(
            "401 from {}: it asks for credentials",
            harness.private.addr
        )) && problems.contains("freshen could not use the pull secret regcred"),
        "and that this is why the registry refused: {problems}"
    );
    Ok(())
}
