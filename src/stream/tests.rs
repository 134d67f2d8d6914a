use std::task::Waker;

use super::*;
use crate::registry::queue::Limits;
use crate::registry::Registry;

const LIMITS: Limits = Limits {
    max_frames: 1024,
    max_bytes: 1 << 20,
    stall: None,
};

fn settings(coalesce: Option<Duration>) -> Settings {
    Settings {
        retry: Duration::from_secs(3),
        coalesce,
        account: true,
    }
}

fn stream(replay: Vec<Bytes>, coalesce: Option<Duration>, abort: Option<Arc<Abort>>) -> Stream {
    let registry = Arc::new(Registry::new(1));
    let sub = registry.insert(Name::new("u").unwrap(), vec![], None, abort);
    Stream::new(
        sub,
        Bytes::from_static(b"head\n\n"),
        replay,
        &settings(coalesce),
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
fn the_prefix_leaves_in_large_writes_then_live_batches() {
    let frame = Bytes::from(vec![b'x'; 1000]);
    let mut s = stream(vec![frame; 200], None, None);
    let mut writes = Vec::new();
    while let Poll::Ready(Next::Data(b)) = poll(&mut s) {
        writes.push(b.len());
    }
    // 6 bytes of head + 200,000 of replay, in writes of just over 64 KiB.
    assert_eq!(writes.iter().sum::<usize>(), 6 + 200 * 1000);
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert!(
        writes[..3].iter().all(|w| *w >= PREFIX_WRITE_BYTES),
        "{writes:?}"
    );
    assert!(s.prefix.is_none(), "the prefix is freed once written");
    assert_eq!(s.sub.subscriber().delivered.load(Ordering::Relaxed), 200);

    push(&s, b"a");
    push(&s, b"b");
    assert_eq!(
        poll(&mut s),
        Poll::Ready(Next::Data(Bytes::from_static(b"ab")))
    );
    assert!(poll(&mut s).is_pending());
    assert_eq!(s.sub.subscriber().delivered.load(Ordering::Relaxed), 202);
}

#[tokio::test(start_paused = true)]
async fn a_coalescing_window_holds_the_next_write() {
    let mut s = stream(vec![], Some(Duration::from_millis(100)), None);
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
}

#[test]
fn ends_by_reason() {
    let mut s = stream(vec![], None, None);
    let _ = poll(&mut s);
    push(&s, b"last");
    s.sub
        .subscriber()
        .end(CloseReason::Shutdown, Some(Bytes::from_static(b"retry")));
    assert_eq!(
        poll(&mut s),
        Poll::Ready(Next::Data(Bytes::from_static(b"lastretry")))
    );
    assert_eq!(poll(&mut s), Poll::Ready(Next::End));
    assert_eq!(s.reason(), CloseReason::Shutdown);

    let mut s = stream(vec![], None, None);
    let _ = poll(&mut s);
    for _ in 0..=LIMITS.max_frames {
        push(&s, b"x");
    }
    assert_eq!(
        poll(&mut s),
        Poll::Ready(Next::Abort),
        "overflowed: cut off"
    );
    assert_eq!(s.reason(), CloseReason::Slow);

    let mut s = stream(vec![], None, None);
    assert_eq!(
        s.reason(),
        CloseReason::Client,
        "nothing said: the client left"
    );
    s.end(CloseReason::Error);
    s.end(CloseReason::Client);
    assert_eq!(s.reason(), CloseReason::Error, "the first reason wins");

    let conn = Abort::new();
    let s = stream(vec![], None, Some(conn.clone()));
    conn.record(CloseReason::WriteTimeout);
    assert_eq!(
        s.reason(),
        CloseReason::WriteTimeout,
        "the transport's record"
    );
}

#[test]
fn io_errors_map_to_reasons() {
    use std::io::ErrorKind as K;
    for (kind, reason) in [
        (K::TimedOut, CloseReason::WriteTimeout),
        (K::BrokenPipe, CloseReason::Client),
        (K::ConnectionReset, CloseReason::Client),
        (K::PermissionDenied, CloseReason::Error),
    ] {
        assert_eq!(io_reason(&io::Error::from(kind)), reason, "{kind:?}");
    }
}
