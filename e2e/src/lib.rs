//! The e2e harness as the tests and the demo see it.
//!
//! `make e2e-up` starts a real control plane (kwok), registry and Prometheus
//! and writes an env file; [`Harness::load`] reads it. The helpers here push
//! real OCI images, run the real operator binary, and wait on conditions
//! with a bound, saying what they last saw when the bound runs out.

pub mod bench;
pub mod bench_peers;
pub mod bench_refresh;
pub mod bench_scale;
pub mod bench_velocity;
pub mod control_plane;
pub mod cosign;
pub mod demo;
pub mod faults;
pub mod fleet;
pub mod gitea;
pub mod image;
pub mod operator;
pub mod peers;
pub mod prometheus;
pub mod scene;
pub mod ship;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// The harness' private registry and how to get in.
#[derive(Debug, Clone)]
pub struct PrivateRegistry {
    /// `host:port` (HTTPS, loopback).
    pub addr: String,
    /// htpasswd user.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The PEM file of the CA that signed its certificate.
    pub ca_file: PathBuf,
}

/// Addresses of the running harness, from its env file.
#[derive(Debug, Clone)]
pub struct Harness {
    /// Path of the kubeconfig of the control plane.
    pub kubeconfig: PathBuf,
    /// The kubectl binary built for the harness.
    pub kubectl: PathBuf,
    /// The helm binary built for the harness.
    pub helm: PathBuf,
    /// The cosign CLI built for the harness.
    pub cosign: PathBuf,
    /// Registry `host:port` (plain HTTP, loopback).
    pub registry: String,
    /// The registry's log, which includes its access log.
    pub registry_log: PathBuf,
    /// The private registry: basic auth over TLS from a generated CA.
    pub private: PrivateRegistry,
    /// Base URL of Prometheus.
    pub prometheus_url: String,
    /// Address Prometheus scrapes the operator at.
    pub operator_metrics_addr: String,
    /// Prometheus' scrape interval, e.g. `2s`.
    pub scrape_interval: Duration,
    /// The registry that notifies the operator of pushes.
    pub notify: NotifyingRegistry,
    /// Base URL of the git server (`http://host:port`; repositories at
    /// `/<name>.git`).
    pub git_url: String,
    /// Its repositories' directory (bare repositories).
    pub git_root: PathBuf,
    /// The forge of the pull-request tests.
    pub gitea: gitea::GiteaServer,
}

/// A registry that POSTs every manifest push to the operator under test.
#[derive(Debug, Clone)]
pub struct NotifyingRegistry {
    /// Its `host:port` (plain HTTP, loopback).
    pub addr: String,
    /// Where the operator must listen for its notifications.
    pub endpoint: String,
    /// The bearer token it presents.
    pub token_file: PathBuf,
}

impl Harness {
    /// The env file: `$FRESHEN_E2E_ENV`, else `.e2e/env` at the repository root.
    pub fn env_file() -> PathBuf {
        std::env::var_os("FRESHEN_E2E_ENV")
            .map_or_else(|| repo_root().join(".e2e/env"), PathBuf::from)
    }

