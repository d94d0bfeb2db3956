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
    /// Only events at or after this time (ms).
    pub since: Option<i64>,
    /// Only events before this time (ms).
    pub until: Option<i64>,
    /// Keyset paging: only events with a smaller id (the last id of the previous page).
    pub before_id: Option<i64>,
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

/// Inserts events inside the caller's transaction, many rows per statement.
pub(super) async fn insert_many(
    conn: &mut sqlx::AnyConnection,
    backend: super::Backend,
    events: &[&NewEvent],
) -> Result<(), StoreError> {
    const WIDTH: usize = 6;
    for chunk in events.chunks(super::rows_per_statement(WIDTH)) {
        let sql = format!(
            "INSERT INTO events (at, actor, event_type, target, details, client_ip) VALUES {}",
            super::values_tuples(backend, chunk.len(), WIDTH)
        );
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query
                .bind(event.at.timestamp_millis())
                .bind(&event.actor)
                .bind(event.event_type)
                .bind(&event.target)
                .bind(event.details.to_string())
                .bind(&event.client_ip);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Records events and answered request IDs in one transaction (the write-behind flush).
    /// A request ID already stored is left as it is.
    pub async fn record_batch(
        &self,
        events: &[NewEvent],
        request_ids: &[super::ReplayGuard],
    ) -> Result<(), StoreError> {
        // Multi-row INSERTs: a statement per record made the write-behind's commit cost grow
        // with the sign-in rate.
        const WIDTH: usize = 3;
        let mut tx = self.pool.begin().await?;
        for chunk in request_ids.chunks(super::rows_per_statement(WIDTH)) {
            let sql = format!(
                "INSERT INTO saml_seen_requests (sp_entity_id, request_id, expires_at) VALUES {} \
                 ON CONFLICT DO NOTHING",
                super::values_tuples(self.backend, chunk.len(), WIDTH)
            );
            let mut query = sqlx::query(&sql);
            for guard in chunk {
                query = query
                    .bind(&guard.sp_entity_id)
                    .bind(&guard.request_id)
                    .bind(guard.expires_at);
            }
            query.execute(&mut *tx).await?;
        }
        let events: Vec<&NewEvent> = events.iter().collect();
        insert_many(&mut tx, self.backend, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records one event on its own.
    pub async fn record_event(&self, event: &NewEvent) -> Result<(), StoreError> {
        insert(&self.pool, event).await
    }

    /// How many events of a type for a target happened at or after `since_ms` (reads the
    /// (target, at) index).
    pub async fn count_events_since(
        &self,
        event_type: &str,
        target: &str,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM events WHERE target = $1 AND at >= $2 AND event_type = $3",
        )
        .bind(target)
        .bind(since_ms)
        .bind(event_type)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The distinct event types recorded (for filter menus).
    pub async fn event_types(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT event_type FROM events ORDER BY event_type")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// The newest events about one target (a user's page). Answered from the `(target, at)`
    /// index, so it stays fast however long the log grows.
    pub async fn recent_events_for(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, at, actor, event_type, target, details, client_ip FROM events \
             WHERE target = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Lists events matching the filter, newest first.
    ///
    /// The WHERE clause names only the filters given (not `$n IS NULL OR …`), so the planner can
    /// use the (type|target|actor, id) indexes and stop after one page.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut texts: Vec<&str> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        for (column, value) in [
            ("event_type", &filter.event_type),
            ("target", &filter.target),
            ("actor", &filter.actor),
        ] {
            if let Some(v) = value {
                texts.push(v);
                conditions.push(format!("{column} = ${}", texts.len()));
            }
        }
        let mut numbered = |column_op: &str, value: Option<i64>| {
            if let Some(v) = value {
                numbers.push(v);
                conditions.push(format!("{column_op} ${}", texts.len() + numbers.len()));
            }
        };
        numbered("at >=", filter.since);
        numbered("at <", filter.until);
        numbered("id <", filter.before_id);
        let limit_param = texts.len() + numbers.len() + 1;
        let sql = format!(
            "SELECT id, at, actor, event_type, target, details, client_ip FROM events {} \
             ORDER BY id DESC LIMIT ${limit_param}",
            if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            }
        );
        let mut query = sqlx::query_as::<_, EventRow>(&sql);
        for t in texts {
            query = query.bind(t);
        }
        for n in numbers {
            query = query.bind(n);
        }
        let rows = query
            .bind(if filter.limit > 0 { filter.limit } else { 100 })
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }
}
