//! The node's pod network: where pod IPs come from, and each pod's [`PodNetwork`].
//!
//! Two modes. `loopback` (the default, no root needed) takes pod IPs from a range of
//! 127.0.0.0/8, which Linux routes to `lo` as a whole: nothing to set up, and every process on
//! the host reaches `<pod IP>:<port>`. `node` (root) takes them from the node's pod CIDR and makes
//! that whole range local with one route on a dummy interface, so the cluster's route to the
//! node's pod CIDR reaches every pod without a veth per pod.

mod dns;
mod egress;
mod host_port;
mod netns;
mod node;
mod pod;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::Ipv4Net;
use rustix::fs as rfs;
use serde::Deserialize;

pub use dns::LookupError;
pub use egress::{EgressPolicy, EgressRule, EGRESS_ANNOTATION};
pub use netns::NetNs;
pub use pod::{Direction, Family, NetError, PodNetwork, PodNetworkSpec, Route, Traffic};

use crate::error::{Error, Result};
use crate::spec::{PodConfig, PortMapping};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Loopback,
    Node,
}

/// The node's network settings (the `[network]` table of the serve config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    /// Where pod IPs come from. Loopback mode: a range inside 127.0.0.0/8 (default
    /// 127.100.0.0/16). Node mode: the node's pod CIDR, or unset to wait for kubelet's.
    pub pod_cidr: Option<String>,
    /// The dummy interface node mode puts the pod CIDR on.
    pub interface: String,
    /// Where hostPorts listen when a mapping names no host IP.
    pub host_port_address: IpAddr,
    /// Node-wide egress allow-list (see [`EgressPolicy::parse`]); pods may narrow it further.
    pub egress_allow: String,
    pub max_sockets_per_pod: usize,
    /// Guests may bind ports from here up, like the sysctl `net.ipv4.ip_unprivileged_port_start`.
    pub unprivileged_port_start: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: NetworkMode::Loopback,
            pod_cidr: None,
            interface: "wasmpod0".into(),
            host_port_address: Ipv4Addr::LOCALHOST.into(),
            egress_allow: "all".into(),
            max_sockets_per_pod: 1024,
            unprivileged_port_start: 1024,
        }
    }
}

/// The default pod range of loopback mode.
pub const DEFAULT_LOOPBACK_CIDR: &str = "127.100.0.0/16";

pub struct Network {
    config: NetworkConfig,
    egress: EgressPolicy,
    pool: Mutex<Option<IpPool>>,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Result<Self> {
        netns::remember_host();
        let egress = EgressPolicy::parse(&config.egress_allow)
            .map_err(|e| e.context("network.egress_allow"))?;
        let net = Self {
            egress,
            pool: Mutex::default(),
            config,
        };
        match (net.config.mode, net.config.pod_cidr.clone()) {
            (NetworkMode::Loopback, cidr) => {
                let cidr = parse_cidr(cidr.as_deref().unwrap_or(DEFAULT_LOOPBACK_CIDR))?;
                if !Ipv4Net::from_str("127.0.0.0/8").unwrap().contains(&cidr) {
                    return Err(Error::invalid(format!(
                        "network.pod_cidr {cidr}: loopback mode needs a range inside 127.0.0.0/8"
                    )));
                }
                *net.pool.lock().unwrap_or_else(|e| e.into_inner()) = Some(IpPool::new(cidr)?);
            }
            (NetworkMode::Node, Some(cidr)) => net.set_pod_cidr(&cidr)?,
            (NetworkMode::Node, None) => {}
        }
        Ok(net)
    }

    pub fn mode(&self) -> NetworkMode {
        self.config.mode
    }

    /// True once pods can get an address (node mode waits for a pod CIDR).
    pub fn ready(&self) -> bool {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn pod_cidr(&self) -> Option<Ipv4Net> {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.cidr)
    }

