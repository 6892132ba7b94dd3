//! Image age and container age, computed from facts and a caller-given `now`.
//!
//! A build time of the Unix epoch (reproducible builds set
//! `SOURCE_DATE_EPOCH=0`), before it, or in the future is *unknown*, never
//! old: freshen must not rebuild or alert on an image because its builder
//! zeroed the timestamp.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the build machine and ours: a build time at
/// most this far in the future counts as "just built" rather than unknown.
pub const FUTURE_SKEW_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// Why an image's age is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownAge {
    /// Neither config `created` nor the `org.opencontainers.image.created`
    /// annotation is present or parseable.
    Missing,
    /// The build time is the Unix epoch or earlier (a zeroed timestamp).
    Epoch,
    /// The build time lies in the future beyond the skew tolerance.
    Future,
}

/// The age of an image: how long ago the running digest was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAge {
    /// The build time is plausible; this is `now - created`.
    Known(Duration),
    /// The build time cannot be trusted; the reason says why.
    Unknown(UnknownAge),
}

impl ImageAge {
    /// The age when known.
    pub fn known(self) -> Option<Duration> {
        match self {
            Self::Known(age) => Some(age),
            Self::Unknown(_) => None,
        }
    }
}

/// Whether a build time is plausible, judged at `now`.
pub fn check_build_time(
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, UnknownAge> {
    let created = created.ok_or(UnknownAge::Missing)?;
    if created <= DateTime::UNIX_EPOCH {
        return Err(UnknownAge::Epoch);
    }
    if created
        > now
            .checked_add_signed(FUTURE_SKEW_TOLERANCE)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    {
        return Err(UnknownAge::Future);
    }
    Ok(created)
}

/// The age at `now` of an image built at `created`.
pub fn image_age(created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ImageAge {
    match check_build_time(created, now) {
        Ok(created) => ImageAge::Known(elapsed(created, now)),
        Err(why) => ImageAge::Unknown(why),
    }
}

/// The age at `now` of the oldest of the given container start times, or
/// `None` when no container is running.
pub fn container_age(
    started: impl IntoIterator<Item = DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    started.into_iter().min().map(|oldest| elapsed(oldest, now))
}

/// `now - then`, zero when `then` is later than `now` (clock skew between the
/// API server and us must not produce negative ages).
pub fn elapsed(then: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// `t + d`, saturating at the latest time chrono represents: a deadline
/// computed from a huge (tenant-written) duration is "never", not a panic.
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    const NOW: &str = "2026-11-22T12:00:00Z";

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = at(NOW);
        assert_eq!(
            later(now, Duration::from_secs(60)),
            at("2026-11-22T12:01:00Z")
        );
        assert_eq!(later(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            later(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
        assert!(check_build_time(Some(now), DateTime::<Utc>::MAX_UTC).is_ok());
    }

    #[test]
    fn plausible_build_time_gives_its_age() {
        let age = image_age(Some(at("2026-11-12T12:00:00Z")), at(NOW));
        assert_eq!(age, ImageAge::Known(Duration::from_secs(10 * 86_400)));
        assert_eq!(age.known(), Some(Duration::from_secs(864_000)));
    }

    #[test]
    fn epoch_and_earlier_are_unknown_not_old() {
        assert_eq!(
            image_age(Some(DateTime::UNIX_EPOCH), at(NOW)),
            ImageAge::Unknown(UnknownAge::Epoch)
        );
        assert_eq!(
            image_age(Some(at("0001-01-01T00:00:00Z")), at(NOW)),
            ImageAge::Unknown(UnknownAge::Epoch)
        );
        assert_eq!(
            image_age(None, at(NOW)),
            ImageAge::Unknown(UnknownAge::Missing)
        );
    }

    #[test]
    fn future_is_unknown_beyond_skew_only() {
        assert_eq!(
            image_age(Some(at("2026-11-22T12:03:00Z")), at(NOW)),
            ImageAge::Known(Duration::ZERO)
        );
        assert_eq!(
            image_age(Some(at("2026-11-22T12:06:00Z")), at(NOW)),
            ImageAge::Unknown(UnknownAge::Future)
        );
        assert_eq!(
            image_age(Some(at("2030-01-01T00:00:00Z")), at(NOW)),
            ImageAge::Unknown(UnknownAge::Future)
        );
    }

    #[test]
    fn container_age_is_that_of_the_oldest() {
        let starts = [at("2026-11-22T11:00:00Z"), at("2026-11-20T12:00:00Z")];
        assert_eq!(
            container_age(starts, at(NOW)),
            Some(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(container_age([], at(NOW)), None);
        // A start time after `now` (skew) is age zero, never negative.
        assert_eq!(
            container_age([at("2026-11-22T12:00:05Z")], at(NOW)),
            Some(Duration::ZERO)
        );
    }
}
