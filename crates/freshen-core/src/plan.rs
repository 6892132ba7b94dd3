//! Whether to start a refresh of a workload now, and which.
//!
//! [`decide`] first finds what a workload wants (a new digest of the tag it
//! follows, else a restart of containers that ran too long), then checks the
//! gates in a fixed order (GitOps, suspend, snooze, another refresh active,
//! maintenance windows, concurrency limits) and says which one holds it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::age::elapsed;
use crate::event::EventReason;
use crate::image::{Digest, ImageReference};
use crate::policy::{LimitKind, Violation};
use crate::rollout::{MetricCheck, Phase, Reason, Settings, Strategy};
use crate::window::{self, Window};

/// What the planner knows about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// The container's name.
    pub container: String,
    /// Its image exactly as the template has it.
    pub template_image: String,
    /// The same, parsed.
    pub image: ImageReference,
    /// The digest every pod of it runs; `None` when they differ or are
    /// unknown.
    pub running: Option<Digest>,
    /// The followed tag's digest now.
    pub tag_digest: Option<Digest>,
    /// When `tag_digest` was built, from its config.
    pub tag_digest_created: Option<DateTime<Utc>>,
    /// When its oldest container started.
    pub oldest_start: Option<DateTime<Utc>>,
}

/// What the workload's settings ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wants {
    /// Roll out new digests of the tags the containers name.
    pub follow_tag: bool,
    /// A new digest must have been built this long ago.
    pub min_digest_age: Duration,
    /// Restart containers older than this.
    pub max_container_age: Option<Duration>,
    /// Digests rejected for this workload, per container.
    pub rejected: Vec<(String, Digest)>,
    /// Digests rebuilds produced for its containers, and why they were
    /// rebuilt: (container, digest, reason).
    pub rebuilt: Vec<(String, Digest, Reason)>,
}

/// A well-known GitOps reconciler that manages a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitOps {
    /// Argo CD.
    ArgoCd,
    /// Flux.
    Flux,
}

impl fmt::Display for GitOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ArgoCd => "Argo CD",
            Self::Flux => "Flux",
        })
    }
}

/// Which GitOps reconciler manages an object with these labels and
/// annotations, from their well-known tracking keys.
pub fn gitops_manager(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<GitOps> {
    let argo = annotations.contains_key("argocd.argoproj.io/tracking-id")
        || labels.contains_key("argocd.argoproj.io/instance");
    let flux = [
        "kustomize.toolkit.fluxcd.io/name",
        "helm.toolkit.fluxcd.io/name",
    ]
    .iter()
    .any(|k| labels.contains_key(*k));
    match (argo, flux) {
        (true, _) => Some(GitOps::ArgoCd),
        (false, true) => Some(GitOps::Flux),
        (false, false) => None,
    }
}

/// What may stop a wanted refresh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gates {
    /// The workload is of a kind freshen measures but does not refresh.
    pub unrefreshed: Option<crate::kind::Kind>,
    /// The workload's own control that stops its rollouts, if one does:
    /// `spec.paused`, `spec.suspend`, or an `OnDelete` update strategy
    /// (its pods change only when someone deletes them).
    pub paused: Option<&'static str>,
    /// A GitOps reconciler manages the workload and the policy does not
    /// allow patching it.
    pub gitops: Option<GitOps>,
    /// The governing policy is suspended.
    pub suspended: bool,
    /// `freshen.dev/snooze-until`.
    pub snooze_until: Option<DateTime<Utc>>,
    /// A Refresh of this workload is active.
    pub active: Option<String>,
    /// Maintenance windows (none: always open).
    pub windows: Vec<Window>,
    /// Active refreshes under the governing policy, and its limit.
    pub policy_active: (usize, Option<u32>),
    /// Active refreshes operator-wide, and the limit.
    pub operator_active: (usize, u32),
    /// Active refreshes in the workload's namespace, and the most one
    /// namespace may have.
    pub namespace_active: (usize, u32),
    /// Other namespaces with refreshes under way: the operator-wide limit
    /// is shared fairly among them and this one (see [`fair_share`]).
    pub other_namespaces: usize,
    /// The verification gate, when a policy sets `spec.verify`.
    pub verify: Option<Verification>,
}

/// The verification gate for one workload: its mode and the verdict on
/// each digest it could be refreshed to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verification {
    /// Enforce holds an unverified digest; Audit lets it through.
    pub mode: crate::verify::Mode,
    /// What vulnerability scans decide.
    pub vulnerabilities: crate::verify::VulnPolicy,
    /// `(container, digest, verdict)` for every candidate checked.
    pub verdicts: Vec<(String, Digest, crate::verify::Judged)>,
    /// `(container, scan)` of the digest each container runs, when known.
    pub running: Vec<(String, crate::verify::Findings)>,
}

/// Every digest a workload could be refreshed to, `(container, digest)`:
/// a followed tag's digest its pods do not run, and each rebuilt digest.
/// The verification gate judges exactly these, so no path to a new digest
/// skips it; a restart keeps the running digest and is not among them.
pub fn candidates(containers: &[ContainerView], wants: &Wants) -> Vec<(String, Digest)> {
    let mut out = Vec::new();
    for view in containers {
        if wants.follow_tag
            && let Some(tag) = &view.tag_digest
            && view.running.as_ref() != Some(tag)
        {
            out.push((view.container.clone(), tag.clone()));
        }
        for (container, digest, _) in &wants.rebuilt {
            if *container == view.container
                && !out.iter().any(|(c, d)| c == container && d == digest)
            {
                out.push((container.clone(), digest.clone()));
            }
        }
    }
    out
}

impl Verification {
    fn judged(&self, proposal: &Proposal) -> Option<&crate::verify::Judged> {
        self.verdicts
            .iter()
            .find(|(c, d, _)| *c == proposal.container && *d == proposal.digest)
            .map(|(_, _, j)| j)
    }

    /// The candidate's scan against the running digest's.
    fn comparison(&self, proposal: &Proposal) -> crate::verify::Comparison {
        let running = self
            .running
            .iter()
            .find(|(c, _)| *c == proposal.container)
            .map(|(_, f)| f);
        let candidate = self.judged(proposal).and_then(|j| j.findings.as_ref());
        crate::verify::compare(running, candidate)
    }

    /// What to record in the Refresh for `proposal`: who signed it, or in
    /// Audit mode why it is unverified, with the scans compared and why it
    /// was urgent (at most 512 characters).
    pub fn record(&self, proposal: &Proposal) -> Option<String> {
        use crate::verify::Comparison;
        let judged = self.judged(proposal)?;
        let mut text = match judged.trust.verified() {
            true => judged.trust.to_string(),
            false => format!("unverified, rolled out in Audit mode: {}", judged.trust),
        };
        if let Some(findings) = &judged.findings {
            text.push_str(&format!("; scan {findings}"));
        }
        match self.comparison(proposal) {
            Comparison::Regression { running, .. } => text.push_str(&format!(
                " (running {running}: a regression, rolled out in Audit mode)"
            )),
            Comparison::Fixes(fixed) => {
                text.push_str(&format!("; fixes Critical {}", fixed.join(", ")));
            }
            Comparison::Same => {}
        }
        Some(text.chars().take(512).collect())
    }

    /// Why `proposal` may skip `minDigestAge` and the maintenance windows:
    /// the policy says `urgentWhen: Critical`, the candidate is verified,
    /// and its scan drops a Critical finding of the running digest's.
    pub fn urgent(&self, proposal: &Proposal) -> Option<Vec<String>> {
        if !self.vulnerabilities.urgent_when_critical
            || proposal.reason == Reason::ContainerTooOld
            || !self.judged(proposal)?.trust.verified()
        {
            return None;
        }
        match self.comparison(proposal) {
            crate::verify::Comparison::Fixes(fixed) => Some(fixed),
            _ => None,
        }
    }

    /// Why this gate stops `proposal` now, if it does ([`Self::hold`]'s
    /// reason): the check an executor makes again just before a digest
    /// leaves the cluster (a commit to git), in case the policy or its
    /// keys changed while the canary ran.
    pub fn refuses(&self, proposal: &Proposal) -> Option<String> {
        self.hold(proposal).map(|h| h.to_string())
    }

