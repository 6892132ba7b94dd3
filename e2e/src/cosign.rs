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
    let config = dir.join("signing-config.json");
    std::fs::write(&config, NO_SERVICES)?;
    let file = dir.join(format!("predicate-{:08x}.json", crate::rand_suffix()));
    std::fs::write(&file, serde_json::to_vec(predicate)?)?;
    let mut command = cosign(harness, dir);
    command
        .args(["attest", "--yes", "--key"])
        .arg(&key.private)
        .arg("--signing-config")
        .arg(&config)
        .args(["--type", kind, "--predicate"])
        .arg(&file)
        .args(["--allow-insecure-registry", "--allow-http-registry", image]);
    run(command, "attest")
}
