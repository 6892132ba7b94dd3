//! Talks to a forge's API for `gitops: PullRequest`: opens a pull request
//! (or finds the one an interrupted attempt opened), labels it, and reads
//! its state. The calls are built and their answers read by
//! [`freshen_core::gitops::forge`]; this sends them.
//!
//! The API's host is the repository's (which the policy allowed), reached
//! under the same rules as registries and webhooks (`--registry-allow`,
//! `--registry-deny`, plain HTTP only to `--plain-http-registry` hosts),
//! without redirects, so the token goes nowhere else.

use std::time::Duration;

use freshen_core::gitops::forge::{self, Call, Method, Proposal, PullRequest, Repo};
use freshen_registry::reach::{self, Reach};

use crate::rebuild::webhook::without_url;

/// The longest a forge call may take.
const TIMEOUT: Duration = crate::rebuild::webhook::TRY_TIMEOUT;
/// The largest answer read.
const MAX_ANSWER: usize = 2 << 20;

/// Sends forge API calls.
#[derive(Clone)]
pub struct ForgeClient {
    http: reqwest::Client,
    reach: Reach,
    plain_http: Vec<String>,
}

/// Why a forge call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgeError {
    /// Not sent: the host may not be reached, or the URL is not usable.
    #[error("{0}")]
    Unreachable(String),
    /// Sent; the forge refused it (the status and its message).
    #[error("{provider} answered {status}: {message}")]
    Refused {
        /// The provider.
        provider: forge::Provider,
        /// The HTTP status.
        status: u16,
        /// The forge's message, cut short.
        message: String,
    },
    /// The answer could not be read.
    #[error("{0}")]
    Answer(String),
}

impl ForgeClient {
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
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            reach,
            plain_http,
        })
    }

    /// Opens `proposal` on `repo` and labels it; the pull request an
    /// earlier attempt opened from the same branch when the forge says one
    /// exists.
    pub async fn open(
        &self,
        repo: &Repo,
        token: &str,
        proposal: &Proposal,
    ) -> Result<PullRequest, ForgeError> {
        let opened = match self.send(repo, token, &repo.open(proposal)).await {
            Ok(body) => forge::parse(repo.provider, &body).map_err(|e| ForgeError::Answer(e.0))?,
            // GitHub 422, GitLab and Gitea 409: one is open from this branch.
            Err(ForgeError::Refused { status, .. }) if status == 409 || status == 422 => {
                let body = self
                    .send(repo, token, &repo.find_open(&proposal.head, &proposal.base))
                    .await?;
                forge::parse_open(repo.provider, &body, &proposal.head)
                    .map_err(|e| ForgeError::Answer(e.0))?
                    .ok_or_else(|| ForgeError::Refused {
                        provider: repo.provider,
                        status,
                        message: format!(
                            "no open {} from branch {} was found either",
                            repo.provider.noun(),
                            proposal.head
                        ),
                    })?
            }
            Err(e) => return Err(e),
        };
        if let Some(call) = repo.label(opened.number, &proposal.labels)
            && let Err(e) = self.send(repo, token, &call).await
        {
            // The pull request stands without its labels.
            tracing::warn!(number = opened.number, error = %e, "could not label the pull request");
        }
        Ok(opened)
    }

    /// Pull request `number` as its forge answers now.
    pub async fn get(
        &self,
        repo: &Repo,
        token: &str,
        number: u64,
    ) -> Result<PullRequest, ForgeError> {
        let body = self.send(repo, token, &repo.get(number)).await?;
        forge::parse(repo.provider, &body).map_err(|e| ForgeError::Answer(e.0))
    }

    /// Closes pull request `number` without merging it.
    pub async fn close(&self, repo: &Repo, token: &str, number: u64) -> Result<(), ForgeError> {
        self.send(repo, token, &repo.close(number))
            .await
            .map(|_| ())
    }

    /// Sends `call` with `token`; the answer's body when it succeeded.
    async fn send(&self, repo: &Repo, token: &str, call: &Call) -> Result<Vec<u8>, ForgeError> {
        let url = reqwest::Url::parse(&call.url)
            .map_err(|e| ForgeError::Unreachable(format!("bad API URL {}: {e}", call.url)))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.plain_http.contains(&authority) => {}
            scheme => {
                return Err(ForgeError::Unreachable(format!(
                    "{scheme}:// to {authority} is not allowed: use an https repository URL, or \
                     list the host with --plain-http-registry"
                )));
            }
        }
        reach::check(&self.reach, &host)
            .await
            .map_err(ForgeError::Unreachable)?;
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
            Method::Put => reqwest::Method::PUT,
        };
        let (name, value) = forge::auth_header(repo.provider, token);
        let mut request = self
            .http
            .request(method, url)
            .header(name, value)
            .header("accept", "application/json");
        if repo.provider == forge::Provider::GitHub {
            request = request.header("x-github-api-version", "2022-11-28");
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| ForgeError::Unreachable(format!("{authority}: {}", without_url(&e))))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ForgeError::Answer(format!("{authority}: {}", without_url(&e))))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(ForgeError::Answer(format!(
                    "{authority} answered more than {MAX_ANSWER} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(ForgeError::Refused {
            provider: repo.provider,
            status: status.as_u16(),
            message,
        })
    }
}
