//! A failed reconcile reaches the user: a Warning Event on the object whose
//! reconcile failed, its reason the error's category, its note the cause;
//! and a count by controller and category.

use std::time::Duration;

use freshen_e2e::operator::Operator;
use freshen_e2e::{Harness, TestNamespace, await_warning, init_tls, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A registry that answers every request with 500, until the test ends.
async fn failing_registry() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let body = r#"{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}"#;
                // (A HEAD answer carries no body: the tag look-up says only
                // the status.)
                let reply = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_registry_that_answers_500_is_a_warning_event_on_the_workload() -> anyhow::Result<()> {
    init_tls();
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "errors").await?;
    let registry = failing_registry().await?;
    ns.deploy_ready(
        &client,
        "broken",
        &format!("{registry}/team/app:1"),
        1,
        &[("freshen.dev/refresh", "enabled")],
    )
    .await?;
    let operator = Operator::start(
        &harness,
        &[
            "--namespace",
            &ns.name,
            "--plain-http-registry",
            &registry,
            "--poll-interval",
            "1h",
        ],
    )
    .await?;
    let note = await_warning(
        &client,
        &ns.name,
        "Deployment",
        "broken",
        "RegistryUnavailable",
    )
    .await?;
    assert!(
        note.starts_with(&format!("500 from {registry}: the registry failed for ")),
        "{note}"
    );
    assert!(note.contains(&format!("{registry}/team/app:1")), "{note}");
    wait_for(
        "the failure counted by controller and category",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let text = operator.scrape().await?;
            let counted = text.lines().any(|l| {
                l.starts_with("freshen_reconcile_errors_total{")
                    && l.contains(r#"controller="deployment""#)
                    && l.contains(r#"category="registry_unavailable""#)
            });
            Ok(counted.then_some(()))
        },
    )
    .await?;
    Ok(())
}
