//! A Kubernetes cluster on the real `wasmpod serve` (issue 15, parts 2 and 3): Debian's
//! etcd, the real kube-apiserver, kube-scheduler and kube-controller-manager built by
//! `scripts/peers`, and kubelets (the harness of `src/kubelet.rs`) registered with the API
//! server. [`Cluster::start`] is one node on loopback; [`Cluster::start_nodes`] is several,
//! each kubelet with its own daemon in a network namespace of its own, joined by a bridge
//! the API server listens on. Everything lives in one temp dir; every process is killed
//! (and every namespace and link deleted) when the cluster is dropped. Tests drive it with
//! the real `kubectl`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

use crate::containerd::{Containerd, Flavour, Netns, Options};
use crate::kubelet::{poll, Kubelet, NodeNet, Registration, CLUSTER_NODE, NODE, WAIT_SECS};
use crate::{free_port, output_within, peers, text};

/// The admin's bearer token (`--token-auth-file`, group `system:masters`): every component
/// and `kubectl` use it, so RBAC never stands between the test and the runtime under test.
const TOKEN: &str = "wasmpod-cluster-admin-token";

/// One cluster at a time per test process: a control plane is heavy for a small shared
/// machine, and two starting at once would only slow both.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A control-plane process and where its log goes (shown when a test fails).
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// etcd, the API server, scheduler and controller manager, and kubelets on daemons.
pub struct Cluster {
    /// Dropped after `Drop::drop` killed the control plane: each kills its kubelet and
    /// daemon, then deletes its namespace.
    pub nodes: Vec<Node>,
    /// In start order; killed in reverse.
    procs: Vec<Proc>,
    /// `kubectl`'s kubeconfig (also every component's).
    pub kubeconfig: PathBuf,
    pub dir: TempDir,
    /// The bridge of namespaced nodes: deleted after them.
    _switch: Option<Switch>,
    _turn: MutexGuard<'static, ()>,
}

/// A node of the cluster: its kubelet and daemon, and for a namespaced node its network.
pub struct Node {
    /// The node's name in the API.
    pub name: String,
    /// None once [`Cluster::kill_node`] killed it.
    kubelet: Option<Kubelet>,
    /// The node's IP and pod CIDR (namespaced nodes; the loopback node has neither).
    pub ip: Option<String>,
    pub pod_cidr: Option<String>,
    /// The node's runtime, when it is containerd (stopped after its kubelet, with its
    /// shims, daemon and namespace).
    containerd: Option<Containerd>,
    /// Deleted after the kubelet and daemon are gone (field order).
    _netns: Option<Netns>,
}

/// Where a cluster's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One node on loopback, on a daemon of its own.
    Loopback,
    /// This many nodes in namespaces of their own, each on a daemon of its own.
    Namespaced(usize),
    /// One node in containerd's namespace, on containerd 2.x.
    Containerd(NodeRuntime),
}

/// containerd's runtime on a containerd node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeRuntime {
    /// The `wasmpod` handler (`containerd-shim-wasmpod-v1`); runc is not installed.
    WasmpodShim,
    /// runc (`containerd-shim-runc-v2`), containerd's default.
    Runc,
}

/// The name of the node of [`Cluster::start_on_containerd`].
pub const CONTAINERD_NODE: &str = "wasmpod-containerd-node";

impl Node {
    /// The node's kubelet (and its daemon); the test fails if the node was killed.
    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet
            .as_ref()
            .unwrap_or_else(|| panic!("node {} was killed", self.name))
    }
}

/// The short node-failure timings of a multi-node cluster: the node lifecycle controller
/// looks every 2 s and takes a node whose kubelet has not renewed its lease for 10 s as
/// unreachable (its `NoExecute` taint then evicts pods after their `tolerationSeconds`).
/// The defaults (5 s, 50 s) would make a failover test idle for minutes.
const NODE_MONITOR: [&str; 2] = [
    "--node-monitor-period=2s",
    "--node-monitor-grace-period=10s",
];

/// The host bridge joining the namespaced nodes (a veth each), with the address the API
/// server listens on: the nodes reach the control plane and, by routes in their namespaces
/// (the "host-gw" way), each other's pod CIDRs over it, so the host needs no IP forwarding
/// and no routes. Deleted with the veths' host ends when dropped.
struct Switch {
    name: String,
    /// `10.99.<n>.0/24`, `<n>` from the pid (concurrent test processes stay apart); the host
    /// is `.1`, node `i` is `.<i + 2>`.
    prefix: [u8; 3],
    veths: Vec<String>,
}

