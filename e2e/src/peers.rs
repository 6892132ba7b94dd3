//! Other projects' controllers the tests and benchmarks run beside freshen,
//! built from their Go modules by `e2e/harness/build-tools.sh` (cached by
//! version, like the control plane): their binaries, their CRDs (from the
//! Go module cache), and a process that dies with the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use kube::Api;
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use crate::{Harness, repo_root};

/// The peers' binaries, from the harness' tool cache (built by
/// `build-tools.sh crane descheduler flagger argo_rollouts`).
pub struct Tools {
    /// crane.
    pub crane: PathBuf,
    /// descheduler.
    pub descheduler: PathBuf,
    /// Flagger.
    pub flagger: PathBuf,
    /// Argo Rollouts' controller.
    pub argo_rollouts: PathBuf,
    /// Versions, for the report.
    versions: Vec<(String, String)>,
    /// The Go module cache, where the peers' CRDs are.
    pub modcache: PathBuf,
}

impl Tools {
    /// The binaries `versions.env` names, in the tool cache.
    pub fn find() -> anyhow::Result<Self> {
        let env = std::fs::read_to_string(repo_root().join("e2e/harness/versions.env"))?;
        let version = |key: &str| -> anyhow::Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("{key} in versions.env"))
        };
        let cache = std::env::var_os("FRESHEN_E2E_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("freshen-e2e"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/freshen-e2e"))
            })
            .context("no cache directory (HOME unset)")?;
        let bin = |tool: &str, key: &str| -> anyhow::Result<PathBuf> {
            Ok(cache.join("bin").join(format!("{tool}-{}", version(key)?)))
        };
        let go = Command::new("go").args(["env", "GOMODCACHE"]).output()?;
        let versions = [
            "CRANE_VERSION",
            "DESCHEDULER_VERSION",
            "ARGO_ROLLOUTS_VERSION",
            "FLAGGER_VERSION",
        ]
        .iter()
        .map(|k| Ok(((*k).to_owned(), version(k)?)))
        .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            crane: bin("crane", "CRANE_VERSION")?,
            descheduler: bin("descheduler", "DESCHEDULER_VERSION")?,
            flagger: bin("flagger", "FLAGGER_VERSION")?,
            argo_rollouts: bin("argo-rollouts", "ARGO_ROLLOUTS_VERSION")?,
            versions,
            modcache: PathBuf::from(String::from_utf8(go.stdout)?.trim()),
        })
    }

    /// The version `versions.env` gives `key`.
    pub fn version(&self, key: &str) -> &str {
        self.versions
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?", |(_, v)| v.as_str())
    }
}

/// A peer controller process; killed when dropped.
pub struct Peer {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Peer {
    /// Starts `command`, its output to a log under `target/e2e-logs`.
    pub fn start(name: &str, mut command: Command) -> anyhow::Result<Self> {
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}-{}.log", Utc::now().format("%Y%m%dT%H%M%S")));
        let out = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { child, log })
    }

    /// Its resident memory.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmRSS:")? / 1024.0)
    }

    /// A memory figure of `/proc/<pid>/status`, e.g. `VmHWM:` (peak RSS).
    pub fn status_kib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{field} of pid {}", self.child.id()))
    }

    /// Fails when it has exited, naming its log.
    pub fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("exited ({status}); log: {}", self.log.display());
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespaced custom resource API.
pub fn custom(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Applies `files` (CRDs) with the harness' kubectl, server-side.
pub fn apply_files(harness: &Harness, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let path = file.to_string_lossy();
        let out = harness.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", &path],
            None,
        )?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A CRD just created has no conditions yet, which `kubectl wait`
        // takes for an error: ask again.
        let wait = [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &path,
        ];
        let mut waited = harness.kubectl(&wait, None)?;
        for _ in 0..50 {
            if waited.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            waited = harness.kubectl(&wait, None)?;
        }
        anyhow::ensure!(
            waited.status.success(),
            "waiting for {path}: {}",
            String::from_utf8_lossy(&waited.stderr)
        );
    }
    Ok(())
}

/// Applies one object (YAML) in `ns`.
pub fn apply_yaml(harness: &Harness, ns: &str, yaml: &str) -> anyhow::Result<()> {
    let out = harness.kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(yaml.as_bytes()),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Installs Argo Rollouts' CRDs and starts its controller, watching only
/// `namespace` (metrics on `port`, health on `port + 1`).
pub fn argo_rollouts(harness: &Harness, namespace: &str, port: u16) -> anyhow::Result<Peer> {
    let tools = Tools::find()?;
    let crds = tools.modcache.join(format!(
        "github.com/argoproj/argo-rollouts@{}/manifests/crds",
        tools.version("ARGO_ROLLOUTS_VERSION")
    ));
    let files: Vec<PathBuf> = std::fs::read_dir(&crds)
        .with_context(|| {
            format!(
                "{} (build-tools.sh argo_rollouts downloads it)",
                crds.display()
            )
        })?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().ends_with("-crd.yaml"))
        })
        .collect();
    apply_files(harness, &files)?;
    let mut command = Command::new(&tools.argo_rollouts);
    command
        .arg("--kubeconfig")
        .arg(&harness.kubeconfig)
        .args(["--namespaced", "--namespace", namespace])
        .args(["--metricsport", &port.to_string()])
        .args(["--healthzPort", &(port + 1).to_string()])
        .arg("--leader-elect=false");
    Peer::start("argo-rollouts", command)
}
