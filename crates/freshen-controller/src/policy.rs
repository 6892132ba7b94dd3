//! The policy controllers: keep each `RefreshPolicy` and
//! `ClusterRefreshPolicy` status true, and re-measure the workloads a policy
//! may govern when its spec changes.
//!
//! A policy is reconciled when it changes (its own watch) and when a workload
//! it matches changes what it reports (the records notify it). Status is
//! computed from the records ([`status_for`], pure) and written only when it
//! differs, so a status write does not start another round.

use freshen_core::condition::ConditionStatus;
use freshen_core::event::EventReason;
use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use freshen_api::policy::{
    ACTIVE, INVALID_SPEC, NO_OVERLAP, OVERLAPPING, OVERLAPS, READY, condition, set_condition,
};
use freshen_api::time::to_time;
use freshen_api::{ClusterRefreshPolicy, PolicyPipelines, PolicyStatus, RefreshPolicy, SpecError};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, instrument};

use crate::error::Error;
use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::context::{Context, Workloads};
use crate::runtime::records::{PolicyStats, WorkloadRecords};

/// What the policy controllers need of either kind of policy.
pub trait Policy:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// Its status, if written.
    fn status(&self) -> Option<&PolicyStatus>;
    /// Whether its spec is usable.
    fn validate(&self) -> Result<(), SpecError>;
    /// Its counts over the recorded workloads.
    fn stats(&self, records: &WorkloadRecords) -> PolicyStats;
    /// The API to write its status through.
    fn api(&self, client: kube::Client) -> Api<Self>;
    /// The Deployments it could match: re-measured when it changes.
    fn scope(
        &self,
        workloads: &Workloads,
        pods: &Store<CachedPod>,
    ) -> Vec<ObjectRef<CachedWorkload>>;
    /// Its pipelines.
    fn pipelines(&self) -> &PolicyPipelines;
    /// Its `spec.verify`, if any.
    fn verify(&self) -> Option<&freshen_api::refresh::VerifySpec>;
    /// Where its webhook pipelines' Secrets are: its own namespace, or
    /// (a cluster policy) freshen's.
    fn secret_namespace(&self, freshen: &str) -> String;
}

impl Policy for RefreshPolicy {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
    fn validate(&self) -> Result<(), SpecError> {
        self.candidate().map(|_| ())
    }
    fn stats(&self, records: &WorkloadRecords) -> PolicyStats {
        records.policy_stats(&self.namespace().unwrap_or_default(), &self.name_any())
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
    fn pipelines(&self) -> &PolicyPipelines {
        &self.spec.pipelines
    }
    fn verify(&self) -> Option<&freshen_api::refresh::VerifySpec> {
        self.spec.refresh.verify.as_ref()
    }
    fn secret_namespace(&self, _freshen: &str) -> String {
        self.namespace().unwrap_or_default()
    }
    fn scope(
        &self,
        workloads: &Workloads,
        pods: &Store<CachedPod>,
    ) -> Vec<ObjectRef<CachedWorkload>> {
        workloads.refs(pods, self.namespace().as_deref())
    }
}

impl Policy for ClusterRefreshPolicy {
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
    fn validate(&self) -> Result<(), SpecError> {
        self.candidate().map(|_| ())
    }
    fn stats(&self, records: &WorkloadRecords) -> PolicyStats {
        records.cluster_policy_stats(&self.name_any())
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
    fn pipelines(&self) -> &PolicyPipelines {
        &self.spec.pipelines
    }
    fn verify(&self) -> Option<&freshen_api::refresh::VerifySpec> {
        self.spec.refresh.verify.as_ref()
    }
    fn secret_namespace(&self, freshen: &str) -> String {
        freshen.to_owned()
    }
    fn scope(
        &self,
        workloads: &Workloads,
        pods: &Store<CachedPod>,
    ) -> Vec<ObjectRef<CachedWorkload>> {
        workloads.refs(pods, None)
    }
}

/// The Secrets the policy's webhook pipelines name exist; else the first
/// missing one, naming its field. A Secret that cannot be read (say, no
/// right to) is not reported here: the run that needs it says why.
async fn secrets_exist<P: Policy>(ctx: &Context, policy: &P) -> Result<(), SpecError> {
    let namespace = policy.secret_namespace(&ctx.config.rebuild_namespace);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for (field, key) in policy.pipelines().secrets() {
        match api.get_opt(&key.name).await {
            Ok(Some(secret))
                if secret
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&key.key)) => {}
            Ok(Some(_)) => {
                return Err(SpecError::Pipeline {
                    field,
                    message: format!("Secret {namespace}/{} has no key {}", key.name, key.key),
                });
            }
            Ok(None) => {
                return Err(SpecError::Pipeline {
                    field,
                    message: format!("Secret {namespace}/{} does not exist", key.name),
                });
            }
            Err(e) => debug!(error = %e, secret = %key.name, "pipeline Secret not checked"),
        }
    }
    Ok(())
}

