//! Which limits govern a workload, and whether it breaks them.
//!
//! Precedence, per setting: the workload's own annotations, then the
//! `RefreshPolicy` that governs it, then the `ClusterRefreshPolicy` that
//! governs it, then the operator's defaults. A setting a level leaves unset
//! falls through to the next. When several policies of one level match, the
//! oldest (creation time, then name) governs and the others are reported as
//! overlapping; they contribute nothing.
//!
//! Ages are judged against limits here with a caller-given age, so the same
//! functions serve the controller, the metrics and `freshen report`.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an effective setting comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Source {
    /// A `freshen.dev/*` annotation on the workload.
    Annotation,
    /// A namespaced `RefreshPolicy`.
    Policy {
        /// Its namespace (the workload's).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterRefreshPolicy`.
    ClusterPolicy {
        /// Its name.
        name: String,
    },
    /// The operator's configured default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Annotation => f.write_str("annotation"),
            Self::Policy { namespace, name } => write!(f, "RefreshPolicy {namespace}/{name}"),
            Self::ClusterPolicy { name } => write!(f, "ClusterRefreshPolicy {name}"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// The settings one level may set; `None` leaves a setting to the next level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Longest an image may have been built ago.
    pub max_image_age: Option<Duration>,
    /// Longest a container may have been running.
    pub max_container_age: Option<Duration>,
    /// Whether base-image staleness is tracked (registry look-ups of bases).
    pub track_base_image: Option<bool>,
    /// Whether an image whose build time is unknown is as old as its digest
    /// has been what its tag names (first seen), for `max_image_age`.
    pub unknown_build_as_first_seen: Option<bool>,
}

/// A policy that matches a workload, as the precedence rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The policy's name.
    pub name: String,
    /// Its creation time; the oldest matching policy governs.
    pub created: Option<DateTime<Utc>>,
    /// What it sets.
    pub limits: Limits,
}

/// A setting's value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    /// The value in force.
    pub value: T,
    /// Who set it.
    pub source: Source,
}

/// The settings in force for a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// The image age limit, if any level sets one.
    pub max_image_age: Option<Sourced<Duration>>,
    /// The container age limit, if any level sets one.
    pub max_container_age: Option<Sourced<Duration>>,
    /// Whether the base image is tracked (default: yes).
    pub track_base_image: Sourced<bool>,
    /// Whether an unknown build time counts as first seen (default: no:
    /// an image of unknown age is never called old).
    pub unknown_build_as_first_seen: bool,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The settings in force.
    pub limits: EffectiveLimits,
    /// The `RefreshPolicy` that governs the workload, if any matches.
    pub policy: Option<String>,
    /// The `ClusterRefreshPolicy` that governs the workload, if any matches.
    pub cluster_policy: Option<String>,
}

/// The policy of `candidates` that governs: the oldest, ties broken by name
/// so every replica of the operator picks the same one. A policy without a
/// creation time (not yet persisted) counts as newest.
pub fn governing(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by(|a, b| {
        let key = |c: &Candidate| (c.created.is_none(), c.created);
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    })
}

/// Resolves the settings of a workload in `namespace` from its annotations,
/// the `RefreshPolicy`s and `ClusterRefreshPolicy`s that match it, and the
/// operator's defaults.
pub fn resolve(
    namespace: &str,
    annotations: &Limits,
    policies: &[Candidate],
    cluster_policies: &[Candidate],
    defaults: &Limits,
) -> Resolution {
    let policy = governing(policies);
    let cluster_policy = governing(cluster_policies);
    let mut levels: Vec<(&Limits, Source)> = vec![(annotations, Source::Annotation)];
    if let Some(p) = policy {
        levels.push((
            &p.limits,
            Source::Policy {
                namespace: namespace.to_owned(),
                name: p.name.clone(),
            },
        ));
    }
    if let Some(p) = cluster_policy {
        levels.push((
            &p.limits,
            Source::ClusterPolicy {
                name: p.name.clone(),
            },
        ));
    }
    levels.push((defaults, Source::Default));

    fn first<T: Copy>(
        levels: &[(&Limits, Source)],
        get: impl Fn(&Limits) -> Option<T>,
    ) -> Option<Sourced<T>> {
        levels.iter().find_map(|(limits, source)| {
            get(limits).map(|value| Sourced {
                value,
                source: source.clone(),
            })
        })
    }
    Resolution {
        limits: EffectiveLimits {
            max_image_age: first(&levels, |l| l.max_image_age),
            max_container_age: first(&levels, |l| l.max_container_age),
            track_base_image: first(&levels, |l| l.track_base_image).unwrap_or(Sourced {
                value: true,
                source: Source::Default,
            }),
            unknown_build_as_first_seen: first(&levels, |l| l.unknown_build_as_first_seen)
                .is_some_and(|s| s.value),
        },
        policy: policy.map(|p| p.name.clone()),
        cluster_policy: cluster_policy.map(|p| p.name.clone()),
    }
}

