//! freshen-registry against a misbehaving registry: the harness registry
//! behind a fault-injecting front ([`freshen_e2e::faults`]) that answers
//! 429 and 5xx (with `Retry-After` in seconds and as an HTTP date), hangs,
//! resets or truncates bodies, lies about Content-Type or content, serves
//! invalid JSON under a matching digest, and runs a token service that
//! never grants or whose tokens expire early.
//!
//! For each fault: no panic, an error whose category (metrics, Event
//! reasons) and message say why, requests bounded by the backoff (proved
//! in the front's own access log), another registry served meanwhile by the
//! same client, and recovery as soon as the fault stops and the backoff
//! (or the registry's `Retry-After`) has passed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use freshen_core::{Digest, ImageReference};
use freshen_e2e::faults::{Canned, Fault, FaultProxy, RetryAfter, sha256_digest};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::{Harness, init_tls, rand_suffix};
use freshen_registry::{BudgetConfig, RegistryClient, RegistryError, RegistryMetrics};
use tokio::time::Instant;

const TAG_TTL: Duration = Duration::from_secs(300);

/// One image pushed to the harness registry, a front for that registry,
/// and a client that reaches the registry both through the front and
/// directly (the "other registry", which a fault must not touch).
struct Setup {
    harness: Harness,
    front: FaultProxy,
    client: Arc<RegistryClient>,
    metrics: RegistryMetrics,
    repository: String,
    pushed: Pushed,
}

impl Setup {
    async fn new(prefix: &str, budget: BudgetConfig, timeout: Duration) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let repository = format!("e2e/{prefix}-{:08x}", rand_suffix());
        let pushed = push(
            &harness.registry,
            &repository,
            "v1",
            &ImageSpec::built_at(Utc::now()),
        )
        .await?;
        let front = FaultProxy::start(&harness.registry).await?;
        let mut config = freshen_e2e::registry_config(TAG_TTL);
        config.plain_http = vec![harness.registry.clone(), front.addr.clone()];
        config.budget = budget;
        config.timeout = Some(timeout);
        let metrics = RegistryMetrics::new()?;
        let client = RegistryClient::new(config, metrics.clone());
        Ok(Self {
            harness,
            front,
            client,
            metrics,
            repository,
            pushed,
        })
    }

    /// The image, named through the front.
    fn fronted(&self, tag: &str) -> anyhow::Result<ImageReference> {
        Ok(ImageReference::parse(&format!(
            "{}/{}:{tag}",
            self.front.addr, self.repository
        ))?)
    }

    fn digest(&self) -> anyhow::Result<Digest> {
        self.pushed.digest.parse().map_err(anyhow::Error::msg)
    }

    /// Asks the registry (through the front) for the tag now.
    async fn resolve(&self) -> anyhow::Result<Result<Digest, Arc<RegistryError>>> {
        Ok(self
            .client
            .resolve_tag_now(&self.fronted("v1")?, None, Instant::now())
            .await)
    }

    /// The same image, from the registry directly: another registry to the
    /// client, which no fault of the front may hold back.
    async fn other_registry_still_served(&self) -> anyhow::Result<()> {
        let direct =
            ImageReference::parse(&format!("{}/{}:v1", self.harness.registry, self.repository))?;
        let digest = self
            .client
            .resolve_tag_now(&direct, None, Instant::now())
            .await
            .map_err(|e| anyhow::anyhow!("the other registry was affected: {e}"))?;
        anyhow::ensure!(digest == self.digest()?, "the other registry's digest");
        Ok(())
    }

    /// Resolves every `every` until an answer is the pushed digest, and
    /// returns when that was; fails after `limit`. Each failure before it
    /// must be the backoff's refusal (nothing sent) or `allowed`.
    async fn recovered(
        &self,
        limit: Duration,
        every: Duration,
        allowed: &[&str],
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            match self.resolve().await? {
                Ok(digest) => {
                    anyhow::ensure!(digest == self.digest()?, "recovered to the wrong digest");
                    return Ok(Instant::now());
                }
                Err(e) => anyhow::ensure!(
                    e.category() == "registry_backoff" || allowed.contains(&e.category()),
                    "unexpected failure while recovering: {} ({e})",
                    e.category()
                ),
            }
            anyhow::ensure!(Instant::now() < deadline, "not recovered within {limit:?}");
            tokio::time::sleep(every).await;
        }
    }

    /// Requests the client sent for `kind` that the registry answered
    /// `code` (`error`: no answer), by the client's own metric.
    fn counted(&self, kind: &str, code: &str) -> u64 {
        self.metrics
            .requests
            .with_label_values(&[self.front.addr.as_str(), kind, code])
            .get()
    }
}

