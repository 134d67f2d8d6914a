#![no_main]
//! Last-Event-ID and subscribe query parsing: see `herald::fuzzing::last_event_id`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::last_event_id(data));