impl Switch {
    fn create() -> Self {
        let pid = std::process::id();
        let sw = Switch {
            name: format!("wpc{pid}br"),
            prefix: [10, 99, (pid % 250) as u8],
            veths: Vec::new(),
        };
        run_ok(Command::new("ip").args(["link", "add", &sw.name, "type", "bridge"]));
        run_ok(
            Command::new("ip")
                .args(["addr", "add", &format!("{}/24", sw.host_ip())])
                .args(["dev", &sw.name]),
        );
        run_ok(Command::new("ip").args(["link", "set", &sw.name, "up"]));
        sw
    }

    fn host_ip(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.1")
    }

    fn node_ip(&self, i: usize) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.{}", i + 2)
    }

    /// Plugs namespace `ns` in as node `i` of `count`: a veth (`eth0` inside) with the
    /// node's IP, and a route to every other node's pod CIDR via that node's IP.
    fn plug(&mut self, ns: &Netns, i: usize, count: usize) {
        let veth = format!("wpc{}n{i}", std::process::id());
        run_ok(
            Command::new("ip")
                .args(["link", "add", &veth, "type", "veth"])
                .args(["peer", "name", "eth0", "netns", ns.name()]),
        );
        self.veths.push(veth.clone());
        run_ok(Command::new("ip").args(["link", "set", &veth, "master", &self.name, "up"]));
        let inside = |args: &[&str]| run_ok(Command::new("ip").args(["-n", ns.name()]).args(args));
        inside(&[
            "addr",
            "add",
            &format!("{}/24", self.node_ip(i)),
            "dev",
            "eth0",
        ]);
        inside(&["link", "set", "eth0", "up"]);
        for j in (0..count).filter(|&j| j != i) {
            inside(&["route", "add", &pod_cidr(j), "via", &self.node_ip(j)]);
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        for link in self.veths.iter().chain([&self.name]) {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Node `i`'s pod CIDR: kubelet's `podCIDR`, which wasmpod's node mode takes its pod IPs
/// from. Only the nodes' namespaces route them, so they cannot clash with the host's.
fn pod_cidr(i: usize) -> String {
    format!("10.244.{}.0/24", i + 1)
}

/// Runs `cmd` (bounded) and fails the test unless it succeeds.
fn run_ok(cmd: &mut Command) {
    let out = output_within(cmd, 120);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

impl Cluster {
    /// One node on loopback (named [`CLUSTER_NODE`]): starts etcd, the API server (waits
    /// for `/readyz`), the controller manager and the scheduler, then the kubelet; returns
    /// once the node is Ready and the `default` service account exists (pods are refused
    /// before it does).
    pub async fn start() -> Self {
        Self::launch(Layout::Loopback).await
    }

    /// [`Cluster::start`] with `count` nodes (`wasmpod-node-1` …), each a kubelet and
    /// daemon of its own in a network namespace of its own (see `Switch`), node `i` on
    /// pod CIDR `10.244.<i + 1>.0/24`; the controller manager has the short node-failure
    /// timings of `NODE_MONITOR`.
    pub async fn start_nodes(count: usize) -> Self {
        Self::launch(Layout::Namespaced(count)).await
    }

    /// [`Cluster::start`] with one node, [`CONTAINERD_NODE`], whose runtime is containerd
    /// 2.x with the `wasmpod` handler (`containerd-shim-wasmpod-v1`, which starts a
    /// `wasmpod serve` for the node) and CNI pod networks; kubelet runs in containerd's
    /// network namespace, where containerd's streaming server listens, plugged into the
    /// bridge as the namespaced nodes are. [`Cluster::containerd`] is that containerd.
    pub async fn start_on_containerd() -> Self {
        Self::launch(Layout::Containerd(NodeRuntime::WasmpodShim)).await
    }

    /// [`Cluster::start_on_containerd`] with runc as containerd's only runtime: the peer a
    /// benchmark compares wasmpod's nodes with (the native `idle` image runs there).
    pub async fn start_on_runc() -> Self {
        Self::launch(Layout::Containerd(NodeRuntime::Runc)).await
    }

    async fn launch(layout: Layout) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let mut switch = (layout != Layout::Loopback).then(Switch::create);
        // The API server listens where the kubelets reach it: the bridge, or loopback.
        let api_host = switch
            .as_ref()
            .map_or("127.0.0.1".to_owned(), Switch::host_ip);
        let dir = tempfile::tempdir().expect("creating the cluster's directory");
        let d = dir.path();
        let mut procs = Vec::new();
        let mut spawn = |name: &'static str, cmd: &mut Command| {
            let log = d.join(format!("{name}.log"));
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"));
            procs.push(Proc { name, child, log });
        };

        let (client, peer) = (free_port(), free_port());
        spawn(
            "etcd",
            Command::new("etcd")
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}")),
        );

        // The service account signing key (the API server signs and checks tokens with it;
        // the controller manager's tokens controller needs it too).
        let (key, public) = (d.join("sa.key"), d.join("sa.pub"));
        run_ok(
            Command::new("openssl")
                .arg("genrsa")
                .arg("-out")
                .arg(&key)
                .arg("2048"),
        );
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public),
        );
        let tokens = d.join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,system:masters\n")).unwrap();
        let api_port = free_port();
        let server = format!("https://{api_host}:{api_port}");
        // The API server's serving certificate is self-signed (`--cert-dir`): not verified.
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: admin, user: {{token: {TOKEN}}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: c, user: admin, namespace: default}}}}]\n\
                 current-context: c\n"
            ),
        )
        .unwrap();
        let api_certs = d.join("apiserver-certs");
        spawn(
            "kube-apiserver",
            Command::new(peers::kube("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
                .arg(format!("--bind-address={api_host}"))
                .arg(format!("--secure-port={api_port}"))
                .arg("--cert-dir")
                .arg(&api_certs)
                .arg("--token-auth-file")
                .arg(&tokens)
                .args(["--authorization-mode=Node,RBAC"])
                .args(["--service-cluster-ip-range=10.96.0.0/24"])
                .args(["--service-account-issuer=https://kubernetes.default.svc"])
                .arg("--service-account-key-file")
                .arg(&public)
                .arg("--service-account-signing-key-file")
                .arg(&key)
                // kubectl logs/exec/port-forward: the API server dials kubelet at the node's
                // IP, or for the loopback node by its name, which resolves to loopback (see
                // `CLUSTER_NODE`); no kubelet CA is configured, so kubelet's self-signed
                // certificate is not verified.
                .arg(match layout {
                    Layout::Loopback => "--kubelet-preferred-address-types=Hostname",
                    _ => "--kubelet-preferred-address-types=InternalIP",
                }),
        );
        let mut c = Cluster {
            nodes: Vec::new(),
            procs,
            kubeconfig,
            dir,
            _switch: None,
            _turn: turn,
        };
        match (layout, &mut switch) {
            (Layout::Namespaced(count), Some(sw)) => {
                // Every namespace is plugged in before any kubelet starts: each routes to
                // all the others' pod CIDRs.
                let pid = std::process::id();
                let spaces: Vec<Netns> = (0..count)
                    .map(|i| {
                        let ns = Netns::create(&format!("wasmpod-cluster-{pid}-{i}"))
                            .expect("creating a node's network namespace (needs root)");
                        sw.plug(&ns, i, count);
                        ns
                    })
                    .collect();
                for (i, ns) in spaces.into_iter().enumerate() {
                    let name = format!("{NODE}-{}", i + 1);
                    let node = c.register(name, sw, i, ns.name(), None).await;
                    c.nodes.push(Node {
                        _netns: Some(ns),
                        ..node
                    });
                }
            }
            (Layout::Containerd(runtime), Some(sw)) => {
                let options = match runtime {
                    NodeRuntime::WasmpodShim => Options::wasmpod_cni(),
                    NodeRuntime::Runc => Options::default().cni(true),
                };
                let containerd = options.flavour(Flavour::V2).start().await;
                let ns = containerd
                    .netns()
                    .expect("containerd with CNI has a namespace");
                sw.plug(ns, 0, 1);
                let node = c
                    .register(
                        CONTAINERD_NODE.to_owned(),
                        sw,
                        0,
                        ns.name(),
                        Some(&containerd.socket),
                    )
                    .await;
                c.nodes.push(Node {
                    containerd: Some(containerd),
                    ..node
                });
            }
            _ => {
                let kubelet = Kubelet::register(Registration {
                    kubeconfig: &c.kubeconfig,
                    name: CLUSTER_NODE,
                    net: None,
                    endpoint: None,
                })
                .await;
                c.nodes.push(Node {
                    name: CLUSTER_NODE.to_owned(),
                    kubelet: Some(kubelet),
                    ip: None,
                    pod_cidr: None,
                    containerd: None,
                    _netns: None,
                });
            }
        }
        c._switch = switch;
        poll("the API server's /readyz", || async {
            match c.kubectl(&["get", "--raw", "/readyz"]) {
                (0, out, _) if out.trim() == "ok" => Ok(()),
                other => Err(format!("{other:?}\n{}", c.logs_tail())),
            }
        })
        .await;

        let d = c.dir.path().to_owned();
        let kc = c.kubeconfig.clone();
        let (cm_port, sched_port) = (free_port(), free_port());
        let mut spawn = |name: &'static str, cmd: &mut Command| {
            let log = d.join(format!("{name}.log"));
            let child = cmd
                .arg("--kubeconfig")
                .arg(&kc)
                .args(["--bind-address=127.0.0.1", "--leader-elect=false"])
                // Room for the scale benchmark's 1,000-pod Deployments (defaults: 20 or 50).
                .args(["--kube-api-qps=100", "--kube-api-burst=200"])
                .arg("--cert-dir")
                .arg(d.join(format!("{name}-certs")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"));
            c.procs.push(Proc { name, child, log });
        };
        spawn(
            "kube-controller-manager",
            Command::new(peers::kube("kube-controller-manager"))
                .arg(format!("--secure-port={cm_port}"))
                .args(["--controllers=*", "--use-service-account-credentials=false"])
                .arg("--service-account-private-key-file")
                .arg(d.join("sa.key"))
                .arg("--root-ca-file")
                .arg(api_certs.join("apiserver.crt"))
                .args(if let Layout::Namespaced(_) = layout {
                    &NODE_MONITOR[..]
                } else {
                    &[]
                }),
        );
        spawn(
            "kube-scheduler",
            Command::new(peers::kube("kube-scheduler")).arg(format!("--secure-port={sched_port}")),
        );

        let c = c;
        for node in &c.nodes {
            poll(&format!("node {} to be Ready", node.name), || async {
                let status = c.node_status(&node.name)?;
                if ready(&status) {
                    Ok(())
                } else {
                    Err(format!("{status}\n{}", node.kubelet().log_tail()))
                }
            })
            .await;
        }
        poll("the default service account", || async {
            c.json(&["get", "serviceaccount", "default"]).map(drop)
        })
        .await;
        c
    }

    /// Starts the kubelet of node `name`, number `i` on switch `sw`, in namespace `netns`
    /// (plugged in already), on its own daemon or on the CRI socket `endpoint`.
    async fn register(
        &self,
        name: String,
        sw: &Switch,
        i: usize,
        netns: &str,
        endpoint: Option<&Path>,
    ) -> Node {
        let (ip, cidr) = (sw.node_ip(i), pod_cidr(i));
        let kubelet = Kubelet::register(Registration {
            kubeconfig: &self.kubeconfig,
            name: &name,
            net: Some(NodeNet {
                netns,
                ip: &ip,
                pod_cidr: &cidr,
            }),
            endpoint,
        })
        .await;
        Node {
            name,
            kubelet: Some(kubelet),
            ip: Some(ip),
            pod_cidr: Some(cidr),
            containerd: None,
            _netns: None,
        }
    }

    /// The containerd of a cluster made by [`Cluster::start_on_containerd`].
    pub fn containerd(&self) -> &Containerd {
        self.nodes[0]
            .containerd
            .as_ref()
            .expect("a cluster on containerd")
    }

    /// The processes of the first node's runtime: its `wasmpod serve`; or containerd, the
    /// daemon its wasmpod shim started and its runc shims (not the containers' processes:
    /// see [`Containerd::container_pids`]).
    pub fn runtime_pids(&self) -> Vec<u32> {
        let node = &self.nodes[0];
        match &node.containerd {
            Some(c) => c.pids().into_iter().chain(c.wasmpod_pid()).collect(),
            None => node.kubelet().daemon_pid().into_iter().collect(),
        }
    }

    /// The pid of control-plane process `name` (`etcd`, `kube-apiserver`, …).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// The first node's kubelet: the one-node cluster's only one.
    pub fn kubelet(&self) -> &Kubelet {
        self.nodes[0].kubelet()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Kills node `name` as a machine failure would: its kubelet and daemon (and with the
    /// daemon every pod on it) get SIGKILL; its namespace stays, with nothing listening.
    pub fn kill_node(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        drop(node.kubelet.take());
    }

    /// Node `name`'s `status` in the API, or what went wrong (for polls).
    pub fn node_status(&self, name: &str) -> Result<Value, String> {
        Ok(self.json(&["get", "node", name])?["status"].take())
    }

    /// `kubectl --kubeconfig <ours> <args>` (bounded): (exit code, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        let out = output_within(
            Command::new(peers::kube("kubectl"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            120,
        );
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("kubectl {args:?} was killed: {out:?}"));
        (code, text(&out.stdout), text(&out.stderr))
    }

    /// [`Cluster::kubectl`] that must succeed: its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        match self.kubectl(args) {
            (0, out, _) => out,
            other => panic!("kubectl {args:?}: {other:?}\n{}", self.logs_tail()),
        }
    }

    /// `kubectl <args> -o json`, parsed, or what went wrong (for polls).
    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        match self.kubectl(&all) {
            (0, out, _) => serde_json::from_str(&out).map_err(|e| format!("{e}: {out}")),
            other => Err(format!("{other:?}")),
        }
    }

    /// Writes `yaml` to `<name>.yaml` in the cluster's dir and `kubectl apply`s it.
    pub fn apply(&self, name: &str, yaml: &str) {
        let file = crate::manifest_file(self.dir.path(), &format!("{name}.yaml"), yaml);
        self.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// `kubectl port-forward <target> :<port>` in the background: the local port it
    /// forwards from once it says so, and the forwarder (killed when dropped).
    pub fn port_forward(&self, target: &str, port: u16) -> PortForward {
        let mut child = Command::new(peers::kube("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["port-forward", "--address=127.0.0.1", target])
            .arg(format!(":{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kubectl port-forward");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads on after the port line too: a closed pipe would kill the forwarder.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // "Forwarding from 127.0.0.1:<local> -> <port>"
                let local = line
                    .strip_prefix("Forwarding from 127.0.0.1:")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(p) = local {
                    let _ = tx.send(p);
                }
            }
        });
        let mut pf = PortForward { child, local: 0 };
        pf.local = rx
            .recv_timeout(Duration::from_secs(WAIT_SECS))
            .unwrap_or_else(|_| panic!("kubectl port-forward {target} never said its port"));
        pf
    }

    /// What users do with a running web pod `pod` (a `web` container serving `/msg` with
    /// `message` on :8080 and a toolbox `shell` container), through the API server:
    /// `kubectl exec -- sh -c 'echo hi; exit 3'` (WebSocket to the API server, SPDY on to
    /// kubelet: output and exit code kept), `kubectl port-forward` + GET /msg, `kubectl logs`
    /// of web, then `kubectl delete` until the API has no such pod.
    pub async fn serve_exec_log_delete(&self, pod: &str, message: &str) {
        let (code, out, err) = self.kubectl(&[
            "exec",
            pod,
            "-c",
            "shell",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ]);
        assert_eq!((code, out.as_str()), (3, "hi\n"), "stderr: {err}");

        // httpd may not listen yet: retried through one forwarder.
        let pf = self.port_forward(&format!("pod/{pod}"), 8080);
        let url = format!("http://127.0.0.1:{}/msg", pf.local);
        let got = poll("GET /msg through kubectl port-forward", || async {
            match crate::curl(&url).await {
                (200, body) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(got.trim(), message);
        drop(pf);

        let logs = self.kubectl_ok(&["logs", pod, "-c", "web"]);
        for line in ["httpd: listening on", "GET /msg 200"] {
            assert!(logs.contains(line), "no {line:?} in web's log:\n{logs}");
        }

        self.kubectl_ok(&["delete", "pod", pod, "--wait=false"]);
        poll(&format!("{pod} to leave the API"), || async {
            match self.kubectl(&["get", "pod", pod]) {
                (1, _, err) if err.contains("NotFound") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// The last lines of every control-plane log, for failure messages.
    pub fn logs_tail(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, tail(&p.log, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether a node's `status` has condition Ready True.
pub fn ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|x| x["type"] == "Ready" && x["status"] == "True")
    })
}

/// The last `n` lines of the file at `path`.
fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A background `kubectl port-forward`; `local` is the loopback port it listens on.
pub struct PortForward {
    child: Child,
    pub local: u16,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
