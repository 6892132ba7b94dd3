//! What governs a workload and what its containers run: shared by the
//! workload controller and `freshen report`, so both judge alike.
//!
//! [`configure`] reads the workload's annotations and the policies that match
//! it (no I/O: the caller passes what it listed or cached); [`measure`] asks
//! the registry about each container, through the one shared cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use freshen_api::annotations::{PIPELINE, POLICY};
use freshen_api::pipeline::{Pipeline, Rebuilds};
use freshen_api::{AnnotationError, ClusterRefreshPolicy, RefreshPolicy, WorkloadSettings};
use freshen_core::Digest;
use freshen_core::ImageReference;
use freshen_core::base;
use freshen_core::observe::{ContainerObservation, ContainerSpec, PodFacts, observe};
use freshen_core::plan::Preferences;
use freshen_core::policy::{Candidate, Limits, Resolution, resolve};
use freshen_core::rebuild::BaseMove;
use freshen_registry::{
    Credential, ImageFacts, Keychain, Platform, RegistryClient, RegistryError, auth,
};
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;
use tracing::debug;

use crate::runtime::cached::CachedWorkload;
use crate::runtime::records::{ContainerRecord, PolicyBinding, WorkloadRecord};
use crate::workload::tags::{Origin, TagClock};

const PINNED_POLICY_FORM: &str = "the name of an existing, valid RefreshPolicy in the \
                                  workload's namespace, or of a ClusterRefreshPolicy whose \
                                  namespaceSelector selects that namespace";

/// How a workload is configured: its settings, the policies that match it
/// and the limits in force.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Its annotations, parsed.
    pub settings: WorkloadSettings,
    /// Its bad annotations, including a `freshen.dev/policy` naming no
    /// usable policy.
    pub errors: Vec<AnnotationError>,
    /// The policies that match it.
    pub binding: PolicyBinding,
    /// The limits in force and where each comes from.
    pub resolution: Resolution,
    /// Refresh settings in force: annotations over the governing
    /// RefreshPolicy over the governing ClusterRefreshPolicy.
    pub refresh: Preferences,
    /// How its images are rebuilt, when a governing policy says.
    pub rebuild: Option<RebuildPlan>,
    /// The signatures its new digests need, when a policy says.
    pub verify: Option<freshen_core::verify::Requirement>,
    /// Where its proven images are committed (`gitops: Commit`).
    pub git: Option<GitPlan>,
}

/// A policy's `spec.git`, whole, and where its Secret is read: the
/// RefreshPolicy's namespace, or freshen's own for a ClusterRefreshPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct GitPlan {
    /// `RefreshPolicy/<namespace>/<name>` or `ClusterRefreshPolicy/<name>`.
    pub policy: String,
    /// The spec.
    pub spec: freshen_api::GitSpec,
    /// The Secret's namespace; `None`: freshen's own.
    pub secret_namespace: Option<String>,
}

/// The pipeline that rebuilds a workload's images and its settings: from
/// the governing RefreshPolicy's `spec.rebuild`, else the governing
/// ClusterRefreshPolicy's; `freshen.dev/pipeline` picks another pipeline of
/// the same policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildPlan {
    /// The policy declaring it: `RefreshPolicy/<namespace>/<name>` or
    /// `ClusterRefreshPolicy/<name>`.
    pub policy: String,
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Where its runs and Rebuild records live; `None`: freshen's own
    /// namespace.
    pub namespace: Option<String>,
    /// When, how long, how to back off.
    pub settings: Rebuilds,
    /// The pipeline is a ClusterRefreshPolicy's, shared by every namespace
    /// it governs.
    pub shared: bool,
}

impl RebuildPlan {
    /// The pipeline's identity in rebuild names: policy and pipeline, and
    /// for a shared pipeline the namespace asking (so one namespace's
    /// rebuild is never another's to supersede, cancel or prune).
    pub fn id(&self, asking: &str) -> String {
        match self.shared {
            true => format!("{}/{}@{asking}", self.policy, self.pipeline.name),
            false => format!("{}/{}", self.policy, self.pipeline.name),
        }
    }

    /// The gate of [`freshen_core::rebuild::admit`] for a workload of
    /// `asking` with `settings`.
    pub fn asker<'a>(
        &'a self,
        asking: &'a str,
        prefs: &Preferences,
        settings: &WorkloadSettings,
    ) -> freshen_core::rebuild::Asker<'a> {
        freshen_core::rebuild::Asker {
            namespace: asking,
            pipeline: &self.pipeline.name,
            shared: self.shared,
            images: &self.pipeline.images,
            allow_annotated_base: self.pipeline.allow_annotated_base == Some(true),
            suspended: prefs.suspend == Some(true),
            snooze_until: settings.snooze_until,
        }
    }
}

