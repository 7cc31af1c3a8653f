//! The pod network end to end, on loopback: containers of a pod meet on localhost (TCP, UDP,
//! IPv4 and IPv6 names), pods are isolated from each other but reach each other by pod IP, the
//! host reaches pods with Debian's curl, hostPorts forward, wasi:http handlers are served, and
//! egress follows the pod's policy.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::exit::{Exit, ExitReason};
use wasmpod_runtime::network::{NetworkConfig, EGRESS_ANNOTATION};
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::{ContainerConfig, DnsConfig, PodConfig, PortMapping, Protocol};
use wasmpod_tests::*;

fn netprobe() -> PathBuf {
    wasm("netprobe.p2")
}

fn runtime_with(network: NetworkConfig) -> (tempfile::TempDir, Arc<Runtime>) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeOptions {
        state_dir: tmp.path().join("state"),
        network,
        ..Default::default()
    })
    .unwrap();
    (tmp, rt)
}

/// Creates and starts `config` in pod `pod_id`; returns the container id.
async fn start(rt: &Arc<Runtime>, pod_id: &str, config: ContainerConfig) -> String {
    let id = rt
        .create_container(pod_id, config)
        .await
        .expect("creating the container");
    rt.start_container(&id).expect("starting the container");
    id
}

async fn start_probe(rt: &Arc<Runtime>, pod_id: &str, name: &str, args: &[&str]) -> String {
    start(rt, pod_id, container(name, &netprobe(), args)).await
}

