//! `freshen report`: a one-shot scan of a cluster's Deployments with the
//! operator's own judgement ([`crate::workload::assess`]), for anyone with a
//! kubeconfig. Nothing is installed and no CRD is required: without the
//! policy CRDs, only annotations and the given defaults apply.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use chrono::{DateTime, Utc};
use freshen_api::refresh::{REJECTED_DIGESTS, is_canary};
use freshen_api::{ClusterRefreshPolicy, Rebuild, Refresh, RefreshMode, RefreshPolicy};
use freshen_core::observe::PodFacts;
use freshen_core::plan::parse_rejected;
use freshen_core::policy::{self, Limits, Sourced};
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::Phase;
use freshen_core::{HumanDuration, short_age};
use freshen_registry::{Platform, RegistryClient};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::runtime::objects::{owning_workload, workload_ref};
use crate::runtime::pod_index::Owned;
use crate::runtime::records::WorkloadKey;
use crate::scoped;
use crate::workload::assess::{
    Accounts, Lookup, Problem, configure, measure, node_platform, platform_of, pull_credentials,
};
use crate::workload::pod_facts;
use crate::workload::tags::TagClock;
use freshen_core::kind::{Kind, OWN_REPLICASETS, measured_by_owner};

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// One namespace, or all when `None`.
    pub namespace: Option<String>,
    /// A label selector on workloads of every kind, e.g. `tier=web`.
    pub selector: Option<String>,
    /// Limits for workloads no annotation or policy sets one for.
    pub defaults: Limits,
    /// freshen's namespace, where a ClusterRefreshPolicy's key objects
    /// are (empty: `freshen-system`).
    pub freshen_namespace: String,
}

/// A limit in force, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportLimit {
    /// The limit, e.g. `30d`.
    pub max: String,
    /// The limit in seconds.
    pub max_seconds: u64,
    /// Who set it: `annotation`, `RefreshPolicy ns/name`,
    /// `ClusterRefreshPolicy name` or `default`.
    pub source: String,
}

/// One container of one Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// The workload's kind: `Deployment`, `StatefulSet`, ... or `Pod` for
    /// a pod no workload controls.
    pub kind: String,
    /// The workload's name.
    pub workload: String,
    /// Container.
    pub container: String,
    /// Image repository, without tag or digest.
    pub image: String,
    /// How long ago the running image was built; `None` when unknown.
    pub image_age_seconds: Option<u64>,
    /// How long its oldest instance has been running.
    pub container_age_seconds: Option<u64>,
    /// The base image followed, e.g. `docker.io/library/debian:12`.
    pub base_image: Option<String>,
    /// Whether the base image moved on; `None` when unknown.
    pub base_stale: Option<bool>,
    /// Since when (seconds) the base has been stale.
    pub base_stale_seconds: Option<u64>,
    /// Whether the tag names a digest no pod runs.
    pub update_available: Option<bool>,
    /// The image age limit in force.
    pub max_image_age: Option<ReportLimit>,
    /// The container age limit in force.
    pub max_container_age: Option<ReportLimit>,
    /// The limits it is past.
    pub violations: Vec<String>,
    /// Its violations are snoozed (`freshen.dev/snooze-until`).
    pub snoozed: bool,
    /// The workload's configuration errors.
    pub config_errors: Vec<String>,
    /// What could not be measured, e.g. an unreachable registry.
    pub problems: Vec<String>,
    /// The active Refresh of the container, as `name (Phase)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// Digests rolled back and never proposed again for the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_digests: Vec<String>,
    /// The rebuild of the container's image under way or last finished,
    /// as `namespace/name (Phase)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<String>,
    /// What the verification gate says of the running digest, where a
    /// policy sets `spec.verify`: `yes (key <authorities>)`, `no`,
    /// `invalid`, `untrusted`, `attestation failed` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<String>,
    /// Why it is not verified, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
}

impl Row {
    /// Past a limit and not snoozed.
    pub fn violating(&self) -> bool {
        !self.violations.is_empty() && !self.snoozed
    }

    /// The largest age-to-limit ratio: how close to (or far past) a limit.
    fn pressure(&self) -> f64 {
        let ratio = |age: Option<u64>, limit: &Option<ReportLimit>| match (age, limit) {
            (Some(age), Some(limit)) if limit.max_seconds > 0 => {
                age as f64 / limit.max_seconds as f64
            }
            _ => 0.0,
        };
        ratio(self.image_age_seconds, &self.max_image_age)
            .max(ratio(self.container_age_seconds, &self.max_container_age))
    }
}

