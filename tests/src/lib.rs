//! A small shared harness for the wasmpod integration tests (`tests/tests/`).
//!
//! Everything here drives real components: the `wasmpod-runtime` library in-process, the real
//! guest programs built by `examples/build.sh`, and the real `wasmpod` binary. Nothing is
//! mocked. Each test makes its own [`tempfile::TempDir`] for the state directory, volumes and
//! host files.

pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod crictl;
pub mod images;
pub mod kube_stream;
pub mod kubelet;
pub mod peers;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmpod_runtime::error::Error;
use wasmpod_runtime::exit::{Exit, ExitReason};
use wasmpod_runtime::runtime::{Runtime, RuntimeOptions};
use wasmpod_runtime::spec::{
    ContainerConfig, HostPathKind, Medium, MountSource, MountSpec, PodConfig, VolumeSource,
    VolumeSpec,
};

/// The root of the cargo workspace (the directory holding `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// A file under `examples/` (a pod manifest, say).
pub fn example(rel: &str) -> PathBuf {
    workspace_root().join("examples").join(rel)
}

/// A guest built by `examples/build.sh`: `wasm("hello.p1")` is `examples/wasm/hello.p1.wasm`.
/// Fails the test with a clear message when the guests have not been built.
pub fn wasm(name: &str) -> PathBuf {
    let path = example(&format!("wasm/{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run examples/build.sh first (it builds the guest programs the tests use)",
        path.display()
    );
    path
}

/// Checks every example guest the suite uses is built, with the same clear message.
pub fn require_guests() {
    for name in [
        "hello",
        "writer",
        "reader",
        "exit-code",
        "forever",
        "fsprobe",
    ] {
        for kind in ["p1", "p2"] {
            wasm(&format!("{name}.{kind}"));
        }
    }
}

/// Compiles WAT text to a `.wasm` file `name` in `dir` and returns its path.
pub fn wat_file(dir: &Path, name: &str, wat_text: &str) -> PathBuf {
    let bytes = wat::parse_str(wat_text).expect("the WAT fixture is valid");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing the WAT fixture");
    path
}

/// A WASI preview1 module calling `proc_exit(code)` from `_start`.
pub fn wat_proc_exit(code: i32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const {code}))))"#
    )
}

/// A WASI preview1 module printing `count` numbered lines (`00000001` …, 8 digits) to stdout
/// as fast as it can, one `fd_write` per line, then returning.
pub fn wat_print_lines(count: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: the line at 16, 9 bytes; nwritten at 8
  (data (i32.const 0) "\10\00\00\00\09\00\00\00")
  (data (i32.const 16) "00000000\n")
  (func (export "_start") (local $n i32) (local $i i32) (local $c i32)
    (block $done (loop $line
      (br_if $done (i32.ge_u (local.get $n) (i32.const {count})))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      ;; increment the decimal counter at 16..24
      (local.set $i (i32.const 23))
      (block $carried (loop $digit
        (local.set $c (i32.load8_u (local.get $i)))
        (if (i32.eq (local.get $c) (i32.const 57))
          (then
            (i32.store8 (local.get $i) (i32.const 48))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br $digit))
          (else
            (i32.store8 (local.get $i) (i32.add (local.get $c) (i32.const 1)))
            (br $carried)))))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $line)))))"#
    )
}

/// A runtime over `state` that runs local `.wasm` files. A runtime of this process that was
/// just dropped on the same state directory may still hold its database for a moment (its
/// last container task ends after waking the waiter), so opening retries for up to 5 s.
pub fn runtime(state: &Path) -> Arc<Runtime> {
    let open = || {
        Runtime::new(RuntimeOptions {
            state_dir: state.to_path_buf(),
            ..Default::default()
        })
    };
    for _ in 0..250 {
        match open() {
            Err(e) if e.message.contains("Database already open") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("creating the runtime"),
        }
    }
    open().expect("creating the runtime")
}

/// A fresh temporary directory and a runtime whose state lives in its `state` subdirectory,
/// leaving the rest of the directory free for the test's host files. Keep the directory alive
/// as long as the runtime.
pub fn temp_runtime() -> (tempfile::TempDir, Arc<Runtime>) {
    let tmp = tempfile::tempdir().expect("creating a temporary directory");
    let rt = runtime(&tmp.path().join("state"));
    (tmp, rt)
}

/// A pod config named `name` (also its hostname). Each call is a new pod with a uid of its
/// own, as kubelet gives every pod, so two pods of one name may live side by side.
pub fn pod(name: &str) -> PodConfig {
    static PODS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PODS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PodConfig {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        uid: format!("uid-{name}-{n}"),
        hostname: name.to_owned(),
        ..Default::default()
    }
}

