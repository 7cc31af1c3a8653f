//! Exec, ExecSync, attach and port-forward end to end: the real `crictl` (cri-tools v1.37.0,
//! client-go's SPDY and WebSocket executors and port-forwarder) against the real `wasmpod
//! serve` and its streaming server, checked on what crictl prints and how it exits; the
//! streaming URL's answers to bad requests; and that a thousand sessions of each kind leave
//! the daemon with the tasks and file descriptors it had before.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde_json::{json, Value};
use wasmpod_tests::cri::Daemon;
use wasmpod_tests::crictl::{
    container_json, file_image, id_of, pod_json, status, wait_state, Crictl, COMMAND_SECS,
};
use wasmpod_tests::images::{layout_tar, Image};
use wasmpod_tests::{output_within, text, wasmpod};

/// The tag the toolbox image is imported as.
const TOOLBOX: &str = "local/toolbox:stream";
/// What the http-hello guest answers.
const HELLO: &str = "hello from wasi:http\n";

/// The toolbox image (the multi-call program and a link per applet in `/bin`) plus a file that
/// is not Wasm, `/bin/script`, imported with `wasmpod image import` through the running daemon.
fn import_toolbox(d: &Daemon) -> &'static str {
    let dir = d.dir.path().join("toolbox");
    let layout = Image::toolbox()
        .file("bin/script", b"#!/bin/sh\necho not wasm\n")
        .write_layout(&dir.join("layout"));
    let archive = layout_tar(&layout, &dir.join("toolbox.tar"));
    let out = output_within(
        wasmpod(&d.dir.path().join("state"))
            .args(["image", "import", "--tag", TOOLBOX])
            .arg(&archive),
        COMMAND_SECS,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    TOOLBOX
}

/// A pod made with `crictl runp`: its id and the path of its config.
struct Pod {
    id: String,
    config: String,
}

fn runp(c: &Crictl, d: &Daemon, name: &str) -> Pod {
    let config = c.write(&format!("{name}-pod.json"), &pod_json(d, name));
    Pod {
        id: id_of(&c.ok(&["runp", &config])),
        config,
    }
}

/// `crictl create` and `start` of `image` running `command` in `pod`, with the keys of `extra`
/// (`stdin`, `stdin_once`) added to the config; the container's id once it runs.
fn run(c: &Crictl, pod: &Pod, name: &str, image: &str, command: &[&str], extra: Value) -> String {
    let mut config = container_json(name, image, &[]);
    config["command"] = json!(command);
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    let path = c.write(&format!("{name}.json"), &config);
    let id = id_of(&c.ok(&["create", &pod.id, &path, &pod.config]));
    assert_eq!(c.ok(&["start", &id]).trim(), id);
    wait_state(c, &id, "CONTAINER_RUNNING");
    id
}

/// A crictl running in the background, its stdout and stderr gathered as they come; killed
/// (by its pid) if still running when dropped.
struct Background {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    fn spawn(cmd: Command, stdin: Stdio) -> Self {
        Self::spawn_with(cmd, stdin, true)
    }