/// Waits until the container's log has a line containing `needle`; returns that line.
async fn log_line(rt: &Arc<Runtime>, id: &str, needle: &str) -> String {
    let path = rt.container(id).unwrap().log_path.clone().unwrap();
    within(60, &format!("{needle:?} in the log of {id}"), async {
        loop {
            if let Some(r) = read_log(&path)
                .into_iter()
                .find(|r| r.text.contains(needle))
            {
                return r.text;
            }
            if matches!(
                rt.container(id).unwrap().state(),
                ContainerState::Exited { .. }
            ) {
                panic!(
                    "{id} exited without logging {needle:?}: {:?}",
                    read_log(&path)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits for the container to exit; returns how, with its stdout and stderr.
async fn finished(rt: &Arc<Runtime>, id: &str) -> (Exit, String, String) {
    let exit = within(60, "the container to exit", rt.wait_container(id))
        .await
        .unwrap();
    let log = read_log(rt.container(id).unwrap().log_path.as_deref().unwrap());
    (
        exit,
        stream_text(&log, "stdout"),
        stream_text(&log, "stderr"),
    )
}

/// Runs a probe to its end in `pod_id`.
async fn probe(
    rt: &Arc<Runtime>,
    pod_id: &str,
    name: &str,
    args: &[&str],
) -> (Exit, String, String) {
    let id = start_probe(rt, pod_id, name, args).await;
    finished(rt, &id).await
}

/// A WASI preview2 command can only fail with 1 (`wasi:cli/run`); netprobe names the error.
#[track_caller]
fn assert_failed(exit: &Exit, stderr: &str, kind: &str) {
    assert_eq!(exit.code, 1, "{exit:?} {stderr}");
    assert!(
        stderr.contains(&format!("error: {kind}")),
        "expected {kind}: {stderr}"
    );
}

fn ip_of(rt: &Arc<Runtime>, pod_id: &str) -> String {
    rt.pod(pod_id)
        .unwrap()
        .ip()
        .expect("the pod has an IP")
        .to_string()
}

#[tokio::test]
async fn tcp_over_the_pods_localhost_ipv4_and_ipv6() {
    let (_tmp, rt) = temp_runtime();
    let cases = [
        ("127.0.0.1:9000", "localhost:9000"),
        ("0.0.0.0:9000", "127.0.0.1:9000"),
        ("[::]:9000", "[::1]:9000"),
        ("[::1]:9000", "localhost:9000"),
    ];
    for (i, (bind, target)) in cases.into_iter().enumerate() {
        let pod_id = rt.run_pod(pod(&format!("tcp-{i}"))).unwrap();
        let server = start_probe(&rt, &pod_id, "server", &["tcp-echo", bind]).await;
        log_line(&rt, &server, "listening on").await;
        let msg = format!("ping {i}");
        let (exit, out, err) = probe(&rt, &pod_id, "client", &["tcp-client", target, &msg]).await;
        assert_eq!(exit.code, 0, "{bind} <- {target}: {exit:?} {err}");
        assert!(
            out.contains(&format!("reply: {msg}")),
            "{bind} <- {target}: {out}"
        );
    }
}

#[tokio::test]
async fn udp_over_the_pods_localhost() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("udp")).unwrap();
    let server = start_probe(&rt, &pod_id, "server", &["udp-echo", "0.0.0.0:9001"]).await;
    log_line(&rt, &server, "listening on").await;
    let (exit, out, err) = probe(
        &rt,
        &pod_id,
        "client",
        &["udp-client", "localhost:9001", "datagram"],
    )
    .await;
    assert_eq!(exit.code, 0, "{exit:?} {err}");
    assert!(out.contains("reply: datagram"), "{out}");
}

#[tokio::test]
async fn pods_share_ports_but_not_localhost_and_reach_each_other_by_ip() {
    let (_tmp, rt) = temp_runtime();
    let a = rt.run_pod(pod("pod-a")).unwrap();
    let b = rt.run_pod(pod("pod-b")).unwrap();
    let c = rt.run_pod(pod("pod-c")).unwrap();
    let (ip_a, ip_b, ip_c) = (ip_of(&rt, &a), ip_of(&rt, &b), ip_of(&rt, &c));
    assert!(ip_a != ip_b && ip_b != ip_c && ip_a != ip_c);
    // The same port in two pods at once.
    for (pod_id, ip) in [(&a, &ip_a), (&b, &ip_b)] {
        let server = start_probe(&rt, pod_id, "web", &["http", "0.0.0.0:8080"]).await;
        let line = log_line(&rt, &server, "listening on").await;
        assert!(line.contains(&format!("{ip}:8080")), "{line}");
    }
    // The host reaches each pod at its IP, with a real client.
    for (ip, name) in [(&ip_a, "pod-a"), (&ip_b, "pod-b")] {
        let (code, body) = curl(&format!("http://{ip}:8080/")).await;
        assert_eq!(
            (code, body.trim()),
            (200, format!("hello from {name} via wasi:sockets").as_str())
        );
    }
    // Pod C's localhost is its own: nothing listens there.
    let (exit, _, err) = probe(&rt, &c, "local", &["connect", "localhost:8080"]).await;
    assert_failed(&exit, &err, "ConnectionRefused");
    // Pod C reaches pod A by IP, and A sees C's IP as the source.
    let (exit, out, err) = probe(&rt, &c, "remote", &["connect", &format!("{ip_a}:8080")]).await;
    assert_eq!(exit.code, 0, "{exit:?} {err}");
    assert!(out.contains(&format!("connected {ip_c}:")), "{out}");
    assert_eq!(rt.pod(&a).unwrap().ip(), ip_a.parse().ok());
}

#[tokio::test]
async fn host_ports_forward_and_a_taken_one_fails_the_pod_cleanly() {
    let (_tmp, rt) = temp_runtime();
    let port = free_port();
    let mut config = pod("web");
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp,
        container_port: 8080,
        host_port: port,
        host_ip: None,
    }];
    let web = rt.run_pod(config.clone()).unwrap();
    let server = start_probe(&rt, &web, "web", &["http", "0.0.0.0:8080"]).await;
    log_line(&rt, &server, "listening on").await;
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(
        (code, body.trim()),
        (200, "hello from web via wasi:sockets")
    );

    // A second pod wanting the same hostPort fails and leaves nothing behind.
    let pods_before = rt.pods().len();
    config.name = "web-2".into();
    let e = rt.run_pod(config).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    assert!(
        e.message.contains(&format!("127.0.0.1:{port}")) && e.message.contains("in use"),
        "{e}"
    );
    assert_eq!(rt.pods().len(), pods_before);

    // Removing the pod frees the host port.
    rt.remove_pod(&web).await.unwrap();
    TcpListener::bind(("127.0.0.1", port)).expect("the hostPort is free after the pod is removed");
}

#[tokio::test]
async fn wasi_http_handlers_are_served_at_the_pod_ip() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("http-hello")).unwrap();
    let id = start(
        &rt,
        &pod_id,
        container("hello", &wasm("http-hello.p2"), &[]),
    )
    .await;
    let ip = ip_of(&rt, &pod_id);
    let line = log_line(&rt, &id, "serving wasi:http").await;
    assert!(line.contains(&format!("http://{ip}:8080/")), "{line}");

    let (code, body) = curl(&format!("http://{ip}:8080/")).await;
    assert_eq!((code, body.as_str()), (200, "hello from wasi:http\n"));
    let (code, body) = curl(&format!("http://{ip}:8080/env/HOSTNAME")).await;
    assert_eq!((code, body.trim()), (200, "http-hello"));
    let (code, _) = curl(&format!("http://{ip}:8080/nope")).await;
    assert_eq!(code, 404);

    // Concurrent requests each get an instance.
    let all = futures_join(
        (0..16)
            .map(|_| {
                let url = format!("http://{ip}:8080/");
                tokio::spawn(async move { curl(&url).await })
            })
            .collect(),
    )
    .await;
    assert!(all.iter().all(|(code, _)| *code == 200), "{all:?}");

    // Stopping the idle handler drains nothing: it exits 0 and closes the server.
    rt.stop_container(&id, Duration::from_secs(3600))
        .await
        .unwrap();
    let exit = rt.wait_container(&id).await.unwrap();
    assert_exit(&exit, 0, ExitReason::Completed);
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

/// A stopped wasi:http handler stops accepting at once but lets a request in flight finish
/// (here one waiting on an upstream the test holds), then exits 0.
#[tokio::test]
async fn a_stopped_wasi_http_handler_drains_in_flight_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("drain")).unwrap();
    let id = start(
        &rt,
        &pod_id,
        container("hello", &wasm("http-hello.p2"), &[]),
    )
    .await;
    log_line(&rt, &id, "serving wasi:http").await;
    let ip = ip_of(&rt, &pod_id);
    let upstream = tokio::net::TcpListener::bind("127.0.0.9:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let url = format!(
        "http://{ip}:8080/fetch?url={}",
        url_encode(&format!("http://{up}/"))
    );
    let request = tokio::spawn(async move { curl(&url).await });
    let (mut held, _) = within(30, "the guest's upstream request", upstream.accept())
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let _ = held.read(&mut head).await.unwrap();

    let stopping = {
        let rt = rt.clone();
        let id = id.clone();
        tokio::spawn(async move { rt.stop_container(&id, Duration::from_secs(3600)).await })
    };
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    within(30, "the handler to stop accepting", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(matches!(
        rt.container(&id).unwrap().state(),
        ContainerState::Running { .. }
    ));
    held.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\ndrained\n")
        .await
        .unwrap();
    let (code, body) = request.await.unwrap();
    assert_eq!((code, body.as_str()), (200, "drained\n"));
    within(30, "the drained stop", stopping)
        .await
        .unwrap()
        .unwrap();
    let exit = rt.wait_container(&id).await.unwrap();
    assert_exit(&exit, 0, ExitReason::Completed);
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A tiny HTTP server on the host's 127.0.0.2 (the host network, outside every pod).
fn host_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nfrom host\n",
            );
        }
    });
    addr
}

