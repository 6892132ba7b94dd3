//! freshen-registry against the real registry of the harness: tags, missing
//! tags, multi-arch indexes, and what the shared cache saves, counted in the
//! registry's own access log rather than in our code.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_core::{Digest, ImageReference};
use freshen_e2e::image::{ImageSpec, push, push_index};
use freshen_e2e::{Harness, init_tls, rand_suffix, registry_log_barrier, registry_log_lines};
use freshen_registry::{RegistryClient, RegistryMetrics};
use tokio::time::Instant;

const TAG_TTL: Duration = Duration::from_secs(300);

fn client(harness: &Harness, platform: &str) -> anyhow::Result<Arc<RegistryClient>> {
    let mut config = freshen_e2e::registry_config(TAG_TTL);
    config.plain_http = vec![harness.registry.clone()];
    config.platform = platform.parse().map_err(anyhow::Error::msg)?;
    Ok(RegistryClient::new(config, RegistryMetrics::new()?))
}

fn reference(harness: &Harness, repository: &str, tag: &str) -> anyhow::Result<ImageReference> {
    Ok(ImageReference::parse(&format!(
        "{}/{repository}:{tag}",
        harness.registry
    ))?)
}

fn unique(prefix: &str) -> String {
    format!("e2e/{prefix}-{:08x}", rand_suffix())
}

#[tokio::test]
async fn tags_resolve_to_their_digest_and_a_missing_tag_says_not_found() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repository = unique("resolve");
    let v1 = push(
        &harness.registry,
        &repository,
        "v1",
        &ImageSpec::built_at(Utc::now()),
    )
    .await?;
    let registry = client(&harness, "linux/amd64")?;

    let digest = registry
        .resolve_tag(
            &reference(&harness, &repository, "v1")?,
            None,
            Instant::now(),
        )
        .await;
    assert_eq!(
        digest.map(|d| d.to_string()).map_err(|e| e.to_string()),
        Ok(v1.digest.clone())
    );

    let missing = registry
        .resolve_tag(
            &reference(&harness, &repository, "nope")?,
            None,
            Instant::now(),
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a missing tag resolved"))?;
    assert_eq!(missing.category(), "registry_not_found", "{missing}");
    assert_eq!(
        missing.to_string(),
        format!(
            "tag nope not found in {}/{repository} (404)",
            harness.registry
        ),
        "the error names the tag and the repository"
    );
    Ok(())
}

