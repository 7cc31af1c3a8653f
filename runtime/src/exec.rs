//! Exec, ExecSync and attach: Wasm-native, in the container's context.
//!
//! An exec is a new WASI instance with the container's volumes, env, working dir, limits and
//! pod network. Its program is found the way a shell finds a command, in the image's files:
//! `cmd[0]` with a `/` is a path; a bare name is searched on the image's `PATH`, then `/bin`
//! and `/usr/bin`. What is found must be Wasm (a link to a multi-call module works; argv[0]
//! keeps the name typed). An image with no files (a single Wasm binary), or a name that is
//! the container's own program, runs the container's program with `cmd` as its argv, so a
//! single-binary image can be exec'd with a sub-command. Anything else is exit 127, worded
//! as runc words it.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use crate::container::Container;
use crate::engine::{GuestKind, Program, Task, Wasm};
use crate::error::{Error, ErrorKind, Result};
use crate::exit::{Exit, ExitReason};
use crate::log::Stream;
use crate::runtime::Runtime;
use crate::stdio::{Output, Stdio, PIPE_CHUNKS};

/// What ExecSync keeps of stdout and stderr together: the CRI's 16 MiB message limit (kubelet's
/// and crictl's receive limit), less room for the rest of the response and the note saying
/// what was dropped, so the answer always arrives.
pub const EXEC_OUTPUT_CAP: usize = (16 << 20) - 4096;
/// The exit code of a command found nowhere (as a shell reports it).
pub const NOT_FOUND_CODE: i32 = 127;
/// The exit code of a command found but not runnable (not Wasm).
pub const NOT_RUNNABLE_CODE: i32 = 126;

/// What ExecSync answers.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The client's side of a streamed exec or attach: chunks in, chunks out.
#[derive(Default)]
pub struct StreamIo {
    /// The client's stdin; its end is the client closing stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Absent with a terminal: stderr then goes to stdout.
    pub stderr: Option<mpsc::Sender<Bytes>>,
}

impl StreamIo {
    fn outputs(&mut self, tty: bool) -> (Output, Output) {
        let pipe = |tx: Option<mpsc::Sender<Bytes>>| tx.map_or(Output::Null, Output::Pipe);
        let stdout = pipe(self.stdout.take());
        let stderr = match tty {
            true => stdout.clone(),
            false => pipe(self.stderr.take()),
        };
        (stdout, stderr)
    }
}

/// Kills an exec whose client went away (its future was dropped).
struct KillOnDrop(Arc<Task>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill(Exit::killed(
            ExitReason::Killed,
            "the exec's client went away",
        ));
    }
}

impl Runtime {
    /// Starts `cmd` in the running container `id` (see the module docs for how it is found).
    /// A command that cannot run is a task that has already exited 126 or 127, its reason on
    /// stderr.
    pub async fn exec(&self, id: &str, cmd: &[String], stdio: Stdio) -> Result<Arc<Task>> {
        if cmd.is_empty() {
            return Err(Error::invalid("exec: the command is empty"));
        }
        let container = self.running_container(id)?;
        let pod = self.pod(&container.pod_id)?;
        match self.exec_program(&container, &cmd[0]).await? {
            Found::Program(program) => {
                container.spawn_exec(self.engine(), &pod, &program, cmd.to_vec(), stdio)
            }
            Found::Not(code, why) => {
                stdio.stderr.runtime_line(&why);
                Ok(Arc::new(Task::exited(Exit {
                    code,
                    reason: ExitReason::Error,
                    message: why,
                })))
            }
        }
    }

