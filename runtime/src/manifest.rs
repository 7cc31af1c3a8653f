//! Kubernetes `v1` Pod manifests (YAML) for the local runner, converted into core specs.
//!
//! Only the fields that mean something for a Wasm pod are modelled. Other fields are accepted
//! with a warning that names them; fields that promise what a Wasm pod cannot keep (host
//! namespaces, privileged mode, volume kinds wasmpod lacks) are refused with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::PullPolicy;
use crate::spec::{
    ContainerConfig, ContainerPort, HostPathKind, Medium, MountSource, MountSpec, PodConfig,
    PortMapping, Protocol, VolumeSource, VolumeSpec, DEFAULT_GRACE,
};

/// When a finished container is started again (`spec.restartPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that ended with `success` runs again.
    pub fn restarts(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

/// A parsed Pod, ready to run.
#[derive(Debug, Clone)]
pub struct PodManifest {
    pub pod: PodConfig,
    pub init_containers: Vec<ContainerConfig>,
    pub containers: Vec<ContainerConfig>,
    pub restart_policy: RestartPolicy,
    pub grace: Duration,
    /// Fields that were ignored, as `spec.containers[0].livenessProbe`.
    pub warnings: Vec<String>,
}

impl PodManifest {
    /// Reads and parses a manifest file; relative image paths are taken from its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("manifest {}", path.display()), e))?;
        let base = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        Self::parse(&text, &base).map_err(|e| e.context(path.display()))
    }

    /// Parses manifest text; `base` is the directory relative image paths are resolved from.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let mut warnings = Vec::new();
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawPod = serde_ignored::deserialize(de, |path| {
            warnings.push(path.to_string().replace(".?", ""))
        })
        .map_err(|e| Error::invalid(format!("malformed manifest: {e}")))?;
        raw.into_manifest(base, warnings)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPod {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: RawMeta,
    spec: Option<RawPodSpec>,
    // Present in manifests taken from a cluster; meaningless here.
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    #[serde(default)]
    containers: Vec<RawContainer>,
    #[serde(default)]
    init_containers: Vec<RawContainer>,
    #[serde(default)]
    volumes: Vec<RawVolume>,
    restart_policy: Option<String>,
    termination_grace_period_seconds: Option<i64>,
    hostname: Option<String>,
    #[serde(default)]
    host_network: bool,
    #[serde(default, rename = "hostPID")]
    host_pid: bool,
    #[serde(default, rename = "hostIPC")]
    host_ipc: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainer {
    name: String,
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<RawEnv>,
    working_dir: Option<String>,
    #[serde(default)]
    volume_mounts: Vec<RawVolumeMount>,
    resources: Option<RawResources>,
    security_context: Option<RawSecurityContext>,
    image_pull_policy: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    name: String,
    container_port: i64,
    host_port: Option<i64>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
    protocol: Option<String>,
}

impl RawPort {
    /// The container's view of the port, and its hostPort mapping when it has one.
    fn convert(self) -> Result<(ContainerPort, Option<PortMapping>)> {
        let port = |field: &str, v: i64| {
            u16::try_from(v)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::invalid(format!("{field}: {v} is not a port (1-65535)")))
        };
        let protocol = match self.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "protocol: {other:?} is not one of TCP, UDP, SCTP"
                )))
            }
        };
        let container_port = port("containerPort", self.container_port)?;
        let mapping = match self.host_port {
            None => None,
            Some(h) => Some(PortMapping {
                protocol,
                container_port,
                host_port: port("hostPort", h)?,
                host_ip: match self.host_ip.as_deref() {
                    None | Some("") => None,
                    Some(ip) => Some(ip.parse().map_err(|_| {
                        Error::invalid(format!("hostIP: {ip:?} is not an IP address"))
                    })?),
                },
            }),
        };
        Ok((
            ContainerPort {
                name: self.name,
                container_port,
                protocol,
            },
            mapping,
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnv {
    name: String,
    value: Option<String>,
    value_from: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVolumeMount {
    name: String,
    mount_path: String,
    #[serde(default)]
    read_only: bool,
    sub_path: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawResources {
    #[serde(default)]
    limits: BTreeMap<String, serde_yaml_ng::Value>,
    #[allow(dead_code)]
    requests: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecurityContext {
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    read_only_root_filesystem: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVolume {
    name: String,
    empty_dir: Option<RawEmptyDir>,
    host_path: Option<RawHostPath>,
    #[serde(flatten)]
    other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawEmptyDir {
    medium: Option<String>,
    size_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct RawHostPath {
    path: PathBuf,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl RawPod {
    fn into_manifest(self, base: &Path, warnings: Vec<String>) -> Result<PodManifest> {
        match (self.api_version.as_deref(), self.kind.as_deref()) {
            (Some("v1"), Some("Pod")) => {}
            (_, Some(kind)) if kind != "Pod" => {
                return Err(Error::invalid(format!(
                    "this manifest is a {kind}, not a Pod; wasmpod run takes a v1 Pod"
                )))
            }
            (v, k) => {
                return Err(Error::invalid(format!(
                    "expected apiVersion: v1 and kind: Pod, found apiVersion: {} and kind: {}",
                    v.unwrap_or("(none)"),
                    k.unwrap_or("(none)")
                )))
            }
        }
        let name = self
            .metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid("metadata.name is required"))?;
        check_dns_label("metadata.name", &name)?;
        let spec = self
            .spec
            .ok_or_else(|| Error::invalid("spec is required"))?;
        for (set, field) in [
            (spec.host_network, "hostNetwork"),
            (spec.host_pid, "hostPID"),
            (spec.host_ipc, "hostIPC"),
        ] {
            if set {
                return Err(Error::invalid(format!(
                    "spec.{field}: a Wasm pod has no host namespaces to share; remove {field}"
                )));
            }
        }
        if spec.containers.is_empty() {
            return Err(Error::invalid(
                "spec.containers: a pod needs at least one container",
            ));
        }
        let restart_policy = match spec.restart_policy.as_deref() {
            None | Some("Always") => RestartPolicy::Always,
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "spec.restartPolicy: {other:?} is not one of Always, OnFailure, Never"
                )))
            }
        };
        let grace = match spec.termination_grace_period_seconds {
            None => DEFAULT_GRACE,
            Some(s) if s >= 0 => Duration::from_secs(s as u64),
            Some(s) => {
                return Err(Error::invalid(format!(
                    "spec.terminationGracePeriodSeconds: {s} is negative"
                )))
            }
        };
        let volumes = spec
            .volumes
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.into_spec()
                    .map_err(|e| e.context(format!("spec.volumes[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut names = std::collections::HashSet::new();
        for v in &volumes {
            if !names.insert(v.name.as_str()) {
                return Err(Error::invalid(format!(
                    "spec.volumes: two volumes named {}",
                    v.name
                )));
            }
        }
        let mut port_mappings = Vec::new();
        let mut convert = |list: Vec<RawContainer>, field: &str| {
            list.into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let (config, mappings) = c
                        .into_config(base, &volumes)
                        .map_err(|e| e.context(format!("spec.{field}[{i}]")))?;
                    port_mappings.extend(mappings);
                    Ok(config)
                })
                .collect::<Result<Vec<_>>>()
        };
        let init_containers = convert(spec.init_containers, "initContainers")?;
        let containers = convert(spec.containers, "containers")?;
        let mut host_ports = std::collections::HashSet::new();
        for m in &port_mappings {
            if !host_ports.insert((m.host_ip, m.host_port, m.protocol)) {
                return Err(Error::invalid(format!(
                    "hostPort {} ({:?}) is declared twice",
                    m.host_port, m.protocol
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in init_containers.iter().chain(&containers) {
            if !seen.insert(c.name.clone()) {
                return Err(Error::invalid(format!("two containers named {}", c.name)));
            }
        }
        let pod = PodConfig {
            hostname: spec.hostname.unwrap_or_else(|| name.clone()),
            namespace: self.metadata.namespace.unwrap_or_else(|| "default".into()),
            uid: self.metadata.uid.unwrap_or_default(),
            attempt: 0,
            labels: self.metadata.labels,
            annotations: self.metadata.annotations,
            volumes,
            log_directory: None,
            dns: Default::default(),
            port_mappings,
            name,
        };
        Ok(PodManifest {
            pod,
            init_containers,
            containers,
            restart_policy,
            grace,
            warnings,
        })
    }
}

impl RawVolume {
    fn into_spec(self) -> Result<VolumeSpec> {
        check_dns_label("name", &self.name)?;
        let source = match (self.empty_dir, self.host_path) {
            (Some(e), None) if self.other.is_empty() => VolumeSource::EmptyDir {
                medium: match e.medium.as_deref() {
                    None | Some("") => Medium::Disk,
                    Some("Memory") => Medium::Memory,
                    Some(m) => {
                        return Err(Error::invalid(format!(
                            "emptyDir.medium {m:?} is not supported (use \"\" or Memory)"
                        )))
                    }
                },
                size_limit: e
                    .size_limit
                    .map(|q| parse_quantity(&q).map_err(|e| e.context("emptyDir.sizeLimit")))
                    .transpose()?,
            },
            (None, Some(h)) if self.other.is_empty() => VolumeSource::HostPath {
                path: h.path,
                kind: match h.kind.as_deref().unwrap_or("") {
                    "" => HostPathKind::Unchecked,
                    "Directory" => HostPathKind::Directory,
                    "DirectoryOrCreate" => HostPathKind::DirectoryOrCreate,
                    "File" => HostPathKind::File,
                    "FileOrCreate" => HostPathKind::FileOrCreate,
                    t => {
                        return Err(Error::invalid(format!(
                            "hostPath.type {t:?} is not supported (Directory, DirectoryOrCreate, File, FileOrCreate)"
                        )))
                    }
                },
            },
            (None, None) if self.other.is_empty() => {
                return Err(Error::invalid(format!("volume {} has no source", self.name)))
            }
            _ => {
                let kinds: Vec<_> = self.other.keys().map(String::as_str).collect();
                return Err(Error::invalid(format!(
                    "volume {}: only emptyDir and hostPath volumes are supported, found {}",
                    self.name,
                    if kinds.is_empty() { "several sources".to_owned() } else { kinds.join(", ") }
                )));
            }
        };
        Ok(VolumeSpec {
            name: self.name,
            source,
        })
    }
}

impl RawContainer {
    /// The container's config and the hostPort mappings it asks of the pod.
    fn into_config(
        self,
        base: &Path,
        volumes: &[VolumeSpec],
    ) -> Result<(ContainerConfig, Vec<PortMapping>)> {
        check_dns_label("name", &self.name)?;
        let ctx = |field: &str| format!("container {}: {field}", self.name);
        let mut ports = Vec::new();
        let mut mappings = Vec::new();
        for (i, p) in self.ports.into_iter().enumerate() {
            let (port, mapping) = p
                .convert()
                .map_err(|e| e.context(ctx(&format!("ports[{i}]"))))?;
            ports.push(port);
            mappings.extend(mapping);
        }
        if let Some(sc) = &self.security_context {
            if sc.privileged {
                return Err(Error::invalid(format!(
                    "{}: a Wasm container cannot be privileged; remove privileged: true",
                    ctx("securityContext.privileged")
                )));
            }
            let _ = sc.read_only_root_filesystem; // A Wasm guest has no root filesystem to write.
        }
        let image = self
            .image
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::invalid(format!("{} is required", ctx("image"))))?;
        let env = self
            .env
            .into_iter()
            .map(|e| match (e.value, e.value_from) {
                (_, Some(_)) => Err(Error::invalid(format!(
                    "{} uses valueFrom, which the local runner cannot resolve",
                    ctx(&format!("env {}", e.name))
                ))),
                (v, None) => Ok((e.name, v.unwrap_or_default())),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut mounts = Vec::new();
        let mut paths = std::collections::HashSet::new();
        for m in self.volume_mounts {
            if !volumes.iter().any(|v| v.name == m.name) {
                return Err(Error::invalid(format!(
                    "{} names volume {:?}, which spec.volumes does not define",
                    ctx("volumeMounts"),
                    m.name
                )));
            }
            let path = crate::volume::normalize_guest_path(&m.mount_path)
                .map_err(|e| e.context(ctx("volumeMounts")))?;
            if !paths.insert(path.clone()) {
                return Err(Error::invalid(format!(
                    "{}: two mounts on {path}",
                    ctx("volumeMounts")
                )));
            }
            mounts.push(MountSpec {
                source: MountSource::Volume {
                    name: m.name,
                    sub_path: m.sub_path,
                },
                container_path: path,
                read_only: m.read_only,
            });
        }
        let memory_limit = match self.resources.unwrap_or_default().limits.get("memory") {
            Some(q) => {
                Some(parse_quantity(q).map_err(|e| e.context(ctx("resources.limits.memory")))?)
            }
            None => None,
        };
        let pull_policy = match self.image_pull_policy.as_deref() {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            // Kubernetes' default: always for :latest or untagged images.
            None => {
                let last = image.rsplit('/').next().unwrap_or(&image);
                if image.contains('@') || last.contains(':') && !last.ends_with(":latest") {
                    PullPolicy::IfNotPresent
                } else {
                    PullPolicy::Always
                }
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{}: {other:?} is not one of Always, IfNotPresent, Never",
                    ctx("imagePullPolicy")
                )))
            }
        };
        let config = ContainerConfig {
            pull_policy,
            image: resolve_local_image(&image, base),
            command: self.command,
            args: self.args,
            env,
            working_dir: self.working_dir,
            mounts,
            memory_limit,
            name: self.name,
            ports,
            ..Default::default()
        };
        Ok((config, mappings))
    }
}

/// Makes a relative `.wasm` path absolute (as `file://…`) so it no longer depends on the cwd.
fn resolve_local_image(image: &str, base: &Path) -> String {
    let path = image.strip_prefix("file://").unwrap_or(image);
    let looks_local = image.starts_with("file://")
        || path.starts_with('/')
        || path.starts_with("./")
        || path.starts_with("../")
        || path.ends_with(".wasm");
    if !looks_local {
        return image.to_owned();
    }
    let path = Path::new(path);
    format!(
        "file://{}",
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }
        .display()
    )
}

fn check_dns_label(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} {name:?} must be a DNS label: lowercase letters, digits and '-', at most 63"
        )))
    }
}

/// Parses a Kubernetes quantity (`128Mi`, `1G`, `1.5Gi`, `4096`, `1e6`) into bytes.
pub fn parse_quantity(value: &serde_yaml_ng::Value) -> Result<u64> {
    let text = match value {
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::String(s) => s.trim().to_owned(),
        other => return Err(Error::invalid(format!("{other:?} is not a quantity"))),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (num, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => match s[1..].parse::<i32>() {
            Ok(exp) => 10f64.powi(exp),
            Err(_) => return Err(Error::invalid(format!("{text:?} is not a quantity"))),
        },
        _ => {
            return Err(Error::invalid(format!(
                "{text:?} is not a quantity (unknown suffix)"
            )))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| Error::invalid(format!("{text:?} is not a quantity")))?;
    let bytes = (n * multiplier).ceil();
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(Error::invalid(format!("{text:?} is out of range")));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn parse(text: &str) -> Result<PodManifest> {
        PodManifest::parse(text, Path::new("/base"))
    }

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: demo
  labels: {app: demo}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  volumes:
    - name: data
      emptyDir: {medium: Memory, sizeLimit: 64Mi}
    - name: host
      hostPath: {path: /tmp, type: Directory}
  initContainers:
    - name: init
      image: init.wasm
  containers:
    - name: app
      image: ../wasm/app.wasm
      command: [app]
      args: [a, b]
      env: [{name: A, value: "1"}, {name: EMPTY}]
      workingDir: /data
      livenessProbe: {exec: {command: [x]}}
      resources: {limits: {memory: 128Mi}}
      volumeMounts:
        - {name: data, mountPath: /data/}
        - {name: host, mountPath: /host, readOnly: true, subPath: sub}
"#;

    #[test]
    fn parses_a_full_pod() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.pod.name, "demo");
        assert_eq!(m.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(m.grace, Duration::from_secs(5));
        assert_eq!(
            m.pod.volumes[0].source,
            VolumeSource::EmptyDir {
                medium: Medium::Memory,
                size_limit: Some(64 << 20)
            }
        );
        assert_eq!(m.init_containers[0].image, "file:///base/init.wasm");
        let app = &m.containers[0];
        assert_eq!(app.image, "file:///base/../wasm/app.wasm");
        assert_eq!(
            app.env,
            [("A".into(), "1".into()), ("EMPTY".into(), String::new())]
        );
        assert_eq!(app.memory_limit, Some(128 << 20));
        assert_eq!(app.mounts[0].container_path, "/data");
        assert!(app.mounts[1].read_only);
        assert_eq!(m.warnings, ["spec.containers.0.livenessProbe"]);
    }

    #[test]
    fn reports_yaml_errors_with_position() {
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata: [\n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("line"), "{err}");
    }

    #[test]
    fn refuses_what_a_wasm_pod_cannot_do() {
        let cases = [
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {hostNetwork: true, containers: [{name: a, image: a.wasm}]}", "hostNetwork"),
            ("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}", "not a Pod"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: a, image: a.wasm, securityContext: {privileged: true}}]}", "privileged"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: a, image: a.wasm, volumeMounts: [{name: nope, mountPath: /x}]}]}", "\"nope\""),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: a, image: a.wasm, volumeMounts: [{name: v, mountPath: /x}, {name: v, mountPath: /x/}]}]}", "two mounts"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {volumes: [{name: v, configMap: {name: c}}], containers: [{name: a, image: a.wasm}]}", "configMap"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: a}]}", "image"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: []}", "at least one"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: a, image: a.wasm}, {name: a, image: b.wasm}]}", "two containers"),
            ("kind: Pod\napiVersion: v1\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: a, image: a.wasm}]}", "DNS label"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument);
            assert!(err.message.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn quantities() {
        let q = |s: &str| parse_quantity(&serde_yaml_ng::Value::String(s.into()));
        assert_eq!(q("128Mi").unwrap(), 128 << 20);
        assert_eq!(q("1G").unwrap(), 1_000_000_000);
        assert_eq!(q("1.5Ki").unwrap(), 1536);
        assert_eq!(q("1e3").unwrap(), 1000);
        assert_eq!(q("42").unwrap(), 42);
        assert!(q("12Qi").is_err());
        assert!(q("abc").is_err());
        assert_eq!(
            parse_quantity(&serde_yaml_ng::Value::Number(7.into())).unwrap(),
            7
        );
    }
}
