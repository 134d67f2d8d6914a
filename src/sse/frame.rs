//! The only code that writes SSE bytes, per the WHATWG HTML standard's
//! `text/event-stream` format (§9.2 "Server-sent events").
//!
//! An event becomes one finalized [`Bytes`]: `id:`, optional `event:`, one
//! `data:` line per payload line, and the blank line that dispatches it.
//! Payload lines are split on CR, LF and CRLF, as the parser does, so what the
//! browser's `event.data` holds is the payload with line breaks normalized to
//! LF. Ids and event types can not be split that way: a CR, LF or NUL in one
//! would end the field early (or, for NUL in an id, make the browser ignore
//! it), so they are rejected ([`FieldError`]) before anything is encoded.
//!
//! Every field name is written with a following space (`data: x`): the parser
//! strips exactly one leading space, so a payload line that itself starts with
//! a space survives.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// A comment frame: keeps proxies and the browser's connection alive, ignored
/// by `EventSource`.
pub const HEARTBEAT: Bytes = Bytes::from_static(b":\n\n");

/// Named event sent when a resume id is older than the replay buffer (or from
/// another run of the server): the page missed events and should reload.
pub const RESET_EVENT: &str = "herald-reset";

/// Named event sent just before a stream is ended at its token's `exp`.
pub const TOKEN_EXPIRED_EVENT: &str = "herald-token-expired";
/// The event that ends a stream an operator closed (the admin API).
pub const CLOSED_EVENT: &str = "herald-closed";

/// Response header naming the id a stream continues after (equal to the
/// requested `Last-Event-ID` on a clean resume).
pub const RESUMED_AFTER_HEADER: &str = "herald-resumed-after";

/// Why a resume could not continue exactly where the client asked: the
/// `reason` of a [`RESET_EVENT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The id is older than what the replay buffer holds, or from another
    /// run of the server (embedded mode, or an id of an earlier version).
    NotRetained,
    /// The cursor is older than what Kafka still keeps (retention): the
    /// stream continues from the oldest record kept.
    Retention,
    /// The id is not one herald can read (another system's, garbled).
    Unreadable,
}

impl ResetReason {
    pub const ALL: [ResetReason; 3] = [
        ResetReason::NotRetained,
        ResetReason::Retention,
        ResetReason::Unreadable,
    ];

    /// The reset event's `reason`.
    pub fn label(self) -> &'static str {
        match self {
            ResetReason::NotRetained => "last-event-id-not-retained",
            ResetReason::Retention => "retention",
            ResetReason::Unreadable => "last-event-id-unreadable",
        }
    }

    /// Counts one reset (`herald_stream_resets_total{reason}`).
    pub fn count(self) {
        metrics::counter!(crate::metrics::STREAM_RESETS, "reason" => self.label()).increment(1);
    }
}

/// Why an id or event type can not go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("is empty")]
    Empty,
    #[error("contains a CR, LF or NUL character, which would break the SSE framing")]
    LineBreak,
    #[error("is longer than {MAX_EVENT_TYPE_BYTES} bytes")]
    TooLong,
    #[error("starts with {RESERVED_PREFIX:?}, which herald keeps for its own events (herald-reset, herald-token-expired)")]
    Reserved,
}

/// Event types starting with this are herald's own: pages act on them.
pub const RESERVED_PREFIX: &str = "herald-";

/// Checks an SSE event type a publisher gives: non-empty, short, no
/// CR/LF/NUL, not one of herald's own (`herald-`).
pub fn check_event_type(s: &str) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::Empty);
    }
    if s.len() > MAX_EVENT_TYPE_BYTES {
        return Err(FieldError::TooLong);
    }
    if s.starts_with(RESERVED_PREFIX) {
        return Err(FieldError::Reserved);
    }
    check_single_line(s)
}

/// Checks that a field value holds no CR, LF or NUL.
pub fn check_single_line(s: &str) -> Result<(), FieldError> {
    if memchr::memchr3(b'\r', b'\n', b'\0', s.as_bytes()).is_some() {
        Err(FieldError::LineBreak)
    } else {
        Ok(())
    }
}

/// Builds one frame. Callers validate `id`/`event` first (see
/// [`check_event_type`]); the builder asserts it in debug builds only.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
}

// === impl FrameBuilder ===

