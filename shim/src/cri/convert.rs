//! Conversions between CRI messages and core types, and core errors as gRPC statuses.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use tonic::Status;
use wasmpod_runtime::container::{Container, ContainerState};
use wasmpod_runtime::error::{Error, ErrorKind};
use wasmpod_runtime::pod::{Pod, PodState};
use wasmpod_runtime::spec::{
    ContainerConfig, ContainerPort, CriResources, DnsConfig, HostNamespaces, MountSource,
    MountSpec, PodConfig, PodMemoryConfig, PortMapping, Protocol, Resources,
};

/// The one place core errors become gRPC statuses.
pub fn status(e: Error) -> Status {
    let message = e.message;
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(message),
        ErrorKind::Unimplemented => Status::unimplemented(message),
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

pub fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn map(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn required<'a>(what: &str, v: &'a str) -> Result<&'a str, Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(v)
    }
}

pub fn pod_config(c: cri::PodSandboxConfig) -> Result<PodConfig, Status> {
    let meta = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    required("metadata.name", &meta.name)?;
    required("metadata.namespace", &meta.namespace)?;
    let dns = c.dns_config.map(|d| DnsConfig {
        servers: d.servers,
        searches: d.searches,
        options: d.options,
    });
    Ok(PodConfig {
        hostname: if c.hostname.is_empty() {
            meta.name.clone()
        } else {
            c.hostname
        },
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        attempt: meta.attempt,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        volumes: Vec::new(),
        log_directory: (!c.log_directory.is_empty()).then(|| PathBuf::from(c.log_directory)),
        dns: dns.unwrap_or_default(),
        port_mappings: c
            .port_mappings
            .iter()
            .map(port_mapping)
            .collect::<Result<_, _>>()?,
        host_namespaces: host_namespaces(c.linux.as_ref()),
        memory: pod_memory(c.linux.as_ref())?,
        ..PodConfig::default()
    })
}

/// Which node namespaces the sandbox asks for (NamespaceMode NODE); the core decides.
fn host_namespaces(linux: Option<&cri::LinuxPodSandboxConfig>) -> HostNamespaces {
    let ns = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let node = |mode: i32| mode == cri::NamespaceMode::Node as i32;
    HostNamespaces {
        network: ns.is_some_and(|n| node(n.network)),
        pid: ns.is_some_and(|n| node(n.pid)),
        ipc: ns.is_some_and(|n| node(n.ipc)),
    }
}

/// The pod's memory limit and overhead kubelet passes; the core counts them.
fn pod_memory(linux: Option<&cri::LinuxPodSandboxConfig>) -> Result<PodMemoryConfig, Status> {
    let memory =
        |r: Option<&cri::LinuxContainerResources>| r.map_or(0, |r| r.memory_limit_in_bytes);
    PodMemoryConfig::from_cri(
        memory(linux.and_then(|l| l.resources.as_ref())),
        memory(linux.and_then(|l| l.overhead.as_ref())),
    )
    .map_err(|e| status(e.context("linux")))
}

/// kubelet passes a container's declared ports only in this annotation (JSON, the Pod's
/// `ports`); a wasi:http handler is served on the first TCP one.
const KUBELET_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

fn container_ports(annotations: &HashMap<String, String>) -> Result<Vec<ContainerPort>, Status> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct KubeletPort {
        #[serde(default)]
        name: String,
        container_port: u16,
        #[serde(default)]
        protocol: Option<String>,
    }
    let Some(json) = annotations.get(KUBELET_PORTS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let ports: Vec<KubeletPort> = serde_json::from_str(json).map_err(|e| {
        Status::invalid_argument(format!("annotation {KUBELET_PORTS_ANNOTATION}: {e}"))
    })?;
    ports
        .into_iter()
        .map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "annotation {KUBELET_PORTS_ANNOTATION}: unknown protocol {other:?}"
                    )))
                }
            };
            Ok(ContainerPort {
                name: p.name,
                container_port: p.container_port,
                protocol,
            })
        })
        .collect()
}

/// A CRI hostPort mapping; mappings without a host port only document the container's port.
fn port_mapping(m: &cri::PortMapping) -> Result<PortMapping, Status> {
    let port = |field: &str, v: i32| {
        u16::try_from(v).map_err(|_| {
            Status::invalid_argument(format!("port_mappings.{field}: {v} is not a port"))
        })
    };
    let protocol = match cri::Protocol::try_from(m.protocol) {
        Ok(cri::Protocol::Tcp) => Protocol::Tcp,
        Ok(cri::Protocol::Udp) => Protocol::Udp,
        Ok(cri::Protocol::Sctp) => Protocol::Sctp,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "port_mappings.protocol: {} is not TCP, UDP or SCTP",
                m.protocol
            )))
        }
    };
    let host_ip = match m.host_ip.as_str() {
        "" => None,
        ip => Some(ip.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "port_mappings.host_ip: {ip:?} is not an IP address"
            ))
        })?),
    };
    Ok(PortMapping {
        protocol,
        container_port: port("container_port", m.container_port)?,
        host_port: port("host_port", m.host_port)?,
        host_ip,
    })
}