impl Configuration {
    /// Whether freshen measures it (see [`WorkloadSettings::measured`]).
    pub fn measured(&self) -> bool {
        let governed = self.resolution.policy.is_some() || self.resolution.cluster_policy.is_some();
        self.settings.measured(governed)
    }
}

/// Decides which policies match `deploy` (in a namespace labelled
/// `namespace_labels`) and which limits are in force. Policies whose spec is
/// invalid match nothing (their status says why).
pub fn configure(
    deploy: &CachedWorkload,
    namespace_labels: &BTreeMap<String, String>,
    policies: &[Arc<RefreshPolicy>],
    cluster_policies: &[Arc<ClusterRefreshPolicy>],
    defaults: &Limits,
) -> Configuration {
    let (settings, mut errors) =
        WorkloadSettings::from_annotations(deploy.metadata.annotations.as_ref());
    let namespace = deploy.namespace().unwrap_or_default();
    let valid = Valid {
        policies: policies
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
            .filter_map(|p| Some((p.as_ref(), p.candidate().ok()?)))
            .collect(),
        cluster: cluster_policies
            .iter()
            .filter_map(|p| Some((p.as_ref(), p.candidate().ok()?)))
            .collect(),
    };
    let on = Subject {
        namespace: &namespace,
        namespace_labels,
        labels: deploy.labels(),
    };
    let (matched, cluster_matched) = match settings.policy.as_deref() {
        None => (valid.by_selector(&on), valid.cluster_by_selector(&on)),
        Some(pin) => valid.pinned(pin, &on).unwrap_or_else(|| {
            errors.push(AnnotationError {
                key: POLICY.to_owned(),
                value: pin.to_owned(),
                expected: PINNED_POLICY_FORM,
            });
            (valid.by_selector(&on), valid.cluster_by_selector(&on))
        }),
    };
    let resolution = resolve(
        &namespace,
        &settings.limits,
        &matched,
        &cluster_matched,
        defaults,
    );
    let refresh = valid.preferences(&settings, &resolution);
    let rebuild = valid
        .rebuild_plan(&settings, &resolution, &namespace)
        .unwrap_or_else(|e| {
            errors.push(e);
            None
        });
    let verify = valid.verify(&resolution, &namespace);
    let git = valid.git(&resolution, &namespace);
    let binding = PolicyBinding {
        policies: matched.into_iter().map(|c| c.name).collect(),
        policy: resolution.policy.clone(),
        cluster_policies: cluster_matched.into_iter().map(|c| c.name).collect(),
        cluster_policy: resolution.cluster_policy.clone(),
    };
    Configuration {
        settings,
        errors,
        binding,
        resolution,
        refresh,
        rebuild,
        verify,
        git,
    }
}

/// The workload policies are matched against.
struct Subject<'a> {
    namespace: &'a str,
    namespace_labels: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
}

