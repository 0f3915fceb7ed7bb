//! The event store on the real databases: every test runs on SQLite (a temporary file)
//! and on PostgreSQL (a fresh database on 127.0.0.1:5432).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// A store on `url` with test limits and a long poll, so that live delivery in these
/// tests has to come from the appender's wake-up, not from polling.
async fn open(url: &str) -> EventStore {
    EventStore::open(StoreOptions {
        database_url: url.to_owned(),
        max_connections: 8,
        limits: Limits {
            max_batch: 200,
            max_data_bytes: 4096,
        },
        poll_interval: Duration::from_secs(30),
    })
    .await
    .unwrap()
}

fn event(n: usize) -> NewEvent {
    NewEvent::json("test.happened", &serde_json::json!({ "n": n }), "tester")
}

fn keyed(n: usize, key: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        ..event(n)
    }
}

/// Runs `test` on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident, $test:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("events.db").display());
                super::$test(&url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let database = omnimesh_test_support::postgres::TempDatabase::create()
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432");
                super::$test(database.url()).await;
            }
        }
    };
}

on_both!(appends_follow_expected_versions, expected_versions);
async fn expected_versions(url: &str) {
    let store = open(url).await;
    let created = store
        .append("svc-a", ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    assert_eq!(
        created,
        AppendResult {
            next_expected_version: 2,
            first_position: 1,
            last_position: 2
        }
    );
    let conflict = store
        .append("svc-a", ExpectedVersion::NoStream, vec![event(3)])
        .await
        .unwrap_err();
    assert_eq!(
        conflict,
        AppendError::WrongExpectedVersion {
            stream: "svc-a".into(),
            expected: ExpectedVersion::NoStream,
            actual: 2
        }
    );
    assert!(matches!(
        store
            .append("svc-b", ExpectedVersion::StreamExists, vec![event(3)])
            .await,
        Err(AppendError::WrongExpectedVersion { actual: 0, .. })
    ));
    assert!(matches!(
        store
            .append("svc-a", ExpectedVersion::Exact(1), vec![event(3)])
            .await,
        Err(AppendError::WrongExpectedVersion { actual: 2, .. })
    ));
    let next = store
        .append("svc-a", ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!((next.next_expected_version, next.first_position), (3, 3));
    let other = store
        .append("svc-b", ExpectedVersion::Any, vec![event(4)])
        .await
        .unwrap();
    assert_eq!((other.next_expected_version, other.last_position), (1, 4));
    store
        .append("svc-b", ExpectedVersion::StreamExists, vec![event(5)])
        .await
        .unwrap();

    let stream = store.read_stream("svc-a", 2, 10).await.unwrap();
    let versions: Vec<_> = stream
        .iter()
        .map(|e| (e.stream_version, e.global_position))
        .collect();
    assert_eq!(versions, [(2, 2), (3, 3)]);
    assert_eq!(stream[0].data, r#"{"n":2}"#);
    assert_eq!(stream[0].metadata.actor, "tester");
    assert!(stream[0].recorded_at_ms > 0);
    let (all, next) = store.read_all(0, 3, &[]).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(next, 4);
    let (rest, next) = store.read_all(next, 100, &[]).await.unwrap();
    let streams: Vec<_> = rest.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["svc-b", "svc-b"]);
    assert_eq!(next, 6);
    assert_eq!(store.head().await.unwrap(), 5);
}

on_both!(
    of_concurrent_appenders_at_one_version_exactly_one_wins,
    one_winner
);
async fn one_winner(url: &str) {
    let store = open(url).await;
    store
        .append("race", ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    for round in 0..5u64 {
        let version = 1 + 2 * round;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..16 {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .append(
                        "race",
                        ExpectedVersion::Exact(version),
                        vec![event(n), event(n)],
                    )
                    .await
            });
        }
        let results = tasks.join_all().await;
        let winners = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for error in results.iter().filter_map(|result| result.as_ref().err()) {
            assert_eq!(
                *error,
                AppendError::WrongExpectedVersion {
                    stream: "race".into(),
                    expected: ExpectedVersion::Exact(version),
                    actual: version + 2
                }
            );
        }
    }
    let stream = store.read_stream("race", 0, 1000).await.unwrap();
    assert_eq!(
        stream.len(),
        11,
        "one batch of two per round, nothing of the losers"
    );
}

on_both!(a_retried_append_is_not_stored_twice, idempotent_retries);
async fn idempotent_retries(url: &str) {
    let store = open(url).await;
    let batch = vec![keyed(1, "op-1/a"), keyed(2, "op-1/b")];
    let first = store
        .append("deploys", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    store
        .append("deploys", ExpectedVersion::Any, vec![event(3)])
        .await
        .unwrap();
    // The retry carries the original expectation, which no longer holds: the keys win.
    let retry = store
        .append("deploys", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(store.head().await.unwrap(), 3);
    // Concurrent retries of one new batch: one write, the same answer for all.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .append(
                    "deploys",
                    ExpectedVersion::Any,
                    vec![keyed(4, "op-2/a"), keyed(5, "op-2/b")],
                )
                .await
        });
    }
    let results = tasks.join_all().await;
    assert!(
        results.windows(2).all(|pair| pair[0] == pair[1]),
        "{results:?}"
    );
    assert_eq!(store.head().await.unwrap(), 5);
    // A retry of a prefix names stored events: it answers where they are.
    let prefix = store
        .append("deploys", ExpectedVersion::Any, vec![keyed(1, "op-1/a")])
        .await
        .unwrap();
    assert_eq!((prefix.first_position, prefix.last_position), (1, 1));
    // Keys reused in a different batch: refused, nothing stored.
    for (stream, events) in [
        ("other", batch.clone()),
        ("deploys", vec![keyed(1, "op-1/a"), keyed(9, "op-9")]),
        ("deploys", vec![keyed(2, "op-1/b"), keyed(1, "op-1/a")]),
    ] {
        let error = store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(
            matches!(error, AppendError::IdempotencyMismatch { .. }),
            "{error:?}"
        );
    }
    assert_eq!(store.head().await.unwrap(), 5);
    assert!(store.read_stream("other", 0, 10).await.unwrap().is_empty());
}

