//! The host side of `wasi:sockets` for pod guests. wasmtime-wasi does the socket work; this
//! layer sits in front of it and sends every address through the guest's [`PodNetwork`]: binds
//! and connects are mapped onto the pod's addresses and checked against its egress policy,
//! addresses read back are mapped to what the guest expects, sockets count against the
//! pod's limit, and what the guest sends to and receives from peers other than its own pod is
//! counted as the pod's network traffic. Every other WASI interface is served by wasmtime-wasi unchanged.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use wasmtime::component::{HasData, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress};
use wasmtime_wasi::p2::bindings::sockets::{
    network, tcp, tcp_create_socket, udp, udp_create_socket,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, InputStream, OutputStream};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::p2::{StreamError, StreamResult};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use crate::network::{Direction, Family, LookupError, NetError, PodNetwork};

/// One store's sockets: its pod's network, and what it opened.
pub(super) struct PodSockets {
    net: Option<Arc<PodNetwork>>,
    /// Resources (sockets and datagram streams) the guest opened as IPv6.
    v6: HashSet<u32>,
    /// Sockets this store holds against the pod's limit.
    open: HashSet<u32>,
    /// Outgoing datagram streams connected to the pod itself (not its network's traffic).
    to_self: HashSet<u32>,
}

impl PodSockets {
    pub(super) fn new(net: Option<Arc<PodNetwork>>) -> Self {
        Self {
            net,
            v6: HashSet::new(),
            open: HashSet::new(),
            to_self: HashSet::new(),
        }
    }
}

/// A store can end without dropping its resources (a killed guest): give the count back here.
impl Drop for PodSockets {
    fn drop(&mut self) {
        if let Some(net) = &self.net {
            net.close_sockets(self.open.len());
        }
    }
}

pub(super) struct SocketsView<'a> {
    pub(super) inner: WasiSocketsCtxView<'a>,
    pub(super) pod: &'a mut PodSockets,
}

/// [`HasData`] marker for linking this layer.
pub(super) struct PodSocketsData;

impl HasData for PodSocketsData {
    type Data<'a> = SocketsView<'a>;
}

/// Replaces wasmtime-wasi's socket interfaces in `linker` with this layer.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> SocketsView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    tcp::add_to_linker::<T, PodSocketsData>(linker, view)?;
    tcp_create_socket::add_to_linker::<T, PodSocketsData>(linker, view)?;
    udp::add_to_linker::<T, PodSocketsData>(linker, view)?;
    udp_create_socket::add_to_linker::<T, PodSocketsData>(linker, view)?;
    add_lookup_to_linker(linker, view)?;
    linker.allow_shadowing(false);
    Ok(())
}

fn net_error(e: NetError) -> SocketError {
    let code = match e {
        NetError::NotBindable(_) => ErrorCode::AddressNotBindable,
        NetError::PrivilegedPort { .. } | NetError::Denied(_) => ErrorCode::AccessDenied,
        NetError::Unreachable(_) => ErrorCode::RemoteUnreachable,
        NetError::SocketLimit(_) => ErrorCode::NewSocketLimit,
    };
    tracing::debug!("socket refused: {e}");
    code.into()
}