    /// With `pipe_stdout` false, stdout is what `cmd` already says.
    fn spawn_with(mut cmd: Command, stdin: Stdio, pipe_stdout: bool) -> Self {
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .stdin(stdin)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crictl");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let gather = |mut from: Box<dyn Read + Send>, into: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    into.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let mut readers = vec![gather(Box::new(child.stderr.take().unwrap()), err.clone())];
        if let Some(stdout) = child.stdout.take() {
            readers.push(gather(Box::new(stdout), out.clone()));
        }
        Background {
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> String {
        text(&self.out.lock().unwrap())
    }

    fn stderr(&self) -> String {
        text(&self.err.lock().unwrap())
    }

    /// Polls until stdout holds `needle` (bounded: 60 s); the stdout.
    #[track_caller]
    fn wait_stdout(&self, needle: &str) -> String {
        for _ in 0..3000 {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "crictl never printed {needle:?}\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill with our own child's pid and a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits for crictl to end (bounded: COMMAND_SECS); its status, stdout and stderr.
    #[track_caller]
    fn wait(mut self) -> (ExitStatus, String, String) {
        let status = self.wait_status();
        (status, self.stdout(), self.stderr())
    }

    /// Waits for crictl to end and its output to be read (bounded: COMMAND_SECS).
    #[track_caller]
    fn wait_status(&mut self) -> ExitStatus {
        for _ in 0..COMMAND_SECS * 50 {
            if let Some(status) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    r.join().unwrap();
                }
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "crictl did not end\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one crictl run printed: (success, stdout, stderr).
type Ran = (bool, String, String);

/// crictl with `args` and `input` on its stdin (then closed).
fn with_stdin(c: &Crictl, args: &[&str], input: &[u8]) -> Ran {
    let mut bg = Background::spawn(c.command(args), Stdio::piped());
    let mut stdin = bg.child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let (status, out, err) = bg.wait();
    (status.success(), out, err)
}

/// crictl with `args` and a terminal as its stdin and stdout (what `-t` needs: crictl 1.37
/// checks stdin, and crashes on a nil size queue when stdout is not a terminal too); stderr
/// stays a pipe. Its stdout is what the terminal's other end read: crictl puts the terminal
/// in raw mode for the session, so the guest's bytes come through unchanged.
fn with_terminal(c: &Crictl, args: &[&str]) -> Ran {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the two ints; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = c.command(args);
    cmd.stdout(slave.try_clone().unwrap());
    let mut bg = Background::spawn_with(cmd, Stdio::from(slave), false);
    // Read until the last slave descriptor (crictl's) is closed: EIO from the master.
    let mut from = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let status = bg.wait_status();
    let out = reader.join().unwrap();
    (status.success(), text(&out), bg.stderr())
}

fn crictl_run(c: &Crictl, args: &[&str]) -> Ran {
    let out = c.output(args);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// What crictl says when a streamed exec ends with `code`.
fn terminated(code: i32) -> String {
    format!("command terminated with exit code {code}")
}

/// ExecSync (`exec -s`) and streamed exec over SPDY and WebSocket of toolbox applets: exact
/// output, exit codes, stdin to EOF, a terminal, the 127 and 126 cases, and a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_exec_sync_of_toolbox_applets() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let image = import_toolbox(&d);
    let pod = runp(&c, &d, "exec");
    let id = run(&c, &pod, "box", image, &["pause"], json!({}));
    let id = id.as_str();

    // ExecSync: crictl prints stdout then stderr, a newline after each, and fails on a
    // non-zero exit naming the code and the stderr.
    assert_eq!(
        crictl_run(&c, &["exec", "-s", id, "echo", "-n", "hello"]),
        (true, "hello\n\n".into(), String::new())
    );
    let script = "echo out; echo err >&2; exit 3";
    let (ok, out, err) = crictl_run(&c, &["exec", "-s", id, "sh", "-c", script]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "command '{} {script}' exited with 3: err\\n",
            "sh -c"
        )),
        "{err}"
    );

    // Streamed, over each transport: the bytes as written, each stream on its own.
    for transport in ["spdy", "websocket"] {
        let exec = |cmd: &[&str]| {
            let mut args = vec!["exec", "-r", transport, id];
            args.extend_from_slice(cmd);
            crictl_run(&c, &args)
        };
        assert_eq!(
            exec(&["echo", "-n", "hello"]),
            (true, "hello".into(), String::new()),
            "{transport}"
        );
        let (ok, out, err) = exec(&["sh", "-c", script]);
        assert!(!ok, "{transport}");
        assert_eq!(out, "out\n", "{transport}");
        assert!(err.starts_with("err\n"), "{transport}: {err}");
        assert!(err.contains(&terminated(3)), "{transport}: {err}");

        // -i: stdin through to EOF, which ends cat and lets the script go on.
        let stdin = |cmd: &[&str], input: &[u8]| {
            let mut args = vec!["exec", "-i", "-r", transport, id];
            args.extend_from_slice(cmd);
            with_stdin(&c, &args, input)
        };
        assert_eq!(
            stdin(&["cat"], b"line 1\nline 2 without a newline"),
            (
                true,
                "line 1\nline 2 without a newline".into(),
                String::new()
            ),
            "{transport}"
        );
        assert_eq!(
            stdin(&["sh", "-c", "cat; echo; echo after EOF"], b"abc"),
            (true, "abc\nafter EOF\n".into(), String::new()),
            "{transport}"
        );
        assert_eq!(
            stdin(&["wc", "-c"], &[b'x'; 300_000]),
            (true, "300000\n".into(), String::new()),
            "{transport}"
        );

        // -t (crictl wants -i and a terminal on its stdin): no stderr stream, the guest's
        // stderr comes on stdout, in order.
        let mut args = vec!["exec", "-i", "-t", "-r", transport, id, "sh", "-c", script];
        let (ok, out, err) = with_terminal(&c, &args);
        assert!(!ok, "{transport}");
        assert_eq!(out, "out\nerr\n", "{transport}: {err}");
        assert!(err.contains(&terminated(3)), "{transport}: {err}");
        args.truncate(6);
        args.extend(["echo", "fine"]);
        let (ok, out, err) = with_terminal(&c, &args);
        assert_eq!((ok, out.as_str()), (true, "fine\n"), "{transport}: {err}");
        // client-go may still be sending the terminal size when so short a session has ended:
        // it logs that (as it does against kubelet and containerd), and nothing else.
        assert!(
            err.lines()
                .all(|l| l.contains("Encoding terminal size failed")),
            "{transport}: {err}"
        );

        // Found nowhere: 127, worded as runc words it; found but not Wasm: 126.
        let (ok, _, err) = exec(&["no-such-tool"]);
        assert!(!ok, "{transport}");
        assert!(
            err.contains("executable file not found in $PATH"),
            "{transport}: {err}"
        );
        assert!(err.contains(&terminated(127)), "{transport}: {err}");
        let (ok, _, err) = exec(&["script"]);
        assert!(!ok, "{transport}");
        assert!(err.contains("exec format error"), "{transport}: {err}");
        assert!(err.contains(&terminated(126)), "{transport}: {err}");
        // A path works as a name does.
        assert_eq!(
            exec(&["/bin/echo", "by path"]),
            (true, "by path\n".into(), String::new()),
            "{transport}"
        );
    }
    let (ok, _, err) = crictl_run(&c, &["exec", "-s", id, "no-such-tool"]);
    assert!(!ok);
    assert!(err.contains("exited with 127"), "{err}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    let (ok, _, err) = crictl_run(&c, &["exec", "-s", id, "script"]);
    assert!(!ok);
    assert!(err.contains("exited with 126"), "{err}");
    assert!(err.contains("exec format error"), "{err}");

    // A timeout: DeadlineExceeded, and the container goes on as before.
    let (ok, _, err) = crictl_run(&c, &["exec", "-s", "--timeout", "1", id, "sleep", "100"]);
    assert!(!ok);
    assert!(err.contains("DeadlineExceeded"), "{err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    assert_eq!(status(&c, id)["state"], "CONTAINER_RUNNING");
    assert_eq!(
        crictl_run(&c, &["exec", "-s", id, "echo", "still", "here"]),
        (true, "still here\n\n\n".into(), String::new())
    );
    // Stopping the container ends its execs as a kill would end a process: 137.
    let running: Vec<Background> = ["spdy", "websocket"]
        .into_iter()
        .map(|transport| {
            let args = [
                "exec",
                "-r",
                transport,
                id,
                "sh",
                "-c",
                "echo started; sleep 100",
            ];
            Background::spawn(c.command(&args), Stdio::null())
        })
        .collect();
    for exec in &running {
        exec.wait_stdout("started\n");
    }
    c.ok(&["stop", id]);
    for exec in running {
        let (st, out, err) = exec.wait();
        assert!(!st.success());
        assert_eq!(out, "started\n");
        assert!(err.contains(&terminated(137)), "{err}");
    }

    // Stopped: exec of any kind is refused with FailedPrecondition.
    for args in [
        &["exec", "-s", id, "echo"][..],
        &["exec", id, "echo"],
        &["exec", "-r", "websocket", id, "echo"],
        &["attach", id],
    ] {
        let (ok, _, err) = crictl_run(&c, args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("FailedPrecondition") && err.contains("not running"),
            "{args:?}: {err}"
        );
    }
}

/// `crictl attach` to a shell created with stdin and stdin_once: one attacher types into it,
/// a second (without stdin) sees the same output, and closing stdin ends the shell and both
/// sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_shell_with_stdin_once() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = runp(&c, &d, "attach");
    for transport in ["spdy", "websocket"] {
        let name = format!("sh-{transport}");
        let id = run(
            &c,
            &pod,
            &name,
            &file_image("toolbox.p1"),
            &["sh"],
            json!({"stdin": true, "stdin_once": true}),
        );
        let mut typist = Background::spawn(
            c.command(&["attach", "-i", "-r", transport, &id]),
            Stdio::piped(),
        );
        let watcher =
            Background::spawn(c.command(&["attach", "-r", transport, &id]), Stdio::null());
        let mut stdin = typist.child.stdin.take().unwrap();
        // Attach replays nothing: ping until the watcher sees a ping, so it is attached
        // before the line that counts (bounded).
        let mut attached = false;
        for n in 0..100 {
            writeln!(stdin, "echo ping {n}").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            if watcher.stdout().contains("ping") {
                attached = true;
                break;
            }
        }
        assert!(
            attached,
            "{transport}: the watcher saw nothing: {}",
            watcher.stderr()
        );
        writeln!(stdin, "echo -n hello; echo ' to stderr' >&2").unwrap();
        let typed = typist.wait_stdout("hello");
        let watched = watcher.wait_stdout("hello");
        assert!(typed.ends_with("hello"), "{transport}: {typed:?}");
        assert!(watched.ends_with("hello"), "{transport}: {watched:?}");
        assert_eq!(status(&c, &id)["state"], "CONTAINER_RUNNING");

        // Closing stdin (stdin_once) ends the shell, and with it both attach sessions.
        drop(stdin);
        let (st, out, err) = typist.wait();
        assert!(st.success(), "{transport}: {st}: {err}");
        assert!(out.ends_with("hello"), "{transport}: {out:?}");
        assert_eq!(err, " to stderr\n", "{transport}");
        let (st, out, err) = watcher.wait();
        assert!(st.success(), "{transport}: {st}: {err}");
        assert!(out.ends_with("hello"), "{transport}: {out:?}");
        assert_eq!(err, " to stderr\n", "{transport}");
        let st = wait_state(&c, &id, "CONTAINER_EXITED");
        assert_eq!(st["exitCode"], 0, "{transport}: {st:#}");
        // The log has what the shell wrote, whoever was attached.
        let log = c.output(&["logs", &id]);
        assert!(text(&log.stdout).contains("hello"), "{log:?}");
    }
}

/// `crictl port-forward <pod> :<port>` in the background, over `transport`: the process and the
/// local port it picked (from its "Forwarding from 127.0.0.1:N -> port" line).
fn port_forward(c: &Crictl, pod: &Pod, transport: &str, port: u16) -> (Background, u16) {
    let remote = format!(":{port}");
    let bg = Background::spawn(
        c.command(&["port-forward", "-r", transport, &pod.id, &remote]),
        Stdio::null(),
    );
    let out = bg.wait_stdout(&format!(" -> {port}\n"));
    let local = out
        .lines()
        .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {out:?}"));
    (bg, local)
}

/// One HTTP/1.1 GET of `/` on a fresh connection to 127.0.0.1:`port`: the whole answer as
/// text (empty when the connection closes without one), or the error that ended it.
fn get(port: u16) -> Result<String, std::io::Error> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(COMMAND_SECS)))?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    Ok(text(&answer))
}

#[track_caller]
fn assert_hello(answer: Result<String, std::io::Error>) {
    let answer = answer.expect("an answer through the forward");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(HELLO), "{answer}");
}

/// `crictl port-forward` over SPDY and over WebSocket to a wasi:http guest: separate
/// connections each get the page; a port nothing listens on is a clean error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_to_a_wasi_http_guest() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = runp(&c, &d, "forward");
    run(
        &c,
        &pod,
        "http",
        &file_image("http-hello.p2"),
        &[],
        json!({}),
    );
    for transport in ["spdy", "websocket"] {
        let (good, port) = port_forward(&c, &pod, transport, 8080);
        // curl, twice: two connections through one forward.
        for _ in 0..2 {
            let (code, body) = wasmpod_tests::curl(&format!("http://127.0.0.1:{port}/")).await;
            assert_eq!((code, body.as_str()), (200, HELLO), "{transport}");
        }

        // Nothing listens on 9999: the connection is closed without an answer and crictl
        // prints why. (client-go ends a whole forward once a stream reports an error, as it
        // does against kubelet, so the bad port has a crictl of its own.)
        let (bad, bad_port) = port_forward(&c, &pod, transport, 9999);
        let answer = get(bad_port);
        assert!(
            answer.as_ref().map_or(true, |a| a.is_empty()),
            "{transport}: {answer:?}"
        );
        let (st, _, err) = bad.wait();
        assert!(!st.success(), "{transport}");
        assert!(
            err.contains("error forwarding port 9999 to pod")
                && err.contains(&pod.id)
                && err.contains("Connection refused"),
            "{transport}: {err}"
        );
        // The good forward is still up.
        assert_hello(get(port));
        good.signal(libc::SIGINT);
        let (_, out, err) = good.wait();
        assert_eq!(
            out.matches("Handling connection for").count(),
            3,
            "{transport}: {out}{err}"
        );
    }
}