/// The outcome of a scan.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When it was taken.
    pub generated_at: Option<DateTime<Utc>>,
    /// One per container, worst first.
    pub rows: Vec<Row>,
    /// What limited the scan (e.g. policies not readable).
    pub warnings: Vec<String>,
}

impl Report {
    /// Rows past a limit and not snoozed.
    pub fn violating(&self) -> usize {
        self.rows.iter().filter(|r| r.violating()).count()
    }
}

/// Why a scan could not be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Listing Deployments or Pods failed.
    #[error("cannot list {what}{scope}: {hint}")]
    List {
        /// `deployments` or `pods`.
        what: &'static str,
        /// ` in namespace x` or empty.
        scope: String,
        /// What went wrong and what to do.
        hint: String,
    },
}

fn list_hint(error: &kube::Error, what: &str) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "permission denied; check with `kubectl auth can-i list {what}` ({})",
            status.message
        ),
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => format!("the cluster is unreachable: {other}"),
    }
}

/// Lists what is optional to the scan: a missing CRD or a forbidden list
/// leaves it empty with a warning.
async fn list_optional<K>(
    api: Api<K>,
    what: &str,
    without: &str,
    warnings: &mut Vec<String>,
) -> Vec<Arc<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().map(Arc::new).collect(),
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => {
            warnings.push(format!(
                "{what} not read ({}); {without}",
                list_hint(&e, what)
            ));
            Vec::new()
        }
    }
}

/// Scans the cluster: every Deployment in scope except those annotated
/// `freshen.dev/refresh: disabled`, each container judged as the operator
/// would judge it now. Steps: list the workloads -> read what configures
/// them -> measure each (concurrently) -> add refreshes -> sort.
pub async fn build(
    client: Client,
    registry: &Arc<RegistryClient>,
    options: &ReportOptions,
) -> Result<Report, ReportError> {
    let now = Utc::now();
    let mut warnings = Vec::new();
    let (deployments, pods) = list_workloads(&client, options, &mut warnings).await?;
    let cluster = Cluster::read(&client, options.namespace.as_deref(), &mut warnings).await;
    let scan = Scan {
        client: &client,
        registry,
        cluster: &cluster,
        defaults: &options.defaults,
        now,
        tags: TagClock::in_memory(),
        accounts: list_accounts(&client, options.namespace.as_deref()).await,
        verdicts: crate::workload::verification::Verdicts::new(
            client.clone(),
            match options.freshen_namespace.as_str() {
                "" => "freshen-system".to_owned(),
                n => n.to_owned(),
            },
        ),
    };
    let mut rows = scan.measure_all(&deployments, &pods).await;
    let refreshes = list_optional(
        scoped::<Refresh>(&client, options.namespace.as_deref()),
        "refreshes",
        "active refreshes and rolled-back digests are not shown",
        &mut warnings,
    )
    .await;
    add_refreshes(&mut rows, &refreshes, &deployments);
    let rebuilds = list_optional(
        Api::<Rebuild>::all(client.clone()),
        "rebuilds",
        "rebuilds are not shown",
        &mut warnings,
    )
    .await;
    add_rebuilds(&mut rows, &rebuilds, &deployments);
    sort_worst_first(&mut rows);
    Ok(Report {
        generated_at: Some(now),
        rows,
        warnings,
    })
}