/// The valid policies of the workload's namespace and the valid cluster
/// policies, each with its limits.
struct Valid<'a> {
    policies: Vec<(&'a RefreshPolicy, Candidate)>,
    cluster: Vec<(&'a ClusterRefreshPolicy, Candidate)>,
}

impl Valid<'_> {
    fn by_selector(&self, on: &Subject) -> Vec<Candidate> {
        self.policies
            .iter()
            .filter(|(p, _)| p.matches(on.namespace, on.labels))
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn cluster_by_selector(&self, on: &Subject) -> Vec<Candidate> {
        self.cluster
            .iter()
            .filter(|(p, _)| p.matches(on.namespace_labels, on.labels))
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The policies matched when `freshen.dev/policy` names `pin`; `None`
    /// when it names no usable policy. A pinned policy governs in place of
    /// selector matching at its level only: a pin to a
    /// ClusterRefreshPolicy never sets the namespace's own RefreshPolicies
    /// (and their suspend) aside. A pin may name only a
    /// ClusterRefreshPolicy whose namespaceSelector selects the namespace.
    fn pinned(&self, pin: &str, on: &Subject) -> Option<(Vec<Candidate>, Vec<Candidate>)> {
        if let Some((_, c)) = self.policies.iter().find(|(_, c)| c.name == pin) {
            return Some((vec![c.clone()], self.cluster_by_selector(on)));
        }
        self.cluster
            .iter()
            .filter(|(p, _)| p.selects_namespace(on.namespace_labels))
            .find(|(_, c)| c.name == pin)
            .map(|(_, c)| (self.by_selector(on), vec![c.clone()]))
    }

    /// The rebuild plan of the governing policy that has `spec.rebuild`
    /// (RefreshPolicy first); an error when `freshen.dev/pipeline` names no
    /// pipeline of it.
    fn rebuild_plan(
        &self,
        settings: &WorkloadSettings,
        resolution: &Resolution,
        namespace: &str,
    ) -> Result<Option<RebuildPlan>, AnnotationError> {
        let namespaced = resolution
            .policy
            .as_deref()
            .and_then(|name| self.policies.iter().find(|(p, _)| p.name_any() == name))
            .and_then(|(p, _)| {
                let rebuilds = p.spec.pipelines.parse(true).ok()??;
                Some((
                    format!("RefreshPolicy/{namespace}/{}", p.name_any()),
                    &p.spec.pipelines,
                    rebuilds,
                    Some(namespace.to_owned()),
                ))
            });
        let cluster = || {
            resolution
                .cluster_policy
                .as_deref()
                .and_then(|name| self.cluster.iter().find(|(p, _)| p.name_any() == name))
                .and_then(|(p, _)| {
                    let rebuilds = p.spec.pipelines.parse(false).ok()??;
                    Some((
                        format!("ClusterRefreshPolicy/{}", p.name_any()),
                        &p.spec.pipelines,
                        rebuilds,
                        None,
                    ))
                })
        };
        let Some((policy, pipelines, settings_, own_namespace)) = namespaced.or_else(cluster)
        else {
            return Ok(None);
        };
        let name = settings.pipeline.as_deref().unwrap_or(&settings_.pipeline);
        let Some(pipeline) = pipelines.get(name) else {
            return Err(AnnotationError {
                key: PIPELINE.to_owned(),
                value: name.to_owned(),
                expected: "the name of a pipeline in the governing policy's spec.pipelines",
            });
        };
        let selectable = settings_
            .selectable
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name));
        if name != settings_.pipeline && !selectable {
            return Err(AnnotationError {
                key: PIPELINE.to_owned(),
                value: name.to_owned(),
                expected: "a pipeline the governing policy's spec.rebuild.selectable lists \
                           (a ClusterRefreshPolicy lists none unless it says)",
            });
        }
        let shared = own_namespace.is_none();
        let namespace = own_namespace.or_else(|| pipeline.namespace().map(str::to_owned));
        Ok(Some(RebuildPlan {
            policy,
            pipeline: pipeline.clone(),
            namespace,
            settings: settings_,
            shared,
        }))
    }

    /// Refresh settings in force: annotations over the governing
    /// RefreshPolicy over the governing ClusterRefreshPolicy.
    /// The verification requirement: the governing ClusterRefreshPolicy's
    /// `spec.verify`, then the governing RefreshPolicy's added to it. No
    /// annotation takes part, so nothing a workload says loosens it.
    fn verify(
        &self,
        resolution: &Resolution,
        namespace: &str,
    ) -> Option<freshen_core::verify::Requirement> {
        let cluster = resolution.cluster_policy.as_deref().and_then(|name| {
            let (p, _) = self.cluster.iter().find(|(p, _)| p.name_any() == name)?;
            let spec = p.spec.refresh.verify.as_ref()?;
            Some(spec.authority_set(format!("ClusterRefreshPolicy/{name}"), None))
        });
        let policy = resolution.policy.as_deref().and_then(|name| {
            let (p, _) = self.policies.iter().find(|(p, _)| p.name_any() == name)?;
            let spec = p.spec.refresh.verify.as_ref()?;
            Some(spec.authority_set(format!("RefreshPolicy/{namespace}/{name}"), Some(namespace)))
        });
        freshen_core::verify::requirement(cluster.into_iter().chain(policy))
    }

    /// The governing RefreshPolicy's `spec.git`, else the governing
    /// ClusterRefreshPolicy's: whole, so one policy's repositories never
    /// meet another's credentials.
    fn git(&self, resolution: &Resolution, namespace: &str) -> Option<GitPlan> {
        let policy = resolution.policy.as_deref().and_then(|name| {
            let (p, _) = self.policies.iter().find(|(p, _)| p.name_any() == name)?;
            Some(GitPlan {
                policy: format!("RefreshPolicy/{namespace}/{name}"),
                spec: p.spec.refresh.git.clone()?,
                secret_namespace: Some(namespace.to_owned()),
            })
        });
        policy.or_else(|| {
            let name = resolution.cluster_policy.as_deref()?;
            let (p, _) = self.cluster.iter().find(|(p, _)| p.name_any() == name)?;
            Some(GitPlan {
                policy: format!("ClusterRefreshPolicy/{name}"),
                spec: p.spec.refresh.git.clone()?,
                secret_namespace: None,
            })
        })
    }

    fn preferences(&self, settings: &WorkloadSettings, resolution: &Resolution) -> Preferences {
        let policy = resolution
            .policy
            .as_deref()
            .and_then(|name| self.policies.iter().find(|(p, _)| p.name_any() == name))
            .and_then(|(p, _)| p.spec.refresh.parse().ok())
            .unwrap_or_default();
        let cluster = resolution
            .cluster_policy
            .as_deref()
            .and_then(|name| self.cluster.iter().find(|(p, _)| p.name_any() == name))
            .and_then(|(p, _)| p.spec.refresh.parse().ok())
            .unwrap_or_default();
        settings.refresh_prefs.clone().over(policy).over(cluster)
    }
}

