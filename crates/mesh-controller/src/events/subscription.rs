//! Catch-up subscriptions: history from a position, then live events.
//!
//! One task per subscriber reads pages of the log from its next position. After a
//! short page it waits for the head to move (or for the poll interval), then reads
//! again from the same position. Because positions are gap-free and commit-ordered,
//! "read from the next position" is the whole handover: there is no moment at which an
//! event can be both in the history and live (duplicate) or in neither (gap).

use tokio::sync::mpsc;

use super::store::EventStore;
use super::{AppendError, RecordedEvent};

/// Events read per query; also the subscriber's buffer, which bounds its memory.
const PAGE: u32 = 512;

pub(super) fn spawn(
    store: EventStore,
    from_position: u64,
    types: Vec<String>,
) -> mpsc::Receiver<Result<RecordedEvent, AppendError>> {
    let (sender, receiver) = mpsc::channel(PAGE as usize);
    tokio::spawn(async move {
        let mut head = store.head_changes();
        let poll = store.poll_interval();
        let mut next = from_position.max(1);
        loop {
            // Mark the head as seen before reading: an append that commits after this
            // line wakes the wait below even if the read already returned its events.
            head.borrow_and_update();
            let (events, next_position) = match store.read_all(next, PAGE, &types).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            let full = events.len() == PAGE as usize;
            for event in events {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            next = next_position;
            if full {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(poll) => {}
                () = sender.closed() => return,
            }
        }
    });
    receiver
}
