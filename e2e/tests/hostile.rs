//! Hostile input, end to end: what a tenant with rights in one namespace can
//! write, and what freshen (which holds cluster-wide rights) makes of it.
//!
//! Each row names the input and asserts the outcome a user sees (the API
//! server's rejection naming the field, a Warning Event, a report row) and
//! that nothing else changed. One operator serves every row; at the end it
//! is still the same process, so no row crashed it.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, PrometheusCheck, RolloutSpec};
use freshen_api::{PolicyRefresh, Refresh, RefreshPolicy, RefreshPolicySpec, RefreshSpec};
use freshen_core::rollout::{Failure, Phase, Reason, Settings};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::{Operator, report};
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

/// The test's namespace, clients and image repository.
struct Tenant {
    harness: Harness,
    admin: Client,
    ns: TestNamespace,
    repo: String,
}

impl Tenant {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.ns.name)
    }

    fn refreshes(&self) -> Api<Refresh> {
        Api::namespaced(self.admin.clone(), &self.ns.name)
    }

    async fn deploy(
        &self,
        name: &str,
        image: &str,
        annotations: serde_json::Value,
    ) -> anyhow::Result<Deployment> {
        let deploy = deployment_with(
            name,
            image,
            1,
            serde_json::json!({"metadata": {"annotations": annotations}}),
        )?;
        let created = self
            .deployments()
            .create(&PostParams::default(), &deploy)
            .await?;
        wait_ready_pods(&self.admin, &self.ns.name, name, 1, Duration::from_secs(60)).await?;
        Ok(created)
    }

    /// A client for ServiceAccount `tenant` of this namespace, which may
    /// write Refreshes (and their status) here and read Deployments: what a
    /// namespace's own role could grant.
    async fn tenant_client(&self) -> anyhow::Result<Client> {
        let ns = &self.ns.name;
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("tenant".into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await?;
        let role = Role {
            metadata: ObjectMeta {
                name: Some("refresh-writer".into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec!["freshen.dev".into()]),
                    resources: Some(vec!["refreshes".into(), "refreshes/status".into()]),
                    verbs: ["get", "list", "create", "update", "patch", "delete"]
                        .map(String::from)
                        .to_vec(),
                    ..PolicyRule::default()
                },
                PolicyRule {
                    api_groups: Some(vec!["apps".into()]),
                    resources: Some(vec!["deployments".into()]),
                    verbs: ["get", "list"].map(String::from).to_vec(),
                    ..PolicyRule::default()
                },
            ]),
        };
        Api::<Role>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &role)
            .await?;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("refresh-writer".into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: "refresh-writer".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "tenant".into(),
                namespace: Some(ns.clone()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await?;
        Harness::client_from(&self.harness.kubeconfig_for(ns, "tenant")?).await
    }
}

/// A Refresh that asks freshen to run `to_image` in `workload`'s container
/// `app`, owned by it, as a hand-written one would.
fn refresh_for(workload: &Deployment, from: &str, to_image: &str, settings: Settings) -> Refresh {
    let digest = to_image
        .split_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let mut refresh = Refresh::new(
        &format!("{}-app-handmade", workload.name_any()),
        RefreshSpec {
            workload: workload.name_any(),
            workload_kind: None,
            container: "app".into(),
            reason: Reason::NewDigest,
            from_image: from.into(),
            to_image: to_image.into(),
            from_digest: "unknown".into(),
            to_digest: digest.chars().skip(7).take(12).collect(),
            digest,
            rollout: settings,
            template_fingerprint: None,
            verification: None,
        },
    );
    refresh.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: workload.name_any(),
        uid: workload.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    refresh
}