/// Every verification key a policy keeps in a Secret or ConfigMap can be
/// read and is a public key; else the first that is not. Looked for again
/// each poll interval while one is not (they are not watched).
async fn keys_usable<P: Policy>(ctx: &Context, policy: &P) -> Result<(), SpecError> {
    let Some(verify) = policy.verify() else {
        return Ok(());
    };
    let namespace = policy.secret_namespace(&ctx.config.rebuild_namespace);
    for (i, a) in verify.authorities.iter().enumerate() {
        let Ok((source, keyless)) = a.source(Some(&namespace)) else {
            continue;
        };
        let field = match (&source, &keyless) {
            (_, Some(_)) => "keyless.trustedRoot",
            (freshen_core::verify::KeySource::Secret(_), None) => "key.secretRef",
            (freshen_core::verify::KeySource::ConfigMap(_), None) => "key.configMapRef",
            (freshen_core::verify::KeySource::Pem(_), None) => continue,
        };
        ctx.verdicts
            .usable(&source, keyless.is_some())
            .await
            .map_err(|message| SpecError::Key {
                field: format!("spec.verify.authorities[{i}].{field}"),
                message,
            })?;
    }
    Ok(())
}

/// A policy controller with its watch registered: the store of every
/// policy of its kind, and its start.
pub struct Registered<P: Policy> {
    /// Every policy of the kind.
    pub store: Store<P>,
    /// Runs the controller.
    pub start: crate::Start,
}

/// Registers the watch of one policy kind and its status controller,
/// woken also by `woken` (the records' notifier: a workload's verdict
/// changed). On a policy's deletion the workloads it could have governed
/// are measured again: a deleted object is never reconciled, so nobody
/// else would tell them.
pub fn register<P: Policy + crate::runtime::contain::Reconciled>(
    api: Api<P>,
    w: &crate::Wiring<'_>,
    (workloads, pods): (Workloads, Store<CachedPod>),
    workload_trigger: crate::runtime::context::WorkloadTriggers,
    woken: futures::channel::mpsc::UnboundedReceiver<ObjectRef<P>>,
) -> Registered<P> {
    use futures::{FutureExt, StreamExt, TryStreamExt};
    use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let watch = if P::kind(&()) == "ClusterRefreshPolicy" {
        crate::Watch::ClusterRefreshPolicies
    } else {
        crate::Watch::RefreshPolicies
    };
    let trigger = crate::reflected(
        api,
        watcher::Config::default(),
        writer,
        w.readiness.watch(watch),
    )
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(policy) = event {
            for workload in policy.scope(&workloads, &pods) {
                workload_trigger.send(workload);
            }
        }
    })
    .applied_objects();
    let reader = store.clone();
    let start: crate::Start = Box::new(move |ctx| {
        Controller::for_stream(trigger, reader)
            .reconcile_on(woken)
            .shutdown_on_signal()
            .run(
                crate::runtime::contain::contained(reconcile::<P>),
                crate::runtime::contain::error_policy,
                ctx,
            )
            .for_each(crate::log_failure)
            .boxed()
    });
    Registered { store, start }
}

/// Reconciles one policy: re-measures its scope after a spec change, then
/// writes its status if it changed.
#[instrument(skip_all, fields(policy = %policy.name_any()))]
pub async fn reconcile<P: Policy>(policy: Arc<P>, ctx: Arc<Context>) -> Result<Action, Error> {
    let generation = policy.meta().generation;
    let old = policy.status().cloned().unwrap_or_default();
    if old.observed_generation != generation {
        // New or edited: every workload it could govern is measured again,
        // and their records bring the counts back here.
        for workload in policy.scope(&ctx.workloads, &ctx.pods) {
            ctx.workload_trigger.send(workload);
        }
    }
    // A missing Secret is looked for again each poll interval: Secrets
    // are not watched.
    let (valid, recheck) = match policy.validate() {
        Ok(()) => {
            let secrets = secrets_exist(&ctx, policy.as_ref()).await;
            let keys = match policy.verify().map_or(Ok(()), |v| v.check()) {
                Ok(()) => keys_usable(&ctx, policy.as_ref()).await,
                invalid => invalid,
            };
            let recheck = secrets.is_err() || keys.is_err();
            (secrets.and(keys), recheck)
        }
        invalid => (invalid, false),
    };
    let new = status_for(
        &old,
        generation,
        valid,
        &policy.stats(&ctx.records),
        Utc::now(),
    );
    let ready = |s: &PolicyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let invalid = |s: &PolicyStatus| ready(s).is_some_and(|(s, _)| ConditionStatus::False.is(&s));
    if let Some((_, message)) = ready(&new).filter(|_| invalid(&new) && !invalid(&old)) {
        // Whoever applied it learns at once, in `kubectl describe`.
        let target = policy.object_ref(&());
        ctx.publish(
            EventType::Warning,
            EventReason::InvalidSpec,
            "Validate",
            message,
            &[target],
        )
        .await;
    }
    if new != old {
        debug!(
            matched = new.matched_workloads,
            violating = new.violating_workloads,
            "status changed"
        );
        policy
            .api(ctx.client.clone())
            .patch_status(
                &policy.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": new })),
            )
            .await
            .map_err(Error::PolicyStatus)?;
    }
    Ok(if recheck {
        Action::requeue(ctx.config.poll_interval)
    } else {
        Action::await_change()
    })
}

