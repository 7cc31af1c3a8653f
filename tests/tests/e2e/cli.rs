//! The real `wasmpod run` binary on the example pods: output prefixed by container, the
//! summary, exit status, SIGTERM handling, and its help.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wasmpod_tests::*;

/// `wasmpod run <flags> examples/<manifest>` over `state`, to the end.
fn run_example(state: &Path, flags: &[&str], manifest: &str) -> Output {
    output_within(
        wasmpod(state).arg("run").args(flags).arg(example(manifest)),
        120,
    )
}

/// `wasmpod run <manifest>` over `state`, started with its output piped, for tests that
/// signal it while it runs.
fn spawn_run(state: &Path, manifest: &Path) -> Child {
    wasmpod(state)
        .arg("run")
        .arg(manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn run_hello_prefixes_lines_and_prints_a_summary() {
    require_guests();
    let state = tempfile::tempdir().unwrap();
    let out = run_example(state.path(), &[], "hello/pod.yaml");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        "hello-p1 | Hello from wasmpod!",
        "hello-p2 | Hello from wasmpod!",
        "hello-p1 | GREETING=hello from the preview 1 module",
        "hello-p2 | GREETING=hello from the preview 2 component",
        "hello-p1 | args: from a pod",
        "hello-p2 | args: from a pod",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    // Per container, the lines keep their order.
    for name in ["hello-p1", "hello-p2"] {
        let own: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name} | ")))
            .collect();
        assert_eq!(own.len(), 5, "{stdout}");
        assert!(own[0].ends_with("Hello from wasmpod!"), "{own:?}");
        assert!(own[4].contains("cwd: "), "{own:?}");
    }
    // stderr: the guests' stderr lines, then the summary.
    assert!(stderr.contains("hello-p1 | hello: done"), "{stderr}");
    assert!(stderr.contains("hello-p2 | hello: done"), "{stderr}");
    let header = stderr
        .lines()
        .position(|l| l.starts_with("CONTAINER") && l.contains("EXIT") && l.contains("REASON"))
        .unwrap_or_else(|| panic!("no summary header in:\n{stderr}"));
    let rows: Vec<&str> = stderr.lines().skip(header + 1).collect();
    for name in ["hello-p1", "hello-p2"] {
        let row = rows
            .iter()
            .find(|r| r.starts_with(name))
            .unwrap_or_else(|| panic!("no summary row for {name}:\n{stderr}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[1..4], ["0", "Completed", "0"], "{row}");
    }
    assert!(!stdout.contains("CONTAINER"), "the summary goes to stderr");
    let pods: Vec<_> = std::fs::read_dir(state.path().join("pods"))
        .unwrap()
        .collect();
    assert!(
        pods.is_empty(),
        "the pod is removed after the run: {pods:?}"
    );

    // --no-summary leaves it out.
    let out = run_example(state.path(), &["--no-summary"], "hello/pod.yaml");
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("CONTAINER"));
}

#[test]
fn run_exit_codes_exits_with_the_containers_code() {
    require_guests();
    let state = tempfile::tempdir().unwrap();
    let out = run_example(state.path(), &[], "exit-codes/pod.yaml");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("fail | exiting with 3"), "{stdout}");
    let row = stderr
        .lines()
        .find(|l| l.starts_with("fail "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["3", "Error"], "{row}");
}

#[test]
fn run_from_the_manifest_directory_with_a_relative_path() {
    // `wasmpod run pod.yaml` in the manifest's directory finds ../wasm/... images.
    require_guests();
    let state = tempfile::tempdir().unwrap();
    let out = output_within(
        wasmpod(state.path())
            .args(["run", "pod.yaml"])
            .current_dir(example("exit-codes")),
        120,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn sigterm_terminates_the_forever_pod_at_once_with_143() {
    require_guests();
    let state = tempfile::tempdir().unwrap();
    let mut child = spawn_run(state.path(), &example("forever/pod.yaml"));
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let _ = line_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    // Wait for the ticker's first tick: the pod is running.
    let tick = loop {
        match line_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) if l.contains("tick") => break l,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("no tick line from the forever pod: {e}");
            }
        }
    };
    assert!(tick.starts_with("ticker  | tick 1"), "{tick:?}");
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(s) => s.unwrap(),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("wasmpod did not exit after SIGTERM");
        }
    };
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "exits with the terminated containers' code, not by the signal: {status:?}\n{stderr}"
    );
    assert!(
        stdout.iter().any(|l| l == "spinner | spinning"),
        "{stdout:?}"
    );
    for name in ["ticker", "spinner"] {
        let row = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")) && l.contains("143"))
            .unwrap_or_else(|| panic!("no terminated summary row for {name}:\n{stderr}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[1..3], ["143", "Error"], "{row}");
    }
    assert!(stderr.contains("SIGTERM"), "the summary says why: {stderr}");
}

#[test]
fn run_help_explains_restarts_and_grace() {
    let state = tempfile::tempdir().unwrap();
    let out = output_within(wasmpod(state.path()).args(["run", "--help"]), 120);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("restartPolicy"), "{help}");
    assert!(help.contains("terminationGracePeriodSeconds"), "{help}");
    assert!(help.contains("--state-dir"), "{help}");
    assert!(help.contains("<MANIFEST>"), "{help}");
}

