//! The real kubelet, standalone (static pods, no API server), running Wasm pods on the real
//! `wasmpod serve` (issue 15, part 1): what a node does with wasmpod as its runtime — shared
//! volumes and localhost, probes and restarts, kubelet's exec/attach/port-forward proxy, pod
//! removal, a runtime restart under a running kubelet, and kubelet's stats and pod views.
//! The harness is `tests/src/kubelet.rs`.

use wasmpod_tests::kubelet::{encode, kube_stream, poll, Kubelet, NODE};
use wasmpod_tests::{curl, pod_yaml};

/// The toolbox with sockets (httpd) and the shell.
const TOOLBOX: &str = "wasmpod.local/toolbox:p2";
/// The toolbox for shells: a preview1 module's exit codes are exact (a preview2 component's
/// are only success or failure), and a shell needs no sockets.
const SHELL: &str = "wasmpod.local/toolbox:p1";
const NETPROBE: &str = "wasmpod.local/netprobe:p2";
/// What the writer container puts into the shared emptyDir.
const MESSAGE: &str = "shared through the emptyDir\n";
/// kubelet's stats summary of CPU and memory only (see `kubelet_sees_the_pod_and_its_stats`).
const SUMMARY: &str = "/stats/summary?only_cpu_and_memory=true";
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// A container of `image` running `command` (a YAML flow list), mounting the pod's emptyDir
/// `share` at /data; `extra` adds fields (each line indented as a container field).
fn container(name: &str, image: &str, command: &str, extra: &str) -> String {
    format!(
        "\n    - name: {name}\n      image: {image}\n      imagePullPolicy: Never\
         \n      command: {command}\n      volumeMounts: [{{name: share, mountPath: /data}}]{extra}"
    )
}

/// A static pod `name` with `restart_policy`, the emptyDir `share` and `containers`.
fn pod(name: &str, restart_policy: &str, containers: &[String]) -> String {
    pod_yaml(
        name,
        restart_policy,
        &format!(
            "\n  volumes: [{{name: share, emptyDir: {{}}}}]\n  containers:{}\n",
            containers.concat()
        ),
    )
}

/// httpd serving the emptyDir on the pod's port 8080 (every address of the pod).
fn web(extra: &str) -> String {
    container(
        "web",
        TOOLBOX,
        "[httpd, -p, \"0.0.0.0:8080\", -h, /data]",
        extra,
    )
}

/// A shell writing [`MESSAGE`] into the emptyDir, then staying up.
fn writer() -> String {
    container(
        "writer",
        SHELL,
        &format!(
            "[sh, -c, \"echo {} > /data/msg; sleep inf\"]",
            MESSAGE.trim()
        ),
        "",
    )
}

/// A netprobe echo server on `port`: a container that stays up with the HTTP client
/// (`tcp-client`) in its image, for execs.
fn echo(name: &str, port: u16, extra: &str) -> String {
    container(
        name,
        NETPROBE,
        &format!("[netprobe, tcp-echo, \"0.0.0.0:{port}\"]"),
        extra,
    )
}

/// The `/run` command making netprobe in `container` GET `path` from localhost:8080: the
/// request's words are tab-separated (kubelet splits `cmd` at spaces; httpd splits at any
/// whitespace) and it ends with the blank line netprobe's own newline completes.
fn get_over_localhost(path: &str) -> String {
    format!("netprobe tcp-client localhost:8080 GET\t{path}\n")
}

