//! `Refresh`: the record of one attempt to change a workload, and the
//! refresh settings policies carry.
//!
//! A Refresh is created by freshen (never by hand) with a deterministic name,
//! owned by its workload; its spec is the frozen target and rollout
//! settings, its status the [`Progress`] of the state machine in
//! `freshen_core::rollout`. `kubectl get refreshes -A` is the audit trail.

use freshen_core::plan::Preferences;
use freshen_core::rollout::{
    MetricCheck, OnNoData, Progress, Reason as RefreshReason, Settings, Strategy, Target,
};
use freshen_core::window::Window;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::validation::{DURATION_MESSAGE, DURATION_RULE, SpecError, spec_duration};

/// Label on a Refresh: the workload it changes.
pub const WORKLOAD_LABEL: &str = "freshen.dev/workload";
/// Label on canary Deployments and their pods: the Refresh they belong to.
pub const REFRESH_LABEL: &str = "freshen.dev/refresh";
/// Label on canary pods (`"true"`), next to the workload's own labels.
pub const CANARY_LABEL: &str = "freshen.dev/canary";
/// Whether a Deployment is one of freshen's canaries: never measured,
/// reported or refreshed itself.
pub fn is_canary(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(CANARY_LABEL).is_some_and(|v| v == "true")
}

/// Refresh annotation: the policy that governed the workload when the
/// Refresh was created (`RefreshPolicy/<namespace>/<name>` or
/// `ClusterRefreshPolicy/<name>`), for its `maxConcurrent`: two namespaces'
/// policies of one name never share a limit.
pub const GOVERNED_BY: &str = "freshen.dev/governed-by";

/// StatefulSet annotation while a canary runs inside it: the Refresh that
/// holds its partition, and the partition and restart stamp to restore
/// (JSON), written in the same patch that sets the canary's partition.
pub const CANARY_HOLD: &str = "freshen.dev/canary-hold";

/// Pod-template annotation a restart sets: the Refresh's name.
pub const RESTARTED_BY: &str = "freshen.dev/restarted-by";
/// Workload annotation: digests rejected by rollbacks, `container@digest`,
/// comma separated, newest last.
pub const REJECTED_DIGESTS: &str = "freshen.dev/rejected-digests";

/// One attempt to change one container of a workload.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "freshen.dev",
    version = "v1alpha1",
    kind = "Refresh",
    doc = "One attempt by freshen to roll a new (or the same, restarted) digest out to a workload.",
    namespaced,
    status = "RefreshStatus",
    shortname = "rf",
    category = "freshen",
    printcolumn = r#"{"name":"Kind","type":"string","priority":1,"jsonPath":".spec.workloadKind"}"#,
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".spec.fromDigest"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.toDigest"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Verified","type":"string","priority":1,"jsonPath":".spec.verification"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message(
    "a Refresh's spec is frozen at creation; delete the Refresh and let freshen plan another"
))]
#[serde(rename_all = "camelCase")]
pub struct RefreshSpec {
    /// The workload (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub workload: String,
    /// Its kind: Deployment (the default, and every Refresh made before
    /// other kinds were refreshed), StatefulSet, DaemonSet, CronJob or
    /// Rollout. A Refresh naming another kind fails as Untrusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<freshen_core::kind::Kind>,
    /// Its container to change.
    #[schemars(length(min = 1, max = 63))]
    pub container: String,
    /// Why the refresh was started: NewDigest (the followed tag moved),
    /// ContainerTooOld (a restart on the same digest), BaseMoved or
    /// ImageTooOld (a rebuild).
    pub reason: RefreshReason,
    /// The container's image exactly as it was; restored on rollback.
    #[schemars(length(min = 1, max = 4096))]
    pub from_image: String,
    /// The image rolled out, pinned by digest.
    #[schemars(length(min = 1, max = 4096))]
    pub to_image: String,
    /// Short digest the workload ran (for `kubectl get`), or `unknown`.
    #[schemars(length(max = 16))]
    pub from_digest: String,
    /// Short digest rolled out.
    #[schemars(length(max = 16))]
    pub to_digest: String,
    /// Full digest rolled out.
    #[schemars(length(min = 1, max = 200))]
    pub digest: String,
    /// Rollout settings, frozen at creation.
    pub rollout: Settings,
    /// Fingerprint of the workload's pod template apart from the container's
    /// image and the restart stamp, when the Refresh was created: any other
    /// change to the template during the refresh is a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub template_fingerprint: Option<String>,
    /// What the verification gate found when the Refresh was made (a
    /// policy's `spec.verify`): `signed by <authorities>`, or in Audit mode
    /// why the digest is unverified. Absent when no policy verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub verification: Option<String>,
}