on_both!(
    a_reader_following_positions_never_misses_an_event,
    reader_under_load
);
async fn reader_under_load(url: &str) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 40;
    let store = open(url).await;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            for n in 0..APPENDS {
                let size = 1 + (writer + n) % 3;
                let events = (0..size).map(|i| event(n * 10 + i)).collect();
                store
                    .append(&format!("writer-{writer}"), ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        });
    }
    let total: u64 = (0..WRITERS)
        .flat_map(|writer| (0..APPENDS).map(move |n| (1 + (writer + n) % 3) as u64))
        .sum();
    // Read with small pages while the writers run: positions must arrive 1, 2, 3, …
    let mut seen = Vec::new();
    let mut next = 1;
    while (seen.len() as u64) < total {
        let (events, after) = store.read_all(next, 7, &[]).await.unwrap();
        for event in &events {
            assert_eq!(
                event.global_position,
                seen.len() as u64 + 1,
                "a gap or a repeat"
            );
            seen.push((event.stream_id.clone(), event.stream_version));
        }
        next = after;
        if events.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    writers.join_all().await;
    assert_eq!(store.head().await.unwrap(), total);
    // Each stream's versions appear in order, without gaps.
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for (stream, version) in seen {
        let last = versions.entry(stream).or_default();
        assert_eq!(version, *last + 1);
        *last = version;
    }
}

