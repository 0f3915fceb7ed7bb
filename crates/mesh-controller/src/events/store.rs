//! The sqlx side of the event store: one appender task, reads, snapshots.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use omnimesh_common::db::{self, Backend};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row as _, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    AppendError, AppendResult, ExpectedVersion, Limits, Metadata, NewEvent, RecordedEvent, now_ms,
    validate,
};

/// The advisory lock that serialises appenders across processes on PostgreSQL.
const APPEND_LOCK: i64 = 0x6f6d_6e69_6576; // "omniev"
/// The PostgreSQL channel that wakes subscribers in other processes.
const NOTIFY_CHANNEL: &str = "omnimesh_events";
/// At most this many queued appends share one transaction (group commit).
const MAX_GROUP_APPENDS: usize = 128;
/// At most this many events share one transaction.
const MAX_GROUP_EVENTS: usize = 4096;
/// Rows per INSERT statement (11 parameters each; SQLite allows 32,766).
const ROWS_PER_INSERT: usize = 256;
/// Most event types in one read filter.
const MAX_TYPE_FILTER: usize = 32;
/// Largest page of a read.
pub(crate) const MAX_PAGE: u32 = 10_000;

const COLUMNS: &str = "global_position, stream_id, stream_version, event_type, data, actor, \
                       correlation_id, causation_id, reason, idempotency_key, recorded_at_ms";

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Pooled connections (readers; the appender uses one at a time).
    pub max_connections: u32,
    /// What one append may carry.
    pub limits: Limits,
    /// How often live subscribers look for events without a wake-up (lost
    /// notifications, other processes on SQLite).
    pub poll_interval: Duration,
}

/// The event store. Cheap to clone; the appender stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: AnyPool,
    backend: Backend,
    jobs: mpsc::Sender<Job>,
    head: Arc<watch::Sender<u64>>,
    limits: Limits,
    poll_interval: Duration,
    _stop: DropGuard,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("stream", &self.request.stream)
            .finish()
    }
}

struct Request {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
}

/// A stream's latest snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version the state includes.
    pub stream_version: u64,
    /// The state, as JSON.
    pub data: String,
}

