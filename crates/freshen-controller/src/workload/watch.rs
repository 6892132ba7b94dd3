//! The workload watches and controllers, one per kind: every kind runs the
//! same reconcile ([`crate::workload::reconcile`]); what differs is the API
//! it is read from (the [`Kind`] is the cached type's dynamic type) and
//! how its pods are found ([`crate::runtime::context::Context::pods_of`]).
//!
//! Pods trigger the workload they belong to through one router
//! ([`WorkloadTriggers`]): the one pod watch wakes a Deployment, a
//! StatefulSet, a CronJob (through its Job) or the pod controller, which
//! measures pods no workload controls.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::{Context, WorkloadTriggers};
use crate::runtime::objects::{owning_workload, workload_ref};
use crate::runtime::pod_index::{JobIndex, Owned};
use crate::runtime::records::{WorkloadKey, WorkloadRecords};
use crate::{Synced, Watch, runtime::contain, runtime::trim};
use freshen_core::kind::{Kind, OWN_REPLICASETS};

/// Workload reconciles in flight at once, per kind.
pub const CONCURRENCY: u16 = 32;

/// A watch of one kind's workloads: its store and the stream of changed
/// workloads that triggers its controller.
pub struct KindWatch {
    /// The kind.
    pub kind: Kind,
    /// Every workload of the kind, cached.
    pub store: Store<CachedWorkload>,
    /// Changed workloads (the controller's trigger).
    pub changed: BoxStream<'static, Result<CachedWorkload, watcher::Error>>,
}

/// The readiness name of `kind`'s watch.
pub fn watch_of(kind: Kind) -> Watch {
    match kind {
        Kind::Deployment => Watch::Deployments,
        Kind::StatefulSet => Watch::StatefulSets,
        Kind::DaemonSet => Watch::DaemonSets,
        Kind::CronJob => Watch::CronJobs,
        Kind::Job => Watch::WorkloadJobs,
        Kind::ReplicaSet => Watch::ReplicaSets,
        Kind::Rollout => Watch::Rollouts,
        Kind::Pod => Watch::Pods,
    }
}

/// Whether the cluster serves `kind` (Argo Rollouts' CRD may be absent):
/// a kind it does not serve is not watched, with a log line saying so.
pub async fn served(client: &Client, kind: Kind) -> bool {
    let api: Api<CachedWorkload> = Api::all_with(client.clone(), &kind);
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            info!(%kind, "not served by this cluster; not watched");
            false
        }
        _ => true,
    }
}

/// Watches `kind`'s workloads: trimmed and stamped with their kind,
/// cached, their records dropped when they are deleted (or found gone
/// after a re-list), and a Job's CronJob indexed.
pub fn watch(
    client: &Client,
    namespace: Option<&str>,
    kind: Kind,
    records: Arc<WorkloadRecords>,
    synced: Synced,
    jobs: JobIndex,
) -> KindWatch {
    let api: Api<CachedWorkload> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind),
        None => Api::all_with(client.clone(), &kind),
    };
    let writer = reflector::store::Writer::new(kind);
    let store = writer.as_reader();
    let sweep_store = store.clone();
    // A Deployment's or Rollout's ReplicaSets are never listed at all.
    let config = match kind {
        Kind::ReplicaSet => watcher::Config::default().labels(OWN_REPLICASETS),
        _ => watcher::Config::default(),
    };
    let changed = watcher(api, config)
        .default_backoff()
        .modify(move |w| trim::workload(w, kind))
        .reflect(writer)
        .inspect_ok(move |event| {
            if kind == Kind::Job {
                jobs.apply(event);
            }
            match event {
                watcher::Event::Delete(w) => {
                    if let Some(key) = key_of(w) {
                        records.remove(&key);
                    }
                }
                watcher::Event::InitDone => {
                    // A deleted workload is never reconciled, so its series
                    // are dropped here, also for a deletion a broken watch
                    // missed.
                    records.retain(|k| {
                        k.kind != kind
                            || sweep_store
                                .get(&workload_ref(kind, &k.name, &k.namespace))
                                .is_some()
                    });
                    synced.done();
                }
                _ => {}
            }
        })
        .applied_objects()
        .boxed();
    KindWatch {
        kind,
        store,
        changed,
    }
}

/// The record key of a workload.
fn key_of(w: &CachedWorkload) -> Option<WorkloadKey> {
    Some(WorkloadKey {
        namespace: w.namespace()?,
        name: w.metadata.name.clone()?,
        kind: w.kind,
    })
}

/// Wakes the workload a changed pod belongs to: a Job's pod wakes the
/// Job's CronJob when it has one (found in the Job store).
pub fn wake_owner(
    triggers: WorkloadTriggers,
    jobs: Option<Store<CachedWorkload>>,
) -> impl Fn(&CachedPod) {
    move |pod| {
        let Some(owner) = owning_workload(pod) else {
            return;
        };
        let cron_job = (owner.dyntype == Kind::Job)
            .then(|| jobs.as_ref()?.get(&owner)?.owner())
            .flatten();
        triggers.send(cron_job.unwrap_or(owner));
    }
}

/// Drops the records of pods no workload controls when they go (their
/// controller never reconciles a deleted pod).
pub fn sweep_bare_pods(
    records: Arc<WorkloadRecords>,
    pods: Store<CachedPod>,
) -> impl Fn(&watcher::Event<CachedPod>) {
    move |event| match event {
        watcher::Event::Delete(pod) => {
            if let Some(owner) = owning_workload(pod).filter(|o| o.dyntype == Kind::Pod) {
                records.remove(&WorkloadKey {
                    namespace: owner.namespace.unwrap_or_default(),
                    name: owner.name,
                    kind: Kind::Pod,
                });
            }
        }
        watcher::Event::InitDone => records.retain(|k| {
            k.kind != Kind::Pod
                || pods
                    .get(&ObjectRef::new(&k.name).within(&k.namespace))
                    .is_some()
        }),
        _ => {}
    }
}

