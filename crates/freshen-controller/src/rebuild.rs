//! Rebuilds: the workload controller asks for them ([`request`]), the
//! rebuild controller runs them ([`reconcile`]) through a pipeline kind
//! behind [`Runner`] (a Kubernetes Job today), and the planner rolls out
//! what they produced ([`rebuilt`]).
//!
//! One rebuild per image and cause: every dependant computes the same
//! deterministic name ([`Need::rebuild_name`]), so the first create records
//! it and the others find it. Its state machine is
//! [`freshen_core::rebuild::step`]; here is only I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use freshen_api::pipeline::{
    JobPipeline, Pipeline, PipelineKind, Rebuild, RebuildSpec, RebuildStatus, SecretKey,
    WebhookPipeline, render_template,
};
use freshen_core::event::{EventKind, EventReason};
use freshen_core::plan;
use freshen_core::policy::Judgement;
use freshen_core::rebuild::{
    self, Need, RebuildChange, RebuildObserved, RebuildPhase, RebuildTarget, RunState,
};
use freshen_core::rollout::Reason;
use freshen_core::{Digest, ImageReference};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, instrument, warn};

use crate::error::Error;
use crate::rebuild::webhook::{Delivery, Undelivered, signing_key};
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;
use crate::runtime::objects::{FIELD_MANAGER, workload_ref};
use crate::workload::assess::{Accounts, Configuration, Measurement, pull_credentials};
use freshen_core::kind::Kind;

mod tekton;
pub mod webhook;

/// The label on a rebuild's runs (and their pods): the Rebuild's name.
pub const REBUILD_LABEL: &str = "freshen.dev/rebuild";

/// How long a finished Job is kept when its template does not say.
const JOB_TTL_SECONDS: i32 = 3600;

/// At most this many dependants hear of a rebuild's failure by Event.
const MAX_ANNOUNCED_DEPENDANTS: usize = 20;

/// What the workload's containers need rebuilt under its plan, per
/// container: an image past `maxImageAge`, or a base that moved on (when
/// the plan rebuilds on that), for containers running one known digest of
/// a tagged image.
pub fn needs(
    deploy: &CachedWorkload,
    config: &Configuration,
    measurement: &Measurement,
    judgement: &Judgement,
) -> Vec<(String, Need)> {
    let Some(plan) = &config.rebuild else {
        return Vec::new();
    };
    let wanted = plan::rebuilds(
        measurement
            .containers
            .iter()
            .zip(&judgement.violations)
            .map(|(c, v)| (c.container.as_str(), c.base_stale, v.as_slice())),
        &plan.settings.on,
    );
    wanted
        .into_iter()
        .filter_map(|(name, reason)| {
            let at = measurement
                .containers
                .iter()
                .position(|c| c.container == name)?;
            let record = &measurement.containers[at];
            let limit_source = judgement.violations.get(at).and_then(|vs| {
                vs.iter()
                    .find(|v| v.kind == freshen_core::policy::LimitKind::MaxImageAge)
                    .map(|v| v.limit.source.clone())
            });
            let image = template_image(deploy, &name)?;
            let moved = reason == Reason::BaseMoved;
            Some((
                name,
                Need {
                    image,
                    digest: record.running.clone()?,
                    reason,
                    base: moved.then(|| record.base_move.clone()).flatten(),
                    base_annotated: moved && record.base_annotated,
                    limit_source: (reason == Reason::ImageTooOld)
                        .then_some(limit_source)
                        .flatten(),
                },
            ))
        })
        .collect()
}

/// The tagged image a container's template names (a digest-only image has
/// no tag a rebuild could move).
fn template_image(deploy: &CachedWorkload, container: &str) -> Option<ImageReference> {
    let template = crate::workload::assess::template_containers(deploy);
    let image = template.iter().find(|c| c.name == container)?;
    let parsed = ImageReference::parse(&image.image).ok()?;
    parsed.tag.as_ref()?;
    Some(parsed.without_digest())
}

/// The rebuilds a workload's containers asked for: each container's
/// Rebuild, or why recording one failed; and the needs refused.
pub struct Requested {
    /// Per container, its Rebuild (existing or just recorded).
    pub result: Result<Vec<(String, Arc<Rebuild>)>, Error>,
    /// Per container, a needed rebuild that was not asked for and why, as
    /// `container <name>: <why>` (holds the workload chose left out).
    pub refused: Vec<String>,
}

impl Requested {
    /// The digests finished rebuilds produced, per container, and why:
    /// what the planner rolls out (through a canary, like any new digest).
    pub fn rebuilt(&self) -> Vec<(String, Digest, Reason)> {
        self.result.as_deref().map(rebuilt).unwrap_or_default()
    }