impl SocketsView<'_> {
    fn net(&self) -> SocketResult<&Arc<PodNetwork>> {
        self.pod
            .net
            .as_ref()
            .ok_or_else(|| ErrorCode::AccessDenied.into())
    }

    fn family(&self, rep: u32) -> Family {
        if self.pod.v6.contains(&rep) {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// Counts a new socket of `family` (the guest's) against the pod's limit.
    fn opened(&mut self, rep: u32, family: Family) {
        self.pod.open.insert(rep);
        if family == Family::V6 {
            self.pod.v6.insert(rep);
        }
    }

    fn closed(&mut self, rep: u32) {
        self.pod.v6.remove(&rep);
        if self.pod.open.remove(&rep) {
            if let Some(net) = &self.pod.net {
                net.close_sockets(1);
            }
        }
    }

    fn to_guest(&self, rep: u32, host: IpSocketAddress) -> SocketResult<IpSocketAddress> {
        let family = self.family(rep);
        Ok(self.net()?.to_guest(host.into(), family).into())
    }

    fn bind_addr(&self, guest: IpSocketAddress) -> SocketResult<IpSocketAddress> {
        let addr = self.net()?.bind(guest.into()).map_err(net_error)?;
        Ok(addr.into())
    }

    /// Binds an unbound TCP socket to the pod's IP before the OS would pick an address itself.
    async fn bind_if_unbound(
        &mut self,
        this: &Resource<TcpSocket>,
        network: Resource<network::Network>,
        addr: SocketAddr,
    ) -> SocketResult<()> {
        let sock = Resource::<TcpSocket>::new_borrow(this.rep());
        if tcp::HostTcpSocket::local_address(&mut self.inner, sock)
            .is_ok_and(|a| SocketAddr::from(a).port() != 0)
        {
            return Ok(());
        }
        let sock = Resource::<TcpSocket>::new_borrow(this.rep());
        tcp::HostTcpSocket::start_bind(&mut self.inner, sock, network, addr.into()).await?;
        tcp::HostTcpSocket::finish_bind(&mut self.inner, Resource::new_borrow(this.rep()))
    }

    /// Whether a host address is another peer than the pod itself, whose traffic counts.
    fn counts(&self, host: IpSocketAddress) -> bool {
        self.pod
            .net
            .as_ref()
            .is_some_and(|n| !n.is_self(SocketAddr::from(host).ip()))
    }

    /// Puts counting streams in place of a connected socket's, unless its peer is the pod.
    fn count_streams(
        &mut self,
        sock: u32,
        (rx, tx): (Resource<DynInputStream>, Resource<DynOutputStream>),
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let peer = tcp::HostTcpSocket::remote_address(&mut self.inner, Resource::new_borrow(sock));
        let Some(net) = self
            .pod
            .net
            .clone()
            .filter(|_| peer.is_ok_and(|p| self.counts(p)))
        else {
            return Ok((rx, tx));
        };
        let parent = Resource::<TcpSocket>::new_borrow(sock);
        let table = &mut *self.inner.table;
        let input = table.delete(rx).map_err(SocketError::trap)?;
        let output = table.delete(tx).map_err(SocketError::trap)?;
        let input: DynInputStream = Box::new(Counted {
            inner: input,
            net: net.clone(),
        });
        let output: DynOutputStream = Box::new(Counted { inner: output, net });
        Ok((
            table
                .push_child(input, &parent)
                .map_err(SocketError::trap)?,
            table
                .push_child(output, &parent)
                .map_err(SocketError::trap)?,
        ))
    }
}

/// A TCP stream whose reads and writes count as the pod's traffic.
struct Counted<S> {
    inner: S,
    net: Arc<PodNetwork>,
}

impl<S> Counted<S> {
    /// An I/O error is an interface error; a closed stream is not.
    fn count_failure(&self, direction: Direction, e: &StreamError) {
        if matches!(e, StreamError::LastOperationFailed(_)) {
            self.net.count_error(direction);
        }
    }
}

#[async_trait::async_trait]
impl<S: Pollable> Pollable for Counted<S> {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl InputStream for Counted<DynInputStream> {
    fn read(&mut self, size: usize) -> StreamResult<bytes::Bytes> {
        let got = self
            .inner
            .read(size)
            .inspect_err(|e| self.count_failure(Direction::Received, e))?;
        self.net.count(Direction::Received, got.len());
        Ok(got)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[async_trait::async_trait]
impl OutputStream for Counted<DynOutputStream> {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let n = bytes.len();
        self.inner
            .write(bytes)
            .inspect_err(|e| self.count_failure(Direction::Sent, e))?;
        self.net.count(Direction::Sent, n);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

fn host_family(_guest: IpAddressFamily) -> IpAddressFamily {
    // Pods have IPv4 addresses; IPv6 sockets ride on IPv4 ones (see `network::pod`).
    IpAddressFamily::Ipv4
}

fn guest_family(family: IpAddressFamily) -> Family {
    match family {
        IpAddressFamily::Ipv4 => Family::V4,
        IpAddressFamily::Ipv6 => Family::V6,
    }
}

impl tcp_create_socket::Host for SocketsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        let net = self.net()?.clone();
        net.open_socket().map_err(net_error)?;
        let made = match net.netns() {
            Some(ns) => ns
                .run(|| {
                    tcp_create_socket::Host::create_tcp_socket(&mut self.inner, host_family(family))
                })
                .unwrap_or_else(|e| Err(SocketError::trap(e))),
            None => {
                tcp_create_socket::Host::create_tcp_socket(&mut self.inner, host_family(family))
            }
        };
        match made {
            Ok(sock) => {
                self.opened(sock.rep(), guest_family(family));
                Ok(sock)
            }
            Err(e) => {
                self.net()?.close_sockets(1);
                Err(e)
            }
        }
    }
}

impl udp_create_socket::Host for SocketsView<'_> {
    async fn create_udp_socket(
        &mut self,
        family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        let net = self.net()?.clone();
        net.open_socket().map_err(net_error)?;
        // wasmtime-wasi makes the socket in the future's first poll: that poll runs inside the
        // pod's namespace, the rest (waiting for tokio's registration) anywhere.
        let made = match net.netns() {
            Some(ns) => {
                let mut fut = std::pin::pin!(udp_create_socket::Host::create_udp_socket(
                    &mut self.inner,
                    host_family(family),
                ));
                let first = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(ns.run(|| std::future::Future::poll(fut.as_mut(), cx)))
                })
                .await
                .map_err(SocketError::trap)?;
                match first {
                    std::task::Poll::Ready(made) => made,
                    std::task::Poll::Pending => fut.await,
                }
            }
            None => {
                udp_create_socket::Host::create_udp_socket(&mut self.inner, host_family(family))
                    .await
            }
        };
        match made {
            Ok(sock) => {
                self.opened(sock.rep(), guest_family(family));
                Ok(sock)
            }
            Err(e) => {
                self.net()?.close_sockets(1);
                Err(e)
            }
        }
    }
}

