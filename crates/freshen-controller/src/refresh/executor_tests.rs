//! The refresh executor's promises, checked against a recorded API server
//! (kube's `tower-test` mock service): store before act, a lost store means
//! no action, Events after acting with the outbox cleared, a leftover
//! outbox published first. The end-to-end suite shows the same against a
//! real control plane; these run in `make unit`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_api::{Refresh, RefreshStatus};
use freshen_core::event::{EventKind, EventReason};
use freshen_core::policy::Limits;
use freshen_core::rollout::{PendingEvent, Phase, Progress, Settings};
use freshen_registry::{RegistryClient, RegistryConfig, RegistryMetrics};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;

use crate::runtime::cached::CachedWorkload;
use freshen_core::kind::Kind;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::reconcile;
use crate::runtime::context::{Context, ControllerConfig};
use crate::runtime::metrics::Metrics;
use crate::runtime::records::WorkloadRecords;

/// One request the API server received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
}

impl Call {
    fn is(&self, method: &str, path_part: &str) -> bool {
        self.method == method && self.path.contains(path_part)
    }

    /// A status write: its pending Events' reasons.
    fn pending_reasons(&self) -> Vec<String> {
        self.body["status"]["pendingEvents"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How the recorded API server answers a status write.
#[derive(Clone, Copy, PartialEq)]
enum StatusWrites {
    Accept,
    Conflict,
}

/// Serves the mock service's requests until the test ends: records each
/// and answers writes by echoing the object (a new resourceVersion), or a
/// 409 for status writes when told to.
fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    status_writes: StatusWrites,
) -> Arc<Mutex<Vec<Call>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&calls);
    tokio::spawn(async move {
        let mut version = 100;
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            };
            if let Ok(mut calls) = log.lock() {
                calls.push(call);
            }
            let (code, answer) = if method == "GET" && path.ends_with("/deployments/web") {
                // The canary is made from the whole workload, read afresh.
                (
                    StatusCode::OK,
                    serde_json::to_value(workload()).unwrap_or_default(),
                )
            } else if path.ends_with("/status") && status_writes == StatusWrites::Conflict {
                (
                    StatusCode::CONFLICT,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "Conflict", "code": 409,
                           "message": "the object has been modified"}),
                )
            } else {
                version += 1;
                if body.is_object() {
                    body["metadata"]["resourceVersion"] = json!(version.to_string());
                }
                let code = if method == "POST" {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                (code, body)
            };
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                .unwrap_or_else(|e| panic!("response: {e}"));
            respond.send_response(response);
        }
    });
    calls
}

fn workload() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "generation": 3, "uid": "d-uid",
                     "resourceVersion": "7"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "reg.io/shop/web:1"}]}
            }
        },
        "status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 4,
                   "availableReplicas": 4}
    }))
    .unwrap_or_default()
}

/// The workload as the cache holds it.
fn cached() -> CachedWorkload {
    CachedWorkload::from(&workload())
}

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A Refresh of `web`'s `app` owned by the workload, in `progress`.
fn refresh(progress: Progress) -> Refresh {
    let fingerprint = crate::runtime::objects::template_fingerprint(&cached(), "app");
    serde_json::from_value(json!({
        "apiVersion": "freshen.dev/v1alpha1",
        "kind": "Refresh",
        "metadata": {
            "name": "web-app-222222222222", "namespace": "shop", "uid": "r-uid",
            "resourceVersion": "10", "generation": 1,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "uid": "d-uid", "controller": true}]
        },
        "spec": {
            "workload": "web", "container": "app", "reason": "NewDigest",
            "fromImage": "reg.io/shop/web:1",
            "toImage": format!("reg.io/shop/web:1@{DIGEST}"),
            "fromDigest": "unknown", "toDigest": "222222222222", "digest": DIGEST,
            "rollout": Settings::default(),
            "templateFingerprint": fingerprint
        },
        "status": RefreshStatus { progress, ..RefreshStatus::default() }
    }))
    .unwrap_or_else(|e| panic!("fixture: {e}"))
}