/// A raw HTTP/1.1 request to the streaming server at `addr`: (status, headers, body).
fn raw_request(addr: &str, request: &str) -> (u16, String, String) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(COMMAND_SECS)))
        .unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    let (head, body_start) = loop {
        let n = tcp.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the server closed without an answer: {}",
            text(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break (text(&answer[..at]), at + 4);
        }
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while answer.len() < body_start + length {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "the answer was cut: {}", text(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head, text(&answer[body_start..]))
}

/// A GET of `path` with `headers` (each ending in CRLF).
fn get_request(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: wasmpod\r\n{headers}\r\n")
}

const SPDY_UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n";

/// The streaming URL, called directly with what no client should send: an unknown token, a
/// token again, a token on the wrong path, no upgrade, a protocol version it does not speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_url_refuses_bad_requests() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = runp(&c, &d, "bad");
    let id = run(
        &c,
        &pod,
        "box",
        &file_image("toolbox.p1"),
        &["pause"],
        json!({}),
    );
    let mut rt = d.runtime().await;
    let mut exec_url = async || {
        let url = rt
            .exec(cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["echo".into(), "hi".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{url}"));
        let (addr, path) = rest.split_once('/').unwrap();
        (addr.to_owned(), format!("/{path}"))
    };

    let (addr, path) = exec_url().await;
    assert!(path.starts_with("/exec/"), "{path}");
    let token = path.strip_prefix("/exec/").unwrap();
    // A token never handed out, and one of the right length but changed.
    let changed = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('A') { 'B' } else { 'A' }
    );
    for path in ["/exec/nosuchtoken".to_owned(), format!("/exec/{changed}")] {
        let (status, _, body) = raw_request(&addr, &get_request(&path, SPDY_UPGRADE));
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body, "unknown or expired streaming token");
    }

    // A protocol version the server does not speak: 403 naming the ones it does; the token is
    // used up by then, so the same request again is a 404.
    let unsupported = format!("{SPDY_UPGRADE}X-Stream-Protocol-Version: v9.channel.k8s.io\r\n");
    let (status, head, body) = raw_request(&addr, &get_request(&path, &unsupported));
    assert_eq!(status, 403, "{head}\n{body}");
    let accepted: Vec<&str> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-accepted-stream-protocol-versions"))
        .map(|(_, v)| v.trim())
        .collect();
    let supported = [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ];
    assert_eq!(accepted, supported, "{head}");
    for version in supported {
        assert!(body.contains(&format!("\"{version}\"")), "{body}");
    }
    assert!(body.contains("v9.channel.k8s.io"), "{body}");
    let (status, _, body) = raw_request(&addr, &get_request(&path, &unsupported));
    assert_eq!(status, 404, "{body}");

    // No upgrade at all: 400; then the token is gone too.
    let (addr, path) = exec_url().await;
    let (status, _, body) = raw_request(&addr, &get_request(&path, ""));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SPDY/3.1 or websocket"), "{body}");
    let (status, _, _) = raw_request(&addr, &get_request(&path, ""));
    assert_eq!(status, 404);

    // An exec token on the attach path.
    let (addr, path) = exec_url().await;
    let attach = path.replacen("/exec/", "/attach/", 1);
    let (status, _, body) = raw_request(&addr, &get_request(&attach, SPDY_UPGRADE));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body, "the token is for exec, not attach");

    // Port-forward speaks one SPDY protocol.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (addr, path) = url
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .unwrap_or_else(|| panic!("{url}"));
    let (status, head, body) = raw_request(addr, &get_request(&format!("/{path}"), &unsupported));
    assert_eq!(status, 403, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: portforward.k8s.io"),
        "{head}"
    );

    // And the server still serves a well-formed session.
    assert_eq!(
        crictl_run(&c, &["exec", &id, "echo", "-n", "fine"]),
        (true, "fine".into(), String::new())
    );
}