    /// The hold for `proposal` under this gate: none when verified (and no
    /// regression, under `noRegression`), in Audit mode, or for a restart
    /// (which changes no digest).
    fn hold(&self, proposal: &Proposal) -> Option<Hold> {
        if self.mode == crate::verify::Mode::Audit || proposal.reason == Reason::ContainerTooOld {
            return None;
        }
        let Some(judged) = self.judged(proposal) else {
            return Some(Hold::Unverified(crate::verify::Trust::Failed {
                policy: String::new(),
                verdict: crate::verify::SetVerdict::Unknown("not checked yet".into()),
            }));
        };
        if !judged.trust.verified() {
            return Some(Hold::Unverified(judged.trust.clone()));
        }
        match self.comparison(proposal) {
            crate::verify::Comparison::Regression { running, candidate }
                if self.vulnerabilities.no_regression =>
            {
                Some(Hold::VulnerabilityRegression { running, candidate })
            }
            _ => None,
        }
    }
}

/// A namespace's fair share of the operator-wide `limit` while it and
/// `others` namespaces have refreshes under way: an equal part, at least
/// one. A namespace at its share starts no more until others' end (nothing
/// under way is taken away), so a namespace that came first cannot keep
/// the slots that free up from those that came later.
pub fn fair_share(limit: u32, others: usize) -> u32 {
    let namespaces = u32::try_from(others.saturating_add(1)).unwrap_or(u32::MAX);
    (limit / namespaces).max(1)
}

/// Slots of the operator-wide `limit` kept for namespaces with nothing
/// under way: a fifth of it (none below five). A namespace's second and
/// later refreshes may not take them, so namespaces that hold slots for a
/// long time (stuck canaries) still leave a newcomer room to start.
pub fn headroom(limit: u32) -> u32 {
    limit / 5
}

/// A refresh to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Why.
    pub reason: Reason,
    /// Which container.
    pub container: String,
    /// Its image as the template has it.
    pub from_image: String,
    /// The pinned image to roll out.
    pub to_image: String,
    /// The digest rolled out.
    pub digest: Digest,
}

/// Why a wanted refresh waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// freshen does not refresh workloads of this kind.
    NotRefreshed(crate::kind::Kind),
    /// The workload's own control (named) stops its rollouts; freshen
    /// does not patch it until that changes.
    Paused(&'static str),
    /// A restart waits: this PodDisruptionBudget, which selects the
    /// workload's pods, allows no disruption now.
    DisruptionBudget(String),
    /// Managed by a GitOps reconciler.
    GitOps(GitOps),
    /// `gitops: Commit`, and freshen cannot tell (or may not write) where
    /// the workload's image is written in git: why.
    GitSource(String),
    /// The policy is suspended.
    Suspended,
    /// Snoozed until then.
    Snoozed(DateTime<Utc>),
    /// This Refresh is active.
    Active(String),
    /// Outside every window; the next opens then.
    OutsideWindow(Option<DateTime<Utc>>),
    /// The policy's `maxConcurrent` is reached.
    PolicyLimit(u32),
    /// The operator-wide limit is reached.
    OperatorLimit(u32),
    /// The workload's namespace has its share of the operator-wide limit
    /// under way: one namespace's stuck canaries cannot starve the others.
    NamespaceLimit(u32),
    /// The workload's namespace has its fair share of the operator-wide
    /// limit (`share`) under way while `namespaces` namespaces refresh.
    FairShare {
        /// Refreshes one namespace may have under way now.
        share: u32,
        /// Namespaces with refreshes under way, this one included.
        namespaces: usize,
    },
    /// Only the slots kept for namespaces with nothing under way are free
    /// (see [`headroom`]), and this namespace has a refresh under way.
    Headroom(u32),
    /// The digest is not signed as `spec.verify` requires.
    Unverified(crate::verify::Trust),
    /// The digest's scan has more Critical or High findings than the
    /// running digest's (`spec.verify.vulnerabilities.noRegression`).
    VulnerabilityRegression {
        /// The running digest's findings.
        running: crate::verify::Findings,
        /// The candidate's.
        candidate: crate::verify::Findings,
    },
    /// The new digest is younger than `minDigestAge`; old enough then.
    Soaking(DateTime<Utc>),
    /// The Refresh for this very target already ended (failed, rolled back,
    /// or succeeded and was undone since). A target is tried once: freshen
    /// does not fight whoever changed the workload; deleting that Refresh
    /// allows another attempt.
    Ended {
        /// The Refresh's name (deterministic for the target).
        refresh: String,
        /// How it ended.
        phase: Phase,
        /// Why, when it did not succeed.
        cause: String,
    },
    /// Every name this target may take is held by a Refresh of another
    /// workload or container (a collision, or a Refresh someone else made).
    NameTaken(String),
}