/// Backoff short enough to watch: 200 ms doubling to 2 s.
fn quick_backoff() -> BudgetConfig {
    BudgetConfig {
        rate: 1000.0,
        burst: 100,
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
    }
}

/// A Retry-After answer, then the fault stops: no request may reach the
/// registry before the figure it gave has passed (the front's log is the
/// proof), and the first one after it succeeds.
async fn retry_after_is_honoured(
    code: u16,
    retry_after: RetryAfter,
    at_least: Duration,
    category: &str,
) -> anyhow::Result<()> {
    // The exponential backoff alone would allow a request after 200 ms.
    let budget = BudgetConfig {
        backoff_max: Duration::from_secs(30),
        ..quick_backoff()
    };
    let setup = Setup::new(
        &format!("retry-after-{code}"),
        budget,
        Duration::from_secs(5),
    )
    .await?;
    setup.front.set(Fault::Status {
        code,
        retry_after: Some(retry_after),
    });
    let first = setup.resolve().await?;
    let error = first
        .err()
        .ok_or_else(|| anyhow::anyhow!("the fault was not seen"))?;
    assert_eq!(error.category(), category, "{error}");
    assert!(error.to_string().contains(&code.to_string()), "{error}");
    setup.front.set(Fault::None);
    setup.other_registry_still_served().await?;

    let recovered = setup
        .recovered(
            at_least + Duration::from_secs(5),
            Duration::from_millis(50),
            &[],
        )
        .await?;
    let api = setup.front.api_requests();
    assert_eq!(
        api.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![Some(code), Some(200)],
        "one faulted request, then one that succeeded: {api:?}"
    );
    let held = api[1].at.duration_since(api[0].at);
    assert!(
        held >= at_least,
        "the registry asked for {retry_after:?}; the next request came after {held:?}"
    );
    // Recovery came promptly once allowed: within the poll step and a
    // second of the figure's rounding.
    assert!(
        recovered.duration_since(api[0].at) <= at_least + Duration::from_secs(2),
        "recovered {:?} after the fault",
        recovered.duration_since(api[0].at)
    );
    assert_eq!(setup.counted("resolve", &code.to_string()), 1);
    assert_eq!(setup.counted("resolve", "200"), 1);
    Ok(())
}

#[tokio::test]
async fn a_429_with_retry_after_in_seconds_holds_every_request_until_it_passes()
-> anyhow::Result<()> {
    retry_after_is_honoured(
        429,
        RetryAfter::Seconds(3),
        Duration::from_secs(3),
        "registry_rate_limited",
    )
    .await
}

#[tokio::test]
async fn a_429_with_retry_after_as_an_http_date_holds_every_request_until_then()
-> anyhow::Result<()> {
    // An HTTP date has whole seconds: "3 s from now" is 2 to 3 s away.
    retry_after_is_honoured(
        429,
        RetryAfter::DateIn(3),
        Duration::from_secs(2),
        "registry_rate_limited",
    )
    .await
}

