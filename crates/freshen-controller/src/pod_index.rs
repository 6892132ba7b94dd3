//! Pods by the Deployment that owns them (through its ReplicaSet), kept
//! up to date from the one pod watch, so that a reconcile finds its
//! workload's pods in O(its pods) instead of scanning every pod in the
//! cluster (which made the first assessment of N workloads O(N x pods)).
//!
//! A re-list (the watch's `Init` .. `InitDone`) builds a new index beside
//! the old one and swaps it in at `InitDone`, as the reflector swaps its
//! store, so readers never see a half-listed index.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::cached::CachedPod;
use crate::deployment::owning_deployment;

/// Pod references by owning Deployment, and the owner of each pod.
#[derive(Debug, Default)]
struct Index {
    by_owner: HashMap<ObjectRef<Deployment>, HashSet<ObjectRef<CachedPod>>>,
    owner_of: HashMap<ObjectRef<CachedPod>, ObjectRef<Deployment>>,
}

impl Index {
    fn insert(&mut self, pod: &CachedPod) {
        let key = ObjectRef::from_obj(pod);
        let Some(owner) = owning_deployment(pod) else {
            // A pod's owner does not change; one without a Deployment is
            // not indexed (nor was it before, if it is an update).
            return;
        };
        if let Some(old) = self.owner_of.insert(key.clone(), owner.clone())
            && old != owner
            && let Some(pods) = self.by_owner.get_mut(&old)
        {
            pods.remove(&key);
        }
        self.by_owner.entry(owner).or_default().insert(key);
    }

    fn remove(&mut self, pod: &CachedPod) {
        let key = ObjectRef::from_obj(pod);
        if let Some(owner) = self.owner_of.remove(&key)
            && let Some(pods) = self.by_owner.get_mut(&owner)
        {
            pods.remove(&key);
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
    pub fn pods_of(&self, owner: &ObjectRef<Deployment>) -> Vec<ObjectRef<CachedPod>> {
        self.live
            .read()
            .ok()
            .and_then(|live| {
                live.by_owner
                    .get(owner)
                    .map(|p| p.iter().cloned().collect())
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
