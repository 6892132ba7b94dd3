//! `RefreshPolicy` and `ClusterRefreshPolicy`: the max ages platform
//! operators set for the workloads their selectors match.
//!
//! The API server validates what it can (duration form, non-empty selectors)
//! from the OpenAPI schema and CEL rules generated here; what it cannot
//! (a duration too large to represent, a selector operator typo in an old
//! object) is caught by [`PolicyLimits::parse`] and the selector conversion,
//! and reported in the policy's `Ready` condition.

use std::collections::BTreeMap;

use freshen_core::condition::ConditionStatus;
use freshen_core::policy::{Candidate, Limits};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::pipeline::PolicyPipelines;
use crate::refresh::PolicyRefresh;
use crate::time::to_chrono;
pub use crate::validation::SpecError;
use crate::validation::{DURATION_MESSAGE, DURATION_RULE, spec_duration};

/// A label selector that selects something specific (not everything).
const SELECTOR_RULE: &str = "(has(self.matchLabels) && size(self.matchLabels) > 0) || \
                             (has(self.matchExpressions) && size(self.matchExpressions) > 0)";

/// The limits a policy sets; any may be left unset to fall through to the
/// next level (ClusterRefreshPolicy, then the operator's defaults).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLimits {
    /// Longest an image may have been built ago, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_image_age: Option<String>,
    /// Longest a container may have been running, e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_container_age: Option<String>,
    /// Whether freshen checks if the images' base moved on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_base_image: Option<bool>,
    /// What `maxImageAge` judges when an image's build time is unknown
    /// (reproducible builds write 1970): Unknown (default: never old) or
    /// FirstSeen (how long its digest has been what its tag names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_build_age: Option<UnknownBuildAge>,
}

/// What an unknown build time counts as.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownBuildAge {
    /// Unknown: such an image is never called old.
    Unknown,
    /// How long its digest has been what its tag names, as first seen.
    FirstSeen,
}

impl PolicyLimits {
    /// The limits as durations; the first bad field is an error naming it.
    pub fn parse(&self) -> Result<Limits, SpecError> {
        Ok(Limits {
            max_image_age: spec_duration("maxImageAge", self.max_image_age.as_deref())?,
            max_container_age: spec_duration("maxContainerAge", self.max_container_age.as_deref())?,
            track_base_image: self.track_base_image,
            unknown_build_as_first_seen: self
                .unknown_build_age
                .map(|a| a == UnknownBuildAge::FirstSeen),
        })
    }
}

/// Sets max ages for the workloads (of every kind) of its namespace that
/// its selector matches. Workload annotations override it; it overrides
/// ClusterRefreshPolicies.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "freshen.dev",
    version = "v1alpha1",
    kind = "RefreshPolicy",
    doc = "Max image and container ages, and how to refresh, for the workloads of a namespace that its selector matches.",
    namespaced,
    status = "PolicyStatus",
    shortname = "rp",
    category = "freshen",
    printcolumn = r#"{"name":"Max Image Age","type":"string","jsonPath":".spec.maxImageAge"}"#,
    printcolumn = r#"{"name":"Max Container Age","type":"string","jsonPath":".spec.maxContainerAge"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedWorkloads"}"#,
    printcolumn = r#"{"name":"Violating","type":"integer","jsonPath":".status.violatingWorkloads"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RefreshPolicySpec {
    /// Which workloads of this namespace the policy governs, by label.
    /// Must not be empty: a policy for everything is a ClusterRefreshPolicy.
    #[x_kube(validation = Rule::new(SELECTOR_RULE).message(
        "must name at least one matchLabels entry or matchExpressions requirement"
    ))]
    pub selector: LabelSelector,
    /// The limits.
    #[serde(flatten)]
    pub limits: PolicyLimits,
    /// Whether and how freshen refreshes the workloads.
    #[serde(flatten)]
    pub refresh: PolicyRefresh,
    /// How the workloads' images are rebuilt.
    #[serde(flatten)]
    pub pipelines: PolicyPipelines,
}

