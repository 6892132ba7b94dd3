//! A GitOps fleet repository for one test: a bare repository on the
//! harness's git server, a working clone the test commits to as a human
//! would (with the `git` CLI), and the Flux GitRepository and Kustomization
//! that apply its directory to the test's namespace through the real
//! source-controller and kustomize-controller.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::peers::custom;
use crate::wait_for;

/// One test's repository and the Flux objects that apply it.
pub struct Fleet {
    /// The repository's URL on the git server.
    pub url: String,
    /// The bare repository on disk (hooks go here).
    pub bare: PathBuf,
    /// The test's working clone.
    pub work: PathBuf,
    /// The directory Flux applies, relative to the root.
    pub path: String,
    namespace: String,
    client: Client,
}

/// Runs `git` in `dir` as the human of these tests; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=A Human",
            "-c",
            "user.email=human@example.com",
        ])
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `files` (name relative to `dir`, text), making their
/// directories; a name may climb out of `dir` (`../../charts/...`).
fn write_files(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files {
        let file = dir.join(name);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, text)?;
    }
    Ok(())
}

impl Fleet {
    /// [`Fleet::repository`], and a Flux GitRepository and Kustomization
    /// (every 2s) applying its directory to `namespace`.
    pub async fn new(
        harness: &crate::Harness,
        client: &Client,
        namespace: &str,
        files: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::reconciled_every(harness, client, namespace, files, "2s").await
    }

    /// [`Fleet::new`] with Flux reconciling every `interval` (e.g. `10s`).
    pub async fn reconciled_every(
        harness: &crate::Harness,
        client: &Client,
        namespace: &str,
        files: &[(&str, String)],
        interval: &str,
    ) -> anyhow::Result<Self> {
        let fleet = Self::repository(harness, client, namespace, files)?;
        fleet.apply_flux(interval).await?;
        Ok(fleet)
    }

    /// A repository named after `namespace` whose `apps/<namespace>` holds
    /// `files` (name, text) on branch `main`; nothing applies it.
    pub fn repository(
        harness: &crate::Harness,
        client: &Client,
        namespace: &str,
        files: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let bare = harness.git_root.join(format!("{namespace}.git"));
        let work = std::env::temp_dir().join(format!("freshen-e2e-fleet-{namespace}"));
        let _ = std::fs::remove_dir_all(&bare);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&bare)?;
        git(&bare, &["init", "--bare", "--initial-branch=main"])?;
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "--initial-branch=main"])?;
        let path = format!("apps/{namespace}");
        write_files(&work.join(&path), files)?;
        git(&work, &["add", "."])?;
        git(&work, &["commit", "-q", "-m", "the fleet"])?;
        let url = format!("{}/{namespace}.git", harness.git_url);
        git(&work, &["remote", "add", "origin", &url])?;
        git(&work, &["push", "-q", "origin", "main"])?;
        Ok(Self {
            url,
            bare,
            work,
            path,
            namespace: namespace.to_owned(),
            client: client.clone(),
        })
    }

    /// [`Fleet::new`] on the harness's Gitea: a repository of its user
    /// named after `namespace`, applied by Flux every 2s.
    pub async fn on_gitea(
        harness: &crate::Harness,
        client: &Client,
        namespace: &str,
        files: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let gitea = &harness.gitea;
        gitea.create_repo(namespace).await?;
        let work = std::env::temp_dir().join(format!("freshen-e2e-fleet-{namespace}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "--initial-branch=main"])?;
        let path = format!("apps/{namespace}");
        write_files(&work.join(&path), files)?;
        git(&work, &["add", "."])?;
        git(&work, &["commit", "-q", "-m", "the fleet"])?;
        git(&work, &["push", "-q", &gitea.push_url(namespace)?, "main"])?;
        let fleet = Self {
            url: gitea.clone_url(namespace),
            bare: gitea.bare(namespace),
            work,
            path,
            namespace: namespace.to_owned(),
            client: client.clone(),
        };
        fleet.apply_flux("2s").await?;
        Ok(fleet)
    }

    fn api(&self, group: &str, kind: &str) -> Api<DynamicObject> {
        custom(&self.client, &self.namespace, group, "v1", kind)
    }

    async fn apply_flux(&self, interval: &str) -> anyhow::Result<()> {
        let repo: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "fleet"},
            "spec": {"url": self.url, "interval": interval, "ref": {"branch": "main"}},
        }))?;
        self.api("source.toolkit.fluxcd.io", "GitRepository")
            .create(&PostParams::default(), &repo)
            .await?;
        let kustomization: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "apps"},
            "spec": {
                "interval": interval, "retryInterval": interval, "prune": true,
                "path": format!("./{}", self.path),
                "targetNamespace": self.namespace,
                "sourceRef": {"kind": "GitRepository", "name": "fleet"},
            },
        }))?;
        self.api("kustomize.toolkit.fluxcd.io", "Kustomization")
            .create(&PostParams::default(), &kustomization)
            .await?;
        Ok(())
    }

    /// The branch's head commit on the server.
    pub fn head(&self) -> anyhow::Result<String> {
        Ok(git(&self.bare, &["rev-parse", "main"])?.trim().to_owned())
    }

    /// `git log --format=<format>` of the branch on the server, newest first.
    pub fn log(&self, format: &str) -> anyhow::Result<Vec<String>> {
        Ok(
            git(&self.bare, &["log", &format!("--format={format}"), "main"])?
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The lines a commit removed and added (`-`/`+`), without the diff's
    /// headers.
    pub fn changed_lines(&self, commit: &str) -> anyhow::Result<Vec<String>> {
        Ok(
            git(&self.bare, &["show", "--format=", "--unified=0", commit])?
                .lines()
                .filter(|l| {
                    (l.starts_with('-') || l.starts_with('+'))
                        && !l.starts_with("---")
                        && !l.starts_with("+++")
                })
                .map(str::to_owned)
                .collect(),
        )
    }

    /// A file of the branch's head on the server.
    pub fn show(&self, file: &str) -> anyhow::Result<String> {
        git(&self.bare, &["show", &format!("main:{file}")])
    }

    /// Waits until the Kustomization has applied the branch's head.
    pub async fn await_applied(&self, what: &str) -> anyhow::Result<String> {
        let api = self.api("kustomize.toolkit.fluxcd.io", "Kustomization");
        wait_for(
            &format!("Flux applied {what}"),
            Duration::from_secs(90),
            Duration::from_millis(200),
            || {
                let api = api.clone();
                async move {
                    let head = self.head()?;
                    let k = serde_json::to_value(api.get("apps").await?)?;
                    let applied = k
                        .pointer("/status/lastAppliedRevision")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    if applied.ends_with(&head) {
                        Ok(Some(applied))
                    } else {
                        bail!("applied {applied:?}, head {head}")
                    }
                }
            },
        )
        .await
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
