use std::task::Waker;

use super::*;
use crate::registry::queue::Limits;
use crate::registry::Registry;

const LIMITS: Limits = Limits {
    max_frames: 1024,
    max_bytes: 1 << 20,
    stall: None,
};

fn settings(coalesce: Coalesce) -> Settings {
    Settings {
        retry: Duration::from_secs(3),
        coalesce,
        account: true,
        access_log: false,
    }
}

fn stream(coalesce: Coalesce, abort: Option<Arc<Abort>>) -> Stream {
    let registry = Arc::new(Registry::new(1));
    let sub = registry.insert(Name::new("u").unwrap(), vec![], None, abort);
    Stream::new(sub, Bytes::from_static(b"head\n\n"), &settings(coalesce))
}

fn streams(replay_events: usize) -> Streams {
    let fanout = Arc::new(Fanout::new(
        Arc::new(Registry::new(4)),
        7,
        LIMITS,
        crate::replay::Limits {
            max_events: replay_events,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(60),
        },
    ));
    Streams::new(
        fanout,
        Arc::new(Lifecycle::new(None)),
        settings(Coalesce::default()),
    )
}

fn open(s: &Streams, resume: Option<EventId>) -> Opened {
    s.open(OpenRequest {
        user: Name::new("u").unwrap(),
        topics: vec![],
        resume: resume.map(Ok),
        since_us: None,
        expires_at: None,
        peer: "127.0.0.1:1".parse().unwrap(),
        conn: Abort::new(),
        transport: Transport::Herald,
        max_per_user: None,
        lease: None,
    })
    .unwrap()
}

fn publish(s: &Streams, n: usize, size: usize) -> Vec<EventId> {
    let data = "x".repeat(size);
    s.fanout.publish(
        &vec![crate::event::Event::new(crate::event::Target::Broadcast, data.as_str()); n],
        crate::fanout::Source::Http,
    )
}

fn poll(s: &mut Stream) -> Poll<Next> {
    s.poll_next(&mut Context::from_waker(Waker::noop()))
}

fn push(s: &Stream, frame: &'static [u8]) {
    let (_, waker) = s
        .sub
        .subscriber()
        .queue
        .try_push(&Bytes::from_static(frame), 1, 0, LIMITS);
    drop(waker);
}

#[test]
fn a_resume_is_read_in_large_writes_then_live_batches() {
    let s = streams(1000);
    let ids = publish(&s, 201, 1000);
    let mut opened = open(&s, Some(ids[0].clone()));
    assert_eq!(opened.after, ids[0]);
    let st = &mut opened.stream;
    let data = "x".repeat(1000);
    let replayed: usize = ids[1..]
        .iter()
        .map(|id| crate::sse::frame::event(id, None, &data).len())
        .sum();
    let preamble = crate::sse::frame::preamble(3000, &ids[0]).len();
    let mut writes = Vec::new();
    while let Poll::Ready(Next::Data(b)) = poll(st) {
        writes.push(b.len());
    }
    // The preamble and 200 replayed frames, in writes of just over 64 KiB.
    assert_eq!(writes.iter().sum::<usize>(), preamble + replayed);
    assert!(writes.len() >= 3, "{writes:?}");
    let (last, full) = writes.split_last().unwrap();
    assert!(full.iter().all(|w| *w >= PREFIX_WRITE_BYTES), "{writes:?}");
    assert!(*last > 0);
    assert!(st.prefix.is_none(), "the prefix is freed once written");
    assert_eq!(st.sub.subscriber().delivered.load(Ordering::Relaxed), 200);

    push(st, b"a");
    push(st, b"b");
    assert_eq!(poll(st), Poll::Ready(Next::Data(Bytes::from_static(b"ab"))));
    assert!(poll(st).is_pending());
    assert_eq!(st.sub.subscriber().delivered.load(Ordering::Relaxed), 202);
}

