//! A CRI harness: the real `wasmpod serve` on a temp socket, CRI clients over it, and a real
//! registry (Debian's docker-registry) on a free loopback port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

pub type Rt = RuntimeServiceClient<Channel>;

/// A `wasmpod serve` process on a socket in a temp dir, stopped by PID when dropped.
pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// A config file to pass with `--config`.
    config: Option<PathBuf>,
    /// A network namespace to run the server in (`ip netns exec`).
    netns: Option<String>,
}

impl Daemon {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("wasmpod.sock");
        Self::start_at(dir, socket).await
    }

    pub async fn start_at(dir: TempDir, socket: PathBuf) -> Self {
        Self::start_bin(crate::wasmpod_bin().to_path_buf(), dir, socket).await
    }

    /// Starts a given `wasmpod` binary (the benchmark uses the release build).
    pub async fn start_bin(bin: PathBuf, dir: TempDir, socket: PathBuf) -> Self {
        Self::start_bin_with(bin, dir, socket, None).await
    }

    /// [`Daemon::start_bin`] with `config` (TOML) as its config file when given: the
    /// benchmark's daemon serves /metrics.
    pub async fn start_bin_with(
        bin: PathBuf,
        dir: TempDir,
        socket: PathBuf,
        config: Option<&str>,
    ) -> Self {
        let config = config.map(|text| {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).expect("writing the daemon's config");
            path
        });
        let mut d = Daemon {
            dir,
            socket,
            bin,
            child: None,
            config,
            netns: None,
        };
        d.restart().await;
        d
    }

    /// Starts the server with `config` (TOML) as its config file, inside network namespace
    /// `netns` when given.
    pub async fn start_with(config: &str, netns: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut d = Daemon {
            socket: dir.path().join("wasmpod.sock"),
            dir,
            bin: crate::wasmpod_bin().to_path_buf(),
            child: None,
            config: Some(path),
            netns: netns.map(str::to_owned),
        };
        d.restart().await;
        d
    }

    /// Starts the server (again) on the same state dir and socket; waits until it answers.
    pub async fn restart(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["serve", "--socket"])
            .arg(&self.socket);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting wasmpod serve");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.try_runtime().await {
                if c.version(cri::VersionRequest::default()).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("wasmpod serve did not answer on {}", self.socket.display());
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        unix_channel(&self.socket).await
    }

    async fn try_runtime(&self) -> Result<Rt, tonic::transport::Error> {
        Ok(runtime_client(self.channel().await?))
    }

    pub async fn runtime(&self) -> Rt {
        self.try_runtime()
            .await
            .expect("connecting to the CRI socket")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill with a child's pid and a valid signal.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("wasmpod serve did not exit after SIGTERM");
    }

    pub fn stop(mut self) {
        self.kill9();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gRPC channel over a CRI unix socket, with adaptive flow-control windows as kubelet's
/// grpc-go client has.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .http2_adaptive_window(true)
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

/// A runtime client on `channel` that takes the large List answers of the benchmarks.
pub fn runtime_client(channel: Channel) -> Rt {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20)
}

/// `UpdatePodSandboxResourcesRequest` (CRI runtime.v1, Kubernetes 1.33), which `k8s-cri` 0.11
/// lacks: defined here by the CRI's field numbers, independently of the server's definition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatePodSandboxResourcesRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub overhead: Option<cri::LinuxContainerResources>,
    #[prost(message, optional, tag = "3")]
    pub resources: Option<cri::LinuxContainerResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatePodSandboxResourcesResponse {}

