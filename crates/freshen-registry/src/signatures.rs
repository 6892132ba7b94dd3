//! Finding what signs a digest, the three ways cosign stores it:
//!
//! - the OCI 1.1 referrers API (`GET /v2/<repo>/referrers/<digest>`), whose
//!   index lists sigstore bundles (`artifactType`
//!   `application/vnd.dev.sigstore.bundle.v0.3+json`, cosign v3's default);
//! - where the registry lacks that API, the same index at the fallback tag
//!   `sha256-<hex>` (what cosign v3 writes to such a registry);
//! - cosign's older tag `sha256-<hex>.sig`: a manifest whose
//!   simple-signing layers carry their signature in an annotation;
//! - and its older `sha256-<hex>.att`: attestations as bare DSSE
//!   envelopes, one a layer.
//!
//! Only bytes come back; judging them is `freshen-verify`'s. Every answer is
//! tenant- or registry-supplied: indexes and manifests are read within
//! [`MAX_MANIFEST_BYTES`], at most [`MAX_SIGNATURE_MANIFESTS`] signature
//! manifests and [`MAX_SIGNATURE_LAYERS`] layers each are followed, and a
//! bundle or payload over [`MAX_SIGNATURE_BYTES`] is not fetched. Each
//! request goes through the registry's budget and is counted as kind
//! `signature`.

use std::collections::BTreeMap;
use std::sync::Arc;

use freshen_core::{Digest, ImageReference};
use serde::Deserialize;

use crate::auth::Credential;
use crate::transport::{Call, HttpError, Transport};
use crate::{MAX_MANIFEST_BYTES, RegistryClient, RegistryError, metrics};

/// A sigstore bundle, as cosign v3 writes it.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// A DSSE envelope, as cosign's older `.att` tag holds attestations.
pub const DSSE_ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// A cosign simple-signing payload.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a simple-signing payload's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// A bundle or payload has at most this many bytes.
pub const MAX_SIGNATURE_BYTES: usize = 256 * 1024;
/// Signature manifests followed per digest, at most.
pub const MAX_SIGNATURE_MANIFESTS: usize = 8;
/// Layers read per signature manifest, at most.
pub const MAX_SIGNATURE_LAYERS: usize = 8;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Something that may sign a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// A sigstore bundle (JSON).
    Bundle(Vec<u8>),
    /// A bare DSSE envelope (JSON), from the `.att` tag.
    Envelope(Vec<u8>),
    /// A simple-signing payload and the base64 signature over it.
    SimpleSigning {
        /// The payload's bytes.
        payload: Vec<u8>,
        /// Its `dev.cosignproject.cosign/signature` annotation.
        signature: String,
    },
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    digest: String,
    #[serde(default)]
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct Layers {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl RegistryClient {
    /// Every bundle and simple-signing payload found for `image` at
    /// `digest` (none: unsigned). An error when the registry could not be
    /// asked or answered something unreadable.
    pub async fn signatures(
        self: &Arc<Self>,
        image: &ImageReference,
        digest: &Digest,
        credential: Option<&Credential>,
    ) -> Result<Vec<Artifact>, RegistryError> {
        let image = &self.mirrored(image);
        let name = format!("{}@{}", image.name(), digest);
        self.check_reach(&image.registry, &name).await?;
        let transport = self.transport(&name)?;
        let call = Call {
            registry: &image.registry,
            repository: &image.repository,
            credential,
        };
        let tag = digest.as_str().replace(':', "-");
        let mut found = Vec::new();
        // Bundles: the referrers API, else its fallback tag.
        let mut bundles = match self
            .optional(transport, call, "referrers", digest.as_str(), &name)
            .await?
        {
            Some(body) => bundle_manifests(&body, &name)?,
            None => Vec::new(),
        };
        if bundles.is_empty()
            && let Some(body) = self
                .optional(transport, call, "manifests", &tag, &name)
                .await?
        {
            bundles = bundle_manifests(&body, &name)?;
        }
        for manifest in bundles.iter().take(MAX_SIGNATURE_MANIFESTS) {
            let body = self.verified(transport, call, manifest, &name).await?;
            for layer in layers(&body, &name)? {
                if layer.media_type == BUNDLE_MEDIA_TYPE {
                    found.push(Artifact::Bundle(
                        self.layer(transport, call, &layer, &name).await?,
                    ));
                }
            }
        }
        // cosign's older `.sig` tag.
        if let Some(body) = self
            .optional(transport, call, "manifests", &format!("{tag}.sig"), &name)
            .await?
        {
            for layer in layers(&body, &name)? {
                let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION).cloned() else {
                    continue;
                };
                if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
                    continue;
                }
                let payload = self.layer(transport, call, &layer, &name).await?;
                found.push(Artifact::SimpleSigning { payload, signature });
            }
        }
        // cosign's older `.att` tag: attestations as bare DSSE envelopes.
        if let Some(body) = self
            .optional(transport, call, "manifests", &format!("{tag}.att"), &name)
            .await?
        {
            for layer in layers(&body, &name)? {
                if layer.media_type == DSSE_ENVELOPE_MEDIA_TYPE {
                    found.push(Artifact::Envelope(
                        self.layer(transport, call, &layer, &name).await?,
                    ));
                }
            }
        }
        Ok(found)
    }

    /// One budgeted, counted request for something that may not exist.
    async fn optional(
        &self,
        transport: &Transport,
        call: Call<'_>,
        kind: &str,
        reference: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let wait = self.admit(call.registry, name)?;
        self.request(
            call.registry,
            metrics::kind::SIGNATURE,
            wait,
            transport.optional(
                call,
                kind,
                reference,
                &[INDEX, MANIFEST],
                MAX_MANIFEST_BYTES,
            ),
        )
        .await
        .map_err(|source| failed(name, source))
    }

    /// A signature manifest by digest, verified against it.
    async fn verified(
        &self,
        transport: &Transport,
        call: Call<'_>,
        digest: &str,
        name: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let wait = self.admit(call.registry, name)?;
        self.request(
            call.registry,
            metrics::kind::SIGNATURE,
            wait,
            transport.manifest(call, digest, &[MANIFEST], MAX_MANIFEST_BYTES),
        )
        .await
        .map_err(|source| failed(name, source))
    }

    /// A bundle or payload layer, within [`MAX_SIGNATURE_BYTES`].
    async fn layer(
        &self,
        transport: &Transport,
        call: Call<'_>,
        layer: &Layer,
        name: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let size = usize::try_from(layer.size.max(0)).unwrap_or(usize::MAX);
        if size > MAX_SIGNATURE_BYTES {
            return Err(format_error(
                name,
                format!(
                    "a signature layer of {size} bytes; at most {MAX_SIGNATURE_BYTES} are read"
                ),
            ));
        }
        let wait = self.admit(call.registry, name)?;
        self.request(
            call.registry,
            metrics::kind::SIGNATURE,
            wait,
            transport.blob(call, &layer.digest, size, "signature"),
        )
        .await
        .map_err(|source| failed(name, source))
    }
}

