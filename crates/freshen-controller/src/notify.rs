//! Registry push notifications: instant detection instead of the next poll.
//!
//! An endpoint (its own address, off unless `--notify-addr` is given)
//! accepts the CNCF distribution envelope (`events[]` with `action: push`),
//! Harbor's `PUSH_ARTIFACT` and a generic `{"image", "digest"}` body. A
//! push of a tag a workload follows, a base a workload tracks or an image
//! a rebuild waits for drops that tag from the cache and measures its
//! dependants at once. Pushes to one tag within the debounce window (a
//! multi-arch index lands one manifest at a time) count once.
//!
//! Everything here is input from outside the cluster: the caller must
//! present the bearer token or a Standard Webhooks signature (compared in
//! constant time), bodies are capped, each source address is rate-limited,
//! and nothing it sends is logged beyond the image it names.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use freshen_core::ImageReference;
use freshen_core::kind::Kind;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use prometheus::IntCounterVec;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::rebuild::webhook::signature;
use crate::runtime::context::Context;

/// How the endpoint is set up.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bearer token callers present (`Authorization: Bearer ...`).
    pub token: Option<String>,
    /// The Standard Webhooks signing key callers may sign with instead.
    pub signing_key: Option<Vec<u8>>,
    /// Pushes to one tag within this window count once.
    pub debounce: Duration,
}

/// The largest body accepted: a distribution envelope batches events, and
/// 1 MiB holds thousands.
pub const MAX_BODY: usize = 1024 * 1024;
/// Events read from one body, at most.
const MAX_EVENTS: usize = 1000;
/// Requests one source address may make per second, and in a burst.
const RATE: f64 = 20.0;
const BURST: f64 = 40.0;
/// Source addresses whose rate is tracked, at most.
const MAX_SOURCES: usize = 4096;
/// How far a signed request's timestamp may be from now.
const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// How long one connection may last, however slowly it sends: a stalled
/// caller holds a connection slot this long at most.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long a body may take to arrive once its headers passed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Body bytes being read at once, over every connection, in KiB: what
/// callers who have not yet proven who they are can make freshen hold.
pub const MAX_BODIES_IN_FLIGHT_KIB: u32 = 8 * 1024;
/// Signed deliveries remembered (by `webhook-id`) to refuse a replay.
const MAX_REPLAYS: usize = 16_384;

/// A push freshen may care about: a tag of a repository on a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Push {
    /// The image, tagged, normalized (`registry/repository:tag`).
    pub image: String,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBody(pub String);

/// The pushes a notification body reports: tag pushes only (a push by
/// digest, a layer, a pull or a delete is nobody's new tag).
pub fn parse(body: &[u8]) -> Result<Vec<Push>, BadBody> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BadBody(format!("not JSON: {e}")))?;
    let pushes = if let Some(events) = value.get("events").and_then(Value::as_array) {
        events
            .iter()
            .take(MAX_EVENTS)
            .filter_map(distribution)
            .collect()
    } else if value.get("type").and_then(Value::as_str) == Some("PUSH_ARTIFACT") {
        value
            .pointer("/event_data/resources")
            .and_then(Value::as_array)
            .map(|rs| rs.iter().take(MAX_EVENTS).filter_map(harbor).collect())
            .unwrap_or_default()
    } else if let Some(image) = value.get("image").and_then(Value::as_str) {
        let parsed = ImageReference::parse(image).map_err(|e| BadBody(format!("image: {e}")))?;
        if parsed.tag.is_none() {
            return Err(BadBody(
                "image: name the tag that moved, e.g. reg.example/app:1".into(),
            ));
        }
        vec![push_of(&parsed)]
    } else {
        return Err(BadBody(
            "expected a distribution envelope ({\"events\": [...]}), a Harbor PUSH_ARTIFACT \
             event, or {\"image\": \"registry/repository:tag\"}"
                .into(),
        ));
    };
    Ok(pushes)
}

fn push_of(image: &ImageReference) -> Push {
    Push {
        image: image.without_digest().to_string(),
    }
}

