//! What governs a workload and what its containers run: shared by the
//! workload controller and `freshen report`, so both judge alike.
//!
//! [`configure`] reads the workload's annotations and the policies that match
//! it (no I/O: the caller passes what it listed or cached); [`measure`] asks
//! the registry about each container, through the one shared cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use freshen_api::annotations::POLICY;
use freshen_api::{AnnotationError, ClusterRefreshPolicy, RefreshPolicy, WorkloadSettings};
use freshen_core::ImageReference;
use freshen_core::base;
use freshen_core::observe::{ContainerObservation, ContainerSpec, PodFacts, observe};
use freshen_core::plan::Preferences;
use freshen_core::policy::{Candidate, Limits, Resolution, resolve};
use freshen_registry::{Keychain, Platform, RegistryClient, RegistryError, auth};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;
use tracing::debug;

use crate::records::{ContainerRecord, PolicyBinding, WorkloadRecord};

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
    deploy: &Deployment,
    namespace_labels: &BTreeMap<String, String>,
    policies: &[Arc<RefreshPolicy>],
    cluster_policies: &[Arc<ClusterRefreshPolicy>],
    defaults: &Limits,
) -> Configuration {
    let (settings, mut errors) =
        WorkloadSettings::from_annotations(deploy.metadata.annotations.as_ref());
    let namespace = deploy.namespace().unwrap_or_default();
    let labels = deploy.labels();

    let valid_policies: Vec<(&RefreshPolicy, Candidate)> = policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter_map(|p| Some((p.as_ref(), p.candidate().ok()?)))
        .collect();
    let valid_cluster: Vec<(&ClusterRefreshPolicy, Candidate)> = cluster_policies
        .iter()
        .filter_map(|p| Some((p.as_ref(), p.candidate().ok()?)))
        .collect();
    let by_selector = || -> Vec<Candidate> {
        valid_policies
            .iter()
            .filter(|(p, _)| p.matches(&namespace, labels))
            .map(|(_, c)| c.clone())
            .collect()
    };
    let cluster_by_selector = || -> Vec<Candidate> {
        valid_cluster
            .iter()
            .filter(|(p, _)| p.matches(namespace_labels, labels))
            .map(|(_, c)| c.clone())
            .collect()
    };
    let named = |list: &[Candidate], name: &str| -> Option<Candidate> {
        list.iter().find(|c| c.name == name).cloned()
    };
    let all_policies: Vec<Candidate> = valid_policies.iter().map(|(_, c)| c.clone()).collect();
    // A pin may name only a ClusterRefreshPolicy whose namespaceSelector
    // selects this namespace.
    let pinnable_cluster: Vec<Candidate> = valid_cluster
        .iter()
        .filter(|(p, _)| p.selects_namespace(namespace_labels))
        .map(|(_, c)| c.clone())
        .collect();

    // A pinned policy governs in place of selector matching at its level
    // only: a pin to a ClusterRefreshPolicy never sets the namespace's own
    // RefreshPolicies (and their suspend) aside.
    let (matched, cluster_matched) = match settings.policy.as_deref() {
        None => (by_selector(), cluster_by_selector()),
        Some(pin) => match (named(&all_policies, pin), named(&pinnable_cluster, pin)) {
            (Some(p), _) => (vec![p], cluster_by_selector()),
            (None, Some(c)) => (by_selector(), vec![c]),
            (None, None) => {
                errors.push(AnnotationError {
                    key: POLICY.to_owned(),
                    value: pin.to_owned(),
                    expected: PINNED_POLICY_FORM,
                });
                (by_selector(), cluster_by_selector())
            }
        },
    };
    let resolution = resolve(
        &namespace,
        &settings.limits,
        &matched,
        &cluster_matched,
        defaults,
    );
    let policy_prefs = resolution
        .policy
        .as_deref()
        .and_then(|name| valid_policies.iter().find(|(p, _)| p.name_any() == name))
        .and_then(|(p, _)| p.spec.refresh.parse().ok())
        .unwrap_or_default();
    let cluster_prefs = resolution
        .cluster_policy
        .as_deref()
        .and_then(|name| valid_cluster.iter().find(|(p, _)| p.name_any() == name))
        .and_then(|(p, _)| p.spec.refresh.parse().ok())
        .unwrap_or_default();
    let refresh = settings
        .refresh_prefs
        .clone()
        .over(policy_prefs)
        .over(cluster_prefs);
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
    }
}