/// The daemon's live tokio tasks and open descriptors, from `crictl info`'s verbose part.
fn figures(c: &Crictl) -> (u64, u64) {
    let info = c.json(&["info", "-o", "json"]);
    let process = &info["info"]["process"];
    match (process["tasks"].as_u64(), process["openFiles"].as_u64()) {
        (Some(tasks), Some(files)) => (tasks, files),
        _ => panic!("no process figures in {info:#}"),
    }
}

/// Polls the figures until they are at or under `limit` (bounded: 300 reads, 100 ms apart);
/// the last figures read.
fn settle(c: &Crictl, limit: (u64, u64)) -> (u64, u64) {
    let mut last = figures(c);
    for _ in 0..300 {
        if last.0 <= limit.0 && last.1 <= limit.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = figures(c);
    }
    last
}

/// The runs the leak check makes of each kind of session.
struct Load {
    exec_sync: usize,
    exec: usize,
    attach: usize,
    forwarded: usize,
}

/// `load.exec_sync` ExecSync calls over the CRI client, `load.exec` streamed execs and
/// `load.attach` attach sessions through crictl, and `load.forwarded` connections through one
/// `crictl port-forward`; each checked on what it carried. The highest figures read while ten
/// attach sessions were open.
async fn sessions(
    c: &Crictl,
    rt: &mut wasmpod_tests::cri::Rt,
    pod: &Pod,
    (shell, ticker): (&str, &str),
    load: Load,
) -> (u64, u64) {
    let mut busiest = (0, 0);
    for n in 0..load.exec_sync {
        let answer = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: shell.to_owned(),
                cmd: vec!["echo".into(), n.to_string()],
                timeout: 60,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (answer.exit_code, text(&answer.stdout)),
            (0, format!("{n}\n"))
        );
    }
    for n in 0..load.exec {
        let n = n.to_string();
        assert_eq!(
            crictl_run(c, &["exec", shell, "echo", &n]),
            (true, format!("{n}\n"), String::new())
        );
    }
    // Ten at a time, each until it has printed a tick, then ended: half by SIGKILL, half the
    // way crictl exits on a second Ctrl-C.
    for batch in 0..load.attach.div_ceil(10) {
        let attached: Vec<Background> = (0..10.min(load.attach - batch * 10))
            .map(|_| Background::spawn(c.command(&["attach", ticker]), Stdio::null()))
            .collect();
        for a in &attached {
            a.wait_stdout("tick\n");
        }
        // All ten attached: the figures show them.
        let now = figures(c);
        busiest = (busiest.0.max(now.0), busiest.1.max(now.1));
        for (i, a) in attached.into_iter().enumerate() {
            if i % 2 == 0 {
                drop(a);
            } else {
                a.signal(libc::SIGINT);
                std::thread::sleep(Duration::from_millis(100));
                a.signal(libc::SIGINT);
                a.wait();
            }
        }
    }
    if load.forwarded > 0 {
        let (forward, port) = port_forward(c, pod, "spdy", 8080);
        for _ in 0..load.forwarded {
            assert_hello(get(port));
        }
        drop(forward);
    }
    busiest
}

