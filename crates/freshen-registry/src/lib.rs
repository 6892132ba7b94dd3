//! OCI registry access for freshen, on oci-client.
//!
//! [`RegistryClient::image_facts`] answers "when was this digest built, and on
//! what base?" for an image the pods run. A digest names immutable content,
//! so its facts are fetched once and cached; manifests fetched by digest and
//! blobs are verified against their digest by oci-client.

pub mod facts;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_core::{Digest, ImageReference};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use facts::{FormatError, ImageFacts, Platform};
use facts::{Manifest, select_platform};

/// Largest manifest body accepted; larger is an error, not a download.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest config blob accepted.
pub const MAX_CONFIG_BYTES: i64 = 8 * 1024 * 1024;
/// How many images' facts the cache keeps (a few hundred bytes each).
const FACTS_CACHE_ENTRIES: usize = 16_384;

/// How freshen reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Only those listed:
    /// every other registry is HTTPS.
    pub plain_http: Vec<String>,
    /// The platform to read from multi-arch indexes.
    pub platform: Platform,
    /// Timeout of one request.
    pub timeout: Option<Duration>,
}

/// A failed registry look-up. Each variant is one step of the look-up and
/// carries the image it was for.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference could not be expressed for the client.
    #[error("{image}: not a valid registry reference: {source}")]
    Reference {
        /// The image.
        image: String,
        /// Why.
        source: oci_client::ParseError,
    },
    /// Fetching the manifest failed.
    #[error("{image}: fetching manifest failed: {source}")]
    Manifest {
        /// The image (with digest).
        image: String,
        /// The client's error.
        source: oci_client::errors::OciDistributionError,
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
    /// Fetching the config blob failed.
    #[error("{image}: fetching image config failed: {source}")]
    Config {
        /// The image.
        image: String,
        /// The client's error.
        source: oci_client::errors::OciDistributionError,
    },
}

impl RegistryError {
    /// A bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Reference { .. } => "registry_reference",
            Self::Manifest { .. } => "registry_manifest",
            Self::ManifestTooLarge { .. } | Self::ConfigTooLarge { .. } => "registry_too_large",
            Self::Format { .. } => "registry_format",
            Self::NoPlatform { .. } => "registry_no_platform",
            Self::Config { .. } => "registry_config",
        }
    }
}

/// Reads image facts from registries, caching them by digest.
pub struct RegistryClient {
    client: Client,
    platform: Platform,
    cache: Mutex<FactsCache>,
}

impl RegistryClient {
    /// A client with the given settings. Requires a rustls crypto provider to
    /// be installed process-wide (the binary installs `ring`).
    pub fn new(config: RegistryConfig) -> Self {
        let protocol = if config.plain_http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(config.plain_http.clone())
        };
        let client = Client::new(ClientConfig {
            protocol,
            read_timeout: config.timeout,
            connect_timeout: config.timeout,
            ..ClientConfig::default()
        });
        Self {
            client,
            platform: config.platform,
            cache: Mutex::new(FactsCache::default()),
        }
    }

    /// Facts of `image` at `digest` (the digest the pods run). Cached: a
    /// digest's content never changes.
    pub async fn image_facts(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<Arc<ImageFacts>, RegistryError> {
        if let Some(hit) = self.cached(digest) {
            return Ok(hit);
        }
        let facts = Arc::new(self.fetch_facts(image, digest).await?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(digest.clone(), Arc::clone(&facts));
        }
        Ok(facts)
    }

    fn cached(&self, digest: &Digest) -> Option<Arc<ImageFacts>> {
        self.cache.lock().ok().and_then(|c| c.get(digest))
    }

    #[tracing::instrument(skip(self), fields(image = %image.name(), digest = %digest.short()))]
    async fn fetch_facts(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<ImageFacts, RegistryError> {
        let name = format!("{}@{}", image.name(), digest);
        let reference =
            Reference::try_from(name.as_str()).map_err(|source| RegistryError::Reference {
                image: name.clone(),
                source,
            })?;
        let mut manifest = self.manifest(&reference, &name).await?;
        let mut platform_digest = None;
        if let Manifest::Index(entries) = &manifest {
            let entry = select_platform(entries, &self.platform).ok_or_else(|| {
                RegistryError::NoPlatform {
                    image: name.clone(),
                    platform: self.platform.clone(),
                }
            })?;
            let chosen: Digest =
                entry
                    .digest
                    .parse()
                    .map_err(|e: freshen_core::ImageRefError| RegistryError::Format {
                        image: name.clone(),
                        source: FormatError::Manifest(e.to_string()),
                    })?;
            let platform_ref = reference.clone_with_digest(chosen.to_string());
            manifest = self.manifest(&platform_ref, &name).await?;
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
        let descriptor = OciDescriptor {
            media_type: config.media_type.clone(),
            digest: config.digest.clone(),
            size: config.size,
            ..OciDescriptor::default()
        };
        let mut body = Vec::with_capacity(usize::try_from(config.size).unwrap_or(0));
        self.client
            .pull_blob(&reference, &descriptor, &mut body)
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

    async fn manifest(&self, reference: &Reference, name: &str) -> Result<Manifest, RegistryError> {
        let (body, _digest) = self
            .client
            .pull_manifest_raw(
                reference,
                &RegistryAuth::Anonymous,
                &facts::MANIFEST_MEDIA_TYPES,
            )
            .await
            .map_err(|source| RegistryError::Manifest {
                image: name.to_owned(),
                source,
            })?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge {
                image: name.to_owned(),
                size: body.len(),
            });
        }
        Manifest::parse(&body).map_err(|source| RegistryError::Format {
            image: name.to_owned(),
            source,
        })
    }
}

/// Facts by digest, bounded in entries; the oldest entry goes first.
#[derive(Default)]
struct FactsCache {
    entries: HashMap<Digest, Arc<ImageFacts>>,
    order: VecDeque<Digest>,
}

impl FactsCache {
    fn get(&self, digest: &Digest) -> Option<Arc<ImageFacts>> {
        self.entries.get(digest).cloned()
    }

    fn insert(&mut self, digest: Digest, facts: Arc<ImageFacts>) {
        if self.entries.insert(digest.clone(), facts).is_none() {
            self.order.push_back(digest);
        }
        while self.order.len() > FACTS_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}
