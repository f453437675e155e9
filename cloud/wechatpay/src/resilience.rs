//! Bounded retries and a circuit breaker, so that a WeChat Pay outage turns into quick, clear
//! errors instead of a pile of waiting requests.
//!
//! Every operation of the client carries an idempotency key (`out_trade_no`,
//! `out_refund_no`, or is a read), so a retry re-sends the same request body with a fresh
//! signature. Only outage-like failures (timeouts, transport errors, 5xx, 429) are retried and
//! counted by the breaker; a 4xx answer proves WeChat Pay is up.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound on one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt number `attempt` (2 = first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one trial call is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// What the breaker currently does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused for this much longer.
    Open {
        /// Time left until a trial call is allowed.
        retry_after: Duration,
    },
    /// The cool-down passed: the next call is a trial.
    HalfOpen,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// A consecutive-failure circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current state, for health reporting.
    pub fn state(&self) -> BreakerState {
        let s = self.lock();
        match s.open_until {
            None => BreakerState::Closed,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    BreakerState::Open {
                        retry_after: until - now,
                    }
                } else {
                    BreakerState::HalfOpen
                }
            }
        }
    }

    /// Asks to send one attempt. The permit must be resolved with `success`, `failure` or
    /// dropped (neutral: e.g. a bad signature says nothing about availability).
    pub fn acquire(&self) -> Result<BreakerPermit<'_>> {
        let mut s = self.lock();
        if let Some(until) = s.open_until {
            let now = Instant::now();
            if now < until || s.trial_in_flight {
                return Err(Error::CircuitOpen {
                    failures: s.consecutive_failures,
                    retry_after: until.saturating_duration_since(now),
                });
            }
            s.trial_in_flight = true;
            return Ok(BreakerPermit {
                breaker: self,
                trial: true,
                resolved: false,
            });
        }
        Ok(BreakerPermit {
            breaker: self,
            trial: false,
            resolved: false,
        })
    }
}

/// Permission to send one attempt; reports its outcome back to the breaker.
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    resolved: bool,
}

impl BreakerPermit<'_> {
    /// WeChat Pay answered (any 2xx/4xx): close the breaker.
    pub fn success(mut self) {
        self.resolved = true;
        let mut s = self.breaker.lock();
        s.consecutive_failures = 0;
        s.open_until = None;
        s.trial_in_flight = false;
    }

    /// An outage-like failure: count it, open the breaker at the threshold or after a failed
    /// trial.
    pub fn failure(mut self) {
        self.resolved = true;
        let config = self.breaker.config;
        let mut s = self.breaker.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if self.trial || s.consecutive_failures >= config.failure_threshold {
            if s.open_until.is_none() || self.trial {
                tracing::warn!(
                    failures = s.consecutive_failures,
                    cool_down_ms = u64::try_from(config.cool_down.as_millis()).unwrap_or(u64::MAX),
                    "WeChat Pay circuit breaker opened"
                );
            }
            s.open_until = Some(Instant::now() + config.cool_down);
        }
        s.trial_in_flight = false;
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.resolved && self.trial {
            // Cancelled or neutral trial: let the next call try again.
            self.breaker.lock().trial_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_threshold_and_recovers_after_cool_down() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(30),
        });
        b.acquire().map(BreakerPermit::failure).ok();
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().map(BreakerPermit::failure).ok();
        assert!(matches!(
            b.acquire(),
            Err(Error::CircuitOpen { failures: 2, .. })
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.state() != BreakerState::HalfOpen {
            assert!(Instant::now() < deadline, "breaker never half-opened");
            std::thread::yield_now();
        }
        let trial = b.acquire();
        assert!(trial.is_ok());
        // Only one trial at a time.
        assert!(b.acquire().is_err());
        if let Ok(p) = trial {
            p.success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_ok());
    }

    #[test]
    fn failed_trial_reopens_and_dropped_trial_frees_the_slot() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            cool_down: Duration::ZERO,
        });
        b.acquire().map(BreakerPermit::failure).ok();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        drop(b.acquire());
        let trial = b.acquire();
        assert!(trial.is_ok());
        if let Ok(p) = trial {
            p.failure();
        }
        assert_ne!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        };
        assert_eq!(p.backoff(2), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(250));
    }
}
