//! Base-image staleness: has the upstream base moved on since the image was
//! built?
//!
//! An image names its base in the OCI annotations
//! `org.opencontainers.image.base.name` (the tag it was built from) and
//! `.base.digest` (the digest that tag named at build time), or the workload
//! names it with `freshen.dev/base-image`. The base is stale when its tag now
//! names another digest; when the image does not record the digest, when the
//! base's current build is newer than the image. Anything else is unknown.

use chrono::{DateTime, Utc};

use crate::age::check_build_time;
use crate::image::{Digest, ImageReference};

/// What is known of the base an image was built on, and of that base now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFacts<'a> {
    /// The image's own build time.
    pub image_created: Option<DateTime<Utc>>,
    /// The base digest the image records it was built on.
    pub built_on: Option<&'a Digest>,
    /// The digest the base tag names now.
    pub base_now: &'a Digest,
    /// The build time of that digest.
    pub base_now_created: Option<DateTime<Utc>>,
}

/// Whether the image's base has moved on, judged at `now`: `None` when it
/// cannot be told (no recorded base digest and an unknown build time).
pub fn is_stale(facts: &BaseFacts<'_>, now: DateTime<Utc>) -> Option<bool> {
    if let Some(built_on) = facts.built_on {
        return Some(built_on != facts.base_now);
    }
    let image = check_build_time(facts.image_created, now).ok()?;
    let base = check_build_time(facts.base_now_created, now).ok()?;
    Some(base > image)
}

/// The base to judge: the one the workload names, else the image's own;
/// only a base with a tag to follow can move, so a digest-only base is none.
pub fn to_follow<'a>(
    named: Option<&'a ImageReference>,
    own: Option<&'a ImageReference>,
) -> Option<&'a ImageReference> {
    named.or(own).filter(|b| b.effective_tag().is_some())
}

/// The base digest an image recorded, if it is a digest of the base being
/// judged: when the workload names another base (`named`) than the image's
/// own (`own`), the image's record says nothing about it.
pub fn recorded_digest<'a>(
    named: Option<&ImageReference>,
    own: Option<&ImageReference>,
    recorded: Option<&'a Digest>,
) -> Option<&'a Digest> {
    match (named, own) {
        (Some(named), Some(own)) if named.name() != own.name() => None,
        (Some(_), None) => None,
        _ => recorded,
    }
}

/// One container's verdict from those of its running digests (several while
/// a rollout runs): stale when any is (some pods still run it), with that
/// one's base build time; else fresh when any is known fresh; else unknown.
pub fn combine(
    verdicts: &[(Option<bool>, Option<DateTime<Utc>>)],
) -> (Option<bool>, Option<DateTime<Utc>>) {
    if let Some((_, created)) = verdicts.iter().find(|(stale, _)| *stale == Some(true)) {
        return (Some(true), *created);
    }
    (verdicts.iter().find_map(|(stale, _)| *stale), None)
}

/// Since when the base has been stale: the current base's build time when it
/// is plausible (the patched base existed from then on, whoever noticed),
/// else the first time freshen saw it stale (`previously`), else `now`.
pub fn stale_since(
    base_now_created: Option<DateTime<Utc>>,
    previously: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    check_build_time(base_now_created, now)
        .ok()
        .or(previously)
        .unwrap_or(now)
        .min(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn d(s: &str) -> Digest {
        s.parse().unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const NOW: &str = "2026-11-22T12:00:00Z";

    #[test]
    fn a_recorded_base_digest_decides() {
        let (old, new) = (d(OLD), d(NEW));
        let facts = |built_on, base_now| BaseFacts {
            image_created: None,
            built_on,
            base_now,
            base_now_created: None,
        };
        assert_eq!(is_stale(&facts(Some(&old), &old), t(NOW)), Some(false));
        assert_eq!(is_stale(&facts(Some(&old), &new), t(NOW)), Some(true));
    }

    #[test]
    fn without_a_recorded_digest_build_times_decide_or_nothing_does() {
        let base_now = d(NEW);
        let facts = |image: Option<&str>, base: Option<&str>| BaseFacts {
            image_created: image.map(t),
            built_on: None,
            base_now: &base_now,
            base_now_created: base.map(t),
        };
        let now = t(NOW);
        assert_eq!(
            is_stale(
                &facts(Some("2026-11-01T00:00:00Z"), Some("2026-11-10T00:00:00Z")),
                now
            ),
            Some(true)
        );
        assert_eq!(
            is_stale(
                &facts(Some("2026-11-10T00:00:00Z"), Some("2026-11-01T00:00:00Z")),
                now
            ),
            Some(false)
        );
        // An epoch (reproducible) or missing build time tells nothing.
        assert_eq!(
            is_stale(
                &facts(Some("1970-01-01T00:00:00Z"), Some("2026-11-10T00:00:00Z")),
                now
            ),
            None
        );
        assert_eq!(
            is_stale(&facts(Some("2026-11-01T00:00:00Z"), None), now),
            None
        );
    }

    #[test]
    fn the_named_base_wins_and_a_pinned_base_is_not_followed() {
        let debian = ImageReference::parse("debian:12").unwrap();
        let alpine = ImageReference::parse("alpine:3.20").unwrap();
        let pinned = ImageReference::parse(&format!("debian@{OLD}")).unwrap();
        assert_eq!(to_follow(Some(&alpine), Some(&debian)), Some(&alpine));
        assert_eq!(to_follow(None, Some(&debian)), Some(&debian));
        assert_eq!(to_follow(None, Some(&pinned)), None);
        assert_eq!(to_follow(None, None), None);
    }

    #[test]
    fn a_recorded_digest_counts_only_for_its_own_base() {
        let debian = ImageReference::parse("debian:12").unwrap();
        let alpine = ImageReference::parse("alpine:3.20").unwrap();
        let digest = d(OLD);
        assert_eq!(
            recorded_digest(None, Some(&debian), Some(&digest)),
            Some(&digest)
        );
        assert_eq!(
            recorded_digest(Some(&debian), Some(&debian), Some(&digest)),
            Some(&digest)
        );
        assert_eq!(
            recorded_digest(Some(&alpine), Some(&debian), Some(&digest)),
            None
        );
        assert_eq!(recorded_digest(Some(&alpine), None, Some(&digest)), None);
    }

    #[test]
    fn any_stale_running_digest_makes_the_container_stale() {
        let at = Some(t("2026-11-20T00:00:00Z"));
        assert_eq!(
            combine(&[(Some(false), None), (Some(true), at)]),
            (Some(true), at)
        );
        assert_eq!(
            combine(&[(None, None), (Some(false), None)]),
            (Some(false), None)
        );
        assert_eq!(combine(&[(None, None)]), (None, None));
        assert_eq!(combine(&[]), (None, None));
    }

    #[test]
    fn stale_since_prefers_the_new_bases_build_time() {
        let now = t(NOW);
        let seen = Some(t("2026-11-21T00:00:00Z"));
        assert_eq!(
            stale_since(Some(t("2026-11-20T00:00:00Z")), seen, now),
            t("2026-11-20T00:00:00Z")
        );
        assert_eq!(
            stale_since(Some(DateTime::UNIX_EPOCH), seen, now),
            t("2026-11-21T00:00:00Z")
        );
        assert_eq!(stale_since(None, None, now), now);
    }
}
