//! What an image's manifest and config say about it, read without I/O.
//!
//! These are the registry formats freshen reads: OCI and Docker v2 manifests
//! and indexes, and the image config. Only the fields freshen uses are
//! modelled; everything else is ignored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use freshen_core::Digest;
use serde::Deserialize;

/// `org.opencontainers.image.created`: build time, RFC 3339.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// `org.opencontainers.image.base.name`: the base image reference.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// `org.opencontainers.image.base.digest`: the base manifest digest built on.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Media types accepted when fetching a manifest, most specific first.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A platform as indexes name them, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v8`; `None` matches any.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Self {
                    os: (*os).into(),
                    architecture: (*arch).into(),
                    variant: Some((*variant).into()),
                })
            }
            _ => Err(format!(
                "platform {s:?} is invalid: expected os/architecture[/variant], e.g. linux/amd64"
            )),
        }
    }
}

/// A manifest as fetched: either a single image or an index of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(ImageManifest),
    /// A multi-platform index (manifest list).
    Index(Vec<IndexEntry>),
}

/// The parts of an image manifest freshen reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageManifest {
    /// The config blob's descriptor.
    pub config: Descriptor,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Digest of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: i64,
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// Digest of the platform's manifest.
    pub digest: String,
    /// Its platform, when the index names one.
    pub platform: Option<Platform>,
}

/// A manifest body that cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not JSON of a known manifest shape.
    #[error("manifest is not an OCI or Docker v2 image manifest or index: {0}")]
    Manifest(String),
    /// The config blob is not JSON of an image config.
    #[error("image config is not valid JSON: {0}")]
    Config(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<RawIndexEntry>>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Manifest {
    /// Reads a manifest or index body.
    pub fn parse(body: &[u8]) -> Result<Self, FormatError> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| FormatError::Manifest(e.to_string()))?;
        match (raw.manifests, raw.config) {
            (Some(entries), _) => Ok(Self::Index(
                entries
                    .into_iter()
                    .map(|e| IndexEntry {
                        digest: e.digest,
                        platform: e.platform.map(|p| Platform {
                            os: p.os,
                            architecture: p.architecture,
                            variant: p.variant,
                        }),
                    })
                    .collect(),
            )),
            (None, Some(config)) => Ok(Self::Image(ImageManifest {
                config,
                annotations: raw.annotations,
            })),
            (None, None) => Err(FormatError::Manifest(format!(
                "neither `manifests` nor `config` present (mediaType {:?})",
                raw.media_type.unwrap_or_default()
            ))),
        }
    }
}

/// The entry of an index for `platform`: an exact variant match first, then
/// the first entry of the same os and architecture. `None` when the index has
/// no such platform.
pub fn select_platform<'a>(
    entries: &'a [IndexEntry],
    platform: &Platform,
) -> Option<&'a IndexEntry> {
    let same_arch = |e: &&IndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
    };
    entries
        .iter()
        .filter(same_arch)
        .find(|e| {
            platform.variant.is_none()
                || e.platform.as_ref().and_then(|p| p.variant.as_ref()) == platform.variant.as_ref()
        })
        .or_else(|| entries.iter().find(same_arch))
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RawRuntimeConfig>,
}

#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    #[serde(default, rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// What freshen knows about one image (one platform's manifest and config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The digest the pods run (an index digest for multi-arch images).
    pub digest: Digest,
    /// The platform manifest's digest when `digest` is an index.
    pub platform_digest: Option<Digest>,
    /// Build time: config `created`, else the `created` annotation (manifest,
    /// then config label). Not judged here: see `freshen_core::age`.
    pub created: Option<DateTime<Utc>>,
    /// Base image reference, from the base-name annotation or label.
    pub base_name: Option<String>,
    /// Base image digest the image was built on, from annotation or label.
    pub base_digest: Option<Digest>,
}

