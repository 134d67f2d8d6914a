//! The command line: what to open, publish and measure.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
pub(crate) struct Args {
    /// herald's address(es), comma-separated (loopback only). Connection i
    /// goes to target i % (number of targets); HTTP publishing goes to the
    /// first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub(crate) target: Vec<SocketAddr>,
    /// SSE connections to open.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Distinct users; connection i is user i % users (default: one per
    /// connection).
    #[arg(long)]
    pub(crate) users: Option<usize>,
    /// Request path template: `{i}` is the connection index, `{u}` the user
    /// index. Targeted events go to user `load-{u}`, so keep that form when
    /// publishing with --targeted.
    #[arg(long, default_value = "/api/sse/subscribe/load-{u}")]
    pub(crate) path: String,
    /// Distinct source addresses (127.0.0.2, .3, ...) per process.
    #[arg(long, default_value_t = 4)]
    pub(crate) sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// Publish for this long after connecting (0 = none).
    #[arg(long, default_value_t = 0)]
    pub(crate) publish_seconds: u64,
    /// Payload bytes per published event.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Events per publish request (1 = single-object body; HTTP only).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Concurrent publishers (HTTP: one keep-alive connection each, sending
    /// its next request when the previous one is answered).
    #[arg(long, default_value_t = 1)]
    pub(crate) publishers: usize,
    /// Events per second over all publishers (0 = as fast as accepted).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Publish each event to one random user (`load-{u}`) instead of
    /// broadcasting.
    #[arg(long, default_value_t = false)]
    pub(crate) targeted: bool,
    /// Publish straight into Kafka at these bootstrap servers instead of
    /// through herald's HTTP API (user events keyed by user; broadcasts
    /// unkeyed, all to partition 0 so their order holds).
    #[arg(long)]
    pub(crate) kafka_brokers: Option<String>,
    /// Topic to produce to with --kafka-brokers.
    #[arg(long, default_value = "herald")]
    pub(crate) kafka_topic: String,
    /// Reconnect storm: this many seconds into publishing, every stream
    /// drops its connection and reconnects at once with `Last-Event-ID`
    /// (0 = no storm). Gaps and duplicates are counted across the seam.
    #[arg(long, default_value_t = 0)]
    pub(crate) storm_after: u64,
    /// Max wait for deliveries to finish after publishing.
    #[arg(long, default_value_t = 30)]
    pub(crate) settle_seconds: u64,
    /// Server pid(s), comma-separated, to read CPU time and RSS from /proc
    /// (summed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_pid: Vec<u32>,
    /// Keep the connections open this long before exiting.
    #[arg(long, default_value_t = 0)]
    pub(crate) hold_seconds: u64,
    /// Sign a JWT per stream with this HS256 secret (sub = `load-{u}`,
    /// topics `*`, valid for an hour), made before connecting, sent as
    /// `Authorization: Bearer` (herald started with the same --jwt-secret).
    #[arg(long, env = "SSE_LOAD_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// Streams and publishers over TLS (ALPN http/1.1), trusting this PEM
    /// CA (the server's certificate must name 127.0.0.1): herald started
    /// with --tls-cert/--tls-key. Stalled connections and adversaries stay
    /// plain.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// Streams over HTTP/2: h2c with prior knowledge, or with --tls-ca
    /// TLS with ALPN h2 (publishers stay HTTP/1.1). No --storm-after.
    #[arg(long, default_value_t = false)]
    pub(crate) h2: bool,
    /// With --h2: streams opened on each connection (--connections counts
    /// streams; the last connection may hold fewer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) streams_per_connection: u16,
    /// With --h2: the receive windows the client advertises, as
    /// `STREAM:CONNECTION` bytes. The default is Chromium's (6 MiB per
    /// stream, 15 MiB per connection), so the server sees as few
    /// WINDOW_UPDATEs as from a browser; `65535:65535` is the protocol's
    /// initial window (a WINDOW_UPDATE for every half window read).
    #[arg(long, default_value = "6291456:15728640", value_parser = parse_windows)]
    pub(crate) h2_windows: (u32, u32),
    /// More connections that read nothing after their request, each its own
    /// user `stalled-{k}` (on this process, from 127.0.2.x).
    #[arg(long, default_value_t = 0)]
    pub(crate) stalled: usize,
    /// This many seconds into publishing, one burst of --stalled-burst
    /// events to each stalled user (0 = none): every stalled queue
    /// overflows at once, a wave of slow closes.
    #[arg(long, default_value_t = 0)]
    pub(crate) stalled_burst_after: u64,
    /// Events per stalled user in the burst: two more than the server's
    /// --queue-max-frames overflows every stalled queue (the first may be
    /// written straight to the idle stream's socket, a direct send).
    #[arg(long, default_value_t = 1026)]
    pub(crate) stalled_burst: usize,
    /// While publishing, N adversaries of each kind alongside the healthy
    /// streams (slowloris variants, stalled readers, resume floods, junk
    /// writers; plus a /metrics flood and a connect flood from one address):
    /// see `adversary`. Their connections come from 127.0.3.x.
    #[arg(long, default_value_t = 0)]
    pub(crate) adversaries: usize,
    /// Only these adversary kinds (comma-separated names as reported, e.g.
    /// `stalled_readers,junk_writers`); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub(crate) adversary_kinds: Vec<String>,
    /// Most connections per process; more are spread over child processes.
    #[arg(long, default_value_t = 19_000)]
    pub(crate) per_process: usize,
    /// Internal: run as a child of another sse-load.
    #[arg(long, hide = true, default_value_t = false)]
    pub(crate) child: bool,
    /// Internal: index of this process's first connection.
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) first_index: usize,
    /// Internal: total connections over all processes (for user indexes).
    #[arg(long, hide = true)]
    pub(crate) total_connections: Option<usize>,
    /// Internal: first source address offset (127.0.0.2 + offset).
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) source_offset: u8,
}

impl Args {
    pub(crate) fn total(&self) -> usize {
        self.total_connections.unwrap_or(self.connections)
    }

    pub(crate) fn users(&self) -> usize {
        self.users.unwrap_or(self.total()).max(1)
    }

    /// Streams held by user `u`.
    pub(crate) fn streams_of(&self, u: usize) -> u64 {
        let (n, users) = (self.total(), self.users());
        (n / users + usize::from(u < n % users)) as u64
    }

    /// Gaps and duplicates are only meaningful for one ordered sequence.
    pub(crate) fn check_order(&self) -> bool {
        !self.targeted && self.publishers <= 1
    }
}

/// `STREAM:CONNECTION` receive windows, each within HTTP/2's limits.
fn parse_windows(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected STREAM:CONNECTION bytes"))?;
    let parse = |v: &str| -> Result<u32, String> {
        match v.parse::<u32>() {
            Ok(n) if (65_535..=0x7fff_ffff).contains(&n) => Ok(n),
            _ => Err(format!("{v:?}: a window is 65535 to 2147483647 bytes")),
        }
    };
    Ok((parse(a)?, parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn h2_windows_parse_and_refuse_out_of_range() {
        let args = Args::parse_from(["sse-load", "--h2"]);
        assert_eq!(args.h2_windows, (6_291_456, 15_728_640));
        assert_eq!(parse_windows("65535:65535"), Ok((65_535, 65_535)));
        assert!(parse_windows("65535").is_err());
        assert!(parse_windows("100:65535").is_err());
        assert!(parse_windows("65535:2147483648").is_err());
        assert!(parse_windows("x:65535").is_err());
    }
}
