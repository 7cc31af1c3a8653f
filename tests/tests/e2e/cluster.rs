//! A one-node Kubernetes cluster on the real `wasmpod serve` (issue 15, part 2): the node
//! registers with the real API server and runs Wasm pods the scheduler binds to it, which
//! users reach with the real `kubectl` (logs, exec, cp, port-forward through the API
//! server), and a Deployment's replicas come and go. The harness is `tests/src/cluster.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use wasmpod_tests::cluster::Cluster;
use wasmpod_tests::kubelet::{poll, CLUSTER_NODE};

/// The toolbox with sockets (httpd) and the shell.
const TOOLBOX: &str = "wasmpod.local/toolbox:p2";
/// The toolbox for shells: a preview1 module's exit codes are exact.
const SHELL: &str = "wasmpod.local/toolbox:p1";
/// What the init container puts into the shared emptyDir.
const MESSAGE: &str = "written by the init container";

/// A container of `image` running `command` (a YAML flow list) with the emptyDir `share` at
/// /data, indented for a pod spec at `indent` spaces.
fn container(indent: usize, name: &str, image: &str, command: &str) -> String {
    let pad = " ".repeat(indent);
    format!(
        "\n{pad}- name: {name}\n{pad}  image: {image}\n{pad}  imagePullPolicy: Never\
         \n{pad}  command: {command}\n{pad}  volumeMounts: [{{name: share, mountPath: /data}}]"
    )
}

/// httpd serving the emptyDir on the pod's port 8080.
fn web(indent: usize) -> String {
    container(
        indent,
        "web",
        TOOLBOX,
        "[httpd, -p, \"0.0.0.0:8080\", -h, /data]",
    )
}

/// A pod spec's common fields at `indent`: the emptyDir, no service account token (a Wasm
/// guest has no use for one), and a short grace period so deletions do not idle.
fn spec_head(indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!(
        "\n{pad}automountServiceAccountToken: false\n{pad}terminationGracePeriodSeconds: 2\
         \n{pad}volumes: [{{name: share, emptyDir: {{}}}}]"
    )
}

/// The node registered, is Ready, and says its runtime is wasmpod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_with_wasmpod_as_its_runtime() {
    let c = Cluster::start().await;
    let node = c.json(&["get", "node", CLUSTER_NODE]).unwrap();
    let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(runtime.starts_with("wasmpod://"), "{}", node["status"]);
    let ready = &node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Ready")
        .unwrap()["status"];
    assert_eq!(ready, "True");
}

/// A Pod applied through the API server runs on wasmpod: its IP is the daemon's, its
/// logs, exec and port-forward go through the API server to kubelet, and deleting it
/// removes it from the API and from the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_through_the_api_server() {
    let c = &Cluster::start().await;
    let k = c.kubelet();
    c.apply(
        "site",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: site}}\nspec:{}\
             \n  initContainers:{}\n  containers:{}{}\n",
            spec_head(2),
            container(
                2,
                "init",
                SHELL,
                &format!("[sh, -c, \"echo {MESSAGE} > /data/msg\"]")
            ),
            web(2),
            container(2, "shell", SHELL, "[sleep, inf]"),
        ),
    );
    let pod = poll("site to be Running", || async {
        let p = c.json(&["get", "pod", "site"])?;
        if p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string() {
            Ok(p)
        } else {
            Err(format!("{}\n{}", p["status"], k.log_tail()))
        }
    })
    .await;
    assert_eq!(pod["spec"]["nodeName"], CLUSTER_NODE);
    assert_eq!(
        pod["status"]["podIP"].as_str().unwrap(),
        k.pod_ip("site").await,
        "the API's pod IP against the daemon's"
    );

    c.serve_exec_log_delete("site", MESSAGE).await;
    poll("site's sandbox to leave the daemon", || async {
        let left = k.sandboxes("site").await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

/// A Deployment's 3 replicas run as 3 Wasm pods with distinct IPs (each the daemon's);
/// scaled to 0, none is left in the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scales_up_and_down() {
    let c = &Cluster::start().await;
    let k = c.kubelet();
    c.apply(
        "trio",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: trio}}\nspec:\
             \n  replicas: 3\n  selector: {{matchLabels: {{app: trio}}}}\n  template:\
             \n    metadata: {{labels: {{app: trio}}}}\n    spec:{}\n      containers:{}\n",
            spec_head(6),
            web(6),
        ),
    );
    let pods = poll("3 replicas Running", || async {
        let list = c.json(&["get", "pods", "-l", "app=trio"])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let running: Vec<(String, String)> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["status"]["podIP"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if running.len() == 3 && items.len() == 3 {
            Ok(running)
        } else {
            Err(format!(
                "{running:?} of {} pods\n{}",
                items.len(),
                k.log_tail()
            ))
        }
    })
    .await;
    let mut ips: Vec<&str> = pods.iter().map(|(_, ip)| ip.as_str()).collect();
    for (name, ip) in &pods {
        assert_eq!(
            *ip,
            k.pod_ip(name).await,
            "{name}: the API's IP against the daemon's"
        );
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "replicas share IPs: {pods:?}");

    c.kubectl_ok(&["scale", "deployment", "trio", "--replicas=0"]);
    poll("the replicas to leave the API", || async {
        let list = c.json(&["get", "pods", "-l", "app=trio"])?;
        match list["items"].as_array() {
            Some(items) if items.is_empty() => Ok(()),
            _ => Err(list.to_string()),
        }
    })
    .await;
    poll("the replicas to leave the daemon", || async {
        let left = k.sandboxes_labelled("app", "trio").await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

/// Every file under `root` (recursively) with its bytes, by path relative to `root`.
fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                files.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
            }
        }
    }
    files.sort();
    files
}