#[tokio::test]
async fn a_503_with_retry_after_holds_every_request_until_it_passes() -> anyhow::Result<()> {
    retry_after_is_honoured(
        503,
        RetryAfter::Seconds(3),
        Duration::from_secs(3),
        "registry_unavailable",
    )
    .await
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_honoured_only_up_to_the_cap() -> anyhow::Result<()> {
    // A day asked; freshen holds at most its longest backoff (2 s here).
    let setup = Setup::new("retry-after-cap", quick_backoff(), Duration::from_secs(5)).await?;
    setup.front.set(Fault::Status {
        code: 429,
        retry_after: Some(RetryAfter::Seconds(86_400)),
    });
    let refused = setup.resolve().await?.err();
    assert_eq!(refused.map(|e| e.category()), Some("registry_rate_limited"));
    let held = setup.resolve().await?.err();
    match held.as_deref() {
        Some(RegistryError::BackingOff { retry_in, .. }) => {
            assert!(*retry_in <= Duration::from_secs(2), "held {retry_in:?}");
        }
        other => panic!("expected the backoff's refusal, got {other:?}"),
    }
    setup.front.set(Fault::None);
    let recovered = setup
        .recovered(Duration::from_secs(6), Duration::from_millis(50), &[])
        .await?;
    let api = setup.front.api_requests();
    let first = api.first().map(|s| s.at).unwrap_or(recovered);
    assert!(
        recovered.duration_since(first) < Duration::from_secs(4),
        "a day's Retry-After was capped at 2 s: recovered after {:?}",
        recovered.duration_since(first)
    );
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried_with_exponential_backoff_and_recover() -> anyhow::Result<()> {
    for code in [500u16, 502, 503] {
        let setup = Setup::new(
            &format!("server-{code}"),
            quick_backoff(),
            Duration::from_secs(5),
        )
        .await?;
        setup.front.set(Fault::Status {
            code,
            retry_after: None,
        });
        // A busy operator asks every 20 ms for 4 s.
        let start = Instant::now();
        let mut asked = 0;
        while start.elapsed() < Duration::from_secs(4) {
            if let Err(e) = setup.resolve().await? {
                assert!(
                    ["registry_unavailable", "registry_backoff"].contains(&e.category()),
                    "{code}: {} ({e})",
                    e.category()
                );
            }
            asked += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        setup.other_registry_still_served().await?;
        let api = setup.front.api_requests();
        let gaps: Vec<Duration> = api.windows(2).map(|w| w[1].at - w[0].at).collect();
        // 200 ms doubling, capped at 2 s, each drawn from its upper half:
        // at least 100, 200, 400, 800, 1000 ms apart.
        let floors = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for (gap, floor) in gaps.iter().zip(floors) {
            assert!(
                *gap >= Duration::from_millis(floor),
                "{code}: gaps {gaps:?} under the backoff's floors {floors:?}"
            );
        }
        assert!(
            api.len() <= 7 && api.len() >= 3,
            "{code}: {asked} look-ups sent {} requests: {api:?}",
            api.len()
        );
        assert_eq!(
            setup.counted("resolve", &code.to_string()),
            api.len() as u64,
            "{code}: every request counted with its status"
        );
        setup.front.set(Fault::None);
        setup
            .recovered(Duration::from_secs(4), Duration::from_millis(50), &[])
            .await?;
        eprintln!(
            "{code}: {asked} look-ups in 4 s sent {} requests, gaps {gaps:?}",
            api.len()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_and_backs_off() -> anyhow::Result<()> {
    let setup = Setup::new("hang", quick_backoff(), Duration::from_secs(1)).await?;
    setup.front.set(Fault::Hang);
    let start = Instant::now();
    let error = setup.resolve().await?.err();
    let took = start.elapsed();
    assert_eq!(
        error.as_ref().map(|e| e.category()),
        Some("registry_timeout"),
        "{error:?}"
    );
    assert!(took < Duration::from_secs(3), "a 1 s timeout took {took:?}");
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("did not answer in time") || message.contains("within 1s"),
        "the message says the registry did not answer: {message}"
    );
    // Backed off: the next look-up sends nothing.
    let again = setup.resolve().await?.err();
    assert_eq!(again.map(|e| e.category()), Some("registry_backoff"));
    assert_eq!(setup.front.api_requests().len(), 1);
    setup.other_registry_still_served().await?;
    setup.front.set(Fault::None);
    setup
        .recovered(Duration::from_secs(4), Duration::from_millis(50), &[])
        .await?;
    assert_eq!(setup.counted("resolve", "error"), 1);
    Ok(())
}

/// A body broken as `fault` says fails the image's facts with `category`;
/// once the fault stops, the facts are read (a failure is not cached).
async fn broken_bodies_fail_the_facts(
    prefix: &str,
    fault: Fault,
    category: &str,
    says: &str,
) -> anyhow::Result<()> {
    let setup = Setup::new(prefix, quick_backoff(), Duration::from_secs(5)).await?;
    let image = setup.fronted("v1")?;
    let digest = setup.digest()?;
    setup.front.set(fault.clone());
    let error = setup
        .client
        .image_facts(&image, &digest, None, None)
        .await
        .err();
    assert_eq!(
        error.as_ref().map(|e| e.category()),
        Some(category),
        "{fault:?}: {error:?}"
    );
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains(says), "{fault:?}: {message}");
    setup.other_registry_still_served().await?;
    setup.front.set(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(5);
    let facts = loop {
        match setup.client.image_facts(&image, &digest, None, None).await {
            Ok(facts) => break facts,
            Err(e) if e.category() == "registry_backoff" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => anyhow::bail!("{fault:?}: not recovered: {e}"),
        }
    };
    assert!(
        facts.created.is_some(),
        "{fault:?}: facts read after the fault"
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_reset_mid_body_fails_the_look_up_and_recovers() -> anyhow::Result<()> {
    broken_bodies_fail_the_facts(
        "reset",
        Fault::ResetMidBody,
        "registry_manifest",
        "could not be reached",
    )
    .await
}

#[tokio::test]
async fn a_truncated_body_fails_the_look_up_and_recovers() -> anyhow::Result<()> {
    broken_bodies_fail_the_facts(
        "truncated",
        Fault::TruncatedBody,
        "registry_manifest",
        "could not be reached",
    )
    .await
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused() -> anyhow::Result<()> {
    broken_bodies_fail_the_facts(
        "corrupt",
        Fault::CorruptBody,
        "registry_bad_digest",
        "sha256:",
    )
    .await
}

#[tokio::test]
async fn a_wrong_content_type_does_not_decide_what_verified_content_is() -> anyhow::Result<()> {
    // The body, verified against its digest, says what it is.
    let setup = Setup::new("content-type", quick_backoff(), Duration::from_secs(5)).await?;
    setup.front.set(Fault::ContentType("text/html".into()));
    let digest = setup.resolve().await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    let facts = setup
        .client
        .image_facts(&setup.fronted("v1")?, &digest, None, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(facts.digest, setup.digest()?);
    assert!(facts.created.is_some());
    Ok(())
}

#[tokio::test]
async fn invalid_json_under_a_matching_digest_is_a_format_error() -> anyhow::Result<()> {
    let setup = Setup::new("invalid-json", quick_backoff(), Duration::from_secs(5)).await?;
    let repository = setup.repository.clone();
    // A manifest that is not JSON, served under its own digest.
    let junk = b"{\"schemaVersion\": 2, \"config\": {".to_vec();
    let junk_digest = sha256_digest(&junk);
    setup.front.can(
        &format!("/v2/{repository}/manifests/{junk_digest}"),
        Canned {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            body: junk,
        },
    );
    // A valid manifest whose config blob is not JSON.
    let config = b"not json at all".to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
        sha256_digest(&config),
        config.len()
    )
    .into_bytes();
    let manifest_digest = sha256_digest(&manifest);
    setup.front.can(
        &format!("/v2/{repository}/manifests/{manifest_digest}"),
        Canned {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            body: manifest,
        },
    );
    setup.front.can(
        &format!("/v2/{repository}/blobs/{}", sha256_digest(&config)),
        Canned {
            status: 200,
            headers: Vec::new(),
            body: config,
        },
    );
    let image = setup.fronted("v1")?;
    for (digest, what) in [(junk_digest, "manifest"), (manifest_digest, "config")] {
        let digest: Digest = digest.parse().map_err(anyhow::Error::msg)?;
        let error = setup
            .client
            .image_facts(&image, &digest, None, None)
            .await
            .err();
        assert_eq!(
            error.as_ref().map(|e| e.category()),
            Some("registry_format"),
            "{what}: {error:?}"
        );
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        eprintln!("invalid {what}: {message}");
    }
    setup.other_registry_still_served().await?;
    Ok(())
}

#[tokio::test]
async fn a_token_service_that_never_grants_fails_each_look_up_once() -> anyhow::Result<()> {
    let setup = Setup::new("token-refused", quick_backoff(), Duration::from_secs(5)).await?;
    setup.front.set(Fault::TokenRefused);
    for round in 1..=3 {
        let error = setup.resolve().await?.err();
        assert_eq!(
            error.as_ref().map(|e| e.category()),
            Some("registry_unauthorized"),
            "{error:?}"
        );
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("401"), "{message}");
        // One challenge and one token request per look-up: no loop.
        let seen = setup.front.seen();
        assert_eq!(seen.len(), 2 * round, "{seen:?}");
    }
    setup.other_registry_still_served().await?;
    setup.front.set(Fault::None);
    setup
        .recovered(Duration::from_secs(4), Duration::from_millis(50), &[])
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_token_the_registry_expires_early_is_renewed_on_its_401() -> anyhow::Result<()> {
    let setup = Setup::new("token-short", quick_backoff(), Duration::from_secs(5)).await?;
    // The answer says 300 s; the front honours each token for 1 s.
    setup.front.set(Fault::ShortToken {
        lifetime: Duration::from_secs(1),
        advertised: 300,
    });
    let first = setup.resolve().await?;
    assert_eq!(first.ok(), Some(setup.digest()?));
    assert_eq!(setup.front.tokens_granted(), 1);
    // Within its life the token is reused: no second token request.
    let second = setup.resolve().await?;
    assert_eq!(second.ok(), Some(setup.digest()?));
    assert_eq!(setup.front.tokens_granted(), 1);
    // The scenario is the token's death: its second passes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let third = setup.resolve().await?;
    assert_eq!(
        third.as_ref().ok(),
        Some(&setup.digest()?),
        "renewed after a 401: {third:?}"
    );
    assert_eq!(setup.front.tokens_granted(), 2);
    let statuses: Vec<Option<u16>> = setup
        .front
        .api_requests()
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(
        statuses,
        vec![Some(401), Some(200), Some(200), Some(401), Some(200)],
        "challenge, granted; reused; refused, renewed"
    );
    Ok(())
}
