//! OCI registry access for freshen, over its own HTTP layer ([`transport`]).
//!
//! - [`RegistryClient::resolve_tag`]: which digest does a tag name now? One
//!   HEAD request (GET only when a registry will not answer HEAD with a
//!   digest), cached for the tag TTL (the poll interval), so for W workloads
//!   over U distinct references an interval costs U requests, never W.
//! - [`RegistryClient::image_facts`]: when was a digest built, and on what
//!   base? A digest names immutable content, so its facts are fetched once
//!   and kept until the byte budget evicts them.
//!
//! Concurrent look-ups of one key share one request ([`cache`]); requests to
//! one registry are limited in concurrency; manifests fetched by digest and
//! blobs are verified against their digest, every body is capped as it
//! streams, and credentials go only where [`transport`] allows.

pub mod auth;
pub mod budget;
pub mod cache;
pub mod facts;
pub mod metrics;
pub mod reach;
pub mod signatures;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_core::{Digest, ImageReference};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use auth::{AuthError, Credential, Keychain};
use budget::Budget;
pub use budget::BudgetConfig;
use cache::{CoalescingCache, Lookup};
pub use facts::{FormatError, ImageFacts, Platform};
use facts::{Manifest, select_platform};
pub use metrics::RegistryMetrics;
pub use reach::{HostPattern, Reach};
pub use transport::HttpError;
use transport::{Call, Transport};

/// Largest manifest body accepted; larger is an error, not a download.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest config blob accepted.
pub const MAX_CONFIG_BYTES: i64 = 8 * 1024 * 1024;
/// Default memory budget of cached image facts.
pub const DEFAULT_FACTS_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Most tags kept resolved at once; the least recently used go first (a
/// tenant naming ever new tags cannot grow the cache).
pub const MAX_CACHED_TAGS: usize = 50_000;
/// Most registry hosts with their own limiter, budget and metric label;
/// beyond it idle entries are dropped and the label reads `other`.
pub const MAX_TRACKED_HOSTS: usize = 256;
/// The `registry` metric label of hosts beyond [`MAX_TRACKED_HOSTS`].
pub const OTHER_REGISTRY_LABEL: &str = "other";

/// Default number of concurrent requests to one registry.
pub const DEFAULT_MAX_CONCURRENT_PER_REGISTRY: usize = 8;

/// How freshen reaches registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Only those listed:
    /// every other registry is HTTPS.
    pub plain_http: Vec<String>,
    /// The platform to read from multi-arch indexes.
    pub platform: Platform,
    /// Timeout of one request.
    pub timeout: Option<Duration>,
    /// How long a resolved tag is trusted: the poll interval.
    pub tag_ttl: Duration,
    /// Requests in flight to one registry at most.
    pub max_concurrent_per_registry: usize,
    /// Memory budget of cached image facts, in bytes.
    pub facts_cache_bytes: usize,
    /// PEM certificates trusted in addition to the system's, for registries
    /// behind a private CA.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Each registry's request rate, burst and backoff.
    pub budget: BudgetConfig,
    /// Registries read through a mirror: source host -> mirror host. An
    /// image of the source is looked up at the mirror, same repository.
    pub mirrors: HashMap<String, String>,
    /// Which hosts may be reached ([`reach`]).
    pub reach: Reach,
}

impl RegistryConfig {
    /// Defaults with the given tag TTL.
    pub fn with_tag_ttl(tag_ttl: Duration) -> Self {
        Self {
            plain_http: Vec::new(),
            platform: Platform::default(),
            timeout: Some(Duration::from_secs(30)),
            tag_ttl,
            max_concurrent_per_registry: DEFAULT_MAX_CONCURRENT_PER_REGISTRY,
            facts_cache_bytes: DEFAULT_FACTS_CACHE_BYTES,
            extra_root_certificates: Vec::new(),
            budget: BudgetConfig::default(),
            mirrors: HashMap::new(),
            reach: Reach::default(),
        }
    }
}