/// Calls UpdatePodSandboxResources on `channel` as kubelet does: a unary call on the method's
/// path, the messages encoded by prost.
pub async fn update_pod_sandbox_resources(
    channel: Channel,
    request: UpdatePodSandboxResourcesRequest,
) -> Result<UpdatePodSandboxResourcesResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
    );
    let codec = tonic_prost::ProstCodec::<UpdatePodSandboxResourcesRequest, _>::default();
    Ok(grpc
        .unary(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

pub async fn image_client(d: &Daemon) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(d.channel().await.expect("connecting to the CRI socket"))
}

/// ListContainers with `filter`, which must succeed.
pub async fn list_containers(rt: &mut Rt, filter: cri::ContainerFilter) -> Vec<cri::Container> {
    rt.list_containers(cri::ListContainersRequest {
        filter: Some(filter),
    })
    .await
    .unwrap()
    .into_inner()
    .containers
}

/// ListPodSandbox with `filter`, which must succeed.
pub async fn list_pods(rt: &mut Rt, filter: cri::PodSandboxFilter) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest {
        filter: Some(filter),
    })
    .await
    .unwrap()
    .into_inner()
    .items
}

pub async fn run_pod(rt: &mut Rt, config: &cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

pub async fn create(
    rt: &mut Rt,
    pod: &str,
    config: cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// A sandbox config as kubelet sends it, with a label and an annotation to check they are kept.
pub fn pod_config(name: &str, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 1,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".into(), name.into())]),
        annotations: HashMap::from([("note".into(), "kept as is".into())]),
        ..Default::default()
    }
}

/// A container config as kubelet sends it, logging to `<name>/0.log`.
pub fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        args: args.iter().map(|a| a.to_string()).collect(),
        envs: vec![cri::KeyValue {
            key: "GREETING".into(),
            value: "from the CRI".into(),
        }],
        labels: HashMap::from([("tier".into(), "wasm".into())]),
        annotations: HashMap::from([("a".into(), "b".into())]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// A sandbox of the daemon with its own log directory.
pub struct TestPod {
    pub sandbox: cri::PodSandboxConfig,
    pub id: String,
    pub logs: PathBuf,
}

impl TestPod {
    /// CreateContainer in this sandbox.
    pub async fn create(
        &self,
        rt: &mut Rt,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        create(rt, &self.id, config, &self.sandbox).await
    }
}

pub async fn new_pod(d: &Daemon, rt: &mut Rt, name: &str) -> TestPod {
    let logs = d.dir.path().join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = pod_config(name, &logs);
    let id = run_pod(rt, &sandbox).await;
    TestPod { sandbox, id, logs }
}

pub async fn start(rt: &mut Rt, id: &str) {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

pub async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// Polls ContainerStatus until the container has exited (bounded: 30 s).
pub async fn wait_exited(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    for _ in 0..600 {
        let st = status(rt, id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {id} did not exit");
}

/// Polls `cond` until it holds (bounded: 30 s).
pub async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached");
}

/// Debian's docker-registry on a free loopback port, stopped by PID when dropped.
pub struct Registry {
    pub host: String,
    child: Child,
}

impl Registry {
    pub async fn start(dir: &Path) -> Self {
        let port = crate::free_port();
        let root = dir.join(format!("registry-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        // Owned by the guard at once, so every path below stops and reaps it.
        let registry = Registry {
            host: format!("127.0.0.1:{port}"),
            child,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&registry.host).is_ok() {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("docker-registry did not start on {}", registry.host);
    }

    /// Pushes a bare `.wasm` as a Wasm OCI artifact the way an edge user would: import it
    /// with wasmpod, export an OCI layout, copy it with skopeo. Returns the full reference.
    pub fn push_wasm(&self, wasm: &Path, name: &str, work: &Path) -> String {
        let state = work.join(format!("push-state-{}", name.replace(['/', ':'], "-")));
        let archive = work.join(format!("{}.tar", name.replace(['/', ':'], "-")));
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(crate::wasmpod(&state)
            .args(["image", "import", "--tag", name])
            .arg(wasm));
        run(crate::wasmpod(&state)
            .args(["image", "export", name])
            .arg(&archive));
        let reference = format!("{}/{name}", self.host);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{reference}")));
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
