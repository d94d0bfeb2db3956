//! What the console overview counts: events and Microsoft 365 sync outcomes per time bucket
//! (`GROUP BY` in SQL, so a month of sign-ins is a few dozen rows, not every event), and the
//! facts of the first-run checklist that no other read answers.

use super::{Backend, Store, StoreError};
use crate::binding::BindingState;

/// How many events of one type fell in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBucketCount {
    /// The bucket's index from the start of the range (0 is the oldest).
    pub bucket: i64,
    pub event_type: String,
    /// Events in the bucket; an aggregated refusal row counts with its `count`.
    pub count: i64,
}

/// Changes delivered to and failed at Microsoft 365 in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncBucketCount {
    /// The bucket's index from the start of the range (0 is the oldest).
    pub bucket: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// Equal time buckets from `start_ms`, each `width_ms` long, `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub start_ms: i64,
    pub width_ms: i64,
    pub count: i64,
}

impl Buckets {
    fn end_ms(&self) -> i64 {
        self.start_ms
            .saturating_add(self.width_ms.saturating_mul(self.count))
    }
}

/// The hour (UTC, ms) the sync tally files a moment under.
pub(super) fn tally_hour(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(3_600_000)
}

/// Adds delivered and failed changes to the hour of `now_ms`, inside the caller's transaction
/// (so a completion and its count commit together). Nothing when both are 0.
pub(super) async fn tally_sync(
    conn: &mut sqlx::AnyConnection,
    now_ms: i64,
    delivered: i64,
    failed: i64,
) -> Result<(), StoreError> {
    if delivered == 0 && failed == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO m365_sync_tally (hour_start, delivered, failed) VALUES ($1, $2, $3) \
         ON CONFLICT (hour_start) DO UPDATE SET \
         delivered = m365_sync_tally.delivered + excluded.delivered, \
         failed = m365_sync_tally.failed + excluded.failed",
    )
    .bind(tally_hour(now_ms))
    .bind(delivered)
    .bind(failed)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// How many events of each of `event_types` fell in each bucket, only (bucket, type) pairs
    /// that have any. Reads the `(event_type, at)` index. Repeated refusals written as one row
    /// with a `count` (see `throttle::refusals`) count as that many.
    pub async fn event_counts_by_bucket(
        &self,
        event_types: &[&str],
        buckets: Buckets,
    ) -> Result<Vec<EventBucketCount>, StoreError> {
        if event_types.is_empty() || buckets.width_ms <= 0 {
            return Ok(Vec::new());
        }
        // Details are always a JSON object written by serde_json; rows without a count are one.
        let weight = match self.backend {
            Backend::Sqlite => "COALESCE(CAST(json_extract(details, '$.count') AS INTEGER), 1)",
            Backend::Postgres => "COALESCE(CAST(CAST(details AS jsonb) ->> 'count' AS BIGINT), 1)",
        };
        let types: Vec<String> = (4..4 + event_types.len())
            .map(|i| format!("${i}"))
            .collect();
        let sql = format!(
            "SELECT (at - $1) / $2 AS bucket, event_type, CAST(SUM({weight}) AS BIGINT) \
             FROM events WHERE at >= $1 AND at < $3 AND event_type IN ({}) \
             GROUP BY 1, 2",
            types.join(", ")
        );
        let mut query = sqlx::query_as::<_, (i64, String, i64)>(&sql)
            .bind(buckets.start_ms)
            .bind(buckets.width_ms)
            .bind(buckets.end_ms());
        for t in event_types {
            query = query.bind(*t);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(bucket, event_type, count)| EventBucketCount {
                bucket,
                event_type,
                count,
            })
            .collect())
    }

    /// Changes delivered to and failed at Microsoft 365 per bucket, only buckets that have
    /// any. The tally is kept per hour, so buckets should be whole hours.
    pub async fn sync_counts_by_bucket(
        &self,
        buckets: Buckets,
    ) -> Result<Vec<SyncBucketCount>, StoreError> {
        if buckets.width_ms <= 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT (hour_start - $1) / $2 AS bucket, CAST(SUM(delivered) AS BIGINT), \
             CAST(SUM(failed) AS BIGINT) FROM m365_sync_tally \
             WHERE hour_start >= $1 AND hour_start < $3 GROUP BY 1",
        )
        .bind(buckets.start_ms)
        .bind(buckets.width_ms)
        .bind(buckets.end_ms())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(bucket, delivered, failed)| SyncBucketCount {
                bucket,
                delivered,
                failed,
            })
            .collect())
    }

    /// Forgets sync counts of hours before `before_ms` (the janitor; the charts show 30 days).
    pub async fn purge_sync_tally(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM m365_sync_tally WHERE hour_start < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Whether an event of one of `event_types` names a user who is bound to Microsoft 365
    /// now (the checklist's test sign-in).
    pub async fn bound_user_has_event(&self, event_types: &[&str]) -> Result<bool, StoreError> {
        if event_types.is_empty() {
            return Ok(false);
        }
        let types: Vec<String> = (2..2 + event_types.len())
            .map(|i| format!("${i}"))
            .collect();
        let sql = format!(
            "SELECT e.id FROM events e JOIN users u ON u.username = e.target \
             JOIN m365_bindings b ON b.user_id = u.id \
             WHERE b.state = $1 AND e.event_type IN ({}) LIMIT 1",
            types.join(", ")
        );
        let mut query = sqlx::query_as::<_, (i64,)>(&sql).bind(BindingState::Bound.as_str());
        for t in event_types {
            query = query.bind(*t);
        }
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }
}
