//! Catch-up at scale, in its own test binary (tests of one binary run in
//! parallel; this one takes both cores for a few seconds).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use support::kafka::{cluster, consumed, joined_live, producer, read, server, TOPIC};
use support::{metric, SseClient};

/// 1,000 streams resume at once from a cursor 60,000 records old (a minute
/// at 1,000 records/s) while 1,000 records/s keep flowing: every stream gets
/// exactly its records in order, at most `--catchup-readers` Kafka readers
/// run, and a live stream beside them misses nothing. Prints the figures
/// (run with `--release -- --nocapture` for the ones worth quoting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_catch_up_at_once_exactly_with_bounded_readers() {
    const STREAMS: usize = 1000;
    const HISTORY: usize = 60_000;
    const LIVE_RATE: usize = 1000;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let p = producer(&brokers);
    let node = server(&cluster, |c| c.streams.replay.max_events = 1000).await;
    let first = node.subscribe("c0").await;
    let cursor = first.headers["herald-resumed-after"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(first);
    let mut live = node.subscribe("live").await;
    // Record i is for user c{i % STREAMS} (one partition per user: order).
    let keyed = |i: usize| {
        let key = format!("c{}", i % STREAMS);
        (key, i.to_string())
    };
    let t = std::time::Instant::now();
    let mut pending = Vec::new();
    for i in 0..HISTORY {
        let (key, value) = keyed(i);
        let r = FutureRecord::to(TOPIC).key(&key).payload(&value);
        pending.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
        if pending.len() == 5000 {
            for s in pending.drain(..) {
                s.await.unwrap().unwrap();
            }
        }
    }
    for s in pending {
        s.await.unwrap().unwrap();
    }
    consumed(&node, HISTORY as i64).await;
    eprintln!("history: {HISTORY} records in {:?}", t.elapsed());
    // One stream alone first: the rate of one reader.
    let read_before = metric(&node.metrics(), "herald_catchup_records_read_total", None);
    let t = std::time::Instant::now();
    let mut one = node.subscribe_with("c1", Some(&cursor)).await;
    let (got, _) = read(&mut one, HISTORY / STREAMS).await;
    assert_eq!(got, (1..HISTORY).step_by(STREAMS).collect::<Vec<_>>());
    joined_live(&node).await;
    let alone = t.elapsed();
    drop(one);
    let read_alone =
        metric(&node.metrics(), "herald_catchup_records_read_total", None) - read_before;
    eprintln!(
        "one stream: {read_alone} records read, caught up and live in {alone:?} ({:.0} records/s)",
        read_alone / alone.as_secs_f64()
    );

    // Live flow from here: 1,000 records/s, for the users and for "live".
    let flowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flow = {
        let (p, flowing) = (producer(&brokers), flowing.clone());
        tokio::spawn(async move {
            let mut i = HISTORY;
            let tick = Duration::from_millis(10);
            let mut n = 0usize;
            while flowing.load(std::sync::atomic::Ordering::Relaxed) {
                let mut batch = Vec::new();
                for _ in 0..LIVE_RATE / 100 {
                    batch.push(keyed(i));
                    i += 1;
                }
                // And one for the live stream beside them.
                batch.push(("live".to_owned(), n.to_string()));
                n += 1;
                for (key, value) in &batch {
                    let r = FutureRecord::to(TOPIC).key(key).payload(value);
                    p.send_result(r)
                        .map_err(|(e, _)| e)
                        .unwrap()
                        .await
                        .unwrap()
                        .unwrap();
                }
                tokio::time::sleep(tick).await;
            }
            n
        })
    };
    let rss_before = rss();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..STREAMS {
        let url = node.url(&format!("/api/sse/subscribe/c{k}"));
        let http = node.http.clone();
        let cursor = cursor.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .get(url)
                .header("last-event-id", cursor)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut c = SseClient::new(resp);
            let opened = std::time::Instant::now();
            let mut got = Vec::new();
            // Its 60 records of history, then at least one live one.
            while got.len() < HISTORY / STREAMS + 1 {
                let ev = c.next().await;
                assert_eq!(ev.event, "message", "c{k}: {ev:?}");
                got.push(ev.data.parse::<usize>().unwrap());
            }
            let behind = opened.elapsed();
            (k, got, behind, c)
        }));
    }
    // Sample readers and memory while they work.
    let (mut readers, mut peak_rss) = (0, 0);
    while !tasks.iter().all(|t| t.is_finished()) {
        readers =
            readers.max(metric(&node.metrics(), "herald_catchup_readers_busy", None) as usize);
        peak_rss = peak_rss.max(rss());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::new();
    let mut clients = Vec::new();
    for t in tasks {
        let (k, got, behind, c) = t.await.unwrap();
        let want: Vec<usize> = (k..HISTORY).step_by(STREAMS).collect();
        assert_eq!(&got[..want.len()], &want[..], "c{k}: its history, in order");
        assert!(got[want.len()] >= HISTORY && got[want.len()] % STREAMS == k);
        times.push(behind);
        clients.push(c);
    }
    let all = start.elapsed();
    flowing.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = flow.await.unwrap();
    times.sort();
    eprintln!(
        "{STREAMS} streams resuming at once from a cursor {HISTORY} records old: all caught up in {all:?}; per stream p50 {:?} p99 {:?} max {:?}; \
         readers at most {readers}; RSS (test process, herald and clients) {:.1} -> {:.1} MB peak",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1],
        rss_before as f64 / 1e6,
        peak_rss as f64 / 1e6,
    );
    assert!(readers <= 4, "readers {readers}");
    // A stream may get its first live records from its reader, just before
    // it is joined to the live fan-out.
    joined_live(&node).await;
    // The live stream got every record for it, in order.
    let want: Vec<usize> = (0..sent).collect();
    let (got, _) = read(&mut live, want.len()).await;
    assert_eq!(got, want, "the live stream missed nothing");
    let page = node.metrics();
    let read_records = metric(&page, "herald_catchup_records_read_total", None);
    eprintln!(
        "catch-up readers read {read_records} records: {:.0} records/s",
        read_records / all.as_secs_f64()
    );
}

/// Resident memory of this process (bytes).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}
