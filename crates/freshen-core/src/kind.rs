//! The kinds of workload freshen measures, and which one runs a pod.
//!
//! Every pod's long-running containers are measured, whatever owns the pod:
//! a pod belongs to the workload a person wrote (a Deployment, not its
//! ReplicaSet; an Argo Rollout, not its ReplicaSet), and a pod no workload
//! freshen knows controls (a bare pod, a static pod, a pod of some other
//! operator) is a workload of its own, of kind [`Kind::Pod`].

use std::fmt;

/// A kind of workload: the bounded `kind` label of every workload series.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Kind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `batch/v1` CronJob: the template its next Job runs, and its running
    /// Jobs' pods.
    CronJob,
    /// `batch/v1` Job no CronJob owns.
    Job,
    /// `apps/v1` ReplicaSet no Deployment or Rollout owns.
    ReplicaSet,
    /// `argoproj.io/v1alpha1` Rollout.
    Rollout,
    /// A pod no workload above controls: bare, static (a node's mirror
    /// pod) or another operator's.
    Pod,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::CronJob,
        Self::Job,
        Self::ReplicaSet,
        Self::Rollout,
        Self::Pod,
    ];

    /// The kind as the API names it (`StatefulSet`), which is also its
    /// `kind` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::CronJob => "CronJob",
            Self::Job => "Job",
            Self::ReplicaSet => "ReplicaSet",
            Self::Rollout => "Rollout",
            Self::Pod => "Pod",
        }
    }

    /// The API group (`""` for the core group).
    pub const fn group(self) -> &'static str {
        match self {
            Self::Deployment | Self::StatefulSet | Self::DaemonSet | Self::ReplicaSet => "apps",
            Self::CronJob | Self::Job => "batch",
            Self::Rollout => "argoproj.io",
            Self::Pod => "",
        }
    }

    /// The API version served.
    pub const fn version(self) -> &'static str {
        match self {
            Self::Rollout => "v1alpha1",
            _ => "v1",
        }
    }

    /// The resource's plural, as in its URL.
    pub const fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
            Self::CronJob => "cronjobs",
            Self::Job => "jobs",
            Self::ReplicaSet => "replicasets",
            Self::Rollout => "rollouts",
            Self::Pod => "pods",
        }
    }

    /// The kind named `name` as the API spells it, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether freshen refreshes workloads of this kind itself (a canary,
    /// then a promotion or a rollback). The others are measured, judged
    /// and reported; whoever made them must replace their pods.
    pub const fn refreshed(self) -> bool {
        matches!(
            self,
            Self::Deployment | Self::StatefulSet | Self::DaemonSet | Self::CronJob | Self::Rollout
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The label the Deployment controller puts on its ReplicaSets' pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The label Argo Rollouts puts on its ReplicaSets' pods.
pub const ROLLOUTS_POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";

/// The label selector of the ReplicaSets measured as workloads of their
/// own: the Deployment and Argo Rollouts controllers label theirs with a
/// template hash, so the API server leaves those out of the watch (a
/// cluster holds one or more per Deployment).
pub const OWN_REPLICASETS: &str = "!pod-template-hash,!rollouts-pod-template-hash";

/// What a pod says of who controls it: its controller owner's kind and
/// name, and its template-hash labels.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodOwner<'a> {
    /// The kind of the owner reference with `controller: true`.
    pub kind: Option<&'a str>,
    /// Its name.
    pub name: Option<&'a str>,
    /// The pod's `pod-template-hash` label.
    pub template_hash: Option<&'a str>,
    /// The pod's `rollouts-pod-template-hash` label.
    pub rollouts_template_hash: Option<&'a str>,
}

/// The workload that runs a pod named `pod`, as `(kind, name)`.
///
/// A ReplicaSet's pod belongs to its Deployment (or Rollout) when the
/// ReplicaSet is named `<workload>-<hash>` after the pod's template-hash
/// label, as both controllers name theirs; otherwise to the ReplicaSet.
/// A Job's pod belongs to the Job (a CronJob's Jobs are found through
/// the Jobs, which name their CronJob). A pod without a controller, or
/// whose controller is of a kind freshen does not know (a Node for a
/// static pod), is its own workload.
pub fn owner_of<'a>(pod: &'a str, owner: PodOwner<'a>) -> (Kind, &'a str) {
    let (Some(kind), Some(name)) = (owner.kind, owner.name) else {
        return (Kind::Pod, pod);
    };
    match kind {
        "ReplicaSet" => {
            let by_hash = |hash: Option<&str>| {
                hash.and_then(|h| name.strip_suffix(h)?.strip_suffix('-'))
                    .filter(|w| !w.is_empty())
            };
            if let Some(rollout) = by_hash(owner.rollouts_template_hash) {
                (Kind::Rollout, rollout)
            } else if let Some(deployment) = by_hash(owner.template_hash) {
                (Kind::Deployment, deployment)
            } else {
                (Kind::ReplicaSet, name)
            }
        }
        "StatefulSet" => (Kind::StatefulSet, name),
        "DaemonSet" => (Kind::DaemonSet, name),
        "Job" => (Kind::Job, name),
        _ => (Kind::Pod, pod),
    }
}

