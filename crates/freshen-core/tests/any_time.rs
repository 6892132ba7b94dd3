//! Every pure decision takes any duration and any timestamp without a panic.
//!
//! Durations and timestamps reach the core from tenants (annotations,
//! policies, Refresh specs and statuses) and from registries (build times).
//! A panic in a reconcile used to take the whole operator down, again after
//! every restart; these properties drive `step`, `decide`, `judge`,
//! `next_crossing`, the lease claim and the window arithmetic with values at
//! and beyond chrono's range.

use std::time::Duration;

use chrono::{DateTime, Utc};
use freshen_core::lease::{Holder, claim};
use freshen_core::plan::{ContainerView, Gates, Wants, decide};
use freshen_core::policy::{Ages, EffectiveLimits, Source, Sourced, judge, next_crossing};
use freshen_core::rollout::{
    self, Check, MetricCheck, MetricReading, Observed, OnNoData, Phase, PodHealth, Progress,
    Reason, Settings, Stage, Strategy as Rollout, Target, Verdict, WorkloadState,
};
use freshen_core::{Digest, ImageReference, window};
use proptest::prelude::*;

/// Any instant chrono can represent, with the extremes made likely.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
        Just(DateTime::UNIX_EPOCH),
        (1_700_000_000i64..1_900_000_000).prop_map(at),
        (min..=max).prop_map(at),
    ]
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Any duration, with the extremes made likely.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        any::<u64>().prop_map(Duration::from_secs),
        (0u64..10_000_000).prop_map(Duration::from_secs),
    ]
}

fn seconds() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), any::<u64>(), 0u64..100_000]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), any::<u32>(), 0u32..20]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(Rollout::Canary), Just(Rollout::Rolling)],
        count(),
        seconds(),
        count(),
        count(),
        seconds(),
        proptest::option::of(any::<f64>()),
        any::<bool>(),
    )
        .prop_map(
            |(strategy, weight, interval, iterations, restarts, timeout, max, through_git)| {
                Settings {
                    strategy,
                    canary_weight_percent: weight,
                    interval_seconds: interval,
                    iterations,
                    max_restarts: restarts,
                    readiness_timeout_seconds: timeout,
                    metric: max.map(|max| MetricCheck {
                        query: "up".into(),
                        max,
                        on_no_data: OnNoData::default(),
                        max_consecutive_errors: 2,
                    }),
                    through_git,
                }
            },
        )
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Pending),
        Just(Phase::Rebuilding),
        Just(Phase::Canary),
        Just(Phase::Promoting),
        Just(Phase::RollingBack),
        Just(Phase::Succeeded),
        Just(Phase::RolledBack),
        Just(Phase::Failed),
    ]
}

fn progress() -> impl Strategy<Value = Progress> {
    (
        phase(),
        proptest::collection::vec(proptest::option::of(instant()), 5),
        count(),
        count(),
        count(),
        proptest::option::of(instant()),
    )
        .prop_map(|(phase, times, checks, passes, errors, check)| Progress {
            phase,
            canary_started_at: times[0],
            promoted_at: times[1],
            patched_at: times[2],
            rollback_started_at: times[3],
            finished_at: times[4],
            checks,
            passes,
            metric_errors: errors,
            analysis: check
                .map(|time| Check {
                    time,
                    stage: Stage::Canary,
                    ready: 1,
                    desired: 1,
                    restarts: 0,
                    metric: None,
                    verdict: Verdict::Pass,
                    message: String::new(),
                })
                .into_iter()
                .collect(),
            ..Progress::default()
        })
}

