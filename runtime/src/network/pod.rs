//! [`PodNetwork`]: one pod's virtual network namespace, and the address mapping that makes it
//! one. Every socket operation of a guest goes through here: the pod's localhost (`127.0.0.1`,
//! `::1`) and wildcard (`0.0.0.0`, `::`) become the pod's own IP, so the containers of a pod meet
//! on localhost while two pods can use the same port; connections leave only as the egress
//! policy allows; the pod's socket count is capped.
//!
//! Pods have an IPv4 address. A guest's IPv6 socket is carried by an IPv4 socket on the host:
//! `::1` and `::` are the pod's IP, IPv4-mapped addresses are IPv4 peers, and the addresses the
//! guest reads back are translated the same way, so `[::]` listeners and `::1` clients work
//! inside the pod. Other IPv6 destinations are unreachable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use super::dns::{LookupError, PodResolver};
use super::egress::EgressPolicy;
use super::netns::NetNs;
use crate::spec::DnsConfig;

/// The address family a guest asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Why a socket operation is refused; the engine turns these into `wasi:sockets` error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0} is not an address of this pod")]
    NotBindable(SocketAddr),
    #[error("port {port} is privileged (below {start}); set the node's unprivileged_port_start to allow it")]
    PrivilegedPort { port: u16, start: u16 },
    #[error("egress to {0} is not allowed by the pod's policy")]
    Denied(SocketAddr),
    #[error("{0} is unreachable: pods have no IPv6 route")]
    Unreachable(SocketAddr),
    #[error("the pod has {0} sockets open, its limit")]
    SocketLimit(usize),
}

/// Where a connection or datagram goes on the host, and the source address to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: SocketAddr,
    /// Set when the destination is a pod (this one or another), so the peer sees this pod's IP
    /// rather than the host's loopback address.
    pub source: Option<SocketAddr>,
}

/// Settings a pod's network is made from.
#[derive(Debug, Clone)]
pub struct PodNetworkSpec {
    /// `namespace/name`, for logs.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
    /// The range all pod IPs of the node come from.
    pub pod_cidr: Ipv4Net,
    pub egress: EgressPolicy,
    pub max_sockets: usize,
    pub unprivileged_port_start: u16,
    pub dns: DnsConfig,
    /// The pod lives in a namespace CNI set up (under containerd): its sockets are made there
    /// and keep the addresses the guest gives, since that namespace has its own localhost.
    pub netns: Option<Arc<NetNs>>,
}

pub struct PodNetwork {
    spec: PodNetworkSpec,
    resolver: std::sync::OnceLock<PodResolver>,
    sockets: AtomicUsize,
    /// The pod's hostPort listeners, stopped when the pod's network is torn down.
    pub(super) forwarders: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    traffic: [Counter; 2],
}

/// Which way traffic goes, seen from the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Received = 0,
    Sent = 1,
}

#[derive(Default)]
struct Counter {
    bytes: AtomicU64,
    packets: AtomicU64,
    errors: AtomicU64,
}

/// What a pod's guests exchanged with peers other than the pod itself, as a pod's `eth0` counts
/// it (traffic on the pod's localhost or to its own IP stays on `lo`). A packet is a datagram
/// for UDP; for TCP it is one read or write of the guest that moved bytes (the segments the
/// kernel makes are not visible to a socket user; pods have no interface of their own whose
/// kernel counters could be read, see the README).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Reads that failed with an I/O error (not an orderly close), and writes too, or
    /// datagrams the pod network refused to route. Nothing is dropped silently: a packet
    /// sent either reaches the host socket or fails to the guest, one received is handed to
    /// the guest reading its socket.
    pub rx_errors: u64,
    pub tx_errors: u64,
}

