//! `freshen report`: a one-shot scan of a cluster's Deployments with the
//! operator's own judgement ([`crate::assess`]), for anyone with a
//! kubeconfig. Nothing is installed and no CRD is required: without the
//! policy CRDs, only annotations and the given defaults apply.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use freshen_api::refresh::{REJECTED_DIGESTS, is_canary};
use freshen_api::{ClusterRefreshPolicy, Refresh, RefreshMode, RefreshPolicy};
use freshen_core::plan::parse_rejected;
use freshen_core::policy::{self, Limits, Sourced};
use freshen_core::rollout::Phase;
use freshen_core::{HumanDuration, short_age};
use freshen_registry::{Platform, RegistryClient};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::assess::{
    Accounts, Problem, configure, measure, node_platform, platform_of, pull_credentials,
};
use crate::deployment::owning_deployment;
use crate::scoped;
use crate::workload::pod_facts;

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// One namespace, or all when `None`.
    pub namespace: Option<String>,
    /// A label selector on Deployments, e.g. `tier=web`.
    pub selector: Option<String>,
    /// Limits for workloads no annotation or policy sets one for.
    pub defaults: Limits,
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
    /// Deployment.
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
/// would judge it now.
pub async fn build(
    client: Client,
    registry: &Arc<RegistryClient>,
    options: &ReportOptions,
) -> Result<Report, ReportError> {
    let now = Utc::now();
    let scope = options
        .namespace
        .as_ref()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default();
    let namespace = options.namespace.as_deref();
    let (deployments, pods, policies): (Api<Deployment>, Api<Pod>, Api<RefreshPolicy>) = (
        scoped(&client, namespace),
        scoped(&client, namespace),
        scoped(&client, namespace),
    );
    let mut params = ListParams::default();
    if let Some(selector) = &options.selector {
        params = params.labels(selector);
    }
    let deployments = deployments
        .list(&params)
        .await
        .map_err(|e| ReportError::List {
            what: "deployments",
            scope: scope.clone(),
            hint: list_hint(&e, "deployments"),
        })?
        .items;
    let pods = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| ReportError::List {
            what: "pods",
            scope,
            hint: list_hint(&e, "pods"),
        })?
        .items;

    let mut warnings = Vec::new();
    let unapplied = "they are not applied";
    let policies = list_optional(policies, "refreshpolicies", unapplied, &mut warnings).await;
    let cluster_policies = list_optional(
        Api::<ClusterRefreshPolicy>::all(client.clone()),
        "clusterrefreshpolicies",
        unapplied,
        &mut warnings,
    )
    .await;
    let nodes: BTreeMap<String, Platform> = list_optional(
        Api::<Node>::all(client.clone()),
        "nodes",
        "multi-arch images are read for the --platform given",
        &mut warnings,
    )
    .await
    .iter()
    .filter_map(|n| Some((n.name_any(), node_platform(n)?)))
    .collect();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = if cluster_policies.is_empty() {
        BTreeMap::new()
    } else {
        list_optional(
            Api::<Namespace>::all(client.clone()),
            "namespaces",
            "ClusterRefreshPolicies with a namespaceSelector match nothing",
            &mut warnings,
        )
        .await
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect()
    };

    let mut pods_of: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
    for pod in &pods {
        if let Some(owner) = owning_deployment(pod) {
            let key = (owner.namespace.unwrap_or_default(), owner.name);
            pods_of.entry(key).or_default().push(pod_facts(pod));
        }
    }

    let empty = BTreeMap::new();
    let jobs = deployments.iter().filter_map(|deploy| {
        let namespace = deploy.namespace().unwrap_or_default();
        let config = configure(
            deploy,
            namespaces.get(&namespace).unwrap_or(&empty),
            &policies,
            &cluster_policies,
            &options.defaults,
        );
        if config.settings.refresh == Some(RefreshMode::Disabled) || is_canary(deploy.labels()) {
            return None;
        }
        let pods = pods_of
            .get(&(namespace, deploy.name_any()))
            .cloned()
            .unwrap_or_default();
        let client = client.clone();
        let platform = platform_of(&pods, |node| nodes.get(node).cloned());
        Some(async move {
            let limits = config.resolution.limits.clone();
            let (keychain, secret_problems) =
                pull_credentials(&client, deploy, Accounts::Fetch).await;
            let measurement = measure(
                registry,
                deploy,
                &pods,
                &keychain,
                platform.as_ref(),
                limits.track_base_image.value,
                None,
                now,
            )
            .await;
            rows_of(deploy, &config, measurement, &secret_problems, now)
        })
    });
    // Workloads are measured concurrently; the registry client bounds
    // requests per registry and coalesces identical look-ups.
    let mut rows: Vec<Row> = futures::stream::iter(jobs)
        .buffer_unordered(16)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    let refreshes = list_optional(
        scoped::<Refresh>(&client, namespace),
        "refreshes",
        "active refreshes and rolled-back digests are not shown",
        &mut warnings,
    )
    .await;
    let by_name: BTreeMap<(String, String), &Deployment> = deployments
        .iter()
        .map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), d))
        .collect();
    for row in &mut rows {
        let mine = |r: &&Arc<Refresh>| {
            r.namespace().as_deref() == Some(row.namespace.as_str())
                && r.spec.workload == row.workload
                && r.spec.container == row.container
        };
        row.refresh = refreshes
            .iter()
            .filter(mine)
            .find(|r| !r.progress().phase.is_terminal())
            .map(|r| format!("{} ({})", r.name_any(), r.progress().phase));
        let annotated = by_name
            .get(&(row.namespace.clone(), row.workload.clone()))
            .and_then(|d| d.annotations().get(REJECTED_DIGESTS).cloned())
            .unwrap_or_default();
        let mut rejected: Vec<String> = parse_rejected(&annotated)
            .into_iter()
            .filter(|(c, _)| *c == row.container)
            .map(|(_, d)| d.to_string())
            .chain(
                refreshes
                    .iter()
                    .filter(mine)
                    .filter(|r| r.progress().phase == Phase::RolledBack)
                    .map(|r| r.spec.digest.clone()),
            )
            .collect();
        rejected.sort();
        rejected.dedup();
        row.rejected_digests = rejected;
    }
    sort_worst_first(&mut rows);
    Ok(Report {
        generated_at: Some(now),
        rows,
        warnings,
    })
}

