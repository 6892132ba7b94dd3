//! The workload controller: measures every opted-in Deployment.
//!
//! One reconcile reads top to bottom:
//! validate (opt-in annotation) -> gather (pods from the shared store) ->
//! observe (pure, `freshen_core::observe`) -> measure each container (the
//! tag's digest, the running digests' facts, their base now; registry, one
//! shared cache; verdicts from `freshen_core`) -> record (timestamps and
//! signals for the metrics) -> requeue.

use std::sync::Arc;

use chrono::Utc;
use freshen_api::{RefreshMode, base_image};
use freshen_core::ImageReference;
use freshen_core::base;
use freshen_core::observe::{
    ContainerFacts, ContainerObservation, ContainerSpec, PodFacts, observe,
};
use freshen_registry::RegistryError;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{instrument, warn};

use crate::context::Context;
use crate::error::Error;
use crate::metrics::{ContainerRecord, WorkloadKey};

/// The label the Deployment controller puts on a ReplicaSet's pods; a
/// ReplicaSet of Deployment `d` is named `d-<pod-template-hash>`.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Reconciles one Deployment.
#[instrument(skip_all, fields(workload = %deploy.namespace().unwrap_or_default() + "/" + &deploy.name_any()))]
pub async fn reconcile(deploy: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    let key = workload_key(&deploy)?;

    // validate
    match RefreshMode::from_annotations(deploy.metadata.annotations.as_ref()) {
        Ok(RefreshMode::Enabled) => {}
        Ok(RefreshMode::Disabled) => {
            ctx.records.remove(&key);
            return Ok(Action::await_change());
        }
        Err(invalid) => {
            ctx.records.remove(&key);
            warn!(%invalid, "workload skipped");
            ctx.warn(&deploy, "InvalidAnnotation", invalid.to_string())
                .await;
            return Ok(Action::await_change());
        }
    }

    // gather
    let template = template_containers(&deploy);
    let pods: Vec<PodFacts> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(&key.namespace))
        .filter(|p| owning_deployment(p).is_some_and(|d| d.name == key.name))
        .map(|p| pod_facts(p))
        .collect();

    // observe (pure), then look up what the registry says of each container
    let previous = ctx.records.get(&key).unwrap_or_default();
    let mut records = Vec::new();
    let mut first_error = None;
    for observation in observe(&template, &pods) {
        let image = match &observation.image {
            Ok(image) => image.clone(),
            Err(invalid) => {
                let note = format!("container {}: {invalid}", observation.name);
                warn!(%note, "container not measured");
                ctx.warn(&deploy, "InvalidImage", note).await;
                continue;
            }
        };
        // A bad base-image annotation costs only the base signal: the
        // container is still measured.
        let base_override =
            match base_image(deploy.metadata.annotations.as_ref(), &observation.name) {
                Ok(base) => base,
                Err(invalid) => {
                    warn!(%invalid, "base image annotation ignored");
                    ctx.warn(&deploy, "InvalidAnnotation", invalid.to_string())
                        .await;
                    None
                }
            };
        let before = previous.iter().find(|r| r.container == observation.name);
        let (record, error) =
            measure_container(&ctx, &image, &observation, base_override.as_ref(), before).await;
        records.push(record);
        if let Some(e) = error {
            first_error.get_or_insert(e);
        }
    }

    // record what is known even when a look-up failed, then retry that one
    ctx.records.set(key, records);
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(Action::requeue(ctx.config.poll_interval)),
    }
}

/// Looks up one container's signals in the registry: whether its tag moved,
/// when its running digests were built, and whether their base moved on.
/// Returns what it could learn and the first look-up that failed.
async fn measure_container(
    ctx: &Context,
    image: &ImageReference,
    observation: &ContainerObservation,
    base_override: Option<&ImageReference>,
    previous: Option<&ContainerRecord>,
) -> (ContainerRecord, Option<Arc<RegistryError>>) {
    let now = Utc::now();
    let mut first_error = None;
    let mut failed = |e: Arc<RegistryError>, what: &str| {
        warn!(error = %e, container = %observation.name, "{what} unavailable");
        first_error.get_or_insert(e);
    };

    let mut update_available = None;
    if image.effective_tag().is_some() {
        match ctx.registry.resolve_tag(image, Instant::now()).await {
            Ok(tag_digest) => update_available = observation.update_available(&tag_digest),
            Err(e) => failed(e, "tag digest"),
        }
    }

    let mut build_times = Vec::new();
    let mut base_verdicts = Vec::new();
    for digest in observation.digests() {
        let facts = match ctx.registry.image_facts(image, digest).await {
            Ok(facts) => facts,
            Err(e) => {
                failed(e, "image facts");
                continue;
            }
        };
        build_times.push(facts.created);
        let own_base = facts
            .base_name
            .as_deref()
            .and_then(|b| ImageReference::parse(b).ok());
        let Some(base) = base::to_follow(base_override, own_base.as_ref()) else {
            continue;
        };
        let built_on =
            base::recorded_digest(base_override, own_base.as_ref(), facts.base_digest.as_ref());
        let base_now = match ctx.registry.resolve_tag(base, Instant::now()).await {
            Ok(d) => d,
            Err(e) => {
                failed(e, "base tag digest");
                continue;
            }
        };
        let base_now_created = match ctx.registry.image_facts(base, &base_now).await {
            Ok(base_facts) => base_facts.created,
            Err(e) => {
                failed(e, "base image facts");
                None
            }
        };
        let stale = base::is_stale(
            &base::BaseFacts {
                image_created: facts.created,
                built_on,
                base_now: &base_now,
                base_now_created,
            },
            now,
        );
        base_verdicts.push((stale, base_now_created));
    }
    let (base_stale, stale_base_created) = base::combine(&base_verdicts);
    let base_stale_since = (base_stale == Some(true)).then(|| {
        base::stale_since(
            stale_base_created,
            previous.and_then(|p| p.base_stale_since),
            now,
        )
    });

    let record = ContainerRecord {
        container: observation.name.clone(),
        image: image.name(),
        build_times,
        oldest_start: observation.oldest_start,
        update_available,
        base_stale,
        base_stale_since,
    };
    (record, first_error)
}

/// What to do after a failed reconcile: count it and retry later.
pub fn error_policy(_deploy: Arc<Deployment>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.category()])
        .inc();
    Action::requeue(ctx.config.error_requeue)
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

fn template_containers(deploy: &Deployment) -> Vec<ContainerSpec> {
    deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| ContainerSpec {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Deployment a pod belongs to: its controlling ReplicaSet is named
/// `<deployment>-<pod-template-hash>`. Pods of bare ReplicaSets or other
/// controllers yield `None`.
pub fn owning_deployment(pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let hash = pod.labels().get(POD_TEMPLATE_HASH)?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let deployment = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    if deployment.is_empty() {
        return None;
    }
    Some(ObjectRef::new(deployment).within(&pod.namespace()?))
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
                    .and_then(|t| to_chrono(&t.0)),
            }
        })
        .collect();
    PodFacts {
        name: pod.name_any(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        containers,
    }
}

/// k8s-openapi's timestamps (jiff) as chrono's, which freshen-core uses.
fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = u32::try_from(t.subsec_nanosecond()).ok()?;
    chrono::DateTime::from_timestamp(t.as_second(), nanos)
}

impl Context {
    /// Publishes a Warning Event on a workload; a failure to publish is
    /// logged, never fatal.
    async fn warn(&self, deploy: &Deployment, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Measure".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &deploy.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
