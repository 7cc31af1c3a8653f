//! Kubernetes `v1` Pod manifests (YAML) for the local runner, converted into core specs.
//!
//! Only the fields that mean something for a Wasm pod are modelled. Other fields Kubernetes
//! defines are accepted with a warning that names them; fields that promise what a Wasm pod
//! cannot keep (host namespaces, privileged mode, volume kinds wasmpod lacks) are refused with
//! the reason. A field Kubernetes does not define is an error, as `kubectl apply` makes it: it is
//! most often a typo (`comand:`) that would otherwise run the pod without what it asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::PullPolicy;
use crate::spec::{
    ContainerConfig, ContainerPort, CpuLimits, HostNamespaces, HostPathKind, Medium, MountSource,
    MountSpec, PodConfig, PortMapping, Protocol, VolumeSource, VolumeSpec, DEFAULT_GRACE,
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
    /// Fields that were ignored, each a message starting with its path, as
    /// `spec.containers[0].livenessProbe`.
    pub warnings: Vec<String>,
}

/// What the parser does with a field Kubernetes does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// Refuse the manifest, as `kubectl apply` does: the field is most likely a typo.
    #[default]
    Error,
    /// Ignore the field with a warning (`wasmpod run --warn-unknown-fields`).
    Warn,
}

impl PodManifest {
    /// Reads and parses a manifest file; relative image paths are taken from its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, UnknownFields::Error)
    }

    /// [`PodManifest::from_file`] with a choice of what unknown fields do.
    pub fn from_file_with(path: &Path, unknown: UnknownFields) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("manifest {}", path.display()), e))?;
        let base = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        Self::parse_with(&text, &base, unknown).map_err(|e| e.context(path.display()))
    }

    /// Parses manifest text; `base` is the directory relative image paths are resolved from.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        Self::parse_with(text, base, UnknownFields::Error)
    }

    /// [`PodManifest::parse`] with a choice of what unknown fields do.
    pub fn parse_with(text: &str, base: &Path, unknown: UnknownFields) -> Result<Self> {
        let mut ignored = Vec::new();
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: std::result::Result<RawPod, _> =
            serde_ignored::deserialize(de, |path| ignored.push(FieldPath::from(&path)));
        let mut warnings = Vec::new();
        let mut typos = Vec::new();
        for path in ignored {
            match path.classify() {
                Field::Ignored => {
                    warnings.push(format!("{path}: ignored, wasmpod does not use it"))
                }
                Field::Refused(why) => return Err(Error::invalid(format!("{path}: {why}"))),
                Field::Unknown if unknown == UnknownFields::Warn => warnings.push(format!(
                    "{path}: ignored unknown field{}",
                    path.suggestion()
                )),
                Field::Unknown => typos.push(path),
            }
        }
        // A typo often makes the document malformed too (`nmae:` leaves `name` missing): name
        // the typo either way, it is the cause.
        let typos = (!typos.is_empty()).then(|| unknown_fields_message(&typos));
        match (raw, typos) {
            (Ok(raw), None) => raw.into_manifest(base, warnings),
            (Ok(_), Some(typos)) => Err(Error::invalid(typos)),
            (Err(e), None) => Err(Error::invalid(format!("malformed manifest: {e}"))),
            (Err(e), Some(typos)) => {
                Err(Error::invalid(format!("{typos}; malformed manifest: {e}")))
            }
        }
    }
}

/// Where a field sits in the manifest: keys and list indices from the root.
struct FieldPath(Vec<Segment>);

enum Segment {
    Key(String),
    Index(usize),
}

