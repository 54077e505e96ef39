//! When to refresh a token and how to retry a failed request.

use std::time::{Duration, SystemTime};

/// Refresh and retry settings. The defaults follow Azure's guidance to re-authenticate at
/// least three minutes before a token expires.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    pub(crate) ratio: f64,
    pub(crate) margin: Duration,
    pub(crate) min_delay: Duration,
    pub(crate) min_delay_fraction: f64,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            ratio: 0.7,
            margin: Duration::from_secs(180),
            min_delay: Duration::from_secs(1),
            min_delay_fraction: 0.1,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RefreshPolicy {
    /// Refreshes after this fraction of the token's lifetime (default 0.7).
    ///
    /// # Panics
    ///
    /// Panics unless `0 < ratio <= 1`.
    pub fn with_ratio(mut self, ratio: f64) -> Self {
        assert!(
            ratio > 0.0 && ratio <= 1.0,
            "refresh ratio must be in (0, 1], got {ratio}"
        );
        self.ratio = ratio;
        self
    }

    /// Refreshes at the latest this long before expiry (default 3 minutes).
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Sets the first retry delay (default 1 s); it doubles on each failure.
    ///
    /// # Panics
    ///
    /// Panics if `delay` is below 10 ms, which would let a failing endpoint be hit in a
    /// tight loop.
    pub fn with_initial_backoff(mut self, delay: Duration) -> Self {
        assert!(
            delay >= Duration::from_millis(10),
            "initial backoff must be at least 10 ms, got {delay:?}"
        );
        self.initial_backoff = delay;
        self
    }

    /// Sets the longest retry delay (default 60 s).
    pub fn with_max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Caps how long a `Retry-After` header can delay the next attempt (default 5 minutes).
    pub fn with_max_retry_after(mut self, delay: Duration) -> Self {
        self.max_retry_after = delay;
        self
    }

    /// Computes when to refresh a token acquired at `acquired` that expires at `expires_on`.
    ///
    /// The earlier of `acquired + ratio × lifetime`, `expires_on − margin` and the
    /// endpoint's `refresh_on`, but never sooner than the minimum delay after acquisition:
    /// a tenth of the lifetime and at least one second, though never past expiry. The
    /// minimum keeps short-lived tokens from causing a burst of requests.
    pub fn refresh_at(
        &self,
        acquired: SystemTime,
        expires_on: SystemTime,
        refresh_on: Option<SystemTime>,
    ) -> SystemTime {
        let lifetime = expires_on.duration_since(acquired).unwrap_or_default();
        let by_ratio = acquired + lifetime.mul_f64(self.ratio);
        let by_margin = acquired + lifetime.saturating_sub(self.margin);
        let mut at = by_ratio.min(by_margin);
        if let Some(suggested) = refresh_on {
            at = at.min(suggested);
        }
        let min_delay = lifetime
            .mul_f64(self.min_delay_fraction)
            .max(self.min_delay)
            .min(lifetime);
        at.max(acquired + min_delay)
    }

    /// Computes the delay before retry number `failures` (1 for the first), given a
    /// random `unit` in `[0, 1)`.
    ///
    /// The base delay doubles from the initial backoff up to the maximum; jitter picks a
    /// point between half the base and the base. A `Retry-After` makes it at least that
    /// long, up to the `Retry-After` cap.
    pub fn retry_delay(&self, failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let base = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let jittered = base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1767225600;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn refresh_time_for_common_lifetimes() {
        let policy = RefreshPolicy::default();
        // (lifetime, seconds after acquisition when the refresh happens)
        let cases = [
            (0, 0),         // already expired: nothing to wait for
            (1, 1),         // the one-second minimum delay wins
            (240, 60),      // 4 min: the 3-minute margin wins over 0.7 × 240 = 168
            (3600, 2520),   // 1 h: 0.7 × lifetime wins over 3420
            (86400, 60480), // 24 h: 0.7 × lifetime
        ];
        for (lifetime, expected) in cases {
            let refresh = policy.refresh_at(at(T0), at(T0 + lifetime), None);
            assert_eq!(refresh, at(T0 + expected), "lifetime {lifetime} s");
        }
    }

    #[test]
    fn ratio_and_margin_each_win_somewhere() {
        let policy = RefreshPolicy::default();
        // 10 min: ratio gives 420 s, margin gives 420 s: equal.
        assert_eq!(policy.refresh_at(at(T0), at(T0 + 600), None), at(T0 + 420));
        // 20 min: ratio 840 s, margin 1020 s → ratio.
        assert_eq!(policy.refresh_at(at(T0), at(T0 + 1200), None), at(T0 + 840));
        // 5 min: ratio 210 s, margin 120 s → margin.
        assert_eq!(policy.refresh_at(at(T0), at(T0 + 300), None), at(T0 + 120));
    }

    #[test]
    fn refresh_on_only_moves_refresh_earlier() {
        let policy = RefreshPolicy::default();
        let expires = at(T0 + 86400);
        assert_eq!(
            policy.refresh_at(at(T0), expires, Some(at(T0 + 43200))),
            at(T0 + 43200)
        );
        assert_eq!(
            policy.refresh_at(at(T0), expires, Some(at(T0 + 80000))),
            at(T0 + 60480)
        );
        // A suggestion inside the minimum delay is pushed out to it (a tenth of 24 h).
        assert_eq!(
            policy.refresh_at(at(T0), expires, Some(at(T0))),
            at(T0 + 8640)
        );
    }

    #[test]
    fn retry_delay_doubles_to_the_cap() {
        let policy = RefreshPolicy::default();
        let delays: Vec<u64> = (1..=9)
            .map(|n| policy.retry_delay(n, None, 1.0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.retry_delay(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(policy.retry_delay(1000, None, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_raises_delay_up_to_its_cap() {
        let policy = RefreshPolicy::default();
        let asked = Some(Duration::from_secs(5));
        assert_eq!(policy.retry_delay(1, asked, 1.0), Duration::from_secs(5));
        let huge = Some(Duration::from_secs(86400));
        assert_eq!(policy.retry_delay(1, huge, 1.0), Duration::from_secs(300));
    }
}