/// A container running the `.wasm` file `image` with `args`.
pub fn container(name: &str, image: &Path, args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.to_owned(),
        image: image.display().to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

pub fn empty_dir(name: &str, medium: Medium, size_limit: Option<u64>) -> VolumeSpec {
    VolumeSpec {
        name: name.to_owned(),
        source: VolumeSource::EmptyDir { medium, size_limit },
    }
}

pub fn host_path(name: &str, path: &Path, kind: HostPathKind) -> VolumeSpec {
    VolumeSpec {
        name: name.to_owned(),
        source: VolumeSource::HostPath {
            path: path.to_path_buf(),
            kind,
        },
    }
}

/// A mount of pod volume `volume` (optionally its `sub_path`) at `path`.
pub fn mount(volume: &str, sub_path: Option<&str>, path: &str, read_only: bool) -> MountSpec {
    MountSpec {
        source: MountSource::Volume {
            name: volume.to_owned(),
            sub_path: sub_path.map(str::to_owned),
        },
        container_path: path.to_owned(),
        read_only,
    }
}

/// How one container run ended, with what it logged.
#[derive(Debug)]
pub struct Ran {
    pub pod_id: String,
    pub container_id: String,
    pub exit: Exit,
    pub log: Vec<LogRecord>,
}

impl Ran {
    pub fn stdout(&self) -> String {
        stream_text(&self.log, "stdout")
    }
    pub fn stderr(&self) -> String {
        stream_text(&self.log, "stderr")
    }
}

/// Creates a pod and one container in `rt`, runs it to the end and reads its log.
/// The pod is left in place (its volumes too); the caller's TempDir cleans up.
pub async fn run_container(
    rt: &Arc<Runtime>,
    pod_config: PodConfig,
    config: ContainerConfig,
) -> Result<Ran, Error> {
    let pod_id = rt.run_pod(pod_config)?;
    let container_id = rt.create_container(&pod_id, config).await?;
    rt.start_container(&container_id)?;
    let exit = within(
        60,
        "the container to exit",
        rt.wait_container(&container_id),
    )
    .await?;
    let c = rt.container(&container_id)?;
    let log = read_log(
        c.log_path
            .as_deref()
            .expect("runtime containers have a log"),
    );
    Ok(Ran {
        pod_id,
        container_id,
        exit,
        log,
    })
}

/// Creates pod `pod_name` in `rt` with `config` in it and starts the container, without
/// waiting for it: for tests that watch, stop or kill a running guest. Returns its id.
pub async fn start_in_new_pod(
    rt: &Arc<Runtime>,
    pod_name: &str,
    config: ContainerConfig,
) -> String {
    let pod_id = rt.run_pod(pod(pod_name)).expect("creating the pod");
    let id = rt
        .create_container(&pod_id, config)
        .await
        .expect("creating the container");
    rt.start_container(&id).expect("starting the container");
    id
}

/// Checks an exit's code and reason together, showing the whole exit (its message) on failure.
#[track_caller]
pub fn assert_exit(exit: &Exit, code: i32, reason: ExitReason) {
    assert_eq!((exit.code, exit.reason), (code, reason), "{exit:?}");
}

/// Runs `image` with `args` and `mounts` over `volumes` in a fresh pod of `rt`.
pub async fn run_guest(
    rt: &Arc<Runtime>,
    image: &Path,
    args: &[&str],
    volumes: Vec<VolumeSpec>,
    mounts: Vec<MountSpec>,
) -> Ran {
    let mut p = pod("probe");
    p.volumes = volumes;
    let mut c = container("probe", image, args);
    c.mounts = mounts;
    run_container(rt, p, c)
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", image.display()))
}

/// A guard against hangs: fails the test if `fut` has not finished after `secs` seconds.
/// This is not a speed check; the bounds are far above what any run needs.
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("gave up waiting {secs}s for {what}"),
    }
}

/// One record of a CRI-format log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub time: String,
    pub stream: String,
    /// `F` (full line) or `P` (partial).
    pub tag: String,
    pub text: String,
}

/// Reads a CRI log file (`<RFC3339Nano> stdout|stderr F|P <text>` per line), checking every
/// line's format. A missing file reads as no records.
pub fn read_log(path: &Path) -> Vec<LogRecord> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading log {}: {e}", path.display()),
    };
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "log {} does not end with a newline",
        path.display()
    );
    text.lines().map(parse_log_line).collect()
}

