//! A network namespace made by someone else (containerd's CNI setup) that a pod's sockets live
//! in. Linux keeps the network namespace per thread, so a socket is made inside the pod's
//! namespace by moving the calling thread there for the one `socket(2)` call and straight back:
//! the socket stays in the namespace it was made in, and so does every connection it accepts.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::error::{Error, Result};

/// The namespace this process started in, where threads come back to. Opened at start-up
/// (see [`remember_host`]) while every thread is still in it.
static HOST: OnceLock<std::result::Result<OwnedFd, String>> = OnceLock::new();

/// Records the process's own network namespace; called before any thread enters a pod's.
pub fn remember_host() {
    HOST.get_or_init(|| {
        File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| format!("/proc/thread-self/ns/net: {e}"))
    });
}

/// An open handle on a pod's network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace file at `path` (a bind mount of nsfs, as `ip netns` and containerd
    /// make them): the last component is not followed if it is a link, and anything that is
    /// not a network namespace is refused before it is ever entered.
    pub fn open(path: &Path) -> Result<Self> {
        let ctx = |e: io::Error| Error::io(format!("network namespace {}", path.display()), e);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(ctx)?;
        let fs = rustix::fs::fstatfs(&file).map_err(|e| ctx(e.into()))?;
        const NSFS_MAGIC: i64 = 0x6e73_6673;
        if fs.f_type as i64 != NSFS_MAGIC {
            return Err(Error::invalid(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        let ns = Self {
            fd: file.into(),
            path: path.to_owned(),
        };
        // Entering it once proves it is a network namespace (setns checks the type).
        ns.run(|| ()).map_err(ctx)?;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this thread inside the namespace, then moves the thread back.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let host = match HOST.get() {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => return Err(io::Error::other(e.clone())),
            None => {
                return Err(io::Error::other(
                    "the host network namespace was not recorded",
                ))
            }
        };
        move_into_link_name_space(self.fd.as_fd(), Some(LinkNameSpaceType::Network))?;
        let out = f();
        if let Err(e) = move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network)) {
            // A thread stranded in a pod's namespace would make the next socket there: stop.
            tracing::error!("leaving network namespace {}: {e}", self.path.display());
            std::process::abort();
        }
        Ok(out)
    }

    /// The namespace's first IPv4 address that is not loopback (the one CNI gave the pod).
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.run(first_ipv4).ok().flatten()
    }
}

/// The first non-loopback IPv4 address of this thread's network namespace.
fn first_ipv4() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below and only read before.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a sockaddr of its family.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !IpAddr::V4(ip).is_loopback() {
                    found = Some(ip);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}