/// A distribution event: `action: push` of a manifest by tag. The registry
/// is the host the push was made to (`request.host`), else the target
/// URL's.
fn distribution(event: &Value) -> Option<Push> {
    if event.get("action").and_then(Value::as_str) != Some("push") {
        return None;
    }
    let target = event.get("target")?;
    let tag = target.get("tag").and_then(Value::as_str)?;
    let media_type = target
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if media_type.contains("layer") || media_type.contains("rootfs") {
        return None;
    }
    let repository = target.get("repository").and_then(Value::as_str)?;
    let host = event
        .pointer("/request/host")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            let url = target.get("url").and_then(Value::as_str)?;
            let url = reqwest::Url::parse(url).ok()?;
            Some(match url.port() {
                Some(p) => format!("{}:{p}", url.host_str()?),
                None => url.host_str()?.to_owned(),
            })
        })?;
    let image = ImageReference::parse(&format!("{host}/{repository}:{tag}")).ok()?;
    Some(push_of(&image))
}

/// A Harbor resource: `resource_url` is `host/project/repository:tag`.
fn harbor(resource: &Value) -> Option<Push> {
    let url = resource.get("resource_url").and_then(Value::as_str)?;
    let image = ImageReference::parse(url).ok()?;
    image.tag.as_ref()?;
    Some(push_of(&image))
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the token or a valid, timely signature.
pub fn authorized(config: &NotifyConfig, headers: &HeaderMap, body: &[u8], now_unix: i64) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some(token), Some(given)) = (
        &config.token,
        get("authorization").and_then(|v| v.strip_prefix("Bearer ")),
    ) && same(token.as_bytes(), given.trim().as_bytes())
    {
        return true;
    }
    let (Some(key), Some(id), Some(timestamp), Some(signatures)) = (
        &config.signing_key,
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let timely = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now_unix - t).abs() <= SIGNATURE_TOLERANCE_SECONDS);
    let expected = signature(key, id, timestamp, body);
    // Several signatures may be sent, space-separated (key rotation).
    timely
        && signatures
            .split(' ')
            .any(|s| same(s.as_bytes(), expected.as_bytes()))
}

/// What the headers alone say of a caller, before any body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The bearer token matches: authorized.
    Token,
    /// A timely Standard Webhooks delivery `id`: the body decides.
    Signed(String),
    /// Neither: refused without reading the body.
    Refused,
}

/// Judges a caller on its headers: the bearer token, or the presence of a
/// timely signature (verified once the body is read, see [`authorized`]).
pub fn gate(config: &NotifyConfig, headers: &HeaderMap, now_unix: i64) -> Gate {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some(token), Some(given)) = (
        &config.token,
        get("authorization").and_then(|v| v.strip_prefix("Bearer ")),
    ) && same(token.as_bytes(), given.trim().as_bytes())
    {
        return Gate::Token;
    }
    let (Some(_), Some(id), Some(timestamp), Some(_)) = (
        &config.signing_key,
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return Gate::Refused;
    };
    let timely = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now_unix - t).abs() <= SIGNATURE_TOLERANCE_SECONDS);
    if !timely || id.is_empty() || id.len() > 256 {
        return Gate::Refused;
    }
    Gate::Signed(id.to_owned())
}

/// The `webhook-id`s of signed deliveries accepted within the signature
/// tolerance: a captured delivery sent again is not acted on twice.
#[derive(Default)]
struct Replays {
    seen: HashMap<String, i64>,
}

impl Replays {
    /// Whether `id` is new (and now remembered); `None` when the cache is
    /// full of unexpired ids (refuse: fail closed).
    fn first(&mut self, id: &str, now_unix: i64) -> Option<bool> {
        if self.seen.get(id).is_some_and(|until| *until >= now_unix) {
            return Some(false);
        }
        if self.seen.len() >= MAX_REPLAYS {
            self.seen.retain(|_, until| *until >= now_unix);
            if self.seen.len() >= MAX_REPLAYS {
                return None;
            }
        }
        self.seen.insert(
            id.to_owned(),
            now_unix.saturating_add(2 * SIGNATURE_TOLERANCE_SECONDS),
        );
        Some(true)
    }
}

