//! A CronJob's refresh: the canary is one Job made from the CronJob's Job
//! template with the new image, as `kubectl create job --from=cronjob/...`
//! makes one (no retries: `backoffLimit: 0`), owned by the Refresh. It
//! passes once its pod has completed (and stays so for the analysis'
//! checks); a failed pod rolls it back, the CronJob untouched. Promotion
//! sets the image in the Job template: the next scheduled Job runs it. A
//! suspended CronJob is held (its owner stopped it).

use std::collections::BTreeMap;
use std::sync::Arc;

use freshen_api::Refresh;
use freshen_api::refresh::{CANARY_LABEL, REFRESH_LABEL, RESTARTED_BY, WORKLOAD_LABEL};
use freshen_core::kind::Kind;
use freshen_core::rollout::{Change, Phase, Target, WorkloadState};
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{CanaryHolder, Mechanics, Sight, canary_holder, runs_target};
use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;
use crate::runtime::objects::{FIELD_MANAGER, template_fingerprint, workload_ref};

/// The mechanics of CronJobs.
pub struct CronJobs;

/// The state machine's view of a CronJob's `container`: one pod per run,
/// and always rolled out (the next Job runs whatever the template says).
pub fn workload_state(cron: &CachedWorkload, target: &Target) -> Option<WorkloadState> {
    let template = cron.template()?;
    let container = cron.container(&target.container);
    Some(WorkloadState {
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        restart_token: template.restarted_by.clone(),
        template: container.map(|c| c.fingerprint.clone()).unwrap_or_default(),
        replicas: 1,
        rolled_out: true,
        held: false,
        gave_up: None,
    })
}

/// A canary Job's pod as the state machine reads it: Ready once it has
/// completed; its restarts and waiting reasons as any pod's.
fn job_pod_health(pod: &CachedPod) -> freshen_core::rollout::PodHealth {
    let mut health = super::pod_health(pod);
    health.ready = phase(pod) == Some("Succeeded");
    health
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Why the canary Job failed, if a pod of it did: the pod and the
/// termination reasons of its containers.
fn failed(pods: &[Arc<CachedPod>]) -> Option<String> {
    let pod = pods.iter().find(|p| phase(p) == Some("Failed"))?;
    let reasons = super::pod_health(pod).reasons.join(", ");
    Some(format!(
        "pod {} of the canary Job failed ({})",
        pod.name_any(),
        if reasons.is_empty() {
            "no reason given"
        } else {
            &reasons
        }
    ))
}

impl Mechanics for CronJobs {
    fn in_place(&self) -> bool {
        false
    }

    fn observe(&self, ctx: &Context, refresh: &Refresh, _phase: Phase, sight: &mut Sight) {
        let namespace = refresh.namespace().unwrap_or_default();
        let name = refresh.name_any();
        let target = refresh.target(&name);
        let job_ref = workload_ref(Kind::Job, &sight.canary_name, &namespace);
        let canary = ctx.workload(&job_ref);
        let holder = canary
            .as_deref()
            .map_or(CanaryHolder::Nobody, |c| canary_holder(c, refresh));
        let pods: Vec<Arc<CachedPod>> = ctx
            .pods_of(&job_ref)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.labels().get(REFRESH_LABEL) == Some(&name))
            .collect();
        sight.observed.workload = sight
            .workload
            .as_deref()
            .and_then(|w| workload_state(w, &target));
        sight.observed.canary_exists = holder == CanaryHolder::This;
        sight.observed.foreign_canary = holder == CanaryHolder::Leftover;
        sight.observed.canary_name_taken =
            (holder == CanaryHolder::Someone).then(|| sight.canary_name.clone());
        if holder == CanaryHolder::This {
            sight.observed.canary_failed = failed(&pods);
            sight.observed.canary_pods = pods
                .iter()
                .filter(|p| runs_target(p, &target))
                .map(|p| job_pod_health(p))
                .collect();
        }
        sight.canary = canary;
        sight.holder = Some(holder);
    }

    fn act<'a>(
        &'a self,
        ctx: &'a Context,
        refresh: &'a Refresh,
        sight: &'a Sight,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let Some(cron) = sight.workload.as_deref() else {
                return Ok(());
            };
            match change {
                Change::CreateCanary { .. } => {
                    create_canary(ctx, refresh, cron, &sight.canary_name).await
                }
                Change::DeleteCanary => match (&sight.canary, sight.holder) {
                    (Some(job), Some(h)) if h.freshens() => super::delete_owned(ctx, job).await,
                    _ => Ok(()),
                },
                Change::SetImage { image, stamp } => {
                    let name = refresh.name_any();
                    let stamp = stamp.then_some(name.as_str());
                    set_image(ctx, cron, &refresh.spec.container, image, stamp).await
                }
                Change::RejectDigest => Ok(()),
            }
        }
        .boxed()
    }
}