/// Parses and checks one CRI log line.
pub fn parse_log_line(line: &str) -> LogRecord {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("not a CRI log line: {line:?}");
    };
    let text = parts.next().unwrap_or("");
    assert!(is_rfc3339_nano(time), "bad timestamp in log line {line:?}");
    assert!(
        stream == "stdout" || stream == "stderr",
        "bad stream in log line {line:?}"
    );
    assert!(tag == "F" || tag == "P", "bad tag in log line {line:?}");
    LogRecord {
        time: time.to_owned(),
        stream: stream.to_owned(),
        tag: tag.to_owned(),
        text: text.to_owned(),
    }
}

/// `2006-01-02T15:04:05.999999999Z07:00`, as Go's `time.RFC3339Nano` (which kubelet parses).
pub fn is_rfc3339_nano(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.len() == r.len() && d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}

/// The text of one stream's full and partial records, a newline after each full one.
pub fn stream_text(log: &[LogRecord], stream: &str) -> String {
    let mut out = String::new();
    for r in log.iter().filter(|r| r.stream == stream) {
        out.push_str(&r.text);
        if r.tag == "F" {
            out.push('\n');
        }
    }
    out
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time (user + system) process `pid` (`/proc/<pid>`, or `self`) has used so far.
pub fn cpu_time_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name (field 2) may hold spaces; the fields after it are space-separated.
    let after = &stat[stat
        .rfind(')')
        .expect("stat has the command in parentheses")
        + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the command.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// How many threads this process has.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("reading /proc/self/task")
        .count()
}

/// The real `wasmpod` binary of this build profile, built on first use (once per process).
pub fn wasmpod_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("wasmpod", "wasmpod"))
}

/// Binary `bin` of workspace package `package`, built now with cargo in this test's build
/// profile and target dir, so binaries that find each other side by side (the containerd shim
/// starts the `wasmpod` beside it) land in one directory.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // Tests live in <target>/<profile>/deps, binaries (the bench) in <target>/<profile>.
    let dir = exe.parent().expect("the executable has a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let path = profile_dir.join(bin);
    // Always ask cargo: it is quick when the binary is up to date, and a stale binary
    // would test old code.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--target-dir"])
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) if path.is_file() => {
            eprintln!("warning: `cargo build -p {package}` failed ({s}); using the existing binary")
        }
        other => panic!("building {bin} with `cargo build -p {package}` failed: {other:?}"),
    }
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Debian's curl against `url` (30 s at most): (HTTP status, body); status 0 when no answer.
pub async fn curl(url: &str) -> (u16, String) {
    curl_in(None, url).await
}

/// [`curl`] from inside the network namespace file `netns` (`/run/netns/<name>`) when given,
/// for servers only reachable there.
pub async fn curl_in(netns: Option<&Path>, url: &str) -> (u16, String) {
    curl_opts(netns, &[], url).await
}

/// [`curl_in`] with more curl options (`-k` for kubelet's self-signed HTTPS, `-X POST`).
pub async fn curl_opts(netns: Option<&Path>, opts: &[&str], url: &str) -> (u16, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("curl");
            c
        }
        None => tokio::process::Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(opts)
        .arg(url)
        .output()
        .await
        .expect("running curl (apt install curl)");
    let out = text(&out.stdout);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A process's captured output as text (invalid UTF-8 replaced, so a failure still shows).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `wasmpod --state-dir <state>`, ready for more arguments.
pub fn wasmpod(state: &Path) -> Command {
    let mut cmd = Command::new(wasmpod_bin());
    cmd.arg("--state-dir").arg(state);
    cmd.env_remove("WASMPOD_STATE_DIR");
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `cmd` to completion, capturing its output; kills it and fails the test if it has not
/// finished after `secs` seconds (a hang guard, not a speed check).
pub fn output_within(cmd: &mut Command, secs: u64) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.expect("waiting for the command"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {secs}s");
        }
    }
}

/// The text of a Pod manifest named `name` with `restart_policy`; `spec` goes on under `spec:`
/// (each of its lines indented two spaces, the first starting on a new line). The header is the
/// same in every test; only what the pod holds differs.
pub fn pod_yaml(name: &str, restart_policy: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
         spec:\n  restartPolicy: {restart_policy}{spec}"
    )
}

/// A manifest file `name` in `dir` with `yaml`.
pub fn manifest_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("writing the manifest");
    path
}

/// Declares two tests, `$p1` and `$p2`, running the async case `$case("p1")` and `$case("p2")`:
/// most checks must hold for the preview1 module and the preview2 component of a guest alike,
/// and a test of its own for each build names which one failed.
#[macro_export]
macro_rules! p1_and_p2_tests {
    ($case:ident => $p1:ident, $p2:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $p1() {
            $case("p1").await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $p2() {
            $case("p2").await;
        }
    };
}

/// A free TCP port on loopback: bound and released at once, for a peer to bind next.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// Percent-encodes a URL query value (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