    /// The Rebuilds as `namespace/name`, for the workload's Event.
    pub fn names(&self) -> Vec<String> {
        self.result
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|(_, r)| format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()))
            .collect()
    }
}

/// Records the Rebuild of every need of the measured workload (see
/// [`needs`]) that its pipeline admits ([`rebuild::admit`]) and that has
/// none yet.
pub async fn request(
    ctx: &Context,
    deploy: &CachedWorkload,
    config: &Configuration,
    (measurement, judgement): (&Measurement, &Judgement),
) -> Requested {
    let mut refused = Vec::new();
    let mut admitted = Vec::new();
    let namespace = deploy.namespace().unwrap_or_default();
    for (container, need) in needs(deploy, config, measurement, judgement) {
        let Some(plan) = &config.rebuild else { break };
        let asker = plan.asker(&namespace, &config.refresh, &config.settings);
        match rebuild::admit(&need, &asker, Utc::now()) {
            Ok(()) => admitted.push((container, need)),
            Err(why) if why.is_hold() => {}
            Err(why) => {
                warn!(container = %container, image = %need.image, reason = %why, "rebuild refused");
                refused.push(format!("container {container}: {why}"));
            }
        }
    }
    Requested {
        result: record(ctx, deploy, config, &admitted).await,
        refused,
    }
}

/// Records the Rebuild of every need that has none yet, and returns the
/// Rebuild of each (existing, or just created).
async fn record(
    ctx: &Context,
    deploy: &CachedWorkload,
    config: &Configuration,
    needs: &[(String, Need)],
) -> Result<Vec<(String, Arc<Rebuild>)>, Error> {
    let Some(plan) = &config.rebuild else {
        return Ok(Vec::new());
    };
    let namespace = plan
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.config.rebuild_namespace.clone());
    let mut out = Vec::new();
    for (container, need) in needs {
        let name = need.rebuild_name(&plan.id(&deploy.namespace().unwrap_or_default()));
        if let Some(existing) = ctx.rebuilds.get(&ObjectRef::new(&name).within(&namespace)) {
            out.push((container.clone(), existing));
            continue;
        }
        let record = Rebuild::new(
            &name,
            RebuildSpec {
                image: need.image.to_string(),
                from_digest: need.digest.to_string(),
                reason: need.reason,
                base: need.base.clone(),
                policy: plan.policy.clone(),
                pipeline: plan.pipeline.name.clone(),
                kind: plan.pipeline.kind(),
                requested_by: format!(
                    "{}/{}",
                    deploy.namespace().unwrap_or_default(),
                    deploy.name_any()
                ),
                requested_by_kind: (deploy.kind != Kind::Deployment)
                    .then(|| deploy.kind.to_string()),
                timeout_seconds: plan.settings.timeout.as_secs().max(1),
                backoff_seconds: plan.settings.backoff.as_secs().clamp(1, 86_400),
            },
        );
        let api: Api<Rebuild> = Api::namespaced(ctx.client.clone(), &namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&params, &record).await {
            Ok(created) => {
                info!(rebuild = %name, image = %need.image, reason = %need.reason, "rebuild requested");
                out.push((container.clone(), Arc::new(created)));
            }
            // Another dependant was first: the same rebuild.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::CreateRebuild(e)),
        }
    }
    Ok(out)
}

/// The digests the finished ones of `rebuilds` produced, per container.
fn rebuilt(rebuilds: &[(String, Arc<Rebuild>)]) -> Vec<(String, Digest, Reason)> {
    rebuilds
        .iter()
        .filter_map(|(container, r)| {
            let progress = r.progress();
            if progress.phase != RebuildPhase::Succeeded {
                return None;
            }
            let digest = progress.digest?.parse::<Digest>().ok()?;
            Some((container.clone(), digest, r.spec.reason))
        })
        .collect()
}

