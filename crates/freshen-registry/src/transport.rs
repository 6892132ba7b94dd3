//! freshen's own HTTP for the three registry calls it makes: a tag's digest
//! (`HEAD` a manifest), a manifest, a blob.
//!
//! Registry answers are input, and a credential is a secret, so this layer
//! (not a general-purpose client) decides:
//!
//! - every body is read as it streams and refused past its limit (a
//!   manifest 4 MiB, an image config its descriptor's size, an error or
//!   token answer 64 KiB), and content fetched by digest is verified;
//! - a credential goes only to its own registry, and for the token flow to
//!   a realm over https (or over http only on the very host of a registry
//!   listed as plain HTTP), which must itself be a host freshen may reach;
//! - redirects: at most 5, never from https to http, never to a host freshen
//!   may not reach, and (reqwest's rule) without the Authorization header
//!   when they leave the host;
//! - a 429 or 503's `Retry-After` is kept with the error, for the backoff.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::Digest as _;
use tokio::time::Instant;

use crate::auth::Credential;
use crate::reach::{self, Reach};

/// Largest error or token answer read.
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;
/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 5;
/// Bearer tokens kept at most (per registry, repository and credential).
const MAX_TOKENS: usize = 1024;
/// A token without `expires_in` is trusted this long (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A registry call that failed, with what the registry said when it
/// answered.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The registry answered an error status.
    #[error(
        "{status} ({}) from {url}{}",
        phrase(*status),
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Status {
        /// The HTTP status.
        status: u16,
        /// The URL asked.
        url: String,
        /// The registry's own error message, if it gave one.
        detail: Option<String>,
        /// How long it asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// No answer: connection, TLS, a refused redirect.
    #[error("request to {url} failed: {source}")]
    Request {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer past its size limit.
    #[error("the {what} from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL asked.
        url: String,
        /// What it was (manifest, image config, ...).
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Content fetched by digest that has another digest.
    #[error("{url} answered content with digest {actual}, not the {expected} asked for")]
    DigestMismatch {
        /// The URL asked.
        url: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// The registry's token service is not one a credential may go to.
    #[error("token service {realm} refused: {why}")]
    Realm {
        /// The realm the registry named.
        realm: String,
        /// Why it is refused.
        why: String,
    },
    /// The token service answered no usable token.
    #[error("token service {realm}: {why}")]
    Token {
        /// The realm.
        realm: String,
        /// What went wrong.
        why: String,
    },
    /// The whole call took longer than its deadline.
    #[error("no complete answer from {registry} within {}s", limit.as_secs_f64())]
    Deadline {
        /// The registry.
        registry: String,
        /// The deadline.
        limit: Duration,
    },
}

/// What a status means to someone reading a report row.
fn phrase(status: u16) -> &'static str {
    match status {
        401 => "not authorized: no credentials, or the wrong ones, for this registry",
        403 => "forbidden: the credentials may not pull this repository",
        404 => "not found",
        405 => "method not allowed",
        429 => "rate-limited",
        500..=599 => "the registry failed",
        _ => "unexpected answer",
    }
}

impl HttpError {
    /// The HTTP status the registry answered, if it answered one; token
    /// and realm problems count as 401.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Realm { .. } | Self::Token { .. } => Some(401),
            Self::Request { source, .. } => source.status().map(|s| s.as_u16()),
            Self::TooLarge { .. } | Self::DigestMismatch { .. } | Self::Deadline { .. } => None,
        }
    }

    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

type TokenKey = (String, String, Option<[u8; 16]>);

/// The HTTP side of [`crate::RegistryClient`].
pub struct Transport {
    http: reqwest::Client,
    plain_http: Vec<String>,
    reach: Reach,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

/// What a call is for: the registry, the repository (the token scope) and
/// who asks.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `host[:port]` as the image names it (after mirroring).
    pub registry: &'a str,
    /// The repository path.
    pub repository: &'a str,
    /// The pull credential for this very registry, if any.
    pub credential: Option<&'a Credential>,
}