/// Two Wasm containers of one static pod share an emptyDir and talk over the pod's
/// localhost: httpd serves the file the writer put there to netprobe in a third container;
/// the pod gets an IP (PodSandboxStatus) serving the same file to the host, and httpd's log
/// reads through kubelet's `/containerLogs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pod_shares_an_empty_dir_and_localhost() {
    let k = &Kubelet::start().await;
    let pod = &k.add_pod(
        "pair",
        &pod(
            "pair",
            "Always",
            &[web(""), writer(), echo("client", 9000, "")],
        ),
    );
    for c in ["web", "writer", "client"] {
        k.wait_running(pod, c).await;
    }
    let ip = k.pod_ip(pod).await;
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "PodSandboxStatus gave no IPv4 address: {ip:?}"
    );

    // The writer may not have written yet, and httpd may not listen yet: retried.
    let reply = poll(
        "client to GET /msg from web over localhost",
        || async move {
            match k.run(pod, "client", &get_over_localhost("/msg")).await {
                (200, out) if out.contains("HTTP/1.1 200") => Ok(out),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(reply.trim(), "reply: HTTP/1.1 200 OK");
    // The 200 was the file's: a path that is not there is a 404.
    let (status, out) = k.run(pod, "client", &get_over_localhost("/absent")).await;
    assert_eq!((status, out.trim()), (200, "reply: HTTP/1.1 404 Not Found"));

    assert_eq!(
        curl(&format!("http://{ip}:8080/msg")).await,
        (200, MESSAGE.to_owned()),
        "the pod IP from the host"
    );

    let (status, logs) = k
        .get(&[], &format!("/containerLogs/default/{pod}/web"))
        .await;
    assert_eq!(status, 200, "{logs}");
    for line in ["httpd: listening on", "GET /msg 200", "GET /absent 404"] {
        assert!(logs.contains(line), "no {line:?} in web's log:\n{logs}");
    }
}

/// Probes: an exec liveness probe that starts failing (the container deletes the file it
/// checks) makes kubelet restart the container; httpGet and tcpSocket readiness probes against
/// the pod IP make their containers Ready in `/pods`, and one against a port nobody serves
/// keeps its container unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_restart_and_ready_containers() {
    let k = &Kubelet::start().await;
    let probe = |kind: &str, what: &str| {
        format!("\n      {kind}: {{{what}, periodSeconds: 1, failureThreshold: 1}}")
    };
    let flaky = container(
        "flaky",
        TOOLBOX,
        "[sh, -c, \"touch /data/healthy; sleep 5; rm /data/healthy; sleep inf\"]",
        &probe("livenessProbe", "exec: {command: [cat, /data/healthy]}"),
    );
    let pod = &k.add_pod(
        "probed",
        &pod(
            "probed",
            "Always",
            &[
                flaky,
                web(&probe("readinessProbe", "httpGet: {path: /, port: 8080}")),
                echo(
                    "echo",
                    9000,
                    &probe("readinessProbe", "tcpSocket: {port: 9000}"),
                ),
                echo(
                    "unready",
                    9001,
                    &probe("readinessProbe", "tcpSocket: {port: 9002}"),
                ),
            ],
        ),
    );
    let restarts = poll("kubelet to restart flaky", || async move {
        let st = k.container_status(pod, "flaky").await?;
        match st["restartCount"].as_u64() {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(st.to_string()),
        }
    })
    .await;
    assert!(restarts >= 1);
    // The daemon saw it too: a container of a later attempt.
    let attempts: Vec<u32> = k
        .containers(pod, "flaky")
        .await
        .iter()
        .filter_map(|c| c.metadata.as_ref().map(|m| m.attempt))
        .collect();
    assert!(
        attempts.iter().any(|a| *a >= 1),
        "attempts in the daemon: {attempts:?}"
    );
    assert!(
        k.log_text().contains("failed liveness probe"),
        "kubelet's log does not say why it restarted flaky"
    );

    for name in ["web", "echo"] {
        poll(&format!("{name} to be Ready"), || async move {
            let st = k.container_status(pod, name).await?;
            if st["ready"] == true {
                Ok(())
            } else {
                Err(st.to_string())
            }
        })
        .await;
    }
    let st = k.container_status(pod, "unready").await.unwrap();
    assert_eq!(st["ready"], false, "{st}");
    assert!(st["state"]["running"].is_object(), "{st}");
}

/// kubelet's `/run` (ExecSync), and its `/exec`, `/attach` and `/portForward` proxied to the
/// daemon's streaming server, driven with client-go over SPDY and WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exec_attach_and_port_forward_through_kubelet() {
    let k = &Kubelet::start().await;
    let shell = |name: &str| {
        container(
            name,
            SHELL,
            "[sh]",
            "\n      stdin: true\n      stdinOnce: true",
        )
    };
    let pod = &k.add_pod(
        "streams",
        &pod(
            "streams",
            "OnFailure",
            &[web(""), writer(), shell("sh-spdy"), shell("sh-websocket")],
        ),
    );
    for c in ["web", "writer", "sh-spdy", "sh-websocket"] {
        k.wait_running(pod, c).await;
    }
    let out = poll("/run cat /data/msg", || async move {
        match k.run(pod, "writer", "cat /data/msg").await {
            (200, out) if out == MESSAGE => Ok(out),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(out, MESSAGE);
    let (status, out) = k.run(pod, "writer", "cat /data/absent").await;
    assert_ne!(status, 200, "a failing command through /run: {out}");

    let exec = |command: &[&str], input: bool| {
        let mut query: Vec<String> = command
            .iter()
            .map(|c| format!("command={}", encode(c)))
            .collect();
        query.push(format!("input={}&output=1&error=1", u8::from(input)));
        format!("{}/exec/default/{pod}/writer?{}", k.api, query.join("&"))
    };
    for transport in TRANSPORTS {
        let script = "read x; cat /data/msg; echo got $x; echo err >&2; exit 3";
        assert_eq!(
            kube_stream(&[
                "exec",
                "-url",
                &exec(&["sh", "-c", script], true),
                "-transport",
                transport,
                "-stdin",
                "hi",
            ]),
            (3, format!("{MESSAGE}got hi\n"), "err\n".into()),
            "exec over {transport}"
        );

        let url = format!(
            "{}/attach/default/{pod}/sh-{transport}?input=1&output=1&error=1",
            k.api
        );
        assert_eq!(
            kube_stream(&[
                "attach",
                "-url",
                &url,
                "-transport",
                transport,
                "-stdin",
                "echo hello; echo oops >&2\n",
            ]),
            (0, "hello\n".into(), "oops\n".into()),
            "attach over {transport}"
        );

        let url = format!("{}/portForward/default/{pod}", k.api);
        let (code, out, err) = kube_stream(&[
            "port-forward",
            "-url",
            &url,
            "-port",
            "8080",
            "-get",
            "/msg",
            "-transport",
            transport,
        ]);
        assert_eq!(code, 0, "port-forward over {transport}: {err}");
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with(MESSAGE),
            "port-forward over {transport}: {out}"
        );
    }
}

/// Removing a manifest stops and removes its pod (the other keeps running); a daemon
/// restarted (SIGTERM, then again on the same state and socket) under the running kubelet is
/// taken back: kubelet is healthy again and the kept pod runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_manifest_and_runtime_restart() {
    let mut kubelet = Kubelet::start().await;
    let k = &kubelet;
    let keep = &k.add_pod("keep", &pod("keep", "Always", &[web("")]));
    let gone = &k.add_pod("gone", &pod("gone", "Always", &[writer()]));
    k.wait_running(keep, "web").await;
    k.wait_running(gone, "writer").await;

    k.remove_pod("gone");
    poll(
        "gone's sandbox and containers to be removed",
        || async move {
            let (sandboxes, containers) =
                (k.sandboxes(gone).await, k.containers(gone, "writer").await);
            if sandboxes.is_empty() && containers.is_empty() {
                Ok(())
            } else {
                Err(format!("{sandboxes:?} {containers:?}"))
            }
        },
    )
    .await;
    let p = k.pod(gone).await;
    assert!(p.is_err(), "gone is still in /pods: {p:?}");
    let before = k.wait_running(keep, "web").await;

    let status = kubelet.daemon().terminate();
    assert!(status.success(), "wasmpod serve on SIGTERM: {status}");
    kubelet.daemon().restart().await;
    let k = &kubelet;
    k.wait_healthy().await;
    let after = k.wait_running(keep, "web").await;
    let attempt = |c: &k8s_cri::v1::Container| c.metadata.as_ref().map_or(0, |m| m.attempt);
    assert!(
        after.id == before.id || attempt(&after) > attempt(&before),
        "neither kept nor restarted: {before:?} then {after:?}"
    );
    poll("keep's web to serve again", || async move {
        let ip = k.pod_ip(keep).await;
        match curl(&format!("http://{ip}:8080/")).await {
            (200, body) if body.contains("It works!") => Ok(()),
            other => Err(format!("{ip}: {other:?}")),
        }
    })
    .await;
}

/// kubelet's view of the node: `/stats/summary` has the pod and each container with CPU and
/// memory figures (from wasmpod's CRI stats), `/pods` and `/runningpods/` list the static pod
/// running, and kubelet's log names the runtime it found. The summary is the CPU-and-memory
/// one (what metrics-server asks for): the full one also needs cadvisor's filesystem figures
/// for kubelet's root directory, which cadvisor cannot find for some hosts' disks (here:
/// "cannot find filesystem info for device /dev/vda"), nothing the runtime supplies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_sees_the_pod_and_its_stats() {
    let k = &Kubelet::start().await;
    let pod = &k.add_pod("viewed", &pod("viewed", "Always", &[web(""), writer()]));
    k.wait_running(pod, "web").await;
    k.wait_running(pod, "writer").await;

    let stats = poll(
        "/stats/summary to show viewed's containers",
        || async move {
            let summary = k.json(SUMMARY).await?;
            let stats = summary["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == pod.as_str()))
                .cloned()
                .ok_or_else(|| format!("no {pod}: {summary}"))?;
            let containers = stats["containers"].as_array().cloned().unwrap_or_default();
            let complete = ["web", "writer"].iter().all(|name| {
                containers.iter().any(|c| {
                    c["name"] == *name
                        && c["cpu"]["usageCoreNanoSeconds"].is_u64()
                        && c["memory"]["workingSetBytes"].is_u64()
                })
            });
            if complete {
                Ok(stats)
            } else {
                Err(stats.to_string())
            }
        },
    )
    .await;
    assert_eq!(stats["podRef"]["namespace"], "default", "{stats}");
    for c in stats["containers"].as_array().unwrap() {
        assert!(
            c["memory"]["workingSetBytes"].as_u64() > Some(0),
            "a running Wasm guest has memory: {c}"
        );
    }
    // Serving requests costs CPU time, which shows.
    let ip = k.pod_ip(pod).await;
    for _ in 0..20 {
        assert_eq!(curl(&format!("http://{ip}:8080/msg")).await.0, 200);
    }
    poll("web's CPU time to show", || async move {
        let summary = k.json(SUMMARY).await?;
        let cpu = summary["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == pod.as_str()))
            .and_then(|p| p["containers"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["name"] == "web"))
            .map(|c| c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0));
        match cpu {
            Some(n) if n > 0 => Ok(()),
            _ => Err(summary.to_string()),
        }
    })
    .await;

    let p = poll("/pods to show viewed Running", || async move {
        let p = k.pod(pod).await?;
        if p["status"]["phase"] == "Running" {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
    .await;
    assert_eq!(p["spec"]["nodeName"], NODE, "{p}");
    let running = k.json("/runningpods/").await.expect("/runningpods/");
    let listed = running["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|i| i["metadata"]["name"] == pod.as_str()));
    assert!(listed, "{pod} not in /runningpods/: {running}");
    let log = k.log_text();
    assert!(
        log.contains("containerRuntime=\"wasmpod\""),
        "kubelet's log does not name the runtime wasmpod"
    );
}