/// A guest's name lookup, resolved through its pod's network (`PodNetwork::lookup`), standing
/// in for wasmtime-wasi's `resolve-address-stream`.
pub(super) enum Lookup {
    Pending(tokio::task::JoinHandle<Result<Vec<IpAddr>, LookupError>>),
    Done(Result<VecDeque<IpAddr>, LookupError>),
}

#[async_trait::async_trait]
impl Pollable for Lookup {
    async fn ready(&mut self) {
        if let Lookup::Pending(task) = self {
            let result = task.await.unwrap_or(Err(LookupError::ResolverFailure));
            *self = Lookup::Done(result.map(VecDeque::from));
        }
    }
}

fn lookup_error(e: LookupError) -> ErrorCode {
    match e {
        LookupError::InvalidName => ErrorCode::InvalidArgument,
        LookupError::NotFound => ErrorCode::NameUnresolvable,
        LookupError::ResolverFailure => ErrorCode::TemporaryResolverFailure,
    }
}

/// Defines `wasi:sockets/ip-name-lookup` over [`Lookup`], replacing wasmtime-wasi's (which
/// only knows the node's resolver and cannot be handed addresses).
fn add_lookup_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> SocketsView<'_>,
) -> wasmtime::Result<()> {
    let mut inst = linker.instance(IP_NAME_LOOKUP)?;
    inst.resource(
        "resolve-address-stream",
        ResourceType::host::<Lookup>(),
        move |mut store, rep| {
            view(store.data_mut())
                .inner
                .table
                .delete(Resource::<Lookup>::new_own(rep))?;
            Ok(())
        },
    )?;
    inst.func_wrap(
        "resolve-addresses",
        move |mut store, (network, name): (Resource<network::Network>, String)| {
            let v = view(store.data_mut());
            v.inner.table.get(&network)?;
            let Some(net) = v.pod.net.clone() else {
                return Ok((Err(ErrorCode::AccessDenied),));
            };
            let task = tokio::spawn(async move { net.lookup(&name).await });
            Ok((Ok(v.inner.table.push(Lookup::Pending(task))?),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        move |mut store, (this,): (Resource<Lookup>,)| {
            let lookup = view(store.data_mut()).inner.table.get_mut(&this)?;
            if let Lookup::Pending(task) = lookup {
                if !task.is_finished() {
                    return Ok((Err(ErrorCode::WouldBlock),));
                }
                let result =
                    futures::executor::block_on(task).unwrap_or(Err(LookupError::ResolverFailure));
                *lookup = Lookup::Done(result.map(VecDeque::from));
            }
            let Lookup::Done(result) = lookup else {
                unreachable!("made done above");
            };
            Ok((match result {
                Ok(addrs) => Ok(addrs.pop_front().map(network::IpAddress::from)),
                Err(e) => Err(lookup_error(*e)),
            },))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.subscribe",
        move |mut store, (this,): (Resource<Lookup>,)| {
            let table = view(store.data_mut()).inner.table;
            Ok((wasmtime_wasi::p2::subscribe(table, this)?,))
        },
    )?;
    Ok(())
}

/// The interface name wasmtime-wasi 48 defines; guests importing any 0.2.x match it.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

impl network::Host for SocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for SocketsView<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}

impl tcp::Host for SocketsView<'_> {}

/// Methods that need no address mapping go straight to wasmtime-wasi.
macro_rules! pass_through {
    ($trait:path, $res:ty; $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&mut self, this: Resource<$res>, $($arg: $ty),*) -> $ret {
            <WasiSocketsCtxView<'_> as $trait>::$name(&mut self.inner, this, $($arg),*)
        })*
    };
}

impl tcp::HostTcpSocket for SocketsView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<network::Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let addr = self.bind_addr(local_address)?;
        tcp::HostTcpSocket::start_bind(&mut self.inner, this, network, addr).await
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<network::Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let route = self
            .net()?
            .route(remote_address.into())
            .map_err(net_error)?;
        if let Some(source) = route.source {
            // A socket to a pod speaks from this pod's IP; binding is immediate for TCP.
            let network2 = Resource::new_borrow(network.rep());
            let bound = futures::executor::block_on(self.bind_if_unbound(&this, network2, source));
            bound?;
        }
        tcp::HostTcpSocket::start_connect(&mut self.inner, this, network, route.dest.into())
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        // wasi:sockets 0.2 requires a bind first; keep wasmtime-wasi's answer for unbound ones.
        tcp::HostTcpSocket::start_listen(&mut self.inner, this).await
    }

    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(
        Resource<TcpSocket>,
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
    )> {
        let family = self.family(this.rep());
        self.net()?.open_socket().map_err(net_error)?;
        match tcp::HostTcpSocket::accept(&mut self.inner, this) {
            Ok((sock, rx, tx)) => {
                self.opened(sock.rep(), family);
                let (rx, tx) = self.count_streams(sock.rep(), (rx, tx))?;
                Ok((sock, rx, tx))
            }
            Err(e) => {
                self.net()?.close_sockets(1);
                Err(e)
            }
        }
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        let rep = this.rep();
        let host = tcp::HostTcpSocket::local_address(&mut self.inner, this)?;
        self.to_guest(rep, host)
    }

    fn remote_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        let rep = this.rep();
        let host = tcp::HostTcpSocket::remote_address(&mut self.inner, this)?;
        self.to_guest(rep, host)
    }

    fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily> {
        Ok(match self.family(this.rep()) {
            Family::V4 => IpAddressFamily::Ipv4,
            Family::V6 => IpAddressFamily::Ipv6,
        })
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        self.closed(this.rep());
        tcp::HostTcpSocket::drop(&mut self.inner, this)
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let sock = this.rep();
        let streams = tcp::HostTcpSocket::finish_connect(&mut self.inner, this)?;
        self.count_streams(sock, streams)
    }

    pass_through! { tcp::HostTcpSocket, TcpSocket;
        finish_bind() -> SocketResult<()>;
        finish_listen() -> SocketResult<()>;
        is_listening() -> wasmtime::Result<bool>;
        set_listen_backlog_size(value: u64) -> SocketResult<()>;
        keep_alive_enabled() -> SocketResult<bool>;
        set_keep_alive_enabled(value: bool) -> SocketResult<()>;
        keep_alive_idle_time() -> SocketResult<u64>;
        set_keep_alive_idle_time(value: u64) -> SocketResult<()>;
        keep_alive_interval() -> SocketResult<u64>;
        set_keep_alive_interval(value: u64) -> SocketResult<()>;
        keep_alive_count() -> SocketResult<u32>;
        set_keep_alive_count(value: u32) -> SocketResult<()>;
        hop_limit() -> SocketResult<u8>;
        set_hop_limit(value: u8) -> SocketResult<()>;
        receive_buffer_size() -> SocketResult<u64>;
        set_receive_buffer_size(value: u64) -> SocketResult<()>;
        send_buffer_size() -> SocketResult<u64>;
        set_send_buffer_size(value: u64) -> SocketResult<()>;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
        shutdown(how: tcp::ShutdownType) -> SocketResult<()>;
    }
}

