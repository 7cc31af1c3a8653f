//! `kube-stream` (client-go's executors and port-forwarder, see `tests/src/kube_stream.rs`)
//! against wasmpod's own streaming server, no kubelet in between: the URLs come from the CRI
//! Exec, Attach and PortForward calls of the real `wasmpod serve`. This shows the client works
//! against our server on its own, so a failure of the kubelet tests, which proxy the same
//! protocols, is kubelet's part or the proxying, not the client.

use std::time::Duration;

use k8s_cri::v1 as cri;
use wasmpod_tests::cri::{self as harness, container_config, Daemon, Rt, TestPod};
use wasmpod_tests::crictl::file_image;
use wasmpod_tests::kube_stream::run;

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];
/// What the http-hello guest answers.
const HELLO: &str = "hello from wasi:http\n";

/// `wasmpod serve` with `config` (TOML).
async fn daemon(config: &str) -> Daemon {
    Daemon::start_with(config, None).await
}

/// Creates and starts a toolbox container running `command` (with stdin and stdin_once when
/// `stdin`) in `pod`; its id once it runs.
async fn start(rt: &mut Rt, pod: &TestPod, name: &str, command: &[&str], stdin: bool) -> String {
    let mut config = container_config(name, &file_image("toolbox.p1"), &[]);
    config.command = command.iter().map(|c| c.to_string()).collect();
    config.stdin = stdin;
    config.stdin_once = stdin;
    let id = pod.create(rt, config).await.unwrap();
    harness::start(rt, &id).await;
    wait_running(rt, &id).await;
    id
}

/// Polls ContainerStatus until the container runs (bounded: 30 s).
async fn wait_running(rt: &mut Rt, id: &str) {
    for _ in 0..600 {
        if harness::status(rt, id).await.state == cri::ContainerState::ContainerRunning as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {id} never ran");
}

/// A fresh Exec URL (tokens are single-use) for `cmd`, with stdin and a terminal as asked;
/// stderr is its own stream unless there is a terminal, as kubelet asks.
async fn exec_url(rt: &mut Rt, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.to_owned(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

/// `kube-stream exec` over SPDY and WebSocket: stdin to EOF, stdout and stderr apart, the
/// exit code passed on (3, and the shell's 127 for a command found nowhere), and a terminal session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_and_websocket() {
    let d = daemon("").await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "exec").await;
    let id = start(&mut rt, &pod, "box", &["pause"], false).await;
    let script = "read x; echo got $x; echo err >&2; exit 3";
    for transport in TRANSPORTS {
        let url = exec_url(&mut rt, &id, &["sh", "-c", script], true, false).await;
        let args = [
            "exec",
            "-url",
            &url,
            "-transport",
            transport,
            "-stdin",
            "hi",
        ];
        assert_eq!(
            run(&args),
            (3, "got hi\n".into(), "err\n".into()),
            "{transport}"
        );

        let url = exec_url(&mut rt, &id, &["echo", "-n", "fine"], false, false).await;
        assert_eq!(
            run(&["exec", "-url", &url, "-transport", transport]),
            (0, "fine".into(), String::new()),
            "{transport}"
        );

        let url = exec_url(&mut rt, &id, &["sh", "-c", "no-such-tool"], false, false).await;
        let (code, out, err) = run(&["exec", "-url", &url, "-transport", transport]);
        assert_eq!((code, out.as_str()), (127, ""), "{transport}: {err}");

        // A terminal: one stream, the guest's stderr on stdout in order.
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", "echo out; echo err >&2"],
            false,
            true,
        )
        .await;
        assert_eq!(
            run(&["exec", "-url", &url, "-transport", transport, "-tty"]),
            (0, "out\nerr\n".into(), String::new()),
            "{transport}"
        );
    }
    d.stop();
}

/// An https streaming server with a self-signed certificate, as kubelet serves its API:
/// kube-stream skips verification (and sends no credentials) over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls_with_a_self_signed_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (crt, pem) = (
        certs.path().join("stream.crt"),
        certs.path().join("stream.key"),
    );
    std::fs::write(&crt, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    let d = daemon(&format!(
        "[streaming]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        crt.display(),
        pem.display()
    ))
    .await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "tls").await;
    let id = start(&mut rt, &pod, "box", &["pause"], false).await;
    for transport in TRANSPORTS {
        let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; exit 4"], true, false).await;
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let args = [
            "exec",
            "-url",
            &url,
            "-transport",
            transport,
            "-stdin",
            "over tls",
        ];
        assert_eq!(
            run(&args),
            (4, "over tls".into(), String::new()),
            "{transport}"
        );
    }
    d.stop();
}

/// `kube-stream attach` with stdin to a shell created with stdin and stdin_once: it runs what
/// is typed, its two streams come back apart, and closing stdin ends the shell and the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_spdy_and_websocket() {
    let d = daemon("").await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "attach").await;
    for transport in TRANSPORTS {
        let id = start(&mut rt, &pod, &format!("sh-{transport}"), &["sh"], true).await;
        let url = rt
            .attach(cri::AttachRequest {
                container_id: id.clone(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let typed = "echo hello; echo oops >&2\n";
        assert_eq!(
            run(&[
                "attach",
                "-url",
                &url,
                "-transport",
                transport,
                "-stdin",
                typed
            ]),
            (0, "hello\n".into(), "oops\n".into()),
            "{transport}"
        );
        let st = harness::wait_exited(&mut rt, &id).await;
        assert_eq!(st.exit_code, 0, "{transport}: {st:?}");
    }
    d.stop();
}

/// `kube-stream port-forward` over SPDY and over SPDY tunnelled in a WebSocket to a wasi:http
/// guest: the GET through the forward gets the page; a port nothing listens on fails (125).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_and_websocket() {
    let d = daemon("").await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "forward").await;
    let id = pod
        .create(
            &mut rt,
            container_config("web", &file_image("http-hello.p2"), &[]),
        )
        .await
        .unwrap();
    harness::start(&mut rt, &id).await;
    // Listening once it says so (its default port, 8080).
    let log = pod.logs.join("web/0.log");
    harness::wait_for(|| {
        wasmpod_tests::stream_text(&wasmpod_tests::read_log(&log), "stderr")
            .contains("serving wasi:http")
    })
    .await;
    let mut forward_url = async |port: i32| {
        rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![port],
        })
        .await
        .unwrap()
        .into_inner()
        .url
    };
    for transport in TRANSPORTS {
        let url = forward_url(8080).await;
        let (code, out, err) = run(&[
            "port-forward",
            "-url",
            &url,
            "-transport",
            transport,
            "-port",
            "8080",
            "-get",
            "/",
        ]);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("HTTP/1.1 200 OK\n{HELLO}").as_str()),
            "{transport}: {err}"
        );

        let url = forward_url(9999).await;
        let (code, out, err) = run(&[
            "port-forward",
            "-url",
            &url,
            "-transport",
            transport,
            "-port",
            "9999",
            "-get",
            "/",
        ]);
        assert_eq!((code, out.as_str()), (125, ""), "{transport}: {err}");
        // client-go logs the server's error stream; kube-stream says the GET got no answer.
        assert!(
            err.contains("error forwarding port 9999 to pod")
                && err.contains("Connection refused")
                && err.contains("kube-stream: Get "),
            "{transport}: {err}"
        );
    }
    d.stop();
}