impl Hold {
    /// The reason of the Warning Event a hold deserves: someone must act on
    /// it. Holds that clear by themselves (windows, limits) get none.
    pub fn warning_reason(&self) -> Option<EventReason> {
        match self {
            Self::GitOps(_) => Some(EventReason::GitOpsManaged),
            Self::GitSource(_) => Some(EventReason::GitSourceNotFound),
            Self::Paused(_) => Some(EventReason::WorkloadPaused),
            Self::DisruptionBudget(_) => Some(EventReason::DisruptionBudgetExhausted),
            Self::Ended { .. } => Some(EventReason::RefreshNotRetried),
            Self::NameTaken(_) => Some(EventReason::RefreshNameTaken),
            Self::VulnerabilityRegression { .. } => Some(EventReason::VulnerabilityRegression),
            Self::Unverified(crate::verify::Trust::Failed { verdict, .. }) => {
                use crate::verify::SetVerdict;
                Some(match verdict {
                    SetVerdict::Missing => EventReason::SignatureMissing,
                    SetVerdict::Invalid(_) => EventReason::SignatureInvalid,
                    SetVerdict::Untrusted(_) => EventReason::SignatureUntrusted,
                    SetVerdict::Attestation { .. } => EventReason::AttestationFailed,
                    SetVerdict::Unknown(_) | SetVerdict::Verified(_) => {
                        EventReason::SignatureUnchecked
                    }
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRefreshed(kind) => write!(
                f,
                "freshen measures but does not refresh a {kind}: whoever created it must replace \
                 its pods"
            ),
            Self::Paused(control) => write!(
                f,
                "the workload's {control} stops its rollouts; freshen does not change it until \
                 that changes"
            ),
            Self::DisruptionBudget(name) => write!(
                f,
                "PodDisruptionBudget {name} selects the workload's pods and allows no disruption \
                 now; the restart starts once it allows one"
            ),
            Self::GitOps(g) => write!(
                f,
                "the workload is managed by {g}; freshen does not change it, so as not to fight \
                 {g}'s reconciliation. Set `gitops: Commit` (or `PullRequest`) in its \
                 RefreshPolicy to have freshen commit proven images to its git source, or \
                 `gitops: Patch` to patch it anyway"
            ),
            Self::GitSource(why) => write!(
                f,
                "its policy promotes through git (gitops: Commit or PullRequest), but freshen \
                 cannot promote it through git: {why}"
            ),
            Self::Suspended => f.write_str("its policy is suspended"),
            Self::Snoozed(t) => write!(f, "snoozed until {}", t.to_rfc3339()),
            Self::Active(name) => write!(f, "Refresh {name} is active"),
            Self::OutsideWindow(Some(t)) => {
                write!(
                    f,
                    "outside its maintenance windows; the next opens at {}",
                    t.to_rfc3339()
                )
            }
            Self::OutsideWindow(None) => f.write_str("outside its maintenance windows"),
            Self::PolicyLimit(n) => write!(f, "its policy's maxConcurrent ({n}) is reached"),
            Self::NamespaceLimit(n) => write!(
                f,
                "its namespace has {n} refreshes under way, the operator's \
                 --max-concurrent-refreshes-per-namespace"
            ),
            Self::FairShare { share, namespaces } => write!(
                f,
                "its namespace has {share} refreshes under way, its fair share of the \
                 operator's --max-concurrent-refreshes while {namespaces} namespaces refresh"
            ),
            Self::Unverified(trust) => write!(
                f,
                "the new digest is {trust}; it is not rolled out (spec.verify, mode Enforce)"
            ),
            Self::VulnerabilityRegression { running, candidate } => write!(
                f,
                "the new digest's vulnerability scan finds {candidate}, the running digest's \
                 {running}; it is not rolled out (spec.verify.vulnerabilities.noRegression)"
            ),
            Self::Headroom(n) => write!(
                f,
                "the operator's last {n} refresh slots are kept for namespaces with none under \
                 way, and its namespace has one"
            ),
            Self::OperatorLimit(n) => {
                write!(
                    f,
                    "the operator's --max-concurrent-refreshes ({n}) is reached"
                )
            }
            Self::Soaking(t) => write!(
                f,
                "the new digest soaks (minDigestAge) until {}",
                t.to_rfc3339()
            ),
            Self::Ended {
                refresh,
                phase,
                cause,
            } => {
                write!(f, "Refresh {refresh} of the same target ended {phase}")?;
                if !cause.is_empty() {
                    write!(f, " ({cause})")?;
                }
                write!(
                    f,
                    "; freshen tries a target once. Delete that Refresh to try again"
                )
            }
            Self::NameTaken(name) => write!(
                f,
                "Refresh {name} (and its fallback name) belongs to another workload or \
                 container; freshen never acts on a Refresh that is not its workload's. Delete \
                 it to let this refresh start"
            ),
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is wanted.
    Nothing,
    /// Start this refresh.
    Start(Proposal),
    /// This refresh is wanted but held.
    Held(Proposal, Hold),
}

/// What the workload wants, ignoring the gates: a new digest of a followed
/// tag (first container first), else a restart of the container that ran
/// longest past the limit.
pub fn wanted(
    containers: &[ContainerView],
    wants: &Wants,
    now: DateTime<Utc>,
) -> Option<(Proposal, Option<DateTime<Utc>>)> {
    if wants.follow_tag {
        for c in containers {
            let (Some(running), Some(tag)) = (&c.running, &c.tag_digest) else {
                continue;
            };
            if running == tag
                || wants
                    .rejected
                    .iter()
                    .any(|(n, d)| *n == c.container && d == tag)
            {
                continue;
            }
            // Soak: the digest's build time plus minDigestAge (unknown build
            // time: no soak is possible, wait).
            let ripe = if wants.min_digest_age.is_zero() {
                None
            } else {
                let built = c.tag_digest_created?;
                let ripe = crate::age::later(built, wants.min_digest_age);
                (ripe > now).then_some(ripe)
            };
            let proposal = Proposal {
                reason: Reason::NewDigest,
                container: c.container.clone(),
                from_image: c.template_image.clone(),
                to_image: c.image.with_digest(tag.clone()).to_string(),
                digest: tag.clone(),
            };
            return Some((proposal, ripe));
        }
    }
    for (container, digest, reason) in &wants.rebuilt {
        let Some(c) = containers.iter().find(|c| c.container == *container) else {
            continue;
        };
        let rejected = wants
            .rejected
            .iter()
            .any(|(n, d)| n == container && d == digest);
        if c.running.is_none() || c.running.as_ref() == Some(digest) || rejected {
            continue;
        }
        let proposal = Proposal {
            reason: *reason,
            container: c.container.clone(),
            from_image: c.template_image.clone(),
            to_image: c.image.with_digest(digest.clone()).to_string(),
            digest: digest.clone(),
        };
        return Some((proposal, None));
    }
    let limit = wants.max_container_age?;
    containers
        .iter()
        .filter_map(|c| {
            let started = c.oldest_start?;
            let running = c.running.clone()?;
            (elapsed(started, now) > limit).then_some((started, c, running))
        })
        .min_by_key(|(started, ..)| *started)
        .map(|(_, c, running)| {
            (
                Proposal {
                    reason: Reason::ContainerTooOld,
                    container: c.container.clone(),
                    from_image: c.template_image.clone(),
                    to_image: c.image.with_digest(running.clone()).to_string(),
                    digest: running,
                },
                None,
            )
        })
}

/// What a proposal comes to when a Refresh already holds its
/// deterministic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// That Refresh is under way (a cache older than the create).
    Active,
    /// It succeeded and the workload still asks for its image: its pods
    /// are converging, nothing to do.
    Reached,
    /// It ended and the workload does not run its target: a target is
    /// tried once.
    Held(Hold),
}

/// What holds one of the names a proposal may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// No Refresh has the name.
    Free,
    /// A Refresh of this workload (owned by it, matched by uid) and
    /// container, in `phase`, ended for `cause`.
    Ours {
        /// Its phase.
        phase: Phase,
        /// Why it ended, when it did not succeed.
        cause: String,
    },
    /// A Refresh of another workload or container, or one the workload does
    /// not own.
    Foreign,
}

/// Which name a proposal takes, from [`name_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// Create the Refresh under this name.
    Create(String),
    /// A Refresh of this target already holds this name.
    Existing(String, Existing),
}

/// The name a proposal takes among its candidates ([`refresh_names`], in
/// order): the first that is free or already this target's. A name held by
/// another workload's Refresh is skipped, never adopted: names such as
/// `a-b` + `c` and `a` + `b-c` collide.
pub fn name_for(proposal: &Proposal, slots: &[(String, Slot)]) -> Named {
    for (name, slot) in slots {
        match slot {
            Slot::Free => return Named::Create(name.clone()),
            Slot::Ours { phase, cause } => {
                return Named::Existing(
                    name.clone(),
                    existing(proposal, name.clone(), *phase, cause.clone()),
                );
            }
            Slot::Foreign => {}
        }
    }
    let first = slots.first().map(|(n, _)| n.clone()).unwrap_or_default();
    Named::Existing(first.clone(), Existing::Held(Hold::NameTaken(first)))
}

/// Judges a proposal against the Refresh `refresh` already under its name,
/// in `phase`, ended for `cause`.
pub fn existing(proposal: &Proposal, refresh: String, phase: Phase, cause: String) -> Existing {
    if !phase.is_terminal() {
        return Existing::Active;
    }
    if phase == Phase::Succeeded && proposal.from_image == proposal.to_image {
        return Existing::Reached;
    }
    Existing::Held(Hold::Ended {
        refresh,
        phase,
        cause,
    })
}

/// Whether to start a refresh now.
pub fn decide(
    containers: &[ContainerView],
    wants: &Wants,
    gates: &Gates,
    now: DateTime<Utc>,
) -> Decision {
    let Some((proposal, soaking)) = wanted(containers, wants, now) else {
        return Decision::Nothing;
    };
    // A verified digest that fixes a Critical finding does not wait for
    // the soak or a window (urgentWhen: Critical).
    let urgent = gates
        .verify
        .as_ref()
        .is_some_and(|v| v.urgent(&proposal).is_some());
    let hold = if let Some(kind) = gates.unrefreshed {
        Some(Hold::NotRefreshed(kind))
    } else if let Some(control) = gates.paused {
        Some(Hold::Paused(control))
    } else if let Some(g) = gates.gitops {
        Some(Hold::GitOps(g))
    } else if gates.suspended {
        Some(Hold::Suspended)
    } else if let Some(until) = gates.snooze_until.filter(|u| *u > now) {
        Some(Hold::Snoozed(until))
    } else if let Some(name) = &gates.active {
        Some(Hold::Active(name.clone()))
    } else if let Some(hold) = gates.verify.as_ref().and_then(|v| v.hold(&proposal)) {
        Some(hold)
    } else if let Some(ripe) = soaking.filter(|_| !urgent) {
        Some(Hold::Soaking(ripe))
    } else if !urgent && !window::open(&gates.windows, now) {
        Some(Hold::OutsideWindow(window::next_open(&gates.windows, now)))
    } else if let (active, Some(max)) = gates.policy_active
        && active >= max as usize
    {
        Some(Hold::PolicyLimit(max))
    } else if gates.namespace_active.0 >= gates.namespace_active.1 as usize {
        Some(Hold::NamespaceLimit(gates.namespace_active.1))
    } else if gates.operator_active.0 >= gates.operator_active.1 as usize {
        Some(Hold::OperatorLimit(gates.operator_active.1))
    } else {
        share_hold(gates)
    };
    match hold {
        Some(h) => Decision::Held(proposal, h),
        None => Decision::Start(proposal),
    }
}

/// The fair-share holds: below the operator-wide limit, a namespace may
/// still be at its [`fair_share`], or only the [`headroom`] be left.
fn share_hold(gates: &Gates) -> Option<Hold> {
    let (operator, limit) = gates.operator_active;
    let mine = gates.namespace_active.0;
    let share = fair_share(limit, gates.other_namespaces);
    let free = (limit as usize).saturating_sub(operator);
    if mine >= share as usize {
        Some(Hold::FairShare {
            share,
            namespaces: gates.other_namespaces.saturating_add(1),
        })
    } else if mine > 0 && free <= headroom(limit) as usize {
        Some(Hold::Headroom(headroom(limit)))
    } else {
        None
    }
}

/// When a held refresh should be looked at again, if a time is known.
pub fn retry_at(hold: &Hold) -> Option<DateTime<Utc>> {
    match hold {
        Hold::Snoozed(t) | Hold::Soaking(t) | Hold::OutsideWindow(Some(t)) => Some(*t),
        _ => None,
    }
}

/// A PodDisruptionBudget that selects a workload's pods, as the planner
/// weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Its name.
    pub name: String,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
}

/// Whether a restart (a refresh that only replaces pods on the same
/// digest) must wait for the disruption budgets that select the workload's
/// pods: the first that allows no disruption now holds it. A new digest
/// is not held: it replaces pods the workload's own rollout would replace
/// anyway, and a bad one is what a budget protects against least.
pub fn budget_hold(reason: crate::rollout::Reason, budgets: &[Budget]) -> Option<Hold> {
    if reason != crate::rollout::Reason::ContainerTooOld {
        return None;
    }
    budgets
        .iter()
        .find(|b| b.disruptions_allowed <= 0)
        .map(|b| Hold::DisruptionBudget(b.name.clone()))
}

/// Refresh settings one level (annotations, RefreshPolicy,
/// ClusterRefreshPolicy) may set; `None` falls through to the next level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preferences {
    /// Roll out new digests of the tags the containers name.
    pub follow_tag: Option<bool>,
    /// A new digest must have been built this long ago.
    pub min_digest_age: Option<Duration>,
    /// No refresh starts while suspended.
    pub suspend: Option<bool>,
    /// Refreshes start only inside one of these windows.
    pub windows: Option<Vec<Window>>,
    /// Active refreshes of the workloads one policy governs, at most.
    pub max_concurrent: Option<u32>,
    /// What to do with workloads a GitOps reconciler manages (default:
    /// leave them).
    pub gitops: Option<GitOpsAction>,
    /// canary or rolling.
    pub strategy: Option<Strategy>,
    /// Canary size in percent of the replicas.
    pub canary_weight_percent: Option<u32>,
    /// Between analysis checks.
    pub interval: Option<Duration>,
    /// Passing checks to promote.
    pub iterations: Option<u32>,
    /// Restarts tolerated.
    pub max_restarts: Option<u32>,
    /// Readiness and rollout deadline.
    pub readiness_timeout: Option<Duration>,
    /// Optional Prometheus check.
    pub metric: Option<MetricCheck>,
}

