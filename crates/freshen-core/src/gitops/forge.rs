//! Pull requests on a forge (`gitops: PullRequest`): the API calls that
//! open one, read its state and find an open one again, for GitHub, GitLab
//! and Gitea/Forgejo, and the reading of their answers. Pure: the
//! controller sends the calls ([`Call`]) and hands the bodies back.
//!
//! Everything here is input from a forge or a tenant. The API's address is
//! derived from the repository's URL (which the policy's allow-list
//! admitted), never taken from elsewhere, so the token goes to the host
//! that serves the repository (GitHub's `api.github.com` for
//! `github.com`); answers are parsed into a few bounded fields, and an
//! answer that does not parse is an error naming the provider.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The largest pull request body sent (GitHub's limit is 65,536
/// characters).
pub const MAX_BODY: usize = 60_000;
/// Labels put on a pull request, at most.
pub const MAX_LABELS: usize = 10;

/// A forge's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Provider {
    /// GitHub or GitHub Enterprise Server (`/api/v3`).
    GitHub,
    /// GitLab (`/api/v4`).
    GitLab,
    /// Gitea or Forgejo (`/api/v1`).
    Gitea,
}

impl Provider {
    /// The provider's name, as a policy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "GitHub",
            Self::GitLab => "GitLab",
            Self::Gitea => "Gitea",
        }
    }

    /// What the forge calls a pull request.
    pub fn noun(self) -> &'static str {
        match self {
            Self::GitLab => "merge request",
            Self::GitHub | Self::Gitea => "pull request",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a change goes through a pull request, and on which forge
/// (`None`: a commit to the branch). A revert goes the way its promotion
/// went, whatever the policy says now (a reviewer who merged the one sees
/// the other); a promotion as the policy says (`policy`: its provider when
/// it says `gitops: PullRequest`).
pub fn proposed_through(
    revert: bool,
    promotion_proposed_on: Option<Provider>,
    policy: Option<Provider>,
) -> Option<Provider> {
    if revert {
        promotion_proposed_on
    } else {
        policy
    }
}

/// A repository on a forge: its API root and its path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The provider.
    pub provider: Provider,
    /// The API's root, e.g. `https://api.github.com`.
    pub api: String,
    /// The owner (user, organisation or GitLab group path).
    pub owner: String,
    /// The repository's name.
    pub name: String,
}

/// Why a forge call could not be built or its answer read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ForgeError(pub String);

/// Where `provider`'s API for the repository at `url` is. Only HTTP(S)
/// URLs name a forge's API host; an SSH URL's host is taken too (`ssh://`
/// or `git@host:owner/repo`), as the API is served by the same host.
pub fn locate(provider: Provider, url: &str) -> Result<Repo, ForgeError> {
    let bad = |why: &str| {
        ForgeError(format!(
            "{url}: {why}; expected https://<host>/<owner>/<repository>[.git]"
        ))
    };
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("ssh://") {
        ("https", r.split_once('@').map_or(r, |(_, h)| h))
    } else if let Some((_, r)) = url.split_once('@').filter(|(u, _)| !u.contains('/')) {
        ("https", r)
    } else {
        return Err(bad("not an HTTP(S) or SSH URL"));
    };
    let http = url.starts_with("http");
    // An SSH URL's port (`host:2222/...`) or path (`host:owner/...`) follows
    // a colon; an HTTP URL's port is the API's too.
    let (host, path) = if http {
        rest.split_once('/')
    } else {
        rest.split_once([':', '/'])
    }
    .ok_or_else(|| bad("no repository path"))?;
    let path = if http {
        path
    } else {
        path.trim_start_matches(|c: char| c.is_ascii_digit())
    };
    let path = path.trim_matches('/').trim_end_matches(".git");
    let (owner, name) = path.rsplit_once('/').ok_or_else(|| bad("no owner"))?;
    let clean = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !s.starts_with('.')
    };
    if host.is_empty() || !clean(name) || !owner.split('/').all(clean) {
        return Err(bad("an owner or repository name with other characters"));
    }
    if provider != Provider::GitLab && owner.contains('/') {
        return Err(bad("a nested owner (only GitLab has groups within groups)"));
    }
    let api = match provider {
        Provider::GitHub if host == "github.com" => "https://api.github.com".to_owned(),
        Provider::GitHub => format!("{scheme}://{host}/api/v3"),
        Provider::GitLab => format!("{scheme}://{host}/api/v4"),
        Provider::Gitea => format!("{scheme}://{host}/api/v1"),
    };
    Ok(Repo {
        provider,
        api,
        owner: owner.to_owned(),
        name: name.to_owned(),
    })
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PATCH.
    Patch,
    /// PUT.
    Put,
}