impl PodNetwork {
    pub fn new(spec: PodNetworkSpec) -> Self {
        Self {
            spec,
            resolver: std::sync::OnceLock::new(),
            sockets: AtomicUsize::new(0),
            forwarders: Mutex::default(),
            traffic: Default::default(),
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.spec.ip
    }

    pub fn hostname(&self) -> &str {
        &self.spec.hostname
    }

    pub fn dns(&self) -> &DnsConfig {
        &self.spec.dns
    }

    pub fn egress(&self) -> &EgressPolicy {
        &self.spec.egress
    }

    /// Closes the pod's hostPort listeners and waits until the ports are free again (a stopped
    /// pod keeps its IP until it is removed).
    pub async fn stop_host_ports(&self) {
        let tasks = std::mem::take(&mut *self.forwarders.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The host address a guest's bind to `guest` becomes.
    pub fn bind(&self, guest: SocketAddr) -> Result<SocketAddr, NetError> {
        let port = guest.port();
        if port != 0 && port < self.spec.unprivileged_port_start {
            return Err(NetError::PrivilegedPort {
                port,
                start: self.spec.unprivileged_port_start,
            });
        }
        if self.spec.netns.is_some() {
            return carried_v4(guest).ok_or(NetError::NotBindable(guest));
        }
        match self.own(guest.ip()) {
            Some(ip) => Ok(SocketAddr::new(ip, port)),
            None if guest.ip().to_canonical().is_unspecified() => Ok(self.at(port)),
            None => Err(NetError::NotBindable(guest)),
        }
    }

    /// The namespace the pod's sockets are made in, when it is not the host's.
    pub fn netns(&self) -> Option<&NetNs> {
        self.spec.netns.as_deref()
    }

    /// A listener on the pod's `port`, made in the pod's namespace (a wasi:http handler's).
    pub fn listen_tcp(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        let addr = self.at(port);
        let listener = match self.netns() {
            Some(ns) => ns.run(|| std::net::TcpListener::bind(addr))??,
            None => std::net::TcpListener::bind(addr)?,
        };
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// The host address of the pod's own port `port`.
    pub fn at(&self, port: u16) -> SocketAddr {
        match self.spec.netns {
            // Every address of its own namespace is the pod's.
            Some(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            None => SocketAddr::new(self.spec.ip.into(), port),
        }
    }

    /// Where a guest's connection (or datagram) to `guest` goes, after the egress check.
    pub fn route(&self, guest: SocketAddr) -> Result<Route, NetError> {
        if self.spec.netns.is_some() {
            let dest = carried_v4(guest).ok_or(NetError::Unreachable(guest))?;
            let local = dest.ip().is_loopback() || dest.ip() == IpAddr::V4(self.spec.ip);
            if !local && !self.spec.egress.allows(dest) {
                tracing::warn!(pod = %self.spec.pod, %dest, "egress denied");
                return Err(NetError::Denied(dest));
            }
            return Ok(Route { dest, source: None });
        }
        let dest = match self.own(guest.ip()) {
            Some(ip) => SocketAddr::new(ip, guest.port()),
            None => match guest.ip().to_canonical() {
                IpAddr::V4(v4) => SocketAddr::new(v4.into(), guest.port()),
                IpAddr::V6(_) => return Err(NetError::Unreachable(guest)),
            },
        };
        let to_self = dest.ip() == IpAddr::V4(self.spec.ip);
        if !to_self && !self.spec.egress.allows(dest) {
            tracing::warn!(pod = %self.spec.pod, %dest, "egress denied");
            return Err(NetError::Denied(dest));
        }
        let to_pod = matches!(dest.ip(), IpAddr::V4(v4) if self.spec.pod_cidr.contains(&v4));
        Ok(Route {
            dest,
            source: to_pod.then(|| self.at(0)),
        })
    }

    /// How a host address looks to a guest socket of `family`.
    pub fn to_guest(&self, host: SocketAddr, family: Family) -> SocketAddr {
        match (family, host.ip()) {
            (Family::V4, _) | (_, IpAddr::V6(_)) => host,
            (Family::V6, IpAddr::V4(v4))
                if match self.spec.netns {
                    // Its own namespace has a loopback of its own; else the pod's IP stands for it.
                    Some(_) => v4.is_loopback(),
                    None => v4 == self.spec.ip,
                } =>
            {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), host.port())
            }
            (Family::V6, IpAddr::V4(v4)) => {
                SocketAddr::new(v4.to_ipv6_mapped().into(), host.port())
            }
        }
    }

    /// Names the pod answers itself: `localhost` and its own hostname.
    pub fn resolve_local(&self, name: &str) -> Option<Vec<IpAddr>> {
        let name = name.trim_end_matches('.');
        if name.eq_ignore_ascii_case("localhost") {
            Some(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()])
        } else if !self.spec.hostname.is_empty() && name.eq_ignore_ascii_case(&self.spec.hostname) {
            Some(vec![self.spec.ip.into()])
        } else {
            None
        }
    }

    /// Resolves `name` as the pod sees it: its own names, IP literals, then its DNS servers.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let name = name.trim();
        if let Some(ips) = self.resolve_local(name) {
            return Ok(ips);
        }
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if name.is_empty()
            || name.len() > 253
            || name.contains(|c: char| c.is_whitespace() || c == '/')
        {
            return Err(LookupError::InvalidName);
        }
        self.resolver
            .get_or_init(|| PodResolver::new(&self.spec.dns))
            .lookup(name)
            .await
    }

    /// Counts a new socket against the pod's limit.
    pub fn open_socket(&self) -> Result<(), NetError> {
        let max = self.spec.max_sockets;
        self.sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| {
                tracing::warn!(pod = %self.spec.pod, max, "socket limit reached");
                NetError::SocketLimit(max)
            })
    }

