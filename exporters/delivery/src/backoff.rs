//! Exponential backoff with jitter: the shared [`nodescope_model::backoff::Backoff`],
//! shaped by an exporter's `[retry]` table.

pub use nodescope_model::backoff::{Backoff, BackoffPolicy};

use crate::config::RetryConfig;

impl From<&RetryConfig> for BackoffPolicy {
    fn from(c: &RetryConfig) -> Self {
        BackoffPolicy {
            initial: c.initial_backoff,
            max: c.max_backoff,
            multiplier: c.multiplier,
            jitter: c.jitter,
            max_hint: c.max_retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_config_shapes_the_backoff() {
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
            b.next_delay(Some(Duration::from_secs(7000))),
            cfg.max_retry_after
        );
    }
}