/// The workloads of every kind in scope (by namespace and selector), the
/// pods no workload controls among them, and every pod that may be
/// theirs. Without Deployments or pods there is no report; another kind
/// that cannot be listed is left out with a warning (a cluster without
/// Argo Rollouts has no Rollouts to list).
async fn list_workloads(
    client: &Client,
    options: &ReportOptions,
    warnings: &mut Vec<String>,
) -> Result<(Vec<CachedWorkload>, Vec<CachedPod>), ReportError> {
    let namespace = options.namespace.as_deref();
    let scope = namespace
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default();
    let failed = |what: &'static str| {
        let scope = scope.clone();
        move |e: kube::Error| ReportError::List {
            what,
            scope,
            hint: list_hint(&e, what),
        }
    };
    let mut params = ListParams::default();
    if let Some(selector) = &options.selector {
        params = params.labels(selector);
    }
    let mut workloads = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Pod) {
        let api: Api<CachedWorkload> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &kind),
            None => Api::all_with(client.clone(), &kind),
        };
        let params = match (kind, &options.selector) {
            (Kind::ReplicaSet, Some(selector)) => {
                ListParams::default().labels(&format!("{selector},{OWN_REPLICASETS}"))
            }
            (Kind::ReplicaSet, None) => ListParams::default().labels(OWN_REPLICASETS),
            _ => params.clone(),
        };
        match api.list(&params).await {
            Ok(list) => workloads.extend(list.items.into_iter().map(|mut w| {
                w.stamp(kind);
                w
            })),
            Err(e) if kind == Kind::Deployment => return Err(failed("deployments")(e)),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => warnings.push(format!(
                "{} not read ({}); they are not shown",
                kind.plural(),
                list_hint(&e, kind.plural())
            )),
        }
    }
    let pods = scoped::<CachedPod>(client, namespace)
        .list(&ListParams::default())
        .await
        .map_err(failed("pods"))?
        .items;
    let selected = match &options.selector {
        None => pods.clone(),
        Some(_) => {
            scoped::<CachedPod>(client, namespace)
                .list(&params)
                .await
                .map_err(failed("pods"))?
                .items
        }
    };
    workloads.extend(
        selected
            .iter()
            .filter(|p| owning_workload(p).is_some_and(|o| o.dyntype == Kind::Pod))
            .map(CachedWorkload::of_pod),
    );
    Ok((workloads, pods))
}

/// Every ServiceAccount in scope, by namespace and name: one request for
/// every workload's imagePullSecrets. `None` when they cannot be listed:
/// each is then read on its own, and a failure shows on its rows.
async fn list_accounts(
    client: &Client,
    namespace: Option<&str>,
) -> Option<BTreeMap<(String, String), Arc<ServiceAccount>>> {
    let accounts = scoped::<ServiceAccount>(client, namespace)
        .list(&ListParams::default())
        .await
        .ok()?
        .items;
    Some(
        accounts
            .into_iter()
            .map(|sa| {
                (
                    (sa.namespace().unwrap_or_default(), sa.name_any()),
                    Arc::new(sa),
                )
            })
            .collect(),
    )
}

/// What configures workloads besides their own annotations: policies, the
/// nodes' platforms and the namespaces' labels. Each is optional: what
/// cannot be read is left empty with a warning.
struct Cluster {
    policies: Vec<Arc<RefreshPolicy>>,
    cluster_policies: Vec<Arc<ClusterRefreshPolicy>>,
    nodes: BTreeMap<String, Platform>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cluster {
    async fn read(client: &Client, namespace: Option<&str>, warnings: &mut Vec<String>) -> Self {
        let unapplied = "they are not applied";
        let policies = list_optional(
            scoped(client, namespace),
            "refreshpolicies",
            unapplied,
            warnings,
        )
        .await;
        let cluster_policies = list_optional(
            Api::all(client.clone()),
            "clusterrefreshpolicies",
            unapplied,
            warnings,
        )
        .await;
        let nodes = list_optional::<Node>(
            Api::all(client.clone()),
            "nodes",
            "multi-arch images are read for the --platform given",
            warnings,
        )
        .await
        .iter()
        .filter_map(|n| Some((n.name_any(), node_platform(n)?)))
        .collect();
        // Namespace labels matter only to ClusterRefreshPolicies.
        let namespaces = if cluster_policies.is_empty() {
            BTreeMap::new()
        } else {
            list_optional::<Namespace>(
                Api::all(client.clone()),
                "namespaces",
                "ClusterRefreshPolicies with a namespaceSelector match nothing",
                warnings,
            )
            .await
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect()
        };
        Self {
            policies,
            cluster_policies,
            nodes,
            namespaces,
        }
    }
}

/// One scan's shared inputs.
struct Scan<'a> {
    client: &'a Client,
    registry: &'a Arc<RegistryClient>,
    cluster: &'a Cluster,
    defaults: &'a Limits,
    now: DateTime<Utc>,
    /// A one-shot scan knows no tag's history: first seen is now.
    tags: TagClock,
    /// The ServiceAccounts in scope, when they could be listed.
    accounts: Option<BTreeMap<(String, String), Arc<ServiceAccount>>>,
    /// Verification verdicts, shared by the workloads running a digest.
    verdicts: crate::workload::verification::Verdicts,
}