/// A Context whose client is the recorded API server and whose caches
/// hold `deployments`.
fn context(
    status_writes: StatusWrites,
    deployments: Vec<CachedWorkload>,
) -> (Arc<Context>, Arc<Mutex<Vec<Call>>>) {
    // The registry client builds an HTTPS client (never used here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = serve(handle, status_writes);
    let client = Client::new(service, "default");
    let mut writer = reflector::store::Writer::<CachedWorkload>::new(Kind::Deployment);
    let deploy_store = writer.as_reader();
    for d in deployments {
        writer.apply_watcher_event(&watcher::Event::Apply(d));
    }
    let records = Arc::new(WorkloadRecords::default());
    let registry_metrics = RegistryMetrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
    let metrics = Arc::new(
        Metrics::new(Arc::clone(&records), &registry_metrics).unwrap_or_else(|e| panic!("{e}")),
    );
    let (rebuild_trigger, _) = futures::channel::mpsc::unbounded();
    let verdicts_client = client.clone();
    let egress = crate::rebuild::webhook::Egress::new(&[], Default::default(), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "freshen".into(),
                instance: None,
            },
        ),
        client,
        registry: RegistryClient::new(
            RegistryConfig::with_tag_ttl(Duration::from_secs(60)),
            registry_metrics,
        ),
        metrics,
        records,
        workloads: {
            let mut workloads = crate::runtime::context::Workloads::default();
            workloads.insert(Kind::Deployment, deploy_store.clone());
            workloads
        },
        deployments: deploy_store,
        pods: reflector::store().0,
        pod_index: crate::runtime::pod_index::PodIndex::default(),
        job_index: crate::runtime::pod_index::JobIndex::default(),
        service_accounts: reflector::store().0,
        nodes: reflector::store().0,
        namespaces: reflector::store().0,
        policies: reflector::store().0,
        cluster_policies: reflector::store().0,
        refreshes: reflector::store().0,
        rebuilds: reflector::store().0,
        jobs: reflector::store().0,
        tags: Arc::new(crate::workload::tags::TagClock::in_memory()),
        verdicts: crate::workload::verification::Verdicts::new(
            verdicts_client,
            "freshen-system".into(),
        ),
        webhooks: crate::rebuild::webhook::WebhookClient::new(egress.clone()),
        readiness: crate::Readiness::default(),
        prometheus: None,
        workload_trigger: crate::runtime::context::WorkloadTriggers::default(),
        rebuild_trigger,
        failures: crate::runtime::failures::Failures::default(),
        git: crate::gitops::writer::Writer::new(
            std::env::temp_dir().join("freshen-git-test"),
            std::time::Duration::ZERO,
            crate::gitops::forge::ForgeClient::new(egress),
        ),
        planning: tokio::sync::Mutex::new(crate::runtime::ledger::Ledger::default()),
        config: ControllerConfig {
            poll_interval: Duration::from_secs(60),
            error_requeue: Duration::from_secs(30),
            defaults: Limits::default(),
            max_concurrent_refreshes: 10,
            max_concurrent_refreshes_per_namespace: 3,
            max_analysis_time: std::time::Duration::from_secs(6 * 3600),
            tags: crate::workload::tags::TagSettings::default(),
            workload_kinds: Kind::ALL.to_vec(),
            argocd_namespace: "argocd".into(),
            refresh_history: 5,
            rebuild_history: 5,
            rebuild_namespace: "freshen-system".into(),
            pipeline_kinds: vec![],
        },
    };
    (Arc::new(ctx), calls)
}

fn recorded(calls: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
    calls.lock().map(|c| c.clone()).unwrap_or_default()
}

fn position(calls: &[Call], what: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().position(what)
}

fn is_event(c: &Call) -> bool {
    c.is("POST", "/events")
}

