//! Starting refreshes: the workload controller's last step.
//!
//! Gathers what `freshen_core::plan::decide` needs (what each container runs
//! and what its tag names, the rejected digests, the active Refreshes and the
//! gates), and creates the Refresh it proposes. The name is deterministic, so
//! a retried create never makes a second Refresh for the same target.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use freshen_api::refresh::{REJECTED_DIGESTS, WORKLOAD_LABEL};
use freshen_api::{Refresh, RefreshSpec};
use freshen_core::plan::{
    self, ContainerView, Decision, Existing, Gates, GitOpsAction, Hold, Named, Slot, Wants,
    gitops_manager,
};
use freshen_core::rollout::Phase;
use freshen_core::rollout::Reason;
use freshen_core::{Digest, ImageReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info};

use crate::error::Error;
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;
use crate::runtime::ledger::{Ledger, Underway};
use crate::runtime::objects::{FIELD_MANAGER, owned_by, template_fingerprint};
use crate::runtime::records::ContainerRecord;
use crate::workload::assess::{Configuration, Lookup, template_containers};
use freshen_api::refresh::GOVERNED_BY;
use freshen_core::kind::Kind;

/// What the planner did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wanted.
    Nothing,
    /// A Refresh was created (or already existed).
    Started(String),
    /// A refresh is wanted but held; when known, until when.
    Held(Hold, Option<DateTime<Utc>>),
}

/// Decides and, when allowed, creates a Refresh for `deploy` (`rebuilt`:
/// the digests finished rebuilds produced for its containers): wants ->
/// container views -> gates (under the planning lock) -> decide (pure) ->
/// a name no other workload holds -> create.
pub async fn consider(
    ctx: &Context,
    deploy: &CachedWorkload,
    config: &Configuration,
    containers: &[ContainerRecord],
    lookup: &Lookup<'_>,
    rebuilt: Vec<(String, Digest, Reason)>,
) -> Result<Outcome, Error> {
    let now = lookup.now;
    let wants = wants(ctx, deploy, config, rebuilt);
    if !wants.follow_tag && wants.max_container_age.is_none() && wants.rebuilt.is_empty() {
        return Ok(Outcome::Nothing);
    }
    let views = views(deploy, containers, &wants, lookup).await;
    let governed_by = governed_by(deploy, config);
    // Signatures are read and judged before the lock: no registry request
    // is made while other workloads wait to plan.
    let verification = verification(ctx, config, (&views, containers), &wants, lookup).await;
    // Deciding and creating happen under one lock, and Refreshes this
    // process created but its cache has not shown yet count as active:
    // workloads reconciled side by side must not all pass the same limit.
    let mut ledger = ctx.planning.lock().await;
    let mut gates = gates(ctx, deploy, config, governed_by.as_ref(), &mut ledger);
    gates.verify = verification;
    let proposal = match plan::decide(&views, &wants, &gates, now) {
        Decision::Nothing => return Ok(Outcome::Nothing),
        Decision::Held(_, hold) => {
            let until = plan::retry_at(&hold);
            return Ok(Outcome::Held(hold, until));
        }
        Decision::Start(p) => p,
    };
    if let Some(hold) = plan::budget_hold(proposal.reason, &budgets(ctx, deploy).await?) {
        return Ok(Outcome::Held(hold, None));
    }
    if through_git(deploy, config, proposal.reason)
        && let Err(why) = crate::gitops::check_source(ctx, deploy, config).await
    {
        return Ok(Outcome::Held(Hold::GitSource(why), None));
    }
    let view = views.iter().find(|v| v.container == proposal.container);
    let refresh_name = match name_for(ctx, deploy, &proposal, view) {
        Named::Create(name) => name,
        Named::Existing(name, existing) => {
            return Ok(match existing {
                Existing::Active => Outcome::Started(name),
                Existing::Reached => Outcome::Nothing,
                Existing::Held(hold) => Outcome::Held(hold, None),
            });
        }
    };
    let running = view.and_then(|v| v.running.as_ref());
    let mut refresh = build(
        deploy,
        config,
        &proposal,
        refresh_name,
        running,
        governed_by,
        ctx.config.max_analysis_time,
    );
    refresh.spec.verification = gates.verify.as_ref().and_then(|v| v.record(&proposal));
    let urgent = gates.verify.as_ref().and_then(|v| v.urgent(&proposal));
    let outcome = create(ctx, refresh, &proposal, &mut ledger).await?;
    drop(ledger);
    if let (Some(fixed), Outcome::Started(name)) = (urgent, &outcome) {
        let note = format!(
            "Refresh {name} started without waiting for minDigestAge or a maintenance window: \
             {} fixes Critical {} of the running digest (spec.verify.vulnerabilities.urgentWhen: \
             Critical)",
            proposal.digest.short(),
            fixed.join(", ")
        );
        let target = deploy.object_ref(&deploy.kind);
        ctx.publish(
            kube::runtime::events::EventType::Normal,
            freshen_core::event::EventReason::UrgentRefresh,
            "Plan",
            note,
            &[target],
        )
        .await;
    }
    Ok(outcome)
}

