//! The verification gate, end to end with the real cosign CLI: a policy's
//! `spec.verify` lets only digests signed by its authorities be rolled
//! out; an unsigned digest, or one signed by another key, is held with a
//! Warning naming why, and no Refresh is made. A namespace's own policy
//! cannot loosen a ClusterRefreshPolicy's gate. Attestations (SLSA
//! provenance, vulnerability scans) made by `cosign attest` are checked
//! as the policy says, scans compared with the running digest's; Audit
//! mode rolls out and reports.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{
    AttestationSpec, KeyAuthoritySpec, KeyRef, KeySpec, KeylessSpec, UrgentWhen, VerifyMode,
    VerifySpec, VulnerabilitiesSpec,
};
use freshen_api::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyRefresh, Refresh,
    RefreshPolicy, RefreshPolicySpec,
};
use freshen_e2e::cosign::{self, KeyPair};
use freshen_e2e::image::{ImageSpec, push, push_index};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
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
            key: Some(KeySpec::inline(keys.public_pem.clone())),
            keyless: None,
        }],
        ..VerifySpec::default()
    }
}

fn web() -> LabelSelector {
    LabelSelector {
        match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
        ..LabelSelector::default()
    }
}

/// An image in `repo` built two days ago, deployed as `name` (labelled
/// `tier=web`) pinned to its digest under the tag `stable`; its reference
/// by digest.
async fn deploy_old(
    harness: &Harness,
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
) -> anyhow::Result<String> {
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
    Ok(format!("{}/{repo}@{}", harness.registry, old.digest))
}

/// A new digest for `repo`'s `stable` tag, signed by `signer` (if any)
/// before the tag names it, as a pipeline that signs what it builds would.
async fn release(
    harness: &Harness,
    dir: &std::path::Path,
    repo: &str,
    signer: Option<&KeyPair>,
) -> anyhow::Result<String> {
    release_with(harness, dir, repo, signer, false, &[]).await
}

/// [`release`], with the signature altered after signing when `tampered`,
/// and each of `attestations` (cosign's `--type`, the predicate) made by
/// the signer.
async fn release_with(
    harness: &Harness,
    dir: &std::path::Path,
    repo: &str,
    signer: Option<&KeyPair>,
    tampered: bool,
    attestations: &[(&str, serde_json::Value)],
) -> anyhow::Result<String> {
    let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::hours(1));
    spec.content = format!("{repo} new");
    let candidate = push(&harness.registry, repo, "candidate", &spec).await?;
    if let Some(keys) = signer {
        let pinned = format!("{}/{repo}@{}", harness.registry, candidate.digest);
        cosign::sign(harness, dir, keys, &pinned, false)?;
        for (kind, predicate) in attestations {
            cosign::attest(harness, dir, keys, &pinned, kind, predicate)?;
        }
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
    let (blob_digest, blob_size) = cosign::upload_blob(harness, repo, blob).await?;
    manifest["layers"][0]["digest"] = blob_digest.into();
    manifest["layers"][0]["size"] = blob_size.into();
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
    release_with(
        &harness,
        &dir,
        &repo("tampered"),
        Some(&platform),
        true,
        &[],
    )
    .await?;

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

/// SLSA provenance v1 as a builder `builder` would write it for the
/// source `https://git.example/acme/shop`.
fn provenance(builder: &str) -> serde_json::Value {
    serde_json::json!({
        "buildDefinition": {
            "buildType": "https://ci.example/buildtypes/container/v1",
            "externalParameters": {"source": "git+https://git.example/acme/shop@refs/heads/main"},
            "resolvedDependencies": [{"uri": "git+https://git.example/acme/shop@refs/heads/main",
                                      "digest": {"gitCommit": "8f2d3c1"}}]
        },
        "runDetails": {"builder": {"id": builder}}
    })
}

/// cosign's vulnerability predicate carrying a Trivy report with the
/// Critical findings `critical` and `high` High ones.
fn scan(critical: &[&str], high: usize) -> serde_json::Value {
    let mut vulns: Vec<serde_json::Value> = critical
        .iter()
        .map(|id| serde_json::json!({"VulnerabilityID": id, "Severity": "CRITICAL"}))
        .collect();
    vulns.extend((0..high).map(|i| {
        serde_json::json!({"VulnerabilityID": format!("CVE-2026-10{i:02}"), "Severity": "HIGH"})
    }));
    serde_json::json!({
        "invocation": {"uri": "https://ci.example/runs/1"},
        "scanner": {"uri": "pkg:github/aquasecurity/trivy", "version": "0.60.0",
                    "result": {"SchemaVersion": 2, "Results": [{"Target": "os", "Vulnerabilities": vulns}]}},
        "metadata": {"scanStartedOn": "2026-12-01T10:00:00Z", "scanFinishedOn": "2026-12-01T10:01:00Z"}
    })
}

/// A policy for `tier=web` that follows tags and verifies with `verify`.
async fn gate(
    client: &Client,
    ns: &str,
    verify: VerifySpec,
    soak: Option<&str>,
) -> anyhow::Result<()> {
    let policy = RefreshPolicy::new(
        "gate",
        RefreshPolicySpec {
            selector: web(),
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh {
                follow_tag: Some(true),
                min_digest_age: soak.map(str::to_owned),
                verify: Some(verify),
                rollout: Some(freshen_api::refresh::RolloutSpec {
                    strategy: None,
                    canary_weight: Some(50),
                    analysis: Some(freshen_api::refresh::AnalysisSpec {
                        interval: Some("1s".into()),
                        iterations: Some(2),
                        readiness_timeout: Some("30s".into()),
                        ..Default::default()
                    }),
                }),
                ..PolicyRefresh::default()
            },
            pipelines: Default::default(),
        },
    );
    Api::<RefreshPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy)
        .await?;
    Ok(())
}

