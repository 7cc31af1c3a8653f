//! `netprobe`: a network probe used by the test suite and the example pods to
//! check what a guest can and cannot do with `std::net`, which on
//! wasm32-wasip2 goes through wasi:sockets (and wasi:sockets/ip-name-lookup
//! for names). Preview 1 has no socket API, so this is built for wasip2 only.
//!
//! Usage: `netprobe COMMAND ARGS...`; ADDR is anything `ToSocketAddrs` takes
//! (`127.0.0.1:8080`, `[::]:8080`, `localhost:8080`).
//!
//! | command                   | effect / output                                      |
//! |---------------------------|------------------------------------------------------|
//! | `tcp-echo ADDR`           | prints `listening on <local>`, then echoes every line back, one connection at a time, forever |
//! | `tcp-client ADDR MESSAGE` | connects (retrying while refused), sends `MESSAGE\n`, prints `reply: <line>` |
//! | `udp-echo ADDR`           | prints `listening on <local>`, then sends every datagram back to its sender, forever |
//! | `udp-client ADDR MESSAGE` | sends MESSAGE (resending until answered), prints `reply: <text>` |
//! | `http ADDR`               | prints `listening on <local>`, then answers every HTTP request with 200 and `hello from <HOSTNAME> via wasi:sockets\n` |
//! | `connect ADDR`            | one connect attempt; prints `connected <local> -> <peer>` |
//! | `bind ADDR`               | one TCP bind; prints `bound <local>`                 |
//! | `sockets N ADDR`          | opens up to N TCP connections and keeps them open; prints `opened <k>` |
//! | `resolve ADDR`            | prints `resolved <addr>` for each address ADDR resolves to, in order |
//! | `tcp-rtt ADDR N`          | N round trips of a 64-byte line to an echo server, then `rtt_ns=<n>` per trip |
//!
//! On an I/O error it prints exactly one line to stderr,
//! `error: <ErrorKind:?> <error>`, and exits 2 for `ConnectionRefused`, 3 for
//! `PermissionDenied` (wasi:sockets `access-denied`, i.e. the host's policy)
//! and 4 for anything else; `sockets` prints `opened <k>` first. A usage error
//! exits 1. Note that std's `exit(n)` reaches the host through
//! `wasi:cli/exit.exit(result)`, so a runtime without the unstable
//! `exit-with-code` sees every non-zero code as plain failure (1): match the
//! error line's kind, not the number.
//!
//! wasmtime creates IPv6 sockets IPV6_V6ONLY, so under plain wasmtime
//! `[::]:PORT` accepts no IPv4 clients. In a wasmpod pod `::` and `::1` are the
//! pod's own address, so `[::]:PORT` serves both families there.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::exit;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often and how far apart the clients retry, so that they can be started
/// before their server (e.g. two containers of one pod): 200 × 50 ms = 10 s.
const TCP_ATTEMPTS: u32 = 200;
const UDP_ATTEMPTS: u32 = 100;
const RETRY_DELAY: Duration = Duration::from_millis(50);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// A server drops a connection that stays silent this long, so that one stuck
/// client cannot keep the (sequential) server from the next one forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["tcp-echo", addr] => tcp_echo(addr),
        ["tcp-client", addr, message] => tcp_client(addr, message),
        ["udp-echo", addr] => udp_echo(addr),
        ["udp-client", addr, message] => udp_client(addr, message),
        ["http", addr] => http(addr),
        ["connect", addr] => connect(addr),
        ["bind", addr] => bind(addr),
        ["resolve", addr] => resolve(addr).and_then(|addrs| {
            addrs
                .iter()
                .try_for_each(|addr| say(&format!("resolved {addr}")))
        }),
        ["tcp-rtt", addr, n] => match n.parse() {
            Ok(n) => tcp_rtt(addr, n),
            Err(_) => usage(),
        },
        ["sockets", n, addr] => match n.parse() {
            Ok(n) => sockets(n, addr),
            Err(_) => usage(),
        },
        _ => usage(),
    };
    if let Err(err) = result {
        fail(&err);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: netprobe tcp-echo ADDR | tcp-client ADDR MESSAGE | udp-echo ADDR | \
         udp-client ADDR MESSAGE | http ADDR | connect ADDR | bind ADDR | sockets N ADDR | \
         resolve ADDR | tcp-rtt ADDR N"
    );
    exit(1);
}

fn fail(err: &io::Error) -> ! {
    eprintln!("error: {:?} {err}", err.kind());
    exit(match err.kind() {
        ErrorKind::ConnectionRefused => 2,
        ErrorKind::PermissionDenied => 3,
        _ => 4,
    });
}

/// Prints one line and flushes it, so that a test waiting for it sees it now.
fn say(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            ErrorKind::NotFound,
            format!("{addr} resolved to no address"),
        ));
    }
    Ok(addrs)
}

fn tcp_echo(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!("listening on {}", listener.local_addr()?))?;
    loop {
        let (stream, peer) = listener.accept()?;
        if let Err(err) = echo_lines(&stream) {
            eprintln!("tcp-echo: {peer}: {:?} {err}", err.kind());
        }
    }
}

fn echo_lines(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    // `&TcpStream` is both Read and Write, so no try_clone (dup) is needed.
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        writer.write_all(&line)?;
        line.clear();
    }
    Ok(())
}

