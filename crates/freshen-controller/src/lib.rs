//! freshen's controllers, metrics and HTTP endpoints.
//!
//! - [`workload`]: one controller per workload kind, one reconcile
//!   ([`workload::reconcile`]: gather, assess, plan, announce), and what it
//!   uses: the watch of each kind ([`workload::watch`]), the assessment,
//!   the planner, tag records and the verification gate.
//! - [`refresh`]: the Refresh controller, the one executor of rollout
//!   actions, with one [`refresh::Mechanics`] per refreshed kind.
//! - [`rebuild`]: the Rebuild controller and its pipeline backends (Job,
//!   Tekton, webhook).
//! - [`policy`]: the policies' status.
//! - [`notify`]: the registry notification endpoint.
//! - [`runtime`]: what they share: caches, the context, metrics, Events,
//!   leader election, the HTTP server.
//!
//! [`run`] wires them: a watch of every workload kind, Pods, Namespaces,
//! Nodes, ServiceAccounts, both policy kinds, Refreshes, Rebuilds and
//! TagRecords (each cached in a reflector store), then the controllers.

pub mod error;
pub mod notify;
pub mod policy;
pub mod rebuild;
pub mod refresh;
pub mod report;
pub mod runtime;
pub mod workload;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::cached::CachedPod;
use freshen_api::{ClusterRefreshPolicy, Rebuild, Refresh, RefreshPolicy, TagRecord};
use freshen_core::kind::Kind;
use freshen_registry::{RegistryClient, RegistryConfig, RegistryMetrics};
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use rebuild::webhook;
use runtime::{
    api_requests, contain, context, failures, leader, ledger, metrics, metrics_auth, pod_index,
    promql, records, server, trim,
};
use workload::{tags, verification, watch as workloads};

pub use context::{Context, ControllerConfig};
pub use error::Error;
use metrics::Metrics;
use policy::Policy;
use promql::PrometheusClient;
use records::{PolicyNotifier, WorkloadRecords};

/// Everything `freshen run` is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// `/metrics` only for identities the API server lets `get` it
    /// (TokenReview and SubjectAccessReview).
    pub metrics_auth: bool,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Controller settings.
    pub controller: ControllerConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
    /// The Prometheus server canary metric queries go to.
    pub prometheus_url: Option<String>,
    /// Leader election; `None` acts at once (one replica, or tests of two
    /// racing operators).
    pub leader: Option<leader::LeaderConfig>,
    /// The registry notification endpoint, when enabled.
    pub notify: Option<notify::NotifyConfig>,
    /// The count of the client's requests (see [`api_requests`]), exported
    /// with the other metrics; `None` when the client does not count.
    pub api_requests: Option<api_requests::ApiRequests>,
}

/// A watch the operator keeps, named as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum Watch {
    /// Refreshes.
    Refreshes,
    /// Pods.
    Pods,
    /// Deployments.
    Deployments,
    /// StatefulSets.
    StatefulSets,
    /// DaemonSets.
    DaemonSets,
    /// CronJobs.
    CronJobs,
    /// Jobs, as workloads (all of them).
    WorkloadJobs,
    /// ReplicaSets.
    ReplicaSets,
    /// Argo Rollouts.
    Rollouts,
    /// Namespaces (their labels).
    Namespaces,
    /// Nodes (their platform).
    Nodes,
    /// ServiceAccounts (their imagePullSecrets).
    ServiceAccounts,
    /// RefreshPolicies.
    RefreshPolicies,
    /// ClusterRefreshPolicies.
    ClusterRefreshPolicies,
    /// Rebuilds.
    Rebuilds,
    /// The Jobs of rebuild pipelines.
    Jobs,
    /// The TagRecords in freshen's namespace.
    TagRecords,
}

/// A watch and whether it has completed its first list.
type WatchFlag = (Watch, Arc<AtomicBool>);

/// Whether each watch has completed its first list.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    watches: Arc<std::sync::Mutex<Vec<WatchFlag>>>,
    changed: Arc<tokio::sync::Notify>,
    /// Whether the API server answers (the Lease's attempts tell).
    pub api: leader::ApiHealth,
}

