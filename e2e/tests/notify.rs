//! Registry push notifications, end to end: the harness's third registry
//! (Debian's docker-registry with `notifications.endpoints`) tells the
//! operator of every push; with a poll interval of an hour, only the
//! notification can explain a Refresh that appears. Hostile bodies get the
//! right 4xx and change nothing.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
use freshen_api::{PolicyRefresh, Refresh, RefreshPolicy, RefreshPolicySpec};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::Operator;
use freshen_e2e::{Harness, TestNamespace, deployment, init_tls, wait_for, wait_ready_pods};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

struct Scene {
    harness: Harness,
    client: Client,
    ns: TestNamespace,
}

impl Scene {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        init_tls();
        let harness = Harness::load()?;
        let client = harness.client().await?;
        let ns = TestNamespace::create(&harness, &client, prefix).await?;
        Ok(Self {
            harness,
            client,
            ns,
        })
    }

    /// Pushes `content` built `hours_ago` as `app:stable` to the notifying
    /// registry.
    async fn push(&self, content: &str, hours_ago: i64) -> anyhow::Result<Pushed> {
        let spec = ImageSpec {
            content: content.into(),
            ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(hours_ago))
        };
        push(
            &self.harness.notify.addr,
            &format!("e2e/{}/app", self.ns.name),
            "stable",
            &spec,
        )
        .await
    }

    /// `web` follows its tag, with a fast canary.
    async fn follow(&self, image: &str) -> anyhow::Result<()> {
        let policy = RefreshPolicy::new(
            "web",
            RefreshPolicySpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
                    match_expressions: None,
                },
                limits: Default::default(),
                pipelines: Default::default(),
                refresh: PolicyRefresh {
                    follow_tag: Some(true),
                    rollout: Some(RolloutSpec {
                        analysis: Some(AnalysisSpec {
                            interval: Some("1s".into()),
                            iterations: Some(2),
                            readiness_timeout: Some("30s".into()),
                            ..AnalysisSpec::default()
                        }),
                        ..RolloutSpec::default()
                    }),
                    ..PolicyRefresh::default()
                },
            },
        );
        Api::<RefreshPolicy>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &policy)
            .await?;
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &deployment("web", image, 1, &[])?)
            .await?;
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            "web",
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    /// An operator polling once an hour, listening for notifications.
    async fn operator(&self) -> anyhow::Result<Operator> {
        let token_file = self.harness.notify.token_file.display().to_string();
        Operator::start(
            &self.harness,
            &[
                "--poll-interval",
                "1h",
                "--namespace",
                &self.ns.name,
                "--plain-http-registry",
                &self.harness.notify.addr,
                "--notify-addr",
                &self.harness.notify.endpoint,
                "--notify-token-file",
                &token_file,
                "--notify-debounce",
                "200ms",
            ],
        )
        .await
    }

    async fn refreshes(&self) -> anyhow::Result<Vec<Refresh>> {
        Ok(
            Api::<Refresh>::namespaced(self.client.clone(), &self.ns.name)
                .list(&ListParams::default())
                .await?
                .items,
        )
    }

    /// Waits until the operator measured `web` once (its first look).
    async fn measured(&self, operator: &Operator) -> anyhow::Result<()> {
        let series = r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#;
        wait_for(
            "web's first measurement",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { Ok((operator.metric(series).await? >= 1.0).then_some(())) },
        )
        .await
    }
}

