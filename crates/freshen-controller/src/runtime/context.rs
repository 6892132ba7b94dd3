//! What every reconcile shares: clients, caches, metrics and settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::objects::{owning_workload, workload_ref};
use freshen_api::{ClusterRefreshPolicy, Rebuild, Refresh, RefreshPolicy};
use freshen_core::kind::Kind;
use freshen_core::policy::Limits;
use freshen_registry::RegistryClient;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::runtime::metrics::Metrics;
use crate::runtime::records::WorkloadRecords;

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
    pub tags: crate::workload::tags::TagSettings,
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
    /// The kinds of workload watched and measured (`--workload-kinds`;
    /// Deployment always among them).
    pub workload_kinds: Vec<Kind>,
    /// Argo CD's own namespace, where the Applications its tracking
    /// annotations name without a namespace live (`--argocd-namespace`).
    pub argocd_namespace: String,
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
    pub deployments: Store<CachedWorkload>,
    /// Every workload of every kind watched (Deployments too).
    pub workloads: Workloads,
    /// Every pod, from one shared watch.
    pub pods: Store<CachedPod>,
    /// The pods of each workload, from the same watch.
    pub pod_index: crate::runtime::pod_index::PodIndex,
    /// The Jobs of each CronJob, from the Job workload watch.
    pub job_index: crate::runtime::pod_index::JobIndex,
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
    pub tags: Arc<crate::workload::tags::TagClock>,
    /// Signature verdicts already reached (`spec.verify`).
    pub verdicts: crate::workload::verification::Verdicts,
    /// Delivers the webhooks of webhook pipelines.
    pub webhooks: crate::rebuild::webhook::WebhookClient,
    /// Which watches have listed everything.
    pub readiness: crate::Readiness,
    /// Where canary metric queries go, when configured.
    pub prometheus: Option<crate::runtime::promql::PrometheusClient>,
    /// Asks the workload controller of its kind to measure a workload
    /// again.
    pub workload_trigger: WorkloadTriggers,
    /// Asks the rebuild controller to look at a Rebuild again.
    pub rebuild_trigger: UnboundedSender<ObjectRef<Rebuild>>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The last failure announced per object (one Event per failure).
    pub failures: crate::runtime::failures::Failures,
    /// Serializes the planners' decide-and-create, with the Refreshes
    /// created but not yet in the cache, so limits hold under concurrency.
    pub planning: tokio::sync::Mutex<crate::runtime::ledger::Ledger>,
    /// The one writer of each git repository and branch.
    pub git: std::sync::Arc<crate::gitops::writer::Writer>,
    /// Settings.
    pub config: ControllerConfig,
}

impl Context {
    /// The pods (from the shared store) of `workload`, found through the
    /// pod index, no scan of every pod: a CronJob's are its Jobs' pods.
    pub fn pods_of(&self, workload: &ObjectRef<CachedWorkload>) -> Vec<Arc<CachedPod>> {
        let namespace = workload.namespace.as_deref().unwrap_or_default();
        let owners = match workload.dyntype {
            Kind::CronJob => self
                .job_index
                .names_of(workload)
                .iter()
                .map(|job| workload_ref(Kind::Job, job, namespace))
                .collect(),
            _ => vec![workload.clone()],
        };
        owners
            .iter()
            .flat_map(|owner| self.pod_index.pods_of(owner))
            .filter_map(|r| self.pods.get(&r))
            .collect()
    }

    /// The workload `r` names, from its kind's store (a pod no workload
    /// controls from the pod store).
    pub fn workload(&self, r: &ObjectRef<CachedWorkload>) -> Option<Arc<CachedWorkload>> {
        match r.dyntype {
            Kind::Pod => {
                let pod = ObjectRef::<CachedPod>::new(&r.name)
                    .within(r.namespace.as_deref().unwrap_or_default());
                self.pods
                    .get(&pod)
                    .map(|p| Arc::new(CachedWorkload::of_pod(&p)))
            }
            kind => self.workloads.store(kind)?.get(r),
        }
    }
}

impl Context {
    /// A reference to every workload in `namespace` (all when `None`) of
    /// every kind watched, pods no workload controls included.
    pub fn workload_refs(&self, namespace: Option<&str>) -> Vec<ObjectRef<CachedWorkload>> {
        self.workloads.refs(&self.pods, namespace)
    }
}

impl Workloads {
    /// A reference to every workload in `namespace` (all when `None`) of
    /// every kind watched, and to every pod in `pods` no workload controls.
    pub fn refs(
        &self,
        pods: &Store<CachedPod>,
        namespace: Option<&str>,
    ) -> Vec<ObjectRef<CachedWorkload>> {
        let within = |ns: Option<String>| namespace.is_none_or(|n| ns.as_deref() == Some(n));
        let pods = pods
            .state()
            .into_iter()
            .filter(|p| within(p.metadata.namespace.clone()))
            .filter_map(|p| owning_workload(&p))
            .filter(|r| r.dyntype == Kind::Pod);
        self.all()
            .filter(|w| within(w.metadata.namespace.clone()))
            .map(|w| w.reference())
            .chain(pods)
            .collect()
    }
}

/// The stores of every workload kind watched.
#[derive(Clone, Default)]
pub struct Workloads {
    stores: BTreeMap<Kind, Store<CachedWorkload>>,
}

impl Workloads {
    /// Adds the store of `kind`.
    pub fn insert(&mut self, kind: Kind, store: Store<CachedWorkload>) {
        self.stores.insert(kind, store);
    }

    /// The store of `kind`, when it is watched.
    pub fn store(&self, kind: Kind) -> Option<&Store<CachedWorkload>> {
        self.stores.get(&kind)
    }

    /// Every workload of every kind watched.
    pub fn all(&self) -> impl Iterator<Item = Arc<CachedWorkload>> + '_ {
        self.stores.values().flat_map(Store::state)
    }
}

/// The triggers of the workload controllers, one per kind: a reference
/// goes to the controller of its kind (a pod's to the pod controller).
#[derive(Clone, Default)]
pub struct WorkloadTriggers {
    kinds: BTreeMap<Kind, UnboundedSender<ObjectRef<CachedWorkload>>>,
    pods: Option<UnboundedSender<ObjectRef<CachedPod>>>,
}

impl WorkloadTriggers {
    /// Routes `kind`'s references to `tx`.
    pub fn insert(&mut self, kind: Kind, tx: UnboundedSender<ObjectRef<CachedWorkload>>) {
        self.kinds.insert(kind, tx);
    }

    /// Routes references to pods no workload controls to `tx`.
    pub fn pods(&mut self, tx: UnboundedSender<ObjectRef<CachedPod>>) {
        self.pods = Some(tx);
    }

    /// Asks the controller of `r`'s kind to reconcile it; nothing when
    /// that kind is not watched.
    pub fn send(&self, r: ObjectRef<CachedWorkload>) {
        match r.dyntype {
            Kind::Pod => {
                if let Some(tx) = &self.pods {
                    let pod =
                        ObjectRef::new(&r.name).within(r.namespace.as_deref().unwrap_or_default());
                    let _ = tx.unbounded_send(pod);
                }
            }
            kind => {
                if let Some(tx) = self.kinds.get(&kind) {
                    let _ = tx.unbounded_send(r);
                }
            }
        }
    }
}
