//! Node mode's only host change: an interface of wasmpod's own (a dummy, or an empty bridge
//! where the kernel has no dummy driver) and one `local` route that makes the whole pod CIDR
//! an address of this node (Linux AnyIP), so pods bind their IPs with no per-pod setup and
//! traffic the cluster routes to the node's pod CIDR is delivered to them. Done with iproute2's
//! `ip`, the tool every node has.

use std::process::Command;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

pub(super) fn route_pod_cidr(interface: &str, cidr: Ipv4Net) -> Result<()> {
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
        return Err(Error::invalid(format!(
            "network.interface {interface:?} is not an interface name"
        )));
    }
    let exists = Command::new("ip")
        .args(["link", "show", "dev", interface])
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        ip(&["link", "add", interface, "type", "dummy"])
            .or_else(|_| ip(&["link", "add", interface, "type", "bridge"]))?;
    }
    ip(&["link", "set", interface, "up"])?;
    let gateway = format!(
        "{}/{}",
        Ipv4Net::hosts(&cidr).next().unwrap_or(cidr.network()),
        cidr.prefix_len()
    );
    ip(&["addr", "replace", &gateway, "dev", interface])?;
    ip(&[
        "route",
        "replace",
        "local",
        &cidr.to_string(),
        "dev",
        interface,
    ])?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::io("running ip (iproute2) for the pod network", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "ip {}: {} (node mode needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
