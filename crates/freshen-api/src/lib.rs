//! freshen's Kubernetes surface: the `freshen.dev/*` annotation keys and
//! their strict, typed parsing, and the policy CRDs.

pub mod annotations;
pub mod conditions;
pub mod crd;
pub mod pipeline;
pub mod policy;
pub mod promql;
pub mod refresh;
pub mod tag;
pub mod time;
pub mod validation;

pub use annotations::{AnnotationError, RefreshMode, WorkloadSettings, base_image};
pub use pipeline::{PolicyPipelines, Rebuild, RebuildSpec, RebuildStatus};
pub use policy::{
    ClusterRefreshPolicy, ClusterRefreshPolicySpec, PolicyLimits, PolicyStatus, RefreshPolicy,
    RefreshPolicySpec, SpecError,
};
pub use refresh::{
    GitAuthor, GitSpec, GitStatus, LocalSecretRef, PolicyRefresh, PullRequestSpec,
    PullRequestStatus, Refresh, RefreshSpec, RefreshStatus,
};
pub use tag::{TagRecord, TagRecordSpec};