fn pod_with_egress(name: &str, allow: &str) -> PodConfig {
    let mut p = pod(name);
    p.annotations.insert(EGRESS_ANNOTATION.into(), allow.into());
    p
}

#[tokio::test]
async fn egress_follows_the_pods_policy_for_sockets_and_http() {
    let (_tmp, rt) = temp_runtime();
    let host = host_server();
    let allowed = rt
        .run_pod(pod_with_egress(
            "allowed",
            &format!("127.0.0.2:{}", host.port()),
        ))
        .unwrap();
    let denied = rt.run_pod(pod_with_egress("denied", "none")).unwrap();

    let (exit, out, err) = probe(&rt, &allowed, "ok", &["connect", &host.to_string()]).await;
    assert_eq!(exit.code, 0, "{exit:?} {err}");
    assert!(out.contains("connected"), "{out}");
    let (exit, _, err) = probe(&rt, &denied, "no", &["connect", &host.to_string()]).await;
    assert_failed(&exit, &err, "PermissionDenied");
    // Its own localhost stays open to a pod that may not leave.
    let server = start_probe(&rt, &denied, "server", &["tcp-echo", "127.0.0.1:9000"]).await;
    log_line(&rt, &server, "listening on").await;
    let (exit, out, _) = probe(
        &rt,
        &denied,
        "self",
        &["tcp-client", "localhost:9000", "me"],
    )
    .await;
    assert_eq!(exit.code, 0, "{out}");

    // Outgoing wasi:http requests follow the same policy.
    let url = format!("http://{host}/");
    for (pod_id, expect) in [(&allowed, 200), (&denied, 502)] {
        let id = start(&rt, pod_id, container("fetch", &wasm("http-hello.p2"), &[])).await;
        log_line(&rt, &id, "serving wasi:http").await;
        let ip = ip_of(&rt, pod_id);
        let (code, body) = curl(&format!("http://{ip}:8080/fetch?url={}", url_encode(&url))).await;
        assert_eq!(code, expect, "{body}");
        if expect == 200 {
            assert_eq!(body, "from host\n");
        } else {
            assert!(body.contains("upstream error"), "{body}");
        }
    }
}

