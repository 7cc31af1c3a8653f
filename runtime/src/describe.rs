//! The verbose `info` of CRI status calls (`crictl inspect`, `inspectp`, `inspecti`, `info`):
//! JSON under the keys containerd uses, where they mean something for Wasm pods, so that
//! scripts written against containerd find what they look for (`.info.config`,
//! `.info.sandboxID`, `.info.runtimeHandler`, `.info.imageSpec`, …). Keys with no meaning here
//! (pids, snapshotters, OCI runtime specs) are left out rather than faked.

use serde_json::{json, Value};

use crate::container::Container;
use crate::engine::GuestKind;
use crate::image::ImageRecord;
use crate::pod::Pod;
use crate::runtime::Runtime;

/// The runtime handler wasmpod registers under (the RuntimeClass `handler`).
pub const RUNTIME_HANDLER: &str = "wasmpod";

/// A container: its effective configuration (the image's entrypoint, env and working dir
/// merged with the CRI config) and the program it runs.
pub fn container(c: &Container) -> Value {
    let mut info = json!({
        "sandboxID": c.pod_id,
        "runtimeHandler": RUNTIME_HANDLER,
        "image": c.image_ref,
        "logPath": c.log_path,
        // With the limits in force (UpdateContainerResources may have changed them).
        "config": c.record().config,
        "state": format!("{:?}", c.state()),
    });
    if let Some(p) = c.prepared() {
        let kind = match (p.program.kind(), p.program.is_http_handler()) {
            (_, true) => "wasi:http handler",
            (GuestKind::Preview1, _) => "WASI preview1 module",
            (GuestKind::Preview2, _) => "WASI preview2 component",
        };
        let preopens: Vec<Value> = p
            .fs
            .preopens
            .iter()
            .map(|m| json!({"containerPath": m.guest, "hostPath": m.host, "readonly": m.read_only}))
            .collect();
        info["effective"] = json!({
            "argv": p.argv,
            "env": p.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "workingDir": c.config.working_dir,
            "program": {"digest": p.program.digest(), "kind": kind},
            "preopens": preopens,
        });
    }
    info
}

/// A pod sandbox: its config (with the memory figures in force after an update), network
/// (mode, IP, hostPorts) and open-file account.
pub fn pod(rt: &Runtime, pod: &Pod) -> Value {
    json!({
        "runtimeHandler": RUNTIME_HANDLER,
        "config": pod.current_config(),
        "network": {
            "mode": format!("{:?}", rt.network().mode()).to_lowercase(),
            "ip": pod.ip(),
            "portMappings": pod.config.port_mappings,
        },
        "openFiles": pod.files.open(),
        "containers": pod.container_ids(),
    })
}

/// An image: its OCI config as wasmpod reads it, the Wasm packaging and the program digest.
pub fn image(rt: &Runtime, record: &ImageRecord) -> Value {
    json!({
        "imageSpec": {
            "config": record.run,
            "manifest": record.manifest_digest,
            "layers": record.layers,
        },
        "format": record.format,
        "wasm": record.wasm_digest,
        "precompiled": rt.engine().has_artifact(&record.wasm_digest),
    })
}

/// The runtime: its settings, as `crictl info` shows containerd's CRI config.
pub fn runtime(rt: &Runtime) -> Value {
    json!({
        "config": {
            "runtimeHandlers": [RUNTIME_HANDLER],
            "stateDir": rt.state_dir(),
            "network": {
                "mode": format!("{:?}", rt.network().mode()).to_lowercase(),
                "podCIDR": rt.network().pod_cidr().map(|c| c.to_string()),
                "ready": rt.network().ready(),
            },
            "wasmtime": "48",
        },
        "version": env!("CARGO_PKG_VERSION"),
        // What a leak would grow: checked by the tests around exec, attach and port-forward.
        "process": {
            "tasks": tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_alive_tasks())
                .ok(),
            "openFiles": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok(),
        },
    })
}