/// A kind of pipeline run: starts, reads and stops the run of one attempt.
/// Creating what exists already is no second run: names are deterministic.
pub(crate) trait Runner {
    /// The run of `attempt`'s name.
    fn run_name(&self, rebuild: &Rebuild, attempt: u32) -> String;
    /// How the run of `attempt` is doing.
    async fn observe(&self, rebuild: &Rebuild, attempt: u32) -> RunState;
    /// Starts the run of `attempt` from the template, with `values`.
    async fn trigger(
        &self,
        rebuild: &Rebuild,
        attempt: u32,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<(), Error>;
    /// Stops the run of `attempt`, if it exists.
    async fn cancel(&self, rebuild: &Rebuild, attempt: u32) -> Result<(), Error>;
}

/// A pipeline's runner, by kind.
enum Run<'a> {
    Job(Jobs<'a>),
    Tekton(tekton::PipelineRuns<'a>),
    Webhook(Webhooks<'a>),
}

impl<'a> Run<'a> {
    fn of(ctx: &'a Context, pipeline: &'a Pipeline) -> Option<Self> {
        if let Some(job) = &pipeline.job {
            return Some(Self::Job(Jobs { ctx, pipeline: job }));
        }
        if let Some(tekton) = &pipeline.tekton {
            return Some(Self::Tekton(tekton::PipelineRuns {
                ctx,
                pipeline: tekton,
            }));
        }
        let hook = pipeline.webhook.as_ref()?;
        Some(Self::Webhook(Webhooks { ctx, hook }))
    }
}

impl Runner for Run<'_> {
    fn run_name(&self, rebuild: &Rebuild, attempt: u32) -> String {
        match self {
            Self::Job(r) => r.run_name(rebuild, attempt),
            Self::Tekton(r) => r.run_name(rebuild, attempt),
            Self::Webhook(r) => r.run_name(rebuild, attempt),
        }
    }

    async fn observe(&self, rebuild: &Rebuild, attempt: u32) -> RunState {
        match self {
            Self::Job(r) => r.observe(rebuild, attempt).await,
            Self::Tekton(r) => r.observe(rebuild, attempt).await,
            Self::Webhook(r) => r.observe(rebuild, attempt).await,
        }
    }

    async fn trigger(
        &self,
        rebuild: &Rebuild,
        attempt: u32,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<(), Error> {
        match self {
            Self::Job(r) => r.trigger(rebuild, attempt, values).await,
            Self::Tekton(r) => r.trigger(rebuild, attempt, values).await,
            Self::Webhook(r) => r.trigger(rebuild, attempt, values).await,
        }
    }

    async fn cancel(&self, rebuild: &Rebuild, attempt: u32) -> Result<(), Error> {
        match self {
            Self::Job(r) => r.cancel(rebuild, attempt).await,
            Self::Tekton(r) => r.cancel(rebuild, attempt).await,
            Self::Webhook(r) => r.cancel(rebuild, attempt).await,
        }
    }
}

/// Runs as signed webhook deliveries. A run is finished once delivered
/// (recorded in the Rebuild's status, so a restart does not deliver it
/// again; a receiver deduplicates on `webhook-id` should it be); the
/// build it starts is seen when the tag moves.
struct Webhooks<'a> {
    ctx: &'a Context,
    hook: &'a WebhookPipeline,
}

impl Runner for Webhooks<'_> {
    fn run_name(&self, rebuild: &Rebuild, attempt: u32) -> String {
        format!("{}-{attempt}", rebuild.name_any())
    }

    async fn observe(&self, rebuild: &Rebuild, attempt: u32) -> RunState {
        let run = self.run_name(rebuild, attempt);
        let status = rebuild.status.clone().unwrap_or_default();
        if status.delivered.as_ref() == Some(&run) {
            return RunState::Succeeded;
        }
        match status.undelivered {
            Some(u) if u.run == run => RunState::Failed(format!("webhook {run}: {}", u.message)),
            _ => RunState::Missing,
        }
    }

    async fn trigger(
        &self,
        rebuild: &Rebuild,
        attempt: u32,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<(), Error> {
        let run = self.run_name(rebuild, attempt);
        let namespace = rebuild.namespace().unwrap_or_default();
        let api: Api<Rebuild> = Api::namespaced(self.ctx.client.clone(), &namespace);
        // The cache may not show a delivery this run made a moment ago.
        let fresh = api
            .get(&rebuild.name_any())
            .await
            .map_err(Error::StoreRebuild)?;
        let status = fresh.status.clone().unwrap_or_default();
        if status.delivered.as_ref() == Some(&run)
            || status.undelivered.as_ref().is_some_and(|u| u.run == run)
        {
            return Ok(());
        }
        let outcome = match self.delivery(&namespace, &run, values).await {
            Ok(delivery) => {
                self.ctx
                    .webhooks
                    .deliver(&delivery, Utc::now().timestamp())
                    .await
            }
            Err(why) => Err(Undelivered::Unusable(why)),
        };
        let patch = match &outcome {
            Ok(()) => {
                info!(run = %run, "rebuild webhook delivered");
                json!({"status": {"delivered": run, "undelivered": null}})
            }
            Err(why) => {
                warn!(run = %run, error = %why.detail(), "rebuild webhook not delivered");
                json!({"status": {"undelivered": {"run": run, "message": why.public(&run)}}})
            }
        };
        api.patch_status(
            &rebuild.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(patch),
        )
        .await
        .map_err(Error::StoreRebuild)?;
        Ok(())
    }

    async fn cancel(&self, _rebuild: &Rebuild, _attempt: u32) -> Result<(), Error> {
        // A delivered webhook cannot be taken back; the build it started
        // is no longer waited for.
        Ok(())
    }
}

impl Webhooks<'_> {
    /// The delivery of `run`: URL and body rendered, secrets read (from
    /// the Rebuild's namespace); an error says which Secret is missing.
    async fn delivery(
        &self,
        namespace: &str,
        run: &str,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<Delivery, String> {
        let url = rebuild::render(&self.hook.url, values).map_err(|e| e.to_string())?;
        let body = match &self.hook.body {
            Some(template) => render_template(template, values).map_err(|e| e.to_string())?,
            None => serde_json::to_value(values).map_err(|e| e.to_string())?,
        };
        let key = self.secret(namespace, &self.hook.secret).await?;
        let mut headers = Vec::new();
        for h in &self.hook.headers {
            let value = self.secret(namespace, &h.secret).await?;
            let value = String::from_utf8(value).map_err(|_| {
                format!("Secret {} key {} is not text", h.secret.name, h.secret.key)
            })?;
            headers.push((
                h.name.clone(),
                format!(
                    "{}{}",
                    h.prefix.as_deref().unwrap_or_default(),
                    value.trim()
                ),
            ));
        }
        Ok(Delivery {
            url,
            id: run.to_owned(),
            body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
            key: signing_key(&key),
            hub_signature: self.hook.hub_signature == Some(true),
            headers,
        })
    }

    /// The value of `key` in the Secret it names.
    async fn secret(&self, namespace: &str, key: &SecretKey) -> Result<Vec<u8>, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        match api.get_opt(&key.name).await {
            Ok(Some(secret)) => secret
                .data
                .and_then(|d| d.get(&key.key).map(|v| v.0.clone()))
                .ok_or_else(|| format!("Secret {namespace}/{} has no key {}", key.name, key.key)),
            Ok(None) => Err(format!("Secret {namespace}/{} does not exist", key.name)),
            Err(e) => Err(format!("Secret {namespace}/{} not read: {e}", key.name)),
        }
    }
}

/// Runs as `batch/v1` Jobs in the Rebuild's namespace, owned by it, read
/// from the operator's Job watch (label [`REBUILD_LABEL`]).
struct Jobs<'a> {
    ctx: &'a Context,
    pipeline: &'a JobPipeline,
}

