#![no_main]
//! Kafka record mapping: see `herald::fuzzing::kafka_record_raw`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzzing::kafka_record_raw(data));