/// A failed registry look-up. Each variant is one step of the look-up and
/// carries the image it was for.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Resolving a tag to a digest failed.
    #[error("{}", describe(Step::Resolve, image, source))]
    Resolve {
        /// The image (with tag).
        image: String,
        /// What the registry answered, or why it did not.
        source: HttpError,
    },
    /// The registry answered a tag with something that is not a digest.
    #[error(
        "{image}: the registry answered digest {digest:?}, which is not sha256:<hex> or sha512:<hex>"
    )]
    BadDigest {
        /// The image.
        image: String,
        /// What it answered.
        digest: String,
    },
    /// Fetching the manifest failed.
    #[error("{}", describe(Step::Manifest, image, source))]
    Manifest {
        /// The image (with digest).
        image: String,
        /// What the registry answered, or why it did not.
        source: HttpError,
    },
    /// The manifest body is over [`MAX_MANIFEST_BYTES`].
    #[error("{image}: manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")]
    ManifestTooLarge {
        /// The image.
        image: String,
        /// Its size.
        size: usize,
    },
    /// The manifest could not be read.
    #[error("{image}: {source}")]
    Format {
        /// The image.
        image: String,
        /// What is wrong with it.
        source: FormatError,
    },
    /// A multi-arch index has no manifest for our platform.
    #[error("{image}: the index has no manifest for platform {platform}")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform looked for.
        platform: Platform,
    },
    /// The config blob is over [`MAX_CONFIG_BYTES`].
    #[error("{image}: image config is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit")]
    ConfigTooLarge {
        /// The image.
        image: String,
        /// Its declared size.
        size: i64,
    },
    /// The registry failed recently (429, 5xx or no answer) and is left
    /// alone until its backoff passes; no request was sent.
    #[error("{image}: registry {registry} is backed off after failing; next request in {}s", retry_in.as_secs().max(1))]
    BackingOff {
        /// The image.
        image: String,
        /// The registry.
        registry: String,
        /// How long until requests go again.
        retry_in: Duration,
    },
    /// The registry's host may not be reached ([`reach`]); no request was
    /// sent.
    #[error("{image}: registry {registry} not allowed: {why}")]
    NotAllowed {
        /// The image.
        image: String,
        /// The registry host.
        registry: String,
        /// Which rule refused it.
        why: String,
    },
    /// Fetching the config blob failed.
    #[error("{}", describe(Step::Config, image, source))]
    Config {
        /// The image.
        image: String,
        /// What the registry answered, or why it did not.
        source: HttpError,
    },
    /// The HTTP layer could not be set up (a CA file that is no
    /// certificate).
    #[error("setting up registry access failed: {0}")]
    Setup(String),
}

/// Which registry call failed, for [`describe`].
#[derive(Clone, Copy)]
enum Step {
    Resolve,
    Manifest,
    Config,
}

/// A failed registry call as a person would say it: what was not found,
/// who refused, who is failing. The URL and the registry's own words stay
/// at the end where they add something; the category (for metrics) is
/// [`RegistryError::category`].
fn describe(step: Step, image: &str, source: &HttpError) -> String {
    // `host/path:tag` or `host/path@digest`.
    let (repository, reference) = match image.rsplit_once('@') {
        Some((repo, digest)) => (repo, digest),
        None => match image.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (image, ""),
        },
    };
    let registry = repository.split('/').next().unwrap_or(repository);
    let short = reference
        .strip_prefix("sha256:")
        .and_then(|hex| hex.get(..12))
        .unwrap_or(reference);
    let what = match step {
        Step::Resolve => format!("tag {reference}"),
        Step::Manifest => format!("manifest {short}"),
        Step::Config => format!("the image config of {short}"),
    };
    let detail = match source {
        HttpError::Status {
            detail: Some(d), ..
        } => format!(" ({d})"),
        _ => String::new(),
    };
    match source.status() {
        Some(404) => format!("{what} not found in {repository} (404)"),
        Some(status @ (401 | 403)) => match source {
            HttpError::Realm { .. } | HttpError::Token { .. } => {
                format!("{status} from {registry}: {source}")
            }
            _ if status == 401 => format!(
                "401 from {registry}: it asks for credentials to read {repository}, and those \
                 presented (if any) were not accepted{detail}"
            ),
            _ => format!(
                "403 from {registry}: the credentials presented may not read {repository}{detail}"
            ),
        },
        Some(429) => format!("429 from {registry}: it is rate-limiting freshen{detail}"),
        Some(status @ 500..=599) => {
            format!("{status} from {registry}: the registry failed for {image}{detail}")
        }
        _ => match source {
            HttpError::Request {
                source: request, ..
            } => {
                let mut cause: &dyn std::error::Error = source;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                if request.is_timeout() {
                    format!("{registry} did not answer in time for {what} of {repository}: {cause}")
                } else {
                    format!("{registry} could not be reached for {what} of {repository}: {cause}")
                }
            }
            _ => format!("{what} of {repository}: {source}"),
        },
    }
}