/// The registry credentials a workload's pods pull with: the Secrets its
/// pod template's `imagePullSecrets` name, then those of its
/// ServiceAccount, as the kubelet merges them. A Secret that is missing or
/// unreadable is skipped with a message saying why; look-ups then go
/// anonymous.
pub async fn pull_credentials(
    client: &Client,
    deploy: &Deployment,
    accounts: Accounts<'_>,
) -> (Keychain, Vec<String>) {
    let mut keychain = Keychain::default();
    let mut problems = Vec::new();
    let namespace = deploy.namespace().unwrap_or_default();
    let Some(spec) = deploy.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return (keychain, problems);
    };
    let mut names: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let account = spec
        .service_account_name
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let found = match accounts {
        Accounts::Cached(store) => Ok(store.get(&ObjectRef::new(&account).within(&namespace))),
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
        let parsed = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => keychain_of(&secret),
            Ok(None) => Err(format!("imagePullSecret {name} does not exist")),
            Err(e) => Err(format!("imagePullSecret {name} not read: {e}")),
        };
        match parsed {
            Ok(found) => keychain.merge(found),
            Err(problem) => problems.push(problem),
        }
    }
    (keychain, problems)
}

/// Where [`pull_credentials`] finds ServiceAccounts.
#[derive(Clone, Copy)]
pub enum Accounts<'a> {
    /// In the operator's ServiceAccount watch: no request per reconcile.
    Cached(&'a Store<ServiceAccount>),
    /// By a GET each (one-shot commands).
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
    parsed.map_err(|e| format!("imagePullSecret {name}: {e}"))
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
    /// A registry look-up failed; what could be learned is recorded.
    #[error("{0}")]
    Registry(Arc<RegistryError>),
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
pub fn template_containers(deploy: &Deployment) -> Vec<ContainerSpec> {
    deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| ContainerSpec {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Measures every container of `deploy` whose pods are `pods`: the tag's
/// digest, the running digests' build times (for `platform` when an image
/// is multi-arch; the configured one when `None`), and (when `track_base`)
/// whether their base moved on. `previous` carries first-observed times
/// forward.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    registry: &Arc<RegistryClient>,
    deploy: &Deployment,
    pods: &[PodFacts],
    keychain: &Keychain,
    platform: Option<&Platform>,
    track_base: bool,
    previous: Option<&WorkloadRecord>,
    now: DateTime<Utc>,
) -> Measurement {
    let mut out = Measurement::default();
    let annotations = deploy.metadata.annotations.as_ref();
    for observation in observe(&template_containers(deploy), pods) {
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
        let base_override = if track_base {
            freshen_api::base_image(annotations, &name).ok().flatten()
        } else {
            None
        };
        let before = previous.and_then(|p| p.containers.iter().find(|r| r.container == name));
        let (record, errors) = measure_container(
            registry,
            keychain,
            platform,
            &image,
            &observation,
            track_base,
            base_override.as_ref(),
            before,
            now,
        )
        .await;
        out.containers.push(record);
        out.problems.extend(
            errors
                .into_iter()
                .map(|e| (name.clone(), Problem::Registry(e))),
        );
    }
    out
}

/// Looks up one container's signals in the registry. Returns what it could
/// learn and every look-up that failed.
#[allow(clippy::too_many_arguments)]
async fn measure_container(
    registry: &Arc<RegistryClient>,
    keychain: &Keychain,
    platform: Option<&Platform>,
    image: &ImageReference,
    observation: &ContainerObservation,
    track_base: bool,
    base_override: Option<&ImageReference>,
    previous: Option<&ContainerRecord>,
    now: DateTime<Utc>,
) -> (ContainerRecord, Vec<Arc<RegistryError>>) {
    let mut errors = Vec::new();
    let mut failed = |e: Arc<RegistryError>, what: &str| {
        debug!(error = %e, container = %observation.name, "{what} unavailable");
        if !errors
            .iter()
            .any(|seen: &Arc<RegistryError>| Arc::ptr_eq(seen, &e))
        {
            errors.push(e);
        }
    };

    // Credentials of the host contacted (a mirror's), never the source's
    // sent to its mirror.
    let credential =
        |image: &ImageReference| registry.credential_for(keychain, &image.registry).cloned();
    let own_credential = credential(image);
    let mut update_available = None;
    let mut tag_digest = None;
    if image.effective_tag().is_some() {
        match registry
            .resolve_tag(image, own_credential.as_ref(), Instant::now())
            .await
        {
            Ok(digest) => {
                update_available = observation.update_available(&digest);
                tag_digest = Some(digest);
            }
            Err(e) => failed(e, "tag digest"),
        }
    }

    let mut build_times = Vec::new();
    let mut base_verdicts = Vec::new();
    let mut base_image = None;
    for digest in observation.digests() {
        let facts = match registry
            .image_facts(image, digest, platform, own_credential.as_ref())
            .await
        {
            Ok(facts) => facts,
            Err(e) => {
                failed(e, "image facts");
                continue;
            }
        };
        build_times.push(facts.created);
        if !track_base {
            continue;
        }
        let own_base = facts
            .base_name
            .as_deref()
            .and_then(|b| ImageReference::parse(b).ok());
        let Some(base) = base::to_follow(base_override, own_base.as_ref()) else {
            continue;
        };
        base_image.get_or_insert_with(|| base.to_string());
        let built_on =
            base::recorded_digest(base_override, own_base.as_ref(), facts.base_digest.as_ref());
        let base_now = match registry
            .resolve_tag(
                base,
                registry.credential_for(keychain, &base.registry),
                Instant::now(),
            )
            .await
        {
            Ok(d) => d,
            Err(e) => {
                failed(e, "base tag digest");
                continue;
            }
        };
        let base_now_created = match registry
            .image_facts(base, &base_now, platform, credential(base).as_ref())
            .await
        {
            Ok(base_facts) => base_facts.created,
            Err(e) => {
                failed(e, "base image facts");
                None
            }
        };
        let stale = base::is_stale(
            &base::BaseFacts {
                image_created: facts.created,
                built_on,
                base_now: &base_now,
                base_now_created,
            },
            now,
        );
        base_verdicts.push((stale, base_now_created));
    }
    let (base_stale, stale_base_created) = base::combine(&base_verdicts);
    let base_stale_since = (base_stale == Some(true)).then(|| {
        base::stale_since(
            stale_base_created,
            previous.and_then(|p| p.base_stale_since),
            now,
        )
    });
    let update_available_since = (update_available == Some(true)).then(|| {
        previous
            .and_then(|p| p.update_available_since)
            .unwrap_or(now)
    });

    let record = ContainerRecord {
        container: observation.name.clone(),
        image: image.name(),
        build_times,
        oldest_start: observation.oldest_start,
        update_available,
        update_available_since,
        base_stale,
        base_stale_since,
        base_image,
        running: match (observation.digests().len(), observation.pods_without_digest) {
            (1, 0) => observation.digests().into_iter().next().cloned(),
            _ => None,
        },
        tag_digest,
    };
    (record, errors)
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

    fn deploy(annotations: &[(&str, &str)]) -> Deployment {
        let mut d = Deployment::default();
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
