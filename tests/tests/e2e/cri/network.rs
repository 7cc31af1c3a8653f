//! The pod network through the CRI: NetworkReady, pod IPs in PodSandboxStatus, hostPorts from
//! PortMapping, and node mode on a pod CIDR set by UpdateRuntimeConfig (in a network namespace
//! the test creates).

use std::process::Command;

use k8s_cri::v1 as cri;
use tonic::Code;
use wasmpod_tests::cri::{self as harness, container_config, pod_config, Daemon};
use wasmpod_tests::{text, wasm};

use super::file_image;

async fn network_ready(rt: &mut harness::Rt) -> bool {
    let status = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition")
        .status
}

async fn pod_ip(rt: &mut harness::Rt, id: &str) -> String {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
    .ip
}

/// curl (optionally inside network namespace `netns`): the body, or the error output.
fn curl(url: &str, netns: Option<&str>) -> Result<String, String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--fail", "--max-time", "20", url])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Starts netprobe's HTTP server on port 8080 in `pod`; returns once it listens.
async fn serve_http(
    rt: &mut harness::Rt,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    logs: &std::path::Path,
) {
    let ctr = harness::create(
        rt,
        pod,
        container_config("web", &file_image("netprobe.p2"), &["http", "0.0.0.0:8080"]),
        sandbox,
    )
    .await
    .unwrap();
    harness::start(rt, &ctr).await;
    let log = logs.join("web/0.log");
    harness::wait_for(|| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on")))
        .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_ips_and_host_ports() {
    wasm("netprobe.p2");
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    assert!(
        network_ready(&mut rt).await,
        "loopback mode is ready at once"
    );

    let logs = d.dir.path().join("logs/web");
    std::fs::create_dir_all(&logs).unwrap();
    let port = free_port();
    let mut sandbox = pod_config("web", &logs);
    sandbox.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: port as i32,
        host_ip: "127.0.0.1".into(),
    }];
    let pod = harness::run_pod(&mut rt, &sandbox).await;
    let ip = pod_ip(&mut rt, &pod).await;
    assert!(
        ip.starts_with("127.100."),
        "a pod IP from the loopback range: {ip:?}"
    );
    serve_http(&mut rt, &pod, &sandbox, &logs).await;
    assert_eq!(
        curl(&format!("http://{ip}:8080/"), None).unwrap().trim(),
        "hello from web via wasi:sockets"
    );
    assert_eq!(
        curl(&format!("http://127.0.0.1:{port}/"), None)
            .unwrap()
            .trim(),
        "hello from web via wasi:sockets"
    );

    // The same hostPort again: AlreadyExists, and no sandbox is left behind.
    let mut again = sandbox.clone();
    again.metadata.as_mut().unwrap().name = "web-2".into();
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(again),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("in use"), "{e:?}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);

    // A restarted server gives the pod the same IP back, and its hostPort again.
    let mut d = d;
    d.kill9();
    d.restart().await;
    let mut rt = d.runtime().await;
    assert_eq!(pod_ip(&mut rt, &pod).await, ip);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the hostPort listens again");
}

/// A network namespace for one test, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Option<Self> {
        let name = format!("wasmpod-test-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_routes_the_pod_cidr_from_kubelet_to_pods() {
    wasm("netprobe.p2");
    // Node mode changes host networking, so it runs in a namespace of its own; that needs root.
    let Some(ns) = Netns::create() else {
        eprintln!("skipped: `ip netns add` needs root (CI runs as root)");
        return;
    };
    let d = Daemon::start_with(
        "[network]\nmode = \"node\"\ninterface = \"wasmpod0\"\n",
        Some(&ns.0),
    )
    .await;
    let mut rt = d.runtime().await;
    assert!(!network_ready(&mut rt).await, "no pod CIDR yet");
    let logs = d.dir.path().join("logs/node-web");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox = pod_config("node-web", &logs);
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A malformed CIDR is refused; kubelet's real one makes the network ready.
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let e = rt
        .update_runtime_config(update("10.77.0.0/40"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    rt.update_runtime_config(update("10.77.0.0/24"))
        .await
        .unwrap();
    assert!(network_ready(&mut rt).await);
    let routes = ns.ip(&["route", "show", "table", "local"]);
    assert!(
        routes.contains("local 10.77.0.0/24 dev wasmpod0"),
        "{routes}"
    );

    let pod = harness::run_pod(&mut rt, &sandbox).await;
    let ip = pod_ip(&mut rt, &pod).await;
    assert_eq!(ip, "10.77.0.2");
    serve_http(&mut rt, &pod, &sandbox, &logs).await;
    let body = curl(&format!("http://{ip}:8080/"), Some(&ns.0)).unwrap();
    assert_eq!(body.trim(), "hello from node-web via wasi:sockets");
    drop(d);
}
