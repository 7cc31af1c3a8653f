//! Container logs (CRI format, both streams, partial lines, where the file goes) and what a
//! guest is given: args, env, working directory.

use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::spec::{HostPathKind, Medium};
use wasmpod_tests::*;

/// Runs a guest whose stdout is exactly `output` (fsprobe.p1 reading it from a host file), so a
/// test can choose the bytes the log writer gets.
async fn guest_printing(output: &str) -> Ran {
    let (tmp, rt) = temp_runtime();
    let host = tmp.path().join("files");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("output"), output).unwrap();
    run_guest(
        &rt,
        &wasm("fsprobe.p1"),
        &["read", "/files/output"],
        vec![host_path("files", &host, HostPathKind::Directory)],
        vec![mount("files", None, "/files", true)],
    )
    .await
}

async fn hello_log(kind: &str) {
    let (_tmp, rt) = temp_runtime();
    let mut p = pod("hello");
    p.volumes = vec![empty_dir("data", Medium::Disk, None)];
    let mut c = container(
        "hello",
        &wasm(&format!("hello.{kind}")),
        &["from", "a pod", "--flag"],
    );
    c.env = vec![("GREETING".into(), format!("hi from {kind}"))];
    c.mounts = vec![mount("data", None, "/data", false)];
    let ran = run_container(&rt, p, c).await.unwrap();
    assert_exit(&ran.exit, 0, ExitReason::Completed);

    // Every line was checked against `<RFC3339Nano> stdout|stderr F|P <text>` by read_log.
    let full: Vec<(&str, &str, &str)> = ran
        .log
        .iter()
        .map(|r| (r.stream.as_str(), r.tag.as_str(), r.text.as_str()))
        .collect();
    let stdout: Vec<_> = full.iter().filter(|r| r.0 == "stdout").collect();
    assert_eq!(
        stdout,
        [
            &("stdout", "F", "Hello from wasmpod!"),
            &("stdout", "F", format!("GREETING=hi from {kind}").as_str()),
            &("stdout", "F", "args: from a pod --flag"),
            &("stdout", "F", "PWD=(unset)"),
            &("stdout", "F", "cwd: /"),
        ],
        "{kind}: {full:?}"
    );
    let stderr: Vec<_> = full.iter().filter(|r| r.0 == "stderr").collect();
    assert_eq!(
        stderr,
        [&("stderr", "F", "hello: done")],
        "{kind}: {full:?}"
    );

    // The raw file holds exactly those lines, timestamps in order.
    let path = rt
        .container(&ran.container_id)
        .unwrap()
        .log_path
        .clone()
        .unwrap();
    let raw = std::fs::read_to_string(&path).unwrap();
    assert_eq!(raw.lines().count(), 6, "{raw}");
    assert!(
        raw.lines()
            .any(|l| l.ends_with(" stdout F Hello from wasmpod!")),
        "{raw}"
    );
    let times: Vec<_> = ran.log.iter().map(|r| r.time.clone()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "timestamps are in order");
    // The default place, as kubelet lays logs out: <log dir>/<name>/<attempt>.log.
    assert!(path.ends_with("hello/0.log"), "{}", path.display());
}