impl FrameBuilder {
    /// Starts a frame with room for `data_len` payload bytes plus fields.
    pub fn new(data_len: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(data_len + 64),
        }
    }

    /// `id: <id>`. `id` must be a single line without NUL.
    pub fn id(mut self, id: impl std::fmt::Display) -> Self {
        use std::fmt::Write;
        self.buf.put_slice(b"id: ");
        // Writing into a BytesMut can not fail.
        let _ = write!(self.buf, "{id}");
        self.buf.put_u8(b'\n');
        self
    }

    /// `event: <type>`; `None` leaves the default type (`message`).
    pub fn event(mut self, event: Option<&str>) -> Self {
        if let Some(event) = event {
            debug_assert!(check_single_line(event).is_ok());
            self.buf.put_slice(b"event: ");
            self.buf.put_slice(event.as_bytes());
            self.buf.put_u8(b'\n');
        }
        self
    }

    /// `retry: <ms>`: the browser's reconnection delay.
    pub fn retry(mut self, millis: u64) -> Self {
        use std::fmt::Write;
        let _ = writeln!(self.buf, "retry: {millis}");
        self
    }

    /// `: <text>`: a comment. `text` must be a single line.
    pub fn comment(mut self, text: &str) -> Self {
        debug_assert!(check_single_line(text).is_ok());
        self.buf.put_slice(b": ");
        self.buf.put_slice(text.as_bytes());
        self.buf.put_u8(b'\n');
        self
    }

    /// One `data:` line per line of `data`, split on CRLF, CR and LF.
    pub fn data(mut self, data: &str) -> Self {
        let bytes = data.as_bytes();
        let mut start = 0;
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &bytes[start..]) {
            let end = start + off;
            self.data_line(&bytes[start..end]);
            start = end + 1;
            if bytes[end] == b'\r' && bytes.get(start) == Some(&b'\n') {
                start += 1;
            }
        }
        self.data_line(&bytes[start..]);
        self
    }

    fn data_line(&mut self, line: &[u8]) {
        self.buf.put_slice(b"data: ");
        self.buf.put_slice(line);
        self.buf.put_u8(b'\n');
    }

    /// Ends the frame with the blank line that dispatches it.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_u8(b'\n');
        self.buf.freeze()
    }
}

/// A complete event frame.
pub fn event(id: impl std::fmt::Display, event: Option<&str>, data: &str) -> Bytes {
    FrameBuilder::new(data.len())
        .id(id)
        .event(event)
        .data(data)
        .finish()
}

