//! The workload controller: measures every Deployment freshen governs.
//!
//! One reconcile reads top to bottom:
//! configure (annotations and matching policies -> limits in force, pure) ->
//! gather (pods from the shared store) -> measure (registry, one shared
//! cache; verdicts from `freshen_core`) -> judge (violations, pure) ->
//! record (for metrics and policy status) -> requeue at the next moment a
//! limit will be crossed, or the poll interval.

use std::sync::Arc;
use std::time::Duration;

use freshen_api::refresh::is_canary;

use chrono::Utc;
use freshen_core::observe::{ContainerFacts, PodFacts};
use freshen_core::{plan, policy};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{instrument, warn};

use crate::assess::{
    Accounts, Configuration, Lookup, Measurement, Problem, configure, measure, node_platform,
    platform_of, pull_credentials,
};
use crate::context::Context;
use crate::deployment::owning_deployment;
use crate::error::Error;
use crate::planner::{self, Outcome};
use crate::records::{WorkloadKey, WorkloadRecord};
use freshen_registry::{Keychain, Platform, RegistryError};

/// Reconciles one Deployment: configure -> gather -> measure -> judge ->
/// rebuilds -> plan -> record -> requeue.
#[instrument(skip_all, fields(workload = %deploy.namespace().unwrap_or_default() + "/" + &deploy.name_any()))]
pub async fn reconcile(deploy: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = workload_key(&deploy)?;
    let now = Utc::now();
    if is_canary(deploy.labels()) {
        // freshen's own canary: never measured or refreshed itself.
        return Ok(Action::await_change());
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
    };
    let track_base = config.resolution.limits.track_base_image.value;
    let measurement = measure(
        &lookup,
        &deploy,
        &gathered.pods,
        track_base,
        previous.as_ref(),
    )
    .await;
    let registry_error = report_problems(&ctx, &deploy, &measurement).await;
    let judgement = judge(&ctx, &deploy, &config, &measurement, previous.as_ref(), now).await;
    let rebuild = rebuilds(&ctx, &deploy, &measurement, &judgement, previous.as_ref()).await;
    let outcome = planner::consider(&ctx, &deploy, &config, &measurement.containers, &lookup).await;
    let (refresh_hold, requeue) = held(
        &ctx,
        &deploy,
        &outcome,
        previous.as_ref(),
        judgement.requeue,
        now,
    )
    .await;

    // record what is known even when a look-up failed, then retry that one
    ctx.records.set(
        key,
        WorkloadRecord {
            containers: measurement.containers,
            limits: config.resolution.limits.clone(),
            binding: config.binding,
            config_errors: config.errors.iter().map(ToString::to_string).collect(),
            snoozed: judgement.snoozed,
            violating: judgement.violating,
            refresh_hold,
            rebuild_required: rebuild,
        },
    );
    outcome?;
    match registry_error {
        Some(e) => Err(e.into()),
        None => Ok(Action::requeue(requeue)),
    }
}

/// The workload's configuration (annotations and matching policies ->
/// limits in force, pure), with one Warning for its bad annotations;
/// `None` when freshen does not measure it.
async fn configure_workload(
    ctx: &Context,
    deploy: &Deployment,
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
        ctx.warn(deploy, "InvalidAnnotation", notes.join("; "))
            .await;
    }
    Some(config)
}

/// What a measurement needs besides the registry: the pods, the pull
/// credentials, the platform.
struct Gathered {
    pods: Vec<PodFacts>,
    keychain: Keychain,
    platform: Option<Platform>,
}

/// The workload's pods (shared store), its pull credentials (one Warning
/// for unusable secrets) and the platform most of its pods' nodes run.
async fn gather(ctx: &Context, deploy: &Deployment, key: &WorkloadKey) -> Gathered {
    let pods: Vec<PodFacts> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(&key.namespace))
        .filter(|p| owning_deployment(p).is_some_and(|d| d.name == key.name))
        .map(|p| pod_facts(p))
        .collect();
    let (keychain, secret_problems) =
        pull_credentials(&ctx.client, deploy, Accounts::Cached(&ctx.service_accounts)).await;
    if !secret_problems.is_empty() {
        let note = secret_problems.join("; ");
        warn!(%note, "pull secrets not used");
        ctx.warn(deploy, "PullSecretUnusable", note).await;
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
    deploy: &Deployment,
    measurement: &Measurement,
) -> Option<Arc<RegistryError>> {
    let mut registry_error = None;
    let mut invalid_images = Vec::new();
    for (container, problem) in &measurement.problems {
        match problem {
            Problem::InvalidImage(_) => {
                invalid_images.push(format!("container {container}: {problem}"));
            }
            Problem::Registry(e) => {
                warn!(error = %e, %container, "registry look-up failed");
                registry_error.get_or_insert_with(|| Arc::clone(e));
            }
        }
    }
    if !invalid_images.is_empty() {
        // One Event for all containers, as for annotations.
        let note = invalid_images.join("; ");
        warn!(%note, "containers not measured");
        ctx.warn(deploy, "InvalidImage", note).await;
    }
    registry_error
}