/// What a field serde did not model is.
enum Field {
    /// Kubernetes defines it; it means nothing for a Wasm pod.
    Ignored,
    /// Kubernetes defines it; wasmpod cannot keep its promise.
    Refused(&'static str),
    /// Kubernetes does not define it.
    Unknown,
}

impl From<&serde_ignored::Path<'_>> for FieldPath {
    fn from(path: &serde_ignored::Path<'_>) -> Self {
        let mut segments = Vec::new();
        let mut at = path;
        loop {
            at = match at {
                serde_ignored::Path::Root => break,
                serde_ignored::Path::Seq { parent, index } => {
                    segments.push(Segment::Index(*index));
                    parent
                }
                serde_ignored::Path::Map { parent, key } => {
                    segments.push(Segment::Key(key.clone()));
                    parent
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => parent,
            }
        }
        segments.reverse();
        FieldPath(segments)
    }
}

impl std::fmt::Display for FieldPath {
    /// As kubectl writes paths: `spec.containers[0].command`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    /// The keys of the path, list indices left out.
    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    /// The field's own name and the fields Kubernetes defines beside it.
    fn field_and_siblings(&self) -> (&str, &'static [&'static str]) {
        let keys = self.keys();
        let Some((field, parent)) = keys.split_last() else {
            return ("", &[]);
        };
        let siblings: &[&str] = match parent {
            [] => k8s::POD,
            ["metadata"] => k8s::OBJECT_META,
            ["spec"] => k8s::POD_SPEC,
            ["spec", "containers" | "initContainers"] => k8s::CONTAINER,
            ["spec", "containers" | "initContainers", rest] => match *rest {
                "ports" => k8s::CONTAINER_PORT,
                "env" => k8s::ENV_VAR,
                "volumeMounts" => k8s::VOLUME_MOUNT,
                "resources" => k8s::RESOURCES,
                "securityContext" => k8s::SECURITY_CONTEXT,
                _ => &[],
            },
            ["spec", "volumes"] => k8s::VOLUME,
            ["spec", "volumes", "emptyDir"] => k8s::EMPTY_DIR,
            ["spec", "volumes", "hostPath"] => k8s::HOST_PATH,
            _ => &[],
        };
        (field, siblings)
    }

    fn classify(&self) -> Field {
        let (field, siblings) = self.field_and_siblings();
        if !siblings.contains(&field) {
            Field::Unknown
        } else if matches!(self.keys()[..], ["spec", "volumes", _]) {
            // Every volume field but the two modelled sources is a source wasmpod lacks.
            Field::Refused("only emptyDir and hostPath volumes are supported")
        } else {
            Field::Ignored
        }
    }

    /// ` (did you mean command?)` for the nearest field Kubernetes defines there, if one is near.
    fn suggestion(&self) -> String {
        let (field, siblings) = self.field_and_siblings();
        // Long keys are no typo of a field name; bounding them also bounds the work.
        if field.len() > 64 {
            return String::new();
        }
        let field = field.to_ascii_lowercase();
        siblings
            .iter()
            .map(|s| (levenshtein(&field, &s.to_ascii_lowercase()), *s))
            .filter(|(d, _)| *d <= 1 + field.len() / 3)
            .min_by_key(|(d, _)| *d)
            .map(|(_, s)| format!(" (did you mean {s}?)"))
            .unwrap_or_default()
    }
}

/// The error for unknown fields: a few named (aliases can repeat one many times), with the way
/// out.
fn unknown_fields_message(typos: &[FieldPath]) -> String {
    const SHOWN: usize = 5;
    let mut message = typos
        .iter()
        .take(SHOWN)
        .map(|p| format!("unknown field {p}{}", p.suggestion()))
        .collect::<Vec<_>>()
        .join("; ");
    if typos.len() > SHOWN {
        message += &format!("; and {} more", typos.len() - SHOWN);
    }
    message
        + " (Kubernetes defines no such field; fix it, or pass --warn-unknown-fields to ignore it)"
}