/// Combines a manifest's annotations and its config body into facts.
pub fn image_facts(
    digest: Digest,
    platform_digest: Option<Digest>,
    manifest_annotations: &BTreeMap<String, String>,
    config_body: &[u8],
) -> Result<ImageFacts, FormatError> {
    let config: RawConfig =
        serde_json::from_slice(config_body).map_err(|e| FormatError::Config(e.to_string()))?;
    let labels = config.config.and_then(|c| c.labels).unwrap_or_default();
    // Manifest annotations are authoritative; config labels are where
    // `docker build --label` puts the same keys.
    let lookup = |key: &str| {
        manifest_annotations
            .get(key)
            .or_else(|| labels.get(key))
            .cloned()
    };
    let parse_time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let created = config
        .created
        .as_deref()
        .and_then(parse_time)
        .or_else(|| lookup(ANNOTATION_CREATED).as_deref().and_then(parse_time));
    Ok(ImageFacts {
        digest,
        platform_digest,
        created,
        base_name: lookup(ANNOTATION_BASE_NAME).filter(|s| !s.is_empty()),
        base_digest: lookup(ANNOTATION_BASE_DIGEST).and_then(|s| s.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    const BASE: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn digest(s: &str) -> Digest {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn image_manifest_and_index_are_told_apart() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":2},
            "layers":[],"annotations":{"org.opencontainers.image.base.name":"docker.io/library/debian:12"}}"#;
        match Manifest::parse(image) {
            Ok(Manifest::Image(m)) => {
                assert_eq!(m.config.digest, "sha256:c");
                assert_eq!(
                    m.annotations.get(ANNOTATION_BASE_NAME).map(String::as_str),
                    Some("docker.io/library/debian:12")
                );
            }
            other => panic!("{other:?}"),
        }
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"x","digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":"x","digest":"sha256:b","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Ok(Manifest::Index(entries)) = Manifest::parse(index) else {
            panic!("not an index")
        };
        assert_eq!(
            select_platform(&entries, &Platform::default()).map(|e| e.digest.as_str()),
            Some("sha256:b")
        );
        let arm: Platform = "linux/arm64".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            select_platform(&entries, &arm).map(|e| e.digest.as_str()),
            Some("sha256:a")
        );
        let s390: Platform = "linux/s390x".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(select_platform(&entries, &s390), None);
        assert!(matches!(
            Manifest::parse(b"{}"),
            Err(FormatError::Manifest(_))
        ));
        assert!(matches!(
            Manifest::parse(b"not json"),
            Err(FormatError::Manifest(_))
        ));
    }

    #[test]
    fn config_created_wins_then_annotation_then_label() {
        let none = BTreeMap::new();
        let f = image_facts(
            digest(D),
            None,
            &none,
            br#"{"created":"2026-11-12T12:00:00Z"}"#,
        );
        assert_eq!(
            f.map(|f| f.created.map(|t| t.to_rfc3339())),
            Ok(Some("2026-11-12T12:00:00+00:00".into()))
        );

        let ann = BTreeMap::from([(
            ANNOTATION_CREATED.to_owned(),
            "2026-01-01T00:00:00Z".to_owned(),
        )]);
        let f = image_facts(digest(D), None, &ann, br#"{}"#);
        assert_eq!(
            f.map(|f| f.created.map(|t| t.to_rfc3339())),
            Ok(Some("2026-01-01T00:00:00+00:00".into()))
        );

        let label =
            br#"{"config":{"Labels":{"org.opencontainers.image.created":"2025-06-01T00:00:00Z"}}}"#;
        let f = image_facts(digest(D), None, &none, label);
        assert_eq!(
            f.map(|f| f.created.map(|t| t.to_rfc3339())),
            Ok(Some("2025-06-01T00:00:00+00:00".into()))
        );

        let garbage = image_facts(digest(D), None, &none, br#"{"created":"yesterday"}"#);
        assert_eq!(garbage.map(|f| f.created), Ok(None));
        assert!(matches!(
            image_facts(digest(D), None, &none, b"["),
            Err(FormatError::Config(_))
        ));
    }

    #[test]
    fn base_image_from_annotations_else_labels() {
        let ann = BTreeMap::from([
            (
                ANNOTATION_BASE_NAME.to_owned(),
                "docker.io/library/debian:12".to_owned(),
            ),
            (ANNOTATION_BASE_DIGEST.to_owned(), BASE.to_owned()),
        ]);
        let f = image_facts(digest(D), None, &ann, b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.base_name.as_deref(), Some("docker.io/library/debian:12"));
        assert_eq!(f.base_digest, Some(digest(BASE)));

        let label = format!(
            r#"{{"config":{{"Labels":{{"{ANNOTATION_BASE_NAME}":"alpine:3.20","{ANNOTATION_BASE_DIGEST}":"{BASE}"}}}}}}"#
        );
        let f = image_facts(digest(D), None, &BTreeMap::new(), label.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.base_name.as_deref(), Some("alpine:3.20"));
        assert_eq!(f.base_digest, Some(digest(BASE)));
    }

    #[test]
    fn platforms_parse_or_say_the_form() {
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().map(|p| p.to_string()),
            Ok("linux/arm64/v8".into())
        );
        let err = "amd64".parse::<Platform>().err().unwrap_or_default();
        assert!(err.contains("os/architecture"), "{err}");
    }
}