/// A thousand ExecSync calls, a hundred each of streamed execs, attach sessions and
/// forwarded connections: afterwards the daemon has the tasks and open files it had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_leave_no_tasks_or_descriptors_behind() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = runp(&c, &d, "leak");
    let toolbox = file_image("toolbox.p1");
    let shell = run(&c, &pod, "shell", &toolbox, &["pause"], json!({}));
    let tick = "while true; do echo tick; sleep 1; done";
    let ticker = run(&c, &pod, "ticker", &toolbox, &["sh", "-c", tick], json!({}));
    run(
        &c,
        &pod,
        "http",
        &file_image("http-hello.p2"),
        &[],
        json!({}),
    );
    // One CRI connection for the whole test, open at both readings.
    let mut rt = d.runtime().await;
    let containers = (shell.as_str(), ticker.as_str());

    // A warm-up of each kind, so that whatever is made once (caches, pools) is there for the
    // baseline; then the baseline, read until two readings agree.
    let warm = Load {
        exec_sync: 5,
        exec: 2,
        attach: 2,
        forwarded: 2,
    };
    sessions(&c, &mut rt, &pod, containers, warm).await;
    let mut baseline = figures(&c);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = figures(&c);
        if now == baseline {
            break;
        }
        baseline = now;
    }

    let load = Load {
        exec_sync: 1000,
        exec: 100,
        attach: 100,
        forwarded: 100,
    };
    let busiest = sessions(&c, &mut rt, &pod, containers, load).await;
    let after = settle(&c, baseline);
    eprintln!(
        "tasks, open files: baseline {baseline:?}, with ten attached {busiest:?}, after {after:?}"
    );
    // The figures do see sessions (else the check below would prove nothing).
    assert!(
        busiest.0 > baseline.0 && busiest.1 > baseline.1,
        "ten open attach sessions did not show: {baseline:?} before, {busiest:?} with them"
    );
    assert!(
        after.0 <= baseline.0 && after.1 <= baseline.1,
        "the daemon kept tasks or descriptors: (tasks, open files) {baseline:?} before, {after:?} after"
    );
    // The containers are as they were.
    for id in [&shell, &ticker] {
        assert_eq!(status(&c, id)["state"], "CONTAINER_RUNNING");
    }
}

/// ExecSync of a command printing more than the CRI's 16 MiB message limit (kubelet's and
/// crictl's gRPC receive limit, and the daemon's send limit): the output is cut to fit, with a
/// note on stderr, and the call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_over_the_message_limit_is_cut_to_fit() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = runp(&c, &d, "big");
    let id = run(
        &c,
        &pod,
        "box",
        &file_image("toolbox.p1"),
        &["pause"],
        json!({}),
    );
    // 3,000,000 numbered lines: 20,888,896 bytes.
    let (ok, out, err) = crictl_run(&c, &["exec", "-s", &id, "seq", "1", "3000000"]);
    assert!(ok, "{err}");
    let expected: String = (1..=3_000_000).map(|n| format!("{n}\n")).collect();
    let kept = 15 << 20;
    assert!(out.len() > kept, "{} bytes", out.len());
    assert!(expected.starts_with(&out[..kept]));
    // crictl prints the response's stderr on its stdout, after the response's stdout.
    assert!(
        out.contains("bytes of stdout dropped"),
        "{}",
        &out[out.len() - 200..]
    );
}
