//! The one-node cluster with containerd as the node's runtime (issue 15, part 2): the real
//! kubelet on containerd 2.x, whose `wasmpod` handler is `containerd-shim-wasmpod-v1`, and
//! Wasm pods asked for with `runtimeClassName: wasmpod` through the RuntimeClass the project
//! ships (`dist/runtimeclass.yaml`), exactly as the README tells users to. kubectl's logs,
//! exec and port-forward go API server → kubelet → containerd's streaming server → the
//! shim's daemon. The harness is `Cluster::start_on_containerd` in `tests/src/cluster.rs`.

use std::path::Path;

use wasmpod_tests::cluster::{Cluster, CONTAINERD_NODE};
use wasmpod_tests::containerd::{TOOLBOX_P1, TOOLBOX_P2, WASMPOD_HANDLER};
use wasmpod_tests::curl_in;
use wasmpod_tests::kubelet::poll;

/// What the init container leaves in the pod's emptyDir for httpd to serve.
const MESSAGE: &str = "served through the wasmpod shim";

/// A Wasm pod of the RuntimeClass: an init container writes the message, httpd (p2)
/// serves it on :8080, a shell (p1) idles for execs.
fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\
         \n  runtimeClassName: wasmpod\n  automountServiceAccountToken: false\
         \n  terminationGracePeriodSeconds: 2\n  volumes: [{{name: share, emptyDir: {{}}}}]\
         \n  initContainers:\
         \n  - {{name: init, image: {TOOLBOX_P1}, imagePullPolicy: Never,\
         \n     command: [sh, -c, \"echo {MESSAGE} > /data/msg\"],\
         \n     volumeMounts: [{{name: share, mountPath: /data}}]}}\
         \n  containers:\
         \n  - {{name: web, image: {TOOLBOX_P2}, imagePullPolicy: Never,\
         \n     command: [httpd, -p, \"0.0.0.0:8080\", -h, /data],\
         \n     volumeMounts: [{{name: share, mountPath: /data}}]}}\
         \n  - {{name: shell, image: {TOOLBOX_P1}, imagePullPolicy: Never, command: [sleep, inf]}}\n"
    )
}

/// A Deployment of `replicas` idle Wasm pods of the RuntimeClass.
fn deployment(replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: idlers}}\nspec:\
         \n  replicas: {replicas}\n  selector: {{matchLabels: {{app: idlers}}}}\n  template:\
         \n    metadata: {{labels: {{app: idlers}}}}\n    spec:\
         \n      runtimeClassName: wasmpod\n      automountServiceAccountToken: false\
         \n      terminationGracePeriodSeconds: 2\
         \n      containers: [{{name: idle, image: {TOOLBOX_P1}, imagePullPolicy: Never,\
         \n                    command: [sleep, inf]}}]\n"
    )
}

/// Pods of the RuntimeClass run through containerd on the shim's daemon: Running with the
/// IP containerd reports (and reachable there), logs, exec with its exit code,
/// port-forward, delete; a Deployment of them scales up and back to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_pods_of_the_runtime_class_run_on_containerd() {
    let c = &Cluster::start_on_containerd().await;
    let k = c.kubelet();
    let ctrd = c.containerd();
    let node = c.json(&["get", "node", CONTAINERD_NODE]).unwrap();
    let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(runtime.starts_with("containerd://"), "{}", node["status"]);

    // The shipped RuntimeClass, and the node label its nodeSelector asks for.
    let runtime_class = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/runtimeclass.yaml");
    c.kubectl_ok(&["apply", "-f", runtime_class.to_str().unwrap()]);
    c.kubectl_ok(&["label", "node", CONTAINERD_NODE, "wasmpod.io/enabled=true"]);

    c.apply("site", &pod("site"));
    let p = poll("site to be Running", || async {
        let p = c.json(&["get", "pod", "site"])?;
        if p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string() {
            Ok(p)
        } else {
            let init = c.kubectl(&["logs", "site", "-c", "init"]);
            Err(format!("{}\ninit's log: {init:?}", p["status"]))
        }
    })
    .await;
    let ip = p["status"]["podIP"].as_str().unwrap().to_owned();
    assert_eq!(
        ip,
        k.pod_ip("site").await,
        "the API's IP against containerd's"
    );
    assert!(
        ctrd.in_pod_subnet(&ip),
        "{ip} is not on containerd's CNI subnet"
    );
    let sandboxes = k.sandboxes("site").await;
    assert!(
        sandboxes
            .iter()
            .all(|s| s.runtime_handler == WASMPOD_HANDLER),
        "{sandboxes:?}"
    );
    assert!(ctrd.wasmpod_pid().is_some(), "the shim started no daemon");

    // The pod's IP answers inside the node's network (where CNI's bridge is).
    let netns = ctrd.netns().unwrap().path();
    let url = format!("http://{ip}:8080/msg");
    let got = poll("GET /msg on the pod IP", || async {
        match curl_in(Some(&netns), &url).await {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(got.trim(), MESSAGE);

    c.serve_exec_log_delete("site", MESSAGE).await;
    poll("site's containers to stop in containerd", || async {
        let mut left = Vec::new();
        for name in ["web", "shell"] {
            left.extend(
                k.containers("site", name)
                    .await
                    .into_iter()
                    .filter(|c| c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32),
            );
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;

    const REPLICAS: usize = 3;
    c.apply("idlers", &deployment(REPLICAS));
    let ips = poll("the replicas Running", || async {
        let list = c.json(&["get", "pods", "-l", "app=idlers"])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ips: Vec<String> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
            .collect();
        if ips.len() == REPLICAS && items.len() == REPLICAS {
            Ok(ips)
        } else {
            Err(format!("{ips:?} of {} pods\n{}", items.len(), k.log_tail()))
        }
    })
    .await;
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), REPLICAS, "replicas share IPs: {ips:?}");

    c.kubectl_ok(&["scale", "deployment", "idlers", "--replicas=0"]);
    poll("the replicas to leave the API", || async {
        let list = c.json(&["get", "pods", "-l", "app=idlers"])?;
        match list["items"].as_array() {
            Some(items) if items.is_empty() => Ok(()),
            _ => Err(list.to_string()),
        }
    })
    .await;
    poll("the replicas' sandboxes to stop in containerd", || async {
        let ready: Vec<_> = k
            .sandboxes_labelled("app", "idlers")
            .await
            .into_iter()
            .filter(|s| s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32)
            .collect();
        if ready.is_empty() {
            Ok(())
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await;
}