#[tokio::test]
async fn privileged_foreign_and_excess_sockets_are_refused_in_the_guest() {
    let (_tmp, rt) = runtime_with(NetworkConfig {
        max_sockets_per_pod: 8,
        ..Default::default()
    });
    let other = rt.run_pod(pod("other")).unwrap();
    let pod_id = rt.run_pod(pod("limited")).unwrap();

    let (exit, _, err) = probe(&rt, &pod_id, "privileged", &["bind", "0.0.0.0:80"]).await;
    assert_failed(&exit, &err, "PermissionDenied");
    let server = start_probe(&rt, &pod_id, "server", &["tcp-echo", "0.0.0.0:9000"]).await;
    log_line(&rt, &server, "listening on").await;
    let (exit, _, err) = probe(&rt, &pod_id, "taken", &["bind", "127.0.0.1:9000"]).await;
    assert_failed(&exit, &err, "AddrInUse");
    rt.stop_container(&server, Duration::ZERO).await.unwrap();
    let foreign = format!("{}:9000", ip_of(&rt, &other));
    let (exit, _, err) = probe(&rt, &pod_id, "foreign", &["bind", &foreign]).await;
    assert_failed(&exit, &err, "AddrNotAvailable");

    let host = host_server();
    let (exit, out, err) = probe(&rt, &pod_id, "hog", &["sockets", "50", &host.to_string()]).await;
    assert_ne!(exit.code, 0, "{out} {err}");
    let opened: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("opened "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'opened' line: {out}"));
    assert_eq!(opened, 8, "the limit is 8 sockets per pod: {err}");
    assert!(err.contains("error: "), "{err}");
    // The hog's sockets are given back when it exits: a new container can open sockets again.
    let (exit, _, err) = probe(&rt, &pod_id, "after", &["connect", &host.to_string()]).await;
    assert_eq!(exit.code, 0, "{exit:?} {err}");
}

#[test]
fn malformed_network_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (config, needle) in [
        (
            NetworkConfig {
                pod_cidr: Some("10.1.0.0/16".into()),
                ..Default::default()
            },
            "inside 127.0.0.0/8",
        ),
        (
            NetworkConfig {
                pod_cidr: Some("127.1.0.0/99".into()),
                ..Default::default()
            },
            "not an IPv4 CIDR",
        ),
        (
            NetworkConfig {
                egress_allow: "10.0.0.0/8:http".into(),
                ..Default::default()
            },
            "bad port",
        ),
    ] {
        let e = Runtime::new(RuntimeOptions {
            state_dir: tmp.path().join("state"),
            network: config,
            ..Default::default()
        })
        .err()
        .expect("a malformed network config is refused");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

/// Debian's dnsmasq answering for `svc.test` on `addr`:53, stopped by PID when dropped.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    /// `None` (with the reason printed) when port 53 cannot be had: it needs root.
    fn start(addr: &str, records: &[(&str, &str)]) -> Option<Self> {
        let mut cmd = std::process::Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--local=/svc.test/",
            "--pid-file",
            "--user=root",
        ])
        .arg(format!("--listen-address={addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        for (name, ip) in records {
            cmd.arg(format!("--address=/{name}/{ip}"));
        }
        let mut child = cmd
            .spawn()
            .expect("running dnsmasq (apt install dnsmasq-base)");
        // dnsmasq answers once it has bound; a bind failure ends it at once.
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
                eprintln!("skipped: dnsmasq could not start ({status}): {err}");
                return None;
            }
            if std::net::UdpSocket::bind((addr, 53)).is_err() {
                return Some(Dnsmasq(child));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Dnsmasq(child))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn name_lookups_use_the_sandbox_dns_servers_and_search_domains() {
    let Some(_dns) = Dnsmasq::start("127.0.0.3", &[("web.svc.test", "127.0.0.4")]) else {
        return;
    };
    let (_tmp, rt) = temp_runtime();
    let mut config = pod("resolver");
    config.dns = DnsConfig {
        servers: vec!["127.0.0.3".into()],
        searches: vec!["svc.test".into()],
        options: vec!["ndots:5".into()],
    };
    let pod_id = rt.run_pod(config).unwrap();
    let ip = ip_of(&rt, &pod_id);
    for (i, (name, expect)) in [
        ("web:80", "127.0.0.4:80".to_owned()),
        ("web.svc.test:80", "127.0.0.4:80".to_owned()),
        ("localhost:80", "127.0.0.1:80".to_owned()),
        ("resolver:80", format!("{ip}:80")),
    ]
    .into_iter()
    .enumerate()
    {
        let (exit, out, err) =
            probe(&rt, &pod_id, &format!("resolve-{i}"), &["resolve", name]).await;
        assert_eq!(exit.code, 0, "{name}: {exit:?} {err}");
        assert!(out.contains(&format!("resolved {expect}")), "{name}: {out}");
    }
    let (exit, _, err) = probe(&rt, &pod_id, "missing", &["resolve", "nothing.svc.test:80"]).await;
    assert_eq!(exit.code, 1, "{err}");
    assert!(err.contains("error: "), "{err}");
}
