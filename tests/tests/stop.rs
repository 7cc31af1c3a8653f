//! Stopping containers. A WASI command cannot catch the SIGTERM a stop means, so it ends at
//! once (143, Error) whatever its grace period, sleeping in a host call or spinning in pure
//! Wasm, and leaves no busy thread behind. With the pod annotation `wasmpod.io/stop:
//! wait-grace`, a guest that does not exit within its grace period is killed (137, Killed) and
//! one that exits within it is not. Zero grace kills at once (137).
//!
//! The tests of this file run one at a time (they take [`SERIAL`]) so that the CPU-time
//! checks see only their own guest.

use std::sync::Arc;
use std::time::Duration;

use wasmpod_runtime::container::{ContainerState, STOP_ANNOTATION};
use wasmpod_runtime::exit::{ExitReason, KILLED_CODE, TERMINATED_CODE};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::PodConfig;
use wasmpod_tests::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pod whose containers get their whole grace period on a stop.
fn wait_grace_pod(name: &str) -> PodConfig {
    let mut p = pod(name);
    p.annotations
        .insert(STOP_ANNOTATION.into(), "wait-grace".into());
    p
}

/// Creates and starts `image args` in a new pod; waits until its first stdout line.
async fn start_and_wait_for_output(rt: &Arc<Runtime>, image: &str, args: &[&str]) -> String {
    start_in(rt, pod("stop"), image, args).await
}

/// Creates and starts `image args` in a new pod made of `p`; waits until its first stdout line.
async fn start_in(rt: &Arc<Runtime>, p: PodConfig, image: &str, args: &[&str]) -> String {
    let mut live = rt.subscribe_logs();
    let pod_id = rt.run_pod(p).unwrap();
    let id = rt
        .create_container(&pod_id, container("guest", &wasm(image), args))
        .await
        .unwrap();
    rt.start_container(&id).unwrap();
    within(30, "the guest's first line", async {
        loop {
            let line = live.recv().await.unwrap();
            if line.stream == wasmpod_runtime::log::Stream::Stdout {
                return;
            }
        }
    })
    .await;
    assert!(is_running(rt, &id));
    id
}

/// Whether container `id` is running (started, not yet exited).
fn is_running(rt: &Arc<Runtime>, id: &str) -> bool {
    matches!(
        rt.container(id).unwrap().state(),
        ContainerState::Running { .. }
    )
}

/// CPU time the process uses over about a second, with nothing of ours meant to run.
async fn idle_cpu_over_a_second() -> Duration {
    let before = process_cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    process_cpu_time() - before
}

/// Fails if the process used half a second of CPU in the second after `event` (a kill, say):
/// a thread would still be running a guest.
async fn assert_idle_after(event: &str) {
    let cpu = idle_cpu_over_a_second().await;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU used in the second after {event}"
    );
}

/// Stops container `id` with `grace`, failing the test if that hangs.
async fn stop(rt: &Arc<Runtime>, id: &str, grace: Duration) {
    within(30, "stop_container", rt.stop_container(id, grace))
        .await
        .unwrap();
}

