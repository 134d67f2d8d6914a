//! Admission limits: per client address, new connections per second,
//! publish requests and bytes per second per publisher (the per-user stream
//! limit is the registry's count, checked by the subscribe admission). Each
//! refusal answers 429 or 503 with `Retry-After` and is counted in
//! `herald_limited_total{reason}` under its [`Limit`]. All are off unless
//! configured.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics as m;

/// Why a limit refused (or cut off) a client: the
/// `herald_limited_total{reason}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-streams-per-user`.
    PerUser,
    /// `--max-connections-per-ip`.
    PerIp,
    /// `--max-connect-rate`.
    ConnectRate,
    /// `--publish-rate`.
    PublishRate,
    /// `--publish-bytes-rate`.
    PublishBytes,
    /// `--header-read-timeout`.
    HeaderTimeout,
    /// `--max-header-bytes`.
    HeaderTooLarge,
    /// `--write-timeout`.
    WriteTimeout,
}

impl Limit {
    pub(crate) const ALL: [Limit; 8] = [
        Limit::PerUser,
        Limit::PerIp,
        Limit::ConnectRate,
        Limit::PublishRate,
        Limit::PublishBytes,
        Limit::HeaderTimeout,
        Limit::HeaderTooLarge,
        Limit::WriteTimeout,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::PerUser => "per_user",
            Limit::PerIp => "per_ip",
            Limit::ConnectRate => "connect_rate",
            Limit::PublishRate => "publish_rate",
            Limit::PublishBytes => "publish_bytes",
            Limit::HeaderTimeout => "header_timeout",
            Limit::HeaderTooLarge => "header_too_large",
            Limit::WriteTimeout => "write_timeout",
        }
    }

    /// Counts one refusal.
    pub(crate) fn count(self) {
        metrics::counter!(m::LIMITED, "reason" => self.label()).increment(1);
    }
}

/// A token bucket: `rate` per second, bursts up to `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens, or says how long until they would be there.
    pub(crate) fn take(&self, n: f64) -> Result<(), Duration> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        // A request larger than the burst may go once the bucket is full.
        let need = n.min(self.burst);
        if tokens >= need {
            *st = (tokens - n, now);
            Ok(())
        } else {
            *st = (tokens, now);
            Err(Duration::from_secs_f64((need - tokens) / self.rate))
        }
    }
}

/// Open connections per client address.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    /// 0: no limit.
    max: usize,
    shards: Box<[Mutex<HashMap<IpAddr, usize>>]>,
}

/// Held by a connection; gives its slot back on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub(crate) fn new(max: Option<std::num::NonZeroUsize>) -> Self {
        Self {
            max: max.map_or(0, |m| m.get()),
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(*v) as usize,
            IpAddr::V6(v) => u128::from(*v) as usize,
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) >> 7 & 15]
    }

    /// The key an address is counted under: itself for IPv4, its /64 for
    /// IPv6 (one client commonly holds a whole /64).
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v) & !((1u128 << 64) - 1),
            )),
        }
    }

    /// A slot for `ip`, or `None` when it holds `max` already (connections,
    /// and HTTP/2 streams, which the subscribe admission counts here too).
    /// Always a slot when there is no limit.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Option<IpSlot>> {
        if self.max == 0 {
            return Some(None);
        }
        let ip = Self::key(ip);
        let mut map = self.shard(&ip).lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(IpSlot {
            owner: self.clone(),
            ip,
        }))
    }

    /// The limit (0: none).
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections open from `ip`.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        let ip = Self::key(ip);
        self.shard(&ip).lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.owner.shard(&self.ip).lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Request and byte buckets per publisher (token subject, the secret, or
/// the client address).
#[derive(Debug, Default)]
pub(crate) struct Publishers {
    limits: Option<(f64, f64)>,
    map: Mutex<HashMap<String, Arc<PublisherBuckets>>>,
}

/// One publisher's request and byte buckets (each when configured).
type PublisherBuckets = (Option<Bucket>, Option<Bucket>);

/// Why a publish was refused, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub reason: Limit,
    pub retry_after: Duration,
}

