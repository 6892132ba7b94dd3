//! Runs the real `freshen` binary against the harness, as a child process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{Harness, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, repo_root, wait_for};

/// A running operator; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Operator {
    child: Child,
    /// Where its logs go.
    pub log: PathBuf,
    /// Base URL of its HTTP endpoints.
    pub url: String,
}

/// The operator binary: `$FRESHEN_BIN`, else `target/debug/freshen`.
pub fn binary() -> PathBuf {
    std::env::var_os("FRESHEN_BIN")
        .map_or_else(|| repo_root().join("target/debug/freshen"), PathBuf::from)
}

/// Runs `freshen report` against the harness (its registry spoken to over
/// plain HTTP) with `args`, and returns what it printed and its status.
pub fn report(harness: &Harness, args: &[&str]) -> anyhow::Result<std::process::Output> {
    report_as(harness, &harness.kubeconfig, args)
}

/// [`report`] with another kubeconfig, e.g. one of a user without rights.
pub fn report_as(
    harness: &Harness,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    Command::new(binary())
        .arg("report")
        .args(["--plain-http-registry", &harness.registry])
        .args(["--registry-allow", crate::HARNESS_REGISTRY_HOST])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .with_context(|| format!("running {} report", binary().display()))
}

impl Operator {
    /// Starts `freshen run` on the harness' operator address (the one its
    /// Prometheus scrapes) with `extra` arguments, and waits until /readyz
    /// says its caches are synced.
    pub async fn start(harness: &Harness, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(harness, &binary(), extra).await
    }

    /// [`Operator::start`] of another build of freshen (a benchmark's
    /// baseline).
    pub async fn start_with(
        harness: &Harness,
        bin: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let operator = Self::launch(harness, bin, &harness.operator_metrics_addr, extra).await?;
        operator.await_leading().await?;
        Ok(operator)
    }

    /// Waits until the operator leads (it holds the Lease, or election is
    /// off) and its caches are synced. A standby's /readyz is ready at once:
    /// it watches nothing.
    pub async fn await_leading(&self) -> anyhow::Result<()> {
        wait_for(
            "the operator to lead, with its caches synced",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async move {
                // freshen_leader is set after the watches are registered:
                // read it before /readyz.
                if self.metric("freshen_leader").await? != 1.0 {
                    return Ok(None);
                }
                Ok(self.ready().await?.then_some(()))
            },
        )
        .await
        .with_context(|| format!("operator log: {}", self.log.display()))
    }

    /// `/readyz`'s status and text.
    pub async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let response = reqwest::get(format!("{}/readyz", self.url)).await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Whether `/readyz` answers 2xx.
    pub async fn ready(&self) -> anyhow::Result<bool> {
        let status = reqwest::get(format!("{}/readyz", self.url)).await?.status();
        Ok(status.is_success())
    }

    /// Starts `freshen run` with its endpoints on `addr` (a second operator
    /// beside the one Prometheus scrapes) and waits until it serves /readyz,
    /// as leader or standby.
    pub async fn start_at(harness: &Harness, addr: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(harness, &binary(), addr, extra).await
    }