/// The registry credentials a workload's pods pull with: the Secrets its
/// pod template's `imagePullSecrets` name, then those of its
/// ServiceAccount, as the kubelet merges them. A Secret that is missing or
/// unreadable is skipped with a message saying why; look-ups then go
/// anonymous.
pub async fn pull_credentials(
    client: &Client,
    deploy: &CachedWorkload,
    accounts: Accounts<'_>,
) -> (Keychain, Vec<String>) {
    let mut keychain = Keychain::default();
    let mut problems = Vec::new();
    let namespace = deploy.namespace().unwrap_or_default();
    let Some(template) = deploy.template() else {
        return (keychain, problems);
    };
    let mut names: Vec<String> = template.image_pull_secrets.clone();
    let account = template
        .service_account_name
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let found = match accounts {
        Accounts::Cached(store) => Ok(store.get(&ObjectRef::new(&account).within(&namespace))),
        Accounts::Listed(listed) => Ok(listed.get(&(namespace.clone(), account.clone())).cloned()),
        Accounts::Fetch => Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .get_opt(&account)
            .await
            .map(|sa| sa.map(Arc::new)),
    };
    match found {
        Ok(Some(sa)) => names.extend(
            sa.image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone()),
        ),
        Ok(None) => {}
        Err(e) => problems.push(format!(
            "ServiceAccount {account} not read, its imagePullSecrets not used: {e}"
        )),
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    for name in names {
        keychain.consulted(&name);
        let parsed = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => keychain_of(&secret),
            Ok(None) => Err(format!("imagePullSecret {name} does not exist")),
            Err(e) => Err(format!("imagePullSecret {name} not read: {e}")),
        };
        match parsed {
            Ok(found) => keychain.merge(found),
            Err(problem) => {
                keychain.unusable(&name);
                problems.push(problem);
            }
        }
    }
    (keychain, problems)
}

/// Where [`pull_credentials`] finds ServiceAccounts.
#[derive(Clone, Copy)]
pub enum Accounts<'a> {
    /// In the operator's ServiceAccount watch: no request per reconcile.
    Cached(&'a Store<ServiceAccount>),
    /// Listed once by a one-shot command, by namespace and name: one
    /// request for every workload. An account not listed does not exist.
    Listed(&'a BTreeMap<(String, String), Arc<ServiceAccount>>),
    /// By a GET each (one-shot commands that could not list them).
    Fetch,
}

/// The credentials in a `kubernetes.io/dockerconfigjson` (or legacy
/// `kubernetes.io/dockercfg`) Secret.
fn keychain_of(secret: &Secret) -> Result<Keychain, String> {
    let name = secret.name_any();
    let data = secret.data.as_ref();
    let parsed = if let Some(json) = data.and_then(|d| d.get(".dockerconfigjson")) {
        auth::parse_docker_config(&json.0)
    } else if let Some(cfg) = data.and_then(|d| d.get(".dockercfg")) {
        let mut wrapped = b"{\"auths\":".to_vec();
        wrapped.extend_from_slice(&cfg.0);
        wrapped.push(b'}');
        auth::parse_docker_config(&wrapped)
    } else {
        return Err(format!(
            "imagePullSecret {name} has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)"
        ));
    };
    parsed
        .map(|k| k.from_secret(&name))
        .map_err(|e| format!("imagePullSecret {name}: {e}"))
}

/// The platform of a node, from what its kubelet reports
/// (`status.nodeInfo`), else its `kubernetes.io/os` and `kubernetes.io/arch`
/// labels.
pub fn node_platform(node: &Node) -> Option<Platform> {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let labels = node.labels();
    let pick = |reported: Option<&String>, label: &str| {
        reported
            .filter(|v| !v.is_empty())
            .or_else(|| labels.get(label))
            .cloned()
    };
    Some(Platform {
        os: pick(info.map(|i| &i.operating_system), "kubernetes.io/os")?,
        architecture: pick(info.map(|i| &i.architecture), "kubernetes.io/arch")?,
        variant: None,
    })
}

/// The platform a workload runs on: that of the nodes most of its pods are
/// scheduled on; `None` (the configured default) when no node is known.
pub fn platform_of(
    pods: &[PodFacts],
    platform_of_node: impl Fn(&str) -> Option<Platform>,
) -> Option<Platform> {
    freshen_core::observe::most_common(
        pods.iter()
            .filter(|p| !p.terminating)
            .filter_map(|p| p.node.as_deref())
            .filter_map(|node| {
                let p = platform_of_node(node)?;
                Some((p.os, p.architecture))
            }),
    )
    .map(|(os, architecture)| Platform {
        os,
        architecture,
        variant: None,
    })
}

/// Why something of one container could not be measured.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    /// The template's image is not a valid reference; nothing is measured.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A registry look-up failed; what could be learned is recorded. A
    /// refusal (401/403) says which pull secret was tried.
    #[error("{error}{}", credentials.as_deref().map(|c| format!("; {c}")).unwrap_or_default())]
    Registry {
        /// The failure.
        error: Arc<RegistryError>,
        /// For a refusal: the credentials shown, or that none were.
        credentials: Option<String>,
    },
}

