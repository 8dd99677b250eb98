//! A model's failures in a row, and what follows from them: a backoff before the next
//! start, or an open circuit.

use std::time::Duration;

// The tokio clock, so that unit tests drive every timer and deadline here on a paused clock.
use tokio::time::Instant;

use crate::config::RestartPolicy;

/// The first restart's delay; it doubles with each failure in a row, up to the maximum.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Failures in a row and what follows from them.
#[derive(Debug, Default)]
pub struct Health {
    /// Failed loads and crashes since a worker last served a request.
    pub failures: u32,
    /// No start before this (backoff).
    pub retry_at: Option<Instant>,
    /// While the circuit is open, requests fail at once.
    pub open_until: Option<Instant>,
    pub last_cause: Option<String>,
}

/// What a failure leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start again after this delay.
    RetryAfter(Duration),
    /// The circuit is open until `open_until`.
    CircuitOpen,
}

impl Health {
    /// Counts a failure (a failed load or a dead worker; `served`: the worker had answered a
    /// request, so this is not a crash loop and the count starts again).
    pub fn failed(&mut self, cause: String, served: bool, policy: &RestartPolicy, now: Instant) -> Next {
        if served {
            self.failures = 0;
        }
        self.failures += 1;
        self.last_cause = Some(cause);
        if self.failures >= policy.circuit_failures {
            self.open_until = Some(now + policy.circuit_cooldown);
            self.retry_at = None;
            return Next::CircuitOpen;
        }
        let delay = backoff(self.failures);
        self.retry_at = Some(now + delay);
        Next::RetryAfter(delay)
    }
}

/// The delay before the `failures`-th start in a row: 250 ms doubling up to 30 s, scaled
/// by a random factor in [0.5, 1) so models restarting together spread.
fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    rand::random_range(exponential / 2..exponential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_backs_off_then_opens_the_circuit_but_a_served_worker_starts_the_count_again() {
        let policy = RestartPolicy { circuit_failures: 4, ..RestartPolicy::default() };
        let now = Instant::now();
        let mut health = Health::default();
        let mut delays = Vec::new();
        for _ in 0..3 {
            match health.failed("crash".into(), false, &policy, now) {
                Next::RetryAfter(delay) => delays.push(delay),
                Next::CircuitOpen => panic!("opened after {} failures", health.failures),
            }
        }
        // 250 ms doubling, each scaled by [0.5, 1).
        for (i, delay) in delays.iter().enumerate() {
            let full = BACKOFF_BASE * (1 << i);
            assert!(*delay >= full / 2 && *delay < full, "delay {i}: {delay:?}");
        }
        assert_eq!(health.failed("crash".into(), false, &policy, now), Next::CircuitOpen);
        assert_eq!(health.open_until, Some(now + policy.circuit_cooldown));
        // A worker that served before dying is one failure, not the fifth of a loop.
        let mut health = Health { failures: 3, ..Health::default() };
        assert!(matches!(health.failed("killed".into(), true, &policy, now), Next::RetryAfter(_)));
        assert_eq!(health.failures, 1);
        assert!(backoff(40) <= BACKOFF_MAX);
    }

    #[test]
    fn backoff_is_spread_over_half_to_all_of_the_exponential_delay() {
        let draws: Vec<Duration> = (0..1000).map(|_| backoff(2)).collect();
        let full = BACKOFF_BASE * 2;
        assert!(draws.iter().all(|d| *d >= full / 2 && *d < full), "{draws:?}");
        // Random, not one value: models failing together restart apart.
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "{} distinct delays of 1000", distinct.len());
        let below_middle = draws.iter().filter(|d| **d < full * 3 / 4).count();
        assert!((350..650).contains(&below_middle), "{below_middle} of 1000 in the lower half");
    }
}