    /// Takes the node's pod CIDR (config or kubelet). Node mode routes it to the dummy
    /// interface; loopback mode keeps its own range, since a cluster range is not local here.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if self.config.mode != NetworkMode::Node {
            return Ok(());
        }
        let cidr = parse_cidr(cidr)?;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.as_ref().is_some_and(|p| p.cidr == cidr) {
            return Ok(());
        }
        if pool.as_ref().is_some_and(|p| !p.used.is_empty()) {
            return Err(Error::precondition(format!(
                "pod CIDR {cidr}: pods still hold addresses of {}",
                pool.as_ref().unwrap().cidr
            )));
        }
        node::route_pod_cidr(&self.config.interface, cidr)?;
        *pool = Some(IpPool::new(cidr)?);
        Ok(())
    }

    /// Gives a pod its network: an address (`keep` after a restart), its hostPorts, its policy.
    pub fn attach(&self, config: &PodConfig, keep: Option<Ipv4Addr>) -> Result<Arc<PodNetwork>> {
        if let Some(path) = &config.netns {
            return self.join(config, path);
        }
        let (ip, cidr) = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let pool = pool.as_mut().ok_or_else(|| {
                Error::precondition("the pod network is not ready: no pod CIDR yet (node mode)")
            })?;
            let ip = match keep {
                Some(ip) if pool.reserve(ip) => ip,
                _ => pool.allocate()?,
            };
            (ip, pool.cidr)
        };
        let pod_egress = match config.annotations.get(EGRESS_ANNOTATION) {
            Some(text) => EgressPolicy::parse(text)
                .map_err(|e| e.context(format!("annotation {EGRESS_ANNOTATION}"))),
            None => Ok(EgressPolicy::AllowAll),
        };
        let pod_egress = match pod_egress {
            Ok(p) => p,
            Err(e) => {
                self.release(ip);
                return Err(e);
            }
        };
        let net = Arc::new(PodNetwork::new(PodNetworkSpec {
            pod: format!("{}/{}", config.namespace, config.name),
            ip,
            hostname: config.hostname.clone(),
            pod_cidr: cidr,
            egress: self.egress.and(&pod_egress),
            max_sockets: self.config.max_sockets_per_pod,
            unprivileged_port_start: self.config.unprivileged_port_start,
            dns: config.dns.clone(),
            netns: None,
        }));
        if let Err(e) =
            host_port::forward_all(&net, &config.port_mappings, self.config.host_port_address)
        {
            self.release(net.ip());
            return Err(e);
        }
        Ok(net)
    }

    /// A pod in a network namespace CNI made (under containerd): its address is CNI's and its
    /// hostPorts are CNI portmap's, so it takes nothing from the node's pool.
    fn join(&self, config: &PodConfig, path: &Path) -> Result<Arc<PodNetwork>> {
        let ns = NetNs::open(path)?;
        let ip = ns.ipv4().unwrap_or(Ipv4Addr::LOCALHOST);
        let pod_egress = match config.annotations.get(EGRESS_ANNOTATION) {
            Some(text) => EgressPolicy::parse(text)
                .map_err(|e| e.context(format!("annotation {EGRESS_ANNOTATION}")))?,
            None => EgressPolicy::AllowAll,
        };
        Ok(Arc::new(PodNetwork::new(PodNetworkSpec {
            pod: format!("{}/{}", config.namespace, config.name),
            ip,
            hostname: config.hostname.clone(),
            pod_cidr: Ipv4Net::new(ip, 32).unwrap_or_default(),
            egress: self.egress.and(&pod_egress),
            max_sockets: self.config.max_sockets_per_pod,
            unprivileged_port_start: self.config.unprivileged_port_start,
            dns: config.dns.clone(),
            netns: Some(Arc::new(ns)),
        })))
    }

    /// Stops the pod's hostPorts and frees its address.
    pub async fn detach(&self, net: &PodNetwork) {
        net.stop_host_ports().await;
        self.release_unused(net);
    }

    /// Frees the address of a pod that never ran (its hostPort tasks are aborted on drop).
    pub fn release_unused(&self, net: &PodNetwork) {
        if net.netns().is_none() {
            self.release(net.ip());
        }
    }

    fn release(&self, ip: Ipv4Addr) {
        if let Some(pool) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            pool.used.remove(&ip);
        }
    }

    /// Where a hostPort of `mapping` listens.
    pub fn host_port_address(&self, mapping: &PortMapping) -> IpAddr {
        mapping.host_ip.unwrap_or(self.config.host_port_address)
    }
}

fn parse_cidr(text: &str) -> Result<Ipv4Net> {
    let net = Ipv4Net::from_str(text.trim()).map_err(|_| {
        Error::invalid(format!(
            "pod CIDR {text:?} is not an IPv4 CIDR (like 10.244.1.0/24)"
        ))
    })?;
    if net.prefix_len() > 30 {
        return Err(Error::invalid(format!(
            "pod CIDR {net} is too small for pods"
        )));
    }
    Ok(net.trunc())
}

/// Pod addresses of a CIDR: all but the network address, the first host (a gateway in node
/// mode) and the broadcast address. Several wasmpod processes may share a host (a `serve` and
/// a `run`, parallel tests), so a process claims the /24 blocks it hands addresses out of with
/// a lock file each (the kernel drops the lock if the process dies): one descriptor per 254
/// pods, and no address is ever given out twice.
struct IpPool {
    cidr: Ipv4Net,
    used: BTreeSet<Ipv4Addr>,
    blocks: BTreeMap<u32, Block>,
    next: u32,
}

