//! What was last measured of every workload, shared by the workload
//! controller (writer), the metrics collector and the policy status
//! controllers (readers).
//!
//! Records hold timestamps, not ages: ages grow every second and are computed
//! when read. When a write changes which policies match a workload or which
//! limits it violates, the policies concerned are told, so their status
//! follows without polling.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use freshen_api::{ClusterRefreshPolicy, RefreshPolicy};
use freshen_core::Digest;
use freshen_core::findings::Findings;
use freshen_core::policy::{Ages, EffectiveLimits, Source};
use freshen_core::rebuild::BaseMove;
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

/// Identifies a workload: namespace, name and kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
    /// Its kind.
    pub kind: freshen_core::kind::Kind,
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What was last observed of one container of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Container name.
    pub container: String,
    /// Image repository (`registry/repository`, no tag or digest).
    pub image: String,
    /// Build times of the digests its pods run, as the registry reports them
    /// (judged when read: implausible ones are unknown).
    pub build_times: Vec<Option<DateTime<Utc>>>,
    /// Start of its oldest running instance.
    pub oldest_start: Option<DateTime<Utc>>,
    /// Whether its tag names a digest no pod runs; `None` when unknown.
    pub update_available: Option<bool>,
    /// Since when an update has been available (first observed).
    pub update_available_since: Option<DateTime<Utc>>,
    /// Whether the base of a running digest moved on; `None` when unknown
    /// (no base known, not tracked, or nothing to compare).
    pub base_stale: Option<bool>,
    /// Since when the base has been stale (see `freshen_core::base`).
    pub base_stale_since: Option<DateTime<Utc>>,
    /// The base image followed (with its tag), when one is known.
    pub base_image: Option<String>,
    /// The one digest every live pod of it runs (none while they differ or
    /// some are unknown).
    pub running: Option<Digest>,
    /// The digest its tag names now, when looked up.
    pub tag_digest: Option<Digest>,
    /// The base move that made it stale (what a rebuild is asked for).
    pub base_move: Option<BaseMove>,
    /// That base was named by the workload's `freshen.dev/base-image`
    /// annotation, not recorded by the image.
    pub base_annotated: bool,
    /// When its pods run what its tag names: since when the tag has named
    /// that digest (first seen by freshen; kept in a TagRecord).
    pub digest_since: Option<DateTime<Utc>>,
    /// What the verification gate says of the digest its pods run, when a
    /// policy sets `spec.verify`.
    pub verification: Option<freshen_core::verify::Judged>,
}

impl ContainerRecord {
    /// The image age at `now`: the oldest trustworthy build of the digests
    /// its pods run; `None` when no build time can be trusted.
    pub fn image_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.build_times
            .iter()
            .filter_map(|t| freshen_core::image_age(*t, now).known())
            .max()
    }

    /// The container age at `now`.
    pub fn container_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        freshen_core::container_age(self.oldest_start, now)
    }

    /// Its ages at `now`, as `freshen_core::policy::judge` reads them.
    pub fn ages(&self, now: DateTime<Utc>) -> Ages {
        Ages {
            image: self.image_age(now),
            container: self.container_age(now),
            first_seen: self
                .digest_since
                .map(|since| freshen_core::age::elapsed(since, now)),
        }
    }
}

/// The policies that match a workload, by level, and the one of each level
/// that governs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyBinding {
    /// Matching `RefreshPolicy`s of the workload's namespace.
    pub policies: Vec<String>,
    /// The one that governs.
    pub policy: Option<String>,
    /// Matching `ClusterRefreshPolicy`s.
    pub cluster_policies: Vec<String>,
    /// The one that governs.
    pub cluster_policy: Option<String>,
}

/// Everything recorded of one measured workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRecord {
    /// Its containers.
    pub containers: Vec<ContainerRecord>,
    /// The limits in force and their sources.
    pub limits: EffectiveLimits,
    /// The policies that match it.
    pub binding: PolicyBinding,
    /// Its configuration errors (bad annotations), as messages.
    pub config_errors: Vec<String>,
    /// Whether `freshen.dev/snooze-until` lies in the future.
    pub snoozed: bool,
    /// What its Warnings speak of: the sources of the limits it was past
    /// (empty while snoozed; what policy status counts), what only a
    /// rebuild can fix, why a wanted refresh waits.
    pub findings: Findings,
}

/// Which policies to tell when a workload's record changes.
#[derive(Debug, Clone)]
pub struct PolicyNotifier {
    /// Wakes the `RefreshPolicy` status controller.
    pub policies: UnboundedSender<ObjectRef<RefreshPolicy>>,
    /// Wakes the `ClusterRefreshPolicy` status controller.
    pub cluster_policies: UnboundedSender<ObjectRef<ClusterRefreshPolicy>>,
}