/// The digests of the sigstore-bundle manifests an index lists.
fn bundle_manifests(body: &[u8], name: &str) -> Result<Vec<String>, RegistryError> {
    let index: Index = serde_json::from_slice(body)
        .map_err(|e| format_error(name, format!("a referrers index: {e}")))?;
    Ok(index
        .manifests
        .into_iter()
        .filter(|e| e.artifact_type.as_deref() == Some(BUNDLE_MEDIA_TYPE))
        .filter(|e| e.digest.starts_with("sha256:") && e.digest.len() == 71)
        .map(|e| e.digest)
        .take(MAX_SIGNATURE_MANIFESTS)
        .collect())
}

/// The first [`MAX_SIGNATURE_LAYERS`] layers of a signature manifest.
fn layers(body: &[u8], name: &str) -> Result<Vec<Layer>, RegistryError> {
    let manifest: Layers = serde_json::from_slice(body)
        .map_err(|e| format_error(name, format!("a signature manifest: {e}")))?;
    Ok(manifest
        .layers
        .into_iter()
        .take(MAX_SIGNATURE_LAYERS)
        .collect())
}

fn failed(name: &str, source: HttpError) -> RegistryError {
    RegistryError::Manifest {
        image: name.to_owned(),
        source,
    }
}

fn format_error(name: &str, why: String) -> RegistryError {
    RegistryError::Format {
        image: name.to_owned(),
        source: crate::facts::FormatError::Manifest(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_yields_only_bundle_manifests_and_at_most_a_few() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let mut manifests: Vec<_> = (0..100_000)
            .map(|_| serde_json::json!({"digest": digest('a'), "artifactType": BUNDLE_MEDIA_TYPE}))
            .collect();
        manifests.insert(
            0,
            serde_json::json!({"digest": digest('b'), "artifactType": "application/spdx+json"}),
        );
        manifests.insert(
            1,
            serde_json::json!({"digest": "sha256:short", "artifactType": BUNDLE_MEDIA_TYPE}),
        );
        let body =
            serde_json::to_vec(&serde_json::json!({"manifests": manifests})).unwrap_or_default();
        let found = bundle_manifests(&body, "x").unwrap_or_default();
        assert_eq!(found.len(), MAX_SIGNATURE_MANIFESTS);
        assert!(found.iter().all(|d| *d == digest('a')));
        assert!(bundle_manifests(b"[", "x").is_err());
    }
}
