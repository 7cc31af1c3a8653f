//! Memory limits: a guest that grows its memory past `memory_limit` ends OOMKilled.

use std::path::Path;
use std::sync::Arc;

use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::exit::{ExitReason, KILLED_CODE};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_tests::*;

/// Grows memory one page (64 KiB) at a time until memory.grow fails (-1), then traps, as a
/// Rust program does when its allocator cannot get more memory.
const GROW_UNTIL_REFUSED: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"#;

/// Runs `image` without arguments under `memory_limit`, as container `name` of pod `name`.
async fn run_limited(
    rt: &Arc<Runtime>,
    name: &str,
    image: &Path,
    memory_limit: Option<u64>,
) -> Ran {
    let mut c = container(name, image, &[]);
    c.memory_limit = memory_limit;
    run_container(rt, pod(name), c).await.unwrap()
}

/// Compiles `wat_text` and runs it in a fresh runtime under `memory_limit`.
async fn run_wat_limited(wat_text: &str, memory_limit: Option<u64>) -> Ran {
    let (tmp, rt) = temp_runtime();
    let image = wat_file(tmp.path(), "guest.wasm", wat_text);
    run_limited(&rt, "guest", &image, memory_limit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_past_the_limit_is_oom_killed() {
    let ran = run_wat_limited(GROW_UNTIL_REFUSED, Some(2 << 20)).await;
    // 137 with OOMKilled, as kubelet and critest expect of a container the OOM killer ended.
    assert_exit(&ran.exit, KILLED_CODE, ExitReason::OomKilled);
    assert!(ran.exit.message.contains("memory limit"), "{:?}", ran.exit);
    assert!(
        ran.log
            .iter()
            .any(|r| r.stream == "stderr" && r.text.contains("memory limit")),
        "{:?}",
        ran.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_the_same_guest_is_an_ordinary_trap() {
    // Bounded by the module's own maximum (64 pages), so it does not take the host's memory.
    let bounded = GROW_UNTIL_REFUSED.replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1 64)",
    );
    let ran = run_wat_limited(&bounded, None).await;
    assert_exit(&ran.exit, 134, ExitReason::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_within_reach_lets_the_guest_finish() {
    // The module grows to 16 pages (1 MiB) and exits 0; a 2 MiB limit does not get in its way.
    let grow16 = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 15)) (i32.const -1)) (then unreachable))))"#;
    let ran = run_wat_limited(grow16, Some(2 << 20)).await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_below_the_initial_memory_is_refused_at_creation() {
    // The Rust guests declare more than 64 KiB of initial memory: such a limit could never
    // run them, so it is a bad argument (as the CRI asks), not an OOM kill at start.
    for kind in ["p1", "p2"] {
        let (_tmp, rt) = temp_runtime();
        let mut c = container("small", &wasm(&format!("hello.{kind}")), &[]);
        c.memory_limit = Some(64 << 10);
        let e = run_container(&rt, pod("small"), c).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{kind}: {e}");
        assert!(
            e.message.contains("initial") || e.message.contains("starts with"),
            "{kind}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_applies_to_each_run_afresh() {
    // Two runs of the same configuration in one runtime: both within the limit. (Usage from
    // one run must not count against the next.)
    let (_tmp, rt) = temp_runtime();
    for i in 0..2 {
        let ran = run_limited(
            &rt,
            &format!("again-{i}"),
            &wasm("hello.p1"),
            Some(16 << 20),
        )
        .await;
        assert_eq!(ran.exit.code, 0, "run {i}: {:?}", ran.exit);
    }
}
