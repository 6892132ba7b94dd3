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

use std::sync::Arc;

use chrono::Utc;
use freshen_api::Refresh;
use freshen_api::policy::{READY, condition, set_condition};
use freshen_api::refresh::RefreshStatus;
use freshen_api::refresh::{REFRESH_LABEL, REJECTED_DIGESTS, RESTARTED_BY};
use freshen_core::condition::ConditionStatus;
use freshen_core::kind::Kind;
use freshen_core::plan::{add_rejected, canary_name, to_prune};
use freshen_core::rollout::{
    self, Change, EventKind, EventReason, MetricReading, Observed, Phase, PodHealth,
};
use futures::future::BoxFuture;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::Watch;
use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;
use crate::runtime::objects::{FIELD_MANAGER, owned_by, owning_workload, workload_ref};

mod argo_rollout;
mod cronjob;
mod daemonset;
mod deployment;
mod in_place;
mod statefulset;

pub use deployment::{CanaryHolder, canary_deployment, canary_holder, workload_state};

/// How one kind of workload is refreshed: what the state machine sees of
/// the workload, its canary and their pods, and how each [`Change`] is
/// made on it. The state machine (`freshen_core::rollout::step`) is the
/// same for every kind. Adding a kind is one implementation, in a file of
/// its own beside this one, and its line in [`mechanics`].
pub trait Mechanics: Sync {
    /// Whether the canary runs inside the workload (its template carries
    /// the new image while a hold keeps it to the canary's pods): then the
    /// workload is being changed from the canary on, and a Refresh deleted
    /// meanwhile is finished first.
    fn in_place(&self) -> bool;

    /// What the state machine sees of the workload, its canary and their
    /// pods, from the shared stores; `phase` is the stored one.
    fn observe(&self, ctx: &Context, refresh: &Refresh, phase: Phase, sight: &mut Sight);

    /// Makes one change; each is idempotent, and guarded so that someone
    /// else's change since `sight` was read is never overwritten.
    fn act<'a>(
        &'a self,
        ctx: &'a Context,
        refresh: &'a Refresh,
        sight: &'a Sight,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// The mechanics of `kind`, if freshen refreshes it.
pub fn mechanics(kind: Kind) -> Option<&'static dyn Mechanics> {
    match kind {
        Kind::Deployment => Some(&deployment::Deployments),
        Kind::StatefulSet => Some(&statefulset::StatefulSets),
        Kind::DaemonSet => Some(&daemonset::DaemonSets),
        Kind::CronJob => Some(&cronjob::CronJobs),
        Kind::Rollout => Some(&argo_rollout::Rollouts),
        _ => None,
    }
}

/// What one reconcile sees of a Refresh's workload and canary.
#[derive(Default)]
pub struct Sight {
    /// The canary's name (a Deployment's canary Deployment).
    pub canary_name: String,
    /// The workload, when it exists.
    pub workload: Option<Arc<CachedWorkload>>,
    /// A canary object of its own, when the kind makes one.
    pub canary: Option<Arc<CachedWorkload>>,
    /// Who holds the canary's name.
    pub holder: Option<CanaryHolder>,
    /// The facts `step` decides on (the executor adds the metric and the
    /// provenance check).
    pub observed: Observed,
}

/// The Refresh controller with its watch registered: the store of every
/// Refresh and the channel that wakes one (the workload and pod watches
/// wake the Refresh a change concerns), and its start.
pub struct Registered {
    /// Every Refresh.
    pub store: Store<Refresh>,
    /// Wakes a Refresh.
    pub wake: futures::channel::mpsc::UnboundedSender<ObjectRef<Refresh>>,
    /// Runs the controller.
    pub start: crate::Start,
}

/// Registers the Refresh watch (it also keeps the count of active
/// Refreshes) and the controller it triggers.
pub fn register(w: &crate::Wiring<'_>) -> Registered {
    use futures::{FutureExt, StreamExt, TryStreamExt};
    use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let trigger = {
        let (store, metrics) = (store.clone(), Arc::clone(w.metrics));
        crate::reflected(
            crate::scoped::<Refresh>(w.client, w.namespace),
            watcher::Config::default(),
            writer,
            w.readiness.watch(Watch::Refreshes),
        )
        .inspect_ok(move |_| metrics.count_active(store.state().iter().map(|r| r.progress().phase)))
        .applied_objects()
    };
    let reader = store.clone();
    // A Refresh stepped before the workloads and pods are listed would
    // see its workload as deleted: its reconcile waits for them (the
    // controller itself must run, to drive the Refresh watch).
    let start: crate::Start = Box::new(move |ctx| {
        Controller::for_stream(trigger, reader)
            .reconcile_on(woken)
            .shutdown_on_signal()
            .run(
                crate::runtime::contain::contained(reconcile),
                crate::runtime::contain::error_policy,
                ctx,
            )
            .for_each(crate::log_failure)
            .boxed()
    });
    Registered { store, wake, start }
}

