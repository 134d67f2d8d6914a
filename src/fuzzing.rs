//! Entry points for the fuzz targets in `fuzz/` (not a public API): each
//! runs one parser or encoder on arbitrary input and checks what must hold
//! for any input, panicking when it does not. Crash inputs found by the
//! fuzzer are kept as regression tests in `tests/fuzz_regressions.rs`.

use crate::event::Target;
use crate::sse::{frame, EventId};

/// The publish body decoder: any bytes give a 400 reason or items whose
/// data is compact JSON text that encodes to a frame an SSE parser reads
/// back unchanged.
pub fn publish_body(body: &[u8]) {
    checked_publish_body(body);
}

/// [`publish_body`], returning how many items it checked.
fn checked_publish_body(body: &[u8]) -> usize {
    let Ok((items, _batch)) = crate::http::publish::parse(body) else {
        return 0;
    };
    let n = items.len();
    for item in items {
        // Syntax only: numbers like 1e400 are valid JSON that a browser's
        // JSON.parse reads (as Infinity) but serde_json's Value refuses.
        assert!(
            serde_json::from_str::<Box<serde_json::value::RawValue>>(&item.data).is_ok(),
            "data is not JSON: {:?}",
            item.data
        );
        assert!(!item.data.contains(['\n', '\r']), "data is not compact");
        if let Target::User(n) | Target::Topic(n) = &item.target {
            assert!(!n.as_str().contains(['\r', '\n', '\0']));
        }
        let id = EventId::Local { epoch: 1, seq: 1 };
        let bytes = frame::event(&id, item.kind(), &item.data);
        let parsed = parse_frame(&bytes);
        assert_eq!(parsed.data, normalize(&item.data));
        assert_eq!(parsed.event.as_deref(), item.kind());
        assert_eq!(parsed.id.as_deref(), Some("1-1"));
    }
    n
}

/// The `Last-Event-ID` parser: any text gives an error or an id that prints
/// back to text parsing to the same id.
pub fn last_event_id(raw: &[u8]) {
    checked_last_event_id(raw);
}

/// [`last_event_id`], returning whether the text was an id.
fn checked_last_event_id(raw: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(raw) else {
        return false;
    };
    let parsed = s.parse::<EventId>();
    if let Ok(id) = &parsed {
        let again: EventId = id.to_string().parse().expect("printed id parses");
        assert_eq!(&again, id);
        assert!(!id.to_string().contains(['\r', '\n', '\0']));
    }
    // The whole subscribe request parser, with the same bytes as header.
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(raw) {
        headers.insert("last-event-id", v);
    }
    let _ = crate::http::subscribe::Params::from_parts("u", Some(s), &headers);
    parsed.is_ok()
}

/// The Kafka record mapping: any key, headers and value give a skip reason or
/// an event that encodes to a frame an SSE parser reads back unchanged.
pub fn kafka_record(key: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)], value: Option<&[u8]>) {
    checked_kafka_record(key, headers, value);
}

/// [`kafka_record`], returning whether the record mapped to an event.
fn checked_kafka_record(
    key: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    value: Option<&[u8]>,
) -> bool {
    let rule = crate::kafka::mapping::default_rule("t");
    let Ok(m) = rule.apply(key, headers, value, None) else {
        return false;
    };
    let id = EventId::Kafka {
        topic: "t".into(),
        partition: 0,
        offset: 7,
    };
    let bytes = frame::event(&id, m.kind(), &m.data);
    let parsed = parse_frame(&bytes);
    assert_eq!(parsed.data, normalize(&m.data));
    assert_eq!(parsed.event.as_deref(), m.kind());
    assert_eq!(parsed.id.as_deref(), Some("t:0:7"));
    true
}

