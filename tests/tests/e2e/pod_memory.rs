//! Pod-level memory and host-side memory accounting: every growth of a guest (linear memory,
//! tables) is charged to its container and its pod together; a refusal OOM-kills exactly the
//! growing container (137, OOMKilled), and limits change live while guests run.

use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use serde_json::json;
use tonic::Code;
use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::exit::{ExitReason, KILLED_CODE};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{CriResources, PodMemoryConfig};
use wasmpod_tests::cri::{self as cri_harness, Daemon, Rt, UpdatePodSandboxResourcesRequest};
use wasmpod_tests::crictl::{container_json, id_of, pod_json, wait_state, Crictl, Events};
use wasmpod_tests::*;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 64 << 10;

/// `$sleep(ns)`: WASI preview1 `poll_oneoff` on one monotonic clock subscription (at 0, its
/// event at 64), so a guest can wait without spinning.
const SLEEP: &str = r#"
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (func $sleep (param $ns i64)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (local.get $ns))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))"#;

/// Grows its memory to `pages` pages, then holds it, sleeping, until stopped.
fn grow_and_hold(pages: u64) -> String {
    format!(
        r#"(module {SLEEP}
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const {grow})) (i32.const -1)) (then unreachable))
    (loop $hold (call $sleep (i64.const 1000000000)) (br $hold))))"#,
        grow = pages - 1
    )
}

/// Grows its memory a page every 10 ms until refused, then traps (a memory bomb in slow
/// motion, so that a test can change limits while it runs).
fn grow_slowly() -> String {
    format!(
        r#"(module {SLEEP}
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (call $sleep (i64.const 10000000))
      (br $grow))))"#
    )
}

/// Grows its memory one page at a time as fast as it can until refused, then traps.
const MEMORY_BOMB: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"#;

/// Grows a table 1,024 elements at a time until refused, then traps: host memory (the
/// table's elements) that no linear-memory limit would see.
const TABLE_BOMB: &str = r#"(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (table.grow $t (ref.null func) (i32.const 1024)) (i32.const -1))))
    unreachable))"#;

/// Grows a table to `elements` elements, then holds it, sleeping, until stopped.
fn table_and_hold(elements: u32) -> String {
    format!(
        r#"(module {SLEEP}
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (if (i32.eq (table.grow $t (ref.null func) (i32.const {grow})) (i32.const -1))
      (then unreachable))
    (loop $hold (call $sleep (i64.const 1000000000)) (br $hold))))"#,
        grow = elements - 1
    )
}

/// A pod named `name` whose containers together may hold `limit` bytes, as kubelet passes it.
fn pod_limited(name: &str, limit: Option<u64>, overhead: u64) -> wasmpod_runtime::spec::PodConfig {
    let mut p = pod(name);
    p.memory = PodMemoryConfig { limit, overhead };
    p
}

/// Creates and starts container `name` running the WAT `wat_text` in pod `pod_id`.
async fn start(
    rt: &Arc<Runtime>,
    dir: &Path,
    pod_id: &str,
    name: &str,
    wat_text: &str,
    memory_limit: Option<u64>,
) -> String {
    let image = wat_file(dir, &format!("{name}.wasm"), wat_text);
    let mut c = container(name, &image, &[]);
    c.memory_limit = memory_limit;
    let id = rt.create_container(pod_id, c).await.unwrap();
    rt.start_container(&id).unwrap();
    id
}

