//! What a task is, read from its bundle's OCI runtime spec (`config.json`) and the
//! annotations containerd's CRI plugin puts there.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use wasmpod_runtime::spec::{
    ContainerConfig, CriResources, HostNamespaces, MountSource, MountSpec, PodConfig, PodOwner,
    Resources,
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
/// meaning to a Wasm guest), the root's writability, the CPU and memory limits.
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
    let resources = match linux.and_then(|l| l.resources().as_ref()) {
        // Over the defaults, not `Resources::from_cri`: a quota without a period keeps the
        // default period, as runc leaves the cgroup's period alone.
        Some(r) => Resources::default().updated(cri_resources(r))?,
        None => Resources::default(),
    };
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
        memory_limit: resources.memory_limit,
        cpu: resources.cpu,
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

/// The CPU and memory figures of OCI `linux.resources` (a task's spec, or an update containerd
/// sends), in the CRI's terms, which share their meaning: unset is 0, -1 is no limit. Figures
/// too large for them become `i64::MAX`, which the runtime's bounds refuse.
pub fn cri_resources(r: &LinuxResources) -> CriResources {
    let cpu = r.cpu().as_ref();
    let signed = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
    CriResources {
        cpu_period: signed(cpu.and_then(|c| c.period())),
        cpu_quota: cpu.and_then(|c| c.quota()).unwrap_or(0),
        cpu_shares: signed(cpu.and_then(|c| c.shares())),
        memory_limit: r.memory().as_ref().and_then(|m| m.limit()).unwrap_or(0),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec as `ctr run --cpu-quota 20000 --cpu-shares 512 --memory-limit …` writes it.
    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/spin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"resources": resources},
        }))
        .unwrap()
    }

    #[test]
    fn cpu_and_memory_limits_come_from_the_spec() {
        let s = spec(serde_json::json!({
            "cpu": {"quota": 20000, "period": 50000, "shares": 512},
            "memory": {"limit": 33554432},
        }));
        let c = container_config(&s, "t1", false).unwrap();
        assert_eq!(c.cpu.cores(), Some(0.4));
        assert_eq!((c.cpu.shares, c.memory_limit), (512, Some(32 << 20)));
        // A quota alone keeps the default 100 ms period, as runc leaves the cgroup's.
        let c = container_config(
            &spec(serde_json::json!({"cpu": {"quota": 20000}})),
            "t",
            false,
        );
        assert_eq!(c.unwrap().cpu.cores(), Some(0.2));
        // ctr's defaults: quota -1 and period 0 are no limit.
        let c = container_config(
            &spec(serde_json::json!({"cpu": {"quota": -1, "period": 0}, "memory": {"limit": -1}})),
            "t",
            false,
        )
        .unwrap();
        assert_eq!((c.cpu, c.memory_limit), (Default::default(), None));
    }

    #[test]
    fn bad_figures_are_the_runtimes_errors() {
        for bad in [
            serde_json::json!({"cpu": {"quota": 500}}),
            serde_json::json!({"cpu": {"period": 999}}),
            serde_json::json!({"cpu": {"shares": 300000}}),
            serde_json::json!({"cpu": {"shares": u64::MAX}}),
            serde_json::json!({"memory": {"limit": -2}}),
        ] {
            let e = container_config(&spec(bad.clone()), "t", false).unwrap_err();
            let e = e.downcast::<wasmpod_runtime::error::Error>().unwrap();
            assert_eq!(
                e.kind,
                wasmpod_runtime::error::ErrorKind::InvalidArgument,
                "{bad}: {e}"
            );
        }
    }
}
