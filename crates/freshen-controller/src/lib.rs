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
pub mod gitops;
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

use freshen_api::{ClusterRefreshPolicy, Rebuild, Refresh, RefreshPolicy, TagRecord};
use freshen_core::kind::Kind;
use freshen_registry::{RegistryClient, RegistryConfig, RegistryMetrics};
use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use runtime::{
    api_requests, context, failures, leader, ledger, metrics, metrics_auth, promql, records,
    server, trim,
};
use workload::{tags, verification};

pub use context::{Context, ControllerConfig};
pub use error::Error;
use metrics::Metrics;
use promql::PrometheusClient;
use records::{PolicyNotifier, WorkloadRecords};

/// Everything `freshen run` is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and how freshen writes to git (`gitops: Commit`).
    pub git: GitConfig,
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

/// Where freshen keeps its git clones and how long it gathers edits to one
/// repository before committing them together.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// The clones' directory (`--git-dir`).
    pub dir: std::path::PathBuf,
    /// Edits asked within this window share a commit (`--git-batch-window`).
    pub batch_window: std::time::Duration,
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

impl Watch {
    /// The readiness name of `kind`'s watch.
    pub fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::Deployment => Self::Deployments,
            Kind::StatefulSet => Self::StatefulSets,
            Kind::DaemonSet => Self::DaemonSets,
            Kind::CronJob => Self::CronJobs,
            Kind::Job => Self::WorkloadJobs,
            Kind::ReplicaSet => Self::ReplicaSets,
            Kind::Rollout => Self::Rollouts,
            Kind::Pod => Self::Pods,
        }
    }
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
pub(crate) fn reflected<K>(
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
pub(crate) fn reflected_trimmed<K>(
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
pub(crate) async fn log_failure<T, E>(_result: Result<T, E>) {}

/// A controller whose watches are registered, started once the shared
/// [`Context`] exists.
pub type Start = Box<dyn FnOnce(Arc<Context>) -> futures::future::BoxFuture<'static, ()> + Send>;

/// What a controller registers its watches with: the client, the
/// namespace watched (all when `None`), the readiness flags its watches
/// set, and the metrics.
pub struct Wiring<'a> {
    /// The Kubernetes client.
    pub client: &'a Client,
    /// `--namespace`.
    pub namespace: Option<&'a str>,
    /// Which watches have listed everything.
    pub readiness: &'a Readiness,
    /// The operator's metrics.
    pub metrics: &'a Arc<Metrics>,
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
    /// The client for webhooks and forges' APIs could not be built (a bad
    /// CA file).
    #[error("the client for webhooks and forge APIs could not be built: {0}")]
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
    let wiring = Wiring {
        client: &client,
        namespace,
        readiness: &readiness,
        metrics: &metrics,
    };
    // Every controller registers the watches that trigger it and the
    // caches it shares; the workload watches wake Refreshes, the policy
    // watches wake workloads.
    let refreshes = refresh::register(&wiring);
    let rebuilds = rebuild::register(&wiring, &config.controller.pipeline_kinds);
    let workloads = workload::watch::register(
        &wiring,
        &config.controller.workload_kinds,
        &records,
        (&refreshes.store, &refreshes.wake),
    )
    .await?;
    let scope = (workloads.stores.clone(), workloads.pods.clone());
    let policies = policy::register(
        scoped::<RefreshPolicy>(&client, namespace),
        &wiring,
        scope.clone(),
        workloads.triggers.clone(),
        policy_rx,
    );
    let cluster_policies = policy::register(
        Api::<ClusterRefreshPolicy>::all(client.clone()),
        &wiring,
        scope,
        workloads.triggers.clone(),
        cluster_policy_rx,
    );
    let caches = SharedCaches::watch(&wiring, &config.controller.rebuild_namespace);
    let tags = tags::TagClock::recorded(
        caches.tags,
        config.controller.rebuild_namespace.clone(),
        client.clone(),
        Arc::clone(&metrics),
        config.controller.tags,
    );
    let deploy_store = workloads
        .stores
        .store(Kind::Deployment)
        .cloned()
        .ok_or(RunError::DeploymentsNotWatched)?;

    // Webhook receivers are reached like registries: the same CAs, the
    // same allow and deny lists, plain HTTP only to the hosts listed.
    let egress = rebuild::webhook::Egress::new(
        &config.registry.extra_root_certificates,
        config.registry.reach.clone(),
        config.registry.plain_http.clone(),
    )
    .map_err(RunError::Webhooks)?;
    let webhooks = rebuild::webhook::WebhookClient::new(egress.clone());
    let forge = gitops::forge::ForgeClient::new(egress);
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
        client: client.clone(),
        registry: RegistryClient::new(config.registry, registry_metrics),
        metrics: Arc::clone(&metrics),
        records,
        deployments: deploy_store,
        workloads: workloads.stores,
        pods: workloads.pods,
        pod_index: workloads.pod_index,
        job_index: workloads.job_index,
        service_accounts: caches.service_accounts,
        nodes: caches.nodes,
        namespaces: workloads.namespaces,
        policies: policies.store,
        cluster_policies: cluster_policies.store,
        refreshes: refreshes.store,
        rebuilds: rebuilds.store,
        jobs: rebuilds.jobs,
        prometheus,
        readiness: readiness.clone(),
        workload_trigger: workloads.triggers,
        rebuild_trigger: rebuilds.wake,
        planning: tokio::sync::Mutex::new(ledger::Ledger::default()),
        failures: failures::Failures::default(),
        git: gitops::writer::Writer::new(config.git.dir.clone(), config.git.batch_window, forge),
        config: config.controller,
    });
    let controllers: [Start; 5] = [
        workloads.start,
        policies.start,
        cluster_policies.start,
        refreshes.start,
        rebuilds.start,
    ];
    let running =
        futures::future::join_all(controllers.into_iter().map(|start| start(Arc::clone(&ctx))));
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
        _ = running => {
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

/// The caches no controller is triggered by: tag records, nodes,
/// ServiceAccounts. Each watch is driven by a task of its own.
struct SharedCaches {
    /// Since when each tag has named its digest: freshen's own records, in
    /// its own namespace, whatever namespace it watches.
    tags: Store<TagRecord>,
    /// Nodes, for the platform a workload runs on. Only nodeInfo and
    /// labels are kept: image lists (the bulk of a Node) are dropped.
    nodes: Store<Node>,
    /// ServiceAccounts, for the imagePullSecrets they add to their pods:
    /// cached so that a reconcile costs no request for them.
    service_accounts: Store<ServiceAccount>,
}

impl SharedCaches {
    fn watch(w: &Wiring<'_>, own_namespace: &str) -> Self {
        let (tags, tag_writer) = reflector::store();
        tokio::spawn(
            reflected(
                Api::<TagRecord>::namespaced(w.client.clone(), own_namespace),
                watcher::Config::default(),
                tag_writer,
                w.readiness.watch(Watch::TagRecords),
            )
            .for_each(|_| futures::future::ready(())),
        );
        let (nodes, node_writer) = reflector::store();
        let nodes_synced = w.readiness.watch(Watch::Nodes);
        tokio::spawn(
            watcher(
                Api::<Node>::all(w.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(trim::node)
            .reflect(node_writer)
            .for_each(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    nodes_synced.done();
                }
                futures::future::ready(())
            }),
        );
        let (service_accounts, account_writer) = reflector::store();
        tokio::spawn(
            reflected_trimmed(
                scoped::<ServiceAccount>(w.client, w.namespace),
                watcher::Config::default(),
                account_writer,
                w.readiness.watch(Watch::ServiceAccounts),
                trim::service_account,
            )
            .for_each(|_| futures::future::ready(())),
        );
        Self {
            tags,
            nodes,
            service_accounts,
        }
    }
}

/// A watch callback that wakes the Refresh an object's change concerns
/// (`find`: its canary's, or the active one of its workload).
pub(crate) fn wake_refresh<K>(
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