    /// Reads the env file written by `make e2e-up`.
    pub fn load() -> anyhow::Result<Self> {
        let path = Self::env_file();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: is the harness up? Run `make e2e-up` first",
                path.display()
            )
        })?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| (*v).to_owned())
                .with_context(|| format!("{} lacks {k}; re-run `make e2e-up`", path.display()))
        };
        Ok(Self {
            kubeconfig: get("KUBECONFIG")?.into(),
            kubectl: get("FRESHEN_E2E_KUBECTL")?.into(),
            helm: get("FRESHEN_E2E_HELM")?.into(),
            cosign: get("FRESHEN_E2E_COSIGN")?.into(),
            registry: get("FRESHEN_E2E_REGISTRY")?,
            registry_log: get("FRESHEN_E2E_REGISTRY_LOG")?.into(),
            private: PrivateRegistry {
                addr: get("FRESHEN_E2E_PRIVATE_REGISTRY")?,
                username: get("FRESHEN_E2E_PRIVATE_REGISTRY_USER")?,
                password: get("FRESHEN_E2E_PRIVATE_REGISTRY_PASSWORD")?,
                ca_file: get("FRESHEN_E2E_PRIVATE_REGISTRY_CA")?.into(),
            },
            prometheus_url: get("FRESHEN_E2E_PROMETHEUS_URL")?,
            operator_metrics_addr: get("FRESHEN_E2E_OPERATOR_METRICS_ADDR")?,
            scrape_interval: freshen_core::parse_duration(&get("FRESHEN_E2E_SCRAPE_INTERVAL")?)?,
            notify: NotifyingRegistry {
                addr: get("FRESHEN_E2E_NOTIFY_REGISTRY")?,
                endpoint: get("FRESHEN_E2E_NOTIFY_ADDR")?,
                token_file: get("FRESHEN_E2E_NOTIFY_TOKEN_FILE")?.into(),
            },
            git_url: get("FRESHEN_E2E_GIT_URL")?,
            git_root: get("FRESHEN_E2E_GIT_ROOT")?.into(),
            gitea: gitea::GiteaServer {
                url: get("FRESHEN_E2E_GITEA_URL")?,
                user: get("FRESHEN_E2E_GITEA_USER")?,
                token_file: get("FRESHEN_E2E_GITEA_TOKEN_FILE")?.into(),
                ssh_addr: get("FRESHEN_E2E_GITEA_SSH_ADDR")?,
            },
        })
    }

    /// A client for the harness' control plane.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Self::client_from(&self.kubeconfig).await
    }

    /// A client from a kubeconfig file, e.g. one [`Harness::kubeconfig_for`]
    /// wrote.
    pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(path)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Writes a kubeconfig that authenticates as the ServiceAccount
    /// `namespace/name` (which must exist), with a token minted through the
    /// TokenRequest API (`kubectl create token`), and returns its path.
    pub fn kubeconfig_for(&self, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
        let token = self.token_for(namespace, name)?;
        let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        for user in &mut kubeconfig.auth_infos {
            if let Some(auth) = user.auth_info.as_mut() {
                *auth = kube::config::AuthInfo {
                    token: Some(token.clone().into()),
                    ..Default::default()
                };
            }
        }
        let dir = repo_root().join("target/e2e-kubeconfigs");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        // JSON is YAML: kubectl and kube read it as a kubeconfig.
        std::fs::write(&path, serde_json::to_vec(&kubeconfig)?)?;
        Ok(path)
    }

    /// A token of the ServiceAccount `namespace/name` (which must exist),
    /// minted through the TokenRequest API (`kubectl create token`).
    pub fn token_for(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let token = std::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "create",
                "token",
                name,
                "-n",
                namespace,
                "--duration",
                "24h",
            ])
            .output()?;
        anyhow::ensure!(
            token.status.success(),
            "kubectl create token {name} -n {namespace} failed: {}",
            String::from_utf8_lossy(&token.stderr)
        );
        Ok(String::from_utf8(token.stdout)?.trim().to_owned())
    }
}

/// The host of the harness' registries: loopback, which freshen refuses
/// unless told (`--registry-allow`), as an operator would for a registry on
/// the node.
pub const HARNESS_REGISTRY_HOST: &str = "127.0.0.1";

/// A registry configuration that may reach the harness' loopback
/// registries.
pub fn registry_config(tag_ttl: Duration) -> freshen_registry::RegistryConfig {
    let mut config = freshen_registry::RegistryConfig::with_tag_ttl(tag_ttl);
    config.reach.allow = vec![freshen_registry::HostPattern::Exact(
        HARNESS_REGISTRY_HOST.to_owned(),
    )];
    config
}

/// The namespace of the operator's ServiceAccount (the chart's release namespace).
pub const OPERATOR_NAMESPACE: &str = "freshen-system";
/// The operator's ServiceAccount (the chart's, `charts/freshen`): every e2e operator runs
/// as it, so the shipped RBAC and admission policy are what the tests prove.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "freshen";

/// The repository root (this crate lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Installs rustls' ring provider once per process; kube and oci-client
/// both use it.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Polls `check` every `every` until it returns `Ok(Some(value))`, for at most
/// `limit`. `Ok(None)` means "not yet" and errors are remembered as "not yet"
/// too; on time-out the error says what was awaited and what was last seen.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Lines of the registry's access log that contain `needle`, e.g.
/// `"HEAD /v2/e2e/app/manifests/`.
pub fn registry_log_lines(harness: &Harness, needle: &str) -> anyhow::Result<usize> {
    let log = std::fs::read_to_string(&harness.registry_log)
        .with_context(|| format!("reading {}", harness.registry_log.display()))?;
    Ok(log.lines().filter(|l| l.contains(needle)).count())
}

/// Waits until the registry has logged every request sent before this call:
/// sends a marker request after them and waits for its access-log line.
pub async fn registry_log_barrier(harness: &Harness) -> anyhow::Result<()> {
    let marker = format!("/v2/freshen-e2e-barrier/manifests/b{:08x}", rand_suffix());
    let status = reqwest::Client::new()
        .head(format!("http://{}{marker}", harness.registry))
        .send()
        .await?
        .status();
    anyhow::ensure!(
        status == reqwest::StatusCode::NOT_FOUND,
        "barrier request answered {status}"
    );
    wait_for(
        "the registry to log the barrier request",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { Ok((registry_log_lines(harness, &marker)? > 0).then_some(())) },
    )
    .await
}

