//! CRI stats and metrics from the runtime's [`ContainerStats`] and [`PodStats`]: conversion
//! only. Metric names, types and labels are cAdvisor's, as kubelet's `/metrics/cadvisor`
//! shows them; every metric described is sent with a real figure, block I/O's excepted (see
//! [`METRICS`]).

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use wasmpod_runtime::container::{Container, MAX_GUESTS};
use wasmpod_runtime::pod::Pod;
use wasmpod_runtime::stats::{ContainerStats, Disk, PodStats};

use super::convert::{self, nanos};

/// The name the pod's network interface has in stats (the pod's `eth0`).
pub const INTERFACE: &str = "eth0";

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn filesystem(d: &Disk, at: SystemTime) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: nanos(at),
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: d.dir.display().to_string(),
        }),
        used_bytes: value(d.usage.bytes),
        inodes_used: value(d.usage.inodes),
    }
}

/// Page faults: all of them, and the major ones.
type Faults = (u64, u64);

fn faults(s: &ContainerStats) -> Faults {
    let cpu = &s.cpu_stat;
    (cpu.minor_faults + cpu.major_faults, cpu.major_faults)
}

fn memory(m: &wasmpod_runtime::stats::Memory, faults: Faults, at: SystemTime) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: nanos(at),
        working_set_bytes: value(m.working_set()),
        usage_bytes: value(m.working_set()),
        rss_bytes: value(m.linear),
        page_faults: value(faults.0),
        major_page_faults: value(faults.1),
        ..Default::default()
    }
}

fn cpu(used: std::time::Duration, nano_cores: u64, at: SystemTime) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: nanos(at),
        usage_core_nano_seconds: value(used.as_nanos() as u64),
        usage_nano_cores: value(nano_cores),
    }
}

pub fn container_stats(c: &Container, s: &ContainerStats) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: c.config.name.clone(),
                attempt: c.config.attempt,
            }),
            labels: c.config.labels.clone().into_iter().collect(),
            annotations: c.config.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(s.cpu, s.nano_cores, s.at)),
        memory: Some(memory(&s.memory, faults(s), s.at)),
        writable_layer: Some(filesystem(&s.writable, s.at)),
        swap: None,
    }
}

pub fn pod_stats(pod: &Pod, s: &PodStats) -> cri::PodSandboxStats {
    let t = &s.traffic;
    let eth0 = cri::NetworkInterfaceUsage {
        name: INTERFACE.into(),
        rx_bytes: value(t.rx_bytes),
        rx_errors: value(t.rx_errors),
        tx_bytes: value(t.tx_bytes),
        tx_errors: value(t.tx_errors),
    };
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(convert::pod_metadata(pod)),
            labels: pod.config.labels.clone().into_iter().collect(),
            annotations: pod.config.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(s.cpu, s.nano_cores, s.at)),
            memory: Some(memory(
                &s.memory,
                s.containers
                    .iter()
                    .map(|(_, c)| faults(c))
                    .fold((0, 0), |a, f| (a.0 + f.0, a.1 + f.1)),
                s.at,
            )),
            network: Some(cri::NetworkUsage {
                timestamp: nanos(s.at),
                default_interface: Some(eth0.clone()),
                interfaces: vec![eth0],
            }),
            process: Some(cri::ProcessUsage {
                timestamp: nanos(s.at),
                process_count: value(s.containers.iter().map(|(_, c)| c.guests).sum()),
            }),
            containers: s
                .containers
                .iter()
                .map(|(c, cs)| container_stats(c, cs))
                .collect(),
        }),
        windows: None,
    }
}

/// Which labels a metric has, after cAdvisor's `container, id, image, name, namespace, pod`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    /// `device`: the filesystem (its directory).
    Device,
    /// `interface`: the pod's network interface.
    Interface,
    /// `failure_type` (`pgfault`, `pgmajfault`) and `scope` (`container`, `hierarchy`).
    Failure,
    /// `device`, `major`, `minor`, `operation` of a block device.
    Blkio,
}

impl Extra {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Extra::None => &[],
            Extra::Device => &["device"],
            Extra::Interface => &["interface"],
            Extra::Failure => &["failure_type", "scope"],
            Extra::Blkio => &["device", "major", "minor", "operation"],
        }
    }
}

use cri::MetricType::{Counter, Gauge};