    /// Runs `cmd` in container `id` to its end and returns its output (each stream capped at
    /// [`EXEC_OUTPUT_CAP`], the excess dropped and said so on stderr). Past `timeout` the
    /// command is killed and the answer is `DeadlineExceeded`, as containerd answers.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let (out_tx, out_rx) = mpsc::channel(PIPE_CHUNKS);
        let (err_tx, err_rx) = mpsc::channel(PIPE_CHUNKS);
        let stdio = Stdio {
            stdin: false,
            stdout: Output::Pipe(out_tx),
            stderr: Output::Pipe(err_tx),
        };
        let task = self.exec(id, cmd, stdio).await?;
        let _kill = KillOnDrop(task.clone());
        let budget = AtomicUsize::new(EXEC_OUTPUT_CAP);
        let run = async {
            let (stdout, stderr, exit) = tokio::join!(
                capture(out_rx, Stream::Stdout, &budget),
                capture(err_rx, Stream::Stderr, &budget),
                task.wait()
            );
            let mut output = ExecOutput {
                stdout: stdout.bytes,
                stderr: stderr.bytes,
                exit_code: exit.code,
            };
            for dropped in [stdout.dropped, stderr.dropped].into_iter().flatten() {
                output.stderr.extend_from_slice(dropped.as_bytes());
            }
            output
        };
        match timeout {
            None => Ok(run.await),
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(output) => Ok(output),
                Err(_) => {
                    task.kill(Exit::killed(ExitReason::Killed, "exec timed out"));
                    task.wait().await;
                    Err(Error::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "timeout {}s exceeded: command {cmd:?} killed",
                            limit.as_secs_f64()
                        ),
                    ))
                }
            },
        }
    }

    /// Runs `cmd` in container `id` with a client's streams until it exits; returns its exit.
    /// Dropping the future (the client went away) kills the command.
    pub async fn exec_streams(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        mut io: StreamIo,
    ) -> Result<Exit> {
        let (stdout, stderr) = io.outputs(tty);
        let stdin = io.stdin.take();
        let stdio = Stdio {
            stdin: stdin.is_some(),
            stdout,
            stderr,
        };
        let task = self.exec(id, cmd, stdio).await?;
        let _kill = KillOnDrop(task.clone());
        let feed = async {
            if let Some(stdin) = stdin {
                task.feed_stdin(stdin, true).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            exit = task.wait() => Ok(exit),
            _ = feed => unreachable!("feeding stdin never ends the exec"),
        }
    }

    /// Joins the running container `id`: its output from now on goes to the client's streams,
    /// and the client's stdin to the guest's (when the container was created with `stdin`; with
    /// `stdinOnce` the guest's stdin ends when this client closes it). Returns when the
    /// container exits or the client goes away.
    pub async fn attach(&self, id: &str, mut io: StreamIo) -> Result<()> {
        let container = self.running_container(id)?;
        let task = container.task()?;
        if io.stdin.is_some() && !container.config.stdin {
            return Err(Error::precondition(format!(
                "container {id} was not created with stdin: attach without it"
            )));
        }
        let (stdout, stderr) = io.outputs(container.config.tty);
        let mut output = container.watch_output();
        let feed = async {
            if let Some(stdin) = io.stdin.take() {
                task.feed_stdin(stdin, container.config.stdin_once).await;
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(feed);
        let mut ended = false;
        loop {
            // Once the guest has ended, what it wrote last is already here: deliver it all.
            let next = if ended {
                match output.try_recv() {
                    Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
                    Err(TryRecvError::Lagged(n)) => Err(n),
                    Ok(chunk) => Ok(chunk),
                }
            } else {
                tokio::select! {
                    r = output.recv() => match r {
                        Ok(chunk) => Ok(chunk),
                        Err(RecvError::Lagged(n)) => Err(n),
                        Err(RecvError::Closed) => return Ok(()),
                    },
                    _ = task.wait() => {
                        ended = true;
                        continue;
                    }
                    () = &mut feed => unreachable!("feeding stdin never ends the attach"),
                }
            };
            let chunk = match next {
                Ok(chunk) => chunk,
                Err(n) => {
                    stderr.runtime_line(&format!(
                        "wasmpod: this attach fell behind; {n} writes of the container were skipped"
                    ));
                    continue;
                }
            };
            let out = match chunk.stream {
                Stream::Stdout => &stdout,
                Stream::Stderr => &stderr,
            };
            if let Output::Pipe(tx) = out {
                if tx.send(chunk.bytes).await.is_err() {
                    // The client went away.
                    return Ok(());
                }
            }
        }
    }

    /// Finds what `name` runs in `container`.
    async fn exec_program(&self, container: &Container, name: &str) -> Result<Found> {
        let prepared = container.prepared().ok_or_else(|| {
            Error::precondition(format!(
                "container {} was created before wasmpod restarted",
                container.id
            ))
        })?;
        let own = || {
            match prepared.program.is_http_handler() {
            false => Found::Program(prepared.program.clone()),
            true => Found::Not(
                NOT_RUNNABLE_CODE,
                format!("exec: \"{name}\": the container's program is a wasi:http handler, not a command"),
            ),
        }
        };
        let Some(root) = prepared.exec_root.clone() else {
            return Ok(own());
        };
        let path_env = prepared
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let cwd = container
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let cached = container.cached_exec_program(name);
        let known = cached.as_ref().map(|(file, _)| *file);
        let typed = name.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            lookup(&root, &typed, path_env.as_deref(), &cwd, known)
        })
        .await
        .map_err(|e| Error::internal(format!("exec lookup: {e}")))?;
        let found = match found {
            Lookup::Unchanged => match cached {
                Some((_, program)) => Found::Program(program),
                None => unreachable!("unchanged means a cached program was given"),
            },
            Lookup::Wasm(bytes, file) => {
                let program = self.engine().load(Wasm::Bytes(bytes.into())).await?;
                if program.is_http_handler() {
                    return Ok(Found::Not(
                        NOT_RUNNABLE_CODE,
                        format!("exec: \"{name}\": a wasi:http handler, not a command"),
                    ));
                }
                container.cache_exec_program(name, file, program.clone());
                Found::Program(program)
            }
            Lookup::NotWasm(path) => Found::Not(
                NOT_RUNNABLE_CODE,
                format!("exec: \"{name}\": {path} is not a WebAssembly program: exec format error"),
            ),
            Lookup::Missing if prepared.single_binary || is_own_program(name, &prepared.argv) => {
                own()
            }
            Lookup::Missing => Found::Not(
                NOT_FOUND_CODE,
                if name.contains('/') {
                    format!("exec: \"{name}\": stat {name}: no such file or directory")
                } else {
                    format!("exec: \"{name}\": executable file not found in $PATH")
                },
            ),
        };
        Ok(found)
    }

    /// Container `id`, if its guest is running (what exec and attach need).
    pub fn running_container(&self, id: &str) -> Result<Arc<Container>> {
        let container = self.container(id)?;
        container.task()?;
        Ok(container)
    }

    /// The running guest of container `id` (a front end feeds its stdin).
    pub fn container_task(&self, id: &str) -> Result<Arc<Task>> {
        self.container(id)?.task()
    }

    /// Pod `id`, if it is ready and has a network (what port-forward needs).
    pub fn ready_pod(&self, id: &str) -> Result<Arc<crate::pod::Pod>> {
        let pod = self.pod(id)?;
        if pod.state() != crate::pod::PodState::Ready || pod.network.is_none() {
            return Err(Error::precondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        Ok(pod)
    }

    /// Where a pod's `port` is reached from the node (port-forward dials it).
    pub fn pod_port(&self, pod_id: &str, port: u16) -> Result<std::net::SocketAddr> {
        let pod = self.ready_pod(pod_id)?;
        let net = pod
            .network
            .as_ref()
            .unwrap_or_else(|| unreachable!("checked by ready_pod"));
        Ok(net.at(port))
    }
}

enum Found {
    Program(Program),
    /// An exit code and why.
    Not(i32, String),
}

/// Which file a program was read from, and as it was then: a file rewritten or replaced in a
/// writable root is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(m: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

pub(crate) enum Lookup {
    /// The file is the `known` one: its program is the one already compiled.
    Unchanged,
    Wasm(Vec<u8>, FileId),
    NotWasm(String),
    Missing,
}

/// Whether `name` names the container's own program (its argv[0], with or without `.wasm`).
fn is_own_program(name: &str, argv: &[String]) -> bool {
    let stem = |s: &str| {
        let base = s.rsplit('/').next().unwrap_or(s);
        base.strip_suffix(".wasm").unwrap_or(base).to_owned()
    };
    argv.first().is_some_and(|a0| stem(a0) == stem(name))
}

/// Looks `name` up in the container's root, reading through a handle on the root that resolves
/// links inside it and never out of it. A file that is still `known` is not read again.
pub(crate) fn lookup(
    rootfs: &Path,
    name: &str,
    path_env: Option<&str>,
    cwd: &str,
    known: Option<FileId>,
) -> Lookup {
    let Ok(root) = cap_std::fs::Dir::open_ambient_dir(rootfs, cap_std::ambient_authority()) else {
        return Lookup::Missing;
    };
    let candidates: Vec<String> = if name.contains('/') {
        vec![match name.starts_with('/') {
            true => name.to_owned(),
            false => format!("{cwd}/{name}"),
        }]
    } else {
        let mut dirs: Vec<&str> = path_env
            .unwrap_or("")
            .split(':')
            .filter(|d| d.starts_with('/'))
            .collect();
        for d in ["/bin", "/usr/bin"] {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs.iter().map(|d| format!("{d}/{name}")).collect()
    };
    for path in candidates {
        let rel = path.trim_start_matches('/');
        let Ok(mut file) = root.open(rel) else {
            continue;
        };
        let Some(meta) = file.metadata().ok().filter(|m| m.is_file()) else {
            continue;
        };
        let id = FileId::of(&meta);
        if known == Some(id) {
            return Lookup::Unchanged;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            continue;
        }
        return match GuestKind::detect(&bytes) {
            Ok(_) => Lookup::Wasm(bytes, id),
            Err(_) => Lookup::NotWasm(path),
        };
    }
    Lookup::Missing
}

/// What ExecSync kept of one stream.
struct Captured {
    bytes: Vec<u8>,
    /// Said on stderr when bytes were dropped.
    dropped: Option<String>,
}

/// Drains `rx` to its end, keeping what `budget` (shared by stdout and stderr) still allows.
async fn capture(mut rx: mpsc::Receiver<Bytes>, stream: Stream, budget: &AtomicUsize) -> Captured {
    let mut bytes = Vec::new();
    let mut dropped = 0usize;
    while let Some(chunk) = rx.recv().await {
        let mut keep = 0;
        let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            keep = chunk.len().min(left);
            Some(left - keep)
        });
        bytes.extend_from_slice(&chunk[..keep]);
        dropped += chunk.len() - keep;
    }
    Captured {
        bytes,
        dropped: (dropped > 0).then(|| {
            format!(
                "wasmpod: exec output over {EXEC_OUTPUT_CAP} bytes (the CRI's message limit): \
                 {dropped} bytes of {} dropped\n",
                stream.as_str(),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_program_by_name_with_or_without_suffix() {
        let argv = vec!["/app/server.wasm".to_owned(), "--port".to_owned()];
        assert!(is_own_program("server", &argv));
        assert!(is_own_program("/app/server.wasm", &argv));
        assert!(!is_own_program("sh", &argv));
        assert!(!is_own_program("sh", &[]));
    }

    #[test]
    fn lookup_searches_path_then_bin_follows_links_inside_and_not_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("opt/tools")).unwrap();
        std::fs::write(root.join("bin/toolbox"), b"\0asm\x01\0\0\0").unwrap();
        std::os::unix::fs::symlink("toolbox", root.join("bin/echo")).unwrap();
        std::fs::write(root.join("opt/tools/script"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/../../../../etc/passwd", root.join("bin/escape")).unwrap();

        assert!(matches!(
            lookup(root, "echo", None, "/", None),
            Lookup::Wasm(..)
        ));
        assert!(matches!(
            lookup(root, "/bin/echo", None, "/", None),
            Lookup::Wasm(..)
        ));
        assert!(matches!(
            lookup(root, "../bin/echo", None, "/opt", None),
            Lookup::Wasm(..)
        ));
        assert!(matches!(
            lookup(root, "script", Some("/opt/tools:/bin"), "/", None),
            Lookup::NotWasm(p) if p == "/opt/tools/script"
        ));
        assert!(matches!(
            lookup(root, "script", None, "/", None),
            Lookup::Missing
        ));
        assert!(matches!(
            lookup(root, "escape", None, "/", None),
            Lookup::Missing
        ));
        assert!(matches!(
            lookup(root, "bin", None, "/", None),
            Lookup::Missing
        ));
    }
}
