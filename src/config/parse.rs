//! Value parsers for the flags: each turns one flag's text into its type, or
//! says what is wrong (clap adds the flag's name, and `config::load` the
//! environment variable when the value came from one).
//!
//! - Durations: a number and a unit (`500ms`, `15s`, `1.5s`, `5m`, `1h 30m`;
//!   humantime's syntax), or `0`.
//! - Sizes: bytes, or with a unit (`64KiB`, `1MiB`: binary; `64kB`: decimal).
//! - Rates: a number per second, `0` for no limit.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Longest duration any flag takes.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Least positive rate: a token bucket refilling slower than this would wait
/// for centuries, and `Duration::from_secs_f64` overflows far below it.
const MIN_RATE: f64 = 0.001;

/// `IP:PORT`, or `host:port` resolved now (the first address).
pub(crate) fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    const HINT: &str = "expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080";
    if !s.contains(':') {
        return Err(HINT.into());
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{HINT} ({e})"))?
        .next()
        .ok_or_else(|| format!("{HINT} (the name resolves to no address)"))
}

/// A duration (`0` allowed), at most a week.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{e}; expected a number with a unit: ms, s, m or h (e.g. 15s, 500ms, 1h 30m)")
    })?;
    if d > MAX_DURATION {
        return Err("must be at most a week".into());
    }
    Ok(d)
}

