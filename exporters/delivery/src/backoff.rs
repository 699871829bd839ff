//! Exponential backoff with jitter.

use std::time::Duration;

use crate::config::RetryConfig;

#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: RetryConfig,
    current: Duration,
}

impl Backoff {
    pub fn new(cfg: &RetryConfig) -> Self {
        Backoff {
            cfg: cfg.clone(),
            current: cfg.initial_backoff,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.cfg.initial_backoff;
    }

    /// The delay before the next attempt. A server-provided delay (`Retry-After`, gRPC
    /// `RetryInfo`) wins over the computed one, capped at `max_retry_after`.
    pub fn next_delay(&mut self, server_hint: Option<Duration>) -> Duration {
        let base = self.current;
        let next = base.as_secs_f64() * self.cfg.multiplier;
        self.current = Duration::from_secs_f64(next.min(self.cfg.max_backoff.as_secs_f64()));
        if let Some(hint) = server_hint {
            return hint.min(self.cfg.max_retry_after);
        }
        let j = self.cfg.jitter;
        let factor = 1.0 - j + 2.0 * j * fastrand::f64();
        Duration::from_secs_f64((base.as_secs_f64() * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_hints() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            multiplier: 2.0,
            jitter: 0.0,
            ..RetryConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        let d: Vec<u128> = (0..5).map(|_| b.next_delay(None).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 400, 400]);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7000))),
            cfg.max_retry_after
        );
        b.reset();
        assert_eq!(b.next_delay(None), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_range() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_secs(1),
            jitter: 0.2,
            multiplier: 1.0,
            ..RetryConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        for _ in 0..1000 {
            let d = b.next_delay(None).as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d}");
        }
    }
}