impl RegistryError {
    /// A bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        let upstream = match self {
            Self::Resolve { source, .. }
            | Self::Manifest { source, .. }
            | Self::Config { source, .. } => Some(source),
            _ => None,
        };
        match upstream {
            Some(HttpError::TooLarge { .. }) => return "registry_too_large",
            Some(HttpError::DigestMismatch { .. }) => return "registry_bad_digest",
            Some(HttpError::Deadline { .. }) => return "registry_timeout",
            // A read or connect that timed out is the same fault as the
            // whole call's deadline (whichever fires first).
            Some(HttpError::Request { source, .. }) if source.is_timeout() => {
                return "registry_timeout";
            }
            Some(HttpError::Realm { .. }) => return "registry_realm_refused",
            _ => {}
        }
        match upstream.and_then(HttpError::status) {
            Some(404) => return "registry_not_found",
            Some(401 | 403) => return "registry_unauthorized",
            Some(429) => return "registry_rate_limited",
            Some(500..=599) => return "registry_unavailable",
            _ => {}
        }
        match self {
            Self::NotAllowed { .. } => "registry_not_allowed",
            Self::Resolve { .. } => "registry_resolve",
            Self::BadDigest { .. } => "registry_bad_digest",
            Self::Manifest { .. } => "registry_manifest",
            Self::ManifestTooLarge { .. } | Self::ConfigTooLarge { .. } => "registry_too_large",
            Self::Format { .. } => "registry_format",
            Self::NoPlatform { .. } => "registry_no_platform",
            Self::Config { .. } => "registry_config",
            Self::BackingOff { .. } => "registry_backoff",
            Self::Setup(_) => "registry_setup",
        }
    }
}

/// Who asks: answers and bearer tokens are kept per credential, so that a
/// look-up without the right credential never shares the answer of one
/// with it (or the other way round). `None` is anonymous. 128 bits of a
/// SHA-256 of the credential: a tenant cannot choose a credential that
/// shares another's cache entries or tokens (a 64-bit unkeyed hash could
/// be collided by search).
type Asker = Option<[u8; 16]>;
type TagKey = (String, String, String, Asker);
/// A digest's facts, per registry and repository (a registry authorises
/// per repository, and one registry's failure is not another's), platform
/// and credential.
type FactsKey = (String, String, Digest, Platform, Asker);

pub(crate) fn asker(credential: Option<&Credential>) -> Asker {
    use sha2::Digest as _;
    credential.map(|c| {
        let mut hash = sha2::Sha256::new();
        hash.update((c.username.len() as u64).to_be_bytes());
        hash.update(c.username.as_bytes());
        hash.update(c.password.as_bytes());
        let full = hash.finalize();
        let mut short = [0_u8; 16];
        short.copy_from_slice(&full[..16]);
        short
    })
}
type Shared<T> = Result<T, Arc<RegistryError>>;

/// Reads tags and image facts from registries, through one shared cache.
///
/// One HTTP layer serves every credential; bearer tokens are kept per
/// registry, repository and credential. Cached answers are shared by
/// everyone who asks with the same credential.
pub struct RegistryClient {
    transport: Result<Transport, String>,
    timeout: Option<Duration>,
    platform: Platform,
    tags: CoalescingCache<TagKey, Digest, Arc<RegistryError>>,
    facts: CoalescingCache<FactsKey, Arc<ImageFacts>, Arc<RegistryError>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    budgets: Mutex<HashMap<String, Budget>>,
    budget: BudgetConfig,
    mirrors: HashMap<String, String>,
    reach: Reach,
    max_concurrent: usize,
    metrics: RegistryMetrics,
    /// Hosts that have their own metric label (at most
    /// [`MAX_TRACKED_HOSTS`]).
    labelled: Mutex<std::collections::HashSet<String>>,
}

