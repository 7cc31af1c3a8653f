//! kubelet's conventions over the CRI: host namespaces are refused with InvalidArgument
//! (leaving nothing behind), a privileged container is accepted and grants nothing, and a
//! wasi:http handler is served on the port kubelet declares in its ports annotation.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_namespaces_are_refused_and_privileged_accepted() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs");
    for (field, ns) in [
        (
            "hostNetwork",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
        (
            "hostPID",
            cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
        (
            "hostIPC",
            cri::NamespaceOption {
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
    ] {
        let mut config = pod_config(&format!("ns-{}", field.to_lowercase()), &logs);
        config.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "refused sandboxes leave nothing: {left:?}");

    let pod = harness::new_pod(&d, &mut rt, "privileged").await;
    let mut config = container_config("hello", &file_image("hello.p1"), &[]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.create(&mut rt, config).await.unwrap();
    harness::start(&mut rt, &id).await;
    let st = harness::wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_http_is_served_on_the_port_kubelet_declares() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "ports").await;
    let mut config = container_config("web", &file_image("http-hello.p2"), &[]);
    config.annotations.insert(
        "io.kubernetes.container.ports".into(),
        r#"[{"name":"http","containerPort":9090,"protocol":"TCP"}]"#.into(),
    );
    let id = pod.create(&mut rt, config).await.unwrap();
    harness::start(&mut rt, &id).await;
    let log = pod.logs.join("web/0.log");
    harness::wait_for(|| {
        log.exists() && stream_text(&read_log(&log), "stderr").contains("serving wasi:http")
    })
    .await;
    let text = stream_text(&read_log(&log), "stderr");
    assert!(text.contains(":9090/"), "{text}");

    let mut bad = container_config("bad", &file_image("http-hello.p2"), &[]);
    bad.annotations
        .insert("io.kubernetes.container.ports".into(), "not json".into());
    let err = pod.create(&mut rt, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("io.kubernetes.container.ports"));
    d.stop();
}