/// The id of an [`event`] frame (its first line), if it has one.
pub fn id_of(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(b"id: ")?;
    let end = memchr::memchr(b'\n', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The same [`event`] frame with another id (a copy).
pub fn with_id(frame: &[u8], id: &str) -> Bytes {
    let old = id_of(frame).map_or(0, |i| 4 + i.len() + 1);
    let mut b = BytesMut::with_capacity(frame.len() - old + id.len() + 5);
    b.put_slice(b"id: ");
    b.put_slice(id.as_bytes());
    b.put_u8(b'\n');
    b.put_slice(&frame[old..]);
    b.freeze()
}

/// The first bytes of every stream: a comment (so headers and first bytes
/// flush at once), the browser's reconnection delay, and the id the stream
/// continues after (so even a browser that has seen no event yet resumes
/// from the right place).
pub fn preamble(retry_ms: u64, after: impl std::fmt::Display) -> Bytes {
    FrameBuilder::new(0)
        .comment("herald")
        .retry(retry_ms)
        .id(after)
        .finish()
}

/// The first bytes of a stream that could not resume where it asked: the
/// preamble without an id, then a [`RESET_EVENT`] whose id is where the
/// stream continues and whose data says why.
pub fn reset(
    retry_ms: u64,
    reason: ResetReason,
    requested: Option<&str>,
    after: impl std::fmt::Display,
) -> Bytes {
    let head = FrameBuilder::new(0)
        .comment("herald")
        .retry(retry_ms)
        .finish();
    let ev = reset_event(reason, requested, after);
    let mut b = BytesMut::with_capacity(head.len() + ev.len());
    b.put_slice(&head);
    b.put_slice(&ev);
    b.freeze()
}

/// A [`RESET_EVENT`]: events were missed; its id is where the stream
/// continues, its data says why and from where.
pub fn reset_event(
    reason: ResetReason,
    requested: Option<&str>,
    after: impl std::fmt::Display,
) -> Bytes {
    let after = after.to_string();
    let data = serde_json::json!({
        "reason": reason.label(),
        "lastEventId": requested,
        "resumedAfter": after,
    })
    .to_string();
    event(&after, Some(RESET_EVENT), &data)
}

/// `retry:` alone: the last frame of a stream the server ends (drain), so
/// clients spread their reconnects.
pub fn retry_hint(retry_ms: u64) -> Bytes {
    FrameBuilder::new(0).retry(retry_ms).finish()
}

/// The last frame of a stream ended at its token's `exp`.
pub fn token_expired(exp: u64) -> Bytes {
    let data = serde_json::json!({ "reason": "token-expired", "exp": exp }).to_string();
    FrameBuilder::new(data.len())
        .event(Some(TOKEN_EXPIRED_EVENT))
        .data(&data)
        .finish()
}

/// The last frame of a stream an operator closed, with their reason.
pub fn closed_by_operator(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason }).to_string();
    FrameBuilder::new(data.len())
        .event(Some(CLOSED_EVENT))
        .data(&data)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_read_and_replaced() {
        let f = event("c.AAA", Some("note"), "a\nb");
        assert_eq!(id_of(&f), Some("c.AAA"));
        let g = with_id(&f, "c.BBBB");
        assert_eq!(&g[..], &event("c.BBBB", Some("note"), "a\nb")[..]);
        assert_eq!(id_of(b": heartbeat\n\n"), None);
    }

    #[test]
    fn plain_event() {
        assert_eq!(
            &event("7", None, r#"{"a":1}"#)[..],
            b"id: 7\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn named_event_and_lines() {
        assert_eq!(
            &event("x-1", Some("chat"), "a\nb\r\nc\rd")[..],
            b"id: x-1\nevent: chat\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn trailing_and_empty_lines_are_kept() {
        assert_eq!(&event("1", None, "")[..], b"id: 1\ndata: \n\n");
        assert_eq!(&event("1", None, "a\n")[..], b"id: 1\ndata: a\ndata: \n\n");
        assert_eq!(
            &event("1", None, "\r\n\r")[..],
            b"id: 1\ndata: \ndata: \ndata: \n\n"
        );
        assert_eq!(&event("1", None, " lead")[..], b"id: 1\ndata:  lead\n\n");
    }

    #[test]
    fn protocol_frames() {
        assert_eq!(
            &preamble(3000, "e-0")[..],
            b": herald\nretry: 3000\nid: e-0\n\n"
        );
        assert_eq!(&retry_hint(250)[..], b"retry: 250\n\n");
        assert_eq!(
            &token_expired(7)[..],
            b"event: herald-token-expired\ndata: {\"exp\":7,\"reason\":\"token-expired\"}\n\n"
        );
        let r = reset(3000, ResetReason::NotRetained, Some("x-1"), "e-9");
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            ": herald\nretry: 3000\n\nid: e-9\nevent: herald-reset\ndata: {\"lastEventId\":\"x-1\",\"reason\":\"last-event-id-not-retained\",\"resumedAfter\":\"e-9\"}\n\n"
        );
    }

    #[test]
    fn event_types_are_checked() {
        assert_eq!(check_event_type("chat"), Ok(()));
        assert_eq!(check_event_type(""), Err(FieldError::Empty));
        assert_eq!(check_event_type("a\nb"), Err(FieldError::LineBreak));
        assert_eq!(check_event_type("a\rb"), Err(FieldError::LineBreak));
        assert_eq!(check_event_type("a\0b"), Err(FieldError::LineBreak));
        assert_eq!(
            check_event_type(&"e".repeat(MAX_EVENT_TYPE_BYTES + 1)),
            Err(FieldError::TooLong)
        );
        assert_eq!(check_event_type(RESET_EVENT), Err(FieldError::Reserved));
        assert_eq!(
            check_event_type(TOKEN_EXPIRED_EVENT),
            Err(FieldError::Reserved)
        );
        assert_eq!(check_event_type(CLOSED_EVENT), Err(FieldError::Reserved));
        assert_eq!(check_event_type("heraldic"), Ok(()));
    }
}