/// The canary Job: the CronJob's Job template with the new image (and the
/// stamp of a restart), no retries, the canary's labels on it and its
/// pods, owned by the Refresh.
pub fn canary_job(refresh: &Refresh, cron: &CronJob, name: &str) -> Option<Job> {
    let refresh_name = refresh.metadata.name.clone()?;
    let template = cron.spec.job_template.clone();
    let mut spec = template.spec?;
    let own = BTreeMap::from([
        (CANARY_LABEL.to_owned(), "true".to_owned()),
        (REFRESH_LABEL.to_owned(), refresh_name.clone()),
    ]);
    let pod_meta = spec
        .template
        .metadata
        .get_or_insert_with(ObjectMeta::default);
    pod_meta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(own.clone());
    if refresh.spec.reason == freshen_core::rollout::Reason::ContainerTooOld {
        pod_meta
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(RESTARTED_BY.to_owned(), refresh_name);
    }
    let container = spec
        .template
        .spec
        .as_mut()?
        .containers
        .iter_mut()
        .find(|c| c.name == refresh.spec.container)?;
    container.image = Some(refresh.spec.to_image.clone());
    spec.backoff_limit = Some(0);
    let mut labels = own;
    labels.insert(WORKLOAD_LABEL.to_owned(), refresh.spec.workload.clone());
    Some(Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cron.namespace(),
            labels: Some(labels),
            // As `kubectl create job --from=cronjob/...` marks its Jobs.
            annotations: Some(BTreeMap::from([(
                "cronjob.kubernetes.io/instantiate".to_owned(),
                "manual".to_owned(),
            )])),
            owner_references: Some(vec![refresh.controller_owner_ref(&())?]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// Creates the canary Job from the whole CronJob, read afresh: only if it
/// is still the one the decision saw (uid, template fingerprint, image).
async fn create_canary(
    ctx: &Context,
    refresh: &Refresh,
    cached: &CachedWorkload,
    name: &str,
) -> Result<(), Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let crons: Api<CronJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let cron = crons
        .get(&cached.name_any())
        .await
        .map_err(Error::ReadWorkload)?;
    if cron.metadata.uid != cached.metadata.uid
        || cron.metadata.resource_version != cached.metadata.resource_version
    {
        return Err(Error::Stale("the workload changed since it was read"));
    }
    let container = &refresh.spec.container;
    if template_fingerprint(cached, container).is_none() {
        return Err(Error::MissingField(
            "the Refresh's container in the CronJob's Job template",
        ));
    }
    let Some(job) = canary_job(refresh, &cron, name) else {
        return Err(Error::MissingField(
            "the Refresh's container in the CronJob's Job template",
        ));
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    match jobs.create(&params, &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::CreateCanary(e)),
    }
}

/// Sets the image (and stamp) in the CronJob's Job template with a
/// strategic merge patch naming nothing else, guarded by the
/// resourceVersion the decision was made on.
async fn set_image(
    ctx: &Context,
    cron: &CachedWorkload,
    container: &str,
    image: &str,
    stamp: Option<&str>,
) -> Result<(), Error> {
    let template = super::template_patch(container, image, stamp.map(serde_json::Value::from));
    let patch = json!({"spec": {"jobTemplate": {"spec": {"template": template}}}});
    super::patch_guarded(ctx, cron, patch, Error::PatchImage).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::RefreshSpec;
    use freshen_core::rollout::{Reason, Settings};

    fn cron() -> CronJob {
        serde_json::from_value(json!({
            "metadata": {"name": "backup", "namespace": "ops", "uid": "c-uid"},
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {
                "backoffLimit": 6,
                "template": {
                    "metadata": {"labels": {"app": "backup"}},
                    "spec": {"restartPolicy": "Never", "containers": [
                        {"name": "app", "image": "reg/backup:1"},
                        {"name": "log", "image": "reg/log:1"}
                    ]}
                }
            }}}
        }))
        .unwrap_or_default()
    }

    fn refresh(reason: Reason) -> Refresh {
        let mut r = Refresh::new(
            "backup-app-222222222222",
            RefreshSpec {
                workload: "backup".into(),
                workload_kind: Some(Kind::CronJob),
                container: "app".into(),
                reason,
                from_image: "reg/backup:1".into(),
                to_image: "reg/backup:1@sha256:22".into(),
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
    fn the_canary_job_runs_the_template_once_with_the_new_image() {
        let job =
            canary_job(&refresh(Reason::NewDigest), &cron(), "backup-canary").unwrap_or_default();
        let spec = job.spec.unwrap_or_default();
        assert_eq!(spec.backoff_limit, Some(0), "no retries: one run decides");
        let pod = spec.template.spec.unwrap_or_default();
        let images: Vec<_> = pod
            .containers
            .iter()
            .filter_map(|c| c.image.clone())
            .collect();
        assert_eq!(images, ["reg/backup:1@sha256:22", "reg/log:1"]);
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("backup"));
        assert_eq!(labels.get(CANARY_LABEL).map(String::as_str), Some("true"));
        let owner = job.metadata.owner_references.unwrap_or_default();
        assert_eq!(
            owner
                .first()
                .map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller)),
            Some(("Refresh", "r-uid", Some(true)))
        );
        // A restart stamps the canary's pods as it will the template.
        let restart = canary_job(&refresh(Reason::ContainerTooOld), &cron(), "c")
            .and_then(|j| j.spec)
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            restart.get(RESTARTED_BY).map(String::as_str),
            Some("backup-app-222222222222")
        );
    }

    #[test]
    fn a_canary_pod_counts_once_completed_and_fails_the_canary_when_failed() {
        let pod = |phase: &str| -> Arc<CachedPod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("backup-canary-{}", phase.to_lowercase())},
                    "status": {"phase": phase, "containerStatuses": [{
                        "name": "app", "imageID": "", "restartCount": 0,
                        "state": {"terminated": {"reason": "Error", "exitCode": 1}}
                    }]}
                }))
                .unwrap_or_default(),
            )
        };
        assert!(job_pod_health(&pod("Succeeded")).ready);
        assert!(!job_pod_health(&pod("Running")).ready);
        assert_eq!(failed(&[pod("Running")]), None);
        let why = failed(&[pod("Running"), pod("Failed")]).unwrap_or_default();
        assert!(
            why.contains("backup-canary-failed") && why.contains("Error"),
            "{why}"
        );
    }
}