/// What [`measure`] learned.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// One record per measurable container.
    pub containers: Vec<ContainerRecord>,
    /// Per container name, what could not be learned.
    pub problems: Vec<(String, Problem)>,
}

/// The template's containers of a Deployment.
pub fn template_containers(deploy: &CachedWorkload) -> Vec<ContainerSpec> {
    deploy
        .containers()
        .iter()
        .map(|c| ContainerSpec {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
        })
        .collect()
}

/// What every registry look-up of one workload shares: the client (and its
/// cache), the workload's pull credentials, the platform its pods run on
/// (`None`: the configured default) and the moment measured.
#[derive(Clone, Copy)]
pub struct Lookup<'a> {
    /// The shared registry client.
    pub registry: &'a Arc<RegistryClient>,
    /// The workload's pull credentials.
    pub keychain: &'a Keychain,
    /// The platform of a multi-arch image to read.
    pub platform: Option<&'a Platform>,
    /// The moment of the measurement.
    pub now: DateTime<Utc>,
    /// Since when each tag has named its digest.
    pub tags: &'a TagClock,
    /// The workload measured, which new tags are counted against.
    pub origin: Origin<'a>,
}

impl Lookup<'_> {
    /// The credential for the host contacted (a mirror's), never the
    /// source's sent to its mirror.
    pub(crate) fn credential(&self, image: &ImageReference) -> Option<&Credential> {
        self.registry.credential_for(self.keychain, &image.registry)
    }

    /// The digest `image`'s tag names now.
    pub async fn tag_digest(&self, image: &ImageReference) -> Result<Digest, Arc<RegistryError>> {
        self.registry
            .resolve_tag(image, self.credential(image), Instant::now())
            .await
    }

    /// What the image `digest` of `image`'s repository says of itself.
    pub async fn facts(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<Arc<ImageFacts>, Arc<RegistryError>> {
        self.registry
            .image_facts(image, digest, self.platform, self.credential(image))
            .await
    }
}

/// Measures every container of `deploy` whose pods are `pods`: the tag's
/// digest, the running digests' build times, and (when `track_base`)
/// whether their base moved on. `previous` carries first-observed times
/// forward.
pub async fn measure(
    lookup: &Lookup<'_>,
    deploy: &CachedWorkload,
    pods: &[PodFacts],
    track_base: bool,
    previous: Option<&WorkloadRecord>,
) -> Measurement {
    let mut out = Measurement::default();
    let annotations = deploy.metadata.annotations.as_ref();
    for observation in observe(&template_containers(deploy), pods) {
        // A CronJob's next Job runs its template.
        let observation = match deploy.kind {
            freshen_core::kind::Kind::CronJob => observation.or_next_run(),
            _ => observation,
        };
        let name = observation.name.clone();
        let image = match &observation.image {
            Ok(image) => image.clone(),
            Err(invalid) => {
                out.problems
                    .push((name, Problem::InvalidImage(invalid.to_string())));
                continue;
            }
        };
        // A bad base-image annotation (reported with the other annotation
        // errors) costs only the base signal.
        let base = track_base.then(|| BaseToFollow {
            annotated: freshen_api::base_image(annotations, &name).ok().flatten(),
        });
        let before = previous.and_then(|p| p.containers.iter().find(|r| r.container == name));
        let mut failures = Failed::new(&name);
        let record =
            measure_container(lookup, &image, &observation, base, before, &mut failures).await;
        out.containers.push(record);
        out.problems
            .extend(failures.errors.into_iter().map(|error| {
                let credentials = (error.category() == "registry_unauthorized").then(|| {
                    lookup
                        .keychain
                        .refusal_hint(lookup.registry.host_for(&image.registry))
                });
                (name.clone(), Problem::Registry { error, credentials })
            }));
    }
    out
}

