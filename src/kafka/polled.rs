//! A Kafka producer whose delivery reports are served by a thread of
//! herald's own, which sleeps while nothing happens.
//!
//! rdkafka's `ThreadedProducer` (and `FutureProducer`, built on it) polls
//! in calls of 100 ms. Each such call loops until its deadline, handing
//! librdkafka the time left in whole milliseconds, so the last millisecond
//! of every call is a busy loop: about 1% of a core per producer, idle or
//! not (BENCHMARKS.md, "An idle node's wake-ups"). Here each call lasts
//! [`POLL`]; a delivery report is still served the moment it arrives (the
//! call returns to librdkafka's queue wait after each one), so only the
//! stop is slower: the thread notices it at the end of its current call
//! and then drops its handle on the producer (the last one: rdkafka then
//! purges what is still queued and serves those reports as failures).
//! Nothing waits for that: dropping a [`Polled`] returns at once, so a
//! caller that wants its records written flushes first (the dead-letter
//! writer does on shutdown).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, ProducerContext};

/// One poll call: its last millisecond is spent spinning (see above).
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// A producer and its poll thread; stops the thread when dropped.
pub(crate) struct Polled<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> Polled<C> {
    /// Creates the producer and starts its poll thread, named `name` (at
    /// most 15 bytes: Linux cuts thread names there).
    pub(crate) fn start(config: &ClientConfig, context: C, name: &str) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&producer), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.poll(POLL);
                }
            });
        if let Err(e) = spawned {
            return Err(rdkafka::error::KafkaError::ClientCreation(format!(
                "cannot start the producer's poll thread: {e}"
            )));
        }
        Ok(Self { producer, stop })
    }

    /// A handle for a blocking call on another thread (commit, abort).
    pub(crate) fn handle(&self) -> Arc<BaseProducer<C>> {
        Arc::clone(&self.producer)
    }
}

impl<C: ProducerContext + 'static> Deref for Polled<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for Polled<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use rdkafka::message::Message as _;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DeliveryResult};
    use rdkafka::ClientContext;

    use super::*;

    /// Sends each delivery's offset to the test.
    struct Reports(mpsc::Sender<i64>);

    impl ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            let offset = result.as_ref().map_or(-1, |m| m.offset());
            let _ = self.0.send(offset);
        }
    }

    /// Nanoseconds the thread named `name` of this process has run.
    fn cpu_ns(name: &str) -> u64 {
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
                return stat.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("no thread named {name}");
    }

    #[test]
    fn reports_arrive_at_once_the_thread_sleeps_and_stops_after_drop() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "0");
        let (tx, rx) = mpsc::channel();
        let polled = Polled::start(&config, Reports(tx), "polled-test").unwrap();

        // A report is served while a poll call is under way, not at its end.
        for expected in 0..3 {
            let sent = Instant::now();
            polled
                .send(BaseRecord::<str, str>::to("t").payload("x"))
                .map_err(|(e, _)| e)
                .unwrap();
            let offset = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(offset, expected);
            assert!(
                sent.elapsed() < POLL / 2,
                "report after {:?}",
                sent.elapsed()
            );
        }

        // Idle, the thread sleeps in librdkafka's queue wait: it spins only
        // through the last millisecond of each call (~0.1% of a core).
        // rdkafka's own poll thread spent ~0.8% (24 ms of 3 s).
        let before = cpu_ns("polled-test");
        std::thread::sleep(Duration::from_secs(3));
        let spent = Duration::from_nanos(cpu_ns("polled-test") - before);
        assert!(spent < Duration::from_millis(12), "{spent:?} in 3 s");

        // Dropping it returns at once; the thread lets go of the producer
        // within one call.
        let handle = polled.handle();
        let dropped = Instant::now();
        drop(polled);
        assert!(dropped.elapsed() < Duration::from_millis(100));
        while Arc::strong_count(&handle) > 1 {
            assert!(dropped.elapsed() < POLL * 3, "the poll thread did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
