//! The workload controller: measures every workload freshen governs, of
//! every kind (one controller per kind, each running this reconcile).
//!
//! One reconcile reads top to bottom:
//! configure (annotations and matching policies -> limits in force, pure) ->
//! gather (pods from the shared store) -> measure (registry, one shared
//! cache; verdicts from `freshen_core`) -> judge (violations, pure) -> plan
//! (the planner) -> announce (the Warnings `freshen_core::findings::news`
//! finds news) -> record (for metrics and policy status) -> requeue at the
//! next moment a limit will be crossed or a hold ends, or the poll interval.

pub mod assess;
pub mod planner;
pub mod tags;
pub mod verification;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use freshen_api::refresh::is_canary;
use freshen_core::kind::{Kind, measured_by_owner};

use crate::workload::tags::Origin;
use chrono::{DateTime, Utc};
use freshen_core::event::EventReason;
use freshen_core::findings::{self, Findings};
use freshen_core::observe::{ContainerFacts, PodFacts};
use freshen_core::plan::Hold;
use freshen_core::policy;
use freshen_core::policy::Violation;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{instrument, warn};

use crate::error::Error;
use crate::rebuild;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;
use crate::runtime::objects::workload_ref;
use crate::runtime::records::{WorkloadKey, WorkloadRecord};
use crate::workload::assess::{
    Accounts, Configuration, Lookup, Measurement, Problem, configure, measure, node_platform,
    platform_of, pull_credentials,
};
use freshen_registry::{Keychain, Platform};
use planner::Outcome;

/// How soon a workload reconciled while pods or namespaces are still
/// listing looks again.
const LISTING_RETRY: Duration = Duration::from_millis(500);

/// Reconciles one workload: configure -> gather -> measure -> judge ->
/// plan -> announce -> record -> requeue.
#[instrument(skip_all, fields(workload = %deploy.namespace().unwrap_or_default() + "/" + &deploy.name_any()))]
pub async fn reconcile(deploy: Arc<CachedWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = workload_key(&deploy)?;
    let now = Utc::now();
    let owner_kind = deploy
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str());
    let own = is_canary(deploy.labels()) || deploy.labels().contains_key(rebuild::REBUILD_LABEL);
    if own || measured_by_owner(key.kind, owner_kind) {
        // freshen's own canaries and rebuild runs are never measured or
        // refreshed themselves; a Deployment's ReplicaSet or a CronJob's
        // Job is measured as part of its owner.
        ctx.records.remove(&key);
        return Ok(Action::await_change());
    }
    // A CronJob's pods are found through its Jobs (when Jobs are watched).
    let jobs = if key.kind == Kind::CronJob {
        crate::Watch::WorkloadJobs
    } else {
        crate::Watch::Pods
    };
    if !ctx
        .readiness
        .listed(&[crate::Watch::Pods, crate::Watch::Namespaces, jobs])
    {
        // Their watches trigger workloads while they list, but a reflector
        // holds a list back until it is complete: measured now, the
        // workload would have no pods and wait a whole poll interval
        // (measured: 1,000 workloads all assessed only at the 2m poll).
        return Ok(Action::requeue(LISTING_RETRY));
    }
    let Some(config) = configure_workload(&ctx, &deploy, &key).await else {
        ctx.records.remove(&key);
        return Ok(Action::await_change());
    };
    let previous = ctx.records.get(&key);
    let gathered = gather(&ctx, &deploy, &key).await;
    let lookup = Lookup {
        registry: &ctx.registry,
        keychain: &gathered.keychain,
        platform: gathered.platform.as_ref(),
        now,
        tags: &ctx.tags,
        origin: Origin {
            namespace: &key.namespace,
            workload: &key.name,
        },
    };
    let track_base = config.resolution.limits.track_base_image.value;
    let mut measurement = measure(
        &lookup,
        &deploy,
        &gathered.pods,
        track_base,
        previous.as_ref(),
    )
    .await;
    let verify = config.verify.as_ref();
    crate::workload::verification::judge_running(
        &ctx.verdicts,
        &lookup,
        verify,
        &mut measurement.containers,
    )
    .await;
    let registry_error = report_problems(&ctx, &deploy, &measurement).await;
    let judgement = judge(&ctx, &config, &measurement, now);
    let rebuilds = rebuild::request(&ctx, &deploy, &config, (&measurement, &judgement)).await;
    let outcome = planner::consider(
        &ctx,
        &deploy,
        &config,
        &measurement.containers,
        &lookup,
        rebuilds.rebuilt(),
    )
    .await;
    let hold = match &outcome {
        Ok(Outcome::Held(hold, until)) => Some((hold, *until)),
        _ => None,
    };
    let findings = announce(
        &ctx,
        &deploy,
        (&measurement, &judgement),
        hold,
        (&rebuilds.names(), &rebuilds.refused),
        previous.as_ref(),
    )
    .await;
    let requeue = requeue(judgement.requeue, hold.and_then(|(_, until)| until), now);

    // record what is known even when a look-up failed, then retry that one
    ctx.records.set(
        key,
        WorkloadRecord {
            containers: measurement.containers,
            limits: config.resolution.limits.clone(),
            binding: config.binding,
            config_errors: config.errors.iter().map(ToString::to_string).collect(),
            snoozed: judgement.snoozed,
            findings,
        },
    );
    outcome?;
    rebuilds.result?;
    match registry_error {
        Some(e) => Err(e),
        None => Ok(Action::requeue(requeue)),
    }
}

