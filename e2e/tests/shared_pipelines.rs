//! A ClusterRefreshPolicy's pipeline is shared by every namespace it
//! governs, so a tenant must not be able to steer it: not to rebuild
//! another team's image, not onto a base of the tenant's choosing, not
//! through a pipeline the policy keeps for itself, not at will through a
//! tight `maxImageAge` of its own. Each attack runs as the tenant (a
//! ServiceAccount with `admin` in its namespace only) against the real
//! control plane, registry and job controller; the refusal is a Warning
//! Event naming why, and nothing is built. The same pipeline still
//! rebuilds the tenant's own image, on the base that image records.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::pipeline::{JobPipeline, Pipeline, RebuildOn, RebuildSettings};
use freshen_api::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyPipelines, PolicyRefresh,
    Rebuild,
};
use freshen_core::rollout::Reason;
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The platform team's policy: every workload of `tenant` is rebuilt when
/// its base moves or it is older than 30 days, by a Job pipeline that
/// declares the images under `e2e/{namespace}/` and runs its Jobs in
/// `tenant` (where the operator under test watches). A second pipeline,
/// `privileged`, is the platform's own and not selectable.
fn platform_policy(name: &str, registry: &str, tenant: &str) -> ClusterRefreshPolicy {
    let job = |args: serde_json::Value| JobPipeline {
        namespace: Some(tenant.to_owned()),
        template: json!({
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "build", "image": "registry.example/kaniko:1",
                                "args": args}]
            }}
        }),
    };
    let pipeline = |name: &str, args: serde_json::Value| Pipeline {
        name: name.into(),
        job: Some(job(args)),
        tekton: None,
        webhook: None,
        images: vec![format!("{registry}/e2e/{{namespace}}/**")],
        allow_annotated_base: None,
    };
    ClusterRefreshPolicy::new(
        name,
        ClusterRefreshPolicySpec {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![tenant.to_owned()]),
                }]),
                match_labels: None,
            }),
            selector: None,
            limits: PolicyLimits {
                max_image_age: Some("30d".into()),
                ..PolicyLimits::default()
            },
            refresh: PolicyRefresh::default(),
            pipelines: PolicyPipelines {
                pipelines: vec![
                    pipeline(
                        "build",
                        json!([
                            "--destination=$(image)",
                            "--build-arg=BASE=$(base.name)@$(base.newDigest)",
                            "--for=$(namespace)/$(workload)"
                        ]),
                    ),
                    pipeline("privileged", json!(["--privileged", "$(image)"])),
                ],
                rebuild: Some(RebuildSettings {
                    pipeline: "build".into(),
                    selectable: None,
                    triggers: Some(vec![RebuildOn::ImageTooOld, RebuildOn::BaseMoved]),
                    timeout: Some("2m".into()),
                    backoff: Some("1m".into()),
                }),
            },
        },
    )
}

/// Creates Deployment `name` running `image` with `annotations`, as the
/// tenant, and waits for its pod.
async fn deploy_as(
    tenant: &Client,
    ns: &str,
    name: &str,
    image: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<()> {
    let mut annotations = annotations;
    annotations["freshen.dev/refresh"] = json!("enabled");
    let deploy = deployment_with(
        name,
        image,
        1,
        json!({"metadata": {"annotations": annotations}}),
    )?;
    Api::<Deployment>::namespaced(tenant.clone(), ns)
        .create(&PostParams::default(), &deploy)
        .await?;
    wait_ready_pods(tenant, ns, name, 1, Duration::from_secs(60)).await?;
    Ok(())
}

/// An image of `repo:tag` built `days` ago on `base`.
async fn image_on(
    harness: &Harness,
    repo: &str,
    tag: &str,
    days: i64,
    base: &Pushed,
) -> anyhow::Result<Pushed> {
    let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::days(days));
    spec.base = Some((base.tagged.clone(), base.digest.clone()));
    push(&harness.registry, repo, tag, &spec).await
}