impl Preferences {
    /// These settings, with `lower`'s filling the gaps.
    pub fn over(self, lower: Self) -> Self {
        Self {
            follow_tag: self.follow_tag.or(lower.follow_tag),
            min_digest_age: self.min_digest_age.or(lower.min_digest_age),
            suspend: self.suspend.or(lower.suspend),
            windows: self.windows.or(lower.windows),
            max_concurrent: self.max_concurrent.or(lower.max_concurrent),
            gitops: self.gitops.or(lower.gitops),
            strategy: self.strategy.or(lower.strategy),
            canary_weight_percent: self.canary_weight_percent.or(lower.canary_weight_percent),
            interval: self.interval.or(lower.interval),
            iterations: self.iterations.or(lower.iterations),
            max_restarts: self.max_restarts.or(lower.max_restarts),
            readiness_timeout: self.readiness_timeout.or(lower.readiness_timeout),
            metric: self.metric.or(lower.metric),
        }
    }

    /// The rollout settings to freeze into a Refresh started for `reason`:
    /// a restart runs the digest the workload already runs, where a canary
    /// can tell nothing new, so it is always rolling.
    pub fn settings_for(&self, reason: Reason) -> Settings {
        let settings = self.settings();
        match reason {
            Reason::ContainerTooOld => Settings {
                strategy: Strategy::Rolling,
                ..settings
            },
            _ => settings,
        }
    }

    /// The rollout settings to freeze into a new Refresh; unset ones take
    /// [`Settings::default`].
    pub fn settings(&self) -> Settings {
        let d = Settings::default();
        Settings {
            strategy: self.strategy.unwrap_or(d.strategy),
            canary_weight_percent: self
                .canary_weight_percent
                .unwrap_or(d.canary_weight_percent)
                .clamp(1, 100),
            interval_seconds: self
                .interval
                .map_or(d.interval_seconds, |i| i.as_secs().max(1)),
            iterations: self.iterations.unwrap_or(d.iterations).max(1),
            max_restarts: self.max_restarts.unwrap_or(d.max_restarts),
            readiness_timeout_seconds: self
                .readiness_timeout
                .map_or(d.readiness_timeout_seconds, |t| t.as_secs()),
            metric: self.metric.clone(),
            through_git: false,
        }
    }
}

/// What freshen does with a workload a GitOps reconciler manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitOpsAction {
    /// Leave it: a `GitOpsManaged` hold says why.
    Ignore,
    /// Patch the cluster anyway (the reconciler may revert it).
    Patch,
    /// Canary in the cluster, then commit the proven image to the
    /// workload's git source; the reconciler applies it.
    Commit,
    /// As `Commit`, through a pull request a reviewer merges.
    PullRequest,
}

impl GitOpsAction {
    /// Whether proven images are promoted through git (`Commit` or
    /// `PullRequest`).
    pub fn through_git(self) -> bool {
        matches!(self, Self::Commit | Self::PullRequest)
    }
}

/// The containers only a rebuild can freshen, and why: the image is past
/// `maxImageAge`, or its base moved on. A rollout of the same image cannot
/// help. Of the causes a container has, the first of `triggers` wins (an
/// image both too old and on a moved base is rebuilt for its base when
/// only `BaseMoved` triggers a rebuild); [`ALL_TRIGGERS`] names every
/// cause, for reporting.
pub fn rebuilds<'a>(
    containers: impl IntoIterator<Item = (&'a str, Option<bool>, &'a [Violation])>,
    triggers: &[Reason],
) -> Vec<(String, Reason)> {
    let mut out = Vec::new();
    for (name, base_stale, violations) in containers {
        let too_old = violations.iter().any(|v| v.kind == LimitKind::MaxImageAge);
        let causes = [
            (Reason::ImageTooOld, too_old),
            (Reason::BaseMoved, base_stale == Some(true)),
        ];
        if let Some((reason, _)) = causes
            .into_iter()
            .find(|(reason, applies)| *applies && triggers.contains(reason))
        {
            out.push((name.to_owned(), reason));
        }
    }
    out
}

/// Every cause of a rebuild, in the order [`rebuilds`] prefers them.
pub const ALL_TRIGGERS: [Reason; 2] = [Reason::ImageTooOld, Reason::BaseMoved];

/// Most Kubernetes names here are also label values: at most 63 characters.
const MAX_NAME: usize = 63;

