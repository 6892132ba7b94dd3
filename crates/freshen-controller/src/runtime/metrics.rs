//! Prometheus metrics of the operator.
//!
//! Ages grow every second, so they are not stored as gauges that go stale
//! between reconciles: reconciles record *timestamps* (build time, oldest
//! container start) per container, and [`AgeCollector`] turns them into ages
//! at scrape time with `freshen_core`'s rules. A workload's series vanish as
//! soon as its entry is removed (deleted, or opted out).

use freshen_api::pipeline::PipelineKind;
use freshen_core::rebuild::{RebuildOutcome, RebuildPhase, RebuildProgress};
use std::sync::{Arc, Mutex};

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use freshen_core::rollout::{Phase, Progress};

use crate::runtime::records::{ContainerRecord, WorkloadKey, WorkloadRecord, WorkloadRecords};

/// One per-container family: name, help, and how its value is read.
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&ContainerRecord, &WorkloadRecord, DateTime<Utc>) -> Option<f64>,
}

/// Seconds in `d`.
fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// Seconds from `since` to `now` (0 when `since` is later).
fn elapsed(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<f64> {
    since.map(|since| seconds(freshen_core::age::elapsed(since, now)))
}

/// 1 for true, 0 for false.
fn flag(b: Option<bool>) -> Option<f64> {
    b.map(|b| f64::from(u8::from(b)))
}

/// The per-container families, labelled `namespace`, `workload`, `kind`
/// (one of eight: `freshen_core::kind::Kind`), `container` and `image`.
const FAMILIES: [Family; 9] = [
    Family {
        name: "freshen_image_age_seconds",
        help: "Seconds since the image the container runs was built (the oldest build when \
               its pods run several digests). Absent when the build time is unknown.",
        value: |c, _, now| c.image_age(now).map(seconds),
    },
    Family {
        name: "freshen_container_age_seconds",
        help: "Seconds since the oldest running instance of the container started.",
        value: |c, _, now| c.container_age(now).map(seconds),
    },
    Family {
        name: "freshen_image_update_available",
        help: "1 when the container's tag now names a digest none of its pods runs, else 0. \
               Absent when unknown.",
        value: |c, _, _| flag(c.update_available),
    },
    Family {
        name: "freshen_base_image_stale",
        help: "1 when the base image of a running digest has moved on (its tag names another \
               digest, or a newer build), else 0. Absent when unknown.",
        value: |c, _, _| flag(c.base_stale),
    },
    Family {
        name: "freshen_base_image_stale_seconds",
        help: "Seconds since the base image moved on: since the newer base was built, else \
               since freshen first saw it. Present only while stale.",
        value: |c, _, now| elapsed(c.base_stale_since, now),
    },
    Family {
        name: "freshen_image_update_available_seconds",
        help: "Seconds since freshen first saw the container's tag name a digest none of its \
               pods runs (since this operator process started, at the earliest). Present only \
               while an update is available.",
        value: |c, _, now| elapsed(c.update_available_since, now),
    },
    Family {
        name: "freshen_image_digest_seen_seconds",
        help: "Seconds since the container's tag was first seen naming the digest its pods run \
               (by freshen, kept across restarts; a lower bound). The age of an image whose build \
               time is unknown (reproducible builds), never mixed into freshen_image_age_seconds. \
               Absent when its pods do not run what the tag names.",
        value: |c, _, now| elapsed(c.digest_since, now),
    },
    Family {
        name: "freshen_policy_max_image_age_seconds",
        help: "The image age limit in force for the container (annotation, policy or \
               default). Absent when no limit applies.",
        value: |_, w, _| w.limits.max_image_age.as_ref().map(|l| seconds(l.value)),
    },
    Family {
        name: "freshen_policy_max_container_age_seconds",
        help: "The container age limit in force for the container. Absent when no limit \
               applies.",
        value: |_, w, _| {
            w.limits
                .max_container_age
                .as_ref()
                .map(|l| seconds(l.value))
        },
    },
];

/// A per-container family with one more label: each `(label value,
/// value)` is a series.
struct Labelled {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    series: fn(&ContainerRecord) -> Vec<(&'static str, f64)>,
}

/// The verification families, present where a policy sets `spec.verify`.
const LABELLED: [Labelled; 2] = [
    Labelled {
        name: "freshen_image_verified",
        help: "1 for the verdict of the verification gate (spec.verify) on the digest the \
               container runs: result is verified, missing, invalid, untrusted, \
               attestation_failed or unknown. Absent where no policy verifies.",
        label: "result",
        series: |c| {
            c.verification
                .as_ref()
                .map(|j| vec![(j.trust.label(), 1.0)])
                .unwrap_or_default()
        },
    },
    Labelled {
        name: "freshen_image_vulnerabilities",
        help: "Findings by severity (critical, high, medium, low, unknown) of the verified \
               vulnerability attestation of the digest the container runs. Absent when no \
               policy reads scans or none was accepted.",
        label: "severity",
        series: |c| {
            let Some(findings) = c.verification.as_ref().and_then(|j| j.findings.as_ref()) else {
                return Vec::new();
            };
            freshen_core::verify::Severity::ALL
                .iter()
                .map(|s| (s.label(), f64::from(findings.count(*s))))
                .collect()
        },
    },
];

/// The per-workload family, labelled `namespace`, `workload` and `kind`.
const CONFIG_ERRORS: (&str, &str) = (
    "freshen_workload_config_errors",
    "Invalid freshen.dev/* annotations (and unknown policy names) on the workload; \
     the Warning Events name them.",
);

/// Writes the per-container series (ages, base staleness, update
/// available, the limits in force) and per-workload configuration errors
/// in the text exposition format, computed at scrape time from
/// [`WorkloadRecords`].
///
/// They are written straight from the records: a vector of gauges would
/// hash, allocate and keep about 80,000 children at 10,000 workloads, on
/// every scrape. And they are written in chunks of [`WORKLOADS_PER_CHUNK`]
/// workloads as the response is sent, each under the records' read lock
/// for that chunk only: the whole text (about 9 MiB at 10,000 workloads)
/// is never held at once.
pub struct AgeCollector {
    records: Arc<WorkloadRecords>,
}

/// Workloads per chunk of the exposition: about 40 KiB of text, under
/// the allocator's threshold for a mapping of its own.
const WORKLOADS_PER_CHUNK: usize = 256;

impl AgeCollector {
    /// The series, chunk by chunk, as of now.
    fn chunks(&self) -> AgeChunks {
        AgeChunks {
            records: Arc::clone(&self.records),
            now: Utc::now(),
            family: 0,
            after: None,
        }
    }
}

/// The per-container families, then the configuration errors; chunks of
/// text, each family's `# HELP` and `# TYPE` before its first sample.
struct AgeChunks {
    records: Arc<WorkloadRecords>,
    now: DateTime<Utc>,
    /// The family being written: an index of [`FAMILIES`], then
    /// [`LABELLED`] after them, then the configuration errors.
    family: usize,
    /// The last workload written of this family.
    after: Option<WorkloadKey>,
}

impl Iterator for AgeChunks {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let mut out = String::new();
        let last = FAMILIES.len() + LABELLED.len();
        if self.family > last {
            return None;
        }
        let family = FAMILIES.get(self.family);
        let labelled = self
            .family
            .checked_sub(FAMILIES.len())
            .and_then(|i| LABELLED.get(i));
        if self.after.is_none() {
            match (family, labelled) {
                (Some(f), _) => header(&mut out, f.name, f.help),
                (None, Some(l)) => header(&mut out, l.name, l.help),
                (None, None) => header(&mut out, CONFIG_ERRORS.0, CONFIG_ERRORS.1),
            }
        }
        let now = self.now;
        let after = self.records.for_each_after(
            self.after.as_ref(),
            WORKLOADS_PER_CHUNK,
            |key, workload| match (family, labelled) {
                (Some(family), _) => {
                    for c in &workload.containers {
                        if let Some(value) = (family.value)(c, workload, now) {
                            // In name order, as the prometheus crate writes them.
                            let _ = writeln!(
                                out,
                                "{}{{container=\"{}\",image=\"{}\",kind=\"{}\",namespace=\"{}\",workload=\"{}\"}} {value}",
                                family.name,
                                escape(&c.container),
                                escape(&c.image),
                                key.kind,
                                escape(&key.namespace),
                                escape(&key.name),
                            );
                        }
                    }
                }
                (None, Some(l)) => {
                    for c in &workload.containers {
                        for (label, value) in (l.series)(c) {
                            // `result` and `severity` sort between
                            // `namespace` and `workload`.
                            let _ = writeln!(
                                out,
                                "{}{{container=\"{}\",image=\"{}\",kind=\"{}\",namespace=\"{}\",{}=\"{label}\",workload=\"{}\"}} {value}",
                                l.name,
                                escape(&c.container),
                                escape(&c.image),
                                key.kind,
                                escape(&key.namespace),
                                l.label,
                                escape(&key.name),
                            );
                        }
                    }
                }
                (None, None) => {
                    let _ = writeln!(
                        out,
                        "{}{{kind=\"{}\",namespace=\"{}\",workload=\"{}\"}} {}",
                        CONFIG_ERRORS.0,
                        key.kind,
                        escape(&key.namespace),
                        escape(&key.name),
                        workload.config_errors.len()
                    );
                }
            },
        );
        if after.is_none() {
            self.family += 1;
        }
        self.after = after;
        Some(out)
    }
}

/// A family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// A label value escaped for the text format: backslash, double quote and
/// line feed.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// The operator's metrics registry and its own instruments.
pub struct Metrics {
    registry: Registry,
    /// `freshen_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: HistogramVec,
    /// `freshen_reconcile_errors_total{controller,category}`.
    pub reconcile_errors: IntCounterVec,
    /// `freshen_refreshes_total{reason,outcome}`.
    pub refreshes: IntCounterVec,
    /// `freshen_refresh_duration_seconds{reason,outcome}`.
    pub refresh_duration: HistogramVec,
    /// `freshen_refreshes_active{phase}`.
    pub refreshes_active: IntGaugeVec,
    /// `freshen_rollbacks_total{reason}`.
    pub rollbacks: IntCounterVec,
    /// `freshen_leader`: 1 while this process acts, 0 while it stands by.
    pub leader: IntGauge,
    /// The rebuild metrics.
    pub rebuilds: RebuildMetrics,
    /// `freshen_notifications_total{outcome}`.
    pub notifications: IntCounterVec,
    /// `freshen_tag_records_total{outcome}`: new tags recorded, refused a
    /// record (`workload_rate`, `namespace_cap`, `total_cap`), or records
    /// deleted (`deleted`).
    pub tag_records: IntCounterVec,
    /// `freshen_git_commits_total{host,change,result}`: pushes for
    /// `gitops: Commit`.
    pub git_commits: IntCounterVec,
    /// `freshen_git_promotion_seconds{host}`: from the canary's success
    /// (the push), or a pull request's merge, to the reconciler applying
    /// the commit.
    pub git_promotion: HistogramVec,
    /// `freshen_git_pull_requests_total{host,change,event}`: pull requests
    /// opened, merged and closed unmerged, for `gitops: PullRequest`.
    pub git_pull_requests: IntCounterVec,
    /// The per-container series, written at scrape time.
    ages: AgeCollector,
    /// What every registered instrument is, for [`Metrics::catalogue`].
    described: Mutex<Vec<MetricDoc>>,
}

/// One metric family as the guide's reference documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDoc {
    /// The family's name.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its help text.
    pub help: String,
    /// Its labels, in order.
    pub labels: Vec<String>,
}

