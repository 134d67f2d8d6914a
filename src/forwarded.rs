//! The client's address behind a proxy (`--trusted-proxies`).
//!
//! A TLS-terminating proxy in front of herald connects from its own address,
//! so every client would share it: one per-address limit for everyone, one
//! address in every log line. From a peer in the trusted ranges (and only
//! from one), herald takes the client's address from the `Forwarded` header
//! (RFC 7239; when present it wins) or else `X-Forwarded-For`: the rightmost
//! hop that is not itself a trusted proxy. Everything left of it was written
//! by the client and proves nothing. A hop that is not an address
//! (`unknown`, an obfuscated name, junk) ends the walk: the client is then
//! the trusted proxy nearest it. A request from any other peer keeps its
//! socket address, whatever headers it sends.
//!
//! Connections from a trusted proxy are not counted per address when
//! accepted (they carry many clients); their streams are counted per
//! client address at admission instead, like HTTP/2 streams.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The address of the client a request from `peer` is for (see the
    /// module doc). A forwarded address carries the port `Forwarded` gave
    /// it, else 0.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let forwarded = headers.get_all(http::header::FORWARDED);
        let mut client = peer;
        if forwarded.iter().next().is_some() {
            // Header lines in order, elements in order: the walk goes from
            // the last element of the last line.
            for line in forwarded.iter().rev() {
                let Ok(text) = line.to_str() else {
                    return client;
                };
                for element in rfc7239::parse(text).rev() {
                    let hop = element.ok().and_then(|e| {
                        let node = e.forwarded_for?;
                        let ip = node.ip()?.to_canonical();
                        Some(SocketAddr::new(ip, node.port.unwrap_or(0)))
                    });
                    match self.step(hop) {
                        Step::Trusted(at) => client = at,
                        Step::Client(at) => return at,
                        Step::Stop => return client,
                    }
                }
            }
            return client;
        }
        for line in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = line.to_str() else {
                return client;
            };
            for hop in text.rsplit(',') {
                match self.step(parse_xff_hop(hop.trim())) {
                    Step::Trusted(at) => client = at,
                    Step::Client(at) => return at,
                    Step::Stop => return client,
                }
            }
        }
        client
    }

    fn step(&self, hop: Option<SocketAddr>) -> Step {
        match hop {
            None => Step::Stop,
            Some(at) if self.contains(at.ip()) => Step::Trusted(at),
            Some(at) => Step::Client(at),
        }
    }
}

/// One hop of the walk from the right.
enum Step {
    /// A trusted proxy: go on left.
    Trusted(SocketAddr),
    /// The client.
    Client(SocketAddr),
    /// Not an address: the walk ends.
    Stop,
}

/// An `X-Forwarded-For` entry: an address, or (as some proxies write it) an
/// address with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_xff_hop(hop: &str) -> Option<SocketAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip.to_canonical(), 0));
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
}

/// Parses one `--trusted-proxies` entry: a CIDR range, or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`{s}` is not an address range (like 10.0.0.0/8 or fd00::/8) or an address")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| parse_net(n).unwrap()).collect())
    }

    fn client(t: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        t.client(peer.parse().unwrap(), &map).to_string()
    }

    #[test]
    fn an_untrusted_peer_keeps_its_address_whatever_it_sends() {
        let t = proxies(&["10.0.0.0/8"]);
        let spoofs: [&[(&str, &str)]; 4] = [
            &[("x-forwarded-for", "1.1.1.1")],
            &[("forwarded", "for=1.1.1.1")],
            &[("x-forwarded-for", "10.0.0.1, 1.1.1.1")],
            &[
                ("forwarded", "for=\"[2001:db8::1]:80\""),
                ("x-forwarded-for", "2.2.2.2"),
            ],
        ];
        for headers in spoofs {
            assert_eq!(client(&t, "192.0.2.7:5000", headers), "192.0.2.7:5000");
        }
        // No proxies configured: nobody is trusted, not even loopback.
        let none = TrustedProxies::default();
        assert_eq!(
            client(&none, "127.0.0.1:9", &[("x-forwarded-for", "1.1.1.1")]),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn from_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let t = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        // The client prepended a fake hop; the proxies appended the truth.
        let chain = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")];
        assert_eq!(client(&t, "127.0.0.1:40000", &chain), "203.0.113.9:0");
        // Split over two header lines, the same.
        let lines = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9 , 10.1.2.3"),
        ];
        assert_eq!(client(&t, "10.9.9.9:1", &lines), "203.0.113.9:0");
        // Forwarded wins over X-Forwarded-For, ports and IPv6 kept.
        let both = [
            ("x-forwarded-for", "7.7.7.7"),
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::5]:4711\";proto=https, for=10.0.0.2",
            ),
        ];
        assert_eq!(client(&t, "127.0.0.1:1", &both), "[2001:db8::5]:4711");
        // Only proxies: the leftmost of them.
        let all = [("x-forwarded-for", "10.0.0.5, 10.0.0.6")];
        assert_eq!(client(&t, "127.0.0.1:1", &all), "10.0.0.5:0");
        // No header: the peer.
        assert_eq!(client(&t, "127.0.0.1:1", &[]), "127.0.0.1:1");
        // A port on an X-Forwarded-For entry; a mapped address.
        let ported = [("x-forwarded-for", "[::ffff:198.51.100.2]:99")];
        assert_eq!(client(&t, "127.0.0.1:1", &ported), "198.51.100.2:99");
        let mapped_peer = "[::ffff:127.0.0.1]:1";
        assert_eq!(
            client(&t, mapped_peer, &[("x-forwarded-for", "198.51.100.3")]),
            "198.51.100.3:0"
        );
    }

    #[test]
    fn a_hop_that_is_not_an_address_ends_the_walk_at_the_proxy_nearest_it() {
        let t = proxies(&["10.0.0.0/8"]);
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("x-forwarded-for", "1.1.1.1, junk, 10.0.0.3")],
                "10.0.0.3:0",
            ),
            (&[("x-forwarded-for", "1.1.1.1, unknown")], "10.0.0.1:80"),
            (&[("x-forwarded-for", "")], "10.0.0.1:80"),
            (
                &[("forwarded", "for=1.1.1.1, for=_hidden, for=10.0.0.4")],
                "10.0.0.4:0",
            ),
            (&[("forwarded", "for=1.1.1.1, nonsense")], "10.0.0.1:80"),
        ];
        for (headers, want) in cases {
            assert_eq!(client(&t, "10.0.0.1:80", headers), want, "{headers:?}");
        }
    }

    #[test]
    fn ranges_parse_or_say_why_not() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_net(" 192.0.2.1 ").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(parse_net("fd00::/8").unwrap().to_string(), "fd00::/8");
        let e = parse_net("10.0.0.0/33").unwrap_err();
        assert!(e.contains("not an address range"), "{e}");
        assert!(parse_net("example.com").is_err());
    }
}
