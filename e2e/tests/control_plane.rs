//! Control-plane faults during a refresh: kube-apiserver stopped for 30 s,
//! etcd stopped for 30 s, and a 409 storm (another writer changing the
//! Deployment all through a canary).
//!
//! Through an outage a leader and a standby run. While it lasts, `/readyz`
//! says the API server does not answer; a leader that cannot renew its
//! Lease steps down (exits, to be restarted as a standby, as its
//! Deployment would restart it). Afterwards exactly one operator leads, the
//! watches have resumed, and the refresh ends as it would have without the
//! outage: one Refresh, one rollout, every Event.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::{Refresh, RefreshPolicy};
use freshen_core::rollout::{Failure, Phase};
use freshen_e2e::control_plane::ControlPlane;
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{
    Harness, TestNamespace, await_event, canary_policy, deployment_with, init_tls, wait_for,
    wait_ready_pods,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// The second operator's endpoints (the first is on the harness' address).
const STANDBY_ADDR: &str = "127.0.0.1:18089";

/// A namespace with one workload `web` (2 replicas) on `v1`, its policy (a
/// canary of `iterations` checks 2 s apart, pods Ready within 180 s: the
/// 30 s outage and the control plane's restart count against it), and
/// `v2` ready to push.
struct Scene {
    harness: Harness,
    client: Client,
    ns: TestNamespace,
    repo: String,
    v1: Pushed,
}

impl Scene {
    async fn new(prefix: &str, iterations: u32) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let client = harness.client().await?;
        let ns = TestNamespace::create(&harness, &client, prefix).await?;
        let repo = format!("e2e/{}", ns.name);
        let v1 = push(&harness.registry, &repo, "stable", &spec("v1", 48)).await?;
        let policy = RefreshPolicy::new(
            "web",
            canary_policy(("app", "web"), "2s", iterations, "180s"),
        );
        Api::<RefreshPolicy>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &policy)
            .await?;
        let deploy = deployment_with("web", &v1.pinned(), 2, serde_json::json!({}))?;
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &deploy)
            .await?;
        wait_ready_pods(&client, &ns.name, "web", 2, Duration::from_secs(60)).await?;
        Ok(Self {
            harness,
            client,
            ns,
            repo,
            v1,
        })
    }

    fn args(&self) -> Vec<&str> {
        vec![
            "--poll-interval",
            "2s",
            "--namespace",
            &self.ns.name,
            "--leader-elect-lease-duration",
            "6s",
        ]
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn refreshes(&self) -> anyhow::Result<Vec<Refresh>> {
        Ok(
            Api::<Refresh>::namespaced(self.client.clone(), &self.ns.name)
                .list(&ListParams::default())
                .await?
                .items,
        )
    }

    /// Waits until the Refresh of `web` satisfies `done`.
    async fn await_refresh(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Refresh) -> bool,
    ) -> anyhow::Result<Refresh> {
        let done = &done;
        wait_for(what, limit, Duration::from_millis(200), || async move {
            let all = self.refreshes().await?;
            let seen: Vec<String> = all
                .iter()
                .map(|r| format!("{:?}: {}", r.progress().phase, r.progress().message))
                .collect();
            match all.into_iter().find(done) {
                Some(r) => Ok(Some(r)),
                None => anyhow::bail!("{seen:?}"),
            }
        })
        .await
    }

    async fn image(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .deployments()
            .get("web")
            .await?
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image))
    }

    async fn replica_sets(&self) -> anyhow::Result<usize> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        Ok(api
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .iter()
            .filter(|rs| rs.owner_references().iter().any(|o| o.name == "web"))
            .count())
    }
}

fn spec(content: &str, hours_ago: i64) -> ImageSpec {
    ImageSpec {
        content: content.into(),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(hours_ago))
    }
}

