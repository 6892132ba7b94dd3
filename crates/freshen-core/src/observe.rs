//! From a workload's pods to what each of its containers runs.
//!
//! The controller copies the few fields it needs out of the pod API objects
//! into [`PodFacts`]; this module decides, without a client, which digests a
//! container runs and since when. The running digest is taken from the
//! kubelet's `imageID`, else from a digest pinned in the pod's own spec, and is
//! otherwise unknown: freshen never resolves a tag to guess what a pod pulled.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::image::{Digest, ImageRefError, ImageReference, digest_from_image_id};

/// A container of the workload's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image as written in the template.
    pub image: String,
}

/// What one pod says about one of its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Container name.
    pub name: String,
    /// The image in the pod's own spec (it may predate the template's).
    pub pod_image: String,
    /// `status.containerStatuses[].imageID`, when reported and non-empty.
    pub image_id: Option<String>,
    /// `state.running.startedAt`, when the container is running.
    pub running_since: Option<DateTime<Utc>>,
}

/// The facts of one pod of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Pod name, for logs.
    pub name: String,
    /// The pod is being deleted; it no longer counts.
    pub terminating: bool,
    /// The node it is scheduled on, if any.
    pub node: Option<String>,
    /// Its containers (regular ones; init containers are not measured).
    pub containers: Vec<ContainerFacts>,
}

/// Where a running digest was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DigestSource {
    /// From the kubelet's `imageID`.
    ImageId,
    /// From a digest pinned in the pod's spec image.
    PinnedInSpec,
}

/// What one container of the workload runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    /// Container name.
    pub name: String,
    /// The template's image, parsed; an error when it is malformed.
    pub image: Result<ImageReference, ImageRefError>,
    /// Distinct digests its live pods run, with where each was learned. More
    /// than one while a rollout is in progress.
    pub running: BTreeSet<(Digest, DigestSource)>,
    /// Live pods whose digest for this container is unknown.
    pub pods_without_digest: usize,
    /// Start time of the oldest running instance.
    pub oldest_start: Option<DateTime<Utc>>,
}

impl ContainerObservation {
    /// For a workload whose pods run only now and then (a CronJob between
    /// runs): with no live pod, what runs next is the digest the template
    /// pins, if it pins one. Live pods, when there are any, say what runs.
    pub fn or_next_run(mut self) -> Self {
        if self.running.is_empty()
            && self.pods_without_digest == 0
            && let Some(digest) = self.image.as_ref().ok().and_then(|i| i.digest.clone())
        {
            self.running.insert((digest, DigestSource::PinnedInSpec));
        }
        self
    }

    /// The distinct running digests, without their sources.
    pub fn digests(&self) -> BTreeSet<&Digest> {
        self.running.iter().map(|(d, _)| d).collect()
    }

    /// Whether the tag now names a digest none of the pods runs: `None` when
    /// no pod's digest is known (nothing to compare with), or while some pods'
    /// digests are unknown and the known ones differ (they may run it).
    pub fn update_available(&self, tag_digest: &Digest) -> Option<bool> {
        let running = self.digests();
        if running.contains(tag_digest) {
            return Some(false);
        }
        if running.is_empty() || self.pods_without_digest > 0 {
            return None;
        }
        Some(true)
    }
}

/// Observes each template container across the workload's live pods.
pub fn observe(template: &[ContainerSpec], pods: &[PodFacts]) -> Vec<ContainerObservation> {
    template
        .iter()
        .map(|spec| {
            let mut observation = ContainerObservation {
                name: spec.name.clone(),
                image: ImageReference::parse(&spec.image),
                running: BTreeSet::new(),
                pods_without_digest: 0,
                oldest_start: None,
            };
            for pod in pods.iter().filter(|p| !p.terminating) {
                let Some(facts) = pod.containers.iter().find(|c| c.name == spec.name) else {
                    continue;
                };
                match running_digest(facts) {
                    Some(found) => {
                        observation.running.insert(found);
                    }
                    None => observation.pods_without_digest += 1,
                }
                if let Some(since) = facts.running_since {
                    observation.oldest_start =
                        Some(observation.oldest_start.map_or(since, |o| o.min(since)));
                }
            }
            observation
        })
        .collect()
}