/// Schema-registry payloads (Avro, Protobuf) of any bytes, with schemas
/// that use most types herald converts (unions, collections, decimals,
/// timestamps, dates, enums, fixed; nested and oneof messages, maps,
/// well-known types): a JSON value or an error, never a
/// panic, and a value that serializes to JSON text.
pub fn schema_decode(payload: &[u8]) {
    use std::sync::OnceLock;
    static SCHEMAS: OnceLock<(
        crate::kafka::format::avro::Avro,
        crate::kafka::format::protobuf::Proto,
    )> = OnceLock::new();
    let (avro, proto) = SCHEMAS.get_or_init(|| {
        let avro = crate::kafka::format::avro::Avro::parse(FUZZ_AVRO, &[]);
        let proto = crate::kafka::format::protobuf::Proto::parse(FUZZ_PROTO, &[]);
        match (avro, proto) {
            (Ok(a), Ok(p)) => (a, p),
            (a, p) => unreachable!("fuzz schemas parse: {:?} {:?}", a.err(), p.err()),
        }
    });
    let (which, rest) = payload.split_first().unwrap_or((&0, &[]));
    let out = if which & 1 == 0 {
        avro.decode(rest)
    } else {
        proto.decode(rest)
    };
    if let Ok(json) = out {
        let text = json.to_string();
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }
}

const FUZZ_AVRO: &str = r#"{"type":"record","name":"R","fields":[
  {"name":"a","type":["null","long","string"]},
  {"name":"b","type":{"type":"array","items":"double"}},
  {"name":"c","type":{"type":"map","values":"bytes"}},
  {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":30,"scale":4}},
  {"name":"e","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"f","type":{"type":"int","logicalType":"date"}},
  {"name":"g","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
  {"name":"h","type":{"type":"fixed","name":"F","size":3}},
  {"name":"i","type":["null",{"type":"record","name":"S","fields":[{"name":"s","type":"string"}]}]},
  {"name":"j","type":["null","S"]}]}"#;

const FUZZ_PROTO: &str = r#"syntax = "proto3";
import "google/protobuf/timestamp.proto";
message M { string s = 1; int64 i = 2; repeated double d = 3; bytes b = 4;
  map<string, M> m = 5; google.protobuf.Timestamp t = 6; E e = 7;
  oneof o { string x = 8; uint32 y = 9; } message N { sint32 z = 1; } N n = 10; }
enum E { A = 0; B = 1; }"#;

/// The SSE encoder: any data and any event type that passes the check give
/// one frame that an SSE parser reads back unchanged (line ends normalized).
pub fn sse_encode(event: &str, data: &str) {
    let event = frame::check_event_type(event).ok().map(|()| event);
    let id = EventId::Local {
        epoch: 0xab,
        seq: 3,
    };
    let bytes = frame::event(&id, event, data);
    assert!(bytes.ends_with(b"\n\n"));
    let parsed = parse_frame(&bytes);
    assert_eq!(parsed.data, normalize(data));
    assert_eq!(parsed.event.as_deref(), event);
    assert_eq!(parsed.id.as_deref(), Some("ab-3"));
}

/// [`kafka_record`] from raw fuzzer bytes: the first byte says which parts
/// are present (bit 0 key, 1 value, 2 `sse-event`, 3 `sse-topic`), the rest
/// is split on 0xFF into key, value, event header, topic header.
pub fn kafka_record_raw(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xFF);
    let mut next = || parts.next().unwrap_or_default();
    let (k, v, e, t) = (next(), next(), next(), next());
    let key = (flags & 1 != 0).then_some(k);
    let value = (flags & 2 != 0).then_some(v);
    let mut headers = vec![("other", Some(&b"x"[..]))];
    if flags & 4 != 0 {
        headers.push((crate::kafka::record::EVENT_HEADER, Some(e)));
    }
    if flags & 8 != 0 {
        headers.push((crate::kafka::record::TOPIC_HEADER, Some(t)));
    }
    kafka_record(key, &headers, value);
}

/// [`sse_encode`] from raw fuzzer bytes: event type before the first 0xFF,
/// data after it (both decoded lossily, so any bytes are a case).
pub fn sse_encode_raw(data: &[u8]) {
    let (event, rest) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    sse_encode(
        &String::from_utf8_lossy(event),
        &String::from_utf8_lossy(rest),
    );
}

