//! freshen's own container image, assembled without a Docker engine: the
//! same image the `Dockerfile` builds, as two layers.
//!
//! - The base (`freshen/static-base`): CA certificates, `/etc/passwd` and
//!   `/etc/group` with the non-root user 65532, and `/tmp`, as
//!   distroless/static provides them. Pushed as an image of its own, so the
//!   freshen image can name it in `org.opencontainers.image.base.*` and
//!   freshen can tell when its own base moved.
//! - freshen: the statically linked release binary at
//!   `/usr/local/bin/freshen`.
//!
//! Every timestamp is the commit time (`created` and every file's mtime),
//! every owner root, every entry in a fixed order: the same commit gives
//! the same digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use crate::image::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Pushed, client, put_manifest, sha256};

/// Where `make image` builds the statically linked binary (relative to
/// the repository root).
pub const STATIC_BINARY: &str = "target/x86_64-unknown-linux-gnu/release/freshen";
/// Where the binary lives in the image.
pub const BINARY_PATH: &str = "usr/local/bin/freshen";
/// The non-root user and group the image runs as.
pub const USER: &str = "65532:65532";
/// The CA bundle of the host, copied into the base layer.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What goes into freshen's image.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The statically linked `freshen` binary.
    pub binary: PathBuf,
    /// The commit time: `created`, and every file's mtime.
    pub created: DateTime<Utc>,
    /// freshen's version (the image's version label).
    pub version: String,
    /// The commit (the revision label).
    pub revision: String,
}

impl Recipe {
    /// The recipe of the repository's HEAD: its commit time and hash, the
    /// workspace version, and `binary`.
    pub fn at_head(binary: PathBuf) -> anyhow::Result<Self> {
        let git = |args: &[&str]| -> anyhow::Result<String> {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(crate::repo_root())
                .output()
                .context("running git")?;
            anyhow::ensure!(out.status.success(), "git {args:?} failed");
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        };
        let seconds: i64 = git(&["log", "-1", "--format=%ct"])?.parse()?;
        Ok(Self {
            binary,
            created: DateTime::from_timestamp(seconds, 0).context("commit time")?,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: git(&["rev-parse", "HEAD"])?,
        })
    }
}

/// The two images pushed.
#[derive(Debug, Clone)]
pub struct Shipped {
    /// The base image.
    pub base: Pushed,
    /// freshen's image, on that base.
    pub image: Pushed,
}

/// One file of a layer.
struct Entry<'a> {
    path: &'a str,
    mode: u32,
    data: Option<&'a [u8]>,
}

/// A tar layer of `entries` (directories when `data` is `None`), every
/// entry owned by root and dated `mtime`.
fn layer(entries: &[Entry<'_>], mtime: DateTime<Utc>) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mtime = u64::try_from(mtime.timestamp()).unwrap_or(0);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        match entry.data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append_data(&mut header, entry.path, data)?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_cksum();
                builder.append_data(&mut header, format!("{}/", entry.path), std::io::empty())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// The base layer: CA certificates, the non-root user, `/tmp`.
fn base_layer(created: DateTime<Utc>) -> anyhow::Result<Vec<u8>> {
    let ca = std::fs::read(HOST_CA_BUNDLE)
        .with_context(|| format!("reading {HOST_CA_BUNDLE} (Debian's ca-certificates package)"))?;
    let passwd = b"root:x:0:0:root:/root:/sbin/nologin\n\
        nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let group = b"root:x:0:\nnonroot:x:65532:\n";
    layer(
        &[
            Entry {
                path: "etc",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "etc/group",
                mode: 0o644,
                data: Some(group),
            },
            Entry {
                path: "etc/passwd",
                mode: 0o644,
                data: Some(passwd),
            },
            Entry {
                path: "etc/ssl",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "etc/ssl/certs",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "etc/ssl/certs/ca-certificates.crt",
                mode: 0o644,
                data: Some(&ca),
            },
            Entry {
                path: "home",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "home/nonroot",
                mode: 0o700,
                data: None,
            },
            Entry {
                path: "tmp",
                mode: 0o1777,
                data: None,
            },
        ],
        created,
    )
}

/// The OCI labels of freshen's image.
fn labels(recipe: &Recipe, base: Option<(&str, &str)>) -> BTreeMap<&'static str, String> {
    let mut labels = BTreeMap::from([
        ("org.opencontainers.image.title", "freshen".to_owned()),
        (
            "org.opencontainers.image.description",
            "Keeps running containers fresh: image and container age, base staleness, rebuilds, canaries".to_owned(),
        ),
        ("org.opencontainers.image.version", recipe.version.clone()),
        ("org.opencontainers.image.revision", recipe.revision.clone()),
        (
            "org.opencontainers.image.created",
            recipe.created.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        ("org.opencontainers.image.source", "https://github.com/freshen-dev/freshen".to_owned()),
        ("org.opencontainers.image.licenses", "Apache-2.0".to_owned()),
    ]);
    if let Some((name, digest)) = base {
        labels.insert("org.opencontainers.image.base.name", name.to_owned());
        labels.insert("org.opencontainers.image.base.digest", digest.to_owned());
    }
    labels
}

/// Pushes an image of `layers` with `config` (its `rootfs` added) and
/// manifest `annotations` as `registry/repository:tag`.
async fn push_image(
    registry: &str,
    repository: &str,
    tag: &str,
    layers: &[Vec<u8>],
    mut config: serde_json::Value,
    annotations: &BTreeMap<&'static str, String>,
) -> anyhow::Result<Pushed> {
    let client = client(registry);
    let tagged = format!("{registry}/{repository}:{tag}");
    let reference: Reference = tagged
        .parse()
        .with_context(|| format!("reference {tagged}"))?;
    client
        .store_auth_if_needed(registry, &RegistryAuth::Anonymous)
        .await;
    let digests: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": digests });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);
    for (data, digest) in layers.iter().zip(&digests) {
        client
            .push_blob(&reference, data.clone(), digest)
            .await
            .context("pushing a layer")?;
    }
    client
        .push_blob(&reference, config.clone(), &config_digest)
        .await
        .context("pushing the config")?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().zip(&digests).map(|(l, d)| serde_json::json!({
            "mediaType": OCI_LAYER, "digest": d, "size": l.len(),
        })).collect::<Vec<_>>(),
        "annotations": annotations,
    }))?;
    put_manifest(&client, &reference, tagged, manifest, OCI_MANIFEST).await
}