#[tokio::test]
async fn a_push_notification_starts_the_refresh_with_an_hour_long_poll() -> anyhow::Result<()> {
    let s = Scene::new("notify").await?;
    let v1 = s.push("v1", 48).await?;
    s.follow(&v1.pinned()).await?;
    let operator = s.operator().await?;
    s.measured(&operator).await?;
    assert!(s.refreshes().await?.is_empty());

    let pushed = Instant::now();
    let v2 = s.push("v2", 1).await?;
    // No poll comes for an hour: only the registry's notification can
    // bring the Refresh.
    let refresh = wait_for(
        "a Refresh after the push",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { Ok(s.refreshes().await?.into_iter().next()) },
    )
    .await?;
    eprintln!(
        "push -> Refresh: {} ms (poll interval 1h)",
        pushed.elapsed().as_millis()
    );
    assert_eq!(refresh.spec.digest, v2.digest);
    // The v1 push is also delivered (the registry retried it until the
    // operator listened): at least the one that mattered was accepted.
    let accepted = operator
        .metric(r#"freshen_notifications_total{outcome="accepted"}"#)
        .await?;
    assert!(accepted >= 1.0, "{accepted}");
    Ok(())
}

#[tokio::test]
async fn hostile_notifications_get_the_right_4xx_and_change_nothing() -> anyhow::Result<()> {
    let s = Scene::new("notify-hostile").await?;
    let v1 = s.push("v1", 48).await?;
    s.follow(&v1.pinned()).await?;
    let operator = s.operator().await?;
    s.measured(&operator).await?;
    let token = std::fs::read_to_string(&s.harness.notify.token_file)?;
    let url = format!("http://{}/notify", s.harness.notify.endpoint);
    let http = reqwest::Client::new();
    let send = |auth: Option<String>, body: Vec<u8>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut request = http
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            anyhow::Ok(request.send().await?.status().as_u16())
        }
    };
    let bearer = Some(format!("Bearer {}", token.trim()));
    let followed = format!("{}/e2e/{}/app:stable", s.harness.notify.addr, s.ns.name);
    let valid = serde_json::to_vec(&serde_json::json!({"image": followed}))?;

    assert_eq!(send(None, valid.clone()).await?, 401, "no token");
    assert_eq!(
        send(Some("Bearer wrong".into()), valid.clone()).await?,
        401,
        "a wrong token"
    );
    assert_eq!(send(bearer.clone(), b"{not json".to_vec()).await?, 400);
    assert_eq!(
        send(bearer.clone(), br#"{"hello": "world"}"#.to_vec()).await?,
        400,
        "an unknown shape"
    );
    assert_eq!(
        declared_10_mib(&s.harness.notify.endpoint, token.trim()).await?,
        413,
        "a 10 MiB body is refused before it is read"
    );
    let unknown = serde_json::to_vec(&serde_json::json!({"image": "reg.example/nobody:1"}))?;
    assert_eq!(
        send(bearer.clone(), unknown).await?,
        404,
        "nobody follows it"
    );
    // The tag did not move: a valid notification measures again and
    // finds nothing to do.
    assert_eq!(send(bearer.clone(), valid.clone()).await?, 202);
    // A flood from one address is cut to its burst.
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(send(None, b"{}".to_vec()).await?);
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    // Nothing changed: no Refresh, the operator still ready and serving.
    assert!(s.refreshes().await?.is_empty());
    assert!(operator.ready().await?);
    let refused = operator
        .metric(r#"freshen_notifications_total{outcome="unauthorized"}"#)
        .await?;
    assert!(refused >= 2.0, "{refused}");
    for outcome in ["bad_request", "too_large", "unknown", "rate_limited"] {
        let series = format!(r#"freshen_notifications_total{{outcome="{outcome}"}}"#);
        assert!(operator.metric(&series).await? >= 1.0, "{series}");
    }
    Ok(())
}

/// Sends the headers of a 10 MiB notification and the first KiB of it,
/// then reads the status line: what a client streaming a huge body sees
/// (a whole 10 MiB write would race the server closing the connection).
async fn declared_10_mib(endpoint: &str, token: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(endpoint).await?;
    let head = format!(
        "POST /notify HTTP/1.1\r\nhost: {endpoint}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {token}\r\ncontent-length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&[b' '; 1024]).await?;
    let mut answer = vec![0_u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer)).await??;
    let line = String::from_utf8_lossy(&answer[..n]).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {line:?}"))
}

/// Opens a connection to `endpoint` from `source`, sends the headers of a
/// notification of 1 MiB less one byte with a wrong token, then as much of
/// the body as the server takes, and keeps the connection open: what a
/// pod that stalls a notification does.
async fn stall(
    source: std::net::IpAddr,
    endpoint: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(endpoint).await?;
    let size = 1024 * 1024 - 1;
    let head = format!(
        "POST /notify HTTP/1.1\r\nhost: {endpoint}\r\ncontent-type: application/json\r\n\
         authorization: Bearer not-the-token\r\ncontent-length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    // The server answers 401 on the headers; whatever of the body the
    // socket buffers take is written, the rest would block.
    let body = vec![b' '; size];
    let _ = tokio::time::timeout(Duration::from_millis(50), stream.write_all(&body)).await;
    Ok(stream)
}

#[tokio::test]
async fn six_hundred_stalled_notifications_from_many_addresses_leave_the_operator_small()
-> anyhow::Result<()> {
    let s = Scene::new("notify-stall").await?;
    let v1 = s.push("v1", 48).await?;
    s.follow(&v1.pinned()).await?;
    let operator = s.operator().await?;
    s.measured(&operator).await?;
    let before = operator.rss_bytes()?;
    let endpoint: std::net::SocketAddr = s.harness.notify.endpoint.parse()?;
    // 600 connections from 300 addresses (two each), like 300 pods.
    let mut held = Vec::new();
    for i in 0..600_u32 {
        let n = i / 2;
        let source = std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            10 + (n / 250) as u8,
            1 + (n % 250) as u8,
        ));
        held.push(stall(source, endpoint).await?);
    }
    let during = operator.rss_bytes()?;
    let mib = |b: u64| b / (1024 * 1024);
    eprintln!(
        "operator RSS: {} MiB before, {} MiB with 600 stalled notifications",
        mib(before),
        mib(during)
    );
    assert!(
        during < 160 * 1024 * 1024,
        "RSS {} MiB with 600 stalled notifications (the chart's limit is 512 MiB)",
        mib(during)
    );
    drop(held);
    // Still the same process, still ready, and a real notification is
    // accepted once the stalled connections are gone.
    assert!(operator.ready().await?);
    let token = std::fs::read_to_string(&s.harness.notify.token_file)?;
    let followed = format!("{}/e2e/{}/app:stable", s.harness.notify.addr, s.ns.name);
    let http = reqwest::Client::new();
    let url = format!("http://{}/notify", s.harness.notify.endpoint);
    let status = wait_for(
        "a notification accepted after the stall",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            let (http, url, token, followed) =
                (http.clone(), url.clone(), token.clone(), followed.clone());
            async move {
                let status = http
                    .post(url)
                    .header("authorization", format!("Bearer {}", token.trim()))
                    .json(&serde_json::json!({"image": followed}))
                    .send()
                    .await?
                    .status()
                    .as_u16();
                anyhow::ensure!(status == 202, "answered {status}");
                Ok(Some(status))
            }
        },
    )
    .await?;
    assert_eq!(status, 202);
    let refused = operator
        .metric(r#"freshen_notifications_total{outcome="unauthorized"}"#)
        .await?;
    assert!(refused >= 1.0, "{refused}");
    Ok(())
}