#[tokio::test]
async fn a_tenant_cannot_steer_a_shared_pipeline() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let payments = TestNamespace::create(&harness, &admin, "payments").await?;
    let ns = TestNamespace::create(&harness, &admin, "tenant-steer").await?;
    let tenant = ns.tenant_client(&harness, &admin).await?;
    let policy = format!("platform-{}", ns.name);
    let _cleanup = harness.delete_on_drop("clusterrefreshpolicy", &policy);
    Api::<ClusterRefreshPolicy>::all(admin.clone())
        .create(
            &PostParams::default(),
            &platform_policy(&policy, &harness.registry, &ns.name),
        )
        .await?;

    // The payments team's image on its base, and the tenant's own image on
    // its base; both bases are patched once the operator runs.
    let reg = |team: &str, repo: &str| format!("e2e/{team}/{repo}");
    let now = ImageSpec::built_at(Utc::now());
    let old = |days| ImageSpec::built_at(Utc::now() - TimeDelta::days(days));
    let payments_base = push(
        &harness.registry,
        &reg(&payments.name, "base"),
        "1",
        &old(10),
    )
    .await?;
    let theirs = image_on(
        &harness,
        &reg(&payments.name, "api"),
        "prod",
        5,
        &payments_base,
    )
    .await?;
    let own_base = push(&harness.registry, &reg(&ns.name, "base"), "1", &old(10)).await?;
    let own = image_on(&harness, &reg(&ns.name, "app"), "1", 5, &own_base).await?;
    // The base the tenant would like every image built on.
    let evil = push(&harness.registry, &reg(&ns.name, "evil"), "1", &now).await?;

    // 1. Another team's image, with a base of the tenant's choosing.
    deploy_as(
        &tenant,
        &ns.name,
        "steal",
        &theirs.pinned(),
        json!({"freshen.dev/base-image": evil.tagged}),
    )
    .await?;
    // 2. Its own image, on the tenant's chosen base instead of the recorded one.
    deploy_as(
        &tenant,
        &ns.name,
        "reroute",
        &own.pinned(),
        json!({"freshen.dev/base-image": evil.tagged}),
    )
    .await?;
    // 3. Rebuilds at will: a maxImageAge of one second.
    let young = push(&harness.registry, &reg(&ns.name, "young"), "1", &now).await?;
    deploy_as(
        &tenant,
        &ns.name,
        "at-will",
        &young.pinned(),
        json!({"freshen.dev/max-image-age": "1s"}),
    )
    .await?;
    // The tenant's own image as it is: what the shared pipeline is for.
    deploy_as(&tenant, &ns.name, "own", &own.pinned(), json!({})).await?;
    // 4. The platform's own pipeline.
    deploy_as(
        &tenant,
        &ns.name,
        "escalate",
        &own.pinned(),
        json!({"freshen.dev/pipeline": "privileged"}),
    )
    .await?;

    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    push(&harness.registry, &reg(&payments.name, "base"), "1", &now).await?;
    push(&harness.registry, &reg(&ns.name, "base"), "1", &now).await?;

    let warning = |name: &'static str, reason: &'static str| {
        let (admin, ns) = (admin.clone(), ns.name.clone());
        async move { await_warning(&admin, &ns, "Deployment", name, reason).await }
    };
    let note = warning("steal", "RebuildRefused").await?;
    assert!(
        note.contains(&format!(
            "{}/e2e/{}/api is not one of them",
            harness.registry, payments.name
        )),
        "{note}"
    );
    let note = warning("reroute", "RebuildRefused").await?;
    assert!(
        note.contains("comes from the freshen.dev/base-image annotation"),
        "{note}"
    );
    let note = warning("at-will", "RebuildRefused").await?;
    assert!(note.contains("maxImageAge set by annotation"), "{note}");
    let note = warning("escalate", "InvalidAnnotation").await?;
    assert!(
        note.contains("freshen.dev/pipeline") && note.contains("spec.rebuild.selectable"),
        "{note}"
    );

    // The same pipeline rebuilds the tenant's own image, on the base the
    // image records, for the tenant's namespace.
    let rebuilds: Api<Rebuild> = Api::namespaced(admin.clone(), &ns.name);
    let rebuild = wait_for(
        "the Rebuild of the tenant's own image",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let rebuilds = rebuilds.clone();
            async move {
                let all = rebuilds.list(&ListParams::default()).await?.items;
                let seen: Vec<String> = all.iter().map(|r| r.spec.image.clone()).collect();
                match all.into_iter().find(|r| r.spec.reason == Reason::BaseMoved) {
                    Some(r) => Ok(Some(r)),
                    None => anyhow::bail!("rebuilds: {seen:?}"),
                }
            }
        },
    )
    .await?;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns.name);
    let job = wait_for(
        "the rebuild's Job",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (jobs, name) = (jobs.clone(), rebuild.name_any());
            async move {
                let all = jobs.list(&ListParams::default()).await?.items;
                Ok(all.into_iter().find(|j| j.name_any().starts_with(&name)))
            }
        },
    )
    .await?;

    // Nothing else: one Rebuild, of the tenant's own image, and one Job,
    // built on the recorded base.
    let all = rebuilds.list(&ListParams::default()).await?.items;
    let images: Vec<&str> = all.iter().map(|r| r.spec.image.as_str()).collect();
    assert_eq!(
        images,
        [own.tagged.as_str()],
        "only the tenant's own image is rebuilt"
    );
    let args = job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default();
    assert_eq!(args[0], format!("--destination={}", own.tagged));
    assert!(
        args[1].starts_with(&format!("--build-arg=BASE={}@", own_base.tagged)),
        "{args:?}"
    );
    assert!(
        args[2].starts_with(&format!("--for={}/", ns.name)),
        "{args:?}"
    );
    let all_jobs = jobs.list(&ListParams::default()).await?.items;
    assert_eq!(
        all_jobs.len(),
        1,
        "one Job: {:?}",
        all_jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    Ok(())
}
