//! Leader election over a `coordination.k8s.io` Lease: the decision only.
//!
//! One operator acts at a time; the others wait. The holder renews the Lease
//! every retry period; a Lease not renewed for its duration is free to take
//! over. The executor's resourceVersion guards stay: they make two leaders
//! (a paused process waking up after losing the Lease) safe, and the Lease
//! makes them rare.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What a Lease says, as the election needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `spec.holderIdentity`; `None` or empty when released.
    pub identity: Option<String>,
    /// `spec.renewTime` (or `acquireTime` when never renewed).
    pub renewed: Option<DateTime<Utc>>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// When this process first saw the Lease as it is now (same
    /// resourceVersion), by its own clock. Expiry is judged from it, as
    /// client-go does: the holder's clock may be skewed, ours only moves
    /// forward. `None`: judged from `renewed`.
    pub observed: Option<DateTime<Utc>>,
}

/// What to do about the Lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// There is no Lease: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Released, or not renewed in time: take it over (one more
    /// transition).
    TakeOver,
    /// Someone else holds it; it expires then unless renewed.
    Wait(DateTime<Utc>),
}

/// The claim `me` makes on `lease` at `now`.
pub fn claim(lease: Option<&Holder>, me: &str, now: DateTime<Utc>) -> Claim {
    let Some(lease) = lease else {
        return Claim::Create;
    };
    match lease.identity.as_deref() {
        None | Some("") => return Claim::TakeOver,
        Some(holder) if holder == me => return Claim::Renew,
        Some(_) => {}
    }
    let Some(since) = lease.observed.or(lease.renewed) else {
        return Claim::TakeOver;
    };
    let expires = crate::age::later(since, lease.duration);
    if expires <= now {
        Claim::TakeOver
    } else {
        Claim::Wait(expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap_or_default()
    }

    fn held_by(who: Option<&str>, renewed: Option<i64>) -> Holder {
        Holder {
            identity: who.map(str::to_owned),
            renewed: renewed.map(at),
            duration: Duration::from_secs(15),
            observed: None,
        }
    }

    #[test]
    fn expiry_is_judged_by_when_we_saw_the_lease_not_by_the_holders_clock() {
        // The holder's clock is an hour behind: its renewTime looks ancient,
        // but we saw this very record only 5 s ago.
        let skewed = Holder {
            observed: Some(at(3_595)),
            ..held_by(Some("other"), Some(0))
        };
        assert_eq!(
            claim(Some(&skewed), "me", at(3_600)),
            Claim::Wait(at(3_610))
        );
        assert_eq!(claim(Some(&skewed), "me", at(3_610)), Claim::TakeOver);
        // A holder clock ahead of ours cannot keep the Lease forever either.
        let ahead = Holder {
            observed: Some(at(0)),
            ..held_by(Some("other"), Some(86_400))
        };
        assert_eq!(claim(Some(&ahead), "me", at(15)), Claim::TakeOver);
    }

    #[test]
    fn claims() {
        let cases = [
            ("no lease yet", None, 0, Claim::Create),
            ("ours", Some(held_by(Some("me"), Some(0))), 5, Claim::Renew),
            (
                "ours even when late: renew, nobody took it",
                Some(held_by(Some("me"), Some(0))),
                60,
                Claim::Renew,
            ),
            (
                "someone else's, fresh",
                Some(held_by(Some("other"), Some(0))),
                14,
                Claim::Wait(at(15)),
            ),
            (
                "someone else's, expired",
                Some(held_by(Some("other"), Some(0))),
                15,
                Claim::TakeOver,
            ),
            (
                "released",
                Some(held_by(Some(""), Some(0))),
                1,
                Claim::TakeOver,
            ),
            (
                "no holder",
                Some(held_by(None, Some(0))),
                1,
                Claim::TakeOver,
            ),
            (
                "never renewed",
                Some(held_by(Some("other"), None)),
                1,
                Claim::TakeOver,
            ),
        ];
        for (name, lease, now, want) in cases {
            assert_eq!(claim(lease.as_ref(), "me", at(now)), want, "{name}");
        }
    }
}