/// The config of an image made on this machine (linux/amd64), created at
/// `created`, with `labels` and what freshen runs as.
fn config(
    created: DateTime<Utc>,
    labels: &BTreeMap<&'static str, String>,
    run: bool,
) -> serde_json::Value {
    let mut inner = serde_json::json!({
        "User": USER,
        "Env": [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        ],
        "WorkingDir": "/",
        "Labels": labels,
    });
    if run {
        inner["Entrypoint"] = serde_json::json!([format!("/{BINARY_PATH}")]);
        inner["Cmd"] = serde_json::json!(["run"]);
        inner["ExposedPorts"] = serde_json::json!({ "8080/tcp": {} });
    }
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created.to_rfc3339_opts(SecondsFormat::Secs, true),
        "config": inner,
    })
}

/// Builds the base and freshen's image from `recipe` and pushes them to
/// the plain-HTTP `registry` as `<repository>/static-base:<version>` and
/// `<repository>/freshen:<version>`.
pub async fn ship(registry: &str, repository: &str, recipe: &Recipe) -> anyhow::Result<Shipped> {
    let base_layer = base_layer(recipe.created)?;
    let base_labels = BTreeMap::from([
        (
            "org.opencontainers.image.title",
            "freshen static base".to_owned(),
        ),
        (
            "org.opencontainers.image.created",
            recipe.created.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
    ]);
    let base = push_image(
        registry,
        &format!("{repository}/static-base"),
        &recipe.version,
        std::slice::from_ref(&base_layer),
        config(recipe.created, &base_labels, false),
        &base_labels,
    )
    .await?;

    let binary = std::fs::read(&recipe.binary).with_context(|| {
        format!(
            "reading {} (build it with `make image`)",
            recipe.binary.display()
        )
    })?;
    let app_layer = layer(
        &[
            Entry {
                path: "usr",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "usr/local",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: "usr/local/bin",
                mode: 0o755,
                data: None,
            },
            Entry {
                path: BINARY_PATH,
                mode: 0o755,
                data: Some(&binary),
            },
        ],
        recipe.created,
    )?;
    let base_name = base.tagged.clone();
    let labels = labels(recipe, Some((&base_name, &base.digest)));
    let image = push_image(
        registry,
        &format!("{repository}/freshen"),
        &recipe.version,
        &[base_layer, app_layer],
        config(recipe.created, &labels, true),
        &labels,
    )
    .await?;
    Ok(Shipped { base, image })
}

/// Extracts the file `path` of a tar `layer` into `dir`; returns where.
pub fn extract(layer: &[u8], path: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(path) {
            let out = dir.join(path.rsplit('/').next().unwrap_or(path));
            entry.unpack(&out)?;
            return Ok(out);
        }
    }
    anyhow::bail!("{path} is not in the layer")
}
