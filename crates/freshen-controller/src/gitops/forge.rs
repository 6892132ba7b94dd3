//! Talks to a forge's API for `gitops: PullRequest`: opens a pull request
//! (or finds the one an interrupted attempt opened), labels it, and reads
//! its state. The calls are built and their answers read by
//! [`freshen_core::gitops::forge`]; this sends them.
//!
//! The API's host is the repository's (which the policy allowed), reached
//! through [`Egress`], as webhooks are: the registries' rules, no
//! redirects, so the token goes nowhere else.

use crate::rebuild::webhook::{Egress, Refused, without_url};
use freshen_core::gitops::forge::{self, Call, Method, Proposal, PullRequest, Repo};

/// The largest answer read.
const MAX_ANSWER: usize = 2 << 20;

/// Sends forge API calls.
#[derive(Clone)]
pub struct ForgeClient {
    egress: Egress,
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
    /// A client over `egress` (the registries' rules).
    pub fn new(egress: Egress) -> Self {
        Self { egress }
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
        let (url, authority) = self.egress.admit(&call.url).await.map_err(|e| match e {
            Refused::Unusable(why) | Refused::Unreachable(why) => {
                ForgeError::Unreachable(format!("{}: {why}", call.url))
            }
        })?;
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
            Method::Put => reqwest::Method::PUT,
        };
        let (name, value) = forge::auth_header(repo.provider, token);
        let mut request = self
            .egress
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
