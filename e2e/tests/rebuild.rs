//! Rebuild pipelines end to end, on the harness's real parts: the real job
//! controller runs the pipeline's Job and kwok completes (or fails) its
//! pod; the test plays the build system and pushes the rebuilt image to
//! the real registry; every dependant then moves through its own canary,
//! and Prometheus shows the base fresh again.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::pipeline::{
    JobPipeline, Pipeline, RebuildOn, RebuildSettings, SecretKey, WebhookPipeline,
};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{
    PolicyLimits, PolicyPipelines, PolicyRefresh, Rebuild, Refresh, RefreshPolicy,
    RefreshPolicySpec,
};
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::{Phase, Reason};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::prometheus::await_value;
use freshen_e2e::{
    Harness, TestNamespace, await_warning, deployment, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// One test's namespace, client and repositories.
struct Scene {
    harness: Harness,
    client: Client,
    ns: TestNamespace,
    /// The policy's `spec.verify`, if any.
    verify: Option<freshen_api::refresh::VerifySpec>,
}

impl Scene {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let client = harness.client().await?;
        let ns = TestNamespace::create(&harness, &client, prefix).await?;
        Ok(Self {
            harness,
            client,
            ns,
            verify: None,
        })
    }

    fn repo(&self, name: &str) -> String {
        format!("e2e/{}/{name}", self.ns.name)
    }

    async fn push(&self, name: &str, tag: &str, spec: &ImageSpec) -> anyhow::Result<Pushed> {
        push(&self.harness.registry, &self.repo(name), tag, spec).await
    }

    /// A policy over the Deployments labelled `tier=shop`: a Job pipeline
    /// (`pod_annotations` on its pod: kwok's failure marker), rebuilds on
    /// `on`, canaries with a fast analysis, never following tags (so every
    /// refresh here comes from a rebuild).
    async fn policy(
        &self,
        on: RebuildOn,
        limits: PolicyLimits,
        backoff: &str,
        pod_annotations: serde_json::Value,
    ) -> anyhow::Result<()> {
        let pipeline = Pipeline {
            name: "build".into(),
            job: Some(JobPipeline {
                namespace: None,
                template: job_template(pod_annotations),
            }),
            tekton: None,
            webhook: None,
            images: Vec::new(),
            allow_annotated_base: None,
        };
        self.policy_with(on, limits, backoff, pipeline).await
    }

    /// A policy over the Deployments labelled `tier=shop` that rebuilds
    /// with `pipeline` on `on`, canaries with a fast analysis, never
    /// following tags (so every refresh here comes from a rebuild).
    async fn policy_with(
        &self,
        on: RebuildOn,
        limits: PolicyLimits,
        backoff: &str,
        pipeline: Pipeline,
    ) -> anyhow::Result<()> {
        let policy = RefreshPolicy::new(
            "shop",
            RefreshPolicySpec {
                selector: LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "In".into(),
                        values: Some(vec!["shop".into()]),
                    }]),
                    match_labels: None,
                },
                limits,
                refresh: PolicyRefresh {
                    rollout: Some(RolloutSpec {
                        strategy: None,
                        canary_weight: Some(50),
                        analysis: Some(AnalysisSpec {
                            interval: Some("1s".into()),
                            iterations: Some(2),
                            readiness_timeout: Some("30s".into()),
                            ..AnalysisSpec::default()
                        }),
                    }),
                    verify: self.verify.clone(),
                    ..PolicyRefresh::default()
                },
                pipelines: PolicyPipelines {
                    pipelines: vec![pipeline],
                    rebuild: Some(RebuildSettings {
                        pipeline: "build".into(),
                        selectable: None,
                        triggers: Some(vec![on]),
                        timeout: Some("2m".into()),
                        backoff: Some(backoff.into()),
                    }),
                },
            },
        );
        Api::<RefreshPolicy>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &policy)
            .await?;
        Ok(())
    }

    /// Plays the build system: pushes `app:1` rebuilt now on `base`, and
    /// waits for the Rebuild to succeed with that digest.
    async fn push_rebuilt(&self, base: &Pushed) -> anyhow::Result<Pushed> {
        let mut rebuilt = ImageSpec::built_at(Utc::now());
        rebuilt.base = Some((base.tagged.clone(), base.digest.clone()));
        let app = self.push("app", "1", &rebuilt).await?;
        let done = self
            .await_rebuild("succeeded", |r| {
                r.progress().phase == RebuildPhase::Succeeded
            })
            .await?;
        assert_eq!(done.progress().digest.as_deref(), Some(app.digest.as_str()));
        Ok(app)
    }

    /// Deployment `name` (label `tier=shop`) running `image`, its pods
    /// Ready.
    async fn deploy(&self, name: &str, image: &str) -> anyhow::Result<()> {
        let mut d = deployment(name, image, 1, &[])?;
        d.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("tier".into(), "shop".into());
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &d)
            .await?;
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            name,
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    async fn operator(&self) -> anyhow::Result<Operator> {
        Operator::start(
            &self.harness,
            &["--poll-interval", "2s", "--namespace", &self.ns.name],
        )
        .await
    }

    async fn rebuilds(&self) -> anyhow::Result<Vec<Rebuild>> {
        Ok(
            Api::<Rebuild>::namespaced(self.client.clone(), &self.ns.name)
                .list(&ListParams::default())
                .await?
                .items,
        )
    }

    async fn jobs(&self) -> anyhow::Result<Vec<Job>> {
        Ok(Api::<Job>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Waits until the namespace's one Rebuild satisfies `done`.
    async fn await_rebuild(
        &self,
        what: &str,
        done: impl Fn(&Rebuild) -> bool,
    ) -> anyhow::Result<Rebuild> {
        let done = &done;
        wait_for(
            &format!("the Rebuild {what}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async move {
                let all = self.rebuilds().await?;
                let seen: Vec<String> = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {}",
                            r.name_any(),
                            r.progress().phase,
                            r.progress().message
                        )
                    })
                    .collect();
                anyhow::ensure!(all.len() <= 1, "one Rebuild per image and cause: {seen:?}");
                match all.into_iter().find(done) {
                    Some(r) => Ok(Some(r)),
                    None => anyhow::bail!("rebuilds: {seen:?}"),
                }
            },
        )
        .await
    }

    /// Waits until `workload`'s Refresh has Succeeded; returns it.
    async fn await_refreshed(&self, workload: &str) -> anyhow::Result<Refresh> {
        let api: Api<Refresh> = Api::namespaced(self.client.clone(), &self.ns.name);
        let selector = format!("freshen.dev/workload={workload}");
        wait_for(
            &format!("{workload}'s Refresh to succeed"),
            Duration::from_secs(90),
            Duration::from_millis(200),
            || {
                let (api, selector) = (api.clone(), selector.clone());
                async move {
                    let all = api
                        .list(&ListParams::default().labels(&selector))
                        .await?
                        .items;
                    let phases: Vec<String> = all
                        .iter()
                        .map(|r| format!("{} {}", r.name_any(), r.progress().phase))
                        .collect();
                    match all
                        .into_iter()
                        .find(|r| r.progress().phase == Phase::Succeeded)
                    {
                        Some(r) => Ok(Some(r)),
                        None => anyhow::bail!("refreshes: {phases:?}"),
                    }
                }
            },
        )
        .await
    }
}