/// The PodDisruptionBudgets of the workload's namespace that select any
/// of its pods, read when a restart is about to start (rarely: no cache is
/// kept for them). A budget with an invalid selector selects nothing, as
/// the disruption controller treats it.
async fn budgets(ctx: &Context, deploy: &CachedWorkload) -> Result<Vec<plan::Budget>, Error> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::core::{Selector, SelectorExt};
    let namespace = deploy.namespace().unwrap_or_default();
    let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &namespace);
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(Error::ReadBudgets)?;
    let pods = ctx.pods_of(&deploy.reference());
    Ok(list
        .items
        .iter()
        .filter(|pdb| {
            let selector = pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .and_then(|s| Selector::try_from(s).ok());
            selector.is_some_and(|s| pods.iter().any(|p| s.matches(p.labels())))
        })
        .map(|pdb| plan::Budget {
            name: pdb.name_any(),
            disruptions_allowed: pdb
                .status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0),
        })
        .collect())
}

/// What the workload's settings ask for, and the digests rejected for it.
fn wants(
    ctx: &Context,
    deploy: &CachedWorkload,
    config: &Configuration,
    rebuilt: Vec<(String, Digest, Reason)>,
) -> Wants {
    let prefs = &config.refresh;
    Wants {
        follow_tag: prefs.follow_tag == Some(true),
        min_digest_age: prefs.min_digest_age.unwrap_or_default(),
        max_container_age: config
            .resolution
            .limits
            .max_container_age
            .as_ref()
            .map(|s| s.value),
        rejected: rejected(ctx, deploy),
        rebuilt,
    }
}

/// The verification gate when a policy sets `spec.verify`: the verdict on
/// every digest the workload could be refreshed to (a followed tag's new
/// digest, a rebuilt one), each read and judged once, and the scans of the
/// digests it runs (judged when it was measured).
async fn verification(
    ctx: &Context,
    config: &Configuration,
    (views, containers): (&[ContainerView], &[ContainerRecord]),
    wants: &Wants,
    lookup: &Lookup<'_>,
) -> Option<plan::Verification> {
    let requirement = config.verify.as_ref()?;
    let mut verdicts = Vec::new();
    for (container, digest) in plan::candidates(views, wants) {
        let Some(view) = views.iter().find(|v| v.container == container) else {
            continue;
        };
        let judged = ctx
            .verdicts
            .judge(
                lookup,
                &view.image,
                &digest,
                requirement,
                crate::workload::verification::RECHECK,
            )
            .await;
        verdicts.push((container, digest, judged));
    }
    let running = containers
        .iter()
        .filter_map(|c| {
            let findings = c.verification.as_ref()?.findings.clone()?;
            Some((c.container.clone(), findings))
        })
        .collect();
    Some(plan::Verification {
        mode: requirement.mode,
        vulnerabilities: requirement.vulnerabilities,
        verdicts,
        running,
    })
}

/// Each measured container as the planner sees it; the build time of a new
/// digest is read only when a soak time needs it.
async fn views(
    deploy: &CachedWorkload,
    containers: &[ContainerRecord],
    wants: &Wants,
    lookup: &Lookup<'_>,
) -> Vec<ContainerView> {
    let templates = template_containers(deploy);
    let mut views = Vec::new();
    for record in containers {
        let Some(template) = templates.iter().find(|t| t.name == record.container) else {
            continue;
        };
        if deploy
            .container(&record.container)
            .is_some_and(|c| c.sidecar)
        {
            // A native sidecar is measured, not yet refreshed: a refresh
            // patches the regular containers only.
            continue;
        }
        let Ok(image) = ImageReference::parse(&template.image) else {
            continue;
        };
        let mut tag_digest_created = None;
        if let Some(tag) = record.tag_digest.as_ref().filter(|t| {
            wants.follow_tag
                && !wants.min_digest_age.is_zero()
                && record.running.as_ref() != Some(*t)
        }) {
            match lookup.facts(&image, tag).await {
                Ok(facts) => tag_digest_created = facts.created,
                Err(e) => debug!(error = %e, "new digest's build time unavailable"),
            }
        }
        views.push(ContainerView {
            container: record.container.clone(),
            template_image: template.image.clone(),
            image,
            running: record.running.clone(),
            tag_digest: record.tag_digest.clone(),
            tag_digest_created,
            oldest_start: record.oldest_start,
        });
    }
    views
}