/// Reconciles one Refresh: publish leftovers -> observe -> (deleted?) ->
/// step (pure) -> store the intent -> act -> announce -> requeue.
#[instrument(skip_all, fields(refresh = %refresh.namespace().unwrap_or_default() + "/" + &refresh.name_any()))]
pub async fn reconcile(refresh: Arc<Refresh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = refresh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let kind = refresh.workload_kind();
    let pending = ctx.readiness.pending();
    if pending.contains(&Watch::of_kind(kind)) || pending.contains(&Watch::Pods) {
        // Not listed yet: the workload would look deleted.
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    let api: Api<Refresh> = Api::namespaced(ctx.client.clone(), &namespace);
    let workload = ctx.workload(&workload_ref(kind, &refresh.spec.workload, &namespace));
    let Some(refresh) = publish_leftovers(&ctx, &api, refresh, workload.as_deref()).await? else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    let now = Utc::now();
    let scene = observe(&ctx, &refresh, workload, now).await?;
    if let Some(done) = finish_deletion(&ctx, &api, &refresh, &scene).await? {
        return Ok(done);
    }
    let step = rollout::step(&scene.target, &scene.progress, &scene.sight.observed, now);
    let Some((refresh, stored)) = store_intent(&api, refresh, &scene, &step, now).await? else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    // The actions see the progress just stored (a pull request's body
    // carries the analysis check that decided the promotion).
    let acting = stored.as_ref().unwrap_or(&refresh);
    act(&ctx, acting, &scene, &step.actions).await?;
    if step.progress.phase.is_terminal()
        && let Err(e) = withdraw(&ctx, acting, &scene).await
    {
        // Left open on the forge: said, and never in the way of the end.
        warn!(refresh = %acting.name_any(), error = %e, "could not close the pull request");
        ctx.publish_failure(&e, e.to_string(), acting.object_ref(&()))
            .await;
    }
    announce(&ctx, &api, &refresh, stored, &scene, &step).await
}

/// Everything one reconcile observed, and what it is for.
struct Scene {
    /// The state machine's view of the spec.
    target: rollout::Target,
    /// The stored progress.
    progress: rollout::Progress,
    /// How its kind is refreshed (`None`: a kind freshen does not refresh).
    mechanics: Option<&'static dyn Mechanics>,
    /// The workload, its canary and what `step` decides on.
    sight: Sight,
}

impl Scene {
    /// Whether the workload is being changed in `phase`: promoting and
    /// rolling back, and for a canary inside the workload the canary too.
    fn changes_workload(&self, phase: Phase) -> bool {
        phase.changes_workload()
            || (phase == Phase::Canary && self.mechanics.is_some_and(|m| m.in_place()))
    }
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

/// The workload, the canary, their pods (from the shared stores, through
/// the kind's mechanics), the metric when a check is due, and whether the
/// Refresh matches its workload.
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
    let kind = refresh.workload_kind();
    let mechanics = mechanics(kind);
    let mut sight = Sight {
        canary_name: canary_name(&refresh.spec.workload),
        workload,
        ..Sight::default()
    };
    match mechanics {
        Some(m) => m.observe(ctx, refresh, progress.phase, &mut sight),
        None => {
            sight.observed.untrusted = Some(format!("freshen does not refresh a {kind}"));
        }
    }
    sight.observed.metric = match (&target.settings.metric, progress.phase) {
        (Some(check), Phase::Canary) if rollout::check_due(&target, &progress, now) => {
            Some(query_confined(ctx, &namespace, &check.query).await)
        }
        _ => None,
    };
    let mut git = refresh.status.as_ref().and_then(|s| s.git.clone());
    if let (Some(recorded), Some(w)) = (&git, sight.workload.as_deref())
        && !progress.phase.is_terminal()
    {
        // A pull request's state lives on its forge: read it, record what
        // changed. An unreachable forge leaves the state as last read.
        match crate::gitops::follow(ctx, refresh, w).await {
            Ok(Some(next)) => {
                announce_pull_requests(ctx, refresh, w, recorded, &next).await;
                record_git(ctx, refresh, next.clone()).await?;
                git = Some(next);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(refresh = %name, error = %e, "could not read the pull request's state");
                ctx.publish_failure(&e, e.to_string(), refresh.object_ref(&()))
                    .await;
            }
        }
    }
    if let Some(git) = &git {
        sight.observed.git = rollout::GitWrites {
            promoted: git.commit.clone(),
            reverted: git.revert_commit.clone(),
            proposal: git
                .pull_request
                .as_ref()
                .map(freshen_api::PullRequestStatus::proposed),
            revert_proposal: git
                .revert_pull_request
                .as_ref()
                .map(freshen_api::PullRequestStatus::proposed),
        };
    }
    if sight.observed.untrusted.is_none() {
        sight.observed.untrusted = sight
            .workload
            .as_deref()
            .and_then(|w| rollout::verify(&target, &provenance(refresh, w)).err());
    }
    Ok(Scene {
        target,
        progress,
        mechanics,
        sight,
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
    if refresh.metadata.deletion_timestamp.is_none() || scene.changes_workload(scene.progress.phase)
    {
        return Ok(None);
    }
    if scene.sight.observed.canary_exists {
        act(ctx, refresh, scene, &[Change::DeleteCanary]).await?;
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
    let refresh = if scene.changes_workload(step.progress.phase) && !holds_finalizer(&refresh) {
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
    if step.progress.canary_started_at.is_some() && !scene.sight.canary_name.is_empty() {
        status.canary = Some(scene.sight.canary_name.clone());
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

/// Carries out a step's changes, each idempotent: the digest's rejection
/// here, the rest by the kind's mechanics.
async fn act(
    ctx: &Context,
    refresh: &Refresh,
    scene: &Scene,
    changes: &[Change],
) -> Result<(), Error> {
    for change in changes {
        match (change, scene.mechanics) {
            (Change::SetImage { image, .. }, _) if scene.target.settings.through_git => {
                let Some(w) = &scene.sight.workload else {
                    continue;
                };
                let revert = *image != scene.target.to_image;
                let before = refresh
                    .status
                    .as_ref()
                    .and_then(|s| s.git.clone())
                    .unwrap_or_default();
                let git = crate::gitops::write(ctx, refresh, w, image, revert).await?;
                announce_pull_requests(ctx, refresh, w, &before, &git).await;
                record_git(ctx, refresh, git).await?;
            }
            (Change::RejectDigest, _) => {
                let Some(w) = &scene.sight.workload else {
                    continue;
                };
                reject_digest(ctx, w, refresh).await?;
            }
            (_, Some(m)) => m.act(ctx, refresh, &scene.sight, change).await?,
            (_, None) => {}
        }
    }
    Ok(())
}

/// Closes what is left open of a finished Refresh's pull requests, and
/// says so.
async fn withdraw(ctx: &Context, refresh: &Refresh, scene: &Scene) -> Result<(), Error> {
    use freshen_core::gitops::forge::PullState;
    let Some(w) = scene.sight.workload.as_deref() else {
        return Ok(());
    };
    let Some(git) = crate::gitops::withdraw(ctx, refresh, w).await? else {
        return Ok(());
    };
    let before = refresh.status.as_ref().and_then(|s| s.git.as_ref());
    let was_open = |number: u64| {
        before
            .into_iter()
            .flat_map(|g| [&g.pull_request, &g.revert_pull_request])
            .flatten()
            .any(|p| p.number == number && p.state == PullState::Open)
    };
    let progress = refresh.progress();
    for pr in [&git.pull_request, &git.revert_pull_request]
        .into_iter()
        .flatten()
        .filter(|p| was_open(p.number))
    {
        let note = format!(
            "freshen closed {} #{} ({}): the Refresh ended {:?} without it: {}",
            pr.provider.noun(),
            pr.number,
            pr.url,
            progress.phase,
            progress.message
        );
        ctx.refresh_event(
            refresh,
            Some(w),
            EventKind::Normal,
            EventReason::PullRequestClosed,
            note,
        )
        .await;
    }
    record_git(ctx, refresh, git).await
}

/// Publishes an Event for each of the Refresh's pull requests whose state
/// changed between `before` and `after` (opened, merged, closed).
async fn announce_pull_requests(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
    before: &freshen_api::GitStatus,
    after: &freshen_api::GitStatus,
) {
    use freshen_core::gitops::forge::PullState;
    for (was, now, what) in [
        (&before.pull_request, &after.pull_request, "promotes"),
        (
            &before.revert_pull_request,
            &after.revert_pull_request,
            "reverts",
        ),
    ] {
        let Some(now) = now else { continue };
        if was.as_ref().map(|w| w.state) == Some(now.state) {
            continue;
        }
        let (kind, reason, verb) = match now.state {
            PullState::Open => (EventKind::Normal, EventReason::PullRequestOpened, "opened"),
            PullState::Merged => (EventKind::Normal, EventReason::PullRequestMerged, "merged"),
            PullState::Closed => (
                EventKind::Warning,
                EventReason::PullRequestClosed,
                "closed without being merged",
            ),
        };
        let image = if what == "reverts" {
            &refresh.spec.from_image
        } else {
            &refresh.spec.to_image
        };
        let note = format!(
            "{} #{} ({what} {image}) was {verb}: {}",
            now.provider.noun(),
            now.number,
            now.url
        );
        ctx.refresh_event(refresh, Some(workload), kind, reason, note)
            .await;
    }
}

/// Records a pushed commit in the Refresh's status, so that it is awaited
/// and never pushed again.
async fn record_git(
    ctx: &Context,
    refresh: &Refresh,
    git: freshen_api::GitStatus,
) -> Result<(), Error> {
    let api: Api<Refresh> =
        Api::namespaced(ctx.client.clone(), &refresh.namespace().unwrap_or_default());
    let patch = json!({"status": {"git": git}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(&refresh.name_any(), &params, &Patch::Merge(patch))
        .await
        .map_err(Error::StoreProgress)?;
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
        && publish_pending(ctx, api, &stored, scene.sight.workload.as_deref())
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

/// The active Refresh of the workload `r`, if any.
pub fn active_for(
    refreshes: &Store<Refresh>,
    r: &ObjectRef<CachedWorkload>,
) -> Option<Arc<Refresh>> {
    refreshes.state().into_iter().find(|refresh| {
        refresh.namespace() == r.namespace
            && refresh.spec.workload == r.name
            && refresh.workload_kind() == r.dyntype
            && !refresh.progress().phase.is_terminal()
    })
}

/// The Refresh a pod's change concerns: its canary's, or the active one of
/// its workload.
pub fn of_pod(pod: &CachedPod, refreshes: &Store<Refresh>) -> Option<ObjectRef<Refresh>> {
    let namespace = pod.namespace()?;
    if let Some(name) = pod.labels().get(REFRESH_LABEL) {
        return Some(ObjectRef::new(name).within(&namespace));
    }
    let workload = owning_workload(pod).filter(|w| w.dyntype.refreshed())?;
    active_for(refreshes, &workload).map(|r| ObjectRef::from_obj(r.as_ref()))
}

/// The Refresh a workload's change concerns: its canary's, or the active
/// one of the workload.
pub fn of_workload(
    workload: &CachedWorkload,
    refreshes: &Store<Refresh>,
) -> Option<ObjectRef<Refresh>> {
    let namespace = workload.namespace()?;
    if let Some(name) = workload.labels().get(REFRESH_LABEL) {
        return Some(ObjectRef::new(name).within(&namespace));
    }
    active_for(refreshes, &workload.reference()).map(|r| ObjectRef::from_obj(r.as_ref()))
}

/// Applies a strategic merge patch guarded by the resourceVersion the
/// decision was made on: if someone changed the workload since, it fails
/// and the next step sees their change.
pub async fn patch_guarded(
    ctx: &Context,
    workload: &CachedWorkload,
    mut patch: serde_json::Value,
    failed: fn(kube::Error) -> Error,
) -> Result<(), Error> {
    patch["metadata"]["resourceVersion"] = json!(workload.resource_version());
    let api: Api<CachedWorkload> = Api::namespaced_with(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
        &workload.kind,
    );
    let params = kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(
            &workload.name_any(),
            &params,
            &kube::api::Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Err(Error::Stale("the workload changed since it was read"))
        }
        Err(e) => Err(failed(e)),
    }
}

/// Deletes a canary object freshen created (a canary Deployment or Job),
/// with its pods, by uid: if the name now belongs to another object, the
/// API server refuses (409) and nothing is deleted.
pub async fn delete_owned(ctx: &Context, object: &CachedWorkload) -> Result<(), Error> {
    let api: Api<CachedWorkload> = Api::namespaced_with(
        ctx.client.clone(),
        &object.namespace().unwrap_or_default(),
        &object.kind,
    );
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: object.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&object.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(Error::DeleteCanary(e)),
    }
}

/// The pod-template part of a strategic merge patch that sets one
/// container's image and names nothing else; with `stamp`, the template's
/// restart stamp too (`Value::Null` removes it).
pub fn template_patch(
    container: &str,
    image: &str,
    stamp: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut template = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    if let Some(stamp) = stamp {
        template["metadata"] = json!({"annotations": {RESTARTED_BY: stamp}});
    }
    template
}

/// Whether a workload pod runs the refresh's change.
pub fn runs_target(pod: &CachedPod, target: &rollout::Target) -> bool {
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
    use serde_json::json;

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