/// Waits until the operator exports `freshen_image_verified` for
/// `workload` with `result`.
async fn await_verdict(operator: &Operator, workload: &str, result: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("{workload}'s running digest reported {result}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let text = operator.scrape().await?;
            match text.lines().any(|l| {
                l.starts_with("freshen_image_verified{")
                    && l.contains(&format!("workload=\"{workload}\""))
                    && l.contains(&format!("result=\"{result}\""))
            }) {
                true => Ok(Some(())),
                false => anyhow::bail!("not yet"),
            }
        },
    )
    .await
}

/// The Refresh of `workload`, once there is one.
async fn await_refresh(client: &Client, ns: &str, workload: &str) -> anyhow::Result<Refresh> {
    wait_for(
        &format!("a Refresh of {workload}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let found = Api::<Refresh>::namespaced(client.clone(), ns)
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .find(|r| r.spec.workload == workload);
            match found {
                Some(r) => Ok(Some(r)),
                None => anyhow::bail!("none yet"),
            }
        },
    )
    .await
}

#[tokio::test]
async fn provenance_from_another_builder_or_none_is_held() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "provenance").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let mut spec = verify(VerifyMode::Enforce, "platform", &platform);
    spec.attestations = Some(vec![AttestationSpec {
        predicate_type: "https://slsa.dev/provenance/v1".into(),
        builder_id: Some(vec!["https://ci.example/trusted/*".into()]),
        source: Some(vec!["https://git.example/acme/*".into()]),
    }]);
    gate(&client, &ns.name, spec, None).await?;
    let repo = |w: &str| format!("e2e/{}/{w}", ns.name);
    for w in [
        "built-right",
        "wrong-builder",
        "no-provenance",
        "legacy-att",
    ] {
        deploy_old(&harness, &client, &ns.name, w, &repo(w)).await?;
    }
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    let trusted = [(
        "slsaprovenance1",
        provenance("https://ci.example/trusted/v2"),
    )];
    let rogue = [("slsaprovenance1", provenance("https://ci.example/rogue"))];
    release_with(
        &harness,
        &dir,
        &repo("built-right"),
        Some(&platform),
        false,
        &trusted,
    )
    .await?;
    release_with(
        &harness,
        &dir,
        &repo("wrong-builder"),
        Some(&platform),
        false,
        &rogue,
    )
    .await?;
    release(&harness, &dir, &repo("no-provenance"), Some(&platform)).await?;
    // Attested the older way (a DSSE envelope at `sha256-<hex>.att`).
    let mut spec_old = ImageSpec::built_at(Utc::now() - TimeDelta::hours(1));
    spec_old.content = "legacy-att new".into();
    let legacy = push(
        &harness.registry,
        &repo("legacy-att"),
        "candidate",
        &spec_old,
    )
    .await?;
    let pinned = format!(
        "{}/{}@{}",
        harness.registry,
        repo("legacy-att"),
        legacy.digest
    );
    cosign::sign(&harness, &dir, &platform, &pinned, true)?;
    cosign::attest_as(
        &harness,
        &dir,
        &platform,
        &pinned,
        (
            "slsaprovenance1",
            &provenance("https://ci.example/trusted/v2"),
        ),
        true,
    )?;
    push(&harness.registry, &repo("legacy-att"), "stable", &spec_old).await?;

    let refresh = await_refresh(&client, &ns.name, "built-right").await?;
    assert_eq!(
        refresh.spec.verification.as_deref(),
        Some("signed by platform")
    );
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "wrong-builder",
        "AttestationFailed",
    )
    .await?;
    assert!(
        note.contains("provenance attestation fails")
            && note.contains("builder.id \"https://ci.example/rogue\" matches none of https://ci.example/trusted/*"),
        "{note}"
    );
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "no-provenance",
        "AttestationFailed",
    )
    .await?;
    assert!(note.contains("no provenance attestation found"), "{note}");
    for held in ["wrong-builder", "no-provenance"] {
        assert_eq!(refreshes_of(&client, &ns.name, held).await?, 0, "{held}");
    }
    Ok(())
}

