//! Network figures: a wasi:http hello world served by wasmpod against `wasmtime serve` on the
//! same machine in the same run, loaded by wrk (rounds interleaved, so drift hits both alike);
//! and a TCP echo round trip between two containers of a pod against the same on the host.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{ContainerConfig, PodConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One wrk run: requests per second and latency percentiles.
pub struct Load {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `wasmtime` of wasmtime-cli 48: `$WASMTIME`, `scripts/bench`'s install, or PATH.
fn wasmtime_bin(root: &Path) -> Res<PathBuf> {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return Ok(p.into());
    }
    let local = root.join("target/tools/bin/wasmtime");
    if local.is_file() {
        return Ok(local);
    }
    which("wasmtime")
        .ok_or_else(|| "wasmtime not found: run scripts/bench (it installs wasmtime-cli 48)".into())
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Kills and reaps a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// wasmpod and `wasmtime serve` serving `component`, each loaded by wrk `rounds` times.
pub async fn http_vs_wasmtime(
    rt: &Arc<Runtime>,
    root: &Path,
    component: &Path,
    rounds: usize,
    seconds: u32,
) -> Res<(Vec<Load>, Vec<Load>)> {
    which("wrk").ok_or("wrk not found: run scripts/bench (it installs Debian's wrk)")?;
    let wasmtime = wasmtime_bin(root)?;

    let pod = rt.run_pod(PodConfig {
        name: "http-bench".into(),
        hostname: "http-bench".into(),
        ..Default::default()
    })?;
    let id = rt
        .create_container(
            &pod,
            ContainerConfig {
                name: "hello".into(),
                image: format!("file://{}", component.display()),
                ..Default::default()
            },
        )
        .await?;
    rt.start_container(&id)?;
    let ip = rt.pod(&pod)?.ip().ok_or("the pod has no IP")?;
    let ours = format!("http://{ip}:8080/");

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let theirs = format!("http://127.0.0.1:{port}/");
    let _server = Reaped(
        Command::new(&wasmtime)
            .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", wasmtime.display()))?,
    );
    for url in [&ours, &theirs] {
        let body = get_when_up(url).await?;
        if body != "hello from wasi:http\n" {
            return Err(format!("{url} answered {body:?}").into());
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(wrk(&ours, seconds)?);
        b.push(wrk(&theirs, seconds)?);
    }
    rt.stop_pod(&pod, Duration::ZERO).await?;
    rt.remove_pod(&pod).await?;
    Ok((a, b))
}

/// GETs `url` (plain HTTP/1.1 over std) until it answers, for up to 30 s; returns the body.
async fn get_when_up(url: &str) -> Res<String> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    for _ in 0..600 {
        if let Ok(body) = get(&addr) {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} did not answer").into())
}

fn get(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    Ok(body.to_owned())
}

/// One wrk run: 1 thread (the server needs the other core), 16 connections.
fn wrk(url: &str, seconds: u32) -> Res<Load> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| format!("unexpected wrk output:\n{text}").into())
}

fn parse_wrk(text: &str) -> Option<Load> {
    let field = |label: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_owned())
    };
    let duration = |v: String| {
        let split = v.find(|c: char| c.is_ascii_alphabetic())?;
        let (n, unit) = v.split_at(split);
        let n: f64 = n.parse().ok()?;
        let secs = match unit {
            "us" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            _ => return None,
        };
        Some(Duration::from_secs_f64(secs))
    };
    Some(Load {
        rps: field("Requests/sec:")?.parse().ok()?,
        p50: duration(field("50%")?)?,
        p99: duration(field("99%")?)?,
    })
}

/// Round trips of 64-byte messages: between two containers of one pod over its localhost,
/// and between two threads of the host over 127.0.0.1. Returns sorted durations of each.
pub async fn echo_round_trips(
    rt: &Arc<Runtime>,
    netprobe: &Path,
    n: usize,
) -> Res<(Vec<Duration>, Vec<Duration>)> {
    let pod = rt.run_pod(PodConfig {
        name: "echo-bench".into(),
        hostname: "echo-bench".into(),
        ..Default::default()
    })?;
    let image = format!("file://{}", netprobe.display());
    let start = |name: &str, args: &[&str]| ContainerConfig {
        name: name.into(),
        image: image.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let server = rt
        .create_container(&pod, start("server", &["tcp-echo", "127.0.0.1:9100"]))
        .await?;
    rt.start_container(&server)?;
    let client = rt
        .create_container(
            &pod,
            start("client", &["tcp-rtt", "localhost:9100", &n.to_string()]),
        )
        .await?;
    rt.start_container(&client)?;
    let exit = tokio::time::timeout(Duration::from_secs(300), rt.wait_container(&client)).await??;
    let log = rt.container(&client)?.log_path.clone().ok_or("no log")?;
    let text = std::fs::read_to_string(log)?;
    if exit.code != 0 {
        return Err(format!("tcp-rtt failed: {exit:?}\n{text}").into());
    }
    let in_pod = text
        .lines()
        .filter_map(|l| l.split(' ').nth(3))
        .filter_map(|t| t.strip_prefix("rtt_ns="))
        .filter_map(|v| v.parse().ok())
        .map(Duration::from_nanos)
        .collect::<Vec<_>>();
    rt.stop_pod(&pod, Duration::ZERO).await?;
    rt.remove_pod(&pod).await?;
    let mut in_pod = in_pod;
    in_pod.sort();
    if in_pod.is_empty() {
        return Err(format!("tcp-rtt printed no rtt_ns= lines:\n{text}").into());
    }
    let host = tokio::task::spawn_blocking(move || host_round_trips(n)).await??;
    Ok((in_pod, host))
}

fn host_round_trips(n: usize) -> std::io::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut w = s.try_clone()?;
        for line in BufReader::new(s).lines() {
            writeln!(w, "{}", line?)?;
        }
        Ok(())
    });
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let msg = "x".repeat(63);
    let mut line = String::new();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        writeln!(w, "{msg}")?;
        line.clear();
        r.read_line(&mut line)?;
        out.push(t.elapsed());
    }
    drop(w);
    drop(r);
    let _ = server.join();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk() {
        let text = "Running 1s test\n  Latency Distribution\n     50%  210.00us\n     99%    1.50ms\n  Requests/sec:  12345.67\n";
        let l = super::parse_wrk(text).unwrap();
        assert_eq!(l.rps, 12345.67);
        assert_eq!(l.p50.as_micros(), 210);
        assert_eq!(l.p99.as_micros(), 1500);
    }
}
