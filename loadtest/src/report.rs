//! What a run measured: human lines as they come, and everything again as
//! one `json {...}` line at the end (what the scenario scripts parse).

use std::sync::atomic::Ordering;

use crate::stream::Totals;

/// The figures of one run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    summary: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Records a figure for the JSON line.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.summary.insert(key.into(), value.into());
    }

    /// Stream latency (publish to receive), gaps and duplicates.
    pub(crate) fn stream_latency(&mut self, totals: &Totals) {
        let all = totals.merged_latency();
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        for (k, v) in [
            ("gaps", totals.gaps.load(Ordering::Relaxed)),
            ("dups", totals.dups.load(Ordering::Relaxed)),
            ("reconnected", totals.reconnected.load(Ordering::Relaxed)),
        ] {
            self.set(k, v);
        }
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.set(&format!("latency_{k}_ms"), ms(q));
        }
        self.set("latency_max_ms", all.max() as f64 / 1000.0);
        println!(
            "latency_ms p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} samples={} gaps={} dups={}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            all.max() as f64 / 1000.0,
            all.len(),
            totals.gaps.load(Ordering::Relaxed),
            totals.dups.load(Ordering::Relaxed)
        );
    }

    /// How long publish requests took to be answered (HTTP publishing).
    pub(crate) fn publish_latency(&mut self, h: &hdrhistogram::Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        for (k, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            self.set(&format!("publish_latency_{k}_ms"), ms(q));
        }
        self.set("publish_latency_max_ms", h.max() as f64 / 1000.0);
        println!(
            "publish_latency_ms p50={:.2} p99={:.2} p99.9={:.2} max={:.2} requests={}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }

    /// The last lines: streams the server closed, and the JSON line.
    pub(crate) fn finish(mut self, totals: &Totals) {
        let closed = totals.closed.load(Ordering::Relaxed);
        println!("closed_by_server={closed}");
        self.set("closed", closed);
        println!("json {}", serde_json::Value::Object(self.summary));
    }
}