pub fn container_config(c: cri::ContainerConfig) -> Result<ContainerConfig, Status> {
    let meta = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    required("metadata.name", &meta.name)?;
    let image = c
        .image
        .ok_or_else(|| Status::invalid_argument("config.image is required"))?;
    required("image.image", &image.image)?;
    let mut mounts = Vec::new();
    for m in c.mounts {
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(Status::unimplemented(
                "image volumes (a mount of an image) are not supported by wasmpod yet",
            ));
        }
        required("mount.container_path", &m.container_path)?;
        required("mount.host_path", &m.host_path)?;
        // wasmpod's read-only mounts are recursive (a WASI preopen has one permission for its
        // whole tree); the CRI's rules for asking so explicitly are kept all the same.
        if m.recursive_read_only
            && (!m.readonly || m.propagation != cri::MountPropagation::PropagationPrivate as i32)
        {
            return Err(Status::invalid_argument(format!(
                "mount {}: recursive_read_only needs readonly and private propagation",
                m.container_path
            )));
        }
        mounts.push(MountSpec {
            source: MountSource::Host(PathBuf::from(m.host_path)),
            container_path: m.container_path,
            read_only: m.readonly,
        });
    }
    let security = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    // A Wasm guest has no uid or gid to run as; the request must still be one kubelet could
    // have made.
    if security.is_some_and(|s| {
        s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty()
    }) {
        return Err(Status::invalid_argument(
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    let readonly_rootfs = security.is_some_and(|s| s.readonly_rootfs);
    let readonly_paths = security
        .map(|s| s.readonly_paths.clone())
        .unwrap_or_default();
    let resources = c.linux.and_then(|l| l.resources).unwrap_or_default();
    let resources = Resources::from_cri(cri_resources(&resources)).map_err(status)?;
    Ok(ContainerConfig {
        name: meta.name,
        attempt: meta.attempt,
        image: image.image,
        user_specified_image: image.user_specified_image,
        pull_policy: Default::default(),
        command: c.command,
        args: c.args,
        env: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        working_dir: (!c.working_dir.is_empty()).then_some(c.working_dir),
        mounts,
        memory_limit: resources.memory_limit,
        cpu: resources.cpu,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        log_path: (!c.log_path.is_empty()).then(|| PathBuf::from(c.log_path)),
        ports: container_ports(&c.annotations)?,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        writable_rootfs: !readonly_rootfs,
        readonly_paths,
    })
}

pub fn pod_metadata(p: &Pod) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: p.config.name.clone(),
        uid: p.config.uid.clone(),
        namespace: p.config.namespace.clone(),
        attempt: p.config.attempt,
    }
}

pub fn pod_state(p: &Pod) -> i32 {
    match p.state() {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn pod_sandbox(p: &Pod) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p),
        created_at: nanos(p.created_at),
        labels: hash(&p.config.labels),
        annotations: hash(&p.config.annotations),
        runtime_handler: String::new(),
    }
}

pub fn pod_status(p: &Pod) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p),
        created_at: nanos(p.created_at),
        network: Some(cri::PodSandboxNetworkStatus {
            ip: p.ip().map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: Vec::new(),
        }),
        linux: None,
        labels: hash(&p.config.labels),
        annotations: hash(&p.config.annotations),
        runtime_handler: String::new(),
    }
}

pub fn container_state(c: &Container) -> i32 {
    c.with_state(state_code)
}

fn state_code(state: &ContainerState) -> i32 {
    match state {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running { .. } => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited { .. } => cri::ContainerState::ContainerExited as i32,
    }
}

fn container_metadata(c: &Container) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.config.name.clone(),
        attempt: c.config.attempt,
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.config.image.clone(),
        user_specified_image: c.config.user_specified_image.clone(),
        ..Default::default()
    }
}

pub fn container(c: &Container) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        state: container_state(c),
        created_at: nanos(c.created_at),
        labels: hash(&c.config.labels),
        annotations: hash(&c.config.annotations),
        image_id: c.image_ref.clone(),
    }
}

