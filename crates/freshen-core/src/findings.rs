//! Which of a workload's findings are news: the Warnings one measurement
//! deserves, given what the measurement before it found.
//!
//! A workload is measured every poll interval; a Warning on every poll
//! would bury the ones that matter. [`news`] announces a finding when it
//! appears or changes, and stays quiet while it persists. What it compares
//! is [`Findings`], which the caller keeps from one measurement to the next.

use std::collections::BTreeSet;

use crate::event::EventReason;
use crate::plan::{self, Hold};
use crate::policy::{Judgement, Source, Violation};
use crate::rollout::Reason;

/// What one measurement of a workload found that a Warning may speak of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The sources of the limits it is past; empty while snoozed.
    pub violating: BTreeSet<Source>,
    /// Per container, what only a rebuild can fix, as
    /// `container <name>: <reason>`.
    pub rebuild: Vec<String>,
    /// What holds a wanted refresh, as the hold reads.
    pub hold: Option<String>,
    /// The rebuilds asked of a pipeline for it, as `namespace/name`.
    pub requested: Vec<String>,
    /// The rebuilds it needs that were refused, as
    /// `container <name>: <why>`.
    pub refused: Vec<String>,
}

impl Findings {
    /// The findings of a judgement over `containers` (name and whether its
    /// base moved on, in the judgement's order) and the planner's hold.
    pub fn of(
        judgement: &Judgement,
        containers: &[(&str, Option<bool>)],
        hold: Option<&Hold>,
    ) -> Self {
        let rebuild = plan::rebuilds(
            containers
                .iter()
                .zip(&judgement.violations)
                .map(|((name, base_stale), v)| (*name, *base_stale, v.as_slice())),
            &plan::ALL_TRIGGERS,
        )
        .into_iter()
        .map(|(container, reason)| format!("container {container}: {}", why_rebuild(reason)))
        .collect();
        Self {
            violating: judgement.violating.clone(),
            rebuild,
            hold: hold.map(ToString::to_string),
            requested: Vec::new(),
            refused: Vec::new(),
        }
    }
}

/// Why only a rebuild helps, in words.
fn why_rebuild(reason: Reason) -> &'static str {
    match reason {
        Reason::BaseMoved => "its base image moved on",
        Reason::ImageTooOld => "its image is past maxImageAge",
        // Not a rebuild reason; named as the Refresh would name it.
        Reason::NewDigest | Reason::ContainerTooOld => reason.as_str(),
    }
}

/// A Warning Event to publish on the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Its reason.
    pub reason: EventReason,
    /// Its message.
    pub note: String,
}

