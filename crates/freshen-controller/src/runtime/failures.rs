//! The last failure announced per object, so a reconcile failing every
//! retry interval publishes one Event, not one per retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failure already announced stays quiet.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(3600);
/// Objects whose last failure is remembered at most.
const MAX_REMEMBERED: usize = 10_000;

/// The last failure announced per object, so a reconcile failing every
/// retry interval publishes one Event, not one per retry.
#[derive(Debug, Default)]
pub struct Failures {
    last: Mutex<HashMap<String, (&'static str, Instant)>>,
}

impl Failures {
    /// Whether a failure of `category` on `key` is news at `now` (another
    /// category than last time, or the last announcement is old); records it.
    pub fn is_news(&self, key: &str, category: &'static str, now: Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        if let Some((seen, at)) = last.get(key)
            && *seen == category
            && now.saturating_duration_since(*at) < REANNOUNCE_AFTER
        {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.clear();
        }
        last.insert(key.to_owned(), (category, now));
        true
    }

    /// Forgets `key`'s failure: it reconciled.
    pub fn cleared(&self, key: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_announced_once_per_category_and_again_after_an_hour() {
        let failures = Failures::default();
        let t0 = Instant::now();
        assert!(failures.is_news("Deployment/shop/web", "registry_unavailable", t0));
        assert!(!failures.is_news("Deployment/shop/web", "registry_unavailable", t0));
        assert!(failures.is_news("Deployment/shop/web", "registry_not_found", t0));
        assert!(failures.is_news(
            "Deployment/shop/web",
            "registry_not_found",
            t0 + REANNOUNCE_AFTER
        ));
        failures.cleared("Deployment/shop/web");
        assert!(failures.is_news("Deployment/shop/web", "registry_not_found", t0));
    }
}
