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

/// The workload controllers with their watches registered: a watch and
/// a store per kind the cluster serves, the one pod watch (and the pod
/// index), the namespaces, the router that wakes a workload's controller,
/// and their start.
pub struct Registered {
    /// Every workload, per kind.
    pub stores: crate::runtime::context::Workloads,
    /// Wakes the controller of a workload's kind.
    pub triggers: WorkloadTriggers,
    /// Every pod.
    pub pods: Store<CachedPod>,
    /// The pods of each workload.
    pub pod_index: crate::runtime::pod_index::PodIndex,
    /// The Jobs of each CronJob.
    pub job_index: JobIndex,
    /// Every namespace watched (labels, for ClusterRefreshPolicies).
    pub namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    /// Runs every kind's controller and the pod controller.
    pub start: crate::Start,
}

/// Registers a watch and controller per kind in `kinds` that the cluster
/// serves, the pod watch (it wakes the workload each pod belongs to, and
/// the Refresh a pod's change concerns), and the namespace watch (a label
/// change re-measures the namespace's workloads).
pub async fn register(
    w: &crate::Wiring<'_>,
    kinds: &[Kind],
    records: &Arc<WorkloadRecords>,
    (refreshes, wake): (
        &Store<freshen_api::Refresh>,
        &mpsc::UnboundedSender<ObjectRef<freshen_api::Refresh>>,
    ),
) -> Result<Registered, crate::RunError> {
    use futures::FutureExt;
    let mut triggers = WorkloadTriggers::default();
    let mut stores = crate::runtime::context::Workloads::default();
    let mut kind_watches = Vec::new();
    let job_index = JobIndex::default();
    for &kind in kinds {
        if kind == Kind::Pod || !served(w.client, kind).await {
            continue;
        }
        let mut kind_watch = watch(
            w.client,
            w.namespace,
            kind,
            Arc::clone(records),
            w.readiness.watch(Watch::of_kind(kind)),
            job_index.clone(),
        );
        if kind.refreshed() {
            // A workload's change (a canary Deployment's too) wakes its
            // Refresh.
            kind_watch.changed = kind_watch
                .changed
                .inspect_ok(crate::wake_refresh(
                    refreshes,
                    wake,
                    crate::refresh::of_workload,
                ))
                .boxed();
        }
        let (tx, rx) = mpsc::unbounded();
        triggers.insert(kind, tx);
        stores.insert(kind, kind_watch.store.clone());
        kind_watches.push((kind_watch, rx));
    }
    if stores.store(Kind::Deployment).is_none() {
        return Err(crate::RunError::DeploymentsNotWatched);
    }
    let (pod_tx, pod_rx) = mpsc::unbounded();
    if kinds.contains(&Kind::Pod) {
        triggers.pods(pod_tx);
    }

    // One watch of all pods serves as the cache reconciles read from and
    // wakes the workload each pod belongs to; a pod of a canary or of a
    // workload under refresh also wakes its Refresh.
    let (pods, pod_writer) = reflector::store();
    let pod_index = crate::runtime::pod_index::PodIndex::default();
    let pod_watch = crate::reflected_trimmed(
        crate::scoped::<CachedPod>(w.client, w.namespace),
        watcher::Config::default(),
        pod_writer,
        w.readiness.watch(Watch::Pods),
        trim::pod,
    )
    .inspect_ok({
        let index = pod_index.clone();
        move |event| index.apply(event)
    })
    .inspect_ok(sweep_bare_pods(Arc::clone(records), pods.clone()))
    .touched_objects()
    .inspect_ok(crate::wake_refresh(refreshes, wake, crate::refresh::of_pod))
    .inspect_ok(wake_owner(
        triggers.clone(),
        stores.store(Kind::Job).cloned(),
    ));
    tokio::spawn(drive(pod_watch));

    // Namespace labels decide which ClusterRefreshPolicies apply; a change
    // re-measures the namespace's workloads.
    let (namespaces, namespace_writer) = reflector::store();
    let namespace_watch = match w.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let namespace_trigger = crate::reflected_trimmed(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(w.client.clone()),
        namespace_watch,
        namespace_writer,
        w.readiness.watch(Watch::Namespaces),
        trim::namespace,
    )
    .applied_objects()
    .inspect_ok({
        let (stores, pods, triggers) = (stores.clone(), pods.clone(), triggers.clone());
        move |ns| {
            for workload in stores.refs(&pods, Some(&ns.name_any())) {
                triggers.send(workload);
            }
        }
    });
    tokio::spawn(drive(namespace_trigger));

    // A workload judged before the policies are listed would look
    // ungoverned and be dropped until its next change; so workloads start
    // once the caches a judgement reads have listed. Namespaces and pods
    // are the workload controllers' own triggers, so they cannot wait for
    // them here; their reconcile waits for them instead
    // (`workload::reconcile`). Reconciles in flight at once are bounded per
    // kind: each takes a few milliseconds, and thousands at once (the
    // first assessment) only raise the peak memory the allocator keeps.
    let (readiness, pod_store) = (w.readiness.clone(), pods.clone());
    let start: crate::Start = Box::new(move |ctx| {
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
            let mut controllers: Vec<futures::future::BoxFuture<'static, ()>> = kind_watches
                .into_iter()
                .map(|(watch, rx)| run_kind(watch, rx, Arc::clone(&ctx)).boxed())
                .collect();
            controllers.push(run_pods(pod_store, pod_rx, ctx).boxed());
            futures::future::join_all(controllers).await;
        }
        .boxed()
    });
    Ok(Registered {
        stores,
        triggers,
        pods,
        pod_index,
        job_index,
        namespaces,
        start,
    })
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
