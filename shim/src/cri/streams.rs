//! What the streaming server runs behind a session: the runtime's exec, attach and pod ports.

use std::sync::Arc;

use wasmpod_runtime::exec::StreamIo;
use wasmpod_runtime::runtime::Runtime;

use crate::streaming::{Backend, BoxFuture, Stdio};

pub struct RuntimeBackend {
    pub rt: Arc<Runtime>,
}

fn stream_io(stdio: Stdio) -> StreamIo {
    // WASI has no terminal: size changes are accepted and ignored.
    drop(stdio.resize);
    StreamIo {
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr,
    }
}

impl Backend for RuntimeBackend {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdio: Stdio,
    ) -> BoxFuture<Result<i32, String>> {
        let rt = self.rt.clone();
        Box::pin(async move {
            rt.exec_streams(&container_id, &cmd, tty, stream_io(stdio))
                .await
                .map(|exit| exit.code)
                .map_err(|e| e.message)
        })
    }

    fn attach(
        &self,
        container_id: String,
        _tty: bool,
        stdio: Stdio,
    ) -> BoxFuture<Result<(), String>> {
        let rt = self.rt.clone();
        Box::pin(async move {
            rt.attach(&container_id, stream_io(stdio))
                .await
                .map_err(|e| e.message)
        })
    }

    fn dial(&self, pod_id: String, port: u16) -> BoxFuture<Result<tokio::net::TcpStream, String>> {
        let rt = self.rt.clone();
        Box::pin(async move {
            let addr = rt.pod_port(&pod_id, port).map_err(|e| e.message)?;
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("port {port} of pod sandbox {pod_id} ({addr}): {e}"))
        })
    }
}
