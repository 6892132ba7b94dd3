//! Builds small, real OCI images and pushes them to the harness registry.
//!
//! There is no Docker engine here, and none is needed: an image is a tar
//! layer, a config (with the `created` time a test wants) and a manifest
//! (with optional base-image annotations), pushed with oci-client.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image to build: what its config and manifest say.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Build time written to the config's `created`; `None` leaves it out.
    pub created: Option<DateTime<Utc>>,
    /// `org.opencontainers.image.base.name` / `.base.digest` annotations.
    pub base: Option<(String, String)>,
    /// Content of the single file in its layer; distinct content gives a
    /// distinct digest.
    pub content: String,
    /// Architecture written to the config, e.g. `amd64`.
    pub architecture: String,
}

impl ImageSpec {
    /// An image built at `created`.
    pub fn built_at(created: DateTime<Utc>) -> Self {
        Self {
            created: Some(created),
            base: None,
            content: created.to_rfc3339(),
            architecture: "amd64".into(),
        }
    }
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `registry/repository:tag`.
    pub tagged: String,
    /// The manifest digest, `sha256:…`.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: usize,
}

impl Pushed {
    /// `registry/repository:tag@digest`, as a pinned pod spec would say.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.tagged, self.digest)
    }
}

/// A client for a plain-HTTP registry at `registry` (`host:port`).
pub fn client(registry: &str) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.to_owned()]),
        ..ClientConfig::default()
    })
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in hash.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Builds `spec` and pushes it as `registry/repository:tag` to a plain-HTTP
/// registry without auth.
pub async fn push(
    registry: &str,
    repository: &str,
    tag: &str,
    spec: &ImageSpec,
) -> anyhow::Result<Pushed> {
    let (client, tagged, reference) = connect(registry, repository, tag).await?;
    push_with(&client, tagged, reference, spec).await
}

/// Builds `spec` and pushes it as `<private>/repository:tag` to the private
/// registry, over TLS with its CA and its basic-auth user.
pub async fn push_private(
    private: &crate::PrivateRegistry,
    repository: &str,
    tag: &str,
    spec: &ImageSpec,
) -> anyhow::Result<Pushed> {
    let ca = std::fs::read(&private.ca_file)
        .with_context(|| format!("reading {}", private.ca_file.display()))?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates: vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: ca,
        }],
        ..ClientConfig::default()
    });
    let tagged = format!("{}/{repository}:{tag}", private.addr);
    let reference: Reference = tagged
        .parse()
        .with_context(|| format!("reference {tagged}"))?;
    client
        .store_auth_if_needed(
            &private.addr,
            &RegistryAuth::Basic(private.username.clone(), private.password.clone()),
        )
        .await;
    push_with(&client, tagged, reference, spec).await
}

async fn push_with(
    client: &Client,
    tagged: String,
    reference: Reference,
    spec: &ImageSpec,
) -> anyhow::Result<Pushed> {
    let layer = layer_tar(&spec.content)?;
    let layer_digest = sha256(&layer);
    let mut config = serde_json::json!({
        "architecture": spec.architecture,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    if let Some(created) = spec.created {
        config["created"] = created.to_rfc3339_opts(SecondsFormat::Secs, true).into();
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);

    let mut annotations = BTreeMap::new();
    if let Some((name, digest)) = &spec.base {
        annotations.insert("org.opencontainers.image.base.name", name.clone());
        annotations.insert("org.opencontainers.image.base.digest", digest.clone());
    }
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": OCI_LAYER, "digest": layer_digest, "size": layer.len() } ],
    });
    if !annotations.is_empty() {
        manifest["annotations"] = serde_json::to_value(&annotations)?;
    }
    let manifest = serde_json::to_vec(&manifest)?;

    client
        .push_blob(&reference, layer, &layer_digest)
        .await
        .context("pushing layer")?;
    client
        .push_blob(&reference, config, &config_digest)
        .await
        .context("pushing config")?;
    put_manifest(client, &reference, tagged, manifest, OCI_MANIFEST).await
}

/// A client for `registry` and the reference `registry/repository:tag`.
async fn connect(
    registry: &str,
    repository: &str,
    tag: &str,
) -> anyhow::Result<(Client, String, Reference)> {
    let client = client(registry);
    let tagged = format!("{registry}/{repository}:{tag}");
    let reference: Reference = tagged
        .parse()
        .with_context(|| format!("reference {tagged}"))?;
    client
        .store_auth_if_needed(registry, &RegistryAuth::Anonymous)
        .await;
    Ok((client, tagged, reference))
}

/// Pushes a manifest or index body under `reference`; its digest is that of
/// the exact bytes sent.
pub(crate) async fn put_manifest(
    client: &Client,
    reference: &Reference,
    tagged: String,
    body: Vec<u8>,
    media_type: &'static str,
) -> anyhow::Result<Pushed> {
    let digest = sha256(&body);
    let size = body.len();
    client
        .push_manifest_raw(
            reference,
            body,
            reqwest::header::HeaderValue::from_static(media_type),
        )
        .await
        .with_context(|| format!("pushing {media_type} {tagged}"))?;
    Ok(Pushed {
        tagged,
        digest,
        size,
    })
}

/// Pushes a multi-arch index over already pushed platform images as
/// `registry/repository:tag`; `platforms` pairs each with its `os/arch`.
pub async fn push_index(
    registry: &str,
    repository: &str,
    tag: &str,
    platforms: &[(&Pushed, &str, &str)],
) -> anyhow::Result<Pushed> {
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let (client, tagged, reference) = connect(registry, repository, tag).await?;
    let manifests: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(image, os, architecture)| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": image.digest,
                "size": image.size,
                "platform": { "os": os, "architecture": architecture },
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))?;
    put_manifest(&client, &reference, tagged, index, OCI_INDEX).await
}

/// An uncompressed tar with one file, `/freshen-e2e.txt`.
fn layer_tar(content: &str) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, "freshen-e2e.txt", content.as_bytes())?;
    Ok(builder.into_inner()?)
}
