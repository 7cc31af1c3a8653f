//! Name lookups of a pod's guests: `localhost` and the pod's hostname are the pod's own; other
//! names go to the sandbox's DNS servers with its search domains and `ndots` (what kubelet
//! writes into a pod's resolv.conf), or to the node's resolver when the sandbox names none.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::Name;
use hickory_resolver::TokioResolver;

use crate::spec::DnsConfig;

/// Why a lookup failed, in the terms of `wasi:sockets/ip-name-lookup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    InvalidName,
    NotFound,
    ResolverFailure,
}

/// A pod's resolver: hickory over the sandbox's servers, built once per pod on first use.
pub(super) struct PodResolver {
    resolver: Option<TokioResolver>,
}

impl PodResolver {
    pub(super) fn new(dns: &DnsConfig) -> Self {
        Self {
            resolver: build(dns)
                .inspect_err(|e| {
                    tracing::warn!("pod DNS config {dns:?}: {e}; using the node's resolver")
                })
                .ok()
                .flatten(),
        }
    }

    pub(super) async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let addrs: Vec<IpAddr> = match &self.resolver {
            Some(r) => r
                .lookup_ip(name)
                .await
                .map_err(|e| {
                    tracing::debug!("lookup of {name}: {e}");
                    if e.is_no_records_found() {
                        LookupError::NotFound
                    } else {
                        LookupError::ResolverFailure
                    }
                })?
                .iter()
                .collect(),
            None => tokio::net::lookup_host((name, 0))
                .await
                .map_err(|_| LookupError::NotFound)?
                .map(|a| a.ip().to_canonical())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(LookupError::NotFound);
        }
        Ok(addrs)
    }
}

/// `None` when the sandbox names no servers (the node's resolver is used).
fn build(dns: &DnsConfig) -> Result<Option<TokioResolver>, String> {
    if dns.servers.is_empty() {
        return Ok(None);
    }
    let servers = dns
        .servers
        .iter()
        .map(|s| {
            IpAddr::from_str(s.trim())
                .map(NameServerConfig::udp_and_tcp)
                .map_err(|_| format!("DNS server {s:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let search = dns
        .searches
        .iter()
        .map(|s| Name::from_str(s).map_err(|e| format!("search domain {s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let config = ResolverConfig::from_parts(None, search, servers);
    let mut opts = ResolverOpts::default();
    for option in &dns.options {
        let (key, value) = option.split_once(':').unwrap_or((option, ""));
        match (key, value.parse::<u64>()) {
            ("ndots", Ok(n)) => opts.ndots = n as usize,
            ("timeout", Ok(n)) => opts.timeout = Duration::from_secs(n.max(1)),
            ("attempts", Ok(n)) => opts.attempts = n as usize,
            _ => {}
        }
    }
    TokioResolver::builder_with_config(config, Default::default())
        .with_options(opts)
        .build()
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_servers_fall_back_with_a_reason() {
        let dns = DnsConfig {
            servers: vec!["not-an-ip".into()],
            ..Default::default()
        };
        assert!(build(&dns).unwrap_err().contains("not-an-ip"));
        assert!(build(&DnsConfig::default()).unwrap().is_none());
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert!(build(&dns).unwrap().is_some());
    }
}