impl RegistryClient {
    /// A client with the given settings, counting into `metrics`. Requires a
    /// rustls crypto provider installed process-wide (the binary installs
    /// `ring`).
    pub fn new(config: RegistryConfig, metrics: RegistryMetrics) -> Arc<Self> {
        let transport = Transport::new(
            config.plain_http.clone(),
            config.reach.clone(),
            config.timeout,
            &config.extra_root_certificates,
        )
        .map_err(|e| e.to_string());
        Arc::new(Self {
            transport,
            timeout: config.timeout,
            platform: config.platform,
            tags: CoalescingCache::new(Some(config.tag_ttl), MAX_CACHED_TAGS, |_, _| 1),
            facts: CoalescingCache::new(None, config.facts_cache_bytes, |_, f| facts_weight(f)),
            limits: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            budget: config.budget,
            mirrors: config.mirrors,
            reach: config.reach,
            max_concurrent: config.max_concurrent_per_registry.max(1),
            metrics,
            labelled: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The digest `image`'s tag names, as of `now`: cached for the tag TTL,
    /// one request per tag however many callers ask at once. `image` must
    /// name a tag (or none, meaning `latest`).
    pub async fn resolve_tag(
        self: &Arc<Self>,
        image: &ImageReference,
        credential: Option<&Credential>,
        now: Instant,
    ) -> Shared<Digest> {
        let tag = image
            .effective_tag()
            .unwrap_or(freshen_core::image::DEFAULT_TAG)
            .to_owned();
        let key = (
            image.registry.clone(),
            image.repository.clone(),
            tag.clone(),
            asker(credential),
        );
        let this = Arc::clone(self);
        let (image, credential) = (image.clone(), credential.cloned());
        let (result, how) = self
            .tags
            .get(&key, now, move || async move {
                this.fetch_tag_digest(&image, credential.as_ref(), &tag)
                    .await
                    .map_err(Arc::new)
            })
            .await;
        self.count_lookup(metrics::kind::RESOLVE, how);
        result
    }

    /// The digest `image`'s tag names right now: the cached answer is
    /// dropped first, so this asks the registry (and every later
    /// [`resolve_tag`](Self::resolve_tag) shares the new answer). For when
    /// the tag is known to have moved, or soon will.
    pub async fn resolve_tag_now(
        self: &Arc<Self>,
        image: &ImageReference,
        credential: Option<&Credential>,
        now: Instant,
    ) -> Shared<Digest> {
        let tag = image
            .effective_tag()
            .unwrap_or(freshen_core::image::DEFAULT_TAG)
            .to_owned();
        self.tags.invalidate(&(
            image.registry.clone(),
            image.repository.clone(),
            tag,
            asker(credential),
        ));
        self.resolve_tag(image, credential, now).await
    }

    /// Forgets what `image`'s tag was resolved to, for every credential: a
    /// push moved it (a registry notification said so).
    pub fn forget_tag(&self, image: &ImageReference) {
        let tag = image
            .effective_tag()
            .unwrap_or(freshen_core::image::DEFAULT_TAG);
        self.tags.invalidate_where(|(registry, repository, t, _)| {
            *registry == image.registry && *repository == image.repository && t == tag
        });
    }

    /// Facts of `image` at `digest` (the digest the pods run), read for
    /// `platform` when the digest is a multi-arch index (the configured
    /// platform when `None`). A digest's content never changes, so this
    /// costs requests once per digest and platform.
    pub async fn image_facts(
        self: &Arc<Self>,
        image: &ImageReference,
        digest: &Digest,
        platform: Option<&Platform>,
        credential: Option<&Credential>,
    ) -> Shared<Arc<ImageFacts>> {
        let platform = platform.unwrap_or(&self.platform).clone();
        // The host actually asked (a mirror's, when one serves it).
        let host = self
            .mirrors
            .get(&image.registry)
            .cloned()
            .unwrap_or_else(|| image.registry.clone());
        let key = (
            host,
            image.repository.clone(),
            digest.clone(),
            platform.clone(),
            asker(credential),
        );
        let this = Arc::clone(self);
        let (image, owned, credential) = (image.clone(), digest.clone(), credential.cloned());
        let (result, how) = self
            .facts
            .get(&key, Instant::now(), move || async move {
                this.fetch_facts(&image, &owned, &platform, credential.as_ref())
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await;
        self.count_lookup(metrics::kind::FACTS, how);
        result
    }

    fn count_lookup(&self, kind: &str, how: Lookup) {
        if how != Lookup::Fetched {
            self.metrics.cache_hits.with_label_values(&[kind]).inc();
        }
    }

    /// Admits one request to `registry` for `image` within its budget:
    /// how long to wait for a token, or an error while it is backed off.
    fn admit(&self, registry: &str, image: &str) -> Result<Duration, RegistryError> {
        let now = Instant::now();
        let Ok(mut budgets) = self.budgets.lock() else {
            return Ok(Duration::ZERO);
        };
        if budgets.len() >= MAX_TRACKED_HOSTS && !budgets.contains_key(registry) {
            // Only a registry backing off has state worth keeping; a fresh
            // budget is what any other would get anyway.
            budgets.retain(|_, b| b.backing_off(now));
        }
        budgets
            .entry(registry.to_owned())
            .or_insert_with(|| Budget::new(&self.budget, now))
            .acquire(&self.budget, now)
            .map_err(|until| RegistryError::BackingOff {
                image: image.to_owned(),
                registry: registry.to_owned(),
                retry_in: until.saturating_duration_since(now),
            })
    }

    /// Runs one admitted request to `registry` after its `wait`, within the
    /// registry's concurrency limit, timing and counting it, and feeding its
    /// outcome to the registry's backoff.
    async fn request<T, Fut>(
        &self,
        registry: &str,
        kind: &str,
        wait: Duration,
        request: Fut,
    ) -> Result<T, HttpError>
    where
        Fut: Future<Output = Result<T, HttpError>>,
    {
        if !wait.is_zero() {
            // Paced by the token bucket: this is the rate limit, not a poll.
            tokio::time::sleep(wait).await;
        }
        let limit = self.limit(registry);
        let _permit = limit.acquire().await;
        let start = Instant::now();
        // One deadline for the whole request, body included: a registry
        // trickling a byte a second never holds a look-up longer.
        let result = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, request)
                .await
                .unwrap_or_else(|_| {
                    Err(HttpError::Deadline {
                        registry: registry.to_owned(),
                        limit,
                    })
                }),
            None => request.await,
        };
        let label = self.label(registry);
        let registry_label = label.as_str();
        self.metrics
            .duration
            .with_label_values(&[registry_label, kind])
            .observe(start.elapsed().as_secs_f64());
        let status = match &result {
            Ok(_) => Some(200),
            Err(e) => e.status(),
        };
        let code = status.map_or_else(|| "error".to_owned(), |c| c.to_string());
        self.metrics
            .requests
            .with_label_values(&[registry_label, kind, &code])
            .inc();
        if let Ok(mut budgets) = self.budgets.lock()
            && let Some(budget) = budgets.get_mut(registry)
        {
            if budget::backs_off(status) {
                let now = Instant::now();
                let mut until = budget.on_failure(&self.budget, now, jitter());
                // The registry's own figure, when it gave one (capped at the
                // longest backoff freshen keeps).
                if let Some(wait) = result.as_ref().err().and_then(HttpError::retry_after) {
                    until = budget.hold_until(now + wait.min(self.budget.backoff_max));
                }
                tracing::warn!(%registry, status = %code, retry_in = ?until.saturating_duration_since(Instant::now()), "registry backed off");
            } else {
                budget.on_success();
            }
        }
        result
    }

    /// The `registry` metric label of a host: itself for the first
    /// [`MAX_TRACKED_HOSTS`] hosts, `other` beyond, so a tenant naming ever
    /// new registries cannot grow the metric.
    fn label(&self, registry: &str) -> String {
        let Ok(mut labelled) = self.labelled.lock() else {
            return OTHER_REGISTRY_LABEL.to_owned();
        };
        if labelled.contains(registry) {
            return registry.to_owned();
        }
        if labelled.len() < MAX_TRACKED_HOSTS {
            labelled.insert(registry.to_owned());
            return registry.to_owned();
        }
        OTHER_REGISTRY_LABEL.to_owned()
    }

    /// Whether `registry` may be reached ([`reach`]): judged by name, then
    /// by every address it resolves to; a name that does not resolve is
    /// refused (fail closed). The connection itself is judged again by the
    /// transport's resolver.
    async fn check_reach(&self, registry: &str, image: &str) -> Result<(), RegistryError> {
        reach::check(&self.reach, reach::host_of(registry))
            .await
            .map_err(|why| RegistryError::NotAllowed {
                image: image.to_owned(),
                registry: registry.to_owned(),
                why,
            })
    }

    /// The credential to present for an image of `registry`: the one of the
    /// host actually contacted (its mirror's, when mirrored), never the
    /// source's to a mirror.
    pub fn credential_for<'k>(
        &self,
        keychain: &'k Keychain,
        registry: &str,
    ) -> Option<&'k Credential> {
        keychain.get(self.host_for(registry))
    }

    /// The host look-ups of `registry`'s images go to: its mirror, if one is
    /// configured, else itself.
    pub fn host_for<'a>(&'a self, registry: &'a str) -> &'a str {
        self.mirrors.get(registry).map_or(registry, String::as_str)
    }

    /// `image` as it is looked up: at its registry's mirror, if any.
    fn mirrored(&self, image: &ImageReference) -> ImageReference {
        let mut image = image.clone();
        if let Some(mirror) = self.mirrors.get(&image.registry) {
            image.registry = mirror.clone();
        }
        image
    }

    /// The HTTP layer, or why it could not be built.
    fn transport(&self, image: &str) -> Result<&Transport, RegistryError> {
        self.transport
            .as_ref()
            .map_err(|e| RegistryError::Setup(format!("{image}: {e}")))
    }

    fn limit(&self, registry: &str) -> Arc<Semaphore> {
        match self.limits.lock() {
            Ok(mut limits) => {
                if limits.len() >= MAX_TRACKED_HOSTS && !limits.contains_key(registry) {
                    // Limiters nobody holds a permit of are recreated at will.
                    limits.retain(|_, s| Arc::strong_count(s) > 1);
                }
                Arc::clone(
                    limits
                        .entry(registry.to_owned())
                        .or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrent))),
                )
            }
            Err(_) => Arc::new(Semaphore::new(self.max_concurrent)),
        }
    }

    #[tracing::instrument(skip(self), fields(image = %image.name()))]
    async fn fetch_tag_digest(
        &self,
        image: &ImageReference,
        credential: Option<&Credential>,
        tag: &str,
    ) -> Result<Digest, RegistryError> {
        let image = &self.mirrored(image);
        let name = format!("{}:{tag}", image.name());
        self.check_reach(&image.registry, &name).await?;
        let transport = self.transport(&name)?;
        let wait = self.admit(&image.registry, &name)?;
        let call = Call {
            registry: &image.registry,
            repository: &image.repository,
            credential,
        };
        let digest = self
            .request(
                &image.registry,
                metrics::kind::RESOLVE,
                wait,
                transport.manifest_digest(
                    call,
                    tag,
                    &facts::MANIFEST_MEDIA_TYPES,
                    MAX_MANIFEST_BYTES,
                ),
            )
            .await
            .map_err(|source| RegistryError::Resolve {
                image: name.clone(),
                source,
            })?;
        digest.parse().map_err(|_| RegistryError::BadDigest {
            image: name,
            digest,
        })
    }

    #[tracing::instrument(skip(self), fields(image = %image.name(), digest = %digest.short()))]
    async fn fetch_facts(
        &self,
        image: &ImageReference,
        digest: &Digest,
        platform: &Platform,
        credential: Option<&Credential>,
    ) -> Result<ImageFacts, RegistryError> {
        let image = &self.mirrored(image);
        let name = format!("{}@{}", image.name(), digest);
        self.check_reach(&image.registry, &name).await?;
        let transport = self.transport(&name)?;
        let call = Call {
            registry: &image.registry,
            repository: &image.repository,
            credential,
        };
        let mut manifest = self.manifest(transport, call, digest, &name).await?;
        let mut platform_digest = None;
        if let Manifest::Index(entries) = &manifest {
            let entry =
                select_platform(entries, platform).ok_or_else(|| RegistryError::NoPlatform {
                    image: name.clone(),
                    platform: platform.clone(),
                })?;
            let chosen = descriptor_digest(&name, &entry.digest)?;
            manifest = self.manifest(transport, call, &chosen, &name).await?;
            platform_digest = Some(chosen);
        }
        let Manifest::Image(image_manifest) = manifest else {
            return Err(RegistryError::Format {
                image: name,
                source: FormatError::Manifest("an index entry points to another index".into()),
            });
        };
        let config = &image_manifest.config;
        if config.size > MAX_CONFIG_BYTES {
            return Err(RegistryError::ConfigTooLarge {
                image: name,
                size: config.size,
            });
        }
        let config_digest = descriptor_digest(&name, &config.digest)?;
        let declared = usize::try_from(config.size.max(0)).unwrap_or(0);
        let wait = self.admit(&image.registry, &name)?;
        let body = self
            .request(
                &image.registry,
                metrics::kind::CONFIG,
                wait,
                transport.blob(call, config_digest.as_str(), declared, "image config"),
            )
            .await
            .map_err(|source| RegistryError::Config {
                image: name.clone(),
                source,
            })?;
        facts::image_facts(
            digest.clone(),
            platform_digest,
            &image_manifest.annotations,
            &body,
        )
        .map_err(|source| RegistryError::Format {
            image: name,
            source,
        })
    }

    async fn manifest(
        &self,
        transport: &Transport,
        call: Call<'_>,
        digest: &Digest,
        name: &str,
    ) -> Result<Manifest, RegistryError> {
        let wait = self.admit(call.registry, name)?;
        let body = self
            .request(
                call.registry,
                metrics::kind::MANIFEST,
                wait,
                transport.manifest(
                    call,
                    digest.as_str(),
                    &facts::MANIFEST_MEDIA_TYPES,
                    MAX_MANIFEST_BYTES,
                ),
            )
            .await
            .map_err(|source| match source {
                HttpError::TooLarge { .. } => RegistryError::ManifestTooLarge {
                    image: name.to_owned(),
                    size: MAX_MANIFEST_BYTES + 1,
                },
                source => RegistryError::Manifest {
                    image: name.to_owned(),
                    source,
                },
            })?;
        Manifest::parse(&body).map_err(|source| RegistryError::Format {
            image: name.to_owned(),
            source,
        })
    }
}