    pub fn close_sockets(&self, n: usize) {
        self.sockets.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn open_sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    /// Whether a host address a guest socket talks to is the pod itself, whose traffic is not
    /// the pod's network traffic.
    pub fn is_self(&self, host: IpAddr) -> bool {
        let ip = host.to_canonical();
        ip == IpAddr::V4(self.spec.ip) || (self.spec.netns.is_some() && ip.is_loopback())
    }

    /// Counts one packet of `bytes` (nothing for an empty one).
    pub fn count(&self, direction: Direction, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let c = &self.traffic[direction as usize];
        c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        c.packets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a read or write that failed.
    pub fn count_error(&self, direction: Direction) {
        self.traffic[direction as usize]
            .errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The pod's traffic so far.
    pub fn traffic(&self) -> Traffic {
        let [rx, tx] = &self.traffic;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            rx_bytes: load(&rx.bytes),
            rx_packets: load(&rx.packets),
            tx_bytes: load(&tx.bytes),
            tx_packets: load(&tx.packets),
            rx_errors: load(&rx.errors),
            tx_errors: load(&tx.errors),
        }
    }

    /// The pod's own address for `ip`: its localhost and its IP.
    fn own(&self, ip: IpAddr) -> Option<IpAddr> {
        let mine = IpAddr::V4(self.spec.ip);
        match ip {
            IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST || v4 == self.spec.ip => Some(mine),
            IpAddr::V6(v6) if v6 == Ipv6Addr::LOCALHOST => Some(mine),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().and_then(|v4| self.own(v4.into())),
            _ => None,
        }
    }
}

/// The IPv4 address that carries a guest's address in a namespace of its own: IPv6 loopback
/// and wildcard are their IPv4 twins, IPv4-mapped addresses are IPv4; other IPv6 has no carrier.
fn carried_v4(guest: SocketAddr) -> Option<SocketAddr> {
    let ip = match guest.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) if v6 == Ipv6Addr::LOCALHOST => Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    Some(SocketAddr::new(ip.into(), guest.port()))
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for t in self.forwarders.get_mut().unwrap_or_else(|e| e.into_inner()) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(egress: &str) -> PodNetwork {
        PodNetwork::new(PodNetworkSpec {
            pod: "default/test".into(),
            ip: "127.100.0.7".parse().unwrap(),
            hostname: "web-1".into(),
            pod_cidr: "127.100.0.0/16".parse().unwrap(),
            egress: EgressPolicy::parse(egress).unwrap(),
            max_sockets: 2,
            netns: None,
            unprivileged_port_start: 1024,
            dns: DnsConfig::default(),
        })
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn localhost_and_wildcards_bind_to_the_pod_ip() {
        let p = pod("all");
        for guest in [
            "127.0.0.1:8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "[::1]:8080",
            "127.100.0.7:8080",
        ] {
            assert_eq!(p.bind(a(guest)), Ok(a("127.100.0.7:8080")), "{guest}");
        }
        assert_eq!(p.bind(a("0.0.0.0:0")), Ok(a("127.100.0.7:0")));
    }

    #[test]
    fn foreign_and_privileged_binds_are_refused() {
        let p = pod("all");
        assert_eq!(
            p.bind(a("127.100.0.8:8080")),
            Err(NetError::NotBindable(a("127.100.0.8:8080")))
        );
        assert_eq!(
            p.bind(a("127.0.0.2:8080")),
            Err(NetError::NotBindable(a("127.0.0.2:8080")))
        );
        assert_eq!(
            p.bind(a("[fd00::1]:80")),
            Err(NetError::PrivilegedPort {
                port: 80,
                start: 1024
            })
        );
        assert!(matches!(
            p.bind(a("0.0.0.0:80")),
            Err(NetError::PrivilegedPort { .. })
        ));
    }

    #[test]
    fn routes_localhost_home_and_pods_with_the_pod_ip_as_source() {
        let p = pod("all");
        let home = p.route(a("[::1]:9000")).unwrap();
        assert_eq!(home.dest, a("127.100.0.7:9000"));
        assert_eq!(home.source, Some(a("127.100.0.7:0")));
        let other = p.route(a("127.100.0.9:80")).unwrap();
        assert_eq!(other.dest, a("127.100.0.9:80"));
        assert_eq!(other.source, Some(a("127.100.0.7:0")));
        // The host's other loopback addresses are the host network, reached as the host.
        let host = p.route(a("127.0.0.2:5432")).unwrap();
        assert_eq!((host.dest, host.source), (a("127.0.0.2:5432"), None));
        assert_eq!(
            p.route(a("[::ffff:10.0.0.1]:1")).unwrap().dest,
            a("10.0.0.1:1")
        );
        assert_eq!(
            p.route(a("[2001:db8::1]:1")),
            Err(NetError::Unreachable(a("[2001:db8::1]:1")))
        );
    }

    #[test]
    fn egress_policy_applies_to_everything_but_the_pod_itself() {
        let p = pod("127.0.0.2:5432");
        assert!(p.route(a("127.0.0.1:1")).is_ok());
        assert!(p.route(a("127.0.0.2:5432")).is_ok());
        assert_eq!(
            p.route(a("127.0.0.2:5433")),
            Err(NetError::Denied(a("127.0.0.2:5433")))
        );
        assert_eq!(
            p.route(a("127.100.0.9:80")),
            Err(NetError::Denied(a("127.100.0.9:80")))
        );
    }

    #[test]
    fn ipv6_guests_see_the_pod_as_ipv6_loopback() {
        let p = pod("all");
        assert_eq!(
            p.to_guest(a("127.100.0.7:8080"), Family::V6),
            a("[::1]:8080")
        );
        assert_eq!(
            p.to_guest(a("127.0.0.2:1"), Family::V6),
            a("[::ffff:127.0.0.2]:1")
        );
        assert_eq!(
            p.to_guest(a("127.100.0.7:8080"), Family::V4),
            a("127.100.0.7:8080")
        );
    }

    #[test]
    fn local_names_and_socket_limit() {
        let p = pod("all");
        assert_eq!(
            p.resolve_local("localhost").unwrap()[0],
            IpAddr::from(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            p.resolve_local("WEB-1.").unwrap(),
            vec![IpAddr::from([127, 100, 0, 7])]
        );
        assert!(p.resolve_local("example.com").is_none());
        p.open_socket().unwrap();
        p.open_socket().unwrap();
        assert_eq!(p.open_socket(), Err(NetError::SocketLimit(2)));
        p.close_sockets(1);
        p.open_socket().unwrap();
        assert_eq!(p.open_sockets(), 2);
    }

    #[test]
    fn traffic_counts_packets_to_others_only() {
        let p = pod("all");
        assert!(p.is_self(IpAddr::from([127, 100, 0, 7])));
        assert!(!p.is_self(IpAddr::from([127, 100, 0, 8])));
        p.count(Direction::Received, 100);
        p.count(Direction::Sent, 0);
        p.count(Direction::Sent, 7);
        p.count(Direction::Sent, 3);
        p.count_error(Direction::Received);
        let t = p.traffic();
        assert_eq!((t.rx_bytes, t.rx_packets, t.rx_errors), (100, 1, 1));
        assert_eq!((t.tx_bytes, t.tx_packets, t.tx_errors), (10, 2, 0));
    }
}
