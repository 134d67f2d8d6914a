#![no_main]
//! POST /api/publish bodies: see `herald::fuzzing::publish_body`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::publish_body(data));