/// A base verdict: stale or not (or unknown), the current base's build
/// time, and the move.
type BaseVerdict = (Option<bool>, Option<DateTime<Utc>>, BaseMove);

/// Which base a tracked container follows: the one its
/// `freshen.dev/base-image` annotation names, else the one its image
/// records.
struct BaseToFollow {
    annotated: Option<ImageReference>,
}

/// The look-ups of one container that failed, each once.
struct Failed<'a> {
    container: &'a str,
    errors: Vec<Arc<RegistryError>>,
}

impl<'a> Failed<'a> {
    fn new(container: &'a str) -> Self {
        Self {
            container,
            errors: Vec::new(),
        }
    }

    /// The value of a look-up, or `None` with its error kept (a coalesced
    /// look-up shares one error between callers: kept once).
    fn keep<T>(&mut self, result: Result<T, Arc<RegistryError>>, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                debug!(error = %e, container = %self.container, "{what} unavailable");
                if !self.errors.iter().any(|seen| Arc::ptr_eq(seen, &e)) {
                    self.errors.push(e);
                }
                None
            }
        }
    }
}

/// Looks up one container's signals in the registry: the tag's digest,
/// then per running digest its build time and base verdict. Returns what
/// it could learn; `failed` keeps every look-up that failed.
async fn measure_container(
    lookup: &Lookup<'_>,
    image: &ImageReference,
    observation: &ContainerObservation,
    base: Option<BaseToFollow>,
    previous: Option<&ContainerRecord>,
    failed: &mut Failed<'_>,
) -> ContainerRecord {
    let tag_digest = match image.effective_tag() {
        Some(_) => failed.keep(lookup.tag_digest(image).await, "tag digest"),
        None => None,
    };
    let update_available = tag_digest
        .as_ref()
        .and_then(|d| observation.update_available(d));
    let now = lookup.now;
    let tagged = image.without_digest().to_string();
    // Since when the tag has named its digest: when an update became
    // available, or (when the pods run it) how long what they run has been
    // what the tag names.
    let tag_since = tag_digest
        .as_ref()
        .map(|d| lookup.tags.since(&tagged, d, now, lookup.origin));
    let mut build_times = Vec::new();
    let mut verdicts = Vec::new();
    let mut base_image = None;
    let mut base_move = None;
    let mut base_annotated = false;
    let mut base_first_seen = None;
    for digest in observation.digests() {
        let Some(facts) = failed.keep(lookup.facts(image, digest).await, "image facts") else {
            continue;
        };
        build_times.push(facts.created);
        let Some(base) = &base else { continue };
        if let Some((followed, verdict)) = base_verdict(lookup, base, &facts, failed).await {
            if let Some((Some(true), _, moved)) = &verdict
                && base_move.is_none()
            {
                base_move = Some(moved.clone());
                base_annotated = annotated_base(base, &facts);
                if let Ok(new) = moved.new_digest.parse::<Digest>() {
                    base_first_seen.get_or_insert_with(|| {
                        lookup.tags.since(&moved.name, &new, now, lookup.origin)
                    });
                }
            }
            verdicts.extend(verdict.map(|(stale, created, _)| (stale, created)));
            base_image.get_or_insert(followed);
        }
    }
    let (base_stale, stale_base_created) = base::combine(&verdicts);
    let running = match (observation.digests().len(), observation.pods_without_digest) {
        (1, 0) => observation.digests().into_iter().next().cloned(),
        _ => None,
    };
    ContainerRecord {
        container: observation.name.clone(),
        image: image.name(),
        build_times,
        oldest_start: observation.oldest_start,
        update_available,
        update_available_since: (update_available == Some(true)).then(|| {
            tag_since
                .or_else(|| previous.and_then(|p| p.update_available_since))
                .unwrap_or(now)
        }),
        base_stale,
        base_stale_since: (base_stale == Some(true)).then(|| {
            base::stale_since(
                stale_base_created,
                base_first_seen.or_else(|| previous.and_then(|p| p.base_stale_since)),
                now,
            )
        }),
        base_image,
        digest_since: tag_since.filter(|_| running.is_some() && running == tag_digest),
        running,
        tag_digest,
        base_move,
        base_annotated,
        verification: None,
    }
}

