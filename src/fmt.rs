//! Values as log fields: plain text, never Rust `Debug` (`Some(..)`, `None`).

use std::fmt;

/// Shows `Some(v)` as `v` and `None` as `none`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrNone<T>(pub(crate) Option<T>);

impl<T: fmt::Display> fmt::Display for OrNone<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}
