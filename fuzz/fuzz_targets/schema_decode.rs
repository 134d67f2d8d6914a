#![no_main]
//! Avro / Protobuf payloads -> JSON: see `herald::fuzzing::schema_decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::schema_decode(data));
