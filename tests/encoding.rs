//! Payloads with LF, CR and CRLF line breaks (and spaces, colons, NUL,
//! non-ASCII) go through the real server and come out of an independent SSE
//! parser intact: lines kept, breaks normalized to LF as the standard says.
//! Raw multi-line text enters through the dispatcher (the path Kafka values
//! take); JSON through the publish API is checked in `subscribe.rs`.

#![allow(clippy::unwrap_used)]

mod support;

use herald::event::Event;
use herald::event::Target;
use herald::fanout::Source;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use support::TestServer;

fn expected(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

#[test]
fn multi_line_payloads_arrive_intact() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(async {
        let server = TestServer::start().await;
        let client = server.subscribe("enc").await;
        (server, std::cell::RefCell::new(client))
    });
    let user = Target::User(herald::event::Name::new("enc").unwrap());
    let chars = prop::sample::select(vec![
        "a",
        "b",
        " ",
        ":",
        "\n",
        "\r",
        "\r\n",
        "é",
        "\u{2028}",
        "\0",
        "data: x",
        "{\"k\":1}",
    ]);
    let strategy = (
        prop::collection::vec(chars, 0..40).prop_map(|v| v.concat()),
        prop::option::of("[a-z][a-z.-]{0,10}"),
    );
    let mut runner = TestRunner::new(PropConfig {
        cases: 256,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&strategy, |(data, event)| {
            let ids = server.fanout.publish(
                &[Event::new(user.clone(), data.as_str()).with_kind(event.as_deref())],
                Source::Http,
            );
            let ev = rt.block_on(client.borrow_mut().next());
            prop_assert_eq!(&ev.data, &expected(&data));
            prop_assert_eq!(&ev.event, event.as_deref().unwrap_or("message"));
            prop_assert_eq!(ev.id, ids[0].to_string());
            Ok(())
        })
        .unwrap();
    drop(client);
    rt.block_on(server.shutdown());
}