on_both!(
    subscriptions_hand_over_from_history_to_live_without_gaps,
    catch_up
);
async fn catch_up(url: &str) {
    let store = open(url).await;
    for n in 0..30 {
        let events = (0..20).map(|i| event(n * 20 + i)).collect();
        store
            .append("history", ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let mut subscription = store.subscribe(0, Vec::new()).unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                store
                    .append("live", ExpectedVersion::Any, vec![event(n)])
                    .await
                    .unwrap();
            }
        })
    };
    let mut expected = 1;
    while expected <= 800 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
            .await
            .expect("a live event within 10 s (no poll: the appender must wake us)")
            .unwrap()
            .unwrap();
        assert_eq!(event.global_position, expected);
        expected += 1;
    }
    writer.await.unwrap();
    drop(subscription);

    // Resume after position 650, with a type filter.
    store
        .append(
            "live",
            ExpectedVersion::Any,
            vec![NewEvent::json("test.other", &1, "tester")],
        )
        .await
        .unwrap();
    let mut resumed = store.subscribe(651, vec!["test.happened".into()]).unwrap();
    let first = resumed.recv().await.unwrap().unwrap();
    assert_eq!(first.global_position, 651);
    let mut last = first.global_position;
    while last < 800 {
        last = resumed.recv().await.unwrap().unwrap().global_position;
    }
    store
        .append("live", ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    let after_filtered = tokio::time::timeout(Duration::from_secs(10), resumed.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(after_filtered.global_position, 802, "801 is another type");
}

on_both!(malformed_and_oversized_appends_store_nothing, hostile_input);
async fn hostile_input(url: &str) {
    let store = open(url).await;
    let huge = NewEvent {
        data: format!("\"{}\"", "x".repeat(5000)),
        ..event(0)
    };
    let long = "s".repeat(300);
    let cases: Vec<(&str, Vec<NewEvent>, &str)> = vec![
        ("", vec![event(0)], "stream_id"),
        ("has space", vec![event(0)], "stream_id"),
        ("drop;table", vec![event(0)], "stream_id"),
        (&long, vec![event(0)], "stream_id"),
        ("ok", vec![], "events"),
        ("ok", (0..201).map(event).collect(), "events"),
        ("ok", vec![event(0), huge], "events[1].data"),
        (
            "ok",
            vec![NewEvent {
                data: "{not json".into(),
                ..event(0)
            }],
            "events[0].data",
        ),
        (
            "ok",
            vec![NewEvent {
                event_type: "a\u{0}b".into(),
                ..event(0)
            }],
            "events[0].type",
        ),
        (
            "ok",
            vec![keyed(0, "same"), keyed(1, "same")],
            "events[1].idempotency_key",
        ),
        (
            "ok",
            vec![NewEvent {
                metadata: Metadata {
                    actor: "bad\nactor".into(),
                    ..Metadata::default()
                },
                ..event(0)
            }],
            "events[0].metadata.actor",
        ),
    ];
    for (stream, events, field) in cases {
        let error = store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        match error {
            AppendError::Invalid { field: named, .. } => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.read_all(0, 10, &["x y".into()]).await.is_err());
    let too_many: Vec<String> = (0..33).map(|n| format!("t{n}")).collect();
    assert!(store.read_all(0, 10, &too_many).await.is_err());
    assert!(store.subscribe(0, too_many).is_err());
    // Huge page sizes are clamped, not honoured.
    store
        .append("ok", ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    assert_eq!(store.read_all(0, u32::MAX, &[]).await.unwrap().0.len(), 1);
    assert_eq!(
        store.read_stream("ok", u64::MAX, 10).await.unwrap().len(),
        0
    );
}

on_both!(snapshots_keep_the_newest_state, snapshots);
async fn snapshots(url: &str) {
    let store = open(url).await;
    assert_eq!(store.load_snapshot("long").await.unwrap(), None);
    store
        .save_snapshot("long", 10, r#"{"v":10}"#)
        .await
        .unwrap();
    store.save_snapshot("long", 5, r#"{"v":5}"#).await.unwrap();
    assert_eq!(
        store.load_snapshot("long").await.unwrap(),
        Some(store::Snapshot {
            stream_version: 10,
            data: r#"{"v":10}"#.into()
        })
    );
    store
        .save_snapshot("long", 20, r#"{"v":20}"#)
        .await
        .unwrap();
    assert_eq!(
        store
            .load_snapshot("long")
            .await
            .unwrap()
            .unwrap()
            .stream_version,
        20
    );
    assert!(store.save_snapshot("long", 30, "not json").await.is_err());
}

on_both!(a_reopened_store_continues_the_log, reopen);
async fn reopen(url: &str) {
    {
        let store = open(url).await;
        store
            .append("s", ExpectedVersion::NoStream, vec![event(1), event(2)])
            .await
            .unwrap();
    }
    let store = open(url).await;
    let next = store
        .append("s", ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(next.first_position, 3);
    let mut subscription = store.subscribe(2, Vec::new()).unwrap();
    let positions = [
        subscription.recv().await.unwrap().unwrap().global_position,
        subscription.recv().await.unwrap().unwrap().global_position,
    ];
    assert_eq!(positions, [2, 3]);
}

/// One step of a random interleaving.
#[derive(Debug, Clone)]
enum Step {
    Append {
        stream: u8,
        expected: Option<u8>,
        count: u8,
        key: Option<u8>,
    },
    ReadStream {
        stream: u8,
        from: u8,
    },
    ReadAll {
        from: u8,
        max: u8,
    },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0..3u8, proptest::option::of(0..6u8), 1..4u8, proptest::option::of(0..6u8))
            .prop_map(|(stream, expected, count, key)| Step::Append { stream, expected, count, key }),
        1 => (0..3u8, 0..8u8).prop_map(|(stream, from)| Step::ReadStream { stream, from }),
        1 => (0..20u8, 1..8u8).prop_map(|(from, max)| Step::ReadAll { from, max }),
    ];
    proptest::collection::vec(step, 1..40)
}

/// Runs `steps` against the store and against a model (a vector of events).
async fn interleaving(url: &str, steps: Vec<Step>) {
    let store = open(url).await;
    // (stream, stream_version, key) by position - 1.
    let mut model: Vec<(String, u64, Option<String>)> = Vec::new();
    let mut batches: BTreeMap<String, AppendResult> = BTreeMap::new();
    for step in steps {
        match step {
            Step::Append {
                stream,
                expected,
                count,
                key,
            } => {
                let stream = format!("s{stream}");
                let expected =
                    expected.map_or(ExpectedVersion::Any, |v| ExpectedVersion::Exact(v.into()));
                let key = key.map(|k| format!("k{k}-{count}"));
                let events: Vec<NewEvent> = (0..count)
                    .map(|i| NewEvent {
                        idempotency_key: key.as_ref().map(|k| format!("{k}/{i}")),
                        ..event(i.into())
                    })
                    .collect();
                let result = store.append(&stream, expected, events).await;
                let actual = model.iter().filter(|(s, ..)| *s == stream).count() as u64;
                match key.as_ref().and_then(|k| batches.get(k).map(|r| (k, *r))) {
                    Some((_, original)) => {
                        // A stored key: the original result if the same stream, else a mismatch.
                        let first = &model[(original.first_position - 1) as usize];
                        if first.0 == stream {
                            assert_eq!(result, Ok(original));
                        } else {
                            assert!(
                                matches!(result, Err(AppendError::IdempotencyMismatch { .. })),
                                "{result:?}"
                            );
                        }
                    }
                    None if expected.admits(actual) => {
                        let done = result.unwrap();
                        assert_eq!(done.first_position, model.len() as u64 + 1);
                        for i in 0..u64::from(count) {
                            model.push((stream.clone(), actual + i + 1, key.clone()));
                        }
                        assert_eq!(done.last_position, model.len() as u64);
                        assert_eq!(done.next_expected_version, actual + u64::from(count));
                        if let Some(key) = key {
                            batches.insert(key, done);
                        }
                    }
                    None => assert!(
                        matches!(result, Err(AppendError::WrongExpectedVersion { actual: a, .. }) if a == actual),
                        "{result:?}"
                    ),
                }
            }
            Step::ReadStream { stream, from } => {
                let stream = format!("s{stream}");
                let read = store.read_stream(&stream, from.into(), 100).await.unwrap();
                let expected: Vec<u64> = model
                    .iter()
                    .filter(|(s, v, _)| *s == stream && *v >= u64::from(from))
                    .map(|(_, v, _)| *v)
                    .collect();
                let got: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
                assert_eq!(got, expected);
            }
            Step::ReadAll { from, max } => {
                let (read, next) = store.read_all(from.into(), max.into(), &[]).await.unwrap();
                let start = u64::from(from).max(1);
                let expected: Vec<u64> = (start..=model.len() as u64).take(max.into()).collect();
                let got: Vec<u64> = read.iter().map(|e| e.global_position).collect();
                assert_eq!(got, expected);
                assert_eq!(next, got.last().map_or(start, |last| last + 1));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_match_the_model_on_sqlite(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("events.db").display());
            interleaving(&url, steps).await;
        });
    }

    #[test]
    fn random_interleavings_match_the_model_on_postgres(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let database = omnimesh_test_support::postgres::TempDatabase::create().await.unwrap();
            interleaving(database.url(), steps).await;
        });
    }
}