fn tcp_client(addr: &str, message: &str) -> io::Result<()> {
    let addrs = resolve(addr)?;
    let stream = retry_refused(TCP_ATTEMPTS, || TcpStream::connect(&addrs[..]))?;
    (&stream).write_all(format!("{message}\n").as_bytes())?;
    let mut reply = String::new();
    if BufReader::new(&stream).read_line(&mut reply)? == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    say(&format!("reply: {}", reply.trim_end_matches(['\r', '\n'])))
}

/// Times `n` echo round trips of a 64-byte line; prints them after the last one, so that
/// logging does not disturb the timing.
fn tcp_rtt(addr: &str, n: usize) -> io::Result<()> {
    let addrs = resolve(addr)?;
    let stream = retry_refused(TCP_ATTEMPTS, || TcpStream::connect(&addrs[..]))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let message = format!("{}\n", "x".repeat(63));
    let mut line = String::new();
    let mut trips = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        writer.write_all(message.as_bytes())?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        trips.push(started.elapsed());
    }
    let mut out = io::stdout().lock();
    for t in trips {
        writeln!(out, "rtt_ns={}", t.as_nanos())?;
    }
    out.flush()
}

/// Runs `op` up to `attempts` times, `RETRY_DELAY` apart, for as long as it
/// fails with `ConnectionRefused` (no server there yet).
fn retry_refused<T>(attempts: u32, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempt = 1;
    loop {
        match op() {
            Err(err) if err.kind() == ErrorKind::ConnectionRefused && attempt < attempts => {
                attempt += 1;
                sleep(RETRY_DELAY);
            }
            result => return result,
        }
    }
}

fn udp_echo(addr: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    say(&format!("listening on {}", socket.local_addr()?))?;
    let mut buf = vec![0; 65536];
    loop {
        let (len, peer) = socket.recv_from(&mut buf)?;
        if let Err(err) = socket.send_to(&buf[..len], peer) {
            eprintln!("udp-echo: {peer}: {:?} {err}", err.kind());
        }
    }
}

fn udp_client(addr: &str, message: &str) -> io::Result<()> {
    // One socket per resolved address (`localhost` may be both ::1 and
    // 127.0.0.1), each connected, so that it only receives its peer's answer
    // and an ICMP "port unreachable" shows up as ConnectionRefused.
    let mut sockets = Vec::new();
    let mut last_err = None;
    for target in resolve(addr)? {
        match udp_socket_to(target) {
            Ok(socket) => sockets.push(socket),
            Err(err) if err.kind() == ErrorKind::PermissionDenied => return Err(err),
            Err(err) => last_err = Some(err),
        }
    }
    if sockets.is_empty() {
        return Err(last_err.expect("resolve returns at least one address"));
    }
    // Datagrams get lost and the server may not be up yet: send to every
    // address, poll for an answer for RETRY_DELAY, and repeat.
    let mut buf = vec![0; 65536];
    let mut last_err = io::Error::from(ErrorKind::TimedOut);
    for _ in 0..UDP_ATTEMPTS {
        let started = Instant::now();
        for socket in &sockets {
            match socket.send(message.as_bytes()) {
                Ok(_) => {}
                Err(err) if retryable_udp(err.kind()) => last_err = err,
                Err(err) => return Err(err),
            }
        }
        while started.elapsed() < RETRY_DELAY {
            for socket in &sockets {
                match socket.recv(&mut buf) {
                    Ok(len) => {
                        let reply = String::from_utf8_lossy(&buf[..len]);
                        return say(&format!("reply: {reply}"));
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) if retryable_udp(err.kind()) => last_err = err,
                    Err(err) => return Err(err),
                }
            }
            sleep(POLL_INTERVAL);
        }
    }
    Err(last_err)
}

/// A connected, nonblocking UDP socket: wasi-libc has no SO_RCVTIMEO for UDP
/// (set_read_timeout fails with ENOPROTOOPT), so the client polls instead.
fn udp_socket_to(target: SocketAddr) -> io::Result<UdpSocket> {
    let any = match target {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn retryable_udp(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
    )
}

fn http(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!("listening on {}", listener.local_addr()?))?;
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "(unset)".to_string());
    let body = format!("hello from {hostname} via wasi:sockets\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    loop {
        let (stream, peer) = listener.accept()?;
        if let Err(err) = answer(&stream, response.as_bytes()) {
            eprintln!("http: {peer}: {:?} {err}", err.kind());
        }
    }
}

/// Reads the request head (the body, if any, is ignored) and writes `response`.
fn answer(mut stream: &TcpStream, response: &[u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let len = stream.read(&mut buf)?;
        if len == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..len]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
    stream.write_all(response)?;
    stream.flush()
}

fn connect(addr: &str) -> io::Result<()> {
    let stream = TcpStream::connect(&resolve(addr)?[..])?;
    say(&format!(
        "connected {} -> {}",
        stream.local_addr()?,
        stream.peer_addr()?
    ))
}

fn bind(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(&resolve(addr)?[..])?;
    say(&format!("bound {}", listener.local_addr()?))
}

fn sockets(n: usize, addr: &str) -> io::Result<()> {
    let addrs = resolve(addr)?;
    let mut open = Vec::with_capacity(n);
    let mut result = Ok(());
    while open.len() < n {
        match TcpStream::connect(&addrs[..]) {
            Ok(stream) => open.push(stream),
            Err(err) => {
                result = Err(err);
                break;
            }
        }
    }
    say(&format!("opened {}", open.len()))?;
    result
}