/// Runs the controller of one kind's workloads until shutdown.
pub async fn run_kind(
    watch: KindWatch,
    rx: mpsc::UnboundedReceiver<ObjectRef<CachedWorkload>>,
    ctx: Arc<Context>,
) {
    let config = kube::runtime::controller::Config::default().concurrency(CONCURRENCY);
    Controller::for_stream_with(watch.changed, watch.store, watch.kind)
        .with_config(config)
        .reconcile_on(rx)
        .shutdown_on_signal()
        .run(
            contain::contained(crate::workload::reconcile),
            contain::error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Runs the controller of pods no workload controls until shutdown: each
/// is measured as a workload of kind Pod.
pub async fn run_pods(
    pods: Store<CachedPod>,
    rx: mpsc::UnboundedReceiver<ObjectRef<CachedPod>>,
    ctx: Arc<Context>,
) {
    let config = kube::runtime::controller::Config::default().concurrency(CONCURRENCY);
    let never = futures::stream::pending::<Result<CachedPod, watcher::Error>>();
    Controller::for_stream(never, pods)
        .with_config(config)
        .reconcile_on(rx)
        .shutdown_on_signal()
        .run(
            contain::contained(|pod: Arc<CachedPod>, ctx| {
                crate::workload::reconcile(Arc::new(CachedWorkload::of_pod(&pod)), ctx)
            }),
            contain::error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Drives a watch stream to its end: its side effects (the store, the
/// index, the triggers it wakes) are what matter, not its items.
pub async fn drive<S, T>(stream: S)
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    stream.for_each(|_| futures::future::ready(())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn pod(name: &str, owner: Option<OwnerReference>) -> CachedPod {
        CachedPod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            ..CachedPod::default()
        }
    }

    #[test]
    fn a_pod_wakes_its_workload_and_a_cron_jobs_pod_the_cron_job() {
        let (deployment_tx, mut deployments) = mpsc::unbounded();
        let (cron_tx, mut cron_jobs) = mpsc::unbounded();
        let (job_tx, mut jobs_woken) = mpsc::unbounded();
        let (pod_tx, mut pods) = mpsc::unbounded();
        let mut triggers = WorkloadTriggers::default();
        triggers.insert(Kind::Deployment, deployment_tx);
        triggers.insert(Kind::CronJob, cron_tx);
        triggers.insert(Kind::Job, job_tx);
        triggers.pods(pod_tx);
        // A Job of CronJob `backup`, and one of nobody's.
        let mut writer = reflector::store::Writer::<CachedWorkload>::new(Kind::Job);
        for (name, cron_job) in [("backup-1", Some("backup")), ("once", None)] {
            let mut job = CachedWorkload::empty(Kind::Job);
            job.metadata.name = Some(name.into());
            job.metadata.namespace = Some("shop".into());
            job.metadata.owner_references = cron_job.map(|c| vec![owner("CronJob", c)]);
            writer.apply_watcher_event(&watcher::Event::Apply(job));
        }
        let wake = wake_owner(triggers, Some(writer.as_reader()));
        wake(&pod(
            "web-7d9f8c6b5-x",
            Some(owner("ReplicaSet", "web-7d9f8c6b5")),
        ));
        wake(&pod("backup-1-x", Some(owner("Job", "backup-1"))));
        wake(&pod("once-x", Some(owner("Job", "once"))));
        wake(&pod("debug", None));
        // Without the hash label the ReplicaSet is the workload, and no
        // ReplicaSet controller is registered: nothing is sent for it.
        assert!(deployments.try_recv().is_err());
        let cron = cron_jobs.try_recv().map(|r| (r.dyntype, r.name));
        assert_eq!(cron.ok(), Some((Kind::CronJob, "backup".to_owned())));
        let job = jobs_woken.try_recv().map(|r| r.name);
        assert_eq!(job.ok().as_deref(), Some("once"));
        assert_eq!(
            pods.try_recv().map(|r| r.name).ok().as_deref(),
            Some("debug")
        );
    }

    #[test]
    fn a_bare_pods_record_goes_with_it() {
        let records = Arc::new(WorkloadRecords::default());
        let key = |name: &str| WorkloadKey {
            namespace: "shop".into(),
            name: name.into(),
            kind: Kind::Pod,
        };
        let record = crate::runtime::records::WorkloadRecord {
            containers: Vec::new(),
            limits: freshen_core::policy::EffectiveLimits {
                unknown_build_as_first_seen: false,
                max_image_age: None,
                max_container_age: None,
                track_base_image: freshen_core::policy::Sourced {
                    value: true,
                    source: freshen_core::policy::Source::Default,
                },
            },
            binding: crate::runtime::records::PolicyBinding::default(),
            config_errors: Vec::new(),
            snoozed: false,
            findings: freshen_core::findings::Findings::default(),
        };
        for name in ["debug", "gone"] {
            records.set(key(name), record.clone());
        }
        let mut writer = reflector::store::Writer::<CachedPod>::default();
        writer.apply_watcher_event(&watcher::Event::Apply(pod("debug", None)));
        let sweep = sweep_bare_pods(Arc::clone(&records), writer.as_reader());
        // A re-list finds `gone` gone; a Delete drops `debug`.
        sweep(&watcher::Event::InitDone);
        assert!(records.get(&key("gone")).is_none());
        assert!(records.get(&key("debug")).is_some());
        sweep(&watcher::Event::Delete(pod("debug", None)));
        assert!(records.get(&key("debug")).is_none());
    }
}
