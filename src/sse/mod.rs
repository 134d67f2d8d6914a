//! The SSE wire format: [`frame`] writes it (the only code that does), [`id`]
//! names events on the wire and parses them back from `Last-Event-ID`.

pub mod cursor;
pub mod frame;
pub mod id;

pub use cursor::Cursor;
pub use frame::{FieldError, FrameBuilder};
pub use id::{EventId, IdError};