/// The families `collector` exports, whether or not it has series yet (an
/// empty vector's family has its name, help and type, but the registry's
/// `gather` leaves it out).
fn describe(collector: &dyn Collector) -> Vec<MetricDoc> {
    let families = collector.collect();
    collector
        .desc()
        .into_iter()
        .map(|desc| {
            let kind = families
                .iter()
                .find(|f| f.name() == desc.fq_name)
                .map_or("gauge", |f| match f.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::HISTOGRAM => "histogram",
                    MetricType::SUMMARY => "summary",
                    _ => "gauge",
                });
            MetricDoc {
                name: desc.fq_name.clone(),
                kind,
                help: desc.help.clone(),
                labels: desc.variable_labels.clone(),
            }
        })
        .collect()
}

/// Makes metrics and registers them, in one step each, noting what each
/// is for the catalogue.
struct Registered<'a> {
    registry: &'a Registry,
    described: &'a Mutex<Vec<MetricDoc>>,
}

impl Registered<'_> {
    /// Registers `collector` and notes its families.
    fn add(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        let docs = describe(collector.as_ref());
        self.registry.register(collector)?;
        self.described
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(docs);
        Ok(())
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let m = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.add(Box::new(m.clone()))?;
        Ok(m)
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.add(Box::new(m.clone()))?;
        Ok(m)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let m = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?;
        self.add(Box::new(m.clone()))?;
        Ok(m)
    }
}