/// A Job template whose pod carries `pod_annotations` (kwok's failure
/// marker) and names every kind of variable.
fn job_template(pod_annotations: serde_json::Value) -> serde_json::Value {
    json!({
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": pod_annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "build",
                        "image": "registry.example/builder:1",
                        "args": ["build", "$(image)", "from", "$(image.digest)",
                                 "on", "$(base.newDigest)", "because", "$(reason)",
                                 "id", "$(rebuild.id)"]
                    }]
                }
            }
    })
}

/// The args the one Job ran with.
fn job_args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

fn job_finished(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

#[tokio::test]
async fn a_moved_base_rebuilds_the_image_once_and_every_dependant_moves_through_a_canary()
-> anyhow::Result<()> {
    let s = Scene::new("rebuild-base").await?;
    let base_v1 = s
        .push(
            "base",
            "12",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(30)),
        )
        .await?;
    let mut app = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    app.base = Some((base_v1.tagged.clone(), base_v1.digest.clone()));
    let app_v1 = s.push("app", "1", &app).await?;
    s.policy(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        json!({}),
    )
    .await?;
    let dependants = ["cart", "checkout", "catalog"];
    for name in dependants {
        s.deploy(name, &app_v1.pinned()).await?;
    }
    let operator = s.operator().await?;

    // The upstream base is patched.
    let base_v2 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;

    // Exactly one rebuild and one Job for the image its three dependants run.
    let rebuild = s
        .await_rebuild("running its Job", |r| r.progress().attempts == 1)
        .await?;
    assert_eq!(rebuild.spec.reason, Reason::BaseMoved);
    assert_eq!(rebuild.spec.image, app_v1.tagged);
    assert_eq!(rebuild.spec.from_digest, app_v1.digest);
    let job = wait_for(
        "the Job to complete",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let jobs = s.jobs().await?;
            anyhow::ensure!(
                jobs.len() <= 1,
                "one Job: {:?}",
                jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
            );
            Ok(jobs.into_iter().find(|j| job_finished(j, "Complete")))
        },
    )
    .await?;
    assert_eq!(job.name_any(), format!("{}-1", rebuild.name_any()));
    let args = job_args(&job);
    assert_eq!(
        args,
        [
            "build".to_owned(),
            app_v1.tagged.clone(),
            "from".into(),
            app_v1.digest.clone(),
            "on".into(),
            base_v2.digest.clone(),
            "because".into(),
            "BaseMoved".into(),
            "id".into(),
            rebuild.name_any().trim_start_matches("rebuild-").to_owned(),
        ],
        "the template's variables, rendered"
    );
    assert_eq!(
        job.owner_references().first().map(|o| o.kind.as_str()),
        Some("Rebuild")
    );

    // The build system pushes the rebuilt image, on the new base.
    let app_v2 = s.push_rebuilt(&base_v2).await?;

    // Every dependant moves to the rebuilt digest through its own canary.
    for name in dependants {
        let refresh = s.await_refreshed(name).await?;
        assert_eq!(refresh.spec.reason, Reason::BaseMoved);
        assert_eq!(refresh.spec.digest, app_v2.digest);
        assert!(
            refresh.progress().canary_started_at.is_some(),
            "{name} went through a canary"
        );
    }
    for name in dependants {
        let series = format!(
            r#"freshen_base_image_stale{{namespace="{}",workload="{name}"}}"#,
            s.ns.name
        );
        await_value(
            &s.harness.prometheus_url,
            &series,
            0.0,
            s.harness.scrape_interval,
        )
        .await?;
    }
    // Still one Rebuild and one Job; the outcome counted once.
    assert_eq!(s.rebuilds().await?.len(), 1);
    assert_eq!(s.jobs().await?.len(), 1);
    operator
        .await_metric(
            r#"freshen_rebuilds_total{kind="job",outcome="Succeeded"}"#,
            1.0,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rebuilt_digest_goes_through_the_verification_gate() -> anyhow::Result<()> {
    use freshen_api::refresh::{KeyAuthoritySpec, KeySpec, VerifySpec};
    let mut s = Scene::new("rebuild-verify").await?;
    let dir = freshen_e2e::repo_root()
        .join("target/e2e-cosign")
        .join(format!("{:08x}", freshen_e2e::rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    let platform = freshen_e2e::cosign::generate_key_pair(&s.harness, &dir, "platform")?;
    s.verify = Some(VerifySpec {
        authorities: vec![KeyAuthoritySpec::with_key(
            "platform",
            KeySpec::inline(platform.public_pem.clone()),
        )],
        ..VerifySpec::default()
    });
    let base_v1 = s
        .push(
            "base",
            "12",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(30)),
        )
        .await?;
    let mut app = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    app.base = Some((base_v1.tagged.clone(), base_v1.digest.clone()));
    let app_v1 = s.push("app", "1", &app).await?;
    s.policy(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        json!({}),
    )
    .await?;
    s.deploy("cart", &app_v1.pinned()).await?;
    let _operator = s.operator().await?;
    let base_v2 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;
    // The pipeline runs and its build system pushes the rebuilt image,
    // unsigned: the rebuild succeeded, its digest is held like any other.
    s.await_rebuild("running its Job", |r| r.progress().attempts == 1)
        .await?;
    let rebuilt = s.push_rebuilt(&base_v2).await?;
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "Deployment",
        "cart",
        "SignatureMissing",
    )
    .await?;
    assert!(note.contains("not signed"), "{note}");
    let refreshes = Api::<Refresh>::namespaced(s.client.clone(), &s.ns.name)
        .list(&ListParams::default())
        .await?
        .items;
    assert!(
        refreshes.iter().all(|r| r.spec.digest != rebuilt.digest),
        "no Refresh to the unsigned rebuilt digest"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_pipeline_backs_off_and_runs_no_second_job_across_a_restart() -> anyhow::Result<()>
{
    let s = Scene::new("rebuild-fail").await?;
    let old = s
        .push(
            "app",
            "1",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(10)),
        )
        .await?;
    let limits = PolicyLimits {
        max_image_age: Some("7d".into()),
        ..PolicyLimits::default()
    };
    s.policy(
        RebuildOn::ImageTooOld,
        limits,
        "1h",
        json!({"e2e.freshen.dev/fail": "true"}),
    )
    .await?;
    s.deploy("legacy", &old.pinned()).await?;
    let mut operator = s.operator().await?;

    // Past maxImageAge: one rebuild, whose Job fails.
    let failed = s
        .await_rebuild("backing off", |r| {
            r.progress().phase == RebuildPhase::BackingOff
        })
        .await?;
    assert_eq!(failed.spec.reason, Reason::ImageTooOld);
    let progress = failed.progress();
    assert_eq!(progress.attempts, 1);
    assert!(
        progress.message.contains("run 1 failed")
            && progress.message.contains("run 2 starts in 1h"),
        "{}",
        progress.message
    );
    let note = await_warning(
        &s.client,
        &s.ns.name,
        "Deployment",
        "legacy",
        "RebuildFailed",
    )
    .await?;
    assert!(note.contains(&failed.name_any()), "{note}");
    operator
        .await_metric(
            r#"freshen_rebuilds_total{kind="job",outcome="Failed"}"#,
            1.0,
        )
        .await?;

    // Many polls and a restart later: no second run before the backoff ends.
    let count = r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#;
    let seen = operator.metric(count).await?;
    wait_for(
        "five more polls",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { Ok((operator.metric(count).await? >= seen + 5.0).then_some(())) },
    )
    .await?;
    operator.kill()?;
    let operator = s.operator().await?;
    let seen = operator.metric(count).await.unwrap_or_default();
    wait_for(
        "five polls of the new operator",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { Ok((operator.metric(count).await? >= seen + 5.0).then_some(())) },
    )
    .await?;
    let rebuilds = s.rebuilds().await?;
    assert_eq!(rebuilds.len(), 1, "one Rebuild for the image");
    assert_eq!(rebuilds[0].progress().attempts, 1, "no second run yet");
    assert_eq!(rebuilds[0].progress().phase, RebuildPhase::BackingOff);
    let jobs = s.jobs().await?;
    assert_eq!(jobs.len(), 1, "one Job");
    assert!(job_finished(&jobs[0], "Failed"));
    Ok(())
}

/// A delivery the test's receiver accepted.
#[derive(Debug, Clone)]
struct Delivered {
    id: String,
    body: serde_json::Value,
    hub_signature: Option<String>,
}

/// A CI system's webhook receiver on loopback: it checks the Standard
/// Webhooks signature with `key` (its own HMAC, not freshen's code) and
/// answers 204 to a valid one, 401 to any other.
struct Receiver {
    addr: String,
    delivered: tokio::sync::mpsc::UnboundedReceiver<Delivered>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    async fn start(key: Vec<u8>) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (tx, delivered) = tokio::sync::mpsc::unbounded_channel();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refusals = std::sync::Arc::clone(&refused);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0_u8; 4096];
                // Headers, then as much body as Content-Length says.
                let complete = loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_string();
                        let length = header(&head, "content-length")
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break Some((head, request[end + 4..end + 4 + length].to_vec()));
                        }
                    }
                };
                let Some((head, body)) = complete else {
                    continue;
                };
                let id = header(&head, "webhook-id").unwrap_or_default();
                let timestamp = header(&head, "webhook-timestamp").unwrap_or_default();
                let signature = header(&head, "webhook-signature").unwrap_or_default();
                let valid = signature == expected_signature(&key, &id, &timestamp, &body);
                let status = if valid {
                    let _ = tx.send(Delivered {
                        id,
                        body: serde_json::from_slice(&body).unwrap_or_default(),
                        hub_signature: header(&head, "x-hub-signature-256"),
                    });
                    "204 No Content"
                } else {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "401 Unauthorized"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Ok(Self {
            addr,
            delivered,
            refused,
        })
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// `v1,base64(HMAC-SHA256(key, "id.timestamp.body"))`, per Standard Webhooks.
fn expected_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A GitHub `repository_dispatch`-shaped webhook pipeline to `addr`,
/// signed with the Secret `hook`.
fn webhook_pipeline(addr: &str) -> Pipeline {
    Pipeline {
        name: "build".into(),
        job: None,
        tekton: None,
        webhook: Some(WebhookPipeline {
            url: format!("http://{addr}/repos/shop/app/dispatches"),
            body: Some(json!({
                "event_type": "freshen-rebuild",
                "client_payload": {"image": "$(image)", "base": "$(base.newDigest)",
                                   "reason": "$(reason)", "rebuild": "$(rebuild.name)"}
            })),
            secret: SecretKey {
                name: "hook".into(),
                key: "secret".into(),
            },
            hub_signature: Some(true),
            headers: Vec::new(),
        }),
        images: Vec::new(),
        allow_annotated_base: None,
    }
}

/// The Secret `hook` holding `whsec_` and the base64 of `key`.
async fn hook_secret(s: &Scene, key: &[u8]) -> anyhow::Result<()> {
    use base64::Engine as _;
    let value = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"},
        "stringData": {"secret": value}
    }))?;
    Api::<Secret>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// An app on a base, deployed as `shop`, and the base's tag moved.
