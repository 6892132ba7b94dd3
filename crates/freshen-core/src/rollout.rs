//! The rollout state machine of one Refresh.
//!
//! [`step`] is a pure function from (the frozen target, the stored progress,
//! what was just observed, now) to (the next progress, the actions that bring
//! the cluster to what that progress says). It is level-triggered: the
//! actions follow from the phase and the observation, not from the edge that
//! led there, so an operator that died between writing a phase and acting on
//! it emits the same actions again on its next step. Every action is safe to
//! repeat. The executor writes the new progress first (optimistically, on
//! the Refresh's resourceVersion) and acts only when that write succeeded.
//!
//! Phases: `Pending -> Canary -> Promoting -> Succeeded`, with
//! `RollingBack -> RolledBack` from either middle phase, and `Failed` when
//! someone else changed the workload (freshen then stops without
//! overwriting anything) or it was deleted. The `rolling` strategy goes
//! from `Pending` straight to `Promoting`.

use std::fmt;
use std::time::Duration;

use crate::condition::ConditionStatus;
pub use crate::event::{EventKind, EventReason};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::age::elapsed;

/// Why a refresh was started. Like every enum value in freshen's CRDs it
/// is PascalCase, as Kubernetes spells them; the kebab-case spelling of
/// earlier versions is still read.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Reason {
    /// The followed tag resolves to a digest the workload does not run.
    #[serde(alias = "new-digest")]
    NewDigest,
    /// The oldest container ran longer than `maxContainerAge`: a restart on
    /// the same (pinned) digest.
    #[serde(alias = "container-too-old")]
    ContainerTooOld,
    /// The image is older than `maxImageAge`: needs a rebuild.
    #[serde(alias = "image-too-old")]
    ImageTooOld,
    /// The base image moved on: needs a rebuild.
    #[serde(alias = "base-moved")]
    BaseMoved,
}

impl Reason {
    /// The CRD value and metric label, e.g. `NewDigest`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a new digest reaches the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Strategy {
    /// A `<name>-canary` Deployment takes a share of the traffic first.
    #[default]
    #[serde(alias = "canary")]
    Canary,
    /// The workload's own rolling update, watched the same way.
    #[serde(alias = "rolling")]
    Rolling,
}

/// What an empty Prometheus answer means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OnNoData {
    /// No data fails the check (the default: a silent canary is not healthy).
    #[default]
    #[serde(alias = "fail")]
    Fail,
    /// No data passes.
    #[serde(alias = "pass")]
    Pass,
    /// No data neither passes nor fails; the check is repeated.
    #[serde(alias = "inconclusive")]
    Inconclusive,
}

/// An optional Prometheus query whose value must stay at or below `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct MetricCheck {
    /// A PromQL instant query returning one number (the first sample
    /// counts); at most 4096 characters.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 4096)))]
    pub query: String,
    /// The highest passing value.
    pub max: f64,
    /// What an empty result means.
    #[serde(default)]
    pub on_no_data: OnNoData,
    /// How many query errors in a row fail the analysis, at most 100.
    #[cfg_attr(feature = "schema", schemars(range(max = 100)))]
    pub max_consecutive_errors: u32,
}

/// Rollout settings, frozen into the Refresh when it is created: a policy
/// edited later does not change a refresh under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// How the new image is rolled out: canary (a separate canary
    /// Deployment first) or rolling (the workload's own rolling update).
    pub strategy: Strategy,
    /// Canary size as a percentage of the workload's replicas (rounded up,
    /// at least one pod), 1 to 100.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub canary_weight_percent: u32,
    /// Seconds between analysis checks, 1 to 100 years' worth.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3_155_760_000_u64)))]
    pub interval_seconds: u64,
    /// Passing checks needed to promote, 1 to 100.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub iterations: u32,
    /// Container restarts tolerated across the new pods, at most 10000.
    #[cfg_attr(feature = "schema", schemars(range(max = 10_000)))]
    pub max_restarts: u32,
    /// Seconds the new pods have to become Ready (canary), or the workload
    /// to finish its rollout (promotion), from freshen's own start time;
    /// 1 to 100 years' worth.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3_155_760_000_u64)))]
    pub readiness_timeout_seconds: u64,
    /// A Prometheus query the canary must pass, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricCheck>,
    /// Promote through git (a policy's `gitops: Commit` for a workload a
    /// GitOps reconciler manages): the proven image is committed to the
    /// workload's source and the reconciler applies it; a rollback after
    /// promotion is a commit that puts the old image back. freshen never
    /// patches the workload's image itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub through_git: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Canary,
            canary_weight_percent: 10,
            interval_seconds: 30,
            iterations: 5,
            max_restarts: 0,
            readiness_timeout_seconds: 300,
            metric: None,
            through_git: false,
        }
    }
}

/// The largest `maxRestarts` a Refresh may carry.
pub const MAX_RESTARTS_LIMIT: u32 = 10_000;
/// The largest `iterations` a Refresh may carry (as policies allow).
pub const MAX_ITERATIONS: u32 = 100;

impl Settings {
    /// Whether every number is within the bounds the CRD declares; the
    /// first that is not, named as in the Refresh spec. The executor
    /// re-checks, for objects stored before the bounds existed.
    pub fn check(&self) -> Result<(), String> {
        let max = crate::duration::MAX_DURATION_SECONDS;
        let problems = [
            (
                !(1..=100).contains(&self.canary_weight_percent),
                format!(
                    "spec.rollout.canaryWeightPercent is {}; expected 1 to 100",
                    self.canary_weight_percent
                ),
            ),
            (
                !(1..=max).contains(&self.interval_seconds),
                format!(
                    "spec.rollout.intervalSeconds is {}; expected 1 to {max}",
                    self.interval_seconds
                ),
            ),
            (
                !(1..=MAX_ITERATIONS).contains(&self.iterations),
                format!(
                    "spec.rollout.iterations is {}; expected 1 to {MAX_ITERATIONS}",
                    self.iterations
                ),
            ),
            (
                self.max_restarts > MAX_RESTARTS_LIMIT,
                format!(
                    "spec.rollout.maxRestarts is {}; expected at most {MAX_RESTARTS_LIMIT}",
                    self.max_restarts
                ),
            ),
            (
                !(1..=max).contains(&self.readiness_timeout_seconds),
                format!(
                    "spec.rollout.readinessTimeoutSeconds is {}; expected 1 to {max}",
                    self.readiness_timeout_seconds
                ),
            ),
        ];
        match problems.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(why),
            None => Ok(()),
        }
    }

    /// Canary replicas for a workload of `replicas`: `ceil(replicas *
    /// weight)`, at least 1.
    pub fn canary_replicas(&self, replicas: u32) -> u32 {
        let weighted = (u64::from(replicas) * u64::from(self.canary_weight_percent)).div_ceil(100);
        u32::try_from(weighted).unwrap_or(u32::MAX).max(1)
    }

    /// These settings within the operator's `--max-analysis-time`: the
    /// analysis (`interval x iterations`) and the readiness timeout each
    /// take at most `cap` (the interval shortened, never the iterations,
    /// so as many checks still decide). A canary then ends within about
    /// `3 x cap` (readiness, then at most twice the iterations of checks),
    /// a promotion within `cap`, however long a policy asks to wait: a
    /// namespace cannot hold an operator-wide slot for a hundred years.
    pub fn capped(&self, cap: Duration) -> Self {
        let cap_seconds = cap.as_secs().max(1);
        let iterations = u64::from(self.iterations.max(1));
        Self {
            interval_seconds: self.interval_seconds.min((cap_seconds / iterations).max(1)),
            readiness_timeout_seconds: self.readiness_timeout_seconds.min(cap_seconds),
            ..self.clone()
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_seconds.max(1))
    }

    fn readiness_timeout(&self) -> Duration {
        Duration::from_secs(self.readiness_timeout_seconds)
    }
}

/// What the executor checks a Refresh against before it changes anything:
/// a Refresh is input (anyone allowed to write one could otherwise have
/// freshen patch a Deployment they cannot edit), so it must match its
/// workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Whether the Refresh's controller owner reference names the workload,
    /// matched by uid.
    pub owned_by_workload: bool,
    /// `spec.digest`.
    pub digest: String,
    /// The target container's image in the workload's template; `None`
    /// when the workload has no such container.
    pub container_image: Option<String>,
}

/// Why a Refresh may not act on its workload; `Ok` when it may: it is
/// owned by the workload, names one of its containers, pins `toImage` to
/// `spec.digest` in the same repository as `fromImage`, and its settings are
/// within bounds.
pub fn verify(target: &Target, provenance: &Provenance) -> Result<(), String> {
    if !provenance.owned_by_workload {
        return Err(
            "it is not owned by its workload (no controller ownerReference with the \
                    Deployment's uid)"
                .into(),
        );
    }
    if provenance.container_image.is_none() {
        return Err(format!(
            "the workload has no container {:?} (spec.container)",
            target.container
        ));
    }
    let to =
        crate::ImageReference::parse(&target.to_image).map_err(|e| format!("spec.toImage: {e}"))?;
    let from = crate::ImageReference::parse(&target.from_image)
        .map_err(|e| format!("spec.fromImage: {e}"))?;
    if to.digest.as_ref().map(crate::Digest::as_str) != Some(provenance.digest.as_str()) {
        return Err(format!(
            "spec.toImage {} is not pinned to spec.digest {}",
            target.to_image, provenance.digest
        ));
    }
    if (to.registry.as_str(), to.repository.as_str())
        != (from.registry.as_str(), from.repository.as_str())
    {
        return Err(format!(
            "spec.toImage {} is not in the repository of spec.fromImage {}",
            target.to_image, target.from_image
        ));
    }
    target.settings.check()
}

/// What one Refresh is to do; fixed at creation.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The Refresh's name; marks a restart in the pod template.
    pub name: String,
    /// The container to change.
    pub container: String,
    /// Why the refresh was started.
    pub reason: Reason,
    /// The container's image exactly as the workload had it.
    pub from_image: String,
    /// The image to roll out, pinned by digest.
    pub to_image: String,
    /// Frozen rollout settings.
    pub settings: Settings,
    /// Fingerprint of the workload's pod template apart from this
    /// container's image and the restart stamp, as it was when the refresh
    /// was planned; any other change to the template is someone else's.
    /// `None` (a Refresh recorded without one): only the image is compared.
    pub template: Option<String>,
}

impl Target {
    /// Whether this refresh restarts pods (stamps the template) rather than
    /// only changing the image.
    pub fn restarts(&self) -> bool {
        self.reason == Reason::ContainerTooOld
    }

    /// Whether someone else changed the pod template beyond what this
    /// refresh changes (the container's image, the restart stamp).
    fn template_changed(&self, w: &WorkloadState) -> bool {
        self.template.as_ref().is_some_and(|t| *t != w.template)
    }

    /// Whether the workload's template carries this refresh's change.
    fn applied(&self, w: &WorkloadState) -> bool {
        w.image == self.to_image
            && (!self.restarts() || w.restart_token.as_deref() == Some(&self.name))
    }

    /// Whether the workload's template is as it was before this refresh.
    fn original(&self, w: &WorkloadState) -> bool {
        w.image == self.from_image
            && (!self.restarts() || w.restart_token.as_deref() != Some(&self.name))
    }
}

