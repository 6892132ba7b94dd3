//! Kubernetes timestamps (jiff, in k8s-openapi) to and from chrono's, which
//! freshen-core uses.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

/// A Kubernetes timestamp as chrono's; `None` if out of chrono's range.
pub fn to_chrono(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.subsec_nanosecond()).ok()?;
    DateTime::from_timestamp(t.as_second(), nanos)
}

/// A chrono time as a Kubernetes `Time` (whole seconds, as the API stores
/// them); the Unix epoch if out of range.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A chrono time as a Kubernetes `MicroTime` (microseconds, as Leases
/// store them); the Unix epoch if out of range.
pub fn to_micro_time(t: DateTime<Utc>) -> MicroTime {
    MicroTime(Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_whole_seconds() {
        let t = DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        assert_eq!(to_chrono(&to_time(t).0), Some(t));
        let micro = DateTime::from_timestamp(1_790_000_000, 123_456_000).unwrap_or_default();
        assert_eq!(to_chrono(&to_micro_time(micro).0), Some(micro));
    }
}
