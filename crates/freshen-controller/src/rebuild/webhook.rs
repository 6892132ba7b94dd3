//! Webhook pipeline runs: one signed `POST` per run, per Standard Webhooks
//! (<https://www.standardwebhooks.com>), optionally with GitHub's
//! `X-Hub-Signature-256`.
//!
//! The receiver is tenant input: it is reached only where the registry
//! reach rules allow (no loopback, link-local or metadata addresses unless
//! listed), only over https (TLS verified) or over http to a host listed as
//! plain HTTP, never through a redirect, with a deadline per try and a
//! bounded number of tries. The secret never leaves the process except as
//! an HMAC, and is never logged.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use freshen_registry::reach::{self, Reach};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tracing::{debug, warn};

/// One delivery: where, what, signed with what.
pub struct Delivery {
    /// The receiver's URL.
    pub url: String,
    /// `webhook-id`: the run's name, the same for every retry of it.
    pub id: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The signing key (already decoded, see [`signing_key`]).
    pub key: Vec<u8>,
    /// Also send `X-Hub-Signature-256`.
    pub hub_signature: bool,
    /// More headers, from Secrets.
    pub headers: Vec<(String, String)>,
}

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// Nothing was sent: the pipeline's own URL is unusable (not a URL, a
    /// scheme not allowed). Its author wrote it, so saying why leaks
    /// nothing.
    Unusable(String),
    /// The receiver was not reached or did not accept the delivery: its
    /// answer, a TLS or connection error, or a reach refusal (which names
    /// what the host resolves to). For the log only: a Rebuild's status
    /// records [`Undelivered::public`], so a pipeline cannot be used to
    /// probe what lies behind a URL.
    Failed(String),
}

impl Undelivered {
    /// What the Rebuild's status may say.
    pub fn public(&self, id: &str) -> String {
        match self {
            Self::Unusable(why) => why.clone(),
            Self::Failed(_) => format!(
                "not delivered (webhook-id {id}); the receiver's answer or the error is in \
                 freshen's log"
            ),
        }
    }

    /// The whole reason, for the log.
    pub fn detail(&self) -> &str {
        match self {
            Self::Unusable(why) | Self::Failed(why) => why,
        }
    }
}

/// How many tries one delivery gets.
const TRIES: u32 = 3;
/// The deadline of one try.
pub(crate) const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before the second try; doubled for each later one.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// An HTTP client for URLs a tenant names (webhook receivers, forges'
/// APIs), reached as registries are: the system's CAs and
/// `--registry-ca-file`, only hosts `--registry-allow`/`--registry-deny`
/// admit, plain HTTP only to `--plain-http-registry` hosts, no redirects.
#[derive(Clone)]
pub struct Egress {
    /// The client, its resolver judging every address.
    pub http: reqwest::Client,
    reach: Reach,
    plain_http: Vec<String>,
}

/// Why [`Egress::admit`] refused a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a URL, or plain HTTP to a host not listed.
    Unusable(String),
    /// The host may not be reached.
    Unreachable(String),
}

impl Egress {
    /// A client trusting the system's CAs and `extra_roots` (PEM), reaching
    /// only hosts `reach` admits, over http only to `plain_http` hosts.
    pub fn new(
        extra_roots: &[Vec<u8>],
        reach: Reach,
        plain_http: Vec<String>,
    ) -> Result<Self, reqwest::Error> {
        let certificates = extra_roots
            .iter()
            .map(|pem| reqwest::Certificate::from_pem(pem))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(reach::Resolver::new(reach.clone()))
            .user_agent(concat!("freshen/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(certificates)
            .connect_timeout(TRY_TIMEOUT)
            .timeout(TRY_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            reach,
            plain_http,
        })
    }

    /// `url` parsed, with its `host[:port]`, when it may be sent to: https,
    /// or http to a listed host, and a host the reach rules admit.
    pub async fn admit(&self, url: &str) -> Result<(reqwest::Url, String), Refused> {
        let url =
            reqwest::Url::parse(url).map_err(|e| Refused::Unusable(format!("bad URL: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.plain_http.contains(&authority) => {}
            scheme => {
                return Err(Refused::Unusable(format!(
                    "{scheme}:// to {authority} is not allowed: use https, or list the host with \
                     --plain-http-registry"
                )));
            }
        }
        reach::check(&self.reach, &host)
            .await
            .map_err(Refused::Unreachable)?;
        Ok((url, authority))
    }
}

/// Delivers webhooks.
pub struct WebhookClient {
    egress: Egress,
}

impl WebhookClient {
    /// A client over `egress`.
    pub fn new(egress: Egress) -> Self {
        Self { egress }
    }

    /// Delivers `delivery`: up to [`TRIES`] tries, retrying a connection
    /// failure, a timeout, a 429 or a 5xx after a growing wait; a 2xx is
    /// delivered, anything else refused. The error says why, without the
    /// secret; only [`Undelivered::public`] may be shown to the pipeline's
    /// author.
    pub async fn deliver(&self, delivery: &Delivery, now_unix: i64) -> Result<(), Undelivered> {
        let (url, authority) = self
            .egress
            .admit(&delivery.url)
            .await
            .map_err(|e| match e {
                Refused::Unusable(why) => Undelivered::Unusable(why),
                Refused::Unreachable(why) => Undelivered::Failed(why),
            })?;
        let timestamp = now_unix.to_string();
        let signature = signature(&delivery.key, &delivery.id, &timestamp, &delivery.body);
        let mut wait = RETRY_WAIT;
        let mut last = String::new();
        for attempt in 1..=TRIES {
            let mut request = self
                .egress
                .http
                .post(url.clone())
                .header("content-type", "application/json")
                .header("webhook-id", &delivery.id)
                .header("webhook-timestamp", &timestamp)
                .header("webhook-signature", &signature)
                .body(delivery.body.clone());
            if delivery.hub_signature {
                request = request.header(
                    "x-hub-signature-256",
                    hub_signature(&delivery.key, &delivery.body),
                );
            }
            for (name, value) in &delivery.headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    debug!(id = %delivery.id, status = %response.status(), "webhook delivered");
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    last = format!("{authority} answered {status}");
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(Undelivered::Failed(last));
                    }
                }
                Err(e) => {
                    last = format!("{authority}: {}", without_url(&e));
                }
            }
            if attempt < TRIES {
                warn!(id = %delivery.id, error = %last, "webhook not delivered; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        Err(Undelivered::Failed(format!("{last} ({TRIES} tries)")))
    }
}

/// A reqwest error without the URL (which may carry a query a receiver
/// considers secret).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", TRY_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        let mut text = "the request failed".to_owned();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// The signing key of a secret: the base64 after `whsec_` (Standard
/// Webhooks), else the text as it is (a GitHub webhook secret).
pub fn signing_key(secret: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(secret);
    let text = text.trim();
    text.strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&[]).unwrap_or_else(|_| unreachable!())
    })
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac(key);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// GitHub's `sha256=<hex HMAC-SHA256 of the body>`.
pub fn hub_signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = mac(key);
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn signatures_match_the_standard_webhooks_reference() {
        let key = signing_key(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody",
    /// payload "Hello, World!".
    #[test]
    fn hub_signatures_match_githubs_example() {
        assert_eq!(
            hub_signature(
                &signing_key(b"It's a Secret to Everybody"),
                b"Hello, World!"
            ),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