/// The closed label sets the help texts name, each comma separated.
struct LabelSets {
    /// Why refreshes start.
    reasons: String,
    /// Why refreshes are rolled back.
    failures: String,
    /// The phases of a refresh under way.
    active: String,
}

impl LabelSets {
    fn new() -> Self {
        use strum::VariantArray as _;
        let join = |names: Vec<&str>| names.join(", ");
        Self {
            reasons: join(
                freshen_core::rollout::Reason::VARIANTS
                    .iter()
                    .map(|r| r.as_str())
                    .collect(),
            ),
            failures: join(
                freshen_core::rollout::Failure::VARIANTS
                    .iter()
                    .map(|f| f.as_str())
                    .collect(),
            ),
            active: join(
                Phase::ALL
                    .iter()
                    .filter(|p| !p.is_terminal())
                    .map(|p| p.as_str())
                    .collect(),
            ),
        }
    }
}

/// `freshen_rebuilds_total{kind,outcome}`,
/// `freshen_rebuild_duration_seconds{kind,outcome}` and
/// `freshen_rebuilds_active{kind}`. `kind` is the pipeline kind (`job`).
pub struct RebuildMetrics {
    total: IntCounterVec,
    duration: HistogramVec,
    active: IntGaugeVec,
}

impl RebuildMetrics {
    fn register(registry: &Registered<'_>) -> prometheus::Result<Self> {
        let total = IntCounterVec::new(
            Opts::new(
                "freshen_rebuilds_total",
                "Rebuild runs that ended, by pipeline kind and outcome (Succeeded, Failed, \
                 TimedOut, Superseded).",
            ),
            &["kind", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "freshen_rebuild_duration_seconds",
                "Seconds from a run's start to its end (for Succeeded: until the tag named the \
                 rebuilt digest).",
            )
            .buckets(vec![
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            ]),
            &["kind", "outcome"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "freshen_rebuilds_active",
                "Rebuilds not yet ended (running or backing off), by pipeline kind.",
            ),
            &["kind"],
        )?;
        registry.add(Box::new(total.clone()))?;
        registry.add(Box::new(duration.clone()))?;
        registry.add(Box::new(active.clone()))?;
        Ok(Self {
            total,
            duration,
            active,
        })
    }