/// What freshen reports on a Refresh.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefreshStatus {
    /// Phase, step timestamps, analysis history, message.
    #[serde(flatten)]
    pub progress: Progress,
    /// The canary's name once one was created: a Deployment's canary
    /// Deployment or a CronJob's canary Job. Absent for a StatefulSet or
    /// DaemonSet (the canary runs inside the workload) and a Rollout (Argo
    /// runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` mirrors the phase: True when Succeeded, False when RolledBack
    /// or Failed, Unknown while under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The commits pushed, when the refresh promotes through git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitStatus>,
}

/// Where a refresh that promotes through git wrote, and what.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitStatus {
    /// The URL of the repository freshen pushed to.
    pub repository: String,
    /// The branch freshen pushed to (the one the reconciler follows).
    pub branch: String,
    /// The file whose image freshen edited, from the repository's root.
    pub file: String,
    /// The commit that set the new image (or the branch's head, when it
    /// already had it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When the commit was pushed (the canary's success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The commit that put the old image back, after a failure past
    /// promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_commit: Option<String>,
    /// Pushes rejected (the branch had moved) before ours went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The pull request that carries `commit` (`gitops: PullRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestStatus>,
    /// The pull request that carries `revertCommit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_pull_request: Option<PullRequestStatus>,
}

/// A pull request freshen opened, as its forge last answered.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PullRequestStatus {
    /// The forge that serves it.
    pub provider: freshen_core::gitops::forge::Provider,
    /// Its number (GitLab's merge request IID).
    pub number: u64,
    /// The pull request's page on the forge.
    pub url: String,
    /// The branch freshen pushed its commit to.
    pub branch: String,
    /// Open, Merged or Closed, as last read.
    pub state: freshen_core::gitops::forge::PullState,
    /// When it was merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PullRequestStatus {
    /// The state machine's view of it.
    pub fn proposed(&self) -> freshen_core::rollout::Proposed {
        freshen_core::rollout::Proposed {
            number: self.number,
            state: self.state,
            merged_at: self.merged_at,
        }
    }
}

impl Refresh {
    /// The kind of the workload it changes.
    pub fn workload_kind(&self) -> freshen_core::kind::Kind {
        self.spec
            .workload_kind
            .unwrap_or(freshen_core::kind::Kind::Deployment)
    }

    /// The state machine's view of the spec.
    pub fn target(&self, name: &str) -> Target {
        Target {
            name: name.to_owned(),
            container: self.spec.container.clone(),
            reason: self.spec.reason,
            from_image: self.spec.from_image.clone(),
            to_image: self.spec.to_image.clone(),
            settings: self.spec.rollout.clone(),
            template: self.spec.template_fingerprint.clone(),
        }
    }

    /// The stored progress (none yet: Pending).
    pub fn progress(&self) -> Progress {
        self.status
            .as_ref()
            .map(|s| s.progress.clone())
            .unwrap_or_default()
    }
}

/// What freshen does with a workload a GitOps reconciler (Argo CD, Flux)
/// manages.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitOpsMode {
    /// Leave it (default): an Event says why and what to configure.
    #[serde(alias = "ignore")]
    Ignore,
    /// Patch it anyway (the reconciler may revert the change).
    #[serde(alias = "patch")]
    Patch,
    /// Canary in the cluster, then commit the proven image to the
    /// workload's git source (`spec.refresh.git`); the reconciler applies
    /// it. A failure after promotion is reverted in git.
    #[serde(alias = "commit")]
    Commit,
    /// As `Commit`, through a pull request (`spec.refresh.git.pullRequest`)
    /// that a reviewer merges; closing it unmerged rejects the digest.
    #[serde(alias = "pullRequest", alias = "pull-request")]
    PullRequest,
}

impl From<GitOpsMode> for freshen_core::plan::GitOpsAction {
    fn from(m: GitOpsMode) -> Self {
        match m {
            GitOpsMode::Ignore => Self::Ignore,
            GitOpsMode::Patch => Self::Patch,
            GitOpsMode::Commit => Self::Commit,
            GitOpsMode::PullRequest => Self::PullRequest,
        }
    }
}