/// The policy governing the workload, as the [`GOVERNED_BY`] record names
/// it (`RefreshPolicy/<namespace>/<name>` or `ClusterRefreshPolicy/<name>`).
fn governed_by(deploy: &CachedWorkload, config: &Configuration) -> Option<String> {
    let namespace = deploy.namespace().unwrap_or_default();
    let resolution = &config.resolution;
    resolution
        .policy
        .as_ref()
        .map(|p| format!("RefreshPolicy/{namespace}/{p}"))
        .or_else(|| {
            resolution
                .cluster_policy
                .as_ref()
                .map(|p| format!("ClusterRefreshPolicy/{p}"))
        })
}

/// What may hold a refresh now: GitOps, suspend, snooze, windows, and the
/// limits, counted over every Refresh under way (the ledger's too).
fn gates(
    ctx: &Context,
    deploy: &CachedWorkload,
    config: &Configuration,
    governed_by: Option<&String>,
    ledger: &mut Ledger,
) -> Gates {
    let prefs = &config.refresh;
    let namespace = deploy.namespace().unwrap_or_default();
    let name = deploy.name_any();
    let underway = ledger.underway(&ctx.refreshes.state());
    let owned = |u: &&Underway| {
        u.namespace == namespace && u.workload == name && u.owner == deploy.metadata.uid
    };
    Gates {
        unrefreshed: Some(deploy.kind).filter(|k| !k.refreshed()),
        paused: deploy.paused(),
        gitops: gitops_manager(deploy.labels(), deploy.annotations())
            .filter(|_| matches!(prefs.gitops, None | Some(GitOpsAction::Ignore))),
        suspended: prefs.suspend == Some(true),
        snooze_until: config.settings.snooze_until,
        active: underway.iter().find(owned).map(|u| u.name.clone()),
        windows: prefs.windows.clone().unwrap_or_default(),
        policy_active: (
            governed_by.map_or(0, |g| {
                // A ClusterRefreshPolicy's maxConcurrent applies in each
                // namespace it governs: one pool for all would let one
                // namespace's stuck canaries hold every other's refreshes.
                let per_namespace = g.starts_with("ClusterRefreshPolicy/");
                underway
                    .iter()
                    .filter(|u| u.governed_by.as_ref() == Some(g))
                    .filter(|u| !per_namespace || u.namespace == namespace)
                    .count()
            }),
            prefs.max_concurrent,
        ),
        operator_active: (underway.len(), ctx.config.max_concurrent_refreshes),
        namespace_active: (
            underway.iter().filter(|u| u.namespace == namespace).count(),
            ctx.config.max_concurrent_refreshes_per_namespace,
        ),
        other_namespaces: underway
            .iter()
            .map(|u| u.namespace.as_str())
            .filter(|n| *n != namespace)
            .collect::<BTreeSet<_>>()
            .len(),
        verify: None,
    }
}

/// The name the proposal's Refresh takes: the first candidate free or
/// already this target's (see [`plan::name_for`]).
fn name_for(
    ctx: &Context,
    deploy: &CachedWorkload,
    proposal: &plan::Proposal,
    view: Option<&ContainerView>,
) -> Named {
    let namespace = deploy.namespace().unwrap_or_default();
    let oldest_start = view.and_then(|v| v.oldest_start);
    let slots: Vec<_> = plan::refresh_names(&deploy.name_any(), proposal, oldest_start)
        .into_iter()
        .map(|candidate| {
            let slot = ctx
                .refreshes
                .get(&ObjectRef::new(&candidate).within(&namespace))
                .map_or(Slot::Free, |r| slot_of(&r, deploy, &proposal.container));
            (candidate, slot)
        })
        .collect();
    plan::name_for(proposal, &slots)
}

