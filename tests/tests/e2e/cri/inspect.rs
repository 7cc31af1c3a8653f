//! Verbose status calls (`crictl inspect|inspectp|inspecti|info`) carry an `info` block under
//! the keys containerd uses; Status lists the runtime handlers.

use super::*;

fn info(map: &HashMap<String, String>) -> serde_json::Value {
    serde_json::from_str(map.get("info").expect("an info key")).expect("info is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_calls_answer_with_info() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let pod = harness::new_pod(&d, &mut rt, "inspect").await;
    let mut config = container_config("hello", &file_image("hello.p1"), &["a1"]);
    config.envs.push(cri::KeyValue {
        key: "GREETING".into(),
        value: "hi".into(),
    });
    let id = pod.create(&mut rt, config).await.unwrap();

    let c = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let c = info(&c.info);
    assert_eq!(c["sandboxID"], pod.id.as_str());
    assert_eq!(c["runtimeHandler"], "wasmpod");
    assert_eq!(c["config"]["name"], "hello");
    assert!(
        c["effective"]["env"]
            .as_array()
            .unwrap()
            .contains(&"GREETING=hi".into()),
        "{c}"
    );
    assert_eq!(
        c["effective"]["argv"].as_array().unwrap().last().unwrap(),
        "a1"
    );
    assert_eq!(c["effective"]["program"]["kind"], "WASI preview1 module");
    let quiet = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(quiet.info.is_empty(), "info only when verbose");

    let p = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let p = info(&p.info);
    assert_eq!(p["network"]["mode"], "loopback");
    assert!(
        p["network"]["ip"].as_str().unwrap().starts_with("127."),
        "{p}"
    );
    assert_eq!(p["config"]["name"], "inspect");

    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    // The default handler ("") is wasmpod too, with the same features.
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "wasmpod"]);
    assert!(s.runtime_handlers.iter().all(|h| h
        .features
        .as_ref()
        .is_some_and(|f| f.recursive_read_only_mounts)));
    let s = info(&s.info);
    assert_eq!(s["config"]["runtimeHandlers"][0], "wasmpod");
    assert!(s["config"]["stateDir"].is_string());

    let registry = Registry::start(d.dir.path()).await;
    let name = registry.push_wasm(&wasm("hello.p2"), "cri/inspect:1", d.dir.path());
    let mut images = harness::image_client(&d).await;
    let spec = Some(cri::ImageSpec {
        image: name,
        ..Default::default()
    });
    images
        .pull_image(cri::PullImageRequest {
            image: spec.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let i = images
        .image_status(cri::ImageStatusRequest {
            image: spec,
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let i = info(&i.info);
    assert!(i["wasm"].as_str().unwrap().starts_with("sha256:"), "{i}");
    assert!(i["imageSpec"]["manifest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    d.stop();
}