/// `spec.git`: the repositories freshen may push proven images to, and how.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSpec {
    /// URL prefixes of the repositories freshen may push to, e.g.
    /// `https://git.example.com/team-a/`; `{namespace}` in an entry stands
    /// for the workload's namespace. A source found elsewhere is held,
    /// and the Secret's credentials are sent to no other URL. 1 to 32
    /// entries of at most 512 characters.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 512)))]
    pub repositories: Vec<String>,
    /// A Secret with `username` and `password` (HTTPS; a token as the
    /// password), or `identity` (an SSH private key) and `known_hosts`. A
    /// RefreshPolicy's is read from its namespace, a ClusterRefreshPolicy's
    /// from freshen's. Absent: push without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
    /// The commits' author (default `freshen <freshen@users.noreply.freshen.dev>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<GitAuthor>,
    /// The branch for a `freshen.dev/git-source` that names none (default
    /// `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: Option<String>,
    /// The commit message's first line; `{workload}`, `{namespace}`,
    /// `{container}`, `{image}` and `{refresh}` are replaced (default
    /// `freshen: {namespace}/{workload} {container} -> {image}`). A commit
    /// for several workloads lists each below it. At most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub message: Option<String>,
    /// How pull requests are opened, for `gitops: PullRequest` (required
    /// there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestSpec>,
}

/// `spec.git.pullRequest`: the forge whose API opens freshen's pull
/// requests, and their labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PullRequestSpec {
    /// The forge's API: GitHub (and GitHub Enterprise Server), GitLab, or
    /// Gitea (and Forgejo). Its address is derived from the repository's
    /// URL, and the Secret's `token` (else `password`) is sent to it.
    pub provider: freshen_core::gitops::forge::Provider,
    /// Labels put on each pull request, at most 10 of 1 to 50 characters
    /// without commas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 50)))]
    pub labels: Vec<String>,
}

/// A Secret by name, in the namespace its policy reads from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LocalSecretRef {
    /// The name of the Secret, in the namespace the policy reads Secrets
    /// from.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A commit author.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GitAuthor {
    /// The author's name, at most 128 characters.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The author's e-mail address, at most 254 characters.
    #[schemars(length(min = 3, max = 254))]
    pub email: String,
}

impl GitSpec {
    /// The first field that cannot be used, and why.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |field: String, message: String| SpecError::Git { field, message };
        if self.repositories.is_empty() || self.repositories.len() > 32 {
            return Err(bad(
                "spec.git.repositories".into(),
                "expected 1 to 32 URL prefixes".into(),
            ));
        }
        for (i, r) in self.repositories.iter().enumerate() {
            freshen_core::gitops::source::check_prefix(&r.replace("{namespace}", "ns")).map_err(
                |e| {
                    bad(
                        format!("spec.git.repositories[{i}]"),
                        format!("{e}; expected a URL prefix such as https://git.example.com/team/"),
                    )
                },
            )?;
        }
        if let Some(b) = &self.branch {
            freshen_core::gitops::source::check_branch(b)
                .map_err(|e| bad("spec.git.branch".into(), e.to_string()))?;
        }
        if let Some(a) = &self.author
            && (a.name.chars().any(|c| c.is_control() || "<>".contains(c))
                || !a.email.contains('@')
                || a.email
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || "<>".contains(c)))
        {
            return Err(bad(
                "spec.git.author".into(),
                "expected a name and an e-mail address without <, > or control characters".into(),
            ));
        }
        if let Some(m) = &self.message
            && m.chars().any(char::is_control)
        {
            return Err(bad("spec.git.message".into(), "expected one line".into()));
        }
        if let Some(pr) = &self.pull_request {
            freshen_core::gitops::forge::check_labels(&pr.labels)
                .map_err(|e| bad("spec.git.pullRequest.labels".into(), e))?;
        }
        Ok(())
    }
}

/// The Prometheus check of a canary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusCheck {
    /// A PromQL instant query; its first sample must stay at or below `max`.
    /// At most 4096 characters.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The highest passing value.
    pub max: f64,
    /// What an empty result means: fail (default), pass or inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    /// Query errors in a row that fail the analysis (default 2, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_consecutive_errors: Option<u32>,
}

/// How a canary is judged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Between checks (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub interval: Option<String>,
    /// Passing checks needed to promote (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub iterations: Option<u32>,
    /// Container restarts tolerated in the new pods (default 0, at most
    /// 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000))]
    pub max_restarts: Option<u32>,
    /// How long the new pods have to become Ready (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub readiness_timeout: Option<String>,
    /// An optional Prometheus query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
}

