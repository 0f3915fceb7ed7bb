//! The event store through the real `mesh-controller serve` process: writers append
//! with idempotency keys while a subscriber follows; the controller is killed with
//! SIGKILL mid-stream and started again. Every acknowledged append must be stored once,
//! positions must stay gap-free, and the subscriber must resume without a gap or a
//! duplicate. Runs on SQLite (a file) and on the real PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use omnimesh_e2e::{free_port, operator_token, serve_controller, wait_serving};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_test_support::grpc::{Authed, authed};
use tokio::sync::watch;
use tonic::transport::Channel;

const WRITERS: usize = 4;
const APPENDS_PER_WRITER: usize = 60;
/// The controller is killed once this many appends were acknowledged.
const KILL_AFTER: usize = 80;

/// Appends `key` (one event) until the controller acknowledges it, through restarts.
async fn append_until_acknowledged(channel: Authed, stream: String, key: String) -> u64 {
    let request = pb::AppendRequest {
        stream_id: stream,
        expected: None,
        events: vec![pb::NewEvent {
            r#type: "test.appended".into(),
            data: format!("{{\"key\":\"{key}\"}}"),
            metadata: Some(pb::EventMetadata {
                actor: "e2e".into(),
                ..Default::default()
            }),
            idempotency_key: key,
        }],
    };
    loop {
        match EventsClient::new(channel.clone())
            .append(request.clone())
            .await
        {
            Ok(response) => return response.into_inner().first_global_position,
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ),
                    "{status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn crash_and_resume(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut controller = serve_controller(dir.path(), addr, database_url);
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    wait_serving(&plain).await;
    let channel = authed(plain, &operator_token(dir.path()));

    // The subscriber: follows from the start, resubscribes after each break from the
    // last delivered position + 1, and records what it saw.
    let seen = Arc::new(watch::Sender::new(Vec::<u64>::new()));
    let subscriber = {
        let (channel, seen) = (channel.clone(), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let from = seen.borrow().last().map_or(0, |last| last + 1);
                let request = pb::SubscribeRequest {
                    from_position: from,
                    types: Vec::new(),
                };
                let Ok(response) = EventsClient::new(channel.clone()).subscribe(request).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut stream = response.into_inner();
                while let Ok(Some(event)) = stream.message().await {
                    seen.send_modify(|seen| seen.push(event.global_position));
                }
            }
        })
    };

    let acknowledged = Arc::new(watch::Sender::new(0usize));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (channel, acknowledged) = (channel.clone(), Arc::clone(&acknowledged));
        writers.spawn(async move {
            let mut positions = Vec::new();
            for n in 0..APPENDS_PER_WRITER {
                let key = format!("w{writer}-{n}");
                let position = append_until_acknowledged(
                    channel.clone(),
                    format!("writer-{writer}"),
                    key.clone(),
                )
                .await;
                acknowledged.send_modify(|count| *count += 1);
                positions.push((key, position));
            }
            positions
        });
    }

    // Kill -9 in the middle of the writes, then start again on the same port and data.
    tokio::time::timeout(
        Duration::from_secs(60),
        acknowledged
            .subscribe()
            .wait_for(|done| *done >= KILL_AFTER),
    )
    .await
    .expect("appends before the kill")
    .unwrap();
    controller.start_kill().unwrap();
    controller.wait().await.unwrap();
    let killed_at = *acknowledged.borrow();
    assert!(
        killed_at < WRITERS * APPENDS_PER_WRITER,
        "the kill came too late to test anything"
    );
    let _controller = serve_controller(dir.path(), addr, database_url);

    let mut acknowledged_positions: BTreeMap<String, u64> = BTreeMap::new();
    for positions in writers.join_all().await {
        acknowledged_positions.extend(positions);
    }
    let total = (WRITERS * APPENDS_PER_WRITER) as u64;

    // Every acknowledged append is stored exactly once, where it was acknowledged.
    let (mut stored, mut next) = (Vec::new(), 0);
    loop {
        let page = EventsClient::new(channel.clone())
            .read_all(pb::ReadAllRequest {
                from_position: next,
                max_count: 100,
                types: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.is_empty() {
            break;
        }
        next = page.next_position;
        stored.extend(page.events);
    }
    assert_eq!(stored.len() as u64, total, "one event per logical append");
    for (index, event) in stored.iter().enumerate() {
        assert_eq!(
            event.global_position,
            index as u64 + 1,
            "positions are gap-free"
        );
        assert_eq!(
            acknowledged_positions.get(&event.idempotency_key),
            Some(&event.global_position),
            "{} was acknowledged at another position",
            event.idempotency_key
        );
    }

    // The subscriber resumed: it saw 1..=total, in order, once each.
    let mut following = seen.subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        following.wait_for(|seen| seen.len() as u64 >= total),
    )
    .await
    .expect("the subscriber to catch up")
    .unwrap();
    let seen = seen.borrow().clone();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    subscriber.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_append_loses_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    crash_and_resume(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_append_loses_nothing_on_postgres() {
    let database = omnimesh_test_support::postgres::TempDatabase::create()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    crash_and_resume(database.url()).await;
}