/// Set once its watch has listed everything.
#[derive(Debug, Clone)]
pub struct Synced {
    flag: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

impl Synced {
    /// The watch has listed everything.
    pub fn done(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

impl Readiness {
    /// A flag for the watch `name`, set once it has listed everything.
    pub fn watch(&self, name: Watch) -> Synced {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut watches) = self.watches.lock() {
            watches.push((name, Arc::clone(&flag)));
        }
        Synced {
            flag,
            changed: Arc::clone(&self.changed),
        }
    }

    /// The watches still listing; empty when metrics are complete.
    pub fn pending(&self) -> Vec<Watch> {
        self.watches
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, f)| !f.load(Ordering::Relaxed))
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the watches `names` have all listed everything.
    pub fn listed(&self, names: &[Watch]) -> bool {
        !self.pending().iter().any(|p| names.contains(p))
    }

    /// Every watch has listed everything: metrics are complete.
    pub fn is_ready(&self) -> bool {
        self.pending().is_empty()
    }

    /// Waits until none of the watches `names` is still listing.
    pub async fn wait_for(&self, names: &[Watch]) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a flag set in between wakes us.
            changed.as_mut().enable();
            if !self.pending().iter().any(|p| names.contains(p)) {
                return;
            }
            changed.await;
        }
    }
}

/// An Api over one namespace, or over all of them when `namespace` is
/// `None` (`--namespace` of `run` and `-n` of `report`).
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch of `api` cached into `writer`, with managed fields dropped to
/// save memory, that sets `synced` after its first complete list.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    synced: Synced,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    reflected_trimmed(api, config, writer, synced, |o| {
        o.managed_fields_mut().clear()
    })
}

/// [`reflected`], keeping of each object only what `trim` leaves
/// ([`trim`]): the store holds no more than freshen reads.
fn reflected_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    synced: Synced,
    trim: fn(&mut K),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .inspect_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                synced.done();
            }
        })
}