p1_and_p2_tests!(
    hello_log =>
    hello_p1_logs_both_streams_with_args_and_env,
    hello_p2_logs_both_streams_with_args_and_env
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_args_or_env_the_guest_sees_none() {
    let (_tmp, rt) = temp_runtime();
    let ran = run_guest(&rt, &wasm("hello.p1"), &[], vec![], vec![]).await;
    let out = ran.stdout();
    assert!(out.contains("GREETING=(unset)\n"), "{out}");
    assert!(out.contains("args: \n"), "{out}");
}

/// workingDir reaches the guest as PWD (and `wasi:cli/environment.initial-cwd` for
/// components). wasi-libc starts every program in `/` whatever the host says, so relative
/// paths of C/Rust guests still resolve from `/` (a limitation the README states).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_reaches_the_guest_as_pwd() {
    for kind in ["p1", "p2"] {
        let (_tmp, rt) = temp_runtime();
        let mut p = pod("cwd");
        p.volumes = vec![empty_dir("data", Medium::Disk, None)];
        let mut c = container("cwd", &wasm(&format!("hello.{kind}")), &[]);
        c.working_dir = Some("/data".into());
        c.mounts = vec![mount("data", None, "/data", false)];
        let ran = run_container(&rt, p, c).await.unwrap();
        assert_eq!(ran.exit.code, 0, "{kind}: {:?}", ran.exit);
        assert!(
            ran.stdout().contains("\nPWD=/data\n"),
            "{kind}:\n{}",
            ran.stdout()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_become_partial_records_and_a_last_unterminated_line_is_kept() {
    let max = wasmpod_runtime::log::MAX_LINE;
    let long = "x".repeat(2 * max + 100);
    let ran = guest_printing(&format!("{long}\nshort\r\nno newline")).await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.exit);
    let recs: Vec<(&str, &str, usize)> = ran
        .log
        .iter()
        .map(|r| (r.stream.as_str(), r.tag.as_str(), r.text.len()))
        .collect();
    assert_eq!(
        recs,
        [
            ("stdout", "P", max),
            ("stdout", "P", max),
            ("stdout", "F", 100),
            ("stdout", "F", 5),
            ("stdout", "F", 10),
        ]
    );
    assert_eq!(ran.log[3].text, "short", "CR of CRLF is dropped");
    assert_eq!(ran.log[4].text, "no newline");
    // Reassembled, the partial records give back the line.
    assert_eq!(
        ran.stdout(),
        format!("{long}\nshort\nno newline\n"),
        "partials join into the full line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_directory_and_log_path_are_honoured() {
    let (tmp, rt) = temp_runtime();
    let logs = tmp.path().join("kubelet-logs");
    let mut p = pod("logs");
    p.log_directory = Some(logs.clone());
    let mut c = container("named", &wasm("hello.p1"), &[]);
    c.log_path = Some("named/custom.log".into());
    let ran = run_container(&rt, p, c).await.unwrap();
    assert_eq!(ran.exit.code, 0);
    let path = logs.join("named/custom.log");
    assert_eq!(
        rt.container(&ran.container_id).unwrap().log_path.as_deref(),
        Some(path.as_path())
    );
    let recs = read_log(&path);
    assert_eq!(recs.len(), 6, "{recs:?}");

    // A log path leading out of the log directory is refused.
    let pod_id = rt.run_pod(pod("logs2")).unwrap();
    for bad in ["../escape.log", "/tmp/abs.log"] {
        let mut c = container("bad", &wasm("hello.p1"), &[]);
        c.log_path = Some(bad.into());
        let err = rt.create_container(&pod_id, c).await.unwrap_err();
        assert_eq!(
            err.kind,
            wasmpod_runtime::error::ErrorKind::InvalidArgument,
            "{bad}: {err}"
        );
        assert!(err.message.contains("log path"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_every_line_with_pod_and_container() {
    let (_tmp, rt) = temp_runtime();
    let mut live = rt.subscribe_logs();
    let ran = run_container(
        &rt,
        pod("live-pod"),
        container("live-c", &wasm("hello.p2"), &[]),
    )
    .await
    .unwrap();
    assert_eq!(ran.exit.code, 0);
    let mut got = Vec::new();
    while let Ok(line) = live.try_recv() {
        got.push(line);
    }
    assert_eq!(got.len(), ran.log.len(), "{got:?}");
    for (line, rec) in got.iter().zip(&ran.log) {
        assert_eq!(&*line.pod, "live-pod");
        assert_eq!(&*line.container, "live-c");
        assert_eq!(line.stream.as_str(), rec.stream);
        assert_eq!(line.text, rec.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_env_names_the_last_one_wins() {
    // Kubernetes (and containerd building the OCI spec) let a later env entry with the same
    // name replace an earlier one.
    let (_tmp, rt) = temp_runtime();
    let p = pod("env-pod");
    let mut c = container("env", &wasm("hello.p1"), &[]);
    c.env = vec![
        ("GREETING".into(), "first".into()),
        ("GREETING".into(), "second".into()),
    ];
    let ran = run_container(&rt, p, c).await.unwrap();
    assert!(
        ran.stdout().contains("GREETING=second\n"),
        "the last definition wins, as in Kubernetes: {}",
        ran.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_line_cut_inside_a_utf8_character_is_kept_intact() {
    // The cut into partial records falls inside a two-byte character: the records must still
    // join back into the guest's text (CRI log readers concatenate P records byte-wise).
    let max = wasmpod_runtime::log::MAX_LINE;
    let line = format!("{}{}", "x".repeat(max - 1), "é".repeat(8));
    let ran = guest_printing(&format!("{line}\n")).await;
    assert_eq!(ran.exit.code, 0, "{:?}", ran.exit);
    assert_eq!(ran.log.len(), 2, "one partial and one full record");
    assert_eq!(ran.log[0].tag, "P");
    assert!(
        !ran.stdout().contains('\u{fffd}'),
        "the character cut in two became replacement characters: ...{:?} | {:?}",
        &ran.log[0].text[ran.log[0].text.len() - 8..],
        &ran.log[1].text
    );
    assert_eq!(ran.stdout(), format!("{line}\n"));
}

/// An attacker's guest floods its log; wasmpod's own log files are rotated at the limit
/// (kubelet's containerLogMaxSize / MaxFiles) instead of filling the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_guest_gets_its_own_log_rotated_at_the_limit() {
    use wasmpod_runtime::log::{LogLimit, LogLimits, MIN_MAX_SIZE};
    let tmp = tempfile::tempdir().unwrap();
    let rt = wasmpod_runtime::runtime::Runtime::new(wasmpod_runtime::runtime::RuntimeOptions {
        state_dir: tmp.path().join("state"),
        log_limits: LogLimits {
            own: LogLimit::Rotate {
                max_size: MIN_MAX_SIZE,
                max_files: 2,
            },
            ..LogLimits::default()
        },
        ..Default::default()
    })
    .unwrap();
    // About 2.5 MB of records: 40 times the limit.
    let lines = 50_000;
    let image = wat_file(tmp.path(), "flood.wasm", &wat_print_lines(lines));
    let ran = run_container(&rt, pod("flood"), container("flood", &image, &[]))
        .await
        .unwrap();
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    let log = rt
        .container(&ran.container_id)
        .unwrap()
        .log_path
        .clone()
        .unwrap();
    let dir = log.parent().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["0.log", "0.log.1"]);
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= MIN_MAX_SIZE, "{f}: {len} bytes over the limit");
    }
    // The newest lines are kept, in order, across the two files.
    let kept: Vec<u32> = read_log(&dir.join("0.log.1"))
        .into_iter()
        .chain(ran.log)
        .map(|r| r.text.parse().unwrap())
        .collect();
    assert_eq!(kept.last(), Some(&lines));
    assert!(
        kept.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in the kept lines"
    );
}

/// A guest printing lines as fast as it can to a console that pauses now and then (the pipe
/// fills, the printer waits): every line reaches `wasmpod run`'s terminal, in order, because
/// the guest waits for the console instead of lines being dropped.
#[test]
fn live_output_of_wasmpod_run_keeps_every_line_for_a_slow_console() {
    use std::io::{BufRead, Read};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let lines = 200_000;
    let image = wat_file(tmp.path(), "flood.wasm", &wat_print_lines(lines));
    let yaml = pod_yaml(
        "flood",
        "Never",
        &format!(
            "\n  containers:\n    - name: flood\n      image: {}\n",
            image.display()
        ),
    );
    let manifest = manifest_file(tmp.path(), "pod.yaml", &yaml);
    let mut child = wasmpod(&tmp.path().join("state"))
        .args(["run", "--no-summary"])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hang guard, not a speed check.
    let pid = child.id();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog
            .recv_timeout(std::time::Duration::from_secs(300))
            .is_err()
        {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut printed = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flood | ") {
            printed.push(n.parse::<u32>().unwrap());
            if printed.len() % 20_000 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    let status = child.wait().unwrap();
    let _ = done.send(());
    let stderr = errors.join().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("dropped"), "{stderr}");
    assert_eq!(printed.len(), lines as usize, "lines were lost on the way");
    assert!(
        printed.iter().zip(1..).all(|(&n, want)| n == want),
        "out of order"
    );
}

#[test]
fn log_limits_below_the_minimum_are_refused_by_wasmpod_run() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifest_file(
        tmp.path(),
        "pod.yaml",
        &pod_yaml("x", "Never", "\n  containers: []\n"),
    );
    for flags in [["--log-max-size", "1Ki"], ["--log-max-files", "0"]] {
        let out = output_within(
            wasmpod(&tmp.path().join("state"))
                .arg("run")
                .args(flags)
                .arg(&manifest),
            60,
        );
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("log"), "{flags:?}: {stderr}");
    }
}

/// 300k variables (an attacker's manifest or CRI request): merged later-wins in linear time,
/// every one reaching the guest. Quadratic merging took minutes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_thousand_env_vars_reach_the_guest() {
    let (_tmp, rt) = temp_runtime();
    let mut c = container("env", &wasm("hello.p1"), &[]);
    c.env = std::iter::once(("GREETING".to_owned(), "first".to_owned()))
        .chain((0..300_000).map(|i| (format!("VAR_{i}"), i.to_string())))
        .chain(std::iter::once(("GREETING".to_owned(), "last".to_owned())))
        .collect();
    let ran = run_container(&rt, pod("env"), c).await.unwrap();
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    assert!(ran.stdout().contains("GREETING=last\n"), "{}", ran.stdout());
}
