//! Density: 1,000 idle containers (each in its own pod) in one Runtime, all running, with a
//! bounded number of threads; then all stopped. The only test of this binary, so the thread
//! count is this test's own.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::exit::ExitReason;
use wasmpod_tests::*;

const PODS: usize = 1000;
const MAX_THREADS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_pods_share_a_few_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&tmp.path().join("state"));
    let image = wasm("forever.p1");
    let mut live = rt.subscribe_logs();

    let mut ids = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let pod_id = rt.run_pod(pod(&format!("idle-{i}"))).unwrap();
        let id = rt
            .create_container(&pod_id, container("ticker", &image, &[]))
            .await
            .unwrap();
        rt.start_container(&id).unwrap();
        ids.push((pod_id, id));
    }

    // Every guest really runs: each pod's ticker prints a line. Lines may be dropped by a
    // lagging subscriber, but each ticker prints once a second, so every pod shows up.
    let mut seen = HashSet::new();
    within(120, "a tick line from every pod", async {
        while seen.len() < PODS {
            match live.recv().await {
                Ok(line) => {
                    if line.text.starts_with("tick ") {
                        seen.insert(line.pod.to_string());
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => panic!("log channel closed"),
            }
        }
    })
    .await;
    for (_, id) in &ids {
        assert!(
            matches!(
                rt.container(id).unwrap().state(),
                ContainerState::Running { .. }
            ),
            "container {id} is running"
        );
    }
    let threads = thread_count();
    eprintln!("{PODS} idle pods running on {threads} threads");
    assert!(
        threads < MAX_THREADS,
        "{threads} threads for {PODS} idle pods; idle guests must not hold a thread each"
    );

    // Stop them all (at once, each with no grace) and remove the pods.
    let mut stops = tokio::task::JoinSet::new();
    for (pod_id, id) in ids.clone() {
        let rt = rt.clone();
        stops.spawn(async move {
            rt.stop_pod(&pod_id, Duration::ZERO).await.unwrap();
            let exit = rt.wait_container(&id).await.unwrap();
            rt.remove_pod(&pod_id).await.unwrap();
            exit
        });
    }
    let exits = within(120, "every pod to stop", stops.join_all()).await;
    assert_eq!(exits.len(), PODS);
    for exit in exits {
        assert_eq!(
            (exit.code, exit.reason),
            (137, ExitReason::Killed),
            "{exit:?}"
        );
    }
    assert!(rt.pods().is_empty());
    assert!(rt.containers().is_empty());
    let pods_dir = tmp.path().join("state/pods");
    assert_eq!(std::fs::read_dir(pods_dir).unwrap().count(), 0);
}
