use sqlx::{Any, Executor};

use super::{Store, StoreError};
use crate::events::NewEvent;

/// A recorded event.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub event_type: String,
    pub target: Option<String>,
    pub details: String,
    pub client_ip: Option<String>,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub limit: i64,
}

pub(super) async fn insert<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    event: &NewEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (at, actor, event_type, target, details, client_ip) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.at.timestamp_millis())
    .bind(&event.actor)
    .bind(event.event_type)
    .bind(&event.target)
    .bind(event.details.to_string())
    .bind(&event.client_ip)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// Records several events in one transaction (the batching writer's flush).
    pub async fn record_events(&self, batch: &[NewEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for event in batch {
            insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records one event on its own.
    pub async fn record_event(&self, event: &NewEvent) -> Result<(), StoreError> {
        insert(&self.pool, event).await
    }

    /// Lists events matching the filter, newest first.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, at, actor, event_type, target, details, client_ip FROM events \
             WHERE ($1 IS NULL OR event_type = $1) AND ($2 IS NULL OR target = $2) \
               AND ($3 IS NULL OR actor = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(&filter.event_type)
        .bind(&filter.target)
        .bind(&filter.actor)
        .bind(if filter.limit > 0 { filter.limit } else { 100 })
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