/// The API server's message for a rejected write, or a failure when the
/// write was accepted.
fn rejection<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> anyhow::Result<String> {
    match result {
        Ok(accepted) => anyhow::bail!("the API server accepted it: {accepted:?}"),
        Err(kube::Error::Api(e)) => Ok(format!("{} ({})", e.message, e.code)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn hostile_input_is_refused_with_a_reason_and_changes_nothing() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let ns = TestNamespace::create(&harness, &admin, "hostile").await?;
    let t = Tenant {
        repo: format!("e2e/{}", ns.name),
        harness,
        admin,
        ns,
    };
    let built = Utc::now() - TimeDelta::hours(48);
    let v1 = push(
        &t.harness.registry,
        &t.repo,
        "stable",
        &ImageSpec::built_at(built),
    )
    .await?;
    let other = push(
        &t.harness.registry,
        &format!("{}-other", t.repo),
        "evil",
        &ImageSpec::built_at(built - TimeDelta::hours(1)),
    )
    .await?;
    let mut operator = Operator::start(
        &t.harness,
        &["--poll-interval", "2s", "--namespace", &t.ns.name],
    )
    .await?;
    let pid = operator.pid();

    // Row: durations past 100 years in annotations. They used to panic the
    // operator (and `freshen report`) in chrono's arithmetic.
    for (workload, key, value) in [
        ("huge-image-age", "freshen.dev/max-image-age", "9999999999w"),
        (
            "huge-container-age",
            "freshen.dev/max-container-age",
            "36526d",
        ),
    ] {
        t.deploy(
            workload,
            &v1.pinned(),
            serde_json::json!({"freshen.dev/refresh": "enabled", key: value}),
        )
        .await?;
        let note = await_warning(
            &t.admin,
            &t.ns.name,
            "Deployment",
            workload,
            "InvalidAnnotation",
        )
        .await?;
        assert!(note.contains(key), "{workload}: {note}");
        assert!(note.contains("100 years"), "{workload}: {note}");
    }

    // Row: images and bases that point freshen at the cloud metadata
    // address. Refused before any request, and the report says so.
    t.deploy(
        "metadata",
        "169.254.169.254/latest/meta-data:1",
        serde_json::json!({"freshen.dev/refresh": "enabled"}),
    )
    .await?;
    t.deploy(
        "smuggled-base",
        &v1.pinned(),
        serde_json::json!({
            "freshen.dev/refresh": "enabled",
            "freshen.dev/base-image": "169.254.169.254/evil:1",
        }),
    )
    .await?;
    let out = wait_for(
        "the report to show both refused registries",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let out = report(&t.harness, &["-n", &t.ns.name, "-o", "json"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let refused = text.matches("169.254.169.254 not allowed").count();
            if refused >= 2 {
                Ok(Some(out))
            } else {
                anyhow::bail!("{refused} refusals in {text}")
            }
        },
    )
    .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "report: {:?} {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("huge-image-age"), "{text}");
    assert!(
        text.contains("link-local address (cloud metadata)"),
        "{text}"
    );
    for workload in ["metadata", "smuggled-base"] {
        let note = await_warning(
            &t.admin,
            &t.ns.name,
            "Deployment",
            workload,
            "RegistryNotAllowed",
        )
        .await?;
        assert!(note.contains("169.254.169.254 not allowed"), "{note}");
    }

    // Row: the same addresses written as the URL parser (and so the HTTP
    // client) reads them, not as libc does: hex, octal, a single number, a
    // short form, IPv4-mapped IPv6. Each is judged as the address it is
    // (loopback 127.0.0.2 is not the allowed 127.0.0.1; 169.254.169.254 is
    // the metadata service) and refused before any request.
    let forms = [
        ("hex", "0x7f.0x.0x.0x2:5000/app:1"),
        ("octal", "0177.0.0.02:5000/app:1"),
        ("number", "2130706434:5000/app:1"),
        ("short", "127.2:5000/app:1"),
        ("mapped", "[::ffff:7f00:2]:5000/app:1"),
        ("metadata-hex", "0xa9fea9fe:80/latest:1"),
        ("metadata-number", "2852039166:80/latest:1"),
        ("metadata-short", "169.254.43518:80/latest:1"),
    ];
    for (name, image) in forms {
        t.deploy(
            &format!("form-{name}"),
            image,
            serde_json::json!({"freshen.dev/refresh": "enabled"}),
        )
        .await?;
    }
    for (name, image) in forms {
        let note = await_warning(
            &t.admin,
            &t.ns.name,
            "Deployment",
            &format!("form-{name}"),
            "RegistryNotAllowed",
        )
        .await?;
        assert!(note.contains("not allowed"), "{image}: {note}");
        assert!(
            note.contains("loopback") || note.contains("link-local"),
            "{image} judged as the address it is: {note}"
        );
    }

    // Row: policies with oversized values are refused by the API server,
    // naming the field.
    let policies: Api<RefreshPolicy> = Api::namespaced(t.admin.clone(), &t.ns.name);
    let selector = LabelSelector {
        match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
        ..LabelSelector::default()
    };
    let mut huge_age = RefreshPolicy::new(
        "huge-age",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: selector.clone(),
            limits: Default::default(),
            refresh: PolicyRefresh::default(),
        },
    );
    huge_age.spec.limits.max_image_age = Some("36526d".into());
    let msg = rejection(policies.create(&PostParams::default(), &huge_age).await)?;
    assert!(msg.contains("maxImageAge"), "{msg}");
    assert!(msg.contains("100 years"), "{msg}");
    let huge_weight = RefreshPolicy::new(
        "huge-weight",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: selector.clone(),
            limits: Default::default(),
            refresh: PolicyRefresh {
                rollout: Some(RolloutSpec {
                    canary_weight: Some(u32::MAX),
                    ..RolloutSpec::default()
                }),
                ..PolicyRefresh::default()
            },
        },
    );
    let msg = rejection(policies.create(&PostParams::default(), &huge_weight).await)?;
    assert!(msg.contains("canaryWeight"), "{msg}");

    // Row: a namespaced policy whose canary query reads every tenant's
    // series. It is not Ready, names the field, and governs nothing.
    let mut snooping = RefreshPolicy::new(
        "snooping",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: LabelSelector {
                match_labels: Some([("app".to_owned(), "nobody".to_owned())].into()),
                ..LabelSelector::default()
            },
            limits: Default::default(),
            refresh: PolicyRefresh::default(),
        },
    );
    snooping.spec.refresh.rollout = Some(RolloutSpec {
        analysis: Some(AnalysisSpec {
            prometheus: Some(PrometheusCheck {
                query: "sum(container_memory_working_set_bytes)".into(),
                max: 1.0,
                on_no_data: None,
                max_consecutive_errors: None,
            }),
            ..AnalysisSpec::default()
        }),
        ..RolloutSpec::default()
    });
    policies.create(&PostParams::default(), &snooping).await?;
    let message = wait_for(
        "the snooping policy to be Ready=False",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let status = policies.get("snooping").await?.status.unwrap_or_default();
            Ok(status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message)))
        },
    )
    .await?;
    assert!(
        message.starts_with("InvalidSpec: spec.rollout.analysis.prometheus.query"),
        "{message}"
    );
    assert!(
        message.contains(&format!("namespace=\"{}\"", t.ns.name)),
        "{message}"
    );

    // Row: a Deployment that never opted in, and a tenant who may write
    // Refreshes but not Deployments. The admission policy refuses the
    // tenant's Refresh and its status writes.
    let victim = t
        .deploy("victim", &v1.pinned(), serde_json::json!({}))
        .await?;
    let tenant = t.tenant_client().await?;
    let forged = refresh_for(&victim, &v1.pinned(), &other.pinned(), Settings::default());
    let msg = rejection(
        Api::<Refresh>::namespaced(tenant.clone(), &t.ns.name)
            .create(&PostParams::default(), &forged)
            .await,
    )?;
    assert!(msg.contains("only freshen creates Refreshes"), "{msg}");
    assert!(msg.contains("system:serviceaccount:"), "{msg}");

    // Row: numbers past their bounds in a Refresh, even from an identity
    // admission lets through (a cluster admin).
    let unbounded = refresh_for(
        &victim,
        &v1.pinned(),
        &v1.pinned(),
        Settings {
            canary_weight_percent: u32::MAX,
            ..Settings::default()
        },
    );
    let msg = rejection(
        t.refreshes()
            .create(&PostParams::default(), &unbounded)
            .await,
    )?;
    assert!(msg.contains("canaryWeightPercent"), "{msg}");

    // Row: a Refresh that got past admission (an admin's) but names an
    // image of another repository: the executor verifies it against the
    // workload and fails it without touching anything.
    let before = t.deployments().get("victim").await?;
    let created = t
        .refreshes()
        .create(&PostParams::default(), &forged)
        .await?;
    let failed = wait_for(
        "the hand-made Refresh to fail as untrusted",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let api = t.refreshes();
            let name = created.name_any();
            async move {
                let r = api.get(&name).await?;
                let p = r.progress();
                Ok((p.phase == Phase::Failed).then_some(p))
            }
        },
    )
    .await?;
    assert_eq!(failed.failure, Some(Failure::Untrusted));
    assert!(
        failed.message.contains("not in the repository"),
        "{}",
        failed.message
    );
    let after = t.deployments().get("victim").await?;
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "the victim's spec is unchanged"
    );
    assert_eq!(
        after.annotations().get("freshen.dev/rejected-digests"),
        None,
        "no digest was recorded as rejected"
    );
    assert!(
        t.deployments().get_opt("victim-canary").await?.is_none(),
        "no canary ran the foreign image"
    );

    // Row: the spec of an existing Refresh is frozen, for everyone.
    let edit = serde_json::json!({"spec": {"toImage": v1.pinned()}});
    let msg = rejection(
        t.refreshes()
            .patch(
                &created.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&edit),
            )
            .await,
    )?;
    assert!(msg.contains("frozen"), "{msg}");

    // Row: the tenant's own Deployment named like the canary. freshen
    // never deletes it: the refresh waits with a Warning that says why.
    policies
        .create(
            &PostParams::default(),
            &RefreshPolicy::new(
                "web",
                RefreshPolicySpec {
                    pipelines: Default::default(),
                    selector,
                    limits: Default::default(),
                    refresh: PolicyRefresh {
                        follow_tag: Some(true),
                        rollout: Some(RolloutSpec {
                            analysis: Some(AnalysisSpec {
                                interval: Some("1s".into()),
                                iterations: Some(1),
                                ..AnalysisSpec::default()
                            }),
                            ..RolloutSpec::default()
                        }),
                        ..PolicyRefresh::default()
                    },
                },
            ),
        )
        .await?;
    t.deploy("web", &v1.pinned(), serde_json::json!({})).await?;
    let squatter = t
        .deploy("web-canary", &v1.pinned(), serde_json::json!({}))
        .await?;
    push(
        &t.harness.registry,
        &t.repo,
        "stable",
        &ImageSpec::built_at(built + TimeDelta::hours(1)),
    )
    .await?;
    let refresh = wait_for(
        "a Refresh of web",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let list = t.refreshes().list(&Default::default()).await?;
            Ok(list.items.into_iter().find(|r| r.spec.workload == "web"))
        },
    )
    .await?;
    let note = await_warning(
        &t.admin,
        &t.ns.name,
        "Refresh",
        &refresh.name_any(),
        "CanaryNameTaken",
    )
    .await?;
    assert!(note.contains("web-canary"), "{note}");
    let still = t.deployments().get("web-canary").await?;
    assert_eq!(still.metadata.uid, squatter.metadata.uid, "never deleted");
    assert!(still.metadata.deletion_timestamp.is_none());
    assert_eq!(
        t.refreshes()
            .get(&refresh.name_any())
            .await?
            .progress()
            .phase,
        Phase::Pending
    );

    // Nothing above crashed the operator.
    assert_eq!(operator.pid(), pid);
    assert!(
        operator.running()?,
        "the operator exited; log: {}",
        operator.log.display()
    );
    Ok(())
}