fn running_digest(facts: &ContainerFacts) -> Option<(Digest, DigestSource)> {
    if let Some(d) = facts.image_id.as_deref().and_then(digest_from_image_id) {
        return Some((d, DigestSource::ImageId));
    }
    ImageReference::parse(&facts.pod_image)
        .ok()
        .and_then(|r| r.digest)
        .map(|d| (d, DigestSource::PinnedInSpec))
}

/// The most common of `items` (ties: the smallest), e.g. the platform most
/// of a workload's pods run on; `None` when there are none.
pub fn most_common<T: Ord>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut counts = std::collections::BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0usize) += 1;
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(item, _)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_runs_the_template_pin_is_what_runs_next() {
        let pinned = "reg.example/backup:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let spec = ContainerSpec {
            name: "app".into(),
            image: pinned.into(),
        };
        let idle = observe(std::slice::from_ref(&spec), &[])
            .remove(0)
            .or_next_run();
        assert_eq!(idle.digests().len(), 1);
        assert!(
            idle.running
                .iter()
                .all(|(_, s)| *s == DigestSource::PinnedInSpec)
        );
        let tag_only = ContainerSpec {
            name: "app".into(),
            image: "reg.example/backup:1".into(),
        };
        let unknown = observe(&[tag_only], &[]).remove(0).or_next_run();
        assert!(unknown.running.is_empty(), "a tag alone says nothing");
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn t(s: &str) -> DateTime<Utc> {
        match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => panic!("{e}"),
        }
    }

    fn d(s: &str) -> Digest {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    struct PodBuilder(PodFacts);

    impl PodBuilder {
        fn new(name: &str) -> Self {
            Self(PodFacts {
                name: name.into(),
                terminating: false,
                node: None,
                containers: vec![],
            })
        }
        fn container(
            mut self,
            name: &str,
            image: &str,
            id: Option<&str>,
            since: Option<&str>,
        ) -> Self {
            self.0.containers.push(ContainerFacts {
                name: name.into(),
                pod_image: image.into(),
                image_id: id.map(Into::into),
                running_since: since.map(t),
            });
            self
        }
        fn terminating(mut self) -> Self {
            self.0.terminating = true;
            self
        }
        fn build(self) -> PodFacts {
            self.0
        }
    }

    fn spec(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
        }
    }

    #[test]
    fn image_id_wins_and_oldest_start_is_kept() {
        let pods = [
            PodBuilder::new("p1")
                .container(
                    "app",
                    "reg.io/app:v1",
                    Some(&format!("reg.io/app@{A}")),
                    Some("2026-11-20T00:00:00Z"),
                )
                .build(),
            PodBuilder::new("p2")
                .container(
                    "app",
                    "reg.io/app:v1",
                    Some(&format!("reg.io/app@{A}")),
                    Some("2026-11-21T00:00:00Z"),
                )
                .build(),
        ];
        let obs = observe(&[spec("app", "reg.io/app:v1")], &pods);
        assert_eq!(obs.len(), 1);
        assert_eq!(
            obs[0].running,
            BTreeSet::from([(d(A), DigestSource::ImageId)])
        );
        assert_eq!(obs[0].oldest_start, Some(t("2026-11-20T00:00:00Z")));
        assert_eq!(obs[0].pods_without_digest, 0);
        assert_eq!(
            obs[0].image.as_ref().map(ImageReference::name),
            Ok("reg.io/app".to_owned())
        );
    }

    #[test]
    fn pinned_digest_in_the_pods_own_spec_is_the_fallback() {
        let pods = [PodBuilder::new("p")
            .container(
                "app",
                &format!("reg.io/app:v1@{B}"),
                None,
                Some("2026-11-21T00:00:00Z"),
            )
            .build()];
        let obs = observe(&[spec("app", &format!("reg.io/app:v1@{B}"))], &pods);
        assert_eq!(
            obs[0].running,
            BTreeSet::from([(d(B), DigestSource::PinnedInSpec)])
        );
    }

    #[test]
    fn a_tag_without_image_id_is_unknown_not_guessed() {
        let pods = [PodBuilder::new("p")
            .container("app", "reg.io/app:v1", Some(""), None)
            .build()];
        let obs = observe(&[spec("app", "reg.io/app:v1")], &pods);
        assert!(obs[0].running.is_empty());
        assert_eq!(obs[0].pods_without_digest, 1);
        assert_eq!(obs[0].oldest_start, None);
    }

    #[test]
    fn mid_rollout_both_digests_count_and_terminating_pods_do_not() {
        let pods = [
            PodBuilder::new("old")
                .container(
                    "app",
                    "reg.io/app:v1",
                    Some(&format!("reg.io/app@{A}")),
                    Some("2026-11-01T00:00:00Z"),
                )
                .build(),
            PodBuilder::new("new")
                .container(
                    "app",
                    "reg.io/app:v2",
                    Some(&format!("reg.io/app@{B}")),
                    Some("2026-11-21T00:00:00Z"),
                )
                .build(),
            PodBuilder::new("gone")
                .container(
                    "app",
                    "reg.io/app:v0",
                    Some(&format!("reg.io/app@{A}")),
                    Some("2026-10-01T00:00:00Z"),
                )
                .terminating()
                .build(),
        ];
        let obs = observe(&[spec("app", "reg.io/app:v2")], &pods);
        assert_eq!(obs[0].digests(), BTreeSet::from([&d(A), &d(B)]));
        assert_eq!(obs[0].oldest_start, Some(t("2026-11-01T00:00:00Z")));
    }

    #[test]
    fn update_available_only_when_no_pod_runs_the_tags_digest() {
        let running = |pods: &[PodFacts]| observe(&[spec("app", "reg.io/app:v1")], pods).remove(0);
        let on = |digest: &str| {
            PodBuilder::new("p")
                .container(
                    "app",
                    "reg.io/app:v1",
                    Some(&format!("reg.io/app@{digest}")),
                    None,
                )
                .build()
        };
        let unknown = PodBuilder::new("u")
            .container("app", "reg.io/app:v1", None, None)
            .build();
        assert_eq!(running(&[on(A)]).update_available(&d(A)), Some(false));
        assert_eq!(running(&[on(A)]).update_available(&d(B)), Some(true));
        // Mid-rollout to the tag's digest: not an update any more.
        assert_eq!(
            running(&[on(A), on(B)]).update_available(&d(B)),
            Some(false)
        );
        // Nothing known, or a pod that may run it: unknown, not a guess.
        assert_eq!(
            running(std::slice::from_ref(&unknown)).update_available(&d(B)),
            None
        );
        assert_eq!(running(&[on(A), unknown]).update_available(&d(B)), None);
    }

    #[test]
    fn each_template_container_is_observed_and_bad_images_are_reported() {
        let pods = [PodBuilder::new("p")
            .container(
                "app",
                "reg.io/app:v1",
                Some(&format!("reg.io/app@{A}")),
                Some("2026-11-21T00:00:00Z"),
            )
            .container("sidecar", "Bad Image", None, Some("2026-11-21T00:00:00Z"))
            .build()];
        let obs = observe(
            &[spec("app", "reg.io/app:v1"), spec("sidecar", "Bad Image")],
            &pods,
        );
        assert_eq!(obs.len(), 2);
        assert!(obs[1].image.is_err());
        assert_eq!(obs[1].oldest_start, Some(t("2026-11-21T00:00:00Z")));
    }

    #[test]
    fn the_most_common_item_wins_and_ties_go_to_the_smallest() {
        assert_eq!(most_common(["arm64", "amd64", "arm64"]), Some("arm64"));
        assert_eq!(most_common(["arm64", "amd64"]), Some("amd64"));
        assert_eq!(most_common(Vec::<&str>::new()), None);
    }
}