/// One API call to make (the controller adds the token, [`auth_header`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// The full URL.
    pub url: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

/// The header that carries `token` to `provider`.
pub fn auth_header(provider: Provider, token: &str) -> (&'static str, String) {
    match provider {
        Provider::GitHub => ("authorization", format!("Bearer {token}")),
        Provider::GitLab => ("private-token", token.to_owned()),
        Provider::Gitea => ("authorization", format!("token {token}")),
    }
}

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The branch with freshen's commit.
    pub head: String,
    /// The branch to merge into (the one the reconciler follows).
    pub base: String,
    /// Its title.
    pub title: String,
    /// Its body (Markdown).
    pub body: String,
    /// Labels to put on it.
    pub labels: Vec<String>,
}

impl Repo {
    fn repo_url(&self) -> String {
        match self.provider {
            Provider::GitHub => format!("{}/repos/{}/{}", self.api, self.owner, self.name),
            Provider::Gitea => format!("{}/repos/{}/{}", self.api, self.owner, self.name),
            Provider::GitLab => format!(
                "{}/projects/{}%2F{}",
                self.api,
                self.owner.replace('/', "%2F"),
                self.name
            ),
        }
    }

    /// The call that opens `proposal`.
    pub fn open(&self, proposal: &Proposal) -> Call {
        let body = truncate(&proposal.body, MAX_BODY);
        let labels = labels(&proposal.labels);
        match self.provider {
            Provider::GitHub | Provider::Gitea => Call {
                method: Method::Post,
                url: format!("{}/pulls", self.repo_url()),
                body: Some(json!({
                    // The owner's name in front: Gitea reads a bare
                    // `freshen/x` as a repository path.
                    "head": format!("{}:{}", self.owner, proposal.head),
                    "base": proposal.base,
                    "title": proposal.title,
                    "body": body,
                })),
            },
            Provider::GitLab => Call {
                method: Method::Post,
                url: format!("{}/merge_requests", self.repo_url()),
                body: Some(json!({
                    "source_branch": proposal.head,
                    "target_branch": proposal.base,
                    "title": proposal.title,
                    "description": body,
                    "labels": labels.join(","),
                    "remove_source_branch": true,
                })),
            },
        }
    }

    /// The call that labels pull request `number` after it was opened
    /// (GitHub and Gitea take labels by name there; GitLab took them when
    /// it was opened): `None` when there is nothing to do.
    pub fn label(&self, number: u64, wanted: &[String]) -> Option<Call> {
        let labels = labels(wanted);
        if labels.is_empty() || self.provider == Provider::GitLab {
            return None;
        }
        Some(Call {
            method: Method::Post,
            url: format!("{}/issues/{number}/labels", self.repo_url()),
            body: Some(json!({ "labels": labels })),
        })
    }

    /// The call that reads pull request `number`.
    pub fn get(&self, number: u64) -> Call {
        let path = match self.provider {
            Provider::GitLab => "merge_requests",
            Provider::GitHub | Provider::Gitea => "pulls",
        };
        Call {
            method: Method::Get,
            url: format!("{}/{path}/{number}", self.repo_url()),
            body: None,
        }
    }

    /// The call that lists the open pull requests from `head` into `base`
    /// (to find the one an earlier attempt opened).
    pub fn find_open(&self, head: &str, base: &str) -> Call {
        let url = match self.provider {
            Provider::GitHub => format!(
                "{}/pulls?state=open&head={}:{}&base={}",
                self.repo_url(),
                query(&self.owner),
                query(head),
                query(base)
            ),
            Provider::Gitea => format!(
                "{}/pulls?state=open&base_branch={}&limit=50",
                self.repo_url(),
                query(base)
            ),
            Provider::GitLab => format!(
                "{}/merge_requests?state=opened&source_branch={}&target_branch={}",
                self.repo_url(),
                query(head),
                query(base)
            ),
        };
        Call {
            method: Method::Get,
            url,
            body: None,
        }
    }