/// Edit distance (insertions, deletions, substitutions) between two strings.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Field names of the Kubernetes v1 objects a Pod manifest is made of: what is not here is a
/// typo; what is here and not modelled is ignored or refused.
mod k8s {
    pub const POD: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
    pub const OBJECT_META: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ];
    pub const POD_SPEC: &[&str] = &[
        "volumes",
        "initContainers",
        "containers",
        "ephemeralContainers",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "dnsPolicy",
        "nodeSelector",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "nodeName",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
        "securityContext",
        "imagePullSecrets",
        "hostname",
        "subdomain",
        "affinity",
        "schedulerName",
        "tolerations",
        "hostAliases",
        "priorityClassName",
        "priority",
        "dnsConfig",
        "readinessGates",
        "runtimeClassName",
        "enableServiceLinks",
        "preemptionPolicy",
        "overhead",
        "topologySpreadConstraints",
        "setHostnameAsFQDN",
        "os",
        "hostUsers",
        "schedulingGates",
        "resourceClaims",
        "resources",
    ];
    pub const CONTAINER: &[&str] = &[
        "name",
        "image",
        "command",
        "args",
        "workingDir",
        "ports",
        "envFrom",
        "env",
        "resources",
        "resizePolicy",
        "restartPolicy",
        "volumeMounts",
        "volumeDevices",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
        "securityContext",
        "stdin",
        "stdinOnce",
        "tty",
    ];
    pub const CONTAINER_PORT: &[&str] =
        &["name", "hostPort", "containerPort", "protocol", "hostIP"];
    pub const ENV_VAR: &[&str] = &["name", "value", "valueFrom"];
    pub const VOLUME_MOUNT: &[&str] = &[
        "name",
        "readOnly",
        "recursiveReadOnly",
        "mountPath",
        "subPath",
        "mountPropagation",
        "subPathExpr",
    ];
    pub const RESOURCES: &[&str] = &["limits", "requests", "claims"];
    pub const SECURITY_CONTEXT: &[&str] = &[
        "capabilities",
        "privileged",
        "seLinuxOptions",
        "windowsOptions",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "procMount",
        "seccompProfile",
        "appArmorProfile",
    ];
    pub const VOLUME: &[&str] = &[
        "name",
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    pub const EMPTY_DIR: &[&str] = &["medium", "sizeLimit"];
    pub const HOST_PATH: &[&str] = &["path", "type"];
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
    #[serde(default)]
    requests: BTreeMap<String, serde_yaml_ng::Value>,
}

/// kubelet's bounds on the shares a CPU request becomes (`MinShares`, `MaxShares`) and the
/// smallest quota a CPU limit becomes (`MinQuotaPeriod`, 1 ms).
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const MIN_QUOTA_US: u64 = 1_000;