/// How new digests are rolled out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Canary (default) or Rolling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Canary size in percent of the replicas, rounded up, at least one pod
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub canary_weight: Option<u32>,
    /// Analysis of the new pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

/// What a policy says about refreshing the workloads it governs; each unset
/// field falls through to the next level.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRefresh {
    /// Roll out new digests of the tags the containers name (default false:
    /// measure only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_tag: Option<bool>,
    /// How long ago a new digest must have been built before it is rolled
    /// out, e.g. `2h` (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub min_digest_age: Option<String>,
    /// Start no refresh (those under way finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Refreshes start only inside one of these, e.g. `Mon-Fri 09:00-16:00
    /// Europe/Berlin` (default: any time). At most 20 windows of at most
    /// 128 characters each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20), inner(length(max = 128)))]
    pub windows: Option<Vec<String>>,
    /// Active refreshes of this policy's workloads, at most (1 to 10000);
    /// a ClusterRefreshPolicy's applies in each namespace it governs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_concurrent: Option<u32>,
    /// Workloads Argo CD or Flux manage: Ignore (default), Patch, or
    /// Commit (canary in the cluster, then commit the proven image to git;
    /// needs `git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitOpsMode>,
    /// Where and how freshen commits for `gitops: Commit`: the
    /// repositories it may push to and the credentials it pushes with. Taken
    /// whole from the governing RefreshPolicy, else the governing
    /// ClusterRefreshPolicy (fields are not mixed across the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSpec>,
    /// How new digests are rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Only digests signed by one of these authorities are rolled out. A
    /// ClusterRefreshPolicy's requirement holds for every workload it
    /// matches; a RefreshPolicy's is added to it, never replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// `spec.verify`: the signatures a new digest must carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// `Enforce` (default): a digest without a trusted signature is not
    /// rolled out; `Audit`: it is, and its verdict is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VerifyMode>,
    /// Any one suffices (1 to 16).
    #[schemars(length(min = 1, max = 16))]
    pub authorities: Vec<KeyAuthoritySpec>,
    /// Attestations a new digest must also carry, each signed by one of
    /// the authorities (at most 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub attestations: Option<Vec<AttestationSpec>>,
    /// What vulnerability attestations decide. Setting either field
    /// requires a vulnerability attestation signed by an authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<VulnerabilitiesSpec>,
}

/// An attestation a new digest must carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttestationSpec {
    /// Its predicate type: `https://slsa.dev/provenance/v1` (or `v0.2`),
    /// `https://cosign.sigstore.dev/attestation/vuln/v1`, or
    /// `https://in-toto.io/attestation/vulns` (any version).
    #[schemars(length(min = 1, max = 256))]
    pub predicate_type: String,
    /// Provenance only: patterns the builder id must match one of (`*`
    /// matches any characters), e.g. `https://github.com/acme/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub builder_id: Option<Vec<String>>,
    /// Provenance only: patterns the source repository must match one
    /// of, e.g. `https://github.com/acme/shop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub source: Option<Vec<String>>,
}

/// `spec.verify.vulnerabilities`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VulnerabilitiesSpec {
    /// Never roll out a digest whose scan finds more Critical or High
    /// vulnerabilities than the running digest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_regression: Option<bool>,
    /// `Critical`: a digest whose scan drops a Critical finding of the
    /// running digest's skips `minDigestAge` and the maintenance windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgent_when: Option<UrgentWhen>,
}

/// When a fix is urgent.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrgentWhen {
    /// It fixes a Critical finding.
    Critical,
}

/// What an unverified digest does: `Enforce` holds it, `Audit` lets it
/// through and reports it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    /// Hold the refresh.
    Enforce,
    /// Report only.
    Audit,
}

/// A trusted signer: its name, and a public key or a keyless identity
/// (exactly one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyAuthoritySpec {
    /// Its name, in Events and the report (1 to 63 characters).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The key its signatures verify with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySpec>,
    /// Keyless signing: a certificate authority of a trusted root
    /// certifies the signer's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessSpec>,
}