    /// Counts a run that ended with `outcome`.
    pub fn finished(
        &self,
        kind: PipelineKind,
        progress: &RebuildProgress,
        outcome: RebuildOutcome,
    ) {
        let outcome: &'static str = outcome.into();
        let kind = kind.label();
        self.total.with_label_values(&[kind, outcome]).inc();
        if let (Some(started), Some(finished)) = (progress.started_at, progress.finished_at) {
            self.duration
                .with_label_values(&[kind, outcome])
                .observe(freshen_core::age::elapsed(started, finished).as_secs_f64());
        }
    }

    /// Sets `freshen_rebuilds_active` from every Rebuild's kind and phase.
    pub fn count_active(&self, rebuilds: impl IntoIterator<Item = (PipelineKind, RebuildPhase)>) {
        let mut counts = [(PipelineKind::Job, 0_i64), (PipelineKind::Webhook, 0)];
        for (kind, phase) in rebuilds {
            if let Some((_, n)) = counts.iter_mut().find(|(k, _)| *k == kind)
                && !phase.is_terminal()
            {
                *n += 1;
            }
        }
        for (kind, n) in counts {
            self.active.with_label_values(&[kind.label()]).set(n);
        }
    }
}

impl Metrics {
    /// Registers every metric: the per-container collector over `records`,
    /// the registry client's `registry_metrics`, and the reconcile metrics.
    pub fn new(
        records: Arc<WorkloadRecords>,
        registry_metrics: &freshen_registry::RegistryMetrics,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let described = Mutex::new(Vec::new());
        let r = Registered {
            registry: &registry,
            described: &described,
        };
        for collector in registry_metrics.collectors() {
            r.add(collector)?;
        }
        let sets = LabelSets::new();
        let metrics = Self {
            reconcile_duration: r.histogram(
                "freshen_reconcile_duration_seconds",
                "Duration of one reconcile of one object, by controller (one per workload \
                 kind: deployment, statefulset, ..., pod; refreshpolicy, clusterrefreshpolicy, \
                 refresh, rebuild).",
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
                &["controller"],
            )?,
            reconcile_errors: r.counter(
                "freshen_reconcile_errors_total",
                "Reconciles that failed, by controller and by the step that failed (category, \
                 e.g. registry_unauthorized, registry_backoff, policy_status, \
                 refresh_patch_image).",
                &["controller", "category"],
            )?,
            refreshes: r.counter(
                "freshen_refreshes_total",
                &format!(
                    "Refreshes that finished, by why they started (reason: {}) and how they \
                     ended (outcome: Succeeded, RolledBack, Failed).",
                    sets.reasons
                ),
                &["reason", "outcome"],
            )?,
            refresh_duration: r.histogram(
                "freshen_refresh_duration_seconds",
                "Seconds from a Refresh's creation to its terminal phase.",
                &[
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                ],
                &["reason", "outcome"],
            )?,
            refreshes_active: r.gauge(
                "freshen_refreshes_active",
                &format!("Refreshes not yet finished, by phase ({}).", sets.active),
                &["phase"],
            )?,
            rollbacks: r.counter(
                "freshen_rollbacks_total",
                &format!(
                    "Refreshes rolled back, by the failure that caused it (reason: {}).",
                    sets.failures
                ),
                &["reason"],
            )?,
            leader: {
                let leader = IntGauge::new(
                    "freshen_leader",
                    "1 while this process acts (it holds the leader Lease, or leader election \
                     is off), 0 while it stands by.",
                )?;
                r.add(Box::new(leader.clone()))?;
                leader
            },
            rebuilds: RebuildMetrics::register(&r)?,
            notifications: r.counter(
                "freshen_notifications_total",
                "Registry notifications, by outcome (accepted, ignored, unknown, unauthorized, \
                 too_large, bad_request, rate_limited).",
                &["outcome"],
            )?,
            tag_records: r.counter(
                "freshen_tag_records_total",
                "TagRecords by outcome: recorded (a new tag), workload_rate, namespace_cap and \
                 total_cap (a new tag refused a record, answered from memory), deleted (nothing \
                 looked at it for --tag-record-retention).",
                &["outcome"],
            )?,
            git_commits: r.counter(
                "freshen_git_commits_total",
                "Git writes for gitops: Commit, by repository host, change (promote, revert) and \
                 result (pushed, unchanged: the branch already had it, failed).",
                &["host", "change", "result"],
            )?,
            git_pull_requests: r.counter(
                "freshen_git_pull_requests_total",
                "Pull requests for gitops: PullRequest, by repository host, change (promote, \
                 revert) and event (opened, merged, closed: closed without being merged).",
                &["host", "change", "event"],
            )?,
            git_promotion: r.histogram(
                "freshen_git_promotion_seconds",
                "Seconds from a canary's success (the commit pushed), or its pull request's \
                 merge, to the reconciler applying it to the workload, by repository host.",
                &[
                    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ],
                &["host"],
            )?,
            registry: registry.clone(),
            ages: AgeCollector { records },
            described,
        };
        metrics.start_outcomes_at_zero();
        Ok(metrics)
    }