#[tokio::test]
async fn scans_hold_a_regression_and_rush_a_critical_fix() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "vulns").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let mut spec = verify(VerifyMode::Enforce, "platform", &platform);
    spec.vulnerabilities = Some(VulnerabilitiesSpec {
        no_regression: Some(true),
        urgent_when: Some(UrgentWhen::Critical),
    });
    // New digests soak a day: only an urgent one goes sooner.
    gate(&client, &ns.name, spec, Some("24h")).await?;
    let repo = |w: &str| format!("e2e/{}/{w}", ns.name);
    for w in ["regress", "fix"] {
        let running = deploy_old(&harness, &client, &ns.name, w, &repo(w)).await?;
        cosign::sign(&harness, &dir, &platform, &running, false)?;
        cosign::attest(
            &harness,
            &dir,
            &platform,
            &running,
            "vuln",
            &scan(&["CVE-2026-0001"], 1),
        )?;
    }
    let operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    let worse = [("vuln", scan(&["CVE-2026-0001", "CVE-2026-0002"], 1))];
    let better = [("vuln", scan(&[], 1))];
    release_with(
        &harness,
        &dir,
        &repo("regress"),
        Some(&platform),
        false,
        &worse,
    )
    .await?;
    release_with(
        &harness,
        &dir,
        &repo("fix"),
        Some(&platform),
        false,
        &better,
    )
    .await?;

    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "regress",
        "VulnerabilityRegression",
    )
    .await?;
    assert!(
        note.contains("finds 2 critical, 1 high, the running digest's 1 critical, 1 high"),
        "{note}"
    );
    assert_eq!(refreshes_of(&client, &ns.name, "regress").await?, 0);
    // Built an hour ago, a day's soak: started now only because it fixes
    // the running digest's Critical finding.
    let refresh = await_refresh(&client, &ns.name, "fix").await?;
    let recorded = refresh.spec.verification.unwrap_or_default();
    assert!(
        recorded.starts_with("signed by platform; scan 0 critical, 1 high")
            && recorded.ends_with("fixes Critical CVE-2026-0001"),
        "{recorded}"
    );
    let urgent = freshen_e2e::await_event(
        &client,
        &ns.name,
        ("Deployment", "fix"),
        "UrgentRefresh",
        "",
    )
    .await?;
    let note = urgent.note.unwrap_or_default();
    assert!(
        note.contains("without waiting for minDigestAge") && note.contains("CVE-2026-0001"),
        "{note}"
    );
    // The fleet's verdicts and scans, as Prometheus sees them.
    let text = operator.scrape().await?;
    let series = |family: &str, workload: &str, label: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{family}{{"))
                    && l.contains(&format!("workload=\"{workload}\""))
                    && l.contains(label)
            })
            .map(str::to_owned)
    };
    assert!(
        series("freshen_image_verified", "regress", "result=\"verified\"")
            .is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        series(
            "freshen_image_vulnerabilities",
            "regress",
            "severity=\"critical\""
        )
        .is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn audit_mode_rolls_out_and_reports_what_is_unverified() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "audit").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    gate(
        &client,
        &ns.name,
        verify(VerifyMode::Audit, "platform", &platform),
        None,
    )
    .await?;
    let repo = format!("e2e/{}/audited", ns.name);
    deploy_old(&harness, &client, &ns.name, "audited", &repo).await?;
    let operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    release(&harness, &dir, &repo, None).await?;
    let refresh = await_refresh(&client, &ns.name, "audited").await?;
    let recorded = refresh.spec.verification.unwrap_or_default();
    assert!(
        recorded.starts_with("unverified, rolled out in Audit mode: not signed"),
        "{recorded}"
    );
    await_verdict(&operator, "audited", "missing").await?;
    let out = freshen_e2e::operator::report(&harness, &["--namespace", &ns.name])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("SIGNED")),
        "{table}"
    );
    assert!(
        table.contains("audited app: unverified: the running digest is not signed"),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_kept_in_a_config_map_is_read_and_a_secret_that_is_no_key_is_a_condition()
-> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "verify-keys").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "signing-keys"},
        "data": {"cosign.pub": platform.public_pem}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &config_map)
        .await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "not-a-key"},
        "stringData": {"cosign.pub": "hunter2-do-not-echo"}
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let by_ref = |config_map: bool, name: &str| VerifySpec {
        mode: Some(VerifyMode::Enforce),
        authorities: vec![KeyAuthoritySpec {
            name: "platform".into(),
            key: Some(KeySpec {
                config_map_ref: config_map.then(|| KeyRef {
                    name: name.into(),
                    key: "cosign.pub".into(),
                }),
                secret_ref: (!config_map).then(|| KeyRef {
                    name: name.into(),
                    key: "cosign.pub".into(),
                }),
                pem: None,
            }),
            keyless: None,
        }],
        ..VerifySpec::default()
    };
    gate(&client, &ns.name, by_ref(true, "signing-keys"), None).await?;
    // A second policy, governing nothing, whose key Secret holds no key.
    let broken = RefreshPolicy::new(
        "broken",
        RefreshPolicySpec {
            selector: LabelSelector {
                match_labels: Some([("tier".to_owned(), "none".to_owned())].into()),
                ..LabelSelector::default()
            },
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh {
                verify: Some(by_ref(false, "not-a-key")),
                ..PolicyRefresh::default()
            },
            pipelines: Default::default(),
        },
    );
    let policies = Api::<RefreshPolicy>::namespaced(client.clone(), &ns.name);
    policies.create(&PostParams::default(), &broken).await?;
    let repo = format!("e2e/{}/app", ns.name);
    deploy_old(&harness, &client, &ns.name, "app", &repo).await?;
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    release(&harness, &dir, &repo, Some(&platform)).await?;
    let refresh = await_refresh(&client, &ns.name, "app").await?;
    assert_eq!(
        refresh.spec.verification.as_deref(),
        Some("signed by platform")
    );
    let message = wait_for(
        "RefreshPolicy broken: Ready=False",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let status = policies.get("broken").await?.status.unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if c.status == "False" => Ok(Some(c.message.clone())),
                other => anyhow::bail!("Ready is {other:?}"),
            }
        },
    )
    .await?;
    assert!(
        message.starts_with("spec.verify.authorities[0].key.secretRef: expected a PEM"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "what the Secret holds is never echoed: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_signature_on_the_platform_manifest_that_runs_counts_for_its_index() -> anyhow::Result<()>
{
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "verify-arch").await?;
    let dir = keys_dir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    gate(
        &client,
        &ns.name,
        verify(VerifyMode::Audit, "platform", &platform),
        None,
    )
    .await?;
    // Two multi-arch images; each has only one platform manifest signed:
    // the one the (amd64) nodes run, or the other.
    for (name, signed_arch) in [("runs-signed", "amd64"), ("other-signed", "arm64")] {
        let repository = format!("e2e/{}/{name}", ns.name);
        let mut per_arch = Vec::new();
        for arch in ["amd64", "arm64"] {
            let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::hours(2));
            spec.architecture = arch.into();
            spec.content = format!("{name} {arch}");
            per_arch.push(push(&harness.registry, &repository, arch, &spec).await?);
        }
        let index = push_index(
            &harness.registry,
            &repository,
            "stable",
            &[
                (&per_arch[0], "linux", "amd64"),
                (&per_arch[1], "linux", "arm64"),
            ],
        )
        .await?;
        let signed = &per_arch[usize::from(signed_arch == "arm64")];
        let pinned = format!("{}/{repository}@{}", harness.registry, signed.digest);
        cosign::sign(&harness, &dir, &platform, &pinned, false)?;
        let deploy = deployment_with(
            name,
            &index.pinned(),
            1,
            serde_json::json!({"metadata": {"labels": {"tier": "web"}}}),
        )?;
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &deploy)
            .await?;
        wait_ready_pods(&client, &ns.name, name, 1, Duration::from_secs(60)).await?;
    }
    let operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    for (name, result) in [("runs-signed", "verified"), ("other-signed", "missing")] {
        await_verdict(&operator, name, result).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_keyless_signature_must_come_from_the_trusted_identity() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "keyless").await?;
    let dir = keys_dir()?;
    let ca = dir.join("ca");
    const ISSUER: &str = "https://token.actions.githubusercontent.com";
    let workflow = |repo: &str| {
        format!("https://github.com/acme/{repo}/.github/workflows/release.yml@refs/heads/main")
    };
    let repo = |w: &str| format!("e2e/{}/{w}", ns.name);
    for w in ["ours", "theirs"] {
        deploy_old(&harness, &client, &ns.name, w, &repo(w)).await?;
    }
    // Each candidate signed keyless before its tag names it: `ours` by the
    // trusted workflow, `theirs` by another repository's, same CA.
    let mut root = Vec::new();
    for (w, identity) in [("ours", workflow("shop")), ("theirs", workflow("fork"))] {
        let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::hours(1));
        spec.content = format!("{w} new");
        let candidate = push(&harness.registry, &repo(w), "candidate", &spec).await?;
        let (bundle, trusted_root) =
            cosign::keyless_sign(&dir, &ca, &candidate.digest, &identity, ISSUER)?;
        cosign::attach_bundle(&harness, &repo(w), &candidate.digest, &bundle).await?;
        push(&harness.registry, &repo(w), "stable", &spec).await?;
        root = trusted_root;
    }
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sigstore"},
        "data": {"trusted_root.json": String::from_utf8(root)?}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &config_map)
        .await?;
    let spec = VerifySpec {
        mode: Some(VerifyMode::Enforce),
        authorities: vec![KeyAuthoritySpec {
            name: "release-workflow".into(),
            key: None,
            keyless: Some(KeylessSpec {
                issuer: ISSUER.into(),
                subject: None,
                subject_reg_exp: Some(
                    r"https://github\.com/acme/shop/\.github/workflows/.*".into(),
                ),
                trusted_root: KeyRef {
                    name: "sigstore".into(),
                    key: "trusted_root.json".into(),
                },
                require_transparency_log: Some(true),
            }),
        }],
        ..VerifySpec::default()
    };
    gate(&client, &ns.name, spec, None).await?;
    let _operator = Operator::start(
        &harness,
        &["--poll-interval", "2s", "--namespace", &ns.name],
    )
    .await?;
    let refresh = await_refresh(&client, &ns.name, "ours").await?;
    assert_eq!(
        refresh.spec.verification.as_deref(),
        Some("signed by release-workflow")
    );
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "theirs",
        "SignatureUntrusted",
    )
    .await?;
    assert!(
        note.contains("release-workflow (its certificate's identity") && note.contains("acme/fork"),
        "{note}"
    );
    assert_eq!(refreshes_of(&client, &ns.name, "theirs").await?, 0);
    Ok(())
}