/// The metrics wasmpod describes: name, help, type, extra labels. Each is sent with a real
/// figure, except the block I/O ones: guests' file I/O goes through the daemon, whose block
/// devices' counters cannot be told apart per guest, so those are described (as cAdvisor
/// describes them on a machine without blkio accounting) and sent without values.
const METRICS: &[(&str, &str, cri::MetricType, Extra)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
        Extra::None,
    ),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds (guest code and the host's own work for it).",
        Counter,
        Extra::None,
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds (the kernel's part of the guests' polls).",
        Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals (in which the guests ran, while a quota is set).",
        Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Counter,
        Extra::None,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes (the guests' linear memory and tables).",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory (the program's mapped code; file data the guests \
         read or write is the node's page cache).",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes (the program's compiled code).",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes (the host's tables for the guests).",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes (sent while the daemon has nothing swapped out).",
        Gauge,
        Extra::None,
    ),
    (
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        Counter,
        Extra::None,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults taken by the guests' polls).",
        Counter,
        Extra::Failure,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container; in a pod's own series, its containers' together \
         (0: none).",
        Gauge,
        Extra::None,
    ),
    (
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container (memory and swap together: the memory limit).",
        Gauge,
        Extra::None,
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        Gauge,
        Extra::None,
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        Gauge,
        Extra::None,
    ),
    (
        "container_processes",
        "Number of processes running inside the container (its guests and execs).",
        Gauge,
        Extra::None,
    ),
    (
        "container_threads",
        "Number of threads running inside the container (a Wasm guest is one thread).",
        Gauge,
        Extra::None,
    ),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container (guests and execs at once).",
        Gauge,
        Extra::None,
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        Counter,
        Extra::None,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
        Extra::None,
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        Gauge,
        Extra::None,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        Extra::Device,
    ),
    (
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        Gauge,
        Extra::Device,
    ),
    (
        "container_fs_inodes_total",
        "Number of Inodes",
        Gauge,
        Extra::Device,
    ),
    (
        "container_fs_inodes_free",
        "Number of available Inodes",
        Gauge,
        Extra::Device,
    ),
    (
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read (not measured per guest: no values).",
        Counter,
        Extra::Device,
    ),
    (
        "container_fs_reads_total",
        "Cumulative count of reads completed (not measured per guest: no values).",
        Counter,
        Extra::Device,
    ),
    (
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written (not measured per guest: no values).",
        Counter,
        Extra::Device,
    ),
    (
        "container_fs_writes_total",
        "Cumulative count of writes completed (not measured per guest: no values).",
        Counter,
        Extra::Device,
    ),
    (
        "container_blkio_device_usage_total",
        "Blkio device bytes usage (not measured per guest: no values).",
        Counter,
        Extra::Blkio,
    ),
    (
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        Gauge,
        Extra::None,
    ),
    (
        "container_sockets",
        "Number of open sockets for the container.",
        Gauge,
        Extra::None,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving (the pod network drops none).",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting (refused sends included)",
        Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting (the pod network drops none: \
         a send it refuses fails to the guest, counted as an error).",
        Counter,
        Extra::Interface,
    ),
];

/// The pod network drops no packet: every one received is handed to the guest reading its
/// socket, every one sent reaches the host socket or fails to the guest (see [`Traffic`]).
///
/// [`Traffic`]: wasmpod_runtime::network::Traffic
const DROPPED: u64 = 0;

fn label_keys(extra: Extra) -> Vec<String> {
    let mut keys: Vec<&str> = ["container", "id", "image", "name", "namespace", "pod"].into();
    keys.extend(extra.keys());
    keys.sort();
    keys.into_iter().map(String::from).collect()
}

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|&(name, help, _, extra)| cri::MetricDescriptor {
            name: name.into(),
            help: help.into(),
            label_keys: label_keys(extra),
        })
        .collect()
}

/// Who a set of metrics is about: the label values shared by all its metrics.
struct Subject<'a> {
    container: &'a str,
    id: &'a str,
    image: &'a str,
    pod: &'a Pod,
}

impl Subject<'_> {
    /// A metric named in [`METRICS`] without extra labels.
    fn metric(&self, name: &str, v: u64) -> cri::Metric {
        self.labelled(name, &[], v)
    }

    /// A metric named in [`METRICS`], its extra labels' values in the order of
    /// [`Extra::keys`], all values in the sorted order of its label keys.
    fn labelled(&self, name: &str, extra_values: &[&str], v: u64) -> cri::Metric {
        let &(_, _, kind, extra) = METRICS
            .iter()
            .find(|m| m.0 == name)
            .expect("every metric sent is described");
        debug_assert_eq!(extra.keys().len(), extra_values.len(), "{name}");
        let label_values = label_keys(extra)
            .iter()
            .map(|key| match key.as_str() {
                "container" | "name" => self.container,
                "id" => self.id,
                "image" => self.image,
                "namespace" => &self.pod.config.namespace,
                "pod" => &self.pod.config.name,
                other => extra
                    .keys()
                    .iter()
                    .position(|k| *k == other)
                    .map_or("", |i| extra_values[i]),
            })
            .map(String::from)
            .collect();
        cri::Metric {
            name: name.into(),
            timestamp: 0,
            metric_type: kind.into(),
            label_values,
            value: value(v),
        }
    }
}

fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn fs_metrics(who: &Subject, d: &Disk) -> Vec<cri::Metric> {
    let device = d.dir.display().to_string();
    let device = [device.as_str()];
    let mut m = vec![who.labelled("container_fs_usage_bytes", &device, d.usage.bytes)];
    if let Some(cap) = d.capacity {
        m.push(who.labelled("container_fs_limit_bytes", &device, cap.bytes));
        m.push(who.labelled("container_fs_inodes_total", &device, cap.inodes));
        m.push(who.labelled("container_fs_inodes_free", &device, cap.inodes_free));
    }
    m
}

