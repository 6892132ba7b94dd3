//! The registry client's Prometheus instruments. Labels are bounded: the
//! registry host, the kind of request, and an HTTP status (or `error` for a
//! failure without one); never a repository, tag or digest.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Kinds of registry request, the `kind` label.
pub mod kind {
    /// Tag -> digest (HEAD, or GET when a registry refuses HEAD).
    pub const RESOLVE: &str = "resolve";
    /// A manifest fetched by digest.
    pub const MANIFEST: &str = "manifest";
    /// A config blob fetched by digest.
    pub const CONFIG: &str = "config";
    /// An image's facts (manifest and config), as a cache-hit kind: a hit
    /// saves both requests.
    pub const FACTS: &str = "facts";
    /// A digest's signatures: the referrers index, the fallback and `.sig`
    /// tags, their manifests and bundle blobs.
    pub const SIGNATURE: &str = "signature";
}

/// Counters and histograms of registry traffic.
#[derive(Clone)]
pub struct RegistryMetrics {
    /// `freshen_registry_requests_total{registry,kind,code}`.
    pub requests: IntCounterVec,
    /// `freshen_registry_request_duration_seconds{registry,kind}`.
    pub duration: HistogramVec,
    /// `freshen_registry_cache_hits_total{kind}`: look-ups answered without
    /// a request (cached, or joined to another caller's request); kind is
    /// `resolve` or `facts`.
    pub cache_hits: IntCounterVec,
}

impl RegistryMetrics {
    /// Creates the instruments (not yet registered).
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "freshen_registry_requests_total",
                    "Registry requests by registry host, kind (resolve, manifest, config, \
                     signature) and code (the HTTP status, or error for a failure without one).",
                ),
                &["registry", "kind", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "freshen_registry_request_duration_seconds",
                    "Duration of registry requests, by registry host and kind.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["registry", "kind"],
            )?,
            cache_hits: IntCounterVec::new(
                Opts::new(
                    "freshen_registry_cache_hits_total",
                    "Registry look-ups answered from the cache or by joining an in-flight \
                     request, by kind (resolve: a tag; facts: a digest's manifest and config).",
                ),
                &["kind"],
            )?,
        })
    }

    /// Every instrument, to register (they share their state with `self`).
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.cache_hits.clone()),
        ]
    }

    /// Registers every instrument in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        self.collectors()
            .into_iter()
            .try_for_each(|c| registry.register(c))
    }
}