fn rows_of(
    deploy: &Deployment,
    config: &crate::assess::Configuration,
    measurement: crate::assess::Measurement,
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
    let snoozed = judgement.snoozed;
    let config_errors: Vec<String> = config.errors.iter().map(ToString::to_string).collect();
    let secs = |d: Duration| d.as_secs();
    let limit = |l: &Option<Sourced<Duration>>| {
        l.as_ref().map(|l| ReportLimit {
            max: HumanDuration(l.value).to_string(),
            max_seconds: l.value.as_secs(),
            source: l.source.to_string(),
        })
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
    let mut rows: Vec<Row> = measurement
        .containers
        .iter()
        .zip(&judgement.violations)
        .map(|(c, violations)| Row {
            namespace: deploy.namespace().unwrap_or_default(),
            workload: deploy.name_any(),
            container: c.container.clone(),
            image: c.image.clone(),
            image_age_seconds: c.image_age(now).map(secs),
            container_age_seconds: c.container_age(now).map(secs),
            base_image: c.base_image.clone(),
            base_stale: c.base_stale,
            base_stale_seconds: c
                .base_stale_since
                .map(|since| freshen_core::age::elapsed(since, now).as_secs()),
            update_available: c.update_available,
            max_image_age: limit(&limits.max_image_age),
            max_container_age: limit(&limits.max_container_age),
            violations: violations.iter().map(ToString::to_string).collect(),
            snoozed,
            config_errors: config_errors.clone(),
            problems: problems_of(&c.container),
            refresh: None,
            rejected_digests: Vec::new(),
        })
        .collect();
    // A container that could not be measured at all still gets its row.
    for (container, problem) in &measurement.problems {
        if matches!(problem, Problem::InvalidImage(_)) {
            rows.push(Row {
                namespace: deploy.namespace().unwrap_or_default(),
                workload: deploy.name_any(),
                container: container.clone(),
                image: String::new(),
                image_age_seconds: None,
                container_age_seconds: None,
                base_image: None,
                base_stale: None,
                base_stale_seconds: None,
                update_available: None,
                max_image_age: limit(&limits.max_image_age),
                max_container_age: limit(&limits.max_container_age),
                violations: Vec::new(),
                snoozed,
                config_errors: config_errors.clone(),
                problems: vec![problem.to_string()],
                refresh: None,
                rejected_digests: Vec::new(),
            });
        }
    }
    rows
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

/// The report as an aligned table, then the details of every row that is
/// not simply fine.
pub fn render_table(report: &Report) -> String {
    const HEADER: [&str; 12] = [
        "NAMESPACE",
        "WORKLOAD",
        "CONTAINER",
        "IMAGE",
        "BUILT",
        "RUNNING",
        "BASE",
        "UPDATE",
        "MAX-IMAGE-AGE",
        "MAX-CONTAINER-AGE",
        "STATUS",
        "REFRESH",
    ];
    let age =
        |s: Option<u64>| s.map_or("unknown".to_owned(), |s| short_age(Duration::from_secs(s)));
    let flag = |b: Option<bool>, yes: String| match b {
        Some(true) => yes,
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    };
    let limit = |l: &Option<ReportLimit>| {
        l.as_ref().map_or("-".to_owned(), |l| {
            format!("{} ({})", l.max, short_source(&l.source))
        })
    };
    let status = |r: &Row| {
        if r.violating() {
            "VIOLATING"
        } else if !r.violations.is_empty() {
            "snoozed"
        } else if !r.problems.is_empty() || !r.config_errors.is_empty() {
            "error"
        } else {
            "ok"
        }
    };
    let refresh = |r: &Row| match (&r.refresh, r.rejected_digests.len()) {
        (Some(active), _) => active.clone(),
        (None, 0) => "-".to_owned(),
        (None, n) => format!("{n} digest(s) rejected"),
    };
    let cells: Vec<[String; 12]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
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
                flag(r.update_available, "yes".into()),
                limit(&r.max_image_age),
                limit(&r.max_container_age),
                status(r).to_owned(),
                refresh(r),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
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
    for row in &cells {
        line(row);
    }
    if report.rows.is_empty() {
        out.push_str("(no Deployments in scope)\n");
    }
    let mut details = String::new();
    for r in &report.rows {
        let subject = format!("{}/{} {}", r.namespace, r.workload, r.container);
        for v in &r.violations {
            let snoozed = if r.snoozed { " (snoozed)" } else { "" };
            let _ = writeln!(details, "  {subject}: {v}{snoozed}");
        }
        for p in &r.problems {
            let _ = writeln!(details, "  {subject}: not measured: {p}");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &report.rows {
        for e in &r.config_errors {
            if seen.insert((&r.namespace, &r.workload, e)) {
                let _ = writeln!(details, "  {}/{}: {e}", r.namespace, r.workload);
            }
        }
    }
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
        }
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
            lines[0].starts_with("NAMESPACE   WORKLOAD   CONTAINER"),
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
            table.contains("shop/web app: image age 10d exceeds 5d"),
            "{table}"
        );
        assert!(
            table.contains("not measured: registry reg.io unreachable"),
            "{table}"
        );
        assert!(
            table.contains("shop/broken: annotation freshen.dev/max-image-age"),
            "{table}"
        );
        assert!(
            table.contains("warning: refreshpolicies not read"),
            "{table}"
        );
        assert!(table.ends_with("2 container(s), 1 violating\n"), "{table}");
    }
}
