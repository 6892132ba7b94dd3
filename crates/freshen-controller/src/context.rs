//! What every reconcile shares: clients, caches, metrics and settings.

use std::sync::Arc;
use std::time::Duration;

use crate::cached::{CachedDeployment, CachedPod};
use freshen_api::{ClusterRefreshPolicy, Rebuild, Refresh, RefreshPolicy};
use freshen_core::policy::Limits;
use freshen_registry::RegistryClient;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::metrics::Metrics;
use crate::records::WorkloadRecords;

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often an unchanged workload is measured again (at the latest).
    pub poll_interval: Duration,
    /// How long after a failed reconcile it is retried.
    pub error_requeue: Duration,
    /// The operator's defaults, the last level of policy precedence.
    pub defaults: Limits,
    /// Active refreshes operator-wide, at most.
    pub max_concurrent_refreshes: u32,
    /// Active refreshes in one namespace, at most: its fair share of
    /// `max_concurrent_refreshes`.
    pub max_concurrent_refreshes_per_namespace: u32,
    /// The longest a canary analysis (`interval x iterations`) or a
    /// readiness timeout may take, whatever a policy asks
    /// (`--max-analysis-time`).
    pub max_analysis_time: Duration,
    /// How TagRecords are bounded and kept.
    pub tags: crate::tags::TagSettings,
    /// Finished Refreshes kept per workload.
    pub refresh_history: usize,
    /// Ended Rebuilds kept per image and pipeline (at least one).
    pub rebuild_history: usize,
    /// Where the Jobs and Rebuild records of ClusterRefreshPolicy pipelines
    /// that name no namespace live: freshen's own namespace.
    pub rebuild_namespace: String,
    /// The kinds of pipeline this installation runs (`--pipeline-kinds`):
    /// its RBAC may lack the rights the others need, so a Rebuild of
    /// another kind fails at once and says so, and Jobs are watched only
    /// when Job pipelines are enabled.
    pub pipeline_kinds: Vec<freshen_api::pipeline::PipelineKind>,
}

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Registry access, with its cache.
    pub registry: Arc<RegistryClient>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// What was last measured of each workload.
    pub records: Arc<WorkloadRecords>,
    /// Every Deployment, from the workload controller's watch.
    pub deployments: Store<CachedDeployment>,
    /// Every pod, from one shared watch.
    pub pods: Store<CachedPod>,
    /// The pods of each Deployment, from the same watch.
    pub pod_index: crate::pod_index::PodIndex,
    /// Every ServiceAccount, for the imagePullSecrets they add.
    pub service_accounts: Store<ServiceAccount>,
    /// Every node, for the platform a workload's pods run on.
    pub nodes: Store<Node>,
    /// Every namespace (for ClusterRefreshPolicy namespace selectors).
    pub namespaces: Store<Namespace>,
    /// Every RefreshPolicy.
    pub policies: Store<RefreshPolicy>,
    /// Every ClusterRefreshPolicy.
    pub cluster_policies: Store<ClusterRefreshPolicy>,
    /// Every Refresh.
    pub refreshes: Store<Refresh>,
    /// Every Rebuild.
    pub rebuilds: Store<Rebuild>,
    /// The Jobs of rebuild pipelines (labelled `freshen.dev/rebuild`).
    pub jobs: Store<Job>,
    /// Since when each tag has named its digest (TagRecords).
    pub tags: Arc<crate::tags::TagClock>,
    /// Signature verdicts already reached (`spec.verify`).
    pub verdicts: crate::verification::Verdicts,
    /// Delivers the webhooks of webhook pipelines.
    pub webhooks: crate::webhook::WebhookClient,
    /// Which watches have listed everything.
    pub readiness: crate::Readiness,
    /// Where canary metric queries go, when configured.
    pub prometheus: Option<crate::promql::PrometheusClient>,
    /// Asks the workload controller to measure a Deployment again.
    pub workload_trigger: UnboundedSender<ObjectRef<CachedDeployment>>,
    /// Asks the rebuild controller to look at a Rebuild again.
    pub rebuild_trigger: UnboundedSender<ObjectRef<Rebuild>>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The last failure announced per object (one Event per failure).
    pub failures: crate::failures::Failures,
    /// Serializes the planners' decide-and-create, with the Refreshes
    /// created but not yet in the cache, so limits hold under concurrency.
    pub planning: tokio::sync::Mutex<crate::ledger::Ledger>,
    /// Settings.
    pub config: ControllerConfig,
}

impl Context {
    /// The pods (from the shared store) of Deployment `namespace/name`,
    /// found through the pod index: no scan of every pod.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Arc<CachedPod>> {
        self.pod_index
            .pods_of(&ObjectRef::new(name).within(namespace))
            .iter()
            .filter_map(|r| self.pods.get(r))
            .collect()
    }
}
