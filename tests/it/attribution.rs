//! A broker's answer about one message is booked against that message only: RabbitMQ returns
//! under concurrent load on one channel, Kafka's batch-wide "too large", per-key order across a
//! failed enqueue.

use crate::harness::*;
use futures::StreamExt;
use lapin::types::FieldTable;
use std::collections::HashSet;

const KEY: &str = "attribution-key";

/// What one POST carried and what it got.
struct Posted {
    events: Vec<String>,
    unbound: bool,
    status: u16,
}

/// Batch `i`: two of every three hold five events of bound classes; the third holds one event
/// of a class no queue is bound to.
fn mixed_batch(run: &str, i: usize) -> (Vec<String>, bool) {
    if i % 3 == 2 {
        return (
            vec![event("reportjob_updated", &format!("{run}-{i}-u"))],
            true,
        );
    }
    let classes = ["task_created", "assetitem_updated"];
    let events = (0..5)
        .map(|j| event(classes[j % 2], &format!("{run}-{i}-{j}")))
        .collect();
    (events, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_return_fails_only_its_own_batch_under_concurrent_load_on_one_channel() {
    let _shared = SHARED_BROKERS.read().await;
    let exchange = unique("x");
    let queue = Queue::bind(
        &exchange,
        &["task_created", "assetitem_updated"],
        FieldTable::default(),
    )
    .await;
    let toml = format!(
        "[server]\nack_timeout = \"10s\"\n{}{}channels = 1\n{}",
        webhook_toml("wh", KEY),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], "")
    );
    let bridge = Bridge::start(&toml).await;
    let run = unique("r");
    let url = bridge.url("/hook");
    let posted: Vec<Posted> = futures::stream::iter(0..3000)
        .map(|i| {
            let (events, unbound) = mixed_batch(&run, i);
            let url = url.clone();
            async move {
                let status = post(&url, &batch(&events), Some(KEY)).await.status;
                Posted {
                    events,
                    unbound,
                    status,
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let queued: HashSet<Vec<u8>> = queue.drain().await.into_iter().map(|m| m.body).collect();

    let ok_unbound = posted.iter().filter(|p| p.unbound && p.status == 200);
    assert_eq!(
        ok_unbound.count(),
        0,
        "a batch whose event reached no queue got 200"
    );
    let failed_bound: Vec<u16> = posted
        .iter()
        .filter(|p| !p.unbound && p.status != 200)
        .map(|p| p.status)
        .collect();
    assert!(
        failed_bound.is_empty(),
        "bound-only batches failed: {failed_bound:?}"
    );
    let lost = posted
        .iter()
        .filter(|p| p.status == 200)
        .flat_map(|p| &p.events)
        .filter(|e| !queued.contains(e.as_bytes()))
        .count();
    assert_eq!(
        lost, 0,
        "events of batches answered 200 missing from the queue"
    );
    assert_eq!(queued.len(), 2000 * 5, "every bound event queued once");
    let unbound_status: HashSet<u16> = posted
        .iter()
        .filter(|p| p.unbound)
        .map(|p| p.status)
        .collect();
    assert_eq!(unbound_status, HashSet::from([503]));
}