/// Deletes a Kubernetes object with the harness' kubectl when dropped (also
/// when the test fails). Synchronous on purpose: the test's runtime may
/// already be shutting down, so a spawned task would never run.
pub struct DeleteOnDrop {
    /// `kubectl delete` arguments before `--wait=false`, e.g. `node n1`.
    args: Vec<String>,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Harness {
    /// Runs kubectl against the harness with `args` (and `stdin`, when
    /// given) and returns its output, whatever its status.
    pub fn kubectl(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        run_tool(&self.kubectl, &self.kubeconfig, args, stdin)
    }

    /// Runs helm against the harness with `args` and returns its output,
    /// whatever its status.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        run_tool(&self.helm, &self.kubeconfig, args, None)
    }

    /// Deletes object `name` of `kind` (e.g. `node`, `namespace`) when the
    /// returned guard is dropped.
    pub fn delete_on_drop(&self, kind: &str, name: &str) -> DeleteOnDrop {
        self.delete_on_drop_in(None, kind, name)
    }

    /// [`Harness::delete_on_drop`] of an object in `namespace`.
    pub fn delete_on_drop_in(
        &self,
        namespace: Option<&str>,
        kind: &str,
        name: &str,
    ) -> DeleteOnDrop {
        let mut args = vec![kind.to_owned(), name.to_owned()];
        if let Some(ns) = namespace {
            args.push(format!("--namespace={ns}"));
        }
        DeleteOnDrop {
            args,
            kubectl: self.kubectl.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// Runs `tool --kubeconfig <kubeconfig> args...`, feeding it `stdin`.
fn run_tool(
    tool: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(tool)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", tool.display()))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default())?;
    }
    Ok(child.wait_with_output()?)
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("delete")
            .args(&self.args)
            .args(["--wait=false", "--ignore-not-found"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Waits for an Event with `reason` on object `name` of `kind` in
/// `namespace` whose note contains `note`; returns it.
pub async fn await_event(
    client: &Client,
    namespace: &str,
    (kind, name): (&str, &str),
    reason: &str,
    note: &str,
) -> anyhow::Result<k8s_openapi::api::events::v1::Event> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("a {reason} Event on {kind} {namespace}/{name} saying {note:?}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await?;
                Ok(list.items.into_iter().find(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                    }) && e.reason.as_deref() == Some(reason)
                        && e.note.as_deref().unwrap_or_default().contains(note)
                }))
            }
        },
    )
    .await
}

/// Waits for a Warning Event with `reason` on object `name` of `kind` in
/// `namespace`; returns its note.
pub async fn await_warning(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let event = await_event(client, namespace, (kind, name), reason, "").await?;
    anyhow::ensure!(
        event.type_.as_deref() == Some("Warning"),
        "the {reason} Event is not a Warning: {event:?}"
    );
    Ok(event.note.unwrap_or_default())
}

/// A namespace created for one test, deleted when dropped (also when the
/// test fails), so that runs do not pile up workloads.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    // Fields drop in order: finalizers go before the namespace does.
    _release: ReleaseRefreshes,
    _delete: DeleteOnDrop,
}