/// Most publishers tracked before idle ones are forgotten.
const MAX_PUBLISHERS: usize = 10_000;

impl Publishers {
    pub(crate) fn new(requests_per_s: Option<f64>, bytes_per_s: Option<f64>) -> Self {
        let on = requests_per_s.is_some() || bytes_per_s.is_some();
        Self {
            limits: on.then_some((requests_per_s.unwrap_or(0.0), bytes_per_s.unwrap_or(0.0))),
            map: Mutex::default(),
        }
    }

    /// Whether any publisher limit is configured (else charging is a no-op
    /// and the publisher need not be named).
    pub(crate) fn limited(&self) -> bool {
        self.limits.is_some()
    }

    /// Charges one request of `bytes` to `who`.
    pub(crate) fn charge(&self, who: &str, bytes: usize) -> Result<(), Refused> {
        self.charge_parts(who, 1.0, bytes)
    }

    /// Charges `bytes` only (a body whose length was not declared).
    pub(crate) fn charge_bytes(&self, who: &str, bytes: usize) -> Result<(), Refused> {
        self.charge_parts(who, 0.0, bytes)
    }

    fn charge_parts(&self, who: &str, requests: f64, bytes: usize) -> Result<(), Refused> {
        let Some((rps, bps)) = self.limits else {
            return Ok(());
        };
        let buckets = {
            let mut map = self.map.lock();
            if map.len() >= MAX_PUBLISHERS && !map.contains_key(who) {
                // Forget publishers nobody else holds (they start afresh,
                // with a full burst: a bounded leniency, not a bypass of the
                // per-second rate).
                map.retain(|_, b| Arc::strong_count(b) > 1);
                if map.len() >= MAX_PUBLISHERS {
                    map.clear();
                }
            }
            map.entry(who.to_owned())
                .or_insert_with(|| {
                    Arc::new((
                        (rps > 0.0).then(|| Bucket::new(rps, rps.max(1.0))),
                        (bps > 0.0).then(|| Bucket::new(bps, bps.max(1.0))),
                    ))
                })
                .clone()
        };
        if let Some(b) = buckets.0.as_ref().filter(|_| requests > 0.0) {
            b.take(requests).map_err(|wait| Refused {
                reason: Limit::PublishRate,
                retry_after: wait,
            })?;
        }
        if let Some(b) = buckets.1.as_ref().filter(|_| bytes > 0) {
            b.take(bytes as f64).map_err(|wait| Refused {
                reason: Limit::PublishBytes,
                retry_after: wait,
            })?;
        }
        Ok(())
    }
}

/// Whole seconds for `Retry-After` (at least 1).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_past_the_burst_and_says_when() {
        let b = Bucket::new(10.0, 2.0);
        assert!(b.take(1.0).is_ok());
        assert!(b.take(1.0).is_ok());
        let wait = b.take(1.0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn per_ip_slots_are_returned() {
        let p = Arc::new(PerIp::new(std::num::NonZeroUsize::new(2)));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = p.acquire(ip).unwrap();
        let _b = p.acquire(ip).unwrap();
        assert!(p.acquire(ip).is_none());
        drop(a);
        assert_eq!(p.open(ip), 1);
        assert!(p.acquire(ip).is_some());
        assert!(Arc::new(PerIp::new(None)).acquire(ip).unwrap().is_none());
        // IPv6 counts per /64.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _x = p.acquire(a).unwrap();
        let _y = p.acquire(b).unwrap();
        assert!(p.acquire(a).is_none(), "the /64 is full");
        assert!(p.acquire(c).is_some(), "another /64");
    }

    #[test]
    fn publishers_are_charged_separately() {
        let p = Publishers::new(Some(1.0), None);
        assert!(p.charge("a", 10).is_ok());
        assert_eq!(p.charge("a", 10).unwrap_err().reason, Limit::PublishRate);
        assert!(p.charge("b", 10).is_ok());
        let bytes = Publishers::new(None, Some(100.0));
        assert!(bytes.charge("a", 100).is_ok());
        assert_eq!(
            bytes.charge("a", 50).unwrap_err().reason,
            Limit::PublishBytes
        );
    }
}