/// FNV-1a, for short stable suffixes of truncated names.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A stable fingerprint of `text` (FNV-1a, 64 bits, 16 hex digits): stored
/// in Refreshes, so it must not change between operator versions.
pub fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A fingerprint nobody can aim at (SHA-256, 80 bits, 20 hex digits): for
/// names of objects shared between tenants, where a chosen input must not
/// collide with another's.
pub fn strong_fingerprint(text: &str) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(text.as_bytes());
    hash.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// The deterministic name of the Refresh for a proposal: the same target
/// always gets the same name, so a retried create cannot make a second one.
/// At most 63 characters (it is also a label value).
pub fn refresh_name(
    workload: &str,
    proposal: &Proposal,
    oldest_start: Option<DateTime<Utc>>,
) -> String {
    let suffix = match proposal.reason {
        Reason::ContainerTooOld => format!(
            "restart-{}",
            oldest_start.map(|t| t.timestamp()).unwrap_or_default()
        ),
        _ => proposal.digest.hex().chars().take(12).collect(),
    };
    let base = format!("{workload}-{}", proposal.container);
    let room = MAX_NAME - suffix.len() - 1;
    let base = if base.len() <= room {
        base
    } else {
        let keep = room - 9;
        let cut = base[..keep].trim_end_matches(['-', '.']);
        format!("{cut}-{:08x}", fnv1a(&base))
    };
    format!("{base}-{suffix}")
}

/// The names a proposal's Refresh may take, in order: [`refresh_name`],
/// then the same with a hash of the workload and container in it, for when
/// another workload's Refresh holds the first.
pub fn refresh_names(
    workload: &str,
    proposal: &Proposal,
    oldest_start: Option<DateTime<Utc>>,
) -> [String; 2] {
    let first = refresh_name(workload, proposal, oldest_start);
    let tag = format!(
        "{:08x}",
        fnv1a(&format!("{workload}/{}", proposal.container))
    );
    let fallback = refresh_name(&tag, proposal, oldest_start);
    let fallback = match first.split_once('-') {
        Some((head, _)) if head.len() + 1 + fallback.len() <= MAX_NAME => {
            format!("{head}-{fallback}")
        }
        _ => fallback,
    };
    [first, fallback]
}

/// The canary Deployment's name for a workload, at most 253 characters.
pub fn canary_name(workload: &str) -> String {
    let name = format!("{workload}-canary");
    if name.len() <= 253 {
        return name;
    }
    let cut = workload[..253 - 16].trim_end_matches(['-', '.']);
    format!("{cut}-{:08x}-canary", fnv1a(workload))
}

/// Which finished Refreshes of one workload to delete so that `keep` remain:
/// the oldest by finish time (unknown first), then by name.
pub fn to_prune(mut finished: Vec<(Option<DateTime<Utc>>, String)>, keep: usize) -> Vec<String> {
    finished.sort();
    let excess = finished.len().saturating_sub(keep);
    finished
        .into_iter()
        .take(excess)
        .map(|(_, name)| name)
        .collect()
}

/// How many rejected digests a workload's annotation keeps.
pub const MAX_REJECTED: usize = 10;

/// Parses the rejected-digests annotation: `container@sha256:...` entries,
/// comma separated; malformed entries are skipped.
pub fn parse_rejected(value: &str) -> Vec<(String, Digest)> {
    value
        .split(',')
        .filter_map(|e| {
            let (container, digest) = e.trim().split_once('@')?;
            Some((container.to_owned(), digest.parse().ok()?))
        })
        .collect()
}