/// A token bucket per source address.
#[derive(Default)]
struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            // Forget sources idle longest; a flood of addresses cannot grow
            // the map.
            let cutoff = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
            self.buckets.retain(|_, (_, at)| *at > cutoff);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((BURST, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * RATE;
        *tokens = (*tokens + refill).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    config: Arc<NotifyConfig>,
    ctx: Arc<Context>,
    pushes: mpsc::UnboundedSender<Push>,
    limiter: Arc<Mutex<Limiter>>,
    replays: Arc<Mutex<Replays>>,
    bodies: Arc<tokio::sync::Semaphore>,
    counts: IntCounterVec,
}

impl Endpoint {
    fn answer(&self, outcome: &str, status: StatusCode, message: String) -> Response {
        self.counts.with_label_values(&[outcome]).inc();
        (status, message).into_response()
    }
}

/// Serves the endpoint on `config.addr` (POST `/notify`) until dropped.
pub async fn serve(
    config: NotifyConfig,
    ctx: Arc<Context>,
    counts: IntCounterVec,
) -> std::io::Result<()> {
    if config.token.is_none() && config.signing_key.is_none() {
        return Err(std::io::Error::other(
            "--notify-addr needs --notify-token-file or --notify-signing-secret-file",
        ));
    }
    if config.token.as_deref().is_some_and(|t| t.trim().is_empty())
        || config.signing_key.as_deref().is_some_and(<[u8]>::is_empty)
    {
        return Err(std::io::Error::other(
            "the notification token or signing secret is empty: anyone could present it; \
             write a secret into --notify-token-file / --notify-signing-secret-file",
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(debounce(rx, config.debounce, Arc::clone(&ctx)));
    let addr = config.addr;
    let endpoint = Endpoint {
        config: Arc::new(config),
        ctx,
        pushes: tx,
        limiter: Arc::new(Mutex::new(Limiter::default())),
        replays: Arc::new(Mutex::new(Replays::default())),
        bodies: Arc::new(tokio::sync::Semaphore::new(
            MAX_BODIES_IN_FLIGHT_KIB as usize,
        )),
        counts,
    };
    let app = Router::new()
        .route("/notify", post(notify))
        // Read to MAX_BODY by the handler itself, which counts a refusal.
        .layer(DefaultBodyLimit::disable())
        .with_state(endpoint);
    let listener = Guarded {
        listener: tokio::net::TcpListener::bind(addr).await?,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    };
    info!(%addr, "serving registry notifications on /notify");
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
}

/// The address a notification came from.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Guarded>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The endpoint's listener: at most [`MAX_CONNECTIONS`] connections at once
/// (the next is accepted when one closes), each closed after
/// [`CONNECTION_LIFETIME`] however slowly it sends.
struct Guarded {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for Guarded {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                // The semaphore is never closed; wait as the backlog would.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let bounded = Bounded {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _slot: slot,
                    };
                    return (bounded, peer);
                }
                Err(e) => {
                    debug!(error = %e, "notification connection not accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that ends at its deadline and frees its slot when dropped.
struct Bounded {
    stream: tokio::net::TcpStream,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Bounded {
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the notification connection outlived its deadline",
    )
}

impl tokio::io::AsyncRead for Bounded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One notification: admitted (rate, size, caller) -> parsed -> the
/// pushes that concern freshen handed to the debouncer.
async fn notify(
    State(endpoint): State<Endpoint>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match endpoint.admit(peer, &headers, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let pushes = match parse(&body) {
        Ok(p) => p,
        Err(BadBody(why)) => return endpoint.answer("bad_request", StatusCode::BAD_REQUEST, why),
    };
    let generic = serde_json::from_slice::<Value>(&body)
        .ok()
        .is_some_and(|v| v.get("image").is_some());
    endpoint.route(&pushes, generic)
}

impl Endpoint {
    /// The body, if the source is within its rate, the caller proves who
    /// it is and the body fits: the bearer token is checked (and a
    /// signature's headers) before a byte of the body is read; a body is
    /// read only within its cap, the budget of bodies in flight and
    /// [`BODY_TIMEOUT`]; a signed delivery is verified against its body and
    /// acted on once per `webhook-id`. Else the answer.
    async fn admit(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, Response> {
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.allow(peer.ip(), Instant::now()))
            .unwrap_or(false);
        if !allowed {
            return Err(self.retry_later(
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                "too many notifications from this address; retry in a second",
            ));
        }
        let now = chrono::Utc::now().timestamp();
        let gate = gate(&self.config, headers, now);
        if gate == Gate::Refused {
            return Err(self.unauthorized(peer));
        }
        let body = self.read_body(headers, body).await?;
        if let Gate::Signed(id) = gate {
            self.check_signed(peer, headers, &body, &id, now)
                .map_err(|response| *response)?;
        }
        Ok(body)
    }

    /// Reads the body within [`MAX_BODY`], [`BODY_TIMEOUT`] and the budget
    /// of bodies in flight (taken by its declared length, else the most).
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
        let too_large = || {
            self.answer(
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("bodies are at most {MAX_BODY} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(too_large());
        }
        let kib = declared.unwrap_or(MAX_BODY).div_ceil(1024).max(1);
        let Ok(_budget) = Arc::clone(&self.bodies)
            .try_acquire_many_owned(u32::try_from(kib).unwrap_or(MAX_BODIES_IN_FLIGHT_KIB))
        else {
            return Err(self.retry_later(
                "busy",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many notification bodies are being read; retry in a second",
            ));
        };
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(too_large()),
            Err(_) => Err(self.answer(
                "timed_out",
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
            )),
        }
    }

    /// A signed delivery's signature over its body, and that its
    /// `webhook-id` was not acted on before.
    fn check_signed(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: &Bytes,
        id: &str,
        now: i64,
    ) -> Result<(), Box<Response>> {
        if !authorized(&self.config, headers, body, now) {
            return Err(Box::new(self.unauthorized(peer)));
        }
        let first = self.replays.lock().ok().and_then(|mut r| r.first(id, now));
        match first {
            Some(true) => Ok(()),
            Some(false) => Err(Box::new(self.answer(
                "duplicate",
                StatusCode::OK,
                format!("delivery {id} was already received"),
            ))),
            None => Err(Box::new(self.retry_later(
                "busy",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many signed deliveries to remember; retry later",
            ))),
        }
    }

    fn unauthorized(&self, peer: SocketAddr) -> Response {
        warn!(%peer, "notification refused: no valid token or signature");
        self.answer(
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "present the bearer token or a Standard Webhooks signature".into(),
        )
    }

    fn retry_later(&self, outcome: &str, status: StatusCode, message: &str) -> Response {
        let mut response = self.answer(outcome, status, message.to_owned());
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    }

    /// Hands the pushes that concern freshen to the debouncer. A registry
    /// sends every push and must not retry those nobody follows (202);
    /// someone naming an image by hand (`generic`) learns it is unknown.
    fn route(&self, pushes: &[Push], generic: bool) -> Response {
        let known: Vec<&Push> = pushes
            .iter()
            .filter(|p| !dependants(&self.ctx, p).is_empty())
            .collect();
        if known.is_empty() && generic {
            let image = pushes.first().map(|p| p.image.as_str()).unwrap_or_default();
            return self.answer(
                "unknown",
                StatusCode::NOT_FOUND,
                format!("no workload or rebuild follows {image}"),
            );
        }
        if known.is_empty() {
            return self.answer(
                "ignored",
                StatusCode::ACCEPTED,
                "no push concerns freshen".into(),
            );
        }
        for push in &known {
            debug!(image = %push.image, "push notified");
            let _ = self.pushes.send((*push).clone());
        }
        self.answer(
            "accepted",
            StatusCode::ACCEPTED,
            format!("{} push(es) accepted", known.len()),
        )
    }
}

/// What a push concerns: the Deployments whose template names the tag or
/// whose recorded base is it, and the Rebuilds waiting for it.
struct Dependants {
    deployments: Vec<ObjectRef<crate::runtime::cached::CachedWorkload>>,
    rebuilds: Vec<ObjectRef<freshen_api::Rebuild>>,
}

impl Dependants {
    fn is_empty(&self) -> bool {
        self.deployments.is_empty() && self.rebuilds.is_empty()
    }
}

fn dependants(ctx: &Context, push: &Push) -> Dependants {
    let names_it = |image: &str| {
        ImageReference::parse(image).is_ok_and(|i| i.without_digest().to_string() == push.image)
    };
    let bases: BTreeSet<(String, String, Kind)> = ctx
        .records
        .based_on(&push.image)
        .into_iter()
        .map(|k| (k.namespace, k.name, k.kind))
        .collect();
    let deployments = ctx
        .workloads
        .all()
        .filter(|d| {
            let key = (d.namespace().unwrap_or_default(), d.name_any(), d.kind);
            bases.contains(&key)
                || crate::workload::assess::template_containers(d.as_ref())
                    .iter()
                    .any(|c| names_it(&c.image))
        })
        .map(|d| d.reference())
        .collect();
    let rebuilds = ctx
        .rebuilds
        .state()
        .iter()
        .filter(|r| !r.progress().phase.is_terminal() && r.spec.image == push.image)
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect();
    Dependants {
        deployments,
        rebuilds,
    }
}

/// Collects pushes for `window` after the first, then, once per tag, drops
/// the tag from the cache and wakes what depends on it.
async fn debounce(mut rx: mpsc::UnboundedReceiver<Push>, window: Duration, ctx: Arc<Context>) {
    while let Some(first) = rx.recv().await {
        let mut batch = BTreeSet::from([first]);
        let until = Instant::now() + window;
        while let Ok(Some(push)) = tokio::time::timeout_at(until, rx.recv()).await {
            batch.insert(push);
        }
        for push in batch {
            if let Ok(image) = ImageReference::parse(&push.image) {
                ctx.registry.forget_tag(&image);
            }
            let found = dependants(&ctx, &push);
            info!(
                image = %push.image,
                workloads = found.deployments.len(),
                rebuilds = found.rebuilds.len(),
                "push notified; measuring its dependants now"
            );
            for d in found.deployments {
                ctx.workload_trigger.send(d);
            }
            for r in found.rebuilds {
                let _ = ctx.rebuild_trigger.unbounded_send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pushes(body: Value) -> Result<Vec<String>, BadBody> {
        parse(&serde_json::to_vec(&body).unwrap_or_default())
            .map(|ps| ps.into_iter().map(|p| p.image).collect())
    }

    #[test]
    fn a_distribution_envelope_reports_manifest_pushes_by_tag_only() {
        let manifest = "application/vnd.oci.image.manifest.v1+json";
        let body = json!({"events": [
            {"action": "push", "target": {"mediaType": manifest, "repository": "shop/app",
             "tag": "1", "digest": "sha256:aa"}, "request": {"host": "127.0.0.1:15000"}},
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "repository": "shop/app", "digest": "sha256:bb"}, "request": {"host": "127.0.0.1:15000"}},
            {"action": "push", "target": {"mediaType": manifest, "repository": "shop/app",
             "digest": "sha256:cc"}, "request": {"host": "127.0.0.1:15000"}},
            {"action": "pull", "target": {"mediaType": manifest, "repository": "shop/app",
             "tag": "1"}, "request": {"host": "127.0.0.1:15000"}},
            {"action": "push", "target": {"mediaType": manifest, "repository": "library/debian",
             "tag": "12", "url": "https://registry-1.docker.io/v2/library/debian/manifests/sha256:dd"}}
        ]});
        assert_eq!(
            pushes(body),
            Ok(vec![
                "127.0.0.1:15000/shop/app:1".to_owned(),
                // Docker Hub's API host is Docker Hub.
                "docker.io/library/debian:12".to_owned(),
            ])
        );
    }

    #[test]
    fn harbor_and_generic_bodies_name_their_image() {
        let harbor = json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [
            {"digest": "sha256:aa", "tag": "v2",
             "resource_url": "harbor.example.com/library/nginx:v2"}]}});
        assert_eq!(
            pushes(harbor),
            Ok(vec!["harbor.example.com/library/nginx:v2".to_owned()])
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let generic = json!({"image": format!("reg.example/app:1@{digest}"), "digest": digest});
        assert_eq!(pushes(generic), Ok(vec!["reg.example/app:1".to_owned()]));
        assert!(pushes(json!({"image": format!("reg.example/app@{digest}")})).is_err());
        assert!(pushes(json!({"hello": 1})).is_err());
        assert!(parse(b"{not json").is_err());
    }

    #[test]
    fn only_the_token_or_a_timely_signature_is_authorized() {
        let config = NotifyConfig {
            addr: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            token: Some("s3cret".into()),
            signing_key: Some(b"key".to_vec()),
            debounce: Duration::ZERO,
        };
        let with = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                if let Ok(v) = v.parse() {
                    h.insert(*k, v);
                }
            }
            h
        };
        let body = br#"{"image":"r/a:1"}"#;
        assert!(authorized(
            &config,
            &with(&[("authorization", "Bearer s3cret".into())]),
            body,
            0
        ));
        assert!(!authorized(
            &config,
            &with(&[("authorization", "Bearer s3cre".into())]),
            body,
            0
        ));
        assert!(!authorized(&config, &HeaderMap::new(), body, 0));
        let signed = |ts: i64, body: &[u8]| {
            with(&[
                ("webhook-id", "m1".into()),
                ("webhook-timestamp", ts.to_string()),
                (
                    "webhook-signature",
                    signature(b"key", "m1", &ts.to_string(), body),
                ),
            ])
        };
        assert!(authorized(&config, &signed(1000, body), body, 1000));
        // Another body, or too old a timestamp: refused.
        assert!(!authorized(&config, &signed(1000, b"{}"), body, 1000));
        assert!(!authorized(&config, &signed(1000, body), body, 1000 + 301));
    }

    #[test]
    fn the_headers_decide_before_any_body_is_read() {
        let config = NotifyConfig {
            addr: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            token: Some("s3cret".into()),
            signing_key: Some(b"key".to_vec()),
            debounce: Duration::ZERO,
        };
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                if let Ok(v) = v.parse() {
                    h.insert(*k, v);
                }
            }
            h
        };
        assert_eq!(
            gate(&config, &with(&[("authorization", "Bearer s3cret")]), 0),
            Gate::Token
        );
        assert_eq!(
            gate(&config, &with(&[("authorization", "Bearer nope")]), 0),
            Gate::Refused
        );
        assert_eq!(gate(&config, &HeaderMap::new(), 0), Gate::Refused);
        let signed = |ts: &str| {
            with(&[
                ("webhook-id", "m1"),
                ("webhook-timestamp", ts),
                ("webhook-signature", "v1,anything"),
            ])
        };
        // A timely signature's headers let the body be read (and checked).
        assert_eq!(
            gate(&config, &signed("1000"), 1000),
            Gate::Signed("m1".into())
        );
        assert_eq!(gate(&config, &signed("1000"), 1400), Gate::Refused);
        assert_eq!(gate(&config, &signed("soon"), 1000), Gate::Refused);
        let unsigned = NotifyConfig {
            signing_key: None,
            ..config
        };
        assert_eq!(gate(&unsigned, &signed("1000"), 1000), Gate::Refused);
    }

    #[test]
    fn a_signed_delivery_is_acted_on_once() {
        let mut replays = Replays::default();
        assert_eq!(replays.first("m1", 1000), Some(true));
        assert_eq!(replays.first("m1", 1200), Some(false));
        assert_eq!(replays.first("m2", 1200), Some(true));
        // Past twice the tolerance the id may come again: its timestamp
        // would be refused by then anyway.
        assert_eq!(replays.first("m1", 1000 + 601), Some(true));
        for i in 0..MAX_REPLAYS {
            let _ = replays.first(&format!("x{i}"), 2000);
        }
        assert_eq!(
            replays.first("full", 2000),
            None,
            "full: refuse, not forget"
        );
        assert_eq!(
            replays.first("later", 4000),
            Some(true),
            "expired ids make room"
        );
    }

    #[test]
    fn each_source_gets_a_burst_then_its_rate() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let allowed = (0..100).filter(|_| limiter.allow(a, now)).count();
        assert_eq!(allowed, 40);
        // Another source is not held back by the first.
        assert!(limiter.allow([10, 0, 0, 2].into(), now));
        // A second later, twenty more.
        let later = now + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| limiter.allow(a, later)).count(), 20);
    }
}
