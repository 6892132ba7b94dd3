//! What signs a digest, found in a real registry the three ways the real
//! cosign CLI stores it, and judged by `freshen-verify`: a v3 bundle behind
//! the referrers fallback tag, the older `.sig` tag, another key's
//! signature, none at all. Also the registry requests it costs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use freshen_core::{Digest, ImageReference};
use freshen_e2e::cosign::{self, KeyPair};
use freshen_e2e::image::{ImageSpec, push};
use freshen_e2e::{Harness, init_tls};
use freshen_registry::RegistryClient;
use freshen_registry::metrics::RegistryMetrics;
use freshen_registry::signatures::Artifact;
use freshen_verify::{Authority, PublicKey, Verdict, verify_bundle, verify_simple_signing};

const IMAGE_SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";

fn authority(name: &str, keys: &KeyPair) -> anyhow::Result<Authority> {
    Ok(Authority {
        name: name.into(),
        key: PublicKey::from_pem(&keys.public_pem)?,
    })
}

/// The verdict over every signature found for `image`.
async fn verdict(
    client: &Arc<RegistryClient>,
    image: &str,
    trusted: &[Authority],
) -> anyhow::Result<Verdict> {
    let reference = ImageReference::parse(image)?;
    let digest: Digest = reference
        .digest
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{image} is not pinned"))?;
    let found = client.signatures(&reference, &digest, None).await?;
    Ok(Verdict::combine(found.iter().map(|a| match a {
        Artifact::Bundle(bytes) => {
            verify_bundle(bytes, digest.as_str(), Some(IMAGE_SIGNATURE), trusted)
        }
        Artifact::SimpleSigning { payload, signature } => {
            verify_simple_signing(payload, signature, digest.as_str(), trusted)
        }
        // An attestation is no signature of the image.
        Artifact::Envelope(_) => Verdict::Missing,
    })))
}

#[tokio::test]
async fn signatures_cosign_wrote_are_found_and_judged() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let dir = tempdir()?;
    let platform = cosign::generate_key_pair(&harness, &dir, "platform")?;
    let intruder = cosign::generate_key_pair(&harness, &dir, "intruder")?;
    let trusted = vec![authority("platform", &platform)?];
    let repo = format!("e2e/signatures-{}", freshen_e2e::rand_suffix());
    let pushed = |tag: &'static str| {
        let (registry, repo) = (harness.registry.clone(), repo.clone());
        async move {
            let mut spec = ImageSpec::built_at(Utc::now());
            spec.content = format!("{repo} {tag}");
            let p = push(&registry, &repo, tag, &spec).await?;
            anyhow::Ok(format!("{registry}/{repo}@{}", p.digest))
        }
    };
    let bundle = pushed("bundle").await?;
    cosign::sign(&harness, &dir, &platform, &bundle, false)?;
    let legacy = pushed("legacy").await?;
    cosign::sign(&harness, &dir, &platform, &legacy, true)?;
    let foreign = pushed("foreign").await?;
    cosign::sign(&harness, &dir, &intruder, &foreign, false)?;
    let unsigned = pushed("unsigned").await?;

    let mut config = freshen_e2e::registry_config(Duration::from_secs(300));
    config.plain_http = vec![harness.registry.clone()];
    let metrics = RegistryMetrics::new()?;
    let client = RegistryClient::new(config, metrics.clone());
    let signature_requests = || {
        metrics
            .requests
            .with_label_values(&[harness.registry.as_str(), "signature", "200"])
            .get()
            + metrics
                .requests
                .with_label_values(&[harness.registry.as_str(), "signature", "404"])
                .get()
    };

    let verified = Verdict::Verified {
        authority: "platform".into(),
    };
    assert_eq!(verdict(&client, &bundle, &trusted).await?, verified);
    // A registry without the referrers API: its 404, the fallback tag,
    // the bundle's manifest and blob, the absent `.sig` and `.att` tags.
    let per_digest = signature_requests();
    eprintln!("registry requests to find a v3 bundle: {per_digest}");
    assert_eq!(per_digest, 6);
    assert_eq!(verdict(&client, &legacy, &trusted).await?, verified);
    assert_eq!(
        verdict(&client, &foreign, &trusted).await?,
        Verdict::Untrusted {
            tried: vec!["platform".into()]
        }
    );
    assert_eq!(
        verdict(&client, &unsigned, &trusted).await?,
        Verdict::Missing
    );
    // Trusting the intruder's key too, its signature verifies as its.
    let both = vec![trusted[0].clone(), authority("intruder", &intruder)?];
    assert_eq!(
        verdict(&client, &foreign, &both).await?,
        Verdict::Verified {
            authority: "intruder".into()
        }
    );
    Ok(())
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = freshen_e2e::repo_root()
        .join("target/e2e-cosign")
        .join(format!("{:08x}", freshen_e2e::rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