/// Keyless signatures (Fulcio certificates, or a private CA's): who must
/// have signed, and the trusted root that certifies it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeylessSpec {
    /// The OIDC issuer the certificate must name, e.g.
    /// `https://token.actions.githubusercontent.com`.
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,
    /// The identity (certificate SAN: e-mail or URI) exactly; or use
    /// `subjectRegExp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject: Option<String>,
    /// A regular expression the whole identity must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject_reg_exp: Option<String>,
    /// A ConfigMap key holding sigstore's `trusted_root.json`: the
    /// certificate authorities and transparency logs trusted.
    pub trusted_root: KeyRef,
    /// Refuse a signature no transparency log entry of the trusted root
    /// vouches for (checked offline, from the bundle's signed entry
    /// timestamp). Without it, the certificate must be valid at the time
    /// of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_transparency_log: Option<bool>,
}

impl KeyAuthoritySpec {
    /// An authority trusting `key`.
    pub fn with_key(name: impl Into<String>, key: KeySpec) -> Self {
        Self {
            name: name.into(),
            key: Some(key),
            keyless: None,
        }
    }

    /// What it trusts, for a policy in `namespace` (`None`: a
    /// ClusterRefreshPolicy); the error names the field.
    pub fn source(
        &self,
        namespace: Option<&str>,
    ) -> Result<
        (
            freshen_core::verify::KeySource,
            Option<freshen_core::verify::KeylessIdentity>,
        ),
        (String, String),
    > {
        use freshen_core::verify::{KeySource, KeylessIdentity, ObjectKey, SubjectMatch};
        match (&self.key, &self.keyless) {
            (Some(key), None) => key
                .source(namespace)
                .map(|s| (s, None))
                .map_err(|e| ("key".into(), e)),
            (None, Some(k)) => {
                let subject = match (&k.subject, &k.subject_reg_exp) {
                    (Some(s), None) => SubjectMatch::Exact(s.clone()),
                    (None, Some(p)) => SubjectMatch::Pattern(p.clone()),
                    _ => {
                        return Err((
                            "keyless".into(),
                            "expected exactly one of subject and subjectRegExp".into(),
                        ));
                    }
                };
                let root = KeySource::ConfigMap(ObjectKey {
                    namespace: namespace.map(str::to_owned),
                    name: k.trusted_root.name.clone(),
                    key: k.trusted_root.key.clone(),
                });
                Ok((
                    root,
                    Some(KeylessIdentity {
                        issuer: k.issuer.clone(),
                        subject,
                        require_transparency_log: k.require_transparency_log.unwrap_or(false),
                    }),
                ))
            }
            _ => Err((
                "key".into(),
                "expected exactly one of key and keyless".into(),
            )),
        }
    }
}

/// A cosign public key: exactly one of `pem`, `secretRef`, `configMapRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySpec {
    /// The PEM `PUBLIC KEY` (`cosign.pub`): ECDSA P-256 or P-384, Ed25519
    /// or RSA (2048 to 4096 bits); at most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub pem: Option<String>,
    /// The PEM in a Secret's key, read when a digest is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeyRef>,
    /// The PEM in a ConfigMap's key (a public key is no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<KeyRef>,
}

/// A key of a Secret's or ConfigMap's data, in the policy's namespace (a
/// ClusterRefreshPolicy's: freshen's own namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its data, e.g. `cosign.pub`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl KeySpec {
    /// An inline key.
    pub fn inline(pem: impl Into<String>) -> Self {
        Self {
            pem: Some(pem.into()),
            ..Self::default()
        }
    }

    /// Where the key is, for a policy in `namespace` (`None`: a
    /// ClusterRefreshPolicy); the error when not exactly one is given.
    pub fn source(
        &self,
        namespace: Option<&str>,
    ) -> Result<freshen_core::verify::KeySource, String> {
        use freshen_core::verify::{KeySource, ObjectKey};
        let at = |r: &KeyRef| ObjectKey {
            namespace: namespace.map(str::to_owned),
            name: r.name.clone(),
            key: r.key.clone(),
        };
        match (&self.pem, &self.secret_ref, &self.config_map_ref) {
            (Some(pem), None, None) => Ok(KeySource::Pem(pem.clone())),
            (None, Some(r), None) => Ok(KeySource::Secret(at(r))),
            (None, None, Some(r)) => Ok(KeySource::ConfigMap(at(r))),
            _ => Err("expected exactly one of pem, secretRef and configMapRef".into()),
        }
    }
}

