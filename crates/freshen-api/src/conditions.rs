//! Every condition freshen sets, with what it means: the guide's reference
//! of conditions is generated from this list, and the controllers set them
//! from the same constants and phases.

use freshen_core::condition::ConditionStatus;
use freshen_core::rollout::Phase;

use crate::policy::{ACTIVE, INVALID_SPEC, NO_OVERLAP, OVERLAPPING, OVERLAPS, READY};

/// One condition type, status and reason on one kind of object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionDoc {
    /// The kinds that carry it, e.g. `RefreshPolicy, ClusterRefreshPolicy`.
    pub on: &'static str,
    /// The condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: ConditionStatus,
    /// Its reason.
    pub reason: &'static str,
    /// What it means and what to do.
    pub meaning: String,
}

/// Every condition, policies first, then the Refresh's `Ready` per phase.
pub fn all() -> Vec<ConditionDoc> {
    const POLICIES: &str = "RefreshPolicy, ClusterRefreshPolicy";
    let policy = |type_, status, reason, meaning: &str| ConditionDoc {
        on: POLICIES,
        type_,
        status,
        reason,
        meaning: meaning.to_owned(),
    };
    let mut all = vec![
        policy(
            READY,
            ConditionStatus::True,
            ACTIVE,
            "The spec is valid and the policy governs; the message counts the workloads it \
             governs of those it matches.",
        ),
        policy(
            READY,
            ConditionStatus::False,
            INVALID_SPEC,
            "The spec has a value the schema could not catch (a duration too large, a bad \
             selector, a pipeline template that does not parse); the message names the field. \
             The policy matches nothing until fixed, and a Warning Event says the same.",
        ),
        policy(
            OVERLAPPING,
            ConditionStatus::False,
            NO_OVERLAP,
            "No other policy of the same level matches its workloads.",
        ),
        policy(
            OVERLAPPING,
            ConditionStatus::True,
            OVERLAPS,
            "Another policy of the same level matches some of its workloads; the oldest \
             governs each. The message names the others.",
        ),
    ];
    all.extend(Phase::ALL.iter().map(|phase| {
        let (status, reason) = phase.ready();
        ConditionDoc {
            on: "Refresh",
            type_: READY,
            status,
            reason,
            meaning: phase.meaning(),
        }
    }));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_is_explained_once() {
        let all = all();
        for (i, c) in all.iter().enumerate() {
            assert!(c.meaning.ends_with('.'), "{c:?}");
            assert!(
                !all[..i]
                    .iter()
                    .any(|o| o.on == c.on && o.type_ == c.type_ && o.reason == c.reason),
                "{c:?} twice"
            );
        }
        // A Refresh has one reason per phase.
        assert_eq!(
            all.iter().filter(|c| c.on == "Refresh").count(),
            Phase::ALL.len()
        );
    }
}