/// The workload's configuration (annotations and matching policies ->
/// limits in force, pure), with one Warning for its bad annotations;
/// `None` when freshen does not measure it.
async fn configure_workload(
    ctx: &Context,
    deploy: &CachedWorkload,
    key: &WorkloadKey,
) -> Option<Configuration> {
    let namespace_labels = ctx
        .namespaces
        .get(&ObjectRef::new(&key.namespace))
        .map(|ns| ns.labels().clone())
        .unwrap_or_default();
    let config = configure(
        deploy,
        &namespace_labels,
        &ctx.policies.state(),
        &ctx.cluster_policies.state(),
        &ctx.config.defaults,
    );
    if !config.measured() {
        return None;
    }
    if !config.errors.is_empty() {
        // One Event for all of them: the recorder folds Events of the same
        // reason on one object into one series, keeping only the first note.
        let notes: Vec<String> = config.errors.iter().map(ToString::to_string).collect();
        warn!(errors = ?notes, "annotations ignored");
        ctx.warn(deploy, EventReason::InvalidAnnotation, notes.join("; "))
            .await;
    }
    Some(config)
}

/// What a measurement needs besides the registry: the pods, the pull
/// credentials, the platform.
pub(crate) struct Gathered {
    pods: Vec<PodFacts>,
    pub(crate) keychain: Keychain,
    pub(crate) platform: Option<Platform>,
}

/// The workload's pods (shared store), its pull credentials (one Warning
/// for unusable secrets) and the platform most of its pods' nodes run.
pub(crate) async fn gather(ctx: &Context, deploy: &CachedWorkload, key: &WorkloadKey) -> Gathered {
    let pods: Vec<PodFacts> = ctx
        .pods_of(&workload_ref(key.kind, &key.name, &key.namespace))
        .iter()
        .map(|p| pod_facts(p))
        .collect();
    let (keychain, secret_problems) =
        pull_credentials(&ctx.client, deploy, Accounts::Cached(&ctx.service_accounts)).await;
    if !secret_problems.is_empty() {
        let note = secret_problems.join("; ");
        warn!(%note, "pull secrets not used");
        ctx.warn(deploy, EventReason::PullSecretUnusable, note)
            .await;
    }
    let platform = platform_of(&pods, |name| {
        ctx.nodes
            .get(&ObjectRef::new(name))
            .and_then(|node| node_platform(&node))
    });
    Gathered {
        pods,
        keychain,
        platform,
    }
}

/// One Warning for the containers whose image is not a reference; the
/// first registry failure, which fails the reconcile after recording.
async fn report_problems(
    ctx: &Context,
    deploy: &CachedWorkload,
    measurement: &Measurement,
) -> Option<Error> {
    let mut registry_error = None;
    let mut invalid_images = Vec::new();
    for (container, problem) in &measurement.problems {
        match problem {
            Problem::InvalidImage(_) => {
                invalid_images.push(format!("container {container}: {problem}"));
            }
            Problem::Registry { error, credentials } => {
                warn!(%error, %container, "registry look-up failed");
                registry_error.get_or_insert_with(|| match credentials {
                    Some(credentials) => Error::RegistryRefused {
                        source: Arc::clone(error),
                        credentials: credentials.clone(),
                    },
                    None => Error::Registry(Arc::clone(error)),
                });
            }
        }
    }
    if !invalid_images.is_empty() {
        // One Event for all containers, as for annotations.
        let note = invalid_images.join("; ");
        warn!(%note, "containers not measured");
        ctx.warn(deploy, EventReason::InvalidImage, note).await;
    }
    registry_error
}