    /// The call that closes pull request `number` (freshen's own, when
    /// the Refresh it belongs to ended without it).
    pub fn close(&self, number: u64) -> Call {
        match self.provider {
            Provider::GitHub | Provider::Gitea => Call {
                method: Method::Patch,
                url: format!("{}/pulls/{number}", self.repo_url()),
                body: Some(json!({"state": "closed"})),
            },
            Provider::GitLab => Call {
                method: Method::Put,
                url: format!("{}/merge_requests/{number}", self.repo_url()),
                body: Some(json!({"state_event": "close"})),
            },
        }
    }
}

/// A pull request's state, as freshen follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PullState {
    /// Open, waiting for a reviewer.
    Open,
    /// Merged into its base branch.
    Merged,
    /// Closed without being merged.
    Closed,
}

/// A pull request, as its forge answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Its number (GitLab's `iid`).
    pub number: u64,
    /// Its web page.
    pub url: String,
    /// Its state.
    pub state: PullState,
    /// When it was merged.
    pub merged_at: Option<DateTime<Utc>>,
    /// Its head branch.
    pub head: String,
}

/// The merge time to record for an answer read at `seen`: the forge's,
/// but never later than when it was read (a merge "in the future" would
/// hold the reconciler's deadline off).
pub fn seen_merged_at(
    reported: Option<DateTime<Utc>>,
    seen: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    reported.map(|m| m.min(seen))
}

/// Reads one pull request from `provider`'s answer.
pub fn parse(provider: Provider, body: &[u8]) -> Result<PullRequest, ForgeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ForgeError(format!(
            "{provider} answered with something other than JSON: {e}"
        ))
    })?;
    read(provider, &value)
}

/// Reads the list [`Repo::find_open`] asked for: the open pull request
/// whose head is `head`, if any.
pub fn parse_open(
    provider: Provider,
    body: &[u8],
    head: &str,
) -> Result<Option<PullRequest>, ForgeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ForgeError(format!(
            "{provider} answered with something other than JSON: {e}"
        ))
    })?;
    let list = value
        .as_array()
        .ok_or_else(|| ForgeError(format!("{provider} answered a list with a non-list")))?;
    for item in list.iter().take(100) {
        let pr = read(provider, item)?;
        if pr.head == head && pr.state == PullState::Open {
            return Ok(Some(pr));
        }
    }
    Ok(None)
}

fn read(provider: Provider, v: &Value) -> Result<PullRequest, ForgeError> {
    let missing =
        |field: &str| ForgeError(format!("{provider}'s {} has no {field}", provider.noun()));
    let (number, url, head) = match provider {
        Provider::GitLab => (
            v["iid"].as_u64().ok_or_else(|| missing("iid"))?,
            v["web_url"].as_str().ok_or_else(|| missing("web_url"))?,
            v["source_branch"].as_str().unwrap_or_default(),
        ),
        Provider::GitHub | Provider::Gitea => (
            v["number"].as_u64().ok_or_else(|| missing("number"))?,
            v["html_url"].as_str().ok_or_else(|| missing("html_url"))?,
            v["head"]["ref"].as_str().unwrap_or_default(),
        ),
    };
    let merged_at = v["merged_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let state = v["state"].as_str().ok_or_else(|| missing("state"))?;
    let state = match (provider, state) {
        (Provider::GitLab, "merged") => PullState::Merged,
        (Provider::GitLab, "opened" | "locked") => PullState::Open,
        (Provider::GitLab, "closed") => PullState::Closed,
        (_, "open") => PullState::Open,
        (_, "closed") if merged_at.is_some() || v["merged"].as_bool() == Some(true) => {
            PullState::Merged
        }
        (_, "closed") => PullState::Closed,
        (_, other) => {
            return Err(ForgeError(format!(
                "{provider}'s {} has state {:?}, which freshen does not know",
                provider.noun(),
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    Ok(PullRequest {
        number,
        url: url.chars().take(512).collect(),
        state,
        merged_at,
        head: head.chars().take(255).collect(),
    })
}

/// Why a policy's labels cannot be used, if so.
pub fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("expected at most {MAX_LABELS} labels"));
    }
    for l in labels {
        if l.is_empty()
            || l.chars().count() > 50
            || l.contains(',')
            || l.chars().any(char::is_control)
        {
            return Err(format!(
                "label {l:?}: expected 1 to 50 characters, without commas or control characters"
            ));
        }
    }
    Ok(())
}

/// The labels sent: the first [`MAX_LABELS`] that [`check_labels`] would
/// take.
fn labels(wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|l| check_labels(std::slice::from_ref(*l)).is_ok())
        .take(MAX_LABELS)
        .cloned()
        .collect()
}

/// `s` percent-encoded for a query string.
fn query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `max` bytes of `s`, cut at a character boundary, with a note
/// when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n\n_(cut at {max} bytes)_\n", &s[..end])
}

/// One workload's section of a pull request body: what changes and what
/// the canary saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Section<'a> {
    /// `namespace/name` and kind of the workload.
    pub workload: &'a str,
    /// The container.
    pub container: &'a str,
    /// The image it runs.
    pub from: &'a str,
    /// The proven image.
    pub to: &'a str,
    /// Why the refresh was made (e.g. `BaseMoved`).
    pub reason: &'a str,
    /// The Refresh's name.
    pub refresh: &'a str,
    /// The canary's checks, oldest first.
    pub checks: &'a [Row<'a>],
}