/// Asks the API server for its version every 2 s (each ask bounded at
/// 5 s), reporting to `health` whether it answered.
async fn probe_api(client: Client, health: leader::ApiHealth) {
    loop {
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.apiserver_version(),
        )
        .await
        {
            Ok(Ok(_)) => health.answered(),
            Ok(Err(e)) => health.failed(sent, &e.to_string()),
            Err(_) => health.failed(sent, "no answer from the API server in 5s"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Drops a controller's results: failures are logged, counted and
/// announced by [`contain`].
async fn log_failure<T, E>(_result: Result<T, E>) {}

/// A policy watch: reflected, and on deletion the workloads the policy
/// could have governed are measured again (a deleted object is never
/// reconciled, so nobody else would tell them).
fn policy_watch<P: Policy>(
    api: Api<P>,
    writer: reflector::store::Writer<P>,
    synced: Synced,
    (workloads, pods): (context::Workloads, Store<CachedPod>),
    workload_trigger: context::WorkloadTriggers,
) -> impl Stream<Item = Result<P, watcher::Error>> + Send + 'static {
    reflected(api, watcher::Config::default(), writer, synced)
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(policy) = event {
                for workload in policy.scope(&workloads, &pods) {
                    workload_trigger.send(workload);
                }
            }
        })
        .applied_objects()
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Metrics could not be registered (a programming error).
    #[error("registering metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP endpoints could not be served.
    #[error("serving HTTP endpoints failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The policy CRDs are not installed in the cluster.
    #[error(
        "the freshen CRDs are not installed: apply them with `kubectl apply -f config/crd/` \
         (or `freshen crd | kubectl apply -f -`)"
    )]
    CrdsMissing,
    /// The Prometheus client could not be built.
    #[error("the Prometheus client could not be built: {0}")]
    Prometheus(#[source] reqwest::Error),
    /// The webhook client could not be built (a bad CA file).
    #[error("the webhook client could not be built: {0}")]
    Webhooks(#[source] reqwest::Error),
    /// The cluster could not be asked whether the CRDs are installed.
    #[error("checking for the freshen CRDs failed: {0}")]
    CrdCheck(#[source] kube::Error),
    /// `--workload-kinds` leaves out Deployments, which refreshes need.
    #[error("--workload-kinds must include Deployment")]
    DeploymentsNotWatched,
    /// Another replica leads now, or the Lease could not be renewed: stop,
    /// to be restarted as a standby.
    #[error("leadership lost: {0}")]
    LeadershipLost(#[from] leader::LeadershipLost),
}

/// Fails fast when the policy CRDs are missing: their watches would
/// otherwise retry forever and the operator would never become ready.
async fn check_crds(
    client: &Client,
    namespace: Option<&str>,
    rebuild_namespace: &str,
) -> Result<(), RunError> {
    let probe = kube::api::ListParams::default().limit(1);
    let policies: Api<RefreshPolicy> = scoped(client, namespace);
    for result in [
        policies.list_metadata(&probe).await.map(|_| ()),
        Api::<ClusterRefreshPolicy>::all(client.clone())
            .list_metadata(&probe)
            .await
            .map(|_| ()),
        scoped::<Refresh>(client, namespace)
            .list_metadata(&probe)
            .await
            .map(|_| ()),
        scoped::<Rebuild>(client, namespace)
            .list_metadata(&probe)
            .await
            .map(|_| ()),
        Api::<TagRecord>::namespaced(client.clone(), rebuild_namespace)
            .list_metadata(&probe)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(RunError::CrdsMissing);
            }
            Err(e) => return Err(RunError::CrdCheck(e)),
        }
    }
    Ok(())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(client: Client, config: Config) -> Result<(), RunError> {
    check_crds(
        &client,
        config.namespace.as_deref(),
        &config.controller.rebuild_namespace,
    )
    .await?;
    let (policy_tx, policy_rx) = mpsc::unbounded();
    let (cluster_policy_tx, cluster_policy_rx) = mpsc::unbounded();
    let (refresh_tx, refresh_rx) = mpsc::unbounded();
    let (rebuild_tx, rebuild_rx) = mpsc::unbounded();
    let prometheus = config
        .prometheus_url
        .as_deref()
        .map(|url| PrometheusClient::new(url, std::time::Duration::from_secs(10)))
        .transpose()
        .map_err(RunError::Prometheus)?;
    let records = Arc::new(WorkloadRecords::with_notifier(PolicyNotifier {
        policies: policy_tx,
        cluster_policies: cluster_policy_tx,
    }));
    let registry_metrics = RegistryMetrics::new()?;
    let metrics = Arc::new(Metrics::new(Arc::clone(&records), &registry_metrics)?);
    if let Some(api_requests) = &config.api_requests {
        metrics.register_api_requests(api_requests)?;
    }
    // Ready once every watch has listed everything. Taken from the streams'
    // own InitDone events: `Store::wait_until_ready` wakes only its latest
    // waiter (kube-runtime 5's DelayedInit keeps one oneshot receiver), and
    // the Controllers are already waiting on their stores.
    let readiness = Readiness::default();
    let server = server::serve(
        config.metrics_addr,
        server::ServerState {
            metrics: Arc::clone(&metrics),
            readiness: readiness.clone(),
            auth: config
                .metrics_auth
                .then(|| Arc::new(metrics_auth::MetricsAuth::new(client.clone()))),
        },
    );
    tokio::pin!(server);
    let elector = config
        .leader
        .clone()
        .map(|c| leader::Elector::new(client.clone(), c).reporting_to(readiness.api.clone()));
    if elector.is_none() {
        // Without an election no Lease attempt tells whether the API server
        // answers: ask it for its version instead, as often, so /readyz
        // reports an outage either way.
        tokio::spawn(probe_api(client.clone(), readiness.api.clone()));
    }
    if let Some(elector) = &elector {
        // A standby serves /healthz, /readyz and /metrics (freshen_leader 0)
        // and watches nothing.
        metrics.leader.set(0);
        tokio::select! {
            () = elector.acquire() => {}
            served = &mut server => return Ok(served?),
            () = shutdown_signal() => return Ok(()),
        }
    }

    let namespace = config.namespace.as_deref();
    let (pods, policies): (Api<CachedPod>, Api<RefreshPolicy>) =
        (scoped(&client, namespace), scoped(&client, namespace));
    let namespace_watch = match &config.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };

    // Refreshes: reconciled by the Refresh controller, read by the workload
    // controller (active ones hold further refreshes of a workload).
    let (refresh_store, refresh_writer) = reflector::store();
    let refresh_trigger = {
        let store = refresh_store.clone();
        let metrics = Arc::clone(&metrics);
        reflected(
            scoped::<Refresh>(&client, namespace),
            watcher::Config::default(),
            refresh_writer,
            readiness.watch(Watch::Refreshes),
        )
        .inspect_ok(move |_| metrics.count_active(store.state().iter().map(|r| r.progress().phase)))
        .applied_objects()
    };

    // Rebuilds: run by the rebuild controller, read by the workload
    // controller (one per image and cause). Their Jobs wake them.
    let (rebuild_store, rebuild_writer) = reflector::store();
    let rebuild_trigger = {
        let store = rebuild_store.clone();
        let metrics = Arc::clone(&metrics);
        reflected(
            scoped::<Rebuild>(&client, namespace),
            watcher::Config::default(),
            rebuild_writer,
            readiness.watch(Watch::Rebuilds),
        )
        .inspect_ok(move |_| {
            metrics.rebuilds.count_active(
                store
                    .state()
                    .iter()
                    .map(|r| (r.spec.kind, r.progress().phase)),
            )
        })
        .applied_objects()
    };
    // Jobs are watched only where Job pipelines run: without them the
    // installation may lack the right to.
    let (job_store, job_writer) = reflector::store();
    let job_trigger = if config
        .controller
        .pipeline_kinds
        .contains(&freshen_api::pipeline::PipelineKind::Job)
    {
        reflected(
            scoped::<Job>(&client, namespace),
            watcher::Config::default().labels(rebuild::REBUILD_LABEL),
            job_writer,
            readiness.watch(Watch::Jobs),
        )
        .touched_objects()
        .left_stream()
    } else {
        futures::stream::pending().right_stream()
    };

    // Since when each tag has named its digest: freshen's own records, in
    // its own namespace, whatever namespace it watches.
    let (tag_store, tag_writer) = reflector::store();
    let tag_watch = reflected(
        Api::<TagRecord>::namespaced(client.clone(), &config.controller.rebuild_namespace),
        watcher::Config::default(),
        tag_writer,
        readiness.watch(Watch::TagRecords),
    )
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(tag_watch);
    let tags = tags::TagClock::recorded(
        tag_store,
        config.controller.rebuild_namespace.clone(),
        client.clone(),
        Arc::clone(&metrics),
        config.controller.tags,
    );

    // One watch per workload kind, each with its own controller; the
    // pods, namespaces and policies wake them through one router.
    let mut triggers = context::WorkloadTriggers::default();
    let mut workload_stores = context::Workloads::default();
    let mut kind_watches = Vec::new();
    let job_index = pod_index::JobIndex::default();
    for &kind in &config.controller.workload_kinds {
        if kind == Kind::Pod || !workloads::served(&client, kind).await {
            continue;
        }
        let mut watch = workloads::watch(
            &client,
            namespace,
            kind,
            Arc::clone(&records),
            readiness.watch(workloads::watch_of(kind)),
            job_index.clone(),
        );
        if kind.refreshed() {
            // A workload's change (a canary Deployment's too) wakes its
            // Refresh.
            watch.changed = watch
                .changed
                .inspect_ok(wake_refresh(
                    &refresh_store,
                    &refresh_tx,
                    refresh::of_workload,
                ))
                .boxed();
        }
        let (tx, rx) = mpsc::unbounded();
        triggers.insert(kind, tx);
        workload_stores.insert(kind, watch.store.clone());
        kind_watches.push((watch, rx));
    }
    let deploy_store = workload_stores
        .store(Kind::Deployment)
        .cloned()
        .ok_or(RunError::DeploymentsNotWatched)?;
    let (pod_tx, pod_rx) = mpsc::unbounded();
    if config.controller.workload_kinds.contains(&Kind::Pod) {
        triggers.pods(pod_tx);
    }

    // One watch of all pods serves as the cache reconciles read from and
    // wakes the workload each pod belongs to; a pod of a canary or of a
    // workload under refresh also wakes its Refresh.
    let (pod_store, pod_writer) = reflector::store();
    let pod_index = pod_index::PodIndex::default();
    let pod_watch = reflected_trimmed(
        pods,
        watcher::Config::default(),
        pod_writer,
        readiness.watch(Watch::Pods),
        trim::pod,
    )
    .inspect_ok({
        let index = pod_index.clone();
        move |event| index.apply(event)
    })
    .inspect_ok(workloads::sweep_bare_pods(
        Arc::clone(&records),
        pod_store.clone(),
    ))
    .touched_objects()
    .inspect_ok(wake_refresh(&refresh_store, &refresh_tx, refresh::of_pod))
    .inspect_ok(workloads::wake_owner(
        triggers.clone(),
        workload_stores.store(Kind::Job).cloned(),
    ));
    tokio::spawn(workloads::drive(pod_watch));

    // Namespace labels decide which ClusterRefreshPolicies apply; a change
    // re-measures the namespace's workloads.
    let (namespace_store, namespace_writer) = reflector::store();
    let namespace_trigger = reflected_trimmed(
        Api::<Namespace>::all(client.clone()),
        namespace_watch,
        namespace_writer,
        readiness.watch(Watch::Namespaces),
        trim::namespace,
    )
    .applied_objects()
    .inspect_ok({
        let (workloads, pods, triggers) =
            (workload_stores.clone(), pod_store.clone(), triggers.clone());
        move |ns| {
            for workload in workloads.refs(&pods, Some(&ns.name_any())) {
                triggers.send(workload);
            }
        }
    });
    tokio::spawn(workloads::drive(namespace_trigger));

    // Nodes, for the platform a workload runs on. Only nodeInfo and labels
    // are read: image lists (the bulk of a Node) are dropped before caching.
    // The watch triggers nothing; a spawned task drives it.
    let (node_store, node_writer) = reflector::store();
    let nodes_synced = readiness.watch(Watch::Nodes);
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(trim::node)
        .reflect(node_writer)
        .for_each(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                nodes_synced.done();
            }
            futures::future::ready(())
        });
    tokio::spawn(node_watch);

    // ServiceAccounts, for the imagePullSecrets they add to their pods;
    // cached so that a reconcile costs no request for them.
    let (account_store, account_writer) = reflector::store();
    let accounts_api: Api<ServiceAccount> = scoped(&client, config.namespace.as_deref());
    let account_watch = reflected_trimmed(
        accounts_api,
        watcher::Config::default(),
        account_writer,
        readiness.watch(Watch::ServiceAccounts),
        trim::service_account,
    )
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(account_watch);

    let (policy_store, policy_writer) = reflector::store();
    let policy_trigger = policy_watch(
        policies,
        policy_writer,
        readiness.watch(Watch::RefreshPolicies),
        (workload_stores.clone(), pod_store.clone()),
        triggers.clone(),
    );
    let (cluster_policy_store, cluster_policy_writer) = reflector::store();
    let cluster_policy_trigger = policy_watch(
        Api::<ClusterRefreshPolicy>::all(client.clone()),
        cluster_policy_writer,
        readiness.watch(Watch::ClusterRefreshPolicies),
        (workload_stores.clone(), pod_store.clone()),
        triggers.clone(),
    );

    // Webhook receivers are reached like registries: the same CAs, the
    // same allow and deny lists, plain HTTP only to the hosts listed.
    let webhooks = webhook::WebhookClient::new(
        &config.registry.extra_root_certificates,
        config.registry.reach.clone(),
        config.registry.plain_http.clone(),
    )
    .map_err(RunError::Webhooks)?;
    let ctx = Arc::new(Context {
        webhooks,
        tags,
        verdicts: verification::Verdicts::new(
            client.clone(),
            config.controller.rebuild_namespace.clone(),
        ),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "freshen".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        registry: RegistryClient::new(config.registry, registry_metrics),
        metrics: Arc::clone(&metrics),
        records,
        deployments: deploy_store,
        workloads: workload_stores,
        pods: pod_store.clone(),
        pod_index,
        job_index,
        service_accounts: account_store,
        nodes: node_store,
        namespaces: namespace_store,
        policies: policy_store.clone(),
        cluster_policies: cluster_policy_store.clone(),
        refreshes: refresh_store.clone(),
        rebuilds: rebuild_store.clone(),
        jobs: job_store,
        prometheus,
        readiness: readiness.clone(),
        workload_trigger: triggers,
        rebuild_trigger: rebuild_tx,
        planning: tokio::sync::Mutex::new(ledger::Ledger::default()),
        failures: failures::Failures::default(),
        config: config.controller,
    });

    // Reconciles in flight at once are bounded (per kind): each takes a
    // few milliseconds, and thousands at once (the first assessment) only
    // raise the peak memory the allocator then keeps.
    let mut controllers: Vec<futures::future::BoxFuture<'static, ()>> = kind_watches
        .into_iter()
        .map(|(watch, rx)| workloads::run_kind(watch, rx, Arc::clone(&ctx)).boxed())
        .collect();
    controllers.push(workloads::run_pods(pod_store, pod_rx, Arc::clone(&ctx)).boxed());
    let workloads = futures::future::join_all(controllers);
    // A workload judged before the policies are listed would look ungoverned
    // and be dropped until its next change; so workloads start once the
    // caches a judgement reads have listed. Namespaces and pods are the
    // workload controller's own triggers, so it cannot wait for them here;
    // its reconcile waits for them instead (`workload::reconcile`).
    let workloads = {
        let readiness = readiness.clone();
        async move {
            readiness
                .wait_for(&[
                    Watch::RefreshPolicies,
                    Watch::ClusterRefreshPolicies,
                    Watch::ServiceAccounts,
                    Watch::Nodes,
                    Watch::Refreshes,
                    Watch::Rebuilds,
                    Watch::TagRecords,
                ])
                .await;
            workloads.await;
        }
    };
    let policies = Controller::for_stream(policy_trigger, policy_store)
        .reconcile_on(policy_rx)
        .shutdown_on_signal()
        .run(
            contain::contained(policy::reconcile::<RefreshPolicy>),
            contain::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(log_failure);
    // A Refresh stepped before the Deployments and pods are listed would
    // see its workload as deleted: its reconcile waits for them (the
    // controller itself must run, to drive the Refresh watch).
    let refreshes = Controller::for_stream(refresh_trigger, refresh_store)
        .reconcile_on(refresh_rx)
        .shutdown_on_signal()
        .run(
            contain::contained(refresh::reconcile),
            contain::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(log_failure);
    let rebuilds = Controller::for_stream(rebuild_trigger, rebuild_store)
        .watches_stream(job_trigger, |job| rebuild::of_job(&job))
        .reconcile_on(rebuild_rx)
        .shutdown_on_signal()
        .run(
            contain::contained(rebuild::reconcile),
            contain::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(log_failure);
    // Served by the leader only: a standby's port is closed, so a registry
    // retries and reaches whichever replica leads.
    let notifications = {
        let (ctx, counts) = (Arc::clone(&ctx), metrics.notifications.clone());
        async move {
            match config.notify {
                Some(c) => notify::serve(c, ctx, counts).await,
                None => std::future::pending().await,
            }
        }
    };
    let cluster_policies = Controller::for_stream(cluster_policy_trigger, cluster_policy_store)
        .reconcile_on(cluster_policy_rx)
        .shutdown_on_signal()
        .run(
            contain::contained(policy::reconcile::<ClusterRefreshPolicy>),
            contain::error_policy,
            ctx,
        )
        .for_each(log_failure);

    info!("freshen controllers started");
    // Set after every watch is registered with `readiness`: once this reads
    // 1, /readyz means "caches synced" again.
    metrics.leader.set(1);
    let lost = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = futures::future::join5(workloads, policies, cluster_policies, refreshes, rebuilds) => {
            info!("controllers stopped");
        }
        served = &mut server => served?,
        served = notifications => served?,
        lost = lost => return Err(lost.into()),
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    Ok(())
}

/// A watch callback that wakes the Refresh an object's change concerns
/// (`find`: its canary's, or the active one of its workload).
fn wake_refresh<K>(
    refreshes: &Store<Refresh>,
    tx: &mpsc::UnboundedSender<ObjectRef<Refresh>>,
    find: fn(&K, &Store<Refresh>) -> Option<ObjectRef<Refresh>>,
) -> impl Fn(&K) + use<K> {
    let (refreshes, tx) = (refreshes.clone(), tx.clone());
    move |object| {
        if let Some(r) = find(object, &refreshes) {
            let _ = tx.unbounded_send(r);
        }
    }
}

/// SIGTERM or Ctrl-C, as the controllers' `shutdown_on_signal` hears them.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
