//! What every reconcile shares: clients, caches, metrics and settings.

use std::sync::Arc;
use std::time::Duration;

use freshen_registry::RegistryClient;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::metrics::{Metrics, WorkloadRecords};

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often an unchanged workload is measured again.
    pub poll_interval: Duration,
    /// How long after a failed reconcile it is retried.
    pub error_requeue: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Registry access, with its cache.
    pub registry: Arc<RegistryClient>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Per-container records the age metrics are computed from.
    pub records: Arc<WorkloadRecords>,
    /// Every pod, from one shared watch.
    pub pods: Store<Pod>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Settings.
    pub config: ControllerConfig,
}