impl Scan<'_> {
    /// The rows of every Deployment in scope. Workloads are measured
    /// concurrently; the registry client bounds requests per registry and
    /// coalesces identical look-ups.
    async fn measure_all(&self, deployments: &[CachedWorkload], pods: &[CachedPod]) -> Vec<Row> {
        // A CronJob's Jobs' pods are the CronJob's.
        let cron_jobs: BTreeMap<(String, String), String> = deployments
            .iter()
            .filter(|w| w.kind == Kind::Job)
            .filter_map(|job| {
                let owner = job.owner()?;
                Some(((owner.namespace?, job.name_any()), owner.name))
            })
            .collect();
        let mut pods_of: BTreeMap<WorkloadKey, Vec<PodFacts>> = BTreeMap::new();
        for pod in pods {
            let Some(mut owner) = owning_workload(pod) else {
                continue;
            };
            let namespace = owner.namespace.clone().unwrap_or_default();
            if owner.dyntype == Kind::Job
                && let Some(cron_job) = cron_jobs.get(&(namespace.clone(), owner.name.clone()))
            {
                owner = workload_ref(Kind::CronJob, cron_job, &namespace);
            }
            let key = WorkloadKey {
                namespace,
                name: owner.name,
                kind: owner.dyntype,
            };
            pods_of.entry(key).or_default().push(pod_facts(pod));
        }
        let jobs = deployments.iter().map(|deploy| {
            let key = WorkloadKey {
                namespace: deploy.namespace().unwrap_or_default(),
                name: deploy.name_any(),
                kind: deploy.kind,
            };
            let pods = pods_of.get(&key).map(Vec::as_slice).unwrap_or_default();
            self.measure_one(deploy, pods)
        });
        futures::stream::iter(jobs)
            .buffer_unordered(16)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// The rows of one Deployment; none when it opted out or is a canary.
    async fn measure_one(&self, deploy: &CachedWorkload, pods: &[PodFacts]) -> Vec<Row> {
        let empty = BTreeMap::new();
        let namespace = deploy.namespace().unwrap_or_default();
        let cluster = self.cluster;
        let config = configure(
            deploy,
            cluster.namespaces.get(&namespace).unwrap_or(&empty),
            &cluster.policies,
            &cluster.cluster_policies,
            self.defaults,
        );
        let owner_kind = deploy
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.kind.as_str());
        if config.settings.refresh == Some(RefreshMode::Disabled)
            || is_canary(deploy.labels())
            || deploy.labels().contains_key(crate::rebuild::REBUILD_LABEL)
            || measured_by_owner(deploy.kind, owner_kind)
        {
            return Vec::new();
        }
        let platform = platform_of(pods, |node| cluster.nodes.get(node).cloned());
        let accounts = self
            .accounts
            .as_ref()
            .map_or(Accounts::Fetch, Accounts::Listed);
        let (keychain, secret_problems) = pull_credentials(self.client, deploy, accounts).await;
        let lookup = Lookup {
            registry: self.registry,
            keychain: &keychain,
            platform: platform.as_ref(),
            now: self.now,
            tags: &self.tags,
            origin: crate::workload::tags::Origin {
                namespace: &namespace,
                workload: &deploy.name_any(),
            },
        };
        let track_base = config.resolution.limits.track_base_image.value;
        let mut measurement = measure(&lookup, deploy, pods, track_base, None).await;
        crate::workload::verification::judge_running(
            &self.verdicts,
            &lookup,
            config.verify.as_ref(),
            &mut measurement.containers,
        )
        .await;
        rows_of(deploy, &config, measurement, &secret_problems, self.now)
    }
}