/// Which limit a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LimitKind {
    /// `maxImageAge`.
    MaxImageAge,
    /// `maxContainerAge`.
    MaxContainerAge,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaxImageAge => "image age",
            Self::MaxContainerAge => "container age",
        })
    }
}

/// A limit a container is past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which limit.
    pub kind: LimitKind,
    /// The container's age.
    pub age: Duration,
    /// The limit it is past, and who set it.
    pub limit: Sourced<Duration>,
    /// The age is how long the digest has been what its tag names: the
    /// image's build time is unknown, and the limits say to use it.
    pub first_seen: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} exceeds {} (from {})",
            self.kind,
            crate::short_age(self.age),
            crate::HumanDuration(self.limit.value),
            self.limit.source
        )?;
        if self.first_seen {
            f.write_str("; its build time is unknown, so this is since its digest was first seen")?;
        }
        Ok(())
    }
}

/// One limit to judge: which, the age, and the limit if one applies.
type Check<'a> = (LimitKind, Option<Duration>, Option<&'a Sourced<Duration>>);

fn checks(
    limits: &EffectiveLimits,
    image_age: Option<Duration>,
    container_age: Option<Duration>,
) -> [Check<'_>; 2] {
    [
        (
            LimitKind::MaxImageAge,
            image_age,
            limits.max_image_age.as_ref(),
        ),
        (
            LimitKind::MaxContainerAge,
            container_age,
            limits.max_container_age.as_ref(),
        ),
    ]
}

/// The limits a container is past. An unknown age never violates: an image
/// whose build time cannot be trusted is not called old.
pub fn violations(
    limits: &EffectiveLimits,
    image_age: Option<Duration>,
    container_age: Option<Duration>,
) -> Vec<Violation> {
    checks(limits, image_age, container_age)
        .into_iter()
        .filter_map(|(kind, age, limit)| {
            let (age, limit) = (age?, limit?);
            (age > limit.value).then(|| Violation {
                kind,
                age,
                limit: limit.clone(),
                first_seen: false,
            })
        })
        .collect()
}

/// How long until the next limit not yet crossed will be: the moment to
/// look at the workload again. `None` when no known age approaches a limit.
pub fn next_crossing(
    limits: &EffectiveLimits,
    image_age: Option<Duration>,
    container_age: Option<Duration>,
) -> Option<Duration> {
    checks(limits, image_age, container_age)
        .into_iter()
        .filter_map(|(_, age, limit)| {
            let (age, limit) = (age?, limit?);
            // Strictly past the limit is a violation, so the crossing is
            // one second after the limit is reached.
            (age <= limit.value).then(|| (limit.value - age).saturating_add(Duration::from_secs(1)))
        })
        .min()
}

/// Whether a workload's `snooze-until` is still in the future: its
/// violations are shown as snoozed, and nothing acts on them.
pub fn snoozed(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    until.is_some_and(|until| until > now)
}

/// The ages of one container at the time of judging; `None` when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ages {
    /// How long ago its running image was built.
    pub image: Option<Duration>,
    /// How long its oldest instance has run.
    pub container: Option<Duration>,
    /// How long the digest it runs has been what its tag names.
    pub first_seen: Option<Duration>,
}

impl Ages {
    /// The image age the limits judge: the build age, else (when the
    /// limits say so) how long the digest has been what its tag names; and
    /// whether it is the latter.
    pub fn image_age(&self, limits: &EffectiveLimits) -> (Option<Duration>, bool) {
        match (self.image, self.first_seen) {
            (Some(built), _) => (Some(built), false),
            (None, Some(seen)) if limits.unknown_build_as_first_seen => (Some(seen), true),
            _ => (None, false),
        }
    }
}

