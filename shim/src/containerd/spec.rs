//! What a task is, read from its bundle's OCI runtime spec (`config.json`) and the
//! annotations containerd's CRI plugin puts there.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use wasmpod_runtime::spec::{
    ContainerConfig, HostNamespaces, MountSource, MountSpec, PodConfig, PodOwner,
};

/// `sandbox` on a pod's sandbox task, `container` on its containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// On a container: its pod's sandbox task id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// A bundle's spec is a few KiB; anything near this is not containerd's.
const MAX_SPEC: u64 = 4 << 20;

/// Reads `<bundle>/config.json` through a handle on the bundle (no link leads out of it).
pub fn read(bundle: &Path) -> anyhow::Result<Spec> {
    let dir = cap_std::fs::Dir::open_ambient_dir(bundle, cap_std::ambient_authority())
        .map_err(|e| anyhow::anyhow!("bundle {}: {e}", bundle.display()))?;
    let mut text = String::new();
    dir.open("config.json")
        .and_then(|f| f.take(MAX_SPEC).read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("{}/config.json: {e}", bundle.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}/config.json is not an OCI spec: {e}", bundle.display()))
}

/// The annotations of the spec.
pub fn annotations(spec: &Spec) -> BTreeMap<String, String> {
    spec.annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Whether the task is a pod's sandbox (containerd's pause container).
pub fn is_sandbox(spec: &Spec) -> bool {
    annotations(spec).get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox")
}

/// The pod a sandbox task (or a lone `ctr run` container, `id`) stands for. Its network is the
/// namespace the spec joins; a spec that makes a new one gets wasmpod's virtual network; one
/// with no network namespace at all asks for the node's, which a Wasm pod refuses.
pub fn pod_config(spec: &Spec, namespace: &str, id: &str) -> PodConfig {
    let a = annotations(spec);
    let network = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    PodConfig {
        name: a
            .get(SANDBOX_NAME)
            .cloned()
            .unwrap_or_else(|| id.to_owned()),
        namespace: a
            .get(SANDBOX_NAMESPACE)
            .cloned()
            .unwrap_or_else(|| namespace.to_owned()),
        // The task id, not the pod's uid: kubelet makes a new sandbox (a new task) for a pod
        // whose old one is not removed yet.
        uid: id.to_owned(),
        hostname: spec.hostname().clone().unwrap_or_default(),
        labels: a
            .get(SANDBOX_UID)
            .map(|u| ("io.kubernetes.pod.uid".to_owned(), u.clone()))
            .into_iter()
            .collect(),
        annotations: a,
        host_namespaces: HostNamespaces {
            network: network.is_none(),
            ..HostNamespaces::default()
        },
        netns: network.and_then(|n| n.path().clone()),
        owner: PodOwner::Containerd,
        ..PodConfig::default()
    }
}

/// The container a task's spec describes: the process's args, env and cwd, the bind mounts
/// (kubelet's volumes, /etc/hosts…; the kernel filesystems a Linux container gets have no
/// meaning to a Wasm guest), the root's writability, the memory limit.
pub fn container_config(spec: &Spec, id: &str, stdin: bool) -> anyhow::Result<ContainerConfig> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the spec has no process"))?;
    let ProcessParts {
        args: command,
        env,
        cwd: working_dir,
        terminal: tty,
    } = process_parts(process);
    if command.is_empty() {
        anyhow::bail!("the spec's process has no args");
    }
    let a = annotations(spec);
    let mounts = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        })
        .filter_map(|m| {
            Some(MountSpec {
                source: MountSource::Host(m.source().clone()?),
                container_path: m.destination().to_string_lossy().into_owned(),
                read_only: m.options().iter().flatten().any(|o| o == "ro"),
            })
        })
        .collect();
    let linux = spec.linux().as_ref();
    let memory_limit = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    Ok(ContainerConfig {
        // Unique per task: kubelet restarts a container under its old name before the old
        // task is removed.
        name: id.to_owned(),
        image: a
            .get("io.kubernetes.cri.image-name")
            .cloned()
            .unwrap_or_default(),
        command,
        env,
        working_dir,
        mounts,
        memory_limit,
        annotations: a.clone(),
        labels: a
            .get(CONTAINER_NAME)
            .map(|n| (CONTAINER_NAME.to_owned(), n.clone()))
            .into_iter()
            .collect(),
        stdin,
        tty,
        writable_rootfs: !spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
        ..ContainerConfig::default()
    })
}

/// What wasmpod takes of an OCI process (a task's or an exec's).
pub struct ProcessParts {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub terminal: bool,
}

pub fn process_parts(p: &Process) -> ProcessParts {
    let env = p
        .env()
        .iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    let cwd = p.cwd().to_string_lossy().into_owned();
    ProcessParts {
        args: p.args().clone().unwrap_or_default(),
        env,
        cwd: (!cwd.is_empty()).then_some(cwd),
        terminal: p.terminal().unwrap_or(false),
    }
}

/// The root filesystem directory: the spec's `root.path`, relative to the bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> PathBuf {
    let path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    bundle.join(path)
}
