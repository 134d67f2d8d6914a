//! Replays every input kept under `tests/fuzz_regressions/<target>/`: seeds
//! written by hand and any crash input `scripts/fuzz` found, through the same
//! entry points the fuzz targets use (`herald::fuzzing`).
#![allow(clippy::unwrap_used)]

use std::path::Path;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

#[test]
fn kept_fuzz_inputs_still_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let targets: [(&str, Entry); 6] = [
        ("publish_body", herald::fuzzing::publish_body),
        ("last_event_id", herald::fuzzing::last_event_id),
        ("kafka_record", herald::fuzzing::kafka_record_raw),
        ("sse_encode", herald::fuzzing::sse_encode_raw),
        ("schema_decode", herald::fuzzing::schema_decode),
        ("h2_connection", herald::fuzzing::h2_connection),
    ];
    for (name, run) in targets {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "no inputs kept for {name} in {}", dir.display());
    }
}