/// Where a refresh is.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumMessage,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Phase {
    /// Created, nothing changed yet.
    #[default]
    Pending,
    /// Waiting for a rebuild pipeline (reserved for the pipeline work).
    Rebuilding,
    /// The canary runs and is analysed.
    Canary,
    /// The workload's image is (being) patched and its rollout watched.
    Promoting,
    /// Undoing: canary deleted, image restored if it was patched.
    RollingBack,
    /// The workload runs the new image. Terminal.
    Succeeded,
    /// Undone; the digest is rejected for the workload. Terminal.
    RolledBack,
    /// Stopped without undoing, because the workload went away or someone
    /// else changed it. Terminal.
    Failed,
}

impl Phase {
    /// Whether nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed)
    }

    /// Whether the workload itself may be mid-change in this phase (patched
    /// or being restored): a Refresh deleted now must first finish.
    pub fn changes_workload(self) -> bool {
        matches!(self, Self::Promoting | Self::RollingBack)
    }

    /// The phase's name, as stored and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Rebuilding => "Rebuilding",
            Self::Canary => "Canary",
            Self::Promoting => "Promoting",
            Self::RollingBack => "RollingBack",
            Self::Succeeded => "Succeeded",
            Self::RolledBack => "RolledBack",
            Self::Failed => "Failed",
        }
    }

    /// The Refresh's `Ready` condition for this phase: status and reason.
    pub fn ready(self) -> (ConditionStatus, &'static str) {
        match self {
            Self::Succeeded => (ConditionStatus::True, "Succeeded"),
            Self::RolledBack | Self::Failed => (ConditionStatus::False, self.as_str()),
            _ => (ConditionStatus::Unknown, self.as_str()),
        }
    }

    /// What the phase means, from its documentation, on one line.
    pub fn meaning(self) -> String {
        use strum::EnumMessage as _;
        crate::event::one_line(self.get_documentation().unwrap_or_default())
    }

    /// Every phase, for metrics that report each.
    pub const ALL: [Phase; 8] = [
        Self::Pending,
        Self::Rebuilding,
        Self::Canary,
        Self::Promoting,
        Self::RollingBack,
        Self::Succeeded,
        Self::RolledBack,
        Self::Failed,
    ];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pods a check looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Stage {
    /// The canary's pods.
    Canary,
    /// The workload's pods running the new image.
    Promotion,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Verdict {
    /// Healthy; counts towards promotion.
    Pass,
    /// Not yet decidable (pods not Ready yet, inconclusive metric).
    Wait,
    /// Unhealthy: roll back.
    Fail,
}

impl Verdict {
    /// The verdict's name, as the status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "Pass",
            Self::Wait => "Wait",
            Self::Fail => "Fail",
        }
    }
}

/// One analysis check, kept in the Refresh's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// When the check was made (RFC 3339, UTC).
    pub time: DateTime<Utc>,
    /// Which pods were checked: the canary's, or the workload's during
    /// promotion.
    pub stage: Stage,
    /// Ready pods / pods wanted.
    pub ready: u32,
    /// How many pods should be Ready: the canary's replicas, or the
    /// workload's.
    pub desired: u32,
    /// Container restarts across them.
    pub restarts: u32,
    /// The metric's value, when a query is configured and answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// The check's outcome: Pass, Fail, or Wait (not yet decidable, e.g.
    /// pods not Ready).
    pub verdict: Verdict,
    /// Why, in a few words.
    pub message: String,
}

/// How many checks a Refresh keeps.
pub const MAX_CHECKS: usize = 20;

/// A Refresh's progress: everything [`step`] needs to resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Where the refresh is: Pending, Rebuilding, Canary, Promoting,
    /// RollingBack, or the end it reached (Succeeded, RolledBack, Failed).
    #[serde(default)]
    pub phase: Phase,
    /// When the canary was (to be) created; canary deadlines count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_started_at: Option<DateTime<Utc>>,
    /// When promotion was decided; the rollout deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<DateTime<Utc>>,
    /// When the workload was first seen carrying the change; from then on,
    /// a rollback must restore the previous image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_at: Option<DateTime<Utc>>,
    /// When the rollback was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<DateTime<Utc>>,
    /// When a terminal phase was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the refresh rolled back or failed, in one phrase (bounded: a
    /// metric label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// What the refresh is doing now, or how it ended, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What made it roll back or fail, in words; kept when the message
    /// moves on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    /// Canary checks made so far.
    #[serde(default)]
    pub checks: u32,
    /// Canary checks passed so far.
    #[serde(default)]
    pub passes: u32,
    /// Metric queries failed in a row.
    #[serde(default)]
    pub metric_errors: u32,
    /// The last [`MAX_CHECKS`] checks, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<Check>,
    /// Events of phase changes stored but not yet published (an outbox):
    /// the executor publishes them after acting, or first thing after a
    /// crash, then clears them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_events: Vec<PendingEvent>,
}

/// Why a refresh did not succeed; bounded, so it can label a metric.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Failure {
    /// A pod could not pull or start the image, crash-looped or was OOM-killed.
    #[serde(alias = "pod-failure")]
    PodFailure,
    /// More restarts than `maxRestarts`.
    #[serde(alias = "restarts")]
    Restarts,
    /// Pods not Ready (canary) or rollout not complete (promotion) in time.
    #[serde(alias = "timeout")]
    Timeout,
    /// The Prometheus check failed or kept erroring.
    #[serde(alias = "metric")]
    Metric,
    /// The analysis stayed inconclusive.
    #[serde(alias = "inconclusive")]
    Inconclusive,
    /// Someone else changed the workload's image.
    #[serde(alias = "conflict")]
    Conflict,
    /// The workload was deleted.
    #[serde(alias = "workload-deleted")]
    WorkloadDeleted,
    /// The Refresh does not match its workload ([`verify`]); nothing was
    /// changed.
    #[serde(alias = "untrusted")]
    Untrusted,
    /// The workload's own controller gave the rollout up (an Argo
    /// Rollout aborted by its analysis, or Degraded).
    #[serde(alias = "aborted")]
    Aborted,
    /// A reviewer closed freshen's pull request without merging it: the
    /// digest is rejected, never proposed again.
    Declined,
}

impl Failure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Pod states that fail a rollout at once.
pub const FATAL_REASONS: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
    "OOMKilled",
];

/// One pod's health, read from its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHealth {
    /// The pod's name.
    pub name: String,
    /// Its Ready condition.
    pub ready: bool,
    /// Restarts summed over its containers.
    pub restarts: u32,
    /// Waiting or termination reasons of its containers (current and last).
    pub reasons: Vec<String>,
}

impl PodHealth {
    fn fatal(&self) -> Option<&str> {
        self.reasons
            .iter()
            .find(|r| FATAL_REASONS.contains(&r.as_str()))
            .map(String::as_str)
    }
}

/// The workload as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadState {
    /// The target container's image in the pod template.
    pub image: String,
    /// The template's restart stamp (`freshen.dev/restarted-by`).
    pub restart_token: Option<String>,
    /// Fingerprint of the template apart from the target container's image
    /// and the restart stamp (compared with [`Target::template`]).
    pub template: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// Whether the workload's controller has seen the latest spec and every
    /// replica is updated, available, and no old one is left.
    pub rolled_out: bool,
    /// Whether the canary runs inside the workload: its template already
    /// carries the new image, and a hold freshen set keeps it to the
    /// canary's pods (a StatefulSet's partition). Promoting releases the
    /// hold; a canary outside the workload (a Deployment's) never sets it.
    pub held: bool,
    /// Why the workload's own controller gave its rollout up, when it did
    /// (an Argo Rollout aborted or Degraded): promotion fails at once.
    pub gave_up: Option<String>,
}

/// A Deployment's rollout counters, as its status reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: u32,
    /// `status.replicas`: pods of every template.
    pub total: i32,
    /// `status.updatedReplicas`.
    pub updated: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

impl RolloutCounts {
    /// Whether the Deployment controller has seen the latest spec and every
    /// replica is updated and available, with no old one left.
    pub fn rolled_out(&self) -> bool {
        let want = i64::from(self.desired);
        self.observed_generation >= self.generation
            && [self.total, self.updated, self.available]
                .iter()
                .all(|n| i64::from(*n) == want)
    }
}

/// What a Prometheus query answered this time.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricReading {
    /// The first sample's value.
    Value(f64),
    /// An empty result.
    NoData,
    /// The query failed.
    Error(String),
}

/// Everything observed for one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The workload; `None` when it is gone.
    pub workload: Option<WorkloadState>,
    /// Whether the canary Deployment exists.
    pub canary_exists: bool,
    /// Whether a canary of another Refresh (freshen's label and owner
    /// reference) holds the canary's name: it must go before this
    /// refresh's canary can be created.
    pub foreign_canary: bool,
    /// The name of a Deployment freshen did not create that holds the
    /// canary's name: freshen never deletes it, so the canary waits.
    pub canary_name_taken: Option<String>,
    /// Why the Refresh may not act on its workload ([`verify`]), if so.
    pub untrusted: Option<String>,
    /// The canary's pods (not terminating).
    pub canary_pods: Vec<PodHealth>,
    /// Why the canary failed as a whole, when its kind judges it so (a
    /// CronJob's canary Job whose pod failed): it rolls back at once.
    pub canary_failed: Option<String>,
    /// The workload's pods that run the new template (not terminating).
    pub new_pods: Vec<PodHealth>,
    /// The metric, when a query is configured and a check is due.
    pub metric: Option<MetricReading>,
    /// The commits pushed for a refresh that promotes through git.
    pub git: GitWrites,
}

/// The commits freshen pushed for one Refresh, as its status records them:
/// a pushed commit is never pushed again, the reconciler is awaited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitWrites {
    /// The commit that set the new image.
    pub promoted: Option<String>,
    /// The commit that put the old image back.
    pub reverted: Option<String>,
    /// The pull request that carries `promoted` (`gitops: PullRequest`),
    /// as its forge answered now.
    pub proposal: Option<Proposed>,
    /// The pull request that carries `reverted`.
    pub revert_proposal: Option<Proposed>,
}

/// A pull request freshen opened, as its forge answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Its number.
    pub number: u64,
    /// Open, merged or closed.
    pub state: crate::gitops::forge::PullState,
    /// When it was merged (the reconciler's deadline counts from there).
    pub merged_at: Option<DateTime<Utc>>,
}

impl GitWrites {
    /// Whether a pull request of this Refresh waits for a reviewer: the
    /// forge is asked again after the analysis interval.
    pub fn awaits_review(&self) -> bool {
        [self.proposal, self.revert_proposal]
            .iter()
            .flatten()
            .any(|p| p.state == crate::gitops::forge::PullState::Open)
    }
}

/// A change to make to the cluster; each is safe to repeat.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create the canary Deployment (no-op when it exists).
    CreateCanary {
        /// Replicas.
        replicas: u32,
    },
    /// Delete the canary Deployment (no-op when gone).
    DeleteCanary,
    /// Set the container's image in the workload's template, and the
    /// restart stamp when the refresh restarts (idempotent patch).
    SetImage {
        /// The image.
        image: String,
        /// Stamp the template with the Refresh's name (forces new pods).
        stamp: bool,
    },
    /// Record the target digest as rejected for the workload.
    RejectDigest,
}

