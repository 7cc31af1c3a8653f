//! ListContainers and ListPodSandbox as kubelet's relist sees them: the server answers from
//! encodings it keeps per container and pod (`shim/src/cri/listing.rs`), so these tests check
//! that what is listed is always what is: states as they change, every filter, removals, and
//! many clients creating and removing at once.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use wasmpod_tests::cri::{
    self as harness, container_config, list_containers as containers, list_pods as pods, Daemon, Rt,
};
use wasmpod_tests::crictl::file_image;
use wasmpod_tests::require_guests;

fn container_state(state: cri::ContainerState) -> Option<cri::ContainerStateValue> {
    Some(cri::ContainerStateValue {
        state: state as i32,
    })
}

fn pod_state(state: cri::PodSandboxState) -> Option<cri::PodSandboxStateValue> {
    Some(cri::PodSandboxStateValue {
        state: state as i32,
    })
}

/// The ids of the listed containers in `state`.
async fn ids_in(rt: &mut Rt, state: cri::ContainerState) -> Vec<String> {
    let filter = cri::ContainerFilter {
        state: container_state(state),
        ..Default::default()
    };
    let mut ids: Vec<_> = containers(rt, filter)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follow_state_changes_filters_and_removals() {
    require_guests();
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let a = harness::new_pod(&d, &mut rt, "list-a").await;
    let b = harness::new_pod(&d, &mut rt, "list-b").await;
    let mut config = container_config("ticker", &file_image("forever.p1"), &[]);
    config.labels.insert("role".into(), "first".into());
    let first = a.create(&mut rt, config).await.unwrap();
    let second = b
        .create(
            &mut rt,
            container_config("ticker", &file_image("forever.p1"), &[]),
        )
        .await
        .unwrap();

    // Created: listed (twice, so the second answer comes from the kept encoding) with every
    // field of its status.
    for _ in 0..2 {
        let listed = containers(&mut rt, cri::ContainerFilter::default()).await;
        assert_eq!(listed.len(), 2);
        let c = listed.iter().find(|c| c.id == first).unwrap();
        let status = harness::status(&mut rt, &first).await;
        assert_eq!(c.state, cri::ContainerState::ContainerCreated as i32);
        assert_eq!(c.pod_sandbox_id, a.id);
        assert_eq!(c.metadata, status.metadata);
        assert_eq!(c.image, status.image);
        assert_eq!(c.image_ref, status.image_ref);
        assert_eq!(c.image_id, status.image_id);
        assert_eq!(c.created_at, status.created_at);
        assert_eq!(c.labels, status.labels);
        assert_eq!(c.annotations, status.annotations);
        assert_eq!(c.labels.get("role").map(String::as_str), Some("first"));
    }
    let created = cri::ContainerState::ContainerCreated;
    let running = cri::ContainerState::ContainerRunning;
    let exited = cri::ContainerState::ContainerExited;
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(ids_in(&mut rt, created).await, both);

    // Created → running → exited, each seen by the next list.
    harness::start(&mut rt, &first).await;
    assert_eq!(ids_in(&mut rt, running).await, vec![first.clone()]);
    assert_eq!(ids_in(&mut rt, created).await, vec![second.clone()]);
    rt.stop_container(cri::StopContainerRequest {
        container_id: first.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert_eq!(ids_in(&mut rt, exited).await, vec![first.clone()]);
    assert!(ids_in(&mut rt, running).await.is_empty());
    let listed = containers(
        &mut rt,
        cri::ContainerFilter {
            id: first.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, exited as i32);
    assert_eq!(
        listed[0].labels.get("role").map(String::as_str),
        Some("first")
    );

    // Each filter alone and together.
    let only = |filter: cri::ContainerFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<_> = containers(&mut rt, filter)
                .await
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        only(cri::ContainerFilter {
            id: second[..10].into(),
            ..Default::default()
        })
        .await,
        vec![second.clone()]
    );
    assert_eq!(
        only(cri::ContainerFilter {
            pod_sandbox_id: b.id.clone(),
            ..Default::default()
        })
        .await,
        vec![second.clone()]
    );
    assert_eq!(
        only(cri::ContainerFilter {
            pod_sandbox_id: a.id[..10].into(),
            ..Default::default()
        })
        .await,
        vec![first.clone()]
    );
    let role = HashMap::from([("role".to_string(), "first".to_string())]);
    assert_eq!(
        only(cri::ContainerFilter {
            label_selector: role.clone(),
            ..Default::default()
        })
        .await,
        vec![first.clone()]
    );
    let tier = HashMap::from([("tier".to_string(), "wasm".to_string())]);
    assert_eq!(
        only(cri::ContainerFilter {
            label_selector: tier,
            ..Default::default()
        })
        .await,
        both
    );
    assert!(only(cri::ContainerFilter {
        pod_sandbox_id: b.id.clone(),
        label_selector: role,
        ..Default::default()
    })
    .await
    .is_empty());
    assert!(only(cri::ContainerFilter {
        state: container_state(exited),
        pod_sandbox_id: b.id.clone(),
        ..Default::default()
    })
    .await
    .is_empty());
    let bad = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: HashMap::from([("bad key!".to_string(), "v".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Pods: ready, then not ready once stopped; filters by id, label and state.
    let ready = cri::PodSandboxState::SandboxReady;
    let not_ready = cri::PodSandboxState::SandboxNotready;
    let listed = pods(&mut rt, cri::PodSandboxFilter::default()).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| p.state == ready as i32));
    let pa = listed.iter().find(|p| p.id == a.id).unwrap();
    assert_eq!(
        pa.metadata.as_ref().map(|m| m.name.as_str()),
        Some("list-a")
    );
    assert_eq!(pa.labels.get("app").map(String::as_str), Some("list-a"));
    assert_eq!(
        pa.annotations.get("note").map(String::as_str),
        Some("kept as is")
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: a.id.clone(),
    })
    .await
    .unwrap();
    for (state, id) in [(not_ready, &a.id), (ready, &b.id)] {
        let listed = pods(
            &mut rt,
            cri::PodSandboxFilter {
                state: pod_state(state),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(listed.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(listed[0].state, state as i32);
    }
    let by_label = pods(
        &mut rt,
        cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".to_string(), "list-b".to_string())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_label.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&b.id]
    );
    let by_id = pods(
        &mut rt,
        cri::PodSandboxFilter {
            id: a.id[..8].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].id, a.id);

    // Removed objects are gone from the next lists.
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: second.clone(),
    })
    .await
    .unwrap();
    let listed = containers(&mut rt, cri::ContainerFilter::default()).await;
    assert_eq!(
        listed.iter().map(|c| &c.id).collect::<Vec<_>>(),
        vec![&first]
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: a.id.clone(),
    })
    .await
    .unwrap();
    assert!(containers(&mut rt, cri::ContainerFilter::default())
        .await
        .is_empty());
    let listed = pods(&mut rt, cri::PodSandboxFilter::default()).await;
    assert_eq!(
        listed.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&b.id]
    );

    // A container created after removals is listed as itself.
    let third = b
        .create(
            &mut rt,
            container_config("again", &file_image("forever.p1"), &[]),
        )
        .await
        .unwrap();
    let listed = containers(&mut rt, cri::ContainerFilter::default()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, third);
    assert_eq!(
        listed[0].metadata.as_ref().map(|m| m.name.as_str()),
        Some("again")
    );
}

/// Sixteen clients create and remove pods at once; each list any of them makes holds every
/// pod and container that client has and none it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_removes_are_listed_exactly() {
    require_guests();
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 4;
    let d = Daemon::start().await;
    let image = file_image("forever.p1");
    let clients = (0..CLIENTS).map(|k| {
        let d = &d;
        let image = image.clone();
        async move {
            let mut rt = d.runtime().await;
            for round in 0..ROUNDS {
                let name = format!("busy-{k}-{round}");
                let pod = harness::new_pod(d, &mut rt, &name).await;
                let ctr = pod
                    .create(&mut rt, container_config("c", &image, &[]))
                    .await
                    .unwrap();
                harness::start(&mut rt, &ctr).await;
                let listed = containers(&mut rt, cri::ContainerFilter::default()).await;
                let mine = listed
                    .iter()
                    .find(|c| c.id == ctr)
                    .expect("created, listed");
                assert_eq!(mine.pod_sandbox_id, pod.id);
                assert_eq!(mine.state, cri::ContainerState::ContainerRunning as i32);
                assert_eq!(mine.metadata.as_ref().map(|m| m.name.as_str()), Some("c"));
                let listed = pods(&mut rt, cri::PodSandboxFilter::default()).await;
                let p = listed.iter().find(|p| p.id == pod.id).expect("run, listed");
                assert_eq!(p.metadata.as_ref().map(|m| m.name.as_str()), Some(&*name));
                // No other client's container is listed in this pod.
                let filter = cri::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    ..Default::default()
                };
                let in_pod: Vec<_> = containers(&mut rt, filter)
                    .await
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                assert_eq!(in_pod, vec![ctr.clone()]);

                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .unwrap();
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .unwrap();
                let listed = containers(&mut rt, cri::ContainerFilter::default()).await;
                assert!(listed.iter().all(|c| c.id != ctr), "removed, still listed");
                let listed = pods(&mut rt, cri::PodSandboxFilter::default()).await;
                assert!(
                    listed.iter().all(|p| p.id != pod.id),
                    "removed, still listed"
                );
            }
        }
    });
    futures::future::join_all(clients).await;
    let mut rt = d.runtime().await;
    assert!(containers(&mut rt, cri::ContainerFilter::default())
        .await
        .is_empty());
    assert!(pods(&mut rt, cri::PodSandboxFilter::default())
        .await
        .is_empty());
}
