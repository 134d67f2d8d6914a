//! Resume from Kafka: a cursor the replay buffer no longer covers (away
//! too long, another node's, a restarted node's) is caught up from Kafka,
//! exactly: every record meant for the stream once, in per-partition order,
//! then live events with no gap and no duplicate. Against librdkafka's mock
//! cluster, 8 partitions, user, topic, broadcast and other users' records.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use herald::sse::cursor::{fingerprint, TopicOffsets};
use herald::sse::Cursor;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::kafka::{cluster, consumed, joined_live, producer, read, server, TOPIC};
use support::{eventually, metric};

/// The stream every test follows: user `u` with topic `news`.
const PATH: &str = "u?topic=news";

/// Record `i`: on partition `i % 8`; for user `u`, topic `news`, everyone,
/// or user `v`, by `(i / 8) % 4`.
fn kind(i: usize) -> usize {
    (i / 8) % 4
}

fn meant_for_u(i: usize) -> bool {
    kind(i) != 3
}

/// How many records of `range` are meant for `u`.
fn for_u(range: std::ops::Range<usize>) -> usize {
    range.filter(|&i| meant_for_u(i)).count()
}

async fn send(p: &FutureProducer, records: std::ops::Range<usize>) {
    send_padded(p, records, 0).await
}

/// [`send`] with `pad` bytes after the record's number.
async fn send_padded(p: &FutureProducer, records: std::ops::Range<usize>, pad: usize) {
    let mut pending = Vec::new();
    let padding = format!(" {}", "y".repeat(pad));
    for i in records {
        let value = if pad == 0 {
            i.to_string()
        } else {
            format!("{i}{padding}")
        };
        let mut r = FutureRecord::<str, str>::to(TOPIC)
            .partition((i % 8) as i32)
            .payload(&value);
        r = match kind(i) {
            0 => r.key("u"),
            1 => r.headers(OwnedHeaders::new().insert(Header {
                key: "sse-topic",
                value: Some("news"),
            })),
            2 => r,
            _ => r.key("v"),
        };
        pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    for s in pending {
        s.await.unwrap().unwrap();
    }
}

/// Every record of `range` meant for `u` exactly once, and each partition
/// in order.
fn assert_exact(got: &[usize], range: std::ops::Range<usize>) {
    let want: Vec<usize> = range.filter(|&i| meant_for_u(i)).collect();
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    let dups = sorted.windows(2).filter(|w| w[0] == w[1]).count();
    let set: BTreeSet<usize> = got.iter().copied().collect();
    let missing: Vec<_> = want.iter().filter(|i| !set.contains(i)).take(10).collect();
    if dups > 0 {
        let mut seen = std::collections::HashMap::new();
        for (at, &i) in got.iter().enumerate() {
            if let Some(first) = seen.insert(i, at) {
                eprintln!("repeated: {i} at {at}, first at {first}");
            }
        }
    }
    assert_eq!(dups, 0, "{dups} duplicates");
    assert!(
        missing.is_empty(),
        "missing (first 10): {missing:?} in {got:?}"
    );
    assert_eq!(sorted, want, "exactly what was meant for u");
    let mut last = [None::<usize>; 8];
    for &i in got {
        let p = i % 8;
        assert!(last[p] < Some(i), "partition {p}: {i} after {:?}", last[p]);
        last[p] = Some(i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_while_ten_buffers_flow_past_gets_every_event_once_in_order() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |c| c.streams.replay.max_events = 40).await;
    let mut c = node.subscribe(PATH).await;
    send(&p, 0..80).await;
    let (got, last) = read(&mut c, for_u(0..80)).await;
    assert_exact(&got, 0..80);
    drop(c);
    // 10x the buffer while away.
    send(&p, 80..480).await;
    consumed(&node, 480).await;
    let mut c = node.subscribe_with(PATH, Some(&last)).await;
    assert_eq!(
        c.headers["herald-resumed-after"].to_str().unwrap(),
        last,
        "a clean resume"
    );
    let (mut got, _) = read(&mut c, for_u(80..480)).await;
    // Live events follow, from the seam on.
    send(&p, 480..520).await;
    got.extend(read(&mut c, for_u(480..520)).await.0);
    assert_exact(&got, 80..520);
    let page = node.metrics();
    assert!(metric(&page, "herald_resumes_total", Some("outcome=\"catchup\"")) >= 1.0);
    assert!(metric(&page, "herald_catchup_records_read_total", None) >= 400.0);
    assert_eq!(node.catchups(), 0);
}

/// A client reading its resume from the buffer slower than the buffer
/// turns over: the rest of its range, evicted before it was read, is caught
/// up from Kafka (no reset, nothing lost or repeated), then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_overtaken_by_eviction_goes_on_from_kafka() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |c| c.streams.replay.max_events = 300).await;
    let mut c = node.subscribe(PATH).await;
    send(&p, 0..8).await;
    let (_, last) = read(&mut c, for_u(0..8)).await;
    drop(c);
    // ~3 MB held: more than the first writes and the socket buffers take.
    send_padded(&p, 8..308, 10_000).await;
    consumed(&node, 308).await;
    let stalled = node.stalled(PATH, Some(&last)).await;
    let replayed = || metric(&node.metrics(), "herald_events_replayed_total", None);
    eventually(|| replayed() > 0.0, "the replay started").await;
    // 300 more records evict all that was held; then the client reads.
    send(&p, 308..608).await;
    consumed(&node, 608).await;
    let mut c = support::SseClient::from_raw(stalled).await;
    let mut got = Vec::new();
    for ev in c.next_n(for_u(8..608)).await {
        assert_eq!(ev.event, "message", "{ev:?}");
        got.push(ev.data.split(' ').next().unwrap().parse().unwrap());
    }
    assert_exact(&got, 8..608);
    send(&p, 608..640).await;
    got.extend(read(&mut c, for_u(608..640)).await.0);
    assert_exact(&got, 8..640);
    let page = node.metrics();
    assert!(metric(&page, "herald_catchup_records_read_total", None) > 0.0);
    assert_eq!(
        metric(
            &page,
            "herald_stream_resets_total",
            Some("reason=\"last-event-id-not-retained\"")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_between_two_nodes_loses_and_repeats_nothing() {
    const TOTAL: usize = 1600;
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    // Small buffers: some hops resume from the buffer, some from Kafka.
    let a = server(&cluster, |c| c.streams.replay.max_events = 100).await;
    let b = server(&cluster, |c| c.streams.replay.max_events = 100).await;
    // The flow starts once the first stream is open: a stream without a
    // cursor begins at the present.
    let (opened, first_open) = tokio::sync::oneshot::channel();
    let flow = tokio::spawn(async move {
        first_open.await.unwrap();
        for start in (0..TOTAL).step_by(40) {
            send(&p, start..start + 40).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    let mut got = Vec::new();
    let mut last: Option<String> = None;
    let mut opened = Some(opened);
    for hop in 0..20 {
        let node = if hop % 2 == 0 { &a } else { &b };
        let mut c = node.subscribe_with(PATH, last.as_deref()).await;
        if let Some(go) = opened.take() {
            go.send(()).unwrap();
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(60 + 17 * hop);
        loop {
            // Without a cursor the next stream would begin at the present:
            // a hop leaves only once it has one.
            let ev = match (&last, tokio::time::timeout_at(until, c.next()).await) {
                (_, Ok(ev)) => ev,
                (None, Err(_)) => c.next().await,
                (Some(_), Err(_)) => break,
            };
            assert_eq!(ev.event, "message", "hop {hop}: {ev:?}");
            got.push(ev.data.parse().unwrap());
            last = Some(ev.id);
        }
    }
    flow.await.unwrap();
    let want = (0..TOTAL).filter(|&i| meant_for_u(i)).count();
    let mut c = a.subscribe_with(PATH, last.as_deref()).await;
    if got.len() >= want {
        assert_exact(&got, 0..TOTAL);
    }
    got.extend(read(&mut c, want - got.len()).await.0);
    assert_exact(&got, 0..TOTAL);
    c.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_with_its_defaults_resumes_old_cursors() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |_| {}).await;
    let mut c = node.subscribe(PATH).await;
    send(&p, 0..40).await;
    let (got, last) = read(&mut c, for_u(0..40)).await;
    assert_exact(&got, 0..40);
    drop(c);
    node.shutdown().await;
    // Records flow while no node runs; the new one starts at "latest".
    send(&p, 40..200).await;
    let node = server(&cluster, |_| {}).await;
    send(&p, 200..240).await;
    consumed(&node, 240).await;
    let mut c = node.subscribe_with(PATH, Some(&last)).await;
    let (got, _) = read(&mut c, for_u(40..240)).await;
    assert_exact(&got, 40..240);
}

/// A forged cursor only sets positions: the stream's user still decides
/// what it gets; topics the node does not read are ignored; offsets past
/// the end are the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cursor_never_widens_a_stream() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |c| c.streams.replay.max_events = 10).await;
    send(&p, 0..96).await;
    consumed(&node, 96).await;
    let forged = |next: i64, topic: &str| {
        Cursor {
            topics: vec![TopicOffsets {
                fingerprint: fingerprint(topic),
                next: vec![next; 8],
            }],
        }
        .encode()
    };
    // From the beginning, as user v: v's records only.
    let mut c = node.subscribe_with("v", Some(&forged(0, TOPIC))).await;
    // v's records and broadcasts.
    let want: Vec<usize> = (0..96).filter(|&i| kind(i) >= 2).collect();
    let (mut got, _) = read(&mut c, want.len()).await;
    got.sort_unstable();
    assert_eq!(got, want);
    c.assert_quiet(Duration::from_millis(300)).await;
    // Wild offsets: treated as the end; then live.
    let mut wild = node
        .subscribe_with(PATH, Some(&forged(i64::MAX / 4, TOPIC)))
        .await;
    // Another system's topics: ignored (live from now).
    let mut other = node
        .subscribe_with(PATH, Some(&forged(0, "elsewhere")))
        .await;
    // The end is where Kafka's end is when the catch-up starts: records
    // sent before that count as passed.
    joined_live(&node).await;
    send(&p, 96..136).await;
    let (got, _) = read(&mut wild, for_u(96..136)).await;
    assert_exact(&got, 96..136);
    let (got, _) = read(&mut other, for_u(96..136)).await;
    assert_exact(&got, 96..136);
}

/// An id herald cannot read gets the reset event (and the stream), never a
/// 400: a 400 makes EventSource stop reconnecting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_id_is_a_reset_and_the_stream_goes_on() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |_| {}).await;
    for bad in ["c.!!", "not-an-id", "c.AQE", "x:y:z"] {
        let mut c = node.subscribe_with(PATH, Some(bad)).await;
        let reset = c.next().await;
        assert_eq!(reset.event, "herald-reset", "{bad}");
        let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(data["reason"], "last-event-id-unreadable", "{bad}");
        send(&p, 0..8).await;
        let (got, _) = read(&mut c, 8).await;
        assert_eq!(got.len(), 8);
    }
    let page = node.metrics();
    assert!(
        metric(
            &page,
            "herald_stream_resets_total",
            Some("reason=\"last-event-id-unreadable\"")
        ) >= 4.0
    );
}

/// A cursor older than what Kafka keeps gets the named reset and goes on
/// from the oldest record kept. (The mock broker keeps 5 MB per partition.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_retention_is_a_named_reset_then_everything_kept() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let node = server(&cluster, |c| c.streams.replay.max_events = 10).await;
    let mut c = node.subscribe(PATH).await;
    send(&p, 0..8).await;
    let (_, last) = read(&mut c, 8).await;
    drop(c);
    // 8 MB of someone else's records on partition 0: the oldest go.
    let big = "x".repeat(200_000);
    for _ in 0..40 {
        let r = FutureRecord::<str, str>::to(TOPIC)
            .partition(0)
            .key("v")
            .payload(&big);
        p.send(r, Duration::from_secs(10)).await.unwrap();
    }
    send(&p, 8..16).await;
    consumed(&node, 56).await;
    let mut c = node.subscribe_with(PATH, Some(&last)).await;
    let reset = c.next().await;
    assert_eq!(reset.event, "herald-reset");
    let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(data["reason"], "retention", "{data}");
    let (got, _) = read(&mut c, 8).await;
    assert_exact(&got, 8..16);
    assert!(
        metric(
            &node.metrics(),
            "herald_stream_resets_total",
            Some("reason=\"retention\"")
        ) >= 1.0
    );
}

/// Catch-ups are bounded: per user (429) and waiting for a reader (503),
/// both with Retry-After; a stream that reads nothing holds a reader only
/// until --write-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchups_are_bounded_per_user_and_in_total() {
    use std::num::NonZeroUsize;
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    let one = NonZeroUsize::MIN;
    let node = server(&cluster, |c| {
        c.streams.replay.max_events = 10;
        c.server.write_timeout = Some(Duration::from_secs(10));
        if let Some(k) = c.kafka.as_mut() {
            k.catchup.readers = one;
            k.catchup.max_waiting = one;
            k.catchup.per_user = one;
        }
    })
    .await;
    let mut c = node.subscribe(PATH).await;
    send(&p, 0..8).await;
    // Other users resume from before the stalled stream's cursor (behind
    // it on partitions 1-7): a stream joins a running reader that has not
    // passed its position yet, so from the same cursor they might not wait.
    let (_, early) = read(&mut c, 1).await;
    let (_, last) = read(&mut c, 7).await;
    drop(c);
    // 8 MB for u: more than a feed, a queue and socket buffers hold (a
    // loopback sender's buffer alone may grow to 4 MB: with 4 MB here the
    // stalled catch-up sometimes finished, and freed its reader, early).
    let big = "y".repeat(10_000);
    for start in (0..800).step_by(50) {
        let mut pending = Vec::new();
        for i in start..start + 50 {
            let r = FutureRecord::<str, str>::to(TOPIC)
                .partition(i % 8)
                .key("u")
                .payload(&big);
            pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
        }
        for s in pending {
            s.await.unwrap().unwrap();
        }
    }
    consumed(&node, 808).await;
    // The only reader is held by a stream that reads nothing.
    let stalled = node.stalled("u", Some(&last)).await;
    eventually(|| node.catchups() == 1, "the stalled catch-up").await;
    // Same user: 429.
    let resp = node
        .http
        .get(node.url("/api/sse/subscribe/u"))
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // Another user waits (its stream is open)...
    let waiting = node.subscribe_with("w", Some(&early)).await;
    assert_eq!(node.catchups(), 2);
    // ... and past --catchup-max-waiting: 503.
    let resp = node
        .http
        .get(node.url("/api/sse/subscribe/x"))
        .header("last-event-id", &early)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // The stalled stream is closed at --write-timeout; the waiting one is
    // then served.
    eventually(|| node.catchups() == 0, "catch-ups done").await;
    drop(waiting);
    // The server closed the stalled connection (slow or write timeout):
    // what it had sent, then the end.
    let mut stalled = stalled;
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(support::WAIT, async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut stalled, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
}
