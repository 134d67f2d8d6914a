#![no_main]
//! herald's HTTP/2 server on any client bytes: see `herald::fuzzing::h2_connection`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::h2_connection(data));
