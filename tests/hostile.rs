//! Bad input: every case is a 4xx that says what is wrong, nothing is
//! published, and the server keeps serving.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::TestServer;

async fn expect_error(server: &TestServer, body: &str, status: u16, needle: &str) {
    let (got, reply) = server
        .publish_raw(body.as_bytes().to_vec(), "application/json")
        .await;
    assert_eq!(got, status, "{body} -> {reply}");
    let msg = reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {reply}"));
    assert!(msg.contains(needle), "{body} -> {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving() {
    let server = TestServer::with(|c| c.publish.max_body = 4096).await;
    let mut witness = server.subscribe("w").await;

    // Routing.
    let (s, headers, body) = server.get("/nope").await;
    assert_eq!(
        (s, body.as_str()),
        (404, r#"{"error":"no route for /nope"}"#)
    );
    assert_eq!(headers["content-type"], "application/json");
    let resp = server
        .http
        .delete(server.url("/api/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert!(resp.text().await.unwrap().contains("use POST"));
    let resp = server
        .http
        .post(server.url("/api/sse/subscribe/u"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    // Publish bodies.
    expect_error(&server, "{\"user\":", 400, "invalid JSON").await;
    expect_error(&server, "", 400, "empty").await;
    expect_error(&server, "\"text\"", 400, "JSON object").await;
    expect_error(&server, r#"{"data":1}"#, 400, "no target").await;
    expect_error(
        &server,
        r#"{"user":"a","topic":"b","data":1}"#,
        400,
        "more than one target",
    )
    .await;
    expect_error(&server, r#"{"user":"a"}"#, 400, "missing field `data`").await;
    expect_error(
        &server,
        r#"{"user":"a","id":"1\n2","data":1}"#,
        400,
        "unknown field `id`",
    )
    .await;
    expect_error(
        &server,
        r#"{"user":"a","event":"x\ny","data":1}"#,
        400,
        "CR, LF or NUL",
    )
    .await;
    expect_error(
        &server,
        r#"{"user":"a","event":"x\u0000","data":1}"#,
        400,
        "CR, LF or NUL",
    )
    .await;
    expect_error(
        &server,
        r#"{"user":"a\nb","data":1}"#,
        400,
        "control character",
    )
    .await;
    expect_error(
        &server,
        r#"[{"user":"a","data":1},{"user":"b"}]"#,
        400,
        "missing field `data` at line 1 column 35",
    )
    .await;
    expect_error(
        &server,
        r#"[{"user":"a","data":1},{"data":2}]"#,
        400,
        "item 1: no target",
    )
    .await;
    let big = format!(r#"{{"user":"a","data":"{}"}}"#, "x".repeat(5000));
    expect_error(&server, &big, 413, "4096-byte limit").await;
    let (s, reply) = server.publish_raw(b"user=a".to_vec(), "text/plain").await;
    assert_eq!(s, 415, "{reply}");
    // A CORS-simple type dressed as JSON, or none at all: any web page could
    // send those without a preflight.
    let body = br#"{"broadcast":true,"data":1}"#.to_vec();
    let (s, reply) = server.publish_raw(body.clone(), "text/plain;x=+json").await;
    assert_eq!(s, 415, "{reply}");
    let resp = server
        .http
        .post(server.url("/api/publish"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // Any +json type is JSON (this body then fails on its missing target).
    let (s, reply) = server
        .publish_raw(
            br#"{"data":1}"#.to_vec(),
            "application/vnd.app+json; charset=utf-8",
        )
        .await;
    assert_eq!(s, 400, "{reply}");
    // herald's own event types are not for publishers.
    expect_error(
        &server,
        r#"{"user":"a","event":"herald-reset","data":1}"#,
        400,
        "which herald keeps",
    )
    .await;
    // Invalid UTF-8 inside the JSON.
    let (s, reply) = server
        .publish_raw(
            b"{\"user\":\"\xff\",\"data\":1}".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(s, 400, "{reply}");

    // Oversize body without content-length (chunked) is cut off too.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(bytes::Bytes::from(vec![b' '; 1000])))
        .collect();
    let resp = server
        .http
        .post(server.url("/api/publish"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Subscribe input.
    for (path, needle) in [
        ("/api/sse/subscribe/%FF", "UTF-8"),
        ("/api/sse/subscribe/", "non-empty user id"),
        ("/api/sse/subscribe/a/b", "non-empty user id"),
        ("/api/sse/subscribe/a%0Ab", "control character"),
        ("/api/sse/subscribe/u?topic=%FF", "UTF-8"),
        // CRLF and NUL injection into the user and topics.
        ("/api/sse/subscribe/a%0D%0Aevent:%20x", "control character"),
        ("/api/sse/subscribe/a%00b", "control character"),
        ("/api/sse/subscribe/u?topic=a%0D%0Ab", "control character"),
    ] {
        let (s, _, body) = server.get(path).await;
        assert_eq!(s, 400, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    // An id herald cannot read (SQL, CRLF injection, absurdly long, not
    // text) is never a 400, which would make EventSource give up for good:
    // the stream starts with a reset that does not echo it.
    let absurd = "9".repeat(5000);
    for id in ["%27%3B%20DROP", "1-1%0D%0Adata:%20x", absurd.as_str()] {
        let mut c = server.subscribe(&format!("u?lastEventId={id}")).await;
        let reset = c.next().await;
        assert_eq!(reset.event, "herald-reset", "{id}");
        assert!(
            reset.data.contains("last-event-id-unreadable") && !reset.data.contains("DROP"),
            "{}",
            reset.data
        );
    }
    let reply = server
        .raw(b"GET /api/sse/subscribe/u HTTP/1.1\r\nhost: x\r\nlast-event-id: \xff\xfe\r\nconnection: close\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("last-event-id-unreadable"), "{reply}");
    // Raw non-UTF-8 bytes in the request line: hyper refuses them.
    let reply = server
        .raw(b"GET /api/sse/subscribe/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Overlong user id, thousands of topic= parameters, an overlong path.
    let (st, _, body) = server
        .get(&format!("/api/sse/subscribe/{}", "u".repeat(2000)))
        .await;
    assert_eq!(st, 400, "{body}");
    let many = vec!["topic=t"; 1500].join("&");
    let (st, _, body) = server.get(&format!("/api/sse/subscribe/u?{many}")).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("at most"), "{body}");
    // Past --max-header-bytes the head itself is refused.
    let many = vec!["topic=t"; 5000].join("&");
    let (st, _, _) = server.get(&format!("/api/sse/subscribe/u?{many}")).await;
    assert_eq!(st, 431);
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "p".repeat(60_000)
    );
    let reply = server.raw(long_path.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 431")
            || reply.starts_with("HTTP/1.1 414")
            || reply.starts_with("HTTP/1.1 400"),
        "{}",
        &reply[..reply.len().min(100)]
    );
    // A response-splitting attempt in a published event name and id field.
    let (st, reply) = server
        .publish(json!({"user": "w", "event": "x\r\nid: 9", "data": 1}))
        .await;
    assert_eq!(st, 400, "{reply}");
    // Garbage instead of HTTP.
    let reply = server.raw(b"\x16\x03\x01\x00\xa5hello\r\n\r\n").await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );

    // Nothing of the above was published; the server still works.
    assert_eq!(server.fanout.replay_len().0, 0);
    server
        .publish_ok(json!({"user": "w", "data": "still here"}))
        .await;
    assert_eq!(witness.next().await.data, r#""still here""#);
}