/// A workload's verdict against its limits, from [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Per container, in the order given, the limits it is past.
    pub violations: Vec<Vec<Violation>>,
    /// Whether `snooze-until` is still in the future.
    pub snoozed: bool,
    /// The sources of the limits past; empty while snoozed. What a policy's
    /// violating count and a new-violation Event are decided on.
    pub violating: BTreeSet<Source>,
    /// When to look at the workload again: the next limit crossing or the
    /// end of the snooze, at most the poll interval, at least a second.
    pub requeue: Duration,
}

impl Judgement {
    /// Whether it now violates a limit of a source it did not violate
    /// before (worth a new Event).
    pub fn newly_violating(&self, before: &BTreeSet<Source>) -> bool {
        !self.violating.is_subset(before)
    }
}

/// Judges a workload's containers against `limits` at `now`.
pub fn judge(
    limits: &EffectiveLimits,
    containers: &[Ages],
    snooze_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    poll_interval: Duration,
) -> Judgement {
    let snoozed = snoozed(snooze_until, now);
    let violations: Vec<Vec<Violation>> = containers
        .iter()
        .map(|a| {
            let (image, first_seen) = a.image_age(limits);
            let mut found = self::violations(limits, image, a.container);
            for v in &mut found {
                v.first_seen = first_seen && v.kind == LimitKind::MaxImageAge;
            }
            found
        })
        .collect();
    let violating = if snoozed {
        BTreeSet::new()
    } else {
        violations
            .iter()
            .flatten()
            .map(|v| v.limit.source.clone())
            .collect()
    };
    let snooze_ends = snooze_until
        .filter(|_| snoozed)
        .and_then(|until| (until - now).to_std().ok());
    let next = containers
        .iter()
        .filter_map(|a| next_crossing(limits, a.image_age(limits).0, a.container))
        .chain(snooze_ends)
        .min();
    let requeue = next
        .map_or(poll_interval, |n| n.min(poll_interval))
        .max(Duration::from_secs(1));
    Judgement {
        violations,
        snoozed,
        violating,
        requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * DAY)
    }

    fn at(day: u32) -> Option<DateTime<Utc>> {
        Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).single()
    }

    fn candidate(
        name: &str,
        created: u32,
        image: Option<u64>,
        container: Option<u64>,
    ) -> Candidate {
        Candidate {
            name: name.into(),
            created: at(created),
            limits: Limits {
                unknown_build_as_first_seen: None,
                max_image_age: image.map(days),
                max_container_age: container.map(days),
                track_base_image: None,
            },
        }
    }

    fn policy(name: &str) -> Source {
        Source::Policy {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn each_setting_falls_through_to_the_first_level_that_sets_it() {
        let annotations = Limits {
            max_container_age: Some(days(1)),
            ..Limits::default()
        };
        let ns = [candidate("team", 1, Some(30), None)];
        let cluster = [candidate("baseline", 1, Some(90), Some(60))];
        let defaults = Limits {
            unknown_build_as_first_seen: None,
            max_image_age: Some(days(365)),
            max_container_age: Some(days(365)),
            track_base_image: Some(false),
        };
        let r = resolve("shop", &annotations, &ns, &cluster, &defaults);
        assert_eq!(
            r.limits.max_image_age,
            Some(Sourced {
                value: days(30),
                source: policy("team")
            })
        );
        assert_eq!(
            r.limits.max_container_age,
            Some(Sourced {
                value: days(1),
                source: Source::Annotation
            })
        );
        assert_eq!(
            r.limits.track_base_image,
            Sourced {
                value: false,
                source: Source::Default
            }
        );
        assert_eq!(r.policy.as_deref(), Some("team"));
        assert_eq!(r.cluster_policy.as_deref(), Some("baseline"));

        // Without the namespaced policy, the cluster policy fills both.
        let r = resolve("shop", &Limits::default(), &[], &cluster, &defaults);
        assert_eq!(
            r.limits.max_image_age.map(|s| (s.value, s.source)),
            Some((
                days(90),
                Source::ClusterPolicy {
                    name: "baseline".into()
                }
            ))
        );
    }

    #[test]
    fn nothing_set_anywhere_means_no_limit_and_base_tracking_on() {
        let r = resolve("shop", &Limits::default(), &[], &[], &Limits::default());
        assert_eq!(r.limits.max_image_age, None);
        assert_eq!(r.limits.max_container_age, None);
        assert!(r.limits.track_base_image.value);
        assert_eq!((r.policy, r.cluster_policy), (None, None));
    }

    #[test]
    fn the_oldest_policy_of_a_level_governs_then_the_first_name() {
        let ns = [
            candidate("newer", 5, Some(1), None),
            candidate("older", 2, Some(7), None),
            candidate("unsaved", 1, Some(3), None),
        ];
        let mut ns = ns.to_vec();
        ns[2].created = None;
        assert_eq!(governing(&ns).map(|c| c.name.as_str()), Some("older"));
        let r = resolve("shop", &Limits::default(), &ns, &[], &Limits::default());
        assert_eq!(r.limits.max_image_age.map(|s| s.value), Some(days(7)));

        let tie = [
            candidate("b", 3, Some(1), None),
            candidate("a", 3, Some(2), None),
        ];
        assert_eq!(governing(&tie).map(|c| c.name.as_str()), Some("a"));
        assert_eq!(governing(&[]), None);
    }

    #[test]
    fn an_unknown_build_time_is_judged_by_first_seen_only_when_the_limits_say() {
        let reproducible = [Ages {
            image: None,
            container: None,
            first_seen: Some(days(40)),
        }];
        let now = Utc::now();
        let strict = limits(Some(30), None);
        let quiet = judge(&strict, &reproducible, None, now, days(1));
        assert!(quiet.violations[0].is_empty(), "unknown is never old");
        let by_seen = EffectiveLimits {
            unknown_build_as_first_seen: true,
            ..strict
        };
        let old = judge(&by_seen, &reproducible, None, now, days(1));
        assert_eq!(old.violations[0].len(), 1);
        assert!(old.violations[0][0].first_seen);
        assert!(
            old.violations[0][0]
                .to_string()
                .ends_with("its build time is unknown, so this is since its digest was first seen"),
            "{}",
            old.violations[0][0]
        );
        // A known build time always wins.
        let built = [Ages {
            image: Some(days(2)),
            ..reproducible[0]
        }];
        assert!(judge(&by_seen, &built, None, now, days(1)).violations[0].is_empty());
    }

    fn limits(image: Option<u64>, container: Option<u64>) -> EffectiveLimits {
        let sourced = |d| Sourced {
            value: days(d),
            source: policy("team"),
        };
        EffectiveLimits {
            unknown_build_as_first_seen: false,
            max_image_age: image.map(sourced),
            max_container_age: container.map(sourced),
            track_base_image: Sourced {
                value: true,
                source: Source::Default,
            },
        }
    }

    #[test]
    fn only_known_ages_strictly_past_a_limit_violate() {
        let l = limits(Some(5), Some(3));
        let v = violations(&l, Some(days(10)), Some(days(1)));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, LimitKind::MaxImageAge);
        assert_eq!(
            v[0].to_string(),
            "image age 10d exceeds 5d (from RefreshPolicy shop/team)"
        );
        // Exactly at the limit is not past it; unknown ages never violate.
        assert!(violations(&l, Some(days(5)), Some(days(3))).is_empty());
        assert!(violations(&l, None, None).is_empty());
        assert!(violations(&limits(None, None), Some(days(999)), Some(days(999))).is_empty());
        let both = violations(&l, Some(days(6)), Some(days(4)));
        assert_eq!(
            both.iter().map(|v| v.kind).collect::<Vec<_>>(),
            [LimitKind::MaxImageAge, LimitKind::MaxContainerAge]
        );
    }

    #[test]
    fn the_next_crossing_is_the_nearest_limit_not_yet_passed() {
        let l = limits(Some(5), Some(3));
        let second = Duration::from_secs(1);
        assert_eq!(
            next_crossing(&l, Some(days(4)), Some(days(1))),
            Some(days(1) + second)
        );
        assert_eq!(
            next_crossing(&l, Some(days(1)), Some(days(1))),
            Some(days(2) + second)
        );
        // Past limits no longer approach; nothing known, nothing to wait for.
        assert_eq!(
            next_crossing(&l, Some(days(9)), Some(days(2))),
            Some(days(1) + second)
        );
        assert_eq!(next_crossing(&l, Some(days(9)), Some(days(9))), None);
        assert_eq!(next_crossing(&l, None, None), None);
        assert_eq!(
            next_crossing(&limits(None, None), Some(days(1)), None),
            None
        );
    }

    #[test]
    fn a_snooze_lasts_until_its_time() {
        let now = at(10).unwrap_or_default();
        assert!(snoozed(at(11), now));
        assert!(!snoozed(at(10), now));
        assert!(!snoozed(at(9), now));
        assert!(!snoozed(None, now));
    }

    #[test]
    fn sources_read_as_users_name_them() {
        assert_eq!(Source::Annotation.to_string(), "annotation");
        assert_eq!(policy("team").to_string(), "RefreshPolicy shop/team");
        assert_eq!(
            Source::ClusterPolicy {
                name: "baseline".into()
            }
            .to_string(),
            "ClusterRefreshPolicy baseline"
        );
        assert_eq!(Source::Default.to_string(), "default");
    }

    proptest! {
        /// Waiting exactly until the next crossing produces a new violation,
        /// and no limit is crossed any earlier.
        #[test]
        fn waiting_for_the_next_crossing_is_exact(
            image_limit in 1u64..1_000_000,
            container_limit in 1u64..1_000_000,
            image_age in 0u64..2_000_000,
            container_age in 0u64..2_000_000,
        ) {
            let s = Duration::from_secs;
            let sourced = |d| Sourced { value: s(d), source: Source::Default };
            let l = EffectiveLimits {
                unknown_build_as_first_seen: false,
                max_image_age: Some(sourced(image_limit)),
                max_container_age: Some(sourced(container_limit)),
                track_base_image: Sourced { value: true, source: Source::Default },
            };
            let before = violations(&l, Some(s(image_age)), Some(s(container_age))).len();
            match next_crossing(&l, Some(s(image_age)), Some(s(container_age))) {
                None => prop_assert_eq!(before, 2),
                Some(wait) => {
                    let w = wait.as_secs();
                    let later = violations(&l, Some(s(image_age + w)), Some(s(container_age + w)));
                    prop_assert!(later.len() > before);
                    let earlier = violations(
                        &l,
                        Some(s(image_age + w - 1)),
                        Some(s(container_age + w - 1)),
                    );
                    prop_assert_eq!(earlier.len(), before);
                }
            }
        }

        /// The governing policy does not depend on the order policies are listed in.
        #[test]
        fn governing_ignores_listing_order(
            created in proptest::collection::vec(1u32..28, 1..6),
        ) {
            let list: Vec<Candidate> = created
                .iter()
                .enumerate()
                .map(|(i, d)| candidate(&format!("p{i}"), *d, Some(1), None))
                .collect();
            let mut reversed = list.clone();
            reversed.reverse();
            prop_assert_eq!(
                governing(&list).map(|c| c.name.clone()),
                governing(&reversed).map(|c| c.name.clone())
            );
        }
    }

    #[test]
    fn judging_a_workload_collects_violations_sources_and_the_next_look() {
        let now = at(10).unwrap_or_default();
        let l = limits(Some(5), Some(3));
        let poll = Duration::from_secs(300);
        let ages = [
            Ages {
                first_seen: None,
                image: Some(days(10)),
                container: Some(days(1)),
            },
            Ages {
                first_seen: None,
                image: Some(Duration::from_secs(5 * DAY - 60)),
                container: None,
            },
        ];
        let j = judge(&l, &ages, None, now, poll);
        assert_eq!(j.violations[0].len(), 1);
        assert!(j.violations[1].is_empty());
        assert_eq!(j.violating, BTreeSet::from([policy("team")]));
        // The second container crosses its limit in 61 s, before the poll.
        assert_eq!(j.requeue, Duration::from_secs(61));
        assert!(j.newly_violating(&BTreeSet::new()));
        assert!(!j.newly_violating(&BTreeSet::from([policy("team")])));

        // Nothing approaching: the poll interval.
        let calm = [Ages {
            first_seen: None,
            image: Some(days(1)),
            container: None,
        }];
        assert_eq!(judge(&l, &calm, None, now, poll).requeue, poll);
    }

    #[test]
    fn a_snooze_hides_violations_from_counts_until_it_ends() {
        let now = at(10).unwrap_or_default();
        let l = limits(Some(5), None);
        let old = [Ages {
            first_seen: None,
            image: Some(days(10)),
            container: None,
        }];
        let until = now + chrono::TimeDelta::seconds(90);
        let j = judge(&l, &old, Some(until), now, Duration::from_secs(3600));
        assert!(j.snoozed);
        assert_eq!(j.violations[0].len(), 1, "still shown");
        assert!(j.violating.is_empty(), "but counted nowhere");
        assert_eq!(j.requeue, Duration::from_secs(90), "looked at when it ends");
        let ended = judge(&l, &old, Some(until), until, Duration::from_secs(3600));
        assert!(!ended.snoozed && !ended.violating.is_empty());
    }
}
