//! The Refresh controller: the one executor of rollout actions.
//!
//! One reconcile reads top to bottom:
//! publish Events a previous run stored but did not publish -> observe
//! (workload, canary and pods from the shared stores; the metric when a
//! check is due) -> step (pure, `freshen_core::rollout`) -> store the new
//! progress, with the Events that announce it, on the Refresh's
//! resourceVersion (a conflict means another writer won: act on nothing,
//! look again) -> act (every action idempotent) -> publish the Events and
//! clear them -> requeue when the state machine asks.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use freshen_api::Refresh;
use freshen_api::policy::{READY, condition, set_condition};
use freshen_api::refresh::RefreshStatus;
use freshen_api::refresh::{
    CANARY_LABEL, REFRESH_LABEL, REJECTED_DIGESTS, RESTARTED_BY, WORKLOAD_LABEL,
};
use freshen_core::condition::ConditionStatus;
use freshen_core::plan::{add_rejected, canary_name, to_prune};
use freshen_core::rollout::{
    self, Change, EventKind, EventReason, MetricReading, Observed, Phase, PodHealth, RolloutCounts,
    WorkloadState,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::Watch;
use crate::cached::{CachedPod, CachedWorkload};
use crate::context::Context;
use crate::deployment::{
    FIELD_MANAGER, deployment_ref, owned_by, owning_workload, template_fingerprint,
};
use crate::error::Error;
use freshen_core::kind::Kind;

/// Reconciles one Refresh: publish leftovers -> observe -> (deleted?) ->
/// step (pure) -> store the intent -> act -> announce -> requeue.
#[instrument(skip_all, fields(refresh = %refresh.namespace().unwrap_or_default() + "/" + &refresh.name_any()))]
pub async fn reconcile(refresh: Arc<Refresh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = refresh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let pending = ctx.readiness.pending();
    if pending.contains(&Watch::Deployments) || pending.contains(&Watch::Pods) {
        // Not listed yet: the workload would look deleted.
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    let api: Api<Refresh> = Api::namespaced(ctx.client.clone(), &namespace);
    let workload = ctx
        .deployments
        .get(&deployment_ref(&refresh.spec.workload, &namespace));
    let Some(refresh) = publish_leftovers(&ctx, &api, refresh, workload.as_deref()).await? else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    let now = Utc::now();
    let scene = observe(&ctx, &refresh, workload, now).await?;
    if let Some(done) = finish_deletion(&ctx, &api, &refresh, &scene).await? {
        return Ok(done);
    }
    let step = rollout::step(&scene.target, &scene.progress, &scene.observed, now);
    let Some((refresh, stored)) = store_intent(&api, refresh, &scene, &step, now).await? else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    act(&ctx, &refresh, &scene, &step.actions).await?;
    announce(&ctx, &api, &refresh, stored, &scene, &step).await
}

/// Everything one reconcile observed, and what it is for.
struct Scene {
    /// The Refresh's name.
    name: String,
    /// The state machine's view of the spec.
    target: rollout::Target,
    /// The stored progress.
    progress: rollout::Progress,
    /// The workload, when it exists.
    workload: Option<Arc<CachedWorkload>>,
    /// The canary's name, and the Deployment holding it, if any.
    canary_name: String,
    canary: Option<Arc<CachedWorkload>>,
    /// Who holds the canary's name.
    holder: CanaryHolder,
    /// The facts `step` decides on.
    observed: Observed,
}

/// Events a previous run stored and did not publish (it died, or an action
/// failed) go out before anything new happens. `None`: another writer
/// changed the Refresh meanwhile.
async fn publish_leftovers(
    ctx: &Context,
    api: &Api<Refresh>,
    refresh: Arc<Refresh>,
    workload: Option<&CachedWorkload>,
) -> Result<Option<Arc<Refresh>>, Error> {
    if refresh.progress().pending_events.is_empty() {
        return Ok(Some(refresh));
    }
    Ok(publish_pending(ctx, api, &refresh, workload)
        .await?
        .map(Arc::new))
}

/// The workload, the canary, their pods (from the shared stores), the
/// metric when a check is due, and whether the Refresh matches its
/// workload.
async fn observe(
    ctx: &Context,
    refresh: &Refresh,
    workload: Option<Arc<CachedWorkload>>,
    now: chrono::DateTime<Utc>,
) -> Result<Scene, Error> {
    let namespace = refresh.namespace().unwrap_or_default();
    let name = refresh
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    // Refreshes created before --max-analysis-time was lowered (or set)
    // are held to it too.
    let mut target = refresh.target(&name);
    target.settings = target.settings.capped(ctx.config.max_analysis_time);
    let progress = refresh.progress();
    let canary_name = canary_name(&refresh.spec.workload);
    let canary = ctx
        .deployments
        .get(&deployment_ref(&canary_name, &namespace));
    let holder = canary
        .as_deref()
        .map_or(CanaryHolder::Nobody, |c| canary_holder(c, refresh));
    let live = |p: &&Arc<CachedPod>| p.metadata.deletion_timestamp.is_none();
    let canary_pods = ctx
        .pods_of(&deployment_ref(&canary_name, &namespace))
        .iter()
        .filter(live)
        .filter(|p| p.labels().get(REFRESH_LABEL) == Some(&name))
        .map(|p| pod_health(p))
        .collect();
    let new_pods = ctx
        .pods_of(&deployment_ref(&refresh.spec.workload, &namespace))
        .iter()
        .filter(live)
        .filter(|p| runs_target(p, &target))
        .map(|p| pod_health(p))
        .collect();
    let metric = match (&target.settings.metric, progress.phase) {
        (Some(check), Phase::Canary) if rollout::check_due(&target, &progress, now) => {
            Some(query_confined(ctx, &namespace, &check.query).await)
        }
        _ => None,
    };
    let untrusted = workload
        .as_deref()
        .and_then(|w| rollout::verify(&target, &provenance(refresh, w)).err());
    let observed = Observed {
        workload: workload
            .as_deref()
            .and_then(|w| workload_state(w, &target.container)),
        canary_exists: holder == CanaryHolder::This,
        foreign_canary: holder == CanaryHolder::Leftover,
        canary_name_taken: (holder == CanaryHolder::Someone).then(|| canary_name.clone()),
        untrusted,
        canary_pods,
        new_pods,
        metric,
    };
    Ok(Scene {
        name,
        target,
        progress,
        workload,
        canary_name,
        canary,
        holder,
        observed,
    })
}

/// A Refresh deleted before the workload was changed, or after the end:
/// the canary goes, then the Refresh. Deleted while the workload is being
/// changed (promoting, rolling back) it is finished first, so that no
/// workload is left half-changed: `None`, carry on.
async fn finish_deletion(
    ctx: &Context,
    api: &Api<Refresh>,
    refresh: &Refresh,
    scene: &Scene,
) -> Result<Option<Action>, Error> {
    if refresh.metadata.deletion_timestamp.is_none() || scene.progress.phase.changes_workload() {
        return Ok(None);
    }
    if let Some(c) = scene
        .canary
        .as_deref()
        .filter(|_| scene.holder == CanaryHolder::This)
    {
        delete_canary(ctx, c).await?;
    }
    release(api, refresh).await?;
    Ok(Some(Action::await_change()))
}

/// Stores the next progress (with the Events announcing it) before
/// anything is changed, on the Refresh's resourceVersion; takes the
/// finalizer first when the workload is about to be changed. Returns the
/// Refresh to act for and the stored copy (`None` when nothing changed),
/// or `None` when another writer got there first (act on nothing).
async fn store_intent(
    api: &Api<Refresh>,
    refresh: Arc<Refresh>,
    scene: &Scene,
    step: &rollout::Step,
    now: chrono::DateTime<Utc>,
) -> Result<Option<(Arc<Refresh>, Option<Refresh>)>, Error> {
    let refresh = if step.progress.phase.changes_workload() && !holds_finalizer(&refresh) {
        match hold(api, &refresh).await? {
            Some(updated) => Arc::new(updated),
            None => return Ok(None),
        }
    } else {
        refresh
    };
    let status = next_status(&refresh, scene, step, now);
    if refresh.status.as_ref() == Some(&status) {
        return Ok(Some((refresh, None)));
    }
    let Some(stored) = store_status(api, &refresh, status, Error::StoreProgress).await? else {
        // Another writer (a second operator, or our own older view) got
        // there first: do nothing on a stale decision.
        info!("refresh changed meanwhile; stepping again");
        return Ok(None);
    };
    if step.progress.phase != scene.progress.phase {
        info!(from = %scene.progress.phase, to = %step.progress.phase, message = %step.progress.message, "refresh moved");
    }
    Ok(Some((refresh, Some(stored))))
}

/// The status a step leads to: its progress, the canary's name once one
/// was started, and `Ready` mirroring the phase.
fn next_status(
    refresh: &Refresh,
    scene: &Scene,
    step: &rollout::Step,
    now: chrono::DateTime<Utc>,
) -> RefreshStatus {
    let mut status = refresh.status.clone().unwrap_or_default();
    status.progress = step.progress.clone();
    status.observed_generation = refresh.metadata.generation;
    if step.progress.canary_started_at.is_some() {
        status.canary = Some(scene.canary_name.clone());
    }
    let (ready, reason) = step.progress.phase.ready();
    let ready_condition = condition(
        READY,
        ready,
        reason,
        step.progress.message.clone(),
        refresh.metadata.generation,
        freshen_api::time::to_time(now),
    );
    set_condition(&mut status.conditions, ready_condition);
    status
}

/// Carries out a step's changes, each idempotent.
async fn act(
    ctx: &Context,
    refresh: &Refresh,
    scene: &Scene,
    changes: &[Change],
) -> Result<(), Error> {
    for change in changes {
        match change {
            Change::CreateCanary { replicas } => {
                let Some(w) = &scene.workload else { continue };
                create_canary(ctx, refresh, w, &scene.canary_name, *replicas).await?;
            }
            Change::DeleteCanary => {
                // Only a Deployment freshen made for a Refresh, and only the
                // very object judged (uid precondition).
                if let Some(c) = scene.canary.as_deref().filter(|_| scene.holder.freshens()) {
                    delete_canary(ctx, c).await?;
                }
            }
            Change::SetImage { image, stamp } => {
                let Some(w) = &scene.workload else { continue };
                let stamp = stamp.then_some(scene.name.as_str());
                set_image(ctx, w, &scene.target.container, image, stamp).await?;
            }
            Change::RejectDigest => {
                let Some(w) = &scene.workload else { continue };
                reject_digest(ctx, w, refresh).await?;
            }
        }
    }
    Ok(())
}

/// Publishes what the step announced, releases the finalizer once the
/// change is finished, and says when to look again.
async fn announce(
    ctx: &Context,
    api: &Api<Refresh>,
    refresh: &Refresh,
    stored: Option<Refresh>,
    scene: &Scene,
    step: &rollout::Step,
) -> Result<Action, Error> {
    if let Some(stored) = stored.filter(|r| !r.progress().pending_events.is_empty())
        && publish_pending(ctx, api, &stored, scene.workload.as_deref())
            .await?
            .is_none()
    {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    if step.progress.phase.is_terminal() {
        // The change is finished: a delete need not wait any more.
        release(api, refresh).await?;
        return Ok(Action::await_change());
    }
    Ok(step
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// The finalizer a Refresh holds while its workload is being changed
/// (promoting, rolling back): deleted then, it stays until the change is
/// finished, so no workload is left half-changed. Only then: a Refresh
/// never blocks a namespace's deletion while freshen is not running unless
/// it was interrupted mid-change.
pub const FINALIZER: &str = "freshen.dev/finish-rollout";

fn holds_finalizer(refresh: &Refresh) -> bool {
    refresh.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds [`FINALIZER`]; the stored Refresh, or `None` on a conflict.
async fn hold(api: &Api<Refresh>, refresh: &Refresh) -> Result<Option<Refresh>, Error> {
    let mut finalizers = refresh.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(api, refresh, &finalizers).await
}

/// Removes [`FINALIZER`] from a Refresh, guarded by its resourceVersion.
async fn release(api: &Api<Refresh>, refresh: &Refresh) -> Result<(), Error> {
    if !holds_finalizer(refresh) {
        return Ok(());
    }
    let rest: Vec<String> = refresh
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    // Gone, or changed meanwhile: the change's watch event brings it back.
    set_finalizers(api, refresh, &rest).await?;
    Ok(())
}

/// Replaces a Refresh's finalizers, guarded by the resourceVersion it was
/// read at: the stored Refresh, or `None` when it changed meanwhile (or is
/// gone).
async fn set_finalizers(
    api: &Api<Refresh>,
    refresh: &Refresh,
    finalizers: &[String],
) -> Result<Option<Refresh>, Error> {
    let patch = json!({"metadata": {
        "resourceVersion": refresh.resource_version(),
        "finalizers": finalizers,
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&refresh.name_any(), &params, &Patch::Merge(patch))
        .await
    {
        Ok(stored) => Ok(Some(stored)),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(Error::Finalizer(e)),
    }
}

/// How soon to look again after losing a write to another writer.
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Replaces the Refresh's status, guarded by the resourceVersion it was read
/// at. Returns the stored object, or `None` when another writer changed the
/// Refresh first (409).
async fn store_status(
    api: &Api<Refresh>,
    refresh: &Refresh,
    status: RefreshStatus,
    failed: fn(kube::Error) -> Error,
) -> Result<Option<Refresh>, Error> {
    let mut updated = refresh.clone();
    updated.status = Some(status);
    updated.metadata.managed_fields = None;
    match api
        .replace_status(&refresh.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(stored) => Ok(Some(stored)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

/// Publishes the Events stored in the Refresh's status, then clears them;
/// a terminal phase's outcome is counted once the clear is stored, so only
/// one writer ever counts it. Events are at least once: an operator that
/// dies before the clear is stored, or works from a view older than its own
/// clear, publishes them again. Returns the stored Refresh, or `None` when
/// another writer changed it first.
async fn publish_pending(
    ctx: &Context,
    api: &Api<Refresh>,
    refresh: &Refresh,
    workload: Option<&CachedWorkload>,
) -> Result<Option<Refresh>, Error> {
    let mut status = refresh.status.clone().unwrap_or_default();
    let pending = std::mem::take(&mut status.progress.pending_events);
    for event in &pending {
        ctx.refresh_event(
            refresh,
            workload,
            event.kind,
            event.reason,
            event.note.clone(),
        )
        .await;
    }
    let progress = status.progress.clone();
    let Some(stored) = store_status(api, refresh, status, Error::ClearEvents).await? else {
        // A stale view (the cache had not caught up with our own clear) or
        // a second writer: the Events may go out twice (they are at least
        // once), but only the writer whose clear is stored counts them.
        return Ok(None);
    };
    for _ in pending.iter().filter(|e| e.phase.is_terminal()) {
        ctx.metrics.refresh_transition(refresh, &progress);
    }
    if pending.iter().any(|e| e.phase.is_terminal()) {
        // The workload may want its next refresh now; older records go.
        if let Some(w) = workload {
            ctx.workload_trigger.send(w.reference());
        }
        let namespace = refresh.namespace().unwrap_or_default();
        prune_history(ctx, &namespace, &refresh.spec.workload).await;
    }
    Ok(Some(stored))
}

/// The state machine's view of a Deployment's `container`.
pub fn workload_state(deploy: &CachedWorkload, container: &str) -> Option<WorkloadState> {
    let spec = deploy.spec.as_ref()?;
    let image = deploy
        .container(container)
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let status = deploy.status.clone().unwrap_or_default();
    let rolled_out = RolloutCounts {
        generation: deploy.metadata.generation,
        observed_generation: status.observed_generation,
        desired: replicas,
        total: status.replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
    }
    .rolled_out();
    Some(WorkloadState {
        image,
        template: template_fingerprint(deploy, container).unwrap_or_default(),
        restart_token: spec.template.restarted_by.clone(),
        replicas,
        rolled_out,
    })
}

/// The active Refresh of the workload `name` in `namespace`, if any.
pub fn active_for(refreshes: &Store<Refresh>, namespace: &str, name: &str) -> Option<Arc<Refresh>> {
    refreshes.state().into_iter().find(|r| {
        r.namespace().as_deref() == Some(namespace)
            && r.spec.workload == name
            && !r.progress().phase.is_terminal()
    })
}

/// The Refresh a pod's change concerns: its canary's, or the active one of
/// its workload.
pub fn of_pod(pod: &CachedPod, refreshes: &Store<Refresh>) -> Option<ObjectRef<Refresh>> {
    let namespace = pod.namespace()?;
    if let Some(name) = pod.labels().get(REFRESH_LABEL) {
        return Some(ObjectRef::new(name).within(&namespace));
    }
    let workload = owning_workload(pod).filter(|w| w.dyntype == Kind::Deployment)?;
    active_for(refreshes, &namespace, &workload.name).map(|r| ObjectRef::from_obj(r.as_ref()))
}

/// The Refresh a Deployment's change concerns: its canary's, or the active
/// one of the workload.
pub fn of_deployment(
    deploy: &CachedWorkload,
    refreshes: &Store<Refresh>,
) -> Option<ObjectRef<Refresh>> {
    let namespace = deploy.namespace()?;
    if let Some(name) = deploy.labels().get(REFRESH_LABEL) {
        return Some(ObjectRef::new(name).within(&namespace));
    }
    active_for(refreshes, &namespace, &deploy.name_any()).map(|r| ObjectRef::from_obj(r.as_ref()))
}

/// Whether a workload pod runs the refresh's change.
fn runs_target(pod: &CachedPod, target: &rollout::Target) -> bool {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == target.container))
        .and_then(|c| c.image.as_deref());
    image == Some(target.to_image.as_str())
        && (!target.restarts() || pod.annotations().get(RESTARTED_BY) == Some(&target.name))
}

/// A pod's health as the state machine reads it: Ready, restarts, and the
/// waiting and termination reasons of its containers, current and last.
pub fn pod_health(pod: &CachedPod) -> PodHealth {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && ConditionStatus::True.is(&c.status));
    let containers = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let mut restarts = 0u32;
    let mut reasons = Vec::new();
    for c in containers {
        restarts = restarts.saturating_add(u32::try_from(c.restart_count).unwrap_or(0));
        for state in [c.state.as_ref(), c.last_state.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(r) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
                reasons.push(r);
            }
            if let Some(r) = state.terminated.as_ref().and_then(|t| t.reason.clone()) {
                reasons.push(r);
            }
        }
    }
    PodHealth {
        name: pod.name_any(),
        ready,
        restarts,
        reasons,
    }
}

/// The canary Deployment: the workload's pod template with the new image,
/// the workload's pod labels plus the canary's, its own selector, owned by
/// the Refresh (so it cannot outlive it).
pub fn canary_deployment(
    refresh: &Refresh,
    workload: &Deployment,
    name: &str,
    replicas: u32,
) -> Option<Deployment> {
    let refresh_name = refresh.metadata.name.clone()?;
    let mut template = workload.spec.as_ref()?.template.clone();
    let own = BTreeMap::from([
        (CANARY_LABEL.to_owned(), "true".to_owned()),
        (REFRESH_LABEL.to_owned(), refresh_name.clone()),
    ]);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(own.clone());
    let spec = template.spec.as_mut()?;
    let container = spec
        .containers
        .iter_mut()
        .find(|c| c.name == refresh.spec.container)?;
    container.image = Some(refresh.spec.to_image.clone());
    let mut labels = own.clone();
    labels.insert(WORKLOAD_LABEL.to_owned(), refresh.spec.workload.clone());
    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: workload.namespace(),
            labels: Some(labels),
            // The Refresh controls its canary: deleting it deletes the
            // canary, and freshen recognises the canary by it.
            owner_references: Some(vec![refresh.controller_owner_ref(&())?]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(own),
                match_expressions: None,
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Creates the canary from the whole workload, read afresh (the cache
/// keeps only part of the template): only if it is still the one the decision saw
/// (same uid, same template fingerprint and image), else the next step sees
/// the change.
async fn create_canary(
    ctx: &Context,
    refresh: &Refresh,
    cached: &CachedWorkload,
    name: &str,
    replicas: u32,
) -> Result<(), Error> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let workload = api
        .get(&cached.name_any())
        .await
        .map_err(Error::ReadWorkload)?;
    let container = &refresh.spec.container;
    let fresh = CachedWorkload::from(&workload);
    let same = workload.metadata.uid == cached.metadata.uid
        && template_fingerprint(&fresh, container) == template_fingerprint(cached, container)
        && workload_state(&fresh, container).map(|s| s.image)
            == workload_state(cached, container).map(|s| s.image);
    if !same {
        return Err(Error::Stale("the workload changed since it was read"));
    }
    let Some(canary) = canary_deployment(refresh, &workload, name, replicas) else {
        return Err(Error::MissingField(
            "the Refresh's container in the workload's pod template",
        ));
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &canary).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::CreateCanary(e)),
    }
}

/// Who holds the canary's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryHolder {
    /// No Deployment has it.
    Nobody,
    /// This Refresh's canary: freshen's label and a controller owner
    /// reference to this Refresh, matched by uid.
    This,
    /// Another Refresh's canary (label and owner reference to a Refresh):
    /// a leftover to delete before this one's is created.
    Leftover,
    /// A Deployment freshen did not create: never touched.
    Someone,
}

impl CanaryHolder {
    /// Whether the holder is a Deployment freshen created (and so may
    /// delete).
    fn freshens(self) -> bool {
        matches!(self, Self::This | Self::Leftover)
    }
}

/// Who holds the canary's name: judged by freshen's label and a
/// controller owner reference to a Refresh (by uid), never by name alone.
pub fn canary_holder(canary: &CachedWorkload, refresh: &Refresh) -> CanaryHolder {
    let owner = canary.owner_references().iter().find(|o| {
        o.controller == Some(true)
            && o.kind == Refresh::kind(&())
            && o.api_version.split('/').next() == Some(Refresh::group(&()).as_ref())
    });
    let labelled = canary.labels().contains_key(REFRESH_LABEL);
    match owner {
        Some(o) if labelled && refresh.metadata.uid.as_deref() == Some(o.uid.as_str()) => {
            CanaryHolder::This
        }
        Some(_) if labelled => CanaryHolder::Leftover,
        _ => CanaryHolder::Someone,
    }
}

/// What the executor checks the Refresh against before acting.
fn provenance(refresh: &Refresh, workload: &CachedWorkload) -> rollout::Provenance {
    rollout::Provenance {
        owned_by_workload: owned_by(refresh, workload),
        digest: refresh.spec.digest.clone(),
        container_image: workload
            .container(&refresh.spec.container)
            .map(|c| c.image.clone().unwrap_or_default()),
    }
}

/// Deletes a canary freshen created, by uid: if the name now belongs to
/// another object, the API server refuses (409) and nothing is deleted.
async fn delete_canary(ctx: &Context, canary: &CachedWorkload) -> Result<(), Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: canary.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&canary.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(Error::DeleteCanary(e)),
    }
}

/// Sets one container's image (and the restart stamp) with a strategic merge
/// patch that names nothing else, guarded by the resourceVersion the
/// decision was made on: if someone changed the workload since, the patch
/// fails and the next step sees their change.
async fn set_image(
    ctx: &Context,
    workload: &CachedWorkload,
    container: &str,
    image: &str,
    stamp: Option<&str>,
) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let mut template = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    if let Some(stamp) = stamp {
        template["metadata"] = json!({"annotations": {RESTARTED_BY: stamp}});
    }
    let patch = json!({
        "metadata": {"resourceVersion": workload.resource_version()},
        "spec": {"template": template},
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&workload.name_any(), &params, &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Err(Error::Stale("the workload changed since it was read"))
        }
        Err(e) => Err(Error::PatchImage(e)),
    }
}

/// Adds the Refresh's digest to the workload's rejected digests.
async fn reject_digest(
    ctx: &Context,
    workload: &CachedWorkload,
    refresh: &Refresh,
) -> Result<(), Error> {
    let Ok(digest) = refresh.spec.digest.parse() else {
        return Err(Error::MissingField("spec.digest"));
    };
    let api: Api<CachedWorkload> = Api::namespaced_with(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
        &workload.kind,
    );
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    // Read, add, write guarded by the uid and resourceVersion just read: the
    // list is never written from a stale copy (a leader paused past its
    // Lease, a concurrent edit), and the Deployment's own status updates
    // only cost another read.
    let mut current = workload.clone();
    for _ in 0..REJECT_ATTEMPTS {
        let before = current
            .annotations()
            .get(REJECTED_DIGESTS)
            .cloned()
            .unwrap_or_default();
        let value = add_rejected(&before, &refresh.spec.container, &digest);
        if value == before {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "uid": current.metadata.uid,
            "resourceVersion": current.resource_version(),
            "annotations": {REJECTED_DIGESTS: value},
        }});
        match api
            .patch(&current.name_any(), &params, &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                current = api
                    .get(&current.name_any())
                    .await
                    .map_err(Error::RecordRejected)?;
                if current.metadata.uid != workload.metadata.uid {
                    return Err(Error::Stale("the workload was replaced"));
                }
            }
            Err(e) => return Err(Error::RecordRejected(e)),
        }
    }
    Err(Error::Stale(
        "the workload kept changing while the digest was recorded",
    ))
}