impl VerifySpec {
    /// Every authority can be used: a key freshen can read, a name used
    /// once; else the first bad field and why.
    pub fn check(&self) -> Result<(), SpecError> {
        for (i, a) in self.authorities.iter().enumerate() {
            if self.authorities[..i].iter().any(|b| b.name == a.name) {
                return Err(SpecError::Key {
                    field: format!("spec.verify.authorities[{i}].name"),
                    message: format!("{:?} names two authorities; names must be unique", a.name),
                });
            }
            let (source, keyless) = a.source(None).map_err(|(field, message)| SpecError::Key {
                field: format!("spec.verify.authorities[{i}].{field}"),
                message,
            })?;
            if let Some(freshen_core::verify::KeylessIdentity {
                subject: freshen_core::verify::SubjectMatch::Pattern(p),
                ..
            }) = &keyless
            {
                freshen_verify::keyless::Subject::pattern(p).map_err(|e| SpecError::Key {
                    field: format!("spec.verify.authorities[{i}].keyless.subjectRegExp"),
                    message: e.to_string(),
                })?;
            }
            if let freshen_core::verify::KeySource::Pem(pem) = source {
                freshen_verify::PublicKey::from_pem(&pem).map_err(|e| SpecError::Key {
                    field: format!("spec.verify.authorities[{i}].key.pem"),
                    message: e.to_string(),
                })?;
            }
        }
        for (i, a) in self.attestations.iter().flatten().enumerate() {
            check_attestation(a).map_err(|(field, message)| SpecError::Key {
                field: format!("spec.verify.attestations[{i}].{field}"),
                message,
            })?;
        }
        Ok(())
    }

    /// The requirement this policy (`policy`, as `GOVERNED_BY` names it;
    /// in `namespace`, `None` for a ClusterRefreshPolicy) adds. A key
    /// given more than one way (refused by [`VerifySpec::check`]) counts as
    /// an empty PEM: the gate then fails closed.
    pub fn authority_set(
        &self,
        policy: String,
        namespace: Option<&str>,
    ) -> freshen_core::verify::AuthoritySet {
        freshen_core::verify::AuthoritySet {
            policy,
            mode: match self.mode {
                Some(VerifyMode::Audit) => freshen_core::verify::Mode::Audit,
                _ => freshen_core::verify::Mode::Enforce,
            },
            authorities: self
                .authorities
                .iter()
                .map(|a| {
                    let (key, keyless) = a
                        .source(namespace)
                        .unwrap_or((freshen_core::verify::KeySource::Pem(String::new()), None));
                    freshen_core::verify::KeyAuthority {
                        name: a.name.clone(),
                        key,
                        keyless,
                    }
                })
                .collect(),
            attestations: self.checks(),
            vulnerabilities: freshen_core::verify::VulnPolicy {
                no_regression: self
                    .vulnerabilities
                    .as_ref()
                    .and_then(|v| v.no_regression)
                    .unwrap_or(false),
                urgent_when_critical: self
                    .vulnerabilities
                    .as_ref()
                    .is_some_and(|v| v.urgent_when == Some(UrgentWhen::Critical)),
            },
        }
    }

    /// The attestation checks, with a vulnerability scan required when
    /// `vulnerabilities` reads one.
    fn checks(&self) -> Vec<freshen_core::verify::AttestationCheck> {
        use freshen_core::verify::{AttestationCheck, is_vulnerability_scan};
        let mut checks: Vec<AttestationCheck> = self
            .attestations
            .iter()
            .flatten()
            .map(|a| match is_vulnerability_scan(&a.predicate_type) {
                true => AttestationCheck::Vulnerabilities,
                false => AttestationCheck::Provenance {
                    builder_id: a.builder_id.clone().unwrap_or_default(),
                    source: a.source.clone().unwrap_or_default(),
                },
            })
            .collect();
        let reads_scans = self
            .vulnerabilities
            .as_ref()
            .is_some_and(|v| v.no_regression == Some(true) || v.urgent_when.is_some());
        if reads_scans && !checks.contains(&AttestationCheck::Vulnerabilities) {
            checks.push(AttestationCheck::Vulnerabilities);
        }
        checks
    }
}