/// Each row's active Refresh and the digests rejected for its container
/// (the workload's annotation and rolled-back Refreshes).
fn add_refreshes(rows: &mut [Row], refreshes: &[Arc<Refresh>], deployments: &[CachedWorkload]) {
    let by_name = by_key(deployments);
    for row in rows {
        let mine: Vec<&Arc<Refresh>> = refreshes
            .iter()
            .filter(|r| {
                // Refreshes are of Deployments.
                row.kind == Kind::Deployment.as_str()
                    && r.namespace().as_deref() == Some(row.namespace.as_str())
                    && r.spec.workload == row.workload
                    && r.spec.container == row.container
            })
            .collect();
        row.refresh = mine
            .iter()
            .find(|r| !r.progress().phase.is_terminal())
            .map(|r| format!("{} ({})", r.name_any(), r.progress().phase));
        let annotated = by_name
            .get(&(
                row.namespace.clone(),
                row.kind.clone(),
                row.workload.clone(),
            ))
            .and_then(|d| d.annotations().get(REJECTED_DIGESTS).cloned())
            .unwrap_or_default();
        let mut rejected: Vec<String> = parse_rejected(&annotated)
            .into_iter()
            .filter(|(c, _)| *c == row.container)
            .map(|(_, d)| d.to_string())
            .chain(
                mine.iter()
                    .filter(|r| r.progress().phase == Phase::RolledBack)
                    .map(|r| r.spec.digest.clone()),
            )
            .collect();
        rejected.sort();
        rejected.dedup();
        row.rejected_digests = rejected;
    }
}

/// The workloads by `(namespace, kind, name)`, as rows name them.
fn by_key(workloads: &[CachedWorkload]) -> BTreeMap<(String, String, String), &CachedWorkload> {
    workloads
        .iter()
        .map(|w| {
            let key = (
                w.namespace().unwrap_or_default(),
                w.kind.to_string(),
                w.name_any(),
            );
            (key, w)
        })
        .collect()
}

/// Each row's newest Rebuild of its image (a superseded one is not shown).
fn add_rebuilds(rows: &mut [Row], rebuilds: &[Arc<Rebuild>], deployments: &[CachedWorkload]) {
    let by_name = by_key(deployments);
    for row in rows {
        let Some(image) = by_name
            .get(&(
                row.namespace.clone(),
                row.kind.clone(),
                row.workload.clone(),
            ))
            .and_then(|d| d.container(&row.container))
            .and_then(|c| freshen_core::ImageReference::parse(c.image.as_deref()?).ok())
            .map(|i| i.without_digest().to_string())
        else {
            continue;
        };
        row.rebuild = rebuilds
            .iter()
            .filter(|r| r.spec.image == image && r.progress().phase != RebuildPhase::Superseded)
            .max_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map(|r| {
                format!(
                    "{}/{} ({})",
                    r.namespace().unwrap_or_default(),
                    r.name_any(),
                    r.progress().phase
                )
            });
    }
}

/// The rows of one measured Deployment: one per measured container, and one
/// per container that could not be measured at all.
fn rows_of(
    deploy: &CachedWorkload,
    config: &crate::workload::assess::Configuration,
    measurement: crate::workload::assess::Measurement,
    secret_problems: &[String],
    now: DateTime<Utc>,
) -> Vec<Row> {
    let limits = &config.resolution.limits;
    let ages: Vec<_> = measurement.containers.iter().map(|c| c.ages(now)).collect();
    // The poll interval only decides a requeue, which a report has none of.
    let judgement = policy::judge(
        limits,
        &ages,
        config.settings.snooze_until,
        now,
        Duration::MAX,
    );
    let blank = |container: &str| Row {
        namespace: deploy.namespace().unwrap_or_default(),
        kind: deploy.kind.to_string(),
        workload: deploy.name_any(),
        container: container.to_owned(),
        image: String::new(),
        image_age_seconds: None,
        container_age_seconds: None,
        base_image: None,
        base_stale: None,
        base_stale_seconds: None,
        update_available: None,
        max_image_age: report_limit(&limits.max_image_age),
        max_container_age: report_limit(&limits.max_container_age),
        violations: Vec::new(),
        snoozed: judgement.snoozed,
        config_errors: config.errors.iter().map(ToString::to_string).collect(),
        problems: Vec::new(),
        refresh: None,
        rejected_digests: Vec::new(),
        rebuild: None,
        signed: None,
        verification: None,
    };
    let problems_of = |container: &str| -> Vec<String> {
        let registry = measurement
            .problems
            .iter()
            .filter(|(c, _)| c == container)
            .map(|(_, p)| p.to_string());
        // A pull secret that could not be used explains the look-ups that
        // failed without it.
        secret_problems.iter().cloned().chain(registry).collect()
    };
    let measured = measurement
        .containers
        .iter()
        .zip(&judgement.violations)
        .map(|(c, violations)| Row {
            image: c.image.clone(),
            image_age_seconds: c.image_age(now).map(|d| d.as_secs()),
            container_age_seconds: c.container_age(now).map(|d| d.as_secs()),
            base_image: c.base_image.clone(),
            base_stale: c.base_stale,
            base_stale_seconds: c
                .base_stale_since
                .map(|since| freshen_core::age::elapsed(since, now).as_secs()),
            update_available: c.update_available,
            signed: c.verification.as_ref().map(|j| signed_cell(&j.trust)),
            verification: c.verification.as_ref().and_then(unverified),
            violations: violations.iter().map(ToString::to_string).collect(),
            problems: problems_of(&c.container),
            ..blank(&c.container)
        });
    // A container that could not be measured at all still gets its row.
    let unmeasured = measurement
        .problems
        .iter()
        .filter(|(_, problem)| matches!(problem, Problem::InvalidImage(_)))
        .map(|(container, problem)| Row {
            problems: vec![problem.to_string()],
            ..blank(container)
        });
    measured.chain(unmeasured).collect()
}

