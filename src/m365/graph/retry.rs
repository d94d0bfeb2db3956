//! When and how long to wait before sending a request again.

use std::time::Duration;

use chrono::Utc;

/// Retry behaviour for throttling and transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// How many times one request may be sent in all (the first try included).
    pub max_attempts: u32,
    /// The backoff before the first retry when Graph gives no `Retry-After`; doubles each retry.
    pub base_delay: Duration,
    /// The longest backoff between two attempts.
    pub max_delay: Duration,
    /// The longest single `Retry-After` honoured, so one odd header cannot stall a sync for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Graph's "not now" statuses: throttled (429), unavailable (503), gateway timeout (504).
pub(super) fn is_throttled(status: u16) -> bool {
    matches!(status, 429 | 503 | 504)
}

/// Whether a throttled answer may be retried: 429 and 503 mean Graph did not apply the request,
/// but a 504 may come after it was applied, so only requests safe to repeat are retried then.
pub(super) fn may_retry_status(status: u16, idempotent: bool) -> bool {
    status == 429 || status == 503 || (status == 504 && idempotent)
}

/// The attempts made for one request (or one `$batch` chunk) against the policy's budget.
#[derive(Debug)]
pub(super) struct Attempts<'a> {
    policy: &'a RetryPolicy,
    made: u32,
}

impl<'a> Attempts<'a> {
    pub(super) fn new(policy: &'a RetryPolicy) -> Self {
        Self { policy, made: 0 }
    }

    /// Counts an attempt about to be made; returns its number (1-based).
    pub(super) fn start(&mut self) -> u32 {
        self.made = self.made.saturating_add(1);
        self.made
    }

    /// Whether the budget allows another attempt.
    pub(super) fn can_retry(&self) -> bool {
        self.made < self.policy.max_attempts.max(1)
    }

    /// How long to wait before the next attempt: Graph's `Retry-After` (capped) when given,
    /// else a jittered exponential backoff.
    pub(super) fn delay(&self, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.policy.max_retry_after),
            None => self.backoff(),
        }
    }

    /// The jittered backoff for the retry about to happen.
    pub(super) fn backoff(&self) -> Duration {
        backoff(self.policy, self.made.saturating_sub(1), random_unit())
    }
}

/// `base_delay * 2^retry` capped at `max_delay`, scaled by `unit` ∈ [0, 1] ("full jitter", so
/// many clients throttled together do not come back in lockstep).
pub(super) fn backoff(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let ceiling = policy
        .base_delay
        .saturating_mul(2u32.saturating_pow(retry))
        .min(policy.max_delay);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniformly random number in [0, 1] from OpenSSL's generator.
pub(super) fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        // Without randomness, waiting the full backoff is the conservative choice.
        return 1.0;
    }
    const MAX: u64 = (1 << 53) - 1;
    (u64::from_le_bytes(bytes) >> 11) as f64 / MAX as f64
}

/// Parses `Retry-After`: seconds, possibly fractional (Graph sends "2.128"), or an HTTP date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        // Clamped so absurd values still convert; the policy caps the wait anyway.
        return Duration::try_from_secs_f64(seconds.min(1e9)).ok();
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}