/// Stops `component` for 30 s while a canary runs, with a leader and a
/// standby, and checks everything the outage must not break.
async fn outage_of(component: &str) -> anyhow::Result<()> {
    let s = Scene::new(&format!("outage-{component}"), 6).await?;
    let control_plane = ControlPlane::snapshot()?;
    let mut leader = Some(Operator::start(&s.harness, &s.args()).await?);
    let mut standby = Some(Operator::start_at(&s.harness, STANDBY_ADDR, &s.args()).await?);
    let v2 = push(&s.harness.registry, &s.repo, "stable", &spec("v2", 1)).await?;
    s.await_refresh("the Refresh in Canary", Duration::from_secs(30), |r| {
        r.progress().phase == Phase::Canary
    })
    .await?;

    control_plane.stop(component).await?;
    let began = tokio::time::Instant::now();
    // The outage itself: 30 s, watched through both operators' /readyz.
    let mut reported = None;
    let mut stepped_down = false;
    while began.elapsed() < Duration::from_secs(30) {
        for operator in [leader.as_ref(), standby.as_ref()].into_iter().flatten() {
            if let Ok((503, text)) = operator.readyz().await
                && text.contains("API server")
            {
                reported.get_or_insert((began.elapsed(), text));
            }
        }
        if leader.as_ref().is_some_and(Operator::exited) {
            stepped_down = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    control_plane.start(component)?;
    let restarted = control_plane.revive()?;
    eprintln!("{component} down 30 s; also restarted after it: {restarted:?}");
    let (after, text) =
        reported.ok_or_else(|| anyhow::anyhow!("/readyz never reported the {component} outage"))?;
    eprintln!("/readyz reported the outage after {after:?}: {text}");
    assert!(
        stepped_down,
        "a leader that could not renew its Lease for 30 s stepped down"
    );

    // The API answers again; the operator that exited is restarted (as its
    // Deployment would restart it) and one of the two leads.
    wait_for(
        "the API server to answer",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            Ok(Api::<Refresh>::namespaced(s.client.clone(), &s.ns.name)
                .list(&ListParams::default())
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let recovered = tokio::time::Instant::now();
    for (slot, addr) in [
        (&mut leader, s.harness.operator_metrics_addr.as_str()),
        (&mut standby, STANDBY_ADDR),
    ] {
        if slot.as_ref().is_some_and(Operator::exited) {
            drop(slot.take());
            *slot = Some(Operator::start_at(&s.harness, addr, &s.args()).await?);
        }
    }
    let operators: Vec<&Operator> = [leader.as_ref(), standby.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let leading = wait_for(
        "one operator to lead",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let mut leaders = 0;
            for o in &operators {
                if o.metric("freshen_leader").await? == 1.0 && o.ready().await? {
                    leaders += 1;
                }
            }
            Ok((leaders >= 1).then_some(leaders))
        },
    )
    .await?;
    assert_eq!(leading, 1, "exactly one leader");

    let done = s
        .await_refresh("the Refresh Succeeded", Duration::from_secs(120), |r| {
            r.progress().phase.is_terminal()
        })
        .await?;
    eprintln!(
        "{component} outage: refresh ended {:?} {:?} after the API answered again",
        done.progress().phase,
        recovered.elapsed()
    );
    assert_eq!(
        done.progress().phase,
        Phase::Succeeded,
        "{}",
        done.progress().message
    );
    assert_eq!(s.refreshes().await?.len(), 1, "no refresh repeated");
    assert_eq!(s.image().await?, Some(v2.pinned()));
    assert_eq!(s.replica_sets().await?, 2, "one rollout");
    for reason in ["CanaryStarted", "Promoting", "RefreshSucceeded"] {
        await_event(
            &s.client,
            &s.ns.name,
            ("Refresh", &done.name_any()),
            reason,
            "",
        )
        .await?;
    }
    assert_ne!(s.v1.digest, v2.digest);
    Ok(())
}

#[tokio::test]
async fn a_refresh_survives_the_api_server_stopping_for_30_seconds() -> anyhow::Result<()> {
    outage_of("kube-apiserver").await
}

#[tokio::test]
async fn a_refresh_survives_etcd_stopping_for_30_seconds() -> anyhow::Result<()> {
    outage_of("etcd").await
}

#[tokio::test]
async fn a_409_storm_during_a_canary_ends_the_refresh_as_a_conflict_without_a_partial_write()
-> anyhow::Result<()> {
    let s = Scene::new("storm", 8).await?;
    let _operator = Operator::start(&s.harness, &s.args()).await?;
    push(&s.harness.registry, &s.repo, "stable", &spec("v2", 1)).await?;
    s.await_refresh("the Refresh in Canary", Duration::from_secs(30), |r| {
        r.progress().phase == Phase::Canary
    })
    .await?;

    // Another writer changes the pod template every 100 ms until the
    // refresh ends.
    let deployments = s.deployments();
    let storm = tokio::spawn(async move {
        let mut writes = 0u32;
        loop {
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                "example.com/storm": writes.to_string(),
            }}}}});
            if deployments
                .patch(
                    "web",
                    &PatchParams::apply("storm").force(),
                    &Patch::Apply(serde_json::json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "web"},
                        "spec": patch["spec"].clone(),
                    })),
                )
                .await
                .is_ok()
            {
                writes += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let ended = s
        .await_refresh("the Refresh to end", Duration::from_secs(60), |r| {
            r.progress().phase.is_terminal()
        })
        .await;
    storm.abort();
    let ended = ended?;
    let progress = ended.progress();
    assert_eq!(progress.phase, Phase::Failed, "{}", progress.message);
    assert_eq!(
        progress.failure,
        Some(Failure::Conflict),
        "{}",
        progress.message
    );
    assert_eq!(
        s.image().await?,
        Some(s.v1.pinned()),
        "the workload's image was never changed"
    );
    // No field of the template is freshen's: it wrote nothing there.
    let web = s.deployments().get("web").await?;
    let freshen_wrote_template = web.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some("freshen")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("\"f:template\""))
    });
    assert!(!freshen_wrote_template, "{:?}", web.managed_fields());
    wait_for(
        "the canary to go",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            Ok(s.deployments()
                .get_opt("web-canary")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    eprintln!("409 storm: {}", progress.message);
    Ok(())
}