/// `kubectl cp` both ways, through the toolbox's `tar`: a local tree (a binary file bigger
/// than tar's copy buffer, nested directories, a name past ustar's 100 bytes, which Go's
/// archive/tar sends as a pax header) goes into the pod's emptyDir (`tar -xmf - -C /data`
/// reading exec's stdin), is read there, and comes back out (`tar cf - /data/x`, its long
/// name as a GNU record) byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cp_copies_files_in_and_out() {
    let c = &Cluster::start().await;
    let k = c.kubelet();
    c.apply(
        "files",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: files}}\nspec:{}\n  containers:{}\n",
            spec_head(2),
            container(2, "shell", SHELL, "[sleep, inf]"),
        ),
    );
    poll("files to be Running", || async {
        let p = c.json(&["get", "pod", "files"])?;
        if p["status"]["phase"] == "Running" {
            Ok(())
        } else {
            Err(format!("{}\n{}", p["status"], k.log_tail()))
        }
    })
    .await;

    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    let long = format!("{}.txt", "n".repeat(120));
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 256) as u8).collect();
    fs::write(src.join("sub/b.bin"), &binary).unwrap();
    fs::write(src.join("sub/deeper").join(&long), "long name\n").unwrap();

    // In: /data/x does not exist, so the tree lands there under that name.
    let (code, out, err) =
        c.kubectl(&["cp", src.to_str().unwrap(), "files:/data/x", "-c", "shell"]);
    assert_eq!(code, 0, "kubectl cp in: {out}{err}\n{}", k.log_tail());
    let long_path = format!("/data/x/sub/deeper/{long}");
    let got = c.kubectl_ok(&[
        "exec",
        "files",
        "-c",
        "shell",
        "--",
        "cat",
        "/data/x/a.txt",
        &long_path,
    ]);
    assert_eq!(got, "alpha\nlong name\n");
    let size = c.kubectl_ok(&[
        "exec",
        "files",
        "-c",
        "shell",
        "--",
        "wc",
        "-c",
        "/data/x/sub/b.bin",
    ]);
    assert_eq!(size.split_whitespace().next(), Some("200000"), "{size}");

    // Out, into a directory that does not exist yet.
    let back = local.path().join("back");
    let (code, out, err) =
        c.kubectl(&["cp", "files:/data/x", back.to_str().unwrap(), "-c", "shell"]);
    assert_eq!(code, 0, "kubectl cp out: {out}{err}\n{}", k.log_tail());
    let want = files_under(&src);
    assert_eq!(want.len(), 3);
    let got = files_under(&back);
    assert_eq!(
        got.iter().map(|(p, b)| (p, b.len())).collect::<Vec<_>>(),
        want.iter().map(|(p, b)| (p, b.len())).collect::<Vec<_>>(),
    );
    assert!(got == want, "the files came back changed");
}