#[test]
fn missing_manifest_is_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("nope.yaml");
    let out = output_within(wasmpod(state.path()).arg("run").arg(&missing), 120);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_second_sigterm_exits_at_once_with_130() {
    require_guests();
    let dir = tempfile::tempdir().unwrap();
    // A long grace period: without the second signal, wasmpod would wait 60 s.
    let manifest = manifest_file(
        dir.path(),
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: slow, annotations: {{wasmpod.io/stop: wait-grace}}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 60\n  containers: [{{name: ticker, image: {}}}]\n",
            wasm("forever.p1").display()
        ),
    );
    let mut child = spawn_run(&dir.path().join("state"), &manifest);
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let first = out_rx.recv_timeout(Duration::from_secs(120));
    assert!(
        first.as_deref().is_ok_and(|l| l.contains("tick")),
        "{first:?}"
    );
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // Once wasmpod says it is stopping, signal again (repeatedly: the second listener is set
    // up just after that line) until it exits.
    let mut stderr_lines = Vec::new();
    loop {
        match err_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                let stopping = l.contains("stopping");
                stderr_lines.push(l);
                if stopping {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no 'stopping' line after SIGTERM ({e}): {stderr_lines:?}");
            }
        }
    }
    let status = loop {
        // SAFETY: as above; the child is not reaped before try_wait sees it exit.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stderr_lines.extend(err_rx.try_iter());
    assert_eq!(status.code(), Some(130), "{status:?} {stderr_lines:?}");
    assert!(
        stderr_lines.iter().any(|l| l.contains("second signal")),
        "{stderr_lines:?}"
    );
}

/// `resources.limits.cpu: 200m` holds a spinning guest to a fifth of a core: the `wasmpod run`
/// process's own CPU time over 5 s of spinning (the guest and the runtime around it; an
/// unlimited spinner makes it near 1) is between 0.1 and 0.35 cores. A bad CPU quantity is
/// refused before anything runs, naming the field.
#[test]
fn run_holds_a_spinner_to_its_cpu_limit() {
    require_guests();
    let dir = tempfile::tempdir().unwrap();
    let spinner = format!(
        "\n  containers:\n    - name: spinner\n      image: {}\n      args: [--spin]\n      \
         resources: {{limits: {{cpu: CPU}}}}\n",
        wasm("forever.p2").display()
    );
    let bad = manifest_file(
        dir.path(),
        "bad.yaml",
        &pod_yaml("cpu", "Never", &spinner.replace("CPU", "half")),
    );
    let out = output_within(wasmpod(dir.path()).arg("run").arg(&bad), 120);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"container spinner: resources.limits.cpu: "half" is not a quantity"#),
        "{stderr}"
    );

    let manifest = manifest_file(
        dir.path(),
        "pod.yaml",
        &pod_yaml("cpu", "Never", &spinner.replace("CPU", "200m")),
    );
    let mut child = spawn_run(dir.path(), &manifest);
    let pid = child.id().to_string();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The guest says it spins before it does (its stdout ends with the process).
    let spinning = lines
        .map_while(Result::ok)
        .take(10)
        .any(|l| l == "spinner | spinning");
    let cores = spinning.then(|| {
        let (cpu0, t0) = (cpu_time_of(&pid), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        (cpu_time_of(&pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
    });
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
    let cores = cores.expect("the spinner never said it spins");
    println!("wasmpod run, limits.cpu 200m: {cores:.3} cores");
    assert!((0.1..0.35).contains(&cores), "{cores:.3} cores");
}