/// An Event announcing a phase change, stored with the phase it announces
/// and cleared once published. Events are not actions: an operator that
/// dies after storing a phase and before publishing its Event leaves the
/// Event in the status, and the next reconcile publishes it (at least once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PendingEvent {
    /// The phase it announces; a terminal one is also counted in metrics
    /// when published.
    pub phase: Phase,
    /// The Event's type: Normal for progress, Warning for a rollback or
    /// failure.
    pub kind: EventKind,
    /// The Event's reason, e.g. CanaryStarted or RolledBack.
    pub reason: EventReason,
    /// The Event's message: the phase's message when it was entered.
    pub note: String,
}

/// The result of one [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The progress to store (before acting).
    pub progress: Progress,
    /// What to do once it is stored.
    pub actions: Vec<Change>,
    /// When to look again at the latest; `None` when terminal.
    pub requeue: Option<Duration>,
}

/// Longest wait between steps of an active refresh, whatever the timers say:
/// the watches usually wake it sooner.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Computes the next progress and the actions that realise it.
pub fn step(target: &Target, progress: &Progress, observed: &Observed, now: DateTime<Utc>) -> Step {
    let mut next = progress.clone();
    let mut actions = Vec::new();
    if progress.phase.is_terminal() {
        // Only clean-up: the canary belongs to the Refresh and must not
        // outlive it (a crash right after the terminal write).
        if observed.canary_exists {
            actions.push(Change::DeleteCanary);
        }
        return Step {
            progress: next,
            actions,
            requeue: None,
        };
    }
    let Some(workload) = &observed.workload else {
        fail(
            &mut next,
            &mut actions,
            observed,
            Failure::WorkloadDeleted,
            "the workload was deleted".into(),
            now,
        );
        return done(next, actions);
    };
    if let Some(stop) = before_the_canary(target, progress, observed, now) {
        return stop;
    }
    let settings = &target.settings;
    match progress.phase {
        Phase::Pending | Phase::Rebuilding => {
            if target.template_changed(workload)
                || (!target.original(workload) && !target.applied(workload))
            {
                let note = format!(
                    "{}; nothing was changed",
                    changed(target, workload, "before the refresh started"),
                );
                fail(
                    &mut next,
                    &mut actions,
                    observed,
                    Failure::Conflict,
                    note,
                    now,
                );
                return done(next, actions);
            }
            match settings.strategy {
                Strategy::Canary => {
                    next.phase = Phase::Canary;
                    next.canary_started_at = Some(now);
                    let replicas = settings.canary_replicas(workload.replicas);
                    next.message =
                        format!("canary of {replicas} pod(s) running {}", target.to_image);
                    actions.push(Change::CreateCanary { replicas });
                    announce(&mut next, EventKind::Normal, EventReason::CanaryStarted);
                }
                Strategy::Rolling => promote(target, &mut next, &mut actions, now),
            }
        }
        Phase::Canary => canary(target, &mut next, &mut actions, workload, observed, now),
        Phase::Promoting => promoting(target, &mut next, &mut actions, workload, observed, now),
        Phase::RollingBack => {
            rolling_back(target, &mut next, &mut actions, workload, observed, now)
        }
        Phase::Succeeded | Phase::RolledBack | Phase::Failed => {}
    }
    let mut requeue = requeue(target, &next, observed, now);
    if observed.git.awaits_review() && !next.phase.is_terminal() {
        // Nothing watched says when a reviewer acts: ask the forge again.
        requeue = Some(settings.interval().clamp(Duration::from_secs(1), MAX_WAIT));
    }
    Step {
        progress: next,
        actions,
        requeue,
    }
}