    /// Exports the count of the API client's requests.
    pub fn register_api_requests(
        &self,
        api_requests: &crate::runtime::api_requests::ApiRequests,
    ) -> prometheus::Result<()> {
        Registered {
            registry: &self.registry,
            described: &self.described,
        }
        .add(api_requests.collector())
    }

    /// Every family this process exports, by name, series or not: the
    /// registered instruments and the per-container families. The guide's
    /// reference of metrics is generated from it.
    pub fn catalogue(&self) -> Vec<MetricDoc> {
        let per_container = ["container", "image", "kind", "namespace", "workload"];
        let doc = |name: &str, help: &str, labels: &[&str]| MetricDoc {
            name: name.to_owned(),
            kind: "gauge",
            help: help.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        let mut all = self
            .described
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        all.extend(FAMILIES.iter().map(|f| doc(f.name, f.help, &per_container)));
        all.extend(LABELLED.iter().map(|l| {
            let mut labels = per_container.to_vec();
            labels.push(l.label);
            doc(l.name, l.help, &labels)
        }));
        all.push(doc(
            CONFIG_ERRORS.0,
            CONFIG_ERRORS.1,
            &["kind", "namespace", "workload"],
        ));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates every outcome series at 0 (the label values are closed
    /// sets), so that the first refresh, rollback or rebuild of a kind is an
    /// increase `rate()` and `increase()` see, not a series appearing at 1.
    fn start_outcomes_at_zero(&self) {
        use strum::VariantArray as _;
        const TERMINAL: [Phase; 3] = [Phase::Succeeded, Phase::RolledBack, Phase::Failed];
        for reason in freshen_core::rollout::Reason::VARIANTS {
            for phase in TERMINAL {
                self.refreshes
                    .with_label_values(&[reason.as_str(), phase.as_str()]);
            }
        }
        for failure in freshen_core::rollout::Failure::VARIANTS {
            self.rollbacks.with_label_values(&[failure.as_str()]);
        }
        for kind in PipelineKind::VARIANTS {
            for outcome in freshen_core::rebuild::RebuildOutcome::VARIANTS {
                let outcome: &'static str = outcome.into();
                self.rebuilds
                    .total
                    .with_label_values(&[kind.label(), outcome]);
            }
        }
    }

    /// Counts a Refresh that moved to `progress.phase`: a terminal phase
    /// adds to the totals, the duration and (when rolled back) the
    /// rollbacks.
    pub fn refresh_transition(&self, refresh: &freshen_api::Refresh, progress: &Progress) {
        if !progress.phase.is_terminal() {
            return;
        }
        let reason = refresh.spec.reason.as_str();
        let outcome = progress.phase.as_str();
        self.refreshes.with_label_values(&[reason, outcome]).inc();
        let created = refresh
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| freshen_api::time::to_chrono(&t.0));
        if let (Some(created), Some(finished)) = (created, progress.finished_at) {
            self.refresh_duration
                .with_label_values(&[reason, outcome])
                .observe(freshen_core::age::elapsed(created, finished).as_secs_f64());
        }
        if progress.phase == Phase::RolledBack {
            let why = progress.failure.map_or("unknown", |f| f.as_str());
            self.rollbacks.with_label_values(&[why]).inc();
        }
        if let (Phase::Succeeded, Some(git), Some(pushed), Some(applied)) = (
            progress.phase,
            refresh.status.as_ref().and_then(|s| s.git.as_ref()),
            progress.promoted_at,
            progress.patched_at,
        ) {
            let host = freshen_core::gitops::source::host(&git.repository);
            // Through a pull request: from its merge, not the review.
            let pushed = git
                .pull_request
                .as_ref()
                .and_then(|p| p.merged_at)
                .map_or(pushed, |m| m.max(pushed));
            self.git_promotion
                .with_label_values(&[host])
                .observe(freshen_core::age::elapsed(pushed, applied).as_secs_f64());
        }
    }

    /// Counts a pull request opened, or seen merged or closed.
    pub fn pull_request(
        &self,
        host: &str,
        revert: bool,
        state: freshen_core::gitops::forge::PullState,
    ) {
        use freshen_core::gitops::forge::PullState;
        let change = if revert { "revert" } else { "promote" };
        let event = match state {
            PullState::Open => "opened",
            PullState::Merged => "merged",
            PullState::Closed => "closed",
        };
        self.git_pull_requests
            .with_label_values(&[host, change, event])
            .inc();
    }

    /// Counts one git write: `Ok(true)` pushed, `Ok(false)` unchanged.
    pub fn git_write(
        &self,
        host: &str,
        revert: bool,
        result: Result<bool, &crate::gitops::writer::WriteError>,
    ) {
        let change = if revert { "revert" } else { "promote" };
        let result = match result {
            Ok(true) => "pushed",
            Ok(false) => "unchanged",
            Err(_) => "failed",
        };
        self.git_commits
            .with_label_values(&[host, change, result])
            .inc();
    }

    /// Sets `freshen_refreshes_active` from every Refresh's phase.
    pub fn count_active(&self, phases: impl IntoIterator<Item = Phase>) {
        let mut counts = std::collections::BTreeMap::new();
        for phase in phases.into_iter().filter(|p| !p.is_terminal()) {
            *counts.entry(phase).or_insert(0i64) += 1;
        }
        for phase in Phase::ALL.iter().filter(|p| !p.is_terminal()) {
            self.refreshes_active
                .with_label_values(&[phase.as_str()])
                .set(counts.get(phase).copied().unwrap_or(0));
        }
    }

    /// The Prometheus text exposition of every metric, in chunks to send
    /// as they come: the operator's own instruments first, then the
    /// per-workload series (see [`AgeCollector`]).
    pub fn render_chunks(
        &self,
    ) -> Result<impl Iterator<Item = String> + Send + 'static, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        let text = String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        Ok(std::iter::once(text)
            .chain(self.ages.chunks())
            .filter(|chunk| !chunk.is_empty()))
    }

