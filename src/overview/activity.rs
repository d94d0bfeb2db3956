//! Sign-ins, refusals and failures, and changes delivered to Microsoft 365, per hour over the
//! last 24 hours and per day over the last 30 days (UTC clock hours and days, the newest
//! bucket being the one holding `now`).

use chrono::{DateTime, TimeZone, Utc};

use crate::events::SignInOutcome;
use crate::store::{Buckets, Store, StoreError};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A span the overview charts, with its bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The last 24 clock hours, one bucket per hour.
    Day,
    /// The last 30 days, one bucket per day.
    Month,
}

impl Period {
    /// Both periods, shortest first.
    pub const ALL: [Period; 2] = [Self::Day, Self::Month];

    /// A stable name (HTML ids, tests).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "24h",
            Self::Month => "30d",
        }
    }

    /// The span in words.
    pub fn title(self) -> &'static str {
        match self {
            Self::Day => "last 24 hours",
            Self::Month => "last 30 days",
        }
    }

    /// How long one bucket is.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Self::Day => HOUR_MS,
            Self::Month => DAY_MS,
        }
    }

    fn bucket_count(self) -> i64 {
        match self {
            Self::Day => 24,
            Self::Month => 30,
        }
    }

    /// The buckets of this period as of `now`: the newest is the hour or day holding `now`.
    pub fn buckets_at(self, now: DateTime<Utc>) -> Buckets {
        let width = self.bucket_ms();
        let now_ms = now.timestamp_millis();
        let current = now_ms - now_ms.rem_euclid(width);
        Buckets {
            start_ms: current - (self.bucket_count() - 1) * width,
            width_ms: width,
            count: self.bucket_count(),
        }
    }
}

/// End users' sign-in events in one bucket, by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInBucket {
    pub start: DateTime<Utc>,
    pub signed_in: i64,
    pub refused: i64,
    pub failed: i64,
}

impl SignInBucket {
    /// The events of one outcome.
    pub fn count(&self, outcome: SignInOutcome) -> i64 {
        match outcome {
            SignInOutcome::SignedIn => self.signed_in,
            SignInOutcome::Refused => self.refused,
            SignInOutcome::Failed => self.failed,
        }
    }

    fn add(&mut self, outcome: SignInOutcome, n: i64) {
        match outcome {
            SignInOutcome::SignedIn => self.signed_in += n,
            SignInOutcome::Refused => self.refused += n,
            SignInOutcome::Failed => self.failed += n,
        }
    }
}

/// Changes to Microsoft 365 (sync jobs) in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncBucket {
    pub start: DateTime<Utc>,
    /// Delivered to Microsoft 365 (or found to have nothing to do).
    pub delivered: i64,
    /// Failed for good (shown as failed changes on the binding page).
    pub failed: i64,
}

/// One period's activity, every bucket present (empty ones with zeros), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub period: Period,
    pub sign_ins: Vec<SignInBucket>,
    pub sync: Vec<SyncBucket>,
}

fn bucket_start(buckets: &Buckets, index: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(buckets.start_ms + index * buckets.width_ms)
        .single()
        .unwrap_or_default()
}

impl Activity {
    /// Counts the period ending with the bucket that holds `now`.
    pub async fn load(
        store: &Store,
        period: Period,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let buckets = period.buckets_at(now);
        let mut sign_ins: Vec<SignInBucket> = (0..buckets.count)
            .map(|i| SignInBucket {
                start: bucket_start(&buckets, i),
                signed_in: 0,
                refused: 0,
                failed: 0,
            })
            .collect();
        let mut sync: Vec<SyncBucket> = (0..buckets.count)
            .map(|i| SyncBucket {
                start: bucket_start(&buckets, i),
                delivered: 0,
                failed: 0,
            })
            .collect();
        let types = SignInOutcome::all_event_types();
        for row in store.event_counts_by_bucket(&types, buckets).await? {
            let slot = usize::try_from(row.bucket)
                .ok()
                .and_then(|i| sign_ins.get_mut(i));
            if let (Some(slot), Some(outcome)) = (slot, SignInOutcome::of(&row.event_type)) {
                slot.add(outcome, row.count);
            }
        }
        for row in store.sync_counts_by_bucket(buckets).await? {
            if let Some(slot) = usize::try_from(row.bucket)
                .ok()
                .and_then(|i| sync.get_mut(i))
            {
                slot.delivered += row.delivered;
                slot.failed += row.failed;
            }
        }
        Ok(Self {
            period,
            sign_ins,
            sync,
        })
    }

    /// The period's events of one outcome.
    pub fn sign_in_total(&self, outcome: SignInOutcome) -> i64 {
        self.sign_ins.iter().map(|b| b.count(outcome)).sum()
    }

    /// The period's changes delivered and failed.
    pub fn sync_totals(&self) -> (i64, i64) {
        self.sync
            .iter()
            .fold((0, 0), |(d, f), b| (d + b.delivered, f + b.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_end_with_the_hour_or_day_holding_now() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 5, 36, 57).unwrap();
        let day = Period::Day.buckets_at(now);
        assert_eq!(day.count, 24);
        assert_eq!(
            day.start_ms,
            Utc.with_ymd_and_hms(2026, 12, 2, 6, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        let month = Period::Month.buckets_at(now);
        assert_eq!(month.count, 30);
        assert_eq!(
            month.start_ms,
            Utc.with_ymd_and_hms(2026, 11, 4, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
    }
}
