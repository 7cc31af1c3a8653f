//! How a guest's end becomes an exit code and reason: `proc_exit`, a normal return, a trap,
//! preview1 modules and preview2 components.

use std::path::Path;
use std::sync::Arc;

use wasmpod_runtime::exit::{ExitReason, TRAP_CODE};
use wasmpod_runtime::runtime::Runtime;
use wasmpod_tests::*;

/// Compiles `wat_text` to `<dir>/<name>` and runs it in `rt`, without arguments or mounts.
async fn run_wat(rt: &Arc<Runtime>, dir: &Path, name: &str, wat_text: &str) -> Ran {
    let image = wat_file(dir, name, wat_text);
    run_guest(rt, &image, &[], vec![], vec![]).await
}

/// Runs the example guest `name` (`exit-code.p1`, say) with `args` in a fresh runtime.
async fn run_example(name: &str, args: &[&str]) -> Ran {
    let (_tmp, rt) = temp_runtime();
    run_guest(&rt, &wasm(name), args, vec![], vec![]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_code_is_reported_as_error() {
    let (tmp, rt) = temp_runtime();
    let ran = run_wat(&rt, tmp.path(), "exit42.wasm", &wat_proc_exit(42)).await;
    assert_exit(&ran.exit, 42, ExitReason::Error);
    assert!(!ran.exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_zero_and_normal_return_complete() {
    let (tmp, rt) = temp_runtime();
    let ran = run_wat(
        &rt,
        tmp.path(),
        "return.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    assert!(ran.exit.success());
    assert!(
        ran.log.is_empty(),
        "a silent guest that completes logs nothing: {:?}",
        ran.log
    );

    let ran = run_wat(&rt, tmp.path(), "exit0.wasm", &wat_proc_exit(0)).await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_134_with_message_in_exit_and_log() {
    let (tmp, rt) = temp_runtime();
    let ran = run_wat(
        &rt,
        tmp.path(),
        "trap.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
    )
    .await;
    assert_eq!(ran.exit.code, TRAP_CODE);
    assert_eq!(ran.exit.code, 134);
    assert_eq!(ran.exit.reason, ExitReason::Error);
    assert!(
        ran.exit.message.contains("unreachable"),
        "the exit message names the trap: {:?}",
        ran.exit.message
    );
    let stderr: Vec<_> = ran.log.iter().filter(|r| r.stream == "stderr").collect();
    assert!(
        stderr.iter().any(|r| r.text.contains("unreachable")),
        "the trap message is a stderr line of the container log: {:?}",
        ran.log
    );
    assert!(
        ran.log.iter().all(|r| r.stream == "stderr"),
        "nothing on stdout: {:?}",
        ran.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_after_output_keeps_the_output() {
    // A guest that prints, then traps: its output is logged before the trap message.
    let (tmp, rt) = temp_runtime();
    let ran = run_wat(
        &rt,
        tmp.path(),
        "print-trap.wasm",
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "before the trap\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))"#,
    )
    .await;
    assert_exit(&ran.exit, 134, ExitReason::Error);
    assert_eq!(ran.stdout(), "before the trap\n");
    let first_stderr = ran.log.iter().position(|r| r.stream == "stderr").unwrap();
    let stdout_at = ran.log.iter().position(|r| r.stream == "stdout").unwrap();
    assert!(stdout_at < first_stderr, "{:?}", ran.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_component_hello_completes() {
    let ran = run_example("hello.p2", &[]).await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    assert!(
        ran.stdout().contains("Hello from wasmpod!"),
        "{}",
        ran.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_exit_code_guest_reports_its_code() {
    let (_tmp, rt) = temp_runtime();
    for code in [3, 0, 125] {
        let arg = code.to_string();
        let ran = run_guest(&rt, &wasm("exit-code.p1"), &[&arg], vec![], vec![]).await;
        assert_eq!(ran.exit.code, code, "{:?}", ran.exit);
        let want = if code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        assert_eq!(ran.exit.reason, want);
        assert_eq!(ran.stdout(), format!("exiting with {code}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_exit_statuses_126_to_255_are_exact() {
    // wasmtime's WASI preview1 refuses `proc_exit` statuses outside 0..126 and traps; shells
    // use 126 and 127 ("not runnable", "not found"), so wasmpod's `proc_exit` takes every
    // status a process can exit with, as the kernel does (its low 8 bits).
    for code in [126, 127, 255] {
        let ran = run_example("exit-code.p1", &[&code.to_string()]).await;
        assert_exit(&ran.exit, code, ExitReason::Error);
    }
    let ran = run_example("exit-code.p1", &["256"]).await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_exit_code_is_only_success_or_failure() {
    // wasi:cli@0.2 `exit` takes a `result` (ok or err), not a number: wasi-libc maps any
    // non-zero status to `err`, which the host can only report as 1. So `exit(7)` in a
    // preview2 component shows as 1; `exit(0)` as 0.
    let (_tmp, rt) = temp_runtime();
    let ran = run_guest(&rt, &wasm("exit-code.p2"), &["7"], vec![], vec![]).await;
    assert_exit(&ran.exit, 1, ExitReason::Error);
    assert_eq!(ran.stdout(), "exiting with 7\n");
    let ran = run_guest(&rt, &wasm("exit-code.p2"), &["0"], vec![], vec![]).await;
    assert_exit(&ran.exit, 0, ExitReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_start_twice() {
    let (tmp, rt) = temp_runtime();
    let ran = run_wat(&rt, tmp.path(), "exit5.wasm", &wat_proc_exit(5)).await;
    assert_eq!(ran.exit.code, 5);
    let err = rt.start_container(&ran.container_id).unwrap_err();
    assert_eq!(
        err.kind,
        wasmpod_runtime::error::ErrorKind::FailedPrecondition
    );
    assert!(err.message.contains("exited"), "{err}");
    // The recorded exit is unchanged.
    assert_eq!(rt.wait_container(&ran.container_id).await.unwrap().code, 5);
}
