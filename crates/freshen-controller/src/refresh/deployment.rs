//! A Deployment's refresh: the canary is a Deployment of its own beside
//! the workload (the workload's pod template with the new image, its own
//! selector, owned by the Refresh); promotion sets the image in the
//! workload's template and the Deployment controller rolls it out;
//! rollback deletes the canary and, after a promotion, sets the old image
//! back.

use std::collections::BTreeMap;
use std::sync::Arc;

use freshen_api::Refresh;
use freshen_api::refresh::{CANARY_LABEL, REFRESH_LABEL, WORKLOAD_LABEL};
use freshen_core::rollout::{Change, Phase, RolloutCounts, WorkloadState};
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Mechanics, Sight, pod_health, runs_target};
use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::Context;
use crate::runtime::objects::{FIELD_MANAGER, deployment_ref, template_fingerprint};

/// The mechanics of Deployments.
pub struct Deployments;

impl Mechanics for Deployments {
    fn in_place(&self) -> bool {
        false
    }

    fn observe(&self, ctx: &Context, refresh: &Refresh, _phase: Phase, sight: &mut Sight) {
        let namespace = refresh.namespace().unwrap_or_default();
        let name = refresh.name_any();
        let target = refresh.target(&name);
        let canary = ctx.workload(&deployment_ref(&sight.canary_name, &namespace));
        let holder = canary
            .as_deref()
            .map_or(CanaryHolder::Nobody, |c| canary_holder(c, refresh));
        let live = |p: &&Arc<CachedPod>| p.metadata.deletion_timestamp.is_none();
        let canary_pods = ctx
            .pods_of(&deployment_ref(&sight.canary_name, &namespace))
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
        sight.observed.workload = sight
            .workload
            .as_deref()
            .and_then(|w| workload_state(w, &target.container));
        sight.observed.canary_exists = holder == CanaryHolder::This;
        sight.observed.foreign_canary = holder == CanaryHolder::Leftover;
        sight.observed.canary_name_taken =
            (holder == CanaryHolder::Someone).then(|| sight.canary_name.clone());
        sight.observed.canary_pods = canary_pods;
        sight.observed.new_pods = new_pods;
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
            match change {
                Change::CreateCanary { replicas } => {
                    let Some(w) = &sight.workload else {
                        return Ok(());
                    };
                    create_canary(ctx, refresh, w, &sight.canary_name, *replicas).await
                }
                Change::DeleteCanary => {
                    // Only a Deployment freshen made for a Refresh, and only
                    // the very object judged (uid precondition).
                    match (&sight.canary, sight.holder) {
                        (Some(c), Some(h)) if h.freshens() => super::delete_owned(ctx, c).await,
                        _ => Ok(()),
                    }
                }
                Change::SetImage { image, stamp } => {
                    let Some(w) = &sight.workload else {
                        return Ok(());
                    };
                    let name = refresh.name_any();
                    let stamp = stamp.then_some(name.as_str());
                    set_image(ctx, w, &refresh.spec.container, image, stamp).await
                }
                Change::RejectDigest => Ok(()),
            }
        }
        .boxed()
    }
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
        held: false,
        gave_up: None,
    })
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
    pub fn freshens(self) -> bool {
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
    let template = super::template_patch(container, image, stamp.map(serde_json::Value::from));
    let patch = json!({"spec": {"template": template}});
    super::patch_guarded(ctx, workload, patch, Error::PatchImage).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::RefreshSpec;
    use freshen_api::refresh::RESTARTED_BY;
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
                workload_kind: None,
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
                held: false,
                gave_up: None,
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
}