/// One attestation's fields make sense: a predicate type freshen reads,
/// patterns only for provenance, each at most 256 characters.
fn check_attestation(a: &AttestationSpec) -> Result<(), (&'static str, String)> {
    use freshen_core::verify::{SLSA_PROVENANCE_V1, SLSA_PROVENANCE_V02, is_vulnerability_scan};
    let provenance =
        a.predicate_type == SLSA_PROVENANCE_V1 || a.predicate_type == SLSA_PROVENANCE_V02;
    if !provenance && !is_vulnerability_scan(&a.predicate_type) {
        return Err((
            "predicateType",
            format!(
                "{:?} is not one freshen checks; expected {SLSA_PROVENANCE_V1}, \
                 {SLSA_PROVENANCE_V02}, {} or {}/<version>",
                a.predicate_type,
                freshen_core::verify::COSIGN_VULN,
                freshen_core::verify::IN_TOTO_VULNS
            ),
        ));
    }
    for (field, patterns) in [("builderId", &a.builder_id), ("source", &a.source)] {
        let Some(patterns) = patterns else { continue };
        if !provenance {
            return Err((field, "only a provenance attestation has one".into()));
        }
        if patterns.len() > 16 || patterns.iter().any(|p| p.is_empty() || p.len() > 256) {
            return Err((
                field,
                "expected at most 16 patterns of 1 to 256 characters".into(),
            ));
        }
    }
    Ok(())
}

