//! A one-node Kubernetes cluster on the real `wasmpod serve` (issue 15, part 2): Debian's
//! etcd, the real kube-apiserver, kube-scheduler and kube-controller-manager built by
//! `scripts/peers`, and the kubelet harness (`src/kubelet.rs`) registered with the API
//! server. Everything listens on free loopback ports and lives in one temp dir; every
//! process is killed when the cluster is dropped. Tests drive it with the real `kubectl`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

use crate::kubelet::{poll, Kubelet, CLUSTER_NODE, WAIT_SECS};
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

/// etcd, the API server, scheduler and controller manager, and a kubelet on a daemon.
pub struct Cluster {
    /// Dropped after `Drop::drop` killed the control plane; its own drop kills kubelet.
    pub kubelet: Kubelet,
    /// In start order; killed in reverse.
    procs: Vec<Proc>,
    /// `kubectl`'s kubeconfig (also every component's).
    pub kubeconfig: PathBuf,
    pub dir: TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// Runs `cmd` (bounded) and fails the test unless it succeeds.
fn run_ok(cmd: &mut Command) {
    let out = output_within(cmd, 120);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

impl Cluster {
    /// Starts etcd, the API server (waits for `/readyz`), the controller manager and the
    /// scheduler, then the kubelet; returns once the node is Ready and the `default`
    /// service account exists (pods are refused before it does).
    pub async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
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
        let server = format!("https://127.0.0.1:{api_port}");
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
                .arg("--bind-address=127.0.0.1")
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
                // kubectl logs/exec/port-forward: the API server dials kubelet by the node's
                // name, which resolves to loopback (see `CLUSTER_NODE`); no kubelet CA is
                // configured, so kubelet's self-signed certificate is not verified.
                .args(["--kubelet-preferred-address-types=Hostname"]),
        );
        let mut c = Cluster {
            kubelet: Kubelet::start_with(Some(&kubeconfig)).await,
            procs,
            kubeconfig,
            dir,
            _turn: turn,
        };
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
                .arg(api_certs.join("apiserver.crt")),
        );
        spawn(
            "kube-scheduler",
            Command::new(peers::kube("kube-scheduler")).arg(format!("--secure-port={sched_port}")),
        );

        let c = c;
        poll("the node to be Ready", || async {
            let node = c.json(&["get", "node", CLUSTER_NODE])?;
            let ready = node["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| x["type"] == "Ready" && x["status"] == "True")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("{}\n{}", node["status"], c.kubelet.log_tail()))
            }
        })
        .await;
        poll("the default service account", || async {
            c.json(&["get", "serviceaccount", "default"]).map(drop)
        })
        .await;
        c
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

    /// The last lines of every control-plane log, for failure messages.
    pub fn logs_tail(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, tail(&p.log, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
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