/// Why the running digest is not verified, when it is not.
fn unverified(judged: &freshen_core::verify::Judged) -> Option<String> {
    (!judged.trust.verified()).then(|| judged.trust.to_string())
}

/// The SIGNED cell of a verdict.
fn signed_cell(trust: &freshen_core::verify::Trust) -> String {
    use freshen_core::verify::{SetVerdict, Trust};
    match trust {
        Trust::Verified(by) => format!("yes (key {})", by.join(", ")),
        Trust::Failed { verdict, .. } => match verdict {
            SetVerdict::Missing => "no".into(),
            SetVerdict::Invalid(_) => "invalid".into(),
            SetVerdict::Untrusted(_) => "untrusted".into(),
            SetVerdict::Attestation { .. } => "attestation failed".into(),
            SetVerdict::Unknown(_) | SetVerdict::Verified(_) => "unknown".into(),
        },
    }
}

/// A limit in force as the report shows it.
fn report_limit(limit: &Option<Sourced<Duration>>) -> Option<ReportLimit> {
    limit.as_ref().map(|l| ReportLimit {
        max: HumanDuration(l.value).to_string(),
        max_seconds: l.value.as_secs(),
        source: l.source.to_string(),
    })
}

/// Worst first: violating rows, then the closest to (or furthest past) a
/// limit, then the oldest image; ties by name so output is stable.
pub fn sort_worst_first(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.violating()
            .cmp(&a.violating())
            .then_with(|| b.pressure().total_cmp(&a.pressure()))
            .then_with(|| b.image_age_seconds.cmp(&a.image_age_seconds))
            .then_with(|| {
                (&a.namespace, &a.workload, &a.container).cmp(&(
                    &b.namespace,
                    &b.workload,
                    &b.container,
                ))
            })
    });
}

/// The base in a table cell: `<base> moved <age>`, `<base> current`, or
/// `-` when no base is known.
fn base_cell(r: &Row) -> String {
    let Some(base) = r.base_image.as_deref() else {
        return "-".to_owned();
    };
    let base = base.strip_prefix("docker.io/library/").unwrap_or(base);
    match r.base_stale {
        Some(true) => format!(
            "{base} moved {}",
            r.base_stale_seconds
                .map_or("?".into(), |s| short_age(Duration::from_secs(s)))
        ),
        Some(false) => format!("{base} current"),
        None => format!("{base} unknown"),
    }
}

/// A limit's source in a table cell: `annotation`, `rp/<name>`,
/// `crp/<name>` or `default`.
fn short_source(source: &str) -> String {
    if let Some(rest) = source.strip_prefix("RefreshPolicy ") {
        return format!("rp/{}", rest.rsplit('/').next().unwrap_or(rest));
    }
    if let Some(name) = source.strip_prefix("ClusterRefreshPolicy ") {
        return format!("crp/{name}");
    }
    source.to_owned()
}

/// The table's columns.
const HEADER: [&str; 14] = [
    "NAMESPACE",
    "KIND",
    "WORKLOAD",
    "CONTAINER",
    "IMAGE",
    "BUILT",
    "RUNNING",
    "BASE",
    "UPDATE",
    "SIGNED",
    "MAX-IMAGE-AGE",
    "MAX-CONTAINER-AGE",
    "STATUS",
    "REFRESH",
];