/// Whether the base followed is the workload's word, not the image's: the
/// `freshen.dev/base-image` annotation names another base (repository or
/// tag) than the one the image records, or the image records none.
fn annotated_base(base: &BaseToFollow, facts: &ImageFacts) -> bool {
    let Some(named) = &base.annotated else {
        return false;
    };
    let own = facts
        .base_name
        .as_deref()
        .and_then(|b| ImageReference::parse(b).ok());
    own.is_none_or(|own| own.without_digest() != named.without_digest())
}

/// Whether the base one running image was built on moved on: the base it
/// follows (`None`: none known) and the verdict with the current base's
/// build time and the move (`None`: the base's tag could not be read).
async fn base_verdict(
    lookup: &Lookup<'_>,
    base: &BaseToFollow,
    facts: &ImageFacts,
    failed: &mut Failed<'_>,
) -> Option<(String, Option<BaseVerdict>)> {
    let own_base = facts
        .base_name
        .as_deref()
        .and_then(|b| ImageReference::parse(b).ok());
    let followed = base::to_follow(base.annotated.as_ref(), own_base.as_ref())?;
    let built_on = base::recorded_digest(
        base.annotated.as_ref(),
        own_base.as_ref(),
        facts.base_digest.as_ref(),
    );
    let Some(base_now) = failed.keep(lookup.tag_digest(followed).await, "base tag digest") else {
        return Some((followed.to_string(), None));
    };
    let base_now_created = failed
        .keep(lookup.facts(followed, &base_now).await, "base image facts")
        .and_then(|f| f.created);
    let stale = base::is_stale(
        &base::BaseFacts {
            image_created: facts.created,
            built_on,
            base_now: &base_now,
            base_now_created,
        },
        lookup.now,
    );
    let moved = BaseMove {
        name: followed.to_string(),
        old_digest: built_on.map(ToString::to_string),
        new_digest: base_now.to_string(),
    };
    Some((followed.to_string(), Some((stale, base_now_created, moved))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::{ClusterRefreshPolicySpec, PolicyLimits, RefreshPolicySpec};
    use freshen_core::policy::Source;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn deploy(annotations: &[(&str, &str)]) -> CachedWorkload {
        let mut d = CachedWorkload::empty(freshen_core::kind::Kind::Deployment);
        d.metadata.name = Some("web".into());
        d.metadata.namespace = Some("shop".into());
        d.metadata.labels = Some(labels(&[("tier", "web")]));
        d.metadata.annotations = Some(labels(annotations));
        d
    }

    fn created(seconds: i64) -> Option<Time> {
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .ok()
            .map(Time)
    }

    fn policy(name: &str, tier: &str, age: &str, at: i64) -> Arc<RefreshPolicy> {
        let mut p = RefreshPolicy::new(
            name,
            RefreshPolicySpec {
                pipelines: Default::default(),
                refresh: Default::default(),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("tier", tier)])),
                    match_expressions: None,
                },
                limits: PolicyLimits {
                    max_image_age: Some(age.into()),
                    ..PolicyLimits::default()
                },
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.metadata.creation_timestamp = created(at);
        Arc::new(p)
    }

    fn cluster(name: &str, age: &str) -> Arc<ClusterRefreshPolicy> {
        let mut p = ClusterRefreshPolicy::new(
            name,
            ClusterRefreshPolicySpec {
                pipelines: Default::default(),
                refresh: Default::default(),
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("env", "prod")])),
                    match_expressions: None,
                }),
                selector: None,
                limits: PolicyLimits {
                    max_image_age: Some(age.into()),
                    max_container_age: Some("7d".into()),
                    ..PolicyLimits::default()
                },
            },
        );
        p.metadata.creation_timestamp = created(1);
        Arc::new(p)
    }

    fn days(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n * 86_400)
    }

    #[test]
    fn matching_policies_govern_and_overlaps_are_recorded() {
        let policies = [
            policy("newer", "web", "1d", 200),
            policy("older", "web", "5d", 100),
            policy("other", "db", "1d", 50),
            policy("broken", "web", "99999999999999999999w", 10),
        ];
        let prod = labels(&[("env", "prod")]);
        let c = configure(
            &deploy(&[]),
            &prod,
            &policies,
            &[cluster("base", "30d")],
            &Limits::default(),
        );
        assert!(c.measured(), "a matching policy opts the workload in");
        assert_eq!(
            c.binding.policies,
            ["newer", "older"],
            "invalid and non-matching left out"
        );
        assert_eq!(c.binding.policy.as_deref(), Some("older"));
        assert_eq!(c.binding.cluster_policies, ["base"]);
        let limits = &c.resolution.limits;
        assert_eq!(
            limits.max_image_age.as_ref().map(|l| l.value),
            Some(days(5))
        );
        assert_eq!(
            limits.max_container_age.as_ref().map(|l| l.source.clone()),
            Some(Source::ClusterPolicy {
                name: "base".into()
            })
        );
        assert!(c.errors.is_empty());

        // Outside prod namespaces the cluster policy does not apply.
        let dev = labels(&[("env", "dev")]);
        let c = configure(
            &deploy(&[]),
            &dev,
            &[],
            &[cluster("base", "30d")],
            &Limits::default(),
        );
        assert!(!c.measured());
        assert!(c.binding.cluster_policies.is_empty());
    }

    #[test]
    fn a_pinned_policy_governs_whatever_the_selectors_say() {
        let policies = [
            policy("web", "web", "5d", 100),
            policy("db", "db", "1d", 50),
        ];
        let base = [cluster("base", "30d")];
        let prod = labels(&[("env", "prod")]);

        let pinned = configure(
            &deploy(&[("freshen.dev/policy", "db")]),
            &prod,
            &policies,
            &base,
            &Limits::default(),
        );
        assert_eq!(pinned.binding.policies, ["db"]);
        assert_eq!(
            pinned.binding.cluster_policies,
            ["base"],
            "the level below still applies"
        );

        let to_cluster = configure(
            &deploy(&[("freshen.dev/policy", "base")]),
            &prod,
            &policies,
            &base,
            &Limits::default(),
        );
        assert_eq!(
            to_cluster.binding.policies,
            ["web"],
            "a pin to a ClusterRefreshPolicy never sets the namespace's own policies aside"
        );
        assert_eq!(
            to_cluster
                .resolution
                .limits
                .max_image_age
                .as_ref()
                .map(|l| l.value),
            Some(days(5)),
            "the namespace's policy still wins where it speaks"
        );
        assert_eq!(to_cluster.binding.cluster_policy.as_deref(), Some("base"));

        // A ClusterRefreshPolicy written for other namespaces cannot be
        // borrowed by a pin: an error naming the annotation, selectors decide.
        let dev = labels(&[("env", "dev")]);
        let borrowed = configure(
            &deploy(&[("freshen.dev/policy", "base")]),
            &dev,
            &policies,
            &base,
            &Limits::default(),
        );
        assert_eq!(borrowed.errors.len(), 1);
        let e = borrowed.errors[0].to_string();
        assert!(e.contains("namespaceSelector selects"), "{e}");
        assert!(borrowed.binding.cluster_policies.is_empty());
        assert_eq!(borrowed.binding.policies, ["web"]);

        let missing = configure(
            &deploy(&[("freshen.dev/policy", "nope")]),
            &prod,
            &policies,
            &base,
            &Limits::default(),
        );
        assert_eq!(missing.errors.len(), 1);
        assert!(
            missing.errors[0]
                .to_string()
                .contains("freshen.dev/policy=\"nope\"")
        );
        assert_eq!(
            missing.binding.policies,
            ["web"],
            "selectors decide instead"
        );
    }

    #[test]
    fn the_platform_is_that_of_most_pods_nodes() {
        let pod = |name: &str, node: Option<&str>, terminating| PodFacts {
            name: name.into(),
            terminating,
            node: node.map(Into::into),
            containers: vec![],
        };
        let platform = |arch: &str| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        };
        let nodes = |n: &str| match n {
            "a1" | "a2" => Some(platform("arm64")),
            "x1" => Some(platform("amd64")),
            _ => None,
        };
        let pods = [
            pod("p1", Some("a1"), false),
            pod("p2", Some("a2"), false),
            pod("p3", Some("x1"), false),
            pod("p4", Some("x1"), true),
            pod("p5", Some("x1"), true),
            pod("p6", None, false),
        ];
        assert_eq!(platform_of(&pods, nodes), Some(platform("arm64")));
        assert_eq!(platform_of(&pods[5..], nodes), None);

        let mut node = Node::default();
        node.metadata.labels = Some(labels(&[
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "s390x"),
        ]));
        assert_eq!(
            node_platform(&node),
            Some(platform("s390x")),
            "labels when nodeInfo is absent"
        );
    }
}
