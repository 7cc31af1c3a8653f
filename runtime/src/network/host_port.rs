//! hostPorts: listeners on the host that forward to a pod's port, like the portmap CNI plugin
//! but in-process. They are bound when the pod is created, so a port already taken on the host
//! fails the pod at once, with nothing left behind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::PodNetwork;
use crate::error::{Error, Result};
use crate::spec::{PortMapping, Protocol};

/// Binds every hostPort of the pod and starts forwarding; on error nothing stays bound.
pub(super) fn forward_all(
    net: &Arc<PodNetwork>,
    mappings: &[PortMapping],
    default_host: IpAddr,
) -> Result<()> {
    let mappings: Vec<_> = mappings.iter().filter(|m| m.host_port != 0).collect();
    if mappings.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::internal("hostPorts need the async runtime"))?;
    let _guard = rt.enter();
    // Bind everything first: a port taken on the host fails the pod with nothing bound.
    enum Bound {
        Tcp(TcpListener),
        Udp(UdpSocket),
    }
    let mut bound = Vec::new();
    for m in mappings {
        let host = SocketAddr::new(m.host_ip.unwrap_or(default_host), m.host_port);
        let taken = |e: std::io::Error| {
            let what = format!(
                "hostPort {host}/{:?} for container port {}",
                m.protocol, m.container_port
            );
            match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    Error::exists(format!("{what}: the port is already in use on the host"))
                }
                _ => Error::io(what, e),
            }
        };
        let socket = match m.protocol {
            Protocol::Tcp => Bound::Tcp(bind_tcp(host).map_err(taken)?),
            Protocol::Udp => Bound::Udp(bind_udp(host).map_err(taken)?),
            Protocol::Sctp => {
                return Err(Error::unimplemented(format!(
                    "hostPort {host}: SCTP is not supported"
                )))
            }
        };
        bound.push((socket, net.at(m.container_port)));
    }
    let tasks = bound.into_iter().map(|(socket, pod)| match socket {
        Bound::Tcp(l) => tokio::spawn(forward_tcp(l, pod)),
        Bound::Udp(s) => tokio::spawn(forward_udp(s, pod)),
    });
    net.forwarders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(tasks);
    Ok(())
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Connections live in a [`JoinSet`], so stopping the forwarder closes them too.
async fn forward_tcp(listener: TcpListener, pod: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((mut client, peer)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            match TcpStream::connect(pod).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(%peer, %pod, "hostPort: pod not listening: {e}"),
            }
        });
    }
}

/// UDP clients remembered at once; beyond that the oldest associations are forgotten.
const MAX_UDP_CLIENTS: usize = 4096;

/// Relays datagrams: one upstream socket per client, so replies find their way back.
async fn forward_udp(socket: UdpSocket, pod: SocketAddr) {
    let socket = Arc::new(socket);
    let mut relays = JoinSet::new();
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if upstreams.len() >= MAX_UDP_CLIENTS && !upstreams.contains_key(&client) {
            upstreams.clear();
            relays.abort_all();
        }
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind(SocketAddr::new(unspecified(pod.ip()), 0)).await else {
                    continue;
                };
                if u.connect(pod).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                relays.spawn(relay_back(u.clone(), socket.clone(), client));
                upstreams.insert(client, u.clone());
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

async fn relay_back(upstream: Arc<UdpSocket>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = upstream.recv(&mut buf).await {
        let _ = socket.send_to(&buf[..n], client).await;
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}