/// Violations against the limits in force (pure); a Warning when the
/// workload violates a source it did not before.
async fn judge(
    ctx: &Context,
    deploy: &Deployment,
    config: &Configuration,
    measurement: &Measurement,
    previous: Option<&WorkloadRecord>,
    now: chrono::DateTime<Utc>,
) -> policy::Judgement {
    let ages: Vec<_> = measurement.containers.iter().map(|c| c.ages(now)).collect();
    let judgement = policy::judge(
        &config.resolution.limits,
        &ages,
        config.settings.snooze_until,
        now,
        ctx.config.poll_interval,
    );
    let before = previous.map(|p| p.violating.clone()).unwrap_or_default();
    if judgement.newly_violating(&before) {
        let notes: Vec<String> = measurement
            .containers
            .iter()
            .zip(&judgement.violations)
            .flat_map(|(c, vs)| {
                vs.iter()
                    .map(move |v| format!("container {}: {v}", c.container))
            })
            .collect();
        ctx.warn(deploy, "MaxAgeExceeded", notes.join("; ")).await;
    }
    judgement
}

/// What only a rebuild can fix (pipelines come later): said once, when it
/// changes.
async fn rebuilds(
    ctx: &Context,
    deploy: &Deployment,
    measurement: &Measurement,
    judgement: &policy::Judgement,
    previous: Option<&WorkloadRecord>,
) -> Vec<String> {
    let rebuild: Vec<String> = plan::rebuilds(
        measurement
            .containers
            .iter()
            .zip(&judgement.violations)
            .map(|(c, v)| (c.container.as_str(), c.base_stale, v.as_slice())),
    )
    .into_iter()
    .map(|(container, reason)| format!("container {container}: {reason}"))
    .collect();
    let rebuild_before = previous.map(|p| p.rebuild_required.clone());
    if !rebuild.is_empty() && rebuild_before.as_ref() != Some(&rebuild) {
        let note = format!(
            "{}; a rollout of the same image cannot fix this, the image must be rebuilt \
             (freshen does not trigger rebuild pipelines yet)",
            rebuild.join("; ")
        );
        ctx.warn(deploy, "RebuildRequired", note).await;
    }
    rebuild
}

/// What holds a wanted refresh (for the record), a Warning when the hold
/// needs someone to act and is new, and the requeue shortened to when the
/// hold ends.
async fn held(
    ctx: &Context,
    deploy: &Deployment,
    outcome: &Result<Outcome, Error>,
    previous: Option<&WorkloadRecord>,
    requeue: Duration,
    now: chrono::DateTime<Utc>,
) -> (Option<String>, Duration) {
    let Ok(Outcome::Held(hold, until)) = outcome else {
        return (None, requeue);
    };
    let requeue = match until {
        Some(t) => requeue.min(planner::until(*t, now).max(Duration::from_secs(1))),
        None => requeue,
    };
    let text = hold.to_string();
    let before = previous.and_then(|p| p.refresh_hold.as_ref());
    if let Some(reason) = hold.warning_reason()
        && before != Some(&text)
    {
        warn!(%hold, "refresh held");
        ctx.warn(deploy, reason, text.clone()).await;
    }
    (Some(text), requeue)
}

fn workload_key(deploy: &Deployment) -> Result<WorkloadKey, Error> {
    Ok(WorkloadKey {
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
pub fn pod_facts(pod: &Pod) -> PodFacts {
    let spec_images = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let containers = spec_images
        .iter()
        .map(|c| {
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
    use crate::deployment::POD_TEMPLATE_HASH;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

    fn pod(owner_kind: &str, owner: &str, hash: Option<&str>) -> Pod {
        Pod {
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
            ..Pod::default()
        }
    }

    #[test]
    fn pods_map_to_their_deployment_through_the_replicaset_name() {
        let d = owning_deployment(&pod("ReplicaSet", "web-api-7d9f8c6b5", Some("7d9f8c6b5")));
        assert_eq!(
            d.map(|d| (d.name, d.namespace)),
            Some(("web-api".into(), Some("shop".into())))
        );
        // A bare ReplicaSet (no hash label), a mismatched hash, or a Job owner
        // are not a Deployment's pods.
        assert!(owning_deployment(&pod("ReplicaSet", "web-api", None)).is_none());
        assert!(owning_deployment(&pod("ReplicaSet", "web-api-abc", Some("xyz"))).is_none());
        assert!(owning_deployment(&pod("Job", "web-api-7d9f8c6b5", Some("7d9f8c6b5"))).is_none());
        assert!(owning_deployment(&pod("ReplicaSet", "-7d9f8c6b5", Some("7d9f8c6b5"))).is_none());
    }
}