/// The Refresh for a proposal: owned by the workload, the rollout settings
/// (within `max_analysis_time`) frozen into its spec.
fn build(
    deploy: &CachedWorkload,
    config: &Configuration,
    proposal: &plan::Proposal,
    name: String,
    running: Option<&freshen_core::Digest>,
    governed_by: Option<String>,
    max_analysis_time: std::time::Duration,
) -> Refresh {
    let workload = deploy.name_any();
    let short = |d: &freshen_core::Digest| d.short().to_owned();
    Refresh {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: deploy.namespace(),
            labels: Some(BTreeMap::from([(
                WORKLOAD_LABEL.to_owned(),
                workload.clone(),
            )])),
            annotations: governed_by.map(|g| BTreeMap::from([(GOVERNED_BY.to_owned(), g)])),
            owner_references: deploy.controller_owner_ref(&deploy.kind).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: RefreshSpec {
            workload,
            workload_kind: Some(deploy.kind),
            container: proposal.container.clone(),
            reason: proposal.reason,
            from_image: proposal.from_image.clone(),
            to_image: proposal.to_image.clone(),
            from_digest: running.map_or_else(|| "unknown".to_owned(), short),
            to_digest: short(&proposal.digest),
            digest: proposal.digest.to_string(),
            rollout: settings_for(
                deploy.kind,
                through_git(deploy, config, proposal.reason),
                config,
                proposal,
                max_analysis_time,
            ),
            template_fingerprint: template_fingerprint(deploy, &proposal.container),
            verification: None,
        },
        status: None,
    }
}

/// The rollout settings a Refresh freezes: the policy's, within
/// `max_analysis_time`. An Argo Rollout runs the canary its own strategy
/// describes, so freshen's is Rolling: it sets the image and follows the
/// Rollout.
fn settings_for(
    kind: Kind,
    through_git: bool,
    config: &Configuration,
    proposal: &plan::Proposal,
    max_analysis_time: std::time::Duration,
) -> freshen_core::rollout::Settings {
    let mut settings = config
        .refresh
        .settings_for(proposal.reason)
        .capped(max_analysis_time);
    if kind == Kind::Rollout {
        settings.strategy = freshen_core::rollout::Strategy::Rolling;
    }
    settings.through_git = through_git;
    settings
}

/// Whether `deploy`'s refresh for `reason` is promoted through git: a
/// GitOps-managed workload whose policy says `gitops: Commit`, except for a
/// restart, which changes nothing git holds (the image is the same) and is
/// stamped on the workload as with `gitops: Patch`.
fn through_git(deploy: &CachedWorkload, config: &Configuration, reason: Reason) -> bool {
    gitops_manager(deploy.labels(), deploy.annotations()).is_some()
        && config.refresh.gitops.is_some_and(GitOpsAction::through_git)
        && reason != Reason::ContainerTooOld
}

/// Creates the Refresh (a name already taken by the same target counts as
/// started) and records it in the ledger until the cache shows it.
async fn create(
    ctx: &Context,
    refresh: Refresh,
    proposal: &plan::Proposal,
    ledger: &mut Ledger,
) -> Result<Outcome, Error> {
    let namespace = refresh.namespace().unwrap_or_default();
    let name = refresh.name_any();
    let api: Api<Refresh> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let underway = Underway::of(&refresh);
    match api.create(&params, &refresh).await {
        Ok(_) => {
            info!(refresh = %name, reason = %proposal.reason, to = %proposal.to_image, "refresh created");
            ledger.created(underway);
            Ok(Outcome::Started(name))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Started(name)),
        Err(e) => Err(Error::CreateRefresh(e)),
    }
}

/// What a Refresh found under a candidate name is to this workload: its
/// own (same workload and container, owned by it by uid) or another's.
fn slot_of(refresh: &Refresh, deploy: &CachedWorkload, container: &str) -> Slot {
    if refresh.spec.workload == deploy.name_any()
        && refresh.spec.container == container
        && owned_by(refresh, deploy)
    {
        let progress = refresh.progress();
        Slot::Ours {
            phase: progress.phase,
            cause: progress.cause,
        }
    } else {
        Slot::Foreign
    }
}

/// The digests rejected for `deploy`: its annotation, and the targets of its
/// rolled-back Refreshes (either survives the loss of the other).
pub fn rejected(ctx: &Context, deploy: &CachedWorkload) -> Vec<(String, freshen_core::Digest)> {
    let mut list = plan::parse_rejected(
        deploy
            .annotations()
            .get(REJECTED_DIGESTS)
            .map_or("", String::as_str),
    );
    let namespace = deploy.namespace();
    for r in ctx.refreshes.state() {
        if r.namespace() == namespace
            && r.spec.workload == deploy.name_any()
            && owned_by(&r, deploy)
            && r.progress().phase == Phase::RolledBack
            && let Ok(d) = r.spec.digest.parse()
        {
            list.push((r.spec.container.clone(), d));
        }
    }
    list
}

/// Time until `t`, for a requeue.
pub fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    (t - now).to_std().unwrap_or_default()
}