/// Waits (bounded) until container `id` holds at least `bytes`; what it holds then.
async fn wait_usage(rt: &Arc<Runtime>, id: &str, bytes: u64) -> u64 {
    let c = rt.container(id).unwrap();
    within(60, "the guest to grow", async {
        loop {
            let used = c.usage().memory_bytes;
            if used >= bytes {
                return used;
            }
            assert!(
                matches!(c.state(), ContainerState::Running { .. }),
                "{:?}",
                c.state()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

fn memory_update(limit: i64) -> CriResources {
    CriResources {
        memory_limit: limit,
        ..CriResources::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_that_grows_past_the_pod_limit_is_oom_killed_the_other_runs_on() {
    let (tmp, rt) = temp_runtime();
    // Each container may hold 4 MiB; the pod's two together 6 MiB (kubelet's pod-level limit).
    let pod_id = rt.run_pod(pod_limited("pair", Some(6 * MIB), 0)).unwrap();
    let holder = start(
        &rt,
        tmp.path(),
        &pod_id,
        "holder",
        &grow_and_hold(48),
        Some(4 * MIB),
    )
    .await;
    assert_eq!(wait_usage(&rt, &holder, 3 * MIB).await, 3 * MIB);
    let bomb = start(&rt, tmp.path(), &pod_id, "bomb", MEMORY_BOMB, Some(4 * MIB)).await;
    let exit = within(60, "the bomb to end", rt.wait_container(&bomb))
        .await
        .unwrap();
    assert_exit(&exit, KILLED_CODE, ExitReason::OomKilled);
    assert!(
        exit.message
            .contains("the pod's memory limit (6291456 bytes"),
        "{exit:?}"
    );

    // The bomb got to 3 MiB, not its own 4: the holder's 3 MiB counted against the pod.
    let pod = rt.pod(&pod_id).unwrap();
    let holder_c = rt.container(&holder).unwrap();
    assert!(matches!(holder_c.state(), ContainerState::Running { .. }));
    assert_eq!(holder_c.usage().memory_bytes, 3 * MIB);
    // The bomb's memory went back to the pod when it ended.
    assert_eq!(pod.memory.used(), 3 * MIB);
    assert_eq!(rt.container(&bomb).unwrap().usage().memory_bytes, 0);

    rt.remove_container(&holder).await.unwrap();
    assert_eq!(pod.memory.used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kubelet_limit_the_pod_limit_is_the_sum_of_its_containers() {
    let (tmp, rt) = temp_runtime();
    let image = wat_file(tmp.path(), "hold.wasm", &grow_and_hold(1));
    let pod_id = rt.run_pod(pod_limited("sum", None, MIB)).unwrap();
    let pod = rt.pod(&pod_id).unwrap();
    assert_eq!(pod.memory.limit(), None);
    let create = |name: &str, limit: Option<u64>| {
        let mut c = container(name, &image, &[]);
        c.memory_limit = limit;
        rt.create_container(&pod_id, c)
    };
    let a = create("a", Some(4 * MIB)).await.unwrap();
    let b = create("b", Some(2 * MIB)).await.unwrap();
    // The sum and the overhead.
    assert_eq!(pod.memory.limit(), Some(7 * MIB));
    // It follows updates and removals.
    rt.update_container_resources(&a, memory_update(8 << 20))
        .unwrap();
    assert_eq!(pod.memory.limit(), Some(11 * MIB));
    rt.remove_container(&b).await.unwrap();
    assert_eq!(pod.memory.limit(), Some(9 * MIB));
    // A container without a limit leaves the pod without one.
    let c = create("c", None).await.unwrap();
    assert_eq!(pod.memory.limit(), None);
    rt.remove_container(&c).await.unwrap();
    assert_eq!(pod.memory.limit(), Some(9 * MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_limit_below_what_the_program_starts_with_is_refused_at_creation() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod_limited("tiny", Some(PAGE), 0)).unwrap();
    let e = rt
        .create_container(&pod_id, container("hello", &wasm("hello.p1"), &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("the pod's own limit"), "{e}");
    assert!(rt.pod_containers(&rt.pod(&pod_id).unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_bomb_is_oom_killed_at_the_container_limit_and_at_the_pod_limit() {
    let (tmp, rt) = temp_runtime();
    for (pod_limit, container_limit, refused_by) in [
        (
            None,
            Some(2 * MIB),
            "the container's memory limit (2097152 bytes",
        ),
        (Some(3 * MIB), None, "the pod's memory limit (3145728 bytes"),
    ] {
        let pod_id = rt.run_pod(pod_limited("tables", pod_limit, 0)).unwrap();
        let id = start(
            &rt,
            tmp.path(),
            &pod_id,
            "bomb",
            TABLE_BOMB,
            container_limit,
        )
        .await;
        let exit = within(60, "the table bomb to end", rt.wait_container(&id))
            .await
            .unwrap();
        assert_exit(&exit, KILLED_CODE, ExitReason::OomKilled);
        assert!(exit.message.contains(refused_by), "{exit:?}");
        assert_eq!(rt.pod(&pod_id).unwrap().memory.used(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_count_as_memory_a_pointer_per_element() {
    let (tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("table")).unwrap();
    let id = start(
        &rt,
        tmp.path(),
        &pod_id,
        "t",
        &table_and_hold(100_000),
        None,
    )
    .await;
    let held = PAGE + 100_000 * std::mem::size_of::<usize>() as u64;
    assert_eq!(wait_usage(&rt, &id, held).await, held);
    assert_eq!(rt.pod(&pod_id).unwrap().memory.used(), held);
    rt.remove_container(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_move_up_and_down_while_a_guest_grows() {
    let (tmp, rt) = temp_runtime();
    // kubelet's pod limit is the sum of its one container's: it moves with the container's.
    let pod_id = rt.run_pod(pod_limited("live", Some(16 * MIB), 0)).unwrap();
    let pod = rt.pod(&pod_id).unwrap();
    let id = start(
        &rt,
        tmp.path(),
        &pod_id,
        "grower",
        &grow_slowly(),
        Some(16 * MIB),
    )
    .await;
    wait_usage(&rt, &id, 2 * MIB).await;

    // Up: the guest grows past its old limit.
    let raised = rt
        .update_container_resources(&id, memory_update(32 << 20))
        .unwrap();
    assert_eq!(raised.memory_limit, Some(32 * MIB));
    assert_eq!(pod.memory.limit(), Some(32 * MIB));
    let used = wait_usage(&rt, &id, 16 * MIB + PAGE).await;

    // Down below what it holds: refused, as runc refuses it; nothing changes, it runs on.
    let e = rt
        .update_container_resources(&id, memory_update(used as i64 - PAGE as i64))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains("uses now"), "{e}");
    let c = rt.container(&id).unwrap();
    assert_eq!(c.resources().memory_limit, Some(32 * MIB));
    assert_eq!(pod.memory.limit(), Some(32 * MIB));
    assert!(matches!(c.state(), ContainerState::Running { .. }));

    // Down above what it holds: taken; the guest is OOM-killed when it reaches the new limit.
    // (It keeps growing meanwhile: a figure it has just passed is refused, so try afresh.)
    let mut lowered = None;
    for _ in 0..100 {
        let limit = c.usage().memory_bytes + 4 * MIB;
        if rt
            .update_container_resources(&id, memory_update(limit as i64))
            .is_ok()
        {
            lowered = Some(limit);
            break;
        }
    }
    let lowered = lowered.expect("a limit above the guest's use was taken");
    assert_eq!(pod.memory.limit(), Some(lowered));
    let exit = within(60, "the guest to reach its limit", rt.wait_container(&id))
        .await
        .unwrap();
    assert_exit(&exit, KILLED_CODE, ExitReason::OomKilled);
    assert!(
        exit.message
            .contains(&format!("the container's memory limit ({lowered} bytes")),
        "{exit:?}"
    );
    assert_eq!(pod.memory.used(), 0);
}

/// Through the real crictl: a pod whose config carries kubelet's pod-level limit
/// (`linux.resources.memory_limit_in_bytes`), a memory bomb in it without a limit of its own:
/// it is OOM-killed at the pod's limit, `crictl inspect` says OOMKilled 137, and `crictl
/// events` carries its CONTAINER_STOPPED_EVENT with that status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_events_show_the_oom_kill_at_the_pod_limit() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let mut pod = pod_json(&d, "oom");
    pod["linux"] = json!({
        "resources": {"memory_limit_in_bytes": 4 * MIB},
        "overhead": {"memory_limit_in_bytes": MIB},
    });
    let pod_path = c.write("pod.json", &pod);
    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let events = Events::subscribe(&c, &pod_id, &pod_path);

    let bomb = wat_file(&c.dir, "bomb.wasm", MEMORY_BOMB);
    let ctr_path = c.write(
        "bomb.json",
        &container_json("bomb", &format!("file://{}", bomb.display()), &[]),
    );
    let ctr = id_of(&c.ok(&["create", &pod_id, &ctr_path, &pod_path]));
    c.ok(&["start", &ctr]);
    let st = wait_state(&c, &ctr, "CONTAINER_EXITED");
    assert_eq!(
        (&st["exitCode"], &st["reason"]),
        (&json!(KILLED_CODE), &json!("OOMKilled")),
        "{st:#}"
    );
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("the pod's memory limit (4194304 bytes"),
        "{st:#}"
    );

    let seen = events.of_until(&ctr, "CONTAINER_STOPPED_EVENT");
    let stopped = seen.last().unwrap();
    let status = stopped["containersStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == ctr.as_str())
        .unwrap_or_else(|| panic!("no status of the bomb: {stopped:#}"));
    assert_eq!(status["state"], "CONTAINER_EXITED", "{stopped:#}");
    assert_eq!(status["reason"], "OOMKilled", "{stopped:#}");
    assert_eq!(status["exitCode"], KILLED_CODE, "{stopped:#}");
    drop(events);

    // Its metrics: the refused growth, the OOM kill, the peak it reached.
    let m = c.pod_metrics(&pod_id);
    assert!(m.container(&ctr, "container_memory_failcnt") >= 1);
    assert_eq!(m.container(&ctr, "container_oom_events_total"), 1);
    let peak = m.container(&ctr, "container_memory_max_usage_bytes");
    assert!((2 * MIB..=4 * MIB).contains(&peak), "peak {peak}");

    // A negative pod limit is bad input, refused before anything is made.
    pod["metadata"]["name"] = "bad".into();
    pod["linux"]["resources"]["memory_limit_in_bytes"] = json!(-5);
    let bad_path = c.write("bad.json", &pod);
    let err = c.fails(&["runp", &bad_path]);
    assert!(
        err.contains("InvalidArgument") && err.contains("pod memory limit -5"),
        "{err}"
    );
    c.ok(&["rmp", "-f", &pod_id]);
}

/// The pod's memory limit in force as the daemon reports it: its own series of
/// `container_spec_memory_limit_bytes` (ListPodSandboxMetrics), and the memory figures of its
/// config in its verbose status (`crictl inspectp`).
async fn reported_pod_limit(rt: &mut Rt, pod_id: &str) -> (u64, serde_json::Value) {
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let pod = metrics
        .pod_metrics
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .unwrap_or_else(|| panic!("no metrics of pod {pod_id}"));
    let limit = pod
        .metrics
        .iter()
        .find(|m| m.name == "container_spec_memory_limit_bytes")
        .and_then(|m| m.value.as_ref())
        .expect("the pod's memory limit metric")
        .value;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    (limit, info["config"]["memory"].clone())
}

fn memory_figures(limit: i64) -> Option<cri::LinuxContainerResources> {
    Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: limit,
        ..Default::default()
    })
}

/// UpdatePodSandboxResources through the real server, called as kubelet calls it after an
/// in-place resize (k8s-cri's client lacks the method: the harness sends it on its path): a
/// raise takes effect and survives a restart of the daemon; a limit below what the pod holds,
/// a bad figure and an unknown pod are refused with their status codes and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_pod_sandbox_resources_over_the_cri() {
    let mut d = Daemon::start().await;
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut sandbox = cri_harness::pod_config("resized", &logs);
    sandbox.linux = Some(cri::LinuxPodSandboxConfig {
        resources: memory_figures(8 * MIB as i64),
        ..Default::default()
    });
    let pod_id = cri_harness::run_pod(&mut rt, &sandbox).await;
    // A guest holding 3 MiB, without a limit of its own: the pod's is the one in force.
    let image = wat_file(d.dir.path(), "hold.wasm", &grow_and_hold(48));
    let image = format!("file://{}", image.display());
    let ctr = cri_harness::create(
        &mut rt,
        &pod_id,
        cri_harness::container_config("holder", &image, &[]),
        &sandbox,
    )
    .await
    .unwrap();
    cri_harness::start(&mut rt, &ctr).await;
    within(60, "the guest to hold 3 MiB", async {
        loop {
            let stats = rt
                .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let memory = stats.stats.unwrap().linux.unwrap().memory.unwrap();
            if memory.working_set_bytes.unwrap().value >= 3 * MIB {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        reported_pod_limit(&mut rt, &pod_id).await,
        (8 * MIB, json!({"limit": 8 * MIB, "overhead": 0}))
    );

    let channel = || cri_harness::unix_channel(&d.socket);
    let update = |limit: i64, overhead: i64| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod_id.clone(),
        overhead: memory_figures(overhead),
        resources: memory_figures(limit),
    };
    // Raised, with an overhead.
    cri_harness::update_pod_sandbox_resources(channel().await.unwrap(), update(16 << 20, 1 << 20))
        .await
        .unwrap();
    let raised = (16 * MIB, json!({"limit": 16 * MIB, "overhead": MIB}));
    assert_eq!(reported_pod_limit(&mut rt, &pod_id).await, raised);

    // Refused, each with its code, and nothing changes.
    let below_use = update(2 << 20, 0);
    let mut bad_cpu = update(0, 0);
    bad_cpu.resources.as_mut().unwrap().cpu_shares = -3;
    let unknown = UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: "no-such-pod".into(),
        ..update(32 << 20, 0)
    };
    for (request, code, says) in [
        (
            below_use,
            Code::FailedPrecondition,
            "its containers use now",
        ),
        (update(-7, 0), Code::InvalidArgument, "pod memory limit -7"),
        (
            update(0, -2),
            Code::InvalidArgument,
            "pod overhead memory -2",
        ),
        (bad_cpu, Code::InvalidArgument, "cpu shares -3"),
        (unknown, Code::NotFound, "no-such-pod"),
    ] {
        let e = cri_harness::update_pod_sandbox_resources(channel().await.unwrap(), request)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
        assert_eq!(reported_pod_limit(&mut rt, &pod_id).await, raised);
    }
    // An update without figures changes nothing.
    cri_harness::update_pod_sandbox_resources(
        channel().await.unwrap(),
        UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(reported_pod_limit(&mut rt, &pod_id).await, raised);

    // The pod's record keeps the new figures across a restart of the daemon.
    d.terminate();
    d.restart().await;
    let mut rt = d.runtime().await;
    assert_eq!(reported_pod_limit(&mut rt, &pod_id).await, raised);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
}