#[tokio::test]
async fn the_next_phase_is_stored_before_the_canary_is_made_and_announced_after() {
    let (ctx, calls) = context(StatusWrites::Accept, vec![cached()]);
    let action = reconcile(Arc::new(refresh(Progress::default())), ctx).await;
    assert!(action.is_ok(), "{action:?}");
    let calls = recorded(&calls);
    let summary: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();

    let stored = position(&calls, |c| {
        c.is("PUT", "/refreshes/web-app-222222222222/status")
            && c.pending_reasons() == ["CanaryStarted"]
    })
    .unwrap_or_else(|| panic!("the Canary phase and its Event are stored: {summary:?}"));
    assert_eq!(
        calls[stored].body["status"]["phase"], "Canary",
        "stored with its phase"
    );
    let created = position(&calls, |c| c.is("POST", "/deployments"))
        .unwrap_or_else(|| panic!("the canary is created: {summary:?}"));
    assert_eq!(calls[created].body["metadata"]["name"], "web-canary");
    assert_eq!(
        calls[created].body["metadata"]["ownerReferences"][0]["uid"], "r-uid",
        "the Refresh controls its canary"
    );
    let announced = position(&calls, is_event)
        .unwrap_or_else(|| panic!("CanaryStarted is published: {summary:?}"));
    assert_eq!(calls[announced].body["reason"], "CanaryStarted");
    let cleared = position(&calls, |c| {
        c.is("PUT", "/status") && c.pending_reasons().is_empty()
    })
    .unwrap_or_else(|| panic!("the outbox is cleared: {summary:?}"));
    assert!(
        stored < created && created < announced && announced < cleared,
        "store -> act -> announce -> clear, got {summary:?}"
    );
}

#[tokio::test]
async fn a_store_lost_to_another_writer_changes_nothing() {
    let (ctx, calls) = context(StatusWrites::Conflict, vec![cached()]);
    let action = reconcile(Arc::new(refresh(Progress::default())), ctx).await;
    assert!(action.is_ok(), "a lost race is no error: {action:?}");
    let calls = recorded(&calls);
    assert!(
        calls.iter().any(|c| c.is("PUT", "/status")),
        "the store was tried: {calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.is("POST", "/deployments") || c.is("PATCH", "/deployments")),
        "no canary and no workload change on a decision that lost: {calls:?}"
    );
    assert!(!calls.iter().any(is_event), "nothing announced: {calls:?}");
}

#[tokio::test]
async fn a_leftover_outbox_is_published_first_then_cleared() {
    // A run stored Canary with its Event, made the canary and died before
    // announcing it.
    let leftover = Progress {
        phase: Phase::Canary,
        message: "canary started".into(),
        pending_events: vec![PendingEvent {
            phase: Phase::Canary,
            kind: EventKind::Normal,
            reason: EventReason::CanaryStarted,
            note: "canary started".into(),
        }],
        ..Progress::default()
    };
    let (ctx, calls) = context(StatusWrites::Accept, vec![cached()]);
    let action = reconcile(Arc::new(refresh(leftover)), ctx).await;
    assert!(action.is_ok(), "{action:?}");
    let calls = recorded(&calls);
    let summary: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();
    assert!(
        is_event(&calls[0]),
        "the leftover Event goes out first: {summary:?}"
    );
    assert_eq!(calls[0].body["reason"], "CanaryStarted");
    let first_write = position(&calls, |c| {
        c.method != "POST" || !c.path.contains("/events")
    })
    .unwrap_or_else(|| panic!("then a write: {summary:?}"));
    assert!(
        calls[first_write].is("PUT", "/status") && calls[first_write].pending_reasons().is_empty(),
        "the first write clears the outbox: {summary:?}"
    );
    let workload_target = calls
        .iter()
        .filter(|c| is_event(c))
        .any(|c| c.body["regarding"]["kind"] == "Deployment");
    assert!(workload_target, "the workload hears of it too: {summary:?}");
}