impl RawResources {
    /// The CPU limits kubelet derives from `cpu`: the limit a quota over the default 100 ms
    /// period (`MilliCPUToQuota`; 0 is no limit), the request shares of milliCPU × 1024 / 1000
    /// (`MilliCPUToShares`). A request defaults to the limit, as the API server defaults it;
    /// with neither, the container gets the default 1024 shares. A request above the limit is
    /// refused, as the API server refuses it.
    fn cpu(&self) -> Result<CpuLimits> {
        let milli = |map: &BTreeMap<String, serde_yaml_ng::Value>, field: &str| {
            map.get("cpu")
                .map(|q| {
                    parse_milli_cpu(q).map_err(|e| e.context(format!("resources.{field}.cpu")))
                })
                .transpose()
        };
        let limit = milli(&self.limits, "limits")?;
        let request = milli(&self.requests, "requests")?.or(limit);
        if let (Some(l), Some(r)) = (limit, request) {
            if r > l {
                return Err(Error::invalid(format!(
                    "resources.requests.cpu ({r}m) is above resources.limits.cpu ({l}m)"
                )));
            }
        }
        let mut cpu = CpuLimits::default();
        cpu.quota_us = limit
            .filter(|&m| m > 0)
            .map(|m| (m.saturating_mul(cpu.period_us) / 1000).max(MIN_QUOTA_US));
        if let Some(r) = request {
            cpu.shares = (r.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES);
        }
        cpu.check().map_err(|e| e.context("resources.limits.cpu"))?;
        Ok(cpu)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecurityContext {
    /// Checked to be a bool; it grants a Wasm guest nothing.
    #[allow(dead_code)]
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
        // The runtime decides about host namespaces, for the CRI and manifests alike.
        let host_namespaces = HostNamespaces {
            network: spec.host_network,
            pid: spec.host_pid,
            ipc: spec.host_ipc,
        };
        PodConfig {
            host_namespaces,
            ..Default::default()
        }
        .check_namespaces()
        .map_err(|e| Error::invalid(format!("spec.{}", e.message)))?;
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
            host_namespaces,
            name,
            ..PodConfig::default()
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
            (Some(e), None) => VolumeSource::EmptyDir {
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
            (None, Some(h)) => VolumeSource::HostPath {
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
            // Other sources were refused with the unknown fields.
            (None, None) => {
                return Err(Error::invalid(format!("volume {} has no source", self.name)))
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "volume {}: emptyDir and hostPath both given; a volume has one source",
                    self.name
                )))
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
        // As over the CRI: privileged is accepted and grants a Wasm guest nothing (it has no
        // devices, capabilities or mounts to gain); the root is writable unless it says not.
        let writable_rootfs = self
            .security_context
            .as_ref()
            .is_none_or(|sc| !sc.read_only_root_filesystem);
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
        let resources = self.resources.unwrap_or_default();
        let memory_limit = match resources.limits.get("memory") {
            Some(q) => {
                Some(parse_quantity(q).map_err(|e| e.context(ctx("resources.limits.memory")))?)
            }
            None => None,
        };
        let cpu = resources
            .cpu()
            .map_err(|e| e.context(format!("container {}", self.name)))?;
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
            cpu,
            name: self.name,
            ports,
            writable_rootfs,
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

/// Parses a Kubernetes quantity (`128Mi`, `1G`, `1.5Gi`, `4096`, `1e6`) into bytes, rounded up.
pub fn parse_quantity(value: &serde_yaml_ng::Value) -> Result<u64> {
    scaled_quantity(value, 0)
}

/// Parses a CPU quantity (`500m`, `0.2`, `2`) into thousandths of a core, rounded up as
/// Kubernetes rounds (`MilliValue`).
pub fn parse_milli_cpu(value: &serde_yaml_ng::Value) -> Result<u64> {
    scaled_quantity(value, 3)
}

/// A quantity × 10^`scale`, rounded up, computed exactly in decimal (binary floats would make
/// `1.1` cores 1101m). The suffixes below one (`m`, `u`, `n`) are taken only for a scaled
/// unit: a `128m` memory limit is a typo for `128M`, not a fraction of a byte.
fn scaled_quantity(value: &serde_yaml_ng::Value, scale: i32) -> Result<u64> {
    let text = match value {
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::String(s) => s.trim().to_owned(),
        other => return Err(Error::invalid(format!("{other:?} is not a quantity"))),
    };
    let not = || Error::invalid(format!("{text:?} is not a quantity"));
    if text.starts_with('-') {
        return Err(Error::invalid(format!("{text:?} is negative")));
    }
    let unsigned = text.strip_prefix('+').unwrap_or(&text);
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (num, suffix) = unsigned.split_at(split);
    // (power of ten, power of 1024) the suffix stands for.
    let (pow10, pow1024): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" if scale > 0 => (-9, 0),
        "u" if scale > 0 => (-6, 0),
        "m" if scale > 0 => (-3, 0),
        "n" | "u" | "m" => {
            return Err(Error::invalid(format!(
                "{text:?}: {suffix} is a fraction of a byte here (M is 10^6, Mi 2^20)"
            )))
        }
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let k = "KMGTPE".find(&suffix[..1]).unwrap_or(0) as u32;
            (0, k + 1)
        }
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().map_err(|_| not())?, 0),
        _ => {
            return Err(Error::invalid(format!(
                "{text:?} is not a quantity (unknown suffix)"
            )))
        }
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(not());
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let out_of_range = || Error::invalid(format!("{text:?} is out of range"));
    let mantissa: u128 = match digits {
        "" => return Ok(0),
        d if d.len() > 38 => return Err(out_of_range()),
        d => d.parse().map_err(|_| not())?,
    };
    let exp = i64::from(pow10) + i64::from(scale) - frac.len() as i64;
    let value = 1024u128
        .checked_pow(pow1024)
        .and_then(|b| mantissa.checked_mul(b))
        .and_then(|v| match exp {
            e if e >= 0 => 10u128
                .checked_pow(u32::try_from(e).ok()?)
                .and_then(|p| v.checked_mul(p)),
            // Beyond 10^38 any mantissa is below one: rounded up, it is one.
            e if e < -38 => Some(1),
            e => Some(v.div_ceil(10u128.pow((-e) as u32))),
        })
        .ok_or_else(out_of_range)?;
    u64::try_from(value).map_err(|_| out_of_range())
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
        assert_eq!(
            m.warnings,
            ["spec.containers[0].livenessProbe: ignored, wasmpod does not use it"]
        );
    }