/// The status a policy should have: its spec's validity, its counts, and
/// whether other policies of its level match the same workloads. Condition
/// transition times move only when a condition's status changes.
pub fn status_for(
    old: &PolicyStatus,
    generation: Option<i64>,
    valid: Result<(), SpecError>,
    stats: &PolicyStats,
    now: DateTime<Utc>,
) -> PolicyStatus {
    let now = to_time(now);
    let mut conditions = old.conditions.clone();
    let ready = match valid {
        Ok(()) => condition(
            READY,
            ConditionStatus::True,
            ACTIVE,
            format!(
                "governs {} of the {} measured workload(s) it matches",
                stats.governed, stats.matched
            ),
            generation,
            now.clone(),
        ),
        Err(invalid) => condition(
            READY,
            ConditionStatus::False,
            INVALID_SPEC,
            match &invalid {
                // The policy still governs; its message says what happens.
                SpecError::Key { .. } => invalid.to_string(),
                _ => format!("{invalid}; the policy matches nothing until fixed"),
            },
            generation,
            now.clone(),
        ),
    };
    set_condition(&mut conditions, ready);
    let overlapping = if stats.overlapping == 0 {
        condition(
            OVERLAPPING,
            ConditionStatus::False,
            NO_OVERLAP,
            "no other policy of this level matches its workloads".into(),
            generation,
            now,
        )
    } else {
        let others: Vec<&str> = stats.overlaps_with.iter().map(String::as_str).collect();
        condition(
            OVERLAPPING,
            ConditionStatus::True,
            OVERLAPS,
            format!(
                "{} workload(s) are also matched by {}; the oldest policy governs each \
                 (this one governs {} of its {})",
                stats.overlapping,
                others.join(", "),
                stats.governed,
                stats.matched
            ),
            generation,
            now,
        )
    };
    set_condition(&mut conditions, overlapping);
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    PolicyStatus {
        observed_generation: generation,
        matched_workloads: count(stats.matched),
        violating_workloads: count(stats.violating),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_core::parse_duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn find<'a>(status: &'a PolicyStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (&c.status, &c.reason, &c.message)
    }

    #[test]
    fn a_valid_policy_reports_counts_and_overlaps() {
        let stats = PolicyStats {
            matched: 3,
            governed: 2,
            violating: 1,
            overlapping: 1,
            overlaps_with: ["older".to_owned()].into(),
        };
        let s = status_for(&PolicyStatus::default(), Some(4), Ok(()), &stats, at(100));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.matched_workloads, s.violating_workloads), (3, 1));
        assert_eq!(
            find(&s, READY),
            (
                "True",
                "Active",
                "governs 2 of the 3 measured workload(s) it matches"
            )
        );
        let (status, reason, message) = find(&s, OVERLAPPING);
        assert_eq!((status, reason), ("True", "Overlaps"));
        assert!(message.contains("also matched by older"), "{message}");

        // Unchanged inputs give an equal status: nothing is written again.
        assert_eq!(status_for(&s, Some(4), Ok(()), &stats, at(999)), s);
    }

    #[test]
    fn an_unusable_key_is_not_ready_and_says_the_gate_holds() {
        let key = SpecError::Key {
            field: "spec.verify.authorities[0].key.pem".into(),
            message: "expected a PEM -----BEGIN PUBLIC KEY----- block".into(),
        };
        let status = status_for(
            &PolicyStatus::default(),
            Some(1),
            Err(key),
            &PolicyStats::default(),
            at(0),
        );
        let (state, reason, message) = find(&status, READY);
        assert_eq!((state, reason), ("False", "InvalidSpec"));
        assert!(
            message.starts_with("spec.verify.authorities[0].key.pem"),
            "{message}"
        );
        assert!(message.contains("held (SignatureUnchecked)"), "{message}");
        assert!(!message.contains("matches nothing"), "{message}");
    }

    #[test]
    fn an_invalid_spec_is_not_ready_and_says_why() {
        let invalid = SpecError::Duration {
            field: "maxImageAge",
            source: parse_duration("99999999999999999999w")
                .err()
                .unwrap_or_else(|| panic!("parses")),
        };
        let s = status_for(
            &PolicyStatus::default(),
            Some(1),
            Err(invalid),
            &PolicyStats::default(),
            at(100),
        );
        let (status, reason, message) = find(&s, READY);
        assert_eq!((status, reason), ("False", "InvalidSpec"));
        assert!(
            message.starts_with("spec.maxImageAge: invalid duration"),
            "{message}"
        );
        assert_eq!(find(&s, OVERLAPPING).0, "False");
    }
}