fn at_least(s: &str, min: Duration) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < min {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

fn at_most(s: &str, max: Duration, why: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d > max {
        return Err(format!(
            "must be at most {} ({why})",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// At least 10 ms (`--heartbeat-interval`).
pub(crate) fn duration_10ms(s: &str) -> Result<Duration, String> {
    at_least(s, Duration::from_millis(10))
}

/// At least 100 ms (timeouts and intervals talking to peers).
pub(crate) fn duration_100ms(s: &str) -> Result<Duration, String> {
    at_least(s, Duration::from_millis(100))
}

/// `--write-coalesce`: at most 1 s.
pub(crate) fn coalesce_window(s: &str) -> Result<Duration, String> {
    at_most(
        s,
        Duration::from_secs(1),
        "it delays events by up to that much",
    )
}

/// `--publish-backpressure`: at most 60 s.
pub(crate) fn backpressure_wait(s: &str) -> Result<Duration, String> {
    at_most(
        s,
        Duration::from_secs(60),
        "a publisher waits up to that long",
    )
}

/// A size in bytes: a number, or a number and a unit.
pub(crate) fn size(s: &str) -> Result<usize, String> {
    let b: bytesize::ByteSize = s.trim().parse().map_err(|_| {
        "expected a size in bytes, optionally with a unit: 65536, 64KiB, 1MiB".to_owned()
    })?;
    usize::try_from(b.as_u64()).map_err(|_| "is too large".to_owned())
}

/// A size of at least one byte.
pub(crate) fn size_nonzero(s: &str) -> Result<usize, String> {
    match size(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// `--max-header-bytes`: 8 KiB to 1 MiB.
pub(crate) fn header_size(s: &str) -> Result<usize, String> {
    let n = size(s)?;
    if !(8192..=1 << 20).contains(&n) {
        return Err("must be between 8KiB (8192) and 1MiB (1048576)".into());
    }
    Ok(n)
}

/// A rate per second: 0 (no limit), or at least 0.001.
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number per second, 0 for no limit".to_owned())?;
    if !r.is_finite() || r < 0.0 {
        return Err("must be a number, 0 or more".into());
    }
    if r > 0.0 && r < MIN_RATE {
        return Err(format!("must be 0 (no limit) or at least {MIN_RATE}"));
    }
    Ok(r)
}

/// `--shards`: a power of two up to 65536.
pub(crate) fn shards(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| "expected a number".to_owned())?;
    if !n.is_power_of_two() || n > 65_536 {
        return Err("must be a power of two up to 65536".into());
    }
    Ok(n)
}

/// The most `--api-threads` (each a thread and a runtime).
pub(crate) const MAX_API_THREADS: usize = 256;

/// `--api-threads`: `auto` (half the cores, rounded up) or a count up to
/// [`MAX_API_THREADS`] (0: none).
pub(crate) fn api_threads(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        return Ok(cores.div_ceil(2));
    }
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_API_THREADS => Ok(n),
        Ok(_) => Err(format!("must be at most {MAX_API_THREADS}")),
        Err(_) => Err("expected auto or a whole number".into()),
    }
}

/// A count of at least 1.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// `--log`: a tracing filter whose bare words are levels. A bare word that
/// is not a level (`debugg`) would be read as a target and silently turn
/// logging off; targets take a level: `herald=debug`.
pub(crate) fn log_filter(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)) {
            return Err(format!(
                "{d:?} is not a level ({}); give a target a level as target=level, e.g. herald=debug",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A CORS origin: `*`, or `http(s)://host[:port]` (a trailing `/` is dropped).
pub(crate) fn cors_origin(s: &str) -> Result<String, String> {
    let o = s.trim().trim_end_matches('/');
    let ok = o == "*"
        || ((o.starts_with("http://") || o.starts_with("https://"))
            && !o.contains(|c: char| c.is_whitespace() || c.is_control()));
    if ok {
        Ok(o.to_owned())
    } else {
        Err("expected * or an origin like https://app.example.com".into())
    }
}

/// `--kafka-brokers`: `host:port[,host:port...]`, no scheme.
pub(crate) fn kafka_brokers(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "takes host:port without a scheme; remove {scheme}://"
        ));
    }
    if s.is_empty()
        || s.split(',').any(|b| {
            let b = b.trim();
            b.is_empty() || !b.contains(':') || b.contains(char::is_whitespace)
        })
    {
        return Err("expected host:port[,host:port...]".into());
    }
    Ok(s.to_owned())
}

/// A Kafka topic name: 1-249 of `[A-Za-z0-9._-]`.
pub(crate) fn kafka_topic(s: &str) -> Result<String, String> {
    let t = s.trim();
    if crate::sse::id::is_kafka_topic(t) {
        Ok(t.to_owned())
    } else {
        Err("each topic must be 1-249 characters of [A-Za-z0-9._-]".into())
    }
}

/// `--kafka-property key=value`.
pub(crate) fn property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("expected key=value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "15", "-1s", "15x", "99999999999999999999s", "200h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(duration_10ms("5ms").unwrap_err().contains("at least 10ms"));
        assert!(coalesce_window("2s").unwrap_err().contains("at most 1s"));
    }

    #[test]
    fn sizes_rates_and_filters() {
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("64kB"), Ok(64_000));
        assert!(size("lots").is_err());
        assert!(size_nonzero("0").is_err());
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(api_threads("auto"), Ok(cores.div_ceil(2)));
        assert!(api_threads("auto").unwrap() >= 1);
        assert_eq!(api_threads("0"), Ok(0));
        assert_eq!(api_threads("256"), Ok(256));
        assert!(api_threads("257").unwrap_err().contains("at most 256"));
        assert!(api_threads("-1")
            .unwrap_err()
            .contains("auto or a whole number"));
        assert!(header_size("4KiB").is_err());
        assert_eq!(header_size("16KiB"), Ok(16384));
        assert_eq!(rate("0"), Ok(0.0));
        assert_eq!(rate("2.5"), Ok(2.5));
        for bad in ["-1", "NaN", "inf", "1e-30", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert!(log_filter("debugg").unwrap_err().contains("not a level"));
        assert!(log_filter("info,herald=debug").is_ok());
        assert!(log_filter("WARN").is_ok());
        assert!(log_filter("herald=loud").is_err());
        assert!(log_filter(" ").is_err());
        assert!(shards("3").is_err());
        assert_eq!(shards("64"), Ok(64));
    }

    #[test]
    fn addresses_and_kafka_values() {
        assert_eq!(
            listen_addr("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert!(listen_addr("localhost:8080").unwrap().ip().is_loopback());
        assert!(listen_addr("nowhere").is_err());
        assert!(kafka_brokers("tcp://h:9092")
            .unwrap_err()
            .contains("remove tcp://"));
        assert!(kafka_brokers("h").is_err());
        assert_eq!(kafka_brokers("a:1,b:2"), Ok("a:1,b:2".into()));
        assert!(kafka_topic("bad topic").is_err());
        assert_eq!(property("x=a=b"), Ok(("x".into(), "a=b".into())));
        assert!(property("novalue").is_err());
        assert_eq!(
            cors_origin("https://a.example/"),
            Ok("https://a.example".into())
        );
        assert!(cors_origin("a.example").is_err());
    }
}