/// Guarded writes of the rejected digests tried before giving up for this
/// step (the rollback repeats the action until it is terminal).
const REJECT_ATTEMPTS: usize = 5;

/// Deletes the oldest finished Refreshes of a workload beyond the history
/// limit.
async fn prune_history(ctx: &Context, namespace: &str, workload: &str) {
    let finished = ctx
        .refreshes
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.workload == workload)
        .filter(|r| r.progress().phase.is_terminal())
        .map(|r| (r.progress().finished_at, r.name_any()))
        .collect();
    let api: Api<Refresh> = Api::namespaced(ctx.client.clone(), namespace);
    for name in to_prune(finished, ctx.config.refresh_history) {
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            warn!(error = %e, refresh = %name, "could not prune an old refresh");
        }
    }
}

/// Runs a canary query, unless it reads beyond the Refresh's namespace and
/// no ClusterRefreshPolicy (the platform team's, which may query freely)
/// asks it. Re-checked here: the policy was valid when the Refresh was
/// planned, but the Refresh is what runs.
async fn query_confined(ctx: &Context, namespace: &str, query: &str) -> MetricReading {
    let cluster_wide = ctx.cluster_policies.state().iter().any(|p| {
        p.spec
            .refresh
            .rollout
            .as_ref()
            .and_then(|r| r.analysis.as_ref())
            .and_then(|a| a.prometheus.as_ref())
            .is_some_and(|c| c.query == query)
    });
    if !cluster_wide && let Err(e) = freshen_api::promql::confined_to(query, namespace) {
        return MetricReading::Error(format!("query not run: it {e}"));
    }
    ctx.query_metric(query).await
}