    /// The whole exposition as one text.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        Ok(self.render_chunks()?.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::records::{ContainerRecord, PolicyBinding, WorkloadKey, WorkloadRecord};
    use chrono::{DateTime, TimeDelta};
    use freshen_core::policy::{EffectiveLimits, Source, Sourced};
    use std::time::Duration;

    fn registry_metrics() -> freshen_registry::RegistryMetrics {
        freshen_registry::RegistryMetrics::new().unwrap()
    }

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "shop".into(),
            name: name.into(),
            kind: freshen_core::kind::Kind::Deployment,
        }
    }

    fn workload(containers: Vec<ContainerRecord>, config_errors: usize) -> WorkloadRecord {
        WorkloadRecord {
            containers,
            limits: EffectiveLimits {
                unknown_build_as_first_seen: false,
                max_image_age: Some(Sourced {
                    value: Duration::from_secs(5 * 86_400),
                    source: Source::Default,
                }),
                max_container_age: None,
                track_base_image: Sourced {
                    value: true,
                    source: Source::Default,
                },
            },
            binding: PolicyBinding::default(),
            config_errors: vec!["bad".into(); config_errors],
            snoozed: false,
            findings: Default::default(),
        }
    }

    fn container(name: &str) -> ContainerRecord {
        ContainerRecord {
            container: name.into(),
            image: format!("reg.io/shop/{name}"),
            build_times: vec![Some(Utc::now())],
            oldest_start: Some(Utc::now()),
            update_available: None,
            update_available_since: None,
            base_stale: None,
            base_stale_since: None,
            base_image: None,
            running: None,
            tag_digest: None,
            base_move: None,
            base_annotated: false,
            digest_since: None,
            verification: None,
        }
    }

    #[test]
    fn verdicts_and_scans_are_series_with_bounded_labels() {
        use freshen_core::verify::{Findings, Judged, SetVerdict, Severity, Trust};
        let records = Arc::new(WorkloadRecords::default());
        let mut scan = Findings::default();
        scan.add("CVE-1", Severity::Critical);
        scan.add("CVE-2", Severity::High);
        scan.add("CVE-3", Severity::High);
        let signed = ContainerRecord {
            verification: Some(Judged {
                trust: Trust::Verified(vec!["platform".into()]),
                findings: Some(scan),
            }),
            ..container("signed")
        };
        let unsigned = ContainerRecord {
            verification: Some(Judged {
                trust: Trust::Failed {
                    policy: "ClusterRefreshPolicy/platform".into(),
                    verdict: SetVerdict::Missing,
                },
                findings: None,
            }),
            ..container("unsigned")
        };
        records.set(
            key("web"),
            workload(vec![signed, unsigned, container("plain")], 0),
        );
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        let text = metrics.render().unwrap();
        let lines = |prefix: &str| -> Vec<&str> {
            text.lines().filter(|l| l.starts_with(prefix)).collect()
        };
        assert_eq!(
            lines("freshen_image_verified{"),
            vec![
                "freshen_image_verified{container=\"signed\",image=\"reg.io/shop/signed\",kind=\"Deployment\",namespace=\"shop\",result=\"verified\",workload=\"web\"} 1",
                "freshen_image_verified{container=\"unsigned\",image=\"reg.io/shop/unsigned\",kind=\"Deployment\",namespace=\"shop\",result=\"missing\",workload=\"web\"} 1",
            ]
        );
        let vulns = lines("freshen_image_vulnerabilities{");
        assert_eq!(vulns.len(), 5, "one per severity, for the scanned one only");
        assert!(
            vulns
                .iter()
                .any(|l| l.contains("severity=\"critical\"") && l.ends_with(" 1"))
        );
        assert!(
            vulns
                .iter()
                .any(|l| l.contains("severity=\"high\"") && l.ends_with(" 2"))
        );
        assert_eq!(
            text.matches("# TYPE freshen_image_verified gauge").count(),
            1
        );
    }

    #[test]
    fn the_catalogue_names_every_family_a_scrape_writes_with_its_type() {
        let records = Arc::new(WorkloadRecords::default());
        records.set(key("web"), workload(vec![container("app")], 1));
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        let api = crate::runtime::api_requests::ApiRequests::new().unwrap();
        metrics.register_api_requests(&api).unwrap();
        let catalogue = metrics.catalogue();
        let text = metrics.render().unwrap();
        let typed: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert!(typed.len() > 10, "{text}");
        for (name, kind) in typed {
            assert!(
                catalogue.iter().any(|d| d.name == name && d.kind == kind),
                "{name} ({kind}) is not in the catalogue"
            );
        }
        // Families without series yet are there too, once each.
        for name in [
            "freshen_api_requests_total",
            "freshen_rebuild_duration_seconds",
        ] {
            assert_eq!(catalogue.iter().filter(|d| d.name == name).count(), 1);
        }
        let histogram = catalogue
            .iter()
            .find(|d| d.name == "freshen_git_promotion_seconds");
        assert_eq!(
            histogram.map(|d| (d.kind, d.labels.clone())),
            Some(("histogram", vec!["host".to_owned()]))
        );
        assert!(catalogue.windows(2).all(|w| w[0].name < w[1].name));
    }

    /// The value of `metric` for `container`, from a rendered scrape.
    fn value(text: &str, metric: &str, container: &str) -> Option<f64> {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{metric}{{"))
                    && l.contains(&format!("container=\"{container}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    }

    #[test]
    fn ages_are_computed_at_scrape_and_unknown_builds_are_absent() {
        let records = Arc::new(WorkloadRecords::default());
        let now = Utc::now();
        let app = ContainerRecord {
            build_times: vec![
                Some(now - TimeDelta::days(10)),
                Some(now - TimeDelta::days(2)),
            ],
            oldest_start: Some(now - TimeDelta::hours(1)),
            update_available: Some(true),
            update_available_since: Some(now - TimeDelta::hours(5)),
            base_stale: Some(true),
            base_stale_since: Some(now - TimeDelta::days(3)),
            ..container("app")
        };
        let reproducible = ContainerRecord {
            build_times: vec![Some(DateTime::UNIX_EPOCH)],
            oldest_start: None,
            ..container("reproducible")
        };
        records.set(key("web"), workload(vec![app, reproducible], 2));
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        let text = metrics.render().unwrap();

        // The oldest of the two running builds, measured now.
        let image_age = value(&text, "freshen_image_age_seconds", "app").unwrap_or_default();
        assert!((image_age - 864_000.0).abs() < 5.0, "{image_age}");
        let line = text
            .lines()
            .find(|l| l.starts_with("freshen_image_age_seconds{"))
            .unwrap_or_default();
        assert!(line.contains("namespace=\"shop\"") && line.contains("workload=\"web\""));
        assert!(line.contains("image=\"reg.io/shop/app\""));
        // An epoch build time is unknown: no image age series, not a huge one.
        assert_eq!(
            value(&text, "freshen_image_age_seconds", "reproducible"),
            None
        );
        assert!(value(&text, "freshen_container_age_seconds", "app").is_some());
        assert_eq!(
            value(&text, "freshen_image_update_available", "app"),
            Some(1.0)
        );
        assert_eq!(value(&text, "freshen_base_image_stale", "app"), Some(1.0));
        let waiting =
            value(&text, "freshen_image_update_available_seconds", "app").unwrap_or_default();
        assert!((waiting - 5.0 * 3_600.0).abs() < 5.0, "{waiting}");
        assert_eq!(
            value(
                &text,
                "freshen_image_update_available_seconds",
                "reproducible"
            ),
            None
        );
        let stale_for = value(&text, "freshen_base_image_stale_seconds", "app").unwrap_or_default();
        assert!((stale_for - 3.0 * 86_400.0).abs() < 5.0, "{stale_for}");
        // Unknown is absent, not 0.
        assert_eq!(
            value(&text, "freshen_base_image_stale", "reproducible"),
            None
        );
        assert_eq!(
            value(&text, "freshen_image_update_available", "reproducible"),
            None
        );
        // The limit in force, per container so alerts can compare series.
        assert_eq!(
            value(&text, "freshen_policy_max_image_age_seconds", "app"),
            Some(432_000.0)
        );
        assert_eq!(
            value(&text, "freshen_policy_max_container_age_seconds", "app"),
            None
        );
        assert!(
            text.lines()
                .any(|l| l
                    == "freshen_workload_config_errors{kind=\"Deployment\",namespace=\"shop\",workload=\"web\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped_for_the_text_format() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        header(&mut out, "m", "line\\one\ntwo");
        assert_eq!(out, "# HELP m line\\\\one\\ntwo\n# TYPE m gauge\n");
    }

    #[test]
    fn many_workloads_are_written_in_chunks_each_series_once() {
        let records = Arc::new(WorkloadRecords::default());
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        // Exactly two chunks' worth, then one more: the edges of a chunk.
        let n = 2 * WORKLOADS_PER_CHUNK + 1;
        for i in 0..n {
            records.set(
                key(&format!("w{i:05}")),
                workload(vec![container("app")], 0),
            );
        }
        let chunks: Vec<String> = metrics.render_chunks().unwrap().collect();
        assert!(chunks.iter().all(|c| !c.is_empty()));
        // No chunk holds more than its workloads' series (one container
        // each), and a family with series for all of them takes three.
        for chunk in &chunks[1..] {
            let samples = chunk.lines().filter(|l| !l.starts_with('#')).count();
            assert!(samples <= WORKLOADS_PER_CHUNK, "{samples}");
        }
        assert!(chunks.len() > 3 * 3, "{}", chunks.len());
        let text: String = chunks.concat();
        let sample = workload(vec![container("app")], 0);
        for family in &FAMILIES {
            let name = family.name;
            assert_eq!(
                text.lines()
                    .filter(|l| *l == format!("# TYPE {name} gauge"))
                    .count(),
                1,
                "{name}"
            );
            // One series per workload where the family has a value.
            let expected =
                usize::from((family.value)(&sample.containers[0], &sample, Utc::now()).is_some());
            for i in [0, WORKLOADS_PER_CHUNK - 1, WORKLOADS_PER_CHUNK, n - 1] {
                let series = text
                    .lines()
                    .filter(|l| {
                        l.starts_with(&format!("{name}{{"))
                            && l.contains(&format!("workload=\"w{i:05}\""))
                    })
                    .count();
                assert_eq!(series, expected, "{name} of w{i:05}");
            }
        }
        let image_ages = text
            .lines()
            .filter(|l| l.starts_with("freshen_image_age_seconds{"))
            .count();
        assert_eq!(image_ages, n);
        let config_errors = text
            .lines()
            .filter(|l| l.starts_with("freshen_workload_config_errors{"))
            .count();
        assert_eq!(config_errors, n);
    }

    #[test]
    fn removed_workloads_lose_their_series() {
        let records = Arc::new(WorkloadRecords::default());
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        records.set(key("web"), workload(vec![container("app")], 0));
        let text = metrics.render().unwrap_or_default();
        assert!(text.contains("workload=\"web\""));
        assert!(
            text.contains("freshen_workload_config_errors{kind=\"Deployment\",namespace=\"shop\",workload=\"web\"} 0")
        );
        records.remove(&key("web"));
        assert!(
            !metrics
                .render()
                .unwrap_or_default()
                .contains("workload=\"web\"")
        );
    }
}
