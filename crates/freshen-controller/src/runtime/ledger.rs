//! The Refreshes under way, as the concurrency limits count them: the
//! cache's active ones and those this process created that the cache does
//! not show yet.

use freshen_api::Refresh;
use freshen_api::refresh::GOVERNED_BY;
use kube::ResourceExt;

/// A Refresh under way, as the limits count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underway {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The workload it changes.
    pub workload: String,
    /// The uid of the Deployment that owns it.
    pub owner: Option<String>,
    /// The policy that governed its workload ([`GOVERNED_BY`]).
    pub governed_by: Option<String>,
}

impl Underway {
    /// The Refresh as the limits count it.
    pub fn of(refresh: &Refresh) -> Self {
        Self {
            namespace: refresh.namespace().unwrap_or_default(),
            name: refresh.name_any(),
            workload: refresh.spec.workload.clone(),
            owner: refresh
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.uid.clone()),
            governed_by: refresh.annotations().get(GOVERNED_BY).cloned(),
        }
    }
}

/// Refreshes this process created that its cache may not show yet; held
/// under the planning lock.
#[derive(Debug, Default)]
pub struct Ledger {
    created: Vec<(Underway, std::time::Instant)>,
}

/// How long a created Refresh counts from the ledger: the cache shows it
/// long before.
const LEDGER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl Ledger {
    /// Every Refresh under way: the cache's active ones, and those created
    /// here that it does not show yet (entries it shows, or older than a
    /// minute, are dropped).
    /// Every Refresh under way (see the type).
    pub fn underway(&mut self, cached: &[std::sync::Arc<Refresh>]) -> Vec<Underway> {
        let mut all: Vec<Underway> = cached
            .iter()
            .filter(|r| !r.progress().phase.is_terminal())
            .map(|r| Underway::of(r))
            .collect();
        let seen = |u: &Underway| {
            cached
                .iter()
                .any(|r| r.name_any() == u.name && r.namespace().as_deref() == Some(&u.namespace))
        };
        self.created
            .retain(|(u, at)| at.elapsed() < LEDGER_TTL && !seen(u));
        all.extend(self.created.iter().map(|(u, _)| u.clone()));
        all
    }

    /// Records a Refresh this process created.
    pub fn created(&mut self, underway: Underway) {
        self.created.push((underway, std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshen_api::refresh::GOVERNED_BY;
    use freshen_core::rollout::Phase;
    use std::sync::Arc;

    fn refresh(namespace: &str, name: &str, phase: Phase) -> Arc<Refresh> {
        let mut r: Refresh = serde_json::from_value(serde_json::json!({
            "apiVersion": "freshen.dev/v1alpha1",
            "kind": "Refresh",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {GOVERNED_BY: format!("RefreshPolicy/{namespace}/team")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "web", "uid": "u1", "controller": true}],
            },
            "spec": {
                "workload": "web", "container": "app", "reason": "new-digest",
                "fromImage": "r/app:1", "toImage": "r/app:1@sha256:1", "fromDigest": "unknown",
                "toDigest": "1", "digest": "sha256:1",
                "rollout": {"strategy": "canary", "canaryWeightPercent": 10,
                            "intervalSeconds": 30, "iterations": 5, "maxRestarts": 0,
                            "readinessTimeoutSeconds": 300},
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut status = freshen_api::RefreshStatus::default();
        status.progress.phase = phase;
        r.status = Some(status);
        Arc::new(r)
    }

    #[test]
    fn a_created_refresh_counts_until_the_cache_shows_it() {
        let mut ledger = Ledger::default();
        let made = refresh("shop", "web-app-1", Phase::Pending);
        ledger.created(Underway::of(&made));
        let underway = ledger.underway(&[]);
        assert_eq!(underway.len(), 1, "not in the cache yet: still counted");
        assert_eq!(
            underway[0].governed_by.as_deref(),
            Some("RefreshPolicy/shop/team")
        );
        assert_eq!(underway[0].owner.as_deref(), Some("u1"));
        // Once cached it counts once, from the cache; once finished, not at all.
        assert_eq!(ledger.underway(std::slice::from_ref(&made)).len(), 1);
        assert_eq!(
            ledger
                .underway(&[refresh("shop", "web-app-1", Phase::Succeeded)])
                .len(),
            0
        );
    }
}
