//! freshen's own image, as `make image` assembles it without a Docker
//! engine: pushed to the harness registry, pulled back and checked as a
//! user's runtime would read it, and reproducible (same commit, same
//! digest).

use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use freshen_e2e::ship::{BINARY_PATH, Recipe, STATIC_BINARY, USER, extract, ship};
use freshen_e2e::{Harness, init_tls, repo_root};
use oci_client::Reference;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

fn static_binary() -> anyhow::Result<PathBuf> {
    let path = repo_root().join(STATIC_BINARY);
    ensure!(
        path.exists(),
        "{} is missing: `make image` builds it (make test does)",
        path.display()
    );
    Ok(path)
}

#[tokio::test]
async fn the_image_runs_freshen_as_non_root_with_its_labels_and_base() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let recipe = Recipe::at_head(static_binary()?)?;
    let repository = format!("e2e/ship-{:08x}", freshen_e2e::rand_suffix());
    let shipped = ship(&harness.registry, &repository, &recipe).await?;
    // Reproducible: the same inputs give the same digests.
    let again = ship(&harness.registry, &repository, &recipe).await?;
    ensure!(again.image.digest == shipped.image.digest);
    ensure!(again.base.digest == shipped.base.digest);

    // Pulled back as a runtime would.
    let client = freshen_e2e::image::client(&harness.registry);
    let reference: Reference = shipped.image.pinned().parse()?;
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&reference, &RegistryAuth::Anonymous)
        .await?;
    ensure!(digest == shipped.image.digest);
    let manifest: OciImageManifest = manifest;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    let inner = &config["config"];
    ensure!(inner["User"] == USER, "runs as non-root: {inner}");
    ensure!(inner["Entrypoint"] == serde_json::json!([format!("/{BINARY_PATH}")]));
    ensure!(config["os"] == "linux" && config["architecture"] == "amd64");
    ensure!(
        config["created"]
            == recipe
                .created
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "created is the commit time: {}",
        config["created"]
    );
    let labels = &inner["Labels"];
    for key in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.source",
        "org.opencontainers.image.created",
    ] {
        ensure!(labels[key].is_string(), "label {key}: {labels}");
    }
    ensure!(labels["org.opencontainers.image.revision"] == recipe.revision.as_str());
    // The base, in the labels and the manifest's annotations (where freshen
    // reads it), names the pushed base image exactly.
    let annotations = manifest.annotations.clone().unwrap_or_default();
    ensure!(
        annotations.get("org.opencontainers.image.base.digest") == Some(&shipped.base.digest)
            && labels["org.opencontainers.image.base.digest"] == shipped.base.digest.as_str(),
        "{annotations:?}"
    );
    ensure!(annotations.get("org.opencontainers.image.base.name") == Some(&shipped.base.tagged));
    ensure!(manifest.layers.len() == 2, "base and binary layers");

    // The base layer has the non-root user and CA certificates; the second
    // layer's binary runs.
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let mut data = Vec::new();
        client.pull_blob(&reference, layer, &mut data).await?;
        layers.push(data);
    }
    let dir = repo_root().join("target/e2e-image");
    std::fs::create_dir_all(&dir)?;
    let passwd = std::fs::read_to_string(extract(&layers[0], "etc/passwd", &dir)?)?;
    ensure!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let ca = extract(&layers[0], "etc/ssl/certs/ca-certificates.crt", &dir)?;
    ensure!(std::fs::read_to_string(ca)?.contains("BEGIN CERTIFICATE"));
    let binary = extract(&layers[1], BINARY_PATH, &dir)?;
    let out = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && version.contains(&recipe.version),
        "freshen --version from the layer: {version}"
    );
    // Statically linked: no interpreter, so it runs on a scratch base.
    let elf = std::fs::read(&binary)?;
    ensure!(
        !has_interpreter(&elf)?,
        "the binary asks for a dynamic loader (PT_INTERP)"
    );
    Ok(())
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header
/// (a dynamic loader to run it).
fn has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    ensure!(
        elf.get(..4) == Some(b"\x7fELF".as_slice()),
        "not an ELF file"
    );
    let read = |at: usize, len: usize| -> anyhow::Result<u64> {
        let bytes = elf.get(at..at + len).context("ELF header cut short")?;
        Ok(bytes.iter().rev().fold(0, |n, b| (n << 8) | u64::from(*b)))
    };
    let (offset, size, count) = (
        usize::try_from(read(0x20, 8)?)?,
        usize::try_from(read(0x36, 2)?)?,
        usize::try_from(read(0x38, 2)?)?,
    );
    const PT_INTERP: u64 = 3;
    for i in 0..count {
        if read(offset + i * size, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}