fn unavailable(error: &sqlx::Error) -> AppendError {
    tracing::error!(%error, "event store failure");
    AppendError::Unavailable
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

impl EventStore {
    /// Opens (migrating) the database and starts the appender.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub async fn open(options: StoreOptions) -> Result<Self, sqlx::Error> {
        let (pool, backend) = db::open(
            &options.database_url,
            db::Options {
                max_connections: options.max_connections.max(2),
                durability: db::Durability::Full,
            },
            db::Migrations {
                sqlite: &sqlx::migrate!("migrations/sqlite"),
                postgres: &sqlx::migrate!("migrations/postgres"),
            },
        )
        .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        let head = Arc::new(watch::Sender::new(to_u64(head)));
        let stop = CancellationToken::new();
        let (jobs, queue) = mpsc::channel(1024);
        tokio::spawn(run_appender(
            pool.clone(),
            backend,
            Arc::clone(&head),
            queue,
        ));
        if backend == Backend::Postgres {
            tokio::spawn(follow_notifications(
                options.database_url.clone(),
                Arc::clone(&head),
                stop.child_token(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                jobs,
                head,
                limits: options.limits,
                poll_interval: options.poll_interval,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The database behind the store.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The pool, for projections that keep their own tables.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    ///
    /// # Errors
    /// [`AppendError`]: a malformed batch, a lost race, a reused idempotency key, or an
    /// unavailable database. In every case nothing of the batch is stored.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        validate(stream, &events, self.inner.limits)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request: Request {
                stream: stream.to_owned(),
                expected,
                events,
            },
            reply,
        };
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| AppendError::Unavailable)?;
        answer.await.map_err(|_| AppendError::Unavailable)?
    }

    /// Up to `max_count` events of `stream` from `from_version` (inclusive) on.
    ///
    /// # Errors
    /// A malformed stream id, or an unavailable database.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        super::check_name("stream_id", stream)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream)
            .bind(to_i64(from_version))
            .bind(i64::from(max_count.clamp(1, MAX_PAGE)))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|error| unavailable(&error))?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// Up to `max_count` events from global position `from_position` (inclusive) on,
    /// only of `types` when it is not empty, and the position to read from next.
    ///
    /// # Errors
    /// A malformed type filter, or an unavailable database.
    pub async fn read_all(
        &self,
        from_position: u64,
        max_count: u32,
        types: &[String],
    ) -> Result<(Vec<RecordedEvent>, u64), AppendError> {
        check_types(types)?;
        let from = from_position.max(1);
        let limit = max_count.clamp(1, MAX_PAGE);
        // Every position up to the head is committed (positions are commit-ordered), so
        // a filtered read that finds fewer than `limit` events may skip to the head.
        let head = if types.is_empty() {
            0
        } else {
            self.head().await?
        };
        let filter = (0..types.len())
            .map(|index| format!("${}", index + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = if types.is_empty() {
            format!(
                "SELECT {COLUMNS} FROM events WHERE global_position >= $1 \
                 ORDER BY global_position LIMIT $2"
            )
        } else {
            format!(
                "SELECT {COLUMNS} FROM events WHERE global_position >= $1 \
                 AND event_type IN ({filter}) ORDER BY global_position LIMIT $2"
            )
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(from))
            .bind(i64::from(limit));
        for event_type in types {
            query = query.bind(event_type.as_str());
        }
        let events = query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|error| unavailable(&error))?
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let after_last = events
            .last()
            .map_or(from, |event| event.global_position + 1);
        let next = if events.len() < limit as usize {
            after_last.max(head + 1)
        } else {
            after_last
        };
        Ok((events, next))
    }

    /// The global position of the last committed event (0: none).
    ///
    /// # Errors
    /// An unavailable database.
    pub async fn head(&self) -> Result<u64, AppendError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(to_u64(head))
    }

    /// History from `from_position` (inclusive; 0 is the start), then live events, of
    /// `types` (empty: all). The stream ends after an error; resume from the last
    /// delivered position + 1.
    ///
    /// # Errors
    /// A malformed type filter (refused before anything is read).
    pub fn subscribe(
        &self,
        from_position: u64,
        types: Vec<String>,
    ) -> Result<mpsc::Receiver<Result<RecordedEvent, AppendError>>, AppendError> {
        check_types(&types)?;
        Ok(super::subscription::spawn(
            self.clone(),
            from_position,
            types,
        ))
    }

    /// Wakes when the appender (or, on PostgreSQL, another process) commits.
    pub(super) fn head_changes(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    pub(super) fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// Stores `data` as the state of `stream` at `stream_version`, unless a newer
    /// snapshot is stored.
    ///
    /// # Errors
    /// A malformed stream id or state, or an unavailable database.
    pub async fn save_snapshot(
        &self,
        stream: &str,
        stream_version: u64,
        data: &str,
    ) -> Result<(), AppendError> {
        super::check_name("stream_id", stream)?;
        if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
            return Err(AppendError::Invalid {
                field: "snapshot".to_owned(),
                reason: "not JSON".to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO snapshots (stream_id, stream_version, data, recorded_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO UPDATE SET \
             stream_version = excluded.stream_version, data = excluded.data, \
             recorded_at_ms = excluded.recorded_at_ms \
             WHERE snapshots.stream_version < excluded.stream_version",
        )
        .bind(stream)
        .bind(to_i64(stream_version))
        .bind(data)
        .bind(now_ms())
        .execute(&self.inner.pool)
        .await
        .map_err(|error| unavailable(&error))?;
        Ok(())
    }

    /// The latest snapshot of `stream`.
    ///
    /// # Errors
    /// A malformed stream id, or an unavailable database.
    pub async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, AppendError> {
        super::check_name("stream_id", stream)?;
        let row = sqlx::query("SELECT stream_version, data FROM snapshots WHERE stream_id = $1")
            .bind(stream)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|error| unavailable(&error))?;
        row.map(|row| {
            Ok(Snapshot {
                stream_version: to_u64(row.try_get("stream_version").map_err(|e| unavailable(&e))?),
                data: row.try_get("data").map_err(|e| unavailable(&e))?,
            })
        })
        .transpose()
    }
}

/// At most [`MAX_TYPE_FILTER`] well-formed event types.
fn check_types(types: &[String]) -> Result<(), AppendError> {
    if types.len() > MAX_TYPE_FILTER {
        return Err(AppendError::Invalid {
            field: "types".to_owned(),
            reason: format!("at most {MAX_TYPE_FILTER} types"),
        });
    }
    for (index, event_type) in types.iter().enumerate() {
        super::check_name(&format!("types[{index}]"), event_type)?;
    }
    Ok(())
}

fn event_from_row(row: &AnyRow) -> Result<RecordedEvent, AppendError> {
    let get = |error: sqlx::Error| unavailable(&error);
    Ok(RecordedEvent {
        global_position: to_u64(row.try_get("global_position").map_err(get)?),
        stream_id: row.try_get("stream_id").map_err(get)?,
        stream_version: to_u64(row.try_get("stream_version").map_err(get)?),
        event_type: row.try_get("event_type").map_err(get)?,
        data: row.try_get("data").map_err(get)?,
        metadata: Metadata {
            actor: row.try_get("actor").map_err(get)?,
            correlation_id: row.try_get("correlation_id").map_err(get)?,
            causation_id: row.try_get("causation_id").map_err(get)?,
            reason: row.try_get("reason").map_err(get)?,
        },
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        recorded_at_ms: row.try_get("recorded_at_ms").map_err(get)?,
    })
}

/// The single appender: takes queued appends, several at a time, and commits each
/// group in one transaction (one sync for many appends). If a group's transaction
/// fails, its appends are retried one by one so that one bad batch fails alone.
async fn run_appender(
    pool: AnyPool,
    backend: Backend,
    head: Arc<watch::Sender<u64>>,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut jobs = Vec::with_capacity(MAX_GROUP_APPENDS);
    while let Some(first) = queue.recv().await {
        let mut events = first.request.events.len();
        jobs.push(first);
        while jobs.len() < MAX_GROUP_APPENDS && events < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(job) => {
                    events += job.request.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let requests: Vec<&Request> = jobs.iter().map(|job| &job.request).collect();
        let results = match append_group(&pool, backend, &requests).await {
            Ok(results) => results,
            Err(error) if requests.len() == 1 => vec![Err(unavailable(&error))],
            Err(error) => {
                tracing::warn!(%error, appends = requests.len(), "group append failed; retrying one by one");
                let mut results = Vec::with_capacity(requests.len());
                for request in &requests {
                    match append_group(&pool, backend, std::slice::from_ref(request)).await {
                        Ok(mut one) => {
                            results.push(one.pop().unwrap_or(Err(AppendError::Unavailable)))
                        }
                        Err(error) => results.push(Err(unavailable(&error))),
                    }
                }
                results
            }
        };
        let last = results
            .iter()
            .filter_map(|result| result.as_ref().ok().map(|done| done.last_position))
            .max();
        if let Some(last) = last {
            advance(&head, last);
        }
        for (job, result) in jobs.drain(..).zip(results) {
            // The caller may have gone away; the events are stored either way.
            let _ = job.reply.send(result);
        }
    }
}

/// Where a key of the group already points.
#[derive(Debug, Clone)]
struct KeyedEvent {
    stream: String,
    stream_version: u64,
    position: u64,
}

/// Appends a group of requests in one transaction; per-request refusals (conflicts,
/// idempotent retries) do not abort the others.
async fn append_group(
    pool: &AnyPool,
    backend: Backend,
    requests: &[&Request],
) -> Result<Vec<Result<AppendResult, AppendError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
            .bind(APPEND_LOCK)
            .fetch_one(&mut *tx)
            .await?;
    }
    let mut position: u64 = to_u64(
        sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?,
    );
    let recorded_at_ms = now_ms();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut keyed: HashMap<String, KeyedEvent> = HashMap::new();
    let mut rows: Vec<RecordedEvent> = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        if let Some(result) = retried(&mut tx, request, &keyed).await? {
            results.push(result);
            continue;
        }
        let actual = match versions.get(request.stream.as_str()) {
            Some(version) => *version,
            None => to_u64(
                sqlx::query_scalar(
                    "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1",
                )
                .bind(&request.stream)
                .fetch_one(&mut *tx)
                .await?,
            ),
        };
        if !request.expected.admits(actual) {
            versions.insert(&request.stream, actual);
            results.push(Err(AppendError::WrongExpectedVersion {
                stream: request.stream.clone(),
                expected: request.expected,
                actual,
            }));
            continue;
        }
        let first_position = position + 1;
        let mut version = actual;
        for event in &request.events {
            version += 1;
            position += 1;
            if let Some(key) = &event.idempotency_key {
                keyed.insert(
                    key.clone(),
                    KeyedEvent {
                        stream: request.stream.clone(),
                        stream_version: version,
                        position,
                    },
                );
            }
            rows.push(RecordedEvent {
                stream_id: request.stream.clone(),
                stream_version: version,
                global_position: position,
                event_type: event.event_type.clone(),
                data: event.data.clone(),
                metadata: event.metadata.clone(),
                idempotency_key: event.idempotency_key.clone(),
                recorded_at_ms,
            });
        }
        versions.insert(&request.stream, version);
        results.push(Ok(AppendResult {
            next_expected_version: version,
            first_position,
            last_position: position,
        }));
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        insert_rows(&mut tx, chunk).await?;
    }
    if backend == Backend::Postgres && !rows.is_empty() {
        sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS notified")
            .bind(NOTIFY_CHANNEL)
            .bind(position.to_string())
            .fetch_one(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// `Some` when the request's idempotency keys are already stored (or earlier in this
/// group): the original result when they match the request exactly, a mismatch error
/// when they only partly do.
async fn retried(
    tx: &mut Transaction<'_, Any>,
    request: &Request,
    keyed: &HashMap<String, KeyedEvent>,
) -> Result<Option<Result<AppendResult, AppendError>>, sqlx::Error> {
    let keys: Vec<&str> = request
        .events
        .iter()
        .filter_map(|event| event.idempotency_key.as_deref())
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let placeholders = (1..=keys.len())
        .map(|index| format!("${index}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT idempotency_key, stream_id, stream_version, global_position FROM events \
         WHERE idempotency_key IN ({placeholders})"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for key in &keys {
        query = query.bind(*key);
    }
    let mut found: HashMap<String, KeyedEvent> = HashMap::new();
    for row in query.fetch_all(&mut **tx).await? {
        found.insert(
            row.try_get("idempotency_key")?,
            KeyedEvent {
                stream: row.try_get("stream_id")?,
                stream_version: to_u64(row.try_get("stream_version")?),
                position: to_u64(row.try_get("global_position")?),
            },
        );
    }
    let stored: Vec<Option<KeyedEvent>> = request
        .events
        .iter()
        .map(|event| {
            event
                .idempotency_key
                .as_ref()
                .and_then(|key| found.get(key).or_else(|| keyed.get(key)).cloned())
        })
        .collect();
    if stored.iter().all(Option::is_none) {
        return Ok(None);
    }
    // A retry must be the same batch: every event keyed and stored, in order, on this
    // stream, at consecutive positions.
    let mismatch = |index: usize| {
        let key = request.events[index]
            .idempotency_key
            .clone()
            .unwrap_or_default();
        Ok(Some(Err(AppendError::IdempotencyMismatch { key })))
    };
    let mut previous: Option<&KeyedEvent> = None;
    for (index, event) in stored.iter().enumerate() {
        let Some(event) = event else {
            return mismatch(index);
        };
        let follows = previous.is_none_or(|previous| {
            event.position == previous.position + 1
                && event.stream_version == previous.stream_version + 1
        });
        if event.stream != request.stream || !follows {
            return mismatch(index);
        }
        previous = Some(event);
    }
    let first = stored.first().and_then(Option::as_ref);
    let last = stored.last().and_then(Option::as_ref);
    match (first, last) {
        (Some(first), Some(last)) => Ok(Some(Ok(AppendResult {
            next_expected_version: last.stream_version,
            first_position: first.position,
            last_position: last.position,
        }))),
        _ => mismatch(0),
    }
}

async fn insert_rows(
    tx: &mut Transaction<'_, Any>,
    rows: &[RecordedEvent],
) -> Result<(), sqlx::Error> {
    let values = (0..rows.len())
        .map(|row| {
            let base = row * 11;
            let params = (1..=11)
                .map(|column| format!("${}", base + column))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({params})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO events ({COLUMNS}) VALUES {values}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        query = query
            .bind(to_i64(row.global_position))
            .bind(row.stream_id.as_str())
            .bind(to_i64(row.stream_version))
            .bind(row.event_type.as_str())
            .bind(row.data.as_str())
            .bind(row.metadata.actor.as_str())
            .bind(row.metadata.correlation_id.as_str())
            .bind(row.metadata.causation_id.as_str())
            .bind(row.metadata.reason.as_str())
            .bind(row.idempotency_key.as_deref())
            .bind(row.recorded_at_ms);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Wakes local subscribers when another process appends (PostgreSQL `LISTEN`). Only a
/// hint: subscribers read from the log, and poll when notifications are lost.
async fn follow_notifications(url: String, head: Arc<watch::Sender<u64>>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => return,
            Err(error) = listen(&url, &head) => {
                tracing::debug!(%error, "event notifications interrupted; subscribers poll meanwhile");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen(url: &str, head: &watch::Sender<u64>) -> Result<Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    loop {
        let notification = listener.recv().await?;
        if let Ok(position) = notification.payload().parse::<u64>() {
            advance(head, position);
        }
    }
}

/// Moves the head forward (never back) and wakes subscribers when it moved.
fn advance(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|head| {
        let newer = position > *head;
        if newer {
            *head = position;
        }
        newer
    });
}