#[test]
fn a_resume_evicted_while_being_read_ends_in_a_reset_then_live() {
    let s = streams(100);
    let ids = publish(&s, 100, 2000);
    let mut opened = open(&s, Some(ids[0].clone()));
    let st = &mut opened.stream;
    let Poll::Ready(Next::Data(first)) = poll(st) else {
        panic!("the first write");
    };
    assert!(first.len() >= PREFIX_WRITE_BYTES);
    // A slow reader: 100 more events evict the rest of its range.
    let later = publish(&s, 100, 10);
    let Poll::Ready(Next::Data(reset)) = poll(st) else {
        panic!("the reset");
    };
    let text = String::from_utf8(reset.to_vec()).unwrap();
    assert!(
        text.starts_with(&format!("id: {}\nevent: herald-reset\n", ids[99])),
        "{text}"
    );
    assert!(st.prefix.is_none());
    // Then the live queue: the events published meanwhile, in order.
    let Poll::Ready(Next::Data(live)) = poll(st) else {
        panic!("live");
    };
    let live = String::from_utf8(live.to_vec()).unwrap();
    assert!(live.starts_with(&format!("id: {}\n", later[0])), "{live}");
}

#[tokio::test(start_paused = true)]
async fn a_coalescing_window_holds_the_next_write() {
    let always = Coalesce {
        always: Some(Duration::from_millis(100)),
        busy: None,
    };
    let mut s = stream(always, None);
    assert!(matches!(poll(&mut s), Poll::Ready(Next::Data(_))), "head");
    push(&s, b"1");
    assert_eq!(
        poll(&mut s),
        Poll::Ready(Next::Data(Bytes::from_static(b"1")))
    );
    push(&s, b"2");
    assert!(poll(&mut s).is_pending(), "within the window");
    push(&s, b"3");
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(
        poll(&mut s),
        Poll::Ready(Next::Data(Bytes::from_static(b"23"))),
        "what arrived in the window leaves in one write"
    );
    // A close within the window is seen when the window ends.
    s.sub
        .subscriber()
        .end(crate::registry::queue::CloseReason::Shutdown, None);
    assert!(poll(&mut s).is_pending());
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(poll(&mut s), Poll::Ready(Next::End));
}

#[tokio::test(start_paused = true)]
async fn a_busy_window_holds_only_streams_that_batch_on_a_busy_node() {
    use crate::registry::load::{BUSY_RATE, BUSY_WINDOW};
    let busy = Coalesce {
        always: None,
        busy: Some(Duration::from_millis(100)),
    };
    let mut s = stream(busy, None);
    let data = |b: &'static [u8]| Poll::Ready(Next::Data(Bytes::from_static(b)));
    let period = |s: &Stream, frames: u64| {
        let load = s.sub.registry().load();
        load.tick(Duration::ZERO);
        load.count_queued(frames);
        std::thread::sleep(BUSY_WINDOW + Duration::from_millis(1));
        load.tick(Duration::ZERO);
    };
    assert!(matches!(poll(&mut s), Poll::Ready(Next::Data(_))), "head");
    // Not busy: a batch leaves, and the next event leaves at once.
    period(&s, 0);
    push(&s, b"1");
    push(&s, b"2");
    assert_eq!(poll(&mut s), data(b"12"));
    push(&s, b"3");
    assert_eq!(poll(&mut s), data(b"3"));
    assert!(s.hold.is_none(), "no timer while nothing is held");
    // Busy: a write of one event holds nothing...
    period(&s, BUSY_RATE);
    assert!(s.sub.registry().load().busy());
    push(&s, b"4");
    assert_eq!(poll(&mut s), data(b"4"));
    push(&s, b"5");
    push(&s, b"6");
    assert_eq!(poll(&mut s), data(b"56"));
    // ...a write of two holds the next one for the window.
    push(&s, b"7");
    assert!(poll(&mut s).is_pending(), "held within the window");
    push(&s, b"8");
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(poll(&mut s), data(b"78"), "one fuller write");
    // Not busy any more: the window set by that write passes, then
    // nothing is held and the timer is freed.
    period(&s, 0);
    push(&s, b"9");
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(poll(&mut s), data(b"9"));
    push(&s, b"a");
    push(&s, b"b");
    assert_eq!(poll(&mut s), data(b"ab"));
    assert!(s.hold.is_none());
    push(&s, b"c");
    assert_eq!(poll(&mut s), data(b"c"), "not held");
}