impl udp::Host for SocketsView<'_> {}

impl udp::HostUdpSocket for SocketsView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<UdpSocket>,
        network: Resource<network::Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let addr = self.bind_addr(local_address)?;
        udp::HostUdpSocket::start_bind(&mut self.inner, this, network, addr).await
    }

    async fn stream(
        &mut self,
        this: Resource<UdpSocket>,
        remote_address: Option<IpSocketAddress>,
    ) -> SocketResult<(
        Resource<udp::IncomingDatagramStream>,
        Resource<udp::OutgoingDatagramStream>,
    )> {
        let family = self.family(this.rep());
        let remote = match remote_address {
            Some(a) => Some(self.net()?.route(a.into()).map_err(net_error)?.dest.into()),
            None => None,
        };
        let (rx, tx) = udp::HostUdpSocket::stream(&mut self.inner, this, remote).await?;
        if remote.is_some_and(|r| !self.counts(r)) {
            self.pod.to_self.insert(tx.rep());
        }
        if family == Family::V6 {
            self.pod.v6.extend([rx.rep(), tx.rep()]);
        }
        Ok((rx, tx))
    }

    fn local_address(&mut self, this: Resource<UdpSocket>) -> SocketResult<IpSocketAddress> {
        let rep = this.rep();
        let host = udp::HostUdpSocket::local_address(&mut self.inner, this)?;
        self.to_guest(rep, host)
    }

    fn remote_address(&mut self, this: Resource<UdpSocket>) -> SocketResult<IpSocketAddress> {
        let rep = this.rep();
        let host = udp::HostUdpSocket::remote_address(&mut self.inner, this)?;
        self.to_guest(rep, host)
    }

    fn address_family(&mut self, this: Resource<UdpSocket>) -> wasmtime::Result<IpAddressFamily> {
        Ok(match self.family(this.rep()) {
            Family::V4 => IpAddressFamily::Ipv4,
            Family::V6 => IpAddressFamily::Ipv6,
        })
    }

    fn drop(&mut self, this: Resource<UdpSocket>) -> wasmtime::Result<()> {
        self.closed(this.rep());
        udp::HostUdpSocket::drop(&mut self.inner, this)
    }

    pass_through! { udp::HostUdpSocket, UdpSocket;
        finish_bind() -> SocketResult<()>;
        unicast_hop_limit() -> SocketResult<u8>;
        set_unicast_hop_limit(value: u8) -> SocketResult<()>;
        receive_buffer_size() -> SocketResult<u64>;
        set_receive_buffer_size(value: u64) -> SocketResult<()>;
        send_buffer_size() -> SocketResult<u64>;
        set_send_buffer_size(value: u64) -> SocketResult<()>;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
    }
}

