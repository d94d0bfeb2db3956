//! Aggregation of repeated refused requests (bad API keys, CSRF) into few event rows.
//!
//! A guesser can send hundreds of requests a second; one event row each would flood the log.
//! The first refusal of a kind from one address in a minute is written at once (so a single
//! refusal is still seen immediately); the rest of that minute are counted in memory and
//! written as one event with a `count` when the minute is over.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::events::NewEvent;

/// Buckets kept in memory at most; beyond it, new addresses share one bucket, so a spread-out
/// flood cannot grow memory without bound.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bucket {
    event_type: &'static str,
    actor: String,
    reason: String,
    client_ip: Option<String>,
    minute: i64,
}

#[derive(Debug)]
struct Tally {
    /// Refusals after the first, not yet written.
    count: u64,
    path: String,
}

/// Counts refusals per (event type, actor, reason, client address, minute).
#[derive(Debug, Default)]
pub struct RefusalTally {
    buckets: Mutex<HashMap<Bucket, Tally>>,
}

fn minute_of(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(60)
}

impl RefusalTally {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a refusal; true when it is the first of its bucket and the caller should write
    /// it as an event now (the later ones are written by `take_due`).
    pub fn note(
        &self,
        event_type: &'static str,
        actor: &str,
        reason: &str,
        client_ip: Option<&str>,
        path: &str,
        now: DateTime<Utc>,
    ) -> bool {
        // A poisoned lock only means another thread panicked mid-update; counts stay usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut bucket = Bucket {
            event_type,
            actor: actor.to_string(),
            reason: reason.to_string(),
            client_ip: client_ip.map(str::to_string),
            minute: minute_of(now),
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&bucket) {
            bucket.client_ip = None;
        }
        match buckets.get_mut(&bucket) {
            Some(tally) => {
                tally.count += 1;
                false
            }
            None => {
                buckets.insert(
                    bucket,
                    Tally {
                        count: 0,
                        path: path.to_string(),
                    },
                );
                true
            }
        }
    }

    /// Takes the buckets of minutes before `now`'s (all of them when `all`), as events with
    /// the count of refusals not yet written.
    pub fn take_due(&self, now: DateTime<Utc>, all: bool) -> Vec<NewEvent> {
        let current = minute_of(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<Bucket> = buckets
            .keys()
            .filter(|b| all || b.minute < current)
            .cloned()
            .collect();
        let mut events = Vec::new();
        for bucket in due {
            let Some(tally) = buckets.remove(&bucket) else {
                continue;
            };
            if tally.count == 0 {
                continue;
            }
            let at = DateTime::from_timestamp(bucket.minute.saturating_mul(60), 0).unwrap_or(now);
            let mut event = NewEvent::new(
                now,
                &crate::events::Actor::Anonymous,
                bucket.event_type,
                None,
            )
            .details(json!({
                "reason": bucket.reason,
                "path": tally.path,
                "count": tally.count,
                "aggregated": true,
                "minute": at.to_rfc3339(),
            }))
            .client_ip(bucket.client_ip);
            event.actor = bucket.actor;
            events.push(event);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_refusals_make_one_event() {
        let tally = RefusalTally::new();
        let now = DateTime::from_timestamp(600, 0).unwrap_or_default();
        let first = tally.note("t", "anonymous", "api_key", Some("1.2.3.4"), "/api", now);
        assert!(first);
        for _ in 0..199 {
            assert!(!tally.note("t", "anonymous", "api_key", Some("1.2.3.4"), "/api", now));
        }
        assert!(tally.take_due(now, false).is_empty());
        let events = tally.take_due(now + chrono::Duration::seconds(60), false);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].details["count"], 199);
    }
}