/// The annotation with `digest` added for `container`, newest last, at most
/// [`MAX_REJECTED`] entries; unchanged when already there.
pub fn add_rejected(value: &str, container: &str, digest: &Digest) -> String {
    let mut entries = parse_rejected(value);
    if !entries.iter().any(|(c, d)| c == container && d == digest) {
        entries.push((container.to_owned(), digest.clone()));
    }
    let skip = entries.len().saturating_sub(MAX_REJECTED);
    entries
        .iter()
        .skip(skip)
        .map(|(c, d)| format!("{c}@{d}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn hours_ago(h: i64) -> Option<DateTime<Utc>> {
        Some(now() - chrono::Duration::hours(h))
    }

    fn container(running: char, tag: char) -> ContainerView {
        let image = "reg.example/shop/api:1.4";
        ContainerView {
            container: "app".into(),
            template_image: image.into(),
            image: ImageReference::parse(image).unwrap_or_else(|e| panic!("{e}")),
            running: Some(digest(running)),
            tag_digest: Some(digest(tag)),
            tag_digest_created: hours_ago(2),
            oldest_start: hours_ago(30),
        }
    }

    fn follow() -> Wants {
        Wants {
            follow_tag: true,
            ..Wants::default()
        }
    }

    fn open_gates() -> Gates {
        Gates {
            operator_active: (0, 5),
            namespace_active: (0, 5),
            ..Gates::default()
        }
    }

    #[test]
    fn a_new_digest_of_the_followed_tag_is_proposed_pinned() {
        let d = decide(&[container('a', 'b')], &follow(), &open_gates(), now());
        let Decision::Start(p) = d else {
            panic!("{d:?}")
        };
        assert_eq!(p.reason, Reason::NewDigest);
        assert_eq!(p.from_image, "reg.example/shop/api:1.4");
        assert_eq!(
            p.to_image,
            format!("reg.example/shop/api:1.4@{}", digest('b'))
        );
        // Same digest, not following, or a rejected digest: nothing.
        assert_eq!(
            decide(&[container('a', 'a')], &follow(), &open_gates(), now()),
            Decision::Nothing
        );
        assert_eq!(
            decide(
                &[container('a', 'b')],
                &Wants::default(),
                &open_gates(),
                now()
            ),
            Decision::Nothing
        );
        let rejected = Wants {
            rejected: vec![("app".into(), digest('b'))],
            ..follow()
        };
        assert_eq!(
            decide(&[container('a', 'b')], &rejected, &open_gates(), now()),
            Decision::Nothing
        );
        // A newer digest than the rejected one is proposed again.
        assert!(matches!(
            decide(&[container('a', 'c')], &rejected, &open_gates(), now()),
            Decision::Start(_)
        ));
        // Pods on mixed digests (a rollout under way): wait.
        let mixed = ContainerView {
            running: None,
            ..container('a', 'b')
        };
        assert_eq!(
            decide(&[mixed], &follow(), &open_gates(), now()),
            Decision::Nothing
        );
    }

    #[test]
    fn the_gate_judges_every_digest_a_refresh_could_roll_out() {
        let c = [container('a', 'b')];
        assert_eq!(candidates(&c, &follow()), vec![("app".into(), digest('b'))]);
        // Not following the tag: only rebuilt digests.
        let rebuilt = Wants {
            rebuilt: vec![("app".into(), digest('c'), Reason::BaseMoved)],
            ..Wants::default()
        };
        assert_eq!(candidates(&c, &rebuilt), vec![("app".into(), digest('c'))]);
        // Up to date: nothing to judge (nothing costs a request at rest).
        assert!(candidates(&[container('a', 'a')], &follow()).is_empty());
        // Every digest decide could propose is among them.
        for wants in [follow(), rebuilt] {
            if let Decision::Start(p) = decide(&c, &wants, &open_gates(), now()) {
                assert!(candidates(&c, &wants).contains(&(p.container, p.digest)));
            }
        }
    }

    #[test]
    fn a_gate_judged_again_refuses_what_it_would_hold() {
        use crate::verify::{Judged, Mode, SetVerdict, Trust};
        let proposal = Proposal {
            reason: Reason::NewDigest,
            container: "app".into(),
            from_image: "r/app:v1".into(),
            to_image: format!("r/app:v1@{}", digest('b')),
            digest: digest('b'),
        };
        let gate = |mode, trust| Verification {
            mode,
            verdicts: vec![(
                "app".into(),
                digest('b'),
                Judged {
                    trust,
                    findings: None,
                },
            )],
            ..Verification::default()
        };
        let untrusted = Trust::Failed {
            policy: "RefreshPolicy/shop/web".into(),
            verdict: SetVerdict::Missing,
        };
        let why = gate(Mode::Enforce, untrusted.clone()).refuses(&proposal);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("not signed")),
            "{why:?}"
        );
        assert_eq!(gate(Mode::Audit, untrusted).refuses(&proposal), None);
        assert_eq!(
            gate(Mode::Enforce, Trust::Verified(vec!["platform".into()])).refuses(&proposal),
            None
        );
    }

    #[test]
    fn an_unverified_digest_is_held_in_enforce_and_rolled_out_in_audit() {
        use crate::verify::{Mode, SetVerdict, Trust};
        let missing = Trust::Failed {
            policy: "ClusterRefreshPolicy/platform".into(),
            verdict: SetVerdict::Missing,
        };
        let gate = |mode, verdicts: Vec<(String, Digest, Trust)>| Gates {
            verify: Some(Verification {
                mode,
                verdicts: verdicts
                    .into_iter()
                    .map(|(c, d, trust)| {
                        (
                            c,
                            d,
                            crate::verify::Judged {
                                trust,
                                findings: None,
                            },
                        )
                    })
                    .collect(),
                ..Verification::default()
            }),
            ..open_gates()
        };
        let c = [container('a', 'b')];
        let held = decide(
            &c,
            &follow(),
            &gate(
                Mode::Enforce,
                vec![("app".into(), digest('b'), missing.clone())],
            ),
            now(),
        );
        match &held {
            Decision::Held(_, hold) => {
                assert_eq!(hold.warning_reason(), Some(EventReason::SignatureMissing));
                assert!(hold.to_string().contains("not signed"), "{hold}");
            }
            other => panic!("{other:?}"),
        }
        // Not checked (yet): held too.
        assert!(matches!(
            decide(&c, &follow(), &gate(Mode::Enforce, vec![]), now()),
            Decision::Held(_, Hold::Unverified(_))
        ));
        // Verified: started.
        let signed = vec![(
            "app".into(),
            digest('b'),
            Trust::Verified(vec!["platform".into()]),
        )];
        assert!(matches!(
            decide(&c, &follow(), &gate(Mode::Enforce, signed), now()),
            Decision::Start(_)
        ));
        // Audit: started anyway, and the Refresh says why it is unverified.
        let audit = gate(Mode::Audit, vec![("app".into(), digest('b'), missing)]);
        let Decision::Start(p) = decide(&c, &follow(), &audit, now()) else {
            panic!("Audit rolls out")
        };
        let recorded = audit
            .verify
            .as_ref()
            .and_then(|v| v.record(&p))
            .unwrap_or_default();
        assert!(
            recorded.starts_with("unverified, rolled out in Audit mode: not signed"),
            "{recorded}"
        );
    }

    #[test]
    fn a_scan_regression_holds_and_a_critical_fix_skips_the_soak_and_windows() {
        use crate::verify::{Findings, Judged, Mode, Severity, Trust, VulnPolicy};
        let scan = |critical: &[&str], high: u32| {
            let mut f = Findings::default();
            critical.iter().for_each(|id| f.add(id, Severity::Critical));
            (0..high).for_each(|i| f.add(&format!("H-{i}"), Severity::High));
            f
        };
        let gate = |mode, policy, candidate: Findings, windows: Vec<Window>| Gates {
            verify: Some(Verification {
                mode,
                vulnerabilities: policy,
                verdicts: vec![(
                    "app".into(),
                    digest('b'),
                    Judged {
                        trust: Trust::Verified(vec!["platform".into()]),
                        findings: Some(candidate),
                    },
                )],
                running: vec![("app".into(), scan(&["CVE-2026-1"], 1))],
            }),
            windows,
            ..open_gates()
        };
        let mut young = container('a', 'b');
        young.tag_digest_created = Some(now());
        let soak = Wants {
            min_digest_age: Duration::from_secs(3 * 3600),
            ..follow()
        };
        let strict = VulnPolicy {
            no_regression: true,
            urgent_when_critical: true,
        };
        // More Critical findings: held, naming both counts.
        let worse = gate(
            Mode::Enforce,
            strict,
            scan(&["CVE-2026-1", "CVE-2026-2"], 1),
            vec![],
        );
        let Decision::Held(_, hold) = decide(&[young.clone()], &follow(), &worse, now()) else {
            panic!("a regression is held")
        };
        assert_eq!(
            hold.warning_reason(),
            Some(EventReason::VulnerabilityRegression)
        );
        assert!(
            hold.to_string()
                .contains("finds 2 critical, 1 high, the running digest's 1 critical, 1 high"),
            "{hold}"
        );
        // In Audit mode it goes, and the Refresh says it regressed.
        let audit = gate(
            Mode::Audit,
            strict,
            scan(&["CVE-2026-1", "CVE-2026-2"], 1),
            vec![],
        );
        let Decision::Start(p) = decide(&[young.clone()], &follow(), &audit, now()) else {
            panic!("Audit rolls out")
        };
        let recorded = audit
            .verify
            .as_ref()
            .and_then(|v| v.record(&p))
            .unwrap_or_default();
        assert!(
            recorded.contains("a regression, rolled out in Audit mode"),
            "{recorded}"
        );
        // Without noRegression it is not held for it.
        let lax = VulnPolicy::default();
        assert!(matches!(
            decide(
                &[young.clone()],
                &follow(),
                &gate(Mode::Enforce, lax, scan(&["X", "Y"], 4), vec![]),
                now()
            ),
            Decision::Start(_)
        ));
        // A fix of the running Critical skips minDigestAge and a closed window.
        // now() is a Friday at 08:00 UTC.
        let closed: Vec<Window> = "* 02:00-03:00".parse().into_iter().collect();
        assert!(!window::open(&closed, now()));
        let fixed = gate(Mode::Enforce, strict, scan(&[], 1), closed.clone());
        let Decision::Start(p) = decide(&[young.clone()], &soak, &fixed, now()) else {
            panic!("an urgent fix starts at once")
        };
        let v = fixed.verify.as_ref().map(|v| (v.urgent(&p), v.record(&p)));
        assert_eq!(
            v.as_ref().and_then(|(u, _)| u.clone()),
            Some(vec!["CVE-2026-1".to_owned()])
        );
        assert!(
            v.and_then(|(_, r)| r)
                .unwrap_or_default()
                .ends_with("fixes Critical CVE-2026-1")
        );
        // The same fix without urgentWhen soaks.
        let plain = gate(
            Mode::Enforce,
            VulnPolicy {
                urgent_when_critical: false,
                ..strict
            },
            scan(&[], 1),
            closed,
        );
        assert!(matches!(
            decide(&[young], &soak, &plain, now()),
            Decision::Held(_, Hold::Soaking(_))
        ));
    }

    #[test]
    fn four_namespaces_that_never_finish_leave_a_fifth_room() {
        // The defaults: 10 operator-wide, 3 per namespace. Namespaces come
        // one after another and each starts all it can; nothing ends.
        let mut active = [0usize; 6];
        for ns in 0..active.len() {
            loop {
                let gates = Gates {
                    operator_active: (active.iter().sum(), 10),
                    namespace_active: (active[ns], 3),
                    other_namespaces: (0..active.len())
                        .filter(|&o| o != ns && active[o] > 0)
                        .count(),
                    ..Gates::default()
                };
                match decide(&[container('a', 'b')], &follow(), &gates, now()) {
                    Decision::Start(_) => active[ns] += 1,
                    _ => break,
                }
            }
        }
        // The first two take their per-namespace 3, the third is stopped
        // by the headroom, the fourth by its fair share; the fifth still
        // starts one, and the operator-wide limit holds for the sixth.
        assert_eq!(active, [3, 3, 2, 1, 1, 0]);
        assert_eq!(fair_share(10, 4), 2);
        assert_eq!(fair_share(2, 9), 1);
        assert_eq!(headroom(4), 0);
    }

    #[test]
    fn a_young_digest_soaks_for_min_digest_age() {
        let soak = Wants {
            min_digest_age: Duration::from_secs(3 * 3600),
            ..follow()
        };
        let d = decide(&[container('a', 'b')], &soak, &open_gates(), now());
        assert!(
            matches!(&d, Decision::Held(_, Hold::Soaking(t)) if Some(*t) == hours_ago(-1)),
            "{d:?}"
        );
        let unknown_age = ContainerView {
            tag_digest_created: None,
            ..container('a', 'b')
        };
        assert_eq!(
            decide(&[unknown_age], &soak, &open_gates(), now()),
            Decision::Nothing
        );
    }

    #[test]
    fn a_rebuilt_digest_is_rolled_out_once_and_never_if_rejected() {
        // `container(running, tag)`: the workload runs `a`; its rebuild
        // produced `c`. It needs no followTag.
        let wants = Wants {
            rebuilt: vec![("app".into(), digest('c'), Reason::BaseMoved)],
            ..Wants::default()
        };
        let Decision::Start(p) = decide(&[container('a', 'a')], &wants, &open_gates(), now())
        else {
            panic!("expected a refresh to the rebuilt digest")
        };
        assert_eq!(
            (p.reason, p.digest.clone()),
            (Reason::BaseMoved, digest('c'))
        );
        assert!(p.to_image.ends_with(&digest('c').to_string()));
        // Already on it: nothing. Rolled back before: never again.
        assert_eq!(
            decide(&[container('c', 'c')], &wants, &open_gates(), now()),
            Decision::Nothing
        );
        let rejected = Wants {
            rejected: vec![("app".into(), digest('c'))],
            ..wants.clone()
        };
        assert_eq!(
            decide(&[container('a', 'a')], &rejected, &open_gates(), now()),
            Decision::Nothing
        );
    }

    #[test]
    fn containers_past_max_container_age_are_restarted_on_their_digest() {
        let wants = Wants {
            max_container_age: Some(Duration::from_secs(24 * 3600)),
            ..Wants::default()
        };
        let young = ContainerView {
            oldest_start: hours_ago(1),
            ..container('a', 'a')
        };
        assert_eq!(
            decide(&[young], &wants, &open_gates(), now()),
            Decision::Nothing
        );
        let Decision::Start(p) = decide(&[container('a', 'b')], &wants, &open_gates(), now())
        else {
            panic!("expected a restart")
        };
        assert_eq!((p.reason, p.digest), (Reason::ContainerTooOld, digest('a')));
        assert!(p.to_image.ends_with(&digest('a').to_string()));
    }

    #[test]
    fn a_restart_waits_for_an_exhausted_disruption_budget_only() {
        use crate::rollout::Reason;
        let budgets = [
            Budget {
                name: "roomy".into(),
                disruptions_allowed: 1,
            },
            Budget {
                name: "db".into(),
                disruptions_allowed: 0,
            },
        ];
        assert_eq!(
            budget_hold(Reason::ContainerTooOld, &budgets),
            Some(Hold::DisruptionBudget("db".into()))
        );
        assert_eq!(budget_hold(Reason::ContainerTooOld, &budgets[..1]), None);
        assert_eq!(budget_hold(Reason::NewDigest, &budgets), None);
        let hold = Hold::DisruptionBudget("db".into());
        assert_eq!(
            hold.warning_reason(),
            Some(EventReason::DisruptionBudgetExhausted)
        );
        assert!(hold.to_string().contains("PodDisruptionBudget db"));
    }

    #[test]
    fn gates_hold_in_a_fixed_order() {
        let c = [container('a', 'b')];
        let hold = |g: Gates| match decide(&c, &follow(), &g, now()) {
            Decision::Held(_, h) => Some(h),
            _ => None,
        };
        let closed: Window = "Mon 00:00-00:01".parse().unwrap_or_else(|e| panic!("{e}"));
        let all = Gates {
            unrefreshed: Some(crate::kind::Kind::Pod),
            paused: Some("spec.paused"),
            gitops: Some(GitOps::ArgoCd),
            suspended: true,
            snooze_until: hours_ago(-1),
            active: Some("api-app-1".into()),
            windows: vec![closed.clone()],
            policy_active: (2, Some(2)),
            operator_active: (5, 5),
            namespace_active: (3, 3),
            other_namespaces: 1,
            verify: None,
        };
        // An unrefreshed kind first, then a paused workload: nothing else
        // matters while either holds.
        assert_eq!(
            hold(all.clone()),
            Some(Hold::NotRefreshed(crate::kind::Kind::Pod))
        );
        let g = Gates {
            unrefreshed: None,
            ..all
        };
        assert_eq!(hold(g.clone()), Some(Hold::Paused("spec.paused")));
        let g = Gates { paused: None, ..g };
        assert_eq!(hold(g.clone()), Some(Hold::GitOps(GitOps::ArgoCd)));
        let g = Gates { gitops: None, ..g };
        assert_eq!(hold(g.clone()), Some(Hold::Suspended));
        let g = Gates {
            suspended: false,
            ..g
        };
        assert_eq!(hold(g.clone()), hours_ago(-1).map(Hold::Snoozed));
        let g = Gates {
            snooze_until: hours_ago(1),
            ..g
        };
        assert_eq!(hold(g.clone()), Some(Hold::Active("api-app-1".into())));
        let g = Gates { active: None, ..g };
        assert!(matches!(
            hold(g.clone()),
            Some(Hold::OutsideWindow(Some(_)))
        ));
        let g = Gates {
            windows: vec![],
            ..g
        };
        assert_eq!(hold(g.clone()), Some(Hold::PolicyLimit(2)));
        let g = Gates {
            policy_active: (1, Some(2)),
            ..g
        };
        assert_eq!(hold(g.clone()), Some(Hold::NamespaceLimit(3)));
        let g = Gates {
            namespace_active: (2, 3),
            ..g
        };
        assert_eq!(hold(g.clone()), Some(Hold::OperatorLimit(5)));
        // Below the operator's limit, the namespace (2 under way) is at its
        // fair share of 5 with one other namespace refreshing.
        let g = Gates {
            operator_active: (4, 5),
            ..g
        };
        assert_eq!(
            hold(g.clone()),
            Some(Hold::FairShare {
                share: 2,
                namespaces: 2
            })
        );
        // Alone it is not; but the last slot is kept for a namespace with
        // nothing under way.
        let g = Gates {
            other_namespaces: 0,
            ..g
        };
        assert_eq!(hold(g.clone()), Some(Hold::Headroom(1)));
        let g = Gates {
            operator_active: (3, 5),
            ..g
        };
        assert_eq!(hold(g), None);
        assert!(
            Hold::GitOps(GitOps::Flux)
                .to_string()
                .contains("gitops: Patch")
        );
    }

    #[test]
    fn colliding_names_never_adopt_another_workloads_refresh() {
        let p = |container: &str| Proposal {
            reason: Reason::NewDigest,
            container: container.into(),
            from_image: "r/app:1".into(),
            to_image: format!("r/app:1@{}", digest('2')),
            digest: digest('2'),
        };
        // `a-b` + `c` and `a` + `b-c` share the first name, not the second.
        let one = refresh_names("a-b", &p("c"), None);
        let two = refresh_names("a", &p("b-c"), None);
        assert_eq!(one[0], two[0]);
        assert_ne!(one[1], two[1]);
        for name in one.iter().chain(&two) {
            assert!(name.len() <= 63, "{name}");
        }
        let long = refresh_names(&"w".repeat(80), &p(&"c".repeat(60)), None);
        assert!(long.iter().all(|n| n.len() <= 63), "{long:?}");
        assert_ne!(long[0], long[1]);
        // The first name is another workload's: take the fallback.
        assert_eq!(
            name_for(
                &p("b-c"),
                &[
                    (two[0].clone(), Slot::Foreign),
                    (two[1].clone(), Slot::Free)
                ]
            ),
            Named::Create(two[1].clone())
        );
        // Ours under the first name: judged as before.
        assert_eq!(
            name_for(
                &p("c"),
                &[
                    (
                        one[0].clone(),
                        Slot::Ours {
                            phase: Phase::Canary,
                            cause: String::new()
                        }
                    ),
                    (one[1].clone(), Slot::Free)
                ]
            ),
            Named::Existing(one[0].clone(), Existing::Active)
        );
        // Both taken by others: held, with a warning that says what to do.
        let taken = name_for(
            &p("c"),
            &[
                (one[0].clone(), Slot::Foreign),
                (one[1].clone(), Slot::Foreign),
            ],
        );
        let Named::Existing(_, Existing::Held(hold)) = taken else {
            panic!("{taken:?}");
        };
        assert_eq!(hold.warning_reason(), Some(EventReason::RefreshNameTaken));
        assert!(hold.to_string().contains("Delete it"), "{hold}");
    }

    #[test]
    fn holds_someone_must_act_on_warn_and_say_what_to_do() {
        let ended = Hold::Ended {
            refresh: "web-app-0e6ac8d2f1b4".into(),
            phase: Phase::Failed,
            cause: "someone else set container app's image to x:1".into(),
        };
        assert_eq!(ended.warning_reason(), Some(EventReason::RefreshNotRetried));
        assert_eq!(
            ended.to_string(),
            "Refresh web-app-0e6ac8d2f1b4 of the same target ended Failed (someone else set \
             container app's image to x:1); freshen tries a target once. Delete that Refresh to \
             try again"
        );
        // Succeeded and the template has the image: pods converging, quiet.
        let p = Proposal {
            reason: Reason::ContainerTooOld,
            container: "app".into(),
            from_image: "r/app@sha256:1".into(),
            to_image: "r/app@sha256:1".into(),
            digest: digest('1'),
        };
        assert_eq!(
            existing(&p, "r".into(), Phase::Succeeded, String::new()),
            Existing::Reached
        );
        assert_eq!(
            existing(&p, "r".into(), Phase::Promoting, String::new()),
            Existing::Active
        );
        // Changed back since: held, loudly.
        let undone = Proposal {
            from_image: "r/app:old".into(),
            ..p
        };
        assert!(matches!(
            existing(&undone, "r".into(), Phase::Succeeded, String::new()),
            Existing::Held(Hold::Ended {
                phase: Phase::Succeeded,
                ..
            })
        ));
        assert!(matches!(
            existing(&undone, "r".into(), Phase::Failed, "x".into()),
            Existing::Held(Hold::Ended {
                phase: Phase::Failed,
                ..
            })
        ));
        assert_eq!(
            Hold::GitOps(GitOps::ArgoCd).warning_reason(),
            Some(EventReason::GitOpsManaged)
        );
        for quiet in [
            Hold::Suspended,
            Hold::OutsideWindow(None),
            Hold::PolicyLimit(1),
            Hold::OperatorLimit(1),
            Hold::NamespaceLimit(1),
            Hold::FairShare {
                share: 1,
                namespaces: 2,
            },
            Hold::Headroom(1),
            Hold::Active("x".into()),
        ] {
            assert_eq!(quiet.warning_reason(), None, "{quiet}");
        }
    }

    #[test]
    fn gitops_managers_are_known_by_their_tracking_keys() {
        let map = |k: &str| BTreeMap::from([(k.to_owned(), "x".to_owned())]);
        let none = BTreeMap::new();
        assert_eq!(
            gitops_manager(&none, &map("argocd.argoproj.io/tracking-id")),
            Some(GitOps::ArgoCd)
        );
        assert_eq!(
            gitops_manager(&map("argocd.argoproj.io/instance"), &none),
            Some(GitOps::ArgoCd)
        );
        assert_eq!(
            gitops_manager(&map("kustomize.toolkit.fluxcd.io/name"), &none),
            Some(GitOps::Flux)
        );
        assert_eq!(
            gitops_manager(&map("helm.toolkit.fluxcd.io/name"), &none),
            Some(GitOps::Flux)
        );
        // Helm alone sets app.kubernetes.io/instance; that is no GitOps.
        assert_eq!(
            gitops_manager(&map("app.kubernetes.io/instance"), &none),
            None
        );
    }

    #[test]
    fn fingerprints_are_the_published_fnv1a_64() {
        // Reference values of FNV-1a 64: fingerprints stored by one version
        // must match the next.
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint("foobar"), "85944171f73967e8");
    }

    #[test]
    fn refresh_names_are_deterministic_and_fit_a_label() {
        let Decision::Start(p) = decide(&[container('a', 'b')], &follow(), &open_gates(), now())
        else {
            panic!("expected a proposal")
        };
        assert_eq!(refresh_name("api", &p, None), "api-app-bbbbbbbbbbbb");
        let long = "a".repeat(250);
        let name = refresh_name(&long, &p, None);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(name, refresh_name(&long, &p, None));
        assert_ne!(name, refresh_name(&format!("{long}b"), &p, None));
        let restart = Proposal {
            reason: Reason::ContainerTooOld,
            ..p
        };
        assert_eq!(
            refresh_name("api", &restart, hours_ago(0)),
            "api-app-restart-1800000000"
        );
        assert_eq!(canary_name("api"), "api-canary");
        assert!(canary_name(&"b".repeat(253)).len() <= 253);
    }

    #[test]
    fn image_age_and_a_moved_base_need_a_rebuild_not_a_rollout() {
        use crate::policy::{Source, Sourced};
        let old = [Violation {
            first_seen: false,
            kind: LimitKind::MaxImageAge,
            age: Duration::from_secs(40 * 86_400),
            limit: Sourced {
                value: Duration::from_secs(30 * 86_400),
                source: Source::Default,
            },
        }];
        let long_running = [Violation {
            kind: LimitKind::MaxContainerAge,
            ..old[0].clone()
        }];
        let containers = [
            ("old", Some(true), &old[..]),
            ("moved", Some(true), &[][..]),
            ("restart-only", Some(false), &long_running[..]),
            ("unknown", None, &[][..]),
        ];
        assert_eq!(
            rebuilds(containers, &ALL_TRIGGERS),
            [
                ("old".to_owned(), Reason::ImageTooOld),
                ("moved".to_owned(), Reason::BaseMoved)
            ]
        );
        // Rebuilt on BaseMoved only: the old image on a moved base is
        // rebuilt for its base, not skipped for being too old.
        assert_eq!(
            rebuilds(containers, &[Reason::BaseMoved]),
            [
                ("old".to_owned(), Reason::BaseMoved),
                ("moved".to_owned(), Reason::BaseMoved)
            ]
        );
        assert_eq!(
            rebuilds(containers, &[Reason::ImageTooOld]),
            [("old".to_owned(), Reason::ImageTooOld)]
        );
    }

    #[test]
    fn restarts_are_always_rolling_and_history_keeps_the_newest() {
        let prefs = Preferences {
            strategy: Some(Strategy::Canary),
            iterations: Some(3),
            ..Preferences::default()
        };
        assert_eq!(
            prefs.settings_for(Reason::NewDigest).strategy,
            Strategy::Canary
        );
        let restart = prefs.settings_for(Reason::ContainerTooOld);
        assert_eq!(
            (restart.strategy, restart.iterations),
            (Strategy::Rolling, 3)
        );
        let finished = vec![
            (hours_ago(1), "c".to_owned()),
            (hours_ago(3), "a".to_owned()),
            (None, "x".to_owned()),
            (hours_ago(2), "b".to_owned()),
        ];
        assert_eq!(to_prune(finished.clone(), 2), ["x", "a"]);
        assert!(to_prune(finished, 10).is_empty());
    }

    #[test]
    fn rejected_digests_are_a_bounded_list() {
        let mut value = String::new();
        for c in ['1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c'] {
            value = add_rejected(&value, "app", &digest(c));
        }
        let list = parse_rejected(&value);
        assert_eq!(list.len(), MAX_REJECTED);
        assert_eq!(list.first().map(|(_, d)| d.clone()), Some(digest('3')));
        assert_eq!(add_rejected(&value, "app", &digest('c')), value);
        assert_eq!(parse_rejected("app@sha256:nope, web@"), vec![]);
    }
}