/// Sets max ages for workloads across namespaces: those in namespaces
/// `namespaceSelector` matches whose labels `selector` matches. An absent
/// selector matches everything on its side, but not both may be absent or
/// empty.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "freshen.dev",
    version = "v1alpha1",
    kind = "ClusterRefreshPolicy",
    doc = "Max image and container ages, and how to refresh, for workloads across the namespaces it selects.",
    status = "PolicyStatus",
    shortname = "crp",
    category = "freshen",
    printcolumn = r#"{"name":"Max Image Age","type":"string","jsonPath":".spec.maxImageAge"}"#,
    printcolumn = r#"{"name":"Max Container Age","type":"string","jsonPath":".spec.maxContainerAge"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedWorkloads"}"#,
    printcolumn = r#"{"name":"Violating","type":"integer","jsonPath":".status.violatingWorkloads"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "(has(self.namespaceSelector) && ((has(self.namespaceSelector.matchLabels) && size(self.namespaceSelector.matchLabels) > 0) || (has(self.namespaceSelector.matchExpressions) && size(self.namespaceSelector.matchExpressions) > 0))) || (has(self.selector) && ((has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)))"
).message(
    "set a non-empty namespaceSelector or selector (or both): a policy must not match every workload by accident"
))]
#[serde(rename_all = "camelCase")]
pub struct ClusterRefreshPolicySpec {
    /// Which namespaces, by label; absent means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Which workloads, by label; absent means every workload of the
    /// selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The limits.
    #[serde(flatten)]
    pub limits: PolicyLimits,
    /// Whether and how freshen refreshes the workloads.
    #[serde(flatten)]
    pub refresh: PolicyRefresh,
    /// How the workloads' images are rebuilt.
    #[serde(flatten)]
    pub pipelines: PolicyPipelines,
}

/// What freshen reports on a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workloads the policy matches (governing them or not).
    #[serde(default)]
    pub matched_workloads: i64,
    /// Workloads past a limit this policy sets (snoozed ones excluded).
    #[serde(default)]
    pub violating_workloads: i64,
    /// `Ready` (the spec is valid and in force) and `Overlapping` (another
    /// policy of the same level matches some of the same workloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Condition type: the spec is valid and the policy is in force.
pub const READY: &str = "Ready";
/// Condition type: another policy of the same level matches some of the same
/// workloads; the oldest governs.
pub const OVERLAPPING: &str = "Overlapping";
/// `Ready=True` reason: the spec is valid and the policy governs.
pub const ACTIVE: &str = "Active";
/// `Ready=False` reason: the spec is invalid (the message names the field).
pub const INVALID_SPEC: &str = "InvalidSpec";
/// `Overlapping=False` reason.
pub const NO_OVERLAP: &str = "NoOverlap";
/// `Overlapping=True` reason: the message names the other policies.
pub const OVERLAPS: &str = "Overlaps";

fn selector(field: &'static str, s: &LabelSelector) -> Result<Selector, SpecError> {
    Selector::try_from(s.clone()).map_err(|e| SpecError::Selector {
        field,
        message: e.to_string(),
    })
}

fn candidate<K: Resource>(policy: &K, limits: &PolicyLimits) -> Result<Candidate, SpecError> {
    Ok(Candidate {
        name: policy.name_any(),
        created: policy
            .meta()
            .creation_timestamp
            .as_ref()
            .and_then(|t| to_chrono(&t.0)),
        limits: limits.parse()?,
    })
}

impl RefreshPolicy {
    /// The policy as precedence sees it, or why its spec is invalid.
    pub fn candidate(&self) -> Result<Candidate, SpecError> {
        selector("selector", &self.spec.selector)?;
        let prefs = self.spec.refresh.parse()?;
        if let Some(metric) = &prefs.metric {
            crate::promql::confined_to(&metric.query, &self.namespace().unwrap_or_default())
                .map_err(SpecError::Query)?;
        }
        self.spec.pipelines.parse(true)?;
        candidate(self, &self.spec.limits)
    }

    /// Whether it matches a Deployment in `namespace` labelled `labels`.
    /// An invalid selector matches nothing.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace().as_deref() == Some(namespace)
            && selector("selector", &self.spec.selector).is_ok_and(|s| s.matches(labels))
    }
}

impl ClusterRefreshPolicy {
    /// The policy as precedence sees it, or why its spec is invalid.
    pub fn candidate(&self) -> Result<Candidate, SpecError> {
        if let Some(s) = &self.spec.namespace_selector {
            selector("namespaceSelector", s)?;
        }
        if let Some(s) = &self.spec.selector {
            selector("selector", s)?;
        }
        self.spec.refresh.parse()?;
        self.spec.pipelines.parse(false)?;
        candidate(self, &self.spec.limits)
    }

