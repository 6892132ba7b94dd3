//! Each registry's request budget: a token bucket (steady rate, bounded
//! burst) and exponential backoff with jitter after it answers 429, 5xx or
//! not at all. Pure: callers pass the time and the jitter.

use std::time::Duration;

use tokio::time::Instant;

/// Limits of one registry's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Requests per second, sustained.
    pub rate: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
    /// First backoff after a failure; doubled per consecutive failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 40,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// The state of one registry's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Tokens available; negative while requests wait for tokens.
    tokens: f64,
    last: Instant,
    failures: u32,
    not_before: Option<Instant>,
}

impl Budget {
    /// A full bucket at `now`.
    pub fn new(config: &BudgetConfig, now: Instant) -> Self {
        Self {
            tokens: f64::from(config.burst.max(1)),
            last: now,
            failures: 0,
            not_before: None,
        }
    }

    /// Reserves one request at `now`: `Ok(wait)` is how long it must wait
    /// for its token (zero when one is available); `Err(until)` refuses it
    /// while the registry is backed off, taking no token.
    pub fn acquire(&mut self, config: &BudgetConfig, now: Instant) -> Result<Duration, Instant> {
        if let Some(until) = self.not_before.filter(|until| *until > now) {
            return Err(until);
        }
        let rate = config.rate.max(f64::MIN_POSITIVE);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(config.burst.max(1)));
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Ok(Duration::ZERO)
        } else {
            Ok(Duration::from_secs_f64(-self.tokens / rate))
        }
    }

    /// The registry answered: the backoff resets.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }

    /// The registry failed in a way that asks for less traffic. No request
    /// goes before the returned instant: `base * 2^(failures-1)`, capped,
    /// scaled by `jitter` (in [0, 1)) into its upper half so that clients
    /// do not retry in lockstep.
    pub fn on_failure(&mut self, config: &BudgetConfig, now: Instant, jitter: f64) -> Instant {
        self.failures = self.failures.saturating_add(1);
        let exponent = i32::try_from(self.failures - 1).unwrap_or(i32::MAX).min(30);
        let full = config
            .backoff_base
            .as_secs_f64()
            .mul_add(2f64.powi(exponent), 0.0)
            .min(config.backoff_max.as_secs_f64());
        let scaled = full * (0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        let until = now + Duration::from_secs_f64(scaled);
        self.not_before = Some(until);
        until
    }
}

impl Budget {
    /// Whether requests are held back at `now` (after failures): the only
    /// state of a budget worth keeping when hosts are pruned.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|until| until > now)
    }

    /// Holds requests back until at least `at` (a registry's `Retry-After`);
    /// returns when they may go again.
    pub fn hold_until(&mut self, at: Instant) -> Instant {
        let until = self.not_before.map_or(at, |current| current.max(at));
        self.not_before = Some(until);
        until
    }
}

/// Whether an HTTP status (or none: no answer) asks for backoff.
pub fn backs_off(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(code) => code == 429 || (500..=599).contains(&code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BudgetConfig {
        BudgetConfig {
            rate: 2.0,
            burst: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_are_paced_at_the_rate() {
        let c = config();
        let t0 = Instant::now();
        let mut b = Budget::new(&c, t0);
        for _ in 0..3 {
            assert_eq!(b.acquire(&c, t0), Ok(Duration::ZERO));
        }
        // The fourth and fifth wait half a second more each (2 per second).
        assert_eq!(b.acquire(&c, t0), Ok(Duration::from_millis(500)));
        assert_eq!(b.acquire(&c, t0), Ok(Duration::from_secs(1)));
        // After a quiet spell the bucket refills, never beyond the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.acquire(&c, later), Ok(Duration::ZERO));
        }
        assert!(b.acquire(&c, later).is_ok_and(|w| w > Duration::ZERO));
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_success_resets() {
        let c = config();
        let t0 = Instant::now();
        let mut b = Budget::new(&c, t0);
        // Full jitter 0 gives half the backoff, 1 gives all of it.
        assert_eq!(b.on_failure(&c, t0, 0.0), t0 + Duration::from_millis(500));
        assert_eq!(b.acquire(&c, t0), Err(t0 + Duration::from_millis(500)));
        assert_eq!(b.on_failure(&c, t0, 1.0), t0 + Duration::from_secs(2));
        assert_eq!(b.on_failure(&c, t0, 1.0), t0 + Duration::from_secs(4));
        for _ in 0..10 {
            b.on_failure(&c, t0, 1.0);
        }
        assert_eq!(
            b.on_failure(&c, t0, 1.0),
            t0 + Duration::from_secs(10),
            "capped"
        );
        // Once the backoff has passed, requests go again.
        assert!(b.acquire(&c, t0 + Duration::from_secs(11)).is_ok());
        b.on_success();
        assert_eq!(
            b.on_failure(&c, t0, 1.0),
            t0 + Duration::from_secs(1),
            "reset"
        );
    }

    #[test]
    fn a_retry_after_longer_than_the_backoff_holds_requests_until_it_passes() {
        let c = config();
        let t0 = Instant::now();
        let mut b = Budget::new(&c, t0);
        b.on_failure(&c, t0, 0.0);
        let until = b.hold_until(t0 + Duration::from_secs(8));
        assert_eq!(until, t0 + Duration::from_secs(8));
        assert_eq!(b.acquire(&c, t0 + Duration::from_secs(7)), Err(until));
        assert!(b.acquire(&c, t0 + Duration::from_secs(8)).is_ok());
        // A shorter figure never shortens a longer backoff.
        b.on_failure(&c, t0, 1.0);
        b.hold_until(t0 + Duration::from_secs(20));
        assert_eq!(
            b.hold_until(t0 + Duration::from_millis(1)),
            t0 + Duration::from_secs(20)
        );
    }

    #[test]
    fn only_overload_and_silence_back_off() {
        assert!(backs_off(Some(429)));
        assert!(backs_off(Some(503)));
        assert!(backs_off(None));
        assert!(!backs_off(Some(404)));
        assert!(!backs_off(Some(401)));
        assert!(!backs_off(Some(200)));
    }
}