enum Block {
    /// This pool's, with its lock (none when the claims directory is unusable).
    Ours { _lock: Option<OwnedFd> },
    /// Held by another process.
    Theirs,
}

/// Where block claims live: a directory of this user's only, so no other local user can plant
/// files or symlinks there or hold its locks. Shared by this user's wasmpod processes whatever
/// their state directories (they share the address range too).
fn claims_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/wasmpod/ip-claims")
    } else if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(run).join("wasmpod/ip-claims")
    } else {
        let uid = rustix::process::geteuid().as_raw();
        std::env::temp_dir().join(format!("wasmpod-ip-claims-{uid}"))
    }
}

/// Opens (making it 0700 if missing) the claims directory, refusing a symlink in its place or
/// a directory that another user owns or can write.
fn open_claims_dir(path: &Path) -> std::io::Result<OwnedFd> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match rfs::mkdir(path, rfs::Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = rfs::open(
        path,
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )?;
    check_ours(&dir, 0o077)?;
    Ok(dir)
}

/// Refuses what another user owns or what has any of `forbidden_mode` bits.
fn check_ours(fd: &OwnedFd, forbidden_mode: u32) -> std::io::Result<()> {
    let st = rfs::fstat(fd)?;
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & forbidden_mode != 0 {
        return Err(std::io::Error::other(format!(
            "owned by uid {} with mode {:o}: not this user's alone",
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// This process's handle on the claims directory, opened once.
fn claims() -> Option<&'static OwnedFd> {
    static DIR: OnceLock<Option<OwnedFd>> = OnceLock::new();
    DIR.get_or_init(|| {
        let path = claims_dir();
        open_claims_dir(&path)
            .inspect_err(|e| {
                tracing::warn!(
                    path = %path.display(),
                    "pod IP claims directory unusable ({e}); addresses are unique in this process only"
                )
            })
            .ok()
    })
    .as_ref()
}

/// The /24 block of `ip`, the unit of claims.
fn block_of(ip: Ipv4Addr) -> u32 {
    u32::from(ip) >> 8
}

/// Claims a block for this process. Without a usable claims directory, addresses are only
/// tracked in this process.
fn claim(block: u32) -> Block {
    match claims().map(|dir| claim_in(dir, block)) {
        None => Block::Ours { _lock: None },
        Some(Ok(Some(lock))) => Block::Ours { _lock: Some(lock) },
        Some(Ok(None)) => Block::Theirs,
        Some(Err(e)) => {
            tracing::warn!("claiming pod IP block {}: {e}", Ipv4Addr::from(block << 8));
            Block::Theirs
        }
    }
}

/// Takes the lock file of `block` in `dir` (no symlink followed, ours alone); `None` when
/// another process holds it.
fn claim_in(dir: &OwnedFd, block: u32) -> std::io::Result<Option<OwnedFd>> {
    let name = Ipv4Addr::from(block << 8).to_string();
    let file = rfs::openat(
        dir,
        name.as_str(),
        rfs::OFlags::RDWR | rfs::OFlags::CREATE | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC,
        rfs::Mode::from_raw_mode(0o600),
    )?;
    check_ours(&file, 0o022)?;
    match rfs::flock(&file, rfs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl IpPool {
    fn new(cidr: Ipv4Net) -> Result<Self> {
        Ok(Self {
            next: u32::from(cidr.network()) + 2,
            cidr,
            used: BTreeSet::new(),
            blocks: BTreeMap::new(),
        })
    }

    /// Also skips `.0` and `.255` inside larger ranges: valid, but read as network and
    /// broadcast addresses by people and some tools.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.cidr.contains(&ip)
            && n >= u32::from(self.cidr.network()) + 2
            && n < u32::from(self.cidr.broadcast())
            && !matches!(n & 0xff, 0 | 255)
    }

    /// Whether this pool may hand out addresses of `ip`'s block, claiming it on first use.
    fn holds_block(&mut self, ip: Ipv4Addr) -> bool {
        let block = self
            .blocks
            .entry(block_of(ip))
            .or_insert_with_key(|b| claim(*b));
        matches!(block, Block::Ours { .. })
    }

    fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.usable(ip) && !self.used.contains(&ip) && self.holds_block(ip) && self.used.insert(ip)
    }

    /// The next free address after the last one given, so a freed IP is not reused at once.
    fn allocate(&mut self) -> Result<Ipv4Addr> {
        let first = u32::from(self.cidr.network()) + 2;
        let end = u32::from(self.cidr.broadcast());
        let size = end.saturating_sub(first);
        for i in 0..size {
            let n = first + (self.next.saturating_sub(first) + i) % size;
            let ip = Ipv4Addr::from(n);
            if self.reserve(ip) {
                self.next = n + 1;
                return Ok(ip);
            }
        }
        Err(Error::exhausted(format!(
            "no free pod IP left in {} ({} pods here; other wasmpod processes hold {} blocks)",
            self.cidr,
            self.used.len(),
            self.blocks
                .values()
                .filter(|b| matches!(b, Block::Theirs))
                .count()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_skips_reserved_addresses_and_reuses_late() {
        let mut pool = IpPool::new("10.0.0.0/29".parse().unwrap()).unwrap();
        let got: Vec<_> = (0..5)
            .map(|_| pool.allocate().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert!(pool.allocate().is_err());
        pool.used.remove(&"10.0.0.3".parse().unwrap());
        let again = claim(block_of("10.0.0.4".parse().unwrap()));
        assert!(matches!(again, Block::Theirs), "held by this pool");
        assert_eq!(pool.allocate().unwrap().to_string(), "10.0.0.3");
        assert!(!pool.reserve("10.0.0.7".parse().unwrap()), "broadcast");
        assert!(!pool.reserve("10.0.0.4".parse().unwrap()), "taken");
    }

    /// A claims directory another user planted (a symlink, or one they can write) is refused,
    /// and so is a symlink planted for a claim file: nothing is created through them.
    #[test]
    fn planted_claims_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(open_claims_dir(&link).is_err(), "a symlinked directory");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            open_claims_dir(&open).is_err(),
            "a world-writable directory"
        );

        let dir = tmp.path().join("claims");
        let fd = open_claims_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let victim = elsewhere.join("victim");
        std::os::unix::fs::symlink(&victim, dir.join("10.9.9.0")).unwrap();
        assert!(claim_in(&fd, block_of("10.9.9.1".parse().unwrap())).is_err());
        assert!(!victim.exists(), "nothing created through the link");
        let lock = claim_in(&fd, block_of("10.9.8.1".parse().unwrap())).unwrap();
        assert!(lock.is_some());
        assert!(claim_in(&fd, block_of("10.9.8.1".parse().unwrap()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn loopback_mode_checks_its_range() {
        let bad = |cidr: &str| {
            Network::new(NetworkConfig {
                pod_cidr: Some(cidr.into()),
                ..Default::default()
            })
            .err()
            .unwrap()
            .to_string()
        };
        assert!(bad("10.0.0.0/8").contains("inside 127.0.0.0/8"));
        assert!(bad("127.100.0.0/33").contains("not an IPv4 CIDR"));
        assert!(bad("127.1.1.1/31").contains("too small"));
        let net = Network::new(NetworkConfig {
            pod_cidr: Some("127.201.0.0/24".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(net.ready());
        let pod = net.attach(&PodConfig::default(), None).unwrap();
        assert_eq!(pod.ip().to_string(), "127.201.0.2");
        let again = net.attach(&PodConfig::default(), Some(pod.ip())).unwrap();
        assert_eq!(
            again.ip().to_string(),
            "127.201.0.3",
            "a taken address is not handed out twice"
        );
    }

    #[test]
    fn node_mode_waits_for_a_cidr() {
        let net = Network::new(NetworkConfig {
            mode: NetworkMode::Node,
            ..Default::default()
        })
        .unwrap();
        assert!(!net.ready());
        let e = net.attach(&PodConfig::default(), None).err().unwrap();
        assert!(e.to_string().contains("not ready"), "{e}");
    }

    #[test]
    fn bad_pod_egress_annotation_is_refused_and_frees_the_address() {
        let net = Network::new(NetworkConfig {
            pod_cidr: Some("127.202.0.0/24".into()),
            ..Default::default()
        })
        .unwrap();
        let mut config = PodConfig::default();
        config
            .annotations
            .insert(EGRESS_ANNOTATION.into(), "10.0.0.0/99".into());
        let e = net.attach(&config, None).err().unwrap();
        assert!(e.to_string().contains(EGRESS_ANNOTATION), "{e}");
        let pod = net.attach(&PodConfig::default(), None).unwrap();
        assert_eq!(
            pod.ip().to_string(),
            "127.202.0.3",
            "allocation moves on past the freed .2"
        );
        let other = Network::new(NetworkConfig {
            pod_cidr: Some("127.202.0.0/23".into()),
            ..Default::default()
        })
        .unwrap();
        let theirs = other.attach(&PodConfig::default(), None).unwrap();
        assert_eq!(
            theirs.ip().to_string(),
            "127.202.1.1",
            "a block held by another pool is skipped"
        );
    }
}
