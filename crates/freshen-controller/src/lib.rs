//! freshen's controllers, metrics and HTTP endpoints.
//!
//! [`run`] wires them: one watch of Deployments and one of Pods (both cached in
//! reflector stores), the workload controller, and the HTTP server.

pub mod context;
pub mod error;
pub mod metrics;
pub mod server;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use freshen_registry::{RegistryClient, RegistryConfig, RegistryMetrics};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

pub use context::{Context, ControllerConfig};
pub use error::Error;
use metrics::{Metrics, WorkloadKey, WorkloadRecords};

/// Everything `freshen run` is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Controller settings.
    pub controller: ControllerConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
}

/// Whether each watch has completed its first list.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The Deployment watch has listed everything.
    pub deployments: Arc<AtomicBool>,
    /// The Pod watch has listed everything.
    pub pods: Arc<AtomicBool>,
}

impl Readiness {
    /// Every watch has listed everything: metrics are complete.
    pub fn is_ready(&self) -> bool {
        self.deployments.load(Ordering::Relaxed) && self.pods.load(Ordering::Relaxed)
    }
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
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(client: Client, config: Config) -> Result<(), RunError> {
    let records = Arc::new(WorkloadRecords::default());
    let registry_metrics = RegistryMetrics::new()?;
    let metrics = Arc::new(Metrics::new(Arc::clone(&records), &registry_metrics)?);
    // Ready once both watches have listed everything. Taken from the streams'
    // own InitDone events: `Store::wait_until_ready` wakes only its latest
    // waiter (kube-runtime 5's DelayedInit keeps one oneshot receiver), and
    // the Controller is already waiting on the Deployment store.
    let readiness = Readiness::default();

    let (deployments, pods): (Api<Deployment>, Api<Pod>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };

    // One watch of all pods serves both as reconcile trigger and as the cache
    // reconciles read from. Managed fields are dropped to save memory.
    let (pod_store, pod_writer) = reflector::store();
    let pod_trigger = watcher(pods, watcher::Config::default())
        .default_backoff()
        .modify(|pod| pod.managed_fields_mut().clear())
        .reflect(pod_writer)
        .inspect_ok({
            let synced = Arc::clone(&readiness.pods);
            move |event| {
                if matches!(event, watcher::Event::InitDone) {
                    synced.store(true, Ordering::Relaxed);
                }
            }
        })
        .touched_objects();

    // A deleted Deployment is never reconciled, so its series are dropped
    // here: on its Delete event, and after a re-list for any deletion a
    // broken watch missed.
    let (deploy_store, deploy_writer) = reflector::store();
    let sweep_store = deploy_store.clone();
    let sweep_records = Arc::clone(&records);
    let deployments_synced = Arc::clone(&readiness.deployments);
    let deploy_trigger = watcher(deployments, watcher::Config::default())
        .default_backoff()
        .modify(|d| d.managed_fields_mut().clear())
        .reflect(deploy_writer)
        .inspect_ok(move |event| match event {
            watcher::Event::Delete(d) => {
                if let (Some(namespace), Some(name)) = (d.namespace(), d.meta().name.clone()) {
                    sweep_records.remove(&WorkloadKey { namespace, name });
                }
            }
            watcher::Event::InitDone => {
                sweep_records.retain(|k| {
                    sweep_store
                        .get(&ObjectRef::new(&k.name).within(&k.namespace))
                        .is_some()
                });
                deployments_synced.store(true, Ordering::Relaxed);
            }
            _ => {}
        })
        .applied_objects();

    let ctx = Arc::new(Context {
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
        pods: pod_store,
        config: config.controller,
    });

    let controller = Controller::for_stream(deploy_trigger, deploy_store)
        .watches_stream(pod_trigger, |pod| workload::owning_deployment(&pod))
        .shutdown_on_signal()
        .run(workload::reconcile, workload::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        });

    let server = server::serve(
        config.metrics_addr,
        server::ServerState { metrics, readiness },
    );
    info!("freshen controller started");
    tokio::select! {
        () = controller => info!("controller stopped"),
        served = server => served?,
    }
    Ok(())
}