/// The report as an aligned table, then the details of every row that is
/// not simply fine, the warnings and a count.
pub fn render_table(report: &Report) -> String {
    let cells: Vec<[String; 14]> = report.rows.iter().map(cells_of).collect();
    let mut out = aligned(&cells);
    if report.rows.is_empty() {
        out.push_str("(no workloads in scope)\n");
    }
    let details = details(report);
    if !details.is_empty() {
        out.push_str("\nDetails:\n");
        out.push_str(&details);
    }
    for w in &report.warnings {
        let _ = writeln!(out, "\nwarning: {w}");
    }
    let _ = writeln!(
        out,
        "\n{} container(s), {} violating",
        report.rows.len(),
        report.violating()
    );
    out
}

/// One row's table cells, in [`HEADER`] order.
fn cells_of(r: &Row) -> [String; 14] {
    let age =
        |s: Option<u64>| s.map_or("unknown".to_owned(), |s| short_age(Duration::from_secs(s)));
    let limit = |l: &Option<ReportLimit>| {
        l.as_ref().map_or("-".to_owned(), |l| {
            format!("{} ({})", l.max, short_source(&l.source))
        })
    };
    let update = match r.update_available {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let status = if r.violating() {
        "VIOLATING"
    } else if !r.violations.is_empty() {
        "snoozed"
    } else if !r.problems.is_empty() || !r.config_errors.is_empty() {
        "error"
    } else {
        "ok"
    };
    let refresh = match (&r.refresh, &r.rebuild, r.rejected_digests.len()) {
        (Some(active), _, _) => active.clone(),
        (None, Some(rebuild), _) => format!("rebuild {rebuild}"),
        (None, None, 0) => "-".to_owned(),
        (None, None, n) => format!("{n} digest(s) rejected"),
    };
    [
        r.namespace.clone(),
        r.kind.clone(),
        r.workload.clone(),
        r.container.clone(),
        if r.image.is_empty() {
            "-".into()
        } else {
            r.image.clone()
        },
        age(r.image_age_seconds),
        r.container_age_seconds
            .map_or("-".to_owned(), |s| age(Some(s))),
        base_cell(r),
        update.to_owned(),
        r.signed.clone().unwrap_or_else(|| "-".into()),
        limit(&r.max_image_age),
        limit(&r.max_container_age),
        status.to_owned(),
        refresh,
    ]
}

/// The header and `rows`, each column as wide as its widest cell.
fn aligned(rows: &[[String; 14]]) -> String {
    let mut widths = HEADER.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}   ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(str::to_owned));
    for row in rows {
        line(row);
    }
    out
}