impl Runner for Jobs<'_> {
    fn run_name(&self, rebuild: &Rebuild, attempt: u32) -> String {
        format!("{}-{attempt}", rebuild.name_any())
    }

    async fn observe(&self, rebuild: &Rebuild, attempt: u32) -> RunState {
        let namespace = rebuild.namespace().unwrap_or_default();
        let name = self.run_name(rebuild, attempt);
        match self.ctx.jobs.get(&ObjectRef::new(&name).within(&namespace)) {
            None => RunState::Missing,
            Some(job) => job_state(&job),
        }
    }

    async fn trigger(
        &self,
        rebuild: &Rebuild,
        attempt: u32,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<(), Error> {
        let name = self.run_name(rebuild, attempt);
        let rendered = render_template(&self.pipeline.template, values)
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut spec: JobSpec = serde_json::from_value(rendered)
            .map_err(|e| Error::Pipeline(format!("the rendered Job template: {e}")))?;
        spec.ttl_seconds_after_finished
            .get_or_insert(JOB_TTL_SECONDS);
        let labels = BTreeMap::from([
            (REBUILD_LABEL.to_owned(), rebuild.name_any()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "freshen".to_owned(),
            ),
        ]);
        spec.template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels.clone());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: rebuild.namespace(),
                labels: Some(labels),
                owner_references: Some(vec![
                    rebuild
                        .controller_owner_ref(&())
                        .ok_or(Error::MissingField("metadata.uid"))?,
                ]),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        };
        let api: Api<Job> = Api::namespaced(
            self.ctx.client.clone(),
            &rebuild.namespace().unwrap_or_default(),
        );
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&params, &job).await {
            Ok(_) => {
                info!(job = %name, "rebuild run started");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(Error::TriggerRun(e)),
        }
    }

    async fn cancel(&self, rebuild: &Rebuild, attempt: u32) -> Result<(), Error> {
        let api: Api<Job> = Api::namespaced(
            self.ctx.client.clone(),
            &rebuild.namespace().unwrap_or_default(),
        );
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&self.run_name(rebuild, attempt), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Error::CancelRun(e)),
        }
    }
}

/// How soon a Rebuild reconciled before the caches it reads have listed
/// looks again.
const LISTING_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A Job's state from its conditions: `Complete` or `SuccessCriteriaMet`
/// is success, `Failed` or `FailureTarget` failure (with its reason).
pub fn job_state(job: &Job) -> RunState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Complete")
        .or_else(|| holds("SuccessCriteriaMet"))
        .is_some()
    {
        return RunState::Succeeded;
    }
    if let Some(c) = holds("Failed").or_else(|| holds("FailureTarget")) {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        let message = c.message.clone().unwrap_or_default();
        return RunState::Failed(
            format!("Job {}: {reason} {message}", job.name_any())
                .trim_end()
                .to_owned(),
        );
    }
    RunState::Running
}

