//! `make bench-controller`: the event store on SQLite and PostgreSQL side by side, each
//! compared in the same run with a plain `INSERT` loop on the same database (one row
//! per statement, autocommit; the same columns, no positions, no checks).
//!
//! Floors (issue 7): single durable appends ≥ 200/s with p99 < 20 ms; batched appends
//! (100 per batch) ≥ 20,000 events/s; catch-up reads ≥ 50,000 events/s; append →
//! subscriber delivery p99 < 50 ms (SQLite) / 100 ms (PostgreSQL).
//!
//! `EVENTS_BENCH_SCALE` (default 1.0) scales the number of operations.

use std::time::{Duration, Instant};

use mesh_controller::events::{EventStore, ExpectedVersion, Limits, NewEvent, StoreOptions};
use omnimesh_common::db::Backend;
use sqlx::AnyPool;

struct Scale(f64);

impl Scale {
    fn of(&self, n: usize) -> usize {
        ((n as f64 * self.0) as usize).max(10)
    }
}

fn event(n: usize) -> NewEvent {
    NewEvent::json(
        "bench.appended",
        &serde_json::json!({ "n": n, "service": "core-engine", "version": "1.4.2" }),
        "bench",
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One row of results: ours, the plain baseline, and the floor.
struct Row {
    metric: &'static str,
    ours: f64,
    plain: Option<f64>,
    unit: &'static str,
    floor: String,
    met: bool,
}

async fn plain_table(pool: &AnyPool) {
    sqlx::query("DROP TABLE IF EXISTS bench_plain")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE bench_plain (id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, \
         event_type TEXT NOT NULL, data TEXT NOT NULL, actor TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// One plain INSERT of the baseline, on a pool (autocommit) or in a transaction.
async fn plain_insert<'c>(executor: impl sqlx::Executor<'c, Database = sqlx::Any>, id: usize) {
    sqlx::query(
        "INSERT INTO bench_plain (id, stream_id, event_type, data, actor) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id as i64)
    .bind("plain")
    .bind("bench.appended")
    .bind(event(id).data)
    .bind("bench")
    .execute(executor)
    .await
    .unwrap();
}

async fn run(url: &str, scale: &Scale) -> Vec<Row> {
    let store = EventStore::open(StoreOptions {
        database_url: url.to_owned(),
        max_connections: 8,
        limits: Limits {
            max_batch: 1000,
            max_data_bytes: 64 * 1024,
        },
        poll_interval: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let backend = store.backend();
    let pool = store.pool().clone();
    plain_table(&pool).await;
    let mut rows = Vec::new();

    // 1. Single durable appends, one at a time.
    let n = scale.of(400);
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        store
            .append("single", ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    let ours = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..n {
        plain_insert(&pool, i).await;
    }
    let plain = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    rows.push(Row {
        metric: "single appends",
        ours,
        plain: Some(plain),
        unit: "appends/s",
        floor: "≥ 200".into(),
        met: ours >= 200.0,
    });
    rows.push(Row {
        metric: "single append p99",
        ours: ms(p99),
        plain: None,
        unit: "ms",
        floor: "< 20".into(),
        met: p99 < Duration::from_millis(20),
    });

    // 2. Sixteen concurrent single appenders (group commit at work).
    let n = scale.of(1600);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..n / 16 {
                store
                    .append(
                        &format!("concurrent-{writer}"),
                        ExpectedVersion::Any,
                        vec![event(i)],
                    )
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    let ours = (n / 16 * 16) as f64 / started.elapsed().as_secs_f64();
    rows.push(Row {
        metric: "16 concurrent appenders",
        ours,
        plain: Some(plain),
        unit: "appends/s",
        floor: "-".into(),
        met: true,
    });

    // 3. Batched appends, 100 events per append; baseline: 100 plain INSERTs per
    //    transaction.
    let batches = scale.of(300);
    let started = Instant::now();
    for b in 0..batches {
        let events = (0..100).map(|i| event(b * 100 + i)).collect();
        store
            .append("batched", ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let ours = (batches * 100) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for b in 0..batches {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..100 {
            plain_insert(&mut *tx, 1_000_000 + b * 100 + i).await;
        }
        tx.commit().await.unwrap();
    }
    let plain = (batches * 100) as f64 / started.elapsed().as_secs_f64();
    rows.push(Row {
        metric: "batched appends (100/append)",
        ours,
        plain: Some(plain),
        unit: "events/s",
        floor: "≥ 20,000".into(),
        met: ours >= 20_000.0,
    });

    // 4. Catch-up reads of the whole log in pages of 1,000; baseline: the plain table
    //    in pages of 1,000 by primary key.
    let started = Instant::now();
    let (mut next, mut read) = (1, 0usize);
    loop {
        let (events, after) = store.read_all(next, 1000, &[]).await.unwrap();
        if events.is_empty() {
            break;
        }
        read += events.len();
        next = after;
    }
    let ours = read as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (mut after, mut plain_read) = (-1i64, 0usize);
    loop {
        let page: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, stream_id, event_type, data, actor FROM bench_plain \
             WHERE id > $1 ORDER BY id LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&pool)
        .await
        .unwrap();
        let Some(last) = page.last() else { break };
        after = last.0;
        plain_read += page.len();
    }
    let plain = plain_read as f64 / started.elapsed().as_secs_f64();
    rows.push(Row {
        metric: "catch-up reads",
        ours,
        plain: Some(plain),
        unit: "events/s",
        floor: "≥ 50,000".into(),
        met: ours >= 50_000.0,
    });

    // 5. Append → live subscriber delivery.
    let head = store.head().await.unwrap();
    let mut subscription = store.subscribe(head + 1, Vec::new()).unwrap();
    let n = scale.of(300);
    let mut delivery = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        store
            .append("delivered", ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
        subscription.recv().await.unwrap().unwrap();
        delivery.push(t.elapsed());
    }
    delivery.sort();
    let p99 = percentile(&delivery, 0.99);
    let limit = match backend {
        Backend::Sqlite => Duration::from_millis(50),
        Backend::Postgres => Duration::from_millis(100),
    };
    rows.push(Row {
        metric: "append → subscriber p99",
        ours: ms(p99),
        plain: None,
        unit: "ms",
        floor: format!("< {}", limit.as_millis()),
        met: p99 < limit,
    });
    rows
}

fn print(backend: &str, rows: &[Row]) {
    println!("\n{backend}");
    println!(
        "{:<30} {:>14} {:>14} {:>8} {:>10} {:>12}  met",
        "metric", "ours", "plain INSERT", "ratio", "unit", "floor"
    );
    for row in rows {
        let (plain, ratio) = match row.plain {
            Some(plain) => (format!("{plain:.0}"), format!("{:.2}x", row.ours / plain)),
            None => ("-".into(), "-".into()),
        };
        let ours = if row.unit == "ms" {
            format!("{:.2}", row.ours)
        } else {
            format!("{:.0}", row.ours)
        };
        println!(
            "{:<30} {:>14} {:>14} {:>8} {:>10} {:>12}  {}",
            row.metric,
            ours,
            plain,
            ratio,
            row.unit,
            row.floor,
            if row.met { "yes" } else { "NO" }
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; anything else (a filter) is ignored.
    let scale = Scale(
        std::env::var("EVENTS_BENCH_SCALE")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1.0),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let sqlite = run(&url, &scale).await;
        print(
            "SQLite (WAL, synchronous=FULL; baseline: autocommit INSERT, same settings)",
            &sqlite,
        );
        let database = omnimesh_test_support::postgres::TempDatabase::create()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        let postgres = run(database.url(), &scale).await;
        print(
            "PostgreSQL (127.0.0.1:5432; baseline: autocommit INSERT)",
            &postgres,
        );
    });
}