/// A digest a manifest names (an index entry, a config), or a format error
/// naming the image.
fn descriptor_digest(image: &str, text: &str) -> Result<Digest, RegistryError> {
    text.parse()
        .map_err(|e: freshen_core::ImageRefError| RegistryError::Format {
            image: image.to_owned(),
            source: FormatError::Manifest(e.to_string()),
        })
}

/// A number in [0, 1) that differs between calls, for backoff jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Approximate bytes one cached facts entry holds.
fn facts_weight(facts: &ImageFacts) -> usize {
    std::mem::size_of::<ImageFacts>()
        + facts.digest.as_str().len() * 2
        + facts
            .platform_digest
            .as_ref()
            .map_or(0, |d| d.as_str().len())
        + facts.base_name.as_ref().map_or(0, String::len)
        + facts.base_digest.as_ref().map_or(0, |d| d.as_str().len())
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    fn status(code: u16, detail: Option<&str>) -> HttpError {
        HttpError::Status {
            status: code,
            url: "http://reg.example/v2/team/app/manifests/v1".into(),
            detail: detail.map(str::to_owned),
            retry_after: None,
        }
    }

    #[test]
    fn failures_read_as_a_person_would_say_them() {
        let tag = "reg.example/team/app:v1";
        let digest = format!("reg.example/team/app@sha256:{}", "ab".repeat(32));
        for (step, image, source, want) in [
            (Step::Resolve, tag, status(404, Some("manifest unknown")), "tag v1 not found in reg.example/team/app (404)".to_owned()),
            (Step::Manifest, digest.as_str(), status(404, None), "manifest abababababab not found in reg.example/team/app (404)".to_owned()),
            (Step::Resolve, tag, status(401, None), "401 from reg.example: it asks for credentials to read reg.example/team/app, and those presented (if any) were not accepted".to_owned()),
            (Step::Resolve, tag, status(403, Some("denied")), "403 from reg.example: the credentials presented may not read reg.example/team/app (denied)".to_owned()),
            (Step::Resolve, tag, status(429, None), "429 from reg.example: it is rate-limiting freshen".to_owned()),
            (Step::Config, digest.as_str(), status(503, None), format!("503 from reg.example: the registry failed for {digest}")),
        ] {
            assert_eq!(describe(step, image, &source), want);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<RegistryClient> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = match RegistryMetrics::new() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        RegistryClient::new(
            RegistryConfig::with_tag_ttl(Duration::from_secs(300)),
            metrics,
        )
    }

    #[tokio::test]
    async fn maps_keyed_by_tenant_data_stay_bounded_over_100k_hosts_and_tags() {
        let registry = client();
        let now = Instant::now();
        let digest: Digest = match format!("sha256:{}", "a".repeat(64)).parse() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        for i in 0..100_000 {
            let host = format!("h{i}.example");
            let _ = registry.admit(&host, "img");
            let _ = registry.limit(&host);
            let _ = registry.label(&host);
            let key = (host, "repo".to_owned(), format!("t{i}"), None);
            let d = digest.clone();
            let _ = registry
                .tags
                .get(&key, now, move || async move { Ok(d) })
                .await;
        }
        let len = |m: &Mutex<HashMap<String, Budget>>| m.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len(&registry.budgets) <= MAX_TRACKED_HOSTS);
        assert!(registry.limits.lock().map(|m| m.len()).unwrap_or(0) <= MAX_TRACKED_HOSTS);
        assert!(registry.labelled.lock().map(|m| m.len()).unwrap_or(0) <= MAX_TRACKED_HOSTS);
        assert_eq!(registry.label("h99999.example"), OTHER_REGISTRY_LABEL);
        assert_eq!(
            registry.label("h0.example"),
            "h0.example",
            "early hosts keep theirs"
        );
        assert!(
            registry.tags.len() <= MAX_CACHED_TAGS,
            "{}",
            registry.tags.len()
        );
    }

    #[tokio::test]
    async fn a_digests_facts_are_kept_per_registry_repository_and_credential() {
        let registry = client();
        let digest: Digest = match format!("sha256:{}", "b".repeat(64)).parse() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        // Facts of the digest as one tenant's registry answered them.
        let planted = Arc::new(ImageFacts {
            digest: digest.clone(),
            platform_digest: None,
            created: None,
            base_name: Some("evil.example/base:1".into()),
            base_digest: None,
        });
        let key = (
            "tenant.example".to_owned(),
            "app".to_owned(),
            digest.clone(),
            registry.platform.clone(),
            None,
        );
        let value = Arc::clone(&planted);
        let _ = registry
            .facts
            .get(&key, Instant::now(), move || async move { Ok(value) })
            .await;
        let image = |s: &str| match ImageReference::parse(s) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        let same = registry
            .image_facts(&image("tenant.example/app:1"), &digest, None, None)
            .await;
        assert_eq!(same.ok(), Some(Arc::clone(&planted)));
        // Another registry, another repository, or a credential: each asks
        // its own registry (here refused: loopback), never reads the above.
        for other in ["127.0.0.1/app:1", "tenant.example/payments:1"] {
            let answer = registry
                .image_facts(&image(other), &digest, None, None)
                .await;
            assert!(answer.is_err(), "{other}: {answer:?}");
        }
        let credential = Credential {
            username: "u".into(),
            password: "p".into(),
        };
        assert_ne!(asker(Some(&credential)), None);
        let split = Credential {
            username: "up".into(),
            password: String::new(),
        };
        assert_ne!(asker(Some(&credential)), asker(Some(&split)));
    }

    #[test]
    fn a_mirror_gets_its_own_credential_never_the_sources() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = RegistryConfig::with_tag_ttl(Duration::from_secs(300));
        config
            .mirrors
            .insert("docker.io".into(), "mirror.internal:5000".into());
        let metrics = match RegistryMetrics::new() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        let registry = RegistryClient::new(config, metrics);
        let hub = Credential {
            username: "hub".into(),
            password: "hub-secret".into(),
        };
        let mut source_only = Keychain::default();
        source_only.insert("docker.io", hub.clone());
        assert_eq!(registry.credential_for(&source_only, "docker.io"), None);
        let mut both = source_only.clone();
        both.insert(
            "mirror.internal:5000",
            Credential {
                username: "mirror".into(),
                password: "m".into(),
            },
        );
        assert_eq!(
            registry
                .credential_for(&both, "docker.io")
                .map(|c| c.username.as_str()),
            Some("mirror")
        );
    }

    #[tokio::test]
    async fn a_refused_host_is_an_error_before_any_request() {
        let registry = client();
        let e = registry
            .check_reach("169.254.169.254", "169.254.169.254/x:1")
            .await;
        let Err(e) = e else {
            panic!("metadata address reached");
        };
        assert_eq!(e.category(), "registry_not_allowed");
        assert!(e.to_string().contains("not allowed"), "{e}");
        assert!(registry.check_reach("[::1]:5000", "x").await.is_err());
        assert!(registry.check_reach("93.184.216.34:443", "x").await.is_ok());
    }
}
