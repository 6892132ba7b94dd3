//! The harness's Gitea (`e2e/harness/up.sh` starts it): the forge the
//! pull-request tests open, merge and close pull requests on, through its
//! real API, as a reviewer would.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Where the harness's Gitea is, and its admin user's token.
#[derive(Debug, Clone)]
pub struct GiteaServer {
    /// Base URL (`http://host:port`).
    pub url: String,
    /// The user that owns the tests' repositories.
    pub user: String,
    /// The file holding the user's API token.
    pub token_file: PathBuf,
    /// Its SSH server's `host:port`.
    pub ssh_addr: String,
}

impl GiteaServer {
    /// The user's API token.
    pub fn token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?
            .trim()
            .to_owned())
    }

    /// Where Gitea keeps `repo`'s bare repository on disk (read with
    /// `git`, as the tests read the plain git server's).
    pub fn bare(&self, repo: &str) -> PathBuf {
        self.token_file
            .parent()
            .map(|d| d.join("repos"))
            .unwrap_or_default()
            .join(self.user.to_lowercase())
            .join(format!("{}.git", repo.to_lowercase()))
    }

    /// The clone URL of `repo` (anonymous reads).
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{}/{repo}.git", self.url, self.user)
    }

    /// The SSH URL of `repo`.
    pub fn ssh_url(&self, repo: &str) -> String {
        format!("ssh://git@{}/{}/{repo}.git", self.ssh_addr, self.user)
    }

    /// Registers `public_key` (OpenSSH format) as one of the user's keys.
    pub async fn add_key(&self, title: &str, public_key: &str) -> anyhow::Result<()> {
        self.api(
            "POST",
            "/user/keys",
            Some(json!({"title": title, "key": public_key.trim()})),
        )
        .await?;
        Ok(())
    }

    /// The clone URL of `repo` with the user's credentials (pushes).
    pub fn push_url(&self, repo: &str) -> anyhow::Result<String> {
        let (scheme, host) = self.url.split_once("://").context("a URL")?;
        Ok(format!(
            "{scheme}://{}:{}@{host}/{}/{repo}.git",
            self.user,
            self.token()?,
            self.user
        ))
    }

    /// Calls the API: `method` on `/api/v1{path}` with `body`; the answer.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1{path}", self.url);
        let mut request = http
            .request(method.parse()?, &url)
            .header("authorization", format!("token {}", self.token()?));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {url}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{method} {url}: {text}"))?
        })
    }

    /// Creates repository `repo` (deleting one left by an earlier run) and
    /// label `freshen`.
    pub async fn create_repo(&self, repo: &str) -> anyhow::Result<()> {
        let _ = self
            .api("DELETE", &format!("/repos/{}/{repo}", self.user), None)
            .await;
        self.api(
            "POST",
            "/user/repos",
            Some(json!({"name": repo, "default_branch": "main", "private": false})),
        )
        .await?;
        self.api(
            "POST",
            &format!("/repos/{}/{repo}/labels", self.user),
            Some(json!({"name": "freshen", "color": "#2b7489"})),
        )
        .await?;
        Ok(())
    }

    /// The pull requests of `repo` in `state` (open, closed, all).
    pub async fn pulls(&self, repo: &str, state: &str) -> anyhow::Result<Vec<Value>> {
        let v = self
            .api(
                "GET",
                &format!("/repos/{}/{repo}/pulls?state={state}", self.user),
                None,
            )
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Merges pull request `number` of `repo`, as a reviewer would.
    pub async fn merge(&self, repo: &str, number: u64) -> anyhow::Result<()> {
        self.api(
            "POST",
            &format!("/repos/{}/{repo}/pulls/{number}/merge", self.user),
            Some(json!({"Do": "merge"})),
        )
        .await?;
        Ok(())
    }

    /// Closes pull request `number` of `repo` without merging it.
    pub async fn close(&self, repo: &str, number: u64) -> anyhow::Result<()> {
        self.api(
            "PATCH",
            &format!("/repos/{}/{repo}/pulls/{number}", self.user),
            Some(json!({"state": "closed"})),
        )
        .await?;
        Ok(())
    }
}