/// Violations against the limits in force (pure).
fn judge(
    ctx: &Context,
    config: &Configuration,
    measurement: &Measurement,
    now: DateTime<Utc>,
) -> policy::Judgement {
    let ages: Vec<_> = measurement.containers.iter().map(|c| c.ages(now)).collect();
    policy::judge(
        &config.resolution.limits,
        &ages,
        config.settings.snooze_until,
        now,
        ctx.config.poll_interval,
    )
}

/// What this measurement found, with a Warning for each finding that is
/// news since the last (decided by [`findings::news`]): a limit newly
/// exceeded, what only a rebuild can fix, a hold someone must act on.
async fn announce(
    ctx: &Context,
    deploy: &CachedWorkload,
    (measurement, judgement): (&Measurement, &policy::Judgement),
    hold: Option<(&Hold, Option<DateTime<Utc>>)>,
    (requested, refused): (&[String], &[String]),
    previous: Option<&WorkloadRecord>,
) -> Findings {
    let hold = hold.map(|(hold, _)| hold);
    let containers: Vec<(&str, Option<bool>)> = measurement
        .containers
        .iter()
        .map(|c| (c.container.as_str(), c.base_stale))
        .collect();
    let mut now = Findings::of(judgement, &containers, hold);
    now.requested = requested.to_vec();
    now.refused = refused.to_vec();
    let violations: Vec<(&str, &[Violation])> = containers
        .iter()
        .zip(&judgement.violations)
        .map(|((name, _), v)| (*name, v.as_slice()))
        .collect();
    let before = previous.map(|p| p.findings.clone()).unwrap_or_default();
    for news in findings::news(&before, &now, &violations, hold) {
        warn!(reason = %news.reason, note = %news.note, "workload warning");
        ctx.warn(deploy, news.reason, news.note).await;
    }
    now
}

/// The next look: at the next limit crossing or poll, or sooner when a
/// hold ends (at least a second from now).
fn requeue(judged: Duration, hold_ends: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    match hold_ends {
        Some(t) => judged.min(planner::until(t, now).max(Duration::from_secs(1))),
        None => judged,
    }
}

fn workload_key(deploy: &CachedWorkload) -> Result<WorkloadKey, Error> {
    Ok(WorkloadKey {
        kind: deploy.kind,
        namespace: deploy
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?,
        name: deploy
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?,
    })
}

/// Copies the fields freshen reads out of a pod.
pub fn pod_facts(pod: &CachedPod) -> PodFacts {
    let status = pod.status.as_ref();
    let regular = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let init = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default();
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| s.long_running())
        .map(|(c, sidecar)| {
            let statuses = if sidecar { init } else { regular };
            let status = statuses.iter().find(|s| s.name == c.name);
            ContainerFacts {
                name: c.name.clone(),
                pod_image: c.image.clone().unwrap_or_default(),
                image_id: status
                    .map(|s| s.image_id.clone())
                    .filter(|id| !id.is_empty()),
                running_since: status
                    .and_then(|s| s.state.as_ref())
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.as_ref())
                    .and_then(|t| freshen_api::time::to_chrono(&t.0)),
            }
        })
        .collect();
    PodFacts {
        name: pod.name_any(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        containers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::objects::{POD_TEMPLATE_HASH, owning_workload};
    use freshen_core::kind::Kind;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

    fn pod(owner_kind: &str, owner: &str, hash: Option<&str>) -> CachedPod {
        CachedPod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("shop".into()),
                labels: hash
                    .map(|h| BTreeMap::from([(POD_TEMPLATE_HASH.to_owned(), h.to_owned())])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: owner_kind.into(),
                    name: owner.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..CachedPod::default()
        }
    }

    #[test]
    fn pods_map_to_their_workload_through_their_owner() {
        let owner = |kind, name, hash| {
            owning_workload(&pod(kind, name, hash)).map(|r| (r.dyntype, r.name, r.namespace))
        };
        let shop = Some("shop".to_owned());
        assert_eq!(
            owner("ReplicaSet", "web-api-7d9f8c6b5", Some("7d9f8c6b5")),
            Some((Kind::Deployment, "web-api".into(), shop.clone()))
        );
        // A bare ReplicaSet (no hash label) is its own workload; a Job's pod
        // is its Job's.
        assert_eq!(
            owner("ReplicaSet", "web-api", None),
            Some((Kind::ReplicaSet, "web-api".into(), shop.clone()))
        );
        assert_eq!(
            owner("Job", "web-api-7d9f8c6b5", Some("7d9f8c6b5")),
            Some((Kind::Job, "web-api-7d9f8c6b5".into(), shop.clone()))
        );
        // A pod a Node controls (a static pod) is its own workload.
        assert_eq!(
            owner("Node", "n1", None),
            Some((Kind::Pod, "p".into(), shop))
        );
    }
}
