//! Port-forward over SPDY (`portforward.k8s.io`): for every TCP connection it forwards, the
//! client opens an `error` stream and a `data` stream sharing a `requestid`; we pair them, dial
//! the pod's port through the backend and copy both ways.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::spdy;
use super::spdy_conn::{IncomingStream, StreamWriter};
use super::Backend;

pub const PROTOCOL: &str = "portforward.k8s.io";

/// After one direction of a forwarded connection ends, how long the other may go on (socat's
/// default, and containerd's).
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Read size from the pod.
const READ_CHUNK: usize = 32 * 1024;

/// Which ports a session may reach.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_id: String,
    /// Empty: any port.
    pub ports: Vec<u16>,
}

impl Target {
    /// Checks a requested port; the error is the text the client shows.
    pub fn check_port(&self, port: Option<&str>) -> Result<u16, String> {
        let raw = port.unwrap_or("");
        let port: u16 = raw
            .trim()
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {raw:?}"))?;
        if !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(format!(
                "port {port} is not one of the ports requested for pod {}",
                self.pod_id
            ));
        }
        Ok(port)
    }

    /// kubelet's wording for a failed forward (`uid` is empty for CRI).
    pub fn forward_error(&self, port: u16, error: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid : {error}",
            self.pod_id
        )
    }
}

/// An accepted stream of a pair: our half and the client's data.
type Half = (StreamWriter, mpsc::Receiver<Bytes>);

struct Pending {
    error: Option<Half>,
    data: Option<Half>,
    port: Option<String>,
    deadline: Instant,
}

/// Serves pairs until the connection ends. Each pair runs in the connection's `JoinSet`, so
/// they all stop with it.
pub async fn serve_spdy(
    target: Target,
    backend: Arc<dyn Backend>,
    mut incoming: mpsc::Receiver<IncomingStream>,
    creation_timeout: Duration,
) {
    let target = Arc::new(target);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut pairs = JoinSet::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        let expire = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { return };
                if let Some(Pending { error: Some(error), data: Some(data), port, .. }) =
                    add_stream(&mut pending, stream, creation_timeout).await
                {
                    let (target, backend) = (target.clone(), backend.clone());
                    pairs.spawn(forward_pair(target, backend, port, error, data));
                }
            }
            () = expire => {
                let now = Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(p) = pending.remove(&id) {
                        tracing::debug!(request = %id, "streaming: port-forward pair timed out");
                        if let Some((mut error, _)) = p.error {
                            let msg = format!("timed out waiting for the data stream of request {id}");
                            let _ = error.write(Bytes::from(msg)).await;
                            error.finish().await;
                        }
                        if let Some((mut data, _)) = p.data {
                            data.finish().await;
                        }
                    }
                }
            }
            Some(_) = pairs.join_next() => {}
        }
    }
}

/// Files a new stream under its request id. Returns the pair, taken out of `pending`, once both
/// halves are there.
async fn add_stream(
    pending: &mut HashMap<String, Pending>,
    stream: IncomingStream,
    creation_timeout: Duration,
) -> Option<Pending> {
    let kind = stream
        .header("streamtype")
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind != "error" && kind != "data" {
        stream.refuse(spdy::rst::PROTOCOL_ERROR).await;
        return None;
    }
    // Old clients send no request id; kubelet derives one from the (consecutive) stream ids.
    let id = match stream.header("requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if kind == "error" => stream.id.to_string(),
        _ => stream.id.saturating_sub(2).to_string(),
    };
    let entry = pending.entry(id.clone()).or_insert_with(|| Pending {
        error: None,
        data: None,
        port: None,
        deadline: Instant::now() + creation_timeout,
    });
    let taken = if kind == "error" {
        entry.error.is_some()
    } else {
        entry.data.is_some()
    };
    if taken {
        stream.refuse(spdy::rst::PROTOCOL_ERROR).await;
        return None;
    }
    if kind == "data" || entry.port.is_none() {
        entry.port = stream.header("port").map(str::to_string);
    }
    let half = stream.accept().await;
    if kind == "error" {
        entry.error = Some(half);
    } else {
        entry.data = Some(half);
    }
    if entry.error.is_some() && entry.data.is_some() {
        return pending.remove(&id);
    }
    None
}

/// One forwarded TCP connection: dial, copy both ways, report a dial failure on the error stream.
async fn forward_pair(
    target: Arc<Target>,
    backend: Arc<dyn Backend>,
    port: Option<String>,
    (mut error, _error_rx): Half,
    (mut data, data_rx): Half,
) {
    let dialed = match target.check_port(port.as_deref()) {
        Ok(port) => backend
            .dial(target.pod_id.clone(), port)
            .await
            .map_err(|e| target.forward_error(port, &e)),
        Err(e) => Err(e),
    };
    match dialed {
        Err(message) => {
            tracing::debug!(%message, "streaming: port-forward failed");
            let _ = error.write(Bytes::from(message)).await;
        }
        Ok(tcp) => copy_both_ways(tcp, &mut data, &mut error, data_rx).await,
    }
    data.finish().await;
    error.finish().await;
}

async fn copy_both_ways(
    tcp: TcpStream,
    data: &mut StreamWriter,
    error: &mut StreamWriter,
    data_rx: mpsc::Receiver<Bytes>,
) {
    let (pod_read, pod_write) = tcp.into_split();
    let reset = data.reset_token();
    let upstream = client_to_pod(data_rx, pod_write);
    let downstream = async {
        pod_to_client(pod_read, data).await;
        // The client waits for the error stream to end before it lets go of the connection.
        error.finish().await;
    };
    let mut upstream = std::pin::pin!(upstream);
    let mut downstream = std::pin::pin!(downstream);
    tokio::select! {
        () = &mut upstream => {
            let _ = tokio::time::timeout(HALF_CLOSE_LINGER, &mut downstream).await;
        }
        () = &mut downstream => {
            let _ = tokio::time::timeout(HALF_CLOSE_LINGER, &mut upstream).await;
        }
        () = reset.cancelled() => {}
    }
}

/// Client data to the pod; at the client's FIN, shuts down the pod socket's write side.
pub async fn client_to_pod(mut rx: mpsc::Receiver<Bytes>, mut pod: impl AsyncWrite + Unpin) {
    while let Some(chunk) = rx.recv().await {
        if pod.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = pod.shutdown().await;
}

/// Pod data to the client; at the pod's EOF, half-closes the data stream.
async fn pod_to_client(mut pod: impl AsyncRead + Unpin, data: &mut StreamWriter) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pod.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if data.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
    data.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked_against_the_request() {
        let t = Target {
            pod_id: "p".into(),
            ports: vec![80],
        };
        assert_eq!(t.check_port(Some("80")), Ok(80));
        assert!(t.check_port(Some("81")).unwrap_err().contains("81"));
        assert!(t.check_port(Some("x")).is_err());
        assert!(t.check_port(None).is_err());
        let any = Target {
            pod_id: "p".into(),
            ports: vec![],
        };
        assert_eq!(any.check_port(Some("8080")), Ok(8080));
        assert!(any.check_port(Some("0")).is_err());
    }
}