async fn app_on_a_moved_base(s: &Scene) -> anyhow::Result<(Pushed, Pushed)> {
    let base_v1 = s
        .push(
            "base",
            "12",
            &ImageSpec::built_at(Utc::now() - TimeDelta::days(30)),
        )
        .await?;
    let mut app = ImageSpec::built_at(Utc::now() - TimeDelta::days(20));
    app.base = Some((base_v1.tagged.clone(), base_v1.digest.clone()));
    let app_v1 = s.push("app", "1", &app).await?;
    s.deploy("shop", &app_v1.pinned()).await?;
    Ok((app_v1, base_v1))
}

#[tokio::test]
async fn a_signed_webhook_asks_ci_for_the_rebuild_and_its_digest_is_rolled_out()
-> anyhow::Result<()> {
    let s = Scene::new("rebuild-hook").await?;
    let key = b"a key only CI and freshen know".to_vec();
    let mut receiver = Receiver::start(key.clone()).await?;
    hook_secret(&s, &key).await?;
    s.policy_with(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        webhook_pipeline(&receiver.addr),
    )
    .await?;
    let (app_v1, _) = app_on_a_moved_base(&s).await?;
    let _operator = Operator::start(
        &s.harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &s.ns.name,
            "--plain-http-registry",
            &receiver.addr,
        ],
    )
    .await?;
    let base_v2 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;

    // CI hears of it once, signed, with the rendered body.
    let delivered = tokio::time::timeout(Duration::from_secs(60), receiver.delivered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the receiver stopped"))?;
    let rebuild = s
        .await_rebuild("delivered", |r| r.progress().attempts == 1)
        .await?;
    assert_eq!(
        delivered.id,
        format!("{}-1", rebuild.name_any()),
        "webhook-id is the run"
    );
    assert_eq!(
        delivered.body,
        json!({"event_type": "freshen-rebuild", "client_payload": {
            "image": app_v1.tagged, "base": base_v2.digest, "reason": "BaseMoved",
            "rebuild": rebuild.name_any()}})
    );
    assert!(
        delivered
            .hub_signature
            .as_deref()
            .is_some_and(|h| h.starts_with("sha256=") && h.len() == 71),
        "{delivered:?}"
    );

    // CI builds and pushes; freshen sees the tag move and rolls it out.
    let app_v2 = s.push_rebuilt(&base_v2).await?;
    let refresh = s.await_refreshed("shop").await?;
    assert_eq!(refresh.spec.digest, app_v2.digest);
    // One delivery: the run is recorded as delivered, never sent again.
    assert!(receiver.delivered.try_recv().is_err(), "a second delivery");
    assert_eq!(
        receiver.refused.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_webhook_the_receiver_refuses_fails_the_run_without_saying_what_it_answered()
-> anyhow::Result<()> {
    let s = Scene::new("rebuild-hook-refused").await?;
    let receiver = Receiver::start(b"the receiver's key".to_vec()).await?;
    hook_secret(&s, b"another key").await?;
    s.policy_with(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1h",
        webhook_pipeline(&receiver.addr),
    )
    .await?;
    app_on_a_moved_base(&s).await?;
    let operator = Operator::start(
        &s.harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &s.ns.name,
            "--plain-http-registry",
            &receiver.addr,
        ],
    )
    .await?;
    s.push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;
    let failed = s
        .await_rebuild("backing off", |r| {
            r.progress().phase == RebuildPhase::BackingOff
        })
        .await?;
    // The status, which the policy's namespace reads, says the delivery
    // failed, never what the receiver answered (a probe of what lies
    // behind the URL); the operator's log has the answer.
    let message = failed.progress().message;
    assert!(message.contains("not delivered (webhook-id"), "{message}");
    // (Not a bare "401": the retry's timestamp may carry those digits.)
    assert!(
        !message.contains("401 ") && !message.contains("Unauthorized"),
        "{message}"
    );
    assert!(message.contains("run 2 starts in 1h"), "{message}");
    assert!(operator.log_text()?.contains("401 Unauthorized"));
    assert_eq!(
        receiver.refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a 401 is not retried"
    );
    let note = await_warning(&s.client, &s.ns.name, "Deployment", "shop", "RebuildFailed").await?;
    // The note carries the retry's timestamp too: not a bare "401".
    assert!(
        note.contains("not delivered") && !note.contains("401 ") && !note.contains("Unauthorized"),
        "{note}"
    );
    operator
        .await_metric(
            r#"freshen_rebuilds_total{kind="webhook",outcome="Failed"}"#,
            1.0,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_pipeline_that_cannot_run_makes_its_policy_not_ready_naming_the_field()
-> anyhow::Result<()> {
    let s = Scene::new("rebuild-invalid").await?;
    let _operator = s.operator().await?;
    // A webhook whose Secret does not exist (yet).
    s.policy_with(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        webhook_pipeline("ci.example.com"),
    )
    .await?;
    let ready = |name: &'static str| {
        let api: Api<RefreshPolicy> = Api::namespaced(s.client.clone(), &s.ns.name);
        move || {
            let api = api.clone();
            async move {
                let p = api.get(name).await?;
                Ok(p.status
                    .and_then(|st| st.conditions.into_iter().find(|c| c.type_ == "Ready"))
                    .map(|c| (c.status, c.message)))
            }
        }
    };
    let (status, message) = wait_for(
        "the policy's Ready condition",
        Duration::from_secs(30),
        Duration::from_millis(200),
        ready("shop"),
    )
    .await?;
    assert_eq!(status, "False");
    assert!(
        message.starts_with(&format!(
            "spec.pipelines[0].webhook.secret: Secret {}/hook does not exist",
            s.ns.name
        )),
        "{message}"
    );
    // The Secret appears: Ready within a poll interval or two.
    hook_secret(&s, b"key").await?;
    wait_for(
        "the policy to become Ready",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let r = ready("shop")().await?;
            Ok(r.filter(|(status, _)| status == "True"))
        },
    )
    .await?;

    // A Job template naming a variable that does not exist.
    let mut bad = job_template(json!({}));
    bad["template"]["spec"]["containers"][0]["args"] = json!(["$(image.sha)"]);
    let policy = RefreshPolicy::new(
        "typo",
        RefreshPolicySpec {
            selector: LabelSelector {
                match_labels: Some([("tier".to_owned(), "other".to_owned())].into()),
                match_expressions: None,
            },
            limits: PolicyLimits::default(),
            refresh: PolicyRefresh::default(),
            pipelines: PolicyPipelines {
                pipelines: vec![Pipeline {
                    name: "build".into(),
                    job: Some(JobPipeline {
                        namespace: None,
                        template: bad,
                    }),
                    tekton: None,
                    webhook: None,
                    images: Vec::new(),
                    allow_annotated_base: None,
                }],
                rebuild: None,
            },
        },
    );
    Api::<RefreshPolicy>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &policy)
        .await?;
    let (status, message) = wait_for(
        "the typo policy's Ready condition",
        Duration::from_secs(30),
        Duration::from_millis(200),
        ready("typo"),
    )
    .await?;
    assert_eq!(status, "False");
    assert!(
        message.starts_with(
            "spec.pipelines[0].job.template.template.spec.containers[0].args[0]: unknown \
             variable $(image.sha)"
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn only_whoever_may_run_a_pipeline_there_may_add_it_and_only_freshen_records_rebuilds()
-> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let s = Scene::new("rebuild-authors").await?;
    let ns = s.ns.name.clone();
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let grant = |name: &str, rules: Vec<PolicyRule>| {
        let (client, ns, name) = (s.client.clone(), ns.clone(), name.to_owned());
        async move {
            let role: Role = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            let role = Role {
                rules: Some(rules),
                ..role
            };
            Api::<Role>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &role)
                .await?;
            let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            let binding = RoleBinding {
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: name.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "tenant".into(),
                    namespace: Some(ns.clone()),
                    ..Subject::default()
                }]),
                ..binding
            };
            Api::<RoleBinding>::namespaced(client, &ns)
                .create(&PostParams::default(), &binding)
                .await?;
            anyhow::Ok(())
        }
    };
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tenant"}}))?;
    Api::<ServiceAccount>::namespaced(s.client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await?;
    grant(
        "policy-writer",
        vec![
            rule(
                "freshen.dev",
                &["refreshpolicies"],
                &["get", "create", "update", "delete"],
            ),
            rule("freshen.dev", &["rebuilds"], &["get", "create"]),
        ],
    )
    .await?;
    let tenant = Harness::client_from(&s.harness.kubeconfig_for(&ns, "tenant")?).await?;
    let policies: Api<RefreshPolicy> = Api::namespaced(tenant.clone(), &ns);
    let with_pipeline = |name: &str| {
        RefreshPolicy::new(
            name,
            RefreshPolicySpec {
                selector: LabelSelector {
                    match_labels: Some([("tier".to_owned(), "shop".to_owned())].into()),
                    match_expressions: None,
                },
                limits: PolicyLimits::default(),
                refresh: PolicyRefresh::default(),
                pipelines: PolicyPipelines {
                    pipelines: vec![Pipeline {
                        name: "build".into(),
                        job: Some(JobPipeline {
                            namespace: None,
                            template: job_template(json!({})),
                        }),
                        tekton: None,
                        webhook: None,
                        images: Vec::new(),
                        allow_annotated_base: None,
                    }],
                    rebuild: None,
                },
            },
        )
    };
    // A policy without pipelines: the tenant's to write.
    let mut plain = with_pipeline("plain");
    plain.spec.pipelines = PolicyPipelines::default();
    policies.create(&PostParams::default(), &plain).await?;
    // With a Job pipeline, but no right to create Jobs here: refused.
    let refused = policies
        .create(&PostParams::default(), &with_pipeline("builds"))
        .await;
    match refused {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains("may not create Jobs"), "{}", e.message);
        }
        other => anyhow::bail!("a pipeline without the right to run it was accepted: {other:?}"),
    }
    // A Rebuild by hand: only freshen records them.
    let rebuild: Rebuild = serde_json::from_value(json!({
        "apiVersion": "freshen.dev/v1alpha1", "kind": "Rebuild",
        "metadata": {"name": "rebuild-0000000000000000"},
        "spec": {"image": "reg.example/app:1", "fromDigest": format!("sha256:{}", "0".repeat(64)),
                 "reason": "BaseMoved", "policy": format!("RefreshPolicy/{ns}/plain"),
                 "pipeline": "build", "requestedBy": format!("{ns}/shop"),
                 "timeoutSeconds": 60, "backoffSeconds": 60}
    }))?;
    match Api::<Rebuild>::namespaced(tenant.clone(), &ns)
        .create(&PostParams::default(), &rebuild)
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message.contains("only freshen records Rebuilds"),
                "{}",
                e.message
            );
        }
        other => anyhow::bail!("a hand-made Rebuild was accepted: {other:?}"),
    }
    // Allowed to create Jobs here: the same policy is accepted.
    grant("job-runner", vec![rule("batch", &["jobs"], &["create"])]).await?;
    let accepted = |policy: RefreshPolicy| {
        let policies = policies.clone();
        async move {
            wait_for(
                "the policy with a pipeline to be accepted",
                Duration::from_secs(30),
                Duration::from_millis(250),
                || async {
                    match policies.create(&PostParams::default(), &policy).await {
                        Ok(_) => Ok(Some(())),
                        Err(e) => anyhow::bail!("{e}"),
                    }
                },
            )
            .await
        }
    };
    accepted(with_pipeline("builds")).await?;
    // A webhook pipeline has freshen POST from inside the cluster to a URL
    // the tenant writes: refused to a tenant who may create Jobs but has
    // not been granted webhook pipelines, even with a harmless-looking URL.
    let mut hook = with_pipeline("calls-ci");
    hook.spec.pipelines.pipelines = vec![webhook_pipeline("ci.example.com")];
    match policies.create(&PostParams::default(), &hook).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message.contains("may not add webhook pipelines")
                    && e.message.contains("freshen-webhook-pipeline-author"),
                "{}",
                e.message
            );
        }
        other => anyhow::bail!("a webhook pipeline without the right was accepted: {other:?}"),
    }
    // Nor slipped into a policy the tenant already has.
    let mut builds = policies.get("builds").await?;
    builds.spec.pipelines.pipelines.push(Pipeline {
        name: "ci".into(),
        ..webhook_pipeline("ci.example.com")
    });
    match policies
        .replace("builds", &PostParams::default(), &builds)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => anyhow::bail!("a webhook pipeline was added by an update: {other:?}"),
    }
    // Bound to the chart's ClusterRole in this namespace: accepted.
    let binding: RoleBinding =
        serde_json::from_value(json!({"metadata": {"name": "webhook-author"}}))?;
    let binding = RoleBinding {
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "freshen-webhook-pipeline-author".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "tenant".into(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
        ..binding
    };
    Api::<RoleBinding>::namespaced(s.client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;
    accepted(hook).await?;
    Ok(())
}

#[tokio::test]
async fn a_tekton_pipeline_run_is_created_cancelled_when_superseded_and_its_success_rolled_out()
-> anyhow::Result<()> {
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    let s = Scene::new("rebuild-tekton").await?;
    let pipeline = Pipeline {
        name: "build".into(),
        job: None,
        tekton: Some(freshen_api::pipeline::TektonPipeline {
            namespace: None,
            pipeline_ref: "build-image".into(),
            params: vec![
                freshen_api::pipeline::TektonParam {
                    name: "image".into(),
                    value: "$(image)".into(),
                },
                freshen_api::pipeline::TektonParam {
                    name: "base".into(),
                    value: "$(base.name)@$(base.newDigest)".into(),
                },
            ],
            service_account_name: Some("builder".into()),
        }),
        webhook: None,
        images: Vec::new(),
        allow_annotated_base: None,
    };
    s.policy_with(
        RebuildOn::BaseMoved,
        PolicyLimits::default(),
        "1m",
        pipeline,
    )
    .await?;
    let (_, base_v1) = app_on_a_moved_base(&s).await?;
    // One ended Rebuild kept per image: the superseded one goes once the
    // newer ends.
    let _operator = Operator::start(
        &s.harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &s.ns.name,
            "--rebuild-history",
            "1",
        ],
    )
    .await?;
    let runs: Api<DynamicObject> = Api::namespaced_with(
        s.client.clone(),
        &s.ns.name,
        &ApiResource {
            group: "tekton.dev".into(),
            version: "v1".into(),
            api_version: "tekton.dev/v1".into(),
            kind: "PipelineRun".into(),
            plural: "pipelineruns".into(),
        },
    );
    let await_run = |name: String| {
        let runs = runs.clone();
        async move {
            wait_for(
                &format!("PipelineRun {name}"),
                Duration::from_secs(60),
                Duration::from_millis(100),
                || {
                    let (runs, name) = (runs.clone(), name.clone());
                    async move { Ok(runs.get_opt(&name).await?) }
                },
            )
            .await
        }
    };

    // The base moves: a PipelineRun of the named Pipeline, its params
    // rendered, owned by the Rebuild.
    let base_v2 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;
    let first = s
        .await_rebuild("running", |r| r.progress().attempts == 1)
        .await?;
    let run = await_run(format!("{}-1", first.name_any())).await?;
    assert_eq!(run.data["spec"]["pipelineRef"]["name"], "build-image");
    assert_eq!(
        run.data["spec"]["params"],
        json!([{"name": "image", "value": first.spec.image},
               {"name": "base", "value": format!("{}@{}", base_v1.tagged, base_v2.digest)}])
    );
    assert_eq!(
        run.data["spec"]["taskRunTemplate"]["serviceAccountName"],
        "builder"
    );
    assert_eq!(run.data["spec"]["timeouts"]["pipeline"], "120s");
    assert_eq!(
        run.metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone()),
        Some(first.name_any())
    );

    // It moves again before the run ends: a newer rebuild, and the first
    // run is cancelled the Tekton way.
    let base_v3 = s
        .push("base", "12", &ImageSpec::built_at(Utc::now()))
        .await?;
    let newer = wait_for(
        "a newer Rebuild",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            Ok(s.rebuilds()
                .await?
                .into_iter()
                .find(|r| r.name_any() != first.name_any()))
        },
    )
    .await?;
    wait_for(
        "the first run to be cancelled",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let run = runs.get(&format!("{}-1", first.name_any())).await?;
            Ok((run.data["spec"]["status"] == "Cancelled").then_some(()))
        },
    )
    .await?;
    let old = Api::<Rebuild>::namespaced(s.client.clone(), &s.ns.name)
        .get(&first.name_any())
        .await?;
    assert_eq!(old.progress().phase, RebuildPhase::Superseded);

    // Tekton (played here) reports success; the build system pushed.
    let run_name = format!("{}-1", newer.name_any());
    await_run(run_name.clone()).await?;
    runs.patch_status(
        &run_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}})),
    )
    .await?;
    let mut rebuilt = ImageSpec::built_at(Utc::now());
    rebuilt.base = Some((base_v3.tagged.clone(), base_v3.digest.clone()));
    let app_v2 = s.push("app", "1", &rebuilt).await?;
    let refresh = s.await_refreshed("shop").await?;
    assert_eq!(refresh.spec.digest, app_v2.digest);
    // One Rebuild per base move, of which one ended one is kept.
    wait_for(
        "the superseded Rebuild to be deleted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let names: Vec<String> = s.rebuilds().await?.iter().map(|r| r.name_any()).collect();
            Ok((names == [newer.name_any()]).then_some(()))
        },
    )
    .await?;
    Ok(())
}