    async fn launch(
        harness: &Harness,
        bin: &std::path::Path,
        addr: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it with `cargo build -p freshen` (make e2e does)",
                bin.display()
            );
        }
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
        let log = logs.join(format!("operator-{stamp}.log"));
        let out = std::fs::File::create(&log)?;
        // The operator's own identity, the chart's ServiceAccount with the
        // chart's RBAC (e2e/harness/up.sh installs charts/freshen): a verb
        // the chart lacks fails a test, and the chart's admission policies
        // see the operator as they would in a cluster.
        let kubeconfig = harness.kubeconfig_for(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)?;
        let child = Command::new(bin)
            .args(["run", "--metrics-addr", addr])
            .args(["--plain-http-registry", &harness.registry])
            .args(["--registry-allow", crate::HARNESS_REGISTRY_HOST])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "info,freshen_controller=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let operator = Self {
            child,
            log,
            url: format!("http://{addr}"),
        };
        wait_for(
            "the operator's /readyz",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async { Ok(operator.ready().await?.then_some(())) },
        )
        .await
        .with_context(|| format!("operator log: {}", operator.log.display()))?;
        Ok(operator)
    }

    /// What the operator has logged so far.
    pub fn log_text(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))
    }

    /// Kills the operator with SIGKILL, as a node failure or OOM kill would:
    /// no shutdown code runs.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Whether the operator process is still running (it has not exited,
    /// for instance on a panic).
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Whether the process has exited (a zombie not yet reaped counts),
    /// e.g. a leader that lost its Lease; from `/proc` (Linux).
    pub fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    }

    /// Waits until at least `n` containers in `namespace` have an image-age
    /// series (the workloads' first assessment), scraping every `every`;
    /// fails at once, with its log, if the operator exits.
    pub async fn await_assessed(
        &self,
        namespace: &str,
        n: usize,
        limit: Duration,
        every: Duration,
    ) -> anyhow::Result<()> {
        let series = r#"freshen_image_age_seconds{container="app","#;
        self.await_series(series, namespace, n, limit, every).await
    }

    /// Waits until at least `n` series starting `family` (e.g.
    /// `freshen_workload_config_errors{`: one per recorded workload) are in
    /// `namespace`, scraping every `every`; fails at once, with its log, if
    /// the operator exits.
    pub async fn await_series(
        &self,
        family: &str,
        namespace: &str,
        n: usize,
        limit: Duration,
        every: Duration,
    ) -> anyhow::Result<()> {
        let namespace = format!(r#"namespace="{namespace}""#);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            anyhow::ensure!(
                !self.exited(),
                "the operator exited before {n} series of {family}; log: {}",
                self.log.display()
            );
            let found = self
                .scrape()
                .await
                .map(|text| {
                    text.lines()
                        .filter(|l| l.starts_with(family) && l.contains(&namespace))
                        .count()
                })
                .unwrap_or(0);
            if found >= n {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?}: {found} of {n} series of {family}"
            );
            tokio::time::sleep(every).await;
        }
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The operator's resident memory, from `/proc/<pid>/status` (Linux).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// The value of the first sample of `series` (a name, or a name with
    /// labels, as the exposition writes it) in the operator's `/metrics`; 0
    /// when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(metric_value(&self.scrape().await?, series).unwrap_or(0.0))
    }

    /// Waits until `series` reads `want`. A counter is bumped just after the
    /// status write a test observes, so a single scrape could come first.
    pub async fn await_metric(&self, series: &str, want: f64) -> anyhow::Result<()> {
        wait_for(
            &format!("{series} to read {want}"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async move {
                let got = self.metric(series).await?;
                if got == want {
                    Ok(Some(()))
                } else {
                    bail!("{series} reads {got}")
                }
            },
        )
        .await
    }

    /// `/metrics`'s status and text, asked with `token` as a bearer token
    /// (none: no `Authorization` header).
    pub async fn scrape_as(&self, token: Option<&str>) -> anyhow::Result<(u16, String)> {
        let mut request = reqwest::Client::new().get(format!("{}/metrics", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The operator's own `/metrics` text.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

/// The mean duration of the deployment controller's reconciles so far,
/// from its histogram in an exposition `text`; zero before the first.
pub fn mean_reconcile(text: &str) -> Duration {
    let metric = |name: &str| metric_value(text, name).unwrap_or(0.0);
    let count = metric(r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#);
    if count > 0.0 {
        Duration::from_secs_f64(
            metric(r#"freshen_reconcile_duration_seconds_sum{controller="deployment"}"#) / count,
        )
    } else {
        Duration::ZERO
    }
}

/// The value of the first sample of `series` in an exposition `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

impl Drop for Operator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