/// Each violation and problem, one per line, then each workload's
/// configuration errors once.
fn details(report: &Report) -> String {
    let mut details = String::new();
    for r in &report.rows {
        // As kubectl names it: `shop/statefulset/db app`.
        let subject = format!(
            "{}/{}/{} {}",
            r.namespace,
            r.kind.to_ascii_lowercase(),
            r.workload,
            r.container
        );
        for v in &r.violations {
            let snoozed = if r.snoozed { " (snoozed)" } else { "" };
            let _ = writeln!(details, "  {subject}: {v}{snoozed}");
        }
        for p in &r.problems {
            let _ = writeln!(details, "  {subject}: not measured: {p}");
        }
        if let Some(why) = &r.verification {
            let _ = writeln!(
                details,
                "  {subject}: unverified: the running digest is {why}"
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &report.rows {
        for e in &r.config_errors {
            if seen.insert((&r.namespace, &r.kind, &r.workload, e)) {
                let kind = r.kind.to_ascii_lowercase();
                let _ = writeln!(details, "  {}/{kind}/{}: {e}", r.namespace, r.workload);
            }
        }
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &str, image_age_days: Option<u64>, max_days: Option<u64>) -> Row {
        let day = 86_400;
        let max_image_age = max_days.map(|d| ReportLimit {
            max: format!("{d}d"),
            max_seconds: d * day,
            source: "RefreshPolicy shop/strict".into(),
        });
        let violations = match (image_age_days, max_days) {
            (Some(a), Some(m)) if a > m => vec![format!("image age {a}d exceeds {m}d")],
            _ => Vec::new(),
        };
        Row {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            workload: workload.into(),
            container: "app".into(),
            image: "reg.io/shop/app".into(),
            image_age_seconds: image_age_days.map(|d| d * day),
            container_age_seconds: Some(3_600),
            base_image: Some("docker.io/library/debian:12".into()),
            base_stale: Some(false),
            base_stale_seconds: None,
            update_available: None,
            max_image_age,
            max_container_age: None,
            violations,
            snoozed: false,
            config_errors: Vec::new(),
            problems: Vec::new(),
            refresh: None,
            rejected_digests: Vec::new(),
            rebuild: None,
            signed: None,
            verification: None,
        }
    }

    #[test]
    fn the_signed_column_names_who_signed_or_why_not() {
        use freshen_core::verify::{SetVerdict, Trust};
        assert_eq!(
            signed_cell(&Trust::Verified(vec!["platform".into()])),
            "yes (key platform)"
        );
        let failed = |verdict| Trust::Failed {
            policy: "ClusterRefreshPolicy/platform".into(),
            verdict,
        };
        assert_eq!(signed_cell(&failed(SetVerdict::Missing)), "no");
        assert_eq!(
            signed_cell(&failed(SetVerdict::Invalid("x".into()))),
            "invalid"
        );
        let mut unsigned = row("unsigned", Some(1), Some(30));
        unsigned.signed = Some("no".into());
        unsigned.verification =
            Some("not signed (ClusterRefreshPolicy/platform requires a signature)".into());
        let table = render_table(&Report {
            rows: vec![row("plain", Some(1), Some(30)), unsigned],
            ..Report::default()
        });
        let header = table.lines().next().unwrap_or_default();
        assert!(
            header.contains("UPDATE   SIGNED   MAX-IMAGE-AGE"),
            "{header}"
        );
        assert!(
            table.contains(
                "shop/deployment/unsigned app: unverified: the running digest is not signed"
            ),
            "{table}"
        );
    }

    #[test]
    fn violating_rows_come_first_then_the_closest_to_a_limit() {
        let mut rows = vec![
            row("fresh", Some(1), Some(30)),
            row("unknown", None, Some(30)),
            row("close", Some(25), Some(30)),
            row("old-no-limit", Some(400), None),
            row("violating", Some(10), Some(5)),
        ];
        let mut snoozed = row("snoozed", Some(90), Some(5));
        snoozed.snoozed = true;
        rows.push(snoozed);
        sort_worst_first(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(
            order,
            [
                "violating",
                "snoozed",
                "close",
                "fresh",
                "old-no-limit",
                "unknown"
            ]
        );
    }

    #[test]
    fn the_table_shows_ages_sources_and_details() {
        let mut broken = row("broken", None, None);
        broken.problems = vec!["registry reg.io unreachable".into()];
        broken.config_errors =
            vec!["annotation freshen.dev/max-image-age=\"5 days\" is invalid".into()];
        broken.rejected_digests = vec![format!("sha256:{}", "a".repeat(64))];
        let mut web = row("web", Some(10), Some(5));
        web.refresh = Some("web-app-bbbbbbbbbbbb (Canary)".into());
        let report = Report {
            generated_at: None,
            rows: vec![web, broken],
            warnings: vec!["refreshpolicies not read".into()],
        };
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   KIND         WORKLOAD   CONTAINER"),
            "{table}"
        );
        assert!(lines[1].contains("10d"), "{table}");
        assert!(lines[1].contains("debian:12 current"), "{table}");
        assert!(lines[1].contains("5d (rp/strict)"), "{table}");
        assert!(
            lines[1].ends_with("VIOLATING   web-app-bbbbbbbbbbbb (Canary)"),
            "{table}"
        );
        assert!(
            lines[2].contains("unknown") && lines[2].ends_with("error       1 digest(s) rejected"),
            "{table}"
        );
        assert!(
            table.contains("shop/deployment/web app: image age 10d exceeds 5d"),
            "{table}"
        );
        assert!(
            table.contains("not measured: registry reg.io unreachable"),
            "{table}"
        );
        assert!(
            table.contains("shop/deployment/broken: annotation freshen.dev/max-image-age"),
            "{table}"
        );
        assert!(
            table.contains("warning: refreshpolicies not read"),
            "{table}"
        );
        assert!(table.ends_with("2 container(s), 1 violating\n"), "{table}");
    }
}