/// What stops a refresh before its canary runs, if anything: a Refresh
/// that does not match its workload (checked before the workload is first
/// changed; once promoted, a refresh is finished as planned rather than
/// left half-done), a Deployment freshen did not create holding the
/// canary's name (wait, one Warning), a finished Refresh's canary still
/// holding it (delete it first).
fn before_the_canary(
    target: &Target,
    progress: &Progress,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Option<Step> {
    let mut next = progress.clone();
    let mut actions = Vec::new();
    let canary_strategy = target.settings.strategy == Strategy::Canary;
    if let Some(why) = observed
        .untrusted
        .as_ref()
        .filter(|_| matches!(progress.phase, Phase::Pending | Phase::Canary))
    {
        fail(
            &mut next,
            &mut actions,
            observed,
            Failure::Untrusted,
            format!("freshen does not act on this Refresh: {why}; nothing was changed"),
            now,
        );
        return Some(done(next, actions));
    }
    if let Some(taken) = observed
        .canary_name_taken
        .as_ref()
        .filter(|_| canary_strategy && progress.phase == Phase::Pending)
    {
        let message = format!(
            "waiting: Deployment {taken}, which freshen did not create, holds the canary's name; \
             freshen never deletes it. Rename or delete it, or use strategy rolling"
        );
        if next.message != message {
            next.message = message;
            announce(&mut next, EventKind::Warning, EventReason::CanaryNameTaken);
        }
        return Some(Step {
            progress: next,
            actions,
            requeue: Some(MAX_WAIT),
        });
    }
    if observed.foreign_canary
        && canary_strategy
        && matches!(progress.phase, Phase::Pending | Phase::Canary)
    {
        actions.push(Change::DeleteCanary);
        return Some(Step {
            progress: next,
            actions,
            requeue: Some(Duration::from_secs(1)),
        });
    }
    None
}

/// What someone else did to the target container, for conflict messages:
/// names the container, and says when it was removed.
fn changed(target: &Target, workload: &WorkloadState, when: &str) -> String {
    if workload.image.is_empty() {
        format!(
            "someone else removed container {} from the workload {when}",
            target.container
        )
    } else if workload.image != target.from_image && workload.image != target.to_image {
        format!(
            "someone else set container {}'s image to {} {when} (it was {})",
            target.container, workload.image, target.from_image
        )
    } else {
        format!("someone else changed the workload's pod template {when}")
    }
}

/// A commit id as git prints it short.
fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

fn done(progress: Progress, actions: Vec<Change>) -> Step {
    Step {
        progress,
        actions,
        requeue: None,
    }
}

/// Stores the Event announcing the phase `next` just entered.
fn announce(next: &mut Progress, kind: EventKind, reason: EventReason) {
    next.pending_events.push(PendingEvent {
        phase: next.phase,
        kind,
        reason,
        note: next.message.clone(),
    });
}

/// Stops without undoing anything on the workload.
fn fail(
    next: &mut Progress,
    actions: &mut Vec<Change>,
    observed: &Observed,
    failure: Failure,
    note: String,
    now: DateTime<Utc>,
) {
    next.phase = Phase::Failed;
    next.failure = Some(failure);
    next.finished_at = Some(now);
    next.message = note.clone();
    next.cause = note.clone();
    if observed.canary_exists || next.canary_started_at.is_some() {
        actions.push(Change::DeleteCanary);
    }
    announce(next, EventKind::Warning, EventReason::RefreshFailed);
}

fn promote(target: &Target, next: &mut Progress, actions: &mut Vec<Change>, now: DateTime<Utc>) {
    next.phase = Phase::Promoting;
    next.promoted_at = Some(now);
    next.message = format!("rolling {} out to the workload", target.to_image);
    actions.push(Change::SetImage {
        image: target.to_image.clone(),
        stamp: target.restarts(),
    });
    announce(next, EventKind::Normal, EventReason::Promoting);
}

fn roll_back(
    target: &Target,
    next: &mut Progress,
    failure: Failure,
    why: String,
    now: DateTime<Utc>,
) {
    next.phase = Phase::RollingBack;
    next.failure = Some(failure);
    next.rollback_started_at = Some(now);
    next.message = format!("rolling back {}: {why}", target.to_image);
    next.cause = why;
    announce(next, EventKind::Warning, EventReason::RollingBack);
}

/// Health of a set of pods; `Err` fails at once.
fn health(pods: &[PodHealth], max_restarts: u32) -> Result<(u32, u32), (Failure, String)> {
    if let Some((pod, reason)) = pods.iter().find_map(|p| p.fatal().map(|r| (p, r))) {
        return Err((
            Failure::PodFailure,
            format!("pod {} is in {reason}", pod.name),
        ));
    }
    let restarts: u32 = pods.iter().map(|p| p.restarts).fold(0, u32::saturating_add);
    if restarts > max_restarts {
        return Err((
            Failure::Restarts,
            format!("{restarts} container restart(s), more than maxRestarts {max_restarts}"),
        ));
    }
    let ready = u32::try_from(pods.iter().filter(|p| p.ready).count()).unwrap_or(u32::MAX);
    Ok((ready, restarts))
}

fn record(next: &mut Progress, check: Check) {
    next.analysis.push(check);
    if next.analysis.len() > MAX_CHECKS {
        let excess = next.analysis.len() - MAX_CHECKS;
        next.analysis.drain(..excess);
    }
}

/// When the next analysis check is due.
fn next_check(settings: &Settings, progress: &Progress) -> Option<DateTime<Utc>> {
    let last = progress
        .analysis
        .iter()
        .rev()
        .find(|c| c.stage == Stage::Canary)
        .map(|c| c.time)
        .or(progress.canary_started_at)?;
    Some(crate::age::later(last, settings.interval()))
}

/// Whether a canary analysis check is due at `now` (the executor reads the
/// metric only then).
pub fn check_due(target: &Target, progress: &Progress, now: DateTime<Utc>) -> bool {
    progress.phase == Phase::Canary
        && next_check(&target.settings, progress).is_some_and(|t| t <= now)
}

/// Whether the metric reading passes, waits or fails, given the errors in a
/// row before it.
fn judge_metric(
    check: &MetricCheck,
    reading: Option<&MetricReading>,
    errors_before: u32,
) -> (Verdict, Option<f64>, String) {
    match reading {
        None => (Verdict::Wait, None, "metric not read".into()),
        Some(MetricReading::Value(v)) if !v.is_finite() => (
            Verdict::Fail,
            None,
            format!("metric is {v}, not a finite number"),
        ),
        Some(MetricReading::Value(v)) if *v <= check.max => (
            Verdict::Pass,
            Some(*v),
            format!("metric {v} <= {}", check.max),
        ),
        Some(MetricReading::Value(v)) => (
            Verdict::Fail,
            Some(*v),
            format!("metric {v} above max {}", check.max),
        ),
        Some(MetricReading::NoData) => match check.on_no_data {
            OnNoData::Fail => (
                Verdict::Fail,
                None,
                "metric query returned no data (onNoData: fail)".into(),
            ),
            OnNoData::Pass => (Verdict::Pass, None, "no data (onNoData: pass)".into()),
            OnNoData::Inconclusive => (
                Verdict::Wait,
                None,
                "no data (onNoData: inconclusive)".into(),
            ),
        },
        Some(MetricReading::Error(e)) => {
            let errors = errors_before + 1;
            if errors > check.max_consecutive_errors {
                (
                    Verdict::Fail,
                    None,
                    format!("metric query failed {errors} time(s) in a row: {e}"),
                )
            } else {
                (Verdict::Wait, None, format!("metric query failed: {e}"))
            }
        }
    }
}

fn canary(
    target: &Target,
    next: &mut Progress,
    actions: &mut Vec<Change>,
    workload: &WorkloadState,
    observed: &Observed,
    now: DateTime<Utc>,
) {
    let settings = &target.settings;
    let in_place = workload.held && target.applied(workload);
    if target.template_changed(workload) || !(target.original(workload) || in_place) {
        let note = format!(
            "{}; canary removed, workload left as it is",
            changed(target, workload, "during the canary"),
        );
        fail(next, actions, observed, Failure::Conflict, note, now);
        return;
    }
    let desired = settings.canary_replicas(workload.replicas);
    if !observed.canary_exists {
        // Intent stored, action lost (crash, failed create) or the canary was
        // deleted by hand: create it (again).
        actions.push(Change::CreateCanary { replicas: desired });
    }
    let started = next.canary_started_at.unwrap_or(now);
    let judged = match &observed.canary_failed {
        Some(why) => Err((Failure::PodFailure, why.clone())),
        None => health(&observed.canary_pods, settings.max_restarts),
    };
    let (ready, restarts) = match judged {
        Ok(h) => h,
        Err((failure, why)) => {
            record(
                next,
                Check {
                    time: now,
                    stage: Stage::Canary,
                    ready: 0,
                    desired,
                    restarts: 0,
                    metric: None,
                    verdict: Verdict::Fail,
                    message: why.clone(),
                },
            );
            roll_back(target, next, failure, format!("canary {why}"), now);
            actions.push(Change::DeleteCanary);
            actions.push(Change::RejectDigest);
            return;
        }
    };
    let all_ready = ready >= desired;
    if !all_ready && elapsed(started, now) >= settings.readiness_timeout() {
        let why = format!(
            "canary: {ready}/{desired} pods Ready after {}s",
            settings.readiness_timeout_seconds
        );
        record(
            next,
            Check {
                time: now,
                stage: Stage::Canary,
                ready,
                desired,
                restarts,
                metric: None,
                verdict: Verdict::Fail,
                message: why.clone(),
            },
        );
        roll_back(target, next, Failure::Timeout, why, now);
        actions.push(Change::DeleteCanary);
        actions.push(Change::RejectDigest);
        return;
    }
    let due = next_check(settings, next).is_some_and(|t| t <= now);
    if !due {
        return;
    }
    let (verdict, metric, message) = if !all_ready {
        (Verdict::Wait, None, format!("{ready}/{desired} pods Ready"))
    } else if let Some(check) = &settings.metric {
        let judged = judge_metric(check, observed.metric.as_ref(), next.metric_errors);
        next.metric_errors = match observed.metric {
            Some(MetricReading::Error(_)) => next.metric_errors.saturating_add(1),
            _ => 0,
        };
        judged
    } else {
        (
            Verdict::Pass,
            None,
            format!("{ready}/{desired} pods Ready, {restarts} restarts"),
        )
    };
    record(
        next,
        Check {
            time: now,
            stage: Stage::Canary,
            ready,
            desired,
            restarts,
            metric,
            verdict,
            message: message.clone(),
        },
    );
    // Waiting for pods to become Ready is bounded by the readiness timeout,
    // not by the analysis: only checks of a Ready canary count towards the
    // inconclusive limit.
    if all_ready {
        next.checks = next.checks.saturating_add(1);
    }
    if verdict == Verdict::Pass {
        next.passes = next.passes.saturating_add(1);
    }
    match verdict {
        Verdict::Fail => {
            let failure = Failure::Metric;
            roll_back(target, next, failure, format!("canary {message}"), now);
            actions.push(Change::DeleteCanary);
            actions.push(Change::RejectDigest);
        }
        _ => {
            let (passes, checks) = (next.passes, next.checks);
            if passes >= settings.iterations {
                promote(target, next, actions, now);
            } else if checks >= settings.iterations.max(1).saturating_mul(2) {
                let why = format!("only {passes} of {checks} checks passed");
                roll_back(target, next, Failure::Inconclusive, why, now);
                actions.push(Change::DeleteCanary);
                actions.push(Change::RejectDigest);
            } else {
                next.message = format!(
                    "canary analysis: {passes}/{} checks passed ({message})",
                    settings.iterations
                );
            }
        }
    }
}

fn promoting(
    target: &Target,
    next: &mut Progress,
    actions: &mut Vec<Change>,
    workload: &WorkloadState,
    observed: &Observed,
    now: DateTime<Utc>,
) {
    let settings = &target.settings;
    if target.template_changed(workload) {
        let note = format!(
            "{}; left as it is",
            changed(target, workload, "during promotion")
        );
        fail(next, actions, observed, Failure::Conflict, note, now);
        return;
    }
    if target.applied(workload) && !workload.held {
        if next.patched_at.is_none() {
            next.patched_at = Some(now);
        }
    } else if (target.original(workload) || (workload.held && target.applied(workload)))
        && next.patched_at.is_none()
    {
        if let Some(commit) = observed
            .git
            .promoted
            .as_ref()
            .filter(|_| target.settings.through_git)
        {
            use crate::gitops::forge::PullState;
            let started = promotion_start(next, observed, now);
            match observed.git.proposal {
                // A reviewer's decision has no deadline; the canary has
                // said what it had to say and goes meanwhile.
                Some(p) if p.state == PullState::Open => {
                    next.message = format!(
                        "opened pull request #{} for {}; waiting for a reviewer to merge it",
                        p.number, target.to_image
                    );
                    if observed.canary_exists {
                        actions.push(Change::DeleteCanary);
                    }
                    return;
                }
                Some(p) if p.state == PullState::Closed => {
                    let why = format!(
                        "pull request #{} was closed without being merged; {} is not proposed again",
                        p.number, target.to_image
                    );
                    roll_back(target, next, Failure::Declined, why, now);
                    actions.push(Change::DeleteCanary);
                    actions.push(Change::RejectDigest);
                    return;
                }
                // Merged: the reconciler's deadline counts from the merge
                // (promotion_start).
                Some(_) | None => {}
            }
            // Pushed: the reconciler applies it, within the rollout's
            // deadline like any rollout.
            if elapsed(started, now) >= settings.readiness_timeout() {
                let why = format!(
                    "the reconciler did not apply commit {} within {}s",
                    short_commit(commit),
                    settings.readiness_timeout_seconds
                );
                roll_back(target, next, Failure::Timeout, why, now);
                actions.push(Change::DeleteCanary);
                actions.push(Change::SetImage {
                    image: target.from_image.clone(),
                    stamp: false,
                });
                actions.push(Change::RejectDigest);
            } else {
                next.message = format!(
                    "committed {} as {}; waiting for the reconciler to apply it",
                    target.to_image,
                    short_commit(commit)
                );
            }
            return;
        }
        // Intent stored, patch not seen yet (lost to a crash, or failed),
        // or an in-place canary's hold not released yet: patch (again).
        actions.push(Change::SetImage {
            image: target.to_image.clone(),
            stamp: target.restarts(),
        });
        return;
    } else {
        let note = format!(
            "{}; left as it is",
            changed(target, workload, "during promotion")
        );
        fail(next, actions, observed, Failure::Conflict, note, now);
        return;
    }
    let desired = workload.replicas;
    let fatal = health(&observed.new_pods, settings.max_restarts);
    let started = promotion_start(next, observed, now);
    let outcome = match fatal {
        Err((failure, why)) => Err((failure, format!("workload {why}"))),
        Ok(_) if workload.gave_up.is_some() => Err((
            Failure::Aborted,
            format!(
                "the workload's own rollout was given up: {}",
                workload.gave_up.as_deref().unwrap_or_default()
            ),
        )),
        Ok(_) if workload.rolled_out => Ok(()),
        Ok((ready, _)) if elapsed(started, now) >= settings.readiness_timeout() => Err((
            Failure::Timeout,
            format!(
                "workload rollout not complete after {}s ({ready}/{desired} new pods Ready)",
                settings.readiness_timeout_seconds
            ),
        )),
        Ok(_) => return,
    };
    match outcome {
        Ok(()) => {
            next.phase = Phase::Succeeded;
            next.finished_at = Some(now);
            next.message = format!("the workload runs {}", target.to_image);
            if observed.canary_exists || next.canary_started_at.is_some() {
                actions.push(Change::DeleteCanary);
            }
            announce(next, EventKind::Normal, EventReason::RefreshSucceeded);
        }
        Err((failure, why)) => {
            let ready = u32::try_from(observed.new_pods.iter().filter(|p| p.ready).count())
                .unwrap_or(u32::MAX);
            record(
                next,
                Check {
                    time: now,
                    stage: Stage::Promotion,
                    ready,
                    desired,
                    restarts: 0,
                    metric: None,
                    verdict: Verdict::Fail,
                    message: why.clone(),
                },
            );
            roll_back(target, next, failure, why, now);
            actions.push(Change::DeleteCanary);
            actions.push(Change::SetImage {
                image: target.from_image.clone(),
                stamp: false,
            });
            if target.reason != Reason::ContainerTooOld {
                actions.push(Change::RejectDigest);
            }
        }
    }
}

fn rolling_back(
    target: &Target,
    next: &mut Progress,
    actions: &mut Vec<Change>,
    workload: &WorkloadState,
    observed: &Observed,
    now: DateTime<Utc>,
) {
    if observed.canary_exists {
        actions.push(Change::DeleteCanary);
    }
    if target.reason != Reason::ContainerTooOld {
        // Repeated until terminal: the first attempt may have been lost.
        actions.push(Change::RejectDigest);
    }
    let restored = workload.image == target.from_image;
    if !restored {
        if workload.image == target.to_image {
            match observed
                .git
                .reverted
                .as_ref()
                .filter(|_| target.settings.through_git)
            {
                Some(commit) => match observed.git.revert_proposal {
                    Some(p) if p.state == crate::gitops::forge::PullState::Open => {
                        next.message = format!(
                            "rolling back {}: opened pull request #{} to put {} back; waiting \
                             for a reviewer to merge it",
                            target.to_image, p.number, target.from_image
                        );
                    }
                    Some(p) if p.state == crate::gitops::forge::PullState::Closed => {
                        let note = format!(
                            "the revert's pull request #{} was closed without being merged; the \
                             workload still runs {}, which failed: {}",
                            p.number, target.to_image, next.cause
                        );
                        next.phase = Phase::Failed;
                        next.finished_at = Some(now);
                        next.message = note;
                        announce(next, EventKind::Warning, EventReason::RefreshFailed);
                    }
                    _ => {
                        next.message = format!(
                            "rolling back {}: committed {} as {}; waiting for the reconciler to \
                             apply it",
                            target.to_image,
                            target.from_image,
                            short_commit(commit)
                        );
                    }
                },
                None => actions.push(Change::SetImage {
                    image: target.from_image.clone(),
                    stamp: false,
                }),
            }
            return;
        }
        let note = format!(
            "{}; left as it is",
            changed(target, workload, "during the rollback")
        );
        next.phase = Phase::Failed;
        next.finished_at = Some(now);
        next.message = note.clone();
        announce(next, EventKind::Warning, EventReason::RefreshFailed);
        return;
    }
    if observed.canary_exists {
        return;
    }
    next.phase = Phase::RolledBack;
    next.finished_at = Some(now);
    let restored_note = if next.patched_at.is_some() || next.promoted_at.is_some() {
        format!("; the workload's image is {} again", target.from_image)
    } else {
        String::new()
    };
    next.message = format!(
        "rolled back {}: {}{restored_note}",
        target.to_image, next.cause
    );
    announce(next, EventKind::Warning, EventReason::RolledBack);
}

/// When a promotion's deadline starts counting: the promotion, or the
/// merge of its pull request (a reviewer's time is not the reconciler's).
/// Never before the promotion; the forge's merge time was bounded by
/// when it was read ([`crate::gitops::forge::seen_merged_at`]).
fn promotion_start(progress: &Progress, observed: &Observed, now: DateTime<Utc>) -> DateTime<Utc> {
    let promoted = progress.promoted_at.unwrap_or(now);
    observed
        .git
        .proposal
        .and_then(|p| p.merged_at)
        .map_or(promoted, |merged| merged.max(promoted))
}

fn requeue(
    target: &Target,
    progress: &Progress,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let settings = &target.settings;
    let until = |t: DateTime<Utc>| (t - now).to_std().unwrap_or(Duration::ZERO);
    let wait = match progress.phase {
        p if p.is_terminal() => return None,
        Phase::Canary => {
            let check = next_check(settings, progress)
                .map(until)
                .unwrap_or(MAX_WAIT);
            let deadline = progress
                .canary_started_at
                .map(|t| until(crate::age::later(t, settings.readiness_timeout())))
                .unwrap_or(MAX_WAIT);
            check.min(deadline)
        }
        Phase::Promoting => progress
            .promoted_at
            .map(|_| {
                let start = promotion_start(progress, observed, now);
                until(crate::age::later(start, settings.readiness_timeout()))
            })
            .unwrap_or(MAX_WAIT),
        _ => Duration::ZERO,
    };
    Some(wait.clamp(Duration::from_millis(200), MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "reg.example/shop/api:1.4";
    const TO: &str = "reg.example/shop/api:1.4@sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(s)
    }

    fn target(strategy: Strategy) -> Target {
        Target {
            name: "api-app-222222222222".into(),
            container: "app".into(),
            reason: Reason::NewDigest,
            from_image: FROM.into(),
            to_image: TO.into(),
            settings: Settings {
                strategy,
                ..Settings::default()
            },
            template: Some(TEMPLATE.into()),
        }
    }

    /// The template fingerprint the Refresh was planned with.
    const TEMPLATE: &str = "0123456789abcdef";

    fn workload(image: &str) -> WorkloadState {
        WorkloadState {
            image: image.into(),
            restart_token: None,
            template: TEMPLATE.into(),
            replicas: 4,
            rolled_out: true,
            held: false,
            gave_up: None,
        }
    }

    /// The workload with `image` and someone else's change elsewhere in its
    /// pod template (an env var, a resource limit).
    fn edited(image: &str) -> Observed {
        Observed {
            workload: Some(WorkloadState {
                template: "fedcba9876543210".into(),
                ..workload(image)
            }),
            ..Observed::default()
        }
    }

    fn pod(ready: bool, restarts: u32, reasons: &[&str]) -> PodHealth {
        PodHealth {
            name: "p".into(),
            ready,
            restarts,
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn observed(image: &str) -> Observed {
        Observed {
            workload: Some(workload(image)),
            ..Observed::default()
        }
    }

    fn in_canary() -> Progress {
        Progress {
            phase: Phase::Canary,
            canary_started_at: Some(t0()),
            ..Progress::default()
        }
    }

    fn promoting(patched: bool) -> Progress {
        Progress {
            phase: Phase::Promoting,
            canary_started_at: Some(t0()),
            promoted_at: Some(secs(150)),
            patched_at: patched.then(|| secs(151)),
            ..Progress::default()
        }
    }

    fn healthy_canary() -> Observed {
        Observed {
            canary_exists: true,
            canary_pods: vec![pod(true, 0, &[])],
            ..observed(FROM)
        }
    }

    fn mutations(step: &Step) -> Vec<Change> {
        step.actions.clone()
    }

    fn through_git() -> Target {
        let mut t = target(Strategy::Canary);
        t.settings.through_git = true;
        t
    }

    fn pushed(observed: Observed, promoted: Option<&str>, reverted: Option<&str>) -> Observed {
        Observed {
            git: GitWrites {
                promoted: promoted.map(str::to_owned),
                reverted: reverted.map(str::to_owned),
                ..GitWrites::default()
            },
            ..observed
        }
    }

    fn proposed(
        observed: Observed,
        state: crate::gitops::forge::PullState,
        merged_at: Option<DateTime<Utc>>,
    ) -> Observed {
        let mut o = pushed(observed, Some("0123456789abcdef"), None);
        o.git.proposal = Some(Proposed {
            number: 7,
            state,
            merged_at,
        });
        o
    }

    #[test]
    fn through_a_pull_request_the_reviewer_has_no_deadline_and_the_merge_starts_one() {
        use crate::gitops::forge::PullState;
        let t = through_git();
        // Open a day later: still waiting, the canary goes, the forge is
        // asked again after the analysis interval.
        let open = Observed {
            canary_exists: true,
            ..proposed(observed(FROM), PullState::Open, None)
        };
        let waiting = step(&t, &promoting(false), &open, secs(150 + 86_400));
        assert_eq!(waiting.progress.phase, Phase::Promoting);
        assert_eq!(mutations(&waiting), [Change::DeleteCanary]);
        assert!(
            waiting.progress.message.contains("pull request #7"),
            "{}",
            waiting.progress.message
        );
        assert_eq!(
            waiting.requeue,
            Some(Duration::from_secs(t.settings.interval_seconds))
        );
        // Merged a day later: the reconciler's deadline counts from the
        // merge, not from the canary's success.
        let merged_at = secs(150 + 86_400);
        let merged = proposed(observed(FROM), PullState::Merged, Some(merged_at));
        let applying = step(&t, &promoting(false), &merged, secs(150 + 86_400 + 10));
        assert_eq!(applying.progress.phase, Phase::Promoting);
        assert!(mutations(&applying).is_empty());
        let late = step(&t, &promoting(false), &merged, secs(150 + 86_400 + 301));
        assert_eq!(late.progress.failure, Some(Failure::Timeout));
        // Applied a day after the canary, its rollout under way: within
        // the deadline that the merge started.
        let rolling = Observed {
            workload: observed(TO).workload.map(|w| WorkloadState {
                rolled_out: false,
                ..w
            }),
            ..proposed(observed(TO), PullState::Merged, Some(merged_at))
        };
        let under_way = step(&t, &promoting(false), &rolling, secs(150 + 86_400 + 12));
        assert_eq!(under_way.progress.phase, Phase::Promoting);
        // Not the 200ms of a passed deadline: the longest wait.
        assert_eq!(under_way.requeue, Some(MAX_WAIT));
        // Applied: Succeeded.
        let done = step(
            &t,
            &promoting(false),
            &proposed(observed(TO), PullState::Merged, Some(merged_at)),
            secs(150 + 86_400 + 20),
        );
        assert_eq!(done.progress.phase, Phase::Succeeded);
    }

    #[test]
    fn a_pull_request_closed_unmerged_rejects_the_digest_and_changes_nothing() {
        use crate::gitops::forge::PullState;
        let t = through_git();
        let closed = proposed(observed(FROM), PullState::Closed, None);
        let s = step(&t, &promoting(false), &closed, secs(500));
        assert_eq!(s.progress.phase, Phase::RollingBack);
        assert_eq!(s.progress.failure, Some(Failure::Declined));
        assert_eq!(mutations(&s), [Change::DeleteCanary, Change::RejectDigest]);
        assert!(s.progress.cause.contains("closed without being merged"));
        // The workload never changed: rolled back at once, nothing written.
        let after = step(&t, &s.progress, &closed, secs(501));
        assert_eq!(after.progress.phase, Phase::RolledBack);
        assert!(
            !mutations(&after)
                .iter()
                .any(|c| matches!(c, Change::SetImage { .. }))
        );
    }

    #[test]
    fn a_revert_pull_request_is_awaited_and_its_closing_fails_the_refresh() {
        use crate::gitops::forge::PullState;
        let t = through_git();
        let back = Progress {
            phase: Phase::RollingBack,
            failure: Some(Failure::PodFailure),
            cause: "pod x is in CrashLoopBackOff".into(),
            ..promoting(true)
        };
        let mut o = pushed(observed(TO), Some("a"), Some("bcdef0123"));
        o.git.revert_proposal = Some(Proposed {
            number: 8,
            state: PullState::Open,
            merged_at: None,
        });
        let waiting = step(&t, &back, &o, secs(300));
        assert_eq!(waiting.progress.phase, Phase::RollingBack);
        assert!(waiting.progress.message.contains("#8"));
        assert_eq!(mutations(&waiting), [Change::RejectDigest]);
        o.git.revert_proposal = Some(Proposed {
            number: 8,
            state: PullState::Closed,
            merged_at: None,
        });
        let failed = step(&t, &back, &o, secs(310));
        assert_eq!(failed.progress.phase, Phase::Failed);
        assert!(
            failed.progress.message.contains("still runs"),
            "{}",
            failed.progress.message
        );
    }

    #[test]
    fn through_git_a_promotion_is_pushed_once_then_awaited() {
        let t = through_git();
        // Not pushed yet: push (the executor commits instead of patching).
        let first = step(&t, &promoting(false), &observed(FROM), secs(152));
        assert_eq!(mutations(&first), [set(TO)]);
        // Pushed, the reconciler has not applied it: wait, push nothing.
        let waiting = step(
            &t,
            &promoting(false),
            &pushed(observed(FROM), Some("0123456789abcdef"), None),
            secs(160),
        );
        assert_eq!(waiting.progress.phase, Phase::Promoting);
        assert!(mutations(&waiting).is_empty());
        assert!(
            waiting.progress.message.contains("as 0123456;"),
            "{}",
            waiting.progress.message
        );
        // Applied and rolled out: Succeeded.
        let done = step(
            &t,
            &promoting(false),
            &pushed(observed(TO), Some("0123456789abcdef"), None),
            secs(170),
        );
        assert_eq!(done.progress.phase, Phase::Succeeded);
        // Never applied within the deadline: the commit is reverted and the
        // digest rejected.
        let late = step(
            &t,
            &promoting(false),
            &pushed(observed(FROM), Some("0123456789abcdef"), None),
            secs(150 + 301),
        );
        assert_eq!(late.progress.phase, Phase::RollingBack);
        assert_eq!(late.progress.failure, Some(Failure::Timeout));
        assert_eq!(
            mutations(&late),
            [Change::DeleteCanary, set(FROM), Change::RejectDigest]
        );
    }

    #[test]
    fn through_git_a_rollback_is_one_revert_commit_then_awaited() {
        let t = through_git();
        let back = Progress {
            phase: Phase::RollingBack,
            failure: Some(Failure::PodFailure),
            ..promoting(true)
        };
        let first = step(&t, &back, &observed(TO), secs(200));
        assert_eq!(mutations(&first), [Change::RejectDigest, set(FROM)]);
        let waiting = step(
            &t,
            &back,
            &pushed(observed(TO), Some("a"), Some("bcdef0123")),
            secs(210),
        );
        assert_eq!(mutations(&waiting), [Change::RejectDigest]);
        assert!(
            waiting.progress.message.contains("bcdef01"),
            "{}",
            waiting.progress.message
        );
        let done = step(
            &t,
            &back,
            &pushed(observed(FROM), Some("a"), Some("bcdef0123")),
            secs(220),
        );
        assert_eq!(done.progress.phase, Phase::RolledBack);
    }

    #[test]
    fn through_git_a_failed_canary_writes_nothing() {
        let t = through_git();
        let crashing = Observed {
            canary_exists: true,
            canary_pods: vec![pod(false, 3, &["CrashLoopBackOff"])],
            ..observed(FROM)
        };
        let s = step(&t, &in_canary(), &crashing, secs(40));
        assert_eq!(s.progress.phase, Phase::RollingBack);
        assert!(
            !mutations(&s)
                .iter()
                .any(|c| matches!(c, Change::SetImage { .. }))
        );
    }

    /// The Events the step stored to be published.
    fn events(step: &Step) -> Vec<(EventKind, String)> {
        step.progress
            .pending_events
            .iter()
            .map(|e| (e.kind, e.reason.to_string()))
            .collect()
    }

    fn set(image: &str) -> Change {
        Change::SetImage {
            image: image.into(),
            stamp: false,
        }
    }

    struct Case {
        name: &'static str,
        target: Target,
        progress: Progress,
        observed: Observed,
        now: DateTime<Utc>,
        phase: Phase,
        actions: Vec<Change>,
        failure: Option<Failure>,
    }

    fn case(
        name: &'static str,
        progress: Progress,
        observed: Observed,
        now: DateTime<Utc>,
    ) -> Case {
        Case {
            name,
            target: target(Strategy::Canary),
            progress,
            observed,
            now,
            phase: Phase::Pending,
            actions: vec![],
            failure: None,
        }
    }

    impl Case {
        fn expect(mut self, phase: Phase, actions: Vec<Change>) -> Self {
            self.phase = phase;
            self.actions = actions;
            self
        }
        fn failing(mut self, failure: Failure) -> Self {
            self.failure = Some(failure);
            self
        }
        fn with(mut self, target: Target) -> Self {
            self.target = target;
            self
        }
    }

    #[test]
    fn a_deployment_freshen_did_not_create_blocks_the_canary_with_one_warning() {
        let taken = Observed {
            canary_name_taken: Some("api-canary".into()),
            ..observed(FROM)
        };
        let first = step(
            &target(Strategy::Canary),
            &Progress::default(),
            &taken,
            t0(),
        );
        assert_eq!(first.progress.phase, Phase::Pending);
        assert!(first.actions.is_empty(), "{:?}", first.actions);
        assert_eq!(
            events(&first),
            vec![(EventKind::Warning, "CanaryNameTaken".to_owned())]
        );
        assert!(first.progress.message.contains("api-canary"));
        assert!(first.progress.message.contains("never deletes it"));
        // Published and cleared: the next step waits quietly.
        let mut published = first.progress.clone();
        published.pending_events.clear();
        let second = step(&target(Strategy::Canary), &published, &taken, secs(30));
        assert!(events(&second).is_empty());
        assert!(second.actions.is_empty());
        // Gone: the canary starts.
        let free = step(
            &target(Strategy::Canary),
            &published,
            &observed(FROM),
            secs(60),
        );
        assert_eq!(free.progress.phase, Phase::Canary);
        // A rolling refresh needs no canary name.
        let rolling = step(
            &target(Strategy::Rolling),
            &Progress::default(),
            &taken,
            t0(),
        );
        assert_eq!(rolling.progress.phase, Phase::Promoting);
    }

    #[test]
    fn verify_accepts_only_a_refresh_that_matches_its_workload() {
        let good = Provenance {
            owned_by_workload: true,
            digest: TO
                .split_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
            container_image: Some(FROM.into()),
        };
        let t = target(Strategy::Canary);
        assert_eq!(verify(&t, &good), Ok(()));
        let rejects = |t: &Target, p: &Provenance, needle: &str| {
            let e = verify(t, p);
            assert!(
                e.as_ref().is_err_and(|e| e.contains(needle)),
                "{needle}: {e:?}"
            );
        };
        rejects(
            &t,
            &Provenance {
                owned_by_workload: false,
                ..good.clone()
            },
            "not owned by its workload",
        );
        rejects(
            &t,
            &Provenance {
                container_image: None,
                ..good.clone()
            },
            "no container \"app\"",
        );
        rejects(
            &t,
            &Provenance {
                digest: format!("sha256:{}", "3".repeat(64)),
                ..good.clone()
            },
            "not pinned to spec.digest",
        );
        let elsewhere = Target {
            to_image: TO.replace("shop/api", "evil/miner"),
            ..t.clone()
        };
        rejects(&elsewhere, &good, "not in the repository of spec.fromImage");
        let bad_image = Target {
            to_image: "Not An Image".into(),
            ..t.clone()
        };
        rejects(&bad_image, &good, "spec.toImage");
        for (settings, field) in [
            (
                Settings {
                    canary_weight_percent: u32::MAX,
                    ..Settings::default()
                },
                "canaryWeightPercent",
            ),
            (
                Settings {
                    interval_seconds: u64::MAX,
                    ..Settings::default()
                },
                "intervalSeconds",
            ),
            (
                Settings {
                    iterations: 0,
                    ..Settings::default()
                },
                "iterations",
            ),
            (
                Settings {
                    max_restarts: u32::MAX,
                    ..Settings::default()
                },
                "maxRestarts",
            ),
            (
                Settings {
                    readiness_timeout_seconds: 0,
                    ..Settings::default()
                },
                "readinessTimeoutSeconds",
            ),
        ] {
            rejects(
                &Target {
                    settings,
                    ..t.clone()
                },
                &good,
                field,
            );
        }
    }

    #[test]
    fn transitions() {
        let crash = |pods| Observed {
            canary_exists: true,
            canary_pods: pods,
            ..observed(FROM)
        };
        let rolled = |rolled_out, pods| Observed {
            workload: Some(WorkloadState {
                rolled_out,
                ..workload(TO)
            }),
            canary_exists: true,
            new_pods: pods,
            ..Observed::default()
        };
        let rolling_back = |patched| Progress {
            phase: Phase::RollingBack,
            rollback_started_at: Some(secs(200)),
            failure: Some(Failure::PodFailure),
            ..promoting(patched)
        };
        let foreign = |image| Observed {
            foreign_canary: true,
            ..observed(image)
        };
        let untrusted = |image| Observed {
            untrusted: Some("spec.toImage is not pinned to spec.digest".into()),
            ..observed(image)
        };
        let cases = vec![
            case(
                "an untrusted Refresh fails before anything changes",
                Progress::default(),
                untrusted(FROM),
                t0(),
            )
            .expect(Phase::Failed, vec![])
            .failing(Failure::Untrusted),
            case(
                "an untrusted Refresh in its canary removes only its own canary",
                in_canary(),
                Observed {
                    canary_exists: true,
                    ..untrusted(FROM)
                },
                secs(5),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Untrusted),
            case(
                "a finished refresh's canary holds the name: delete it first",
                Progress::default(),
                foreign(FROM),
                t0(),
            )
            .expect(Phase::Pending, vec![Change::DeleteCanary]),
            case(
                "the same during the canary",
                in_canary(),
                foreign(FROM),
                secs(5),
            )
            .expect(Phase::Canary, vec![Change::DeleteCanary]),
            case(
                "pending canary creates the canary",
                Progress::default(),
                observed(FROM),
                t0(),
            )
            .expect(Phase::Canary, vec![Change::CreateCanary { replicas: 1 }]),
            case(
                "pending rolling patches at once",
                Progress::default(),
                observed(FROM),
                t0(),
            )
            .with(target(Strategy::Rolling))
            .expect(
                Phase::Promoting,
                vec![Change::SetImage {
                    image: TO.into(),
                    stamp: false,
                }],
            ),
            case(
                "pending, image changed meanwhile: fail, touch nothing",
                Progress::default(),
                observed("other:2"),
                t0(),
            )
            .expect(Phase::Failed, vec![])
            .failing(Failure::Conflict),
            case(
                "crash between intent and create: create again",
                in_canary(),
                observed(FROM),
                secs(5),
            )
            .expect(Phase::Canary, vec![Change::CreateCanary { replicas: 1 }]),
            case(
                "canary crash-loops: roll back at once",
                in_canary(),
                crash(vec![pod(false, 3, &["CrashLoopBackOff"])]),
                secs(5),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::PodFailure),
            case(
                "canary image cannot be pulled",
                in_canary(),
                crash(vec![pod(false, 0, &["ImagePullBackOff"])]),
                secs(5),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::PodFailure),
            case(
                "canary OOMKilled in its last state",
                in_canary(),
                crash(vec![pod(true, 1, &["OOMKilled"])]),
                secs(5),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::PodFailure),
            case(
                "restarts above maxRestarts",
                in_canary(),
                crash(vec![pod(true, 1, &[])]),
                secs(5),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::Restarts),
            case(
                "canary not Ready within the timeout",
                in_canary(),
                crash(vec![pod(false, 0, &[])]),
                secs(300),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::Timeout),
            case(
                "canary not Ready yet: wait",
                in_canary(),
                crash(vec![pod(false, 0, &[])]),
                secs(30),
            )
            .expect(Phase::Canary, vec![]),
            case(
                "canary healthy, check not due: nothing",
                in_canary(),
                healthy_canary(),
                secs(29),
            )
            .expect(Phase::Canary, vec![]),
            case(
                "someone else changed the workload during the canary",
                in_canary(),
                Observed {
                    canary_exists: true,
                    ..observed("reg.example/shop/api:1.5")
                },
                secs(5),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Conflict),
            case(
                "pending, the template edited meanwhile: fail, touch nothing",
                Progress::default(),
                edited(FROM),
                t0(),
            )
            .expect(Phase::Failed, vec![])
            .failing(Failure::Conflict),
            case(
                "template edited during the canary (same image): fail, no promotion",
                in_canary(),
                Observed {
                    canary_exists: true,
                    canary_pods: vec![pod(true, 0, &[])],
                    ..edited(FROM)
                },
                secs(150),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Conflict),
            case(
                "template edited after the patch: fail, overwrite nothing",
                promoting(true),
                edited(TO),
                secs(160),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Conflict),
            case(
                "a Refresh recorded without a fingerprint compares the image only",
                in_canary(),
                Observed {
                    canary_exists: true,
                    ..edited(FROM)
                },
                secs(5),
            )
            .with(Target {
                template: None,
                ..target(Strategy::Canary)
            })
            .expect(Phase::Canary, vec![]),
            case(
                "workload deleted mid-refresh",
                in_canary(),
                Observed {
                    canary_exists: true,
                    ..Observed::default()
                },
                secs(5),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::WorkloadDeleted),
            case(
                "crash between promote intent and patch: patch again",
                promoting(false),
                Observed {
                    canary_exists: true,
                    ..observed(FROM)
                },
                secs(160),
            )
            .expect(Phase::Promoting, vec![set(TO)]),
            case(
                "patched, rollout under way: wait",
                promoting(false),
                rolled(false, vec![pod(false, 0, &[])]),
                secs(160),
            )
            .expect(Phase::Promoting, vec![]),
            case(
                "rolled out: succeed, delete the canary",
                promoting(true),
                rolled(true, vec![pod(true, 0, &[])]),
                secs(160),
            )
            .expect(Phase::Succeeded, vec![Change::DeleteCanary]),
            case(
                "new workload pods crash: restore",
                promoting(true),
                rolled(false, vec![pod(false, 2, &["CrashLoopBackOff"])]),
                secs(160),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, set(FROM), Change::RejectDigest],
            )
            .failing(Failure::PodFailure),
            case(
                "rollout not complete in time: restore",
                promoting(true),
                rolled(false, vec![pod(false, 0, &[])]),
                secs(450),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, set(FROM), Change::RejectDigest],
            )
            .failing(Failure::Timeout),
            case(
                "patched, then someone set it back: do not overwrite",
                promoting(true),
                Observed {
                    canary_exists: true,
                    ..observed(FROM)
                },
                secs(160),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Conflict),
            case(
                "someone set a third image during promotion",
                promoting(false),
                observed("reg.example/shop/api:1.5"),
                secs(160),
            )
            .expect(Phase::Failed, vec![Change::DeleteCanary])
            .failing(Failure::Conflict),
            case(
                "rolling back, restore lost: restore again",
                rolling_back(true),
                observed(TO),
                secs(201),
            )
            .expect(Phase::RollingBack, vec![Change::RejectDigest, set(FROM)])
            .failing(Failure::PodFailure),
            case(
                "rolling back, canary still there: delete, wait",
                rolling_back(true),
                Observed {
                    canary_exists: true,
                    ..observed(FROM)
                },
                secs(201),
            )
            .expect(
                Phase::RollingBack,
                vec![Change::DeleteCanary, Change::RejectDigest],
            )
            .failing(Failure::PodFailure),
            case(
                "rolling back, the template edited too: still restore our image",
                rolling_back(true),
                edited(TO),
                secs(201),
            )
            .expect(Phase::RollingBack, vec![Change::RejectDigest, set(FROM)])
            .failing(Failure::PodFailure),
            case("rolled back", rolling_back(true), observed(FROM), secs(202))
                .expect(Phase::RolledBack, vec![Change::RejectDigest])
                .failing(Failure::PodFailure),
            case(
                "rolling back, someone set a third image: leave it",
                rolling_back(true),
                observed("other:9"),
                secs(202),
            )
            .expect(Phase::Failed, vec![Change::RejectDigest])
            .failing(Failure::PodFailure),
            case(
                "terminal with a leftover canary: delete it",
                Progress {
                    phase: Phase::Succeeded,
                    ..promoting(true)
                },
                Observed {
                    canary_exists: true,
                    ..observed(TO)
                },
                secs(500),
            )
            .expect(Phase::Succeeded, vec![Change::DeleteCanary]),
            case(
                "terminal and clean: nothing",
                Progress {
                    phase: Phase::RolledBack,
                    ..promoting(true)
                },
                observed(FROM),
                secs(500),
            )
            .expect(Phase::RolledBack, vec![]),
        ];
        for c in cases {
            let step = step(&c.target, &c.progress, &c.observed, c.now);
            assert_eq!(step.progress.phase, c.phase, "{}: phase", c.name);
            assert_eq!(mutations(&step), c.actions, "{}: actions", c.name);
            assert_eq!(step.progress.failure, c.failure, "{}: failure", c.name);
            assert_eq!(
                step.requeue.is_none(),
                c.phase.is_terminal(),
                "{}: requeue",
                c.name
            );
            if c.phase != c.progress.phase {
                assert!(
                    !events(&step).is_empty(),
                    "{}: a phase change is announced",
                    c.name
                );
                let warning = matches!(
                    c.phase,
                    Phase::RollingBack | Phase::RolledBack | Phase::Failed
                );
                assert!(
                    events(&step)
                        .iter()
                        .all(|(k, _)| (*k == EventKind::Warning) == warning),
                    "{}: event kind",
                    c.name
                );
                assert!(
                    step.progress
                        .pending_events
                        .iter()
                        .all(|e| e.phase == c.phase && e.note == step.progress.message),
                    "{}: the Event announces the new phase with its message",
                    c.name
                );
            } else {
                assert!(
                    events(&step).is_empty(),
                    "{}: no phase change, no event",
                    c.name
                );
            }
            // Deterministic: two operators computing the same step from the
            // same Refresh agree; only one of them can store it.
            assert_eq!(
                step,
                super::step(&c.target, &c.progress, &c.observed, c.now),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn an_event_stored_but_not_published_survives_the_next_step() {
        // The operator stored Canary with its Event and died before
        // publishing it; the next step must not drop it.
        let t = target(Strategy::Canary);
        let started = step(&t, &Progress::default(), &observed(FROM), t0());
        assert_eq!(
            events(&started),
            vec![(EventKind::Normal, "CanaryStarted".into())]
        );
        let crashed = Observed {
            canary_exists: true,
            canary_pods: vec![pod(false, 3, &["CrashLoopBackOff"])],
            ..observed(FROM)
        };
        let next = step(&t, &started.progress, &crashed, secs(5));
        assert_eq!(
            events(&next),
            vec![
                (EventKind::Normal, "CanaryStarted".into()),
                (EventKind::Warning, "RollingBack".into()),
            ],
            "oldest first"
        );
        // Once published and cleared, a step without a phase change adds
        // none.
        let published = Progress {
            pending_events: vec![],
            ..started.progress
        };
        let waiting = step(&t, &published, &healthy_canary(), secs(1));
        assert!(events(&waiting).is_empty());
    }

    /// Runs steps at the given times, applying the canary's creation to the
    /// observation, and returns the last step.
    fn run(target: &Target, observed: &Observed, times: &[i64]) -> Step {
        let mut progress = Progress::default();
        let mut last = None;
        for &t in times {
            let s = step(target, &progress, observed, secs(t));
            progress = s.progress.clone();
            last = Some(s);
        }
        last.unwrap_or_else(|| step(target, &progress, observed, t0()))
    }

    #[test]
    fn the_operator_caps_how_long_an_analysis_may_take() {
        let century = crate::duration::MAX_DURATION_SECONDS;
        let asked = Settings {
            interval_seconds: century,
            iterations: 4,
            readiness_timeout_seconds: century,
            ..Settings::default()
        };
        let capped = asked.capped(Duration::from_secs(3600));
        assert_eq!(capped.interval_seconds, 900);
        assert_eq!(capped.iterations, 4);
        assert_eq!(capped.readiness_timeout_seconds, 3600);
        // Within the cap: as asked.
        assert_eq!(
            Settings::default().capped(Duration::from_secs(3600)),
            Settings::default()
        );
        // A cap shorter than the iterations still leaves 1 s between checks.
        assert_eq!(asked.capped(Duration::from_secs(2)).interval_seconds, 1);
    }

    #[test]
    fn a_slow_canary_gets_its_readiness_timeout_not_the_analysis_limit() {
        // One passing check promotes, two checks without a pass are
        // inconclusive; the pods take two minutes to become Ready, well
        // within the five-minute readiness timeout.
        let t = Target {
            settings: Settings {
                iterations: 1,
                ..Settings::default()
            },
            ..target(Strategy::Canary)
        };
        let slow = Observed {
            canary_exists: true,
            canary_pods: vec![pod(false, 0, &[])],
            ..observed(FROM)
        };
        let waited = run(&t, &slow, &[0, 30, 60, 90, 120]);
        assert_eq!(
            waited.progress.phase,
            Phase::Canary,
            "{}",
            waited.progress.message
        );
        assert_eq!(waited.progress.checks, 0, "waiting is not analysis");
        let ready = step(&t, &waited.progress, &healthy_canary(), secs(150));
        assert_eq!(ready.progress.phase, Phase::Promoting);
        // Never Ready: the readiness timeout ends it, as a timeout.
        let never = run(&t, &slow, &[0, 60, 120, 180, 240, 300]);
        assert_eq!(never.progress.phase, Phase::RollingBack);
        assert_eq!(never.progress.failure, Some(Failure::Timeout));
    }

    /// A canary its kind judges as a whole (a CronJob's Job that failed)
    /// rolls back at once, whatever its pods' readiness says.
    #[test]
    fn a_canary_failed_as_a_whole_rolls_back() {
        let t = target(Strategy::Canary);
        let failed = Observed {
            canary_exists: true,
            canary_failed: Some("pod backup-canary-x failed (Error)".into()),
            ..observed(FROM)
        };
        let s = step(&t, &in_canary(), &failed, secs(5));
        assert_eq!(s.progress.phase, Phase::RollingBack);
        assert_eq!(s.progress.failure, Some(Failure::PodFailure));
        assert!(
            s.progress.message.contains("backup-canary-x failed"),
            "{}",
            s.progress.message
        );
        assert_eq!(
            mutations(&s),
            vec![Change::DeleteCanary, Change::RejectDigest]
        );
    }

    /// A workload whose own controller runs the canary (an Argo Rollout)
    /// and gives it up: promotion rolls back at once, with the reason.
    #[test]
    fn a_rollout_its_own_controller_gave_up_is_rolled_back() {
        let t = target(Strategy::Rolling);
        let aborted = Observed {
            workload: Some(WorkloadState {
                rolled_out: false,
                gave_up: Some("analysis failed".into()),
                ..workload(TO)
            }),
            new_pods: vec![pod(true, 0, &[])],
            ..Observed::default()
        };
        let s = step(&t, &promoting(true), &aborted, secs(160));
        assert_eq!(s.progress.phase, Phase::RollingBack);
        assert_eq!(s.progress.failure, Some(Failure::Aborted));
        assert!(
            s.progress.message.contains("analysis failed"),
            "{}",
            s.progress.message
        );
        assert!(mutations(&s).contains(&set(FROM)));
        assert!(mutations(&s).contains(&Change::RejectDigest));
    }

    /// A canary inside the workload (a StatefulSet's partition): the
    /// template carries the new image while freshen's hold is set. That is
    /// no conflict in the canary, promotion releases the hold (the same
    /// change again) before the rollout counts, and someone else's image
    /// under the hold is theirs: freshen stops and does not set its own.
    #[test]
    fn a_canary_inside_the_workload_is_held_then_released() {
        let t = target(Strategy::Canary);
        let held = |image: &str, held| Observed {
            workload: Some(WorkloadState {
                held,
                rolled_out: false,
                ..workload(image)
            }),
            canary_exists: held,
            canary_pods: vec![pod(true, 0, &[])],
            new_pods: vec![pod(true, 0, &[])],
            ..Observed::default()
        };
        let canary = run(&t, &held(TO, true), &[0, 30, 60, 90, 120]);
        assert_eq!(canary.progress.phase, Phase::Canary, "{canary:?}");
        assert_eq!(canary.progress.passes, 4);
        let promoted = step(&t, &canary.progress, &held(TO, true), secs(150));
        assert_eq!(promoted.progress.phase, Phase::Promoting);
        assert_eq!(mutations(&promoted), vec![set(TO)]);
        // Still held (the release was lost): released again, not counted
        // as patched.
        let again = step(&t, &promoted.progress, &held(TO, true), secs(151));
        assert_eq!(mutations(&again), vec![set(TO)]);
        assert_eq!(again.progress.patched_at, None);
        // Released, rolled out: done.
        let released = Observed {
            workload: Some(WorkloadState {
                rolled_out: true,
                ..workload(TO)
            }),
            new_pods: vec![pod(true, 0, &[])],
            ..Observed::default()
        };
        let done = step(&t, &again.progress, &released, secs(160));
        assert_eq!(done.progress.phase, Phase::Succeeded);
        // Someone else's image under freshen's hold: a conflict in the
        // canary, and in promotion never overwritten with freshen's.
        let theirs = "reg.example/shop/api:9";
        let stopped = step(&t, &in_canary(), &held(theirs, true), secs(10));
        assert_eq!(stopped.progress.failure, Some(Failure::Conflict));
        let stopped = step(&t, &promoted.progress, &held(theirs, true), secs(151));
        assert_eq!(stopped.progress.failure, Some(Failure::Conflict));
        assert!(!mutations(&stopped).contains(&set(TO)));
        // The new image without freshen's hold during the canary is
        // someone else's doing too.
        let unheld = step(&t, &in_canary(), &held(TO, false), secs(10));
        assert_eq!(unheld.progress.failure, Some(Failure::Conflict));
    }

    #[test]
    fn promotes_after_the_frozen_number_of_passing_checks() {
        let t = target(Strategy::Canary);
        let times = [0, 30, 60, 90, 120];
        let before = run(&t, &healthy_canary(), &times);
        assert_eq!(before.progress.phase, Phase::Canary);
        assert_eq!(before.progress.passes, 4);
        assert_eq!(before.progress.analysis.len(), 4);
        assert!(before.progress.message.contains("4/5 checks passed"));
        assert_eq!(before.requeue, Some(Duration::from_secs(30)));
        let after = run(&t, &healthy_canary(), &[0, 30, 60, 90, 120, 150]);
        assert_eq!(after.progress.phase, Phase::Promoting);
        assert_eq!(after.progress.promoted_at, Some(secs(150)));
        assert_eq!(mutations(&after), vec![set(TO)]);
        // The policy was edited to 2 iterations after creation: the frozen
        // settings of the Refresh are what count.
        let edited = Target {
            settings: Settings {
                iterations: 2,
                ..Settings::default()
            },
            ..t.clone()
        };
        assert_eq!(
            run(&edited, &healthy_canary(), &[0, 30, 60]).progress.phase,
            Phase::Promoting
        );
        assert_eq!(
            run(&t, &healthy_canary(), &[0, 30, 60]).progress.phase,
            Phase::Canary
        );
    }

    #[test]
    fn checks_wait_for_readiness_and_the_history_is_bounded() {
        let t = Target {
            settings: Settings {
                interval_seconds: 1,
                iterations: 40,
                readiness_timeout_seconds: 10_000,
                ..Settings::default()
            },
            ..target(Strategy::Canary)
        };
        let times: Vec<i64> = (0..=60).collect();
        let s = run(&t, &healthy_canary(), &times);
        assert_eq!(s.progress.phase, Phase::Promoting);
        assert_eq!(s.progress.analysis.len(), MAX_CHECKS);
        assert_eq!(s.progress.passes, 40);
        let waiting = Observed {
            canary_exists: true,
            canary_pods: vec![pod(true, 0, &[]), pod(false, 0, &[])],
            workload: Some(WorkloadState {
                replicas: 20,
                ..workload(FROM)
            }),
            ..Observed::default()
        };
        let s = run(&t, &waiting, &[0, 1, 2]);
        assert_eq!(s.progress.phase, Phase::Canary);
        assert_eq!(s.progress.passes, 0);
        assert_eq!(
            s.progress
                .analysis
                .last()
                .map(|c| (c.verdict, c.ready, c.desired)),
            Some((Verdict::Wait, 1, 2))
        );
        // Never all Ready: the wait is bounded by the readiness timeout,
        // not by the analysis (no check of an unready canary counts).
        let s = run(&t, &waiting, &(0..=80).collect::<Vec<_>>());
        assert_eq!(s.progress.phase, Phase::Canary);
        assert_eq!(s.progress.checks, 0);
        let short = Target {
            settings: Settings {
                readiness_timeout_seconds: 60,
                ..t.settings.clone()
            },
            ..t.clone()
        };
        let s = run(&short, &waiting, &(0..=80).collect::<Vec<_>>());
        assert_eq!(s.progress.phase, Phase::RollingBack);
        assert_eq!(s.progress.failure, Some(Failure::Timeout));
    }

    fn with_metric(on_no_data: OnNoData) -> Target {
        Target {
            settings: Settings {
                iterations: 2,
                metric: Some(MetricCheck {
                    query: "rate(errors[1m])".into(),
                    max: 0.5,
                    on_no_data,
                    max_consecutive_errors: 1,
                }),
                ..Settings::default()
            },
            ..target(Strategy::Canary)
        }
    }

    fn reading(r: MetricReading) -> Observed {
        Observed {
            metric: Some(r),
            ..healthy_canary()
        }
    }

    #[test]
    fn the_metric_check_decides_with_its_threshold_and_no_data_rule() {
        let s = run(
            &with_metric(OnNoData::Fail),
            &reading(MetricReading::Value(0.2)),
            &[0, 30, 60],
        );
        assert_eq!(s.progress.phase, Phase::Promoting);
        assert_eq!(s.progress.analysis.last().and_then(|c| c.metric), Some(0.2));
        let s = run(
            &with_metric(OnNoData::Fail),
            &reading(MetricReading::Value(0.9)),
            &[0, 30],
        );
        assert_eq!(
            (s.progress.phase, s.progress.failure),
            (Phase::RollingBack, Some(Failure::Metric))
        );
        assert!(
            s.progress.message.contains("metric 0.9 above max 0.5"),
            "{}",
            s.progress.message
        );
        let s = run(
            &with_metric(OnNoData::Fail),
            &reading(MetricReading::NoData),
            &[0, 30],
        );
        assert_eq!(s.progress.failure, Some(Failure::Metric));
        let s = run(
            &with_metric(OnNoData::Pass),
            &reading(MetricReading::NoData),
            &[0, 30, 60],
        );
        assert_eq!(s.progress.phase, Phase::Promoting);
        let s = run(
            &with_metric(OnNoData::Inconclusive),
            &reading(MetricReading::NoData),
            &[0, 30, 60, 90],
        );
        assert_eq!(
            (s.progress.phase, s.progress.passes, s.progress.checks),
            (Phase::Canary, 0, 3)
        );
        // One error is tolerated (max 1 in a row), the second in a row fails.
        let error = reading(MetricReading::Error("connection refused".into()));
        let s = run(&with_metric(OnNoData::Fail), &error, &[0, 30]);
        assert_eq!(
            (s.progress.phase, s.progress.metric_errors),
            (Phase::Canary, 1)
        );
        let s = run(&with_metric(OnNoData::Fail), &error, &[0, 30, 60]);
        assert_eq!(s.progress.failure, Some(Failure::Metric));
        assert!(s.progress.message.contains("failed 2 time(s) in a row"));
    }

    #[test]
    fn restarts_are_marked_by_the_stamp_not_the_image() {
        let pinned = TO;
        let t = Target {
            reason: Reason::ContainerTooOld,
            from_image: pinned.into(),
            to_image: pinned.into(),
            ..target(Strategy::Rolling)
        };
        let s = step(&t, &Progress::default(), &observed(pinned), t0());
        assert_eq!(
            mutations(&s),
            vec![Change::SetImage {
                image: pinned.into(),
                stamp: true
            }]
        );
        // The patch was lost: same image, no stamp yet -> patch again.
        let s2 = step(&t, &s.progress, &observed(pinned), secs(1));
        assert_eq!(
            mutations(&s2),
            vec![Change::SetImage {
                image: pinned.into(),
                stamp: true
            }]
        );
        let stamped = Observed {
            workload: Some(WorkloadState {
                restart_token: Some(t.name.clone()),
                ..workload(pinned)
            }),
            ..Observed::default()
        };
        let s3 = step(&t, &s.progress, &stamped, secs(2));
        assert_eq!(s3.progress.phase, Phase::Succeeded);
        assert_eq!(mutations(&s3), vec![]);
    }

    #[test]
    fn conflicts_name_the_container_and_what_was_done_to_it() {
        let t = target(Strategy::Canary);
        let s = step(
            &t,
            &in_canary(),
            &observed("reg.example/shop/api:1.5"),
            secs(5),
        );
        assert_eq!(
            s.progress.message,
            format!(
                "someone else set container app's image to reg.example/shop/api:1.5 during the \
                 canary (it was {FROM}); canary removed, workload left as it is"
            )
        );
        let s = step(&t, &promoting(false), &observed(""), secs(160));
        assert_eq!(
            s.progress.message,
            "someone else removed container app from the workload during promotion; left as it is"
        );
        let s = step(&t, &in_canary(), &edited(FROM), secs(5));
        assert_eq!(
            s.progress.message,
            "someone else changed the workload's pod template during the canary; canary \
             removed, workload left as it is"
        );
    }

    #[test]
    fn enum_values_are_written_in_pascal_case_and_old_spellings_still_read() {
        use strum::VariantArray;
        for reason in Reason::VARIANTS {
            let json = serde_json::to_value(reason).unwrap_or_default();
            assert_eq!(json, reason.as_str(), "serde and as_str agree");
            assert!(
                reason
                    .as_str()
                    .chars()
                    .next()
                    .is_some_and(char::is_uppercase)
            );
        }
        for failure in Failure::VARIANTS {
            assert_eq!(
                serde_json::to_value(failure).unwrap_or_default(),
                failure.as_str()
            );
        }
        let old = |text: &str| serde_json::Value::String(text.to_owned());
        let read = |text: &str| serde_json::from_value::<Reason>(old(text)).ok();
        assert_eq!(read("new-digest"), Some(Reason::NewDigest));
        assert_eq!(read("container-too-old"), Some(Reason::ContainerTooOld));
        assert_eq!(read("NewDigest"), Some(Reason::NewDigest));
        assert_eq!(
            serde_json::from_value::<Failure>(old("pod-failure")).ok(),
            Some(Failure::PodFailure)
        );
        assert_eq!(
            serde_json::from_value::<Failure>(old("workload-deleted")).ok(),
            Some(Failure::WorkloadDeleted)
        );
        assert_eq!(
            serde_json::from_value::<Strategy>(old("rolling")).ok(),
            Some(Strategy::Rolling)
        );
        assert_eq!(
            serde_json::to_value(Strategy::Rolling).unwrap_or_default(),
            "Rolling"
        );
        assert_eq!(
            serde_json::from_value::<OnNoData>(old("inconclusive")).ok(),
            Some(OnNoData::Inconclusive)
        );
    }

    #[test]
    fn readiness_and_rollout_state_read_as_users_expect() {
        assert_eq!(
            Phase::Succeeded.ready(),
            (ConditionStatus::True, "Succeeded")
        );
        assert_eq!(
            Phase::RolledBack.ready(),
            (ConditionStatus::False, "RolledBack")
        );
        assert_eq!(Phase::Canary.ready(), (ConditionStatus::Unknown, "Canary"));
        let done = RolloutCounts {
            generation: Some(3),
            observed_generation: Some(3),
            desired: 4,
            total: 4,
            updated: 4,
            available: 4,
        };
        assert!(done.rolled_out());
        for not_yet in [
            RolloutCounts {
                observed_generation: Some(2),
                ..done
            },
            RolloutCounts { total: 5, ..done },
            RolloutCounts { updated: 3, ..done },
            RolloutCounts {
                available: 3,
                ..done
            },
        ] {
            assert!(!not_yet.rolled_out(), "{not_yet:?}");
        }
    }

    #[test]
    fn canary_size_rounds_up_and_is_at_least_one() {
        let s = Settings::default();
        assert_eq!(s.canary_replicas(0), 1);
        assert_eq!(s.canary_replicas(4), 1);
        assert_eq!(s.canary_replicas(10), 1);
        assert_eq!(s.canary_replicas(11), 2);
        let half = Settings {
            canary_weight_percent: 50,
            ..s
        };
        assert_eq!(half.canary_replicas(5), 3);
        assert_eq!(half.canary_replicas(u32::MAX), u32::MAX / 2 + 1);
    }
}