    /// Whether it matches a Deployment labelled `labels` in a namespace
    /// labelled `namespace_labels`. An invalid selector matches nothing.
    pub fn matches(
        &self,
        namespace_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let side = |field, s: &Option<LabelSelector>, l| match s {
            None => true,
            Some(s) => selector(field, s).is_ok_and(|s| s.matches(l)),
        };
        side(
            "namespaceSelector",
            &self.spec.namespace_selector,
            namespace_labels,
        ) && side("selector", &self.spec.selector, labels)
    }

    /// Whether its `namespaceSelector` selects a namespace labelled
    /// `namespace_labels` (absent selects every namespace). A pin by
    /// `freshen.dev/policy` needs this: a namespace's workloads cannot
    /// borrow a policy that was not written for their namespace.
    pub fn selects_namespace(&self, namespace_labels: &BTreeMap<String, String>) -> bool {
        match &self.spec.namespace_selector {
            None => true,
            Some(s) => selector("namespaceSelector", s).is_ok_and(|s| s.matches(namespace_labels)),
        }
    }
}

/// Sets condition `new` in `conditions`, replacing one of the same type;
/// the transition time moves only when the status changes.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// A condition observed at `generation` at time `now`.
pub fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn by_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn policy(image: Option<&str>) -> RefreshPolicy {
        let mut p = RefreshPolicy::new(
            "team",
            RefreshPolicySpec {
                pipelines: Default::default(),
                refresh: Default::default(),
                selector: by_labels(&[("tier", "web")]),
                limits: PolicyLimits {
                    max_image_age: image.map(str::to_owned),
                    ..PolicyLimits::default()
                },
            },
        );
        p.metadata.namespace = Some("shop".into());
        p
    }

    #[test]
    fn a_policy_matches_its_namespace_and_labels_only() {
        let p = policy(Some("5d"));
        assert!(p.matches("shop", &labels(&[("tier", "web"), ("x", "y")])));
        assert!(!p.matches("shop", &labels(&[("tier", "db")])));
        assert!(!p.matches("other", &labels(&[("tier", "web")])));
        assert_eq!(
            p.candidate()
                .map(|c| c.limits.max_image_age.map(|d| d.as_secs())),
            Ok(Some(5 * 86_400))
        );
    }

    #[test]
    fn a_bad_spec_names_its_field() {
        let err = policy(Some("99999999999999999999w"))
            .candidate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("spec.maxImageAge: invalid duration"),
            "{err}"
        );

        let mut p = policy(None);
        p.spec.selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Exist".into(),
            values: None,
        }]);
        let err = p
            .candidate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("spec.selector: "), "{err}");
        assert!(!p.matches("shop", &labels(&[("tier", "web")])));
    }

    #[test]
    fn cluster_policies_match_by_namespace_and_workload_labels() {
        let p = ClusterRefreshPolicy::new(
            "baseline",
            ClusterRefreshPolicySpec {
                pipelines: Default::default(),
                refresh: Default::default(),
                namespace_selector: Some(by_labels(&[("env", "prod")])),
                selector: None,
                limits: PolicyLimits::default(),
            },
        );
        assert!(p.matches(&labels(&[("env", "prod")]), &labels(&[])));
        assert!(!p.matches(&labels(&[("env", "dev")]), &labels(&[("a", "b")])));
        let q = ClusterRefreshPolicy::new(
            "web",
            ClusterRefreshPolicySpec {
                pipelines: Default::default(),
                refresh: Default::default(),
                namespace_selector: None,
                selector: Some(by_labels(&[("tier", "web")])),
                limits: PolicyLimits::default(),
            },
        );
        assert!(q.matches(&labels(&[]), &labels(&[("tier", "web")])));
        assert!(!q.matches(&labels(&[]), &labels(&[])));
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let t = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default());
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            condition(
                READY,
                ConditionStatus::True,
                "Active",
                "ok".into(),
                Some(1),
                t(100),
            ),
        );
        set_condition(
            &mut conditions,
            condition(
                READY,
                ConditionStatus::True,
                "Active",
                "still ok".into(),
                Some(2),
                t(200),
            ),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, t(100));
        assert_eq!(conditions[0].message, "still ok");
        set_condition(
            &mut conditions,
            condition(
                READY,
                ConditionStatus::False,
                "InvalidSpec",
                "bad".into(),
                Some(3),
                t(300),
            ),
        );
        assert_eq!(conditions[0].last_transition_time, t(300));
        set_condition(
            &mut conditions,
            condition(
                OVERLAPPING,
                ConditionStatus::False,
                "NoOverlap",
                String::new(),
                Some(3),
                t(300),
            ),
        );
        assert_eq!(conditions.len(), 2);
    }
}