    const POD: &str = "kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [CONTAINER]}";

    #[test]
    fn typos_are_errors_with_a_suggestion() {
        let cases = [
            ("{name: a, image: a.wasm, comand: [x]}", "unknown field spec.containers[0].comand (did you mean command?)"),
            ("{name: a, image: a.wasm, volumeMounts: [{name: v, mountPth: /x}]}", "unknown field spec.containers[0].volumeMounts[0].mountPth (did you mean mountPath?)"),
            ("{name: a, image: a.wasm, resources: {limit: {memory: 1Mi}}}", "unknown field spec.containers[0].resources.limit (did you mean limits?)"),
            ("{name: a, image: a.wasm, zzzzzzzz: 1}", "unknown field spec.containers[0].zzzzzzzz (Kubernetes defines no such field"),
            // The typo is the cause of the missing name: it comes first.
            ("{nmae: a, image: a.wasm}", "unknown field spec.containers[0].nmae (did you mean name?) ("),
        ];
        for (container, want) in cases {
            let err = parse(&POD.replace("CONTAINER", container)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument);
            assert!(err.message.starts_with(want), "{want}: {err}");
            assert!(err.message.contains("--warn-unknown-fields"), "{err}");
        }
        let err = parse(&POD.replace("CONTAINER", "{nmae: a, image: a.wasm}")).unwrap_err();
        assert!(err.message.contains("missing field `name`"), "{err}");
        let err = parse(&POD.replace("{volumes:", "{hostpid: true, volumes:")).unwrap_err();
        assert!(
            err.message.contains("spec.hostpid (did you mean hostPID?)"),
            "{err}"
        );
    }

    #[test]
    fn many_unknown_fields_give_a_bounded_message() {
        let keys: Vec<_> = (0..50).map(|i| format!("k{i}: 1")).collect();
        let container = format!("{{name: a, image: a.wasm, {}}}", keys.join(", "));
        let err = parse(&POD.replace("CONTAINER", &container)).unwrap_err();
        assert!(
            err.message.contains(".k4;") && !err.message.contains(".k5"),
            "{err}"
        );
        assert!(err.message.contains("and 45 more"), "{err}");
    }