/// Whether a workload of `kind` owned (as controller) by `owner_kind` is
/// measured as part of its owner instead: a Deployment's or Rollout's
/// ReplicaSet, a CronJob's Job.
pub fn measured_by_owner(kind: Kind, owner_kind: Option<&str>) -> bool {
    matches!(
        (kind, owner_kind),
        (Kind::ReplicaSet, Some("Deployment" | "Rollout")) | (Kind::Job, Some("CronJob"))
    )
}

/// Whether an init container with this `restartPolicy` is a native
/// sidecar (`Always`): it runs as long as the pod, so it is measured like
/// a regular container. Plain init containers run to completion first and
/// are not.
pub fn is_sidecar(restart_policy: Option<&str>) -> bool {
    restart_policy == Some("Always")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned<'a>(kind: &'a str, name: &'a str) -> PodOwner<'a> {
        PodOwner {
            kind: Some(kind),
            name: Some(name),
            ..PodOwner::default()
        }
    }

    #[test]
    fn a_replicaset_pod_belongs_to_the_workload_its_name_and_hash_name() {
        let deployment = PodOwner {
            template_hash: Some("7d9f8c6b5"),
            ..owned("ReplicaSet", "web-api-7d9f8c6b5")
        };
        assert_eq!(owner_of("p", deployment), (Kind::Deployment, "web-api"));
        let rollout = PodOwner {
            rollouts_template_hash: Some("6c8d9"),
            ..owned("ReplicaSet", "checkout-6c8d9")
        };
        assert_eq!(owner_of("p", rollout), (Kind::Rollout, "checkout"));
        // No hash, a mismatched hash, or nothing before it: the ReplicaSet.
        for owner in [
            owned("ReplicaSet", "web-api"),
            PodOwner {
                template_hash: Some("xyz"),
                ..owned("ReplicaSet", "web-api-abc")
            },
            PodOwner {
                template_hash: Some("7d9f8c6b5"),
                ..owned("ReplicaSet", "-7d9f8c6b5")
            },
        ] {
            assert_eq!(owner_of("p", owner).0, Kind::ReplicaSet);
        }
    }

    #[test]
    fn other_pods_belong_to_their_controller_or_to_themselves() {
        assert_eq!(
            owner_of("db-0", owned("StatefulSet", "db")),
            (Kind::StatefulSet, "db")
        );
        assert_eq!(
            owner_of("agent-x", owned("DaemonSet", "agent")),
            (Kind::DaemonSet, "agent")
        );
        assert_eq!(
            owner_of("backup-1-x", owned("Job", "backup-1")),
            (Kind::Job, "backup-1")
        );
        // Bare, static (a Node controls its mirror pod) and foreign pods.
        assert_eq!(owner_of("p", PodOwner::default()), (Kind::Pod, "p"));
        assert_eq!(
            owner_of("etcd-n1", owned("Node", "n1")),
            (Kind::Pod, "etcd-n1")
        );
        assert_eq!(owner_of("x", owned("Workflow", "wf")), (Kind::Pod, "x"));
    }

    #[test]
    fn owned_replicasets_and_jobs_are_measured_by_their_owner() {
        assert!(measured_by_owner(Kind::ReplicaSet, Some("Deployment")));
        assert!(measured_by_owner(Kind::ReplicaSet, Some("Rollout")));
        assert!(measured_by_owner(Kind::Job, Some("CronJob")));
        assert!(!measured_by_owner(Kind::ReplicaSet, None));
        assert!(!measured_by_owner(Kind::Job, Some("Workflow")));
        assert!(!measured_by_owner(Kind::Deployment, Some("Deployment")));
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("statefulset"), Some(Kind::StatefulSet));
        assert_eq!(Kind::parse("Deploy"), None);
    }

    #[test]
    fn only_always_restarting_init_containers_are_sidecars() {
        assert!(is_sidecar(Some("Always")));
        assert!(!is_sidecar(None));
        assert!(!is_sidecar(Some("OnFailure")));
    }
}
