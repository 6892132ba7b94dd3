//! The verification gate, end to end with the real cosign CLI: a policy's
//! `spec.verify` lets only digests signed by its authorities be rolled
//! out; an unsigned digest, or one signed by another key, is held with a
//! Warning naming why, and no Refresh is made. A namespace's own policy
//! cannot loosen a ClusterRefreshPolicy's gate.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{KeyAuthoritySpec, KeySpec, VerifyMode, VerifySpec};
use freshen_api::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyRefresh, Refresh,
    RefreshPolicy, RefreshPolicySpec,
};
use freshen_e2e::cosign::{self, KeyPair};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

fn keys_dir() -> anyhow::Result<PathBuf> {
    let dir = freshen_e2e::repo_root()
        .join("target/e2e-cosign")
        .join(format!("{:08x}", freshen_e2e::rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn verify(mode: VerifyMode, name: &str, keys: &KeyPair) -> VerifySpec {
    VerifySpec {
        mode: Some(mode),
        authorities: vec![KeyAuthoritySpec {
            name: name.into(),
            key: KeySpec {
                pem: keys.public_pem.clone(),
            },
        }],
    }
}

fn web() -> LabelSelector {
    LabelSelector {
        match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
        ..LabelSelector::default()
    }
}

/// An image in `repo` built two days ago, deployed as `name` (labelled
/// `tier=web`) pinned to its digest under the tag `stable`.
async fn deploy_old(
    harness: &Harness,
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
) -> anyhow::Result<()> {
    let old = push(
        &harness.registry,
        repo,
        "stable",
        &ImageSpec::built_at(Utc::now() - TimeDelta::hours(48)),
    )
    .await?;
    let deploy = deployment_with(
        name,
        &old.pinned(),
        1,
        serde_json::json!({"metadata": {"labels": {"tier": "web"}}}),
    )?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deploy)
        .await?;
    wait_ready_pods(client, ns, name, 1, Duration::from_secs(60)).await?;
    Ok(())
}

/// A new digest for `repo`'s `stable` tag, signed by `signer` (if any)
/// before the tag names it, as a pipeline that signs what it builds would.
async fn release(
    harness: &Harness,
    dir: &std::path::Path,
    repo: &str,
    signer: Option<&KeyPair>,
) -> anyhow::Result<String> {
    release_with(harness, dir, repo, signer, false).await
}

/// [`release`], with the signature altered after signing when `tampered`.
async fn release_with(
    harness: &Harness,
    dir: &std::path::Path,
    repo: &str,
    signer: Option<&KeyPair>,
    tampered: bool,
) -> anyhow::Result<String> {
    let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::hours(1));
    spec.content = format!("{repo} new");
    let candidate = push(&harness.registry, repo, "candidate", &spec).await?;
    if let Some(keys) = signer {
        let pinned = format!("{}/{repo}@{}", harness.registry, candidate.digest);
        cosign::sign(harness, dir, keys, &pinned, false)?;
    }
    if tampered {
        tamper(harness, repo, &candidate.digest).await?;
    }
    push(&harness.registry, repo, "stable", &spec).await?;
    Ok(candidate.digest)
}

/// Alters the payload of the bundle cosign stored for `digest` in `repo`
/// (behind the referrers fallback tag) and stores it back, as an attacker
/// with push rights would: the signature no longer matches.
async fn tamper(harness: &Harness, repo: &str, digest: &str) -> anyhow::Result<()> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v2/{repo}", harness.registry);
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let get = |url: String, accept: &'static str| {
        let http = http.clone();
        async move {
            let body = http
                .get(url)
                .header("accept", accept)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&body)?)
        }
    };
    let tag = digest.replace(':', "-");
    let mut index = get(format!("{base}/manifests/{tag}"), INDEX).await?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut manifest = get(format!("{base}/manifests/{manifest_digest}"), MANIFEST).await?;
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut bundle = get(format!("{base}/blobs/{layer_digest}"), "*/*").await?;
    let payload = STANDARD.decode(
        bundle["dsseEnvelope"]["payload"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let mut statement: serde_json::Value = serde_json::from_slice(&payload)?;
    statement["predicate"] = serde_json::json!({"note": "changed after signing"});
    bundle["dsseEnvelope"]["payload"] = STANDARD.encode(serde_json::to_vec(&statement)?).into();
    let blob = serde_json::to_vec(&bundle)?;
    let blob_digest = freshen_e2e::image::sha256(&blob);
    let upload = http
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await?
        .error_for_status()?;
    let location = upload
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let location = match location.starts_with("http") {
        true => location,
        false => format!("http://{}{location}", harness.registry),
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    http.put(format!("{location}{separator}digest={blob_digest}"))
        .body(blob.clone())
        .send()
        .await?
        .error_for_status()?;
    manifest["layers"][0]["digest"] = blob_digest.into();
    manifest["layers"][0]["size"] = blob.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let new_manifest = freshen_e2e::image::sha256(&manifest_bytes);
    http.put(format!("{base}/manifests/{new_manifest}"))
        .header("content-type", MANIFEST)
        .body(manifest_bytes.clone())
        .send()
        .await?
        .error_for_status()?;
    index["manifests"][0]["digest"] = new_manifest.into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    http.put(format!("{base}/manifests/{tag}"))
        .header("content-type", INDEX)
        .body(serde_json::to_vec(&index)?)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn refreshes_of(client: &Client, ns: &str, workload: &str) -> anyhow::Result<usize> {
    Ok(Api::<Refresh>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|r| r.spec.workload == workload)
        .count())
}

#[tokio::test]
async fn only_digests_signed_by_a_trusted_key_are_rolled_out() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "verify").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let intruder = cosign::generate_key_pair(&harness, &dir, "intruder")?;
    let policy = RefreshPolicy::new(
        "signed-only",
        RefreshPolicySpec {
            selector: web(),
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh {
                follow_tag: Some(true),
                verify: Some(verify(VerifyMode::Enforce, "platform", &platform)),
                ..PolicyRefresh::default()
            },
            pipelines: Default::default(),
        },
    );
    Api::<RefreshPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await?;
    let repo = |w: &str| format!("e2e/{}/{w}", ns.name);
    for w in ["signed", "unsigned", "foreign", "tampered"] {
        deploy_old(&harness, &client, &ns.name, w, &repo(w)).await?;
    }
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    release(&harness, &dir, &repo("signed"), Some(&platform)).await?;
    release(&harness, &dir, &repo("unsigned"), None).await?;
    release(&harness, &dir, &repo("foreign"), Some(&intruder)).await?;
    release_with(&harness, &dir, &repo("tampered"), Some(&platform), true).await?;

    // Signed by the trusted key: refreshed.
    wait_for(
        "a Refresh of the signed workload",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            match refreshes_of(&client, &ns.name, "signed").await? {
                0 => anyhow::bail!("none yet"),
                n => Ok(Some(n)),
            }
        },
    )
    .await?;
    let signed = Api::<Refresh>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|r| r.spec.workload == "signed")
        .ok_or_else(|| anyhow::anyhow!("the signed workload's Refresh"))?;
    assert_eq!(
        signed.spec.verification.as_deref(),
        Some("signed by platform"),
        "the Refresh records who signed what it rolls out"
    );
    // Unsigned: held, and says so.
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "unsigned",
        "SignatureMissing",
    )
    .await?;
    assert!(note.contains("not signed"), "{note}");
    assert!(note.contains("RefreshPolicy/"), "{note}");
    // Signed by a key no policy trusts: held, naming the authorities tried.
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "foreign",
        "SignatureUntrusted",
    )
    .await?;
    assert!(note.contains("platform"), "{note}");
    // Signed by the trusted key, then altered: invalid, naming the key.
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "tampered",
        "SignatureInvalid",
    )
    .await?;
    assert!(note.contains("authority platform's key"), "{note}");
    for held in ["unsigned", "foreign", "tampered"] {
        assert_eq!(refreshes_of(&client, &ns.name, held).await?, 0, "{held}");
    }
    Ok(())
}

