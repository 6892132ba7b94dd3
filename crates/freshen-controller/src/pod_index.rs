//! Pods by the Deployment that owns them (through its ReplicaSet), kept
//! up to date from the one pod watch, so that a reconcile finds its
//! workload's pods in O(its pods) instead of scanning every pod in the
//! cluster (which made the first assessment of N workloads O(N x pods)).
//!
//! A re-list (the watch's `Init` .. `InitDone`) builds a new index beside
//! the old one and swaps it in at `InitDone`, as the reflector swaps its
//! store, so readers never see a half-listed index.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::cached::{CachedDeployment, CachedPod};
use crate::deployment::owning_deployment;

/// The names of the pods of each Deployment. A pod's owner never changes
/// (its ReplicaSet's name carries the Deployment's), so every event reads
/// it from the pod itself: no reverse map. Names, not `ObjectRef`s: a
/// pod's reference with its uid and resourceVersion costs four strings,
/// and this index holds one per pod in the cluster.
#[derive(Debug, Default)]
struct Index {
    by_owner: HashMap<ObjectRef<CachedDeployment>, Vec<String>>,
}

impl Index {
    fn insert(&mut self, pod: &CachedPod) {
        // One without a Deployment is not indexed.
        let (Some(owner), Some(name)) = (owning_deployment(pod), pod.metadata.name.as_ref()) else {
            return;
        };
        // Most Deployments have a pod or a few: a linear look is cheaper
        // than a set's table, and the vector starts with room for one.
        let pods = self
            .by_owner
            .entry(owner)
            .or_insert_with(|| Vec::with_capacity(1));
        if !pods.contains(name) {
            pods.push(name.clone());
        }
    }

    fn remove(&mut self, pod: &CachedPod) {
        let Some(owner) = owning_deployment(pod) else {
            return;
        };
        let name = pod.name_any();
        if let Some(pods) = self.by_owner.get_mut(&owner) {
            pods.retain(|p| *p != name);
            if pods.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

/// The index, shared between the pod watch (writer) and reconciles.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    live: Arc<RwLock<Index>>,
    /// The index a re-list is building.
    next: Arc<RwLock<Option<Index>>>,
}

impl PodIndex {
    /// Applies one event of the pod watch.
    pub fn apply(&self, event: &watcher::Event<CachedPod>) {
        match event {
            watcher::Event::Apply(pod) => {
                if let Ok(mut live) = self.live.write() {
                    live.insert(pod);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Ok(mut live) = self.live.write() {
                    live.remove(pod);
                }
            }
            watcher::Event::Init => {
                if let Ok(mut next) = self.next.write() {
                    *next = Some(Index::default());
                }
            }
            watcher::Event::InitApply(pod) => {
                if let Ok(mut next) = self.next.write()
                    && let Some(next) = next.as_mut()
                {
                    next.insert(pod);
                }
            }
            watcher::Event::InitDone => {
                let built = self.next.write().ok().and_then(|mut n| n.take());
                if let (Some(built), Ok(mut live)) = (built, self.live.write()) {
                    *live = built;
                }
            }
        }
    }

    /// The pods of Deployment `owner`, as references into the pod store.
    pub fn pods_of(&self, owner: &ObjectRef<CachedDeployment>) -> Vec<ObjectRef<CachedPod>> {
        self.live
            .read()
            .ok()
            .and_then(|live| {
                let namespace = owner.namespace.as_deref().unwrap_or_default();
                live.by_owner.get(owner).map(|names| {
                    names
                        .iter()
                        .map(|name| ObjectRef::new(name).within(namespace))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, deployment: &str) -> CachedPod {
        let hash = "7d9f8c6b5";
        CachedPod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some([("pod-template-hash".to_owned(), hash.to_owned())].into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    name: format!("{deployment}-{hash}"),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..CachedPod::default()
        }
    }

    fn names(index: &PodIndex, deployment: &str) -> Vec<String> {
        let mut out: Vec<String> = index
            .pods_of(&ObjectRef::new(deployment).within("shop"))
            .into_iter()
            .map(|r| r.name)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn pods_are_found_by_their_deployment_through_watch_events() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Apply(pod("web-1", "web")));
        index.apply(&watcher::Event::Apply(pod("web-2", "web")));
        index.apply(&watcher::Event::Apply(pod("api-1", "api")));
        index.apply(&watcher::Event::Apply(pod("web-1", "web")));
        assert_eq!(names(&index, "web"), ["web-1", "web-2"]);
        assert_eq!(names(&index, "api"), ["api-1"]);
        index.apply(&watcher::Event::Delete(pod("web-1", "web")));
        assert_eq!(names(&index, "web"), ["web-2"]);
        assert!(names(&index, "gone").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_it_is_complete() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Apply(pod("web-1", "web")));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("web-2", "web")));
        // While listing, readers still see the old, complete index.
        assert_eq!(names(&index, "web"), ["web-1"]);
        index.apply(&watcher::Event::InitDone);
        // web-1 was deleted while the watch was broken: gone after the swap.
        assert_eq!(names(&index, "web"), ["web-2"]);
    }
}