/// The Warnings `now` deserves after `before` (the default when the
/// workload was not measured before):
/// - `MaxAgeExceeded` when it violates a limit of a source it did not
///   violate before, naming every violation (`violations`, per container);
/// - `RebuildRequired` when what only a rebuild can fix appears or changes;
/// - `RebuildRefused` when a needed rebuild is refused, or its refusal
///   changes;
/// - the hold's own reason when a hold someone must act on appears or
///   changes (see [`Hold::warning_reason`]).
pub fn news(
    before: &Findings,
    now: &Findings,
    violations: &[(&str, &[Violation])],
    hold: Option<&Hold>,
) -> Vec<Announcement> {
    let mut out = Vec::new();
    if !now.violating.is_subset(&before.violating) {
        let notes: Vec<String> = violations
            .iter()
            .flat_map(|(container, vs)| {
                vs.iter()
                    .map(move |v| format!("container {container}: {v}"))
            })
            .collect();
        out.push(Announcement {
            reason: EventReason::MaxAgeExceeded,
            note: notes.join("; "),
        });
    }
    if !now.rebuild.is_empty()
        && (now.rebuild != before.rebuild || now.requested != before.requested)
    {
        let how = if now.requested.is_empty() {
            "no pipeline was asked: its policy has no spec.rebuild, or spec.rebuild.triggers \
             leaves out this cause"
                .to_owned()
        } else {
            format!(
                "asked of its pipeline: Rebuild {}; the rebuilt digest is rolled out through a \
                 canary",
                now.requested.join(", ")
            )
        };
        out.push(Announcement {
            reason: EventReason::RebuildRequired,
            note: format!(
                "{}; a rollout of the same image cannot fix this, the image must be rebuilt: {how}",
                now.rebuild.join("; ")
            ),
        });
    }
    if !now.refused.is_empty() && now.refused != before.refused {
        out.push(Announcement {
            reason: EventReason::RebuildRefused,
            note: format!("rebuild not asked for: {}", now.refused.join("; ")),
        });
    }
    if let (Some(hold), Some(text)) = (hold, &now.hold)
        && let Some(reason) = hold.warning_reason()
        && before.hold.as_ref() != Some(text)
    {
        out.push(Announcement {
            reason,
            note: text.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LimitKind, Sourced};
    use std::time::Duration;

    fn violation(source: Source) -> Violation {
        Violation {
            kind: LimitKind::MaxImageAge,
            age: Duration::from_secs(10 * 86_400),
            limit: Sourced {
                value: Duration::from_secs(7 * 86_400),
                source,
            },
            first_seen: false,
        }
    }

    fn judged(violations: Vec<Vec<Violation>>) -> Judgement {
        Judgement {
            violating: violations
                .iter()
                .flatten()
                .map(|v| v.limit.source.clone())
                .collect(),
            violations,
            snoozed: false,
            requeue: Duration::from_secs(60),
        }
    }

    fn reasons(a: &[Announcement]) -> Vec<EventReason> {
        a.iter().map(|a| a.reason).collect()
    }

    #[test]
    fn a_violation_is_announced_when_a_new_source_is_violated_not_every_poll() {
        let v = violation(Source::Default);
        let j = judged(vec![vec![v.clone()]]);
        let now = Findings::of(&j, &[("app", Some(false))], None);
        let vs: [(&str, &[Violation]); 1] = [("app", std::slice::from_ref(&v))];
        let first = news(&Findings::default(), &now, &vs, None);
        assert_eq!(
            reasons(&first),
            [EventReason::MaxAgeExceeded, EventReason::RebuildRequired]
        );
        assert_eq!(first[0].note, format!("container app: {v}"));
        assert!(
            first[1]
                .note
                .starts_with("container app: its image is past maxImageAge"),
            "{}",
            first[1].note
        );
        // The same findings on the next poll: quiet.
        assert!(news(&now, &now, &vs, None).is_empty());
        // A second source past its limit is news again.
        let other = violation(Source::Annotation);
        let j2 = judged(vec![vec![v.clone(), other.clone()]]);
        let later = Findings::of(&j2, &[("app", Some(false))], None);
        let both = [v, other];
        let vs2: [(&str, &[Violation]); 1] = [("app", &both)];
        assert_eq!(
            reasons(&news(&now, &later, &vs2, None)),
            [EventReason::MaxAgeExceeded]
        );
    }

    #[test]
    fn a_moved_base_asks_for_a_rebuild_once_per_change() {
        let j = judged(vec![vec![], vec![]]);
        let one = Findings::of(&j, &[("app", Some(true)), ("proxy", Some(false))], None);
        assert_eq!(one.rebuild, ["container app: its base image moved on"]);
        assert_eq!(
            reasons(&news(&Findings::default(), &one, &[], None)),
            [EventReason::RebuildRequired]
        );
        assert!(news(&one, &one, &[], None).is_empty());
        let two = Findings::of(&j, &[("app", Some(true)), ("proxy", Some(true))], None);
        assert_eq!(
            reasons(&news(&one, &two, &[], None)),
            [EventReason::RebuildRequired]
        );
        // Fixed: nothing to say.
        let none = Findings::of(&j, &[("app", Some(false)), ("proxy", None)], None);
        assert!(news(&two, &none, &[], None).is_empty());
    }

    #[test]
    fn a_refused_rebuild_warns_once_per_change() {
        let j = judged(vec![vec![]]);
        let mut refused = Findings::of(&j, &[("app", Some(true))], None);
        refused.refused = vec!["container app: pipeline build builds only ...".into()];
        let first = news(&Findings::default(), &refused, &[], None);
        assert_eq!(
            reasons(&first),
            [EventReason::RebuildRequired, EventReason::RebuildRefused]
        );
        assert!(first[1].note.contains("pipeline build builds only"));
        assert!(news(&refused, &refused, &[], None).is_empty());
    }

    #[test]
    fn only_holds_someone_must_act_on_warn_and_only_when_they_change() {
        let j = judged(vec![vec![]]);
        let gitops = Hold::GitOps(plan::GitOps::ArgoCd);
        let held = Findings::of(&j, &[("app", None)], Some(&gitops));
        let first = news(&Findings::default(), &held, &[], Some(&gitops));
        assert_eq!(reasons(&first), [EventReason::GitOpsManaged]);
        assert_eq!(first[0].note, gitops.to_string());
        assert!(news(&held, &held, &[], Some(&gitops)).is_empty());
        // A suspended policy is the operator's choice: no Warning.
        let suspended = Findings::of(&j, &[("app", None)], Some(&Hold::Suspended));
        assert_eq!(suspended.hold.as_deref(), Some("its policy is suspended"));
        assert!(
            news(
                &Findings::default(),
                &suspended,
                &[],
                Some(&Hold::Suspended)
            )
            .is_empty()
        );
    }
}