impl Context {
    /// Asks Prometheus for a canary metric.
    async fn query_metric(&self, query: &str) -> MetricReading {
        match &self.prometheus {
            None => MetricReading::Error("no Prometheus configured (--prometheus-url)".into()),
            Some(p) => p.query(query).await,
        }
    }

    /// Publishes an Event on the Refresh and, when it exists, the workload.
    async fn refresh_event(
        &self,
        refresh: &Refresh,
        workload: Option<&CachedWorkload>,
        kind: EventKind,
        reason: EventReason,
        note: String,
    ) {
        let type_ = match kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        };
        let mut targets = vec![refresh.object_ref(&())];
        targets.extend(workload.map(|w| w.object_ref(&w.kind)));
        let note = format!("Refresh {}: {note}", refresh.name_any());
        self.publish(type_, reason, "Refresh", note, &targets).await;
    }
}

#[cfg(test)]
mod executor_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::RefreshSpec;
    use freshen_core::rollout::{Reason, Settings};

    fn deploy() -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "generation": 3, "uid": "d-uid"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "annotations": {RESTARTED_BY: "old"}},
                    "spec": {"containers": [
                        {"name": "app", "image": "reg/web:1"},
                        {"name": "sidecar", "image": "reg/proxy:2"}
                    ]}
                }
            },
            "status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4}
        }))
        .unwrap_or_default()
    }

    /// [`deploy`] as the cache holds it.
    fn cached() -> CachedWorkload {
        CachedWorkload::from(&deploy())
    }

    fn refresh() -> Refresh {
        let mut r = Refresh::new(
            "web-app-222222222222",
            RefreshSpec {
                workload: "web".into(),
                container: "app".into(),
                reason: Reason::NewDigest,
                from_image: "reg/web:1".into(),
                to_image: "reg/web:1@sha256:22".into(),
                from_digest: "unknown".into(),
                to_digest: "222222222222".into(),
                digest: "sha256:22".into(),
                rollout: Settings::default(),
                template_fingerprint: None,
                verification: None,
            },
        );
        r.metadata.uid = Some("r-uid".into());
        r
    }

    #[test]
    fn the_workload_state_reads_the_container_and_the_rollout() {
        let d = cached();
        let w = workload_state(&d, "app");
        assert_eq!(
            w,
            Some(WorkloadState {
                image: "reg/web:1".into(),
                restart_token: Some("old".into()),
                template: template_fingerprint(&d, "app").unwrap_or_default(),
                replicas: 4,
                rolled_out: true,
            })
        );
        let mut behind = d.clone();
        if let Some(s) = behind.status.as_mut() {
            s.observed_generation = Some(2);
        }
        assert_eq!(
            workload_state(&behind, "app").map(|w| w.rolled_out),
            Some(false)
        );
        let mut old_pods_left = d;
        if let Some(s) = old_pods_left.status.as_mut() {
            s.replicas = Some(5);
        }
        assert_eq!(
            workload_state(&old_pods_left, "app").map(|w| w.rolled_out),
            Some(false)
        );
    }

    #[test]
    fn the_template_fingerprint_ignores_only_what_a_refresh_changes() {
        let edited = |edit: &dyn Fn(&mut k8s_openapi::api::core::v1::PodTemplateSpec)| {
            let mut d = deploy();
            if let Some(s) = d.spec.as_mut() {
                edit(&mut s.template);
            }
            template_fingerprint(&CachedWorkload::from(&d), "app")
        };
        let container = |t: &mut k8s_openapi::api::core::v1::PodTemplateSpec, i: usize| {
            t.spec
                .as_mut()
                .map(|s| s.containers[i].clone())
                .unwrap_or_default()
        };
        let set = |t: &mut k8s_openapi::api::core::v1::PodTemplateSpec,
                   i: usize,
                   c: k8s_openapi::api::core::v1::Container| {
            if let Some(s) = t.spec.as_mut() {
                s.containers[i] = c;
            }
        };
        let annotations = |t: &mut k8s_openapi::api::core::v1::PodTemplateSpec,
                           a: Option<BTreeMap<String, String>>| {
            if let Some(m) = t.metadata.as_mut() {
                m.annotations = a;
            }
        };
        let one = |k: &str, v: &str| Some(BTreeMap::from([(k.to_owned(), v.to_owned())]));
        let before = edited(&|_| {});
        assert!(before.as_ref().is_some_and(|f| f.len() == 16));

        // What a refresh changes: the container's image, the stamp.
        let pinned = edited(&|t| {
            let mut c = container(t, 0);
            c.image = Some("reg/web@sha256:1".into());
            set(t, 0, c);
        });
        assert_eq!(pinned, before);
        let restamped = edited(&|t| annotations(t, one(RESTARTED_BY, "web-app-restart-1")));
        assert_eq!(restamped, before);

        // Someone else's edits.
        let sidecar = edited(&|t| {
            let mut c = container(t, 1);
            c.image = Some("reg/proxy:3".into());
            set(t, 1, c);
        });
        assert_ne!(sidecar, before);
        let env = edited(&|t| {
            let mut c = container(t, 0);
            c.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                ..Default::default()
            }]);
            set(t, 0, c);
        });
        assert_ne!(env, before);
        let kubectl_restart = edited(&|t| {
            annotations(
                t,
                one("kubectl.kubernetes.io/restartedAt", "2026-11-22T10:00:00Z"),
            );
        });
        assert_ne!(kubectl_restart, before);

        // The stamp as the template's only annotation (or its only
        // metadata): adding it is no change either.
        assert_eq!(
            edited(&|t| annotations(t, one(RESTARTED_BY, "r"))),
            edited(&|t| annotations(t, None))
        );
        let bare = |stamped: bool| {
            edited(&move |t| {
                t.metadata = stamped.then(|| ObjectMeta {
                    annotations: one(RESTARTED_BY, "r"),
                    ..ObjectMeta::default()
                });
            })
        };
        assert_eq!(bare(true), bare(false));
    }

    #[test]
    fn the_canary_copies_the_template_with_the_new_image_and_its_own_selector() {
        let canary = canary_deployment(&refresh(), &deploy(), "web-canary", 1);
        let canary = canary.unwrap_or_default();
        let spec = canary.spec.unwrap_or_default();
        assert_eq!(spec.replicas, Some(1));
        let selector = spec.selector.match_labels.unwrap_or_default();
        assert_eq!(selector.get(CANARY_LABEL).map(String::as_str), Some("true"));
        assert!(
            !selector.contains_key("app"),
            "the workload's selector must not match"
        );
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(REFRESH_LABEL).map(String::as_str),
            Some("web-app-222222222222")
        );
        let containers = spec.template.spec.map(|s| s.containers).unwrap_or_default();
        let images: Vec<_> = containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect();
        assert_eq!(images, ["reg/web:1@sha256:22", "reg/proxy:2"]);
        let owner = canary.metadata.owner_references.unwrap_or_default();
        assert_eq!(
            owner
                .first()
                .map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller)),
            Some(("Refresh", "r-uid", Some(true)))
        );
    }

    #[test]
    fn pod_health_collects_restarts_and_reasons_of_now_and_before() {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
                }]
            }
        }))
        .unwrap_or_default();
        let h = pod_health(&pod);
        assert_eq!((h.ready, h.restarts), (false, 3));
        assert_eq!(h.reasons, ["CrashLoopBackOff", "OOMKilled"]);
    }
}