impl udp::HostIncomingDatagramStream for SocketsView<'_> {
    fn receive(
        &mut self,
        this: Resource<udp::IncomingDatagramStream>,
        max_results: u64,
    ) -> SocketResult<Vec<udp::IncomingDatagram>> {
        let rep = this.rep();
        let mut got = udp::HostIncomingDatagramStream::receive(&mut self.inner, this, max_results)?;
        for d in &mut got {
            if self.counts(d.remote_address) {
                self.net()?.count(Direction::Received, d.data.len());
            }
            d.remote_address = self.to_guest(rep, d.remote_address)?;
        }
        Ok(got)
    }

    fn drop(&mut self, this: Resource<udp::IncomingDatagramStream>) -> wasmtime::Result<()> {
        self.pod.v6.remove(&this.rep());
        udp::HostIncomingDatagramStream::drop(&mut self.inner, this)
    }

    pass_through! { udp::HostIncomingDatagramStream, udp::IncomingDatagramStream;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
    }
}

impl udp::HostOutgoingDatagramStream for SocketsView<'_> {
    /// Datagrams go out up to the first one the pod may not send; that one fails only if it
    /// is the first (a partial send reports its count, as the interface asks).
    fn send(
        &mut self,
        this: Resource<udp::OutgoingDatagramStream>,
        datagrams: Vec<udp::OutgoingDatagram>,
    ) -> SocketResult<u64> {
        let net = self.net()?.clone();
        let mut allowed = Vec::with_capacity(datagrams.len());
        let mut refused = None;
        for mut d in datagrams {
            if let Some(to) = d.remote_address {
                match net.route(to.into()) {
                    Ok(route) => d.remote_address = Some(route.dest.into()),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            allowed.push(d);
        }
        if let (Some(e), true) = (refused, allowed.is_empty()) {
            net.count_error(Direction::Sent);
            return Err(net_error(e));
        }
        let connected_to_self = self.pod.to_self.contains(&this.rep());
        let counted: Vec<usize> = allowed
            .iter()
            .map(|d| match d.remote_address {
                Some(to) if self.counts(to) => d.data.len(),
                None if !connected_to_self => d.data.len(),
                _ => 0,
            })
            .collect();
        let sent = udp::HostOutgoingDatagramStream::send(&mut self.inner, this, allowed)?;
        for &n in counted.iter().take(sent as usize) {
            net.count(Direction::Sent, n);
        }
        Ok(sent)
    }

    async fn drop(&mut self, this: Resource<udp::OutgoingDatagramStream>) -> wasmtime::Result<()> {
        self.pod.v6.remove(&this.rep());
        self.pod.to_self.remove(&this.rep());
        udp::HostOutgoingDatagramStream::drop(&mut self.inner, this).await
    }

    pass_through! { udp::HostOutgoingDatagramStream, udp::OutgoingDatagramStream;
        check_send() -> SocketResult<u64>;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
    }
}
