//! Exponential backoff with jitter, shared by everything that retries: the push
//! exporters (`nodescope-delivery`, configured by `[exporters.*.retry]`) and the
//! Kubernetes watchers (`nodescope-k8s`). Jitter spreads the retries of many agents that
//! failed at the same moment (an API server restart, a backend outage) so they do not
//! come back in lockstep.

use std::time::Duration;

/// The shape of a backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest computed delay.
    pub max: Duration,
    /// Growth factor per attempt (>= 1).
    pub multiplier: f64,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]` (0..=1).
    pub jitter: f64,
    /// Upper bound on a server-provided delay (`Retry-After`, gRPC `RetryInfo`).
    pub max_hint: Duration,
}

impl Default for BackoffPolicy {
    /// 1 s doubling to 30 s, ±20 % jitter, server hints up to 5 min.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_hint: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    current: Duration,
}

impl Backoff {
    pub fn new(policy: impl Into<BackoffPolicy>) -> Self {
        let policy = policy.into();
        Backoff {
            policy,
            current: policy.initial,
        }
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    pub fn reset(&mut self) {
        self.current = self.policy.initial;
    }

    /// The delay before the next attempt. A server-provided delay wins over the computed
    /// one, capped at `max_hint`.
    pub fn next_delay(&mut self, server_hint: Option<Duration>) -> Duration {
        let base = self.current;
        let next = base.as_secs_f64() * self.policy.multiplier.max(1.0);
        self.current = Duration::from_secs_f64(next.min(self.policy.max.as_secs_f64()));
        if let Some(hint) = server_hint {
            return hint.min(self.policy.max_hint);
        }
        jittered(base, self.policy.jitter)
    }
}

/// `d` multiplied by a random factor in `[1 - jitter, 1 + jitter]` (jitter clamped to
/// 0..=1). Also for periods that many agents share (e.g. a re-list interval).
pub fn jittered(d: Duration, jitter: f64) -> Duration {
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let factor = 1.0 - j + 2.0 * j * fastrand::f64();
    Duration::from_secs_f64((d.as_secs_f64() * factor).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_hints() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            jitter: 0.0,
            ..BackoffPolicy::default()
        };
        let mut b = Backoff::new(policy);
        let d: Vec<u128> = (0..5).map(|_| b.next_delay(None).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 400, 400]);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7000))),
            policy.max_hint
        );
        b.reset();
        assert_eq!(b.next_delay(None), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let policy = BackoffPolicy {
            initial: Duration::from_secs(1),
            jitter: 0.2,
            multiplier: 1.0,
            ..BackoffPolicy::default()
        };
        let mut b = Backoff::new(policy);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = b.next_delay(None).as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d}");
            seen.insert((d * 1000.0) as u64);
        }
        assert!(seen.len() > 100, "jitter does not vary: {seen:?}");
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10), 0.1).as_secs_f64();
            assert!((9.0..=11.0).contains(&d), "{d}");
        }
        assert_eq!(
            jittered(Duration::from_secs(1), f64::NAN),
            Duration::from_secs(1)
        );
    }
}