impl PolicyNotifier {
    /// Wakes each policy of `bindings` once.
    fn notify<'a>(&self, namespace: &str, bindings: impl IntoIterator<Item = &'a PolicyBinding>) {
        let mut policies = BTreeSet::new();
        let mut cluster_policies = BTreeSet::new();
        for binding in bindings {
            policies.extend(&binding.policies);
            cluster_policies.extend(&binding.cluster_policies);
        }
        // A closed channel means the operator is stopping.
        for name in policies {
            let _ = self
                .policies
                .unbounded_send(ObjectRef::new(name).within(namespace));
        }
        for name in cluster_policies {
            let _ = self.cluster_policies.unbounded_send(ObjectRef::new(name));
        }
    }
}

/// What a policy's status reports, counted over the recorded workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Workloads it matches.
    pub matched: usize,
    /// Of those, the ones it governs.
    pub governed: usize,
    /// Workloads past a limit it sets.
    pub violating: usize,
    /// Workloads it matches together with another policy of its level.
    pub overlapping: usize,
    /// Those other policies.
    pub overlaps_with: BTreeSet<String>,
}

/// The records of all measured workloads.
#[derive(Debug, Default)]
pub struct WorkloadRecords {
    inner: RwLock<BTreeMap<WorkloadKey, WorkloadRecord>>,
    notifier: Option<PolicyNotifier>,
}

impl WorkloadRecords {
    /// Records that tell the policies concerned about changes.
    pub fn with_notifier(notifier: PolicyNotifier) -> Self {
        Self {
            inner: RwLock::default(),
            notifier: Some(notifier),
        }
    }

    /// Replaces a workload's record.
    pub fn set(&self, key: WorkloadKey, mut record: WorkloadRecord) {
        // Measured one by one, the containers' vector has room for four
        // (1 KiB); kept for every workload, only what it holds.
        record.containers.shrink_to_fit();
        let Ok(mut map) = self.inner.write() else {
            return;
        };
        let old = map
            .get(&key)
            .map(|r| (r.binding.clone(), r.findings.violating.clone()));
        let changed =
            old.as_ref() != Some(&(record.binding.clone(), record.findings.violating.clone()));
        if let (true, Some(notifier)) = (changed, &self.notifier) {
            let before = old.as_ref().map(|(binding, _)| binding);
            notifier.notify(&key.namespace, before.into_iter().chain([&record.binding]));
        }
        map.insert(key, record);
    }

    /// Forgets a workload; its series disappear from the next scrape.
    pub fn remove(&self, key: &WorkloadKey) {
        let Ok(mut map) = self.inner.write() else {
            return;
        };
        if let (Some(old), Some(notifier)) = (map.remove(key), &self.notifier) {
            notifier.notify(&key.namespace, [&old.binding]);
        }
    }

    /// Keeps only the workloads for which `keep` holds.
    pub fn retain(&self, mut keep: impl FnMut(&WorkloadKey) -> bool) {
        let Ok(mut map) = self.inner.write() else {
            return;
        };
        map.retain(|k, record| {
            let kept = keep(k);
            if let (false, Some(notifier)) = (kept, &self.notifier) {
                notifier.notify(&k.namespace, [&record.binding]);
            }
            kept
        });
    }

    /// A copy of one workload's record.
    pub fn get(&self, key: &WorkloadKey) -> Option<WorkloadRecord> {
        self.inner.read().ok().and_then(|m| m.get(key).cloned())
    }

    /// The workloads a container of which was measured on the base image
    /// `image` (`registry/repository:tag`).
    pub fn based_on(&self, image: &str) -> Vec<WorkloadKey> {
        let mut out = Vec::new();
        self.for_each(|k, r| {
            if r.containers
                .iter()
                .any(|c| c.base_image.as_deref() == Some(image))
            {
                out.push(k.clone());
            }
        });
        out
    }

    /// Calls `f` on every record, under the read lock.
    pub fn for_each(&self, mut f: impl FnMut(&WorkloadKey, &WorkloadRecord)) {
        if let Ok(map) = self.inner.read() {
            map.iter().for_each(|(k, r)| f(k, r));
        }
    }

    /// Calls `f` on at most `limit` records in key order, from the one
    /// after `after` (from the first when `None`), under the read lock.
    /// Returns the last key visited when `limit` were, for the next call to
    /// go on from; `None` once the records are exhausted.
    pub fn for_each_after(
        &self,
        after: Option<&WorkloadKey>,
        limit: usize,
        mut f: impl FnMut(&WorkloadKey, &WorkloadRecord),
    ) -> Option<WorkloadKey> {
        use std::ops::Bound::{Excluded, Unbounded};
        let map = self.inner.read().ok()?;
        let range = match after {
            Some(key) => map.range::<WorkloadKey, _>((Excluded(key), Unbounded)),
            None => map.range::<WorkloadKey, _>(..),
        };
        let mut visited = 0;
        let mut last = None;
        for (k, r) in range.take(limit) {
            f(k, r);
            visited += 1;
            last = Some(k);
        }
        (visited == limit).then(|| last.cloned()).flatten()
    }