const FROM: &str = "reg.example/shop/api:1.4";
const TO: &str = "reg.example/shop/api:1.4@sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn limits(image: Option<Duration>, container: Option<Duration>) -> EffectiveLimits {
    EffectiveLimits {
        unknown_build_as_first_seen: false,
        max_image_age: image.map(|value| Sourced {
            value,
            source: Source::Annotation,
        }),
        max_container_age: container.map(|value| Sourced {
            value,
            source: Source::Default,
        }),
        track_base_image: Sourced {
            value: true,
            source: Source::Default,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn step_takes_any_settings_and_times(
        settings in settings(),
        progress in progress(),
        now in instant(),
        replicas in count(),
        restarts in count(),
        ready: bool,
        metric in proptest::option::of(any::<f64>()),
    ) {
        let target = Target {
            name: "api-app-222222222222".into(),
            container: "app".into(),
            reason: Reason::NewDigest,
            from_image: FROM.into(),
            to_image: TO.into(),
            settings,
            template: None,
        };
        let pods = vec![PodHealth { name: "p".into(), ready, restarts, reasons: vec![] }];
        let observed = Observed {
            workload: Some(WorkloadState {
                image: FROM.into(),
                restart_token: None,
                template: String::new(),
                replicas,
                rolled_out: ready,
                held: false,
                gave_up: None,
            }),
            canary_exists: true,
            canary_pods: pods.clone(),
            new_pods: pods,
            metric: metric.map(MetricReading::Value),
            ..Observed::default()
        };
        let step = rollout::step(&target, &progress, &observed, now);
        if let Some(wait) = step.requeue {
            prop_assert!(wait <= Duration::from_secs(30));
        }
        let _ = rollout::check_due(&target, &progress, now);
        let _ = target.settings.canary_replicas(replicas);
    }

    #[test]
    fn decide_takes_any_soak_age_and_times(
        min_digest_age in duration(),
        max_container_age in proptest::option::of(duration()),
        created in proptest::option::of(instant()),
        started in proptest::option::of(instant()),
        snooze in proptest::option::of(instant()),
        now in instant(),
    ) {
        let image = ImageReference::parse(FROM).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64)).parse::<Digest>();
        let (Ok(running), Ok(tag)) = (digest('1'), digest('2')) else {
            return Err(TestCaseError::fail("digests"));
        };
        let views = [ContainerView {
            container: "app".into(),
            template_image: FROM.into(),
            image,
            running: Some(running),
            tag_digest: Some(tag),
            tag_digest_created: created,
            oldest_start: started,
        }];
        let windows = ["Mon-Fri 09:00-16:00 Europe/Berlin", "Sat 22:00-02:00 Pacific/Kiritimati"]
            .iter()
            .filter_map(|w| w.parse().ok())
            .collect::<Vec<window::Window>>();
        for follow_tag in [true, false] {
            let wants = Wants { follow_tag, min_digest_age, max_container_age, rejected: vec![], rebuilt: vec![] };
            let gates = Gates {
                unrefreshed: None,
                paused: None,
                gitops: None,
                suspended: false,
                snooze_until: snooze,
                active: None,
                windows: windows.clone(),
                policy_active: (0, Some(u32::MAX)),
                operator_active: (0, u32::MAX),
                namespace_active: (0, u32::MAX),
                other_namespaces: 0,
                verify: None,
            };
            let _ = decide(&views, &wants, &gates, now);
        }
        let _ = window::next_open(&windows, now);
    }

    #[test]
    fn judge_and_next_crossing_take_any_limits_and_ages(
        max_image in proptest::option::of(duration()),
        max_container in proptest::option::of(duration()),
        image in proptest::option::of(duration()),
        container in proptest::option::of(duration()),
        snooze in proptest::option::of(instant()),
        now in instant(),
        poll in duration(),
    ) {
        let limits = limits(max_image, max_container);
        let _ = next_crossing(&limits, image, container);
        let verdict = judge(&limits, &[Ages { image, container, first_seen: image }], snooze, now, poll);
        prop_assert!(verdict.requeue <= poll.max(Duration::from_secs(1)));
    }

    #[test]
    fn a_lease_claim_takes_any_duration_and_times(
        renewed in proptest::option::of(instant()),
        duration in duration(),
        now in instant(),
    ) {
        let holder = Holder { identity: Some("other".into()), renewed, duration, observed: renewed };
        let _ = claim(Some(&holder), "me", now);
    }
}
