#![no_main]
//! The SSE encoder: see `herald::fuzzing::sse_encode_raw`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::sse_encode_raw(data));