    /// How many workloads are recorded.
    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no workload is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts for the status of `RefreshPolicy` `namespace/name`.
    pub fn policy_stats(&self, namespace: &str, name: &str) -> PolicyStats {
        let source = Source::Policy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.stats(name, &source, |key, record| {
            (key.namespace == namespace).then_some((
                record.binding.policies.as_slice(),
                record.binding.policy.as_deref(),
            ))
        })
    }

    /// Counts for the status of `ClusterRefreshPolicy` `name`.
    pub fn cluster_policy_stats(&self, name: &str) -> PolicyStats {
        let source = Source::ClusterPolicy {
            name: name.to_owned(),
        };
        self.stats(name, &source, |_, record| {
            Some((
                record.binding.cluster_policies.as_slice(),
                record.binding.cluster_policy.as_deref(),
            ))
        })
    }

    /// Counts over the workloads `level` gives the matching policies and the
    /// governing one of (`None`: the level does not apply to the workload).
    fn stats(
        &self,
        name: &str,
        source: &Source,
        level: impl for<'r> Fn(
            &WorkloadKey,
            &'r WorkloadRecord,
        ) -> Option<(&'r [String], Option<&'r str>)>,
    ) -> PolicyStats {
        let mut stats = PolicyStats::default();
        let Ok(map) = self.inner.read() else {
            return stats;
        };
        for (key, record) in map.iter() {
            let Some((matched, governing)) = level(key, record) else {
                continue;
            };
            if !matched.iter().any(|m| m == name) {
                continue;
            }
            stats.matched += 1;
            if governing == Some(name) {
                stats.governed += 1;
            }
            if record.findings.violating.contains(source) {
                stats.violating += 1;
            }
            if matched.len() > 1 {
                stats.overlapping += 1;
                stats
                    .overlaps_with
                    .extend(matched.iter().filter(|m| *m != name).cloned());
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_core::policy::Sourced;
    use futures::channel::mpsc;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "shop".into(),
            name: name.into(),
            kind: freshen_core::kind::Kind::Deployment,
        }
    }

    fn record(policies: &[&str], governing: &str, violating: bool) -> WorkloadRecord {
        let source = Source::Policy {
            namespace: "shop".into(),
            name: governing.into(),
        };
        WorkloadRecord {
            containers: Vec::new(),
            limits: EffectiveLimits {
                unknown_build_as_first_seen: false,
                max_image_age: None,
                max_container_age: None,
                track_base_image: Sourced {
                    value: true,
                    source: Source::Default,
                },
            },
            binding: PolicyBinding {
                policies: policies.iter().map(|p| (*p).to_owned()).collect(),
                policy: Some(governing.to_owned()),
                ..PolicyBinding::default()
            },
            config_errors: Vec::new(),
            snoozed: false,
            findings: Findings {
                violating: if violating {
                    BTreeSet::from([source])
                } else {
                    BTreeSet::new()
                },
                ..Findings::default()
            },
        }
    }

    fn drain<K: kube::Resource>(rx: &mut mpsc::UnboundedReceiver<ObjectRef<K>>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(r) = rx.try_recv() {
            names.push(r.name);
        }
        names.sort();
        names
    }

    #[test]
    fn policies_hear_of_changes_that_concern_them_only() {
        let (tx, mut rx) = mpsc::unbounded();
        let (cluster_tx, _cluster_rx) = mpsc::unbounded();
        let records = WorkloadRecords::with_notifier(PolicyNotifier {
            policies: tx,
            cluster_policies: cluster_tx,
        });
        records.set(key("web"), record(&["strict"], "strict", false));
        assert_eq!(drain(&mut rx), ["strict"]);
        // Same binding, same verdict: nobody is woken.
        records.set(key("web"), record(&["strict"], "strict", false));
        assert!(drain(&mut rx).is_empty());
        // It starts violating: the policy's count changes.
        records.set(key("web"), record(&["strict"], "strict", true));
        assert_eq!(drain(&mut rx), ["strict"]);
        // Matched by another policy instead: both hear of it.
        records.set(key("web"), record(&["lenient"], "lenient", true));
        assert_eq!(drain(&mut rx), ["lenient", "strict"]);
        records.remove(&key("web"));
        assert_eq!(drain(&mut rx), ["lenient"]);
    }

    #[test]
    fn policy_stats_count_matched_governed_violating_and_overlaps() {
        let records = WorkloadRecords::default();
        records.set(key("a"), record(&["old", "new"], "old", true));
        records.set(key("b"), record(&["new"], "new", true));
        records.set(key("c"), record(&["new"], "new", false));
        let new = records.policy_stats("shop", "new");
        assert_eq!(
            (new.matched, new.governed, new.violating, new.overlapping),
            (3, 2, 1, 1)
        );
        assert_eq!(new.overlaps_with, BTreeSet::from(["old".to_owned()]));
        let old = records.policy_stats("shop", "old");
        assert_eq!((old.matched, old.governed, old.violating), (1, 1, 1));
        assert_eq!(records.policy_stats("other", "new"), PolicyStats::default());
    }
}