/// The Rebuild controller with its watches registered: the store of
/// every Rebuild, of the pipeline Jobs, the channel that wakes a Rebuild,
/// and its start.
pub struct Registered {
    /// Every Rebuild.
    pub store: kube::runtime::reflector::Store<freshen_api::Rebuild>,
    /// The Jobs of rebuild pipelines (labelled [`REBUILD_LABEL`]).
    pub jobs: kube::runtime::reflector::Store<Job>,
    /// Wakes a Rebuild.
    pub wake: futures::channel::mpsc::UnboundedSender<ObjectRef<freshen_api::Rebuild>>,
    /// Runs the controller.
    pub start: crate::Start,
}

/// Registers the Rebuild watch (it also keeps the count of active
/// Rebuilds), the watch of pipeline Jobs when Job pipelines run (without
/// them the installation may lack the right to), and the controller both
/// trigger.
pub fn register(w: &crate::Wiring<'_>, kinds: &[PipelineKind]) -> Registered {
    use futures::{FutureExt, StreamExt, TryStreamExt};
    use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let trigger = {
        let (store, metrics) = (store.clone(), Arc::clone(w.metrics));
        crate::reflected(
            crate::scoped::<freshen_api::Rebuild>(w.client, w.namespace),
            watcher::Config::default(),
            writer,
            w.readiness.watch(crate::Watch::Rebuilds),
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
    let (jobs, job_writer) = reflector::store();
    let job_trigger = if kinds.contains(&PipelineKind::Job) {
        crate::reflected(
            crate::scoped::<Job>(w.client, w.namespace),
            watcher::Config::default().labels(REBUILD_LABEL),
            job_writer,
            w.readiness.watch(crate::Watch::Jobs),
        )
        .touched_objects()
        .left_stream()
    } else {
        futures::stream::pending().right_stream()
    };
    let reader = store.clone();
    let start: crate::Start = Box::new(move |ctx| {
        Controller::for_stream(trigger, reader)
            .watches_stream(job_trigger, |job| of_job(&job))
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
    Registered {
        store,
        jobs,
        wake,
        start,
    }
}

/// Reconciles one Rebuild: find its pipeline -> observe the run (and the
/// tag, once the run finished) -> step (pure) -> store -> act -> announce.
#[instrument(skip_all, fields(rebuild = %rebuild.namespace().unwrap_or_default() + "/" + &rebuild.name_any()))]
pub async fn reconcile(rebuild: Arc<Rebuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let progress = rebuild.progress();
    if progress.phase.is_terminal() {
        return Ok(Action::await_change());
    }
    if !ctx.readiness.listed(&[
        crate::Watch::RefreshPolicies,
        crate::Watch::ClusterRefreshPolicies,
        crate::Watch::Jobs,
    ]) {
        // Not listed yet (an operator just started): the pipeline would
        // look gone, failing the run and starting another (found by the
        // chaos test: a second Job for one change), and the Job missing.
        return Ok(Action::requeue(LISTING_RETRY));
    }
    let now = Utc::now();
    let target = target(&rebuild)?;
    let pipeline = pipeline_of(&ctx, &rebuild);
    let runner = pipeline.as_ref().ok().and_then(|p| Run::of(&ctx, p));
    let run = match (&runner, &pipeline, progress.attempts) {
        (_, _, 0) => RunState::Missing,
        (Some(r), _, attempt) => r.observe(&rebuild, attempt).await,
        (None, Err(gone), _) => RunState::Failed(gone.clone()),
        (None, Ok(_), _) => RunState::Failed("the pipeline sets no kind".into()),
    };
    let tag = match (&run, progress.phase) {
        (RunState::Succeeded, RebuildPhase::Running) => tag_now(&ctx, &rebuild).await,
        _ => TagNow::default(),
    };
    let observed = RebuildObserved {
        run,
        tag_digest: tag.digest,
        tag_built: tag.built,
        tag_base: tag.base,
        superseded: superseded(&ctx, &rebuild),
    };
    let step = rebuild::step(&target, &progress, &observed, now);
    let old = rebuild.status.clone().unwrap_or_default();
    let status = RebuildStatus {
        progress: step.progress.clone(),
        run: match &runner {
            Some(r) if step.progress.attempts > 0 => {
                Some(r.run_name(&rebuild, step.progress.attempts))
            }
            _ => old.run.clone(),
        },
        ..old
    };
    if rebuild.status.as_ref() != Some(&status) && !store(&ctx, &rebuild, status).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if let Some(runner) = &runner {
        act(&rebuild, runner, &step.changes, step.progress.attempts).await?;
    }
    announce(&ctx, &rebuild, &step).await;
    // PipelineRuns are not watched: a running one is read again soon.
    let requeue = match (rebuild.spec.kind, step.progress.phase) {
        (PipelineKind::Tekton, RebuildPhase::Running) => {
            Some(step.requeue.map_or(tekton::POLL, |r| r.min(tekton::POLL)))
        }
        _ => step.requeue,
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The frozen facts of the rebuild.
fn target(rebuild: &Rebuild) -> Result<RebuildTarget, Error> {
    Ok(RebuildTarget {
        from_digest: rebuild
            .spec
            .from_digest
            .parse()
            .map_err(|_| Error::MissingField("spec.fromDigest"))?,
        timeout: Duration::from_secs(rebuild.spec.timeout_seconds.max(1)),
        backoff: Duration::from_secs(rebuild.spec.backoff_seconds.clamp(1, 86_400)),
        new_base: rebuild
            .spec
            .base
            .as_ref()
            .and_then(|b| b.new_digest.parse().ok()),
    })
}

/// The pipeline the rebuild names, or why it cannot be used.
fn pipeline_of(ctx: &Context, rebuild: &Rebuild) -> Result<Pipeline, String> {
    let spec = &rebuild.spec;
    let parts: Vec<&str> = spec.policy.split('/').collect();
    let pipelines = match parts.as_slice() {
        ["RefreshPolicy", namespace, name] => ctx
            .policies
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|p| p.spec.pipelines.parse(true).is_ok())
            .map(|p| p.spec.pipelines.clone()),
        ["ClusterRefreshPolicy", name] => ctx
            .cluster_policies
            .get(&ObjectRef::new(name))
            .filter(|p| p.spec.pipelines.parse(false).is_ok())
            .map(|p| p.spec.pipelines.clone()),
        _ => None,
    };
    let pipeline = pipelines
        .as_ref()
        .and_then(|p| p.get(&spec.pipeline))
        .cloned()
        .ok_or_else(|| {
            format!(
                "pipeline {} of {} is gone or invalid (the policy's Ready condition says why)",
                spec.pipeline, spec.policy
            )
        })?;
    fits(ctx, rebuild, &pipeline)?;
    let kind = pipeline.kind();
    if !ctx.config.pipeline_kinds.contains(&kind) {
        return Err(format!(
            "{} pipelines are not enabled in this installation (freshen runs with \
             --pipeline-kinds {}; the Helm chart's pipelines.{}.enabled)",
            <&str>::from(kind),
            kinds_list(&ctx.config.pipeline_kinds),
            kind.label()
        ));
    }
    Ok(pipeline)
}

/// [`rebuild::fits`] for this Rebuild and its pipeline: a shared
/// pipeline's rebuilds live in its namespace, else freshen's own.
fn fits(ctx: &Context, rebuild: &Rebuild, pipeline: &Pipeline) -> Result<(), String> {
    let spec = &rebuild.spec;
    let image = ImageReference::parse(&spec.image).map_err(|e| format!("spec.image: {e}"))?;
    let namespace = rebuild.namespace().unwrap_or_default();
    let record = rebuild::Record {
        namespace: &namespace,
        policy: &spec.policy,
        asking: asking(rebuild),
        image: &image.name(),
        pipeline: &pipeline.name,
        images: &pipeline.images,
    };
    rebuild::fits(
        &record,
        pipeline
            .namespace()
            .unwrap_or(&ctx.config.rebuild_namespace),
    )
}

/// `--pipeline-kinds` as written on the command line.
fn kinds_list(kinds: &[PipelineKind]) -> String {
    if kinds.is_empty() {
        return "none".to_owned();
    }
    kinds
        .iter()
        .map(|k| k.label())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the rebuilt image's tag names now.
#[derive(Default)]
struct TagNow {
    digest: Option<Digest>,
    built: Option<chrono::DateTime<Utc>>,
    base: Option<Digest>,
}

/// The digest the rebuilt image's tag names now, asked of the registry
/// (past the cache), with the pull secrets of the workload that asked; and
/// for a new one, when it was built and on which base digest.
async fn tag_now(ctx: &Context, rebuild: &Rebuild) -> TagNow {
    let Ok(image) = ImageReference::parse(&rebuild.spec.image) else {
        return TagNow::default();
    };
    let Some((namespace, name)) = rebuild.spec.requested_by.split_once('/') else {
        return TagNow::default();
    };
    let kind = rebuild
        .spec
        .requested_by_kind
        .as_deref()
        .map_or(Some(Kind::Deployment), Kind::parse);
    let asker = kind.and_then(|kind| ctx.workload(&workload_ref(kind, name, namespace)));
    let keychain = match asker {
        Some(deploy) => {
            pull_credentials(
                &ctx.client,
                &deploy,
                Accounts::Cached(&ctx.service_accounts),
            )
            .await
            .0
        }
        None => freshen_registry::Keychain::default(),
    };
    let credential = ctx.registry.credential_for(&keychain, &image.registry);
    let digest = match ctx
        .registry
        .resolve_tag_now(&image, credential, Instant::now())
        .await
    {
        Ok(digest) => digest,
        Err(e) => {
            warn!(error = %e, "rebuilt tag not read");
            return TagNow::default();
        }
    };
    if digest.to_string() == rebuild.spec.from_digest {
        return TagNow {
            digest: Some(digest),
            ..TagNow::default()
        };
    }
    match ctx
        .registry
        .image_facts(&image, &digest, None, credential)
        .await
    {
        Ok(facts) => TagNow {
            digest: Some(digest),
            built: facts.created,
            base: facts.base_digest.clone(),
        },
        Err(e) => {
            warn!(error = %e, "rebuilt image's facts not read");
            TagNow {
                digest: Some(digest),
                ..TagNow::default()
            }
        }
    }
}

/// A newer rebuild of the same image by the same pipeline exists
/// ([`rebuild::superseded`]).
fn superseded(ctx: &Context, rebuild: &Rebuild) -> bool {
    let seniority = |r: &Rebuild| -> rebuild::Seniority {
        (
            r.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| freshen_api::time::to_chrono(&t.0)),
            r.name_any(),
        )
    };
    let same: Vec<rebuild::Seniority> = ctx
        .rebuilds
        .state()
        .iter()
        .filter(|other| {
            other.namespace() == rebuild.namespace()
                && asking(other) == asking(rebuild)
                && other.spec.image == rebuild.spec.image
                && other.spec.policy == rebuild.spec.policy
                && other.spec.pipeline == rebuild.spec.pipeline
        })
        .map(|other| seniority(other))
        .collect();
    rebuild::superseded(&seniority(rebuild), &same)
}

/// The namespace of the workload that asked for a rebuild: a rebuild is
/// superseded or pruned only by rebuilds that namespace asked for.
fn asking(rebuild: &Rebuild) -> &str {
    rebuild
        .spec
        .requested_by
        .split_once('/')
        .map_or("", |(namespace, _)| namespace)
}

/// Stores the status, guarded by the resourceVersion read; `false` when
/// another writer got there first (act on nothing).
async fn store(ctx: &Context, rebuild: &Rebuild, status: RebuildStatus) -> Result<bool, Error> {
    let api: Api<Rebuild> =
        Api::namespaced(ctx.client.clone(), &rebuild.namespace().unwrap_or_default());
    let mut updated = rebuild.clone();
    updated.status = Some(status);
    updated.metadata.managed_fields = None;
    match api
        .replace_status(&rebuild.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::StoreRebuild(e)),
    }
}

/// Carries out the step's changes.
async fn act(
    rebuild: &Rebuild,
    runner: &Run<'_>,
    changes: &[RebuildChange],
    attempts: u32,
) -> Result<(), Error> {
    for change in changes {
        match change {
            RebuildChange::Trigger { attempt } => {
                runner.trigger(rebuild, *attempt, &values(rebuild)).await?;
            }
            RebuildChange::Cancel => runner.cancel(rebuild, attempts).await?,
        }
    }
    Ok(())
}

/// The template values of a rebuild.
fn values(rebuild: &Rebuild) -> BTreeMap<&'static str, String> {
    let spec = &rebuild.spec;
    let name = rebuild.name_any();
    let mut values = match (
        ImageReference::parse(&spec.image),
        spec.from_digest.parse::<Digest>(),
    ) {
        (Ok(image), Ok(digest)) => Need {
            image,
            digest,
            reason: spec.reason,
            base: spec.base.clone(),
            base_annotated: false,
            limit_source: None,
        }
        .values(),
        _ => BTreeMap::new(),
    };
    if let Some((namespace, workload)) = spec.requested_by.split_once('/') {
        values.insert("namespace", namespace.to_owned());
        values.insert("workload", workload.to_owned());
    }
    values.insert(
        "rebuild.id",
        name.strip_prefix("rebuild-").unwrap_or(&name).to_owned(),
    );
    values.insert("rebuild.name", name);
    values
}

/// Publishes the step's Event on the rebuild (and, for an outcome, on the
/// workloads running its image), counts the outcome, and measures the
/// dependants again once the rebuilt digest is known.
async fn announce(ctx: &Context, rebuild: &Rebuild, step: &rebuild::RebuildStep) {
    let Some((kind, reason)) = step.event else {
        return;
    };
    let type_ = match kind {
        EventKind::Normal => EventType::Normal,
        EventKind::Warning => EventType::Warning,
    };
    let note = format!(
        "Rebuild {} of {}: {}",
        rebuild.name_any(),
        rebuild.spec.image,
        step.progress.message
    );
    let dependants = dependants(ctx, &rebuild.spec.image);
    let mut targets = vec![rebuild.object_ref(&())];
    if matches!(
        reason,
        EventReason::RebuildFailed | EventReason::RebuildSucceeded
    ) {
        targets.extend(
            dependants
                .iter()
                .take(MAX_ANNOUNCED_DEPENDANTS)
                .map(|d| d.object_ref(&d.kind)),
        );
    }
    ctx.publish(type_, reason, "Rebuild", note, &targets).await;
    if let Some(outcome) = step.outcome {
        ctx.metrics
            .rebuilds
            .finished(rebuild.spec.kind, &step.progress, outcome);
    }
    if step.progress.phase.is_terminal() {
        prune(ctx, rebuild).await;
    }
    if reason == EventReason::RebuildSucceeded {
        for d in &dependants {
            ctx.workload_trigger.send(d.reference());
        }
    }
}

/// Deletes the ended Rebuilds of the same image and pipeline beyond the
/// newest `--rebuild-history` (their runs go with them: they are owned).
/// Each delete is guarded by the uid seen; a failure is logged, never
/// fatal: the next rebuild to end tries again.
async fn prune(ctx: &Context, rebuild: &Rebuild) {
    let mut ended: Vec<Arc<Rebuild>> = ctx
        .rebuilds
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace() == rebuild.namespace()
                && asking(r) == asking(rebuild)
                && r.spec.image == rebuild.spec.image
                && r.spec.policy == rebuild.spec.policy
                && r.spec.pipeline == rebuild.spec.pipeline
                && r.progress().phase.is_terminal()
                && r.name_any() != rebuild.name_any()
        })
        .collect();
    // This one just ended and is the newest; the cache may not show it yet.
    ended.sort_by_key(|r| {
        std::cmp::Reverse((
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        ))
    });
    let api: Api<Rebuild> =
        Api::namespaced(ctx.client.clone(), &rebuild.namespace().unwrap_or_default());
    let keep = ctx.config.rebuild_history.max(1);
    for old in ended.iter().skip(keep - 1) {
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: None,
            }),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&old.name_any(), &params).await {
            Ok(_) => info!(rebuild = %old.name_any(), "old rebuild deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(error = %e, rebuild = %old.name_any(), "old rebuild not deleted"),
        }
    }
}