#[tokio::test]
async fn fifty_lookups_over_three_tags_cost_three_head_requests() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repositories: Vec<String> = (0..3).map(|i| unique(&format!("heads{i}"))).collect();
    for repository in &repositories {
        push(
            &harness.registry,
            repository,
            "v1",
            &ImageSpec::built_at(Utc::now()),
        )
        .await?;
    }
    let registry = client(&harness, "linux/amd64")?;
    let now = Instant::now();
    let lookups = (0..50).map(|i| {
        let registry = Arc::clone(&registry);
        let image = reference(&harness, &repositories[i % 3], "v1");
        tokio::spawn(async move {
            registry
                .resolve_tag(&image?, None, now)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
    });
    for lookup in futures::future::join_all(lookups).await {
        lookup??;
    }
    let heads = || -> anyhow::Result<usize> {
        repositories
            .iter()
            .map(|r| registry_log_lines(&harness, &format!("\"HEAD /v2/{r}/manifests/v1 ")))
            .sum()
    };
    registry_log_barrier(&harness).await?;
    assert_eq!(
        heads()?,
        3,
        "50 concurrent look-ups of 3 tags are 3 requests"
    );

    // Within the tag TTL, later look-ups cost nothing; after it, one each.
    for repository in &repositories {
        registry
            .resolve_tag(
                &reference(&harness, repository, "v1")?,
                None,
                now + TAG_TTL / 2,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    registry_log_barrier(&harness).await?;
    assert_eq!(heads()?, 3, "cached within the TTL");
    for repository in &repositories {
        registry
            .resolve_tag(&reference(&harness, repository, "v1")?, None, now + TAG_TTL)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    registry_log_barrier(&harness).await?;
    assert_eq!(heads()?, 6, "one request per tag per interval");
    let gets: usize = repositories
        .iter()
        .map(|r| registry_log_lines(&harness, &format!("\"GET /v2/{r}/manifests/")))
        .sum::<anyhow::Result<usize>>()?;
    assert_eq!(
        gets, 0,
        "resolving a tag never downloads a manifest when HEAD answers"
    );
    Ok(())
}

#[tokio::test]
async fn a_multi_arch_index_is_read_for_the_configured_platform() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repository = unique("multiarch");
    let amd64_built = Utc::now() - TimeDelta::days(3);
    let arm64_built = Utc::now() - TimeDelta::days(9);
    let amd64 = push(
        &harness.registry,
        &repository,
        "amd64",
        &ImageSpec::built_at(amd64_built),
    )
    .await?;
    let mut arm = ImageSpec::built_at(arm64_built);
    arm.architecture = "arm64".into();
    let arm64 = push(&harness.registry, &repository, "arm64", &arm).await?;
    let index = push_index(
        &harness.registry,
        &repository,
        "v1",
        &[(&amd64, "linux", "amd64"), (&arm64, "linux", "arm64")],
    )
    .await?;
    let image = reference(&harness, &repository, "v1")?;
    let index_digest: Digest = index.digest.parse()?;

    for (platform, built, manifest) in [
        ("linux/amd64", amd64_built, &amd64),
        ("linux/arm64", arm64_built, &arm64),
    ] {
        let facts = client(&harness, platform)?
            .image_facts(&image, &index_digest, None, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(
            facts.digest, index_digest,
            "the digest the pods run is the index's"
        );
        assert_eq!(
            facts.platform_digest.as_ref().map(Digest::as_str),
            Some(manifest.digest.as_str()),
            "{platform}"
        );
        assert_eq!(
            facts.created.map(|t| t.timestamp()),
            Some(built.timestamp()),
            "{platform}"
        );
    }

    let s390x = client(&harness, "linux/s390x")?
        .image_facts(&image, &index_digest, None, None)
        .await;
    let err = s390x
        .err()
        .ok_or_else(|| anyhow::anyhow!("an absent platform was found"))?;
    assert_eq!(err.category(), "registry_no_platform");
    assert!(err.to_string().contains("linux/s390x"), "{err}");
    Ok(())
}

#[tokio::test]
async fn image_facts_are_fetched_once_per_digest() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repository = unique("facts");
    let mut spec = ImageSpec::built_at(Utc::now() - TimeDelta::days(10));
    let base_digest = format!("sha256:{}", "b".repeat(64));
    spec.base = Some(("docker.io/library/debian:12".into(), base_digest.clone()));
    let pushed = push(&harness.registry, &repository, "v1", &spec).await?;
    let image = reference(&harness, &repository, "v1")?;
    let digest: Digest = pushed.digest.parse()?;
    let registry = client(&harness, "linux/amd64")?;

    let lookups = (0..20).map(|_| {
        let (registry, image, digest) = (Arc::clone(&registry), image.clone(), digest.clone());
        tokio::spawn(async move {
            registry
                .image_facts(&image, &digest, None, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
    });
    for facts in futures::future::join_all(lookups).await {
        let facts = facts??;
        assert_eq!(
            facts.base_name.as_deref(),
            Some("docker.io/library/debian:12")
        );
        assert_eq!(
            facts.base_digest.as_ref().map(Digest::as_str),
            Some(base_digest.as_str())
        );
    }
    registry_log_barrier(&harness).await?;
    let manifest_gets = registry_log_lines(
        &harness,
        &format!("\"GET /v2/{repository}/manifests/{} ", pushed.digest),
    )?;
    let blob_gets = registry_log_lines(&harness, &format!("\"GET /v2/{repository}/blobs/"))?;
    assert_eq!(
        (manifest_gets, blob_gets),
        (1, 1),
        "20 look-ups of one digest: one manifest and one config download"
    );
    Ok(())
}

#[tokio::test]
async fn a_registry_that_does_not_answer_is_backed_off_without_further_requests()
-> anyhow::Result<()> {
    init_tls();
    // Nothing listens on port 1: every connection is refused, for real.
    let dead = "127.0.0.1:1";
    let mut config = freshen_e2e::registry_config(TAG_TTL);
    config.plain_http = vec![dead.to_owned()];
    let metrics = RegistryMetrics::new()?;
    let client = RegistryClient::new(config, metrics.clone());
    let image = |tag: &str| ImageReference::parse(&format!("{dead}/app:{tag}"));

    let first = client
        .resolve_tag(&image("v1")?, None, Instant::now())
        .await;
    assert_eq!(first.err().map(|e| e.category()), Some("registry_resolve"));
    // Another tag of the same registry is refused at once, unsent.
    let second = client
        .resolve_tag(&image("v2")?, None, Instant::now())
        .await;
    let second = second.err();
    assert_eq!(
        second.as_ref().map(|e| e.category()),
        Some("registry_backoff")
    );
    let message = second.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("is backed off"), "{message}");
    let sent = metrics
        .requests
        .with_label_values(&[dead, "resolve", "error"])
        .get();
    assert_eq!(sent, 1, "one request went out; the backed-off one did not");
    Ok(())
}

#[tokio::test]
async fn a_mirrored_registry_is_read_at_its_mirror() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repository = unique("mirror");
    let built = Utc::now() - TimeDelta::days(3);
    let pushed = push(
        &harness.registry,
        &repository,
        "v1",
        &ImageSpec::built_at(built),
    )
    .await?;
    // Images named after a registry that does not exist are read at the
    // harness registry, its mirror.
    let mut config = freshen_e2e::registry_config(TAG_TTL);
    config.plain_http = vec![harness.registry.clone()];
    config.mirrors = [("registry.invalid".to_owned(), harness.registry.clone())].into();
    let metrics = RegistryMetrics::new()?;
    let client = RegistryClient::new(config, metrics.clone());
    let image = ImageReference::parse(&format!("registry.invalid/{repository}:v1"))?;
    let digest = client
        .resolve_tag(&image, None, Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(digest.to_string(), pushed.digest);
    let facts = client
        .image_facts(&image, &digest, None, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        facts.created.map(|c| c.timestamp()),
        Some(built.timestamp())
    );
    // The requests are counted against the host contacted.
    let to_mirror = metrics
        .requests
        .with_label_values(&[harness.registry.as_str(), "resolve", "200"])
        .get();
    assert_eq!(to_mirror, 1);
    Ok(())
}

/// A front for the real registry that refuses HEAD (405), as some
/// registries and proxies do, and passes every other request through, one
/// request per connection. Returns its address; runs until the test ends.
async fn head_refusing_front(registry: String) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut downstream, _)) = listener.accept().await {
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match downstream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"HEAD ") {
                    let _ = downstream
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                // GETs carry no body: forward the head, asking the registry
                // to close after answering, and copy the answer back.
                let text =
                    String::from_utf8_lossy(&head).replacen("\r\n", "\r\nConnection: close\r\n", 1);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&registry).await else {
                    return;
                };
                if upstream.write_all(text.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut upstream, &mut downstream).await;
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_registry_that_refuses_head_is_resolved_with_get() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let repository = unique("nohead");
    let pushed = push(
        &harness.registry,
        &repository,
        "v1",
        &ImageSpec::built_at(Utc::now()),
    )
    .await?;
    let front = head_refusing_front(harness.registry.clone()).await?;
    let mut config = freshen_e2e::registry_config(TAG_TTL);
    config.plain_http = vec![front.clone()];
    let client = RegistryClient::new(config, RegistryMetrics::new()?);
    let image = ImageReference::parse(&format!("{front}/{repository}:v1"))?;

    registry_log_barrier(&harness).await?;
    let digest = client
        .resolve_tag(&image, None, Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(digest.to_string(), pushed.digest);
    registry_log_barrier(&harness).await?;
    // Behind the front, the registry saw a GET of the tag's manifest and no
    // HEAD (the front refused it).
    let manifest = format!("/v2/{repository}/manifests/v1");
    assert_eq!(
        registry_log_lines(&harness, &format!("\"GET {manifest}"))?,
        1
    );
    assert_eq!(
        registry_log_lines(&harness, &format!("\"HEAD {manifest}"))?,
        0
    );
    Ok(())
}