/// Removes freshen's finalizer from the Refreshes left in a namespace when
/// dropped, as an admin would after uninstalling freshen: a test that ends
/// while a Refresh changes its workload (the operator already stopped)
/// would otherwise hold its namespace in Terminating.
struct ReleaseRefreshes {
    namespace: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for ReleaseRefreshes {
    fn drop(&mut self) {
        let kubectl = |args: &[&str]| {
            std::process::Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
        };
        let Ok(listed) = kubectl(&["get", "refreshes", "-n", &self.namespace, "-o", "name"]) else {
            return;
        };
        for name in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = kubectl(&[
                "patch",
                name,
                "-n",
                &self.namespace,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random suffix>`.
    pub async fn create(harness: &Harness, client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{:08x}", rand_suffix());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let created = Self {
            name: name.clone(),
            _release: ReleaseRefreshes {
                namespace: name.clone(),
                kubectl: harness.kubectl.clone(),
                kubeconfig: harness.kubeconfig.clone(),
            },
            _delete: harness.delete_on_drop("namespace", &name),
        };
        // The namespace's default ServiceAccount appears asynchronously and
        // pods cannot be created before it exists.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_for(
            "the default ServiceAccount",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let sa = sa.clone();
                async move { Ok(sa.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await?;
        Ok(created)
    }
}

impl TestNamespace {
    /// A client for a new ServiceAccount `tenant` here, bound to the
    /// built-in `admin` ClusterRole in this namespace only: what a
    /// namespace owner has, the identity every hostile-tenant test acts
    /// as (never cluster-admin).
    pub async fn tenant_client(&self, harness: &Harness, admin: &Client) -> anyhow::Result<Client> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
        let ns = &self.name;
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some("tenant".into()),
                ..Default::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await?;
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some("tenant-admin".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "admin".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "tenant".into(),
                namespace: Some(ns.clone()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await?;
        Harness::client_from(&harness.kubeconfig_for(ns, "tenant")?).await
    }

    /// Creates Deployment `name` here (see [`deployment`]) and waits until
    /// its `replicas` pods are Ready.
    pub async fn deploy_ready(
        &self,
        client: &Client,
        name: &str,
        image: &str,
        replicas: i32,
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &self.name);
        api.create(
            &PostParams::default(),
            &deployment(name, image, replicas, annotations)?,
        )
        .await
        .with_context(|| format!("creating Deployment {}/{name}", self.name))?;
        let ready = usize::try_from(replicas)?;
        wait_ready_pods(client, &self.name, name, ready, Duration::from_secs(60)).await?;
        Ok(())
    }
}

/// A random 32-bit value for unique names.
pub fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// [`deployment`] with `extra` merged into it (objects key by key, other
/// values replaced), e.g. pod-template annotations or `minReadySeconds`.
pub fn deployment_with(
    name: &str,
    image: &str,
    replicas: i32,
    extra: serde_json::Value,
) -> anyhow::Result<Deployment> {
    let mut value = serde_json::to_value(deployment(name, image, replicas, &[])?)?;
    merge_json(&mut value, extra);
    Ok(serde_json::from_value(value)?)
}

/// Merges `extra` into `base`: objects key by key, anything else replaced.
pub fn merge_json(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge_json(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// A Deployment of `replicas` pods running `image`, it and its pods
/// labelled `app=<name>`, with the given annotations on the Deployment.
pub fn deployment(
    name: &str,
    image: &str,
    replicas: i32,
    annotations: &[(&str, &str)],
) -> anyhow::Result<Deployment> {
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app": name }, "annotations": annotations },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [ { "name": "app", "image": image } ] }
            }
        }
    }))?)
}

/// Waits until `replicas` pods of Deployment `name` (label `app=<name>`) are
/// Ready; returns them.
pub async fn wait_ready_pods(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app={name}");
    wait_for(
        &format!("{replicas} Ready pods of {namespace}/{name}"),
        limit,
        Duration::from_millis(250),
        || {
            let (pods, selector) = (pods.clone(), selector.clone());
            async move {
                let list = pods.list(&ListParams::default().labels(&selector)).await?;
                let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
                if ready.len() >= replicas {
                    Ok(Some(ready))
                } else {
                    anyhow::bail!("{} of {replicas} pods Ready", ready.len())
                }
            }
        },
    )
    .await
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until at least `count` pods of `pods` (an Api over a namespace)
/// have every container ready, listing every `every`, for at most `limit`.
pub async fn await_ready_pods(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    count: usize,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{count} Ready pods"),
        limit,
        every,
        || async move {
            let ready = pods
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| cs.iter().all(|c| c.ready))
                })
                .count();
            if ready >= count {
                Ok(Some(()))
            } else {
                anyhow::bail!("{ready} of {count} Ready")
            }
        },
    )
    .await
}

/// A RefreshPolicy spec for the Deployments labelled `key=value`: follow
/// the tag, a 50 % canary checked every `interval`, `iterations` passes to
/// promote, pods Ready within `readiness`.
pub fn canary_policy(
    (key, value): (&str, &str),
    interval: &str,
    iterations: u32,
    readiness: &str,
) -> freshen_api::RefreshPolicySpec {
    use freshen_api::refresh::{AnalysisSpec, RolloutSpec};
    freshen_api::RefreshPolicySpec {
        pipelines: Default::default(),
        selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some([(key.to_owned(), value.to_owned())].into()),
            ..Default::default()
        },
        limits: Default::default(),
        refresh: freshen_api::PolicyRefresh {
            follow_tag: Some(true),
            rollout: Some(RolloutSpec {
                strategy: None,
                canary_weight: Some(50),
                analysis: Some(AnalysisSpec {
                    interval: Some(interval.into()),
                    iterations: Some(iterations),
                    readiness_timeout: Some(readiness.into()),
                    ..AnalysisSpec::default()
                }),
            }),
            ..freshen_api::PolicyRefresh::default()
        },
    }
}