/// Line ends as an SSE parser reports them: CRLF and CR become LF.
fn normalize(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

#[derive(Debug, Default)]
struct Parsed {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A small SSE parser written from the WHATWG rules (independent of the
/// encoder): exactly one event must be in `bytes`.
fn parse_frame(bytes: &[u8]) -> Parsed {
    let text = std::str::from_utf8(bytes).expect("frames are UTF-8");
    let mut out = Parsed::default();
    let mut data: Vec<&str> = Vec::new();
    let mut seen_data = false;
    let body = text
        .strip_suffix("\n\n")
        .expect("a frame ends with a blank line");
    assert!(!body.contains("\n\n"), "one frame only: {text:?}");
    assert!(!body.contains('\r'), "no CR in a frame");
    for line in body.split('\n') {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push(value);
                seen_data = true;
            }
            "event" => out.event = Some(value.to_owned()),
            "id" => out.id = Some(value.to_owned()),
            "" | "retry" => {}
            other => panic!("unexpected field {other:?}"),
        }
    }
    assert!(seen_data, "a frame without data is dropped by browsers");
    out.data = data.join("\n");
    out
}

/// herald's HTTP/2 server (`http::h2`) reading any bytes from a client
/// (after the preface, added here), every request answered by a stand-in
/// router: it ends the connection without a panic, and what it wrote is
/// whole frames, its SETTINGS first and a GOAWAY, if any, last.
pub fn h2_connection(data: &[u8]) {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let out = rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let route = |_req| -> crate::http::h2::Routed {
            Box::pin(std::future::ready(crate::http::text(
                http::StatusCode::OK,
                "ok",
            )))
        };
        let graceful = tokio_util::sync::CancellationToken::new();
        let ctx = crate::http::h2::Ctx {
            route: &route,
            peer: ([127, 0, 0, 1], 1).into(),
            graceful: &graceful,
            // The client's end of input ends the connection; these only
            // bound a case that would not.
            head_deadline: tokio::time::Instant::now() + Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_header_bytes: 16 * 1024,
            write_timeout: Some(Duration::from_secs(1)),
        };
        let io = crate::timed_io::TimedIo::new(server, None, crate::abort::Abort::new());
        let mut input = crate::http::h2::PREFACE.to_vec();
        input.extend_from_slice(data);
        let (mut r, mut w) = tokio::io::split(client);
        let write = async move {
            let _ = w.write_all(&input).await;
            let _ = w.shutdown().await;
        };
        let mut out = Vec::new();
        let read = async {
            let _ = r.read_to_end(&mut out).await;
        };
        let served = async {
            tokio::join!(crate::http::h2::serve(io, ctx), write, read);
        };
        // Every bound above is 1 s: a connection still open after 5 s waits
        // on something nothing bounds (a hang, reported as a crash).
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(ended.is_ok(), "the connection did not end within 5 s");
        out
    });
    let mut rest = &out[..];
    let mut first = true;
    let mut goaway = false;
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a partial frame header: {rest:?}");
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        assert!(rest.len() >= 9 + len, "a partial frame");
        assert!(!goaway, "a frame after GOAWAY");
        let (ty, flags) = (rest[3], rest[4]);
        if first {
            assert!(ty == 0x4 && flags == 0, "SETTINGS first, not {ty}");
            first = false;
        }
        goaway = ty == 0x7;
        rest = &rest[9 + len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_accept_ordinary_input() {
        // Each checks what it was given: the good cases reach the round
        // trip, the bad ones are refused before it.
        assert_eq!(
            checked_publish_body(
                br#"[{"user":"a","event":"e","data":"x\r\ny"},{"broadcast":true,"data":{"k":[1,2]}}]"#,
            ),
            2
        );
        assert_eq!(checked_publish_body(b"{not json"), 0);
        assert!(checked_last_event_id(b"ff-12"));
        assert!(checked_last_event_id(b"orders:3:99"));
        assert!(!checked_last_event_id(b"\xff"));
        assert!(!checked_last_event_id(b"not an id"));
        assert!(checked_kafka_record(
            Some(b"u"),
            &[("sse-event", Some(b"x"))],
            Some(b"a\rb")
        ));
        assert!(!checked_kafka_record(None, &[], Some(b"\xff")));
        sse_encode("ping", "line1\r\nline2\rline3\n");
        sse_encode("bad\nname", "");
        kafka_record_raw(b"\x0fkey\xffvalue\r\n\xffev\xfftopic");
        kafka_record_raw(b"");
        sse_encode_raw(b"ev\xffdata\rmore");
    }
}
