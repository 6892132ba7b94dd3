//! Prometheus metrics of the operator.
//!
//! Ages grow every second, so they are not stored as gauges that go stale
//! between reconciles: reconciles record *timestamps* (build time, oldest
//! container start) per container, and [`AgeCollector`] turns them into ages
//! at scrape time with `freshen_core`'s rules. A workload's series vanish as
//! soon as its entry is removed (deleted, or opted out).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Identifies a workload: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub name: String,
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What was last observed of one container of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Container name.
    pub container: String,
    /// Image repository (`registry/repository`, no tag or digest).
    pub image: String,
    /// Build times of the digests its pods run, as the registry reports them
    /// (judged at scrape time: implausible ones are unknown and not exported).
    pub build_times: Vec<Option<DateTime<Utc>>>,
    /// Start of its oldest running instance.
    pub oldest_start: Option<DateTime<Utc>>,
    /// Whether its tag names a digest no pod runs; `None` when unknown.
    pub update_available: Option<bool>,
    /// Whether the base of a running digest moved on; `None` when unknown
    /// (no base known, or nothing to compare).
    pub base_stale: Option<bool>,
    /// Since when the base has been stale (see `freshen_core::base`).
    pub base_stale_since: Option<DateTime<Utc>>,
}

/// The per-container records of all measured workloads, shared between the
/// reconciler (writer) and the collector (reader).
#[derive(Debug, Default)]
pub struct WorkloadRecords {
    inner: RwLock<BTreeMap<WorkloadKey, Vec<ContainerRecord>>>,
}

impl WorkloadRecords {
    /// Replaces a workload's records.
    pub fn set(&self, key: WorkloadKey, records: Vec<ContainerRecord>) {
        if let Ok(mut map) = self.inner.write() {
            map.insert(key, records);
        }
    }

    /// Forgets a workload; its series disappear from the next scrape.
    pub fn remove(&self, key: &WorkloadKey) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(key);
        }
    }

    /// Keeps only the workloads for which `keep` holds.
    pub fn retain(&self, mut keep: impl FnMut(&WorkloadKey) -> bool) {
        if let Ok(mut map) = self.inner.write() {
            map.retain(|k, _| keep(k));
        }
    }

    /// A copy of one workload's records.
    pub fn get(&self, key: &WorkloadKey) -> Option<Vec<ContainerRecord>> {
        self.inner.read().ok().and_then(|m| m.get(key).cloned())
    }

    /// How many workloads are recorded.
    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no workload is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const CONTAINER_LABELS: [&str; 4] = ["namespace", "workload", "container", "image"];

/// Exports the per-container series (`freshen_image_age_seconds`,
/// `freshen_container_age_seconds`, `freshen_image_update_available`),
/// computed at scrape time from [`WorkloadRecords`].
pub struct AgeCollector {
    records: Arc<WorkloadRecords>,
    image_age: GaugeVec,
    container_age: GaugeVec,
    update_available: GaugeVec,
    base_stale: GaugeVec,
    base_stale_seconds: GaugeVec,
    descs: Vec<Desc>,
}

impl AgeCollector {
    fn new(records: Arc<WorkloadRecords>) -> prometheus::Result<Self> {
        let image_age = GaugeVec::new(
            Opts::new(
                "freshen_image_age_seconds",
                "Seconds since the image the container runs was built (the oldest build when \
                 its pods run several digests). Absent when the build time is unknown.",
            ),
            &CONTAINER_LABELS,
        )?;
        let container_age = GaugeVec::new(
            Opts::new(
                "freshen_container_age_seconds",
                "Seconds since the oldest running instance of the container started.",
            ),
            &CONTAINER_LABELS,
        )?;
        let update_available = GaugeVec::new(
            Opts::new(
                "freshen_image_update_available",
                "1 when the container's tag now names a digest none of its pods runs, else 0. \
                 Absent when unknown.",
            ),
            &CONTAINER_LABELS,
        )?;
        let base_stale = GaugeVec::new(
            Opts::new(
                "freshen_base_image_stale",
                "1 when the base image of a running digest has moved on (its tag names another \
                 digest, or a newer build), else 0. Absent when unknown.",
            ),
            &CONTAINER_LABELS,
        )?;
        let base_stale_seconds = GaugeVec::new(
            Opts::new(
                "freshen_base_image_stale_seconds",
                "Seconds since the base image moved on: since the newer base was built, else \
                 since freshen first saw it. Present only while stale.",
            ),
            &CONTAINER_LABELS,
        )?;
        let descs = [
            &image_age,
            &container_age,
            &update_available,
            &base_stale,
            &base_stale_seconds,
        ]
        .into_iter()
        .flat_map(|g| g.desc())
        .cloned()
        .collect();
        Ok(Self {
            records,
            image_age,
            container_age,
            update_available,
            base_stale,
            base_stale_seconds,
            descs,
        })
    }
}