#[tokio::test]
async fn a_namespace_cannot_loosen_a_cluster_policys_gate() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let admin = harness.client().await?;
    let ns = TestNamespace::create(&harness, &admin, "verify-tenant").await?;
    let tenant = ns.tenant_client(&harness, &admin).await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let team = cosign::generate_key_pair(&harness, &dir, "team")?;
    // The platform's gate, for this namespace.
    let label = format!("verify-{}", ns.name);
    Api::<Namespace>::all(admin.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"freshen-e2e/gate": label}}})),
        )
        .await?;
    let cluster = format!("gate-{}", ns.name);
    let _cleanup = harness.delete_on_drop("clusterrefreshpolicy", &cluster);
    Api::<ClusterRefreshPolicy>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRefreshPolicy::new(
                &cluster,
                ClusterRefreshPolicySpec {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some([("freshen-e2e/gate".to_owned(), label)].into()),
                        ..LabelSelector::default()
                    }),
                    selector: None,
                    limits: PolicyLimits::default(),
                    refresh: PolicyRefresh {
                        follow_tag: Some(true),
                        verify: Some(verify(VerifyMode::Enforce, "platform", &platform)),
                        ..PolicyRefresh::default()
                    },
                    pipelines: Default::default(),
                },
            ),
        )
        .await?;
    // The tenant's own policy: Audit, trusting the team's key.
    let own = RefreshPolicy::new(
        "ours",
        RefreshPolicySpec {
            selector: web(),
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh {
                follow_tag: Some(true),
                verify: Some(verify(VerifyMode::Audit, "team", &team)),
                ..PolicyRefresh::default()
            },
            pipelines: Default::default(),
        },
    );
    Api::<RefreshPolicy>::namespaced(tenant.clone(), &ns.name)
        .create(&PostParams::default(), &own)
        .await?;
    let repo = format!("e2e/{}/app", ns.name);
    deploy_old(&harness, &tenant, &ns.name, "app", &repo).await?;
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    // Signed by the team only: the cluster's requirement still holds.
    release(&harness, &dir, &repo, Some(&team)).await?;
    let note = await_warning(&admin, &ns.name, "Deployment", "app", "SignatureUntrusted").await?;
    assert!(
        note.contains(&format!("ClusterRefreshPolicy/{cluster}")),
        "{note}"
    );
    assert_eq!(refreshes_of(&admin, &ns.name, "app").await?, 0);
    Ok(())
}