async fn killed_after_grace(image: &str, args: &[&str]) {
    let (_tmp, rt) = temp_runtime();
    let id = start_in(&rt, wait_grace_pod("stop"), image, args).await;
    stop(&rt, &id, Duration::from_millis(200)).await;
    let c = rt.container(&id).unwrap();
    let ContainerState::Exited { exit, .. } = c.state() else {
        panic!("{image}: stop_container returned before the guest exited");
    };
    assert_eq!(exit.code, KILLED_CODE, "{image}: {exit:?}");
    assert_eq!(exit.code, 137);
    assert_eq!(exit.reason, ExitReason::Killed, "{image}: {exit:?}");
    assert_eq!(rt.wait_container(&id).await.unwrap(), exit);
    // The kill is recorded in the container's log as a stderr line of the runtime.
    let log = read_log(c.log_path.as_deref().unwrap());
    let last = log.last().unwrap();
    assert_eq!(last.stream, "stderr", "{log:?}");
    assert!(last.text.starts_with("wasmpod: "), "{log:?}");
    assert!(last.text.contains("grace period"), "{log:?}");
    // Once killed, nothing of the guest runs on: the process is (nearly) idle.
    assert_idle_after(&format!("the kill of {image}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_p1_guest_is_killed_after_grace() {
    let _serial = SERIAL.lock().await;
    killed_after_grace("forever.p1", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_p2_guest_is_killed_after_grace_and_stops_using_cpu() {
    let _serial = SERIAL.lock().await;
    killed_after_grace("forever.p2", &["--spin"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_p1_guest_is_killed_after_grace_and_stops_using_cpu() {
    let _serial = SERIAL.lock().await;
    killed_after_grace("forever.p1", &["--spin"]).await;
}

/// Stopped with an hour of grace, a WASI command ends at once (the stop would otherwise hang
/// past the test's bound) with 143, and nothing of it runs on.
async fn terminated_at_once(image: &str, args: &[&str]) {
    let (_tmp, rt) = temp_runtime();
    let id = start_and_wait_for_output(&rt, image, args).await;
    stop(&rt, &id, Duration::from_secs(3600)).await;
    let exit = rt.wait_container(&id).await.unwrap();
    assert_eq!(exit.code, TERMINATED_CODE, "{image}: {exit:?}");
    assert_exit(&exit, 143, ExitReason::Error);
    assert!(exit.message.contains("SIGTERM"), "{exit:?}");
    assert_idle_after(&format!("the stop of {image}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_p2_command_is_terminated_at_once() {
    let _serial = SERIAL.lock().await;
    terminated_at_once("forever.p2", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_p1_command_is_terminated_at_once() {
    let _serial = SERIAL.lock().await;
    terminated_at_once("forever.p1", &["--spin"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_wat_loop_is_terminated() {
    // A loop with no call at all, not even to the Rust standard library.
    let _serial = SERIAL.lock().await;
    let (tmp, rt) = temp_runtime();
    let image = wat_file(
        tmp.path(),
        "loop.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#,
    );
    let id = start_in_new_pod(&rt, "loop", container("loop", &image, &[])).await;
    stop(&rt, &id, Duration::from_secs(3600)).await;
    let exit = rt.wait_container(&id).await.unwrap();
    assert_exit(&exit, 143, ExitReason::Error);
    assert_idle_after("the stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_exiting_within_its_grace_is_not_killed() {
    let _serial = SERIAL.lock().await;
    let (_tmp, rt) = temp_runtime();
    // The reader polls for a file a writer in the same pod fills, then exits 0 by itself:
    // stopping it with a long grace waits for that instead of killing it.
    let mut p = wait_grace_pod("graceful");
    p.volumes = vec![empty_dir("data", wasmpod_runtime::spec::Medium::Disk, None)];
    let pod_id = rt.run_pod(p).unwrap();
    let mut reader = container("reader", &wasm("reader.p1"), &["/data/m", "60000"]);
    reader.mounts = vec![mount("data", None, "/data", false)];
    let mut writer = container("writer", &wasm("writer.p2"), &["/data/m", "3", "100"]);
    writer.mounts = vec![mount("data", None, "/data", false)];
    let reader = rt.create_container(&pod_id, reader).await.unwrap();
    let writer = rt.create_container(&pod_id, writer).await.unwrap();
    rt.start_container(&reader).unwrap();
    rt.start_container(&writer).unwrap();
    within(
        60,
        "the stop",
        rt.stop_container(&reader, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let exit = rt.wait_container(&reader).await.unwrap();
    assert_exit(&exit, 0, ExitReason::Completed);

    // hello stopped right after it started: it finishes on its own.
    let pod_id = rt.run_pod(wait_grace_pod("hello")).unwrap();
    let id = rt
        .create_container(&pod_id, container("hello", &wasm("hello.p2"), &[]))
        .await
        .unwrap();
    rt.start_container(&id).unwrap();
    rt.stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let exit = rt.wait_container(&id).await.unwrap();
    assert_exit(&exit, 0, ExitReason::Completed);
    assert!(exit.message.is_empty(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_grace_kills_at_once() {
    let _serial = SERIAL.lock().await;
    let (_tmp, rt) = temp_runtime();
    for (image, args) in [("forever.p1", &[][..]), ("forever.p2", &["--spin"][..])] {
        let id = start_and_wait_for_output(&rt, image, args).await;
        stop(&rt, &id, Duration::ZERO).await;
        let exit = rt.wait_container(&id).await.unwrap();
        assert_eq!(
            (exit.code, exit.reason),
            (137, ExitReason::Killed),
            "{image}: {exit:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_container_leaves_its_neighbour_running() {
    let _serial = SERIAL.lock().await;
    let (_tmp, rt) = temp_runtime();
    let a = start_and_wait_for_output(&rt, "forever.p1", &[]).await;
    let b = start_and_wait_for_output(&rt, "forever.p2", &["--spin"]).await;
    rt.stop_container(&b, Duration::ZERO).await.unwrap();
    assert_eq!(rt.wait_container(&b).await.unwrap().code, 137);
    assert!(is_running(&rt, &a), "the other container still runs");
    // It keeps ticking after its neighbour died.
    let mut live = rt.subscribe_logs();
    within(30, "another tick", async {
        loop {
            let line = live.recv().await.unwrap();
            if line.text.starts_with("tick ") {
                return;
            }
        }
    })
    .await;
    // Stopping a pod stops what is left in it; stopping again changes nothing.
    let pod_id = rt.container(&a).unwrap().pod_id.clone();
    rt.stop_pod(&pod_id, Duration::from_millis(100))
        .await
        .unwrap();
    let exit = rt.wait_container(&a).await.unwrap();
    assert_exit(&exit, 143, ExitReason::Error);
    rt.stop_container(&a, Duration::ZERO).await.unwrap();
    assert_eq!(rt.wait_container(&a).await.unwrap(), exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_running_container_kills_it() {
    let _serial = SERIAL.lock().await;
    let (_tmp, rt) = temp_runtime();
    let id = start_and_wait_for_output(&rt, "forever.p2", &["--spin"]).await;
    let c = rt.container(&id).unwrap();
    rt.remove_container(&id).await.unwrap();
    assert!(rt.container(&id).is_err(), "the container is gone");
    let exit = c.wait().await;
    assert_exit(&exit, 137, ExitReason::Killed);
    assert_idle_after("the removal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_do_not_starve_others() {
    // More spinning guests than worker threads: a short guest started after them still gets
    // to run and finish (each spinner yields at every epoch tick).
    let _serial = SERIAL.lock().await;
    let (_tmp, rt) = temp_runtime();
    let mut spinners = Vec::new();
    for _ in 0..4 {
        spinners.push(start_and_wait_for_output(&rt, "forever.p1", &["--spin"]).await);
    }
    let ran = within(
        60,
        "hello beside four spinners",
        run_container(
            &rt,
            pod("hello"),
            container("hello", &wasm("hello.p1"), &[]),
        ),
    )
    .await
    .unwrap();
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    for id in &spinners {
        assert!(is_running(&rt, id));
        rt.stop_container(id, Duration::ZERO).await.unwrap();
        assert_eq!(rt.wait_container(id).await.unwrap().code, 137);
    }
    assert_idle_after("killing the spinners").await;
}
