//! Which destinations a pod may connect to outside itself: every destination (the default, as in
//! a cluster without network policies), or only an allow-list of CIDRs with optional port ranges.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::{Error, Result};

/// The pod annotation that narrows a pod's egress to an allow-list (see [`EgressPolicy::parse`]).
pub const EGRESS_ANNOTATION: &str = "wasmpod.io/egress-allow";

/// One allowed destination range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub net: IpNet,
    pub ports: RangeInclusive<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EgressPolicy {
    #[default]
    AllowAll,
    /// Only these destinations (an empty list denies everything).
    Only(Vec<EgressRule>),
}

impl EgressPolicy {
    /// Parses a comma- or space-separated allow-list: `10.0.0.0/8`, `127.0.0.2:8080`,
    /// `192.168.0.0/16:8000-8099`, `[fd00::/8]:443`. A bare address means that one host.
    /// `none` denies all egress; `all` (or `*`) allows it all.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "all" || text == "*" {
            return Ok(Self::AllowAll);
        }
        if text == "none" {
            return Ok(Self::Only(Vec::new()));
        }
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(EgressRule::from_str)
            .collect::<Result<Vec<_>>>()
            .map(Self::Only)
    }

    pub fn allows(&self, dest: SocketAddr) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Only(rules) => rules.iter().any(|r| {
                r.net.contains(&dest.ip().to_canonical()) && r.ports.contains(&dest.port())
            }),
        }
    }

    /// The stricter of two policies: a destination must be allowed by both.
    pub fn and(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::AllowAll, p) | (p, Self::AllowAll) => p.clone(),
            (Self::Only(a), Self::Only(b)) => Self::Only(
                a.iter()
                    .flat_map(|x| b.iter().filter_map(move |y| x.intersect(y)))
                    .collect(),
            ),
        }
    }
}

impl EgressRule {
    fn intersect(&self, other: &Self) -> Option<Self> {
        let net = if self.net.contains(&other.net) {
            other.net
        } else if other.net.contains(&self.net) {
            self.net
        } else {
            return None;
        };
        let lo = *self.ports.start().max(other.ports.start());
        let hi = *self.ports.end().min(other.ports.end());
        (lo <= hi).then_some(Self {
            net,
            ports: lo..=hi,
        })
    }
}

impl FromStr for EgressRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("egress rule {s:?}: {why}"));
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (net, None),
                p => (
                    net,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':port'"))?),
                ),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address or CIDR
        } else {
            match s.split_once(':') {
                Some((net, ports)) => (net, Some(ports)),
                None => (s, None),
            }
        };
        let net = match IpNet::from_str(net) {
            Ok(n) => n.trunc(),
            Err(_) => IpAddr::from_str(net)
                .map(IpNet::from)
                .map_err(|_| bad("not an IP address or CIDR"))?,
        };
        let ports = match ports {
            None => 0..=u16::MAX,
            Some(p) => {
                let port = |t: &str| t.parse::<u16>().map_err(|_| bad("bad port"));
                match p.split_once('-') {
                    Some((lo, hi)) if port(lo)? <= port(hi)? => port(lo)?..=port(hi)?,
                    Some(_) => return Err(bad("empty port range")),
                    None => port(p)?..=port(p)?,
                }
            }
        };
        Ok(Self { net, ports })
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllowAll => f.write_str("all"),
            Self::Only(rules) if rules.is_empty() => f.write_str("none"),
            Self::Only(rules) => {
                for (i, r) in rules.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{}:{}-{}", r.net, r.ports.start(), r.ports.end())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_hosts_and_port_ranges() {
        let p = EgressPolicy::parse(
            "10.0.0.0/8, 127.0.0.2:8080 192.168.0.0/16:8000-8099,[fd00::/8]:443",
        )
        .unwrap();
        assert!(p.allows(addr("10.1.2.3:5")));
        assert!(p.allows(addr("127.0.0.2:8080")));
        assert!(!p.allows(addr("127.0.0.2:8081")));
        assert!(p.allows(addr("192.168.4.4:8099")));
        assert!(!p.allows(addr("192.168.4.4:8100")));
        assert!(p.allows(addr("[fd00::1]:443")));
        assert!(!p.allows(addr("[fe80::1]:443")));
        assert!(!p.allows(addr("8.8.8.8:53")));
        // IPv4-mapped destinations are judged as IPv4.
        assert!(p.allows(addr("[::ffff:10.0.0.1]:1")));
    }

    #[test]
    fn all_none_and_bare_ipv6() {
        assert_eq!(EgressPolicy::parse("all").unwrap(), EgressPolicy::AllowAll);
        assert!(!EgressPolicy::parse("none")
            .unwrap()
            .allows(addr("1.1.1.1:1")));
        assert!(EgressPolicy::parse("::1").unwrap().allows(addr("[::1]:80")));
    }

    #[test]
    fn rejects_malformed_rules() {
        for bad in [
            "10.0.0.0/33",
            "banana",
            "10.0.0.1:99999",
            "10.0.0.1:9-1",
            "[::1",
            "[::1]x",
        ] {
            let e = EgressPolicy::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn and_narrows_to_both() {
        let node = EgressPolicy::parse("10.0.0.0/8").unwrap();
        let pod = EgressPolicy::parse("10.1.0.0/16:80, 192.168.0.1").unwrap();
        let both = node.and(&pod);
        assert!(both.allows(addr("10.1.0.9:80")));
        assert!(!both.allows(addr("10.2.0.9:80")));
        assert!(!both.allows(addr("192.168.0.1:80")));
        assert_eq!(EgressPolicy::AllowAll.and(&pod), pod);
    }
}
