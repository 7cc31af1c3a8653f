//! Memory limits: a guest that grows its memory past `memory_limit` ends OOMKilled.

use wasmpod_runtime::exit::ExitReason;
use wasmpod_tests::*;

/// Grows memory one page (64 KiB) at a time until memory.grow fails (-1), then traps, as a
/// Rust program does when its allocator cannot get more memory.
const GROW_UNTIL_REFUSED: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_past_the_limit_is_oom_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&tmp.path().join("state"));
    let image = wat_file(tmp.path(), "grow.wasm", GROW_UNTIL_REFUSED);
    let mut c = container("hog", &image, &[]);
    c.memory_limit = Some(2 << 20);
    let ran = run_container(&rt, pod("oom"), c).await.unwrap();
    assert_eq!(ran.exit.reason, ExitReason::OomKilled, "{:?}", ran.exit);
    assert_ne!(ran.exit.code, 0);
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
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&tmp.path().join("state"));
    let image = wat_file(
        tmp.path(),
        "grow-max.wasm",
        &GROW_UNTIL_REFUSED.replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 1 64)",
        ),
    );
    let ran = run_container(&rt, pod("nolimit"), container("grow", &image, &[]))
        .await
        .unwrap();
    assert_eq!(
        (ran.exit.code, ran.exit.reason),
        (134, ExitReason::Error),
        "{:?}",
        ran.exit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_within_reach_lets_the_guest_finish() {
    // The module grows to 16 pages (1 MiB) and exits 0; a 2 MiB limit does not get in its way.
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&tmp.path().join("state"));
    let image = wat_file(
        tmp.path(),
        "grow16.wasm",
        r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 15)) (i32.const -1)) (then unreachable))))"#,
    );
    let mut c = container("fits", &image, &[]);
    c.memory_limit = Some(2 << 20);
    let ran = run_container(&rt, pod("fits"), c).await.unwrap();
    assert_eq!(
        (ran.exit.code, ran.exit.reason),
        (0, ExitReason::Completed),
        "{:?}",
        ran.exit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_whose_initial_memory_exceeds_the_limit_is_oom_killed() {
    // The Rust guests start with more than 64 KiB of memory.
    for kind in ["p1", "p2"] {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime(&tmp.path().join("state"));
        let mut c = container("small", &wasm(&format!("hello.{kind}")), &[]);
        c.memory_limit = Some(64 << 10);
        let ran = run_container(&rt, pod("small"), c).await.unwrap();
        assert_eq!(
            ran.exit.reason,
            ExitReason::OomKilled,
            "{kind}: {:?}",
            ran.exit
        );
        assert!(
            !ran.stdout().contains("Hello"),
            "{kind}: it never ran: {}",
            ran.stdout()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_applies_to_each_run_afresh() {
    // Two runs of the same configuration in one runtime: both within the limit. (Usage from
    // one run must not count against the next.)
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&tmp.path().join("state"));
    for i in 0..2 {
        let mut c = container("hello", &wasm("hello.p1"), &[]);
        c.memory_limit = Some(16 << 20);
        let ran = run_container(&rt, pod(&format!("again-{i}")), c)
            .await
            .unwrap();
        assert_eq!(ran.exit.code, 0, "run {i}: {:?}", ran.exit);
    }
}