/// One canary check, as a pull request shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    /// When it was made.
    pub time: DateTime<Utc>,
    /// Ready pods.
    pub ready: u32,
    /// Pods wanted.
    pub desired: u32,
    /// Container restarts.
    pub restarts: u32,
    /// The metric's value, if any.
    pub metric: Option<f64>,
    /// Pass, Fail or Wait.
    pub verdict: &'a str,
    /// Why, in a few words.
    pub message: &'a str,
}

/// The Markdown section for one workload: a heading, the change, and the
/// canary's analysis as a table.
pub fn describe(s: &Section<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "### {} `{}`\n\n- from `{}`\n- to `{}`\n- why: {} (Refresh `{}`)\n\n",
        s.workload, s.container, s.from, s.to, s.reason, s.refresh
    );
    let canary = s.checks;
    if canary.is_empty() {
        out.push_str("No canary checks were recorded.\n");
        return out;
    }
    out.push_str("| check | time | ready | restarts | metric | verdict | note |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (i, c) in canary.iter().enumerate() {
        let metric = c.metric.map_or_else(|| "-".to_owned(), |m| format!("{m}"));
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {} | {} | {} | {} |",
            i + 1,
            c.time.format("%H:%M:%S"),
            c.ready,
            c.desired,
            c.restarts,
            metric,
            c.verdict,
            c.message.replace('|', "\\|").replace('\n', " ")
        );
    }
    out
}

/// The first paragraph of a promotion's pull request for `n` workloads:
/// what merging and closing it do.
pub fn promotion_intro(n: usize) -> String {
    let one = n == 1;
    format!(
        "freshen proved {} in {} in the cluster. Merging lets the reconciler roll {} out; \
         freshen follows the rollout and, if it fails, reverts it with another pull request. \
         Closing this without merging rejects {}: freshen will not propose {} again.",
        if one {
            "this image".to_owned()
        } else {
            format!("these {n} images")
        },
        if one { "a canary" } else { "canaries" },
        if one { "it" } else { "them" },
        if one { "the digest" } else { "the digests" },
        if one { "it" } else { "them" },
    )
}

/// The first paragraph of a revert's pull request: the promotion it undoes
/// and why.
pub fn revert_intro(promoted: &str, why: &str) -> String {
    format!(
        "{promoted} was merged and its rollout failed: {why}. This puts the image it replaced \
         back; the failed digest is rejected and will not be proposed again."
    )
}

/// The whole body: `intro`, each workload's section, and a footer.
pub fn body(intro: &str, sections: &[String]) -> String {
    let mut out = format!("{intro}\n\n");
    for s in sections {
        out.push_str(s);
        out.push('\n');
    }
    out.push_str("<sub>Opened by freshen.</sub>\n");
    truncate(&out, MAX_BODY)
}

#[cfg(test)]
mod tests;