impl PolicyRefresh {
    /// The settings, or the first bad field.
    pub fn parse(&self) -> Result<Preferences, SpecError> {
        let windows = self
            .windows
            .as_ref()
            .map(|ws| {
                ws.iter()
                    .map(|w| w.parse::<Window>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| SpecError::Window(e.to_string()))?;
        let rollout = self.rollout.clone().unwrap_or_default();
        let analysis = rollout.analysis.unwrap_or_default();
        if let Some(git) = &self.git {
            git.check()?;
        }
        Ok(Preferences {
            follow_tag: self.follow_tag,
            min_digest_age: spec_duration("minDigestAge", self.min_digest_age.as_deref())?,
            suspend: self.suspend,
            windows,
            max_concurrent: self.max_concurrent,
            gitops: self.gitops.map(Into::into),
            strategy: rollout.strategy,
            canary_weight_percent: rollout.canary_weight,
            interval: spec_duration("rollout.analysis.interval", analysis.interval.as_deref())?,
            iterations: analysis.iterations,
            max_restarts: analysis.max_restarts,
            readiness_timeout: spec_duration(
                "rollout.analysis.readinessTimeout",
                analysis.readiness_timeout.as_deref(),
            )?,
            metric: analysis.prometheus.map(|p| MetricCheck {
                query: p.query,
                max: p.max,
                on_no_data: p.on_no_data.unwrap_or_default(),
                max_consecutive_errors: p.max_consecutive_errors.unwrap_or(2),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_spec_names_the_field_it_cannot_use() {
        let ok = GitSpec {
            repositories: vec!["https://git.example.com/{namespace}/".into()],
            ..GitSpec::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let field = |spec: GitSpec| match spec.check() {
            Err(SpecError::Git { field, .. }) => field,
            other => format!("{other:?}"),
        };
        assert_eq!(
            field(GitSpec {
                repositories: vec![],
                ..ok.clone()
            }),
            "spec.git.repositories"
        );
        assert_eq!(
            field(GitSpec {
                repositories: vec!["git.example.com/x".into()],
                ..ok.clone()
            }),
            "spec.git.repositories[0]"
        );
        assert_eq!(
            field(GitSpec {
                branch: Some("a..b".into()),
                ..ok.clone()
            }),
            "spec.git.branch"
        );
        let author = GitAuthor {
            name: "x".into(),
            email: "no-at".into(),
        };
        assert_eq!(
            field(GitSpec {
                author: Some(author),
                ..ok.clone()
            }),
            "spec.git.author"
        );
        assert_eq!(
            field(GitSpec {
                message: Some("a\nb".into()),
                ..ok
            }),
            "spec.git.message"
        );
    }

    #[test]
    fn verify_authorities_must_be_usable_keys_named_once() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEl3tXSqQKivA3qWOXfIt6dWxsbw4f\nGOCXr9H6v0gt6k/Oly99frnLrPfhhPF4s+ceW7cjlNMbqagIBxAllTK4NQ==\n-----END PUBLIC KEY-----\n";
        let authority =
            |name: &str, pem: &str| KeyAuthoritySpec::with_key(name, KeySpec::inline(pem));
        let ok = VerifySpec {
            mode: None,
            authorities: vec![authority("platform", pem)],
            ..VerifySpec::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let twice = VerifySpec {
            authorities: vec![authority("platform", pem), authority("platform", pem)],
            ..ok.clone()
        };
        let e = twice
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("spec.verify.authorities[1].name"), "{e}");
        let secret = VerifySpec {
            authorities: vec![authority(
                "ci",
                "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----",
            )],
            ..ok
        };
        let e = secret
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("spec.verify.authorities[0].key.pem: expected a PEM"),
            "{e}"
        );
        assert!(e.contains("EC PRIVATE KEY"), "{e}");
    }

    #[test]
    fn attestations_name_a_known_predicate_and_patterns_only_for_provenance() {
        use freshen_core::verify::AttestationCheck;
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEl3tXSqQKivA3qWOXfIt6dWxsbw4f\nGOCXr9H6v0gt6k/Oly99frnLrPfhhPF4s+ceW7cjlNMbqagIBxAllTK4NQ==\n-----END PUBLIC KEY-----\n";
        let spec =
            |attestations: Vec<AttestationSpec>, vulns: Option<VulnerabilitiesSpec>| VerifySpec {
                mode: None,
                authorities: vec![KeyAuthoritySpec::with_key("platform", KeySpec::inline(pem))],
                attestations: Some(attestations),
                vulnerabilities: vulns,
            };
        let provenance = AttestationSpec {
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            builder_id: Some(vec!["https://ci.example/*".into()]),
            source: None,
        };
        let ok = spec(
            vec![provenance.clone()],
            Some(VulnerabilitiesSpec {
                no_regression: Some(true),
                urgent_when: None,
            }),
        );
        assert_eq!(ok.check(), Ok(()));
        let set = ok.authority_set("ClusterRefreshPolicy/platform".into(), None);
        assert_eq!(
            set.attestations,
            vec![
                AttestationCheck::Provenance {
                    builder_id: vec!["https://ci.example/*".into()],
                    source: Vec::new()
                },
                AttestationCheck::Vulnerabilities
            ],
            "a scan is required when vulnerabilities reads one"
        );
        assert!(set.vulnerabilities.no_regression && !set.vulnerabilities.urgent_when_critical);
        let unknown = spec(
            vec![AttestationSpec {
                predicate_type: "https://example.com/whatever".into(),
                ..provenance.clone()
            }],
            None,
        );
        let e = unknown
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("spec.verify.attestations[0].predicateType"),
            "{e}"
        );
        let misplaced = spec(
            vec![AttestationSpec {
                predicate_type: "https://cosign.sigstore.dev/attestation/vuln/v1".into(),
                ..provenance
            }],
            None,
        );
        let e = misplaced
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("spec.verify.attestations[0].builderId: only a provenance"),
            "{e}"
        );
    }

    #[test]
    fn the_cel_duration_rule_names_the_parser_maximum() {
        let max = freshen_core::duration::MAX_DURATION_SECONDS;
        assert!(
            DURATION_RULE.ends_with(&format!("<= {max}")),
            "{DURATION_RULE}"
        );
    }

    #[test]
    fn policy_refresh_settings_parse_with_field_names_in_errors() {
        let spec: PolicyRefresh = serde_json::from_value(serde_json::json!({
            "followTag": true,
            "minDigestAge": "2h",
            "windows": ["Mon-Fri 09:00-16:00 Europe/Berlin"],
            "rollout": {"strategy": "rolling", "canaryWeight": 25,
                        "analysis": {"interval": "10s", "iterations": 3,
                                     "prometheus": {"query": "up", "max": 1.5, "onNoData": "pass"}}}
        }))
        .unwrap_or_default();
        let p = spec.parse().unwrap_or_default();
        assert_eq!(p.follow_tag, Some(true));
        assert_eq!(p.min_digest_age, Some(std::time::Duration::from_secs(7200)));
        let s = p.settings();
        assert_eq!(
            (
                s.strategy,
                s.canary_weight_percent,
                s.interval_seconds,
                s.iterations
            ),
            (Strategy::Rolling, 25, 10, 3)
        );
        assert_eq!(
            s.metric
                .map(|m| (m.max, m.on_no_data, m.max_consecutive_errors)),
            Some((1.5, OnNoData::Pass, 2))
        );
        let bad = PolicyRefresh {
            windows: Some(vec!["Mon-Fry 09:00-16:00".into()]),
            ..PolicyRefresh::default()
        };
        let e = bad.parse().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("spec.windows: \"Mon-Fry 09:00-16:00\" is not a window: unknown day"),
            "{e}"
        );
        let bad = PolicyRefresh {
            rollout: Some(RolloutSpec {
                analysis: Some(AnalysisSpec {
                    interval: Some("soon".into()),
                    ..AnalysisSpec::default()
                }),
                ..RolloutSpec::default()
            }),
            ..PolicyRefresh::default()
        };
        let e = bad.parse().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("spec.rollout.analysis.interval:"), "{e}");
    }
}