/// The workloads (of every kind watched) whose template names `image`
/// (repository and tag).
fn dependants(ctx: &Context, image: &str) -> Vec<Arc<CachedWorkload>> {
    ctx.workloads
        .all()
        .filter(|d| {
            crate::workload::assess::template_containers(d)
                .iter()
                .any(|c| {
                    ImageReference::parse(&c.image)
                        .is_ok_and(|i| i.without_digest().to_string() == image)
                })
        })
        .collect()
}

/// The Rebuild a Job belongs to, from its label.
pub fn of_job(job: &Job) -> Option<ObjectRef<Rebuild>> {
    let name = job.labels().get(REBUILD_LABEL)?;
    Some(ObjectRef::new(name).within(&job.namespace()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "rebuild-1-1", "namespace": "ci",
                         "labels": {REBUILD_LABEL: "rebuild-1"}},
            "status": {"conditions": conditions}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_job_reads_as_its_terminal_conditions_say() {
        assert_eq!(job_state(&job(json!([]))), RunState::Running);
        assert_eq!(
            job_state(&job(
                json!([{"type": "SuccessCriteriaMet", "status": "True"}])
            )),
            RunState::Succeeded
        );
        assert_eq!(
            job_state(&job(json!([{"type": "Complete", "status": "True"}]))),
            RunState::Succeeded
        );
        assert_eq!(
            job_state(&job(json!([{"type": "FailureTarget", "status": "True",
                                    "reason": "BackoffLimitExceeded",
                                    "message": "Job has reached the specified backoff limit"}]))),
            RunState::Failed(
                "Job rebuild-1-1: BackoffLimitExceeded Job has reached the specified backoff limit"
                    .into()
            )
        );
        // A condition that does not hold says nothing.
        assert_eq!(
            job_state(&job(json!([{"type": "Failed", "status": "False"}]))),
            RunState::Running
        );
        assert_eq!(
            of_job(&job(json!([]))),
            Some(ObjectRef::new("rebuild-1").within("ci"))
        );
    }
}
