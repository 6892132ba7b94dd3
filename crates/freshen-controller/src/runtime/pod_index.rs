//! Pods by the workload that owns them (a Deployment through its
//! ReplicaSet, a StatefulSet, ...; see [`owning_workload`]), kept up to
//! date from the one pod watch, so that a reconcile finds its workload's
//! pods in O(its pods) instead of scanning every pod in the cluster (which
//! made the first assessment of N workloads O(N x pods)). The same index,
//! fed by the Job watch, finds a CronJob's Jobs.
//!
//! A re-list (the watch's `Init` .. `InitDone`) builds a new index beside
//! the old one and swaps it in at `InitDone`, as the reflector swaps its
//! store, so readers never see a half-listed index.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::runtime::cached::{CachedPod, CachedWorkload};
use crate::runtime::objects::{owning_workload, workload_ref};
use freshen_core::kind::Kind;

/// An object the index files under its owner.
pub trait Owned: kube::Resource {
    /// The workload that owns it, when it has one.
    fn owner(&self) -> Option<ObjectRef<CachedWorkload>>;
}

impl Owned for CachedPod {
    fn owner(&self) -> Option<ObjectRef<CachedWorkload>> {
        owning_workload(self)
    }
}

impl Owned for CachedWorkload {
    /// A Job's CronJob; nothing else is indexed by owner.
    fn owner(&self) -> Option<ObjectRef<CachedWorkload>> {
        let cron_job = self
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "CronJob")?;
        Some(workload_ref(
            Kind::CronJob,
            &cron_job.name,
            self.metadata.namespace.as_deref()?,
        ))
    }
}

/// The names of the objects of each owner. An object's owner never
/// changes (a ReplicaSet's name carries the Deployment's), so every event
/// reads it from the object itself: no reverse map. Names, not
/// `ObjectRef`s: a pod's reference with its uid and resourceVersion costs
/// four strings, and this index holds one per pod in the cluster.
#[derive(Debug, Default)]
struct Index {
    by_owner: HashMap<ObjectRef<CachedWorkload>, Vec<String>>,
}

impl Index {
    fn insert<T: Owned>(&mut self, object: &T) {
        // One without an owner is not indexed.
        let (Some(owner), Some(name)) = (object.owner(), object.meta().name.as_ref()) else {
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

    fn remove<T: Owned>(&mut self, object: &T) {
        let Some(owner) = object.owner() else {
            return;
        };
        let name = object.meta().name.clone().unwrap_or_default();
        if let Some(pods) = self.by_owner.get_mut(&owner) {
            pods.retain(|p| *p != name);
            if pods.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

/// The index of pods by workload.
pub type PodIndex = OwnerIndex<CachedPod>;

/// The index of a CronJob's Jobs.
pub type JobIndex = OwnerIndex<CachedWorkload>;

/// The index, shared between a watch (writer) and reconciles.
#[derive(Debug)]
pub struct OwnerIndex<T> {
    live: Arc<RwLock<Index>>,
    /// The index a re-list is building.
    next: Arc<RwLock<Option<Index>>>,
    objects: std::marker::PhantomData<fn(&T)>,
}

impl<T> Default for OwnerIndex<T> {
    fn default() -> Self {
        Self {
            live: Arc::default(),
            next: Arc::default(),
            objects: std::marker::PhantomData,
        }
    }
}

impl<T> Clone for OwnerIndex<T> {
    fn clone(&self) -> Self {
        Self {
            live: Arc::clone(&self.live),
            next: Arc::clone(&self.next),
            objects: std::marker::PhantomData,
        }
    }
}

impl<T: Owned> OwnerIndex<T> {
    /// Applies one event of the watch.
    pub fn apply(&self, event: &watcher::Event<T>) {
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

    /// The names of the objects `owner` owns, in its namespace.
    pub fn names_of(&self, owner: &ObjectRef<CachedWorkload>) -> Vec<String> {
        self.live
            .read()
            .ok()
            .and_then(|live| live.by_owner.get(owner).cloned())
            .unwrap_or_default()
    }
}

impl OwnerIndex<CachedPod> {
    /// The pods of workload `owner`, as references into the pod store.
    pub fn pods_of(&self, owner: &ObjectRef<CachedWorkload>) -> Vec<ObjectRef<CachedPod>> {
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
            .pods_of(&workload_ref(Kind::Deployment, deployment, "shop"))
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
