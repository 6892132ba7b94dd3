//! How many tags freshen records, and for whom: a TagRecord (since when a
//! tag has named its digest) is written for any tag a workload names, its
//! base annotation included, so a tenant who churns
//! `freshen.dev/base-image` could otherwise have freshen write records
//! without end, to etcd and to the memory of every replica watching them.
//!
//! A new tag is recorded only within three bounds: a token bucket per
//! workload (a burst, then a steady rate), a cap per namespace the tags
//! came from, and a cap over all. A tag refused a record is still
//! answered, from memory, for as long as the process runs. Records nothing
//! has looked at for the retention are deleted.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The bounds on recorded tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagLimits {
    /// Records at most, over all.
    pub total: usize,
    /// Records at most that one namespace's workloads brought.
    pub per_namespace: usize,
    /// New tags one workload may have recorded at once.
    pub burst: u32,
    /// Then one more each this often.
    pub refill: Duration,
}

impl Default for TagLimits {
    fn default() -> Self {
        Self {
            total: 20_000,
            per_namespace: 1_000,
            burst: 20,
            refill: Duration::from_secs(60),
        }
    }
}

/// Why a new tag gets no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagRefusal {
    /// The workload used up its burst of new tags.
    Workload,
    /// Its namespace's tags hold `per_namespace` records.
    Namespace,
    /// `total` records exist.
    Total,
}

impl TagRefusal {
    /// The bounded `reason` label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Workload => "workload_rate",
            Self::Namespace => "namespace_cap",
            Self::Total => "total_cap",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

/// Token buckets of new tags per workload (`namespace/name`). Buckets that
/// are full again are forgotten, so it holds only workloads that recently
/// brought new tags.
#[derive(Debug, Default)]
pub struct TagBudget {
    buckets: HashMap<String, Bucket>,
}

/// Buckets kept at most; past it, full ones are dropped first, then all
/// (a workload then gets a new burst, which the caps still bound).
const MAX_BUCKETS: usize = 10_000;

impl TagBudget {
    /// Whether `workload` may have a new tag recorded at `now`, given (when
    /// asked) the records its namespace's tags hold and all records. A
    /// token is taken only when it may.
    pub fn admit(
        &mut self,
        limits: &TagLimits,
        workload: &str,
        now: DateTime<Utc>,
        records: impl FnOnce() -> (usize, usize),
    ) -> Result<(), TagRefusal> {
        let burst = f64::from(limits.burst);
        let per_second = 1.0 / limits.refill.as_secs_f64().max(0.001);
        let refilled = |b: &Bucket| {
            let seconds = (now - b.at).num_milliseconds().max(0) as f64 / 1000.0;
            (b.tokens + seconds * per_second).min(burst)
        };
        let tokens = self.buckets.get(workload).map_or(burst, refilled);
        if tokens < 1.0 {
            return Err(TagRefusal::Workload);
        }
        // Counted only once the workload may: a flood of refused tags
        // costs no scan of the records.
        let (namespace_records, total_records) = records();
        if total_records >= limits.total {
            return Err(TagRefusal::Total);
        }
        if namespace_records >= limits.per_namespace {
            return Err(TagRefusal::Namespace);
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(workload) {
            self.buckets.retain(|_, b| refilled(b) < burst);
            if self.buckets.len() >= MAX_BUCKETS {
                self.buckets.clear();
            }
        }
        self.buckets.insert(
            workload.to_owned(),
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }
}

/// Whether a record last looked at `seen` (never, this process: `None`)
/// is to be deleted at `now`: when nothing has looked at it for
/// `retention`, and this process has been looking for at least that long
/// (`started`), so a restart deletes nothing it has not had time to see.
pub fn expired(
    seen: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
    retention: Duration,
    now: DateTime<Utc>,
) -> bool {
    let old = |t: DateTime<Utc>| crate::age::elapsed(t, now) >= retention;
    old(started) && seen.is_none_or(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    const LIMITS: TagLimits = TagLimits {
        total: 100,
        per_namespace: 10,
        burst: 3,
        refill: Duration::from_secs(60),
    };

    #[test]
    fn a_workload_gets_a_burst_then_one_new_tag_a_minute() {
        let mut budget = TagBudget::default();
        for _ in 0..3 {
            assert_eq!(budget.admit(&LIMITS, "t/app", at(0), || (0, 0)), Ok(()));
        }
        assert_eq!(
            budget.admit(&LIMITS, "t/app", at(1), || (0, 0)),
            Err(TagRefusal::Workload)
        );
        // Another workload has its own bucket.
        assert_eq!(budget.admit(&LIMITS, "t/other", at(1), || (0, 0)), Ok(()));
        assert_eq!(budget.admit(&LIMITS, "t/app", at(61), || (0, 0)), Ok(()));
        assert_eq!(
            budget.admit(&LIMITS, "t/app", at(62), || (0, 0)),
            Err(TagRefusal::Workload)
        );
        // 10,000 changes in a minute still bring one more tag, no more.
        let refused = (0..10_000)
            .filter(|i| {
                budget
                    .admit(&LIMITS, "t/app", at(121 + i / 1000), || (0, 0))
                    .is_err()
            })
            .count();
        assert_eq!(refused, 9_999);
    }

    #[test]
    fn the_caps_hold_and_take_no_token() {
        let mut budget = TagBudget::default();
        assert_eq!(
            budget.admit(&LIMITS, "t/app", at(0), || (10, 10)),
            Err(TagRefusal::Namespace)
        );
        assert_eq!(
            budget.admit(&LIMITS, "t/app", at(0), || (0, 100)),
            Err(TagRefusal::Total)
        );
        for _ in 0..3 {
            assert_eq!(budget.admit(&LIMITS, "t/app", at(0), || (9, 99)), Ok(()));
        }
        assert_eq!(TagRefusal::Total.label(), "total_cap");
    }

    #[test]
    fn buckets_stay_bounded() {
        let mut budget = TagBudget::default();
        for i in 0..(MAX_BUCKETS + 5) {
            let _ = budget.admit(&LIMITS, &format!("t/app-{i}"), at(0), || (0, 0));
        }
        assert!(budget.buckets.len() <= MAX_BUCKETS);
    }

    #[test]
    fn records_expire_only_after_the_process_had_time_to_see_them() {
        let day = Duration::from_secs(86_400);
        assert!(!expired(None, at(0), day, at(3_600)), "just started");
        assert!(expired(None, at(0), day, at(86_400)));
        assert!(!expired(Some(at(80_000)), at(0), day, at(86_400)));
        assert!(expired(Some(at(0)), at(0), day, at(86_400)));
    }
}