fn container_metrics(pod: &Pod, c: &Container, s: &ContainerStats) -> cri::ContainerMetrics {
    let who = Subject {
        container: &c.config.name,
        id: &c.id,
        image: &c.image_ref,
        pod,
    };
    let (cpu, mem) = (&s.cpu_stat, &s.memory_stat);
    let limit = s.limits.memory_limit.unwrap_or(0);
    let mut m = vec![
        who.metric("container_cpu_usage_seconds_total", s.cpu.as_secs()),
        who.metric(
            "container_cpu_user_seconds_total",
            s.cpu.saturating_sub(cpu.system).as_secs(),
        ),
        who.metric("container_cpu_system_seconds_total", cpu.system.as_secs()),
        who.metric("container_cpu_cfs_periods_total", cpu.periods),
        who.metric(
            "container_cpu_cfs_throttled_periods_total",
            cpu.throttled_periods,
        ),
        who.metric(
            "container_cpu_cfs_throttled_seconds_total",
            cpu.throttled.as_secs(),
        ),
        who.metric("container_memory_working_set_bytes", s.memory.working_set()),
        who.metric("container_memory_usage_bytes", s.memory.working_set()),
        who.metric(
            "container_memory_max_usage_bytes",
            (mem.peak + s.memory.code).max(s.memory.working_set()),
        ),
        who.metric("container_memory_rss", s.memory.linear),
        who.metric("container_memory_cache", s.memory.code),
        who.metric("container_memory_mapped_file", s.memory.code),
        who.metric("container_memory_kernel_usage", mem.tables),
        who.metric("container_memory_failcnt", mem.failcnt),
        who.metric("container_spec_memory_limit_bytes", limit),
        who.metric("container_spec_memory_swap_limit_bytes", limit),
        who.metric("container_spec_cpu_period", s.limits.cpu.period_us),
        who.metric("container_spec_cpu_shares", s.limits.cpu.shares),
        who.metric("container_processes", s.guests),
        who.metric("container_threads", s.guests),
        who.metric("container_threads_max", MAX_GUESTS),
        who.metric("container_oom_events_total", u64::from(s.oom_killed)),
        who.metric("container_last_seen", epoch_seconds(s.at)),
    ];
    let faults = [
        ("pgfault", cpu.minor_faults + cpu.major_faults),
        ("pgmajfault", cpu.major_faults),
    ];
    for (kind, n) in faults {
        for scope in ["container", "hierarchy"] {
            m.push(who.labelled("container_memory_failures_total", &[kind, scope], n));
        }
    }
    if let Some(swap) = s.swap {
        m.push(who.metric("container_memory_swap", swap));
    }
    if let Some(started) = s.started_at {
        m.push(who.metric("container_start_time_seconds", epoch_seconds(started)));
    }
    m.extend(fs_metrics(&who, &s.writable));
    cri::ContainerMetrics {
        container_id: c.id.clone(),
        metrics: m,
    }
}

/// A pod's metrics: its own (network, files, sockets, ephemeral storage, the memory limit
/// of its containers together; `container` is empty, as cAdvisor labels a pod's cgroup) and
/// each container's.
pub fn pod_metrics(pod: &Pod, s: &PodStats) -> cri::PodSandboxMetrics {
    let who = Subject {
        container: "",
        id: &pod.id,
        image: "",
        pod,
    };
    let t = &s.traffic;
    let net = |name: &str, v: u64| who.labelled(name, &[INTERFACE], v);
    let mut metrics = vec![
        net("container_network_receive_bytes_total", t.rx_bytes),
        net("container_network_receive_packets_total", t.rx_packets),
        net("container_network_receive_errors_total", t.rx_errors),
        net("container_network_receive_packets_dropped_total", DROPPED),
        net("container_network_transmit_bytes_total", t.tx_bytes),
        net("container_network_transmit_packets_total", t.tx_packets),
        net("container_network_transmit_errors_total", t.tx_errors),
        net("container_network_transmit_packets_dropped_total", DROPPED),
        who.metric("container_file_descriptors", s.open_files),
        who.metric("container_sockets", s.open_sockets),
        who.metric(
            "container_spec_memory_limit_bytes",
            pod.memory.limit().unwrap_or(0),
        ),
    ];
    metrics.extend(fs_metrics(&who, &s.ephemeral));
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics,
        container_metrics: s
            .containers
            .iter()
            .map(|(c, cs)| container_metrics(pod, c, cs))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_and_labelled() {
        let d = descriptors();
        let mut names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        let net = d
            .iter()
            .find(|d| d.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(
            net.label_keys,
            [
                "container",
                "id",
                "image",
                "interface",
                "name",
                "namespace",
                "pod"
            ]
        );
    }
}