    #[test]
    fn unknown_fields_can_be_warnings() {
        let text = POD.replace("CONTAINER", "{name: a, image: a.wasm, comand: [x]}");
        let m = PodManifest::parse_with(&text, Path::new("/base"), UnknownFields::Warn).unwrap();
        assert_eq!(
            m.warnings,
            ["spec.containers[0].comand: ignored unknown field (did you mean command?)"]
        );
        assert!(m.containers[0].command.is_empty());
    }

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("comand", "command"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn privileged_is_accepted_and_grants_nothing() {
        let m = parse("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: a, image: a.wasm, securityContext: {privileged: true}}]}").unwrap();
        assert_eq!(m.containers.len(), 1);
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
            ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {hostPID: true, containers: [{name: a, image: a.wasm}]}", "hostPID"),
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
        assert_eq!(q("0.5").unwrap(), 1, "rounded up");
        assert_eq!(q("1e-3").unwrap(), 1);
        assert_eq!(q("16Ei").unwrap_err().message, "\"16Ei\" is out of range");
        assert_eq!(q("-1Mi").unwrap_err().message, "\"-1Mi\" is negative");
        assert!(q("128m")
            .unwrap_err()
            .message
            .contains("fraction of a byte"));
        assert!(q("1.2.3").is_err() && q(".").is_err() && q("Mi").is_err());
    }

    #[test]
    fn cpu_quantities() {
        let m = |s: &str| parse_milli_cpu(&serde_yaml_ng::Value::String(s.into()));
        assert_eq!(m("500m").unwrap(), 500);
        assert_eq!(m("0.2").unwrap(), 200);
        assert_eq!(m("1.1").unwrap(), 1100, "exact, not 1100.0000000000002");
        assert_eq!(m("2").unwrap(), 2000);
        assert_eq!(m("100u").unwrap(), 1, "rounded up to a thousandth");
        assert_eq!(m("1k").unwrap(), 1_000_000);
        assert_eq!(
            parse_milli_cpu(&serde_yaml_ng::Value::Number(serde_yaml_ng::Number::from(
                0.25
            )))
            .unwrap(),
            250
        );
        assert_eq!(m("-1").unwrap_err().message, "\"-1\" is negative");
        assert!(m("1 core").unwrap_err().message.contains("unknown suffix"));
    }

    /// One container with `resources`, its CPU limits or the error.
    fn cpu_of(resources: &str) -> Result<CpuLimits> {
        let c = format!("{{name: c, image: c.wasm, resources: {resources}}}");
        parse(&POD.replace("CONTAINER", &c)).map(|m| m.containers[0].cpu)
    }

    #[test]
    fn cpu_limits_and_requests_as_kubelet_makes_them() {
        let cpu = cpu_of("{limits: {cpu: 500m}, requests: {cpu: 250m}}").unwrap();
        assert_eq!(
            (cpu.quota_us, cpu.period_us, cpu.shares),
            (Some(50_000), 100_000, 256)
        );
        // The request defaults to the limit.
        let cpu = cpu_of("{limits: {cpu: \"2\"}}").unwrap();
        assert_eq!((cpu.quota_us, cpu.shares), (Some(200_000), 2048));
        let cpu = cpu_of("{limits: {cpu: 0.2}}").unwrap();
        assert_eq!((cpu.quota_us, cpu.shares), (Some(20_000), 204));
        // A request alone: shares, no limit; tiny ones at kubelet's bounds.
        let cpu = cpu_of("{requests: {cpu: 1m}}").unwrap();
        assert_eq!((cpu.quota_us, cpu.shares), (None, 2));
        assert_eq!(cpu_of("{requests: {cpu: 1000}}").unwrap().shares, 262_144);
        assert_eq!(cpu_of("{limits: {cpu: 1m}}").unwrap().quota_us, Some(1_000));
        assert_eq!(cpu_of("{limits: {cpu: 0}}").unwrap().quota_us, None);
        assert_eq!(
            cpu_of("{limits: {memory: 1Mi}}").unwrap(),
            CpuLimits::default()
        );
        for (resources, want) in [
            (
                "{limits: {cpu: half}}",
                "spec.containers[0]: container c: resources.limits.cpu: \"half\" is not a quantity (unknown suffix)",
            ),
            (
                "{requests: {cpu: -100m}}",
                "spec.containers[0]: container c: resources.requests.cpu: \"-100m\" is negative",
            ),
            (
                "{limits: {cpu: [1]}}",
                "spec.containers[0]: container c: resources.limits.cpu: Sequence",
            ),
            (
                "{limits: {cpu: 1}, requests: {cpu: 1500m}}",
                "spec.containers[0]: container c: resources.requests.cpu (1500m) is above resources.limits.cpu (1000m)",
            ),
            (
                "{limits: {cpu: 1e12}}",
                "spec.containers[0]: container c: resources.limits.cpu: cpu quota",
            ),
            (
                "{limits: {cpu: 1e30}}",
                "spec.containers[0]: container c: resources.limits.cpu: \"1e30\" is out of range",
            ),
        ] {
            let e = cpu_of(resources).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{resources}");
            assert!(e.message.starts_with(want), "{resources}: {e}");
        }
    }
}