impl Transport {
    /// A transport speaking plain HTTP to `plain_http` registries only,
    /// trusting `extra_roots` (PEM) besides the system's, with connect and
    /// per-read `timeout`.
    pub fn new(
        plain_http: Vec<String>,
        reach: Reach,
        timeout: Option<Duration>,
        extra_roots: &[Vec<u8>],
    ) -> Result<Self, reqwest::Error> {
        let redirect_reach = reach.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let downgrade = attempt
                .previous()
                .last()
                .is_some_and(|p| p.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                return attempt.error("refused a redirect from https to http");
            }
            match reach::judge_redirect(&redirect_reach, attempt.url().host()) {
                Err(why) => attempt.error(format!("refused a redirect: {why}")),
                Ok(()) => attempt.follow(),
            }
        });
        let certificates = extra_roots
            .iter()
            .map(|pem| reqwest::Certificate::from_pem(pem))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = reqwest::Client::builder()
            .redirect(policy)
            .dns_resolver(reach::Resolver::new(reach.clone()))
            .user_agent(concat!("freshen/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(certificates);
        if let Some(timeout) = timeout {
            builder = builder.connect_timeout(timeout).read_timeout(timeout);
        }
        Ok(Self {
            http: builder.build()?,
            plain_http,
            reach,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The digest a manifest reference (a tag) names now: `HEAD`, and its
    /// `Docker-Content-Digest`; a registry that refuses HEAD or answers it
    /// without one is asked with GET (a 429 or 5xx is not asked again).
    pub async fn manifest_digest(
        &self,
        call: Call<'_>,
        reference: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<String, HttpError> {
        let url = self.url(call, "manifests", reference);
        let response = self.send(Method::HEAD, &url, accept, call).await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            // Overloaded: no second request now.
            return Err(checked(response, &url)
                .await
                .err()
                .unwrap_or(HttpError::Status {
                    status: status.as_u16(),
                    url,
                    detail: None,
                    retry_after: None,
                }));
        }
        if status.is_success()
            && let Some(digest) = digest_header(response.headers())
        {
            return Ok(digest);
        }
        // A registry that refuses HEAD, or answers it without a digest.
        let response = checked(self.send(Method::GET, &url, accept, call).await?, &url).await?;
        let header = digest_header(response.headers());
        let body = read_capped(response, limit, "manifest", &url).await?;
        Ok(header.unwrap_or_else(|| sha256_of(&body)))
    }

    /// A manifest by digest, verified against it, at most `limit` bytes.
    pub async fn manifest(
        &self,
        call: Call<'_>,
        digest: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Vec<u8>, HttpError> {
        let url = self.url(call, "manifests", digest);
        let response = checked(self.send(Method::GET, &url, accept, call).await?, &url).await?;
        let body = read_capped(response, limit, "manifest", &url).await?;
        verify(&url, digest, &body)?;
        Ok(body)
    }

    /// A manifest (or a referrers index) that may not exist: `kind` is
    /// `manifests` (a tag: nothing to verify it against) or `referrers` (a
    /// digest's referrers, OCI 1.1); `None` on 404, at most `limit` bytes.
    pub async fn optional(
        &self,
        call: Call<'_>,
        kind: &str,
        reference: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        let url = self.url(call, kind, reference);
        let response = self.send(Method::GET, &url, accept, call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = checked(response, &url).await?;
        read_capped(response, limit, "manifest", &url)
            .await
            .map(Some)
    }

    /// A blob by digest, verified against it, at most `limit` bytes (its
    /// descriptor's size).
    pub async fn blob(
        &self,
        call: Call<'_>,
        digest: &str,
        limit: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, HttpError> {
        let url = self.url(call, "blobs", digest);
        let response = checked(self.send(Method::GET, &url, &["*/*"], call).await?, &url).await?;
        let body = read_capped(response, limit, what, &url).await?;
        verify(&url, digest, &body)?;
        Ok(body)
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.plain_http.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        }
    }

    fn url(&self, call: Call<'_>, kind: &str, reference: &str) -> String {
        // Docker Hub's API is not at the host image names use.
        let host = match call.registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        format!(
            "{}://{host}/v2/{}/{kind}/{reference}",
            self.scheme(call.registry),
            call.repository
        )
    }

    /// Sends a request, answering one authentication challenge: Basic with
    /// the call's credential (to this registry only), or Bearer with a
    /// token from the realm the registry names (if that realm is allowed).
    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &[&str],
        call: Call<'_>,
    ) -> Result<Response, HttpError> {
        let key: TokenKey = (
            call.registry.to_owned(),
            format!("repository:{}:pull", call.repository),
            crate::asker(call.credential),
        );
        let mut auth = self.cached_token(&key).map(Auth::Bearer);
        for attempt in 0..2 {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header(header::ACCEPT, accept.join(", "));
            request = match (&auth, call.credential) {
                (Some(Auth::Bearer(token)), _) => request.bearer_auth(token),
                (Some(Auth::Basic), Some(c)) => request.basic_auth(&c.username, Some(&c.password)),
                _ => request,
            };
            let response = request.send().await.map_err(|source| HttpError::Request {
                url: url.to_owned(),
                source,
            })?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(parse_challenge);
            auth = match challenge {
                Some(Challenge::Basic) if call.credential.is_some() => Some(Auth::Basic),
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let scope = scope.unwrap_or_else(|| key.1.clone());
                    let (token, expires) =
                        self.token(call, &realm, service.as_deref(), &scope).await?;
                    self.store_token(key.clone(), token.clone(), expires);
                    Some(Auth::Bearer(token))
                }
                _ => return Ok(response),
            };
        }
        // The loop returns on its second attempt.
        Err(HttpError::Token {
            realm: url.to_owned(),
            why: "authentication did not complete".into(),
        })
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn store_token(&self, key: TokenKey, token: String, until: Instant) {
        if let Ok(mut tokens) = self.tokens.lock() {
            if tokens.len() >= MAX_TOKENS {
                let now = Instant::now();
                tokens.retain(|_, (_, until)| *until > now);
                if tokens.len() >= MAX_TOKENS {
                    tokens.clear();
                }
            }
            tokens.insert(key, (token, until));
        }
    }

    /// A token from `realm` for `scope`, and until when to use it. The
    /// credential goes there only over https, or over http to the very host
    /// of a registry listed as plain HTTP; the realm must be a host freshen
    /// may reach.
    async fn token(
        &self,
        call: Call<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Instant), HttpError> {
        let refuse = |why: String| HttpError::Realm {
            realm: realm.chars().take(256).collect(),
            why,
        };
        let url = Url::parse(realm).map_err(|e| refuse(format!("not a URL: {e}")))?;
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(refuse("it names no host".into())),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.scheme(call.registry) == "http" && authority == call.registry => {}
            "http" => {
                return Err(refuse(
                    "plain http on another host than the plain-HTTP registry itself; credentials \
                     go to token services only over https"
                        .into(),
                ));
            }
            other => return Err(refuse(format!("scheme {other} is not https"))),
        }
        reach::check(&self.reach, reach::host_of(&authority))
            .await
            .map_err(refuse)?;
        let mut url = url;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("scope", scope);
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut request = self.http.get(url.clone());
        if let Some(c) = call.credential {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let url_text = url.to_string();
        let response = request.send().await.map_err(|source| HttpError::Request {
            url: url_text.clone(),
            source,
        })?;
        let response = checked(response, &url_text).await?;
        let body = read_capped(response, MAX_SMALL_BODY_BYTES, "token answer", &url_text).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| HttpError::Token {
            realm: url_text.clone(),
            why: format!("not a token answer: {e}"),
        })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| HttpError::Token {
                realm: url_text,
                why: "no token in the answer".into(),
            })?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(Duration::from_secs(3600));
        // Renewed a little before the registry would refuse it.
        let until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(5));
        Ok((token, until))
    }
}

enum Auth {
    Basic,
    Bearer(String),
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An authentication challenge (`WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        /// Where tokens come from.
        realm: String,
        /// The service parameter, if given.
        service: Option<String>,
        /// The scope asked for, if given.
        scope: Option<String>,
    },
    /// Anything else.
    Other,
}

/// Parses a `WWW-Authenticate` value.
pub fn parse_challenge(value: &str) -> Challenge {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Other;
    }
    let mut found: HashMap<String, String> = HashMap::new();
    let mut rest = params;
    while let Some((name, after)) = rest.split_once('=') {
        let name = name
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, n)) => (v, n),
                None => (quoted, ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim(), n),
                None => (after.trim(), ""),
            }
        };
        found.insert(name, value.to_owned());
        rest = next;
    }
    match found.remove("realm") {
        Some(realm) => Challenge::Bearer {
            realm,
            service: found.remove("service"),
            scope: found.remove("scope"),
        },
        None => Challenge::Other,
    }
}

/// The response if it is a success; else the error with the registry's
/// message (read up to 64 KiB) and its `Retry-After`.
async fn checked(response: Response, url: &str) -> Result<Response, HttpError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let detail = read_capped(response, MAX_SMALL_BODY_BYTES, "error answer", url)
        .await
        .ok()
        .and_then(|body| error_detail(&body));
    Err(HttpError::Status {
        status: status.as_u16(),
        url: url.to_owned(),
        detail,
        retry_after,
    })
}

/// `Retry-After` as seconds or an HTTP date, relative to now.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// The first message of an OCI error envelope, bounded.
fn error_detail(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let first = envelope.errors.into_iter().next()?;
    let text = match (first.code.is_empty(), first.message.is_empty()) {
        (false, false) => format!("{} ({})", first.message, first.code),
        (true, false) => first.message,
        (false, true) => first.code,
        (true, true) => return None,
    };
    Some(text.chars().take(256).collect())
}

fn digest_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// Reads a body as it streams, refusing it once it passes `limit` bytes
/// (whatever Content-Length claims).
async fn read_capped(
    mut response: Response,
    limit: usize,
    what: &'static str,
    url: &str,
) -> Result<Vec<u8>, HttpError> {
    let too_large = || HttpError::TooLarge {
        url: url.to_owned(),
        what,
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| HttpError::Request {
            url: url.to_owned(),
            source,
        })?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn sha256_of(body: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn sha512_of(body: &[u8]) -> String {
    let hex: String = sha2::Sha512::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha512:{hex}")
}

/// Checks content fetched by `digest` against it.
fn verify(url: &str, digest: &str, body: &[u8]) -> Result<(), HttpError> {
    let actual = if digest.starts_with("sha512:") {
        sha512_of(body)
    } else {
        sha256_of(body)
    };
    if actual == digest {
        Ok(())
    } else {
        Err(HttpError::DigestMismatch {
            url: url.to_owned(),
            expected: digest.to_owned(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Challenge::Basic
        );
        assert_eq!(parse_challenge("Negotiate"), Challenge::Other);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), Challenge::Other);
        assert_eq!(
            parse_challenge("bearer realm=https://r.example/t, service=s"),
            Challenge::Bearer {
                realm: "https://r.example/t".into(),
                service: Some("s".into()),
                scope: None,
            }
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        let later = (chrono::Utc::now() + chrono::TimeDelta::seconds(90)).to_rfc2822();
        let wait = parse_retry_after(&later).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_envelopes_give_their_first_message() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some("manifest unknown (MANIFEST_UNKNOWN)")
        );
        assert_eq!(error_detail(b"<html>"), None);
    }

    #[test]
    fn tokens_kept_stay_bounded() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = match Transport::new(vec![], Reach::default(), None, &[]) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let later = Instant::now() + Duration::from_secs(600);
        for i in 0..100_000u64 {
            transport.store_token(
                (
                    format!("h{i}"),
                    "s".into(),
                    Some(u128::from(i).to_be_bytes()),
                ),
                "t".into(),
                later,
            );
        }
        let kept = transport
            .tokens
            .lock()
            .map(|t| t.len())
            .unwrap_or(usize::MAX);
        assert!(kept <= MAX_TOKENS, "{kept}");
    }

    #[test]
    fn content_is_verified_against_its_digest() {
        let body = b"{}";
        let digest = sha256_of(body);
        assert!(verify("u", &digest, body).is_ok());
        assert!(matches!(
            verify("u", &digest, b"{ }"),
            Err(HttpError::DigestMismatch { .. })
        ));
        assert!(verify("u", &sha512_of(body), body).is_ok());
    }
}