impl Collector for AgeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Utc::now();
        self.image_age.reset();
        self.container_age.reset();
        self.update_available.reset();
        self.base_stale.reset();
        self.base_stale_seconds.reset();
        if let Ok(map) = self.records.inner.read() {
            for (key, containers) in map.iter() {
                for c in containers {
                    let labels = [&*key.namespace, &*key.name, &*c.container, &*c.image];
                    let oldest_build = c
                        .build_times
                        .iter()
                        .filter_map(|t| freshen_core::image_age(*t, now).known())
                        .max();
                    if let Some(age) = oldest_build {
                        self.image_age
                            .with_label_values(&labels)
                            .set(age.as_secs_f64());
                    }
                    if let Some(age) = freshen_core::container_age(c.oldest_start, now) {
                        self.container_age
                            .with_label_values(&labels)
                            .set(age.as_secs_f64());
                    }
                    if let Some(available) = c.update_available {
                        self.update_available
                            .with_label_values(&labels)
                            .set(f64::from(u8::from(available)));
                    }
                    if let Some(stale) = c.base_stale {
                        self.base_stale
                            .with_label_values(&labels)
                            .set(f64::from(u8::from(stale)));
                    }
                    if let Some(since) = c.base_stale_since {
                        let seconds = freshen_core::age::elapsed(since, now).as_secs_f64();
                        self.base_stale_seconds
                            .with_label_values(&labels)
                            .set(seconds);
                    }
                }
            }
        }
        let mut families = self.image_age.collect();
        families.extend(self.container_age.collect());
        families.extend(self.update_available.collect());
        families.extend(self.base_stale.collect());
        families.extend(self.base_stale_seconds.collect());
        families
    }
}

/// The operator's metrics registry and its own instruments.
pub struct Metrics {
    registry: Registry,
    /// `freshen_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `freshen_reconcile_errors_total{category}`.
    pub reconcile_errors: IntCounterVec,
}

impl Metrics {
    /// Registers every metric: the per-container collector over `records`,
    /// the registry client's `registry_metrics`, and the reconcile metrics.
    pub fn new(
        records: Arc<WorkloadRecords>,
        registry_metrics: &freshen_registry::RegistryMetrics,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry_metrics.register(&registry)?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "freshen_reconcile_duration_seconds",
                "Duration of one reconcile of one workload.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "freshen_reconcile_errors_total",
                "Reconciles that failed, by the step that failed.",
            ),
            &["category"],
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(AgeCollector::new(records)?))?;
        Ok(Self {
            registry,
            reconcile_duration,
            reconcile_errors,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_metrics() -> freshen_registry::RegistryMetrics {
        freshen_registry::RegistryMetrics::new().unwrap()
    }

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn render(records: &Arc<WorkloadRecords>) -> String {
        let metrics = Metrics::new(Arc::clone(records), &registry_metrics()).unwrap();
        metrics.render().unwrap()
    }

    #[test]
    fn ages_are_computed_at_scrape_and_unknown_builds_are_absent() {
        let records = Arc::new(WorkloadRecords::default());
        let now = Utc::now();
        records.set(
            key("web"),
            vec![
                ContainerRecord {
                    container: "app".into(),
                    image: "reg.io/shop/web".into(),
                    build_times: vec![
                        Some(now - chrono::TimeDelta::days(10)),
                        Some(now - chrono::TimeDelta::days(2)),
                    ],
                    oldest_start: Some(now - chrono::TimeDelta::hours(1)),
                    update_available: Some(true),
                    base_stale: Some(true),
                    base_stale_since: Some(now - chrono::TimeDelta::days(3)),
                },
                ContainerRecord {
                    container: "reproducible".into(),
                    image: "reg.io/shop/sidecar".into(),
                    build_times: vec![Some(DateTime::UNIX_EPOCH)],
                    oldest_start: None,
                    update_available: None,
                    base_stale: None,
                    base_stale_since: None,
                },
            ],
        );
        let text = render(&records);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("freshen_image_age_seconds{") && l.contains("container=\"app\"")
            })
            .unwrap_or_else(|| panic!("no image age for app in:\n{text}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        // The oldest of the two running builds, measured now.
        assert!((value - 864_000.0).abs() < 5.0, "{line}");
        assert!(line.contains("namespace=\"shop\"") && line.contains("workload=\"web\""));
        assert!(line.contains("image=\"reg.io/shop/web\""));
        // An epoch build time is unknown: no image age series, not a huge one.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("freshen_image_age_seconds{") && l.contains("reproducible"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("freshen_container_age_seconds{") && l.contains("app"))
        );
        let update = |container: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("freshen_image_update_available{")
                        && l.contains(&format!("container=\"{container}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(update("app").as_deref(), Some("1"));
        let value = |metric: &str, container: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{metric}{{"))
                        && l.contains(&format!("container=\"{container}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!(value("freshen_base_image_stale", "app"), Some(1.0));
        let stale_for = value("freshen_base_image_stale_seconds", "app").unwrap_or_default();
        assert!((stale_for - 3.0 * 86_400.0).abs() < 5.0, "{stale_for}");
        assert_eq!(value("freshen_base_image_stale", "reproducible"), None);
        // Unknown is absent, not 0.
        assert_eq!(update("reproducible"), None);
    }

    #[test]
    fn removed_workloads_lose_their_series() {
        let records = Arc::new(WorkloadRecords::default());
        let metrics = Metrics::new(Arc::clone(&records), &registry_metrics()).unwrap();
        records.set(
            key("web"),
            vec![ContainerRecord {
                container: "app".into(),
                image: "reg.io/web".into(),
                build_times: vec![Some(Utc::now())],
                oldest_start: Some(Utc::now()),
                update_available: Some(false),
                base_stale: Some(false),
                base_stale_since: None,
            }],
        );
        assert!(
            metrics
                .render()
                .unwrap_or_default()
                .contains("workload=\"web\"")
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