pub fn container_status(c: &Container) -> cri::ContainerStatus {
    container_status_in(c, c.state())
}

/// The status of `c` as it was in `state` (an event's).
pub fn container_status_in(c: &Container, state: ContainerState) -> cri::ContainerStatus {
    let code = state_code(&state);
    let (started_at, finished_at, exit) = match state {
        ContainerState::Created => (0, 0, None),
        ContainerState::Running { started_at } => (nanos(started_at), 0, None),
        ContainerState::Exited {
            started_at,
            finished_at,
            exit,
        } => (started_at.map_or(0, nanos), nanos(finished_at), Some(exit)),
    };
    let mounts = c
        .config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: match &m.source {
                MountSource::Host(p) => p.display().to_string(),
                MountSource::Volume { name, .. } => name.clone(),
            },
            readonly: m.read_only,
            ..Default::default()
        })
        .collect();
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: code,
        created_at: nanos(c.created_at),
        started_at,
        finished_at,
        exit_code: exit.as_ref().map_or(0, |e| e.code),
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: exit
            .as_ref()
            .map_or(String::new(), |e| e.reason.as_str().to_owned()),
        message: exit.map_or(String::new(), |e| e.message),
        labels: hash(&c.config.labels),
        annotations: hash(&c.config.annotations),
        mounts,
        log_path: c
            .log_path
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
        resources: Some(container_resources(c.resources())),
        image_id: c.image_ref.clone(),
        user: None,
    }
}

/// The CPU and memory figures of a CRI request (the rest have no meaning for a Wasm guest).
pub fn cri_resources(r: &cri::LinuxContainerResources) -> CriResources {
    CriResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit: r.memory_limit_in_bytes,
    }
}

/// A container's limits in force, for its status.
pub fn container_resources(r: Resources) -> cri::ContainerResources {
    let r = r.to_cri();
    cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit,
            ..Default::default()
        }),
        windows: None,
    }
}

/// Whether `labels` carry every pair of `selector`.
pub fn matches(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A label selector's keys and values must be valid label text.
pub fn check_selector(selector: &HashMap<String, String>) -> Result<(), Status> {
    for (k, v) in selector {
        let ok_key = !k.is_empty()
            && k.len() <= 317
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        let ok_value = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok_key || !ok_value {
            return Err(Status::invalid_argument(format!(
                "invalid label selector {k:?}={v:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod fuzz {
    //! Whatever bytes a client sends, decoding and conversion answer with a value or a status,
    //! never a panic.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9-]{1,12}",
            "(/|\\.\\./|[a-z]{1,4}/){0,6}[a-z.]{0,5}",
            any::<String>(),
        ]
    }

    prop_compose! {
        fn container_request()(
            name in text(), image in text(), attempt in any::<u32>(),
            paths in prop::collection::vec((text(), text(), any::<bool>()), 0..4),
            env in prop::collection::vec((text(), text()), 0..4),
            log_path in text(), working_dir in text(), memory in any::<i64>(),
            with_meta in any::<bool>(), with_image in any::<bool>(),
        ) -> cri::ContainerConfig {
            cri::ContainerConfig {
                metadata: with_meta.then_some(cri::ContainerMetadata { name, attempt }),
                image: with_image.then(|| cri::ImageSpec { image, ..Default::default() }),
                mounts: paths.into_iter().map(|(h, c, ro)| cri::Mount { host_path: h, container_path: c, readonly: ro, ..Default::default() }).collect(),
                envs: env.into_iter().map(|(key, value)| cri::KeyValue { key, value }).collect(),
                log_path,
                working_dir,
                linux: Some(cri::LinuxContainerConfig {
                    resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: memory, ..Default::default() }),
                    security_context: None,
                }),
                ..Default::default()
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = cri::CreateContainerRequest::decode(bytes.as_slice()) {
                if let Some(c) = req.config { let _ = container_config(c); }
            }
            if let Ok(req) = cri::RunPodSandboxRequest::decode(bytes.as_slice()) {
                if let Some(c) = req.config { let _ = pod_config(c); }
            }
        }

        #[test]
        fn structured_container_configs_never_panic(c in container_request()) {
            let had_name = c.metadata.as_ref().is_some_and(|m| !m.name.is_empty());
            match container_config(c) {
                Ok(config) => prop_assert!(had_name && !config.image.is_empty()),
                Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
            }
        }

        #[test]
        fn selectors_are_checked_not_trusted(k in any::<String>(), v in any::<String>()) {
            let selector = HashMap::from([(k, v)]);
            let _ = check_selector(&selector);
        }
    }
}
