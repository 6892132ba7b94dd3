//! The real cosign CLI (built by `e2e/harness/build-tools.sh`, cached by
//! version) signing the harness registry's images with keys it generates,
//! the way a CI pipeline would: no transparency log, no public services.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

use crate::Harness;

/// A key pair `cosign generate-key-pair` wrote (empty password).
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// `<name>.key`, the encrypted private key.
    pub private: PathBuf,
    /// The public key's PEM, as `cosign.pub` holds it.
    pub public_pem: String,
}

/// A signing config with no services: cosign v3 then signs offline.
const NO_SERVICES: &str = r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","rekorTlogConfig":{},"tsaConfig":{}}"#;

fn cosign(harness: &Harness, dir: &Path) -> Command {
    let mut command = Command::new(&harness.cosign);
    command
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "")
        // Nothing public is reachable here: do not wait on it.
        .env("TUF_ROOT", dir.join("tuf"))
        .env("HOME", dir);
    command
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running cosign {what}"))?;
    ensure!(
        out.status.success(),
        "cosign {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Generates a key pair named `name` in `dir`.
pub fn generate_key_pair(harness: &Harness, dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
    let prefix = dir.join(name);
    let mut command = cosign(harness, dir);
    command
        .args(["generate-key-pair", "--output-key-prefix"])
        .arg(&prefix);
    run(command, "generate-key-pair")?;
    Ok(KeyPair {
        private: prefix.with_extension("key"),
        public_pem: std::fs::read_to_string(prefix.with_extension("pub"))?,
    })
}

/// Signs `image` (`registry/repository@sha256:...`) with `key`: a sigstore
/// bundle as a referrer (cosign v3's default), or with `legacy` the older
/// `sha256-<hex>.sig` tag.
pub fn sign(
    harness: &Harness,
    dir: &Path,
    key: &KeyPair,
    image: &str,
    legacy: bool,
) -> anyhow::Result<()> {
    let config = dir.join("signing-config.json");
    std::fs::write(&config, NO_SERVICES)?;
    let mut command = cosign(harness, dir);
    command.args(["sign", "--yes", "--key"]).arg(&key.private);
    if legacy {
        command.args([
            "--new-bundle-format=false",
            "--use-signing-config=false",
            "--tlog-upload=false",
        ]);
    } else {
        command.arg("--signing-config").arg(&config);
    }
    command.args(["--allow-insecure-registry", "--allow-http-registry", image]);
    run(command, "sign")
}

/// Attests `image` with `key`: `kind` is cosign's `--type` (e.g.
/// `slsaprovenance1`, `vuln`) and `predicate` the predicate's JSON, stored
/// as a sigstore bundle referrer as cosign v3 does by default.
pub fn attest(
    harness: &Harness,
    dir: &Path,
    key: &KeyPair,
    image: &str,
    kind: &str,
    predicate: &serde_json::Value,
) -> anyhow::Result<()> {
    attest_as(harness, dir, key, image, (kind, predicate), false)
}

/// [`attest`], or with `legacy` the older way: a bare DSSE envelope at
/// the tag `sha256-<hex>.att`.
pub fn attest_as(
    harness: &Harness,
    dir: &Path,
    key: &KeyPair,
    image: &str,
    (kind, predicate): (&str, &serde_json::Value),
    legacy: bool,
) -> anyhow::Result<()> {
    let config = dir.join("signing-config.json");
    std::fs::write(&config, NO_SERVICES)?;
    let file = dir.join(format!("predicate-{:08x}.json", crate::rand_suffix()));
    std::fs::write(&file, serde_json::to_vec(predicate)?)?;
    let mut command = cosign(harness, dir);
    command.args(["attest", "--yes", "--key"]).arg(&key.private);
    if legacy {
        command.args([
            "--new-bundle-format=false",
            "--use-signing-config=false",
            "--tlog-upload=false",
        ]);
    } else {
        command.arg("--signing-config").arg(&config);
    }
    command
        .args(["--type", kind, "--predicate"])
        .arg(&file)
        .args(["--allow-insecure-registry", "--allow-http-registry", image]);
    run(command, "attest")
}

/// A keyless signature of `digest` for `identity` from `issuer`, made by
/// `e2e/harness/keyless.py` (a CA standing in for Fulcio, a log key for
/// Rekor, kept in `ca_dir` so that bundles share one trusted root): the
/// bundle's JSON and the `trusted_root.json`.
pub fn keyless_sign(
    dir: &Path,
    ca_dir: &Path,
    digest: &str,
    identity: &str,
    issuer: &str,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let out = dir.join(digest.replace(':', "-"));
    let script = crate::repo_root().join("e2e/harness/keyless.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .args([digest, identity, issuer, "--ca"])
        .arg(ca_dir)
        .output()
        .context("running e2e/harness/keyless.py")?;
    ensure!(
        status.status.success(),
        "keyless.py: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    Ok((
        std::fs::read(out.join("bundle.json"))?,
        std::fs::read(out.join("trusted_root.json"))?,
    ))
}

/// Stores `bundle` as a sigstore-bundle referrer of `digest` in the
/// harness registry's `repository`, as cosign v3 does on a registry
/// without the referrers API: the bundle as the layer of an artifact
/// manifest whose subject is the digest, listed by an index at the
/// fallback tag `sha256-<hex>`.
pub async fn attach_bundle(
    harness: &Harness,
    repository: &str,
    digest: &str,
    bundle: &[u8],
) -> anyhow::Result<()> {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let http = reqwest::Client::new();
    let base = format!("http://{}/v2/{repository}", harness.registry);
    let (config, config_size) = upload_blob(harness, repository, b"{}".to_vec()).await?;
    let (layer, layer_size) = upload_blob(harness, repository, bundle.to_vec()).await?;
    let subject = http
        .head(format!("{base}/manifests/{digest}"))
        .header("accept", crate::image::OCI_MANIFEST)
        .send()
        .await?
        .error_for_status()?;
    let subject_size: usize = subject
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": BUNDLE, "digest": layer, "size": layer_size}],
        "subject": {"mediaType": crate::image::OCI_MANIFEST, "digest": digest, "size": subject_size},
    }))?;
    let manifest_digest = crate::image::sha256(&manifest);
    http.put(format!("{base}/manifests/{manifest_digest}"))
        .header("content-type", crate::image::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await?
        .error_for_status()?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": crate::image::OCI_MANIFEST, "digest": manifest_digest,
                       "size": manifest.len(), "artifactType": BUNDLE}],
    }))?;
    http.put(format!("{base}/manifests/{}", digest.replace(':', "-")))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Uploads `blob` to the harness registry's `repository` (a monolithic
/// upload: POST, then PUT with its digest); its digest and size.
pub async fn upload_blob(
    harness: &Harness,
    repository: &str,
    blob: Vec<u8>,
) -> anyhow::Result<(String, usize)> {
    let http = reqwest::Client::new();
    let digest = crate::image::sha256(&blob);
    let started = http
        .post(format!(
            "http://{}/v2/{repository}/blobs/uploads/",
            harness.registry
        ))
        .send()
        .await?
        .error_for_status()?;
    let location = started
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let location = match location.starts_with("http") {
        true => location,
        false => format!("http://{}{location}", harness.registry),
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    http.put(format!("{location}{separator}digest={digest}"))
        .body(blob.clone())
        .send()
        .await?
        .error_for_status()?;
    Ok((digest, blob.len()))
}
